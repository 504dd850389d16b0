//! [`LogEndProbe`]: the log end offsets (high watermarks) of the owned partitions,
//! measured on a thread of its own.
//!
//! Lag is the log end minus the checkpointed next offset. Reading a log end is a
//! ListOffsets round trip per partition; done on the processing loop's thread every
//! half second it stalled the loop for the broker's answer each time (measured through
//! tansu at 5k records/s: the records' p50 time from Kafka timestamp to durable commit
//! went from 250–300 ms to 500–750 ms). So a probe thread with its own client measures,
//! and the loop reads the latest measurement without waiting.
//!
//! A measurement is at most one period old (plus the broker's answer time). Lag from it
//! can only be lower than the lag now, never higher: records produced since are not
//! counted yet. The loop's uses accept that, as they accepted the time between a
//! synchronous check and the next poll: "caught up" also needs an empty poll, and an
//! idle partition also needs no records for the idle timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;

/// How long one partition's ListOffsets may take before the measurement fails.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A partition's `(partition, low, high)` offsets.
pub type PartitionOffsets = (i32, i64, i64);

/// One measurement: `(partition, low, high)` for every owned partition, or `None` when
/// the broker did not answer for some partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEnds {
    pub number: u64,
    pub offsets: Option<Vec<PartitionOffsets>>,
}

pub struct LogEndProbe {
    latest: Arc<Mutex<Option<LogEnds>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LogEndProbe {
    /// Starts measuring `partitions` of `topic` every `period` with `client` (a client
    /// of its own: the loop's consumer stays free).
    pub fn start(
        client: BaseConsumer,
        topic: String,
        partitions: Vec<i32>,
        period: Duration,
    ) -> std::io::Result<LogEndProbe> {
        let latest = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, stopping) = (latest.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("log-end-probe".into())
            .spawn(move || {
                let mut number = 0;
                while !stopping.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    number += 1;
                    let offsets = measure(&client, &topic, &partitions);
                    *shared.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some(LogEnds { number, offsets });
                    // Sleep out the period in short steps, so a stop is quick.
                    while started.elapsed() < period && !stopping.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(20).min(period));
                    }
                }
            })?;
        Ok(LogEndProbe {
            latest,
            stop,
            thread: Some(thread),
        })
    }

    /// The latest measurement, if one has finished.
    pub fn latest(&self) -> Option<LogEnds> {
        self.latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// `(partition, low, high)` of every one of `partitions`, each asked of the broker with
/// `timeout`; the first partition that got no answer, and why, otherwise. Both the
/// start-up read of the log ends and the probe use it.
pub fn read_offsets(
    client: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> Result<Vec<PartitionOffsets>, (i32, KafkaError)> {
    partitions
        .iter()
        .map(|&p| {
            let (low, high) = client
                .fetch_watermarks(topic, p, timeout)
                .map_err(|e| (p, e))?;
            Ok((p, low, high))
        })
        .collect()
}

fn measure(
    client: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
) -> Option<Vec<PartitionOffsets>> {
    read_offsets(client, topic, partitions, ANSWER_TIMEOUT)
        .inspect_err(|(p, e)| {
            tracing::warn!(partition = p, error = %e, "Could not fetch watermarks.");
        })
        .ok()
}

impl Drop for LogEndProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(all(test, feature = "integration"))]
mod tests {
    use paydedup_testkit::Broker;
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    use super::*;

    /// Polls `probe` until `done` holds for its latest measurement.
    fn wait_for(probe: &LogEndProbe, done: impl Fn(&LogEnds) -> bool) -> LogEnds {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(ends) = probe.latest().filter(|e| done(e)) {
                return ends;
            }
            assert!(Instant::now() < deadline, "no such measurement in 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn log_ends_are_measured_and_a_frozen_broker_holds_up_no_reader() {
        let broker = Broker::start().unwrap();
        broker.create_topic("t", 2).unwrap();
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap())
            .create()
            .unwrap();
        for _ in 0..3 {
            producer
                .send(BaseRecord::<(), str>::to("t").partition(1).payload("x"))
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        let client = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap())
            .create()
            .unwrap();
        let probe =
            LogEndProbe::start(client, "t".into(), vec![0, 1], Duration::from_millis(50)).unwrap();
        let ends = wait_for(&probe, |e| e.offsets.is_some());
        assert_eq!(ends.offsets, Some(vec![(0, 0, 0), (1, 0, 3)]));

        // Frozen (SIGSTOP): a measurement now waits for the answer timeout, and the
        // reader must not wait with it: it gets the last measurement at once.
        broker.pause().unwrap();
        let before = probe.latest().unwrap().number;
        let asked = Instant::now();
        for _ in 0..100 {
            assert!(probe.latest().is_some());
        }
        assert!(asked.elapsed() < ANSWER_TIMEOUT / 5, "the reader waited");
        // The failed measurement is reported as no answer, not as the old offsets.
        let failed = wait_for(&probe, |e| e.offsets.is_none());
        assert!(failed.number > before);
        broker.resume().unwrap();
        wait_for(&probe, |e| e.offsets.is_some() && e.number > failed.number);
    }
}
