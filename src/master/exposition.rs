//! `status` in the Prometheus text exposition format (version 0.0.4), pure.
//!
//! Driven by the data: every number in a worker's row of `status` (nested
//! objects flattened with `_`) becomes a metric, so a figure a worker starts
//! to report appears here without a change. The table below only gives the
//! known ones their conventional names, types and help; an unknown one is a
//! gauge named `fanout_<field>`. Each metric has a series per worker slot,
//! labelled `worker="<id>"` (the processes of one slot summed: a reload runs
//! an old and a new one side by side for a moment), and the total over the
//! server, `worker="all"`; every series has `server="<name>"`.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

use super::control::Status;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Counter,
    Gauge,
}

/// How the values of one metric combine into the total (and the processes of a slot).
#[derive(Clone, Copy, PartialEq)]
enum Agg {
    Sum,
    /// A state that holds only if it holds everywhere (a link is up).
    Min,
    /// A figure of the slot, reported the same by each of its processes:
    /// once per slot, summed over slots.
    Slot,
}

struct Known {
    field: &'static str,
    name: &'static str,
    kind: Kind,
    help: &'static str,
    scale: f64,
    agg: Agg,
}

const fn known(field: &'static str, name: &'static str, kind: Kind, help: &'static str) -> Known {
    Known { field, name, kind, help, scale: 1.0, agg: Agg::Sum }
}

const KNOWN: &[Known] = &[
    known("connections", "fanout_connections", Kind::Gauge, "Open client connections (channel server: worker links)."),
    known("topics", "fanout_topics", Kind::Gauge, "Topics with at least one subscriber."),
    known(
        "msgs_in",
        "fanout_messages_in_total",
        Kind::Counter,
        "Messages received from publishers (channel server: from workers).",
    ),
    known(
        "msgs_out",
        "fanout_messages_out_total",
        Kind::Counter,
        "Messages queued for delivery to subscribers (channel server: to workers).",
    ),
    known("bytes_queued", "fanout_queued_bytes", Kind::Gauge, "Bytes waiting in send queues."),
    known(
        "dropped",
        "fanout_dropped_messages_total",
        Kind::Counter,
        "Messages discarded because their receiver was cut off as a slow consumer.",
    ),
    known("slow_consumers", "fanout_slow_consumers_total", Kind::Counter, "Receivers disconnected for not reading."),
    Known {
        agg: Agg::Min,
        ..known(
            "link_up",
            "fanout_link_up",
            Kind::Gauge,
            "1 while the link to the channel server is up, else 0 (total: 1 if every link is up).",
        )
    },
    Known {
        scale: 1024.0,
        ..known("memory_kb", "fanout_resident_memory_bytes", Kind::Gauge, "Resident memory of the worker processes.")
    },
    Known {
        agg: Agg::Slot,
        ..known("restarts", "fanout_worker_restarts_total", Kind::Counter, "Workers restarted after dying.")
    },
];

/// Fields of a row that are not figures.
const NOT_FIGURES: &[&str] = &["id", "pid"];

/// The whole `/metrics` page.
pub fn render(status: &Status, reloads: u64) -> String {
    let server = &status.name;
    // field -> worker id -> value
    let mut figures: BTreeMap<String, BTreeMap<usize, f64>> = BTreeMap::new();
    for row in &status.workers {
        let mut flat = Vec::new();
        flatten("", &serde_json::to_value(row).expect("status serialises"), &mut flat);
        for (field, value) in flat {
            let agg = KNOWN.iter().find(|k| k.field == field).map_or(Agg::Sum, |k| k.agg);
            let slot = figures.entry(field).or_default();
            match slot.get_mut(&row.id) {
                None => drop(slot.insert(row.id, value)),
                Some(v) if agg == Agg::Sum => *v += value,
                Some(v) => *v = v.min(value),
            }
        }
    }
    let mut out = String::new();
    header(&mut out, "fanout_info", Kind::Gauge, "Always 1; the labels tell the server's version and address.");
    let _ = writeln!(
        out,
        "fanout_info{{server=\"{server}\",version=\"{}\",listen=\"{}\"}} 1",
        status.version, status.listen
    );
    header(
        &mut out,
        "fanout_workers",
        Kind::Gauge,
        "Worker processes running (more than the configured count during a reload).",
    );
    let _ = writeln!(out, "fanout_workers{{server=\"{server}\"}} {}", status.workers.len());
    header(&mut out, "fanout_reloads_total", Kind::Counter, "Reloads completed since the master started.");
    let _ = writeln!(out, "fanout_reloads_total{{server=\"{server}\"}} {reloads}");
    for (field, per_worker) in &figures {
        let k = KNOWN.iter().find(|k| k.field == field);
        let generic = format!("fanout_{field}");
        let help = format!("The `{field}` figure of each worker in `status`.");
        let (name, kind, help, scale, agg) = match k {
            Some(k) => (k.name, k.kind, k.help, k.scale, k.agg),
            None => (generic.as_str(), Kind::Gauge, help.as_str(), 1.0, Agg::Sum),
        };
        header(&mut out, name, kind, help);
        for (id, v) in per_worker {
            let _ = writeln!(out, "{name}{{server=\"{server}\",worker=\"{id}\"}} {}", v * scale);
        }
        let values = per_worker.values().copied();
        let total = if agg == Agg::Min { values.fold(f64::INFINITY, f64::min) } else { values.sum() };
        let _ = writeln!(out, "{name}{{server=\"{server}\",worker=\"all\"}} {}", total * scale);
    }
    out
}

fn header(out: &mut String, name: &str, kind: Kind, help: &str) {
    let kind = if kind == Kind::Counter { "counter" } else { "gauge" };
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The numbers of a row: `link` becomes `link_up` (1 or 0; the channel
/// server has none), booleans 1 or 0, nested objects `outer_inner`.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, f64)>) {
    let Value::Object(map) = v else { return };
    for (key, v) in map {
        let field = if prefix.is_empty() { key.clone() } else { format!("{prefix}_{key}") };
        match v {
            _ if prefix.is_empty() && NOT_FIGURES.contains(&key.as_str()) => {}
            Value::Number(n) => out.extend(n.as_f64().map(|n| (field, n))),
            Value::Bool(b) => out.push((field, f64::from(u8::from(*b)))),
            Value::String(s) if field == "link" && s != "-" => {
                out.push(("link_up".into(), f64::from(u8::from(s == "up"))))
            }
            Value::Object(_) => flatten(&field, v, out),
            _ => {}
        }
    }
}
