//! Connectors against real servers, through the one compliance harness. Servers come
//! from `scripts/services start` (see `harness::server`).

mod coverage;
mod decoders;
mod files;
mod harness;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "kafka")]
mod kafka;
#[cfg(feature = "mqtt")]
mod mqtt;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "parquet")]
mod parquet;
#[cfg(feature = "postgres")]
mod postgres;
