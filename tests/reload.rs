//! Reload without disconnects: live connections move to the new workers with
//! their subscriptions, partial input and unsent output.

use std::time::Duration;

use crate::support::*;

#[test]
fn reload_under_load_loses_and_disconnects_nothing() {
    let c = Cluster::start(2, 2);
    let mut subs: Vec<Client> = (0..10).map(|_| c.subscriber.connect()).collect();
    for s in &mut subs {
        s.subscribe(&["topic1"]);
    }
    // Half a command typed before the reload, finished after it.
    let mut typing = c.subscriber.connect();
    typing.send_bytes(b"pi");
    let mut publisher = c.source.connect();
    let old_subscribers = c.subscriber.worker_pids();
    let old_sources = c.source.worker_pids();

    const N: usize = 6000;
    let mut writer = publisher.stream.try_clone().unwrap();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        for chunk in 0..N / 100 {
            let mut batch = String::new();
            for i in chunk * 100..(chunk + 1) * 100 {
                batch.push_str(&format!("publish m{i}\n"));
            }
            writer.write_all(batch.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(5)); // pacing, about 20k msgs/s
        }
    });
    for server in [&c.subscriber, &c.source] {
        let out = server.cmd("reload", &[]);
        assert!(out.status.success(), "reload: {}{}", String::from_utf8_lossy(&out.stderr), server.log());
    }
    feeder.join().unwrap();

    for (n, s) in subs.iter_mut().enumerate() {
        for i in 0..N {
            let line = s.try_line().unwrap_or_else(|| panic!("subscriber {n} lost its connection or message m{i}"));
            assert_eq!(line, format!("Received [topic1]: m{i}"), "subscriber {n}");
        }
    }
    publisher.barrier();
    typing.send_bytes(b"ng\n");
    typing.expect("PONG");

    let new_subscribers = c.subscriber.worker_pids();
    let new_sources = c.source.worker_pids();
    assert!(new_subscribers.iter().all(|p| !old_subscribers.contains(p)));
    assert!(new_sources.iter().all(|p| !old_sources.contains(p)));
    let conns: serde_json::Value =
        serde_json::from_slice(&c.subscriber.cmd("connections", &["--json"]).stdout).unwrap();
    assert_eq!(conns.as_array().unwrap().len(), 11, "every subscriber connection survived");
    c.stop();
}

/// Puts `contents` at `path` the way an install does: a new file renamed over
/// the old one (the running binary cannot be written in place).
fn install(path: &std::path::Path, contents: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn reload_onto_a_broken_build_stops_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let real = std::fs::read(bin("subscriber")).unwrap();
    let exe = dir.path().join("subscriber");
    install(&exe, &real);
    let ch = Server::start("channel-server", dir.path(), &[]);
    let sub =
        Server::start_from(&exe, "subscriber", dir.path(), "127.0.0.1:0", &["--channel", &ch.addr, "--count", "2"]);
    sub.wait_linked();
    let mut client = sub.connect();
    client.subscribe(&["topic1"]);
    let before = sub.worker_pids();

    install(&exe, b"#!/bin/sh\necho 'this build is broken' >&2\nexit 3\n");
    let out = sub.cmd("reload", &[]);
    assert!(!out.status.success(), "a reload onto a broken build must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exited before it was ready"), "reason: {err}");
    assert_eq!(sub.worker_pids(), before, "the old workers keep serving");
    client.barrier();

    install(&exe, &real);
    let out = sub.cmd("reload", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status = sub.status();
    for w in status["workers"].as_array().unwrap() {
        assert!(!before.contains(&(w["pid"].as_i64().unwrap() as i32)));
        assert!(w["version"].as_str().unwrap().starts_with(env!("CARGO_PKG_VERSION")), "{w}");
    }
    client.barrier();
    sub.stop(&[]);
    ch.stop(&[]);
}
