//! A client connection's input, whatever it speaks. A new connection is
//! sniffed: an HTTP request line makes it HTTP (answered, or upgraded to
//! WebSocket), anything else a line client. From then on its bytes go to the
//! line reader or the WebSocket decoder, and come out as the same command
//! lines. The state is plain data: it travels to a new worker on reload.

use serde::{Deserialize, Serialize};

use super::http::{self, Answer, Sniff};
use super::line::{Line, LineReader};
use super::websocket::{Decoder, Event, Failure};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Input {
    /// Just accepted: the bytes so far of what may be an HTTP request head.
    Sniffing(Vec<u8>),
    Line(LineReader),
    WebSocket(Box<Decoder>),
    /// An HTTP request was answered: what follows is read and dropped.
    Http,
}

impl Default for Input {
    fn default() -> Input {
        Input::Sniffing(Vec::new())
    }
}

/// What the input says, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Item<'a> {
    /// The connection is a line client: greet it.
    Lines,
    /// Send this response, then close.
    Http { status: u16, response: Vec<u8> },
    /// Send this 101: the connection speaks WebSocket from here on (greet it).
    Upgrade(Vec<u8>),
    /// A command line, from a line or from a WebSocket text message.
    Line(Line<'a>),
    /// A WebSocket text message with more than one line in it.
    ManyLines,
    /// A WebSocket ping: answer with a pong.
    Ping(&'a [u8]),
    /// The WebSocket client closed (with its code): answer and close.
    Close(Option<u16>),
    /// The WebSocket client broke the protocol: close with this code.
    Fail(Failure),
}

impl Input {
    /// What `status` and `connections` call it.
    pub fn kind(&self) -> &'static str {
        match self {
            Input::Sniffing(_) => "new",
            Input::Line(_) => "line",
            Input::WebSocket(_) => "ws",
            Input::Http => "http",
        }
    }

    /// Feeds one read (modified in place: telnet bytes stripped, WebSocket
    /// payloads unmasked). Commands are at most `max` bytes; `page` is what
    /// `GET /` returns.
    pub fn feed(&mut self, buf: &mut [u8], max: usize, page: &[u8], on: &mut impl FnMut(Item<'_>)) {
        match self {
            Input::Line(r) => r.feed(buf, max, |line| on(Item::Line(line))),
            Input::WebSocket(d) => d.feed(buf, max, |event| on(ws_item(event))),
            Input::Http => {}
            // The usual first read of a line client is looked at in place.
            Input::Sniffing(head) if head.is_empty() && http::sniff(buf) == Sniff::Line => {
                *self = Input::Line(LineReader::default());
                on(Item::Lines);
                self.feed(buf, max, page, on);
            }
            Input::Sniffing(head) => {
                head.extend_from_slice(buf);
                match http::sniff(head) {
                    Sniff::Undecided => {}
                    Sniff::Line => {
                        let mut first = std::mem::take(head);
                        *self = Input::Line(LineReader::default());
                        on(Item::Lines);
                        self.feed(&mut first, max, page, on);
                    }
                    Sniff::Http => match http::answer(head, page) {
                        None => {} // the head is not whole yet
                        Some((Answer::Close { status, response }, _)) => {
                            *self = Input::Http;
                            on(Item::Http { status, response });
                        }
                        Some((Answer::Upgrade(response), len)) => {
                            // Frames the client sent right after its request.
                            let mut frames = head.split_off(len);
                            *self = Input::WebSocket(Box::default());
                            on(Item::Upgrade(response));
                            self.feed(&mut frames, max, page, on);
                        }
                    },
                }
            }
        }
    }

    /// The time for sniffing is over: a connection that has sent nothing is a
    /// line client waiting for its welcome (an HTTP client sends at once).
    pub fn sniffed_silence(&mut self, on: &mut impl FnMut(Item<'_>)) {
        if matches!(self, Input::Sniffing(head) if head.is_empty()) {
            *self = Input::Line(LineReader::default());
            on(Item::Lines);
        }
    }

    /// Bytes of unfinished input held for this connection.
    pub fn buffered(&self) -> usize {
        match self {
            Input::Sniffing(head) => head.len(),
            Input::Line(r) => r.buffered(),
            Input::WebSocket(d) => d.buffered(),
            Input::Http => 0,
        }
    }
}

/// A WebSocket event as an item: a text message is one command line (one
/// final LF or CRLF is allowed, as a line client would end it).
fn ws_item(event: Event<'_>) -> Item<'_> {
    match event {
        Event::Text(t) => {
            let t = t.strip_suffix(b"\n").map_or(t, |t| t.strip_suffix(b"\r").unwrap_or(t));
            if memchr::memchr(b'\n', t).is_some() {
                Item::ManyLines
            } else {
                Item::Line(Line::Text(t))
            }
        }
        Event::Ping(p) => Item::Ping(p),
        Event::Close(code) => Item::Close(code),
        Event::Fail(why) => Item::Fail(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::websocket::{self, code};

    #[derive(Debug, PartialEq, Eq)]
    enum Owned {
        Lines,
        Http(u16),
        Upgrade,
        Line(Vec<u8>),
        TooLong,
        ManyLines,
        Ping(Vec<u8>),
        Close(Option<u16>),
        Fail(u16),
    }

    fn feed(input: &mut Input, chunks: &[&[u8]]) -> Vec<Owned> {
        let mut out = Vec::new();
        for c in chunks {
            input.feed(&mut c.to_vec(), 64, b"page", &mut |item| {
                out.push(match item {
                    Item::Lines => Owned::Lines,
                    Item::Http { status, .. } => Owned::Http(status),
                    Item::Upgrade(_) => Owned::Upgrade,
                    Item::Line(Line::Text(t)) => Owned::Line(t.to_vec()),
                    Item::Line(Line::TooLong) => Owned::TooLong,
                    Item::ManyLines => Owned::ManyLines,
                    Item::Ping(p) => Owned::Ping(p.to_vec()),
                    Item::Close(c) => Owned::Close(c),
                    Item::Fail(f) => Owned::Fail(f.code),
                })
            });
        }
        out
    }

    const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn client_text(text: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        websocket::text_frame(&mut f, &[text]);
        f[1] |= 0x80; // masked, with a zero key
        f.splice(2..2, [0; 4]);
        f
    }

    #[test]
    fn a_line_client() {
        let mut i = Input::default();
        assert_eq!(feed(&mut i, &[b"ping\nsub"]), vec![Owned::Lines, Owned::Line(b"ping".to_vec())]);
        assert_eq!(i.kind(), "line");
        assert_eq!(feed(&mut i, &[b"scribe\n"]), vec![Owned::Line(b"subscribe".to_vec())]);
        // Cut where it could still have been a method: held until it is clear.
        let mut i = Input::default();
        assert_eq!(feed(&mut i, &[b"PU", b"B x\n"]), vec![Owned::Lines, Owned::Line(b"PUB x".to_vec())]);
    }

    #[test]
    fn silence_is_a_line_client() {
        let mut i = Input::default();
        let mut items = 0;
        i.sniffed_silence(&mut |item| {
            assert_eq!(item, Item::Lines);
            items += 1;
        });
        assert_eq!((items, i.kind()), (1, "line"));
        // Not once it has started to send a request.
        let mut i = Input::default();
        feed(&mut i, &[b"GET / HT"]);
        i.sniffed_silence(&mut |_| panic!("no item"));
        assert_eq!(i.kind(), "new");
    }

    #[test]
    fn http_requests_are_answered_once() {
        let mut i = Input::default();
        assert_eq!(feed(&mut i, &[b"GET / HTTP/1.1\r\n", b"\r\nmore"]), vec![Owned::Http(200)]);
        assert_eq!(feed(&mut i, &[b"GET / HTTP/1.1\r\n\r\n"]), vec![], "what follows is dropped");
        assert_eq!(i.kind(), "http");
        let mut i = Input::default();
        let big = vec![b'a'; http::MAX_HEAD];
        assert_eq!(feed(&mut i, &[b"GET / HTTP/1.1\r\nX: ", &big]), vec![Owned::Http(431)]);
    }

    #[test]
    fn upgrade_then_frames_even_in_the_same_read() {
        let mut i = Input::default();
        let first = [UPGRADE, &client_text(b"ping\r\n")[..], &client_text(b"a\nb")[..]].concat();
        let got = feed(&mut i, &[&first[..20], &first[20..]]);
        assert_eq!(got, vec![Owned::Upgrade, Owned::Line(b"ping".to_vec()), Owned::ManyLines]);
        assert_eq!(i.kind(), "ws");
        let unmasked = [0x81, 0x01, b'x'];
        assert_eq!(feed(&mut i, &[&unmasked]), vec![Owned::Fail(code::PROTOCOL)]);
    }

    #[test]
    fn state_travels_between_any_two_bytes() {
        let stream = [UPGRADE, &client_text(b"pub t hello")[..], &client_text(b"ping")[..]].concat();
        let want = vec![Owned::Upgrade, Owned::Line(b"pub t hello".to_vec()), Owned::Line(b"ping".to_vec())];
        for cut in 0..=stream.len() {
            let mut i = Input::default();
            let mut got = feed(&mut i, &[&stream[..cut]]);
            let mut i: Input = postcard::from_bytes(&postcard::to_allocvec(&i).unwrap()).unwrap();
            got.extend(feed(&mut i, &[&stream[cut..]]));
            assert_eq!(got, want, "cut at {cut}");
        }
    }
}
