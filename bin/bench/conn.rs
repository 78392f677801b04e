//! `Conn`: a non-blocking connection that queues what it writes and decodes
//! what it reads, shared by the subscriber threads and the publisher.

use std::io::{self, Read, Write};

use mio::net::TcpStream;

use crate::payload::now_ns;
use crate::proto::{Event, Proto};

/// Reads per wake-up before a connection yields to the others.
const MAX_READS: usize = 64;
/// Largest partial frame kept between reads.
const MAX_INBUF: usize = 1 << 20;

pub enum ReadOutcome {
    /// The socket is empty (wait for the next readiness event).
    Drained,
    /// MAX_READS reached: more may be waiting, come back soon.
    More,
    Eof,
}

/// A non-blocking connection with an input remainder and an output queue.
pub struct Conn {
    stream: TcpStream,
    inbuf: Vec<u8>,
    pub out: Vec<u8>,
    out_pos: usize,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Conn {
        let _ = stream.set_nodelay(true);
        Conn { stream, inbuf: Vec::new(), out: Vec::new(), out_pos: 0 }
    }

    pub fn queued(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Writes until the queue is empty or the socket is full.
    pub fn flush(&mut self) -> Result<(), String> {
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err("connection closed while writing".into()),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Still connecting, or the socket buffer is full.
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected) => break,
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        Ok(())
    }

    /// Reads what the socket has and hands each decoded event to `on_event`,
    /// with the output queue (to answer a server's PING) and the time the
    /// read returned.
    pub fn read_events<F>(&mut self, proto: Proto, scratch: &mut [u8], mut on_event: F) -> Result<ReadOutcome, String>
    where
        F: FnMut(Event<'_>, &mut Vec<u8>, u64),
    {
        let Conn { stream, inbuf, out, .. } = self;
        let mut decode_all = |buf: &[u8], out: &mut Vec<u8>| -> Result<usize, String> {
            let (mut pos, now) = (0, now_ns());
            while let Some((ev, used)) = proto.decode(&buf[pos..])? {
                on_event(ev, out, now);
                pos += used;
            }
            Ok(pos)
        };
        for _ in 0..MAX_READS {
            let n = match stream.read(scratch) {
                Ok(0) => return Ok(ReadOutcome::Eof),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected) => {
                    return Ok(ReadOutcome::Drained)
                }
                Err(e) => return Err(format!("read: {e}")),
            };
            if inbuf.is_empty() {
                let used = decode_all(&scratch[..n], out)?;
                inbuf.extend_from_slice(&scratch[used..n]);
            } else {
                inbuf.extend_from_slice(&scratch[..n]);
                let used = decode_all(inbuf, out)?;
                inbuf.drain(..used);
            }
            if inbuf.len() > MAX_INBUF {
                return Err("incomplete frame larger than 1 MiB".into());
            }
            // A short read emptied the socket; anything arriving later raises a
            // new edge-triggered event, so this saves the read that would block.
            if n < scratch.len() {
                return Ok(ReadOutcome::Drained);
            }
        }
        Ok(ReadOutcome::More)
    }
}
