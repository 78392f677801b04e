//! The command line of every server binary: `start`, `stop`, `restart`,
//! `reload`, `status` and `connections`.

pub mod args;
pub mod config_file;

pub use args::{ChannelArgs, PubSubArgs};

use std::io::Write;
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::time::Duration;

use clap::FromArgMatches;
use log::error;

use crate::config::{load_nats_auth, load_secret, ChannelConfig, Config, Role, Spec};
use crate::master::control::{self, Reply, Request, Status};
use crate::master::daemon::{self, DaemonEnv};
use crate::master::pidfile::{self, PidFile};
use crate::master::Master;
use args::{Cli, Command, Query, RoleArgs, Start, Stop, Target};

/// LSB exit code of `status` for a server that is not running.
const NOT_RUNNING: u8 = 3;

pub fn main<E: RoleArgs>(spec: &Spec) -> ExitCode {
    let worker = crate::runtime::run_from_env(|w| {
        init_logging(&w.config.name, &format!("worker {}", w.slot));
        crate::services::serve(w)
    });
    if let Some(code) = worker {
        return code;
    }
    if let Ok(text) = std::env::var(daemon::ENV) {
        return run_daemon(spec, &text);
    }
    let matches = config_file::matches(args::command::<E>(spec));
    let cli = match Cli::<E>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_logging(spec.name, "cli");
    let result = match cli.command {
        Command::Start(start) => self::start(spec, &start),
        Command::Stop(stop) => self::stop(spec, &stop),
        Command::Restart { start, graceful } => {
            let stop = Stop { target: Target { pid_file: start.target.pid_file.clone() }, graceful, timeout: 30 };
            self::stop(spec, &stop).and_then(|_| self::start(spec, &start))
        }
        Command::Reload(target) => reload(spec, &target),
        Command::Status(q) => {
            quiet_on_closed_pipe();
            status(spec, &q)
        }
        Command::Connections(q) => {
            quiet_on_closed_pipe();
            connections(spec, &q)
        }
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("{}: {msg}", spec.name);
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr (the log file when daemonised) as
/// `time LEVEL name[pid] role: message`; `RUST_LOG` filters, default `info`.
pub fn init_logging(name: &str, role: &str) {
    let (name, role, pid) = (name.to_owned(), role.to_owned(), std::process::id());
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(move |buf, r| {
            writeln!(buf, "{} {:<5} {name}[{pid}] {role}: {}", buf.timestamp_millis(), r.level(), r.args())
        })
        .try_init();
}

fn start<E: RoleArgs>(spec: &Spec, start: &Start<E>) -> Result<ExitCode, String> {
    let cfg = start.config(spec)?;
    check_secret(&cfg)?;
    if pidfile::is_locked(&cfg.pid_file) {
        let pid = pidfile::read_pid(&cfg.pid_file).ok().flatten().unwrap_or(0);
        return Err(format!(
            "already running (pid {pid}, pid file {}); stop it first or pass another --pid-file",
            cfg.pid_file.display()
        ));
    }
    // The channel worker would wait for the directory's lock (as a reload's
    // successor does, until its predecessor exits): refuse at once instead.
    if let Role::Channel(ChannelConfig { data_dir: Some(dir), .. }) = &cfg.role {
        if crate::store::Store::in_use(dir) {
            return Err(format!(
                "data directory {} is in use by another channel server; stop it or pass another --data-dir",
                dir.display()
            ));
        }
    }
    if start.daemon {
        let (pid, addr) = daemon::spawn(&cfg)?;
        println!(
            "{} started as a daemon (master pid {pid}), listening on {addr}; log: {}",
            spec.name,
            cfg.log_file.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    init_logging(spec.name, "master");
    serve(cfg, None)
}

/// The detached master of `start -d`.
fn run_daemon(spec: &Spec, text: &str) -> ExitCode {
    init_logging(spec.name, "master");
    let env: DaemonEnv = match serde_json::from_str(text) {
        Ok(env) => env,
        Err(e) => {
            error!("{} is set but invalid ({e}); it is for `start -d` only", daemon::ENV);
            return ExitCode::FAILURE;
        }
    };
    let ready = daemon::adopt(&env);
    match serve(env.config, Some(ready.try_clone().expect("dup of the ready pipe"))) {
        Ok(code) => code,
        Err(msg) => {
            error!("{msg}");
            let _ = nix::unistd::write(&ready, format!("{msg}\n").as_bytes());
            ExitCode::FAILURE
        }
    }
}

/// Runs the master in this process until it stops.
fn serve(mut cfg: Config, ready: Option<OwnedFd>) -> Result<ExitCode, String> {
    raise_fd_limit();
    let pid_file = PidFile::acquire(&cfg.pid_file)?;
    let listener = TcpListener::bind(cfg.listen).map_err(|e| {
        format!("cannot listen on {}: {e}; is another server on that port? pass --listen to choose another", cfg.listen)
    })?;
    // With port 0 the kernel picks one: report the real address.
    cfg.listen = listener.local_addr().map_err(|e| e.to_string())?;
    Ok(Master::new(cfg, listener, pid_file, ready)?.run())
}

/// Reads the secrets and credentials the workers will need, so that `start`
/// fails at once with the reason; and the channel port must not be open to
/// the network without a secret.
fn check_secret(cfg: &Config) -> Result<(), String> {
    let (file, channel) = match &cfg.role {
        Role::Channel(c) => (c.secret_file.as_ref(), true),
        Role::PubSub(p) => (p.secret_file.as_ref(), false),
    };
    if let Role::PubSub(p) = &cfg.role {
        if !p.nats.is_empty() {
            load_nats_auth(p.bus_credentials.as_ref())?;
        }
    }
    let secret = load_secret(file)?;
    if channel && secret.is_none() && !cfg.listen.ip().is_loopback() {
        return Err(format!(
            "refusing to listen on {} without a secret: workers anywhere could publish and subscribe; \
             pass --secret-file or set {} (and give the workers the same)",
            cfg.listen,
            crate::config::SECRET_ENV
        ));
    }
    Ok(())
}

/// Each connection is a descriptor: allow as many as the hard limit permits.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err() {
            log::warn!("could not raise the open-files limit from {soft} to {hard}");
        }
    }
}

fn stop(spec: &Spec, stop: &Stop) -> Result<ExitCode, String> {
    let pid_file = stop.target.pid_file(spec);
    if !pidfile::is_locked(&pid_file) {
        println!("{} is not running (no live master holds {})", spec.name, pid_file.display());
        return Ok(ExitCode::SUCCESS);
    }
    let master = pidfile::read_pid(&pid_file).ok().flatten();
    let req = Request::Stop { graceful: stop.graceful, timeout_secs: stop.timeout };
    // The master kills what is left at the timeout; allow it time to do so.
    let wait = Duration::from_secs(stop.timeout + 15);
    match call(&pid_file, &req, wait) {
        Ok(Reply::Stopping) => {}
        Ok(other) => return Err(format!("unexpected reply: {other:?}")),
        Err(e) => {
            return Err(format!(
                "cannot reach the master ({e}); is it hung? try `kill -9` on the pid in {}",
                pid_file.display()
            ))
        }
    }
    // The socket closes as the master exits; wait until it is really gone.
    if pidfile::is_locked(&pid_file) || !master.is_none_or(|pid| wait_gone(pid, Duration::from_secs(5))) {
        return Err("the master did not exit in time".into());
    }
    println!("{} stopped", spec.name);
    Ok(ExitCode::SUCCESS)
}

/// Waits until a process (not our child) has exited; /proc is polled because
/// there is no event to wait on for it.
fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let gone = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // A zombie has exited; only its parent's reaping is left.
            Ok(stat) => stat.rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('Z')),
            Err(_) => true,
        };
        if gone {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn reload(spec: &Spec, target: &Target) -> Result<ExitCode, String> {
    let pid_file = target.pid_file(spec);
    match ask(spec, &pid_file, &Request::Reload, Duration::from_secs(600))? {
        Reply::Reloaded(pids) => {
            let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
            println!("{} reloaded; worker pids: {}", spec.name, pids.join(" "));
            Ok(ExitCode::SUCCESS)
        }
        Reply::Error(e) => Err(e),
        other => Err(format!("unexpected reply: {other:?}")),
    }
}

fn status(spec: &Spec, q: &Query) -> Result<ExitCode, String> {
    let pid_file = q.target.pid_file(spec);
    if !pidfile::is_locked(&pid_file) {
        println!("{} is not running", spec.name);
        return Ok(ExitCode::from(NOT_RUNNING));
    }
    let Reply::Status(s) = ask(spec, &pid_file, &Request::Status, Duration::from_secs(10))? else {
        return Err("unexpected reply".into());
    };
    if q.json {
        println!("{}", serde_json::to_string_pretty(&s).expect("serialises"));
    } else {
        print_status(&s);
    }
    Ok(ExitCode::SUCCESS)
}

fn connections(spec: &Spec, q: &Query) -> Result<ExitCode, String> {
    let pid_file = q.target.pid_file(spec);
    let Reply::Connections(conns) = ask(spec, &pid_file, &Request::Connections, Duration::from_secs(10))? else {
        return Err("unexpected reply".into());
    };
    if q.json {
        println!("{}", serde_json::to_string_pretty(&conns).expect("serialises"));
        return Ok(ExitCode::SUCCESS);
    }
    let head = ("pid", "id", "peer", "kind", "bytes_in", "bytes_out", "queued");
    println!(
        "{:<8} {:>6} {:<22} {:<6} {:>10} {:>10} {:>8}  topics  queues (unacked)",
        head.0, head.1, head.2, head.3, head.4, head.5, head.6
    );
    for c in &conns {
        println!(
            "{:<8} {:>6} {:<22} {:<6} {:>10} {:>10} {:>8}  {}  {}",
            c.worker_pid,
            c.id,
            c.peer,
            c.kind,
            c.bytes_in,
            c.bytes_out,
            c.queued,
            c.topics.join(","),
            match c.queues.is_empty() {
                true => String::new(),
                false => format!("{} ({})", c.queues.join(","), c.unacked),
            }
        );
    }
    println!("{} connection(s)", conns.len());
    Ok(ExitCode::SUCCESS)
}

fn ask(spec: &Spec, pid_file: &std::path::Path, req: &Request, timeout: Duration) -> Result<Reply, String> {
    if !pidfile::is_locked(pid_file) {
        return Err(format!(
            "not running (no live master holds {}); start it with `{} start`",
            pid_file.display(),
            spec.name
        ));
    }
    call(pid_file, req, timeout).map_err(|e| format!("cannot reach the master: {e}"))
}

/// Sends a request to the master of a locked pid file. If its control socket
/// is gone (a tmp cleaner, a person), the master is asked to bind it again
/// (SIGUSR2 to the pid in the pid file) and the request is sent once more.
fn call(pid_file: &std::path::Path, req: &Request, timeout: Duration) -> std::io::Result<Reply> {
    use std::io::ErrorKind::{ConnectionRefused, NotFound};
    match control::call(pid_file, req, timeout) {
        Err(e) if matches!(e.kind(), NotFound | ConnectionRefused) => {
            let pid = pidfile::read_pid(pid_file)?.ok_or(e)?;
            log::warn!("the control socket is gone; asking the master (pid {pid}) to bind it again");
            let master = nix::unistd::Pid::from_raw(pid as i32);
            nix::sys::signal::kill(master, nix::sys::signal::SIGUSR2)?;
            // Nothing to wait on but the socket itself, and its file is not
            // enough: it appears at bind(2), and connecting is refused until
            // listen(2) follows. A refused connect sent nothing: retry it.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                match control::call(pid_file, req, timeout) {
                    Err(e)
                        if matches!(e.kind(), NotFound | ConnectionRefused) && std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    other => return other,
                }
            }
        }
        other => other,
    }
}

fn print_status(s: &Status) {
    println!(
        "{} {}  master pid {}  listening on {}  up {}s  {} worker(s)",
        s.name,
        s.version,
        s.pid,
        s.listen,
        s.uptime_secs,
        s.workers.len()
    );
    println!(
        "{:>3} {:>8} {:>9} {:>7} {:>5} {:>6} {:>10} {:>10} {:>9} {:>8} {:>5} {:>7} {:>5} {:>10} {:<9} {:<26} version",
        "id",
        "pid",
        "memory",
        "conns",
        "ws",
        "topics",
        "msgs_in",
        "msgs_out",
        "queued",
        "dropped",
        "slow",
        "lagging",
        "gaps",
        "link",
        "state",
        "bus"
    );
    let mut total = crate::runtime::control::WorkerStats::default();
    let mut memory = 0;
    for w in &s.workers {
        let t = &w.stats;
        println!(
            "{:>3} {:>8} {:>7}kB {:>7} {:>5} {:>6} {:>10} {:>10} {:>9} {:>8} {:>5} {:>7} {:>5} {:>10} {:<9} {:<26} {}",
            w.id,
            w.pid,
            w.memory_kb,
            t.connections,
            t.websockets,
            t.topics,
            t.msgs_in,
            t.msgs_out,
            t.bytes_queued,
            t.dropped,
            t.slow_consumers,
            t.lagging,
            t.gaps,
            t.link,
            t.state,
            t.bus,
            t.version
        );
        memory += w.memory_kb;
        total.connections += t.connections;
        total.websockets += t.websockets;
        total.msgs_in += t.msgs_in;
        total.msgs_out += t.msgs_out;
        total.bytes_queued += t.bytes_queued;
        total.dropped += t.dropped;
        total.slow_consumers += t.slow_consumers;
        total.lagging += t.lagging;
        total.gaps += t.gaps;
    }
    println!(
        "{:>3} {:>8} {:>7}kB {:>7} {:>5} {:>6} {:>10} {:>10} {:>9} {:>8} {:>5} {:>7} {:>5}",
        "all",
        "",
        memory,
        total.connections,
        total.websockets,
        "",
        total.msgs_in,
        total.msgs_out,
        total.bytes_queued,
        total.dropped,
        total.slow_consumers,
        total.lagging,
        total.gaps
    );
    for w in s.workers.iter().filter_map(|w| w.stats.retained) {
        println!(
            "retained: {} message(s), {} bytes of payload, {} topic(s); {} bytes of log; \
             {} message(s) evicted early, {} topic(s) forgotten",
            w.messages, w.bytes, w.topics, w.log_bytes, w.evicted, w.forgotten
        );
    }
    for w in &s.workers {
        if let Some(j) = &w.stats.jobs {
            println!(
                "jobs: {} queue(s), {} bytes held; {} delivered, {} acked, {} returned ({} timed out), {} dead-lettered",
                j.queues, j.bytes, j.delivered, j.acked, j.returned, j.timed_out, j.dead_lettered
            );
        }
        for q in &w.stats.queues {
            println!("queue {}: ready {} unacked {} consumers {}", q.name, q.ready, q.unacked, q.consumers);
        }
    }
}

/// `status | head` or `status --json | grep -q`: the reader may go before we
/// have printed everything. Like every Unix filter, end quietly on SIGPIPE
/// instead of panicking in `println!` (Rust ignores SIGPIPE by default). Only
/// for the query commands: the master and its workers keep ignoring it, so a
/// vanished client is an EPIPE they handle.
fn quiet_on_closed_pipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIG_DFL installs no handler code; this runs on the CLI's only
    // thread before anything is written.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}
