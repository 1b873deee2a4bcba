//! `ensemble` transform: several detectors per sensor, their verdicts combined.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use tidegauge_core::ConfigError;
use tidegauge_detect::{Combine, Detector, Verdict};

use super::detector::{self, BoxedDetector, DetectorFactory, detector_config};
use super::spec::{DetectorSpec, param_errors};

/// One member of an ensemble: a registered detector and its settings, as in its own
/// transform (without `key_field`, `value_field`, `ts_field` or `workers`, which the
/// ensemble sets). Any detector declared with `detector_config!` can be a member.
#[derive(Debug)]
pub struct Member(Box<dyn DetectorFactory>);

impl Member {
    /// The member's detector config.
    pub fn factory(&self) -> &dyn DetectorFactory {
        &*self.0
    }
}

impl Clone for Member {
    fn clone(&self) -> Self {
        Member(self.0.clone_box())
    }
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut settings = serde_json::Map::<String, serde_json::Value>::deserialize(de)?;
        let known = || {
            detector::all()
                .iter()
                .map(|d| d.name)
                .filter(|n| *n != EnsembleConfig::NAME)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let name = match settings.remove("type") {
            Some(serde_json::Value::String(name)) => name,
            Some(_) => return Err(D::Error::custom("`type` must be a string")),
            None => {
                return Err(D::Error::custom(format!(
                    "missing `type`: one of {}",
                    known()
                )));
            }
        };
        if name == EnsembleConfig::NAME {
            return Err(D::Error::custom(
                "an ensemble cannot be a member of an ensemble",
            ));
        }
        let d = detector::find(&name).ok_or_else(|| {
            D::Error::custom(format!("unknown detector `{name}` (known: {})", known()))
        })?;
        d.parse(serde_json::Value::Object(settings))
            .map(Member)
            .map_err(D::Error::custom)
    }
}

impl Serialize for Member {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut settings = match self.0.settings() {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        settings.insert("type".into(), self.0.name().into());
        settings.retain(|_, v| !v.is_null());
        settings.serialize(ser)
    }
}

impl JsonSchema for Member {
    fn schema_name() -> Cow<'static, str> {
        "Member".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let names: Vec<&str> = detector::all()
            .iter()
            .map(|d| d.name)
            .filter(|n| *n != EnsembleConfig::NAME)
            .collect();
        json_schema!({
            "type": "object",
            "description": "A detector: `type` and its settings (see `tidegauge describe <type>`).",
            "properties": { "type": { "enum": names } },
            "required": ["type"],
        })
    }
}

/// How member verdicts become one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CombineMode {
    /// The highest member score.
    #[default]
    Max,
    /// The mean of the member scores.
    Mean,
    /// An anomaly when at least `min_votes` members say so.
    Vote,
}

/// The members of an ensemble that lists none: one detector per kind of anomaly, each with
/// a score of 0.5 at its own one-in-a-thousand false-alarm rate learnt per sensor (see
/// `docs/detectors.md` for how they were chosen).
pub fn default_members() -> &'static [Member] {
    static MEMBERS: std::sync::OnceLock<Vec<Member>> = std::sync::OnceLock::new();
    MEMBERS.get_or_init(|| {
        let set = serde_json::json!([
            { "type": "baseline" },
            { "type": "relative_entropy" },
            { "type": "calibrated", "detector": { "type": "mad" }, "min_events": 300 },
        ]);
        // Registered detectors with valid settings, checked by `default_members_are_valid`.
        serde_json::from_value(set).expect("the default members are valid")
    })
}

detector_config! {
    /// Several detectors on each sensor, combined into one verdict: the highest score, the
    /// mean score, or a vote of at least `min_votes` members.
    ///
    /// Without `members`, a default set that needs no tuning per sensor, combined by the
    /// highest score: `baseline` (sustained shifts against the sensor's normal level),
    /// `relative_entropy` (changes of the recent distribution: shifts, spread, stuck
    /// values) and `calibrated` `mad` with `min_events = 300` (spikes), each flagging about
    /// one normal value in a thousand on its own; all three judge once they have learnt
    /// 400 values of a sensor. Chosen on synthetic streams (see `docs/detectors.md`).
    ///
    /// Members still warming up do not count. Adds `combined` (the combined score, or the
    /// number of votes), `anomaly_score`, `is_anomaly`, `detector` ("ensemble") and a
    /// `reason` naming what the members said. Example:
    /// `members = [{ type = "zscore", window = 100 }, { type = "mad", window = 50 }]`.
    pub struct EnsembleConfig as "ensemble" {
        /// The detectors, each a table with `type` and its settings; none: the default set.
        #[schemars(example = serde_json::json!([
            { "type": "zscore", "window": 100 },
            { "type": "mad", "window": 50 }
        ]))]
        pub members: Vec<Member> = Vec::new(),
        /// How their verdicts are combined.
        pub combine: CombineMode = CombineMode::Max,
        /// Votes needed for an anomaly (`combine = "vote"`).
        #[schemars(range(min = 1))]
        pub min_votes: u32 = 2,
    }
}

impl EnsembleConfig {
    /// The members in force: those listed, or the default set.
    pub fn members(&self) -> &[Member] {
        if self.members.is_empty() {
            default_members()
        } else {
            &self.members
        }
    }

    fn combine(&self) -> Combine {
        match self.combine {
            CombineMode::Max => Combine::Max,
            CombineMode::Mean => Combine::Mean,
            CombineMode::Vote => Combine::Vote {
                min_votes: self.min_votes,
            },
        }
    }
}

/// Per-sensor state of an ensemble: the members' states and their last verdicts.
/// Checkpointed without the verdicts (they only serve `explain` after a verdict).
#[derive(Clone, Debug, Serialize)]
pub struct EnsembleState {
    members: Vec<(&'static str, BoxedDetector)>,
    #[serde(skip)]
    last: Vec<Verdict>,
    combine: Combine,
}

/// An [`EnsembleState`] as read from a checkpoint, before its members are restored.
#[derive(Deserialize)]
struct SavedEnsemble {
    members: Vec<(String, ciborium::Value)>,
    combine: Combine,
}

impl Detector for EnsembleState {
    fn observe(&mut self, ts_ms: i64, value: f64) -> Verdict {
        self.last.clear();
        for (_, m) in &mut self.members {
            self.last.push(m.observe(ts_ms, value));
        }
        self.combine.combine(&self.last)
    }

    fn explain(&self, verdict: &Verdict) -> String {
        let flagged: Vec<String> = self
            .members
            .iter()
            .zip(&self.last)
            .filter(|(_, v)| v.is_anomaly)
            .map(|((name, m), v)| format!("{name}: {}", m.explain(v)))
            .collect();
        let summary = self.combine.explain(&self.last, verdict);
        if flagged.is_empty() {
            summary
        } else {
            format!("{summary}; {}", flagged.join("; "))
        }
    }
}

impl DetectorSpec for EnsembleConfig {
    type State = EnsembleState;

    /// Every member's state, and a verdict per member.
    fn bytes_per_key(&self) -> u64 {
        self.members()
            .iter()
            .map(|m| m.0.bytes_per_key() + 64)
            .sum::<u64>()
            + std::mem::size_of::<EnsembleState>() as u64
    }
    const NAME: &'static str = "ensemble";
    const STATISTIC: &'static str = "combined";

    /// Each member's state restored by its own factory, in order.
    fn restore_state(&self, state: ciborium::Value) -> Result<EnsembleState, String> {
        let saved: SavedEnsemble = super::state::deserialize_state(state)?;
        if saved.members.len() != self.members().len() {
            return Err(format!(
                "{} members saved, {} configured",
                saved.members.len(),
                self.members().len()
            ));
        }
        let members = self
            .members()
            .iter()
            .zip(saved.members)
            .map(|(m, (name, s))| {
                if name != m.0.name() {
                    return Err(format!("member `{name}` saved where `{}` is", m.0.name()));
                }
                Ok((m.0.name(), m.0.restore_state(s)?))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(EnsembleState {
            last: Vec::with_capacity(members.len()),
            members,
            combine: saved.combine,
        })
    }

    fn needs_time(&self) -> bool {
        self.members().iter().any(|m| m.0.needs_time())
    }

    fn check(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        for (i, m) in self.members().iter().enumerate() {
            if m.0.sets_common() {
                errors.push(ConfigError::new(
                    format!("members[{i}]"),
                    "key_field, value_field, ts_field, workers, max_keys and key_idle_ms belong to the ensemble, not to its members",
                ));
            }
            errors.extend(
                m.0.check()
                    .into_iter()
                    .map(|e| e.prefixed(&format!("members[{i}]"))),
            );
        }
        if self.combine == CombineMode::Vote {
            errors.extend(param_errors(self.combine().validate()));
            if self.min_votes as usize > self.members().len() {
                errors.push(ConfigError::new(
                    "min_votes",
                    format!("cannot be more than the {} member(s)", self.members().len()),
                ));
            }
        }
        errors
    }

    fn new_state(&self) -> EnsembleState {
        EnsembleState {
            members: self
                .members()
                .iter()
                .map(|m| (m.0.name(), m.0.new_state()))
                .collect(),
            last: Vec::with_capacity(self.members().len()),
            combine: self.combine(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_members_are_valid() {
        let config = EnsembleConfig::default();
        let names: Vec<&str> = config.members().iter().map(|m| m.0.name()).collect();
        assert_eq!(names, ["baseline", "relative_entropy", "calibrated"]);
        assert!(
            DetectorSpec::check(&config).is_empty(),
            "{:?}",
            DetectorSpec::check(&config)
        );
        // Listed members replace the default set.
        let listed: EnsembleConfig =
            serde_json::from_value(serde_json::json!({ "members": [{ "type": "zscore" }] }))
                .unwrap();
        assert_eq!(listed.members().len(), 1);
    }

    /// The default set judges once 400 values are learnt and finds a spike, a shift and a
    /// stuck stretch on a sensor it was never tuned for; its state survives a checkpoint.
    #[test]
    fn default_members_find_the_usual_anomalies() {
        let config = EnsembleConfig::default();
        let mut state = DetectorSpec::new_state(&config);
        let noise = |i: i64| ((i * 7919) % 101) as f64 / 100.0 - 0.5 + ((i % 13) as f64) / 26.0;
        let mut first_judged = None;
        for i in 0..1000 {
            let v = Detector::observe(&mut state, i, 1e4 + 3.0 * noise(i));
            if v.statistic.is_some() && first_judged.is_none() {
                first_judged = Some(i);
            }
        }
        assert_eq!(first_judged, Some(400));
        let mut bytes = Vec::new();
        ciborium::into_writer(&state, &mut bytes).unwrap();
        let mut restored =
            DetectorSpec::restore_state(&config, ciborium::from_reader(&bytes[..]).unwrap())
                .unwrap();
        let value = |i: i64| match i {
            1100 => 1e4 + 60.0,
            1300..1500 => 1e4 + 12.0 + 3.0 * noise(i),
            1700..1900 => 1e4 + 0.25,
            _ => 1e4 + 3.0 * noise(i),
        };
        let mut flags = Vec::new();
        for i in 1000..2000 {
            let a = Detector::observe(&mut state, i, value(i));
            let b = Detector::observe(&mut restored, i, value(i));
            assert_eq!(a, b, "at {i}: {:?} vs {:?}", state.last, restored.last);
            flags.push(a.is_anomaly);
            if a.is_anomaly {
                assert!(!state.explain(&a).is_empty());
            }
        }
        let any = |from: usize, to: usize| flags[from - 1000..to - 1000].iter().any(|&f| f);
        assert!(any(1100, 1101), "spike");
        assert!(any(1300, 1350), "shift");
        assert!(any(1700, 1800), "stuck");
    }
}
