//! `simulate` source: a fleet of sensors with a known ground truth, for trying pipelines
//! and detectors without any hardware. Deterministic: the same seed and `start_ms` give
//! the same events, bit for bit, on every machine (the generator is SplitMix64 with
//! Box–Muller normals, written here so no library update can change the stream).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow_array::RecordBatch;
use arrow_array::builder::{Float64Builder, Int64Builder, StringBuilder};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use schemars::JsonSchema;
use serde::Deserialize;
use tidegauge_core::component::blocking_source_fn;
use tidegauge_core::telemetry::EventsReceived;
use tidegauge_core::{
    Batch, BuildContext, BuildError, ComponentError, ConfigError, Source, SourceConfig,
    SourceContext,
};

use super::BatchConfig;

/// A simulated fleet of sensors: per-sensor baseline and noise, with injected spikes,
/// drifts, stuck values and dropouts, each labelled in a `label` column.
///
/// Emits `sensor_id` (`s-0000`, `s-0001`, ...), `ts` (epoch ms), `value` and `label`
/// (`spike`, `drift`, `stuck`, `dropout` on the first reading after a silence, or null
/// for a normal reading). Sensors report in turn; simulated time advances `1/rate`
/// seconds per event.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulateConfig {
    /// Number of sensors.
    #[serde(default = "default_sensors")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub sensors: usize,
    /// Events per second across the whole fleet.
    #[serde(default = "default_rate")]
    #[schemars(extend("exclusiveMinimum" = 0.0))]
    pub rate: f64,
    /// Pace events to the wall clock (`true`), or produce them as fast as downstream takes
    /// them (`false`; timestamps still advance at `rate`).
    #[serde(default = "default_realtime")]
    pub realtime: bool,
    /// Stop after this many events. Unset: run until shut down.
    #[serde(default)]
    pub events: Option<u64>,
    /// Random seed.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Timestamp of the first event, epoch milliseconds. Unset: the time of start.
    #[serde(default)]
    pub start_ms: Option<i64>,
    /// Lowest per-sensor baseline (baselines are uniform between min and max).
    #[serde(default = "default_baseline_min")]
    pub baseline_min: f64,
    /// Highest per-sensor baseline.
    #[serde(default = "default_baseline_max")]
    pub baseline_max: f64,
    /// Lowest per-sensor noise standard deviation (uniform between min and max).
    #[serde(default = "default_noise_min")]
    pub noise_min: f64,
    /// Highest per-sensor noise standard deviation.
    #[serde(default = "default_noise_max")]
    pub noise_max: f64,
    /// Injected faults.
    #[serde(default)]
    pub inject: InjectConfig,
    /// Batching of events.
    #[serde(default)]
    pub batch: BatchConfig,
}

/// Faults injected into the simulated readings. Probabilities are per reading of a
/// sensor that is not already in a fault.
#[derive(Clone, Debug, Deserialize, JsonSchema, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct InjectConfig {
    /// Chance that a reading is a spike.
    #[serde(default = "default_spike_probability")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub spike_probability: f64,
    /// Smallest spike, in the sensor's standard deviations.
    #[serde(default = "default_spike_sigma_min")]
    pub spike_sigma_min: f64,
    /// Largest spike, in standard deviations.
    #[serde(default = "default_spike_sigma_max")]
    pub spike_sigma_max: f64,
    /// Chance that a drift starts: the reading moves away from the baseline by
    /// `drift_sigma_per_event` standard deviations per reading, then snaps back.
    #[serde(default = "default_drift_probability")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub drift_probability: f64,
    /// Readings a drift lasts.
    #[serde(default = "default_drift_events")]
    pub drift_events: u32,
    /// Drift per reading, in standard deviations.
    #[serde(default = "default_drift_sigma_per_event")]
    pub drift_sigma_per_event: f64,
    /// Chance that the sensor gets stuck, repeating its last reading.
    #[serde(default = "default_stuck_probability")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub stuck_probability: f64,
    /// Readings a stuck period lasts.
    #[serde(default = "default_stuck_events")]
    pub stuck_events: u32,
    /// Chance that the sensor goes silent.
    #[serde(default = "default_dropout_probability")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub dropout_probability: f64,
    /// Readings missed during a dropout.
    #[serde(default = "default_dropout_events")]
    pub dropout_events: u32,
}

fn default_sensors() -> usize {
    20
}
fn default_rate() -> f64 {
    200.0
}
fn default_realtime() -> bool {
    true
}
fn default_seed() -> u64 {
    1
}
fn default_baseline_min() -> f64 {
    10.0
}
fn default_baseline_max() -> f64 {
    100.0
}
fn default_noise_min() -> f64 {
    0.5
}
fn default_noise_max() -> f64 {
    5.0
}
fn default_spike_probability() -> f64 {
    0.002
}
fn default_spike_sigma_min() -> f64 {
    4.0
}
fn default_spike_sigma_max() -> f64 {
    10.0
}
fn default_drift_probability() -> f64 {
    0.0002
}
fn default_drift_events() -> u32 {
    300
}
fn default_drift_sigma_per_event() -> f64 {
    0.05
}
fn default_stuck_probability() -> f64 {
    0.0002
}
fn default_stuck_events() -> u32 {
    200
}
fn default_dropout_probability() -> f64 {
    0.0001
}
fn default_dropout_events() -> u32 {
    200
}

impl Default for InjectConfig {
    fn default() -> Self {
        InjectConfig {
            spike_probability: default_spike_probability(),
            spike_sigma_min: default_spike_sigma_min(),
            spike_sigma_max: default_spike_sigma_max(),
            drift_probability: default_drift_probability(),
            drift_events: default_drift_events(),
            drift_sigma_per_event: default_drift_sigma_per_event(),
            stuck_probability: default_stuck_probability(),
            stuck_events: default_stuck_events(),
            dropout_probability: default_dropout_probability(),
            dropout_events: default_dropout_events(),
        }
    }
}

/// The schema every `simulate` source emits.
pub fn simulate_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("sensor_id", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("value", DataType::Float64, false),
        Field::new("label", DataType::Utf8, true),
    ]))
}

impl SourceConfig for SimulateConfig {
    const TYPE: &'static str = "simulate";

    fn validate(&self) -> Result<SchemaRef, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut check = |ok: bool, path: &str, msg: &str| {
            if !ok {
                errors.push(ConfigError::new(path, msg));
            }
        };
        // Ranges (`sensors`, the probabilities) are checked from the schema before this
        // runs; a NaN, which no range excludes, is caught here.
        check(self.rate.is_finite(), "rate", "must be a finite number");
        check(
            self.baseline_min.is_finite()
                && self.baseline_max.is_finite()
                && self.baseline_min <= self.baseline_max,
            "baseline_max",
            "baselines must be finite with baseline_min <= baseline_max",
        );
        check(
            self.noise_min.is_finite()
                && self.noise_min > 0.0
                && self.noise_max.is_finite()
                && self.noise_min <= self.noise_max,
            "noise_max",
            "noise must be positive and finite with noise_min <= noise_max",
        );
        let i = &self.inject;
        for (p, name) in [
            (i.spike_probability, "inject.spike_probability"),
            (i.drift_probability, "inject.drift_probability"),
            (i.stuck_probability, "inject.stuck_probability"),
            (i.dropout_probability, "inject.dropout_probability"),
        ] {
            check(!p.is_nan(), name, "must be in 0..=1, got NaN");
        }
        check(
            i.drift_probability + i.stuck_probability + i.dropout_probability <= 1.0,
            "inject",
            "drift, stuck and dropout probabilities must add up to at most 1",
        );
        check(
            i.spike_sigma_min.is_finite()
                && i.spike_sigma_max.is_finite()
                && 0.0 <= i.spike_sigma_min
                && i.spike_sigma_min <= i.spike_sigma_max,
            "inject.spike_sigma_max",
            "spike sizes must be finite with 0 <= spike_sigma_min <= spike_sigma_max",
        );
        check(
            i.drift_sigma_per_event.is_finite(),
            "inject.drift_sigma_per_event",
            "expected a finite number",
        );
        if errors.is_empty() {
            Ok(simulate_schema())
        } else {
            Err(errors)
        }
    }

    async fn build(
        &self,
        schema: SchemaRef,
        _cx: BuildContext,
    ) -> Result<Box<dyn Source>, BuildError> {
        let source = SimulateSource {
            config: self.clone(),
            schema,
        };
        Ok(blocking_source_fn("simulator", move |cx| {
            source.generate(cx)
        }))
    }
}

/// SplitMix64: tiny, fast, and stable forever.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi]`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]: ln is finite
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[derive(Clone, Debug)]
struct Sensor {
    id: String,
    baseline: f64,
    noise: f64,
    last: f64,
    drift_left: u32,
    drift_step: f64,
    drift_offset: f64,
    stuck_left: u32,
    dropout_left: u32,
    after_dropout: bool,
}

/// The fleet: deterministic per-event generation, independent of pacing and batching.
pub struct Fleet {
    rng: SplitMix64,
    sensors: Vec<Sensor>,
    inject: InjectConfig,
    next: u64,
}

/// One generated reading.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading<'a> {
    /// Sensor id.
    pub sensor_id: &'a str,
    /// Event index (time = start + index / rate).
    pub index: u64,
    /// The reading.
    pub value: f64,
    /// Ground truth.
    pub label: Option<&'static str>,
}

impl Fleet {
    /// A fleet as configured.
    pub fn new(config: &SimulateConfig) -> Self {
        let mut rng = SplitMix64::new(config.seed);
        let width = config.sensors.saturating_sub(1).to_string().len().max(4);
        let sensors = (0..config.sensors)
            .map(|i| {
                let baseline = rng.uniform(config.baseline_min, config.baseline_max);
                let noise = rng.uniform(config.noise_min, config.noise_max);
                Sensor {
                    id: format!("s-{i:0width$}"),
                    baseline,
                    noise,
                    last: baseline,
                    drift_left: 0,
                    drift_step: 0.0,
                    drift_offset: 0.0,
                    stuck_left: 0,
                    dropout_left: 0,
                    after_dropout: false,
                }
            })
            .collect();
        Fleet {
            rng,
            sensors,
            inject: config.inject.clone(),
            next: 0,
        }
    }

    /// The next event slot: a reading, or `None` when its sensor is silent.
    pub fn next_reading(&mut self) -> Option<Reading<'_>> {
        let index = self.next;
        self.next += 1;
        let n = self.sensors.len();
        let s = &mut self.sensors[(index % n as u64) as usize];
        let rng = &mut self.rng;
        let inj = &self.inject;
        if s.dropout_left > 0 {
            s.dropout_left -= 1;
            s.after_dropout = s.dropout_left == 0;
            return None;
        }
        let mut label = if std::mem::take(&mut s.after_dropout) {
            Some("dropout")
        } else {
            None
        };
        if s.drift_left == 0 && s.stuck_left == 0 {
            let u = rng.next_f64();
            if u < inj.dropout_probability {
                s.dropout_left = inj.dropout_events;
                if s.dropout_left > 0 {
                    s.dropout_left -= 1;
                    s.after_dropout = s.dropout_left == 0;
                    return None;
                }
            } else if u < inj.dropout_probability + inj.stuck_probability {
                s.stuck_left = inj.stuck_events;
            } else if u < inj.dropout_probability + inj.stuck_probability + inj.drift_probability {
                s.drift_left = inj.drift_events;
                let sign = if rng.next_f64() < 0.5 { -1.0 } else { 1.0 };
                s.drift_step = sign * inj.drift_sigma_per_event * s.noise;
            }
        }
        let mut value = s.baseline + s.noise * rng.normal() + s.drift_offset;
        if s.drift_left > 0 {
            s.drift_offset += s.drift_step;
            value += s.drift_step;
            s.drift_left -= 1;
            if s.drift_left == 0 {
                s.drift_offset = 0.0;
            }
            label = label.or(Some("drift"));
        }
        if s.stuck_left > 0 {
            value = s.last;
            s.stuck_left -= 1;
            label = label.or(Some("stuck"));
        } else if rng.next_f64() < inj.spike_probability {
            let sign = if rng.next_f64() < 0.5 { -1.0 } else { 1.0 };
            let size = rng.uniform(inj.spike_sigma_min, inj.spike_sigma_max);
            value = s.baseline + sign * size * s.noise;
            label = Some("spike");
        }
        s.last = value;
        Some(Reading {
            sensor_id: &s.id,
            index,
            value,
            label,
        })
    }

    /// Index of the next event slot.
    pub fn position(&self) -> u64 {
        self.next
    }
}

struct SimulateSource {
    config: SimulateConfig,
    schema: SchemaRef,
}

struct Builders {
    ids: StringBuilder,
    ts: Int64Builder,
    values: Float64Builder,
    labels: StringBuilder,
    rows: usize,
}

impl Builders {
    fn new(n: usize) -> Self {
        Builders {
            ids: StringBuilder::with_capacity(n, n * 8),
            ts: Int64Builder::with_capacity(n),
            values: Float64Builder::with_capacity(n),
            labels: StringBuilder::with_capacity(n, n),
            rows: 0,
        }
    }

    fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch, ComponentError> {
        self.rows = 0;
        Ok(RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(self.ids.finish()),
                Arc::new(self.ts.finish()),
                Arc::new(self.values.finish()),
                Arc::new(self.labels.finish()),
            ],
        )?)
    }
}

impl SimulateSource {
    fn generate(self, cx: SourceContext) -> Result<(), ComponentError> {
        let SourceContext {
            component,
            mut out,
            shutdown,
            ..
        } = cx;
        let c = &self.config;
        let start_ms = c.start_ms.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
        });
        let ms_per_event = 1000.0 / c.rate;
        let total = c.events.unwrap_or(u64::MAX);
        let linger = Duration::from_millis(c.batch.linger_ms);
        let mut fleet = Fleet::new(c);
        let mut b = Builders::new(c.batch.rows.min(65_536));
        let started = Instant::now();
        let mut batch_started: Option<Instant> = None;

        while fleet.position() < total && !shutdown.is_cancelled() {
            // Slots due now (all of them when not paced).
            let due = if c.realtime {
                ((started.elapsed().as_secs_f64() * c.rate) as u64).min(total)
            } else {
                total
            };
            while fleet.position() < due && b.rows < c.batch.rows {
                if let Some(r) = fleet.next_reading() {
                    b.ids.append_value(r.sensor_id);
                    b.ts.append_value(start_ms + (r.index as f64 * ms_per_event) as i64);
                    b.values.append_value(r.value);
                    b.labels.append_option(r.label);
                    b.rows += 1;
                    batch_started.get_or_insert_with(Instant::now);
                }
            }
            let full = b.rows >= c.batch.rows;
            let lingered = batch_started.is_some_and(|t| t.elapsed() >= linger);
            let done = fleet.position() >= total;
            if b.rows > 0 && (full || lingered || done || !c.realtime) {
                let batch = b.finish(&self.schema)?;
                batch_started = None;
                component.emit(EventsReceived {
                    count: batch.num_rows() as u64,
                });
                if out.blocking_send(Batch::new(batch)).is_err() {
                    return Ok(());
                }
            }
            if c.realtime && !full {
                // Sleep until the next slot is due, or the linger deadline, whichever first.
                let next_due = Duration::from_secs_f64((fleet.position() + 1) as f64 / c.rate);
                let wait = next_due
                    .saturating_sub(started.elapsed())
                    .min(linger)
                    .max(Duration::from_millis(1));
                std::thread::sleep(wait);
            }
        }
        if b.rows > 0 {
            let batch = b.finish(&self.schema)?;
            component.emit(EventsReceived {
                count: batch.num_rows() as u64,
            });
            let _ = out.blocking_send(Batch::new(batch));
        }
        Ok(())
    }
}

tidegauge_core::register_source!(SimulateConfig);

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> SimulateConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn same_seed_same_stream_other_seed_other_stream() {
        let c = config("seed = 7\nsensors = 5");
        let take = |c: &SimulateConfig| {
            let mut f = Fleet::new(c);
            (0..2000)
                .filter_map(|_| {
                    f.next_reading()
                        .map(|r| (r.sensor_id.to_string(), r.value.to_bits(), r.label))
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(take(&c), take(&c));
        assert_ne!(take(&c), take(&config("seed = 8\nsensors = 5")));
    }

    #[test]
    fn injected_faults_are_labelled() {
        let c = config(
            "sensors = 3\n[inject]\nspike_probability = 0.01\ndrift_probability = 0.001\nstuck_probability = 0.001\ndropout_probability = 0.001\n",
        );
        let mut f = Fleet::new(&c);
        let mut counts = std::collections::HashMap::new();
        let mut silent = 0;
        let mut last: std::collections::HashMap<String, f64> = Default::default();
        for _ in 0..300_000 {
            match f.next_reading() {
                None => silent += 1,
                Some(r) => {
                    *counts.entry(r.label).or_insert(0u64) += 1;
                    if r.label == Some("stuck") {
                        assert_eq!(last.get(r.sensor_id), Some(&r.value), "stuck repeats");
                    }
                    last.insert(r.sensor_id.to_string(), r.value);
                }
            }
        }
        for l in ["spike", "drift", "stuck", "dropout"] {
            assert!(
                counts.get(&Some(l)).copied().unwrap_or(0) > 0,
                "no {l}: {counts:?}"
            );
        }
        assert!(silent > 0);
        let spikes = counts[&Some("spike")] as f64 / 300_000.0;
        assert!((0.005..0.015).contains(&spikes), "spike rate {spikes}");
    }

    #[test]
    fn rejects_nonsense() {
        // Through the registry, as a pipeline file is read: ranges come from the schema.
        let d = tidegauge_core::registry::find(
            tidegauge_core::registry::ComponentKind::Source,
            "simulate",
        )
        .unwrap();
        let settings = toml::de::DeValue::parse(
            "{ sensors = 0, rate = -1.0, inject = { spike_probability = 2.0 } }",
        )
        .unwrap();
        let Ok(tidegauge_core::registry::AnyConfig::Source(c)) = d.parse(settings) else {
            panic!("settings of the right types parse");
        };
        let errs = c.validate().unwrap_err();
        let got: Vec<_> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            got,
            vec![
                "sensors: must be in 1..=10000000, got 0",
                "rate: must be above 0, got -1",
                "inject.spike_probability: must be in 0..=1, got 2",
            ]
        );
        // What no range says is the component's own check.
        let c = config("[inject]\ndrift_probability = 0.6\nstuck_probability = 0.6");
        let errs = c.validate().unwrap_err();
        assert_eq!(errs[0].path, "inject");
    }
}
