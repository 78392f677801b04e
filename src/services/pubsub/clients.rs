//! The client connections of a pub/sub worker and their send side: replies
//! in the order of the commands, deliveries, the slow-consumer rule, flushing,
//! and closing. The work found during an event batch is deferred to its end.
//! A client is a line client or a WebSocket client (its `wire`): the same
//! replies, each encoded for its wire.

use std::collections::{HashMap, VecDeque};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use indexmap::IndexSet;
use log::{debug, warn};
use mio::net::TcpStream;
use serde::{Deserialize, Serialize};
use slab::Slab;

use super::queues::{Consuming, MAX_AWAITING};
use super::topics::TopicId;
use crate::config::Lagging;
use crate::protocol::input::Input;
use crate::protocol::reply;
use crate::protocol::websocket::{self, code};
use crate::runtime::outbound::{Batch, Outbound};

/// How long a client being closed gets to take its last output.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long a new connection may stay silent before it is taken for a line
/// client and greeted. A browser sends its request as soon as it is
/// connected; a person at a telnet prompt waits for the welcome.
pub const SNIFF_TIME: Duration = Duration::from_millis(200);

/// What a delivery and a flush read comes first, in one cache line (the
/// queue, the flags, the socket); `repr(C)` keeps that order and `align` the
/// line's bounds: with 1000 clients served in turn, each line of a client
/// touched is a cache miss per message.
#[repr(C, align(64))]
pub struct Client {
    pub out: Outbound,
    /// How replies and deliveries are encoded for it.
    pub wire: Wire,
    /// `seq on`: deliveries carry their numbers.
    pub seq: bool,
    /// Close once the output queue is written (quit, slow consumer, drain).
    pub closing: bool,
    /// Waiting in the flush list.
    pub dirty: bool,
    /// Not read while too much output waits for it.
    pub input_paused: bool,
    /// All output written and the sending side shut: read (and dropped) until
    /// the client closes, so that a WebSocket or HTTP client still sending
    /// gets all of it rather than a reset.
    pub shut: bool,
    /// Waiting in the list of clients to read again.
    pub unread: bool,
    /// `confirm on`: each publish is answered once committed.
    pub confirm: bool,
    pub stream: TcpStream,
    pub bytes_out: u64,
    pub peer: SocketAddr,
    pub id: u64,
    pub input: Input,
    pub replies: Replies,
    /// A set: looking a topic up costs the same for one or 1024 of them.
    pub topics: IndexSet<TopicId>,
    pub consuming: Consuming,
    pub bytes_in: u64,
}

impl Client {
    pub fn new(stream: TcpStream, peer: SocketAddr, id: u64) -> Client {
        Client {
            stream,
            peer,
            id,
            input: Input::default(),
            wire: Wire::Lines,
            out: Outbound::default(),
            replies: Replies::default(),
            topics: IndexSet::new(),
            consuming: Consuming::default(),
            bytes_in: 0,
            bytes_out: 0,
            closing: false,
            shut: false,
            dirty: false,
            input_paused: false,
            unread: false,
            seq: false,
            confirm: false,
        }
    }
}

/// How a client is written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// Lines ending in LF (line clients; HTTP responses are pushed as they are).
    Lines,
    /// One WebSocket text message per reply or delivery.
    WebSocket,
}

impl Wire {
    /// One reply (parts ending in LF) in this wire's encoding.
    fn encode(self, parts: &[&[u8]]) -> Vec<u8> {
        match self {
            Wire::Lines => parts.concat(),
            Wire::WebSocket => websocket::reply(parts),
        }
    }

    /// Queues one reply.
    pub fn push(self, out: &mut Outbound, parts: &[&[u8]]) {
        match self {
            Wire::Lines => out.push(parts),
            Wire::WebSocket => out.push(&[&websocket::reply(parts)]),
        }
    }
}

/// A client's replies in the order of its commands: the replies that follow
/// a subscription the channel server has not confirmed yet, or an answer
/// that comes from it later (a confirm, a history), wait here.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Replies {
    held: VecDeque<Held>,
    /// How many of `held` are `Answer`s.
    answers: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Held {
    /// The `OK subscribed` of this topic (`from` a number, for a resume)
    /// goes here once it is confirmed.
    Subscription(Box<[u8]>, u64),
    /// The answer with this token goes here (`Replies::fill`).
    Answer(u64),
    Text(Vec<u8>),
}

impl Replies {
    /// Queues a reply on `out`, or behind a reply still held. Returns the
    /// bytes held (they count against the send queue limit).
    pub fn reply(&mut self, out: &mut Outbound, wire: Wire, parts: &[&[u8]]) -> usize {
        if self.held.is_empty() {
            wire.push(out, parts);
            return 0;
        }
        let encoded = wire.encode(parts);
        if let Some(Held::Text(t)) = self.held.back_mut() {
            t.extend_from_slice(&encoded);
        } else {
            self.held.push_back(Held::Text(encoded));
        }
        self.held.iter().map(|h| if let Held::Text(t) = h { t.len() } else { 0 }).sum()
    }

    /// Holds the next replies until `topic` is confirmed.
    pub fn hold(&mut self, topic: &[u8], from: u64) {
        self.held.push_back(Held::Subscription(topic.into(), from));
    }

    /// Holds the next replies until the answer `token` is filled in.
    pub fn hold_answer(&mut self, token: u64) {
        self.held.push_back(Held::Answer(token));
        self.answers += 1;
    }

    /// How many answers are awaited.
    pub fn awaiting(&self) -> usize {
        self.answers
    }

    /// Puts `OK subscribed` in the place held for it and releases what follows
    /// up to the next place still held.
    pub fn confirm(&mut self, out: &mut Outbound, wire: Wire, topic: &[u8]) {
        let from = self.held.iter().find_map(|h| match h {
            Held::Subscription(t, from) if **t == *topic => Some(*from),
            _ => None,
        });
        let text = match from {
            Some(0) | None => reply::subscribed(topic).concat(),
            Some(n) => reply::subscribed_from(topic, n),
        };
        self.answer(out, topic, wire.encode(&[&text]));
    }

    /// Puts `line` in the place held for `topic`'s confirmation and releases
    /// what follows the same way; false if no place was held for it.
    pub fn answer(&mut self, out: &mut Outbound, topic: &[u8], line: Vec<u8>) -> bool {
        let slot = self.held.iter_mut().find(|h| matches!(h, Held::Subscription(t, _) if **t == *topic));
        let found = slot.is_some();
        if let Some(h) = slot {
            *h = Held::Text(line);
        }
        self.release(out);
        found
    }

    /// Puts the answer `token` in the place held for it (nothing if none is).
    pub fn fill(&mut self, out: &mut Outbound, token: u64, text: Vec<u8>) {
        if let Some(h) = self.held.iter_mut().find(|h| matches!(h, Held::Answer(t) if *t == token)) {
            *h = Held::Text(text);
            self.answers -= 1;
        }
        self.release(out);
    }

    fn release(&mut self, out: &mut Outbound) {
        while let Some(Held::Text(_)) = self.held.front() {
            let Some(Held::Text(t)) = self.held.pop_front() else { unreachable!() };
            out.push(&[&t]);
        }
    }

    pub fn clear(&mut self) {
        self.held.clear();
        self.answers = 0;
    }
}

#[derive(Default)]
pub struct Counters {
    pub msgs_in: u64,
    pub msgs_out: u64,
    pub dropped: u64,
    pub slow_consumers: u64,
    /// GAP lines sent: numbers a reader asked for were no longer retained.
    pub gaps: u64,
    /// Times a subscriber fell behind its send queue and became a position.
    pub lagging: u64,
}

/// The clients and the work deferred to the end of the event batch.
pub struct Clients {
    pub slab: Slab<Client>,
    /// Slab keys by client id: the channel server names clients by id.
    pub by_id: HashMap<u64, usize>,
    /// Clients with output to write.
    pub dirty: Vec<usize>,
    /// Clients with input left unread (backpressure, or their turn ran out).
    pub unread: Vec<usize>,
    /// Clients to remove at the end of the batch (never during it, so slab
    /// keys held in lists and topics stay valid).
    pub to_close: Vec<usize>,
    /// Clients being closed: (key, id, when to give up on their output).
    closing: Vec<(usize, u64, Instant)>,
    /// New connections not yet known to be line or HTTP clients, in the
    /// order of their deadlines: (key, id, when silence makes it a line client).
    sniffing: VecDeque<(usize, u64, Instant)>,
    pub max_send_queue: usize,
    pub lagging: Lagging,
    pub counters: Counters,
}

impl Clients {
    pub fn new(max_send_queue: usize, lagging: Lagging) -> Clients {
        Clients {
            slab: Slab::new(),
            by_id: HashMap::new(),
            dirty: Vec::new(),
            unread: Vec::new(),
            to_close: Vec::new(),
            closing: Vec::new(),
            sniffing: VecDeque::new(),
            max_send_queue,
            lagging,
            counters: Counters::default(),
        }
    }

    /// Queues a reply, behind any reply still held for a subscription.
    pub fn reply(&mut self, key: usize, parts: &[&[u8]]) {
        let c = &mut self.slab[key];
        let held = c.replies.reply(&mut c.out, c.wire, parts);
        if held > self.max_send_queue {
            warn!("{} sent commands faster than they could be answered: disconnecting", c.peer);
            c.replies.clear();
            c.wire.push(&mut c.out, &reply::error(reply::TOO_MANY_WAITING));
            self.close_with(key, code::POLICY, "too many commands waiting for a reply");
        } else if held == 0 {
            self.check_queue(key);
        }
    }

    pub fn error(&mut self, key: usize, why: &str) {
        self.reply(key, &reply::error(why));
    }

    /// Holds the client's next replies until `topic` is confirmed.
    pub fn hold(&mut self, key: usize, topic: &[u8], from: u64) {
        self.slab[key].replies.hold(topic, from);
    }

    /// Fills in the answer `token` of client `key` if it is still client `id`.
    pub fn fill(&mut self, key: usize, id: u64, token: u64, text: Vec<u8>) {
        let Some(c) = self.slab.get_mut(key).filter(|c| c.id == id) else { return };
        c.replies.fill(&mut c.out, token, c.wire.encode(&[&text]));
        if c.input_paused && c.replies.awaiting() <= MAX_AWAITING / 2 {
            c.input_paused = false; // reading checks every reason to pause again
            self.read_later(key);
        }
        self.check_queue(key);
    }

    /// Adds a client; returns its key.
    pub fn add(&mut self, c: Client) -> usize {
        let id = c.id;
        let key = self.slab.insert(c);
        self.by_id.insert(id, key);
        key
    }

    /// Removes a client (at the end of a batch).
    pub fn remove(&mut self, key: usize) -> Option<Client> {
        let c = self.slab.try_remove(key)?;
        self.by_id.remove(&c.id);
        Some(c)
    }

    /// The channel server confirmed the client's subscription to `topic`.
    pub fn confirm(&mut self, key: usize, topic: &[u8]) {
        let c = &mut self.slab[key];
        c.replies.confirm(&mut c.out, c.wire, topic);
        mark_dirty(&mut self.dirty, c, key);
    }

    /// The channel server refused the client's subscription to `topic` (one of
    /// its limits): the `ERR` goes in the place held for the `OK`, or at once
    /// if the subscription had been confirmed (on an earlier link).
    pub fn refuse(&mut self, key: usize, topic: &[u8], why: &[u8]) {
        let parts = reply::cannot_subscribe(topic, why);
        let c = &mut self.slab[key];
        if c.replies.answer(&mut c.out, topic, c.wire.encode(&parts)) {
            mark_dirty(&mut self.dirty, c, key);
        } else {
            self.reply(key, &parts);
        }
    }

    /// Queues bytes as they are (an HTTP response, a WebSocket control frame).
    pub fn push_raw(&mut self, key: usize, bytes: &[u8]) {
        self.slab[key].out.push(&[bytes]);
        self.check_queue(key);
    }

    /// Closes the client like `close_soon`; a WebSocket client is sent a
    /// close frame with `status` first.
    pub fn close_with(&mut self, key: usize, status: u16, reason: &str) {
        let c = &mut self.slab[key];
        if c.wire == Wire::WebSocket && !c.closing {
            c.out.push(&[&websocket::close(status, reason)]);
        }
        self.close_soon(key);
    }

    /// Closes the client once its last output is written, or after
    /// CLOSE_GRACE if it does not take it (a client that stopped reading).
    pub fn close_soon(&mut self, key: usize) {
        let c = &mut self.slab[key];
        c.closing = true;
        self.closing.push((key, c.id, Instant::now() + CLOSE_GRACE));
        mark_dirty(&mut self.dirty, c, key);
    }

    /// Closes the clients whose grace has run out; returns the next deadline.
    pub fn expire_closing(&mut self, now: Instant) -> Option<Instant> {
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

    /// Starts the clock on a new connection's silence.
    pub fn sniff(&mut self, key: usize, now: Instant) {
        self.sniffing.push_back((key, self.slab[key].id, now + SNIFF_TIME));
    }

    /// The connections whose time to speak first is over (those still there),
    /// and the next deadline.
    pub fn sniffed(&mut self, now: Instant) -> (Vec<usize>, Option<Instant>) {
        let mut due = Vec::new();
        while let Some(&(key, id, _)) = self.sniffing.front().filter(|s| s.2 <= now) {
            self.sniffing.pop_front();
            if self.slab.get(key).is_some_and(|c| c.id == id) {
                due.push(key);
            }
        }
        if self.sniffing.is_empty() && self.sniffing.capacity() > 1024 {
            self.sniffing = VecDeque::new(); // after a burst of connections
        }
        (due, self.sniffing.front().map(|s| s.2))
    }

    /// Queues a shared batch of `msgs` lines for one subscriber; a slow one
    /// is cut off (`check_queue`) and the others are not held back.
    pub fn deliver(&mut self, key: usize, batch: Batch<'_>, msgs: u32) {
        if self.push_delivery(key, batch, msgs) {
            self.check_queue(key);
        }
    }

    /// Queues retained messages fetched for a reader that is a position. It
    /// asked for them only with half its send queue free, so they are never
    /// a reason to cut it off (one answer may hold up to 256 KiB, or one
    /// larger message).
    pub fn deliver_fetched(&mut self, key: usize, batch: Batch<'_>, msgs: u32) {
        if self.push_delivery(key, batch, msgs) {
            let c = &mut self.slab[key];
            mark_dirty(&mut self.dirty, c, key);
        }
    }

    /// Queues a delivery unless the client is closing (then it is dropped).
    fn push_delivery(&mut self, key: usize, batch: Batch<'_>, msgs: u32) -> bool {
        let c = &mut self.slab[key];
        if c.closing {
            self.counters.dropped += u64::from(msgs);
            return false;
        }
        c.out.push_batch(batch, msgs);
        self.counters.msgs_out += u64::from(msgs);
        true
    }

    /// Tells a reader that numbers it is owed are gone (`first..=last`): one
    /// `GAP` line, in line with its deliveries.
    pub fn gap(&mut self, key: usize, topic: &[u8], (first, last): (u64, u64)) {
        let c = &mut self.slab[key];
        if c.closing {
            return;
        }
        self.counters.gaps += 1;
        c.wire.push(&mut c.out, &[&reply::gap(topic, first, last)]);
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
            c.wire.push(&mut c.out, &reply::error(&reply::slow_consumer(self.max_send_queue)));
            return self.close_with(key, code::POLICY, "slow consumer");
        }
        mark_dirty(&mut self.dirty, c, key);
    }

    /// Writes what the client has queued, as far as its socket takes it.
    pub fn flush(&mut self, key: usize) {
        let Some(c) = self.slab.get_mut(key) else { return };
        c.dirty = false;
        match c.out.write_to(&mut c.stream) {
            Ok(n) => {
                c.bytes_out += n as u64;
                let mut read_again = false;
                if c.closing && c.out.is_empty() && !c.shut {
                    if c.wire == Wire::Lines && !matches!(c.input, Input::Http) {
                        self.to_close.push(key);
                    } else {
                        // Closing with input unread would send a reset, which can
                        // destroy the close frame or response before it is read.
                        let _ = c.stream.shutdown(Shutdown::Write);
                        c.shut = true;
                        read_again = true;
                    }
                }
                if c.input_paused && c.out.queued() <= self.max_send_queue / 4 {
                    c.input_paused = false;
                    read_again = true;
                }
                if read_again {
                    self.read_later(key);
                }
            }
            Err(e) => {
                debug!("{}: write failed: {e}", c.peer);
                self.to_close.push(key);
            }
        }
    }

    /// Remembers to read a client again at the end of the batch. (A key left
    /// here by a client since closed is harmless: its successor is just read.)
    pub fn read_later(&mut self, key: usize) {
        if let Some(c) = self.slab.get_mut(key).filter(|c| !c.unread) {
            c.unread = true;
            self.unread.push(key);
        }
    }

    /// Stop reading; close every client once its output is written.
    pub fn close_all(&mut self) {
        for (key, c) in self.slab.iter_mut() {
            if c.wire == Wire::WebSocket && !c.closing {
                c.out.push(&[&websocket::close(code::GOING_AWAY, "server stopping")]);
            }
            c.closing = true;
            mark_dirty(&mut self.dirty, c, key);
        }
    }
}

pub fn mark_dirty(dirty: &mut Vec<usize>, c: &mut Client, key: usize) {
    if !c.dirty {
        c.dirty = true;
        dirty.push(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(out: &Outbound) -> String {
        String::from_utf8(out.parts().0).unwrap()
    }

    /// Replies come in the order of the commands: those after an unconfirmed
    /// subscribe wait for it, and its `OK subscribed` takes the place held.
    #[test]
    fn replies_wait_behind_an_unconfirmed_subscription() {
        let (mut r, mut out) = (Replies::default(), Outbound::default());
        assert_eq!(r.reply(&mut out, Wire::Lines, &[reply::PONG]), 0);
        r.hold(b"a", 0);
        assert_eq!(r.reply(&mut out, Wire::Lines, &reply::subscribed(b"b")), 16);
        r.hold(b"c", 7);
        assert_eq!(r.reply(&mut out, Wire::Lines, &[reply::PONG]), 21);
        assert_eq!(text(&out), "PONG\n");
        // c is confirmed first: nothing moves, a is still ahead of it.
        r.confirm(&mut out, Wire::Lines, b"c");
        assert_eq!(text(&out), "PONG\n");
        r.confirm(&mut out, Wire::Lines, b"a");
        assert_eq!(text(&out), "PONG\nOK subscribed a\nOK subscribed b\nOK subscribed c from 7\nPONG\n");
        // An answer filled in later keeps its place too.
        r.hold_answer(1);
        r.reply(&mut out, Wire::Lines, &[reply::BYE]);
        r.fill(&mut out, 2, b"nothing held for this\n".to_vec());
        assert!(text(&out).ends_with("PONG\n"));
        r.fill(&mut out, 1, b"OK published t#1\n".to_vec());
        assert!(text(&out).ends_with("PONG\nOK published t#1\nBye\n"));
        // Nothing held: straight out.
        assert_eq!(r.reply(&mut out, Wire::Lines, &[reply::BYE]), 0);
        assert!(text(&out).ends_with("Bye\nBye\n"));
    }

    /// On a WebSocket each reply is one text message, held or not.
    #[test]
    fn websocket_replies_are_one_message_each() {
        let (mut r, mut out) = (Replies::default(), Outbound::default());
        r.hold(b"a", 0);
        r.reply(&mut out, Wire::WebSocket, &[reply::PONG]);
        r.confirm(&mut out, Wire::WebSocket, b"a");
        r.reply(&mut out, Wire::WebSocket, &[reply::BYE]);
        assert_eq!(out.parts().0, b"\x81\x0fOK subscribed a\x81\x04PONG\x81\x03Bye");
    }

    #[test]
    fn a_confirmation_for_nothing_held_changes_nothing() {
        let (mut r, mut out) = (Replies::default(), Outbound::default());
        r.hold(b"a", 0);
        r.reply(&mut out, Wire::Lines, &[reply::PONG]);
        r.confirm(&mut out, Wire::Lines, b"zzz");
        assert!(out.is_empty());
        r.confirm(&mut out, Wire::Lines, b"a");
        assert_eq!(text(&out), "OK subscribed a\nPONG\n");
    }
}
