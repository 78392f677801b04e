//! The producer of `jobs` and of `confirm`: writes messages on one connection
//! (at most `window` unconfirmed, or at a fixed rate) while a second thread
//! reads their confirmations.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;

use super::{io, Reader};
use crate::hist::Hist;
use crate::payload::{self, now_ns};

/// How a producer writes (flags of `jobs` and `confirm`).
#[derive(Args, Clone, Copy, Debug)]
pub struct Pace {
    /// Payload bytes (at least 32)
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Messages written and not yet confirmed, at most
    #[arg(long, default_value_t = 1000)]
    pub window: u64,
    /// Messages per second, each stamped as it is written; 0: as fast as the
    /// window allows (a latency measured then is mostly backlog)
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
}

/// What the producer saw: first write to last confirmation, and the latency
/// from writing each message to reading its confirmation.
pub struct Produced {
    pub elapsed: Duration,
    pub confirm: Hist,
}

/// Writes `count` payloads numbered 1, 2, … (`encode` frames one), and
/// reads their confirmations with `confirm`, which is given how many were
/// confirmed before and answers how many are now (RabbitMQ confirms several
/// at once). Every broker here confirms in the order of the writes on a
/// connection, so the i-th confirmation is the i-th message's.
pub fn produce(
    (mut r, mut w): (Reader, TcpStream),
    count: u64,
    p: &Pace,
    encode: impl Fn(&mut Vec<u8>, &[u8]),
    mut confirm: impl FnMut(&mut Reader, u64) -> Result<u64, String> + Send + 'static,
) -> Result<Produced, String> {
    let written: Arc<Vec<AtomicU64>> = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
    let confirmed = Arc::new(AtomicU64::new(0));
    let confirms = {
        let (confirmed, written) = (confirmed.clone(), written.clone());
        thread::spawn(move || -> Result<(Instant, Hist), String> {
            let mut hist = Hist::new();
            let mut done = 0;
            while done < count {
                let now = confirm(&mut r, done)?;
                let at = now_ns();
                for w in &written[done as usize..now.min(count) as usize] {
                    hist.record(at.saturating_sub(w.load(Ordering::Acquire)));
                }
                done = now;
                confirmed.store(done, Ordering::Release);
            }
            Ok((Instant::now(), hist))
        })
    };
    let start = Instant::now();
    let (mut sent, mut batch, mut body) = (0u64, Vec::new(), Vec::new());
    let pad = vec![b'.'; p.size - 32];
    while sent < count {
        let due = match p.rate {
            0 => count,
            rate => (start.elapsed().as_nanos() as u64 * rate / 1_000_000_000 + 1).min(count),
        };
        let upto = due.min(confirmed.load(Ordering::Acquire) + p.window);
        if upto <= sent {
            if confirms.is_finished() {
                break; // failed: its error is reported below
            }
            let wait = if due <= sent {
                (sent * 1_000_000_000 / p.rate).saturating_sub(start.elapsed().as_nanos() as u64)
            } else {
                0
            };
            thread::sleep(Duration::from_nanos(wait.max(20_000)));
            continue;
        }
        for seq in sent + 1..=upto {
            body.clear();
            let ts = now_ns();
            payload::put(&mut body, seq, ts, &pad);
            written[seq as usize - 1].store(ts, Ordering::Release);
            encode(&mut batch, &body);
        }
        w.write_all(&batch).map_err(io)?;
        batch.clear();
        sent = upto;
    }
    let (end, confirm) = confirms.join().map_err(|_| "the producer's reader panicked")??;
    Ok(Produced { elapsed: end - start, confirm })
}
