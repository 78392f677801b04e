//! `fanout-bench floor`: what this machine's kernel allows for the `conns`
//! scenario, with no pub/sub server at all.
//!
//! N loopback connections; `--senders` threads each write one line to their
//! share of them, as server workers would deliver one publish, while another
//! process reads them with reader threads (as many as the subscriber threads
//! of a `run`, each with its own mio `Poll`). A round lasts from the first
//! write until that process reports the last byte read.
//! The median round is the least time any server on this machine can take for
//! one publish to N idle subscribers; a server's `publish→all` is read against it.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use clap::Args;
use mio::{Events, Interest, Poll, Token};

use crate::rusage::raise_nofile;
use crate::table::median;

#[derive(Args, Clone, Debug)]
pub struct FloorArgs {
    /// Connections
    #[arg(long, default_value_t = 10_000)]
    conns: usize,
    /// Writer thread counts to measure, e.g. 1,2 (one per server worker)
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    senders: Vec<usize>,
    /// Reader threads (as `run --sub-threads`)
    #[arg(long, default_value_t = 2)]
    readers: usize,
    /// Rounds per writer count
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Bytes per line, newline included (a 64-byte payload arrives as about 85)
    #[arg(long, default_value_t = 85)]
    line: usize,
}

pub fn floor(a: &FloorArgs) -> Result<(), String> {
    if a.conns == 0 || a.readers == 0 || a.rounds == 0 || a.line == 0 || a.senders.contains(&0) {
        return Err("--conns, --senders, --readers, --rounds and --line must be above 0".into());
    }
    raise_nofile(a.conns as u64 + 64)?;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // The reading side is another process, as a server's clients are.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .arg("floor-read")
        .args(["--addr", &addr.to_string(), "--conns", &a.conns.to_string(), "--readers", &a.readers.to_string()])
        .args(["--line", &a.line.to_string(), "--rounds", &(a.senders.len() * a.rounds).to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the reader process: {e}"))?;
    let result = measure(a, &listener, child.stdout.take().expect("piped"));
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn measure(a: &FloorArgs, listener: &TcpListener, from_reader: ChildStdout) -> Result<(), String> {
    let mut writers = Vec::with_capacity(a.conns);
    for _ in 0..a.conns {
        let (w, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        w.set_nonblocking(true).map_err(|e| e.to_string())?;
        w.set_nodelay(true).map_err(|e| e.to_string())?;
        writers.push(w);
    }
    let mut rounds_read = BufReader::new(from_reader).lines();
    let line: Vec<u8> = std::iter::repeat_n(b'.', a.line - 1).chain([b'\n']).collect();
    println!(
        "floor: {} loopback connections, {}-byte lines, {} reader threads, {} rounds",
        a.conns, a.line, a.readers, a.rounds
    );
    for &senders in &a.senders {
        let mut rounds = Vec::new();
        // Writer threads live for all rounds; the main thread is writer 0.
        let chunk = writers.len().div_ceil(senders);
        let (start, end) = (Barrier::new(senders), Barrier::new(senders));
        std::thread::scope(|s| -> Result<(), String> {
            let mut parts = writers.chunks_mut(chunk);
            let mine = parts.next().expect("at least one connection");
            let helpers: Vec<_> = parts
                .map(|part| {
                    let (start, end, line) = (&start, &end, &line);
                    s.spawn(move || -> Result<(), String> {
                        for _ in 0..a.rounds {
                            start.wait();
                            let r = write_all(part, line);
                            end.wait();
                            r?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for _ in 0..a.rounds {
                let t0 = Instant::now();
                start.wait();
                let r = write_all(mine, &line);
                end.wait();
                r?;
                match rounds_read.next() {
                    Some(Ok(l)) if l == "ok" => rounds.push(t0.elapsed().as_secs_f64() * 1e3),
                    Some(Ok(why)) => return Err(format!("reader: {why}")),
                    _ => return Err("the reader process ended".into()),
                }
            }
            helpers.into_iter().try_for_each(|t| t.join().map_err(|_| "writer thread panicked".to_string())?)
        })?;
        let med = median(rounds.clone()).unwrap_or(0.0);
        let (lo, hi) = rounds.iter().fold((f64::MAX, 0.0f64), |(l, h), &v| (l.min(v), h.max(v)));
        println!(
            "  {senders} writer thread(s): write→last read median {med:.1} ms (min {lo:.1}, max {hi:.1}), {:.2} µs per connection",
            med * 1e3 / a.conns as f64
        );
    }
    Ok(())
}

#[derive(Args, Clone, Debug)]
pub struct FloorReadArgs {
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long)]
    conns: usize,
    #[arg(long)]
    readers: usize,
    #[arg(long)]
    line: usize,
    #[arg(long)]
    rounds: usize,
}

/// The reading side of `floor`: prints `ok` once each round has been read in
/// full (or the error that stopped it).
pub fn floor_read(a: &FloorReadArgs) -> Result<(), String> {
    raise_nofile(a.conns as u64 + 64)?;
    let mut conns = Vec::with_capacity(a.conns);
    for _ in 0..a.conns {
        let c = TcpStream::connect(a.addr).map_err(|e| format!("connect: {e}"))?;
        c.set_nonblocking(true).map_err(|e| e.to_string())?;
        conns.push(mio::net::TcpStream::from_std(c));
    }
    let (done_tx, done_rx) = mpsc::channel();
    for share in deal(conns, a.readers) {
        let (tx, line, rounds) = (done_tx.clone(), a.line, a.rounds);
        std::thread::spawn(move || read_rounds(share, line, rounds, tx));
    }
    let mut out = io::stdout().lock();
    for _ in 0..a.rounds {
        for _ in 0..a.readers {
            done_rx.recv().map_err(|_| "a reader thread ended")??;
        }
        writeln!(out, "ok").and_then(|_| out.flush()).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Connection i goes to share i mod n, as subscribers go to `run`'s threads.
fn deal<T>(items: Vec<T>, n: usize) -> Vec<Vec<T>> {
    let mut shares: Vec<Vec<T>> = (0..n).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        shares[i % n].push(item);
    }
    shares
}

/// One line to each connection.
fn write_all(conns: &mut [TcpStream], line: &[u8]) -> Result<(), String> {
    conns.iter_mut().try_for_each(|w| match w.write(line) {
        Ok(n) if n == line.len() => Ok(()),
        Ok(_) => Err("short write: the reader fell behind".to_string()),
        Err(e) => Err(format!("write: {e}")),
    })
}

/// Reads its share until every round has arrived; reports each round as soon
/// as its last byte is read.
fn read_rounds(
    mut conns: Vec<mio::net::TcpStream>,
    line: usize,
    rounds: usize,
    done: mpsc::Sender<Result<(), String>>,
) {
    let result = (|| -> Result<(), String> {
        let mut poll = Poll::new().map_err(|e| e.to_string())?;
        for (i, c) in conns.iter_mut().enumerate() {
            poll.registry().register(c, Token(i), Interest::READABLE).map_err(|e| e.to_string())?;
        }
        let per_round = (conns.len() * line) as u64;
        let (mut got, mut reported) = (0u64, 0usize);
        let (mut events, mut buf) = (Events::with_capacity(1024), vec![0u8; 64 * 1024]);
        while reported < rounds {
            poll.poll(&mut events, Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
            if events.is_empty() {
                return Err("no data for 30 s".into());
            }
            for ev in events.iter() {
                got += drain(&mut conns[ev.token().0], &mut buf)?;
            }
            while reported < rounds && got >= per_round * (reported as u64 + 1) {
                reported += 1;
                let _ = done.send(Ok(()));
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = done.send(Err(e));
    }
}

/// Reads until the socket is empty; returns the bytes read.
fn drain(c: &mut mio::net::TcpStream, buf: &mut [u8]) -> Result<u64, String> {
    let mut got = 0;
    loop {
        match c.read(buf) {
            Ok(0) => return Err("connection closed".into()),
            Ok(n) => {
                got += n as u64;
                if n < buf.len() {
                    return Ok(got);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(got),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}
