//! Transforms: filters and detectors. One file per transform; shared keyed state and
//! detector output columns here.

pub mod baseline;
pub mod changepoint;
pub mod ensemble;
pub mod ewma;
pub mod filter;
pub mod flatline;
pub mod heartbeat;
pub mod keyed;
pub mod mad;
pub mod rate_of_change;
pub mod seasonal;
pub mod state;
pub mod threshold;
pub mod window;
pub mod zscore;

use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Float64Builder, StringBuilder};
use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow_schema::{ArrowError, DataType, Field, SchemaRef};
use rustc_hash::FxHashMap;

/// Interns sensor keys to dense ids, so per-key state lives in a `Vec` indexed by id.
/// Memory per key: the key's bytes plus about 40 bytes of table overhead.
#[derive(Debug, Default)]
pub struct KeyInterner {
    ids: FxHashMap<Box<str>, u32>,
}

impl KeyInterner {
    /// The id of `key`, and whether it is new (the caller then creates its state).
    pub fn id(&mut self, key: &str) -> (usize, bool) {
        if let Some(&id) = self.ids.get(key) {
            return (id as usize, false);
        }
        let id = self.ids.len() as u32;
        self.ids.insert(key.into(), id);
        (id as usize, true)
    }

    /// Number of distinct keys seen.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no key has been seen.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The columns every detector adds: its statistic, `anomaly_score`, `is_anomaly`,
/// `detector` and `reason`.
pub fn detector_fields(statistic: &str) -> Vec<Field> {
    vec![
        Field::new(statistic, DataType::Float64, true),
        Field::new("anomaly_score", DataType::Float64, false),
        Field::new("is_anomaly", DataType::Boolean, false),
        Field::new("detector", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, true),
    ]
}

/// Builds a detector's added columns, row by row.
pub struct DetectorColumns {
    statistic: Float64Builder,
    score: Vec<f64>,
    is_anomaly: BooleanBuilder,
    reason: StringBuilder,
    anomalies: u64,
}

impl DetectorColumns {
    /// Builders for `n` rows.
    pub fn with_capacity(n: usize) -> Self {
        DetectorColumns {
            statistic: Float64Builder::with_capacity(n),
            score: Vec::with_capacity(n),
            is_anomaly: BooleanBuilder::with_capacity(n),
            reason: StringBuilder::with_capacity(n, 16),
            anomalies: 0,
        }
    }

    /// One row with no verdict (warming up, or no usable value).
    pub fn push_none(&mut self) {
        self.statistic.append_null();
        self.score.push(0.0);
        self.is_anomaly.append_value(false);
        self.reason.append_null();
    }

    /// One row's verdict; `reason` is only asked for anomalies.
    pub fn push(
        &mut self,
        statistic: Option<f64>,
        score: f64,
        anomaly: bool,
        reason: impl FnOnce() -> String,
    ) {
        self.statistic.append_option(statistic);
        self.score.push(score);
        self.is_anomaly.append_value(anomaly);
        if anomaly {
            self.anomalies += 1;
            self.reason.append_value(reason());
        } else {
            self.reason.append_null();
        }
    }

    /// Anomalies among the rows pushed.
    pub fn anomalies(&self) -> u64 {
        self.anomalies
    }

    /// The input batch with the detector's columns added (or replacing same-named ones).
    pub fn finish(
        mut self,
        input: &RecordBatch,
        output: &SchemaRef,
        statistic: &str,
        detector: &str,
    ) -> Result<RecordBatch, ArrowError> {
        let n = input.num_rows();
        let added: [(&str, ArrayRef); 5] = [
            (statistic, Arc::new(self.statistic.finish())),
            ("anomaly_score", Arc::new(Float64Array::from(self.score))),
            ("is_anomaly", Arc::new(self.is_anomaly.finish())),
            (
                "detector",
                Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                    detector, n,
                ))),
            ),
            ("reason", Arc::new(self.reason.finish())),
        ];
        let input_schema = input.schema();
        let columns = output
            .fields()
            .iter()
            .map(|f| {
                if let Some((_, a)) = added.iter().find(|(name, _)| *name == f.name()) {
                    Ok(a.clone())
                } else {
                    input_schema
                        .index_of(f.name())
                        .map(|i| input.column(i).clone())
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        RecordBatch::try_new(output.clone(), columns)
    }
}
