//! A client's bounded output queue.
//!
//! A batch of messages for one topic is encoded once per worker into a shared
//! `Rc<[u8]>`; each subscriber's queue holds a reference to it, so fanning a
//! batch out to N subscribers costs N reference-count increments and no copy.
//! Flushing writes up to 1024 chunks per `writev`, handling short writes.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

/// Linux rejects more slices than this in one `writev`.
const MAX_IOV: usize = 1024;
/// Small replies are copied into one owned chunk up to this size.
const OWNED_CHUNK: usize = 4096;

#[derive(Debug)]
enum Chunk {
    /// A batch of `msgs` message lines shared with other subscribers.
    Shared { bytes: Rc<[u8]>, msgs: u32 },
    /// Replies to this client (OK, ERR, PONG, …).
    Owned(Vec<u8>),
}

/// The unwritten part of chunk `i` (the front one is `head` bytes in).
fn slice(i: usize, c: &Chunk, head: usize) -> IoSlice<'_> {
    IoSlice::new(&c.bytes()[if i == 0 { head } else { 0 }..])
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Shared { bytes, .. } => bytes,
            Chunk::Owned(v) => v,
        }
    }
}

#[derive(Debug, Default)]
pub struct SendQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    head: usize,
    queued: usize,
}

impl SendQueue {
    pub fn queued(&self) -> usize {
        self.queued
    }

    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// A queue holding bytes taken over from another worker.
    pub fn from_bytes(bytes: Vec<u8>) -> SendQueue {
        let mut q = SendQueue::default();
        if !bytes.is_empty() {
            q.queued = bytes.len();
            q.chunks.push_back(Chunk::Owned(bytes));
        }
        q
    }

    /// Everything not yet written, in order.
    pub fn unsent(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.queued);
        for (i, c) in self.chunks.iter().enumerate() {
            out.extend_from_slice(&c.bytes()[if i == 0 { self.head } else { 0 }..]);
        }
        out
    }

    pub fn push_shared(&mut self, bytes: &Rc<[u8]>, msgs: u32) {
        self.queued += bytes.len();
        self.chunks.push_back(Chunk::Shared { bytes: Rc::clone(bytes), msgs });
    }

    /// Appends a reply, copying it into the last owned chunk when there is room.
    pub fn push_bytes(&mut self, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.queued += len;
        let fits = |v: &Vec<u8>| v.len() + len <= OWNED_CHUNK;
        // The front chunk may be partly written; appending to it is still fine.
        match self.chunks.back_mut() {
            Some(Chunk::Owned(v)) if fits(v) => parts.iter().for_each(|p| v.extend_from_slice(p)),
            _ => self.chunks.push_back(Chunk::Owned(parts.concat())),
        }
    }

    /// Drops every message not yet started, keeping the rest of a partly written
    /// chunk so the stream stays at a line boundary. Returns the messages dropped.
    pub fn discard_unsent(&mut self) -> u64 {
        let keep = usize::from(self.head > 0);
        let mut dropped = 0;
        for c in self.chunks.drain(keep..) {
            self.queued -= c.bytes().len();
            if let Chunk::Shared { msgs, .. } = c {
                dropped += u64::from(msgs);
            }
        }
        dropped
    }

    /// Writes until the queue is empty or the socket is full. Returns the bytes
    /// written; `WouldBlock` is not an error here: check `is_empty`.
    pub fn write_to(&mut self, w: &mut impl Write) -> io::Result<usize> {
        let mut total = 0;
        while !self.chunks.is_empty() {
            let n = {
                let head = self.head;
                let mut small = [IoSlice::new(&[]); 64];
                let big: Vec<IoSlice<'_>>;
                let slices: &[IoSlice<'_>] = if self.chunks.len() <= small.len() {
                    for (i, c) in self.chunks.iter().enumerate() {
                        small[i] = slice(i, c, head);
                    }
                    &small[..self.chunks.len()]
                } else {
                    // A subscriber that has fallen behind: rare, so allocating is fine.
                    big = self.chunks.iter().take(MAX_IOV).enumerate().map(|(i, c)| slice(i, c, head)).collect();
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
            self.consume(n);
        }
        Ok(total)
    }

    fn consume(&mut self, mut n: usize) {
        self.queued -= n;
        while n > 0 {
            let left = self.chunks[0].bytes().len() - self.head;
            if n < left {
                self.head += n;
                return;
            }
            n -= left;
            self.head = 0;
            self.chunks.pop_front();
        }
        while self.chunks.front().is_some_and(|c| c.bytes().len() == self.head) {
            self.chunks.pop_front();
            self.head = 0;
        }
        if self.chunks.is_empty() && self.chunks.capacity() > 64 {
            self.chunks = VecDeque::new(); // an idle connection holds nothing
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn short_writes_keep_order() {
        let mut q = SendQueue::default();
        let shared: Rc<[u8]> = Rc::from(&b"m1\nm2\n"[..]);
        q.push_bytes(&[b"OK ", b"a\n"]);
        q.push_shared(&shared, 2);
        q.push_bytes(&[b"PONG\n"]);
        for _ in 0..2000 {
            q.push_shared(&shared, 2);
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
        let mut q = SendQueue::default();
        let shared: Rc<[u8]> = Rc::from(&b"abcdef\n"[..]);
        q.push_shared(&shared, 1);
        q.push_shared(&shared, 1);
        q.push_shared(&shared, 1);
        let mut w = Trickle { got: Vec::new(), max: 3, limit: 3 };
        q.write_to(&mut w).unwrap();
        assert_eq!(q.discard_unsent(), 2);
        q.push_bytes(&[b"ERR slow consumer\n"]);
        w.limit = usize::MAX;
        q.write_to(&mut w).unwrap();
        assert_eq!(w.got, b"abcdef\nERR slow consumer\n");
    }
}
