//! WebSocket and HTTP on the worker servers' ports: tungstenite as an
//! independent client, and raw frames for what a correct client never sends.

use std::io::{Read, Write};
use std::net::TcpStream;

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

use crate::support::*;

type Ws = WebSocket<TcpStream>;

/// A WebSocket client connected to `addr`, past the welcome message.
fn ws_connect(addr: &str) -> Ws {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let (mut ws, response) = tungstenite::client(format!("ws://{addr}/"), stream).expect("handshake");
    assert_eq!(response.status(), 101);
    let welcome = text(&mut ws);
    assert!(welcome.starts_with("Welcome to "), "{welcome}");
    ws
}

/// The next text message (pongs and pings skipped; tungstenite answers pings).
fn text(ws: &mut Ws) -> String {
    loop {
        match ws.read().expect("a message before the timeout") {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected text, got {other:?}"),
        }
    }
}

fn send(ws: &mut Ws, line: &str) {
    ws.send(Message::text(line)).expect("send");
}

fn expect(ws: &mut Ws, want: &str) {
    assert_eq!(text(ws), want);
}

#[test]
fn websocket_subscribes_receives_and_publishes() {
    let c = Cluster::start(1, 1);
    let mut ws = ws_connect(&c.subscriber.addr);
    send(&mut ws, "subscribe news");
    expect(&mut ws, "OK subscribed news");
    let mut line_sub = c.subscriber.connect();
    line_sub.subscribe(&["news"]);

    // A telnet client publishes; the WebSocket subscriber gets one text message.
    let mut publisher = c.source.connect();
    publisher.send("pub news hello from a line client");
    expect(&mut ws, "Received [news]: hello from a line client");
    line_sub.expect("Received [news]: hello from a line client");

    // Bytes that are not UTF-8 reach a WebSocket subscriber replaced, as text.
    publisher.send_bytes(b"pub news caf\xe9\n");
    expect(&mut ws, "Received [news]: caf\u{fffd}");
    line_sub.expect("Received [news]: caf\u{fffd}");

    // The WebSocket client publishes; the line subscriber and itself receive it.
    send(&mut ws, "pub news from the browser side");
    line_sub.expect("Received [news]: from the browser side");
    expect(&mut ws, "Received [news]: from the browser side");

    // Same replies as on a line connection, each one message.
    send(&mut ws, "ping");
    expect(&mut ws, "PONG");
    send(&mut ws, "bogus");
    assert!(text(&mut ws).starts_with("ERR "));
    send(&mut ws, "help");
    let help = text(&mut ws);
    assert!(help.starts_with("Commands") && help.contains("\n  ping"), "{help}");
    send(&mut ws, "ping\nping");
    assert!(text(&mut ws).starts_with("ERR "), "two lines in one message");
    // A WebSocket ping is answered by a pong.
    ws.send(Message::Ping(b"p1".to_vec().into())).unwrap();
    match ws.read().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"p1"),
        other => panic!("expected the pong, got {other:?}"),
    }

    // status and connections tell the kinds apart.
    let conns: serde_json::Value =
        serde_json::from_slice(&c.subscriber.cmd("connections", &["--json"]).stdout).unwrap();
    let kinds: Vec<&str> = conns.as_array().unwrap().iter().map(|c| c["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "ws").count(), 1, "{conns}");
    assert_eq!(kinds.iter().filter(|k| **k == "line").count(), 1, "{conns}");
    let text_out = String::from_utf8(c.subscriber.cmd("connections", &[]).stdout).unwrap();
    assert!(text_out.contains(" ws ") && text_out.contains(" line "), "{text_out}");
    let status = c.subscriber.status();
    let websockets: u64 = status["workers"].as_array().unwrap().iter().map(|w| w["websockets"].as_u64().unwrap()).sum();
    assert_eq!(websockets, 1, "{status}");

    // quit: Bye, then a close frame with 1000.
    send(&mut ws, "quit");
    expect(&mut ws, "Bye");
    match ws.read() {
        Ok(Message::Close(Some(f))) => assert_eq!(f.code, CloseCode::Normal),
        other => panic!("expected a close frame, got {other:?}"),
    }
    c.stop();
}

#[test]
fn websocket_close_handshake_from_the_client() {
    let c = Cluster::start(1, 1);
    let mut ws = ws_connect(&c.subscriber.addr);
    send(&mut ws, "subscribe");
    expect(&mut ws, "OK subscribed topic1");
    ws.close(None).unwrap();
    // The server answers the close; tungstenite reports the handshake done.
    loop {
        match ws.read() {
            Ok(Message::Close(_)) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            other => panic!("expected the close handshake to finish, got {other:?}"),
        }
    }
    c.subscriber
        .wait_status("the connection gone", |s| s["workers"].as_array().unwrap().iter().all(|w| w["connections"] == 0));
    c.stop();
}

/// A raw client past the handshake, for frames no library would send.
fn raw_ws(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{head}");
    s
}

/// Reads an HTTP response head byte by byte (frames follow it).
fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).expect("a response before the timeout"), 1, "closed mid-head: {head:?}");
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

/// A client frame: final, masked.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    fragment(true, opcode, payload)
}

fn fragment(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [1, 2, 3, 4];
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads server frames until the close frame; returns the text messages
/// before it and its code, and checks that the server then closes the connection.
fn until_close(s: &mut TcpStream) -> (Vec<String>, u16) {
    let mut texts = Vec::new();
    loop {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).expect("a frame before the timeout");
        assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
        let len = match h[1] & 0x7F {
            126 => {
                let mut l = [0u8; 2];
                s.read_exact(&mut l).unwrap();
                usize::from(u16::from_be_bytes(l))
            }
            n => usize::from(n),
        };
        let mut payload = vec![0; len];
        s.read_exact(&mut payload).unwrap();
        match h[0] & 0x0F {
            0x1 => texts.push(String::from_utf8(payload).expect("text frames hold UTF-8")),
            0x8 => {
                let mut rest = Vec::new();
                assert!(s.read_to_end(&mut rest).is_ok(), "the server closes after its close frame");
                return (texts, u16::from_be_bytes([payload[0], payload[1]]));
            }
            op => panic!("unexpected opcode {op:#x}"),
        }
    }
}

fn close_code(s: &mut TcpStream) -> u16 {
    until_close(s).1
}

#[test]
fn a_websocket_slow_consumer_is_told_and_closed_with_1008() {
    let c = Cluster::start_with(1, 1, &[], &[], &["--max-send-queue", "65536", "--lagging", "disconnect"]);
    let mut slow = raw_ws(&c.subscriber.addr);
    slow.write_all(&frame(0x1, b"subscribe")).unwrap();
    // Its OK comes before any delivery: subscribed on the server's side too.
    let mut ok = [0u8; 2 + 28 + 2 + 20];
    slow.read_exact(&mut ok).unwrap();
    assert!(ok.ends_with(b"OK subscribed topic1"), "{:?}", String::from_utf8_lossy(&ok));
    // Far more than the socket buffers and the queue hold, while it does not read.
    let mut publisher = c.source.connect();
    let line = format!("publish {}\n", "x".repeat(1000));
    for _ in 0..20_000 {
        publisher.send_bytes(line.as_bytes());
    }
    c.subscriber.wait_status("the slow consumer counted", |s| s["workers"][0]["slow_consumers"] == 1);
    let (texts, status) = until_close(&mut slow);
    assert_eq!(status, 1008);
    let last = texts.last().unwrap();
    assert!(last.starts_with("ERR slow consumer"), "{last}");
    assert!(texts[..texts.len() - 1].iter().all(|t| t.starts_with("Received [topic1]: xxx")), "whole messages only");
    c.stop();
}

#[test]
fn websocket_bad_frames_get_the_right_close_codes() {
    let c = Cluster::start_with(1, 1, &[], &[], &["--max-line", "100"]);
    let addr = &c.subscriber.addr;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked frame", vec![0x81, 0x04, b'p', b'i', b'n', b'g'], 1002),
        ("invalid UTF-8", frame(0x1, b"pub t caf\xe9"), 1007),
        (
            "invalid UTF-8 split across fragments",
            [fragment(false, 0x1, b"pub t \xc3"), frame(0x0, b"(")].concat(),
            1007,
        ),
        ("message over --max-line", frame(0x1, &[b'a'; 101]), 1009),
        ("binary message", frame(0x2, b"ping"), 1003),
        (
            "reserved bit",
            {
                let mut f = frame(0x1, b"ping");
                f[0] |= 0x40;
                f
            },
            1002,
        ),
    ];
    for (what, bytes, want) in cases {
        let mut s = raw_ws(addr);
        s.write_all(&bytes).unwrap();
        assert_eq!(close_code(&mut s), want, "{what}");
    }
    // After all that the server serves as before, and exactly --max-line fits.
    let mut s = raw_ws(addr);
    s.write_all(&frame(0x1, format!("publish {}", "a".repeat(92)).as_bytes())).unwrap();
    s.write_all(&frame(0x8, &1000u16.to_be_bytes())).unwrap();
    assert_eq!(close_code(&mut s), 1000, "a client's close is echoed");
    c.stop();
}

#[test]
fn http_on_the_worker_port() {
    let c = Cluster::start(1, 1);
    let request = |req: &[u8]| -> String {
        let mut s = TcpStream::connect(&c.subscriber.addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(req).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).expect("the whole response, then the server closes");
        String::from_utf8_lossy(&out).into_owned()
    };
    let page = request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n") && page.contains("new WebSocket("), "{page}");
    assert!(request(b"GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
    assert!(request(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").starts_with("HTTP/1.1 405 "));
    let old = request(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n");
    assert!(old.starts_with("HTTP/1.1 426 ") && old.contains("Sec-WebSocket-Version: 13\r\n"), "{old}");
    // A head over 8 KiB: 431 as soon as the limit is crossed, while the client
    // is still sending (the server reads what follows before it closes).
    let mut s = TcpStream::connect(&c.subscriber.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nX-Long: ").unwrap();
    s.write_all(&[b'a'; 20_000]).unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
    // Line clients still get their welcome and are served.
    let mut line = c.subscriber.connect();
    line.barrier();
    c.stop();
}

#[test]
fn websocket_subscriber_survives_reload() {
    let c = Cluster::start(1, 1);
    let mut ws = ws_connect(&c.subscriber.addr);
    send(&mut ws, "subscribe news");
    expect(&mut ws, "OK subscribed news");
    // Half a frame before the reload, the rest after: the decoder's state moves too.
    let mut raw = raw_ws(&c.subscriber.addr);
    let ping = frame(0x1, b"ping");
    raw.write_all(&ping[..4]).unwrap();

    let old = c.subscriber.worker_pids();
    let out = c.subscriber.cmd("reload", &[]);
    assert!(out.status.success(), "reload: {}{}", String::from_utf8_lossy(&out.stderr), c.subscriber.log());
    assert!(c.subscriber.worker_pids().iter().all(|p| !old.contains(p)));

    let mut publisher = c.source.connect();
    publisher.send("pub news after the reload");
    expect(&mut ws, "Received [news]: after the reload");
    send(&mut ws, "ping");
    expect(&mut ws, "PONG");
    raw.write_all(&ping[4..]).unwrap();
    let mut got = [0u8; 2 + 28 + 2 + 4];
    raw.read_exact(&mut got).unwrap();
    assert!(got.ends_with(b"\x81\x04PONG"), "welcome then PONG: {:?}", String::from_utf8_lossy(&got));
    c.stop();
}
