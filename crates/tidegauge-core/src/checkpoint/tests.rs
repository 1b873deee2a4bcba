use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::store::MANIFEST;
use super::*;

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
    let files: Vec<_> = fs::read_dir(dir.path().join("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, vec!["z-2.bin".to_string()]);
}

#[test]
fn a_damaged_state_file_is_reported_not_restored() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = CheckpointStore::open(&config(dir.path())).unwrap();
    store
        .write(
            1,
            BTreeMap::new(),
            BTreeMap::from([("z".to_string(), b"abcdef".to_vec())]),
        )
        .unwrap();
    let path = dir.path().join("state/z-1.bin");
    fs::write(&path, b"abcdeF").unwrap();
    let again = CheckpointStore::open(&config(dir.path())).unwrap();
    let e = again.transform_state("z").unwrap_err().to_string();
    assert!(e.contains("checksum"), "{e}");
    fs::write(&path, b"abc").unwrap();
    let e = again.transform_state("z").unwrap_err().to_string();
    assert!(e.contains("3 bytes"), "{e}");
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
