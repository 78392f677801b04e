//! The handoff socket: on reload a worker being replaced sends each live
//! connection (its descriptor, passed with SCM_RIGHTS, and its state) to its
//! successor over a Unix socketpair, then waits for the successor's
//! acknowledgement before it exits. Without one (the successor died), it
//! carries on serving as if nothing had happened. What travels is the
//! service's own `Payload`; this module only carries it.
//!
//! Wire format, one message after another on a stream socket:
//! `length:u32be format:u8 fds:u8 payload` where payload is a postcard-encoded
//! message and `fds` descriptors travel with it. The kernel delivers a
//! message's descriptors no later than its bytes, so the receiver queues
//! descriptors as they come and hands each message the ones it declares.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// What a service hands over, one message per connection.
pub trait Payload: Serialize + DeserializeOwned {
    /// The shape of the messages and the encoding. Bump it whenever either
    /// changes: a reload may run a build with another shape, and the decoder
    /// could misread it silently. A successor that reads another format
    /// refuses the handoff, so the reload fails and the old worker keeps
    /// serving. (Builds before this byte existed sent their `fds` byte, 0 or
    /// 1, in its place, so 0 and 1 are never used.)
    const FORMAT: u8;
}

/// A service that never hands over.
impl Payload for () {
    const FORMAT: u8 = 2;
}

const HEAD: usize = 6;

/// How long the old worker waits for its successor to take everything.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
const ACK: u8 = b'k';

/// The old worker's end: blocking, with a timeout on every send.
pub struct Sender<M> {
    sock: UnixStream,
    _msg: PhantomData<fn(&M)>,
}

impl<M: Payload> Sender<M> {
    pub fn new(sock: UnixStream) -> io::Result<Sender<M>> {
        sock.set_nonblocking(false)?;
        sock.set_write_timeout(Some(ACK_TIMEOUT))?;
        sock.set_read_timeout(Some(ACK_TIMEOUT))?;
        Ok(Sender { sock, _msg: PhantomData })
    }

    pub fn send(&mut self, msg: &M, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let payload = postcard::to_allocvec(msg).map_err(io::Error::other)?;
        let mut head = [0u8; HEAD];
        head[..4].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        head[4] = M::FORMAT;
        head[5] = u8::from(fd.is_some());
        let raw = fd.map(|f| [f.as_raw_fd()]);
        let cmsgs: Vec<ControlMessage<'_>> = raw.as_ref().map(|r| ControlMessage::ScmRights(r)).into_iter().collect();
        let iov = [IoSlice::new(&head), IoSlice::new(&payload)];
        let sent = loop {
            match sendmsg::<()>(self.sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
                Ok(n) => break n,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        };
        // The descriptor went with the first byte; the rest is plain data.
        let rest: Vec<u8> = head.iter().chain(&payload).skip(sent).copied().collect();
        self.sock.write_all(&rest)
    }

    /// Marks the end and waits for the successor to confirm it has taken over.
    pub fn finish(mut self) -> io::Result<()> {
        self.sock.shutdown(std::net::Shutdown::Write)?;
        let mut b = [0u8; 1];
        match self.sock.read(&mut b)? {
            1 if b[0] == ACK => Ok(()),
            _ => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the successor did not confirm")),
        }
    }
}

/// The successor's end, read from its event loop.
pub struct Receiver<M> {
    pub sock: mio::net::UnixStream,
    buf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
    pub eof: bool,
    _msg: PhantomData<fn() -> M>,
}

impl<M: Payload> Receiver<M> {
    pub fn new(sock: UnixStream) -> io::Result<Receiver<M>> {
        sock.set_nonblocking(true)?;
        Ok(Receiver {
            sock: mio::net::UnixStream::from_std(sock),
            buf: Vec::new(),
            fds: VecDeque::new(),
            eof: false,
            _msg: PhantomData,
        })
    }

    /// Reads what has arrived, queueing descriptors.
    pub fn read(&mut self) -> io::Result<()> {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 253]);
        loop {
            let mut iov = [IoSliceMut::new(&mut chunk)];
            let msg = match recvmsg::<()>(self.sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            {
                Ok(m) => m,
                Err(nix::errno::Errno::EAGAIN) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            let n = msg.bytes;
            for c in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    // SAFETY: the kernel just installed these descriptors in this
                    // process for us; nothing else refers to them.
                    self.fds.extend(fds.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                }
            }
            if n == 0 {
                self.eof = true;
                return Ok(());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next whole message and its descriptor.
    pub fn next_msg(&mut self) -> io::Result<Option<(M, Option<OwnedFd>)>> {
        if self.buf.len() < HEAD {
            return Ok(None);
        }
        if self.buf[4] != M::FORMAT {
            let theirs = match self.buf[4] {
                0 | 1 => "a format from before format numbers".to_string(),
                v => format!("format {v}"),
            };
            return Err(io::Error::other(format!(
                "the old worker's build hands over in {theirs}, this build reads format {}: \
                 use restart instead of reload to change between them",
                M::FORMAT
            )));
        }
        let len = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
        if self.buf.len() < HEAD + len {
            return Ok(None);
        }
        let fd = match self.buf[5] {
            0 => None,
            _ => {
                Some(self.fds.pop_front().ok_or_else(|| io::Error::other("a message arrived without its descriptor"))?)
            }
        };
        let msg = postcard::from_bytes(&self.buf[HEAD..HEAD + len]).map_err(io::Error::other)?;
        self.buf.drain(..HEAD + len);
        Ok(Some((msg, fd)))
    }

    /// Tells the old worker it may exit.
    pub fn acknowledge(&mut self) -> io::Result<()> {
        self.sock.write_all(&[ACK])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    enum Msg {
        Conn { id: u64, unsent: Vec<u8> },
        Last(Vec<u8>),
    }

    impl Payload for Msg {
        const FORMAT: u8 = 9;
    }

    #[test]
    fn messages_and_descriptors_arrive_together() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut rx = Receiver::<Msg>::new(b).unwrap();
        let mut tx = Sender::<Msg>::new(a).unwrap();
        let (x, _y) = UnixStream::pair().unwrap();
        let sender = std::thread::spawn(move || {
            tx.send(&Msg::Conn { id: 7, unsent: vec![b'z'; 300_000] }, Some(std::os::fd::AsFd::as_fd(&x))).unwrap();
            tx.send(&Msg::Last(vec![1, 2]), None).unwrap();
            tx.finish()
        });
        let mut got = Vec::new();
        while !rx.eof || got.len() < 2 {
            rx.read().unwrap();
            while let Some(m) = rx.next_msg().unwrap() {
                got.push(m);
            }
        }
        rx.acknowledge().unwrap();
        sender.join().unwrap().unwrap();
        assert!(matches!(&got[0], (Msg::Conn { id: 7, unsent }, Some(_)) if unsent.len() == 300_000));
        assert!(matches!(&got[1], (Msg::Last(l), None) if l == &[1, 2]));
    }

    #[test]
    fn another_format_is_refused() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut rx = Receiver::<Msg>::new(b).unwrap();
        // What a build before the format byte sent: length, fds = 0, payload.
        a.write_all(&[0, 0, 0, 1, 0, 9]).unwrap();
        rx.read().unwrap();
        let err = rx.next_msg().unwrap_err().to_string();
        assert!(err.contains("before format numbers") && err.contains("format 9"), "{err}");
        // And a build with another format number.
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut rx = Receiver::<Msg>::new(b).unwrap();
        a.write_all(&[0, 0, 0, 1, 8, 0, 9]).unwrap();
        rx.read().unwrap();
        let err = rx.next_msg().unwrap_err().to_string();
        assert!(err.contains("hands over in format 8, this build reads format 9"), "{err}");
    }
}
