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
    let conns: serde_json::Value = serde_json::from_slice(&c.subscriber.cmd("connections", &["--json"]).stdout).unwrap();
    assert_eq!(conns.as_array().unwrap().len(), 11, "every subscriber connection survived");
    c.stop();
}
