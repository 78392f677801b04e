//! Delivery: fan-out across workers, order, topic isolation, unsubscribe.

use std::collections::HashSet;

use crate::support::*;

#[test]
fn fan_out_across_workers_in_publisher_order() {
    let c = Cluster::start(2, 3);
    let mut subs: Vec<Client> = (0..12).map(|_| c.subscriber.connect()).collect();
    for s in &mut subs {
        s.subscribe(&["topic1"]);
    }
    let conns: serde_json::Value =
        serde_json::from_slice(&c.subscriber.cmd("connections", &["--json"]).stdout).unwrap();
    let workers: HashSet<_> = conns.as_array().unwrap().iter().map(|c| c["worker_pid"].clone()).collect();
    eprintln!("12 subscribers spread over {} subscriber worker(s)", workers.len());

    // Two publishers, possibly on different data-source workers, each in order.
    let mut p1 = c.source.connect();
    let mut p2 = c.source.connect();
    const N: usize = 500;
    let mut batch1 = String::new();
    let mut batch2 = String::new();
    for i in 0..N {
        batch1.push_str(&format!("publish a {i}\n"));
        batch2.push_str(&format!("pub topic1 b {i}\n"));
    }
    p1.send_bytes(batch1.as_bytes());
    p2.send_bytes(batch2.as_bytes());
    for s in &mut subs {
        let (mut a, mut b) = (0, 0);
        for _ in 0..2 * N {
            let line = s.line();
            let msg = line.strip_prefix("Received [topic1]: ").unwrap_or_else(|| panic!("bad line {line:?}"));
            let (who, n) = msg.split_once(' ').unwrap();
            let n: usize = n.parse().unwrap();
            let next = if who == "a" { &mut a } else { &mut b };
            assert_eq!(n, *next, "publisher {who} out of order");
            *next += 1;
        }
        assert_eq!((a, b), (N, N));
    }
    c.stop();
}

/// Many topics in rotation: a read of the link holds more topics than are
/// batched at once (`DELIVER_AT`), so batches go out before the read ends;
/// every message still arrives once, each topic's in order.
#[test]
fn many_topics_in_turn_each_arrive_in_order() {
    let c = Cluster::start(1, 1);
    const TOPICS: usize = 100;
    const ROUNDS: usize = 20;
    let names: Vec<String> = (0..TOPICS).map(|t| format!("t{t}")).collect();
    let mut s = c.subscriber.connect();
    s.subscribe(&names.iter().map(String::as_str).collect::<Vec<_>>());
    let mut p = c.source.connect();
    let mut batch = String::new();
    for i in 0..ROUNDS {
        names.iter().for_each(|t| batch.push_str(&format!("pub {t} {i}\n")));
    }
    p.send_bytes(batch.as_bytes());
    let mut next = vec![0; TOPICS];
    for _ in 0..TOPICS * ROUNDS {
        let line = s.line();
        let rest = line.strip_prefix("Received [t").unwrap_or_else(|| panic!("bad line {line:?}"));
        let (t, n) = rest.split_once("]: ").unwrap();
        let (t, n): (usize, usize) = (t.parse().unwrap(), n.parse().unwrap());
        assert_eq!(n, next[t], "topic t{t} out of order");
        next[t] += 1;
    }
    assert!(next.iter().all(|&n| n == ROUNDS));
    c.stop();
}

#[test]
fn topics_are_isolated_and_unsubscribe_stops_delivery() {
    let c = Cluster::start(1, 2);
    let mut a = c.subscriber.connect();
    let mut b = c.subscriber.connect();
    a.subscribe(&["t1", "shared"]);
    b.subscribe(&["t2", "shared"]);
    let mut p = c.source.connect();
    p.send("pub t1 only-a");
    p.send("pub t2 only-b");
    p.send("pub shared both");
    a.expect("Received [t1]: only-a");
    a.expect("Received [shared]: both");
    b.expect("Received [t2]: only-b");
    b.expect("Received [shared]: both");

    a.send("unsubscribe t1");
    a.expect("OK unsubscribed t1");
    a.send("unsub t1");
    assert!(a.line().starts_with("ERR not subscribed"));
    p.send("pub t1 after-unsub");
    p.send("pub shared marker");
    // Same publisher, so `marker` comes after `after-unsub` had it been sent.
    a.expect("Received [shared]: marker");
    b.expect("Received [shared]: marker");

    b.send("unsubscribe");
    let mut got = vec![b.line(), b.line()];
    got.sort();
    assert_eq!(got, ["OK unsubscribed shared", "OK unsubscribed t2"]);
    let s = c.subscriber.status();
    let topics: u64 = s["workers"].as_array().unwrap().iter().map(|w| w["topics"].as_u64().unwrap()).sum();
    assert!(topics >= 1);
    c.stop();
}

#[test]
fn subscription_is_in_effect_when_confirmed() {
    // The OK line comes only after the channel server has the subscription, so
    // a publish made right after it is never missed. Repeat to catch races.
    let c = Cluster::start(2, 2);
    let mut p = c.source.connect();
    for i in 0..30 {
        let mut s = c.subscriber.connect();
        let topic = format!("fresh{i}");
        s.subscribe(&[&topic]);
        p.send(&format!("pub {topic} hi"));
        s.expect(&format!("Received [{topic}]: hi"));
    }
    c.stop();
}
