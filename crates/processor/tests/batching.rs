//! How the Kafka source cuts the stream into batches, against a real broker (tansu):
//! a batch never waits to fill (that put up to `--batch-timeout-ms` on every record's
//! latency at a moderate rate); it takes what arrived within its linger, then what the
//! consumer already holds, up to `--batch-size`. Nothing is skipped or repeated
//! between batches.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use paydedup_processor::config::RunConfig;
use paydedup_processor::kafka::KafkaSource;
use paydedup_processor::shutdown::Shutdown;
use paydedup_testkit::Broker;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Message;

const TOPIC: &str = "payments";

/// Produces records `from..to` (key `t-i`), acknowledged before it returns.
fn produce(broker: &Broker, from: usize, to: usize) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .expect("a producer");
    for i in from..to {
        let key = format!("t-{i}");
        producer
            .send(BaseRecord::to(TOPIC).key(&key).payload("{}"))
            .expect("queued");
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("every record acknowledged");
}

/// A one-partition topic, and a source reading it from the beginning.
fn broker_and_source() -> (Broker, KafkaSource) {
    let broker = Broker::start().expect("tansu");
    broker.create_topic(TOPIC, 1).expect("the topic");
    let brokers = broker.bootstrap();
    let config = RunConfig::parse_layered(["--brokers", brokers.as_str(), "--topic", TOPIC])
        .expect("a configuration");
    let source = KafkaSource::connect(&config.kafka, &config.kafka_properties(), |n| {
        (0..n).collect()
    })
    .expect("a source");
    source.assign(|_| None, &BTreeMap::new()).expect("assigned");
    (broker, source)
}

/// One poll's offsets.
fn poll(source: &KafkaSource, max: usize, timeout: Duration, linger: Duration) -> Vec<i64> {
    source
        .poll_batch(max, timeout, linger, &Shutdown::default())
        .expect("a batch")
        .iter()
        .map(|m| m.offset())
        .collect()
}

/// Records already in the log come back well before the poll's timeout, though far
/// fewer than a full batch; full batches stop at the size; every offset exactly once,
/// in order.
#[test]
fn a_batch_does_not_wait_to_fill() {
    let (broker, source) = broker_and_source();
    produce(&broker, 0, 40);
    let timeout = Duration::from_secs(120);
    let started = Instant::now();
    let mut offsets = Vec::new();
    let mut batches = 0;
    while offsets.len() < 25 {
        let batch = poll(&source, 5_000, timeout, Duration::ZERO);
        assert!(!batch.is_empty(), "the log holds 40 records");
        offsets.extend(batch);
        batches += 1;
    }
    // A batch that waited to fill would have taken the whole timeout (and at most
    // one fetch's records come back per poll here).
    assert!(
        started.elapsed() < timeout / 2,
        "{batches} polls took {:?}",
        started.elapsed()
    );
    // The rest, in batches of at most 10.
    while offsets.len() < 40 {
        let batch = poll(&source, 10, timeout, Duration::ZERO);
        assert!(!batch.is_empty() && batch.len() <= 10, "{batch:?}");
        offsets.extend(batch);
    }
    assert_eq!(offsets, (0..40).collect::<Vec<i64>>());
}

/// Records that arrive within the linger join the batch; without a linger, the
/// batch goes with what was there.
#[test]
fn records_arriving_within_the_linger_join_the_batch() {
    let (broker, source) = broker_and_source();
    let timeout = Duration::from_secs(120);
    produce(&broker, 0, 5);
    let first = poll(&source, 5_000, timeout, Duration::ZERO);
    assert!(!first.is_empty());
    let mut offsets = first;
    while offsets.len() < 5 {
        offsets.extend(poll(&source, 5_000, timeout, Duration::ZERO));
    }
    assert_eq!(offsets, (0..5).collect::<Vec<i64>>());

    // Five more now, five more 0.5 s later: a 5 s linger takes all ten at once, and
    // the batch goes when the linger is over, not at the timeout.
    produce(&broker, 5, 10);
    let started = Instant::now();
    let later = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(500));
            produce(&broker, 10, 15);
        });
        poll(&source, 5_000, timeout, Duration::from_secs(5))
    });
    assert_eq!(later, (5..15).collect::<Vec<i64>>());
    assert!(started.elapsed() < timeout / 2, "{:?}", started.elapsed());

    // Five more now, five more 2 s later: without a linger the batch goes with the
    // first five.
    produce(&broker, 15, 20);
    let alone = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_secs(2));
            produce(&broker, 20, 25);
        });
        poll(&source, 5_000, timeout, Duration::ZERO)
    });
    // (One fetch may hold the first five or part of them, never the later five.)
    assert!(
        alone.first() == Some(&15) && alone.iter().all(|&o| o < 20),
        "{alone:?}"
    );
    let mut offsets = alone;
    while offsets.len() < 10 {
        offsets.extend(poll(&source, 5_000, timeout, Duration::ZERO));
    }
    assert_eq!(offsets, (15..25).collect::<Vec<i64>>());
}
