//! Rail notices that overtook their transfer: held by the server, applied when a payment
//! records the transfer.
//!
//! A bank's webhook names a transfer by its reference only (`POST /v1/rail-notices`),
//! and it may arrive before the integrator recorded the submission under that reference
//! (`SubmitFunding`, `SubmitDisbursement`): the bank answered the transfer, its
//! settlement webhook raced the integrator's own call. No payment knows the reference
//! yet, so the server keeps the notice (202, `status: "held"`, table
//! `held_rail_notices`) instead of refusing it, and a background round, every second (or
//! on the clock's beat when that is faster) in the process that runs the background
//! projection (one per database), gives each held notice to the payment once the
//! `rail_refs` read model shows one recorded a transfer under its reference: the core's
//! `RailNotice`, as the built-in `rail` actor, through the command path (stored state,
//! version check, live streams, read models).
//!
//! - **Checked on arrival.** What a notice says alone (its reference's and a return's
//!   shape, its text: `trustfold_core::decide::check_alone`) is checked before it is
//!   held: one that could never apply is refused then (422), not kept to fail later.
//! - **What became of it** is kept: `applied` (with the payment), or `refused` (with
//!   the payment's rule's `code` and `message`, say a settlement of a transfer the rail
//!   already reported failed; or `ambiguous_rail_ref` when two payments recorded the
//!   reference by then). While the round runs one it is `applying`. `GET
//!   /v1/rail-notices` lists a tenant's held notices (by `status`, `rail_ref`), `GET
//!   /v1/rail-notices/{notice_id}` reads one.
//! - **Dismissed** by the tenant while held (`DELETE /v1/rail-notices/{notice_id}`):
//!   a reference that will never be recorded here stops waiting (and counting against
//!   the limit below); the record is kept with `status: "dismissed"`. The round claims
//!   a notice (`applying`) before it gives it to the payment, and a notice being applied
//!   cannot be dismissed (409 `rail_notice_applying`): a dismissed notice never changed
//!   a payment.
//! - **In the order received, per reference.** Notices are applied oldest first, one at
//!   a time, so a settlement held before its return is applied first; a notice whose
//!   run failed holds back the later ones for its reference until it is applied; and a
//!   notice that arrives for a reference while earlier ones still wait for it is held
//!   behind them (202) even when a payment knows the reference by then. The core
//!   de-duplicates the same notice sent twice.
//! - **One runner at a time.** A claim names its runner and lasts 30 s: a notice
//!   left `applying` by a runner that stopped (a crash, a PostgreSQL leader that lost its
//!   lock) is taken up by another once the lease lapsed (on PostgreSQL timed by the
//!   database's clock, as the time received), and an outcome is recorded only
//!   under the claim that ran it. A notice whose run failed is given back (`held`) only
//!   when none of its events is stored and the database answered (after a 503-like
//!   failure a commit may still land); otherwise it stays claimed for the next round.
//! - **Exactly once.** A held notice's command id is the notice's id, so after a crash
//!   between the append and the status update the round finds the notice's events
//!   stored, by their ids, and records it applied to their payment without running it
//!   again (whatever the payment or the references did since).
//! - **Bounded.** At most [`MAX_HELD_PER_TENANT`] wait per tenant at once (422
//!   `too_many_held_notices` after that: a reference that never comes is the
//!   integrator's to look at). A notice whose run failed (the database, not a rule) is
//!   tried again after a pause doubling from 1 s to a minute.
//! - **Looked at once while unknown.** A round reads only the notices that are `due`: a
//!   notice is due from when it is held until a round finds its reference unknown (it is
//!   set aside, `clear_due`), and again once the read model shows its reference after
//!   the checkpoint the round read the time before (`mark_due`). Tenants holding
//!   thousands of notices for references never recorded cost a round a few indexed
//!   reads, not a scan of them all each second. A new runner, and every runner every
//!   minute, looks at every waiting notice.
//!
//! ```
//! use trustfold_server::rail_notices::HeldStatus;
//!
//! assert_eq!(HeldStatus::parse("held"), Some(HeldStatus::Held));
//! assert_eq!(HeldStatus::Refused.as_str(), "refused");
//! assert_eq!(HeldStatus::parse("lost"), None);
//! ```

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::watch;
use trustfold_core::command::RailOutcome;
use trustfold_core::id::derive;
use uuid::Uuid;

use crate::api::error::{ApiError, ApiResult};
use crate::api::AppState;
use crate::clock::next_pause;
use crate::db::{now_us, on_read, on_write, Db, PG_NOW_US};
use crate::webhooks::time_us;
use crate::{EventStore, StoreError};

/// Most notices waiting for their transfer per tenant.
pub const MAX_HELD_PER_TENANT: i64 = 10_000;
/// The first key of the PostgreSQL advisory lock that stamps a tenant's held notices in
/// commit order (the second is [`tenant_lock_key`]; two-key locks do not meet the
/// one-key locks used elsewhere).
const HOLD_LOCK: i32 = 0x7466_686e;

/// This process's holds on PostgreSQL, one at a time (see [`hold`]).
static HOLDING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A tenant's second key of [`HOLD_LOCK`].
fn tenant_lock_key(tenant: Uuid) -> i32 {
    let b = tenant.as_bytes();
    i32::from_be_bytes([
        b[0] ^ b[4] ^ b[8] ^ b[12],
        b[1] ^ b[5] ^ b[9] ^ b[13],
        b[2] ^ b[6] ^ b[10] ^ b[14],
        b[3] ^ b[7] ^ b[11] ^ b[15],
    ])
}

/// Held notices looked at per round (besides those backed off after a failure).
const ROUND: i64 = 256;
/// The statuses of a notice still waiting for its transfer, as SQL.
const WAITING: &str = "status IN ('held', 'applying')";

/// What became of a held notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldStatus {
    /// Waiting for a payment to record a transfer under its reference.
    Held,
    /// Being given to the payment now (the round claimed it); then applied or refused.
    Applying,
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
            HeldStatus::Applying => "applying",
            HeldStatus::Applied => "applied",
            HeldStatus::Refused => "refused",
            HeldStatus::Dismissed => "dismissed",
        }
    }

    /// The status named `s`, if it is one.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "held" => Some(HeldStatus::Held),
            "applying" => Some(HeldStatus::Applying),
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
        return as_stored(stored, rail_ref, notice);
    }
    let held: i64 = on_read!(&state.db, pool => {
        sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM held_rail_notices WHERE tenant_id = $1 AND {WAITING}"
        ))
        .bind(tenant)
        .fetch_one(pool)
        .await
        .map_err(StoreError::from)?
    });
    if held >= MAX_HELD_PER_TENANT {
        return Err(too_many(held));
    }
    let text = serde_json::to_string(notice).map_err(|e| ApiError::Internal(e.to_string()))?;
    // The time received orders a reference's notices: on PostgreSQL the database's clock,
    // one for every server process (theirs may differ); SQLite's processes share a host.
    // It is also the list's cursor, so it is stamped in commit order: after the tenant's
    // latest notice, in the write itself (SQLite writes one at a time; on PostgreSQL a
    // lock per tenant is held until the commit). A notice stamped before one already
    // listed but stored after it would never be listed by the pages after that one.
    let sql = if state.db.is_postgres() {
        format!(
            "INSERT INTO held_rail_notices (notice_id, tenant_id, rail_ref, notice, \
             received_at_us, status) SELECT $1, $2, $3, $4, \
             GREATEST({PG_NOW_US}, COALESCE(MAX(received_at_us), 0) + 1), 'held' \
             FROM held_rail_notices WHERE tenant_id = $2 ON CONFLICT DO NOTHING"
        )
    } else {
        "INSERT INTO held_rail_notices (notice_id, tenant_id, rail_ref, notice, \
         received_at_us, status) SELECT $1, $2, $3, $4, \
         MAX($5, COALESCE(MAX(received_at_us), 0) + 1), 'held' \
         FROM held_rail_notices WHERE tenant_id = $2 ON CONFLICT DO NOTHING"
            .to_owned()
    };
    match &state.db {
        Db::Sqlite { writer, .. } => {
            sqlx::query(&sql)
                .bind(id)
                .bind(tenant)
                .bind(rail_ref)
                .bind(&text)
                .bind(now_us())
                .execute(writer)
                .await
                .map_err(StoreError::from)?;
        }
        Db::Postgres(pool) => {
            // One hold at a time in this process before a connection is taken: holds
            // waiting for a tenant's lock would each keep a pooled connection meanwhile
            // (a rail replaying its early notices at once), and every other request
            // would wait for one.
            let _one = HOLDING.lock().await;
            let mut tx = pool.begin().await.map_err(StoreError::from)?;
            sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
                .bind(HOLD_LOCK)
                .bind(tenant_lock_key(tenant))
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
            sqlx::query(&sql)
                .bind(id)
                .bind(tenant)
                .bind(rail_ref)
                .bind(&text)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
            tx.commit().await.map_err(StoreError::from)?;
        }
    }
    let stored = read_from_writer(state, tenant, id).await?.ok_or_else(|| {
        // The id is another tenant's (ids are random or derived per tenant): never.
        ApiError::Internal("a held rail notice's id is taken by another tenant".into())
    })?;
    as_stored(stored, rail_ref, notice)
}

/// The answer for a notice held under an id: the stored one, when it is this request's
/// (a retry, or a concurrent twin); `idempotency_key_reused` when the id's key was
/// given with another notice (two requests under one key racing past its check).
fn as_stored(stored: Value, rail_ref: &str, notice: &RailOutcome) -> ApiResult<Vec<u8>> {
    let same = stored.get("rail_ref").and_then(Value::as_str) == Some(rail_ref)
        && stored.get("notice") == serde_json::to_value(notice).ok().as_ref();
    if !same {
        return Err(crate::api::payments::key_reused());
    }
    Ok(serde_json::to_vec(&stored).unwrap_or_default())
}

/// Whether notices of `tenant` for `rail_ref` still wait (held, or being applied): a
/// new notice for it is held behind them, so they are applied in the order received.
pub(crate) async fn waiting_for(state: &AppState, tenant: Uuid, rail_ref: &str) -> ApiResult<bool> {
    let found: Option<Uuid> = on_read!(&state.db, pool => {
        sqlx::query_scalar(&format!(
            "SELECT notice_id FROM held_rail_notices WHERE tenant_id = $1 AND rail_ref = $2 \
             AND {WAITING} LIMIT 1"
        ))
        .bind(tenant)
        .bind(rail_ref)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::from)?
    });
    Ok(found.is_some())
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
    // Only the filters given, so each finds its index (`rail_ref`: the tenant's notices
    // by reference; otherwise the tenant's by time).
    let mut sql = format!(
        "SELECT {COLUMNS} FROM held_rail_notices WHERE tenant_id = $1 \
         AND (received_at_us > $2 OR (received_at_us = $2 AND notice_id > $3))"
    );
    let mut n = 3;
    for (column, given) in [
        ("rail_ref", rail_ref.is_some()),
        ("status", status.is_some()),
    ] {
        if given {
            n += 1;
            sql.push_str(&format!(" AND {column} = ${n}"));
        }
    }
    sql.push_str(&format!(
        " ORDER BY received_at_us, notice_id LIMIT ${}",
        n + 1
    ));
    let mut rows: Vec<Row> = on_read!(&state.db, pool => {
        let mut q = sqlx::query_as(&sql).bind(tenant).bind(cursor.0).bind(cursor.1);
        if let Some(r) = rail_ref {
            q = q.bind(r);
        }
        if let Some(s) = status {
            q = q.bind(s.as_str());
        }
        q.bind(i64::from(limit) + 1)
            .fetch_all(pool)
            .await
            .map_err(StoreError::from)?
    });
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    Ok((rows.iter().map(to_json).collect(), has_more))
}

/// Records what became of a notice `runner` claimed (only while its claim holds: two
/// runners never both settle one).
async fn settle(
    state: &AppState,
    runner: Runner,
    id: Uuid,
    status: HeldStatus,
    payment: Option<Uuid>,
    refusal: Option<(&str, String)>,
) -> ApiResult<()> {
    let (code, message) = refusal.map_or((None, None), |(c, m)| (Some(c.to_owned()), Some(m)));
    let settled = on_write!(&state.db, pool => {
        sqlx::query(
            "UPDATE held_rail_notices SET status = $1, payment_id = $2, code = $3, \
             message = $4, settled_at_us = $5 WHERE notice_id = $6 AND status = 'applying' \
             AND claimed_by = $7",
        )
        .bind(status.as_str())
        .bind(payment)
        .bind(code)
        .bind(message)
        .bind(now_us())
        .bind(id)
        .bind(runner.0)
        .execute(pool)
        .await
        .map_err(StoreError::from)?
        .rows_affected()
    });
    if settled == 0 {
        // Its claim lapsed and another runner took it up: that one records the outcome
        // (the payment finds the notice applied already, by its events' ids).
        tracing::warn!(notice = %id, status = status.as_str(),
            "a held rail notice's claim lapsed before its outcome was recorded");
    }
    Ok(())
}

/// Dismisses `tenant`'s held notice `id` (see [`HeldStatus::Dismissed`]): the notice as
/// it is then, `None` if there is no such notice. One being applied is 409
/// `rail_notice_applying`, one applied or refused meanwhile 409 `rail_notice_settled`;
/// one dismissed already is answered as it is.
pub(crate) async fn dismiss(state: &AppState, tenant: Uuid, id: Uuid) -> ApiResult<Option<Value>> {
    // A held notice whose events are stored changed a payment already (its outcome not
    // yet recorded: a runner stopped between the two), so it is not dismissed.
    let Some(before) = read_from_writer(state, tenant, id).await? else {
        return Ok(None);
    };
    if before["status"] == "held" {
        let rail_ref = before["rail_ref"].as_str().unwrap_or_default();
        if let Stored::Own(_) = stored(state, tenant, id, rail_ref).await? {
            return Err(applying(id));
        }
    }
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
        Some("applying") => Err(applying(id)),
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

fn applying(id: Uuid) -> ApiError {
    ApiError::Conflict {
        code: "rail_notice_applying",
        message: format!(
            "held rail notice {id} is being given to the payment that recorded its \
             transfer: read it again in a moment (GET /v1/rail-notices/{id}); only a \
             notice still held can be dismissed"
        ),
    }
}

/// A notice whose run failed: when to try again, and the pause after that.
struct Failed {
    again_at: Instant,
    pause: Duration,
}

/// The process's round runner: its claims carry this id.
#[derive(Debug, Clone, Copy)]
struct Runner(Uuid);

/// How long a claim keeps other runners off a notice. A runner that stopped mid-run (a
/// crash; a PostgreSQL leader that lost its lock) leaves its notices `applying`; another
/// takes them up after this, and its own rounds at once.
const LEASE: Duration = Duration::from_secs(30);

/// How long one round goes on applying notices that became due while it ran.
const ROUND_TIME: Duration = Duration::from_secs(5);

/// Runs the rounds until shutdown: every `every`, the held notices whose transfer a
/// payment recorded are applied.
pub(crate) async fn run(state: AppState, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut rounds = Rounds::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        if let Err(e) = rounds.round(&state).await {
            tracing::warn!(error = %e, "held rail notices could not be applied; trying again");
        }
    }
}

/// A runner's rounds: its id (its claims carry it) and what it keeps from one round to
/// the next. Public for benchmarks and tests that drive rounds by hand
/// ([`crate::app::state_without_serving`]); a server runs them in the background.
#[doc(hidden)]
pub struct Rounds {
    runner: Runner,
    /// Notices whose run failed, backed off.
    failed: HashMap<Uuid, Failed>,
    /// The `rail_refs` read model's checkpoint as the last round read it: references
    /// recorded after it are looked for among the notices set aside (`mark_due`). `None`:
    /// every waiting notice is looked at (a new runner; nothing waited).
    seen: Option<i64>,
    /// When every waiting notice was last looked at (`SWEEP`).
    swept: Option<Instant>,
    /// Since when this runner leads its database's rounds (`None` while it does not).
    leading: Option<Instant>,
}

impl Default for Rounds {
    fn default() -> Self {
        Self::new()
    }
}

impl Rounds {
    /// A new runner, with nothing kept yet.
    pub fn new() -> Self {
        Rounds {
            runner: Runner(Uuid::new_v4()),
            failed: HashMap::new(),
            seen: None,
            swept: None,
            leading: None,
        }
    }

    /// A runner that has led the rounds for a while (past [`TAKING_OVER`]): its rounds
    /// after the first sweep only when one is due. For tests of the marks by position.
    #[doc(hidden)]
    pub fn leading_a_while() -> Self {
        Rounds {
            leading: Instant::now().checked_sub(TAKING_OVER),
            ..Self::new()
        }
    }

    /// One round: the due held notices whose reference a payment now knows are given
    /// to it, each reference's oldest first (see the module docs).
    pub async fn round(&mut self, state: &AppState) -> ApiResult<()> {
        round(state, self).await
    }
}

/// How often a round looks at every waiting notice, whatever it knows of them: a
/// bound on how long a notice could wait after its reference was recorded if the marks
/// below ever missed one (the read models rebuilt while a round ran, say).
const SWEEP: Duration = Duration::from_secs(60);

/// How long a runner that took over the rounds sweeps at every round: another
/// process's last round (up to [`ROUND_TIME`], and its last statement) may still set
/// notices aside whose references this runner's first sweep found.
const TAKING_OVER: Duration = Duration::from_secs(12);

/// Notices set aside per statement by [`clear_due`].
const CLEAR_AT_ONCE: u64 = 2_000;

/// The `rail_refs` read model's checkpoint: its rows are exactly those of the events up
/// to it (rows and checkpoint commit together, in the order of the log).
const REFS_CHECKPOINT: &str =
    "(SELECT position FROM projection_checkpoints WHERE name = 'rail_refs')";

/// A reference's row in the read model, for the notice `h` (SQL).
const KNOWN: &str = "EXISTS (SELECT 1 FROM payment_rail_refs r WHERE r.tenant_id = h.tenant_id \
                     AND r.rail_ref = h.rail_ref)";

/// `1` if the reference of the notice `h` has a row in the read model, else `NULL`
/// (SQL). A correlated scalar subquery with `LIMIT 1` is run per notice, as an index
/// probe, on both engines, so [`clear_due`]'s pages (a bounded number of notices) cost
/// that many probes whatever the statistics say: with `NOT EXISTS`, PostgreSQL planned
/// a hash anti join over both whole tables once a burst of notices was set aside (its
/// statistics from before), about 5 to 30 ms each second until the next analyze.
fn ref_row(h: &str) -> String {
    format!(
        "(SELECT 1 FROM payment_rail_refs r WHERE r.tenant_id = {h}.tenant_id \
         AND r.rail_ref = {h}.rail_ref LIMIT 1)"
    )
}

/// One round: the held notices whose reference a payment now knows, each reference's
/// oldest first.
///
/// A round looks only at the notices that are `due`, not at every one waiting: a notice
/// is due from when it is held until a round finds its reference unknown
/// ([`clear_due`]), and again once a payment records the reference ([`mark_due`]). So a
/// round while thousands of notices wait for references no payment knows costs a few
/// indexed reads, and each such notice is looked at once, not every second.
async fn round(state: &AppState, rounds: &mut Rounds) -> ApiResult<()> {
    if !state.projector.is_leader().await {
        // Another process runs the rounds meanwhile: what this one read is stale.
        rounds.seen = None;
        rounds.leading = None;
        return Ok(());
    }
    let leading = *rounds.leading.get_or_insert_with(Instant::now);
    let started = Instant::now();
    // Nothing held anywhere (the usual case): one indexed read, no catch-up.
    let any: Option<Uuid> = on_read!(&state.db, pool => {
        sqlx::query_scalar(&format!(
            "SELECT notice_id FROM held_rail_notices WHERE {WAITING} LIMIT 1"
        ))
        .fetch_optional(pool)
        .await
        .map_err(StoreError::from)?
    });
    if any.is_none() {
        rounds.failed.clear();
        // Nothing is left waiting with its reference unknown: the next round looks at
        // whatever is held by then.
        rounds.seen = None;
        return Ok(());
    }
    // The rail references' read model as of every event appended so far.
    state.projector.catch_up().await?;
    let at: i64 = on_read!(&state.db, pool => {
        sqlx::query_scalar::<_, Option<i64>>(&format!("SELECT {REFS_CHECKPOINT}"))
            .fetch_one(pool)
            .await
            .map_err(StoreError::from)?
    })
    .unwrap_or(0);
    // A new runner (and for a while after it took over from another process, whose
    // last round may still be setting notices aside), a sweep due, or a checkpoint that
    // went back (the read models were rebuilt): every waiting notice whose reference is
    // known is marked due.
    let sweep = match rounds.seen {
        None => true,
        Some(seen) => {
            at < seen
                || leading.elapsed() < TAKING_OVER
                || rounds.swept.is_none_or(|t| t.elapsed() >= SWEEP)
        }
    };
    mark_due(state, if sweep { None } else { rounds.seen }).await?;
    if sweep {
        rounds.swept = Some(Instant::now());
    }
    apply_due(state, rounds.runner, &mut rounds.failed, started).await?;
    clear_due(state, at).await?;
    rounds.seen = Some(at);
    Ok(())
}

/// Marks due the waiting notices not due whose reference is in the read model: those
/// whose reference's row is after the checkpoint `after` (rows are stamped with the
/// position of the event that recorded them), or, with no checkpoint, all of them. A
/// reader finds them first, so a round with nothing to mark does not take the writer.
async fn mark_due(state: &AppState, after: Option<i64>) -> ApiResult<()> {
    // Driven by the references recorded since (an index on their position), or by the
    // waiting notices not due.
    let found = match after {
        Some(_) => format!(
            "SELECT h.notice_id FROM payment_rail_refs r JOIN held_rail_notices h \
             ON h.tenant_id = r.tenant_id AND h.rail_ref = r.rail_ref \
             WHERE r.position > $1 AND h.{WAITING} AND h.due = 0"
        ),
        None => format!(
            "SELECT h.notice_id FROM held_rail_notices h WHERE h.{WAITING} AND h.due = 0 \
             AND {KNOWN}"
        ),
    };
    let probe = format!("{found} LIMIT 1");
    let any: Option<Uuid> = on_read!(&state.db, pool => {
        let mut q = sqlx::query_scalar(&probe);
        if let Some(after) = after {
            q = q.bind(after);
        }
        q.fetch_optional(pool).await.map_err(StoreError::from)?
    });
    if any.is_none() {
        return Ok(());
    }
    let mark = format!("UPDATE held_rail_notices SET due = 1 WHERE notice_id IN ({found})");
    let marked = on_write!(&state.db, pool => {
        let mut q = sqlx::query(&mark);
        if let Some(after) = after {
            q = q.bind(after);
        }
        q.execute(pool)
            .await
            .map_err(StoreError::from)?
            .rows_affected()
    });
    tracing::debug!(
        marked,
        "held rail notices whose reference was recorded marked due"
    );
    Ok(())
}

/// Marks not due the due notices whose reference is not in the read model, as of the
/// checkpoint `at` the round read before it looked: a reference's row the setting-aside
/// statement does not see is committed after it, so it comes after `at`, where the
/// next round's [`mark_due`] starts. Only while the read model is at least at `at` (not
/// emptied for a rebuild meanwhile, its rows not all back). A notice a round claimed
/// and gave back after a failure, or one whose run failed, has a known reference and
/// stays due (one given back because its reference was unknown after all is set
/// aside, and marked due again once it is recorded). The due notices are read a page
/// at a time (oldest first, their own index) on a reader; the writer is taken only for
/// those whose reference is unknown, a page at a time.
async fn clear_due(state: &AppState, at: i64) -> ApiResult<()> {
    let page_sql = format!(
        "SELECT h.received_at_us, h.notice_id, {} FROM held_rail_notices h \
         WHERE h.{WAITING} AND h.due = 1 AND (h.received_at_us, h.notice_id) > ($1, $2) \
         ORDER BY h.received_at_us, h.notice_id LIMIT {CLEAR_AT_ONCE}",
        ref_row("h")
    );
    let mut after = (i64::MIN, Uuid::nil());
    loop {
        let page: Vec<(i64, Uuid, Option<i32>)> = on_read!(&state.db, pool => {
            sqlx::query_as(&page_sql)
                .bind(after.0)
                .bind(after.1)
                .fetch_all(pool)
                .await
                .map_err(StoreError::from)?
        });
        let unknown: Vec<Uuid> = page
            .iter()
            .filter(|(_, _, known)| known.is_none())
            .map(|(_, id, _)| *id)
            .collect();
        if !unknown.is_empty() {
            // Looked at again as the row is written: a reference recorded meanwhile (and
            // marked by another runner) keeps its notices due.
            let ids = (2..unknown.len() + 2)
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let clear = format!(
                "UPDATE held_rail_notices SET due = 0 WHERE notice_id IN ({ids}) AND due = 1 \
                 AND {} IS NULL AND {REFS_CHECKPOINT} >= $1",
                ref_row("held_rail_notices")
            );
            let cleared = on_write!(&state.db, pool => {
                let mut q = sqlx::query(&clear).bind(at);
                for id in &unknown {
                    q = q.bind(id);
                }
                q.execute(pool)
                    .await
                    .map_err(StoreError::from)?
                    .rows_affected()
            });
            tracing::debug!(
                cleared,
                "held rail notices whose reference is unknown set aside"
            );
        }
        match page.last() {
            Some((received, id, _)) if page.len() as u64 >= CLEAR_AT_ONCE => {
                after = (*received, *id);
            }
            _ => return Ok(()),
        }
    }
}

/// Applies the due notices whose reference a payment now knows, each reference's
/// oldest first, for up to [`ROUND_TIME`].
async fn apply_due(
    state: &AppState,
    runner: Runner,
    failed: &mut HashMap<Uuid, Failed>,
    started: Instant,
) -> ApiResult<()> {
    // References whose head notice is not applied this round (backed off after a
    // failure, claimed by another runner, or unknown after all): their later notices
    // wait behind it, in the order received.
    let mut blocked: HashSet<(Uuid, String)> = HashSet::new();
    loop {
        // Only each reference's head (its oldest waiting notice): a reference with many
        // notices behind a blocked head does not fill the page.
        // Room for the heads that cannot run (backed off, or claimed elsewhere).
        let waiting = blocked.len().saturating_add(failed.len());
        let limit = ROUND.saturating_add(i64::try_from(waiting).unwrap_or(i64::MAX));
        let heads: Vec<(Uuid, Uuid, String, String)> = on_read!(&state.db, pool => {
            sqlx::query_as(&format!(
                "SELECT h.notice_id, h.tenant_id, h.rail_ref, h.notice FROM held_rail_notices h \
                 WHERE h.{WAITING} AND h.due = 1 AND {KNOWN} \
                 AND NOT EXISTS (SELECT 1 FROM held_rail_notices e \
                 WHERE e.tenant_id = h.tenant_id AND e.rail_ref = h.rail_ref AND e.{WAITING} \
                 AND (e.received_at_us, e.notice_id) < (h.received_at_us, h.notice_id)) \
                 ORDER BY h.received_at_us, h.notice_id LIMIT $1"
            ))
            .bind(limit)
            .fetch_all(pool)
            .await
            .map_err(StoreError::from)?
        });
        let (mut applied, full, before) = (false, heads.len() as i64 >= limit, blocked.len());
        for (id, tenant, rail_ref, notice) in heads {
            let key = (tenant, rail_ref);
            if blocked.contains(&key) {
                continue;
            }
            if failed.get(&id).is_some_and(|f| f.again_at > started) {
                blocked.insert(key);
                continue;
            }
            match apply(state, runner, id, tenant, &key.1, &notice).await {
                Ok(Verdict::Settled) => {
                    failed.remove(&id);
                    applied = true;
                }
                Ok(Verdict::Waiting) => {
                    failed.remove(&id);
                    blocked.insert(key);
                }
                Ok(Verdict::Busy) => {
                    blocked.insert(key);
                }
                Err(e) => {
                    let pause = next_pause(failed.get(&id).map(|f| f.pause), true);
                    tracing::warn!(notice = %id, rail_ref = %key.1, error = %e,
                        retry_in = ?pause, "a held rail notice could not be applied");
                    failed.insert(
                        id,
                        Failed {
                            again_at: Instant::now() + pause,
                            pause,
                        },
                    );
                    blocked.insert(key);
                }
            }
        }
        // The notices behind those settled are heads now, and a full page whose heads
        // were blocked hides others: on while there is progress.
        let progress = applied || (full && blocked.len() > before);
        if !progress || started.elapsed() > ROUND_TIME {
            break;
        }
    }
    failed.retain(|_, f| f.again_at > started);
    Ok(())
}

/// What a round did with one notice.
enum Verdict {
    /// Applied or refused (or dismissed before the round claimed it): done with.
    Settled,
    /// Still waiting (no payment knows its reference after all).
    Waiting,
    /// Claimed by another runner.
    Busy,
}

/// Gives one held notice to the payment that recorded its reference and records the
/// outcome. The notice is claimed first (`applying`, for [`LEASE`]; a dismissal then
/// waits for the outcome), and given back (`held`) when nothing was decided and nothing
/// recorded: a reference no payment knows after all, or an error before the payment
/// stored anything. One whose events may be stored stays claimed, for the next round.
async fn apply(
    state: &AppState,
    runner: Runner,
    id: Uuid,
    tenant: Uuid,
    rail_ref: &str,
    notice: &str,
) -> ApiResult<Verdict> {
    // Claims are timed by the clock that orders the notices: on PostgreSQL the database's
    // (one for every server process, whose own clocks may differ by more than the lease).
    let pg = state.db.is_postgres();
    let now = if pg { PG_NOW_US } else { "$3" };
    let lease_us = LEASE.as_micros();
    let sql = format!(
        "UPDATE held_rail_notices SET status = 'applying', claimed_by = $2, \
         claimed_at_us = {now} WHERE notice_id = $1 AND (status = 'held' OR \
         (status = 'applying' AND (claimed_by = $2 OR claimed_by IS NULL \
         OR claimed_at_us IS NULL OR claimed_at_us < {now} - {lease_us})))"
    );
    let claimed = on_write!(&state.db, pool => {
        let mut q = sqlx::query(&sql).bind(id).bind(runner.0);
        if !pg {
            q = q.bind(now_us());
        }
        q.execute(pool)
            .await
            .map_err(StoreError::from)?
            .rows_affected()
    });
    if claimed == 0 {
        // Dismissed or settled meanwhile, or another runner's claim holds: settled
        // notices leave the heads, a claimed one blocks its reference.
        let still = read_from_writer(state, tenant, id).await?;
        return Ok(match still {
            Some(n) if n["status"] == "applying" => Verdict::Busy,
            _ => Verdict::Settled,
        });
    }
    let outcome = run_claimed(state, runner, id, tenant, rail_ref, notice).await;
    let give_back = match &outcome {
        Ok(Verdict::Waiting) => true,
        Ok(_) => false,
        // The database was unavailable or did not answer in time: a commit may still
        // land after this (the appender's deadline passed while PostgreSQL finishes it),
        // so the notice stays claimed — never dismissed meanwhile — and this runner's
        // next round runs it again (the same ids: stored once).
        Err(ApiError::Unavailable(_)) => false,
        // The payment may have stored it (a commit whose answer was lost, or the
        // outcome's update failed): given back only when its first event is not stored.
        Err(_) => matches!(stored(state, tenant, id, rail_ref).await, Ok(Stored::None)),
    };
    if give_back {
        let released = on_write!(&state.db, pool => {
            sqlx::query(
                "UPDATE held_rail_notices SET status = 'held', claimed_by = NULL, \
                 claimed_at_us = NULL WHERE notice_id = $1 AND status = 'applying' \
                 AND claimed_by = $2",
            )
            .bind(id)
            .bind(runner.0)
            .execute(pool)
            .await
            .map(|_| ())
        });
        if let Err(e) = released {
            // Still claimed: this runner's next round takes it up as it is.
            tracing::warn!(notice = %id, error = %e, "a held rail notice stays claimed");
        }
    }
    outcome
}

/// [`apply`] once claimed: the verdict, recorded.
async fn run_claimed(
    state: &AppState,
    runner: Runner,
    id: Uuid,
    tenant: Uuid,
    rail_ref: &str,
    notice: &str,
) -> ApiResult<Verdict> {
    // Applied already (a crash, or a lost connection, between the payment's append and
    // the notice's outcome): its events are stored under ids derived from its own.
    match stored(state, tenant, id, rail_ref).await? {
        Stored::None => {}
        Stored::Own(payment) => {
            tracing::info!(notice = %id, %payment, %rail_ref,
                "held rail notice found applied already");
            settle(state, runner, id, HeldStatus::Applied, Some(payment), None).await?;
            return Ok(Verdict::Settled);
        }
        Stored::Other => {
            // The notice's id is another command's: its Idempotency-Key had been used
            // for another request (refused at the door since; kept for rows from before).
            settle(
                state,
                runner,
                id,
                HeldStatus::Refused,
                None,
                Some((
                    "idempotency_key_reused",
                    "the notice's Idempotency-Key was used for another request: send the \
                     notice again under a new key"
                        .to_owned(),
                )),
            )
            .await?;
            return Ok(Verdict::Settled);
        }
    }
    let notice: RailOutcome = serde_json::from_str(notice)
        .map_err(|e| ApiError::Internal(format!("a held rail notice is unreadable: {e}")))?;
    let payment = match crate::api::payments::payment_of_rail_ref(state, tenant, rail_ref).await {
        Ok(Some(p)) => p,
        // Not known after all (a read model rebuilt meanwhile): held on.
        Ok(None) => return Ok(Verdict::Waiting),
        Err(e) if e.is_command_result() || e.status().is_client_error() => {
            settle(
                state,
                runner,
                id,
                HeldStatus::Refused,
                None,
                Some((e.code(), e.to_string())),
            )
            .await?;
            return Ok(Verdict::Settled);
        }
        Err(e) => return Err(e),
    };
    let run = crate::api::payments::held_notice(state, tenant, payment, id, rail_ref, notice);
    match run.await {
        Ok(()) => {
            tracing::info!(notice = %id, %payment, %rail_ref, "held rail notice applied");
            settle(state, runner, id, HeldStatus::Applied, Some(payment), None).await?;
        }
        // A conflict that outlasted the retries is no verdict: tried again later.
        Err(e)
            if e.status().is_client_error() && !matches!(e, ApiError::VersionConflict { .. }) =>
        {
            // Another runner may have stored it meanwhile (a claim that outlasted its
            // lease): what is stored is the outcome.
            if let Stored::Own(stored) = stored(state, tenant, id, rail_ref).await? {
                settle(state, runner, id, HeldStatus::Applied, Some(stored), None).await?;
                return Ok(Verdict::Settled);
            }
            tracing::info!(notice = %id, %payment, %rail_ref, code = e.code(),
                "held rail notice refused by the payment");
            settle(
                state,
                runner,
                id,
                HeldStatus::Refused,
                Some(payment),
                Some((e.code(), e.to_string())),
            )
            .await?;
        }
        Err(e) => return Err(e),
    }
    Ok(Verdict::Settled)
}

/// What is stored under a held notice's first event id.
enum Stored {
    /// Nothing: the notice changed no payment.
    None,
    /// The notice's own event (the rail's, in this payment, which knows its reference):
    /// the notice was applied.
    Own(Uuid),
    /// Another command's (its `Idempotency-Key` had been used for another request).
    Other,
}

/// Looks the notice `id` up among the stored events, by its first event's derived id.
async fn stored(state: &AppState, tenant: Uuid, id: Uuid, rail_ref: &str) -> ApiResult<Stored> {
    let Some(ev) = state
        .store
        .read_event(tenant, derive(id, "event", 0))
        .await?
    else {
        return Ok(Stored::None);
    };
    let env = trustfold_core::envelope::Envelope::from_json(&ev.body)
        .map_err(|e| ApiError::Internal(format!("a stored event does not read: {e}")))?;
    if env.actor != trustfold_core::envelope::Actor::rail() {
        return Ok(Stored::Other);
    }
    let known: Option<Uuid> = on_read!(&state.db, pool => {
        sqlx::query_scalar(
            "SELECT payment_id FROM payment_rail_refs WHERE tenant_id = $1 AND rail_ref = $2 \
             AND payment_id = $3",
        )
        .bind(tenant)
        .bind(rail_ref)
        .bind(ev.stream_id)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::from)?
    });
    Ok(known.map_or(Stored::Other, Stored::Own))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn due_of(state: &AppState, id: Uuid) -> i64 {
        on_read!(&state.db, pool => {
            sqlx::query_scalar("SELECT due FROM held_rail_notices WHERE notice_id = $1")
                .bind(id)
                .fetch_one(pool)
                .await
                .expect("due")
        })
    }

    /// A round sets a notice aside only while the references' read model is at least at
    /// the checkpoint the round read before it looked: one emptied for a rebuild
    /// meanwhile (whose rows come back with the positions they had, which later rounds do
    /// not look for) leaves the notice due.
    #[tokio::test]
    async fn notices_are_set_aside_only_while_the_read_model_is_at_the_rounds_checkpoint() {
        let dir = tempfile::tempdir().expect("dir");
        let database = dir.path().join("held.db").display().to_string();
        let state = crate::app::state_without_serving(&crate::app::Config::new(database))
            .await
            .expect("state");
        let id = Uuid::new_v4();
        on_write!(&state.db, pool => {
            sqlx::query(
                "INSERT INTO held_rail_notices (notice_id, tenant_id, rail_ref, notice, \
                 received_at_us, status) VALUES ($1, $2, 'WIRE-1', '{\"kind\":\"settled\"}', \
                 1, 'held')",
            )
            .bind(id)
            .bind(Uuid::new_v4())
            .execute(pool)
            .await
            .expect("hold");
            sqlx::query("UPDATE projection_checkpoints SET position = 5 WHERE name = 'rail_refs'")
                .execute(pool)
                .await
                .expect("checkpoint");
        });
        assert_eq!(due_of(&state, id).await, 1, "due when held");
        // The round read checkpoint 7; the read model is back at 5 (emptied since).
        clear_due(&state, 7).await.expect("clear");
        assert_eq!(
            due_of(&state, id).await,
            1,
            "not set aside behind a rebuild"
        );
        clear_due(&state, 5).await.expect("clear");
        assert_eq!(
            due_of(&state, id).await,
            0,
            "set aside: its reference is unknown"
        );
    }
}
