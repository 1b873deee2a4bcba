//! `mqtt` source: subscribes to MQTT topics (wildcards allowed) and decodes each message's
//! JSON payload into events. With `qos = 1` a message is acknowledged to the broker only
//! after every sink has made it durable; unacknowledged messages are redelivered by the
//! broker when the (persistent) session resumes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use arrow_schema::SchemaRef;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, Publish, QoS};
use schemars::JsonSchema;
use serde::Deserialize;
use tidegauge_core::ack::{AckReceiver, Finalizers, ack_channel};
use tidegauge_core::component::SendError;
use tidegauge_core::resilience::{Resilience, RetryError, RetryPolicy};
use tidegauge_core::telemetry::ComponentErrorOccurred;
use tidegauge_core::{
    Batch, BoxFuture, BuildContext, BuildError, ComponentContext, ComponentError, ConfigError,
    Source, SourceConfig, SourceContext,
};
use tokio::sync::mpsc;

use crate::codec::{FieldMap, default_fields, schema_for};
use crate::connectors::inbound::{AckTracker, KeyFromTopic, MessageDecoder, barrier_ticker};
use crate::secret::Secret;
use crate::sources::{BatchConfig, validate_fields};

/// Subscribes to MQTT topics and decodes each message's payload (a JSON object, or JSON
/// Lines) into events.
///
/// With `qos = 1` and `clean_session = false` delivery is at-least-once end to end: the
/// broker hears a message's acknowledgement only once every sink has made it durable, and
/// redelivers unacknowledged messages when the session resumes. The broker's in-flight
/// window (mosquitto: `max_inflight_messages`, default 20) bounds how many messages are
/// on their way before the sinks acknowledge: raise it for throughput. Payloads that
/// cannot be decoded are dead-lettered with topic and broker.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttSourceConfig {
    /// Broker host name or address.
    #[schemars(example = &"localhost")]
    pub host: String,
    /// Broker port (1883 plain, 8883 TLS by convention).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Topic filters to subscribe to; `+` matches one level, `#` the rest.
    #[schemars(example = ["plant/+/+/temp"])]
    pub topics: Vec<String>,
    /// Quality of service: 0 (at most once) or 1 (at least once, acknowledged after the
    /// sinks).
    #[serde(default = "default_qos")]
    #[schemars(range(min = 0, max = 1))]
    pub qos: u8,
    /// Client identifier; the broker keeps the session (subscriptions, unacknowledged
    /// messages) under it. Unset: `tidegauge-<component id>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Start a fresh session on connect (forgets messages not yet acknowledged).
    #[serde(default)]
    pub clean_session: bool,
    /// Fill a declared string field from a topic level instead of the payload, e.g.
    /// `{ field = "sensor_id", level = 2 }` takes `pump-7` from `plant/3/pump-7/temp`.
    #[serde(default)]
    pub key_from_topic: Option<KeyFromTopic>,
    /// User name, if the broker requires one.
    #[serde(default)]
    pub username: Option<String>,
    /// Password (use `${ENV_VAR}`); never logged or printed.
    #[serde(default)]
    pub password: Option<Secret>,
    /// TLS settings; unset: plain TCP.
    #[serde(default)]
    pub tls: Option<MqttTls>,
    /// Keep-alive interval in seconds.
    #[serde(default = "default_keep_alive_secs")]
    #[schemars(range(min = 5))]
    pub keep_alive_secs: u64,
    /// Largest accepted message in bytes.
    #[serde(default = "default_max_packet_bytes")]
    #[schemars(range(min = 1))]
    pub max_packet_bytes: usize,
    /// Fields to extract from each record and their types, in output order.
    #[serde(default = "default_fields")]
    pub fields: FieldMap,
    /// Fields that may be missing or null.
    #[serde(default)]
    pub optional_fields: Vec<String>,
    /// Batching of events.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Reconnection after a lost connection: attempts and backoff with full jitter
    /// (default 30 attempts, waits up to 10 s); when they are spent the source fails.
    #[serde(default = "default_reconnect")]
    pub retry: RetryPolicy,
    /// At shutdown, how long to wait for the sinks' acknowledgements of messages already
    /// sent on, in milliseconds, before disconnecting (unacknowledged ones are redelivered
    /// next time).
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
}

/// TLS to the broker.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttTls {
    /// PEM file with the certificate authorities that sign the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM client certificate, for brokers that require client authentication.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
}

fn default_port() -> u16 {
    1883
}
fn default_qos() -> u8 {
    1
}
fn default_keep_alive_secs() -> u64 {
    30
}
fn default_max_packet_bytes() -> usize {
    1 << 20
}
fn default_drain_timeout_ms() -> u64 {
    10_000
}

/// Checks the settings both MQTT components share.
pub(crate) fn validate_connection(
    host: &str,
    qos: u8,
    keep_alive_secs: u64,
    tls: Option<&MqttTls>,
    username: Option<&String>,
    password: Option<&Secret>,
    errors: &mut Vec<ConfigError>,
) {
    if host.trim().is_empty() {
        errors.push(ConfigError::new("host", "expected a host name or address"));
    }
    if qos > 1 {
        errors.push(ConfigError::new("qos", "expected 0 or 1"));
    }
    if keep_alive_secs < 5 {
        errors.push(ConfigError::new("keep_alive_secs", "expected at least 5"));
    }
    if let Some(tls) = tls
        && tls.client_cert_file.is_some() != tls.client_key_file.is_some()
    {
        errors.push(ConfigError::new(
            "tls",
            "give both client_cert_file and client_key_file, or neither",
        ));
    }
    if password.is_some() && username.is_none() {
        errors.push(ConfigError::new("password", "a password needs a username"));
    }
}

/// Client options for both MQTT components.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mqtt_options(
    client_id: String,
    host: &str,
    port: u16,
    keep_alive_secs: u64,
    max_packet_bytes: usize,
    username: Option<&String>,
    password: Option<&Secret>,
    tls: Option<&MqttTls>,
) -> Result<MqttOptions, BuildError> {
    let mut o = MqttOptions::new(client_id, host, port);
    o.set_keep_alive(Duration::from_secs(keep_alive_secs));
    o.set_max_packet_size(max_packet_bytes, max_packet_bytes);
    if let Some(user) = username {
        o.set_credentials(
            user.clone(),
            password.map(|p| p.expose().to_string()).unwrap_or_default(),
        );
    }
    if let Some(tls) = tls {
        crate::tls::ensure_crypto_provider();
        let read = |p: &PathBuf| {
            std::fs::read(p)
                .map_err(|e| BuildError::new(format!("tls: cannot read {}: {e}", p.display())))
        };
        let ca = read(&tls.ca_file)?;
        let client_auth = match (&tls.client_cert_file, &tls.client_key_file) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        o.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        }));
    }
    Ok(o)
}

/// Describes an MQTT connection error without credentials.
pub(crate) fn describe_error(e: &rumqttc::ConnectionError, password: Option<&Secret>) -> String {
    let text = match e {
        rumqttc::ConnectionError::ConnectionRefused(code) => {
            format!("connection refused by the broker: {code:?}")
        }
        other => other.to_string(),
    };
    match password {
        Some(p) => p.redact(&text),
        None => text,
    }
}

impl SourceConfig for MqttSourceConfig {
    const TYPE: &'static str = "mqtt";

    fn validate(&self) -> Result<SchemaRef, Vec<ConfigError>> {
        let mut errors = Vec::new();
        validate_connection(
            &self.host,
            self.qos,
            self.keep_alive_secs,
            self.tls.as_ref(),
            self.username.as_ref(),
            self.password.as_ref(),
            &mut errors,
        );
        if self.topics.is_empty() {
            errors.push(ConfigError::new("topics", "list at least one topic filter"));
        }
        for (i, t) in self.topics.iter().enumerate() {
            if !rumqttc::valid_filter(t) {
                errors.push(ConfigError::new(
                    format!("topics[{i}]"),
                    format!("`{t}` is not a valid topic filter (`+` and `#` must fill a whole level; `#` only last)"),
                ));
            }
        }
        validate_fields(&self.fields, &self.optional_fields, &mut errors);
        if let Some(k) = &self.key_from_topic {
            k.validate("key_from_topic", &self.fields, &mut errors);
        }
        if self.max_packet_bytes == 0 {
            errors.push(ConfigError::new(
                "max_packet_bytes",
                "expected a positive integer",
            ));
        }
        errors.extend(self.retry.validate("retry"));
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
        cx: BuildContext,
    ) -> Result<Box<dyn Source>, BuildError> {
        let client_id = self
            .client_id
            .clone()
            .unwrap_or_else(|| format!("tidegauge-{}", cx.component.id()));
        let mut options = mqtt_options(
            client_id,
            &self.host,
            self.port,
            self.keep_alive_secs,
            self.max_packet_bytes,
            self.username.as_ref(),
            self.password.as_ref(),
            self.tls.as_ref(),
        )?;
        options.set_clean_session(self.clean_session);
        options.set_manual_acks(self.qos == 1);
        options.set_inflight(u16::MAX);
        Ok(Box::new(MqttSource {
            config: self.clone(),
            options,
            schema,
        }))
    }
}

struct MqttSource {
    config: MqttSourceConfig,
    options: MqttOptions,
    schema: SchemaRef,
}

/// What the connection task passes on.
enum Inbound {
    Message(Publish),
    /// The connection failed (it is being retried).
    Error(String),
    /// The connection could not be re-established: the source fails.
    GaveUp(String),
}

/// Polls the event loop, resubscribing on every (re)connection, until `stop`. A lost
/// connection is re-established through the shared retry layer; when its attempts are
/// spent the source is told and stops.
async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    topics: Vec<(String, QoS)>,
    resilience: Resilience,
    password: Option<Secret>,
    tx: mpsc::Sender<Inbound>,
) {
    loop {
        let event = match eventloop.poll().await {
            Ok(event) => event,
            Err(rumqttc::ConnectionError::RequestsDone) => return,
            Err(e) => {
                let text = describe_error(&e, password.as_ref());
                if tx.send(Inbound::Error(text)).await.is_err() {
                    return;
                }
                match reconnect(&mut eventloop, &resilience, password.as_ref()).await {
                    Ok(()) => Event::Incoming(Incoming::ConnAck(rumqttc::ConnAck::new(
                        rumqttc::ConnectReturnCode::Success,
                        false,
                    ))),
                    Err(text) => {
                        let _ = tx.send(Inbound::GaveUp(text)).await;
                        return;
                    }
                }
            }
        };
        let open = match event {
            Event::Incoming(Incoming::ConnAck(_)) => {
                let filters = topics
                    .iter()
                    .map(|(t, q)| rumqttc::SubscribeFilter::new(t.clone(), *q));
                match client.try_subscribe_many(filters) {
                    Ok(()) => true,
                    Err(e) => {
                        let text = format!("cannot subscribe: {e}");
                        tx.send(Inbound::Error(text)).await.is_ok()
                    }
                }
            }
            Event::Incoming(Incoming::Publish(p)) => tx.send(Inbound::Message(p)).await.is_ok(),
            _ => true,
        };
        if !open {
            return;
        }
    }
}

/// How the MQTT components reconnect unless `retry` says otherwise: up to 30 attempts,
/// waits growing to 10 s with full jitter (an outage of a few minutes), then the
/// component fails.
pub(crate) fn default_reconnect() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 30,
        ..RetryPolicy::default()
    }
}

/// After a lost connection: reconnects through the shared retry layer (backoff with
/// full jitter, the component's retry budget) until the broker accepts the connection.
/// A refusal that cannot change by retrying (bad credentials, not authorized) and spent
/// attempts end it with the last error, described without credentials.
pub(crate) async fn reconnect(
    eventloop: &mut EventLoop,
    resilience: &Resilience,
    password: Option<&Secret>,
) -> Result<(), String> {
    let cell = tokio::sync::Mutex::new(eventloop);
    let cell = &cell;
    let result = resilience
        .call(
            None,
            move |n| async move {
                if n == 1 {
                    // A connection that breaks as soon as it is made (another client
                    // with the same id) must not turn into a busy loop.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let mut eventloop = cell.lock().await;
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Incoming::ConnAck(_))) => return Ok(()),
                        Ok(_) => {}
                        Err(e) => return Err(e),
                    }
                }
            },
            |e| match e {
                rumqttc::ConnectionError::RequestsDone => false,
                rumqttc::ConnectionError::ConnectionRefused(code) => {
                    matches!(code, rumqttc::ConnectReturnCode::ServiceUnavailable)
                }
                _ => true,
            },
            |_| {},
        )
        .await;
    match result {
        Ok(()) => Ok(()),
        Err(RetryError::Failed { error, attempts }) => Err(format!(
            "{} (gave up after {attempts} reconnection attempt(s))",
            describe_error(&error, password)
        )),
        Err(RetryError::BreakerOpen) => Err("circuit breaker open".into()),
    }
}

impl Source for MqttSource {
    fn run(self: Box<Self>, cx: SourceContext) -> BoxFuture<'static, Result<(), ComponentError>> {
        Box::pin(self.run_async(cx))
    }
}

impl MqttSource {
    async fn run_async(self, cx: SourceContext) -> Result<(), ComponentError> {
        let SourceContext {
            component,
            out,
            shutdown,
            ..
        } = cx;
        let qos = if self.config.qos == 1 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        let (client, eventloop) = AsyncClient::new(self.options.clone(), 4096);
        let (tx, mut rx) = mpsc::channel(1024);
        let topics = self
            .config
            .topics
            .iter()
            .map(|t| (t.clone(), qos))
            .collect();
        let conn = tokio::spawn(drive(
            eventloop,
            client.clone(),
            topics,
            Resilience::new(self.config.retry.clone()),
            self.config.password.clone(),
            tx,
        ));
        let broker = format!("mqtt://{}:{}", self.config.host, self.config.port);
        let key_field = self
            .config
            .key_from_topic
            .as_ref()
            .map(|k| k.field.as_str());
        let mut decoder = MessageDecoder::new(
            &self.config.fields,
            self.schema.clone(),
            key_field,
            self.config.batch.rows,
        );
        let (ack_tx, mut acks) = ack_channel();
        let mut tracker: AckTracker<Publish> = AckTracker::default();
        let mut held: Vec<Publish> = Vec::new();
        let linger = Duration::from_millis(self.config.batch.linger_ms);
        let mut first_at: Option<Instant> = None;
        let mut out = Some(out);
        let manual = self.config.qos == 1;
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
                    settle(&client, &component, tracker.ack(ack.id, ack.delivered));
                    continue;
                }
                inbound = rx.recv() => match inbound {
                    Some(Inbound::Message(p)) => {
                        if first_at.is_none() {
                            first_at = Some(Instant::now());
                        }
                        let origin = || format!("{broker}/{}", p.topic);
                        let key = self
                            .config
                            .key_from_topic
                            .as_ref()
                            .map(|k| k.pick(&p.topic, '/'));
                        match key {
                            Some(None) => component.dead_letter(
                                &origin(),
                                "topic has no level to fill the key field",
                                &p.payload,
                            ),
                            Some(Some(k)) => {
                                decoder.decode(&component, &origin, Some(k), &p.payload);
                            }
                            None => {
                                decoder.decode(&component, &origin, None, &p.payload);
                            }
                        }
                        if manual {
                            held.push(p);
                        }
                        if !decoder.is_full() {
                            continue;
                        }
                    }
                    Some(Inbound::Error(e)) => {
                        component.emit(ComponentErrorOccurred {
                            error: &format!("{broker}: {e}; reconnecting"),
                        });
                        continue;
                    }
                    Some(Inbound::GaveUp(e)) => {
                        break Err(ComponentError::new(format!("{broker}: {e}")));
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
            let batch = take_batch(
                &mut decoder,
                &component,
                &mut held,
                &mut tracker,
                &ack_tx,
                &client,
            );
            if let (Some(batch), Some(o)) = (batch, out.as_mut()) {
                match o.send(batch).await {
                    Ok(()) => {}
                    Err(SendError::Closed) => break Ok(()),
                    Err(e) => break Err(e.into()),
                }
            }
        };

        // Shutdown: send what is decoded, let downstream drain, acknowledge what the
        // sinks made durable, then disconnect.
        let batch = take_batch(
            &mut decoder,
            &component,
            &mut held,
            &mut tracker,
            &ack_tx,
            &client,
        );
        if let (Some(batch), Some(o)) = (batch, out.as_mut()) {
            let _ = o.send(batch).await;
        }
        drop(out);
        drain_acks(
            &client,
            &component,
            &mut acks,
            &mut tracker,
            Duration::from_millis(self.config.drain_timeout_ms),
        )
        .await;
        let _ = client.disconnect().await;
        // Give the event loop a moment to send the acknowledgements and the disconnect.
        let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        result
    }
}

/// The decoded rows as a batch whose token stands for the held messages. Messages that
/// produced no row (all dead-lettered) are settled at once.
fn take_batch(
    decoder: &mut MessageDecoder,
    component: &ComponentContext,
    held: &mut Vec<Publish>,
    tracker: &mut AckTracker<Publish>,
    ack_tx: &tidegauge_core::ack::AckSender,
    client: &AsyncClient,
) -> Option<Batch> {
    let publishes = std::mem::take(held);
    match decoder.take(component) {
        Some(data) if publishes.is_empty() => Some(Batch::new(data)),
        Some(data) => {
            let token = ack_tx.token(tracker.push(publishes));
            Some(Batch::with_finalizers(data, Finalizers::one(token)))
        }
        None => {
            for p in &publishes {
                let _ = client.try_ack(p);
            }
            None
        }
    }
}

/// Acknowledges to the broker what the sinks delivered. Messages a sink failed to
/// deliver are not acknowledged: the broker redelivers them when the session resumes.
fn settle(
    client: &AsyncClient,
    component: &ComponentContext,
    released: crate::connectors::inbound::Released<Publish>,
) {
    for p in &released.delivered {
        if let Err(e) = client.try_ack(p) {
            component.emit(ComponentErrorOccurred {
                error: &format!("cannot acknowledge message on {}: {e}", p.topic),
            });
        }
    }
    if !released.failed.is_empty() {
        component.emit(ComponentErrorOccurred {
            error: &format!(
                "{} message(s) not delivered by a sink; left unacknowledged for redelivery",
                released.failed.len()
            ),
        });
    }
}

async fn drain_acks(
    client: &AsyncClient,
    component: &ComponentContext,
    acks: &mut AckReceiver,
    tracker: &mut AckTracker<Publish>,
    timeout: Duration,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    while tracker.in_flight() > 0 {
        match tokio::time::timeout_at(deadline, acks.recv()).await {
            Ok(Some(ack)) => settle(client, component, tracker.ack(ack.id, ack.delivered)),
            _ => break,
        }
    }
}

tidegauge_core::register_source!(MqttSourceConfig);
