//! Worker servers on a NATS cluster as their bus (`--bus`): real nats-server
//! processes, three of them routed to each other.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fanout::protocol::nats::Auth;

use crate::nats_cluster::{NatsClient, NatsCluster, Owned};
use crate::support::*;

/// The harness itself: a message published on node A reaches a subscriber on
/// node C, and our parser reads what a real server sends.
#[test]
fn nats_cluster_routes_between_nodes() {
    let mut cluster = NatsCluster::start();
    let mut sub = NatsClient::connect(&cluster.nodes[2].url, &Auth::None);
    assert!(sub.info.connect_urls.len() >= 3, "every node advertised: {:?}", sub.info.connect_urls);
    sub.subscribe(b"fanout.t", 1);
    cluster.wait_interest(0, "fanout.t", 1);
    let mut publisher = NatsClient::connect(&cluster.nodes[0].url, &Auth::None);
    publisher.publish(b"fanout.t", b"across");
    assert_eq!(sub.next(), Some(Owned::Msg(b"fanout.t".to_vec(), b"across".to_vec())));
}

/// A worker server on node `node` of the cluster (the others after it, for failover).
fn on_node(name: &'static str, dir: &std::path::Path, cluster: &NatsCluster, node: usize, extra: &[&str]) -> Server {
    let n = cluster.nodes.len();
    let urls: Vec<&str> = (0..n).map(|i| cluster.nodes[(node + i) % n].url.as_str()).collect();
    let urls = urls.join(",");
    let mut args = vec!["--bus", urls.as_str()];
    args.extend(extra);
    let server = Server::start(name, dir, &args);
    server.wait_linked();
    server
}

/// The `host:port` a worker's status says it is on.
fn bus_of(worker: &serde_json::Value) -> String {
    worker["bus"].as_str().unwrap().trim_start_matches("nats ").to_owned()
}

#[test]
fn nats_bus_fans_out_across_nodes_in_order_per_topic() {
    let mut cluster = NatsCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let source = on_node("data-source", dir.path(), &cluster, 0, &["--count", "1"]);
    let sub_b = on_node("subscriber", &dir.path().join("b").tap_mkdir(), &cluster, 1, &["--count", "1"]);
    let sub_c = on_node("subscriber", &dir.path().join("c").tap_mkdir(), &cluster, 2, &["--count", "1"]);
    assert_eq!(bus_of(&source.status()["workers"][0]), cluster.nodes[0].url.trim_start_matches("nats://"));

    // Two clients of one worker on B want "t": the worker subscribes once.
    let (mut b1, mut b2, mut c1) = (sub_b.connect(), sub_b.connect(), sub_c.connect());
    b1.subscribe(&["t", "a.b"]);
    b2.subscribe(&["t"]);
    c1.subscribe(&["t", "a*"]);
    let connz = cluster.monitor(1, "/connz?subs=1");
    let ours = connz["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str().unwrap().starts_with("subscriber["));
    let mut subs: Vec<String> = serde_json::from_value(ours.unwrap()["subscriptions_list"].clone()).unwrap();
    subs.sort();
    assert_eq!(subs, ["fanout.a%2Eb", "fanout.t"], "one SUB per topic per worker");
    cluster.wait_interest(0, "fanout.t", 2);
    cluster.wait_interest(0, "fanout.a%2Eb", 1);
    cluster.wait_interest(0, "fanout.a%2A", 1);

    let mut publisher = source.connect();
    let mut batch = String::new();
    for i in 0..300 {
        batch.push_str(&format!("pub t m{i}\npub a.b x{i}\n"));
        if i % 100 == 0 {
            batch.push_str(&format!("pub a* y{i}\n"));
        }
    }
    publisher.send(&batch);
    // Order holds per topic (a worker delivers what one read brought topic by topic).
    let per_topic = |c: &mut Client, lines: usize| {
        let mut got = std::collections::BTreeMap::<String, Vec<String>>::new();
        for _ in 0..lines {
            let line = c.line();
            let topic = line.strip_prefix("Received [").and_then(|l| l.split_once("]: ")).expect(&line).0.to_owned();
            got.entry(topic).or_default().push(line);
        }
        got
    };
    let want = |topic: &str, prefix: &str, every: usize| -> Vec<String> {
        (0..300).step_by(every).map(|i| format!("Received [{topic}]: {prefix}{i}")).collect()
    };
    assert_eq!(per_topic(&mut b2, 300).into_iter().collect::<Vec<_>>(), [("t".into(), want("t", "m", 1))]);
    let b1_got = per_topic(&mut b1, 600);
    assert_eq!(
        b1_got.into_iter().collect::<Vec<_>>(),
        [("a.b".into(), want("a.b", "x", 1)), ("t".into(), want("t", "m", 1))]
    );
    let c1_got = per_topic(&mut c1, 303);
    assert_eq!(
        c1_got.into_iter().collect::<Vec<_>>(),
        [("a*".into(), want("a*", "y", 100)), ("t".into(), want("t", "m", 1))],
        "'a*' is a topic, not a wildcard"
    );

    // Unsubscribed from t, b1 gets a.b alone; what follows proves nothing of t came.
    b1.send("unsubscribe t");
    b1.expect("OK unsubscribed t");
    publisher.send("pub t after\npub a.b last");
    assert_eq!(b1.line(), "Received [a.b]: last");
    assert_eq!(b2.line(), "Received [t]: after");
    assert_eq!(c1.line(), "Received [t]: after");
    for server in [&source, &sub_b, &sub_c] {
        assert_eq!(server.total("bus_reconnects"), 0);
    }
    // What needs the channel server's numbers is refused, one line each.
    for cmd in ["resume t 1", "history t 5", "info t", "seq on", "confirm on", "enqueue q job", "consume q", "queues"] {
        b2.send(cmd);
        b2.expect(&format!("ERR {}", fanout::protocol::reply::NOT_ON_NATS));
    }
    b2.barrier();
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

/// Publishes `seq N` lines through `publisher` (paced) until `stop` is set.
fn stream(publisher: &Client, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let mut w = publisher.stream.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let mut batch = String::new();
            for _ in 0..20 {
                batch.push_str(&format!("pub t {n}\n"));
                n += 1;
            }
            w.write_all(batch.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(2)); // pacing: about 10k msgs/s
        }
        n
    })
}

/// The number in a `Received [t]: N` line.
fn seq(line: &str) -> u64 {
    line.strip_prefix("Received [t]: ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
}

/// SIGKILL of node B under a stream published on A: the subscriber's client
/// keeps its connection, its worker moves to C and subscribes again; what is
/// lost is one gap, counted as a reconnect in `status`.
#[test]
fn nats_node_killed_under_load() {
    let mut cluster = NatsCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let source = on_node("data-source", dir.path(), &cluster, 0, &["--count", "1"]);
    let subscriber = on_node("subscriber", dir.path(), &cluster, 1, &["--count", "1"]);
    let mut client = subscriber.connect();
    client.subscribe(&["t"]);
    cluster.wait_interest(0, "fanout.t", 1);
    let publisher = source.connect();
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = stream(&publisher, stop.clone());

    let mut last = None;
    for _ in 0..200 {
        let n = seq(&client.line());
        assert!(last.is_none_or(|l| n == l + 1), "{last:?} then {n} before the kill");
        last = Some(n);
    }
    cluster.nodes[1].kill();
    let killed_at = last.unwrap();
    // Read on: one gap, then every message in order again.
    let (mut gap, mut after) = (0, 0);
    while after < 500 {
        let line = client.try_line().expect("the client keeps its connection and receives again");
        let n = seq(&line);
        let l = last.unwrap();
        assert!(n > l, "{l} then {n}: out of order or duplicated");
        if n != l + 1 {
            assert_eq!(gap, 0, "a second gap: {l} then {n}");
            gap = n - l - 1;
        }
        after += u64::from(gap > 0 || n > killed_at + 2000);
        last = Some(n);
    }
    stop.store(true, Ordering::Relaxed);
    let published = feeder.join().unwrap();
    let w = &subscriber.status()["workers"][0];
    assert_eq!(bus_of(w), cluster.nodes[2].url.trim_start_matches("nats://"), "moved to the next node");
    assert_eq!(w["bus_reconnects"], 1);
    println!("node B killed after message {killed_at} of {published}: {gap} messages lost in one gap, then every one in order");
}

/// `reload` of both worker servers while a stream crosses the cluster: every
/// message arrives once and in order, the NATS connections move to the new
/// workers with the clients.
#[test]
fn nats_reload_under_load_loses_nothing() {
    let mut cluster = NatsCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let source = on_node("data-source", dir.path(), &cluster, 0, &["--count", "1"]);
    let subscriber = on_node("subscriber", dir.path(), &cluster, 1, &["--count", "2"]);
    let mut clients: Vec<Client> = (0..4).map(|_| subscriber.connect()).collect();
    for c in &mut clients {
        c.subscribe(&["t"]);
    }
    cluster.wait_interest(0, "fanout.t", 1);
    let publisher = source.connect();
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = stream(&publisher, stop.clone());
    for c in &mut clients {
        assert_eq!(seq(&c.line()), 0);
    }
    for server in [&subscriber, &source] {
        let out = server.cmd("reload", &[]);
        assert!(out.status.success(), "reload: {}{}", String::from_utf8_lossy(&out.stderr), server.log());
    }
    stop.store(true, Ordering::Relaxed);
    let published = feeder.join().unwrap();
    for (k, c) in clients.iter_mut().enumerate() {
        for i in 1..published {
            assert_eq!(c.try_line().map(|l| seq(&l)), Some(i), "client {k}");
        }
    }
    for server in [&source, &subscriber] {
        assert_eq!(server.total("bus_reconnects"), 0, "the connections were handed over, not reopened");
        assert_eq!(server.total("dropped"), 0);
    }
}

/// Credentials from a file, and the server's max_payload answered with an ERR
/// line to the publisher (whose connection goes on).
#[test]
fn nats_credentials_and_max_payload() {
    let mut cluster = NatsCluster::start_with("max_payload: 100\nauthorization { token: \"s3cret\" }\n");
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("nats.creds");
    std::fs::write(&creds, "token=s3cret\n").unwrap();
    let source = on_node(
        "data-source",
        dir.path(),
        &cluster,
        0,
        &["--count", "1", "--bus-credentials", creds.to_str().unwrap()],
    );
    let mut direct = NatsClient::connect(&cluster.nodes[2].url, &Auth::Token("s3cret".into()));
    direct.subscribe(b"fanout.t", 1);
    cluster.wait_interest(0, "fanout.t", 1);
    let mut publisher = source.connect();
    publisher.send(&format!("pub t {}", "x".repeat(101)));
    publisher.expect("ERR message too large for the NATS bus (max_payload 100 bytes)");
    publisher.send("pub t fits");
    assert_eq!(direct.next(), Some(Owned::Msg(b"fanout.t".to_vec(), b"fits".to_vec())));

    std::fs::write(&creds, "token=wrong\n").unwrap();
    let refused = Server::start(
        "subscriber",
        &dir.path().join("x").tap_mkdir(),
        &["--bus", &cluster.nodes[0].url, "--bus-credentials", creds.to_str().unwrap()],
    );
    refused.wait_log("Authorization Violation");
}
