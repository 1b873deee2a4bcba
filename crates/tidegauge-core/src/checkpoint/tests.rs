use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use super::store::{MANIFEST, file_names};
use super::*;
use serde_json::Value;

fn config(dir: &Path) -> CheckpointConfig {
    CheckpointConfig {
        dir: dir.to_path_buf(),
        interval_ms: 10,
        commit_interval_ms: 1,
    }
}

#[test]
fn write_atomic_replaces_whole_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f.json");
    write_atomic(&p, b"one").unwrap();
    write_atomic(&p, b"two").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"two");
    assert!(!dir.path().join("f.json.tmp").exists());
}

#[test]
fn a_checkpoint_round_trips_and_old_state_files_go() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = CheckpointStore::open(&config(dir.path())).unwrap();
    assert_eq!(store.last_id(), 0);
    let sources = BTreeMap::from([("in".to_string(), serde_json::json!({"offset": 5}))]);
    store
        .write(
            1,
            sources.clone(),
            BTreeMap::from([("z".to_string(), b"state-1".to_vec())]),
        )
        .unwrap();
    store
        .write(
            2,
            sources,
            BTreeMap::from([("z".to_string(), b"state-2".to_vec())]),
        )
        .unwrap();
    let again = CheckpointStore::open(&config(dir.path())).unwrap();
    assert_eq!(again.last_id(), 2);
    assert_eq!(
        again.transform_state("z").unwrap().unwrap(),
        b"state-2".to_vec()
    );
    assert_eq!(
        again.source_position("in"),
        Some(serde_json::json!({"offset": 5}))
    );
    let mut store = again;
    for id in 3..=5 {
        store
            .write(
                id,
                BTreeMap::new(),
                BTreeMap::from([("z".to_string(), format!("state-{id}").into_bytes())]),
            )
            .unwrap();
    }
    let names = |d: &Path| file_names(d).unwrap();
    assert_eq!(
        names(&dir.path().join("state")),
        ["z-3.bin", "z-4.bin", "z-5.bin"]
    );
    assert_eq!(
        names(dir.path())
            .into_iter()
            .filter(|n| n.starts_with("checkpoint"))
            .collect::<Vec<_>>(),
        ["checkpoint-3.json", "checkpoint-4.json", "checkpoint.json"],
        "the {KEEP} newest are kept"
    );
}

fn write_states(store: &mut CheckpointStore, ids: std::ops::RangeInclusive<u64>) {
    for id in ids {
        store
            .write(
                id,
                BTreeMap::from([("in".to_string(), serde_json::json!(id * 10))]),
                BTreeMap::from([("z".to_string(), format!("state-{id}").into_bytes())]),
            )
            .unwrap();
    }
}

#[test]
fn a_damaged_newest_checkpoint_falls_back_to_the_one_before() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = CheckpointStore::open(&config(dir.path())).unwrap();
    write_states(&mut store, 1..=3);
    fs::write(dir.path().join("state/z-3.bin"), b"state-X").unwrap();
    let again = CheckpointStore::open(&config(dir.path())).unwrap();
    assert_eq!(again.last_id(), 2);
    assert_eq!(again.transform_state("z").unwrap().unwrap(), b"state-2");
    assert_eq!(again.source_position("in"), Some(serde_json::json!(20)));
    assert_eq!(
        again
            .telemetry()
            .restore_fallbacks
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The next checkpoint replaces the damaged one and keeps the intact ones.
    let mut store = again;
    write_states(&mut store, 4..=4);
    let again = CheckpointStore::open(&config(dir.path())).unwrap();
    assert_eq!(again.last_id(), 4);
    assert_eq!(again.history.len(), 2);
    assert_eq!(again.history[0].manifest.id, 2);

    // A garbled or missing checkpoint.json: the same.
    fs::write(dir.path().join(MANIFEST), b"{\"version\":1,").unwrap();
    assert_eq!(
        CheckpointStore::open(&config(dir.path()))
            .unwrap()
            .last_id(),
        2
    );
    fs::remove_file(dir.path().join(MANIFEST)).unwrap();
    assert_eq!(
        CheckpointStore::open(&config(dir.path()))
            .unwrap()
            .last_id(),
        2
    );
}

#[test]
fn a_damaged_only_state_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = CheckpointStore::open(&config(dir.path())).unwrap();
    write_states(&mut store, 1..=1);
    let path = dir.path().join("state/z-1.bin");
    fs::write(&path, b"state-X").unwrap();
    let e = CheckpointStore::open(&config(dir.path()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("checksum") && e.contains("--reset-state"), "{e}");
    fs::write(&path, b"abc").unwrap();
    let e = CheckpointStore::open(&config(dir.path()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 bytes"), "{e}");
}

#[test]
fn positions_without_a_manifest_are_refused_until_reset() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = CheckpointStore::open(&config(dir.path())).unwrap();
    store.begin(BTreeMap::new()).unwrap();
    assert!(
        dir.path().join(MANIFEST).exists(),
        "a first, empty checkpoint"
    );
    let h = store.source_handle("in");
    h.commit(serde_json::json!(25)).unwrap();
    h.flush().unwrap();
    assert_eq!(
        CheckpointStore::open(&config(dir.path()))
            .unwrap()
            .source_position("in"),
        Some(serde_json::json!(25))
    );
    fs::remove_file(dir.path().join(MANIFEST)).unwrap();
    let e = CheckpointStore::open(&config(dir.path())).unwrap_err();
    assert!(matches!(e, CheckpointError::Missing { .. }), "{e}");
    assert_eq!(reset(&config(dir.path())).unwrap(), 1);
    let again = CheckpointStore::open(&config(dir.path())).unwrap();
    assert_eq!(again.source_position("in"), None);
}

#[test]
fn a_damaged_acknowledged_position_gives_way_to_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = CheckpointStore::open(&config(dir.path())).unwrap();
    write_states(&mut store, 1..=1);
    let acked = dir.path().join("acked/in.json");
    fs::write(&acked, b"{\"version\":").unwrap();
    let again = CheckpointStore::open(&config(dir.path())).unwrap();
    assert_eq!(again.source_position("in"), Some(serde_json::json!(10)));
    // A source the checkpoint does not place: still an error.
    fs::write(dir.path().join("acked/other.json"), b"{").unwrap();
    let e = CheckpointStore::open(&config(dir.path()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("other"), "{e}");
}

#[test]
fn a_checkpoint_of_other_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let identity = |path: &str| {
        BTreeMap::from([(
            "in".to_string(),
            InputIdentity {
                type_name: "file".into(),
                input: serde_json::json!([{ "path": path }]),
            },
        )])
    };
    let mut store = CheckpointStore::open(&config(dir.path())).unwrap();
    store.begin(identity("/a.jsonl")).unwrap();
    write_states(&mut store, 1..=1);
    let mut again = CheckpointStore::open(&config(dir.path())).unwrap();
    again.begin(identity("/a.jsonl")).unwrap();
    let mut again = CheckpointStore::open(&config(dir.path())).unwrap();
    let e = again.begin(identity("/b.jsonl")).unwrap_err().to_string();
    assert!(e.contains("/a.jsonl") && e.contains("/b.jsonl"), "{e}");
    let mut again = CheckpointStore::open(&config(dir.path())).unwrap();
    let other = BTreeMap::from([(
        "mqtt_in".to_string(),
        InputIdentity {
            type_name: "mqtt".into(),
            input: Value::Null,
        },
    )]);
    let e = again.begin(other).unwrap_err().to_string();
    assert!(e.contains("another") || e.contains("pipeline"), "{e}");
}

#[test]
fn a_file_is_known_by_its_first_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("in.jsonl");
    fs::write(&p, vec![b'a'; 100]).unwrap();
    let first = file_identity(&p, false);
    fs::OpenOptions::new()
        .append(true)
        .open(&p)
        .unwrap()
        .write_all(b"more")
        .unwrap();
    assert_eq!(
        file_identity(&p, false),
        first,
        "appending keeps the identity"
    );
    fs::write(&p, vec![b'b'; 100]).unwrap();
    assert_ne!(file_identity(&p, false), first, "other content");
    assert_eq!(
        file_identity(&p, true),
        serde_json::json!({"path": fs::canonicalize(&p).unwrap().display().to_string()})
    );
}

#[test]
fn acknowledged_positions_win_only_without_transform_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = CheckpointStore::open(&config(dir.path())).unwrap();
    store
        .write(
            1,
            BTreeMap::from([("in".to_string(), serde_json::json!(10))]),
            BTreeMap::new(),
        )
        .unwrap();
    let h = store.source_handle("in");
    h.commit(serde_json::json!(25)).unwrap();
    h.flush().unwrap();
    let again = CheckpointStore::open(&config(dir.path())).unwrap();
    assert_eq!(again.source_position("in"), Some(serde_json::json!(25)));

    let mut store = again;
    store
        .write(
            2,
            BTreeMap::from([("in".to_string(), serde_json::json!(12))]),
            BTreeMap::from([("z".to_string(), b"s".to_vec())]),
        )
        .unwrap();
    let again = CheckpointStore::open(&config(dir.path())).unwrap();
    assert_eq!(
        again.source_position("in"),
        Some(serde_json::json!(12)),
        "transform state was taken at 12: resuming at 25 would skip events it never saw"
    );
}

#[test]
fn a_garbled_manifest_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(MANIFEST), b"{\"version\":1,").unwrap();
    let e = CheckpointStore::open(&config(dir.path())).unwrap_err();
    assert!(matches!(e, CheckpointError::Corrupt { .. }), "{e}");
}

#[test]
fn no_position_is_written_ahead_of_the_dead_letters_before_it() {
    use crate::dead_letter::{DeadLetter, DeadLetterConfig};
    let dir = tempfile::tempdir().unwrap();
    let dl_path = dir.path().join("dead.jsonl");
    let dl = DeadLetter::open(&DeadLetterConfig {
        path: Some(dl_path.clone()),
        max_raw_bytes: 64,
    })
    .unwrap();
    let on_disk = || {
        fs::read_to_string(&dl_path)
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
            .count()
    };
    let mut store = CheckpointStore::open(&config(dir.path().join("cp").as_path())).unwrap();
    store.set_dead_letter(dl.clone());
    let handle = store.source_handle("in");
    for line in 1..=20u64 {
        // The source dead-letters line `line`, then (once the batch is delivered)
        // commits the position after it. What is on disk at that moment is what a
        // kill -9 right after the commit leaves.
        dl.write("in", &format!("in.csv:{line}"), "bad number", b"x");
        assert_eq!(
            on_disk(),
            line as usize - 1,
            "line {line} is still buffered"
        );
        std::thread::sleep(std::time::Duration::from_millis(2)); // past commit_interval_ms
        handle
            .commit(serde_json::json!({ "line": line + 1 }))
            .unwrap();
        let acked: Value =
            serde_json::from_slice(&fs::read(dir.path().join("cp/acked/in.json")).unwrap())
                .unwrap();
        assert_eq!(acked["position"]["line"], line + 1);
        assert_eq!(
            on_disk(),
            line as usize,
            "position past line {line} written first"
        );
    }
    // A checkpoint's positions likewise.
    dl.write("in", "in.csv:21", "bad number", b"x");
    store
        .write(
            1,
            BTreeMap::from([("in".to_string(), serde_json::json!({"line": 22}))]),
            BTreeMap::new(),
        )
        .unwrap();
    assert_eq!(on_disk(), 21);
}
