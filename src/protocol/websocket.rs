//! WebSocket (RFC 6455), the server's side: a decoder for what clients send and
//! the encoder for what the server sends.
//!
//! Hand-written rather than tungstenite's `WebSocket`, for two reasons of the
//! fan-out design. A delivery is encoded once per batch and the same
//! `Rc<[u8]>` is queued for every subscriber, line or WebSocket; tungstenite
//! encodes each message into a write buffer owned by each connection, which
//! is one copy per subscriber. And a connection moves to a new worker on
//! reload with all of its state; tungstenite's state cannot be taken out and
//! rebuilt. The server side of the protocol is small: frames with a 2–14 byte
//! header, masking, fragmentation and three control frames. (The tests use
//! tungstenite as the independent client.)
//!
//! The decoder is a state machine fed with whatever each read returned, cut
//! anywhere. Like the line reader it hands out a message that arrived whole in
//! one read as a slice of the read buffer (unmasked in place); only a message
//! cut across reads or frames is assembled, and never beyond the size limit.
//! Its state is plain data, so it can travel to a new worker on reload.

use std::fmt;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The close status codes this server sends (RFC 6455 section 7.4.1).
pub mod code {
    /// Normal closure: the client said `quit`, or closed first.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (stopping).
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the protocol (an unmasked frame, a bad opcode, …).
    pub const PROTOCOL: u16 = 1002;
    /// A binary message: this server speaks text.
    pub const UNSUPPORTED: u16 = 1003;
    /// A text message that is not valid UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// Cut off by the server's policy (a slow consumer).
    pub const POLICY: u16 = 1008;
    /// A message over the size limit.
    pub const TOO_BIG: u16 = 1009;
}

/// Longest payload of a control frame.
const MAX_CONTROL: usize = 125;
/// Longest frame header a client sends: 2 + 8 (length) + 4 (mask).
const MAX_HEADER: usize = 14;

/// What the client sent, one item at a time.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole text message: valid UTF-8, at most the limit.
    Text(&'a [u8]),
    /// A ping: answer with a pong carrying the same bytes.
    Ping(&'a [u8]),
    /// The client started the close handshake (with its status code, if it
    /// gave one): answer with a close frame and close. Nothing follows.
    Close(Option<u16>),
    /// The client broke the protocol: send a close frame with this code and
    /// reason, then close. Nothing follows.
    Fail(Failure),
}

/// Why a connection is failed, and the close code that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: u16,
    pub reason: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (close {})", self.reason, self.code)
    }
}

fn fail(code: u16, reason: impl Into<String>) -> Failure {
    Failure { code, reason: reason.into() }
}

/// The frame whose payload is being read.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Frame {
    opcode: u8,
    fin: bool,
    mask: [u8; 4],
    /// Payload bytes still to come.
    left: u64,
    /// Payload bytes already read (where the mask stands).
    done: u64,
}

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Decoder {
    /// The start of a frame header cut by the end of a read.
    header: Vec<u8>,
    frame: Option<Frame>,
    /// A text message cut across reads or frames, assembled.
    message: Vec<u8>,
    /// A fragmented text message is open: continuation frames come next.
    fragmented: bool,
    /// The payload of a control frame cut across reads.
    control: Vec<u8>,
    /// A close or a failure was reported: later input is ignored.
    stopped: bool,
}

impl Decoder {
    /// Bytes held for this connection (an unfinished header, message or
    /// control frame).
    pub fn buffered(&self) -> usize {
        self.header.len() + self.message.len() + self.control.len()
    }

    /// Feeds one read and calls `on_event` for everything it completes, in
    /// order. `buf` is unmasked in place. Text messages are at most `max`
    /// bytes. After a `Close` or a `Fail` nothing more is reported.
    pub fn feed(&mut self, buf: &mut [u8], max: usize, mut on_event: impl FnMut(Event<'_>)) {
        let mut at = 0;
        while !self.stopped && at < buf.len() {
            let Some(mut frame) = self.frame else {
                match self.read_header(buf, &mut at, max) {
                    Ok(Some(frame)) if frame.left == 0 => self.end_frame(frame, &mut [], &mut on_event),
                    Ok(Some(frame)) => self.frame = Some(frame),
                    Ok(None) => {}
                    Err(why) => self.stop(Event::Fail(why), &mut on_event),
                }
                continue;
            };
            let n = frame.left.min((buf.len() - at) as u64) as usize;
            let payload = &mut buf[at..at + n];
            unmask(payload, frame.mask, frame.done);
            at += n;
            frame.left -= n as u64;
            frame.done += n as u64;
            let whole = frame.left == 0;
            if is_control(frame.opcode) {
                if whole && self.control.is_empty() {
                    self.frame = None;
                    self.end_frame(frame, payload, &mut on_event);
                    continue;
                }
                self.control.extend_from_slice(payload);
            } else if whole && frame.fin && self.message.is_empty() && frame.done == n as u64 {
                // A whole message in this read: handed out in place.
                self.frame = None;
                self.end_frame(frame, payload, &mut on_event);
                continue;
            } else {
                self.message.extend_from_slice(payload);
            }
            self.frame = if whole { None } else { Some(frame) };
            if whole {
                self.end_frame(frame, &mut [], &mut on_event);
            }
        }
    }

    /// Takes header bytes from `buf[*at..]`; returns the frame once its header
    /// is whole and valid.
    fn read_header(&mut self, buf: &[u8], at: &mut usize, max: usize) -> Result<Option<Frame>, Failure> {
        // Copy at most the bytes this header can still need (2 at first).
        loop {
            let need = header_len(&self.header);
            if self.header.len() >= need {
                break;
            }
            let take = (need - self.header.len()).min(buf.len() - *at);
            if take == 0 {
                return Ok(None);
            }
            self.header.extend_from_slice(&buf[*at..*at + take]);
            *at += take;
            if self.header.len() == 2 {
                self.check_start()?; // before waiting for a length that may never come
            }
        }
        let h = std::mem::take(&mut self.header);
        let (len, mask_at) = match h[1] & 0x7F {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => (u64::from_be_bytes(h[2..10].try_into().expect("8 bytes")), 10),
            n => (u64::from(n), 2),
        };
        if len > i64::MAX as u64 {
            return Err(fail(code::PROTOCOL, "frame length with its top bit set"));
        }
        let opcode = h[0] & 0x0F;
        if !is_control(opcode) && self.message.len() as u64 + len > max as u64 {
            return Err(fail(code::TOO_BIG, format!("message too big (max {max} bytes)")));
        }
        let mask = h[mask_at..mask_at + 4].try_into().expect("4 bytes");
        Ok(Some(Frame { opcode, fin: h[0] & 0x80 != 0, mask, left: len, done: 0 }))
    }

    /// Checks the first two bytes of a header.
    fn check_start(&self) -> Result<(), Failure> {
        let (b0, b1) = (self.header[0], self.header[1]);
        let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0F);
        if b0 & 0x70 != 0 {
            return Err(fail(code::PROTOCOL, "reserved bits set (no extension was agreed)"));
        }
        if b1 & 0x80 == 0 {
            return Err(fail(code::PROTOCOL, "unmasked frame from a client"));
        }
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG if !fin => Err(fail(code::PROTOCOL, "fragmented control frame")),
            OP_CLOSE | OP_PING | OP_PONG if usize::from(b1 & 0x7F) > MAX_CONTROL => {
                Err(fail(code::PROTOCOL, "control frame over 125 bytes"))
            }
            OP_CLOSE | OP_PING | OP_PONG => Ok(()),
            OP_TEXT if self.fragmented => Err(fail(code::PROTOCOL, "a new message inside a fragmented one")),
            OP_TEXT => Ok(()),
            OP_CONTINUATION if !self.fragmented => Err(fail(code::PROTOCOL, "continuation frame without a message")),
            OP_CONTINUATION => Ok(()),
            OP_BINARY => Err(fail(code::UNSUPPORTED, "binary message: this server speaks text")),
            _ => Err(fail(code::PROTOCOL, format!("unknown opcode {opcode:#x}"))),
        }
    }

    /// A frame's payload is all read: `payload` holds it when it arrived in one
    /// piece, else it is in `control` or `message`.
    fn end_frame(&mut self, frame: Frame, payload: &mut [u8], on_event: &mut impl FnMut(Event<'_>)) {
        match frame.opcode {
            OP_PING => {
                let control = std::mem::take(&mut self.control);
                on_event(Event::Ping(if control.is_empty() { payload } else { &control }));
            }
            OP_PONG => self.control.clear(),
            OP_CLOSE => {
                let control = std::mem::take(&mut self.control);
                let event = close_event(if control.is_empty() { payload } else { &control });
                self.stop(event, on_event);
            }
            _ if !frame.fin => self.fragmented = true,
            _ => {
                self.fragmented = false;
                let message = std::mem::take(&mut self.message);
                let text: &[u8] = if message.is_empty() { payload } else { &message };
                if std::str::from_utf8(text).is_err() {
                    return self
                        .stop(Event::Fail(fail(code::INVALID_DATA, "invalid UTF-8 in a text message")), on_event);
                }
                on_event(Event::Text(text));
                // Keep a small buffer for the next message, free a large one.
                if message.capacity() <= 4096 {
                    self.message = message;
                    self.message.clear();
                }
            }
        }
    }

    fn stop(&mut self, event: Event<'_>, on_event: &mut impl FnMut(Event<'_>)) {
        *self = Decoder { stopped: true, ..Decoder::default() }; // frees what it held
        on_event(event);
    }
}

/// How long the header that starts with `h` is (2 until its length is known).
fn header_len(h: &[u8]) -> usize {
    match h.get(1) {
        None => 2,
        Some(b1) => {
            let len = match b1 & 0x7F {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            (2 + len + 4).min(MAX_HEADER)
        }
    }
}

fn is_control(opcode: u8) -> bool {
    opcode & 0x08 != 0
}

/// XORs `payload` with the mask, `offset` bytes into the frame's payload.
fn unmask(payload: &mut [u8], mask: [u8; 4], offset: u64) {
    let shift = (offset % 4) as usize;
    let mask = [mask[shift], mask[(shift + 1) % 4], mask[(shift + 2) % 4], mask[(shift + 3) % 4]];
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes(c.try_into().expect("4 bytes")) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (b, m) in chunks.into_remainder().iter_mut().zip(mask) {
        *b ^= m;
    }
}

/// The event for a close frame's payload: empty, or a valid code and a UTF-8 reason.
fn close_event(payload: &[u8]) -> Event<'static> {
    match payload {
        [] => Event::Close(None),
        [_] => Event::Fail(fail(code::PROTOCOL, "close frame with a 1-byte payload")),
        [hi, lo, reason @ ..] => {
            let status = u16::from_be_bytes([*hi, *lo]);
            if !valid_close_code(status) {
                Event::Fail(fail(code::PROTOCOL, format!("invalid close code {status}")))
            } else if std::str::from_utf8(reason).is_err() {
                Event::Fail(fail(code::INVALID_DATA, "invalid UTF-8 in a close reason"))
            } else {
                Event::Close(Some(status))
            }
        }
    }
}

/// The codes a peer may send (RFC 6455 7.4.1 and 7.4.2, the IANA registry).
fn valid_close_code(c: u16) -> bool {
    matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

// ---- encoding (server frames are never masked) -------------------------------

/// Appends the header of a final, unmasked frame with a payload of `len` bytes.
pub fn header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    match len {
        0..=125 => out.push(len as u8),
        126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// Appends one text frame whose payload is `parts` joined.
pub fn text_frame(out: &mut Vec<u8>, parts: &[&[u8]]) {
    header(out, OP_TEXT, parts.iter().map(|p| p.len()).sum());
    parts.iter().for_each(|p| out.extend_from_slice(p));
}

/// One reply line as one text frame: `parts` joined, without the final LF
/// (a reply of several lines, like `help`, stays one message).
pub fn reply(parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let ends_in_lf = parts.iter().rev().find(|p| !p.is_empty()).is_some_and(|p| p.ends_with(b"\n"));
    let payload = len - usize::from(ends_in_lf);
    let mut out = Vec::with_capacity(payload + 10);
    header(&mut out, OP_TEXT, payload);
    let mut left = payload;
    for p in parts {
        let n = p.len().min(left);
        out.extend_from_slice(&p[..n]);
        left -= n;
    }
    out
}

/// The text frames for a batch of delivery lines (each ending in LF), one per
/// line: the same batch in the other encoding. Bytes that are not UTF-8 (a
/// line client may publish any bytes) are replaced with U+FFFD, because a
/// text frame must hold UTF-8.
pub fn frames_of_lines(lines: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines.len() + lines.len() / 8 + 16);
    for line in lines.split_inclusive(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let text = String::from_utf8_lossy(line);
        text_frame(&mut out, &[text.as_bytes()]);
    }
    out
}

/// A close frame; the reason is cut to fit in a control frame.
pub fn close(status: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CONTROL - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = Vec::with_capacity(4 + end);
    header(&mut out, OP_CLOSE, 2 + end);
    out.extend_from_slice(&status.to_be_bytes());
    out.extend_from_slice(&reason.as_bytes()[..end]);
    out
}

/// The pong that answers a ping.
pub fn pong(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + payload.len());
    header(&mut out, OP_PONG, payload.len());
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A frame as a client sends it: masked with `mask`.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = Vec::new();
        header(&mut out, opcode, payload.len());
        if !fin {
            out[0] &= 0x7F;
        }
        out[1] |= 0x80;
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[derive(Debug, PartialEq, Eq, Clone)]
    enum Owned {
        Text(Vec<u8>),
        Ping(Vec<u8>),
        Close(Option<u16>),
        Fail(u16),
    }

    fn run(chunks: &[&[u8]], max: usize) -> Vec<Owned> {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        for c in chunks {
            let mut c = c.to_vec();
            d.feed(&mut c, max, |e| {
                out.push(match e {
                    Event::Text(t) => Owned::Text(t.to_vec()),
                    Event::Ping(p) => Owned::Ping(p.to_vec()),
                    Event::Close(c) => Owned::Close(c),
                    Event::Fail(f) => Owned::Fail(f.code),
                })
            });
            assert!(d.buffered() <= max + MAX_HEADER + MAX_CONTROL, "held more than the limit");
            // The state survives a handoff at any point.
            d = postcard::from_bytes(&postcard::to_allocvec(&d).unwrap()).unwrap();
        }
        out
    }

    fn one(bytes: &[u8], max: usize) -> Vec<Owned> {
        run(&[bytes], max)
    }

    const M: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    #[test]
    fn rfc_example_masked_hello() {
        // RFC 6455 5.7: a single-frame masked text message.
        let bytes = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        assert_eq!(one(&bytes, 100), vec![Owned::Text(b"Hello".to_vec())]);
    }

    #[test]
    fn rfc_example_fragmented_with_ping_between() {
        let mut b = client_frame(false, OP_TEXT, b"Hel", M);
        b.extend(client_frame(true, OP_PING, b"hi", M));
        b.extend(client_frame(true, OP_CONTINUATION, b"lo", M));
        assert_eq!(one(&b, 100), vec![Owned::Ping(b"hi".to_vec()), Owned::Text(b"Hello".to_vec())]);
    }

    #[test]
    fn unmasked_frame_is_a_protocol_error() {
        assert_eq!(one(&[0x81, 0x05, b'H', b'e', b'l', b'l', b'o'], 100), vec![Owned::Fail(code::PROTOCOL)]);
    }

    #[test]
    fn protocol_errors() {
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            (
                "rsv bit",
                {
                    let mut f = client_frame(true, OP_TEXT, b"a", M);
                    f[0] |= 0x40;
                    f
                },
                code::PROTOCOL,
            ),
            ("unknown opcode", client_frame(true, 0x3, b"a", M), code::PROTOCOL),
            ("fragmented ping", client_frame(false, OP_PING, b"a", M), code::PROTOCOL),
            ("long ping", client_frame(true, OP_PING, &[0; 126], M), code::PROTOCOL),
            ("lone continuation", client_frame(true, OP_CONTINUATION, b"a", M), code::PROTOCOL),
            (
                "text inside a fragmented message",
                {
                    let mut f = client_frame(false, OP_TEXT, b"a", M);
                    f.extend(client_frame(true, OP_TEXT, b"b", M));
                    f
                },
                code::PROTOCOL,
            ),
            ("binary", client_frame(true, OP_BINARY, b"a", M), code::UNSUPPORTED),
            ("close with 1 byte", client_frame(true, OP_CLOSE, &[3], M), code::PROTOCOL),
            ("close code 1005", client_frame(true, OP_CLOSE, &1005u16.to_be_bytes(), M), code::PROTOCOL),
            ("close code 999", client_frame(true, OP_CLOSE, &999u16.to_be_bytes(), M), code::PROTOCOL),
            ("close reason not UTF-8", client_frame(true, OP_CLOSE, &[3, 232, 0xff], M), code::INVALID_DATA),
            (
                "top bit of the length",
                {
                    let mut f = vec![0x81, 0xFF];
                    f.extend_from_slice(&u64::MAX.to_be_bytes());
                    f.extend_from_slice(&M);
                    f
                },
                code::PROTOCOL,
            ),
        ];
        for (what, bytes, want) in cases {
            let got = one(&bytes, 100);
            assert_eq!(got, vec![Owned::Fail(want)], "{what}");
        }
    }

    #[test]
    fn too_big_is_refused_at_the_header() {
        // Only the header arrives: the limit is enforced before any payload.
        let f = client_frame(true, OP_TEXT, &[b'a'; 101], M);
        assert_eq!(one(&f[..8], 100), vec![Owned::Fail(code::TOO_BIG)]);
        // The fragments of one message count together.
        let mut f = client_frame(false, OP_TEXT, &[b'a'; 60], M);
        f.extend(client_frame(true, OP_CONTINUATION, &[b'a'; 41], M));
        assert_eq!(one(&f, 100), vec![Owned::Fail(code::TOO_BIG)]);
        // Exactly the limit fits; 16-bit and 64-bit lengths too.
        assert_eq!(one(&client_frame(true, OP_TEXT, &[b'a'; 100], M), 100), vec![Owned::Text(vec![b'a'; 100])]);
        let big = vec![b'b'; 70_000];
        assert_eq!(one(&client_frame(true, OP_TEXT, &big, M), 70_000), vec![Owned::Text(big)]);
    }

    #[test]
    fn utf8_is_checked_on_the_whole_message() {
        let e = "é".as_bytes(); // two bytes, split across two fragments
        let mut f = client_frame(false, OP_TEXT, &e[..1], M);
        f.extend(client_frame(true, OP_CONTINUATION, &e[1..], M));
        assert_eq!(one(&f, 100), vec![Owned::Text(e.to_vec())]);
        let mut f = client_frame(false, OP_TEXT, &e[..1], M);
        f.extend(client_frame(true, OP_CONTINUATION, b"x", M));
        assert_eq!(one(&f, 100), vec![Owned::Fail(code::INVALID_DATA)]);
        assert_eq!(one(&client_frame(true, OP_TEXT, &[0xC0, 0x80], M), 100), vec![Owned::Fail(code::INVALID_DATA)]);
    }

    #[test]
    fn close_stops_the_decoder() {
        let mut f = client_frame(true, OP_CLOSE, &[0x03, 0xE8, b'o', b'k'], M);
        f.extend(client_frame(true, OP_TEXT, b"after", M));
        assert_eq!(one(&f, 100), vec![Owned::Close(Some(1000))]);
        assert_eq!(one(&client_frame(true, OP_CLOSE, b"", M), 100), vec![Owned::Close(None)]);
    }

    #[test]
    fn encoder_lengths() {
        for (len, head) in [(0usize, 2usize), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let mut out = Vec::new();
            text_frame(&mut out, &[&vec![b'x'; len]]);
            assert_eq!(out.len(), head + len, "{len}");
            assert_eq!(out[0], 0x81);
        }
        let c = close(code::TOO_BIG, &"é".repeat(100));
        assert_eq!(c[0], 0x88);
        assert!(c.len() - 2 <= MAX_CONTROL);
        assert!(std::str::from_utf8(&c[4..]).is_ok(), "cut at a character boundary");
        assert_eq!(pong(b"p"), vec![0x8A, 1, b'p']);
    }

    #[test]
    fn replies_and_deliveries() {
        assert_eq!(reply(&[b"OK subscribed ", b"t", b"\n"]), b"\x81\x0fOK subscribed t");
        assert_eq!(reply(&[b"PONG\n", b""]), b"\x81\x04PONG");
        assert_eq!(reply(&[b"a\nb\n"]), b"\x81\x03a\nb", "several lines, one message");
        let frames = frames_of_lines(b"Received [t]: x\nReceived [t]: \xff\n");
        assert_eq!(frames, [&b"\x81\x0fReceived [t]: x"[..], b"\x81\x11Received [t]: \xef\xbf\xbd"].concat());
    }

    /// A stream of client frames and what the decoder must report for it:
    /// text messages cut into fragments at any byte (so a character may be
    /// split between two fragments), each with a ping after its first fragment
    /// or not, each with its own mask.
    fn script() -> impl Strategy<Value = (Vec<u8>, Vec<Owned>)> {
        let message =
            (any::<String>(), proptest::collection::vec(any::<usize>(), 0..3), any::<bool>(), any::<[u8; 4]>());
        proptest::collection::vec(message, 0..6).prop_map(|messages| {
            let (mut bytes, mut want) = (Vec::new(), Vec::new());
            for (text, cuts, ping, mask) in messages {
                let text = text.into_bytes();
                let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (text.len() + 1)).collect();
                cuts.sort();
                cuts.push(text.len());
                let mut from = 0;
                for (i, &to) in cuts.iter().enumerate() {
                    let op = if i == 0 { OP_TEXT } else { OP_CONTINUATION };
                    bytes.extend(client_frame(i + 1 == cuts.len(), op, &text[from..to], mask));
                    from = to;
                    if i + 1 == cuts.len() {
                        want.push(Owned::Text(text.clone()));
                    }
                    if ping && i == 0 {
                        bytes.extend(client_frame(true, OP_PING, &mask, mask));
                        want.push(Owned::Ping(mask.to_vec()));
                    }
                }
            }
            (bytes, want)
        })
    }

    proptest! {
        // Fragmented messages with pings between fragments, any masks, the
        // stream cut at arbitrary points: the same events as in one read.
        #[test]
        fn split_anywhere((bytes, want) in script(), cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort();
            cuts.dedup();
            let mut pieces = Vec::new();
            let mut last = 0;
            for c in cuts {
                pieces.push(&bytes[last..c]);
                last = c;
            }
            pieces.push(&bytes[last..]);
            prop_assert_eq!(run(&pieces, 1000), want);
        }

        // Any bytes: never panics, never holds more than the limit.
        #[test]
        fn arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..400), max in 1usize..64) {
            let _ = run(&[&data], max);
            let pieces: Vec<&[u8]> = data.chunks(7).collect();
            let _ = run(&pieces, max);
        }
    }

    #[test]
    fn split_at_every_byte() {
        let (bytes, want) = {
            let mut b = client_frame(false, OP_TEXT, "pub t ".as_bytes(), M);
            b.extend(client_frame(true, OP_PING, b"x", [1, 2, 3, 4]));
            b.extend(client_frame(true, OP_CONTINUATION, "é…".as_bytes(), [9, 8, 7, 6]));
            b.extend(client_frame(true, OP_TEXT, &[b'z'; 130], M));
            b.extend(client_frame(true, OP_CLOSE, &[0x03, 0xE8], M));
            let want = vec![
                Owned::Ping(b"x".to_vec()),
                Owned::Text("pub t é…".as_bytes().to_vec()),
                Owned::Text(vec![b'z'; 130]),
                Owned::Close(Some(1000)),
            ];
            (b, want)
        };
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                assert_eq!(run(&[&bytes[..i], &bytes[i..j], &bytes[j..]], 1000), want, "cut at {i} and {j}");
            }
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(run(&singles, 1000), want);
    }
}
