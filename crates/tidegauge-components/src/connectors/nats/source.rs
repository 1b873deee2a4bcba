//! `nats` source: a durable JetStream pull consumer. Each message is acknowledged only
//! after every sink has made its events durable; messages a sink failed to deliver are
//! negatively acknowledged and redelivered.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use arrow_schema::SchemaRef;
use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures_util::StreamExt;
use schemars::JsonSchema;
use serde::Deserialize;
use tidegauge_core::ack::{Finalizers, ack_channel};
use tidegauge_core::component::SendError;
use tidegauge_core::resilience::{Resilience, RetryPolicy};
use tidegauge_core::telemetry::ComponentErrorOccurred;
use tidegauge_core::{
    Batch, BoxFuture, BuildContext, BuildError, ComponentContext, ComponentError, ConfigError,
    Source, SourceConfig, SourceContext,
};

use crate::codec::{FieldMap, default_fields, schema_for};
use crate::connectors::inbound::{
    AckTracker, KeyFromTopic, MessageDecoder, Released, barrier_ticker,
};
use crate::secret::Secret;
use crate::sources::{BatchConfig, validate_fields};

/// Reads a NATS JetStream stream through a durable consumer and decodes each message's
/// payload (a JSON object, or JSON Lines) into events.
///
/// The consumer (`durable`) remembers what was acknowledged: a restart resumes after the
/// last message every sink made durable. Messages a sink failed to deliver are
/// redelivered. The stream is created when missing if `subjects` are given.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsSourceConfig {
    /// Server URLs (`nats://host:4222`, or `tls://...`).
    #[schemars(example = ["nats://localhost:4222"])]
    pub servers: Vec<String>,
    /// JetStream stream to read.
    #[schemars(example = &"READINGS")]
    pub stream: String,
    /// Subjects of the stream, used to create it when it does not exist yet; unset: the
    /// stream must exist.
    #[serde(default)]
    pub subjects: Vec<String>,
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
    /// How long the server waits for an acknowledgement before redelivering, in ms. Must
    /// cover the time a batch takes to reach every sink.
    #[serde(default = "default_ack_wait_ms")]
    #[schemars(range(min = 1000))]
    pub ack_wait_ms: u64,
    /// Most messages delivered but not yet acknowledged.
    #[serde(default = "default_max_ack_pending")]
    #[schemars(range(min = 1))]
    pub max_ack_pending: i64,
    /// User name (with `password`).
    #[serde(default)]
    pub username: Option<String>,
    /// Password (use `${ENV_VAR}`); never logged or printed.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Authentication token instead of user and password; never logged or printed.
    #[serde(default)]
    pub token: Option<Secret>,
    /// PEM file of the certificate authorities for TLS; setting it requires TLS.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Fields to extract from each record and their types, in output order.
    #[serde(default = "default_fields")]
    pub fields: FieldMap,
    /// Fields that may be missing or null.
    #[serde(default)]
    pub optional_fields: Vec<String>,
    /// Batching of events.
    #[serde(default)]
    pub batch: BatchConfig,
    /// At shutdown, how long to wait for the sinks' acknowledgements, in milliseconds.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// Connection attempts at start (backoff with full jitter, shared budget); once
    /// running, the client reconnects without end, waiting as this policy's backoff says.
    #[serde(default)]
    pub retry: RetryPolicy,
}

fn default_ack_wait_ms() -> u64 {
    30_000
}
fn default_max_ack_pending() -> i64 {
    50_000
}
fn default_drain_timeout_ms() -> u64 {
    10_000
}

/// Checks the connection settings both NATS components share.
pub(crate) fn validate_connection(
    servers: &[String],
    username: Option<&String>,
    password: Option<&Secret>,
    token: Option<&Secret>,
    errors: &mut Vec<ConfigError>,
) {
    if servers.is_empty() || servers.iter().any(|s| s.trim().is_empty()) {
        errors.push(ConfigError::new("servers", "list at least one server URL"));
    }
    if username.is_some() != password.is_some() {
        errors.push(ConfigError::new(
            "password",
            "give both username and password, or neither",
        ));
    }
    if token.is_some() && username.is_some() {
        errors.push(ConfigError::new(
            "token",
            "use a token or a username and password, not both",
        ));
    }
}

/// Connects, with credentials and TLS as configured, trying as `retry` allows through
/// the shared retry layer. Reconnections of the running client wait as `retry`'s backoff
/// says (full jitter), without end. Errors never show secrets.
pub(crate) async fn connect(
    servers: &[String],
    username: Option<&String>,
    password: Option<&Secret>,
    token: Option<&Secret>,
    tls_ca_file: Option<&PathBuf>,
    retry: &RetryPolicy,
) -> Result<async_nats::Client, BuildError> {
    let addrs: Vec<async_nats::ServerAddr> = servers
        .iter()
        .map(|s| {
            s.parse()
                .map_err(|e| BuildError::new(format!("servers: `{s}`: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let options = || {
        let backoff = retry.clone();
        let mut o = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(10))
            .max_reconnects(None)
            .reconnect_delay_callback(move |attempts| {
                backoff.backoff(u32::try_from(attempts).unwrap_or(u32::MAX))
            });
        if let (Some(u), Some(p)) = (username, password) {
            o = o.user_and_password(u.clone(), p.expose().to_string());
        }
        if let Some(t) = token {
            o = o.token(t.expose().to_string());
        }
        if let Some(ca) = tls_ca_file {
            o = o.add_root_certificates(ca.clone()).require_tls(true);
        }
        o
    };
    let resilience = Resilience::new(retry.clone());
    let addrs = &addrs;
    let options = &options;
    resilience
        .call(
            None,
            move |_| async move { options().connect(addrs.clone()).await },
            |e| {
                !matches!(
                    e.kind(),
                    async_nats::ConnectErrorKind::Authentication
                        | async_nats::ConnectErrorKind::AuthorizationViolation
                        | async_nats::ConnectErrorKind::Tls
                )
            },
            |_| {},
        )
        .await
        .map_err(|e| {
            let mut text = format!("cannot connect to {}: {e}", servers.join(", "));
            for s in [password, token].into_iter().flatten() {
                text = s.redact(&text);
            }
            BuildError::new(text)
        })
}

impl SourceConfig for NatsSourceConfig {
    const TYPE: &'static str = "nats";

    fn validate(&self) -> Result<SchemaRef, Vec<ConfigError>> {
        let mut errors = Vec::new();
        validate_connection(
            &self.servers,
            self.username.as_ref(),
            self.password.as_ref(),
            self.token.as_ref(),
            &mut errors,
        );
        if self.stream.trim().is_empty() || self.stream.contains(['.', '*', '>', ' ']) {
            errors.push(ConfigError::new(
                "stream",
                "expected a stream name (no `.`, `*`, `>` or spaces)",
            ));
        }
        if self.ack_wait_ms < 1000 {
            errors.push(ConfigError::new("ack_wait_ms", "expected at least 1000"));
        }
        if self.max_ack_pending < 1 {
            errors.push(ConfigError::new("max_ack_pending", "expected at least 1"));
        }
        validate_fields(&self.fields, &self.optional_fields, &mut errors);
        if let Some(k) = &self.key_from_subject {
            k.validate("key_from_subject", &self.fields, &mut errors);
        }
        self.batch.validate(&mut errors);
        errors.extend(self.retry.validate("retry"));
        if errors.is_empty() {
            Ok(schema_for(&self.fields, &self.optional_fields))
        } else {
            Err(errors)
        }
    }

    async fn build(
        &self,
        schema: SchemaRef,
        cx: BuildContext,
    ) -> Result<Box<dyn Source>, BuildError> {
        let client = connect(
            &self.servers,
            self.username.as_ref(),
            self.password.as_ref(),
            self.token.as_ref(),
            self.tls_ca_file.as_ref(),
            &self.retry,
        )
        .await?;
        let js = jetstream::new(client.clone());
        let stream = if self.subjects.is_empty() {
            js.get_stream(&self.stream).await.map_err(|e| {
                BuildError::new(format!("cannot open stream `{}`: {e}", self.stream))
            })?
        } else {
            js.get_or_create_stream(jetstream::stream::Config {
                name: self.stream.clone(),
                subjects: self.subjects.clone(),
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
        Ok(Box::new(NatsSource {
            config: self.clone(),
            client,
            consumer,
            schema,
        }))
    }
}

struct NatsSource {
    config: NatsSourceConfig,
    client: async_nats::Client,
    consumer: jetstream::consumer::PullConsumer,
    schema: SchemaRef,
}

impl Source for NatsSource {
    fn run(self: Box<Self>, cx: SourceContext) -> BoxFuture<'static, Result<(), ComponentError>> {
        Box::pin(self.run_async(cx))
    }
}

/// Acknowledges what the sinks delivered, asks for redelivery of what they did not.
async fn settle(component: &ComponentContext, released: Released<jetstream::Message>) {
    for m in &released.delivered {
        if let Err(e) = m.ack().await {
            component.emit(ComponentErrorOccurred {
                error: &format!("cannot acknowledge message on {}: {e}", m.subject),
            });
        }
    }
    if !released.failed.is_empty() {
        component.emit(ComponentErrorOccurred {
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

impl NatsSource {
    async fn run_async(self, cx: SourceContext) -> Result<(), ComponentError> {
        let SourceContext {
            component,
            out,
            shutdown,
            ..
        } = cx;
        let mut out = Some(out);
        let mut messages =
            self.consumer.messages().await.map_err(|e| {
                ComponentError::new(format!("stream `{}`: {e}", self.config.stream))
            })?;
        let servers = self.config.servers.join(",");
        let key_field = self
            .config
            .key_from_subject
            .as_ref()
            .map(|k| k.field.as_str());
        let mut decoder = MessageDecoder::new(
            &self.config.fields,
            self.schema.clone(),
            key_field,
            self.config.batch.rows,
        );
        let (ack_tx, mut acks) = ack_channel();
        let mut tracker: AckTracker<jetstream::Message> = AckTracker::default();
        let mut held: Vec<jetstream::Message> = Vec::new();
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
                    settle(&component, tracker.ack(ack.id, ack.delivered)).await;
                    continue;
                }
                next = messages.next() => match next {
                    Some(Ok(m)) => {
                        if first_at.is_none() {
                            first_at = Some(Instant::now());
                        }
                        let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
                        let subject = m.subject.to_string();
                        let origin = || format!("nats://{servers}/{}/{subject}#{seq}", self.config.stream);
                        match self.config.key_from_subject.as_ref().map(|k| k.pick(&subject, '.')) {
                            Some(None) => component.dead_letter(&origin(), "subject has no token to fill the key field", &m.payload),
                            Some(Some(k)) => { decoder.decode(&component, &origin, Some(k), &m.payload); }
                            None => { decoder.decode(&component, &origin, None, &m.payload); }
                        }
                        held.push(m);
                        if !decoder.is_full() {
                            continue;
                        }
                    }
                    Some(Err(e)) => {
                        component.emit(ComponentErrorOccurred {
                            error: &format!("nats://{servers}: {e}"),
                        });
                        continue;
                    }
                    None => break Ok(()),
                },
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
            if let Some(batch) =
                take_batch(&mut decoder, &component, &mut held, &mut tracker, &ack_tx).await
                && let Some(o) = out.as_mut()
            {
                match o.send(batch).await {
                    Ok(()) => {}
                    Err(SendError::Closed) => break Ok(()),
                    Err(e) => break Err(e.into()),
                }
            }
        };

        if let Some(batch) =
            take_batch(&mut decoder, &component, &mut held, &mut tracker, &ack_tx).await
            && let Some(o) = out.as_mut()
        {
            let _ = o.send(batch).await;
        }
        drop(out);
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.config.drain_timeout_ms);
        while tracker.in_flight() > 0 {
            match tokio::time::timeout_at(deadline, acks.recv()).await {
                Ok(Some(ack)) => settle(&component, tracker.ack(ack.id, ack.delivered)).await,
                _ => break,
            }
        }
        // Make sure the acknowledgements left before the connection closes.
        let _ = self.client.flush().await;
        result
    }
}

async fn take_batch(
    decoder: &mut MessageDecoder,
    component: &ComponentContext,
    held: &mut Vec<jetstream::Message>,
    tracker: &mut AckTracker<jetstream::Message>,
    ack_tx: &tidegauge_core::ack::AckSender,
) -> Option<Batch> {
    let messages = std::mem::take(held);
    if messages.is_empty() {
        return None;
    }
    let id = tracker.push(messages);
    match decoder.take(component) {
        Some(data) => Some(Batch::with_finalizers(
            data,
            Finalizers::one(ack_tx.token(id)),
        )),
        None => {
            // Every message was dead-lettered: settled.
            settle(component, tracker.ack(id, true)).await;
            None
        }
    }
}

tidegauge_core::register_source!(NatsSourceConfig);
