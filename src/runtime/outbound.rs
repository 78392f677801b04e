//! THE output queue of every connection: a client's line output, a link's
//! frames (the worker's link, the channel server's peers) and the JSON lines
//! between the master and its workers. One type, as NATS has one `outbound`
//! for clients, routes and gateways.
//!
//! Bytes wait in chunks. A chunk is either owned by this queue, or a batch
//! shared with other queues: a batch of messages for one topic is encoded
//! once per worker into an `Rc<[u8]>`, and each subscriber's queue holds a
//! reference to it, so fanning a batch out to N subscribers costs N
//! reference-count increments and no copy. A batch for one subscriber only
//! is copied into its queue instead (coalesced with the batches before it):
//! with many topics of one subscriber each, a shared chunk would cost an
//! allocation per message. A flush writes up to 1024 chunks
//! per `writev` (`send` when there is one), handling short writes.
//!
//! A queue of frames (`Outbound<Frames>`) holds whole frames of the channel
//! protocol in one owned chunk, cut only at frame starts, so it always begins
//! with a whole frame: after a broken link the publishes not yet started can
//! be picked out and resent, a handoff can tell its successor how much of the
//! first frame went out, and queued frames can be counted. What a frame is,
//! is asked of `protocol::frame`.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

use crate::protocol::frame;
use crate::protocol::framing::Framing;

/// Linux rejects more slices than this in one `writev`.
const MAX_IOV: usize = 1024;
/// Small owned pieces are copied into one chunk up to this size (line queues).
const OWNED_CHUNK: usize = 4096;
/// Largest emptied buffer a queue of frames keeps for its next frames.
const KEEP: usize = 1 << 20;

#[derive(Debug)]
enum Chunk {
    /// A batch of `msgs` messages shared with other queues.
    Shared { bytes: Rc<[u8]>, msgs: u32 },
    /// Bytes of this queue only (replies, frames, control lines).
    Owned(Vec<u8>),
    /// Batches of `msgs` messages in all, copied into this queue only.
    Copied { bytes: Vec<u8>, msgs: u32 },
}

/// A batch of messages to queue (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub enum Batch<'a> {
    Shared(&'a Rc<[u8]>),
    Copy(&'a [u8]),
}

impl Batch<'_> {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Batch::Shared(b) => b,
            Batch::Copy(b) => b,
        }
    }
}

/// The unwritten part of chunk `i` (the front one is `head` bytes in), at
/// most `limit` bytes of it.
fn slice(i: usize, c: &Chunk, head: usize, limit: usize) -> IoSlice<'_> {
    let b = &c.bytes()[if i == 0 { head } else { 0 }..];
    IoSlice::new(&b[..b.len().min(limit)])
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Shared { bytes, .. } => bytes,
            Chunk::Owned(v) | Chunk::Copied { bytes: v, .. } => v,
        }
    }
}

/// What a queue holds: lines (and any bytes), or frames of a protocol. A
/// type, so that an idle client's queue is no larger than it must be (`Lines`
/// takes no room) and frame operations exist only on a queue of frames.
pub trait Kind: Default {
    const FRAMES: bool;
    /// Where the frames are, in a queue of frames.
    fn framing(&self) -> Framing;
}

/// Client lines, control lines: any bytes, coalesced into small chunks.
#[derive(Debug, Default)]
pub struct Lines;

/// Frames (of the channel protocol by default, or NATS operations): one
/// owned chunk, cut only at frame starts.
#[derive(Debug)]
pub struct Frames(pub Framing);

impl Default for Frames {
    fn default() -> Frames {
        Frames(frame::FRAMING)
    }
}

impl Kind for Lines {
    const FRAMES: bool = false;
    fn framing(&self) -> Framing {
        unreachable!("a queue of lines has no frames")
    }
}

impl Kind for Frames {
    const FRAMES: bool = true;
    fn framing(&self) -> Framing {
        self.0
    }
}

#[derive(Debug)]
pub struct Outbound<K: Kind = Lines> {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    head: usize,
    /// Bytes not yet written.
    queued: usize,
    kind: K,
}

impl<K: Kind> Default for Outbound<K> {
    fn default() -> Self {
        Outbound { chunks: VecDeque::new(), head: 0, queued: 0, kind: K::default() }
    }
}

impl<K: Kind> Outbound<K> {
    /// A queue taken over from another process: `bytes`, of which the first
    /// `written` were already sent (see `parts`).
    pub fn from_parts(bytes: Vec<u8>, written: usize) -> Self {
        Self::from_parts_of(K::default(), bytes, written)
    }

    /// Like `from_parts`, for a queue of this kind.
    pub fn from_parts_of(kind: K, bytes: Vec<u8>, written: usize) -> Self {
        let mut q = Outbound { kind, ..Self::default() };
        if !bytes.is_empty() {
            q.head = written.min(bytes.len());
            q.queued = bytes.len() - q.head;
            q.chunks.push_back(Chunk::Owned(bytes));
        }
        q
    }

    /// What a successor needs to carry on: the bytes not yet written (in a
    /// queue of frames, from the start of the frame being written), and how
    /// many of them were written already.
    pub fn parts(&self) -> (Vec<u8>, usize) {
        let Some(front) = self.chunks.front() else { return (Vec::new(), 0) };
        let cut = if K::FRAMES { self.kind.framing().start_of(front.bytes(), self.head) } else { self.head };
        let mut out = Vec::with_capacity(self.queued + self.head - cut);
        out.extend_from_slice(&front.bytes()[cut..]);
        self.chunks.iter().skip(1).for_each(|c| out.extend_from_slice(c.bytes()));
        (out, self.head - cut)
    }

    /// Bytes not yet written.
    pub fn queued(&self) -> usize {
        self.queued
    }

    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Appends bytes (to a queue of frames, whole frames), copying them into
    /// the last owned chunk when there is room.
    pub fn push(&mut self, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.queued += len;
        let fits = |v: &Vec<u8>| K::FRAMES || v.len() + len <= OWNED_CHUNK;
        // The front chunk may be partly written; appending to it is still fine.
        match self.chunks.back_mut() {
            Some(Chunk::Owned(v)) if fits(v) => parts.iter().for_each(|p| v.extend_from_slice(p)),
            _ => self.chunks.push_back(Chunk::Owned(parts.concat())),
        }
    }

    /// Writes until the queue is empty or the socket is full. Returns the bytes
    /// written; `WouldBlock` is not an error here: check `is_empty`.
    pub fn write_to(&mut self, w: &mut impl Write) -> io::Result<usize> {
        self.write_until(w, usize::MAX)
    }

    /// Writes at most `limit` bytes.
    fn write_until(&mut self, w: &mut impl Write, mut limit: usize) -> io::Result<usize> {
        let mut total = 0;
        while self.queued > 0 && limit > 0 {
            let n = {
                let (head, mut left) = (self.head, limit);
                let mut slices = self.chunks.iter().take(MAX_IOV).enumerate().map_while(|(i, c)| {
                    let s = slice(i, c, head, left);
                    left -= s.len();
                    (!s.is_empty()).then_some(s)
                });
                let mut small = [IoSlice::new(&[]); 64];
                let big: Vec<IoSlice<'_>>;
                let slices: &[IoSlice<'_>] = if self.chunks.len() <= small.len() {
                    let n = small.iter_mut().zip(&mut slices).map(|(to, s)| *to = s).count();
                    &small[..n]
                } else {
                    // A subscriber that has fallen behind: rare, so allocating is fine.
                    big = slices.collect();
                    &big
                };
                // One chunk (the usual case for an idle subscriber): send(2) skips
                // writev's file-layer work, a few percent of a loopback send.
                let written = match slices {
                    [one] => w.write(one),
                    _ => w.write_vectored(slices),
                };
                match written {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(total),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            total += n;
            limit = limit.saturating_sub(n);
            self.consume(n);
        }
        Ok(total)
    }

    fn consume(&mut self, n: usize) {
        self.queued -= n;
        self.head += n;
        let only = self.chunks.len() == 1;
        while let Some(front) = self.chunks.front_mut() {
            let len = front.bytes().len();
            if self.head < len {
                break;
            }
            self.head -= len;
            match front {
                // A queue of frames keeps its one buffer for the next frames.
                Chunk::Owned(v) if K::FRAMES && only && v.capacity() <= KEEP => {
                    v.clear();
                    break;
                }
                _ => drop(self.chunks.pop_front()),
            }
        }
        if self.chunks.is_empty() && self.chunks.capacity() > 64 {
            self.chunks = VecDeque::new(); // an idle connection holds nothing
        }
        if let Some(Chunk::Owned(v)) = self.chunks.front_mut().filter(|_| K::FRAMES) {
            // Keep a buffer of frames from growing while its front is written.
            if self.head > v.len() / 2 {
                let cut = self.kind.framing().start_of(v, self.head);
                v.drain(..cut);
                self.head -= cut;
            }
        }
    }
}

impl Outbound<Lines> {
    /// Queues a batch of `msgs` messages.
    pub fn push_batch(&mut self, batch: Batch<'_>, msgs: u32) {
        self.queued += batch.bytes().len();
        match batch {
            Batch::Shared(bytes) => self.chunks.push_back(Chunk::Shared { bytes: Rc::clone(bytes), msgs }),
            Batch::Copy(bytes) => match self.chunks.back_mut() {
                Some(Chunk::Copied { bytes: v, msgs: m }) if v.len() + bytes.len() <= OWNED_CHUNK => {
                    v.extend_from_slice(bytes);
                    *m += msgs;
                }
                _ => {
                    let mut v = Vec::with_capacity(bytes.len().max(OWNED_CHUNK));
                    v.extend_from_slice(bytes);
                    self.chunks.push_back(Chunk::Copied { bytes: v, msgs });
                }
            },
        }
    }

    /// Drops every chunk not yet started, keeping the rest of a partly
    /// written one so the stream stays at a line boundary. Returns the
    /// messages of the batches dropped.
    pub fn discard_unsent(&mut self) -> u64 {
        let keep = usize::from(self.head > 0);
        let mut dropped = 0;
        for c in self.chunks.drain(keep..) {
            self.queued -= c.bytes().len();
            if let Chunk::Shared { msgs, .. } | Chunk::Copied { msgs, .. } = c {
                dropped += u64::from(msgs);
            }
        }
        dropped
    }
}

impl Outbound<Frames> {
    /// The queue's one buffer of frames, and the bytes of it written.
    fn frames(&self) -> (&[u8], usize) {
        match self.chunks.front() {
            Some(c) => (c.bytes(), self.head),
            None => (&[], 0),
        }
    }

    /// A queue of frames found by `framing`.
    pub fn of(framing: Framing) -> Self {
        Outbound { kind: Frames(framing), ..Self::default() }
    }

    /// The queue's framing (a successor's queue takes the same).
    pub fn kind(&self) -> Frames {
        Frames(self.kind.0)
    }

    /// Appends one channel-protocol frame.
    pub fn push_frame(&mut self, f: frame::Frame<'_>) {
        self.push_frames(|v| f.encode(v));
    }

    /// Appends whole frames, which `encode` writes.
    pub fn push_frames(&mut self, encode: impl FnOnce(&mut Vec<u8>)) {
        match self.chunks.back_mut() {
            Some(Chunk::Owned(v)) => {
                let before = v.len();
                encode(v);
                self.queued += v.len() - before;
            }
            _ => {
                let mut v = Vec::new();
                encode(&mut v);
                self.queued += v.len();
                self.chunks.push_back(Chunk::Owned(v));
            }
        }
    }

    /// Puts frames ahead of everything queued; only before anything is written.
    pub fn push_front(&mut self, frames: Vec<u8>) {
        debug_assert_eq!(self.head, 0);
        self.queued += frames.len();
        match self.chunks.front_mut() {
            Some(Chunk::Owned(v)) => drop(v.splice(..0, frames)),
            _ => self.chunks.push_front(Chunk::Owned(frames)),
        }
    }

    /// Drops every frame not yet started, keeping the rest of the one being
    /// written so the stream stays whole. Returns the publishes dropped.
    pub fn discard_unsent(&mut self) -> u64 {
        let Some(Chunk::Owned(v)) = self.chunks.front_mut() else { return 0 };
        let f = self.kind.0;
        let keep = f.end_of(v, self.head);
        let dropped = f.count_publishes(&v[keep..]);
        v.truncate(keep);
        self.queued = keep - self.head;
        dropped
    }

    /// After a broken link: keeps only the publishes not yet started, for the
    /// next connection. Returns how many publishes were lost: a frame cut in
    /// half cannot be resent.
    pub fn keep_unstarted_publishes(&mut self) -> u64 {
        let (buf, written) = self.frames();
        let (kept, lost) = self.kind.0.unstarted_publishes(buf, written);
        *self = Outbound::from_parts_of(Frames(self.kind.0), kept, 0);
        lost
    }

    /// Publishes asking for a confirm not yet written in full.
    pub fn count_confirms(&self) -> u64 {
        let (buf, written) = self.frames();
        frame::count_confirms(&buf[self.kind.0.start_of(buf, written)..])
    }

    /// Frames not yet written in full, the one being written included.
    pub fn count_frames(&self) -> u64 {
        let (buf, written) = self.frames();
        self.kind.0.count(&buf[self.kind.0.start_of(buf, written)..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{Frame, FrameReader};

    /// A writer that takes at most `max` bytes per call, then blocks after `limit`.
    struct Trickle {
        got: Vec<u8>,
        max: usize,
        limit: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.got.len() >= self.limit {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(self.max).min(self.limit - self.got.len());
            self.got.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn socket(limit: usize) -> Trickle {
        Trickle { got: Vec::new(), max: usize::MAX, limit }
    }

    #[test]
    fn short_writes_keep_order() {
        let mut q = Outbound::<Lines>::default();
        let shared: Rc<[u8]> = Rc::from(&b"m1\nm2\n"[..]);
        q.push(&[b"OK ", b"a\n"]);
        q.push_batch(Batch::Shared(&shared), 2);
        q.push(&[b"PONG\n"]);
        for _ in 0..2000 {
            q.push_batch(Batch::Shared(&shared), 2);
        }
        let mut w = Trickle { got: Vec::new(), max: 7, limit: 20 };
        q.write_to(&mut w).unwrap();
        assert_eq!(q.queued(), 5 + 6 + 5 + 2000 * 6 - 20);
        w.limit = usize::MAX;
        q.write_to(&mut w).unwrap();
        assert!(q.is_empty());
        let mut want = b"OK a\nm1\nm2\nPONG\n".to_vec();
        (0..2000).for_each(|_| want.extend_from_slice(b"m1\nm2\n"));
        assert_eq!(w.got, want);
    }

    #[test]
    fn discard_keeps_partial_head() {
        let mut q = Outbound::<Lines>::default();
        let shared: Rc<[u8]> = Rc::from(&b"abcdef\n"[..]);
        q.push_batch(Batch::Shared(&shared), 1);
        q.push_batch(Batch::Shared(&shared), 1);
        q.push_batch(Batch::Shared(&shared), 1);
        let mut w = Trickle { got: Vec::new(), max: 3, limit: 3 };
        q.write_to(&mut w).unwrap();
        assert_eq!(q.discard_unsent(), 2);
        q.push(&[b"ERR slow consumer\n"]);
        w.limit = usize::MAX;
        q.write_to(&mut w).unwrap();
        assert_eq!(w.got, b"abcdef\nERR slow consumer\n");
    }

    #[test]
    fn copied_batches_coalesce_in_order_and_count_when_dropped() {
        let mut q = Outbound::<Lines>::default();
        q.push_batch(Batch::Copy(b"a1\na2\n"), 2);
        q.push(&[b"OK\n"]);
        q.push_batch(Batch::Copy(b"b1\n"), 1);
        q.push_batch(Batch::Copy(b"b2\n"), 1);
        assert_eq!(q.chunks.len(), 3, "consecutive copies share a chunk");
        let mut w = Trickle { got: Vec::new(), max: 2, limit: 2 };
        q.write_to(&mut w).unwrap();
        assert_eq!(q.discard_unsent(), 2, "the partly written batch stays; b1, b2 are dropped and counted");
        w.limit = usize::MAX;
        q.write_to(&mut w).unwrap();
        assert_eq!(w.got, b"a1\na2\n");
    }

    #[test]
    fn a_taken_over_queue_goes_on_where_the_socket_stopped() {
        let mut q = Outbound::<Lines>::default();
        q.push(&[b"hello\n", b"world\n"]);
        let mut w = socket(3);
        q.write_to(&mut w).unwrap();
        let (bytes, written) = q.parts();
        assert_eq!((bytes.as_slice(), written), (&b"lo\nworld\n"[..], 0));
        let mut q = Outbound::<Lines>::from_parts(bytes, written);
        w.limit = usize::MAX;
        q.write_to(&mut w).unwrap();
        assert_eq!(w.got, b"hello\nworld\n");
    }

    fn publishes(buf: &[u8]) -> Vec<Vec<u8>> {
        let mut r = FrameReader::with_bytes(buf.to_vec());
        let mut out = Vec::new();
        while let Some(f) = r.next_frame().unwrap() {
            match f {
                Frame::Publish { message, .. } => out.push(message.to_vec()),
                other => panic!("{other:?}"),
            }
        }
        assert!(r.unparsed().is_empty(), "a partial frame");
        out
    }

    /// Writes stop inside a frame, more than half the buffer is cut away, and
    /// then the link breaks: what is kept is exactly the whole publishes not
    /// yet started, and the stream written so far plus a successor's share is
    /// the whole stream.
    #[test]
    fn cut_mid_frame_then_broken() {
        for budget in [1, 7, 100, 151, 599, 1000] {
            let mut q = Outbound::<Frames>::default();
            let msgs: Vec<Vec<u8>> = (0..10u8).map(|i| vec![b'a' + i; 50 + i as usize]).collect();
            for m in &msgs {
                q.push_frame(Frame::Publish { confirm: m.len() % 2 == 0, topic: b"t", message: m });
            }
            let total = q.queued();
            let mut sock = socket(budget);
            q.write_to(&mut sock).unwrap();
            let (rest, written) = q.parts();
            assert_eq!(sock.got.len() + rest.len() - written, total, "budget {budget}");
            assert_eq!(written, sock.got.len() - (total - rest.len()));
            let started = msgs.len() - publishes(&rest).len() + usize::from(written > 0);
            assert_eq!(q.count_frames(), publishes(&rest).len() as u64);
            let lost = q.keep_unstarted_publishes();
            assert_eq!(lost, u64::from(written > 0), "budget {budget}");
            let kept = publishes(&q.parts().0);
            assert_eq!(kept, msgs[started..].to_vec(), "budget {budget}");
            let confirms = kept.iter().filter(|m| m.len() % 2 == 0).count();
            assert_eq!(q.count_confirms(), confirms as u64, "budget {budget}");
        }
    }

    #[test]
    fn an_emptied_queue_of_frames_takes_the_next_ones() {
        let mut q = Outbound::<Frames>::default();
        let mut sock = socket(usize::MAX);
        for m in [&b"one"[..], b"two"] {
            let f = Frame::Publish { confirm: false, topic: b"t", message: m };
            let mut one = Vec::new();
            f.encode(&mut one);
            q.push_frame(f);
            assert_eq!((q.queued(), q.count_frames()), (one.len(), 1));
            q.write_to(&mut sock).unwrap();
            assert!(q.is_empty());
        }
        assert_eq!(publishes(&sock.got), vec![b"one".to_vec(), b"two".to_vec()]);
    }

    /// Every client has one: an idle one must cost no more than its chunks,
    /// its offset and its count.
    #[test]
    fn an_idle_line_queue_is_small() {
        assert_eq!(std::mem::size_of::<Outbound>(), std::mem::size_of::<VecDeque<Chunk>>() + 16);
    }

    /// A link closed for breaking the protocol: the frame being written is
    /// finished, what follows is dropped and its publishes counted.
    #[test]
    fn discarding_frames_keeps_the_one_being_written() {
        let mut q = Outbound::<Frames>::default();
        for m in [&b"aa"[..], b"bbbb", b"c"] {
            q.push_frame(Frame::Publish { confirm: m.len() % 2 == 0, topic: b"t", message: m });
        }
        q.push_frame(Frame::SubAck { next: 1, topic: b"t" });
        let mut sock = socket(3);
        q.write_to(&mut sock).unwrap();
        assert_eq!(q.discard_unsent(), 2);
        q.push_frame(Frame::Error(b"bye"));
        sock.limit = usize::MAX;
        q.write_to(&mut sock).unwrap();
        let mut want = Vec::new();
        Frame::Publish { confirm: true, topic: b"t", message: b"aa" }.encode(&mut want);
        Frame::Error(b"bye").encode(&mut want);
        assert_eq!(sock.got, want);
    }
}
