//! Reopening the log file after logrotate has renamed it. A daemon's stdout
//! and stderr are its log file (`master::daemon`), and every process writes
//! its lines there itself, so each one (master and workers) reopens the path
//! and puts the new file in place of both descriptors. `dup2` swaps them in
//! one step: a line is written whole either to the old file or to the new.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;

/// Points stdout and stderr at a freshly opened `path` (created if missing).
pub fn reopen(path: &Path) -> io::Result<()> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    nix::unistd::dup2_stdout(&file)?;
    nix::unistd::dup2_stderr(&file)?;
    Ok(())
}
