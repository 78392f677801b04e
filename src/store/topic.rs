//! One topic's retained messages in memory: a window of consecutive numbers.
//!
//! Bodies are copied into per-topic chunks (plain `Vec<u8>`s allocated at
//! their final size, so a body never moves) and an entry says where its body
//! lies: a message costs its payload plus a 24-byte entry, not an allocation
//! of its own, and appending is a copy with no reference counting (readers
//! borrow bodies, and the channel server copies them into frames anyway). A
//! chunk is freed when the last message in it is trimmed. Chunks grow with the
//! topic (half its retained bytes, 64 B to 64 KiB), so a quiet topic wastes
//! little and a busy one allocates rarely; what a chunk holds beyond retention
//! is at most one chunk per topic.

use std::collections::VecDeque;

use smallvec::SmallVec;

const MIN_CHUNK: usize = 64;
const MAX_CHUNK: usize = 64 * 1024;
/// Bigger payloads get a chunk of their own: sharing one would only pin more
/// memory.
const OWN_ALLOCATION: usize = 16 * 1024;

pub(super) struct Entry {
    pub time_ms: u64,
    /// The chunk holding the body, numbered from the topic's first chunk
    /// ever (wrapping), and the body's place in it.
    chunk: u32,
    off: u32,
    len: u32,
    /// The low 32 bits of the id of the log segment holding its record
    /// (live segments are fewer than 2^32 apart; see `Store::segment_id`):
    /// kept here, in what would be padding, rather than in a list of its
    /// own that every append would touch.
    pub seg: u32,
}

/// The messages of one topic, numbered `first ..= last`.
pub(super) struct Topic {
    /// Inline up to 24 bytes: the store's topic table compares names here
    /// on every lookup, and a name of its own allocation would be one more
    /// cache miss per message.
    pub name: SmallVec<[u8; 24]>,
    /// The number of `entries[0]`; `last + 1` when nothing is retained.
    pub first: u64,
    pub entries: VecDeque<Entry>,
    /// Payload bytes retained.
    pub bytes: u64,
    /// The bodies, oldest chunk first; `chunks[0]` is chunk number `chunk_base`.
    chunks: VecDeque<Vec<u8>>,
    chunk_base: u32,
    /// The segment whose record carries `last` (a message or a mark); when
    /// that segment is deleted and nothing is retained, a mark is written.
    pub last_seg: u64,
    /// The newest segment whose topic list names this topic.
    pub listed_seg: Option<u64>,
    /// Subscribed (`Store::hold`): never forgotten.
    pub held: bool,
}

impl Topic {
    pub fn new(name: &[u8]) -> Topic {
        Topic {
            name: SmallVec::from_slice(name),
            first: 1,
            entries: VecDeque::new(),
            bytes: 0,
            chunks: VecDeque::new(),
            chunk_base: 0,
            last_seg: 0,
            listed_seg: None,
            held: false,
        }
    }

    /// The number of the newest message (0 before the first).
    pub fn last(&self) -> u64 {
        self.first + self.entries.len() as u64 - 1
    }

    /// The body of a retained message.
    pub fn body(&self, e: &Entry) -> &[u8] {
        let chunk = &self.chunks[e.chunk.wrapping_sub(self.chunk_base) as usize];
        &chunk[e.off as usize..][..e.len as usize]
    }

    /// Appends the next message (number `last + 1`), logged in segment `seg`.
    pub fn push(&mut self, payload: &[u8], time_ms: u64, seg: u64) {
        let len = payload.len();
        if self.chunks.back().is_none_or(|c| c.capacity() - c.len() < len) {
            let size = match len >= OWN_ALLOCATION {
                true => len,
                false => (self.bytes as usize / 2).clamp(MIN_CHUNK, MAX_CHUNK).max(len),
            };
            self.chunks.push_back(Vec::with_capacity(size));
        }
        let chunk = self.chunk_base.wrapping_add(self.chunks.len() as u32 - 1);
        let c = self.chunks.back_mut().expect("a chunk with room");
        let off = c.len() as u32;
        c.extend_from_slice(payload); // within capacity: never reallocates
        if self.entries.capacity() == 0 {
            // Most topics of a server with very many hold few messages:
            // start at one entry, not the four `VecDeque` would allocate.
            self.entries.reserve_exact(1);
        }
        self.entries.push_back(Entry { time_ms, chunk, off, len: len as u32, seg: seg as u32 });
        self.bytes += len as u64;
        self.last_seg = seg;
    }

    /// Drops the oldest message; returns the low 32 bits of the segment it
    /// was logged in.
    pub fn pop(&mut self) -> Option<u32> {
        let e = self.entries.pop_front()?;
        self.first += 1;
        self.bytes -= e.len as u64;
        if self.entries.front().is_none_or(|next| next.chunk != e.chunk) {
            // Its chunk held no newer message: free it (when nothing is
            // left, the next chunk starts small again).
            self.chunks.pop_front();
            self.chunk_base = self.chunk_base.wrapping_add(1);
        }
        Some(e.seg)
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
    fn numbers_segments_and_bytes_follow_pushes_and_pops() {
        let mut t = Topic::new(b"t");
        assert_eq!((t.first, t.last()), (1, 0));
        t.push(b"a", 1, 1);
        t.push(b"bb", 2, 1);
        t.push(b"ccc", 3, 2);
        assert_eq!((t.first, t.last(), t.bytes), (1, 3, 6));
        assert_eq!(t.pop(), Some(1));
        assert_eq!(t.pop(), Some(1));
        assert_eq!((t.first, t.last(), t.bytes), (3, 3, 3));
        assert_eq!(t.body(&t.entries[0]), b"ccc");
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
            assert_eq!(t.body(e), &(i as u32).to_le_bytes());
        }
        assert_eq!(t.body(&t.entries[10_000]), big);
        for _ in 0..10_000 {
            t.pop();
        }
        assert_eq!((t.chunks.len(), t.body(&t.entries[0])), (1, &big[..]), "emptied chunks are freed");
        t.pop();
        assert!(t.chunks.is_empty());
    }
}
