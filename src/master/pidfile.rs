//! The pid file, locked for the life of the master so that a second `start`
//! fails cleanly and a stale file left by a crash is never mistaken for a
//! running server.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

pub struct PidFile {
    path: PathBuf,
    _lock: Flock<File>,
}

impl PidFile {
    /// Locks the file and writes this process's pid into it.
    pub fn acquire(path: &Path) -> Result<PidFile, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| format!("cannot open pid file {}: {e}", path.display()))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => {
                let pid = read_pid(path).ok().flatten().map(|p| format!(" (pid {p})")).unwrap_or_default();
                return Err(format!(
                    "already running{pid}: pid file {} is locked; stop it first or pass another --pid-file",
                    path.display()
                ));
            }
            Err((_, e)) => return Err(format!("cannot lock pid file {}: {e}", path.display())),
        };
        let write = |f: &mut File| -> io::Result<()> {
            f.set_len(0)?;
            f.rewind()?;
            writeln!(f, "{}", std::process::id())
        };
        write(&mut lock).map_err(|e| format!("cannot write pid file {}: {e}", path.display()))?;
        Ok(PidFile { path: path.to_owned(), _lock: lock })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Removed while still locked, so no other master can have taken it.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The pid in the file, if the file exists.
pub fn read_pid(path: &Path) -> io::Result<Option<u32>> {
    let mut s = String::new();
    match File::open(path) {
        Ok(mut f) => f.read_to_string(&mut s)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(s.trim().parse().ok())
}

/// Whether a live master holds the lock on this pid file.
pub fn is_locked(path: &Path) -> bool {
    let Ok(file) = File::open(path) else { return false };
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_) => false,
        Err((_, e)) => e == Errno::EWOULDBLOCK,
    }
}
