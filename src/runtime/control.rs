//! The link between a worker and its master: one JSON object per line over a
//! socketpair the worker inherits. A worker exits when it closes, so it never
//! outlives its master. (The master's control socket speaks the same way.)

use std::io;

use serde::{Deserialize, Serialize};

use super::outbound::Outbound;

/// From the master to a worker. A query carries an id that its answer
/// repeats: a worker that answers after the master gave up on it (stopped,
/// overloaded) must not have that late answer taken for the next query's.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ToWorker {
    Stats {
        query: u64,
    },
    Connections {
        query: u64,
    },
    /// Stop accepting, deliver what is queued, close, exit.
    Drain,
    /// Hand every connection to the successor, then exit.
    HandOff,
    /// Reopen the log file (it was rotated) onto stdout and stderr.
    ReopenLog {
        path: std::path::PathBuf,
    },
}

/// From a worker to the master.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromWorker {
    /// Listening and serving.
    Ready,
    Stats {
        query: u64,
        /// Boxed: far larger than the other messages.
        stats: Box<WorkerStats>,
    },
    Connections {
        query: u64,
        conns: Vec<ConnInfo>,
    },
}

/// What a worker counts about itself.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct WorkerStats {
    pub connections: u64,
    /// Topics with at least one subscriber in this worker.
    pub topics: u64,
    /// Messages received: publishes from clients (or, in the channel server, from workers).
    pub msgs_in: u64,
    /// Messages queued for delivery: to clients (or, in the channel server, to workers).
    pub msgs_out: u64,
    pub bytes_queued: u64,
    /// Messages discarded because their receiver was disconnected as a slow consumer.
    pub dropped: u64,
    pub slow_consumers: u64,
    /// Connections that speak WebSocket (among `connections`).
    #[serde(default)]
    pub websockets: u64,
    /// The channel server's store: what it retains.
    #[serde(default)]
    pub retained: Option<Retained>,
    /// The channel server's work queues (at most `MAX_LISTED_QUEUES`, by name).
    #[serde(default)]
    pub queues: Vec<QueueStat>,
    /// The channel server's jobs since it started.
    #[serde(default)]
    pub jobs: Option<Box<JobCounts>>,
    /// GAP lines sent: numbers a reader asked for were no longer retained.
    #[serde(default)]
    pub gaps: u64,
    /// Times a subscriber fell behind its send queue and became a position
    /// in the retained messages (rather than being cut off).
    #[serde(default)]
    pub lagging: u64,
    /// Bus link state ("up", "down", or "-" for the channel server).
    pub link: String,
    /// Which bus and where: "channel 127.0.0.1:2206", "nats 10.0.0.5:4222".
    #[serde(default)]
    pub bus: String,
    /// Times the bus link broke after being up: each a gap in this worker's
    /// subscriptions, during which messages for them may have been missed.
    #[serde(default)]
    pub bus_reconnects: u64,
    pub state: String,
    /// The package version and the modification time of the binary the
    /// worker was started from, so a reload onto a rebuilt binary shows.
    pub version: String,
}

/// Most queues `status` lists.
pub const MAX_LISTED_QUEUES: usize = 100;

/// One work queue, for `status`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct QueueStat {
    pub name: String,
    pub ready: u64,
    pub unacked: u64,
    pub consumers: u64,
}

/// What the channel server's queues did, for `status`.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub struct JobCounts {
    pub queues: u64,
    /// Payload bytes held in all queues (bounded by `--max-queue-bytes`).
    pub bytes: u64,
    pub delivered: u64,
    pub acked: u64,
    /// Deliveries that came back: nacked, their consumer gone, timed out.
    pub returned: u64,
    pub timed_out: u64,
    pub dead_lettered: u64,
}

/// What the channel server's store retains, for `status`.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub struct Retained {
    pub messages: u64,
    /// Payload bytes.
    pub bytes: u64,
    pub topics: u64,
    /// Bytes of log (on disk with a data directory).
    pub log_bytes: u64,
    /// Messages dropped early by the total bounds (`--retain-total`,
    /// `--max-topics`), and topics forgotten.
    #[serde(default)]
    pub evicted: u64,
    #[serde(default)]
    pub forgotten: u64,
}

/// One client connection, for `connections`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnInfo {
    pub worker_pid: u32,
    pub id: u64,
    pub peer: String,
    /// What it speaks: "line", "ws", "http" (being answered) or "new" (not known yet).
    #[serde(default)]
    pub kind: String,
    pub topics: Vec<String>,
    /// The work queues it consumes, and the jobs it holds unacknowledged.
    #[serde(default)]
    pub queues: Vec<String>,
    #[serde(default)]
    pub unacked: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub queued: u64,
}

/// Appends `msg` as one JSON line.
pub fn encode<T: Serialize>(msg: &T, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, msg).expect("control messages always serialise");
    out.push(b'\n');
}

/// Takes every whole JSON line out of `buf`.
pub fn decode_lines<T: for<'de> Deserialize<'de>>(buf: &mut Vec<u8>) -> io::Result<Vec<T>> {
    let Some(end) = memchr::memrchr(b'\n', buf) else { return Ok(Vec::new()) };
    let msgs = buf[..end]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)))
        .collect();
    buf.drain(..=end);
    msgs
}

/// One end of a JSON-lines conversation on a non-blocking Unix socket.
pub struct Conn {
    pub stream: mio::net::UnixStream,
    inbuf: Vec<u8>,
    out: Outbound,
}

/// Most bytes a peer may send without a newline. The longest message is a
/// worker's connection list (about 150 bytes a connection).
const MAX_CONTROL_LINE: usize = 256 << 20;

impl Conn {
    pub fn new(stream: mio::net::UnixStream) -> Conn {
        Conn { stream, inbuf: Vec::new(), out: Outbound::default() }
    }

    /// Queues `msg` and writes as much as the socket takes.
    pub fn send<T: Serialize>(&mut self, msg: &T) -> io::Result<()> {
        let mut line = Vec::new();
        encode(msg, &mut line);
        self.out.push(&[&line]);
        self.flush()
    }

    /// Writes queued bytes until done or the socket is full.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.write_to(&mut self.stream).map(drop)
    }

    /// Reads until the socket is drained. Returns the whole messages received
    /// and whether the peer has closed.
    pub fn receive<T: for<'de> Deserialize<'de>>(&mut self) -> io::Result<(Vec<T>, bool)> {
        let mut chunk = [0u8; 4096];
        let mut closed = false;
        loop {
            match io::Read::read(&mut self.stream, &mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if self.inbuf.len() > MAX_CONTROL_LINE && !self.inbuf.contains(&b'\n') {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "control message too long"));
            }
        }
        Ok((decode_lines(&mut self.inbuf)?, closed))
    }
}
