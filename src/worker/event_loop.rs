//! The loop every worker process runs: one mio `Poll` created after exec, the
//! inherited listening socket, the link to the master, and a `Service` (the
//! pub/sub server or the channel server) that owns the connections.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token};

use crate::process::control::{self, ConnInfo, FromWorker, ToWorker, WorkerStats};

pub const LISTENER: Token = Token(usize::MAX);
pub const MASTER: Token = Token(usize::MAX - 1);
/// The first token a service may use for a connection of its own (e.g. the
/// channel link); client connections use their slab keys, far below.
pub const SERVICE: Token = Token(usize::MAX - 2);

/// How long to wait before accepting again after running out of descriptors.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

pub trait Service {
    /// Called once, before the worker reports ready.
    fn start(&mut self, reg: &Registry);
    fn accept(&mut self, reg: &Registry, stream: TcpStream, peer: SocketAddr);
    fn event(&mut self, reg: &Registry, ev: &Event);
    /// Runs after every batch of events: deferred work, timers, flushing.
    /// Returns when the loop must wake up at the latest.
    fn tick(&mut self, reg: &Registry) -> Option<Instant>;
    fn connections(&self) -> usize;
    /// Stop reading, deliver what is queued, close connections as they empty.
    fn drain(&mut self, reg: &Registry);
    fn drained(&self) -> bool;
    fn stats(&self) -> WorkerStats;
    fn list(&self) -> Vec<ConnInfo>;
}

pub fn run(
    listener: std::net::TcpListener,
    master: std::os::unix::net::UnixStream,
    max_connections: usize,
    mut svc: impl Service,
) -> ExitCode {
    match Loop::new(listener, master, max_connections).and_then(|mut l| l.run(&mut svc)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("worker failed: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Loop {
    poll: Poll,
    listener: Option<TcpListener>,
    master: control::Conn,
    max_connections: usize,
    accept_retry: Option<Instant>,
    draining: bool,
}

impl Loop {
    fn new(
        listener: std::net::TcpListener,
        master: std::os::unix::net::UnixStream,
        max_connections: usize,
    ) -> io::Result<Loop> {
        let poll = Poll::new()?;
        listener.set_nonblocking(true)?;
        master.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        let mut master = mio::net::UnixStream::from_std(master);
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        poll.registry().register(&mut master, MASTER, Interest::READABLE | Interest::WRITABLE)?;
        Ok(Loop {
            poll,
            listener: Some(listener),
            master: control::Conn::new(master),
            max_connections,
            accept_retry: None,
            draining: false,
        })
    }

    fn run(&mut self, svc: &mut impl Service) -> io::Result<()> {
        svc.start(self.poll.registry());
        self.master.send(&FromWorker::Ready)?;
        let mut events = Events::with_capacity(1024);
        let mut wake = None;
        loop {
            let timeout = [wake, self.accept_retry]
                .into_iter()
                .flatten()
                .min()
                .map(|t| t.saturating_duration_since(Instant::now()));
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(svc),
                    MASTER => {
                        if !self.on_master(svc)? {
                            return Ok(());
                        }
                    }
                    _ => svc.event(self.poll.registry(), ev),
                }
            }
            if self.accept_retry.is_some_and(|t| t <= Instant::now()) {
                self.accept_retry = None;
                self.accept(svc);
            }
            wake = svc.tick(self.poll.registry());
            if self.draining && svc.drained() {
                info!("drained; exiting");
                return Ok(());
            }
        }
    }

    fn accept(&mut self, svc: &mut impl Service) {
        let Some(listener) = &self.listener else { return };
        if self.accept_retry.is_some() {
            return;
        }
        loop {
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    if svc.connections() >= self.max_connections {
                        debug!("refusing {peer}: {} connections", self.max_connections);
                        let msg = format!("ERR too many connections (limit {} per worker)\n", self.max_connections);
                        let _ = stream.write(msg.as_bytes());
                        continue;
                    }
                    tune(&stream);
                    svc.accept(self.poll.registry(), stream, peer);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc_errno::ECONNABORTED | libc_errno::EPROTO)) => {}
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: the pending connection stays queued and
                    // the listener will not signal again, so retry on a timer.
                    warn!("accept failed: {e}; retrying in {ACCEPT_RETRY:?} (raise `ulimit -n`?)");
                    self.accept_retry = Some(Instant::now() + ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    /// Handles the master's messages. Returns false when the worker must exit.
    fn on_master(&mut self, svc: &mut impl Service) -> io::Result<bool> {
        self.master.flush()?;
        let (msgs, closed) = self.master.receive::<ToWorker>()?;
        for msg in msgs {
            match msg {
                ToWorker::Stats => {
                    let mut s = svc.stats();
                    s.state = if self.draining { "draining" } else { "running" }.into();
                    self.master.send(&FromWorker::Stats(s))?;
                }
                ToWorker::Connections => self.master.send(&FromWorker::Connections(svc.list()))?,
                ToWorker::Drain => {
                    if let Some(mut l) = self.listener.take() {
                        let _ = self.poll.registry().deregister(&mut l);
                    }
                    self.draining = true;
                    svc.drain(self.poll.registry());
                }
            }
        }
        if closed {
            info!("master has gone; exiting");
        }
        Ok(!closed)
    }
}

/// Low latency for small lines, and keepalive so peers that vanish without a
/// FIN are noticed (after about two minutes) and cleaned up.
fn tune(stream: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = stream.set_nodelay(true);
    let _ = setsockopt(stream, sockopt::KeepAlive, &true);
    let _ = setsockopt(stream, sockopt::TcpKeepIdle, &60);
    let _ = setsockopt(stream, sockopt::TcpKeepInterval, &10);
    let _ = setsockopt(stream, sockopt::TcpKeepCount, &6);
}

mod libc_errno {
    pub const ECONNABORTED: i32 = nix::errno::Errno::ECONNABORTED as i32;
    pub const EPROTO: i32 = nix::errno::Errno::EPROTO as i32;
}
