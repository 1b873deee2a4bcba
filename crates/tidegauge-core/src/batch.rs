//! The unit that flows along every edge of a pipeline.

use arrow_array::RecordBatch;

use crate::ack::Finalizers;

/// A micro-batch of events: columnar data plus the acknowledgement tokens of the source
/// batches it came from.
#[derive(Clone, Debug)]
pub struct Batch {
    /// The events, one row each, with the schema declared for the edge.
    pub data: RecordBatch,
    /// Released once the data has been delivered by every sink that received it.
    pub finalizers: Finalizers,
}

impl Batch {
    /// A batch that nobody waits on.
    pub fn new(data: RecordBatch) -> Self {
        Batch {
            data,
            finalizers: Finalizers::none(),
        }
    }

    /// A batch carrying `finalizers`.
    pub fn with_finalizers(data: RecordBatch, finalizers: Finalizers) -> Self {
        Batch { data, finalizers }
    }

    /// Number of events.
    pub fn num_rows(&self) -> usize {
        self.data.num_rows()
    }
}
