//! Process management: respawn, reload, stop, channel restart, start errors.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::*;

#[test]
fn killed_worker_is_respawned_and_others_keep_serving() {
    let c = Cluster::start(1, 2);
    let mut survivor = c.subscriber.connect();
    survivor.subscribe(&["topic1"]);
    let conns: serde_json::Value =
        serde_json::from_slice(&c.subscriber.cmd("connections", &["--json"]).stdout).unwrap();
    let survivor_pid = conns[0]["worker_pid"].as_i64().unwrap() as i32;
    let before = c.subscriber.worker_pids();
    let victim = *before.iter().find(|p| **p != survivor_pid).unwrap();
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    let s = c.subscriber.wait_status("a respawned worker", |s| {
        let w = s["workers"].as_array().unwrap();
        w.len() == 2 && w.iter().all(|w| w["pid"] != victim && w["state"] == "running")
    });
    assert!(s["workers"].as_array().unwrap().iter().any(|w| w["restarts"] == 1));
    let mut p = c.source.connect();
    p.send("publish still here");
    survivor.expect("Received [topic1]: still here");
    // New clients are served at once.
    let mut fresh = c.subscriber.connect();
    fresh.barrier();
    c.stop();
}

#[test]
fn reload_replaces_workers_and_refuses_no_connection() {
    let c = Cluster::start(2, 2);
    let before = c.source.worker_pids();
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let addr = c.source.addr.clone();
    let (flag, count) = (stop.clone(), served.clone());
    // A stream of new connections during the reload: every one must be served.
    let prober = std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            let mut cl = Client::connect(&addr);
            cl.barrier();
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    let served_at = |what: &str, n: usize| {
        let deadline = Instant::now() + WAIT;
        while served.load(Ordering::SeqCst) < n {
            assert!(!prober.is_finished(), "the prober failed {what}");
            assert!(Instant::now() < deadline, "no connection served {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    served_at("before the reload", 1);
    let out = c.source.cmd("reload", &[]);
    assert!(out.status.success(), "reload: {}", String::from_utf8_lossy(&out.stderr));
    // A few more by the new workers, then stop.
    served_at("after the reload", served.load(Ordering::SeqCst) + 5);
    stop.store(true, Ordering::Relaxed);
    prober.join().expect("no connection refused or unanswered");
    let after = c.source.worker_pids();
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|p| !before.contains(p)), "old workers {before:?} still there: {after:?}");
    for p in before {
        assert!(!alive(p), "replaced worker {p} still running");
    }
    // The new workers work.
    c.source.wait_linked();
    let mut sub = c.subscriber.connect();
    sub.subscribe(&["topic1"]);
    c.source.connect().send("publish after reload");
    sub.expect("Received [topic1]: after reload");
    c.stop();
}

#[test]
fn channel_server_restart_resubscribes_automatically() {
    let mut c = Cluster::start(1, 1);
    let mut sub = c.subscriber.connect();
    sub.subscribe(&["topic1"]);
    let subscriber = &c.subscriber;
    c.channel.restart(|| {
        subscriber.wait_status("link down", |s| s["workers"][0]["link"] != "up");
    });
    c.subscriber.wait_linked();
    c.source.wait_linked();
    // The worker re-subscribes by itself; nothing is typed by the client. The
    // publisher's worker may reconnect first, so publish until one arrives.
    let mut p = c.source.connect();
    let deadline = Instant::now() + WAIT;
    sub.stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    for i in 0.. {
        p.send(&format!("publish again {i}"));
        if let Some(line) = sub.try_line() {
            assert!(line.starts_with("Received [topic1]: again"), "{line}");
            break;
        }
        assert!(Instant::now() < deadline, "no delivery after the channel server came back");
    }
    c.stop();
}

#[test]
fn publishes_while_channel_is_down_are_delivered_after_it_returns() {
    let mut c = Cluster::start(1, 1);
    // A subscriber on the publisher's own worker: on reconnecting, that worker
    // sends its SUB ahead of the publishes it buffered, so all must arrive.
    let mut sub = c.source.connect();
    sub.subscribe(&["topic1"]);
    let source = &c.source;
    c.channel.restart(|| {
        publish_while_down(source);
        let s = source.status();
        assert!(s["workers"][0]["bytes_queued"].as_u64().unwrap() > 0, "buffered while down: {s}");
    });
    expect_buffered(&mut sub);
    c.stop();
}

/// Waits until the data source's link is down, then publishes 100 messages
/// that its worker can only buffer.
fn publish_while_down(source: &Server) {
    source.wait_status("link down", |s| s["workers"][0]["link"] != "up");
    let mut p = source.connect();
    for i in 0..100 {
        p.send(&format!("publish buffered {i}"));
    }
    p.barrier();
}

fn expect_buffered(sub: &mut Client) {
    for i in 0..100 {
        sub.expect(&format!("Received [topic1]: buffered {i}"));
    }
}

/// The same for a subscriber on another server whose worker reconnects only
/// after the publisher's worker has sent its buffered publishes: it
/// re-subscribes from the number it had reached and fetches them.
#[test]
fn buffered_publishes_reach_a_worker_that_reconnects_later() {
    let mut c = Cluster::start(1, 1);
    let mut sub = c.subscriber.connect();
    sub.subscribe(&["topic1"]);
    let late = Pid::from_raw(c.subscriber.worker_pids()[0]);
    let source = &c.source;
    c.channel.restart(|| {
        publish_while_down(source);
        // Frozen, the subscriber's worker cannot reconnect before the publisher's.
        kill(late, Signal::SIGSTOP).unwrap();
    });
    c.source.wait_linked();
    kill(late, Signal::SIGCONT).unwrap();
    expect_buffered(&mut sub);
    c.stop();
}

#[test]
fn graceful_stop_delivers_and_leaves_nothing() {
    let c = Cluster::start(2, 1);
    let mut sub = c.subscriber.connect();
    sub.subscribe(&["topic1"]);
    c.source.connect().send("publish last words");
    sub.expect("Received [topic1]: last words");
    let Cluster { dir: _dir, channel, source, subscriber } = c;
    let log = subscriber.log_file.clone();
    subscriber.stop(&["-g", "--timeout", "10"]);
    assert!(sub.closed(), "graceful stop closes client connections");
    source.stop(&["-g"]);
    channel.stop(&["-g"]);
    let log = std::fs::read_to_string(log).unwrap();
    assert!(!log.contains("killing them"), "the subscriber server needed its timeout to stop:\n{log}");
}

#[test]
fn second_start_is_refused_and_stop_when_stopped_is_ok() {
    let dir = tempfile::tempdir().unwrap();
    let ch = Server::start("channel-server", dir.path(), &[]);
    let out =
        cli("channel-server", &["start", "-d", "--listen", "127.0.0.1:0", "--pid-file", ch.pid_file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already running"));
    let pid_file = ch.pid_file.clone();
    ch.stop(&[]);
    let out = cli("channel-server", &["stop", "--pid-file", pid_file.to_str().unwrap()]);
    assert!(out.status.success());
    let out = cli("channel-server", &["status", "--pid-file", pid_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn start_errors_are_reported_with_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let pid = dir.path().join("x.pid");
    let out = cli("subscriber", &["start", "-d", "--listen", &addr, "--pid-file", pid.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen"), "{out:?}");
    // The channel port is not opened to the network without a secret.
    let out = cli("channel-server", &["start", "--listen", "0.0.0.0:0", "--pid-file", pid.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without a secret"));
    let out = cli("subscriber", &["start", "--count", "0"]);
    assert!(!out.status.success());
}

#[test]
fn foreground_master_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("fg.pid");
    let _slot = slot();
    let mut child = Command::new(bin("channel-server"))
        .args(["start", "--listen", "127.0.0.1:0", "--pid-file", pid_file.to_str().unwrap()])
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let guard = Server::adopt("channel-server", child.id() as i32, pid_file.clone());
    let deadline = Instant::now() + WAIT;
    while !pid_file.exists() || guard.cmd("status", &[]).status.code() != Some(0) {
        assert!(Instant::now() < deadline, "foreground server did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let workers = guard.worker_pids();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
    for w in workers {
        assert!(!alive(w));
    }
    assert!(!pid_file.exists());
}

#[test]
fn channel_secret_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "nope\n").unwrap();
    let ch = Server::start("channel-server", dir.path(), &["--secret-file", secret.to_str().unwrap()]);
    let good =
        Server::start("subscriber", dir.path(), &["--channel", &ch.addr, "--secret-file", secret.to_str().unwrap()]);
    good.wait_linked();
    let bad = Server::start(
        "data-source",
        dir.path(),
        &["--channel", &ch.addr, "--count", "1", "--secret-file", wrong.to_str().unwrap()],
    );
    let deadline = Instant::now() + WAIT;
    while !ch.log().contains("wrong secret") {
        assert!(Instant::now() < deadline, "the channel server did not refuse the wrong secret");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_ne!(bad.status()["workers"][0]["link"], "up");
    bad.stop(&[]);
    good.stop(&[]);
    ch.stop(&[]);
}

#[test]
fn signals_for_the_master_sent_to_the_whole_group_leave_workers_alone() {
    // Operators signal process groups (`pkill -USR2 data-source`, logrotate
    // scripts, `kill -HUP -<pgid>`): the workers must survive what is meant
    // for their master. Each signal is sent only once the previous one's
    // work is seen done, so this waits on events, never on time.
    let c = Cluster::start(1, 1);
    let before = c.source.worker_pids();
    let group = Pid::from_raw(-c.source.master);
    kill(group, Signal::SIGUSR2).unwrap(); // reopen the log
    c.source.wait_log("reopen");
    assert_eq!(c.source.worker_pids(), before, "USR2 to the group killed workers:\n{}", c.source.log());
    kill(group, Signal::SIGUSR1).unwrap(); // reload: new workers, by the master's doing
    c.source.wait_status("a reload by USR1", |s| {
        let w = s["workers"].as_array().unwrap();
        w.iter().all(|w| !before.contains(&(w["pid"].as_i64().unwrap() as i32)) && w["state"] == "running")
    });
    let mut p = c.source.connect();
    let mut s = c.subscriber.connect();
    s.subscribe(&["topic1"]);
    p.send("publish after group signals");
    s.expect("Received [topic1]: after group signals");
    let status = c.source.status();
    assert!(status["workers"].as_array().unwrap().iter().all(|w| w["restarts"] == 0), "a worker died: {status}");
    c.stop();
}

#[test]
fn status_into_a_closed_pipe_ends_quietly() {
    // `status --json | grep -q up`: grep may go before status has printed.
    // A pipe whose reader is already closed makes that certain.
    use std::os::unix::process::ExitStatusExt;
    let _slot = slot();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start("subscriber", dir.path(), &["--channel", "127.0.0.1:9"]);
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    for query in ["status", "connections"] {
        let out = Command::new(bin("subscriber"))
            .args([query, "--json", "--pid-file", server.pid_file.to_str().unwrap()])
            .stdout(Stdio::from(write.try_clone().unwrap()))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{query} panicked on a closed pipe: {stderr}");
        assert_eq!(out.status.signal(), Some(Signal::SIGPIPE as i32), "{query}: {:?} {stderr}", out.status);
    }
}
