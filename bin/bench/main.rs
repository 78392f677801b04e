//! `fanout-bench`: a load generator for the fanout pub/sub servers, with NATS
//! and Redis as reference points.
//!
//! One `run` is one measurement, in one process:
//! * subscriber threads (`--sub-threads`, default 2) each own a share of the
//!   subscriber connections in their own mio `Poll`: they connect them in
//!   waves, wait until each one has *confirmed* its subscription, then check
//!   every message received;
//! * the main thread then publishes on one connection, either as fast as the
//!   socket takes it (with a bounded window of messages in flight, so no
//!   server queue grows without limit) or at a fixed rate.
//!
//! Each payload carries the publisher's per-topic sequence number and the time
//! it was written, so every subscriber counts exactly the missing, duplicated
//! and out-of-order messages; any of those (or a disconnect, an `ERR`, a
//! timeout) makes the run `FAILED`. The bench reports its own CPU use and,
//! given `--server-pid`, the CPU and resident memory of the server processes
//! (each pid plus all its descendants).
//!
//! `table` turns the JSON lines of many runs into the median table of
//! BENCHMARKS.md; `free-port` prints free loopback ports for scripts/bench.sh.

use clap::Parser;

use cli::{Cli, Cmd, Plan};
use payload::now_ns;
use run::{print_text, run, RunResult};
use table::table;

mod cli;
mod conn;
mod floor;
mod hist;
mod hop;
mod jobs;
mod lag;
mod payload;
mod procfs;
mod proto;
mod publisher;
mod run;
mod rusage;
mod storm;
mod subscribers;
mod table;

fn main() {
    now_ns(); // start the clock
    let code = match Cli::parse().cmd {
        Cmd::Run(args) => match run(&args) {
            Ok(r) => {
                if args.json {
                    println!("{}", serde_json::to_string(&r).expect("serialize"));
                } else {
                    print_text(&r);
                }
                i32::from(!r.ok)
            }
            Err(e) => {
                // Still one JSON line, so a table shows the failure.
                if args.json {
                    let r = RunResult {
                        name: Plan::new(&args).map(|p| p.name).unwrap_or_default(),
                        scenario: Some(args.scenario),
                        proto: Some(args.proto),
                        failures: vec![e.clone()],
                        ..Default::default()
                    };
                    println!("{}", serde_json::to_string(&r).expect("serialize"));
                }
                eprintln!("fanout-bench: {e}");
                1
            }
        },
        Cmd::Floor(args) => exit_code(floor::floor(&args)),
        Cmd::Storm(args) => exit_code(storm::storm(&args)),
        Cmd::Jobs(args) => exit_code(jobs::jobs(&args)),
        Cmd::Confirm(args) => exit_code(jobs::confirm::confirm(&args)),
        Cmd::Lag(args) => exit_code(lag::lag(&args)),
        Cmd::Hop(args) => exit_code(hop::hop(&args)),
        Cmd::FloorRead(args) => floor::floor_read(&args).map_or_else(
            |e| {
                println!("{e}");
                1
            },
            |_| 0,
        ),
        Cmd::Table { files, runs } => exit_code(table(&files, runs)),
        Cmd::FreePort { n } => {
            let listeners: Vec<_> = (0..n).filter_map(|_| std::net::TcpListener::bind("127.0.0.1:0").ok()).collect();
            for l in &listeners {
                println!("{}", l.local_addr().map(|a| a.port()).unwrap_or(0));
            }
            i32::from(listeners.len() != n)
        }
    };
    std::process::exit(code);
}

/// A subcommand's exit code: 1, with its error on stderr, if it failed.
fn exit_code(r: Result<(), String>) -> i32 {
    r.map_or_else(
        |e| {
            eprintln!("fanout-bench: {e}");
            1
        },
        |_| 0,
    )
}
