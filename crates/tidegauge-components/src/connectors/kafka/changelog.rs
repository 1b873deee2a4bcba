//! The changelog topic of a `kafka` source with partition-aligned state: each input
//! partition's latest snapshot (see [`crate::partitions`]), keyed `<topic>/<partition>`,
//! last value wins (a compacted topic on brokers that compact). Also the consumer
//! context that reads a partition's snapshot back before the partition is assigned.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::revoke::Revocations;
use crate::partitions::{Hub, Snapshot, decode_snapshot, encode_snapshot};

const TIMEOUT: Duration = Duration::from_secs(10);

/// The changelog of one input topic.
pub(crate) struct Changelog {
    /// The changelog topic.
    pub topic: String,
    /// The input topic whose partitions it holds.
    pub input: String,
    /// The changelog topic's partition count (input partition `p` goes to `p % n`).
    partitions: i32,
    reader: BaseConsumer,
    producer: ThreadedProducer<DefaultProducerContext>,
}

impl Changelog {
    /// Opens the changelog `topic` of `input`, creating it (compacted, as many partitions
    /// as the input) if missing. Blocking: call off the runtime.
    pub fn open(config: &ClientConfig, input: &str, topic: &str) -> Result<Self, String> {
        let mut reader_config = config.clone();
        reader_config
            .set("group.id", format!("{topic}.reader"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        let reader: BaseConsumer = reader_config
            .create()
            .map_err(|e| format!("cannot create changelog reader: {e}"))?;
        let count = |t: &str| -> Result<i32, String> {
            let md = reader
                .fetch_metadata(Some(t), TIMEOUT)
                .map_err(|e| format!("cannot read metadata of `{t}`: {e}"))?;
            Ok(md
                .topics()
                .iter()
                .find(|m| m.name() == t && m.error().is_none())
                .map_or(0, |m| m.partitions().len() as i32))
        };
        let input_partitions = count(input)?;
        if input_partitions == 0 {
            return Err(format!(
                "topic `{input}` does not exist (create it with its partitions first)"
            ));
        }
        if count(topic)? == 0 {
            create_topic(config, topic, input_partitions)?;
        }
        let mut partitions = 0;
        let deadline = Instant::now() + TIMEOUT;
        while partitions == 0 && Instant::now() < deadline {
            partitions = count(topic)?;
            if partitions == 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if partitions == 0 {
            return Err(format!("changelog topic `{topic}` did not appear"));
        }
        let mut producer_config = config.clone();
        // In order per partition, even when a send is retried.
        producer_config
            .set("max.in.flight.requests.per.connection", "1")
            .set("linger.ms", "5");
        let producer = producer_config
            .create()
            .map_err(|e| format!("cannot create changelog producer: {e}"))?;
        Ok(Changelog {
            topic: topic.to_string(),
            input: input.to_string(),
            partitions,
            reader,
            producer,
        })
    }

    fn key(&self, partition: i32) -> String {
        format!("{}/{partition}", self.input)
    }

    /// Queues `snapshot` of input `partition`. Losing it (a crash before the broker has
    /// it) only means the next owner restores an older snapshot and replays more.
    pub fn write(&self, partition: i32, snapshot: &Snapshot) -> Result<(), String> {
        let key = self.key(partition);
        let payload = encode_snapshot(snapshot);
        self.producer
            .send(
                BaseRecord::to(&self.topic)
                    .partition(partition % self.partitions)
                    .key(&key)
                    .payload(&payload),
            )
            .map_err(|(e, _)| format!("cannot write snapshot of {key}: {e}"))
    }

    /// Waits until every snapshot queued has reached the broker, at most `timeout`
    /// (the producer drops what is still queued when it is dropped). Blocking.
    pub fn flush(&self, timeout: Duration) -> Result<(), String> {
        use rdkafka::producer::Producer;
        self.producer
            .flush(timeout)
            .map_err(|e| format!("snapshots not all written to {}: {e}", self.topic))
    }

    /// Snapshots queued that the broker has not acknowledged yet (non-blocking).
    pub fn in_flight(&self) -> i32 {
        use rdkafka::producer::Producer;
        self.producer.in_flight_count()
    }

    /// The high watermark of input `partition` (`None` if the broker does not answer
    /// within a second). Blocking.
    pub fn input_high_watermark(&self, partition: i32) -> Option<i64> {
        self.reader
            .fetch_watermarks(&self.input, partition, Duration::from_secs(1))
            .ok()
            .map(|(_, high)| high)
    }

    /// The latest snapshot of input `partition`, read back from the end of its changelog
    /// partition. Blocking.
    pub fn read(&self, partition: i32) -> Result<Option<Snapshot>, String> {
        let key = self.key(partition);
        let cp = partition % self.partitions;
        let (low, high) = self
            .reader
            .fetch_watermarks(&self.topic, cp, TIMEOUT)
            .map_err(|e| format!("cannot read watermarks of {}/{cp}: {e}", self.topic))?;
        let mut end = high;
        let mut span = 16;
        while end > low {
            let start = (end - span).max(low);
            if let Some(found) = self.last_in(cp, start, end, &key)? {
                return decode_snapshot(&found)
                    .map(Some)
                    .map_err(|e| format!("snapshot of {key} in {}: {e}", self.topic));
            }
            end = start;
            span *= 2;
        }
        Ok(None)
    }

    /// The payload of the last message keyed `key` in `start..end` of changelog
    /// partition `cp`.
    fn last_in(&self, cp: i32, start: i64, end: i64, key: &str) -> Result<Option<Vec<u8>>, String> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, cp, Offset::Offset(start))
            .map_err(|e| e.to_string())?;
        self.reader
            .assign(&tpl)
            .map_err(|e| format!("cannot read {}/{cp}: {e}", self.topic))?;
        let deadline = Instant::now() + TIMEOUT;
        let mut last = None;
        let mut next = start;
        while next < end {
            if Instant::now() > deadline {
                return Err(format!(
                    "reading {}/{cp} from {start} to {end} took over {TIMEOUT:?}",
                    self.topic
                ));
            }
            match self.reader.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    next = m.offset() + 1;
                    if m.offset() < end && m.key() == Some(key.as_bytes()) {
                        last = Some(m.payload().unwrap_or_default().to_vec());
                    }
                }
                Some(Err(e)) => return Err(format!("cannot read {}/{cp}: {e}", self.topic)),
                None => {}
            }
        }
        let _ = self.reader.unassign();
        Ok(last)
    }
}

/// The revocations, whatever a panicking holder left (every update is a few inserts).
pub(crate) fn lock(revocations: &Mutex<Revocations>) -> std::sync::MutexGuard<'_, Revocations> {
    revocations.lock().unwrap_or_else(|p| p.into_inner())
}

fn create_topic(config: &ClientConfig, topic: &str, partitions: i32) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = config
        .create()
        .map_err(|e| format!("cannot create admin client: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let create = |compact: bool| {
        let mut t = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
        if compact {
            t = t.set("cleanup.policy", "compact");
        }
        let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
        runtime.block_on(admin.create_topics(&[t], &options))
    };
    let ok = |r: &Result<Vec<rdkafka::admin::TopicResult>, _>| match r {
        Ok(results) => results.iter().all(|r| match r {
            Ok(_) => true,
            Err((_, code)) => *code == RDKafkaErrorCode::TopicAlreadyExists,
        }),
        Err(_) => false,
    };
    let first = create(true);
    if ok(&first) {
        return Ok(());
    }
    // A broker without compaction (or without that setting): last value wins all the
    // same, the topic only keeps the older snapshots too.
    let second = create(false);
    if ok(&second) {
        tracing::warn!(
            topic,
            "changelog created without cleanup.policy=compact: {first:?}"
        );
        return Ok(());
    }
    Err(format!(
        "cannot create changelog topic `{topic}`: {second:?}"
    ))
}

/// The source's consumer context: before a partition is assigned, reads its snapshot
/// back and hands it to the hub, then consumes from the snapshot's offset; defers
/// revocations until the source has written the partitions' last snapshots (see
/// [`super::revoke`]), or hands them to the hub at once.
pub(crate) struct Rebalancer {
    pub hub: Arc<Hub>,
    pub changelog: Arc<Changelog>,
    /// Where a partition without a snapshot starts.
    pub without_snapshot: Offset,
    /// Revocations deferred, shared with the source that carries them out.
    pub revocations: Arc<Mutex<Revocations>>,
}

impl Rebalancer {
    /// Handles a rebalance of `consumer` (whose context wraps this one).
    pub fn rebalance_with<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let started = Instant::now();
        let partitions: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut restored_bytes = 0usize;
                let mut from = Vec::new();
                for (topic, p) in &partitions {
                    let snapshot = if *topic == self.changelog.input {
                        match self.changelog.read(*p) {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::error!(
                                    "{e}; partition {topic}/{p} is read again from its start"
                                );
                                None
                            }
                        }
                    } else {
                        None
                    };
                    let offset = snapshot
                        .as_ref()
                        .map_or(self.without_snapshot, |s| Offset::Offset(s.offset));
                    if let Offset::Offset(o) = offset {
                        from.push((*p, o));
                    }
                    restored_bytes += snapshot
                        .as_ref()
                        .map_or(0, |s| s.states.values().map(Vec::len).sum());
                    self.hub.assign(*p, snapshot);
                    let _ = tpl.set_partition_offset(topic, *p, offset);
                }
                let ids: Vec<i32> = partitions.iter().map(|p| p.1).collect();
                let paused = lock(&self.revocations).assigned(&ids);
                if !paused.is_empty() {
                    // Paused when a rebalance took them away, and the pause outlives the
                    // assignment: resumed before the fetch starts again, or they stall.
                    let mut resume = TopicPartitionList::new();
                    for (topic, p) in partitions.iter().filter(|p| paused.contains(&p.1)) {
                        resume.add_partition(topic, *p);
                    }
                    if let Err(e) = consumer.resume(&resume) {
                        tracing::error!("cannot resume partitions {paused:?}: {e}");
                    }
                }
                let r = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = r {
                    tracing::error!("cannot take assigned partitions: {e}");
                }
                tracing::info!(
                    partitions = ?partitions.iter().map(|p| p.1).collect::<Vec<_>>(),
                    restore_ms = started.elapsed().as_millis() as u64,
                    restored_bytes,
                    ?from,
                    "partitions assigned, state restored from the changelog"
                );
                crate::partitions::record_rebalance(started.elapsed(), true);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let ids: Vec<i32> = partitions.iter().map(|p| p.1).collect();
                // Lost (the session expired): the partitions are someone else's already,
                // nothing of theirs may be committed or written any more.
                if cooperative
                    && !consumer.assignment_lost()
                    && lock(&self.revocations).defer(&ids, started)
                {
                    if let Err(e) = consumer.pause(tpl) {
                        tracing::error!("cannot pause revoked partitions {ids:?}: {e}");
                    }
                    tracing::info!(
                        partitions = ?ids,
                        "partitions revoked; each is given up once its last snapshot is written"
                    );
                    return;
                }
                lock(&self.revocations).forget(&ids);
                for (_, p) in &partitions {
                    self.hub.revoke(*p);
                }
                let r = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = r {
                    tracing::error!("cannot give up revoked partitions: {e}");
                }
                tracing::info!(
                    partitions = ?partitions.iter().map(|p| p.1).collect::<Vec<_>>(),
                    "partitions revoked"
                );
                crate::partitions::record_rebalance(started.elapsed(), false);
            }
            other => {
                tracing::error!("rebalance failed: {other:?}");
                if !cooperative {
                    let _ = consumer.unassign();
                }
            }
        }
    }
}
