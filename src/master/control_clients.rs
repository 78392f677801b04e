//! The control socket's side of the master: the connected clients, their
//! requests (`status`, `connections`, `reload`, `stop`) and the replies, and
//! the status/connections query that asks every ready worker and collects
//! the answers (those arrive in `on_worker` in `mod.rs`).

use std::time::{Duration, Instant};

use mio::{Interest, Token};
use nix::unistd::Pid;

use super::control::{Reply, Request, Status, WorkerRow};
use super::{rss_kb, Master, CLIENT_BASE, KILL_TIMEOUT};
use crate::runtime::control::{self, ConnInfo, ToWorker, WorkerStats};

const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) struct Client {
    link: control::Conn,
    /// Asked to stop: the socket stays open until the master exits.
    hold: bool,
}

/// Who is waiting for a query's answer.
#[derive(Clone, Copy)]
pub(super) enum Asker {
    /// A command-line client.
    Cli(usize),
    /// A `GET /metrics` (metrics.rs).
    Scrape(usize),
}

/// A status or connections request in flight: one at a time.
pub(super) struct Query {
    id: u64,
    asker: Asker,
    req: Request,
    pub(super) waiting: Vec<Pid>,
    pub(super) stats: Vec<(Pid, WorkerStats)>,
    pub(super) conns: Vec<ConnInfo>,
    pub(super) deadline: Instant,
}

impl Query {
    /// The query, if `pid`'s answer `id` is to this query (not a late one to
    /// an earlier query); `pid` is then no longer waited for.
    pub(super) fn answered_by(&mut self, id: u64, pid: Pid) -> Option<&mut Query> {
        if id != self.id || !self.waiting.contains(&pid) {
            return None;
        }
        self.waiting.retain(|p| *p != pid);
        Some(self)
    }
}

impl Master {
    pub(super) fn accept_clients(&mut self) {
        while let Ok((mut stream, _)) = self.control.accept() {
            let entry = self.clients.vacant_entry();
            let token = Token(CLIENT_BASE + entry.key());
            if self.poll.registry().register(&mut stream, token, Interest::READABLE | Interest::WRITABLE).is_ok() {
                entry.insert(Client { link: control::Conn::new(stream), hold: false });
            }
        }
    }

    pub(super) fn on_client(&mut self, key: usize) {
        let Some(c) = self.clients.get_mut(key) else { return };
        let _ = c.link.flush();
        let (reqs, closed) = c.link.receive::<Request>().unwrap_or((Vec::new(), true));
        if closed {
            self.drop_client(key);
            return;
        }
        for req in reqs {
            match req {
                Request::Status | Request::Connections => {
                    self.queued.push_back((Asker::Cli(key), req));
                    self.start_query();
                }
                Request::Reload => self.start_reload(Some(key)),
                Request::Stop { graceful, timeout_secs } => {
                    self.clients[key].hold = true;
                    self.reply(key, &Reply::Stopping);
                    let timeout = Duration::from_secs(timeout_secs);
                    self.start_stop(graceful, if graceful { timeout } else { timeout.min(KILL_TIMEOUT) });
                }
            }
        }
    }

    pub(super) fn reply(&mut self, key: usize, reply: &Reply) {
        let Some(c) = self.clients.get_mut(key) else { return };
        if c.link.send(reply).is_err() {
            self.drop_client(key);
        }
    }

    fn drop_client(&mut self, key: usize) {
        let mut c = self.clients.remove(key);
        let _ = self.poll.registry().deregister(&mut c.link.stream);
    }

    pub(super) fn start_query(&mut self) {
        if self.query.is_some() {
            return;
        }
        let Some((asker, req)) = self.queued.pop_front() else { return };
        self.query_id += 1;
        let id = self.query_id;
        let msg = match req {
            Request::Connections => ToWorker::Connections { query: id },
            _ => ToWorker::Stats { query: id },
        };
        let mut waiting = Vec::new();
        for (_, w) in self.workers.iter_mut().filter(|(_, w)| w.ready) {
            if w.link.send(&msg).is_ok() {
                waiting.push(w.pid);
            }
        }
        let deadline = Instant::now() + QUERY_TIMEOUT;
        self.query = Some(Query { id, asker, req, waiting, stats: Vec::new(), conns: Vec::new(), deadline });
        self.finish_query_if_done();
    }

    pub(super) fn finish_query_if_done(&mut self) {
        if self.query.as_ref().is_some_and(|q| q.waiting.is_empty()) {
            self.finish_query();
        }
    }

    pub(super) fn finish_query(&mut self) {
        let Some(q) = self.query.take() else { return };
        let reply = match q.req {
            Request::Connections => {
                let mut conns = q.conns;
                conns.sort_by_key(|c| (c.worker_pid, c.id));
                Reply::Connections(conns)
            }
            _ => Reply::Status(self.status(q.stats)),
        };
        match (q.asker, &reply) {
            (Asker::Cli(c), _) => self.reply(c, &reply),
            (Asker::Scrape(s), Reply::Status(status)) => self.answer_scrape(s, status),
            (Asker::Scrape(_), _) => unreachable!("a scrape asks for status only"),
        }
        self.start_query();
    }

    fn status(&self, mut stats: Vec<(Pid, WorkerStats)>) -> Status {
        let mut workers: Vec<WorkerRow> = self
            .workers
            .iter()
            .map(|(_, w)| {
                let stats = match stats.iter().position(|(p, _)| *p == w.pid) {
                    Some(i) => stats.swap_remove(i).1,
                    None => WorkerStats {
                        state: if w.ready { "unresponsive" } else { "starting" }.into(),
                        ..Default::default()
                    },
                };
                WorkerRow {
                    id: w.slot,
                    pid: w.pid.as_raw() as u32,
                    memory_kb: rss_kb(w.pid),
                    restarts: self.slots[w.slot].restarts,
                    stats,
                }
            })
            .collect();
        workers.sort_by_key(|w| (w.id, w.pid));
        Status {
            name: self.cfg.name.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            listen: self.cfg.listen.to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            workers,
        }
    }
}
