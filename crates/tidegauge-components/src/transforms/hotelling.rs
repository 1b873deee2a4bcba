//! `hotelling` transform: several readings of one machine judged together (Hotelling's
//! T² of their smoothed values against a reference learnt over a warm-up).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::partitions::Hub;
use crate::telemetry::KeysTracked;
use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch, StringArray};
use arrow_schema::{DataType, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tidegauge_core::schema::{extend, require_field};
use tidegauge_core::telemetry::{AnomaliesDetected, MetricDesc};
use tidegauge_core::{
    BuildContext, BuildError, ComponentError, ConfigError, Transform, TransformConfig,
    TransformContext,
};
use tidegauge_detect::{Hotelling, HotellingParams, hotelling::MAX_CHANNELS};

use super::key_table::{KeyLimits, KeyTable, NoHooks};
use super::partitioned::{Moves, PartitionedState, Partitioning, partition_columns};
use super::spec::param_errors_renamed;
use super::state::{decode_keyed, encode_keyed};
use super::{DetectorColumns, KeyInterner, detector_fields, float_values, key_hash};

/// Several sensors of one machine judged together: each event carries one reading per
/// field of `value_fields` (a row of the machine's sensors); each reading is smoothed
/// (half-life `half_life_events`), and the row's distance from the machine's normal
/// operation — the Mahalanobis distance of the smoothed readings from the mean and
/// covariance learnt over the first `warmup` rows — is compared with a threshold the
/// machine learns for itself from the second half of its warm-up (`target_alarm_rate`,
/// never below `threshold`), as `baseline` does for one sensor. Sensors that move together
/// count once, and a change in how they move together (pressure no longer following flow)
/// is flagged even when each stays in its range. The reference is held after the warm-up.
///
/// State per machine (`key_field`; without one, the whole stream is one machine):
/// about 8·(d² + 4d) bytes for d readings, O(d²) per row. Fed by a `kafka` source with
/// `partition_state`, the machines are kept per partition as the keyed detectors keep
/// their keys (a machine belongs to the partition it was first seen in; rows of
/// partitions not owned are dropped, a partition's machines go to the hub at a cut and
/// come back on assignment); without `key_field` the one machine is the whole stream,
/// which no partition owns: its state stays per instance (a warning at build says so). Adds `distance`,
/// `anomaly_score`, `is_anomaly`, `detector` ("hotelling") and `reason`, which names the
/// field that moved furthest. A row with a missing or non-finite reading gets no verdict.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HotellingConfig {
    /// Field naming the machine; state is kept per distinct value. Unset: one machine.
    pub key_field: Option<String>,
    /// The readings judged together (Float64 or Int64 fields), 1 to 64 of them.
    pub value_fields: Vec<String>,
    /// Rows that learn the reference (longer while no reading has any spread).
    #[schemars(range(min = 4, max = 1000000))]
    pub warmup: u32,
    /// Half-life of each reading's smoothing, in rows.
    #[schemars(extend("exclusiveMinimum" = 0.0))]
    pub half_life_events: f64,
    /// Lowest distance that is an anomaly.
    #[schemars(extend("exclusiveMinimum" = 0.0))]
    pub threshold: f64,
    /// Share of normal rows each machine's learnt threshold aims to flag; 0: `threshold`.
    #[schemars(range(min = 0.0), extend("exclusiveMaximum" = 1.0))]
    pub target_alarm_rate: f64,
    /// Ridge added to the covariance's diagonal, relative to it.
    #[schemars(range(min = 0.0))]
    pub ridge: f64,
    /// Most machines holding state at once. A new machine past the cap takes the place of
    /// one silent for `key_idle_ms` (it starts cold if it comes back); when none is, its
    /// rows get no verdict (counted in `/metrics`, with a warning). `max_keys` times the
    /// bytes a machine's state can reach must stay under 4 GiB.
    #[schemars(range(min = 1, max = 100000000))]
    pub max_keys: usize,
    /// Silence after which a machine's state may be dropped to make room, in milliseconds.
    #[schemars(range(min = 1))]
    pub key_idle_ms: u64,
}

impl Default for HotellingConfig {
    fn default() -> Self {
        let p = HotellingParams::default();
        HotellingConfig {
            key_field: None,
            value_fields: Vec::new(),
            warmup: p.warmup,
            half_life_events: p.half_life,
            threshold: p.threshold,
            target_alarm_rate: p.target_alarm_rate,
            ridge: p.ridge,
            max_keys: super::spec::DEFAULT_MAX_KEYS,
            key_idle_ms: super::spec::DEFAULT_KEY_IDLE_MS,
        }
    }
}

impl HotellingConfig {
    fn params(&self) -> HotellingParams {
        HotellingParams {
            warmup: self.warmup,
            half_life: self.half_life_events,
            threshold: self.threshold,
            target_alarm_rate: self.target_alarm_rate,
            ridge: self.ridge,
        }
    }
}

const STATISTIC: &str = "distance";
const NAME: &str = "hotelling";

impl TransformConfig for HotellingConfig {
    const TYPE: &'static str = NAME;
    const METRICS: &'static [&'static MetricDesc] = crate::telemetry::KEY_METRICS;

    fn validate(&self, input: &SchemaRef) -> Result<SchemaRef, Vec<ConfigError>> {
        let mut errors =
            param_errors_renamed(self.params().validate(), "half_life", "half_life_events");
        if self.value_fields.is_empty() || self.value_fields.len() > MAX_CHANNELS {
            errors.push(ConfigError::new(
                "value_fields",
                format!(
                    "list 1 to {MAX_CHANNELS} fields read together, e.g. `value_fields = [\"flow\", \"pressure\"]`; got {}",
                    self.value_fields.len()
                ),
            ));
        }
        for (i, f) in self.value_fields.iter().enumerate() {
            if let Err(e) = require_field(
                input,
                &format!("value_fields[{i}]"),
                f,
                &[DataType::Float64, DataType::Int64],
            ) {
                errors.push(e);
            }
        }
        if let Some(k) = &self.key_field
            && let Err(e) = require_field(input, "key_field", k, &[DataType::Utf8])
        {
            errors.push(e);
        }
        if errors.is_empty() {
            // Means, co-moments, the reference's factor (d² each at most), the warm-up's
            // deviations, the state itself.
            let d = self.value_fields.len() as u64;
            let bytes = 8 * (2 * d * d + 5 * d)
                + 4 * u64::from(self.warmup)
                + std::mem::size_of::<Hotelling>() as u64
                + 64;
            errors.extend(super::spec::check_key_limits(self.max_keys, bytes));
        }
        if errors.is_empty() {
            Ok(extend(input, &detector_fields(STATISTIC)))
        } else {
            Err(errors)
        }
    }

    fn build(
        &self,
        input: SchemaRef,
        output: SchemaRef,
        cx: BuildContext,
    ) -> Result<Box<dyn Transform>, BuildError> {
        Ok(Box::new(self.build_in(
            input,
            output,
            cx.component.id(),
            &crate::partitions::process_hub(),
        )?))
    }
}

impl HotellingConfig {
    /// [`TransformConfig::build`], meeting a changelog-backed source in `hub` as `id`.
    fn build_in(
        &self,
        input: SchemaRef,
        output: SchemaRef,
        id: &str,
        hub: &Arc<Hub>,
    ) -> Result<HotellingTransform, BuildError> {
        let find = |name: &str| tidegauge_core::schema::field_index(&input, name);
        let partitioning = partition_columns(&input).and_then(|_| {
            if self.key_field.is_none() {
                tracing::warn!(
                    component_id = id,
                    "`hotelling` without `key_field` judges the whole stream as one machine, \
                     which no partition owns: its state is kept per instance, not per partition"
                );
                return None;
            }
            Partitioning::new(&input, hub, id)
        });
        Ok(HotellingTransform {
            params: self.params(),
            key: self.key_field.as_deref().map(find).transpose()?,
            values: self
                .value_fields
                .iter()
                .map(|f| find(f))
                .collect::<Result<_, _>>()?,
            output,
            table: KeyTable::new(KeyLimits::new(self.max_keys, self.key_idle_ms)),
            max_keys: self.max_keys as u64,
            partitioning,
            key_partition: HashMap::new(),
        })
    }
}

tidegauge_core::register_transform!(HotellingConfig);

struct HotellingTransform {
    params: HotellingParams,
    key: Option<usize>,
    values: Vec<usize>,
    output: SchemaRef,
    table: KeyTable<Hotelling>,
    max_keys: u64,
    /// With partition-aligned state (a `kafka` source with `partition_state`, and
    /// `key_field` set).
    partitioning: Option<Partitioning>,
    /// With partition-aligned state: the partition each machine was first seen in.
    key_partition: HashMap<Box<str>, i32>,
}

/// A machine with its state.
type Pair = (Box<str>, Hotelling);

/// The key of row `r` (the empty key when there is no key field or it is null).
fn key_at(keys: Option<&StringArray>, r: usize) -> &str {
    match keys {
        Some(k) if !k.is_null(r) => k.value(r),
        _ => "",
    }
}

impl HotellingTransform {
    /// Every machine's state with its key.
    fn pairs(&self) -> Vec<Pair> {
        self.table
            .keys()
            .iter()
            .map(|(k, id)| (Box::from(k), self.table.states()[id as usize].clone()))
            .collect()
    }

    fn judge_rows(
        &mut self,
        batch: RecordBatch,
        cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        let n = batch.num_rows();
        let keys: Option<&StringArray> = self.key.map(|k| batch.column(k).as_string::<i32>());
        let columns: Vec<_> = self.values.iter().map(|&i| batch.column(i)).collect();
        let values = columns
            .iter()
            .map(|c| float_values(c.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = DetectorColumns::new(n);
        let mut row = vec![0.0; values.len()];
        let now = self.table.now();
        let params = self.params;
        for r in 0..n {
            if columns.iter().any(|c| c.is_null(r)) {
                continue;
            }
            for (x, v) in row.iter_mut().zip(&values) {
                *x = v[r];
            }
            let key = key_at(keys, r);
            let Some(id) = self.table.get_or_insert(
                key,
                key_hash(key),
                now,
                || Hotelling::new(params),
                &mut NoHooks,
            ) else {
                continue;
            };
            let state = &mut self.table.states_mut()[id];
            let verdict = state.observe(0, &row);
            out.set(r, verdict);
            if verdict.is_anomaly {
                let mut why = state.explain(&verdict);
                // Name the field rather than its index.
                if let Some(i) = why.rfind("reading ") {
                    let idx: usize = why[i + 8..].parse().unwrap_or(0);
                    if let Some(c) = self.values.get(idx) {
                        why.truncate(i);
                        why.push_str(&format!("`{}`", batch.schema().field(*c).name()));
                    }
                }
                out.reason(r, why);
            }
        }
        cx.component().emit(AnomaliesDetected {
            count: out.anomalies(),
        });
        let counts = self.table.take_counts();
        cx.component().emit(KeysTracked {
            keys: counts.keys,
            evicted: counts.evicted,
            refused: counts.refused,
            max_keys: self.max_keys,
        });
        let result = out.finish(&batch, &self.output, STATISTIC, NAME)?;
        cx.emit(result);
        Ok(())
    }
}

impl Transform for HotellingTransform {
    fn process(
        &mut self,
        batch: RecordBatch,
        cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        if self.partitioning.is_some() {
            super::partitioned::process(self, batch, cx)
        } else {
            self.judge_rows(batch, cx)
        }
    }

    fn tick_interval(&self) -> Option<std::time::Duration> {
        // Cuts and ownership changes are looked at between batches too.
        self.partitioning
            .as_ref()
            .map(|_| std::time::Duration::from_millis(100))
    }

    fn tick(
        &mut self,
        _now: std::time::SystemTime,
        cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        super::partitioned::upkeep(self, cx)
    }

    fn flush(&mut self, cx: &mut TransformContext) -> Result<(), ComponentError> {
        if self.partitioning.is_some() {
            super::partitioned::finish(self, cx)?;
        }
        Ok(())
    }

    fn verdict_columns(&self) -> Option<tidegauge_core::component::VerdictColumns> {
        // The output keeps the input's columns where they were.
        let key = self.key.map(|i| self.output.field(i).name().as_str());
        Some(super::detector_verdicts(key, None, STATISTIC))
    }

    fn checkpoint(&self) -> Result<Option<Vec<u8>>, ComponentError> {
        encode_keyed(self.table.keys(), self.table.states()).map(Some)
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), ComponentError> {
        let (keys, states): (KeyInterner, Vec<Hotelling>) = decode_keyed(bytes)?;
        if let Some(s) = states.iter().find(|s| s.params() != &self.params) {
            return Err(ComponentError::new(format!(
                "hotelling state was checkpointed with other parameters ({:?})",
                s.params()
            )));
        }
        self.table = KeyTable::restored(self.table.limits(), keys, states);
        Ok(())
    }
}

impl PartitionedState for HotellingTransform {
    fn partitioning(&mut self) -> Option<&mut Partitioning> {
        self.partitioning.as_mut()
    }

    fn holding(&self) -> BTreeSet<i32> {
        self.key_partition.values().copied().collect()
    }

    /// Drops the machines of partitions given up, restores those of partitions assigned.
    fn apply_moves(
        &mut self,
        moves: Moves,
        _cx: &mut TransformContext,
    ) -> Result<(usize, usize), ComponentError> {
        let mut pairs = self.pairs();
        let held = pairs.len();
        let dropped = moves.dropped;
        let key_partition = &mut self.key_partition;
        pairs.retain(|(k, _)| key_partition.get(k).is_none_or(|q| !dropped.contains(q)));
        key_partition.retain(|_, q| !dropped.contains(q));
        let gone = held - pairs.len();
        let mut restored = 0;
        for (partition, bytes) in moves.restored {
            let (keys, states): (KeyInterner, Vec<Hotelling>) = decode_keyed(&bytes)?;
            for (k, st) in super::state::into_pairs(keys, states) {
                key_partition.insert(k.clone(), partition);
                pairs.push((k, st));
                restored += 1;
            }
        }
        let (keys, states) = super::state::from_pairs(pairs);
        self.restore(&encode_keyed(&keys, &states)?)?;
        Ok((gone, restored))
    }

    /// Notes the partition of machines not seen before, then judges the rows.
    fn apply_rows(
        &mut self,
        batch: RecordBatch,
        cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        if let Some(p) = &self.partitioning {
            let parts = p.partitions(&batch);
            let keys = self.key.map(|k| batch.column(k).as_string::<i32>());
            for (row, &q) in parts.iter().enumerate() {
                let key = key_at(keys, row);
                if !self.key_partition.contains_key(key) {
                    self.key_partition.insert(key.into(), q as i32);
                }
            }
        }
        self.judge_rows(batch, cx)
    }

    /// Hands the hub each cut partition's machines, in the checkpoint's format.
    fn snapshot(
        &mut self,
        cuts: &[(i32, i64)],
        _cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        let mut by_partition: HashMap<i32, Vec<Pair>> =
            cuts.iter().map(|c| (c.0, Vec::new())).collect();
        for (k, st) in self.pairs() {
            if let Some(v) = self
                .key_partition
                .get(&k)
                .and_then(|q| by_partition.get_mut(q))
            {
                v.push((k, st));
            }
        }
        for &(partition, offset) in cuts {
            let part = by_partition.remove(&partition).unwrap_or_default();
            let (keys, states) = super::state::from_pairs(part);
            let bytes = encode_keyed(&keys, &states)?;
            if let Some(p) = &self.partitioning {
                p.hand_in(partition, offset, bytes);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod partition_tests;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Float64Array, StringArray};
    use arrow_schema::{Field, Schema};
    use tidegauge_core::component::ComponentContext;
    use tidegauge_core::dead_letter::DeadLetter;
    use tidegauge_core::registry::ComponentKind;
    use tidegauge_core::telemetry::ComponentTelemetry;

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("machine", DataType::Utf8, false),
            Field::new("flow", DataType::Float64, true),
            Field::new("pressure", DataType::Float64, true),
        ]))
    }

    #[test]
    fn judges_rows_per_machine_and_checkpoints() {
        let config: HotellingConfig = toml::from_str(
            "key_field = \"machine\"\nvalue_fields = [\"flow\", \"pressure\"]\nwarmup = 50\nhalf_life_events = 1.0\nthreshold = 3.0",
        )
        .unwrap();
        let input = schema();
        let output = config.validate(&input).unwrap();
        assert!(output.index_of("distance").is_ok());
        let telemetry = Arc::new(ComponentTelemetry::new(
            "h",
            ComponentKind::Transform,
            "hotelling",
        ));
        let component = ComponentContext::new(telemetry, DeadLetter::stderr());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let build = || {
            config
                .build(
                    input.clone(),
                    output.clone(),
                    BuildContext {
                        component: component.clone(),
                        runtime: runtime.handle().clone(),
                    },
                )
                .unwrap()
        };
        let mut t = build();
        let mut cx = TransformContext::new(component.clone());
        let batch = |from: usize, to: usize, broken: bool| {
            let n = to - from;
            let wobble: Vec<f64> = (from..to).map(|i| ((i * 7919) % 13) as f64 - 6.0).collect();
            let flow: Vec<f64> = wobble.iter().map(|w| 30.0 + w).collect();
            let pressure: Vec<f64> = wobble
                .iter()
                .map(|w| 2.0 + if broken { -0.1 } else { 0.1 } * w)
                .collect();
            RecordBatch::try_new(
                input.clone(),
                vec![
                    Arc::new(StringArray::from(vec!["m1"; n])),
                    Arc::new(Float64Array::from(flow)),
                    Arc::new(Float64Array::from(pressure)),
                ],
            )
            .unwrap()
        };
        t.process(batch(0, 200, false), &mut cx).unwrap();
        let saved = t.checkpoint().unwrap().unwrap();
        let mut restored = build();
        restored.restore(&saved).unwrap();
        for t in [&mut t, &mut restored] {
            let mut cx = TransformContext::new(component.clone());
            t.process(batch(200, 260, true), &mut cx).unwrap();
            let emitted: Vec<_> = cx.take_emitted().collect();
            let out = &emitted[0].0;
            let flags = out
                .column(out.schema().index_of("is_anomaly").unwrap())
                .as_boolean();
            let flagged = (0..60).filter(|&i| flags.value(i)).count();
            assert!(flagged > 20, "{flagged}");
            let reasons = out
                .column(out.schema().index_of("reason").unwrap())
                .as_string::<i32>();
            let why = (0..60)
                .find(|&i| flags.value(i))
                .map(|i| reasons.value(i))
                .unwrap();
            assert!(why.contains('`'), "{why}");
        }
        let _ = cx.take_emitted();
        let bad: HotellingConfig = toml::from_str("value_fields = [\"nope\"]\nwarmup = 1").unwrap();
        let errors = bad.validate(&input).unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, vec!["warmup", "value_fields[0]"]);
    }
}
