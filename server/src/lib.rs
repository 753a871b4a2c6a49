//! The trustfold reference server: an HTTP API ([`api`], started by [`app::start`] or
//! the `trustfold-server` binary) over read models ([`projections`]) and its **event
//! store**, one storage contract
//! ([`EventStore`]) with two engines, an embedded SQLite file ([`SqliteStore`]) and
//! PostgreSQL for running many server processes over one database ([`PostgresStore`]);
//! [`AnyStore`] picks one from a location string. The platform's [`clock`] records
//! deadlines, good funds and automatic releases when they are due, and
//! [`rail_notices`] holds a bank's notices that overtook their transfer until a payment
//! records it. With a secrets key, the server key and the webhook secrets are stored
//! [`sealed`].
//!
//! # What is stored
//!
//! Each payment is a **stream** (its id is the payment id) owned by one **tenant**. A
//! stream holds events numbered `1, 2, 3, ...` (`seq`); its **version** is the number of
//! its last event. Every event also gets a **global position**, `1, 2, 3, ...` across all
//! streams and tenants. The store treats an event as opaque: an id, a type name, a
//! schema version, the exact canonical JSON bytes of its envelope and the SHA-256 hash
//! the caller computed (the hash chain is the domain's business, the store only keeps
//! the bytes identical so the chain still verifies).
//!
//! # The rules
//!
//! - **Append-only.** Nothing in the events table is ever updated or deleted (both
//!   engines refuse it with a trigger). Old schema versions are upcast on read, above
//!   this layer, never rewritten.
//! - **Expected version.** [`EventStore::append`] takes the version the caller last saw
//!   (`0` for a new stream). If the stream has moved on, nothing is written and the
//!   caller gets [`StoreError::VersionConflict`] with the current version; of many
//!   concurrent appends at the same version exactly one wins.
//! - **Idempotent by event id.** Re-appending a batch that is already stored (same event
//!   ids, same content, same stream and sequence numbers) returns the original
//!   [`AppendResult`] and writes nothing, so a client may retry after a timeout without
//!   fear. An event id already used for anything else is [`StoreError::EventIdReused`].
//! - **Gap-free global position in commit order.** A subscriber that repeatedly reads
//!   [`EventStore::read_all`] with `after_position = checkpoint` sees every event exactly
//!   once: no append can commit later with a smaller position. SQLite gets this from its
//!   single writer, PostgreSQL from a single-row counter locked as the last statement of
//!   each append (see [`PostgresStore`]).
//! - **Tenants are walls.** A stream's tenant never changes; reads for another tenant's
//!   stream look exactly like reads of a stream that does not exist.
//!
//! # Example
//!
//! ```
//! use trustfold_server::{EventStore, NewEvent, SqliteStore, StoreError};
//! use uuid::Uuid;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), StoreError> {
//! # let dir = tempfile::tempdir().map_err(|e| StoreError::Schema(e.to_string()))?;
//! # let path = dir.path().join("trustfold.db");
//! let store = SqliteStore::open(&path).await?;
//! let (tenant, payment) = (Uuid::from_u128(1), Uuid::from_u128(2));
//! let opened = NewEvent {
//!     event_id: Uuid::from_u128(10),
//!     event_type: "payment_opened".into(),
//!     schema_version: 1,
//!     body: br#"{"seq":1,"type":"payment_opened"}"#.to_vec(),
//!     hash: [7; 32],
//! };
//!
//! // A new stream: expected version 0.
//! let first = store.append(tenant, payment, 0, &[opened.clone()]).await?;
//! assert_eq!(first.new_version, 1);
//!
//! // A retry (say, after a timeout) returns the original result.
//! assert_eq!(store.append(tenant, payment, 0, &[opened.clone()]).await?, first);
//!
//! // A different event at the same version loses.
//! let other = NewEvent { event_id: Uuid::from_u128(11), ..opened };
//! let err = store.append(tenant, payment, 0, &[other]).await.unwrap_err();
//! assert!(matches!(err, StoreError::VersionConflict { current: 1, .. }));
//!
//! // The bytes come back exactly.
//! let history = store.read_stream(tenant, payment, 0, 100).await?;
//! assert_eq!(history[0].body, br#"{"seq":1,"type":"payment_opened"}"#);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod api;
pub mod app;
pub mod cache;
pub mod clock;
pub mod db;
mod error;
mod event;
mod group;
mod postgres;
pub mod projections;
pub mod rail_notices;
pub mod sealed;
mod sqlite;
pub mod webhooks;

use std::future::Future;

use uuid::Uuid;

pub use error::{Result, StoreError};
pub use event::{AppendResult, IdempotencyRecord, NewEvent, StoredEvent, StreamHead};
pub use postgres::{PostgresStore, NOTIFY_CHANNEL};
pub use sqlite::SqliteStore;

/// The storage contract of the event store, implemented by every engine and checked by
/// one contract test suite run against each of them.
///
/// All reads return at most `limit` events (`limit = 0` returns none); page on by
/// passing the last `seq` or `position` you received.
pub trait EventStore: Send + Sync {
    /// Appends `events` to `stream` of `tenant` if the stream is at `expected_version`
    /// (`0`: the stream must not exist yet). The events get sequence numbers
    /// `expected_version + 1 ..` and consecutive global positions, all in one durable
    /// commit.
    ///
    /// # Errors
    /// [`StoreError::VersionConflict`] if the stream is at another version (nothing
    /// written); [`StoreError::EventIdReused`] if an event id is already stored and this
    /// is not an exact retry; [`StoreError::StreamUnavailable`] if another tenant owns
    /// the stream id; [`StoreError::InvalidAppend`] for an empty batch or duplicate ids.
    fn append(
        &self,
        tenant: Uuid,
        stream: Uuid,
        expected_version: u64,
        events: &[NewEvent],
    ) -> impl Future<Output = Result<AppendResult>> + Send;

    /// [`EventStore::append`], and in the same commit the response stored under an
    /// `Idempotency-Key` (the server schema's `idempotency` table must exist: see
    /// [`db::Db::migrate`]). The record is written when the events are, and also when the
    /// append is an exact retry of stored events (the same command, so the same
    /// response).
    ///
    /// # Errors
    /// Those of [`EventStore::append`], and [`StoreError::IdempotencyKeyTaken`] (nothing
    /// written) if the tenant already has a record under the key.
    fn append_recorded(
        &self,
        tenant: Uuid,
        stream: Uuid,
        expected_version: u64,
        events: &[NewEvent],
        record: IdempotencyRecord,
    ) -> impl Future<Output = Result<AppendResult>> + Send;

    /// Reads the events of a stream with `seq > after_seq`, in order. Empty for an
    /// unknown stream or another tenant's.
    fn read_stream(
        &self,
        tenant: Uuid,
        stream: Uuid,
        after_seq: u64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<StoredEvent>>> + Send;

    /// The stream's version and last hash; `None` for an unknown stream or another
    /// tenant's.
    fn stream_head(
        &self,
        tenant: Uuid,
        stream: Uuid,
    ) -> impl Future<Output = Result<Option<StreamHead>>> + Send;

    /// One event by its id, if it is stored in one of `tenant`'s streams (how a server
    /// finds out that a retried command's events are already stored).
    fn read_event(
        &self,
        tenant: Uuid,
        event_id: Uuid,
    ) -> impl Future<Output = Result<Option<StoredEvent>>> + Send;

    /// The tenant's feed: its events with `position > after_position`, in global order.
    /// Positions have gaps where other tenants' events are.
    fn read_all(
        &self,
        tenant: Uuid,
        after_position: u64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<StoredEvent>>> + Send;

    /// All events of all tenants with `position > after_position`, in global order, for
    /// projections: positions here are consecutive.
    fn read_all_tenants(
        &self,
        after_position: u64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<StoredEvent>>> + Send;
}

/// Either engine, chosen at run time from a location string.
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// The embedded SQLite file.
    Sqlite(SqliteStore),
    /// A PostgreSQL database.
    Postgres(PostgresStore),
}

impl AnyStore {
    /// Opens `location`: a `postgres://` or `postgresql://` url connects to PostgreSQL; a
    /// `sqlite:` / `sqlite://` url or any other string is a SQLite file path.
    pub async fn open(location: &str) -> Result<Self> {
        if location.starts_with("postgres://") || location.starts_with("postgresql://") {
            return Ok(Self::Postgres(PostgresStore::connect(location).await?));
        }
        let path = location
            .strip_prefix("sqlite://")
            .or_else(|| location.strip_prefix("sqlite:"))
            .unwrap_or(location);
        if path.is_empty() || path.contains("://") {
            return Err(StoreError::UnsupportedLocation(location.to_owned()));
        }
        Ok(Self::Sqlite(SqliteStore::open(path).await?))
    }
}

impl EventStore for AnyStore {
    async fn append(
        &self,
        tenant: Uuid,
        stream: Uuid,
        expected_version: u64,
        events: &[NewEvent],
    ) -> Result<AppendResult> {
        match self {
            Self::Sqlite(s) => s.append(tenant, stream, expected_version, events).await,
            Self::Postgres(s) => s.append(tenant, stream, expected_version, events).await,
        }
    }

    async fn append_recorded(
        &self,
        tenant: Uuid,
        stream: Uuid,
        expected_version: u64,
        events: &[NewEvent],
        record: IdempotencyRecord,
    ) -> Result<AppendResult> {
        match self {
            Self::Sqlite(s) => {
                s.append_recorded(tenant, stream, expected_version, events, record)
                    .await
            }
            Self::Postgres(s) => {
                s.append_recorded(tenant, stream, expected_version, events, record)
                    .await
            }
        }
    }

    async fn read_stream(
        &self,
        tenant: Uuid,
        stream: Uuid,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>> {
        match self {
            Self::Sqlite(s) => s.read_stream(tenant, stream, after_seq, limit).await,
            Self::Postgres(s) => s.read_stream(tenant, stream, after_seq, limit).await,
        }
    }

    async fn stream_head(&self, tenant: Uuid, stream: Uuid) -> Result<Option<StreamHead>> {
        match self {
            Self::Sqlite(s) => s.stream_head(tenant, stream).await,
            Self::Postgres(s) => s.stream_head(tenant, stream).await,
        }
    }

    async fn read_event(&self, tenant: Uuid, event_id: Uuid) -> Result<Option<StoredEvent>> {
        match self {
            Self::Sqlite(s) => s.read_event(tenant, event_id).await,
            Self::Postgres(s) => s.read_event(tenant, event_id).await,
        }
    }

    async fn read_all(
        &self,
        tenant: Uuid,
        after_position: u64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>> {
        match self {
            Self::Sqlite(s) => s.read_all(tenant, after_position, limit).await,
            Self::Postgres(s) => s.read_all(tenant, after_position, limit).await,
        }
    }

    async fn read_all_tenants(&self, after_position: u64, limit: u32) -> Result<Vec<StoredEvent>> {
        match self {
            Self::Sqlite(s) => s.read_all_tenants(after_position, limit).await,
            Self::Postgres(s) => s.read_all_tenants(after_position, limit).await,
        }
    }
}

/// Compile-time check: the constructors' futures are `Send`, so a server can open a store
/// inside a spawned task.
#[allow(dead_code)]
fn constructors_are_send() {
    fn is_send<T: Send>(_: &T) {}
    is_send(&SqliteStore::open("x"));
    is_send(&PostgresStore::connect("x"));
    is_send(&AnyStore::open("x"));
}
