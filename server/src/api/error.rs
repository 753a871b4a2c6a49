//! API errors as RFC 9457 problem details (`application/problem+json`) with a stable
//! `code`, the offending `field` where one applies and `current_version` on conflicts.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::StoreError;

/// Everything a request can fail with. Client mistakes are 4xx with a stable code (a
/// rate limit's 429 included); the
/// 5xx are [`ApiError::Internal`] (a bug), [`ApiError::Unavailable`] (a database outage)
/// and [`ApiError::StorageFull`] (no space left to write).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request body is not JSON (400 `malformed_json`).
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    /// A JSON body of the wrong shape, or a bad query or path parameter (400).
    #[error("{message}")]
    BadRequest {
        /// Stable code.
        code: &'static str,
        /// What is wrong.
        message: String,
        /// The offending field or parameter.
        field: Option<String>,
    },
    /// A bad credential (401 `unauthorized`): a key or token this server did not issue,
    /// tampered with, or a key that expired or was revoked.
    #[error("{0}")]
    Unauthorized(String),
    /// No credential at all (401 `unauthorized`, like a bad one; its challenge names no
    /// error, RFC 6750 §3.1).
    #[error("{0}")]
    NoCredential(String),
    /// A participant token past its expiry (401 `token_expired`): mint a new one.
    #[error("{0}")]
    TokenExpired(String),
    /// A participant token the tenant revoked (401 `token_revoked`): mint a new one.
    #[error("{0}")]
    TokenRevoked(String),
    /// A credential that may not do this (403).
    #[error("{message}")]
    Forbidden {
        /// Stable code.
        code: &'static str,
        /// What is not allowed.
        message: String,
    },
    /// An action the payment's rules do not let this actor take now (403): a refusal by
    /// the core, unlike [`ApiError::Forbidden`] (the credential's), and so stored under
    /// the request's `Idempotency-Key` like a 422.
    #[error("{message}")]
    Refused {
        /// The rule's code.
        code: &'static str,
        /// What is not allowed.
        message: String,
    },
    /// Unknown, or another tenant's (404).
    #[error("{message}")]
    NotFound {
        /// Stable code, e.g. `unknown_payment`.
        code: &'static str,
        /// What was not found.
        message: String,
    },
    /// The payment is not at the expected version (409 `version_conflict`).
    #[error("the payment is at version {current}, not {expected}; read it again and retry")]
    VersionConflict {
        /// The version the client expected.
        expected: u64,
        /// The payment's version now.
        current: u64,
    },
    /// Another conflict (409), e.g. a policy version stored with other content.
    #[error("{message}")]
    Conflict {
        /// Stable code.
        code: &'static str,
        /// What conflicts.
        message: String,
    },
    /// The route exists but not with this method (405 `method_not_allowed`).
    #[error("this route does not take that method; see /openapi.json")]
    MethodNotAllowed,
    /// A body declared as something other than JSON (415 `unsupported_media_type`).
    #[error(
        "the request body is declared as `{0}`; send JSON with Content-Type: application/json"
    )]
    UnsupportedMediaType(String),
    /// The body did not arrive in time (408 `request_timeout`): the client sent it too
    /// slowly, or stopped sending it; nothing was done.
    #[error("the request body did not arrive within {seconds} s; send it again, whole")]
    BodyTimeout {
        /// How long the server waited.
        seconds: u64,
    },
    /// The body is larger than the limit (413).
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Well-formed but rejected by a domain rule or an idempotency rule (422).
    #[error("{message}")]
    Unprocessable {
        /// Stable code, e.g. `quorum_not_met`, `idempotency_key_reused`.
        code: &'static str,
        /// What rule and why.
        message: String,
        /// The offending field.
        field: Option<String>,
    },
    /// The caller made more requests than its rate limit lets through (429
    /// `rate_limited`, with `Retry-After`): nothing of the request ran. See
    /// [`crate::api::limits`].
    #[error("{message}")]
    RateLimited {
        /// Whose limit, what it is, and when to retry.
        message: String,
        /// How long until a request may pass.
        retry_after: std::time::Duration,
    },
    /// Too many live streams open at once for one party of a payment, or for one
    /// tenant (429 `too_many_streams`): close one first.
    #[error("{0}")]
    TooManyStreams(String),
    /// Our bug or an outage (500). The message is logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
    /// The database is unreachable (503).
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The database refused a write because its disk (or quota) is full (503
    /// `storage_full`): nothing of the request was stored, and it cannot succeed until an
    /// operator frees space.
    #[error("the database's storage is full; free space: {0}")]
    StorageFull(String),
}

impl ApiError {
    /// 400 with a code and a field.
    pub fn bad_request(code: &'static str, field: &str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
            field: Some(field.to_owned()),
        }
    }

    /// 404 for a payment that does not exist for this caller.
    pub fn unknown_payment(id: impl std::fmt::Display) -> Self {
        ApiError::NotFound {
            code: "unknown_payment",
            message: format!("no payment {id}"),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_)
            | ApiError::NoCredential(_)
            | ApiError::TokenExpired(_)
            | ApiError::TokenRevoked(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } | ApiError::Refused { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::VersionConflict { .. } | ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited { .. } | ApiError::TooManyStreams(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) | ApiError::StorageFull(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::BadRequest { code, .. }
            | ApiError::Forbidden { code, .. }
            | ApiError::Refused { code, .. }
            | ApiError::NotFound { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::Unprocessable { code, .. } => code,
            ApiError::Unauthorized(_) | ApiError::NoCredential(_) => "unauthorized",
            ApiError::TokenExpired(_) => "token_expired",
            ApiError::TokenRevoked(_) => "token_revoked",
            ApiError::VersionConflict { .. } => "version_conflict",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::BodyTimeout { .. } => "request_timeout",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::TooManyStreams(_) => "too_many_streams",
            ApiError::Internal(_) => "internal_error",
            ApiError::Unavailable(_) => "database_unavailable",
            ApiError::StorageFull(_) => "storage_full",
        }
    }

    /// The problem document's bytes.
    pub fn to_body(&self) -> Vec<u8> {
        let status = self.status();
        let detail = match self {
            ApiError::Internal(_) => "an internal error occurred; it has been logged".to_owned(),
            // The database's own words stay in the log.
            ApiError::Unavailable(_) => {
                "the database is unavailable for a moment (locked, restarting or unreachable); retry \
                 the request, a command with the same Idempotency-Key (a command sent without \
                 one may have been applied: read the payment before sending it again)"
                    .to_owned()
            }
            ApiError::StorageFull(_) => {
                "the server's database is out of storage space, so nothing of this request was \
                 stored; an operator must free space before it can succeed. Retry the request \
                 later (a command with the same Idempotency-Key)"
                    .to_owned()
            }
            other => other.to_string(),
        };
        let problem = Problem {
            kind: format!("https://trustfold.dev/errors/{}", self.code()),
            title: status.canonical_reason().unwrap_or("error"),
            status: status.as_u16(),
            detail,
            code: self.code(),
            field: match self {
                ApiError::BadRequest { field, .. } | ApiError::Unprocessable { field, .. } => {
                    field.as_deref()
                }
                _ => None,
            },
            current_version: match self {
                ApiError::VersionConflict { current, .. } => Some(*current),
                _ => None,
            },
        };
        serde_json::to_vec(&problem).unwrap_or_default()
    }

    /// The `WWW-Authenticate` challenge of a 401 (RFC 6750 §3): the Bearer scheme, with
    /// `error="invalid_token"` when a credential was sent but is not good (invalid,
    /// expired, revoked).
    fn challenge(&self) -> Option<&'static str> {
        match self {
            ApiError::NoCredential(_) => Some("Bearer realm=\"trustfold\""),
            ApiError::Unauthorized(_) => Some(
                "Bearer realm=\"trustfold\", error=\"invalid_token\", \
                 error_description=\"the credential is invalid, expired or revoked\"",
            ),
            ApiError::TokenExpired(_) => Some(
                "Bearer realm=\"trustfold\", error=\"invalid_token\", \
                 error_description=\"the participant token has expired\"",
            ),
            ApiError::TokenRevoked(_) => Some(
                "Bearer realm=\"trustfold\", error=\"invalid_token\", \
                 error_description=\"the participant token was revoked\"",
            ),
            _ => None,
        }
    }

    /// `Retry-After` of a 503, in seconds: a moment for an outage, longer for a full disk
    /// (someone has to free space first).
    fn retry_after(&self) -> &'static str {
        match self {
            ApiError::StorageFull(_) => "30",
            _ => "1",
        }
    }

    /// Whether this is the payment's answer to the command itself — a rejection by the
    /// core's rules (422, or 403 for an action the actor may not take) or an invalid
    /// command — which the same request gets again, so it is stored under its
    /// `Idempotency-Key` like a success. Not so: a malformed request (400), a version
    /// conflict (409), the credentials' refusals (401, 403 of a token's scope), a reused
    /// key, a full queue of held rail notices (`too_many_held_notices`: the same notice
    /// is accepted once some are dismissed or applied) and 5xx: the key stays free for a
    /// retry.
    pub fn is_command_result(&self) -> bool {
        match self {
            ApiError::Unprocessable { code, .. } => {
                !matches!(*code, "idempotency_key_reused" | "too_many_held_notices")
            }
            ApiError::Refused { .. } => true,
            _ => false,
        }
    }

    /// Maps a core error: rejections by rule, input codes, everything else. The core
    /// says which refusals are about who is acting ([`trustfold_core::Error::is_forbidden`]):
    /// those are 403, the rest of its rejections 422.
    pub fn from_core(e: trustfold_core::Error) -> Self {
        use trustfold_core::Error as E;
        let forbidden = e.is_forbidden();
        match e {
            E::Rejected { code, message } => match code {
                _ if forbidden => ApiError::Refused { code, message },
                "unknown_payment" => ApiError::NotFound { code, message },
                _ => ApiError::Unprocessable {
                    code,
                    message,
                    field: None,
                },
            },
            E::MalformedJson(m) => ApiError::BadRequest {
                code: "invalid_request",
                message: m,
                field: None,
            },
            E::InvalidPolicy { field, reason } if field.is_empty() => ApiError::Unprocessable {
                code: "invalid_policy",
                message: format!("invalid policy: {reason}"),
                field: None,
            },
            E::InvalidPolicy { field, reason } => ApiError::Unprocessable {
                code: "invalid_policy",
                message: format!("invalid policy at `{field}`: {reason}"),
                field: Some(field),
            },
            E::InvalidHistory { .. } | E::ChainBroken { .. } | E::BadSignature(_) => {
                ApiError::Internal(e.to_string())
            }
            other => ApiError::Unprocessable {
                code: other.code(),
                message: other.to_string(),
                field: other.field().map(str::to_owned),
            },
        }
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    current_version: Option<u64>,
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::VersionConflict { expected, current } => {
                ApiError::VersionConflict { expected, current }
            }
            StoreError::EventIdReused { .. } => ApiError::Unprocessable {
                code: "idempotency_key_reused",
                message: "this idempotency key was already used for another command".into(),
                field: None,
            },
            // Another tenant's payment: answered exactly like one of the caller's own
            // (`payment_exists`), so the answer does not tell whose it is.
            StoreError::StreamUnavailable { stream_id } => ApiError::Conflict {
                code: "payment_exists",
                message: format!("payment {stream_id} already exists"),
            },
            StoreError::InvalidAppend(m) => ApiError::Unprocessable {
                code: "invalid_append",
                message: m,
                field: None,
            },
            // Text PostgreSQL cannot store (a NUL character) that got this far: the
            // caller's mistake, whichever parameter carried it; the statement wrote
            // nothing. 422 like the core's own `invalid_text`, so one code has one status.
            StoreError::Database(sqlx::Error::Database(d))
                if matches!(d.code().as_deref(), Some("22021" | "22P05")) =>
            {
                ApiError::Unprocessable {
                    code: "invalid_text",
                    message: "text in this request contains a character the database cannot \
                              store (the NUL character, U+0000): remove it"
                        .into(),
                    field: None,
                }
            }
            // Before `is_disconnect`: a full disk is not a moment's outage.
            e if e.is_storage_full() => ApiError::StorageFull(e.to_string()),
            e if e.is_disconnect() => ApiError::Unavailable(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut res = (self.status(), self.to_body()).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(challenge) = self.challenge() {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if res.status() == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(self.retry_after()),
            );
        }
        if let ApiError::RateLimited { retry_after, .. } = &self {
            // Whole seconds, rounded up: a client waiting that long finds the request
            // let through.
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        res
    }
}

/// Results of handlers.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
    use sqlx::{Connection as _, Executor as _, SqliteConnection};

    /// Another process holds the SQLite file's write lock past the busy timeout (zero
    /// here): the database is locked for the moment, which the API documents as 503
    /// `database_unavailable` with `Retry-After`, not as a bug of ours.
    #[tokio::test]
    async fn a_locked_sqlite_file_is_unavailable_not_an_internal_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("locked.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::ZERO);
        let mut holder = SqliteConnection::connect_with(&options)
            .await
            .expect("connect");
        holder.execute("CREATE TABLE t (x)").await.expect("create");
        let mut other = SqliteConnection::connect_with(&options)
            .await
            .expect("connect");
        holder.execute("BEGIN IMMEDIATE").await.expect("lock");
        let locked = other
            .execute("INSERT INTO t VALUES (1)")
            .await
            .expect_err("the file is locked");
        let e = ApiError::from(StoreError::from(locked));
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable"),
            "{e}"
        );
        holder.execute("ROLLBACK").await.expect("unlock");
    }

    /// A write the database has no room for (a real `SQLITE_FULL`: the file may not grow
    /// past `max_page_count`) is 503 `storage_full` with a longer `Retry-After`, saying
    /// nothing was stored and space must be freed; not a 500 `internal_error`.
    #[tokio::test]
    async fn a_full_sqlite_file_is_storage_full_not_an_internal_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("full.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let mut conn = SqliteConnection::connect_with(&options)
            .await
            .expect("connect");
        conn.execute("CREATE TABLE t (x BLOB)")
            .await
            .expect("create");
        conn.execute("PRAGMA max_page_count = 8")
            .await
            .expect("cap");
        let mut full = None;
        for _ in 0..16 {
            if let Err(e) = conn.execute("INSERT INTO t VALUES (zeroblob(4096))").await {
                full = Some(e);
                break;
            }
        }
        let e = ApiError::from(StoreError::from(full.expect("the file filled up")));
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::SERVICE_UNAVAILABLE, "storage_full"),
            "{e}"
        );
        let body: serde_json::Value = serde_json::from_slice(&e.to_body()).expect("json");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("nothing of this request was stored") && detail.contains("free space"),
            "{detail}"
        );
        let res = e.into_response();
        assert_eq!(
            res.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from_static("30"))
        );
    }
}
