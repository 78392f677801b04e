//! Splits a client's byte stream into lines, with a hard limit on line length.
//!
//! Input arrives in arbitrary pieces. Lines that fit in one read are handed out
//! as slices of the read buffer (no copy); only the unfinished tail of a read is
//! kept per connection, and never more than the limit, so a client that sends
//! half a line and waits costs at most `max` bytes. Telnet commands are removed
//! from each whole line (see `telnet`); the limit counts the bytes as sent.

use super::telnet;

/// One item of input.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A whole line, without its LF or CRLF.
    Text(&'a [u8]),
    /// A line went over the limit; its bytes up to the next LF are discarded.
    TooLong,
}

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct LineReader {
    partial: Vec<u8>,
    discarding: bool,
}

impl LineReader {
    /// Bytes of an unfinished line held for this connection.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Feeds one read (`buf` is modified: telnet commands are removed in
    /// place) and calls `on_line` for every line it completes, in order.
    pub fn feed(&mut self, buf: &mut [u8], max: usize, mut on_line: impl FnMut(Line<'_>)) {
        // One look for telnet's 0xFF in the whole read rather than one per
        // line: nearly every read has none.
        let telnet = telnet::may_hold_commands(buf);
        let mut input = buf;
        while let Some(i) = memchr::memchr(b'\n', input) {
            let (seg, rest) = std::mem::take(&mut input).split_at_mut(i);
            input = &mut rest[1..];
            if std::mem::take(&mut self.discarding) {
                continue; // the end of an over-long line, already reported
            }
            if self.partial.is_empty() {
                on_line(check(seg, max, telnet));
            } else if self.partial.len() + seg.len() > max + 1 {
                self.release();
                on_line(Line::TooLong);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(seg);
                on_line(check(&mut line, max, true)); // begun in an earlier read
                self.partial = line;
                self.release();
            }
        }
        if input.is_empty() || self.discarding {
            return;
        }
        // `max + 1` leaves room for the CR of a CRLF that is still to come.
        if self.partial.len() + input.len() > max + 1 {
            self.release();
            self.discarding = true;
            on_line(Line::TooLong);
        } else {
            self.partial.extend_from_slice(input);
        }
    }

    /// Empties the partial line, freeing a large buffer so that an idle
    /// connection holds no memory.
    fn release(&mut self) {
        if self.partial.capacity() > 4096 {
            self.partial = Vec::new();
        } else {
            self.partial.clear();
        }
    }
}

/// `telnet`: the line may hold telnet commands, to be stripped.
fn check(line: &mut [u8], max: usize, telnet: bool) -> Line<'_> {
    let line = match line {
        [rest @ .., b'\r'] => rest,
        all => all,
    };
    if line.len() > max {
        return Line::TooLong;
    }
    let n = if telnet { telnet::strip(line) } else { line.len() };
    Line::Text(&line[..n])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, PartialEq, Eq, Clone)]
    enum Owned {
        Text(Vec<u8>),
        TooLong,
    }

    fn run(chunks: &[Vec<u8>], max: usize) -> (Vec<Owned>, usize) {
        let mut r = LineReader::default();
        let mut out = Vec::new();
        for c in chunks {
            let mut c = c.clone();
            r.feed(&mut c, max, |l| {
                out.push(match l {
                    Line::Text(t) => Owned::Text(t.to_vec()),
                    Line::TooLong => Owned::TooLong,
                })
            });
            assert!(r.buffered() <= max + 1, "partial line exceeded the limit");
        }
        (out, r.buffered())
    }

    #[test]
    fn lf_and_crlf() {
        let (l, _) = run(&[b"a\r\nbc\n".to_vec()], 10);
        assert_eq!(l, vec![Owned::Text(b"a".to_vec()), Owned::Text(b"bc".to_vec())]);
    }

    #[test]
    fn over_long_line_is_reported_once_and_skipped() {
        let (l, _) = run(&[b"0123456".to_vec(), b"789\nok\n".to_vec()], 5);
        assert_eq!(l, vec![Owned::TooLong, Owned::Text(b"ok".to_vec())]);
    }

    #[test]
    fn telnet_commands_are_stripped_from_lines_of_any_read() {
        // IAC IP in a line begun in an earlier read, then in a later read beside a plain line.
        let (l, _) = run(&[b"pi\xff\xf4".to_vec(), b"ng\nplain\nsu\xff\xf1b\n".to_vec()], 10);
        let want = [&b"ping"[..], b"plain", b"sub"].map(|t| Owned::Text(t.to_vec()));
        assert_eq!(l, want);
    }

    #[test]
    fn exactly_max_fits() {
        let (l, _) = run(&[b"12".to_vec(), b"345\r".to_vec(), b"\n".to_vec()], 5);
        assert_eq!(l, vec![Owned::Text(b"12345".to_vec())]);
    }

    fn split(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        cuts.sort();
        let mut out = Vec::new();
        let mut last = 0;
        for c in cuts {
            out.push(data[last..c].to_vec());
            last = c;
        }
        out.push(data[last..].to_vec());
        out
    }

    proptest! {
        // Any bytes, cut anywhere: never panics, never holds more than the limit,
        // and every line without 0xFF bytes comes out exactly as sent.
        #[test]
        fn arbitrary_bytes_split_anywhere(data in proptest::collection::vec(any::<u8>(), 0..600),
                                          cuts in proptest::collection::vec(any::<usize>(), 0..8),
                                          max in 1usize..64) {
            let (whole, _) = run(std::slice::from_ref(&data), max);
            let (pieces, _) = run(&split(&data, &cuts), max);
            prop_assert_eq!(whole, pieces);
        }

        #[test]
        fn plain_lines_round_trip(lines in proptest::collection::vec(proptest::collection::vec(0u8..0xFE, 0..40), 0..20),
                                  cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
            let lines: Vec<Vec<u8>> = lines.into_iter()
                .map(|l| l.into_iter().filter(|b| *b != b'\n' && *b != b'\r').collect()).collect();
            let mut data = Vec::new();
            for l in &lines { data.extend_from_slice(l); data.push(b'\n'); }
            let (got, left) = run(&split(&data, &cuts), 64);
            prop_assert_eq!(left, 0);
            prop_assert_eq!(got, lines.into_iter().map(Owned::Text).collect::<Vec<_>>());
        }
    }
}
