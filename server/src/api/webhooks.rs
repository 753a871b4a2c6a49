//! `/v1/webhooks`: a tenant's webhook endpoints (how they are sent:
//! [`crate::webhooks`]).
//!
//! Registering is idempotent by URL (as parsed: `HTTPS://Example.com` is
//! `https://example.com/`): a tenant has one endpoint per URL, and registering
//! the same URL with the same event types again answers the endpoint made first (200,
//! with its secret), so a retry after a lost answer is safe; with other event types it
//! is a 409 `webhook_exists`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::auth::Principal;
use super::body::{parse_json, Body};
use super::error::{ApiError, ApiResult};
use super::{json, limit_param, param_u64, params, parse_id, AppState, Params};
use crate::db::{now_us, on_read, on_write};
use crate::sealed::Purpose;
use crate::webhooks::{
    check_url, delivery, known_event_type, listed, new_secret, previous_through, secret_text,
    DeliveryRow, ListedRow, DELIVERY, LISTED,
};
use crate::StoreError;

/// The first key of the PostgreSQL advisory lock that orders one tenant's
/// registrations ("tfwh").
const WEBHOOK_LOCK: i32 = 0x7466_7768;

/// Most endpoints per tenant.
pub const MAX_PER_TENANT: i64 = 16;
/// Longest overlap of an old secret after a rotation: 7 days.
const MAX_OVERLAP_SECS: u64 = 7 * 86_400;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewWebhook {
    url: String,
    #[serde(default)]
    event_types: Vec<String>,
    #[serde(default)]
    after: Option<u64>,
}

fn unprocessable(code: &'static str, field: &str, message: impl Into<String>) -> ApiError {
    ApiError::Unprocessable {
        code,
        message: message.into(),
        field: Some(field.to_owned()),
    }
}

fn unknown_webhook(id: Uuid) -> ApiError {
    ApiError::NotFound {
        code: "unknown_webhook",
        message: format!("no webhook {id}"),
    }
}

/// The endpoint's answer with its secret (registering, rotating).
fn with_secret(row: &ListedRow, secret: &[u8]) -> serde_json::Value {
    let mut v = listed(row);
    v["secret"] = json!(secret_text(secret));
    v
}

/// The tenant's webhook `id` as listed, or a 404 `unknown_webhook`.
async fn listed_row(state: &AppState, tenant: Uuid, id: Uuid) -> ApiResult<ListedRow> {
    let row: Option<ListedRow> = on_read!(&state.db, pool => {
        sqlx::query_as(&format!(
            "SELECT {LISTED} FROM webhooks WHERE tenant_id = $1 AND webhook_id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::from)?
    });
    row.ok_or_else(|| unknown_webhook(id))
}

/// Runs `sql` (`… WHERE tenant_id = $1 AND webhook_id = $2`) on the tenant's webhook
/// `id`; a 404 `unknown_webhook` when it touched no row.
async fn on_the_row(state: &AppState, sql: &str, tenant: Uuid, id: Uuid) -> ApiResult<()> {
    let n = on_write!(&state.db, pool => {
        sqlx::query(sql)
            .bind(tenant)
            .bind(id)
            .execute(pool)
            .await
            .map_err(StoreError::from)?
            .rows_affected()
    });
    if n == 0 {
        return Err(unknown_webhook(id));
    }
    Ok(())
}

/// `POST /v1/webhooks`: registers an endpoint for the tenant's events after `after`
/// (default: from now on).
pub async fn create_webhook(
    State(state): State<AppState>,
    principal: Principal,
    Body(body): Body,
) -> ApiResult<Response> {
    let tenant = principal.require_tenant()?;
    let req: NewWebhook = parse_json(&body)?;
    // Stored and compared as parsed (`HTTPS://Example.com` is `https://example.com/`,
    // control characters percent-encoded), so one endpoint per URL whatever its spelling.
    let url = check_url(&req.url, state.webhooks.allow_private)
        .map_err(|m| unprocessable("invalid_url", "url", m))?
        .to_string();
    let mut types = Vec::with_capacity(req.event_types.len());
    for (i, t) in req.event_types.iter().enumerate() {
        if !known_event_type(t) {
            return Err(unprocessable(
                "unknown_event_type",
                &format!("event_types[{i}]"),
                format!(
                    "`{}` is not an event type (see docs/EVENTS.md; leave event_types out for \
                     every event)",
                    trustfold_core::error::echo(t)
                ),
            ));
        }
        if types.contains(t) {
            return Err(unprocessable(
                "duplicate_event_type",
                &format!("event_types[{i}]"),
                format!("`{t}` is listed twice"),
            ));
        }
        types.push(t.clone());
    }
    types.sort();
    let types_json =
        serde_json::to_string(&types).map_err(|e| ApiError::Internal(e.to_string()))?;
    let last: Option<i64> = on_read!(&state.db, pool => {
        sqlx::query_scalar("SELECT MAX(position) FROM events WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_one(pool)
            .await
            .map_err(StoreError::from)?
    });
    let last = last.unwrap_or(0);
    let position = match req.after {
        None => last,
        Some(a) => match i64::try_from(a) {
            Ok(a) if a <= last => a,
            _ => {
                return Err(unprocessable(
                    "invalid_position",
                    "after",
                    format!(
                        "after is {a}, past the tenant's last position {last}: give 0 for every \
                         event, or leave it out for events from now on"
                    ),
                ))
            }
        },
    };
    let (secret, _) = new_secret()?;
    let id = Uuid::new_v4();
    // Sealed when the server has a secrets key (`crate::sealed`), bound to this id.
    let stored = state.at_rest.store(&Purpose::Webhook(id), &secret)?;
    let now = now_us();
    let postgres = state.db.is_postgres();
    let inserted = on_write!(&state.db, pool => {
        let mut tx = pool.begin().await.map_err(StoreError::from)?;
        if postgres {
            // Registrations of one tenant one at a time, so that concurrent ones cannot
            // pass the limit together (SQLite has a single writer already).
            let key = i64::from_be_bytes(tenant.as_bytes()[..8].try_into().unwrap_or([0; 8]));
            sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
                .bind(WEBHOOK_LOCK)
                .bind(i32::try_from(key & 0x7fff_ffff).unwrap_or(0))
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
        }
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhooks WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        let exists: Option<Uuid> =
            sqlx::query_scalar("SELECT webhook_id FROM webhooks WHERE tenant_id = $1 AND url = $2")
                .bind(tenant)
                .bind(&url)
                .fetch_optional(&mut *tx)
                .await
                .map_err(StoreError::from)?;
        if exists.is_none() && count >= MAX_PER_TENANT {
            return Err(unprocessable(
                "too_many_webhooks",
                "url",
                format!(
                    "a tenant has at most {MAX_PER_TENANT} webhooks; delete one first \
                     (DELETE /v1/webhooks/{{webhook_id}})"
                ),
            ));
        }
        let n = sqlx::query(
            "INSERT INTO webhooks (webhook_id, tenant_id, url, event_types, secret, \
             previous_secrets, position, attempts, next_attempt_at_us, created_at_us) \
             VALUES ($1, $2, $3, $4, $5, '[]', $6, 0, 0, $7) \
             ON CONFLICT (tenant_id, url) DO NOTHING",
        )
        .bind(id)
        .bind(tenant)
        .bind(&url)
        .bind(&types_json)
        .bind(&stored)
        .bind(position)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?
        .rows_affected();
        tx.commit().await.map_err(StoreError::from)?;
        n
    });
    if inserted == 1 {
        let row = listed_row(&state, tenant, id).await?;
        return Ok(json(StatusCode::CREATED, &with_secret(&row, &secret)));
    }
    // The URL is registered already (a retry, or a race with one).
    let existing: Option<Uuid> = on_read!(&state.db, pool => {
        sqlx::query_scalar("SELECT webhook_id FROM webhooks WHERE tenant_id = $1 AND url = $2")
            .bind(tenant)
            .bind(&url)
            .fetch_optional(pool)
            .await
            .map_err(StoreError::from)?
    });
    let deleted = || ApiError::Conflict {
        code: "webhook_exists",
        message: "the URL was registered and deleted meanwhile; register it again".into(),
    };
    let Some(existing) = existing else {
        return Err(deleted());
    };
    let row = listed_row(&state, tenant, existing)
        .await
        .map_err(|e| match e {
            ApiError::NotFound { .. } => deleted(),
            other => other,
        })?;
    let secret: Option<Vec<u8>> = on_read!(&state.db, pool => {
        sqlx::query_scalar("SELECT secret FROM webhooks WHERE webhook_id = $1")
            .bind(existing)
            .fetch_optional(pool)
            .await
            .map_err(StoreError::from)?
    });
    let Some(secret) = secret else {
        return Err(deleted());
    };
    let secret = state.at_rest.load(&Purpose::Webhook(existing), &secret)?;
    if row.2 != types_json {
        return Err(ApiError::Conflict {
            code: "webhook_exists",
            message: format!(
                "webhook {} is registered for this URL with other event types; delete it first \
                 (DELETE /v1/webhooks/{})",
                row.0, row.0
            ),
        });
    }
    Ok(json(StatusCode::OK, &with_secret(&row, &secret)))
}

/// `GET /v1/webhooks`: the tenant's endpoints and how their delivery goes.
pub async fn list_webhooks(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Response> {
    let tenant = principal.require_tenant()?;
    let rows: Vec<ListedRow> = on_read!(&state.db, pool => {
        sqlx::query_as(&format!(
            "SELECT {LISTED} FROM webhooks WHERE tenant_id = $1 ORDER BY created_at_us, webhook_id"
        ))
        .bind(tenant)
        .fetch_all(pool)
        .await
        .map_err(StoreError::from)?
    });
    let list: Vec<serde_json::Value> = rows.iter().map(listed).collect();
    Ok(json(StatusCode::OK, &json!({ "webhooks": list })))
}

/// `GET /v1/webhooks/{webhook_id}`
pub async fn get_webhook(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let tenant = principal.require_tenant()?;
    let id = parse_id(&id, "webhook_id")?;
    let row = listed_row(&state, tenant, id).await?;
    Ok(json(StatusCode::OK, &listed(&row)))
}

/// `DELETE /v1/webhooks/{webhook_id}`: nothing more is sent to it (a request in flight
/// may still arrive), and its delivery log goes with it.
pub async fn delete_webhook(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let tenant = principal.require_tenant()?;
    let id = parse_id(&id, "webhook_id")?;
    let n = on_write!(&state.db, pool => {
        let mut tx = pool.begin().await.map_err(StoreError::from)?;
        // The endpoint first: on PostgreSQL this waits for a sender logging a try
        // (which holds the endpoint's row), so its try is deleted below too.
        let n = sqlx::query("DELETE FROM webhooks WHERE tenant_id = $1 AND webhook_id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?
            .rows_affected();
        sqlx::query("DELETE FROM webhook_deliveries WHERE tenant_id = $1 AND webhook_id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        n
    });
    if n == 0 {
        return Err(unknown_webhook(id));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/webhooks/{webhook_id}/deliveries?before=&limit=`: the endpoint's delivery
/// log, every try of every event (the newest [`crate::webhooks::KEEP_DELIVERIES`] by
/// default), newest first. Each try has a `seq` (1, 2, … per endpoint); a page ends
/// with `next`, the `seq` to give as `before` for the older ones, while `has_more`.
pub async fn list_deliveries(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    query: Params,
) -> ApiResult<Response> {
    let tenant = principal.require_tenant()?;
    let id = parse_id(&id, "webhook_id")?;
    let q = params(query)?;
    let before = param_u64(&q, "before")?;
    let limit = limit_param(&q, 100, 1000)?;
    let known: Option<i64> = on_read!(&state.db, pool => {
        sqlx::query_scalar(
            "SELECT deliveries FROM webhooks WHERE tenant_id = $1 AND webhook_id = $2",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::from)?
    });
    if known.is_none() {
        return Err(unknown_webhook(id));
    }
    let below = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
    let mut rows: Vec<DeliveryRow> = on_read!(&state.db, pool => {
        sqlx::query_as(&format!(
            "SELECT {DELIVERY} FROM webhook_deliveries \
             WHERE tenant_id = $1 AND webhook_id = $2 AND seq < $3 \
             ORDER BY seq DESC LIMIT $4"
        ))
        .bind(tenant)
        .bind(id)
        .bind(below)
        .bind(i64::from(limit) + 1)
        .fetch_all(pool)
        .await
        .map_err(StoreError::from)?
    });
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = rows
        .last()
        .map_or(before.unwrap_or(0), |r| u64::try_from(r.0).unwrap_or(0));
    let list: Vec<serde_json::Value> = rows.iter().map(|r| delivery(id, r)).collect();
    Ok(json(
        StatusCode::OK,
        &json!({"webhook_id": id, "deliveries": list, "has_more": has_more, "next": next}),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Rotation {
    #[serde(default)]
    expire_previous_after_seconds: Option<u64>,
}

/// `POST /v1/webhooks/{webhook_id}/rotate-secret`: a new secret; requests carry the
/// signatures of the new one and of each secret a rotation retired, until that one's
/// overlap ends (24 hours by default, at most 7 days, 0 at once; at most
/// [`crate::webhooks::MAX_PREVIOUS`] at a time). Rotating again during an overlap keeps
/// both earlier secrets signing: after an answer was lost and the rotation repeated,
/// the secret the receivers know still signs, and receivers that already switched
/// keep working too.
pub async fn rotate_secret(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    Body(body): Body,
) -> ApiResult<Response> {
    let tenant = principal.require_tenant()?;
    let id = parse_id(&id, "webhook_id")?;
    super::not_idempotent(
        &headers,
        "POST /v1/webhooks/{webhook_id}/rotate-secret",
        super::HOLDS_A_SECRET,
        "after a lost answer, rotate again: the secret the receivers know keeps signing \
         until the overlap ends",
    )?;
    let req: Rotation = if body.iter().all(u8::is_ascii_whitespace) {
        Rotation::default()
    } else {
        parse_json(&body)?
    };
    let overlap = req.expire_previous_after_seconds.unwrap_or(86_400);
    if overlap > MAX_OVERLAP_SECS {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            "expire_previous_after_seconds",
            format!("the previous secret may stay valid for at most {MAX_OVERLAP_SECS} s (7 days)"),
        ));
    }
    let (secret, _) = new_secret()?;
    let until = now_us().saturating_add(
        i64::try_from(overlap)
            .unwrap_or(0)
            .saturating_mul(1_000_000),
    );
    // Read, retire the current secret into the list, write back if nobody rotated
    // meanwhile (compare-and-set on the secret); a concurrent rotation is tried again.
    let mut rotated = false;
    for _ in 0..5 {
        let row: Option<(Vec<u8>, String)> = on_write!(&state.db, pool => {
            sqlx::query_as(
                "SELECT secret, previous_secrets FROM webhooks \
                 WHERE tenant_id = $1 AND webhook_id = $2",
            )
            .bind(tenant)
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(StoreError::from)?
        });
        let Some((stored, previous)) = row else {
            return Err(unknown_webhook(id));
        };
        // Retired in clear, stored as the server keeps secrets (sealed with a secrets
        // key: `crate::sealed`); the compare-and-set is on the stored bytes.
        let purpose = Purpose::Webhook(id);
        let current = state.at_rest.load(&purpose, &stored)?;
        let previous = previous_through(&previous, |s| state.at_rest.load(&purpose, s))?;
        let previous = crate::webhooks::retire(&previous, &current, until, now_us());
        let previous = previous_through(&previous, |s| state.at_rest.store(&purpose, s))?;
        let new_stored = state.at_rest.store(&purpose, &secret)?;
        let n = on_write!(&state.db, pool => {
            sqlx::query(
                "UPDATE webhooks SET previous_secrets = $1, secret = $2 \
                 WHERE tenant_id = $3 AND webhook_id = $4 AND secret = $5",
            )
            .bind(&previous)
            .bind(&new_stored)
            .bind(tenant)
            .bind(id)
            .bind(&stored)
            .execute(pool)
            .await
            .map_err(StoreError::from)?
            .rows_affected()
        });
        if n == 1 {
            rotated = true;
            break;
        }
    }
    if !rotated {
        return Err(ApiError::Conflict {
            code: "rotation_conflict",
            message: "the secret was rotated by other requests meanwhile; read the webhook and \
                      rotate again if you still need to"
                .into(),
        });
    }
    let row = listed_row(&state, tenant, id).await?;
    Ok(json(StatusCode::OK, &with_secret(&row, &secret)))
}

/// `POST /v1/webhooks/{webhook_id}/retry`: a failing endpoint is tried again now
/// instead of after its pause (say, once the receiver is fixed).
pub async fn retry_webhook(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    let tenant = principal.require_tenant()?;
    let id = parse_id(&id, "webhook_id")?;
    super::not_idempotent(
        &headers,
        "POST /v1/webhooks/{webhook_id}/retry",
        "it stores no answer to replay, and needs none: it only moves the endpoint's next \
         attempt to now",
        "sending it again is safe: it answers the endpoint as it is then",
    )?;
    on_the_row(
        &state,
        "UPDATE webhooks SET next_attempt_at_us = 0 WHERE tenant_id = $1 AND webhook_id = $2",
        tenant,
        id,
    )
    .await?;
    let row = listed_row(&state, tenant, id).await?;
    // Wake the sender.
    let _ = state.notices.send(super::Notice {
        stream: Uuid::nil(),
        version: 0,
        events: None,
    });
    Ok(json(StatusCode::OK, &listed(&row)))
}
