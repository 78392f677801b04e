//! The queue frames of the worker links: requests go to the dispatcher
//! (`queues`), and what it answers and delivers goes back to the workers
//! with the requests that read the store (`Request::Ready`), once the turn's
//! records are committed: an `OK enqueued` or `OK acked` is never sent for a
//! record not yet in the log (under `--fsync always`, not yet on disk), and
//! each link gets its answers in the order it asked.

use std::time::{Duration, Instant};

use super::queues::{Client, Delivery};
use super::server::{wall_ms, ChannelServer, Request};
use crate::protocol::frame::{Frame, Verdict};
use crate::protocol::reply;
use crate::runtime::control::{JobCounts, QueueStat, MAX_LISTED_QUEUES};

/// Most queues listed by one `queues` command, so that its answer fits a frame.
const MAX_LISTED: usize = 10_000;

impl ChannelServer {
    /// Handles one queue frame from a link (read only once the store is open).
    pub(super) fn on_queue_frame(&mut self, key: usize, frame: Frame<'_>) {
        let now = wall_ms();
        let mut out = std::mem::take(&mut self.deliveries);
        let (store, queues) = (self.store.as_mut().expect("links are read once the store is open"), &mut self.queues);
        let at = |id| Client { link: key, id };
        let (req, client, settled, text) = match frame {
            Frame::Enqueue { req, client, queue, message } => {
                let text = match queues.enqueue(store, queue, message, now, &mut out) {
                    Ok((id, _)) => reply::job_done("enqueued", queue, id),
                    Err(why) => reply::error(&why.to_string()).concat(),
                };
                (req, client, 0, text)
            }
            Frame::Consume { req, client, prefetch, queue } => {
                queues.consume(store, at(client), queue, prefetch, now, &mut out);
                (req, client, 0, reply::consuming(queue).concat())
            }
            Frame::Unconsume { req: 0, client, .. } => {
                queues.drop_client(store, at(client), now, &mut out);
                (0, client, 0, Vec::new())
            }
            Frame::Unconsume { req, client, queue } => {
                match queues.unconsume(store, at(client), queue, now, &mut out) {
                    Ok(n) => (req, client, n, reply::unconsumed(queue).concat()),
                    Err(why) => (req, client, 0, reply::error(&why.to_string()).concat()),
                }
            }
            Frame::Settle { req, client, verdict, id, queue } => {
                let (result, done) = match verdict {
                    Verdict::Ack => (queues.ack(store, at(client), queue, id, now, &mut out), "acked"),
                    Verdict::Nack => (queues.nack(store, at(client), queue, id, now, &mut out), "nacked"),
                    Verdict::Reject => (queues.reject(store, at(client), queue, id, now, &mut out), "rejected"),
                };
                match result {
                    Ok(_) => (req, client, 1, reply::job_done(done, queue, id)),
                    Err(why) => (req, client, 0, reply::error(&why.to_string()).concat()),
                }
            }
            Frame::ListQueues { req, client } => {
                let figures = queues.figures();
                let mut text = Vec::new();
                for f in figures.iter().take(MAX_LISTED) {
                    reply::queue_figures(&mut text, &f.name, f.ready, f.unacked, f.consumers);
                }
                text.extend_from_slice(reply::queues_count(figures.len()).as_bytes());
                (req, client, 0, text)
            }
            _ => unreachable!("not a queue frame"),
        };
        // A job made ready by this request (an enqueue) goes before its answer.
        self.send_deliveries(&mut out);
        if req != 0 {
            self.stage(key, Frame::QueueReply { req, client, settled, text: &text });
        }
        self.deliveries = out;
    }

    /// A link closed: its clients consume no more.
    pub(super) fn queues_link_closed(&mut self, key: usize) {
        let Some(store) = &mut self.store else { return };
        let mut out = std::mem::take(&mut self.deliveries);
        self.queues.drop_link(store, key, wall_ms(), &mut out);
        self.send_deliveries(&mut out);
        self.deliveries = out;
    }

    /// Takes back the jobs held past the ack timeout, telling their workers.
    /// Returns when to come back.
    pub(super) fn expire_jobs(&mut self) -> Option<Instant> {
        let store = self.store.as_mut()?;
        let now = wall_ms();
        let mut out = std::mem::take(&mut self.deliveries);
        let (lost, next) = self.queues.expire(store, now, &mut out);
        for c in lost {
            self.stage(c.link, Frame::QueueReply { req: 0, client: c.id, settled: 1, text: b"" });
        }
        self.send_deliveries(&mut out);
        self.deliveries = out;
        next.map(|ms| Instant::now() + Duration::from_millis(ms.saturating_sub(now)))
    }

    /// The queues for `status`, by name (the first MAX_LISTED_QUEUES).
    pub(super) fn queue_stats(&self) -> Vec<QueueStat> {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let figures = self.queues.figures().into_iter().take(MAX_LISTED_QUEUES);
        figures
            .map(|f| QueueStat { name: text(&f.name), ready: f.ready, unacked: f.unacked, consumers: f.consumers })
            .collect()
    }

    pub(super) fn job_counts(&self) -> JobCounts {
        let t = self.queues.totals();
        JobCounts {
            queues: t.queues,
            bytes: t.bytes,
            delivered: t.delivered,
            acked: t.acked,
            returned: t.returned,
            timed_out: t.timed_out,
            dead_lettered: t.dead_lettered,
        }
    }

    fn send_deliveries(&mut self, out: &mut Vec<Delivery>) {
        for d in out.drain(..) {
            let job =
                Frame::Job { client: d.to.id, id: d.id, attempt: d.attempt, queue: &d.queue, message: &d.payload };
            self.stage(d.to.link, job);
        }
    }

    /// Queues a frame for a link, to go once the store has committed.
    fn stage(&mut self, key: usize, frame: Frame<'_>) {
        let Some(p) = self.peers.slab.get(key) else { return };
        let requests = &mut self.staged.requests;
        match requests.last_mut() {
            Some((k, id, Request::Ready(frames))) if *k == key && *id == p.id => frame.encode(frames),
            _ => {
                let mut frames = Vec::new();
                frame.encode(&mut frames);
                requests.push((key, p.id, Request::Ready(frames)));
            }
        }
    }
}
