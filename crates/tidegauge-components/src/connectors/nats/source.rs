//! `nats` source: a durable JetStream pull consumer. Each message is acknowledged only
//! after every sink has made its events durable; messages a sink failed to deliver are
//! negatively acknowledged and redelivered.

use std::time::Duration;

use arrow_schema::SchemaRef;
use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures_util::StreamExt;
use tidegauge_core::component::source_fn;
use tidegauge_core::resilience::RetryPolicy;
use tidegauge_core::telemetry::ComponentErrorOccurred;
use tidegauge_core::{
    BuildContext, BuildError, ComponentContext, ComponentError, ConfigError, Source, SourceConfig,
    SourceContext,
};

use super::nats_connection;
use crate::connectors::inbound::{
    self, BrokerSource, KeyFromTopic, MessageDecoder, Next, Released,
};
use crate::settings::{config, decoded_records};

config! {
    [nats_connection, decoded_records]
    /// Reads a NATS JetStream stream through a durable consumer and decodes each message's
    /// payload (a JSON object, or JSON Lines) into events.
    ///
    /// The consumer (`durable`) remembers what was acknowledged: a restart resumes after the
    /// last message every sink made durable. Messages a sink failed to deliver are
    /// redelivered. The stream is created when missing if `subjects` are given.
    pub struct NatsSourceConfig {
        /// JetStream stream to read.
        #[schemars(example = &"READINGS")]
        pub stream: String,
        /// Subjects of the stream, used to create it when it does not exist yet; unset: the
        /// stream must exist.
        #[serde(default)]
        pub subjects: Vec<String>,
        /// Where the stream this source creates keeps its messages: `file` (survives a
        /// server restart) or `memory` (does not; spares the server a disk write per
        /// message). An existing stream is used as it is.
        #[serde(default)]
        pub stream_storage: super::StreamStorage,
        /// Only messages whose subject matches this filter (`sensors.*.temp`).
        #[serde(default)]
        pub filter_subject: Option<String>,
        /// Durable consumer name. Unset: `tidegauge-<component id>`.
        #[serde(default)]
        pub durable: Option<String>,
        /// Fill a declared string field from a subject token (`.`-separated), e.g.
        /// `{ field = "sensor_id", level = 1 }` takes `pump-7` from `sensors.pump-7.temp`.
        #[serde(default)]
        pub key_from_subject: Option<KeyFromTopic>,
        /// How long the server waits for an acknowledgement before redelivering, in ms.
        /// Must cover the time a batch takes to reach every sink.
        #[serde(default = "default_ack_wait_ms")]
        #[schemars(range(min = 1000))]
        pub ack_wait_ms: u64,
        /// Most messages delivered but not yet acknowledged.
        #[serde(default = "default_max_ack_pending")]
        #[schemars(range(min = 1))]
        pub max_ack_pending: i64,
        /// At shutdown, how long to wait for the sinks' acknowledgements, in milliseconds.
        #[serde(default = "inbound::default_drain_timeout_ms")]
        pub drain_timeout_ms: u64,
        /// Connection attempts at start (backoff with full jitter, shared budget); once
        /// running, the client reconnects without end, waiting as this policy's backoff
        /// says.
        #[serde(default)]
        pub retry: RetryPolicy,
    }
}

fn default_ack_wait_ms() -> u64 {
    30_000
}
fn default_max_ack_pending() -> i64 {
    50_000
}

impl SourceConfig for NatsSourceConfig {
    const TYPE: &'static str = "nats";

    fn validate(&self) -> Result<SchemaRef, Vec<ConfigError>> {
        let mut errors = Vec::new();
        self.connection().validate(&mut errors);
        if self.stream.trim().is_empty() || self.stream.contains(['.', '*', '>', ' ']) {
            errors.push(ConfigError::new(
                "stream",
                "expected a stream name (no `.`, `*`, `>` or spaces)",
            ));
        }
        if let Some(k) = &self.key_from_subject {
            k.validate("key_from_subject", &self.fields, &mut errors);
        }
        errors.extend(self.retry.validate("retry"));
        self.decoded_schema(errors)
    }

    async fn build(
        &self,
        schema: SchemaRef,
        cx: BuildContext,
    ) -> Result<Box<dyn Source>, BuildError> {
        let client = self.connection().connect(&self.retry).await?;
        let js = jetstream::new(client.clone());
        let stream = if self.subjects.is_empty() {
            js.get_stream(&self.stream).await.map_err(|e| {
                BuildError::new(format!("cannot open stream `{}`: {e}", self.stream))
            })?
        } else {
            js.get_or_create_stream(jetstream::stream::Config {
                name: self.stream.clone(),
                subjects: self.subjects.clone(),
                storage: self.stream_storage.jetstream(),
                ..Default::default()
            })
            .await
            .map_err(|e| BuildError::new(format!("cannot create stream `{}`: {e}", self.stream)))?
        };
        let durable = self
            .durable
            .clone()
            .unwrap_or_else(|| format!("tidegauge-{}", cx.component.id()));
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                &durable,
                pull::Config {
                    durable_name: Some(durable.clone()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_millis(self.ack_wait_ms),
                    max_ack_pending: self.max_ack_pending,
                    filter_subject: self.filter_subject.clone().unwrap_or_default(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| {
                BuildError::new(format!(
                    "cannot create consumer `{durable}` on stream `{}`: {e}",
                    self.stream
                ))
            })?;
        let source = NatsSource {
            config: self.clone(),
            client,
            consumer,
            schema,
        };
        Ok(source_fn(move |cx| source.run_async(cx)))
    }
}

struct NatsSource {
    config: NatsSourceConfig,
    client: async_nats::Client,
    consumer: jetstream::consumer::PullConsumer,
    schema: SchemaRef,
}

impl NatsSource {
    async fn run_async(self, cx: SourceContext) -> Result<(), ComponentError> {
        let messages =
            self.consumer.messages().await.map_err(|e| {
                ComponentError::new(format!("stream `{}`: {e}", self.config.stream))
            })?;
        let key_field = self
            .config
            .key_from_subject
            .as_ref()
            .map(|k| k.field.as_str());
        let decoder = MessageDecoder::new(
            &self.config.fields,
            self.schema.clone(),
            key_field,
            &self.config.batch,
        );
        let consumer = Consumer {
            origin: self.config.connection().origin(),
            stream: self.config.stream.clone(),
            key_from_subject: self.config.key_from_subject.clone(),
            client: self.client,
            messages,
        };
        inbound::run(
            consumer,
            cx,
            decoder,
            &self.config.batch,
            self.config.drain_timeout_ms,
        )
        .await
    }
}

/// The durable consumer as the shared broker loop drives it.
struct Consumer {
    origin: String,
    stream: String,
    key_from_subject: Option<KeyFromTopic>,
    client: async_nats::Client,
    messages: jetstream::consumer::pull::Stream,
}

impl BrokerSource for Consumer {
    type Position = jetstream::Message;

    async fn next(
        &mut self,
        decoder: &mut MessageDecoder,
        cx: &ComponentContext,
    ) -> Next<jetstream::Message> {
        let m = match self.messages.next().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Next::Error(format!("{}: {e}", self.origin)),
            None => return Next::End,
        };
        let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
        let subject = m.subject.as_str();
        let origin = || format!("{}/{}/{subject}#{seq}", self.origin, self.stream);
        decoder.decode_picked(
            cx,
            &origin,
            self.key_from_subject.as_ref().map(|k| k.pick(subject, '.')),
            "subject has no token to fill the key field",
            &m.payload,
        );
        Next::Message(Some(m))
    }

    /// Acknowledges what the sinks delivered, asks for redelivery of what they did not.
    async fn settle(
        &mut self,
        cx: &ComponentContext,
        released: Released<jetstream::Message>,
        _draining: bool,
    ) {
        for m in &released.delivered {
            if let Err(e) = m.ack().await {
                cx.emit(ComponentErrorOccurred {
                    error: &format!("cannot acknowledge message on {}: {e}", m.subject),
                });
            }
        }
        if !released.failed.is_empty() {
            cx.emit(ComponentErrorOccurred {
                error: &format!(
                    "{} message(s) not delivered by a sink; asking for redelivery",
                    released.failed.len()
                ),
            });
        }
        for m in &released.failed {
            let _ = m.ack_with(AckKind::Nak(None)).await;
        }
    }

    /// Makes sure the acknowledgements left before the connection closes.
    async fn close(self, _cx: &ComponentContext) {
        let _ = self.client.flush().await;
    }
}

tidegauge_core::register_source!(NatsSourceConfig);
