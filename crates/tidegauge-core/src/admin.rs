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
    /// Addresses other than loopback need a token: the API does not start beyond
    /// loopback unless `token` or `token_env` gives one of at least 16 bytes.
    #[serde(default = "default_address")]
    pub address: String,
    /// Bearer token that parameter changes, and reads of parameters and of the change
    /// history, must carry; at least 16 bytes. Prefer `token_env`: a token in the file is
    /// readable by whoever reads the file. Without a token (loopback only), changes and
    /// those reads are refused; health, components, topology and metrics stay readable.
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
    /// Sensors whose recent verdicts the dashboard (`/ui`) can chart: one series per
    /// detector and sensor, kept in memory. When all are taken, a new sensor gets one
    /// only with an anomaly, replacing the series whose last anomaly is the oldest.
    /// 0 keeps no history. Memory: at most `history_sensors x (256 + 48 x
    /// history_points)` bytes (the defaults: about 18 MB).
    #[serde(default = "default_history_sensors")]
    #[schemars(range(max = 10000000))]
    pub history_sensors: usize,
    /// Verdicts kept per series (the most recent).
    #[serde(default = "default_history_points")]
    #[schemars(range(min = 1, max = 100000))]
    pub history_points: usize,
}

fn default_history_sensors() -> usize {
    2000
}

fn default_history_points() -> usize {
    180
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
            .field("history_sensors", &self.history_sensors)
            .field("history_points", &self.history_points)
            .finish()
    }
}

fn default_enabled() -> bool {
    true
}

/// Shortest bearer token accepted (bytes): 16 random bytes' worth of hex is 32, so this
/// only rules out the guessable.
pub const MIN_TOKEN_BYTES: usize = 16;

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
        if let Some(t) = &self.token
            && t.len() < MIN_TOKEN_BYTES
        {
            errors.push(ConfigError::new(
                "token",
                format!(
                    "must be at least {MIN_TOKEN_BYTES} bytes long (e.g. `openssl rand -hex 16`)"
                ),
            ));
        }
        errors
    }

    /// Whether the API listens on loopback only.
    pub fn is_loopback(&self) -> bool {
        self.socket_addr().is_some_and(|a| a.ip().is_loopback())
    }

    /// The token the API will check, resolved as at start: `Ok(None)` when none is
    /// configured or `token_env` names an unset variable and the API listens on loopback
    /// only (changes and protected reads are then refused); an error when the API would
    /// listen beyond loopback without a usable token, or the token is too short.
    pub fn start_token(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<String>, String> {
        let token = self.resolve_token(env);
        let source = match &self.token_env {
            Some(var) if self.token.is_none() => format!("`{var}`"),
            _ => "`token`".to_string(),
        };
        match token {
            Some(t) if t.len() < MIN_TOKEN_BYTES => Err(format!(
                "the admin token from {source} is {} bytes; at least {MIN_TOKEN_BYTES} are needed",
                t.len()
            )),
            Some(t) => {
                crate::redact::remember(&t);
                Ok(Some(t))
            }
            None if !self.is_loopback() => Err(match &self.token_env {
                Some(var) => format!(
                    "the admin API listens on {} (beyond loopback) and `{var}` is not set: \
                     set it to a token of at least {MIN_TOKEN_BYTES} bytes",
                    self.address
                ),
                None => format!(
                    "the admin API listens on {} (beyond loopback) without a token; set `token_env`",
                    self.address
                ),
            }),
            None => Ok(None),
        }
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
            parse("token = \"aaaaaaaaaaaaaaaaaaaa\"\ntoken_env = \"T\"")
                .validate()
                .len(),
            1
        );
    }

    #[test]
    fn debug_output_hides_the_token() {
        let c = parse("token = \"s3cret-s3cret-s3cret\"");
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("(secret)"),
            "{shown}"
        );
    }

    #[test]
    fn beyond_loopback_the_token_must_resolve() {
        let env_none = |_: &str| None;
        let env_short = |k: &str| (k == "T").then(|| "short".to_string());
        let env_good = |k: &str| (k == "T").then(|| "0123456789abcdef".to_string());
        let wide = parse("address = \"0.0.0.0:80\"\ntoken_env = \"T\"");
        let err = wide.start_token(&env_none).unwrap_err();
        assert!(err.contains("`T` is not set"), "{err}");
        assert!(wide.start_token(&|_| Some(String::new())).is_err());
        assert!(
            wide.start_token(&env_short)
                .unwrap_err()
                .contains("5 bytes")
        );
        assert_eq!(
            wide.start_token(&env_good).unwrap().as_deref(),
            Some("0123456789abcdef")
        );
        let local = parse("token_env = \"T\"");
        assert_eq!(local.start_token(&env_none).unwrap(), None);
        assert!(local.start_token(&env_short).is_err());
        assert_eq!(parse("token = \"abc\"").validate()[0].path, "token");
    }

    #[test]
    fn token_comes_from_the_environment() {
        let c = parse("token_env = \"TG_T\"");
        let env = |k: &str| (k == "TG_T").then(|| "s3cret".to_string());
        assert_eq!(c.resolve_token(&env).as_deref(), Some("s3cret"));
        assert_eq!(c.resolve_token(&|_| None), None);
    }
}
