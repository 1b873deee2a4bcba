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
#[cfg(test)]
mod partition_harness;
mod partitioned;
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
///
/// The keys' text lies end to end in one buffer and the hash table holds only ids: a key
/// costs its bytes and about 24 more (its id in the table with the control byte and load
/// slack, where its text lies, the buffers' room to grow), instead of a heap allocation of
/// its own and a 24-byte table entry. The text is at most [`KeyInterner::MAX_TEXT`] bytes
/// (4 GiB), so that where a key lies fits in two 4-byte offsets. Ids stay dense when a
/// key is removed ([`KeyInterner::remove_id`] moves the last key into its place); the
/// text of removed keys is reclaimed once it is half of the buffer.
#[derive(Debug, Default)]
pub struct KeyInterner {
    /// Ids, filed under their key's [`key_hash`].
    ids: hashbrown::HashTable<u32>,
    /// Where each id's key lies in `text`: start and end.
    spans: Vec<(u32, u32)>,
    /// The keys' text, end to end; removed keys leave holes until the next compaction.
    text: String,
    /// Bytes of `text` in holes.
    holes: usize,
}

/// Table overhead per key of a [`KeyInterner`] (besides the key's bytes): the id in the
/// table with its control byte and load slack, where its text lies, the buffers' room to
/// grow.
pub const KEY_OVERHEAD_BYTES: u64 = 24;

/// The hash a [`KeyInterner`] files `key` under (also what sharding uses, so a key is
/// hashed once per event).
pub fn key_hash(key: &str) -> u64 {
    rustc_hash::FxBuildHasher.hash_one(key)
}

impl KeyInterner {
    /// The most text the keys take together, holes of removed keys aside.
    pub const MAX_TEXT: usize = u32::MAX as usize;

    /// Whether a new `key`'s text fits beside the others' ([`KeyInterner::MAX_TEXT`],
    /// holes counted as free: they are compacted away first). Ask before giving a new
    /// key from input an id; a key that does not fit gets no state, as when `max_keys`
    /// is reached.
    pub fn has_room_for(&self, key: &str) -> bool {
        self.text.len() - self.holes + key.len() <= Self::MAX_TEXT
    }

    /// The id of `key`, and whether it is new (the caller then creates its state).
    ///
    /// # Panics
    /// If `key` is new and does not fit ([`KeyInterner::has_room_for`]).
    pub fn id(&mut self, key: &str) -> (usize, bool) {
        self.id_hashed(key, key_hash(key))
    }

    /// [`KeyInterner::id`] for a key whose [`key_hash`] is known.
    pub fn id_hashed(&mut self, key: &str, hash: u64) -> (usize, bool) {
        if let Some(id) = self.find_hashed(key, hash) {
            return (id, false);
        }
        assert!(
            self.has_room_for(key),
            "the keys' text would pass {} bytes",
            Self::MAX_TEXT
        );
        if self.text.len() + key.len() > Self::MAX_TEXT {
            self.compact();
        }
        let id = self.spans.len();
        let start = self.text.len() as u32;
        self.text.push_str(key);
        self.spans.push((start, self.text.len() as u32));
        let (spans, text) = (&self.spans, &self.text);
        self.ids.insert_unique(hash, id as u32, |&i| {
            let (s, e) = spans[i as usize];
            key_hash(&text[s as usize..e as usize])
        });
        (id, true)
    }

    /// The id of `key` (with its [`key_hash`]), if it has one.
    #[inline]
    pub fn find_hashed(&self, key: &str, hash: u64) -> Option<usize> {
        // Bytes, not `str` slices: no char-boundary checks on the hot path.
        let (spans, text) = (&self.spans, self.text.as_bytes());
        self.ids
            .find(hash, |&i| {
                let (s, e) = spans[i as usize];
                text[s as usize..e as usize] == *key.as_bytes()
            })
            .map(|&i| i as usize)
    }

    /// The key with id `id`.
    ///
    /// # Panics
    /// If `id` is not an id of this interner.
    pub fn key(&self, id: usize) -> &str {
        let (s, e) = self.spans[id];
        &self.text[s as usize..e as usize]
    }

    /// Forgets the key with id `id`; the key with the last id takes its id, so ids stay
    /// dense (the caller moves that key's state the same way: `Vec::swap_remove`).
    pub fn remove_id(&mut self, id: usize) {
        let Some(last) = self.spans.len().checked_sub(1) else {
            return;
        };
        if id > last {
            return;
        }
        if let Ok(entry) = self
            .ids
            .find_entry(key_hash(self.key(id)), |&i| i as usize == id)
        {
            entry.remove();
        }
        if id != last {
            let hash = key_hash(self.key(last));
            if let Some(i) = self.ids.find_mut(hash, |&i| i as usize == last) {
                *i = id as u32;
            }
        }
        let (s, e) = self.spans.swap_remove(id);
        self.holes += (e - s) as usize;
        if self.spans.is_empty() {
            self.text.clear();
            self.holes = 0;
        } else if self.holes > self.text.len() / 2 && self.holes >= 4096 {
            self.compact();
        }
    }

    /// Rewrites the text without the holes (ids, hashes and the table are unchanged).
    fn compact(&mut self) {
        let mut text = String::with_capacity(self.text.len() - self.holes);
        for span in &mut self.spans {
            let start = text.len() as u32;
            text.push_str(&self.text[span.0 as usize..span.1 as usize]);
            *span = (start, text.len() as u32);
        }
        self.text = text;
        self.holes = 0;
    }

    /// Number of distinct keys seen.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether no key has been seen.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Every key with its id, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32)> {
        (0..self.spans.len()).map(|id| (self.key(id), id as u32))
    }

    /// The keys in id order.
    pub fn into_keys(self) -> Vec<Box<str>> {
        self.iter().map(|(k, _)| k.into()).collect()
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

    /// A key of the interner's property test: long enough, for some, that removals
    /// leave the holes that trigger a compaction.
    fn test_key(i: usize) -> String {
        format!("{i}-{}", "k".repeat(i * 37 % 700))
    }

    proptest::proptest! {
        /// Against a model (a `Vec` of keys by id, removal moving the last key into the
        /// gap): every key finds its id, ids stay dense, and compaction loses nothing.
        #[test]
        fn interner_matches_a_vec_of_keys(
            ops in proptest::collection::vec((proptest::prelude::any::<bool>(), 0usize..60), 1..400),
        ) {
            let mut interner = KeyInterner::default();
            let mut model: Vec<String> = Vec::new();
            for (insert, n) in ops {
                if insert || model.is_empty() {
                    let key = test_key(n);
                    let (id, new) = interner.id(&key);
                    match model.iter().position(|k| *k == key) {
                        Some(at) => proptest::prop_assert_eq!((id, new), (at, false)),
                        None => {
                            proptest::prop_assert_eq!((id, new), (model.len(), true));
                            model.push(key);
                        }
                    }
                } else {
                    let id = n % model.len();
                    interner.remove_id(id);
                    model.swap_remove(id);
                }
                proptest::prop_assert_eq!(interner.len(), model.len());
                for (id, k) in model.iter().enumerate() {
                    proptest::prop_assert_eq!(interner.find_hashed(k, key_hash(k)), Some(id));
                    proptest::prop_assert_eq!(interner.key(id), k.as_str());
                }
                proptest::prop_assert!(interner.text.len() - interner.holes
                    == model.iter().map(|k| k.len()).sum::<usize>());
            }
            let gone = test_key(60);
            proptest::prop_assert_eq!(interner.find_hashed(&gone, key_hash(&gone)), None);
            let keys: Vec<String> = interner.into_keys().into_iter().map(String::from).collect();
            proptest::prop_assert_eq!(keys, model);
        }
    }

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
