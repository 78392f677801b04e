//! `fanout-bench`: a load generator for the fanout pub/sub servers, with NATS
//! and Redis as reference points.
//!
//! One `run` is one measurement, in one process:
//! * subscriber threads (`--sub-threads`, default 2) each own a share of the
//!   subscriber connections in their own mio `Poll`: they connect them in
//!   waves, wait until each one has *confirmed* its subscription, then check
//!   every message received;
//! * the main thread then publishes on one connection, either as fast as the
//!   socket takes it (with a bounded window of messages in flight, so no
//!   server queue grows without limit) or at a fixed rate.
//!
//! Each payload carries the publisher's per-topic sequence number and the time
//! it was written, so every subscriber counts exactly the missing, duplicated
//! and out-of-order messages; any of those (or a disconnect, an `ERR`, a
//! timeout) makes the run `FAILED`. The bench reports its own CPU use and,
//! given `--server-pid`, the CPU and resident memory of the server processes
//! (each pid plus all its descendants).
//!
//! `table` turns the JSON lines of many runs into the median table of
//! BENCHMARKS.md; `free-port` prints free loopback ports for scripts/bench.sh.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use memchr::memchr;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use serde::{Deserialize, Serialize};

mod floor;

// ───────────────────────────── command line ─────────────────────────────

#[derive(Parser)]
#[command(about = "Load generator for fanout, NATS and Redis pub/sub (loopback only)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one measurement and print its result (one JSON line with --json)
    Run(RunArgs),
    /// Print the median tables of result files (JSON lines written by `run --json`)
    Table {
        files: Vec<PathBuf>,
        /// Runs per cell expected (shown in the header only)
        #[arg(long)]
        runs: Option<usize>,
    },
    /// Measure this machine's floor for the conns scenario: no server, only
    /// the writes of one line to N loopback connections and their reads
    Floor(floor::FloorArgs),
    /// The reading side of `floor` (started by it)
    #[command(hide = true)]
    FloorRead(floor::FloorReadArgs),
    /// Print N distinct free TCP ports on 127.0.0.1, one a line
    FreePort {
        #[arg(default_value_t = 1)]
        n: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Proto {
    /// Our line protocol (publish to data-source, subscribe at subscriber)
    Fanout,
    /// NATS text protocol
    Nats,
    /// Redis RESP pub/sub
    Redis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Scenario {
    /// 1 publisher → --subs subscribers on one topic, as fast as possible
    Fanout,
    /// --topics topics × 1 subscriber each, publisher round-robins
    Topics,
    /// --rate messages/s to 1 subscriber; latency percentiles
    Latency,
    /// --subs idle subscribers: memory per connection, time for one publish to reach all
    Conns,
}

#[derive(Args, Clone, Debug)]
struct RunArgs {
    #[arg(long, value_enum)]
    proto: Proto,
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Where the publisher connects (fanout: the data-source server)
    #[arg(long, value_name = "ADDR")]
    pub_addr: SocketAddr,
    /// Where subscribers connect (fanout: the subscriber server) [default: --pub-addr]
    #[arg(long, value_name = "ADDR")]
    sub_addr: Option<SocketAddr>,
    /// Subscriber connections [fanout 10, topics = --topics, latency 1, conns 10000]
    #[arg(long)]
    subs: Option<usize>,
    /// Topics; subscriber i takes topic i mod topics [topics 1000, others 1]
    #[arg(long)]
    topics: Option<usize>,
    /// Messages to publish in total [depends on the scenario]
    #[arg(long)]
    messages: Option<u64>,
    /// Messages per second (latency scenario) [default 10000]
    #[arg(long)]
    rate: Option<u64>,
    /// Most messages per subscriber published but not yet received; 0 = no limit
    /// [fanout/topics 1 000 000 / subs within 1000..=10000, latency 0, conns 1]
    #[arg(long)]
    window: Option<u64>,
    /// Payload bytes (at least 32: sequence number and timestamp in hex)
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Threads sharing the subscriber connections
    #[arg(long, default_value_t = 2)]
    sub_threads: usize,
    /// Seconds allowed for publishing (the run fails if they run out)
    #[arg(long, default_value_t = 60.0)]
    time_limit: f64,
    /// Seconds allowed for connecting and confirming every subscription
    #[arg(long, default_value_t = 120.0)]
    setup_timeout: f64,
    /// Seconds without any delivery after which waiting for stragglers stops
    #[arg(long, default_value_t = 3.0)]
    drain: f64,
    /// A server process to measure (with all its descendants); repeatable
    #[arg(long = "server-pid", value_name = "PID")]
    server_pids: Vec<u32>,
    /// Label of this scenario in tables [default: derived from the parameters]
    #[arg(long)]
    name: Option<String>,
    /// Print the result as one JSON line instead of text
    #[arg(long)]
    json: bool,
}

/// The parameters of a run with every default filled in.
#[derive(Clone, Debug)]
struct Plan {
    proto: Proto,
    scenario: Scenario,
    pub_addr: SocketAddr,
    sub_addr: SocketAddr,
    subs: usize,
    topics: Vec<String>,
    messages: u64,
    rate: u64,
    window: u64,
    payload: usize,
    sub_threads: usize,
    time_limit: Duration,
    setup_timeout: Duration,
    drain: Duration,
    name: String,
}

impl Plan {
    fn new(a: &RunArgs) -> Result<Plan, String> {
        use Scenario::*;
        let topics = a.topics.unwrap_or(if a.scenario == Topics { 1000 } else { 1 });
        let subs = a.subs.unwrap_or(match a.scenario {
            Fanout => 10,
            Topics => topics,
            Latency => 1,
            Conns => 10_000,
        });
        let rate = if a.scenario == Latency { a.rate.unwrap_or(10_000) } else { a.rate.unwrap_or(0) };
        let messages = a.messages.unwrap_or(match a.scenario {
            Fanout => (1_000_000 / subs as u64).clamp(2_000, 500_000),
            Topics => 200_000,
            Latency => rate * 5,
            Conns => 10,
        });
        // About a million deliveries in flight at most, 1000 to 10 000 per subscriber.
        let window = a.window.unwrap_or(match a.scenario {
            Fanout | Topics => (1_000_000 / subs as u64).clamp(1000, 10_000),
            Latency => 0,
            Conns => 1,
        });
        let sub_addr = a.sub_addr.unwrap_or(a.pub_addr);
        for addr in [a.pub_addr, sub_addr] {
            if !addr.ip().is_loopback() {
                return Err(format!("{addr}: only loopback addresses may be targeted"));
            }
        }
        if a.scenario == Latency && rate == 0 {
            return Err("the latency scenario needs --rate above 0".into());
        }
        if topics == 0 || subs < topics {
            return Err("need at least one topic and at least one subscriber per topic".into());
        }
        if messages == 0 || messages > 50_000_000 {
            return Err("--messages must be between 1 and 50 000 000".into());
        }
        if a.payload < 32 || a.payload > 60_000 {
            return Err("--payload must be between 32 and 60000".into());
        }
        let name = a.name.clone().unwrap_or_else(|| match a.scenario {
            Fanout => format!("fanout 1→{subs}"),
            Topics => format!("topics {topics}×{}", subs / topics),
            Latency => format!("latency {}/s", si(rate as f64)),
            Conns => format!("conns {subs}"),
        });
        let secs = |s: f64| Duration::from_secs_f64(s.clamp(0.1, 3600.0));
        Ok(Plan {
            proto: a.proto,
            scenario: a.scenario,
            pub_addr: a.pub_addr,
            sub_addr,
            subs,
            topics: (0..topics).map(|k| format!("t{k}")).collect(),
            messages,
            rate,
            window,
            payload: a.payload,
            sub_threads: a.sub_threads.clamp(1, subs.min(16)),
            time_limit: secs(a.time_limit),
            setup_timeout: secs(a.setup_timeout),
            drain: secs(a.drain),
            name,
        })
    }

    /// How many messages topic `k` gets: message i goes to topic i mod T with
    /// sequence number i div T.
    fn expected(&self, k: usize) -> u64 {
        let t = self.topics.len() as u64;
        self.messages / t + u64::from((k as u64) < self.messages % t)
    }
}

// ───────────────────────────── clock, payload ─────────────────────────────

/// Nanoseconds since the process started; one monotonic clock for both threads.
fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Payload layout: 16 hex digits of sequence number, 16 of send time (ns), then
/// '.' padding. No spaces or newlines, so it is a valid line-protocol message.
mod payload {
    const HEX: &[u8; 16] = b"0123456789abcdef";

    pub fn put(out: &mut Vec<u8>, seq: u64, ts: u64, pad: &[u8]) {
        for v in [seq, ts] {
            out.extend((0..16).rev().map(|i| HEX[((v >> (i * 4)) & 15) as usize]));
        }
        out.extend_from_slice(pad);
    }

    /// (sequence, timestamp), or None if the payload is not one of ours.
    pub fn parse(p: &[u8], len: usize) -> Option<(u64, u64)> {
        if p.len() != len {
            return None;
        }
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let hex = |s: &[u8]| s.iter().try_fold(0u64, |acc, &c| Some(acc << 4 | digit(c)? as u64));
        Some((hex(&p[..16])?, hex(&p[16..32])?))
    }
}

// ───────────────────────────── the three protocols ─────────────────────────────

/// What a server sent, decoded from the front of a buffer.
#[derive(Debug)]
enum Event<'a> {
    Message { topic: &'a [u8], payload: &'a [u8] },
    /// A subscription confirmation (fanout `OK subscribed`, Redis `subscribe`).
    Subscribed,
    Pong,
    /// The server pings us (NATS): answer PONG.
    Ping,
    /// Redis' reply to PUBLISH: the number of receivers.
    Ack(i64),
    Error(&'a [u8]),
    Other,
}

/// Result of decoding: None = need more bytes, else the event and bytes used.
type Decoded<'a> = Result<Option<(Event<'a>, usize)>, String>;

impl Proto {
    /// Bytes a new connection sends first.
    fn hello(self, out: &mut Vec<u8>) {
        if self == Proto::Nats {
            out.extend_from_slice(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n");
        }
    }

    /// Subscribes to `topic`; the server's answer is a Subscribed event (fanout,
    /// Redis) or, for NATS, the PONG to the PING sent after the SUB.
    fn subscribe(self, out: &mut Vec<u8>, topic: &str) {
        match self {
            Proto::Fanout => out.extend_from_slice(format!("subscribe {topic}\n").as_bytes()),
            Proto::Nats => out.extend_from_slice(format!("SUB {topic} 1\r\nPING\r\n").as_bytes()),
            Proto::Redis => out.extend_from_slice(resp(&["SUBSCRIBE", topic]).as_bytes()),
        }
    }

    /// What goes before and after the payload of a publish to `topic`.
    fn publish_frame(self, topic: &str, len: usize) -> (Vec<u8>, &'static [u8]) {
        match self {
            Proto::Fanout => (format!("pub {topic} ").into_bytes(), b"\n"),
            Proto::Nats => (format!("PUB {topic} {len}\r\n").into_bytes(), b"\r\n"),
            Proto::Redis => {
                let head = format!("*3\r\n$7\r\nPUBLISH\r\n${}\r\n{topic}\r\n${len}\r\n", topic.len());
                (head.into_bytes(), b"\r\n")
            }
        }
    }

    fn ping(self, out: &mut Vec<u8>) {
        out.extend_from_slice(match self {
            Proto::Fanout => b"ping\n",
            Proto::Nats => b"PING\r\n",
            Proto::Redis => b"*1\r\n$4\r\nPING\r\n",
        });
    }

    fn decode(self, buf: &[u8]) -> Decoded<'_> {
        match self {
            Proto::Fanout => decode_line(buf),
            Proto::Nats => decode_nats(buf),
            Proto::Redis => decode_resp(buf),
        }
    }
}

fn resp(args: &[&str]) -> String {
    let mut s = format!("*{}\r\n", args.len());
    for a in args {
        s += &format!("${}\r\n{a}\r\n", a.len());
    }
    s
}

fn after<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    s.strip_prefix(prefix)
}

/// Index of the first CRLF.
fn find_crlf(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    loop {
        let cr = from + memchr(b'\r', &buf[from..])?;
        if buf.get(cr + 1) == Some(&b'\n') {
            return Some(cr);
        }
        from = cr + 1;
    }
}

fn num<T: std::str::FromStr>(s: &[u8]) -> Result<T, String> {
    std::str::from_utf8(s).ok().and_then(|s| s.parse().ok()).ok_or_else(|| {
        format!("bad number {:?}", String::from_utf8_lossy(s))
    })
}

/// Our line protocol: LF-terminated lines.
fn decode_line(buf: &[u8]) -> Decoded<'_> {
    let Some(nl) = memchr(b'\n', buf) else { return Ok(None) };
    let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
    let ev = if let Some(rest) = after(line, b"Received [") {
        // Topics never contain ']'.
        let end = memchr(b']', rest).filter(|&e| rest[e..].starts_with(b"]: ")).ok_or("bad 'Received' line")?;
        Event::Message { topic: &rest[..end], payload: &rest[end + 3..] }
    } else if line.starts_with(b"OK subscribed") {
        Event::Subscribed
    } else if line == b"PONG" {
        Event::Pong
    } else if line.starts_with(b"ERR") {
        Event::Error(line)
    } else {
        Event::Other // welcome line and anything informational
    };
    Ok(Some((ev, nl + 1)))
}

/// NATS: CRLF-terminated control lines; MSG is followed by its payload.
fn decode_nats(buf: &[u8]) -> Decoded<'_> {
    let Some(nl) = find_crlf(buf) else { return Ok(None) };
    let line = &buf[..nl];
    let ev = if let Some(args) = after(line, b"MSG ") {
        // MSG <subject> <sid> [reply-to] <#bytes>
        let topic = args.split(|&b| b == b' ').find(|f| !f.is_empty()).ok_or("bad MSG line")?;
        let len: usize = num(args.rsplit(|&b| b == b' ').find(|f| !f.is_empty()).ok_or("bad MSG line")?)?;
        let start = nl + 2;
        if buf.len() < start + len + 2 {
            return Ok(None);
        }
        if &buf[start + len..start + len + 2] != b"\r\n" {
            return Err("MSG payload not followed by CRLF".into());
        }
        return Ok(Some((Event::Message { topic, payload: &buf[start..start + len] }, start + len + 2)));
    } else if line == b"PING" {
        Event::Ping
    } else if line == b"PONG" {
        Event::Pong
    } else if line.starts_with(b"-ERR") {
        Event::Error(line)
    } else if line.starts_with(b"INFO") || line == b"+OK" {
        Event::Other
    } else {
        return Err(format!("unexpected NATS line {:?}", String::from_utf8_lossy(line)));
    };
    Ok(Some((ev, nl + 2)))
}

/// One RESP value: a bulk or simple string, an integer or an error.
enum Resp<'a> {
    Str(&'a [u8]),
    Int(i64),
    Err(&'a [u8]),
}

/// Decodes the scalar RESP value at `pos`: Ok(None) if incomplete.
fn resp_scalar(buf: &[u8], pos: usize) -> Result<Option<(Resp<'_>, usize)>, String> {
    let Some(nl) = find_crlf(&buf[pos..]) else { return Ok(None) };
    let (kind, line, next) = (buf.get(pos).copied(), &buf[pos + 1..pos + nl], pos + nl + 2);
    Ok(Some(match kind {
        Some(b'$') => {
            let len: usize = num(line)?;
            if buf.len() < next + len + 2 {
                return Ok(None);
            }
            (Resp::Str(&buf[next..next + len]), next + len + 2)
        }
        Some(b'+') => (Resp::Str(line), next),
        Some(b':') => (Resp::Int(num(line)?), next),
        Some(b'-') => (Resp::Err(line), next),
        _ => return Err(format!("unexpected RESP byte at {:?}", String::from_utf8_lossy(&buf[pos..pos + nl]))),
    }))
}

/// Redis: replies and pub/sub pushes (arrays of scalars).
fn decode_resp(buf: &[u8]) -> Decoded<'_> {
    if buf.first() != Some(&b'*') {
        let Some((v, used)) = resp_scalar(buf, 0)? else { return Ok(None) };
        let ev = match v {
            Resp::Str(b"PONG") => Event::Pong,
            Resp::Int(n) => Event::Ack(n),
            Resp::Err(e) => Event::Error(e),
            Resp::Str(_) => Event::Other,
        };
        return Ok(Some((ev, used)));
    }
    let Some(nl) = find_crlf(buf) else { return Ok(None) };
    let n: usize = num(&buf[1..nl])?;
    let (mut pos, mut items) = (nl + 2, [&b""[..]; 3]);
    for i in 0..n {
        let Some((v, next)) = resp_scalar(buf, pos)? else { return Ok(None) };
        if let (Resp::Str(s), Some(item)) = (v, items.get_mut(i)) {
            *item = s;
        }
        pos = next;
    }
    let ev = match items[0] {
        b"message" => Event::Message { topic: items[1], payload: items[2] },
        b"subscribe" => Event::Subscribed,
        b"pong" => Event::Pong,
        _ => Event::Other,
    };
    Ok(Some((ev, pos)))
}

// ───────────────────────────── connections ─────────────────────────────

/// Reads per wake-up before a connection yields to the others.
const MAX_READS: usize = 64;
/// Largest partial frame kept between reads.
const MAX_INBUF: usize = 1 << 20;

enum ReadOutcome {
    /// The socket is empty (wait for the next readiness event).
    Drained,
    /// MAX_READS reached: more may be waiting, come back soon.
    More,
    Eof,
}

/// A non-blocking connection with an input remainder and an output queue.
struct Conn {
    stream: TcpStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        let _ = stream.set_nodelay(true);
        Conn { stream, inbuf: Vec::new(), out: Vec::new(), out_pos: 0 }
    }

    fn queued(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Writes until the queue is empty or the socket is full.
    fn flush(&mut self) -> Result<(), String> {
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err("connection closed while writing".into()),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Still connecting, or the socket buffer is full.
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected) => break,
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        Ok(())
    }

    /// Reads what the socket has and hands each decoded event to `on_event`,
    /// with the output queue (to answer a server's PING) and the time the
    /// read returned.
    fn read_events<F>(&mut self, proto: Proto, scratch: &mut [u8], mut on_event: F) -> Result<ReadOutcome, String>
    where
        F: FnMut(Event<'_>, &mut Vec<u8>, u64),
    {
        let Conn { stream, inbuf, out, .. } = self;
        let mut decode_all = |buf: &[u8], out: &mut Vec<u8>| -> Result<usize, String> {
            let (mut pos, now) = (0, now_ns());
            while let Some((ev, used)) = proto.decode(&buf[pos..])? {
                on_event(ev, out, now);
                pos += used;
            }
            Ok(pos)
        };
        for _ in 0..MAX_READS {
            let n = match stream.read(scratch) {
                Ok(0) => return Ok(ReadOutcome::Eof),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected) => {
                    return Ok(ReadOutcome::Drained)
                }
                Err(e) => return Err(format!("read: {e}")),
            };
            if inbuf.is_empty() {
                let used = decode_all(&scratch[..n], out)?;
                inbuf.extend_from_slice(&scratch[used..n]);
            } else {
                inbuf.extend_from_slice(&scratch[..n]);
                let used = decode_all(inbuf, out)?;
                inbuf.drain(..used);
            }
            if inbuf.len() > MAX_INBUF {
                return Err("incomplete frame larger than 1 MiB".into());
            }
            // A short read emptied the socket; anything arriving later raises a
            // new edge-triggered event, so this saves the read that would block.
            if n < scratch.len() {
                return Ok(ReadOutcome::Drained);
            }
        }
        Ok(ReadOutcome::More)
    }
}

/// Log-linear histogram of nanosecond values (64 sub-buckets per power of two,
/// so quantiles are within ~1.6%).
#[derive(Clone)]
struct Hist {
    counts: Vec<u64>,
    n: u64,
    max: u64,
}

impl Hist {
    fn new() -> Hist {
        Hist { counts: vec![0; 59 * 64], n: 0, max: 0 }
    }

    fn index(v: u64) -> usize {
        if v < 128 {
            return v as usize;
        }
        let e = 63 - v.leading_zeros() as usize; // ≥ 7
        (e - 6) * 64 + (v >> (e - 6)) as usize
    }

    fn value(i: usize) -> u64 {
        if i < 128 {
            return i as u64;
        }
        let (e, sub) = (i / 64 + 5, (i % 64 + 64) as u64);
        (sub << (e - 6)) + (1 << (e - 6)) / 2
    }

    fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.n += 1;
        self.max = self.max.max(v);
    }

    fn quantile(&self, q: f64) -> Option<u64> {
        let target = ((q * self.n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Some(Self::value(i).min(self.max));
            }
        }
        None
    }
}

// ───────────────────────────── subscriber threads ─────────────────────────────

/// State all threads see.
struct Shared {
    /// Per subscriber thread: fewest messages any of its live subscribers has
    /// received. Their minimum is the base of the publisher's window.
    progress: Vec<AtomicU64>,
    /// Set (to now_ns) once the publisher has sent everything and seen its barrier.
    pub_done: AtomicU64,
    /// The main thread gave up: stop.
    abort: AtomicBool,
    /// The publisher sleeps waiting for progress: wake it when progress moves.
    pub_waiting: AtomicBool,
    pub_waker: Waker,
}

impl Shared {
    fn progress(&self) -> u64 {
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
    next_max: u64,
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
struct SubReport {
    delivered: u64,
    duplicates: u64,
    out_of_order: u64,
    corrupt: u64,
    missing: u64,
    disconnects: u64,
    errors: Vec<String>,
    last_recv: u64,
    latency: Hist,
    msgs: Vec<MsgStat>,
}

impl SubReport {
    fn new(plan: &Plan) -> SubReport {
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

    fn merge(mut self, o: SubReport) -> SubReport {
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
    fn fanout_times(&self, plan: &Plan) -> Vec<u64> {
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

fn run_subscribers(plan: &Plan, shared: &Shared, thread: usize, ready: mpsc::Sender<Result<f64, String>>) -> SubReport {
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
                let track = Track { topic, expected, ..Default::default() };
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
        let mut stream = TcpStream::connect(self.plan.sub_addr).map_err(|e| format!("connect {}: {e}", self.plan.sub_addr))?;
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
            if done > 0 && now_ns().saturating_sub(done.max(self.report.last_recv)) > self.plan.drain.as_nanos() as u64 {
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
                    if seq < track.next_max {
                        track.out_of_order += 1;
                    }
                    track.next_max = track.next_max.max(seq + 1);
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

// ───────────────────────────── publisher (main thread) ─────────────────────────────

const PUB: Token = Token(0);
const WAKE: Token = Token(1);
/// Bytes encoded per batch before writing.
const BATCH: usize = 64 * 1024;

#[derive(Default)]
struct PubReport {
    sent: u64,
    first_send: u64,
    last_send: u64,
    acks: u64,
    ack_receivers: i64,
    errors: Vec<String>,
    /// Rate mode: how late each message was written against its schedule.
    lag: Option<Hist>,
}

struct Publisher<'a> {
    plan: &'a Plan,
    shared: &'a Shared,
    poll: Poll,
    events: Events,
    conn: Conn,
    readable: bool,
    scratch: Vec<u8>,
    pongs: u64,
    report: PubReport,
}

impl<'a> Publisher<'a> {
    /// Connects and waits for the answer to a PING, so the connection is ready.
    fn connect(plan: &'a Plan, shared: &'a Shared, poll: Poll) -> Result<Self, String> {
        let addr = plan.pub_addr;
        let std = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("connect {addr}: {e}"))?;
        std.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut stream = TcpStream::from_std(std);
        poll.registry()
            .register(&mut stream, PUB, Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| e.to_string())?;
        let mut p = Publisher {
            plan,
            shared,
            poll,
            events: Events::with_capacity(16),
            conn: Conn::new(stream),
            readable: true,
            scratch: vec![0; 64 * 1024],
            pongs: 0,
            report: PubReport::default(),
        };
        p.plan.proto.hello(&mut p.conn.out);
        p.barrier(Instant::now() + Duration::from_secs(10)).map_err(|e| format!("publisher: {e}"))?;
        Ok(p)
    }

    /// Sends a ping and waits for its pong: the server has read all we sent.
    fn barrier(&mut self, deadline: Instant) -> Result<(), String> {
        let want = self.pongs + 1;
        self.plan.proto.ping(&mut self.conn.out);
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
        self.conn.flush()?;
        if let Some(t) = timeout {
            self.poll.poll(&mut self.events, Some(t)).map_err(|e| format!("poll: {e}"))?;
            self.readable |= self.events.iter().any(|e| e.token() == PUB && e.is_readable());
        }
        if self.readable {
            let (pongs, report) = (&mut self.pongs, &mut self.report);
            let outcome = self.conn.read_events(self.plan.proto, &mut self.scratch, |ev, out, _| match ev {
                Event::Pong => *pongs += 1,
                Event::Ping => out.extend_from_slice(b"PONG\r\n"),
                Event::Ack(n) => {
                    report.acks += 1;
                    report.ack_receivers += n;
                }
                Event::Error(e) if report.errors.len() < 10 => report.errors.push(String::from_utf8_lossy(e).into_owned()),
                _ => {}
            })?;
            match outcome {
                ReadOutcome::Drained => self.readable = false,
                ReadOutcome::More => {}
                ReadOutcome::Eof => return Err("server closed the publisher's connection".into()),
            }
        }
        self.conn.flush()
    }

    /// Publishes every message, then waits for the barrier.
    fn run(&mut self) {
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
        let mut i = 0u64;
        while i < plan.messages || self.conn.queued() > 0 {
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
            while i < plan.messages && self.conn.queued() < BATCH && allowed(i) && due(i) {
                let (head, tail) = &frames[(i % ntopics) as usize];
                let ts = now_ns();
                if interval > 0.0 {
                    lag.record(ts.saturating_sub(start + (i as f64 * interval) as u64));
                }
                self.conn.out.extend_from_slice(head);
                payload::put(&mut self.conn.out, i / ntopics, ts, &pad);
                self.conn.out.extend_from_slice(tail);
                i += 1;
            }
            self.io(Some(Duration::ZERO))?; // write the batch, read replies (Redis acks)
            if i == plan.messages && self.conn.queued() == 0 {
                break;
            }
            // Wait for whatever holds us back.
            if self.conn.queued() > 0 {
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

// ───────────────────────────── /proc and rusage ─────────────────────────────

mod procfs {
    use std::collections::{HashMap, HashSet};
    use std::fs;

    /// The given pids and all their descendants that exist now.
    pub fn tree(roots: &[u32]) -> Vec<u32> {
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            if let Some(ppid) = stat_field(pid, 1).and_then(|s| s.parse().ok()) {
                children.entry(ppid).or_default().push(pid);
            }
        }
        let (mut out, mut seen) = (Vec::new(), HashSet::new());
        let mut stack: Vec<u32> = roots.iter().copied().filter(|p| fs::metadata(format!("/proc/{p}")).is_ok()).collect();
        while let Some(p) = stack.pop() {
            if seen.insert(p) {
                out.push(p);
                stack.extend(children.get(&p).into_iter().flatten());
            }
        }
        out
    }

    /// Field `n` (0 = state) of /proc/pid/stat after the command name.
    fn stat_field(pid: u32, n: usize) -> Option<String> {
        let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        s[s.rfind(')')? + 1..].split_whitespace().nth(n).map(str::to_owned)
    }

    /// Sum of VmRSS in KiB.
    pub fn rss_kb(pids: &[u32]) -> u64 {
        pids.iter()
            .filter_map(|p| fs::read_to_string(format!("/proc/{p}/status")).ok())
            .filter_map(|s| {
                let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .sum()
    }

    /// Sum of user+system CPU seconds.
    pub fn cpu_secs(pids: &[u32]) -> f64 {
        // SAFETY: sysconf has no preconditions.
        let tck = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) }.max(1) as f64;
        let ticks: u64 = pids
            .iter()
            .map(|&p| {
                let f = |n| stat_field(p, n).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
                f(11) + f(12)
            })
            .sum();
        ticks as f64 / tck
    }

}

fn cpu_secs(who: nix::sys::resource::UsageWho) -> f64 {
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    nix::sys::resource::getrusage(who).map(|u| secs(u.user_time()) + secs(u.system_time())).unwrap_or(0.0)
}

/// Raises the soft open-files limit to the hard one (10 000 sockets need it).
fn raise_nofile(need: u64) -> Result<(), String> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| e.to_string())?;
    // Root may raise the hard limit too.
    let want = hard.max(need);
    if soft < want && setrlimit(Resource::RLIMIT_NOFILE, want, want).is_err() && soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(|e| format!("setrlimit: {e}"))?;
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| e.to_string())?;
    if soft < need {
        return Err(format!("open files limit {soft} is below the {need} this run needs (raise it with ulimit -n, or use fewer connections)"));
    }
    Ok(())
}

// ───────────────────────────── one run ─────────────────────────────

/// What `run` prints: one JSON object per run.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
#[serde(default)]
struct RunResult {
    name: String,
    scenario: Option<Scenario>,
    proto: Option<Proto>,
    ok: bool,
    failures: Vec<String>,
    subs: usize,
    topics: usize,
    messages: u64,
    payload: usize,
    rate: u64,
    window: u64,
    sent: u64,
    expected: u64,
    delivered: u64,
    missing: u64,
    duplicates: u64,
    out_of_order: u64,
    corrupt: u64,
    disconnects: u64,
    setup_s: f64,
    /// First publish to last delivery.
    elapsed_s: f64,
    publish_s: f64,
    published_per_s: f64,
    /// Sum over subscribers of distinct messages received, per second of `elapsed_s`.
    delivered_per_s: f64,
    lat_p50_us: Option<f64>,
    lat_p99_us: Option<f64>,
    lat_p999_us: Option<f64>,
    lat_max_us: Option<f64>,
    /// Time from a publish until every subscriber had it (median, max).
    fanout_p50_ms: Option<f64>,
    fanout_max_ms: Option<f64>,
    /// Rate mode: how far behind schedule the publisher wrote (p99, max).
    pub_lag_p99_us: Option<f64>,
    pub_lag_max_us: Option<f64>,
    /// Redis only: sum of PUBLISH replies (receivers), to compare with `expected`.
    ack_receivers: Option<i64>,
    server_procs: usize,
    rss_before_kb: Option<u64>,
    rss_subscribed_kb: Option<u64>,
    rss_end_kb: Option<u64>,
    bytes_per_conn: Option<f64>,
    /// Publish start to the end of the run: the span the CPU figures cover.
    wall_s: f64,
    /// CPU as % of one core over `wall_s` (so 200 = both cores of this machine).
    /// Counted in clock ticks (10 ms), so coarse for runs under a second.
    bench_cpu_pct: f64,
    pub_cpu_pct: f64,
    sub_cpu_pct: f64,
    server_cpu_pct: Option<f64>,
}

fn run(args: &RunArgs) -> Result<RunResult, String> {
    use nix::sys::resource::UsageWho;
    let plan = Plan::new(args)?;
    raise_nofile(plan.subs as u64 + 64)?;
    if plan.rate > 0 {
        // Sleep to the microsecond instead of the default 50 µs slack.
        let _ = nix::sys::prctl::set_timerslack(1);
    }
    let poll = Poll::new().map_err(|e| e.to_string())?;
    let shared = Shared {
        progress: (0..plan.sub_threads).map(|_| AtomicU64::new(0)).collect(),
        pub_done: AtomicU64::new(0),
        abort: AtomicBool::new(false),
        pub_waiting: AtomicBool::new(false),
        pub_waker: Waker::new(poll.registry(), WAKE).map_err(|e| e.to_string())?,
    };
    let mut publisher = Publisher::connect(&plan, &shared, poll)?;
    let measure = !args.server_pids.is_empty();
    let rss = || measure.then(|| procfs::rss_kb(&procfs::tree(&args.server_pids)));
    let rss_before = rss();

    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        let threads: Vec<_> = (0..plan.sub_threads)
            .map(|t| {
                let (tx, plan, shared) = (tx.clone(), &plan, &shared);
                s.spawn(move || run_subscribers(plan, shared, t, tx))
            })
            .collect();
        // Every thread reports once its subscriptions are all confirmed.
        let mut setup_s: f64 = 0.0;
        for _ in 0..plan.sub_threads {
            match rx.recv_timeout(plan.setup_timeout + Duration::from_secs(5)) {
                Ok(Ok(secs)) => setup_s = setup_s.max(secs),
                Ok(Err(e)) => {
                    shared.abort.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                Err(_) => {
                    shared.abort.store(true, Ordering::Relaxed);
                    return Err("setup: a subscriber thread did not answer".into());
                }
            }
        }
        let rss_subscribed = rss();
        let servers = procfs::tree(&args.server_pids);
        let (cpu0, main0, srv0, t0) = (
            cpu_secs(UsageWho::RUSAGE_SELF),
            cpu_secs(UsageWho::RUSAGE_THREAD),
            procfs::cpu_secs(&servers),
            now_ns(),
        );
        publisher.run();
        let main_cpu = cpu_secs(UsageWho::RUSAGE_THREAD) - main0;
        let mut subs = SubReport::new(&plan);
        for t in threads {
            subs = subs.merge(t.join().map_err(|_| "subscriber thread panicked".to_string())?);
        }
        let srv_cpu = procfs::cpu_secs(&servers) - srv0;
        let cpu = cpu_secs(UsageWho::RUSAGE_SELF) - cpu0;
        let p = &publisher.report;
        let end = subs.last_recv.max(p.last_send);
        let wall = (now_ns() - t0) as f64 / 1e9;
        let elapsed = (end.saturating_sub(p.first_send)) as f64 / 1e9;
        let pct = |c: f64| 100.0 * c / wall.max(1e-9);
        let expected: u64 = (0..plan.subs).map(|i| plan.expected(i % plan.topics.len())).sum();
        let lat = Some(&subs.latency).filter(|h| h.n > 0);
        let us = |h: Option<&Hist>, q: f64| h.and_then(|h| h.quantile(q)).map(|v| v as f64 / 1e3);
        let fanout = subs.fanout_times(&plan);
        let rss_end = rss();
        let mut r = RunResult {
            name: plan.name.clone(),
            scenario: Some(plan.scenario),
            proto: Some(plan.proto),
            subs: plan.subs,
            topics: plan.topics.len(),
            messages: plan.messages,
            payload: plan.payload,
            rate: plan.rate,
            window: plan.window,
            sent: p.sent,
            expected,
            delivered: subs.delivered,
            missing: subs.missing,
            duplicates: subs.duplicates,
            out_of_order: subs.out_of_order,
            corrupt: subs.corrupt,
            disconnects: subs.disconnects,
            setup_s,
            elapsed_s: elapsed,
            publish_s: (p.last_send.saturating_sub(p.first_send)) as f64 / 1e9,
            published_per_s: p.sent as f64 / ((p.last_send.saturating_sub(p.first_send)) as f64 / 1e9).max(1e-9),
            delivered_per_s: subs.delivered as f64 / elapsed.max(1e-9),
            lat_p50_us: us(lat, 0.5),
            lat_p99_us: us(lat, 0.99),
            lat_p999_us: us(lat, 0.999),
            lat_max_us: lat.map(|h| h.max as f64 / 1e3),
            fanout_p50_ms: (!fanout.is_empty()).then(|| fanout[fanout.len() / 2] as f64 / 1e6),
            fanout_max_ms: fanout.last().map(|&v| v as f64 / 1e6),
            pub_lag_p99_us: us(p.lag.as_ref(), 0.99),
            pub_lag_max_us: p.lag.as_ref().map(|h| h.max as f64 / 1e3),
            ack_receivers: (plan.proto == Proto::Redis).then_some(p.ack_receivers),
            server_procs: servers.len(),
            rss_before_kb: rss_before,
            rss_subscribed_kb: rss_subscribed,
            rss_end_kb: rss_end,
            bytes_per_conn: rss_before
                .zip(rss_subscribed)
                .map(|(a, b)| (b as f64 - a as f64) * 1024.0 / plan.subs as f64),
            wall_s: wall,
            bench_cpu_pct: pct(cpu),
            pub_cpu_pct: pct(main_cpu),
            sub_cpu_pct: pct(cpu - main_cpu),
            server_cpu_pct: measure.then(|| pct(srv_cpu)),
            ..Default::default()
        };
        // Anything short of exact delivery fails the run.
        let f = &mut r.failures;
        f.extend(p.errors.iter().map(|e| format!("publisher: {e}")));
        f.extend(subs.errors.iter().map(|e| format!("subscriber: {e}")));
        if p.sent < plan.messages {
            f.push(format!("sent {} of {}", p.sent, plan.messages));
        }
        for (what, n) in [
            ("missing", r.missing),
            ("duplicated", r.duplicates),
            ("out of order", r.out_of_order),
            ("corrupt or unexpected", r.corrupt),
            ("disconnected subscribers", r.disconnects),
        ] {
            if n > 0 {
                f.push(format!("{n} {what}"));
            }
        }
        r.ok = r.failures.is_empty();
        Ok(r)
    })
}

fn print_text(r: &RunResult) {
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    println!("{} [{:?}] {}", r.name, r.proto.unwrap(), if r.ok { "OK" } else { "FAILED" });
    for f in &r.failures {
        println!("  failure: {f}");
    }
    println!(
        "  {} subs, {} topics, sent {}/{} (window {}, rate {}), setup {:.2}s",
        r.subs, r.topics, r.sent, r.messages, r.window, r.rate, r.setup_s
    );
    println!(
        "  delivered {}/{} in {:.3}s = {}/s (publish {}/s); missing {} dup {} ooo {} corrupt {} disc {}",
        r.delivered, r.expected, r.elapsed_s, si(r.delivered_per_s), si(r.published_per_s),
        r.missing, r.duplicates, r.out_of_order, r.corrupt, r.disconnects
    );
    println!(
        "  latency µs p50 {} p99 {} p99.9 {} max {}; fan-out ms p50 {} max {}; publisher lag µs p99 {} max {}",
        opt(r.lat_p50_us), opt(r.lat_p99_us), opt(r.lat_p999_us), opt(r.lat_max_us),
        opt(r.fanout_p50_ms), opt(r.fanout_max_ms), opt(r.pub_lag_p99_us), opt(r.pub_lag_max_us)
    );
    if let (Some(a), Some(b), Some(c)) = (r.rss_before_kb, r.rss_subscribed_kb, r.rss_end_kb) {
        println!(
            "  server RSS KiB ({} procs): before {a}, subscribed {b}, end {c}; {} bytes/conn",
            r.server_procs, opt(r.bytes_per_conn)
        );
    }
    println!(
        "  CPU % of one core: bench {:.0} (publisher {:.0}, subscribers {:.0}), server {}",
        r.bench_cpu_pct, r.pub_cpu_pct, r.sub_cpu_pct, opt(r.server_cpu_pct)
    );
}

// ───────────────────────────── tables ─────────────────────────────

fn si(v: f64) -> String {
    match v.abs() {
        x if x >= 1e6 => format!("{:.2}M", v / 1e6),
        x if x >= 1e4 => format!("{:.0}k", v / 1e3),
        x if x >= 1e3 => format!("{:.1}k", v / 1e3),
        x if x >= 100.0 => format!("{v:.0}"),
        _ => format!("{v:.1}"),
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

type Metric = (&'static str, fn(&RunResult) -> Option<f64>);

/// The numbers shown for each kind of scenario (arrow: which way is better).
fn metrics(s: Scenario) -> Vec<Metric> {
    match s {
        Scenario::Fanout | Scenario::Topics => vec![
            ("delivered msg/s ↑", |r| Some(r.delivered_per_s)),
            ("latency p99 µs ↓", |r| r.lat_p99_us),
        ],
        Scenario::Latency => vec![
            ("p50 µs ↓", |r| r.lat_p50_us),
            ("p99 µs ↓", |r| r.lat_p99_us),
            ("p99.9 µs ↓", |r| r.lat_p999_us),
            ("(bench) send lag p99 µs ↓", |r| r.pub_lag_p99_us),
        ],
        Scenario::Conns => vec![
            ("server bytes/conn ↓", |r| r.bytes_per_conn),
            ("publish→all ms ↓", |r| r.fanout_p50_ms),
            ("setup s ↓", |r| Some(r.setup_s)),
        ],
    }
}

fn table(files: &[PathBuf], runs: Option<usize>) -> Result<(), String> {
    let mut results = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
            results.push(serde_json::from_str::<RunResult>(line).map_err(|e| format!("{}: {e}", f.display()))?);
        }
    }
    // Scenario names in the order they first appear.
    let mut names: Vec<(String, Scenario)> = Vec::new();
    for r in &results {
        if let Some(s) = r.scenario.filter(|_| !names.iter().any(|(n, _)| *n == r.name)) {
            names.push((r.name.clone(), s));
        }
    }
    let protos = [Proto::Fanout, Proto::Nats, Proto::Redis];
    let group = |name: &str, p: Proto| -> Vec<&RunResult> {
        results.iter().filter(|r| r.name == name && r.proto == Some(p)).collect()
    };
    // A cell: median over the runs that passed, and how many failed.
    let cell = |rs: &[&RunResult], f: fn(&RunResult) -> Option<f64>| -> (Option<f64>, String) {
        if rs.is_empty() {
            return (None, "–".into());
        }
        let ok: Vec<f64> = rs.iter().filter(|r| r.ok).filter_map(|r| f(r)).collect();
        let failed = rs.iter().filter(|r| !r.ok).count();
        let m = median(ok);
        let mut s = m.map_or_else(|| "FAILED".to_string(), si);
        if failed > 0 && m.is_some() {
            s += &format!(" ({failed}/{} FAILED)", rs.len());
        }
        (if failed == 0 { m } else { None }, s)
    };
    let n = runs.map_or(String::new(), |n| format!(", median of {n} runs"));
    println!("Throughput, latency and memory{n}. Ratio = fanout ÷ peer (arrow says which way is better).\n");
    println!("| scenario | metric | fanout | NATS | Redis | fanout/NATS | fanout/Redis |");
    println!("|---|---|--:|--:|--:|--:|--:|");
    for (name, sc) in &names {
        for (label, f) in metrics(*sc) {
            let cells: Vec<_> = protos.iter().map(|&p| cell(&group(name, p), f)).collect();
            let ratio = |peer: usize| match (cells[0].0, cells[peer].0) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => "–".into(),
            };
            println!(
                "| {name} | {label} | {} | {} | {} | {} | {} |",
                cells[0].1, cells[1].1, cells[2].1, ratio(1), ratio(2)
            );
        }
    }
    println!("\nCPU during the publish phase in % of one core (all cores = {}), medians:", cores());
    println!("bench / server (all its processes); runs shorter than 0.5 s are left out.\n");
    println!("| scenario | fanout | NATS | Redis |");
    println!("|---|--:|--:|--:|");
    for (name, _) in &names {
        let mut row = format!("| {name} |");
        for &p in &protos {
            // CPU time comes in 10 ms ticks: leave out runs too short for it.
            let rs: Vec<_> = group(name, p).into_iter().filter(|r| r.wall_s >= 0.5).collect();
            let m = |f: fn(&RunResult) -> Option<f64>| {
                median(rs.iter().filter_map(|r| f(r)).collect()).map_or("–".into(), |v| format!("{v:.0}"))
            };
            row += &if rs.is_empty() {
                " – |".to_string()
            } else {
                format!(" {} / {} |", m(|r| Some(r.bench_cpu_pct)), m(|r| r.server_cpu_pct))
            };
        }
        println!("{row}");
    }
    Ok(())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()) * 100
}

// ───────────────────────────── main ─────────────────────────────

fn main() {
    now_ns(); // start the clock
    let code = match Cli::parse().cmd {
        Cmd::Run(args) => match run(&args) {
            Ok(r) => {
                if args.json {
                    println!("{}", serde_json::to_string(&r).expect("serialize"));
                } else {
                    print_text(&r);
                }
                i32::from(!r.ok)
            }
            Err(e) => {
                // Still one JSON line, so a table shows the failure.
                if args.json {
                    let r = RunResult {
                        name: Plan::new(&args).map(|p| p.name).unwrap_or_default(),
                        scenario: Some(args.scenario),
                        proto: Some(args.proto),
                        failures: vec![e.clone()],
                        ..Default::default()
                    };
                    println!("{}", serde_json::to_string(&r).expect("serialize"));
                }
                eprintln!("fanout-bench: {e}");
                1
            }
        },
        Cmd::Floor(args) => floor::floor(&args).map_or_else(|e| { eprintln!("fanout-bench: {e}"); 1 }, |_| 0),
        Cmd::FloorRead(args) => floor::floor_read(&args).map_or_else(|e| { println!("{e}"); 1 }, |_| 0),
        Cmd::Table { files, runs } => table(&files, runs).map_or_else(|e| { eprintln!("fanout-bench: {e}"); 1 }, |_| 0),
        Cmd::FreePort { n } => {
            let listeners: Vec<_> = (0..n).filter_map(|_| std::net::TcpListener::bind("127.0.0.1:0").ok()).collect();
            for l in &listeners {
                println!("{}", l.local_addr().map(|a| a.port()).unwrap_or(0));
            }
            i32::from(listeners.len() != n)
        }
    };
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_close() {
        let mut h = Hist::new();
        (1..=100_000u64).for_each(|v| h.record(v * 1000));
        let p50 = h.quantile(0.5).unwrap() as f64;
        assert!((p50 / 50_000_000.0 - 1.0).abs() < 0.02, "{p50}");
        assert_eq!(h.quantile(1.0), Some(100_000_000));
    }

    #[test]
    fn decoders() {
        let (ev, n) = decode_line(b"Received [t1]: abc\nx").unwrap().unwrap();
        assert!(matches!(ev, Event::Message { topic: b"t1", payload: b"abc" }) && n == 19);
        let buf = b"MSG t1 1 3\r\nabc\r\n";
        let (ev, n) = decode_nats(buf).unwrap().unwrap();
        assert!(matches!(ev, Event::Message { topic: b"t1", payload: b"abc" }) && n == buf.len());
        assert!(decode_nats(&buf[..14]).unwrap().is_none());
        let buf = b"*3\r\n$7\r\nmessage\r\n$2\r\nt1\r\n$3\r\nabc\r\n";
        let (ev, n) = decode_resp(buf).unwrap().unwrap();
        assert!(matches!(ev, Event::Message { topic: b"t1", payload: b"abc" }) && n == buf.len());
        assert!(decode_resp(&buf[..buf.len() - 1]).unwrap().is_none());
        assert!(matches!(decode_resp(b":12\r\n").unwrap().unwrap().0, Event::Ack(12)));
        let mut p = Vec::new();
        payload::put(&mut p, 42, 7, &[b'.'; 32]);
        assert_eq!(payload::parse(&p, 64), Some((42, 7)));
    }
}
