//! The control socket: one JSON object per line over a Unix socket beside the
//! pid file, on which the master answers the command line.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::runtime::control::{encode, ConnInfo, WorkerStats};

/// From the CLI to the master.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    Connections,
    Reload,
    Stop { graceful: bool, timeout_secs: u64 },
}

/// From the master to the CLI.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Status(Status),
    Connections(Vec<ConnInfo>),
    /// Reload finished: the new worker pids.
    Reloaded(Vec<u32>),
    /// Stop has begun; the socket closes when the master exits.
    Stopping,
    Error(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub version: String,
    pub pid: u32,
    pub listen: String,
    pub uptime_secs: u64,
    pub workers: Vec<WorkerRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerRow {
    pub id: usize,
    pub pid: u32,
    pub memory_kb: u64,
    pub restarts: u64,
    #[serde(flatten)]
    pub stats: WorkerStats,
}

/// The control socket of the instance with this pid file.
pub fn socket_path(pid_file: &Path) -> PathBuf {
    pid_file.with_extension("sock")
}

/// CLI side: sends one request and returns the master's reply. With `Stop`,
/// the reply is read and then the call waits until the master has exited.
pub fn call(pid_file: &Path, req: &Request, timeout: Duration) -> io::Result<Reply> {
    let path = socket_path(pid_file);
    let mut s = UnixStream::connect(&path)?;
    s.set_read_timeout(Some(timeout))?;
    let mut line = Vec::new();
    encode(req, &mut line);
    s.write_all(&line)?;
    let mut r = BufReader::new(s);
    let mut text = String::new();
    r.read_line(&mut text)?;
    if text.is_empty() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the master closed the control socket"));
    }
    let reply: Reply = serde_json::from_str(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if matches!(reply, Reply::Stopping) {
        // The master holds this socket open until it exits.
        let mut rest = Vec::new();
        io::Read::read_to_end(&mut r, &mut rest)?;
    }
    Ok(reply)
}
