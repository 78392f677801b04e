//! `table`: the median tables of BENCHMARKS.md from the JSON lines of many
//! runs; also `si` and `median`, which the rest of the bench uses too.

use std::path::PathBuf;

use crate::cli::Scenario;
use crate::proto::Proto;
use crate::run::RunResult;

pub fn si(v: f64) -> String {
    match v.abs() {
        x if x >= 1e6 => format!("{:.2}M", v / 1e6),
        x if x >= 1e4 => format!("{:.0}k", v / 1e3),
        x if x >= 1e3 => format!("{:.1}k", v / 1e3),
        x if x >= 100.0 => format!("{v:.0}"),
        _ => format!("{v:.1}"),
    }
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

type Metric = (&'static str, fn(&RunResult) -> Option<f64>);

/// The numbers shown for each kind of scenario (arrow: which way is better).
fn metrics(s: Scenario) -> Vec<Metric> {
    match s {
        Scenario::Fanout | Scenario::Topics => {
            vec![("delivered msg/s ↑", |r| Some(r.delivered_per_s)), ("latency p99 µs ↓", |r| r.lat_p99_us)]
        }
        Scenario::Latency => vec![
            ("p50 µs ↓", |r| r.lat_p50_us),
            ("p99 µs ↓", |r| r.lat_p99_us),
            ("p99.9 µs ↓", |r| r.lat_p999_us),
            ("(bench) send lag p99 µs ↓", |r| r.pub_lag_p99_us),
        ],
        Scenario::Conns => vec![
            ("server bytes/conn ↓", |r| r.bytes_per_conn),
            ("publish→all ms ↓", |r| r.fanout_p50_ms),
            ("setup s ↓", |r| Some(r.setup_s)),
        ],
    }
}

pub fn table(files: &[PathBuf], runs: Option<usize>) -> Result<(), String> {
    let mut results = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
            results.push(serde_json::from_str::<RunResult>(line).map_err(|e| format!("{}: {e}", f.display()))?);
        }
    }
    // Scenario names in the order they first appear.
    let mut names: Vec<(String, Scenario)> = Vec::new();
    for r in &results {
        if let Some(s) = r.scenario.filter(|_| !names.iter().any(|(n, _)| *n == r.name)) {
            names.push((r.name.clone(), s));
        }
    }
    let protos = [Proto::Fanout, Proto::Nats, Proto::Redis];
    let group = |name: &str, p: Proto| -> Vec<&RunResult> {
        results.iter().filter(|r| r.name == name && r.proto == Some(p)).collect()
    };
    // A cell: median over the runs that passed, and how many failed.
    let cell = |rs: &[&RunResult], f: fn(&RunResult) -> Option<f64>| -> (Option<f64>, String) {
        if rs.is_empty() {
            return (None, "–".into());
        }
        let ok: Vec<f64> = rs.iter().filter(|r| r.ok).filter_map(|r| f(r)).collect();
        let failed = rs.iter().filter(|r| !r.ok).count();
        let m = median(ok);
        let mut s = m.map_or_else(|| "FAILED".to_string(), si);
        if failed > 0 && m.is_some() {
            s += &format!(" ({failed}/{} FAILED)", rs.len());
        }
        (if failed == 0 { m } else { None }, s)
    };
    let n = runs.map_or(String::new(), |n| format!(", median of {n} runs"));
    println!("Throughput, latency and memory{n}. Ratio = fanout ÷ peer (arrow says which way is better).\n");
    println!("| scenario | metric | fanout | NATS | Redis | fanout/NATS | fanout/Redis |");
    println!("|---|---|--:|--:|--:|--:|--:|");
    for (name, sc) in &names {
        for (label, f) in metrics(*sc) {
            let cells: Vec<_> = protos.iter().map(|&p| cell(&group(name, p), f)).collect();
            let ratio = |peer: usize| match (cells[0].0, cells[peer].0) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => "–".into(),
            };
            println!(
                "| {name} | {label} | {} | {} | {} | {} | {} |",
                cells[0].1,
                cells[1].1,
                cells[2].1,
                ratio(1),
                ratio(2)
            );
        }
    }
    // Our servers over WebSocket, beside our line protocol, where measured.
    let ws_names: Vec<_> = names.iter().filter(|(name, _)| !group(name, Proto::Ws).is_empty()).collect();
    if !ws_names.is_empty() {
        println!("\nThe same servers over WebSocket (`--proto ws`) beside the line protocol{n}.\n");
        println!("| scenario | metric | lines | WebSocket | WebSocket/lines |");
        println!("|---|---|--:|--:|--:|");
        for (name, sc) in ws_names {
            for (label, f) in metrics(*sc) {
                let (lines, ws) = (cell(&group(name, Proto::Fanout), f), cell(&group(name, Proto::Ws), f));
                let ratio = match (lines.0, ws.0) {
                    (Some(a), Some(b)) if a > 0.0 => format!("{:.2}", b / a),
                    _ => "–".into(),
                };
                println!("| {name} | {label} | {} | {} | {ratio} |", lines.1, ws.1);
            }
        }
    }
    println!("\nCPU during the publish phase in % of one core (all cores = {}), medians:", cores());
    println!("bench / server (all its processes); runs shorter than 0.5 s are left out.\n");
    println!("| scenario | fanout | NATS | Redis |");
    println!("|---|--:|--:|--:|");
    for (name, _) in &names {
        let mut row = format!("| {name} |");
        for &p in &protos {
            // CPU time comes in 10 ms ticks: leave out runs too short for it.
            let rs: Vec<_> = group(name, p).into_iter().filter(|r| r.wall_s >= 0.5).collect();
            let m = |f: fn(&RunResult) -> Option<f64>| {
                median(rs.iter().filter_map(|r| f(r)).collect()).map_or("–".into(), |v| format!("{v:.0}"))
            };
            row += &if rs.is_empty() {
                " – |".to_string()
            } else {
                format!(" {} / {} |", m(|r| Some(r.bench_cpu_pct)), m(|r| r.server_cpu_pct))
            };
        }
        println!("{row}");
    }
    Ok(())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()) * 100
}
