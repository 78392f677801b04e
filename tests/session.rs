//! The walk-through from the README, as a person would do it with telnet.

use crate::support::*;

#[test]
fn seed_session() {
    let c = Cluster::start(4, 1);
    let mut sub = c.subscriber.connect();
    sub.send("subscribe");
    sub.expect("OK subscribed topic1");
    let mut src = c.source.connect();
    src.send("publish your_data");
    sub.expect("Received [topic1]: your_data");

    let status = c.source.status();
    assert_eq!(status["workers"].as_array().unwrap().len(), 4);
    let text = String::from_utf8(c.source.cmd("status", &[]).stdout).unwrap();
    assert!(text.contains("msgs_in") && text.lines().count() >= 7, "status table:\n{text}");

    let conns: serde_json::Value =
        serde_json::from_slice(&c.subscriber.cmd("connections", &["--json"]).stdout).unwrap();
    let conns = conns.as_array().unwrap();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0]["topics"], serde_json::json!(["topic1"]));
    assert_eq!(conns[0]["peer"], sub.stream.local_addr().unwrap().to_string());
    c.stop();
}

#[test]
fn telnet_negotiation_is_ignored() {
    let c = Cluster::start(1, 1);
    let mut sub = c.subscriber.connect();
    // What a telnet client sends on connect, then the command split by IAC bytes.
    sub.send_bytes(b"\xff\xfd\x03\xff\xfb\x18\xff\xfa\x18\x00xterm\xff\xf0sub");
    sub.send_bytes(b"scr\xff");
    sub.send_bytes(b"\xf1ibe\r\n");
    sub.expect("OK subscribed topic1");
    let mut src = c.source.connect();
    src.send_bytes(b"PUBLISH hello \xff\xff world\r\n");
    sub.expect("Received [topic1]: hello \u{fffd} world");
    c.stop();
}

#[test]
fn help_ping_quit() {
    let c = Cluster::start(1, 1);
    let mut cl = c.subscriber.connect();
    cl.send("PING");
    cl.expect("PONG");
    cl.send("help");
    assert!(cl.line().starts_with("Commands"));
    cl.send("");
    cl.send("   ");
    cl.send("quit");
    let mut rest = Vec::new();
    while let Some(l) = cl.try_line() {
        rest.push(l);
    }
    assert_eq!(rest.last().map(String::as_str), Some("Bye"));
    c.stop();
}
