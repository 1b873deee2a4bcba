//! Connectors against real servers, through the one compliance harness. Servers come
//! from `scripts/services start` (see `harness::server`).

mod harness;
#[cfg(feature = "mqtt")]
mod mqtt;
