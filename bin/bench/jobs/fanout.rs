//! Our servers' line protocol: `enqueue`, `consume`, `Job [...]` lines, `ack`;
//! `pub` with `confirm on` for `confirm`.

use std::io::{BufRead, Write};
use std::net::TcpStream;

use super::{connect, io, JobsArgs, Reader, Tally};
use crate::hist::Hist;
use crate::payload::now_ns;

/// A connection past the server's welcome line.
pub fn open(addr: &str) -> Result<(Reader, TcpStream), String> {
    let (mut r, w) = connect(addr)?;
    line(&mut r, &mut String::new())?;
    Ok((r, w))
}

fn line(r: &mut Reader, buf: &mut String) -> Result<(), String> {
    buf.clear();
    match r.read_line(buf) {
        Ok(0) => Err("connection closed".into()),
        Ok(_) if buf.starts_with("ERR") => Err(buf.trim_end().to_owned()),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// One command line: `<verb> <name> <body>`.
fn command(out: &mut Vec<u8>, verb: &[u8], name: &str, body: &[u8]) {
    out.extend_from_slice(verb);
    out.push(b' ');
    out.extend_from_slice(name.as_bytes());
    out.push(b' ');
    out.extend_from_slice(body);
    out.push(b'\n');
}

/// Reads one line, which must start with `want`.
pub fn expect(r: &mut Reader, want: &str) -> Result<(), String> {
    let mut buf = String::new();
    line(r, &mut buf)?;
    match buf.starts_with(want) {
        true => Ok(()),
        false => Err(format!("unexpected: {buf}")),
    }
}

pub fn enqueue(out: &mut Vec<u8>, queue: &str, body: &[u8]) {
    command(out, b"enqueue", queue, body);
}

pub fn confirm(r: &mut Reader) -> Result<(), String> {
    expect(r, "OK enqueued")
}

/// A publisher's connection with `confirm on`.
pub fn confirming(addr: &str) -> Result<(Reader, TcpStream), String> {
    let (mut r, mut w) = open(addr)?;
    w.write_all(b"confirm on\n").map_err(io)?;
    expect(&mut r, "OK confirm on")?;
    Ok((r, w))
}

pub fn publish(out: &mut Vec<u8>, topic: &str, body: &[u8]) {
    command(out, b"pub", topic, body);
}

/// `OK published <topic>#<seq>`: numbered, and written as the fsync policy says.
pub fn published(r: &mut Reader) -> Result<(), String> {
    expect(r, "OK published")
}

/// The last number the topic has given (`info <topic>`).
pub fn numbered(addr: &str, topic: &str) -> Result<u64, String> {
    let (mut r, mut w) = open(addr)?;
    writeln!(w, "info {topic}").map_err(io)?;
    let mut buf = String::new();
    line(&mut r, &mut buf)?;
    // OK topic <topic> first <seq> last <seq> messages <n> bytes <b>
    let last = buf.split_whitespace().skip_while(|w| *w != "last").nth(1);
    last.and_then(|n| n.parse().ok()).ok_or_else(|| format!("unexpected: {buf}"))
}

pub fn consumer(addr: &str, a: &JobsArgs) -> Result<(Reader, TcpStream), String> {
    let (mut r, mut w) = open(addr)?;
    writeln!(w, "consume {} {}", a.queue, a.prefetch).map_err(io)?;
    line(&mut r, &mut String::new())?;
    Ok((r, w))
}

pub fn consume(mut r: Reader, mut w: TcpStream, tally: &Tally) -> Result<Hist, String> {
    let (mut hist, mut acks, mut buf) = (Hist::new(), Vec::new(), String::new());
    loop {
        if line(&mut r, &mut buf).is_err() {
            return Ok(hist); // shut down at the end
        }
        if buf.starts_with("OK acked") {
            tally.acked(1);
        } else {
            let now = now_ns();
            let unexpected = || format!("unexpected: {buf}");
            let rest = buf.strip_prefix("Job [").ok_or_else(unexpected)?;
            let (job, rest) = rest.split_once("] try ").ok_or_else(unexpected)?;
            let (attempt, body) = rest.split_once(": ").ok_or_else(unexpected)?;
            tally.arrived(body.trim_end().as_bytes(), attempt == "1", now, &mut hist)?;
            acks.extend_from_slice(format!("ack {job}\n").as_bytes());
        }
        // Acks go out in one write per read from the server.
        if r.buffer().is_empty() && !acks.is_empty() {
            w.write_all(&acks).map_err(io)?;
            acks.clear();
        }
    }
}
