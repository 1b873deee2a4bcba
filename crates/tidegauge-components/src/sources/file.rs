//! `file` source: JSON Lines or CSV files, plain or gzip-compressed, read to their end or
//! followed as they grow.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow_schema::SchemaRef;
use schemars::JsonSchema;
use serde::Deserialize;
use tidegauge_core::component::SendError;
use tidegauge_core::telemetry::{BytesReceived, ComponentErrorOccurred};
use tidegauge_core::{
    BoxFuture, BuildContext, BuildError, ComponentError, ConfigError, Source, SourceConfig,
    SourceContext,
};

use super::{BatchConfig, CsvOptions, Format, LineDecoder, LineOutcome, validate_fields};
use crate::codec::lines::{LineReader, Poll};
use crate::codec::{FieldMap, default_fields, schema_for};

/// Reads events from files: JSON Lines or CSV, optionally gzip-compressed, optionally
/// following the last file as it grows.
///
/// Bad lines (malformed, wrong types, missing fields, invalid UTF-8, too long) are
/// dead-lettered with file and line number; reading goes on with the next line.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// Files to read, in this order. Glob patterns (`logs/*.jsonl`) expand to the
    /// matching files, sorted by name.
    pub paths: Vec<String>,
    /// Record format. Unset: `csv` for names ending in `.csv` or `.csv.gz`, else `jsonl`.
    #[serde(default)]
    pub format: Option<Format>,
    /// CSV settings (when the format is `csv`).
    #[serde(default)]
    pub csv: CsvOptions,
    /// Fields to extract from each record and their types, in output order.
    #[serde(default = "default_fields")]
    pub fields: FieldMap,
    /// Fields that may be missing or null; all others are required in every record.
    #[serde(default)]
    pub optional_fields: Vec<String>,
    /// Decompression: `auto` detects gzip by its magic bytes, `gzip` requires it, `none`
    /// reads bytes as they are.
    #[serde(default)]
    pub compression: Compression,
    /// Keep reading the last file as it grows (like `tail -f`), until shutdown. A file
    /// that shrinks or is replaced is read again from its start.
    #[serde(default)]
    pub follow: bool,
    /// How often to look for new data while following, in milliseconds.
    #[serde(default = "default_poll_interval_ms")]
    #[schemars(range(min = 1))]
    pub poll_interval_ms: u64,
    /// Longest accepted line in bytes; longer lines are dead-lettered (first KiB kept)
    /// and skipped without being held in memory.
    #[serde(default = "default_max_line_bytes")]
    #[schemars(range(min = 1))]
    pub max_line_bytes: usize,
    /// Most bytes a compressed file may expand to; past it the rest of the file is
    /// skipped with an error (protects against compression bombs).
    #[serde(default = "default_max_decompressed_bytes")]
    #[schemars(range(min = 1))]
    pub max_decompressed_bytes: u64,
    /// Batching of events.
    #[serde(default)]
    pub batch: BatchConfig,
}

/// Decompression of input files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip when the file starts with gzip's magic bytes, else none.
    #[default]
    Auto,
    /// Plain bytes.
    None,
    /// gzip (several concatenated members are read as one stream).
    Gzip,
}

fn default_poll_interval_ms() -> u64 {
    250
}

/// 1 MiB.
pub(crate) fn default_max_line_bytes() -> usize {
    1 << 20
}

/// 16 GiB.
fn default_max_decompressed_bytes() -> u64 {
    16 << 30
}

impl FileSourceConfig {
    fn format_of(&self, path: &Path) -> Format {
        self.format.unwrap_or_else(|| {
            let name = path.to_string_lossy().to_ascii_lowercase();
            if name.ends_with(".csv") || name.ends_with(".csv.gz") {
                Format::Csv
            } else {
                Format::Jsonl
            }
        })
    }
}

impl SourceConfig for FileSourceConfig {
    const TYPE: &'static str = "file";

    fn validate(&self) -> Result<SchemaRef, Vec<ConfigError>> {
        let mut errors = Vec::new();
        if self.paths.is_empty() {
            errors.push(ConfigError::new("paths", "list at least one file"));
        }
        for (i, p) in self.paths.iter().enumerate() {
            if p.trim().is_empty() {
                errors.push(ConfigError::new(format!("paths[{i}]"), "empty path"));
            } else if let Err(e) = glob::Pattern::new(p) {
                errors.push(ConfigError::new(
                    format!("paths[{i}]"),
                    format!("bad pattern: {e}"),
                ));
            }
        }
        validate_fields(&self.fields, &self.optional_fields, &mut errors);
        if let Err(e) = self.csv.delimiter_byte() {
            errors.push(e);
        }
        if self.poll_interval_ms == 0 {
            errors.push(ConfigError::new(
                "poll_interval_ms",
                "expected a positive integer",
            ));
        }
        if self.max_line_bytes == 0 {
            errors.push(ConfigError::new(
                "max_line_bytes",
                "expected a positive integer",
            ));
        }
        if self.max_decompressed_bytes == 0 {
            errors.push(ConfigError::new(
                "max_decompressed_bytes",
                "expected a positive integer",
            ));
        }
        self.batch.validate(&mut errors);
        if errors.is_empty() {
            Ok(schema_for(&self.fields, &self.optional_fields))
        } else {
            Err(errors)
        }
    }

    async fn build(
        &self,
        schema: SchemaRef,
        _cx: BuildContext,
    ) -> Result<Box<dyn Source>, BuildError> {
        let files = expand(&self.paths)?;
        Ok(Box::new(FileSource {
            config: self.clone(),
            files,
            schema,
        }))
    }
}

/// Expands patterns; literal paths must exist, patterns must match something.
pub(crate) fn expand(paths: &[String]) -> Result<Vec<PathBuf>, BuildError> {
    let mut files = Vec::new();
    for p in paths {
        let is_pattern = p.contains(['*', '?', '[']);
        if !is_pattern {
            let path = PathBuf::from(p);
            std::fs::metadata(&path)
                .map_err(|e| BuildError::new(format!("cannot read `{p}`: {e}")))?;
            files.push(path);
            continue;
        }
        let mut matched: Vec<PathBuf> = glob::glob(p)
            .map_err(|e| BuildError::new(format!("bad pattern `{p}`: {e}")))?
            .filter_map(Result::ok)
            .filter(|m| m.is_file())
            .collect();
        if matched.is_empty() {
            return Err(BuildError::new(format!("no file matches `{p}`")));
        }
        matched.sort();
        files.extend(matched);
    }
    Ok(files)
}

struct FileSource {
    config: FileSourceConfig,
    files: Vec<PathBuf>,
    schema: SchemaRef,
}

impl Source for FileSource {
    fn run(self: Box<Self>, cx: SourceContext) -> BoxFuture<'static, Result<(), ComponentError>> {
        Box::pin(async move {
            let handle = tokio::task::spawn_blocking(move || self.read_all(cx));
            handle
                .await
                .map_err(|e| ComponentError::new(format!("file reader stopped: {e}")))?
        })
    }
}

/// Counts decompressed bytes and stops past the limit.
struct Limited<R> {
    inner: R,
    read: u64,
    limit: u64,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(io::Error::other(format!(
                "decompressed size exceeds max_decompressed_bytes ({} bytes); rest of file skipped",
                self.limit
            )));
        }
        Ok(n)
    }
}

enum Ended {
    /// The file was read to its end (or skipped after an error); go on.
    Done,
    /// Stop everything: shutdown requested or nobody downstream.
    Stop,
}

impl FileSource {
    fn open(&self, path: &Path) -> io::Result<(Box<dyn Read + Send>, bool)> {
        let file = File::open(path)?;
        let mut reader = BufReader::with_capacity(64 * 1024, file);
        let gzip = match self.config.compression {
            Compression::None => false,
            Compression::Gzip => true,
            Compression::Auto => reader.fill_buf()?.starts_with(&[0x1f, 0x8b]),
        };
        if gzip {
            let decoder = flate2::bufread::MultiGzDecoder::new(reader);
            Ok((
                Box::new(Limited {
                    inner: decoder,
                    read: 0,
                    limit: self.config.max_decompressed_bytes,
                }),
                true,
            ))
        } else {
            Ok((Box::new(reader), false))
        }
    }

    fn read_all(self, cx: SourceContext) -> Result<(), ComponentError> {
        let SourceContext {
            component,
            mut out,
            shutdown,
            ..
        } = cx;
        // One decoder per format met; when the format changes between files, what the
        // previous one holds is sent first so events keep their file order.
        let mut decoders: [Option<LineDecoder>; 2] = [None, None];
        let slot = |f: Format| match f {
            Format::Jsonl => 0,
            Format::Csv => 1,
        };
        let mut current: Option<Format> = None;
        for (i, path) in self.files.iter().enumerate() {
            let format = self.config.format_of(path);
            if let Some(prev) = current.filter(|&p| p != format)
                && let Some(d) = &mut decoders[slot(prev)]
                && d.flush_to(&component, &mut out).is_err()
            {
                return Ok(());
            }
            current = Some(format);
            let dec = decoders[slot(format)].get_or_insert_with(|| {
                LineDecoder::new(
                    format,
                    &self.config.csv,
                    &self.config.fields,
                    self.schema.clone(),
                    self.config.batch.rows,
                )
            });
            let follow = self.config.follow && i + 1 == self.files.len();
            if let Ended::Stop = self.read_file(path, follow, dec, &component, &mut out, &shutdown)
            {
                break;
            }
        }
        for d in decoders.iter_mut().flatten() {
            if d.flush_to(&component, &mut out).is_err() {
                break;
            }
        }
        Ok(())
    }

    fn read_file(
        &self,
        path: &Path,
        follow: bool,
        dec: &mut LineDecoder,
        component: &tidegauge_core::ComponentContext,
        out: &mut tidegauge_core::Output,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Ended {
        let origin = path.display().to_string();
        'reopen: loop {
            let (reader, compressed) = match self.open(path) {
                Ok(r) => r,
                Err(e) => {
                    component.emit(ComponentErrorOccurred {
                        error: &format!("cannot open {origin}: {e}; skipped"),
                    });
                    return Ended::Done;
                }
            };
            dec.start_input();
            let mut lines = LineReader::new(reader, self.config.max_line_bytes);
            let mut position: u64 = 0;
            let identity = file_identity(path);
            loop {
                if shutdown.is_cancelled() {
                    return Ended::Stop;
                }
                let mut skip = false;
                let polled = lines.poll(!follow, |line_no, line| {
                    if dec.line(component, &origin, line_no, line) == LineOutcome::SkipInput {
                        skip = true;
                        return Err(SendError::Closed);
                    }
                    if dec.is_full() {
                        dec.flush_to(component, out)?;
                    }
                    Ok(())
                });
                match polled {
                    Err(e) => {
                        component.dead_letter(
                            &format!("{origin}:{}", lines.line_no()),
                            &format!("cannot read further: {e}"),
                            b"",
                        );
                        return Ended::Done;
                    }
                    Ok(Err(_)) if skip => return Ended::Done,
                    Ok(Err(_)) => return Ended::Stop,
                    Ok(Ok(Poll::Read(n))) => {
                        position += n as u64;
                        component.emit(BytesReceived { bytes: n as u64 });
                    }
                    Ok(Ok(Poll::Eof)) if !follow => return Ended::Done,
                    Ok(Ok(Poll::Eof)) => {
                        if dec.flush_to(component, out).is_err() {
                            return Ended::Stop;
                        }
                        std::thread::sleep(Duration::from_millis(self.config.poll_interval_ms));
                        if !compressed && was_replaced(path, identity, position) {
                            tracing::info!(
                                component_id = component.id(),
                                "{origin} was truncated or replaced; reading it from the start"
                            );
                            continue 'reopen;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(unix)]
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_identity(_path: &Path) -> Option<(u64, u64)> {
    None
}

/// Whether the followed file now is another file, or shorter than what was read.
fn was_replaced(path: &Path, identity: Option<(u64, u64)>, position: u64) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    meta.len() < position || (identity.is_some() && file_identity(path) != identity)
}

tidegauge_core::register_source!(FileSourceConfig);
