//! Folding stored events into payment states, with a small in-memory cache.
//!
//! The store is the truth: a cached state is only a starting point, and every load
//! reads the events after the cached version, so a cache in one process never hides
//! another process's appends.

use std::collections::HashMap;
use std::sync::Mutex;

use trustfold_core::envelope::Envelope;
use trustfold_core::fold;
use trustfold_core::hash::Hash;
use trustfold_core::state::PaymentState;
use uuid::Uuid;

use crate::{AnyStore, EventStore, StoreError, StoredEvent};

/// How many states the cache keeps before it starts over.
const CAPACITY: usize = 10_000;
/// Events read per page while folding.
const PAGE: u32 = 500;

/// Why a state could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored event does not fold (a bug, or the database was edited by hand).
    #[error("stored history of payment {stream} does not fold at seq {seq}: {error}")]
    Fold {
        /// The payment.
        stream: Uuid,
        /// The event's sequence number.
        seq: u64,
        /// The core's error.
        error: trustfold_core::Error,
    },
}

/// Applies one stored event to a state (starting it at seq 1).
pub fn apply_stored(
    state: &mut Option<PaymentState>,
    e: &StoredEvent,
) -> Result<Envelope, LoadError> {
    let fold_err = |error| LoadError::Fold {
        stream: e.stream_id,
        seq: e.seq,
        error,
    };
    let env = Envelope::from_json(&e.body).map_err(fold_err)?;
    let hash = Hash(e.hash);
    match state {
        None => *state = Some(fold::start(&env, hash).map_err(fold_err)?),
        Some(s) => fold::apply(s, &env, hash).map_err(fold_err)?,
    }
    Ok(env)
}

/// Folds a stream from the store, up to `upto` (inclusive) when given.
pub async fn fold_stream(
    store: &AnyStore,
    tenant: Uuid,
    stream: Uuid,
    start: Option<PaymentState>,
    upto: Option<u64>,
) -> Result<Option<PaymentState>, LoadError> {
    let mut state = start;
    loop {
        let after = state.as_ref().map_or(0, |s| s.version);
        let want = match upto {
            Some(u) if u <= after => break,
            Some(u) => u32::try_from(u - after).unwrap_or(PAGE).min(PAGE),
            None => PAGE,
        };
        let events = store.read_stream(tenant, stream, after, want).await?;
        for e in &events {
            apply_stored(&mut state, e)?;
        }
        if events.len() < want as usize {
            break;
        }
    }
    Ok(state)
}

/// The latest states of recently used payments.
#[derive(Debug, Default)]
pub struct StateCache {
    map: Mutex<HashMap<Uuid, PaymentState>>,
}

impl StateCache {
    /// The payment's current state (`None`: no such payment for this tenant).
    pub async fn load(
        &self,
        store: &AnyStore,
        tenant: Uuid,
        stream: Uuid,
    ) -> Result<Option<PaymentState>, LoadError> {
        let cached = self
            .map
            .lock()
            .ok()
            .and_then(|m| m.get(&stream).cloned())
            .filter(|s| s.tenant.uuid() == tenant);
        let state = fold_stream(store, tenant, stream, cached, None).await?;
        if let Some(s) = &state {
            self.put(s.clone());
        }
        Ok(state)
    }

    /// The cached state of the payment, without looking at the store (it may be behind:
    /// only for callers whose next step checks the version, like an append).
    pub fn peek(&self, tenant: Uuid, stream: Uuid) -> Option<PaymentState> {
        self.map
            .lock()
            .ok()
            .and_then(|m| m.get(&stream).cloned())
            .filter(|s| s.tenant.uuid() == tenant)
    }

    /// Remembers a state (unless a newer one is cached).
    pub fn put(&self, state: PaymentState) {
        if let Ok(mut m) = self.map.lock() {
            if m.len() >= CAPACITY {
                m.clear();
            }
            let id = state.payment.uuid();
            if m.get(&id).is_none_or(|old| old.version < state.version) {
                m.insert(id, state);
            }
        }
    }
}
