//! The command line (clap types) and `Plan`: the parameters of one run with
//! every default filled in.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::proto::Proto;
use crate::table::si;
use crate::{floor, hop, storm};

#[derive(Parser)]
#[command(about = "Load generator for fanout, NATS and Redis pub/sub (loopback only)")]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run one measurement and print its result (one JSON line with --json)
    Run(RunArgs),
    /// Print the median tables of result files (JSON lines written by `run --json`)
    Table {
        files: Vec<PathBuf>,
        /// Runs per cell expected (shown in the header only)
        #[arg(long)]
        runs: Option<usize>,
    },
    /// Measure this machine's floor for the conns scenario: no server, only
    /// the writes of one line to N loopback connections and their reads
    Floor(floor::FloorArgs),
    /// Measure the latency of one loopback socket crossing: the floor for
    /// the latency scenarios
    Hop(hop::HopArgs),
    /// Subscribe many topics from many connections while a publisher streams on
    /// an unrelated topic: the subscription rate and that stream's latency
    Storm(storm::StormArgs),
    /// A work queue: one producer, consumers acking every job (jobs/s, enqueue->job latency)
    Jobs(crate::jobs::JobsArgs),
    /// Publishes the broker confirms as stored: confirmed publishes/s, publish->confirm latency
    Confirm(crate::jobs::confirm::ConfirmArgs),
    /// One subscriber reading at a tenth of the publish rate beside full-speed ones: losses, GAP lines, server memory
    Lag(crate::lag::LagArgs),
    /// The reading side of `floor` (started by it)
    #[command(hide = true)]
    FloorRead(floor::FloorReadArgs),
    /// Print N distinct free TCP ports on 127.0.0.1, one a line
    FreePort {
        #[arg(default_value_t = 1)]
        n: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// 1 publisher → --subs subscribers on one topic, as fast as possible
    Fanout,
    /// --topics topics × 1 subscriber each, publisher round-robins
    Topics,
    /// --rate messages/s to 1 subscriber; latency percentiles
    Latency,
    /// --subs idle subscribers: memory per connection, time for one publish to reach all
    Conns,
}

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    #[arg(long, value_enum)]
    pub proto: Proto,
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// Where the publisher connects (fanout: the data-source server)
    #[arg(long, value_name = "ADDR")]
    pub_addr: SocketAddr,
    /// Where subscribers connect (fanout: the subscriber server) [default: --pub-addr]
    #[arg(long, value_name = "ADDR")]
    sub_addr: Option<SocketAddr>,
    /// Publisher connections; a topic's sequence number n goes out on
    /// connection n mod pubs, so each subscriber checks the order per publisher
    #[arg(long, default_value_t = 1)]
    pubs: usize,
    /// Subscriber connections [fanout 10, topics = --topics, latency 1, conns 10000]
    #[arg(long)]
    subs: Option<usize>,
    /// Topics; subscriber i takes topic i mod topics [topics 1000, others 1]
    #[arg(long)]
    topics: Option<usize>,
    /// Messages to publish in total [depends on the scenario]
    #[arg(long)]
    messages: Option<u64>,
    /// Messages per second (latency scenario) [default 10000]
    #[arg(long)]
    rate: Option<u64>,
    /// Most messages per subscriber published but not yet received; 0 = no limit
    /// [fanout/topics 1 000 000 / subs within 1000..=10000, latency 0, conns 1]
    #[arg(long)]
    window: Option<u64>,
    /// Payload bytes (at least 32: sequence number and timestamp in hex)
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Threads sharing the subscriber connections
    #[arg(long, default_value_t = 2)]
    sub_threads: usize,
    /// Seconds allowed for publishing (the run fails if they run out)
    #[arg(long, default_value_t = 60.0)]
    time_limit: f64,
    /// Seconds allowed for connecting and confirming every subscription
    #[arg(long, default_value_t = 120.0)]
    setup_timeout: f64,
    /// Seconds without any delivery after which waiting for stragglers stops
    #[arg(long, default_value_t = 3.0)]
    drain: f64,
    /// A server process to measure (with all its descendants); repeatable
    #[arg(long = "server-pid", value_name = "PID")]
    pub server_pids: Vec<u32>,
    /// Label of this scenario in tables [default: derived from the parameters]
    #[arg(long)]
    name: Option<String>,
    /// Print the result as one JSON line instead of text
    #[arg(long)]
    pub json: bool,
}

/// The parameters of a run with every default filled in.
#[derive(Clone, Debug)]
pub struct Plan {
    pub proto: Proto,
    pub scenario: Scenario,
    pub pub_addr: SocketAddr,
    pub sub_addr: SocketAddr,
    pub pubs: usize,
    pub subs: usize,
    pub topics: Vec<String>,
    pub messages: u64,
    pub rate: u64,
    pub window: u64,
    pub payload: usize,
    pub sub_threads: usize,
    pub time_limit: Duration,
    pub setup_timeout: Duration,
    pub drain: Duration,
    pub name: String,
}

impl Plan {
    pub fn new(a: &RunArgs) -> Result<Plan, String> {
        use Scenario::*;
        let topics = a.topics.unwrap_or(if a.scenario == Topics { 1000 } else { 1 });
        let subs = a.subs.unwrap_or(match a.scenario {
            Fanout => 10,
            Topics => topics,
            Latency => 1,
            Conns => 10_000,
        });
        let rate = if a.scenario == Latency { a.rate.unwrap_or(10_000) } else { a.rate.unwrap_or(0) };
        let messages = a.messages.unwrap_or(match a.scenario {
            Fanout => (1_000_000 / subs as u64).clamp(2_000, 500_000),
            Topics => 200_000,
            Latency => rate * 5,
            Conns => 10,
        });
        // About a million deliveries in flight at most, 1000 to 10 000 per subscriber.
        let window = a.window.unwrap_or(match a.scenario {
            Fanout | Topics => (1_000_000 / subs as u64).clamp(1000, 10_000),
            Latency => 0,
            Conns => 1,
        });
        let sub_addr = a.sub_addr.unwrap_or(a.pub_addr);
        for addr in [a.pub_addr, sub_addr] {
            if !addr.ip().is_loopback() {
                return Err(format!("{addr}: only loopback addresses may be targeted"));
            }
        }
        if a.scenario == Latency && rate == 0 {
            return Err("the latency scenario needs --rate above 0".into());
        }
        if topics == 0 || subs < topics {
            return Err("need at least one topic and at least one subscriber per topic".into());
        }
        if a.pubs == 0 || a.pubs > 64 {
            return Err("--pubs must be between 1 and 64".into());
        }
        if messages == 0 || messages > 50_000_000 {
            return Err("--messages must be between 1 and 50 000 000".into());
        }
        if a.payload < 32 || a.payload > 60_000 {
            return Err("--payload must be between 32 and 60000".into());
        }
        let name = a.name.clone().unwrap_or_else(|| match a.scenario {
            Fanout => format!("fanout {}→{subs}", a.pubs),
            Topics => format!("topics {topics}×{}", subs / topics),
            Latency => format!("latency {}/s", si(rate as f64)),
            Conns => format!("conns {subs}"),
        });
        let secs = |s: f64| Duration::from_secs_f64(s.clamp(0.1, 3600.0));
        Ok(Plan {
            proto: a.proto,
            scenario: a.scenario,
            pub_addr: a.pub_addr,
            sub_addr,
            pubs: a.pubs,
            subs,
            topics: (0..topics).map(|k| format!("t{k}")).collect(),
            messages,
            rate,
            window,
            payload: a.payload,
            sub_threads: a.sub_threads.clamp(1, subs.min(16)),
            time_limit: secs(a.time_limit),
            setup_timeout: secs(a.setup_timeout),
            drain: secs(a.drain),
            name,
        })
    }

    /// How many messages topic `k` gets: message i goes to topic i mod T with
    /// sequence number i div T.
    pub fn expected(&self, k: usize) -> u64 {
        let t = self.topics.len() as u64;
        self.messages / t + u64::from((k as u64) < self.messages % t)
    }
}
