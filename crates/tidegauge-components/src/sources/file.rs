//! `file` source: JSON Lines or CSV files, plain or gzip-compressed, read to their end or
//! followed as they grow.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use schemars::JsonSchema;
use serde::Deserialize;
use tidegauge_core::component::SendError;
use tidegauge_core::component::blocking_source_fn;
use tidegauge_core::telemetry::{BytesReceived, ComponentErrorOccurred};
use tidegauge_core::{
    Batch, BuildContext, BuildError, ComponentContext, ComponentError, ConfigError, Output, Source,
    SourceConfig, SourceContext,
};

use super::file_acks::Acks;
use super::file_paths::{expand, input_problems};
use super::file_watch::FileWatch;
use super::linger::Linger;
use super::parallel::{DecoderSpec, Decoding, decoder_threads, default_decoders};
use super::{CsvOptions, Format, LineOutcome};
use crate::codec::lines::{Line, LineReader, Poll};
use crate::settings::{config, decoded_records};

config! {
    [decoded_records]
    /// Reads events from files: JSON Lines or CSV, optionally gzip-compressed, optionally
    /// following the last file as it grows.
    ///
    /// Bad lines (malformed, wrong types, missing fields, invalid UTF-8, too long) are
    /// dead-lettered with file and line number; reading goes on with the next line.
    pub struct FileSourceConfig {
        /// Files to read, in this order. Glob patterns (`logs/*.jsonl`) expand to the
        /// matching files, sorted by name.
        #[schemars(example = ["readings/*.jsonl"])]
        pub paths: Vec<String>,
        /// Record format. Unset: `csv` for names ending in `.csv` or `.csv.gz`, else `jsonl`.
        #[serde(default)]
        pub format: Option<Format>,
        /// CSV settings (when the format is `csv`).
        #[serde(default)]
        pub csv: CsvOptions,
        /// Decompression: `auto` detects gzip by its magic bytes, `gzip` requires it, `none`
        /// reads bytes as they are.
        #[serde(default)]
        pub compression: Compression,
        /// Keep reading the last file as it grows (like `tail -f`), until shutdown. A file
        /// that shrinks or is replaced is read again from its start.
        #[serde(default)]
        pub follow: bool,
        /// While following, how often to look for new data where the system cannot say
        /// when the file is written, and whether the file was replaced or truncated, in
        /// milliseconds. On Linux a write wakes the reader at once (inotify).
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
        /// Threads that decode lines into events while this source reads on. 1, the
        /// default, decodes on the reading thread; 0 chooses from the cores (1 on one
        /// core, else the cores but one, at least 2 and at most 4). More than one pays
        /// only with cores to spare beside the pipeline's other threads (on 2 cores W1
        /// was no faster with 2). Events keep their input order whatever the number,
        /// and so do dead letters and committed positions.
        #[serde(default = "default_decoders")]
        pub decoders: usize,
    }
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
        if let Err(e) = self.csv.delimiter_byte() {
            errors.push(e);
        }
        self.decoded_schema(errors)
    }

    async fn build(
        &self,
        schema: SchemaRef,
        _cx: BuildContext,
    ) -> Result<Box<dyn Source>, BuildError> {
        let files = expand(&self.paths)?;
        let source = FileSource {
            config: self.clone(),
            files,
            schema,
        };
        Ok(blocking_source_fn("file reader", move |cx| {
            source.read_all(cx)
        }))
    }

    fn check_inputs(&self) -> Vec<tidegauge_core::component::InputProblem> {
        input_problems(&self.paths)
    }

    /// Each listed path made absolute with a fingerprint of its first bytes (a pattern
    /// as written; when following, paths alone: a followed log may be rotated).
    fn input_identity(&self) -> serde_json::Value {
        self.paths
            .iter()
            .map(|p| {
                if p.contains(['*', '?', '[']) {
                    serde_json::json!({ "pattern": p })
                } else {
                    tidegauge_core::checkpoint::file_identity(Path::new(p), self.follow)
                }
            })
            .collect()
    }
}

/// The UTF-8 byte-order mark.
const UTF8_BOM: &[u8] = b"\xef\xbb\xbf";

struct FileSource {
    config: FileSourceConfig,
    files: Vec<PathBuf>,
    schema: SchemaRef,
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

/// Counts the bytes read through it: the offset in the (decompressed) stream.
struct Counted {
    inner: Box<dyn Read + Send>,
    offset: u64,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.offset += n as u64;
        Ok(n)
    }
}

enum Ended {
    /// The file was read to its end (or skipped after an error); go on.
    Done,
    /// The file cannot be read with this config (a CSV header without a declared
    /// field): the source fails with this reason.
    Unreadable(String),
    /// Stop everything: shutdown requested or nobody downstream.
    Stop,
}

/// Why line handling stopped a read early.
enum Halt {
    /// A batch is full: send it, with the position just after its last line.
    Full,
    /// The rest of this input cannot be read with this config, for this reason.
    Unreadable(String),
}

/// How far one file has been read: the bytes of its (decompressed) content and the lines
/// before the next one to read. `dev`/`ino` identify the file, so a replaced file is read
/// from its start.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FilePosition {
    /// Path as listed or matched.
    pub path: String,
    /// Device of the file when it was read.
    #[serde(default)]
    pub dev: Option<u64>,
    /// Inode of the file when it was read.
    #[serde(default)]
    pub ino: Option<u64>,
    /// Bytes consumed (whole lines only).
    pub offset: u64,
    /// Lines consumed.
    pub lines: u64,
}

/// The position of a `file` source: every file started, in reading order.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FilesPosition {
    /// One entry per file started.
    pub files: Vec<FilePosition>,
}

impl FilesPosition {
    fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// Where the reader stands, and what it sends with each batch.
struct Progress {
    position: FilesPosition,
    /// Where an earlier run stopped, by path.
    restored: HashMap<String, FilePosition>,
    /// `None` without checkpointing: no tokens, no positions.
    acks: Option<Acks>,
    /// When what the decoder holds must go.
    linger: Linger,
}

impl Progress {
    /// Sends what the decoder holds, with a token and the current position; with
    /// decoder threads, `settle` waits until everything read so far is sent.
    fn send(
        &mut self,
        dec: &mut Decoding<Option<serde_json::Value>>,
        settle: bool,
        component: &ComponentContext,
        out: &mut Output,
    ) -> Result<(), SendError> {
        self.linger.sent();
        let position = self.acks.as_ref().map(|_| self.position.to_value());
        let acks = &mut self.acks;
        dec.send(component, position, settle, &mut |batches, position| {
            deliver(acks, out, batches, position)
        })?;
        if let Some(acks) = &mut self.acks {
            acks.poll(component);
        }
        Ok(())
    }

    fn current(&mut self) -> Option<&mut FilePosition> {
        self.position.files.last_mut()
    }
}

/// Sends the batches of one chunk of lines; the last is covered by `position` (the
/// position after the chunk), the earlier ones by it too once the last is acknowledged.
fn deliver(
    acks: &mut Option<Acks>,
    out: &mut Output,
    batches: Vec<RecordBatch>,
    position: Option<serde_json::Value>,
) -> Result<(), SendError> {
    let (Some(acks), Some(position)) = (acks, position) else {
        return batches
            .into_iter()
            .try_for_each(|b| out.blocking_send(Batch::new(b)));
    };
    let n = batches.len();
    if n == 0 {
        acks.advance(position.clone());
        out.set_position(position);
        return Ok(());
    }
    for (i, b) in batches.into_iter().enumerate() {
        if i + 1 == n {
            let finalizers = acks.token(Some(position.clone()));
            out.blocking_send_at(Batch::with_finalizers(b, finalizers), position.clone())?;
        } else {
            let finalizers = acks.token(None);
            out.blocking_send(Batch::with_finalizers(b, finalizers))?;
        }
    }
    Ok(())
}

impl FileSource {
    /// Opens `path` for reading from byte `skip` of its (decompressed) content.
    fn open(&self, path: &Path, skip: u64) -> io::Result<(Box<dyn Read + Send>, bool)> {
        let file = File::open(path)?;
        let mut reader = BufReader::with_capacity(64 * 1024, file);
        let gzip = match self.config.compression {
            Compression::None => false,
            Compression::Gzip => true,
            Compression::Auto => reader.fill_buf()?.starts_with(&[0x1f, 0x8b]),
        };
        if gzip {
            let decoder = flate2::bufread::MultiGzDecoder::new(reader);
            let mut limited = Limited {
                inner: decoder,
                read: 0,
                limit: self.config.max_decompressed_bytes,
            };
            if skip > 0 {
                let skipped = io::copy(&mut (&mut limited).take(skip), &mut io::sink())?;
                if skipped < skip {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "shorter than the position to resume from",
                    ));
                }
            }
            Ok((Box::new(limited), true))
        } else {
            if skip > 0 {
                reader.seek(SeekFrom::Start(skip))?;
            }
            Ok((Box::new(reader), false))
        }
    }

    /// The first line of `path` (a CSV header, when resuming past it).
    fn first_line(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        let (reader, _) = self.open(path, 0)?;
        let mut lines = LineReader::new(reader, self.config.max_line_bytes);
        let mut first = None;
        while first.is_none() {
            let polled = lines.poll(true, |_, line| {
                if let Line::Complete(text) = line {
                    first = Some(text.strip_prefix(UTF8_BOM).unwrap_or(text).to_vec());
                }
                Err(())
            })?;
            if let Ok(Poll::Eof) = polled {
                break;
            }
        }
        Ok(first)
    }

    fn read_all(self, cx: SourceContext) -> Result<(), ComponentError> {
        let SourceContext {
            component,
            mut out,
            shutdown,
            checkpoint,
            ..
        } = cx;
        let restored: HashMap<String, FilePosition> = checkpoint
            .restored()
            .and_then(|v| serde_json::from_value::<FilesPosition>(v.clone()).ok())
            .map(|p| p.files.into_iter().map(|f| (f.path.clone(), f)).collect())
            .unwrap_or_default();
        let mut progress = Progress {
            position: FilesPosition::default(),
            restored,
            acks: checkpoint.is_enabled().then(|| Acks::new(checkpoint)),
            linger: Linger::new(&self.config.batch),
        };
        // One decoder per format met; when the format changes between files, what the
        // previous one holds is sent first so events keep their file order.
        let mut decoders: [Option<Decoding<Option<serde_json::Value>>>; 2] = [None, None];
        let threads = decoder_threads(self.config.decoders);
        let slot = |f: Format| match f {
            Format::Jsonl => 0,
            Format::Csv => 1,
        };
        let mut current: Option<Format> = None;
        let mut failure = None;
        'files: for (i, path) in self.files.iter().enumerate() {
            let format = self.config.format_of(path);
            if let Some(prev) = current.filter(|&p| p != format)
                && let Some(d) = &mut decoders[slot(prev)]
                && progress.send(d, true, &component, &mut out).is_err()
            {
                break 'files;
            }
            current = Some(format);
            let dec = decoders[slot(format)].get_or_insert_with(|| {
                let spec = DecoderSpec {
                    format,
                    csv: self.config.csv.clone(),
                    fields: self.config.fields.clone(),
                    schema: self.schema.clone(),
                    batch: self.config.batch.clone(),
                };
                Decoding::new(spec, threads, &component)
            });
            let follow = self.config.follow && i + 1 == self.files.len();
            match self.read_file(
                path,
                format,
                follow,
                dec,
                &component,
                &mut out,
                &shutdown,
                &mut progress,
            ) {
                Ended::Done => {}
                Ended::Stop => break,
                Ended::Unreadable(reason) => {
                    // Every record of the file would fail the same way: a configuration
                    // error, not 200,000 bad records.
                    failure = Some(ComponentError::new(format!(
                        "{}: {reason}; fix the file or the source's `fields`/`csv` settings",
                        path.display()
                    )));
                    break;
                }
            }
        }
        for d in decoders.iter_mut().flatten() {
            if progress.send(d, true, &component, &mut out).is_err() {
                break;
            }
        }
        // Downstream may finish only once this output is gone; then the last
        // acknowledgements come back.
        drop(out);
        if let Some(acks) = progress.acks.take() {
            acks.finish(progress.position.to_value(), &component);
        }
        failure.map_or(Ok(()), Err)
    }

    #[allow(clippy::too_many_arguments)]
    fn read_file(
        &self,
        path: &Path,
        format: Format,
        follow: bool,
        dec: &mut Decoding<Option<serde_json::Value>>,
        component: &ComponentContext,
        out: &mut Output,
        shutdown: &tokio_util::sync::CancellationToken,
        progress: &mut Progress,
    ) -> Ended {
        let origin = path.display().to_string();
        let key = path.to_string_lossy().into_owned();
        let mut resume = progress.restored.remove(&key);
        'reopen: loop {
            let identity = file_identity(path);
            let mut start = FilePosition {
                path: key.clone(),
                dev: identity.map(|i| i.0),
                ino: identity.map(|i| i.1),
                offset: 0,
                lines: 0,
            };
            if let Some(r) = resume.take() {
                let same = r.dev.is_none()
                    || identity.is_none()
                    || (r.dev, r.ino) == (start.dev, start.ino);
                if same {
                    start.offset = r.offset;
                    start.lines = r.lines;
                } else {
                    tracing::info!(
                        component_id = component.id(),
                        "{origin} is not the file read before (another inode); reading it from the start"
                    );
                }
            }
            let opened = self.open(path, start.offset);
            let (reader, compressed) = match opened {
                Ok(r) => r,
                Err(e) if start.offset > 0 && e.kind() == io::ErrorKind::UnexpectedEof => {
                    tracing::info!(
                        component_id = component.id(),
                        "{origin} is shorter than where reading stopped before; reading it from the start"
                    );
                    continue 'reopen;
                }
                Err(e) => {
                    component.emit(ComponentErrorOccurred {
                        error: &format!("cannot open {origin}: {e}; skipped"),
                    });
                    return Ended::Done;
                }
            };
            if !compressed
                && start.offset > 0
                && std::fs::metadata(path).is_ok_and(|m| m.len() < start.offset)
            {
                tracing::info!(
                    component_id = component.id(),
                    "{origin} is shorter than where reading stopped before; reading it from the start"
                );
                continue 'reopen;
            }
            if start.offset > 0 {
                tracing::info!(
                    component_id = component.id(),
                    "resuming {origin} after line {} (byte {})",
                    start.lines,
                    start.offset
                );
            }
            dec.start_input();
            if start.offset > 0 && format == Format::Csv && self.config.csv.header {
                match self.first_line(path) {
                    Ok(Some(header)) => {
                        dec.line(component, &origin, 1, Line::Complete(&header));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        component.emit(ComponentErrorOccurred {
                            error: &format!("cannot read the header of {origin}: {e}; skipped"),
                        });
                        return Ended::Done;
                    }
                }
            }
            let base_lines = start.lines;
            let mut read_bytes = start.offset;
            progress.position.files.retain(|f| f.path != key);
            progress.position.files.push(start);
            let mut lines = LineReader::new(
                Counted {
                    inner: reader,
                    offset: read_bytes,
                },
                self.config.max_line_bytes,
            );
            // Watching from before the first read: no write is missed between reaching
            // the end and starting to wait.
            let mut watch = follow.then(|| FileWatch::new(path));
            loop {
                if shutdown.is_cancelled() {
                    return Ended::Stop;
                }
                let polled = lines.poll(!follow, |line_no, line| {
                    let line = match line {
                        // A byte-order mark opens the first line of some files written on
                        // Windows; it is not part of the first field.
                        Line::Complete(text) if base_lines == 0 && line_no == 1 => {
                            Line::Complete(text.strip_prefix(UTF8_BOM).unwrap_or(text))
                        }
                        other => other,
                    };
                    if let LineOutcome::SkipInput(reason) =
                        dec.line(component, &origin, base_lines + line_no, line)
                    {
                        return Err(Halt::Unreadable(reason));
                    }
                    if dec.is_full() {
                        return Err(Halt::Full);
                    }
                    Ok(())
                });
                let offset = lines.get_mut().offset;
                component.emit(BytesReceived {
                    bytes: offset - read_bytes,
                });
                read_bytes = offset;
                if let Some(cur) = progress.current() {
                    cur.offset = offset - lines.unfinished_bytes();
                    cur.lines = base_lines + lines.line_no() - 1;
                }
                match polled {
                    Err(e) => {
                        // What was read before goes first, in order.
                        if progress.send(dec, true, component, out).is_err() {
                            return Ended::Stop;
                        }
                        component.dead_letter(
                            &format!("{origin}:{}", base_lines + lines.line_no()),
                            &format!("cannot read further: {e}"),
                            b"",
                        );
                        return Ended::Done;
                    }
                    Ok(Err(Halt::Unreadable(reason))) => return Ended::Unreadable(reason),
                    Ok(Err(Halt::Full)) => {
                        if progress.send(dec, false, component, out).is_err() {
                            return Ended::Stop;
                        }
                    }
                    Ok(Ok(Poll::Read(_))) => {
                        // A file growing faster than it is read never reaches its end:
                        // the linger time bounds how long its events wait.
                        let now = Instant::now();
                        progress.linger.took_in(now);
                        if progress.linger.due(dec.is_full(), false, now)
                            && progress.send(dec, false, component, out).is_err()
                        {
                            return Ended::Stop;
                        }
                    }
                    Ok(Ok(Poll::Eof)) if !follow => return Ended::Done,
                    Ok(Ok(Poll::Eof)) => {
                        // Caught up with the file: what is held goes now.
                        if progress.send(dec, true, component, out).is_err()
                            || out.blocking_serve_barriers().is_err()
                        {
                            return Ended::Stop;
                        }
                        if let Some(acks) = &mut progress.acks {
                            acks.poll(component);
                        }
                        if let Some(w) = &mut watch {
                            w.wait(Duration::from_millis(self.config.poll_interval_ms));
                        }
                        if !compressed && was_replaced(path, identity, read_bytes) {
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
