//! The channel server's service: one connection ("peer") per worker.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use foldhash::{HashSet, HashSetExt};
use log::{debug, error, info, warn};
use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use slab::Slab;

use super::queues::{Delivery, Queues};
use super::subscriptions::Subscriptions;
use crate::config::{ChannelConfig, FsyncPolicy, MAX_SECRET};
use crate::protocol::frame::{self, Frame, FrameReader, FETCH_BYTES, FETCH_MESSAGES, MAX_FRAME, VERSION};
use crate::protocol::topic;
use crate::runtime::control::{ConnInfo, Retained, WorkerStats};
use crate::runtime::event_loop::Service;
use crate::runtime::outbound::{Frames, Outbound};
use crate::store::{self, Lsn, Store, TopicId};

const READS_PER_EVENT: usize = 16;
/// SUB/UNSUB frames handled per link and turn: a storm of subscriptions from
/// one worker is taken in slices (about a millisecond each in a release
/// build), so that the other links' publishes are not held up behind it.
const SUBS_PER_TURN: usize = 4096;
/// A worker over its buffer limit that reads nothing for this long is cut
/// off, so that one hung worker cannot stop every publisher for good.
const STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a link closed for breaking the protocol may take to receive its
/// ERROR frame and finish sending (see `Peer::linger`).
const ERROR_LINGER: Duration = Duration::from_secs(2);
/// A connection that has not presented its hello (and the secret) by then is
/// closed: an unauthenticated peer costs a slot for this long at most.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections without a hello yet, at most; the oldest is closed to make
/// room for a new one. A real worker sends its hello as it connects, and the
/// hello is read as the connection is accepted, so it is never the oldest.
const MAX_HANDSHAKES: usize = 256;
/// The largest frame read before the hello: a hello with the longest secret.
/// With the read buffer sized to it, an unauthenticated connection holds
/// about 1.3 KB of user-space memory.
const MAX_HELLO_FRAME: usize = 2 + MAX_SECRET;
/// Connections closed before their hello are logged in one line per kind at
/// most this often.
const LOG_EVERY: Duration = Duration::from_secs(1);
/// How often messages past `--retain-age` are dropped.
const EXPIRE_EVERY: Duration = Duration::from_secs(1);
/// How often opening a data directory locked by another process is retried
/// (the worker being replaced by a reload holds it until it exits).
const LOCK_RETRY: Duration = Duration::from_millis(50);

pub(super) struct Peer {
    stream: TcpStream,
    addr: SocketAddr,
    pub(super) id: u64,
    reader: FrameReader,
    out: Outbound<Frames>,
    authed: bool,
    topics: HashSet<TopicId>,
    closing: bool,
    dirty: bool,
    bytes_in: u64,
    bytes_out: u64,
    /// Holding publishers up, with no write progress since then.
    stalled_since: Option<Instant>,
    /// Closed for breaking the protocol: the ERROR frame is written, then our
    /// side is shut down, and its input is read and thrown away until it
    /// closes too or this deadline passes. Closing a socket with input unread
    /// resets the connection, and the peer would lose the ERROR frame unread.
    linger: Option<Instant>,
    /// Our side is shut down after the ERROR frame.
    shut: bool,
    /// The peer has finished sending (while lingering).
    eof: bool,
}

/// Why a link is being closed.
#[derive(Debug)]
enum PeerError {
    /// The worker closed it.
    Closed,
    /// The worker broke the protocol: it is told why in an ERROR frame.
    Protocol(String),
    Io(io::Error),
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerError::Closed => write!(f, "closed"),
            PeerError::Protocol(why) => write!(f, "{why}"),
            PeerError::Io(e) => write!(f, "read failed: {e}"),
        }
    }
}

/// The links, and the work deferred to the end of the event batch.
pub(super) struct Peers {
    pub(super) slab: Slab<Peer>,
    /// Peers with output to write.
    dirty: Vec<usize>,
    /// A peer is over its buffer limit: publishers wait.
    congested: bool,
    max_buffer: usize,
}

impl Peers {
    /// Queues one frame for a peer, encoded straight into its queue.
    fn push_frame(&mut self, key: usize, frame: Frame<'_>) {
        let p = &mut self.slab[key];
        if p.closing {
            return;
        }
        p.out.push_frame(frame);
        self.queued(key);
    }

    /// Queues encoded frames for a peer.
    pub(super) fn push(&mut self, key: usize, frames: &[u8]) {
        let p = &mut self.slab[key];
        if p.closing {
            return;
        }
        p.out.push(&[frames]);
        self.queued(key);
    }

    /// After queueing for a peer: publishers wait while it is over its limit,
    /// and it is written at the end of the batch.
    fn queued(&mut self, key: usize) {
        let p = &mut self.slab[key];
        if p.out.queued() > self.max_buffer {
            self.congested = true;
        }
        if !p.dirty {
            p.dirty = true;
            self.dirty.push(key);
        }
    }
}

/// Connections that have not finished the handshake, oldest first.
#[derive(Default)]
struct Handshakes {
    /// (peer key, peer id, deadline); entries of peers since authenticated
    /// or closed are skipped as they come to the front.
    queue: VecDeque<(usize, u64, Instant)>,
    /// Peers not authenticated yet.
    count: usize,
    /// Closed since the last log line: for want of a hello in time, and to
    /// make room; the address of the last one.
    timed_out: u64,
    evicted: u64,
    last: Option<SocketAddr>,
    /// When those counts were last logged.
    logged: Option<Instant>,
}

/// A request answered from the store once this turn's appends are committed.
pub(super) enum Request {
    Fetch {
        req: u32,
        from: u64,
        limit: u32,
        topic: Box<[u8]>,
    },
    Info {
        req: u32,
        topic: Box<[u8]>,
    },
    /// Frames made already: the answers and jobs of the work queues (`jobs`).
    Ready(Vec<u8>),
}

/// This turn's publishes, numbered and appended to the store, forwarded and
/// confirmed only once `Store::commit` has returned their Lsns.
#[derive(Default)]
pub(super) struct Staged {
    /// Their MSG frames, one after another.
    frames: Vec<u8>,
    /// Per publish: where its frame ends in `frames`, its Lsn and topic.
    ends: Vec<(usize, Lsn, TopicId)>,
    /// Publishes that asked for a PUBACK: (peer key, peer id, index in `ends`).
    confirms: Vec<(usize, u64, usize)>,
    /// Requests that read the store: (peer key, peer id, request).
    pub(super) requests: Vec<(usize, u64, Request)>,
}

pub struct ChannelServer {
    secret: Option<Vec<u8>>,
    /// `None` until the data directory could be opened (see LOCK_RETRY).
    pub(super) store: Option<Store>,
    store_config: store::Config,
    data_dir: Option<std::path::PathBuf>,
    open_retry: Option<Instant>,
    pub(super) staged: Staged,
    pub(super) queues: Queues,
    /// The dispatcher's output, reused.
    pub(super) deliveries: Vec<Delivery>,
    next_expire: Instant,
    pub(super) peers: Peers,
    subscriptions: Subscriptions,
    /// Most topics at this server, and per worker link.
    max_topics: usize,
    max_topics_per_worker: usize,
    handshakes: Handshakes,
    /// Peers with input left unread: their turn ran out, or a receiver is over
    /// its buffer limit and publishers wait until it catches up.
    unread: Vec<usize>,
    to_close: Vec<usize>,
    next_id: u64,
    msgs_in: u64,
    msgs_out: u64,
    /// Messages discarded with the links of stalled workers.
    dropped: u64,
    stalled: u64,
    draining: bool,
}

impl ChannelServer {
    pub fn new(cfg: ChannelConfig, secret: Option<Vec<u8>>) -> ChannelServer {
        let store_config = store::Config {
            retain_messages: cfg.retain_messages,
            retain_bytes: cfg.retain_bytes,
            retain_age_ms: cfg.retain_age_s.map(|s| s.saturating_mul(1000)),
            retain_total: cfg.retain_total,
            max_topics: cfg.max_topics as u64,
            fsync: match cfg.fsync {
                FsyncPolicy::Always => store::Fsync::Always,
                FsyncPolicy::Interval => store::Fsync::Interval { ms: cfg.fsync_interval_ms },
                FsyncPolicy::Never => store::Fsync::Never,
            },
            ..store::Config::default()
        };
        let mut svc = ChannelServer {
            secret,
            store: None,
            store_config,
            data_dir: cfg.data_dir,
            open_retry: None,
            staged: Staged::default(),
            queues: Queues::new(cfg.queues),
            deliveries: Vec::new(),
            next_expire: Instant::now(),
            peers: Peers { slab: Slab::new(), dirty: Vec::new(), congested: false, max_buffer: cfg.max_link_buffer },
            subscriptions: Subscriptions::default(),
            max_topics: cfg.max_topics,
            max_topics_per_worker: cfg.max_topics_per_worker,
            handshakes: Handshakes::default(),
            unread: Vec::new(),
            to_close: Vec::new(),
            next_id: 1,
            msgs_in: 0,
            msgs_out: 0,
            dropped: 0,
            stalled: 0,
            draining: false,
        };
        svc.open_store();
        svc
    }

    /// Opens the store: in memory, or the data directory, waiting (and
    /// retrying) while another process holds its lock. Any other failure ends
    /// the process: the master restarts it and the log says why.
    fn open_store(&mut self) {
        let config = self.store_config.clone();
        let Some(dir) = &self.data_dir else {
            self.store = Some(Store::in_memory(config));
            return;
        };
        match Store::open(dir, config) {
            Ok(mut store) => {
                let r = store.recovery();
                info!(
                    "data directory {}: {} record(s) in {} segment(s), epoch {:016x}",
                    dir.display(),
                    r.records,
                    r.segments,
                    store.epoch()
                );
                store.expire(wall_ms());
                self.queues.load(&store);
                self.store = Some(store);
                self.open_retry = None;
                // Links that connected meanwhile have their frames waiting.
                self.unread.extend(self.peers.slab.iter().map(|(k, _)| k));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if self.open_retry.is_none() {
                    warn!("{e}; waiting for it (a reload's old worker releases it as it exits)");
                }
                self.open_retry = Some(Instant::now() + LOCK_RETRY);
            }
            Err(e) => {
                error!("{e}");
                std::process::exit(1);
            }
        }
    }

    fn read_peer(&mut self, key: usize) {
        let Some(p) = self.peers.slab.get_mut(key) else { return };
        if p.linger.is_some() {
            return self.discard(key);
        }
        let mut reader = std::mem::take(&mut p.reader);
        let (mut turns, mut subs) = (READS_PER_EVENT, SUBS_PER_TURN);
        let result = loop {
            if self.peers.slab[key].closing || self.draining {
                break Ok(());
            }
            // Frames already read first (a turn may end with some left), then
            // the socket; what is left waits for the next turn.
            let done = self.peers.congested
                || self.store.is_none()
                || match self.on_frames(key, &mut reader, &mut subs) {
                    Err(why) => break Err(PeerError::Protocol(why)),
                    Ok(sliced) => sliced || turns == 0 || self.peers.congested,
                };
            if done {
                if !self.unread.contains(&key) {
                    self.unread.push(key);
                }
                break Ok(());
            }
            turns -= 1;
            let p = &mut self.peers.slab[key];
            match reader.read_from(&mut p.stream) {
                Ok(0) => break Err(PeerError::Closed),
                Ok(n) => p.bytes_in += n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(PeerError::Io(e)),
            }
        };
        let p = &mut self.peers.slab[key];
        p.reader = reader;
        match result {
            Ok(()) => {}
            Err(PeerError::Closed) => self.to_close.push(key),
            Err(why) => {
                warn!("closing link from {}: {why}", p.addr);
                self.fail(key, &why.to_string());
            }
        }
    }

    /// Tells a peer that broke the protocol why, then closes its link cleanly:
    /// what was queued for it after the frame being written is dropped, the
    /// ERROR frame follows, and the link lingers (see `Peer::linger`).
    fn fail(&mut self, key: usize, why: &str) {
        let p = &mut self.peers.slab[key];
        self.dropped += p.out.discard_unsent();
        p.out.push_frame(Frame::Error(why.as_bytes()));
        p.closing = true;
        p.linger = Some(Instant::now() + ERROR_LINGER);
        if !p.dirty {
            p.dirty = true;
            self.peers.dirty.push(key);
        }
        // Input already in the socket will not be signalled again.
        self.discard(key);
    }

    /// Reads and throws away the input of a lingering peer.
    fn discard(&mut self, key: usize) {
        let Some(p) = self.peers.slab.get_mut(key) else { return };
        let mut buf = [0u8; 16 * 1024];
        for _ in 0..4 * READS_PER_EVENT {
            match p.stream.read(&mut buf) {
                Ok(0) => {
                    p.eof = true;
                    if p.shut {
                        self.to_close.push(key);
                    }
                    return;
                }
                Ok(n) => p.bytes_in += n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.to_close.push(key),
            }
        }
        if !self.unread.contains(&key) {
            self.unread.push(key); // more next turn
        }
    }

    /// Handles the whole frames in `reader`. Returns true if it stopped at
    /// the end of this turn's slice of SUB/UNSUB frames (`subs`), frames left.
    fn on_frames(&mut self, key: usize, reader: &mut FrameReader, subs: &mut usize) -> Result<bool, String> {
        // The time the store records with each message: once per read is
        // close enough for retention by age, and a clock read per message
        // was 3 % of the channel server's time with 1000 topics.
        let now_ms = wall_ms();
        loop {
            if *subs == 0 {
                return Ok(true);
            }
            let authed = self.peers.slab[key].authed;
            let next = reader.next_frame().map_err(|e| match authed {
                true => e.to_string(),
                false => format!("{e} before its hello"),
            });
            let Some(frame) = next? else { break };
            if !authed {
                match frame {
                    Frame::Hello { version, secret } => self.hello(key, version, secret)?,
                    _ => return Err("the first frame must be a hello".into()),
                }
                reader.set_limit(MAX_FRAME);
                continue;
            }
            match frame {
                Frame::Publish { confirm, topic, message } => {
                    self.msgs_in += 1;
                    let store = self.store.as_mut().expect("links are read once the store is open");
                    let t = store.topic_id(topic);
                    let a = store.append(t, message, now_ms);
                    if !store.is_durable() {
                        // Confirmed as it is appended: forwarded now, encoded
                        // straight into each link's queue, not copied through
                        // the stage (that copy, and a stage of up to a turn's
                        // megabytes, made a quarter of the channel server's
                        // cache misses with 1000 topics).
                        let targets = self.subscriptions.links(t);
                        self.msgs_out += targets.len() as u64;
                        for &target in targets {
                            self.peers.push_frame(target, Frame::Msg { seq: a.seq, topic, message });
                        }
                        if confirm {
                            self.peers.push_frame(key, Frame::PubAck { seq: a.seq, topic });
                        }
                        continue;
                    }
                    let st = &mut self.staged;
                    frame::put_msg(&mut st.frames, a.seq, topic, message);
                    if confirm {
                        st.confirms.push((key, self.peers.slab[key].id, st.ends.len()));
                    }
                    st.ends.push((st.frames.len(), a.lsn, t));
                }
                Frame::Fetch { req, from, limit, topic } => {
                    let r = Request::Fetch { req, from, limit, topic: topic.into() };
                    self.staged.requests.push((key, self.peers.slab[key].id, r));
                }
                Frame::Info { req, topic } => {
                    let r = Request::Info { req, topic: topic.into() };
                    self.staged.requests.push((key, self.peers.slab[key].id, r));
                }
                Frame::Sub { from, topic } => {
                    *subs -= 1;
                    topic::check(topic).map_err(|e| e.to_string())?;
                    match self.subscribe(key, topic) {
                        Ok(()) => {
                            let store = self.store.as_mut().expect("open");
                            // A position past anything numbered here comes from
                            // before a restart that forgot the topic: number on from it.
                            if from > 0 && from < MAX_CLAIM {
                                store.advance(topic, from);
                            }
                            let next = store.info(topic).last + 1;
                            self.peers.push_frame(key, Frame::SubAck { next, topic });
                        }
                        Err(why) => self.peers.push_frame(key, Frame::SubErr { topic, reason: why.as_bytes() }),
                    }
                }
                Frame::Unsub(topic) => {
                    *subs -= 1;
                    let t = self.store.as_ref().expect("open").find_topic(topic);
                    if let Some(t) = t.filter(|t| self.peers.slab[key].topics.remove(t)) {
                        self.unsubscribe(t, key);
                    }
                }
                Frame::Ping => self.peers.push_frame(key, Frame::Pong),
                Frame::Enqueue { .. }
                | Frame::Consume { .. }
                | Frame::Unconsume { .. }
                | Frame::Settle { .. }
                | Frame::ListQueues { .. } => self.on_queue_frame(key, frame),
                other => return Err(format!("unexpected frame {other:?}")),
            }
        }
        Ok(false)
    }

    /// Adds a subscription unless it would cross a limit: only this SUB is
    /// refused, and the worker tells the client that asked.
    fn subscribe(&mut self, key: usize, topic: &[u8]) -> Result<(), String> {
        let store = self.store.as_mut().expect("links are read once the store is open");
        let known = store.find_topic(topic);
        let p = &mut self.peers.slab[key];
        if known.is_some_and(|t| p.topics.contains(&t)) {
            return Ok(()); // SUB is idempotent
        }
        if p.topics.len() >= self.max_topics_per_worker {
            return Err(format!("too many topics on this worker (max {} per worker)", self.max_topics_per_worker));
        }
        let active = known.is_some_and(|t| !self.subscriptions.links(t).is_empty());
        if !active && self.subscriptions.topics() >= self.max_topics {
            return Err(format!("too many topics at the channel server (max {})", self.max_topics));
        }
        let t = known.unwrap_or_else(|| store.topic_id(topic));
        if self.subscriptions.add(t, key) {
            store.hold(t); // a subscribed topic is never forgotten
        }
        p.topics.insert(t);
        Ok(())
    }

    fn unsubscribe(&mut self, t: TopicId, key: usize) {
        if self.subscriptions.remove(t, key) {
            self.store.as_mut().expect("links are read once the store is open").release(t);
        }
    }

    fn hello(&mut self, key: usize, version: u8, secret: &[u8]) -> Result<(), String> {
        if version != VERSION {
            return Err(format!("protocol version {version} is not supported (this server speaks {VERSION})"));
        }
        if let Some(want) = &self.secret {
            if !constant_time_eq(want, secret) {
                return Err("wrong secret".into());
            }
        }
        let p = &mut self.peers.slab[key];
        p.authed = true;
        self.handshakes.count -= 1;
        info!("worker link from {} accepted", p.addr);
        let epoch = self.store.as_ref().map_or(0, Store::epoch);
        self.peers.push_frame(key, Frame::Welcome { version: VERSION, epoch });
        Ok(())
    }

    /// Commits this turn's appends; forwards the messages committed, sends
    /// their PUBACKs, and answers the requests waiting for the commit. A
    /// failed commit ends the process (a retried fsync can lie): the master
    /// restarts it, and the log is recovered up to what was written.
    fn commit(&mut self) {
        let Some(store) = &mut self.store else { return };
        let committed = match store.commit() {
            Ok(r) => r,
            Err(e) => {
                error!("cannot write the message log: {e}; exiting (a restart recovers what was written)");
                std::process::exit(1);
            }
        };
        self.forward(committed);
        let store = self.store.as_ref().expect("open");
        for (key, id, r) in std::mem::take(&mut self.staged.requests) {
            if self.peers.slab.get(key).is_none_or(|p| p.id != id) {
                continue;
            }
            let mut out = Vec::new();
            match r {
                Request::Ready(frames) => out = frames,
                Request::Fetch { req, from, limit, topic } => {
                    let limit = (limit as usize).clamp(1, FETCH_MESSAGES);
                    let read = if from == 0 {
                        store.history(&topic, limit)
                    } else {
                        store.read(&topic, from, limit, FETCH_BYTES)
                    };
                    let (gap, next) = (read.gap.map(|g| (g.first, g.last)), read.next);
                    let mut messages = Vec::new();
                    let mut first = next;
                    for (i, m) in read.enumerate() {
                        if i == 0 {
                            first = m.seq;
                        }
                        frame::put_fetched(&mut messages, m.body);
                    }
                    Frame::Fetched { req, gap, first, next, topic: &topic, messages: &messages }.encode(&mut out);
                }
                Request::Info { req, topic } => {
                    let i = store.info(&topic);
                    Frame::Infoed { req, first: i.first, last: i.last, messages: i.messages, bytes: i.bytes }
                        .encode(&mut out);
                }
            }
            self.peers.push(key, &out);
        }
    }

    /// Forwards the staged messages, now committed (`commit` confirms every
    /// append made before it), and confirms those that asked.
    fn forward(&mut self, committed: Range<Lsn>) {
        let st = std::mem::take(&mut self.staged.frames);
        debug_assert!(self.staged.ends.last().is_none_or(|&(_, lsn, _)| committed.contains(&lsn)));
        let mut start = 0;
        for &(end, _, t) in &self.staged.ends {
            let targets = self.subscriptions.links(t);
            self.msgs_out += targets.len() as u64;
            for &target in targets {
                self.peers.push(target, &st[start..end]);
            }
            start = end;
        }
        for (key, id, i) in self.staged.confirms.drain(..) {
            if self.peers.slab.get(key).is_some_and(|p| p.id == id) {
                let start = if i == 0 { 0 } else { self.staged.ends[i - 1].0 };
                let f = &st[start..self.staged.ends[i].0];
                self.peers.push_frame(key, Frame::PubAck { seq: msg_seq(f), topic: msg_topic(f) });
            }
        }
        self.staged.ends.clear();
        self.staged.frames = st;
        self.staged.frames.clear();
    }

    /// Commits, then writes what that queued (and anything else queued).
    fn commit_and_flush(&mut self) {
        self.commit();
        for key in std::mem::take(&mut self.peers.dirty) {
            self.flush(key);
        }
    }

    fn flush(&mut self, key: usize) {
        let Some(p) = self.peers.slab.get_mut(key) else { return };
        p.dirty = false;
        match p.out.write_to(&mut p.stream) {
            Ok(0) => {}
            Ok(n) => {
                p.bytes_out += n as u64;
                p.stalled_since = None;
            }
            Err(e) => {
                debug!("{}: write failed: {e}", p.addr);
                self.to_close.push(key);
                return;
            }
        }
        if p.out.is_empty() {
            if p.closing && p.linger.is_some() {
                // The ERROR frame is out: end our side, wait for the peer's.
                if !p.shut {
                    p.shut = true;
                    let _ = p.stream.shutdown(Shutdown::Write);
                }
                if p.eof {
                    self.to_close.push(key);
                }
            } else if p.closing {
                self.to_close.push(key);
            }
        }
    }

    /// Closes the links of workers that stopped reading; what was queued for
    /// them is counted as dropped. They reconnect and subscribe again.
    fn cut_off_stalled(&mut self) {
        let now = Instant::now();
        for (key, p) in self.peers.slab.iter_mut() {
            if p.closing || p.stalled_since.is_none_or(|t| now - t < STALL_TIMEOUT) {
                continue;
            }
            let frames = p.out.count_frames();
            warn!(
                "worker at {} read nothing for {STALL_TIMEOUT:?} with {} bytes queued: closing its link, dropping {frames} message(s)",
                p.addr,
                p.out.queued()
            );
            self.dropped += frames;
            self.stalled += 1;
            p.closing = true;
            p.stalled_since = None;
            self.to_close.push(key);
        }
    }

    fn close(&mut self, reg: &Registry, key: usize) {
        let Some(mut p) = self.peers.slab.try_remove(key) else { return };
        let _ = reg.deregister(&mut p.stream);
        for &t in &p.topics {
            self.unsubscribe(t, key);
        }
        self.unread.retain(|k| *k != key);
        self.to_close.retain(|k| *k != key); // closed before the end of the turn
        self.queues_link_closed(key);
        if p.authed {
            info!("worker link from {} closed", p.addr);
        } else {
            self.handshakes.count -= 1;
            debug!("connection from {} closed before its hello", p.addr);
        }
    }

    /// Closes the connections that did not present a hello in time, and the
    /// oldest ones while too many wait. Returns the next handshake deadline.
    fn expire_handshakes(&mut self, reg: &Registry) -> Option<Instant> {
        let now = Instant::now();
        while let Some(&(key, id, deadline)) = self.handshakes.queue.front() {
            let waiting = self.peers.slab.get(key).is_some_and(|p| p.id == id && !p.authed);
            let over = self.handshakes.count > MAX_HANDSHAKES;
            if waiting && !over && deadline > now {
                break;
            }
            self.handshakes.queue.pop_front();
            if waiting {
                match over {
                    true => self.handshakes.evicted += 1,
                    false => self.handshakes.timed_out += 1,
                }
                self.handshakes.last = Some(self.peers.slab[key].addr);
                self.close(reg, key);
            }
        }
        self.handshakes.queue.front().map(|e| e.2)
    }

    /// Logs the connections closed before their hello, one line per kind at
    /// most every LOG_EVERY, so a flood does not flood the log. Returns when
    /// to log what is counted and not logged yet.
    fn log_handshakes(&mut self, now: Instant) -> Option<Instant> {
        let h = &mut self.handshakes;
        if h.timed_out + h.evicted == 0 {
            return None;
        }
        if let Some(due) = h.logged.map(|t| t + LOG_EVERY).filter(|due| *due > now) {
            return Some(due);
        }
        h.logged = Some(now);
        let last = h.last.map(|a| a.to_string()).unwrap_or_default();
        if h.timed_out > 0 {
            let n = std::mem::take(&mut h.timed_out);
            warn!(
                "closed {n} connection(s) that presented no hello within {HANDSHAKE_TIMEOUT:?} (the last from {last})"
            );
        }
        if h.evicted > 0 {
            let n = std::mem::take(&mut h.evicted);
            warn!(
                "closed {n} connection(s) without a hello to make room: at most {MAX_HANDSHAKES} may wait (the last from {last})"
            );
        }
        None
    }
}

impl Service for ChannelServer {
    /// Links are not handed over: workers reconnect to a new channel server.
    type Handoff = ();

    fn refuse(&mut self, mut stream: TcpStream, limit: usize) {
        let mut frame = Vec::new();
        let why = format!("too many connections (limit {limit} per worker)");
        Frame::Error(why.as_bytes()).encode(&mut frame);
        let _ = io::Write::write(&mut stream, &frame);
    }

    fn accept(&mut self, reg: &Registry, mut stream: TcpStream, addr: SocketAddr) {
        let entry = self.peers.slab.vacant_entry();
        let key = entry.key();
        if let Err(e) = reg.register(&mut stream, Token(key), Interest::READABLE | Interest::WRITABLE) {
            warn!("cannot register {addr}: {e}");
            return;
        }
        entry.insert(Peer {
            stream,
            addr,
            id: self.next_id,
            reader: FrameReader::limited(MAX_HELLO_FRAME),
            out: Outbound::default(),
            authed: false,
            topics: HashSet::new(),
            closing: false,
            dirty: false,
            bytes_in: 0,
            bytes_out: 0,
            stalled_since: None,
            linger: None,
            shut: false,
            eof: false,
        });
        self.handshakes.queue.push_back((key, self.next_id, Instant::now() + HANDSHAKE_TIMEOUT));
        self.handshakes.count += 1;
        self.next_id += 1;
        self.expire_handshakes(reg);
        // A worker sends its hello as it connects: read it now, before a
        // flood of other connections can make this one the oldest.
        self.read_peer(key);
    }

    fn event(&mut self, _reg: &Registry, ev: &Event) {
        let key = ev.token().0;
        if ev.is_writable() {
            self.flush(key);
        }
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            self.read_peer(key);
        }
    }

    fn tick(&mut self, reg: &Registry) -> Option<Instant> {
        if self.open_retry.is_some_and(|t| t <= Instant::now()) {
            self.open_store();
        }
        let jobs_due = self.expire_jobs();
        self.commit_and_flush();
        let handshake = self.expire_handshakes(reg);
        let log = self.log_handshakes(Instant::now());
        self.cut_off_stalled();
        let now = Instant::now();
        for (key, p) in self.peers.slab.iter() {
            if p.linger.is_some_and(|t| t <= now) {
                debug!("{}: closing after the ERROR frame", p.addr);
                self.to_close.push(key);
            }
        }
        for key in std::mem::take(&mut self.to_close) {
            self.close(reg, key);
        }
        // Publishers wait from when a link goes over its limit until every
        // link is back under half of it; a link holding them up without
        // taking any data is timed.
        let (half, now, was) = (self.peers.max_buffer / 2, Instant::now(), self.peers.congested);
        self.peers.congested = false;
        for (_, p) in self.peers.slab.iter_mut() {
            if was && p.out.queued() > half {
                self.peers.congested = true;
                p.stalled_since.get_or_insert(now);
            } else {
                p.stalled_since = None;
            }
        }
        if !self.peers.congested {
            for key in std::mem::take(&mut self.unread) {
                self.read_peer(key);
            }
            self.commit_and_flush();
            for key in std::mem::take(&mut self.to_close) {
                self.close(reg, key);
            }
        }
        let now = Instant::now();
        let mut expire = None;
        if let Some(store) = self.store.as_mut().filter(|s| s.config().retain_age_ms.is_some()) {
            if self.next_expire <= now {
                store.expire(wall_ms());
                self.next_expire = now + EXPIRE_EVERY;
            }
            expire = Some(self.next_expire);
        }
        let staged = !self.staged.requests.is_empty(); // by links closed after the commit
        if (staged || !self.unread.is_empty() && !self.peers.congested) && self.store.is_some() {
            Some(now)
        } else {
            let stall = self.peers.slab.iter().filter_map(|(_, p)| p.stalled_since).min().map(|t| t + STALL_TIMEOUT);
            let linger = self.peers.slab.iter().filter_map(|(_, p)| p.linger).min();
            [stall, linger, handshake, log, expire, self.open_retry, jobs_due].into_iter().flatten().min()
        }
    }

    fn connections(&self) -> usize {
        self.peers.slab.len()
    }

    fn drain(&mut self, _reg: &Registry) {
        self.draining = true;
        for (key, p) in self.peers.slab.iter_mut() {
            p.closing = true;
            if !p.dirty {
                p.dirty = true;
                self.peers.dirty.push(key);
            }
        }
    }

    fn drained(&self) -> bool {
        self.peers.slab.is_empty()
    }

    fn stats(&self) -> WorkerStats {
        WorkerStats {
            connections: self.peers.slab.len() as u64,
            topics: self.subscriptions.topics() as u64,
            msgs_in: self.msgs_in,
            msgs_out: self.msgs_out,
            bytes_queued: self.peers.slab.iter().map(|(_, p)| p.out.queued() as u64).sum(),
            dropped: self.dropped,
            slow_consumers: self.stalled,
            retained: self.store.as_ref().map(|s| {
                let st = s.stats();
                Retained {
                    messages: st.messages,
                    bytes: st.bytes,
                    topics: st.topics,
                    log_bytes: st.log_bytes,
                    evicted: st.evicted,
                    forgotten: st.forgotten,
                }
            }),
            queues: self.queue_stats(),
            jobs: Some(Box::new(self.job_counts())),
            link: "-".into(),
            ..Default::default()
        }
    }

    fn list(&self) -> Vec<ConnInfo> {
        let pid = std::process::id();
        let name =
            |t: &TopicId| self.store.as_ref().map_or("?".into(), |s| String::from_utf8_lossy(s.topic_name(*t)).into());
        self.peers
            .slab
            .iter()
            .map(|(_, p)| ConnInfo {
                worker_pid: pid,
                id: p.id,
                peer: p.addr.to_string(),
                kind: "worker".into(),
                topics: p.topics.iter().map(name).collect(),
                queues: Vec::new(),
                unacked: 0,
                bytes_in: p.bytes_in,
                bytes_out: p.bytes_out,
                queued: p.out.queued() as u64,
            })
            .collect()
    }
}

/// Positions claimed past this are not honoured (numbers stay far from overflow).
const MAX_CLAIM: u64 = 1 << 62;

/// The number of an encoded MSG frame.
fn msg_seq(f: &[u8]) -> u64 {
    u64::from_be_bytes(f[5..13].try_into().expect("a MSG frame"))
}

/// The topic of an encoded MSG frame.
fn msg_topic(f: &[u8]) -> &[u8] {
    &f[14..14 + f[13] as usize]
}

pub(super) fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Compares secrets without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
