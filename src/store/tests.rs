//! Tests of the store as a whole: numbering, reading, retention, the disk
//! log's recovery, group commit and queue records. Time is an argument, so
//! none of this depends on the clock; only the test of the sync thread waits
//! (for its failure, with a generous bound).

use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;

fn config() -> Config {
    Config { fsync: Fsync::Never, ..Config::default() }
}

/// Small segments, so a few messages roll and delete them.
fn small(segment_bytes: u64) -> Config {
    Config { segment_bytes, ..config() }
}

impl Store {
    /// Appends by name, as the channel server does: the topic's id, then the append.
    fn put(&mut self, topic: &[u8], payload: &[u8], now_ms: u64) -> Appended {
        let t = self.topic_id(topic);
        self.append(t, payload, now_ms)
    }
}

fn contents(s: &Store, topic: &[u8]) -> Vec<(u64, Vec<u8>)> {
    s.read(topic, 1, usize::MAX, usize::MAX).map(|m| (m.seq, m.body.to_vec())).collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

fn reopen(s: Store, dir: &Path) -> Store {
    let config = s.config().clone();
    drop(s);
    Store::open(dir, config).unwrap()
}

#[test]
fn each_topic_numbers_its_messages_from_one() {
    let mut s = Store::in_memory(config());
    assert_eq!(s.put(b"a", b"x", 0).seq, 1);
    assert_eq!(s.put(b"a", b"y", 0).seq, 2);
    assert_eq!(s.put(b"b", b"z", 0).seq, 1);
    assert_eq!(s.put(b"a", b"w", 0).seq, 3);
    assert_eq!(contents(&s, b"a"), [(1, b"x".to_vec()), (2, b"y".to_vec()), (3, b"w".to_vec())]);
    assert_eq!(s.info(b"a"), TopicInfo { first: 1, last: 3, messages: 3, bytes: 3 });
    assert_eq!(s.info(b"nope"), TopicInfo { first: 1, last: 0, messages: 0, bytes: 0 });
    assert_ne!(s.epoch(), Store::in_memory(config()).epoch());
}

#[test]
fn reads_start_at_a_position_and_stop_at_the_limits() {
    let mut s = Store::in_memory(config());
    for i in 1..=10u8 {
        s.put(b"t", &vec![i; i as usize], 0);
    }
    let r = s.read(b"t", 4, 3, usize::MAX);
    assert_eq!((r.gap, r.next), (None, 7));
    assert_eq!(r.map(|m| m.seq).collect::<Vec<_>>(), [4, 5, 6]);
    // 4 + 5 bytes fit in 10, 6 more would not; the first always comes.
    let r = s.read(b"t", 4, 100, 10);
    assert_eq!(r.next, 6);
    assert_eq!(s.read(b"t", 9, 100, 1).map(|m| m.seq).collect::<Vec<_>>(), [9]);
    // Past the end: nothing, no gap; position 0 reads as 1.
    assert_eq!(s.read(b"t", 11, 100, 100).count(), 0);
    assert_eq!(s.read(b"t", 0, 1, 100).next().map(|m| m.seq), Some(1));
    assert_eq!(s.read(b"other", 5, 1, 1).next, 5);
    let h: Vec<u64> = s.history(b"t", 3).map(|m| m.seq).collect();
    assert_eq!(h, [8, 9, 10]);
    assert_eq!(s.history(b"t", 100).count(), 10);
    assert_eq!(s.history(b"t", 0).count(), 0);
}

#[test]
fn retention_by_count_keeps_the_newest_and_reports_the_gap() {
    let mut s = Store::in_memory(Config { retain_messages: 3, ..config() });
    for i in 0..10u8 {
        s.put(b"t", &[i], 0);
    }
    assert_eq!(s.info(b"t"), TopicInfo { first: 8, last: 10, messages: 3, bytes: 3 });
    let r = s.read(b"t", 2, 10, 100);
    assert_eq!(r.gap, Some(Gap { first: 2, last: 7 }));
    assert_eq!(r.map(|m| m.body[0]).collect::<Vec<_>>(), [7, 8, 9]);
    assert_eq!(s.read(b"t", 8, 10, 100).gap, None);
    assert_eq!(s.history(b"t", 10).count(), 3);
    assert_eq!((s.stats().messages, s.stats().bytes), (3, 3));
}

#[test]
fn retention_by_bytes_keeps_at_least_the_newest() {
    let mut s = Store::in_memory(Config { retain_bytes: 10, ..config() });
    s.put(b"t", &[1; 4], 0);
    s.put(b"t", &[2; 4], 0);
    assert_eq!(s.info(b"t").messages, 2);
    s.put(b"t", &[3; 4], 0);
    assert_eq!(s.info(b"t"), TopicInfo { first: 2, last: 3, messages: 2, bytes: 8 });
    s.put(b"t", &[4; 50], 0);
    assert_eq!(s.info(b"t"), TopicInfo { first: 4, last: 4, messages: 1, bytes: 50 });
}

#[test]
fn retention_by_age_goes_at_expire() {
    let mut s = Store::in_memory(Config { retain_age_ms: Some(10_000), segment_bytes: 200, ..config() });
    for t in 0..20u64 {
        s.put(b"slow", b"m", t * 1000);
        s.put(b"fast", b"m", t * 1000);
    }
    s.expire(15_000); // keeps what is younger than 10 s: times 6..=19 s
    assert_eq!(s.info(b"slow").first, 7);
    assert_eq!(s.info(b"fast"), TopicInfo { first: 7, last: 20, messages: 14, bytes: 14 });
    // Times are kept to the second, rounded up: never expired early.
    s.put(b"fast", b"m", 19_001);
    s.expire(29_999);
    assert_eq!(s.info(b"fast").first, 21, "19.001 s counts as 20 s: at 29.999 s it is not 10 s old");
    s.expire(30_000);
    assert_eq!(s.info(b"fast").first, 22);
    s.expire(1_000_000);
    assert_eq!(s.info(b"slow"), TopicInfo { first: 21, last: 20, messages: 0, bytes: 0 });
    assert_eq!(s.stats().segments, 1, "segments with nothing retained went");
    assert_eq!(s.put(b"slow", b"again", 1_000_000).seq, 21);
}

#[test]
fn the_total_bound_drops_the_oldest_first_whichever_the_topic() {
    let mut s = Store::in_memory(Config { retain_total: 2000, segment_bytes: 500, ..config() });
    s.put(b"quiet", b"first", 0);
    for i in 0..100u32 {
        s.put(b"busy", &i.to_le_bytes(), 1);
    }
    let st = s.stats();
    assert!(st.log_bytes <= 2000 + 500, "{st:?}");
    assert_eq!(s.info(b"quiet").messages, 0, "the oldest went first");
    assert_eq!(s.info(b"quiet").last, 1, "and its number stays");
    let busy = s.info(b"busy");
    assert_eq!(busy.last, 100);
    assert!(busy.messages > 20 && busy.messages < 100, "{busy:?}");
    assert_eq!(st.evicted, 1 + 100 - busy.messages);
    assert_eq!(s.put(b"quiet", b"second", 2).seq, 2);
}

#[test]
fn ten_thousand_topics_are_cheap() {
    // (100 000 and their cost in bytes: examples/store_bench.rs)
    let mut s = Store::in_memory(config());
    for i in 0..10_000u32 {
        s.put(format!("topic{i}").as_bytes(), b"m", 0);
    }
    assert_eq!(s.stats().topics, 10_000);
    assert_eq!(s.info(b"topic9999").last, 1);
}

#[test]
fn group_commit_confirms_exactly_the_appends_since_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), Config { fsync: Fsync::Always, ..config() }).unwrap();
    assert_eq!(s.commit().unwrap(), 1..1);
    let a = s.put(b"t", b"1", 0).lsn;
    let b = s.enqueue(b"q", b"job", 0).lsn;
    let c = s.put(b"u", b"2", 0).lsn;
    let d = s.ack(b"q", 1).unwrap();
    assert_eq!(s.commit().unwrap(), a..d + 1);
    assert_eq!([a, b, c, d], [1, 2, 3, 4]);
    assert_eq!(s.commit().unwrap(), 5..5);
    let e = s.put(b"t", b"3", 0).lsn;
    assert_eq!(s.commit().unwrap(), e..e + 1);
    assert_eq!(s.ack(b"q", 1), None, "an unknown job is not logged");
}

#[test]
fn interval_confirms_after_the_write_and_syncs_off_the_loop() {
    let dir = tempfile::tempdir().unwrap();
    // An interval no test waits for: the commit must not depend on the sync.
    let hour = Config { fsync: Fsync::Interval { ms: 3_600_000 }, ..small(100) };
    let mut s = Store::open(dir.path(), hour).unwrap();
    let mut lsns = Vec::new();
    for i in 0..12u32 {
        lsns.push(s.put(b"t", &i.to_le_bytes(), 0).lsn);
    }
    assert_eq!(s.commit().unwrap().collect::<Vec<_>>(), lsns);
    // Confirmed means written: what a process killed now leaves on disk.
    let on_disk: u64 = segments(dir.path()).iter().map(|f| fs::metadata(f).unwrap().len()).sum();
    assert_eq!(on_disk, s.stats().log_bytes);
    assert!(segments(dir.path()).len() >= 3, "rolled across segments");
    let s = reopen(s, dir.path());
    assert_eq!(contents(&s, b"t").len(), 12);
    drop(s);

    // A sync of the thread that fails (a file that cannot be synced) stops
    // the log: the next commit says so, and every one after.
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), Config { fsync: Fsync::Interval { ms: 1 }, ..config() }).unwrap();
    s.put(b"t", b"synced", 0);
    s.commit().unwrap();
    let null = fs::OpenOptions::new().write(true).open("/dev/null").unwrap();
    s.disk.as_mut().unwrap().replace_head(null);
    s.put(b"t", b"lost", 0);
    s.commit().unwrap();
    let err = (0..10_000)
        .find_map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(1));
            s.commit().err()
        })
        .expect("the failed sync reported within 10 s");
    assert!(err.to_string().contains("sync thread failed"), "{err}");
    assert!(s.commit().is_err(), "stays stopped");
}

#[test]
fn a_reopened_log_has_every_message_number_and_the_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), small(300)).unwrap();
    for i in 0..50u32 {
        s.put(b"a", &i.to_le_bytes(), 5);
        s.put(b"b", &[7; 30], 6);
    }
    s.commit().unwrap();
    let (epoch, a, b) = (s.epoch(), contents(&s, b"a"), contents(&s, b"b"));
    assert!(segments(dir.path()).len() > 5);
    let mut s = reopen(s, dir.path());
    assert_eq!(s.epoch(), epoch);
    assert_eq!((contents(&s, b"a"), contents(&s, b"b")), (a, b));
    assert_eq!(s.recovery().cut_bytes, 0);
    assert_eq!(s.put(b"a", b"next", 7001).seq, 51);
    s.commit().unwrap();
    let s = reopen(s, dir.path());
    assert_eq!(s.info(b"a").last, 51);
    assert_eq!(s.read(b"a", 51, 1, 100).next().unwrap().time_ms, 8000, "to the second, rounded up");

    let other = tempfile::tempdir().unwrap();
    assert_ne!(Store::open(other.path(), config()).unwrap().epoch(), epoch);
}

#[test]
fn a_directory_is_opened_by_one_store_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), config()).unwrap();
    let err = Store::open(dir.path(), config()).err().expect("locked");
    assert!(err.to_string().contains("another process"), "{err}");
    drop(s);
    Store::open(dir.path(), config()).unwrap();
}

#[test]
fn segments_roll_and_go_once_nothing_in_them_is_retained() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), Config { retain_messages: 5, ..small(200) }).unwrap();
    for i in 0..200u32 {
        s.put(b"t", &i.to_le_bytes(), 0);
        s.commit().unwrap();
    }
    let files = segments(dir.path());
    assert!(files.len() <= 3, "{files:?}");
    assert!(files[0].ends_with(format!("{:020}.log", s.segs[0].id)));
    let on_disk: u64 = files.iter().map(|f| fs::metadata(f).unwrap().len()).sum();
    assert_eq!(on_disk, s.stats().log_bytes);
    let s = reopen(s, dir.path());
    assert_eq!(s.info(b"t"), TopicInfo { first: 196, last: 200, messages: 5, bytes: 20 });
}

#[test]
fn numbering_survives_the_deletion_of_every_record_that_held_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), Config { retain_age_ms: Some(10_000), ..small(200) }).unwrap();
    for _ in 0..5 {
        s.put(b"gone", b"m", 0);
    }
    s.enqueue(b"q", b"j", 0);
    s.ack(b"q", 1);
    for i in 0..100u64 {
        s.put(b"busy", b"m", i * 1000);
        s.expire(i * 1000);
    }
    s.commit().unwrap();
    assert!(s.segs[0].id > 1, "the first segments went");
    let mut s = reopen(s, dir.path());
    assert_eq!(s.info(b"gone"), TopicInfo { first: 6, last: 5, messages: 0, bytes: 0 });
    assert_eq!(s.put(b"gone", b"m", 200).seq, 6);
    assert_eq!(s.enqueue(b"q", b"j", 200).seq, 2);
}

#[test]
fn topics_nobody_needs_are_forgotten_and_their_numbers_never_given_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), Config { retain_age_ms: Some(10_000), ..small(200) }).unwrap();
    for _ in 0..5 {
        s.put(b"gone", b"m", 0);
    }
    let held = s.topic_id(b"held");
    s.hold(held);
    s.put(b"held", b"m", 0);
    for i in 0..100u64 {
        s.put(b"busy", b"m", i * 1000);
        s.expire(i * 1000);
    }
    s.commit().unwrap();
    assert_eq!((s.find_topic(b"gone"), s.find_topic(b"held")), (None, Some(held)), "a subscribed topic stays");
    assert_eq!((s.stats().topics, s.stats().forgotten), (2, 1));
    // A reader of the forgotten topic is told what is gone, before and after a restart.
    let read = s.read(b"gone", 3, 10, usize::MAX);
    assert_eq!((read.gap, read.next, read.len()), (Some(Gap { first: 3, last: 5 }), 6, 0));
    let mut s = reopen(s, dir.path());
    assert_eq!(s.info(b"gone"), TopicInfo { first: 6, last: 5, messages: 0, bytes: 0 });
    assert_eq!(s.read(b"gone", 1, 10, usize::MAX).gap, Some(Gap { first: 1, last: 5 }));
    assert_eq!(s.info(b"held"), TopicInfo { first: 2, last: 1, messages: 0, bytes: 0 }, "its mark was carried");
    assert_eq!(s.put(b"gone", b"m", 200).seq, 6);
}

#[test]
fn past_max_topics_the_least_recently_published_go_first() {
    let mut s = Store::in_memory(Config { max_topics: 100, ..config() });
    let held = s.topic_id(b"held");
    s.hold(held);
    s.put(b"held", b"m", 0);
    for i in 0..1000 {
        s.put(format!("t{i}").as_bytes(), b"m", 0);
        assert!(s.stats().topics <= 101, "at most 100 unsubscribed topics and the subscribed one");
        if i % 10 == 0 {
            s.commit().unwrap();
        }
    }
    let st = s.stats();
    assert_eq!(st.topics + st.forgotten, 1001);
    assert!(st.evicted >= st.forgotten, "a forgotten topic's messages are counted");
    assert!(s.find_topic(b"t999").is_some() && s.find_topic(b"t0").is_none());
    assert_eq!(s.info(b"held").last, 1, "a subscribed topic keeps its numbers");
    assert!(s.topics.len() < 250, "the ids of forgotten topics are given again: {}", s.topics.len());
    assert!(s.put(b"t0", b"m", 0).seq > 1, "t0 numbered 1 before it was forgotten");
    s.release(held);
    s.put(b"t1000", b"m", 0);
    assert!(s.stats().topics <= 100, "released, it counts as unsubscribed");
}

#[test]
fn queues_holding_no_job_are_forgotten_and_their_ids_never_given_again() {
    let dir = tempfile::tempdir().unwrap();
    // A total bound of about 500 names' records (and the floors carried
    // forward), so the pending job's segment is released, the job carried
    // forward, rather than pinning every later one.
    let mut s = Store::open(dir.path(), Config { retain_total: 100_000, ..small(10_000) }).unwrap();
    s.enqueue(b"kept", b"pending", 0);
    let mut highest = Vec::new();
    for i in 0..1500u32 {
        let name = format!("q{i}").into_bytes();
        let ids: Vec<u64> = (0..3).map(|_| s.enqueue(&name, b"j", 0).seq).collect();
        // The ack of the lowest id last: a record naming the queue after the
        // one of its highest id, which brings the queue back at open.
        for id in [ids[1], ids[2], ids[0]] {
            s.ack(&name, id).unwrap();
        }
        highest.push((name, ids[2]));
        assert!(s.stats().queues < 800, "ever new queue names cost nothing once done with");
        s.commit().unwrap();
    }
    let mut s = reopen(s, dir.path());
    assert!(s.stats().queues < 800, "{}", s.stats().queues);
    assert_eq!(s.jobs(b"kept").map(|j| j.id).collect::<Vec<_>>(), [1], "a pending job is never forgotten");
    for (name, id) in &highest {
        assert!(s.enqueue(name, b"j", 0).seq > *id, "an id of {} given again", String::from_utf8_lossy(name));
    }
}

/// Writes `n` messages to topic `t` and closes; returns the log's last file.
fn write_log(dir: &Path, n: u32) -> PathBuf {
    let mut s = Store::open(dir, config()).unwrap();
    for i in 1..=n {
        s.put(b"t", format!("message {i}").as_bytes(), i as u64);
    }
    s.commit().unwrap();
    segments(dir).pop().unwrap()
}

#[test]
fn a_torn_tail_is_cut_at_every_byte_of_the_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let last = write_log(dir.path(), 3);
    let full = fs::read(&last).unwrap();
    let rec_len = Record::Message { topic: b"t", seq: 3, time_ms: 3, payload: b"message 3" }.encoded_len();
    let start = full.len() - rec_len;
    for cut in start..full.len() {
        fs::write(&last, &full[..cut]).unwrap();
        let mut s = Store::open(dir.path(), config()).unwrap();
        assert_eq!(contents(&s, b"t"), [(1, b"message 1".to_vec()), (2, b"message 2".to_vec())], "cut at {cut}");
        assert_eq!(s.recovery().cut_bytes, (cut - start) as u64);
        assert_eq!(s.put(b"t", b"again", 9).seq, 3);
        s.commit().unwrap();
        let s = reopen(s, dir.path());
        assert_eq!(contents(&s, b"t").last().unwrap(), &(3, b"again".to_vec()), "cut at {cut}");
    }
}

#[test]
fn a_corrupt_record_cuts_the_log_there_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let last = write_log(dir.path(), 5);
    let mut bytes = fs::read(&last).unwrap();
    let rec_len = Record::Message { topic: b"t", seq: 3, time_ms: 3, payload: b"message 3" }.encoded_len();
    let third = SEGMENT_HEADER.len() + 2 * rec_len;
    bytes[third + rec_len - 1] ^= 0x40; // the last payload byte of message 3
    fs::write(&last, &bytes).unwrap();
    let s = Store::open(dir.path(), config()).unwrap();
    assert_eq!(s.info(b"t").last, 2);
    assert_eq!(s.recovery().cut_bytes, 3 * rec_len as u64);
    assert!(s.recovery().cut_reason.as_deref().unwrap().contains("Corrupt"));
    assert_eq!(fs::metadata(&last).unwrap().len(), third as u64);
}

#[test]
fn a_cut_in_an_older_segment_drops_the_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), small(100)).unwrap();
    for i in 0..20u32 {
        s.put(b"t", &i.to_le_bytes(), 0);
    }
    s.commit().unwrap();
    drop(s);
    let files = segments(dir.path());
    let first = fs::read(&files[0]).unwrap();
    fs::write(&files[0], &first[..first.len() - 1]).unwrap();
    let s = Store::open(dir.path(), small(100)).unwrap();
    assert_eq!(segments(dir.path()), files[..1]);
    let kept = s.info(b"t");
    assert!(kept.last >= 1 && kept.last < 20, "{kept:?}");
    assert_eq!(contents(&s, b"t").len() as u64, kept.last);
}

#[test]
fn a_segment_created_but_never_written_is_dropped_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let last = write_log(dir.path(), 2);
    let next = dir.path().join(format!("{:020}.log", 2));
    assert!(last.ends_with(format!("{:020}.log", 1)));
    fs::write(&next, &SEGMENT_HEADER[..5]).unwrap(); // the crash came mid-header
    let mut s = Store::open(dir.path(), config()).unwrap();
    assert_eq!(s.info(b"t").last, 2);
    assert_eq!(s.recovery().cut_bytes, 5);
    assert!(!next.exists());
    s.put(b"t", b"3", 0);
    s.commit().unwrap();
    assert_eq!(reopen(s, dir.path()).info(b"t").last, 3);
}

#[test]
fn always_syncs_across_segment_rollover() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { fsync: Fsync::Always, ..small(100) };
    let mut s = Store::open(dir.path(), config).unwrap();
    for round in 0..3u32 {
        for i in 0..4u32 {
            s.put(b"t", &(round * 4 + i).to_le_bytes(), 0);
        }
        s.commit().unwrap();
    }
    assert!(segments(dir.path()).len() >= 3);
    let s = reopen(s, dir.path());
    assert_eq!(contents(&s, b"t").len(), 12);
}

#[test]
fn readers_share_the_stored_bodies() {
    let mut s = Store::in_memory(config());
    s.put(b"t", b"shared body", 0);
    let a = s.read(b"t", 1, 1, 100).next().unwrap().body;
    let b = s.history(b"t", 1).next().unwrap().body;
    assert_eq!(a.as_ptr(), b.as_ptr(), "no copy per reader");
}

#[test]
fn queue_records_rebuild_the_pending_jobs_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), config()).unwrap();
    for i in 1..=5u8 {
        assert_eq!(s.enqueue(b"q", &[i], 10 + i as u64).seq, i as u64);
    }
    s.ack(b"q", 2).unwrap();
    s.set_tries(b"q", 3, 2).unwrap();
    assert_eq!(s.move_job(b"q", 4, b"q.dead", 20).unwrap().seq, 1);
    assert_eq!(s.move_job(b"q", 4, b"q.dead", 20), None, "already moved");
    s.commit().unwrap();
    let jobs = |s: &Store, q: &[u8]| -> Vec<(u64, u32, Vec<u8>)> {
        s.jobs(q).map(|j| (j.id, j.tries, j.payload.to_vec())).collect()
    };
    let expect_q = vec![(1, 0, vec![1]), (3, 2, vec![3]), (5, 0, vec![5])];
    assert_eq!(jobs(&s, b"q"), expect_q);
    assert_eq!(jobs(&s, b"q.dead"), [(1, 0, vec![4])]);
    let mut s = reopen(s, dir.path());
    assert_eq!(jobs(&s, b"q"), expect_q);
    assert_eq!(jobs(&s, b"q.dead"), [(1, 0, vec![4])]);
    assert_eq!(s.job(b"q", 3).unwrap().time_ms, 13);
    let infos: Vec<_> = s.queues().map(|(n, i)| (n.to_vec(), i.jobs, i.next_id)).collect();
    assert_eq!(infos, [(b"q".to_vec(), 3, 6), (b"q.dead".to_vec(), 1, 2)]);
    assert_eq!(s.enqueue(b"q", b"six", 0).seq, 6);
}

#[test]
fn pending_jobs_are_carried_forward_never_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { retain_total: 1000, ..small(300) };
    let mut s = Store::open(dir.path(), config.clone()).unwrap();
    s.enqueue(b"q", b"old job", 0);
    s.enqueue(b"q", b"acked", 0);
    s.set_tries(b"q", 1, 3);
    s.ack(b"q", 2);
    for i in 0..200u32 {
        s.put(b"t", &i.to_le_bytes(), 0);
        s.commit().unwrap();
    }
    assert!(s.segs[0].id > 3, "the job's segment was released");
    assert!(s.stats().log_bytes <= 1300);
    let s = reopen(s, dir.path());
    let jobs: Vec<_> = s.jobs(b"q").map(|j| (j.id, j.tries, j.payload.to_vec())).collect();
    assert_eq!(jobs, [(1, 3, b"old job".to_vec())]);
    assert_eq!(s.queues().next().unwrap().1.next_id, 3);
}

#[test]
fn an_epoch_file_is_required_beside_segments() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 1);
    fs::remove_file(dir.path().join("epoch")).unwrap();
    let err = Store::open(dir.path(), config()).err().expect("no epoch");
    assert!(err.to_string().contains("no epoch file"), "{err}");
}

#[derive(Debug, Clone)]
enum Op {
    Append(u8, usize),
    Enqueue(u8),
    Ack(u8, u64),
    Commit,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..8u8, 0..40usize).prop_map(|(t, n)| Op::Append(t, n)),
        1 => (0..2u8).prop_map(Op::Enqueue),
        1 => (0..2u8, 1..20u64).prop_map(|(q, id)| Op::Ack(q, id)),
        1 => Just(Op::Commit),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever was appended, with whatever retention, a reopened log holds
    /// what the store held: the same numbers, messages and jobs.
    #[test]
    fn reopening_rebuilds_the_same_state(ops in proptest::collection::vec(op(), 1..150),
                                          retain_messages in 1..20u64, retain_bytes in 1..200u64,
                                          retain_total in 1500..4000u64, segment_bytes in 60..400u64,
                                          max_topics in 1..10u64,
                                          fsync in prop_oneof![Just(Fsync::Never), Just(Fsync::Interval { ms: 1 })]) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { retain_messages, retain_bytes, retain_total, segment_bytes, fsync, max_topics, ..config() };
        let mut s = Store::open(dir.path(), config.clone()).unwrap();
        let mut lsns = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let time = i as u64;
            match *op {
                Op::Append(t, n) => lsns.push(s.put(&[b't', t], &vec![t; n], time).lsn),
                Op::Enqueue(q) => lsns.push(s.enqueue(&[b'q', q], &[q; 5], time).lsn),
                Op::Ack(q, id) => lsns.extend(s.ack(&[b'q', q], id)),
                Op::Commit => {
                    let confirmed = s.commit().unwrap();
                    prop_assert_eq!(confirmed.collect::<Vec<_>>(), std::mem::take(&mut lsns));
                }
            }
            let st = s.stats();
            prop_assert!(st.log_bytes <= retain_total + segment_bytes + 100, "{:?}", st);
            prop_assert!(st.topics <= max_topics, "{:?}", st);
        }
        s.commit().unwrap();
        let state = |s: &Store| {
            let topics: Vec<_> = (0..8u8).map(|t| (s.info(&[b't', t]), contents(s, &[b't', t]))).collect();
            let queues: Vec<Vec<_>> = (0..2u8).map(|q| s.jobs(&[b'q', q]).map(|j| (j.id, j.payload.to_vec())).collect()).collect();
            // The id each name would get next (a queue forgotten, or brought
            // back at open by an older record, numbers on above its floor).
            let next: Vec<u64> = (0..2u8).map(|q| {
                let name = [b'q', q];
                s.queues().find(|(n, _)| *n == name).map_or(s.floors[bucket(&name)].last + 1, |(_, i)| i.next_id)
            }).collect();
            (topics, queues, next)
        };
        let before = state(&s);
        let s = reopen(s, dir.path());
        prop_assert_eq!(state(&s), before);
    }
}

#[test]
fn advance_moves_an_empty_topic_up_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), Config::default()).unwrap();
    assert!(s.advance(b"t", 100).is_some());
    assert_eq!(s.put(b"t", b"a", 0).seq, 100);
    assert_eq!(s.advance(b"t", 500), None, "it retains a message");
    assert_eq!(s.advance(b"u", 1), None);
    s.commit().unwrap();
    drop(s);
    let mut s = Store::open(dir.path(), Config::default()).unwrap();
    assert_eq!(s.put(b"t", b"b", 0).seq, 101);
}
