//! The NATS side of a worker's bus link (`--bus nats://…`): the servers to try
//! in turn (those given, then those the cluster advertises), the worker's one
//! subscription per topic (a sid each), and the PINGs whose PONGs say that a
//! SUB is in effect on the server. No I/O: the link owns the socket and the
//! output queue.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, ToSocketAddrs};

use log::{error, warn};
use serde::{Deserialize, Serialize};

use super::link::BusEvent;
use crate::protocol::nats::{self, Auth, Op};
use crate::protocol::read_buf::ReadBuf;

/// What changes while connected, and travels to a successor on reload.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Session {
    /// Servers the cluster advertised (`host:port`) beyond those given.
    advertised: Vec<String>,
    /// Index of the next server to try, in the given then advertised ones.
    next: usize,
    /// The server connected to (or being connected to).
    server: String,
    max_payload: usize,
    /// The current subscription of each topic.
    sids: HashMap<Vec<u8>, u64>,
    next_sid: u64,
    /// What each PING in flight is for, in order: the topic it confirms, or
    /// nothing (a PING asking whether the server is alive).
    acks: VecDeque<Option<Vec<u8>>>,
    /// The server's INFO has arrived on this connection.
    greeted: bool,
}

pub struct NatsBus {
    /// The servers given (`host:port`), in order.
    urls: Vec<String>,
    auth: Auth,
    /// Our name in the server's monitoring: `<server name>[<pid>]`.
    name: String,
    s: Session,
    pub input: ReadBuf,
    /// Bytes of `input` parsed into the last event, consumed at the next call.
    parsed: usize,
    /// Reused for each subject.
    subject: Vec<u8>,
}

impl NatsBus {
    pub fn new(urls: Vec<String>, auth: Auth, name: String) -> NatsBus {
        let s = Session { max_payload: nats::DEFAULT_MAX_PAYLOAD, ..Session::default() };
        NatsBus { urls, auth, name, s, input: ReadBuf::default(), parsed: 0, subject: Vec::new() }
    }

    /// The server connected to, for `status`.
    pub fn server(&self) -> &str {
        &self.s.server
    }

    /// The next server to try: each given one, then each advertised one, in
    /// turn. `None` if its name does not resolve (logged; the next try takes
    /// the next server).
    pub fn next_server(&mut self) -> Option<SocketAddr> {
        let all = self.urls.len() + self.s.advertised.len();
        let i = self.s.next % all;
        self.s.next = (i + 1) % all;
        self.s.server = match self.urls.get(i) {
            Some(u) => u.clone(),
            None => self.s.advertised[i - self.urls.len()].clone(),
        };
        match self.s.server.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(addr)) => Some(addr),
            Ok(None) => None,
            Err(e) => {
                warn!("NATS server {}: {e}", self.s.server);
                None
            }
        }
    }

    /// What opens a connection: CONNECT, then a SUB (and a PING to confirm
    /// it) for each topic. Subscriptions of an earlier connection are gone.
    pub fn hello<'a>(&mut self, topics: impl IntoIterator<Item = &'a [u8]>, out: &mut Vec<u8>) {
        self.input = ReadBuf::default();
        self.parsed = 0;
        self.s.sids.clear();
        self.s.acks.clear();
        self.s.greeted = false;
        nats::connect(out, &self.name, &self.auth);
        for topic in topics {
            self.subscribe(topic, out);
        }
    }

    /// SUB, and a PING: its PONG comes once the server has the subscription.
    pub fn subscribe(&mut self, topic: &[u8], out: &mut Vec<u8>) {
        let sid = self.s.next_sid;
        self.s.next_sid += 1;
        self.s.sids.insert(topic.to_vec(), sid);
        self.subject.clear();
        nats::subject(topic, &mut self.subject);
        nats::sub(out, &self.subject, sid);
        out.extend_from_slice(nats::PING);
        self.s.acks.push_back(Some(topic.to_vec()));
    }

    /// A PING asking whether the server is alive (its PONG confirms nothing).
    pub fn ping(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(nats::PING);
        self.s.acks.push_back(None);
    }

    pub fn unsubscribe(&mut self, topic: &[u8], out: &mut Vec<u8>) {
        if let Some(sid) = self.s.sids.remove(topic) {
            nats::unsub(out, sid);
        }
    }

    /// Refuses a message the server would refuse (it would close the
    /// connection): the text of the publisher's `ERR` line.
    pub fn check_publish(&self, message: &[u8]) -> Result<(), String> {
        match message.len() > self.s.max_payload {
            true => Err(format!("message too large for the NATS bus (max_payload {} bytes)", self.s.max_payload)),
            false => Ok(()),
        }
    }

    pub fn publish(&mut self, topic: &[u8], message: &[u8], out: &mut Vec<u8>) {
        self.subject.clear();
        nats::subject(topic, &mut self.subject);
        nats::publish(out, &self.subject, message);
    }

    /// The next event in what has been read, or `None` until more arrives.
    pub fn next_event(&mut self) -> Result<Option<BusEvent<'_>>, nats::Error> {
        self.input.consume(std::mem::take(&mut self.parsed));
        let Some((op, n)) = nats::parse(self.input.unparsed(), self.s.max_payload)? else {
            return Ok(None);
        };
        self.parsed = n;
        let s = &mut self.s;
        Ok(Some(match op {
            Op::Msg { subject, payload, .. } => match nats::topic(subject) {
                Some(topic) => BusEvent::Message { topic, message: payload },
                None => BusEvent::Nothing,
            },
            Op::Pong => match s.acks.pop_front().flatten() {
                Some(topic) => BusEvent::Subscribed(Cow::Owned(topic)),
                None => BusEvent::Nothing,
            },
            Op::Ping => BusEvent::Ping,
            Op::Info(info) => s.learn(*info, &self.urls),
            Op::Ok => BusEvent::Nothing,
            Op::Err(why) => {
                // The server closes the connection after most errors: the link
                // then reconnects.
                let why = String::from_utf8_lossy(why);
                let hint = match why.contains("Authorization") {
                    true => {
                        " (check --bus-credentials or FANOUT_NATS_TOKEN / FANOUT_NATS_USER and FANOUT_NATS_PASSWORD)"
                    }
                    false => "",
                };
                error!("NATS server {} says: {why}{hint}", s.server);
                BusEvent::Nothing
            }
        }))
    }

    /// Bytes received and not yet parsed, for a successor.
    pub fn unparsed(&self) -> &[u8] {
        &self.input.unparsed()[self.parsed..]
    }

    pub fn export(&self) -> Session {
        self.s.clone()
    }

    /// Carries on the session of a predecessor, with the bytes it had read.
    pub fn adopt(&mut self, s: Session, unparsed: Vec<u8>) {
        self.s = s;
        self.adopt_input(unparsed);
    }

    /// Takes the bytes a predecessor had read and not parsed.
    pub fn adopt_input(&mut self, unparsed: Vec<u8>) {
        self.input = ReadBuf::with_bytes(unparsed);
        self.parsed = 0;
    }
}

impl Session {
    /// An INFO: the server's limits, and the cluster's other servers.
    fn learn(&mut self, info: nats::Info, given: &[String]) -> BusEvent<'static> {
        self.max_payload = info.max_payload;
        for url in info.connect_urls {
            if !given.contains(&url) && !self.advertised.contains(&url) {
                self.advertised.push(url);
            }
        }
        match std::mem::replace(&mut self.greeted, true) {
            false => BusEvent::Up,
            true => BusEvent::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus() -> NatsBus {
        NatsBus::new(vec!["127.0.0.1:4222".into(), "127.0.0.1:4223".into()], Auth::None, "test[1]".into())
    }

    fn feed(b: &mut NatsBus, bytes: &[u8]) -> Vec<String> {
        let mut src = bytes;
        b.input.read_from(&mut src).unwrap();
        let mut out = Vec::new();
        while let Some(ev) = b.next_event().unwrap() {
            out.push(format!("{ev:?}"));
        }
        out
    }

    #[test]
    fn subscriptions_are_confirmed_by_pongs_in_order() {
        let mut b = bus();
        let mut out = Vec::new();
        b.hello([&b"a.b"[..], b"c"], &mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with("CONNECT {"), "{text}");
        assert!(text.ends_with("\r\nSUB fanout.a%2Eb 0\r\nPING\r\nSUB fanout.c 1\r\nPING\r\n"), "{text}");
        let info = b"INFO {\"max_payload\":10,\"connect_urls\":[\"10.0.0.9:4222\"]}\r\n";
        let events = feed(&mut b, &[&info[..], b"PONG\r\nMSG fanout.a%2Eb 0 2\r\nhi\r\nPONG\r\nPING\r\n"].concat());
        let want = [
            "Up",
            "Subscribed([97, 46, 98])",
            "Message { topic: [97, 46, 98], message: [104, 105] }",
            "Subscribed([99])",
            "Ping",
        ];
        assert_eq!(events, want);
        assert!(b.check_publish(&[0; 10]).is_ok());
        assert!(b.check_publish(&[0; 11]).unwrap_err().contains("max_payload 10"));
        out.clear();
        b.unsubscribe(b"c", &mut out);
        b.unsubscribe(b"never", &mut out);
        assert_eq!(out, b"UNSUB 1\r\n");
    }

    #[test]
    fn servers_given_then_advertised_in_turn() {
        let mut b = bus();
        let mut tried = Vec::new();
        for _ in 0..2 {
            b.next_server();
            tried.push(b.server().to_owned());
        }
        feed(&mut b, b"INFO {\"connect_urls\":[\"127.0.0.1:4223\",\"127.0.0.1:4224\"]}\r\n");
        for _ in 0..3 {
            b.next_server();
            tried.push(b.server().to_owned());
        }
        assert_eq!(tried, ["127.0.0.1:4222", "127.0.0.1:4223", "127.0.0.1:4222", "127.0.0.1:4223", "127.0.0.1:4224"]);
    }

    #[test]
    fn session_and_unparsed_bytes_travel() {
        let mut b = bus();
        b.hello([&b"t"[..]], &mut Vec::new());
        feed(&mut b, b"INFO {}\r\nMSG fanout.t 0 5\r\nhe");
        let (s, rest) = (b.export(), b.unparsed().to_vec());
        let mut next = bus();
        next.adopt(s, rest);
        let mut src = &b"llo\r\nPONG\r\n"[..];
        next.input.read_from(&mut src).unwrap();
        let mut events = Vec::new();
        while let Some(ev) = next.next_event().unwrap() {
            events.push(format!("{ev:?}"));
        }
        assert_eq!(events, ["Message { topic: [116], message: [104, 101, 108, 108, 111] }", "Subscribed([116])"]);
    }
}
