use super::*;
use arrow_array::Int64Array;
use arrow_schema::{DataType, Field, Schema};
use std::path::Path;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]))
}

fn batch(v: i64) -> RecordBatch {
    RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(vec![v, v + 1]))]).unwrap()
}

fn config(dir: &Path) -> DiskBufferConfig {
    DiskBufferConfig {
        path: dir.to_path_buf(),
        max_bytes: 1 << 20,
    }
}

/// Values of every record the buffer would hand to the sink, in order.
fn pending(buffer: &DiskBuffer) -> Vec<i64> {
    let state = buffer.lock();
    let metas: Vec<Meta> = state.index.iter().copied().collect();
    drop(state);
    let mut files = BTreeMap::new();
    metas
        .into_iter()
        .map(|m| {
            let b = buffer.read(m, &mut files).unwrap();
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .value(0)
        })
        .collect()
}

fn fill(dir: &Path, n: i64) {
    let (b, r) = DiskBuffer::open(&config(dir), schema()).unwrap();
    assert_eq!(r.records, 0);
    for i in 0..n {
        assert!(b.append(&batch(i * 10)).unwrap());
    }
}

fn segment(dir: &Path) -> PathBuf {
    dir.join(segment_name(0))
}

#[test]
fn records_survive_a_restart_and_acknowledged_ones_do_not_come_back() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 5);
    let (b, r) = DiskBuffer::open(&config(dir.path()), schema()).unwrap();
    assert_eq!(r.records, 5);
    assert!(r.damage.is_empty());
    assert_eq!(pending(&b), vec![0, 10, 20, 30, 40]);
    b.on_ack(1, true).unwrap();
    b.on_ack(0, true).unwrap();
    b.save_acked().unwrap();
    drop(b);
    let (b, r) = DiskBuffer::open(&config(dir.path()), schema()).unwrap();
    assert_eq!(r.records, 3);
    assert_eq!(pending(&b), vec![20, 30, 40]);
    // New records follow the old ones.
    b.append(&batch(50)).unwrap();
    assert_eq!(pending(&b), vec![20, 30, 40, 50]);
}

#[test]
fn a_flipped_bit_is_detected_reported_and_the_rest_recovered() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 6);
    let path = segment(dir.path());
    let mut data = fs::read(&path).unwrap();
    let (found, _, _) = scan(&data);
    // One bit inside the payload of the third record.
    let third = &found[2];
    data[third.offset as usize + HEADER + 7] ^= 0x10;
    fs::write(&path, &data).unwrap();
    let (b, r) = DiskBuffer::open(&config(dir.path()), schema()).unwrap();
    assert_eq!(r.records, 5);
    assert_eq!(r.damage.len(), 1, "{:?}", r.damage);
    let d = &r.damage[0].1;
    assert_eq!(d.offset, third.offset);
    assert!(d.reason.contains("checksum"), "{}", d.reason);
    assert_eq!(pending(&b), vec![0, 10, 30, 40, 50]);
}

#[test]
fn a_flipped_bit_in_a_length_is_resynchronised() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 4);
    let path = segment(dir.path());
    let mut data = fs::read(&path).unwrap();
    let (found, _, _) = scan(&data);
    data[found[1].offset as usize + 6] ^= 0x01; // high byte of record 2's length
    fs::write(&path, &data).unwrap();
    let (b, r) = DiskBuffer::open(&config(dir.path()), schema()).unwrap();
    assert_eq!(r.damage.len(), 1);
    assert_eq!(pending(&b), vec![0, 20, 30]);
}

#[test]
fn a_truncated_file_loses_only_its_torn_last_record() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 4);
    let path = segment(dir.path());
    let data = fs::read(&path).unwrap();
    let (found, _, _) = scan(&data);
    let cut = found[3].offset as usize + HEADER + 3;
    fs::write(&path, &data[..cut]).unwrap();
    let (b, r) = DiskBuffer::open(&config(dir.path()), schema()).unwrap();
    assert_eq!(r.records, 3);
    assert_eq!(r.damage.len(), 1);
    assert!(r.damage[0].1.reason.contains("truncated"), "{:?}", r.damage);
    assert_eq!(pending(&b), vec![0, 10, 20]);
    // The torn bytes are cut off, so appending goes on cleanly.
    assert_eq!(fs::metadata(&path).unwrap().len(), found[3].offset);
    drop(b);
    let (b, r) = DiskBuffer::open(&config(dir.path()), schema()).unwrap();
    assert!(r.damage.is_empty());
    b.append(&batch(99)).unwrap();
    assert_eq!(pending(&b), vec![0, 10, 20, 99]);
}

#[test]
fn a_full_buffer_waits_for_acknowledgements() {
    let dir = tempfile::tempdir().unwrap();
    let one = (HEADER + to_ipc(&batch(0)).unwrap().len()) as u64;
    let cfg = DiskBufferConfig {
        path: dir.path().to_path_buf(),
        max_bytes: one * 3,
    };
    let (b, _) = DiskBuffer::open(&cfg, schema()).unwrap();
    for i in 0..3 {
        b.append(&batch(i)).unwrap();
    }
    assert_eq!(b.bytes(), one * 3);
    let t = {
        let b = b.clone();
        std::thread::spawn(move || b.append(&batch(3)).unwrap())
    };
    // Space comes back with whole segments: two acknowledgements free nothing yet.
    b.on_ack(0, true).unwrap();
    b.on_ack(1, true).unwrap();
    assert_eq!(b.bytes(), one * 3);
    assert!(!t.is_finished() || b.bytes() <= one * 3);
    b.on_ack(2, true).unwrap();
    assert!(t.join().unwrap());
    assert_eq!(b.bytes(), one, "the fourth record, in a new segment");
    assert_eq!(pending(&b), vec![3]);
}
