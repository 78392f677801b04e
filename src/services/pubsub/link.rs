//! A worker's one connection to the channel server: reconnects with backoff,
//! buffers publishes (bounded) while it is down, holds them for a moment after
//! a reconnect (see SETTLE), and hands out the frames the channel server sends.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::net::TcpStream;
use mio::{Interest, Registry};

use crate::runtime::event_loop::SERVICE;
use super::out_frames::OutFrames;
use crate::protocol::frame::{Frame, FrameReader, VERSION};

pub const TOKEN: mio::Token = SERVICE;
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// After a reconnect, publishes wait this long: the other workers, retrying on
/// their own backoff (at most MAX_BACKOFF apart), must have re-subscribed at a
/// restarted channel server first, or it would have nobody to send them to.
const SETTLE: Duration = Duration::from_millis(1250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Down { retry_at: Instant },
    Connecting,
    Up,
}

pub struct Link {
    addr: SocketAddr,
    secret: Vec<u8>,
    stream: Option<TcpStream>,
    pub state: State,
    out: OutFrames,
    pub reader: FrameReader,
    backoff: Duration,
    max_buffer: usize,
    /// Publishes lost in the kernel or half-written when a link broke.
    pub lost: u64,
    warned: bool,
    /// The link has been up before: a connect now is a reconnect.
    was_up: bool,
    /// Publishes are held until then (see SETTLE); SUB/UNSUB ahead of them go.
    hold_until: Option<Instant>,
}

impl Link {
    pub fn new(addr: SocketAddr, secret: Vec<u8>, max_buffer: usize) -> Link {
        Link {
            addr,
            secret,
            stream: None,
            state: State::Down { retry_at: Instant::now() },
            out: OutFrames::default(),
            reader: FrameReader::default(),
            backoff: MIN_BACKOFF,
            max_buffer,
            lost: 0,
            warned: false,
            was_up: false,
            hold_until: None,
        }
    }

    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::Down { .. } => "down",
            State::Connecting => "connecting",
            State::Up => "up",
        }
    }

    /// More publishes are buffered than allowed: stop reading from publishers.
    pub fn congested(&self) -> bool {
        self.out.unsent() > self.max_buffer
    }

    pub fn unsent(&self) -> usize {
        self.out.unsent()
    }

    /// What a successor needs to carry on this link: its socket if it is up,
    /// the frames not yet written in full (and how much of the first one was),
    /// and the bytes received but not yet parsed.
    pub fn export(&self) -> (Option<&TcpStream>, Vec<u8>, usize, Vec<u8>) {
        let (unsent, written) = self.out.parts();
        match (&self.stream, self.state) {
            (Some(s), State::Up) => (Some(s), unsent, written, self.reader.unparsed().to_vec()),
            // Not connected: nothing has been written since the link broke.
            _ => (None, unsent, 0, Vec::new()),
        }
    }

    /// Carries on a link exported by a predecessor.
    pub fn adopt(&mut self, reg: &Registry, stream: Option<TcpStream>, unsent: Vec<u8>, written: usize, unparsed: Vec<u8>) {
        self.out = OutFrames::from_parts(unsent, written);
        match stream {
            Some(mut s) => match reg.register(&mut s, TOKEN, Interest::READABLE | Interest::WRITABLE) {
                Ok(()) => {
                    self.reader = FrameReader::with_bytes(unparsed);
                    self.stream = Some(s);
                    self.state = State::Up;
                    self.was_up = true;
                }
                Err(e) => self.down(reg, &format!("cannot register: {e}")),
            },
            None => {
                // A HELLO and SUBs queued for a connect in progress are redone.
                self.keep_unsent_publishes();
                self.state = State::Down { retry_at: Instant::now() };
            }
        }
    }

    /// Queues a publish; it waits in the buffer while the link is down.
    pub fn publish(&mut self, topic: &[u8], message: &[u8]) {
        self.out.push(Frame::Publish { topic, message });
    }

    /// Queues SUB/UNSUB. Skipped while down: `connect` subscribes afresh.
    pub fn control(&mut self, frame: Frame<'_>) {
        if self.stream.is_some() {
            self.out.push(frame);
        }
    }

    /// Whether the link is down and its retry time has come.
    pub fn due(&self) -> bool {
        matches!(self.state, State::Down { retry_at } if retry_at <= Instant::now())
    }

    /// Connects, queueing the hello and a SUB for each topic ahead of the
    /// buffered publishes.
    pub fn connect(&mut self, reg: &Registry, topics: &[&[u8]]) {
        let mut stream = match TcpStream::connect(self.addr) {
            Ok(s) => s,
            Err(e) => return self.down(reg, &format!("cannot connect: {e}")),
        };
        // Frames are small and latency matters: no Nagle delay.
        let _ = stream.set_nodelay(true);
        if let Err(e) = reg.register(&mut stream, TOKEN, Interest::READABLE | Interest::WRITABLE) {
            return self.down(reg, &format!("cannot register: {e}"));
        }
        let mut head = Vec::new();
        Frame::Hello { version: VERSION, secret: &self.secret }.encode(&mut head);
        for topic in topics {
            Frame::Sub(topic).encode(&mut head);
        }
        self.out.push_front(head);
        self.stream = Some(stream);
        self.reader = FrameReader::default();
        self.state = State::Connecting;
    }

    /// The socket reported writable: a connect has finished (or failed).
    pub fn on_writable(&mut self, reg: &Registry) {
        if self.state == State::Connecting {
            let Some(stream) = &self.stream else { return };
            match stream.take_error() {
                Ok(None) if stream.peer_addr().is_ok() => self.up(),
                Ok(None) => return, // not connected yet: a spurious event
                Ok(Some(e)) | Err(e) => return self.down(reg, &format!("cannot connect: {e}")),
            }
        }
        self.flush(reg);
    }

    /// The channel server accepted our hello.
    pub fn welcomed(&mut self) {
        info!("channel link up ({})", self.addr);
        self.backoff = MIN_BACKOFF;
        self.warned = false;
    }

    pub fn read(&mut self) -> io::Result<usize> {
        match &mut self.stream {
            Some(s) if self.state == State::Up => self.reader.read_from(s),
            _ => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn up(&mut self) {
        self.state = State::Up;
        if self.was_up {
            self.hold_until = Some(Instant::now() + SETTLE);
            info!("channel link reconnected: publishes wait {SETTLE:?} for the other workers to re-subscribe");
        }
        self.was_up = true;
    }

    /// Whether publishes are still held after a reconnect.
    fn holding(&mut self) -> bool {
        match self.hold_until {
            Some(until) if Instant::now() < until => true,
            _ => {
                self.hold_until = None;
                false
            }
        }
    }

    pub fn flush(&mut self, reg: &Registry) {
        if self.state != State::Up {
            return;
        }
        let hold = self.holding();
        let Some(stream) = &mut self.stream else { return };
        match self.out.write_to(stream, hold) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WriteZero => return self.down(reg, "connection closed"),
            Err(e) => return self.down(reg, &format!("write failed: {e}")),
        }
        self.out.shrink(4 * self.max_buffer.min(1 << 20));
    }

    /// Drops the connection and schedules a reconnect. Publishes not yet
    /// written stay buffered; a frame cut in half cannot be resent and is lost.
    pub fn down(&mut self, reg: &Registry, why: &str) {
        if let Some(mut s) = self.stream.take() {
            let _ = reg.deregister(&mut s);
        }
        if !self.warned {
            warn!("channel link to {} down: {why}; reconnecting", self.addr);
            self.warned = true;
        }
        self.keep_unsent_publishes();
        self.state = State::Down { retry_at: Instant::now() + self.backoff };
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn keep_unsent_publishes(&mut self) {
        self.lost += self.out.keep_unstarted_publishes();
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        match self.state {
            State::Down { retry_at } => Some(retry_at),
            State::Up => self.hold_until,
            State::Connecting => None,
        }
    }
}

