//! What each server is, and the settings a master hands to its workers.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::protocol::nats::Auth;

/// The fixed facts of one binary.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Binary name, used in messages and default file names.
    pub name: &'static str,
    /// Human name: "Welcome to {title}".
    pub title: &'static str,
    pub about: &'static str,
    pub port: u16,
    pub count: usize,
    pub role: RoleKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleKind {
    PubSub,
    Channel,
}

pub const DATA_SOURCE: Spec = Spec {
    name: "data-source",
    title: "Data Source Server",
    about: "Data source server: clients publish with `publish <message>` over telnet (port 2345)",
    port: 2345,
    count: 4,
    role: RoleKind::PubSub,
};

pub const SUBSCRIBER: Spec = Spec {
    name: "subscriber",
    title: "Subscriber Server",
    about: "Subscriber server: clients `subscribe` over telnet and receive every publish (port 2346)",
    port: 2346,
    count: 1,
    role: RoleKind::PubSub,
};

pub const CHANNEL_SERVER: Spec = Spec {
    name: "channel-server",
    title: "Channel Server",
    about: "Channel server: fans every topic publish out to the workers subscribed to it (port 2206)",
    port: 2206,
    count: 1,
    role: RoleKind::Channel,
};

/// Everything a worker needs; serialised by the master into the worker's
/// environment, so a worker started from a rebuilt binary gets the same settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub name: String,
    pub title: String,
    pub listen: SocketAddr,
    pub count: usize,
    pub pid_file: PathBuf,
    pub log_file: PathBuf,
    /// Per worker process.
    pub max_connections: usize,
    /// Where the master serves `GET /metrics` (Prometheus), if anywhere.
    /// (Defaulted so a worker started from this binary by an older master reads its config.)
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    pub role: Role,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Role {
    PubSub(PubSubConfig),
    Channel(ChannelConfig),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PubSubConfig {
    pub channel: SocketAddr,
    /// NATS servers (`host:port`) used as the bus instead of the channel
    /// server; none: the channel server.
    pub nats: Vec<String>,
    pub bus_credentials: Option<PathBuf>,
    pub topic: String,
    pub max_line: usize,
    pub max_send_queue: usize,
    /// What happens to a subscriber that falls behind the retention.
    pub lagging: Lagging,
    pub max_link_buffer: usize,
    pub secret_file: Option<PathBuf>,
}

/// `--lagging`: what becomes of a subscriber over its send queue: a position
/// in the retained messages, told with a `GAP` line if it falls behind the
/// retention (`Gap`), or cut off as a slow consumer (`Disconnect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Lagging {
    Gap,
    Disconnect,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChannelConfig {
    pub max_link_buffer: usize,
    pub secret_file: Option<PathBuf>,
    pub max_topics: usize,
    pub max_topics_per_worker: usize,
    /// Where the message log lives; `None`: in memory only.
    pub data_dir: Option<PathBuf>,
    pub fsync: FsyncPolicy,
    pub fsync_interval_ms: u64,
    /// Retention per topic (messages, payload bytes, seconds) and in total (log bytes).
    pub retain_messages: u64,
    pub retain_bytes: u64,
    pub retain_age_s: Option<u64>,
    pub retain_total: u64,
    pub queues: QueueLimits,
}

/// When the channel server's data directory is synced (`--fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsyncPolicy {
    Always,
    Interval,
    Never,
}

/// The work queues' bounds and timers (`services::channel::queues`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct QueueLimits {
    /// Jobs in one queue, ready and unacknowledged.
    pub max_jobs: u64,
    /// Payload bytes in all queues.
    pub max_bytes: u64,
    pub ack_timeout_ms: u64,
    /// Deliveries of a job before it is dead-lettered.
    pub max_tries: u32,
}

/// Most topics one client connection may subscribe to.
pub const MAX_SUBSCRIPTIONS: usize = 1024;

/// Longest shared secret, in bytes: a channel server reads no more than a
/// hello carrying it from a connection that has not presented it.
pub const MAX_SECRET: usize = 1024;

/// The environment variable that carries the channel secret when no
/// `--secret-file` is given.
pub const SECRET_ENV: &str = "FANOUT_CHANNEL_SECRET";

/// The shared secret, from the file if one is named, else from the environment.
pub fn load_secret(file: Option<&PathBuf>) -> Result<Option<Vec<u8>>, String> {
    let secret = read_secret(file)?;
    match secret {
        Some(s) if s.len() > MAX_SECRET => Err(format!("the secret is {} bytes long; at most {MAX_SECRET}", s.len())),
        other => Ok(other),
    }
}

fn read_secret(file: Option<&PathBuf>) -> Result<Option<Vec<u8>>, String> {
    match file {
        Some(path) => {
            let s = std::fs::read(path).map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
            let s = s.trim_ascii().to_vec();
            if s.is_empty() {
                return Err(format!("secret file {} is empty", path.display()));
            }
            Ok(Some(s))
        }
        None => Ok(std::env::var_os(SECRET_ENV)
            .map(|v| std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()).trim_ascii().to_vec())
            .filter(|v| !v.is_empty())),
    }
}

/// The NATS servers of `--bus nats://host:port,…` as `host:port`.
pub fn parse_bus(arg: &str) -> Result<Vec<String>, String> {
    arg.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|url| {
            if url.starts_with("tls://") {
                return Err(format!("--bus {url}: TLS is not supported yet; reach the cluster over a private network or a tunnel"));
            }
            let hostport = url.strip_prefix("nats://").unwrap_or(url);
            if hostport.contains('@') {
                return Err(format!(
                    "--bus {url}: credentials do not go in the URL, which `ps` shows: use --bus-credentials FILE or {TOKEN_ENV} / {USER_ENV} and {PASSWORD_ENV}"
                ));
            }
            if hostport.is_empty() || hostport.contains('/') || hostport.contains("://") {
                return Err(format!("--bus {url}: expected nats://HOST:PORT"));
            }
            // The NATS default port when none is given (an IPv6 address is in brackets).
            Ok(match hostport.rsplit_once(':') {
                Some((_, port)) if !port.contains(']') => hostport.to_owned(),
                _ => format!("{hostport}:4222"),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(|urls| match urls.is_empty() {
            true => Err("--bus: expected nats://HOST:PORT[,nats://HOST:PORT…]".into()),
            false => Ok(urls),
        })
}

pub const TOKEN_ENV: &str = "FANOUT_NATS_TOKEN";
pub const USER_ENV: &str = "FANOUT_NATS_USER";
pub const PASSWORD_ENV: &str = "FANOUT_NATS_PASSWORD";

/// The NATS credentials: from the file if one is named (lines `token=…`, or
/// `user=…` and `password=…`), else from the environment, else none.
pub fn load_nats_auth(file: Option<&PathBuf>) -> Result<Auth, String> {
    let (mut token, mut user, mut pass) = (None, None, None);
    match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read NATS credentials file {}: {e}", path.display()))?;
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
                let slot = match line.split_once('=') {
                    Some(("token", v)) => (&mut token, v),
                    Some(("user", v)) => (&mut user, v),
                    Some(("password", v)) => (&mut pass, v),
                    _ => return Err(format!("{}: expected token=…, or user=… and password=… lines", path.display())),
                };
                *slot.0 = Some(slot.1.to_owned());
            }
        }
        None => {
            let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
            (token, user, pass) = (var(TOKEN_ENV), var(USER_ENV), var(PASSWORD_ENV));
        }
    }
    match (token, user, pass) {
        (None, None, None) => Ok(Auth::None),
        (Some(t), None, None) => Ok(Auth::Token(t)),
        (None, Some(user), Some(pass)) => Ok(Auth::User { user, pass }),
        _ => Err(format!(
            "NATS credentials: give a token, or a user and a password ({} or {TOKEN_ENV} / {USER_ENV} and {PASSWORD_ENV})",
            file.map_or("--bus-credentials FILE".into(), |f| f.display().to_string())
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_urls() {
        assert_eq!(parse_bus("nats://10.0.0.5:4222, nats://b,c:5000").unwrap(), ["10.0.0.5:4222", "b:4222", "c:5000"]);
        assert_eq!(parse_bus("nats://[::1]").unwrap(), ["[::1]:4222"]);
        assert!(parse_bus("tls://a:4222").unwrap_err().contains("TLS is not supported yet"));
        assert!(parse_bus("nats://u:p@a:4222").unwrap_err().contains("--bus-credentials"));
        assert!(parse_bus(",").is_err());
    }

    #[test]
    fn credentials_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("creds");
        let load = |text: &str| {
            std::fs::write(&f, text).unwrap();
            load_nats_auth(Some(&f))
        };
        assert_eq!(load("# the bus\ntoken=s3=cret\n"), Ok(Auth::Token("s3=cret".into())));
        assert_eq!(load("user=u\npassword=p w\n"), Ok(Auth::User { user: "u".into(), pass: "p w".into() }));
        assert!(load("user=u\n").is_err());
        assert!(load("token=t\nuser=u\npassword=p\n").is_err());
        assert!(load("tok\n").is_err());
    }
}
