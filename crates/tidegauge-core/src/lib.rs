//! The tidegauge engine core.
//!
//! - [`batch`]: the unit that flows between components (an Arrow `RecordBatch` plus its
//!   acknowledgement finalizers);
//! - [`component`]: the traits component authors implement ([`SourceConfig`],
//!   [`TransformConfig`], [`SinkConfig`] and the runtime [`Source`], [`Transform`], [`Sink`]);
//! - [`registry`]: self-registration of components with `inventory`; [`kind`]: source,
//!   transform or sink;
//! - [`config`]: loading a pipeline file (environment interpolation, typed configs, errors
//!   with their place);
//! - [`topology`]: validate -> build -> run, with bounded channels on every edge;
//! - [`telemetry`]: typed internal events and per-component counters;
//! - [`checkpoint`]: consistent snapshots (aligned barriers) and acknowledged source
//!   positions, so a restart resumes without loss;
//! - [`disk_buffer`]: an optional, bounded, checksummed disk buffer in front of a sink;
//! - [`dead_letter`]: where records that cannot be processed go, with the reason;
//! - [`resilience`]: retries with backoff, jitter and a budget, and circuit breakers;
//! - [`live`]: a running pipeline that can be inspected, tuned and rewired (hot reload);
//! - [`control`]: requests to running transforms (tunable parameters);
//! - [`metrics`]: the Prometheus exposition of the telemetry counters;
//! - [`admin`]: settings of the admin API.
#![deny(missing_docs)]

pub mod ack;
pub mod admin;
pub mod batch;
pub mod checkpoint;
pub mod component;
pub mod config;
pub mod control;
pub mod dead_letter;
pub mod describe;
pub mod disk_buffer;
pub mod error;
pub mod kind;
pub mod live;
pub mod metrics;
pub mod params;
pub mod ranges;
pub mod redact;
pub mod registry;
pub mod resilience;
pub mod schema;
pub mod suggest;
pub mod telemetry;
pub mod topology;

pub use batch::Batch;
pub use component::{
    BuildContext, ComponentContext, Event, Fanout, Message, Output, Sink, SinkConfig, SinkInput,
    Source, SourceConfig, SourceContext, Transform, TransformConfig, TransformContext,
};
pub use error::{BuildError, ComponentError, ConfigError};
pub use kind::ComponentKind;
pub use registry::ComponentDescriptor;

/// A boxed, sendable future: what the object-safe runtime traits return.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Re-exports used by the registration macros.
#[doc(hidden)]
pub mod __private {
    pub use inventory;
}
