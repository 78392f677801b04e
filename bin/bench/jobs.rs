//! `fanout-bench jobs`: a work queue under load. One producer enqueues
//! `--jobs` jobs of `--size` bytes (at most `--window` awaiting their `OK
//! enqueued`), `--consumers` consumers take them with `--prefetch` and ack
//! each one. Reports jobs acknowledged per second (first enqueue to last
//! `OK acked`) and the latency from writing an `enqueue` to reading its job.
//! Every job must arrive exactly once, on the first try.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;

use crate::hist::Hist;
use crate::payload::{self, now_ns};

#[derive(Args, Clone, Debug)]
pub struct JobsArgs {
    /// Where the producer enqueues (the data-source server)
    #[arg(long)]
    producer_addr: String,
    /// Where the consumers consume (the subscriber server)
    #[arg(long)]
    consumer_addr: String,
    #[arg(long, default_value = "bench")]
    queue: String,
    #[arg(long, default_value_t = 200_000)]
    jobs: u64,
    #[arg(long, default_value_t = 4)]
    consumers: usize,
    #[arg(long, default_value_t = 100)]
    prefetch: u32,
    /// Payload bytes (at least 32)
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Enqueues written and not yet confirmed, at most
    #[arg(long, default_value_t = 1000)]
    window: u64,
}

fn connect(addr: &str) -> Result<(BufReader<TcpStream>, TcpStream), String> {
    let s = TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    let mut welcome = String::new();
    r.read_line(&mut welcome).map_err(|e| e.to_string())?;
    Ok((r, s))
}

fn line(r: &mut BufReader<TcpStream>, buf: &mut String) -> Result<(), String> {
    buf.clear();
    match r.read_line(buf) {
        Ok(0) => Err("connection closed".into()),
        Ok(_) if buf.starts_with("ERR") => Err(buf.trim_end().to_owned()),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

pub fn jobs(a: &JobsArgs) -> Result<(), String> {
    let size = a.size.max(32);
    let acked = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Mutex::new(vec![false; a.jobs as usize + 1]));
    let mut consumers = Vec::new();
    let mut sockets = Vec::new();
    for _ in 0..a.consumers {
        let (mut r, mut w) = connect(&a.consumer_addr)?;
        writeln!(w, "consume {} {}", a.queue, a.prefetch).map_err(|e| e.to_string())?;
        let mut buf = String::new();
        line(&mut r, &mut buf)?;
        sockets.push(w.try_clone().map_err(|e| e.to_string())?);
        let (acked, seen) = (acked.clone(), seen.clone());
        consumers.push(thread::spawn(move || -> Result<Hist, String> {
            let mut hist = Hist::new();
            let mut acks = Vec::new();
            loop {
                if line(&mut r, &mut buf).is_err() {
                    return Ok(hist); // shut down at the end
                }
                if buf.starts_with("OK acked") {
                    acked.fetch_add(1, Ordering::Relaxed);
                } else {
                    let now = now_ns();
                    let rest = buf.strip_prefix("Job [").ok_or(format!("unexpected: {buf}"))?;
                    let (job, rest) = rest.split_once("] try ").ok_or(format!("unexpected: {buf}"))?;
                    let (attempt, body) = rest.split_once(": ").ok_or(format!("unexpected: {buf}"))?;
                    let (seq, ts) = payload::parse(body.trim_end().as_bytes(), size).ok_or("bad payload")?;
                    if attempt != "1" || std::mem::replace(&mut seen.lock().unwrap()[seq as usize], true) {
                        return Err(format!("job {seq} delivered twice ({job}, try {attempt})"));
                    }
                    hist.record(now.saturating_sub(ts));
                    acks.extend_from_slice(format!("ack {job}\n").as_bytes());
                }
                // Acks go out in one write per read from the server.
                if r.buffer().is_empty() && !acks.is_empty() {
                    w.write_all(&acks).map_err(|e| e.to_string())?;
                    acks.clear();
                }
            }
        }));
    }
    let (mut r, mut w) = connect(&a.producer_addr)?;
    let start = Instant::now();
    let (mut sent, mut confirmed) = (0u64, 0u64);
    let (mut batch, mut buf) = (Vec::new(), String::new());
    let pad = vec![b'.'; size - 32];
    while confirmed < a.jobs {
        while sent < a.jobs && sent - confirmed < a.window {
            sent += 1;
            batch.extend_from_slice(format!("enqueue {} ", a.queue).as_bytes());
            payload::put(&mut batch, sent, now_ns(), &pad);
            batch.push(b'\n');
        }
        w.write_all(&batch).map_err(|e| e.to_string())?;
        batch.clear();
        // Read confirmations down to half the window (or all at the end).
        let low = if sent == a.jobs { a.jobs } else { sent.saturating_sub(a.window / 2) };
        while confirmed < low {
            line(&mut r, &mut buf)?;
            confirmed += 1;
        }
    }
    let enqueued = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.load(Ordering::Relaxed) < a.jobs {
        if Instant::now() > deadline {
            return Err(format!("only {} of {} jobs acked", acked.load(Ordering::Relaxed), a.jobs));
        }
        thread::sleep(Duration::from_millis(1));
    }
    let total = start.elapsed();
    for s in &sockets {
        let _ = s.shutdown(Shutdown::Both);
    }
    let mut hist = Hist::new();
    for c in consumers {
        let h = c.join().map_err(|_| "consumer panicked")??;
        for (i, n) in h.counts.iter().enumerate() {
            hist.counts[i] += n;
        }
        hist.n += h.n;
        hist.max = hist.max.max(h.max);
    }
    let us = |q: f64| hist.quantile(q).unwrap_or(0) as f64 / 1000.0;
    println!(
        "jobs {} x {} B, {} consumers, prefetch {}: {:.0} jobs/s acked ({:.2} s), enqueue confirmed {:.0}/s; enqueue->job p50 {:.0} us p99 {:.0} us max {:.0} us",
        a.jobs,
        size,
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
