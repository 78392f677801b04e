//! `fanout-bench storm`: a subscription storm beside unrelated traffic.
//! `--conns` connections subscribe `--topics` topics in all (each one line of
//! `subscribe` for fanout, `SUB`s then `PING` for NATS) while a publisher
//! streams on an unrelated topic at `--rate` to a subscriber of its own (for
//! fanout on the data-source server, the storm on the subscriber server).
//! It reports the subscription rate (from the first write until every topic
//! is confirmed) and the unrelated subscriber's latency during the storm.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;

use crate::hist::Hist;
use crate::payload::now_ns;
use crate::proto::{Event, Proto};

#[derive(Args, Clone, Debug)]
pub struct StormArgs {
    #[arg(long, value_enum)]
    proto: Proto,
    /// Where the storm subscribes (fanout: the subscriber server)
    #[arg(long)]
    sub_addr: String,
    /// Where the unrelated publisher and its subscriber connect (fanout: the data-source server)
    #[arg(long)]
    pub_addr: String,
    /// Subscribing connections
    #[arg(long, default_value_t = 100)]
    conns: usize,
    /// Topics subscribed in all, spread evenly over the connections
    #[arg(long, default_value_t = 100_000)]
    topics: usize,
    /// Messages a second on the unrelated topic
    #[arg(long, default_value_t = 2000)]
    rate: u64,
}

const WAIT: Duration = Duration::from_secs(60);

pub fn storm(a: &StormArgs) -> Result<(), String> {
    if matches!(a.proto, Proto::Redis | Proto::Ws) || a.conns == 0 || a.topics < a.conns {
        return Err("storm: --proto fanout or nats, --conns above 0, --topics at least --conns".into());
    }
    let per = a.topics / a.conns;
    // The unrelated subscriber, confirmed before anything else starts.
    let mut probe = Conn::open(a.proto, &a.pub_addr)?;
    let mut line = Vec::new();
    a.proto.subscribe(&mut line, "probe");
    probe.send(&line)?;
    probe.until(|e| matches!(e, Got::Subscribed | Got::Pong))?;
    let mut storm: Vec<Conn> = (0..a.conns).map(|_| Conn::open(a.proto, &a.sub_addr)).collect::<Result<_, _>>()?;
    let lines: Vec<Vec<u8>> = (0..a.conns).map(|i| subscribe_many(a.proto, i, per)).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (stop, proto, addr, rate) = (stop.clone(), a.proto, a.pub_addr.clone(), a.rate);
        thread::spawn(move || publish(proto, &addr, rate, &stop))
    };
    let reader = thread::spawn(move || -> Result<(Hist, u64), String> {
        let mut h = Hist::new();
        loop {
            match probe.event()? {
                Got::Message(payload) if payload == b"end" => return Ok((h.clone(), h.n)),
                Got::Message(payload) => {
                    let sent: u64 =
                        std::str::from_utf8(&payload).ok().and_then(|s| s.parse().ok()).ok_or("bad probe")?;
                    h.record(now_ns().saturating_sub(sent));
                }
                Got::Error(e) => return Err(format!("probe: {e}")),
                _ => {}
            }
        }
    });
    thread::sleep(Duration::from_millis(200)); // the stream runs before the storm
    let started = Instant::now();
    for (c, l) in storm.iter_mut().zip(&lines) {
        c.send(l)?;
    }
    for c in storm.iter_mut() {
        let mut confirmed = 0;
        c.until(|e| {
            confirmed += usize::from(matches!(e, Got::Subscribed));
            (a.proto == Proto::Nats && matches!(e, Got::Pong)) || confirmed == per
        })?;
    }
    let took = started.elapsed();
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    publisher.join().map_err(|_| "publisher panicked")??;
    let (h, n) = reader.join().map_err(|_| "reader panicked")??;
    let ms = |v: Option<u64>| v.map_or(f64::NAN, |v| v as f64 / 1e6);
    println!(
        "storm {:?}: {} topics from {} connections confirmed in {:.2} s = {:.0} subscriptions/s; \
         unrelated subscriber at {}/s ({} messages): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        a.proto,
        per * a.conns,
        a.conns,
        took.as_secs_f64(),
        (per * a.conns) as f64 / took.as_secs_f64(),
        a.rate,
        n,
        ms(h.quantile(0.5)),
        ms(h.quantile(0.99)),
        ms(Some(h.max))
    );
    Ok(())
}

/// The subscriptions of connection `i`: one line for fanout (a connection has
/// at most 1024), SUBs and a PING for NATS.
fn subscribe_many(proto: Proto, i: usize, n: usize) -> Vec<u8> {
    match proto {
        Proto::Fanout => {
            let topics: Vec<String> = (0..n).map(|j| format!("s{i}.{j}")).collect();
            format!("subscribe {}\n", topics.join(" ")).into_bytes()
        }
        _ => {
            let mut out: Vec<u8> = (0..n).flat_map(|j| format!("SUB s.{i}.{j} {j}\r\n").into_bytes()).collect();
            out.extend_from_slice(b"PING\r\n");
            out
        }
    }
}

/// Publishes the send time (ns) on `probe` at `rate`, then `end`.
fn publish(proto: Proto, addr: &str, rate: u64, stop: &AtomicBool) -> Result<(), String> {
    let mut c = Conn::open(proto, addr)?;
    let every = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let mut next = Instant::now();
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let body = now_ns().to_string();
        let (head, tail) = proto.publish_frame("probe", body.len());
        out.clear();
        out.extend_from_slice(&head);
        out.extend_from_slice(body.as_bytes());
        out.extend_from_slice(tail);
        c.send(&out)?;
        next += every;
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let (head, tail) = proto.publish_frame("probe", 3);
    c.send(&[&head[..], b"end", tail].concat())
}

/// What the storm needs of a server's event, owned.
enum Got {
    Message(Vec<u8>),
    Subscribed,
    Pong,
    Error(String),
    Other,
}

/// A blocking client connection that decodes what the server sends.
struct Conn {
    proto: Proto,
    s: TcpStream,
    buf: Vec<u8>,
    pos: usize,
}

impl Conn {
    fn open(proto: Proto, addr: &str) -> Result<Conn, String> {
        let s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(WAIT)).map_err(|e| e.to_string())?;
        let mut c = Conn { proto, s, buf: Vec::new(), pos: 0 };
        let mut hello = Vec::new();
        proto.hello(&mut hello);
        c.send(&hello)?;
        Ok(c)
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.s.write_all(bytes).map_err(|e| format!("write: {e}"))
    }

    /// The next event (a server's PING is answered here).
    fn event(&mut self) -> Result<Got, String> {
        loop {
            if let Some((ev, used)) = self.proto.decode(&self.buf[self.pos..])? {
                let got = match ev {
                    Event::Message { payload, .. } => Got::Message(payload.to_vec()),
                    Event::Subscribed => Got::Subscribed,
                    Event::Pong => Got::Pong,
                    Event::Error(e) => Got::Error(String::from_utf8_lossy(e).into_owned()),
                    Event::Ping => {
                        self.pos += used;
                        self.send(b"PONG\r\n")?;
                        continue;
                    }
                    _ => Got::Other,
                };
                self.pos += used;
                return Ok(got);
            }
            self.buf.drain(..self.pos);
            self.pos = 0;
            let mut chunk = [0u8; 64 * 1024];
            let n = self.s.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads events until `done` says so; an error event ends it.
    fn until(&mut self, mut done: impl FnMut(&Got) -> bool) -> Result<(), String> {
        loop {
            match self.event()? {
                Got::Error(e) => return Err(e),
                ev if done(&ev) => return Ok(()),
                _ => {}
            }
        }
    }
}
