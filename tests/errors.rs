//! Bad input gets a clear ERR line and the connection keeps working.

use crate::support::*;

#[test]
fn bad_commands_get_err_and_connection_survives() {
    let c = Cluster::start(1, 1);
    let mut cl = c.source.connect();
    cl.send("frobnicate now");
    assert!(cl.line().starts_with("ERR unknown command 'frobnicate'"));
    cl.send("publish");
    assert!(cl.line().starts_with("ERR usage: publish"));
    cl.send("pub lonely");
    assert!(cl.line().starts_with("ERR usage: pub"));
    cl.send(&format!("subscribe {}", "x".repeat(200)));
    assert!(cl.line().starts_with("ERR topic name too long"));
    cl.send_bytes(b"sub bad\x01topic\n");
    assert!(cl.line().starts_with("ERR invalid byte 0x01"));
    cl.send_bytes(b"\x00\x01\x02\x80\xfe garbage \xc3\x28\n");
    assert!(cl.line().starts_with("ERR unknown command"));
    cl.barrier();
    c.stop();
}

#[test]
fn over_long_line_is_rejected_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let ch = Server::start("channel-server", dir.path(), &[]);
    let src = Server::start("data-source", dir.path(), &["--channel", &ch.addr, "--count", "1", "--max-line", "1024"]);
    let mut cl = src.connect();
    // Sent in pieces, with no newline until the very end.
    for _ in 0..100 {
        cl.send_bytes(&[b'a'; 1000]);
    }
    assert_eq!(cl.line(), "ERR line too long (max 1024 bytes)");
    cl.send_bytes(b"still the same long line\n");
    cl.barrier();
    let s = src.status();
    assert_eq!(s["workers"][0]["connections"], 1);
    src.stop(&[]);
    ch.stop(&[]);
}

#[test]
fn half_a_line_waits_and_completes() {
    let c = Cluster::start(1, 1);
    let mut cl = c.subscriber.connect();
    cl.send_bytes(b"pi");
    let mut other = c.subscriber.connect();
    other.barrier(); // the server is not stuck on the half line
    cl.send_bytes(b"ng\n");
    cl.expect("PONG");
    c.stop();
}

#[test]
fn too_many_subscriptions_on_one_connection() {
    let c = Cluster::start(1, 1);
    let mut cl = c.subscriber.connect();
    let topics: Vec<String> = (0..1100).map(|i| format!("t{i}")).collect();
    cl.send(&format!("sub {}", topics.join(" ")));
    assert_eq!(cl.line(), "ERR too many subscriptions (max 1024 per connection)");
    cl.send(&format!("sub {}", topics[..1024].join(" ")));
    for t in &topics[..1024] {
        cl.expect(&format!("OK subscribed {t}"));
    }
    cl.send("sub one-more");
    assert_eq!(cl.line(), "ERR too many subscriptions (max 1024 per connection)");
    cl.barrier();
    c.stop();
}
