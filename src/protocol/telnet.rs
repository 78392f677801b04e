//! Strips telnet negotiation (RFC 854) from a client's byte stream.
//!
//! A telnet client interleaves `IAC …` sequences with what the person types
//! (option negotiation at connect, `IAC IP` for Ctrl-C). They can be split
//! across reads, so the stripper is a small state machine kept per connection.
//! It stores nothing but its state: hostile input cannot make it allocate.

const IAC: u8 = 0xFF;
const SB: u8 = 250;
const SE: u8 = 240;
const WILL: u8 = 251;
const DONT: u8 = 254;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Telnet {
    #[default]
    Data,
    /// Saw IAC.
    Iac,
    /// Saw IAC WILL/WONT/DO/DONT; the next byte is the option.
    Option,
    /// Inside a subnegotiation (IAC SB … IAC SE).
    Sub,
    /// Saw IAC inside a subnegotiation.
    SubIac,
}

impl Telnet {
    /// Removes negotiation bytes from `buf` in place; returns the new length.
    pub fn strip(&mut self, buf: &mut [u8]) -> usize {
        // Fast path: plain text, which is nearly every read.
        if *self == Telnet::Data && memchr::memchr(IAC, buf).is_none() {
            return buf.len();
        }
        let mut out = 0;
        for i in 0..buf.len() {
            let b = buf[i];
            let (next, keep) = match (*self, b) {
                (Telnet::Data, IAC) => (Telnet::Iac, false),
                (Telnet::Data, _) => (Telnet::Data, true),
                (Telnet::Iac, IAC) => (Telnet::Data, true), // escaped 0xFF data byte
                (Telnet::Iac, SB) => (Telnet::Sub, false),
                (Telnet::Iac, WILL..=DONT) => (Telnet::Option, false),
                (Telnet::Iac, _) => (Telnet::Data, false), // two-byte command (IP, NOP, …)
                (Telnet::Option, _) => (Telnet::Data, false),
                (Telnet::Sub, IAC) => (Telnet::SubIac, false),
                (Telnet::Sub, _) => (Telnet::Sub, false),
                (Telnet::SubIac, SE) => (Telnet::Data, false),
                (Telnet::SubIac, _) => (Telnet::Sub, false),
            };
            *self = next;
            if keep {
                buf[out] = b;
                out += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip_all(chunks: &[&[u8]]) -> Vec<u8> {
        let mut t = Telnet::default();
        let mut out = Vec::new();
        for c in chunks {
            let mut b = c.to_vec();
            let n = t.strip(&mut b);
            out.extend_from_slice(&b[..n]);
        }
        out
    }

    #[test]
    fn removes_negotiation_and_keeps_text() {
        let input: &[u8] = b"\xff\xfd\x03\xff\xfb\x18sub\xff\xf4scribe\xff\xfa\x18\x01\xff\xf0\n";
        assert_eq!(strip_all(&[input]), b"subscribe\n");
    }

    #[test]
    fn sequences_split_across_reads() {
        let out = strip_all(&[b"a\xff", b"\xfd", b"\x03b\xff\xfa", b"xx\xff", b"\xf0c"]);
        assert_eq!(out, b"abc");
    }

    #[test]
    fn escaped_iac_is_data() {
        assert_eq!(strip_all(&[b"x\xff\xffy"]), b"x\xffy");
    }
}
