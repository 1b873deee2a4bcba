//! `stdout` sink: events on the terminal, readable or as JSON Lines.

use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::time::{Duration, UNIX_EPOCH};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::{DataType, SchemaRef};
use schemars::JsonSchema;
use serde::Deserialize;
use tidegauge_core::component::sink_fn;
use tidegauge_core::{BuildContext, BuildError, ConfigError, Sink, SinkConfig};

use super::{BatchWriter, run_writer};
use crate::codec::encode::JsonEncoder;

/// Prints events to standard output: one readable line per event, or JSON Lines.
///
/// The text form shows the time (`ts` as UTC), the sensor, the other fields as
/// `name=value`, and for anomalies the detector and its reason.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {
    /// `text` for people, `json` for programs.
    #[serde(default)]
    pub format: StdoutFormat,
}

/// Output form of the `stdout` sink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StdoutFormat {
    /// One readable line per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl SinkConfig for StdoutSinkConfig {
    const TYPE: &'static str = "stdout";

    fn validate(&self, _input: &SchemaRef) -> Result<(), Vec<ConfigError>> {
        Ok(())
    }

    async fn build(
        &self,
        input: SchemaRef,
        _cx: BuildContext,
    ) -> Result<Box<dyn Sink>, BuildError> {
        let sink = StdoutSink {
            writer: StdoutWriter {
                format: self.format,
                json: JsonEncoder::new(&input),
                // Colour only on a terminal, never with NO_COLOR set (https://no-color.org).
                color: io::stdout().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
                buf: Vec::new(),
            },
        };
        Ok(sink_fn(move |input, cx| {
            run_writer(sink.writer, input, cx, Duration::from_millis(500))
        }))
    }
}

struct StdoutWriter {
    format: StdoutFormat,
    json: JsonEncoder,
    color: bool,
    buf: Vec<u8>,
}

/// Columns given a place of their own in the text form (not printed as `name=value`).
const SPECIAL: [&str; 6] = [
    "ts",
    "sensor_id",
    "is_anomaly",
    "detector",
    "reason",
    "anomaly_score",
];

/// The text form of every row.
pub fn format_text(batch: &RecordBatch, color: bool) -> Result<String, arrow_schema::ArrowError> {
    let schema = batch.schema();
    let col = |name: &str| schema.index_of(name).ok().map(|i| batch.column(i));
    let ts = col("ts").filter(|c| c.data_type() == &DataType::Int64);
    let sensor = col("sensor_id").filter(|c| c.data_type() == &DataType::Utf8);
    let anomaly = col("is_anomaly").filter(|c| c.data_type() == &DataType::Boolean);
    let detector = col("detector").filter(|c| c.data_type() == &DataType::Utf8);
    let reason = col("reason").filter(|c| c.data_type() == &DataType::Utf8);
    let score = col("anomaly_score").filter(|c| c.data_type() == &DataType::Float64);
    let options = FormatOptions::default().with_null("null");
    let others: Vec<(&str, &dyn Array, ArrayFormatter<'_>)> = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .filter(|(f, _)| !SPECIAL.contains(&f.name().as_str()))
        .map(|(f, c)| {
            ArrayFormatter::try_new(c.as_ref(), &options)
                .map(|fmt| (f.name().as_str(), c.as_ref(), fmt))
        })
        .collect::<Result<_, _>>()?;
    let mut out = String::new();
    for row in 0..batch.num_rows() {
        if let Some(ts) = ts.filter(|c| c.is_valid(row)) {
            let ms = ts.as_primitive::<Int64Type>().value(row);
            if ms >= 0 {
                let t = UNIX_EPOCH + Duration::from_millis(ms as u64);
                let _ = write!(out, "{} ", humantime::format_rfc3339_millis(t));
            } else {
                let _ = write!(out, "ts={ms} ");
            }
        }
        if let Some(s) = sensor.filter(|c| c.is_valid(row)) {
            let _ = write!(out, "{:<8} ", s.as_string::<i32>().value(row));
        }
        for (i, (name, column, fmt)) in others.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            match column.data_type() {
                DataType::Float64 if column.is_valid(row) => {
                    let v = column.as_primitive::<Float64Type>().value(row);
                    let _ = write!(out, "{name}={v:.3}");
                }
                _ => {
                    let _ = write!(out, "{name}={}", fmt.value(row));
                }
            }
        }
        if let Some(score) = score.filter(|c| c.is_valid(row)) {
            let _ = write!(
                out,
                " score={:.2}",
                score.as_primitive::<Float64Type>().value(row)
            );
        }
        let flagged = anomaly
            .map(|c| c.is_valid(row) && c.as_boolean().value(row))
            .unwrap_or(false);
        if flagged {
            let text = |c: Option<&std::sync::Arc<dyn Array>>| {
                c.filter(|c| c.is_valid(row))
                    .map(|c| c.as_string::<i32>().value(row).to_string())
                    .unwrap_or_default()
            };
            let (d, r) = (text(detector), text(reason));
            if color {
                let _ = write!(out, "  \x1b[1;31mANOMALY\x1b[0m {d}: {r}");
            } else {
                let _ = write!(out, "  ANOMALY {d}: {r}");
            }
        }
        out.push('\n');
    }
    Ok(out)
}

impl BatchWriter for StdoutWriter {
    fn write(&mut self, batch: &RecordBatch) -> io::Result<u64> {
        self.buf.clear();
        match self.format {
            StdoutFormat::Json => self
                .json
                .encode_batch(batch, &mut self.buf)
                .map_err(io::Error::other)?,
            StdoutFormat::Text => self.buf.extend_from_slice(
                format_text(batch, self.color)
                    .map_err(io::Error::other)?
                    .as_bytes(),
            ),
        }
        let mut out = io::stdout().lock();
        out.write_all(&self.buf)?;
        // Lines appear as they happen, not when a buffer fills.
        out.flush()?;
        Ok(self.buf.len() as u64)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stdout().lock().flush()
    }

    fn target(&self) -> String {
        "standard output".into()
    }
}

struct StdoutSink {
    writer: StdoutWriter,
}

tidegauge_core::register_sink!(StdoutSinkConfig);

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{BooleanArray, Float64Array, Int64Array, StringArray};
    use arrow_schema::{Field, Schema};
    use std::sync::Arc;

    #[test]
    fn text_lines_read_like_a_log() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("sensor_id", DataType::Utf8, false),
            Field::new("ts", DataType::Int64, false),
            Field::new("value", DataType::Float64, false),
            Field::new("z", DataType::Float64, true),
            Field::new("anomaly_score", DataType::Float64, false),
            Field::new("is_anomaly", DataType::Boolean, false),
            Field::new("detector", DataType::Utf8, false),
            Field::new("reason", DataType::Utf8, true),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["s-0001", "s-0002"])),
                Arc::new(Int64Array::from(vec![1_700_000_000_123, 1_700_000_000_124])),
                Arc::new(Float64Array::from(vec![42.5, 1.0])),
                Arc::new(Float64Array::from(vec![Some(4.2104), None])),
                Arc::new(Float64Array::from(vec![0.58, 0.0])),
                Arc::new(BooleanArray::from(vec![true, false])),
                Arc::new(StringArray::from(vec!["zscore", "zscore"])),
                Arc::new(StringArray::from(vec![Some("|z| 4.21 > 3"), None])),
            ],
        )
        .unwrap();
        let text = format_text(&b, false).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "2023-11-14T22:13:20.123Z s-0001   value=42.500 z=4.210 score=0.58  ANOMALY zscore: |z| 4.21 > 3"
        );
        assert_eq!(
            lines[1],
            "2023-11-14T22:13:20.124Z s-0002   value=1.000 z=null score=0.00"
        );
    }
}
