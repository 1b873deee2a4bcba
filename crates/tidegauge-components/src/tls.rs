//! The one TLS crypto provider of the build.
//!
//! Every TLS client (MQTT, NATS, https for `http_poll` and the `http` sink) uses rustls
//! with the `ring` provider. Libraries that look the provider up at run time (reqwest
//! built without one of its own, rumqttc) find it installed as the process default.

/// Installs `ring` as the process-wide rustls provider unless one is installed already.
/// Call before building a TLS client; cheap after the first call.
pub(crate) fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may have installed one in between: either way one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
