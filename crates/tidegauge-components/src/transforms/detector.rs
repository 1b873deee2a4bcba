//! Detectors as registered factories.
//!
//! A detector is one file: a config struct declared with [`detector_config!`] and its
//! [`DetectorSpec`] (how to make a fresh per-sensor state). The macro registers the
//! config twice with `inventory`, and nothing else needs editing:
//! - as a transform (`type = "zscore"`), which runs it per sensor through the keyed stage
//!   ([`keyed`](super::keyed)), statically dispatched: no virtual call per event;
//! - as a [`DetectorDescriptor`], the factory the `ensemble` transform looks members up
//!   in (`members = [{ type = "zscore", window = 50 }]`) and `tidegauge score` lists.
//!
//! A test below registers a detector inside a test module and uses it as a transform
//! and as an ensemble member, which is what adding one to the crate amounts to.

use std::fmt::Debug;

use schemars::JsonSchema;
use tidegauge_core::ConfigError;
use tidegauge_detect::{Detector, Verdict};

use super::spec::{Common, DetectorSpec};

/// The settings every keyed detector shares, implemented by [`detector_config!`].
pub trait KeyedSettings {
    /// The shared settings with their defaults applied.
    fn common(&self) -> Common;
    /// Whether any shared setting is given (an ensemble member must not).
    fn sets_common(&self) -> bool;
}

/// A detector config, type-erased: what an ensemble holds for each member.
pub trait DetectorFactory: Debug + Send + Sync {
    /// The detector's name (its `type`).
    fn name(&self) -> &'static str;
    /// Whether verdicts depend on event time.
    fn needs_time(&self) -> bool;
    /// Checks the detector's own parameters; paths are setting names.
    fn check(&self) -> Vec<ConfigError>;
    /// Whether the config sets `key_field`, `value_field`, `ts_field` or `workers`.
    fn sets_common(&self) -> bool;
    /// A per-sensor state with no history.
    fn new_state(&self) -> BoxedDetector;
    /// The most memory one sensor's state can take, in bytes.
    fn bytes_per_key(&self) -> u64;
    /// The settings as JSON (without `type`).
    fn settings(&self) -> serde_json::Value;
    /// A copy.
    fn clone_box(&self) -> Box<dyn DetectorFactory>;
    /// A per-sensor state from its checkpointed form (what serializing a
    /// [`BoxedDetector`] this factory made wrote).
    fn restore_state(&self, state: ciborium::Value) -> Result<BoxedDetector, String>;
}

impl<S> DetectorFactory for S
where
    S: DetectorSpec + KeyedSettings + Clone + Debug,
    S::State: Debug,
{
    fn name(&self) -> &'static str {
        S::NAME
    }
    fn needs_time(&self) -> bool {
        DetectorSpec::needs_time(self)
    }
    fn check(&self) -> Vec<ConfigError> {
        DetectorSpec::check(self)
    }
    fn sets_common(&self) -> bool {
        KeyedSettings::sets_common(self)
    }
    fn new_state(&self) -> BoxedDetector {
        BoxedDetector(Box::new(DetectorSpec::new_state(self)))
    }
    fn bytes_per_key(&self) -> u64 {
        DetectorSpec::bytes_per_key(self)
    }
    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
    fn clone_box(&self) -> Box<dyn DetectorFactory> {
        Box::new(self.clone())
    }
    fn restore_state(&self, state: ciborium::Value) -> Result<BoxedDetector, String> {
        DetectorSpec::restore_state(self, state).map(|s| BoxedDetector(Box::new(s)))
    }
}

/// Object-safe face of [`Detector`].
trait DynDetector: Debug + Send {
    fn observe(&mut self, ts_ms: i64, value: f64) -> Verdict;
    fn explain(&self, verdict: &Verdict) -> String;
    fn clone_box(&self) -> Box<dyn DynDetector>;
    fn save(&self) -> Result<ciborium::Value, String>;
}

impl<D: Detector + Debug + serde::Serialize> DynDetector for D {
    fn observe(&mut self, ts_ms: i64, value: f64) -> Verdict {
        Detector::observe(self, ts_ms, value)
    }
    fn explain(&self, verdict: &Verdict) -> String {
        Detector::explain(self, verdict)
    }
    fn clone_box(&self) -> Box<dyn DynDetector> {
        Box::new(self.clone())
    }
    fn save(&self) -> Result<ciborium::Value, String> {
        ciborium::Value::serialized(self).map_err(|e| e.to_string())
    }
}

/// Any registered detector's per-sensor state.
#[derive(Debug)]
pub struct BoxedDetector(Box<dyn DynDetector>);

impl Clone for BoxedDetector {
    fn clone(&self) -> Self {
        BoxedDetector(self.0.clone_box())
    }
}

/// Serializes the state inside (for checkpoints); the factory that made it reads it back
/// ([`DetectorFactory::restore_state`]).
impl serde::Serialize for BoxedDetector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0
            .save()
            .map_err(serde::ser::Error::custom)?
            .serialize(s)
    }
}

impl Detector for BoxedDetector {
    fn observe(&mut self, ts_ms: i64, value: f64) -> Verdict {
        self.0.observe(ts_ms, value)
    }
    fn explain(&self, verdict: &Verdict) -> String {
        self.0.explain(verdict)
    }
}

/// One registered detector: its name and how to read its settings.
pub struct DetectorDescriptor {
    /// The `type` that selects it.
    pub name: &'static str,
    parse: fn(serde_json::Value) -> Result<Box<dyn DetectorFactory>, String>,
}

inventory::collect!(DetectorDescriptor);

fn parse_factory<S>(settings: serde_json::Value) -> Result<Box<dyn DetectorFactory>, String>
where
    S: DetectorFactory + serde::de::DeserializeOwned + 'static,
{
    serde_path_to_error::deserialize::<_, S>(settings)
        .map(|s| Box::new(s) as Box<dyn DetectorFactory>)
        .map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            if path == "." {
                message
            } else {
                format!("{path}: {message}")
            }
        })
}

impl DetectorDescriptor {
    /// The descriptor of detector config `S` (used by [`detector_config!`]).
    pub const fn of<S>(name: &'static str) -> Self
    where
        S: DetectorFactory + serde::de::DeserializeOwned + JsonSchema + 'static,
    {
        DetectorDescriptor {
            name,
            parse: parse_factory::<S>,
        }
    }

    /// Reads the detector's settings (without `type`).
    pub fn parse(&self, settings: serde_json::Value) -> Result<Box<dyn DetectorFactory>, String> {
        (self.parse)(settings)
    }
}

/// Every registered detector, by name.
pub fn all() -> Vec<&'static DetectorDescriptor> {
    let mut v: Vec<_> = inventory::iter::<DetectorDescriptor>.into_iter().collect();
    v.sort_by_key(|d| d.name);
    v
}

/// The detector called `name`.
pub fn find(name: &str) -> Option<&'static DetectorDescriptor> {
    inventory::iter::<DetectorDescriptor>
        .into_iter()
        .find(|d| d.name == name)
}

/// Declares a keyed detector's config struct: the settings every detector shares
/// (`key_field`, `value_field`, `ts_field`, `workers`) followed by its own, each with
/// its default; implements `TransformConfig` through the keyed stage's `validate` and
/// `build` (the struct must implement [`DetectorSpec`]) and registers it both as a
/// transform and as a detector (see the [module documentation](self)).
macro_rules! detector_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident as $type_name:literal {
            $( $(#[$fmeta:meta])* pub $field:ident : $fty:ty = $default:expr, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            /// Field naming the sensor; state is kept per distinct value.
            #[schemars(extend("default" = "sensor_id"))]
            pub key_field: Option<String>,
            /// Field holding the reading (Float64 or Int64).
            #[schemars(extend("default" = "value"))]
            pub value_field: Option<String>,
            /// Field holding the event time in epoch milliseconds (Int64).
            #[schemars(extend("default" = "ts"))]
            pub ts_field: Option<String>,
            /// Threads the sensors are spread over; each sensor stays on one, so results are
            /// identical to one thread. 0 = one per core.
            #[schemars(extend("default" = 1))]
            #[schemars(range(max = 1024))]
            pub workers: Option<usize>,
            /// Most sensors holding state at once. A new sensor past the cap takes the
            /// place of one silent for `key_idle_ms` (its state is dropped, and it starts
            /// cold if it comes back); when none is, the new sensor's events get no verdict
            /// (counted in `/metrics`, with a warning). `max_keys` times the bytes a
            /// sensor's state can grow to must stay under 4 GiB.
            #[schemars(extend("default" = 100000))]
            #[schemars(range(min = 1, max = 100000000))]
            pub max_keys: Option<usize>,
            /// Silence after which a sensor's state may be dropped to make room under
            /// `max_keys`, in milliseconds.
            #[schemars(extend("default" = 3600000))]
            #[schemars(range(min = 1))]
            pub key_idle_ms: Option<u64>,
            $( $(#[$fmeta])* pub $field: $fty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    key_field: None,
                    value_field: None,
                    ts_field: None,
                    workers: None,
                    max_keys: None,
                    key_idle_ms: None,
                    $( $field: $default, )*
                }
            }
        }

        impl $crate::transforms::detector::KeyedSettings for $name {
            fn common(&self) -> $crate::transforms::spec::Common {
                $crate::transforms::spec::Common::resolve(
                    &self.key_field,
                    &self.value_field,
                    &self.ts_field,
                    self.workers,
                    self.max_keys,
                    self.key_idle_ms,
                )
            }

            fn sets_common(&self) -> bool {
                self.key_field.is_some()
                    || self.value_field.is_some()
                    || self.ts_field.is_some()
                    || self.workers.is_some()
                    || self.max_keys.is_some()
                    || self.key_idle_ms.is_some()
            }
        }

        impl tidegauge_core::TransformConfig for $name {
            const TYPE: &'static str = $type_name;
            const METRICS: &'static [&'static tidegauge_core::telemetry::MetricDesc] =
                $crate::telemetry::KEY_METRICS;

            fn validate(
                &self,
                input: &arrow_schema::SchemaRef,
            ) -> Result<arrow_schema::SchemaRef, Vec<tidegauge_core::ConfigError>> {
                use $crate::transforms::detector::KeyedSettings;
                $crate::transforms::keyed::validate(self, &self.common(), input)
            }

            fn build(
                &self,
                input: arrow_schema::SchemaRef,
                output: arrow_schema::SchemaRef,
                cx: tidegauge_core::BuildContext,
            ) -> Result<Box<dyn tidegauge_core::Transform>, tidegauge_core::BuildError> {
                use $crate::transforms::detector::KeyedSettings;
                $crate::transforms::keyed::build(
                    self.clone(),
                    &self.common(),
                    &input,
                    output,
                    cx.component.id(),
                )
            }
        }

        tidegauge_core::register_transform!($name);
        inventory::submit! {
            $crate::transforms::detector::DetectorDescriptor::of::<$name>($type_name)
        }
    };
}

pub(crate) use detector_config;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::cast::AsArray;
    use arrow_array::{Float64Array, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema, SchemaRef};
    use tidegauge_core::dead_letter::DeadLetter;
    use tidegauge_core::registry::{self, AnyConfig, ComponentKind};
    use tidegauge_core::telemetry::ComponentTelemetry;
    use tidegauge_core::{BuildContext, ComponentContext, TransformContext};
    use tidegauge_detect::{Detector, Verdict};

    use super::*;

    /// A detector written for this test alone: an anomaly when a value exceeds `limit`.
    #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
    pub struct Above {
        limit: f64,
    }

    impl Detector for Above {
        fn observe(&mut self, _ts_ms: i64, value: f64) -> Verdict {
            let is_anomaly = value > self.limit;
            Verdict {
                statistic: Some(value),
                score: if is_anomaly { 1.0 } else { 0.0 },
                is_anomaly,
            }
        }
        fn explain(&self, _verdict: &Verdict) -> String {
            format!("above {}", self.limit)
        }
    }

    detector_config! {
        /// Test detector: anomaly above `limit`.
        pub struct AboveConfig as "test_above" {
            /// The limit.
            pub limit: f64 = 10.0,
        }
    }

    impl DetectorSpec for AboveConfig {
        type State = Above;
        const NAME: &'static str = "test_above";
        const STATISTIC: &'static str = "value_seen";
        fn needs_time(&self) -> bool {
            false
        }
        fn check(&self) -> Vec<ConfigError> {
            Vec::new()
        }
        fn new_state(&self) -> Above {
            Above { limit: self.limit }
        }
        fn restore_state(&self, state: ciborium::Value) -> Result<Above, String> {
            crate::transforms::state::deserialize_state(state)
        }
    }

    fn run(type_name: &'static str, settings: serde_json::Value, values: &[f64]) -> Vec<bool> {
        let input: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("sensor_id", DataType::Utf8, false),
            Field::new("value", DataType::Float64, true),
        ]));
        let d = registry::find(ComponentKind::Transform, type_name).expect("registered");
        let Ok(AnyConfig::Transform(config)) = d.parse_json(settings) else {
            panic!("{type_name}: settings rejected");
        };
        let output = config.validate(&input).expect("valid");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let component = ComponentContext::new(
            Arc::new(ComponentTelemetry::new(
                "t",
                ComponentKind::Transform,
                type_name,
            )),
            DeadLetter::stderr(),
        );
        let cx = BuildContext {
            component: component.clone(),
            runtime: runtime.handle().clone(),
        };
        let mut t = config.build(input.clone(), output, cx).unwrap();
        let batch = RecordBatch::try_new(
            input,
            vec![
                Arc::new(StringArray::from(vec!["s"; values.len()])),
                Arc::new(Float64Array::from(values.to_vec())),
            ],
        )
        .unwrap();
        let mut tcx = TransformContext::new(component);
        t.process(batch, &mut tcx).unwrap();
        t.flush(&mut tcx).unwrap();
        let out: Vec<RecordBatch> = tcx.take_emitted().map(|(b, _)| b).collect();
        let flags = out[0].column_by_name("is_anomaly").unwrap().as_boolean();
        (0..flags.len()).map(|i| flags.value(i)).collect()
    }

    #[test]
    fn a_detector_declared_in_one_place_is_a_transform_and_an_ensemble_member() {
        assert!(all().iter().any(|d| d.name == "test_above"));
        assert!(find("zscore").is_some() && find("mad").is_some());
        let values = [1.0, 20.0, 3.0];
        assert_eq!(
            run("test_above", serde_json::json!({ "limit": 5.0 }), &values),
            [false, true, false]
        );
        let ensemble = serde_json::json!({
            "members": [{ "type": "test_above", "limit": 2.0 }],
            "combine": "max",
        });
        assert_eq!(run("ensemble", ensemble, &values), [false, true, true]);
    }

    #[test]
    fn members_are_checked_like_their_own_transform() {
        let d = registry::find(ComponentKind::Transform, "ensemble").unwrap();
        let bad = |members: serde_json::Value| match d
            .parse_json(serde_json::json!({ "members": members }))
        {
            Ok(AnyConfig::Transform(c)) => c
                .validate(&Arc::new(Schema::new(vec![
                    Field::new("sensor_id", DataType::Utf8, false),
                    Field::new("value", DataType::Float64, true),
                ])))
                .err()
                .map(|e| {
                    e.iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default(),
            Ok(_) => String::new(),
            Err(e) => format!("{}: {}", e.path, e.message),
        };
        assert!(bad(serde_json::json!([{ "type": "nope" }])).contains("unknown detector `nope`"));
        assert!(bad(serde_json::json!([{ "window": 5 }])).contains("`type`"));
        assert!(bad(serde_json::json!([{ "type": "zscore", "windw": 5 }])).contains("windw"));
        assert!(bad(serde_json::json!([{ "type": "zscore", "window": 1 }])).contains("members[0]"));
        assert!(
            bad(serde_json::json!([{ "type": "zscore", "workers": 2 }]))
                .contains("belong to the ensemble")
        );
        assert!(
            bad(serde_json::json!([{ "type": "ensemble", "members": [] }]))
                .contains("cannot be a member")
        );
    }

    /// Settings that make `name` a valid detector for the checkpoint test (its defaults
    /// where they are valid alone).
    fn checkpoint_settings(name: &str) -> serde_json::Value {
        match name {
            "threshold" => serde_json::json!({ "high": 30.0 }),
            "flatline" => serde_json::json!({ "min_duration_ms": 60_000 }),
            "rate_of_change" => serde_json::json!({ "max_rate_per_sec": 5.0 }),
            "seasonal" => serde_json::json!({ "slot_ms": 10_000, "slots": 6, "min_per_slot": 3 }),
            "calibrated" => serde_json::json!({
                "detector": { "type": "mad", "window": 30 }, "min_events": 50
            }),
            "ensemble" => serde_json::json!({
                "members": [
                    { "type": "calibrated", "detector": { "type": "ewma" }, "min_events": 50 },
                    { "type": "baseline", "warmup": 100 },
                    { "type": "zscore" },
                ],
                "combine": "vote",
            }),
            _ => serde_json::json!({}),
        }
    }

    /// Every registered detector's per-sensor state survives a checkpoint: written to
    /// CBOR, read back by its factory, it gives bit-identical verdicts to the state that
    /// never stopped (including members of an ensemble and a calibrated detector's
    /// wrapped state).
    #[test]
    fn every_detector_state_survives_a_checkpoint() {
        let value = |i: i64| {
            let wobble = ((i * 7919) % 23) as f64 / 7.0 + (i % 50) as f64 / 10.0;
            match i {
                1000..1200 => 10.0,          // stuck
                1250..1400 => 40.0 + wobble, // shifted
                _ if i > 600 && i % 397 == 0 => 200.0,
                _ => 10.0 + wobble,
            }
        };
        let mut checked = Vec::new();
        for d in all() {
            let factory = d.parse(checkpoint_settings(d.name)).expect("settings");
            assert!(
                factory.check().is_empty(),
                "{}: {:?}",
                d.name,
                factory.check()
            );
            let mut live = factory.new_state();
            for i in 0..600i64 {
                Detector::observe(&mut live, i * 1000, value(i));
            }
            let mut bytes = Vec::new();
            ciborium::into_writer(&live, &mut bytes).unwrap();
            let saved: ciborium::Value = ciborium::from_reader(&bytes[..]).unwrap();
            let mut restored = factory.restore_state(saved).expect(d.name);
            let mut flagged = 0;
            for i in 600..1400i64 {
                let (a, b) = (
                    Detector::observe(&mut live, i * 1000, value(i)),
                    Detector::observe(&mut restored, i * 1000, value(i)),
                );
                assert_eq!(
                    (
                        a.statistic.map(f64::to_bits),
                        a.score.to_bits(),
                        a.is_anomaly
                    ),
                    (
                        b.statistic.map(f64::to_bits),
                        b.score.to_bits(),
                        b.is_anomaly
                    ),
                    "{} at {i}",
                    d.name
                );
                flagged += u32::from(a.is_anomaly);
            }
            // The comparison covered judged values, not only warm-up verdicts.
            assert!(flagged > 0, "{} flagged nothing", d.name);
            checked.push(d.name);
        }
        for name in [
            "calibrated",
            "ensemble",
            "ewma",
            "mad",
            "seasonal",
            "changepoint",
            "relative_entropy",
        ] {
            assert!(checked.contains(&name), "{checked:?}");
        }
    }
}
