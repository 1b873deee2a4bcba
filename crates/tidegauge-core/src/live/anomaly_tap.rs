//! Picks the latest flagged rows out of a detector's output, for live views.

use std::time::SystemTime;

use arrow_schema::SchemaRef;

use crate::telemetry::ComponentTelemetry;

/// Picks the latest flagged rows out of a detector's output, for live views. Only for
/// transforms that add `is_anomaly` (a filter passing it on is no detector).
pub(super) struct AnomalyTap {
    flag: usize,
    key: Option<usize>,
    reason: Option<usize>,
}

impl AnomalyTap {
    pub(super) fn new(output: &SchemaRef, input: Option<&SchemaRef>) -> Option<AnomalyTap> {
        use arrow_schema::DataType;
        if input.is_some_and(|i| i.index_of("is_anomaly").is_ok()) {
            return None;
        }
        let typed = |name: &str, ty: DataType| {
            output
                .index_of(name)
                .ok()
                .filter(|&i| output.field(i).data_type() == &ty)
        };
        Some(AnomalyTap {
            flag: typed("is_anomaly", DataType::Boolean)?,
            key: typed("sensor_id", DataType::Utf8),
            reason: typed("reason", DataType::Utf8),
        })
    }

    pub(super) fn scan(&self, batch: &arrow_array::RecordBatch, telemetry: &ComponentTelemetry) {
        use arrow_array::Array;
        use arrow_array::cast::AsArray;
        let Some(flags) = batch.column(self.flag).as_boolean_opt() else {
            return;
        };
        if flags.true_count() == 0 {
            return;
        }
        let rows: Vec<usize> = flags.values().set_indices().collect();
        let from = rows
            .len()
            .saturating_sub(crate::telemetry::RECENT_ANOMALIES);
        let time_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let text = |col: Option<usize>, row: usize| {
            let c = batch.column(col?).as_string_opt::<i32>()?;
            (!c.is_null(row)).then(|| c.value(row).to_string())
        };
        let records = rows[from..]
            .iter()
            .filter(|&&r| flags.is_valid(r))
            .map(|&r| crate::telemetry::AnomalyRecord {
                time_ms,
                key: text(self.key, r),
                reason: text(self.reason, r),
            })
            .collect();
        telemetry.emit(crate::telemetry::AnomaliesSeen { records });
    }
}
