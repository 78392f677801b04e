//! Reload: the workers are replaced one slot at a time. Each successor is
//! started (with the old worker's handoff socket for a pub/sub worker), and
//! once it reports ready the old worker is told to hand over or drain and
//! waited for before the next slot; a failure stops the reload and leaves the
//! remaining workers serving. The steps taken on a worker's events (ready,
//! exit, deadline) are in `on_ready`, `on_exit` and `on_timers` in `mod.rs`.

use std::collections::VecDeque;
use std::time::Instant;

use log::{error, info, warn};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{Master, Mode, READY_TIMEOUT};
use crate::config::Role;
use super::control::Reply;

pub(super) struct Reload {
    slots: VecDeque<usize>,
    pub(super) step: Step,
    client: Option<usize>,
    pub(super) new_pids: Vec<u32>,
}

pub(super) enum Step {
    Idle,
    /// Waiting for the replacement (worker key) to report ready; `handoff`:
    /// it holds the old worker's handoff socket and will take its connections.
    Starting { key: usize, handoff: bool, deadline: Instant },
    /// Waiting for the replaced worker to hand over (or drain) and exit.
    Retiring { pid: Pid, new: Pid, deadline: Instant },
}

impl Master {
    pub(super) fn start_reload(&mut self, client: Option<usize>) {
        match self.mode {
            Mode::Running => {}
            _ => {
                let msg = "cannot reload now: the server is starting, stopping or already reloading";
                warn!("{msg}");
                if let Some(c) = client {
                    self.reply(c, &Reply::Error(msg.into()));
                }
                return;
            }
        }
        info!("reloading {} worker(s) from {}", self.cfg.count, self.exe.display());
        self.mode = Mode::Reloading(Reload {
            slots: (0..self.cfg.count).collect(),
            step: Step::Idle,
            client,
            new_pids: Vec::new(),
        });
        self.next_reload_step();
    }

    pub(super) fn next_reload_step(&mut self) {
        let Mode::Reloading(r) = &mut self.mode else { return };
        if !matches!(r.step, Step::Idle) {
            return;
        }
        let Some(slot) = r.slots.pop_front() else {
            let (client, pids) = (r.client.take(), std::mem::take(&mut r.new_pids));
            info!("reload complete");
            self.mode = Mode::Running;
            if let Some(c) = client {
                self.reply(c, &Reply::Reloaded(pids));
            }
            return;
        };
        // Pub/sub workers hand their connections over; the channel server's
        // single worker drains. The master keeps its copy of the old worker's
        // handoff socket until the successor is ready, for another try.
        let takeover = match self.cfg.role {
            Role::PubSub(_) => self
                .workers
                .iter()
                .find(|(_, w)| w.slot == slot && !w.retiring)
                .and_then(|(_, w)| w.handoff.as_ref())
                .and_then(|fd| fd.try_clone().ok()),
            Role::Channel(_) => None,
        };
        let handoff = takeover.is_some();
        match self.spawn(slot, takeover) {
            Ok(key) => {
                if let Mode::Reloading(r) = &mut self.mode {
                    r.step = Step::Starting { key, handoff, deadline: Instant::now() + READY_TIMEOUT };
                }
            }
            Err(e) => self.abort_reload(&format!("cannot start new worker {slot}: {e}")),
        }
    }

    pub(super) fn abort_reload(&mut self, why: &str) {
        let Mode::Reloading(r) = std::mem::replace(&mut self.mode, Mode::Running) else { return };
        error!("reload stopped: {why}; the remaining workers keep serving");
        if let Step::Starting { key, .. } = r.step {
            if let Some(w) = self.workers.get_mut(key) {
                w.retiring = true;
                let _ = kill(w.pid, Signal::SIGKILL);
            }
        }
        if let Some(c) = r.client {
            self.reply(c, &Reply::Error(format!("reload stopped: {why}")));
        }
    }
}
