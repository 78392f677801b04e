//! The message store of the channel server: numbered topic messages with
//! bounded retention, durable work-queue jobs, and an optional disk log under
//! both. Pure library: no sockets, no frames; time is always an argument
//! (milliseconds of wall clock, because it is written to disk and must mean
//! the same after a restart).
//!
//! # Model
//!
//! Everything appended is one record of one log ([`record::Record`]): a
//! topic message, a queue job or a job's transition. The log is cut into
//! segments of about `segment_bytes`; with a data directory each segment is a
//! file, without one the segments are only bookkeeping, so retention behaves
//! the same either way.
//!
//! - **Numbering**: each topic numbers its messages 1, 2, 3, … (`u64`); each
//!   queue numbers its jobs the same way. Numbers are never reused, also
//!   across restarts on the same data directory (a `TopicMark`/`QueueMark`
//!   record carries the latest number forward when the records holding it
//!   are deleted). A store without a data directory starts from 1 again;
//!   its [`Store::epoch`] is new, so a client holding a position of an older
//!   epoch can be told (the service compares epochs and reports a gap).
//! - **Topics are forgotten** when nothing needs them any more, so that
//!   clients choosing ever new names cannot grow the store without bound: a
//!   topic that is not subscribed ([`Store::hold`]) and retains nothing is
//!   forgotten when the segment holding its last record goes; and past
//!   `max_topics` unsubscribed topics, the oldest segments are released (as
//!   for `retain_total`) until the least recently published ones are gone.
//!   Its numbers must still never be given out again, yet remembering them
//!   per name is the unbounded memory this avoids. So names are hashed into
//!   a fixed table of floors ([`FLOOR_BUCKETS`], a stable hash because it is
//!   logged): forgetting raises its bucket's floor to the topic's last
//!   number, a topic created later numbers above its bucket's floor, and a
//!   read of a position at or below it gets a [`Gap`]. A new name sharing a
//!   bucket with a forgotten one therefore may start above 1: the price of
//!   bounded memory, paid only after topics were forgotten.
//! - **Queues are forgotten** the same way: a queue with no pending job is
//!   forgotten when the segment holding the record of its highest id goes,
//!   raising its bucket's floor to that id. Job ids only have to be unique
//!   per queue, not consecutive, so a queue's next id is always above its
//!   bucket's floor: that also covers a queue that an older record (an ack
//!   left in a later segment) brings back at open, with a lower id than it
//!   had when it was forgotten.
//! - **Readers are positions**: [`Store::read`] returns the retained
//!   messages from a number on, borrowed from the store (copy what you
//!   keep), plus the [`Gap`] of numbers that are gone if the position
//!   is older than the oldest retained message.
//! - **Retention** per topic: at most `retain_messages` messages and
//!   `retain_bytes` payload bytes (the newest message always stays), and
//!   none older than `retain_age_ms` ([`Store::expire`], call it about once
//!   a second). Across topics: the log — all segments, live records and the
//!   dead ones sharing a segment with them — never exceeds `retain_total`
//!   bytes (plus one segment): when it would, the oldest segment is released
//!   and the messages still retained in it are dropped early, oldest first
//!   whichever their topic. That bounds the disk used, and with it the memory
//!   (retained bytes ≤ log bytes). The defaults keep the last 100 000
//!   messages or 64 MiB of each topic, whichever is less, within 512 MiB of
//!   log, cut into 32 MiB segments.
//! - **Segments go whole, oldest first**, once nothing in them is needed: no
//!   retained message, no pending job. Deleting only from the front keeps
//!   the log a suffix of what was written, so an `Ack` can never outlive the
//!   `Enqueue` it cancels. The price is pinning: one long-retained message
//!   (a quiet topic keeps its last messages with no age bound) holds its
//!   segment and every newer one, until the log reaches `retain_total` and
//!   the oldest segment is released anyway. Set `retain_age_ms` to let quiet
//!   topics go sooner. Jobs are never dropped: when their segment is
//!   released, pending jobs are copied forward (an `Enqueue` with their
//!   current try count) and only then is the segment deleted; the queue
//!   service bounds how much may be pending (issue 11), which must stay well
//!   below `retain_total`.
//! - **Group commit**: appends only fill a buffer and return an [`Lsn`];
//!   [`Store::commit`], called once per event-loop turn, writes it all with
//!   one `write` (two when a segment fills), syncs as [`Fsync`] says, and
//!   returns exactly the `Lsn`s it confirmed. Confirm to clients only then.
//!   Under `always` a confirmed append has been `fdatasync`ed; under
//!   `interval` and `never` it has been written to the kernel (survives the
//!   process being killed, not a power cut: `interval` loses at most the
//!   confirmed appends of the last `interval` ms plus one `fdatasync`'s
//!   duration then, since a thread of the disk log syncs once per interval
//!   off the event loop; `never` what the OS had not flushed). Without a
//!   data directory everything is confirmed at once.
//! - **Recovery**: [`Store::open`] scans every segment, checks each
//!   record's CRC32C, truncates a torn or corrupt tail (and drops any later
//!   segment, so the log stays a prefix of what was written), and rebuilds
//!   topics and queues in memory; [`Store::recovery`] says what was cut.
//!
//! # Why bodies stay in memory with a data directory
//!
//! Retention already bounds what is kept, and the disk log exists for
//! durability, not capacity: so message bodies stay in memory and the log
//! is only written, and read once at open. A replay is then a walk over a
//! `VecDeque` (over 200 M messages/s below, 30 times the append rate)
//! where `pread` would add a system call and a copy per read batch, and a
//! page-cache miss per cold segment: slower than live delivery, which
//! issue 10 forbids.
//!
//! # Costs, measured
//!
//! `cargo run --release --example store_bench` (64-byte payloads, one
//! topic unless said; rates per CPU second of the process), 2026-12-02 at
//! 19:2x UTC on a quiet 2-core VM:
//!
//! - memory: 81 bytes per retained message of 64 B (the payload, a 16-byte
//!   entry and chunk slack; 89 with the 24-byte entries before); 388 bytes
//!   per topic holding one such message (so 100 000 topics cost about 40 MB);
//! - appends: 13.3 M/s in memory on one topic, 3.9–4.6 M/s over 1000
//!   topics (a topic lookup, and cache misses per topic; 9.3–9.8 and
//!   3.4–3.7 M/s with 24-byte entries, same machine and hour); 6.6 M/s with
//!   a data directory under `--fsync never` and 6.4 M/s under `interval` (a
//!   commit every 1000 appends); under `always`, one `fdatasync` per commit;
//! - reading 1 M retained messages in batches of 1000: 153 M/s;
//! - reopening a log of 1.1 M records (scan, CRC, rebuild): 5.9 M/s.

mod disk;
mod queue;
pub mod record;
mod topic;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::io;
use std::ops::Range;
use std::path::Path;

use bytes::Bytes;
use foldhash::{HashMap, HashMapExt};
use hashbrown::HashTable;

use disk::{Disk, SEGMENT_HEADER};
use queue::{Job, Queue};
use record::Record;
use topic::{Entry, Topic};

/// When appends are synced to disk (`--fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// `fdatasync` in every commit that wrote something; confirms wait for it.
    Always,
    /// `fdatasync` every `ms` milliseconds on a thread of its own; confirms
    /// after `write`.
    Interval { ms: u64 },
    /// Never sync; the OS flushes when it likes. Confirms after `write`.
    Never,
}

/// Retention and log settings. Byte sizes are payload bytes, except
/// `retain_total` and `segment_bytes`, which count log bytes (records with
/// their headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub retain_messages: u64,
    pub retain_bytes: u64,
    /// Messages older than this go at the next [`Store::expire`]; `None`:
    /// no age bound.
    pub retain_age_ms: Option<u64>,
    pub retain_total: u64,
    pub segment_bytes: u64,
    pub fsync: Fsync,
    /// Most topics kept that nobody subscribes to (see "Topics are
    /// forgotten" above).
    pub max_topics: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            retain_messages: 100_000,
            retain_bytes: 64 << 20,
            retain_age_ms: None,
            retain_total: 512 << 20,
            segment_bytes: 32 << 20,
            fsync: Fsync::Interval { ms: 1000 },
            max_topics: 1 << 20,
        }
    }
}

/// A topic of the store: an index, so that a caller can keep per-topic state
/// of its own in a `Vec` and look a topic up by name once per message (see
/// [`Store::topic_id`]). Valid while the topic is held, and until the next
/// commit otherwise: the id of a topic forgotten is given to a new one only
/// after the next [`Store::commit`].
pub type TopicId = u32;

/// Buckets of numbering floors (see "Topics are forgotten"). Part of the log
/// format: a `Floor` record names its bucket.
pub const FLOOR_BUCKETS: usize = 4096;

/// The floor bucket of a topic name: CRC32C, the same in every process.
fn bucket(name: &[u8]) -> usize {
    crc32c::crc32c(name) as usize % FLOOR_BUCKETS
}

/// The highest number a forgotten topic of a bucket had, and the segment of
/// the `Floor` record that says so.
#[derive(Clone, Copy, Default)]
struct Floor {
    last: u64,
    seg: u64,
}

/// A position in the stream of appends, for confirms: the n-th append
/// (message, enqueue, ack, …) since the store was opened gets `Lsn` n.
pub type Lsn = u64;

/// Numbers a reader asked for that are no longer retained, `first ..= last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub first: u64,
    pub last: u64,
}

/// What a topic retains. `first` is `last + 1` when it retains nothing;
/// an unknown topic has `first` 1 and `last` 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicInfo {
    pub first: u64,
    pub last: u64,
    pub messages: u64,
    pub bytes: u64,
}

/// One retained message, borrowed from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msg<'a> {
    pub seq: u64,
    pub time_ms: u64,
    pub body: &'a [u8],
}

/// The answer to [`Store::read`]: the gap, if any, then the messages.
pub struct Read<'a> {
    pub gap: Option<Gap>,
    /// The position after the last message returned: where to read next.
    pub next: u64,
    seq: u64,
    topic: Option<&'a Topic>,
    entries: std::collections::vec_deque::Iter<'a, Entry>,
}

impl<'a> Iterator for Read<'a> {
    type Item = Msg<'a>;
    fn next(&mut self) -> Option<Msg<'a>> {
        let e = self.entries.next()?;
        self.seq += 1;
        let body = self.topic.expect("entries come from a topic").body(e);
        Some(Msg { seq: self.seq - 1, time_ms: e.time_ms(), body })
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.entries.size_hint()
    }
}

impl ExactSizeIterator for Read<'_> {}

/// What an append was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The message's number in its topic, or the job's id in its queue.
    pub seq: u64,
    pub lsn: Lsn,
}

/// A pending job, borrowed from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobRef<'a> {
    pub id: u64,
    /// How many times it was tried, as last told to [`Store::set_tries`].
    pub tries: u32,
    pub time_ms: u64,
    pub payload: &'a Bytes,
}

/// What a queue holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueInfo {
    pub jobs: u64,
    pub bytes: u64,
    /// The id the next job will get.
    pub next_id: u64,
}

/// What [`Store::open`] found and cut.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub segments: u64,
    pub records: u64,
    /// Bytes cut from the end of the log: a torn or corrupt tail, and the
    /// segments after it.
    pub cut_bytes: u64,
    /// Why, when something was cut.
    pub cut_reason: Option<String>,
}

/// Totals, for `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub topics: u64,
    pub messages: u64,
    /// Payload bytes of the retained messages.
    pub bytes: u64,
    pub queues: u64,
    pub jobs: u64,
    pub job_bytes: u64,
    /// Bytes of all segments (on disk, with a data directory).
    pub log_bytes: u64,
    pub segments: u64,
    /// Messages dropped before their topic's own bounds said so, because
    /// the log reached `retain_total` or there were more than `max_topics`
    /// unsubscribed topics.
    pub evicted: u64,
    /// Topics forgotten (see "Topics are forgotten").
    pub forgotten: u64,
}

/// One segment's bookkeeping.
struct Segment {
    id: u64,
    bytes: u64,
    /// Records in it still needed: retained messages and pending jobs.
    live: u64,
    min_time: u64,
    max_time: u64,
    /// Topics with a message or mark in it, each once.
    topics: Vec<TopicId>,
}

impl Segment {
    fn new(id: u64) -> Segment {
        let bytes = SEGMENT_HEADER.len() as u64;
        Segment { id, bytes, live: 0, min_time: u64::MAX, max_time: 0, topics: Vec::new() }
    }
}

/// The store. See the module documentation.
pub struct Store {
    config: Config,
    epoch: u64,
    /// Topic and queue names are client input: foldhash is seeded at random
    /// per process (no collisions to be precomputed) and several times
    /// faster than SipHash on short names; one lookup per message.
    /// Topic ids by name: the table holds only ids and compares names in
    /// `topics`, so a lookup touches 4 bytes of table and the topic it
    /// needs anyway, not a key allocation of its own (1000 topics
    /// published in turn miss the cache on every message otherwise).
    topic_ids: HashTable<TopicId>,
    hasher: foldhash::fast::RandomState,
    topics: Vec<Topic>,
    /// Ids of forgotten topics, to be given to new ones; and those forgotten
    /// since the last commit, not given out before it.
    free_ids: Vec<TopicId>,
    freed: Vec<TopicId>,
    /// Topics held (subscribed).
    held: usize,
    floors: Box<[Floor]>,
    queue_ids: HashMap<Box<[u8]>, u32>,
    queues: Vec<Queue>,
    /// Oldest first; ids consecutive; the last is the one appended to.
    segs: VecDeque<Segment>,
    log_bytes: u64,
    disk: Option<Disk>,
    appended: Lsn,
    confirmed: Lsn,
    stats: Stats,
    recovery: Recovery,
}

fn random_epoch() -> u64 {
    getrandom::u64().expect("the OS random source works")
}

impl Store {
    /// A store without a data directory, with a fresh random epoch.
    pub fn in_memory(config: Config) -> Store {
        let mut store = Store::empty(config, random_epoch(), None);
        store.segs.push_back(Segment::new(1));
        store.log_bytes = SEGMENT_HEADER.len() as u64;
        store
    }

    fn empty(config: Config, epoch: u64, disk: Option<Disk>) -> Store {
        Store {
            config,
            epoch,
            topic_ids: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            topics: Vec::new(),
            free_ids: Vec::new(),
            freed: Vec::new(),
            held: 0,
            floors: vec![Floor::default(); FLOOR_BUCKETS].into(),
            queue_ids: HashMap::new(),
            queues: Vec::new(),
            segs: VecDeque::new(),
            log_bytes: 0,
            disk,
            appended: 0,
            confirmed: 0,
            stats: Stats::default(),
            recovery: Recovery::default(),
        }
    }

    /// Opens (creating if need be) the store in data directory `dir`:
    /// locks it, reads its epoch, scans its log and rebuilds topics and
    /// queues.
    pub fn open(dir: &Path, config: Config) -> io::Result<Store> {
        let opened = Disk::open(dir, config.fsync)?;
        let ids = opened.segments;
        let mut store = Store::empty(config, opened.epoch, Some(opened.disk));
        let mut cut: Option<(u64, u64, String)> = None; // segment, length kept, why
        for (i, &id) in ids.iter().enumerate() {
            if i > 0 && id != ids[i - 1] + 1 {
                cut = Some((
                    ids[i - 1],
                    store.segs.back().map_or(0, |s| s.bytes),
                    format!("segment {id} follows segment {} with a gap", ids[i - 1]),
                ));
                break;
            }
            let file = store.disk.as_ref().expect("opened").load(id)?;
            store.recovery.segments += 1;
            if !file.starts_with(SEGMENT_HEADER) {
                cut = Some((id, 0, format!("segment {id} has no valid header")));
                store.recovery.cut_bytes += file.len() as u64;
                break;
            }
            store.segs.push_back(Segment::new(id));
            let mut off = SEGMENT_HEADER.len();
            while off < file.len() {
                match Record::decode(&file[off..]) {
                    Ok((rec, len)) => {
                        store.apply(&rec, id);
                        store.note_logged(&rec, len as u64);
                        store.recovery.records += 1;
                        off += len;
                    }
                    Err(bad) => {
                        let why = format!("segment {id} has a {bad:?} record at byte {off}");
                        store.recovery.cut_bytes += (file.len() - off) as u64;
                        cut = Some((id, off as u64, why));
                        break;
                    }
                }
            }
            if cut.is_some() {
                break;
            }
        }
        let disk = store.disk.as_mut().expect("opened");
        if let Some((id, keep, why)) = cut {
            let later: Vec<u64> = ids.iter().copied().filter(|&l| l > id).collect();
            for &l in &later {
                store.recovery.cut_bytes += std::fs::metadata(dir.join(format!("{l:020}.log")))?.len();
            }
            log::warn!(
                "data directory {}: {why}; cut the log there ({} bytes)",
                dir.display(),
                store.recovery.cut_bytes
            );
            disk.cut(id, keep, &later)?;
            store.recovery.cut_reason = Some(why);
        }
        match store.segs.back() {
            Some(head) => disk.resume(head.id)?,
            None => {
                let id = ids.first().copied().unwrap_or(1);
                disk.roll(id);
                store.segs.push_back(Segment::new(id));
            }
        }
        store.log_bytes = store.segs.iter().map(|s| s.bytes).sum();
        store.collect();
        store.enforce_bounds();
        Ok(store)
    }

    /// The store's epoch: random when its data directory (or, without one,
    /// the store) was created, the same for as long as the directory lives.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// What the scan at open found and cut.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn stats(&self) -> Stats {
        Stats {
            topics: self.topic_ids.len() as u64,
            queues: self.queues.len() as u64,
            log_bytes: self.log_bytes,
            segments: self.segs.len() as u64,
            ..self.stats
        }
    }

    // ---- topics ----

    /// The topic named `name`, created if new: empty, numbering from above
    /// its bucket's floor (from 1 unless topics were forgotten).
    pub fn topic_id(&mut self, name: &[u8]) -> TopicId {
        if let Some(t) = self.find_topic(name) {
            return t;
        }
        let t = self.new_topic(name);
        self.topics[t as usize].first = self.floors[bucket(name)].last + 1;
        t
    }

    /// The topic named `name` as records name it, created numbering from 1:
    /// a record carries its own number.
    fn record_topic(&mut self, name: &[u8]) -> TopicId {
        match self.find_topic(name) {
            Some(t) => t,
            None => self.new_topic(name),
        }
    }

    fn new_topic(&mut self, name: &[u8]) -> TopicId {
        let t = match self.free_ids.pop() {
            Some(t) => {
                self.topics[t as usize] = Topic::new(name);
                t
            }
            None => {
                self.topics.push(Topic::new(name));
                TopicId::try_from(self.topics.len() - 1).expect("fewer than 4 billion topics")
            }
        };
        let (topics, hasher) = (&self.topics, &self.hasher);
        let rehash = |&t: &TopicId| hasher.hash_one(&*topics[t as usize].name);
        self.topic_ids.insert_unique(self.hasher.hash_one(name), t, rehash);
        t
    }

    /// Marks topic `t` subscribed: it is not forgotten until [`Store::release`].
    pub fn hold(&mut self, t: TopicId) {
        let topic = &mut self.topics[t as usize];
        if !topic.held {
            topic.held = true;
            self.held += 1;
        }
    }

    /// Marks topic `t` no longer subscribed. One that never had a record is
    /// forgotten at once (no segment would ever forget it); its id stays
    /// valid until the next commit.
    pub fn release(&mut self, t: TopicId) {
        let topic = &mut self.topics[t as usize];
        if topic.held {
            topic.held = false;
            self.held -= 1;
            if topic.listed_seg.is_none() {
                self.forget(t);
            }
        }
    }

    /// Forgets topic `t`, which retains nothing: raises its bucket's floor
    /// to its last number, logged.
    fn forget(&mut self, t: TopicId) {
        debug_assert!(self.topics[t as usize].entries.is_empty() && !self.topics[t as usize].held);
        let topic = std::mem::replace(&mut self.topics[t as usize], Topic::new(b""));
        if let Ok(entry) = self.topic_ids.find_entry(self.hasher.hash_one(&*topic.name), |&x| x == t) {
            entry.remove();
        }
        self.freed.push(t);
        self.stats.forgotten += 1;
        let b = bucket(&topic.name);
        if topic.last() > self.floors[b].last {
            self.log_applied(&Record::Floor { bucket: b as u32, last: topic.last() });
        }
    }

    /// Whether more topics than `max_topics` are unsubscribed.
    fn too_many_topics(&self) -> bool {
        (self.topic_ids.len() - self.held) as u64 > self.config.max_topics
    }

    /// The topic named `name`, if the store knows it.
    pub fn find_topic(&self, name: &[u8]) -> Option<TopicId> {
        let is = |&t: &TopicId| *self.topics[t as usize].name == *name;
        self.topic_ids.find(self.hasher.hash_one(name), is).copied()
    }

    pub fn topic_name(&self, t: TopicId) -> &[u8] {
        &self.topics[t as usize].name
    }

    /// Appends a message to topic `t`; returns its number.
    pub fn append(&mut self, t: TopicId, payload: &[u8], now_ms: u64) -> Appended {
        let seq = self.topics[t as usize].last() + 1;
        // The record borrows the name while `log` borrows the store: lend it
        // (taking it leaves an empty inline one: no allocation either way).
        let name = std::mem::take(&mut self.topics[t as usize].name);
        let seg = self.log(&Record::Message { topic: &name, seq, time_ms: now_ms, payload });
        self.topics[t as usize].name = name;
        self.apply_message(t, seq, now_ms, payload, seg);
        Appended { seq, ..self.after_append() }
    }

    /// Whether another process has the data directory `dir` open (its lock
    /// is held): for a command line to refuse at once what `open` would.
    pub fn in_use(dir: &Path) -> bool {
        let Ok(file) = std::fs::OpenOptions::new().write(true).open(dir.join("lock")) else { return false };
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_err()
    }

    /// Moves the numbering of `topic` up so that its next message gets
    /// `next`, if it retains nothing and would number lower: a reader's
    /// position from before a restart without the data directory, so that no
    /// number it has seen is given to another message. `None`: nothing to do.
    pub fn advance(&mut self, topic: &[u8], next: u64) -> Option<Lsn> {
        let t = self.topic_id(topic);
        let current = &self.topics[t as usize];
        if !current.entries.is_empty() || next <= current.last() + 1 {
            return None;
        }
        self.append_record(&Record::TopicMark { topic, last: next - 1 })
    }

    /// The retained messages of `topic` numbered `from` or later, at most
    /// `max_msgs` of them and, past the first, at most `max_bytes` of
    /// payload; and the gap if `from` is older than the oldest retained.
    /// A position past the newest message reads nothing (and no gap).
    pub fn read(&self, topic: &[u8], from: u64, max_msgs: usize, max_bytes: usize) -> Read<'_> {
        let from = from.max(1);
        let Some(t) = self.topic(topic) else {
            // Perhaps a topic forgotten: numbers up to the floor are gone.
            let floor = self.floors[bucket(topic)].last;
            let gap = (from <= floor).then_some(Gap { first: from, last: floor });
            return Read { gap, next: from.max(floor + 1), seq: 0, topic: None, entries: Default::default() };
        };
        let gap = (from < t.first).then(|| Gap { first: from, last: t.first - 1 });
        let start = t.index(from);
        let mut end = start;
        let mut bytes = 0;
        for e in t.entries.range(start..) {
            let len = t.body(e).len();
            if end - start == max_msgs || (end > start && bytes + len > max_bytes) {
                break;
            }
            bytes += len;
            end += 1;
        }
        let seq = t.first + start as u64;
        Read { gap, next: seq + (end - start) as u64, seq, topic: Some(t), entries: t.entries.range(start..end) }
    }

    /// The last `n` retained messages of `topic`, oldest first.
    pub fn history(&self, topic: &[u8], n: usize) -> Read<'_> {
        let info = self.info(topic);
        let from = info.last.saturating_sub(n as u64) + 1;
        self.read(topic, from.max(info.first), n, usize::MAX)
    }

    pub fn info(&self, topic: &[u8]) -> TopicInfo {
        match self.topic(topic) {
            Some(t) => TopicInfo { first: t.first, last: t.last(), messages: t.entries.len() as u64, bytes: t.bytes },
            None => {
                let floor = self.floors[bucket(topic)].last;
                TopicInfo { first: floor + 1, last: floor, messages: 0, bytes: 0 }
            }
        }
    }

    /// Drops the messages older than `retain_age_ms`. Cheap when there are
    /// none: only topics listed in segments that old are looked at.
    pub fn expire(&mut self, now_ms: u64) {
        let Some(age) = self.config.retain_age_ms else {
            return;
        };
        let cutoff = now_ms.saturating_sub(age);
        for i in 0..self.segs.len() {
            if self.segs[i].min_time > cutoff {
                break;
            }
            for j in 0..self.segs[i].topics.len() {
                let t = self.segs[i].topics[j];
                while self.topics[t as usize].entries.front().is_some_and(|e| e.time_ms() <= cutoff) {
                    self.drop_oldest(t);
                }
            }
        }
        self.collect();
    }

    fn topic(&self, name: &[u8]) -> Option<&Topic> {
        self.find_topic(name).map(|t| &self.topics[t as usize])
    }

    fn apply_message(&mut self, t: TopicId, seq: u64, time_ms: u64, payload: &[u8], seg: u64) {
        let topic = &mut self.topics[t as usize];
        if seq <= topic.last() {
            return; // only a damaged log could repeat a number: keep the first
        }
        if seq != topic.last() + 1 {
            // A name forgotten and numbering on above its floor, or numbers
            // missing in the log (only after damage): what is retained must
            // be consecutive, so start again at `seq`.
            while self.topics[t as usize].entries.front().is_some() {
                self.drop_oldest(t);
            }
            self.topics[t as usize].first = seq;
        }
        self.topics[t as usize].push(payload, time_ms, seg);
        self.seg_mut(seg).live += 1;
        self.list_topic(t, seg);
        self.stats.messages += 1;
        self.stats.bytes += payload.len() as u64;
        let (max_msgs, max_bytes) = (self.config.retain_messages, self.config.retain_bytes);
        loop {
            let topic = &self.topics[t as usize];
            let n = topic.entries.len() as u64;
            if n <= 1 || (n <= max_msgs && topic.bytes <= max_bytes) {
                break;
            }
            self.drop_oldest(t);
        }
    }

    fn apply_mark(&mut self, t: TopicId, last: u64, seg: u64) {
        let topic = &mut self.topics[t as usize];
        if topic.entries.is_empty() && last >= topic.last() {
            topic.first = last + 1;
            topic.last_seg = seg;
            self.list_topic(t, seg);
        }
    }

    fn drop_oldest(&mut self, t: TopicId) {
        let topic = &mut self.topics[t as usize];
        let bytes = topic.bytes;
        if let Some(seg) = topic.pop() {
            let len = bytes - self.topics[t as usize].bytes;
            let seg = self.segment_id(seg);
            self.seg_mut(seg).live -= 1;
            self.stats.messages -= 1;
            self.stats.bytes -= len;
        }
    }

    fn list_topic(&mut self, t: TopicId, seg: u64) {
        if self.topics[t as usize].listed_seg != Some(seg) {
            self.topics[t as usize].listed_seg = Some(seg);
            self.seg_mut(seg).topics.push(t);
        }
    }

    // ---- queues ----

    /// Adds a job to `queue` (created on first use); returns its id.
    pub fn enqueue(&mut self, queue: &[u8], payload: &[u8], now_ms: u64) -> Appended {
        let q = self.queue_id(queue);
        let id = self.next_job_id(&self.queues[q]);
        self.log_applied(&Record::Enqueue { queue, id, tries: 0, time_ms: now_ms, payload });
        Appended { seq: id, ..self.after_append() }
    }

    /// The job is done: forgets it. `None` (and nothing logged) when the
    /// queue has no such pending job.
    pub fn ack(&mut self, queue: &[u8], id: u64) -> Option<Lsn> {
        self.job(queue, id)?;
        self.append_record(&Record::Ack { queue, id })
    }

    /// Records that the job has now been tried `tries` times (log it when a
    /// delivery or a nack must count after a crash).
    pub fn set_tries(&mut self, queue: &[u8], id: u64, tries: u32) -> Option<Lsn> {
        self.job(queue, id)?;
        self.append_record(&Record::Tries { queue, id, tries })
    }

    /// Moves the job to queue `to` (a dead-letter move) as a new job with
    /// tries 0, atomically; returns its new id there.
    pub fn move_job(&mut self, queue: &[u8], id: u64, to: &[u8], now_ms: u64) -> Option<Appended> {
        let payload = self.job(queue, id)?.payload.clone();
        let t = self.queue_id(to);
        let new_id = self.next_job_id(&self.queues[t]);
        let rec = Record::Move { queue, id, to, new_id, time_ms: now_ms, payload: &payload };
        Some(Appended { seq: new_id, lsn: self.append_record(&rec)? })
    }

    /// A pending job.
    pub fn job(&self, queue: &[u8], id: u64) -> Option<JobRef<'_>> {
        let q = &self.queues[*self.queue_ids.get(queue)? as usize];
        q.jobs.get(&id).map(|j| JobRef { id, tries: j.tries, time_ms: j.time_ms, payload: &j.payload })
    }

    /// The pending jobs of `queue` in id order: what the queue service
    /// rebuilds its ready list from at start.
    pub fn jobs(&self, queue: &[u8]) -> impl Iterator<Item = JobRef<'_>> {
        let q = self.queue_ids.get(queue).map(|&q| &self.queues[q as usize]);
        q.into_iter().flat_map(|q| q.jobs.iter()).map(|(&id, j)| JobRef {
            id,
            tries: j.tries,
            time_ms: j.time_ms,
            payload: &j.payload,
        })
    }

    /// Every queue the log knows, with what it holds.
    pub fn queues(&self) -> impl Iterator<Item = (&[u8], QueueInfo)> {
        self.queues.iter().map(|q| {
            let info = QueueInfo { jobs: q.jobs.len() as u64, bytes: q.bytes, next_id: self.next_job_id(q) };
            (&*q.name, info)
        })
    }

    fn queue_id(&mut self, name: &[u8]) -> usize {
        if let Some(&q) = self.queue_ids.get(name) {
            return q as usize;
        }
        let q = u32::try_from(self.queues.len()).expect("fewer than 4 billion queues");
        self.queues.push(Queue::new(name, bucket(name)));
        self.queue_ids.insert(name.into(), q);
        q as usize
    }

    /// The id the next job of `queue` gets: above every id its records
    /// name and above its bucket's floor (see "Queues are forgotten").
    fn next_job_id(&self, queue: &Queue) -> u64 {
        queue.next_id.max(self.floors[queue.bucket].last + 1)
    }

    /// Forgets queue `q`, which holds no job: raises its bucket's floor to
    /// its highest id, logged. The last queue takes its index.
    fn forget_queue(&mut self, q: usize) {
        debug_assert!(self.queues[q].jobs.is_empty());
        let queue = self.queues.swap_remove(q);
        self.queue_ids.remove(&queue.name);
        if let Some(moved) = self.queues.get(q) {
            *self.queue_ids.get_mut(&moved.name).expect("every queue has an id") = q as u32;
        }
        let last = queue.next_id - 1;
        if last > self.floors[queue.bucket].last {
            self.log_applied(&Record::Floor { bucket: queue.bucket as u32, last });
        }
    }

    fn insert_job(&mut self, q: usize, id: u64, job: Job) {
        let (seg, len) = (job.seg, job.payload.len() as u64);
        self.queues[q].saw_id(id, seg);
        match self.queues[q].insert(id, job) {
            Some(old) => self.seg_mut(old).live -= 1, // a copy carried forward
            None => {
                self.stats.jobs += 1;
                self.stats.job_bytes += len;
            }
        }
        self.seg_mut(seg).live += 1;
    }

    fn remove_job(&mut self, q: usize, id: u64) -> Option<Job> {
        let job = self.queues[q].remove(id)?;
        self.seg_mut(job.seg).live -= 1;
        self.stats.jobs -= 1;
        self.stats.job_bytes -= job.payload.len() as u64;
        Some(job)
    }

    // ---- the log ----

    /// Applies a record logged (or found at open) in segment `seg` to the
    /// state in memory.
    fn apply(&mut self, rec: &Record, seg: u64) {
        match *rec {
            Record::Message { topic, seq, time_ms, payload } => {
                let t = self.record_topic(topic);
                self.apply_message(t, seq, time_ms, payload, seg);
            }
            Record::TopicMark { topic, last } => {
                let t = self.record_topic(topic);
                self.apply_mark(t, last, seg);
            }
            Record::Floor { bucket, last } => {
                if let Some(f) = self.floors.get_mut(bucket as usize).filter(|f| last >= f.last) {
                    *f = Floor { last, seg };
                }
            }
            Record::Enqueue { queue, id, tries, time_ms, payload } => {
                let q = self.queue_id(queue);
                let payload = match self.queues[q].jobs.get(&id) {
                    Some(old) => old.payload.clone(), // a copy carried forward
                    None => Bytes::copy_from_slice(payload),
                };
                self.insert_job(q, id, Job { payload, tries, time_ms, seg });
            }
            Record::Ack { queue, id } => {
                let q = self.queue_id(queue);
                self.remove_job(q, id);
                self.queues[q].saw_id(id, seg);
            }
            Record::Tries { queue, id, tries } => {
                let q = self.queue_id(queue);
                if let Some(job) = self.queues[q].jobs.get_mut(&id) {
                    job.tries = tries;
                }
                self.queues[q].saw_id(id, seg);
            }
            Record::Move { queue, id, to, new_id, time_ms, payload } => {
                let q = self.queue_id(queue);
                let payload = match self.remove_job(q, id) {
                    Some(job) => job.payload,
                    None => Bytes::copy_from_slice(payload),
                };
                self.queues[q].saw_id(id, seg);
                let t = self.queue_id(to);
                self.insert_job(t, new_id, Job { payload, tries: 0, time_ms, seg });
            }
            Record::QueueMark { queue, last } => {
                let q = self.queue_id(queue);
                self.queues[q].saw_id(last, seg);
            }
        }
    }

    /// Logs and applies a record that is an append of its own.
    fn append_record(&mut self, rec: &Record) -> Option<Lsn> {
        self.log_applied(rec);
        Some(self.after_append().lsn)
    }

    /// Logs and applies a record that no client waits for (marks, floors,
    /// jobs carried forward): it is written with the next commit.
    fn log_applied(&mut self, rec: &Record) {
        let seg = self.log(rec);
        self.apply(rec, seg);
    }

    fn after_append(&mut self) -> Appended {
        self.appended += 1;
        if self.segs.front().is_some_and(|s| s.live == 0)
            || self.log_bytes > self.config.retain_total
            || self.too_many_topics()
        {
            self.collect();
            self.enforce_bounds();
        }
        Appended { seq: 0, lsn: self.appended }
    }

    /// Adds a record to the head segment (a new one if it is full) and to
    /// the disk buffer; returns the segment.
    fn log(&mut self, rec: &Record) -> u64 {
        let len = rec.encoded_len() as u64;
        let head = self.segs.back().expect("a head segment");
        // A segment names at most half of `max_topics` topics, so that
        // releasing the oldest for that bound forgets the least recently
        // published topics, not all of them.
        if head.bytes + len > self.config.segment_bytes || head.topics.len() as u64 > self.config.max_topics / 2 {
            self.roll();
        }
        if let Some(disk) = &mut self.disk {
            rec.encode(disk.buf());
        }
        self.log_bytes += len;
        self.note_logged(rec, len);
        self.segs.back().expect("a head segment").id
    }

    /// Starts a new head segment, unless the head is empty.
    fn roll(&mut self) {
        let head = self.segs.back().expect("a head segment");
        if head.bytes > SEGMENT_HEADER.len() as u64 {
            let id = head.id + 1;
            self.segs.push_back(Segment::new(id));
            self.log_bytes += SEGMENT_HEADER.len() as u64;
            if let Some(disk) = &mut self.disk {
                disk.roll(id);
            }
        }
    }

    /// Counts a record of `len` bytes into the head segment.
    fn note_logged(&mut self, rec: &Record, len: u64) {
        let head = self.segs.back_mut().expect("a head segment");
        head.bytes += len;
        if let Record::Message { time_ms, .. } | Record::Enqueue { time_ms, .. } | Record::Move { time_ms, .. } = *rec {
            head.min_time = head.min_time.min(time_ms);
            head.max_time = head.max_time.max(time_ms);
        }
    }

    /// A live segment's id from its low 32 bits (as entries keep it).
    fn segment_id(&self, low: u32) -> u64 {
        let base = self.segs.front().expect("a segment").id;
        base + u64::from(low.wrapping_sub(base as u32))
    }

    fn seg_mut(&mut self, id: u64) -> &mut Segment {
        let base = self.segs.front().expect("a segment").id;
        &mut self.segs[(id - base) as usize]
    }

    /// Deletes the oldest segments while nothing in them is needed.
    fn collect(&mut self) {
        while self.segs.len() > 1 && self.segs[0].live == 0 {
            self.delete_oldest();
        }
    }

    /// Releases the oldest segments while the log is over `retain_total` or
    /// too many topics are unsubscribed: drops the messages still retained
    /// in them, so that the topics whose last record they hold are
    /// forgotten. Each segment at most once per call, so jobs carried
    /// forward cannot make it loop.
    fn enforce_bounds(&mut self) {
        let mut budget = self.segs.len().saturating_sub(1);
        while (self.log_bytes > self.config.retain_total || self.too_many_topics()) && budget > 0 {
            budget -= 1;
            let id = self.segs[0].id;
            for i in 0..self.segs[0].topics.len() {
                let t = self.segs[0].topics[i];
                while self.topics[t as usize].entries.front().is_some_and(|e| e.seg == id as u32) {
                    self.drop_oldest(t);
                    self.stats.evicted += 1;
                }
            }
            self.delete_oldest();
        }
        self.collect();
    }

    /// Deletes the oldest segment after carrying forward what only it
    /// holds: pending jobs, and the latest numbers of subscribed topics, of
    /// queues and of floors. Topics whose last record it holds and that are
    /// not subscribed are forgotten, and so are queues holding no job.
    fn delete_oldest(&mut self) {
        let id = self.segs[0].id;
        for t in std::mem::take(&mut self.segs[0].topics) {
            let topic = &self.topics[t as usize];
            if topic.entries.is_empty() && topic.last_seg == id {
                if !topic.held {
                    self.forget(t);
                    continue;
                }
                let (name, last) = (topic.name.clone(), topic.last());
                self.log_applied(&Record::TopicMark { topic: &name, last });
            }
        }
        for b in 0..FLOOR_BUCKETS {
            if self.floors[b].seg == id {
                self.log_applied(&Record::Floor { bucket: b as u32, last: self.floors[b].last });
            }
        }
        let mut forgotten = Vec::new();
        for q in 0..self.queues.len() {
            let carried: Vec<(u64, u32)> =
                self.queues[q].jobs.iter().filter(|(_, j)| j.seg == id).map(|(&id, j)| (id, j.tries)).collect();
            for (job_id, tries) in carried {
                let name = self.queues[q].name.clone();
                let job = &self.queues[q].jobs[&job_id];
                let payload = job.payload.clone();
                self.log_applied(&Record::Enqueue {
                    queue: &name,
                    id: job_id,
                    tries,
                    time_ms: job.time_ms,
                    payload: &payload,
                });
            }
            if self.queues[q].last_seg == id {
                if self.queues[q].jobs.is_empty() {
                    forgotten.push(q);
                    continue;
                }
                let name = self.queues[q].name.clone();
                self.log_applied(&Record::QueueMark { queue: &name, last: self.queues[q].next_id - 1 });
            }
        }
        // Highest index first: the queue that takes a forgotten one's index
        // is then never one still to forget.
        for q in forgotten.into_iter().rev() {
            self.forget_queue(q);
        }
        debug_assert_eq!(self.segs[0].live, 0);
        let seg = self.segs.pop_front().expect("not the only segment");
        self.log_bytes -= seg.bytes;
        if let Some(disk) = &mut self.disk {
            disk.delete(id);
        }
    }

    // ---- durability ----

    /// Whether appends wait for [`Store::commit`] to be confirmed: only with a
    /// data directory (without one, an append is confirmed as it is made).
    pub fn is_durable(&self) -> bool {
        self.disk.is_some()
    }

    /// Writes and syncs what was appended (see [`Fsync`]); returns the
    /// appends this call confirmed: every [`Lsn`] in the range, and only
    /// those. Call once per event-loop turn. After an error (under
    /// `interval` also one of the sync thread, reported by the next commit)
    /// the disk log stays stopped: exit and reopen.
    pub fn commit(&mut self) -> io::Result<Range<Lsn>> {
        if let Some(disk) = &mut self.disk {
            disk.commit()?;
        }
        let confirmed = self.confirmed + 1..self.appended + 1;
        self.confirmed = self.appended;
        self.free_ids.append(&mut self.freed);
        Ok(confirmed)
    }
}
