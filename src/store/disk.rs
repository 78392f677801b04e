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
//! the segments retention let go. A segment is synced before the next one is
//! created and the directory after a segment is created or deleted (except
//! under `never`), so the files on disk are always a prefix of what was
//! appended, apart from a torn tail in the newest segment.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::mem;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::Fsync;

/// Every segment starts with this: magic and format version 1.
pub const SEGMENT_HEADER: &[u8; 16] = b"fanoutlg\x01\0\0\0\0\0\0\0";

pub(super) struct Disk {
    dir: PathBuf,
    dir_file: File,
    _lock: Flock<File>,
    fsync: Fsync,
    /// The open newest segment file.
    head: Option<(u64, File)>,
    /// The segment appends go to now.
    current: u64,
    /// Bytes appended and not written yet, per segment, oldest first.
    pending: Vec<(u64, Vec<u8>)>,
    deletes: Vec<u64>,
    unsynced: bool,
    last_sync_ms: u64,
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
    pub fn open(dir: &Path, fsync: Fsync, now_ms: u64) -> io::Result<Opened> {
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
        let disk = Disk {
            dir: dir.to_owned(),
            dir_file,
            _lock: lock,
            fsync,
            head: None,
            current: 0,
            pending: Vec::new(),
            deletes: Vec::new(),
            unsynced: false,
            last_sync_ms: now_ms,
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
        self.head = Some((id, f));
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

    /// When a commit is due to sync under `interval`, if one is.
    pub fn sync_due(&self) -> Option<u64> {
        match self.fsync {
            Fsync::Interval { ms } if self.unsynced => Some(self.last_sync_ms.saturating_add(ms)),
            _ => None,
        }
    }

    /// Writes what was appended, syncs as the policy says, deletes what
    /// retention let go. On success everything appended so far is confirmed:
    /// written, and under `always` synced.
    pub fn commit(&mut self, now_ms: u64) -> io::Result<()> {
        if let Some(e) = &self.failed {
            return Err(io::Error::other(e.clone()));
        }
        let r = self.write_and_sync(now_ms);
        if let Err(e) = &r {
            self.failed = Some(format!("the data log stopped after a failed write or sync: {e}"));
        }
        r
    }

    fn write_and_sync(&mut self, now_ms: u64) -> io::Result<()> {
        let sync = self.fsync != Fsync::Never;
        for (id, buf) in mem::take(&mut self.pending) {
            if self.head.as_ref().map(|h| h.0) != Some(id) {
                // The previous segment is complete: durable before the next exists.
                if let Some((_, f)) = &self.head {
                    if sync && self.unsynced {
                        f.sync_data()?;
                        self.unsynced = false;
                    }
                }
                let f = OpenOptions::new().append(true).create_new(true).open(self.path(id))?;
                self.head = Some((id, f));
                if sync {
                    self.dir_file.sync_all()?;
                }
            }
            let (_, f) = self.head.as_mut().expect("opened above");
            f.write_all(&buf)?;
            self.unsynced = true;
        }
        let due = match self.fsync {
            Fsync::Always => true,
            Fsync::Interval { ms } => now_ms >= self.last_sync_ms.saturating_add(ms),
            Fsync::Never => false,
        };
        // Records carried forward out of a segment must be durable before
        // the segment goes.
        if self.unsynced && (due || (sync && !self.deletes.is_empty())) {
            if let Some((_, f)) = &self.head {
                f.sync_data()?;
            }
            self.unsynced = false;
            self.last_sync_ms = now_ms;
        }
        if !self.deletes.is_empty() {
            for id in mem::take(&mut self.deletes) {
                match fs::remove_file(self.path(id)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            if sync {
                self.dir_file.sync_all()?;
            }
        }
        Ok(())
    }
}
