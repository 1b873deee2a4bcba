//! `jsonl` sink: events as JSON Lines in a file.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use schemars::JsonSchema;
use serde::Deserialize;
use tidegauge_core::component::sink_fn;
use tidegauge_core::resilience::RetryPolicy;
use tidegauge_core::{BuildContext, BuildError, ConfigError, Sink, SinkConfig};

use super::{BatchWriter, run_writer_with_retry};
use crate::codec::encode::JsonEncoder;

/// Writes events to a file as JSON Lines, one object per event with every field.
///
/// Writes are buffered and handed to the file as soon as no more events are waiting
/// (readers of the file see them at once); they are synced to disk (fsync) every
/// `flush_interval_ms` and at shutdown, and a batch counts as delivered only once it is
/// on disk. Only whole lines are
/// written: if a crash left a partial last line, it is cut off when the file is opened
/// again. When a write or flush fails (a full disk), the file is cut back to what was
/// last flushed and the batches since are written again, with backoff, as `retry`
/// allows; meanwhile no more events are taken (backpressure).
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonlSinkConfig {
    /// File to write (parent directories are created).
    #[schemars(example = &"anomalies.jsonl")]
    pub path: PathBuf,
    /// Append to an existing file (`true`) or replace it (`false`).
    #[serde(default = "default_append")]
    pub append: bool,
    /// How often written lines are synced to disk (and their events acknowledged), in
    /// milliseconds. Lines reach the file itself as soon as the sink's input is idle.
    #[serde(default = "default_flush_interval_ms")]
    #[schemars(range(min = 1))]
    pub flush_interval_ms: u64,
    /// Retries of a failed write or flush: backoff with full jitter and most attempts
    /// (raise `max_attempts` to ride out a long outage).
    #[serde(default)]
    pub retry: RetryPolicy,
}

fn default_append() -> bool {
    true
}

fn default_flush_interval_ms() -> u64 {
    1000
}

impl SinkConfig for JsonlSinkConfig {
    const TYPE: &'static str = "jsonl";

    fn validate(&self, _input: &SchemaRef) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        if self.path.as_os_str().is_empty() {
            errors.push(ConfigError::new("path", "expected a file path"));
        }
        errors.extend(self.retry.validate("retry"));
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    async fn build(&self, input: SchemaRef, cx: BuildContext) -> Result<Box<dyn Sink>, BuildError> {
        let file = open(&self.path, self.append).map_err(|e| {
            BuildError::new(format!(
                "cannot open {} for writing: {e}",
                self.path.display()
            ))
        })?;
        if file.repaired > 0 {
            tracing::warn!(
                component_id = cx.component.id(),
                "{}: cut off a partial last line of {} bytes left by an earlier crash",
                self.path.display(),
                file.repaired
            );
        }
        let sink = JsonlSink {
            writer: JsonlWriter {
                out: BufWriter::with_capacity(1 << 20, file.file),
                encoder: JsonEncoder::new(&input),
                buf: Vec::with_capacity(1 << 16),
                path: self.path.clone(),
                durable_len: file.len,
                unflushed: 0,
            },
            flush_every: Duration::from_millis(self.flush_interval_ms),
            retry: self.retry.clone(),
        };
        Ok(sink_fn(move |input, cx| {
            run_writer_with_retry(sink.writer, input, cx, sink.flush_every, sink.retry)
        }))
    }
}

struct Opened {
    file: File,
    /// Bytes of a partial last line that were cut off.
    repaired: u64,
    /// Length of the file as opened (where writing starts).
    len: u64,
}

/// Opens for appending, cutting a partial last line; or creates/truncates.
fn open(path: &Path, append: bool) -> io::Result<Opened> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    if !append {
        let file = File::create(path)?;
        return Ok(Opened {
            file,
            repaired: 0,
            len: 0,
        });
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let len = file.metadata()?.len();
    let keep = complete_prefix_len(&mut file, len)?;
    if keep < len {
        file.set_len(keep)?;
        file.sync_data()?;
    }
    file.seek(SeekFrom::Start(keep))?;
    Ok(Opened {
        file,
        repaired: len - keep,
        len: keep,
    })
}

/// Length of the file up to and including its last newline.
fn complete_prefix_len(file: &mut File, len: u64) -> io::Result<u64> {
    let mut end = len;
    let mut chunk = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk[..n])?;
        if let Some(pos) = memchr::memrchr(b'\n', &chunk[..n]) {
            return Ok(start + pos as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

struct JsonlWriter {
    out: BufWriter<File>,
    encoder: JsonEncoder,
    buf: Vec<u8>,
    path: PathBuf,
    /// Length of the file after the last successful flush.
    durable_len: u64,
    /// Bytes written since.
    unflushed: u64,
}

impl BatchWriter for JsonlWriter {
    fn write(&mut self, batch: &RecordBatch) -> io::Result<u64> {
        self.buf.clear();
        self.encoder
            .encode_batch(batch, &mut self.buf)
            .map_err(io::Error::other)?;
        self.out.write_all(&self.buf)?;
        self.unflushed += self.buf.len() as u64;
        Ok(self.buf.len() as u64)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_data()?;
        self.durable_len += std::mem::take(&mut self.unflushed);
        Ok(())
    }

    fn can_publish(&self) -> bool {
        true
    }

    fn publish(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn target(&self) -> String {
        self.path.display().to_string()
    }

    fn rollback(&mut self) -> io::Result<()> {
        let mut file = OpenOptions::new().write(true).open(&self.path)?;
        file.set_len(self.durable_len)?;
        file.seek(SeekFrom::Start(self.durable_len))?;
        // The old buffer's bytes are dropped, not written.
        let old = std::mem::replace(&mut self.out, BufWriter::with_capacity(1 << 20, file));
        drop(old.into_parts());
        self.unflushed = 0;
        Ok(())
    }
}

struct JsonlSink {
    writer: JsonlWriter,
    flush_every: Duration,
    retry: RetryPolicy,
}

tidegauge_core::register_sink!(JsonlSinkConfig);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopening_cuts_a_partial_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, b"{\"a\":1}\n{\"a\":2}\n{\"a\":").unwrap();
        let opened = open(&path, true).unwrap();
        assert_eq!(opened.repaired, 5);
        let mut f = opened.file;
        f.write_all(b"{\"a\":3}\n").unwrap();
        drop(f);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n"
        );
    }

    #[test]
    fn rollback_cuts_back_to_the_last_flush_and_writing_again_works() {
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, b"{\"a\":0}\n").unwrap();
        let opened = open(&path, true).unwrap();
        let schema = Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new(
            "a",
            arrow_schema::DataType::Int64,
            false,
        )]));
        let batch = |v: i64| {
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(arrow_array::Int64Array::from(vec![v]))],
            )
            .unwrap()
        };
        let mut w = JsonlWriter {
            out: BufWriter::with_capacity(4, opened.file),
            encoder: JsonEncoder::new(&schema),
            buf: Vec::new(),
            path: path.clone(),
            durable_len: opened.len,
            unflushed: 0,
        };
        w.write(&batch(1)).unwrap();
        w.flush().unwrap();
        // Written (the tiny buffer spills to the file) but not flushed: rolled back.
        w.write(&batch(2)).unwrap();
        w.rollback().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":0}\n{\"a\":1}\n"
        );
        w.write(&batch(2)).unwrap();
        w.write(&batch(3)).unwrap();
        w.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":0}\n{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n"
        );
    }

    #[test]
    fn a_file_without_any_newline_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, vec![b'x'; 100_000]).unwrap();
        assert_eq!(open(&path, true).unwrap().repaired, 100_000);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }
}
