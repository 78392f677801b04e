//! The pub/sub service run by data-source and subscriber workers: parses what
//! clients type, forwards publishes to the channel server over the worker's one
//! link, and fans what the channel server sends out to local subscribers.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{debug, error, warn};
use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::config::{PubSubConfig, MAX_SUBSCRIPTIONS};
use crate::runtime::control::{ConnInfo, WorkerStats};
use crate::runtime::event_loop::Service;
use clients::{Client, Held};
use handoff::{ClientState, HeldState, LinkState, Msg, Sender};
use link::Link;
use send_queue::SendQueue;
use topics::{Remote, TopicId, Topics};

mod clients;
pub mod handoff;
mod link;
mod out_frames;
mod send_queue;
mod topics;
use crate::protocol::command::{self, Command, HELP};
use crate::protocol::frame::Frame;
use crate::protocol::line::Line;

/// One read from a socket.
const READ_BUF: usize = 64 * 1024;
/// How long a client being closed gets to take its last output.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Reads from one socket per event before others get a turn.
const READS_PER_EVENT: usize = 16;

#[derive(Default)]
struct Counters {
    msgs_in: u64,
    msgs_out: u64,
    dropped: u64,
    slow_consumers: u64,
}

/// The clients and the work deferred to the end of the event batch.
struct Clients {
    slab: Slab<Client>,
    /// Clients with output to write.
    dirty: Vec<usize>,
    /// Clients with input left unread (backpressure, or their turn ran out).
    unread: Vec<usize>,
    /// Clients to remove at the end of the batch (never during it, so slab
    /// keys held in lists and topics stay valid).
    to_close: Vec<usize>,
    /// Clients being closed: (key, id, when to give up on their output).
    closing: Vec<(usize, u64, Instant)>,
    max_send_queue: usize,
    counters: Counters,
}

impl Clients {
    /// Queues a reply, behind any reply still held for a subscription.
    fn reply(&mut self, key: usize, parts: &[&[u8]]) {
        let c = &mut self.slab[key];
        if c.held.is_empty() {
            c.out.push_bytes(parts);
            return self.check_queue(key);
        }
        if let Some(Held::Text(t)) = c.held.back_mut() {
            parts.iter().for_each(|p| t.extend_from_slice(p));
        } else {
            c.held.push_back(Held::Text(parts.concat()));
        }
        // Held text counts against the send queue limit like queued text.
        let held: usize = c.held.iter().map(|h| if let Held::Text(t) = h { t.len() } else { 0 }).sum();
        if held > self.max_send_queue {
            warn!("{} sent commands faster than they could be answered: disconnecting", c.peer);
            c.held.clear();
            c.out.push_bytes(&[b"ERR too many commands waiting for a reply; disconnecting\n"]);
            self.close_soon(key);
        }
    }

    /// Closes the client once its last output is written, or after
    /// CLOSE_GRACE if it does not take it (a client that stopped reading).
    fn close_soon(&mut self, key: usize) {
        let c = &mut self.slab[key];
        c.closing = true;
        self.closing.push((key, c.id, Instant::now() + CLOSE_GRACE));
        mark_dirty(&mut self.dirty, c, key);
    }

    /// Closes the clients whose grace has run out; returns the next deadline.
    fn expire_closing(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let (slab, to_close) = (&self.slab, &mut self.to_close);
        self.closing.retain(|&(key, id, deadline)| {
            let same = slab.get(key).is_some_and(|c| c.id == id);
            if same && deadline <= now {
                debug!("{}: did not take its last output in {CLOSE_GRACE:?}; closing", slab[key].peer);
                to_close.push(key);
            }
            same && deadline > now
        });
        self.closing.iter().map(|c| c.2).min()
    }

    /// Holds the client's next replies until `topic` is confirmed.
    fn hold(&mut self, key: usize, topic: &[u8]) {
        self.slab[key].held.push_back(Held::Subscription(topic.into()));
    }

    /// Puts `OK subscribed` in the place held for it and releases what follows.
    fn confirm(&mut self, key: usize, name: &[u8]) {
        let c = &mut self.slab[key];
        for h in c.held.iter_mut() {
            if matches!(h, Held::Subscription(t) if **t == *name) {
                *h = Held::Text([b"OK subscribed ", name, b"\n"].concat());
                break;
            }
        }
        while let Some(Held::Text(_)) = c.held.front() {
            let Some(Held::Text(t)) = c.held.pop_front() else { unreachable!() };
            c.out.push_bytes(&[&t]);
        }
        mark_dirty(&mut self.dirty, c, key);
    }

    fn error(&mut self, key: usize, msg: &str) {
        self.reply(key, &[b"ERR ", msg.as_bytes(), b"\n"]);
    }

    /// Queues a shared batch of `msgs` lines for one subscriber; a slow one
    /// is cut off (`check_queue`) and the others are not held back.
    fn deliver(&mut self, key: usize, bytes: &Rc<[u8]>, msgs: u32) {
        let c = &mut self.slab[key];
        if c.closing {
            self.counters.dropped += u64::from(msgs);
            return;
        }
        c.out.push_shared(bytes, msgs);
        self.counters.msgs_out += u64::from(msgs);
        self.check_queue(key);
    }

    /// Marks a client for flushing. One whose queue is over the limit is a
    /// slow consumer: what it has not started to receive is dropped, it gets a
    /// last `ERR slow consumer` line and is disconnected. (Replies count too: a
    /// client that sends commands and never reads their answers is one.)
    fn check_queue(&mut self, key: usize) {
        let c = &mut self.slab[key];
        if c.out.queued() > self.max_send_queue && !c.closing {
            self.counters.dropped += c.out.discard_unsent();
            self.counters.slow_consumers += 1;
            warn!("{} is a slow consumer (over {} bytes queued): disconnecting", c.peer, self.max_send_queue);
            let msg = format!("ERR slow consumer: more than {} bytes queued; disconnecting\n", self.max_send_queue);
            c.out.push_bytes(&[msg.as_bytes()]);
            return self.close_soon(key);
        }
        mark_dirty(&mut self.dirty, c, key);
    }

    fn flush(&mut self, key: usize) {
        let Some(c) = self.slab.get_mut(key) else { return };
        c.dirty = false;
        match c.out.write_to(&mut c.stream) {
            Ok(n) => {
                c.bytes_out += n as u64;
                if c.closing && c.out.is_empty() {
                    self.to_close.push(key);
                }
                if c.input_paused && c.out.queued() <= self.max_send_queue / 4 {
                    c.input_paused = false;
                    self.read_later(key);
                }
            }
            Err(e) => {
                debug!("{}: write failed: {e}", c.peer);
                self.to_close.push(key);
            }
        }
    }
}

impl Clients {
    /// Remembers to read a client again at the end of the batch. (A key left
    /// here by a client since closed is harmless: its successor is just read.)
    fn read_later(&mut self, key: usize) {
        if let Some(c) = self.slab.get_mut(key).filter(|c| !c.unread) {
            c.unread = true;
            self.unread.push(key);
        }
    }
}

fn mark_dirty(dirty: &mut Vec<usize>, c: &mut Client, key: usize) {
    if !c.dirty {
        c.dirty = true;
        dirty.push(key);
    }
}

pub struct PubSub {
    welcome: Vec<u8>,
    default_topic: Vec<u8>,
    max_line: usize,
    clients: Clients,
    topics: Topics,
    link: Link,
    /// Topics with a batch of lines waiting to be delivered.
    touched: Vec<TopicId>,
    read_buf: Vec<u8>,
    next_id: u64,
    /// The link's reads ran out of turns with input possibly left.
    link_unread: bool,
    draining: bool,
}

impl PubSub {
    pub fn new(title: &str, cfg: PubSubConfig, secret: Vec<u8>) -> PubSub {
        PubSub {
            welcome: format!("Welcome to {title}\n").into_bytes(),
            default_topic: cfg.topic.into_bytes(),
            max_line: cfg.max_line,
            clients: Clients {
                slab: Slab::new(),
                dirty: Vec::new(),
                unread: Vec::new(),
                to_close: Vec::new(),
                closing: Vec::new(),
                max_send_queue: cfg.max_send_queue,
                counters: Counters::default(),
            },
            topics: Topics::default(),
            link: Link::new(cfg.channel, secret, cfg.max_link_buffer),
            touched: Vec::new(),
            read_buf: vec![0; READ_BUF],
            next_id: 1,
            link_unread: false,
            draining: false,
        }
    }

    // ---- client input ----------------------------------------------------------

    fn read_client(&mut self, key: usize) {
        let mut buf = std::mem::take(&mut self.read_buf);
        let more = self.read_turns(key, &mut buf);
        self.read_buf = buf;
        if more {
            self.clients.read_later(key); // come back after the others
        }
    }

    /// Reads and handles a client's input for a few turns. Returns true if
    /// input may be left: backpressure, or the turns ran out.
    fn read_turns(&mut self, key: usize, buf: &mut [u8]) -> bool {
        for _ in 0..READS_PER_EVENT {
            let Some(c) = self.clients.slab.get_mut(key) else { return false };
            if c.closing || self.draining {
                return false;
            }
            if self.link.congested() {
                return true; // leave the input in the socket until the link drains
            }
            if c.out.queued() > self.clients.max_send_queue / 2 {
                // It is not reading its replies: no more commands until it does.
                c.input_paused = true;
                return false;
            }
            match c.stream.read(buf) {
                Ok(0) => {
                    self.clients.to_close.push(key);
                    return false;
                }
                Ok(n) => {
                    c.bytes_in += n as u64;
                    let mut reader = std::mem::take(&mut c.reader);
                    reader.feed(&mut buf[..n], self.max_line, |line| self.on_line(key, line));
                    self.clients.slab[key].reader = reader;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("{}: read failed: {e}", c.peer);
                    self.clients.to_close.push(key);
                    return false;
                }
            }
        }
        true
    }

    fn on_line(&mut self, key: usize, line: Line<'_>) {
        if self.clients.slab[key].closing {
            return; // after quit: ignore the rest
        }
        let text = match line {
            Line::TooLong => {
                return self.clients.error(key, &format!("line too long (max {} bytes)", self.max_line));
            }
            Line::Text(t) => t,
        };
        let cmd = match command::parse(text) {
            Ok(Some(cmd)) => cmd,
            Ok(None) => return,
            Err(msg) => return self.clients.error(key, &msg),
        };
        match cmd {
            Command::Publish(message) => {
                let topic = std::mem::take(&mut self.default_topic);
                self.publish(&topic, message);
                self.default_topic = topic;
            }
            Command::Pub { topic, message } => self.publish(topic, message),
            Command::Subscribe(topics) if topics.is_empty() => {
                let topic = self.default_topic.clone();
                self.subscribe(key, [topic.as_slice()].into_iter());
            }
            Command::Subscribe(topics) => self.subscribe(key, topics.iter()),
            Command::Unsubscribe(topics) if topics.is_empty() => {
                let all: Vec<Vec<u8>> =
                    self.clients.slab[key].topics.iter().map(|id| self.topics.get(*id).name.to_vec()).collect();
                if all.is_empty() {
                    self.clients.error(key, "not subscribed to any topic");
                }
                self.unsubscribe(key, all.iter().map(|t| t.as_slice()));
            }
            Command::Unsubscribe(topics) => self.unsubscribe(key, topics.iter()),
            Command::Ping => self.clients.reply(key, &[b"PONG\n"]),
            Command::Help => self.clients.reply(key, &[HELP.as_bytes()]),
            Command::Quit => {
                self.clients.reply(key, &[b"Bye\n"]);
                self.clients.close_soon(key);
            }
        }
    }

    fn publish(&mut self, topic: &[u8], message: &[u8]) {
        self.link.publish(topic, message);
        self.clients.counters.msgs_in += 1;
    }

    fn subscribe<'a>(&mut self, key: usize, names: impl Iterator<Item = &'a [u8]> + Clone) {
        let c = &self.clients.slab[key];
        let has = |name: &[u8]| c.topics.iter().any(|id| *self.topics.get(*id).name == *name);
        // A topic named twice is one subscription.
        let new: HashSet<&[u8]> = names.clone().filter(|n| !has(n)).collect();
        if c.topics.len() + new.len() > MAX_SUBSCRIPTIONS {
            let msg = format!("too many subscriptions (max {MAX_SUBSCRIPTIONS} per connection)");
            return self.clients.error(key, &msg);
        }
        for name in names {
            if self.clients.slab[key].topics.iter().any(|id| *self.topics.get(*id).name == *name) {
                self.clients.reply(key, &[b"OK subscribed ", name, b"\n"]);
                continue;
            }
            let (id, confirmed, remote) = self.topics.subscribe(name, key);
            self.clients.slab[key].topics.push(id);
            if remote == Remote::Subscribe {
                self.link.control(Frame::Sub(name));
            }
            if confirmed {
                self.clients.reply(key, &[b"OK subscribed ", name, b"\n"]);
            } else {
                self.clients.hold(key, name);
            }
        }
    }

    fn unsubscribe<'a>(&mut self, key: usize, names: impl Iterator<Item = &'a [u8]>) {
        for name in names {
            let c = &mut self.clients.slab[key];
            let Some(pos) = c.topics.iter().position(|id| *self.topics.get(*id).name == *name) else {
                let msg = format!("not subscribed to '{}'", String::from_utf8_lossy(name));
                self.clients.error(key, &msg);
                continue;
            };
            let id = c.topics.swap_remove(pos);
            // Still unconfirmed: its OK goes out now, before the unsubscribe's.
            self.clients.confirm(key, name);
            self.leave(id, key);
            self.clients.reply(key, &[b"OK unsubscribed ", name, b"\n"]);
        }
    }

    /// Removes a client from a topic, unsubscribing the worker if it was the last.
    fn leave(&mut self, id: TopicId, key: usize) {
        let name = self.topics.get(id).name.clone();
        if self.topics.unsubscribe(id, key) == Remote::Unsubscribe {
            self.link.control(Frame::Unsub(&name));
        }
    }

    // ---- the channel link ------------------------------------------------------

    fn read_link(&mut self, reg: &Registry) {
        for _ in 0..READS_PER_EVENT {
            match self.link.read() {
                Ok(0) => return self.link.down(reg, "closed by the channel server"),
                Ok(_) => {
                    if let Err(why) = self.on_frames() {
                        return self.link.down(reg, &why);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.link.down(reg, &format!("read failed: {e}")),
            }
        }
        // More may be waiting; an edge will not come again for it.
        self.link_unread = true;
    }

    /// Handles every whole frame read so far. Lines for one topic are gathered
    /// into that topic's batch and delivered once per read.
    fn on_frames(&mut self) -> Result<(), String> {
        let PubSub { link, topics, touched, clients, .. } = self;
        loop {
            let frame = match link.reader.next_frame() {
                Ok(Some((frame, _))) => frame,
                Ok(None) => break,
                Err(e) => return Err(format!("bad frame from the channel server: {e}")),
            };
            match frame {
                Frame::Publish { topic, message } => {
                    // Runs of one topic are the common case: skip the hash.
                    let id = match touched.last() {
                        Some(&id) if *topics.get(id).name == *topic => id,
                        _ => match topics.find(topic) {
                            Some(id) => id,
                            None => continue,
                        },
                    };
                    let t = topics.get_mut(id);
                    if t.subscribers.is_empty() {
                        continue;
                    }
                    if t.batch.is_empty() {
                        touched.push(id);
                    }
                    for part in [b"Received [".as_slice(), topic, b"]: ", message, b"\n"] {
                        t.batch.extend_from_slice(part);
                    }
                    t.batch_msgs += 1;
                }
                Frame::SubAck(topic) => {
                    // Subscribers confirmed now must not get lines from before.
                    deliver_batches(topics, touched, clients);
                    if let Some((_, confirmed)) = topics.acknowledge(topic) {
                        for key in confirmed {
                            clients.confirm(key, topic);
                        }
                    }
                }
                Frame::Welcome { .. } => link.welcomed(),
                Frame::Error(why) => {
                    error!("the channel server refused this worker: {}", String::from_utf8_lossy(why));
                    return Err("refused".into());
                }
                other => return Err(format!("unexpected frame from the channel server: {other:?}")),
            }
        }
        deliver_batches(topics, touched, clients);
        Ok(())
    }

    fn close(&mut self, reg: &Registry, key: usize) {
        let Some(mut c) = self.clients.slab.try_remove(key) else { return };
        let _ = reg.deregister(&mut c.stream);
        for id in c.topics.drain(..) {
            self.leave(id, key);
        }
        debug!("{} disconnected", c.peer);
    }
}

/// Encodes each touched topic's batch once and queues it for every subscriber.
fn deliver_batches(topics: &mut Topics, touched: &mut Vec<TopicId>, clients: &mut Clients) {
    for id in touched.drain(..) {
        let t = topics.get_mut(id);
        let bytes: Rc<[u8]> = Rc::from(t.batch.as_slice());
        let msgs = std::mem::take(&mut t.batch_msgs);
        t.batch.clear();
        if t.batch.capacity() > 1 << 20 {
            t.batch = Vec::new();
        }
        for &key in &t.subscribers {
            clients.deliver(key, &bytes, msgs);
        }
    }
}

impl PubSub {
    fn export_client(c: &Client) -> ClientState {
        ClientState {
            id: c.id,
            peer: c.peer,
            reader: c.reader.clone(),
            unsent: c.out.unsent(),
            held: c
                .held
                .iter()
                .map(|h| match h {
                    Held::Subscription(t) => HeldState::Subscription(t.to_vec()),
                    Held::Text(t) => HeldState::Text(t.clone()),
                })
                .collect(),
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            closing: c.closing,
        }
    }

    fn import_client(&mut self, s: ClientState, fd: OwnedFd) -> usize {
        let stream = TcpStream::from_std(std::net::TcpStream::from(fd));
        let mut c = Client::new(stream, s.peer, s.id);
        c.reader = s.reader;
        c.out = SendQueue::from_bytes(s.unsent);
        c.held = s
            .held
            .into_iter()
            .map(|h| match h {
                HeldState::Subscription(t) => Held::Subscription(t.into()),
                HeldState::Text(t) => Held::Text(t),
            })
            .collect();
        c.bytes_in = s.bytes_in;
        c.bytes_out = s.bytes_out;
        c.closing = s.closing;
        self.next_id = self.next_id.max(s.id + 1);
        let key = self.clients.slab.insert(c);
        if s.closing {
            self.clients.close_soon(key);
        }
        key
    }
}

impl Service for PubSub {
    fn hand_off(&mut self, to: &mut Sender) -> io::Result<bool> {
        for (_, c) in &self.clients.slab {
            to.send(&Msg::Client(Self::export_client(c)), Some(c.stream.as_fd()))?;
        }
        let (stream, unsent, written, unparsed) = self.link.export();
        let slab = &self.clients.slab;
        let topics = self.topics.export(|key| slab[key].id);
        let link = LinkState { unsent, written, unparsed, topics, lost: self.link.lost };
        to.send(&Msg::Link(link), stream.map(|s| s.as_fd()))?;
        Ok(true)
    }

    fn take_over(&mut self, reg: &Registry, msg: Msg, fd: Option<OwnedFd>) -> io::Result<()> {
        match (msg, fd) {
            (Msg::Client(s), Some(fd)) => {
                self.import_client(s, fd);
            }
            (Msg::Link(l), fd) => {
                let by_id: HashMap<u64, usize> = self.clients.slab.iter().map(|(k, c)| (c.id, k)).collect();
                for t in l.topics {
                    let id = self.topics.import(t, |cid| by_id.get(&cid).copied());
                    let t = self.topics.get(id);
                    for &key in t.subscribers.iter().chain(&t.waiting) {
                        self.clients.slab[key].topics.push(id);
                    }
                }
                self.link.lost = l.lost;
                let stream = fd.map(|fd| TcpStream::from_std(std::net::TcpStream::from(fd)));
                self.link.adopt(reg, stream, l.unsent, l.written, l.unparsed);
                for (key, c) in self.clients.slab.iter_mut() {
                    reg.register(&mut c.stream, Token(key), Interest::READABLE | Interest::WRITABLE)?;
                    mark_dirty(&mut self.clients.dirty, c, key);
                }
                // Frames the predecessor had received but not parsed.
                self.link_unread = true;
            }
            (Msg::Client(_), None) => return Err(io::Error::other("a client arrived without its socket")),
        }
        Ok(())
    }

    fn accept(&mut self, reg: &Registry, mut stream: TcpStream, peer: SocketAddr) {
        let entry = self.clients.slab.vacant_entry();
        let key = entry.key();
        if let Err(e) = reg.register(&mut stream, Token(key), Interest::READABLE | Interest::WRITABLE) {
            warn!("cannot register {peer}: {e}");
            return;
        }
        debug!("{peer} connected");
        entry.insert(Client::new(stream, peer, self.next_id));
        self.next_id += 1;
        let welcome = std::mem::take(&mut self.welcome);
        self.clients.reply(key, &[&welcome]);
        self.welcome = welcome;
    }

    fn event(&mut self, reg: &Registry, ev: &Event) {
        match ev.token() {
            link::TOKEN => {
                if ev.is_writable() {
                    self.link.on_writable(reg);
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.read_link(reg);
                }
            }
            Token(key) => {
                if ev.is_writable() {
                    self.clients.flush(key);
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.read_client(key);
                }
            }
        }
    }

    fn tick(&mut self, reg: &Registry) -> Option<Instant> {
        if std::mem::take(&mut self.link_unread) {
            // Frames already buffered (taken over from a predecessor) first.
            match self.on_frames() {
                Ok(()) => self.read_link(reg),
                Err(why) => self.link.down(reg, &why),
            }
        }
        if self.link.due() {
            let ids = self.topics.relink();
            let names: Vec<&[u8]> = ids.iter().map(|id| &*self.topics.get(*id).name).collect();
            self.link.connect(reg, &names);
        }
        if !self.link.congested() {
            for key in std::mem::take(&mut self.clients.unread) {
                if let Some(c) = self.clients.slab.get_mut(key) {
                    c.unread = false;
                }
                self.read_client(key);
            }
        }
        self.link.flush(reg);
        for key in std::mem::take(&mut self.clients.dirty) {
            self.clients.flush(key);
        }
        let give_up = self.clients.expire_closing();
        for key in std::mem::take(&mut self.clients.to_close) {
            self.close(reg, key);
        }
        self.link.flush(reg); // UNSUBs of closed clients
        let more = self.link_unread || (!self.clients.unread.is_empty() && !self.link.congested());
        if more {
            Some(Instant::now())
        } else {
            [self.link.next_deadline(), give_up].into_iter().flatten().min()
        }
    }

    fn connections(&self) -> usize {
        self.clients.slab.len()
    }

    fn drain(&mut self, _reg: &Registry) {
        self.draining = true;
        for (key, c) in self.clients.slab.iter_mut() {
            c.closing = true;
            mark_dirty(&mut self.clients.dirty, c, key);
        }
    }

    fn drained(&self) -> bool {
        self.clients.slab.is_empty() && (self.link.unsent() == 0)
    }

    fn stats(&self) -> WorkerStats {
        let c = &self.clients.counters;
        WorkerStats {
            connections: self.clients.slab.len() as u64,
            topics: self.topics.active() as u64,
            msgs_in: c.msgs_in,
            msgs_out: c.msgs_out,
            bytes_queued: self.clients.slab.iter().map(|(_, c)| c.out.queued() as u64).sum::<u64>()
                + self.link.unsent() as u64,
            dropped: c.dropped + self.link.lost,
            slow_consumers: c.slow_consumers,
            link: self.link.state_name().into(),
            ..Default::default()
        }
    }

    fn list(&self) -> Vec<ConnInfo> {
        let pid = std::process::id();
        self.clients
            .slab
            .iter()
            .map(|(_, c)| ConnInfo {
                worker_pid: pid,
                id: c.id,
                peer: c.peer.to_string(),
                topics: c.topics.iter().map(|id| String::from_utf8_lossy(&self.topics.get(*id).name).into()).collect(),
                bytes_in: c.bytes_in,
                bytes_out: c.bytes_out,
                queued: c.out.queued() as u64,
            })
            .collect()
    }
}
