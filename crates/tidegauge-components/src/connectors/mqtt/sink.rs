//! `mqtt` sink: publishes each event as a JSON object to an MQTT topic (fixed, or built
//! from the event's fields), or several events of one topic per message as JSON Lines
//! (`events_per_message`). With `qos = 1` a batch counts as delivered once the broker
//! has acknowledged every one of its messages.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use arrow_schema::SchemaRef;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, Outgoing, QoS};
use tidegauge_core::ack::Finalizers;
use tidegauge_core::component::sink_fn;
use tidegauge_core::component::{Recv, SinkContext};
use tidegauge_core::resilience::Resilience;
use tidegauge_core::telemetry::{BytesSent, ComponentErrorOccurred, EventsSent};
use tidegauge_core::{
    BuildContext, BuildError, ComponentError, ConfigError, Sink, SinkConfig, SinkInput,
};
use tokio::sync::mpsc;

use super::{describe_error, mqtt_connection, reconnect};
use crate::codec::encode::JsonEncoder;
use crate::connectors::template::{Template, pack};
use crate::secret::Secret;
use crate::settings::{collect, config};

config! {
    [mqtt_connection]
    /// Publishes each event as a JSON object (every field) to an MQTT topic.
    ///
    /// `topic` may name fields in braces (`alerts/{sensor_id}`). With `qos = 1` a batch is
    /// acknowledged upstream only when the broker has acknowledged all its messages; on a
    /// lost connection the client reconnects and resends what was not acknowledged.
    pub struct MqttSinkConfig {
        /// Topic to publish to; `{field}` is replaced by the event's value of that field.
        #[schemars(example = &"alerts/{sensor_id}")]
        pub topic: String,
        /// Quality of service: 0 (fire and forget) or 1 (acknowledged by the broker).
        #[serde(default = "default_qos")]
        #[schemars(range(min = 0, max = 1))]
        pub qos: u8,
        /// Ask the broker to keep the last message of each topic for new subscribers.
        #[serde(default)]
        pub retain: bool,
        /// Client identifier; two connections with one identifier push each other off the
        /// broker. Unset: `tidegauge-<component id>-<process id>`.
        #[serde(default)]
        pub client_id: Option<String>,
        /// Messages published but not yet acknowledged, at most.
        #[serde(default = "default_inflight")]
        #[schemars(range(min = 1))]
        pub inflight: u16,
        /// At shutdown, how long to wait for the broker's acknowledgements, in
        /// milliseconds; batches still unacknowledged then are reported as not delivered.
        #[serde(default = "default_drain_timeout_ms")]
        pub drain_timeout_ms: u64,
        /// Events of one topic per message, at most: 1 publishes one JSON object per
        /// message; more packs the events of a batch that share a topic into messages of
        /// JSON Lines (one object per line, each topic's order kept, within
        /// `max_packet_bytes`), which the `mqtt` source reads back as separate events.
        /// One message per event costs the broker and both clients a round of work per
        /// event: above a few tens of thousands of events per second, pack.
        #[serde(default = "default_events_per_message")]
        #[schemars(range(min = 1))]
        pub events_per_message: u32,
    }
}

fn default_qos() -> u8 {
    1
}
fn default_inflight() -> u16 {
    1000
}
fn default_drain_timeout_ms() -> u64 {
    30_000
}
fn default_events_per_message() -> u32 {
    1
}

impl SinkConfig for MqttSinkConfig {
    const TYPE: &'static str = "mqtt";

    fn validate(&self, input: &SchemaRef) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        self.connection().validate(&mut errors);
        if self.events_per_message == 0 {
            errors.push(ConfigError::new("events_per_message", "must be at least 1"));
        }
        Template::check("topic", &self.topic, input, &mut errors);
        if self.topic.contains(['+', '#']) {
            errors.push(ConfigError::new(
                "topic",
                "wildcards `+` and `#` are for subscribing, not publishing",
            ));
        }
        collect(errors, || ())
    }

    async fn build(&self, input: SchemaRef, cx: BuildContext) -> Result<Box<dyn Sink>, BuildError> {
        let client_id = self
            .client_id
            .clone()
            .unwrap_or_else(|| format!("tidegauge-{}-{}", cx.component.id(), std::process::id()));
        let mut options = self.connection().options(client_id)?;
        options.set_inflight(self.inflight);
        options.set_clean_session(true);
        let topic = Template::parse(&self.topic).map_err(BuildError::new)?;
        let sink = MqttSink {
            config: self.clone(),
            options,
            encoder: JsonEncoder::new(&input),
            topic,
        };
        Ok(sink_fn(move |input, cx| sink.run_async(input, cx)))
    }
}

struct MqttSink {
    config: MqttSinkConfig,
    options: MqttOptions,
    encoder: JsonEncoder,
    topic: Template,
}

/// What the connection task reports.
enum Report {
    /// A message went out (packet id; 0 for QoS 0).
    Sent(u16),
    /// The broker acknowledged a QoS 1 message.
    Acked(u16),
    /// The connection failed (it is being re-established).
    Error(String),
    /// The connection could not be re-established: the sink fails.
    GaveUp(String),
}

async fn drive(
    mut eventloop: EventLoop,
    resilience: Resilience,
    password: Option<Secret>,
    tx: mpsc::UnboundedSender<Report>,
) {
    loop {
        let report = match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Report::Sent(pkid),
            Ok(Event::Incoming(Incoming::PubAck(a))) => Report::Acked(a.pkid),
            Ok(_) => continue,
            Err(rumqttc::ConnectionError::RequestsDone) => return,
            Err(e) => {
                let _ = tx.send(Report::Error(describe_error(&e, password.as_ref())));
                match reconnect(&mut eventloop, &resilience, password.as_ref()).await {
                    Ok(()) => continue,
                    Err(text) => Report::GaveUp(text),
                }
            }
        };
        if tx.send(report).is_err() {
            return;
        }
    }
}

/// A batch on its way: messages not yet written, packet ids not yet acknowledged.
struct InFlight {
    finalizers: Finalizers,
    unsent: usize,
    unacked: HashSet<u16>,
}

/// Batches in publication order; the connection reports map onto them in that order.
/// Bounded: a batch stays only while one of its messages is unsent or unacknowledged,
/// and messages in that state are bounded by the client's request queue and the
/// broker's in-flight window (a batch whose rows were all refused is released at once).
#[derive(Default)]
struct Ledger {
    batches: VecDeque<InFlight>,
}

impl Ledger {
    fn on_report(&mut self, report: &Report, qos1: bool) {
        match *report {
            Report::Sent(pkid) => {
                // A resend after reconnecting repeats a packet id already waiting.
                if qos1 && self.batches.iter().any(|b| b.unacked.contains(&pkid)) {
                    return;
                }
                if let Some(b) = self.batches.iter_mut().find(|b| b.unsent > 0) {
                    b.unsent -= 1;
                    if qos1 {
                        b.unacked.insert(pkid);
                    }
                }
            }
            Report::Acked(pkid) => {
                for b in self.batches.iter_mut() {
                    if b.unacked.remove(&pkid) {
                        break;
                    }
                }
            }
            Report::Error(_) | Report::GaveUp(_) => {}
        }
    }

    /// Releases the finalizers of every leading batch that is fully delivered.
    fn release(&mut self) {
        while self
            .batches
            .front()
            .is_some_and(|b| b.unsent == 0 && b.unacked.is_empty())
        {
            if let Some(b) = self.batches.pop_front() {
                b.finalizers.release();
            }
        }
    }

    fn fail_all(&mut self) -> usize {
        let n = self.batches.len();
        for b in self.batches.drain(..) {
            b.finalizers.fail();
        }
        n
    }
}

impl MqttSink {
    async fn run_async(self, input: SinkInput, cx: SinkContext) -> Result<(), ComponentError> {
        let component = cx.component;
        let (client, eventloop) = AsyncClient::new(self.options.clone(), 1024);
        // The connection's reports: Sent and Acked once per message handed to the client,
        // and one per connection error (each after a backoff). Unbounded so that the
        // connection task, which also carries the disconnect, never waits on this task;
        // yet bounded: this task reads every report ready before it takes a batch and
        // while it waits to hand a message over, so the reports waiting come from at
        // most the messages the client holds, which its request queue (1024) and the
        // in-flight window (`inflight`) bound: two each, plus the errors.
        let (tx, mut reports) = mpsc::unbounded_channel();
        let conn = tokio::spawn(drive(
            eventloop,
            Resilience::new(self.config.retry.clone()),
            self.config.password.clone(),
            tx,
        ));
        let broker = self.config.connection().broker();
        let mut ledger = Ledger::default();
        let mut result = self
            .publish_all(
                input,
                &component,
                &client,
                &mut reports,
                &broker,
                &mut ledger,
            )
            .await;

        // End of input (or failure): wait until the broker has everything, then
        // disconnect. Whatever it has not acknowledged counts as not delivered.
        if result.is_ok() {
            let deadline =
                tokio::time::Instant::now() + Duration::from_millis(self.config.drain_timeout_ms);
            ledger.release();
            while !ledger.batches.is_empty() {
                match tokio::time::timeout_at(deadline, reports.recv()).await {
                    Ok(Some(r)) => {
                        if let Err(e) = self.note(&component, &broker, &mut ledger, r) {
                            result = Err(e);
                            break;
                        }
                    }
                    _ => break,
                }
            }
        }
        let undelivered = ledger.fail_all();
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        result?;
        if undelivered > 0 {
            return Err(ComponentError::new(format!(
                "{broker}: {undelivered} batch(es) not acknowledged by the broker within drain_timeout_ms"
            )));
        }
        Ok(())
    }

    /// Publishes every batch of the input; each is in the ledger before anything of it
    /// can fail, so an error leaves its finalizers to be failed, never released.
    async fn publish_all(
        &self,
        mut input: SinkInput,
        component: &tidegauge_core::ComponentContext,
        client: &AsyncClient,
        reports: &mut mpsc::UnboundedReceiver<Report>,
        broker: &str,
        ledger: &mut Ledger,
    ) -> Result<(), ComponentError> {
        let qos = if self.config.qos == 1 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        let mut buf = Vec::with_capacity(1 << 16);
        let static_topic = self.topic.is_static().then(|| self.config.topic.clone());
        let max_bytes = self.config.max_packet_bytes;
        loop {
            // Take the connection's reports first, so acknowledgements flow while the
            // input is quiet.
            let next = tokio::select! {
                biased;
                Some(r) = reports.recv() => {
                    self.note(component, broker, ledger, r)?;
                    continue;
                }
                b = input.recv_timeout(Duration::from_millis(200)) => b,
            };
            let batch = match next {
                Recv::Batch(b) => b,
                Recv::Idle => continue,
                Recv::Closed => return Ok(()),
            };
            // Register the batch before anything else: reports for its messages may
            // come back while later messages are still being handed to the client.
            ledger.batches.push_back(InFlight {
                finalizers: batch.finalizers,
                unsent: 0,
                unacked: HashSet::new(),
            });
            let topics = match &static_topic {
                Some(_) => Vec::new(),
                None => self.topic.render_all(&batch.data)?,
            };
            buf.clear();
            self.encoder.encode_batch(&batch.data, &mut buf)?;
            let rows = batch.data.num_rows();
            let mut events = Vec::with_capacity(rows);
            for (row, payload) in buf.split(|&b| b == b'\n').take(rows).enumerate() {
                let topic = match &static_topic {
                    Some(t) => t.as_str(),
                    None => topics[row].as_str(),
                };
                let reject = if payload.len() + topic.len() + 16 > max_bytes {
                    Some(format!(
                        "message of {} bytes exceeds max_packet_bytes",
                        payload.len()
                    ))
                } else if topic.is_empty() || topic.contains(['+', '#', '\0']) {
                    Some(format!("`{topic}` is not a topic one can publish to"))
                } else {
                    None
                };
                match reject {
                    Some(reason) => {
                        component.dead_letter(&format!("{broker}/{topic}"), &reason, payload)
                    }
                    None => events.push((topic, payload)),
                }
            }
            let per_message = self.config.events_per_message as usize;
            let messages = pack(events, per_message, |topic| {
                max_bytes.saturating_sub(topic.len() + 16)
            });
            // No report can reach this batch before its first message is handed over.
            if let Some(b) = ledger.batches.back_mut() {
                b.unsent = messages.len();
            }
            let mut published = 0u64;
            let mut bytes = 0u64;
            for m in messages {
                let len = m.payload.len() as u64;
                // Publishing waits while the client's queue is full; keep reading the
                // connection's reports meanwhile.
                let publish = client.publish(m.topic, qos, self.config.retain, m.payload);
                tokio::pin!(publish);
                loop {
                    tokio::select! {
                        r = &mut publish => {
                            r.map_err(|e| ComponentError::new(format!("{broker}: cannot publish: {e}")))?;
                            break;
                        }
                        Some(r) = reports.recv() => self.note(component, broker, ledger, r)?,
                    }
                }
                published += m.events;
                bytes += len;
            }
            component.emit(EventsSent { count: published });
            component.emit(BytesSent { bytes });
            ledger.release();
        }
    }

    fn note(
        &self,
        component: &tidegauge_core::ComponentContext,
        broker: &str,
        ledger: &mut Ledger,
        report: Report,
    ) -> Result<(), ComponentError> {
        match &report {
            Report::Error(e) => component.emit(ComponentErrorOccurred {
                error: &format!("{broker}: {e}; reconnecting"),
            }),
            Report::GaveUp(e) => return Err(ComponentError::new(format!("{broker}: {e}"))),
            _ => {}
        }
        ledger.on_report(&report, self.config.qos == 1);
        ledger.release();
        Ok(())
    }
}

tidegauge_core::register_sink!(MqttSinkConfig);
