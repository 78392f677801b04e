//! The clock and the payload every message carries.
//!
//! Payload layout: 16 hex digits of sequence number, 16 of send time (ns), then
//! '.' padding. No spaces or newlines, so it is a valid line-protocol message.

use std::sync::OnceLock;
use std::time::Instant;

/// Nanoseconds since the process started; one monotonic clock for both threads.
pub fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

const HEX: &[u8; 16] = b"0123456789abcdef";

pub fn put(out: &mut Vec<u8>, seq: u64, ts: u64, pad: &[u8]) {
    for v in [seq, ts] {
        out.extend((0..16).rev().map(|i| HEX[((v >> (i * 4)) & 15) as usize]));
    }
    out.extend_from_slice(pad);
}

/// (sequence, timestamp), or None if the payload is not one of ours.
pub fn parse(p: &[u8], len: usize) -> Option<(u64, u64)> {
    if p.len() != len {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let hex = |s: &[u8]| s.iter().try_fold(0u64, |acc, &c| Some(acc << 4 | digit(c)? as u64));
    Some((hex(&p[..16])?, hex(&p[16..32])?))
}
