//! The master process: starts `count` workers that share one listening socket,
//! respawns the ones that die, replaces them one at a time on reload, answers
//! `status`/`connections`/`stop`/`reload` on its control socket, and never
//! touches a client connection itself.
//!
//! Workers are started by fork + exec of the binary's path (`std::process::Command`),
//! so a reload picks up a rebuilt binary and each worker creates its own epoll
//! instance. The listening socket is bound once here and inherited, never closed
//! while the server runs: connections that arrive while workers are replaced wait
//! in its backlog instead of being refused (per-worker SO_REUSEPORT sockets would
//! drop their queued connections when a worker exits).

use std::collections::VecDeque;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::net::UnixListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use slab::Slab;

use super::control::{self, ConnInfo, FromWorker, Reply, Request, Status, ToWorker, WorkerRow, WorkerStats};
use super::pidfile::PidFile;
use super::signals;
use crate::config::{Config, Role};
use crate::worker::WorkerEnv;

const SIGNAL: Token = Token(0);
const CONTROL: Token = Token(1);
const WORKER_BASE: usize = 16;
const CLIENT_BASE: usize = 1 << 30;

/// How long a new worker may take to report that it is serving.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a replaced worker may take to deliver what it holds.
const RETIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Fast stop: how long workers get after SIGTERM before SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

struct Worker {
    pid: Pid,
    slot: usize,
    link: control::Conn,
    /// The other end of the worker's handoff socket, for its successor.
    handoff: Option<OwnedFd>,
    ready: bool,
    /// Being replaced (reload) or drained (graceful stop): not respawned.
    retiring: bool,
    started: Instant,
}

#[derive(Default)]
struct Slot {
    restarts: u64,
    backoff: Duration,
    respawn_at: Option<Instant>,
}

struct Client {
    link: control::Conn,
    /// Asked to stop: the socket stays open until the master exits.
    hold: bool,
}

enum Mode {
    Starting { deadline: Instant },
    Running,
    Reloading(Reload),
    Stopping { deadline: Instant, graceful: bool },
}

struct Reload {
    slots: VecDeque<usize>,
    step: Step,
    client: Option<usize>,
    new_pids: Vec<u32>,
}

enum Step {
    Idle,
    /// Waiting for the replacement (worker key) to report ready; `handoff`:
    /// it holds the old worker's handoff socket and will take its connections.
    Starting { key: usize, handoff: bool, deadline: Instant },
    /// Waiting for the replaced worker to hand over (or drain) and exit.
    Retiring { pid: Pid, new: Pid, deadline: Instant },
}

/// A status or connections request in flight: one at a time.
struct Query {
    client: usize,
    req: Request,
    waiting: Vec<Pid>,
    stats: Vec<(Pid, WorkerStats)>,
    conns: Vec<ConnInfo>,
    deadline: Instant,
}

pub struct Master {
    /// First field, so it is dropped (unlocked and removed) before the control
    /// sockets close: a `stop` waiting for EOF then finds the server gone.
    _pid_file: PidFile,
    cfg: Config,
    exe: PathBuf,
    poll: Poll,
    signals: nix::sys::signalfd::SignalFd,
    control: UnixListener,
    control_path: PathBuf,
    listener: TcpListener,
    workers: Slab<Worker>,
    slots: Vec<Slot>,
    clients: Slab<Client>,
    mode: Mode,
    query: Option<Query>,
    queued: VecDeque<(usize, Request)>,
    /// Daemon start: written once every worker is ready, then dropped.
    ready_pipe: Option<OwnedFd>,
    started: Instant,
}

impl Master {
    pub fn new(
        cfg: Config,
        listener: TcpListener,
        pid_file: PidFile,
        ready_pipe: Option<OwnedFd>,
    ) -> Result<Master, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
        let signals = signals::open().map_err(|e| format!("cannot set up signals: {e}"))?;
        let poll = Poll::new().map_err(|e| format!("cannot create poll: {e}"))?;
        let control_path = control::socket_path(&cfg.pid_file);
        // The pid file lock proves no live master owns this path.
        let _ = std::fs::remove_file(&control_path);
        let mut control = UnixListener::bind(&control_path)
            .map_err(|e| format!("cannot bind control socket {}: {e}", control_path.display()))?;
        // Workers inherit the listening socket across exec.
        set_cloexec(&listener, false).map_err(|e| format!("cannot share listener: {e}"))?;
        poll.registry()
            .register(&mut SourceFd(&signals.as_fd().as_raw_fd()), SIGNAL, Interest::READABLE)
            .and_then(|_| poll.registry().register(&mut control, CONTROL, Interest::READABLE))
            .map_err(|e| format!("cannot register with poll: {e}"))?;
        let count = cfg.count;
        Ok(Master {
            _pid_file: pid_file,
            cfg,
            exe,
            poll,
            signals,
            control,
            control_path,
            listener,
            workers: Slab::new(),
            slots: (0..count).map(|_| Slot::default()).collect(),
            clients: Slab::new(),
            mode: Mode::Starting { deadline: Instant::now() + READY_TIMEOUT },
            query: None,
            queued: VecDeque::new(),
            ready_pipe,
            started: Instant::now(),
        })
    }

    pub fn run(mut self) -> ExitCode {
        info!(
            "{} {} listening on {} with {} worker(s)",
            self.cfg.name,
            env!("CARGO_PKG_VERSION"),
            self.cfg.listen,
            self.cfg.count
        );
        for slot in 0..self.cfg.count {
            if let Err(e) = self.spawn(slot, None) {
                return self.fail_start(&format!("cannot start worker: {e}"));
            }
        }
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = self.next_deadline().map(|d| d.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    error!("poll failed: {e}");
                    return ExitCode::FAILURE;
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    SIGNAL => self.on_signals(),
                    CONTROL => self.accept_clients(),
                    Token(t) if t >= CLIENT_BASE => self.on_client(t - CLIENT_BASE),
                    Token(t) => self.on_worker(t - WORKER_BASE),
                }
            }
            // SIGCHLD can coalesce and links can close before it arrives: reap every turn.
            self.reap();
            if let Some(code) = self.on_timers() {
                return code;
            }
        }
    }

    // ---- workers -------------------------------------------------------------

    /// Starts a worker for `slot`; with `takeover`, the handoff socket of the
    /// worker it replaces.
    fn spawn(&mut self, slot: usize, takeover: Option<OwnedFd>) -> io::Result<usize> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let (handoff_ours, handoff_theirs) = std::os::unix::net::UnixStream::pair()?;
        for fd in [theirs.as_fd(), handoff_theirs.as_fd()].into_iter().chain(takeover.as_ref().map(|t| t.as_fd())) {
            set_cloexec(&fd, false)?;
        }
        let env = WorkerEnv {
            listen_fd: self.listener.as_raw_fd(),
            master_fd: theirs.as_raw_fd(),
            handoff_fd: handoff_theirs.as_raw_fd(),
            takeover_fd: takeover.as_ref().map(|t| t.as_raw_fd()),
            slot,
            config: self.cfg.clone(),
        };
        let child = Command::new(&self.exe)
            .arg0(format!("{}: worker {slot}", self.cfg.name))
            .env(crate::worker::ENV, serde_json::to_string(&env)?)
            .stdin(Stdio::null())
            .spawn();
        // The child has its copies; ours must not stay open (or be inherited).
        drop((theirs, handoff_theirs, takeover));
        let child = child?;
        ours.set_nonblocking(true)?;
        let entry = self.workers.vacant_entry();
        let key = entry.key();
        let mut link = mio::net::UnixStream::from_std(ours);
        self.poll.registry().register(&mut link, Token(WORKER_BASE + key), Interest::READABLE)?;
        let pid = Pid::from_raw(child.id() as i32);
        debug!("started worker {slot} (pid {pid})");
        entry.insert(Worker {
            pid,
            slot,
            link: control::Conn::new(link),
            handoff: Some(handoff_ours.into()),
            ready: false,
            retiring: false,
            started: Instant::now(),
        });
        Ok(key)
    }

    fn on_worker(&mut self, key: usize) {
        let Some(w) = self.workers.get_mut(key) else { return };
        let (msgs, closed) = match w.link.receive::<FromWorker>() {
            Ok(r) => r,
            Err(e) => {
                warn!("worker {} (pid {}): bad control message: {e}", w.slot, w.pid);
                (Vec::new(), true)
            }
        };
        let pid = w.pid;
        if closed {
            // It is exiting; the reaper does the rest.
            let _ = self.poll.registry().deregister(&mut w.link.stream);
        }
        for msg in msgs {
            match msg {
                FromWorker::Ready => self.on_ready(key),
                FromWorker::Stats(s) => {
                    if let Some(q) = self.query.as_mut().filter(|q| q.waiting.contains(&pid)) {
                        q.waiting.retain(|p| *p != pid);
                        q.stats.push((pid, s));
                    }
                }
                FromWorker::Connections(c) => {
                    if let Some(q) = self.query.as_mut().filter(|q| q.waiting.contains(&pid)) {
                        q.waiting.retain(|p| *p != pid);
                        q.conns.extend(c);
                    }
                }
            }
        }
        self.finish_query_if_done();
    }

    fn on_ready(&mut self, key: usize) {
        let w = &mut self.workers[key];
        w.ready = true;
        info!("worker {} ready (pid {})", w.slot, w.pid);
        let (slot, pid) = (w.slot, w.pid);
        match &mut self.mode {
            Mode::Starting { .. } if self.workers.len() == self.cfg.count && self.workers.iter().all(|(_, w)| w.ready) => {
                self.mode = Mode::Running;
                if let Some(pipe) = self.ready_pipe.take() {
                    let _ = nix::unistd::write(&pipe, format!("ok {}\n", self.cfg.listen).as_bytes());
                }
            }
            Mode::Reloading(r) => {
                if let Step::Starting { key: k, handoff, .. } = r.step {
                    if k != key {
                        return;
                    }
                    r.new_pids.push(pid.as_raw() as u32);
                    let old = self.workers.iter_mut().find(|(k, w)| *k != key && w.slot == slot && !w.retiring);
                    match old {
                        Some((_, old)) => {
                            old.retiring = true;
                            // From here the successor holds the only other end,
                            // so the old worker sees at once if it dies.
                            old.handoff = None;
                            let msg = if handoff { ToWorker::HandOff } else { ToWorker::Drain };
                            let _ = old.link.send(&msg);
                            let deadline = Instant::now() + RETIRE_TIMEOUT;
                            r.step = Step::Retiring { pid: old.pid, new: pid, deadline };
                        }
                        None => r.step = Step::Idle,
                    }
                    self.next_reload_step();
                }
            }
            _ => {}
        }
    }

    /// Collects every exited child (SIGCHLD coalesces, so loop until none).
    fn reap(&mut self) {
        loop {
            let (pid, how) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, format!("exit code {code}")),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, format!("signal {sig}")),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            let Some(key) = self.workers.iter().find(|(_, w)| w.pid == pid).map(|(k, _)| k) else { continue };
            let mut w = self.workers.remove(key);
            let _ = self.poll.registry().deregister(&mut w.link.stream);
            if let Some(q) = self.query.as_mut() {
                q.waiting.retain(|p| *p != pid);
            }
            self.finish_query_if_done();
            self.on_exit(w, &how);
        }
    }

    fn on_exit(&mut self, w: Worker, how: &str) {
        match &mut self.mode {
            Mode::Stopping { .. } => debug!("worker {} (pid {}) exited: {how}", w.slot, w.pid),
            Mode::Starting { .. } => {
                error!("worker {} (pid {}) exited during startup: {how}", w.slot, w.pid);
                self.mode = Mode::Stopping { deadline: Instant::now() + KILL_TIMEOUT, graceful: false };
                self.signal_all(Signal::SIGTERM);
                if let Some(pipe) = self.ready_pipe.take() {
                    let msg = format!("a worker exited during startup ({how}); see the log file\n");
                    let _ = nix::unistd::write(&pipe, msg.as_bytes());
                }
            }
            Mode::Reloading(r) if matches!(r.step, Step::Retiring { pid, .. } if pid == w.pid) => {
                info!("replaced worker {} (pid {}) exited: {how}", w.slot, w.pid);
                r.step = Step::Idle;
                self.next_reload_step();
            }
            Mode::Reloading(r) if !w.ready && matches!(r.step, Step::Starting { .. }) => {
                let why = format!("new worker {} (pid {}) exited before it was ready: {how}", w.slot, w.pid);
                self.abort_reload(&why);
            }
            Mode::Reloading(r) if matches!(r.step, Step::Retiring { new, .. } if new == w.pid) => {
                // The old worker got no confirmation and carries on serving.
                let Step::Retiring { pid: old, .. } = r.step else { unreachable!() };
                if let Some((_, o)) = self.workers.iter_mut().find(|(_, o)| o.pid == old) {
                    o.retiring = false;
                }
                let why = format!("new worker {} (pid {}) exited while taking over: {how}", w.slot, w.pid);
                self.abort_reload(&why);
            }
            _ if w.retiring => info!("worker {} (pid {}) exited: {how}", w.slot, w.pid),
            _ => {
                let slot = &mut self.slots[w.slot];
                slot.restarts += 1;
                // A worker that dies soon after starting is likely to do so again: back off.
                slot.backoff = if w.started.elapsed() < Duration::from_secs(5) {
                    (slot.backoff * 2).clamp(Duration::from_millis(100), MAX_BACKOFF)
                } else {
                    Duration::ZERO
                };
                warn!("worker {} (pid {}) died ({how}); restarting in {:?}", w.slot, w.pid, slot.backoff);
                slot.respawn_at = Some(Instant::now() + slot.backoff);
            }
        }
    }

    fn signal_all(&self, sig: Signal) {
        for (_, w) in &self.workers {
            let _ = kill(w.pid, sig);
        }
    }

    // ---- reload --------------------------------------------------------------

    fn start_reload(&mut self, client: Option<usize>) {
        match self.mode {
            Mode::Running => {}
            _ => {
                let msg = "cannot reload now: the server is starting, stopping or already reloading";
                warn!("{msg}");
                if let Some(c) = client {
                    self.reply(c, &Reply::Error(msg.into()));
                }
                return;
            }
        }
        info!("reloading {} worker(s) from {}", self.cfg.count, self.exe.display());
        self.mode = Mode::Reloading(Reload {
            slots: (0..self.cfg.count).collect(),
            step: Step::Idle,
            client,
            new_pids: Vec::new(),
        });
        self.next_reload_step();
    }

    fn next_reload_step(&mut self) {
        let Mode::Reloading(r) = &mut self.mode else { return };
        if !matches!(r.step, Step::Idle) {
            return;
        }
        let Some(slot) = r.slots.pop_front() else {
            let (client, pids) = (r.client.take(), std::mem::take(&mut r.new_pids));
            info!("reload complete");
            self.mode = Mode::Running;
            if let Some(c) = client {
                self.reply(c, &Reply::Reloaded(pids));
            }
            return;
        };
        // Pub/sub workers hand their connections over; the channel server's
        // single worker drains. The master keeps its copy of the old worker's
        // handoff socket until the successor is ready, for another try.
        let takeover = match self.cfg.role {
            Role::PubSub(_) => self
                .workers
                .iter()
                .find(|(_, w)| w.slot == slot && !w.retiring)
                .and_then(|(_, w)| w.handoff.as_ref())
                .and_then(|fd| fd.try_clone().ok()),
            Role::Channel(_) => None,
        };
        let handoff = takeover.is_some();
        match self.spawn(slot, takeover) {
            Ok(key) => {
                if let Mode::Reloading(r) = &mut self.mode {
                    r.step = Step::Starting { key, handoff, deadline: Instant::now() + READY_TIMEOUT };
                }
            }
            Err(e) => self.abort_reload(&format!("cannot start new worker {slot}: {e}")),
        }
    }

    fn abort_reload(&mut self, why: &str) {
        let Mode::Reloading(r) = std::mem::replace(&mut self.mode, Mode::Running) else { return };
        error!("reload stopped: {why}; the remaining workers keep serving");
        if let Step::Starting { key, .. } = r.step {
            if let Some(w) = self.workers.get_mut(key) {
                w.retiring = true;
                let _ = kill(w.pid, Signal::SIGKILL);
            }
        }
        if let Some(c) = r.client {
            self.reply(c, &Reply::Error(format!("reload stopped: {why}")));
        }
    }

    // ---- stop ----------------------------------------------------------------

    fn start_stop(&mut self, graceful: bool, timeout: Duration) {
        if let Mode::Stopping { .. } = self.mode {
            return;
        }
        if let Mode::Reloading(_) = self.mode {
            self.abort_reload("the server is stopping");
        }
        info!("stopping{}", if graceful { " gracefully" } else { "" });
        if graceful {
            for (_, w) in self.workers.iter_mut() {
                w.retiring = true;
                let _ = w.link.send(&ToWorker::Drain);
            }
        } else {
            self.signal_all(Signal::SIGTERM);
        }
        self.mode = Mode::Stopping { deadline: Instant::now() + timeout, graceful };
    }

    // ---- signals and timers --------------------------------------------------

    fn on_signals(&mut self) {
        for sig in signals::drain(&self.signals) {
            match sig {
                Signal::SIGTERM | Signal::SIGINT => self.start_stop(false, KILL_TIMEOUT),
                Signal::SIGQUIT => self.start_stop(true, Duration::from_secs(30)),
                Signal::SIGHUP | Signal::SIGUSR1 => self.start_reload(None),
                _ => {} // SIGCHLD: reaped after every turn
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mode = match &self.mode {
            Mode::Starting { deadline } | Mode::Stopping { deadline, .. } => Some(*deadline),
            Mode::Reloading(r) => match r.step {
                Step::Starting { deadline, .. } | Step::Retiring { deadline, .. } => Some(deadline),
                Step::Idle => None,
            },
            Mode::Running => None,
        };
        let respawn = self.slots.iter().filter_map(|s| s.respawn_at).min();
        let query = self.query.as_ref().map(|q| q.deadline);
        [mode, respawn, query].into_iter().flatten().min()
    }

    /// Acts on whatever deadline has passed. Returns the exit code once stopped.
    fn on_timers(&mut self) -> Option<ExitCode> {
        let now = Instant::now();
        if self.query.as_ref().is_some_and(|q| q.deadline <= now) {
            self.finish_query();
        }
        match &mut self.mode {
            Mode::Stopping { deadline, graceful } => {
                if self.workers.is_empty() {
                    info!("stopped");
                    return Some(if self.ready_pipe.is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS });
                }
                if *deadline <= now {
                    warn!(
                        "{} worker(s) still running after the {} timeout: killing them",
                        self.workers.len(),
                        if *graceful { "graceful stop" } else { "stop" }
                    );
                    *deadline = now + KILL_TIMEOUT;
                    self.signal_all(Signal::SIGKILL);
                }
                return None;
            }
            Mode::Starting { deadline } if *deadline <= now => {
                return Some(self.fail_start("workers did not become ready in time; see the log file"));
            }
            Mode::Reloading(r) => match r.step {
                Step::Starting { deadline, .. } if deadline <= now => {
                    self.abort_reload("the new worker did not become ready in time");
                }
                Step::Retiring { pid, new, deadline } if deadline <= now => {
                    warn!("replaced worker (pid {pid}) did not finish in time: killing it");
                    let _ = kill(pid, Signal::SIGKILL);
                    r.step = Step::Retiring { pid, new, deadline: now + KILL_TIMEOUT };
                }
                _ => {}
            },
            _ => {}
        }
        for slot in 0..self.slots.len() {
            if self.slots[slot].respawn_at.is_some_and(|t| t <= now) {
                self.slots[slot].respawn_at = None;
                if let Err(e) = self.spawn(slot, None) {
                    error!("cannot restart worker {slot}: {e}");
                    self.slots[slot].respawn_at = Some(now + MAX_BACKOFF);
                }
            }
        }
        None
    }

    fn fail_start(&mut self, why: &str) -> ExitCode {
        error!("{why}");
        if let Some(pipe) = self.ready_pipe.take() {
            let _ = nix::unistd::write(&pipe, format!("{why}\n").as_bytes());
        }
        self.signal_all(Signal::SIGKILL);
        for (_, w) in &self.workers {
            let _ = waitpid(w.pid, None);
        }
        ExitCode::FAILURE
    }

    // ---- the control socket --------------------------------------------------

    fn accept_clients(&mut self) {
        while let Ok((mut stream, _)) = self.control.accept() {
            let entry = self.clients.vacant_entry();
            let token = Token(CLIENT_BASE + entry.key());
            if self.poll.registry().register(&mut stream, token, Interest::READABLE | Interest::WRITABLE).is_ok() {
                entry.insert(Client { link: control::Conn::new(stream), hold: false });
            }
        }
    }

    fn on_client(&mut self, key: usize) {
        let Some(c) = self.clients.get_mut(key) else { return };
        let _ = c.link.flush();
        let (reqs, closed) = c.link.receive::<Request>().unwrap_or((Vec::new(), true));
        if closed {
            self.drop_client(key);
            return;
        }
        for req in reqs {
            match req {
                Request::Status | Request::Connections => {
                    self.queued.push_back((key, req));
                    self.start_query();
                }
                Request::Reload => self.start_reload(Some(key)),
                Request::Stop { graceful, timeout_secs } => {
                    self.clients[key].hold = true;
                    self.reply(key, &Reply::Stopping);
                    let timeout = Duration::from_secs(timeout_secs);
                    self.start_stop(graceful, if graceful { timeout } else { timeout.min(KILL_TIMEOUT) });
                }
            }
        }
    }

    fn reply(&mut self, key: usize, reply: &Reply) {
        let Some(c) = self.clients.get_mut(key) else { return };
        if c.link.send(reply).is_err() {
            self.drop_client(key);
        }
    }

    fn drop_client(&mut self, key: usize) {
        let mut c = self.clients.remove(key);
        let _ = self.poll.registry().deregister(&mut c.link.stream);
    }

    fn start_query(&mut self) {
        if self.query.is_some() {
            return;
        }
        let Some((client, req)) = self.queued.pop_front() else { return };
        let msg = match req {
            Request::Connections => ToWorker::Connections,
            _ => ToWorker::Stats,
        };
        let mut waiting = Vec::new();
        for (_, w) in self.workers.iter_mut().filter(|(_, w)| w.ready) {
            if w.link.send(&msg).is_ok() {
                waiting.push(w.pid);
            }
        }
        let deadline = Instant::now() + QUERY_TIMEOUT;
        self.query = Some(Query { client, req, waiting, stats: Vec::new(), conns: Vec::new(), deadline });
        self.finish_query_if_done();
    }

    fn finish_query_if_done(&mut self) {
        if self.query.as_ref().is_some_and(|q| q.waiting.is_empty()) {
            self.finish_query();
        }
    }

    fn finish_query(&mut self) {
        let Some(q) = self.query.take() else { return };
        let reply = match q.req {
            Request::Connections => {
                let mut conns = q.conns;
                conns.sort_by_key(|c| (c.worker_pid, c.id));
                Reply::Connections(conns)
            }
            _ => Reply::Status(self.status(q.stats)),
        };
        self.reply(q.client, &reply);
        self.start_query();
    }

    fn status(&self, mut stats: Vec<(Pid, WorkerStats)>) -> Status {
        let mut workers: Vec<WorkerRow> = self
            .workers
            .iter()
            .map(|(_, w)| {
                let stats = match stats.iter().position(|(p, _)| *p == w.pid) {
                    Some(i) => stats.swap_remove(i).1,
                    None => WorkerStats {
                        state: if w.ready { "unresponsive" } else { "starting" }.into(),
                        ..Default::default()
                    },
                };
                WorkerRow {
                    id: w.slot,
                    pid: w.pid.as_raw() as u32,
                    memory_kb: rss_kb(w.pid),
                    restarts: self.slots[w.slot].restarts,
                    stats,
                }
            })
            .collect();
        workers.sort_by_key(|w| (w.id, w.pid));
        Status {
            name: self.cfg.name.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            listen: self.cfg.listen.to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            workers,
        }
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.control_path);
    }
}

fn set_cloexec(fd: &impl AsFd, on: bool) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let flags = if on { FdFlag::FD_CLOEXEC } else { FdFlag::empty() };
    fcntl(fd, FcntlArg::F_SETFD(flags)).map(drop).map_err(io::Error::from)
}

/// Resident memory of a process, from /proc.
pub fn rss_kb(pid: Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
