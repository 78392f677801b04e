//! NATS JetStream in the NATS client protocol: a work-queue stream on file
//! storage (its subject is the queue's name) and one durable pull consumer
//! with explicit acks, shared by every consumer connection. The producer
//! publishes with a reply subject, where JetStream's `PubAck` arrives; each
//! consumer asks for up to `--prefetch` jobs (`CONSUMER.MSG.NEXT` with a
//! batch), asks again when half of them came, and acks every job with `+ACK`
//! to its reply subject. An ack has no answer: `verify` waits for the stream
//! to be empty, which in a work queue means every ack was applied.

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{connect, io, JobsArgs, Reader, Tally};
use crate::hist::Hist;
use crate::payload::now_ns;

const CONSUMER: &str = "work";
const SETUP_INBOX: &str = "_INBOX.bench.setup";
const PUB_INBOX: &str = "_INBOX.bench.pub";
const CLOSED: &str = "connection closed";

struct Msg {
    reply: Option<String>,
    payload: Vec<u8>,
}

/// PUB, with a reply subject unless `reply` is empty.
fn publish(out: &mut Vec<u8>, subject: &str, reply: &str, body: &[u8]) {
    let sep = if reply.is_empty() { "" } else { " " };
    out.extend_from_slice(format!("PUB {subject}{sep}{reply} {}\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

/// Reads lines until the server's PONG: what was written before the PING
/// (CONNECT, SUB) has been processed.
fn pong(r: &mut Reader) -> Result<(), String> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).map_err(io)? == 0 {
            return Err(CLOSED.into());
        }
        match line.trim_end() {
            "PONG" => return Ok(()),
            l if l.starts_with("-ERR") => return Err(format!("NATS: {l}")),
            _ => {}
        }
    }
}

/// A connection past the handshake, with `subs` (SUB lines) in place.
fn open(addr: &str, subs: &str) -> Result<(Reader, TcpStream), String> {
    let (mut r, mut w) = connect(addr)?;
    let connect = r#"CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true}"#;
    w.write_all(format!("{connect}\r\n{subs}PING\r\n").as_bytes()).map_err(io)?;
    pong(&mut r)?;
    Ok((r, w))
}

/// The next message; a PING is answered on `w` when there is one (the
/// producer's reader has none: a run is over long before a server's pings
/// go unanswered too often), other control lines are skipped.
fn next(r: &mut Reader, mut w: Option<&mut TcpStream>) -> Result<Msg, String> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).map_err(|_| CLOSED)? == 0 {
            return Err(CLOSED.into());
        }
        let l = line.trim_end();
        let mut fields = l.split(' ');
        let header = match fields.next() {
            Some("MSG") => false,
            Some("HMSG") => true,
            Some("PING") => {
                if let Some(w) = w.as_mut() {
                    w.write_all(b"PONG\r\n").map_err(io)?;
                }
                continue;
            }
            Some("-ERR") => return Err(format!("NATS: {l}")),
            _ => continue, // INFO, PONG, +OK
        };
        // MSG <subject> <sid> [reply] <size>; HMSG <subject> <sid> [reply] <header size> <size>
        let f: Vec<&str> = fields.collect();
        let sizes = 1 + usize::from(header);
        if f.len() != 2 + sizes && f.len() != 3 + sizes {
            return Err(format!("bad NATS line {l:?}"));
        }
        let reply = (f.len() == 3 + sizes).then(|| f[2].to_owned());
        let size: usize = f[f.len() - 1].parse().map_err(|_| format!("bad NATS line {l:?}"))?;
        let mut payload = vec![0; size + 2];
        r.read_exact(&mut payload).map_err(|_| CLOSED)?;
        payload.truncate(size);
        if header {
            // Only status messages (no responders, timeouts) carry headers here.
            let status = String::from_utf8_lossy(&payload);
            return Err(format!("JetStream status: {}", status.lines().next().unwrap_or("")));
        }
        return Ok(Msg { reply, payload });
    }
}

/// A JetStream API request and its JSON answer; an `error` in it is an Err.
fn request(r: &mut Reader, w: &mut TcpStream, subject: &str, body: &Value) -> Result<Value, String> {
    let mut out = Vec::new();
    publish(&mut out, subject, SETUP_INBOX, body.to_string().as_bytes());
    w.write_all(&out).map_err(io)?;
    let answer: Value = serde_json::from_slice(&next(r, Some(w))?.payload).map_err(|e| format!("{subject}: {e}"))?;
    match answer.get("error") {
        Some(e) => Err(format!("{subject}: {e}")),
        None => Ok(answer),
    }
}

fn api(a: &JobsArgs) -> Result<(Reader, TcpStream), String> {
    open(&a.producer_addr, &format!("SUB {SETUP_INBOX} 1\r\n"))
}

pub fn create(a: &JobsArgs) -> Result<(), String> {
    let (mut r, mut w) = api(a)?;
    let q = &a.queue;
    let stream = json!({"name": q, "subjects": [q], "retention": "workqueue", "storage": "file"});
    request(&mut r, &mut w, &format!("$JS.API.STREAM.CREATE.{q}"), &stream)?;
    if a.consumers == 0 {
        return Ok(()); // `confirm`: only publishes
    }
    // One durable shared by every consumer connection: as many jobs out as
    // all of ours together may hold.
    let pending = a.prefetch as usize * a.consumers;
    let consumer = json!({"stream_name": q, "config": {
        "durable_name": CONSUMER, "ack_policy": "explicit", "max_ack_pending": pending}});
    request(&mut r, &mut w, &format!("$JS.API.CONSUMER.DURABLE.CREATE.{q}.{CONSUMER}"), &consumer).map(drop)
}

pub fn producer(a: &JobsArgs) -> Result<(Reader, TcpStream), String> {
    open(&a.producer_addr, &format!("SUB {PUB_INBOX} 1\r\n"))
}

pub fn enqueue(out: &mut Vec<u8>, queue: &str, body: &[u8]) {
    publish(out, queue, PUB_INBOX, body);
}

pub fn confirm(r: &mut Reader) -> Result<(), String> {
    let ack = next(r, None)?.payload;
    match ack.windows(7).any(|w| w == b"\"error\"") {
        true => Err(format!("publish answered {}", String::from_utf8_lossy(&ack))),
        false => Ok(()),
    }
}

fn pull(out: &mut Vec<u8>, a: &JobsArgs, i: usize, batch: u64) {
    let subject = format!("$JS.API.CONSUMER.MSG.NEXT.{}.{CONSUMER}", a.queue);
    publish(out, &subject, &format!("_INBOX.bench.c{i}"), format!("{{\"batch\":{batch}}}").as_bytes());
}

pub fn consumer(addr: &str, a: &JobsArgs, i: usize) -> Result<(Reader, TcpStream), String> {
    let (r, mut w) = open(addr, &format!("SUB _INBOX.bench.c{i} 1\r\n"))?;
    let mut out = Vec::new();
    pull(&mut out, a, i, a.prefetch.into());
    w.write_all(&out).map_err(io)?;
    Ok((r, w))
}

pub fn consume(mut r: Reader, mut w: TcpStream, a: &JobsArgs, i: usize, tally: &Tally) -> Result<Hist, String> {
    let (mut hist, mut out, mut acks) = (Hist::new(), Vec::new(), 0);
    let prefetch = u64::from(a.prefetch);
    let mut asked = prefetch; // jobs asked for and not delivered yet
    loop {
        let msg = match next(&mut r, Some(&mut w)) {
            Ok(msg) => msg,
            Err(e) if e == CLOSED => return Ok(hist), // shut down at the end
            Err(e) => return Err(e),
        };
        let now = now_ns();
        let reply = msg.reply.ok_or("a job without a reply subject")?;
        // $JS.ACK.<stream>.<consumer>.<deliveries>.<stream seq>.<consumer seq>.<time>.<pending>
        let tokens: Vec<&str> = reply.split('.').collect();
        if tokens.len() != 9 || tokens[1] != "ACK" {
            return Err(format!("unexpected reply subject {reply}"));
        }
        tally.arrived(&msg.payload, tokens[4] == "1", now, &mut hist)?;
        publish(&mut out, &reply, "", b"+ACK");
        acks += 1;
        asked -= 1;
        if asked <= prefetch / 2 {
            pull(&mut out, a, i, prefetch - asked);
            asked = prefetch;
        }
        // Acks and requests go out in one write per read from the server.
        if r.buffer().is_empty() {
            w.write_all(&out).map_err(io)?;
            out.clear();
            tally.acked(std::mem::take(&mut acks));
        }
    }
}

/// Messages in the stream now.
fn messages(r: &mut Reader, w: &mut TcpStream, a: &JobsArgs) -> Result<u64, String> {
    let info = request(r, w, &format!("$JS.API.STREAM.INFO.{}", a.queue), &json!({}))?;
    info["state"]["messages"].as_u64().ok_or_else(|| format!("stream info without a message count: {info}"))
}

pub fn stored(a: &JobsArgs) -> Result<u64, String> {
    let (mut r, mut w) = api(a)?;
    messages(&mut r, &mut w, a)
}

pub fn verify(a: &JobsArgs) -> Result<(), String> {
    let (mut r, mut w) = api(a)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match messages(&mut r, &mut w, a)? {
            0 => return Ok(()),
            n if Instant::now() > deadline => return Err(format!("{n} jobs still in the stream after every ack")),
            _ => thread::sleep(Duration::from_millis(1)),
        }
    }
}
