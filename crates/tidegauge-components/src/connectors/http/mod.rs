//! HTTP: endpoints polled as a source (`http_poll`) and webhooks as a sink (`http`).

#[cfg(feature = "http")]
pub mod sink;
pub mod source;
