//! The scale-out engine: PostgreSQL, shared by any number of server processes.

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection as _, Row as _};
use uuid::Uuid;

use crate::error::{Result, StoreError};
use crate::event::{
    now_micros, raw_event_from_row, resolve_retry, to_i64, validate_append, AppendResult, NewEvent,
    StoredEvent, StreamHead, EVENT_COLUMNS,
};
use crate::sqlite::head_from;
use crate::EventStore;

/// The key of the advisory lock held while the schema is created or upgraded, so that
/// processes starting together do not race ("trustfold" in ASCII, truncated).
const MIGRATION_LOCK: i64 = 0x7472_7573_7466_6f6c;

/// The schema, one entry per version; entry `i` moves the schema from version `i` to
/// `i + 1`. Never edit an entry once released: add a new one.
const MIGRATIONS: &[&str] = &[r#"
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
"#];

/// Inserts a batch and hands out its global positions. This is the last statement of
/// every append: the counter row is locked as late as possible and held until commit,
/// so positions are gap-free and commits happen in position order.
const INSERT_EVENTS: &str = r#"
WITH counter AS (
    UPDATE event_position SET last = last + $3 WHERE id = 1 RETURNING last - $3 AS base
)
INSERT INTO events (position, tenant_id, stream_id, seq, event_id, event_type,
                    schema_version, body, hash, recorded_at_us)
SELECT counter.base + e.ord, $1, $2, $4 + e.ord, e.event_id, e.event_type,
       e.schema_version, e.body, e.hash, $10
FROM counter,
     UNNEST($5::uuid[], $6::text[], $7::int4[], $8::bytea[], $9::bytea[])
         WITH ORDINALITY AS e (event_id, event_type, schema_version, body, hash, ord)
RETURNING position
"#;

/// The event store on PostgreSQL.
///
/// **Global order.** Every append runs in one READ COMMITTED transaction: it first
/// moves the stream's row (`INSERT ... ON CONFLICT DO NOTHING` for a new stream,
/// `UPDATE ... WHERE version = expected` otherwise; a concurrent append of the same
/// version waits on that row and then finds the version moved), then, as its last
/// statement, bumps the single-row counter `event_position` and inserts the events with
/// the positions it returned. The counter's row lock is held until commit, so appends
/// commit one after another in position order: positions are gap-free (a rolled-back
/// append also rolls back its bump) and a reader following `position > checkpoint` never
/// meets an event that commits later with a smaller position. This is the design of the
/// Elixir EventStore (commanded); it costs one serialised commit per append, which the
/// server amortises by batching.
///
/// **Durability** is PostgreSQL's: with the default `synchronous_commit = on` an append
/// returns after its WAL record is flushed.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:pass@host:port/db`) with a pool of up to 32
    /// connections, and creates or upgrades the schema. Safe when several processes start
    /// at once: the schema work runs under an advisory lock.
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(32)
            .acquire_timeout(Duration::from_secs(30))
            .connect(url)
            .await?;
        Self::from_pool(pool).await
    }

    /// Uses an existing pool (e.g. with another size), creating or upgrading the schema.
    pub async fn from_pool(pool: PgPool) -> Result<Self> {
        migrate(&pool).await?;
        tracing::info!("postgres event store ready");
        Ok(Self { pool })
    }

    /// The connection pool, for projections that must commit their rows and checkpoint
    /// in one transaction.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn find_by_ids(&self, ids: &[Uuid]) -> Result<Vec<StoredEvent>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE event_id = ANY($1) ORDER BY position"
        );
        let rows = sqlx::query(&sql).bind(ids).fetch_all(&self.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(raw_event_from_row!(row));
        }
        Ok(out)
    }

    /// Works out why an append changed nothing: an exact retry (the original result), a
    /// reused event id, a stream of another tenant, or a version conflict.
    async fn explain_rejection(
        &self,
        tenant: Uuid,
        stream: Uuid,
        expected_version: u64,
        events: &[NewEvent],
    ) -> Result<AppendResult> {
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let found = self.find_by_ids(&ids).await?;
        if let Some(outcome) = resolve_retry(tenant, stream, expected_version, events, &found) {
            return outcome;
        }
        let head: Option<(Uuid, i64)> =
            sqlx::query_as("SELECT tenant_id, version FROM streams WHERE stream_id = $1")
                .bind(stream)
                .fetch_optional(&self.pool)
                .await?;
        match head {
            Some((owner, _)) if owner != tenant => {
                Err(StoreError::StreamUnavailable { stream_id: stream })
            }
            Some((_, v)) => Err(StoreError::VersionConflict {
                expected: expected_version,
                current: u64::try_from(v).unwrap_or(0),
            }),
            None => Err(StoreError::VersionConflict {
                expected: expected_version,
                current: 0,
            }),
        }
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
        validate_append(expected_version, events)?;
        let n = to_i64(events.len() as u64);
        let new_version = to_i64(expected_version) + n;
        let last_hash = events.last().map(|e| e.hash.to_vec()).unwrap_or_default();

        let mut tx = self.pool.begin().await?;
        let moved = if expected_version == 0 {
            sqlx::query(
                "INSERT INTO streams (stream_id, tenant_id, version, last_hash) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (stream_id) DO NOTHING",
            )
            .bind(stream)
            .bind(tenant)
            .bind(new_version)
            .bind(&last_hash)
            .execute(&mut *tx)
            .await?
        } else {
            sqlx::query(
                "UPDATE streams SET version = $3, last_hash = $4 \
                 WHERE stream_id = $1 AND tenant_id = $2 AND version = $5",
            )
            .bind(stream)
            .bind(tenant)
            .bind(new_version)
            .bind(&last_hash)
            .bind(to_i64(expected_version))
            .execute(&mut *tx)
            .await?
        };
        if moved.rows_affected() != 1 {
            tx.rollback().await?;
            return self
                .explain_rejection(tenant, stream, expected_version, events)
                .await;
        }

        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let versions: Vec<i32> = events.iter().map(|e| i32::from(e.schema_version)).collect();
        let bodies: Vec<&[u8]> = events.iter().map(|e| e.body.as_slice()).collect();
        let hashes: Vec<&[u8]> = events.iter().map(|e| e.hash.as_slice()).collect();
        let inserted = sqlx::query_scalar::<_, i64>(INSERT_EVENTS)
            .bind(tenant)
            .bind(stream)
            .bind(n)
            .bind(to_i64(expected_version))
            .bind(&ids)
            .bind(&types)
            .bind(&versions)
            .bind(&bodies)
            .bind(&hashes)
            .bind(now_micros())
            .fetch_all(&mut *tx)
            .await;
        let positions = match inserted {
            Ok(p) => p,
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                // An event id stored elsewhere: a retry in another shape, or a reuse.
                tx.rollback().await?;
                return match self
                    .explain_rejection(tenant, stream, expected_version, events)
                    .await
                {
                    Err(StoreError::VersionConflict { .. }) => {
                        Err(StoreError::EventIdReused { event_id: ids[0] })
                    }
                    other => other,
                };
            }
            Err(e) => return Err(e.into()),
        };
        tx.commit().await?;
        let (Some(first), Some(last)) = (positions.iter().min(), positions.iter().max()) else {
            return Err(StoreError::Corrupt("append inserted no rows".into()));
        };
        let result = AppendResult {
            first_position: *first as u64,
            last_position: *last as u64,
            new_version: new_version as u64,
        };
        tracing::debug!(%tenant, %stream, ?result, "appended");
        Ok(result)
    }

    async fn read_stream(
        &self,
        tenant: Uuid,
        stream: Uuid,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 AND tenant_id = $2 \
             AND seq > $3 ORDER BY seq LIMIT $4"
        );
        self.query_events(
            sqlx::query(&sql)
                .bind(stream)
                .bind(tenant)
                .bind(to_i64(after_seq))
                .bind(i64::from(limit)),
        )
        .await
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
        let sql =
            format!("SELECT {EVENT_COLUMNS} FROM events WHERE event_id = $1 AND tenant_id = $2");
        let row = sqlx::query(&sql)
            .bind(event_id)
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => Some(raw_event_from_row!(&row)),
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
