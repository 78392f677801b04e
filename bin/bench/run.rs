//! One `run`: the publisher and the subscriber threads against a server, and
//! its result (`RunResult`, printed as text or one JSON line).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use mio::{Poll, Waker};
use serde::{Deserialize, Serialize};

use crate::cli::{Plan, RunArgs, Scenario};
use crate::hist::Hist;
use crate::payload::now_ns;
use crate::procfs;
use crate::proto::Proto;
use crate::publisher::{Publisher, WAKE};
use crate::rusage::{cpu_secs, raise_nofile};
use crate::subscribers::{run_subscribers, Shared, SubReport};
use crate::table::si;

/// What `run` prints: one JSON object per run.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct RunResult {
    pub name: String,
    pub scenario: Option<Scenario>,
    pub proto: Option<Proto>,
    pub ok: bool,
    pub failures: Vec<String>,
    pub pubs: usize,
    pub subs: usize,
    pub topics: usize,
    pub messages: u64,
    pub payload: usize,
    pub rate: u64,
    pub window: u64,
    pub sent: u64,
    pub expected: u64,
    pub delivered: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub corrupt: u64,
    pub disconnects: u64,
    pub setup_s: f64,
    /// First publish to last delivery.
    pub elapsed_s: f64,
    pub publish_s: f64,
    pub published_per_s: f64,
    /// Sum over subscribers of distinct messages received, per second of `elapsed_s`.
    pub delivered_per_s: f64,
    pub lat_p50_us: Option<f64>,
    pub lat_p99_us: Option<f64>,
    pub lat_p999_us: Option<f64>,
    pub lat_max_us: Option<f64>,
    /// Time from a publish until every subscriber had it (median, max).
    pub fanout_p50_ms: Option<f64>,
    pub fanout_max_ms: Option<f64>,
    /// Rate mode: how far behind schedule the publisher wrote (p99, max).
    pub pub_lag_p99_us: Option<f64>,
    pub pub_lag_max_us: Option<f64>,
    /// Redis only: sum of PUBLISH replies (receivers), to compare with `expected`.
    pub ack_receivers: Option<i64>,
    pub server_procs: usize,
    pub rss_before_kb: Option<u64>,
    pub rss_subscribed_kb: Option<u64>,
    pub rss_end_kb: Option<u64>,
    pub bytes_per_conn: Option<f64>,
    /// Publish start to the end of the run: the span the CPU figures cover.
    pub wall_s: f64,
    /// CPU as % of one core over `wall_s` (so 200 = both cores of this machine).
    /// Counted in clock ticks (10 ms), so coarse for runs under a second.
    pub bench_cpu_pct: f64,
    pub pub_cpu_pct: f64,
    pub sub_cpu_pct: f64,
    pub server_cpu_pct: Option<f64>,
}

pub fn run(args: &RunArgs) -> Result<RunResult, String> {
    use nix::sys::resource::UsageWho;
    let plan = Plan::new(args)?;
    raise_nofile(plan.subs as u64 + 64)?;
    if plan.rate > 0 {
        // Sleep to the microsecond instead of the default 50 µs slack.
        let _ = nix::sys::prctl::set_timerslack(1);
    }
    let poll = Poll::new().map_err(|e| e.to_string())?;
    let shared = Shared {
        progress: (0..plan.sub_threads).map(|_| AtomicU64::new(0)).collect(),
        pub_done: AtomicU64::new(0),
        abort: AtomicBool::new(false),
        pub_waiting: AtomicBool::new(false),
        pub_waker: Waker::new(poll.registry(), WAKE).map_err(|e| e.to_string())?,
    };
    let mut publisher = Publisher::connect(&plan, &shared, poll)?;
    let measure = !args.server_pids.is_empty();
    let rss = || measure.then(|| procfs::rss_kb(&procfs::tree(&args.server_pids)));
    let rss_before = rss();

    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        let threads: Vec<_> = (0..plan.sub_threads)
            .map(|t| {
                let (tx, plan, shared) = (tx.clone(), &plan, &shared);
                s.spawn(move || run_subscribers(plan, shared, t, tx))
            })
            .collect();
        // Every thread reports once its subscriptions are all confirmed.
        let mut setup_s: f64 = 0.0;
        for _ in 0..plan.sub_threads {
            match rx.recv_timeout(plan.setup_timeout + Duration::from_secs(5)) {
                Ok(Ok(secs)) => setup_s = setup_s.max(secs),
                Ok(Err(e)) => {
                    shared.abort.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                Err(_) => {
                    shared.abort.store(true, Ordering::Relaxed);
                    return Err("setup: a subscriber thread did not answer".into());
                }
            }
        }
        let rss_subscribed = rss();
        let servers = procfs::tree(&args.server_pids);
        let (cpu0, main0, srv0, t0) =
            (cpu_secs(UsageWho::RUSAGE_SELF), cpu_secs(UsageWho::RUSAGE_THREAD), procfs::cpu_secs(&servers), now_ns());
        publisher.run();
        let main_cpu = cpu_secs(UsageWho::RUSAGE_THREAD) - main0;
        let mut subs = SubReport::new(&plan);
        for t in threads {
            subs = subs.merge(t.join().map_err(|_| "subscriber thread panicked".to_string())?);
        }
        let srv_cpu = procfs::cpu_secs(&servers) - srv0;
        let cpu = cpu_secs(UsageWho::RUSAGE_SELF) - cpu0;
        let p = &publisher.report;
        let end = subs.last_recv.max(p.last_send);
        let wall = (now_ns() - t0) as f64 / 1e9;
        let elapsed = (end.saturating_sub(p.first_send)) as f64 / 1e9;
        let pct = |c: f64| 100.0 * c / wall.max(1e-9);
        let expected: u64 = (0..plan.subs).map(|i| plan.expected(i % plan.topics.len())).sum();
        let lat = Some(&subs.latency).filter(|h| h.n > 0);
        let us = |h: Option<&Hist>, q: f64| h.and_then(|h| h.quantile(q)).map(|v| v as f64 / 1e3);
        let fanout = subs.fanout_times(&plan);
        let rss_end = rss();
        let mut r = RunResult {
            name: plan.name.clone(),
            scenario: Some(plan.scenario),
            proto: Some(plan.proto),
            pubs: plan.pubs,
            subs: plan.subs,
            topics: plan.topics.len(),
            messages: plan.messages,
            payload: plan.payload,
            rate: plan.rate,
            window: plan.window,
            sent: p.sent,
            expected,
            delivered: subs.delivered,
            missing: subs.missing,
            duplicates: subs.duplicates,
            out_of_order: subs.out_of_order,
            corrupt: subs.corrupt,
            disconnects: subs.disconnects,
            setup_s,
            elapsed_s: elapsed,
            publish_s: (p.last_send.saturating_sub(p.first_send)) as f64 / 1e9,
            published_per_s: p.sent as f64 / ((p.last_send.saturating_sub(p.first_send)) as f64 / 1e9).max(1e-9),
            delivered_per_s: subs.delivered as f64 / elapsed.max(1e-9),
            lat_p50_us: us(lat, 0.5),
            lat_p99_us: us(lat, 0.99),
            lat_p999_us: us(lat, 0.999),
            lat_max_us: lat.map(|h| h.max as f64 / 1e3),
            fanout_p50_ms: (!fanout.is_empty()).then(|| fanout[fanout.len() / 2] as f64 / 1e6),
            fanout_max_ms: fanout.last().map(|&v| v as f64 / 1e6),
            pub_lag_p99_us: us(p.lag.as_ref(), 0.99),
            pub_lag_max_us: p.lag.as_ref().map(|h| h.max as f64 / 1e3),
            ack_receivers: (plan.proto == Proto::Redis).then_some(p.ack_receivers),
            server_procs: servers.len(),
            rss_before_kb: rss_before,
            rss_subscribed_kb: rss_subscribed,
            rss_end_kb: rss_end,
            bytes_per_conn: rss_before
                .zip(rss_subscribed)
                .map(|(a, b)| (b as f64 - a as f64) * 1024.0 / plan.subs as f64),
            wall_s: wall,
            bench_cpu_pct: pct(cpu),
            pub_cpu_pct: pct(main_cpu),
            sub_cpu_pct: pct(cpu - main_cpu),
            server_cpu_pct: measure.then(|| pct(srv_cpu)),
            ..Default::default()
        };
        // Anything short of exact delivery fails the run.
        let f = &mut r.failures;
        f.extend(p.errors.iter().map(|e| format!("publisher: {e}")));
        f.extend(subs.errors.iter().map(|e| format!("subscriber: {e}")));
        if p.sent < plan.messages {
            f.push(format!("sent {} of {}", p.sent, plan.messages));
        }
        for (what, n) in [
            ("missing", r.missing),
            ("duplicated", r.duplicates),
            ("out of order", r.out_of_order),
            ("corrupt or unexpected", r.corrupt),
            ("disconnected subscribers", r.disconnects),
        ] {
            if n > 0 {
                f.push(format!("{n} {what}"));
            }
        }
        r.ok = r.failures.is_empty();
        Ok(r)
    })
}

pub fn print_text(r: &RunResult) {
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    println!("{} [{:?}] {}", r.name, r.proto.unwrap(), if r.ok { "OK" } else { "FAILED" });
    for f in &r.failures {
        println!("  failure: {f}");
    }
    println!(
        "  {} pubs, {} subs, {} topics, sent {}/{} (window {}, rate {}), setup {:.2}s",
        r.pubs, r.subs, r.topics, r.sent, r.messages, r.window, r.rate, r.setup_s
    );
    println!(
        "  delivered {}/{} in {:.3}s = {}/s (publish {}/s); missing {} dup {} ooo {} corrupt {} disc {}",
        r.delivered,
        r.expected,
        r.elapsed_s,
        si(r.delivered_per_s),
        si(r.published_per_s),
        r.missing,
        r.duplicates,
        r.out_of_order,
        r.corrupt,
        r.disconnects
    );
    println!(
        "  latency µs p50 {} p99 {} p99.9 {} max {}; fan-out ms p50 {} max {}; publisher lag µs p99 {} max {}",
        opt(r.lat_p50_us),
        opt(r.lat_p99_us),
        opt(r.lat_p999_us),
        opt(r.lat_max_us),
        opt(r.fanout_p50_ms),
        opt(r.fanout_max_ms),
        opt(r.pub_lag_p99_us),
        opt(r.pub_lag_max_us)
    );
    if let (Some(a), Some(b), Some(c)) = (r.rss_before_kb, r.rss_subscribed_kb, r.rss_end_kb) {
        println!(
            "  server RSS KiB ({} procs): before {a}, subscribed {b}, end {c}; {} bytes/conn",
            r.server_procs,
            opt(r.bytes_per_conn)
        );
    }
    println!(
        "  CPU % of one core: bench {:.0} (publisher {:.0}, subscribers {:.0}), server {}",
        r.bench_cpu_pct,
        r.pub_cpu_pct,
        r.sub_cpu_pct,
        opt(r.server_cpu_pct)
    );
}
