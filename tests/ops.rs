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
