//! Payments: open one, send commands (idempotent, optimistic concurrency), read state,
//! history, signed head, balances, inboxes, the tenant feed, and mint participant tokens.
//!
//! # Commands
//!
//! A command is judged against the payment's latest state (folded from the store) by
//! the core's `handle`, and its sealed events are appended with expected version =
//! the state's version. The command id given to the core is derived from the
//! `Idempotency-Key` (and the caller), so a retry produces the very same event ids:
//! if the first attempt's events are already stored, the retry answers from them
//! instead of deciding again; and the first response — a success, or a rejection by
//! the payment's rules ([`ApiError::is_command_result`]) — is stored with a hash of the
//! request, replayed for the same key and body, and a different body under the same key
//! is `422 idempotency_key_reused`. A malformed request (400; a body that is not JSON is
//! fingerprinted by its bytes), a version conflict, a refusal of the credentials and a
//! 5xx store nothing: the key stays free for a retry.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use trustfold_core::command::{Command, Context};
use trustfold_core::decide::handle;
use trustfold_core::envelope::{Actor, Envelope};
use trustfold_core::hash::Hash;
use trustfold_core::history::{SignedHead, SignedResponse};
use trustfold_core::id::{derive, CommandId, PartyId, PaymentId, TenantId};
use trustfold_core::money::Money;
use trustfold_core::policy::{EventFilter, Policy, Role};
use trustfold_core::state::{PaymentState, Status};
use trustfold_core::time::Timestamp;
use trustfold_core::view;
use uuid::Uuid;

use super::auth::{Principal, TokenClaims};
use super::body;
use super::error::{ApiError, ApiResult};
use super::{
    json, json_bytes, limit_param, load_policy, param_u64, params, parse_id, parse_json, AppState,
    Body, Notice, Params,
};
use crate::cache::{fold_stream, LoadError};
use crate::db::{now_us, on_read, on_write};
use crate::{AppendResult, EventStore, IdempotencyRecord, NewEvent, StoreError, StoredEvent};

impl From<LoadError> for ApiError {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Store(s) => s.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// How often a command is re-decided when another command won the race and the client
/// did not ask for a particular version.
const CONFLICT_RETRIES: usize = 3;

// ---------------------------------------------------------------------------------------
// Idempotency.

#[derive(Clone)]
struct Idem {
    /// The key as stored: the header's value, prefixed with a participant's scope.
    key: String,
    /// The header's value.
    given: String,
    /// The request's fingerprint: route, caller and the body's canonical JSON
    /// ([`body::canonical_json`]), so the same request re-serialized (pretty-printed,
    /// keys in another order) is the same request.
    request_hash: [u8; 32],
    /// The fingerprint of the body's bytes as sent, as records stored before the
    /// canonical one were written: a retry that spans that upgrade still finds its
    /// first answer. (Keys live 24 hours: this can go a day after the upgrade.)
    legacy_hash: [u8; 32],
}

impl Idem {
    /// Whether a stored record's fingerprint is this request's.
    fn same_request(&self, stored: &[u8]) -> bool {
        stored == self.request_hash || stored == self.legacy_hash
    }

    /// The record this request stores under the key.
    fn record(&self, principal: &Principal) -> KeyRecord {
        KeyRecord {
            tenant: principal.tenant(),
            key: self.key.clone(),
            request_hash: self.request_hash,
        }
    }
}

/// What running a command (or a request run by [`idempotent_request`]) came to.
pub(crate) enum Executed {
    /// The response; with an `Idempotency-Key`, [`with_idempotency`] stores it.
    Answer(StatusCode, Vec<u8>),
    /// The response, already stored under the key in the commit of its writes (a
    /// command's events: [`EventStore::append_recorded`]; a request's rows:
    /// [`insert_key_record`]).
    Recorded(StatusCode, Vec<u8>),
    /// Another request with the same key stored its response first, and nothing of this
    /// one was written: answer from the stored one.
    KeyTaken,
}

/// An `Idempotency-Key`'s record as a request run by [`idempotent_request`] writes it in
/// its own transaction, with its answer ([`insert_key_record`]).
pub(crate) struct KeyRecord {
    pub(crate) tenant: Uuid,
    /// The key as stored (see [`Idem`]).
    pub(crate) key: String,
    /// The request's fingerprint (see [`Idem`]).
    pub(crate) request_hash: [u8; 32],
}

/// Stores an answer under an `Idempotency-Key` ([`KeyRecord`]) on the caller's
/// connection or transaction (a macro: the statement runs on either engine's), as
/// `INSERT … ON CONFLICT DO NOTHING`: the rows inserted, 0 when another request holds
/// the key. On PostgreSQL an insert of a key another transaction inserted and has not
/// committed waits for that one (and is 0 if it commits); SQLite writes one at a time.
macro_rules! insert_key_record {
    ($tx:expr, $record:expr, $status:expr, $body:expr) => {
        sqlx::query(
            "INSERT INTO idempotency (tenant_id, idem_key, request_hash, status, body, \
             created_at_us) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind($record.tenant)
        .bind(&$record.key)
        .bind($record.request_hash.as_slice())
        .bind(i32::from($status.as_u16()))
        .bind($body)
        .bind($crate::db::now_us())
        .execute($tx)
        .await
        .map_err($crate::StoreError::from)?
        .rows_affected()
    };
}
pub(crate) use insert_key_record;

fn idempotency(
    headers: &HeaderMap,
    principal: &Principal,
    route: &str,
    body: &[u8],
) -> ApiResult<Option<Idem>> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b != b'\t'))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key",
                "the Idempotency-Key header must be 1 to 255 visible ASCII characters \
                 (spaces inside allowed, around it ignored; no tabs)",
            )
        })?
        .to_owned();
    // Keys are the caller's own: a participant's key never takes one of the tenant's
    // or another participant's (the tenant's keys are stored as given). A tab parts
    // the scope from the key: keys may not contain one, and the stored key is text
    // (PostgreSQL's text refuses a NUL).
    let given = key;
    let key = match principal {
        Principal::Tenant { .. } => given.clone(),
        Principal::Participant(_) => format!("{}\t{given}", principal.scope()),
    };
    let fingerprint = |body: &[u8]| -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [route.as_bytes(), principal.scope().as_bytes(), body] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.finalize().into()
    };
    // A body that is not strict JSON is refused before anything is stored; its bytes
    // stand for it.
    let canonical = body::canonical_json(body);
    Ok(Some(Idem {
        key,
        given,
        request_hash: fingerprint(canonical.as_deref().unwrap_or(body)),
        legacy_hash: fingerprint(body),
    }))
}

fn replayed(status: i32, body: Vec<u8>) -> Response {
    let status = u16::try_from(status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut res = if status.is_success() {
        json_bytes(status, body)
    } else {
        let mut r = (status, body).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        r
    };
    res.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    res
}

pub(crate) fn key_reused() -> ApiError {
    ApiError::Unprocessable {
        code: "idempotency_key_reused",
        message: "this Idempotency-Key was already used with a different request; use a new key \
                  for a new request"
            .into(),
        field: Some("Idempotency-Key".into()),
    }
}

/// The stored response under the key, replayed. A record written with its command's
/// events has an empty body (a response is never empty): the response is rebuilt from
/// the stored events and the state after them, byte for byte the one first sent, so the
/// commit does not carry a copy of the whole state.
async fn idem_lookup(
    state: &AppState,
    principal: &Principal,
    idem: &Idem,
) -> ApiResult<Option<Response>> {
    let tenant = principal.tenant();
    // A reader: records are only ever inserted (`ON CONFLICT DO NOTHING` decides a race),
    // so a committed one is seen, and the single SQLite writer stays free for appends.
    let row: Option<(Vec<u8>, i32, Vec<u8>)> = on_read!(&state.db, pool => {
        sqlx::query_as(
            "SELECT request_hash, status, body FROM idempotency WHERE tenant_id = $1 \
             AND idem_key = $2",
        )
        .bind(tenant)
        .bind(&idem.key)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::from)?
    });
    match row {
        None => Ok(None),
        Some((hash, status, body)) if idem.same_request(&hash) && body.is_empty() => {
            let command_id = command_id_for(principal, Some(idem));
            let first = derive(command_id.uuid(), "event", 0);
            let payment = state
                .store
                .read_event(tenant, first)
                .await?
                .map(|e| e.stream_id)
                .ok_or_else(|| {
                    ApiError::Internal("the events of an idempotency record are missing".into())
                })?;
            let body = already_applied(state, principal, tenant, payment, command_id)
                .await?
                .ok_or_else(|| {
                    ApiError::Internal("the events of an idempotency record are missing".into())
                })?;
            Ok(Some(replayed(status, body)))
        }
        Some((hash, status, body)) if idem.same_request(&hash) => Ok(Some(replayed(status, body))),
        Some(_) => Err(key_reused()),
    }
}

/// Stores the first response under the key; if another request stored one first,
/// answers with that one.
async fn idem_store(
    state: &AppState,
    principal: &Principal,
    idem: &Idem,
    status: StatusCode,
    body: Vec<u8>,
) -> ApiResult<Response> {
    let record = idem.record(principal);
    let inserted = on_write!(&state.db, pool => {
        insert_key_record!(pool, record, status, &body)
    });
    if inserted == 1 {
        return Ok(if status.is_success() {
            json_bytes(status, body)
        } else {
            replayed_first(status, body)
        });
    }
    idem_lookup(state, principal, idem)
        .await?
        .ok_or_else(|| ApiError::Internal("idempotency record vanished".into()))
}

fn replayed_first(status: StatusCode, body: Vec<u8>) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    r
}

/// Runs a command with idempotency around it.
async fn with_idempotency(
    state: &AppState,
    principal: &Principal,
    idem: Option<Idem>,
    run: impl std::future::Future<Output = ApiResult<Executed>>,
) -> ApiResult<Response> {
    let Some(idem) = idem else {
        return match run.await? {
            Executed::Answer(status, body) | Executed::Recorded(status, body) => {
                Ok(json_bytes(status, body))
            }
            Executed::KeyTaken => Err(ApiError::Internal(
                "a command without an Idempotency-Key found its key taken".into(),
            )),
        };
    };
    // No lookup before running: a command is pure until its append, and every way it
    // can end meets a stored record under the key. Its append is refused
    // (`KeyTaken`: events and record are written together), storing its response finds the
    // record (`idem_store`), and any other error looks the key up before it is returned.
    // So the first request with a key, the common case, costs no read, and a retry or a
    // reuse still gets the stored response or 422.
    match run.await {
        Ok(Executed::Recorded(status, body)) => Ok(json_bytes(status, body)),
        Ok(Executed::Answer(status, body)) => {
            idem_store(state, principal, &idem, status, body).await
        }
        Ok(Executed::KeyTaken) => idem_lookup(state, principal, &idem)
            .await?
            .ok_or_else(|| ApiError::Internal("idempotency record vanished".into())),
        // A rejection by the rules is a result too: the same request gets it again.
        Err(e) if e.is_command_result() => {
            idem_store(state, principal, &idem, e.status(), e.to_body()).await
        }
        Err(e) => match idem_lookup(state, principal, &idem).await? {
            Some(stored) => Ok(stored),
            None => Err(e),
        },
    }
}

/// Runs a request that is not a payment command (publishing a policy) under its
/// `Idempotency-Key`, as [`with_idempotency`] runs commands: an answer stored under the
/// key is replayed before anything runs. Otherwise `run` is given the key's
/// record, when there is a key, and writes it ([`insert_key_record`]) in the
/// transaction of its own writes: `Recorded` when both committed, `KeyTaken` when
/// another request holds the key (and nothing of this one is written). So of concurrent
/// requests with one key at most one writes anything; the others get its response
/// (`Idempotent-Replayed: true`) or, with another body, 422 `idempotency_key_reused`. A
/// rejection that is the request's answer ([`ApiError::is_command_result`]) is stored
/// under the key too. Without a key, `run` gets `None` and simply runs.
pub(crate) async fn idempotent_request<Run, Fut>(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    route: &str,
    body: &[u8],
    run: Run,
) -> ApiResult<Response>
where
    Run: FnOnce(Option<KeyRecord>) -> Fut,
    Fut: std::future::Future<Output = ApiResult<Executed>>,
{
    let idem = idempotency(headers, principal, route, body)?;
    // A retry (or a reuse) is answered from the reader, not the writer: the common case
    // after a lost answer. Not needed for a race: the one that loses it finds the key
    // taken in its own transaction.
    if let Some(i) = &idem {
        if let Some(stored) = idem_lookup(state, principal, i).await? {
            return Ok(stored);
        }
    }
    let record = idem.as_ref().map(|i| i.record(principal));
    with_idempotency(state, principal, idem, run(record)).await
}

/// The command's id: derived from the `Idempotency-Key` (a retry gets the same id, so the
/// same event ids), or else a fresh time-ordered UUID (version 7), whose events get
/// time-ordered ids too (`trustfold_core::id::derive`), so the stores' unique index on
/// event ids grows at its end: fewer pages written per durable commit.
fn command_id_for(principal: &Principal, idem: Option<&Idem>) -> CommandId {
    match idem {
        Some(i) => CommandId(derive(
            principal.tenant(),
            &format!("idempotency-key\0{}\0{}", principal.scope(), i.given),
            0,
        )),
        None => CommandId(Uuid::now_v7()),
    }
}

// ---------------------------------------------------------------------------------------
// Executing a command.

struct Prepared {
    payment: Uuid,
    command: Command,
    actor: Actor,
    expected: Option<u64>,
    correlation: Option<Uuid>,
    created: bool,
    /// The `Idempotency-Key`, if any. The command id comes from it (a retry has the same
    /// one, so its events may already be stored; a fresh random id never is), and the
    /// response is stored under it in the commit of the events.
    idem: Option<Idem>,
}

struct Emitted {
    env: Envelope,
    body: Vec<u8>,
    hash: [u8; 32],
}

/// The clock's `Tick` to one payment (actor `system`, as its tenant; see
/// [`crate::clock`]). A tick with nothing due any more (another process ticked it
/// first) records nothing and is no error.
pub(crate) async fn tick(state: &AppState, tenant: Uuid, payment: Uuid) -> ApiResult<()> {
    execute(
        state,
        &Principal::Tenant { tenant },
        CommandId(Uuid::now_v7()),
        Prepared {
            payment,
            command: Command::Tick,
            actor: Actor::system(),
            expected: None,
            correlation: None,
            created: false,
            idem: None,
        },
    )
    .await
    .map(|_| ())
}

fn write_record(out: &mut Vec<u8>, hash: &[u8; 32], body: &[u8]) {
    out.extend_from_slice(b"{\"hash\":\"");
    out.extend_from_slice(hex::encode(hash).as_bytes());
    out.extend_from_slice(b"\",\"event\":");
    out.extend_from_slice(body);
    out.push(b'}');
}

/// The response to a command: the new events (verbatim records, or the participant's
/// redacted view) and the state after them.
fn command_body(
    principal: &Principal,
    payment: Uuid,
    events: &[Emitted],
    state: &PaymentState,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(
        format!(
            "{{\"payment_id\":\"{payment}\",\"version\":{},\"events\":[",
            state.version
        )
        .as_bytes(),
    );
    match principal {
        Principal::Tenant { .. } => {
            for (i, e) in events.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_record(&mut out, &e.hash, &e.body);
            }
            out.extend_from_slice(b"],\"state\":");
            out.extend_from_slice(&state.to_json());
        }
        Principal::Participant(c) => {
            // The roles the party still holds (none, so nothing, if this command
            // removed it).
            let roles = participant_roles(state, c).unwrap_or_default();
            let envs: Vec<Envelope> = events.iter().map(|e| e.env.clone()).collect();
            let redacted = view::history_view(state, &envs, &roles);
            for (i, v) in redacted.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&serde_json::to_vec(v).unwrap_or_default());
            }
            out.extend_from_slice(b"],\"state\":");
            out.extend_from_slice(
                &serde_json::to_vec(&view::state_view(state, &roles)).unwrap_or_default(),
            );
        }
    }
    out.push(b'}');
    out
}

/// If this command's events are already stored (a retry after a lost response or a
/// crash), the response built from them.
async fn already_applied(
    state: &AppState,
    principal: &Principal,
    tenant: Uuid,
    payment: Uuid,
    command_id: CommandId,
) -> ApiResult<Option<Vec<u8>>> {
    let first = derive(command_id.uuid(), "event", 0);
    let Some(ev) = state.store.read_event(tenant, first).await? else {
        return Ok(None);
    };
    if ev.stream_id != payment {
        return Err(key_reused());
    }
    // A command's events are appended together, so they are the run of events from
    // the first one on whose causation is this command (however many it made).
    let mut emitted = Vec::new();
    let mut after = ev.seq - 1;
    'pages: loop {
        let page = state.store.read_stream(tenant, payment, after, 256).await?;
        let full = page.len() == 256;
        for e in page {
            let env =
                Envelope::from_json(&e.body).map_err(|e| ApiError::Internal(e.to_string()))?;
            if env.causation != Some(command_id.uuid()) {
                break 'pages;
            }
            after = e.seq;
            emitted.push(Emitted {
                env,
                body: e.body,
                hash: e.hash,
            });
        }
        if !full {
            break;
        }
    }
    let st = fold_stream(&state.store, tenant, payment, None, Some(after))
        .await?
        .ok_or_else(|| ApiError::Internal("stored command events do not fold".into()))?;
    Ok(Some(command_body(principal, payment, &emitted, &st)))
}

async fn execute(
    state: &AppState,
    principal: &Principal,
    command_id: CommandId,
    p: Prepared,
) -> ApiResult<Executed> {
    let tenant = principal.tenant();
    let ok_status = if p.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    // A command with an `Idempotency-Key` whose events are stored already (a retry after
    // a lost response) is normally answered from the key's record, written in the same
    // commit as the events; its events are looked up only when deciding it again did not
    // end in an append (events stored before records were, or by another route).
    let applied = || async {
        match &p.idem {
            Some(_) => already_applied(state, principal, tenant, p.payment, command_id).await,
            None => Ok(None),
        }
    };
    let ctx = Context {
        command_id,
        actor: p.actor.clone(),
        now: state.clock.now(),
        correlation: p.correlation,
    };
    // First try the state cached by this process without reading the store: the append's
    // expected-version check is the real judge. Anything that fails on the cached state
    // (another process may have appended since) is decided again on a fresh load.
    let mut optimistic = true;
    let mut attempt = 0;
    loop {
        let cached = if optimistic {
            state.cache.peek(tenant, p.payment)
        } else {
            None
        };
        let current = match cached {
            Some(s) => Some(s),
            None => {
                optimistic = false;
                attempt += 1;
                state.cache.load(&state.store, tenant, p.payment).await?
            }
        };
        let version = current.as_ref().map_or(0, |s| s.version);
        if current.is_none() && !p.created {
            return Err(ApiError::unknown_payment(p.payment));
        }
        if let Some(expected) = p.expected {
            if expected != version {
                if optimistic {
                    optimistic = false;
                    continue;
                }
                if let Some(body) = applied().await? {
                    return Ok(Executed::Answer(ok_status, body));
                }
                return Err(ApiError::VersionConflict {
                    expected,
                    current: version,
                });
            }
        }
        let decision = match handle(current.as_ref(), &p.command, &ctx) {
            Ok(d) => d,
            Err(_) if optimistic => {
                optimistic = false;
                continue;
            }
            Err(e) => {
                if let Some(body) = applied().await? {
                    return Ok(Executed::Answer(ok_status, body));
                }
                return Err(ApiError::from_core(e));
            }
        };
        let emitted: Vec<Emitted> = decision
            .events
            .into_iter()
            .zip(decision.sealed)
            .map(|(env, s)| Emitted {
                env,
                body: s.body,
                hash: s.hash.0,
            })
            .collect();
        if emitted.is_empty() {
            if optimistic {
                optimistic = false;
                continue;
            }
            if let Some(body) = applied().await? {
                return Ok(Executed::Answer(ok_status, body));
            }
            return Ok(Executed::Answer(
                ok_status,
                command_body(principal, p.payment, &[], &decision.state),
            ));
        }
        let batch: Vec<NewEvent> = emitted
            .iter()
            .map(|e| NewEvent {
                event_id: e.env.id.uuid(),
                event_type: e.env.event_type().name().to_owned(),
                schema_version: e.env.schema_version,
                body: e.body.clone(),
                hash: e.hash,
            })
            .collect();
        let body = command_body(principal, p.payment, &emitted, &decision.state);
        let appended = match &p.idem {
            // The response is stored under the key in the same commit as the events.
            Some(i) => {
                // Empty body: a replay rebuilds the response from these events (see
                // `idem_lookup`).
                let record = IdempotencyRecord {
                    key: i.key.clone(),
                    request_hash: i.request_hash,
                    status: ok_status.as_u16(),
                    body: Vec::new(),
                };
                state
                    .store
                    .append_recorded(tenant, p.payment, version, &batch, record)
                    .await
            }
            None => state.store.append(tenant, p.payment, version, &batch).await,
        };
        match appended {
            Ok(result) => {
                state.cache.put(decision.state);
                after_append(state, p.payment, result, batch);
                return Ok(if p.idem.is_some() {
                    Executed::Recorded(ok_status, body)
                } else {
                    Executed::Answer(ok_status, body)
                });
            }
            Err(StoreError::IdempotencyKeyTaken { .. }) => return Ok(Executed::KeyTaken),
            Err(StoreError::VersionConflict { .. }) if optimistic => optimistic = false,
            Err(StoreError::VersionConflict { .. })
                if p.expected.is_none() && attempt < CONFLICT_RETRIES => {}
            Err(StoreError::EventIdReused { .. }) => {
                // A concurrent retry of this very command won: answer from its events.
                if let Some(body) =
                    already_applied(state, principal, tenant, p.payment, command_id).await?
                {
                    return Ok(Executed::Answer(ok_status, body));
                }
                return Err(key_reused());
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Tells this process's live streams and its background projector. The response does
/// not wait for the read models: it carries the state folded by the command itself, and
/// the next read of a read model waits for them
/// ([`crate::projections::Projector::read_committed`]). (On PostgreSQL the store tells
/// the other processes by `NOTIFY` after the commit: see `PostgresStore`.)
fn after_append(state: &AppState, payment: Uuid, result: AppendResult, events: Vec<NewEvent>) {
    state.projector.appended(result.last_position);
    let _ = state
        .notices
        .send(notice(payment, result.new_version, events));
}

/// The notice of an append: with its events when they are at most [`NOTICE_BYTES`]. A
/// live stream whose client stopped reading keeps the channel's last notices alive
/// (4,096 of them, every tenant's), so what each holds is bounded; the streams read a
/// larger append from the store.
fn notice(payment: Uuid, version: u64, events: Vec<NewEvent>) -> Notice {
    let bytes: usize = events.iter().map(NewEvent::weight).sum();
    Notice {
        stream: payment,
        version,
        events: (bytes <= NOTICE_BYTES).then(|| std::sync::Arc::new(events)),
    }
}

/// The most event bytes a notice carries to this process's live streams.
const NOTICE_BYTES: usize = 8 * 1024;

fn expected_version(headers: &HeaderMap, body_value: Option<u64>) -> ApiResult<Option<u64>> {
    let header = match headers.get(header::IF_MATCH) {
        None => None,
        Some(v) => {
            // One entity tag, `"3"` (or `W/"3"`), as the ETag of reads gives it.
            let given = String::from_utf8_lossy(v.as_bytes());
            let raw = given.trim();
            let tag = raw.strip_prefix("W/").unwrap_or(raw);
            let version = tag
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|t| t.parse::<u64>().ok());
            Some(version.ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_parameter",
                    "If-Match",
                    format!(
                        "If-Match must be one payment version as an entity tag, such as \"3\", \
                         got `{}`",
                        trustfold_core::error::echo(raw)
                    ),
                )
            })?)
        }
    };
    match (header, body_value) {
        (Some(h), Some(b)) if h != b => Err(ApiError::bad_request(
            "invalid_parameter",
            "expected_version",
            "If-Match and expected_version disagree",
        )),
        (h, b) => Ok(h.or(b)),
    }
}

/// A rejection as a participant may read it, telling no more than its view shows: when
/// the view hides amounts, the amounts a rule's message quotes (`only 4321.98 USD is
/// available`) and the digests over them (`terms_hash`, `allocations_hash`) are masked;
/// when it hides what the payment's status tells (a dispute, a request), the message
/// names the status the view shows; and a view that hides disputes reads a refusal
/// because of one (`payment_disputed`, `dispute_open`) as `invalid_state`.
async fn hide_amounts(state: &AppState, c: &TokenClaims, e: ApiError) -> ApiError {
    let Ok(st) = load_state(state, c.tenant, c.payment).await else {
        // Not known what the view hides: nothing but the code.
        let message = "refused by the payment's rules".to_owned();
        return match e {
            ApiError::Unprocessable { code, field, .. } => ApiError::Unprocessable {
                code,
                message,
                field,
            },
            ApiError::Forbidden { code, .. } => ApiError::Forbidden { code, message },
            ApiError::Refused { code, .. } => ApiError::Refused { code, message },
            other => other,
        };
    };
    let roles = participant_roles(&st, c).unwrap_or_default();
    let vis = st.policy_doc.visibility_for(&roles);
    use trustfold_core::policy::Hidden;
    let amounts = vis.hide.contains(&Hidden::Amounts);
    let disputes = vis.hide.contains(&Hidden::Disputes);
    let shown = trustfold_core::view::shown_status(&st, &roles);
    let tell = |code: &'static str, message: String| -> (&'static str, String) {
        let mut m = message;
        if shown != st.status {
            m = m.replace(
                &format!("payment is {:?}", st.status),
                &format!("payment is {shown:?}"),
            );
        }
        // A refusal because of a dispute (or naming one: a request that carries out a
        // dispute's resolution) where the view hides disputes.
        if disputes
            && (matches!(code, "payment_disputed" | "dispute_open")
                || m.to_ascii_lowercase().contains("dispute"))
        {
            return (
                "invalid_state",
                format!("not possible while the payment is {shown:?}"),
            );
        }
        if amounts {
            m = mask_digests(&mask_amounts(&m));
        }
        (code, m)
    };
    match e {
        ApiError::Unprocessable {
            code,
            message,
            field,
        } => {
            let (code, message) = tell(code, message);
            ApiError::Unprocessable {
                code,
                message,
                field,
            }
        }
        ApiError::Forbidden { code, message } => {
            let (code, message) = tell(code, message);
            ApiError::Forbidden { code, message }
        }
        ApiError::Refused { code, message } => {
            let (code, message) = tell(code, message);
            ApiError::Refused { code, message }
        }
        other => other,
    }
}

/// Words of 64 hex digits (a SHA-256 digest such as `terms_hash`) → `[digest hidden]`.
fn mask_digests(message: &str) -> String {
    message
        .split(' ')
        .map(|w| {
            let core = w.trim_matches(|ch: char| !ch.is_ascii_alphanumeric());
            if core.len() == 64 && core.bytes().all(|b| b.is_ascii_hexdigit()) {
                w.replace(core, "[digest hidden]")
            } else {
                w.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `… 4321.98 USD …` → `… [amount hidden] …`: a number followed by a currency code.
fn mask_amounts(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let words: Vec<&str> = message.split(' ').collect();
    let mut i = 0;
    while i < words.len() {
        let number = words[i]
            .trim_start_matches('-')
            .chars()
            .all(|ch| ch.is_ascii_digit() || ch == '.' || ch == ',')
            && words[i].chars().any(|ch| ch.is_ascii_digit());
        let currency = words.get(i + 1).is_some_and(|w| {
            let code = w.trim_end_matches(|ch: char| !ch.is_ascii_alphabetic());
            code.len() == 3 && code.chars().all(|ch| ch.is_ascii_uppercase())
        });
        if !out.is_empty() {
            out.push(' ');
        }
        if number && currency {
            let next = words[i + 1];
            let tail = next.trim_start_matches(|ch: char| ch.is_ascii_uppercase());
            out.push_str("[amount hidden]");
            out.push_str(tail);
            i += 2;
        } else {
            out.push_str(words[i]);
            i += 1;
        }
    }
    out
}

/// Checks that a participant acts as itself, in a role its token carries.
fn check_actor(principal: &Principal, actor: Option<Actor>) -> ApiResult<Actor> {
    match principal {
        Principal::Tenant { .. } => actor.ok_or_else(|| {
            ApiError::bad_request(
                "invalid_request",
                "actor",
                "a command sent with an API key names its actor: {\"party\":\"…\",\"role\":\"…\"}",
            )
        }),
        Principal::Participant(c) => {
            let actor = match actor {
                Some(a) => a,
                None => Actor::party(PartyId(c.party), c.roles.first().map_or("", Role::as_str)),
            };
            if actor.party.map(|p| p.uuid()) != Some(c.party) {
                return Err(ApiError::Forbidden {
                    code: "not_permitted",
                    message: "a participant token acts only as its own party".into(),
                });
            }
            if !c.roles.contains(&actor.role) {
                return Err(ApiError::Forbidden {
                    code: "not_permitted",
                    message: format!(
                        "this token may not act in role `{}`",
                        trustfold_core::error::echo(actor.role.as_str())
                    ),
                });
            }
            Ok(actor)
        }
    }
}

/// A 422 of the core about one of a command's values names the field within the
/// command (`amount`, `reason`, `roles`); in the request it is `command.amount`: the
/// reader's refusals of values, and the rules' refusals of a command's text
/// (`text_too_long`, `invalid_text`) and roles (`duplicate_role`). (Before 2026-11-29
/// the rules' refusals named the field alone, `reason`; answers stored under an
/// `Idempotency-Key` then are replayed as they were.)
fn in_command(e: ApiError) -> ApiError {
    match e {
        ApiError::Unprocessable {
            code,
            message,
            field: Some(f),
        } if !f.starts_with("command.") => ApiError::Unprocessable {
            code,
            message,
            field: Some(format!("command.{f}")),
        },
        other => other,
    }
}

/// The rules' refusals that name a field of the command ([`in_command`]).
fn names_a_command_field(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::Unprocessable {
            code: "text_too_long" | "invalid_text" | "duplicate_role",
            field: Some(_),
            ..
        }
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandRequest {
    command: serde_json::Value,
    #[serde(default, deserialize_with = "body::optional_object")]
    actor: Option<Actor>,
    #[serde(default)]
    expected_version: Option<u64>,
    #[serde(default)]
    correlation: Option<Uuid>,
}

/// `POST /v1/payments/{payment_id}/commands`; with `nonce`, a success is signed (see
/// [`signed_answer`]).
pub async fn send_command(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Params,
    Body(body): Body,
) -> ApiResult<Response> {
    let payment = parse_id(&id, "payment_id")?;
    principal.check_payment(payment)?;
    let nonce = nonce_param(&params(query)?)?;
    let idem = idempotency(
        &headers,
        &principal,
        &format!("POST /v1/payments/{payment}/commands"),
        &body,
    )?;
    let command_id = command_id_for(&principal, idem.as_ref());
    let key = idem.clone();
    let run = async {
        if let Principal::Participant(c) = &principal {
            // A removed party's token acts no more, as it reads no more: 403
            // `participant_removed` (not the core's `unknown_participant`, which would
            // say the party never was one). Inside the run, so a retry of a command sent
            // before the removal still gets its stored answer. This process's cached
            // state answers for a party still in it (no read); the store decides
            // otherwise, and a removal the cache has not seen yet is caught below.
            let cached = state.cache.peek(c.tenant, payment);
            if cached.is_none_or(|st| participant_roles(&st, c).is_err()) {
                participant_roles(&load_state(&state, c.tenant, payment).await?, c)?;
            }
        }
        let req: CommandRequest = parse_json(&body)?;
        // The core's reader judges the command, as in every SDK (serde's derive lets
        // unknown fields through on field-less commands such as `Join`).
        let command = serde_json::to_vec(&req.command)
            .map_err(|e| ApiError::Internal(e.to_string()))
            .and_then(|bytes| {
                Command::from_json(&bytes).map_err(|e| match ApiError::from_core(e) {
                    ApiError::BadRequest { code, message, .. } => ApiError::BadRequest {
                        code,
                        message: format!("command: {message}"),
                        field: Some("command".into()),
                    },
                    // A value the domain refuses, at its place in the command: the
                    // core's field, or the amount it refuses.
                    ApiError::Unprocessable {
                        code,
                        message,
                        field,
                    } => in_command(ApiError::Unprocessable {
                        code,
                        message,
                        field: field.or_else(|| body::refused_amount_at(&req.command, code)),
                    }),
                    other => other,
                })
            })?;
        if matches!(command, Command::Initiate { .. }) {
            return Err(ApiError::Unprocessable {
                code: "invalid_command",
                message: "open a payment with POST /v1/payments".into(),
                field: Some("command.type".into()),
            });
        }
        let expected = expected_version(&headers, req.expected_version)?;
        let actor = match (&principal, req.actor) {
            // A token's command without an actor acts in the first of its roles the
            // party still holds (one it lost would refuse the command, and a refusal
            // under an Idempotency-Key is kept for every retry).
            (Principal::Participant(c), None) => {
                let st = load_state(&state, c.tenant, c.payment).await?;
                let held = participant_roles(&st, c)?;
                let role = held.first().map_or("", Role::as_str);
                check_actor(&principal, Some(Actor::party(PartyId(c.party), role)))?
            }
            (_, actor) => check_actor(&principal, actor)?,
        };
        let outcome = execute(
            &state,
            &principal,
            command_id,
            Prepared {
                payment,
                command,
                actor,
                expected,
                correlation: req.correlation,
                created: false,
                idem: key.clone(),
            },
        )
        .await
        .map_err(|e| match names_a_command_field(&e) {
            true => in_command(e),
            false => e,
        });
        match (outcome, &principal) {
            // Removed by another process since this one cached the state: the core,
            // judging on the fresh state, did not find the party.
            (Err(ApiError::Refused { code, message }), Principal::Participant(c))
                if code == "unknown_participant" =>
            {
                participant_roles(&load_state(&state, c.tenant, payment).await?, c)?;
                Err(ApiError::Refused { code, message })
            }
            (Err(e), Principal::Participant(c)) => Err(hide_amounts(&state, c, e).await),
            (outcome, _) => outcome,
        }
    };
    let answer = with_idempotency(&state, &principal, idem, run).await?;
    signed_answer(
        answer,
        Some(payment),
        nonce.as_deref(),
        &headers,
        &state.secret,
    )
    .await
}

/// What a command's signed answer is to (see [`SignedResponse`]): `/commands` with the
/// request's nonce, for commands and for opening a payment alike.
pub const COMMAND_ANSWER: &str = "/commands";

/// A command's success (200 or 201, a replay under its `Idempotency-Key` included),
/// signed as the answer to `/commands?nonce=N` about its payment when the request
/// asked with a `nonce` (`Trustfold-Signature`, as reads are): a client holding the
/// pinned key can tell the server's answer to this very request from one changed or
/// replayed on the way, without reading the payment again. Only when asked: a
/// signature costs the command path an Ed25519 signing, which clients that do not
/// check it should not pay for. Refusals (problem documents) are not signed; the same
/// request with the same key gets the same answer again. `payment` is `None` when the
/// request did not name it (opening one): the answer's `payment_id` says it.
async fn signed_answer(
    answer: Response,
    payment: Option<Uuid>,
    nonce: Option<&str>,
    headers: &HeaderMap,
    secret: &[u8; 32],
) -> ApiResult<Response> {
    let Some(nonce) = nonce else {
        return Ok(answer);
    };
    if !answer.status().is_success() {
        return Ok(answer);
    }
    let (mut parts, body) = answer.into_parts();
    // The answer is in memory already (a command's events and state).
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|e| ApiError::Internal(format!("reading a command's answer: {e}")))?;
    let payment = match payment {
        Some(p) => p,
        None => {
            #[derive(Deserialize)]
            struct Opened {
                payment_id: Uuid,
            }
            serde_json::from_slice::<Opened>(&bytes)
                .map_err(|e| ApiError::Internal(format!("a command's answer: {e}")))?
                .payment_id
        }
    };
    let what = with_nonce(COMMAND_ANSWER.to_owned(), Some(nonce));
    let signature = SignedResponse::sign(
        PaymentId(payment),
        &what,
        credential(headers),
        &bytes,
        secret,
    );
    if let Ok(v) = HeaderValue::from_str(&signature) {
        parts.headers.insert(SIGNATURE_HEADER, v);
    }
    Ok(Response::from_parts(parts, axum::body::Body::from(bytes)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RailNoticeRequest {
    rail_ref: String,
    notice: serde_json::Value,
}

/// `POST /v1/rail-notices`: a rail's notice about a transfer, named by the rail's
/// reference only, as a bank's webhook knows it: the payment that submitted the
/// transfer under that reference gets the core's `RailNotice` (actor `rail`), through
/// the same path as any command (idempotency, live streams, a signed answer with
/// `nonce`; no expected version, which a bank does not know). With an API key only. A
/// reference no payment of the tenant used yet (the notice overtook the submission) is
/// held: 202 with the held notice (`status: "held"`), applied when a payment records
/// the transfer ([`crate::rail_notices`]); a signed answer about no payment (the nil
/// id). So is one for a reference that earlier held notices still wait for (it is
/// applied after them). What a held notice says alone is checked first (422). One used by more than one payment is 409 `ambiguous_rail_ref` (send it to the
/// payment's own commands route).
pub async fn post_rail_notice(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    query: Params,
    Body(body): Body,
) -> ApiResult<Response> {
    let tenant = principal.require_tenant()?;
    let nonce = nonce_param(&params(query)?)?;
    let idem = idempotency(&headers, &principal, "POST /v1/rail-notices", &body)?;
    let command_id = command_id_for(&principal, idem.as_ref());
    let key = idem.clone();
    let run = async {
        let req: RailNoticeRequest = parse_json(&body)?;
        let command = serde_json::to_vec(&serde_json::json!({
            "type": "RailNotice",
            "rail_ref": req.rail_ref,
            "notice": req.notice,
        }))
        .map_err(|e| ApiError::Internal(e.to_string()))
        .and_then(|bytes| Command::from_json(&bytes).map_err(ApiError::from_core))?;
        let payment = payment_of_rail_ref(&state, tenant, &req.rail_ref).await?;
        // Behind the notices still waiting for this reference, in the order received.
        let behind = match payment {
            Some(_) => crate::rail_notices::waiting_for(&state, tenant, &req.rail_ref).await?,
            None => true,
        };
        let (false, Some(payment)) = (behind, payment) else {
            let Command::RailNotice { rail_ref, notice } = &command else {
                return Err(ApiError::Internal(
                    "a rail notice read as another command".into(),
                ));
            };
            // One that could never apply is refused now, not kept to fail later.
            trustfold_core::decide::check_alone(&command).map_err(ApiError::from_core)?;
            // A key used before is answered from its record (a retry: the same answer;
            // another request: 422) before anything is held: the notice's id is the
            // key's command id, which the other request's events carry.
            if let Some(i) = key.as_ref() {
                if idem_lookup(&state, &principal, i).await?.is_some() {
                    return Ok(Executed::KeyTaken);
                }
            }
            let held =
                crate::rail_notices::hold(&state, tenant, command_id.uuid(), rail_ref, notice)
                    .await?;
            return Ok(Executed::Answer(StatusCode::ACCEPTED, held));
        };
        execute(
            &state,
            &principal,
            command_id,
            Prepared {
                payment,
                command,
                actor: Actor::rail(),
                expected: None,
                correlation: None,
                created: false,
                idem: key.clone(),
            },
        )
        .await
    };
    let answer = with_idempotency(&state, &principal, idem, run).await?;
    // A held notice's answer is about no payment yet.
    let about = (answer.status() == StatusCode::ACCEPTED).then_some(Uuid::nil());
    signed_answer(answer, about, nonce.as_deref(), &headers, &state.secret).await
}

/// A held rail notice given to the payment that recorded its transfer (actor `rail`,
/// as its tenant; see [`crate::rail_notices`]). The command id is the notice's id: run
/// again after a crash between its append and the notice's status update, it finds its
/// events stored and records nothing new (whatever the payment did since).
pub(crate) async fn held_notice(
    state: &AppState,
    tenant: Uuid,
    payment: Uuid,
    notice_id: Uuid,
    rail_ref: &str,
    notice: trustfold_core::command::RailOutcome,
) -> ApiResult<()> {
    let principal = Principal::Tenant { tenant };
    let command_id = CommandId(notice_id);
    if already_applied(state, &principal, tenant, payment, command_id)
        .await?
        .is_some()
    {
        return Ok(());
    }
    execute(
        state,
        &principal,
        command_id,
        Prepared {
            payment,
            command: Command::RailNotice {
                rail_ref: rail_ref.to_owned(),
                notice,
            },
            actor: Actor::rail(),
            expected: None,
            correlation: None,
            created: false,
            idem: None,
        },
    )
    .await
    .map(|_| ())
}

/// The one payment of `tenant` that used `rail_ref` (read model `rail_refs`, caught up
/// to the tenant's own appends first, so a transfer submitted a moment ago is found);
/// `None` when none did. One used by more than one is 409 `ambiguous_rail_ref`.
pub(crate) async fn payment_of_rail_ref(
    state: &AppState,
    tenant: Uuid,
    rail_ref: &str,
) -> ApiResult<Option<Uuid>> {
    state.projector.read_committed(tenant).await?;
    let found: Vec<(Uuid,)> = on_read!(&state.db, pool => {
        sqlx::query_as(
            "SELECT payment_id FROM payment_rail_refs WHERE tenant_id = $1 AND rail_ref = $2 \
             ORDER BY payment_id LIMIT 5",
        )
        .bind(tenant)
        .bind(rail_ref)
        .fetch_all(pool)
        .await
        .map_err(StoreError::from)?
    });
    let echo = trustfold_core::error::echo(rail_ref);
    match found.as_slice() {
        [] => Ok(None),
        [(payment,)] => Ok(Some(*payment)),
        more => Err(ApiError::Conflict {
            code: "ambiguous_rail_ref",
            message: format!(
                "rail reference {echo} was used by more than one payment of this tenant ({}): \
                 send the notice to the right one (POST /v1/payments/{{payment_id}}/commands)",
                more.iter()
                    .map(|(p,)| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Initiator {
    party: Uuid,
    roles: Vec<Role>,
    #[serde(default)]
    role: Option<Role>,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreatePayment {
    #[serde(default)]
    payment_id: Option<Uuid>,
    policy: String,
    #[serde(default)]
    policy_version: Option<u32>,
    #[serde(deserialize_with = "body::object")]
    amount: Money,
    #[serde(default)]
    description: String,
    #[serde(deserialize_with = "body::object")]
    initiator: Initiator,
    #[serde(default)]
    correlation: Option<Uuid>,
}

/// `POST /v1/payments`; with `nonce`, a success is signed (see [`signed_answer`]).
pub async fn create_payment(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    query: Params,
    Body(body): Body,
) -> ApiResult<Response> {
    let tenant = principal.require_tenant()?;
    let nonce = nonce_param(&params(query)?)?;
    let idem = idempotency(&headers, &principal, "POST /v1/payments", &body)?;
    let command_id = command_id_for(&principal, idem.as_ref());
    let key = idem.clone();
    let run =
        async {
            let req: CreatePayment = parse_json(&body)?;
            let (text, _) = load_policy(&state.db, tenant, &req.policy, req.policy_version)
                .await?
                .ok_or_else(|| {
                    let name = trustfold_core::error::echo(&req.policy);
                    let (message, field) = match req.policy_version {
                        Some(v) => (
                            format!(
                                "policy {name} has no stored version {v} (GET /v1/policies/\
                                 {name} gives its latest; publish a version with POST \
                                 /v1/policies)"
                            ),
                            "policy_version",
                        ),
                        None => (
                            format!("no stored policy {name} (publish it with POST /v1/policies)"),
                            "policy",
                        ),
                    };
                    ApiError::Unprocessable {
                        code: "unknown_policy",
                        message,
                        field: Some(field.into()),
                    }
                })?;
            // A policy stored before a bound was added is refused for new payments
            // (422 invalid_policy: publish a new version), not a 500.
            let policy = Policy::from_json(&text).map_err(ApiError::from_core)?;
            let role =
                match &req.initiator.role {
                    Some(r) => r.clone(),
                    None => req.initiator.roles.first().cloned().ok_or_else(|| {
                        ApiError::Unprocessable {
                            code: "roles_required",
                            message: "the initiator needs at least one role".into(),
                            field: Some("initiator.roles".into()),
                        }
                    })?,
                };
            if req.payment_id.is_some_and(|p| p.is_nil()) {
                // An id left at its zero value is a caller's bug, and every caller making
                // it would meet on one payment.
                return Err(ApiError::Unprocessable {
                    code: "invalid_id",
                    message: "payment_id is the nil UUID (all zeros): give a fresh UUID, or \
                              leave payment_id out and the server makes one"
                        .into(),
                    field: Some("payment_id".into()),
                });
            }
            let payment = req
                .payment_id
                .unwrap_or_else(|| derive(command_id.uuid(), "payment", 0));
            let actor = Actor {
                party: Some(PartyId(req.initiator.party)),
                role,
            };
            let command = Command::Initiate {
                payment: PaymentId(payment),
                tenant: TenantId(tenant),
                policy: Box::new(policy),
                amount: req.amount,
                description: req.description,
                roles: req.initiator.roles,
                name: req.initiator.name,
            };
            execute(
                &state,
                &principal,
                command_id,
                Prepared {
                    payment,
                    command,
                    actor,
                    expected: Some(0),
                    correlation: req.correlation,
                    created: true,
                    idem: key.clone(),
                },
            )
            .await
            .map_err(|e| match e {
                ApiError::VersionConflict { .. } => ApiError::Conflict {
                    code: "payment_exists",
                    message: format!("payment {payment} already exists"),
                },
                other => other,
            })
        };
    let answer = with_idempotency(&state, &principal, idem, run).await?;
    signed_answer(answer, None, nonce.as_deref(), &headers, &state.secret).await
}

// ---------------------------------------------------------------------------------------
// Reads.

async fn load_state(state: &AppState, tenant: Uuid, payment: Uuid) -> ApiResult<PaymentState> {
    state
        .cache
        .load(&state.store, tenant, payment)
        .await?
        .ok_or_else(|| ApiError::unknown_payment(payment))
}

/// The roles a participant token reads and acts in now: those of its roles the party
/// still holds. A token of a removed party (or one whose roles were all taken away)
/// reads nothing more: 403.
pub fn participant_roles(st: &PaymentState, c: &TokenClaims) -> ApiResult<Vec<Role>> {
    let Some(p) = st.participants.get(&PartyId(c.party)) else {
        return Err(ApiError::Forbidden {
            code: "participant_removed",
            message: format!("party {} is not a participant of this payment", c.party),
        });
    };
    if p.removed {
        return Err(ApiError::Forbidden {
            code: "participant_removed",
            message: format!(
                "party {} was removed from this payment: its tokens no longer read or act",
                c.party
            ),
        });
    }
    let roles: Vec<Role> = c
        .roles
        .iter()
        .filter(|r| p.roles.contains(r))
        .cloned()
        .collect();
    if roles.is_empty() {
        return Err(ApiError::Forbidden {
            code: "not_permitted",
            message: "the party no longer holds any of this token's roles; mint a new token".into(),
        });
    }
    Ok(roles)
}

/// `If-None-Match` names the current version (RFC 9110 §13.1.2: `*`, or a list of
/// entity tags compared weakly, so `W/"7"` matches `"7"`).
fn none_match_hits(headers: &HeaderMap, version: u64) -> bool {
    let current = format!("\"{version}\"");
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == current)
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// `GET /v1/payments/{payment_id}`: the state from the read model (a participant gets
/// its policy view); `ETag` is the version.
pub async fn get_payment(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Params,
) -> ApiResult<Response> {
    let payment = parse_id(&id, "payment_id")?;
    principal.check_payment(payment)?;
    let nonce = nonce_param(&params(query)?)?;
    let tenant = principal.tenant();
    let (version, body) = match &principal {
        Principal::Tenant { .. } => {
            // No wait for the read models: a summary behind the stream's head gives way
            // to the state folded from the log (below), so a projection running late
            // (or failing to write) costs this read a fold, not a wait or an error.
            let row: Option<(i64, String)> = on_read!(&state.db, pool => {
                sqlx::query_as(
                    "SELECT version, state FROM payment_summary WHERE payment_id = $1 \
                     AND tenant_id = $2",
                )
                .bind(payment)
                .bind(tenant)
                .fetch_optional(pool)
                .await
                .map_err(StoreError::from)?
            });
            let projected = match row {
                Some((v, s)) => {
                    // A command acknowledged a moment ago (by this process or another)
                    // may not be projected yet: a summary behind the stream's head gives
                    // way to the state folded from the log, so a read after a command
                    // sees it whichever process took the command.
                    let v = u64::try_from(v).unwrap_or(0);
                    let head = state.store.stream_head(tenant, payment).await?;
                    head.is_none_or(|h| h.version <= v)
                        .then(|| (v, s.into_bytes()))
                }
                None => None,
            };
            match projected {
                Some(p) => p,
                // Not projected yet (another process appended it a moment ago).
                None => {
                    let s = load_state(&state, tenant, payment).await?;
                    (s.version, s.to_json())
                }
            }
        }
        Principal::Participant(c) => {
            let s = load_state(&state, tenant, payment).await?;
            let roles = participant_roles(&s, c)?;
            (
                s.version,
                serde_json::to_vec(&view::state_view(&s, &roles)).unwrap_or_default(),
            )
        }
    };
    let tag = etag(version);
    // A 304 carries no body to sign: with a nonce (a client checking the answer is
    // fresh) the state is always sent, signed.
    if nonce.is_none() && none_match_hits(&headers, version) {
        let mut res = StatusCode::NOT_MODIFIED.into_response();
        res.headers_mut().insert(header::ETAG, tag);
        return Ok(res);
    }
    let what = with_nonce(String::new(), nonce.as_deref());
    let mut res = signed_json(body, payment, &what, credential(&headers), &state.secret);
    res.headers_mut().insert(header::ETAG, tag);
    Ok(res)
}

/// The header carrying [`SignedResponse`]'s signature of a payment's state or page.
pub const SIGNATURE_HEADER: &str = "trustfold-signature";

/// A 200 JSON answer to `what` about `payment` (see [`SignedResponse`]), signed
/// (`Trustfold-Signature`): a participant's
/// redacted view cannot be verified against the history, but a client holding the
/// pinned key can tell the server's own answer from one changed on the way.
fn signed_json(
    body: Vec<u8>,
    payment: Uuid,
    what: &str,
    credential: &str,
    secret: &[u8; 32],
) -> Response {
    let signature = SignedResponse::sign(PaymentId(payment), what, credential, &body, secret);
    let mut res = json_bytes(StatusCode::OK, body);
    if let Ok(v) = HeaderValue::from_str(&signature) {
        res.headers_mut().insert(SIGNATURE_HEADER, v);
    }
    res
}

/// Largest page of events in bytes (beyond the first event): a page of large events
/// (each `PaymentInitiated` embeds its policy) ends early, with `has_more`.
const PAGE_BYTES: usize = 4 << 20;

/// Reads the events of a page of at most `limit` after `after` (plus one, to tell
/// whether there are more) in chunks, stopping once their bodies pass [`PAGE_BYTES`]:
/// a page of large events (policies embedded) no longer loads a thousand of them to
/// answer sixteen. `fetch(after, n)` reads `n` events after a key; `key` is an event's
/// key (its `seq` in a stream, its `position` in the feed).
async fn read_page<F, Fut>(
    mut fetch: F,
    after: u64,
    limit: u32,
    key: fn(&StoredEvent) -> u64,
) -> Result<Vec<StoredEvent>, StoreError>
where
    F: FnMut(u64, u32) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<StoredEvent>, StoreError>>,
{
    /// The first chunk: a page of 100 ordinary events is read in two reads, and one
    /// of the largest events (policies of up to 256 KiB) loads at most 16 MiB.
    const FIRST: usize = 64;
    let want = limit as usize + 1;
    let (mut out, mut bytes, mut from) = (Vec::new(), 0usize, after);
    let mut n = want.min(FIRST);
    loop {
        let chunk = fetch(from, u32::try_from(n).unwrap_or(u32::MAX)).await?;
        let short = chunk.len() < n;
        for e in chunk {
            bytes = bytes.saturating_add(e.body.len());
            from = key(&e);
            out.push(e);
        }
        if short || out.len() >= want || bytes > PAGE_BYTES {
            return Ok(out);
        }
        // As many more as the budget left holds at the average size so far (and one
        // more, to pass it), but never more than read so far: small events then large
        // ones load at most about twice what a page holds.
        let average = (bytes / out.len()).max(1);
        n = ((PAGE_BYTES - bytes) / average + 1)
            .min(out.len())
            .clamp(1, want - out.len());
    }
}

/// How many of the fetched events (bodies of these sizes) a page of at most `limit`
/// takes: all up to the limit, unless their bodies pass [`PAGE_BYTES`].
fn page_len(sizes: impl Iterator<Item = usize>, limit: u32) -> usize {
    let mut total = 0usize;
    let mut n = 0usize;
    for size in sizes.take(limit as usize) {
        total = total.saturating_add(size);
        if n > 0 && total > PAGE_BYTES {
            break;
        }
        n += 1;
    }
    n
}

/// `GET /v1/payments/{payment_id}/events?after=SEQ&limit=N`: the verifiable history,
/// records byte for byte as stored (a participant gets its redacted view instead).
pub async fn get_events(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Params,
) -> ApiResult<Response> {
    let payment = parse_id(&id, "payment_id")?;
    principal.check_payment(payment)?;
    let tenant = principal.tenant();
    let q = params(query)?;
    let after = param_u64(&q, "after")?.unwrap_or(0);
    let limit = limit_param(&q, 100, 1000)?;
    let nonce = nonce_param(&q)?;
    let reader = match &principal {
        Principal::Tenant { .. } => {
            if state.store.stream_head(tenant, payment).await?.is_none() {
                return Err(ApiError::unknown_payment(payment));
            }
            None
        }
        Principal::Participant(c) => {
            let st = load_state(&state, tenant, payment).await?;
            let roles = participant_roles(&st, c)?;
            Some((st, roles))
        }
    };
    let store = &state.store;
    let mut events = read_page(
        |from, n| store.read_stream(tenant, payment, from, n),
        after,
        limit,
        |e| e.seq,
    )
    .await?;
    let keep = page_len(events.iter().map(|e| e.body.len()), limit);
    let has_more = events.len() > keep;
    events.truncate(keep);
    let next = events.last().map_or(after, |e| e.seq);
    let mut out = Vec::with_capacity(events.iter().map(|e| e.body.len() + 90).sum::<usize>() + 64);
    out.extend_from_slice(b"{\"events\":[");
    // A participant whose roles the policy hides nothing from reads the verifiable
    // records, as the tenant does; anyone else its redacted view.
    let view = reader.filter(|(st, roles)| !sees_everything(st, roles));
    match &view {
        None => {
            for (i, e) in events.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_record(&mut out, &e.hash, &e.body);
            }
        }
        Some((st, roles)) => {
            let mut first = true;
            for e in &events {
                for v in redacted(st, e, roles)? {
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    out.extend_from_slice(
                        &serde_json::to_vec(&serde_json::json!({"seq": e.seq, "event": v}))
                            .unwrap_or_default(),
                    );
                }
            }
        }
    }
    out.push(b']');
    if view.is_some() {
        // Says so, so a client expecting verifiable records can tell a view it cannot
        // verify from a damaged page.
        out.extend_from_slice(b",\"redacted\":true");
    }
    out.extend_from_slice(format!(",\"has_more\":{has_more},\"next\":{next}}}").as_bytes());
    Ok(signed_json(
        out,
        payment,
        &with_nonce(format!("/events?after={after}"), nonce.as_deref()),
        credential(&headers),
        &state.secret,
    ))
}

/// The bearer credential a read was made with (empty without one), which its answer's
/// signature covers: another participant's answer does not verify for this one.
fn credential(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, token)| token.trim())
}

/// The optional `nonce` of a read: 16 to 128 characters from `[A-Za-z0-9_-]`, chosen
/// at random by a client that wants to know the answer is fresh. The server signs it
/// with the answer (`Trustfold-Signature`), so an old answer replayed by someone on
/// the way cannot pass for the answer to this request.
fn nonce_param(q: &HashMap<String, String>) -> ApiResult<Option<String>> {
    let Some(n) = q.get("nonce") else {
        return Ok(None);
    };
    let ok = (16..=128).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            "nonce",
            "`nonce` takes 16 to 128 characters from A-Z, a-z, 0-9, `-` and `_` \
             (a random value the answer's signature will cover)",
        ));
    }
    Ok(Some(n.clone()))
}

/// `what` of a signed answer, with the request's nonce appended as asked.
fn with_nonce(what: String, nonce: Option<&str>) -> String {
    match nonce {
        Some(n) => SignedResponse::with_nonce(&what, n),
        None => what,
    }
}

/// True when the policy hides nothing from `roles`: they get the verifiable records
/// byte for byte, like the tenant (a redacted view cannot be verified).
pub fn sees_everything(st: &PaymentState, roles: &[Role]) -> bool {
    let vis = st.policy_doc.visibility_for(roles);
    vis.events == EventFilter::All && vis.hide.is_empty()
}

/// A stored event as the roles may see it (empty when they may not see it at all).
pub fn redacted(
    st: &PaymentState,
    e: &StoredEvent,
    roles: &[Role],
) -> ApiResult<Vec<serde_json::Value>> {
    let env = Envelope::from_json(&e.body).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(view::history_view(st, &[env], roles))
}

/// `GET /v1/payments/{payment_id}/head`: the stream head signed by the server key.
pub async fn get_head(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Params,
) -> ApiResult<Response> {
    let payment = parse_id(&id, "payment_id")?;
    principal.check_payment(payment)?;
    let nonce = nonce_param(&params(query)?)?;
    if let Principal::Participant(c) = &principal {
        let st = load_state(&state, c.tenant, payment).await?;
        let roles = participant_roles(&st, c)?;
        // The head is the hash of the last event, amounts and all: given to a view that
        // hides something, it would let likely values be tried against it (and it
        // verifies nothing such a participant holds).
        if !sees_everything(&st, &roles) {
            return Err(ApiError::Forbidden {
                code: "head_not_visible",
                message: "the signed head covers what this participant's view hides: \
                          read the payment's view instead"
                    .into(),
            });
        }
    }
    let head = state
        .store
        .stream_head(principal.tenant(), payment)
        .await?
        .ok_or_else(|| ApiError::unknown_payment(payment))?;
    let signed = SignedHead::sign(
        PaymentId(payment),
        head.version,
        Hash(head.last_hash),
        &state.secret,
    );
    // The head signs itself; the answer's signature (with the request's nonce) says
    // it is the server's head now, not an older one replayed.
    let body = serde_json::to_vec(&signed).map_err(|e| ApiError::Internal(e.to_string()))?;
    let what = with_nonce("/head".into(), nonce.as_deref());
    let mut res = signed_json(body, payment, &what, credential(&headers), &state.secret);
    res.headers_mut().insert(header::ETAG, etag(head.version));
    Ok(res)
}

/// `GET /v1/events?after=POSITION&limit=N`: the tenant's events in global order.
pub async fn get_feed(
    State(state): State<AppState>,
    principal: Principal,
    query: Params,
) -> ApiResult<Response> {
    let tenant = principal.require_tenant()?;
    let q = params(query)?;
    let after = param_u64(&q, "after")?.unwrap_or(0);
    let limit = limit_param(&q, 100, 1000)?;
    let store = &state.store;
    let mut events = read_page(
        |from, n| store.read_all(tenant, from, n),
        after,
        limit,
        |e| e.position,
    )
    .await?;
    let keep = page_len(events.iter().map(|e| e.body.len()), limit);
    let has_more = events.len() > keep;
    events.truncate(keep);
    let next = events.last().map_or(after, |e| e.position);
    let mut out = Vec::with_capacity(events.iter().map(|e| e.body.len() + 200).sum::<usize>() + 64);
    out.extend_from_slice(b"{\"events\":[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(
            format!(
                "{{\"position\":{},\"payment_id\":\"{}\",\"seq\":{},\"type\":{},\"hash\":\"{}\",\"event\":",
                e.position,
                e.stream_id,
                e.seq,
                serde_json::to_string(&e.event_type).unwrap_or_default(),
                hex::encode(e.hash)
            )
            .as_bytes(),
        );
        out.extend_from_slice(&e.body);
        out.push(b'}');
    }
    out.extend_from_slice(format!("],\"has_more\":{has_more},\"next\":{next}}}").as_bytes());
    Ok(json_bytes(StatusCode::OK, out))
}

enum Bind {
    U(Uuid),
    I(i64),
    S(String),
}

/// `GET /v1/payments?status=&participant=&policy=&due_before=&after=&limit=`: the read
/// model, paged by a cursor (the position of each payment's first event). Each payment
/// says when the platform's clock next acts on it (`next_tick_at`, from the clock read
/// model); `due_before` keeps those due before a time (deadlines of the next days).
pub async fn list_payments(
    State(state): State<AppState>,
    principal: Principal,
    query: Params,
) -> ApiResult<Response> {
    let tenant = principal.require_tenant()?;
    let q = params(query)?;
    let after = param_u64(&q, "after")?.unwrap_or(0);
    let limit = limit_param(&q, 50, 500)?;
    state.projector.read_committed(tenant).await?;
    let mut sql = String::from(
        "SELECT s.payment_id, s.policy_id, s.policy_version, s.status, s.amount, s.currency, \
         s.version, s.created_position, s.created_at, s.updated_at, c.due_at_ms \
         FROM payment_summary s LEFT JOIN payment_clock c ON c.payment_id = s.payment_id \
         WHERE s.tenant_id = $1 AND s.created_position > $2",
    );
    let mut binds = vec![
        Bind::U(tenant),
        Bind::I(i64::try_from(after).unwrap_or(i64::MAX)),
    ];
    if let Some(status) = q.get("status") {
        let status = Status::named(status).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_parameter",
                "status",
                format!(
                    "unknown status `{status}`; one of {}",
                    Status::ALL.map(Status::as_str).join(", ")
                ),
            )
        })?;
        binds.push(Bind::S(status.as_str().to_owned()));
        sql.push_str(&format!(" AND s.status = ${}", binds.len()));
    }
    if let Some(policy) = q.get("policy") {
        binds.push(Bind::S(policy.clone()));
        sql.push_str(&format!(" AND s.policy_id = ${}", binds.len()));
    }
    if let Some(party) = q.get("participant") {
        binds.push(Bind::U(parse_id(party, "participant")?));
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM payment_participants p WHERE p.payment_id = s.payment_id \
             AND p.party_id = ${} AND p.roles <> '[]')",
            binds.len()
        ));
    }
    if let Some(rail_ref) = q.get("rail_ref") {
        binds.push(Bind::S(rail_ref.clone()));
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM payment_rail_refs r WHERE r.tenant_id = s.tenant_id \
             AND r.payment_id = s.payment_id AND r.rail_ref = ${})",
            binds.len()
        ));
    }
    if let Some(before) = q.get("due_before") {
        let t: Timestamp = before.parse().map_err(|_| {
            ApiError::bad_request(
                "invalid_parameter",
                "due_before",
                format!(
                    "due_before must be an RFC 3339 time such as 2026-12-01T00:00:00Z, got `{}`",
                    trustfold_core::error::echo(before)
                ),
            )
        })?;
        binds.push(Bind::I(t.unix_millis()));
        sql.push_str(&format!(" AND c.due_at_ms < ${}", binds.len()));
    }
    binds.push(Bind::I(i64::from(limit) + 1));
    sql.push_str(&format!(
        " ORDER BY s.created_position LIMIT ${}",
        binds.len()
    ));
    type Row = (
        Uuid,
        String,
        i64,
        String,
        String,
        String,
        i64,
        i64,
        String,
        String,
        Option<i64>,
    );
    let mut rows: Vec<Row> = on_read!(&state.db, pool => {
        let mut query = sqlx::query_as::<_, Row>(&sql);
        for b in &binds {
            query = match b {
                Bind::U(u) => query.bind(*u),
                Bind::I(i) => query.bind(*i),
                Bind::S(s) => query.bind(s.clone()),
            };
        }
        query.fetch_all(pool).await.map_err(StoreError::from)?
    });
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = rows
        .last()
        .map_or(after, |r| u64::try_from(r.7).unwrap_or(0));
    let mut participants: HashMap<Uuid, Vec<serde_json::Value>> = HashMap::new();
    if !rows.is_empty() {
        let list = (0..rows.len())
            .map(|i| format!("${}", i + 2))
            .collect::<Vec<_>>()
            .join(", ");
        let psql = format!(
            "SELECT payment_id, party_id, roles FROM payment_participants WHERE tenant_id = $1 \
             AND roles <> '[]' AND payment_id IN ({list}) ORDER BY party_id"
        );
        let prow: Vec<(Uuid, Uuid, String)> = on_read!(&state.db, pool => {
            let mut query = sqlx::query_as::<_, (Uuid, Uuid, String)>(&psql).bind(tenant);
            for r in &rows {
                query = query.bind(r.0);
            }
            query.fetch_all(pool).await.map_err(StoreError::from)?
        });
        for (pay, party, roles) in prow {
            let roles: serde_json::Value = serde_json::from_str(&roles).unwrap_or_default();
            participants
                .entry(pay)
                .or_default()
                .push(serde_json::json!({"party": party, "roles": roles}));
        }
    }
    let payments: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|r| {
            serde_json::json!({
                "payment_id": r.0,
                "policy": {"id": r.1, "version": r.2},
                "status": r.3,
                "amount": {"amount": r.4, "currency": r.5},
                "version": r.6,
                "created_at": r.8,
                "updated_at": r.9,
                "next_tick_at": r.10.map(|ms| Timestamp::from_unix_millis(ms).to_string()),
                "participants": participants.remove(&r.0).unwrap_or_default(),
            })
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"payments": payments, "has_more": has_more, "next": next}),
    ))
}

/// `GET /v1/payments/{payment_id}/balances`: the balances read model.
pub async fn get_balances(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let payment = parse_id(&id, "payment_id")?;
    principal.check_payment(payment)?;
    let Principal::Tenant { tenant } = principal else {
        // The ledger's accounts are every party's (the escrow's, the seller's, fees):
        // no policy view narrows them, so they are the tenant's to read alone.
        return Err(ApiError::Forbidden {
            code: "balances_not_visible",
            message: "balances cover every party's accounts and are read with the tenant's \
                      API key only; a participant token reads its view of the payment \
                      (GET /v1/payments/{payment_id})"
                .into(),
        });
    };
    if state.store.stream_head(tenant, payment).await?.is_none() {
        return Err(ApiError::unknown_payment(payment));
    }
    state.projector.read_committed(tenant).await?;
    let rows: Vec<(String, String, String, String, String)> = on_read!(&state.db, pool => {
        sqlx::query_as(
            "SELECT account, currency, posted, pending_in, pending_out FROM balances \
             WHERE payment_id = $1 AND tenant_id = $2 ORDER BY account",
        )
        .bind(payment)
        .bind(tenant)
        .fetch_all(pool)
        .await
        .map_err(StoreError::from)?
    });
    let balances: Vec<_> = rows
        .into_iter()
        .map(|(account, currency, posted, pin, pout)| {
            serde_json::json!({
                "account": account, "currency": currency, "posted": posted,
                "pending_in": pin, "pending_out": pout,
            })
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"payment_id": payment, "balances": balances}),
    ))
}

/// `GET /v1/parties/{party_id}/inbox?after=&limit=`: notifications for one party.
pub async fn get_inbox(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    query: Params,
) -> ApiResult<Response> {
    let party = parse_id(&id, "party_id")?;
    let tenant = principal.tenant();
    // A participant's token reads its own payment's notices, only those for the roles
    // it holds now, and only of events those roles may see.
    let mut seen: Option<(Vec<Role>, trustfold_core::policy::Visibility)> = None;
    let mut head = 0u64;
    let only_payment = match &principal {
        Principal::Tenant { .. } => None,
        Principal::Participant(c) if c.party == party => {
            let st = load_state(&state, c.tenant, c.payment).await?;
            let roles = participant_roles(&st, c)?;
            seen = Some((roles.clone(), st.policy_doc.visibility_for(&roles)));
            head = st.version;
            Some(c.payment)
        }
        Principal::Participant(_) => {
            return Err(ApiError::NotFound {
                code: "unknown_party",
                message: format!("no inbox for party {party}"),
            })
        }
    };
    let q = params(query)?;
    let after = param_u64(&q, "after")?.unwrap_or(0);
    if only_payment.is_some() && after > head {
        // A cursor past the payment's last event: not one this inbox gave (a global
        // position kept from before tokens paged by seq would otherwise page nothing).
        return Err(ApiError::bad_request(
            "invalid_parameter",
            "after",
            format!(
                "after={after} is past the payment's last event (seq {head}): a participant's \
                 inbox pages by the payment's seq; start again from 0"
            ),
        ));
    }
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let limit = limit_param(&q, 100, 1000)?;
    state.projector.read_committed(tenant).await?;
    if only_payment.is_none() {
        // A party none of the tenant's payments ever had has no inbox: 404, as a
        // participant token asking for another party's gets (not an empty 200).
        let known: Option<(i64,)> = on_read!(&state.db, pool => {
            sqlx::query_as::<_, (i64,)>(
                "SELECT CAST(1 AS BIGINT) FROM payment_participants WHERE tenant_id = $1 \
                 AND party_id = $2 \
                 LIMIT 1",
            )
            .bind(tenant)
            .bind(party)
            .fetch_optional(pool)
            .await
            .map_err(StoreError::from)?
        });
        if known.is_none() {
            return Err(ApiError::NotFound {
                code: "unknown_party",
                message: format!("no inbox for party {party}: no payment of this tenant has it"),
            });
        }
    }
    type Row = (Uuid, i64, i64, String, String, String);
    // A participant's cursor is the payment's own sequence: global positions count
    // every tenant's events, which are no business of a browser holding a token.
    let mut rows: Vec<Row> = on_read!(&state.db, pool => {
        let sql = if only_payment.is_some() {
            "SELECT payment_id, seq, position, event_type, roles, at FROM inbox WHERE \
             tenant_id = $1 AND party_id = $2 AND seq > $3 AND payment_id = $5 \
             ORDER BY seq LIMIT $4"
        } else {
            "SELECT payment_id, seq, position, event_type, roles, at FROM inbox WHERE \
             tenant_id = $1 AND party_id = $2 AND position > $3 ORDER BY position LIMIT $4"
        };
        let mut query = sqlx::query_as::<_, Row>(sql)
            .bind(tenant)
            .bind(party)
            .bind(after)
            .bind(i64::from(limit) + 1);
        if let Some(p) = only_payment {
            query = query.bind(p);
        }
        query.fetch_all(pool).await.map_err(StoreError::from)?
    });
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = rows
        .last()
        .map_or(after, |r| if only_payment.is_some() { r.1 } else { r.2 });
    let items: Vec<_> = rows
        .into_iter()
        .filter_map(|(payment, seq, position, ty, roles, at)| {
            let mut roles: Vec<String> = serde_json::from_str(&roles).unwrap_or_default();
            if let Some((held, vis)) = &seen {
                roles.retain(|r| held.iter().any(|h| h.0 == *r));
                if roles.is_empty() || !trustfold_core::view::shown(vis, &ty) {
                    return None;
                }
            }
            let mut item = serde_json::json!({
                "payment_id": payment, "seq": seq, "type": ty, "roles": roles, "at": at,
            });
            if only_payment.is_none() {
                item["position"] = position.into();
            }
            Some(item)
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"party_id": party, "notifications": items, "has_more": has_more, "next": next}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    party: Uuid,
    #[serde(default)]
    roles: Option<Vec<Role>>,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

/// Longest participant token lifetime.
const MAX_TOKEN_TTL: u64 = 24 * 3600;

/// `POST /v1/payments/{payment_id}/tokens`: a short-lived participant token.
pub async fn create_token(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<Response> {
    let payment = parse_id(&id, "payment_id")?;
    let tenant = principal.require_tenant()?;
    super::not_idempotent(
        &headers,
        "POST /v1/payments/{payment_id}/tokens",
        "its answer is a bearer credential, which is not stored at rest to be replayed",
        "after a lost answer, mint another: the one made then reached nobody and expires \
         on its own, or revoke the party's tokens",
    )?;
    let req: NewToken = parse_json(&body)?;
    let st = load_state(&state, tenant, payment).await?;
    let p = st
        .participants
        .get(&PartyId(req.party))
        .ok_or_else(|| ApiError::Unprocessable {
            code: "unknown_participant",
            message: format!(
                "party {} is not a participant of payment {payment}",
                req.party
            ),
            field: Some("party".into()),
        })?;
    if p.removed {
        // The code a removed party's own tokens get (403 everywhere, one code one
        // status): its party may not act or read, so it gets no new token either.
        return Err(ApiError::Forbidden {
            code: "participant_removed",
            message: format!(
                "party {} was removed from payment {payment}: it gets no tokens (invite it \
                 again to give it a part in the payment)",
                req.party
            ),
        });
    }
    let roles = match req.roles {
        None => p.roles.clone(),
        Some(r) => {
            if let Some(again) = r.iter().enumerate().find(|(i, x)| r[..*i].contains(x)) {
                // As Invite and Initiate refuse it (the core's error, 422 at `roles`): a
                // role named twice is a caller's slip, and the token would carry it twice.
                return Err(ApiError::from_core(trustfold_core::Error::DuplicateRole {
                    role: again.1.clone(),
                }));
            }
            if let Some(bad) = r.iter().find(|r| !p.roles.contains(r)) {
                return Err(ApiError::Unprocessable {
                    code: "role_not_held",
                    message: format!("party {} does not hold role `{bad}`", req.party),
                    field: Some("roles".into()),
                });
            }
            if r.is_empty() {
                return Err(ApiError::Unprocessable {
                    code: "roles_required",
                    message: "a token needs at least one role".into(),
                    field: Some("roles".into()),
                });
            }
            r
        }
    };
    let ttl = req.ttl_seconds.unwrap_or(900);
    if ttl == 0 || ttl > MAX_TOKEN_TTL {
        return Err(ApiError::Unprocessable {
            code: "invalid_ttl",
            message: format!("ttl_seconds must be between 1 and {MAX_TOKEN_TTL}"),
            field: Some("ttl_seconds".into()),
        });
    }
    let gen = super::auth::token_generation(&state, tenant, payment, req.party).await?;
    let exp = now_us() / 1_000_000 + i64::try_from(ttl).unwrap_or(0);
    let claims = TokenClaims {
        tenant,
        payment,
        party: req.party,
        roles,
        exp,
        gen,
    };
    let token = state.token_key.sign(&claims);
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({
            "token": token,
            "payment_id": payment,
            "party": req.party,
            "roles": claims.roles,
            "expires_at": Timestamp::from_unix_millis(exp * 1000).to_string(),
        }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeTokens {
    party: Uuid,
}

/// `POST /v1/payments/{payment_id}/tokens/revoke`: every participant token of `party`
/// on the payment minted until now (of an earlier generation) stops working (401 `token_revoked`, its open live
/// streams end at their next read); tokens minted afterwards work. For a token that
/// leaked (a shared link, a lost device) before its expiry. API keys only; idempotent
/// with an `Idempotency-Key` (the first answer is replayed; without one, sending it
/// again revokes the tokens minted in between too).
pub async fn revoke_tokens(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<Response> {
    let payment = parse_id(&id, "payment_id")?;
    let tenant = principal.require_tenant()?;
    let idem = idempotency(
        &headers,
        &principal,
        &format!("POST /v1/payments/{payment}/tokens/revoke"),
        &body,
    )?;
    // Unlike a command's, the run below changes something before its answer is stored:
    // a retry under the key is answered from the record without running it again. (Two
    // first requests with one key at once may both revoke: a second revocation only
    // refuses the tokens minted in between.)
    if let Some(i) = &idem {
        if let Some(stored) = idem_lookup(&state, &principal, i).await? {
            return Ok(stored);
        }
    }
    let run = async {
        let req: RevokeTokens = parse_json(&body)?;
        let st = load_state(&state, tenant, payment).await?;
        if !st.participants.contains_key(&PartyId(req.party)) {
            return Err(ApiError::Unprocessable {
                code: "unknown_participant",
                message: format!(
                    "party {} is not a participant of payment {payment}",
                    req.party
                ),
                field: Some("party".into()),
            });
        }
        let at = now_us();
        // One statement: the next generation, whatever other revocations run at once.
        let generation: i64 = on_write!(&state.db, pool => {
            sqlx::query_scalar(
                "INSERT INTO token_revocations (payment_id, party_id, tenant_id, generation, \
                 revoked_at_us) VALUES ($1, $2, $3, 1, $4) ON CONFLICT (payment_id, party_id) \
                 DO UPDATE SET generation = token_revocations.generation + 1, \
                 revoked_at_us = excluded.revoked_at_us RETURNING generation",
            )
            .bind(payment)
            .bind(req.party)
            .bind(tenant)
            .bind(at)
            .fetch_one(pool)
            .await
            .map_err(StoreError::from)?
        });
        let body = serde_json::to_vec(&serde_json::json!({
            "payment_id": payment,
            "party": req.party,
            "revoked_at": Timestamp::from_unix_millis(at / 1000).to_string(),
            "generation": generation,
        }))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(Executed::Answer(StatusCode::OK, body))
    };
    with_idempotency(&state, &principal, idem, run).await
}

#[cfg(test)]
mod tests {
    use super::{mask_amounts, mask_digests, notice, page_len, read_page, PAGE_BYTES};
    use crate::{NewEvent, StoredEvent};

    /// A notice carries an append's events to the live streams only while they are
    /// small: a stalled stream keeps the channel's last 4,096 notices alive.
    #[test]
    fn notices_carry_small_appends_only() {
        let events = |sizes: &[usize]| {
            sizes
                .iter()
                .map(|&size| NewEvent {
                    event_id: uuid::Uuid::nil(),
                    event_type: "ApprovalGranted".into(),
                    schema_version: 1,
                    body: vec![b' '; size],
                    hash: [0; 32],
                })
                .collect::<Vec<_>>()
        };
        let p = uuid::Uuid::nil();
        let small = notice(p, 3, events(&[600, 500, 2_700]));
        assert_eq!(small.events.map(|e| e.len()), Some(3));
        let large = notice(p, 3, events(&[600, 500, 256 * 1024]));
        assert!(
            large.events.is_none(),
            "a 256 KiB append is read from the store"
        );
        let many = notice(p, 40, events(&[500; 40]));
        assert!(
            many.events.is_none(),
            "40 events of 500 bytes are read from the store"
        );
        assert_eq!((large.version, large.stream), (3, p));
    }

    /// `read_page` over a log of events with these body sizes (keys 1, 2, …), then
    /// `page_len`: the page's keys, whether more were read, and the rows fetched.
    async fn paged(sizes: &[usize], after: u64, limit: u32) -> (Vec<u64>, bool, usize) {
        let fetched = std::cell::Cell::new(0usize);
        let log: Vec<StoredEvent> = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| StoredEvent {
                tenant_id: uuid::Uuid::nil(),
                stream_id: uuid::Uuid::nil(),
                seq: i as u64 + 1,
                event_id: uuid::Uuid::nil(),
                event_type: "X".into(),
                schema_version: 1,
                body: vec![b' '; size],
                hash: [0; 32],
                recorded_at: std::time::UNIX_EPOCH,
                position: i as u64 + 1,
            })
            .collect();
        let read = read_page(
            |from, n| {
                let chunk: Vec<StoredEvent> = log
                    .iter()
                    .filter(|e| e.seq > from)
                    .take(n as usize)
                    .cloned()
                    .collect();
                fetched.set(fetched.get() + chunk.len());
                async move { Ok(chunk) }
            },
            after,
            limit,
            |e| e.seq,
        )
        .await
        .expect("read");
        let keep = page_len(read.iter().map(|e| e.body.len()), limit);
        let seqs = read[..keep].iter().map(|e| e.seq).collect();
        (seqs, read.len() > keep, fetched.get())
    }

    #[tokio::test]
    async fn pages_are_read_in_chunks_up_to_the_byte_budget() {
        // A thousand events of 256 KiB (a policy as large as a body may be): a page of
        // 1,000 holds 16 (4 MiB) and reads a few more, not 1,001.
        let (seqs, more, fetched) = paged(&[256 << 10; 1000], 0, 1000).await;
        assert_eq!((seqs, more), ((1..=16).collect::<Vec<_>>(), true));
        assert_eq!(fetched, 64);
        // Small ones: the whole page and one more (to tell there are more), in order.
        let (seqs, more, fetched) = paged(&[500; 3000], 10, 1000).await;
        assert_eq!((seqs, more), ((11..=1010).collect::<Vec<_>>(), true));
        assert_eq!(fetched, 1001);
        // The end of the log.
        assert_eq!(
            paged(&[500; 30], 25, 100).await,
            (vec![26, 27, 28, 29, 30], false, 5)
        );
        // Small, then large: a chunk is never larger than what was read before it.
        let mut sizes = vec![100; 40];
        sizes.extend([256 << 10; 100]);
        let (seqs, more, fetched) = paged(&sizes, 0, 1000).await;
        assert_eq!((seqs.len(), more), (40 + 15, true));
        assert!(fetched < 80, "{fetched} rows fetched");
    }

    #[test]
    fn digests_in_messages_are_masked() {
        let h = "ab".repeat(32);
        assert_eq!(
            mask_digests(&format!("terms_hash {h} does not match; agree to {h}.")),
            "terms_hash [digest hidden] does not match; agree to [digest hidden]."
        );
        assert_eq!(mask_digests("request 12ab is open"), "request 12ab is open");
        let id = "01a225ad-1e5c-74a4-8311-02d890976a49";
        assert_eq!(mask_digests(id), id, "ids are not digests");
    }

    #[test]
    fn pages_end_at_the_limit_or_the_byte_budget() {
        assert_eq!(page_len([10, 10, 10].into_iter(), 2), 2);
        assert_eq!(page_len([10, 10].into_iter(), 5), 2);
        let big = PAGE_BYTES / 2 + 1;
        assert_eq!(page_len([big, big, big].into_iter(), 100), 1);
        assert_eq!(
            page_len([PAGE_BYTES * 3, 1].into_iter(), 100),
            1,
            "one event always"
        );
        assert_eq!(page_len(std::iter::empty(), 100), 0);
    }

    #[test]
    fn amounts_in_messages_are_masked() {
        assert_eq!(
            mask_amounts("allocations total 99999.00 USD but only 4321.98 USD is available"),
            "allocations total [amount hidden] but only [amount hidden] is available"
        );
        assert_eq!(
            mask_amounts("allocate 5000 JPY, then retry"),
            "allocate [amount hidden], then retry"
        );
        assert_eq!(
            mask_amounts("already joined 2 times; USD only"),
            "already joined 2 times; USD only"
        );
        assert_eq!(
            mask_amounts("request 3 of 4 ABC"),
            "request 3 of [amount hidden]"
        );
    }
}
