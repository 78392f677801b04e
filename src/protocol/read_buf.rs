//! The input buffer of one connection: reads straight from the socket and
//! hands out the bytes not parsed yet, so a parser can return slices of it
//! and forwarding needs no copy.

use std::io::{self, Read};

#[derive(Debug, Default)]
pub struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

const READ_CHUNK: usize = 64 * 1024;

impl ReadBuf {
    /// A buffer holding bytes received (and not parsed) by another process.
    pub fn with_bytes(bytes: Vec<u8>) -> ReadBuf {
        ReadBuf { start: 0, end: bytes.len(), buf: bytes }
    }

    /// Bytes received and not yet consumed.
    pub fn unparsed(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Marks the first `n` unparsed bytes as handled.
    pub fn consume(&mut self, n: usize) {
        self.start += n;
    }

    /// Marks the first `n` unparsed bytes as handled and returns them.
    pub fn take(&mut self, n: usize) -> &[u8] {
        let at = self.start;
        self.start += n;
        &self.buf[at..self.start]
    }

    /// One `read` into free space. `Ok(0)` is end of stream.
    pub fn read_from(&mut self, r: &mut impl Read) -> io::Result<usize> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                // Empty (a new connection) or one message larger than the
                // buffer: grow. The parser bounds it, refusing what is too long
                // before it is all buffered.
                self.buf.resize((self.buf.len() * 2).max(READ_CHUNK), 0);
            }
        }
        let n = r.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }
}
