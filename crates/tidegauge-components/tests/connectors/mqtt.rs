//! `mqtt` source and sink against mosquitto.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use rumqttc::{AsyncClient, Event as MqttEvent, Incoming, MqttOptions, QoS};

use crate::harness::{
    self, Event, Harness, PATIENCE, SOURCE_BATCH, check_sink, check_source, unique,
};

fn broker() -> Option<(String, u16)> {
    let addr = harness::server("TIDEGAUGE_TEST_MQTT")?;
    let (host, port) = addr.rsplit_once(':').unwrap();
    Some((host.to_string(), port.parse().unwrap()))
}

/// A test client whose event loop runs in the background; publishes with QoS 1 and
/// waits for every acknowledgement.
async fn publisher(host: &str, port: u16) -> (AsyncClient, Arc<Mutex<u64>>) {
    let mut o = MqttOptions::new(unique("pub"), host, port);
    o.set_inflight(1000);
    let (client, mut ev) = AsyncClient::new(o, 10_000);
    let acked = Arc::new(Mutex::new(0u64));
    let a = acked.clone();
    tokio::spawn(async move {
        while let Ok(e) = ev.poll().await {
            if let MqttEvent::Incoming(Incoming::PubAck(_)) = e {
                *a.lock().unwrap() += 1;
            }
        }
    });
    (client, acked)
}

async fn publish_all(
    client: &AsyncClient,
    acked: &Mutex<u64>,
    topic: &str,
    payloads: Vec<Vec<u8>>,
) {
    let before = *acked.lock().unwrap();
    let n = payloads.len() as u64;
    for p in payloads {
        client
            .publish(topic, QoS::AtLeastOnce, false, p)
            .await
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while *acked.lock().unwrap() < before + n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "broker did not acknowledge"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_source_compliance() {
    let Some((host, port)) = broker() else { return };
    let h = Harness::new();
    let prefix = unique("tg");
    let body = format!(
        "type = \"mqtt\"\nhost = \"{host}\"\nport = {port}\ntopics = [\"{prefix}/+/data\"]\nqos = 1\nclient_id = \"{}\"\ndrain_timeout_ms = 2000\n{SOURCE_BATCH}",
        unique("src")
    );
    let source = h.source(&body);
    let (client, acked) = publisher(&host, port).await;
    let topic = format!("{prefix}/plant-1/data");
    let publish = |payloads: Vec<Vec<u8>>| {
        let (client, acked, topic) = (&client, &acked, &topic);
        async move { publish_all(client, acked, topic, payloads).await }.boxed()
    };
    // The subscription (a persistent session: same client id) must exist before
    // messages are published. The probes go through a source of its own, so that they
    // do not count in the telemetry under test.
    let mut probe = Harness::new().source(&body).start().await;
    let probe_topic = format!("{prefix}/probe/data");
    probe
        .until_flowing(|i| publish_probe(&client, &acked, &probe_topic, i))
        .await;
    probe.stop(true).await;
    check_source(&h, &source, &publish, &topic).await;
}

/// Publishes the probe event `i` (sensor `probe`, `ts` = i) to `topic`, for
/// [`RunningSource::until_flowing`](harness::RunningSource::until_flowing).
async fn publish_probe(client: &AsyncClient, acked: &Mutex<u64>, topic: &str, i: i64) {
    let probe = harness::json(&("probe".to_string(), i, 0.0));
    publish_all(client, acked, topic, vec![probe.into_bytes()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_source_maps_topic_level_to_key_and_honours_wildcards() {
    let Some((host, port)) = broker() else { return };
    let h = Harness::new();
    let prefix = unique("tg");
    let source = h.source(&format!(
        "type = \"mqtt\"\nhost = \"{host}\"\nport = {port}\ntopics = [\"{prefix}/+/temp\", \"{prefix}/x/#\"]\nqos = 0\nkey_from_topic = {{ field = \"sensor_id\", level = 1 }}\nbatch = {{ rows = 3, linger_ms = 600000 }}"
    ));
    let mut run = source.start().await;
    let (client, acked) = publisher(&host, port).await;
    let probe_topic = format!("{prefix}/probe/temp");
    run.until_flowing(|i| publish_probe(&client, &acked, &probe_topic, i))
        .await;
    let body =
        |ts: i64| format!("{{\"sensor_id\":\"ignored\",\"ts\":{ts},\"value\":1.5}}").into_bytes();
    publish_all(
        &client,
        &acked,
        &format!("{prefix}/pump-7/temp"),
        vec![body(1)],
    )
    .await;
    publish_all(
        &client,
        &acked,
        &format!("{prefix}/pump-8/pressure"),
        vec![body(2)],
    )
    .await; // not subscribed
    publish_all(
        &client,
        &acked,
        &format!("{prefix}/x/deep/level"),
        vec![body(3)],
    )
    .await;
    publish_all(
        &client,
        &acked,
        &format!("{prefix}/pump-9/temp"),
        vec![body(4)],
    )
    .await;
    let got = harness::sorted(run.take(3).await);
    run.ack_all();
    run.stop(true).await;
    let want: Vec<Event> = vec![
        ("pump-7".into(), 1, 1.5),
        ("x".into(), 3, 1.5),
        ("pump-9".into(), 4, 1.5),
    ];
    assert_eq!(got, want);
}

/// Collects every message published under `prefix/#`.
async fn subscriber(host: &str, port: u16, prefix: &str) -> Arc<Mutex<Vec<(String, Vec<u8>)>>> {
    let o = MqttOptions::new(unique("sub"), host, port);
    let (client, mut ev) = AsyncClient::new(o, 100);
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    client
        .subscribe(format!("{prefix}/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _keep = client;
        while let Ok(e) = ev.poll().await {
            match e {
                MqttEvent::Incoming(Incoming::SubAck(_)) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
                MqttEvent::Incoming(Incoming::Publish(p)) => {
                    g.lock()
                        .unwrap()
                        .push((p.topic.clone(), p.payload.to_vec()));
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(PATIENCE, rx).await.unwrap().unwrap();
    got
}

fn parse(messages: &[(String, Vec<u8>)]) -> Vec<Event> {
    messages
        .iter()
        .map(|(_, p)| {
            let v: serde_json::Value = serde_json::from_slice(p).unwrap();
            (
                v["sensor_id"].as_str().unwrap().to_string(),
                v["ts"].as_i64().unwrap(),
                v["value"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_sink_compliance() {
    let Some((host, port)) = broker() else { return };
    let h = Harness::new();
    let prefix = unique("tg");
    let got = subscriber(&host, port, &prefix).await;
    let sink = h.sink(&format!(
        "type = \"mqtt\"\nhost = \"{host}\"\nport = {port}\ntopic = \"{prefix}/{{sensor_id}}\"\nqos = 1"
    ));
    let read_back = |expect: usize| {
        let got = got.clone();
        async move {
            let deadline = tokio::time::Instant::now() + PATIENCE;
            while got.lock().unwrap().len() < expect && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let messages = got.lock().unwrap().clone();
            parse(&messages)
        }
        .boxed()
    };
    check_sink(&sink, &read_back).await;
    // Topics were filled from each event's sensor id.
    let messages = got.lock().unwrap().clone();
    for ((topic, _), e) in messages.iter().zip(parse(&messages)) {
        assert_eq!(topic, &format!("{prefix}/{}", e.0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_tls_with_password() {
    let Some(addr) = harness::server("TIDEGAUGE_TEST_MQTT_TLS") else {
        return;
    };
    let ca = harness::server("TIDEGAUGE_TEST_MQTT_CA").unwrap();
    let user = harness::server("TIDEGAUGE_TEST_MQTT_USER").unwrap();
    let password = harness::server("TIDEGAUGE_TEST_MQTT_PASSWORD").unwrap();
    let (host, port) = addr.rsplit_once(':').unwrap();
    let h = Harness::new();
    let prefix = unique("tls");
    let common = format!(
        "host = \"{host}\"\nport = {port}\nusername = \"{user}\"\npassword = \"{password}\"\ntls = {{ ca_file = \"{ca}\" }}"
    );
    let source = h.source(&format!(
        "type = \"mqtt\"\n{common}\ntopics = [\"{prefix}/#\"]\nqos = 1\nbatch = {{ rows = 5, linger_ms = 600000 }}"
    ));
    let mut run = source.start().await;
    // Probes go through the broker's plain listener, to a topic the source reads.
    let (plain_host, plain_port) = broker().expect("the plain listener beside the TLS one");
    let (client, acked) = publisher(&plain_host, plain_port).await;
    let probe_topic = format!("{prefix}/probe");
    run.until_flowing(|i| publish_probe(&client, &acked, &probe_topic, i))
        .await;
    let sink = h.sink(&format!(
        "type = \"mqtt\"\n{common}\ntopic = \"{prefix}/{{sensor_id}}\"\nqos = 1"
    ));
    let mut running = sink.start().await;
    let sent = harness::events(0, 5);
    running.send(&sent).await;
    let (r, acks) = running.finish().await;
    r.unwrap();
    assert!(acks.iter().all(|a| a.delivered));
    let got = run.take(5).await;
    run.ack_all();
    run.stop(true).await;
    assert_eq!(harness::sorted(got), sent);

    // A wrong password is refused, and the error does not show the password.
    let bad = h.sink(&format!(
        "type = \"mqtt\"\nhost = \"{host}\"\nport = {port}\nusername = \"{user}\"\npassword = \"wrong-{password}\"\ntls = {{ ca_file = \"{ca}\" }}\ntopic = \"{prefix}/x\"\nqos = 1\ndrain_timeout_ms = 1500\nretry = {{ initial_backoff_ms = 10, max_backoff_ms = 50 }}"
    ));
    let mut running = bad.start().await;
    running.send(&harness::events(0, 1)).await;
    let (r, acks) = running.finish().await;
    let err = r.unwrap_err().to_string();
    assert!(!err.contains(&password), "{err}");
    assert!(
        acks.iter().all(|a| !a.delivered),
        "nothing delivered: {acks:?}"
    );
    assert!(bad.telemetry().errors > 0, "connection refusals counted");
}

/// Packed messages: up to `events_per_message` events of one topic per message, one JSON
/// object per line (what the `mqtt` source reads back as separate events), each topic's
/// events in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_sink_packs_events_of_a_topic_into_messages() {
    let Some((host, port)) = broker() else { return };
    let h = Harness::new();
    let prefix = unique("tgp");
    let got = subscriber(&host, port, &prefix).await;
    let sink = h.sink(&format!(
        "type = \"mqtt\"\nhost = \"{host}\"\nport = {port}\ntopic = \"{prefix}/{{sensor_id}}\"\nqos = 1\nevents_per_message = 40"
    ));
    let sent = harness::events(0, 1_000);
    harness::deliver_in_two_batches(&sink, &sent).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let lines = || -> Vec<(String, Vec<u8>)> {
        let messages = got.lock().unwrap().clone();
        messages
            .iter()
            .flat_map(|(t, p)| p.split(|&b| b == b'\n').map(|l| (t.clone(), l.to_vec())))
            .collect()
    };
    while lines().len() < sent.len() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let messages = got.lock().unwrap().len();
    assert!(messages < 100, "1,000 events in {messages} messages");
    let lines = lines();
    let events = parse(&lines);
    for ((topic, _), e) in lines.iter().zip(&events) {
        assert_eq!(topic, &format!("{prefix}/{}", e.0));
    }
    assert_eq!(harness::per_sensor(&events), harness::per_sensor(&sent));
}
