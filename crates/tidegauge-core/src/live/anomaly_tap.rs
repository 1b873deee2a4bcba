//! Picks the latest flagged rows out of a detector's output, for live views.

use std::time::SystemTime;

use arrow_schema::{DataType, SchemaRef};

use crate::component::VerdictColumns;

use crate::telemetry::ComponentTelemetry;

/// Picks the latest flagged rows out of a detector's output, for live views, from the
/// verdict columns the detector declared.
pub(super) struct AnomalyTap {
    flag: usize,
    key: Option<usize>,
    reason: Option<usize>,
}

/// The index of column `name` of `output` if it has type `ty`.
pub(super) fn typed_column(output: &SchemaRef, name: Option<&str>, ty: &DataType) -> Option<usize> {
    output
        .index_of(name?)
        .ok()
        .filter(|&i| output.field(i).data_type() == ty)
}

impl AnomalyTap {
    /// `None` when the declared flag column is not a Boolean column of `output`.
    pub(super) fn new(output: &SchemaRef, columns: &VerdictColumns) -> Option<AnomalyTap> {
        Some(AnomalyTap {
            flag: typed_column(output, Some(&columns.flag), &DataType::Boolean)?,
            key: typed_column(output, columns.key.as_deref(), &DataType::Utf8),
            reason: typed_column(output, columns.reason.as_deref(), &DataType::Utf8),
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
