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

use std::hash::BuildHasher;
use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::{ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray};
use arrow_buffer::NullBuffer;
use arrow_schema::{ArrowError, DataType, Field, SchemaRef};
use tidegauge_detect::Verdict;

/// Interns sensor keys to dense ids, so per-key state lives in a `Vec` indexed by id.
/// Memory per key: the key's bytes plus about 40 bytes of table overhead.
#[derive(Debug, Default)]
pub struct KeyInterner {
    ids: hashbrown::HashTable<(Box<str>, u32)>,
}

/// The hash a [`KeyInterner`] files `key` under (also what sharding uses, so a key is
/// hashed once per event).
pub fn key_hash(key: &str) -> u64 {
    rustc_hash::FxBuildHasher.hash_one(key)
}

impl KeyInterner {
    /// The id of `key`, and whether it is new (the caller then creates its state).
    pub fn id(&mut self, key: &str) -> (usize, bool) {
        self.id_hashed(key, key_hash(key))
    }

    /// [`KeyInterner::id`] for a key whose [`key_hash`] is known.
    pub fn id_hashed(&mut self, key: &str, hash: u64) -> (usize, bool) {
        if let Some((_, id)) = self.ids.find(hash, |(k, _)| **k == *key) {
            return (*id as usize, false);
        }
        let id = self.ids.len() as u32;
        self.ids
            .insert_unique(hash, (key.into(), id), |(k, _)| key_hash(k));
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

    /// Every key with its id, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32)> {
        self.ids.iter().map(|(k, id)| (&**k, *id))
    }

    /// The keys in id order.
    pub fn into_keys(self) -> Vec<Box<str>> {
        let mut ordered: Vec<(Box<str>, u32)> = self.ids.into_iter().collect();
        ordered.sort_unstable_by_key(|&(_, id)| id);
        ordered.into_iter().map(|(k, _)| k).collect()
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

/// A detector's added columns for one batch, filled in any row order (each row at most
/// once, so shards can fill their own rows); a row never set has no verdict (no
/// statistic, score 0, not an anomaly).
pub struct DetectorColumns {
    statistic: Vec<f64>,
    has_statistic: Vec<bool>,
    score: Vec<f64>,
    is_anomaly: Vec<bool>,
    reasons: Vec<(u32, String)>,
    anomalies: u64,
}

impl DetectorColumns {
    /// Columns for `n` rows, none with a verdict yet.
    pub fn new(n: usize) -> Self {
        DetectorColumns {
            statistic: vec![0.0; n],
            has_statistic: vec![false; n],
            score: vec![0.0; n],
            is_anomaly: vec![false; n],
            reasons: Vec::new(),
            anomalies: 0,
        }
    }

    /// Row `row`'s verdict.
    pub fn set(&mut self, row: usize, verdict: Verdict) {
        if let Some(s) = verdict.statistic {
            self.statistic[row] = s;
            self.has_statistic[row] = true;
        }
        self.score[row] = verdict.score;
        self.is_anomaly[row] = verdict.is_anomaly;
        self.anomalies += u64::from(verdict.is_anomaly);
    }

    /// Why row `row` is an anomaly.
    pub fn reason(&mut self, row: usize, reason: String) {
        self.reasons.push((row as u32, reason));
    }

    /// Anomalies among the rows set.
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
        let nulls = NullBuffer::from(self.has_statistic);
        let statistic_array = Float64Array::new(
            self.statistic.into(),
            (nulls.null_count() > 0).then_some(nulls),
        );
        let reason: ArrayRef = if self.reasons.is_empty() {
            Arc::new(StringArray::new_null(n))
        } else {
            self.reasons.sort_unstable_by_key(|(row, _)| *row);
            let bytes = self.reasons.iter().map(|(_, r)| r.len()).sum();
            let mut b = StringBuilder::with_capacity(n, bytes);
            let mut next = self.reasons.iter().peekable();
            for row in 0..n as u32 {
                match next.next_if(|(r, _)| *r == row) {
                    Some((_, text)) => b.append_value(text),
                    None => b.append_null(),
                }
            }
            Arc::new(b.finish())
        };
        let added: [(&str, ArrayRef); 5] = [
            (statistic, Arc::new(statistic_array)),
            ("anomaly_score", Arc::new(Float64Array::from(self.score))),
            ("is_anomaly", Arc::new(BooleanArray::from(self.is_anomaly))),
            (
                "detector",
                Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                    detector, n,
                ))),
            ),
            ("reason", reason),
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
