//! The embedded engine: one SQLite file in WAL mode with a single writer.

use std::collections::HashSet;
use std::path::Path;
use std::str::FromStr as _;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection as _, QueryBuilder, Row as _, Sqlite, SqliteConnection};
use uuid::Uuid;

use crate::error::{Result, StoreError};
use crate::event::{
    now_micros, raw_event_from_row, to_i64, AppendResult, IdempotencyRecord, NewEvent, StoredEvent,
    StreamHead, EVENT_COLUMNS,
};
use crate::group::{plan, Appender, Committer, Heads, Key, Outcome, Request, Row, Step, Writes};
use crate::EventStore;

/// The schema, one entry per version; entry `i` moves the schema from version `i` to
/// `i + 1`. Never edit an entry once released: add a new one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE streams (
    stream_id  BLOB PRIMARY KEY,
    tenant_id  BLOB NOT NULL,
    version    INTEGER NOT NULL CHECK (version > 0),
    last_hash  BLOB NOT NULL CHECK (length(last_hash) = 32)
) WITHOUT ROWID;
CREATE TABLE events (
    position       INTEGER PRIMARY KEY CHECK (position > 0),
    tenant_id      BLOB NOT NULL,
    stream_id      BLOB NOT NULL REFERENCES streams (stream_id),
    seq            INTEGER NOT NULL CHECK (seq > 0),
    event_id       BLOB NOT NULL UNIQUE,
    event_type     TEXT NOT NULL,
    schema_version INTEGER NOT NULL CHECK (schema_version BETWEEN 0 AND 65535),
    body           BLOB NOT NULL,
    hash           BLOB NOT NULL CHECK (length(hash) = 32),
    recorded_at_us INTEGER NOT NULL,
    UNIQUE (stream_id, seq)
);
CREATE INDEX events_tenant_position ON events (tenant_id, position);
CREATE TABLE event_position (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    last INTEGER NOT NULL
);
INSERT INTO event_position (id, last) VALUES (1, 0);
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the events table is append-only: UPDATE is not allowed'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'the events table is append-only: DELETE is not allowed'); END;
"#,
    r#"
DROP TABLE event_position;
CREATE TRIGGER events_expected_version BEFORE INSERT ON events
BEGIN
    SELECT RAISE(ABORT, 'trustfold: stream version conflict')
    WHERE NEW.seq <> COALESCE((SELECT version FROM streams WHERE stream_id = NEW.stream_id), 0) + 1;
    SELECT RAISE(ABORT, 'trustfold: the stream belongs to another tenant')
    WHERE EXISTS (SELECT 1 FROM streams WHERE stream_id = NEW.stream_id
                  AND tenant_id <> NEW.tenant_id);
END;
CREATE TRIGGER events_stream_head AFTER INSERT ON events
BEGIN
    INSERT INTO streams (stream_id, tenant_id, version, last_hash)
    VALUES (NEW.stream_id, NEW.tenant_id, NEW.seq, NEW.hash)
    ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version,
        last_hash = excluded.last_hash;
END;
"#,
];

/// Ids per `IN (…)` list, and rows per multi-row `INSERT` (10 parameters each), well
/// under SQLite's limit of bound parameters per statement.
const IN_CHUNK: usize = 500;
const ROW_CHUNK: usize = 500;

/// How long a connection waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The event store on a SQLite file.
///
/// **Single writer.** All appends of this process go through one connection (a pool of
/// size one, so concurrent appends queue fairly); SQLite's write lock also serialises
/// writers in other processes on the same file (they wait up to 10 s for it). Because
/// commits are serial, each event's position is the next rowid (the largest plus one),
/// gap-free and in commit order; nothing is ever deleted from `events`.
///
/// **Group commit.** One appender task per store takes the appends queued by concurrent
/// callers and commits them together (one fsync); see `group.rs`. Triggers on `events`
/// (schema version 2) check each row's sequence against its stream's head and owner and
/// move the head, so a batch is first tried as **one multi-row `INSERT`** in autocommit
/// (one statement, the cost of a plain insert). If any append in it fails (a stale
/// version, a retried or reused id, another tenant's stream) the statement writes
/// nothing, and the batch is judged append by append in a `BEGIN IMMEDIATE`
/// transaction (stored ids and heads read, each append's own result), as PostgreSQL
/// always does.
///
/// **Durability.** The file is in WAL mode with `synchronous = FULL`: every commit
/// fsyncs the WAL before `append` returns, so an acknowledged append survives a power
/// loss, not only a crash of the process. (`NORMAL` would be faster but may lose the
/// last commits on power loss, which an acknowledged payment command must not.)
///
/// Reads use a separate pool of read-only connections and never block the writer.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    readers: SqlitePool,
    appender: Appender,
}

impl SqliteStore {
    /// Opens (creating if missing) the store in the SQLite file at `path`, and creates or
    /// upgrades its schema.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        // Several processes creating the same new file at once can meet SQLITE_BUSY while
        // one of them switches it to WAL (that switch does not wait on the busy handler):
        // try again shortly.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::open_once(path.as_ref()).await {
                Err(StoreError::Database(sqlx::Error::Database(e)))
                    if attempt < 20 && e.code().as_deref() == Some("5") =>
                {
                    tracing::debug!(error = %e, attempt, "sqlite file busy while opening; again");
                    tokio::time::sleep(Duration::from_millis(25 * attempt)).await;
                }
                other => return other,
            }
        }
    }

    async fn open_once(path: &Path) -> Result<Self> {
        let base = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        // No ping before each use (`test_before_acquire`): it would cost a hand-off to
        // the connection thread per statement, and a file connection does not go stale.
        let writer = SqlitePoolOptions::new()
            .test_before_acquire(false)
            // SQLite rolls a transaction back by itself when the disk fails under it
            // (SQLITE_FULL, SQLITE_IOERR); the `ROLLBACK` sqlx then sends fails, and sqlx
            // would count the connection as inside a transaction forever (every later
            // `BEGIN IMMEDIATE` refused). Such a connection is closed on release and the
            // pool opens a fresh one. (A rollback still queued when the connection comes
            // back also closes it: only after a failed transaction, so rarely.)
            .after_release(|conn, _| Box::pin(async move { Ok(!conn.is_in_transaction()) }))
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(base.clone().create_if_missing(true))
            .await?;
        {
            let mut conn = writer.acquire().await?;
            migrate(&mut conn).await?;
        }
        let readers = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(8)
            .connect_with(base.read_only(true))
            .await?;
        tracing::info!(path = %path.display(), "sqlite event store open");
        let appender = Appender::spawn(SqliteCommitter {
            writer: writer.clone(),
        });
        Ok(Self {
            writer,
            readers,
            appender,
        })
    }

    /// The pool of the single writer connection, for projections that must commit their
    /// rows and checkpoint in one transaction.
    pub fn writer_pool(&self) -> &SqlitePool {
        &self.writer
    }

    /// The pool of read-only connections.
    pub fn reader_pool(&self) -> &SqlitePool {
        &self.readers
    }

    async fn query_events(
        &self,
        sql: &str,
        binds: (Option<Uuid>, Option<Uuid>, i64, i64),
    ) -> Result<Vec<StoredEvent>> {
        let (a, b, after, limit) = binds;
        let mut q = sqlx::query(sql);
        if let Some(a) = a {
            q = q.bind(a);
        }
        if let Some(b) = b {
            q = q.bind(b);
        }
        let rows = q.bind(after).bind(limit).fetch_all(&self.readers).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(raw_event_from_row!(row));
        }
        Ok(out)
    }
}

async fn migrate(conn: &mut SqliteConnection) -> Result<()> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::Executor::execute(
        &mut *tx,
        "CREATE TABLE IF NOT EXISTS trustfold_schema \
         (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL); \
         INSERT OR IGNORE INTO trustfold_schema (id, version) VALUES (1, 0);",
    )
    .await?;
    let current: i64 = sqlx::query_scalar("SELECT version FROM trustfold_schema WHERE id = 1")
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
        sqlx::query("UPDATE trustfold_schema SET version = ? WHERE id = 1")
            .bind(to_i64(u64::try_from(i + 1).unwrap_or(u64::MAX)))
            .execute(&mut *tx)
            .await?;
        tracing::info!(version = i + 1, "sqlite event store schema migrated");
    }
    tx.commit().await?;
    Ok(())
}

impl EventStore for SqliteStore {
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
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = ? AND tenant_id = ? \
             AND seq > ? ORDER BY seq LIMIT ?"
        );
        self.query_events(
            &sql,
            (
                Some(stream),
                Some(tenant),
                to_i64(after_seq),
                i64::from(limit),
            ),
        )
        .await
    }

    async fn stream_head(&self, tenant: Uuid, stream: Uuid) -> Result<Option<StreamHead>> {
        let row = sqlx::query(
            "SELECT version, last_hash FROM streams WHERE stream_id = ? AND tenant_id = ?",
        )
        .bind(stream)
        .bind(tenant)
        .fetch_optional(&self.readers)
        .await?;
        row.map(|row| head_from(row.try_get("version")?, row.try_get("last_hash")?))
            .transpose()
    }

    async fn read_event(&self, tenant: Uuid, event_id: Uuid) -> Result<Option<StoredEvent>> {
        let sql =
            format!("SELECT {EVENT_COLUMNS} FROM events WHERE event_id = ? AND tenant_id = ?");
        let row = sqlx::query(&sql)
            .bind(event_id)
            .bind(tenant)
            .fetch_optional(&self.readers)
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
            "SELECT {EVENT_COLUMNS} FROM events WHERE tenant_id = ? AND position > ? \
             ORDER BY position LIMIT ?"
        );
        self.query_events(
            &sql,
            (Some(tenant), None, to_i64(after_position), i64::from(limit)),
        )
        .await
    }

    async fn read_all_tenants(&self, after_position: u64, limit: u32) -> Result<Vec<StoredEvent>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?"
        );
        self.query_events(&sql, (None, None, to_i64(after_position), i64::from(limit)))
            .await
    }
}

/// The group-commit transaction on the single writer connection (see [`crate::group`]).
struct SqliteCommitter {
    writer: SqlitePool,
}

impl Committer for SqliteCommitter {
    async fn commit(&mut self, batch: &[Request]) -> Result<Vec<Outcome>> {
        // The connection is opened with `synchronous = FULL` and nothing lowers it.
        let mut conn = self.writer.acquire().await?;
        let rows: usize = batch.iter().map(|r| r.events.len()).sum();
        if rows <= ROW_CHUNK && writes_records(batch) <= ROW_CHUNK {
            // Fast path: the whole batch as one autocommit statement (one hand-off to
            // the connection thread, one fsync). The triggers check every row's version
            // and owner and move the heads; positions are the next rowids, so they stay
            // gap-free and in commit order. A failed statement writes nothing: then
            // the batch is judged append by append below. With idempotency records it
            // is a transaction of two statements, the records inserted only if no key
            // has one yet.
            let steps: Vec<Step> = batch.iter().map(|_| Step::Write).collect();
            let writes = Writes::of(batch, &steps, &HashSet::new());
            let done = if writes.records.is_empty() {
                insert_rows(&mut conn, &writes.rows).await
            } else {
                insert_recorded(&mut conn, &writes.rows, &writes.records).await
            };
            match done {
                Ok(first) => return Ok(writes.outcomes(batch, steps, first)),
                Err(e) => tracing::debug!(error = %e, "batch needs judging append by append"),
            }
        }
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        // A few statements per batch, whatever its size: each statement is a hand-off to
        // sqlx's connection thread, so per-row statements would cost more than the fsync.
        let mut found = Vec::new();
        for ids in Writes::ids(batch).chunks(IN_CHUNK) {
            let mut q = QueryBuilder::<Sqlite>::new(format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE event_id IN ("
            ));
            let mut list = q.separated(", ");
            for id in ids {
                list.push_bind(*id);
            }
            q.push(")");
            for row in q.build().fetch_all(&mut *tx).await? {
                found.push(raw_event_from_row!(&row));
            }
        }
        found.sort_by_key(|e| e.position);
        let mut heads = Heads::new();
        for streams in Writes::streams_of(batch).chunks(IN_CHUNK) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "SELECT stream_id, tenant_id, version FROM streams WHERE stream_id IN (",
            );
            let mut list = q.separated(", ");
            for s in streams {
                list.push_bind(*s);
            }
            q.push(")");
            let rows: Vec<(Uuid, Uuid, i64)> = q.build_query_as().fetch_all(&mut *tx).await?;
            for (stream, owner, v) in rows {
                heads.insert(stream, (owner, u64::try_from(v).unwrap_or(0)));
            }
        }
        let mut taken: HashSet<Key> = HashSet::new();
        let (tenants, keys) = Writes::keys(batch);
        for (tenants, keys) in tenants.chunks(IN_CHUNK).zip(keys.chunks(IN_CHUNK)) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "SELECT tenant_id, idem_key FROM idempotency WHERE idem_key IN (",
            );
            let mut list = q.separated(", ");
            for k in keys {
                list.push_bind(k.as_str());
            }
            q.push(")");
            let rows: Vec<(Uuid, String)> = q.build_query_as().fetch_all(&mut *tx).await?;
            taken.extend(rows.into_iter().filter(|(t, _)| tenants.contains(t)));
        }
        let stored: HashSet<Uuid> = heads.keys().copied().collect();
        let steps = plan(batch, &found, &mut heads, &taken);
        let writes = Writes::of(batch, &steps, &stored);
        if writes.rows.is_empty() && writes.records.is_empty() {
            tx.rollback().await?;
            return Ok(writes.outcomes(batch, steps, 0));
        }
        let mut first = None;
        for rows in writes.rows.chunks(ROW_CHUNK) {
            let f = insert_rows(&mut tx, rows).await?;
            first.get_or_insert(f);
        }
        for records in writes.records.chunks(ROW_CHUNK) {
            insert_records(&mut tx, records).await?;
        }
        tx.commit().await?;
        Ok(writes.outcomes(batch, steps, first.unwrap_or(0)))
    }
}

/// Inserts `rows` with one statement and returns the position of the first; they get
/// consecutive positions in order (the next rowids: positions are never deleted, and
/// only this process's single writer connection inserts while it holds the write lock). The triggers of schema version 2 check each row's
/// sequence against its stream's head and owner and move the head.
async fn insert_rows(conn: &mut SqliteConnection, rows: &[Row<'_>]) -> Result<u64> {
    let mut q = QueryBuilder::<Sqlite>::new("");
    push_insert_rows(&mut q, rows);
    // No `RETURNING`: sqlx hands each returned row over from the connection's thread
    // on its own, so a batch would cost a thread hand-off per event. Under the single
    // writer, the rows of one statement take the next rowids in order, so the last one
    // and the count give them all.
    let done = q.build().execute(&mut *conn).await?;
    first_position(rows.len(), done.rows_affected(), done.last_insert_rowid())
}

/// The multi-row insert of `rows` into `events` (the statement, into `q`).
fn push_insert_rows<'q>(q: &mut QueryBuilder<'q, Sqlite>, rows: &'q [Row<'q>]) {
    q.push(
        "INSERT INTO events (tenant_id, stream_id, seq, event_id, event_type, schema_version, \
         body, hash, recorded_at_us) ",
    );
    let recorded_at = now_micros();
    q.push_values(rows, |mut b, row| {
        let e = row.event;
        b.push_bind(row.tenant)
            .push_bind(row.stream)
            .push_bind(row.seq)
            .push_bind(e.event_id)
            .push_bind(e.event_type.as_str())
            .push_bind(i32::from(e.schema_version))
            .push_bind(e.body.as_slice())
            .push_bind(e.hash.as_slice())
            .push_bind(recorded_at);
    });
}

/// The position of the first of `n` events inserted by one statement that wrote
/// `written` rows, the last with rowid `last`.
fn first_position(n: usize, written: u64, last: i64) -> Result<u64> {
    let count = to_i64(n as u64);
    if written != n as u64 || last < count {
        return Err(StoreError::Corrupt(format!(
            "{n} events were inserted but {written} rows were written, the last at position {last}"
        )));
    }
    let first = last - count + 1;
    u64::try_from(first).map_err(|_| StoreError::Corrupt(format!("event position {first}")))
}

/// The fast path of a batch with idempotency records: one multi-statement query, so one
/// hand-off to the connection thread: `BEGIN IMMEDIATE`, the records, the events,
/// `COMMIT`. A stored key or any refused row fails its statement; then the transaction
/// is rolled back here and the batch goes the careful way.
async fn insert_recorded(
    conn: &mut SqliteConnection,
    rows: &[Row<'_>],
    records: &[(Uuid, &IdempotencyRecord)],
) -> Result<u64> {
    let mut q = QueryBuilder::<Sqlite>::new("BEGIN IMMEDIATE; ");
    push_insert_records(&mut q, records);
    q.push("; ");
    push_insert_rows(&mut q, rows);
    q.push("; COMMIT");
    match q.build().execute(&mut *conn).await {
        // Every statement succeeded, so the events' multi-row insert (no conflict clause)
        // wrote all its rows. The last rowid is the events' (the records are inserted
        // first, and COMMIT does not change it). `rows_affected` is no help here: SQLite
        // reports BEGIN and COMMIT with the previous statement's count.
        Ok(done) => first_position(rows.len(), rows.len() as u64, done.last_insert_rowid()),
        Err(e) => {
            // The statement that failed left the transaction open (if `BEGIN` ran).
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Err(e.into())
        }
    }
}

/// How many idempotency records a batch carries.
fn writes_records(batch: &[Request]) -> usize {
    batch.iter().filter(|r| r.record.is_some()).count()
}

/// Inserts idempotency records (tenant, record) with one statement; a key that already
/// has a record fails it.
async fn insert_records(
    conn: &mut SqliteConnection,
    records: &[(Uuid, &IdempotencyRecord)],
) -> Result<()> {
    let mut q = QueryBuilder::<Sqlite>::new("");
    push_insert_records(&mut q, records);
    q.build().execute(&mut *conn).await?;
    Ok(())
}

/// The multi-row insert of idempotency records (the statement, into `q`).
fn push_insert_records<'q>(
    q: &mut QueryBuilder<'q, Sqlite>,
    records: &'q [(Uuid, &'q IdempotencyRecord)],
) {
    q.push(
        "INSERT INTO idempotency (tenant_id, idem_key, request_hash, status, body, \
         created_at_us) ",
    );
    let at = now_micros();
    q.push_values(records, |mut b, (tenant, r)| {
        b.push_bind(*tenant)
            .push_bind(r.key.as_str())
            .push_bind(r.request_hash.as_slice())
            .push_bind(i32::from(r.status))
            .push_bind(r.body.as_slice())
            .push_bind(at);
    });
}

/// Builds a [`StreamHead`] from the `streams` columns of either engine.
pub(crate) fn head_from(version: i64, last_hash: Vec<u8>) -> Result<StreamHead> {
    let corrupt = |reason: &str| StoreError::Corrupt(format!("stream head: {reason}"));
    Ok(StreamHead {
        version: u64::try_from(version).map_err(|_| corrupt("negative version"))?,
        last_hash: last_hash
            .try_into()
            .map_err(|_| corrupt("last hash is not 32 bytes"))?,
    })
}
