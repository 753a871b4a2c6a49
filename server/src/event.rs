//! The data that goes in and comes out of the store.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Result, StoreError};

/// An event to append: the caller has already encoded and hashed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Globally unique id, chosen by the caller; the key of idempotent retries.
    pub event_id: Uuid,
    /// The event's type name, e.g. `"payment_opened"`.
    pub event_type: String,
    /// The version of the event's schema, used to upcast old events on read.
    pub schema_version: u16,
    /// The exact canonical JSON bytes of the event envelope, stored verbatim.
    pub body: Vec<u8>,
    /// SHA-256 of the canonical form (the hash chain link), computed by the caller.
    pub hash: [u8; 32],
}

impl NewEvent {
    /// About the memory it takes: its body, its type and a fixed part (what the group
    /// commit's batches and the live streams' notices are bounded by).
    pub(crate) fn weight(&self) -> usize {
        self.body.len() + self.event_type.len() + 64
    }
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// The tenant that owns the stream.
    pub tenant_id: Uuid,
    /// The stream (payment) id.
    pub stream_id: Uuid,
    /// The 1-based sequence number within the stream.
    pub seq: u64,
    /// The globally unique event id.
    pub event_id: Uuid,
    /// The event's type name.
    pub event_type: String,
    /// The version of the event's schema.
    pub schema_version: u16,
    /// The body bytes exactly as appended.
    pub body: Vec<u8>,
    /// The hash given at append.
    pub hash: [u8; 32],
    /// When the appending server recorded it (server clock, microsecond precision; not
    /// necessarily monotonic across servers, use `position` for order).
    pub recorded_at: SystemTime,
    /// The global position: gap-free and in commit order across all streams.
    pub position: u64,
}

/// What a successful append did. A retried append returns the original result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AppendResult {
    /// The global position of the batch's first event.
    pub first_position: u64,
    /// The global position of the batch's last event.
    pub last_position: u64,
    /// The stream's version after the batch (the sequence number of its last event).
    pub new_version: u64,
}

/// The response stored under an `Idempotency-Key`, written by
/// [`EventStore::append_recorded`](crate::EventStore::append_recorded) in the same
/// commit as the events it answers (one fsync for both), into the server schema's
/// `idempotency` table (the append's tenant and this key are its primary key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The key the client sent.
    pub key: String,
    /// The SHA-256 of the request (method, route and body), to tell a replay from a reuse.
    pub request_hash: [u8; 32],
    /// The HTTP status of the response.
    pub status: u16,
    /// The response body.
    pub body: Vec<u8>,
}

/// The head of a stream: its version and the hash of its last event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamHead {
    /// The number of events in the stream (the last sequence number).
    pub version: u64,
    /// The hash of the last event.
    pub last_hash: [u8; 32],
}

/// Checks an append request before it touches the database.
pub(crate) fn validate_append(expected_version: u64, events: &[NewEvent]) -> Result<()> {
    if events.is_empty() {
        return Err(StoreError::InvalidAppend(
            "the batch is empty; append at least one event".into(),
        ));
    }
    for (i, e) in events.iter().enumerate() {
        if events[..i].iter().any(|o| o.event_id == e.event_id) {
            return Err(StoreError::InvalidAppend(format!(
                "event id {} appears twice in the batch; give each event its own id",
                e.event_id
            )));
        }
    }
    let n = u64::try_from(events.len()).unwrap_or(u64::MAX);
    if expected_version
        .checked_add(n)
        .is_none_or(|v| i64::try_from(v).is_err())
    {
        return Err(StoreError::InvalidAppend(format!(
            "expected version {expected_version} is too large"
        )));
    }
    Ok(())
}

/// Decides what a batch whose event ids are (partly) stored means: the original result
/// when it is an exact retry, [`StoreError::EventIdReused`] otherwise. `None` when none of
/// the ids is stored.
pub(crate) fn resolve_retry(
    tenant: Uuid,
    stream: Uuid,
    expected_version: u64,
    events: &[NewEvent],
    found: &[StoredEvent],
) -> Option<Result<AppendResult>> {
    let first_found = found.first()?;
    let mut first_position = 0;
    let mut last_position = 0;
    for (i, e) in events.iter().enumerate() {
        let Some(s) = found.iter().find(|s| s.event_id == e.event_id) else {
            return Some(Err(StoreError::EventIdReused {
                event_id: first_found.event_id,
            }));
        };
        let seq = expected_version + u64::try_from(i).unwrap_or(u64::MAX) + 1;
        let same = s.tenant_id == tenant
            && s.stream_id == stream
            && s.seq == seq
            && s.event_type == e.event_type
            && s.schema_version == e.schema_version
            && s.hash == e.hash
            && s.body == e.body;
        if !same {
            return Some(Err(StoreError::EventIdReused {
                event_id: e.event_id,
            }));
        }
        if i == 0 {
            first_position = s.position;
        }
        last_position = s.position;
    }
    let n = u64::try_from(events.len()).unwrap_or(u64::MAX);
    Some(Ok(AppendResult {
        first_position,
        last_position,
        new_version: expected_version + n,
    }))
}

/// Microseconds since the Unix epoch, as stored.
pub(crate) fn now_micros() -> i64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The raw columns of an events row, decoded into a [`StoredEvent`] with checks.
pub(crate) struct RawEvent {
    pub position: i64,
    pub tenant_id: Uuid,
    pub stream_id: Uuid,
    pub seq: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: i32,
    pub body: Vec<u8>,
    pub hash: Vec<u8>,
    pub recorded_at_us: i64,
}

impl RawEvent {
    pub(crate) fn into_event(self) -> Result<StoredEvent> {
        let position = self.position;
        let corrupt =
            |reason: &str| StoreError::Corrupt(format!("event at position {position}: {reason}"));
        Ok(StoredEvent {
            tenant_id: self.tenant_id,
            stream_id: self.stream_id,
            seq: u64::try_from(self.seq).map_err(|_| corrupt("negative sequence number"))?,
            event_id: self.event_id,
            event_type: self.event_type,
            schema_version: u16::try_from(self.schema_version)
                .map_err(|_| corrupt("schema version out of range"))?,
            body: self.body,
            hash: self
                .hash
                .try_into()
                .map_err(|_| corrupt("hash is not 32 bytes"))?,
            recorded_at: UNIX_EPOCH
                + Duration::from_micros(
                    u64::try_from(self.recorded_at_us)
                        .map_err(|_| corrupt("recorded_at before 1970"))?,
                ),
            position: u64::try_from(position).map_err(|_| corrupt("negative position"))?,
        })
    }
}

/// Decodes the standard event columns (see `EVENT_COLUMNS`) from a row of either engine.
macro_rules! raw_event_from_row {
    ($row:expr) => {{
        use sqlx::Row as _;
        let row = $row;
        $crate::event::RawEvent {
            position: row.try_get("position")?,
            tenant_id: row.try_get("tenant_id")?,
            stream_id: row.try_get("stream_id")?,
            seq: row.try_get("seq")?,
            event_id: row.try_get("event_id")?,
            event_type: row.try_get("event_type")?,
            schema_version: row.try_get("schema_version")?,
            body: row.try_get("body")?,
            hash: row.try_get("hash")?,
            recorded_at_us: row.try_get("recorded_at_us")?,
        }
        .into_event()?
    }};
}
pub(crate) use raw_event_from_row;

/// The columns every read selects, in the order [`raw_event_from_row`] expects by name.
pub(crate) const EVENT_COLUMNS: &str = "position, tenant_id, stream_id, seq, event_id, \
     event_type, schema_version, body, hash, recorded_at_us";

/// Converts a caller's `u64` into a database `i64`, saturating (positions and sequence
/// numbers never reach `i64::MAX`).
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
