//! tidegauge's components: sources, transforms and sinks, one file each, each registering
//! itself with the engine. Also the codecs they share and the expression language of
//! `filter`.

pub mod codec;
pub mod connectors;
pub mod expr;
pub mod partitions;
pub mod secret;
pub(crate) mod settings;
pub mod sinks;
pub mod sources;
pub mod telemetry;
#[cfg(any(feature = "mqtt", feature = "http-tls"))]
pub(crate) mod tls;
pub mod transforms;

/// Names of every component type this crate registers. Calling it also guarantees the
/// crate is linked into the final binary, so its registrations are seen.
pub fn registered_types() -> Vec<&'static str> {
    tidegauge_core::registry::all()
        .into_iter()
        .map(|d| d.type_name)
        .collect()
}
