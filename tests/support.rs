//! Starting servers, talking to them, and always stopping what was started.

use std::cell::Cell;
use std::io::{BufRead, BufReader, Write};
use std::marker::PhantomData;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any single wait in a test may take. Only a failing test waits
/// this long, so it is generous: a shared, busy CI machine can stall a
/// process for seconds.
pub const WAIT: Duration = Duration::from_secs(30);

/// How many tests may run servers at once, whatever `--test-threads` is: each
/// cluster runs several processes that poll, flood and fork, and more of them
/// than cores only make every test slower and its timing less predictable.
const SERVER_SLOTS: usize = 2;

static SLOTS_IN_USE: Mutex<usize> = Mutex::new(0);
static SLOT_FREED: Condvar = Condvar::new();

thread_local! {
    /// Slots held by this thread (a test runs on one thread): only the first
    /// takes one of SERVER_SLOTS, so a test's servers share it.
    static HELD: Cell<usize> = const { Cell::new(0) };
}

/// The right to run servers, held by every `Server` and released when the
/// test's last one is dropped. Take one with `slot()` before starting
/// servers some other way (a script, a foreground process).
pub struct Slot(PhantomData<*const ()>); // !Send: it counts for its thread

pub fn slot() -> Slot {
    if HELD.get() == 0 {
        let mut in_use = SLOTS_IN_USE.lock().unwrap_or_else(|e| e.into_inner());
        while *in_use >= SERVER_SLOTS {
            in_use = SLOT_FREED.wait(in_use).unwrap_or_else(|e| e.into_inner());
        }
        *in_use += 1;
    }
    HELD.set(HELD.get() + 1);
    Slot(PhantomData)
}

impl Drop for Slot {
    fn drop(&mut self) {
        HELD.set(HELD.get() - 1);
        if HELD.get() == 0 {
            *SLOTS_IN_USE.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
            SLOT_FREED.notify_one();
        }
    }
}

pub fn bin(name: &str) -> &'static str {
    match name {
        "channel-server" => env!("CARGO_BIN_EXE_channel-server"),
        "data-source" => env!("CARGO_BIN_EXE_data-source"),
        "subscriber" => env!("CARGO_BIN_EXE_subscriber"),
        _ => panic!("no binary {name}"),
    }
}

/// Runs one CLI command of a server binary and returns its output.
pub fn cli(name: &str, args: &[&str]) -> Output {
    cli_at(Path::new(bin(name)), args)
}

pub fn cli_at(exe: &Path, args: &[&str]) -> Output {
    Command::new(exe).args(args).env("RUST_LOG", "debug").output().expect("run the binary")
}

/// A daemonised server instance. Dropping it kills its whole process group
/// (the master is a session leader and its workers share its group), so a
/// failing test leaves nothing behind.
pub struct Server {
    _slot: Slot,
    exe: PathBuf,
    extra: Vec<String>,
    pub name: &'static str,
    pub pid_file: PathBuf,
    pub log_file: PathBuf,
    pub addr: String,
    pub master: i32,
}

impl Server {
    /// `<name> start -d --listen 127.0.0.1:0 …` in `dir`.
    pub fn start(name: &'static str, dir: &Path, extra: &[&str]) -> Server {
        Self::start_on(name, dir, "127.0.0.1:0", extra)
    }

    pub fn start_on(name: &'static str, dir: &Path, listen: &str, extra: &[&str]) -> Server {
        Self::start_from(Path::new(bin(name)), name, dir, listen, extra)
    }

    /// Starts the binary at `exe` (a copy, say, that a test replaces).
    pub fn start_from(exe: &Path, name: &'static str, dir: &Path, listen: &str, extra: &[&str]) -> Server {
        let _slot = slot();
        let (pid_file, log_file) = (dir.join(format!("{name}.pid")), dir.join(format!("{name}.log")));
        let (addr, master) = launch(exe, name, &pid_file, &log_file, listen, extra);
        let extra = extra.iter().map(|s| s.to_string()).collect();
        Server { _slot, exe: exe.to_owned(), extra, name, pid_file, log_file, addr, master }
    }

    /// Guards a server started some other way (in the foreground, say; take
    /// a `slot()` before starting it).
    pub fn adopt(name: &'static str, master: i32, pid_file: PathBuf) -> Server {
        let (exe, log_file) = (PathBuf::from(bin(name)), pid_file.with_extension("log"));
        Server { _slot: slot(), exe, extra: Vec::new(), name, pid_file, log_file, addr: String::new(), master }
    }

    /// Lets go of a server whose processes are already gone (killed by the
    /// test): dropping it could signal a reused pid.
    pub fn forget(mut self) {
        self.master = 0;
    }

    /// Runs a subcommand against this instance.
    pub fn cmd(&self, sub: &str, extra: &[&str]) -> Output {
        let mut args = vec![sub, "--pid-file", self.pid_file.to_str().unwrap()];
        args.extend(extra);
        cli(self.name, &args)
    }

    pub fn status(&self) -> Value {
        let out = self.cmd("status", &["--json"]);
        assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    pub fn worker_pids(&self) -> Vec<i32> {
        let s = self.status();
        s["workers"].as_array().unwrap().iter().map(|w| w["pid"].as_i64().unwrap() as i32).collect()
    }

    /// Polls `status` until `ok` holds for it (bounded by WAIT).
    pub fn wait_status(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.status();
            if ok(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; last status: {s}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every worker's channel link is up.
    pub fn wait_linked(&self) {
        self.wait_status("channel links up", |s| s["workers"].as_array().unwrap().iter().all(|w| w["link"] == "up"));
    }

    pub fn connect(&self) -> Client {
        Client::connect(&self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// `stop` and check that every process is gone.
    pub fn stop(self, extra: &[&str]) {
        self.stop_here(extra);
    }

    /// Stops the server and starts it again on the same address with the same
    /// flags, running `while_down` in between.
    pub fn restart(&mut self, while_down: impl FnOnce()) {
        self.stop_here(&[]);
        while_down();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        (_, self.master) = launch(&self.exe, self.name, &self.pid_file, &self.log_file, &self.addr, &extra);
    }

    /// SIGKILLs the whole server (master and workers), waits until they are
    /// gone, and starts it again on the same address with the same flags.
    pub fn kill_and_restart(&mut self) {
        let mut pids = self.worker_pids();
        pids.push(self.master);
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.master), nix::sys::signal::SIGKILL);
        let deadline = Instant::now() + WAIT;
        while pids.iter().any(|p| alive(*p)) {
            assert!(Instant::now() < deadline, "{} did not die of SIGKILL", self.name);
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = std::fs::remove_file(&self.pid_file);
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        (_, self.master) = launch(&self.exe, self.name, &self.pid_file, &self.log_file, &self.addr, &extra);
    }

    fn stop_here(&self, extra: &[&str]) {
        let mut pids = self.worker_pids();
        pids.push(self.master);
        let out = self.cmd("stop", extra);
        assert!(out.status.success(), "stop failed: {}", String::from_utf8_lossy(&out.stderr));
        for pid in pids {
            assert!(
                !alive(pid),
                "process {pid} of {} outlived stop: {:?} {:?}",
                self.name,
                std::fs::read_to_string(format!("/proc/{pid}/stat")),
                std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            );
        }
        assert!(!self.pid_file.exists(), "pid file left behind");
    }
}

/// `<exe> start -d --listen <listen> …`; returns the address it listens on
/// and the master's pid.
fn launch(exe: &Path, name: &str, pid_file: &Path, log_file: &Path, listen: &str, extra: &[&str]) -> (String, i32) {
    let mut args = vec!["start", "-d", "--listen", listen];
    args.extend(["--pid-file", pid_file.to_str().unwrap(), "--log-file", log_file.to_str().unwrap()]);
    args.extend(extra);
    let out = cli_at(exe, &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{name} start failed: {stdout}{}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(log_file).unwrap_or_default()
    );
    let addr = stdout.split("listening on ").nth(1).and_then(|s| s.split(';').next()).expect("address").to_owned();
    let master = std::fs::read_to_string(pid_file).unwrap().trim().parse().unwrap();
    (addr, master)
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.master > 0 && alive(self.master) {
            // SIGKILL the group: the master is a session (and group) leader.
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.master), nix::sys::signal::SIGKILL);
        }
    }
}

pub fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0); it counts as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// The three servers wired together.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub channel: Server,
    pub source: Server,
    pub subscriber: Server,
}

impl Cluster {
    pub fn start(sources: usize, subscribers: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let channel = Server::start("channel-server", dir.path(), &[]);
        let ch = channel.addr.clone();
        let (n, m) = (sources.to_string(), subscribers.to_string());
        let source = Server::start("data-source", dir.path(), &["--channel", &ch, "--count", &n]);
        let subscriber = Server::start("subscriber", dir.path(), &["--channel", &ch, "--count", &m]);
        source.wait_linked();
        subscriber.wait_linked();
        Cluster { dir, channel, source, subscriber }
    }

    pub fn stop(self) {
        self.source.stop(&[]);
        self.subscriber.stop(&[]);
        self.channel.stop(&[]);
    }
}

/// What `Client::connect` sends first: telnet's IAC NOP on a line of its own
/// (an empty line once the command is removed, which the server ignores).
pub const CONNECT_NOP: &[u8] = b"\xff\xf1\n";

/// A telnet-like client: writes lines, reads lines, every read bounded.
pub struct Client {
    pub reader: BufReader<TcpStream>,
    pub stream: TcpStream,
}

impl Client {
    /// Connects and reads the welcome line. It speaks first, a telnet NOP
    /// (ignored, as a telnet client's negotiation is), so that the server
    /// knows at once that this is no HTTP client and greets it without
    /// waiting out the silence it allows a browser (`connect_raw` waits).
    pub fn connect(addr: &str) -> Client {
        let mut c = Self::connect_raw(addr);
        c.send_bytes(CONNECT_NOP);
        let welcome = c.line();
        assert!(welcome.starts_with("Welcome to "), "unexpected welcome: {welcome:?}");
        c
    }

    pub fn connect_raw(addr: &str) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Client { reader: BufReader::new(stream.try_clone().unwrap()), stream }
    }

    pub fn send(&mut self, line: &str) {
        self.send_bytes(format!("{line}\r\n").as_bytes());
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// The next line, without its newline. Panics on timeout or EOF.
    pub fn line(&mut self) -> String {
        self.try_line().expect("a line before the timeout")
    }

    pub fn try_line(&mut self) -> Option<String> {
        let mut buf = Vec::new();
        match self.reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                assert_eq!(buf.pop(), Some(b'\n'));
                Some(String::from_utf8_lossy(&buf).into_owned())
            }
        }
    }

    pub fn expect(&mut self, want: &str) {
        let got = self.line();
        assert_eq!(got, want);
    }

    /// Subscribes and waits for the confirmation of each topic.
    pub fn subscribe(&mut self, topics: &[&str]) {
        self.send(&format!("subscribe {}", topics.join(" ")));
        for t in topics {
            self.expect(&format!("OK subscribed {t}"));
        }
    }

    /// A round trip: every line sent before has been handled by the server.
    pub fn barrier(&mut self) {
        self.send("ping");
        self.expect("PONG");
    }

    /// Whether the server has closed the connection (EOF within the timeout).
    pub fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut self.reader, &mut rest).is_ok()
    }
}

// ---- helpers for the robustness tests (added; nothing above depends on them) ----

impl Cluster {
    /// Like `start`, with extra `start` flags for each of the three servers.
    pub fn start_with(
        sources: usize,
        subscribers: usize,
        channel: &[&str],
        source: &[&str],
        subscriber: &[&str],
    ) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let channel = Server::start("channel-server", dir.path(), channel);
        let ch = channel.addr.clone();
        let (n, m) = (sources.to_string(), subscribers.to_string());
        let mut a = vec!["--channel", ch.as_str(), "--count", n.as_str()];
        a.extend(source);
        let source = Server::start("data-source", dir.path(), &a);
        let mut b = vec!["--channel", ch.as_str(), "--count", m.as_str()];
        b.extend(subscriber);
        let subscriber = Server::start("subscriber", dir.path(), &b);
        source.wait_linked();
        subscriber.wait_linked();
        Cluster { dir, channel, source, subscriber }
    }
}

/// Resident memory of a process in kB (VmRSS from /proc; 0 once it is gone).
pub fn rss_kb(pid: i32) -> u64 {
    fanout::master::rss_kb(nix::unistd::Pid::from_raw(pid))
}

impl Server {
    /// The master's pid and every worker's.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids = self.worker_pids();
        pids.push(self.master);
        pids
    }

    /// The pid of the worker serving `client` (from `connections --json`,
    /// matched on the client's local address).
    pub fn worker_of(&self, client: &Client) -> i32 {
        let me = client.stream.local_addr().unwrap().to_string();
        let out = self.cmd("connections", &["--json"]);
        let conns: Value = serde_json::from_slice(&out.stdout).expect("connections JSON");
        let c = conns.as_array().unwrap().iter().find(|c| c["peer"] == me.as_str());
        c.unwrap_or_else(|| panic!("{me} is not a connection of {}: {conns}", self.name))["worker_pid"]
            .as_i64()
            .unwrap() as i32
    }

    /// Sums a numeric field of `status` over the workers.
    pub fn total(&self, field: &str) -> u64 {
        let s = self.status();
        s["workers"].as_array().unwrap().iter().map(|w| w[field].as_u64().unwrap_or(0)).sum()
    }

    /// Waits until the log contains `needle` (bounded by WAIT).
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {needle:?} in the log of {}:\n{log}", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Client {
    /// The next line as raw bytes, without its newline; None on EOF, error or timeout.
    pub fn try_line_bytes(&mut self) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        match self.reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                assert_eq!(buf.pop(), Some(b'\n'), "a line cut short by EOF: {:?}", String::from_utf8_lossy(&buf));
                Some(buf)
            }
        }
    }
}
