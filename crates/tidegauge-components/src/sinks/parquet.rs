//! `parquet` sink: events into Parquet files, rolled by size and age, optionally
//! partitioned into `key=value` directories. A file is written under a hidden temporary
//! name and renamed once complete and synced, so a reader never sees half a file; a batch
//! counts as delivered once every file holding its events is complete.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, RecordBatch, UInt32Array};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::{DataType, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, GzipLevel};
use parquet::file::properties::WriterProperties;
use schemars::JsonSchema;
use serde::Deserialize;
use tidegauge_core::component::sink_fn;
use tidegauge_core::{BuildContext, BuildError, ConfigError, Sink, SinkConfig};

use super::{BatchWriter, run_writer};

/// Writes events to Parquet files in a directory, optionally partitioned.
///
/// `partition_by = ["date"]` puts events in `date=2026-11-25/` directories by their
/// `ts` (epoch milliseconds, UTC); a field name (`"sensor_id"`) puts them in
/// `sensor_id=<value>/`. A file is closed and a new one started when it reaches
/// `max_file_bytes` or is `max_file_age_ms` old; it is written as a hidden `.tmp` file
/// and renamed once complete, so readers only ever see whole files. Events count as
/// delivered once their file is complete.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkConfig {
    /// Directory to write files in (created if missing).
    #[schemars(example = &"parquet")]
    pub path: PathBuf,
    /// Partition directories: `date` (from `ts_field`) and/or input field names, outermost
    /// first.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// The epoch-milliseconds field `date` partitions by.
    #[serde(default = "default_ts_field")]
    pub ts_field: String,
    /// Size at which a file is completed and a new one started, in bytes (approximate:
    /// checked after each batch).
    #[serde(default = "default_max_file_bytes")]
    #[schemars(range(min = 1))]
    pub max_file_bytes: u64,
    /// Age at which open files are completed, in milliseconds; bounds how long events
    /// wait to be acknowledged.
    #[serde(default = "default_max_file_age_ms")]
    #[schemars(range(min = 1))]
    pub max_file_age_ms: u64,
    /// Column compression.
    #[serde(default)]
    pub compression: ParquetCompression,
    /// Rows per row group, at most.
    #[serde(default = "default_row_group_rows")]
    #[schemars(range(min = 1))]
    pub row_group_rows: usize,
}

/// Parquet column compression.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ParquetCompression {
    /// None.
    None,
    /// Snappy: fast, moderate ratio.
    #[default]
    Snappy,
    /// gzip: slower, better ratio.
    Gzip,
}

fn default_ts_field() -> String {
    "ts".into()
}
fn default_max_file_bytes() -> u64 {
    128 << 20
}
fn default_max_file_age_ms() -> u64 {
    60_000
}
fn default_row_group_rows() -> usize {
    128 * 1024
}

impl SinkConfig for ParquetSinkConfig {
    const TYPE: &'static str = "parquet";

    fn validate(&self, input: &SchemaRef) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        if self.path.as_os_str().is_empty() {
            errors.push(ConfigError::new("path", "expected a directory"));
        }
        for (i, p) in self.partition_by.iter().enumerate() {
            if p == "date" {
                match input.field_with_name(&self.ts_field) {
                    Ok(f) if f.data_type() == &DataType::Int64 => {}
                    Ok(f) => errors.push(ConfigError::new(
                        "ts_field",
                        format!(
                            "`{}` must hold epoch milliseconds (Int64), it is {}",
                            self.ts_field,
                            f.data_type()
                        ),
                    )),
                    Err(_) => errors.push(ConfigError::new(
                        "ts_field",
                        format!("the input has no field `{}`", self.ts_field),
                    )),
                }
            } else if input.field_with_name(p).is_err() {
                errors.push(ConfigError::new(
                    format!("partition_by[{i}]"),
                    format!("`{p}` is neither `date` nor a field of the input"),
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    async fn build(
        &self,
        input: SchemaRef,
        _cx: BuildContext,
    ) -> Result<Box<dyn Sink>, BuildError> {
        std::fs::create_dir_all(&self.path)
            .map_err(|e| BuildError::new(format!("cannot create {}: {e}", self.path.display())))?;
        let compression = match self.compression {
            ParquetCompression::None => Compression::UNCOMPRESSED,
            ParquetCompression::Snappy => Compression::SNAPPY,
            ParquetCompression::Gzip => Compression::GZIP(GzipLevel::default()),
        };
        let props = WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(self.row_group_rows))
            .build();
        let keys = self
            .partition_by
            .iter()
            .map(|p| {
                if p == "date" {
                    Key::Date(input.index_of(&self.ts_field).unwrap_or(0))
                } else {
                    Key::Field(p.clone(), input.index_of(p).unwrap_or(0))
                }
            })
            .collect();
        let sink = ParquetSink {
            writer: ParquetFiles {
                dir: self.path.clone(),
                schema: input,
                props,
                keys,
                max_file_bytes: self.max_file_bytes,
                open: BTreeMap::new(),
                seq: 0,
            },
            flush_every: Duration::from_millis(self.max_file_age_ms),
        };
        Ok(sink_fn(move |input, cx| {
            run_writer(sink.writer, input, cx, sink.flush_every)
        }))
    }
}

enum Key {
    Date(usize),
    Field(String, usize),
}

/// An open file: its writer and names.
struct OpenFile {
    writer: ArrowWriter<BufWriter<File>>,
    tmp: PathBuf,
    done: PathBuf,
}

struct ParquetFiles {
    dir: PathBuf,
    schema: SchemaRef,
    props: WriterProperties,
    keys: Vec<Key>,
    max_file_bytes: u64,
    /// Open files by partition directory (relative).
    open: BTreeMap<String, OpenFile>,
    seq: u64,
}

/// The `date=YYYY-MM-DD` partition (UTC) of an event time in epoch milliseconds; times
/// beyond the calendar's range (±262,000 years) share `date=__out_of_range__`.
fn date_partition(ts_ms: i64) -> String {
    use chrono::Datelike;
    match chrono::DateTime::from_timestamp_millis(ts_ms) {
        Some(t) => format!("date={:04}-{:02}-{:02}", t.year(), t.month(), t.day()),
        None => "date=__out_of_range__".into(),
    }
}

/// A value usable as a directory name: no separators, no leading dot.
fn path_safe(v: &str) -> String {
    let s: String = v
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c == '\0' {
                '_'
            } else {
                c
            }
        })
        .collect();
    match s.as_str() {
        "" => "__null__".into(),
        "." | ".." => s.replace('.', "_"),
        _ if s.starts_with('.') => format!("_{}", &s[1..]),
        _ => s,
    }
}

impl ParquetFiles {
    /// The partition directory of every row.
    fn partitions(&self, batch: &RecordBatch) -> io::Result<Vec<String>> {
        let mut out = vec![String::new(); batch.num_rows()];
        let options = FormatOptions::default().with_null("");
        for key in &self.keys {
            match key {
                Key::Date(i) => {
                    let ts = batch.column(*i).as_primitive::<Int64Type>();
                    for (row, p) in out.iter_mut().enumerate() {
                        let part = if ts.is_null(row) {
                            "date=__null__".to_string()
                        } else {
                            date_partition(ts.value(row))
                        };
                        push_dir(p, &part);
                    }
                }
                Key::Field(name, i) => {
                    let col = batch.column(*i);
                    let f = ArrayFormatter::try_new(col.as_ref(), &options)
                        .map_err(io::Error::other)?;
                    for (row, p) in out.iter_mut().enumerate() {
                        push_dir(
                            p,
                            &format!("{name}={}", path_safe(&f.value(row).to_string())),
                        );
                    }
                }
            }
        }
        Ok(out)
    }

    fn file_for(&mut self, partition: &str) -> io::Result<&mut OpenFile> {
        if !self.open.contains_key(partition) {
            let dir = self.dir.join(partition);
            std::fs::create_dir_all(&dir)?;
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            self.seq += 1;
            let name = format!("part-{now}-{}-{:06}.parquet", std::process::id(), self.seq);
            let tmp = dir.join(format!(".{name}.tmp"));
            let done = dir.join(&name);
            let file = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
            let writer = ArrowWriter::try_new(file, self.schema.clone(), Some(self.props.clone()))
                .map_err(io::Error::other)?;
            self.open
                .insert(partition.to_string(), OpenFile { writer, tmp, done });
        }
        // Inserted just above when missing.
        Ok(self.open.get_mut(partition).expect("file is open"))
    }

    /// Completes one file: footer, sync, rename, sync the directory.
    fn complete(f: OpenFile) -> io::Result<()> {
        let mut out = f.writer.into_inner().map_err(io::Error::other)?;
        use std::io::Write;
        out.flush()?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&f.tmp, &f.done)?;
        if let Some(dir) = f.done.parent() {
            sync_dir(dir)?;
        }
        Ok(())
    }
}

fn push_dir(p: &mut String, part: &str) {
    if !p.is_empty() {
        p.push('/');
    }
    p.push_str(part);
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

impl BatchWriter for ParquetFiles {
    fn write(&mut self, batch: &RecordBatch) -> io::Result<u64> {
        let mut groups: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        if self.keys.is_empty() {
            groups.insert(String::new(), Vec::new());
        } else {
            for (row, p) in self.partitions(batch)?.into_iter().enumerate() {
                groups.entry(p).or_default().push(row as u32);
            }
        }
        let mut bytes = 0;
        for (partition, rows) in groups {
            let part = if self.keys.is_empty() {
                batch.clone()
            } else {
                let idx = UInt32Array::from(rows);
                arrow_select::take::take_record_batch(batch, &idx).map_err(io::Error::other)?
            };
            let f = self.file_for(&partition)?;
            let before = f.writer.bytes_written() + f.writer.in_progress_size();
            f.writer.write(&part).map_err(io::Error::other)?;
            let after = f.writer.bytes_written() + f.writer.in_progress_size();
            bytes += after.saturating_sub(before) as u64;
            if after as u64 >= self.max_file_bytes
                && let Some(f) = self.open.remove(&partition)
            {
                Self::complete(f)?;
            }
        }
        Ok(bytes)
    }

    /// Completes every open file: everything written so far becomes visible and durable.
    fn flush(&mut self) -> io::Result<()> {
        for (_, f) in std::mem::take(&mut self.open) {
            Self::complete(f)?;
        }
        Ok(())
    }

    fn target(&self) -> String {
        self.dir.display().to_string()
    }

    /// A flush completes the open files: doing so whenever the input pauses would cut a
    /// file per pause. Files are completed by age (`max_file_age_ms`) and size.
    fn flush_when_idle(&self) -> bool {
        false
    }
}

struct ParquetSink {
    writer: ParquetFiles,
    flush_every: Duration,
}

tidegauge_core::register_sink!(ParquetSinkConfig);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_from_event_times() {
        const DAY: i64 = 86_400_000;
        assert_eq!(date_partition(0), "date=1970-01-01");
        assert_eq!(date_partition(19_722 * DAY + DAY - 1), "date=2023-12-31");
        assert_eq!(date_partition(-1), "date=1969-12-31");
        assert_eq!(date_partition(11_016 * DAY), "date=2000-02-29");
        assert_eq!(date_partition(i64::MAX), "date=__out_of_range__");
    }

    #[test]
    fn partition_values_are_safe_directory_names() {
        assert_eq!(path_safe("a/b"), "a_b");
        assert_eq!(path_safe(".."), "__");
        assert_eq!(path_safe(".hidden"), "_hidden");
        assert_eq!(path_safe(""), "__null__");
    }
}
