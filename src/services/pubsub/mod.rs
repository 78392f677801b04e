//! The pub/sub service run by data-source and subscriber workers: reads what
//! clients type and hands each line to the commands, forwards publishes to the
//! channel server over the worker's one link, and fans what the channel server
//! sends out to local subscribers.
//!
//! - `clients`: the connections and their send side (replies in order,
//!   deliveries, slow consumers, flushing, closing), line or WebSocket;
//! - `commands`: what a parsed command does;
//! - `topics`: which clients want which topic, and its state at the channel server;
//! - `fanout`: frames from the link into the subscribers' queues;
//! - `link`: the connection to the channel server (reconnect, buffer, hold);
//! - `handoff`: everything a successor takes over on reload.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::Instant;

use log::{debug, warn};
use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::config::PubSubConfig;
use crate::protocol::input::Item;
use crate::protocol::reply;
use crate::protocol::websocket::{self, code};
use crate::runtime::control::{ConnInfo, WorkerStats};
use crate::runtime::event_loop::Service;
use crate::runtime::handoff::Sender;
use clients::{Client, Clients, Wire};
use fanout::Batches;
use link::{Asker, Broken, Link, LinkError};
use topics::Topics;

mod clients;
mod commands;
mod fanout;
pub mod handoff;
mod link;
pub mod nats_bus;
mod queues;
mod topics;

/// One read from a socket.
const READ_BUF: usize = 64 * 1024;
/// Reads from one socket per event before others get a turn.
const READS_PER_EVENT: usize = 16;
/// What `GET /` returns: subscribe, publish and watch deliveries in a browser.
const PAGE: &[u8] = include_bytes!("../../../assets/page.html");

pub struct PubSub {
    welcome: Vec<u8>,
    default_topic: Vec<u8>,
    max_line: usize,
    clients: Clients,
    topics: Topics,
    link: Link,
    batches: Batches,
    read_buf: Vec<u8>,
    next_id: u64,
    /// The link's reads ran out of turns with input possibly left.
    link_unread: bool,
    draining: bool,
    /// The last token given to an answer that comes later (`Replies::fill`).
    next_token: u64,
}

impl PubSub {
    /// A service on the channel server (`nats` none) or on a NATS cluster.
    pub fn new(title: &str, cfg: PubSubConfig, secret: Vec<u8>, nats: Option<Box<nats_bus::NatsBus>>) -> PubSub {
        PubSub {
            welcome: reply::welcome(title),
            default_topic: cfg.topic.into_bytes(),
            max_line: cfg.max_line,
            clients: Clients::new(cfg.max_send_queue, cfg.lagging),
            topics: Topics::default(),
            link: Link::new(cfg.channel, secret, nats, cfg.max_link_buffer, Instant::now()),
            batches: Batches::default(),
            read_buf: vec![0; READ_BUF],
            next_id: 1,
            link_unread: false,
            draining: false,
            next_token: 0,
        }
    }

    /// Tells the clients what a broken link left unanswered: a publish whose
    /// confirm did not come gets an `ERR` line in its place (it may or may
    /// not have been published); a `history` or `info` likewise; positions
    /// whose fetch was lost ask again on the next link.
    fn settle_broken(&mut self) {
        for b in std::mem::take(&mut self.link.owed.broken) {
            let (key, id, token, why) = match b {
                Broken::Confirm(c) => (c.key, c.id, c.token, reply::UNCONFIRMED),
                Broken::Request(Asker::Client { key, id, token, .. }) => (key, id, token, reply::LINK_DOWN),
                Broken::Request(Asker::Queue { key, id, token }) => (key, id, token, reply::LINK_LOST),
                Broken::Request(Asker::Cursor(_)) => continue, // `Topics::relink` resets them
            };
            self.clients.fill(key, id, token, reply::error(why).concat());
        }
    }

    fn read_client(&mut self, key: usize) {
        let mut buf = std::mem::take(&mut self.read_buf);
        let more = self.read_turns(key, &mut buf);
        self.read_buf = buf;
        if more {
            self.clients.read_later(key); // come back after the others
        }
    }

    /// Reads a client's input for a few turns and hands each line to the
    /// commands. Returns true if input may be left: backpressure, or the
    /// turns ran out.
    fn read_turns(&mut self, key: usize, buf: &mut [u8]) -> bool {
        for _ in 0..READS_PER_EVENT {
            let Some(c) = self.clients.slab.get_mut(key) else { return false };
            if c.shut {
                // Everything is sent: drop what it still sends until it closes.
                match c.stream.read(buf) {
                    Ok(0) => self.clients.to_close.push(key),
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => self.clients.to_close.push(key),
                }
                return false;
            }
            if c.closing || self.draining {
                return false;
            }
            if self.link.congested() {
                return true; // leave the input in the socket until the link drains
            }
            if c.replies.awaiting() >= queues::MAX_AWAITING {
                // Its queue commands wait for the channel server: no more until some are answered.
                c.input_paused = true;
                return false;
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
                    let mut input = std::mem::take(&mut c.input);
                    input.feed(&mut buf[..n], self.max_line, PAGE, &mut |item| self.on_item(key, item));
                    self.clients.slab[key].input = input;
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

    /// What a client's input says (the commands themselves are in `commands`).
    fn on_item(&mut self, key: usize, item: Item<'_>) {
        let c = &mut self.clients.slab[key];
        if c.closing {
            return; // after quit, a close or a protocol error: ignore the rest
        }
        match item {
            Item::Lines => self.greet(key),
            Item::Line(line) => self.on_line(key, line),
            Item::Http { status, response } => {
                debug!("{}: HTTP {status}", c.peer);
                self.clients.push_raw(key, &response);
                self.clients.close_soon(key);
            }
            Item::Upgrade(response) => {
                debug!("{}: WebSocket", c.peer);
                c.wire = Wire::WebSocket;
                self.clients.push_raw(key, &response);
                self.greet(key);
            }
            Item::ManyLines => self.clients.error(key, reply::MANY_LINES),
            Item::Ping(payload) => self.clients.push_raw(key, &websocket::pong(payload)),
            // The close handshake: its code is echoed.
            Item::Close(status) => self.clients.close_with(key, status.unwrap_or(code::NORMAL), ""),
            Item::Fail(why) => {
                debug!("{}: {why}", c.peer);
                self.clients.close_with(key, why.code, &why.reason);
            }
        }
    }

    /// A new connection said nothing in its time to speak first: a line client.
    fn silent(&mut self, key: usize) {
        let mut input = std::mem::take(&mut self.clients.slab[key].input);
        input.sniffed_silence(&mut |item| self.on_item(key, item));
        self.clients.slab[key].input = input;
    }

    /// The welcome, once the connection is known to be a line or WebSocket client.
    fn greet(&mut self, key: usize) {
        let welcome = std::mem::take(&mut self.welcome);
        self.clients.reply(key, &[&welcome]);
        self.welcome = welcome;
    }

    fn read_link(&mut self, reg: &Registry) {
        for _ in 0..READS_PER_EVENT {
            let result = match self.link.read() {
                Ok(0) => Err(LinkError::Closed),
                Ok(_) => self.batches.on_frames(&mut self.link, &mut self.topics, &mut self.clients),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
                Err(e) => Err(LinkError::Io(e)),
            };
            if let Err(why) = result {
                return self.link.down(reg, why, Instant::now());
            }
        }
        // More may be waiting; an edge will not come again for it.
        self.link_unread = true;
    }

    fn close(&mut self, reg: &Registry, key: usize) {
        let Some(mut c) = self.clients.remove(key) else { return };
        let _ = reg.deregister(&mut c.stream);
        self.queues_closed(&c);
        for id in c.topics.drain(..) {
            self.leave(id, key);
        }
        debug!("{} disconnected", c.peer);
    }
}

impl Service for PubSub {
    type Handoff = handoff::Msg;

    fn accept(&mut self, reg: &Registry, mut stream: TcpStream, peer: SocketAddr) {
        let key = self.clients.slab.vacant_key();
        if let Err(e) = reg.register(&mut stream, Token(key), Interest::READABLE | Interest::WRITABLE) {
            warn!("cannot register {peer}: {e}");
            return;
        }
        debug!("{peer} connected");
        self.clients.add(Client::new(stream, peer, self.next_id));
        self.next_id += 1;
        // Greeted once it is known not to be an HTTP client (`on_item`, `tick`).
        self.clients.sniff(key, Instant::now());
    }

    fn refuse(&mut self, mut stream: TcpStream, limit: usize) {
        let _ = io::Write::write(&mut stream, &reply::error(&reply::too_many_connections(limit)).concat());
    }

    fn event(&mut self, reg: &Registry, ev: &Event) {
        match ev.token() {
            link::TOKEN => {
                if ev.is_writable() {
                    self.link.on_writable(reg, Instant::now());
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
        let now = Instant::now();
        if std::mem::take(&mut self.link_unread) {
            // Frames already buffered (taken over from a predecessor) first.
            match self.batches.on_frames(&mut self.link, &mut self.topics, &mut self.clients) {
                Ok(()) => self.read_link(reg),
                Err(why) => self.link.down(reg, why, now),
            }
        }
        self.link.check_alive(reg, now);
        if self.link.due(now) {
            let ids = self.topics.relink();
            let subs: Vec<(&[u8], u64)> = ids
                .iter()
                .map(|id| {
                    let t = self.topics.get(*id);
                    (&*t.name, t.next)
                })
                .collect();
            self.link.connect(reg, &subs, now);
            self.queues_relink();
        }
        self.batches.pump(&mut self.link, &mut self.topics, &self.clients);
        if !self.link.congested() {
            for key in std::mem::take(&mut self.clients.unread) {
                if let Some(c) = self.clients.slab.get_mut(key) {
                    c.unread = false;
                }
                self.read_client(key);
            }
        }
        let (silent, sniff_deadline) = self.clients.sniffed(now);
        for key in silent {
            self.silent(key);
        }
        for key in std::mem::take(&mut self.clients.dirty) {
            self.clients.flush(key);
        }
        let give_up = self.clients.expire_closing(now);
        for key in std::mem::take(&mut self.clients.to_close) {
            self.close(reg, key);
        }
        // Once, after the closes: their UNSUBs go with this turn's publishes.
        self.link.flush(reg, now);
        self.settle_broken();
        let more = self.link_unread || (!self.clients.unread.is_empty() && !self.link.congested());
        if more {
            Some(now)
        } else {
            [self.link.next_deadline(), give_up, sniff_deadline].into_iter().flatten().min()
        }
    }

    fn connections(&self) -> usize {
        self.clients.slab.len()
    }

    fn drain(&mut self, _reg: &Registry) {
        self.draining = true;
        self.clients.close_all();
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
            websockets: self.clients.slab.iter().filter(|(_, c)| c.wire == Wire::WebSocket).count() as u64,
            gaps: c.gaps,
            lagging: c.lagging,
            link: self.link.state_name().into(),
            bus: self.link.describe(),
            bus_reconnects: self.link.reconnects,
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
                kind: c.input.kind().into(),
                topics: c.topics.iter().map(|id| String::from_utf8_lossy(&self.topics.get(*id).name).into()).collect(),
                queues: c.consuming.queues.iter().map(|(q, _)| String::from_utf8_lossy(q).into()).collect(),
                unacked: c.consuming.unacked.into(),
                bytes_in: c.bytes_in,
                bytes_out: c.bytes_out,
                queued: c.out.queued() as u64,
            })
            .collect()
    }

    fn hand_off(&mut self, to: &mut Sender<handoff::Msg>) -> io::Result<bool> {
        self.export(to).map(|()| true)
    }

    fn take_over(&mut self, reg: &Registry, msg: handoff::Msg, fd: Option<OwnedFd>) -> io::Result<()> {
        self.import(reg, msg, fd)
    }
}
