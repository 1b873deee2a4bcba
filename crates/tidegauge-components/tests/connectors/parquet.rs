//! `parquet` sink: real files, read back with the parquet reader.

use std::path::{Path, PathBuf};

use futures_util::FutureExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::harness::{self, Event, Harness, check_sink};

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn is_visible_parquet(p: &Path) -> bool {
    let name = p.file_name().unwrap().to_string_lossy();
    name.ends_with(".parquet") && !name.starts_with('.')
}

/// The events of every complete (visible) file; each must read whole.
fn read_dir(dir: &Path) -> Vec<Event> {
    let mut out = Vec::new();
    for p in files(dir).into_iter().filter(|p| is_visible_parquet(p)) {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&p).unwrap())
            .unwrap_or_else(|e| panic!("{} is not a whole Parquet file: {e}", p.display()))
            .build()
            .unwrap();
        let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
        out.extend(harness::rows(&batches));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_sink_compliance() {
    let h = Harness::new();
    let dir = h.dir.path().join("out");
    let sink = h.sink(&format!(
        "type = \"parquet\"\npath = \"{}\"\nmax_file_age_ms = 50",
        dir.display()
    ));
    let read_back = |_expect: usize| {
        let dir = dir.clone();
        async move { read_dir(&dir) }.boxed()
    };
    check_sink(&sink, &read_back).await;
    assert!(
        files(&dir).iter().all(|p| is_visible_parquet(p)),
        "no temporary file left: {:?}",
        files(&dir)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_sink_partitions_by_date_and_key_and_rolls_by_size() {
    let h = Harness::new();
    let dir = h.dir.path().join("out");
    let sink = h.sink(&format!(
        "type = \"parquet\"\npath = \"{}\"\npartition_by = [\"date\", \"sensor_id\"]\nmax_file_bytes = 400\nmax_file_age_ms = 600000\nrow_group_rows = 64",
        dir.display()
    ));
    let mut running = sink.start().await;
    // Two days apart: 2023-11-14 and 2023-11-16 (UTC).
    let mut sent: Vec<Event> = harness::events(0, 2000);
    for e in sent.iter_mut().skip(1000) {
        e.1 += 2 * 86_400_000;
    }
    for chunk in sent.chunks(100) {
        running.send(chunk).await;
        // Whatever is visible at any moment is a whole file.
        read_dir(&dir);
    }
    let (r, acks) = running.finish().await;
    r.unwrap();
    assert_eq!(acks.len(), 20);
    assert_eq!(harness::sorted(read_dir(&dir)), sent);
    let all = files(&dir);
    assert!(all.iter().all(|p| is_visible_parquet(p)), "{all:?}");
    for p in &all {
        let rel = p.strip_prefix(&dir).unwrap().to_string_lossy().into_owned();
        assert!(
            rel.starts_with("date=2023-11-14/sensor_id=s-")
                || rel.starts_with("date=2023-11-16/sensor_id=s-"),
            "{rel}"
        );
        // Every event in a partition directory has that partition's key.
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(p).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
        for e in harness::rows(&batches) {
            assert!(
                rel.contains(&format!("sensor_id={}/", e.0)),
                "{rel} holds {e:?}"
            );
        }
    }
    // 14 partitions; the size limit rolled some of them into several files.
    let dirs: std::collections::BTreeSet<_> = all
        .iter()
        .map(|p| p.parent().unwrap().to_path_buf())
        .collect();
    assert_eq!(dirs.len(), 14);
    assert!(
        all.len() > dirs.len(),
        "files rolled by size: {} files",
        all.len()
    );
}
