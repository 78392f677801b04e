//! Every line a worker server writes to a client: the welcome, the replies to
//! commands, the `ERR` lines, and the deliveries (`Received [topic]: message`).
//! Each is one line ending in LF. Lines are given as parts, so that a caller
//! copies them straight into a queue without building them first.

/// `Welcome to <title>`, the first line of every connection.
pub fn welcome(title: &str) -> Vec<u8> {
    format!("Welcome to {title}\n").into_bytes()
}

pub fn subscribed(topic: &[u8]) -> [&[u8]; 3] {
    [b"OK subscribed ", topic, b"\n"]
}

pub fn unsubscribed(topic: &[u8]) -> [&[u8]; 3] {
    [b"OK unsubscribed ", topic, b"\n"]
}

pub const PONG: &[u8] = b"PONG\n";
pub const BYE: &[u8] = b"Bye\n";

pub const HELP: &[u8] = b"\
Commands (case-insensitive):
  publish <message>          publish to this server's default topic
  pub <topic> <message>      publish to a named topic
  subscribe [topic ...]      (sub) receive a topic's messages; default topic if none given
  unsubscribe [topic ...]    (unsub) stop; all of this connection's topics if none given
  ping                       answers PONG
  help                       this text
  quit                       close the connection
Messages arrive as: Received [<topic>]: <message>
";

/// `ERR <why>`: the one line a client gets for what it did wrong.
pub fn error(why: &str) -> [&[u8]; 3] {
    [b"ERR ", why.as_bytes(), b"\n"]
}

/// The channel server refused a subscription (one of its topic limits).
pub fn cannot_subscribe<'a>(topic: &'a [u8], why: &'a [u8]) -> [&'a [u8]; 5] {
    [b"ERR cannot subscribe ", topic, b": ", why, b"\n"]
}

pub fn line_too_long(max: usize) -> String {
    format!("line too long (max {max} bytes)")
}

pub fn too_many_subscriptions(max: usize) -> String {
    format!("too many subscriptions (max {max} per connection)")
}

pub fn not_subscribed(topic: &[u8]) -> String {
    format!("not subscribed to '{}'", String::from_utf8_lossy(topic))
}

pub const NOT_SUBSCRIBED_ANY: &str = "not subscribed to any topic";

/// A WebSocket text message holds one command.
pub const MANY_LINES: &str = "one command per message: no newline inside";

/// The last line of a client whose replies pile up behind an unconfirmed subscription.
pub const TOO_MANY_WAITING: &str = "too many commands waiting for a reply; disconnecting";

/// The last line of a slow consumer.
pub fn slow_consumer(limit: usize) -> String {
    format!("slow consumer: more than {limit} bytes queued; disconnecting")
}

/// The one line of a connection refused at the limit.
pub fn too_many_connections(limit: usize) -> String {
    format!("too many connections (limit {limit} per worker)")
}

/// Appends the delivery of one message to a topic's batch.
#[inline]
pub fn received(batch: &mut Vec<u8>, topic: &[u8], message: &[u8]) {
    for part in [b"Received [".as_slice(), topic, b"]: ", message, b"\n"] {
        batch.extend_from_slice(part);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        assert_eq!(subscribed(b"t").concat(), b"OK subscribed t\n");
        assert_eq!(unsubscribed(b"t").concat(), b"OK unsubscribed t\n");
        assert_eq!(error(&too_many_connections(2)).concat(), b"ERR too many connections (limit 2 per worker)\n");
        let mut batch = Vec::new();
        received(&mut batch, b"topic1", b"a b");
        received(&mut batch, b"topic1", b"");
        assert_eq!(batch, b"Received [topic1]: a b\nReceived [topic1]: \n");
        assert!(HELP.ends_with(b"\n") && welcome("X").ends_with(b"to X\n"));
    }
}
