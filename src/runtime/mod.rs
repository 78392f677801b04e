//! A worker process: the event loop, and the pub/sub service that the data
//! source and subscriber servers run in it.

pub mod control;
pub mod event_loop;

use std::os::fd::{AsFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use serde::{Deserialize, Serialize};

use crate::config::{load_secret, Config, Role};

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

/// Runs this process as a worker if the master started it as one.
pub fn run_from_env() -> Option<ExitCode> {
    let text = std::env::var(ENV).ok()?;
    let env: WorkerEnv = match serde_json::from_str(&text) {
        Ok(env) => env,
        Err(e) => {
            eprintln!("{ENV} is set but invalid ({e}); it is for the master's use only");
            return Some(ExitCode::FAILURE);
        }
    };
    crate::cli::init_logging(&env.config.name, &format!("worker {}", env.slot));
    // The master blocks the signals it reads from a signalfd, and the mask
    // survives exec: give the worker the default behaviour (TERM ends it).
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
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
    let cfg = env.config;
    let secret_file = match &cfg.role {
        Role::PubSub(p) => p.secret_file.as_ref(),
        Role::Channel(c) => c.secret_file.as_ref(),
    };
    let secret = match load_secret(secret_file) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            return Some(ExitCode::FAILURE);
        }
    };
    Some(match cfg.role {
        Role::PubSub(p) => {
            let svc = crate::services::pubsub::PubSub::new(&cfg.title, p, secret.unwrap_or_default());
            event_loop::run(fds, cfg.max_connections, svc)
        }
        Role::Channel(c) => {
            let svc = crate::services::channel::ChannelServer::new(c, secret);
            event_loop::run(fds, cfg.max_connections, svc)
        }
    })
}
