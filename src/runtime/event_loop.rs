//! The loop every worker process runs: one mio `Poll` created after exec, the
//! inherited listening socket, the link to the master, and a `Service` that
//! owns the connections. The loop knows no service: what a connection is, how
//! it is refused and what is handed over on reload are the service's.

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token};

use std::os::fd::OwnedFd;

use super::control::{self, ConnInfo, FromWorker, ToWorker, WorkerStats};
use super::handoff::{Payload, Receiver, Sender};

pub const LISTENER: Token = Token(usize::MAX);
pub const MASTER: Token = Token(usize::MAX - 1);
const HANDOFF: Token = Token(usize::MAX - 2);
/// The first token a service may use for a connection of its own (e.g. the
/// channel link); client connections use their slab keys, far below.
pub const SERVICE: Token = Token(usize::MAX - 3);

/// How long to wait before accepting again after running out of descriptors.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

pub trait Service {
    /// What this service hands a successor on reload, one message at a time.
    type Handoff: Payload;

    fn accept(&mut self, reg: &Registry, stream: TcpStream, peer: SocketAddr);
    /// A connection over the limit of `limit` per worker: tell it so, if the
    /// service's protocol has a way (the stream is closed when this returns).
    fn refuse(&mut self, stream: TcpStream, limit: usize);
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

    /// Sends every connection, with its state, to a successor. Leaves this
    /// service intact, to carry on if the successor fails. Returns false if
    /// the service cannot hand off (it is drained instead).
    fn hand_off(&mut self, _to: &mut Sender<Self::Handoff>) -> io::Result<bool> {
        Ok(false)
    }

    /// Adopts one connection sent by `hand_off`; the last message completes it.
    fn take_over(&mut self, _reg: &Registry, _msg: Self::Handoff, _fd: Option<OwnedFd>) -> io::Result<()> {
        Err(io::Error::other("this server cannot take connections over"))
    }
}

/// The descriptors a worker inherits from its master.
pub struct Inherited {
    pub listener: std::net::TcpListener,
    pub master: std::os::unix::net::UnixStream,
    /// This worker's end of the socket it hands its connections over on reload.
    pub handoff: std::os::unix::net::UnixStream,
    /// The predecessor's handoff socket, when this worker replaces one.
    pub takeover: Option<std::os::unix::net::UnixStream>,
}

pub fn run<S: Service>(fds: Inherited, max_connections: usize, mut svc: S) -> ExitCode {
    match Loop::new(fds, max_connections).and_then(|mut l| l.run(&mut svc)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("worker failed: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Loop<S: Service> {
    poll: Poll,
    listener: TcpListener,
    /// Accepting (not while taking over, handing off or draining).
    accepting: bool,
    master: control::Conn,
    handoff: Option<std::os::unix::net::UnixStream>,
    takeover: Option<Receiver<S::Handoff>>,
    max_connections: usize,
    accept_retry: Option<Instant>,
    /// Accepting failed (descriptors exhausted): warned once, quiet until it works.
    accept_failing: bool,
    draining: bool,
    version: String,
}

impl<S: Service> Loop<S> {
    fn new(fds: Inherited, max_connections: usize) -> io::Result<Loop<S>> {
        let poll = Poll::new()?;
        fds.listener.set_nonblocking(true)?;
        fds.master.set_nonblocking(true)?;
        let listener = TcpListener::from_std(fds.listener);
        let mut master = mio::net::UnixStream::from_std(fds.master);
        poll.registry().register(&mut master, MASTER, Interest::READABLE | Interest::WRITABLE)?;
        let takeover = fds.takeover.map(Receiver::new).transpose()?;
        let mut l = Loop {
            poll,
            listener,
            accepting: false,
            master: control::Conn::new(master),
            handoff: Some(fds.handoff),
            takeover,
            max_connections,
            accept_retry: None,
            accept_failing: false,
            draining: false,
            version: binary_version(),
        };
        match &mut l.takeover {
            Some(rx) => l.poll.registry().register(&mut rx.sock, HANDOFF, Interest::READABLE)?,
            None => l.set_accepting(true)?,
        }
        Ok(l)
    }

    fn set_accepting(&mut self, on: bool) -> io::Result<()> {
        if on != self.accepting {
            self.accepting = on;
            match on {
                true => self.poll.registry().register(&mut self.listener, LISTENER, Interest::READABLE)?,
                false => self.poll.registry().deregister(&mut self.listener)?,
            }
        }
        Ok(())
    }

    fn run(&mut self, svc: &mut S) -> io::Result<()> {
        self.master.send(&FromWorker::Ready)?;
        let mut events = Events::with_capacity(1024);
        let mut wake = Some(Instant::now());
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
                    HANDOFF => self.take_over(svc)?,
                    _ => svc.event(self.poll.registry(), ev),
                }
            }
            if self.takeover.is_some() {
                continue; // nothing is served until every connection has arrived
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

    fn accept(&mut self, svc: &mut S) {
        if !self.accepting || self.accept_retry.is_some() {
            return;
        }
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    if std::mem::take(&mut self.accept_failing) {
                        info!("accepting connections again");
                    }
                    if svc.connections() >= self.max_connections {
                        debug!("refusing {peer}: {} connections", self.max_connections);
                        svc.refuse(stream, self.max_connections);
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
                    if !std::mem::replace(&mut self.accept_failing, true) {
                        warn!(
                            "accept failed: {e}; retrying every {ACCEPT_RETRY:?} until it works (raise `ulimit -n`?)"
                        );
                    }
                    self.accept_retry = Some(Instant::now() + ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    /// Handles the master's messages. Returns false when the worker must exit.
    fn on_master(&mut self, svc: &mut S) -> io::Result<bool> {
        self.master.flush()?;
        let (msgs, closed) = self.master.receive::<ToWorker>()?;
        for msg in msgs {
            match msg {
                ToWorker::Stats { query } => {
                    let mut stats = svc.stats();
                    stats.state = if self.draining { "draining" } else { "running" }.into();
                    stats.version = self.version.clone();
                    self.master.send(&FromWorker::Stats { query, stats: Box::new(stats) })?;
                }
                ToWorker::Connections { query } => {
                    self.master.send(&FromWorker::Connections { query, conns: svc.list() })?
                }
                ToWorker::Drain => self.drain(svc)?,
                ToWorker::HandOff => {
                    if self.hand_off(svc)? {
                        return Ok(false);
                    }
                }
                ToWorker::ReopenLog { path } => match super::log_file::reopen(&path) {
                    Ok(()) => info!("reopened the log file {}", path.display()),
                    Err(e) => {
                        error!("cannot reopen the log file {}: {e}; still writing to the old one", path.display())
                    }
                },
            }
        }
        if closed {
            info!("master has gone; exiting");
        }
        Ok(!closed)
    }
}

impl<S: Service> Loop<S> {
    fn drain(&mut self, svc: &mut S) -> io::Result<()> {
        self.set_accepting(false)?;
        self.draining = true;
        svc.drain(self.poll.registry());
        Ok(())
    }

    /// Replaced by a new worker: hands everything over and returns true once
    /// the successor has confirmed. On failure, carries on serving.
    fn hand_off(&mut self, svc: &mut S) -> io::Result<bool> {
        let Some(sock) = self.handoff.take() else {
            warn!("cannot hand connections over a second time; draining instead");
            self.drain(svc)?;
            return Ok(false);
        };
        self.set_accepting(false)?;
        svc.tick(self.poll.registry()); // settle deferred work first
        let n = svc.connections();
        let started = Instant::now();
        let result = Sender::new(sock).and_then(|mut tx| match svc.hand_off(&mut tx)? {
            true => tx.finish().map(|_| true),
            false => Ok(false),
        });
        match result {
            Ok(true) => {
                info!("handed {n} connection(s) to the new worker in {:?}", started.elapsed());
                Ok(true)
            }
            Ok(false) => {
                self.drain(svc)?;
                Ok(false)
            }
            Err(e) => {
                error!("handing connections over failed ({e}); carrying on serving them");
                self.set_accepting(true)?;
                Ok(false)
            }
        }
    }

    /// Adopts what the predecessor sends; once it is all here, confirms and
    /// starts serving.
    fn take_over(&mut self, svc: &mut S) -> io::Result<()> {
        let Some(rx) = &mut self.takeover else { return Ok(()) };
        rx.read()?;
        while let Some((msg, fd)) = rx.next_msg()? {
            svc.take_over(self.poll.registry(), msg, fd)?;
        }
        if rx.eof {
            rx.acknowledge()?;
            let mut rx = self.takeover.take().expect("checked above");
            let _ = self.poll.registry().deregister(&mut rx.sock);
            info!("took over {} connection(s)", svc.connections());
            self.set_accepting(true)?;
        }
        Ok(())
    }
}

/// `0.1.0 (binary of 2026-11-23 09:46:30 UTC)`.
fn binary_version() -> String {
    let modified = std::env::current_exe()
        .and_then(|p| p.metadata())
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    match modified {
        Some(d) => format!("{} (binary of {})", env!("CARGO_PKG_VERSION"), utc(d.as_secs())),
        None => env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// Formats Unix seconds as a UTC date and time (civil-from-days, H. Hinnant).
fn utc(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem / 60 % 60, rem % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc(1_795_000_000), "2026-11-18 11:06:40 UTC");
        assert_eq!(super::utc(951_825_600), "2000-02-29 12:00:00 UTC");
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
