//! Rail notices that overtook their transfer: held by the server, applied when a payment
//! records the transfer.
//!
//! A bank's webhook names a transfer by its reference only (`POST /v1/rail-notices`),
//! and it may arrive before the integrator recorded the submission under that reference
//! (`SubmitFunding`, `SubmitDisbursement`): the bank answered the transfer, its
//! settlement webhook raced the integrator's own call. No payment knows the reference
//! yet, so the server keeps the notice (202, `status: "held"`, table
//! `held_rail_notices`) instead of refusing it, and a background round, every second in
//! the process that runs the background projection (one per database), gives each held
//! notice to the payment once the `rail_refs` read model shows one recorded a transfer
//! under its reference: the core's `RailNotice`, as the built-in `rail` actor, through
//! the command path (stored state, version check, live streams, read models).
//!
//! - **What became of it** is kept: `applied` (with the payment), or `refused` (with
//!   the payment's rule's `code` and `message`, say a settlement of a transfer the rail
//!   already reported failed; or `ambiguous_rail_ref` when two payments recorded the
//!   reference by then). `GET /v1/rail-notices` lists a tenant's held notices (by
//!   `status`, `rail_ref`), `GET /v1/rail-notices/{notice_id}` reads one.
//! - **Dismissed** by the tenant while held (`DELETE /v1/rail-notices/{notice_id}`):
//!   a reference that will never be recorded here stops waiting (and counting against
//!   the limit below); the record is kept with `status: "dismissed"`.
//! - **In the order received.** Notices are applied oldest first, one at a time, so a
//!   settlement held before its return is applied first; the core de-duplicates the
//!   same notice sent twice.
//! - **Exactly once.** A held notice's command id is the notice's id, so after a crash
//!   between the append and the status update the round runs it again and the payment
//!   finds it applied already (a duplicate notice records nothing).
//! - **Bounded.** At most [`MAX_HELD_PER_TENANT`] wait per tenant at once (422
//!   `too_many_held_notices` after that: a reference that never comes is the
//!   integrator's to look at). A notice whose run failed (the database, not a rule) is
//!   tried again after a pause doubling from 1 s to a minute.
//!
//! ```
//! use trustfold_server::rail_notices::HeldStatus;
//!
//! assert_eq!(HeldStatus::parse("held"), Some(HeldStatus::Held));
//! assert_eq!(HeldStatus::Refused.as_str(), "refused");
//! assert_eq!(HeldStatus::parse("lost"), None);
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::watch;
use trustfold_core::command::RailOutcome;
use uuid::Uuid;

use crate::api::error::{ApiError, ApiResult};
use crate::api::AppState;
use crate::clock::next_pause;
use crate::db::{now_us, on_read, on_write};
use crate::webhooks::time_us;
use crate::StoreError;

/// Most notices waiting for their transfer per tenant.
pub const MAX_HELD_PER_TENANT: i64 = 10_000;
/// Held notices looked at per round.
const ROUND: i64 = 256;

/// What became of a held notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldStatus {
    /// Waiting for a payment to record a transfer under its reference.
    Held,
    /// Given to the payment, which recorded it (or found it a duplicate).
    Applied,
    /// The payment's rules refused it (or two payments recorded the reference).
    Refused,
    /// The tenant dismissed it while it was held (`DELETE /v1/rail-notices/{id}`): a
    /// transfer that will never be recorded here.
    Dismissed,
}

impl HeldStatus {
    /// The status as the API names it.
    pub fn as_str(self) -> &'static str {
        match self {
            HeldStatus::Held => "held",
            HeldStatus::Applied => "applied",
            HeldStatus::Refused => "refused",
            HeldStatus::Dismissed => "dismissed",
        }
    }

    /// The status named `s`, if it is one.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "held" => Some(HeldStatus::Held),
            "applied" => Some(HeldStatus::Applied),
            "refused" => Some(HeldStatus::Refused),
            "dismissed" => Some(HeldStatus::Dismissed),
            _ => None,
        }
    }
}

/// The stored columns of a held notice, in order ([`COLUMNS`]).
type Row = (
    Uuid,
    String,
    String,
    i64,
    String,
    Option<Uuid>,
    Option<String>,
    Option<String>,
    Option<i64>,
);

const COLUMNS: &str = "notice_id, rail_ref, notice, received_at_us, status, payment_id, code, \
                       message, settled_at_us";

/// A held notice as the API answers it.
fn to_json(r: &Row) -> Value {
    let (id, rail_ref, notice, received, status, payment, code, message, settled) = r;
    let notice: Value = serde_json::from_str(notice).unwrap_or(Value::Null);
    let refusal = match (code, message) {
        (Some(code), Some(message)) => json!({"code": code, "message": message}),
        _ => Value::Null,
    };
    json!({
        "id": id,
        "rail_ref": rail_ref,
        "notice": notice,
        "status": status,
        "received_at": time_us(*received),
        "payment_id": payment,
        "refusal": refusal,
        "settled_at": settled.map(time_us),
    })
}

fn too_many(held: i64) -> ApiError {
    ApiError::Unprocessable {
        code: "too_many_held_notices",
        message: format!(
            "{held} rail notices of this tenant already wait for transfers no payment has \
             recorded (at most {MAX_HELD_PER_TENANT}): record the transfers, or look at \
             GET /v1/rail-notices?status=held for references that never came"
        ),
        field: Some("rail_ref".into()),
    }
}

/// Holds `notice` about `rail_ref` under `id` (a retry with the same id finds the one
/// stored first) and answers it as stored.
pub(crate) async fn hold(
    state: &AppState,
    tenant: Uuid,
    id: Uuid,
    rail_ref: &str,
    notice: &RailOutcome,
) -> ApiResult<Vec<u8>> {
    if let Some(stored) = read(state, tenant, id).await? {
        return Ok(serde_json::to_vec(&stored).unwrap_or_default());
    }
    let held: i64 = on_read!(&state.db, pool => {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM held_rail_notices WHERE tenant_id = $1 AND status = 'held'",
        )
        .bind(tenant)
        .fetch_one(pool)
        .await
        .map_err(StoreError::from)?
    });
    if held >= MAX_HELD_PER_TENANT {
        return Err(too_many(held));
    }
    let text = serde_json::to_string(notice).map_err(|e| ApiError::Internal(e.to_string()))?;
    on_write!(&state.db, pool => {
        sqlx::query(
            "INSERT INTO held_rail_notices (notice_id, tenant_id, rail_ref, notice, \
             received_at_us, status) VALUES ($1, $2, $3, $4, $5, 'held') \
             ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(tenant)
        .bind(rail_ref)
        .bind(&text)
        .bind(now_us())
        .execute(pool)
        .await
        .map_err(StoreError::from)?;
    });
    let stored = read_from_writer(state, tenant, id).await?.ok_or_else(|| {
        // The id is another tenant's (ids are random or derived per tenant): never.
        ApiError::Internal("a held rail notice's id is taken by another tenant".into())
    })?;
    Ok(serde_json::to_vec(&stored).unwrap_or_default())
}

/// The query of one notice by tenant and id, on either pool.
fn by_id_sql() -> String {
    format!("SELECT {COLUMNS} FROM held_rail_notices WHERE tenant_id = $1 AND notice_id = $2")
}

/// One held notice of `tenant`, as the API answers it.
pub(crate) async fn read(state: &AppState, tenant: Uuid, id: Uuid) -> ApiResult<Option<Value>> {
    let row: Option<Row> = on_read!(&state.db, pool => {
        sqlx::query_as(&by_id_sql())
        .bind(tenant)
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::from)?
    });
    Ok(row.as_ref().map(to_json))
}

/// [`read`] on the writer (SQLite: the row just written, whatever the readers saw).
async fn read_from_writer(state: &AppState, tenant: Uuid, id: Uuid) -> ApiResult<Option<Value>> {
    let row: Option<Row> = on_write!(&state.db, pool => {
        sqlx::query_as(&by_id_sql())
        .bind(tenant)
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::from)?
    });
    Ok(row.as_ref().map(to_json))
}

/// A page of `tenant`'s held notices, oldest first, after the notice `after` (its
/// cursor), filtered by status and reference: the notices and whether more remain.
pub(crate) async fn list(
    state: &AppState,
    tenant: Uuid,
    status: Option<HeldStatus>,
    rail_ref: Option<&str>,
    after: Option<Uuid>,
    limit: u32,
) -> ApiResult<(Vec<Value>, bool)> {
    let cursor = match after {
        None => (i64::MIN, Uuid::nil()),
        Some(a) => {
            let at: Option<i64> = on_read!(&state.db, pool => {
                sqlx::query_scalar(
                    "SELECT received_at_us FROM held_rail_notices \
                     WHERE tenant_id = $1 AND notice_id = $2",
                )
                .bind(tenant)
                .bind(a)
                .fetch_optional(pool)
                .await
                .map_err(StoreError::from)?
            });
            let at = at.ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_parameter",
                    "after",
                    format!(
                        "after must be the id of one of this tenant's held rail notices (the \
                         `next` of the page before), got {a}"
                    ),
                )
            })?;
            (at, a)
        }
    };
    let mut rows: Vec<Row> = on_read!(&state.db, pool => {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM held_rail_notices WHERE tenant_id = $1 \
             AND (received_at_us > $2 OR (received_at_us = $2 AND notice_id > $3)) \
             AND ($4 IS NULL OR status = $4) AND ($5 IS NULL OR rail_ref = $5) \
             ORDER BY received_at_us, notice_id LIMIT $6"
        ))
        .bind(tenant)
        .bind(cursor.0)
        .bind(cursor.1)
        .bind(status.map(HeldStatus::as_str))
        .bind(rail_ref)
        .bind(i64::from(limit) + 1)
        .fetch_all(pool)
        .await
        .map_err(StoreError::from)?
    });
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    Ok((rows.iter().map(to_json).collect(), has_more))
}

/// Records what became of a held notice (only while it is still held: two rounds never
/// both settle one).
async fn settle(
    state: &AppState,
    id: Uuid,
    status: HeldStatus,
    payment: Option<Uuid>,
    refusal: Option<(&str, String)>,
) -> ApiResult<()> {
    let (code, message) = refusal.map_or((None, None), |(c, m)| (Some(c.to_owned()), Some(m)));
    on_write!(&state.db, pool => {
        sqlx::query(
            "UPDATE held_rail_notices SET status = $1, payment_id = $2, code = $3, \
             message = $4, settled_at_us = $5 WHERE notice_id = $6 AND status = 'held'",
        )
        .bind(status.as_str())
        .bind(payment)
        .bind(code)
        .bind(message)
        .bind(now_us())
        .bind(id)
        .execute(pool)
        .await
        .map_err(StoreError::from)?;
    });
    Ok(())
}

/// Dismisses `tenant`'s held notice `id` (see [`HeldStatus::Dismissed`]): the notice as
/// it is then, `None` if there is no such notice. One applied or refused meanwhile is
/// 409 `rail_notice_settled`; one dismissed already is answered as it is.
pub(crate) async fn dismiss(state: &AppState, tenant: Uuid, id: Uuid) -> ApiResult<Option<Value>> {
    on_write!(&state.db, pool => {
        sqlx::query(
            "UPDATE held_rail_notices SET status = 'dismissed', settled_at_us = $1 \
             WHERE tenant_id = $2 AND notice_id = $3 AND status = 'held'",
        )
        .bind(now_us())
        .bind(tenant)
        .bind(id)
        .execute(pool)
        .await
        .map_err(StoreError::from)?;
    });
    let Some(now) = read_from_writer(state, tenant, id).await? else {
        return Ok(None);
    };
    match now["status"].as_str() {
        Some("dismissed") => Ok(Some(now)),
        other => Err(ApiError::Conflict {
            code: "rail_notice_settled",
            message: format!(
                "held rail notice {id} is {} already: only a notice still held can be \
                 dismissed",
                other.unwrap_or("settled")
            ),
        }),
    }
}

/// A notice whose run failed: when to try again, and the pause after that.
struct Failed {
    again_at: Instant,
    pause: Duration,
}

/// Runs the rounds until shutdown: every `every`, the held notices whose transfer a
/// payment recorded are applied.
pub(crate) async fn run(state: AppState, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut failed: HashMap<Uuid, Failed> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        if let Err(e) = round(&state, &mut failed).await {
            tracing::warn!(error = %e, "held rail notices could not be applied; trying again");
        }
    }
}

/// One round: the held notices whose reference a payment now knows, oldest first.
async fn round(state: &AppState, failed: &mut HashMap<Uuid, Failed>) -> ApiResult<()> {
    if !state.projector.is_leader().await {
        return Ok(());
    }
    let started = Instant::now();
    // Nothing held anywhere (the usual case): one indexed read, no catch-up.
    let any: Option<Uuid> = on_read!(&state.db, pool => {
        sqlx::query_scalar("SELECT notice_id FROM held_rail_notices WHERE status = 'held' LIMIT 1")
            .fetch_optional(pool)
            .await
            .map_err(StoreError::from)?
    });
    if any.is_none() {
        failed.clear();
        return Ok(());
    }
    // The rail references' read model as of every event appended so far.
    state.projector.catch_up().await?;
    let due: Vec<(Uuid, Uuid, String, String)> = on_read!(&state.db, pool => {
        sqlx::query_as(
            "SELECT h.notice_id, h.tenant_id, h.rail_ref, h.notice FROM held_rail_notices h \
             WHERE h.status = 'held' AND EXISTS (SELECT 1 FROM payment_rail_refs r \
             WHERE r.tenant_id = h.tenant_id AND r.rail_ref = h.rail_ref) \
             ORDER BY h.received_at_us, h.notice_id LIMIT $1",
        )
        .bind(ROUND)
        .fetch_all(pool)
        .await
        .map_err(StoreError::from)?
    });
    for (id, tenant, rail_ref, notice) in due {
        if failed.get(&id).is_some_and(|f| f.again_at > started) {
            continue;
        }
        match apply(state, id, tenant, &rail_ref, &notice).await {
            Ok(()) => {
                failed.remove(&id);
            }
            Err(e) => {
                let pause = next_pause(failed.get(&id).map(|f| f.pause), true);
                tracing::warn!(notice = %id, %rail_ref, error = %e, retry_in = ?pause,
                    "a held rail notice could not be applied");
                failed.insert(
                    id,
                    Failed {
                        again_at: Instant::now() + pause,
                        pause,
                    },
                );
            }
        }
    }
    failed.retain(|_, f| f.again_at > started);
    Ok(())
}

/// Gives one held notice to the payment that recorded its reference and records the
/// outcome; an error means nothing was decided (tried again later).
async fn apply(
    state: &AppState,
    id: Uuid,
    tenant: Uuid,
    rail_ref: &str,
    notice: &str,
) -> ApiResult<()> {
    let notice: RailOutcome = serde_json::from_str(notice)
        .map_err(|e| ApiError::Internal(format!("a held rail notice is unreadable: {e}")))?;
    let payment = match crate::api::payments::payment_of_rail_ref(state, tenant, rail_ref).await {
        Ok(Some(p)) => p,
        // Not known after all (a read model rebuilt meanwhile): held on.
        Ok(None) => return Ok(()),
        Err(e) if e.is_command_result() || e.status().is_client_error() => {
            return settle(
                state,
                id,
                HeldStatus::Refused,
                None,
                Some((e.code(), e.to_string())),
            )
            .await;
        }
        Err(e) => return Err(e),
    };
    let run = crate::api::payments::held_notice(state, tenant, payment, id, rail_ref, notice);
    match run.await {
        Ok(()) => {
            tracing::info!(notice = %id, %payment, %rail_ref, "held rail notice applied");
            settle(state, id, HeldStatus::Applied, Some(payment), None).await
        }
        // A conflict that outlasted the retries is no verdict: tried again later.
        Err(e)
            if e.status().is_client_error() && !matches!(e, ApiError::VersionConflict { .. }) =>
        {
            tracing::info!(notice = %id, %payment, %rail_ref, code = e.code(),
                "held rail notice refused by the payment");
            settle(
                state,
                id,
                HeldStatus::Refused,
                Some(payment),
                Some((e.code(), e.to_string())),
            )
            .await
        }
        Err(e) => Err(e),
    }
}
