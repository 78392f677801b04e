//! From the link to the subscribers: the messages the channel server sent are
//! gathered per topic into one batch per read (or per `DELIVER_AT` topics),
//! encoded once as delivery lines into a shared buffer (and once more with
//! their numbers, only if a subscriber has `seq on`), and queued by reference
//! for every live subscriber. Readers that are positions rather than live (a
//! `resume`, a re-link, a subscriber that fell behind) are fed from the
//! retained messages the channel server sends back for a FETCH, one request
//! per position, and join the live ones when they reach the link's next
//! number. The link's other answers (PUBACK, history, info) are handed to the
//! clients that wait.
//! Each encoding of a batch (plain or numbered lines, for line or WebSocket
//! clients) is made once, and only if some reader needs it.
//! No socket I/O here: the frames are already read, the queues are flushed later.

use std::rc::Rc;

use log::{debug, error};

use super::clients::{Clients, Wire};
use super::link::{Asker, BusEvent, Link, LinkError};
use super::queues;
use super::topics::{Cursor, TopicId, Topics};
use crate::config::Lagging;
use crate::protocol::frame::{self, Frame, FETCH_MESSAGES};
use crate::protocol::reply;
use crate::protocol::websocket;
use crate::runtime::outbound::Batch;

/// Topics with a batch of lines waiting to be delivered, and topics with
/// readers that are positions.
///
/// A live subscriber whose send queue would go over `--max-send-queue` with
/// the next batch is not cut off: it stops taking live batches and becomes a
/// position at that batch's first number, costing nothing more than the queue
/// it has; as its queue drains it is fed from the retained messages, and it
/// is live again once it reaches the link's next number. Only one that falls
/// behind the retention loses messages, told in a `GAP` line. The others are
/// never held back by it. (`--lagging disconnect` keeps the older rule: a
/// subscriber over its send queue is cut off, `Clients::check_queue`.)
#[derive(Default)]
pub struct Batches {
    touched: Vec<TopicId>,
    behind: Vec<TopicId>,
}

/// The batches are delivered once this many topics have one, before the end
/// of the read: what a message touches (its topic, its subscribers and their
/// queues) is then still in the L1 cache when it is delivered. With 1000
/// topics in turn a whole read's worth is not, and each of those cache lines
/// was missed twice. (Counted in topics, not bytes: a read of one topic's
/// messages still makes one batch, shared by all its subscribers.)
const DELIVER_AT: usize = 32;

impl Batches {
    /// Handles every whole frame the link has read. Lines for one topic are
    /// gathered into that topic's batch and delivered once per read (or
    /// sooner, see `DELIVER_AT`).
    pub fn on_frames(&mut self, link: &mut Link, topics: &mut Topics, clients: &mut Clients) -> Result<(), LinkError> {
        if link.nats.is_some() {
            return self.on_nats(link, topics, clients);
        }
        loop {
            let frame = match link.reader.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return Err(LinkError::BadFrame(e)),
            };
            match frame {
                Frame::Msg { seq, topic, message } => self.gather(topics, clients, topic, Some(seq), message),
                Frame::SubAck { next, topic } => {
                    // Subscribers confirmed now must not get lines from before.
                    self.deliver(topics, clients);
                    if let Some((id, confirmed)) = topics.acknowledge(topic, next) {
                        for (key, from) in confirmed {
                            clients.confirm(key, topic);
                            topics.place(id, key, from);
                        }
                        self.behind(id);
                    }
                }
                Frame::SubErr { topic, reason } => {
                    self.deliver(topics, clients);
                    if let Some((id, refused)) = topics.refuse(topic) {
                        debug!("the channel server refused topic {}: {}", topic.escape_ascii(), reason.escape_ascii());
                        for key in refused {
                            clients.slab[key].topics.swap_remove(&id);
                            clients.refuse(key, topic, reason);
                        }
                    }
                }
                Frame::Pong => {} // heard: that is all it is for
                Frame::PubAck { seq, topic } => {
                    if let Some(c) = link.owed.confirms.pop_front() {
                        clients.fill(c.key, c.id, c.token, reply::published(topic, seq));
                    }
                }
                Frame::Fetched { req, gap, first, next, topic, messages } => {
                    self.deliver(topics, clients);
                    match link.owed.answered(req) {
                        Some(Asker::Cursor(_)) => self.fetched(topics, clients, req, gap, first, next, topic, messages),
                        Some(Asker::Client { key, id, token, .. }) => {
                            let mut text = Vec::new();
                            let mut n = 0;
                            for (i, m) in frame::fetched(messages).enumerate() {
                                reply::history(&mut text, topic, first + i as u64, m);
                                n += 1;
                            }
                            text.extend_from_slice(&reply::history_end(topic, n));
                            clients.fill(key, id, token, text);
                        }
                        Some(Asker::Queue { .. }) | None => {}
                    }
                }
                Frame::Infoed { req, first, last, messages, bytes } => {
                    if let Some(Asker::Client { key, id, token, topic }) = link.owed.answered(req) {
                        clients.fill(key, id, token, reply::topic_info(&topic, first, last, messages, bytes));
                    }
                }
                Frame::Job { .. } | Frame::QueueReply { .. } => queues::on_frame(&mut link.owed, clients, frame),
                Frame::Welcome { epoch, .. } => link.welcomed(epoch),
                Frame::Error(why) => {
                    let why = String::from_utf8_lossy(why).into_owned();
                    error!("the channel server refused this worker: {why}");
                    return Err(LinkError::Refused(why));
                }
                other => return Err(LinkError::Unexpected(format!("{other:?}"))),
            }
        }
        self.deliver(topics, clients);
        self.pump(link, topics, clients);
        Ok(())
    }

    /// Adds a message to its topic's batch. `seq` is the channel server's
    /// number (none on NATS, whose messages are not numbered).
    fn gather(&mut self, topics: &mut Topics, clients: &mut Clients, topic: &[u8], seq: Option<u64>, message: &[u8]) {
        let Some(id) = topics.find(topic) else { return };
        if let Some(seq) = seq {
            let t = topics.get_mut(id);
            if seq < t.next {
                return; // delivered already (numbered before our SUB took effect)
            }
            if seq > t.next && t.next != 0 {
                // Numbers the link skipped: the live readers fetch them.
                let pos = t.next;
                self.deliver(topics, clients);
                topics.all_behind(id, pos);
                self.behind(id);
            }
            topics.get_mut(id).next = seq + 1;
        }
        let t = topics.get_mut(id);
        if t.subscribers.is_empty() {
            return;
        }
        if t.batch.is_empty() {
            self.touched.push(id);
        }
        reply::received(&mut t.batch, topic, message);
        let end = t.batch.len() - 1;
        t.batch_index.push((seq.unwrap_or(0), (end - message.len()) as u32, end as u32));
        if self.touched.len() >= DELIVER_AT {
            self.deliver(topics, clients);
        }
    }

    /// Handles every whole operation a NATS server sent: messages into their
    /// topics' batches, the PONGs that confirm subscriptions.
    fn on_nats(&mut self, link: &mut Link, topics: &mut Topics, clients: &mut Clients) -> Result<(), LinkError> {
        while let Some(bus) = &mut link.nats {
            let event = match bus.next_event() {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(e) => return Err(LinkError::BadInput(e)),
            };
            match event {
                BusEvent::Message { topic, message } => self.gather(topics, clients, &topic, None, message),
                BusEvent::Subscribed(topic) => {
                    // Subscribers confirmed now must not get lines from before.
                    self.deliver(topics, clients);
                    if let Some((id, confirmed)) = topics.acknowledge(&topic, 0) {
                        for (key, from) in confirmed {
                            clients.confirm(key, &topic);
                            topics.place(id, key, from);
                        }
                    }
                }
                BusEvent::Up => link.nats_up(),
                BusEvent::Ping => link.pong(),
                BusEvent::Nothing => {}
            }
        }
        self.deliver(topics, clients);
        Ok(())
    }

    /// Queues each touched topic's batch for every live subscriber, in the
    /// encoding it needs (see `Forms`).
    fn deliver(&mut self, topics: &mut Topics, clients: &mut Clients) {
        for id in self.touched.drain(..) {
            let t = topics.get_mut(id);
            let msgs = t.batch_index.len() as u32;
            let mut forms = Forms::for_readers(t.subscribers.len());
            let mut behind = Vec::new();
            for &key in &t.subscribers {
                let c = &clients.slab[key];
                let chunk = forms.get(c.wire, c.seq, &t.batch, || {
                    let mut out = Vec::with_capacity(t.batch.len() + 8 * t.batch_index.len());
                    for &(seq, start, end) in &t.batch_index {
                        reply::received_seq(&mut out, &t.name, seq, &t.batch[start as usize..end as usize]);
                    }
                    out
                });
                let over = c.out.queued() + chunk.bytes().len() > clients.max_send_queue;
                if over && clients.lagging == Lagging::Gap && !c.closing {
                    behind.push(key); // it is not taking them fast enough: see `fall_behind`
                    continue;
                }
                clients.deliver(key, chunk, msgs);
            }
            if !behind.is_empty() {
                let pos = t.batch_index[0].0;
                for key in &behind {
                    t.subscribers.swap_remove(key);
                    debug!("{} fell behind on {} at #{pos}", clients.slab[*key].peer, t.name.escape_ascii());
                }
                clients.counters.lagging += behind.len() as u64;
                t.cursors.push(Cursor { pos, clients: behind, fetching: None });
                if !self.behind.contains(&id) {
                    self.behind.push(id);
                }
            }
            t.batch.clear();
            t.batch_index.clear();
            if t.batch.capacity() > 1 << 20 {
                t.batch = Vec::new();
                t.batch_index = Vec::new();
            }
        }
    }

    /// Remembers a topic that has (or may have) readers that are positions.
    pub fn behind(&mut self, id: TopicId) {
        if !self.behind.contains(&id) {
            self.behind.push(id);
        }
    }

    /// Moves each position on: one that has reached the link's next number
    /// joins the live readers; one before it asks for the retained messages
    /// from there, once its readers have room for them (half their send
    /// queue free), so that catching up never fills a queue.
    pub fn pump(&mut self, link: &mut Link, topics: &mut Topics, clients: &Clients) {
        self.behind.retain(|&id| {
            let Some(t) = topics.get_opt_mut(id) else { return false };
            let (next, name) = (t.next, Box::<[u8]>::from(&*t.name));
            if next != 0 {
                topics.join(id, next);
            }
            let t = topics.get_mut(id);
            t.cursors.retain_mut(|c| {
                if c.fetching.is_some() || next == 0 || c.pos >= next {
                    return true; // waiting for an answer, or for the numbers to reach it
                }
                let room = c.clients.iter().all(|&k| clients.slab[k].out.queued() <= clients.max_send_queue / 2);
                if room {
                    let (from, limit) = (c.pos, FETCH_MESSAGES as u32);
                    c.fetching = link.request(Asker::Cursor(name.clone()), |req| Frame::Fetch {
                        req,
                        from,
                        limit,
                        topic: &name,
                    });
                }
                true
            });
            !t.cursors.is_empty()
        });
    }

    /// The retained messages a position asked for: told as a GAP line where
    /// numbers are gone, then delivered (encoded once per form for all its
    /// readers); the position moves on.
    #[allow(clippy::too_many_arguments)]
    fn fetched(
        &mut self,
        topics: &mut Topics,
        clients: &mut Clients,
        req: u32,
        gap: Option<(u64, u64)>,
        first: u64,
        next: u64,
        topic: &[u8],
        messages: &[u8],
    ) {
        let Some(id) = topics.find(topic) else { return };
        let t = topics.get_mut(id);
        let Some(c) = t.cursors.iter_mut().find(|c| c.fetching == Some(req)) else { return };
        c.fetching = None;
        if let Some((g0, g1)) = gap {
            for &key in &c.clients {
                clients.gap(key, topic, (g0, g1));
            }
        }
        let count = frame::fetched(messages).count() as u32;
        if count > 0 {
            let mut plain = Vec::with_capacity(messages.len() + 32 * count as usize);
            frame::fetched(messages).for_each(|m| reply::received(&mut plain, topic, m));
            let mut forms = Forms::for_readers(c.clients.len());
            for &key in &c.clients {
                let cl = &clients.slab[key];
                let chunk = forms.get(cl.wire, cl.seq, &plain, || {
                    let mut out = Vec::with_capacity(plain.len() + 8 * count as usize);
                    for (i, m) in frame::fetched(messages).enumerate() {
                        reply::received_seq(&mut out, topic, first + i as u64, m);
                    }
                    out
                });
                clients.deliver_fetched(key, chunk, count);
            }
        }
        c.pos = c.pos.max(next);
        self.behind(id);
    }
}

/// The encodings of one batch of deliveries, each made the first time a
/// reader needs it: plain lines, numbered lines (`seq on`), and each of those
/// as WebSocket text frames, one per line. Shared by reference among the
/// readers, except for a sole reader of lines, whose queue takes a copy: an
/// allocation per batch would cost more (with many topics of one subscriber
/// each, a batch is often one message).
struct Forms {
    readers: usize,
    numbered: Option<Vec<u8>>,
    shared: [Option<Rc<[u8]>>; 4],
}

impl Forms {
    fn for_readers(readers: usize) -> Forms {
        Forms { readers, numbered: None, shared: Default::default() }
    }

    fn get<'a>(&'a mut self, wire: Wire, seq: bool, plain: &'a [u8], numbered: impl FnOnce() -> Vec<u8>) -> Batch<'a> {
        let Forms { readers, numbered: made, shared } = self;
        let lines: &[u8] = match seq {
            true => made.get_or_insert_with(numbered),
            false => plain,
        };
        if *readers == 1 && wire == Wire::Lines {
            return Batch::Copy(lines);
        }
        let form = &mut shared[2 * usize::from(wire == Wire::WebSocket) + usize::from(seq)];
        Batch::Shared(form.get_or_insert_with(|| match wire {
            Wire::Lines => Rc::from(lines),
            Wire::WebSocket => websocket::frames_of_lines(lines).into(),
        }))
    }
}
