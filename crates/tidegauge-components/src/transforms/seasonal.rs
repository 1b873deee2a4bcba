//! `seasonal` transform: a baseline per time-of-day (or day-of-week) slot.

use tidegauge_core::ConfigError;
use tidegauge_detect::{Seasonal, SeasonalParams};

use super::detector::detector_config;
use super::spec::{DetectorSpec, param_errors};

detector_config! {
    /// Periodic baseline: each sensor learns a mean and spread per slot of a cycle (by
    /// default the 96 quarter-hours of a day) and flags values far from their slot's
    /// baseline, so a daily peak is normal at noon and an anomaly at midnight.
    ///
    /// Slot of an event: `((ts + offset_ms) / slot_ms) mod slots`; for day-of-week by hour
    /// use `slot_ms = 3600000, slots = 168`. Adds `z`, `anomaly_score`, `is_anomaly`,
    /// `detector` ("seasonal") and `reason`. Needs `ts_field`. State per sensor: three
    /// numbers per slot.
    pub struct SeasonalConfig as "seasonal" {
        /// Length of a slot in milliseconds.
        #[schemars(range(min = 1))]
        pub slot_ms: i64 = 900_000,
        /// Slots in the cycle.
        #[schemars(range(min = 1, max = 100000))]
        pub slots: u32 = 96,
        /// Shift of the cycle, e.g. the local time zone's offset from UTC in ms.
        pub offset_ms: i64 = 0,
        /// Half-life of each slot's baseline, in that slot's readings.
        #[schemars(range(min = 0.0))]
        pub half_life_events: f64 = 20.0,
        /// |z| against the slot above which a value is an anomaly.
        #[schemars(range(min = 0.0))]
        pub threshold: f64 = 3.0,
        /// Readings a slot must learn before it judges.
        #[schemars(range(min = 2))]
        pub min_per_slot: u32 = 10,
    }
}

impl SeasonalConfig {
    fn params(&self) -> SeasonalParams {
        SeasonalParams {
            slot_ms: self.slot_ms,
            slots: self.slots,
            offset_ms: self.offset_ms,
            half_life_events: self.half_life_events,
            threshold: self.threshold,
            min_per_slot: self.min_per_slot,
        }
    }
}

impl DetectorSpec for SeasonalConfig {
    type State = Seasonal;

    /// 32 bytes a slot, every slot used.
    fn bytes_per_key(&self) -> u64 {
        32 * u64::from(self.slots) + std::mem::size_of::<Seasonal>() as u64
    }
    const NAME: &'static str = "seasonal";
    const STATISTIC: &'static str = "z";

    fn restore_state(&self, state: ciborium::Value) -> Result<Seasonal, String> {
        super::state::deserialize_state(state)
    }

    fn needs_time(&self) -> bool {
        true
    }

    fn check(&self) -> Vec<ConfigError> {
        param_errors(self.params().validate())
    }

    fn new_state(&self) -> Seasonal {
        Seasonal::new(self.params())
    }
}
