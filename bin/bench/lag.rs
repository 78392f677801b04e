//! `fanout-bench lag`: subscribers that fall behind. A publisher sends
//! `--rate` messages/s on one topic for `--seconds`; `--fast` subscribers
//! read at full speed while one slow subscriber reads at a `--slowdown`-th of
//! the rate until the publisher is done, then at full speed to catch up.
//! Every subscriber must get every message, in order, or a `GAP` line for
//! exactly the numbers it did not get (the slow one, when it fell behind the
//! retention); silence, a duplicate or a fast subscriber's gap fails the run.
//! Meanwhile the resident memory of the server processes is sampled.
//!
//! Blocking sockets, one thread each: the rates here are far below what the
//! mio subscribers of `run` are built for.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;

use crate::hist::Hist;
use crate::jobs::{fanout, io};
use crate::payload::{self, now_ns};
use crate::procfs;

#[derive(Args, Clone, Debug)]
pub struct LagArgs {
    /// Where the publisher connects (the data-source server)
    #[arg(long)]
    pub_addr: String,
    /// Where the subscribers connect (the subscriber server)
    #[arg(long)]
    sub_addr: String,
    /// The topic; it must be new (its numbers are the publisher's)
    #[arg(long, default_value = "lag")]
    topic: String,
    /// Messages per second
    #[arg(long, default_value_t = 50_000)]
    rate: u64,
    /// Seconds of publishing
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Subscribers reading at full speed
    #[arg(long, default_value_t = 3)]
    fast: usize,
    /// The slow subscriber reads at --rate divided by this while the publisher publishes
    #[arg(long, default_value_t = 10)]
    slowdown: u64,
    /// Payload bytes (at least 32)
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// A server process whose resident memory is sampled (with all its descendants); repeatable
    #[arg(long = "server-pid", value_name = "PID")]
    server_pids: Vec<u32>,
}

/// What one subscriber got.
#[derive(Default)]
struct Got {
    messages: u64,
    /// `GAP` lines, as (first, last).
    gaps: Vec<(u64, u64)>,
    latency: Option<Hist>,
}

impl Got {
    fn gapped(&self) -> u64 {
        self.gaps.iter().map(|(a, b)| b - a + 1).sum()
    }
}

/// Reads until message `count`, checking every line; `slow`: at `rate`
/// messages/s while `publishing` holds.
fn subscriber(a: &LagArgs, count: u64, slow: Option<(u64, &AtomicBool)>, subscribed: &Barrier) -> Result<Got, String> {
    let (mut r, mut w) = fanout::open(&a.sub_addr)?;
    writeln!(w, "subscribe {}", a.topic).map_err(io)?;
    fanout::expect(&mut r, "OK subscribed")?;
    r.get_ref().set_read_timeout(Some(Duration::from_secs(30))).map_err(io)?;
    subscribed.wait();
    let (mut got, mut line, mut next) = (Got::default(), Vec::new(), 1u64);
    let mut latency = Hist::new();
    let received = format!("Received [{}]: ", a.topic);
    let gap = format!("GAP [{}] ", a.topic);
    let start = Instant::now();
    while next <= count {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) => return Err(format!("connection closed after {} messages", got.messages)),
            Err(e) => return Err(format!("after {} messages: {e}", got.messages)),
            Ok(_) => {}
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if let Some(body) = text.strip_prefix(received.as_bytes()) {
            let (seq, ts) = payload::parse(body, a.size).ok_or("a message not of this run")?;
            if seq != next {
                return Err(format!("message {seq} where {next} was due: silent loss or disorder"));
            }
            latency.record(now_ns().saturating_sub(ts));
            got.messages += 1;
            next += 1;
        } else if let Some(range) = text.strip_prefix(gap.as_bytes()) {
            let range = String::from_utf8_lossy(range);
            let (first, last) = range
                .split_once('-')
                .and_then(|(f, l)| Some((f.parse::<u64>().ok()?, l.parse::<u64>().ok()?)))
                .ok_or_else(|| format!("bad GAP line: GAP [{}] {range}", a.topic))?;
            if first != next || last < first {
                return Err(format!("GAP {first}-{last} where {next} was due"));
            }
            got.gaps.push((first, last));
            next = last + 1;
        } else {
            return Err(format!("unexpected: {}", String::from_utf8_lossy(text)));
        }
        if let Some((rate, publishing)) = slow {
            let due = Duration::from_secs_f64(got.messages as f64 / rate as f64);
            if publishing.load(Ordering::Relaxed) {
                thread::sleep(due.saturating_sub(start.elapsed()));
            }
        }
    }
    got.latency = slow.is_none().then_some(latency);
    Ok(got)
}

/// Publishes messages 1..=count at `rate`; returns how long it took.
fn publisher(a: &LagArgs, count: u64) -> Result<Duration, String> {
    let (_r, mut w) = fanout::open(&a.pub_addr)?;
    let (pad, start) = (vec![b'.'; a.size - 32], Instant::now());
    let (mut sent, mut batch, mut body) = (0u64, Vec::new(), Vec::new());
    while sent < count {
        let due = (start.elapsed().as_secs_f64() * a.rate as f64) as u64 + 1;
        for seq in sent + 1..=due.min(count) {
            body.clear();
            payload::put(&mut body, seq, now_ns(), &pad);
            fanout::publish(&mut batch, &a.topic, &body);
        }
        sent = sent.max(due.min(count));
        w.write_all(&batch).map_err(io)?;
        batch.clear();
        thread::sleep(Duration::from_millis(1));
    }
    Ok(start.elapsed())
}

pub fn lag(a: &LagArgs) -> Result<(), String> {
    let a = &LagArgs { size: a.size.max(32), slowdown: a.slowdown.max(1), ..a.clone() };
    let count = (a.rate as f64 * a.seconds) as u64;
    let publishing = AtomicBool::new(true);
    let subscribed = Barrier::new(a.fast + 2);
    let slow_rate = (a.rate / a.slowdown).max(1);
    let (published, slow, fast, rss) = thread::scope(|s| {
        let slow = s.spawn(|| subscriber(a, count, Some((slow_rate, &publishing)), &subscribed));
        let fast: Vec<_> = (0..a.fast).map(|_| s.spawn(|| subscriber(a, count, None, &subscribed))).collect();
        subscribed.wait();
        let publisher = s.spawn(|| {
            let took = publisher(a, count);
            publishing.store(false, Ordering::Relaxed);
            took
        });
        // Resident memory of the servers, twice a second until every subscriber is done.
        let mut rss = Vec::new();
        let t0 = Instant::now();
        while !(slow.is_finished() && fast.iter().all(|f| f.is_finished())) {
            rss.push((t0.elapsed().as_secs_f64(), procfs::rss_kb(&procfs::tree(&a.server_pids))));
            thread::sleep(Duration::from_millis(500));
        }
        let join = |h: thread::ScopedJoinHandle<'_, Result<Got, String>>| h.join().unwrap_or(Err("panicked".into()));
        (
            publisher.join().unwrap_or(Err("panicked".into())),
            join(slow),
            fast.into_iter().map(join).collect::<Vec<_>>(),
            rss,
        )
    });
    let took = published.map_err(|e| format!("publisher: {e}"))?;
    println!(
        "lag: {count} messages x {} B published in {:.1} s ({:.0}/s); {} subscribers at full speed, one at {slow_rate}/s while publishing",
        a.size,
        took.as_secs_f64(),
        count as f64 / took.as_secs_f64(),
        a.fast
    );
    let mut failed = Vec::new();
    match &slow {
        Ok(g) if g.gaps.is_empty() => println!("  slow subscriber: all {} messages, in order, no GAP", g.messages),
        Ok(g) => println!(
            "  slow subscriber: {} messages and {} GAP line(s) for the other {} (first {}-{}), in order, nothing lost silently",
            g.messages,
            g.gaps.len(),
            g.gapped(),
            g.gaps[0].0,
            g.gaps[0].1
        ),
        Err(e) => failed.push(format!("slow subscriber: {e}")),
    }
    for (i, f) in fast.iter().enumerate() {
        match f {
            Ok(g) if g.gaps.is_empty() => {
                let h = g.latency.as_ref().expect("a fast subscriber's latency");
                let ms = |q| h.quantile(q).unwrap_or(0) as f64 / 1e6;
                println!(
                    "  fast subscriber {}: all {} messages, in order; latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
                    i + 1,
                    g.messages,
                    ms(0.5),
                    ms(0.99),
                    h.max as f64 / 1e6
                );
            }
            Ok(g) => failed.push(format!("fast subscriber {}: GAP lines for {} messages", i + 1, g.gapped())),
            Err(e) => failed.push(format!("fast subscriber {}: {e}", i + 1)),
        }
    }
    if !rss.is_empty() {
        let mib = |kb: u64| kb as f64 / 1024.0;
        let every = (5.0 / 0.5) as usize; // a sample each 5 s
        let samples: Vec<String> =
            rss.iter().step_by(every).map(|(t, kb)| format!("{t:.0}s {:.0}", mib(*kb))).collect();
        let max = rss.iter().map(|(_, kb)| *kb).max().unwrap_or(0);
        println!(
            "  server RSS MiB: {}; max {:.0}, at the end {:.0}",
            samples.join(", "),
            mib(max),
            mib(rss[rss.len() - 1].1)
        );
    }
    match failed.is_empty() {
        true => Ok(()),
        false => Err(failed.join("; ")),
    }
}
