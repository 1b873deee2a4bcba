//! Kafka: a consumer-group source and a producer sink, and what they share: the client
//! settings (appended to both configs by [`kafka_connection!`]), their checks, the
//! librdkafka client configuration, and errors described without the password.

mod changelog;
mod reads;
mod revoke;
pub mod sink;
pub mod source;

use indexmap::IndexMap;
use rdkafka::ClientConfig;
use tidegauge_core::ConfigError;

use crate::secret::Secret;

/// Part of [`config!`](crate::settings::config): brokers, SASL credentials and further
/// librdkafka properties. Adds `connection()`, the settings as a [`Connection`].
macro_rules! kafka_connection {
    (@append $meta:tt $name:ident { $($fields:tt)* } $rest:tt) => {
        $crate::settings::config!(@emit $meta $name { $($fields)*
            /// Bootstrap brokers, `host:port`.
            #[schemars(example = ["localhost:9092"])]
            pub brokers: Vec<String>,
            /// SASL user name (with `sasl_password`; mechanism PLAIN unless `options` say
            /// else).
            #[serde(default)]
            pub sasl_username: Option<String>,
            /// SASL password (use `${ENV_VAR}`); never logged or printed.
            #[serde(default)]
            pub sasl_password: Option<crate::secret::Secret>,
            /// Further librdkafka properties (`security.protocol`, `session.timeout.ms` for
            /// the source, `partitioner` for the sink, ...). Secrets go in `sasl_password`,
            /// not here.
            #[serde(default)]
            pub options: indexmap::IndexMap<String, String>,
        } $rest);

        impl $name {
            /// The client settings.
            pub(crate) fn connection(&self) -> $crate::connectors::kafka::Connection<'_> {
                $crate::connectors::kafka::Connection {
                    brokers: &self.brokers,
                    sasl_username: self.sasl_username.as_ref(),
                    sasl_password: self.sasl_password.as_ref(),
                    options: &self.options,
                }
            }
        }
    };
}

pub(crate) use kafka_connection;

/// The client settings of a Kafka component.
pub(crate) struct Connection<'a> {
    pub brokers: &'a [String],
    pub sasl_username: Option<&'a String>,
    pub sasl_password: Option<&'a Secret>,
    pub options: &'a IndexMap<String, String>,
}

impl Connection<'_> {
    /// `kafka://broker,...`, for messages and dead letters.
    pub(crate) fn origin(&self) -> String {
        format!("kafka://{}", self.brokers.join(","))
    }

    /// Checks the settings; `reserved` are the properties the component sets itself,
    /// which `options` may not override.
    pub(crate) fn validate(&self, reserved: &[&str], errors: &mut Vec<ConfigError>) {
        if self.brokers.is_empty() || self.brokers.iter().any(|b| b.trim().is_empty()) {
            errors.push(ConfigError::new("brokers", "list at least one `host:port`"));
        }
        if self.sasl_password.is_some() && self.sasl_username.is_none() {
            errors.push(ConfigError::new(
                "sasl_password",
                "a password needs sasl_username",
            ));
        }
        for key in self.options.keys() {
            if reserved.contains(&key.as_str())
                || ["bootstrap.servers", "sasl.password", "sasl.username"].contains(&key.as_str())
            {
                errors.push(ConfigError::new(
                    format!("options.{key}"),
                    "is set by tidegauge from the component's own settings",
                ));
            }
            if key.contains("password") || key.contains("secret") {
                errors.push(ConfigError::new(
                    format!("options.{key}"),
                    "secrets go in `sasl_password`, which is never printed",
                ));
            }
        }
    }

    /// A client configuration with brokers, SASL and the extra options.
    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers.join(","));
        if let Some(user) = self.sasl_username {
            c.set("sasl.username", user);
            c.set(
                "sasl.password",
                self.sasl_password.map(|p| p.expose()).unwrap_or_default(),
            );
            if !self.options.contains_key("sasl.mechanism") {
                c.set("sasl.mechanism", "PLAIN");
            }
            if !self.options.contains_key("security.protocol") {
                c.set("security.protocol", "SASL_PLAINTEXT");
            }
        }
        // librdkafka logs through its own channel; keep it on warnings.
        c.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
        for (k, v) in self.options {
            c.set(k, v);
        }
        c
    }

    /// `text` without the password.
    pub(crate) fn redact(&self, text: &str) -> String {
        match self.sasl_password {
            Some(s) => s.redact(text),
            None => text.to_string(),
        }
    }
}
