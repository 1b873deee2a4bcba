//! `ensemble` transform: several detectors per sensor, their verdicts combined.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tidegauge_core::ConfigError;
use tidegauge_detect::{Combine, Detector, Verdict};

use super::baseline::BaselineConfig;
use super::changepoint::ChangePointConfig;
use super::ewma::EwmaConfig;
use super::flatline::FlatlineConfig;
use super::keyed::{DetectorSpec, detector_config, param_errors};
use super::mad::MadConfig;
use super::rate_of_change::RateOfChangeConfig;
use super::seasonal::SeasonalConfig;
use super::threshold::ThresholdConfig;
use super::zscore::ZScoreConfig;

/// One member of an ensemble: a detector and its settings, as in its own transform
/// (without `key_field`, `value_field`, `ts_field` or `workers`, which the ensemble sets).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Member {
    /// See `tidegauge describe zscore`.
    Zscore(ZScoreConfig),
    /// See `tidegauge describe ewma`.
    Ewma(EwmaConfig),
    /// See `tidegauge describe mad`.
    Mad(MadConfig),
    /// See `tidegauge describe threshold`.
    Threshold(ThresholdConfig),
    /// See `tidegauge describe rate_of_change`.
    RateOfChange(RateOfChangeConfig),
    /// See `tidegauge describe flatline`.
    Flatline(FlatlineConfig),
    /// See `tidegauge describe changepoint`.
    Changepoint(ChangePointConfig),
    /// See `tidegauge describe seasonal`.
    Seasonal(SeasonalConfig),
    /// See `tidegauge describe baseline`.
    Baseline(BaselineConfig),
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

detector_config! {
    /// Several detectors on each sensor, combined into one verdict: the highest score, the
    /// mean score, or a vote of at least `min_votes` members.
    ///
    /// Members still warming up do not count. Adds `combined` (the combined score, or the
    /// number of votes), `anomaly_score`, `is_anomaly`, `detector` ("ensemble") and a
    /// `reason` naming what the members said. Example:
    /// `members = [{ type = "zscore", window = 100 }, { type = "mad", window = 50 }]`.
    pub struct EnsembleConfig as "ensemble" {
        /// The detectors, each a table with `type` and its settings.
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

/// Any single detector's state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AnyDetector {
    /// z-score.
    Zscore(tidegauge_detect::ZScore),
    /// EWMA.
    Ewma(tidegauge_detect::Ewma),
    /// MAD.
    Mad(tidegauge_detect::Mad),
    /// Threshold.
    Threshold(tidegauge_detect::Threshold),
    /// Rate of change.
    RateOfChange(tidegauge_detect::Rate),
    /// Flatline.
    Flatline(tidegauge_detect::Flatline),
    /// Change point.
    Changepoint(tidegauge_detect::ChangePoint),
    /// Seasonal.
    Seasonal(tidegauge_detect::Seasonal),
    /// Held reference.
    Baseline(tidegauge_detect::Baseline),
}

macro_rules! each_detector {
    ($value:expr, $d:ident => $body:expr) => {
        match $value {
            AnyDetector::Zscore($d) => $body,
            AnyDetector::Ewma($d) => $body,
            AnyDetector::Mad($d) => $body,
            AnyDetector::Threshold($d) => $body,
            AnyDetector::RateOfChange($d) => $body,
            AnyDetector::Flatline($d) => $body,
            AnyDetector::Changepoint($d) => $body,
            AnyDetector::Seasonal($d) => $body,
            AnyDetector::Baseline($d) => $body,
        }
    };
}

impl Detector for AnyDetector {
    fn observe(&mut self, ts_ms: i64, value: f64) -> Verdict {
        each_detector!(self, d => d.observe(ts_ms, value))
    }

    fn explain(&self, verdict: &Verdict) -> String {
        each_detector!(self, d => d.explain(verdict))
    }
}

impl AnyDetector {
    /// The detector's name.
    pub fn name(&self) -> &'static str {
        match self {
            AnyDetector::Zscore(_) => ZScoreConfig::NAME,
            AnyDetector::Ewma(_) => EwmaConfig::NAME,
            AnyDetector::Mad(_) => MadConfig::NAME,
            AnyDetector::Threshold(_) => ThresholdConfig::NAME,
            AnyDetector::RateOfChange(_) => RateOfChangeConfig::NAME,
            AnyDetector::Flatline(_) => FlatlineConfig::NAME,
            AnyDetector::Changepoint(_) => ChangePointConfig::NAME,
            AnyDetector::Seasonal(_) => SeasonalConfig::NAME,
            AnyDetector::Baseline(_) => BaselineConfig::NAME,
        }
    }
}

impl Member {
    fn sets_common(&self) -> bool {
        match self {
            Member::Zscore(c) => c.sets_common(),
            Member::Ewma(c) => c.sets_common(),
            Member::Mad(c) => c.sets_common(),
            Member::Threshold(c) => c.sets_common(),
            Member::RateOfChange(c) => c.sets_common(),
            Member::Flatline(c) => c.sets_common(),
            Member::Changepoint(c) => c.sets_common(),
            Member::Seasonal(c) => c.sets_common(),
            Member::Baseline(c) => c.sets_common(),
        }
    }

    fn check(&self) -> Vec<ConfigError> {
        match self {
            Member::Zscore(c) => c.check(),
            Member::Ewma(c) => c.check(),
            Member::Mad(c) => c.check(),
            Member::Threshold(c) => c.check(),
            Member::RateOfChange(c) => c.check(),
            Member::Flatline(c) => c.check(),
            Member::Changepoint(c) => c.check(),
            Member::Seasonal(c) => c.check(),
            Member::Baseline(c) => c.check(),
        }
    }

    fn needs_time(&self) -> bool {
        match self {
            Member::Zscore(c) => c.needs_time(),
            Member::Ewma(c) => c.needs_time(),
            Member::Mad(c) => c.needs_time(),
            Member::Threshold(c) => c.needs_time(),
            Member::RateOfChange(c) => c.needs_time(),
            Member::Flatline(c) => c.needs_time(),
            Member::Changepoint(c) => c.needs_time(),
            Member::Seasonal(c) => c.needs_time(),
            Member::Baseline(c) => c.needs_time(),
        }
    }

    /// A state with no history.
    pub fn new_state(&self) -> AnyDetector {
        match self {
            Member::Zscore(c) => AnyDetector::Zscore(c.new_state()),
            Member::Ewma(c) => AnyDetector::Ewma(c.new_state()),
            Member::Mad(c) => AnyDetector::Mad(c.new_state()),
            Member::Threshold(c) => AnyDetector::Threshold(c.new_state()),
            Member::RateOfChange(c) => AnyDetector::RateOfChange(c.new_state()),
            Member::Flatline(c) => AnyDetector::Flatline(c.new_state()),
            Member::Changepoint(c) => AnyDetector::Changepoint(c.new_state()),
            Member::Seasonal(c) => AnyDetector::Seasonal(c.new_state()),
            Member::Baseline(c) => AnyDetector::Baseline(c.new_state()),
        }
    }
}

impl EnsembleConfig {
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
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnsembleState {
    members: Vec<AnyDetector>,
    #[serde(skip)]
    last: Vec<Verdict>,
    combine: Combine,
}

impl Detector for EnsembleState {
    fn observe(&mut self, ts_ms: i64, value: f64) -> Verdict {
        self.last.clear();
        for m in &mut self.members {
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
            .map(|(m, v)| format!("{}: {}", m.name(), m.explain(v)))
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
    const NAME: &'static str = "ensemble";
    const STATISTIC: &'static str = "combined";

    fn needs_time(&self) -> bool {
        self.members.iter().any(Member::needs_time)
    }

    fn check(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if self.members.is_empty() {
            errors.push(ConfigError::new(
                "members",
                "list at least one detector, e.g. `members = [{ type = \"zscore\" }]`",
            ));
        }
        for (i, m) in self.members.iter().enumerate() {
            if m.sets_common() {
                errors.push(ConfigError::new(
                    format!("members[{i}]"),
                    "key_field, value_field, ts_field and workers belong to the ensemble, not to its members",
                ));
            }
            errors.extend(
                m.check()
                    .into_iter()
                    .map(|e| e.prefixed(&format!("members[{i}]"))),
            );
        }
        if self.combine == CombineMode::Vote {
            errors.extend(param_errors(self.combine().validate()));
            if self.min_votes as usize > self.members.len() {
                errors.push(ConfigError::new(
                    "min_votes",
                    format!("cannot be more than the {} member(s)", self.members.len()),
                ));
            }
        }
        errors
    }

    fn new_state(&self) -> EnsembleState {
        EnsembleState {
            members: self.members.iter().map(Member::new_state).collect(),
            last: Vec::with_capacity(self.members.len()),
            combine: self.combine(),
        }
    }
}
