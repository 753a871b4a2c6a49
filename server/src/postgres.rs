//! The scale-out engine: PostgreSQL, shared by any number of server processes.

use std::collections::HashSet;
use std::str::FromStr as _;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection as _, Row as _};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::error::{Result, StoreError};
use crate::event::{
    now_micros, raw_event_from_row, to_i64, AppendResult, IdempotencyRecord, NewEvent, StoredEvent,
    StreamHead, EVENT_COLUMNS,
};
use crate::group::{plan, Appender, Committer, Heads, Key, Outcome, Request, Step, Writes};
use crate::sqlite::head_from;
use crate::EventStore;

/// The key of the advisory lock held while the schema is created or upgraded, so that
/// processes starting together do not race ("trustfold" in ASCII, truncated).
const MIGRATION_LOCK: i64 = 0x7472_7573_7466_6f6c;

/// The schema, one entry per version; entry `i` moves the schema from version `i` to
/// `i + 1`. Never edit an entry once released: add a new one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE streams (
    stream_id  uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL,
    version    bigint NOT NULL CHECK (version > 0),
    last_hash  bytea NOT NULL CHECK (length(last_hash) = 32)
);
CREATE TABLE events (
    position       bigint PRIMARY KEY CHECK (position > 0),
    tenant_id      uuid NOT NULL,
    stream_id      uuid NOT NULL REFERENCES streams (stream_id),
    seq            bigint NOT NULL CHECK (seq > 0),
    event_id       uuid NOT NULL UNIQUE,
    event_type     text NOT NULL,
    schema_version integer NOT NULL CHECK (schema_version BETWEEN 0 AND 65535),
    body           bytea NOT NULL,
    hash           bytea NOT NULL CHECK (length(hash) = 32),
    recorded_at_us bigint NOT NULL,
    UNIQUE (stream_id, seq)
);
CREATE INDEX events_tenant_position ON events (tenant_id, position);
CREATE TABLE event_position (
    id   integer PRIMARY KEY CHECK (id = 1),
    last bigint NOT NULL
);
INSERT INTO event_position (id, last) VALUES (1, 0);
CREATE FUNCTION trustfold_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the events table is append-only: % is not allowed', TG_OP;
END
$$;
CREATE TRIGGER events_no_update_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION trustfold_events_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION trustfold_events_append_only();
"#,
    r#"
CREATE FUNCTION trustfold_append_batch(
    a_stream uuid[], a_tenant uuid[], a_expected int8[], a_version int8[],
    a_last_hash bytea[],
    e_tenant uuid[], e_stream uuid[], e_seq int8[], e_id uuid[], e_type text[],
    e_schema int4[], e_body bytea[], e_hash bytea[], recorded bigint
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    moved bigint;
    created bigint;
    base bigint;
    n bigint := cardinality(e_id);
BEGIN
    IF EXISTS (SELECT 1 FROM events WHERE event_id = ANY (e_id)) THEN
        RAISE EXCEPTION 'an event id of the batch is already stored' USING ERRCODE = 'TF001';
    END IF;
    PERFORM 1 FROM streams WHERE stream_id = ANY (a_stream) ORDER BY stream_id FOR UPDATE;
    UPDATE streams s SET version = u.version, last_hash = u.last_hash
    FROM UNNEST(a_stream, a_tenant, a_expected, a_version, a_last_hash)
        AS u (stream_id, tenant_id, expected, version, last_hash)
    WHERE s.stream_id = u.stream_id AND s.tenant_id = u.tenant_id
        AND u.expected > 0 AND s.version = u.expected;
    GET DIAGNOSTICS moved = ROW_COUNT;
    INSERT INTO streams (stream_id, tenant_id, version, last_hash)
    SELECT u.stream_id, u.tenant_id, u.version, u.last_hash
    FROM UNNEST(a_stream, a_tenant, a_expected, a_version, a_last_hash)
        AS u (stream_id, tenant_id, expected, version, last_hash)
    WHERE u.expected = 0
    ON CONFLICT (stream_id) DO NOTHING;
    GET DIAGNOSTICS created = ROW_COUNT;
    IF moved + created <> cardinality(a_stream) THEN
        RAISE EXCEPTION 'a stream of the batch is not at its expected version'
            USING ERRCODE = 'TF002';
    END IF;
    UPDATE event_position SET last = last + n WHERE id = 1 RETURNING last - n INTO base;
    INSERT INTO events (position, tenant_id, stream_id, seq, event_id, event_type,
                        schema_version, body, hash, recorded_at_us)
    SELECT base + e.ord, e.tenant_id, e.stream_id, e.seq, e.event_id, e.event_type,
           e.schema_version, e.body, e.hash, recorded
    FROM UNNEST(e_tenant, e_stream, e_seq, e_id, e_type, e_schema, e_body, e_hash)
        WITH ORDINALITY AS e (tenant_id, stream_id, seq, event_id, event_type,
                              schema_version, body, hash, ord);
    RETURN base + 1;
END
$$;
"#,
    // Every statement of the function is an index lookup or an insert: say so. PL/pgSQL
    // keeps a session's plans, and a generic plan made while `events` was still small
    // (no statistics yet) scanned the table for the event-id check, and stayed a scan:
    // 0.8 ms per batch at 50,000 events instead of a few index probes. Without sequential
    // scans the cached generic plans are the index plans, whatever the statistics say.
    r#"
ALTER FUNCTION trustfold_append_batch(uuid[], uuid[], int8[], int8[], bytea[], uuid[],
    uuid[], int8[], uuid[], text[], int4[], bytea[], bytea[], bigint)
    SET enable_seqscan = off;
ALTER FUNCTION trustfold_append_batch(uuid[], uuid[], int8[], int8[], bytea[], uuid[],
    uuid[], int8[], uuid[], text[], int4[], bytea[], bytea[], bigint)
    SET plan_cache_mode = force_generic_plan;
"#,
    // The batch function of version 2 with the batch's idempotency records, inserted in
    // the same transaction (the server schema's `idempotency` table; a stored key fails
    // the insert and the batch is judged append by append). The event-id check is left
    // to the unique index, which fails the insert the same way.
    r#"
CREATE FUNCTION trustfold_append_batch_recorded(
    a_stream uuid[], a_tenant uuid[], a_expected int8[], a_version int8[],
    a_last_hash bytea[],
    e_tenant uuid[], e_stream uuid[], e_seq int8[], e_id uuid[], e_type text[],
    e_schema int4[], e_body bytea[], e_hash bytea[], recorded bigint,
    r_tenant uuid[], r_key text[], r_hash bytea[], r_status int4[], r_body bytea[]
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    moved bigint;
    created bigint;
    base bigint;
    n bigint := cardinality(e_id);
BEGIN
    PERFORM 1 FROM streams WHERE stream_id = ANY (a_stream) ORDER BY stream_id FOR UPDATE;
    UPDATE streams s SET version = u.version, last_hash = u.last_hash
    FROM UNNEST(a_stream, a_tenant, a_expected, a_version, a_last_hash)
        AS u (stream_id, tenant_id, expected, version, last_hash)
    WHERE s.stream_id = u.stream_id AND s.tenant_id = u.tenant_id
        AND u.expected > 0 AND s.version = u.expected;
    GET DIAGNOSTICS moved = ROW_COUNT;
    INSERT INTO streams (stream_id, tenant_id, version, last_hash)
    SELECT u.stream_id, u.tenant_id, u.version, u.last_hash
    FROM UNNEST(a_stream, a_tenant, a_expected, a_version, a_last_hash)
        AS u (stream_id, tenant_id, expected, version, last_hash)
    WHERE u.expected = 0
    ON CONFLICT (stream_id) DO NOTHING;
    GET DIAGNOSTICS created = ROW_COUNT;
    IF moved + created <> cardinality(a_stream) THEN
        RAISE EXCEPTION 'a stream of the batch is not at its expected version'
            USING ERRCODE = 'TF002';
    END IF;
    IF cardinality(r_key) > 0 THEN
        INSERT INTO idempotency (tenant_id, idem_key, request_hash, status, body,
                                 created_at_us)
        SELECT t, k, h, st, b, recorded
        FROM UNNEST(r_tenant, r_key, r_hash, r_status, r_body) AS r (t, k, h, st, b);
    END IF;
    UPDATE event_position SET last = last + n WHERE id = 1 RETURNING last - n INTO base;
    INSERT INTO events (position, tenant_id, stream_id, seq, event_id, event_type,
                        schema_version, body, hash, recorded_at_us)
    SELECT base + e.ord, e.tenant_id, e.stream_id, e.seq, e.event_id, e.event_type,
           e.schema_version, e.body, e.hash, recorded
    FROM UNNEST(e_tenant, e_stream, e_seq, e_id, e_type, e_schema, e_body, e_hash)
        WITH ORDINALITY AS e (tenant_id, stream_id, seq, event_id, event_type,
                              schema_version, body, hash, ord);
    RETURN base + 1;
END
$$;
ALTER FUNCTION trustfold_append_batch_recorded(uuid[], uuid[], int8[], int8[], bytea[],
    uuid[], uuid[], int8[], uuid[], text[], int4[], bytea[], bytea[], bigint, uuid[],
    text[], bytea[], int4[], bytea[])
    SET enable_seqscan = off;
ALTER FUNCTION trustfold_append_batch_recorded(uuid[], uuid[], int8[], int8[], bytea[],
    uuid[], uuid[], int8[], uuid[], text[], int4[], bytea[], bytea[], bigint, uuid[],
    text[], bytea[], int4[], bytea[])
    SET plan_cache_mode = force_generic_plan;
"#,
];

/// Inserts a batch's events and hands out their global positions, in array order. This
/// is the last statement of every batch: the counter row is locked as late as possible
/// and held until commit, so positions are gap-free and commits happen in position
/// order. Returns the first position and the number of rows.
const INSERT_EVENTS: &str = r#"
WITH counter AS (
    UPDATE event_position SET last = last + $1 WHERE id = 1 RETURNING last - $1 AS base
), ins AS (
    INSERT INTO events (position, tenant_id, stream_id, seq, event_id, event_type,
                        schema_version, body, hash, recorded_at_us)
    SELECT counter.base + e.ord, e.tenant_id, e.stream_id, e.seq, e.event_id, e.event_type,
           e.schema_version, e.body, e.hash, $10
    FROM counter,
         UNNEST($2::uuid[], $3::uuid[], $4::int8[], $5::uuid[], $6::text[], $7::int4[],
                $8::bytea[], $9::bytea[])
             WITH ORDINALITY AS e (tenant_id, stream_id, seq, event_id, event_type,
                                   schema_version, body, hash, ord)
    RETURNING position
)
SELECT (SELECT min(position) FROM ins), (SELECT count(*) FROM ins)
"#;

/// The channel every committed append is announced on, with the payload
/// `tenant:stream:version`, right after its commit by whichever process appended it
/// (see [`notifier`]).
pub const NOTIFY_CHANNEL: &str = "trustfold_events";

/// How often a batch is tried again when a concurrent process got in its way (created
/// one of its streams or stored one of its event ids first, or a deadlock).
const BATCH_ATTEMPTS: usize = 4;

/// Binds the event rows of a batch as the eight column arrays both inserts take (tenant,
/// stream, seq, id, type, schema version, body, hash), in row order.
macro_rules! bind_event_rows {
    ($query:expr, $rows:expr) => {
        $query
            .bind($rows.iter().map(|r| r.tenant).collect::<Vec<_>>())
            .bind($rows.iter().map(|r| r.stream).collect::<Vec<_>>())
            .bind($rows.iter().map(|r| r.seq).collect::<Vec<_>>())
            .bind($rows.iter().map(|r| r.event.event_id).collect::<Vec<_>>())
            .bind(
                $rows
                    .iter()
                    .map(|r| r.event.event_type.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                $rows
                    .iter()
                    .map(|r| i32::from(r.event.schema_version))
                    .collect::<Vec<_>>(),
            )
            .bind(
                $rows
                    .iter()
                    .map(|r| r.event.body.as_slice())
                    .collect::<Vec<_>>(),
            )
            .bind(
                $rows
                    .iter()
                    .map(|r| r.event.hash.as_slice())
                    .collect::<Vec<_>>(),
            )
    };
}

/// The event store on PostgreSQL.
///
/// **Global order.** Every batch of appends runs in one READ COMMITTED transaction: it
/// first locks and moves the streams' rows (a concurrent append to the same stream from
/// another process waits on that row and then finds the version moved), then, as its
/// last statement, bumps the single-row counter `event_position` and inserts the events with
/// the positions it returned. The counter's row lock is held until commit, so appends
/// commit one after another in position order: positions are gap-free (a rolled-back
/// append also rolls back its bump) and a reader following `position > checkpoint` never
/// meets an event that commits later with a smaller position. This is the design of the
/// Elixir EventStore (commanded); it costs one serialised commit per transaction.
///
/// **Group commit.** One appender task per store commits the appends queued by
/// concurrent callers in one transaction: it reads the stored ids and locks the batch's
/// existing stream rows (in id order), judges each append on its own (retry, version,
/// tenant: a loser fails alone), creates new streams with `ON CONFLICT DO NOTHING`
/// (another process won: the batch is tried again), moves the heads and inserts all
/// winners' events with one counter bump. So one fsync and one counter lock serve the
/// whole batch; see `group.rs`. A batch of appends to distinct streams is first tried as
/// a single call of `trustfold_append_batch_recorded` (one round trip); after the commit the
/// heads are announced on [`NOTIFY_CHANNEL`] (see [`notifier`]).
///
/// **Durability** is PostgreSQL's: with the default `synchronous_commit = on` an append
/// returns after its WAL record is flushed.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    appender: Appender,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:pass@host:port/db`) with a pool of up to 32
    /// connections, and creates or upgrades the schema. Safe when several processes start
    /// at once: the schema work runs under an advisory lock.
    pub async fn connect(url: &str) -> Result<Self> {
        // No ping before each use (`test_before_acquire`): it is a round trip per query.
        // Once a connection failed (a database restart, a failover), the connections that
        // were idle then are pinged before their next use, and dead ones replaced
        // (`error::disconnect`); a batch of appends that met a dead connection is tried
        // again (the same event ids, so it never appends twice).
        //
        // Every statement is planned for its parameters (`plan_cache_mode`): the
        // prepared statements live as long as their connections, and a generic plan
        // chosen while the tables were empty would stay a full scan as they grow.
        //
        // A transaction left open by a connection that went silent (a partition, a
        // dropped request) would hold the position counter's row lock, and with it every
        // append, until the server noticed: `idle_in_transaction_session_timeout` ends it
        // after 30 s (no transaction of ours waits idle for anything like that).
        let options = PgConnectOptions::from_str(url)?.options([
            ("plan_cache_mode", "force_custom_plan"),
            ("idle_in_transaction_session_timeout", "30s"),
        ]);
        let pool = PgPoolOptions::new()
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if crate::error::disconnect::suspect(meta.idle_for) {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .max_connections(32)
            // A database that cannot be reached is a 503 within 5 s, well inside the
            // SDKs' request deadline (30 s), not a request hanging as long as it.
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        Self::from_pool(pool).await
    }

    /// Uses an existing pool (e.g. with another size), creating or upgrading the schema.
    /// Give its connections the option `plan_cache_mode=force_custom_plan`, as
    /// [`PostgresStore::connect`] does, or its reads may keep plans made for empty tables.
    pub async fn from_pool(pool: PgPool) -> Result<Self> {
        migrate(&pool).await?;
        tracing::info!("postgres event store ready");
        let (notices, rx) = mpsc::unbounded_channel();
        tokio::spawn(notifier((*pool.connect_options()).clone(), rx));
        let appender = Appender::spawn(PgCommitter {
            pool: pool.clone(),
            notices,
        });
        Ok(Self { pool, appender })
    }

    /// The connection pool, for projections that must commit their rows and checkpoint
    /// in one transaction.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn query_events(
        &self,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Vec<StoredEvent>> {
        let rows = query.fetch_all(&self.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(raw_event_from_row!(row));
        }
        Ok(out)
    }
}

async fn migrate(pool: &PgPool) -> Result<()> {
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::Executor::execute(
        &mut *tx,
        "CREATE TABLE IF NOT EXISTS trustfold_schema \
         (id integer PRIMARY KEY CHECK (id = 1), version integer NOT NULL); \
         INSERT INTO trustfold_schema (id, version) VALUES (1, 0) ON CONFLICT DO NOTHING;",
    )
    .await?;
    let current: i32 = sqlx::query_scalar("SELECT version FROM trustfold_schema WHERE id = 1")
        .fetch_one(&mut *tx)
        .await?;
    let known = MIGRATIONS.len();
    let current = usize::try_from(current).unwrap_or(usize::MAX);
    if current > known {
        return Err(StoreError::Schema(format!(
            "the database has schema version {current} but this build knows only up to \
             {known}; upgrade trustfold-server"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        sqlx::Executor::execute(&mut *tx, *sql).await?;
        sqlx::query("UPDATE trustfold_schema SET version = $1 WHERE id = 1")
            .bind(i32::try_from(i + 1).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await?;
        tracing::info!(version = i + 1, "postgres event store schema migrated");
    }
    tx.commit().await?;
    Ok(())
}

impl EventStore for PostgresStore {
    async fn append(
        &self,
        tenant: Uuid,
        stream: Uuid,
        expected_version: u64,
        events: &[NewEvent],
    ) -> Result<AppendResult> {
        self.appender
            .append(tenant, stream, expected_version, events, None)
            .await
    }

    async fn append_recorded(
        &self,
        tenant: Uuid,
        stream: Uuid,
        expected_version: u64,
        events: &[NewEvent],
        record: IdempotencyRecord,
    ) -> Result<AppendResult> {
        self.appender
            .append(tenant, stream, expected_version, events, Some(record))
            .await
    }

    async fn read_stream(
        &self,
        tenant: Uuid,
        stream: Uuid,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>> {
        // The tenant is checked on the rows, not in SQL: a stream belongs to one tenant,
        // and with `tenant_id` in the WHERE clause the planner may combine the tenant's
        // position index (every event of a big tenant) with the stream's.
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 \
             AND seq > $2 ORDER BY seq LIMIT $3"
        );
        let mut events = self
            .query_events(
                sqlx::query(&sql)
                    .bind(stream)
                    .bind(to_i64(after_seq))
                    .bind(i64::from(limit)),
            )
            .await?;
        events.retain(|e| e.tenant_id == tenant);
        Ok(events)
    }

    async fn stream_head(&self, tenant: Uuid, stream: Uuid) -> Result<Option<StreamHead>> {
        let row = sqlx::query(
            "SELECT version, last_hash FROM streams WHERE stream_id = $1 AND tenant_id = $2",
        )
        .bind(stream)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| head_from(row.try_get("version")?, row.try_get("last_hash")?))
            .transpose()
    }

    async fn read_event(&self, tenant: Uuid, event_id: Uuid) -> Result<Option<StoredEvent>> {
        // The tenant is checked on the row (see `read_stream`).
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE event_id = $1");
        let row = sqlx::query(&sql)
            .bind(event_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => Some(raw_event_from_row!(&row)).filter(|e| e.tenant_id == tenant),
            None => None,
        })
    }

    async fn read_all(
        &self,
        tenant: Uuid,
        after_position: u64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE tenant_id = $1 AND position > $2 \
             ORDER BY position LIMIT $3"
        );
        self.query_events(
            sqlx::query(&sql)
                .bind(tenant)
                .bind(to_i64(after_position))
                .bind(i64::from(limit)),
        )
        .await
    }

    async fn read_all_tenants(&self, after_position: u64, limit: u32) -> Result<Vec<StoredEvent>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
        );
        self.query_events(
            sqlx::query(&sql)
                .bind(to_i64(after_position))
                .bind(i64::from(limit)),
        )
        .await
    }
}

/// The group-commit transaction (see [`crate::group`]).
struct PgCommitter {
    pool: PgPool,
    /// Payloads for [`notifier`].
    notices: mpsc::UnboundedSender<String>,
}

/// Whether a failed batch may succeed when simply tried again.
fn retryable(e: &StoreError) -> bool {
    match e {
        // A dead connection (its commit may or may not have happened: the retry's
        // event ids find what it stored). Not a pool timeout: that already waited for a
        // connection long enough.
        StoreError::Database(sqlx::Error::PoolTimedOut) => false,
        e if e.is_disconnect() => true,
        StoreError::Database(sqlx::Error::Database(db)) => {
            db.is_unique_violation() || matches!(db.code().as_deref(), Some("40P01" | "40001"))
        }
        // A stream created by another process between reading the heads and inserting.
        StoreError::VersionConflict { .. } => true,
        _ => false,
    }
}

impl Committer for PgCommitter {
    fn deadline(&self) -> Option<Duration> {
        Some(crate::group::COMMIT_DEADLINE)
    }

    async fn commit(&mut self, batch: &[Request]) -> Result<Vec<Outcome>> {
        if let Some(outcomes) = self.fast(batch).await {
            return Ok(outcomes);
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_commit(batch).await {
                Err(e) if attempt < BATCH_ATTEMPTS && retryable(&e) => {
                    tracing::debug!(error = %e, attempt, "batch raced another process or lost its connection; again");
                }
                other => return other,
            }
        }
    }
}

impl PgCommitter {
    /// The whole batch in one round trip: `trustfold_append_batch_recorded` (schema
    /// version 4) checks that every stream is at its expected version and owned by its
    /// tenant, moves the heads, inserts the idempotency records and the events with one
    /// counter bump (a stored event id or key fails its insert), all in one autocommit
    /// statement. It only applies when every append of the batch is to a
    /// different stream; if any check fails the statement raises and writes nothing,
    /// and `None` sends the batch to [`PgCommitter::try_commit`], which judges each
    /// append on its own.
    async fn fast(&self, batch: &[Request]) -> Option<Vec<Outcome>> {
        let streams = Writes::streams_of(batch);
        if streams.len() != batch.len() {
            return None;
        }
        let steps: Vec<Step> = batch.iter().map(|_| Step::Write).collect();
        let writes = Writes::of(batch, &steps, &HashSet::new());
        let heads = &writes.streams;
        let rows = &writes.rows;
        let expected: Vec<i64> = heads
            .iter()
            .map(|h| {
                let n = batch
                    .iter()
                    .find(|r| r.stream == h.stream)
                    .map_or(0, |r| r.events.len());
                h.version - to_i64(n as u64)
            })
            .collect();
        let query = sqlx::query_scalar(
            "SELECT trustfold_append_batch_recorded($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
             $11, $12, $13, $14, $15, $16, $17, $18, $19)",
        )
        .bind(heads.iter().map(|h| h.stream).collect::<Vec<_>>())
        .bind(heads.iter().map(|h| h.tenant).collect::<Vec<_>>())
        .bind(expected)
        .bind(heads.iter().map(|h| h.version).collect::<Vec<_>>())
        .bind(
            heads
                .iter()
                .map(|h| h.last_hash.to_vec())
                .collect::<Vec<_>>(),
        );
        let recs = &writes.records;
        let first: std::result::Result<i64, sqlx::Error> = bind_event_rows!(query, rows)
            .bind(now_micros())
            .bind(recs.iter().map(|(t, _)| *t).collect::<Vec<_>>())
            .bind(recs.iter().map(|(_, r)| r.key.as_str()).collect::<Vec<_>>())
            .bind(
                recs.iter()
                    .map(|(_, r)| r.request_hash.as_slice())
                    .collect::<Vec<_>>(),
            )
            .bind(
                recs.iter()
                    .map(|(_, r)| i32::from(r.status))
                    .collect::<Vec<_>>(),
            )
            .bind(
                recs.iter()
                    .map(|(_, r)| r.body.as_slice())
                    .collect::<Vec<_>>(),
            )
            .fetch_one(&self.pool)
            .await;
        match first {
            Ok(first) => {
                self.notify(&writes);
                Some(writes.outcomes(batch, steps, u64::try_from(first).ok()?))
            }
            Err(e) => {
                tracing::debug!(error = %e, "batch needs judging append by append");
                None
            }
        }
    }

    async fn try_commit(&self, batch: &[Request]) -> Result<Vec<Outcome>> {
        let mut tx = self.pool.begin().await?;
        // Lock the existing streams in id order (processes never deadlock on them) before
        // reading the ids: under READ COMMITTED each statement sees what committed before
        // it began, so a retry that waited here for its own first try (still committing
        // in another transaction) then finds that try's events and gets its result, not a
        // version conflict.
        let locked: Vec<(Uuid, Uuid, i64)> = sqlx::query_as(
            "SELECT stream_id, tenant_id, version FROM streams WHERE stream_id = ANY($1) \
             ORDER BY stream_id FOR UPDATE",
        )
        .bind(Writes::streams_of(batch))
        .fetch_all(&mut *tx)
        .await?;
        let ids = Writes::ids(batch);
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE event_id = ANY($1) ORDER BY position"
        );
        let rows = sqlx::query(&sql).bind(&ids).fetch_all(&mut *tx).await?;
        let mut found = Vec::with_capacity(rows.len());
        for row in &rows {
            found.push(raw_event_from_row!(row));
        }
        let mut heads = Heads::new();
        for (stream, owner, v) in locked {
            heads.insert(stream, (owner, u64::try_from(v).unwrap_or(0)));
        }
        let (tenants, keys) = Writes::keys(batch);
        let mut taken: HashSet<Key> = HashSet::new();
        if !keys.is_empty() {
            let rows: Vec<(Uuid, String)> = sqlx::query_as(
                "SELECT tenant_id, idem_key FROM idempotency WHERE (tenant_id, idem_key) IN \
                 (SELECT * FROM UNNEST($1::uuid[], $2::text[]))",
            )
            .bind(&tenants)
            .bind(&keys)
            .fetch_all(&mut *tx)
            .await?;
            taken.extend(rows);
        }
        let stored: HashSet<Uuid> = heads.keys().copied().collect();
        let steps = plan(batch, &found, &mut heads, &taken);
        let writes = Writes::of(batch, &steps, &stored);
        if writes.rows.is_empty() && writes.records.is_empty() {
            tx.rollback().await?;
            return Ok(writes.outcomes(batch, steps, 0));
        }
        if !writes.records.is_empty() {
            // A key taken by another process since it was read fails the insert (a
            // unique violation): the batch is tried again and then finds it taken.
            let recs = &writes.records;
            sqlx::query(
                "INSERT INTO idempotency (tenant_id, idem_key, request_hash, status, body, \
                 created_at_us) SELECT t, k, h, s, b, $6 FROM UNNEST($1::uuid[], \
                 $2::text[], $3::bytea[], $4::int4[], $5::bytea[]) AS r (t, k, h, s, b)",
            )
            .bind(recs.iter().map(|(t, _)| *t).collect::<Vec<_>>())
            .bind(recs.iter().map(|(_, r)| r.key.as_str()).collect::<Vec<_>>())
            .bind(
                recs.iter()
                    .map(|(_, r)| r.request_hash.as_slice())
                    .collect::<Vec<_>>(),
            )
            .bind(
                recs.iter()
                    .map(|(_, r)| i32::from(r.status))
                    .collect::<Vec<_>>(),
            )
            .bind(
                recs.iter()
                    .map(|(_, r)| r.body.as_slice())
                    .collect::<Vec<_>>(),
            )
            .bind(now_micros())
            .execute(&mut *tx)
            .await?;
        }
        if writes.rows.is_empty() {
            tx.commit().await?;
            return Ok(writes.outcomes(batch, steps, 0));
        }

        let (new, old): (Vec<_>, Vec<_>) = writes.streams.iter().partition(|s| !s.existed);
        if !new.is_empty() {
            let inserted = sqlx::query(
                "INSERT INTO streams (stream_id, tenant_id, version, last_hash) \
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::int8[], $4::bytea[]) \
                 ON CONFLICT (stream_id) DO NOTHING",
            )
            .bind(new.iter().map(|s| s.stream).collect::<Vec<_>>())
            .bind(new.iter().map(|s| s.tenant).collect::<Vec<_>>())
            .bind(new.iter().map(|s| s.version).collect::<Vec<_>>())
            .bind(new.iter().map(|s| s.last_hash.to_vec()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() != new.len() as u64 {
                tx.rollback().await?;
                return Err(StoreError::VersionConflict {
                    expected: 0,
                    current: 0,
                });
            }
        }
        if !old.is_empty() {
            sqlx::query(
                "UPDATE streams SET version = u.version, last_hash = u.last_hash \
                 FROM UNNEST($1::uuid[], $2::int8[], $3::bytea[]) AS u (stream_id, version, \
                 last_hash) WHERE streams.stream_id = u.stream_id",
            )
            .bind(old.iter().map(|s| s.stream).collect::<Vec<_>>())
            .bind(old.iter().map(|s| s.version).collect::<Vec<_>>())
            .bind(old.iter().map(|s| s.last_hash.to_vec()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }

        let rows = &writes.rows;
        let query = sqlx::query_as(INSERT_EVENTS).bind(to_i64(rows.len() as u64));
        let (first, count): (Option<i64>, i64) = bind_event_rows!(query, rows)
            .bind(now_micros())
            .fetch_one(&mut *tx)
            .await?;
        let first = match first {
            Some(f) if count == to_i64(rows.len() as u64) => f,
            _ => {
                tx.rollback().await?;
                return Err(StoreError::Corrupt(format!(
                    "a batch of {} events inserted {count} rows",
                    rows.len()
                )));
            }
        };
        tx.commit().await?;
        self.notify(&writes);
        Ok(writes.outcomes(batch, steps, u64::try_from(first).unwrap_or(0)))
    }

    /// Hands the committed heads to the notifier (see [`notifier`]).
    fn notify(&self, writes: &Writes<'_>) {
        for s in &writes.streams {
            let _ = self
                .notices
                .send(format!("{}:{}:{}", s.tenant, s.stream, s.version));
        }
    }
}

/// Sends `NOTIFY` [`NOTIFY_CHANNEL`] for committed appends, after their commit and off
/// the commands' path: whatever queued up goes out in one statement on a connection of
/// its own with `synchronous_commit = off` (a notification needs no fsync). In the
/// append's own transaction it made every commit about a quarter of a millisecond slower
/// here. If this process dies between an append's commit and its notification, other
/// processes' live streams still find the events at their next poll.
/// How long the notifier waits on its connection for each step.
const NOTIFY_DEADLINE: Duration = Duration::from_secs(2);

async fn notifier(
    options: sqlx::postgres::PgConnectOptions,
    mut rx: mpsc::UnboundedReceiver<String>,
) {
    let mut conn: Option<sqlx::PgConnection> = None;
    while let Some(first) = rx.recv().await {
        let mut payloads = vec![first];
        while payloads.len() < 4096 {
            match rx.try_recv() {
                Ok(p) => payloads.push(p),
                Err(_) => break,
            }
        }
        // Every step bounded (`NOTIFY_DEADLINE`): a connection that went silent would
        // otherwise hold every later notice until TCP gives up.
        if conn.is_none() {
            let setup = async {
                let mut c = sqlx::PgConnection::connect_with(&options).await?;
                sqlx::query("SET synchronous_commit = off")
                    .execute(&mut c)
                    .await?;
                Ok::<_, sqlx::Error>(c)
            };
            match tokio::time::timeout(NOTIFY_DEADLINE, setup).await {
                Ok(Ok(c)) => conn = Some(c),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "notifier cannot connect; live streams of other processes fall back to polling");
                    continue;
                }
                Err(_) => {
                    tracing::warn!("notifier got no answer connecting; live streams of other processes fall back to polling");
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let notify = sqlx::query("SELECT pg_notify($1, p) FROM UNNEST($2::text[]) AS p")
            .bind(NOTIFY_CHANNEL)
            .bind(&payloads)
            .execute(&mut *c);
        match tokio::time::timeout(NOTIFY_DEADLINE, notify).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "NOTIFY failed; reconnecting");
                conn = None;
            }
            Err(_) => {
                tracing::warn!("NOTIFY got no answer in time; reconnecting");
                conn = None;
            }
        }
    }
}
