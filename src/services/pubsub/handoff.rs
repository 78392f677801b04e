//! What a pub/sub worker hands its successor on reload, in one place beside
//! the state it moves: each client (its socket travels with it) and then the
//! channel link with the topics (its socket too, when it is up). Adding a
//! field to a client means adding it to `ClientState` and to the two
//! functions that fill and read it, here. The socket that carries it is the
//! runtime's (`runtime::handoff`).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use serde::{Deserialize, Serialize};

use super::clients::{mark_dirty, Client, Replies, Wire};
use super::link::{Asker, Confirm, Link, LinkError, State, TOKEN};
use super::nats_bus::Session;
use super::queues::Consuming;
use super::topics::{Cursor, Topic, Topics};
use super::PubSub;
use crate::protocol::frame::FrameReader;
use crate::protocol::input::Input;
use crate::runtime::handoff::{Payload, Sender};
use crate::runtime::outbound::Outbound;

#[derive(Debug, Serialize, Deserialize)]
pub enum Msg {
    Client(ClientState),
    /// The last message.
    Link(LinkState),
}

impl Payload for Msg {
    /// 2: bincode. 3: the line reader lost its telnet state. 4: postcard,
    /// replies held as one struct, output as (bytes, written).
    /// 5: a client's input is sniffing, lines, WebSocket or HTTP.
    /// 6: numbered messages: client flags, answers held, positions, what the
    /// link owes. 7: work-queue consumers, a count of answers held.
    /// 8: the link's reconnects and NATS session.
    const FORMAT: u8 = 8;
}

/// A client connection in flight (its socket travels with it).
#[derive(Debug, Serialize, Deserialize)]
pub struct ClientState {
    pub id: u64,
    pub peer: SocketAddr,
    /// What it speaks, with its unfinished input (a line, a frame, a message).
    pub input: Input,
    /// Output not yet written, from where the socket stopped taking it.
    pub out: (Vec<u8>, usize),
    pub replies: Replies,
    pub consuming: Consuming,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub closing: bool,
    pub seq: bool,
    pub confirm: bool,
}

/// The bus link and the topics. Sent after every client, whose ids the
/// topics refer to.
#[derive(Debug, Serialize, Deserialize)]
pub struct LinkState {
    /// Frames not yet written in full, and the bytes of the first of them
    /// already written.
    pub out: (Vec<u8>, usize),
    /// Bytes received and not yet parsed (the start of a frame).
    pub unparsed: Vec<u8>,
    pub topics: Vec<TopicState>,
    pub lost: u64,
    pub epoch: u64,
    /// What the link owes, clients named by id (their `key` is remapped).
    pub confirms: Vec<Confirm>,
    pub requests: Vec<(u32, Asker)>,
    pub next_req: u32,
    pub next_token: u64,
    pub reconnects: u64,
    /// On a NATS bus: the servers, subscriptions and PINGs in flight.
    pub nats: Option<Session>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TopicState {
    pub name: Vec<u8>,
    /// Client ids.
    pub subscribers: Vec<u64>,
    /// (client id, the number it starts from).
    pub waiting: Vec<(u64, u64)>,
    /// (position, client ids, fetch in flight).
    pub cursors: Vec<(u64, Vec<u64>, Option<u32>)>,
    pub next: u64,
    pub remote: bool,
    pub acks_pending: u32,
}

impl PubSub {
    pub(super) fn export(&self, to: &mut Sender<Msg>) -> io::Result<()> {
        for (_, c) in &self.clients.slab {
            let state = ClientState {
                id: c.id,
                peer: c.peer,
                input: c.input.clone(),
                out: c.out.parts(),
                replies: c.replies.clone(),
                consuming: c.consuming.clone(),
                bytes_in: c.bytes_in,
                bytes_out: c.bytes_out,
                closing: c.closing,
                seq: c.seq,
                confirm: c.confirm,
            };
            to.send(&Msg::Client(state), Some(c.stream.as_fd()))?;
        }
        let slab = &self.clients.slab;
        let topics = export_topics(&self.topics, |key| slab[key].id);
        let link = &self.link;
        let mut state = LinkState {
            out: (link.out.parts().0, 0),
            unparsed: Vec::new(),
            topics,
            lost: link.lost,
            epoch: link.epoch,
            confirms: link.owed.confirms.iter().map(|c| Confirm { key: 0, ..*c }).collect(),
            requests: link.owed.requests.iter().cloned().collect(),
            next_req: link.owed.next_req,
            next_token: self.next_token,
            reconnects: link.reconnects,
            nats: link.nats.as_ref().map(|bus| bus.export()),
        };
        let stream = match (&link.stream, link.schedule.state) {
            (Some(s), State::Up) => {
                state.out = link.out.parts();
                state.unparsed = match &link.nats {
                    Some(bus) => bus.unparsed().to_vec(),
                    None => link.reader.unparsed().to_vec(),
                };
                Some(s)
            }
            // Not connected: nothing has been written since the link broke.
            _ => None,
        };
        to.send(&Msg::Link(state), stream.map(|s| s.as_fd()))
    }

    pub(super) fn import(&mut self, reg: &Registry, msg: Msg, fd: Option<OwnedFd>) -> io::Result<()> {
        match (msg, fd) {
            (Msg::Client(s), Some(fd)) => {
                let stream = TcpStream::from_std(std::net::TcpStream::from(fd));
                let mut c = Client::new(stream, s.peer, s.id);
                c.wire = match s.input {
                    Input::WebSocket(_) => Wire::WebSocket,
                    _ => Wire::Lines,
                };
                let sniffing = matches!(s.input, Input::Sniffing(_));
                c.input = s.input;
                c.out = Outbound::from_parts(s.out.0, s.out.1);
                c.replies = s.replies;
                c.consuming = s.consuming;
                c.bytes_in = s.bytes_in;
                c.bytes_out = s.bytes_out;
                c.closing = s.closing;
                c.seq = s.seq;
                c.confirm = s.confirm;
                self.next_id = self.next_id.max(s.id + 1);
                let key = self.clients.add(c);
                if s.closing {
                    self.clients.close_soon(key);
                }
                if sniffing {
                    self.clients.sniff(key, Instant::now());
                }
            }
            (Msg::Client(_), None) => return Err(io::Error::other("a client arrived without its socket")),
            (Msg::Link(l), fd) => {
                let by_id: HashMap<u64, usize> = self.clients.slab.iter().map(|(k, c)| (c.id, k)).collect();
                for t in l.topics {
                    let id = import_topic(&mut self.topics, t, |cid| by_id.get(&cid).copied());
                    let t = self.topics.get(id);
                    let waiting = t.waiting.keys().copied();
                    let cursors = t.cursors.iter().flat_map(|c| c.clients.iter().copied());
                    for key in t.subscribers.iter().copied().chain(waiting).chain(cursors).collect::<Vec<_>>() {
                        self.clients.slab[key].topics.insert(id);
                    }
                    self.batches.behind(id);
                }
                let key_of = |id: u64| by_id.get(&id).copied().unwrap_or(usize::MAX);
                let owed = &mut self.link.owed;
                // A client that closed meanwhile has no key: its answers are dropped on arrival.
                owed.confirms = l.confirms.into_iter().map(|c| Confirm { key: key_of(c.id), ..c }).collect();
                owed.requests = l
                    .requests
                    .into_iter()
                    .map(|(r, a)| match a {
                        Asker::Client { id, token, topic, .. } => {
                            (r, Asker::Client { key: key_of(id), id, token, topic })
                        }
                        Asker::Queue { id, token, .. } => (r, Asker::Queue { key: key_of(id), id, token }),
                        cursor => (r, cursor),
                    })
                    .collect();
                owed.next_req = l.next_req;
                self.link.epoch = l.epoch;
                self.next_token = l.next_token;
                let stream = fd.map(|fd| TcpStream::from_std(std::net::TcpStream::from(fd)));
                self.link.reconnects = l.reconnects;
                adopt_link(&mut self.link, reg, stream, l.out, l.unparsed, l.lost, l.nats);
                for (key, c) in self.clients.slab.iter_mut() {
                    reg.register(&mut c.stream, Token(key), Interest::READABLE | Interest::WRITABLE)?;
                    mark_dirty(&mut self.clients.dirty, c, key);
                }
                // Frames the predecessor had received but not parsed.
                self.link_unread = true;
            }
        }
        Ok(())
    }
}

/// Carries on a link exported by a predecessor.
fn adopt_link(
    link: &mut Link,
    reg: &Registry,
    stream: Option<TcpStream>,
    out: (Vec<u8>, usize),
    unparsed: Vec<u8>,
    lost: u64,
    nats: Option<Session>,
) {
    let now = Instant::now();
    link.lost = lost;
    link.out = Outbound::from_parts_of(link.out.kind(), out.0, out.1);
    if let (Some(bus), Some(session)) = (&mut link.nats, nats) {
        bus.adopt(session, Vec::new());
    }
    match stream {
        Some(mut s) => match reg.register(&mut s, TOKEN, Interest::READABLE | Interest::WRITABLE) {
            Ok(()) => {
                match &mut link.nats {
                    Some(bus) => bus.adopt_input(unparsed),
                    None => link.reader = FrameReader::with_bytes(unparsed),
                }
                link.stream = Some(s);
                link.schedule.up();
                link.schedule.heard(now);
                link.schedule.welcomed(); // by the predecessor's channel server
            }
            Err(e) => link.down(reg, LinkError::Io(e), now),
        },
        None => {
            // A HELLO and SUBs queued for a connect in progress are redone;
            // what the broken link owed is settled as for any break.
            link.down_adopted(now);
        }
    }
}

/// Every topic with its remote state, subscribers mapped through `id`.
fn export_topics(topics: &Topics, id: impl Fn(usize) -> u64) -> Vec<TopicState> {
    let ids = |v: &mut dyn Iterator<Item = &usize>| v.map(|k| id(*k)).collect::<Vec<u64>>();
    topics
        .iter()
        .map(|t| TopicState {
            name: t.name.to_vec(),
            subscribers: ids(&mut t.subscribers.iter()),
            waiting: t.waiting.iter().map(|(&k, &from)| (id(k), from)).collect(),
            cursors: t.cursors.iter().map(|c| (c.pos, ids(&mut c.clients.iter()), c.fetching)).collect(),
            next: t.next,
            remote: t.remote,
            acks_pending: t.acks_pending,
        })
        .collect()
}

/// Restores a topic exported by a predecessor, subscribers mapped through `key`.
fn import_topic(topics: &mut Topics, t: TopicState, key: impl Fn(u64) -> Option<usize>) -> usize {
    let cursors = t.cursors.into_iter().map(|(pos, clients, fetching)| Cursor {
        pos,
        clients: clients.into_iter().filter_map(&key).collect(),
        fetching,
    });
    topics.insert(Topic {
        name: t.name.into(),
        subscribers: t.subscribers.into_iter().filter_map(&key).collect(),
        waiting: t.waiting.into_iter().filter_map(|(c, from)| Some((key(c)?, from))).collect(),
        cursors: cursors.filter(|c: &Cursor| !c.clients.is_empty()).collect(),
        next: t.next,
        remote: t.remote,
        acks_pending: t.acks_pending,
        batch: Vec::new(),
        batch_index: Vec::new(),
    })
}
