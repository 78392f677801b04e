//! The frames a worker has queued for the channel server, written in order
//! over as many writes as the socket needs.
//!
//! A write may stop inside a frame. The buffer is only ever cut at the start
//! of the frame being written, so it always begins with a whole frame: after a
//! broken link the publishes not yet started can be picked out and resent, and
//! a handoff can tell its successor how much of the first frame went out.

use std::io::{self, Write};

use crate::protocol::frame::{encoded_len as frame_len, Frame};

#[derive(Debug, Default)]
pub struct OutFrames {
    buf: Vec<u8>,
    /// `buf[sent..]` is not written yet.
    sent: usize,
    /// Where the frame holding `sent` starts; frames before it went out whole.
    frame_at: usize,
}

impl OutFrames {
    /// Frames taken over from a predecessor, `written` bytes of the first of
    /// them already sent.
    pub fn from_parts(buf: Vec<u8>, written: usize) -> OutFrames {
        OutFrames { sent: written.min(buf.len()), buf, frame_at: 0 }
    }

    /// What a successor needs: the frames not yet written in full, and how many
    /// bytes of the first one were.
    pub fn parts(&self) -> (Vec<u8>, usize) {
        (self.buf[self.frame_at..].to_vec(), self.sent - self.frame_at)
    }

    pub fn unsent(&self) -> usize {
        self.buf.len() - self.sent
    }

    pub fn push(&mut self, frame: Frame<'_>) {
        frame.encode(&mut self.buf);
    }

    /// Puts frames ahead of everything queued; only before anything is written.
    pub fn push_front(&mut self, frames: Vec<u8>) {
        debug_assert_eq!(self.sent, 0);
        self.buf.splice(..0, frames);
    }

    /// Where the first publish not yet started begins (the end if none).
    fn first_publish(&self) -> usize {
        let mut at = self.frame_at;
        while at < self.buf.len() && (at < self.sent || self.buf[at + 4] != Frame::PUBLISH_KIND) {
            at += frame_len(&self.buf[at..]);
        }
        at
    }

    /// Writes until everything is out (with `hold_publishes`, everything ahead
    /// of the first publish not yet started) or the socket is full.
    pub fn write_to(&mut self, w: &mut impl Write, hold_publishes: bool) -> io::Result<()> {
        let end = if hold_publishes { self.first_publish() } else { self.buf.len() };
        while self.sent < end {
            match w.write(&self.buf[self.sent..end]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.sent == self.buf.len() {
            self.buf.clear();
            (self.sent, self.frame_at) = (0, 0);
            return Ok(());
        }
        while self.frame_at + frame_len(&self.buf[self.frame_at..]) <= self.sent {
            self.frame_at += frame_len(&self.buf[self.frame_at..]);
        }
        if self.frame_at > self.buf.len() / 2 {
            self.buf.drain(..self.frame_at);
            (self.sent, self.frame_at) = (self.sent - self.frame_at, 0);
        }
        Ok(())
    }

    /// After the link broke: keeps only the publishes not yet started, for the
    /// next connection. Returns how many publishes were lost: a frame cut in
    /// half cannot be resent.
    pub fn keep_unstarted_publishes(&mut self) -> u64 {
        let mut kept = Vec::with_capacity(self.unsent());
        let (mut at, mut lost) = (self.frame_at, 0);
        while at < self.buf.len() {
            let end = at + frame_len(&self.buf[at..]);
            if self.buf[at + 4] == Frame::PUBLISH_KIND {
                match at >= self.sent {
                    true => kept.extend_from_slice(&self.buf[at..end]),
                    false if self.sent < end => lost += 1,
                    false => {}
                }
            }
            at = end;
        }
        *self = OutFrames { buf: kept, sent: 0, frame_at: 0 };
        lost
    }

    /// Frees a large buffer once it is empty.
    pub fn shrink(&mut self, keep: usize) {
        if self.buf.is_empty() && self.buf.capacity() > keep {
            self.buf = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::FrameReader;

    /// Takes `budget` bytes, then reports a full socket.
    struct Socket {
        got: Vec<u8>,
        budget: usize,
    }

    impl Write for Socket {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let n = b.len().min(self.budget);
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.budget -= n;
            self.got.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn publishes(buf: &[u8]) -> Vec<Vec<u8>> {
        let mut r = FrameReader::with_bytes(buf.to_vec());
        let mut out = Vec::new();
        while let Some((f, _)) = r.next_frame().unwrap() {
            match f {
                Frame::Publish { message, .. } => out.push(message.to_vec()),
                other => panic!("{other:?}"),
            }
        }
        assert!(r.unparsed().is_empty(), "a partial frame");
        out
    }

    /// Writes stop inside a frame, more than half the buffer is cut away, and
    /// then the link breaks: what is kept is exactly the whole publishes not
    /// yet started, and the stream written so far plus a successor's share is
    /// the whole stream.
    #[test]
    fn cut_mid_frame_then_broken() {
        for budget in [1, 7, 100, 151, 599, 1000] {
            let mut q = OutFrames::default();
            let msgs: Vec<Vec<u8>> = (0..10u8).map(|i| vec![b'a' + i; 50 + i as usize]).collect();
            for m in &msgs {
                q.push(Frame::Publish { topic: b"t", message: m });
            }
            let total = q.unsent();
            let mut sock = Socket { got: Vec::new(), budget };
            q.write_to(&mut sock, false).unwrap();
            let (rest, written) = q.parts();
            assert_eq!(sock.got.len() + rest.len() - written, total, "budget {budget}");
            assert_eq!(written, sock.got.len() - (total - rest.len()));
            let started = msgs.len() - publishes(&rest).len() + usize::from(written > 0);
            let lost = q.keep_unstarted_publishes();
            assert_eq!(lost, u64::from(written > 0), "budget {budget}");
            let kept = publishes(&q.parts().0);
            assert_eq!(kept, msgs[started..].to_vec(), "budget {budget}");
        }
    }

    #[test]
    fn holding_writes_only_what_precedes_the_first_publish() {
        let mut q = OutFrames::default();
        q.push(Frame::Publish { topic: b"t", message: b"held" });
        q.push_front({
            let mut head = Vec::new();
            Frame::Sub(b"t").encode(&mut head);
            head
        });
        let mut sock = Socket { got: Vec::new(), budget: usize::MAX };
        q.write_to(&mut sock, true).unwrap();
        let mut head = Vec::new();
        Frame::Sub(b"t").encode(&mut head);
        assert_eq!(sock.got, head);
        q.write_to(&mut sock, false).unwrap();
        assert_eq!(q.unsent(), 0);
    }
}
