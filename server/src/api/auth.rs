//! Credentials: tenant API keys (random secrets stored as SHA-256 hashes, compared in
//! constant time, rotatable with overlap) and participant tokens (HMAC-SHA256 signed by
//! the server, bound to one tenant, payment and party, short-lived).
//!
//! - API key: `tfk_<key id, 32 hex>_<secret, 43 base64url>`.
//! - Participant token: `tft_<base64url payload>.<base64url HMAC>`; the payload is JSON
//!   `{"tenant","payment","party","roles","exp"}` (`exp` in Unix seconds), with `"gen"`
//!   after them once the party's tokens on the payment were revoked (see
//!   [`TokenClaims::gen`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use trustfold_core::policy::Role;
use uuid::Uuid;

use super::error::ApiError;
use super::AppState;
use crate::db::{now_us, on_read};
use crate::StoreError;

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Principal {
    /// A tenant, with its API key: sees and does everything in its own data.
    Tenant {
        /// The tenant.
        tenant: Uuid,
    },
    /// A participant, with a token: one payment, one party, the policy's view.
    Participant(TokenClaims),
}

impl Principal {
    /// The tenant whose data is accessed.
    pub fn tenant(&self) -> Uuid {
        match self {
            Principal::Tenant { tenant } => *tenant,
            Principal::Participant(c) => c.tenant,
        }
    }

    /// A short description for idempotency hashing.
    pub fn scope(&self) -> String {
        match self {
            Principal::Tenant { tenant } => format!("tenant:{tenant}"),
            Principal::Participant(c) => format!("party:{}:{}", c.payment, c.party),
        }
    }

    /// Requires a tenant API key (participant tokens get 403).
    pub fn require_tenant(&self) -> Result<Uuid, ApiError> {
        match self {
            Principal::Tenant { tenant } => Ok(*tenant),
            Principal::Participant(_) => Err(ApiError::Forbidden {
                code: "token_scope",
                message: "a participant token may only read and act on its own payment; \
                          use the tenant's API key"
                    .into(),
            }),
        }
    }

    /// Checks that the caller may touch `payment` (a token only its own: another
    /// payment is reported as unknown, revealing nothing).
    pub fn check_payment(&self, payment: Uuid) -> Result<(), ApiError> {
        match self {
            Principal::Participant(c) if c.payment != payment => {
                Err(ApiError::unknown_payment(payment))
            }
            _ => Ok(()),
        }
    }
}

/// What a participant token says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenClaims {
    /// The tenant.
    pub tenant: Uuid,
    /// The payment.
    pub payment: Uuid,
    /// The party.
    pub party: Uuid,
    /// The roles the token may act in and see as.
    pub roles: Vec<Role>,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// The party's token generation on the payment when it was minted: 0 until the
    /// tenant first revokes the party's tokens there, and a revocation moves to the next
    /// one (tokens of earlier generations are refused).
    ///
    /// Written only when it is not 0, and read as 0 when absent: during a rolling
    /// deploy over one database, a server process from before this field existed
    /// refuses any claim it does not know (`deny_unknown_fields`), so a token minted by
    /// a newer process stays readable by it unless the party's tokens on that payment
    /// were ever revoked (then the older process refuses the token; it would not have
    /// checked the revocation). Tokens minted before the field existed are generation 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gen: i64,
}

/// Whether a token's generation is the first (not written into the token).
fn is_zero(gen: &i64) -> bool {
    *gen == 0
}

impl TokenClaims {
    /// Whether the token's time is up (checked at every request, and by an open live
    /// stream at every read).
    pub fn expired(&self) -> bool {
        self.exp <= now_us() / 1_000_000
    }
}

type HmacSha256 = Hmac<Sha256>;

/// The key participant tokens are signed with, derived from the server secret.
#[derive(Clone)]
pub struct TokenKey([u8; 32]);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// Derives the token key from the server's secret.
    pub fn derive(server_secret: &[u8; 32]) -> Self {
        let mut h = Sha256::new();
        h.update(b"trustfold-participant-token-v1\0");
        h.update(server_secret);
        TokenKey(h.finalize().into())
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length.
        match HmacSha256::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable!("hmac takes keys of any length"),
        }
    }

    /// Signs claims into a token string.
    pub fn sign(&self, claims: &TokenClaims) -> String {
        let payload = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        let sig = B64.encode(mac.finalize().into_bytes());
        format!("tft_{payload}.{sig}")
    }

    /// Verifies a token string: signature, then expiry.
    pub fn verify(&self, token: &str) -> Result<TokenClaims, ApiError> {
        let bad = || ApiError::Unauthorized("the participant token is invalid".into());
        let rest = token.strip_prefix("tft_").ok_or_else(bad)?;
        let (payload, sig) = rest.split_once('.').ok_or_else(bad)?;
        let sig = B64.decode(sig).map_err(|_| bad())?;
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        mac.verify_slice(&sig).map_err(|_| bad())?;
        let claims: TokenClaims =
            serde_json::from_slice(&B64.decode(payload).map_err(|_| bad())?).map_err(|_| bad())?;
        if claims.expired() {
            return Err(ApiError::TokenExpired(
                "the participant token has expired; ask for a new one".into(),
            ));
        }
        Ok(claims)
    }
}

/// A new API key: its id, the full secret string (shown once) and its hash.
pub struct NewApiKey {
    /// The key's id (its public part).
    pub key_id: Uuid,
    /// The whole key, shown to the tenant once.
    pub secret: String,
    /// SHA-256 of the whole key, stored.
    pub hash: [u8; 32],
}

/// Makes a random API key.
pub fn new_api_key() -> Result<NewApiKey, ApiError> {
    let mut raw = [0u8; 32];
    getrandom::getrandom(&mut raw)
        .map_err(|e| ApiError::Internal(format!("no randomness: {e}")))?;
    let key_id = Uuid::new_v4();
    let secret = format!("tfk_{}_{}", key_id.simple(), B64.encode(raw));
    let hash = Sha256::digest(secret.as_bytes()).into();
    Ok(NewApiKey {
        key_id,
        secret,
        hash,
    })
}

/// Constant-time comparison of two secrets by their SHA-256 hashes.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    let ha = Sha256::digest(a.as_bytes());
    let hb = Sha256::digest(b.as_bytes());
    ha.ct_eq(&hb).into()
}

/// The bearer credential of a request, if any.
pub fn bearer(parts: &Parts) -> Option<&str> {
    bearer_in(&parts.headers)
}

/// The bearer credential in `headers`, if any.
pub fn bearer_in(headers: &axum::http::HeaderMap) -> Option<&str> {
    let v = headers.get(axum::http::header::AUTHORIZATION)?;
    let v = v.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// How long this process trusts a looked-up API key row before reading it again. A
/// rotation in this process clears the cache at once; one made through another process
/// over the same database is seen within this time.
pub const API_KEY_CACHE_TTL: Duration = Duration::from_secs(2);
/// Largest number of cached keys (the cache is emptied when full).
const API_KEY_CACHE_MAX: usize = 10_000;

/// A key's stored row, as cached.
#[derive(Debug, Clone)]
struct CachedKey {
    tenant: Uuid,
    hash: Vec<u8>,
    expires_at_us: Option<i64>,
    fetched: Instant,
}

/// Recently looked-up API key rows by key id, so a command does not cost a database
/// round trip to authenticate. The secret is still checked (SHA-256, constant time) and
/// the expiry against the clock on every request; only the row is cached, for at most
/// [`API_KEY_CACHE_TTL`]. Unknown key ids are never cached.
#[derive(Debug, Default)]
pub struct ApiKeyCache {
    rows: Mutex<HashMap<Uuid, CachedKey>>,
    /// Bumped by every [`ApiKeyCache::clear`]: a row read before a rotation's clear
    /// (its read raced the rotation's commit) is not cached after it.
    generation: std::sync::atomic::AtomicU64,
}

impl ApiKeyCache {
    /// The generation to give [`ApiKeyCache::put`] for a row about to be read.
    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn get(&self, key_id: Uuid) -> Option<CachedKey> {
        let rows = self.rows.lock().ok()?;
        rows.get(&key_id)
            .filter(|c| c.fetched.elapsed() < API_KEY_CACHE_TTL)
            .cloned()
    }

    /// Caches `row`, read in `generation`, unless the cache was cleared since.
    fn put(&self, generation: u64, key_id: Uuid, row: CachedKey) {
        if let Ok(mut rows) = self.rows.lock() {
            if self.generation() != generation {
                return;
            }
            if rows.len() >= API_KEY_CACHE_MAX {
                rows.clear();
            }
            rows.insert(key_id, row);
        }
    }

    /// Forgets every cached row (after a rotation changed expiries).
    pub fn clear(&self) {
        if let Ok(mut rows) = self.rows.lock() {
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            rows.clear();
        }
    }
}

/// The tenant of API key `key`: 401 `unauthorized` unless it is valid now (its row
/// cached for at most [`API_KEY_CACHE_TTL`]).
pub(crate) async fn check_api_key(state: &AppState, key: &str) -> Result<Uuid, ApiError> {
    let bad = || ApiError::Unauthorized("the API key is invalid, expired or revoked".into());
    let rest = key.strip_prefix("tfk_").ok_or_else(bad)?;
    let (id, _) = rest.split_once('_').ok_or_else(bad)?;
    let key_id = Uuid::try_parse(id).map_err(|_| bad())?;
    let cached = match state.api_keys.get(key_id) {
        Some(c) => c,
        None => {
            let generation = state.api_keys.generation();
            let row: Option<(Uuid, Vec<u8>, Option<i64>)> = on_read!(&state.db, pool => {
                sqlx::query_as(
                    "SELECT tenant_id, key_hash, expires_at_us FROM api_keys WHERE key_id = $1",
                )
                .bind(key_id)
                .fetch_optional(pool)
                .await
                .map_err(crate::StoreError::from)?
            });
            let (tenant, hash, expires_at_us) = row.ok_or_else(bad)?;
            let c = CachedKey {
                tenant,
                hash,
                expires_at_us,
                fetched: Instant::now(),
            };
            state.api_keys.put(generation, key_id, c.clone());
            c
        }
    };
    let given: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    if !bool::from(given.as_slice().ct_eq(cached.hash.as_slice())) {
        return Err(bad());
    }
    if cached.expires_at_us.is_some_and(|e| e <= now_us()) {
        return Err(bad());
    }
    Ok(cached.tenant)
}

/// The address of the TCP peer that sent the request: [`crate::app::start`] serves the
/// router with [`ConnectInfo`]; without it (a router served otherwise), `None`, and no
/// limit per address applies.
pub fn client_ip(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

/// `checked`, the outcome of checking a credential `client` sent, after counting it
/// against the client's address if it is a failure that counts: 401 `unauthorized` (a
/// key or token this server did not issue, tampered with, or a key that expired or was
/// revoked). Expired and revoked participant tokens do not count (see
/// [`super::limits`]).
pub(crate) fn count_failure<T>(
    state: &AppState,
    client: Option<IpAddr>,
    checked: Result<T, ApiError>,
) -> Result<T, ApiError> {
    if let Err(ApiError::Unauthorized(_)) = &checked {
        state.limits.failed_authentication(client);
    }
    checked
}

/// The caller's address, once it is known not to be over its limit on failed
/// authentications (else the extraction is a 429 `rate_limited`): for the routes that
/// check a credential of their own (the admin token of `POST /v1/tenants`) before
/// their body is read. [`Principal`] checks the same itself.
#[derive(Debug, Clone, Copy)]
pub struct AdmittedClient(pub Option<IpAddr>);

impl FromRequestParts<AppState> for AdmittedClient {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let client = client_ip(parts);
        state.limits.admit_client(client)?;
        Ok(AdmittedClient(client))
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // An address that failed too often is refused before its credential is looked at.
        let AdmittedClient(client) = AdmittedClient::from_request_parts(parts, state).await?;
        let Some(cred) = bearer(parts) else {
            return Err(ApiError::NoCredential(
                "send an API key or participant token as `Authorization: Bearer …`".into(),
            ));
        };
        let checked = if cred.starts_with("tft_") {
            state.token_key.verify(cred).map(Principal::Participant)
        } else {
            check_api_key(state, cred)
                .await
                .map(|tenant| Principal::Tenant { tenant })
        };
        let principal = count_failure(state, client, checked)?;
        state.limits.admit(&principal)?;
        if let Principal::Participant(c) = &principal {
            check_not_revoked(state, c).await?;
        }
        Ok(principal)
    }
}

/// The query parameter that carries a participant token where headers cannot be sent.
pub const ACCESS_TOKEN: &str = "access_token";

/// The caller of the live stream (`GET /v1/payments/{id}/stream`): the bearer
/// credential as everywhere, or a participant token as `?access_token=`, because a
/// browser's `EventSource` cannot send headers (RFC 6750 §2.3). The token gets the
/// same checks as in the header (signature, expiry, its own payment only). API keys
/// are refused there: they are long-lived and URLs end up in logs and histories.
/// Sending both a header and the parameter is a 400.
#[derive(Debug, Clone)]
pub struct StreamPrincipal(pub Principal);

impl FromRequestParts<AppState> for StreamPrincipal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(token) = query_access_token(parts)? else {
            return Principal::from_request_parts(parts, state)
                .await
                .map(StreamPrincipal);
        };
        if parts
            .headers
            .contains_key(axum::http::header::AUTHORIZATION)
        {
            return Err(ApiError::bad_request(
                "invalid_request",
                ACCESS_TOKEN,
                "send the credential either as `Authorization: Bearer …` or as \
                 `?access_token=`, not both",
            ));
        }
        let AdmittedClient(client) = AdmittedClient::from_request_parts(parts, state).await?;
        if !token.starts_with("tft_") {
            return Err(ApiError::Unauthorized(
                "`access_token` takes a participant token (tft_…); send API keys as \
                 `Authorization: Bearer …`"
                    .into(),
            ));
        }
        let claims = count_failure(state, client, state.token_key.verify(&token))?;
        let principal = Principal::Participant(claims.clone());
        state.limits.admit(&principal)?;
        check_not_revoked(state, &claims).await?;
        Ok(StreamPrincipal(principal))
    }
}

/// The party's token generation on the payment: 0 until the tenant first revokes its
/// tokens, one more with each revocation.
pub async fn token_generation(
    state: &AppState,
    tenant: Uuid,
    payment: Uuid,
    party: Uuid,
) -> Result<i64, ApiError> {
    let generation: Option<i64> = on_read!(&state.db, pool => {
        sqlx::query_scalar(
            "SELECT generation FROM token_revocations WHERE payment_id = $1 \
             AND party_id = $2 AND tenant_id = $3",
        )
        .bind(payment)
        .bind(party)
        .bind(tenant)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::from)?
    });
    Ok(generation.unwrap_or(0))
}

/// Whether the tenant revoked `claims`' token (`POST /v1/payments/{id}/tokens/revoke`:
/// every token of the party on the payment minted before that, so of an earlier
/// generation). A token minted while a revocation runs may be refused, never the other
/// way round; no clocks are compared.
pub async fn revoked(state: &AppState, claims: &TokenClaims) -> Result<bool, ApiError> {
    Ok(claims.gen < token_generation(state, claims.tenant, claims.payment, claims.party).await?)
}

/// 401 `token_revoked` for a revoked token.
async fn check_not_revoked(state: &AppState, claims: &TokenClaims) -> Result<(), ApiError> {
    if revoked(state, claims).await? {
        return Err(ApiError::TokenRevoked(
            "this participant token was revoked by the tenant; ask it for a new one".into(),
        ));
    }
    Ok(())
}

/// The `access_token` query parameter, if any (a malformed query is a 400).
fn query_access_token(parts: &Parts) -> Result<Option<String>, ApiError> {
    if parts.uri.query().is_none() {
        return Ok(None);
    }
    let axum::extract::Query(pairs) =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&parts.uri).map_err(|e| {
            ApiError::bad_request(
                "invalid_parameter",
                ACCESS_TOKEN,
                format!("malformed query string: {e}"),
            )
        })?;
    let mut found = pairs.into_iter().filter(|(k, _)| k == ACCESS_TOKEN);
    let first = found.next();
    if found.next().is_some() {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            ACCESS_TOKEN,
            "`access_token` given more than once",
        ));
    }
    Ok(first.map(|(_, v)| v))
}

/// `uri` for logs, with the value of any `access_token` parameter replaced by `…`.
pub fn loggable_uri(uri: &axum::http::Uri) -> String {
    let Some(query) = uri.query() else {
        return uri.to_string();
    };
    // The name as the server reads it (percent-decoded, `+` as a space): an encoded
    // `access%5Ftoken` is the same parameter, and its value is kept out of logs too.
    let is_token = |k: &str| {
        (k.contains('%') || k.contains('+') || k == ACCESS_TOKEN)
            && url_decoded(k).as_deref() == Some(ACCESS_TOKEN)
    };
    if !query
        .split('&')
        .any(|kv| is_token(kv.split('=').next().unwrap_or(kv)))
    {
        return uri.to_string();
    }
    let redacted: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if is_token(k) => format!("{k}=…"),
            _ => kv.to_owned(),
        })
        .collect();
    format!("{}?{}", uri.path(), redacted.join("&"))
}

/// A query string's name as the server reads it: percent-decoded, `+` as a space
/// (`application/x-www-form-urlencoded`, by the `url` crate's parser).
fn url_decoded(s: &str) -> Option<String> {
    url::form_urlencoded::parse(s.as_bytes())
        .next()
        .map(|(name, _)| name.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key's row read while a rotation committed (before its clear) is not cached
    /// after the clear: the rotated-out key would have held for the cache's 2 s (a
    /// live stream's poll read it; the stream then took the next event under it).
    #[test]
    fn a_row_read_before_a_clear_is_not_cached_after_it() {
        let cache = ApiKeyCache::default();
        let id = Uuid::from_u128(7);
        let row = CachedKey {
            tenant: Uuid::from_u128(1),
            hash: vec![0; 32],
            expires_at_us: None,
            fetched: Instant::now(),
        };
        let read_at = cache.generation();
        cache.clear();
        cache.put(read_at, id, row.clone());
        assert!(cache.get(id).is_none(), "a row read before the clear");
        cache.put(cache.generation(), id, row);
        assert!(cache.get(id).is_some(), "a row read after it");
    }

    /// `TokenClaims` as a server process from before `gen` reads them.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct ClaimsBeforeGen {
        tenant: Uuid,
        payment: Uuid,
        party: Uuid,
        roles: Vec<Role>,
        exp: i64,
    }

    fn payload(token: &str) -> serde_json::Value {
        let (payload, _) = token
            .strip_prefix("tft_")
            .and_then(|t| t.split_once('.'))
            .expect("tft_<payload>.<mac>");
        serde_json::from_slice(&B64.decode(payload).expect("base64url")).expect("JSON")
    }

    #[test]
    fn a_first_generation_token_is_minted_without_gen_and_stays_readable_by_older_servers() {
        let key = TokenKey::derive(&[7; 32]);
        let claims = |gen| TokenClaims {
            tenant: Uuid::new_v4(),
            payment: Uuid::new_v4(),
            party: Uuid::new_v4(),
            roles: vec![Role::new("buyer")],
            exp: now_us() / 1_000_000 + 600,
            gen,
        };

        let first = claims(0);
        let json = serde_json::to_value(&first).expect("serializes");
        assert!(json.get("gen").is_none(), "{json}");
        assert_eq!(
            serde_json::from_value::<TokenClaims>(json).expect("parses"),
            first
        );
        let token = key.sign(&first);
        let minted = payload(&token);
        assert!(minted.get("gen").is_none(), "{minted}");
        assert_eq!(key.verify(&token).expect("verifies"), first);
        serde_json::from_value::<ClaimsBeforeGen>(minted).expect("an older server reads it");

        let revoked_once = claims(1);
        let json = serde_json::to_value(&revoked_once).expect("serializes");
        assert_eq!(json["gen"], 1, "{json}");
        assert_eq!(
            serde_json::from_value::<TokenClaims>(json).expect("parses"),
            revoked_once
        );
        let token = key.sign(&revoked_once);
        let minted = payload(&token);
        assert_eq!(minted["gen"], 1, "{minted}");
        assert_eq!(key.verify(&token).expect("verifies"), revoked_once);
        // An older server, which does not check revocations, refuses it.
        serde_json::from_value::<ClaimsBeforeGen>(minted).expect_err("unknown field `gen`");
    }

    #[test]
    fn loggable_uri_hides_the_access_token() {
        let uri: axum::http::Uri = "/v1/payments/x/stream?after=3&access_token=tft_abc.def"
            .parse()
            .expect("uri");
        assert_eq!(
            loggable_uri(&uri),
            "/v1/payments/x/stream?after=3&access_token=…"
        );
        let plain: axum::http::Uri = "/v1/payments?limit=2".parse().expect("uri");
        assert_eq!(loggable_uri(&plain), "/v1/payments?limit=2");
        // Encoded names are the same parameter to the server, and hidden too.
        let encoded: axum::http::Uri = "/s?access%5Ftoken=tft_secret&%61ccess_token=tft_2&a=%"
            .parse()
            .expect("uri");
        assert_eq!(
            loggable_uri(&encoded),
            "/s?access%5Ftoken=…&%61ccess_token=…&a=%"
        );
        assert_eq!(url_decoded("a%2"), Some("a%2".into()));
        assert_eq!(url_decoded("x+y%41"), Some("x yA".into()));
    }
}
