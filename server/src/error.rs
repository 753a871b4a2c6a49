//! The one error type of the event store.

use uuid::Uuid;

/// Everything that can go wrong in the event store.
///
/// Messages are lower-case, name the offending value and say what to do next. The HTTP
/// layer maps [`StoreError::VersionConflict`] to 409 (`version_conflict`, with
/// `current_version`), [`StoreError::EventIdReused`] and [`StoreError::InvalidAppend`] to
/// 422, [`StoreError::StreamUnavailable`] to 409, and the rest to 5xx.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The stream is not at the version the caller expected: someone else appended first.
    #[error(
        "version conflict: expected stream version {expected} but it is at {current}; \
         read the stream again and retry with expected version {current}"
    )]
    VersionConflict {
        /// The version the caller expected.
        expected: u64,
        /// The stream's version when the append was rejected (0: no such stream).
        current: u64,
    },

    /// An event id is already stored with other content or at another place (tenant,
    /// stream or sequence number), or only part of a retried batch is stored.
    #[error(
        "event id {event_id} is already stored with other content or at another place; \
         retry with exactly the original batch and expected version, or use a fresh event id"
    )]
    EventIdReused {
        /// The event id that was reused.
        event_id: Uuid,
    },

    /// The stream id is taken by another tenant (a stream's tenant never changes). To the
    /// caller this looks like an id it cannot use, never like another tenant's data.
    #[error("stream {stream_id} cannot be used by this tenant; open a new stream with a fresh id")]
    StreamUnavailable {
        /// The stream id that cannot be used.
        stream_id: Uuid,
    },

    /// [`EventStore::append_recorded`](crate::EventStore::append_recorded): a response
    /// is already stored under this tenant's `Idempotency-Key` (an earlier or concurrent
    /// request with the key), so nothing was written; answer from that record.
    #[error(
        "idempotency key {key:?} already has a stored response; answer from it instead of \
         appending"
    )]
    IdempotencyKeyTaken {
        /// The key.
        key: String,
    },

    /// The append request itself is malformed (empty batch, duplicate ids, too large
    /// versions).
    #[error("invalid append: {0}")]
    InvalidAppend(String),

    /// The database location is not one this store understands.
    #[error(
        "unsupported database location {0:?}: use a postgres:// url, a sqlite: url or a file path"
    )]
    UnsupportedLocation(String),

    /// The database schema could not be created or is newer than this build.
    #[error("event store schema: {0}")]
    Schema(String),

    /// A stored row does not decode into an event (the database was edited by hand?).
    #[error("corrupt stored data: {0}; the database was changed outside the event store")]
    Corrupt(String),

    /// The database did not answer an append in time: it may or may not have been
    /// committed. Retry with the same event ids, which is safe because appends are
    /// idempotent.
    #[error(
        "the database did not answer within {} s; the append may or may not be stored: \
         retry it with the same event ids",
        .0.as_secs()
    )]
    Unresponsive(std::time::Duration),

    /// The database was unreachable for a batch this append was part of (another
    /// append of the batch got the original error). It may or may not be stored:
    /// retry with the same event ids.
    #[error("the database is unavailable ({0}); retry with the same event ids")]
    Unavailable(String),

    /// The database holds sealed secrets (the server key, webhook signing secrets: see
    /// [`crate::sealed`]) and this process was started without the secrets key.
    #[error(
        "the server key and webhook secrets in the database are sealed with a secrets key, \
         and this server was started without one; start it with --secrets-key-file PATH \
         (or TRUSTFOLD_SECRETS_KEY=<64 hex digits>) giving the key they were sealed with"
    )]
    SecretsSealed,

    /// The secrets key this process was given does not open a secret sealed in the
    /// database: another key sealed it (or the stored value was altered).
    #[error(
        "the secrets key given (--secrets-key-file or TRUSTFOLD_SECRETS_KEY) does not open \
         {what} stored in the database; start the server with the key it was sealed with"
    )]
    WrongSecretsKey {
        /// Which secret did not open (`the server key`, `webhook <id>'s secret`).
        what: String,
    },

    /// The secrets key is unusable (not 64 hex digits, an unreadable file) or a secret
    /// could not be sealed.
    #[error("secrets key: {0}")]
    SecretsKey(String),

    /// The database failed (connection lost, disk full, ...). An append that fails this
    /// way may or may not have committed: retry it with the same event ids, which is safe
    /// because appends are idempotent. (One refused for a full disk, see
    /// [`StoreError::is_storage_full`], did not commit.)
    #[error("database error: {0}")]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    /// Wraps a database error; a lost connection is also noted (see
    /// [`StoreError::is_disconnect`]), so that the pool checks its idle connections
    /// before handing them out again.
    fn from(e: sqlx::Error) -> Self {
        let e = StoreError::Database(e);
        if e.is_disconnect() {
            disconnect::note();
        }
        e
    }
}

impl StoreError {
    /// Whether the database connection was lost or the database refused to serve (a
    /// restart, a failover, a proxy that cut the connection, too many connections, a
    /// SQLite file another process keeps locked past the busy timeout): the same
    /// request may well succeed on a fresh connection a moment later. The HTTP layer
    /// answers these with 503 `database_unavailable`.
    pub fn is_disconnect(&self) -> bool {
        match self {
            StoreError::Database(
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Tls(_),
            ) => true,
            StoreError::Unresponsive(_) | StoreError::Unavailable(_) => true,
            // A SQLite file locked by another connection past the busy timeout
            // (SQLITE_BUSY, SQLITE_LOCKED and their extended codes): nothing was
            // written, and the same request succeeds once the lock is let go.
            StoreError::Database(sqlx::Error::Database(db))
                if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() =>
            {
                db.code()
                    .and_then(|c| c.parse::<i32>().ok())
                    .is_some_and(|c| matches!(c & 0xff, 5 | 6))
            }
            StoreError::Database(sqlx::Error::Database(db)) => db.code().is_some_and(|c| {
                // Class 08: connection exception; 57P01-57P03: the server is shutting
                // down or starting; 53300: too many connections; 53200 out of memory and
                // 53000 insufficient resources: nothing written, likely to pass later.
                c.starts_with("08")
                    || matches!(
                        c.as_ref(),
                        "57P01" | "57P02" | "57P03" | "53300" | "53200" | "53000"
                    )
            }),
            _ => false,
        }
    }
}

impl StoreError {
    /// Whether the database refused a write because its storage is full: SQLite's
    /// `SQLITE_FULL` (the disk, or the file's `max_page_count`; extended codes too), or
    /// PostgreSQL's `53100` disk_full. The statement, and so the transaction it belongs to, wrote
    /// nothing; the same write fails again until an operator frees space. The HTTP layer
    /// answers these with 503 `storage_full`.
    pub fn is_storage_full(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(db))
                if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() =>
            {
                db.code()
                    .and_then(|c| c.parse::<i32>().ok())
                    .is_some_and(|c| c & 0xff == 13)
            }
            // 53100 disk_full only: out of memory (53200) or another resource (53000)
            // is no reason to tell an operator to free disk space (those are
            // `is_disconnect`: the database refusing to serve for a moment).
            StoreError::Database(sqlx::Error::Database(db)) => {
                db.code().is_some_and(|c| c.as_ref() == "53100")
            }
            _ => false,
        }
    }
}

/// When this process last saw a database connection fail, so that connections that
/// went idle before it are checked (pinged) before their next use: after a database
/// restart every idle connection in the pool is dead, and without the check each would
/// fail one request before the pool replaced it. Costs one atomic load per acquire
/// while nothing fails.
pub(crate) mod disconnect {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    static EPOCH: OnceLock<Instant> = OnceLock::new();
    /// Milliseconds after [`EPOCH`] (plus one, so that 0 means never).
    static LAST: AtomicU64 = AtomicU64::new(0);
    /// Connections that went idle up to this long after the failure seen are checked
    /// too: a restart closes the connections one after another.
    const MARGIN: Duration = Duration::from_secs(2);

    fn now_ms() -> u64 {
        let epoch = *EPOCH.get_or_init(Instant::now);
        u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Notes that a connection failed now.
    pub(crate) fn note() {
        LAST.fetch_max(now_ms(), Ordering::AcqRel);
    }

    /// Whether a connection idle for `idle_for` should be checked before use.
    pub(crate) fn suspect(idle_for: Duration) -> bool {
        let last = LAST.load(Ordering::Acquire);
        if last == 0 {
            return false;
        }
        let idle_ms = u64::try_from(idle_for.as_millis()).unwrap_or(u64::MAX);
        let went_idle = now_ms().saturating_sub(idle_ms);
        let margin = u64::try_from(MARGIN.as_millis()).unwrap_or(0);
        went_idle <= last.saturating_add(margin)
    }
}

/// Shorthand for results of the event store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
