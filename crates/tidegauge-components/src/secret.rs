//! Secrets in component settings (passwords, tokens): readable by the component that uses
//! them, never printed. `Debug` and `Display` show `***`, the JSON Schema marks the
//! setting as write-only, and [`Secret::redact`] scrubs the value out of error texts that
//! libraries may have built with it.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

/// A password or token. Write it in the pipeline file through an environment variable
/// (`password = "${MQTT_PASSWORD}"`) to keep it out of the file too.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for handing to the client library that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the secret replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        if self.0.is_empty() {
            text.to_string()
        } else {
            text.replace(&self.0, "***")
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl JsonSchema for Secret {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Secret".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "writeOnly": true,
            "description": "A secret: never printed in logs, errors or `describe` output."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_shows_its_value() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct C {
            password: Secret,
        }
        let c: C = toml::from_str("password = \"hunter2\"").unwrap();
        assert_eq!(c.password.expose(), "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{}", c.password).contains("hunter2"));
        assert_eq!(
            c.password.redact("auth failed for hunter2@host"),
            "auth failed for ***@host"
        );
    }

    /// Sets dotted `path` in `settings` to `value`.
    fn set(settings: &mut serde_json::Value, path: &str, value: serde_json::Value) {
        let mut v = settings;
        let parts: Vec<&str> = path.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            v = v
                .as_object_mut()
                .unwrap()
                .entry(p.to_string())
                .or_insert_with(|| serde_json::json!({}));
        }
        v[parts[parts.len() - 1]] = value;
    }

    /// Every secret-typed setting of every registered component is recognised (through
    /// `Option`, `$ref` and maps of secrets) and masked when the settings are shown; a
    /// secret planted in each is found nowhere in the shown settings.
    #[test]
    fn every_secret_setting_of_every_component_is_masked() {
        use tidegauge_core::{params, redact, registry};
        let mut found = Vec::new();
        for d in registry::all() {
            let schema = d.json_schema().to_value();
            let mut settings = serde_json::json!({});
            let mut planted = Vec::new();
            for p in params::params(d) {
                if !p.secret {
                    continue;
                }
                let secret = format!("Pl4nted-{}-{}", d.type_name, p.name);
                let value = if p.kind.starts_with("table of") {
                    serde_json::json!({ "X-Planted": secret })
                } else {
                    serde_json::json!(secret)
                };
                set(&mut settings, &p.name, value);
                planted.push(secret);
                found.push(format!("{}.{}", d.type_name, p.name));
            }
            // URLs in plain settings carry secrets too.
            let url = format!(
                "http://user:Pl4nted-{}-url@h:1/x?api_key=Pl4nted-key",
                d.type_name
            );
            set(&mut settings, "plain_url_setting", serde_json::json!(url));
            planted.push(format!("Pl4nted-{}-url", d.type_name));
            planted.push("Pl4nted-key".into());
            let shown = redact::settings(&schema, &settings).to_string();
            for secret in &planted {
                assert!(
                    !shown.contains(secret.as_str()),
                    "{}: {secret} in {shown}",
                    d.type_name
                );
            }
            redact::remember_settings(&schema, &settings);
            let scrubbed = redact::scrub(&settings.to_string()).into_owned();
            for secret in &planted {
                assert!(
                    !scrubbed.contains(secret.as_str()),
                    "{}: {secret} in {scrubbed}",
                    d.type_name
                );
            }
        }
        // The connectors compiled into this build (each is a feature of the crate).
        let expected = [
            (cfg!(feature = "http"), "http.auth_header_value"),
            (cfg!(feature = "http"), "http.headers"),
            (cfg!(feature = "mqtt"), "mqtt.password"),
            (cfg!(feature = "nats"), "nats.password"),
            (cfg!(feature = "nats"), "nats.token"),
            (cfg!(feature = "postgres"), "postgres.password"),
        ];
        for expected in expected.iter().filter(|(on, _)| *on).map(|(_, e)| *e) {
            assert!(
                found.iter().any(|f| f == expected),
                "{expected} not secret: {found:?}"
            );
        }
    }
}
