//! A worker's one connection to the channel server: reconnects with backoff,
//! buffers publishes (bounded) while it is down, hands out the frames the
//! channel server sends, and keeps what is owed on it: the publishes waiting
//! for a PUBACK and the requests waiting for an answer. When it breaks, those
//! whose frames went out are given up (`broken`), for the service to tell.
//!
//! Nothing is held after a reconnect: every worker resubscribes each topic
//! from the next number it wants, so a message published before another
//! worker is back is fetched by that worker, not lost.
//!
//! When to connect is the `Schedule`, apart from the socket and given the
//! time, so that its rules are tested without either.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::net::TcpStream;
use mio::{Interest, Registry};

use super::nats_bus::NatsBus;
use crate::protocol::frame::{self, DecodeError, Frame, FrameReader, VERSION};
use crate::protocol::nats;
use crate::runtime::event_loop::SERVICE;
use crate::runtime::outbound::{Frames, Outbound};

pub const TOKEN: mio::Token = SERVICE;
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A link that has been silent this long is asked for a PONG.
const PING_AFTER: Duration = Duration::from_secs(1);
/// A link that has been silent this long, a PING included, is dead: dropped
/// and connected again. Longer than the channel server may stop reading
/// while a stalled worker holds it up (5 s) before it cuts that worker off.
const DEAD_AFTER: Duration = Duration::from_secs(8);

/// Why the link went down.
#[derive(Debug)]
pub enum LinkError {
    /// The channel server closed the connection.
    Closed,
    Connect(io::Error),
    Io(io::Error),
    BadFrame(DecodeError),
    /// The channel server sent an ERROR frame: it refused this worker.
    Refused(String),
    Unexpected(String),
    /// Nothing heard for DEAD_AFTER, a PING included.
    Silent,
    /// The next NATS server's name does not resolve.
    Resolve(String),
    /// A NATS server sent what the protocol does not allow.
    BadInput(nats::Error),
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Closed => write!(f, "closed by the channel server"),
            LinkError::Connect(e) => write!(f, "cannot connect: {e}"),
            LinkError::Io(e) => write!(f, "{e}"),
            LinkError::BadFrame(e) => write!(f, "bad frame from the channel server: {e}"),
            LinkError::Refused(why) => write!(f, "refused by the channel server: {why}"),
            LinkError::Unexpected(what) => write!(f, "unexpected frame from the channel server: {what}"),
            LinkError::Silent => write!(f, "no answer from the server for {DEAD_AFTER:?}"),
            LinkError::Resolve(name) => write!(f, "cannot resolve {name}"),
            LinkError::BadInput(e) => write!(f, "bad input from the NATS server: {e}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Down { retry_at: Instant },
    Connecting,
    Up,
}

/// What the link's silence calls for.
#[derive(Debug, PartialEq, Eq)]
pub enum Liveness {
    Fine,
    Ping,
    Dead,
}

/// The link's clock: reconnect backoff and
/// liveness (a PING after PING_AFTER of silence, dead after DEAD_AFTER: the
/// channel server stopped, hung, or its host gone without a reset), so that
/// `up` means up.
#[derive(Debug)]
pub struct Schedule {
    pub state: State,
    backoff: Duration,
    /// When the channel server was last heard from (or the connect began).
    heard: Instant,
    /// A PING is out since then.
    pinged: bool,
    /// The channel server has welcomed this connection: only then is the
    /// link shown as up.
    welcomed: bool,
}

impl Schedule {
    pub fn new(now: Instant) -> Schedule {
        Schedule {
            state: State::Down { retry_at: now },
            backoff: MIN_BACKOFF,
            heard: now,
            pinged: false,
            welcomed: false,
        }
    }

    /// A connect has begun.
    pub fn connecting(&mut self, now: Instant) {
        self.state = State::Connecting;
        (self.heard, self.pinged, self.welcomed) = (now, false, false);
    }

    /// Bytes came from the channel server.
    pub fn heard(&mut self, now: Instant) {
        (self.heard, self.pinged) = (now, false);
    }

    /// Whether to ping the channel server, or give the link up. A PING is
    /// asked for once per silence.
    pub fn liveness(&mut self, now: Instant) -> Liveness {
        if matches!(self.state, State::Down { .. }) {
            return Liveness::Fine;
        }
        let silent = now.saturating_duration_since(self.heard);
        if silent >= DEAD_AFTER {
            Liveness::Dead
        } else if silent >= PING_AFTER && !self.pinged && self.state == State::Up {
            self.pinged = true;
            Liveness::Ping
        } else {
            Liveness::Fine
        }
    }

    /// Up and welcomed on this connection.
    pub fn is_up(&self) -> bool {
        self.state == State::Up && self.welcomed
    }

    /// Whether the link is down and its retry time has come.
    pub fn due(&self, now: Instant) -> bool {
        matches!(self.state, State::Down { retry_at } if retry_at <= now)
    }

    /// Connected (the hello may go).
    pub fn up(&mut self) {
        self.state = State::Up;
    }

    /// The channel server accepted our hello: the next failure starts afresh.
    pub fn welcomed(&mut self) {
        self.backoff = MIN_BACKOFF;
        self.welcomed = true;
    }

    /// Lost: retry after the backoff, which doubles up to MAX_BACKOFF; with
    /// `at_once`, a link that was up retries without waiting first.
    pub fn down(&mut self, now: Instant, at_once: bool) {
        let delay = if at_once && self.state == State::Up { Duration::ZERO } else { self.backoff };
        self.state = State::Down { retry_at: now + delay };
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let quiet = if self.pinged || self.state == State::Connecting { DEAD_AFTER } else { PING_AFTER };
        let alive = self.heard + quiet;
        match self.state {
            State::Down { retry_at } => Some(retry_at),
            State::Up | State::Connecting => Some(alive),
        }
    }
}

/// Who waits for the answer to a request on the link.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Asker {
    /// A cursor of this topic (`Cursor::fetching` names the request).
    Cursor(Box<[u8]>),
    /// A client's `history` or `info` of `topic`; `token` is the place held
    /// for the answer.
    Client { key: usize, id: u64, token: u64, topic: Box<[u8]> },
    /// A client's queue command (`queues`); `token` is the place held.
    Queue { key: usize, id: u64, token: u64 },
}

/// What a broken link leaves unanswered.
#[derive(Debug)]
pub enum Broken {
    /// A publish that asked for a confirm went out and its PUBACK did not come.
    Confirm(Confirm),
    Request(Asker),
}

/// A publish waiting for its PUBACK: the client (slab key and id) and the
/// place held for the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Confirm {
    pub key: usize,
    pub id: u64,
    pub token: u64,
}

/// What a NATS server sent, for the worker.
#[derive(Debug, PartialEq, Eq)]
pub enum BusEvent<'a> {
    Message {
        topic: Cow<'a, [u8]>,
        message: &'a [u8],
    },
    /// A subscription is in effect: a publish made from now on reaches it.
    Subscribed(Cow<'a, [u8]>),
    /// The server accepted this worker.
    Up,
    /// The server asks whether we are alive: answer with `pong`.
    Ping,
    /// Nothing for the worker (`+OK`, a later INFO, a message for a topic it left).
    Nothing,
}

/// The link to the channel server (`addr`, `secret`, `reader`), or, with
/// `nats`, to a NATS cluster: the same queue, schedule and handoff, another
/// protocol.
pub struct Link {
    pub(super) addr: SocketAddr,
    secret: Vec<u8>,
    pub(super) stream: Option<TcpStream>,
    pub(super) schedule: Schedule,
    pub(super) out: Outbound<Frames>,
    pub reader: FrameReader,
    max_buffer: usize,
    /// Publishes lost in the kernel or half-written when a link broke.
    pub lost: u64,
    warned: bool,
    /// The channel server's epoch, from its last WELCOME (0: none yet).
    pub epoch: u64,
    pub owed: Owed,
    /// On a NATS bus: its servers, subscriptions and input.
    pub nats: Option<Box<NatsBus>>,
    /// Times the link broke after it had been up: each a gap during which
    /// this worker's subscriptions were not in effect.
    pub reconnects: u64,
}

/// What is owed on the link: answers the channel server will send.
#[derive(Debug, Default)]
pub struct Owed {
    /// Publishes sent or queued that asked for a confirm, in order.
    pub confirms: VecDeque<Confirm>,
    /// Requests sent, in order.
    pub requests: VecDeque<(u32, Asker)>,
    pub next_req: u32,
    /// What the last break left unanswered, for the service to tell.
    pub broken: Vec<Broken>,
}

impl Owed {
    /// The asker of the answer `req` (answers come in the order asked).
    pub fn answered(&mut self, req: u32) -> Option<Asker> {
        while let Some((r, asker)) = self.requests.pop_front() {
            if r == req {
                return Some(asker);
            }
            self.broken.push(Broken::Request(asker)); // not expected: answers keep order
        }
        None
    }
}

impl Link {
    pub fn new(addr: SocketAddr, secret: Vec<u8>, nats: Option<Box<NatsBus>>, max_buffer: usize, now: Instant) -> Link {
        Link {
            addr,
            secret,
            stream: None,
            schedule: Schedule::new(now),
            out: match nats {
                Some(_) => Outbound::of(nats::FRAMING),
                None => Outbound::default(),
            },
            nats,
            reconnects: 0,
            reader: FrameReader::default(),
            max_buffer,
            lost: 0,
            warned: false,
            epoch: 0,
            owed: Owed::default(),
        }
    }

    pub fn state_name(&self) -> &'static str {
        match self.schedule.state {
            State::Down { .. } => "down",
            _ if self.schedule.is_up() => "up",
            State::Connecting | State::Up => "connecting",
        }
    }

    /// Which bus, and where: `channel 127.0.0.1:2206`, `nats 10.0.0.5:4222`.
    pub fn describe(&self) -> String {
        match &self.nats {
            Some(bus) => format!("nats {}", bus.server()),
            None => format!("channel {}", self.addr),
        }
    }

    /// More publishes are buffered than allowed: stop reading from publishers.
    pub fn congested(&self) -> bool {
        self.out.queued() > self.max_buffer
    }

    pub fn unsent(&self) -> usize {
        self.out.queued()
    }

    /// Up and welcomed.
    pub fn is_up(&self) -> bool {
        self.schedule.is_up()
    }

    /// Queues a publish; it waits in the buffer while the link is down. An
    /// error is the text of the publisher's `ERR` line.
    pub fn publish(&mut self, topic: &[u8], message: &[u8], confirm: Option<Confirm>) -> Result<(), String> {
        if let Some(bus) = &mut self.nats {
            bus.check_publish(message)?;
            self.out.push_frames(|v| bus.publish(topic, message, v));
            return Ok(());
        }
        self.out.push_frames(|v| frame::put_publish(v, confirm.is_some(), topic, message));
        // Not `extend`: through an Option it cost 40 instructions a publish.
        if let Some(confirm) = confirm {
            self.owed.confirms.push_back(confirm);
        }
        Ok(())
    }

    /// Queues a FETCH or INFO, built by `frame` from the request id; returns
    /// the id. Only while the link is up (`None` otherwise): what is asked on
    /// a link being set up is asked again once it is.
    pub fn request<'a>(&mut self, asker: Asker, frame: impl FnOnce(u32) -> Frame<'a>) -> Option<u32> {
        if !self.is_up() {
            return None;
        }
        let req = self.owed.next_req.wrapping_add(1).max(1);
        self.owed.next_req = req;
        self.out.push_frame(frame(req));
        self.owed.requests.push_back((req, asker));
        Some(req)
    }

    /// Queues SUB/UNSUB (on NATS, their NATS operations). Skipped while
    /// down: `connect` subscribes afresh.
    pub fn control(&mut self, frame: Frame<'_>) {
        if self.stream.is_none() {
            return;
        }
        match (&mut self.nats, frame) {
            (None, frame) => self.out.push_frame(frame),
            (Some(bus), Frame::Sub { topic, .. }) => self.out.push_frames(|v| bus.subscribe(topic, v)),
            (Some(bus), Frame::Unsub(topic)) => self.out.push_frames(|v| bus.unsubscribe(topic, v)),
            (Some(_), other) => debug_assert!(false, "no NATS operation for {other:?}"),
        }
    }

    /// Answers a NATS server's PING.
    pub fn pong(&mut self) {
        self.out.push_frames(|v| v.extend_from_slice(nats::PONG));
    }

    pub fn due(&self, now: Instant) -> bool {
        self.schedule.due(now)
    }

    /// Connects, queueing the hello and a SUB for each topic (from the next
    /// number wanted) ahead of the buffered publishes.
    pub fn connect(&mut self, reg: &Registry, topics: &[(&[u8], u64)], now: Instant) {
        let addr = match &mut self.nats {
            None => self.addr,
            Some(bus) => match bus.next_server() {
                Some(addr) => addr,
                None => {
                    let name = bus.server().to_owned();
                    return self.down(reg, LinkError::Resolve(name), now);
                }
            },
        };
        let mut stream = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => return self.down(reg, LinkError::Connect(e), now),
        };
        // Frames are small and latency matters: no Nagle delay.
        let _ = stream.set_nodelay(true);
        if let Err(e) = reg.register(&mut stream, TOKEN, Interest::READABLE | Interest::WRITABLE) {
            return self.down(reg, LinkError::Io(e), now);
        }
        let mut head = Vec::new();
        match &mut self.nats {
            Some(bus) => bus.hello(topics.iter().map(|t| t.0), &mut head),
            None => {
                Frame::Hello { version: VERSION, secret: &self.secret }.encode(&mut head);
                for &(topic, from) in topics {
                    Frame::Sub { from, topic }.encode(&mut head);
                }
            }
        }
        self.out.push_front(head);
        self.stream = Some(stream);
        self.reader = FrameReader::default();
        self.schedule.connecting(now);
    }

    /// The socket reported writable: a connect has finished (or failed).
    pub fn on_writable(&mut self, reg: &Registry, now: Instant) {
        if self.schedule.state == State::Connecting {
            let Some(stream) = &self.stream else { return };
            match stream.take_error() {
                Ok(None) if stream.peer_addr().is_ok() => self.schedule.up(),
                Ok(None) => return, // not connected yet: a spurious event
                Ok(Some(e)) | Err(e) => return self.down(reg, LinkError::Connect(e), now),
            }
        }
        self.flush(reg, now);
    }

    /// The channel server accepted our hello.
    pub fn welcomed(&mut self, epoch: u64) {
        match self.epoch {
            0 => info!("channel link up ({}), epoch {epoch:016x}", self.addr),
            e if e == epoch => info!("channel link up again ({})", self.addr),
            _ => warn!(
                "channel link up ({}) to a channel server with a new epoch {epoch:016x}: it restarted without its data",
                self.addr
            ),
        }
        self.epoch = epoch;
        self.schedule.welcomed();
        self.warned = false;
    }

    /// A NATS server accepted our CONNECT.
    pub fn nats_up(&mut self) {
        info!("bus link up ({})", self.describe());
        self.schedule.welcomed();
        self.warned = false;
    }

    /// One read into the input buffer: the number of bytes, or why the link is down.
    pub fn read(&mut self) -> io::Result<usize> {
        let n = match (&mut self.stream, &mut self.nats) {
            (Some(s), Some(bus)) if self.schedule.state == State::Up => bus.input.read_from(s)?,
            (Some(s), None) if self.schedule.state == State::Up => self.reader.read_from(s)?,
            _ => return Err(io::ErrorKind::WouldBlock.into()),
        };
        if n > 0 {
            self.schedule.heard(Instant::now());
        }
        Ok(n)
    }

    /// Pings a silent link, and drops a dead one (see `Schedule::liveness`).
    pub fn check_alive(&mut self, reg: &Registry, now: Instant) {
        match self.schedule.liveness(now) {
            Liveness::Fine => {}
            Liveness::Ping => match &mut self.nats {
                Some(bus) => self.out.push_frames(|v| bus.ping(v)),
                None => self.out.push_frame(Frame::Ping),
            },
            Liveness::Dead => self.down(reg, LinkError::Silent, now),
        }
    }

    pub fn flush(&mut self, reg: &Registry, now: Instant) {
        if self.schedule.state != State::Up {
            return;
        }
        let Some(stream) = &mut self.stream else { return };
        match self.out.write_to(stream) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WriteZero => self.down(reg, LinkError::Closed, now),
            Err(e) => self.down(reg, LinkError::Io(e), now),
        }
    }

    /// Drops the connection and schedules a reconnect. Publishes not yet
    /// written stay buffered; a frame cut in half cannot be resent and is
    /// lost. The confirms of publishes that went out, and every request, are
    /// given up (`broken`): whether the channel server got them is unknown.
    pub fn down(&mut self, reg: &Registry, why: LinkError, now: Instant) {
        if let Some(mut s) = self.stream.take() {
            let _ = reg.deregister(&mut s);
        }
        if !self.warned {
            warn!("bus link ({}) down: {why}; reconnecting", self.describe());
            self.warned = true;
        }
        self.keep_unstarted();
        self.reconnects += u64::from(self.schedule.state == State::Up);
        // A NATS link that breaks moves to the next server of the cluster at
        // once: every millisecond is a millisecond of messages missed.
        self.schedule.down(now, self.nats.is_some());
    }

    /// After a break: only the publishes not yet started stay queued; what
    /// went out and is owed an answer is given up (`Owed::broken`).
    fn keep_unstarted(&mut self) {
        self.lost += self.out.keep_unstarted_publishes();
        if self.nats.is_some() {
            return; // nothing is owed on NATS: no confirms, no requests
        }
        let kept = self.out.count_confirms() as usize;
        let o = &mut self.owed;
        let gone = o.confirms.len().saturating_sub(kept);
        o.broken.extend(o.confirms.drain(..gone).map(Broken::Confirm));
        o.broken.extend(o.requests.drain(..).map(|(_, a)| Broken::Request(a)));
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.schedule.next_deadline()
    }

    /// A link taken over while it was not connected: as `down`, retrying at once.
    pub fn down_adopted(&mut self, now: Instant) {
        self.stream = None;
        self.keep_unstarted();
        self.schedule.state = State::Down { retry_at: now };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_second_and_restarts_once_welcomed() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        assert!(s.due(t0), "the first connect goes at once");
        let mut retries = Vec::new();
        for _ in 0..7 {
            s.state = State::Connecting;
            s.down(t0, false);
            let State::Down { retry_at } = s.state else { panic!() };
            assert!(!s.due(retry_at - Duration::from_millis(1)) && s.due(retry_at));
            assert_eq!(s.next_deadline(), Some(retry_at));
            retries.push((retry_at - t0).as_millis());
        }
        assert_eq!(retries, [50, 100, 200, 400, 800, 1000, 1000]);
        s.up();
        s.down(t0, true);
        assert_eq!(s.state, State::Down { retry_at: t0 }, "a NATS link that broke retries at once");
        s.down(t0, true);
        assert!(!s.due(t0), "a failed retry backs off");
        s.up();
        s.welcomed();
        s.down(t0, false);
        assert_eq!(s.state, State::Down { retry_at: t0 + MIN_BACKOFF });
    }

    #[test]
    fn a_silent_link_is_pinged_then_given_up() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        s.connecting(t0);
        assert_eq!(s.next_deadline(), Some(t0 + DEAD_AFTER), "a connect that hangs");
        s.up();
        assert!(!s.is_up(), "up only once welcomed");
        s.welcomed();
        assert!(s.is_up());
        assert_eq!(s.liveness(t0 + PING_AFTER / 2), Liveness::Fine);
        assert_eq!(s.liveness(t0 + PING_AFTER), Liveness::Ping);
        assert_eq!(s.liveness(t0 + PING_AFTER), Liveness::Fine, "one PING per silence");
        assert_eq!(s.next_deadline(), Some(t0 + DEAD_AFTER));
        let t1 = t0 + 2 * PING_AFTER;
        s.heard(t1);
        assert_eq!(s.liveness(t1 + PING_AFTER), Liveness::Ping);
        assert_eq!(s.liveness(t1 + DEAD_AFTER), Liveness::Dead);
        s.down(t1 + DEAD_AFTER, false);
        assert_eq!(s.liveness(t1 + 2 * DEAD_AFTER), Liveness::Fine, "nothing to check while down");
    }
}
