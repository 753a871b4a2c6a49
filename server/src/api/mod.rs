//! The HTTP API: routes, shared state and the small handlers. Payments live in
//! [`payments`], the live stream in [`sse`].
//!
//! Every route is listed once in [`routes`], which builds the router and is what the
//! OpenAPI document (`/openapi.json`, `server/src/openapi.json`) is checked against.

pub mod auth;
pub mod body;
pub mod error;
pub mod limits;
pub mod payments;
pub mod rail_notices;
pub mod sse;
pub mod webhooks;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;
use serde::Deserialize;
use tokio::sync::{broadcast, watch};
use trustfold_core::history::PublicKey;
use trustfold_core::policy::Policy;
use uuid::Uuid;

use crate::cache::StateCache;
use crate::db::{now_us, on_read, on_write, Db};
use crate::projections::Projector;
use crate::{AnyStore, StoreError};
use auth::{new_api_key, secrets_equal, AdmittedClient, Principal, TokenKey};
pub use body::{parse_json, Body};
use error::{ApiError, ApiResult};

/// The OpenAPI 3.1 document served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// A stream moved: `stream` is now at `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The payment.
    pub stream: Uuid,
    /// Its version after the append.
    pub version: u64,
    /// The appended events (the last `events.len()` sequence numbers up to `version`),
    /// when this process appended them: live streams deliver them without reading the
    /// store. `None` for another process's appends (heard through `LISTEN`) and for an
    /// append of more than 8 KiB (the channel keeps its last notices alive for a stream
    /// that stopped reading, so each is kept small).
    pub events: Option<std::sync::Arc<Vec<crate::NewEvent>>>,
}

/// Tunables of the HTTP layer.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest request body in bytes.
    pub body_limit: usize,
    /// How often an idle SSE stream sends a heartbeat comment.
    pub heartbeat: Duration,
    /// How often an SSE stream looks at the store even without a notice (catches
    /// appends by processes that cannot notify this one, e.g. over one SQLite file).
    pub poll_interval: Duration,
    /// The admin token that may create tenants (`None`: tenant creation is off).
    pub admin_token: Option<String>,
    /// How long a request may take until its response starts (a live stream's then
    /// goes on): past it, 503 `database_unavailable` — a database that stopped
    /// answering without closing its connections would otherwise hold requests until
    /// TCP gives up, many minutes later.
    pub request_timeout: Duration,
    /// Requests a tenant's API keys may make (see [`limits`]); `None`: not limited.
    pub tenant_rate: Option<limits::Rate>,
    /// Requests a participant's tokens may make; `None`: not limited.
    pub participant_rate: Option<limits::Rate>,
    /// Failed authentications one client address may make before its requests are
    /// refused (see [`limits`]); `None`: not limited.
    pub failed_auth_rate: Option<limits::Rate>,
    /// Live streams one party of a payment may hold open in this process at once
    /// (its tabs and devices); more is 429 `too_many_streams`.
    pub max_streams_per_party: usize,
    /// Live streams a tenant (its API keys and its participants' tokens together) may
    /// hold open in this process at once.
    pub max_streams_per_tenant: usize,
    /// How long what the server sent may stay unacknowledged, or unsent because the
    /// client's window is closed (a client that stopped reading), before the kernel cuts
    /// the connection (`TCP_USER_TIMEOUT`, Linux): a stalled live-stream client gives
    /// its stream's place back then, at the stream's next write (a heartbeat at the
    /// latest), instead of holding it for as long as its kernel answers probes.
    pub stalled_connection_timeout: Duration,
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The event store.
    pub store: AnyStore,
    /// The server's own tables.
    pub db: Db,
    /// The server's Ed25519 secret (signs stream heads).
    pub secret: Arc<[u8; 32]>,
    /// Its public key.
    pub public_key: PublicKey,
    /// Signs participant tokens.
    pub token_key: TokenKey,
    /// Recently checked API keys.
    pub api_keys: Arc<auth::ApiKeyCache>,
    /// Recently folded states.
    pub cache: Arc<StateCache>,
    /// Stream notices, from this process and (PostgreSQL) from others.
    pub notices: broadcast::Sender<Notice>,
    /// The read models.
    pub projector: Arc<Projector>,
    /// Tunables.
    pub config: Arc<HttpConfig>,
    /// The live streams open in this process, counted per party and per tenant.
    pub streams: Arc<sse::OpenStreams>,
    /// Turns `true` when the server shuts down (ends live streams).
    pub shutdown: watch::Receiver<bool>,
    /// The time commands are judged and dated at.
    pub clock: crate::clock::Clock,
    /// How webhooks are sent (which addresses endpoints may have).
    pub webhooks: crate::webhooks::WebhookConfig,
    /// The rate limits of this process.
    pub limits: Arc<limits::RateLimits>,
    /// How secrets are kept in the database: sealed under the secrets key, or in clear
    /// ([`crate::sealed`]).
    pub at_rest: crate::sealed::AtRest,
}

/// One route: method, path (as in the OpenAPI document), the query parameters it takes
/// (the same as the document's; anything else is a 400 `unknown_parameter`) and handler.
pub type Route = (
    &'static str,
    &'static str,
    &'static [&'static str],
    MethodRouter<AppState>,
);

/// Every route.
pub fn routes() -> Vec<Route> {
    const PAGE: &[&str] = &["after", "limit"];
    vec![
        ("GET", "/healthz", &[], get(healthz)),
        ("GET", "/openapi.json", &[], get(openapi)),
        ("GET", "/v1/server-key", &[], get(server_key)),
        ("POST", "/v1/tenants", &[], post(create_tenant)),
        ("POST", "/v1/api-keys", &[], post(rotate_api_key)),
        ("POST", "/v1/policies", &[], post(create_policy)),
        (
            "GET",
            "/v1/policies",
            &["after", "limit"],
            get(list_policies),
        ),
        (
            "GET",
            "/v1/policies/{policy_id}",
            &["version"],
            get(get_policy),
        ),
        (
            "POST",
            "/v1/payments",
            &["nonce"],
            post(payments::create_payment),
        ),
        (
            "GET",
            "/v1/payments",
            &[
                "status",
                "participant",
                "policy",
                "due_before",
                "rail_ref",
                "after",
                "limit",
            ],
            get(payments::list_payments),
        ),
        (
            "GET",
            "/v1/payments/{payment_id}",
            &["nonce"],
            get(payments::get_payment),
        ),
        (
            "POST",
            "/v1/payments/{payment_id}/commands",
            &["nonce"],
            post(payments::send_command),
        ),
        (
            "GET",
            "/v1/payments/{payment_id}/events",
            &["after", "limit", "nonce"],
            get(payments::get_events),
        ),
        (
            "GET",
            "/v1/payments/{payment_id}/head",
            &["nonce"],
            get(payments::get_head),
        ),
        (
            "GET",
            "/v1/payments/{payment_id}/stream",
            &["after", auth::ACCESS_TOKEN],
            get(sse::stream),
        ),
        (
            "POST",
            "/v1/payments/{payment_id}/tokens",
            &[],
            post(payments::create_token),
        ),
        (
            "POST",
            "/v1/payments/{payment_id}/tokens/revoke",
            &[],
            post(payments::revoke_tokens),
        ),
        (
            "GET",
            "/v1/payments/{payment_id}/balances",
            &[],
            get(payments::get_balances),
        ),
        (
            "GET",
            "/v1/parties/{party_id}/inbox",
            PAGE,
            get(payments::get_inbox),
        ),
        ("GET", "/v1/events", PAGE, get(payments::get_feed)),
        (
            "POST",
            "/v1/rail-notices",
            &["nonce"],
            post(payments::post_rail_notice),
        ),
        (
            "GET",
            "/v1/rail-notices",
            &["status", "rail_ref", "after", "limit"],
            get(rail_notices::list_rail_notices),
        ),
        (
            "GET",
            "/v1/rail-notices/{notice_id}",
            &[],
            get(rail_notices::get_rail_notice),
        ),
        (
            "DELETE",
            "/v1/rail-notices/{notice_id}",
            &[],
            delete(rail_notices::dismiss_rail_notice),
        ),
        ("POST", "/v1/webhooks", &[], post(webhooks::create_webhook)),
        ("GET", "/v1/webhooks", &[], get(webhooks::list_webhooks)),
        (
            "GET",
            "/v1/webhooks/{webhook_id}",
            &[],
            get(webhooks::get_webhook),
        ),
        (
            "DELETE",
            "/v1/webhooks/{webhook_id}",
            &[],
            delete(webhooks::delete_webhook),
        ),
        (
            "GET",
            "/v1/webhooks/{webhook_id}/deliveries",
            &["before", "limit"],
            get(webhooks::list_deliveries),
        ),
        (
            "POST",
            "/v1/webhooks/{webhook_id}/rotate-secret",
            &[],
            post(webhooks::rotate_secret),
        ),
        (
            "POST",
            "/v1/webhooks/{webhook_id}/retry",
            &[],
            post(webhooks::retry_webhook),
        ),
    ]
}

/// Refuses a query parameter the route does not take: a misspelt filter (`?state=Held`)
/// would otherwise answer the unfiltered list as if it were the filtered one.
async fn query_taken(
    taken: &'static [&'static str],
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // A malformed query string is left to the handler's `params`, which says so.
    let names = Query::<Vec<(String, String)>>::try_from_uri(req.uri())
        .map(|Query(pairs)| pairs)
        .unwrap_or_default();
    for (name, _) in names {
        if !taken.contains(&name.as_str()) {
            let takes = match taken {
                [] => "takes no query parameters".to_owned(),
                _ => format!("takes `{}`", taken.join("`, `")),
            };
            return ApiError::bad_request(
                "unknown_parameter",
                &name,
                format!(
                    "this route does not take the query parameter `{}`; it {takes}",
                    trustfold_core::error::echo(&name)
                ),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// The router with every route, the fallbacks and the body limit.
pub fn router(state: AppState) -> Router {
    let limit = state.config.body_limit;
    let timeout = state.config.request_timeout;
    let mut r: Router<AppState> = Router::new();
    for (_, path, taken, handler) in routes() {
        let handler = handler.route_layer(axum::middleware::from_fn(move |req, next| {
            query_taken(taken, req, next)
        }));
        r = r.route(path, handler);
    }
    r.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(headers_given_once))
        .layer(axum::middleware::from_fn(move |req, next| {
            deadline(timeout, req, next)
        }))
        .layer(axum::middleware::map_response(problem_for_plain_errors))
        .layer(axum::middleware::map_response(not_stored))
        .with_state(state)
}

/// Answers 503 when a request's response has not started within `timeout` (see
/// [`HttpConfig::request_timeout`]). A command cut off here may still be committed by
/// the appender: a retry with the same `Idempotency-Key` finds it.
async fn deadline(
    timeout: Duration,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let what = format!("{} {}", req.method(), auth::loggable_uri(req.uri()));
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(res) => res,
        Err(_) => {
            // Most likely the database stopped answering: let the pool check its
            // connections before handing them out again.
            crate::error::disconnect::note();
            ApiError::Unavailable(format!(
                "{what} did not finish within {} s",
                timeout.as_secs()
            ))
            .into_response()
        }
    }
}

/// The request headers that hold one value, given more than once: a 400 (which one would
/// count? Two `Idempotency-Key`s, or two credentials, have no one meaning, and a proxy
/// that joins them into one line makes a third).
const SINGLE_HEADERS: &[&str] = &[
    "authorization",
    "idempotency-key",
    "if-match",
    "last-event-id",
    "content-type",
];

async fn headers_given_once(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    for name in SINGLE_HEADERS {
        if req.headers().get_all(*name).iter().nth(1).is_some() {
            return ApiError::bad_request(
                "duplicate_header",
                name,
                format!("the header `{name}` is given more than once; give it once"),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Every answer is for its caller only: `Cache-Control: no-store` (unless the handler
/// said otherwise) and `Vary: Authorization`. Without them a browser may keep one
/// participant's answer and, on revalidation (`If-None-Match` with the version's
/// `ETag`, answered 304), show it to another participant on the same browser, whose
/// policy hides more (a lender would see the seller's amounts).
async fn not_stored(mut res: Response) -> Response {
    let h = res.headers_mut();
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    h.append(header::VARY, HeaderValue::from_static("authorization"));
    res
}

/// Errors raised before a handler runs (axum's own rejections, e.g. a path segment
/// that is not UTF-8) come as plain text: they get the same problem document as every
/// other error, with a code named after the status and the original text as detail.
async fn problem_for_plain_errors(res: Response) -> Response {
    let status = res.status();
    let is_problem = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return res;
    }
    let detail = match axum::body::to_bytes(res.into_body(), 4096).await {
        Ok(b) if !b.is_empty() => String::from_utf8_lossy(&b).into_owned(),
        _ => status.canonical_reason().unwrap_or("error").to_owned(),
    };
    let code = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase()
        .replace([' ', '-'], "_");
    let body = serde_json::json!({
        "type": format!("https://trustfold.dev/errors/{code}"),
        "title": status.canonical_reason().unwrap_or("error"),
        "status": status.as_u16(),
        "detail": detail,
        "code": code,
    });
    let mut out = (status, serde_json::to_vec(&body).unwrap_or_default()).into_response();
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    out
}

async fn not_found() -> ApiError {
    ApiError::NotFound {
        code: "route_not_found",
        message: "no such route; see /openapi.json".into(),
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Parses an id in a URL (a path segment, or the `participant` filter): a UUID in its
/// lower-case hyphenated form (36 characters), the one this API writes. Anything else
/// — upper case, braces, `urn:uuid:`, the bare 32 digits — is a 400 `invalid_id`, so
/// one resource has one URL (and a `Trustfold-Signature`, which covers the id as the
/// server writes it, verifies against the URL it was fetched from).
pub fn parse_id(raw: &str, field: &str) -> ApiResult<Uuid> {
    Some(raw)
        .filter(|r| r.len() == 36 && !r.bytes().any(|b| b.is_ascii_uppercase()))
        .and_then(|r| Uuid::try_parse(r).ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_id",
                field,
                format!(
                    "`{}` is not a UUID in its lower-case hyphenated form ({field}), e.g. \
                     `0b5e8c2e-3f5a-4c1e-9a7d-2f4b6c8d0e1f`",
                    trustfold_core::error::echo(raw)
                ),
            )
        })
}

/// Query parameters in the order given (a malformed query string is a 400); [`params`]
/// makes them a map.
pub type Params = Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>;

/// A whole-number query parameter (a sequence number or position: 0 to 2^63 − 1, the
/// range the stores keep), or a 400.
pub fn param_u64(params: &HashMap<String, String>, name: &str) -> ApiResult<Option<u64>> {
    params
        .get(name)
        .map(|v| {
            v.parse::<u64>()
                .ok()
                .filter(|n| i64::try_from(*n).is_ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_parameter",
                        name,
                        format!(
                            "`{name}` must be an integer from 0 to {}, got `{v}`",
                            i64::MAX
                        ),
                    )
                })
        })
        .transpose()
}

/// The query map, or a 400: for a malformed query string, and for a parameter given
/// twice (`after=1&after=2` has no one meaning; "the last one wins" is how two readers
/// of one URL come to disagree). (A parameter the route does not take was refused
/// before the handler ran: see [`routes`].)
pub fn params(p: Params) -> ApiResult<HashMap<String, String>> {
    let Query(pairs) = p.map_err(|e| ApiError::BadRequest {
        code: "invalid_parameter",
        message: format!("malformed query string: {e}"),
        field: None,
    })?;
    let mut map = HashMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        let problem = if name.contains('\0') || value.contains('\0') {
            Some("contains a NUL character (%00); remove it")
        } else if map.contains_key(&name) {
            Some("is given twice; give it once")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                &name,
                format!(
                    "the query parameter `{}` {problem}",
                    trustfold_core::error::echo(&name)
                ),
            ));
        }
        map.insert(name, value);
    }
    Ok(map)
}

/// A `limit` parameter: default `default`, at most `max`, at least 1.
pub fn limit_param(params: &HashMap<String, String>, default: u32, max: u32) -> ApiResult<u32> {
    let Some(v) = params.get("limit") else {
        return Ok(default);
    };
    match v.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(u32::try_from(n).unwrap_or(max).min(max)),
        _ => Err(ApiError::bad_request(
            "invalid_parameter",
            "limit",
            format!(
                "`limit` must be a whole number of at least 1 (larger ones count as {max}), \
                 got `{}`",
                trustfold_core::error::echo(v)
            ),
        )),
    }
}

/// A JSON response with a status.
pub fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response {
    let mut res = (status, body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// A JSON response of a serializable value.
pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    json_bytes(status, serde_json::to_vec(value).unwrap_or_default())
}

async fn healthz(State(state): State<AppState>) -> ApiResult<Response> {
    // BIGINT on both engines: PostgreSQL's `1` is an int4, which sqlx does not decode
    // as an i64.
    let ok: i64 = on_read!(&state.db, pool => {
        sqlx::query_scalar("SELECT CAST(1 AS BIGINT)")
            .fetch_one(pool)
            .await
            .map_err(StoreError::from)?
    });
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"status": if ok == 1 { "ok" } else { "degraded" }}),
    ))
}

async fn openapi() -> Response {
    let mut res = OPENAPI.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

async fn server_key(State(state): State<AppState>) -> Response {
    json(
        StatusCode::OK,
        &serde_json::json!({
            "algorithm": "ed25519",
            "public_key": state.public_key.to_string(),
        }),
    )
}

/// Why a route's answer holds a new secret and cannot be stored to be replayed.
pub(crate) const HOLDS_A_SECRET: &str =
    "its answer holds a new secret, which is not stored to be replayed";

/// Refuses an `Idempotency-Key` on a route whose answer is not stored to be replayed
/// (400 `route_not_idempotent`): creating a tenant and rotating a key answer with a new
/// API key, which the server keeps only as a hash (storing the answer to replay it
/// would keep the secret in the clear), minting a participant token answers with a
/// bearer credential (not kept at rest either), and retrying a webhook endpoint stores
/// nothing to replay. Ignoring the header would let a client believe a retry is
/// replayed when it runs again. `why` says why the route stores no answer.
pub(crate) fn not_idempotent(
    headers: &HeaderMap,
    route: &str,
    why: &str,
    after_a_lost_answer: &str,
) -> ApiResult<()> {
    if headers.contains_key("idempotency-key") {
        return Err(ApiError::bad_request(
            "route_not_idempotent",
            "Idempotency-Key",
            format!(
                "{route} does not take an Idempotency-Key: {why}; send it without the header \
                 ({after_a_lost_answer})"
            ),
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    name: String,
}

/// Stores a new API key of a tenant (its hash) in the caller's transaction (a macro:
/// the statement runs on either engine's connection).
macro_rules! insert_api_key {
    ($tx:expr, $key:expr, $tenant:expr) => {
        sqlx::query(
            "INSERT INTO api_keys (key_id, tenant_id, key_hash, created_at_us) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind($key.key_id)
        .bind($tenant)
        .bind($key.hash.as_slice())
        .bind(now_us())
        .execute($tx)
        .await
        .map_err(StoreError::from)?
    };
}

async fn create_tenant(
    State(state): State<AppState>,
    AdmittedClient(client): AdmittedClient,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<Response> {
    let Some(admin) = state.config.admin_token.as_deref() else {
        return Err(ApiError::Forbidden {
            code: "tenant_creation_disabled",
            message: "start the server with --admin-token (or TRUSTFOLD_ADMIN_TOKEN) to create \
                      tenants"
                .into(),
        });
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    let refused = || {
        ApiError::Unauthorized(
            "creating a tenant needs the admin token as `Authorization: Bearer …`".into(),
        )
    };
    match given {
        Some(t) if secrets_equal(t, admin) => {}
        Some(t) => {
            // A credential of another kind this server issued (a tenant's API key, a
            // participant token) authenticates: the caller is known but may not create
            // tenants, a 403 that is not a failed authentication. Anything else is a
            // wrong admin token and counts against the caller's address (a missing one
            // not).
            let valid = if t.starts_with("tft_") {
                // Signed by this server (past its expiry or revoked, it is still not a
                // guess at the admin token).
                matches!(
                    state.token_key.verify(t),
                    Ok(_) | Err(ApiError::TokenExpired(_))
                )
            } else {
                match auth::check_api_key(&state, t).await {
                    Ok(_) => true,
                    Err(ApiError::Unauthorized(_)) => false,
                    Err(e) => return Err(e),
                }
            };
            if valid {
                return Err(ApiError::Forbidden {
                    code: "admin_token_required",
                    message: "creating a tenant needs the admin token as \
                              `Authorization: Bearer …`, not a tenant's API key or a \
                              participant token"
                        .into(),
                });
            }
            return auth::count_failure(&state, client, Err(refused()));
        }
        None => {
            return Err(ApiError::NoCredential(
                "creating a tenant needs the admin token as `Authorization: Bearer …`".into(),
            ))
        }
    }
    not_idempotent(
        &headers,
        "POST /v1/tenants",
        HOLDS_A_SECRET,
        "if an answer was lost, the tenant made then has a key nobody received and stays \
         unused: create the tenant again",
    )?;
    let req: NewTenant = parse_json(&body)?;
    if req.name.trim().is_empty()
        || req.name.chars().count() > trustfold_core::command::NAME_MAX
        || req.name.chars().any(char::is_control)
    {
        return Err(ApiError::Unprocessable {
            code: "invalid_name",
            message: format!(
                "a tenant needs a name of 1 to {} characters, none of them control \
                 characters",
                trustfold_core::command::NAME_MAX
            ),
            field: Some("name".into()),
        });
    }
    let tenant = Uuid::new_v4();
    let key = new_api_key()?;
    // The tenant and its first key in one transaction: never a tenant without a key.
    on_write!(&state.db, pool => {
        let mut tx = pool.begin().await.map_err(StoreError::from)?;
        sqlx::query("INSERT INTO tenants (tenant_id, name, created_at_us) VALUES ($1, $2, $3)")
            .bind(tenant)
            .bind(&req.name)
            .bind(now_us())
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        insert_api_key!(&mut *tx, key, tenant);
        tx.commit().await.map_err(StoreError::from)?;
    });
    tracing::info!(%tenant, "tenant created");
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({"tenant_id": tenant, "name": req.name, "api_key": key.secret}),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Rotate {
    /// Other keys of the tenant stop working after this many seconds (overlap).
    #[serde(default)]
    expire_others_after_seconds: Option<u64>,
}

/// The longest overlap a key rotation may leave the other keys working: one year.
const MAX_KEY_OVERLAP_SECONDS: u64 = 365 * 24 * 3600;

async fn rotate_api_key(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<Response> {
    let tenant = principal.require_tenant()?;
    not_idempotent(
        &headers,
        "POST /v1/api-keys",
        HOLDS_A_SECRET,
        "if an answer was lost, the key made then reached nobody: the keys you hold keep \
         working (until the overlap you asked for ends), so rotate again with one of them",
    )?;
    let req: Rotate = if body.is_empty() {
        Rotate::default()
    } else {
        parse_json(&body)?
    };
    let expire_at = match req.expire_others_after_seconds {
        Some(secs) if secs > MAX_KEY_OVERLAP_SECONDS => {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                "expire_others_after_seconds",
                format!(
                    "expire_others_after_seconds must be at most {MAX_KEY_OVERLAP_SECONDS} \
                     (one year); leave it out to keep the other keys"
                ),
            ))
        }
        Some(secs) => Some(
            now_us().saturating_add(
                i64::try_from(secs)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1_000_000),
            ),
        ),
        None => None,
    };
    let key = new_api_key()?;
    // The new key and the others' expiry in one transaction: never a new key that
    // nobody received while the old ones were cut short, nor the reverse.
    on_write!(&state.db, pool => {
        let mut tx = pool.begin().await.map_err(StoreError::from)?;
        insert_api_key!(&mut *tx, key, tenant);
        if let Some(at) = expire_at {
            sqlx::query(
                "UPDATE api_keys SET expires_at_us = $1 WHERE tenant_id = $2 AND key_id <> $3 \
                 AND (expires_at_us IS NULL OR expires_at_us > $1)",
            )
            .bind(at)
            .bind(tenant)
            .bind(key.key_id)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        }
        tx.commit().await.map_err(StoreError::from)?;
    });
    if expire_at.is_some() {
        state.api_keys.clear();
    }
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({"tenant_id": tenant, "api_key": key.secret}),
    ))
}

fn policy_response(
    status: StatusCode,
    body: &str,
    hash: &[u8],
) -> ApiResult<(StatusCode, Vec<u8>)> {
    let policy: serde_json::Value =
        serde_json::from_str(body).map_err(|e| ApiError::Internal(e.to_string()))?;
    let body = serde_json::to_vec(&serde_json::json!({
        "id": policy.get("id"),
        "version": policy.get("version"),
        "hash": hex::encode(hash),
        "policy": policy,
    }))
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((status, body))
}

/// `POST /v1/policies`, under its `Idempotency-Key` if it has one (see
/// [`payments::idempotent_request`]).
async fn create_policy(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<Response> {
    let tenant = principal.require_tenant()?;
    let (st, text) = (&state, &body);
    payments::idempotent_request(
        &state,
        &principal,
        &headers,
        "POST /v1/policies",
        &body,
        move |record| publish_policy(st, tenant, text, record),
    )
    .await
}

/// Stores a policy version (201), or finds the same one stored (200); with `record`
/// (the request's `Idempotency-Key`), the answer is stored under the key in the same
/// transaction as the policy, or, if another request holds the key, neither is
/// (`KeyTaken`). A version stored with other content is 409 `policy_version_exists`,
/// and nothing is written.
async fn publish_policy(
    state: &AppState,
    tenant: Uuid,
    body: &[u8],
    record: Option<payments::KeyRecord>,
) -> ApiResult<payments::Executed> {
    use payments::Executed;
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::MalformedJson("the body is not UTF-8".into()))?;
    body::strict_value(body)?;
    let policy = Policy::from_json(text).map_err(ApiError::from_core)?;
    check_policy_id(&policy.id)?;
    let canonical = String::from_utf8(policy.canonical_json())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let hash = policy.hash().0;
    on_write!(&state.db, pool => {
        let mut tx = pool.begin().await.map_err(StoreError::from)?;
        let inserted = sqlx::query(
            "INSERT INTO policies (tenant_id, policy_id, version, body, hash, created_at_us) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(&policy.id)
        .bind(i64::from(policy.version))
        .bind(&canonical)
        .bind(hash.as_slice())
        .bind(now_us())
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?
        .rows_affected();
        let answer = if inserted == 1 {
            policy_response(StatusCode::CREATED, &canonical, &hash)
        } else {
            // Stored and committed (on PostgreSQL the insert waited for the writer of a
            // version not committed yet).
            let stored: Option<(String, Vec<u8>)> = sqlx::query_as(
                "SELECT body, hash FROM policies WHERE tenant_id = $1 AND policy_id = $2 \
                 AND version = $3",
            )
            .bind(tenant)
            .bind(&policy.id)
            .bind(i64::from(policy.version))
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::from)?;
            match stored {
                Some((stored, stored_hash)) if stored_hash == hash => {
                    policy_response(StatusCode::OK, &stored, &stored_hash)
                }
                Some(_) => Err(version_exists(&policy)),
                None => Err(ApiError::Internal(
                    "policy insert conflicted but none is stored".into(),
                )),
            }
        };
        match (answer, record) {
            (Err(e), _) => {
                // The request's own answer (a 409) even if the rollback fails: the
                // transaction ends with the connection either way, and nothing is kept.
                if let Err(r) = tx.rollback().await {
                    tracing::warn!(error = %r, "a policy transaction could not be rolled back");
                }
                Err(e)
            }
            (Ok((status, body)), None) => {
                tx.commit().await.map_err(StoreError::from)?;
                Ok(Executed::Answer(status, body))
            }
            (Ok((status, body)), Some(record)) => {
                // The key's record in the policy's commit: if another request holds the
                // key, this one's policy is not published either.
                if payments::insert_key_record!(&mut *tx, record, status, &body) == 0 {
                    tx.rollback().await.map_err(StoreError::from)?;
                    Ok(Executed::KeyTaken)
                } else {
                    tx.commit().await.map_err(StoreError::from)?;
                    Ok(Executed::Recorded(status, body))
                }
            }
        }
    })
}

/// 409 `policy_version_exists`: `policy`'s version is stored with other content.
fn version_exists(policy: &Policy) -> ApiError {
    ApiError::Conflict {
        code: "policy_version_exists",
        message: match policy.version.checked_add(1) {
            Some(next) => format!(
                "policy {} version {} is already stored with other content; policies \
                 are immutable, publish version {next}",
                policy.id, policy.version
            ),
            None => format!(
                "policy {} version {} is already stored with other content; policies \
                 are immutable and no later version is possible, publish it under a \
                 new id",
                policy.id, policy.version
            ),
        },
    }
}

/// The longest policy id a new policy may have.
pub const POLICY_ID_MAX: usize = 64;

/// A new policy's id is a slug — `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`, and not `.` or
/// `..` — so it is one path segment of `GET /v1/policies/{policy_id}` as it stands (no
/// `/`, `?`, `%`, space or dot segment to escape) and one URL per policy. Checked where
/// policies are published only: one stored before the rule still reads and opens
/// payments.
fn check_policy_id(id: &str) -> ApiResult<()> {
    let ok = (1..=POLICY_ID_MAX).contains(&id.len())
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        return Ok(());
    }
    Err(ApiError::Unprocessable {
        code: "invalid_policy",
        message: format!(
            "invalid policy at `id`: `{}` is not a policy id; an id is 1 to {POLICY_ID_MAX} \
             ASCII letters, digits, `.`, `_` and `-`, starting with a letter or digit (e.g. \
             `earnest-money`), so it can stand in a URL as it is",
            trustfold_core::error::echo(id)
        ),
        field: Some("id".into()),
    })
}

/// A stored policy's canonical JSON and hash: the given version, or the latest.
pub async fn load_policy(
    db: &Db,
    tenant: Uuid,
    id: &str,
    version: Option<u32>,
) -> ApiResult<Option<(String, Vec<u8>)>> {
    // No stored policy's id holds a control character (`Policy::validate_new`): such an
    // id finds nothing, on either engine (PostgreSQL would refuse a NUL in the query).
    if id.chars().any(char::is_control) {
        return Ok(None);
    }
    let row: Option<(String, Vec<u8>)> = on_read!(db, pool => {
        match version {
            Some(v) => sqlx::query_as(
                "SELECT body, hash FROM policies WHERE tenant_id = $1 AND policy_id = $2 \
                 AND version = $3",
            )
            .bind(tenant)
            .bind(id)
            .bind(i64::from(v))
            .fetch_optional(pool)
            .await,
            None => sqlx::query_as(
                "SELECT body, hash FROM policies WHERE tenant_id = $1 AND policy_id = $2 \
                 ORDER BY version DESC LIMIT 1",
            )
            .bind(tenant)
            .bind(id)
            .fetch_optional(pool)
            .await,
        }
        .map_err(StoreError::from)?
    });
    Ok(row)
}

/// `GET /v1/policies?after=&limit=`: the tenant's policies, by id: each one's latest
/// version (its id, version, name, hash and when it was published) and how many
/// versions it has. Paged by cursor: `after` is the `next` of the page before (a policy
/// id). API keys only.
async fn list_policies(
    State(state): State<AppState>,
    principal: Principal,
    query: Params,
) -> ApiResult<Response> {
    let tenant = principal.require_tenant()?;
    let q = params(query)?;
    let after = q.get("after").cloned().unwrap_or_default();
    if after.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            "after",
            "`after` must be a policy id (the `next` of the page before); policy ids hold \
             no control characters",
        ));
    }
    let limit = limit_param(&q, 100, 1000)?;
    type Row = (String, i64, String, Vec<u8>, i64, i64, i64);
    let mut rows: Vec<Row> = on_read!(&state.db, pool => {
        sqlx::query_as(
            "SELECT p.policy_id, p.version, p.body, p.hash, p.created_at_us, c.n, c.first_us \
             FROM policies p JOIN (SELECT policy_id, MAX(version) AS v, COUNT(*) AS n, \
             MIN(created_at_us) AS first_us FROM policies WHERE tenant_id = $1 AND policy_id > $2 \
             GROUP BY policy_id ORDER BY policy_id LIMIT $3) c \
             ON p.policy_id = c.policy_id AND p.version = c.v \
             WHERE p.tenant_id = $1 ORDER BY p.policy_id",
        )
        .bind(tenant)
        .bind(&after)
        .bind(i64::from(limit) + 1)
        .fetch_all(pool)
        .await
        .map_err(StoreError::from)?
    });
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let mut list = Vec::with_capacity(rows.len());
    for (id, version, body, hash, created, versions, first) in &rows {
        let doc: serde_json::Value =
            serde_json::from_str(body).map_err(|e| ApiError::Internal(e.to_string()))?;
        list.push(serde_json::json!({
            "id": id,
            "version": version,
            "name": doc.get("name"),
            "hash": hex::encode(hash),
            "versions": versions,
            "created_at": crate::webhooks::time_us(*created),
            "first_created_at": crate::webhooks::time_us(*first),
        }));
    }
    let next = rows.last().map(|r| r.0.clone());
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"policies": list, "has_more": has_more, "next": next}),
    ))
}

async fn get_policy(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    query: Params,
) -> ApiResult<Response> {
    let tenant = principal.require_tenant()?;
    let q = params(query)?;
    let version = param_u64(&q, "version")?
        .map(|v| {
            u32::try_from(v).map_err(|_| {
                ApiError::bad_request(
                    "invalid_parameter",
                    "version",
                    format!("`version` must be a policy version from 1 to {}", u32::MAX),
                )
            })
        })
        .transpose()?;
    let (body, hash) = load_policy(&state.db, tenant, &id, version)
        .await?
        .ok_or_else(|| ApiError::NotFound {
            code: "unknown_policy",
            message: match version {
                Some(v) => format!("no policy {id} version {v}"),
                None => format!("no policy {id}"),
            },
        })?;
    policy_response(StatusCode::OK, &body, &hash).map(|(status, body)| json_bytes(status, body))
}
