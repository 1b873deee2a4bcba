//! Connectors to other systems, one folder per system: its source and sink side by side
//! (`kafka/source.rs`, `kafka/sink.rs`) with what they share (connection settings,
//! credentials, TLS) in the folder's `mod.rs`. What every message-broker source or sink
//! shares is here too: payload decoding and acknowledgement tracking ([`inbound`]),
//! settling delivered batches (`outbound`) and topic templates ([`template`]).

pub mod http;
#[cfg(any(feature = "mqtt", feature = "kafka", feature = "nats"))]
pub mod inbound;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(any(feature = "kafka", feature = "nats"))]
pub(crate) mod outbound;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(any(
    feature = "mqtt",
    feature = "kafka",
    feature = "nats",
    feature = "http"
))]
pub mod template;
