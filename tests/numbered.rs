//! Numbered messages (issue 10): the same number for a message everywhere,
//! `seq`, `confirm`, `resume` with its `GAP` line, `history`, `info`, the
//! worker link resuming by number across a channel-server crash (with and
//! without a data directory), and reload handing the new client state over.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::support::*;

/// `Received [t#n]: m` → (t, n, m).
fn numbered(line: &str) -> (String, u64, String) {
    let rest = line.strip_prefix("Received [").unwrap_or_else(|| panic!("not a delivery: {line:?}"));
    let (head, message) = rest.split_once("]: ").expect("a delivery");
    let (topic, seq) = head.rsplit_once('#').unwrap_or_else(|| panic!("no number: {line:?}"));
    (topic.into(), seq.parse().unwrap(), message.into())
}

/// `OK published t#n` → n.
fn published(line: &str, topic: &str) -> u64 {
    let n = line.strip_prefix(&format!("OK published {topic}#")).unwrap_or_else(|| panic!("not a confirm: {line:?}"));
    n.parse().unwrap()
}

fn switch_on(c: &mut Client, what: &str) {
    c.send(&format!("{what} on"));
    c.expect(&format!("OK {what} on"));
}

/// Two publishers on a data-source of two workers: every confirm names the
/// number the subscribers (one on each server) see the message under, the
/// numbers of a topic run 1, 2, 3, … without a hole, the same everywhere.
#[test]
fn every_message_has_one_number_everywhere_and_confirms_name_it() {
    let c = Cluster::start(2, 1);
    let mut subs = [c.subscriber.connect(), c.source.connect()];
    for s in &mut subs {
        switch_on(s, "seq");
        s.subscribe(&["t"]);
    }
    let mut pubs = [c.source.connect(), c.source.connect()];
    let mut confirmed = BTreeMap::new();
    for (i, p) in pubs.iter_mut().enumerate() {
        switch_on(p, "confirm");
        for k in 0..100 {
            p.send(&format!("pub t p{i}-{k}"));
        }
    }
    for (i, p) in pubs.iter_mut().enumerate() {
        let mut last = 0;
        for k in 0..100 {
            let n = published(&p.line(), "t");
            assert!(n > last, "confirms come in publish order");
            last = n;
            confirmed.insert(n, format!("p{i}-{k}"));
        }
    }
    assert_eq!(confirmed.keys().copied().collect::<Vec<_>>(), (1..=200).collect::<Vec<_>>());
    for s in &mut subs {
        for n in 1..=200 {
            let (topic, seq, message) = numbered(&s.line());
            assert_eq!((topic.as_str(), seq, &message), ("t", n, &confirmed[&n]));
        }
    }
    // `seq off` goes back to the plain form; another topic numbers from 1.
    subs[0].send("seq off");
    subs[0].expect("OK seq off");
    subs[0].subscribe(&["u"]);
    pubs[0].send("pub t plain");
    pubs[0].send("pub u first");
    assert_eq!(published(&pubs[0].line(), "t"), 201);
    assert_eq!(published(&pubs[0].line(), "u"), 1);
    subs[0].expect("Received [t]: plain");
    subs[0].expect("Received [u]: first");
    c.stop();
}

/// A subscriber that disconnects and resumes from the next number it wants
/// gets what was published meanwhile, then live messages: no gap, no
/// duplicate. `history` and `info` show what is retained.
#[test]
fn resume_after_a_disconnect_gets_what_was_missed_then_live() {
    let c = Cluster::start(1, 1);
    let mut p = c.source.connect();
    switch_on(&mut p, "confirm");
    let mut s = c.subscriber.connect();
    switch_on(&mut s, "seq");
    s.subscribe(&["t"]);
    for k in 1..=10 {
        p.send(&format!("pub t m{k}"));
        assert_eq!(published(&p.line(), "t"), k);
    }
    for k in 1..=10 {
        assert_eq!(numbered(&s.line()).1, k);
    }
    drop(s);
    for k in 11..=25 {
        p.send(&format!("pub t m{k}"));
        assert_eq!(published(&p.line(), "t"), k);
    }
    let mut s = c.subscriber.connect();
    switch_on(&mut s, "seq");
    s.send("resume t 11");
    s.expect("OK subscribed t from 11");
    for k in 11..=25 {
        assert_eq!(numbered(&s.line()), ("t".into(), k, format!("m{k}")));
    }
    p.send("pub t live");
    assert_eq!(published(&p.line(), "t"), 26);
    assert_eq!(numbered(&s.line()), ("t".into(), 26, "live".into()));
    // Without `seq on`, a resume delivers the plain form.
    let mut plain = c.source.connect();
    plain.send("resume t 25");
    plain.expect("OK subscribed t from 25");
    plain.expect("Received [t]: m25");
    plain.expect("Received [t]: live");
    plain.send("resume t 1");
    plain.expect("ERR already subscribed to 't' (unsubscribe first)");

    p.send("history t 3");
    for (k, m) in [(24, "m24"), (25, "m25"), (26, "live")] {
        p.expect(&format!("History [t#{k}]: {m}"));
    }
    p.expect("OK history t 3");
    p.send("info t");
    let bytes: usize = (1..=25).map(|k| format!("m{k}").len()).sum::<usize>() + 4;
    p.expect(&format!("OK topic t first 1 last 26 messages 26 bytes {bytes}"));
    p.send("info nothing-here");
    p.expect("OK topic nothing-here first 1 last 0 messages 0 bytes 0");
    c.stop();
}

/// When the start of a resume is no longer retained, one GAP line says which
/// numbers are gone, then delivery goes on from the oldest retained.
#[test]
fn resume_from_before_the_retention_gets_one_gap_line() {
    let c = Cluster::start_with(1, 1, &["--retain-messages", "5"], &[], &[]);
    let mut p = c.source.connect();
    switch_on(&mut p, "confirm");
    for k in 1..=20 {
        p.send(&format!("pub t m{k}"));
    }
    for k in 1..=20 {
        assert_eq!(published(&p.line(), "t"), k);
    }
    let mut s = c.subscriber.connect();
    switch_on(&mut s, "seq");
    s.send("resume t 3");
    s.expect("OK subscribed t from 3");
    s.expect("GAP [t] 3-15");
    for k in 16..=20 {
        assert_eq!(numbered(&s.line()).1, k);
    }
    p.send("pub t live");
    assert_eq!(published(&p.line(), "t"), 21);
    assert_eq!(numbered(&s.line()).1, 21);
    assert!(c.subscriber.total("gaps") >= 1);
    c.stop();
}

/// A publisher with confirms streams while the channel server (with a data
/// directory, `--fsync always`) is SIGKILLed and started again: every
/// message it saw confirmed is delivered afterwards to a subscriber that
/// resumes from 1, and the subscriber that stayed connected (its worker
/// re-links and resumes by number) gets every number once, in order.
#[test]
fn channel_server_killed_with_a_data_dir_loses_no_confirmed_message() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("log");
    let mut c = Cluster::start_with(1, 1, &["--data-dir", dir.to_str().unwrap(), "--fsync", "always"], &[], &[]);
    let mut stayed = c.subscriber.connect();
    switch_on(&mut stayed, "seq");
    stayed.subscribe(&["t"]);
    let confirmed = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (mut p, confirmed, stop) = (c.source.connect(), confirmed.clone(), stop.clone());
        thread::spawn(move || {
            switch_on(&mut p, "confirm");
            let mut k = 0u64;
            while !stop.load(Ordering::SeqCst) {
                for _ in 0..50 {
                    k += 1;
                    p.send(&format!("pub t m{k}"));
                }
                for j in k - 49..=k {
                    let line = p.line();
                    if let Some(n) = line.strip_prefix("OK published t#") {
                        confirmed.lock().unwrap().insert(n.parse::<u64>().unwrap(), format!("m{j}"));
                    } else {
                        assert!(line.starts_with("ERR publish not confirmed"), "{line}");
                    }
                }
            }
            k
        })
    };
    let wait_confirmed = |n: usize| {
        let deadline = std::time::Instant::now() + WAIT;
        while confirmed.lock().unwrap().len() < n {
            assert!(std::time::Instant::now() < deadline, "confirms stalled");
            thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    wait_confirmed(500);
    c.channel.kill_and_restart();
    let before = confirmed.lock().unwrap().len();
    wait_confirmed(before + 500);
    stop.store(true, Ordering::SeqCst);
    publisher.join().unwrap();
    let confirmed = confirmed.lock().unwrap().clone();
    let last = *confirmed.keys().last().unwrap();

    let mut resumed = c.subscriber.connect();
    switch_on(&mut resumed, "seq");
    resumed.send("resume t 1");
    resumed.expect("OK subscribed t from 1");
    for (who, s) in [("the resuming subscriber", &mut resumed), ("the subscriber that stayed", &mut stayed)] {
        let mut next = 1;
        while next <= last {
            let (_, n, m) = numbered(&s.line());
            assert_eq!(n, next, "{who}: numbers once each, in order");
            if let Some(want) = confirmed.get(&n) {
                assert_eq!(&m, want, "{who}: #{n}");
            }
            next += 1;
        }
    }
    c.stop();
}

/// Without a data directory a restarted channel server has forgotten the
/// messages; the re-linking worker's position moves the topic's numbering on
/// (numbers keep growing for its subscriber, which misses nothing published
/// after the restart), and a client that resumes from a number the server no
/// longer has gets a GAP line: never silence.
#[test]
fn channel_server_restarted_without_its_data_says_gap() {
    let mut c = Cluster::start(1, 1);
    let mut stayed = c.subscriber.connect();
    switch_on(&mut stayed, "seq");
    stayed.subscribe(&["t"]);
    let mut p = c.source.connect();
    switch_on(&mut p, "confirm");
    for k in 1..=30 {
        p.send(&format!("pub t m{k}"));
        assert_eq!(published(&p.line(), "t"), k);
    }
    for k in 1..=30 {
        assert_eq!(numbered(&stayed.line()).1, k);
    }
    c.channel.kill_and_restart();
    c.subscriber.wait_status("the subscriber's link back up", |s| {
        s["workers"][0]["link"] == "up" && c.channel.status()["workers"][0]["topics"] == 1
    });
    c.source.wait_linked();
    p.send("pub t after");
    assert_eq!(published(&p.line(), "t"), 31, "numbering goes on from the re-linked worker's position");
    assert_eq!(numbered(&stayed.line()), ("t".into(), 31, "after".into()));
    let mut resumed = c.subscriber.connect();
    resumed.send("resume t 10");
    resumed.expect("OK subscribed t from 10");
    resumed.expect("GAP [t] 10-30");
    resumed.expect("Received [t]: after");
    c.stop();
}

/// Reload hands the client's `seq` and `confirm` settings and positions over
/// with the connection: numbers and confirms go on as before, and a client
/// that resumed from a number not reached yet gets that number first.
#[test]
fn reload_keeps_seq_confirm_and_positions() {
    let c = Cluster::start(1, 1);
    let mut s = c.subscriber.connect();
    switch_on(&mut s, "seq");
    s.subscribe(&["t"]);
    let mut p = c.source.connect();
    switch_on(&mut p, "confirm");
    p.send("pub t before");
    assert_eq!(published(&p.line(), "t"), 1);
    assert_eq!(numbered(&s.line()).1, 1);
    let mut ahead = c.subscriber.connect();
    switch_on(&mut ahead, "seq");
    ahead.send("resume t 4");
    ahead.expect("OK subscribed t from 4");
    for server in [&c.subscriber, &c.source] {
        let out = server.cmd("reload", &[]);
        assert!(out.status.success(), "reload: {}", String::from_utf8_lossy(&out.stderr));
    }
    c.source.wait_linked();
    c.subscriber.wait_linked();
    for k in 2..=4 {
        p.send(&format!("pub t after{k}"));
    }
    for k in 2..=4 {
        assert_eq!(published(&p.line(), "t"), k);
        assert_eq!(numbered(&s.line()), ("t".into(), k, format!("after{k}")));
    }
    assert_eq!(numbered(&ahead.line()), ("t".into(), 4, "after4".into()));
    c.stop();
}

/// A subscriber that falls behind (it stops reading) becomes a position; when
/// the retention has moved past it, it gets a GAP line naming the numbers
/// gone and goes on from the oldest retained, in order: every number is
/// either delivered or named in a GAP line, once.
#[test]
fn a_subscriber_behind_the_retention_gets_gap_lines() {
    let c = Cluster::start_with(1, 1, &["--retain-messages", "50"], &[], &["--max-send-queue", "65536"]);
    let mut stalled = c.subscriber.connect();
    switch_on(&mut stalled, "seq");
    stalled.subscribe(&["t"]);
    let mut p = c.source.connect();
    switch_on(&mut p, "confirm");
    let pad = "x".repeat(4000);
    const N: u64 = 3000; // 12 MB: more than the socket buffers and the queue hold
    for _ in 0..N {
        p.send(&format!("pub t {pad}"));
    }
    for k in 1..=N {
        assert_eq!(published(&p.line(), "t"), k);
    }
    let (mut next, mut gaps, mut gone) = (1, 0, 0);
    while next <= N {
        let line = stalled.line();
        if let Some(range) = line.strip_prefix("GAP [t] ") {
            let (first, last) = range.split_once('-').unwrap();
            let (first, last): (u64, u64) = (first.parse().unwrap(), last.parse().unwrap());
            assert!(first == next && last >= first && last <= N - 50, "{line}: the numbers gone, from where it was");
            (gaps, gone, next) = (gaps + 1, gone + last - first + 1, last + 1);
            continue;
        }
        assert_eq!(numbered(&line).1, next, "in order");
        next += 1;
    }
    assert!(gaps > 0, "it fell behind the retention");
    eprintln!("numbered: a stalled subscriber missed {gone} of {N} in {gaps} GAP line(s)");
    let s = c.subscriber.status();
    assert_eq!((s["workers"][0]["gaps"].as_u64(), s["workers"][0]["slow_consumers"].as_u64()), (Some(gaps), Some(0)));
    c.stop();
}

/// A client publishing to ever new topic names does not grow the channel
/// server without bound (it did: every topic was remembered for good): past
/// `--max-topics`, the least recently published topics nobody subscribes to
/// are forgotten, counted in `status`, and a client resuming one is told by a
/// GAP line that its messages are gone, never served silence; a subscribed
/// topic keeps its numbers and its subscribers.
#[test]
fn ever_new_topic_names_are_forgotten_past_the_bound_and_resumers_told() {
    let c = Cluster::start_with(1, 1, &["--max-topics", "100"], &[], &[]);
    let mut kept = c.subscriber.connect();
    switch_on(&mut kept, "seq");
    kept.subscribe(&["kept"]);
    let mut p = c.source.connect();
    switch_on(&mut p, "confirm");
    p.send("pub kept first");
    assert_eq!(published(&p.line(), "kept"), 1);
    const N: usize = 1000;
    for k in 0..N {
        p.send(&format!("pub t{k} m"));
    }
    for k in 0..N {
        let line = p.line();
        assert!(line.starts_with(&format!("OK published t{k}#")), "{line}");
    }
    let retained = &c.channel.status()["workers"][0]["retained"];
    let (topics, forgotten) = (retained["topics"].as_u64().unwrap(), retained["forgotten"].as_u64().unwrap());
    assert!(topics <= 101, "at most 100 unsubscribed topics and the subscribed one: {retained}");
    assert_eq!(topics + forgotten, N as u64 + 1, "{retained}");
    let mut late = c.subscriber.connect();
    late.send("resume t0 1");
    late.expect("OK subscribed t0 from 1");
    let gap = late.line();
    assert!(gap.starts_with("GAP [t0] 1-"), "the first topic was forgotten: {gap}");
    p.send("pub kept second");
    assert_eq!(published(&p.line(), "kept"), 2);
    assert_eq!(numbered(&kept.line()), ("kept".into(), 1, "first".into()));
    assert_eq!(numbered(&kept.line()), ("kept".into(), 2, "second".into()));
    c.stop();
}

/// A second channel server on a data directory in use is refused at `start`,
/// with what to do; the first keeps serving.
#[test]
fn a_data_directory_in_use_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("log");
    let first = Server::start("channel-server", dir.path(), &["--data-dir", data.to_str().unwrap()]);
    first.wait_status("the first server serving", |s| s["workers"][0]["state"] == "running");
    // The worker opens the directory as it starts; wait until it holds it.
    let deadline = std::time::Instant::now() + WAIT;
    while !first.log().contains("data directory") {
        assert!(std::time::Instant::now() < deadline, "the store never opened:\n{}", first.log());
        thread::sleep(std::time::Duration::from_millis(10));
    }
    let pid_file = dir.path().join("second.pid");
    let out = cli(
        "channel-server",
        &[
            "start",
            "-d",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is in use by another channel server; stop it or pass another --data-dir"), "{err}");
    assert!(first.status()["workers"][0]["state"] == "running");
    first.stop(&[]);
}
