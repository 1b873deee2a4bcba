//! MQTT: a source and a sink, and what they share: the connection settings (appended to
//! both configs by [`mqtt_connection!`]), their checks, client options, reconnection
//! through the shared retry layer, and errors described without credentials.

pub mod sink;
pub mod source;

use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{Event, EventLoop, Incoming, MqttOptions};
use schemars::JsonSchema;
use serde::Deserialize;
use tidegauge_core::resilience::{Resilience, RetryError, RetryPolicy};
use tidegauge_core::{BuildError, ConfigError};

use crate::secret::Secret;

/// TLS to the broker.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttTls {
    /// PEM file with the certificate authorities that sign the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM client certificate, for brokers that require client authentication.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
}

/// Part of [`config!`](crate::settings::config): the broker connection (`host`, `port`,
/// credentials, TLS, keep-alive, packet size, reconnection). Adds `connection()`, the
/// settings as a [`Connection`].
macro_rules! mqtt_connection {
    (@append $meta:tt $name:ident { $($fields:tt)* } $rest:tt) => {
        $crate::settings::config!(@emit $meta $name { $($fields)*
            /// Broker host name or address.
            #[schemars(example = &"localhost")]
            pub host: String,
            /// Broker port (1883 plain, 8883 TLS by convention).
            #[serde(default = "crate::connectors::mqtt::default_port")]
            pub port: u16,
            /// User name, if the broker requires one.
            #[serde(default)]
            pub username: Option<String>,
            /// Password (use `${ENV_VAR}`); never logged or printed.
            #[serde(default)]
            pub password: Option<crate::secret::Secret>,
            /// TLS settings; unset: plain TCP.
            #[serde(default)]
            pub tls: Option<crate::connectors::mqtt::MqttTls>,
            /// Keep-alive interval in seconds.
            #[serde(default = "crate::connectors::mqtt::default_keep_alive_secs")]
            #[schemars(range(min = 5))]
            pub keep_alive_secs: u64,
            /// Largest message in bytes; larger ones are refused (source) or dead-lettered
            /// (sink).
            #[serde(default = "crate::connectors::mqtt::default_max_packet_bytes")]
            #[schemars(range(min = 1))]
            pub max_packet_bytes: usize,
            /// Reconnection after a lost connection: attempts and backoff with full jitter
            /// (default 30 attempts, waits up to 10 s); when they are spent the component
            /// fails (a sink's unacknowledged batches count as not delivered).
            #[serde(
                default = "crate::connectors::mqtt::default_reconnect",
                deserialize_with = "crate::connectors::mqtt::deserialize_reconnect"
            )]
            #[schemars(schema_with = "crate::connectors::mqtt::reconnect_schema")]
            pub retry: tidegauge_core::resilience::RetryPolicy,
        } $rest);

        impl $name {
            /// The connection settings.
            pub(crate) fn connection(&self) -> $crate::connectors::mqtt::Connection<'_> {
                $crate::connectors::mqtt::Connection {
                    host: &self.host,
                    port: self.port,
                    username: self.username.as_ref(),
                    password: self.password.as_ref(),
                    tls: self.tls.as_ref(),
                    keep_alive_secs: self.keep_alive_secs,
                    max_packet_bytes: self.max_packet_bytes,
                    retry: &self.retry,
                }
            }
        }
    };
}

pub(crate) use mqtt_connection;

pub(crate) fn default_port() -> u16 {
    1883
}
pub(crate) fn default_keep_alive_secs() -> u64 {
    30
}
pub(crate) fn default_max_packet_bytes() -> usize {
    1 << 20
}

/// The connection settings of an MQTT component.
pub(crate) struct Connection<'a> {
    pub host: &'a str,
    pub port: u16,
    pub username: Option<&'a String>,
    pub password: Option<&'a Secret>,
    pub tls: Option<&'a MqttTls>,
    pub keep_alive_secs: u64,
    pub max_packet_bytes: usize,
    pub retry: &'a RetryPolicy,
}

impl Connection<'_> {
    /// `mqtt://host:port`, for messages and dead letters.
    pub(crate) fn broker(&self) -> String {
        format!("mqtt://{}:{}", self.host, self.port)
    }

    /// Checks the settings both components have.
    pub(crate) fn validate(&self, errors: &mut Vec<ConfigError>) {
        if self.host.trim().is_empty() {
            errors.push(ConfigError::new("host", "expected a host name or address"));
        }
        // `qos`, `keep_alive_secs` and `max_packet_bytes` have ranges in the schema,
        // checked before this runs (`ranges::check`).
        if let Some(tls) = self.tls
            && tls.client_cert_file.is_some() != tls.client_key_file.is_some()
        {
            errors.push(ConfigError::new(
                "tls",
                "give both client_cert_file and client_key_file, or neither",
            ));
        }
        if self.password.is_some() && self.username.is_none() {
            errors.push(ConfigError::new("password", "a password needs a username"));
        }
        errors.extend(self.retry.validate("retry"));
    }

    /// Client options: identity, keep-alive, packet size, credentials, TLS.
    pub(crate) fn options(&self, client_id: String) -> Result<MqttOptions, BuildError> {
        let mut o = MqttOptions::new(client_id, self.host, self.port);
        o.set_keep_alive(Duration::from_secs(self.keep_alive_secs));
        o.set_max_packet_size(self.max_packet_bytes, self.max_packet_bytes);
        if let Some(user) = self.username {
            o.set_credentials(
                user.clone(),
                self.password
                    .map(|p| p.expose().to_string())
                    .unwrap_or_default(),
            );
        }
        if let Some(tls) = self.tls {
            crate::tls::ensure_crypto_provider();
            let read = |p: &PathBuf| {
                std::fs::read(p)
                    .map_err(|e| BuildError::new(format!("tls: cannot read {}: {e}", p.display())))
            };
            let ca = read(&tls.ca_file)?;
            let client_auth = match (&tls.client_cert_file, &tls.client_key_file) {
                (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                _ => None,
            };
            o.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Simple {
                ca,
                alpn: None,
                client_auth,
            }));
        }
        Ok(o)
    }
}

/// Describes an MQTT connection error without credentials.
pub(crate) fn describe_error(e: &rumqttc::ConnectionError, password: Option<&Secret>) -> String {
    let text = match e {
        rumqttc::ConnectionError::ConnectionRefused(code) => {
            format!("connection refused by the broker: {code:?}")
        }
        other => other.to_string(),
    };
    match password {
        Some(p) => p.redact(&text),
        None => text,
    }
}

/// How the MQTT components reconnect unless `retry` says otherwise: up to 30 attempts,
/// waits growing to 10 s with full jitter (an outage of a few minutes), then the
/// component fails.
pub(crate) fn default_reconnect() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 30,
        ..RetryPolicy::default()
    }
}

/// `retry` as given, its missing settings taken from [`default_reconnect`] (not from
/// the general retry defaults: `retry = { max_backoff_ms = 30000 }` keeps 30 attempts).
pub(crate) fn deserialize_reconnect<'de, D>(d: D) -> Result<RetryPolicy, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error;
    let serde_json::Value::Object(given) = serde_json::Value::deserialize(d)? else {
        return Err(D::Error::custom("expected a table"));
    };
    let mut merged = serde_json::to_value(default_reconnect()).map_err(D::Error::custom)?;
    if let serde_json::Value::Object(m) = &mut merged {
        m.extend(given);
    }
    serde_json::from_value(merged).map_err(D::Error::custom)
}

/// The schema of `retry` with [`default_reconnect`]'s values as its defaults, so that
/// `describe` and validation read the same numbers the connection uses.
pub(crate) fn reconnect_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = RetryPolicy::json_schema(generator);
    let defaults = serde_json::to_value(default_reconnect()).unwrap_or_default();
    if let Some(props) = schema
        .get_mut("properties")
        .and_then(serde_json::Value::as_object_mut)
        && let Some(values) = defaults.as_object()
    {
        for (name, value) in values {
            if let Some(serde_json::Value::Object(p)) = props.get_mut(name) {
                p.insert("default".into(), value.clone());
            }
        }
    }
    schema.insert("default".into(), defaults);
    schema
}

/// After a lost connection: reconnects through the shared retry layer (backoff with
/// full jitter, the component's retry budget) until the broker accepts the connection.
/// A refusal that cannot change by retrying (bad credentials, not authorized) and spent
/// attempts end it with the last error, described without credentials.
pub(crate) async fn reconnect(
    eventloop: &mut EventLoop,
    resilience: &Resilience,
    password: Option<&Secret>,
) -> Result<(), String> {
    let cell = tokio::sync::Mutex::new(eventloop);
    let cell = &cell;
    let result = resilience
        .call(
            None,
            move |n| async move {
                if n == 1 {
                    // A connection that breaks as soon as it is made (another client
                    // with the same id) must not turn into a busy loop.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let mut eventloop = cell.lock().await;
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Incoming::ConnAck(_))) => return Ok(()),
                        Ok(_) => {}
                        Err(e) => return Err(e),
                    }
                }
            },
            |e| match e {
                rumqttc::ConnectionError::RequestsDone => false,
                rumqttc::ConnectionError::ConnectionRefused(code) => {
                    matches!(code, rumqttc::ConnectReturnCode::ServiceUnavailable)
                }
                _ => true,
            },
            |_| {},
        )
        .await;
    match result {
        Ok(()) => Ok(()),
        Err(RetryError::Failed { error, attempts }) => Err(format!(
            "{} (gave up after {attempts} reconnection attempt(s))",
            describe_error(&error, password)
        )),
        Err(RetryError::BreakerOpen) => Err("circuit breaker open".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidegauge_core::{params, ranges, registry};

    #[test]
    fn retry_defaults_are_the_reconnect_defaults_in_help_validation_and_use() {
        let attempts = default_reconnect().max_attempts;
        assert_ne!(attempts, RetryPolicy::default().max_attempts);
        for kind in [
            tidegauge_core::registry::ComponentKind::Source,
            tidegauge_core::registry::ComponentKind::Sink,
        ] {
            let d = registry::find(kind, "mqtt").unwrap();
            let shown: Vec<_> = params::params(d)
                .into_iter()
                .filter(|p| p.name.starts_with("retry"))
                .collect();
            let max = shown
                .iter()
                .find(|p| p.name == "retry.max_attempts")
                .unwrap();
            assert_eq!(max.default.as_deref(), Some(attempts.to_string().as_str()));
            let table = shown.iter().find(|p| p.name == "retry").unwrap();
            assert!(
                table
                    .default
                    .as_deref()
                    .unwrap()
                    .contains(&format!("\"max_attempts\":{attempts}")),
                "{:?}",
                table.default
            );
            // Validation still reads the ranges of the nested settings.
            let schema = d.json_schema().to_value();
            let errors = ranges::check(
                &schema,
                &serde_json::json!({ "retry": { "max_attempts": 0 } }),
            );
            assert!(
                errors.iter().any(|e| e.path == "retry.max_attempts"),
                "{errors:?}"
            );
        }
        // A partial table keeps the reconnect defaults for what it leaves out.
        let source: source::MqttSourceConfig =
            toml::from_str("host = \"h\"\ntopics = [\"t\"]\nretry = { max_backoff_ms = 30000 }")
                .unwrap();
        assert_eq!(source.retry.max_attempts, attempts);
        assert_eq!(source.retry.max_backoff_ms, 30000);
        let source: source::MqttSourceConfig =
            toml::from_str("host = \"h\"\ntopics = [\"t\"]").unwrap();
        assert_eq!(source.retry, default_reconnect());
        assert!(
            toml::from_str::<source::MqttSourceConfig>(
                "host = \"h\"\ntopics = [\"t\"]\nretry = { max_attemps = 3 }"
            )
            .is_err(),
            "unknown settings are still refused"
        );
    }
}
