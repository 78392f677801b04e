//! One topic's retained messages in memory: a window of consecutive numbers.
//!
//! Bodies are copied into per-topic chunks (plain `Vec<u8>`s allocated at
//! their final size, so a body never moves) and an entry says where its body
//! lies: a message costs its payload plus a 16-byte entry, not an allocation
//! of its own, and appending is a copy with no reference counting (readers
//! borrow bodies, and the channel server copies them into frames anyway). A
//! chunk is freed when the last message in it is trimmed. Chunks grow with the
//! topic (half its retained bytes, 64 B to 64 KiB), so a quiet topic wastes
//! little and a busy one allocates rarely; what a chunk holds beyond retention
//! is at most one chunk per topic.
//!
//! An entry is 16 bytes, a fifth of what a small message costs in all, so
//! it is packed: a body in a shared chunk is shorter than [`OWN_ALLOCATION`]
//! and starts within 64 KiB, so offset and length fit 16 bits each, and a
//! bigger body has its chunk to itself; the time is kept in whole seconds,
//! rounded up, which is the precision `--retain-age` has (and its expiry
//! runs once a second anyway): a message is never expired early.

use std::collections::VecDeque;

use smallvec::SmallVec;

const MIN_CHUNK: usize = 64;
const MAX_CHUNK: usize = 64 * 1024;
/// Bigger payloads get a chunk of their own: sharing one would only pin more
/// memory.
const OWN_ALLOCATION: usize = 16 * 1024;

pub(super) struct Entry {
    /// Seconds since the Unix epoch, rounded up (see the module's notes).
    time_s: u32,
    /// The chunk holding the body, numbered from the topic's first chunk
    /// ever (wrapping).
    chunk: u32,
    /// The low 32 bits of the id of the log segment holding its record
    /// (live segments are fewer than 2^32 apart; see `Store::segment_id`):
    /// kept here rather than in a list of its own that every append would
    /// touch.
    pub seg: u32,
    /// The body's place in its chunk; `len` is [`WHOLE_CHUNK`] for a body
    /// with a chunk of its own.
    off: u16,
    len: u16,
}

/// The `len` of an entry whose body is its whole chunk.
const WHOLE_CHUNK: u16 = u16::MAX;
const _: () = assert!(OWN_ALLOCATION <= WHOLE_CHUNK as usize && MAX_CHUNK <= 1 << 16);

impl Entry {
    /// When the message was appended, in milliseconds, rounded up to the second.
    pub fn time_ms(&self) -> u64 {
        u64::from(self.time_s) * 1000
    }
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
    /// The newest chunk holds a body of its own: nothing more goes in.
    sealed: bool,
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
            sealed: false,
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
        match e.len {
            WHOLE_CHUNK => chunk,
            len => &chunk[e.off as usize..][..len as usize],
        }
    }

    /// Appends the next message (number `last + 1`), logged in segment `seg`.
    pub fn push(&mut self, payload: &[u8], time_ms: u64, seg: u64) {
        let len = payload.len();
        let own = len >= OWN_ALLOCATION;
        // Room in the newest chunk, counted up to MAX_CHUNK so that offsets
        // fit 16 bits (an allocator may give more); none after an own body.
        let room = match self.chunks.back() {
            Some(c) if !self.sealed => c.capacity().min(MAX_CHUNK).saturating_sub(c.len()),
            _ => 0,
        };
        if own || room < len || self.chunks.is_empty() {
            let size = match own {
                true => len,
                false => (self.bytes as usize / 2).clamp(MIN_CHUNK, MAX_CHUNK).max(len),
            };
            self.chunks.push_back(Vec::with_capacity(size));
            self.sealed = own;
        }
        let chunk = self.chunk_base.wrapping_add(self.chunks.len() as u32 - 1);
        let c = self.chunks.back_mut().expect("a chunk with room");
        let (off, len16) = match len {
            0 => (0, 0), // needs no room, even in a sealed chunk
            _ if own => (0, WHOLE_CHUNK),
            _ => (c.len() as u16, len as u16), // within MAX_CHUNK, see `room`
        };
        c.extend_from_slice(payload); // within capacity: never reallocates
        if self.entries.capacity() == 0 {
            // Most topics of a server with very many hold few messages:
            // start at one entry, not the four `VecDeque` would allocate.
            self.entries.reserve_exact(1);
        }
        let time_s = u32::try_from(time_ms.div_ceil(1000)).unwrap_or(u32::MAX);
        self.entries.push_back(Entry { time_s, chunk, seg: seg as u32, off, len: len16 });
        self.bytes += len as u64;
        self.last_seg = seg;
    }

    /// Drops the oldest message; returns the low 32 bits of the segment it
    /// was logged in.
    pub fn pop(&mut self) -> Option<u32> {
        let len = self.body(self.entries.front()?).len();
        let e = self.entries.pop_front()?;
        self.first += 1;
        self.bytes -= len as u64;
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
    fn entries_are_sixteen_bytes_and_any_body_comes_back_whole() {
        assert_eq!(std::mem::size_of::<Entry>(), 16);
        let mut t = Topic::new(b"t");
        // Empty, small, a chunk's worth, own chunks, and small ones after own ones.
        let sizes = [0, 1, 0, 64, OWN_ALLOCATION - 1, OWN_ALLOCATION, 0, 3, MAX_CHUNK, 1 << 20, 5, 0];
        let bodies: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| vec![i as u8; n]).collect();
        for _ in 0..20 {
            for b in &bodies {
                t.push(b, 0, 1);
            }
        }
        for (i, e) in t.entries.iter().enumerate() {
            assert_eq!(t.body(e), &bodies[i % bodies.len()][..], "message {}", i + 1);
        }
        let total: usize = sizes.iter().sum::<usize>() * 20;
        assert_eq!(t.bytes, total as u64);
        while t.pop().is_some() {}
        assert_eq!((t.bytes, t.chunks.len()), (0, 0));
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
