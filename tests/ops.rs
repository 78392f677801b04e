//! Operations: systemd's readiness notifications, log reopening for
//! logrotate, the Prometheus endpoint and the TOML config file.

use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::*;

/// The next notification datagram, as text.
fn notification(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 1024];
    let n = sock.recv(&mut buf).expect("a notification before the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn monotonic_usec() -> u64 {
    fanout::master::notify::monotonic_usec()
}

/// A foreground server under `Type=notify`: READY=1 once serving,
/// RELOADING=1 (with the time it began) and READY=1 around a reload,
/// STOPPING=1 on SIGTERM.
#[test]
fn systemd_notifications() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let pid_file = dir.path().join("sub.pid");
    let _slot = slot();
    let mut child = Command::new(bin("subscriber"))
        .args(["start", "--listen", "127.0.0.1:0", "--count", "2", "--pid-file", pid_file.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let server = Server::adopt("subscriber", child.id() as i32, pid_file);

    let ready = notification(&sock);
    assert!(ready.starts_with("READY=1\n") && ready.contains("STATUS=serving on 127.0.0.1:"), "{ready}");
    // Ready means every worker serves: status answers for both at once.
    let s = server.status();
    assert!(s["workers"].as_array().unwrap().iter().all(|w| w["state"] == "running"), "{s}");

    let before = monotonic_usec();
    let out = server.cmd("reload", &[]);
    assert!(out.status.success(), "reload failed: {out:?}");
    let after = monotonic_usec();
    let reloading = notification(&sock);
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"))
        .parse()
        .unwrap();
    assert!(reloading.starts_with("RELOADING=1\n"), "{reloading}");
    assert!(before <= usec && usec <= after, "reload began at {usec}, not between {before} and {after}");
    let ready = notification(&sock);
    assert!(ready.starts_with("READY=1\n"), "{ready}");

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let stopping = notification(&sock);
    assert!(stopping.starts_with("STOPPING=1\n"), "{stopping}");
    assert!(child.wait().unwrap().success());
}

/// logrotate's way: rename the log file, then SIGUSR2 to the master, while
/// clients keep connecting (each connection is a debug line of a worker).
/// Every line lands whole in the old file or the new one, none is lost, and
/// once every process has said it reopened, lines go to the new file only.
#[test]
fn log_reopen_on_rotation_loses_no_line() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start("subscriber", dir.path(), &["--count", "2"]);
    let rotated = dir.path().join("subscriber.log.1");
    let addr = server.addr.clone();
    let (stop, done) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let churn = {
        let (stop, done) = (stop.clone(), done.clone());
        std::thread::spawn(move || {
            let mut peers = Vec::new();
            while !stop.load(SeqCst) {
                let mut c = Client::connect(&addr);
                c.barrier(); // the worker has logged this connection
                peers.push(c.stream.local_addr().unwrap().to_string());
                done.fetch_add(1, SeqCst);
            }
            peers
        })
    };
    let wait_until = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + WAIT;
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}:\n{}", server.log());
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    // Rotate under load: connections logged before, during and after.
    wait_until("connections before the rotation", &|| done.load(SeqCst) >= 10);
    std::fs::rename(&server.log_file, &rotated).unwrap();
    kill(Pid::from_raw(server.master), Signal::SIGUSR2).unwrap();
    wait_until("the master and both workers to reopen", &|| server.log().matches("reopened the log file").count() == 3);
    let mark = done.load(SeqCst);
    wait_until("connections after the rotation", &|| done.load(SeqCst) >= mark + 20);
    stop.store(true, SeqCst);
    let peers = churn.join().unwrap();

    let (old, new) = (std::fs::read_to_string(&rotated).unwrap(), server.log());
    for line in old.lines().chain(new.lines()) {
        assert!(line.starts_with("20") && line.contains(" subscriber["), "torn or mixed line: {line:?}");
    }
    for (i, p) in peers.iter().enumerate() {
        let line = format!("{p} connected");
        let (in_old, in_new) = (old.contains(&line), new.contains(&line));
        assert!(in_old != in_new, "{line:?}: in the old file {in_old}, in the new one {in_new}");
        // The connection under way at the mark may have been logged before the reopen.
        assert!(i <= mark || in_new, "{line:?} went to the old file after every process reopened");
    }
    assert!(!old.contains("reopened the log file"));
    server.stop(&[]);
}

/// One HTTP/1.1 exchange; the server closes the connection after its answer.
fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    std::io::Write::write_all(&mut s, format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut s, &mut out).expect("the whole answer, then EOF");
    out
}

/// The value of one sample line `name{labels} value`.
fn sample(page: &str, series: &str) -> f64 {
    let line = page.lines().find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '));
    line.unwrap_or_else(|| panic!("no {series} in:\n{page}"))[series.len() + 1..].parse().unwrap()
}

/// `--metrics` serves the workers' figures in the Prometheus text format.
#[test]
fn metrics_endpoint() {
    let c = Cluster::start_with(2, 1, &[], &["--metrics", "127.0.0.1:0"], &[]);
    let log = c.source.wait_log("serving metrics at http://");
    let addr = log.split("serving metrics at http://").nth(1).unwrap().split('/').next().unwrap().to_owned();
    let mut sub = c.subscriber.connect();
    sub.subscribe(&["topic1"]);
    let mut publisher = c.source.connect();
    const N: usize = 50;
    for i in 0..N {
        publisher.send(&format!("publish m{i}"));
    }
    for i in 0..N {
        sub.expect(&format!("Received [topic1]: m{i}"));
    }

    let page = http_get(&addr, "/metrics");
    let (head, body) = page.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.contains("Connection: close"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    assert!(body.contains("# TYPE fanout_messages_in_total counter\n"), "{body}");
    assert!(body.contains("# HELP fanout_connections "), "{body}");
    let series = |name: &str, worker: &str| format!("{name}{{server=\"data-source\",worker=\"{worker}\"}}");
    assert!(sample(body, &series("fanout_messages_in_total", "all")) >= N as f64);
    let per_worker: f64 = ["0", "1"].iter().map(|w| sample(body, &series("fanout_messages_in_total", w))).sum();
    assert_eq!(per_worker, sample(body, &series("fanout_messages_in_total", "all")));
    assert_eq!(sample(body, &series("fanout_connections", "all")), 1.0);
    assert_eq!(sample(body, &series("fanout_link_up", "0")), 1.0);
    assert_eq!(sample(body, &series("fanout_link_up", "all")), 1.0);
    assert_eq!(sample(body, "fanout_reloads_total{server=\"data-source\"}"), 0.0);

    let out = c.source.cmd("reload", &[]);
    assert!(out.status.success(), "reload failed: {out:?}");
    let body = http_get(&addr, "/metrics");
    assert_eq!(sample(&body, "fanout_reloads_total{server=\"data-source\"}"), 1.0);
    // The connection moved to the new worker with the reload.
    assert_eq!(sample(&body, &series("fanout_connections", "all")), 1.0);

    assert!(http_get(&addr, "/").starts_with("HTTP/1.1 404 "));
    let mut bad = std::net::TcpStream::connect(&addr).unwrap();
    bad.set_read_timeout(Some(WAIT)).unwrap();
    // 8 KiB of headers without their end: refused (exactly that much, so the
    // server has read it all and closes without a reset).
    let head = format!("GET /metrics HTTP/1.1\r\nX: {}", "a".repeat(8192 - 26));
    assert_eq!(head.len(), 8192);
    std::io::Write::write_all(&mut bad, head.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut bad, &mut answer);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    c.stop();
}

/// `--config FILE` gives the settings the command line leaves out; flags win;
/// an unknown key is refused by name.
#[test]
fn config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("subscriber.toml");
    std::fs::write(&file, "# flags by their long names\ncount = 2\ntopic = \"news\"\nmax-line = 1024\n").unwrap();
    let path = file.to_str().unwrap();
    let channel = Server::start("channel-server", dir.path(), &[]);
    let server =
        Server::start("subscriber", dir.path(), &["--config", path, "--count", "1", "--channel", &channel.addr]);
    assert_eq!(server.worker_pids().len(), 1, "--count on the command line wins over the file");
    let mut c = server.connect();
    c.send("subscribe");
    c.expect("OK subscribed news");
    c.send(&format!("pub news {}", "x".repeat(2000)));
    assert!(c.line().starts_with("ERR line too long (max 1024 bytes)"));
    server.stop(&[]);
    channel.stop(&[]);

    std::fs::write(&file, "count = 2\ncolour = \"blue\"\n").unwrap();
    let out = cli("subscriber", &["start", "--config", path]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown key `colour`") && err.contains(path), "{err}");

    let help = String::from_utf8_lossy(&cli("subscriber", &["start", "--help"]).stdout).into_owned();
    assert!(help.contains("--config <FILE>") && help.contains("max-send-queue = "), "{help}");
}
