//! Where the frames of a queue begin and end, and which are publishes: what a
//! queue of encoded frames (`runtime::outbound`, framed) asks, whatever the
//! protocol. A framing is two facts about a protocol, the length of the
//! frame a buffer starts with and whether it is a publish; the channel
//! protocol (`frame::FRAMING`) and the NATS client protocol (`nats::FRAMING`)
//! each give theirs. Every function takes a buffer that starts at a frame and
//! holds whole frames.

#[derive(Debug, Clone, Copy)]
pub struct Framing {
    /// The length of the frame `buf` starts with.
    pub len: fn(&[u8]) -> usize,
    /// Whether the frame `buf` starts with is a publish.
    pub is_publish: fn(&[u8]) -> bool,
}

impl Framing {
    fn next(&self, buf: &[u8], at: usize) -> usize {
        at + (self.len)(&buf[at..])
    }

    /// The start of the frame that byte `at` of `buf` belongs to, or `at`
    /// itself if a frame starts there (or `buf` ends there).
    pub fn start_of(&self, buf: &[u8], at: usize) -> usize {
        let mut pos = 0;
        while pos < buf.len() {
            let end = self.next(buf, pos);
            if end > at {
                return pos;
            }
            pos = end;
        }
        pos
    }

    /// The end of the frame being written when `at` bytes are out: `at`
    /// itself if it falls between frames.
    pub fn end_of(&self, buf: &[u8], at: usize) -> usize {
        match self.start_of(buf, at) {
            start if start < at => self.next(buf, start),
            _ => at,
        }
    }

    /// How many frames `buf` holds.
    pub fn count(&self, buf: &[u8]) -> u64 {
        self.count_where(buf, |_| true)
    }

    /// How many publishes `buf` holds.
    pub fn count_publishes(&self, buf: &[u8]) -> u64 {
        self.count_where(buf, self.is_publish)
    }

    /// How many frames of `buf` `counts` says yes to.
    pub fn count_where(&self, buf: &[u8], counts: fn(&[u8]) -> bool) -> u64 {
        let (mut at, mut n) = (0, 0);
        while at < buf.len() {
            n += u64::from(counts(&buf[at..]));
            at = self.next(buf, at);
        }
        n
    }

    /// Where the first publish not yet started begins, `written` bytes being
    /// out (the end of `buf` if there is none).
    pub fn first_unstarted_publish(&self, buf: &[u8], written: usize) -> usize {
        let mut at = 0;
        while at < buf.len() && (at < written || !(self.is_publish)(&buf[at..])) {
            at = self.next(buf, at);
        }
        at
    }

    /// The publishes of `buf` not yet started when `written` bytes are out,
    /// and how many publishes were cut in half.
    pub fn unstarted_publishes(&self, buf: &[u8], written: usize) -> (Vec<u8>, u64) {
        let mut kept = Vec::with_capacity(buf.len().saturating_sub(written));
        let (mut at, mut lost) = (0, 0);
        while at < buf.len() {
            let end = self.next(buf, at);
            if (self.is_publish)(&buf[at..]) {
                match at >= written {
                    true => kept.extend_from_slice(&buf[at..end]),
                    false if written < end => lost += 1,
                    false => {}
                }
            }
            at = end;
        }
        (kept, lost)
    }
}
