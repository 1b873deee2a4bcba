//! Sources that read local input (the simulator, files, stdin). One file per source;
//! line decoding and the batch settings every source shares are here. Network sources
//! live in [`crate::connectors`], grouped by the system they talk to.

pub mod file;
mod file_acks;
mod file_paths;
mod file_watch;
pub(crate) mod linger;
mod parallel;
pub mod simulate;
pub mod stdin;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use schemars::JsonSchema;
use serde::Deserialize;
use tidegauge_core::{ComponentContext, ConfigError};

use crate::codec::csv::{CsvDecoder, CsvError, CsvLine};
use crate::codec::json::JsonDecoder;
use crate::codec::lines::Line;
use crate::codec::{Columns, FieldMap, Row};

/// How records are written in the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// Comma- (or otherwise) separated values, one record per line.
    Csv,
}

/// CSV settings.
#[derive(Clone, Debug, Deserialize, JsonSchema, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CsvOptions {
    /// Field separator, one ASCII character (SKAB uses `;`).
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// Whether each input starts with a header naming its columns. Without one, columns
    /// map to `fields` by position.
    #[serde(default = "default_true")]
    pub header: bool,
}

fn default_delimiter() -> String {
    ",".into()
}

fn default_true() -> bool {
    true
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            delimiter: default_delimiter(),
            header: true,
        }
    }
}

impl CsvOptions {
    /// The delimiter byte, or an error at `csv.delimiter`.
    pub fn delimiter_byte(&self) -> Result<u8, ConfigError> {
        match self.delimiter.as_bytes() {
            [b] if b.is_ascii() && *b != b'"' && *b != b'\n' => Ok(*b),
            _ => Err(ConfigError::new(
                "csv.delimiter",
                format!(
                    "must be one ASCII character other than a quote or newline, got {:?}",
                    self.delimiter
                ),
            )),
        }
    }
}

/// How a source groups events into batches. A batch is sent when it is full, as soon as
/// the source has read everything available for now (a thin stream is never held back),
/// or when its oldest event has waited `linger_ms` however fast more arrive.
#[derive(Clone, Debug, Deserialize, JsonSchema, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most events per batch.
    #[serde(default = "default_batch_rows")]
    #[schemars(range(min = 1))]
    pub rows: usize,
    /// Longest time an event waits for its batch to fill while more input keeps
    /// arriving, in milliseconds. A source that has read all there is sends at once.
    #[serde(default = "default_linger_ms")]
    #[schemars(range(min = 1))]
    pub linger_ms: u64,
    /// Most bytes a batch holds (its columns' values: 8 per number, 4 plus the text per
    /// string), so that events with large text fields cannot make one batch take hundreds
    /// of MiB; a batch is sent when it reaches either `rows` or this.
    #[serde(default = "default_batch_max_bytes")]
    #[schemars(range(min = 1024))]
    pub max_bytes: usize,
}

fn default_batch_max_bytes() -> usize {
    16 << 20
}

fn default_batch_rows() -> usize {
    8192
}

fn default_linger_ms() -> u64 {
    100
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            rows: default_batch_rows(),
            linger_ms: default_linger_ms(),
            max_bytes: default_batch_max_bytes(),
        }
    }
}

/// Checks the declared fields: at least one, optional ones among them.
pub(crate) fn validate_fields(
    fields: &FieldMap,
    optional: &[String],
    errors: &mut Vec<ConfigError>,
) {
    if fields.is_empty() {
        errors.push(ConfigError::new(
            "fields",
            "declare at least one field, e.g. `fields = { sensor_id = \"string\", ts = \"timestamp\", value = \"float64\" }`",
        ));
    }
    for (i, name) in optional.iter().enumerate() {
        if !fields.contains_key(name) {
            errors.push(ConfigError::new(
                format!("optional_fields[{i}]"),
                format!("`{name}` is not one of the declared fields"),
            ));
        }
    }
}

enum Decoder {
    Json(JsonDecoder),
    Csv(Box<CsvDecoder>),
}

/// What the caller should do after a line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LineOutcome {
    /// Go on.
    Continue,
    /// The rest of this input cannot be read with this config (a CSV header without the
    /// declared fields), for this reason; the caller reports it.
    SkipInput(String),
}

/// Lines in, batches out: decodes each line, dead-letters what cannot be decoded.
pub(crate) struct LineDecoder {
    decoder: Decoder,
    row: Row,
    columns: Columns,
    batch_rows: usize,
    batch_bytes: usize,
}

impl LineDecoder {
    pub(crate) fn new(
        format: Format,
        csv: &CsvOptions,
        fields: &FieldMap,
        schema: SchemaRef,
        batch: &BatchConfig,
    ) -> Self {
        let names: Vec<String> = fields.keys().cloned().collect();
        let decoder = match format {
            Format::Jsonl => Decoder::Json(JsonDecoder::new(names)),
            Format::Csv => Decoder::Csv(Box::new(CsvDecoder::new(
                names,
                csv.delimiter_byte().unwrap_or(b','),
                csv.header,
            ))),
        };
        LineDecoder {
            decoder,
            row: Row::new(fields.len()),
            columns: Columns::new(schema, fields, batch.rows),
            batch_rows: batch.rows,
            batch_bytes: batch.max_bytes,
        }
    }

    /// Call when a new input (file) starts.
    pub(crate) fn start_input(&mut self) {
        if let Decoder::Csv(c) = &mut self.decoder {
            c.start_input();
        }
    }

    /// Whether the next line that is not blank is taken as a CSV header.
    pub(crate) fn awaits_header(&self) -> bool {
        matches!(&self.decoder, Decoder::Csv(c) if c.awaits_header())
    }

    /// Decodes one framed line from `origin`; bad lines go to the dead-letter output.
    pub(crate) fn line(
        &mut self,
        cx: &ComponentContext,
        origin: &str,
        line_no: u64,
        line: Line<'_>,
    ) -> LineOutcome {
        self.line_to(origin, line_no, line, &mut |location, reason, raw| {
            cx.dead_letter(location, reason, raw)
        })
    }

    /// Like [`LineDecoder::line`], handing each dead letter (location, reason, raw) to
    /// `dead` (a decoder thread keeps them for the reader to write in input order).
    pub(crate) fn line_to(
        &mut self,
        origin: &str,
        line_no: u64,
        line: Line<'_>,
        dead: &mut dyn FnMut(&str, &str, &[u8]),
    ) -> LineOutcome {
        let text = match line {
            Line::TooLong { head, len } => {
                dead(
                    &format!("{origin}:{line_no}"),
                    &format!("line of {len} bytes exceeds max_line_bytes; skipped"),
                    head,
                );
                return LineOutcome::Continue;
            }
            Line::Complete(text) => text,
        };
        // A record starts with what is not white space (`{`, a CSV field): one byte
        // tells, for nearly every line.
        if text.first().is_none_or(u8::is_ascii_whitespace)
            && text.iter().all(u8::is_ascii_whitespace)
        {
            return LineOutcome::Continue;
        }
        let decoded = match &mut self.decoder {
            Decoder::Json(d) => d.decode(text, &mut self.row),
            Decoder::Csv(d) => match d.decode(text, &mut self.row) {
                Ok(CsvLine::Header) => return LineOutcome::Continue,
                Ok(CsvLine::Record) => Ok(()),
                Err(CsvError::Record(e)) => Err(e),
                Err(CsvError::Header(e)) => return LineOutcome::SkipInput(e),
            },
        };
        if let Err(reason) = decoded.and_then(|()| self.columns.push(&mut self.row)) {
            dead(&format!("{origin}:{line_no}"), &reason, text);
        }
        LineOutcome::Continue
    }

    /// Whether a full batch is ready.
    pub(crate) fn is_full(&self) -> bool {
        self.columns.len() >= self.batch_rows || self.columns.bytes() >= self.batch_bytes
    }

    /// The rows decoded so far as a batch (none if there are none).
    pub(crate) fn take(&mut self, cx: &ComponentContext) -> Option<RecordBatch> {
        self.columns.take(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tidegauge_core::dead_letter::DeadLetter;
    use tidegauge_core::registry::ComponentKind;
    use tidegauge_core::telemetry::ComponentTelemetry;

    use super::*;
    use crate::codec::{default_fields, schema_for};

    fn decoder(batch: &BatchConfig) -> (LineDecoder, ComponentContext) {
        let fields = default_fields();
        let schema = schema_for(&fields, &[]);
        let dec = LineDecoder::new(
            Format::Jsonl,
            &CsvOptions::default(),
            &fields,
            schema,
            batch,
        );
        let t = Arc::new(ComponentTelemetry::new("in", ComponentKind::Source, "file"));
        (dec, ComponentContext::new(t, DeadLetter::stderr()))
    }

    #[test]
    fn a_batch_of_large_events_is_full_at_max_bytes_before_max_rows() {
        let batch = BatchConfig {
            rows: 1_000,
            max_bytes: 64 * 1024,
            ..BatchConfig::default()
        };
        let (mut dec, cx) = decoder(&batch);
        let name = "s".repeat(10_000);
        let mut rows = 0;
        while !dec.is_full() {
            let line = format!(r#"{{"sensor_id":"{name}-{rows}","ts":{rows},"value":1.5}}"#);
            dec.line(&cx, "test", rows + 1, Line::Complete(line.as_bytes()));
            rows += 1;
            assert!(rows < 1_000, "never full by bytes");
        }
        // 64 KiB of about 10 KB per event: the seventh fills it.
        assert_eq!(rows, 7);
        let b = dec.take(&cx).unwrap();
        assert_eq!(b.num_rows(), 7);
        assert!(!dec.is_full(), "the count starts over with the next batch");
    }

    #[test]
    fn small_events_fill_a_batch_by_rows() {
        let batch = BatchConfig {
            rows: 100,
            ..BatchConfig::default()
        };
        let (mut dec, cx) = decoder(&batch);
        for i in 0..100u64 {
            assert!(!dec.is_full());
            let line = format!(r#"{{"sensor_id":"s-{i}","ts":{i},"value":1.5}}"#);
            dec.line(&cx, "test", i + 1, Line::Complete(line.as_bytes()));
        }
        assert!(dec.is_full());
    }
}
