//! What a client's commands do: a parsed line in, replies queued and frames
//! for the channel server queued out. No socket I/O here.

use std::collections::HashSet;

use super::topics::{Remote, TopicId};
use super::PubSub;
use crate::config::MAX_SUBSCRIPTIONS;
use crate::protocol::command::{self, Command};
use crate::protocol::frame::Frame;
use crate::protocol::line::Line;
use crate::protocol::reply;

impl PubSub {
    pub(super) fn on_line(&mut self, key: usize, line: Line<'_>) {
        if self.clients.slab[key].closing {
            return; // after quit: ignore the rest
        }
        let text = match line {
            Line::TooLong => return self.clients.error(key, &reply::line_too_long(self.max_line)),
            Line::Text(t) => t,
        };
        let cmd = match command::parse(text) {
            Ok(Some(cmd)) => cmd,
            Ok(None) => return,
            Err(msg) => return self.clients.error(key, &msg),
        };
        match cmd {
            Command::Publish(message) => {
                let topic = std::mem::take(&mut self.default_topic);
                self.publish(&topic, message);
                self.default_topic = topic;
            }
            Command::Pub { topic, message } => self.publish(topic, message),
            Command::Subscribe(topics) if topics.is_empty() => {
                let topic = self.default_topic.clone();
                self.subscribe(key, [topic.as_slice()].into_iter());
            }
            Command::Subscribe(topics) => self.subscribe(key, topics.iter()),
            Command::Unsubscribe(topics) if topics.is_empty() => {
                let all: Vec<Vec<u8>> =
                    self.clients.slab[key].topics.iter().map(|id| self.topics.get(*id).name.to_vec()).collect();
                if all.is_empty() {
                    self.clients.error(key, reply::NOT_SUBSCRIBED_ANY);
                }
                self.unsubscribe(key, all.iter().map(|t| t.as_slice()));
            }
            Command::Unsubscribe(topics) => self.unsubscribe(key, topics.iter()),
            Command::Ping => self.clients.reply(key, &[reply::PONG]),
            Command::Help => self.clients.reply(key, &[reply::HELP]),
            Command::Quit => {
                self.clients.reply(key, &[reply::BYE]);
                self.clients.close_soon(key);
            }
        }
    }

    fn publish(&mut self, topic: &[u8], message: &[u8]) {
        self.link.publish(topic, message);
        self.clients.counters.msgs_in += 1;
    }

    fn subscribe<'a>(&mut self, key: usize, names: impl Iterator<Item = &'a [u8]> + Clone) {
        let c = &self.clients.slab[key];
        let has = |name: &[u8]| c.topics.iter().any(|id| *self.topics.get(*id).name == *name);
        // A topic named twice is one subscription.
        let new: HashSet<&[u8]> = names.clone().filter(|n| !has(n)).collect();
        if c.topics.len() + new.len() > MAX_SUBSCRIPTIONS {
            return self.clients.error(key, &reply::too_many_subscriptions(MAX_SUBSCRIPTIONS));
        }
        for name in names {
            if self.clients.slab[key].topics.iter().any(|id| *self.topics.get(*id).name == *name) {
                self.clients.reply(key, &reply::subscribed(name));
                continue;
            }
            let (id, confirmed, remote) = self.topics.subscribe(name, key);
            self.clients.slab[key].topics.push(id);
            if remote == Remote::Subscribe {
                self.link.control(Frame::Sub(name));
            }
            if confirmed {
                self.clients.reply(key, &reply::subscribed(name));
            } else {
                self.clients.hold(key, name);
            }
        }
    }

    fn unsubscribe<'a>(&mut self, key: usize, names: impl Iterator<Item = &'a [u8]>) {
        for name in names {
            let c = &mut self.clients.slab[key];
            let Some(pos) = c.topics.iter().position(|id| *self.topics.get(*id).name == *name) else {
                self.clients.error(key, &reply::not_subscribed(name));
                continue;
            };
            let id = c.topics.swap_remove(pos);
            // Still unconfirmed: its OK goes out now, before the unsubscribe's.
            self.clients.confirm(key, name);
            self.leave(id, key);
            self.clients.reply(key, &reply::unsubscribed(name));
        }
    }

    /// Removes a client from a topic, unsubscribing the worker if it was the last.
    pub(super) fn leave(&mut self, id: TopicId, key: usize) {
        let name = self.topics.get(id).name.clone();
        if self.topics.unsubscribe(id, key) == Remote::Unsubscribe {
            self.link.control(Frame::Unsub(&name));
        }
    }
}
