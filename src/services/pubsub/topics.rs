//! A worker's topics: which of its connections subscribe to what, and the
//! state of each topic's subscription at the channel server.
//!
//! A worker subscribes to a topic at the channel server once, however many of
//! its connections want it, and unsubscribes when the last one leaves. A
//! connection is told `OK subscribed` only once the channel server has
//! acknowledged, so a publish made after that line reaches it.

use std::hash::BuildHasher;

use hashbrown::HashTable;
use indexmap::{IndexMap, IndexSet};
use slab::Slab;
use smallvec::SmallVec;

pub type TopicId = usize;

/// The fields read for every message come first, the subscribers last of
/// them, so that a message touches three cache lines of its topic (name and
/// batch; next, index and the set's list; the set's count); `repr(C)` keeps
/// that order and `align` the lines' bounds. With 1000 topics in turn, each
/// line touched is a cache miss, in gathering and again in delivering.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct Topic {
    /// Inline up to 24 bytes: `Topics::find` compares it on every message,
    /// and a name of its own allocation would be one more cache miss there.
    pub name: SmallVec<[u8; 24]>,
    /// Lines received for this topic in the current read of the link, delivered
    /// to every subscriber as one shared chunk.
    pub batch: Vec<u8>,
    /// The number of the next message the link brings (0: not known yet).
    pub next: u64,
    /// Each message of the batch: its number and where it lies in `batch`,
    /// so that the `#seq` form is encoded only if a subscriber wants it.
    pub batch_index: Vec<(u64, u32, u32)>,
    /// Connections receiving this topic live. Sets, so that a connection
    /// leaves a topic of 100 000 subscribers in constant time; iterated as
    /// densely as a list for the fan-out.
    pub subscribers: IndexSet<usize>,
    /// Connections waiting for the channel server's acknowledgement, each
    /// with the number to start from (0: live, as `subscribe`).
    pub waiting: IndexMap<usize, u64>,
    /// Connections that are positions in the retained messages rather than
    /// live: they resumed from a number, or fell behind.
    pub cursors: Vec<Cursor>,
    /// A SUB has been sent since the last UNSUB (on this link).
    pub(super) remote: bool,
    /// SUBs sent on this link not yet acknowledged.
    pub(super) acks_pending: u32,
}

/// Readers of one topic at one position, fed from the retained messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The next number they are owed.
    pub pos: u64,
    pub clients: Vec<usize>,
    /// The FETCH request in flight for them.
    pub fetching: Option<u32>,
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
    /// Topic ids by name, one lookup per message received. The table holds
    /// only ids and compares the names in `topics`, so a lookup touches the
    /// topic it needs anyway and no key allocation of its own (as the store's
    /// `topic_ids`). foldhash, not SipHash: seeded at random per process, and
    /// several times faster on short names.
    by_name: HashTable<TopicId>,
    hasher: foldhash::fast::RandomState,
    topics: Slab<Topic>,
}

impl Topics {
    pub fn get(&self, id: TopicId) -> &Topic {
        &self.topics[id]
    }

    pub fn get_mut(&mut self, id: TopicId) -> &mut Topic {
        &mut self.topics[id]
    }

    pub fn get_opt_mut(&mut self, id: TopicId) -> Option<&mut Topic> {
        self.topics.get_mut(id)
    }

    pub fn find(&self, name: &[u8]) -> Option<TopicId> {
        self.by_name.find(self.hasher.hash_one(name), |&id| *self.topics[id].name == *name).copied()
    }

    /// Topics with at least one local subscriber.
    pub fn active(&self) -> usize {
        self.topics.iter().filter(|(_, t)| !t.subscribers.is_empty()).count()
    }

    /// Adds `conn`, to start at `from` (0: live). Returns the topic, whether
    /// the subscription is in effect already (reply at once, then call
    /// `place`) or waits for the acknowledgement (`acknowledge` returns it),
    /// and what to send to the channel server.
    pub fn subscribe(&mut self, name: &[u8], conn: usize, from: u64) -> (TopicId, bool, Remote) {
        let id = match self.find(name) {
            Some(id) => id,
            None => self.insert(Topic {
                name: SmallVec::from_slice(name),
                subscribers: IndexSet::new(),
                waiting: IndexMap::new(),
                cursors: Vec::new(),
                next: 0,
                remote: false,
                acks_pending: 0,
                batch: Vec::new(),
                batch_index: Vec::new(),
            }),
        };
        let t = &mut self.topics[id];
        let mut remote = Remote::None;
        if !t.remote {
            t.remote = true;
            t.acks_pending += 1;
            remote = Remote::Subscribe;
        }
        if t.acks_pending == 0 {
            (id, true, remote)
        } else {
            t.waiting.insert(conn, from);
            (id, false, remote)
        }
    }

    /// Puts a connection whose subscription is in effect in its place: live,
    /// or a position of its own when it starts elsewhere than the link's next.
    pub fn place(&mut self, id: TopicId, conn: usize, from: u64) {
        let t = &mut self.topics[id];
        if from == 0 || from == t.next {
            t.subscribers.insert(conn);
        } else {
            t.cursors.push(Cursor { pos: from, clients: vec![conn], fetching: None });
        }
    }

    /// The positions at `pos` with no fetch in flight go live.
    pub fn join(&mut self, id: TopicId, pos: u64) {
        let t = &mut self.topics[id];
        let (joined, waiting) =
            std::mem::take(&mut t.cursors).into_iter().partition(|c| c.fetching.is_none() && c.pos == pos);
        t.cursors = waiting;
        for c in joined {
            t.subscribers.extend(c.clients);
        }
    }

    /// Every live subscriber falls behind to the position `pos`, together.
    pub fn all_behind(&mut self, id: TopicId, pos: u64) {
        let t = &mut self.topics[id];
        if !t.subscribers.is_empty() {
            let clients = std::mem::take(&mut t.subscribers).into_iter().collect();
            t.cursors.push(Cursor { pos, clients, fetching: None });
        }
    }

    /// Removes `conn` from the topic. Returns what to send to the channel server.
    pub fn unsubscribe(&mut self, id: TopicId, conn: usize) -> Remote {
        let t = &mut self.topics[id];
        t.subscribers.swap_remove(&conn);
        t.waiting.swap_remove(&conn);
        t.cursors.iter_mut().for_each(|k| k.clients.retain(|c| *c != conn));
        t.cursors.retain(|k| !k.clients.is_empty());
        let mut remote = Remote::None;
        if t.subscribers.is_empty() && t.waiting.is_empty() && t.cursors.is_empty() && t.remote {
            t.remote = false;
            remote = Remote::Unsubscribe;
        }
        self.collect(id);
        remote
    }

    /// The channel server acknowledged a SUB: the link's next message is
    /// `next`. Returns the topic and the connections now subscribed, with
    /// where they start, which must be told so and then placed (`place`).
    /// Live subscribers that the link has to bring earlier numbers than
    /// `next` (after a re-link) fall behind to them.
    pub fn acknowledge(&mut self, name: &[u8], next: u64) -> Option<(TopicId, Vec<(usize, u64)>)> {
        let id = self.find(name)?;
        let t = &mut self.topics[id];
        t.acks_pending = t.acks_pending.saturating_sub(1);
        let mut confirmed = Vec::new();
        if t.acks_pending == 0 && t.remote {
            confirmed = std::mem::take(&mut t.waiting).into_iter().collect();
            let known = t.next;
            if known != 0 && next > known {
                self.all_behind(id, known);
            }
            let t = &mut self.topics[id];
            // A lower next: a restarted server numbers on below what was
            // delivered here; numbers already delivered are skipped.
            t.next = t.next.max(next);
        }
        self.collect(id);
        Some((id, confirmed))
    }

    /// The channel server refused a SUB (one of its limits). If it answers
    /// the latest SUB, the topic is not subscribed: returns the connections
    /// that wanted it (waiting, or after a relink subscribed or positions),
    /// to be told.
    pub fn refuse(&mut self, name: &[u8]) -> Option<(TopicId, Vec<usize>)> {
        let id = self.find(name)?;
        let t = &mut self.topics[id];
        t.acks_pending = t.acks_pending.saturating_sub(1);
        let mut refused = Vec::new();
        if t.acks_pending == 0 && t.remote {
            t.remote = false;
            refused = std::mem::take(&mut t.waiting).into_keys().collect();
            refused.extend(std::mem::take(&mut t.subscribers));
            refused.extend(std::mem::take(&mut t.cursors).into_iter().flat_map(|c| c.clients));
        }
        self.collect(id);
        Some((id, refused))
    }

    /// A new link: the topics to subscribe again (from their next numbers).
    /// Acknowledgements and fetches owed on the old link will never come.
    pub fn relink(&mut self) -> Vec<TopicId> {
        let mut resubscribe = Vec::new();
        let mut empty = Vec::new();
        for (id, t) in self.topics.iter_mut() {
            t.acks_pending = u32::from(t.remote);
            t.cursors.iter_mut().for_each(|c| c.fetching = None);
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

    /// Adds a topic not known yet (new, or restored by a handoff).
    pub(super) fn insert(&mut self, t: Topic) -> TopicId {
        let hash = self.hasher.hash_one(&*t.name);
        let id = self.topics.insert(t);
        let (topics, hasher) = (&self.topics, &self.hasher);
        self.by_name.insert_unique(hash, id, |&id| hasher.hash_one(&*topics[id].name));
        id
    }

    /// Forgets a topic nobody wants and nothing is owed for.
    fn collect(&mut self, id: TopicId) {
        let t = &self.topics[id];
        if !t.remote && t.acks_pending == 0 && t.subscribers.is_empty() && t.waiting.is_empty() && t.cursors.is_empty()
        {
            let t = self.topics.remove(id);
            if let Ok(entry) = self.by_name.find_entry(self.hasher.hash_one(&*t.name), |&x| x == id) {
                entry.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_remote_subscription_for_many_connections() {
        let mut t = Topics::default();
        assert_eq!(t.subscribe(b"a", 1, 0), (0, false, Remote::Subscribe));
        assert_eq!(t.subscribe(b"a", 2, 5), (0, false, Remote::None));
        assert_eq!(t.acknowledge(b"a", 9), Some((0, vec![(1, 0), (2, 5)])));
        t.place(0, 1, 0);
        t.place(0, 2, 5);
        assert_eq!(t.get(0).next, 9);
        assert_eq!((t.get(0).subscribers.len(), t.get(0).cursors.len()), (1, 1), "2 starts at 5: a position");
        assert_eq!(t.subscribe(b"a", 3, 0), (0, true, Remote::None));
        t.place(0, 3, 0);
        assert_eq!(t.unsubscribe(0, 1), Remote::None);
        assert_eq!(t.unsubscribe(0, 2), Remote::None);
        assert_eq!(t.unsubscribe(0, 3), Remote::Unsubscribe);
        assert_eq!(t.find(b"a"), None);
    }

    #[test]
    fn resubscribe_waits_for_the_latest_ack() {
        let mut t = Topics::default();
        t.subscribe(b"a", 1, 0); // SUB #1 in flight
        assert_eq!(t.unsubscribe(0, 1), Remote::Unsubscribe);
        let (id, now, remote) = t.subscribe(b"a", 2, 0); // SUB #2
        assert_eq!((now, remote), (false, Remote::Subscribe));
        // The ack of SUB #1 must not confirm: UNSUB was processed after it.
        assert_eq!(t.acknowledge(b"a", 1), Some((id, vec![])));
        assert_eq!(t.acknowledge(b"a", 1), Some((id, vec![(2, 0)])));
    }

    #[test]
    fn a_refused_sub_refuses_who_waits_for_it() {
        let mut t = Topics::default();
        t.subscribe(b"a", 1, 0);
        t.subscribe(b"a", 2, 0);
        assert_eq!(t.refuse(b"a"), Some((0, vec![1, 2])));
        assert_eq!(t.find(b"a"), None);
        // An answer to an earlier SUB: the latest is still owed one.
        t.subscribe(b"b", 1, 0);
        t.unsubscribe(0, 1);
        t.subscribe(b"b", 2, 0);
        assert_eq!(t.refuse(b"b"), Some((0, vec![])));
        assert_eq!(t.acknowledge(b"b", 1), Some((0, vec![(2, 0)])));
    }

    #[test]
    fn relink_resubscribes_wanted_topics_and_the_live_fall_behind_to_what_they_missed() {
        let mut t = Topics::default();
        t.subscribe(b"a", 1, 0);
        t.acknowledge(b"a", 4);
        t.place(0, 1, 0);
        t.subscribe(b"b", 2, 0); // never acknowledged: the link died
        assert_eq!(t.relink().len(), 2);
        assert_eq!(t.acknowledge(b"b", 1).unwrap().1, vec![(2, 0)]);
        // 3 messages were published on a while the link was down.
        assert_eq!(t.acknowledge(b"a", 7).unwrap().1, vec![]);
        let a = t.get(0);
        assert_eq!((a.next, a.subscribers.len()), (7, 0));
        assert_eq!(a.cursors, [Cursor { pos: 4, clients: vec![1], fetching: None }]);
    }
}
