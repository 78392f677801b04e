//! Reload without disconnects: a worker being replaced hands every live
//! connection (its descriptor, passed with SCM_RIGHTS, and its state) and its
//! channel link to its successor over a Unix socketpair, then waits for the
//! successor's acknowledgement before it exits. Without one (the successor
//! died), it carries on serving as if nothing had happened.
//!
//! Wire format, one message after another on a stream socket:
//! `length:u32be version:u8 fds:u8 payload` where payload is a bincode-encoded
//! `Msg` and `fds` descriptors travel with the message. The kernel delivers a message's
//! descriptors no later than its bytes, so the receiver queues descriptors as
//! they come and hands each message the ones it declares.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use crate::protocol::line::LineReader;

/// A client connection in flight (its socket travels with it).
#[derive(Debug, Serialize, Deserialize)]
pub struct ClientState {
    pub id: u64,
    pub peer: SocketAddr,
    pub reader: LineReader,
    /// Output not yet written, starting at a line boundary or mid-line exactly
    /// where the socket stopped taking it.
    pub unsent: Vec<u8>,
    pub held: Vec<HeldState>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub closing: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum HeldState {
    Subscription(Vec<u8>),
    Text(Vec<u8>),
}

/// The channel link, its socket attached when it is up, and the topics. Sent
/// after every client, whose ids the topics refer to.
#[derive(Debug, Serialize, Deserialize)]
pub struct LinkState {
    /// Frames not yet written in full.
    pub unsent: Vec<u8>,
    /// Bytes of the first of them already written.
    pub written: usize,
    /// Bytes received and not yet parsed (the start of a frame).
    pub unparsed: Vec<u8>,
    pub topics: Vec<TopicState>,
    pub lost: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TopicState {
    pub name: Vec<u8>,
    /// Client ids.
    pub subscribers: Vec<u64>,
    pub waiting: Vec<u64>,
    pub remote: bool,
    pub acks_pending: u32,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Msg {
    Client(ClientState),
    /// The last message.
    Link(LinkState),
}

/// The shape of `Msg` and the states in it. Bump it whenever they change: a
/// reload may run a build with another shape, and bincode would misread it
/// silently. A successor that reads another version refuses the handoff, so
/// the reload fails and the old worker keeps serving. (Builds before this
/// byte existed sent their `fds` byte, 0 or 1, in its place.)
const VERSION: u8 = 3;
const HEAD: usize = 6;

/// How long the old worker waits for its successor to take everything.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
const ACK: u8 = b'k';

/// The old worker's end: blocking, with a timeout on every send.
pub struct Sender(UnixStream);

impl Sender {
    pub fn new(sock: UnixStream) -> io::Result<Sender> {
        sock.set_nonblocking(false)?;
        sock.set_write_timeout(Some(ACK_TIMEOUT))?;
        sock.set_read_timeout(Some(ACK_TIMEOUT))?;
        Ok(Sender(sock))
    }

    pub fn send(&mut self, msg: &Msg, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let payload = bincode::serialize(msg).map_err(io::Error::other)?;
        let mut head = [0u8; HEAD];
        head[..4].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        head[4] = VERSION;
        head[5] = u8::from(fd.is_some());
        let raw = fd.map(|f| [f.as_raw_fd()]);
        let cmsgs: Vec<ControlMessage<'_>> = raw.as_ref().map(|r| ControlMessage::ScmRights(r)).into_iter().collect();
        let iov = [IoSlice::new(&head), IoSlice::new(&payload)];
        let sent = loop {
            match sendmsg::<()>(self.0.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
                Ok(n) => break n,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        };
        // The descriptor went with the first byte; the rest is plain data.
        let rest: Vec<u8> = head.iter().chain(&payload).skip(sent).copied().collect();
        self.0.write_all(&rest)
    }

    /// Marks the end and waits for the successor to confirm it has taken over.
    pub fn finish(mut self) -> io::Result<()> {
        self.0.shutdown(std::net::Shutdown::Write)?;
        let mut b = [0u8; 1];
        match self.0.read(&mut b)? {
            1 if b[0] == ACK => Ok(()),
            _ => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the successor did not confirm")),
        }
    }
}

/// The successor's end, read from its event loop.
pub struct Receiver {
    pub sock: mio::net::UnixStream,
    buf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
    pub eof: bool,
}

impl Receiver {
    pub fn new(sock: UnixStream) -> io::Result<Receiver> {
        sock.set_nonblocking(true)?;
        Ok(Receiver { sock: mio::net::UnixStream::from_std(sock), buf: Vec::new(), fds: VecDeque::new(), eof: false })
    }

    /// Reads what has arrived, queueing descriptors.
    pub fn read(&mut self) -> io::Result<()> {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 253]);
        loop {
            let mut iov = [IoSliceMut::new(&mut chunk)];
            let msg = match recvmsg::<()>(self.sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
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
    pub fn next_msg(&mut self) -> io::Result<Option<(Msg, Option<OwnedFd>)>> {
        if self.buf.len() < HEAD {
            return Ok(None);
        }
        if self.buf[4] != VERSION {
            let theirs = match self.buf[4] {
                0 | 1 => "a format from before format numbers".to_string(),
                v => format!("format {v}"),
            };
            return Err(io::Error::other(format!(
                "the old worker's build hands over in {theirs}, this build reads format {VERSION}: \
                 use restart instead of reload to change between them"
            )));
        }
        let len = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
        if self.buf.len() < HEAD + len {
            return Ok(None);
        }
        let fd = match self.buf[5] {
            0 => None,
            _ => Some(self.fds.pop_front().ok_or_else(|| io::Error::other("a message arrived without its descriptor"))?),
        };
        let msg = bincode::deserialize(&self.buf[HEAD..HEAD + len]).map_err(io::Error::other)?;
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

    #[test]
    fn messages_and_descriptors_arrive_together() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut rx = Receiver::new(b).unwrap();
        let mut tx = Sender::new(a).unwrap();
        let (x, _y) = UnixStream::pair().unwrap();
        let state = ClientState {
            id: 7,
            peer: "127.0.0.1:9".parse().unwrap(),
            reader: LineReader::default(),
            unsent: vec![b'z'; 300_000],
            held: vec![HeldState::Subscription(b"t".to_vec())],
            bytes_in: 1,
            bytes_out: 2,
            closing: false,
        };
        let sender = std::thread::spawn(move || {
            tx.send(&Msg::Client(state), Some(std::os::fd::AsFd::as_fd(&x))).unwrap();
            let link = LinkState { unsent: vec![1, 2], written: 0, unparsed: vec![], topics: vec![], lost: 0 };
            tx.send(&Msg::Link(link), None).unwrap();
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
        assert!(matches!(&got[0], (Msg::Client(c), Some(_)) if c.id == 7 && c.unsent.len() == 300_000));
        assert!(matches!(&got[1], (Msg::Link(l), None) if l.unsent == [1, 2]));
    }

    #[test]
    fn another_format_is_refused() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut rx = Receiver::new(b).unwrap();
        // What a build before the version byte sent: length, fds = 0, payload.
        a.write_all(&[0, 0, 0, 1, 0, 9]).unwrap();
        rx.read().unwrap();
        let err = rx.next_msg().unwrap_err().to_string();
        assert!(err.contains("before format numbers") && err.contains(&format!("format {VERSION}")), "{err}");
    }
}
