//! The NATS client protocol, as far as a worker needs it to use a NATS cluster
//! as its bus: a pure, incremental parser of what a server sends and encoders
//! for what a client sends, plus the mapping of topic names to subjects.
//!
//! Hand-written rather than taken from a crate: the synchronous `nats` crate is
//! deprecated and `async-nats` needs tokio, while a worker drives every socket
//! from its own mio loop. The protocol is a handful of text lines:
//! <https://docs.nats.io/reference/reference-protocols/nats-protocol>.
//!
//! ```text
//! server → client   INFO {json}  MSG <subject> <sid> [reply] <#bytes>\r\n<payload>  PING  PONG  +OK  -ERR '<why>'
//! client → server   CONNECT {json}  SUB <subject> <sid>  UNSUB <sid>  PUB <subject> <#bytes>\r\n<payload>  PING  PONG
//! ```

use std::borrow::Cow;

use memchr::memchr;

use super::framing::Framing;
use serde::{Deserialize, Serialize};

/// Longest control line accepted from a server (the NATS default for clients).
pub const MAX_CONTROL_LINE: usize = 4096;
/// INFO lists every server of the cluster (`connect_urls`), so a large cluster's
/// INFO may be longer than any other line.
pub const MAX_INFO_LINE: usize = 64 * 1024;
/// The payload limit until a server's INFO says otherwise (the NATS default).
pub const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

pub const PING: &[u8] = b"PING\r\n";
pub const PONG: &[u8] = b"PONG\r\n";

/// What a server says about itself and its cluster; the fields a client uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Info {
    #[serde(default)]
    pub server_id: String,
    #[serde(default)]
    pub server_name: String,
    #[serde(default = "default_max_payload")]
    pub max_payload: usize,
    /// The other servers of the cluster a client may fail over to (`host:port`).
    #[serde(default)]
    pub connect_urls: Vec<String>,
    #[serde(default)]
    pub auth_required: bool,
    #[serde(default)]
    pub tls_required: bool,
}

fn default_max_payload() -> usize {
    DEFAULT_MAX_PAYLOAD
}

/// One operation sent by a server; `Msg` borrows from the parsed buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Op<'a> {
    Info(Box<Info>),
    Msg {
        subject: &'a [u8],
        sid: &'a [u8],
        reply: Option<&'a [u8]>,
        payload: &'a [u8],
    },
    Ping,
    Pong,
    Ok,
    /// `-ERR '<why>'`, without the quotes.
    Err(&'a [u8]),
}

#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// A control line longer than allowed, without its end in sight.
    LineTooLong(usize),
    /// A MSG announcing more bytes than the server's `max_payload`.
    PayloadTooLarge {
        size: usize,
        max: usize,
    },
    UnknownOp(String),
    Malformed(&'static str),
    BadInfo(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::LineTooLong(n) => write!(f, "control line longer than {n} bytes"),
            Error::PayloadTooLarge { size, max } => write!(f, "payload of {size} bytes over max_payload {max}"),
            Error::UnknownOp(op) => write!(f, "unknown operation {op:?}"),
            Error::Malformed(why) => write!(f, "malformed operation: {why}"),
            Error::BadInfo(why) => write!(f, "unreadable INFO: {why}"),
        }
    }
}

impl std::error::Error for Error {}

/// Parses the operation `buf` starts with. Returns it with the number of bytes
/// it took, or `None` if `buf` does not hold all of it yet (read more and call
/// again with the same start). `max_payload` bounds a MSG's payload: the
/// server's own limit, from its INFO.
pub fn parse(buf: &[u8], max_payload: usize) -> Result<Option<(Op<'_>, usize)>, Error> {
    let limit = if starts_with_ignore_case(buf, b"INFO") { MAX_INFO_LINE } else { MAX_CONTROL_LINE };
    let Some(nl) = memchr(b'\n', &buf[..buf.len().min(limit)]) else {
        return match buf.len() >= limit {
            true => Err(Error::LineTooLong(limit)),
            false => Ok(None),
        };
    };
    let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
    let after = nl + 1;
    let (op, args) = match line.iter().position(|b| is_space(*b)) {
        Some(i) => (&line[..i], trim(&line[i..])),
        None => (line, &line[..0]),
    };
    let op = match op.to_ascii_uppercase().as_slice() {
        b"MSG" => return parse_msg(args, &buf[after..], max_payload).map(|m| m.map(|(op, n)| (op, after + n))),
        b"PING" => Op::Ping,
        b"PONG" => Op::Pong,
        b"+OK" => Op::Ok,
        b"-ERR" => Op::Err(args.strip_prefix(b"'").and_then(|a| a.strip_suffix(b"'")).unwrap_or(args)),
        b"INFO" => Op::Info(serde_json::from_slice(args).map_err(|e| Error::BadInfo(e.to_string()))?),
        _ => return Err(Error::UnknownOp(String::from_utf8_lossy(op).into_owned())),
    };
    Ok(Some((op, after)))
}

/// A MSG's arguments and what follows its control line.
fn parse_msg<'a>(args: &'a [u8], rest: &'a [u8], max_payload: usize) -> Result<Option<(Op<'a>, usize)>, Error> {
    let mut words = args.split(|b| is_space(*b)).filter(|w| !w.is_empty());
    let (subject, sid) = match (words.next(), words.next()) {
        (Some(subject), Some(sid)) => (subject, sid),
        _ => return Err(Error::Malformed("MSG without subject and sid")),
    };
    let (reply, size) = match (words.next(), words.next(), words.next()) {
        (Some(size), None, None) => (None, size),
        (Some(reply), Some(size), None) => (Some(reply), size),
        _ => return Err(Error::Malformed("MSG with a wrong number of arguments")),
    };
    let size = std::str::from_utf8(size)
        .ok()
        .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<usize>().ok())
        .ok_or(Error::Malformed("MSG size is not a number"))?;
    if size > max_payload {
        return Err(Error::PayloadTooLarge { size, max: max_payload });
    }
    if rest.len() < size + 2 {
        return Ok(None);
    }
    if &rest[size..size + 2] != b"\r\n" {
        return Err(Error::Malformed("MSG payload not followed by CRLF"));
    }
    Ok(Some((Op::Msg { subject, sid, reply, payload: &rest[..size] }, size + 2)))
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !is_space(*b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !is_space(*b)).map_or(start, |e| e + 1);
    &s[start..end]
}

fn starts_with_ignore_case(buf: &[u8], word: &[u8]) -> bool {
    buf.len() >= word.len() && buf[..word.len()].eq_ignore_ascii_case(word)
}

// ---- client → server --------------------------------------------------------

/// How a client proves who it is, if the server asks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Auth {
    #[default]
    None,
    Token(String),
    User {
        user: String,
        pass: String,
    },
}

#[derive(Serialize)]
struct Connect<'a> {
    /// No `+OK` after every command: errors still come as `-ERR`.
    verbose: bool,
    pedantic: bool,
    protocol: u8,
    lang: &'static str,
    version: &'static str,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pass: Option<&'a str>,
}

/// `CONNECT {…}`: the answer to a server's INFO. `name` shows in the server's
/// monitoring (`/connz`).
pub fn connect(out: &mut Vec<u8>, name: &str, auth: &Auth) {
    let (auth_token, user, pass) = match auth {
        Auth::None => (None, None, None),
        Auth::Token(t) => (Some(t.as_str()), None, None),
        Auth::User { user, pass } => (None, Some(user.as_str()), Some(pass.as_str())),
    };
    let c = Connect {
        verbose: false,
        pedantic: false,
        protocol: 1,
        lang: "rust",
        version: env!("CARGO_PKG_VERSION"),
        name,
        auth_token,
        user,
        pass,
    };
    out.extend_from_slice(b"CONNECT ");
    serde_json::to_writer(&mut *out, &c).expect("serialising to a Vec cannot fail");
    out.extend_from_slice(b"\r\n");
}

pub fn sub(out: &mut Vec<u8>, subject: &[u8], sid: u64) {
    out.extend_from_slice(b"SUB ");
    out.extend_from_slice(subject);
    out.extend_from_slice(format!(" {sid}\r\n").as_bytes());
}

pub fn unsub(out: &mut Vec<u8>, sid: u64) {
    out.extend_from_slice(format!("UNSUB {sid}\r\n").as_bytes());
}

pub fn publish(out: &mut Vec<u8>, subject: &[u8], payload: &[u8]) {
    out.extend_from_slice(b"PUB ");
    out.extend_from_slice(subject);
    out.extend_from_slice(format!(" {}\r\n", payload.len()).as_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// How a queue of client operations made by the encoders above finds them
/// (`runtime::outbound`).
pub const FRAMING: Framing = Framing { len: op_len, is_publish };

fn is_publish(buf: &[u8]) -> bool {
    buf.starts_with(b"PUB ")
}

/// The length of the client operation `buf` starts with (a whole one).
fn op_len(buf: &[u8]) -> usize {
    let line = memchr(b'\n', buf).expect("a whole operation") + 1;
    if !is_publish(buf) {
        return line;
    }
    let size = buf[..line - 2].rsplit(|b| *b == b' ').next().unwrap();
    let size: usize = std::str::from_utf8(size).unwrap().parse().unwrap();
    line + size + 2
}

// ---- topics and subjects ----------------------------------------------------

/// The first token of every subject this server uses: its traffic shares the
/// cluster with other applications without meeting theirs.
pub const SUBJECT_PREFIX: &[u8] = b"fanout.";

/// The bytes a topic may contain that mean something in a subject (`.`
/// separates tokens, `*` and `>` are wildcards) and the escape character.
const ESCAPED: &[u8] = b".*>%";
const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Appends the subject of a topic: `fanout.` and the topic as one token, with
/// `.`, `*`, `>` and `%` written as `%2E`, `%2A`, `%3E`, `%25`. A topic is
/// 1–128 bytes of printable ASCII (no whitespace), so the result is always a
/// valid literal subject of two tokens, and two topics never share a subject
/// ([`topic`] inverts it).
pub fn subject(topic: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(SUBJECT_PREFIX);
    for &b in topic {
        if ESCAPED.contains(&b) {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        } else {
            out.push(b);
        }
    }
}

/// The topic whose subject this is, or `None` for a subject [`subject`] never
/// makes (another application's, or not in the canonical escaping). Borrowed
/// unless something was escaped.
pub fn topic(subject: &[u8]) -> Option<Cow<'_, [u8]>> {
    let token = subject.strip_prefix(SUBJECT_PREFIX)?;
    if !token.is_empty() && !token.iter().any(|b| ESCAPED.contains(b)) {
        return Some(Cow::Borrowed(token));
    }
    let mut topic = Vec::with_capacity(token.len());
    let mut rest = token;
    while let Some((&b, tail)) = rest.split_first() {
        if b != b'%' {
            if ESCAPED.contains(&b) {
                return None;
            }
            topic.push(b);
            rest = tail;
            continue;
        }
        let digit = |i: usize| tail.get(i).and_then(|d| HEX.iter().position(|h| h == d));
        let byte = (digit(0)? << 4 | digit(1)?) as u8;
        if !ESCAPED.contains(&byte) {
            return None;
        }
        topic.push(byte);
        rest = &tail[2..];
    }
    (!topic.is_empty()).then_some(Cow::Owned(topic))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const INFO: &[u8] = b"INFO {\"server_id\":\"N1\",\"server_name\":\"a\",\"max_payload\":64,\"connect_urls\":[\"127.0.0.1:4223\"],\"headers\":true} \r\n";

    /// A server's stream holding every kind of operation.
    fn stream() -> Vec<u8> {
        [
            INFO,
            b"PING\r\n",
            b"MSG fanout.t 1 5\r\nhello\r\n",
            b"msg fanout.t\t2  reply.to 0\r\n\r\n",
            b"MSG fanout.t 3 8\r\nwith\r\nCR\r\n",
            b"+OK\r\npong\r\n",
            b"-ERR 'Stale Connection'\r\n",
        ]
        .concat()
    }

    fn expected() -> Vec<String> {
        let info = Info {
            server_id: "N1".into(),
            server_name: "a".into(),
            max_payload: 64,
            connect_urls: vec!["127.0.0.1:4223".into()],
            auth_required: false,
            tls_required: false,
        };
        let msg =
            |sid: &'static [u8], reply, payload: &'static [u8]| Op::Msg { subject: b"fanout.t", sid, reply, payload };
        [
            Op::Info(Box::new(info)),
            Op::Ping,
            msg(b"1", None, b"hello"),
            msg(b"2", Some(b"reply.to"), b""),
            msg(b"3", None, b"with\r\nCR"),
            Op::Ok,
            Op::Pong,
            Op::Err(b"Stale Connection"),
        ]
        .iter()
        .map(|op| format!("{op:?}"))
        .collect()
    }

    /// Feeds `data` in the given pieces as a client would, keeping unparsed
    /// bytes for the next read, and collects what is parsed.
    fn parse_pieces(pieces: &[&[u8]], max_payload: usize) -> Result<Vec<String>, Error> {
        let (mut buf, mut out) = (Vec::new(), Vec::new());
        for p in pieces {
            buf.extend_from_slice(p);
            let mut at = 0;
            while let Some((op, n)) = parse(&buf[at..], max_payload)? {
                out.push(format!("{op:?}"));
                at += n;
            }
            buf.drain(..at);
        }
        assert!(buf.is_empty(), "bytes left over: {:?}", String::from_utf8_lossy(&buf));
        Ok(out)
    }

    #[test]
    fn every_operation_whole_and_bytewise() {
        let data = stream();
        assert_eq!(parse_pieces(&[&data], 64).unwrap(), expected());
        let bytewise: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(parse_pieces(&bytewise, 64).unwrap(), expected());
    }

    proptest! {
        /// Split at any two points, the stream parses to the same operations.
        #[test]
        fn any_split(a in 0usize..300, b in 0usize..300) {
            let data = stream();
            let (a, b) = (a.min(data.len()), b.min(data.len()));
            let (a, b) = (a.min(b), a.max(b));
            prop_assert_eq!(parse_pieces(&[&data[..a], &data[a..b], &data[b..]], 64).unwrap(), expected());
        }

        /// Arbitrary bytes never panic, and an error or an incomplete op is all
        /// a parser can answer besides an op no longer than its input.
        #[test]
        fn garbage_is_an_error_or_incomplete(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(Some((_, n))) = parse(&data, 64) {
                prop_assert!(n <= data.len());
            }
        }
    }

    #[test]
    fn limits() {
        let long = [b"MSG ".as_slice(), &[b'x'; MAX_CONTROL_LINE]].concat();
        assert_eq!(parse(&long, 64), Err(Error::LineTooLong(MAX_CONTROL_LINE)));
        assert_eq!(parse(&long[..MAX_CONTROL_LINE - 1], 64), Ok(None), "not yet too long");
        let info = [b"INFO {\"connect_urls\":[\"".as_slice(), &[b'h'; 8000], b"\"]}\r\n"].concat();
        assert!(matches!(parse(&info, 64), Ok(Some((Op::Info(_), n))) if n == info.len()), "INFO may be longer");
        assert_eq!(parse(b"MSG s 1 65\r\n", 64), Err(Error::PayloadTooLarge { size: 65, max: 64 }));
        assert!(parse(b"MSG s 1 64\r\n", 64).unwrap().is_none(), "at the limit: waits for the payload");
        assert_eq!(parse(b"MSG s 1 2\r\nabcd\r\n", 64), Err(Error::Malformed("MSG payload not followed by CRLF")));
        assert!(matches!(parse(b"MSG s 1 -2\r\n", 64), Err(Error::Malformed(_))));
        assert!(matches!(parse(b"MSG s\r\n", 64), Err(Error::Malformed(_))));
        assert!(matches!(parse(b"HMSG s 1 2 2\r\n", 64), Err(Error::UnknownOp(_))));
        assert!(matches!(parse(b"INFO nope\r\n", 64), Err(Error::BadInfo(_))));
    }

    #[test]
    fn encoders() {
        let mut out = Vec::new();
        connect(&mut out, "subscriber[42]", &Auth::User { user: "u".into(), pass: "p\"w".into() });
        sub(&mut out, b"fanout.t", 7);
        publish(&mut out, b"fanout.t", b"hi");
        unsub(&mut out, 7);
        out.extend_from_slice(PING);
        let want = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"lang\":\"rust\",\"version\":\"{}\",\"name\":\"subscriber[42]\",\"user\":\"u\",\"pass\":\"p\\\"w\"}}\r\n\
             SUB fanout.t 7\r\nPUB fanout.t 2\r\nhi\r\nUNSUB 7\r\nPING\r\n",
            env!("CARGO_PKG_VERSION")
        );
        let mut at = 0;
        let ops: Vec<(usize, bool)> = std::iter::from_fn(|| {
            (at < out.len()).then(|| {
                let op = (op_len(&out[at..]), is_publish(&out[at..]));
                at += op.0;
                op
            })
        })
        .collect();
        let lens: Vec<(usize, bool)> =
            [(want.find("SUB").unwrap(), false), (16, false), (20, true), (9, false), (6, false)].into();
        assert_eq!(ops, lens, "op_len cuts the queue between operations");
        assert_eq!(String::from_utf8(out).unwrap(), want);
        let mut out = Vec::new();
        connect(&mut out, "n", &Auth::Token("t0k".into()));
        assert!(String::from_utf8(out).unwrap().contains(",\"name\":\"n\",\"auth_token\":\"t0k\"}\r\n"));
    }

    fn subject_of(topic: &[u8]) -> Vec<u8> {
        let mut s = Vec::new();
        subject(topic, &mut s);
        s
    }

    /// A literal subject: tokens separated by single dots, none empty, no
    /// wildcard token, no whitespace; ours has exactly two tokens.
    fn is_literal_two_tokens(s: &[u8]) -> bool {
        let tokens: Vec<&[u8]> = s.split(|b| *b == b'.').collect();
        tokens.len() == 2
            && tokens.iter().all(|t| !t.is_empty() && !t.contains(&b'*') && !t.contains(&b'>'))
            && s.iter().all(|b| b.is_ascii_graphic())
    }

    #[test]
    fn subjects_of_tricky_topics() {
        assert_eq!(subject_of(b"topic1"), b"fanout.topic1");
        assert_eq!(subject_of(b"a.b"), b"fanout.a%2Eb");
        assert_eq!(subject_of(b"a%2Eb"), b"fanout.a%252Eb");
        assert_eq!(subject_of(b">"), b"fanout.%3E");
        assert_eq!(subject_of(b"*.*"), b"fanout.%2A%2E%2A");
        for not_ours in
            [&b"other.t"[..], b"fanout.", b"fanout.a.b", b"fanout.%2e", b"fanout.%41", b"fanout.%2", b"fanout.*"]
        {
            assert_eq!(topic(not_ours), None, "{}", String::from_utf8_lossy(not_ours));
        }
    }

    proptest! {
        /// Every topic maps to a valid literal subject that maps back to it, so
        /// distinct topics have distinct subjects.
        #[test]
        fn subject_mapping_is_literal_and_invertible(t in "[!-~]{1,128}") {
            let s = subject_of(t.as_bytes());
            prop_assert!(is_literal_two_tokens(&s), "{}", String::from_utf8_lossy(&s));
            prop_assert_eq!(topic(&s).map(Cow::into_owned), Some(t.into_bytes()));
        }

        #[test]
        fn distinct_topics_distinct_subjects(a in "[!-~.*>%]{1,8}", b in "[!-~.*>%]{1,8}") {
            prop_assume!(a != b);
            prop_assert_ne!(subject_of(a.as_bytes()), subject_of(b.as_bytes()));
        }
    }
}
