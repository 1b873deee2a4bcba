//! `kafka` source: a member of a Kafka consumer group. Offsets are committed only after
//! every sink has made the events of the messages below them durable, so a restart (or a
//! partition moving to another member) resumes without losing anything.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_schema::SchemaRef;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::message::Message;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use schemars::JsonSchema;
use serde::Deserialize;
use tidegauge_core::component::source_fn;
use tidegauge_core::telemetry::ComponentErrorOccurred;
use tidegauge_core::{
    BuildContext, BuildError, ComponentContext, ComponentError, ConfigError, Source, SourceConfig,
    SourceContext,
};

use super::changelog::{Changelog, Rebalancer, lock};
use super::kafka_connection;
use super::reads::{Admit, Reads};
use super::revoke::{self, Due, Revocations};
use crate::codec::FieldType;
use crate::connectors::inbound::{self, BrokerSource, MessageDecoder, Next, Released};
use crate::partitions::{OFFSET_FIELD, PARTITION_FIELD};
use crate::settings::{config, decoded_records};

config! {
    [kafka_connection, decoded_records]
    /// Consumes Kafka topics as a member of a consumer group and decodes each message's
    /// payload (a JSON object, or JSON Lines) into events.
    ///
    /// Offsets are committed only once every sink has made the events durable
    /// (at-least-once). Partitions are shared among every member of `group_id`; run several
    /// tidegauge instances with the same group to spread the load.
    pub struct KafkaSourceConfig {
        /// Topics to consume.
        #[schemars(example = ["readings"])]
        pub topics: Vec<String>,
        /// Consumer group; members share the topics' partitions.
        #[schemars(example = &"tidegauge")]
        pub group_id: String,
        /// Where a group without a committed offset starts: `earliest` or `latest`.
        #[serde(default)]
        pub start_from: StartFrom,
        /// Fill this declared string field from the message key (when the key is UTF-8).
        #[serde(default)]
        pub key_field: Option<String>,
        /// At shutdown, how long to wait for the sinks' acknowledgements before the last
        /// commit, in milliseconds.
        #[serde(default = "inbound::default_drain_timeout_ms")]
        pub drain_timeout_ms: u64,
        /// Partition-aligned state: keyed transforms keep their state per partition, and
        /// every `snapshot_interval_ms` each partition's state is written, with the
        /// offset it belongs to, to a changelog topic that the partition's next owner
        /// restores from (so several instances can share the group). Needs one topic,
        /// and the int fields `kafka_partition` and `kafka_offset` declared, which the
        /// source fills from each message.
        #[serde(default)]
        pub partition_state: bool,
        /// The changelog topic (default `<group_id>.<topic>.changelog`); created,
        /// compacted, with the input's partition count if missing.
        #[serde(default)]
        pub changelog_topic: Option<String>,
        /// How often each partition's state is snapshotted to the changelog, in
        /// milliseconds. A new owner replays at most about this much of the partition.
        #[serde(default = "default_snapshot_interval_ms")]
        #[schemars(range(min = 1))]
        pub snapshot_interval_ms: u64,
        /// With `partition_state`: how long a jump past unread messages of a partition
        /// must last, read again and again, before it is taken as a real gap (messages
        /// compacted away, transaction markers) and consumption goes on past it, in
        /// milliseconds. Some brokers (tansu) show such jumps for a moment at the end of
        /// a partition being written; taken at once, they would leave messages out of
        /// the state.
        #[serde(default = "default_gap_wait_ms")]
        pub gap_wait_ms: u64,
    }
}

fn default_gap_wait_ms() -> u64 {
    10_000
}

fn default_snapshot_interval_ms() -> u64 {
    1_000
}

/// Where to start without a committed offset.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    /// The oldest message still kept.
    #[default]
    Earliest,
    /// Only messages produced from now on.
    Latest,
}

/// Properties tidegauge sets itself; `options` may not override them.
const RESERVED: [&str; 3] = ["group.id", "enable.auto.commit", "enable.auto.offset.store"];

impl SourceConfig for KafkaSourceConfig {
    const TYPE: &'static str = "kafka";

    fn validate(&self) -> Result<SchemaRef, Vec<ConfigError>> {
        let mut errors = Vec::new();
        self.connection().validate(&RESERVED, &mut errors);
        if self.topics.is_empty() {
            errors.push(ConfigError::new("topics", "list at least one topic"));
        }
        if self.group_id.trim().is_empty() {
            errors.push(ConfigError::new(
                "group_id",
                "expected a consumer group name",
            ));
        }
        if self.partition_state {
            if self.topics.len() != 1 {
                errors.push(ConfigError::new(
                    "partition_state",
                    "needs exactly one topic in `topics` (one changelog per input topic)",
                ));
            }
            for f in [PARTITION_FIELD, OFFSET_FIELD] {
                if self.fields.get(f) != Some(&FieldType::Int64) {
                    errors.push(ConfigError::new(
                        "partition_state",
                        format!(
                            "declare the field `{f}` as int64; the source fills it from each message"
                        ),
                    ));
                }
            }
            if self.snapshot_interval_ms == 0 {
                errors.push(ConfigError::new(
                    "snapshot_interval_ms",
                    "expected a positive integer",
                ));
            }
            // An eager strategy (range, roundrobin) revokes every partition at every
            // rebalance and reads them again behind a gap; measured with scale-test it
            // lost anomalies. State moves with its partition only cooperatively.
            if let Some(strategy) = self.options.get("partition.assignment.strategy")
                && strategy.trim() != "cooperative-sticky"
            {
                errors.push(ConfigError::new(
                    "options.\"partition.assignment.strategy\"",
                    format!(
                        "`{strategy}` with partition_state: only `cooperative-sticky` (the default with partition_state) moves each partition's state with it; remove the option"
                    ),
                ));
            }
        }
        if let Some(k) = &self.key_field {
            match self.fields.get(k) {
                Some(FieldType::String) => {}
                Some(_) => errors.push(ConfigError::new(
                    "key_field",
                    format!("`{k}` must be declared as a string field"),
                )),
                None => errors.push(ConfigError::new(
                    "key_field",
                    format!("`{k}` is not one of the declared fields"),
                )),
            }
        }
        self.decoded_schema(errors)
    }

    async fn build(
        &self,
        schema: SchemaRef,
        _cx: BuildContext,
    ) -> Result<Box<dyn Source>, BuildError> {
        let mut c = self.connection().client_config();
        c.set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match self.start_from {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                },
            );
        let redact = |e: String| BuildError::new(self.connection().redact(&e));
        let changelog = if self.partition_state {
            if !self.options.contains_key("partition.assignment.strategy") {
                // Only the partitions that move pause.
                c.set("partition.assignment.strategy", "cooperative-sticky");
            }

            let input = self.topics[0].clone();
            let topic = self
                .changelog_topic
                .clone()
                .unwrap_or_else(|| format!("{}.{input}.changelog", self.group_id));
            let client = self.connection().client_config();
            let opened =
                tokio::task::spawn_blocking(move || Changelog::open(&client, &input, &topic))
                    .await
                    .map_err(|e| BuildError::new(format!("changelog: {e}")))?
                    .map_err(redact)?;
            Some(Arc::new(opened))
        } else {
            None
        };
        let hub = crate::partitions::process_hub();
        let revocations = Arc::new(std::sync::Mutex::new(Revocations::default()));
        let consumer: StreamConsumer<Context> = match &changelog {
            Some(changelog) => c.create_with_context(Context::Changelog(Rebalancer {
                hub: hub.clone(),
                changelog: changelog.clone(),
                without_snapshot: match self.start_from {
                    StartFrom::Earliest => Offset::Beginning,
                    StartFrom::Latest => Offset::End,
                },
                revocations: revocations.clone(),
            })),
            None => c.create_with_context(Context::Plain),
        }
        .map_err(|e| redact(format!("cannot create Kafka consumer: {e}")))?;
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(|e| {
            BuildError::new(format!(
                "cannot subscribe to {}: {e}",
                self.topics.join(", ")
            ))
        })?;
        let source = KafkaSource {
            config: self.clone(),
            consumer,
            schema,
            changelog: changelog.map(|changelog| Partitioned {
                changelog,
                hub,
                reads: Reads::new(Duration::from_millis(self.gap_wait_ms)),
                cut: BTreeMap::new(),
                last_cut: Instant::now(),
                interval: Duration::from_millis(self.snapshot_interval_ms),
                upkeep_at: tokio::time::Instant::now(),
                seen: 0,
                epochs: BTreeMap::new(),
                watermarks: Arc::default(),
                querying: Arc::default(),
                revocations,
                revoke_wait: Duration::from_millis(self.drain_timeout_ms).min(revoke::MAX_WAIT),
            }),
        };
        Ok(source_fn(move |cx| source.run_async(cx)))
    }
}

struct KafkaSource {
    config: KafkaSourceConfig,
    consumer: StreamConsumer<Context>,
    schema: SchemaRef,
    changelog: Option<Partitioned>,
}

/// The consumer's context: with partition-aligned state, the one that restores state
/// before a partition is assigned.
enum Context {
    Plain,
    Changelog(Rebalancer),
}

impl rdkafka::client::ClientContext for Context {}

impl ConsumerContext for Context {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match self {
            Context::Changelog(r) => r.rebalance_with(consumer, err, tpl),
            Context::Plain => plain_rebalance(consumer, err, tpl),
        }
    }
}

/// What the default context does: take or give up the partitions.
fn plain_rebalance<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    err: RDKafkaRespErr,
    tpl: &TopicPartitionList,
) {
    let cooperative = matches!(
        consumer.rebalance_protocol(),
        RebalanceProtocol::Cooperative
    );
    let r = match err {
        RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS if cooperative => {
            consumer.incremental_assign(tpl)
        }
        RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => consumer.assign(tpl),
        RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS if cooperative => {
            consumer.incremental_unassign(tpl)
        }
        _ => consumer.unassign(),
    };
    if let Err(e) = r {
        tracing::error!("rebalance: {e}");
    }
}

mod partitioned;
use partitioned::Partitioned;

/// How often a source looks at a deferred revocation until it is carried out.
const REVOKING_UPKEEP: Duration = Duration::from_millis(20);

/// A message's place: (topic, partition, offset), and with partition-aligned state the
/// partition's ownership epoch when it was read.
type Position = (String, i32, i64, u64);

/// Per partition, what may be committed. A batch a sink failed to deliver caps the
/// partition at its first offset until that offset is delivered on a later read.
#[derive(Default)]
struct Commits {
    next: BTreeMap<(String, i32), i64>,
    caps: HashMap<(String, i32), i64>,
}

impl Commits {
    /// The offset partition `key` may be committed at: after the last delivered message,
    /// held at a failed batch's first offset until that is delivered (`None`: nothing
    /// delivered yet).
    fn committable(&self, key: &(String, i32)) -> Option<i64> {
        let next = *self.next.get(key)?;
        Some(self.caps.get(key).map_or(next, |c| (*c).min(next)))
    }

    /// Notes released positions; returns the offsets to commit now.
    fn settle(
        &mut self,
        released: Released<Position>,
    ) -> (TopicPartitionList, Vec<(String, i32, i64)>) {
        let mut seek = BTreeMap::new();
        for (t, p, o, _) in released.failed {
            let e = seek.entry((t.clone(), p)).or_insert(o);
            *e = (*e).min(o);
            let cap = self.caps.entry((t, p)).or_insert(o);
            *cap = (*cap).min(o);
        }
        let mut changed = BTreeMap::new();
        for (t, p, o, _) in released.delivered {
            let key = (t, p);
            if self.caps.get(&key) == Some(&o) {
                self.caps.remove(&key);
            }
            let next = self.next.entry(key.clone()).or_insert(o + 1);
            *next = (*next).max(o + 1);
            changed.insert(key, ());
        }
        let mut tpl = TopicPartitionList::new();
        for ((t, p), ()) in changed {
            let mut offset = self.next[&(t.clone(), p)];
            if let Some(cap) = self.caps.get(&(t.clone(), p)) {
                offset = offset.min(*cap);
            }
            let _ = tpl.add_partition_offset(&t, p, Offset::Offset(offset));
        }
        (tpl, seek.into_iter().map(|((t, p), o)| (t, p, o)).collect())
    }
}

/// The group member as the shared broker loop drives it.
struct Member {
    origin: String,
    config: KafkaSourceConfig,
    consumer: StreamConsumer<Context>,
    commits: Commits,
    changelog: Option<Partitioned>,
}

impl Member {
    /// Carries out the deferred revocations that are complete (or waited too long).
    fn give_up_revoked(&mut self, cx: &ComponentContext) {
        let Some(partitioned) = &self.changelog else {
            return;
        };
        let mut revocations = lock(&partitioned.revocations);
        if !revocations.any() {
            return;
        }
        let flushed = partitioned.changelog.in_flight() == 0;
        let due = revocations.due(Instant::now(), partitioned.revoke_wait, flushed);
        drop(revocations);
        for d in due {
            self.give_up(cx, d);
        }
    }

    /// Gives up partitions a rebalance revoked: commits what the sinks hold of them,
    /// revokes them from the hub (the stages drop their state), and tells the consumer
    /// (the group's rebalance goes on).
    fn give_up(&mut self, cx: &ComponentContext, due: Due) {
        let Some(partitioned) = &self.changelog else {
            return;
        };
        let topic = partitioned.changelog.input.clone();
        let mut commit = TopicPartitionList::new();
        let mut unassign = TopicPartitionList::new();
        for &p in &due.partitions {
            let key = (topic.clone(), p);
            if let Some(offset) = self.commits.committable(&key) {
                let _ = commit.add_partition_offset(&topic, p, Offset::Offset(offset));
            }
            unassign.add_partition(&topic, p);
        }
        // Async: the next owner goes on from the snapshot's offset, not from this commit
        // (kept for lag monitoring), and the runtime is not blocked for the broker.
        self.commit(cx, &commit, CommitMode::Async);
        for &p in &due.partitions {
            partitioned.hub.revoke(p);
        }
        if let Err(e) = self.consumer.incremental_unassign(&unassign) {
            cx.emit(ComponentErrorOccurred {
                error: &format!(
                    "cannot give up revoked partitions {:?}: {e}",
                    due.partitions
                ),
            });
        }
        let waited_ms = due.since.elapsed().as_millis() as u64;
        if due.missing.is_empty() {
            tracing::info!(
                partitions = ?due.partitions,
                written = ?due.written,
                waited_ms,
                "revoked partitions given up after their last snapshot"
            );
        } else {
            tracing::warn!(
                partitions = ?due.partitions,
                written = ?due.written,
                missing = ?due.missing,
                waited_ms,
                "revoked partitions given up; the last snapshots of `missing` were not complete \
                 in time: their next owners go on from their previous snapshots"
            );
        }
        crate::partitions::record_rebalance(due.since.elapsed(), false);
    }

    fn commit(&self, component: &ComponentContext, tpl: &TopicPartitionList, mode: CommitMode) {
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = self.consumer.commit(tpl, mode) {
            component.emit(ComponentErrorOccurred {
                error: &format!("cannot commit offsets: {e}"),
            });
        }
    }
}

impl BrokerSource for Member {
    type Position = Position;

    async fn next(
        &mut self,
        decoder: &mut MessageDecoder,
        cx: &ComponentContext,
    ) -> Next<Position> {
        let received = match &mut self.changelog {
            None => self.consumer.recv().await,
            Some(partitioned) => {
                // A deadline kept across calls: the loop calling `next` wakes for other
                // reasons (checkpoint barriers every 100 ms) and a fresh sleep each call
                // would never end on an idle partition, whose last snapshots would then
                // never be written.
                let due = partitioned.upkeep_at;
                tokio::select! {
                    m = self.consumer.recv() => m,
                    () = tokio::time::sleep_until(due) => {
                        partitioned.take_in_revocations();
                        partitioned.maintain(cx);
                        self.give_up_revoked(cx);
                        let Some(partitioned) = &mut self.changelog else {
                            return Next::Message(None);
                        };
                        // A revocation keeps the group's rebalance waiting: looked at
                        // often until it is carried out.
                        let every = if lock(&partitioned.revocations).any() {
                            REVOKING_UPKEEP
                        } else {
                            partitioned.interval / 4
                        };
                        partitioned.upkeep_at = tokio::time::Instant::now() + every;
                        return Next::Message(None);
                    }
                }
            }
        };
        match received {
            Ok(m) => {
                let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
                let origin = || format!("{}/{topic}/{partition}@{offset}", self.origin);
                let key = m.key().and_then(|k| std::str::from_utf8(k).ok());
                let payload = m.payload().unwrap_or_default();
                match &mut self.changelog {
                    Some(partitioned) => {
                        // A revocation deferred during this receive is cut before any
                        // further message is decoded; a partition being given up is not
                        // read any more (its next owner reads from the cut).
                        partitioned.take_in_revocations();
                        if lock(&partitioned.revocations).revoking(partition) {
                            return Next::Message(None);
                        }
                        let Some(epoch) = partitioned.epoch(partition, &mut self.commits) else {
                            // Fetched before a revocation took effect: its next owner
                            // reads it.
                            return Next::Message(None);
                        };
                        match partitioned.reads.admit(partition, offset, Instant::now()) {
                            Admit::Take => {}
                            Admit::Skip => return Next::Message(None),
                            Admit::Seek(next) => {
                                if let Err(e) = self.consumer.seek(
                                    topic,
                                    partition,
                                    Offset::Offset(next),
                                    Duration::from_secs(5),
                                ) {
                                    cx.emit(ComponentErrorOccurred {
                                        error: &format!(
                                            "cannot read {topic}/{partition} again from {next}: {e}"
                                        ),
                                    });
                                }
                                return Next::Message(None);
                            }
                        }
                        decoder.decode_at(cx, &origin, key, payload, (partition as i64, offset));
                        partitioned.reads.taken(partition, offset);
                        Next::Message(Some((topic.to_string(), partition, offset, epoch)))
                    }
                    None => {
                        decoder.decode(cx, &origin, key, payload);
                        Next::Message(Some((topic.to_string(), partition, offset, 0)))
                    }
                }
            }
            Err(e) => Next::Error(
                self.config
                    .connection()
                    .redact(&format!("{}: {e}", self.origin)),
            ),
        }
    }

    /// Commits what the sinks delivered; rewinds to what they did not, so it is read
    /// again.
    async fn settle(
        &mut self,
        cx: &ComponentContext,
        released: Released<Position>,
        draining: bool,
    ) {
        let mut released = released;
        if let Some(partitioned) = &mut self.changelog {
            // What was read under an earlier ownership of a partition is neither
            // committed nor read again here: the partition's owner reads it from its
            // snapshot's offset.
            let commits = &mut self.commits;
            let mut current = |(_, p, _, e): &Position| partitioned.epoch(*p, commits) == Some(*e);
            released.delivered.retain(&mut current);
            released.failed.retain(&mut current);
        }
        let failed = released.failed.len();
        let (mut tpl, seeks) = self.commits.settle(released);
        if let Some(partitioned) = &mut self.changelog {
            // A revoked partition's offsets are its new owner's to commit.
            let owned = partitioned.hub.owned();
            let mut kept = TopicPartitionList::new();
            for e in tpl.elements() {
                if owned.contains(&e.partition()) {
                    if let Offset::Offset(o) = e.offset() {
                        partitioned.hub.set_durable(e.partition(), o);
                    }
                    let _ = kept.add_partition_offset(e.topic(), e.partition(), e.offset());
                }
            }
            tpl = kept;
            partitioned.take_in_revocations();
            partitioned.maintain(cx);
        }
        let mode = if draining {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        self.commit(cx, &tpl, mode);
        self.give_up_revoked(cx);
        if failed > 0 {
            cx.emit(ComponentErrorOccurred {
                error: &format!("{failed} message(s) not delivered by a sink; reading them again"),
            });
        }
        if let Some(partitioned) = &mut self.changelog {
            for (_, p, o) in &seeks {
                // Read again on purpose (a sink failed them): let them through.
                partitioned.reads.rewind(*p, *o);
            }
        }
        for (t, p, o) in seeks {
            if let Err(e) = self
                .consumer
                .seek(&t, p, Offset::Offset(o), Duration::from_secs(5))
            {
                cx.emit(ComponentErrorOccurred {
                    error: &format!(
                        "cannot rewind {t}/{p} to {o}: {e}; they are read again after a restart"
                    ),
                });
            }
        }
    }

    fn finishing(&mut self, _cx: &ComponentContext) {
        if let Some(partitioned) = &mut self.changelog {
            partitioned.final_cuts();
        }
    }

    /// The final snapshots (with partition state), then a final synchronous commit of
    /// everything settled.
    async fn close(mut self, cx: &ComponentContext) {
        let timeout = Duration::from_millis(self.config.drain_timeout_ms);
        // Revocations still deferred are part of the final snapshots; from now on the
        // consumer's close serves revocations, which must be carried out at once.
        let deferred = self
            .changelog
            .as_ref()
            .map(|p| lock(&p.revocations).close())
            .unwrap_or_default();
        if let Some(partitioned) = &mut self.changelog {
            partitioned.write_final(cx, timeout).await;
        }
        let mut tpl = TopicPartitionList::new();
        for key in self.commits.next.keys() {
            if let Some(offset) = self.commits.committable(key) {
                let _ = tpl.add_partition_offset(&key.0, key.1, Offset::Offset(offset));
            }
        }
        self.commit(cx, &tpl, CommitMode::Sync);
        if !deferred.is_empty() {
            // The group waits for them before anything else (leaving included).
            self.give_up(
                cx,
                Due {
                    since: Instant::now(),
                    partitions: deferred,
                    written: Vec::new(),
                    missing: Vec::new(),
                },
            );
        }
        self.consumer.unsubscribe();
    }
}

impl KafkaSource {
    async fn run_async(self, cx: SourceContext) -> Result<(), ComponentError> {
        let decoder = MessageDecoder::new(
            &self.config.fields,
            self.schema.clone(),
            self.config.key_field.as_deref(),
            &self.config.batch,
        );
        let batch = self.config.batch.clone();
        let drain_timeout_ms = self.config.drain_timeout_ms;
        let decoder = if self.config.partition_state {
            decoder.with_position_fields(&self.config.fields, PARTITION_FIELD, OFFSET_FIELD)
        } else {
            decoder
        };
        let member = Member {
            origin: self.config.connection().origin(),
            consumer: self.consumer,
            commits: Commits::default(),
            config: self.config,
            changelog: self.changelog,
        };
        inbound::run(member, cx, decoder, &batch, drain_timeout_ms).await
    }
}

tidegauge_core::register_source!(KafkaSourceConfig);

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> KafkaSourceConfig {
        toml::from_str(&format!(
            "brokers = [\"127.0.0.1:9092\"]\ntopics = [\"in\"]\ngroup_id = \"g\"\npartition_state = true\nfields = {{ sensor_id = \"string\", value = \"float64\", kafka_partition = \"int64\", kafka_offset = \"int64\" }}\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn partition_state_refuses_an_eager_assignment_strategy() {
        assert!(config("").validate().is_ok());
        let cooperative =
            "options = { \"partition.assignment.strategy\" = \"cooperative-sticky\" }";
        assert!(config(cooperative).validate().is_ok());
        for eager in ["range", "roundrobin", "range,roundrobin"] {
            let errors = config(&format!(
                "options = {{ \"partition.assignment.strategy\" = \"{eager}\" }}"
            ))
            .validate()
            .unwrap_err();
            let shown: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            assert!(
                shown
                    .iter()
                    .any(|e| e.contains("partition.assignment.strategy")
                        && e.contains("cooperative-sticky")),
                "{shown:?}"
            );
        }
    }
}
