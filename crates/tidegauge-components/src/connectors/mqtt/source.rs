//! `mqtt` source: subscribes to MQTT topics (wildcards allowed) and decodes each message's
//! JSON payload into events. With `qos = 1` a message is acknowledged to the broker only
//! after every sink has made it durable; unacknowledged messages are redelivered by the
//! broker when the (persistent) session resumes.

use std::time::Duration;

use arrow_schema::SchemaRef;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, Publish, QoS};
use tidegauge_core::component::source_fn;
use tidegauge_core::resilience::Resilience;
use tidegauge_core::{
    BuildContext, BuildError, ComponentContext, ComponentError, ConfigError, Source, SourceConfig,
    SourceContext,
};
use tokio::sync::mpsc;

use super::{describe_error, mqtt_connection, reconnect};
use crate::connectors::inbound::{
    self, BrokerSource, KeyFromTopic, MessageDecoder, Next, Released,
};
use crate::secret::Secret;
use crate::settings::{config, decoded_records};

config! {
    [mqtt_connection, decoded_records]
    /// Subscribes to MQTT topics and decodes each message's payload (a JSON object, or JSON
    /// Lines) into events.
    ///
    /// With `qos = 1` and `clean_session = false` delivery is at-least-once end to end: the
    /// broker hears a message's acknowledgement only once every sink has made it durable, and
    /// redelivers unacknowledged messages when the session resumes. The broker's in-flight
    /// window (mosquitto: `max_inflight_messages`, default 20) bounds how many messages are
    /// on their way before the sinks acknowledge: raise it for throughput. Payloads that
    /// cannot be decoded are dead-lettered with topic and broker.
    pub struct MqttSourceConfig {
        /// Topic filters to subscribe to; `+` matches one level, `#` the rest.
        #[schemars(example = ["plant/+/+/temp"])]
        pub topics: Vec<String>,
        /// Quality of service: 0 (at most once) or 1 (at least once, acknowledged after
        /// the sinks).
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
        /// At shutdown, how long to wait for the sinks' acknowledgements of messages
        /// already sent on, in milliseconds, before disconnecting (unacknowledged ones are
        /// redelivered next time).
        #[serde(default = "inbound::default_drain_timeout_ms")]
        pub drain_timeout_ms: u64,
    }
}

fn default_qos() -> u8 {
    1
}

impl SourceConfig for MqttSourceConfig {
    const TYPE: &'static str = "mqtt";

    fn validate(&self) -> Result<SchemaRef, Vec<ConfigError>> {
        let mut errors = Vec::new();
        self.connection().validate(&mut errors);
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
        if let Some(k) = &self.key_from_topic {
            k.validate("key_from_topic", &self.fields, &mut errors);
        }
        self.decoded_schema(errors)
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
        let mut options = self.connection().options(client_id)?;
        options.set_clean_session(self.clean_session);
        options.set_manual_acks(self.qos == 1);
        options.set_inflight(u16::MAX);
        let source = MqttSource {
            config: self.clone(),
            options,
            schema,
        };
        Ok(source_fn(move |cx| source.run_async(cx)))
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

impl MqttSource {
    async fn run_async(self, cx: SourceContext) -> Result<(), ComponentError> {
        let qos = if self.config.qos == 1 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        let (client, eventloop) = AsyncClient::new(self.options.clone(), 4096);
        let (tx, rx) = mpsc::channel(1024);
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
        let key_field = self
            .config
            .key_from_topic
            .as_ref()
            .map(|k| k.field.as_str());
        let decoder = MessageDecoder::new(
            &self.config.fields,
            self.schema.clone(),
            key_field,
            &self.config.batch,
        );
        let broker = Subscription {
            broker: self.config.connection().broker(),
            key_from_topic: self.config.key_from_topic.clone(),
            manual: self.config.qos == 1,
            client,
            rx,
            conn,
        };
        inbound::run(
            broker,
            cx,
            decoder,
            &self.config.batch,
            self.config.drain_timeout_ms,
        )
        .await
    }
}

/// The subscription as the shared broker loop drives it.
struct Subscription {
    broker: String,
    key_from_topic: Option<KeyFromTopic>,
    /// QoS 1: messages are acknowledged by hand, after the sinks.
    manual: bool,
    client: AsyncClient,
    rx: mpsc::Receiver<Inbound>,
    conn: tokio::task::JoinHandle<()>,
}

impl BrokerSource for Subscription {
    type Position = Publish;

    async fn next(&mut self, decoder: &mut MessageDecoder, cx: &ComponentContext) -> Next<Publish> {
        let p = match self.rx.recv().await {
            Some(Inbound::Message(p)) => p,
            Some(Inbound::Error(e)) => {
                return Next::Error(format!("{}: {e}; reconnecting", self.broker));
            }
            Some(Inbound::GaveUp(e)) => return Next::Fatal(format!("{}: {e}", self.broker)),
            None => return Next::End,
        };
        let origin = || format!("{}/{}", self.broker, p.topic);
        decoder.decode_picked(
            cx,
            &origin,
            self.key_from_topic.as_ref().map(|k| k.pick(&p.topic, '/')),
            "topic has no level to fill the key field",
            &p.payload,
        );
        Next::Message(self.manual.then_some(p))
    }

    /// Acknowledges to the broker what the sinks delivered. Messages a sink failed to
    /// deliver are not acknowledged: the broker redelivers them when the session resumes.
    async fn settle(
        &mut self,
        cx: &ComponentContext,
        released: Released<Publish>,
        _draining: bool,
    ) {
        for p in &released.delivered {
            if let Err(e) = self.client.try_ack(p) {
                cx.emit(tidegauge_core::telemetry::ComponentErrorOccurred {
                    error: &format!("cannot acknowledge message on {}: {e}", p.topic),
                });
            }
        }
        if !released.failed.is_empty() {
            cx.emit(tidegauge_core::telemetry::ComponentErrorOccurred {
                error: &format!(
                    "{} message(s) not delivered by a sink; left unacknowledged for redelivery",
                    released.failed.len()
                ),
            });
        }
    }

    async fn close(self, _cx: &ComponentContext) {
        let _ = self.client.disconnect().await;
        // Give the event loop a moment to send the acknowledgements and the disconnect.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.conn).await;
    }
}

tidegauge_core::register_source!(MqttSourceConfig);
