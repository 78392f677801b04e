//! The work-queue commands of a pub/sub worker: `enqueue`, `consume`,
//! `unconsume`, `ack`/`nack`/`reject` and `queues` go to the channel server,
//! which dispatches the jobs (`services::channel::queues`); its answers and
//! jobs come back on the link for one client each. No socket I/O here.
//!
//! Each command is a request on the link (`Link::request`): its answer keeps
//! its place among the client's replies until it comes. If the link breaks
//! first, each answer awaited is an `ERR` saying the command may or may not
//! have taken effect (`reply::LINK_LOST`); the channel server takes back the
//! jobs the worker's clients held, and the consumers are registered again
//! (without answers) when the link is back.

use serde::{Deserialize, Serialize};

use super::clients::{Client, Clients};
use super::link::{Asker, Owed};
use super::PubSub;
use crate::protocol::command::{Command, Topics};
use crate::protocol::frame::Frame;
use crate::protocol::reply;

/// Answers one client may await: beyond this its input waits (each is held
/// in its replies and owed on the link).
pub const MAX_AWAITING: usize = 4096;
/// Queues one connection may consume.
const MAX_CONSUMED: usize = 1024;

/// What a client consumes, as the channel server was told.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Consuming {
    /// Queue names and prefetch.
    pub queues: Vec<(Box<[u8]>, u32)>,
    /// Jobs delivered and not yet settled (acked, nacked, rejected, taken back).
    pub unacked: u32,
}

impl PubSub {
    /// Runs a queue command.
    pub(super) fn queue_command(&mut self, key: usize, cmd: Command<'_>) {
        let client = self.clients.slab[key].id;
        match cmd {
            Command::Enqueue { queue, message } => {
                self.ask_queue(key, |req| Frame::Enqueue { req, client, queue, message });
                self.clients.counters.msgs_in += 1;
            }
            Command::Consume { queue, prefetch } => {
                let c = &self.clients.slab[key].consuming;
                let known = c.queues.iter().any(|(q, _)| **q == *queue);
                if !known && c.queues.len() >= MAX_CONSUMED {
                    return self.clients.error(key, &reply::too_many_queues(MAX_CONSUMED));
                }
                if self.ask_queue(key, |req| Frame::Consume { req, client, prefetch, queue }) {
                    let c = &mut self.clients.slab[key].consuming;
                    c.queues.retain(|(q, _)| **q != *queue);
                    c.queues.push((queue.into(), prefetch));
                }
            }
            Command::Unconsume(names) => self.unconsume(key, names),
            Command::Settle { verdict, jobs } => {
                for job in jobs.iter() {
                    match job {
                        Ok((queue, id)) => {
                            self.ask_queue(key, |req| Frame::Settle { req, client, verdict, id, queue });
                        }
                        Err(why) => self.clients.error(key, &why),
                    }
                }
            }
            Command::Queues => {
                self.ask_queue(key, |req| Frame::ListQueues { req, client });
            }
            _ => unreachable!("not a queue command"),
        }
    }

    /// Sends a queue request; its answer takes its place among the client's
    /// replies when it comes. False (and an `ERR`) while the link is down.
    fn ask_queue<'a>(&mut self, key: usize, frame: impl FnOnce(u32) -> Frame<'a>) -> bool {
        let (id, token) = (self.clients.slab[key].id, self.token());
        match self.link.request(Asker::Queue { key, id, token }, frame) {
            Some(_) => self.clients.slab[key].replies.hold_answer(token),
            None => self.clients.error(key, reply::LINK_DOWN),
        }
        self.link.is_up()
    }

    /// Stops consuming the queues named (none: all); the channel server
    /// answers for each, or, with the link down, this worker does (the
    /// channel server dropped the consumers with the link).
    fn unconsume(&mut self, key: usize, names: Topics<'_>) {
        let c = &self.clients.slab[key];
        let (client, all) = (c.id, c.consuming.queues.iter().map(|(q, _)| q.clone()).collect::<Vec<_>>());
        if names.is_empty() && all.is_empty() {
            return self.clients.error(key, reply::NOT_CONSUMING_ANY);
        }
        let named: Vec<Box<[u8]>> = match names.is_empty() {
            true => all,
            false => names.iter().map(Into::into).collect(),
        };
        for queue in named {
            let c = &mut self.clients.slab[key].consuming;
            let Some(i) = c.queues.iter().position(|(q, _)| *q == queue) else {
                self.clients.error(key, &reply::not_consuming(&queue));
                continue;
            };
            c.queues.remove(i);
            match self.link.is_up() {
                true => _ = self.ask_queue(key, |req| Frame::Unconsume { req, client, queue: &queue }),
                false => self.clients.reply(key, &reply::unconsumed(&queue)),
            }
        }
    }

    /// A client is gone: the jobs it held go to other consumers.
    pub(super) fn queues_closed(&mut self, c: &Client) {
        if !c.consuming.queues.is_empty() {
            self.link.control(Frame::Unconsume { req: 0, client: c.id, queue: b"" });
        }
    }

    /// A new link: the channel server learns the consumers anew, and the
    /// jobs they held on the last one are its again.
    pub(super) fn queues_relink(&mut self) {
        for (_, c) in self.clients.slab.iter_mut() {
            c.consuming.unacked = 0;
            for (queue, prefetch) in &c.consuming.queues {
                self.link.control(Frame::Consume { req: 0, client: c.id, prefetch: *prefetch, queue });
            }
        }
    }
}

/// A frame of the channel server for one client: a job or an answer.
pub fn on_frame(owed: &mut Owed, clients: &mut Clients, frame: Frame<'_>) {
    match frame {
        Frame::Job { client, id, attempt, queue, message } => {
            let Some(&key) = clients.by_id.get(&client) else { return }; // taken back at its close
            clients.slab[key].consuming.unacked += 1;
            clients.counters.msgs_out += 1;
            clients.reply(key, &[&reply::job(queue, id, attempt, message)]);
        }
        Frame::QueueReply { req, client, settled, text } => {
            if let Some(&key) = clients.by_id.get(&client) {
                let c = &mut clients.slab[key].consuming;
                c.unacked = c.unacked.saturating_sub(settled);
            }
            if req != 0 {
                if let Some(Asker::Queue { key, id, token }) = owed.answered(req) {
                    clients.fill(key, id, token, text.to_vec());
                }
            }
        }
        _ => unreachable!("not a queue frame"),
    }
}
