//! What a client's commands do: a parsed line in, replies queued and frames
//! for the channel server queued out. No socket I/O here.

use std::collections::HashSet;

use super::link::{Asker, Confirm};
use super::topics::{Remote, TopicId};
use super::PubSub;
use crate::config::MAX_SUBSCRIPTIONS;
use crate::protocol::command::{self, Command};
use crate::protocol::frame::Frame;
use crate::protocol::line::Line;
use crate::protocol::reply;
use crate::protocol::websocket::code;

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
        if self.link.nats.is_some() && command::numbered(&cmd) {
            // Numbers, retention and confirms are the channel server's.
            return self.clients.error(key, reply::NOT_ON_NATS);
        }
        match cmd {
            Command::Publish(message) => {
                let topic = std::mem::take(&mut self.default_topic);
                self.publish(key, &topic, message);
                self.default_topic = topic;
            }
            Command::Pub { topic, message } => self.publish(key, topic, message),
            Command::Subscribe(topics) if topics.is_empty() => {
                let topic = self.default_topic.clone();
                self.subscribe(key, [topic.as_slice()].into_iter(), 0);
            }
            Command::Subscribe(topics) => self.subscribe(key, topics.iter(), 0),
            Command::Resume { topic, from } => {
                if self.clients.slab[key].topics.iter().any(|id| *self.topics.get(*id).name == *topic) {
                    let why = format!("already subscribed to '{}' (unsubscribe first)", String::from_utf8_lossy(topic));
                    return self.clients.error(key, &why);
                }
                self.subscribe(key, [topic].into_iter(), from);
            }
            Command::History { topic, n } => {
                self.ask(key, topic, |req| Frame::Fetch { req, from: 0, limit: n, topic });
            }
            Command::Info(topic) => self.ask(key, topic, |req| Frame::Info { req, topic }),
            Command::Seq(on) => {
                self.clients.slab[key].seq = on;
                self.clients.reply(key, &[&reply::switched("seq", on)]);
            }
            Command::Confirm(on) => {
                self.clients.slab[key].confirm = on;
                self.clients.reply(key, &[&reply::switched("confirm", on)]);
            }
            Command::Unsubscribe(topics) if topics.is_empty() => {
                let all: Vec<Vec<u8>> =
                    self.clients.slab[key].topics.iter().map(|id| self.topics.get(*id).name.to_vec()).collect();
                if all.is_empty() {
                    self.clients.error(key, reply::NOT_SUBSCRIBED_ANY);
                }
                self.unsubscribe(key, all.iter().map(|t| t.as_slice()));
            }
            Command::Unsubscribe(topics) => self.unsubscribe(key, topics.iter()),
            cmd @ (Command::Enqueue { .. }
            | Command::Consume { .. }
            | Command::Unconsume(_)
            | Command::Settle { .. }
            | Command::Queues) => self.queue_command(key, cmd),
            Command::Ping => self.clients.reply(key, &[reply::PONG]),
            Command::Help => self.clients.reply(key, &[reply::HELP]),
            Command::Quit => {
                self.clients.reply(key, &[reply::BYE]);
                self.clients.close_with(key, code::NORMAL, "bye");
            }
        }
    }

    fn publish(&mut self, key: usize, topic: &[u8], message: &[u8]) {
        let c = &self.clients.slab[key];
        let (want, id) = (c.confirm, c.id);
        let confirm = want.then(|| Confirm { key, id, token: self.token() });
        if let Some(confirm) = confirm {
            self.clients.slab[key].replies.hold_answer(confirm.token);
        }
        match self.link.publish(topic, message, confirm) {
            Ok(()) => self.clients.counters.msgs_in += 1,
            Err(why) => self.clients.error(key, &why),
        }
    }

    /// A token for an answer that comes later.
    pub(super) fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Asks the channel server (`history`, `info`); the answer takes its
    /// place among the client's replies when it comes.
    fn ask<'a>(&mut self, key: usize, topic: &'a [u8], frame: impl FnOnce(u32) -> Frame<'a>) {
        let (id, token) = (self.clients.slab[key].id, self.token());
        let asker = Asker::Client { key, id, token, topic: topic.into() };
        match self.link.request(asker, frame) {
            Some(_) => self.clients.slab[key].replies.hold_answer(token),
            None => self.clients.error(key, reply::LINK_DOWN),
        }
    }

    /// Subscribes to each topic, live (`from` 0) or from a number (`resume`).
    fn subscribe<'a>(&mut self, key: usize, names: impl Iterator<Item = &'a [u8]> + Clone, from: u64) {
        let c = &self.clients.slab[key];
        let has = |name: &[u8]| self.topics.find(name).is_some_and(|id| c.topics.contains(&id));
        // A topic named twice is one subscription.
        let new: HashSet<&[u8]> = names.clone().filter(|n| !has(n)).collect();
        if c.topics.len() + new.len() > MAX_SUBSCRIPTIONS {
            return self.clients.error(key, &reply::too_many_subscriptions(MAX_SUBSCRIPTIONS));
        }
        for name in names {
            let c = &self.clients.slab[key];
            if self.topics.find(name).is_some_and(|id| c.topics.contains(&id)) {
                self.clients.reply(key, &reply::subscribed(name));
                continue;
            }
            let (id, confirmed, remote) = self.topics.subscribe(name, key, from);
            self.clients.slab[key].topics.insert(id);
            if remote == Remote::Subscribe {
                let from = self.topics.get(id).next;
                self.link.control(Frame::Sub { from, topic: name });
            }
            if confirmed {
                match from {
                    0 => self.clients.reply(key, &reply::subscribed(name)),
                    n => self.clients.reply(key, &[&reply::subscribed_from(name, n)]),
                }
                self.topics.place(id, key, from);
                self.batches.behind(id);
            } else {
                self.clients.hold(key, name, from);
            }
        }
    }

    fn unsubscribe<'a>(&mut self, key: usize, names: impl Iterator<Item = &'a [u8]>) {
        for name in names {
            let c = &mut self.clients.slab[key];
            let Some(id) = self.topics.find(name).filter(|id| c.topics.swap_remove(id)) else {
                self.clients.error(key, &reply::not_subscribed(name));
                continue;
            };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PubSubConfig;
    use crate::protocol::frame::FrameReader;
    use crate::runtime::event_loop::Service;

    /// A pub/sub service with one client (key 0), driven without a channel
    /// server: the client's socket is one end of a loopback pair, the link is
    /// never connected, and the frames it would receive are put in its reader.
    fn service_with_client() -> (PubSub, mio::Poll, std::net::TcpStream) {
        let cfg = PubSubConfig {
            channel: "127.0.0.1:9".parse().unwrap(),
            nats: Vec::new(),
            bus_credentials: None,
            topic: "topic1".into(),
            max_line: 1024,
            max_send_queue: 1 << 20,
            lagging: crate::config::Lagging::Gap,
            max_link_buffer: 4 << 20,
            secret_file: None,
        };
        let mut svc = PubSub::new("Test", cfg, Vec::new(), None);
        let poll = mio::Poll::new().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let far = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (near, peer) = listener.accept().unwrap();
        near.set_nonblocking(true).unwrap();
        svc.accept(poll.registry(), mio::net::TcpStream::from_std(near), peer);
        svc.silent(0); // it waits for the welcome: a line client
        (svc, poll, far)
    }

    fn type_line(svc: &mut PubSub, text: &str) {
        svc.on_line(0, Line::Text(text.as_bytes()));
    }

    /// What the client has queued, and not yet been sent, as text.
    fn queued(svc: &PubSub) -> String {
        String::from_utf8(svc.clients.slab[0].out.parts().0).unwrap()
    }

    /// The channel server sends these frames.
    fn receive(svc: &mut PubSub, frames: &[Frame<'_>]) {
        let mut bytes = Vec::new();
        frames.iter().for_each(|f| f.encode(&mut bytes));
        svc.link.reader = FrameReader::with_bytes(bytes);
        svc.batches.on_frames(&mut svc.link, &mut svc.topics, &mut svc.clients).unwrap();
    }

    #[test]
    fn replies_follow_the_commands_and_wait_for_confirmations() {
        let (mut svc, _poll, _far) = service_with_client();
        type_line(&mut svc, "sub a b");
        type_line(&mut svc, "ping");
        assert_eq!(queued(&svc), "Welcome to Test\n");
        receive(&mut svc, &[Frame::SubAck { next: 1, topic: b"a" }]);
        assert_eq!(queued(&svc), "Welcome to Test\nOK subscribed a\n");
        // A message for a confirmed topic is delivered; b is still unconfirmed.
        receive(&mut svc, &[Frame::Msg { seq: 1, topic: b"a", message: b"x" }, Frame::SubAck { next: 1, topic: b"b" }]);
        assert_eq!(queued(&svc), "Welcome to Test\nOK subscribed a\nReceived [a]: x\nOK subscribed b\nPONG\n");
        // Subscribing again is answered at once; unsubscribing from all names each.
        type_line(&mut svc, "SUBSCRIBE a");
        type_line(&mut svc, "unsub");
        assert!(queued(&svc).ends_with("PONG\nOK subscribed a\nOK unsubscribed a\nOK unsubscribed b\n"));
        assert_eq!((svc.topics.find(b"a"), svc.topics.find(b"b")), (None, None), "nothing left to track");
        type_line(&mut svc, "unsub");
        assert!(queued(&svc).ends_with("ERR not subscribed to any topic\n"));
    }

    #[test]
    fn publishes_go_to_the_link_and_bad_commands_get_one_err_line() {
        let (mut svc, _poll, _far) = service_with_client();
        type_line(&mut svc, "publish hello  world");
        type_line(&mut svc, "pub t2 x");
        assert_eq!(svc.clients.counters.msgs_in, 2);
        let mut frames = FrameReader::with_bytes(svc.link.out.parts().0);
        let mut got = Vec::new();
        while let Some(f) = frames.next_frame().unwrap() {
            got.push(format!("{f:?}"));
        }
        let want = [
            Frame::Publish { confirm: false, topic: b"topic1", message: b"hello  world" },
            Frame::Publish { confirm: false, topic: b"t2", message: b"x" },
        ];
        assert_eq!(got, want.map(|f| format!("{f:?}")));
        type_line(&mut svc, "frobnicate");
        let many = (0..=MAX_SUBSCRIPTIONS).map(|i| format!("t{i}")).collect::<Vec<_>>().join(" ");
        type_line(&mut svc, &format!("sub {many}"));
        svc.on_line(0, Line::TooLong);
        let lines: Vec<String> = queued(&svc).lines().skip(1).map(String::from).collect();
        assert_eq!(
            lines,
            [
                "ERR unknown command 'frobnicate' (type help for the list)",
                "ERR too many subscriptions (max 1024 per connection)",
                "ERR line too long (max 1024 bytes)",
            ]
        );
        assert_eq!(svc.topics.iter().count(), 0, "a refused subscribe is refused whole");
    }
}
