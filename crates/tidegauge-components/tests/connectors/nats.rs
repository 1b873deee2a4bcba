//! `nats` source and sink against nats-server with JetStream.

use async_nats::jetstream;
use futures_util::{FutureExt, StreamExt};

use crate::harness::{
    self, Event, Harness, PATIENCE, SOURCE_BATCH, check_sink, check_source, unique,
};

fn server() -> Option<String> {
    harness::server("TIDEGAUGE_TEST_NATS").map(|a| format!("nats://{a}"))
}

async fn context(url: &str) -> jetstream::Context {
    jetstream::new(async_nats::connect(url).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_source_compliance() {
    let Some(url) = server() else { return };
    let stream = unique("TG").replace('-', "_");
    let subject = format!("{stream}.plant.pump-7");
    let h = Harness::new();
    let source = h.source(&format!(
        "type = \"nats\"\nservers = [\"{url}\"]\nstream = \"{stream}\"\nsubjects = [\"{stream}.>\"]\ndurable = \"{}\"\nack_wait_ms = 2000\ndrain_timeout_ms = 2000\n{SOURCE_BATCH}",
        unique("durable")
    ));
    // Building creates the stream; start once so it exists before publishing.
    let mut probe = source.start().await;
    probe.stop(true).await;
    let js = context(&url).await;
    let publish = |payloads: Vec<Vec<u8>>| {
        let (js, subject) = (&js, &subject);
        async move {
            for p in payloads {
                js.publish(subject.clone(), p.into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        }
        .boxed()
    };
    check_source(&h, &source, &publish, &subject).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_source_maps_subject_token_to_key() {
    let Some(url) = server() else { return };
    let stream = unique("TGK").replace('-', "_");
    let h = Harness::new();
    let source = h.source(&format!(
        "type = \"nats\"\nservers = [\"{url}\"]\nstream = \"{stream}\"\nsubjects = [\"{stream}.>\"]\nfilter_subject = \"{stream}.*.temp\"\nkey_from_subject = {{ field = \"sensor_id\", level = 1 }}\nbatch = {{ rows = 2, linger_ms = 600000 }}"
    ));
    let mut run = source.start().await;
    let js = context(&url).await;
    for (subject, ts) in [
        ("pump-1.temp", 1),
        ("pump-1.pressure", 2),
        ("pump-2.temp", 3),
    ] {
        let body = format!("{{\"sensor_id\":\"x\",\"ts\":{ts},\"value\":0.5}}");
        js.publish(format!("{stream}.{subject}"), body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let got = harness::sorted(run.take(2).await);
    run.ack_all();
    run.stop(true).await;
    let want: Vec<Event> = vec![("pump-1".into(), 1, 0.5), ("pump-2".into(), 3, 0.5)];
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_sink_compliance() {
    let Some(url) = server() else { return };
    let stream = unique("TGS").replace('-', "_");
    let h = Harness::new();
    let sink = h.sink(&format!(
        "type = \"nats\"\nservers = [\"{url}\"]\nsubject = \"{stream}.{{sensor_id}}\"\nstream = \"{stream}\"\nstream_subjects = [\"{stream}.>\"]"
    ));
    let read_back = |_expect: usize| {
        let (url, stream) = (url.clone(), stream.clone());
        async move {
            read_stream(&url, &stream)
                .await
                .into_iter()
                .map(|(_, e)| e)
                .collect()
        }
        .boxed()
    };
    check_sink(&sink, &read_back).await;
    for (subject, e) in read_stream(&url, &stream).await {
        assert_eq!(subject, format!("{stream}.{}", e.0));
    }
    assert_eq!(
        storage(&url, &stream).await,
        jetstream::stream::StorageType::File
    );
}

/// Where stream `name` keeps its messages.
async fn storage(url: &str, name: &str) -> jetstream::stream::StorageType {
    let mut stream = context(url).await.get_stream(name).await.unwrap();
    stream.info().await.unwrap().config.storage
}

/// A source that creates its stream creates it on disk unless told `memory`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_source_creates_its_stream_with_the_storage_asked_for() {
    let Some(url) = server() else { return };
    let h = Harness::new();
    for (setting, expected) in [
        ("", jetstream::stream::StorageType::File),
        (
            "stream_storage = \"memory\"",
            jetstream::stream::StorageType::Memory,
        ),
    ] {
        let stream = unique("TGM").replace('-', "_");
        let source = h.source(&format!(
            "type = \"nats\"\nservers = [\"{url}\"]\nstream = \"{stream}\"\nsubjects = [\"{stream}.>\"]\n{setting}\n{SOURCE_BATCH}"
        ));
        let mut run = source.start().await;
        run.stop(true).await;
        assert_eq!(storage(&url, &stream).await, expected, "{setting:?}");
    }
}

/// One batch holding more messages than the client lets await their acknowledgement at
/// once (async-nats: 5,000): the sink must wait for acknowledgements inside the batch,
/// not only for older batches, or publishing blocks for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_sink_stores_one_batch_larger_than_the_client_ack_window() {
    let Some(url) = server() else { return };
    let stream = unique("TGB").replace('-', "_");
    let h = Harness::new();
    let sink = h.sink(&format!(
        "type = \"nats\"\nservers = [\"{url}\"]\nsubject = \"{stream}.{{sensor_id}}\"\nstream = \"{stream}\"\nstream_subjects = [\"{stream}.>\"]"
    ));
    let big = harness::events(0, 12_000);
    let mut running = sink.start().await;
    let id = running.send(&big).await;
    let ack = running.next_ack().await;
    assert_eq!(
        ack,
        tidegauge_core::ack::Ack {
            id,
            delivered: true
        }
    );
    let (result, acks) = running.finish().await;
    result.expect("sink finished without error");
    assert!(acks.is_empty(), "{acks:?}");
    let mut stored: Vec<Event> = read_stream(&url, &stream)
        .await
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    stored = harness::sorted(stored);
    stored.dedup();
    assert_eq!(stored, big, "the stream holds exactly the batch");
    assert_eq!(sink.telemetry().events_out, 12_000);
}

/// Every message stored in the stream, with its subject (read with an ephemeral
/// consumer: JetStream acknowledged them, so they are stored).
async fn read_stream(url: &str, stream: &str) -> Vec<(String, Event)> {
    let js = context(url).await;
    let mut s = js.get_stream(stream).await.unwrap();
    let total = s.info().await.unwrap().state.messages as usize;
    let consumer: jetstream::consumer::PullConsumer = s
        .create_consumer(jetstream::consumer::pull::Config {
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    while out.len() < total {
        let m = tokio::time::timeout(PATIENCE, messages.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        out.push((
            m.subject.to_string(),
            (
                v["sensor_id"].as_str().unwrap().to_string(),
                v["ts"].as_i64().unwrap(),
                v["value"].as_f64().unwrap(),
            ),
        ));
    }
    out
}

/// Packed messages: the sink puts up to `events_per_message` events of one subject in a
/// message, and the `nats` source reads every event back, each sensor's in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_packed_messages_round_trip_through_the_source() {
    let Some(url) = server() else { return };
    let stream = unique("TGP").replace('-', "_");
    let h = Harness::new();
    let sink = h.sink(&format!(
        "type = \"nats\"\nservers = [\"{url}\"]\nsubject = \"{stream}.{{sensor_id}}\"\nstream = \"{stream}\"\nstream_subjects = [\"{stream}.>\"]\nevents_per_message = 40\nstream_storage = \"memory\""
    ));
    let sent = harness::events(0, 1_000);
    harness::deliver_in_two_batches(&sink, &sent).await;
    let js = context(&url).await;
    let mut created = js.get_stream(&stream).await.unwrap();
    let info = created.info().await.unwrap();
    assert_eq!(info.config.storage, jetstream::stream::StorageType::Memory);
    let stored = info.state.messages;
    assert!(stored < 100, "1,000 events in {stored} messages");
    let source = h.source(&format!(
        "type = \"nats\"\nservers = [\"{url}\"]\nstream = \"{stream}\"\nsubjects = [\"{stream}.>\"]\ndurable = \"{}\"\n{SOURCE_BATCH}",
        unique("durable")
    ));
    let mut run = source.start().await;
    let got = run.take(1_000).await;
    run.ack_all();
    run.stop(true).await;
    assert_in_order_per_sensor(&got, &sent);
}

/// `got` holds exactly `sent`, and each sensor's events in the order they were sent.
fn assert_in_order_per_sensor(got: &[Event], sent: &[Event]) {
    assert_eq!(
        harness::sorted(got.to_vec()),
        harness::sorted(sent.to_vec())
    );
    assert_eq!(harness::per_sensor(got), harness::per_sensor(sent));
}
