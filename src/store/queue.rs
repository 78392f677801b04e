//! The durable state of one work queue: its pending (not yet acknowledged)
//! jobs and the numbering of their ids. Dispatch, prefetch and consumers are
//! the queue service's; this is what it rebuilds from after a restart.

use std::collections::BTreeMap;

use bytes::Bytes;

pub(super) struct Job {
    pub payload: Bytes,
    pub tries: u32,
    pub time_ms: u64,
    /// The segment of the record that holds the job (its `Enqueue`, its
    /// carried-forward copy, or the `Move` that put it here).
    pub seg: u64,
}

pub(super) struct Queue {
    pub name: Box<[u8]>,
    /// Its floor bucket (`super::bucket` of the name, computed once).
    pub bucket: usize,
    /// One more than the highest id any record names: the next enqueued job
    /// gets this or, if higher, one more than the bucket's floor.
    pub next_id: u64,
    /// Pending jobs by id: ids grow, so this is also FIFO order.
    pub jobs: BTreeMap<u64, Job>,
    pub bytes: u64,
    /// The segment of the newest record naming id `next_id - 1`; when it is
    /// deleted a `QueueMark` keeps the numbering.
    pub last_seg: u64,
}

impl Queue {
    pub fn new(name: &[u8], bucket: usize) -> Queue {
        Queue { name: name.into(), bucket, next_id: 1, jobs: BTreeMap::new(), bytes: 0, last_seg: 0 }
    }

    /// A record in segment `seg` named job `id`: ids never go back.
    pub fn saw_id(&mut self, id: u64, seg: u64) {
        if id >= self.next_id.saturating_sub(1) {
            self.next_id = id + 1;
            self.last_seg = seg;
        }
    }

    /// Removes a job; returns the segment that held it.
    pub fn remove(&mut self, id: u64) -> Option<Job> {
        let job = self.jobs.remove(&id)?;
        self.bytes -= job.payload.len() as u64;
        Some(job)
    }

    /// Inserts job `id` or replaces its copy; returns the segment that held
    /// the copy it replaces.
    pub fn insert(&mut self, id: u64, job: Job) -> Option<u64> {
        self.bytes += job.payload.len() as u64;
        let old = self.jobs.insert(id, job)?;
        self.bytes -= old.payload.len() as u64;
        Some(old.seg)
    }
}
