//! The data directory: segment files, the epoch file, the lock, and the one
//! place that writes and syncs them. Knows bytes and files, not records.
//!
//! ```text
//! DIR/lock                   flock(2)ed while a store has the directory open
//! DIR/epoch                  the store's epoch, 16 hex digits
//! DIR/00000000000000000001.log, …   segments: a 16-byte header, then records
//! ```
//!
//! Appends only fill a buffer; [`Disk::commit`] writes it (one `write` per
//! segment touched, normally one) and syncs as the policy says, then deletes
//! the segments retention let go. Under `always` a segment is synced before
//! the next one is created and the directory after a segment is created or
//! deleted, so the files on disk are always a prefix of what was appended,
//! apart from a torn tail in the newest segment.
//!
//! Under `interval` the event loop only writes: a thread of its own
//! ([`Syncer`]) syncs every segment written since its last sync, then deletes
//! the segments let go meanwhile and syncs the directory, once per interval.
//! An `fdatasync` takes milliseconds, up to about 100 under other I/O, and
//! every confirm and delivery would wait for it on the loop. After a power
//! cut the newest segments may then have lost more than a tail, but only
//! records written in the last interval (plus one sync's duration), and the
//! scan at open cuts the log at the first bad record or missing segment, so
//! what is kept is still a prefix. A segment goes only after the records
//! carried forward out of it are synced, as under `always`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::mem;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use super::Fsync;

/// Every segment starts with this: magic and format version 1.
pub const SEGMENT_HEADER: &[u8; 16] = b"fanoutlg\x01\0\0\0\0\0\0\0";

pub(super) struct Disk {
    /// Under `interval`: the thread that syncs. Dropped first (fields drop
    /// in order), so its final sync and deletes happen under the lock.
    syncer: Option<Syncer>,
    dir: PathBuf,
    dir_file: File,
    _lock: Flock<File>,
    fsync: Fsync,
    /// The open newest segment file (shared with the [`Syncer`]).
    head: Option<(u64, Arc<File>)>,
    /// The segment appends go to now.
    current: u64,
    /// Bytes appended and not written yet, per segment, oldest first.
    pending: Vec<(u64, Vec<u8>)>,
    deletes: Vec<u64>,
    /// Under `always`: the head has writes not synced yet.
    unsynced: bool,
    /// After a failed write or sync nothing more is written: what reached
    /// the disk is unknown, and a retried fsync can report success for data
    /// the kernel already dropped. Reopening the store recovers.
    failed: Option<String>,
}

/// What [`Disk::open`] found.
pub(super) struct Opened {
    pub disk: Disk,
    pub epoch: u64,
    /// Segment ids on disk, oldest first.
    pub segments: Vec<u64>,
}

impl Disk {
    pub fn open(dir: &Path, fsync: Fsync) -> io::Result<Opened> {
        let context = |what: &str, e: io::Error| {
            io::Error::new(e.kind(), format!("data directory {}: {what}: {e}", dir.display()))
        };
        fs::create_dir_all(dir).map_err(|e| context("cannot create it", e))?;
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(|e| context("cannot open its lock file", e))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
            context(
                "another process has it open (its lock file is locked); stop that process or choose another directory",
                io::Error::from(errno),
            )
        })?;
        let dir_file = File::open(dir).map_err(|e| context("cannot open it", e))?;
        let mut segments = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| context("cannot list it", e))? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name.strip_suffix(".log").and_then(|n| n.parse::<u64>().ok()) {
                segments.push(id);
            }
        }
        segments.sort_unstable();
        let epoch_path = dir.join("epoch");
        let epoch = match fs::read_to_string(&epoch_path) {
            Ok(text) => u64::from_str_radix(text.trim(), 16).map_err(|_| {
                context("its epoch file is not 16 hex digits", io::Error::from(io::ErrorKind::InvalidData))
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound && segments.is_empty() => {
                let epoch = super::random_epoch();
                let tmp = dir.join("epoch.tmp");
                let mut f = File::create(&tmp)?;
                writeln!(f, "{epoch:016x}")?;
                f.sync_all()?;
                fs::rename(&tmp, &epoch_path)?;
                dir_file.sync_all()?;
                epoch
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(context(
                    "it has log segments but no epoch file; restore the epoch file or move the segments away",
                    e,
                ))
            }
            Err(e) => return Err(context("cannot read its epoch file", e)),
        };
        let syncer = match fsync {
            Fsync::Interval { ms } => Some(Syncer::start(dir_file.try_clone()?, Duration::from_millis(ms))?),
            _ => None,
        };
        let disk = Disk {
            syncer,
            dir: dir.to_owned(),
            dir_file,
            _lock: lock,
            fsync,
            head: None,
            current: 0,
            pending: Vec::new(),
            deletes: Vec::new(),
            unsynced: false,
            failed: None,
        };
        Ok(Opened { disk, epoch, segments })
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:020}.log"))
    }

    /// The whole file of segment `id`.
    pub fn load(&self, id: u64) -> io::Result<Vec<u8>> {
        fs::read(self.path(id))
    }

    /// After the scan at open: cuts segment `id` to `len` bytes (a torn or
    /// corrupt tail; 0 removes it) and removes the later segments `drop`.
    pub fn cut(&mut self, id: u64, len: u64, drop: &[u64]) -> io::Result<()> {
        for &d in drop.iter().chain(if len == 0 { Some(&id) } else { None }) {
            fs::remove_file(self.path(d))?;
        }
        if len > 0 {
            let f = OpenOptions::new().write(true).open(self.path(id))?;
            f.set_len(len)?;
            f.sync_all()?;
        }
        self.dir_file.sync_all()
    }

    /// Appends go on in existing segment `id` from now on.
    pub fn resume(&mut self, id: u64) -> io::Result<()> {
        let f = OpenOptions::new().append(true).open(self.path(id))?;
        self.head = Some((id, Arc::new(f)));
        self.current = id;
        Ok(())
    }

    /// Appends go to a new segment `id` from now on (created at commit).
    pub fn roll(&mut self, id: u64) {
        self.current = id;
        self.pending.push((id, SEGMENT_HEADER.to_vec()));
    }

    /// The buffer records of the current segment are encoded into.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        if self.pending.last().map(|p| p.0) != Some(self.current) {
            self.pending.push((self.current, Vec::new()));
        }
        &mut self.pending.last_mut().expect("just pushed").1
    }

    /// Segment `id` goes at the next commit, after what is pending is written.
    pub fn delete(&mut self, id: u64) {
        self.deletes.push(id);
    }

    /// Writes what was appended, syncs as the policy says, deletes what
    /// retention let go (under `interval`: hands the syncing and deleting to
    /// the [`Syncer`]). On success everything appended so far is confirmed:
    /// written, and under `always` synced. Under `interval` it also fails
    /// once a sync of the thread has failed.
    pub fn commit(&mut self) -> io::Result<()> {
        if let Some(e) = &self.failed {
            return Err(io::Error::other(e.clone()));
        }
        let r = self.write_and_sync();
        if let Err(e) = &r {
            self.failed = Some(format!("the data log stopped after a failed write or sync: {e}"));
        }
        r
    }

    fn write_and_sync(&mut self) -> io::Result<()> {
        let always = self.fsync == Fsync::Always;
        // Under `interval`, for the syncer: segments written, and whether one was created.
        let (mut written, mut created) = (Vec::<Arc<File>>::new(), false);
        for (id, buf) in mem::take(&mut self.pending) {
            if self.head.as_ref().map(|h| h.0) != Some(id) {
                // Under `always` the previous segment, complete, is durable
                // before the next exists.
                if let Some((_, f)) = &self.head {
                    if always && self.unsynced {
                        f.sync_data()?;
                        self.unsynced = false;
                    }
                }
                let f = OpenOptions::new().append(true).create_new(true).open(self.path(id))?;
                self.head = Some((id, Arc::new(f)));
                created = true;
                if always {
                    self.dir_file.sync_all()?;
                }
            }
            let (_, f) = self.head.as_ref().expect("opened above");
            (&**f).write_all(&buf)?;
            self.unsynced = true;
            if !written.last().is_some_and(|w| Arc::ptr_eq(w, f)) {
                written.push(Arc::clone(f));
            }
        }
        let deletes: Vec<PathBuf> = mem::take(&mut self.deletes).into_iter().map(|id| self.path(id)).collect();
        if let Some(syncer) = &self.syncer {
            return syncer.hand(written, created, deletes);
        }
        if always && self.unsynced {
            if let Some((_, f)) = &self.head {
                f.sync_data()?;
            }
            self.unsynced = false;
        }
        remove(&deletes)?;
        if always && !deletes.is_empty() {
            self.dir_file.sync_all()?;
        }
        Ok(())
    }

    /// Tests: the head segment's writes go to `file` from now on (to make a
    /// sync fail, `/dev/null`: it cannot be synced).
    #[cfg(test)]
    pub fn replace_head(&mut self, file: File) {
        let (id, _) = self.head.take().expect("a head segment");
        self.head = Some((id, Arc::new(file)));
    }
}

/// Removes the segment files `paths`; one already gone is no error.
fn remove(paths: &[PathBuf]) -> io::Result<()> {
    for p in paths {
        match fs::remove_file(p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Under `interval`: a thread that syncs what the event loop wrote, once
/// per interval, so that no confirm or delivery waits for the disk. Stops
/// after a final sync when the store is dropped, and for good after a
/// failed sync (a retried fsync can report success for data the kernel
/// dropped): the next commit then fails.
struct Syncer {
    shared: Arc<(Mutex<Work>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

/// Shared by the loop and the thread.
#[derive(Default)]
struct Work {
    batch: Batch,
    failed: Option<String>,
    stop: bool,
}

/// What the next sync has to do, handed from the loop to the thread.
#[derive(Default)]
struct Batch {
    /// Segments written since the last sync took its batch, oldest first.
    written: Vec<Arc<File>>,
    /// A segment was created: its directory entry must be synced too.
    created: bool,
    /// Segments to delete once what was written before is synced.
    deletes: Vec<PathBuf>,
}

impl Syncer {
    fn start(dir_file: File, every: Duration) -> io::Result<Syncer> {
        let shared = Arc::new((Mutex::new(Work::default()), Condvar::new()));
        let theirs = Arc::clone(&shared);
        let thread =
            thread::Builder::new().name("fsync".into()).spawn(move || Syncer::run(&theirs, &dir_file, every))?;
        Ok(Syncer { shared, thread: Some(thread) })
    }

    fn lock(shared: &(Mutex<Work>, Condvar)) -> MutexGuard<'_, Work> {
        // Neither side panics while holding the lock; if one did, the work is still whole.
        shared.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// From the loop's commit: what it wrote, created and let go; fails once
    /// a sync has failed.
    fn hand(&self, written: Vec<Arc<File>>, created: bool, deletes: Vec<PathBuf>) -> io::Result<()> {
        let mut w = Syncer::lock(&self.shared);
        if let Some(e) = &w.failed {
            return Err(io::Error::other(e.clone()));
        }
        let b = &mut w.batch;
        for f in written {
            if !b.written.last().is_some_and(|l| Arc::ptr_eq(l, &f)) {
                b.written.push(f);
            }
        }
        b.created |= created;
        b.deletes.extend(deletes);
        Ok(())
    }

    fn run(shared: &(Mutex<Work>, Condvar), dir_file: &File, every: Duration) {
        let mut next = Instant::now() + every;
        loop {
            let mut w = Syncer::lock(shared);
            while !w.stop {
                let now = Instant::now();
                if now >= next {
                    break;
                }
                w = shared.1.wait_timeout(w, next - now).unwrap_or_else(std::sync::PoisonError::into_inner).0;
            }
            let (stop, batch) = (w.stop, mem::take(&mut w.batch));
            drop(w);
            // The next sync is due an interval after this one started (at
            // once if this one takes longer).
            next = Instant::now() + every;
            if let Err(e) = Syncer::sync(&batch, dir_file) {
                Syncer::lock(shared).failed = Some(format!("the sync thread failed: {e}"));
                return;
            }
            if stop {
                return;
            }
        }
    }

    fn sync(batch: &Batch, dir_file: &File) -> io::Result<()> {
        for f in &batch.written {
            f.sync_data()?;
        }
        remove(&batch.deletes)?;
        if batch.created || !batch.deletes.is_empty() {
            dir_file.sync_all()?;
        }
        Ok(())
    }
}

impl Drop for Syncer {
    /// A final sync of what was written, then the thread ends.
    fn drop(&mut self) {
        Syncer::lock(&self.shared).stop = true;
        self.shared.1.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
