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

/// `OK subscribed <topic> from <seq>`: the answer to `resume`.
pub fn subscribed_from(topic: &[u8], from: u64) -> Vec<u8> {
    [b"OK subscribed ", topic, format!(" from {from}\n").as_bytes()].concat()
}

/// `OK seq on|off`, `OK confirm on|off`.
pub fn switched(what: &str, on: bool) -> Vec<u8> {
    format!("OK {what} {}\n", if on { "on" } else { "off" }).into_bytes()
}

/// `OK published <topic>#<seq>`: the publish is numbered and committed.
pub fn published(topic: &[u8], seq: u64) -> Vec<u8> {
    [b"OK published ", topic, format!("#{seq}\n").as_bytes()].concat()
}

/// `GAP [<topic>] <first>-<last>`: these numbers are no longer retained (or
/// were not kept by a restarted channel server); delivery goes on after them.
pub fn gap(topic: &[u8], first: u64, last: u64) -> Vec<u8> {
    [b"GAP [", topic, format!("] {first}-{last}\n").as_bytes()].concat()
}

/// `OK history <topic> <count>`, after the `History` lines.
pub fn history_end(topic: &[u8], count: usize) -> Vec<u8> {
    [b"OK history ", topic, format!(" {count}\n").as_bytes()].concat()
}

/// Appends `History [<topic>#<seq>]: <message>`.
pub fn history(out: &mut Vec<u8>, topic: &[u8], seq: u64, message: &[u8]) {
    numbered(out, b"History [", topic, seq, message)
}

/// `OK topic <topic> first <seq> last <seq> messages <n> bytes <b>`.
pub fn topic_info(topic: &[u8], first: u64, last: u64, messages: u64, bytes: u64) -> Vec<u8> {
    let rest = format!(" first {first} last {last} messages {messages} bytes {bytes}\n");
    [b"OK topic ", topic, rest.as_bytes()].concat()
}

pub fn unsubscribed(topic: &[u8]) -> [&[u8]; 3] {
    [b"OK unsubscribed ", topic, b"\n"]
}

/// A command that needs the channel server's numbers on a NATS bus.
pub const NOT_ON_NATS: &str = "not on a NATS bus: resume, history, info, seq, confirm and the work queues need the \
     channel server's numbering (start with --channel)";

pub const PONG: &[u8] = b"PONG\n";
pub const BYE: &[u8] = b"Bye\n";

pub const HELP: &[u8] = b"\
Commands (case-insensitive):
  publish <message>          publish to this server's default topic
  pub <topic> <message>      publish to a named topic
  subscribe [topic ...]      (sub) receive a topic's messages; default topic if none given
  unsubscribe [topic ...]    (unsub) stop; all of this connection's topics if none given
  resume <topic> <seq>       subscribe from message number <seq>: retained ones first, then live
  history <topic> [n]        the last n (10) retained messages of a topic
  info <topic>               what a topic retains, and its latest number
  seq on|off                 deliveries carry their numbers: Received [<topic>#<seq>]: ...
  confirm on|off             each publish is answered OK published <topic>#<seq> once committed
  enqueue <queue> <message>  add a job to a work queue (OK enqueued <queue>#<id> once it is held)
  consume <queue> [prefetch] take jobs one consumer at a time, at most prefetch (default 10) unacked
  ack <queue>#<id> ...       done with the job: never delivered again
  nack <queue>#<id> ...      not done: back to the front, delivered again with the next try
  reject <queue>#<id> ...    never to be done: moved to <queue>.dead
  unconsume [queue ...]      stop; unacked jobs go back; all of this connection's queues if none given
  queues                     one line per queue: <queue> ready <n> unacked <n> consumers <n>
  ping                       answers PONG
  help                       this text
  quit                       close the connection
Messages arrive as: Received [<topic>]: <message>
Numbers no longer retained are told as: GAP [<topic>] <first>-<last>
Jobs arrive as: Job [<queue>#<id>] try <n>: <message>
";

pub fn consuming(queue: &[u8]) -> [&[u8]; 3] {
    [b"OK consuming ", queue, b"\n"]
}

pub fn unconsumed(queue: &[u8]) -> [&[u8]; 3] {
    [b"OK unconsumed ", queue, b"\n"]
}

/// `OK <what> <queue>#<id>`: enqueued, acked, nacked, rejected.
pub fn job_done(what: &str, queue: &[u8], id: u64) -> Vec<u8> {
    [b"OK ", what.as_bytes(), b" ", queue, format!("#{id}\n").as_bytes()].concat()
}

/// A line of `queues`.
pub fn queue_figures(out: &mut Vec<u8>, queue: &[u8], ready: u64, unacked: u64, consumers: u64) {
    out.extend_from_slice(queue);
    out.extend_from_slice(format!(" ready {ready} unacked {unacked} consumers {consumers}\n").as_bytes());
}

pub fn queues_count(n: usize) -> String {
    format!("OK queues {n}\n")
}

/// `Job [<queue>#<id>] try <n>: <message>`.
pub fn job(queue: &[u8], id: u64, attempt: u32, message: &[u8]) -> Vec<u8> {
    [b"Job [", queue, format!("#{id}] try {attempt}: ").as_bytes(), message, b"\n"].concat()
}

pub fn not_consuming(queue: &[u8]) -> String {
    format!("not consuming '{}'", String::from_utf8_lossy(queue))
}

pub const NOT_CONSUMING_ANY: &str = "not consuming any queue";

pub fn too_many_queues(max: usize) -> String {
    format!("too many queues consumed (max {max} per connection)")
}

/// The answer to queue commands in flight when the link broke.
pub const LINK_LOST: &str =
    "the link to the channel server broke before it answered: the command may or may not have taken effect; consumers are restored when it is back, unacked jobs are delivered again";

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
/// A request that needs the channel server while the link to it is down.
pub const LINK_DOWN: &str = "the channel server is not reachable right now; try again";

/// A publish whose confirm was lost with the link: it may or may not have been published.
pub const UNCONFIRMED: &str = "publish not confirmed: the channel link broke (it may or may not have been published)";

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

/// Appends the delivery of one message with its number (`seq on`).
#[inline]
pub fn received_seq(batch: &mut Vec<u8>, topic: &[u8], seq: u64, message: &[u8]) {
    numbered(batch, b"Received [", topic, seq, message)
}

fn numbered(out: &mut Vec<u8>, head: &[u8], topic: &[u8], seq: u64, message: &[u8]) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = seq;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for part in [head, topic, b"#", &digits[at..], b"]: ", message, b"\n"] {
        out.extend_from_slice(part);
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
        batch.clear();
        received_seq(&mut batch, b"t", 0, b"x");
        received_seq(&mut batch, b"t", u64::MAX, b"");
        history(&mut batch, b"t", 42, b"y");
        assert_eq!(batch, b"Received [t#0]: x\nReceived [t#18446744073709551615]: \nHistory [t#42]: y\n");
        assert_eq!(gap(b"t", 1, 5), b"GAP [t] 1-5\n");
        assert_eq!(published(b"t", 3), b"OK published t#3\n");
        assert_eq!(subscribed_from(b"t", 9), b"OK subscribed t from 9\n");
        assert_eq!(topic_info(b"t", 1, 0, 0, 0), b"OK topic t first 1 last 0 messages 0 bytes 0\n");
        assert_eq!(switched("seq", true), b"OK seq on\n");
        assert!(HELP.ends_with(b"\n") && welcome("X").ends_with(b"to X\n"));
        assert_eq!(job(b"data_sync", 1, 1, b"Hello World!"), b"Job [data_sync#1] try 1: Hello World!\n");
        assert_eq!(job_done("acked", b"q", 7), b"OK acked q#7\n");
        let mut figures = Vec::new();
        queue_figures(&mut figures, b"q", 1, 2, 3);
        assert_eq!(figures, b"q ready 1 unacked 2 consumers 3\n");
    }
}
