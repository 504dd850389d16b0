//! Decoding the next batch on the decode thread while this one is processed.
//!
//! **Why.** Decoding a batch (JSON to a checked `PaymentEvent`, ~0.8 µs a record) is a
//! quarter of the loop thread's time at 10 M payments, and the loop thread is what
//! limits a run once the commit thread's fraud writes are pages (docs/benchmarks.md,
//! twenty-sixth and twenty-seventh steps). Decoding depends on nothing the pipeline
//! keeps, only on the record and the decode limits ([`RecordDecoder`]), so batch
//! `n + 1` can be decoded while batch `n` is classified, scored and rendered.
//!
//! **What stays the same.** Records are processed in the order they were polled, each
//! exactly once: a batch decoded ahead is the next one processed. It is not committed
//! until it is processed, so a crash or an exit while it waits loses nothing (the
//! next start resumes from the committed offsets). The caller only decodes ahead when
//! the poll returned a full batch (more are likely waiting): a partial one is
//! processed at once, with the one ahead of it first, so a quiet stream waits no extra
//! turn. (A full batch followed by silence waits one poll, `--batch-timeout-ms`.) A
//! pause for backpressure processes the batch waiting ahead first, so while the
//! consumer shows paused, consumption stands still.
//!
//! Not the same as decoding one batch on two threads (a helper for half of each
//! batch, twenty-fifth step: no gain), which splits one batch's decode; here a whole
//! batch's decode leaves the loop thread, overlapping the next step's work.

use std::ops::Range;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use chrono::{DateTime, TimeZone, Utc};
use paydedup_event::{content_hash, decode, DecodeLimits, PaymentEvent, ValidationError};

use super::prefetch::{BatchKeys, BatchKeysBuilder};
use super::{rows, InputRecord};

/// What the records of a batch decoded to, and what else depends on nothing but a
/// record (so it is worked out where the record was just decoded).
///
/// Why the rest is here: on the loop thread, which every batch waits on, checking the
/// Kafka key against the transaction id (its first touch of the record's bytes, which
/// were written on the other core) and hashing the event's content took ~2.2 s of its
/// ~29 s a 10 M run; here they run beside it. Moved, the work shrank little (the
/// decode thread grew by about what the loop lost): what a run gains is the loop's
/// time (docs/benchmarks.md, twenty-eighth step).
#[derive(Debug, Default)]
pub struct Decoded {
    /// What each record decoded to, in the batch's order.
    pub events: Vec<Result<PaymentEvent, ValidationError>>,
    /// Each record's content hash (`paydedup_event::content_hash`); 0 for an invalid
    /// one.
    pub hashes: Vec<u128>,
    /// How many valid records' Kafka key is not their transaction id.
    pub key_mismatches: u64,
    /// The keys of the batch's state.
    pub keys: BatchKeys,
}

impl Decoded {
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// Decodes records: the pipeline's decode limits, nothing of its state (so it can run
/// on another thread while the pipeline works).
#[derive(Debug, Clone)]
pub struct RecordDecoder {
    pub(super) limits: DecodeLimits,
}

impl RecordDecoder {
    /// Every record of a batch, against the clock now.
    pub fn decode(&self, records: &[InputRecord<'_>]) -> Decoded {
        let now = Utc::now();
        let mut d = Decoded {
            events: Vec::with_capacity(records.len()),
            hashes: Vec::with_capacity(records.len()),
            key_mismatches: 0,
            keys: BatchKeys::default(),
        };
        let mut keys = BatchKeysBuilder::with_capacity(records.len());
        for r in records {
            let event = self.decode_one(r, now);
            let hash = match &event {
                Ok(e) => {
                    if r.key != Some(e.transaction_id.as_str().as_bytes()) {
                        d.key_mismatches += 1;
                    }
                    content_hash(e).0
                }
                Err(_) => 0,
            };
            keys.add(event.as_ref().ok());
            d.events.push(event);
            d.hashes.push(hash);
        }
        d.keys = keys.finish();
        d
    }

    /// Decodes and validates one record.
    ///
    /// "Too far in the future" is judged against the record's Kafka timestamp, but
    /// never against a time later than `now`, the processor's clock when the batch
    /// was decoded: a producer whose clock says 2099 stamps both its timestamp and its event
    /// time, and judged by its own clock such a record would move its partition's
    /// watermark for good. A record without a timestamp is judged against `now`.
    ///
    /// NOTE: this is the one decision that reads the wall clock, and it stays
    /// replay-safe: only a batch that was never committed is ever processed again (its
    /// first verdict never left the process), and a later `now` only accepts more,
    /// so a verdict the warehouse holds is never contradicted by a replay.
    /// (A batch decoded ahead takes `now` a turn before it is processed: judged a
    /// little earlier, never against a later clock than its own.)
    pub(super) fn decode_one(
        &self,
        r: &InputRecord<'_>,
        now: DateTime<Utc>,
    ) -> Result<PaymentEvent, ValidationError> {
        // Every value a row will carry must be representable there: a timestamp no
        // TIMESTAMP column holds would make the sink reject the row (and its batch).
        if r.timestamp_ms
            .is_some_and(|ms| !rows::kafka_timestamp_fits(ms))
        {
            return Err(ValidationError::KafkaTimestampOutOfRange);
        }
        let reference = r
            .timestamp_ms
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
            .map_or(now, |t| t.min(now));
        decode(r.payload, reference, &self.limits)
    }
}

/// The thread that decodes batches ahead: one for the loop's life, not one a batch
/// (a thread spawned per batch measured no faster and its peak RSS no lower,
/// docs/benchmarks.md, twenty-seventh step; this one spawns nothing per batch).
/// [`DecodeThread::decode_while`] hands it a batch and waits for what it decoded to
/// once the caller's work is done.
pub struct DecodeThread {
    batches: Option<SyncSender<Arc<InputBatch>>>,
    decoded: Receiver<Decoded>,
    handle: Option<JoinHandle<()>>,
}

/// The decode thread stopped (it panicked): the loop cannot go on.
#[derive(Debug, thiserror::Error)]
#[error("the decode-ahead thread stopped")]
pub struct DecodeThreadStopped;

impl DecodeThread {
    pub fn spawn(decoder: RecordDecoder) -> std::io::Result<DecodeThread> {
        let (batches, to_decode) = sync_channel::<Arc<InputBatch>>(1);
        let (done, decoded) = sync_channel::<Decoded>(1);
        let handle = std::thread::Builder::new()
            .name("decode-ahead".into())
            .spawn(move || {
                for batch in to_decode {
                    if done.send(decoder.decode(&batch.records())).is_err() {
                        return;
                    }
                }
            })?;
        Ok(DecodeThread {
            batches: Some(batches),
            decoded,
            handle: Some(handle),
        })
    }

    /// Starts decoding `batch` (one at a time: `finish` before the next `start`).
    fn start(&self, batch: Arc<InputBatch>) -> Result<(), DecodeThreadStopped> {
        match &self.batches {
            Some(b) => b.send(batch).map_err(|_| DecodeThreadStopped),
            None => Err(DecodeThreadStopped),
        }
    }

    /// What the batch `start` gave it decoded to.
    fn finish(&self) -> Result<Decoded, DecodeThreadStopped> {
        self.decoded.recv().map_err(|_| DecodeThreadStopped)
    }

    /// Decodes `batch` while `work` runs on the caller's thread: `work`'s outcome and
    /// what the batch decoded to. The decode is taken back whatever `work` returned,
    /// so the thread is idle again when this returns.
    pub fn decode_while<R>(
        &self,
        batch: Arc<InputBatch>,
        work: impl FnOnce() -> R,
    ) -> Result<(R, Decoded), DecodeThreadStopped> {
        self.start(batch)?;
        let done = work();
        Ok((done, self.finish()?))
    }
}

impl Drop for DecodeThread {
    fn drop(&mut self) {
        // Closing its channel ends the thread's loop.
        self.batches = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A polled batch copied out of the consumer's buffers into one of its own, so that
/// it can wait a turn (decoded ahead) after the consumer's messages are released.
#[derive(Debug, Default)]
pub struct InputBatch {
    bytes: Vec<u8>,
    records: Vec<RecordAt>,
}

/// One record of an [`InputBatch`]: its key and payload as ranges of the bytes.
#[derive(Debug)]
struct RecordAt {
    partition: i32,
    offset: i64,
    key: Option<Range<usize>>,
    payload: Range<usize>,
    timestamp_ms: Option<i64>,
}

impl InputBatch {
    /// Copies `records` (one buffer for every key and payload).
    pub fn copy(records: &[InputRecord<'_>]) -> InputBatch {
        let len: usize = records
            .iter()
            .map(|r| r.payload.len() + r.key.map_or(0, <[u8]>::len))
            .sum();
        let mut bytes = Vec::with_capacity(len);
        let mut put = |b: &[u8]| {
            let start = bytes.len();
            bytes.extend_from_slice(b);
            start..bytes.len()
        };
        let records = records
            .iter()
            .map(|r| RecordAt {
                partition: r.partition,
                offset: r.offset,
                key: r.key.map(&mut put),
                payload: put(r.payload),
                timestamp_ms: r.timestamp_ms,
            })
            .collect();
        InputBatch { bytes, records }
    }

    /// The records, borrowed from the batch.
    pub fn records(&self) -> Vec<InputRecord<'_>> {
        self.records
            .iter()
            .map(|r| InputRecord {
                partition: r.partition,
                offset: r.offset,
                key: r.key.clone().map(|k| &self.bytes[k]),
                payload: &self.bytes[r.payload.clone()],
                timestamp_ms: r.timestamp_ms,
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(offset: i64, key: Option<&'a [u8]>, payload: &'a [u8]) -> InputRecord<'a> {
        InputRecord {
            partition: (offset % 3) as i32,
            offset,
            key,
            payload,
            timestamp_ms: Some(1_700_000_000_000 + offset),
        }
    }

    #[test]
    fn a_copied_batch_gives_back_the_same_records() {
        let payloads: Vec<Vec<u8>> = (0..5).map(|i| format!("{{\"n\":{i}}}").into()).collect();
        let records: Vec<InputRecord<'_>> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| record(i as i64, (i % 2 == 0).then_some(b"k".as_slice()), p))
            .collect();
        let copy = InputBatch::copy(&records);
        drop(records);
        let back = copy.records();
        assert_eq!(back.len(), 5);
        for (i, r) in back.iter().enumerate() {
            assert_eq!(r.offset, i as i64);
            assert_eq!(r.partition, (i % 3) as i32);
            assert_eq!(r.payload, payloads[i].as_slice());
            assert_eq!(r.key, (i % 2 == 0).then_some(b"k".as_slice()));
            assert_eq!(r.timestamp_ms, Some(1_700_000_000_000 + i as i64));
        }
        assert!(InputBatch::copy(&[]).is_empty());
    }

    /// Decoded on the decode thread, a batch decodes to what it decodes to here, one
    /// batch after another.
    #[test]
    fn decoding_ahead_equals_decoding_in_place() {
        let good = paydedup_event::encode_json(&crate::pipeline::fixtures::payment("t1", 0, 100));
        let payloads: Vec<&[u8]> = vec![&good, b"not json", &good[..good.len() - 1]];
        let records: Vec<InputRecord<'_>> = payloads
            .iter()
            .enumerate()
            // Without a Kafka timestamp: judged against the clock, which is past the
            // payment's time.
            .map(|(i, p)| InputRecord {
                timestamp_ms: None,
                ..record(i as i64, None, p)
            })
            .collect();
        let decoder = RecordDecoder {
            limits: DecodeLimits::default(),
        };
        let thread = DecodeThread::spawn(decoder.clone()).unwrap();
        let batch = Arc::new(InputBatch::copy(&records));
        let mut ahead = Decoded::default();
        for _ in 0..3 {
            thread.start(batch.clone()).unwrap();
            ahead = thread.finish().unwrap();
        }
        drop(thread);
        let here = decoder.decode(&records);
        assert_eq!(ahead.len(), 3);
        assert!(ahead.events[0].is_ok());
        assert_eq!(format!("{ahead:?}"), format!("{here:?}"));
    }

    /// The hash is the event's content hash (0 for an invalid record), and a valid
    /// record counts as a key mismatch unless its key is its transaction id.
    #[test]
    fn hashes_and_key_mismatches_are_worked_out_with_the_decode() {
        let event = crate::pipeline::fixtures::payment("t1", 0, 100);
        let good = paydedup_event::encode_json(&event);
        let records: Vec<InputRecord<'_>> = [
            (Some(b"t1".as_slice()), good.as_slice()),
            (Some(b"t2".as_slice()), good.as_slice()),
            (None, good.as_slice()),
            (Some(b"t1".as_slice()), b"not json".as_slice()),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (key, payload))| InputRecord {
            timestamp_ms: None,
            ..record(i as i64, key, payload)
        })
        .collect();
        let d = RecordDecoder {
            limits: DecodeLimits::default(),
        }
        .decode(&records);
        let hash = content_hash(&event).0;
        assert_ne!(hash, 0);
        assert_eq!(d.hashes, vec![hash, hash, hash, 0]);
        assert_eq!(
            d.key_mismatches, 2,
            "a wrong key and no key; not the invalid record"
        );
    }
}
