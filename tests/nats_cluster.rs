//! A real three-node NATS cluster on ephemeral loopback ports, for the tests of
//! worker servers on a NATS bus, and a small blocking NATS client to look at
//! it from outside. `nats-server` comes from Debian (`.ci/run` installs it).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fanout::protocol::nats::{self, Op};
use serde_json::Value;

use crate::support::{slot, Slot, WAIT};

/// One `nats-server` process, in a process group of its own.
pub struct Node {
    child: Child,
    pub pid: i32,
    /// `nats://127.0.0.1:PORT`, for clients.
    pub url: String,
    /// `127.0.0.1:PORT` of the HTTP monitoring endpoint.
    monitor: String,
    /// `nats://127.0.0.1:PORT`, for routes from other nodes.
    route: String,
    log: std::path::PathBuf,
}

impl Node {
    /// Starts a node on ephemeral ports, routed to `seed` if given, and waits
    /// for it to write its ports file (it does once every listener is up).
    fn start(dir: &Path, name: &str, seed: Option<&str>, config: Option<&Path>) -> Node {
        let ports_dir = dir.join(name);
        std::fs::create_dir_all(&ports_dir).unwrap();
        let log = dir.join(format!("{name}.log"));
        // Debian installs it in /usr/sbin, which is not on every user's PATH.
        let exe = ["/usr/sbin/nats-server", "/usr/bin/nats-server"].into_iter().find(|p| Path::new(p).exists());
        let mut cmd = Command::new(exe.unwrap_or("nats-server"));
        cmd.args(["-a", "127.0.0.1", "-p", "-1", "-m", "-1", "-n", name])
            .args(["--cluster_name", "fanout-test", "--cluster", "nats://127.0.0.1:-1"])
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // A group of its own, which drop kills.
            .process_group(0);
        if let Some(seed) = seed {
            cmd.args(["--routes", seed]);
        }
        if let Some(config) = config {
            cmd.arg("-c").arg(config);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start nats-server ({e}): run .ci/run, which installs it, or apt-get install nats-server")
        });
        let pid = child.id() as i32;
        let mut node = Node { child, pid, url: String::new(), monitor: String::new(), route: String::new(), log };
        let ports: Value = node.wait_for("its ports file", |_| {
            let is_ports = |f: &std::fs::DirEntry| f.path().extension().is_some_and(|e| e == "ports");
            let file = std::fs::read_dir(&ports_dir).ok()?.flatten().find(is_ports)?;
            // A read that races the write does not parse and is retried.
            serde_json::from_slice(&std::fs::read(file.path()).ok()?).ok()
        });
        let first = |key: &str| ports[key][0].as_str().unwrap_or_else(|| panic!("no {key} port in {ports}")).to_owned();
        node.url = first("nats");
        node.monitor = first("monitoring").trim_start_matches("http://").to_owned();
        node.route = first("cluster");
        node
    }

    /// Polls `probe` (given the monitoring address) until it answers, bounded
    /// by WAIT; fails at once if the server has exited.
    fn wait_for<T>(&mut self, what: &str, mut probe: impl FnMut(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = probe(&self.monitor) {
                return v;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nats-server exited ({status}) before {what}:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what} of nats-server:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a crashed machine looks to its peers' sockets.
    pub fn kill(&mut self) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.pid), nix::sys::signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A JSON page of a node's monitoring endpoint (`/routez?subs=1`, say).
fn monitor(addr: &str, path: &str) -> Option<Value> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    let body = resp.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    serde_json::from_slice(&resp[body..]).ok()
}

/// Three nodes routed to each other (B and C solicit A; gossip completes the mesh).
pub struct NatsCluster {
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
    /// Counts against the tests' cap on running servers; dropped after the nodes.
    _slot: Slot,
}

impl NatsCluster {
    /// Starts the cluster and returns once every node has routes to both others.
    pub fn start() -> NatsCluster {
        Self::start_with("")
    }

    /// With a configuration file of this text for every node (limits,
    /// authorization; the command line's ports and routes take precedence).
    pub fn start_with(config: &str) -> NatsCluster {
        let _slot = slot();
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("nats.conf");
        std::fs::write(&conf, config).unwrap();
        let conf = Some(conf.as_path()).filter(|_| !config.is_empty());
        let a = Node::start(dir.path(), "a", None, conf);
        let seed = a.route.clone();
        let mut nodes = vec![a];
        for name in ["b", "c"] {
            nodes.push(Node::start(dir.path(), name, Some(&seed), conf));
        }
        for node in &mut nodes {
            node.wait_for("routes to both other nodes", |m| (monitor(m, "/routez")?["num_routes"] == 2).then_some(()));
        }
        NatsCluster { nodes, _dir: dir, _slot }
    }

    /// A JSON page of node `at`'s monitoring endpoint.
    pub fn monitor(&self, at: usize, path: &str) -> Value {
        monitor(&self.nodes[at].monitor, path).unwrap_or_else(|| panic!("{path} of node {at}"))
    }

    /// Waits until node `at` knows, through its routes, that `routes` other
    /// nodes have subscribers on `subject`. Interest crosses a cluster
    /// asynchronously: a subscription in effect on one node may not be known
    /// on another yet.
    pub fn wait_interest(&mut self, at: usize, subject: &str, routes: usize) {
        let what = format!("interest in {subject} from {routes} route(s)");
        self.nodes[at].wait_for(&what, |m| {
            let routez = monitor(m, "/routez?subs=1")?;
            let carries =
                |r: &&Value| r["subscriptions_list"].as_array().is_some_and(|l| l.iter().any(|s| s == subject));
            (routez["routes"].as_array()?.iter().filter(carries).count() >= routes).then_some(())
        });
    }
}

/// A blocking NATS client for tests: what a program connected to the cluster
/// directly sees. Speaks through the crate's own encoders and parser.
pub struct NatsClient {
    stream: TcpStream,
    buf: Vec<u8>,
    pub info: nats::Info,
}

impl NatsClient {
    pub fn connect(url: &str, auth: &nats::Auth) -> NatsClient {
        let stream = TcpStream::connect(url.trim_start_matches("nats://")).expect("connect to nats-server");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut c = NatsClient { stream, buf: Vec::new(), info: serde_json::from_str("{}").unwrap() };
        match c.next() {
            Some(Owned::Info(info)) => c.info = info,
            other => panic!("expected INFO, got {other:?}"),
        }
        let mut out = Vec::new();
        nats::connect(&mut out, "test", auth);
        c.send(&out);
        c
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to nats-server");
    }

    /// Subscribes and waits for the server to have the subscription.
    pub fn subscribe(&mut self, subject: &[u8], sid: u64) {
        let mut out = Vec::new();
        nats::sub(&mut out, subject, sid);
        out.extend_from_slice(nats::PING);
        self.send(&out);
        match self.next() {
            Some(Owned::Pong) => {}
            other => panic!("expected PONG, got {other:?}"),
        }
    }

    pub fn publish(&mut self, subject: &[u8], payload: &[u8]) {
        let mut out = Vec::new();
        nats::publish(&mut out, subject, payload);
        self.send(&out);
    }

    /// The next operation other than PING (answered); None on EOF or timeout.
    pub fn next(&mut self) -> Option<Owned> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((op, n)) = nats::parse(&self.buf, nats::DEFAULT_MAX_PAYLOAD).expect("a well-formed stream") {
                let op = match op {
                    Op::Info(i) => Owned::Info(*i),
                    Op::Msg { subject, payload, .. } => Owned::Msg(subject.to_vec(), payload.to_vec()),
                    Op::Ping => Owned::Ping,
                    Op::Pong => Owned::Pong,
                    Op::Ok => Owned::Ok,
                    Op::Err(e) => Owned::Err(String::from_utf8_lossy(e).into_owned()),
                };
                self.buf.drain(..n);
                if op == Owned::Ping {
                    self.send(nats::PONG);
                    continue;
                }
                return Some(op);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// An operation from the server, owned.
#[derive(Debug, PartialEq, Eq)]
pub enum Owned {
    Info(nats::Info),
    Msg(Vec<u8>, Vec<u8>),
    Ping,
    Pong,
    Ok,
    Err(String),
}
