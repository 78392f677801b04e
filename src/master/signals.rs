//! The master's signals, read from a signalfd inside its event loop: no
//! handler code runs asynchronously, so there is nothing `unsafe` to get wrong.
//!
//! The signals are blocked in the master; the mask is inherited across exec,
//! so a worker clears it first thing (see `worker::run_from_env`).

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

pub const HANDLED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGCHLD,
];

/// Blocks the handled signals and returns a non-blocking fd that reports them.
pub fn open() -> nix::Result<SignalFd> {
    let mut set = SigSet::empty();
    HANDLED.iter().for_each(|s| set.add(*s));
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
}

/// Every pending signal (the fd is edge-triggered in mio: read until empty).
pub fn drain(fd: &SignalFd) -> Vec<Signal> {
    let mut out = Vec::new();
    while let Ok(Some(info)) = fd.read_signal() {
        if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
            out.push(sig);
        }
    }
    out
}
