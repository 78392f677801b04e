//! The log's record format: pure encoding and decoding, no I/O.
//!
//! ```text
//! len   u32 LE   bytes after the crc field (kind + body)
//! crc   u32 LE   CRC32C of len, kind and body
//! kind  u8       which record (below)
//! body  …        fields little-endian; names as u16 LE length + bytes; a
//!                payload is the rest of the body
//! ```
//!
//! The checksum covers the length too, so a torn or garbled length is caught
//! rather than followed into the middle of the next record. Every record is
//! self-contained (it names its topic or queue and carries its own number) so
//! the log can lose its oldest segments and still be read from any segment on.

/// Bytes before the body: len, crc, kind.
pub const HEADER: usize = 9;

/// The longest kind + body a reader accepts; anything longer is corruption.
/// (Messages and jobs are far smaller: the frame format limits them.)
pub const MAX_BODY: usize = 1 << 30;

const MESSAGE: u8 = 1;
const TOPIC_MARK: u8 = 2;
const ENQUEUE: u8 = 3;
const ACK: u8 = 4;
const TRIES: u8 = 5;
const MOVE: u8 = 6;
const QUEUE_MARK: u8 = 7;
const FLOOR: u8 = 8;

/// One record of the log. Topic messages and their numbering; queue jobs and
/// every transition a queue needs to rebuild its durable state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// Message number `seq` of `topic`, appended at `time_ms` (wall clock).
    Message { topic: &'a [u8], seq: u64, time_ms: u64, payload: &'a [u8] },
    /// `topic` has numbered up to `last`: written when the records carrying
    /// its latest number are about to be deleted, so numbering survives.
    TopicMark { topic: &'a [u8], last: u64 },
    /// Job `id` of `queue`, delivered `tries` times so far. Written when the
    /// job is enqueued (tries 0) and again, as a copy, when compaction carries
    /// an unacknowledged job forward out of a segment that is deleted.
    Enqueue { queue: &'a [u8], id: u64, tries: u32, time_ms: u64, payload: &'a [u8] },
    /// Job `id` of `queue` is done (acknowledged): gone for good.
    Ack { queue: &'a [u8], id: u64 },
    /// Job `id` of `queue` has now been tried `tries` times.
    Tries { queue: &'a [u8], id: u64, tries: u32 },
    /// Job `id` of `queue` moves to queue `to` as job `new_id` with tries 0
    /// (a dead-letter move), in one record so a crash cannot leave it in
    /// both queues or in neither. It carries the payload so that it stands
    /// alone once the job's `Enqueue` is deleted.
    Move { queue: &'a [u8], id: u64, to: &'a [u8], new_id: u64, time_ms: u64, payload: &'a [u8] },
    /// `queue` has given out ids up to `last`: as `TopicMark`, for queues.
    QueueMark { queue: &'a [u8], last: u64 },
    /// Topics whose names fall in `bucket` and that were forgotten had
    /// numbered up to `last` at most: a name of the bucket numbers above it
    /// (the store's `forget`). Written when a topic is forgotten and carried
    /// forward like a mark.
    Floor { bucket: u32, last: u64 },
}

/// Why bytes are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// The buffer ends inside the record (a torn tail, or read more).
    Short,
    /// Checksum mismatch, impossible length, unknown kind or malformed body.
    Corrupt,
}

impl Record<'_> {
    /// The number of bytes [`Record::encode`] appends.
    pub fn encoded_len(&self) -> usize {
        let name = |n: &[u8]| 2 + n.len();
        HEADER
            + match self {
                Record::Message { topic, payload, .. } => name(topic) + 16 + payload.len(),
                Record::TopicMark { topic, .. } => name(topic) + 8,
                Record::Enqueue { queue, payload, .. } => name(queue) + 20 + payload.len(),
                Record::Ack { queue, .. } => name(queue) + 8,
                Record::Tries { queue, .. } => name(queue) + 12,
                Record::Move { queue, to, payload, .. } => name(queue) + name(to) + 24 + payload.len(),
                Record::QueueMark { queue, .. } => name(queue) + 8,
                Record::Floor { .. } => 12,
            }
    }

    /// Appends the record, header and checksum included, to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER - 1]);
        let name = |out: &mut Vec<u8>, n: &[u8]| {
            let len = u16::try_from(n.len()).expect("names are at most 65535 bytes");
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(n);
        };
        match *self {
            Record::Message { topic, seq, time_ms, payload } => {
                out.push(MESSAGE);
                name(out, topic);
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(&time_ms.to_le_bytes());
                out.extend_from_slice(payload);
            }
            Record::TopicMark { topic, last } => {
                out.push(TOPIC_MARK);
                name(out, topic);
                out.extend_from_slice(&last.to_le_bytes());
            }
            Record::Enqueue { queue, id, tries, time_ms, payload } => {
                out.push(ENQUEUE);
                name(out, queue);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&tries.to_le_bytes());
                out.extend_from_slice(&time_ms.to_le_bytes());
                out.extend_from_slice(payload);
            }
            Record::Ack { queue, id } => {
                out.push(ACK);
                name(out, queue);
                out.extend_from_slice(&id.to_le_bytes());
            }
            Record::Tries { queue, id, tries } => {
                out.push(TRIES);
                name(out, queue);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&tries.to_le_bytes());
            }
            Record::Move { queue, id, to, new_id, time_ms, payload } => {
                out.push(MOVE);
                name(out, queue);
                out.extend_from_slice(&id.to_le_bytes());
                name(out, to);
                out.extend_from_slice(&new_id.to_le_bytes());
                out.extend_from_slice(&time_ms.to_le_bytes());
                out.extend_from_slice(payload);
            }
            Record::QueueMark { queue, last } => {
                out.push(QUEUE_MARK);
                name(out, queue);
                out.extend_from_slice(&last.to_le_bytes());
            }
            Record::Floor { bucket, last } => {
                out.push(FLOOR);
                out.extend_from_slice(&bucket.to_le_bytes());
                out.extend_from_slice(&last.to_le_bytes());
            }
        }
        let len = u32::try_from(out.len() - start - HEADER + 1).expect("records are below 4 GiB");
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start..start + 4]), &out[start + 8..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(out.len() - start, self.encoded_len());
    }

    /// Decodes the record at the start of `buf`; returns it and its length.
    pub fn decode(buf: &[u8]) -> Result<(Record<'_>, usize), Bad> {
        let Some(head) = buf.get(..8) else {
            return Err(Bad::Short);
        };
        let len = u32::from_le_bytes(head[..4].try_into().unwrap()) as usize;
        if len == 0 || len > MAX_BODY {
            return Err(Bad::Corrupt);
        }
        let Some(rest) = buf.get(8..8 + len) else {
            return Err(Bad::Short);
        };
        let crc = u32::from_le_bytes(head[4..8].try_into().unwrap());
        if crc32c::crc32c_append(crc32c::crc32c(&head[..4]), rest) != crc {
            return Err(Bad::Corrupt);
        }
        let mut body = Fields(&rest[1..]);
        let record = match rest[0] {
            MESSAGE => {
                let topic = body.name()?;
                Record::Message { topic, seq: body.u64()?, time_ms: body.u64()?, payload: body.0 }
            }
            TOPIC_MARK => Record::TopicMark { topic: body.name()?, last: body.u64()? },
            ENQUEUE => {
                let queue = body.name()?;
                let (id, tries, time_ms) = (body.u64()?, body.u32()?, body.u64()?);
                Record::Enqueue { queue, id, tries, time_ms, payload: body.0 }
            }
            ACK => Record::Ack { queue: body.name()?, id: body.u64()? },
            TRIES => Record::Tries { queue: body.name()?, id: body.u64()?, tries: body.u32()? },
            MOVE => {
                let (queue, id) = (body.name()?, body.u64()?);
                let (to, new_id, time_ms) = (body.name()?, body.u64()?, body.u64()?);
                Record::Move { queue, id, to, new_id, time_ms, payload: body.0 }
            }
            QUEUE_MARK => Record::QueueMark { queue: body.name()?, last: body.u64()? },
            FLOOR => Record::Floor { bucket: body.u32()?, last: body.u64()? },
            _ => return Err(Bad::Corrupt),
        };
        // Fixed-size records must have been read to their end.
        if !matches!(record, Record::Message { .. } | Record::Enqueue { .. } | Record::Move { .. })
            && !body.0.is_empty()
        {
            return Err(Bad::Corrupt);
        }
        Ok((record, 8 + len))
    }
}

/// A cursor over a record body; running out is corruption (the checksum
/// passed, so the writer wrote this: it is not a torn tail).
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Bad> {
        if self.0.len() < n {
            return Err(Bad::Corrupt);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u64(&mut self) -> Result<u64, Bad> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, Bad> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn name(&mut self) -> Result<&'a [u8], Bad> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().unwrap());
        self.take(len as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Record<'static>> {
        vec![
            Record::Message { topic: b"news", seq: 7, time_ms: 1234, payload: b"hello" },
            Record::Message { topic: b"", seq: u64::MAX, time_ms: 0, payload: b"" },
            Record::TopicMark { topic: b"news", last: 99 },
            Record::Enqueue { queue: b"data_sync", id: 3, tries: 2, time_ms: 5, payload: b"job" },
            Record::Ack { queue: b"data_sync", id: 3 },
            Record::Tries { queue: b"data_sync", id: 4, tries: 5 },
            Record::Move { queue: b"q", id: 9, to: b"q.dead", new_id: 1, time_ms: 8, payload: b"p" },
            Record::QueueMark { queue: b"q", last: 12 },
            Record::Floor { bucket: 4095, last: 77 },
        ]
    }

    #[test]
    fn every_kind_round_trips_and_reports_its_length() {
        for r in samples() {
            let mut buf = vec![0xAA]; // not at offset 0, as in a segment
            r.encode(&mut buf);
            assert_eq!(buf.len() - 1, r.encoded_len());
            assert_eq!(Record::decode(&buf[1..]), Ok((r.clone(), buf.len() - 1)));
        }
    }

    #[test]
    fn every_prefix_is_short_and_every_flipped_bit_is_caught() {
        for r in samples() {
            let mut buf = Vec::new();
            r.encode(&mut buf);
            for cut in 0..buf.len() {
                assert_eq!(Record::decode(&buf[..cut]).map(|d| d.1), Err(Bad::Short), "{r:?} cut at {cut}");
            }
            for bit in 0..buf.len() * 8 {
                let mut bad = buf.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                // A flipped length bit may make the record look longer
                // (short) or impossible (corrupt); never valid.
                assert!(Record::decode(&bad).is_err(), "{r:?} bit {bit}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn messages_round_trip(topic in proptest::collection::vec(any::<u8>(), 0..300),
                               payload in proptest::collection::vec(any::<u8>(), 0..2000),
                               seq: u64, time_ms: u64) {
            let r = Record::Message { topic: &topic, seq, time_ms, payload: &payload };
            let mut buf = Vec::new();
            r.encode(&mut buf);
            prop_assert_eq!(Record::decode(&buf), Ok((r, buf.len())));
        }
    }
}
