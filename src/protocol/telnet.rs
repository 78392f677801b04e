//! Removes telnet commands (RFC 854) from one line of a client's input.
//!
//! A telnet client mixes `IAC …` sequences into what the person types (option
//! negotiation at connect, `IAC IP` for Ctrl-C); programs and `nc` send any
//! bytes. So only well-formed commands are removed, and everything else is
//! data:
//!
//! - `IAC IAC` is one 0xFF data byte (telnet's escape);
//! - `IAC` + a two-byte command (NOP, DM, BRK, IP, AO, AYT, EC, EL, GA:
//!   0xF1–0xF9) is removed;
//! - `IAC WILL|WONT|DO|DONT <option>` (0xFB–0xFE, then any byte) is removed;
//! - `IAC SB … IAC SE` is removed if it ends within `MAX_SUBNEGOTIATION` bytes;
//! - any other 0xFF (followed by a byte below 0xF1, by a lone `SE`, or ending
//!   the line), and an `IAC SB` that does not end in time, is data.
//!
//! Lines are split at LF before this runs, so a newline is never part of a
//! command and nothing spans lines: the state of a half-sent command is the
//! half-sent line, already bounded by the line limit.

const IAC: u8 = 0xFF;
const SE: u8 = 0xF0;
const NOP: u8 = 0xF1;
const GA: u8 = 0xF9;
const SB: u8 = 0xFA;
const WILL: u8 = 0xFB;
const DONT: u8 = 0xFE;

/// Longest `IAC SB … IAC SE` removed, in bytes. Real subnegotiations (terminal
/// type, window size) take a few dozen.
pub const MAX_SUBNEGOTIATION: usize = 64;

/// Whether `bytes` may hold telnet commands: whether there is a 0xFF.
pub fn may_hold_commands(bytes: &[u8]) -> bool {
    memchr::memchr(IAC, bytes).is_some()
}

/// Removes telnet commands from `line` in place; returns its new length.
pub fn strip(line: &mut [u8]) -> usize {
    // Fast path: no 0xFF, which is nearly every line.
    let Some(first) = memchr::memchr(IAC, line) else {
        return line.len();
    };
    let (mut out, mut i) = (first, first);
    while i < line.len() {
        let b = line[i];
        let skip = if b == IAC { command_len(&line[i..]) } else { 0 };
        if skip == 0 {
            line[out] = b;
            out += 1;
            i += 1;
        } else if line.get(i + 1) == Some(&IAC) {
            line[out] = IAC; // escaped data byte
            out += 1;
            i += 2;
        } else {
            i += skip;
        }
    }
    out
}

/// The length of the telnet command `s` (which starts with IAC) begins with,
/// or 0 if it is data.
fn command_len(s: &[u8]) -> usize {
    match s.get(1) {
        Some(&IAC) => 2,
        Some(NOP..=GA) => 2,
        Some(WILL..=DONT) if s.len() > 2 => 3,
        Some(&SB) => subnegotiation_len(s),
        _ => 0,
    }
}

/// `IAC SB <option> … IAC SE`, with `IAC IAC` inside for a 0xFF; 0 if it is
/// malformed or does not end within MAX_SUBNEGOTIATION bytes.
fn subnegotiation_len(s: &[u8]) -> usize {
    let s = &s[..s.len().min(MAX_SUBNEGOTIATION)];
    let mut i = 3; // IAC SB <option>
    while i + 1 < s.len() {
        match (s[i], s[i + 1]) {
            (IAC, IAC) => i += 2,
            (IAC, SE) => return i + 2,
            (IAC, _) => return 0,
            _ => i += 1,
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stripped(line: &[u8]) -> Vec<u8> {
        let mut b = line.to_vec();
        let n = strip(&mut b);
        b.truncate(n);
        b
    }

    #[test]
    fn removes_negotiation_and_keeps_text() {
        let input: &[u8] = b"\xff\xfd\x03\xff\xfb\x18sub\xff\xf4scribe\xff\xfa\x18\x01\xff\xf0";
        assert_eq!(stripped(input), b"subscribe");
    }

    #[test]
    fn escaped_iac_is_data() {
        assert_eq!(stripped(b"x\xff\xffy"), b"x\xffy");
        assert_eq!(stripped(b"\xff\xfa\x18a\xff\xffb\xff\xf0c"), b"c");
    }

    #[test]
    fn iac_before_a_non_command_is_data() {
        assert_eq!(stripped(b"caf\xe9 \xffb \xff end \xff"), b"caf\xe9 \xffb \xff end \xff");
        assert_eq!(stripped(b"a\xff\xf0b"), b"a\xff\xf0b");
        assert_eq!(stripped(b"a\xff\xfb"), b"a\xff\xfb"); // WILL without its option
    }

    #[test]
    fn an_unfinished_or_long_subnegotiation_is_data() {
        assert_eq!(stripped(b"one \xff\xfa"), b"one \xff\xfa");
        assert_eq!(stripped(b"\xff\xfa\x18xx\xff\x01\xff\xf0"), b"\xff\xfa\x18xx\xff\x01\xff\xf0");
        let long = [&b"\xff\xfa\x18"[..], &[b'x'; MAX_SUBNEGOTIATION], b"\xff\xf0"].concat();
        assert_eq!(stripped(&long), long);
        let fits = [&b"\xff\xfa\x18"[..], &[b'x'; MAX_SUBNEGOTIATION - 5], b"\xff\xf0!"].concat();
        assert_eq!(stripped(&fits), b"!");
    }

    proptest! {
        // Never longer, and a line without 0xFF is untouched.
        #[test]
        fn never_grows(line in proptest::collection::vec(any::<u8>(), 0..200)) {
            let out = stripped(&line);
            prop_assert!(out.len() <= line.len());
            if !line.contains(&IAC) {
                prop_assert_eq!(out, line);
            }
        }

        // Any bytes a raw client escapes the telnet way come out as sent.
        #[test]
        fn escaped_bytes_round_trip(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let escaped: Vec<u8> = data.iter().flat_map(|&b| if b == IAC { vec![IAC, IAC] } else { vec![b] }).collect();
            prop_assert_eq!(stripped(&escaped), data);
        }
    }
}
