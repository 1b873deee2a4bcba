//! `zscore` transform: per-sensor rolling z-score.

use std::borrow::Cow;

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_schema::DataType;
use tidegauge_core::{ComponentError, ConfigError};
use tidegauge_detect::{ZScore, ZScoreParams};

use super::KeyInterner;
use super::keyed::{DetectorSpec, detector_config, param_errors};
use super::state::{decode_keyed, encode_keyed};

detector_config! {
    /// Per-sensor rolling z-score: flags a value more than `threshold` standard deviations
    /// from the mean of the same sensor's previous `window` values.
    ///
    /// Adds `z` (null while the sensor has fewer than `window` earlier values, or when they
    /// are all equal), `anomaly_score` (|z|/(|z|+threshold): 0.5 at the threshold),
    /// `is_anomaly`, `detector` ("zscore") and `reason`. State per sensor: the last `window`
    /// values (8 bytes each) and a running mean and spread, O(1) per event.
    pub struct ZScoreConfig as "zscore" {
        /// Number of previous values of the same sensor the current one is compared with.
        #[schemars(range(min = 2, max = 4294967295u64))]
        pub window: usize = 100,
        /// |z| above which a value is an anomaly.
        #[schemars(range(min = 0.0))]
        pub threshold: f64 = 3.0,
    }
}

impl ZScoreConfig {
    fn params(&self) -> ZScoreParams {
        ZScoreParams {
            window: self.window,
            threshold: self.threshold,
        }
    }
}

impl DetectorSpec for ZScoreConfig {
    type State = ZScore;
    const NAME: &'static str = "zscore";
    const STATISTIC: &'static str = "z";

    fn needs_time(&self) -> bool {
        false
    }

    fn check(&self) -> Vec<ConfigError> {
        param_errors(self.params().validate())
    }

    fn new_state(&self) -> ZScore {
        ZScore::new(self.params())
    }

    fn save_states(
        &self,
        keys: &KeyInterner,
        states: &[ZScore],
    ) -> Option<Result<Vec<u8>, ComponentError>> {
        Some(encode_keyed(keys, states))
    }

    fn load_states(&self, bytes: &[u8]) -> Result<(KeyInterner, Vec<ZScore>), ComponentError> {
        let (keys, states): (KeyInterner, Vec<ZScore>) = decode_keyed(bytes)?;
        if let Some(s) = states.iter().find(|s| s.params() != &self.params()) {
            return Err(ComponentError::new(format!(
                "the checkpoint was taken with window = {}, threshold = {}; the pipeline now \
                 says window = {}, threshold = {}: set them back or remove the checkpoint \
                 directory",
                s.params().window,
                s.params().threshold,
                self.window,
                self.threshold
            )));
        }
        Ok((keys, states))
    }
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
