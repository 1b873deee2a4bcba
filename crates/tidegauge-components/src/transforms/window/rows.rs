//! The rows a window emits, built column by column.

use super::*;

/// Rows to emit, built column by column.
pub(super) struct Rows {
    pub(super) keys: StringBuilder,
    pub(super) start: Int64Builder,
    pub(super) end: Int64Builder,
    pub(super) values: Vec<Float64Builder>,
    pub(super) count: Vec<Option<Int64Builder>>,
    pub(super) late: BooleanBuilder,
    pub(super) finalizers: Finalizers,
    pub(super) n: usize,
}

impl Rows {
    pub(super) fn new(aggregates: &[Aggregate]) -> Self {
        Rows {
            keys: StringBuilder::new(),
            start: Int64Builder::new(),
            end: Int64Builder::new(),
            values: aggregates.iter().map(|_| Float64Builder::new()).collect(),
            count: aggregates
                .iter()
                .map(|a| matches!(a, Aggregate::Count).then(Int64Builder::new))
                .collect(),
            late: BooleanBuilder::new(),
            finalizers: Finalizers::none(),
            n: 0,
        }
    }

    pub(super) fn push(&mut self, key: &str, start: i64, end: i64, open: Open, late: bool) {
        self.keys.append_value(key);
        self.start.append_value(start);
        self.end.append_value(end);
        for (i, acc) in open.accumulators.iter().enumerate() {
            let v = acc.finish();
            match &mut self.count[i] {
                Some(c) => c.append_value(v.unwrap_or(0.0) as i64),
                None => self.values[i].append_option(v),
            }
        }
        self.late.append_value(late);
        self.finalizers.merge(open.finalizers);
        self.n += 1;
    }

    pub(super) fn finish(
        mut self,
        output: &SchemaRef,
    ) -> Result<Option<(RecordBatch, Finalizers)>, ComponentError> {
        if self.n == 0 {
            return Ok(None);
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.keys.finish()),
            Arc::new(self.start.finish()),
            Arc::new(self.end.finish()),
        ];
        for (v, c) in self.values.iter_mut().zip(self.count.iter_mut()) {
            columns.push(match c {
                Some(c) => Arc::new(c.finish()),
                None => Arc::new(v.finish()),
            });
        }
        columns.push(Arc::new(self.late.finish()));
        Ok(Some((
            RecordBatch::try_new(output.clone(), columns)?,
            self.finalizers,
        )))
    }
}
