//! Work queues (issue 11): jobs enqueued on either worker server, dispatched
//! by the channel server to one consumer at a time, acknowledged.

use std::collections::BTreeMap;
use std::net::Shutdown;
use std::sync::{Arc, Mutex};
use std::thread;

use crate::support::*;

fn consume(c: &mut Client, queue: &str, prefetch: u32) {
    c.send(&format!("consume {queue} {prefetch}"));
    c.expect(&format!("OK consuming {queue}"));
}

/// `Job [q#id] try n: msg` → (q#id, n, msg).
fn job(line: &str) -> (String, u32, String) {
    let rest = line.strip_prefix("Job [").unwrap_or_else(|| panic!("not a job: {line}"));
    let (id, rest) = rest.split_once("] try ").unwrap();
    let (n, msg) = rest.split_once(": ").unwrap();
    (id.to_owned(), n.parse().unwrap(), msg.to_owned())
}

fn expect_queues(c: &mut Client, lines: &[&str]) {
    c.send("queues");
    for l in lines {
        c.expect(l);
    }
    c.expect(&format!("OK queues {}", lines.len()));
}

#[test]
fn the_original_producer_and_consumer() {
    let c = Cluster::start(1, 1);
    // The job waits for a consumer that comes later.
    let mut producer = c.source.connect();
    producer.send("enqueue data_sync Hello World!");
    producer.expect("OK enqueued data_sync#1");
    let mut consumer = c.subscriber.connect();
    consumer.send("consume data_sync");
    consumer.expect("OK consuming data_sync");
    consumer.expect("Job [data_sync#1] try 1: Hello World!");
    expect_queues(&mut consumer, &["data_sync ready 0 unacked 1 consumers 1"]);
    let q = &c.channel.status()["workers"][0]["queues"][0];
    assert_eq!(
        (&q["name"], &q["ready"], &q["unacked"], &q["consumers"]),
        (&"data_sync".into(), &0.into(), &1.into(), &1.into())
    );
    let out = c.subscriber.cmd("connections", &["--json"]);
    let conns: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let consuming: Vec<_> = conns.as_array().unwrap().iter().filter(|c| c["unacked"] == 1).collect();
    assert_eq!(consuming.len(), 1, "{conns}");
    assert_eq!(consuming[0]["queues"][0], "data_sync");
    consumer.send("ack data_sync#1 data_sync#1 nope#1 data_sync#x");
    consumer.expect("OK acked data_sync#1");
    consumer.expect("ERR job data_sync#1 is not waiting for an acknowledgement");
    consumer.expect("ERR no queue 'nope'");
    let bad = consumer.line();
    assert!(bad.starts_with("ERR 'data_sync#x' is not a job"), "{bad}");
    // Another connection cannot settle this one's jobs.
    producer.send("enqueue data_sync again");
    producer.expect("OK enqueued data_sync#2");
    assert_eq!(job(&consumer.line()), ("data_sync#2".into(), 1, "again".into()));
    producer.send("ack data_sync#2");
    producer.expect("ERR job data_sync#2 was delivered to another connection");
    consumer.send("ack data_sync#2");
    consumer.expect("OK acked data_sync#2");
    c.stop();
}

/// Four consumers, on two workers of each server, share 400 jobs: each job
/// reaches exactly one of them, once, and everything is acknowledged.
#[test]
fn competing_consumers_get_each_job_exactly_once() {
    let c = Cluster::start(2, 2);
    let seen = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let mut handles = Vec::new();
    let mut sockets = Vec::new();
    for i in 0..4 {
        let mut consumer = if i % 2 == 0 { c.subscriber.connect() } else { c.source.connect() };
        consume(&mut consumer, "work", 5);
        sockets.push(consumer.stream.try_clone().unwrap());
        let seen = seen.clone();
        handles.push(thread::spawn(move || {
            while let Some(line) = consumer.try_line() {
                if line.starts_with("OK acked") {
                    continue;
                }
                let (id, attempt, _) = job(&line);
                assert_eq!(attempt, 1, "{line}");
                consumer.send(&format!("ack {id}"));
                *seen.lock().unwrap().entry(id).or_default() += 1;
            }
        }));
    }
    let mut producer = c.source.connect();
    let batch: String = (1..=400).map(|i| format!("enqueue work job {i}\n")).collect();
    producer.send_bytes(batch.as_bytes());
    for i in 1..=400 {
        producer.expect(&format!("OK enqueued work#{i}"));
    }
    let deadline = std::time::Instant::now() + WAIT;
    while seen.lock().unwrap().len() < 400 {
        assert!(std::time::Instant::now() < deadline, "jobs missing: {} of 400", seen.lock().unwrap().len());
        thread::sleep(std::time::Duration::from_millis(10));
    }
    let mut check = c.subscriber.connect();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        // The last acks may still be on their way.
        check.send("queues");
        let line = check.line();
        check.expect("OK queues 1");
        if line == "work ready 0 unacked 0 consumers 4" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{line}");
    }
    for s in &sockets {
        s.shutdown(Shutdown::Both).unwrap();
    }
    for h in handles {
        h.join().unwrap();
    }
    let seen = seen.lock().unwrap();
    assert!(seen.values().all(|n| *n == 1), "every job once");
    c.stop();
}

/// A consumer that closes with jobs unacknowledged: another gets them, with
/// the next try number, in their order.
#[test]
fn a_consumer_that_closes_gives_its_jobs_back_with_the_next_try() {
    let c = Cluster::start(1, 1);
    let mut p = c.source.connect();
    for m in ["a", "b"] {
        p.send(&format!("enqueue q {m}"));
    }
    p.expect("OK enqueued q#1");
    p.expect("OK enqueued q#2");
    let mut first = c.subscriber.connect();
    consume(&mut first, "q", 2);
    assert_eq!(job(&first.line()), ("q#1".into(), 1, "a".into()));
    assert_eq!(job(&first.line()), ("q#2".into(), 1, "b".into()));
    drop(first);
    let mut second = c.source.connect();
    consume(&mut second, "q", 2);
    assert_eq!(job(&second.line()), ("q#1".into(), 2, "a".into()));
    assert_eq!(job(&second.line()), ("q#2".into(), 2, "b".into()));
    second.send("unconsume");
    second.expect("OK unconsumed q");
    expect_queues(&mut second, &["q ready 2 unacked 0 consumers 0"]);
    second.send("unconsume q");
    second.expect("ERR not consuming 'q'");
    second.send("unconsume");
    second.expect("ERR not consuming any queue");
    c.stop();
}

/// A job held past --ack-timeout comes back with the next try; after
/// --max-tries it is in `<queue>.dead`.
#[test]
fn ack_timeout_and_max_tries() {
    let c = Cluster::start_with(1, 1, &["--ack-timeout", "0.2", "--max-tries", "2"], &[], &[]);
    let mut p = c.source.connect();
    p.send("enqueue slow x");
    p.expect("OK enqueued slow#1");
    let mut s = c.subscriber.connect();
    consume(&mut s, "slow", 1);
    assert_eq!(job(&s.line()), ("slow#1".into(), 1, "x".into()));
    // Not acked: taken back, and given to the only consumer again.
    assert_eq!(job(&s.line()), ("slow#1".into(), 2, "x".into()));
    // The second try times out too: dead-lettered.
    let mut dead = c.source.connect();
    consume(&mut dead, "slow.dead", 1);
    assert_eq!(job(&dead.line()), ("slow.dead#1".into(), 1, "x".into()));
    s.send("ack slow#1");
    s.expect("ERR job slow#1 is not waiting for an acknowledgement");
    dead.send("ack slow.dead#1");
    dead.expect("OK acked slow.dead#1");
    c.stop();
}

#[test]
fn prefetch_nack_and_reject() {
    let c = Cluster::start(1, 1);
    let mut s = c.subscriber.connect();
    for m in ["a", "b", "c"] {
        s.send(&format!("enqueue q {m}"));
    }
    for i in 1..=3 {
        s.expect(&format!("OK enqueued q#{i}"));
    }
    consume(&mut s, "q", 2);
    assert_eq!(job(&s.line()).0, "q#1");
    assert_eq!(job(&s.line()).0, "q#2");
    // Two unacked: the third waits (the answer comes after any job sent before it).
    expect_queues(&mut s, &["q ready 1 unacked 2 consumers 1"]);
    s.send("nack q#1");
    s.expect("OK nacked q#1");
    assert_eq!(job(&s.line()), ("q#1".into(), 2, "a".into()), "back at the front");
    s.send("reject q#2");
    s.expect("OK rejected q#2");
    assert_eq!(job(&s.line()), ("q#3".into(), 1, "c".into()));
    expect_queues(&mut s, &["q ready 0 unacked 2 consumers 1", "q.dead ready 1 unacked 0 consumers 0"]);
    s.send("ack q#1 q#3");
    s.expect("OK acked q#1");
    s.expect("OK acked q#3");
    consume(&mut s, "q.dead", 1);
    assert_eq!(job(&s.line()), ("q.dead#1".into(), 1, "b".into()));
    c.stop();
}

/// SIGKILL of the channel server with `--data-dir --fsync always`: every job
/// confirmed is kept, every ack answered stays done.
#[test]
fn channel_server_killed_with_a_data_dir_keeps_confirmed_jobs_and_answered_acks() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("log");
    let mut c = Cluster::start_with(1, 1, &["--data-dir", dir.to_str().unwrap(), "--fsync", "always"], &[], &[]);
    let mut p = c.source.connect();
    let batch: String = (1..=50).map(|i| format!("enqueue durable job {i}\n")).collect();
    p.send_bytes(batch.as_bytes());
    for i in 1..=50 {
        p.expect(&format!("OK enqueued durable#{i}"));
    }
    let mut first = c.subscriber.connect();
    consume(&mut first, "durable", 20);
    for i in 1..=20 {
        assert_eq!(job(&first.line()).0, format!("durable#{i}"));
        first.send(&format!("ack durable#{i}"));
    }
    // The acks make room: more jobs come between the answers.
    let mut acked = 0;
    while acked < 20 {
        let line = first.line();
        match line.strip_prefix("OK acked durable#") {
            Some(n) => assert_eq!(n.parse::<u32>().unwrap(), acked + 1, "answers in order"),
            None => assert!(line.starts_with("Job [durable#"), "{line}"),
        }
        acked += u32::from(line.starts_with("OK acked"));
    }
    first.send("unconsume");
    while first.line().starts_with("Job [") {}
    c.channel.kill_and_restart();
    c.subscriber.wait_linked();
    let mut second = c.subscriber.connect();
    consume(&mut second, "durable", 100);
    for i in 21..=50 {
        let (id, _, message) = job(&second.line());
        assert_eq!((id, message), (format!("durable#{i}"), format!("job {i}")));
    }
    expect_queues(&mut second, &["durable ready 0 unacked 30 consumers 1"]);
    p.send("enqueue durable next");
    p.expect("OK enqueued durable#51");
    c.stop();
}

/// A reload of the worker server hands the consumer over with its jobs: no
/// redelivery, and its acks are answered.
#[test]
fn reload_keeps_a_consumers_jobs() {
    let c = Cluster::start(1, 1);
    let mut s = c.subscriber.connect();
    s.send("enqueue r a");
    s.send("enqueue r b");
    s.expect("OK enqueued r#1");
    s.expect("OK enqueued r#2");
    consume(&mut s, "r", 2);
    assert_eq!(job(&s.line()).0, "r#1");
    assert_eq!(job(&s.line()).0, "r#2");
    let out = c.subscriber.cmd("reload", &[]);
    assert!(out.status.success(), "reload: {}", String::from_utf8_lossy(&out.stderr));
    c.subscriber.wait_linked();
    s.send("ack r#1 r#2");
    s.expect("OK acked r#1");
    s.expect("OK acked r#2");
    s.send("enqueue r c");
    s.expect("OK enqueued r#3");
    assert_eq!(job(&s.line()), ("r#3".into(), 1, "c".into()), "still a consumer");
    expect_queues(&mut s, &["r ready 0 unacked 1 consumers 1"]);
    c.stop();
}

/// Runs an example program to its end (bounded by WAIT); its standard output.
fn run_example(program: &str, args: &[&str]) -> String {
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e} (.ci/run installs it)"));
    let deadline = std::time::Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{program} {args:?} did not finish");
        }
        thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{program} {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

/// The original producer and consumer, rewritten in PHP and in Python
/// (examples/queue): each pair moves one job, and the consumer acks it.
#[test]
fn the_php_and_python_examples() {
    let c = Cluster::start(1, 1);
    let example = |name: &str| format!("{}/examples/queue/{name}", env!("CARGO_MANIFEST_DIR"));
    for (id, lang, ext) in [(1, "php", "php"), (2, "python3", "py")] {
        let sent = run_example(lang, &[&example(&format!("producer.{ext}")), &c.source.addr]);
        assert_eq!(sent, format!(" [x] Sent 'Hello World!': OK enqueued data_sync#{id}\n"));
        let got = run_example(lang, &[&example(&format!("consumer.{ext}")), &c.subscriber.addr, "1"]);
        assert_eq!(got, " [*] Waiting for messages: OK consuming data_sync\n [x] Received Hello World!\n");
    }
    let mut check = c.source.connect();
    expect_queues(&mut check, &[]);
    c.stop();
}

/// Past --max-queue-jobs an enqueue is refused with one ERR line, never
/// dropped in silence; the connection goes on.
#[test]
fn a_full_queue_refuses_enqueues() {
    let c = Cluster::start_with(1, 1, &["--max-queue-jobs", "2"], &[], &[]);
    let mut p = c.source.connect();
    for m in ["a", "b", "c"] {
        p.send(&format!("enqueue full {m}"));
    }
    p.expect("OK enqueued full#1");
    p.expect("OK enqueued full#2");
    let refused = p.line();
    assert!(refused.starts_with("ERR queue full: 'full' holds 2 jobs"), "{refused}");
    p.send("enqueue other d");
    p.expect("OK enqueued other#1");
    expect_queues(&mut p, &["full ready 2 unacked 0 consumers 0", "other ready 1 unacked 0 consumers 0"]);
    c.stop();
}
