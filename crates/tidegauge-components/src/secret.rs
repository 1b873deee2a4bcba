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
}
