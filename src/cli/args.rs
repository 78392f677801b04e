//! Command-line interface shared by the three servers.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{
    parse_bus, ChannelConfig, Config, FsyncPolicy, Lagging, PubSubConfig, QueueLimits, Role, RoleKind, Spec,
};
use crate::protocol::{frame::MAX_MESSAGE, topic};

#[derive(Debug, Parser)]
#[command(version, propagate_version = true, after_help = SIGNALS)]
pub struct Cli<E: Args> {
    #[command(subcommand)]
    pub command: Command<E>,
}

const SIGNALS: &str = "\
Signals to the master process: TERM or INT stop, QUIT stops gracefully, HUP or USR1 reload,
USR2 reopens the log file (after logrotate) and the control socket. Under systemd (Type=notify, in the foreground) the
master reports ready, reloading and stopping on NOTIFY_SOCKET.
Logging: RUST_LOG=debug (default info). Exit codes: 0 success, 1 failure, 2 usage error.";

#[derive(Debug, Subcommand)]
pub enum Command<E: Args> {
    /// Start the server (in the foreground unless -d is given)
    Start(Start<E>),
    /// Stop the running server; returns once every process has exited
    Stop(Stop),
    /// Stop the running server, then start it with the flags given here
    Restart {
        #[command(flatten)]
        start: Start<E>,
        /// Stop gracefully
        #[arg(short, long)]
        graceful: bool,
    },
    /// Replace the workers one at a time with ones running the binary now on disk
    Reload(Target),
    /// Print one row per worker: pid, memory, connections, topics, messages, queues
    Status(Query),
    /// List every client connection
    Connections(Query),
}

#[derive(Debug, Args)]
pub struct Start<E: Args> {
    /// Address to listen on (port 0: any free port)
    #[arg(long, value_name = "ADDR", default_value = "set per server")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub target: Target,
    /// Log file, written when running as a daemon [default: /var/log/fanout/<name>.log as root,
    /// else $XDG_STATE_HOME/fanout/<name>.log (~/.local/state/fanout)]
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Run as a daemon: return once the server is accepting connections
    #[arg(short = 'd', long)]
    pub daemon: bool,
    /// Most client connections per worker process; past it a client gets an ERR line
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub max_connections: usize,
    /// Serve Prometheus metrics at http://ADDR/metrics (off by default; keep it on
    /// loopback or a private network: it is unauthenticated)
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Read settings from a TOML file (keys: the long flags; see below); flags win
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub role: E,
}

#[derive(Debug, Args)]
pub struct Target {
    /// Pid file of the instance; its control socket is beside it [default: /run/fanout/<name>.pid
    /// as root, else $XDG_RUNTIME_DIR/fanout/<name>.pid, else $TMPDIR/<name>.pid]
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct Stop {
    #[command(flatten)]
    pub target: Target,
    /// Graceful: stop accepting, deliver what is queued, then close
    #[arg(short, long)]
    pub graceful: bool,
    /// Seconds to wait before the remaining processes are killed
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct Query {
    #[command(flatten)]
    pub target: Target,
    /// Print JSON for scripts
    #[arg(long)]
    pub json: bool,
}

/// Flags of the two worker servers.
#[derive(Debug, Args)]
pub struct PubSubArgs {
    /// Number of worker processes
    #[arg(short = 'c', long, value_name = "N", default_value = "set per server")]
    pub count: usize,
    /// Address of the channel server
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:2206")]
    pub channel: SocketAddr,
    /// Use a NATS cluster as the bus instead of the channel server: some of its
    /// servers, comma-separated; the others are learnt from them. Credentials
    /// come from --bus-credentials or the environment, never from here
    #[arg(long, value_name = "nats://HOST:PORT,...")]
    pub bus: Option<String>,
    /// File with the NATS credentials, `token=...` or `user=...` and `password=...`
    /// lines [or env FANOUT_NATS_TOKEN, or FANOUT_NATS_USER and FANOUT_NATS_PASSWORD]
    #[arg(long, value_name = "PATH")]
    pub bus_credentials: Option<PathBuf>,
    /// Default topic of `publish` and `subscribe`
    #[arg(long, value_name = "NAME", default_value = "topic1")]
    pub topic: String,
    /// Longest accepted line in bytes (at most 1 MiB)
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    pub max_line: usize,
    /// Bytes queued for one client before it is disconnected as a slow consumer
    #[arg(long, value_name = "BYTES", default_value_t = 8 << 20)]
    pub max_send_queue: usize,
    /// A subscriber over its send queue: `gap` keeps it, as a position in the
    /// channel server's retained messages that catches up as it reads (one that
    /// falls behind the retention gets one `GAP` line and goes on from the
    /// oldest retained); `disconnect` cuts it off as a slow consumer
    #[arg(long, value_enum, default_value = "gap")]
    pub lagging: Lagging,
    /// Bytes of publishes a worker buffers for the channel server (also while it is
    /// unreachable) before it stops reading from publishers
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    pub max_link_buffer: usize,
    /// File holding the channel server's shared secret [or env FANOUT_CHANNEL_SECRET]
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
}

/// Flags of the channel server.
#[derive(Debug, Args)]
pub struct ChannelArgs {
    /// Bytes queued for one worker before the channel server stops reading
    /// from publishers until it catches up
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    pub max_link_buffer: usize,
    /// File holding the shared secret workers must present [or env FANOUT_CHANNEL_SECRET];
    /// required when listening on a non-loopback address
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// Most topics subscribed at the channel server (each costs about 200
    /// bytes): a SUB past it is refused, and the client that asked gets an ERR
    /// line. Also the most topics kept that nobody subscribes to (about 400
    /// bytes each): past it the least recently published are forgotten with
    /// their retained messages (counted in `status`; a resume gets a GAP)
    #[arg(long, value_name = "N", default_value_t = 1 << 20)]
    pub max_topics: usize,
    /// Most topics one worker may subscribe to; a SUB past it is refused the same way
    #[arg(long, value_name = "N", default_value_t = 1 << 18)]
    pub max_topics_per_worker: usize,
    /// Keep the retained messages in an append-only log in DIR, so that a
    /// restart (or a crash) loses nothing confirmed; without it they are in
    /// memory only and a restart forgets them
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// With --data-dir: `always` syncs every event-loop turn's writes before
    /// confirming or forwarding them (a power cut loses nothing confirmed);
    /// `interval` syncs every --fsync-interval-ms on a thread of its own (a
    /// power cut loses at most that much plus one sync's duration; a crash
    /// of the server alone loses nothing); `never` leaves
    /// syncing to the OS
    #[arg(long, value_enum, default_value = "interval")]
    pub fsync: FsyncArg,
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub fsync_interval_ms: u64,
    /// Messages retained per topic (for resume, history and subscribers that fall behind)
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub retain_messages: u64,
    /// Payload bytes retained per topic
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    pub retain_bytes: u64,
    /// Drop messages older than this many seconds (their time is kept to the
    /// second, rounded up: never dropped early) [default: no age bound]
    #[arg(long, value_name = "SECONDS")]
    pub retain_age: Option<u64>,
    /// Bytes of log (all topics, headers included) retained in total; past it
    /// the oldest messages go first, whatever their topic's own bounds
    #[arg(long, value_name = "BYTES", default_value_t = 512 << 20)]
    pub retain_total: u64,
    /// Seconds a consumer may hold a job without acking it; then the job is
    /// taken back and delivered again with the next try number (fractions allowed)
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub ack_timeout: f64,
    /// Deliveries of a job before it moves to <queue>.dead
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub max_tries: u32,
    /// Jobs one queue may hold (ready and unacked); past it `enqueue` gets `ERR queue full`
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub max_queue_jobs: u64,
    /// Bytes of job payloads all queues together may hold; past it `enqueue` gets `ERR queue full`
    #[arg(long, value_name = "BYTES", default_value_t = 128 << 20)]
    pub max_queue_bytes: u64,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FsyncArg {
    Always,
    Interval,
    Never,
}

/// Turns a server's own flags into its part of the configuration.
pub trait RoleArgs: Args {
    fn count(&self) -> Result<usize, String>;
    fn role(&self) -> Result<Role, String>;
}

impl RoleArgs for PubSubArgs {
    fn count(&self) -> Result<usize, String> {
        match self.count {
            0 => Err("--count must be at least 1".into()),
            n if n > 1024 => Err("--count must be at most 1024".into()),
            n => Ok(n),
        }
    }

    fn role(&self) -> Result<Role, String> {
        if self.topic.is_empty() {
            return Err("--topic must not be empty".into());
        }
        topic::check(self.topic.as_bytes()).map_err(|e| format!("--topic: {e}"))?;
        if self.max_line == 0 || self.max_line > MAX_MESSAGE {
            return Err(format!("--max-line must be between 1 and {MAX_MESSAGE}"));
        }
        Ok(Role::PubSub(PubSubConfig {
            channel: self.channel,
            nats: self.bus.as_deref().map(parse_bus).transpose()?.unwrap_or_default(),
            bus_credentials: absolute(self.bus_credentials.as_ref()),
            topic: self.topic.clone(),
            max_line: self.max_line,
            max_send_queue: self.max_send_queue.max(64 * 1024),
            lagging: self.lagging,
            max_link_buffer: self.max_link_buffer.max(MAX_MESSAGE * 2),
            secret_file: absolute(self.secret_file.as_ref()),
        }))
    }
}

impl RoleArgs for ChannelArgs {
    fn count(&self) -> Result<usize, String> {
        // Topic state lives in one process.
        Ok(1)
    }

    fn role(&self) -> Result<Role, String> {
        if self.retain_messages == 0 {
            return Err("--retain-messages must be at least 1".into());
        }
        if !(self.ack_timeout > 0.0 && self.ack_timeout <= 86_400.0) {
            return Err("--ack-timeout must be more than 0 and at most 86400 seconds".into());
        }
        if self.max_tries == 0 {
            return Err("--max-tries must be at least 1".into());
        }
        Ok(Role::Channel(ChannelConfig {
            max_link_buffer: self.max_link_buffer.max(MAX_MESSAGE * 2),
            secret_file: absolute(self.secret_file.as_ref()),
            max_topics: self.max_topics,
            max_topics_per_worker: self.max_topics_per_worker,
            data_dir: absolute(self.data_dir.as_ref()),
            fsync: match self.fsync {
                FsyncArg::Always => FsyncPolicy::Always,
                FsyncArg::Interval => FsyncPolicy::Interval,
                FsyncArg::Never => FsyncPolicy::Never,
            },
            fsync_interval_ms: self.fsync_interval_ms.max(1),
            retain_messages: self.retain_messages,
            retain_bytes: self.retain_bytes,
            retain_age_s: self.retain_age.filter(|s| *s > 0),
            retain_total: self.retain_total,
            queues: QueueLimits {
                max_jobs: self.max_queue_jobs,
                max_bytes: self.max_queue_bytes,
                ack_timeout_ms: (self.ack_timeout * 1000.0).ceil() as u64,
                max_tries: self.max_tries,
            },
        }))
    }
}

/// The clap command of one binary, with its own name, text and defaults.
pub fn command<E: Args>(spec: &Spec) -> clap::Command {
    let ip = match spec.role {
        RoleKind::Channel => "127.0.0.1",
        RoleKind::PubSub => "0.0.0.0",
    };
    let listen = format!("{ip}:{}", spec.port);
    let count = spec.count.to_string();
    let example = super::config_file::example(spec);
    let defaults = |c: clap::Command| {
        let c = c.mut_arg("listen", |a| a.default_value(listen.clone())).after_help(example.clone());
        match spec.role {
            RoleKind::PubSub => c.mut_arg("count", |a| a.default_value(count.clone())),
            RoleKind::Channel => c,
        }
    };
    <Cli<E> as clap::CommandFactory>::command()
        .name(spec.name)
        .about(spec.about)
        .mut_subcommand("start", defaults)
        .mut_subcommand("restart", defaults)
}

impl Target {
    pub fn pid_file(&self, spec: &Spec) -> PathBuf {
        absolute(self.pid_file.as_ref()).unwrap_or_else(|| runtime_dir().join(format!("{}.pid", spec.name)))
    }
}

impl<E: RoleArgs> Start<E> {
    /// Validates the flags into the configuration handed to the workers.
    pub fn config(&self, spec: &Spec) -> Result<Config, String> {
        Ok(Config {
            name: spec.name.into(),
            title: spec.title.into(),
            listen: self.listen,
            count: self.role.count()?,
            pid_file: self.target.pid_file(spec),
            log_file: absolute(self.log_file.as_ref()).unwrap_or_else(|| log_dir().join(format!("{}.log", spec.name))),
            max_connections: self.max_connections.max(1),
            metrics: self.metrics,
            role: self.role.role()?,
        })
    }
}

/// Where pid files and control sockets go by default: a runtime directory,
/// which tmp cleaners leave alone (they empty $TMPDIR of files not touched for
/// days, a running server's socket included).
fn runtime_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/fanout");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("fanout"),
        None => std::env::temp_dir(),
    }
}

/// Where log files go by default: kept across reboots, unlike the runtime directory.
fn log_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/log/fanout");
    }
    let state = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()).map(PathBuf::from);
    let home = std::env::var_os("HOME").filter(|d| !d.is_empty()).map(|h| PathBuf::from(h).join(".local/state"));
    state.or(home).map(|d| d.join("fanout")).unwrap_or_else(std::env::temp_dir)
}

/// A daemon changes its directory to `/`, so paths are made absolute first.
fn absolute(p: Option<&PathBuf>) -> Option<PathBuf> {
    p.map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
}
