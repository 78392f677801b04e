//! `start -d`: the command re-executes its own binary as a detached master and
//! waits on a pipe until that master reports that every worker is serving, or
//! why it could not start, so the exit code of `start -d` is the truth.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Environment variable naming the detached master's settings.
pub const ENV: &str = "FANOUT_DAEMON";

#[derive(Serialize, Deserialize)]
pub struct DaemonEnv {
    pub ready_fd: i32,
    pub config: Config,
}

/// Parent side: starts the detached master and waits for its verdict: the
/// master's pid and the address it listens on.
pub fn spawn(cfg: &Config) -> Result<(u32, String), String> {
    if let Some(dir) = cfg.log_file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cfg.log_file)
        .map_err(|e| format!("cannot open log file {}: {e}", cfg.log_file.display()))?;
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()))
        .map_err(|e| format!("pipe: {e}"))?;
    let env = DaemonEnv { ready_fd: write.as_raw_fd(), config: cfg.clone() };
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let child = Command::new(exe)
        .env(ENV, serde_json::to_string(&env).expect("config serialises"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .current_dir("/")
        .spawn()
        .map_err(|e| format!("cannot start the daemon: {e}"))?;
    drop(write);
    let mut line = String::new();
    let _ = BufReader::new(std::fs::File::from(read)).read_line(&mut line);
    match line.trim_end().split_once(' ') {
        Some(("ok", addr)) => Ok((child.id(), addr.to_owned())),
        _ if line.is_empty() => Err(format!("the server exited while starting; see {}", cfg.log_file.display())),
        _ => Err(line.trim_end().to_owned()),
    }
}

/// Child side: detaches from the terminal's session and takes the pipe.
pub fn adopt(env: &DaemonEnv) -> OwnedFd {
    // Own session: no controlling terminal, immune to the shell's SIGHUP/SIGINT.
    let _ = nix::unistd::setsid();
    // SAFETY: the parent created this pipe end for us, passed its number, and
    // nothing else in this fresh process owns or closes it.
    let fd = unsafe { OwnedFd::from_raw_fd(env.ready_fd) };
    // Workers must not inherit it, or the parent would wait for them too.
    let _ = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
    fd
}
