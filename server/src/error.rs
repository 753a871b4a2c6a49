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

    /// The database failed (connection lost, disk full, ...). An append that fails this
    /// way may or may not have committed: retry it with the same event ids, which is safe
    /// because appends are idempotent.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Shorthand for results of the event store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
