//! An async client for the trustfold server (reqwest with rustls).
//!
//! - Typed calls for the server's routes; JSON bodies where the core has no type for
//!   the server's request shape.
//! - Every POST carries an `Idempotency-Key` (a fresh UUID unless you give one), the
//!   same on every retry, so a retry after a network error never runs a command twice.
//! - Retries with exponential backoff on connection errors and 5xx only; 4xx are
//!   answered at once with a typed [`Error`]: [`Error::Rejected`] (422, with the
//!   domain rule's `code`), [`Error::VersionConflict`] (409, with `current_version`),
//!   [`Error::Auth`] (401/403), [`Error::NotFound`] (404), [`Error::Http`] otherwise.
//!
//! ```no_run
//! # async fn demo() -> trustfold::Result<()> {
//! use trustfold::client::Client;
//! let client = Client::new("http://127.0.0.1:8080")?.api_key("tfk_…");
//! let key = client.server_key().await?;
//! let page = client.events("5f0c1a52-3c1e-4a8e-9c1e-2b7f7c0e5a11".parse()?, 0, 100).await?;
//! println!("{} events, more: {}; server key {key}", page.events.len(), page.has_more);
//! # Ok(()) }
//! ```

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::history::{PublicKey, SignedHead};
use crate::id::PaymentId;

/// How many times a request is tried in all (connection errors and 5xx only).
pub const ATTEMPTS: u32 = 4;

/// A client of one trustfold server.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    bearer: Option<String>,
    backoff: Duration,
}

/// One history record as the server sends it: the hash and the event's exact bytes.
#[derive(Debug, Clone)]
pub struct Record {
    /// The recorded hash.
    pub hash: Hash,
    /// The event's bytes as received (never re-serialized).
    pub event: Box<RawValue>,
}

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct R {
            hash: Hash,
            event: Box<RawValue>,
        }
        let r = R::deserialize(d)?;
        Ok(Record {
            hash: r.hash,
            event: r.event,
        })
    }
}

/// A page of a payment's history.
#[derive(Debug, Clone, Deserialize)]
pub struct EventsPage {
    /// The records, in order.
    pub events: Vec<Record>,
    /// More after `next`.
    pub has_more: bool,
    /// The cursor (sequence number) to continue after.
    pub next: u64,
}

/// One event of the tenant-wide feed.
#[derive(Debug, Clone, Deserialize)]
pub struct FeedEvent {
    /// Gap-free global position.
    pub position: u64,
    /// The payment.
    pub payment_id: PaymentId,
    /// Its sequence number in the payment.
    pub seq: u64,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The recorded hash.
    pub hash: Hash,
    /// The event's bytes.
    pub event: Box<RawValue>,
}

/// A page of the tenant feed.
#[derive(Debug, Clone, Deserialize)]
pub struct FeedPage {
    /// The events, in global order.
    pub events: Vec<FeedEvent>,
    /// More after `next`.
    pub has_more: bool,
    /// The cursor (global position) to continue after.
    pub next: u64,
}

/// What a command (or opening a payment) returned.
#[derive(Debug, Clone, Deserialize)]
pub struct CommandResult {
    /// The payment.
    pub payment_id: PaymentId,
    /// Its version after the command.
    pub version: u64,
    /// The events the command appended (empty when it changed nothing).
    pub events: Vec<Value>,
    /// The payment's state after the command (the caller's view).
    #[serde(default)]
    pub state: Option<Value>,
}

#[derive(Deserialize)]
struct Problem {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    current_version: Option<u64>,
}

impl Client {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Transport(e.to_string()))?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            bearer: None,
            backoff: Duration::from_millis(100),
        })
    }

    /// Authenticates with a tenant API key.
    pub fn api_key(mut self, key: &str) -> Self {
        self.bearer = Some(key.to_string());
        self
    }

    /// Authenticates with a participant token (scoped to one payment and party).
    pub fn token(mut self, token: &str) -> Self {
        self.bearer = Some(token.to_string());
        self
    }

    /// The first retry's delay (doubled on each further retry).
    pub fn backoff(mut self, first: Duration) -> Self {
        self.backoff = first;
        self
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub(crate) fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = &self.bearer {
            r = r.bearer_auth(b);
        }
        r
    }

    /// Sends with retries on connection errors and 5xx; maps error statuses.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
        expected_version: Option<u64>,
    ) -> Result<bytes_body::Body> {
        let key = match (&method, idempotency_key) {
            (&Method::POST, None) => Some(uuid::Uuid::new_v4().to_string()),
            (_, k) => k.map(str::to_string),
        };
        let mut delay = self.backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut r = self.request(method.clone(), path);
            if let Some(k) = &key {
                r = r.header("Idempotency-Key", k);
            }
            if let Some(v) = expected_version {
                r = r.header("If-Match", format!("\"{v}\""));
            }
            if let Some(b) = body {
                r = r.json(b);
            }
            let retry = match r.send().await {
                Ok(res) if res.status().is_server_error() => {
                    let status = res.status();
                    let text = res.text().await.unwrap_or_default();
                    if attempt >= ATTEMPTS {
                        return Err(problem(status, text.as_bytes()));
                    }
                    true
                }
                Ok(res) => {
                    let status = res.status();
                    let headers = res.headers().clone();
                    let bytes = res
                        .bytes()
                        .await
                        .map_err(|e| Error::Transport(e.to_string()))?;
                    if !status.is_success() {
                        return Err(problem(status, &bytes));
                    }
                    return Ok(bytes_body::Body {
                        bytes: bytes.to_vec(),
                        etag: headers
                            .get("etag")
                            .and_then(|v| v.to_str().ok())
                            .map(|s| s.trim_matches('"').to_string()),
                    });
                }
                Err(e) if e.is_connect() || e.is_timeout() || e.is_request() => {
                    if attempt >= ATTEMPTS {
                        return Err(Error::Transport(e.to_string()));
                    }
                    true
                }
                Err(e) => return Err(Error::Transport(e.to_string())),
            };
            if retry {
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
            }
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let b = self.send(Method::GET, path, None, None, None).await?;
        serde_json::from_slice(&b.bytes).map_err(|e| Error::Transport(format!("bad response: {e}")))
    }

    /// `GET /v1/server-key`: the key heads are signed with. Pin it out of band; this
    /// call is for first contact and for checking a pinned key is still the server's.
    pub async fn server_key(&self) -> Result<PublicKey> {
        let v: Value = self.get_json("/v1/server-key").await?;
        v.get("public_key")
            .and_then(Value::as_str)
            .and_then(|k| k.parse().ok())
            .ok_or_else(|| Error::Transport("the server key response has no public_key".into()))
    }

    /// `POST /v1/tenants` with the admin token: returns `{tenant_id, name, api_key}`.
    pub async fn create_tenant(&self, admin_token: &str, name: &str) -> Result<Value> {
        let c = self.clone().token(admin_token);
        let b = c
            .send(
                Method::POST,
                "/v1/tenants",
                Some(&serde_json::json!({"name": name})),
                None,
                None,
            )
            .await?;
        serde_json::from_slice(&b.bytes).map_err(|e| Error::Transport(e.to_string()))
    }

    /// `POST /v1/policies`: publishes a policy document (immutable per version).
    pub async fn create_policy(&self, policy: &Value) -> Result<Value> {
        let b = self
            .send(Method::POST, "/v1/policies", Some(policy), None, None)
            .await?;
        serde_json::from_slice(&b.bytes).map_err(|e| Error::Transport(e.to_string()))
    }

    /// `POST /v1/payments`: opens a payment (`{policy, amount, description, initiator}`).
    pub async fn create_payment(
        &self,
        request: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<CommandResult> {
        let b = self
            .send(
                Method::POST,
                "/v1/payments",
                Some(request),
                idempotency_key,
                None,
            )
            .await?;
        serde_json::from_slice(&b.bytes).map_err(|e| Error::Transport(e.to_string()))
    }

    /// `POST /v1/payments/{id}/commands`: `command` is the core's command JSON
    /// (`{"type":"Join",…}`); `actor` is `{party, role}` for tenant keys; with
    /// `expected_version` the command fails with [`Error::VersionConflict`] if another
    /// writer got there first.
    pub async fn send_command(
        &self,
        payment: PaymentId,
        command: &Value,
        actor: Option<&Value>,
        expected_version: Option<u64>,
        idempotency_key: Option<&str>,
    ) -> Result<CommandResult> {
        let mut body = serde_json::json!({ "command": command });
        if let Some(a) = actor {
            body["actor"] = a.clone();
        }
        let b = self
            .send(
                Method::POST,
                &format!("/v1/payments/{payment}/commands"),
                Some(&body),
                idempotency_key,
                expected_version,
            )
            .await?;
        serde_json::from_slice(&b.bytes).map_err(|e| Error::Transport(e.to_string()))
    }

    /// `GET /v1/payments/{id}`: the server's read model of the payment (a participant
    /// gets its view), with its version.
    pub async fn payment(&self, payment: PaymentId) -> Result<(Option<u64>, Value)> {
        let b = self
            .send(
                Method::GET,
                &format!("/v1/payments/{payment}"),
                None,
                None,
                None,
            )
            .await?;
        let v = serde_json::from_slice(&b.bytes).map_err(|e| Error::Transport(e.to_string()))?;
        Ok((b.etag.and_then(|e| e.parse().ok()), v))
    }

    /// `GET /v1/payments/{id}/events?after=&limit=`: a page of the history.
    pub async fn events(&self, payment: PaymentId, after: u64, limit: u32) -> Result<EventsPage> {
        self.get_json(&format!(
            "/v1/payments/{payment}/events?after={after}&limit={limit}"
        ))
        .await
    }

    /// `GET /v1/payments/{id}/head`: the signed head.
    pub async fn head(&self, payment: PaymentId) -> Result<SignedHead> {
        let v: Value = self
            .get_json(&format!("/v1/payments/{payment}/head"))
            .await?;
        // Either the head itself or wrapped as {"head": …}.
        let h = v.get("head").cloned().unwrap_or(v);
        serde_json::from_value(h).map_err(|e| Error::Transport(format!("bad head: {e}")))
    }

    /// `GET /v1/events?after=&limit=`: a page of the tenant-wide feed.
    pub async fn feed(&self, after: u64, limit: u32) -> Result<FeedPage> {
        self.get_json(&format!("/v1/events?after={after}&limit={limit}"))
            .await
    }
}

/// Maps an error response (RFC 9457 problem details) to a typed error.
fn problem(status: StatusCode, body: &[u8]) -> Error {
    let p: Option<Problem> = serde_json::from_slice(body).ok();
    let code = p.as_ref().and_then(|p| p.code.clone());
    let message = p
        .as_ref()
        .and_then(|p| p.detail.clone())
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    match status.as_u16() {
        401 | 403 => Error::Auth {
            status: status.as_u16(),
            message,
        },
        404 => Error::NotFound { message },
        409 if code.as_deref() == Some("version_conflict") => Error::VersionConflict {
            current_version: p.and_then(|p| p.current_version),
            message,
        },
        422 => Error::Rejected {
            code: code.unwrap_or_else(|| "unprocessable".into()),
            message,
            field: p.and_then(|p| p.field),
        },
        s => Error::Http {
            status: s,
            code: code.unwrap_or_else(|| format!("http_{s}")),
            message,
        },
    }
}

mod bytes_body {
    pub(super) struct Body {
        pub bytes: Vec<u8>,
        pub etag: Option<String>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_map_to_typed_errors() {
        let e = problem(
            StatusCode::CONFLICT,
            br#"{"code":"version_conflict","detail":"at 7","current_version":7}"#,
        );
        assert!(matches!(
            e,
            Error::VersionConflict {
                current_version: Some(7),
                ..
            }
        ));
        let e = problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            br#"{"code":"quorum_not_met","detail":"x"}"#,
        );
        assert_eq!(e.code(), "quorum_not_met");
        assert_eq!(problem(StatusCode::NOT_FOUND, b"{}").code(), "not_found");
        assert_eq!(problem(StatusCode::FORBIDDEN, b"{}").code(), "forbidden");
        assert_eq!(problem(StatusCode::BAD_REQUEST, b"nope").code(), "http_400");
    }

    #[tokio::test]
    async fn connection_errors_are_retried_then_reported() {
        // Nothing listens on port 9 of localhost (discard): connect fails at once.
        let c = Client::new("http://127.0.0.1:9")
            .expect("client")
            .backoff(Duration::from_millis(1));
        let t0 = std::time::Instant::now();
        let e = c.server_key().await.expect_err("no server");
        assert_eq!(e.code(), "transport");
        assert!(
            t0.elapsed() >= Duration::from_millis(7),
            "three backoffs: 1+2+4 ms"
        );
    }
}
