//! `--metrics ADDR`: the master answers `GET /metrics` with the workers'
//! figures in the Prometheus text format (`exposition.rs`). A tiny HTTP/1.1
//! responder inside the master's own non-blocking loop: one request per
//! connection (`Connection: close`), at most `MAX_REQUEST` bytes of it, and a
//! deadline for the whole exchange. The figures are gathered from the workers
//! by the same asynchronous query as `status`; the loop never waits for them.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::debug;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Poll, Token};
use slab::Slab;

use super::control::{Request, Status};
use super::control_clients::Asker;
use super::{Master, METRICS, SCRAPE_BASE};

/// A scraper sends a few hundred bytes; anything much larger is not one.
const MAX_REQUEST: usize = 8 * 1024;
/// The whole exchange; longer than the workers' query may take (3 s).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections open at once; more are closed on arrival.
const MAX_SCRAPES: usize = 64;
const MAX_HEADERS: usize = 64;

pub(super) struct Endpoint {
    listener: TcpListener,
    scrapes: Slab<Scrape>,
}

struct Scrape {
    stream: TcpStream,
    input: Vec<u8>,
    /// The response, once there is one, and how much of it is written.
    output: Vec<u8>,
    written: usize,
    /// Its figures are being gathered from the workers.
    waiting: bool,
    deadline: Instant,
}

impl Endpoint {
    pub(super) fn bind(addr: SocketAddr, poll: &Poll) -> Result<Endpoint, String> {
        let mut listener = TcpListener::bind(addr)
            .map_err(|e| format!("cannot listen for metrics on {addr}: {e}; pass another --metrics address"))?;
        poll.registry().register(&mut listener, METRICS, Interest::READABLE).map_err(|e| e.to_string())?;
        Ok(Endpoint { listener, scrapes: Slab::new() })
    }

    pub(super) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.scrapes.iter().map(|(_, s)| s.deadline).min()
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq)]
enum Parsed {
    Incomplete,
    Metrics,
    /// Answer at once with this status line and text.
    Refuse(&'static str, &'static str),
}

fn parse(input: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(input) {
        Ok(httparse::Status::Partial) if input.len() >= MAX_REQUEST => {
            Parsed::Refuse("431 Request Header Fields Too Large", "request too large\n")
        }
        Ok(httparse::Status::Partial) => Parsed::Incomplete,
        Err(httparse::Error::TooManyHeaders) => {
            Parsed::Refuse("431 Request Header Fields Too Large", "too many headers\n")
        }
        Err(_) => Parsed::Refuse("400 Bad Request", "bad request\n"),
        Ok(httparse::Status::Complete(_)) => {
            let path = req.path.unwrap_or("").split('?').next().unwrap_or("");
            match (req.method, path) {
                (Some("GET"), "/metrics") => Parsed::Metrics,
                (Some("GET"), _) => Parsed::Refuse("404 Not Found", "not found; the metrics are at /metrics\n"),
                _ => Parsed::Refuse("405 Method Not Allowed", "only GET /metrics is served\n"),
            }
        }
    }
}

fn response(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

impl Master {
    pub(super) fn accept_scrapes(&mut self) {
        let Some(m) = self.metrics.as_mut() else { return };
        while let Ok((mut stream, peer)) = m.listener.accept() {
            if m.scrapes.len() >= MAX_SCRAPES {
                debug!("metrics: closing {peer}: {MAX_SCRAPES} connections already open");
                continue;
            }
            let entry = m.scrapes.vacant_entry();
            let token = Token(SCRAPE_BASE + entry.key());
            if self.poll.registry().register(&mut stream, token, Interest::READABLE | Interest::WRITABLE).is_ok() {
                let deadline = Instant::now() + SCRAPE_TIMEOUT;
                entry.insert(Scrape {
                    stream,
                    input: Vec::new(),
                    output: Vec::new(),
                    written: 0,
                    waiting: false,
                    deadline,
                });
            }
        }
    }

    pub(super) fn on_scrape(&mut self, key: usize) {
        let Some(s) = self.metrics.as_mut().and_then(|m| m.scrapes.get_mut(key)) else { return };
        if !s.output.is_empty() {
            self.write_scrape(key);
            return;
        }
        if s.waiting {
            return;
        }
        let mut buf = [0u8; 1024];
        let closed = loop {
            match s.stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => s.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
            if s.input.len() >= MAX_REQUEST {
                break false;
            }
        };
        match parse(&s.input) {
            Parsed::Metrics => {
                s.waiting = true;
                self.queued.push_back((Asker::Scrape(key), Request::Status));
                self.start_query();
            }
            Parsed::Refuse(status, text) => self.respond(key, response(status, "text/plain; charset=utf-8", text)),
            Parsed::Incomplete if closed => self.close_scrape(key),
            Parsed::Incomplete => {}
        }
    }

    /// The workers' figures are in: the answer to the scrape `key`.
    pub(super) fn answer_scrape(&mut self, key: usize, status: &Status) {
        if self.metrics.as_ref().and_then(|m| m.scrapes.get(key)).is_some_and(|s| s.waiting) {
            let body = super::exposition::render(status, self.reloads);
            self.respond(key, response("200 OK", "text/plain; version=0.0.4; charset=utf-8", &body));
        }
    }

    fn respond(&mut self, key: usize, bytes: Vec<u8>) {
        let Some(s) = self.metrics.as_mut().and_then(|m| m.scrapes.get_mut(key)) else { return };
        s.waiting = false;
        s.output = bytes;
        self.write_scrape(key);
    }

    fn write_scrape(&mut self, key: usize) {
        let Some(s) = self.metrics.as_mut().and_then(|m| m.scrapes.get_mut(key)) else { return };
        while s.written < s.output.len() {
            match s.stream.write(&s.output[s.written..]) {
                Ok(n) => s.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.close_scrape(key);
    }

    fn close_scrape(&mut self, key: usize) {
        let Some(m) = self.metrics.as_mut() else { return };
        if let Some(mut s) = m.scrapes.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut s.stream);
        }
    }

    /// Closes the exchanges that overran their deadline.
    pub(super) fn expire_scrapes(&mut self, now: Instant) {
        let Some(m) = self.metrics.as_ref() else { return };
        let late: Vec<usize> = m.scrapes.iter().filter(|(_, s)| s.deadline <= now).map(|(k, _)| k).collect();
        for key in late {
            debug!("metrics: closing a connection that did not finish in {SCRAPE_TIMEOUT:?}");
            self.close_scrape(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Parsed::Metrics);
        assert_eq!(parse(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Parsed::Metrics);
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\nHost"), Parsed::Incomplete);
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n\r\n"), Parsed::Refuse(s, _) if s.starts_with("404")));
        assert!(matches!(parse(b"POST /metrics HTTP/1.1\r\n\r\n"), Parsed::Refuse(s, _) if s.starts_with("405")));
        assert!(matches!(parse(b"\x00\x01 nonsense\r\n\r\n"), Parsed::Refuse(s, _) if s.starts_with("400")));
        let long = format!("GET /metrics HTTP/1.1\r\nX: {}", "a".repeat(MAX_REQUEST));
        assert!(matches!(parse(long.as_bytes()), Parsed::Refuse(s, _) if s.starts_with("431")));
    }
}
