//! `kafka` source and sink against a broker speaking the Kafka protocol.

use std::time::Duration;

use futures_util::FutureExt;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::harness::{
    self, Event, Harness, PATIENCE, SOURCE_BATCH, check_sink, check_source, unique,
};

const PARTITIONS: i32 = 3;

async fn create_topic(brokers: &str, name: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let topic = NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(1));
    let r = admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .unwrap();
    for t in r {
        t.unwrap_or_else(|(t, e)| panic!("cannot create topic {t}: {e}"));
    }
}

fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap()
}

/// Every message of `topic` from the beginning: (key, payload, partition).
fn read_topic(brokers: &str, topic: &str, expect: usize) -> Vec<(Option<String>, Vec<u8>, i32)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut quiet = 0;
    while std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                quiet = 0;
                got.push((
                    m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    m.payload().unwrap_or_default().to_vec(),
                    m.partition(),
                ));
            }
            Some(Err(e)) => panic!("{e}"),
            None => {
                quiet += 1;
                // At least what is expected, and nothing more arriving.
                if got.len() >= expect && quiet >= 3 {
                    break;
                }
            }
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_source_compliance() {
    let Some(brokers) = harness::server("TIDEGAUGE_TEST_KAFKA") else {
        return;
    };
    let topic = unique("tg-src");
    create_topic(&brokers, &topic).await;
    let h = Harness::new();
    let source = h.source(&format!(
        "type = \"kafka\"\nbrokers = [\"{brokers}\"]\ntopics = [\"{topic}\"]\ngroup_id = \"{}\"\ndrain_timeout_ms = 2000\n{SOURCE_BATCH}",
        unique("group")
    ));
    let p = producer(&brokers);
    let publish = |payloads: Vec<Vec<u8>>| {
        let (p, topic) = (&p, &topic);
        async move {
            // One partition keeps the test's order (bad payloads in the middle).
            for payload in payloads {
                p.send(
                    FutureRecord::<(), _>::to(topic)
                        .partition(0)
                        .payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .unwrap();
            }
        }
        .boxed()
    };
    check_source(&h, &source, &publish, &topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_compliance_with_keys_and_compression() {
    let Some(brokers) = harness::server("TIDEGAUGE_TEST_KAFKA") else {
        return;
    };
    let topic = unique("tg-sink");
    create_topic(&brokers, &topic).await;
    let h = Harness::new();
    let sink = h.sink(&format!(
        "type = \"kafka\"\nbrokers = [\"{brokers}\"]\ntopic = \"{topic}\"\nkey_field = \"sensor_id\"\ncompression = \"lz4\"\nlinger_ms = 20\nbatch_messages = 500"
    ));
    let read_back = |expect: usize| {
        let (brokers, topic) = (brokers.clone(), topic.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                read_topic(&brokers, &topic, expect)
                    .into_iter()
                    .map(|(_, p, _)| parse(&p))
                    .collect::<Vec<Event>>()
            })
            .await
            .unwrap()
        }
        .boxed()
    };
    check_sink(&sink, &read_back).await;

    // Key -> partition: every message is keyed by its sensor id, and one key always
    // lands in one partition.
    let all = tokio::task::spawn_blocking(move || read_topic(&brokers, &topic, 1000))
        .await
        .unwrap();
    let mut partition_of = std::collections::HashMap::new();
    for (key, payload, partition) in &all {
        let e = parse(payload);
        assert_eq!(key.as_deref(), Some(e.0.as_str()));
        let p = partition_of.entry(e.0.clone()).or_insert(*partition);
        assert_eq!(*p, *partition, "key {} in two partitions", e.0);
    }
    let used: std::collections::BTreeSet<_> = partition_of.values().collect();
    assert!(
        used.len() > 1,
        "7 keys spread over partitions: {partition_of:?}"
    );
}

/// A sink that cannot deliver fails loudly and never acknowledges: the topic does not
/// exist and the broker does not create it on first use (tansu never does; Kafka with
/// `auto.create.topics.enable = false`), so every message comes back undelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_to_a_missing_topic_fails_and_never_acknowledges() {
    let Some(brokers) = harness::server("TIDEGAUGE_TEST_KAFKA") else {
        return;
    };
    let topic = unique("tg-missing");
    let h = Harness::new();
    let sink = h.sink(&format!(
        "type = \"kafka\"\nbrokers = [\"{brokers}\"]\ntopic = \"{topic}\"\nmessage_timeout_ms = 2000\nretry = {{ max_attempts = 2, initial_backoff_ms = 10, max_backoff_ms = 20 }}"
    ));
    let mut running = sink.start().await;
    running.send(&harness::events(0, 100)).await;
    running.send(&harness::events(100, 200)).await;
    let (result, acks) = running.finish().await;
    let err = result.expect_err("the sink fails").to_string();
    assert!(err.contains(&topic), "{err}");
    assert!(acks.iter().all(|a| !a.delivered), "{acks:?}");
    assert_eq!(sink.telemetry().events_out, 0);
}

fn parse(p: &[u8]) -> Event {
    let v: serde_json::Value = serde_json::from_slice(p).unwrap();
    (
        v["sensor_id"].as_str().unwrap().to_string(),
        v["ts"].as_i64().unwrap(),
        v["value"].as_f64().unwrap(),
    )
}
