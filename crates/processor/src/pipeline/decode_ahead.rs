//! Decoding the next batches on the decode thread while this one is processed.
//!
//! **Why.** Decoding a batch (JSON to a checked `PaymentEvent`, ~0.8 µs a record) is a
//! quarter of the loop thread's time at 10 M payments, and the loop thread is what
//! limits a run once the commit thread's fraud writes are pages (docs/benchmarks.md,
//! twenty-sixth and twenty-seventh steps). Decoding depends on nothing the pipeline
//! keeps, only on the record and the decode limits ([`RecordDecoder`]), so batches
//! `n + 1` and `n + 2` ([`DECODE_AHEAD`]) can be decoded while batch `n` is
//! classified, scored and rendered.
//!
//! **What stays the same.** Records are processed in the order they were polled, each
//! exactly once: the batches decoded ahead are the next ones processed, oldest first
//! ([`DecodeAhead`]). None is committed until it is processed, so a crash or an exit
//! while they wait loses nothing (the next start resumes from the committed offsets).
//! The caller only decodes ahead when the poll returned a full batch (more are likely
//! waiting): a partial one is processed at once, with the ones ahead of it first, so
//! a quiet stream waits no extra turn. (Full batches followed by silence wait one
//! poll, `--batch-timeout-ms`.) A pause for backpressure processes the batches
//! waiting ahead first, so while the consumer shows paused, consumption stands still.
//!
//! Not the same as decoding one batch on two threads (a helper for half of each
//! batch, twenty-fifth step: no gain), which splits one batch's decode; here a whole
//! batch's decode leaves the loop thread, overlapping the next step's work.

use std::collections::VecDeque;
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
    /// (A batch decoded ahead takes `now` up to [`DECODE_AHEAD`] turns before it is
    /// processed: judged a little earlier, never against a later clock than its own.)
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

/// How many full batches may wait decoded (or decoding) while the loop processes the
/// one polled before them.
///
/// Why two, not one: with one, the loop handed batch `n + 1` to the decode thread,
/// processed `n`, then waited for `n + 1`'s decode, and the decode thread, woken once
/// a batch, was often waiting for a core the commit or RocksDB held: at 10 M events
/// the loop waited ~0.9 s a run for it. With a second batch queued the decode thread
/// has work whenever it gets a core, and the loop finds its batch decoded (waits of
/// 0.06–0.08 s): 5.5–9.8 % more events/s at 10 M in four pairs against one batch
/// ahead, more cores kept busy in every pair. With the relay delivering, whose thread
/// already takes the cores the loop leaves, no change (docs/benchmarks.md,
/// thirty-eighth step). A deeper queue holds more memory (a batch's copy and its
/// decode, a few MB each) for no wait left to remove.
pub const DECODE_AHEAD: usize = 2;

/// The full batches handed to the decode thread and not processed yet, oldest first
/// (see the module docs). The thread answers in the order it was handed batches, so
/// the oldest waiting batch and the next answer belong together.
pub struct DecodeAhead {
    decoder: RecordDecoder,
    /// Started with the first batch (a processor that never polls a full batch
    /// never starts it).
    thread: Option<DecodeThread>,
    waiting: VecDeque<Arc<InputBatch>>,
}

/// A batch whose turn has come, with what it decoded to.
pub struct Ahead {
    pub input: Arc<InputBatch>,
    pub decoded: Decoded,
}

/// The decode thread could not be started, or stopped (it panicked): the loop cannot
/// go on.
#[derive(Debug, thiserror::Error)]
pub enum DecodeAheadError {
    #[error("starting the decode-ahead thread")]
    Spawn(#[from] std::io::Error),
    #[error("the decode-ahead thread stopped")]
    Stopped,
}

impl DecodeAhead {
    pub fn new(decoder: RecordDecoder) -> DecodeAhead {
        DecodeAhead {
            decoder,
            thread: None,
            waiting: VecDeque::with_capacity(DECODE_AHEAD + 1),
        }
    }

    /// Hands `batch` to the decode thread, behind the batches waiting. Once more than
    /// [`DECODE_AHEAD`] wait, returns the oldest with its decode: its turn to be
    /// processed (the newer ones decode meanwhile).
    pub fn push(&mut self, batch: Arc<InputBatch>) -> Result<Option<Ahead>, DecodeAheadError> {
        let thread = match &self.thread {
            Some(thread) => thread,
            None => self
                .thread
                .insert(DecodeThread::spawn(self.decoder.clone())?),
        };
        thread.start(batch.clone())?;
        self.waiting.push_back(batch);
        if self.waiting.len() > DECODE_AHEAD {
            return self.pop();
        }
        Ok(None)
    }

    /// The oldest waiting batch with its decode (waiting for it if it is still being
    /// decoded), or `None` if no batch waits.
    pub fn pop(&mut self) -> Result<Option<Ahead>, DecodeAheadError> {
        let Some(input) = self.waiting.pop_front() else {
            return Ok(None);
        };
        let thread = self.thread.as_ref().ok_or(DecodeAheadError::Stopped)?;
        let decoded = thread.finish()?;
        Ok(Some(Ahead { input, decoded }))
    }

    /// How many batches wait.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// The thread that decodes the batches ahead: one for the loop's life, not one a batch
/// (a thread spawned per batch measured no faster and its peak RSS no lower,
/// docs/benchmarks.md, twenty-seventh step; this one spawns nothing per batch).
///
/// Its two channels hold one batch more than [`DECODE_AHEAD`], the most ever handed
/// over and not taken back ([`DecodeAhead::push`] hands over one more, then takes the
/// oldest back): so neither side ever blocks on a full channel, and a drop, which
/// closes the thread's input and joins it, cannot wait on an answer nobody reads.
struct DecodeThread {
    batches: Option<SyncSender<Arc<InputBatch>>>,
    decoded: Receiver<Decoded>,
    handle: Option<JoinHandle<()>>,
}

impl DecodeThread {
    fn spawn(decoder: RecordDecoder) -> std::io::Result<DecodeThread> {
        let (batches, to_decode) = sync_channel::<Arc<InputBatch>>(DECODE_AHEAD + 1);
        let (done, decoded) = sync_channel::<Decoded>(DECODE_AHEAD + 1);
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

    /// Starts decoding `batch` after the batches started before it.
    fn start(&self, batch: Arc<InputBatch>) -> Result<(), DecodeAheadError> {
        match &self.batches {
            Some(b) => b.send(batch).map_err(|_| DecodeAheadError::Stopped),
            None => Err(DecodeAheadError::Stopped),
        }
    }

    /// What the oldest batch started and not finished decoded to.
    fn finish(&self) -> Result<Decoded, DecodeAheadError> {
        self.decoded.recv().map_err(|_| DecodeAheadError::Stopped)
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
/// it can wait its turn (decoded ahead) after the consumer's messages are released.
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
        let mut queue = DecodeAhead::new(decoder.clone());
        let batch = Arc::new(InputBatch::copy(&records));
        let mut ahead = Vec::new();
        for _ in 0..3 {
            ahead.extend(queue.push(batch.clone()).unwrap());
        }
        while let Some(a) = queue.pop().unwrap() {
            ahead.push(a);
        }
        let ahead = ahead.pop().unwrap().decoded;
        let here = decoder.decode(&records);
        assert_eq!(ahead.len(), 3);
        assert!(ahead.events[0].is_ok());
        assert_eq!(format!("{ahead:?}"), format!("{here:?}"));
    }

    /// Batches come back in the order they were handed over, each with its own decode:
    /// the oldest once more than [`DECODE_AHEAD`] wait, the rest when drained.
    #[test]
    fn batches_come_back_oldest_first_each_with_its_own_decode() {
        let payload = b"not json";
        let mut queue = DecodeAhead::new(RecordDecoder {
            limits: DecodeLimits::default(),
        });
        let mut back = Vec::new();
        for n in 0..7i64 {
            // Batch n: n + 1 records from offset 100 n, so its decode's length and its
            // first offset tell it apart.
            let records: Vec<InputRecord<'_>> = (0..=n)
                .map(|i| record(100 * n + i, None, payload))
                .collect();
            let returned = queue.push(Arc::new(InputBatch::copy(&records))).unwrap();
            assert_eq!(returned.is_some(), n as usize >= DECODE_AHEAD, "batch {n}");
            back.extend(returned);
            assert!(queue.len() <= DECODE_AHEAD);
        }
        while let Some(a) = queue.pop().unwrap() {
            back.push(a);
        }
        assert!(queue.is_empty() && queue.pop().unwrap().is_none());
        assert_eq!(back.len(), 7);
        for (n, a) in back.iter().enumerate() {
            assert_eq!(a.input.records()[0].offset, 100 * n as i64);
            assert_eq!(a.input.len(), n + 1);
            assert_eq!(a.decoded.len(), n + 1, "batch {n}'s own decode");
        }
    }

    /// Dropped with batches decoded and not taken back, the queue lets its thread end
    /// (its answers fit in the channel): the drop returns.
    #[test]
    fn a_queue_dropped_with_batches_waiting_ends_its_thread() {
        let mut queue = DecodeAhead::new(RecordDecoder {
            limits: DecodeLimits::default(),
        });
        for n in 0..DECODE_AHEAD as i64 {
            let records = [record(n, None, b"{}")];
            assert!(queue
                .push(Arc::new(InputBatch::copy(&records)))
                .unwrap()
                .is_none());
        }
        // Let the thread decode them and put its answers in the channel.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (dropped, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(queue);
            let _ = dropped.send(());
        });
        assert!(
            done.recv_timeout(std::time::Duration::from_secs(30))
                .is_ok(),
            "the drop waited on its thread"
        );
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
