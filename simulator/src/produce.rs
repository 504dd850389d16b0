//! Sending records to Kafka with an idempotent producer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

/// Counts deliveries and remembers the first offset written to each partition.
pub struct DeliveryTracker {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub first_error: Mutex<Option<String>>,
    pub first_offset: Mutex<Vec<Option<i64>>>,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(msg) => {
                use rdkafka::Message;
                self.delivered.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_offset.lock() {
                    if let Some(slot) = first.get_mut(msg.partition() as usize) {
                        let o = msg.offset();
                        *slot = Some(slot.map_or(o, |s: i64| s.min(o)));
                    }
                }
            }
            Err((error, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_error.lock() {
                    first.get_or_insert_with(|| error.to_string());
                }
            }
        }
    }
}

pub fn client_config(brokers: &str, extra: &[(String, String)]) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "10")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .set("message.timeout.ms", "60000");
    for (k, v) in extra {
        cfg.set(k, v);
    }
    cfg
}

/// An idempotent producer whose delivery reports feed a [`DeliveryTracker`].
pub struct Sender {
    producer: ThreadedProducer<DeliveryTracker>,
}

impl Sender {
    pub fn new(
        brokers: &str,
        extra: &[(String, String)],
        partitions: usize,
    ) -> anyhow::Result<Sender> {
        let tracker = DeliveryTracker {
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            first_error: Mutex::new(None),
            first_offset: Mutex::new(vec![None; partitions]),
        };
        let producer = client_config(brokers, extra)
            .create_with_context(tracker)
            .context("creating the Kafka producer")?;
        Ok(Sender { producer })
    }

    /// Queues one record, waiting while librdkafka's queue is full.
    pub fn send(
        &self,
        topic: &str,
        partition: i32,
        key: &str,
        payload: &[u8],
        timestamp_ms: i64,
    ) -> anyhow::Result<()> {
        let mut record = BaseRecord::to(topic)
            .partition(partition)
            .key(key)
            .payload(payload)
            .timestamp(timestamp_ms);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, _)) => return Err(e).context("queueing a record"),
            }
        }
    }

    pub fn tracker(&self) -> &DeliveryTracker {
        self.producer.context()
    }

    /// Waits until every queued record is acknowledged or failed.
    pub fn flush(&self, timeout: Duration) -> anyhow::Result<()> {
        self.producer
            .flush(timeout)
            .context("flushing the producer")
    }
}

/// Returns the topic's partition count, creating the topic first when asked to.
pub fn ensure_topic(
    brokers: &str,
    topic: &str,
    create_partitions: Option<i32>,
    extra: &[(String, String)],
) -> anyhow::Result<usize> {
    if let Some(n) = partition_count(brokers, topic, extra)? {
        return Ok(n);
    }
    let Some(partitions) = create_partitions else {
        bail!(
            "topic `{topic}` does not exist on {brokers}; create it or pass --create-partitions N"
        );
    };
    // The user's properties (TLS, SASL) apply to the admin client too: without them
    // it spoke plaintext to a TLS listener and timed out.
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers);
    for (k, v) in extra {
        cfg.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> =
        cfg.create().context("creating the Kafka admin client")?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = futures_executor::block_on(admin.create_topics(
        [&new],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))
    .with_context(|| format!("creating topic `{topic}`"))?;
    for r in results {
        if let Err((name, code)) = r {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                bail!("creating topic `{name}`: {code}");
            }
        }
    }
    // Metadata can lag a moment behind creation.
    for _ in 0..50 {
        if let Some(n) = partition_count(brokers, topic, extra)? {
            return Ok(n);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("topic `{topic}` was created but does not appear in metadata")
}

fn partition_count(
    brokers: &str,
    topic: &str,
    extra: &[(String, String)],
) -> anyhow::Result<Option<usize>> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers);
    for (k, v) in extra {
        cfg.set(k, v);
    }
    let consumer: rdkafka::consumer::BaseConsumer =
        cfg.create().context("creating a Kafka metadata client")?;
    use rdkafka::consumer::Consumer;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| {
            format!("fetching metadata for `{topic}` from {brokers} (is the broker up?)")
        })?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    match t.error() {
        None if !t.partitions().is_empty() => Ok(Some(t.partitions().len())),
        _ => Ok(None),
    }
}
