//! `[admin]` in a pipeline file: the admin HTTP API (off unless the table is present).

use std::net::SocketAddr;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::error::ConfigError;

/// `[admin]`: serves the admin API (health, components, topology, parameters, changes,
/// metrics) while the pipeline runs. Present means on, on the loopback interface unless
/// `address` says otherwise.
#[derive(Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Set to false to keep the table but not serve.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Address and port to listen on. Port 0 picks a free port (printed at start).
    /// Addresses other than loopback need a token.
    #[serde(default = "default_address")]
    pub address: String,
    /// Bearer token that parameter changes must carry. Prefer `token_env`: a token in
    /// the file is readable by whoever reads the file. Without a token, changes are
    /// refused and only reading is possible.
    #[serde(default)]
    #[schemars(extend("writeOnly" = true))]
    pub token: Option<String>,
    /// Environment variable holding the bearer token (e.g. `TIDEGAUGE_TOKEN`).
    #[serde(default)]
    pub token_env: Option<String>,
    /// Directory for state that outlives a run: the history of parameter changes
    /// (`changes.jsonl`). Default: beside the pipeline file.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

/// Shows everything but the token.
impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("enabled", &self.enabled)
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "(secret)"))
            .field("token_env", &self.token_env)
            .field("state_dir", &self.state_dir)
            .finish()
    }
}

fn default_enabled() -> bool {
    true
}

/// The admin API's default address.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:7878";

fn default_address() -> String {
    DEFAULT_ADDRESS.to_string()
}

impl AdminConfig {
    /// Checks the settings (pure); paths relative to `admin`.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        match self.address.parse::<SocketAddr>() {
            Err(_) => errors.push(ConfigError::new(
                "address",
                format!(
                    "`{}` is not an address with a port, e.g. `{DEFAULT_ADDRESS}`",
                    self.address
                ),
            )),
            Ok(a) if !a.ip().is_loopback() && self.token.is_none() && self.token_env.is_none() => {
                errors.push(ConfigError::new(
                    "address",
                    "listening beyond loopback needs a token: set `token_env`",
                ))
            }
            Ok(_) => {}
        }
        if self.token.is_some() && self.token_env.is_some() {
            errors.push(ConfigError::new(
                "token",
                "give either `token` or `token_env`, not both",
            ));
        }
        if self.token.as_deref().is_some_and(str::is_empty) {
            errors.push(ConfigError::new("token", "must not be empty"));
        }
        errors
    }

    /// The listening address (valid after [`AdminConfig::validate`]).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.address.parse().ok()
    }

    /// The bearer token, from the file or the environment; `None` when neither gives one.
    pub fn resolve_token(&self, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
        match (&self.token, &self.token_env) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(var)) => env(var).filter(|t| !t.is_empty()),
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> AdminConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_to_loopback_and_checks_address_and_token() {
        let c = parse("");
        assert!(c.enabled);
        assert_eq!(c.address, DEFAULT_ADDRESS);
        assert!(c.validate().is_empty());
        let errs = parse("address = \"0.0.0.0:80\"").validate();
        assert_eq!(errs[0].path, "address");
        assert!(
            parse("address = \"0.0.0.0:80\"\ntoken_env = \"T\"")
                .validate()
                .is_empty()
        );
        assert_eq!(parse("address = \"nowhere\"").validate().len(), 1);
        assert_eq!(
            parse("token = \"a\"\ntoken_env = \"T\"").validate().len(),
            1
        );
    }

    #[test]
    fn debug_output_hides_the_token() {
        let c = parse("token = \"s3cret\"");
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("(secret)"),
            "{shown}"
        );
    }

    #[test]
    fn token_comes_from_the_environment() {
        let c = parse("token_env = \"TG_T\"");
        let env = |k: &str| (k == "TG_T").then(|| "s3cret".to_string());
        assert_eq!(c.resolve_token(&env).as_deref(), Some("s3cret"));
        assert_eq!(c.resolve_token(&|_| None), None);
    }
}
