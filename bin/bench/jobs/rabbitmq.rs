//! RabbitMQ in AMQP 0-9-1, one channel per connection: a durable queue,
//! persistent messages published to it through the default exchange on a
//! channel in confirm mode (`basic.ack` from the broker, `multiple` or not,
//! confirms them; a `basic.nack` fails the run), and consumers with
//! `basic.qos` prefetch and manual acks, one `basic.ack` per job. An ack has
//! no answer: `verify` runs once the consumers have left, when the broker
//! has put back whatever they still held, and wants the queue empty.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use super::{connect, io, JobsArgs, Reader, Tally};
use crate::hist::Hist;
use crate::payload::now_ns;

const CHANNEL: u16 = 1;
const CLOSED: &str = "connection closed";
// Frame types and the end octet (AMQP 0-9-1, 4.2.3).
const METHOD: u8 = 1;
const HEADER: u8 = 2;
const BODY: u8 = 3;
const FRAME_END: u8 = 0xCE;
/// Body frames this long at most: the broker's 128 KiB frame-max minus the framing.
const BODY_MAX: usize = 131_072 - 8;

// (class, method) ids.
const START: (u16, u16) = (10, 10);
const START_OK: (u16, u16) = (10, 11);
const TUNE: (u16, u16) = (10, 30);
const TUNE_OK: (u16, u16) = (10, 31);
const OPEN: (u16, u16) = (10, 40);
const OPEN_OK: (u16, u16) = (10, 41);
const CONNECTION_CLOSE: (u16, u16) = (10, 50);
const CHANNEL_OPEN: (u16, u16) = (20, 10);
const CHANNEL_OPEN_OK: (u16, u16) = (20, 11);
const CHANNEL_CLOSE: (u16, u16) = (20, 40);
const DECLARE: (u16, u16) = (50, 10);
const DECLARE_OK: (u16, u16) = (50, 11);
const DELETE: (u16, u16) = (50, 40);
const DELETE_OK: (u16, u16) = (50, 41);
const QOS: (u16, u16) = (60, 10);
const QOS_OK: (u16, u16) = (60, 11);
const CONSUME: (u16, u16) = (60, 20);
const CONSUME_OK: (u16, u16) = (60, 21);
const PUBLISH: (u16, u16) = (60, 40);
const DELIVER: (u16, u16) = (60, 60);
const ACK: (u16, u16) = (60, 80);
const NACK: (u16, u16) = (60, 120);
const SELECT: (u16, u16) = (85, 10);
const SELECT_OK: (u16, u16) = (85, 11);

/// Method arguments, in AMQP's encoding.
#[derive(Default)]
struct Args(Vec<u8>);

impl Args {
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn short(mut self, s: &str) -> Self {
        self.0.push(s.len() as u8);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn long(self, s: &[u8]) -> Self {
        let mut a = self.u32(s.len() as u32);
        a.0.extend_from_slice(s);
        a
    }
    /// An empty field table.
    fn table(self) -> Self {
        self.u32(0)
    }
}

/// Arguments as they are read.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.0.len() < n {
            return Err("AMQP method shorter than its arguments".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn short(&mut self) -> Result<String, String> {
        let n = self.u8()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
}

fn frame(out: &mut Vec<u8>, kind: u8, channel: u16, payload: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(FRAME_END);
}

/// A method frame; connection methods go on channel 0.
fn method(out: &mut Vec<u8>, (class, id): (u16, u16), args: Args) {
    let mut payload = Args::default().u16(class).u16(id).0;
    payload.extend_from_slice(&args.0);
    frame(out, METHOD, if class == 10 { 0 } else { CHANNEL }, &payload);
}

/// One frame: its type and payload.
fn read_frame(r: &mut Reader) -> Result<(u8, Vec<u8>), String> {
    let mut head = [0; 7];
    r.read_exact(&mut head).map_err(|_| CLOSED)?;
    let size = u32::from_be_bytes(head[3..7].try_into().unwrap()) as usize;
    let mut payload = vec![0; size + 1];
    r.read_exact(&mut payload).map_err(|_| CLOSED)?;
    if payload.pop() != Some(FRAME_END) {
        return Err("AMQP frame without its end octet".into());
    }
    Ok((head[0], payload))
}

/// The next method (skipping heartbeats), as its ids and arguments; the
/// broker closing the connection or channel is an Err with its reason.
fn read_method(r: &mut Reader) -> Result<((u16, u16), Vec<u8>), String> {
    loop {
        let (kind, payload) = read_frame(r)?;
        if kind != METHOD {
            if kind == HEADER || kind == BODY {
                return Err("AMQP content without a method".into());
            }
            continue; // a heartbeat
        }
        let mut f = Fields(&payload);
        let ids = (f.u16()?, f.u16()?);
        if ids == CONNECTION_CLOSE || ids == CHANNEL_CLOSE {
            let (code, text) = (f.u16()?, f.short()?);
            return Err(format!("RabbitMQ closed the channel: {code} {text}"));
        }
        return Ok((ids, f.0.to_vec()));
    }
}

/// Reads the method `want`, returning its arguments.
fn expect(r: &mut Reader, want: (u16, u16)) -> Result<Vec<u8>, String> {
    match read_method(r)? {
        (ids, args) if ids == want => Ok(args),
        (ids, _) => Err(format!("AMQP: expected method {want:?}, got {ids:?}")),
    }
}

fn send(w: &mut TcpStream, ids: (u16, u16), args: Args) -> Result<(), String> {
    let mut out = Vec::new();
    method(&mut out, ids, args);
    w.write_all(&out).map_err(io)
}

/// A connection as guest/guest to the default virtual host, with channel 1 open.
fn open(addr: &str) -> Result<(Reader, TcpStream), String> {
    let (mut r, mut w) = connect(addr)?;
    w.write_all(b"AMQP\x00\x00\x09\x01").map_err(io)?;
    expect(&mut r, START)?;
    let plain = Args::default().table().short("PLAIN").long(b"\0guest\0guest").short("en_US");
    send(&mut w, START_OK, plain)?;
    let tune_args = expect(&mut r, TUNE)?;
    let mut tune = Fields(&tune_args);
    let (channels, frame_max) = (tune.u16()?, tune.u32()?);
    if (frame_max as usize) < BODY_MAX + 8 && frame_max != 0 {
        return Err(format!("RabbitMQ's frame-max {frame_max} is below {}", BODY_MAX + 8));
    }
    // No heartbeats: a run is short, and a blocked reader could not answer them.
    send(&mut w, TUNE_OK, Args::default().u16(channels).u32(frame_max).u16(0))?;
    send(&mut w, OPEN, Args::default().short("/").short("").u8(0))?;
    expect(&mut r, OPEN_OK)?;
    send(&mut w, CHANNEL_OPEN, Args::default().short(""))?;
    expect(&mut r, CHANNEL_OPEN_OK)?;
    Ok((r, w))
}

/// queue.declare of a durable queue (`passive`: it must exist, nothing
/// changes): (messages ready, consumers).
fn declare(r: &mut Reader, w: &mut TcpStream, queue: &str, passive: bool) -> Result<(u32, u32), String> {
    let bits = if passive { 1 } else { 2 }; // passive, durable
    send(w, DECLARE, Args::default().u16(0).short(queue).u8(bits).table())?;
    let args = expect(r, DECLARE_OK)?;
    let mut f = Fields(&args);
    f.short()?;
    Ok((f.u32()?, f.u32()?))
}

pub fn create(a: &JobsArgs) -> Result<(), String> {
    let (mut r, mut w) = open(&a.producer_addr)?;
    // What an earlier run left goes with the queue (a missing queue is no error).
    send(&mut w, DELETE, Args::default().u16(0).short(&a.queue).u8(0))?;
    expect(&mut r, DELETE_OK)?;
    declare(&mut r, &mut w, &a.queue, false).map(drop)
}

pub fn producer(a: &JobsArgs) -> Result<(Reader, TcpStream), String> {
    let (mut r, mut w) = open(&a.producer_addr)?;
    send(&mut w, SELECT, Args::default().u8(0))?;
    expect(&mut r, SELECT_OK)?;
    Ok((r, w))
}

/// basic.publish to the default exchange (routing key: the queue), then
/// the content header (delivery-mode 2, persistent) and the body.
pub fn enqueue(out: &mut Vec<u8>, queue: &str, body: &[u8]) {
    method(out, PUBLISH, Args::default().u16(0).short("").short(queue).u8(0));
    // class, weight, body size, property flags (delivery-mode only), delivery-mode
    let header = Args::default().u16(PUBLISH.0).u16(0).u64(body.len() as u64).u16(0x1000).u8(2);
    frame(out, HEADER, CHANNEL, &header.0);
    for chunk in body.chunks(BODY_MAX) {
        frame(out, BODY, CHANNEL, chunk);
    }
}

/// Reads the broker's next confirm; `done` publishes were confirmed before
/// it, the answer is how many are now (a `multiple` ack confirms every
/// publish up to its tag, a single one the tag alone).
pub fn confirm(r: &mut Reader, done: u64) -> Result<u64, String> {
    let (ids, args) = read_method(r)?;
    let mut f = Fields(&args);
    let (tag, multiple) = (f.u64()?, f.u8()? & 1 == 1);
    match ids {
        ACK if multiple => Ok(done.max(tag)),
        ACK => Ok(done + 1),
        NACK => Err(format!("RabbitMQ nacked publish {tag}")),
        other => Err(format!("AMQP: expected a confirm, got method {other:?}")),
    }
}

pub fn consumer(addr: &str, a: &JobsArgs, i: usize) -> Result<(Reader, TcpStream), String> {
    let (mut r, mut w) = open(addr)?;
    let prefetch = u16::try_from(a.prefetch).map_err(|_| "RabbitMQ's prefetch-count is 16 bits")?;
    send(&mut w, QOS, Args::default().u32(0).u16(prefetch).u8(0))?;
    expect(&mut r, QOS_OK)?;
    // no-local, no-ack, exclusive, no-wait: all off (manual acks)
    send(&mut w, CONSUME, Args::default().u16(0).short(&a.queue).short(&format!("c{i}")).u8(0).table())?;
    expect(&mut r, CONSUME_OK)?;
    Ok((r, w))
}

pub fn consume(mut r: Reader, mut w: TcpStream, tally: &Tally) -> Result<Hist, String> {
    let (mut hist, mut out, mut acks) = (Hist::new(), Vec::new(), 0);
    loop {
        let args = match read_method(&mut r) {
            Ok((DELIVER, args)) => args,
            Ok((other, _)) => return Err(format!("AMQP: expected a delivery, got method {other:?}")),
            Err(e) if e == CLOSED => return Ok(hist), // the run is over
            Err(e) => return Err(e),
        };
        let mut f = Fields(&args);
        f.short()?; // consumer tag
        let (tag, redelivered) = (f.u64()?, f.u8()? & 1 == 1);
        let (HEADER, header) = read_frame(&mut r)? else {
            return Err("AMQP delivery without its content header".into());
        };
        let mut f = Fields(&header);
        f.take(4)?; // class, weight
        let size = f.u64()? as usize;
        let mut body = Vec::with_capacity(size);
        while body.len() < size {
            match read_frame(&mut r)? {
                (BODY, chunk) => body.extend_from_slice(&chunk),
                _ => return Err("AMQP delivery shorter than its content header".into()),
            }
        }
        tally.arrived(&body, !redelivered, now_ns(), &mut hist)?;
        method(&mut out, ACK, Args::default().u64(tag).u8(0));
        acks += 1;
        // Acks go out in one write per read from the broker.
        if r.buffer().is_empty() {
            w.write_all(&out).map_err(io)?;
            out.clear();
            tally.acked(std::mem::take(&mut acks));
        }
    }
}

/// Once the consumers have left, the broker has put back every job they
/// held unacknowledged: the queue must be empty.
pub fn verify(a: &JobsArgs) -> Result<(), String> {
    let (mut r, mut w) = open(&a.producer_addr)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match declare(&mut r, &mut w, &a.queue, true)? {
            (0, 0) => return Ok(()),
            (ready, 0) => return Err(format!("{ready} jobs back in the queue after every ack")),
            (_, consumers) if Instant::now() > deadline => {
                return Err(format!("{consumers} consumers still there 30 s after they left"))
            }
            _ => thread::sleep(Duration::from_millis(1)),
        }
    }
}
