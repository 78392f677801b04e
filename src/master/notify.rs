//! systemd's readiness protocol (sd_notify(3)) for a `Type=notify` unit: one
//! datagram of `KEY=value` lines to the socket named by `NOTIFY_SOCKET`, sent
//! by the master (the unit's main process) as it becomes ready, reloads and
//! stops. Without the variable every call does nothing.
//!
//! Hand-written rather than the `sd-notify` crate: that crate connects the
//! variable's value as a file path, so it cannot reach an abstract socket
//! (`@name`, which systemd and container managers also hand out), and what it
//! would save is the few lines below.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use log::debug;

pub const ENV: &str = "NOTIFY_SOCKET";

pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let target = std::env::var_os(ENV).and_then(|name| match Self::open(name.as_bytes()) {
            Ok(t) => Some(t),
            Err(e) => {
                log::warn!("{ENV} is set but unusable ({e}); systemd will not hear from this server");
                None
            }
        });
        Notifier { target }
    }

    fn open(name: &[u8]) -> std::io::Result<(UnixDatagram, SocketAddr)> {
        let addr = match name.strip_prefix(b"@") {
            Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name)?,
            None => SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(name))?,
        };
        let sock = UnixDatagram::unbound()?;
        // The master's loop must never wait on systemd.
        sock.set_nonblocking(true)?;
        Ok((sock, addr))
    }

    /// Every worker serves (again): after start, and after a reload, whether
    /// it completed or stopped.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}\n"));
    }

    /// A reload begins. systemd wants the time it began, on CLOCK_MONOTONIC,
    /// to tell this reload's READY=1 from an earlier one.
    pub fn reloading(&self, status: &str) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}\nSTATUS={status}\n", monotonic_usec()));
    }

    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={status}\n"));
    }

    fn send(&self, msg: &str) {
        let Some((sock, addr)) = &self.target else {
            return;
        };
        // A lost notification is systemd's timeout to report, not ours to wait on.
        if let Err(e) = sock.send_to_addr(msg.as_bytes(), addr) {
            debug!("cannot notify systemd ({e}): {}", msg.replace('\n', " "));
        }
    }
}

/// Microseconds on CLOCK_MONOTONIC, the clock systemd compares against.
pub fn monotonic_usec() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC exists");
    t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn reaches_an_abstract_socket() {
        let name = format!("fanout-notify-test-{}", std::process::id());
        let server = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        let n = Notifier { target: Some(Notifier::open(format!("@{name}").as_bytes()).unwrap()) };
        let before = monotonic_usec();
        n.reloading("reloading");
        let msg = receive(&server);
        let usec: u64 = msg.lines().find_map(|l| l.strip_prefix("MONOTONIC_USEC=")).unwrap().parse().unwrap();
        assert!(msg.starts_with("RELOADING=1\n") && usec >= before, "{msg}");
        n.ready("serving");
        assert_eq!(receive(&server), "READY=1\nSTATUS=serving\n");
    }

    #[test]
    fn reaches_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier { target: Some(Notifier::open(path.as_os_str().as_bytes()).unwrap()) };
        n.stopping("stopping");
        assert_eq!(receive(&server), "STOPPING=1\nSTATUS=stopping\n");
    }
}
