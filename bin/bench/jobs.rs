//! `fanout-bench jobs`: a work queue under load, on our servers or on a peer
//! broker (`--broker`). One producer enqueues `--jobs` jobs of `--size`
//! bytes (at most `--window` awaiting their confirmation), as fast as that
//! allows or at a fixed `--rate`; `--consumers` consumers take them with
//! `--prefetch` and ack each one. Reports jobs acknowledged per second (first
//! enqueue to last ack) and the latency from writing a job to reading its
//! delivery. Every job must arrive exactly once, on its first delivery, and
//! the broker must hold no unacknowledged job once the consumers have left.
//!
//! The clients are blocking sockets, one thread per connection, and the few
//! protocol pieces each broker needs are written by hand (jobs/*.rs): a
//! client crate per broker would be a heavy dependency of a binary that CI
//! builds, for a handful of commands.

use std::io::BufReader;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};

use crate::hist::Hist;
use crate::payload;
use produce::Pace;

pub mod confirm;
pub mod fanout;
mod jetstream;
mod produce;
mod rabbitmq;
mod redis;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Broker {
    /// Our servers: `enqueue` on the data source, `consume` on the subscriber server
    Fanout,
    /// Redis Streams: XADD, a consumer group read with XREADGROUP COUNT <prefetch>, XACK per job
    Redis,
    /// NATS JetStream: a work-queue stream on file storage, one durable pull consumer
    Jetstream,
    /// RabbitMQ: a durable queue, persistent messages with publisher confirms,
    /// basic.qos prefetch, basic.consume with manual acks, basic.ack per job
    Rabbitmq,
}

#[derive(Args, Clone, Debug)]
pub struct JobsArgs {
    #[arg(long, value_enum, default_value = "fanout")]
    broker: Broker,
    /// Where the producer enqueues (fanout: the data-source server)
    #[arg(long)]
    producer_addr: String,
    /// Where the consumers consume (fanout: the subscriber server) [default: --producer-addr]
    #[arg(long)]
    consumer_addr: Option<String>,
    /// The queue (Redis: the stream; JetStream: the stream and its subject; RabbitMQ: a durable queue)
    #[arg(long, default_value = "bench")]
    queue: String,
    #[arg(long, default_value_t = 200_000)]
    jobs: u64,
    #[arg(long, default_value_t = 4)]
    consumers: usize,
    /// Unacknowledged jobs per consumer, at most
    #[arg(long, default_value_t = 100)]
    prefetch: u32,
    #[command(flatten)]
    pace: Pace,
}

/// What the consumers share: which jobs arrived, and how many were acked.
pub struct Tally {
    size: usize,
    seen: Mutex<Vec<bool>>,
    acked: AtomicU64,
}

impl Tally {
    /// A delivery read at `now`: it must be one of ours, on its first
    /// delivery, and not seen before; its latency goes to `hist`.
    fn arrived(&self, body: &[u8], first: bool, now: u64, hist: &mut Hist) -> Result<(), String> {
        let (seq, ts) = payload::parse(body, self.size)
            .ok_or_else(|| format!("not a job of this run: {:?}", String::from_utf8_lossy(body)))?;
        if !first {
            return Err(format!("job {seq} delivered again"));
        }
        match self.seen.lock().unwrap().get_mut(seq as usize) {
            Some(seen) if !*seen => *seen = true,
            _ => return Err(format!("job {seq} delivered twice")),
        }
        hist.record(now.saturating_sub(ts));
        Ok(())
    }

    fn acked(&self, n: u64) {
        self.acked.fetch_add(n, Ordering::Relaxed);
    }
}

pub type Reader = BufReader<TcpStream>;

pub fn io(e: std::io::Error) -> String {
    e.to_string()
}

/// A connection with TCP_NODELAY, as a buffered reader and a writer.
pub fn connect(addr: &str) -> Result<(Reader, TcpStream), String> {
    let s = TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    Ok((BufReader::new(s.try_clone().map_err(io)?), s))
}

impl Broker {
    /// Creates the queue where a broker needs it before use.
    fn create(self, a: &JobsArgs) -> Result<(), String> {
        match self {
            Broker::Fanout => Ok(()),
            Broker::Redis => redis::create(a),
            Broker::Jetstream => jetstream::create(a),
            Broker::Rabbitmq => rabbitmq::create(a),
        }
    }

    /// A producer connection, ready to enqueue.
    fn producer(self, a: &JobsArgs) -> Result<(Reader, TcpStream), String> {
        match self {
            Broker::Fanout => fanout::open(&a.producer_addr),
            Broker::Redis => connect(&a.producer_addr),
            Broker::Jetstream => jetstream::producer(a),
            Broker::Rabbitmq => rabbitmq::producer(a),
        }
    }

    fn enqueue(self, out: &mut Vec<u8>, queue: &str, body: &[u8]) {
        match self {
            Broker::Fanout => fanout::enqueue(out, queue, body),
            Broker::Redis => redis::enqueue(out, queue, body),
            Broker::Jetstream => jetstream::enqueue(out, queue, body),
            Broker::Rabbitmq => rabbitmq::enqueue(out, queue, body),
        }
    }

    /// Reads the next confirmation, of one enqueue or (RabbitMQ) of several;
    /// `done` enqueues were confirmed before it, the answer is how many are now.
    fn confirm(self, r: &mut Reader, done: u64) -> Result<u64, String> {
        match self {
            Broker::Fanout => fanout::confirm(r).map(|()| done + 1),
            Broker::Redis => redis::confirm(r).map(|()| done + 1),
            Broker::Jetstream => jetstream::confirm(r).map(|()| done + 1),
            Broker::Rabbitmq => rabbitmq::confirm(r, done),
        }
    }

    /// Consumer `i`'s connection, its subscription confirmed or its first read sent.
    fn consumer(self, a: &JobsArgs, i: usize) -> Result<(Reader, TcpStream), String> {
        let addr = a.consumer_addr.as_deref().unwrap_or(&a.producer_addr);
        match self {
            Broker::Fanout => fanout::consumer(addr, a),
            Broker::Redis => redis::consumer(addr, a, i),
            Broker::Jetstream => jetstream::consumer(addr, a, i),
            Broker::Rabbitmq => rabbitmq::consumer(addr, a, i),
        }
    }

    /// Takes, checks and acks jobs until the broker closes the connection.
    fn consume(self, r: Reader, w: TcpStream, a: &JobsArgs, i: usize, tally: &Tally) -> Result<Hist, String> {
        match self {
            Broker::Fanout => fanout::consume(r, w, tally),
            Broker::Redis => redis::consume(r, w, a, i, tally),
            Broker::Jetstream => jetstream::consume(r, w, a, i, tally),
            Broker::Rabbitmq => rabbitmq::consume(r, w, tally),
        }
    }

    /// After every ack, once the consumers have left: checks that the broker
    /// holds no job unacknowledged.
    fn verify(self, a: &JobsArgs) -> Result<(), String> {
        match self {
            Broker::Fanout => Ok(()), // an ack is counted on its `OK acked`
            Broker::Redis => redis::verify(a),
            Broker::Jetstream => jetstream::verify(a),
            Broker::Rabbitmq => rabbitmq::verify(a),
        }
    }
}

pub fn jobs(a: &JobsArgs) -> Result<(), String> {
    let a = &JobsArgs { pace: Pace { size: a.pace.size.max(32), ..a.pace }, ..a.clone() };
    let broker = a.broker;
    broker.create(a)?;
    let tally = Arc::new(Tally {
        size: a.pace.size,
        seen: Mutex::new(vec![false; a.jobs as usize + 1]),
        acked: AtomicU64::new(0),
    });
    let mut consumers = Vec::new();
    let mut sockets = Vec::new();
    for i in 0..a.consumers {
        let (r, w) = broker.consumer(a, i)?;
        sockets.push(w.try_clone().map_err(io)?);
        let (a, tally) = (a.clone(), tally.clone());
        consumers.push(thread::spawn(move || broker.consume(r, w, &a, i, &tally)));
    }

    let queue = a.queue.clone();
    let encode = |out: &mut Vec<u8>, body: &[u8]| broker.enqueue(out, &queue, body);
    let producer = broker.producer(a)?;
    let start = Instant::now();
    let enqueued = produce::produce(producer, a.jobs, &a.pace, encode, move |r, done| broker.confirm(r, done))?.elapsed;

    let deadline = Instant::now() + Duration::from_secs(120);
    while tally.acked.load(Ordering::Relaxed) < a.jobs {
        if let Some(c) = consumers.iter().position(|c| c.is_finished()) {
            consumers.swap_remove(c).join().map_err(|_| "a consumer panicked")??;
            return Err("a consumer's connection closed".into());
        }
        if Instant::now() > deadline {
            return Err(format!("only {} of {} jobs acked", tally.acked.load(Ordering::Relaxed), a.jobs));
        }
        thread::sleep(Duration::from_millis(1));
    }
    // The consumers leave as a client does, by closing their end; each
    // broker reads every ack sent before that, puts back what a consumer
    // still held, and closes its end too.
    for s in &sockets {
        let _ = s.shutdown(Shutdown::Write);
    }
    let mut hist = Hist::new();
    for c in consumers {
        let h = c.join().map_err(|_| "a consumer panicked")??;
        for (i, n) in h.counts.iter().enumerate() {
            hist.counts[i] += n;
        }
        hist.n += h.n;
        hist.max = hist.max.max(h.max);
    }
    broker.verify(a)?;
    let total = start.elapsed();
    if let Some(lost) = tally.seen.lock().unwrap()[1..].iter().position(|seen| !seen) {
        return Err(format!("job {} was acked by no one", lost + 1));
    }
    let us = |q: f64| hist.quantile(q).unwrap_or(0) as f64 / 1000.0;
    let rate = match a.pace.rate {
        0 => String::new(),
        r => format!(", at {r}/s"),
    };
    println!(
        "jobs {} x {} B, {} consumers, prefetch {}{rate}: {:.0} jobs/s acked ({:.2} s), enqueue confirmed {:.0}/s; enqueue->job p50 {:.0} us p99 {:.0} us max {:.0} us; lost 0",
        a.jobs,
        a.pace.size,
        a.consumers,
        a.prefetch,
        a.jobs as f64 / total.as_secs_f64(),
        total.as_secs_f64(),
        a.jobs as f64 / enqueued.as_secs_f64(),
        us(0.5),
        us(0.99),
        hist.max as f64 / 1000.0
    );
    Ok(())
}
