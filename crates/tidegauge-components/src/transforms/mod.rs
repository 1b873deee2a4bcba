//! Transforms: filters and detectors. One file per transform; shared keyed state and
//! detector output columns here.

pub mod alert;
pub mod baseline;
pub mod calibrated;
pub mod changepoint;
pub mod detector;
pub mod ensemble;
pub mod ewma;
pub mod filter;
pub mod flatline;
pub mod heartbeat;
pub mod hotelling;
pub mod key_table;
pub mod keyed;
pub mod mad;
pub mod rate_of_change;
pub mod relative_entropy;
pub mod seasonal;
pub mod spec;
pub mod state;
pub mod threshold;
pub mod window;
pub mod zscore;

use std::borrow::Cow;
use std::hash::BuildHasher;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray};
use arrow_buffer::{Buffer, NullBuffer, OffsetBuffer};
use arrow_schema::{ArrowError, DataType, Field, SchemaRef};
use tidegauge_core::ComponentError;
use tidegauge_detect::Verdict;

/// Interns sensor keys to dense ids, so per-key state lives in a `Vec` indexed by id.
/// Memory per key: the key's bytes plus about 48 bytes of table overhead. Ids stay dense
/// when a key is removed ([`KeyInterner::remove_id`] moves the last key into its place).
#[derive(Debug, Default)]
pub struct KeyInterner {
    ids: hashbrown::HashTable<(Box<str>, u32)>,
    /// The hash of each id's key, to find its entry without the key.
    hashes: Vec<u64>,
}

/// Table overhead per key of a [`KeyInterner`] (besides the key's bytes): the entry
/// (16-byte box, 4-byte id, padding), the table's control byte and load slack, the hash.
pub const KEY_OVERHEAD_BYTES: u64 = 48;

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
        if let Some(id) = self.find_hashed(key, hash) {
            return (id, false);
        }
        let id = self.ids.len() as u32;
        self.ids
            .insert_unique(hash, (key.into(), id), |(k, _)| key_hash(k));
        self.hashes.push(hash);
        (id as usize, true)
    }

    /// The id of `key` (with its [`key_hash`]), if it has one.
    pub fn find_hashed(&self, key: &str, hash: u64) -> Option<usize> {
        self.ids
            .find(hash, |(k, _)| **k == *key)
            .map(|(_, id)| *id as usize)
    }

    /// Forgets the key with id `id`; the key with the last id takes its id, so ids stay
    /// dense (the caller moves that key's state the same way: `Vec::swap_remove`).
    pub fn remove_id(&mut self, id: usize) {
        let last = self.hashes.len() - 1;
        if let Ok(entry) = self
            .ids
            .find_entry(self.hashes[id], |(_, i)| *i as usize == id)
        {
            entry.remove();
        }
        if id != last
            && let Some((_, i)) = self
                .ids
                .find_mut(self.hashes[last], |(_, i)| *i as usize == last)
        {
            *i = id as u32;
        }
        self.hashes.swap_remove(id);
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

/// Where a detector that adds [`detector_fields`] says its verdicts are, for the
/// runtime's live views: the key and value it reads, and the columns it adds.
pub fn detector_verdicts(
    key: Option<&str>,
    value: Option<&str>,
    statistic: &str,
) -> tidegauge_core::component::VerdictColumns {
    tidegauge_core::component::VerdictColumns {
        key: key.map(str::to_string),
        value: value.map(str::to_string),
        statistic: Some(statistic.to_string()),
        score: "anomaly_score".to_string(),
        flag: "is_anomaly".to_string(),
        reason: Some("reason".to_string()),
    }
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
        self.reasons.sort_unstable_by_key(|(row, _)| *row);
        let reason = sparse_strings(n, &self.reasons)?;
        let added: [(&str, ArrayRef); 5] = [
            (statistic, Arc::new(statistic_array)),
            ("anomaly_score", Arc::new(Float64Array::from(self.score))),
            ("is_anomaly", Arc::new(BooleanArray::from(self.is_anomaly))),
            ("detector", Arc::new(repeated(detector, n)?)),
            ("reason", Arc::new(reason)),
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

/// `text` `n` times, built in one pass over flat buffers.
fn repeated(text: &str, n: usize) -> Result<StringArray, ArrowError> {
    let len = i32::try_from(text.len())
        .map_err(|_| ArrowError::InvalidArgumentError("string too long".into()))?;
    let offsets: Vec<i32> = (0..=n as i32).map(|i| i * len).collect();
    let values = text.as_bytes().repeat(n);
    StringArray::try_new(
        OffsetBuffer::new(offsets.into()),
        Buffer::from_vec(values),
        None,
    )
}

/// `n` strings, null but for the rows of `texts` (sorted by row, each row once).
fn sparse_strings(n: usize, texts: &[(u32, String)]) -> Result<StringArray, ArrowError> {
    if texts.is_empty() {
        return Ok(StringArray::new_null(n));
    }
    let mut offsets = vec![0i32; n + 1];
    let mut valid = vec![false; n];
    let mut values = Vec::with_capacity(texts.iter().map(|(_, t)| t.len()).sum());
    let mut filled = 0; // offsets[..=filled] are set
    for (row, text) in texts {
        let row = *row as usize;
        let end = values.len() as i32;
        offsets[filled + 1..=row].fill(end);
        values.extend_from_slice(text.as_bytes());
        offsets[row + 1] = i32::try_from(values.len())
            .map_err(|_| ArrowError::InvalidArgumentError("reasons too long".into()))?;
        valid[row] = true;
        filled = row + 1;
    }
    let end = values.len() as i32;
    offsets[filled + 1..].fill(end);
    StringArray::try_new(
        OffsetBuffer::new(offsets.into()),
        Buffer::from_vec(values),
        Some(NullBuffer::from(valid)),
    )
}

/// The values of a numeric column as f64 (Int64 converted).
pub(crate) fn float_values(column: &dyn Array) -> Result<Cow<'_, [f64]>, ComponentError> {
    match column.data_type() {
        DataType::Float64 => Ok(Cow::Borrowed(column.as_primitive::<Float64Type>().values())),
        DataType::Int64 => Ok(Cow::Owned(
            column
                .as_primitive::<Int64Type>()
                .values()
                .iter()
                .map(|&v| v as f64)
                .collect(),
        )),
        other => Err(ComponentError::new(format!(
            "expected a Float64 or Int64 column, got {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use arrow_array::Array;

    use super::*;

    #[test]
    fn sparse_strings_match_a_builder() {
        let cases: [&[(u32, &str)]; 5] = [
            &[],
            &[(0, "a")],
            &[(4, "last")],
            &[(0, "x"), (1, ""), (2, "yz")],
            &[(1, "b"), (3, "dd")],
        ];
        for texts in cases {
            let owned: Vec<(u32, String)> =
                texts.iter().map(|(r, t)| (*r, t.to_string())).collect();
            let got = sparse_strings(5, &owned).unwrap();
            let want: StringArray = (0..5u32)
                .map(|row| texts.iter().find(|(r, _)| *r == row).map(|(_, t)| *t))
                .collect();
            assert_eq!(got, want, "{texts:?}");
        }
        assert_eq!(repeated("ab", 3).unwrap(), StringArray::from(vec!["ab"; 3]));
        assert_eq!(repeated("ab", 0).unwrap().len(), 0);
    }
}
