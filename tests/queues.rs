//! Work queues (issue 11): jobs enqueued on either worker server, dispatched
//! by the channel server to one consumer at a time, acknowledged.

use crate::support::*;

/// A channel server with these flags, and one data source and one subscriber
/// server with `n` workers each.
fn cluster(channel_flags: &[&str], n: usize) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let channel = Server::start("channel-server", dir.path(), channel_flags);
    let (ch, n) = (channel.addr.clone(), n.to_string());
    let source = Server::start("data-source", dir.path(), &["--channel", &ch, "--count", &n]);
    let subscriber = Server::start("subscriber", dir.path(), &["--channel", &ch, "--count", &n]);
    source.wait_linked();
    subscriber.wait_linked();
    Cluster { dir, channel, source, subscriber }
}

fn consume(c: &mut Client, queue: &str, prefetch: u32) {
    c.send(&format!("consume {queue} {prefetch}"));
    c.expect(&format!("OK consuming {queue}"));
}

/// `Job [q#id] try n: msg` → (q#id, n, msg).
fn job(line: &str) -> (String, u32, String) {
    let rest = line.strip_prefix("Job [").unwrap_or_else(|| panic!("not a job: {line}"));
    let (id, rest) = rest.split_once("] try ").unwrap();
    let (n, msg) = rest.split_once(": ").unwrap();
    (id.to_owned(), n.parse().unwrap(), msg.to_owned())
}

#[test]
fn the_original_producer_and_consumer() {
    let c = cluster(&[], 1);
    // The job waits for a consumer that comes later.
    let mut producer = c.source.connect();
    producer.send("enqueue data_sync Hello World!");
    producer.expect("OK enqueued data_sync#1");
    let mut consumer = c.subscriber.connect();
    consumer.send("consume data_sync");
    consumer.expect("OK consuming data_sync");
    consumer.expect("Job [data_sync#1] try 1: Hello World!");
    consumer.send("queues");
    consumer.expect("data_sync ready 0 unacked 1 consumers 1");
    consumer.expect("OK queues 1");
    consumer.send("ack data_sync#1 data_sync#1 nope#1 data_sync#x");
    consumer.expect("OK acked data_sync#1");
    consumer.expect("ERR job data_sync#1 is not waiting for an acknowledgement");
    consumer.expect("ERR no queue 'nope'");
    let bad = consumer.line();
    assert!(bad.starts_with("ERR 'data_sync#x' is not a job"), "{bad}");
    consumer.barrier();
    c.stop();
}
