//! NATS JetStream: a source and a sink, and what they share: the connection settings
//! (appended to both configs by [`nats_connection!`]), their checks, and connecting
//! through the shared retry layer with errors that never show secrets.

pub mod sink;
pub mod source;

use std::path::PathBuf;
use std::time::Duration;

use tidegauge_core::resilience::{Resilience, RetryPolicy};
use tidegauge_core::{BuildError, ConfigError};

use crate::secret::Secret;

/// Part of [`config!`](crate::settings::config): the servers and credentials. Adds
/// `connection()`, the settings as a [`Connection`].
macro_rules! nats_connection {
    (@append $meta:tt $name:ident { $($fields:tt)* } $rest:tt) => {
        $crate::settings::config!(@emit $meta $name { $($fields)*
            /// Server URLs (`nats://host:4222`, or `tls://...`).
            #[schemars(example = ["nats://localhost:4222"])]
            pub servers: Vec<String>,
            /// User name (with `password`).
            #[serde(default)]
            pub username: Option<String>,
            /// Password (use `${ENV_VAR}`); never logged or printed.
            #[serde(default)]
            pub password: Option<crate::secret::Secret>,
            /// Authentication token instead of user and password; never logged or printed.
            #[serde(default)]
            pub token: Option<crate::secret::Secret>,
            /// PEM file of the certificate authorities for TLS; setting it requires TLS.
            #[serde(default)]
            pub tls_ca_file: Option<std::path::PathBuf>,
        } $rest);

        impl $name {
            /// The connection settings.
            pub(crate) fn connection(&self) -> $crate::connectors::nats::Connection<'_> {
                $crate::connectors::nats::Connection {
                    servers: &self.servers,
                    username: self.username.as_ref(),
                    password: self.password.as_ref(),
                    token: self.token.as_ref(),
                    tls_ca_file: self.tls_ca_file.as_ref(),
                }
            }
        }
    };
}

pub(crate) use nats_connection;

/// Where a stream the component creates keeps its messages.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum StreamStorage {
    /// On the server's disk: messages survive a server restart.
    #[default]
    File,
    /// In the server's memory: lost when the server restarts, and no disk write on the
    /// path of each message (see the README's latency table).
    Memory,
}

impl StreamStorage {
    /// JetStream's name for it.
    pub(crate) fn jetstream(self) -> async_nats::jetstream::stream::StorageType {
        match self {
            StreamStorage::File => async_nats::jetstream::stream::StorageType::File,
            StreamStorage::Memory => async_nats::jetstream::stream::StorageType::Memory,
        }
    }
}

/// The connection settings of a NATS component.
pub(crate) struct Connection<'a> {
    pub servers: &'a [String],
    pub username: Option<&'a String>,
    pub password: Option<&'a Secret>,
    pub token: Option<&'a Secret>,
    pub tls_ca_file: Option<&'a PathBuf>,
}

impl Connection<'_> {
    /// `nats://server,...`, for messages and dead letters.
    pub(crate) fn origin(&self) -> String {
        format!("nats://{}", self.servers.join(","))
    }

    /// Checks the settings.
    pub(crate) fn validate(&self, errors: &mut Vec<ConfigError>) {
        if self.servers.is_empty() || self.servers.iter().any(|s| s.trim().is_empty()) {
            errors.push(ConfigError::new("servers", "list at least one server URL"));
        }
        if self.username.is_some() != self.password.is_some() {
            errors.push(ConfigError::new(
                "password",
                "give both username and password, or neither",
            ));
        }
        if self.token.is_some() && self.username.is_some() {
            errors.push(ConfigError::new(
                "token",
                "use a token or a username and password, not both",
            ));
        }
    }

    /// Connects, with credentials and TLS as configured, trying as `retry` allows
    /// through the shared retry layer. Reconnections of the running client wait as
    /// `retry`'s backoff says (full jitter), without end. Errors never show secrets.
    pub(crate) async fn connect(
        &self,
        retry: &RetryPolicy,
    ) -> Result<async_nats::Client, BuildError> {
        let addrs: Vec<async_nats::ServerAddr> = self
            .servers
            .iter()
            .map(|s| {
                s.parse()
                    .map_err(|e| BuildError::new(format!("servers: `{s}`: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let options = || {
            let backoff = retry.clone();
            let mut o = async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(10))
                .max_reconnects(None)
                .reconnect_delay_callback(move |attempts| {
                    backoff.backoff(u32::try_from(attempts).unwrap_or(u32::MAX))
                });
            if let (Some(u), Some(p)) = (self.username, self.password) {
                o = o.user_and_password(u.clone(), p.expose().to_string());
            }
            if let Some(t) = self.token {
                o = o.token(t.expose().to_string());
            }
            if let Some(ca) = self.tls_ca_file {
                o = o.add_root_certificates(ca.clone()).require_tls(true);
            }
            o
        };
        let resilience = Resilience::new(retry.clone());
        let addrs = &addrs;
        let options = &options;
        resilience
            .call(
                None,
                move |_| async move { options().connect(addrs.clone()).await },
                |e| {
                    !matches!(
                        e.kind(),
                        async_nats::ConnectErrorKind::Authentication
                            | async_nats::ConnectErrorKind::AuthorizationViolation
                            | async_nats::ConnectErrorKind::Tls
                    )
                },
                |_| {},
            )
            .await
            .map_err(|e| {
                let mut text = format!("cannot connect to {}: {e}", self.servers.join(", "));
                for s in [self.password, self.token].into_iter().flatten() {
                    text = s.redact(&text);
                }
                BuildError::new(text)
            })
    }
}
