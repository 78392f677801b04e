//! A worker's one connection to the channel server: reconnects with backoff,
//! buffers publishes (bounded) while it is down, holds them for a moment after
//! a reconnect (see SETTLE), and hands out the frames the channel server sends.
//!
//! When to connect and when publishes may go is the `Schedule`, apart from the
//! socket and given the time, so that its rules are tested without either.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::net::TcpStream;
use mio::{Interest, Registry};

use crate::protocol::frame::{DecodeError, Frame, FrameReader, VERSION};
use crate::runtime::event_loop::SERVICE;
use crate::runtime::outbound::Outbound;

pub const TOKEN: mio::Token = SERVICE;
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// After a reconnect, publishes wait this long: the other workers, retrying on
/// their own backoff (at most MAX_BACKOFF apart), must have re-subscribed at a
/// restarted channel server first, or it would have nobody to send them to.
const SETTLE: Duration = Duration::from_millis(1250);
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
            LinkError::Silent => write!(f, "no answer from the channel server for {DEAD_AFTER:?}"),
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

/// The link's clock: reconnect backoff, the hold after a reconnect, and
/// liveness (a PING after PING_AFTER of silence, dead after DEAD_AFTER: the
/// channel server stopped, hung, or its host gone without a reset), so that
/// `up` means up.
#[derive(Debug)]
pub struct Schedule {
    pub state: State,
    backoff: Duration,
    /// The link has been up before: a connect now is a reconnect.
    was_up: bool,
    /// Publishes are held until then (see SETTLE); SUB/UNSUB ahead of them go.
    hold_until: Option<Instant>,
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
            was_up: false,
            hold_until: None,
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

    /// Connected. Returns whether it is a reconnect, whose publishes are held.
    pub fn up(&mut self, now: Instant) -> bool {
        self.state = State::Up;
        let again = std::mem::replace(&mut self.was_up, true);
        if again {
            self.hold_until = Some(now + SETTLE);
        }
        again
    }

    /// The channel server accepted our hello: the next failure starts afresh.
    pub fn welcomed(&mut self) {
        self.backoff = MIN_BACKOFF;
        self.welcomed = true;
    }

    /// Lost: retry after the backoff, which doubles up to MAX_BACKOFF.
    pub fn down(&mut self, now: Instant) {
        self.state = State::Down { retry_at: now + self.backoff };
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Whether publishes are still held after a reconnect.
    pub fn holding(&mut self, now: Instant) -> bool {
        match self.hold_until {
            Some(until) if now < until => true,
            _ => {
                self.hold_until = None;
                false
            }
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let quiet = if self.pinged || self.state == State::Connecting { DEAD_AFTER } else { PING_AFTER };
        let alive = self.heard + quiet;
        match self.state {
            State::Down { retry_at } => Some(retry_at),
            State::Up => Some(self.hold_until.map_or(alive, |h| h.min(alive))),
            State::Connecting => Some(alive),
        }
    }
}

pub struct Link {
    pub(super) addr: SocketAddr,
    secret: Vec<u8>,
    pub(super) stream: Option<TcpStream>,
    pub(super) schedule: Schedule,
    pub(super) out: Outbound,
    pub reader: FrameReader,
    max_buffer: usize,
    /// Publishes lost in the kernel or half-written when a link broke.
    pub lost: u64,
    warned: bool,
}

impl Link {
    pub fn new(addr: SocketAddr, secret: Vec<u8>, max_buffer: usize, now: Instant) -> Link {
        Link {
            addr,
            secret,
            stream: None,
            schedule: Schedule::new(now),
            out: Outbound::framed(),
            reader: FrameReader::default(),
            max_buffer,
            lost: 0,
            warned: false,
        }
    }

    pub fn state_name(&self) -> &'static str {
        match self.schedule.state {
            State::Down { .. } => "down",
            _ if self.schedule.is_up() => "up",
            State::Connecting | State::Up => "connecting",
        }
    }

    /// More publishes are buffered than allowed: stop reading from publishers.
    pub fn congested(&self) -> bool {
        self.out.queued() > self.max_buffer
    }

    pub fn unsent(&self) -> usize {
        self.out.queued()
    }

    /// Queues a publish; it waits in the buffer while the link is down.
    pub fn publish(&mut self, topic: &[u8], message: &[u8]) {
        self.out.push_frame(Frame::Publish { topic, message });
    }

    /// Queues SUB/UNSUB. Skipped while down: `connect` subscribes afresh.
    pub fn control(&mut self, frame: Frame<'_>) {
        if self.stream.is_some() {
            self.out.push_frame(frame);
        }
    }

    pub fn due(&self, now: Instant) -> bool {
        self.schedule.due(now)
    }

    /// Connects, queueing the hello and a SUB for each topic ahead of the
    /// buffered publishes.
    pub fn connect(&mut self, reg: &Registry, topics: &[&[u8]], now: Instant) {
        let mut stream = match TcpStream::connect(self.addr) {
            Ok(s) => s,
            Err(e) => return self.down(reg, LinkError::Connect(e), now),
        };
        // Frames are small and latency matters: no Nagle delay.
        let _ = stream.set_nodelay(true);
        if let Err(e) = reg.register(&mut stream, TOKEN, Interest::READABLE | Interest::WRITABLE) {
            return self.down(reg, LinkError::Io(e), now);
        }
        let mut head = Vec::new();
        Frame::Hello { version: VERSION, secret: &self.secret }.encode(&mut head);
        for topic in topics {
            Frame::Sub(topic).encode(&mut head);
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
                Ok(None) if stream.peer_addr().is_ok() => {
                    if self.schedule.up(now) {
                        info!(
                            "channel link reconnected: publishes wait {SETTLE:?} for the other workers to re-subscribe"
                        );
                    }
                }
                Ok(None) => return, // not connected yet: a spurious event
                Ok(Some(e)) | Err(e) => return self.down(reg, LinkError::Connect(e), now),
            }
        }
        self.flush(reg, now);
    }

    /// The channel server accepted our hello.
    pub fn welcomed(&mut self) {
        info!("channel link up ({})", self.addr);
        self.schedule.welcomed();
        self.warned = false;
    }

    /// One read into the frame reader: the number of bytes, or why the link is down.
    pub fn read(&mut self) -> io::Result<usize> {
        let n = match &mut self.stream {
            Some(s) if self.schedule.state == State::Up => self.reader.read_from(s)?,
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
            Liveness::Ping => self.out.push_frame(Frame::Ping),
            Liveness::Dead => self.down(reg, LinkError::Silent, now),
        }
    }

    pub fn flush(&mut self, reg: &Registry, now: Instant) {
        if self.schedule.state != State::Up {
            return;
        }
        let hold = self.schedule.holding(now);
        let Some(stream) = &mut self.stream else { return };
        match self.out.write_frames(stream, hold) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WriteZero => self.down(reg, LinkError::Closed, now),
            Err(e) => self.down(reg, LinkError::Io(e), now),
        }
    }

    /// Drops the connection and schedules a reconnect. Publishes not yet
    /// written stay buffered; a frame cut in half cannot be resent and is lost.
    pub fn down(&mut self, reg: &Registry, why: LinkError, now: Instant) {
        if let Some(mut s) = self.stream.take() {
            let _ = reg.deregister(&mut s);
        }
        if !self.warned {
            warn!("channel link to {} down: {why}; reconnecting", self.addr);
            self.warned = true;
        }
        self.lost += self.out.keep_unstarted_publishes();
        self.schedule.down(now);
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.schedule.next_deadline()
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
            s.down(t0);
            let State::Down { retry_at } = s.state else { panic!() };
            assert!(!s.due(retry_at - Duration::from_millis(1)) && s.due(retry_at));
            assert_eq!(s.next_deadline(), Some(retry_at));
            retries.push((retry_at - t0).as_millis());
        }
        assert_eq!(retries, [50, 100, 200, 400, 800, 1000, 1000]);
        s.up(t0);
        s.welcomed();
        s.down(t0);
        assert_eq!(s.state, State::Down { retry_at: t0 + MIN_BACKOFF });
    }

    #[test]
    fn publishes_are_held_after_a_reconnect_only() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        assert!(!s.up(t0), "a first connect is not a reconnect");
        assert!(!s.holding(t0));
        assert_eq!(s.next_deadline(), Some(t0 + PING_AFTER), "no hold: only the next ping");
        s.down(t0);
        let t1 = t0 + Duration::from_secs(3);
        s.connecting(t1);
        assert!(s.up(t1));
        assert!(s.holding(t1) && s.holding(t1 + SETTLE - Duration::from_millis(1)));
        s.heard(t1 + SETTLE / 2);
        assert_eq!(s.next_deadline(), Some(t1 + SETTLE), "the loop wakes up to release them");
        assert!(!s.holding(t1 + SETTLE));
        assert_eq!(s.next_deadline(), Some(t1 + SETTLE / 2 + PING_AFTER), "then for the next ping");
    }

    #[test]
    fn a_silent_link_is_pinged_then_given_up() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        s.connecting(t0);
        assert_eq!(s.next_deadline(), Some(t0 + DEAD_AFTER), "a connect that hangs");
        s.up(t0);
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
        s.down(t1 + DEAD_AFTER);
        assert_eq!(s.liveness(t1 + 2 * DEAD_AFTER), Liveness::Fine, "nothing to check while down");
    }
}
