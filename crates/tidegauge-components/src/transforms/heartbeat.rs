//! `heartbeat` transform: sensors that have gone silent.
//!
//! # Partition-aligned state
//!
//! Fed by a `kafka` source with `partition_state` (its input has `kafka_partition` and
//! `kafka_offset`, see [`crate::partitions`]), the heartbeat keeps its sensors per
//! partition: each partition has its own last-seen times and, on event time, its own
//! clock (its latest `ts`), so a sensor is reported silent by its partition's time, the
//! same whichever instance owns the partition and whatever the other partitions do.
//! Rows of partitions not owned are dropped (their owner reports them); a revoked
//! partition's sensors are forgotten (no longer reported by this instance); at a cut the
//! partition's clock and sensors (name, last seen, whether the current silence was
//! reported) go to the hub, and an assigned partition's are restored.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::telemetry::KeysTracked;
use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, ArrayRef, RecordBatch, new_null_array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tidegauge_core::ack::Finalizers;
use tidegauge_core::schema::require_field;
use tidegauge_core::telemetry::{AnomaliesDetected, MetricDesc};
use tidegauge_core::{
    BuildContext, BuildError, ComponentError, ConfigError, Transform, TransformConfig,
    TransformContext,
};
use tidegauge_detect::{DeadlineTracker, HeartbeatParams, score_from_ratio};

use super::key_table::{EvictionHooks, KeyLimits, KeyTable};
use super::partitioned::{Moves, PartitionedState, Partitioning};
use super::spec::param_errors;
use super::{detector_fields, key_hash};
use crate::partitions::Hub;

/// Which clock tells that time has passed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Clock {
    /// Event time: the latest `ts` seen across all sensors (of the sensor's Kafka
    /// partition, with `partition_state`). Right for recorded data and for streams that
    /// keep flowing; a completely silent stream (or partition) never reports.
    #[default]
    Event,
    /// The wall clock of this machine, checked even when no event arrives. Right for live
    /// sources whose `ts` is close to now.
    Wall,
}

/// Missing data: emits an event for each sensor that stays silent longer than
/// `expected_interval_ms × tolerance`, once per silence.
///
/// Events pass through unchanged (with `is_anomaly = false`). A silence produces an extra
/// event with the sensor's key, `ts` the time it was noticed, every other input field
/// null, `silent_ms`, `is_anomaly = true`, `detector` ("heartbeat") and a `reason`.
/// State per sensor: the time it was last seen; O(log n) per event.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// Field naming the sensor.
    pub key_field: String,
    /// Field holding the event time in epoch milliseconds (Int64).
    pub ts_field: String,
    /// How often a sensor normally reports, in milliseconds.
    #[schemars(range(min = 1))]
    pub expected_interval_ms: i64,
    /// Expected intervals of silence tolerated before a sensor is reported.
    #[schemars(extend("exclusiveMinimum" = 0.0))]
    pub tolerance: f64,
    /// The clock that measures silence.
    pub clock: Clock,
    /// Most sensors tracked at once. A new sensor past the cap takes the place of one
    /// silent for `key_idle_ms` (already reported, and then forgotten); when none is, the
    /// new sensor is not tracked (counted in `/metrics`, with a warning).
    #[schemars(range(min = 1, max = 100000000))]
    pub max_keys: usize,
    /// Silence after which a sensor may be forgotten to make room under `max_keys`, in
    /// milliseconds of the wall clock; at least `expected_interval_ms × tolerance`.
    /// Default: an hour, or twice that silence if longer.
    #[schemars(range(min = 1))]
    pub key_idle_ms: Option<u64>,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            key_field: "sensor_id".into(),
            ts_field: "ts".into(),
            expected_interval_ms: 60_000,
            tolerance: 3.0,
            clock: Clock::Event,
            max_keys: super::spec::DEFAULT_MAX_KEYS,
            key_idle_ms: None,
        }
    }
}

impl HeartbeatConfig {
    fn key_idle_ms(&self) -> u64 {
        self.key_idle_ms.unwrap_or_else(|| {
            super::spec::DEFAULT_KEY_IDLE_MS.max(self.params().limit_ms().max(0) as u64 * 2)
        })
    }

    fn params(&self) -> HeartbeatParams {
        HeartbeatParams {
            expected_interval_ms: self.expected_interval_ms,
            tolerance: self.tolerance,
        }
    }
}

/// Every field of `input` made nullable (a silence event has only a key and a time),
/// then the detector's columns.
fn output_schema(input: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = input
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    for f in detector_fields("silent_ms") {
        match fields.iter().position(|g| g.name() == f.name()) {
            Some(i) => fields[i] = f,
            None => fields.push(f),
        }
    }
    Arc::new(Schema::new_with_metadata(fields, input.metadata().clone()))
}

impl TransformConfig for HeartbeatConfig {
    const TYPE: &'static str = "heartbeat";
    const METRICS: &'static [&'static MetricDesc] = crate::telemetry::KEY_METRICS;

    fn validate(&self, input: &SchemaRef) -> Result<SchemaRef, Vec<ConfigError>> {
        let mut errors = param_errors(self.params().validate());
        if errors.is_empty() {
            errors.extend(super::spec::check_key_limits(
                self.max_keys,
                HEARTBEAT_BYTES_PER_KEY,
            ));
        }
        if errors.is_empty() && (self.key_idle_ms() as i64) < self.params().limit_ms() {
            errors.push(ConfigError::new(
                "key_idle_ms",
                format!(
                    "must be at least expected_interval_ms × tolerance ({} ms): a sensor is \
                     forgotten only after its silence has been reported",
                    self.params().limit_ms()
                ),
            ));
        }
        if let Err(e) = require_field(input, "key_field", &self.key_field, &[DataType::Utf8]) {
            errors.push(e);
        }
        if let Err(e) = require_field(input, "ts_field", &self.ts_field, &[DataType::Int64]) {
            errors.push(e);
        }
        if errors.is_empty() {
            Ok(output_schema(input))
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
        let heartbeat = self.heartbeat(input, output)?;
        Ok(Box::new(heartbeat.partitioned(
            &crate::partitions::process_hub(),
            cx.component.id(),
        )))
    }
}

impl HeartbeatConfig {
    fn heartbeat(&self, input: SchemaRef, output: SchemaRef) -> Result<Heartbeat, BuildError> {
        let find = |name: &str| tidegauge_core::schema::field_index(&input, name);
        Ok(Heartbeat {
            key: find(&self.key_field)?,
            ts: find(&self.ts_field)?,
            params: self.params(),
            lanes: vec![Lane::new(0, self.params())],
            table: KeyTable::new(KeyLimits::new(self.max_keys, self.key_idle_ms())),
            max_keys: self.max_keys as u64,
            limit_ms: self.params().limit_ms(),
            interval_ms: self.expected_interval_ms,
            clock: self.clock,
            partitioning: None,
            input,
            output,
        })
    }
}

/// State per sensor besides its name: its entry in the tracker (slot, heap entry, index).
const HEARTBEAT_BYTES_PER_KEY: u64 = 96;

/// Keeps the trackers in line with the key table when sensors are forgotten.
struct Forget<'a>(&'a mut [Lane]);

impl EvictionHooks for Forget<'_> {
    fn evicted(&mut self, id: usize, moved_from: Option<usize>) {
        for lane in self.0.iter_mut() {
            lane.tracker.remove(&(id as u32));
            if let Some(from) = moved_from {
                lane.tracker.rename(&(from as u32), id as u32);
            }
        }
    }
}

/// The sensors of one partition of the input (of the whole input when it is not
/// partitioned), with that partition's clock.
struct Lane {
    partition: i32,
    /// Latest event time seen (`i64::MIN` before the first).
    clock: i64,
    /// When each sensor (by id in the table) was last seen.
    tracker: DeadlineTracker<u32>,
}

impl Lane {
    fn new(partition: i32, params: HeartbeatParams) -> Self {
        Lane {
            partition,
            clock: i64::MIN,
            tracker: DeadlineTracker::new(params),
        }
    }
}

/// A sensor tracked: its name and the partition it was first seen in.
struct Sensor {
    name: Box<str>,
    partition: i32,
}

/// The checkpoint format version of a partition's sensors.
const STATE_VERSION: u32 = 1;

/// A partition's snapshot: its clock and its sensors.
#[derive(Serialize, Deserialize)]
struct PartitionSensors {
    version: u32,
    /// Latest event time seen (`i64::MIN` before the first).
    clock: i64,
    /// (name, last seen, whether the current silence was reported).
    sensors: Vec<(String, i64, bool)>,
}

struct Heartbeat {
    key: usize,
    ts: usize,
    params: HeartbeatParams,
    /// The sensors per partition, by partition (one lane, 0, when the input is not
    /// partitioned).
    lanes: Vec<Lane>,
    /// The sensors tracked, by id (the trackers' key).
    table: KeyTable<Sensor>,
    max_keys: u64,
    limit_ms: i64,
    interval_ms: i64,
    clock: Clock,
    /// With partition-aligned state (see the module documentation).
    partitioning: Option<Partitioning>,
    input: SchemaRef,
    output: SchemaRef,
}

impl Heartbeat {
    /// With partition columns in its input (a `kafka` source with `partition_state`):
    /// the sensors are kept per partition, registered with `hub` as `id`.
    fn partitioned(mut self, hub: &Arc<Hub>, id: &str) -> Self {
        self.partitioning = Partitioning::new(&self.input, hub, id);
        if self.partitioning.is_some() {
            self.lanes.clear();
        }
        self
    }

    /// The index of `partition`'s lane, made if missing (lanes stay in partition order).
    fn lane(&mut self, partition: i32) -> usize {
        match self.lanes.binary_search_by_key(&partition, |l| l.partition) {
            Ok(i) => i,
            Err(i) => {
                self.lanes.insert(i, Lane::new(partition, self.params));
                i
            }
        }
    }

    /// The input batch with every event marked normal.
    fn pass_through(&self, batch: &RecordBatch) -> Result<RecordBatch, ComponentError> {
        let n = batch.num_rows();
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        let added: [ArrayRef; 5] = [
            new_null_array(&DataType::Float64, n),
            Arc::new(arrow_array::Float64Array::from(vec![0.0; n])),
            Arc::new(arrow_array::BooleanArray::from(vec![false; n])),
            Arc::new(arrow_array::StringArray::from_iter_values(
                std::iter::repeat_n("heartbeat", n),
            )),
            new_null_array(&DataType::Utf8, n),
        ];
        columns.truncate(self.input.fields().len());
        self.place(columns, added)
    }

    /// Puts the detector's columns where the output schema has them.
    fn place(
        &self,
        mut columns: Vec<ArrayRef>,
        added: [ArrayRef; 5],
    ) -> Result<RecordBatch, ComponentError> {
        let names = [
            "silent_ms",
            "anomaly_score",
            "is_anomaly",
            "detector",
            "reason",
        ];
        for (name, array) in names.iter().zip(added) {
            match self.input.index_of(name) {
                Ok(i) => columns[i] = array,
                Err(_) => columns.push(array),
            }
        }
        Ok(RecordBatch::try_new(self.output.clone(), columns)?)
    }

    /// One event per sensor silent at `now_ms` (the wall clock), in every lane.
    fn silences(&mut self, now_ms: i64, cx: &mut TransformContext) -> Result<(), ComponentError> {
        let silent = self
            .lanes
            .iter_mut()
            .flat_map(|lane| lane.tracker.expired(now_ms))
            .map(|(key, gap)| (key, gap, now_ms))
            .collect();
        self.emit_silences(silent, Finalizers::none(), cx)
    }

    /// Events for silences: (key, how long silent, when noticed), with `finalizers`.
    fn emit_silences(
        &mut self,
        silent: Vec<(u32, i64, i64)>,
        finalizers: Finalizers,
        cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        if silent.is_empty() {
            return Ok(());
        }
        let n = silent.len();
        let mut keys = StringBuilder::new();
        let mut ts = Int64Builder::new();
        let mut silent_ms = Float64Builder::new();
        let mut score = Float64Builder::new();
        let mut flag = BooleanBuilder::new();
        let mut reason = StringBuilder::new();
        for (key, gap, noticed) in &silent {
            keys.append_value(&self.table.states()[*key as usize].name);
            ts.append_value(*noticed);
            silent_ms.append_value(*gap as f64);
            score.append_value(score_from_ratio(*gap as f64 / self.limit_ms.max(1) as f64));
            flag.append_value(true);
            reason.append_value(format!(
                "no data for {:.1} s (expected every {:.1} s)",
                *gap as f64 / 1000.0,
                self.interval_ms as f64 / 1000.0
            ));
        }
        let mut columns: Vec<ArrayRef> = self
            .input
            .fields()
            .iter()
            .map(|f| new_null_array(f.data_type(), n))
            .collect();
        columns[self.key] = Arc::new(keys.finish());
        columns[self.ts] = Arc::new(ts.finish());
        if let Some(p) = &self.partitioning {
            // A silence belongs to its sensor's partition, so a partitioned stage after
            // this one (`alert`) keeps it with that partition's state; its offset stays
            // null (read as 0: below any cut still pending when it arrives).
            let names = self.table.states();
            columns[p.partition] = Arc::new(arrow_array::Int64Array::from_iter_values(
                silent
                    .iter()
                    .map(|(key, _, _)| i64::from(names[*key as usize].partition)),
            ));
        }
        let added: [ArrayRef; 5] = [
            Arc::new(silent_ms.finish()),
            Arc::new(score.finish()),
            Arc::new(flag.finish()),
            Arc::new(arrow_array::StringArray::from_iter_values(
                std::iter::repeat_n("heartbeat", n),
            )),
            Arc::new(reason.finish()),
        ];
        cx.component().emit(AnomaliesDetected { count: n as u64 });
        let batch = self.place(columns, added)?;
        cx.emit_with(batch, finalizers);
        Ok(())
    }

    /// Tracks the rows of `batch` (with partition-aligned state, all of partitions
    /// owned, each in its partition's lane) and passes them on.
    fn track_rows(
        &mut self,
        batch: RecordBatch,
        cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        let keys = batch.column(self.key).as_string::<i32>();
        let ts = batch.column(self.ts).as_primitive::<Int64Type>();
        let parts = self
            .partitioning
            .as_ref()
            .map(|p| batch.column(p.partition).as_primitive::<Int64Type>());
        let mut silent: Vec<(u32, i64, i64)> = Vec::new();
        let now = self.table.now();
        let (mut lane, mut lane_partition) = (0, None);
        for row in 0..batch.num_rows() {
            if keys.is_null(row) || ts.is_null(row) {
                continue;
            }
            if let Some(parts) = parts {
                let q = parts.value(row) as i32;
                if lane_partition != Some(q) {
                    lane = self.lane(q);
                    lane_partition = Some(q);
                }
            }
            let partition = lane_partition.unwrap_or(0);
            let t = ts.value(row);
            let l = &mut self.lanes[lane];
            if self.clock == Clock::Event && t > l.clock {
                // Time has moved on: who has been silent too long by now?
                l.clock = t;
                silent.extend(
                    l.tracker
                        .expired(t)
                        .into_iter()
                        .map(|(key, gap)| (key, gap, t)),
                );
            }
            let key = keys.value(row);
            let mut hooks = Forget(&mut self.lanes);
            let Some(id) = self.table.get_or_insert(
                key,
                key_hash(key),
                now,
                || Sensor {
                    name: key.into(),
                    partition,
                },
                &mut hooks,
            ) else {
                continue;
            };
            self.lanes[lane].tracker.touch(&(id as u32), t);
        }
        let counts = self.table.take_counts();
        cx.component().emit(KeysTracked {
            keys: counts.keys,
            evicted: counts.evicted,
            refused: counts.refused,
            max_keys: self.max_keys,
        });
        cx.emit(self.pass_through(&batch)?);
        // The silences this batch's times revealed travel with its tokens.
        let tokens = cx.take_finalizers();
        cx.set_finalizers(tokens.clone());
        self.emit_silences(silent, tokens, cx)
    }
}

impl Transform for Heartbeat {
    fn verdict_columns(&self) -> Option<tidegauge_core::component::VerdictColumns> {
        let key = self.input.field(self.key).name();
        Some(super::detector_verdicts(Some(key), None, "silent_ms"))
    }

    fn process(
        &mut self,
        batch: RecordBatch,
        cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        // Without partitions, straight to the rows.
        super::partitioned::process(self, batch, cx)
    }

    fn flush(&mut self, cx: &mut TransformContext) -> Result<(), ComponentError> {
        if self.partitioning.is_some() {
            super::partitioned::finish(self, cx)?;
        }
        Ok(())
    }

    fn tick_interval(&self) -> Option<Duration> {
        let wall = (self.clock == Clock::Wall)
            .then(|| Duration::from_millis((self.interval_ms / 4).clamp(50, 10_000) as u64));
        // Cuts and ownership changes are looked at between batches too.
        let upkeep = self
            .partitioning
            .as_ref()
            .map(|_| Duration::from_millis(100));
        match (wall, upkeep) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn tick(&mut self, now: SystemTime, cx: &mut TransformContext) -> Result<(), ComponentError> {
        if self.partitioning.is_some() {
            super::partitioned::upkeep(self, cx)?;
        }
        if self.clock != Clock::Wall {
            return Ok(());
        }
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        self.silences(now_ms, cx)
    }
}

impl PartitionedState for Heartbeat {
    fn partitioning(&mut self) -> Option<&mut Partitioning> {
        self.partitioning.as_mut()
    }

    fn holding(&self) -> BTreeSet<i32> {
        let mut held: BTreeSet<i32> = self.lanes.iter().map(|l| l.partition).collect();
        held.extend(self.table.states().iter().map(|s| s.partition));
        held
    }

    /// Forgets the sensors of partitions given up, restores those of partitions
    /// assigned.
    fn apply_moves(
        &mut self,
        moves: Moves,
        _cx: &mut TransformContext,
    ) -> Result<(usize, usize), ComponentError> {
        self.lanes.retain(|l| !moves.dropped.contains(&l.partition));
        let forgotten = self.table.remove_where(
            |s| moves.dropped.contains(&s.partition),
            &mut Forget(&mut self.lanes),
        );
        let mut restored = 0;
        for (q, bytes) in moves.restored {
            let state: PartitionSensors = ciborium::from_reader(bytes.as_slice())
                .map_err(|e| ComponentError::new(format!("cannot decode heartbeat state: {e}")))?;
            if state.version != STATE_VERSION {
                return Err(ComponentError::new(format!(
                    "heartbeat state version {} (this build reads {STATE_VERSION})",
                    state.version
                )));
            }
            let lane = self.lane(q);
            self.lanes[lane].clock = state.clock;
            let now = self.table.now();
            for (name, last_seen, reported) in state.sensors {
                let mut hooks = Forget(&mut self.lanes);
                let Some(id) = self.table.get_or_insert(
                    &name,
                    key_hash(&name),
                    now,
                    || Sensor {
                        name: name.as_str().into(),
                        partition: q,
                    },
                    &mut hooks,
                ) else {
                    continue;
                };
                if self.lanes[lane]
                    .tracker
                    .insert(id as u32, last_seen, reported)
                {
                    restored += 1;
                }
            }
        }
        Ok((forgotten, restored))
    }

    fn apply_rows(
        &mut self,
        batch: RecordBatch,
        cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        self.track_rows(batch, cx)
    }

    /// Hands the hub each cut partition's clock and sensors.
    fn snapshot(
        &mut self,
        cuts: &[(i32, i64)],
        _cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        for &(q, offset) in cuts {
            let mut state = PartitionSensors {
                version: STATE_VERSION,
                clock: i64::MIN,
                sensors: Vec::new(),
            };
            if let Some(lane) = self.lanes.iter().find(|l| l.partition == q) {
                state.clock = lane.clock;
                let names = self.table.states();
                state.sensors = lane
                    .tracker
                    .entries()
                    .map(|(id, seen, reported)| {
                        (names[*id as usize].name.to_string(), seen, reported)
                    })
                    .collect();
            }
            let mut bytes = Vec::new();
            ciborium::into_writer(&state, &mut bytes)
                .map_err(|e| ComponentError::new(format!("cannot encode heartbeat state: {e}")))?;
            if let Some(p) = &self.partitioning {
                p.hand_in(q, offset, bytes);
            }
        }
        Ok(())
    }
}

tidegauge_core::register_transform!(HeartbeatConfig);

#[cfg(test)]
mod partition_tests;

#[cfg(test)]
mod tests {
    use arrow_array::{Float64Array, Int64Array, StringArray};
    use tidegauge_core::dead_letter::DeadLetter;
    use tidegauge_core::registry::ComponentKind;
    use tidegauge_core::telemetry::ComponentTelemetry;
    use tidegauge_core::{ComponentContext, TransformContext};

    use super::*;

    fn input() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("sensor_id", DataType::Utf8, false),
            Field::new("ts", DataType::Int64, false),
            Field::new("value", DataType::Float64, false),
        ]))
    }

    /// Processes `rows` (key, ts); the keys reported silent.
    fn process(hb: &mut Heartbeat, rows: &[(&str, i64)]) -> Vec<String> {
        let batch = RecordBatch::try_new(
            input(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Float64Array::from(vec![1.0; rows.len()])),
            ],
        )
        .unwrap();
        let t = Arc::new(ComponentTelemetry::new(
            "hb",
            ComponentKind::Transform,
            "heartbeat",
        ));
        let mut cx = TransformContext::new(ComponentContext::new(t, DeadLetter::stderr()));
        hb.process(batch, &mut cx).unwrap();
        let mut silent = Vec::new();
        for (b, _) in cx.take_emitted() {
            let flags = b.column_by_name("is_anomaly").unwrap().as_boolean().clone();
            let keys = b.column(0).as_string::<i32>().clone();
            for i in 0..b.num_rows() {
                if flags.value(i) {
                    silent.push(keys.value(i).to_string());
                }
            }
        }
        silent.sort();
        silent
    }

    #[test]
    fn past_the_cap_idle_sensors_are_forgotten_and_the_rest_keep_their_names() {
        let config = HeartbeatConfig {
            expected_interval_ms: 1000,
            tolerance: 1.0,
            max_keys: 2,
            key_idle_ms: Some(2000),
            ..HeartbeatConfig::default()
        };
        let output = config.validate(&input()).unwrap();
        let mut hb = config.heartbeat(input(), output).unwrap();
        // c finds no room.
        let held = |hb: &Heartbeat| {
            let mut k: Vec<String> = hb.table.keys().iter().map(|(k, _)| k.to_string()).collect();
            k.sort();
            k
        };
        assert!(process(&mut hb, &[("a", 0), ("b", 0), ("c", 0)]).is_empty());
        assert_eq!(held(&hb), ["a", "b"]);
        // Three seconds on, b reports; a has been silent past key_idle_ms and makes
        // room for c (b takes a's id in the tracker).
        hb.table.advance(3);
        assert!(process(&mut hb, &[("b", 500), ("c", 600)]).is_empty());
        assert_eq!(held(&hb), ["b", "c"]);
        // At 5 s of event time b and c are silent: reported under their own names; a,
        // forgotten, is not.
        assert_eq!(process(&mut hb, &[("b", 5000)]), ["b", "c"]);
        // key_idle_ms may not be shorter than the silence reported.
        let short = HeartbeatConfig {
            key_idle_ms: Some(500),
            ..config
        };
        assert_eq!(short.validate(&input()).unwrap_err()[0].path, "key_idle_ms");
    }
}
