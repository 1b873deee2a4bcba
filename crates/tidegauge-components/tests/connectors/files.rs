//! The file connectors through the compliance harness: the `file` source (following a
//! growing file, its position committed as acknowledged) and the `jsonl` sink.

use std::io::Write;
use std::path::Path;

use futures_util::FutureExt;

use crate::harness::{self, Event, Harness, SOURCE_BATCH, check_sink, check_source};

/// The events of a JSON Lines file, as the sink wrote them.
fn read_jsonl(path: &Path) -> Vec<Event> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("whole JSON lines");
            (
                v["sensor_id"].as_str().unwrap().to_string(),
                v["ts"].as_i64().unwrap(),
                v["value"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_sink_compliance() {
    let h = Harness::new();
    let path = h.dir.path().join("out.jsonl");
    let sink = h.sink(&format!("type = \"jsonl\"\npath = \"{}\"", path.display()));
    let read_back = |_expect: usize| {
        let path = path.clone();
        async move { read_jsonl(&path) }.boxed()
    };
    check_sink(&sink, &read_back).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_source_compliance() {
    let h = Harness::new();
    let path = h.dir.path().join("in.jsonl");
    std::fs::write(&path, "").unwrap();
    let source = h.source_with_positions(&format!(
        "type = \"file\"\npaths = [\"{}\"]\nfollow = true\n{SOURCE_BATCH}",
        path.display()
    ));
    // Publishing is appending whole lines to the followed file.
    let publish = |payloads: Vec<Vec<u8>>| {
        let path = path.clone();
        async move {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            for p in payloads {
                f.write_all(&p).unwrap();
                f.write_all(b"\n").unwrap();
            }
        }
        .boxed()
    };
    check_source(&h, &source, &publish, "in.jsonl").await;
}

#[test]
fn read_back_parses_what_the_sink_writes() {
    let e = harness::events(0, 2);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.jsonl");
    let text: String = e.iter().map(|e| harness::json(e) + "\n").collect();
    std::fs::write(&p, text).unwrap();
    assert_eq!(read_jsonl(&p), e);
}
