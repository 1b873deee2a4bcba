//! Every registered source and sink is under a compliance test: the harness's
//! (`check_source`, `check_sink`) where its promises can be driven in process, or the
//! test named here that checks them another way (a process's standard streams, a
//! generator with no input). A connector registered without an entry fails this test,
//! naming what is missing; an entry naming a test that does not exist fails too.

use tidegauge_core::registry::{self, ComponentKind};

const FILES: &str = include_str!("files.rs");
const HTTP: &str = include_str!("http.rs");
const KAFKA: &str = include_str!("kafka.rs");
const MQTT: &str = include_str!("mqtt.rs");
const NATS: &str = include_str!("nats.rs");
const PARQUET: &str = include_str!("parquet.rs");
const POSTGRES: &str = include_str!("postgres.rs");
const HTTP_POLL: &str = include_str!("../http_poll.rs");
const SIMULATE: &str = include_str!("../../src/sources/simulate.rs");
const LIFECYCLE: &str = include_str!("../../../tidegauge/tests/it/lifecycle.rs");

use ComponentKind::{Sink, Source};

/// (kind, type, text of the file holding the test, the test function).
const COVERED: &[(ComponentKind, &str, &str, &str)] = &[
    (Source, "file", FILES, "file_source_compliance"),
    (Source, "kafka", KAFKA, "kafka_source_compliance"),
    (Source, "mqtt", MQTT, "mqtt_source_compliance"),
    (Source, "nats", NATS, "nats_source_compliance"),
    // Polls a server instead of consuming a stream: acknowledgements and redelivery do
    // not apply; its own test drives faults, retries, breakers and stale rows.
    (
        Source,
        "http_poll",
        HTTP_POLL,
        "faults_give_retries_breakers_stale_rows_and_missing_data",
    ),
    // Generates its own events: no input to publish, nothing to redeliver.
    (
        Source,
        "simulate",
        SIMULATE,
        "same_seed_same_stream_other_seed_other_stream",
    ),
    // The process's standard streams: driven through the binary.
    (Source, "stdin", LIFECYCLE, "stdin_to_json_stdout"),
    (Sink, "stdout", LIFECYCLE, "stdin_to_json_stdout"),
    (Sink, "jsonl", FILES, "jsonl_sink_compliance"),
    (Sink, "parquet", PARQUET, "parquet_sink_compliance"),
    (Sink, "http", HTTP, "http_sink_compliance"),
    (
        Sink,
        "kafka",
        KAFKA,
        "kafka_sink_compliance_with_keys_and_compression",
    ),
    (Sink, "mqtt", MQTT, "mqtt_sink_compliance"),
    (Sink, "nats", NATS, "nats_sink_compliance"),
    (Sink, "postgres", POSTGRES, "postgres_sink_compliance"),
];

#[test]
fn every_registered_source_and_sink_has_a_compliance_test() {
    let mut missing = Vec::new();
    for d in registry::all() {
        if d.kind == ComponentKind::Transform {
            continue;
        }
        let entry = COVERED
            .iter()
            .find(|(kind, name, _, _)| *kind == d.kind && *name == d.type_name);
        match entry {
            None => missing.push(format!(
                "{:?} `{}` has no compliance test: add one through the harness (check_source / check_sink) and list it here",
                d.kind, d.type_name
            )),
            Some((_, _, text, test)) if !text.contains(&format!("fn {test}(")) => missing.push(
                format!("{:?} `{}`: its test `{test}` does not exist", d.kind, d.type_name),
            ),
            Some(_) => {}
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn the_table_names_only_registered_connectors() {
    // With every connector feature on, every entry is registered: a renamed or removed
    // connector leaves no stale entry behind. (With fewer features, some are absent.)
    if !cfg!(all(
        feature = "kafka",
        feature = "mqtt",
        feature = "nats",
        feature = "postgres",
        feature = "parquet",
        feature = "http"
    )) {
        return;
    }
    for (kind, name, _, _) in COVERED {
        assert!(
            registry::find(*kind, name).is_some(),
            "{kind:?} `{name}` is listed but not registered"
        );
    }
}
