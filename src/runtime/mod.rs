//! The generic worker runtime, which knows no service: the process entry
//! (`run_from_env`), the event loop and its `Service` trait, the handoff
//! socket, the output queue of every connection, and the control link to the
//! master.

pub mod control;
pub mod event_loop;
pub mod handoff;
pub mod log_file;
pub mod outbound;

use std::os::fd::{AsFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Environment variable that makes a process a worker; set by the master.
pub const ENV: &str = "FANOUT_WORKER";

#[derive(Serialize, Deserialize)]
pub struct WorkerEnv {
    pub listen_fd: RawFd,
    pub master_fd: RawFd,
    pub handoff_fd: RawFd,
    pub takeover_fd: Option<RawFd>,
    pub slot: usize,
    pub config: Config,
}

/// Runs this process as a worker if the master started it as one: `serve`
/// chooses the service for the worker's settings and runs it.
pub fn run_from_env(serve: impl FnOnce(Worker) -> ExitCode) -> Option<ExitCode> {
    let text = std::env::var(ENV).ok()?;
    let env: WorkerEnv = match serde_json::from_str(&text) {
        Ok(env) => env,
        Err(e) => {
            eprintln!("{ENV} is set but invalid ({e}); it is for the master's use only");
            return Some(ExitCode::FAILURE);
        }
    };
    // The master blocks the signals it reads from a signalfd, and the mask
    // survives exec: give the worker the default behaviour (TERM ends it).
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
    ignore_master_signals();
    // SAFETY: the master passed these descriptors to this process across exec,
    // named them in ENV, and nothing else in this process owns them.
    let fds = unsafe {
        event_loop::Inherited {
            listener: std::net::TcpListener::from_raw_fd(env.listen_fd),
            master: UnixStream::from_raw_fd(env.master_fd),
            handoff: UnixStream::from_raw_fd(env.handoff_fd),
            takeover: env.takeover_fd.map(|fd| UnixStream::from_raw_fd(fd)),
        }
    };
    // Our own children (none today) must not inherit them.
    let mut inherited = vec![fds.listener.as_fd(), fds.master.as_fd(), fds.handoff.as_fd()];
    inherited.extend(fds.takeover.as_ref().map(|t| t.as_fd()));
    for fd in inherited {
        let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
    }
    Some(serve(Worker { slot: env.slot, config: env.config, fds }))
}

/// A worker process as its master started it: its slot, its settings and the
/// descriptors it inherited.
pub struct Worker {
    pub slot: usize,
    pub config: Config,
    fds: event_loop::Inherited,
}

impl Worker {
    /// Runs `svc` in the event loop until the worker exits.
    pub fn run<S: event_loop::Service>(self, svc: S) -> ExitCode {
        event_loop::run(self.fds, self.config.max_connections, svc)
    }
}

/// The signals that ask the master for something (reload, graceful stop, log
/// reopen) reach the workers too when an operator signals the whole process
/// group (`pkill -USR2 data-source`, `kill -HUP -<pgid>`): their default action
/// would kill or core-dump every worker. The master tells its workers what to
/// do over their control link, so a worker ignores them. TERM and INT keep
/// their default: they stop a worker at once, as operators expect.
fn ignore_master_signals() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    for sig in [Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGUSR1, Signal::SIGUSR2] {
        // SAFETY: SIG_IGN installs no handler code, so nothing can run in
        // signal context; this runs before the event loop, on the only thread.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
}
