//! One topic's retained messages in memory: a window of consecutive numbers.
//!
//! Bodies are copied into a per-topic chunk (`BytesMut`) and handed out as
//! `Bytes` slices of it, so a message costs its payload plus one 40-byte
//! entry, not an allocation of its own, and a reader can keep a message past
//! the call for the price of a reference count. A chunk is freed when the
//! last message in it is trimmed. Chunks grow with the topic (half its
//! retained bytes, 64 B to 64 KiB), so a quiet topic wastes little and a
//! busy one allocates rarely; what a chunk holds beyond retention is at most
//! one chunk per topic.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

const MIN_CHUNK: usize = 64;
const MAX_CHUNK: usize = 64 * 1024;
/// Bigger payloads get an allocation of their own: sharing a chunk would
/// only pin more memory.
const OWN_ALLOCATION: usize = 16 * 1024;

pub(super) struct Entry {
    pub body: Bytes,
    pub time_ms: u64,
}

/// The messages of one topic, numbered `first ..= last`.
pub(super) struct Topic {
    pub name: Box<[u8]>,
    /// The number of `entries[0]`; `last + 1` when nothing is retained.
    pub first: u64,
    pub entries: VecDeque<Entry>,
    /// Payload bytes retained.
    pub bytes: u64,
    chunk: BytesMut,
    /// The log segment of each retained message, run-length encoded
    /// (segment id, count) in number order.
    pub runs: VecDeque<(u64, u64)>,
    /// The segment whose record carries `last` (a message or a mark); when
    /// that segment is deleted and nothing is retained, a mark is written.
    pub last_seg: u64,
    /// The newest segment whose topic list names this topic.
    pub listed_seg: Option<u64>,
}

impl Topic {
    pub fn new(name: &[u8]) -> Topic {
        Topic {
            name: name.into(),
            first: 1,
            entries: VecDeque::new(),
            bytes: 0,
            chunk: BytesMut::new(),
            runs: VecDeque::new(),
            last_seg: 0,
            listed_seg: None,
        }
    }

    /// The number of the newest message (0 before the first).
    pub fn last(&self) -> u64 {
        self.first + self.entries.len() as u64 - 1
    }

    /// Appends the next message (number `last + 1`), logged in segment `seg`.
    pub fn push(&mut self, payload: &[u8], time_ms: u64, seg: u64) {
        let body = if payload.len() >= OWN_ALLOCATION {
            Bytes::copy_from_slice(payload)
        } else {
            if self.chunk.capacity() - self.chunk.len() < payload.len() {
                let size = (self.bytes as usize / 2).clamp(MIN_CHUNK, MAX_CHUNK).max(payload.len());
                self.chunk = BytesMut::with_capacity(size);
            }
            self.chunk.extend_from_slice(payload);
            self.chunk.split().freeze()
        };
        if self.entries.capacity() == 0 {
            // Most topics of a server with very many hold few messages:
            // start at one entry, not the four `VecDeque` would allocate.
            self.entries.reserve_exact(1);
            self.runs.reserve_exact(1);
        }
        self.entries.push_back(Entry { body, time_ms });
        self.bytes += payload.len() as u64;
        match self.runs.back_mut() {
            Some((s, n)) if *s == seg => *n += 1,
            _ => self.runs.push_back((seg, 1)),
        }
        self.last_seg = seg;
    }

    /// Drops the oldest message; returns the segment it was logged in.
    pub fn pop(&mut self) -> Option<u64> {
        let e = self.entries.pop_front()?;
        self.first += 1;
        self.bytes -= e.body.len() as u64;
        let (seg, n) = self.runs.front_mut().expect("a run for every entry");
        let seg = *seg;
        *n -= 1;
        if *n == 0 {
            self.runs.pop_front();
        }
        if self.entries.is_empty() {
            // Nothing refers to the chunk's filled part any more: start the
            // next one small rather than keep a big one for a quiet topic.
            self.chunk = BytesMut::new();
        }
        Some(seg)
    }

    /// The index in `entries` of message `seq`, clamped to the window.
    pub fn index(&self, seq: u64) -> usize {
        (seq.saturating_sub(self.first) as usize).min(self.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_runs_and_bytes_follow_pushes_and_pops() {
        let mut t = Topic::new(b"t");
        assert_eq!((t.first, t.last()), (1, 0));
        t.push(b"a", 1, 1);
        t.push(b"bb", 2, 1);
        t.push(b"ccc", 3, 2);
        assert_eq!((t.first, t.last(), t.bytes), (1, 3, 6));
        assert_eq!(t.runs, [(1, 2), (2, 1)]);
        assert_eq!(t.pop(), Some(1));
        assert_eq!(t.pop(), Some(1));
        assert_eq!(t.runs, [(2, 1)]);
        assert_eq!((t.first, t.last(), t.bytes), (3, 3, 3));
        assert_eq!(&t.entries[0].body[..], b"ccc");
        assert_eq!(t.pop(), Some(2));
        assert_eq!(t.pop(), None);
        assert_eq!((t.first, t.last(), t.bytes, t.last_seg), (4, 3, 0, 2));
        assert_eq!(t.index(2), 0);
        assert_eq!(t.index(9), 0);
    }

    #[test]
    fn bodies_share_chunks_and_outlive_growth() {
        let mut t = Topic::new(b"t");
        for i in 0..10_000u32 {
            t.push(&i.to_le_bytes(), 0, 1);
        }
        let big = vec![7u8; OWN_ALLOCATION];
        t.push(&big, 0, 1);
        for (i, e) in t.entries.iter().take(10_000).enumerate() {
            assert_eq!(&e.body[..], &(i as u32).to_le_bytes());
        }
        assert_eq!(t.entries[10_000].body, big);
    }
}
