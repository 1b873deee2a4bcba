//! `kafka` source: a member of a Kafka consumer group. Offsets are committed only after
//! every sink has made the events of the messages below them durable, so a restart (or a
//! partition moving to another member) resumes without losing anything.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use arrow_schema::SchemaRef;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use schemars::JsonSchema;
use serde::Deserialize;
use tidegauge_core::component::source_fn;
use tidegauge_core::telemetry::ComponentErrorOccurred;
use tidegauge_core::{
    BuildContext, BuildError, ComponentContext, ComponentError, ConfigError, Source, SourceConfig,
    SourceContext,
};

use super::kafka_connection;
use crate::codec::FieldType;
use crate::connectors::inbound::{self, BrokerSource, MessageDecoder, Next, Released};
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
    }
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
        let consumer: StreamConsumer = c.create().map_err(|e| {
            BuildError::new(
                self.connection()
                    .redact(&format!("cannot create Kafka consumer: {e}")),
            )
        })?;
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
        };
        Ok(source_fn(move |cx| source.run_async(cx)))
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

/// The group member as the shared broker loop drives it.
struct Member {
    origin: String,
    config: KafkaSourceConfig,
    consumer: StreamConsumer,
    commits: Commits,
}

impl Member {
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
        match self.consumer.recv().await {
            Ok(m) => {
                let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
                let origin = || format!("{}/{topic}/{partition}@{offset}", self.origin);
                let key = m.key().and_then(|k| std::str::from_utf8(k).ok());
                decoder.decode(cx, &origin, key, m.payload().unwrap_or_default());
                Next::Message(Some((topic.to_string(), partition, offset)))
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
        let failed = released.failed.len();
        let (tpl, seeks) = self.commits.settle(released);
        let mode = if draining {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        self.commit(cx, &tpl, mode);
        if failed > 0 {
            cx.emit(ComponentErrorOccurred {
                error: &format!("{failed} message(s) not delivered by a sink; reading them again"),
            });
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

    /// A final synchronous commit of everything settled.
    async fn close(self, cx: &ComponentContext) {
        let mut tpl = TopicPartitionList::new();
        for ((t, p), next) in &self.commits.next {
            let offset = self
                .commits
                .caps
                .get(&(t.clone(), *p))
                .map_or(*next, |c| (*c).min(*next));
            let _ = tpl.add_partition_offset(t, *p, Offset::Offset(offset));
        }
        self.commit(cx, &tpl, CommitMode::Sync);
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
        let member = Member {
            origin: self.config.connection().origin(),
            consumer: self.consumer,
            commits: Commits::default(),
            config: self.config,
        };
        inbound::run(member, cx, decoder, &batch, drain_timeout_ms).await
    }
}

tidegauge_core::register_source!(KafkaSourceConfig);
