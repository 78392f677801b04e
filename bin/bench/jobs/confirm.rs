//! `fanout-bench confirm`: publishes that the broker confirms as stored, on
//! one connection, at most `--window` unconfirmed (or at a fixed `--rate`).
//! Ours: `pub` with `confirm on` on the data source, answered `OK published
//! <topic>#<seq>` once the channel server has numbered it and (with
//! --data-dir) written it as its --fsync policy says; Redis: XADD to a stream
//! (pipelined); NATS JetStream: PUB to a file-storage stream, answered by a
//! PubAck. Reports confirmed publishes per second (first write to last
//! confirmation) and the latency from writing a publish to reading its
//! confirmation, then checks the broker holds (has numbered) all of them.
//! The producer is the one of `jobs`.

use clap::Args;

use super::produce::{produce, Pace};
use super::{fanout, jetstream, redis, Broker, JobsArgs};

#[derive(Args, Clone, Debug)]
pub struct ConfirmArgs {
    #[arg(long, value_enum, default_value = "fanout")]
    broker: Broker,
    /// Where the publisher connects (fanout: the data-source server)
    #[arg(long)]
    addr: String,
    /// The topic (Redis: the stream; JetStream: the stream and its subject);
    /// it must be new
    #[arg(long, default_value = "bench")]
    topic: String,
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    #[command(flatten)]
    pace: Pace,
}

pub fn confirm(c: &ConfirmArgs) -> Result<(), String> {
    let a = JobsArgs {
        broker: c.broker,
        producer_addr: c.addr.clone(),
        consumer_addr: None,
        queue: c.topic.clone(),
        jobs: c.messages,
        consumers: 0,
        prefetch: 1,
        pace: Pace { size: c.pace.size.max(32), window: c.pace.window.max(1), ..c.pace },
    };
    // How many messages the broker holds (ours: has numbered) at the end.
    let held: fn(&JobsArgs) -> Result<u64, String> = match a.broker {
        Broker::Fanout => |a| fanout::numbered(&a.producer_addr, &a.queue),
        Broker::Redis => redis::stored,
        Broker::Jetstream => jetstream::stored,
        Broker::Rabbitmq => return Err("confirm measures fanout, redis and jetstream".into()),
    };
    let p = &a.pace;
    let topic = &a.queue;
    let done = match a.broker {
        Broker::Fanout => produce(
            fanout::confirming(&a.producer_addr)?,
            a.jobs,
            p,
            |out, body| fanout::publish(out, topic, body),
            |r, done| fanout::published(r).map(|()| done + 1),
        )?,
        broker => {
            broker.create(&a)?;
            let encode = |out: &mut Vec<u8>, body: &[u8]| broker.enqueue(out, topic, body);
            produce(broker.producer(&a)?, a.jobs, p, encode, move |r, done| broker.confirm(r, done))?
        }
    };
    let held = held(&a)?;
    if held != a.jobs {
        return Err(format!("{} publishes confirmed, but the broker holds {held}", a.jobs));
    }
    let us = |q: f64| done.confirm.quantile(q).unwrap_or(0) as f64 / 1000.0;
    let rate = match p.rate {
        0 => String::new(),
        r => format!(", at {r}/s"),
    };
    println!(
        "confirm {} x {} B, window {}{rate}: {:.0} publishes/s confirmed ({:.2} s); publish->confirm p50 {:.0} us p99 {:.0} us max {:.0} us; all held",
        a.jobs,
        p.size,
        p.window,
        a.jobs as f64 / done.elapsed.as_secs_f64(),
        done.elapsed.as_secs_f64(),
        us(0.5),
        us(0.99),
        done.confirm.max as f64 / 1000.0
    );
    Ok(())
}
