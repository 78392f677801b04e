//! Our servers' line protocol: `enqueue`, `consume`, `Job [...]` lines, `ack`.

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

pub fn enqueue(out: &mut Vec<u8>, queue: &str, body: &[u8]) {
    out.extend_from_slice(b"enqueue ");
    out.extend_from_slice(queue.as_bytes());
    out.push(b' ');
    out.extend_from_slice(body);
    out.push(b'\n');
}

pub fn confirm(r: &mut Reader) -> Result<(), String> {
    let mut buf = String::new();
    line(r, &mut buf)?;
    match buf.starts_with("OK enqueued") {
        true => Ok(()),
        false => Err(format!("unexpected: {buf}")),
    }
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
