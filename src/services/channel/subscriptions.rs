//! Which worker links subscribe to which topic, by the store's topic id: a
//! publish is looked up by name once (the store's append), and the links it
//! goes to are an index away.

use smallvec::SmallVec;

use crate::store::TopicId;

/// The links of one topic: most topics have one or two (a link per worker
/// that has subscribers), kept inline so that forwarding a message does not
/// follow a pointer to another cache line per topic.
type Links = SmallVec<[usize; 2]>;

#[derive(Default)]
pub(super) struct Subscriptions {
    /// The links of each topic, indexed by topic id (empty: none).
    links: Vec<Links>,
    /// Topics with at least one link.
    topics: usize,
}

impl Subscriptions {
    /// The links subscribed to `t`.
    pub fn links(&self, t: TopicId) -> &[usize] {
        self.links.get(t as usize).map_or(&[], Links::as_slice)
    }

    /// Topics with at least one link.
    pub fn topics(&self) -> usize {
        self.topics
    }

    /// Adds link `key` to `t` (the caller checks it is not there yet).
    /// Returns true if `t` had no link before (the store must hold it).
    pub fn add(&mut self, t: TopicId, key: usize) -> bool {
        let i = t as usize;
        if self.links.len() <= i {
            self.links.resize_with(i + 1, Links::new);
        }
        let first = self.links[i].is_empty();
        self.topics += usize::from(first);
        self.links[i].push(key);
        first
    }

    /// Removes link `key` from `t`. Returns true if that was its last link
    /// (the store may release it).
    pub fn remove(&mut self, t: TopicId, key: usize) -> bool {
        let Some(links) = self.links.get_mut(t as usize) else { return false };
        let before = links.len();
        links.retain(|k| *k != key);
        let last = before > 0 && links.is_empty();
        if last {
            self.topics -= 1;
            *links = Links::new(); // give the memory back: most topics are short-lived or quiet
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_topics_with_links() {
        let mut s = Subscriptions::default();
        assert_eq!(s.links(7), &[] as &[usize]);
        assert!(s.add(7, 1));
        assert!(!s.add(7, 2));
        assert!(s.add(2, 1));
        assert_eq!((s.links(7), s.topics()), (&[1, 2][..], 2));
        assert!(!s.remove(7, 1));
        assert!(!s.remove(7, 9));
        assert_eq!((s.links(7), s.topics()), (&[2][..], 2));
        assert!(s.remove(7, 2));
        assert!(!s.remove(7, 2));
        assert!(!s.remove(40, 2));
        assert_eq!((s.links(7), s.topics()), (&[] as &[usize], 1));
    }
}
