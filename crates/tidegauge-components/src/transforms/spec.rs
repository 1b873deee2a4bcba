//! What a per-sensor detector declares to the keyed stage that runs it: the settings
//! every detector has ([`Common`]), the [`DetectorSpec`] trait, and the checks of
//! parameters and key limits that every detector and keyed transform shares. The
//! machinery that runs a spec (state per key, sharding) is in [`keyed`](super::keyed).

use tidegauge_core::{ComponentError, ConfigError};
use tidegauge_detect::{Detector, ParamError};

use super::KeyInterner;
use super::key_table::TABLE_BYTES_PER_KEY;

/// Largest `max_keys` accepted.
pub const MAX_KEYS_LIMIT: usize = 100_000_000;

/// Settings every detector has (resolved defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Common {
    /// Field naming the sensor.
    pub key_field: String,
    /// Field holding the reading.
    pub value_field: String,
    /// Field holding the event time (epoch ms).
    pub ts_field: String,
    /// Worker threads (1 = process inline).
    pub workers: usize,
    /// Most keys holding state at once.
    pub max_keys: usize,
    /// How long a key must have been silent before its state may be dropped to make
    /// room for a new key.
    pub key_idle_ms: u64,
}

/// Default cap on the keys (sensors) a detector holds state for.
pub const DEFAULT_MAX_KEYS: usize = 100_000;
/// Default silence after which a key's state may be dropped when the cap is reached.
pub const DEFAULT_KEY_IDLE_MS: u64 = 3_600_000;
/// Most memory a detector's per-key state may need at its cap: `max_keys` times the
/// worst-case bytes per key of its parameters (a full window, every slot used).
pub const MAX_STATE_BYTES: u64 = 4 << 30;

impl Common {
    /// From the optional settings of a config, with the documented defaults.
    pub fn resolve(
        key_field: &Option<String>,
        value_field: &Option<String>,
        ts_field: &Option<String>,
        workers: Option<usize>,
        max_keys: Option<usize>,
        key_idle_ms: Option<u64>,
    ) -> Self {
        Common {
            max_keys: max_keys.unwrap_or(DEFAULT_MAX_KEYS),
            key_idle_ms: key_idle_ms.unwrap_or(DEFAULT_KEY_IDLE_MS),
            key_field: key_field.clone().unwrap_or_else(|| "sensor_id".into()),
            value_field: value_field.clone().unwrap_or_else(|| "value".into()),
            ts_field: ts_field.clone().unwrap_or_else(|| "ts".into()),
            workers: match workers {
                Some(0) => std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1),
                Some(n) => n,
                None => 1,
            },
        }
    }
}

/// A detector as configured in a pipeline: how to make a fresh state for a new key.
///
/// Parameters named in [`DetectorSpec::TUNABLE`] can be changed while the pipeline runs
/// (admin API, reload): the config is re-read with the new value, checked like the
/// pipeline file, and every key's state is brought in line by
/// [`DetectorSpec::retune_state`] before the next batch.
pub trait DetectorSpec:
    serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static
{
    /// Per-key state; it serializes for checkpoints.
    type State: Detector + serde::Serialize;
    /// Value of the `detector` column.
    const NAME: &'static str;
    /// Name of the column holding the detector's statistic.
    const STATISTIC: &'static str;
    /// Whether verdicts depend on event time (then `ts_field` is required).
    fn needs_time(&self) -> bool;
    /// Checks the detector's own parameters; paths are setting names.
    fn check(&self) -> Vec<ConfigError>;
    /// A state with no history.
    fn new_state(&self) -> Self::State;
    /// The most memory one key's state can take with these parameters, in bytes (its
    /// window full, every slot used): with `max_keys`, what bounds the stage's memory.
    /// The default is the state's own size, right for states without heap data.
    fn bytes_per_key(&self) -> u64 {
        std::mem::size_of::<Self::State>() as u64
    }
    /// Settings that may change while running.
    const TUNABLE: &'static [&'static str] = &[];
    /// Brings a key's state in line with this spec's parameters (after a change of a
    /// tunable one), keeping its history where it can.
    fn retune_state(&self, _state: &mut Self::State) {}
    /// A state from its serialized form in a checkpoint (usually
    /// [`deserialize_state`](super::state::deserialize_state)).
    fn restore_state(&self, state: ciborium::Value) -> Result<Self::State, String>;
    /// Encodes the states of a shard's keys for a checkpoint. The default writes them with
    /// this detector's settings ([`save_with_settings`](super::state::save_with_settings)).
    fn save_states(
        &self,
        keys: &KeyInterner,
        states: &[Self::State],
    ) -> Option<Result<Vec<u8>, ComponentError>> {
        Some(super::state::save_with_settings(self, keys, states))
    }
    /// Decodes what [`DetectorSpec::save_states`] wrote. The default restores the states
    /// when they were saved with the same settings and otherwise starts every sensor cold,
    /// with a warning ([`load_with_settings`](super::state::load_with_settings)).
    fn load_states(&self, bytes: &[u8]) -> Result<(KeyInterner, Vec<Self::State>), ComponentError> {
        super::state::load_with_settings(self, bytes)
    }
}

/// `ParamError`s of the detection library as config errors at their setting.
pub fn param_errors(result: Result<(), Vec<ParamError>>) -> Vec<ConfigError> {
    match result {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .into_iter()
            .map(|e| ConfigError::new(e.field, e.message))
            .collect(),
    }
}

/// [`param_errors`], with the library's name `from` of one parameter shown as the setting
/// `to` that feeds it (the library's `half_life` is `half_life_events` in a config).
pub fn param_errors_renamed(
    result: Result<(), Vec<ParamError>>,
    from: &str,
    to: &str,
) -> Vec<ConfigError> {
    let mut errors = param_errors(result);
    for e in errors.iter_mut().filter(|e| e.path == from) {
        e.path = to.into();
    }
    errors
}

/// Checks `max_keys` and `key_idle_ms` of a keyed stage whose state per key can reach
/// `bytes_per_key`: `max_keys` of them (with the key table's own bytes) must fit in
/// [`MAX_STATE_BYTES`]; the error says how far to lower `max_keys`.
pub fn check_key_limits(max_keys: usize, key_idle_ms: u64, bytes_per_key: u64) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    if !(1..=MAX_KEYS_LIMIT).contains(&max_keys) {
        errors.push(ConfigError::new(
            "max_keys",
            format!("expected an integer from 1 to {MAX_KEYS_LIMIT}"),
        ));
    }
    if key_idle_ms == 0 {
        errors.push(ConfigError::new(
            "key_idle_ms",
            "expected a positive integer",
        ));
    }
    let per_key = bytes_per_key + TABLE_BYTES_PER_KEY + 64;
    let total = per_key as u128 * max_keys as u128;
    if errors.is_empty() && total > MAX_STATE_BYTES as u128 {
        errors.push(ConfigError::new(
            "max_keys",
            format!(
                "{max_keys} keys × {per_key} bytes per key (the state these parameters can grow \
                 to) is {:.1} GiB, more than the {} GiB a stage may hold: lower max_keys (to {} \
                 at most) or the parameters that size the state (window, slots)",
                total as f64 / (1u64 << 30) as f64,
                MAX_STATE_BYTES >> 30,
                MAX_STATE_BYTES / per_key
            ),
        ));
    }
    errors
}
