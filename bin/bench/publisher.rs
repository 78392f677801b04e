//! The publishers, on the main thread: publish every message on one of
//! `--pubs` connections, within the window of messages in flight or at a fixed
//! rate.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::cli::Plan;
use crate::conn::{Conn, ReadOutcome};
use crate::hist::Hist;
use crate::payload::{self, now_ns};
use crate::proto::Event;
use crate::subscribers::Shared;

pub const WAKE: Token = Token(0);
/// Publisher connection k has token FIRST_PUB + k.
const FIRST_PUB: usize = 1;
/// Bytes encoded per batch before writing.
const BATCH: usize = 64 * 1024;

#[derive(Default)]
pub struct PubReport {
    pub sent: u64,
    pub first_send: u64,
    pub last_send: u64,
    acks: u64,
    pub ack_receivers: i64,
    pub errors: Vec<String>,
    /// Rate mode: how late each message was written against its schedule.
    pub lag: Option<Hist>,
}

pub struct Publisher<'a> {
    plan: &'a Plan,
    shared: &'a Shared,
    poll: Poll,
    events: Events,
    conns: Vec<Conn>,
    /// Per connection: may have input to read.
    readable: Vec<bool>,
    scratch: Vec<u8>,
    /// Pongs received over all connections.
    pongs: u64,
    pub report: PubReport,
}

impl<'a> Publisher<'a> {
    /// Connects and waits for the answer to a PING on every connection, so
    /// they are all ready.
    pub fn connect(plan: &'a Plan, shared: &'a Shared, poll: Poll) -> Result<Self, String> {
        let addr = plan.pub_addr;
        let mut conns = Vec::with_capacity(plan.pubs);
        for k in 0..plan.pubs {
            let std = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .map_err(|e| format!("connect {addr}: {e}"))?;
            std.set_nonblocking(true).map_err(|e| e.to_string())?;
            let mut stream = TcpStream::from_std(std);
            poll.registry()
                .register(&mut stream, Token(FIRST_PUB + k), Interest::READABLE | Interest::WRITABLE)
                .map_err(|e| e.to_string())?;
            let mut conn = Conn::new(stream);
            plan.proto.hello(&mut conn.out);
            conns.push(conn);
        }
        let mut p = Publisher {
            plan,
            shared,
            poll,
            events: Events::with_capacity(16 + plan.pubs),
            readable: vec![true; conns.len()],
            conns,
            scratch: vec![0; 64 * 1024],
            pongs: 0,
            report: PubReport::default(),
        };
        p.barrier(Instant::now() + Duration::from_secs(10)).map_err(|e| format!("publisher: {e}"))?;
        Ok(p)
    }

    fn queued(&self) -> bool {
        self.conns.iter().any(|c| c.queued() > 0)
    }

    /// Sends a ping on every connection and waits for the pongs: the server
    /// has read all we sent.
    fn barrier(&mut self, deadline: Instant) -> Result<(), String> {
        let want = self.pongs + self.conns.len() as u64;
        for c in &mut self.conns {
            self.plan.proto.ping(&mut c.out);
        }
        while self.pongs < want {
            if Instant::now() > deadline {
                return Err("no answer to ping in time".into());
            }
            self.io(Some(Duration::from_millis(100)))?;
        }
        Ok(())
    }

    /// Flushes, waits up to `timeout` for readiness, reads replies.
    fn io(&mut self, timeout: Option<Duration>) -> Result<(), String> {
        self.conns.iter_mut().try_for_each(Conn::flush)?;
        if let Some(t) = timeout {
            self.poll.poll(&mut self.events, Some(t)).map_err(|e| format!("poll: {e}"))?;
            for ev in self.events.iter().filter(|e| e.is_readable()) {
                if let Some(r) = ev.token().0.checked_sub(FIRST_PUB).and_then(|k| self.readable.get_mut(k)) {
                    *r = true;
                }
            }
        }
        for (conn, readable) in self.conns.iter_mut().zip(&mut self.readable) {
            if !*readable {
                continue;
            }
            let (pongs, report) = (&mut self.pongs, &mut self.report);
            let outcome = conn.read_events(self.plan.proto, &mut self.scratch, |ev, out, _| match ev {
                Event::Pong => *pongs += 1,
                Event::Ping => out.extend_from_slice(b"PONG\r\n"),
                Event::Ack(n) => {
                    report.acks += 1;
                    report.ack_receivers += n;
                }
                Event::Error(e) if report.errors.len() < 10 => {
                    report.errors.push(String::from_utf8_lossy(e).into_owned())
                }
                _ => {}
            })?;
            match outcome {
                ReadOutcome::Drained => *readable = false,
                ReadOutcome::More => {}
                ReadOutcome::Eof => return Err("server closed a publisher's connection".into()),
            }
        }
        self.conns.iter_mut().try_for_each(Conn::flush)
    }

    /// Publishes every message, then waits for the barrier.
    pub fn run(&mut self) {
        if let Err(e) = self.publish() {
            self.report.errors.push(e);
        }
        self.shared.pub_done.store(now_ns(), Ordering::Release);
    }

    fn publish(&mut self) -> Result<(), String> {
        let plan = self.plan;
        let ntopics = plan.topics.len() as u64;
        let frames: Vec<_> = plan.topics.iter().map(|t| plan.proto.publish_frame(t, plan.payload)).collect();
        let pad = vec![b'.'; plan.payload - 32];
        let start = now_ns();
        let deadline = Instant::now() + plan.time_limit;
        let interval = if plan.rate > 0 { 1e9 / plan.rate as f64 } else { 0.0 };
        let mut lag = Hist::new();
        let (mut progress_seen, mut progress_at) = (0, Instant::now());
        self.report.first_send = start;
        let pubs = self.conns.len() as u64;
        let mut i = 0u64;
        while i < plan.messages || self.queued() {
            let now = Instant::now();
            if now > deadline {
                return Err(format!("time limit: sent {i} of {} messages", plan.messages));
            }
            // Encode a batch: what the window and the schedule allow.
            let progress = self.shared.progress();
            if progress != progress_seen {
                (progress_seen, progress_at) = (progress, now);
            }
            let allowed = |i: u64| plan.window == 0 || i / ntopics < progress.saturating_add(plan.window);
            let t = now_ns();
            let due = |i: u64| interval == 0.0 || start + (i as f64 * interval) as u64 <= t;
            while i < plan.messages && allowed(i) && due(i) {
                let seq = i / ntopics;
                let conn = &mut self.conns[(seq % pubs) as usize];
                if conn.queued() >= BATCH {
                    break;
                }
                let (head, tail) = &frames[(i % ntopics) as usize];
                let ts = now_ns();
                if interval > 0.0 {
                    lag.record(ts.saturating_sub(start + (i as f64 * interval) as u64));
                }
                conn.out.extend_from_slice(head);
                payload::put(&mut conn.out, seq, ts, &pad);
                conn.out.extend_from_slice(tail);
                i += 1;
            }
            self.io(Some(Duration::ZERO))?; // write the batch, read replies (Redis acks)
            if i == plan.messages && !self.queued() {
                break;
            }
            // Wait for whatever holds us back.
            if self.queued() {
                self.io(Some(Duration::from_millis(100)))?; // socket full
            } else if i < plan.messages && !allowed(i) {
                if progress_at.elapsed() > plan.drain {
                    return Err(format!("subscribers stalled: sent {i} of {} messages", plan.messages));
                }
                self.shared.pub_waiting.store(true, Ordering::Release);
                if self.shared.progress() == progress {
                    self.io(Some(Duration::from_millis(100)))?;
                }
            } else if interval > 0.0 {
                let next = start + (i as f64 * interval) as u64;
                let wait = next.saturating_sub(now_ns());
                std::thread::sleep(Duration::from_nanos(wait.min(10_000_000)));
            }
        }
        self.report.sent = i;
        self.report.last_send = now_ns();
        if interval > 0.0 {
            self.report.lag = Some(lag);
        }
        let barrier_deadline = deadline.max(Instant::now() + Duration::from_secs(10));
        self.barrier(barrier_deadline)
    }
}
