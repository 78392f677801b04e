//! Redis Streams with a consumer group, in RESP: the producer XADDs (one
//! field, `d`), each consumer XREADGROUPs up to `--prefetch` new entries,
//! XACKs each one and asks for more in the same write.

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;

use super::{connect, io, JobsArgs, Reader, Tally};
use crate::hist::Hist;
use crate::payload::now_ns;

const GROUP: &str = "bench";

#[derive(Debug)]
enum Resp {
    Simple(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// One reply; a Redis error is an Err.
fn read(r: &mut Reader) -> Result<Resp, String> {
    let mut line = Vec::new();
    if r.read_until(b'\n', &mut line).map_err(io)? == 0 || !line.ends_with(b"\r\n") {
        return Err("connection closed".into());
    }
    let text = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
    let len = || text.parse::<i64>().map_err(|_| format!("bad RESP length {text:?}"));
    Ok(match line[0] {
        b'+' => Resp::Simple(text),
        b'-' => return Err(format!("Redis: {text}")),
        b':' => Resp::Int(len()?),
        b'$' if len()? < 0 => Resp::Bulk(None),
        b'$' => {
            let mut data = vec![0; len()? as usize + 2];
            r.read_exact(&mut data).map_err(io)?;
            data.truncate(data.len() - 2);
            Resp::Bulk(Some(data))
        }
        b'*' if len()? < 0 => Resp::Array(None),
        b'*' => Resp::Array(Some((0..len()?).map(|_| read(r)).collect::<Result<_, _>>()?)),
        _ => return Err(format!("bad RESP reply {text:?}")),
    })
}

fn call(addr: &str, args: &[&[u8]]) -> Result<Resp, String> {
    let (mut r, mut w) = connect(addr)?;
    let mut out = Vec::new();
    command(&mut out, args);
    w.write_all(&out).map_err(io)?;
    read(&mut r)
}

pub fn create(a: &JobsArgs) -> Result<(), String> {
    let q = a.queue.as_bytes();
    call(&a.producer_addr, &[b"DEL", q])?;
    match call(&a.producer_addr, &[b"XGROUP", b"CREATE", q, GROUP.as_bytes(), b"0", b"MKSTREAM"])? {
        Resp::Simple(ok) if ok == "OK" => Ok(()),
        other => Err(format!("XGROUP CREATE answered {other:?}")),
    }
}

pub fn enqueue(out: &mut Vec<u8>, queue: &str, body: &[u8]) {
    command(out, &[b"XADD", queue.as_bytes(), b"*", b"d", body]);
}

pub fn confirm(r: &mut Reader) -> Result<(), String> {
    match read(r)? {
        Resp::Bulk(Some(_)) => Ok(()),
        other => Err(format!("XADD answered {other:?}")),
    }
}

fn read_more(out: &mut Vec<u8>, a: &JobsArgs, i: usize) {
    let (name, count) = (format!("c{i}"), a.prefetch.to_string());
    let args: [&[u8]; 11] = [
        b"XREADGROUP",
        b"GROUP",
        GROUP.as_bytes(),
        name.as_bytes(),
        b"COUNT",
        count.as_bytes(),
        b"BLOCK",
        b"0",
        b"STREAMS",
        a.queue.as_bytes(),
        b">",
    ];
    command(out, &args);
}

pub fn consumer(addr: &str, a: &JobsArgs, i: usize) -> Result<(Reader, TcpStream), String> {
    let (r, mut w) = connect(addr)?;
    let mut out = Vec::new();
    read_more(&mut out, a, i);
    w.write_all(&out).map_err(io)?;
    Ok((r, w))
}

pub fn consume(mut r: Reader, mut w: TcpStream, a: &JobsArgs, i: usize, tally: &Tally) -> Result<Hist, String> {
    let (mut hist, mut out, mut acks_due) = (Hist::new(), Vec::new(), 0);
    loop {
        for _ in 0..acks_due {
            match read(&mut r) {
                Ok(Resp::Int(1)) => tally.acked(1),
                Ok(other) => return Err(format!("XACK answered {other:?}")),
                Err(_) => return Ok(hist), // shut down at the end
            }
        }
        let Ok(reply) = read(&mut r) else {
            return Ok(hist);
        };
        let now = now_ns();
        let entries = match reply {
            // [[stream, [[id, [field, value]], ...]]]
            Resp::Array(Some(mut streams)) if streams.len() == 1 => match streams.pop() {
                Some(Resp::Array(Some(mut s))) if s.len() == 2 => match s.pop() {
                    Some(Resp::Array(Some(entries))) => entries,
                    other => return Err(format!("XREADGROUP answered {other:?}")),
                },
                other => return Err(format!("XREADGROUP answered {other:?}")),
            },
            other => return Err(format!("XREADGROUP answered {other:?}")),
        };
        acks_due = entries.len();
        for entry in entries {
            let Resp::Array(Some(mut entry)) = entry else {
                return Err(format!("XREADGROUP entry {entry:?}"));
            };
            let (Some(Resp::Array(Some(mut fields))), Some(Resp::Bulk(Some(id)))) = (entry.pop(), entry.pop()) else {
                return Err("XREADGROUP entry without id and fields".into());
            };
            let Some(Resp::Bulk(Some(body))) = fields.pop() else {
                return Err("XREADGROUP entry without a value".into());
            };
            // `>` reads only entries never delivered to the group.
            tally.arrived(&body, true, now, &mut hist)?;
            command(&mut out, &[b"XACK", a.queue.as_bytes(), GROUP.as_bytes(), &id]);
        }
        read_more(&mut out, a, i);
        w.write_all(&out).map_err(io)?;
        out.clear();
    }
}

pub fn verify(a: &JobsArgs) -> Result<(), String> {
    match call(&a.producer_addr, &[b"XPENDING", a.queue.as_bytes(), GROUP.as_bytes()])? {
        Resp::Array(Some(v)) if matches!(v.first(), Some(Resp::Int(0))) => Ok(()),
        other => Err(format!("jobs still pending after every XACK: {other:?}")),
    }
}

/// Entries in the stream.
pub fn stored(a: &JobsArgs) -> Result<u64, String> {
    match call(&a.producer_addr, &[b"XLEN", a.queue.as_bytes()])? {
        Resp::Int(n) => Ok(n as u64),
        other => Err(format!("XLEN answered {other:?}")),
    }
}
