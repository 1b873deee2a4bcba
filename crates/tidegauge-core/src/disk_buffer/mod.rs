//! A disk buffer in front of a sink: `buffer = { path = "...", max_bytes = ... }` in any
//! sink's table.
//!
//! Batches the sink is sent are appended to segment files and fsynced; only then are
//! they acknowledged upstream (so sources may commit: the buffer is durable storage).
//! A reader hands them to the sink in order; once the sink has made a batch durable, its
//! record is acknowledged and segments whose records are all acknowledged are deleted.
//! The buffer holds at most `max_bytes`; when full, it takes nothing more and
//! backpressure reaches the sources. What is still in it when the process stops (or is
//! killed) is handed to the sink again at the next start: delivery is at least once.
//!
//! Record format, in `seg-<n>.log` files: magic `TGB1`, payload length (u32 LE), CRC-32
//! of length + sequence number + payload (u32 LE), sequence number (u64 LE), payload (an
//! Arrow IPC stream of one batch). The highest sequence number below which everything
//! was acknowledged is kept in `acked` (written atomically). On open every segment is
//! scanned: a record whose checksum does not match is reported and skipped (scanning
//! resumes at the next record that checks out), a truncated record at the end of a file
//! is reported and cut off; every other record is recovered.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::ack::{AckReceiver, Finalizers, ack_channel};
use crate::batch::Batch;
use crate::checkpoint::write_atomic;
use crate::component::{ComponentContext, Message, SinkInput};
use crate::error::{ComponentError, ConfigError};
use crate::telemetry::ComponentErrorOccurred;

/// `buffer = { ... }` in a sink's table.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiskBufferConfig {
    /// Directory of this sink's buffer (created; one directory per sink).
    pub path: PathBuf,
    /// Most bytes the buffer keeps on disk; when full, no more events are taken in.
    #[serde(default = "default_max_bytes")]
    #[schemars(range(min = 1))]
    pub max_bytes: u64,
}

fn default_max_bytes() -> u64 {
    256 << 20
}

impl DiskBufferConfig {
    /// What the schema's ranges cannot say (they are checked from the schema when the
    /// file is read); paths under `prefix` (`sinks.out.buffer`).
    pub fn validate(&self, prefix: &str) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if self.path.as_os_str().is_empty() {
            errors.push(ConfigError::new(
                format!("{prefix}.path"),
                "expected a directory",
            ));
        }
        errors
    }
}

const MAGIC: &[u8; 4] = b"TGB1";
const HEADER: usize = 20;
/// Largest payload accepted when scanning (a corrupted length beyond it is not trusted).
const MAX_PAYLOAD: u32 = 1 << 30;

fn checksum(len: u32, seq: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&seq.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// The bytes of one record.
pub fn encode_record(seq: u64, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(len, seq, payload).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A record found by [`scan`]: sequence number, offset of its header, payload range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Sequence number.
    pub seq: u64,
    /// Offset of the record in the file.
    pub offset: u64,
    /// Payload length.
    pub len: u32,
}

/// A damaged stretch of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Offset where it starts.
    pub offset: u64,
    /// Bytes skipped or cut off.
    pub bytes: u64,
    /// What was wrong.
    pub reason: String,
}

/// A record that checks out at `pos`, if any.
fn record_at(data: &[u8], pos: usize) -> Option<Found> {
    let head = data.get(pos..pos + HEADER)?;
    if &head[0..4] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(head[4..8].try_into().ok()?);
    let crc = u32::from_le_bytes(head[8..12].try_into().ok()?);
    let seq = u64::from_le_bytes(head[12..20].try_into().ok()?);
    if len > MAX_PAYLOAD {
        return None;
    }
    let payload = data.get(pos + HEADER..pos + HEADER + len as usize)?;
    (checksum(len, seq, payload) == crc).then_some(Found {
        seq,
        offset: pos as u64,
        len,
    })
}

/// Scans a segment's bytes: the records that check out, the damaged stretches, and the
/// length up to the end of the last good record when the file ends in a torn record
/// (where it should be cut).
pub fn scan(data: &[u8]) -> (Vec<Found>, Vec<Damage>, Option<u64>) {
    let mut found = Vec::new();
    let mut damage = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        if let Some(r) = record_at(data, pos) {
            pos += HEADER + r.len as usize;
            found.push(r);
            continue;
        }
        // Resynchronise at the next record that checks out.
        let next = (pos + 1..data.len())
            .filter(|&p| data[p..].starts_with(MAGIC))
            .find(|&p| record_at(data, p).is_some());
        match next {
            Some(n) => {
                damage.push(Damage {
                    offset: pos as u64,
                    bytes: (n - pos) as u64,
                    reason: "checksum mismatch or garbled header; record skipped".into(),
                });
                pos = n;
            }
            None => {
                let head_ok = data.get(pos..pos + 4) == Some(&MAGIC[..]);
                let torn = head_ok
                    && data
                        .get(pos + 4..pos + 8)
                        .and_then(|b| b.try_into().ok())
                        .map(u32::from_le_bytes)
                        .is_none_or(|len| pos + HEADER + len as usize > data.len());
                damage.push(Damage {
                    offset: pos as u64,
                    bytes: (data.len() - pos) as u64,
                    reason: if torn || data.len() - pos < HEADER {
                        "truncated record at the end of the file; cut off".into()
                    } else {
                        "checksum mismatch; rest of the file skipped".into()
                    },
                });
                return (found, damage, Some(pos as u64));
            }
        }
    }
    (found, damage, None)
}

/// Encodes a batch as an Arrow IPC stream.
fn to_ipc(batch: &RecordBatch) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut buf, &batch.schema())
        .map_err(io::Error::other)?;
    w.write(batch).map_err(io::Error::other)?;
    w.finish().map_err(io::Error::other)?;
    drop(w);
    Ok(buf)
}

fn from_ipc(payload: &[u8]) -> io::Result<RecordBatch> {
    let mut r = arrow_ipc::reader::StreamReader::try_new(io::Cursor::new(payload), None)
        .map_err(io::Error::other)?;
    match r.next() {
        Some(b) => b.map_err(io::Error::other),
        None => Err(io::Error::other("empty record")),
    }
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    seq: u64,
    segment: u64,
    offset: u64,
    len: u32,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    bytes: u64,
    /// Highest sequence number in it (none: no good record).
    last_seq: Option<u64>,
}

struct State {
    /// Records on disk not acknowledged yet, in order.
    index: VecDeque<Meta>,
    /// Position in `index` of the next record for the sink.
    next_read: usize,
    segments: BTreeMap<u64, Segment>,
    write_segment: u64,
    write_file: Option<File>,
    next_seq: u64,
    bytes: u64,
    acked_upto: u64,
    acked: BTreeSet<u64>,
    input_closed: bool,
    sink_gone: bool,
    failed: bool,
}

/// What opening a buffer found.
#[derive(Debug, Default, Clone)]
pub struct Recovery {
    /// Records recovered, to be handed to the sink again.
    pub records: u64,
    /// Damaged stretches found, per segment file.
    pub damage: Vec<(PathBuf, Damage)>,
}

/// A sink's disk buffer. See the module documentation.
pub struct DiskBuffer {
    config: DiskBufferConfig,
    schema: SchemaRef,
    segment_bytes: u64,
    state: Mutex<State>,
    changed: Condvar,
}

fn segment_name(n: u64) -> String {
    format!("seg-{n:012}.log")
}

impl DiskBuffer {
    /// Opens (creating) the buffer directory and recovers what an earlier run left.
    pub fn open(config: &DiskBufferConfig, schema: SchemaRef) -> io::Result<(Arc<Self>, Recovery)> {
        fs::create_dir_all(&config.path)?;
        let acked_upto = match fs::read_to_string(config.path.join("acked")) {
            Ok(t) => t.trim().parse::<u64>().map_err(|e| {
                io::Error::other(format!(
                    "{}: not a sequence number: {e}",
                    config.path.join("acked").display()
                ))
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let mut numbers: Vec<u64> = fs::read_dir(&config.path)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix("seg-")?
                    .strip_suffix(".log")?
                    .parse::<u64>()
                    .ok()
            })
            .collect();
        numbers.sort_unstable();
        let mut recovery = Recovery::default();
        let mut index = VecDeque::new();
        let mut segments = BTreeMap::new();
        let mut bytes = 0;
        let mut max_seq = None;
        for n in &numbers {
            let path = config.path.join(segment_name(*n));
            let mut data = Vec::new();
            File::open(&path)?.read_to_end(&mut data)?;
            let (found, damage, cut) = scan(&data);
            recovery
                .damage
                .extend(damage.into_iter().map(|d| (path.clone(), d)));
            let mut len = data.len() as u64;
            if let Some(cut) = cut {
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(cut)?;
                f.sync_all()?;
                len = cut;
            }
            let mut last = None;
            for r in found {
                max_seq = max_seq.max(Some(r.seq));
                last = last.max(Some(r.seq));
                if r.seq >= acked_upto {
                    index.push_back(Meta {
                        seq: r.seq,
                        segment: *n,
                        offset: r.offset,
                        len: r.len,
                    });
                }
            }
            if last.is_none_or(|l| l < acked_upto) {
                // Nothing left to deliver in it.
                fs::remove_file(&path)?;
                continue;
            }
            bytes += len;
            segments.insert(
                *n,
                Segment {
                    path,
                    bytes: len,
                    last_seq: last,
                },
            );
        }
        recovery.records = index.len() as u64;
        let segment_bytes = (config.max_bytes / 8).clamp(64 << 10, 64 << 20);
        let buffer = DiskBuffer {
            config: config.clone(),
            schema,
            segment_bytes,
            state: Mutex::new(State {
                index,
                next_read: 0,
                segments,
                write_segment: numbers.last().map_or(0, |n| n + 1),
                write_file: None,
                next_seq: max_seq.map_or(acked_upto, |m| (m + 1).max(acked_upto)),
                bytes,
                acked_upto,
                acked: BTreeSet::new(),
                input_closed: false,
                sink_gone: false,
                failed: false,
            }),
            changed: Condvar::new(),
        };
        Ok((Arc::new(buffer), recovery))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes on disk now.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Appends a batch and makes it durable. Waits while the buffer is full.
    pub fn append(&self, batch: &RecordBatch) -> io::Result<bool> {
        let payload = to_ipc(batch)?;
        let mut state = self.lock();
        let need = (HEADER + payload.len()) as u64;
        while state.bytes + need > self.config.max_bytes
            && !state.index.is_empty()
            && !state.sink_gone
        {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        if state.sink_gone {
            return Ok(false);
        }
        let seq = state.next_seq;
        let record = encode_record(seq, &payload);
        let current = state.write_segment;
        let rotate = state
            .segments
            .get(&current)
            .is_some_and(|s| s.bytes + record.len() as u64 > self.segment_bytes);
        if rotate || state.write_file.is_none() {
            if rotate {
                if let Some(f) = state.write_file.take() {
                    f.sync_all()?;
                }
                state.write_segment += 1;
            }
            let n = state.write_segment;
            let path = self.config.path.join(segment_name(n));
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            crate::checkpoint::sync_dir(&self.config.path)?;
            state.write_file = Some(file);
            state.segments.entry(n).or_insert(Segment {
                path,
                bytes: 0,
                last_seq: None,
            });
        }
        let n = state.write_segment;
        let offset = state.segments.get(&n).map_or(0, |s| s.bytes);
        if let Some(f) = state.write_file.as_mut() {
            f.write_all(&record)?;
            f.sync_data()?;
        }
        if let Some(s) = state.segments.get_mut(&n) {
            s.bytes += record.len() as u64;
            s.last_seq = Some(seq);
        }
        state.bytes += record.len() as u64;
        state.next_seq += 1;
        state.index.push_back(Meta {
            seq,
            segment: n,
            offset,
            len: payload.len() as u32,
        });
        drop(state);
        self.changed.notify_all();
        Ok(true)
    }

    /// The next record for the sink: `None` once the input has closed and everything was
    /// handed out (or the sink is gone).
    fn next(&self) -> Option<Meta> {
        let mut state = self.lock();
        loop {
            if state.sink_gone {
                return None;
            }
            if state.next_read < state.index.len() {
                let m = state.index[state.next_read];
                state.next_read += 1;
                return Some(m);
            }
            if state.input_closed {
                return None;
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn read(&self, meta: Meta, files: &mut BTreeMap<u64, File>) -> io::Result<RecordBatch> {
        let file = match files.get_mut(&meta.segment) {
            Some(f) => f,
            None => {
                let f = File::open(self.config.path.join(segment_name(meta.segment)))?;
                files.entry(meta.segment).or_insert(f)
            }
        };
        let mut record = vec![0u8; HEADER + meta.len as usize];
        file.seek(SeekFrom::Start(meta.offset))?;
        file.read_exact(&mut record)?;
        if record_at(&record, 0).is_none_or(|r| r.seq != meta.seq) {
            return Err(io::Error::other("checksum mismatch on reading back"));
        }
        from_ipc(&record[HEADER..])
    }

    /// Records acknowledgements; deletes segments that hold nothing unacknowledged.
    fn on_ack(&self, seq: u64, delivered: bool) -> io::Result<bool> {
        let mut state = self.lock();
        if !delivered {
            state.failed = true;
        }
        if state.failed {
            return Ok(false);
        }
        state.acked.insert(seq);
        // Records leave the front of the index once acknowledged; what was skipped as
        // damaged never was in it, so it holds nothing back.
        let mut popped = 0;
        while let Some(front) = state.index.front().map(|m| m.seq) {
            if !state.acked.remove(&front) {
                break;
            }
            state.index.pop_front();
            popped += 1;
        }
        if popped == 0 {
            return Ok(false);
        }
        state.next_read = state.next_read.saturating_sub(popped);
        state.acked_upto = state.index.front().map_or(state.next_seq, |m| m.seq);
        let upto = state.acked_upto;
        let done: Vec<u64> = state
            .segments
            .iter()
            .filter(|(_, s)| s.last_seq.is_none_or(|l| l < upto))
            .map(|(n, _)| *n)
            .collect();
        for n in done {
            if n == state.write_segment {
                // Everything in the segment being written is acknowledged: the next
                // record starts a new one.
                state.write_file = None;
                state.write_segment += 1;
            }
            if let Some(s) = state.segments.remove(&n) {
                fs::remove_file(&s.path)?;
                state.bytes -= s.bytes;
            }
        }
        drop(state);
        self.changed.notify_all();
        Ok(true)
    }

    fn save_acked(&self) -> io::Result<()> {
        let upto = self.lock().acked_upto;
        write_atomic(&self.config.path.join("acked"), upto.to_string().as_bytes())
    }

    fn close_input(&self) {
        self.lock().input_closed = true;
        self.changed.notify_all();
    }

    fn sink_gone(&self) {
        self.lock().sink_gone = true;
        self.changed.notify_all();
    }

    /// Runs the buffer between `input` (what the sink is sent) and `to_sink` (what the
    /// sink reads): a writer, a reader and the acknowledgement keeper, each on a thread
    /// of its own. Ends when the input has closed and the sink has everything, or the
    /// sink is gone.
    pub async fn run(
        self: Arc<Self>,
        mut input: SinkInput,
        to_sink: mpsc::Sender<Message>,
        component: ComponentContext,
    ) -> Result<(), ComponentError> {
        let (acks, ack_rx) = ack_channel();
        let writer = {
            let buffer = self.clone();
            let component = component.clone();
            tokio::task::spawn_blocking(move || -> Result<(), ComponentError> {
                while let Some(batch) = input.blocking_recv() {
                    match buffer.append(&batch.data) {
                        // Durable in the buffer: upstream may count it delivered.
                        Ok(true) => batch.finalizers.release(),
                        Ok(false) => {
                            batch.finalizers.fail();
                            break;
                        }
                        Err(e) => {
                            batch.finalizers.fail();
                            buffer.sink_gone();
                            let msg = format!(
                                "cannot write the disk buffer {}: {e}",
                                buffer.config.path.display()
                            );
                            component.emit(ComponentErrorOccurred { error: &msg });
                            return Err(ComponentError::new(msg));
                        }
                    }
                }
                buffer.close_input();
                Ok(())
            })
        };
        let reader = {
            let buffer = self.clone();
            let component = component.clone();
            tokio::task::spawn_blocking(move || {
                let mut files = BTreeMap::new();
                while let Some(meta) = buffer.next() {
                    let token = Finalizers::one(acks.token(meta.seq));
                    let batch = match buffer.read(meta, &mut files) {
                        Ok(b) if b.schema().fields() == buffer.schema.fields() => b,
                        Ok(_) => {
                            component.dead_letter(
                                &format!("{}#{}", buffer.config.path.display(), meta.seq),
                                "buffered batch does not have the sink's input schema (the pipeline changed); skipped",
                                b"",
                            );
                            continue;
                        }
                        Err(e) => {
                            component.dead_letter(
                                &format!("{}#{}", buffer.config.path.display(), meta.seq),
                                &format!("cannot read buffered batch back: {e}; skipped"),
                                b"",
                            );
                            continue;
                        }
                    };
                    if to_sink
                        .blocking_send(Message::Batch(Batch::with_finalizers(batch, token)))
                        .is_err()
                    {
                        buffer.sink_gone();
                        break;
                    }
                    // Segments of acknowledged records may be gone; reopen as needed.
                    files.retain(|n, _| *n >= meta.segment);
                }
            })
        };
        let keeper = {
            let buffer = self.clone();
            tokio::task::spawn_blocking(move || keep_acks(&buffer, ack_rx))
        };
        let wrote = writer
            .await
            .map_err(|e| ComponentError::new(format!("buffer writer stopped: {e}")))?;
        reader
            .await
            .map_err(|e| ComponentError::new(format!("buffer reader stopped: {e}")))?;
        keeper
            .await
            .map_err(|e| ComponentError::new(format!("buffer keeper stopped: {e}")))?
            .map_err(|e| ComponentError::new(format!("disk buffer: {e}")))?;
        wrote
    }
}

/// Takes the sink's acknowledgements until every token is gone; saves the position.
fn keep_acks(buffer: &DiskBuffer, mut rx: AckReceiver) -> io::Result<()> {
    let mut last_save = Instant::now();
    let mut dirty = false;
    while let Some(ack) = rx.blocking_recv() {
        dirty |= buffer.on_ack(ack.id, ack.delivered)?;
        if dirty && last_save.elapsed() >= Duration::from_millis(100) {
            buffer.save_acked()?;
            last_save = Instant::now();
            dirty = false;
        }
    }
    buffer.save_acked()
}

#[cfg(test)]
mod tests;
