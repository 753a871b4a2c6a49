//! Read models built from the event log: **payment summary** (status, amount, policy,
//! participants, the full state; for reads and list/search), **inbox** (per-participant
//! notifications as the pinned policy's `notifications` define them), **balances**
//! (per-payment ledger accounts) and **clock** (when the platform's clock next has
//! something to do for a payment: [`trustfold_core::decide::next_tick`]; read by the
//! server's clock, [`crate::clock`]).
//!
//! Each projection has its own checkpoint (a global position) in
//! `projection_checkpoints`, written in the same transaction as its rows, so a crash
//! never leaves rows without their checkpoint or the other way round. The checkpoint is
//! moved with `UPDATE … WHERE position = <old>` as the transaction's first statement:
//! when several processes project at once (PostgreSQL), one wins and the others roll
//! back and read again. A projection whose checkpoint is 0 (new, or reset) replays the
//! whole log; [`Projector::rebuild`] drops every read model and replays.
//!
//! **One background projector per database.** On PostgreSQL, where many server
//! processes share one database, the background projection runs only in the process
//! that holds the session advisory lock [`LEADER_LOCK`] (taken on a connection of its
//! own, kept while the process runs, released by PostgreSQL when that connection ends,
//! so another process takes over at its next attempt). Two processes projecting the same
//! events would do the work twice and lose every other checkpoint race: with the work
//! done once, 16 clients over two processes measured 4.2 k commands/s instead of 2.1 k.
//! A read of a read model in any process sees every command acknowledged before it, by
//! whichever process ([`Projector::read_committed`]): it waits briefly for the
//! checkpoints to pass the tenant's last position, and catches up itself if they do not.

use std::collections::{BTreeMap, HashMap, HashSet};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection as _;
use tokio::sync::Mutex;
use trustfold_core::decide::next_tick;
use trustfold_core::envelope::Envelope;
use trustfold_core::state::PaymentState;
use uuid::Uuid;

use crate::cache::{apply_stored, fold_stream, LoadError};
use crate::db::{on_read, on_write, Db};
use crate::{AnyStore, EventStore, StoredEvent};

/// The PostgreSQL advisory lock held by the one process that runs the background
/// projection ("trustfold projector", truncated).
pub const LEADER_LOCK: i64 = 0x7472_7573_7470_726f;

/// How long a read in a process that is not the projection leader waits for the leader
/// to apply its appends before it applies them itself.
const LEADER_WAIT: Duration = Duration::from_millis(100);

/// How long a statement on the projection leader's connection may take.
const LEADER_DEADLINE: Duration = Duration::from_secs(2);

/// How often a process that is not the projection leader tries to become it.
const LEADER_RETRY: Duration = Duration::from_secs(1);

/// The projections, in the order they are applied.
pub const PROJECTIONS: &[&str] = &["payment_summary", "inbox", "balances", "clock", "rail_refs"];

/// The tables each projection owns.
fn tables_of(name: &str) -> &'static [&'static str] {
    match name {
        "payment_summary" => &["payment_summary", "payment_participants"],
        "inbox" => &["inbox"],
        "balances" => &["balances"],
        "clock" => &["payment_clock"],
        "rail_refs" => &["payment_rail_refs"],
        _ => &[],
    }
}

/// Events read per projection batch.
const BATCH: u32 = 256;

/// The format of the read models. Bump it with any change to what they hold for events
/// already stored: the fold's rules (a status or balance a stored history now folds
/// to), the state JSON, or a projection's rows. A server finding read models of an
/// older format at start rebuilds them from the log (see [`Projector::init`]);
/// databases before this mark have none and are rebuilt once.
///
/// 2: `payment_rail_refs` rows carry the position of the event that recorded them (the
/// held rail notices' rounds look for those after their last checkpoint; a row an
/// older build wrote, at 0, would be found only by the minute's sweep).
///
/// 3: a shortfall's end no longer hides money held after it (a payout sent back after a
/// write-off reads `Held`), and a payment paid out in part whose rest of the funding came
/// back reads `AwaitingFunds`, not `Completed`.
pub const READ_MODEL_FORMAT: i64 = 3;

/// One row change.
#[derive(Debug, Clone)]
enum Op {
    /// The payment's summary row, with its state serialized at commit time (once per
    /// payment and batch, after [`coalesce`]).
    Summary(Summary<Box<PaymentState>>),
    Participant {
        payment: Uuid,
        party: Uuid,
        tenant: Uuid,
        roles: String,
    },
    Inbox(InboxRow),
    Balance(BalanceRow),
    /// When the clock next has something to do for the payment (`None`: nothing, the
    /// row goes).
    Due {
        payment: Uuid,
        tenant: Uuid,
        due_at_ms: Option<i64>,
    },
    /// A rail's reference the payment used (rows are only ever added: a reference
    /// stays the payment's), with the position of the event that recorded it (the round
    /// of held rail notices looks for the references recorded since its last one).
    RailRef {
        tenant: Uuid,
        rail_ref: String,
        payment: Uuid,
        position: i64,
    },
}

/// Runs the projections.
#[derive(Debug)]
pub struct Projector {
    store: AnyStore,
    db: Db,
    folds: Mutex<HashMap<Uuid, PaymentState>>,
    /// Every projection is known to be at least at this position (the lowest checkpoint
    /// after this process's last catch-up).
    done: AtomicU64,
    /// The last position this process appended (or was told of): reads of the read models
    /// wait until the projections reach it, so a client reads its own writes.
    appended: AtomicU64,
    /// PostgreSQL: whether this process holds [`LEADER_LOCK`], on which connection.
    leader: Mutex<Leader>,
    /// Whether `leader` holds the lock, readable without waiting for the mutex (which
    /// is held through the leader's network round trips).
    leads: AtomicBool,
}

/// The projection leadership of a PostgreSQL process.
#[derive(Debug, Default)]
struct Leader {
    /// The session that holds (or last tried to take) [`LEADER_LOCK`].
    conn: Option<sqlx::PgConnection>,
    /// Whether `conn` holds the lock.
    holds: bool,
    /// When the lock was last tried, so that a follower tries at most every
    /// [`LEADER_RETRY`].
    tried: Option<Instant>,
}

/// What a projection commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Committed {
    /// The rows and checkpoints were written.
    Done,
    /// A checkpoint was moved by another process meanwhile: nothing written.
    Moved,
    /// A newer build marked the read models as its format: nothing written.
    Superseded,
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Projector {
    /// A projector over `store`'s log, writing into `db`.
    pub fn new(store: AnyStore, db: Db) -> Self {
        Projector {
            store,
            db,
            folds: Mutex::new(HashMap::new()),
            done: AtomicU64::new(0),
            appended: AtomicU64::new(0),
            leader: Mutex::new(Leader::default()),
            leads: AtomicBool::new(false),
        }
    }

    /// Whether this process runs the background projection: always on SQLite; on
    /// PostgreSQL while it holds [`LEADER_LOCK`] (tried again on every call while it
    /// does not, so a process takes over when the leader's connection ends).
    pub async fn is_leader(&self) -> bool {
        let Db::Postgres(pool) = &self.db else {
            return true;
        };
        let mut leader = self.leader.lock().await;
        // Every statement here is bounded (`LEADER_DEADLINE`): the leader mutex is held
        // meanwhile, and a database that stopped answering must not hold it (and every
        // read that asks who leads) until TCP gives up.
        if leader.holds {
            // Still connected: the lock is still ours.
            if let Some(conn) = leader.conn.as_mut() {
                let alive = tokio::time::timeout(
                    LEADER_DEADLINE,
                    sqlx::query("SELECT 1").execute(&mut *conn),
                )
                .await;
                if matches!(alive, Ok(Ok(_))) {
                    return true;
                }
            }
            tracing::warn!("lost the projection leader's connection");
            *leader = Leader::default();
            self.leads.store(false, Ordering::Release);
        }
        if leader.tried.is_some_and(|t| t.elapsed() < LEADER_RETRY) {
            return false;
        }
        leader.tried = Some(Instant::now());
        if leader.conn.is_none() {
            // The database ends the leader's session (and so frees the lock) ~25 s after
            // its host died or was cut off, instead of after the kernel's default TCP
            // keepalive (about 2 hours) with nobody leading meanwhile.
            let plain = (*pool.connect_options()).clone();
            let kept_alive = plain.clone().options([
                ("tcp_keepalives_idle", "10"),
                ("tcp_keepalives_interval", "5"),
                ("tcp_keepalives_count", "3"),
                ("tcp_user_timeout", "25000"),
            ]);
            let connect = sqlx::PgConnection::connect_with(&kept_alive);
            leader.conn = match tokio::time::timeout(LEADER_DEADLINE, connect).await {
                Ok(Ok(c)) => Some(c),
                // Refused with them (PostgreSQL before 12 has no `tcp_user_timeout`; a
                // pooler may refuse startup options): connected without, and said so.
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "the projection leader's connection was \
                        refused with TCP keepalive settings; connecting without them (a dead \
                        leader's lock then lasts until the kernel's keepalive)");
                    let connect = sqlx::PgConnection::connect_with(&plain);
                    match tokio::time::timeout(LEADER_DEADLINE, connect).await {
                        Ok(Ok(c)) => Some(c),
                        _ => None,
                    }
                }
                Err(_) => None,
            };
        }
        let Some(conn) = leader.conn.as_mut() else {
            return false;
        };
        let tried = sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK)
            .fetch_one(&mut *conn);
        let tried = match tokio::time::timeout(LEADER_DEADLINE, tried).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("no answer in time".to_owned()),
        };
        match tried {
            Ok(true) => {
                tracing::info!("this process now runs the background projection");
                leader.holds = true;
                self.leads.store(true, Ordering::Release);
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(error = %e, "could not try the projection leader lock");
                leader.conn = None;
                false
            }
        }
    }

    /// The background projection: [`Projector::catch_up`] in the leader process, nothing
    /// in the others (see the module docs).
    pub async fn catch_up_in_background(&self) -> Result<u64, LoadError> {
        if !self.is_leader().await {
            return Ok(0);
        }
        self.catch_up().await
    }

    /// Makes sure every projection has a checkpoint row, and rebuilds the read models
    /// (from the next catch-up) when they were built in a format older than
    /// [`READ_MODEL_FORMAT`].
    pub async fn init(&self) -> Result<(), LoadError> {
        self.init_checkpoints().await?;
        let stored: Option<i64> = on_read!(&self.db, pool => {
            sqlx::query_scalar("SELECT format FROM projection_format WHERE id = 1")
                .fetch_optional(pool)
                .await
                .map_err(crate::StoreError::from)?
        });
        match stored {
            Some(f) if f == READ_MODEL_FORMAT => {}
            // A newer build wrote them (a rolling upgrade, or a rollback): left alone,
            // so two builds on one database do not take turns wiping them.
            Some(f) if f > READ_MODEL_FORMAT => {
                tracing::warn!(
                    stored = f,
                    ours = READ_MODEL_FORMAT,
                    "the read models were built by a newer server; left as they are"
                );
            }
            _ => {
                tracing::info!(
                    stored = ?stored,
                    ours = READ_MODEL_FORMAT,
                    "the read models were built in an older format: rebuilding them from \
                     the log"
                );
                // Reset first, then the mark: a crash between the two resets again at
                // the next start, never leaves old rows marked as current.
                self.reset(PROJECTIONS).await?;
                on_write!(&self.db, pool => {
                    sqlx::query(
                        "INSERT INTO projection_format (id, format) VALUES (1, $1) \
                         ON CONFLICT (id) DO UPDATE SET format = excluded.format \
                         WHERE projection_format.format < excluded.format",
                    )
                    .bind(READ_MODEL_FORMAT)
                    .execute(pool)
                    .await
                    .map_err(crate::StoreError::from)?;
                });
            }
        }
        Ok(())
    }

    async fn init_checkpoints(&self) -> Result<(), LoadError> {
        for name in PROJECTIONS {
            on_write!(&self.db, pool => {
                sqlx::query(
                    "INSERT INTO projection_checkpoints (name, position) VALUES ($1, 0) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(*name)
                .execute(pool)
                .await
                .map_err(crate::StoreError::from)?;
            });
        }
        Ok(())
    }

    /// The checkpoints, in [`PROJECTIONS`] order.
    pub async fn checkpoints(&self) -> Result<Vec<u64>, LoadError> {
        // A reader: the checkpoint moves are compare-and-set (`commit`), so a read that
        // is already stale only costs a retry, and the single writer stays free.
        let rows: Vec<(String, i64)> = on_read!(&self.db, pool => {
            sqlx::query_as("SELECT name, position FROM projection_checkpoints")
                .fetch_all(pool)
                .await
                .map_err(crate::StoreError::from)?
        });
        Ok(PROJECTIONS
            .iter()
            .map(|n| {
                rows.iter()
                    .find(|(name, _)| name == n)
                    .map_or(0, |(_, p)| u64::try_from(*p).unwrap_or(0))
            })
            .collect())
    }

    /// Makes sure every projection has applied the event at `position`: returns at once
    /// when a catch-up (of any caller) already got there, so concurrent commands share one
    /// catch-up instead of queueing for one each.
    pub async fn catch_up_to(&self, position: u64) -> Result<(), LoadError> {
        if self.db.is_postgres() {
            // Another process may have emptied the read models (a newer build rebuilding
            // them at start): the checkpoints, not this process's memory of them, say
            // how far they are. One read of a five-row table.
            let reached = self.checkpoints().await?.into_iter().min().unwrap_or(0);
            self.done.fetch_min(reached, Ordering::AcqRel);
        }
        if self.done.load(Ordering::Acquire) >= position {
            return Ok(());
        }
        if self.db.is_postgres() && !self.leads.load(Ordering::Acquire) {
            // Another process projects: give it a moment to pass `position`.
            let start = Instant::now();
            loop {
                let reached = self.checkpoints().await?.into_iter().min().unwrap_or(0);
                self.done.fetch_max(reached, Ordering::AcqRel);
                if reached >= position {
                    return Ok(());
                }
                if start.elapsed() >= LEADER_WAIT {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        self.catch_up_inner(Some(position)).await.map(|_| ())
    }

    /// Records that this process appended events up to `position`. Commands do not wait
    /// for the projections (the background projector, woken by the append's notice,
    /// applies them); reads of the read models call [`Projector::read_own_writes`] first.
    pub fn appended(&self, position: u64) {
        self.appended.fetch_max(position, Ordering::AcqRel);
    }

    /// Read-your-writes for the read models: returns once every projection has applied
    /// every event this process appended so far (at once when the background projector
    /// already got there, which is the usual case; otherwise this call catches up).
    pub async fn read_own_writes(&self) -> Result<(), LoadError> {
        self.catch_up_to(self.appended.load(Ordering::Acquire))
            .await
    }

    /// Read-your-writes for a tenant's read models across processes: returns once every
    /// projection has applied every event of `tenant` committed before this call, by
    /// this process or by any other on the same database (an integrator behind a load
    /// balancer may send a command to one process and list payments from another).
    /// Costs one indexed read of the tenant's last position; other tenants' events are
    /// not waited for.
    pub async fn read_committed(&self, tenant: Uuid) -> Result<(), LoadError> {
        let last: Option<i64> = on_read!(&self.db, pool => {
            sqlx::query_scalar("SELECT MAX(position) FROM events WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_one(pool)
                .await
                .map_err(crate::StoreError::from)?
        });
        let last = last.and_then(|p| u64::try_from(p).ok()).unwrap_or(0);
        // `last` covers this process's own appends of the tenant too.
        self.catch_up_to(last).await
    }

    /// Applies every event after the checkpoints; returns how many events were read.
    pub async fn catch_up(&self) -> Result<u64, LoadError> {
        self.catch_up_inner(None).await
    }

    async fn catch_up_inner(&self, upto: Option<u64>) -> Result<u64, LoadError> {
        let mut folds = self.folds.lock().await;
        if upto.is_some_and(|p| self.done.load(Ordering::Acquire) >= p) {
            return Ok(0);
        }
        let mut total = 0u64;
        loop {
            let old = self.checkpoints().await?;
            let from = old.iter().copied().min().unwrap_or(0);
            self.done.fetch_max(from, Ordering::AcqRel);
            // A read waits for its position only: another process (or pass) may have
            // got there, and the rest of the log is the background projector's.
            if upto.is_some_and(|p| from >= p) {
                return Ok(total);
            }
            let events = self.store.read_all_tenants(from, BATCH).await?;
            if events.is_empty() {
                return Ok(total);
            }
            let mut new = old.clone();
            let mut ops = Vec::new();
            // Payments whose stored history does not fold (edited by hand, or recorded
            // under rules since tightened): their events are passed over, so one such
            // payment stops neither the read models of every other nor a start.
            let mut unreadable: HashSet<Uuid> = HashSet::new();
            for ev in &events {
                let folded = if unreadable.contains(&ev.stream_id) {
                    None
                } else {
                    match self.state_after(&mut folds, ev).await {
                        Ok(f) => Some(f),
                        Err(LoadError::Fold { stream, seq, error }) => {
                            tracing::error!(tenant = %ev.tenant_id, payment = %stream, seq,
                                error = %error, "a stored payment history does not fold: \
                                its events are left out of the read models");
                            unreadable.insert(stream);
                            None
                        }
                        Err(e) => return Err(e),
                    }
                };
                for (i, name) in PROJECTIONS.iter().enumerate() {
                    if ev.position <= old[i] {
                        continue;
                    }
                    new[i] = ev.position;
                    if let Some((env, state, changed)) = &folded {
                        project(name, ev, env, state, *changed, &mut ops);
                    }
                }
            }
            if folds.len() > 10_000 {
                folds.clear();
            }
            total += events.len() as u64;
            match self.commit(&old, &new, coalesce(ops)).await? {
                Committed::Done => {}
                Committed::Moved => {
                    tracing::debug!(
                        "projection checkpoint moved by another process; reading again"
                    );
                    continue;
                }
                Committed::Superseded => {
                    tracing::warn!(
                        ours = READ_MODEL_FORMAT,
                        "a newer server build keeps the read models of this database: this \
                         one no longer writes them"
                    );
                    return Ok(total);
                }
            }
            let reached = new.iter().copied().min().unwrap_or(0);
            self.done.fetch_max(reached, Ordering::AcqRel);
            if upto.is_some_and(|p| reached >= p) {
                return Ok(total);
            }
            // A short page was the end of the log when it was read.
            if events.len() < BATCH as usize {
                return Ok(total);
            }
        }
    }

    async fn state_after(
        &self,
        folds: &mut HashMap<Uuid, PaymentState>,
        ev: &StoredEvent,
    ) -> Result<(Envelope, PaymentState, Changed), LoadError> {
        let mut state = match folds.remove(&ev.stream_id) {
            Some(s) if s.version + 1 == ev.seq => Some(s),
            _ if ev.seq == 1 => None,
            _ => {
                fold_stream(
                    &self.store,
                    ev.tenant_id,
                    ev.stream_id,
                    None,
                    Some(ev.seq - 1),
                )
                .await?
            }
        };
        let before = state.as_ref().map(|s| {
            (
                s.participants.clone(),
                s.ledger.balances.clone(),
                next_tick(s),
                s.rail_refs.len(),
            )
        });
        let env = apply_stored(&mut state, ev)?;
        let state = state.ok_or_else(|| LoadError::Fold {
            stream: ev.stream_id,
            seq: ev.seq,
            error: trustfold_core::Error::InvalidHistory {
                seq: ev.seq,
                reason: "no state after the event".into(),
            },
        })?;
        let due = next_tick(&state);
        let changed = match before {
            Some((participants, balances, was_due, refs)) => Changed {
                participants: participants != state.participants,
                balances: balances != state.ledger.balances,
                due: (was_due != due).then_some(due),
                // References are only ever added.
                rail_refs: refs != state.rail_refs.len(),
            },
            None => Changed {
                participants: true,
                balances: true,
                due: due.is_some().then_some(due),
                rail_refs: !state.rail_refs.is_empty(),
            },
        };
        folds.insert(ev.stream_id, state.clone());
        Ok((env, state, changed))
    }

    /// Writes the rows and moves the checkpoints in one transaction. On PostgreSQL the
    /// commit does not wait for its own fsync (`synchronous_commit = off`, for this
    /// transaction only): read models are derived data, rows and checkpoint still commit
    /// atomically, and a crash can only lose the last projection commits, which the next
    /// catch-up replays from the older checkpoint. On SQLite the writer connection stays
    /// at `synchronous = FULL` (a per-connection setting: lowering it here would risk an
    /// append committing with it lowered); the background projector batches, so its
    /// fsyncs are few. The events themselves are always durable before anyone is told
    /// about them.
    async fn commit(&self, old: &[u64], new: &[u64], ops: Vec<Op>) -> Result<Committed, LoadError> {
        let begin = if self.db.is_postgres() {
            "BEGIN"
        } else {
            "BEGIN IMMEDIATE"
        };
        let postgres = self.db.is_postgres();
        let ok = on_write!(&self.db, pool => {
            async {
                let mut conn = pool.acquire().await?;
                let done = async {
                let mut tx = conn.begin_with(begin).await?;
                if postgres {
                    sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
                }
                // A newer build marked the read models as its own (a rolling upgrade on
                // one database): this one writes them no more, in its older format.
                let newer: Option<i64> = sqlx::query_scalar(
                    "SELECT format FROM projection_format WHERE id = 1 AND format > $1",
                )
                .bind(READ_MODEL_FORMAT)
                .fetch_optional(&mut *tx)
                .await?;
                if newer.is_some() {
                    tx.rollback().await?;
                    return Ok::<Committed, sqlx::Error>(Committed::Superseded);
                }
                for (i, name) in PROJECTIONS.iter().enumerate() {
                    if old[i] == new[i] {
                        continue;
                    }
                    let moved = sqlx::query(
                        "UPDATE projection_checkpoints SET position = $1 \
                         WHERE name = $2 AND position = $3",
                    )
                    .bind(i64_of(new[i]))
                    .bind(*name)
                    .bind(i64_of(old[i]))
                    .execute(&mut *tx)
                    .await?;
                    if moved.rows_affected() != 1 {
                        tx.rollback().await?;
                        return Ok(Committed::Moved);
                    }
                }
                // One multi-row statement per table and chunk: each statement is a round
                // trip (or, on SQLite, a hand-off to the connection thread) made while
                // the single writer is held.
                let rows = Rows::of(ops);
                for chunk in rows.summaries.chunks(CHUNK) {
                    let sql = multi_row(
                        "INSERT INTO payment_summary (payment_id, tenant_id, policy_id, \
                         policy_version, status, amount, currency, version, created_position, \
                         created_at, updated_at, state)",
                        12,
                        chunk.len(),
                        " ON CONFLICT (payment_id) DO UPDATE SET status = excluded.status, \
                         amount = excluded.amount, currency = excluded.currency, \
                         version = excluded.version, updated_at = excluded.updated_at, \
                         state = excluded.state",
                    );
                    let mut q = sqlx::query(&sql);
                    for r in chunk {
                        q = q.bind(r.payment).bind(r.tenant).bind(&r.policy_id)
                            .bind(r.policy_version).bind(&r.status).bind(&r.amount)
                            .bind(&r.currency).bind(r.version).bind(r.created_position.unwrap_or(0))
                            .bind(&r.created_at).bind(&r.updated_at).bind(&r.state);
                    }
                    q.execute(&mut *tx).await?;
                }
                for chunk in rows.participants.chunks(CHUNK) {
                    let sql = multi_row(
                        "INSERT INTO payment_participants (payment_id, party_id, tenant_id, roles)",
                        4,
                        chunk.len(),
                        " ON CONFLICT (payment_id, party_id) DO UPDATE SET roles = excluded.roles",
                    );
                    let mut q = sqlx::query(&sql);
                    for (payment, party, tenant, roles) in chunk {
                        q = q.bind(payment).bind(party).bind(tenant).bind(roles);
                    }
                    q.execute(&mut *tx).await?;
                }
                for chunk in rows.inbox.chunks(CHUNK) {
                    let sql = multi_row(
                        "INSERT INTO inbox (tenant_id, party_id, payment_id, seq, position, \
                         event_type, roles, at)",
                        8,
                        chunk.len(),
                        " ON CONFLICT DO NOTHING",
                    );
                    let mut q = sqlx::query(&sql);
                    for r in chunk {
                        q = q.bind(r.tenant).bind(r.party).bind(r.payment).bind(r.seq)
                            .bind(r.position).bind(&r.event_type).bind(&r.roles).bind(&r.at);
                    }
                    q.execute(&mut *tx).await?;
                }
                for chunk in rows.balances.chunks(CHUNK) {
                    let sql = multi_row(
                        "INSERT INTO balances (payment_id, account, tenant_id, currency, posted, \
                         pending_in, pending_out)",
                        7,
                        chunk.len(),
                        " ON CONFLICT (payment_id, account) DO UPDATE SET \
                         posted = excluded.posted, pending_in = excluded.pending_in, \
                         pending_out = excluded.pending_out",
                    );
                    let mut q = sqlx::query(&sql);
                    for r in chunk {
                        q = q.bind(r.payment).bind(&r.account).bind(r.tenant).bind(&r.currency)
                            .bind(&r.posted).bind(&r.pending_in).bind(&r.pending_out);
                    }
                    q.execute(&mut *tx).await?;
                }
                let (due, idle): (Vec<_>, Vec<_>) =
                    rows.clock.into_iter().partition(|r| r.2.is_some());
                for chunk in due.chunks(CHUNK) {
                    let sql = multi_row(
                        "INSERT INTO payment_clock (payment_id, tenant_id, due_at_ms)",
                        3,
                        chunk.len(),
                        " ON CONFLICT (payment_id) DO UPDATE SET due_at_ms = excluded.due_at_ms",
                    );
                    let mut q = sqlx::query(&sql);
                    for (payment, tenant, due_at_ms) in chunk {
                        q = q.bind(payment).bind(tenant).bind(due_at_ms.unwrap_or(0));
                    }
                    q.execute(&mut *tx).await?;
                }
                for chunk in idle.chunks(CHUNK) {
                    let list = (1..=chunk.len()).map(|i| format!("${i}")).collect::<Vec<_>>();
                    let sql = format!(
                        "DELETE FROM payment_clock WHERE payment_id IN ({})",
                        list.join(", ")
                    );
                    let mut q = sqlx::query(&sql);
                    for (payment, ..) in chunk {
                        q = q.bind(payment);
                    }
                    q.execute(&mut *tx).await?;
                }
                for chunk in rows.rail_refs.chunks(CHUNK) {
                    let sql = multi_row(
                        "INSERT INTO payment_rail_refs (tenant_id, rail_ref, payment_id, position)",
                        4,
                        chunk.len(),
                        " ON CONFLICT DO NOTHING",
                    );
                    let mut q = sqlx::query(&sql);
                    for (tenant, rail_ref, payment, position) in chunk {
                        q = q.bind(tenant).bind(rail_ref).bind(payment).bind(position);
                    }
                    q.execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(Committed::Done)
                }
                .await;
                done
            }
            .await
            .map_err(crate::StoreError::from)?
        });
        Ok(ok)
    }

    /// Empties one projection's tables and resets its checkpoint to 0, so the next
    /// [`Projector::catch_up`] replays it from the start of the log (what a newly added
    /// projection does).
    pub async fn reset(&self, names: &[&str]) -> Result<(), LoadError> {
        let begin = if self.db.is_postgres() {
            "BEGIN"
        } else {
            "BEGIN IMMEDIATE"
        };
        on_write!(&self.db, pool => {
            async {
                let mut conn = pool.acquire().await?;
                let mut tx = conn.begin_with(begin).await?;
                for name in names {
                    for table in tables_of(name) {
                        sqlx::query(&format!("DELETE FROM {table}"))
                            .execute(&mut *tx)
                            .await?;
                    }
                    sqlx::query("UPDATE projection_checkpoints SET position = 0 WHERE name = $1")
                        .bind(*name)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await
            }
            .await
            .map_err(crate::StoreError::from)?
        });
        self.folds.lock().await.clear();
        self.done.store(0, Ordering::Release);
        Ok(())
    }

    /// Drops every read model and rebuilds it from the log; returns the events read.
    pub async fn rebuild(&self) -> Result<u64, LoadError> {
        self.reset(PROJECTIONS).await?;
        self.catch_up().await
    }

    /// Every row of every read model as text, sorted: for comparing a rebuilt read
    /// model with a live one.
    pub async fn dump(&self) -> Result<Vec<String>, LoadError> {
        let mut out = Vec::new();
        macro_rules! dump {
            ($sql:expr, $ty:ty) => {{
                let rows: Vec<$ty> = on_read!(&self.db, pool => {
                    sqlx::query_as($sql)
                        .fetch_all(pool)
                        .await
                        .map_err(crate::StoreError::from)?
                });
                out.extend(rows.into_iter().map(|r| format!("{r:?}")));
            }};
        }
        dump!(
            "SELECT payment_id, tenant_id, policy_id, policy_version, status, amount, currency, \
             version, created_position, created_at, updated_at, state FROM payment_summary",
            (Uuid, Uuid, String, i64, String, String, String, i64, i64, String, String, String)
        );
        dump!(
            "SELECT payment_id, party_id, tenant_id, roles FROM payment_participants",
            (Uuid, Uuid, Uuid, String)
        );
        dump!(
            "SELECT tenant_id, party_id, payment_id, seq, position, event_type, roles, at \
             FROM inbox",
            (Uuid, Uuid, Uuid, i64, i64, String, String, String)
        );
        dump!(
            "SELECT payment_id, account, tenant_id, currency, posted, pending_in, pending_out \
             FROM balances",
            (Uuid, String, Uuid, String, String, String, String)
        );
        dump!(
            "SELECT payment_id, tenant_id, due_at_ms FROM payment_clock",
            (Uuid, Uuid, i64)
        );
        dump!(
            "SELECT tenant_id, rail_ref, payment_id FROM payment_rail_refs",
            (Uuid, String, Uuid)
        );
        out.sort();
        Ok(out)
    }
}

/// Rows per multi-row statement (at most 12 parameters each: well under both engines'
/// limits on bound parameters).
const CHUNK: usize = 200;

/// `INSERT … VALUES ($1, …), (…), …` with `rows` tuples of `cols` numbered parameters,
/// then `tail`.
fn multi_row(head: &str, cols: usize, rows: usize, tail: &str) -> String {
    use std::fmt::Write as _;
    let mut sql = String::with_capacity(head.len() + tail.len() + rows * cols * 5 + 8);
    sql.push_str(head);
    sql.push_str(" VALUES ");
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            if c > 0 {
                sql.push_str(", ");
            }
            let _ = write!(sql, "${}", r * cols + c + 1);
        }
        sql.push(')');
    }
    sql.push_str(tail);
    sql
}

/// A summary row; `S` is the state, as folded (in an [`Op`]) or serialized (in [`Rows`]).
#[derive(Debug, Clone)]
struct Summary<S> {
    payment: Uuid,
    tenant: Uuid,
    policy_id: String,
    policy_version: i64,
    status: String,
    amount: String,
    currency: String,
    version: i64,
    /// Known from the payment's first event only; kept by the upsert (written as 0 when
    /// not known).
    created_position: Option<i64>,
    created_at: String,
    updated_at: String,
    state: S,
}

/// An inbox row.
#[derive(Debug, Clone)]
struct InboxRow {
    tenant: Uuid,
    party: Uuid,
    payment: Uuid,
    seq: i64,
    position: i64,
    event_type: String,
    roles: String,
    at: String,
}

/// A balance row.
#[derive(Debug, Clone)]
struct BalanceRow {
    payment: Uuid,
    account: String,
    tenant: Uuid,
    currency: String,
    posted: String,
    pending_in: String,
    pending_out: String,
}

/// The coalesced row changes of one commit, by table.
#[derive(Default)]
struct Rows {
    summaries: Vec<Summary<String>>,
    participants: Vec<(Uuid, Uuid, Uuid, String)>,
    inbox: Vec<InboxRow>,
    balances: Vec<BalanceRow>,
    /// Payment, tenant, due moment (`None`: delete).
    clock: Vec<(Uuid, Uuid, Option<i64>)>,
    /// Tenant, reference, payment, position.
    rail_refs: Vec<(Uuid, String, Uuid, i64)>,
}

impl Rows {
    fn of(ops: Vec<Op>) -> Self {
        let mut rows = Rows::default();
        for op in ops {
            match op {
                Op::Summary(r) => rows.summaries.push(Summary {
                    payment: r.payment,
                    tenant: r.tenant,
                    policy_id: r.policy_id,
                    policy_version: r.policy_version,
                    status: r.status,
                    amount: r.amount,
                    currency: r.currency,
                    version: r.version,
                    created_position: r.created_position,
                    created_at: r.created_at,
                    updated_at: r.updated_at,
                    state: String::from_utf8(r.state.to_json()).unwrap_or_default(),
                }),
                Op::Participant {
                    payment,
                    party,
                    tenant,
                    roles,
                } => rows.participants.push((payment, party, tenant, roles)),
                Op::Inbox(r) => rows.inbox.push(r),
                Op::Balance(r) => rows.balances.push(r),
                Op::Due {
                    payment,
                    tenant,
                    due_at_ms,
                } => rows.clock.push((payment, tenant, due_at_ms)),
                Op::RailRef {
                    tenant,
                    rail_ref,
                    payment,
                    position,
                } => rows.rail_refs.push((tenant, rail_ref, payment, position)),
            }
        }
        rows
    }
}

/// Keeps the last summary, participant, balance and clock row per key (inbox rows all).
fn coalesce(ops: Vec<Op>) -> Vec<Op> {
    let mut keyed: BTreeMap<(u8, Uuid, String), usize> = BTreeMap::new();
    let mut out: Vec<Option<Op>> = Vec::with_capacity(ops.len());
    for op in ops {
        let key = match &op {
            Op::Summary(r) => Some((0, r.payment, String::new())),
            Op::Participant { payment, party, .. } => Some((1, *payment, party.to_string())),
            Op::Balance(r) => Some((2, r.payment, r.account.clone())),
            Op::Due { payment, .. } => Some((3, *payment, String::new())),
            Op::RailRef {
                payment, rail_ref, ..
            } => Some((4, *payment, rail_ref.clone())),
            Op::Inbox(_) => None,
        };
        let mut op = op;
        if let Some(k) = key {
            if let Some(i) = keyed.insert(k, out.len()) {
                if let (Some(Op::Summary(earlier)), Op::Summary(later)) = (out[i].take(), &mut op) {
                    if let Some(first) = earlier.created_position {
                        later.created_position.get_or_insert(first);
                    }
                }
            }
        }
        out.push(Some(op));
    }
    out.into_iter().flatten().collect()
}

fn roles_json(roles: &[trustfold_core::policy::Role]) -> String {
    serde_json::to_string(roles).unwrap_or_else(|_| "[]".into())
}

/// What an event changed besides the summary, so rows it did not change are not
/// rewritten (most events touch neither participants nor balances).
#[derive(Debug, Clone, Copy)]
struct Changed {
    participants: bool,
    balances: bool,
    /// The clock's next moment, when it changed (`Some(None)`: nothing due any more).
    due: Option<Option<trustfold_core::time::Timestamp>>,
    /// Whether the payment's rail references changed (a transfer submitted).
    rail_refs: bool,
}

/// The row changes one event makes in one projection.
fn project(
    name: &str,
    ev: &StoredEvent,
    env: &Envelope,
    s: &PaymentState,
    changed: Changed,
    ops: &mut Vec<Op>,
) {
    let payment = ev.stream_id;
    let tenant = ev.tenant_id;
    match name {
        "payment_summary" => {
            let status = serde_json::to_value(s.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            ops.push(Op::Summary(Summary {
                payment,
                tenant,
                policy_id: s.policy.id.clone(),
                policy_version: i64::from(s.policy.version),
                status,
                amount: s.amount.amount_string(),
                currency: s.amount.currency().code().to_owned(),
                version: i64_of(s.version),
                created_position: (ev.seq == 1).then(|| i64_of(ev.position)),
                created_at: s.created_at.to_string(),
                updated_at: s.updated_at.to_string(),
                state: Box::new(s.clone()),
            }));
            for (party, p) in s.participants.iter().filter(|_| changed.participants) {
                ops.push(Op::Participant {
                    payment,
                    party: party.uuid(),
                    tenant,
                    roles: if p.removed {
                        "[]".into()
                    } else {
                        roles_json(&p.roles)
                    },
                });
            }
        }
        "inbox" => {
            let ty = env.event_type().name();
            let Some(notify) = s.policy_doc.notifications.get(ty) else {
                return;
            };
            for (party, p) in &s.participants {
                if p.removed {
                    continue;
                }
                let matched: Vec<_> = p
                    .roles
                    .iter()
                    .filter(|r| notify.contains(r))
                    .cloned()
                    .collect();
                if matched.is_empty() {
                    continue;
                }
                ops.push(Op::Inbox(InboxRow {
                    tenant,
                    party: party.uuid(),
                    payment,
                    seq: i64_of(ev.seq),
                    position: i64_of(ev.position),
                    event_type: ty.to_owned(),
                    roles: roles_json(&matched),
                    at: env.at.to_string(),
                }));
            }
        }
        "balances" => {
            if !changed.balances {
                return;
            }
            let currency = s.ledger.currency().code().to_owned();
            for (account, b) in &s.ledger.balances {
                ops.push(Op::Balance(BalanceRow {
                    payment,
                    account: account.to_string(),
                    tenant,
                    currency: currency.clone(),
                    posted: b.posted.amount_string(),
                    pending_in: b.pending_in.amount_string(),
                    pending_out: b.pending_out.amount_string(),
                }));
            }
        }
        "rail_refs" => {
            if !changed.rail_refs {
                return;
            }
            for (rail_ref, _) in s.rail_refs.iter() {
                ops.push(Op::RailRef {
                    tenant,
                    rail_ref: rail_ref.clone(),
                    payment,
                    position: i64_of(ev.position),
                });
            }
        }
        "clock" => {
            if let Some(due) = changed.due {
                ops.push(Op::Due {
                    payment,
                    tenant,
                    due_at_ms: due.map(|t| t.unix_millis()),
                });
            }
        }
        _ => {}
    }
}
