//! The channel protocol: length-framed binary messages between workers and the
//! channel server. The format is described in `docs/channel-protocol.md`.
//!
//! ```text
//! frame = length:u32be  kind:u8  body        (length counts kind + body)
//! ```

use std::io::{self, Read};

use super::topic;

/// 2 added PING/PONG and SUBERR.
pub const VERSION: u8 = 2;
/// Largest message body a publish can carry.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Largest `kind + body` a peer may send; anything larger ends the link.
pub const MAX_FRAME: usize = 2 + topic::MAX_LEN + MAX_MESSAGE;
const LEN: usize = 4;

const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const SUB: u8 = 3;
const SUBACK: u8 = 4;
const UNSUB: u8 = 5;
const PUBLISH: u8 = 6;
const ERROR: u8 = 7;
const SUBERR: u8 = 8;
const PING: u8 = 9;
const PONG: u8 = 10;

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Frame<'a> {
    /// worker → server, first frame: protocol version and shared secret.
    Hello {
        version: u8,
        secret: &'a [u8],
    },
    /// server → worker: the hello was accepted.
    Welcome {
        version: u8,
    },
    Sub(&'a [u8]),
    /// server → worker: the subscription to this topic is in effect.
    SubAck(&'a [u8]),
    Unsub(&'a [u8]),
    /// Both ways: a worker publishes, the server forwards the same bytes.
    Publish {
        topic: &'a [u8],
        message: &'a [u8],
    },
    /// server → worker, just before it closes the link.
    Error(&'a [u8]),
    /// server → worker: the SUB of this topic is refused (a limit), and why.
    SubErr {
        topic: &'a [u8],
        reason: &'a [u8],
    },
    /// worker → server: are you there? Answered by PONG.
    Ping,
    Pong,
}

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The announced length, and the limit it exceeds.
    TooLarge(usize, usize),
    UnknownKind(u8),
    Malformed(&'static str),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::TooLarge(n, max) => write!(f, "frame of {n} bytes exceeds the limit of {max}"),
            DecodeError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            DecodeError::Malformed(why) => write!(f, "malformed frame: {why}"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl Frame<'_> {
    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Frame::Hello { version, secret } => put(out, HELLO, &[&[version], secret]),
            Frame::Welcome { version } => put(out, WELCOME, &[&[version]]),
            Frame::Sub(t) => put(out, SUB, &[t]),
            Frame::SubAck(t) => put(out, SUBACK, &[t]),
            Frame::Unsub(t) => put(out, UNSUB, &[t]),
            Frame::Publish { topic, message } => {
                debug_assert!(topic.len() <= topic::MAX_LEN);
                put(out, PUBLISH, &[&[topic.len() as u8], topic, message])
            }
            Frame::Error(why) => put(out, ERROR, &[why]),
            Frame::SubErr { topic, reason } => put(out, SUBERR, &[&[topic.len() as u8], topic, reason]),
            Frame::Ping => put(out, PING, &[]),
            Frame::Pong => put(out, PONG, &[]),
        }
    }
}

/// The length of the encoded frame that `buf` starts with, prefix included
/// (`buf` holds at least the prefix).
fn encoded_len(buf: &[u8]) -> usize {
    LEN + u32::from_be_bytes(buf[..LEN].try_into().unwrap()) as usize
}

fn put(out: &mut Vec<u8>, kind: u8, parts: &[&[u8]]) {
    let len = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(kind);
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// Decodes `kind + body` (the bytes after the length).
fn decode_body(b: &[u8]) -> Result<Frame<'_>, DecodeError> {
    let (&kind, body) = b.split_first().ok_or(DecodeError::Malformed("empty frame"))?;
    let topic = |t: &'_ [u8]| topic::check_len(t).map_err(|_| DecodeError::Malformed("bad topic length"));
    Ok(match kind {
        HELLO => {
            let (&version, secret) = body.split_first().ok_or(DecodeError::Malformed("hello without version"))?;
            Frame::Hello { version, secret }
        }
        WELCOME => match body {
            [version] => Frame::Welcome { version: *version },
            _ => return Err(DecodeError::Malformed("bad welcome")),
        },
        SUB | SUBACK | UNSUB => {
            topic(body)?;
            match kind {
                SUB => Frame::Sub(body),
                SUBACK => Frame::SubAck(body),
                _ => Frame::Unsub(body),
            }
        }
        PUBLISH | SUBERR => {
            let publish = kind == PUBLISH;
            let (&n, rest) = body.split_first().ok_or(DecodeError::Malformed(match publish {
                true => "publish without topic",
                false => "suberr without topic",
            }))?;
            let n = n as usize;
            if rest.len() < n {
                return Err(DecodeError::Malformed(match publish {
                    true => "publish topic overruns frame",
                    false => "suberr topic overruns frame",
                }));
            }
            topic(&rest[..n])?;
            let (t, rest) = rest.split_at(n);
            match publish {
                true => Frame::Publish { topic: t, message: rest },
                false => Frame::SubErr { topic: t, reason: rest },
            }
        }
        ERROR => Frame::Error(body),
        PING | PONG if !body.is_empty() => return Err(DecodeError::Malformed("ping or pong with a body")),
        PING => Frame::Ping,
        PONG => Frame::Pong,
        k => return Err(DecodeError::UnknownKind(k)),
    })
}

// ---- queued frames ------------------------------------------------------------
//
// A queue of encoded frames (`runtime::outbound`, framed) asks these where its
// frames begin and end. Each takes a buffer that starts at a frame and holds
// whole frames (the last one possibly still arriving is never asked about).

fn is_publish(frame: &[u8]) -> bool {
    frame.get(LEN) == Some(&PUBLISH)
}

/// The start of the frame that byte `at` of `buf` belongs to, or `at` itself
/// if a frame starts there (or `buf` ends there).
pub fn start_of(buf: &[u8], at: usize) -> usize {
    let mut pos = 0;
    while pos + LEN <= buf.len() {
        let end = pos + encoded_len(&buf[pos..]);
        if end > at {
            return pos;
        }
        pos = end;
    }
    pos
}

/// The end of the frame being written when `at` bytes are out: `at` itself
/// if it falls between frames.
pub fn end_of(buf: &[u8], at: usize) -> usize {
    match start_of(buf, at) {
        start if start < at => start + encoded_len(&buf[start..]),
        _ => at,
    }
}

/// How many frames `buf` holds.
pub fn count(mut buf: &[u8]) -> u64 {
    let mut n = 0;
    while buf.len() >= LEN {
        buf = &buf[encoded_len(buf).min(buf.len())..];
        n += 1;
    }
    n
}

/// How many publish frames `buf` holds.
pub fn count_publishes(mut buf: &[u8]) -> u64 {
    let mut n = 0;
    while buf.len() > LEN {
        n += u64::from(is_publish(buf));
        buf = &buf[encoded_len(buf).min(buf.len())..];
    }
    n
}

/// Where the first publish not yet started begins, `written` bytes being out
/// (the end of `buf` if there is none).
pub fn first_unstarted_publish(buf: &[u8], written: usize) -> usize {
    let mut at = 0;
    while at < buf.len() && (at < written || !is_publish(&buf[at..])) {
        at += encoded_len(&buf[at..]);
    }
    at
}

/// The publishes of `buf` not yet started when `written` bytes are out, and
/// how many publishes were cut in half.
pub fn unstarted_publishes(buf: &[u8], written: usize) -> (Vec<u8>, u64) {
    let mut kept = Vec::with_capacity(buf.len().saturating_sub(written));
    let (mut at, mut lost) = (0, 0);
    while at < buf.len() {
        let end = at + encoded_len(&buf[at..]);
        if is_publish(&buf[at..]) {
            match at >= written {
                true => kept.extend_from_slice(&buf[at..end]),
                false if written < end => lost += 1,
                false => {}
            }
        }
        at = end;
    }
    (kept, lost)
}

/// Input buffer of one link: reads straight from the socket and hands out
/// whole frames as slices of itself, so forwarding needs no copy.
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Largest `kind + body` accepted.
    max: usize,
}

impl Default for FrameReader {
    fn default() -> FrameReader {
        FrameReader::limited(MAX_FRAME)
    }
}

const READ_CHUNK: usize = 64 * 1024;

impl FrameReader {
    /// A reader that refuses frames over `max` and, until a frame needs
    /// more, buffers no more than a frame of that size.
    pub fn limited(max: usize) -> FrameReader {
        FrameReader { buf: Vec::new(), start: 0, end: 0, max }
    }

    /// Raises (or lowers) the largest frame accepted from now on.
    pub fn set_limit(&mut self, max: usize) {
        self.max = max;
    }

    /// A reader holding bytes received (and not parsed) by another process.
    pub fn with_bytes(bytes: Vec<u8>) -> FrameReader {
        FrameReader { start: 0, end: bytes.len(), buf: bytes, max: MAX_FRAME }
    }

    /// Bytes received and not yet returned as frames.
    pub fn unparsed(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// One `read` into free space. `Ok(0)` is end of stream.
    pub fn read_from(&mut self, r: &mut impl Read) -> io::Result<usize> {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                // Empty (a new link) or one frame larger than the buffer: grow,
                // bounded by the limit because `next` rejects longer frames first.
                self.buf.resize((self.buf.len() * 2).max(READ_CHUNK.min(LEN + self.max)), 0);
            }
        }
        let n = r.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// The next whole frame and its raw bytes (length prefix included), or
    /// `None` until more input arrives.
    pub fn next_frame(&mut self) -> Result<Option<(Frame<'_>, &[u8])>, DecodeError> {
        let data = &self.buf[self.start..self.end];
        if data.len() < LEN {
            self.reset_if_empty();
            return Ok(None);
        }
        let len = u32::from_be_bytes(data[..LEN].try_into().unwrap()) as usize;
        if len > self.max {
            return Err(DecodeError::TooLarge(len, self.max));
        }
        if data.len() < LEN + len {
            return Ok(None);
        }
        let at = self.start;
        self.start += LEN + len;
        let raw = &self.buf[at..at + LEN + len];
        Ok(Some((decode_body(&raw[LEN..])?, raw)))
    }

    fn reset_if_empty(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `data` to a reader in the given pieces and collects what it decodes.
    fn decode_all(pieces: &[&[u8]]) -> Result<Vec<String>, DecodeError> {
        let mut r = FrameReader::default();
        let mut out = Vec::new();
        for p in pieces {
            let mut src: &[u8] = p;
            while !src.is_empty() {
                r.read_from(&mut src).unwrap();
                while let Some((f, raw)) = r.next_frame()? {
                    let mut again = Vec::new();
                    f.encode(&mut again);
                    assert_eq!(again, raw, "raw bytes are the frame's encoding");
                    out.push(format!("{f:?}"));
                }
            }
        }
        Ok(out)
    }

    #[test]
    fn round_trip_split_bytewise() {
        let frames = [
            Frame::Hello { version: 1, secret: b"s3cret" },
            Frame::Welcome { version: 1 },
            Frame::Sub(b"topic1"),
            Frame::SubAck(b"topic1"),
            Frame::Publish { topic: b"topic1", message: b"hello world" },
            Frame::Publish { topic: b"t", message: b"" },
            Frame::Unsub(b"topic1"),
            Frame::Error(b"bye"),
            Frame::SubErr { topic: b"t", reason: b"too many topics" },
            Frame::Ping,
            Frame::Pong,
        ];
        let mut data = Vec::new();
        frames.iter().for_each(|f| f.encode(&mut data));
        let want: Vec<String> = frames.iter().map(|f| format!("{f:?}")).collect();
        let bytewise: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(decode_all(&bytewise).unwrap(), want);
        assert_eq!(decode_all(&[&data]).unwrap(), want);
    }

    #[test]
    fn large_frame_grows_buffer() {
        let msg = vec![b'x'; MAX_MESSAGE];
        let mut data = Vec::new();
        Frame::Publish { topic: b"t", message: &msg }.encode(&mut data);
        assert_eq!(decode_all(&[&data]).unwrap().len(), 1);
    }

    #[test]
    fn rejects_bad_frames() {
        assert_eq!(decode_all(&[&[0xff, 0xff, 0xff, 0xff]]), Err(DecodeError::TooLarge(u32::MAX as usize, MAX_FRAME)));
        assert_eq!(decode_all(&[&[0, 0, 0, 1, 99]]), Err(DecodeError::UnknownKind(99)));
        assert!(decode_all(&[&[0, 0, 0, 3, PUBLISH, 5, b'a']]).is_err());
        assert!(decode_all(&[&[0, 0, 0, 0]]).is_err());
        assert!(decode_all(&[&[0, 0, 0, 1, SUB]]).is_err());
    }

    #[test]
    fn queued_frames_are_walked_from_their_starts() {
        let mut buf = Vec::new();
        for m in [&b"aa"[..], b"bbbb", b"c"] {
            Frame::Publish { topic: b"t", message: m }.encode(&mut buf);
        }
        Frame::SubAck(b"t").encode(&mut buf);
        Frame::Publish { topic: b"t", message: b"d" }.encode(&mut buf);
        // Frame lengths on the wire: 4 + 1 + 1 + 1 + len(message) = 9, 11, 8; SUBACK 6; 8.
        assert_eq!(start_of(&buf, 0), 0);
        assert_eq!(start_of(&buf, 8), 0);
        assert_eq!(start_of(&buf, 9), 9);
        assert_eq!(start_of(&buf, 25), 20);
        assert_eq!((end_of(&buf, 0), end_of(&buf, 3), end_of(&buf, 9)), (0, 9, 9));
        assert_eq!(count(&buf[start_of(&buf, 10)..]), 4);
        assert_eq!(count(&buf), 5);
        assert_eq!(count_publishes(&buf), 4);
        assert_eq!(count_publishes(&buf[9..]), 3);
        // Held publishes: the SUBACK after the one being written may go first.
        assert_eq!(first_unstarted_publish(&buf, 0), 0);
        assert_eq!(first_unstarted_publish(&buf, 21), 34);
        let (kept, lost) = unstarted_publishes(&buf, 21);
        assert_eq!((kept.as_slice(), lost), (&buf[34..], 1));
        let (kept, lost) = unstarted_publishes(&buf, 20);
        assert_eq!((kept.len(), lost), (16, 0));
    }

    #[test]
    fn a_limited_reader_refuses_larger_frames_and_buffers_little() {
        let mut r = FrameReader::limited(16);
        let mut big: &[u8] = &[&[0, 0, 0, 17, SUB][..], &[b'x'; 100]].concat();
        r.read_from(&mut big).unwrap();
        assert!(r.buf.len() <= 20, "buffered {} bytes", r.buf.len());
        assert_eq!(r.next_frame().unwrap_err(), DecodeError::TooLarge(17, 16));
        let mut ok = FrameReader::limited(16);
        let mut hello: &[u8] = &[0, 0, 0, 3, HELLO, 2, b's', 0, 0, 0, 2, SUB, b't'];
        ok.read_from(&mut hello).unwrap();
        assert!(matches!(ok.next_frame(), Ok(Some((Frame::Hello { .. }, _)))));
        ok.set_limit(MAX_FRAME);
        assert!(matches!(ok.next_frame(), Ok(Some((Frame::Sub(b"t"), _)))));
    }

    proptest! {
        // Arbitrary bytes in arbitrary pieces: decoding never panics and gives
        // the same verdict however the input is split.
        #[test]
        fn arbitrary_input(data in proptest::collection::vec(any::<u8>(), 0..400), cut in any::<usize>()) {
            let cut = cut % (data.len() + 1);
            let whole = decode_all(&[&data]);
            let split = decode_all(&[&data[..cut], &data[cut..]]);
            prop_assert_eq!(whole, split);
        }
    }
}
