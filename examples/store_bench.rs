//! Measures the message store (`fanout::store`): memory per retained
//! message, appends, reads and reopening, with 64-byte payloads.
//!
//!     cargo run --release --example store_bench [DIR]
//!
//! DIR (default: a directory under the system's temp dir) holds the disk
//! logs; it is emptied first. Figures go to stdout, one per line.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use fanout::store::{Config, Fsync, Store};
use nix::sys::resource::{getrusage, UsageWho};

/// Counts the bytes allocated and not yet freed.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Relaxed);
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const N: u64 = 1_000_000;
const PAYLOAD: [u8; 64] = [b'x'; 64];

fn big() -> Config {
    Config {
        retain_messages: N,
        retain_total: 4 << 30,
        segment_bytes: 64 << 20,
        fsync: Fsync::Never,
        ..Config::default()
    }
}

/// CPU seconds this process has used: the box is shared and busy, so a
/// rate per CPU second is steadier than one per wall-clock second.
fn cpu() -> f64 {
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(u.user_time()) + t(u.system_time())
}

struct Clock(Instant, f64);

fn clock() -> Clock {
    Clock(Instant::now(), cpu())
}

fn rate(what: &str, n: u64, start: Clock) {
    let (wall, cpu) = (start.0.elapsed().as_secs_f64(), cpu() - start.1);
    println!(
        "{what}: {:.2} M/CPU-s, {:.2} M/s wall ({n} in {cpu:.3} CPU-s, {wall:.3} s)",
        n as f64 / cpu / 1e6,
        n as f64 / wall / 1e6
    );
}

fn main() {
    let dir: PathBuf =
        std::env::args().nth(1).map_or_else(|| std::env::temp_dir().join("fanout-store-bench"), PathBuf::from);
    let _ = std::fs::remove_dir_all(&dir);

    // Memory per retained message (one topic) and per topic.
    let before = LIVE.load(Relaxed);
    let mut s = Store::in_memory(big());
    let t = s.topic_id(b"topic");
    let start = clock();
    for _ in 0..N {
        s.append(t, &PAYLOAD, 0);
    }
    rate("append, memory, 1 topic", N, start);
    let per = (LIVE.load(Relaxed) - before) as f64 / N as f64;
    println!("memory per retained message of 64 B: {per:.1} bytes");

    let start = clock();
    let (mut from, mut read, mut sum) = (1, 0u64, 0usize);
    loop {
        let r = s.read(b"topic", from, 1000, 1 << 20);
        from = r.next;
        let before = read;
        for m in r {
            sum += m.body.len();
            read += 1;
        }
        if read == before {
            break;
        }
    }
    assert_eq!(sum as u64, 64 * N);
    rate("read 1M retained, batches of 1000", read, start);
    drop(s);

    let before = LIVE.load(Relaxed);
    let mut s = Store::in_memory(big());
    let start = clock();
    for i in 0..100_000u32 {
        let t = s.topic_id(format!("topic{i:06}").as_bytes());
        s.append(t, &PAYLOAD, 0);
    }
    rate("append, memory, 100 000 topics (first message each)", 100_000, start);
    let per = (LIVE.load(Relaxed) - before) as f64 / 100_000.0;
    println!("memory per topic with one 64 B message: {per:.1} bytes");
    drop(s);

    // Default retention (100 000 per topic): steady state with trimming.
    let mut s = Store::in_memory(Config::default());
    let start = clock();
    for i in 0..N {
        let t = s.topic_id(format!("t{}", i % 1000).as_bytes());
        s.append(t, &PAYLOAD, 0);
    }
    rate("append, memory, 1000 topics, default retention", N, start);
    drop(s);

    // Disk: appends with a commit every 1000 (one event-loop turn's worth).
    for (name, fsync) in [("never", Fsync::Never), ("interval 1000 ms", Fsync::Interval { ms: 1000 })] {
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = Store::open(&dir, Config { fsync, ..big() }).unwrap();
        let t = s.topic_id(b"topic");
        let start = clock();
        for i in 0..N {
            s.append(t, &PAYLOAD, 0);
            if i % 1000 == 999 {
                s.commit().unwrap();
            }
        }
        s.commit().unwrap();
        rate(&format!("append, data dir, --fsync {name}, commit per 1000"), N, start);
    }
    let mut s = Store::open(&dir, Config { fsync: Fsync::Always, ..big() }).unwrap();
    let t = s.topic_id(b"always");
    let start = clock();
    for _ in 0..1000 {
        for _ in 0..100 {
            s.append(t, &PAYLOAD, 0);
        }
        s.commit().unwrap();
    }
    rate("append, data dir, --fsync always, commit per 100", 100_000, start);
    drop(s);

    let start = clock();
    let s = Store::open(&dir, big()).unwrap();
    rate("reopen (scan, check, rebuild)", s.recovery().records, start);
    assert_eq!(s.info(b"topic").messages, N);
    let _ = std::fs::remove_dir_all(&dir);
}
