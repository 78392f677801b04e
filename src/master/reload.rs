//! Reload as a state machine of its own: the workers are replaced one slot at
//! a time. Each successor is started (with the old worker's handoff socket
//! for a service that hands over), and once it reports ready the old worker
//! is told to hand over or drain and waited for before the next slot; a
//! failure stops the reload and leaves the remaining workers serving.
//!
//! The master feeds it events (a successor started, a worker ready or exited,
//! the time) and carries out the actions it returns; it owns no process, so
//! its tests drive it with events alone.

use std::collections::VecDeque;
use std::time::Instant;

use log::{info, warn};
use nix::unistd::Pid;

use super::{KILL_TIMEOUT, READY_TIMEOUT, RETIRE_TIMEOUT};

#[derive(Debug)]
pub struct Reload {
    slots: VecDeque<usize>,
    step: Step,
    new_pids: Vec<u32>,
    /// The command-line client waiting for the outcome.
    pub client: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Between slots, or a successor being spawned.
    Idle,
    /// Waiting for the successor (worker key) to report ready; `handoff`: it
    /// holds the old worker's handoff socket and will take its connections.
    Starting { key: usize, handoff: bool, deadline: Instant },
    /// Waiting for the replaced worker to hand over (or drain) and exit.
    Retiring { old: Pid, new: Pid, deadline: Instant },
}

#[derive(Debug)]
pub enum Event {
    /// The successor asked for by `Action::Spawn` was started as worker `key`;
    /// `handoff`: it was given the old worker's handoff socket.
    Spawned { key: usize, handoff: bool },
    /// It could not be started.
    SpawnFailed(String),
    /// Worker `key` reported ready; `old` is the worker serving its slot until then.
    Ready { key: usize, pid: Pid, old: Option<Pid> },
    /// A worker exited (`ready`: it had reported ready); `how` for messages.
    Exited { pid: Pid, slot: usize, ready: bool, how: String },
    /// Time passed.
    Tick,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Start a successor for this slot, then report `Spawned` or `SpawnFailed`.
    Spawn {
        slot: usize,
    },
    /// Tell the old worker to hand its connections over (or to drain), and
    /// give up the master's end of its handoff socket.
    Retire {
        old: Pid,
        handoff: bool,
    },
    Kill(Pid),
    /// The old worker got no confirmation from its successor and carries on.
    KeepServing(Pid),
    /// Every worker is replaced: these are the new pids.
    Done(Vec<u32>),
    /// The reload stopped; kill the successor being started (worker key), if any.
    Failed {
        why: String,
        kill: Option<usize>,
    },
}

impl Reload {
    /// A reload of `count` slots; carry out the actions returned first.
    pub fn start(count: usize, client: Option<usize>) -> (Reload, Vec<Action>) {
        let mut r = Reload { slots: (0..count).collect(), step: Step::Idle, new_pids: Vec::new(), client };
        let first = r.next();
        (r, first)
    }

    /// The next deadline the master must wake up for.
    pub fn deadline(&self) -> Option<Instant> {
        match self.step {
            Step::Starting { deadline, .. } | Step::Retiring { deadline, .. } => Some(deadline),
            Step::Idle => None,
        }
    }

    /// Stops the reload from outside (the server is stopping).
    pub fn abort(&mut self, why: &str) -> Action {
        self.fail(why.into())
    }

    /// Handles one event at time `now`. An empty answer: the event was not
    /// the reload's business.
    pub fn on(&mut self, ev: Event, now: Instant) -> Vec<Action> {
        match (ev, self.step) {
            (Event::Spawned { key, handoff }, Step::Idle) => {
                self.step = Step::Starting { key, handoff, deadline: now + READY_TIMEOUT };
                Vec::new()
            }
            (Event::SpawnFailed(why), _) => vec![self.fail(why)],
            (Event::Ready { key, pid, old }, Step::Starting { key: k, handoff, .. }) if k == key => {
                self.new_pids.push(pid.as_raw() as u32);
                match old {
                    Some(old) => {
                        self.step = Step::Retiring { old, new: pid, deadline: now + RETIRE_TIMEOUT };
                        vec![Action::Retire { old, handoff }]
                    }
                    None => {
                        self.step = Step::Idle;
                        self.next()
                    }
                }
            }
            (Event::Exited { pid, slot, how, .. }, Step::Retiring { old, .. }) if old == pid => {
                info!("replaced worker {slot} (pid {pid}) exited: {how}");
                self.step = Step::Idle;
                self.next()
            }
            (Event::Exited { pid, slot, ready: false, how }, Step::Starting { .. }) => {
                vec![self.fail(format!("new worker {slot} (pid {pid}) exited before it was ready: {how}"))]
            }
            (Event::Exited { pid, slot, how, .. }, Step::Retiring { old, new, .. }) if new == pid => {
                let why = format!("new worker {slot} (pid {pid}) exited while taking over: {how}");
                vec![Action::KeepServing(old), self.fail(why)]
            }
            (Event::Tick, Step::Starting { deadline, .. }) if deadline <= now => {
                vec![self.fail("the new worker did not become ready in time".into())]
            }
            (Event::Tick, Step::Retiring { old, new, deadline }) if deadline <= now => {
                warn!("replaced worker (pid {old}) did not finish in time: killing it");
                self.step = Step::Retiring { old, new, deadline: now + KILL_TIMEOUT };
                vec![Action::Kill(old)]
            }
            _ => Vec::new(),
        }
    }

    /// The next slot, or the end.
    fn next(&mut self) -> Vec<Action> {
        match self.slots.pop_front() {
            Some(slot) => vec![Action::Spawn { slot }],
            None => vec![Action::Done(std::mem::take(&mut self.new_pids))],
        }
    }

    fn fail(&mut self, why: String) -> Action {
        let kill = match self.step {
            Step::Starting { key, .. } => Some(key),
            _ => None,
        };
        self.step = Step::Idle;
        self.slots.clear();
        Action::Failed { why, kill }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(n: i32) -> Pid {
        Pid::from_raw(n)
    }

    fn exited(p: i32, slot: usize, ready: bool) -> Event {
        Event::Exited { pid: pid(p), slot, ready, how: "exit code 0".into() }
    }

    /// Two slots replaced in turn: spawn, ready, retire the old one, its exit
    /// moves on to the next slot, and the end reports the new pids.
    #[test]
    fn replaces_each_slot_in_turn() {
        let now = Instant::now();
        let (mut r, first) = Reload::start(2, Some(7));
        assert_eq!(first, vec![Action::Spawn { slot: 0 }]);
        assert_eq!(r.on(Event::Spawned { key: 10, handoff: true }, now), vec![]);
        assert_eq!(r.deadline(), Some(now + READY_TIMEOUT));
        // Another worker's readiness is not ours.
        assert_eq!(r.on(Event::Ready { key: 3, pid: pid(300), old: None }, now), vec![]);
        let ready = Event::Ready { key: 10, pid: pid(100), old: Some(pid(1)) };
        assert_eq!(r.on(ready, now), vec![Action::Retire { old: pid(1), handoff: true }]);
        assert_eq!(r.deadline(), Some(now + RETIRE_TIMEOUT));
        // An unrelated worker's exit is left to the master.
        assert_eq!(r.on(exited(55, 1, true), now), vec![]);
        assert_eq!(r.on(exited(1, 0, true), now), vec![Action::Spawn { slot: 1 }]);
        assert_eq!(r.on(Event::Spawned { key: 11, handoff: false }, now), vec![]);
        let ready = Event::Ready { key: 11, pid: pid(101), old: Some(pid(2)) };
        assert_eq!(r.on(ready, now), vec![Action::Retire { old: pid(2), handoff: false }]);
        assert_eq!(r.on(exited(2, 1, true), now), vec![Action::Done(vec![100, 101])]);
        assert_eq!(r.client, Some(7));
    }

    /// A slot with no old worker (it had died) goes straight on.
    #[test]
    fn a_slot_without_an_old_worker_moves_on() {
        let now = Instant::now();
        let (mut r, _) = Reload::start(1, None);
        r.on(Event::Spawned { key: 4, handoff: false }, now);
        assert_eq!(r.on(Event::Ready { key: 4, pid: pid(40), old: None }, now), vec![Action::Done(vec![40])]);
    }

    #[test]
    fn a_successor_that_dies_before_ready_stops_the_reload_and_is_killed() {
        let now = Instant::now();
        let (mut r, _) = Reload::start(3, None);
        r.on(Event::Spawned { key: 4, handoff: true }, now);
        let got = r.on(exited(40, 0, false), now);
        let [Action::Failed { why, kill: Some(4) }] = got.as_slice() else { panic!("{got:?}") };
        assert!(why.contains("exited before it was ready"), "{why}");
        // Nothing more happens: the remaining slots are not replaced.
        assert_eq!(r.on(Event::Tick, now + READY_TIMEOUT * 2), vec![]);
        assert_eq!(r.deadline(), None);
    }

    #[test]
    fn a_successor_that_dies_taking_over_leaves_the_old_worker_serving() {
        let now = Instant::now();
        let (mut r, _) = Reload::start(2, None);
        r.on(Event::Spawned { key: 4, handoff: true }, now);
        r.on(Event::Ready { key: 4, pid: pid(40), old: Some(pid(1)) }, now);
        let got = r.on(exited(40, 0, true), now);
        assert_eq!(got[0], Action::KeepServing(pid(1)));
        assert!(matches!(&got[1], Action::Failed { why, kill: None } if why.contains("while taking over")), "{got:?}");
    }

    #[test]
    fn deadlines_fail_a_slow_start_and_kill_a_slow_retiree() {
        let now = Instant::now();
        let (mut r, _) = Reload::start(1, None);
        r.on(Event::Spawned { key: 4, handoff: true }, now);
        assert_eq!(r.on(Event::Tick, now + READY_TIMEOUT / 2), vec![]);
        let got = r.on(Event::Tick, now + READY_TIMEOUT);
        assert!(matches!(&got[..], [Action::Failed { kill: Some(4), .. }]), "{got:?}");

        let (mut r, _) = Reload::start(1, None);
        r.on(Event::Spawned { key: 4, handoff: true }, now);
        r.on(Event::Ready { key: 4, pid: pid(40), old: Some(pid(1)) }, now);
        let late = now + RETIRE_TIMEOUT;
        assert_eq!(r.on(Event::Tick, late), vec![Action::Kill(pid(1))]);
        assert_eq!(r.deadline(), Some(late + KILL_TIMEOUT));
        assert_eq!(r.on(exited(1, 0, true), late), vec![Action::Done(vec![40])]);
    }

    #[test]
    fn a_failed_spawn_stops_the_reload() {
        let (mut r, _) = Reload::start(2, None);
        let got = r.on(Event::SpawnFailed("cannot start new worker 0: no".into()), Instant::now());
        assert_eq!(got, vec![Action::Failed { why: "cannot start new worker 0: no".into(), kill: None }]);
    }
}
