//! `fanout-bench hop`: the latency of one socket crossing on this machine, the
//! floor for the latency scenarios. Two mio loops (threads) pass a message back
//! and forth over loopback TCP; a crossing is half a round trip. A message
//! through our servers crosses four sockets (publisher → data-source worker →
//! channel server → subscriber worker → subscriber), through Redis or NATS two.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use clap::Args;
use mio::{Events, Interest, Poll, Token};

#[derive(Args, Clone, Debug)]
pub struct HopArgs {
    /// Round trips to time
    #[arg(long, default_value_t = 50_000)]
    round_trips: usize,
    /// Message bytes
    #[arg(long, default_value_t = 64)]
    bytes: usize,
}

pub fn hop(a: &HopArgs) -> Result<(), String> {
    if a.round_trips == 0 || a.bytes == 0 || a.bytes > 60_000 {
        return Err("--round-trips must be above 0 and --bytes within 1..=60000".into());
    }
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (n, bytes) = (a.round_trips, a.bytes);
    let echo = std::thread::spawn(move || -> Result<(), String> {
        let (s, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        bounce(s, bytes, n, None)
    });
    let s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let mut rtts = Vec::with_capacity(n);
    bounce(s, bytes, n, Some(&mut rtts))?;
    echo.join().map_err(|_| "echo thread panicked")??;
    rtts.sort_unstable();
    let us = |q: f64| rtts[((rtts.len() - 1) as f64 * q) as usize] as f64 / 2e3;
    println!(
        "hop: {n} round trips of {bytes} bytes between two mio loops over loopback TCP; \
         one crossing (half a round trip): p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs",
        us(0.5),
        us(0.99),
        us(0.999)
    );
    Ok(())
}

/// Answers each whole message with one of its own, `n` times; the side given
/// `rtts` speaks first and records each round trip in nanoseconds.
fn bounce(s: TcpStream, bytes: usize, n: usize, mut rtts: Option<&mut Vec<u64>>) -> Result<(), String> {
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut s = mio::net::TcpStream::from_std(s);
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    poll.registry().register(&mut s, Token(0), Interest::READABLE).map_err(|e| e.to_string())?;
    let (mut events, msg, mut buf) = (Events::with_capacity(4), vec![b'.'; bytes], vec![0u8; 64 * 1024]);
    let (mut got, mut sent, mut at) = (0, 0, Instant::now());
    if rtts.is_some() {
        write_all(&mut s, &msg)?;
    }
    while sent < n {
        poll.poll(&mut events, Some(Duration::from_secs(10))).map_err(|e| format!("poll: {e}"))?;
        if events.is_empty() {
            return Err("no answer for 10 s".into());
        }
        // The peer closes once it has sent its last answer, so the end of
        // the stream may come in the same wake-up as that answer: count
        // what arrived before judging the close.
        let mut closed = false;
        while !closed {
            match s.read(&mut buf) {
                Ok(0) => closed = true,
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        while got >= bytes && sent < n {
            got -= bytes;
            if let Some(r) = rtts.as_deref_mut() {
                r.push(at.elapsed().as_nanos() as u64);
                at = Instant::now();
                if r.len() == n {
                    return Ok(());
                }
            }
            write_all(&mut s, &msg)?;
            sent += 1;
        }
        if closed && sent < n {
            return Err("connection closed".into());
        }
    }
    Ok(())
}

/// Writes a message that fits the socket buffer of an idle connection.
fn write_all(s: &mut mio::net::TcpStream, msg: &[u8]) -> Result<(), String> {
    let mut at = 0;
    while at < msg.len() {
        match s.write(&msg[at..]) {
            Ok(k) => at += k,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
                std::thread::yield_now()
            }
            Err(e) => return Err(format!("write: {e}")),
        }
    }
    Ok(())
}
