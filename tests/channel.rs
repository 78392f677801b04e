//! The channel server's protection of everyone else from one stuck worker.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::*;

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    f.push(kind);
    f.extend_from_slice(body);
    f
}

#[test]
fn a_worker_that_stops_reading_is_cut_off_and_others_keep_receiving() {
    let dir = tempfile::tempdir().unwrap();
    let ch = Server::start("channel-server", dir.path(), &["--max-link-buffer", "2097152"]);
    let source = Server::start("data-source", dir.path(), &["--channel", &ch.addr, "--count", "1"]);
    let sub = Server::start("subscriber", dir.path(), &["--channel", &ch.addr, "--count", "1"]);
    sub.wait_linked();
    source.wait_linked();
    // A "worker" that subscribes and then never reads again.
    let mut stuck = TcpStream::connect(&ch.addr).unwrap();
    stuck
        .write_all(
            &[frame(1, &[fanout::protocol::frame::VERSION]), frame(3, &[&[0u8; 8][..], b"topic1"].concat())].concat(),
        )
        .unwrap();
    let mut reader = sub.connect();
    reader.subscribe(&["topic1"]);
    // Publishers wait while the stuck link is over its limit (up to 5 s).
    reader.stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();

    // Publish until the stuck link is cut off (after 5 s without progress),
    // reading everything on the healthy subscriber meanwhile.
    let mut p = source.connect();
    let payload = "x".repeat(1000);
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut sent = 0;
    loop {
        let mut batch = String::new();
        for i in sent..sent + 100 {
            batch.push_str(&format!("publish {i} {payload}\n"));
        }
        p.send_bytes(batch.as_bytes());
        for i in sent..sent + 100 {
            let line = reader
                .try_line()
                .unwrap_or_else(|| panic!("message {i} never came\n{}\n{}\n{}", ch.status(), ch.log(), sub.log()));
            assert!(line.starts_with(&format!("Received [topic1]: {i} ")), "{}", &line[..40.min(line.len())]);
        }
        sent += 100;
        if ch.status()["workers"][0]["slow_consumers"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the stuck link was never cut off");
    }
    assert!(ch.log().contains("read nothing for"));
    assert!(ch.status()["workers"][0]["dropped"].as_u64().unwrap() > 0);
    drop(stuck);
    source.stop(&[]);
    sub.stop(&[]);
    ch.stop(&[]);
}
