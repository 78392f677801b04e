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

use crate::config::{Config, Role};
use crate::runtime::control::{self as worker_control, FromWorker, ToWorker};
use crate::runtime::WorkerEnv;
use control::{Reply, Request};
use pidfile::PidFile;

pub mod control;
mod control_clients;
pub mod daemon;
mod exposition;
mod metrics;
pub mod notify;
pub mod pidfile;
mod reload;
mod signals;

use control_clients::{Asker, Client, Query};
use reload::Reload;

const SIGNAL: Token = Token(0);
const CONTROL: Token = Token(1);
const METRICS: Token = Token(2);
const WORKER_BASE: usize = 16;
const SCRAPE_BASE: usize = 1 << 29;
const CLIENT_BASE: usize = 1 << 30;

/// How long a new worker may take to report that it is serving.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a replaced worker may take to deliver what it holds.
const RETIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Fast stop: how long workers get after SIGTERM before SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

struct Worker {
    pid: Pid,
    slot: usize,
    link: worker_control::Conn,
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

enum Mode {
    Starting { deadline: Instant },
    Running,
    Reloading(Reload),
    Stopping { deadline: Instant, graceful: bool },
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
    /// The id of the latest query sent to the workers.
    query_id: u64,
    queued: VecDeque<(Asker, Request)>,
    /// Daemon start: written once every worker is ready, then dropped.
    ready_pipe: Option<OwnedFd>,
    /// The file stdout and stderr go to, reopened on SIGUSR2: a daemon's only.
    log_file: Option<PathBuf>,
    notify: notify::Notifier,
    metrics: Option<metrics::Endpoint>,
    /// Reloads completed since start.
    reloads: u64,
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
        let mut control = bind_control(&control_path)?;
        // Workers inherit the listening socket across exec.
        set_cloexec(&listener, false).map_err(|e| format!("cannot share listener: {e}"))?;
        poll.registry()
            .register(&mut SourceFd(&signals.as_fd().as_raw_fd()), SIGNAL, Interest::READABLE)
            .and_then(|_| poll.registry().register(&mut control, CONTROL, Interest::READABLE))
            .map_err(|e| format!("cannot register with poll: {e}"))?;
        let metrics = cfg.metrics.map(|addr| metrics::Endpoint::bind(addr, &poll)).transpose()?;
        let count = cfg.count;
        // A daemon's stdout and stderr are the log file (daemon::spawn); in
        // the foreground they belong to whoever started us (a terminal, journald).
        let log_file = ready_pipe.is_some().then(|| cfg.log_file.clone());
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
            query_id: 0,
            queued: VecDeque::new(),
            ready_pipe,
            log_file,
            notify: notify::Notifier::from_env(),
            metrics,
            reloads: 0,
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
        if let Some(addr) = self.metrics.as_ref().and_then(|m| m.local_addr().ok()) {
            info!("serving metrics at http://{addr}/metrics");
        }
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
                    METRICS => self.accept_scrapes(),
                    Token(t) if t >= CLIENT_BASE => self.on_client(t - CLIENT_BASE),
                    Token(t) if t >= SCRAPE_BASE => self.on_scrape(t - SCRAPE_BASE),
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
            .env(crate::runtime::ENV, serde_json::to_string(&env)?)
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
            link: worker_control::Conn::new(link),
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
                FromWorker::Stats { query, stats } => {
                    if let Some(q) = self.query.as_mut().and_then(|q| q.answered_by(query, pid)) {
                        q.stats.push((pid, *stats));
                    }
                }
                FromWorker::Connections { query, conns } => {
                    if let Some(q) = self.query.as_mut().and_then(|q| q.answered_by(query, pid)) {
                        q.conns.extend(conns);
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
            Mode::Starting { .. }
                if self.workers.len() == self.cfg.count && self.workers.iter().all(|(_, w)| w.ready) =>
            {
                self.mode = Mode::Running;
                self.notify.ready(&self.serving());
                if let Some(pipe) = self.ready_pipe.take() {
                    let _ = nix::unistd::write(&pipe, format!("ok {}\n", self.cfg.listen).as_bytes());
                }
            }
            Mode::Reloading(_) => {
                // The worker serving this slot until now, if any.
                let old = self.workers.iter().find(|(k, w)| *k != key && w.slot == slot && !w.retiring);
                let old = old.map(|(_, w)| w.pid);
                self.reload_event(reload::Event::Ready { key, pid, old });
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
        if matches!(self.mode, Mode::Reloading(_)) {
            let ev = reload::Event::Exited { pid: w.pid, slot: w.slot, ready: w.ready, how: how.into() };
            if self.reload_event(ev) {
                return;
            }
        }
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

    // ---- reload --------------------------------------------------------------

    pub(super) fn start_reload(&mut self, client: Option<usize>) {
        if !matches!(self.mode, Mode::Running) {
            let msg = "cannot reload now: the server is starting, stopping or already reloading";
            warn!("{msg}");
            if let Some(c) = client {
                self.reply(c, &Reply::Error(msg.into()));
            }
            return;
        }
        info!("reloading {} worker(s) from {}", self.cfg.count, self.exe.display());
        self.notify.reloading(&format!("reloading {} worker(s)", self.cfg.count));
        let (r, actions) = Reload::start(self.cfg.count, client);
        self.mode = Mode::Reloading(r);
        self.apply_reload(actions);
    }

    /// Feeds the reload an event and carries out what it asks. Returns false
    /// when the event was not the reload's business.
    fn reload_event(&mut self, ev: reload::Event) -> bool {
        let Mode::Reloading(r) = &mut self.mode else { return false };
        let actions = r.on(ev, Instant::now());
        let handled = !actions.is_empty();
        self.apply_reload(actions);
        handled
    }

    fn apply_reload(&mut self, actions: Vec<reload::Action>) {
        use reload::Action;
        for action in actions {
            match action {
                Action::Spawn { slot } => {
                    let ev = match self.spawn_successor(slot) {
                        Ok((key, handoff)) => reload::Event::Spawned { key, handoff },
                        Err(e) => reload::Event::SpawnFailed(format!("cannot start new worker {slot}: {e}")),
                    };
                    self.reload_event(ev);
                }
                Action::Retire { old, handoff } => {
                    if let Some((_, w)) = self.workers.iter_mut().find(|(_, w)| w.pid == old) {
                        w.retiring = true;
                        // From here the successor holds the only other end,
                        // so the old worker sees at once if it dies.
                        w.handoff = None;
                        let _ = w.link.send(if handoff { &ToWorker::HandOff } else { &ToWorker::Drain });
                    }
                }
                Action::Kill(pid) => {
                    let _ = kill(pid, Signal::SIGKILL);
                }
                Action::KeepServing(pid) => {
                    if let Some((_, w)) = self.workers.iter_mut().find(|(_, w)| w.pid == pid) {
                        w.retiring = false;
                    }
                }
                Action::Done(pids) => {
                    let Mode::Reloading(r) = std::mem::replace(&mut self.mode, Mode::Running) else { return };
                    info!("reload complete");
                    self.reloads += 1;
                    self.notify.ready(&self.serving());
                    if let Some(c) = r.client {
                        self.reply(c, &Reply::Reloaded(pids));
                    }
                }
                Action::Failed { why, kill: successor } => {
                    let Mode::Reloading(r) = std::mem::replace(&mut self.mode, Mode::Running) else { return };
                    error!("reload stopped: {why}; the remaining workers keep serving");
                    self.notify.ready(&format!("{}; the last reload stopped: {why}", self.serving()));
                    if let Some(w) = successor.and_then(|key| self.workers.get_mut(key)) {
                        w.retiring = true;
                        let _ = kill(w.pid, Signal::SIGKILL);
                    }
                    if let Some(c) = r.client {
                        self.reply(c, &Reply::Error(format!("reload stopped: {why}")));
                    }
                }
            }
        }
    }

    /// Starts the successor of the worker serving `slot`. A service that hands
    /// over gets the old worker's handoff socket (the master keeps its copy
    /// until the successor is ready, for another try); the channel server's
    /// single worker drains instead. Returns the worker key and whether it
    /// got the socket.
    fn spawn_successor(&mut self, slot: usize) -> io::Result<(usize, bool)> {
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
        self.spawn(slot, takeover).map(|key| (key, handoff))
    }

    fn signal_all(&self, sig: Signal) {
        for (_, w) in &self.workers {
            let _ = kill(w.pid, sig);
        }
    }

    // ---- stop ----------------------------------------------------------------

    fn start_stop(&mut self, graceful: bool, timeout: Duration) {
        if let Mode::Stopping { .. } = self.mode {
            return;
        }
        if let Mode::Reloading(r) = &mut self.mode {
            let failed = r.abort("the server is stopping");
            self.apply_reload(vec![failed]);
        }
        info!("stopping{}", if graceful { " gracefully" } else { "" });
        self.notify.stopping(if graceful { "stopping gracefully" } else { "stopping" });
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
                // Reopen what this server writes to: the log file (logrotate
                // renamed it) and the control socket (the CLI found it gone).
                Signal::SIGUSR2 => {
                    self.reopen_log();
                    self.rebind_control();
                }
                _ => {} // SIGCHLD: reaped after every turn
            }
        }
    }

    /// Binds the control socket afresh: the CLI asks for it (SIGUSR2) when
    /// it finds the socket gone, deleted by a tmp cleaner or by hand.
    fn rebind_control(&mut self) {
        self.accept_clients(); // those that reached the old one
        match bind_control(&self.control_path) {
            Ok(mut control) => {
                if let Err(e) = self.poll.registry().register(&mut control, CONTROL, Interest::READABLE) {
                    return error!("cannot register the control socket: {e}");
                }
                let mut old = std::mem::replace(&mut self.control, control);
                let _ = self.poll.registry().deregister(&mut old);
                info!("control socket {} bound again", self.control_path.display());
            }
            Err(e) => error!("{e}"),
        }
    }

    /// After logrotate renamed the log file (SIGUSR2): this process and every
    /// worker write to a new file at the same path from here on.
    fn reopen_log(&mut self) {
        let Some(path) = self.log_file.clone() else {
            debug!("no log file to reopen (in the foreground the log goes to stderr)");
            return;
        };
        if let Err(e) = crate::runtime::log_file::reopen(&path) {
            error!("cannot reopen the log file {}: {e}; still writing to the old one", path.display());
            return;
        }
        info!("reopened the log file {}", path.display());
        let msg = ToWorker::ReopenLog { path };
        for (_, w) in self.workers.iter_mut() {
            let _ = w.link.send(&msg);
        }
    }

    /// The STATUS= line systemd shows while every worker serves.
    fn serving(&self) -> String {
        format!("serving on {} with {} worker(s)", self.cfg.listen, self.cfg.count)
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mode = match &self.mode {
            Mode::Starting { deadline } | Mode::Stopping { deadline, .. } => Some(*deadline),
            Mode::Reloading(r) => r.deadline(),
            Mode::Running => None,
        };
        let respawn = self.slots.iter().filter_map(|s| s.respawn_at).min();
        let query = self.query.as_ref().map(|q| q.deadline);
        let scrape = self.metrics.as_ref().and_then(|m| m.next_deadline());
        [mode, respawn, query, scrape].into_iter().flatten().min()
    }

    /// Acts on whatever deadline has passed. Returns the exit code once stopped.
    fn on_timers(&mut self) -> Option<ExitCode> {
        let now = Instant::now();
        if self.query.as_ref().is_some_and(|q| q.deadline <= now) {
            self.finish_query();
        }
        self.expire_scrapes(now);
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
            Mode::Reloading(_) => {
                self.reload_event(reload::Event::Tick);
            }
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
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.control_path);
    }
}

/// Binds the control socket at `path`, replacing whatever is there: the pid
/// file lock proves that no other live master owns this path.
fn bind_control(path: &std::path::Path) -> Result<UnixListener, String> {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path).map_err(|e| format!("cannot bind control socket {}: {e}", path.display()))
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
