//! `kafka` source: a member of a Kafka consumer group. Offsets are committed only after
//! every sink has made the events of the messages below them durable, so a restart (or a
//! partition moving to another member) resumes without losing anything.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use arrow_schema::SchemaRef;
use indexmap::IndexMap;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use schemars::JsonSchema;
use serde::Deserialize;
use tidegauge_core::ack::{Finalizers, ack_channel};
use tidegauge_core::component::SendError;
use tidegauge_core::telemetry::ComponentErrorOccurred;
use tidegauge_core::{
    Batch, BoxFuture, BuildContext, BuildError, ComponentContext, ComponentError, ConfigError,
    Source, SourceConfig, SourceContext,
};

use crate::codec::{FieldMap, FieldType, default_fields, schema_for};
use crate::connectors::inbound::{AckTracker, MessageDecoder, Released, barrier_ticker};
use crate::secret::Secret;
use crate::sources::{BatchConfig, validate_fields};

/// Consumes Kafka topics as a member of a consumer group and decodes each message's
/// payload (a JSON object, or JSON Lines) into events.
///
/// Offsets are committed only once every sink has made the events durable
/// (at-least-once). Partitions are shared among every member of `group_id`; run several
/// tidegauge instances with the same group to spread the load.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap brokers, `host:port`.
    #[schemars(example = ["localhost:9092"])]
    pub brokers: Vec<String>,
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
    /// SASL user name (with `sasl_password`; mechanism PLAIN unless `options` say else).
    #[serde(default)]
    pub sasl_username: Option<String>,
    /// SASL password (use `${ENV_VAR}`); never logged or printed.
    #[serde(default)]
    pub sasl_password: Option<Secret>,
    /// Further librdkafka consumer properties (`session.timeout.ms`, `security.protocol`,
    /// ...). Secrets go in `sasl_password`, not here.
    #[serde(default)]
    pub options: IndexMap<String, String>,
    /// Fields to extract from each record and their types, in output order.
    #[serde(default = "default_fields")]
    pub fields: FieldMap,
    /// Fields that may be missing or null.
    #[serde(default)]
    pub optional_fields: Vec<String>,
    /// Batching of events.
    #[serde(default)]
    pub batch: BatchConfig,
    /// At shutdown, how long to wait for the sinks' acknowledgements before the last
    /// commit, in milliseconds.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
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

fn default_drain_timeout_ms() -> u64 {
    10_000
}

/// Properties tidegauge sets itself; `options` may not override them.
const RESERVED: [&str; 6] = [
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "sasl.password",
    "sasl.username",
];

/// Checks `options` (shared with the sink).
pub(crate) fn validate_options(
    options: &IndexMap<String, String>,
    reserved: &[&str],
    errors: &mut Vec<ConfigError>,
) {
    for key in options.keys() {
        if reserved.contains(&key.as_str()) {
            errors.push(ConfigError::new(
                format!("options.{key}"),
                "is set by tidegauge from the component's own settings",
            ));
        }
        if key.contains("password") || key.contains("secret") {
            errors.push(ConfigError::new(
                format!("options.{key}"),
                "secrets go in `sasl_password`, which is never printed",
            ));
        }
    }
}

/// A client configuration with brokers, SASL and the extra options.
pub(crate) fn client_config(
    brokers: &[String],
    sasl_username: Option<&String>,
    sasl_password: Option<&Secret>,
    options: &IndexMap<String, String>,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers.join(","));
    if let Some(user) = sasl_username {
        c.set("sasl.username", user);
        c.set(
            "sasl.password",
            sasl_password.map(|p| p.expose()).unwrap_or_default(),
        );
        if !options.contains_key("sasl.mechanism") {
            c.set("sasl.mechanism", "PLAIN");
        }
        if !options.contains_key("security.protocol") {
            c.set("security.protocol", "SASL_PLAINTEXT");
        }
    }
    // librdkafka logs through its own channel; keep it on warnings.
    c.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    for (k, v) in options {
        c.set(k, v);
    }
    c
}

impl SourceConfig for KafkaSourceConfig {
    const TYPE: &'static str = "kafka";

    fn validate(&self) -> Result<SchemaRef, Vec<ConfigError>> {
        let mut errors = Vec::new();
        if self.brokers.is_empty() || self.brokers.iter().any(|b| b.trim().is_empty()) {
            errors.push(ConfigError::new("brokers", "list at least one `host:port`"));
        }
        if self.topics.is_empty() {
            errors.push(ConfigError::new("topics", "list at least one topic"));
        }
        if self.group_id.trim().is_empty() {
            errors.push(ConfigError::new(
                "group_id",
                "expected a consumer group name",
            ));
        }
        validate_fields(&self.fields, &self.optional_fields, &mut errors);
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
        if self.sasl_password.is_some() && self.sasl_username.is_none() {
            errors.push(ConfigError::new(
                "sasl_password",
                "a password needs sasl_username",
            ));
        }
        validate_options(&self.options, &RESERVED, &mut errors);
        self.batch.validate(&mut errors);
        if errors.is_empty() {
            Ok(schema_for(&self.fields, &self.optional_fields))
        } else {
            Err(errors)
        }
    }

    async fn build(
        &self,
        schema: SchemaRef,
        _cx: BuildContext,
    ) -> Result<Box<dyn Source>, BuildError> {
        let mut c = client_config(
            &self.brokers,
            self.sasl_username.as_ref(),
            self.sasl_password.as_ref(),
            &self.options,
        );
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
        let secret = self.sasl_password.clone();
        let consumer: StreamConsumer = c.create().map_err(|e| {
            BuildError::new(redact(
                &format!("cannot create Kafka consumer: {e}"),
                secret.as_ref(),
            ))
        })?;
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(|e| {
            BuildError::new(format!(
                "cannot subscribe to {}: {e}",
                self.topics.join(", ")
            ))
        })?;
        Ok(Box::new(KafkaSource {
            config: self.clone(),
            consumer,
            schema,
        }))
    }
}

pub(crate) fn redact(text: &str, secret: Option<&Secret>) -> String {
    match secret {
        Some(s) => s.redact(text),
        None => text.to_string(),
    }
}

struct KafkaSource {
    config: KafkaSourceConfig,
    consumer: StreamConsumer,
    schema: SchemaRef,
}

/// A message's place: (topic, partition, offset).
type Position = (String, i32, i64);

/// Per partition, what may be committed. A batch a sink failed to deliver caps the
/// partition at its first offset until that offset is delivered on a later read.
#[derive(Default)]
struct Commits {
    next: BTreeMap<(String, i32), i64>,
    caps: HashMap<(String, i32), i64>,
}

impl Commits {
    /// Notes released positions; returns the offsets to commit now.
    fn settle(
        &mut self,
        released: Released<Position>,
    ) -> (TopicPartitionList, Vec<(String, i32, i64)>) {
        let mut seek = BTreeMap::new();
        for (t, p, o) in released.failed {
            let e = seek.entry((t.clone(), p)).or_insert(o);
            *e = (*e).min(o);
            let cap = self.caps.entry((t, p)).or_insert(o);
            *cap = (*cap).min(o);
        }
        let mut changed = BTreeMap::new();
        for (t, p, o) in released.delivered {
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

impl Source for KafkaSource {
    fn run(self: Box<Self>, cx: SourceContext) -> BoxFuture<'static, Result<(), ComponentError>> {
        Box::pin(self.run_async(cx))
    }
}

impl KafkaSource {
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

    fn apply(
        &self,
        component: &ComponentContext,
        commits: &mut Commits,
        released: Released<Position>,
        mode: CommitMode,
    ) {
        let failed = released.failed.len();
        let (tpl, seeks) = commits.settle(released);
        self.commit(component, &tpl, mode);
        if failed > 0 {
            component.emit(ComponentErrorOccurred {
                error: &format!("{failed} message(s) not delivered by a sink; reading them again"),
            });
        }
        for (t, p, o) in seeks {
            if let Err(e) = self
                .consumer
                .seek(&t, p, Offset::Offset(o), Duration::from_secs(5))
            {
                component.emit(ComponentErrorOccurred {
                    error: &format!(
                        "cannot rewind {t}/{p} to {o}: {e}; they are read again after a restart"
                    ),
                });
            }
        }
    }

    async fn run_async(self, cx: SourceContext) -> Result<(), ComponentError> {
        let SourceContext {
            component,
            out,
            shutdown,
            ..
        } = cx;
        let mut out = Some(out);
        let brokers = self.config.brokers.join(",");
        let mut decoder = MessageDecoder::new(
            &self.config.fields,
            self.schema.clone(),
            self.config.key_field.as_deref(),
            self.config.batch.rows,
        );
        let (ack_tx, mut acks) = ack_channel();
        let mut tracker: AckTracker<Position> = AckTracker::default();
        let mut commits = Commits::default();
        let mut held: Vec<Position> = Vec::new();
        let linger = Duration::from_millis(self.config.batch.linger_ms);
        let mut first_at: Option<Instant> = None;
        let mut barriers = barrier_ticker();

        let result: Result<(), ComponentError> = loop {
            let wait = match first_at {
                Some(t) => linger.saturating_sub(t.elapsed()),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                Some(ack) = acks.recv() => {
                    let released = tracker.ack(ack.id, ack.delivered);
                    self.apply(&component, &mut commits, released, CommitMode::Async);
                    continue;
                }
                msg = self.consumer.recv() => {
                    match msg {
                        Ok(m) => {
                            if first_at.is_none() {
                                first_at = Some(Instant::now());
                            }
                            let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
                            let origin = || format!("kafka://{brokers}/{topic}/{partition}@{offset}");
                            let key = m.key().and_then(|k| std::str::from_utf8(k).ok());
                            decoder.decode(&component, &origin, key, m.payload().unwrap_or_default());
                            held.push((topic.to_string(), partition, offset));
                            if !decoder.is_full() {
                                continue;
                            }
                        }
                        Err(e) => {
                            component.emit(ComponentErrorOccurred {
                                error: &redact(&format!("kafka://{brokers}: {e}"), self.config.sasl_password.as_ref()),
                            });
                            continue;
                        }
                    }
                }
                _ = barriers.tick() => {
                    if let Some(o) = out.as_mut() {
                        match o.serve_barriers().await {
                            Ok(()) => {}
                            Err(SendError::Closed) => break Ok(()),
                            Err(e) => break Err(e.into()),
                        }
                    }
                    continue;
                }
                _ = tokio::time::sleep(wait), if first_at.is_some() => {}
            }
            first_at = None;
            if let Some(batch) = self.take_batch(
                &mut decoder,
                &component,
                &mut held,
                &mut tracker,
                &ack_tx,
                &mut commits,
            ) && let Some(o) = out.as_mut()
            {
                match o.send(batch).await {
                    Ok(()) => {}
                    Err(SendError::Closed) => break Ok(()),
                    Err(e) => break Err(e.into()),
                }
            }
        };

        // Shutdown: send what is decoded, let downstream drain, commit what the sinks
        // acknowledged.
        if let Some(batch) = self.take_batch(
            &mut decoder,
            &component,
            &mut held,
            &mut tracker,
            &ack_tx,
            &mut commits,
        ) && let Some(o) = out.as_mut()
        {
            let _ = o.send(batch).await;
        }
        drop(out);
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.config.drain_timeout_ms);
        while tracker.in_flight() > 0 {
            match tokio::time::timeout_at(deadline, acks.recv()).await {
                Ok(Some(ack)) => {
                    let released = tracker.ack(ack.id, ack.delivered);
                    self.apply(&component, &mut commits, released, CommitMode::Sync);
                }
                _ => break,
            }
        }
        // A final synchronous commit of everything settled.
        let mut tpl = TopicPartitionList::new();
        for ((t, p), next) in &commits.next {
            let offset = commits
                .caps
                .get(&(t.clone(), *p))
                .map_or(*next, |c| (*c).min(*next));
            let _ = tpl.add_partition_offset(t, *p, Offset::Offset(offset));
        }
        self.commit(&component, &tpl, CommitMode::Sync);
        self.consumer.unsubscribe();
        result
    }

    fn take_batch(
        &self,
        decoder: &mut MessageDecoder,
        component: &ComponentContext,
        held: &mut Vec<Position>,
        tracker: &mut AckTracker<Position>,
        ack_tx: &tidegauge_core::ack::AckSender,
        commits: &mut Commits,
    ) -> Option<Batch> {
        let positions = std::mem::take(held);
        if positions.is_empty() {
            return None;
        }
        let id = tracker.push(positions);
        match decoder.take(component) {
            Some(data) => Some(Batch::with_finalizers(
                data,
                Finalizers::one(ack_tx.token(id)),
            )),
            None => {
                // Every message was dead-lettered: settled.
                let released = tracker.ack(id, true);
                self.apply(component, commits, released, CommitMode::Async);
                None
            }
        }
    }
}

tidegauge_core::register_source!(KafkaSourceConfig);
