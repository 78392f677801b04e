//! The channel protocol: length-framed binary messages between workers and the
//! channel server. The format is described in `docs/channel-protocol.md`.
//!
//! ```text
//! frame = length:u32be  kind:u8  body        (length counts kind + body)
//! ```

use std::io::{self, Read};

use super::framing::Framing;

use super::topic;

/// 2 added PING/PONG and SUBERR; 3 numbered messages (MSG, PUBACK, FETCH,
/// INFO, positions in SUB/SUBACK, the epoch in WELCOME, PUBLISH flags).
pub const VERSION: u8 = 3;
/// Largest message body a publish can carry.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Largest `kind + body` a peer may send; anything larger ends the link. A
/// FETCHED frame carries at least one message of up to MAX_MESSAGE bytes.
/// A JOB frame has a header of 21 bytes and a queue name of up to 255.
pub const MAX_FRAME: usize = MAX_MESSAGE + 512;
/// Most messages one FETCHED frame carries (a history asks for at most this).
pub const FETCH_MESSAGES: usize = 1000;
/// A FETCHED frame stops adding messages past this many payload bytes.
pub const FETCH_BYTES: usize = 256 * 1024;
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
const MSG: u8 = 11;
const PUBACK: u8 = 12;
const FETCH: u8 = 13;
const FETCHED: u8 = 14;
const INFO: u8 = 15;
const INFOED: u8 = 16;

/// The PUBLISH flag asking for a PUBACK.
const CONFIRM: u8 = 1;
// Work queues (issue 11), apart from the topic frames.
const ENQUEUE: u8 = 40;
const CONSUME: u8 = 41;
const UNCONSUME: u8 = 42;
const SETTLE: u8 = 43;
const LIST_QUEUES: u8 = 44;
const JOB: u8 = 45;
const QUEUE_REPLY: u8 = 46;

/// What a consumer says about a job it was given.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Verdict {
    Ack = 0,
    Nack = 1,
    Reject = 2,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Frame<'a> {
    /// worker → server, first frame: protocol version and shared secret.
    Hello {
        version: u8,
        secret: &'a [u8],
    },
    /// server → worker: the hello was accepted; the store's epoch (new
    /// whenever the server starts without its data directory).
    Welcome {
        version: u8,
        epoch: u64,
    },
    /// worker → server: live messages of `topic` from now on. `from` is the
    /// next number the worker wants (0: none yet); a number past the topic's
    /// newest + 1 on a topic that retains nothing moves its numbering up to
    /// it (positions from before a restart without a data directory).
    Sub {
        from: u64,
        topic: &'a [u8],
    },
    /// server → worker: in effect; `next` is the number of the next message.
    SubAck {
        next: u64,
        topic: &'a [u8],
    },
    Unsub(&'a [u8]),
    /// worker → server; `confirm` asks for a PUBACK once it is committed.
    Publish {
        confirm: bool,
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
    /// server → worker: a committed message of a subscribed topic.
    Msg {
        seq: u64,
        topic: &'a [u8],
        message: &'a [u8],
    },
    /// server → worker: a publish that asked for it is committed as `seq`;
    /// PUBACKs come in the order of those publishes.
    PubAck {
        seq: u64,
        topic: &'a [u8],
    },
    /// worker → server: retained messages numbered `from` or later (at most
    /// `limit`, and FETCH_BYTES); `from` 0: the newest `limit` (history).
    Fetch {
        req: u32,
        from: u64,
        limit: u32,
        topic: &'a [u8],
    },
    /// server → worker: the answer to FETCH `req`. `gap`: numbers asked for
    /// and no longer retained; then the messages numbered `first`, `first + 1`,
    /// … (see `messages`), and `next`, where to read on.
    Fetched {
        req: u32,
        gap: Option<(u64, u64)>,
        first: u64,
        next: u64,
        topic: &'a [u8],
        messages: &'a [u8],
    },
    /// worker → server: what `topic` retains.
    Info {
        req: u32,
        topic: &'a [u8],
    },
    /// server → worker: the answer to INFO `req`.
    Infoed {
        req: u32,
        first: u64,
        last: u64,
        messages: u64,
        bytes: u64,
    },
    /// worker → server: client `client` enqueues a job. Like every queue
    /// request, answered by a QUEUE_REPLY with the same `req` (0: none wanted).
    Enqueue {
        req: u32,
        client: u64,
        queue: &'a [u8],
        message: &'a [u8],
    },
    /// worker → server: a client consumes a queue (again: a new prefetch).
    /// `req` 0: registered again after a reconnect.
    Consume {
        req: u32,
        client: u64,
        prefetch: u32,
        queue: &'a [u8],
    },
    /// worker → server: a client stops consuming `queue` (empty: every
    /// queue; `req` 0: the client is gone).
    Unconsume {
        req: u32,
        client: u64,
        queue: &'a [u8],
    },
    /// worker → server: a client acks, nacks or rejects a job.
    Settle {
        req: u32,
        client: u64,
        verdict: Verdict,
        id: u64,
        queue: &'a [u8],
    },
    /// worker → server: a client asks for the queues' figures.
    ListQueues {
        req: u32,
        client: u64,
    },
    /// server → worker: a job for a client; `attempt` is 1 the first time.
    Job {
        client: u64,
        id: u64,
        attempt: u32,
        queue: &'a [u8],
        message: &'a [u8],
    },
    /// server → worker: the answer to queue request `req` (0: to none, `text`
    /// empty: a job taken back after the ack timeout), and how many of the
    /// jobs client `client` held it ends (acked, taken back).
    QueueReply {
        req: u32,
        client: u64,
        settled: u32,
        text: &'a [u8],
    },
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
        let be = u64::to_be_bytes;
        match *self {
            Frame::Hello { version, secret } => put(out, HELLO, &[&[version], secret]),
            Frame::Welcome { version, epoch } => put(out, WELCOME, &[&[version], &be(epoch)]),
            Frame::Sub { from, topic } => put(out, SUB, &[&be(from), topic]),
            Frame::SubAck { next, topic } => put(out, SUBACK, &[&be(next), topic]),
            Frame::Unsub(t) => put(out, UNSUB, &[t]),
            Frame::Publish { confirm, topic, message } => put_publish(out, confirm, topic, message),
            Frame::Error(why) => put(out, ERROR, &[why]),
            Frame::SubErr { topic, reason } => put_named(out, SUBERR, [], topic, reason),
            Frame::Ping => put(out, PING, &[]),
            Frame::Pong => put(out, PONG, &[]),
            Frame::Msg { seq, topic, message } => put_msg(out, seq, topic, message),
            Frame::PubAck { seq, topic } => put(out, PUBACK, &[&be(seq), topic]),
            Frame::Fetch { req, from, limit, topic } => {
                put(out, FETCH, &[&req.to_be_bytes(), &be(from), &limit.to_be_bytes(), topic])
            }
            Frame::Fetched { req, gap, first, next, topic, messages } => {
                let (g0, g1) = gap.unwrap_or((0, 0));
                let head = [&req.to_be_bytes()[..], &be(g0), &be(g1), &be(first), &be(next), &[topic.len() as u8]];
                put(out, FETCHED, &[&head.concat(), topic, messages])
            }
            Frame::Info { req, topic } => put(out, INFO, &[&req.to_be_bytes(), topic]),
            Frame::Infoed { req, first, last, messages, bytes } => {
                put(out, INFOED, &[&req.to_be_bytes(), &be(first), &be(last), &be(messages), &be(bytes)])
            }
            Frame::Enqueue { req, client, queue, message } => {
                put(out, ENQUEUE, &[&req.to_be_bytes(), &be(client), &name_len(queue), queue, message])
            }
            Frame::Consume { req, client, prefetch, queue } => {
                put(out, CONSUME, &[&req.to_be_bytes(), &be(client), &prefetch.to_be_bytes(), queue])
            }
            Frame::Unconsume { req, client, queue } => put(out, UNCONSUME, &[&req.to_be_bytes(), &be(client), queue]),
            Frame::Settle { req, client, verdict, id, queue } => {
                put(out, SETTLE, &[&req.to_be_bytes(), &be(client), &[verdict as u8], &be(id), queue])
            }
            Frame::ListQueues { req, client } => put(out, LIST_QUEUES, &[&req.to_be_bytes(), &be(client)]),
            Frame::Job { client, id, attempt, queue, message } => put(
                out,
                JOB,
                &[&client.to_be_bytes(), &id.to_be_bytes(), &attempt.to_be_bytes(), &name_len(queue), queue, message],
            ),
            Frame::QueueReply { req, client, settled, text } => {
                put(out, QUEUE_REPLY, &[&req.to_be_bytes(), &be(client), &settled.to_be_bytes(), text])
            }
        }
    }
}

/// The length byte of a queue name that comes before a message.
fn name_len(queue: &[u8]) -> [u8; 1] {
    debug_assert!(!queue.is_empty() && queue.len() <= u8::MAX as usize);
    [queue.len() as u8]
}

/// Reads fixed-size fields off the front of a body.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self.0.split_first_chunk::<N>().ok_or(DecodeError::Malformed("queue frame too short"))?;
        self.0 = rest;
        Ok(*head)
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.take().map(u64::from_be_bytes)
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.take().map(u32::from_be_bytes)
    }
    /// A queue name of `len:u8` bytes, then the rest.
    fn name_and_rest(&mut self) -> Result<(&'a [u8], &'a [u8]), DecodeError> {
        let [n] = self.take::<1>()?;
        match self.0.split_at_checked(n as usize) {
            Some((name, rest)) if n > 0 => Ok((name, rest)),
            _ => Err(DecodeError::Malformed("bad queue name length")),
        }
    }
    /// The rest as a queue name (`empty_ok`: may be empty).
    fn name(self, empty_ok: bool) -> Result<&'a [u8], DecodeError> {
        match self.0.len() {
            0 if empty_ok => Ok(self.0),
            1..=255 => Ok(self.0),
            _ => Err(DecodeError::Malformed("bad queue name length")),
        }
    }
}

/// Appends one message to the `messages` of a FETCHED frame being built.
pub fn put_fetched(messages: &mut Vec<u8>, message: &[u8]) {
    messages.extend_from_slice(&(message.len() as u32).to_be_bytes());
    messages.extend_from_slice(message);
}

/// The messages of a FETCHED frame (checked when it was decoded).
pub fn fetched(mut messages: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (len, rest) = messages.split_first_chunk::<4>()?;
        let (m, rest) = rest.split_at(u32::from_be_bytes(*len) as usize);
        messages = rest;
        Some(m)
    })
}

/// Encodes a MSG frame for `seq` straight into `out`: the channel server's
/// one frame per message.
pub fn put_msg(out: &mut Vec<u8>, seq: u64, topic: &[u8], message: &[u8]) {
    put_named(out, MSG, seq.to_be_bytes(), topic, message);
}

/// Encodes a PUBLISH frame straight into `out`: a worker's one frame per
/// message.
pub fn put_publish(out: &mut Vec<u8>, confirm: bool, topic: &[u8], message: &[u8]) {
    put_named(out, PUBLISH, [u8::from(confirm) * CONFIRM], topic, message);
}

/// Appends a frame whose body is `fields`, then a topic after its length
/// byte, then `rest` (PUBLISH, MSG, SUBERR). The header is built on the stack
/// and copied once: through `put`, a PUBLISH or MSG cost twice as many
/// instructions, and there is one of them per message.
fn put_named<const N: usize>(out: &mut Vec<u8>, kind: u8, fields: [u8; N], topic: &[u8], rest: &[u8]) {
    const { assert!(N <= 8, "the longest fields are a u64") };
    let len = 1 + N + 1 + topic.len() + rest.len();
    let mut head = [0; LEN + 1 + 8 + 1];
    head[..LEN].copy_from_slice(&(len as u32).to_be_bytes());
    head[LEN] = kind;
    head[LEN + 1..LEN + 1 + N].copy_from_slice(&fields);
    head[LEN + 1 + N] = topic.len() as u8;
    out.reserve(LEN + len);
    out.extend_from_slice(&head[..LEN + 1 + N + 1]);
    out.extend_from_slice(topic);
    out.extend_from_slice(rest);
}

/// The length of the encoded frame that `buf` starts with, prefix included
/// (`buf` holds at least the prefix).
fn encoded_len(buf: &[u8]) -> usize {
    LEN + u32::from_be_bytes(buf[..LEN].try_into().unwrap()) as usize
}

fn put(out: &mut Vec<u8>, kind: u8, parts: &[&[u8]]) {
    let len = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    out.reserve(LEN + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(kind);
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// Reads fixed-size fields off the front of a body.
struct Body<'a>(&'a [u8]);

impl<'a> Body<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self.0.split_first_chunk::<N>().ok_or(DecodeError::Malformed("frame too short"))?;
        self.0 = rest;
        Ok(*head)
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.take().map(u64::from_be_bytes)
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.take().map(u32::from_be_bytes)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.take::<1>().map(|b| b[0])
    }
    /// A topic filling the rest of the body.
    fn topic(self) -> Result<&'a [u8], DecodeError> {
        topic::check_len(self.0).map_err(|_| DecodeError::Malformed("bad topic length"))?;
        Ok(self.0)
    }
    /// A topic of `n` bytes, then the rest.
    fn topic_then_rest(self, n: u8) -> Result<(&'a [u8], &'a [u8]), DecodeError> {
        let n = n as usize;
        if self.0.len() < n {
            return Err(DecodeError::Malformed("topic overruns frame"));
        }
        let (t, rest) = self.0.split_at(n);
        Body(t).topic().map(|t| (t, rest))
    }
}

/// Decodes `kind + body` (the bytes after the length). The frames of every
/// message, PUBLISH into the channel server and MSG out of it, are decoded
/// here and the others out of line: in one match with them all, the code
/// the compiler shares between the variants made a PUBLISH cost one and a
/// half times as many instructions.
fn decode_body(b: &[u8]) -> Result<Frame<'_>, DecodeError> {
    let (&kind, body) = b.split_first().ok_or(DecodeError::Malformed("empty frame"))?;
    match kind {
        PUBLISH => {
            let ([flags], topic, message) = named(body)?;
            Ok(Frame::Publish { confirm: flags & CONFIRM != 0, topic, message })
        }
        MSG => {
            let (seq, topic, message) = named(body)?;
            Ok(Frame::Msg { seq: u64::from_be_bytes(seq), topic, message })
        }
        _ => decode_other(kind, body),
    }
}

/// The fields, topic and rest of a body that `put_named` wrote.
type Named<'a, const N: usize> = ([u8; N], &'a [u8], &'a [u8]);

fn named<const N: usize>(body: &[u8]) -> Result<Named<'_, N>, DecodeError> {
    let Some((fields, [n, rest @ ..])) = body.split_first_chunk::<N>() else {
        return Err(DecodeError::Malformed("frame too short"));
    };
    let (topic, rest) = Body(rest).topic_then_rest(*n)?;
    Ok((*fields, topic, rest))
}

/// Decodes a frame of any kind but PUBLISH and MSG (see `decode_body`).
#[inline(never)]
fn decode_other(kind: u8, body: &[u8]) -> Result<Frame<'_>, DecodeError> {
    let mut b = Body(body);
    Ok(match kind {
        HELLO => Frame::Hello { version: b.u8()?, secret: b.0 },
        WELCOME => {
            let (version, epoch) = (b.u8()?, b.u64()?);
            if !b.0.is_empty() {
                return Err(DecodeError::Malformed("bad welcome"));
            }
            Frame::Welcome { version, epoch }
        }
        SUB => Frame::Sub { from: b.u64()?, topic: b.topic()? },
        SUBACK => Frame::SubAck { next: b.u64()?, topic: b.topic()? },
        UNSUB => Frame::Unsub(b.topic()?),
        ERROR => Frame::Error(body),
        PUBACK => Frame::PubAck { seq: b.u64()?, topic: b.topic()? },
        FETCH => Frame::Fetch { req: b.u32()?, from: b.u64()?, limit: b.u32()?, topic: b.topic()? },
        FETCHED => {
            let (req, g0, g1, first, next, n) = (b.u32()?, b.u64()?, b.u64()?, b.u64()?, b.u64()?, b.u8()?);
            let (topic, messages) = b.topic_then_rest(n)?;
            let mut rest = messages;
            let mut count = 0u64;
            while !rest.is_empty() {
                let mut m = Body(rest);
                let len = m.u32()? as usize;
                if m.0.len() < len {
                    return Err(DecodeError::Malformed("fetched message overruns frame"));
                }
                rest = &m.0[len..];
                count += 1;
            }
            if first + count != next && count > 0 {
                return Err(DecodeError::Malformed("fetched messages do not end at next"));
            }
            let gap = (g0 != 0).then_some((g0, g1));
            Frame::Fetched { req, gap, first, next, topic, messages }
        }
        INFO => Frame::Info { req: b.u32()?, topic: b.topic()? },
        INFOED => Frame::Infoed { req: b.u32()?, first: b.u64()?, last: b.u64()?, messages: b.u64()?, bytes: b.u64()? },
        SUBERR => {
            let ([], topic, reason) = named(body)?;
            Frame::SubErr { topic, reason }
        }
        PING | PONG if !body.is_empty() => return Err(DecodeError::Malformed("ping or pong with a body")),
        PING => Frame::Ping,
        PONG => Frame::Pong,
        ENQUEUE => {
            let mut f = Fields(body);
            let (req, client) = (f.u32()?, f.u64()?);
            let (queue, message) = f.name_and_rest()?;
            Frame::Enqueue { req, client, queue, message }
        }
        CONSUME => {
            let mut f = Fields(body);
            let (req, client, prefetch) = (f.u32()?, f.u64()?, f.u32()?);
            Frame::Consume { req, client, prefetch, queue: f.name(false)? }
        }
        UNCONSUME => {
            let mut f = Fields(body);
            let (req, client) = (f.u32()?, f.u64()?);
            Frame::Unconsume { req, client, queue: f.name(true)? }
        }
        SETTLE => {
            let mut f = Fields(body);
            let (req, client) = (f.u32()?, f.u64()?);
            let verdict = match f.take::<1>()? {
                [0] => Verdict::Ack,
                [1] => Verdict::Nack,
                [2] => Verdict::Reject,
                _ => return Err(DecodeError::Malformed("unknown verdict")),
            };
            let id = f.u64()?;
            Frame::Settle { req, client, verdict, id, queue: f.name(false)? }
        }
        LIST_QUEUES => {
            let mut f = Fields(body);
            let (req, client) = (f.u32()?, f.u64()?);
            if !f.0.is_empty() {
                return Err(DecodeError::Malformed("bad queue list request"));
            }
            Frame::ListQueues { req, client }
        }
        JOB => {
            let mut f = Fields(body);
            let (client, id, attempt) = (f.u64()?, f.u64()?, f.u32()?);
            let (queue, message) = f.name_and_rest()?;
            Frame::Job { client, id, attempt, queue, message }
        }
        QUEUE_REPLY => {
            let mut f = Fields(body);
            let (req, client, settled) = (f.u32()?, f.u64()?, f.u32()?);
            Frame::QueueReply { req, client, settled, text: f.0 }
        }
        k => return Err(DecodeError::UnknownKind(k)),
    })
}

// ---- queued frames ------------------------------------------------------------
//
// A queue of encoded frames (`runtime::outbound`) asks FRAMING where its
// frames begin and end and which are publishes.

/// How a queue of encoded frames finds them (see `framing`).
pub const FRAMING: Framing = Framing { len: encoded_len, is_publish };

fn is_publish(frame: &[u8]) -> bool {
    frame.get(LEN) == Some(&PUBLISH)
}

fn is_confirmed_publish(frame: &[u8]) -> bool {
    is_publish(frame) && frame.get(LEN + 1).is_some_and(|f| f & CONFIRM != 0)
}

/// How many publishes asking for a confirm `buf` (whole frames) holds.
pub fn count_confirms(buf: &[u8]) -> u64 {
    FRAMING.count_where(buf, is_confirmed_publish)
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

    /// The next whole frame, or `None` until more input arrives.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, DecodeError> {
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
        decode_body(&self.buf[at + LEN..at + LEN + len]).map(Some)
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
        let (mut out, mut again) = (Vec::new(), Vec::new());
        for p in pieces {
            let mut src: &[u8] = p;
            while !src.is_empty() {
                r.read_from(&mut src).unwrap();
                while let Some(f) = r.next_frame()? {
                    f.encode(&mut again);
                    out.push(format!("{f:?}"));
                }
            }
        }
        let (all, decoded) = (pieces.concat(), again.len());
        assert_eq!(again, all[..decoded], "the frames decoded encode to the bytes they came from");
        Ok(out)
    }

    #[test]
    fn round_trip_split_bytewise() {
        let mut messages = Vec::new();
        put_fetched(&mut messages, b"one");
        put_fetched(&mut messages, b"");
        let frames = [
            Frame::Hello { version: 2, secret: b"s3cret" },
            Frame::Welcome { version: 2, epoch: 0xdead_beef_0000_0001 },
            Frame::Sub { from: 7, topic: b"topic1" },
            Frame::SubAck { next: 9, topic: b"topic1" },
            Frame::Publish { confirm: false, topic: b"topic1", message: b"hello world" },
            Frame::Publish { confirm: true, topic: b"t", message: b"" },
            Frame::Msg { seq: u64::MAX, topic: b"t", message: b"m" },
            Frame::PubAck { seq: 3, topic: b"t" },
            Frame::Fetch { req: 5, from: 0, limit: 10, topic: b"t" },
            Frame::Fetched { req: 5, gap: Some((1, 4)), first: 5, next: 7, topic: b"t", messages: &messages },
            Frame::Fetched { req: 6, gap: None, first: 7, next: 7, topic: b"t", messages: b"" },
            Frame::Info { req: 1, topic: b"t" },
            Frame::Infoed { req: 1, first: 2, last: 3, messages: 2, bytes: 10 },
            Frame::Unsub(b"topic1"),
            Frame::Error(b"bye"),
            Frame::SubErr { topic: b"t", reason: b"too many topics" },
            Frame::Ping,
            Frame::Pong,
            Frame::Enqueue { req: 1, client: 7, queue: b"data_sync", message: b"Hello World!" },
            Frame::Consume { req: 0, client: u64::MAX, prefetch: 10, queue: b"q" },
            Frame::Unconsume { req: 2, client: 1, queue: b"" },
            Frame::Settle { req: 3, client: 1, verdict: Verdict::Reject, id: 1 << 40, queue: b"q" },
            Frame::ListQueues { req: 4, client: 3 },
            Frame::Job { client: 7, id: 1, attempt: 2, queue: b"data_sync", message: b"" },
            Frame::QueueReply { req: 5, client: 7, settled: 1, text: b"OK acked q#1\n" },
        ];
        let mut data = Vec::new();
        frames.iter().for_each(|f| f.encode(&mut data));
        let want: Vec<String> = frames.iter().map(|f| format!("{f:?}")).collect();
        let bytewise: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(decode_all(&bytewise).unwrap(), want);
        assert_eq!(decode_all(&[&data]).unwrap(), want);
        assert_eq!(fetched(&messages).collect::<Vec<_>>(), [&b"one"[..], b""]);
    }

    #[test]
    fn the_encoders_of_one_frame_per_message_round_trip() {
        let mut data = Vec::new();
        put_publish(&mut data, true, b"topic1", b"hello world");
        put_publish(&mut data, false, &[b't'; topic::MAX_LEN], b"");
        put_msg(&mut data, u64::MAX - 1, b"t", b"m");
        let want = [
            Frame::Publish { confirm: true, topic: b"topic1", message: b"hello world" },
            Frame::Publish { confirm: false, topic: &[b't'; topic::MAX_LEN], message: b"" },
            Frame::Msg { seq: u64::MAX - 1, topic: b"t", message: b"m" },
        ];
        assert_eq!(decode_all(&[&data]).unwrap(), want.map(|f| format!("{f:?}")));
    }

    #[test]
    fn large_frame_grows_buffer() {
        let msg = vec![b'x'; MAX_MESSAGE];
        let mut data = Vec::new();
        Frame::Publish { confirm: false, topic: &[b't'; 128], message: &msg }.encode(&mut data);
        let mut messages = Vec::new();
        put_fetched(&mut messages, &msg);
        let (gap, topic) = (Some((u64::MAX, u64::MAX)), &[b't'; 128]);
        Frame::Fetched { req: u32::MAX, gap, first: 1, next: 2, topic, messages: &messages }.encode(&mut data);
        assert_eq!(decode_all(&[&data]).unwrap().len(), 2);
    }

    #[test]
    fn rejects_bad_frames() {
        assert_eq!(decode_all(&[&[0xff, 0xff, 0xff, 0xff]]), Err(DecodeError::TooLarge(u32::MAX as usize, MAX_FRAME)));
        assert_eq!(decode_all(&[&[0, 0, 0, 1, 99]]), Err(DecodeError::UnknownKind(99)));
        assert!(decode_all(&[&[0, 0, 0, 4, PUBLISH, 0, 5, b'a']]).is_err());
        assert!(decode_all(&[&[0, 0, 0, 2, PUBLISH, 0]]).is_err(), "no topic length");
        assert!(decode_all(&[&[0, 0, 0, 4, PUBLISH, 0, 0, b'm']]).is_err(), "empty topic");
        assert!(decode_all(&[&[0, 0, 0, 9, MSG, 0, 0, 0, 0, 0, 0, 0, 1]]).is_err(), "no topic length");
        assert!(decode_all(&[&[0, 0, 0, 3, SUBERR, 2, b't']]).is_err(), "topic overruns the frame");
        assert!(decode_all(&[&[0, 0, 0, 0]]).is_err());
        assert!(decode_all(&[&[0, 0, 0, 1, SUB]]).is_err());
        let mut bad = Vec::new();
        Frame::Fetched { req: 1, gap: None, first: 1, next: 3, topic: b"t", messages: &[0, 0, 0, 1, b'x'] }
            .encode(&mut bad);
        assert!(decode_all(&[&bad]).is_err(), "one message cannot end at 3");
        bad.clear();
        Frame::Fetched { req: 1, gap: None, first: 1, next: 2, topic: b"t", messages: &[0, 0, 0, 9, b'x'] }
            .encode(&mut bad);
        assert!(decode_all(&[&bad]).is_err(), "a message longer than the frame");
        assert!(decode_all(&[&[0, 0, 0, 14, ENQUEUE, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0]]).is_err(), "empty name");
        assert!(decode_all(&[&[0, 0, 0, 15, SETTLE, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 3, b'q']]).is_err(), "verdict");
        assert!(decode_all(&[&[0, 0, 0, 4, LIST_QUEUES, 0, 0, 1]]).is_err());
    }

    #[test]
    fn queued_frames_are_walked_from_their_starts() {
        let mut buf = Vec::new();
        for (m, confirm) in [(&b"aa"[..], true), (b"bbbb", false), (b"c", true)] {
            Frame::Publish { confirm, topic: b"t", message: m }.encode(&mut buf);
        }
        Frame::SubAck { next: 1, topic: b"t" }.encode(&mut buf);
        Frame::Publish { confirm: true, topic: b"t", message: b"d" }.encode(&mut buf);
        // Frame lengths on the wire: 4 + 1 + 2 + 1 + len(message) = 10, 12, 9; SUBACK 14; 9.
        assert_eq!(FRAMING.start_of(&buf, 0), 0);
        assert_eq!(FRAMING.start_of(&buf, 9), 0);
        assert_eq!(FRAMING.start_of(&buf, 10), 10);
        assert_eq!(FRAMING.start_of(&buf, 28), 22);
        assert_eq!((FRAMING.end_of(&buf, 0), FRAMING.end_of(&buf, 3), FRAMING.end_of(&buf, 10)), (0, 10, 10));
        assert_eq!(FRAMING.count(&buf[FRAMING.start_of(&buf, 11)..]), 4);
        assert_eq!(FRAMING.count(&buf), 5);
        assert_eq!(FRAMING.count_publishes(&buf), 4);
        assert_eq!(FRAMING.count_publishes(&buf[10..]), 3);
        assert_eq!((count_confirms(&buf), count_confirms(&buf[10..])), (3, 2));
        let (kept, lost) = FRAMING.unstarted_publishes(&buf, 23);
        assert_eq!((kept.as_slice(), lost), (&buf[45..], 1));
        let (kept, lost) = FRAMING.unstarted_publishes(&buf, 22);
        assert_eq!((kept.len(), lost), (18, 0));
    }

    #[test]
    fn a_limited_reader_refuses_larger_frames_and_buffers_little() {
        let mut r = FrameReader::limited(16);
        let mut big: &[u8] = &[&[0, 0, 0, 17, SUB][..], &[b'x'; 100]].concat();
        r.read_from(&mut big).unwrap();
        assert!(r.buf.len() <= 20, "buffered {} bytes", r.buf.len());
        assert_eq!(r.next_frame().unwrap_err(), DecodeError::TooLarge(17, 16));
        let mut ok = FrameReader::limited(16);
        let mut hello: &[u8] = &[0, 0, 0, 3, HELLO, 3, b's', 0, 0, 0, 10, SUB, 0, 0, 0, 0, 0, 0, 0, 0, b't'];
        ok.read_from(&mut hello).unwrap();
        assert!(matches!(ok.next_frame(), Ok(Some(Frame::Hello { .. }))));
        ok.set_limit(MAX_FRAME);
        ok.read_from(&mut hello).unwrap();
        assert!(matches!(ok.next_frame(), Ok(Some(Frame::Sub { from: 0, topic: b"t" }))));
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
