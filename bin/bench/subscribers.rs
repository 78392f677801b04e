//! The subscriber threads: each connects its share of the subscribers, waits
//! for every subscription to be confirmed, then checks every message received.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::cli::Plan;
use crate::conn::{Conn, ReadOutcome};
use crate::hist::Hist;
use crate::payload::{self, now_ns};
use crate::proto::Event;

/// State all threads see.
pub struct Shared {
    /// Per subscriber thread: fewest messages any of its live subscribers has
    /// received. Their minimum is the base of the publisher's window.
    pub progress: Vec<AtomicU64>,
    /// Set (to now_ns) once the publisher has sent everything and seen its barrier.
    pub pub_done: AtomicU64,
    /// The main thread gave up: stop.
    pub abort: AtomicBool,
    /// The publisher sleeps waiting for progress: wake it when progress moves.
    pub pub_waiting: AtomicBool,
    pub pub_waker: Waker,
}

impl Shared {
    pub fn progress(&self) -> u64 {
        self.progress.iter().map(|p| p.load(Ordering::Acquire)).min().unwrap_or(0)
    }
}

/// Per-subscriber exact accounting.
#[derive(Default)]
struct Track {
    topic: usize,
    expected: u64,
    /// Bit per sequence number received.
    seen: Vec<u64>,
    distinct: u64,
    /// Per publisher (sequence number mod pubs): one past the highest seen.
    next_max: Vec<u64>,
    duplicates: u64,
    out_of_order: u64,
    corrupt: u64,
}

/// Per-message fan-out progress (for the time until every subscriber has it).
#[derive(Clone, Copy, Default)]
struct MsgStat {
    sent: u64,
    receipts: u32,
    last: u64,
}

struct Sub {
    conn: Option<Conn>,
    confirmed: bool,
    /// Needs another read (hit MAX_READS).
    more: bool,
    track: Track,
}

/// What one subscriber thread saw; `merge` adds them up.
pub struct SubReport {
    pub delivered: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub corrupt: u64,
    pub missing: u64,
    pub disconnects: u64,
    pub errors: Vec<String>,
    pub last_recv: u64,
    pub latency: Hist,
    msgs: Vec<MsgStat>,
}

impl SubReport {
    pub fn new(plan: &Plan) -> SubReport {
        // Per-message fan-out times only for runs of a bounded size.
        let msgs = if plan.messages <= 2_000_000 { plan.messages as usize } else { 0 };
        SubReport {
            delivered: 0,
            duplicates: 0,
            out_of_order: 0,
            corrupt: 0,
            missing: 0,
            disconnects: 0,
            errors: Vec::new(),
            last_recv: 0,
            latency: Hist::new(),
            msgs: vec![MsgStat::default(); msgs],
        }
    }

    pub fn merge(mut self, o: SubReport) -> SubReport {
        self.delivered += o.delivered;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.corrupt += o.corrupt;
        self.missing += o.missing;
        self.disconnects += o.disconnects;
        self.errors.extend(o.errors);
        self.last_recv = self.last_recv.max(o.last_recv);
        self.latency.counts.iter_mut().zip(&o.latency.counts).for_each(|(a, b)| *a += b);
        self.latency.n += o.latency.n;
        self.latency.max = self.latency.max.max(o.latency.max);
        for (a, b) in self.msgs.iter_mut().zip(&o.msgs) {
            a.sent = a.sent.max(b.sent);
            a.receipts += b.receipts;
            a.last = a.last.max(b.last);
        }
        self
    }

    /// For each message every subscriber of its topic got: send to last receipt.
    pub fn fanout_times(&self, plan: &Plan) -> Vec<u64> {
        let t = plan.topics.len();
        let subs_of = |topic: usize| (plan.subs / t + usize::from(topic < plan.subs % t)) as u32;
        let mut v: Vec<u64> = (self.msgs.iter().enumerate())
            .filter(|(i, m)| m.receipts == subs_of(i % t))
            .map(|(_, m)| m.last.saturating_sub(m.sent))
            .collect();
        v.sort_unstable();
        v
    }
}

/// One subscriber thread: subscribers thread, thread + n, thread + 2n, …
struct SubSide<'a> {
    plan: &'a Plan,
    shared: &'a Shared,
    thread: usize,
    poll: Poll,
    subs: Vec<Sub>,
    /// Received count per subscriber.
    counts: Vec<u64>,
    /// The window's base: the least count of a live subscriber, and how many
    /// live subscribers are at it (kept up to date so that a wake-up costs
    /// the events it brings, not a scan of every connection).
    min: u64,
    at_min: usize,
    /// Subscribers that hit MAX_READS and need another read.
    more: Vec<usize>,
    scratch: Vec<u8>,
    report: SubReport,
    confirmed: usize,
    finished: usize,
}

/// Subscriptions not yet confirmed at any time (connection waves), all threads.
const SETUP_WAVE: usize = 256;

pub fn run_subscribers(
    plan: &Plan,
    shared: &Shared,
    thread: usize,
    ready: mpsc::Sender<Result<f64, String>>,
) -> SubReport {
    let mut side = match SubSide::new(plan, shared, thread) {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e));
            return SubReport::new(plan);
        }
    };
    let t0 = Instant::now();
    if let Err(e) = side.setup() {
        let _ = ready.send(Err(e));
        return side.report;
    }
    let _ = ready.send(Ok(t0.elapsed().as_secs_f64()));
    side.receive();
    side.finish()
}

impl<'a> SubSide<'a> {
    fn new(plan: &'a Plan, shared: &'a Shared, thread: usize) -> Result<Self, String> {
        let subs: Vec<Sub> = (thread..plan.subs)
            .step_by(plan.sub_threads)
            .map(|i| {
                let topic = i % plan.topics.len();
                let expected = plan.expected(topic);
                let track = Track { topic, expected, next_max: vec![0; plan.pubs], ..Default::default() };
                Sub { conn: None, confirmed: false, more: false, track }
            })
            .collect();
        Ok(SubSide {
            plan,
            shared,
            thread,
            poll: Poll::new().map_err(|e| format!("poll: {e}"))?,
            counts: vec![0; subs.len()],
            min: 0,
            at_min: subs.len(),
            more: Vec::new(),
            subs,
            scratch: vec![0; 256 * 1024],
            report: SubReport::new(plan),
            confirmed: 0,
            finished: 0,
        })
    }

    /// Connects every subscriber, at most SETUP_WAVE unconfirmed at a time, and
    /// returns once each subscription is confirmed.
    fn setup(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + self.plan.setup_timeout;
        let mut events = Events::with_capacity(1024);
        let mut opened = 0;
        let (n, wave) = (self.subs.len(), SETUP_WAVE.div_ceil(self.plan.sub_threads));
        while self.confirmed < n {
            if Instant::now() > deadline || self.shared.abort.load(Ordering::Relaxed) {
                return Err(format!("setup: {} of {n} subscriptions of a thread confirmed in time", self.confirmed));
            }
            while opened < n && opened - self.confirmed < wave {
                self.open(opened)?;
                opened += 1;
            }
            self.poll.poll(&mut events, Some(Duration::from_millis(100))).map_err(|e| format!("poll: {e}"))?;
            for ev in events.iter() {
                self.service(ev.token().0);
            }
            self.service_more();
            if self.report.disconnects > 0 || !self.report.errors.is_empty() {
                let why = self.report.errors.first().cloned().unwrap_or_else(|| "connection closed".into());
                return Err(format!("setup: {why}"));
            }
        }
        Ok(())
    }

    fn open(&mut self, i: usize) -> Result<(), String> {
        let mut stream =
            TcpStream::connect(self.plan.sub_addr).map_err(|e| format!("connect {}: {e}", self.plan.sub_addr))?;
        self.poll
            .registry()
            .register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| format!("register: {e}"))?;
        let mut conn = Conn::new(stream);
        self.plan.proto.hello(&mut conn.out);
        self.plan.proto.subscribe(&mut conn.out, &self.plan.topics[self.subs[i].track.topic]);
        self.subs[i].conn = Some(conn);
        Ok(())
    }

    /// Receives until every subscriber has everything, or the publisher is done
    /// and nothing has arrived for `drain`, or time runs out.
    fn receive(&mut self) {
        let deadline = Instant::now() + self.plan.time_limit + self.plan.drain * 2;
        let mut events = Events::with_capacity(1024);
        while self.finished < self.subs.len() && Instant::now() < deadline {
            if self.shared.abort.load(Ordering::Relaxed) {
                break;
            }
            let done = self.shared.pub_done.load(Ordering::Acquire);
            if done > 0 && now_ns().saturating_sub(done.max(self.report.last_recv)) > self.plan.drain.as_nanos() as u64
            {
                break;
            }
            let timeout = if self.more.is_empty() { Duration::from_millis(50) } else { Duration::ZERO };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                self.report.errors.push(format!("poll: {e}"));
                break;
            }
            for ev in events.iter() {
                self.service(ev.token().0);
            }
            self.service_more();
            if self.at_min == 0 {
                self.advance_min();
            }
        }
    }

    /// Recomputes the window's base once every subscriber at it has moved on,
    /// and tells the publisher.
    fn advance_min(&mut self) {
        let live = self.counts.iter().zip(&self.subs).filter(|(_, s)| s.conn.is_some());
        self.min = live.clone().map(|(c, _)| *c).min().unwrap_or(u64::MAX);
        self.at_min = live.filter(|(c, _)| **c == self.min).count();
        self.shared.progress[self.thread].store(self.min, Ordering::Release);
        if self.shared.pub_waiting.swap(false, Ordering::AcqRel) {
            let _ = self.shared.pub_waker.wake();
        }
    }

    fn service_more(&mut self) {
        for i in std::mem::take(&mut self.more) {
            self.subs[i].more = false;
            self.service(i);
        }
    }

    /// Flushes, reads and accounts one subscriber's connection.
    fn service(&mut self, i: usize) {
        let (before, was_live, was_more) = (self.counts[i], self.subs[i].conn.is_some(), self.subs[i].more);
        self.service_conn(i);
        let sub = &self.subs[i];
        if sub.more && !was_more {
            self.more.push(i);
        }
        if was_live && before == self.min && (self.counts[i] != before || sub.conn.is_none()) {
            self.at_min -= 1;
        }
    }

    fn service_conn(&mut self, i: usize) {
        let plan = self.plan;
        let Sub { conn, confirmed, more, track } = &mut self.subs[i];
        let Some(c) = conn.as_mut() else { return };
        let (count, report) = (&mut self.counts[i], &mut self.report);
        let (conf, fin) = (&mut self.confirmed, &mut self.finished);
        let topic_name = plan.topics[track.topic].as_bytes();
        let ntopics = plan.topics.len() as u64;
        let mut result = c.flush().map(|_| ReadOutcome::Drained);
        if result.is_ok() {
            result = c.read_events(plan.proto, &mut self.scratch, |ev, out, now| match ev {
                Event::Message { topic, payload } => {
                    report.last_recv = now;
                    let SubReport { latency, msgs, .. } = report;
                    let Some((seq, ts)) = payload::parse(payload, plan.payload) else {
                        track.corrupt += 1;
                        return;
                    };
                    if topic != topic_name || seq >= track.expected {
                        track.corrupt += 1;
                        return;
                    }
                    latency.record(now.saturating_sub(ts));
                    *count += 1;
                    let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
                    if track.seen.is_empty() {
                        track.seen = vec![0; track.expected.div_ceil(64) as usize];
                    }
                    if track.seen[w] & bit != 0 {
                        track.duplicates += 1;
                        return;
                    }
                    track.seen[w] |= bit;
                    track.distinct += 1;
                    let next_max = &mut track.next_max[(seq % plan.pubs as u64) as usize];
                    if seq < *next_max {
                        track.out_of_order += 1;
                    }
                    *next_max = (*next_max).max(seq + 1);
                    if track.distinct == track.expected {
                        *fin += 1;
                    }
                    if let Some(m) = msgs.get_mut((seq * ntopics + track.topic as u64) as usize) {
                        m.sent = ts;
                        m.receipts += 1;
                        m.last = now;
                    }
                }
                Event::Subscribed | Event::Pong => {
                    if !*confirmed {
                        *confirmed = true;
                        *conf += 1;
                    }
                }
                Event::Ping => out.extend_from_slice(b"PONG\r\n"),
                Event::Error(e) => report.errors.push(String::from_utf8_lossy(e).into_owned()),
                Event::Ack(_) | Event::Other => {}
            });
        }
        let result = result.and_then(|r| c.flush().map(|_| r));
        *more = false;
        match result {
            Ok(ReadOutcome::Drained) => {}
            Ok(ReadOutcome::More) => *more = true,
            Ok(ReadOutcome::Eof) | Err(_) => {
                if let Err(e) = result {
                    if report.errors.len() < 10 {
                        report.errors.push(e);
                    }
                }
                report.disconnects += 1;
                *conn = None;
                // A dead subscriber will not finish; count it so the loop ends.
                if track.distinct < track.expected {
                    *fin += 1;
                }
            }
        }
    }

    fn finish(mut self) -> SubReport {
        let r = &mut self.report;
        for s in &self.subs {
            r.delivered += s.track.distinct;
            r.missing += s.track.expected - s.track.distinct;
            r.duplicates += s.track.duplicates;
            r.out_of_order += s.track.out_of_order;
            r.corrupt += s.track.corrupt;
        }
        self.report
    }
}
