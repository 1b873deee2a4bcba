//! The machinery that runs every per-sensor detector (a [`DetectorSpec`]): one detector
//! state per key, the warm-up rule (the detector's own), the output columns, and
//! sharding of keys across worker threads.
//!
//! Sharding: with `workers = N > 1`, each row goes to the worker that owns its key
//! (hash of the key), so a key's events are always seen by the same state in their
//! order; each worker returns the verdicts for its rows and they are put in place in
//! the batch's columns. Results are therefore identical to one worker. The hash that
//! picks the worker travels with the row and is the one the worker's key table uses, so
//! a key is hashed once per event. One batch is in flight while the next is split and
//! the previous one's columns are assembled, so that work overlaps with detection.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc;

use crate::telemetry::KeysTracked;
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Schema, SchemaRef};
use tidegauge_core::ack::Finalizers;
use tidegauge_core::component::{Tunable, VerdictColumns};
use tidegauge_core::schema::{extend, require_field};
use tidegauge_core::telemetry::AnomaliesDetected;
use tidegauge_core::{BuildError, ComponentError, ConfigError, Transform, TransformContext};
use tidegauge_detect::{Detector, Verdict};

use crate::partitions::process_hub;

use super::partitioned::{Partitioning, partition_columns};

use super::key_table::{KeyCounts, KeyLimits, KeyTable, NoHooks};
use super::spec::{Common, DetectorSpec, check_key_limits};
use super::{DetectorColumns, KeyInterner, detector_fields, float_values, key_hash};

/// The spec in force, replaced whole when a parameter changes while running. Each shard
/// notices a new generation at its next batch and retunes its keys' states then.
struct SpecCell<S> {
    current: std::sync::Mutex<(u64, Arc<S>)>,
}

impl<S: DetectorSpec> SpecCell<S> {
    fn new(spec: S) -> Self {
        SpecCell {
            current: std::sync::Mutex::new((0, Arc::new(spec))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Arc<S>)> {
        // Replaced in one assignment: a panicking holder cannot leave it torn.
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The generation and spec in force (read once per batch).
    fn get(&self) -> (u64, Arc<S>) {
        let c = self.lock();
        (c.0, c.1.clone())
    }

    fn tunables(&self) -> Vec<Tunable> {
        let spec = self.get().1;
        let settings = serde_json::to_value(&*spec).unwrap_or_default();
        S::TUNABLE
            .iter()
            .map(|name| Tunable {
                name: name.to_string(),
                value: settings.get(name).cloned().unwrap_or_default(),
            })
            .collect()
    }

    /// The spec with `name` set to `value`, checked; it takes effect from the next batch.
    fn set(&self, name: &str, value: &serde_json::Value) -> Result<(), String> {
        if !S::TUNABLE.contains(&name) {
            return Err(format!("`{name}` cannot be changed while running"));
        }
        let mut settings =
            serde_json::to_value(&*self.get().1).map_err(|e| format!("{name}: {e}"))?;
        if let Some(m) = settings.as_object_mut() {
            m.insert(name.to_string(), value.clone());
        }
        let spec: S = serde_json::from_value(settings).map_err(|e| format!("{name}: {e}"))?;
        let errors = spec.check();
        if !errors.is_empty() {
            return Err(errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "));
        }
        let mut c = self.lock();
        *c = (c.0 + 1, Arc::new(spec));
        Ok(())
    }
}

/// Validation shared by every keyed detector: the fields exist with usable types and the
/// detector's parameters are in range. Returns the output schema.
pub fn validate<S: DetectorSpec>(
    spec: &S,
    common: &Common,
    input: &SchemaRef,
) -> Result<SchemaRef, Vec<ConfigError>> {
    let mut errors = spec.check();
    if errors.is_empty() {
        // Only once the parameters are known good: they size the state.
        errors.extend(check_key_limits(common.max_keys, spec.bytes_per_key()));
    }
    if let Err(e) = require_field(input, "key_field", &common.key_field, &[DataType::Utf8]) {
        errors.push(e);
    }
    if let Err(e) = require_field(
        input,
        "value_field",
        &common.value_field,
        &[DataType::Float64, DataType::Int64],
    ) {
        errors.push(e);
    }
    if (spec.needs_time() || input.index_of(&common.ts_field).is_ok())
        && let Err(e) = require_field(input, "ts_field", &common.ts_field, &[DataType::Int64])
    {
        errors.push(e);
    }
    if errors.is_empty() {
        Ok(extend(input, &detector_fields(S::STATISTIC)))
    } else {
        Err(errors)
    }
}

/// Where the fields are in the input.
#[derive(Clone, Copy, Debug)]
struct Columns {
    key: usize,
    value: usize,
    ts: Option<usize>,
}

fn locate(common: &Common, input: &Schema) -> Result<Columns, BuildError> {
    let find = |name: &str| tidegauge_core::schema::field_index(input, name);
    Ok(Columns {
        key: find(&common.key_field)?,
        value: find(&common.value_field)?,
        ts: input.index_of(&common.ts_field).ok(),
    })
}

/// Builds the runtime transform for a validated detector.
pub fn build<S: DetectorSpec>(
    spec: S,
    common: &Common,
    input: &SchemaRef,
    output: SchemaRef,
    id: &str,
) -> Result<Box<dyn Transform>, BuildError> {
    build_in(spec, common, input, output, id, process_hub())
}

/// [`build`], meeting a changelog-backed source in `hub`.
pub(crate) fn build_in<S: DetectorSpec>(
    spec: S,
    common: &Common,
    input: &SchemaRef,
    output: SchemaRef,
    id: &str,
    hub: Arc<crate::partitions::Hub>,
) -> Result<Box<dyn Transform>, BuildError> {
    let columns = locate(common, input)?;
    let partitioning = partition_columns(input).and_then(|_| {
        if spec.save_states(&KeyInterner::default(), &[]).is_none() {
            tracing::warn!(
                component_id = id,
                "`{}` cannot snapshot its state: its state is not kept per partition",
                S::NAME
            );
            return None;
        }
        Partitioning::new(input, &hub, id)
    });
    let spec = Arc::new(SpecCell::new(spec));
    // Each worker holds its share of the cap (keys spread evenly over workers).
    let workers = common.workers.max(1);
    let limits = KeyLimits::new(common.max_keys.div_ceil(workers), common.key_idle_ms);
    let engine = if workers <= 1 {
        Engine::Inline(Shard::new(limits))
    } else {
        Engine::Pool(Pool::start(spec.clone(), columns, workers, limits)?)
    };
    Ok(Box::new(KeyedDetector {
        verdicts: super::detector_verdicts(
            Some(&common.key_field),
            Some(&common.value_field),
            S::STATISTIC,
        ),
        spec,
        columns,
        output,
        engine,
        in_flight: None,
        limits,
        max_keys: common.max_keys as u64,
        partitioning,
        key_partition: HashMap::new(),
    }))
}

/// The states of the keys one thread owns.
struct Shard<D> {
    table: KeyTable<D>,
    /// The spec generation the states are in line with.
    generation: u64,
}

impl<D> Shard<D> {
    fn new(limits: KeyLimits) -> Self {
        Shard {
            table: KeyTable::new(limits),
            generation: 0,
        }
    }

    /// A shard holding restored keys and states.
    fn restored(limits: KeyLimits, keys: KeyInterner, states: Vec<D>, generation: u64) -> Self {
        Shard {
            table: KeyTable::restored(limits, keys, states),
            generation,
        }
    }
}

impl<D: Detector> Shard<D> {
    /// Judges `rows` of `batch` (row, hash of its key), in order, handing each verdict
    /// and, for anomalies, its reason to `record`. Rows without a value (or time) get no
    /// verdict.
    fn judge<S: DetectorSpec<State = D>>(
        &mut self,
        spec: &SpecCell<S>,
        columns: Columns,
        batch: &RecordBatch,
        rows: impl Iterator<Item = (usize, u64)>,
        mut record: impl FnMut(usize, Verdict, Option<String>),
    ) -> Result<(), ComponentError> {
        let (generation, spec) = spec.get();
        if generation != self.generation {
            for state in self.table.states_mut() {
                spec.retune_state(state);
            }
            self.generation = generation;
        }
        let spec = &*spec;
        let keys: &StringArray = batch.column(columns.key).as_string::<i32>();
        let value_column = batch.column(columns.value);
        let values = float_values(value_column.as_ref())?;
        let ts = columns
            .ts
            .map(|i| batch.column(i).as_primitive::<Int64Type>());
        let now = self.table.now();
        // Rows go in runs, so that reading cold sensors' state from memory overlaps: first
        // each row's key is looked up (lookups of different rows overlap in the CPU) and
        // its state is asked for; then the rows are judged in order, what the detector of
        // a row a few places ahead will read asked for meanwhile. A key not held yet ends
        // a run: taking it in may evict keys, which moves ids.
        let mut rows = rows;
        let mut run: Vec<(usize, i64, usize)> = Vec::with_capacity(RUN);
        loop {
            run.clear();
            let mut new_key = None;
            for (row, hash) in rows.by_ref() {
                if value_column.is_null(row) {
                    continue;
                }
                let t = match ts {
                    Some(t) if t.is_null(row) => continue,
                    Some(t) => t.value(row),
                    None => 0,
                };
                match self.table.find(key_at(keys, row), hash, now) {
                    Some(id) => {
                        tidegauge_detect::prefetch(&self.table.states()[id]);
                        run.push((row, t, id));
                        if run.len() == RUN {
                            break;
                        }
                    }
                    None => {
                        new_key = Some((row, t, hash));
                        break;
                    }
                }
            }
            if run.is_empty() && new_key.is_none() {
                return Ok(());
            }
            for k in 0..run.len() {
                if let Some(&(_, _, ahead)) = run.get(k + AHEAD) {
                    self.table.states()[ahead].prefetch();
                }
                let (row, t, id) = run[k];
                let state = &mut self.table.states_mut()[id];
                let verdict = state.observe(t, values[row]);
                let reason = verdict.is_anomaly.then(|| state.explain(&verdict));
                record(row, verdict, reason);
            }
            let Some((row, t, hash)) = new_key else {
                continue;
            };
            // Past the cap with no key idle, the event gets no verdict (counted, and
            // warned about).
            let Some(id) = self.table.get_or_insert(
                key_at(keys, row),
                hash,
                now,
                || spec.new_state(),
                &mut NoHooks,
            ) else {
                continue;
            };
            let state = &mut self.table.states_mut()[id];
            let verdict = state.observe(t, values[row]);
            let reason = verdict.is_anomaly.then(|| state.explain(&verdict));
            record(row, verdict, reason);
        }
    }
}

/// Rows whose keys are looked up before they are judged.
const RUN: usize = 32;
/// How many rows ahead of the one judged a row's detector is asked to prefetch.
const AHEAD: usize = 4;

/// The key of a row (a missing key is the empty one).
fn key_at(keys: &StringArray, row: usize) -> &str {
    if keys.is_null(row) {
        ""
    } else {
        keys.value(row)
    }
}

/// Every row of a batch with the hash of its key.
fn all_rows(batch: &RecordBatch, columns: Columns) -> impl Iterator<Item = (usize, u64)> + '_ {
    let keys = batch.column(columns.key).as_string::<i32>();
    (0..batch.num_rows()).map(move |row| (row, key_hash(key_at(keys, row))))
}

/// A worker's rows of a batch, with the hashes of their keys.
struct Job {
    batch: RecordBatch,
    rows: Vec<u32>,
    hashes: Vec<u64>,
}

/// A worker's verdicts for the rows it owns in a batch, and the anomalies' reasons.
#[derive(Default)]
struct Part {
    verdicts: Vec<(u32, Verdict)>,
    reasons: Vec<(u32, String)>,
    keys: KeyCounts,
}

/// What a pool worker is asked to do.
enum Work {
    /// Judge rows.
    Rows(Job),
    /// Encode its shard's states (checkpoint).
    Save(mpsc::SyncSender<Option<Result<Vec<u8>, ComponentError>>>),
    /// Replace its shard with these keys and states (restore).
    Load(Box<dyn std::any::Any + Send>),
}

type JobResult = Result<Part, ComponentError>;

/// Worker threads, each owning the keys that hash to it.
struct Pool {
    jobs: Vec<mpsc::SyncSender<Work>>,
    results: Vec<mpsc::Receiver<JobResult>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    columns: Columns,
}

impl Pool {
    fn start<S: DetectorSpec>(
        spec: Arc<SpecCell<S>>,
        columns: Columns,
        workers: usize,
        limits: KeyLimits,
    ) -> Result<Self, BuildError> {
        let mut pool = Pool {
            jobs: Vec::new(),
            results: Vec::new(),
            threads: Vec::new(),
            columns,
        };
        for w in 0..workers {
            let (job_tx, job_rx) = mpsc::sync_channel::<Work>(2);
            let (res_tx, res_rx) = mpsc::sync_channel::<JobResult>(2);
            let spec = spec.clone();
            let handle = std::thread::Builder::new()
                .name(format!("tg-{}-{w}", S::NAME))
                .spawn(move || {
                    let mut shard = Shard::<S::State>::new(limits);
                    while let Ok(work) = job_rx.recv() {
                        let job = match work {
                            Work::Rows(job) => job,
                            Work::Save(reply) => {
                                let saved = spec
                                    .get()
                                    .1
                                    .save_states(shard.table.keys(), shard.table.states());
                                let _ = reply.send(saved);
                                continue;
                            }
                            Work::Load(any) => {
                                if let Ok(restored) = any.downcast::<Shard<S::State>>() {
                                    shard = *restored;
                                }
                                continue;
                            }
                        };
                        let mut part = Part {
                            verdicts: Vec::with_capacity(job.rows.len()),
                            reasons: Vec::new(),
                            keys: KeyCounts::default(),
                        };
                        let rows = job.rows.iter().zip(&job.hashes);
                        let rows = rows.map(|(&row, &hash)| (row as usize, hash));
                        let r = shard
                            .judge(&*spec, columns, &job.batch, rows, |row, v, why| {
                                part.verdicts.push((row as u32, v));
                                if let Some(why) = why {
                                    part.reasons.push((row as u32, why));
                                }
                            })
                            .map(|()| {
                                part.keys = shard.table.take_counts();
                                part
                            });
                        if res_tx.send(r).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| BuildError::new(format!("cannot start worker thread: {e}")))?;
            pool.jobs.push(job_tx);
            pool.results.push(res_rx);
            pool.threads.push(handle);
        }
        Ok(pool)
    }

    /// Splits the batch's rows by key and hands them to the workers.
    fn submit(&self, batch: &RecordBatch) -> Result<(), ComponentError> {
        let n = self.jobs.len();
        let per_worker = batch.num_rows() / n + 64;
        let mut jobs: Vec<Job> = (0..n)
            .map(|_| Job {
                batch: batch.clone(),
                rows: Vec::with_capacity(per_worker),
                hashes: Vec::with_capacity(per_worker),
            })
            .collect();
        for (row, hash) in all_rows(batch, self.columns) {
            let job = &mut jobs[shard_of_hash(hash, n)];
            job.rows.push(row as u32);
            job.hashes.push(hash);
        }
        for (tx, job) in self.jobs.iter().zip(jobs) {
            tx.send(Work::Rows(job))
                .map_err(|_| ComponentError::new("a detector worker stopped"))?;
        }
        Ok(())
    }

    /// Collects the workers' verdicts for a submitted batch into its columns, and what
    /// their key tables look like.
    fn collect(&self, num_rows: usize) -> Result<(DetectorColumns, KeyCounts), ComponentError> {
        let mut out = DetectorColumns::new(num_rows);
        let mut keys = KeyCounts::default();
        for results in &self.results {
            let part = results
                .recv()
                .map_err(|_| ComponentError::new("a detector worker stopped"))??;
            for (row, v) in part.verdicts {
                out.set(row as usize, v);
            }
            for (row, why) in part.reasons {
                out.reason(row as usize, why);
            }
            keys += part.keys;
        }
        Ok((out, keys))
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Which of `n` workers owns `key`.
pub fn shard_of(key: &str, n: usize) -> usize {
    shard_of_hash(key_hash(key), n)
}

/// Which of `n` workers owns a key with this [`key_hash`].
fn shard_of_hash(hash: u64, n: usize) -> usize {
    // The high half of an Fx hash is the well-mixed one (the key table uses the low bits
    // for its buckets and the top 7 for its tags); scaled to 0..n by a multiply, which
    // unlike `%` costs no division per event.
    (((hash >> 32) * n as u64) >> 32) as usize
}

enum Engine<D> {
    Inline(Shard<D>),
    Pool(Pool),
}

/// A batch handed to the pool whose verdicts are not collected yet.
struct InFlight {
    batch: RecordBatch,
    finalizers: Finalizers,
}

/// The runtime of every keyed detector.
struct KeyedDetector<S: DetectorSpec> {
    /// Where its verdicts are, for the runtime's live views.
    verdicts: VerdictColumns,
    spec: Arc<SpecCell<S>>,
    columns: Columns,
    output: SchemaRef,
    engine: Engine<S::State>,
    in_flight: Option<InFlight>,
    limits: KeyLimits,
    /// The cap over all workers.
    max_keys: u64,
    partitioning: Option<Partitioning>,
    /// With partition-aligned state: the partition each key came from.
    key_partition: HashMap<Box<str>, i32>,
}

impl<S: DetectorSpec> KeyedDetector<S> {
    fn emit(
        &self,
        batch: &RecordBatch,
        (out, keys): (DetectorColumns, KeyCounts),
        cx: &mut TransformContext,
        finalizers: Option<Finalizers>,
    ) -> Result<(), ComponentError> {
        cx.component().emit(AnomaliesDetected {
            count: out.anomalies(),
        });
        cx.component().emit(KeysTracked {
            keys: keys.keys,
            evicted: keys.evicted,
            refused: keys.refused,
            max_keys: self.max_keys,
        });
        let result = out.finish(batch, &self.output, S::STATISTIC, S::NAME)?;
        match finalizers {
            Some(f) => cx.emit_with(result, f),
            None => cx.emit(result),
        }
        Ok(())
    }

    fn drain(&mut self, cx: &mut TransformContext) -> Result<(), ComponentError> {
        if let (Some(f), Engine::Pool(pool)) = (self.in_flight.take(), &self.engine) {
            let out = pool.collect(f.batch.num_rows())?;
            self.emit(&f.batch, out, cx, Some(f.finalizers))?;
        }
        Ok(())
    }
}

impl<S: DetectorSpec> KeyedDetector<S> {
    pub(super) fn process_rows(
        &mut self,
        batch: RecordBatch,
        cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        match &mut self.engine {
            Engine::Inline(shard) => {
                let mut out = DetectorColumns::new(batch.num_rows());
                let rows = all_rows(&batch, self.columns);
                shard.judge(&*self.spec, self.columns, &batch, rows, |row, v, why| {
                    out.set(row, v);
                    if let Some(why) = why {
                        out.reason(row, why);
                    }
                })?;
                let keys = shard.table.take_counts();
                self.emit(&batch, (out, keys), cx, None)
            }
            Engine::Pool(pool) => {
                pool.submit(&batch)?;
                let next = InFlight {
                    batch,
                    finalizers: cx.take_finalizers(),
                };
                // The workers judge this batch while the previous one is assembled.
                self.drain(cx)?;
                self.in_flight = Some(next);
                Ok(())
            }
        }
    }
}

impl<S: DetectorSpec> Transform for KeyedDetector<S> {
    fn process(
        &mut self,
        batch: RecordBatch,
        cx: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        if self.partitioning.is_some() {
            super::partitioned::process(self, batch, cx)
        } else {
            self.process_rows(batch, cx)
        }
    }

    fn tick_interval(&self) -> Option<std::time::Duration> {
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
        self.drain(cx)
    }

    fn tunables(&self) -> Vec<Tunable> {
        self.spec.tunables()
    }

    fn verdict_columns(&self) -> Option<VerdictColumns> {
        Some(self.verdicts.clone())
    }

    fn set_tunable(&mut self, name: &str, value: &serde_json::Value) -> Result<(), String> {
        self.spec.set(name, value)
    }

    fn before_checkpoint(&mut self, cx: &mut TransformContext) -> Result<(), ComponentError> {
        self.drain(cx)
    }

    /// Every key's state, whichever worker owns it: one `(keys, states)` blob per shard,
    /// so a restart with another number of workers can deal keys out again.
    fn checkpoint(&self) -> Result<Option<Vec<u8>>, ComponentError> {
        let shards: Vec<Vec<u8>> = match &self.engine {
            Engine::Inline(shard) => {
                match self
                    .spec
                    .get()
                    .1
                    .save_states(shard.table.keys(), shard.table.states())
                {
                    None => return Ok(None),
                    Some(bytes) => vec![bytes?],
                }
            }
            Engine::Pool(pool) => {
                let mut out = Vec::new();
                for tx in &pool.jobs {
                    let (reply, rx) = mpsc::sync_channel(1);
                    tx.send(Work::Save(reply))
                        .map_err(|_| ComponentError::new("a detector worker stopped"))?;
                    match rx
                        .recv()
                        .map_err(|_| ComponentError::new("a detector worker stopped"))?
                    {
                        None => return Ok(None),
                        Some(bytes) => out.push(bytes?),
                    }
                }
                out
            }
        };
        super::state::encode_shards(&shards).map(Some)
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), ComponentError> {
        // Restored states are brought in line with the parameters now in force.
        let (generation, spec) = self.spec.get();
        let mut pairs = Vec::new();
        for shard in super::state::decode_shards(bytes)? {
            let (keys, states) = spec.load_states(&shard)?;
            pairs.extend(super::state::into_pairs(keys, states));
        }
        match &mut self.engine {
            Engine::Inline(shard) => {
                let (keys, states) = super::state::from_pairs(pairs);
                *shard = Shard::restored(self.limits, keys, states, generation);
            }
            Engine::Pool(pool) => {
                let n = pool.jobs.len();
                let mut parts: Vec<Vec<_>> = (0..n).map(|_| Vec::new()).collect();
                for (key, state) in pairs {
                    parts[shard_of(&key, n)].push((key, state));
                }
                for (tx, part) in pool.jobs.iter().zip(parts) {
                    let (keys, states) = super::state::from_pairs(part);
                    tx.send(Work::Load(Box::new(Shard::restored(
                        self.limits,
                        keys,
                        states,
                        generation,
                    ))))
                    .map_err(|_| ComponentError::new("a detector worker stopped"))?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod partition_tests;
mod partitioned;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_spread_over_shards() {
        let mut counts = [0usize; 4];
        for i in 0..10_000 {
            counts[shard_of(&format!("s-{i:04}"), 4)] += 1;
        }
        for c in counts {
            assert!((2000..3000).contains(&c), "{counts:?}");
        }
    }

    use arrow_array::{Float64Array, Int64Array};
    use arrow_schema::Field;

    use crate::transforms::zscore::ZScoreConfig;

    fn batch(keys: &[&str]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("sensor_id", DataType::Utf8, false),
            Field::new("ts", DataType::Int64, false),
            Field::new("value", DataType::Float64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(keys.to_vec())),
                Arc::new(Int64Array::from(vec![0; keys.len()])),
                Arc::new(Float64Array::from(vec![1.0; keys.len()])),
            ],
        )
        .unwrap()
    }

    /// Feeds `keys` to the shard; the rows that got a verdict (warming up counts).
    fn feed(
        shard: &mut Shard<tidegauge_detect::ZScore>,
        spec: &SpecCell<ZScoreConfig>,
        keys: &[&str],
    ) -> usize {
        let b = batch(keys);
        let columns = Columns {
            key: 0,
            value: 2,
            ts: Some(1),
        };
        let mut judged = 0;
        shard
            .judge(spec, columns, &b, all_rows(&b, columns), |_, _, _| {
                judged += 1
            })
            .unwrap();
        judged
    }

    #[test]
    fn past_the_cap_new_sensors_get_no_verdict_until_one_is_idle() {
        let spec = SpecCell::new(ZScoreConfig::default());
        let mut shard = Shard::new(KeyLimits::new(3, 3_600_000));
        assert_eq!(feed(&mut shard, &spec, &["a", "b", "c", "a"]), 4);
        assert_eq!(feed(&mut shard, &spec, &["d", "d", "a"]), 1);
        let counts = shard.table.take_counts();
        assert_eq!((counts.keys, counts.evicted, counts.refused), (3, 0, 2));
        shard.table.advance(3600);
        assert_eq!(feed(&mut shard, &spec, &["b", "c", "d"]), 3);
        let counts = shard.table.take_counts();
        assert_eq!((counts.keys, counts.evicted, counts.refused), (3, 1, 0));
    }

    /// Rows are looked up in runs and judged in order: sensors met again and again,
    /// others new in the middle of a run, past the cap or not, get the verdicts of
    /// detectors fed their rows one by one.
    #[test]
    fn runs_of_rows_judge_as_row_by_row() {
        let spec = SpecCell::new(ZScoreConfig {
            window: 3,
            ..ZScoreConfig::default()
        });
        let mut shard = Shard::new(KeyLimits::new(6, 3_600_000));
        let mut alone: HashMap<String, tidegauge_detect::ZScore> = HashMap::new();
        let names: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
        let mut x = 7u64;
        for _ in 0..5 {
            let n = 150;
            let mut keys = Vec::new();
            let mut values = Vec::new();
            for _ in 0..n {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                keys.push(names[((x >> 33) % 8) as usize].as_str());
                values.push(((x >> 40) % 100) as f64);
            }
            let schema = Arc::new(Schema::new(vec![
                Field::new("sensor_id", DataType::Utf8, false),
                Field::new("value", DataType::Float64, false),
            ]));
            let b = RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(StringArray::from(keys.clone())),
                    Arc::new(Float64Array::from(values.clone())),
                ],
            )
            .unwrap();
            let columns = Columns {
                key: 0,
                value: 1,
                ts: None,
            };
            let mut got = vec![None; n];
            shard
                .judge(&spec, columns, &b, all_rows(&b, columns), |row, v, why| {
                    got[row] = Some((v, why));
                })
                .unwrap();
            for row in 0..n {
                let held = alone.len() < 6 || alone.contains_key(keys[row]);
                let want = held.then(|| {
                    let d = alone
                        .entry(keys[row].to_string())
                        .or_insert_with(|| spec.get().1.new_state());
                    let v = d.observe(0, values[row]);
                    (v, v.is_anomaly.then(|| d.explain(&v)))
                });
                assert_eq!(got[row], want, "row {row}");
            }
        }
    }

    #[test]
    fn memory_beyond_the_budget_is_refused_with_what_to_do() {
        let input: SchemaRef = batch(&[]).schema();
        let validate = |window: usize, max_keys: Option<usize>| {
            let spec = ZScoreConfig {
                window,
                max_keys,
                ..ZScoreConfig::default()
            };
            use crate::transforms::detector::KeyedSettings;
            super::validate(&spec, &spec.common(), &input)
        };
        assert!(validate(100, None).is_ok());
        assert!(validate(5_000, None).is_ok());
        let errors = validate(1_000_000, None).unwrap_err();
        assert_eq!(errors[0].path, "max_keys");
        assert!(
            errors[0]
                .message
                .contains("lower max_keys (to 536 at most)"),
            "{errors:?}"
        );
        assert!(validate(1_000_000, Some(500)).is_ok());
        assert_eq!(
            validate(4_294_967_295, Some(1)).unwrap_err()[0].path,
            "window"
        );
    }
}
