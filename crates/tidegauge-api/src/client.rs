//! A small client of the admin API, for `tidegauge top`, `tidegauge changes` and tests.
//!
//! It speaks HTTP/1.1 over one loopback connection per request with hyper's client
//! connection API, on the hyper the API's server already uses. reqwest, in the tree for
//! the `http` sink and `http_poll`, was tried here and left: this crate would then depend
//! on the connectors' TLS choice (with their `http-tls` feature, reqwest's rustls needs a
//! process-wide crypto provider installed before any client is built, or building one
//! panics), for a client that never uses TLS and sends one request at a time.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect or talk to the server.
    #[error("cannot reach the admin API at {address}: {message}")]
    Unreachable {
        /// Where.
        address: String,
        /// What happened.
        message: String,
    },
    /// The server answered with an error status.
    #[error("{status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The `error` of the answer, or its body.
        message: String,
    },
    /// The answer is not the JSON expected.
    #[error("unexpected answer: {0}")]
    Invalid(String),
}

/// An answer: status and body.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Result<Value, ClientError> {
        serde_json::from_slice(&self.body).map_err(|e| ClientError::Invalid(e.to_string()))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Talks to one admin API.
#[derive(Clone, Debug)]
pub struct AdminClient {
    address: String,
    token: Option<String>,
    actor: Option<String>,
    timeout: Duration,
}

impl AdminClient {
    /// A client of the API at `address` (`host:port`).
    pub fn new(address: impl Into<String>) -> Self {
        AdminClient {
            address: address.into(),
            token: None,
            actor: None,
            timeout: Duration::from_secs(10),
        }
    }

    /// Sends `token` as the bearer token.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Names who makes changes (recorded in the history).
    pub fn with_actor(mut self, actor: Option<String>) -> Self {
        self.actor = actor;
        self
    }

    /// Sends one request; any status is an `Ok` reply.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, ClientError> {
        let unreachable = |m: String| ClientError::Unreachable {
            address: self.address.clone(),
            message: m,
        };
        let work = async {
            let stream = tokio::net::TcpStream::connect(&self.address)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let conn = tokio::spawn(conn);
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header(HOST, &self.address);
            if let Some(t) = &self.token {
                req = req.header(AUTHORIZATION, format!("Bearer {t}"));
            }
            if let Some(a) = &self.actor {
                req = req.header(crate::ACTOR_HEADER, a);
            }
            if body.is_some() {
                req = req.header(CONTENT_TYPE, "application/json");
            }
            let req = req
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| ClientError::Invalid(e.to_string()))?;
            let res = sender
                .send_request(req)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = res.status().as_u16();
            let body = res
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            conn.abort();
            Ok(Reply { status, body })
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| unreachable(format!("no answer within {:?}", self.timeout)))?
    }

    /// GETs `path` and returns its JSON; error statuses are errors.
    pub async fn get_json(&self, path: &str) -> Result<Value, ClientError> {
        let reply = self.request("GET", path, None).await?;
        if reply.status >= 400 {
            return Err(status_error(&reply));
        }
        reply.json()
    }

    /// PATCHes `path` with `body`; error statuses are errors.
    pub async fn patch_json(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let reply = self
            .request("PATCH", path, Some(body.to_string().into_bytes()))
            .await?;
        if reply.status >= 400 {
            return Err(status_error(&reply));
        }
        reply.json()
    }
}

fn status_error(reply: &Reply) -> ClientError {
    let message = reply
        .json()
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| reply.text());
    ClientError::Status {
        status: reply.status,
        message,
    }
}
