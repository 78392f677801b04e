//! A worker's topics: which of its connections subscribe to what, and the
//! state of each topic's subscription at the channel server.
//!
//! A worker subscribes to a topic at the channel server once, however many of
//! its connections want it, and unsubscribes when the last one leaves. A
//! connection is told `OK subscribed` only once the channel server has
//! acknowledged, so a publish made after that line reaches it.

use std::collections::HashMap;

use indexmap::IndexSet;

use slab::Slab;

pub type TopicId = usize;

#[derive(Debug)]
pub struct Topic {
    pub name: Box<[u8]>,
    /// Connections receiving this topic. Sets, so that a connection leaves a
    /// topic of 100 000 subscribers in constant time; iterated as densely as
    /// a list for the fan-out.
    pub subscribers: IndexSet<usize>,
    /// Connections waiting for the channel server's acknowledgement.
    pub waiting: IndexSet<usize>,
    /// A SUB has been sent since the last UNSUB (on this link).
    pub(super) remote: bool,
    /// SUBs sent on this link not yet acknowledged.
    pub(super) acks_pending: u32,
    /// Lines received for this topic in the current read of the link, delivered
    /// to every subscriber as one shared chunk.
    pub batch: Vec<u8>,
    pub batch_msgs: u32,
}

/// What the caller must tell the channel server.
#[derive(Debug, PartialEq, Eq)]
pub enum Remote {
    None,
    Subscribe,
    Unsubscribe,
}

#[derive(Debug, Default)]
pub struct Topics {
    by_name: HashMap<Box<[u8]>, TopicId>,
    topics: Slab<Topic>,
}

impl Topics {
    pub fn get(&self, id: TopicId) -> &Topic {
        &self.topics[id]
    }

    pub fn get_mut(&mut self, id: TopicId) -> &mut Topic {
        &mut self.topics[id]
    }

    pub fn find(&self, name: &[u8]) -> Option<TopicId> {
        self.by_name.get(name).copied()
    }

    /// Topics with at least one local subscriber.
    pub fn active(&self) -> usize {
        self.topics.iter().filter(|(_, t)| !t.subscribers.is_empty()).count()
    }

    /// Adds `conn`. Returns the topic, whether `conn` is subscribed already
    /// (acknowledged: reply at once) and what to send to the channel server.
    pub fn subscribe(&mut self, name: &[u8], conn: usize) -> (TopicId, bool, Remote) {
        let id = match self.find(name) {
            Some(id) => id,
            None => {
                let id = self.topics.insert(Topic {
                    name: name.into(),
                    subscribers: IndexSet::new(),
                    waiting: IndexSet::new(),
                    remote: false,
                    acks_pending: 0,
                    batch: Vec::new(),
                    batch_msgs: 0,
                });
                self.by_name.insert(name.into(), id);
                id
            }
        };
        let t = &mut self.topics[id];
        let mut remote = Remote::None;
        if !t.remote {
            t.remote = true;
            t.acks_pending += 1;
            remote = Remote::Subscribe;
        }
        if t.acks_pending == 0 {
            t.subscribers.insert(conn);
            (id, true, remote)
        } else {
            t.waiting.insert(conn);
            (id, false, remote)
        }
    }

    /// Removes `conn` from the topic. Returns what to send to the channel server.
    pub fn unsubscribe(&mut self, id: TopicId, conn: usize) -> Remote {
        let t = &mut self.topics[id];
        t.subscribers.swap_remove(&conn);
        t.waiting.swap_remove(&conn);
        let mut remote = Remote::None;
        if t.subscribers.is_empty() && t.waiting.is_empty() && t.remote {
            t.remote = false;
            remote = Remote::Unsubscribe;
        }
        self.collect(id);
        remote
    }

    /// The channel server acknowledged a SUB. Returns the topic and the
    /// connections now subscribed that must be told so.
    pub fn acknowledge(&mut self, name: &[u8]) -> Option<(TopicId, Vec<usize>)> {
        let id = self.find(name)?;
        let t = &mut self.topics[id];
        t.acks_pending = t.acks_pending.saturating_sub(1);
        let mut confirmed = Vec::new();
        if t.acks_pending == 0 && t.remote {
            confirmed = std::mem::take(&mut t.waiting).into_iter().collect();
            t.subscribers.extend(&confirmed);
        }
        self.collect(id);
        Some((id, confirmed))
    }

    /// The channel server refused a SUB (one of its limits). If it answers
    /// the latest SUB, the topic is not subscribed: returns the connections
    /// that wanted it (waiting or, after a relink, subscribed), to be told.
    pub fn refuse(&mut self, name: &[u8]) -> Option<(TopicId, Vec<usize>)> {
        let id = self.find(name)?;
        let t = &mut self.topics[id];
        t.acks_pending = t.acks_pending.saturating_sub(1);
        let mut refused = Vec::new();
        if t.acks_pending == 0 && t.remote {
            t.remote = false;
            refused = std::mem::take(&mut t.waiting).into_iter().collect();
            refused.extend(std::mem::take(&mut t.subscribers));
        }
        self.collect(id);
        Some((id, refused))
    }

    /// A new link: the topics to subscribe again. Acknowledgements owed on the
    /// old link will never come.
    pub fn relink(&mut self) -> Vec<TopicId> {
        let mut resubscribe = Vec::new();
        let mut empty = Vec::new();
        for (id, t) in self.topics.iter_mut() {
            t.acks_pending = u32::from(t.remote);
            if t.remote {
                resubscribe.push(id);
            } else {
                empty.push(id);
            }
        }
        empty.into_iter().for_each(|id| self.collect(id));
        resubscribe
    }

    pub fn iter(&self) -> impl Iterator<Item = &Topic> {
        self.topics.iter().map(|(_, t)| t)
    }

    /// Adds a topic restored by a handoff.
    pub(super) fn insert(&mut self, t: Topic) -> TopicId {
        let name = t.name.clone();
        let id = self.topics.insert(t);
        self.by_name.insert(name, id);
        id
    }

    /// Forgets a topic nobody wants and nothing is owed for.
    fn collect(&mut self, id: TopicId) {
        let t = &self.topics[id];
        if !t.remote && t.acks_pending == 0 && t.subscribers.is_empty() && t.waiting.is_empty() {
            let t = self.topics.remove(id);
            self.by_name.remove(&t.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_remote_subscription_for_many_connections() {
        let mut t = Topics::default();
        assert_eq!(t.subscribe(b"a", 1), (0, false, Remote::Subscribe));
        assert_eq!(t.subscribe(b"a", 2), (0, false, Remote::None));
        assert_eq!(t.acknowledge(b"a"), Some((0, vec![1, 2])));
        assert_eq!(t.subscribe(b"a", 3), (0, true, Remote::None));
        assert_eq!(t.unsubscribe(0, 1), Remote::None);
        assert_eq!(t.unsubscribe(0, 2), Remote::None);
        assert_eq!(t.unsubscribe(0, 3), Remote::Unsubscribe);
        assert_eq!(t.find(b"a"), None);
    }

    #[test]
    fn resubscribe_waits_for_the_latest_ack() {
        let mut t = Topics::default();
        t.subscribe(b"a", 1); // SUB #1 in flight
        assert_eq!(t.unsubscribe(0, 1), Remote::Unsubscribe);
        let (id, now, remote) = t.subscribe(b"a", 2); // SUB #2
        assert_eq!((now, remote), (false, Remote::Subscribe));
        // The ack of SUB #1 must not confirm: UNSUB was processed after it.
        assert_eq!(t.acknowledge(b"a"), Some((id, vec![])));
        assert_eq!(t.acknowledge(b"a"), Some((id, vec![2])));
    }

    #[test]
    fn a_refused_sub_refuses_who_waits_for_it() {
        let mut t = Topics::default();
        t.subscribe(b"a", 1);
        t.subscribe(b"a", 2);
        assert_eq!(t.refuse(b"a"), Some((0, vec![1, 2])));
        assert_eq!(t.find(b"a"), None);
        // An answer to an earlier SUB: the latest is still owed one.
        t.subscribe(b"b", 1);
        t.unsubscribe(0, 1);
        t.subscribe(b"b", 2);
        assert_eq!(t.refuse(b"b"), Some((0, vec![])));
        assert_eq!(t.acknowledge(b"b"), Some((0, vec![2])));
    }

    #[test]
    fn relink_resubscribes_wanted_topics() {
        let mut t = Topics::default();
        t.subscribe(b"a", 1);
        t.acknowledge(b"a");
        t.subscribe(b"b", 2); // never acknowledged: the link died
        assert_eq!(t.relink().len(), 2);
        assert_eq!(t.acknowledge(b"b").unwrap().1, vec![2]);
    }
}
