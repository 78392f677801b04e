//! The protocols (fanout's line protocol, the same over WebSocket, NATS, Redis
//! RESP): what a client sends, and decoding what a server sends into `Event`s.

use clap::ValueEnum;
use memchr::memchr;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// Our line protocol (publish to data-source, subscribe at subscriber)
    Fanout,
    /// Our servers over WebSocket: each command and each delivery one text frame
    Ws,
    /// NATS text protocol
    Nats,
    /// Redis RESP pub/sub
    Redis,
}

/// What a server sent, decoded from the front of a buffer.
#[derive(Debug)]
pub enum Event<'a> {
    Message {
        topic: &'a [u8],
        payload: &'a [u8],
    },
    /// A subscription confirmation (fanout `OK subscribed`, Redis `subscribe`).
    Subscribed,
    Pong,
    /// The server pings us (NATS): answer PONG.
    Ping,
    /// Redis' reply to PUBLISH: the number of receivers.
    Ack(i64),
    Error(&'a [u8]),
    Other,
}

/// Result of decoding: None = need more bytes, else the event and bytes used.
type Decoded<'a> = Result<Option<(Event<'a>, usize)>, String>;

impl Proto {
    /// Bytes a new connection sends first.
    pub fn hello(self, out: &mut Vec<u8>) {
        match self {
            Proto::Nats => out.extend_from_slice(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n"),
            // The frames that follow may come before the 101: the server reads them after the head.
            Proto::Ws => out.extend_from_slice(WS_HANDSHAKE),
            Proto::Fanout | Proto::Redis => {}
        }
    }

    /// Subscribes to `topic`; the server's answer is a Subscribed event (fanout,
    /// Redis) or, for NATS, the PONG to the PING sent after the SUB.
    pub fn subscribe(self, out: &mut Vec<u8>, topic: &str) {
        match self {
            Proto::Fanout => out.extend_from_slice(format!("subscribe {topic}\n").as_bytes()),
            Proto::Ws => ws_text(out, format!("subscribe {topic}").as_bytes()),
            Proto::Nats => out.extend_from_slice(format!("SUB {topic} 1\r\nPING\r\n").as_bytes()),
            Proto::Redis => out.extend_from_slice(resp(&["SUBSCRIBE", topic]).as_bytes()),
        }
    }

    /// What goes before and after the payload of a publish to `topic`.
    pub fn publish_frame(self, topic: &str, len: usize) -> (Vec<u8>, &'static [u8]) {
        match self {
            Proto::Fanout => (format!("pub {topic} ").into_bytes(), b"\n"),
            Proto::Ws => {
                let cmd = format!("pub {topic} ");
                let mut head = ws_header(cmd.len() + len);
                head.extend_from_slice(cmd.as_bytes());
                (head, b"")
            }
            Proto::Nats => (format!("PUB {topic} {len}\r\n").into_bytes(), b"\r\n"),
            Proto::Redis => {
                let head = format!("*3\r\n$7\r\nPUBLISH\r\n${}\r\n{topic}\r\n${len}\r\n", topic.len());
                (head.into_bytes(), b"\r\n")
            }
        }
    }

    pub fn ping(self, out: &mut Vec<u8>) {
        out.extend_from_slice(match self {
            Proto::Ws => return ws_text(out, b"ping"),
            Proto::Fanout => b"ping\n",
            Proto::Nats => b"PING\r\n",
            Proto::Redis => b"*1\r\n$4\r\nPING\r\n",
        });
    }

    pub fn decode(self, buf: &[u8]) -> Decoded<'_> {
        match self {
            Proto::Fanout => decode_line(buf),
            Proto::Ws => decode_ws(buf),
            Proto::Nats => decode_nats(buf),
            Proto::Redis => decode_resp(buf),
        }
    }
}

fn resp(args: &[&str]) -> String {
    let mut s = format!("*{}\r\n", args.len());
    for a in args {
        s += &format!("${}\r\n{a}\r\n", a.len());
    }
    s
}

fn after<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    s.strip_prefix(prefix)
}

/// Index of the first CRLF.
fn find_crlf(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    loop {
        let cr = from + memchr(b'\r', &buf[from..])?;
        if buf.get(cr + 1) == Some(&b'\n') {
            return Some(cr);
        }
        from = cr + 1;
    }
}

fn num<T: std::str::FromStr>(s: &[u8]) -> Result<T, String> {
    std::str::from_utf8(s)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad number {:?}", String::from_utf8_lossy(s)))
}

/// Our line protocol: LF-terminated lines.
fn decode_line(buf: &[u8]) -> Decoded<'_> {
    let Some(nl) = memchr(b'\n', buf) else { return Ok(None) };
    let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
    Ok(Some((line_event(line)?, nl + 1)))
}

/// What one line (or one WebSocket text message) of our protocol says.
fn line_event(line: &[u8]) -> Result<Event<'_>, String> {
    Ok(if let Some(rest) = after(line, b"Received [") {
        // Topics never contain ']'.
        let end = memchr(b']', rest).filter(|&e| rest[e..].starts_with(b"]: ")).ok_or("bad 'Received' line")?;
        Event::Message { topic: &rest[..end], payload: &rest[end + 3..] }
    } else if line.starts_with(b"OK subscribed") {
        Event::Subscribed
    } else if line == b"PONG" {
        Event::Pong
    } else if line.starts_with(b"ERR") {
        Event::Error(line)
    } else {
        Event::Other // welcome line and anything informational
    })
}

/// The opening handshake (the key is RFC 6455's example: the bench checks no accept key).
const WS_HANDSHAKE: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// The header of a client's final text frame of `len` bytes, masked with a
/// zero key, so that the payload goes out as it is (the server still unmasks).
fn ws_header(len: usize) -> Vec<u8> {
    let mut h = vec![0x81];
    match len {
        0..=125 => h.push(0x80 | len as u8),
        126..=0xFFFF => {
            h.push(0x80 | 126);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            h.push(0x80 | 127);
            h.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    h.extend_from_slice(&[0; 4]);
    h
}

fn ws_text(out: &mut Vec<u8>, text: &[u8]) {
    out.extend_from_slice(&ws_header(text.len()));
    out.extend_from_slice(text);
}

/// Our protocol over WebSocket: the 101 response, then unmasked server frames.
fn decode_ws(buf: &[u8]) -> Decoded<'_> {
    if buf.starts_with(b"HTTP/") {
        let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else { return Ok(None) };
        if !buf.starts_with(b"HTTP/1.1 101 ") {
            return Err(format!("handshake refused: {:?}", String::from_utf8_lossy(&buf[..end])));
        }
        return Ok(Some((Event::Other, end + 4)));
    }
    let [b0, b1, ..] = *buf else { return Ok(None) };
    let (len, at) = match b1 & 0x7F {
        126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize, 10),
        126 | 127 => return Ok(None),
        n => (usize::from(n), 2),
    };
    let Some(payload) = buf.get(at..at + len) else { return Ok(None) };
    let ev = match b0 & 0x0F {
        0x1 => line_event(payload)?,
        0x8 => Event::Error(payload),
        0x9 | 0xA => Event::Other,
        op => return Err(format!("unexpected WebSocket frame opcode {op:#x}")),
    };
    Ok(Some((ev, at + len)))
}

/// NATS: CRLF-terminated control lines; MSG is followed by its payload.
fn decode_nats(buf: &[u8]) -> Decoded<'_> {
    let Some(nl) = find_crlf(buf) else { return Ok(None) };
    let line = &buf[..nl];
    let ev = if let Some(args) = after(line, b"MSG ") {
        // MSG <subject> <sid> [reply-to] <#bytes>
        let topic = args.split(|&b| b == b' ').find(|f| !f.is_empty()).ok_or("bad MSG line")?;
        let len: usize = num(args.rsplit(|&b| b == b' ').find(|f| !f.is_empty()).ok_or("bad MSG line")?)?;
        let start = nl + 2;
        if buf.len() < start + len + 2 {
            return Ok(None);
        }
        if &buf[start + len..start + len + 2] != b"\r\n" {
            return Err("MSG payload not followed by CRLF".into());
        }
        return Ok(Some((Event::Message { topic, payload: &buf[start..start + len] }, start + len + 2)));
    } else if line == b"PING" {
        Event::Ping
    } else if line == b"PONG" {
        Event::Pong
    } else if line.starts_with(b"-ERR") {
        Event::Error(line)
    } else if line.starts_with(b"INFO") || line == b"+OK" {
        Event::Other
    } else {
        return Err(format!("unexpected NATS line {:?}", String::from_utf8_lossy(line)));
    };
    Ok(Some((ev, nl + 2)))
}

/// One RESP value: a bulk or simple string, an integer or an error.
enum Resp<'a> {
    Str(&'a [u8]),
    Int(i64),
    Err(&'a [u8]),
}

/// Decodes the scalar RESP value at `pos`: Ok(None) if incomplete.
fn resp_scalar(buf: &[u8], pos: usize) -> Result<Option<(Resp<'_>, usize)>, String> {
    let Some(nl) = find_crlf(&buf[pos..]) else { return Ok(None) };
    let (kind, line, next) = (buf.get(pos).copied(), &buf[pos + 1..pos + nl], pos + nl + 2);
    Ok(Some(match kind {
        Some(b'$') => {
            let len: usize = num(line)?;
            if buf.len() < next + len + 2 {
                return Ok(None);
            }
            (Resp::Str(&buf[next..next + len]), next + len + 2)
        }
        Some(b'+') => (Resp::Str(line), next),
        Some(b':') => (Resp::Int(num(line)?), next),
        Some(b'-') => (Resp::Err(line), next),
        _ => return Err(format!("unexpected RESP byte at {:?}", String::from_utf8_lossy(&buf[pos..pos + nl]))),
    }))
}

/// Redis: replies and pub/sub pushes (arrays of scalars).
fn decode_resp(buf: &[u8]) -> Decoded<'_> {
    if buf.first() != Some(&b'*') {
        let Some((v, used)) = resp_scalar(buf, 0)? else { return Ok(None) };
        let ev = match v {
            Resp::Str(b"PONG") => Event::Pong,
            Resp::Int(n) => Event::Ack(n),
            Resp::Err(e) => Event::Error(e),
            Resp::Str(_) => Event::Other,
        };
        return Ok(Some((ev, used)));
    }
    let Some(nl) = find_crlf(buf) else { return Ok(None) };
    let n: usize = num(&buf[1..nl])?;
    let (mut pos, mut items) = (nl + 2, [&b""[..]; 3]);
    for i in 0..n {
        let Some((v, next)) = resp_scalar(buf, pos)? else { return Ok(None) };
        if let (Resp::Str(s), Some(item)) = (v, items.get_mut(i)) {
            *item = s;
        }
        pos = next;
    }
    let ev = match items[0] {
        b"message" => Event::Message { topic: items[1], payload: items[2] },
        b"subscribe" => Event::Subscribed,
        b"pong" => Event::Pong,
        _ => Event::Other,
    };
    Ok(Some((ev, pos)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload;

    #[test]
    fn decoders() {
        let (ev, n) = decode_line(b"Received [t1]: abc\nx").unwrap().unwrap();
        assert!(matches!(ev, Event::Message { topic: b"t1", payload: b"abc" }) && n == 19);
        let buf = b"MSG t1 1 3\r\nabc\r\n";
        let (ev, n) = decode_nats(buf).unwrap().unwrap();
        assert!(matches!(ev, Event::Message { topic: b"t1", payload: b"abc" }) && n == buf.len());
        assert!(decode_nats(&buf[..14]).unwrap().is_none());
        let buf = b"*3\r\n$7\r\nmessage\r\n$2\r\nt1\r\n$3\r\nabc\r\n";
        let (ev, n) = decode_resp(buf).unwrap().unwrap();
        assert!(matches!(ev, Event::Message { topic: b"t1", payload: b"abc" }) && n == buf.len());
        assert!(decode_resp(&buf[..buf.len() - 1]).unwrap().is_none());
        assert!(matches!(decode_resp(b":12\r\n").unwrap().unwrap().0, Event::Ack(12)));
        let buf = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x10Received [t1]: x";
        let (ev, n) = decode_ws(buf).unwrap().unwrap();
        assert!(matches!(ev, Event::Other) && n == buf.len() - 18);
        assert!(decode_ws(&buf[n..buf.len() - 1]).unwrap().is_none());
        let (ev, _) = decode_ws(&buf[n..]).unwrap().unwrap();
        assert!(matches!(ev, Event::Message { topic: b"t1", payload: b"x" }));
        let mut p = Vec::new();
        payload::put(&mut p, 42, 7, &[b'.'; 32]);
        assert_eq!(payload::parse(&p, 64), Some((42, 7)));
    }
}
