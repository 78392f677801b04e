//! Work queues at the channel server: which clients consume which queue,
//! which jobs each holds unacknowledged, and the order jobs go out in.
//!
//! Pure: no sockets, no frames, time is an argument. The jobs themselves
//! (ids, payloads, try counts) live in the store, which makes them durable;
//! this keeps only what is lost with the process anyway (consumers and who
//! holds what) and rebuilds the ready lists from the store at start. What is
//! to be sent comes back as [`Delivery`] values.
//!
//! Rules (the README's guarantees):
//! - a job is held by one consumer at a time; each consumer holds at most
//!   its `prefetch` jobs; jobs go round-robin among consumers with room;
//! - a job that comes back (nack, consumer gone, ack timeout) goes to the
//!   front of its queue with its try count one higher, once the count
//!   reaches `max_tries` it moves to the dead-letter queue instead;
//! - `enqueue` is refused past `max_jobs` in a queue or `max_bytes` of
//!   payload in all queues; moves to a dead-letter queue are never refused
//!   (they add nothing).
//!
//! Try counts: the store's count is the number of failed deliveries; it is
//! logged (`set_tries`) when a job comes back, not at each delivery, so a
//! job out with a consumer when the channel server dies is delivered again
//! after a restart with the same try number.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::rc::Rc;

use bytes::Bytes;

pub use crate::config::QueueLimits as Limits;
use crate::protocol::queue;
use crate::store::{Lsn, Store};

/// One client connection of one worker link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Client {
    /// The channel server's key for the worker's link.
    pub link: usize,
    /// The worker's id for the connection.
    pub id: u64,
}

/// A job to send to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub to: Client,
    pub queue: Rc<[u8]>,
    pub id: u64,
    /// 1 for the first delivery.
    pub attempt: u32,
    pub payload: Bytes,
}

/// Why a command was refused: the text of its `ERR` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    QueueFull { queue: String, max: u64 },
    AllFull { max: u64 },
    UnknownQueue(String),
    NotWaiting { queue: String, id: u64 },
    NotYours { queue: String, id: u64 },
    NotConsuming(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::QueueFull { queue, max } => {
                write!(f, "queue full: '{queue}' holds {max} jobs (--max-queue-jobs); retry once consumers catch up")
            }
            Refusal::AllFull { max } => write!(
                f,
                "queue full: the queues hold {max} bytes of jobs (--max-queue-bytes); retry once consumers catch up"
            ),
            Refusal::UnknownQueue(q) => write!(f, "no queue '{q}'"),
            Refusal::NotWaiting { queue, id } => write!(f, "job {queue}#{id} is not waiting for an acknowledgement"),
            Refusal::NotYours { queue, id } => write!(f, "job {queue}#{id} was delivered to another connection"),
            Refusal::NotConsuming(q) => write!(f, "not consuming '{q}'"),
        }
    }
}

/// A line of `queues`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueFigures {
    pub name: Rc<[u8]>,
    pub ready: u64,
    pub unacked: u64,
    pub consumers: u64,
}

/// Totals for `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub queues: u64,
    pub ready: u64,
    pub unacked: u64,
    pub consumers: u64,
    pub bytes: u64,
    pub delivered: u64,
    pub acked: u64,
    /// Deliveries that came back (nack, consumer gone, ack timeout).
    pub returned: u64,
    pub timed_out: u64,
    pub dead_lettered: u64,
}

struct Consumer {
    client: Client,
    prefetch: u32,
    unacked: u32,
}

/// Who holds an unacknowledged job, and until when.
struct Held {
    client: Client,
    deadline_ms: u64,
}

#[derive(Default)]
struct Queue {
    ready: VecDeque<u64>,
    consumers: Vec<Consumer>,
    /// Where the round-robin looks first.
    next: usize,
    unacked: HashMap<u64, Held>,
}

impl Queue {
    fn idle(&self) -> bool {
        self.ready.is_empty() && self.unacked.is_empty() && self.consumers.is_empty()
    }
}

pub struct Queues {
    limits: Limits,
    queues: HashMap<Rc<[u8]>, Queue>,
    /// The queues each client consumes.
    by_client: HashMap<Client, Vec<Rc<[u8]>>>,
    /// Deliveries by deadline: the timeout is one constant, so delivery
    /// order is deadline order. Entries of jobs since settled are skipped
    /// (their `Held` is gone or has another deadline), and swept out once
    /// they outnumber the live ones: otherwise this would hold every
    /// delivery of the last `ack_timeout` (millions at full speed) rather
    /// than what consumers hold.
    deadlines: VecDeque<(u64, Rc<[u8]>, u64)>,
    /// The length of `deadlines` that triggers the next sweep.
    sweep_at: usize,
    totals: Totals,
}

/// Settled entries `deadlines` may hold beyond twice the live ones.
const DEADLINE_SLACK: usize = 1024;

impl Queues {
    pub fn new(limits: Limits) -> Queues {
        Queues {
            limits,
            queues: HashMap::new(),
            by_client: HashMap::new(),
            deadlines: VecDeque::new(),
            sweep_at: DEADLINE_SLACK,
            totals: Totals::default(),
        }
    }

    /// Takes the jobs pending in a store just opened as ready, in id order.
    pub fn load(&mut self, store: &Store) {
        for (name, info) in store.queues().filter(|(_, info)| info.jobs > 0) {
            let ready = store.jobs(name).map(|j| j.id).collect();
            self.queues.insert(name.into(), Queue { ready, ..Queue::default() });
            self.totals.bytes += info.bytes;
        }
    }

    /// Adds a job; its id, and the store's lsn to confirm it by.
    pub fn enqueue(
        &mut self,
        store: &mut Store,
        queue: &[u8],
        payload: &[u8],
        now_ms: u64,
        out: &mut Vec<Delivery>,
    ) -> Result<(u64, Lsn), Refusal> {
        let jobs = self.queues.get(queue).map_or(0, |q| q.ready.len() + q.unacked.len()) as u64;
        if jobs >= self.limits.max_jobs {
            return Err(Refusal::QueueFull { queue: text(queue), max: self.limits.max_jobs });
        }
        if self.totals.bytes + payload.len() as u64 > self.limits.max_bytes {
            return Err(Refusal::AllFull { max: self.limits.max_bytes });
        }
        let a = store.enqueue(queue, payload, now_ms);
        self.totals.bytes += payload.len() as u64;
        let name = self.queue(queue);
        self.queues.get_mut(&name).expect("just made").ready.push_back(a.seq);
        self.dispatch(store, &name, now_ms, out);
        Ok((a.seq, a.lsn))
    }

    /// Starts (or, with a new prefetch, changes) a client's consumption.
    pub fn consume(
        &mut self,
        store: &mut Store,
        client: Client,
        queue: &[u8],
        prefetch: u32,
        now_ms: u64,
        out: &mut Vec<Delivery>,
    ) {
        let name = self.queue(queue);
        let q = self.queues.get_mut(&name).expect("just made");
        match q.consumers.iter_mut().find(|c| c.client == client) {
            Some(c) => c.prefetch = prefetch,
            None => {
                q.consumers.push(Consumer { client, prefetch, unacked: 0 });
                self.by_client.entry(client).or_default().push(name.clone());
            }
        }
        self.dispatch(store, &name, now_ms, out);
    }

    /// Stops a client's consumption of `queue`; the jobs it held go back.
    /// Returns how many.
    pub fn unconsume(
        &mut self,
        store: &mut Store,
        client: Client,
        queue: &[u8],
        now_ms: u64,
        out: &mut Vec<Delivery>,
    ) -> Result<u32, Refusal> {
        let Some(q) = self.queues.get_mut(queue) else { return Err(Refusal::NotConsuming(text(queue))) };
        let Some(i) = q.consumers.iter().position(|c| c.client == client) else {
            return Err(Refusal::NotConsuming(text(queue)));
        };
        let c = q.consumers.remove(i);
        if q.next > i {
            q.next -= 1;
        }
        let mut held: Vec<u64> = q.unacked.iter().filter(|(_, h)| h.client == client).map(|(&id, _)| id).collect();
        held.sort_unstable();
        debug_assert_eq!(held.len(), c.unacked as usize);
        for id in &held {
            q.unacked.remove(id);
        }
        let name: Rc<[u8]> = self.queues.get_key_value(queue).expect("checked").0.clone();
        if let Some(qs) = self.by_client.get_mut(&client) {
            qs.retain(|n| *n != name);
            if qs.is_empty() {
                self.by_client.remove(&client);
            }
        }
        // Back to the front in id order: the highest goes first.
        for &id in held.iter().rev() {
            self.put_back(store, &name, id, now_ms, out);
        }
        self.dispatch(store, &name, now_ms, out);
        self.forget_if_idle(&name);
        Ok(held.len() as u32)
    }

    /// A client is gone: everything it consumed stops. Returns the queues.
    pub fn drop_client(&mut self, store: &mut Store, client: Client, now_ms: u64, out: &mut Vec<Delivery>) {
        for name in self.by_client.get(&client).cloned().unwrap_or_default() {
            let _ = self.unconsume(store, client, &name, now_ms, out);
        }
    }

    /// A worker's link is gone: so are all its clients.
    pub fn drop_link(&mut self, store: &mut Store, link: usize, now_ms: u64, out: &mut Vec<Delivery>) {
        let clients: Vec<Client> = self.by_client.keys().filter(|c| c.link == link).copied().collect();
        for client in clients {
            self.drop_client(store, client, now_ms, out);
        }
    }

    /// The job is done. Returns the lsn to confirm the ack by.
    pub fn ack(
        &mut self,
        store: &mut Store,
        client: Client,
        queue: &[u8],
        id: u64,
        now_ms: u64,
        out: &mut Vec<Delivery>,
    ) -> Result<Lsn, Refusal> {
        let name = self.take_held(client, queue, id)?;
        let payload = store.job(queue, id).map_or(0, |j| j.payload.len() as u64);
        let lsn = store.ack(queue, id).expect("a held job is pending in the store");
        self.totals.bytes -= payload;
        self.totals.acked += 1;
        self.dispatch(store, &name, now_ms, out);
        self.forget_if_idle(&name);
        Ok(lsn)
    }

    /// Not done: back to the front with the next try number (or dead-lettered
    /// at the last). Returns the lsn to confirm by.
    pub fn nack(
        &mut self,
        store: &mut Store,
        client: Client,
        queue: &[u8],
        id: u64,
        now_ms: u64,
        out: &mut Vec<Delivery>,
    ) -> Result<Lsn, Refusal> {
        let name = self.take_held(client, queue, id)?;
        let lsn = self.put_back(store, &name, id, now_ms, out);
        self.dispatch(store, &name, now_ms, out);
        Ok(lsn)
    }

    /// Never to be done: moved to the dead-letter queue. Returns the lsn.
    pub fn reject(
        &mut self,
        store: &mut Store,
        client: Client,
        queue: &[u8],
        id: u64,
        now_ms: u64,
        out: &mut Vec<Delivery>,
    ) -> Result<Lsn, Refusal> {
        let name = self.take_held(client, queue, id)?;
        let lsn = self.dead_letter(store, &name, id, now_ms, out);
        self.dispatch(store, &name, now_ms, out);
        self.forget_if_idle(&name);
        Ok(lsn)
    }

    /// Takes back the jobs held past the ack timeout. Returns the clients
    /// that lost one (once per job) and when to call again.
    pub fn expire(&mut self, store: &mut Store, now_ms: u64, out: &mut Vec<Delivery>) -> (Vec<Client>, Option<u64>) {
        let mut lost = Vec::new();
        while let Some((deadline, _, _)) = self.deadlines.front() {
            if *deadline > now_ms {
                break;
            }
            let (deadline, name, id) = self.deadlines.pop_front().expect("front exists");
            let Some(q) = self.queues.get_mut(&name) else { continue };
            match q.unacked.get(&id) {
                Some(h) if h.deadline_ms == deadline => {}
                _ => continue, // settled, or delivered again since
            }
            let h = q.unacked.remove(&id).expect("checked");
            if let Some(c) = q.consumers.iter_mut().find(|c| c.client == h.client) {
                c.unacked -= 1;
            }
            lost.push(h.client);
            self.totals.timed_out += 1;
            self.put_back(store, &name, id, now_ms, out);
            self.dispatch(store, &name, now_ms, out);
            self.forget_if_idle(&name);
        }
        (lost, self.deadlines.front().map(|d| d.0))
    }

    /// Every queue with its figures, by name.
    pub fn figures(&self) -> Vec<QueueFigures> {
        let mut all: Vec<QueueFigures> = self
            .queues
            .iter()
            .map(|(name, q)| QueueFigures {
                name: name.clone(),
                ready: q.ready.len() as u64,
                unacked: q.unacked.len() as u64,
                consumers: q.consumers.len() as u64,
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub fn totals(&self) -> Totals {
        let mut t = self.totals;
        t.queues = self.queues.len() as u64;
        for q in self.queues.values() {
            t.ready += q.ready.len() as u64;
            t.unacked += q.unacked.len() as u64;
            t.consumers += q.consumers.len() as u64;
        }
        t
    }

    /// The queue's shared name, the queue made if new.
    fn queue(&mut self, queue: &[u8]) -> Rc<[u8]> {
        if let Some((name, _)) = self.queues.get_key_value(queue) {
            return name.clone();
        }
        let name: Rc<[u8]> = queue.into();
        self.queues.insert(name.clone(), Queue::default());
        name
    }

    /// A queue with nothing in it and nobody on it is forgotten here (the
    /// store keeps its numbering), so names cost nothing once done with.
    fn forget_if_idle(&mut self, name: &[u8]) {
        if self.queues.get(name).is_some_and(Queue::idle) {
            self.queues.remove(name);
        }
    }

    /// Checks that `client` holds the job and takes it from it.
    fn take_held(&mut self, client: Client, queue: &[u8], id: u64) -> Result<Rc<[u8]>, Refusal> {
        let Some((name, q)) = self.queues.get_key_value(queue) else {
            return Err(Refusal::UnknownQueue(text(queue)));
        };
        match q.unacked.get(&id) {
            None => return Err(Refusal::NotWaiting { queue: text(queue), id }),
            Some(h) if h.client != client => return Err(Refusal::NotYours { queue: text(queue), id }),
            Some(_) => {}
        }
        let name = name.clone();
        let q = self.queues.get_mut(queue).expect("found above");
        q.unacked.remove(&id);
        if let Some(c) = q.consumers.iter_mut().find(|c| c.client == client) {
            c.unacked -= 1;
        }
        Ok(name)
    }

    /// A delivery failed: the job goes back to the front with one more try
    /// counted, or to the dead-letter queue if that was the last. Returns
    /// the lsn of the record that says so.
    fn put_back(&mut self, store: &mut Store, name: &Rc<[u8]>, id: u64, now_ms: u64, out: &mut Vec<Delivery>) -> Lsn {
        self.totals.returned += 1;
        let tries = store.job(name, id).expect("a held job is pending in the store").tries + 1;
        if tries >= self.limits.max_tries {
            return self.dead_letter(store, name, id, now_ms, out);
        }
        let lsn = store.set_tries(name, id, tries).expect("pending");
        self.queues.get_mut(name).expect("the job's queue").ready.push_front(id);
        lsn
    }

    fn dead_letter(
        &mut self,
        store: &mut Store,
        name: &Rc<[u8]>,
        id: u64,
        now_ms: u64,
        out: &mut Vec<Delivery>,
    ) -> Lsn {
        self.totals.dead_lettered += 1;
        let dead = queue::dead_letter(name);
        let a = store.move_job(name, id, &dead, now_ms).expect("a held job is pending in the store");
        let dead = self.queue(&dead);
        self.queues.get_mut(&dead).expect("just made").ready.push_back(a.seq);
        if dead != *name {
            self.dispatch(store, &dead, now_ms, out);
        }
        a.lsn
    }

    /// Hands ready jobs to consumers with room, round-robin.
    fn dispatch(&mut self, store: &Store, name: &Rc<[u8]>, now_ms: u64, out: &mut Vec<Delivery>) {
        let Some(q) = self.queues.get_mut(name) else { return };
        let n = q.consumers.len();
        let mut full = 0; // consumers found without room in a row
        while !q.ready.is_empty() && full < n {
            let i = q.next % n;
            q.next = (i + 1) % n;
            let c = &mut q.consumers[i];
            if c.unacked >= c.prefetch {
                full += 1;
                continue;
            }
            full = 0;
            let id = q.ready.pop_front().expect("not empty");
            let job = store.job(name, id).expect("a ready job is pending in the store");
            c.unacked += 1;
            let deadline_ms = now_ms + self.limits.ack_timeout_ms;
            q.unacked.insert(id, Held { client: c.client, deadline_ms });
            self.deadlines.push_back((deadline_ms, name.clone(), id));
            self.totals.delivered += 1;
            out.push(Delivery {
                to: c.client,
                queue: name.clone(),
                id,
                attempt: job.tries + 1,
                payload: job.payload.clone(),
            });
        }
        if self.deadlines.len() >= self.sweep_at {
            self.sweep_deadlines();
        }
    }

    /// Drops the entries of settled deliveries from `deadlines`. The next
    /// sweep comes after at least as many deliveries as entries are left
    /// (plus the slack), so sweeping costs O(1) per delivery.
    fn sweep_deadlines(&mut self) {
        let queues = &self.queues;
        self.deadlines.retain(|(deadline, name, id)| {
            let held = queues.get(name).and_then(|q| q.unacked.get(id));
            held.is_some_and(|h| h.deadline_ms == *deadline)
        });
        self.sweep_at = 2 * self.deadlines.len() + DEADLINE_SLACK;
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Config;

    const A: Client = Client { link: 0, id: 1 };
    const B: Client = Client { link: 0, id: 2 };
    const C: Client = Client { link: 1, id: 1 };

    fn limits() -> Limits {
        Limits { max_jobs: 100, max_bytes: 1 << 20, ack_timeout_ms: 1000, max_tries: 3 }
    }

    struct T {
        store: Store,
        q: Queues,
        out: Vec<Delivery>,
    }

    impl T {
        fn new() -> T {
            let store = Store::in_memory(Config::default());
            let mut q = Queues::new(limits());
            q.load(&store);
            T { store, q, out: Vec::new() }
        }
        fn enqueue(&mut self, queue: &str, msg: &str) -> u64 {
            self.q.enqueue(&mut self.store, queue.as_bytes(), msg.as_bytes(), 0, &mut self.out).unwrap().0
        }
        fn consume(&mut self, c: Client, queue: &str, prefetch: u32) {
            self.q.consume(&mut self.store, c, queue.as_bytes(), prefetch, 0, &mut self.out);
        }
        /// Deliveries since the last call, as "client queue#id try n: payload".
        fn sent(&mut self) -> Vec<String> {
            self.out
                .drain(..)
                .map(|d| {
                    let q = String::from_utf8_lossy(&d.queue).into_owned();
                    let p = String::from_utf8_lossy(&d.payload).into_owned();
                    format!("{}/{} {q}#{} try {}: {p}", d.to.link, d.to.id, d.id, d.attempt)
                })
                .collect()
        }
        fn ack(&mut self, c: Client, queue: &str, id: u64) -> Result<Lsn, Refusal> {
            self.q.ack(&mut self.store, c, queue.as_bytes(), id, 0, &mut self.out)
        }
    }

    #[test]
    fn jobs_wait_for_a_consumer_and_go_round_robin_within_prefetch() {
        let mut t = T::new();
        for m in ["a", "b", "c", "d", "e"] {
            t.enqueue("q", m);
        }
        assert!(t.sent().is_empty(), "nobody consumes yet");
        t.consume(A, "q", 1);
        assert_eq!(t.sent(), ["0/1 q#1 try 1: a"]);
        t.consume(B, "q", 2);
        assert_eq!(t.sent(), ["0/2 q#2 try 1: b", "0/2 q#3 try 1: c"]);
        assert_eq!(t.q.figures()[0], QueueFigures { name: b"q"[..].into(), ready: 2, unacked: 3, consumers: 2 });
        t.ack(A, "q", 1).unwrap();
        assert_eq!(t.sent(), ["0/1 q#4 try 1: d"]);
        t.consume(C, "q", 5);
        assert_eq!(t.sent(), ["1/1 q#5 try 1: e"]);
        // Room everywhere: new jobs alternate.
        for id in [2, 3] {
            t.ack(B, "q", id).unwrap();
        }
        t.ack(A, "q", 4).unwrap();
        t.ack(C, "q", 5).unwrap();
        for m in ["f", "g", "h"] {
            t.enqueue("q", m);
        }
        let got = t.sent();
        let who: Vec<&str> = got.iter().map(|s| &s[..3]).collect();
        assert_eq!(who.len(), 3);
        assert!(who[0] != who[1] && who[1] != who[2] && who[0] != who[2], "round-robin: {got:?}");
    }

    #[test]
    fn acks_are_checked() {
        let mut t = T::new();
        t.enqueue("q", "a");
        t.consume(A, "q", 10);
        t.sent();
        assert!(matches!(t.ack(B, "q", 1), Err(Refusal::NotYours { .. })));
        assert!(matches!(t.ack(A, "q", 2), Err(Refusal::NotWaiting { .. })));
        assert!(matches!(t.ack(A, "nope", 1), Err(Refusal::UnknownQueue(_))));
        t.ack(A, "q", 1).unwrap();
        assert!(matches!(t.ack(A, "q", 1), Err(Refusal::NotWaiting { .. })), "acked once only");
        assert_eq!(t.store.jobs(b"q").count(), 0, "done in the store too");
        let r = t.q.unconsume(&mut t.store, B, b"q", 0, &mut t.out);
        assert_eq!(r, Err(Refusal::NotConsuming("q".into())));
    }

    #[test]
    fn a_consumer_that_goes_gives_its_jobs_back_in_order_with_the_next_try() {
        let mut t = T::new();
        for m in ["a", "b", "c"] {
            t.enqueue("q", m);
        }
        t.consume(A, "q", 2);
        t.sent();
        t.q.drop_link(&mut t.store, 0, 0, &mut t.out);
        assert!(t.sent().is_empty());
        t.consume(C, "q", 3);
        assert_eq!(t.sent(), ["1/1 q#1 try 2: a", "1/1 q#2 try 2: b", "1/1 q#3 try 1: c"]);
        let n = t.q.unconsume(&mut t.store, C, b"q", 0, &mut t.out).unwrap();
        assert_eq!(n, 3);
        assert_eq!((t.q.totals().ready, t.q.totals().unacked), (3, 0));
        assert_eq!(t.store.job(b"q", 1).unwrap().tries, 2, "tries are logged");
    }

    #[test]
    fn nack_reject_and_max_tries() {
        let mut t = T::new();
        t.enqueue("q", "a");
        t.enqueue("q", "b");
        t.consume(A, "q", 1);
        assert_eq!(t.sent(), ["0/1 q#1 try 1: a"]);
        t.q.nack(&mut t.store, A, b"q", 1, 0, &mut t.out).unwrap();
        assert_eq!(t.sent(), ["0/1 q#1 try 2: a"], "back to the front");
        t.q.nack(&mut t.store, A, b"q", 1, 0, &mut t.out).unwrap();
        assert_eq!(t.sent(), ["0/1 q#1 try 3: a"]);
        // The third failure of three: dead-lettered, the next job comes.
        t.q.nack(&mut t.store, A, b"q", 1, 0, &mut t.out).unwrap();
        assert_eq!(t.sent(), ["0/1 q#2 try 1: b"]);
        t.q.reject(&mut t.store, A, b"q", 2, 0, &mut t.out).unwrap();
        assert!(t.sent().is_empty());
        t.consume(B, "q.dead", 5);
        assert_eq!(t.sent(), ["0/2 q.dead#1 try 1: a", "0/2 q.dead#2 try 1: b"]);
        // Rejected in a dead-letter queue: to its own back.
        t.q.reject(&mut t.store, B, b"q.dead", 1, 0, &mut t.out).unwrap();
        assert_eq!(t.sent(), ["0/2 q.dead#3 try 1: a"]);
        let names: Vec<Rc<[u8]>> = t.q.figures().into_iter().map(|f| f.name).collect();
        assert_eq!(names, [b"q"[..].into(), b"q.dead"[..].into()]);
        t.q.unconsume(&mut t.store, A, b"q", 0, &mut t.out).unwrap();
        assert_eq!(t.q.figures().len(), 1, "an empty queue nobody consumes is forgotten");
    }

    #[test]
    fn deadlines_of_settled_jobs_do_not_pile_up() {
        let mut t = T::new();
        t.consume(A, "q", 10);
        for i in 0..100_000 {
            t.enqueue("q", "j");
            if i >= 10 {
                t.ack(A, "q", i - 9).unwrap(); // ten out at a time
            }
        }
        t.sent();
        assert!(t.q.deadlines.len() <= 2 * 10 + DEADLINE_SLACK, "{} entries for 10 jobs out", t.q.deadlines.len());
        // The live ones are all still there: each comes back at its deadline.
        let (lost, _) = t.q.expire(&mut t.store, 1000, &mut t.out);
        assert_eq!(lost.len(), 10);
    }

    #[test]
    fn ack_timeout_takes_jobs_back() {
        let mut t = T::new();
        t.enqueue("q", "a");
        t.consume(A, "q", 1);
        t.ack(A, "q", 1).unwrap();
        t.enqueue("q", "b"); // to A, due back at 1000
        t.q.consume(&mut t.store, B, b"q", 1, 500, &mut t.out);
        t.q.enqueue(&mut t.store, b"q", b"c", 500, &mut t.out).unwrap(); // to B, due at 1500
        assert_eq!(t.sent(), ["0/1 q#1 try 1: a", "0/1 q#2 try 1: b", "0/2 q#3 try 1: c"]);
        let (lost, next) = t.q.expire(&mut t.store, 999, &mut t.out);
        assert_eq!((lost, next), (vec![], Some(1000)));
        let (lost, next) = t.q.expire(&mut t.store, 1000, &mut t.out);
        assert_eq!(lost, [A]);
        assert_eq!(next, Some(1500), "the acked job's entry was passed over");
        assert_eq!(t.sent(), ["0/1 q#2 try 2: b"], "to the consumer with room");
        t.ack(B, "q", 3).unwrap();
        assert_eq!(t.q.expire(&mut t.store, 5000, &mut t.out), (vec![A], Some(6000)));
        assert_eq!(t.sent(), ["0/2 q#2 try 3: b"], "round-robin");
        // Timed out at the last of three tries: dead-lettered.
        assert_eq!(t.q.expire(&mut t.store, 6000, &mut t.out), (vec![B], None));
        assert!(t.sent().is_empty());
        assert!(matches!(t.ack(A, "q", 2), Err(Refusal::NotWaiting { .. })));
        assert_eq!(t.store.jobs(b"q.dead").count(), 1);
        assert_eq!(t.q.totals().timed_out, 3);
    }

    #[test]
    fn bounds_refuse_enqueues_never_moves() {
        let mut t = T::new();
        t.q.limits.max_jobs = 2;
        t.enqueue("q", "a");
        t.enqueue("q", "b");
        let r = t.q.enqueue(&mut t.store, b"q", b"c", 0, &mut t.out);
        assert!(matches!(r, Err(Refusal::QueueFull { max: 2, .. })), "{r:?}");
        t.enqueue("other", "c");
        t.q.limits.max_bytes = 4;
        let r = t.q.enqueue(&mut t.store, b"third", b"dd", 0, &mut t.out);
        assert!(matches!(r, Err(Refusal::AllFull { max: 4 })), "{r:?}");
        t.consume(A, "q", 2);
        t.sent();
        t.q.reject(&mut t.store, A, b"q", 1, 0, &mut t.out).unwrap();
        assert_eq!(t.q.totals().bytes, 3);
    }

    #[test]
    fn the_ready_lists_are_rebuilt_from_the_store() {
        let mut t = T::new();
        for m in ["a", "b", "c"] {
            t.enqueue("q", m);
        }
        t.consume(A, "q", 2);
        t.sent();
        t.ack(A, "q", 1).unwrap();
        t.q.nack(&mut t.store, A, b"q", 2, 0, &mut t.out).unwrap();
        t.sent();
        // A new dispatcher on the same store, as after a restart.
        let mut q = Queues::new(limits());
        q.load(&t.store);
        q.consume(&mut t.store, C, b"q", 9, 0, &mut t.out);
        assert_eq!(t.sent(), ["1/1 q#2 try 2: b", "1/1 q#3 try 1: c"]);
        assert_eq!(q.totals().bytes, 2);
    }
}
