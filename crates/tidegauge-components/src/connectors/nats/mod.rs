//! NATS JetStream: source and sink.

pub mod sink;
pub mod source;
