//! `GET /v1/payments/{payment_id}/stream`: a payment's new events as Server-Sent Events.
//!
//! Each event's `id:` is its sequence number and `data:` the history record
//! `{"hash":"…","event":…}` byte for byte (a participant token whose roles may not see
//! everything gets its redacted view instead). A browser's `EventSource` cannot send
//! headers, so this route also takes a participant token as `?access_token=`
//! ([`StreamPrincipal`]).
//! A client resumes with `Last-Event-ID` (or `?after=SEQ`) and gets exactly the events
//! after it: the stream always reads from the store, so nothing is lost or repeated
//! across reconnects. New events are noticed through an in-process broadcast fed by
//! this process's appends and, on PostgreSQL, by `LISTEN trustfold_events` (so a command
//! handled by another process reaches this stream); a poll every `poll_interval` covers
//! anything else. Idle streams get `: heartbeat` comments.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use trustfold_core::policy::Role;
use trustfold_core::state::PaymentState;
use uuid::Uuid;

use super::auth::{Principal, StreamPrincipal, TokenClaims};
use super::error::{ApiError, ApiResult};
use super::payments::{participant_roles, redacted, sees_everything};
use super::{param_u64, params, parse_id, AppState, Notice, Params};
use crate::EventStore;

struct Cursor {
    state: AppState,
    tenant: Uuid,
    payment: Uuid,
    last: u64,
    rx: broadcast::Receiver<Notice>,
    shutdown: watch::Receiver<bool>,
    buf: VecDeque<Event>,
    view: Option<(PaymentState, Vec<Role>)>,
    /// A participant's token: checked again whenever new events arrive, so the stream
    /// of a party that is removed ends.
    token: Option<TokenClaims>,
    /// A tenant's API key: checked again whenever new events arrive, so the stream
    /// opened with a key that expired or was rotated out ends.
    api_key: Option<String>,
    /// The buffer was just filled from this process's own notice: no need to read the
    /// store before waiting again.
    delivered: bool,
    /// Its places in the counts of open streams, given back when the stream ends.
    _slots: Vec<StreamSlot>,
}

/// Whose open streams are counted: a party of a payment, a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Owner {
    Party(Uuid, Uuid),
    Tenant(Uuid),
}

/// The live streams open in this process, per party of a payment and per tenant
/// ([`super::HttpConfig::max_streams_per_party`], `max_streams_per_tenant`): each open
/// stream re-reads the store and its credential on every poll, so a token (or a key)
/// may not open them without bound.
#[derive(Debug, Default)]
pub struct OpenStreams {
    counts: std::sync::Mutex<HashMap<Owner, usize>>,
}

/// One open stream's place in a count; given back when dropped.
#[derive(Debug)]
struct StreamSlot {
    streams: Arc<OpenStreams>,
    owner: Owner,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.streams.counts.lock() {
            if let Some(n) = counts.get_mut(&self.owner) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(&self.owner);
                }
            }
        }
    }
}

impl OpenStreams {
    /// Places for a new stream of `principal` (its party's and its tenant's), or 429
    /// `too_many_streams` naming the limit reached.
    fn take(
        self: &Arc<Self>,
        principal: &Principal,
        config: &super::HttpConfig,
    ) -> ApiResult<Vec<StreamSlot>> {
        let tenant = (
            Owner::Tenant(principal.tenant()),
            config.max_streams_per_tenant,
        );
        let party = match principal {
            Principal::Participant(c) => Some((
                Owner::Party(c.payment, c.party),
                config.max_streams_per_party,
            )),
            Principal::Tenant { .. } => None,
        };
        let mut counts = self
            .counts
            .lock()
            .map_err(|_| ApiError::Internal("the open streams' count is poisoned".into()))?;
        for (owner, max) in party.iter().chain(std::iter::once(&tenant)) {
            if counts.get(owner).copied().unwrap_or(0) >= *max {
                let whose = match owner {
                    Owner::Party(..) => "this party of the payment",
                    Owner::Tenant(_) => "this tenant",
                };
                return Err(ApiError::TooManyStreams(format!(
                    "{whose} has {max} live streams open already (the most at once): close \
                     one (an EventSource's close()) before opening another"
                )));
            }
        }
        let mut slots = Vec::new();
        for (owner, _) in party.into_iter().chain(std::iter::once(tenant)) {
            *counts.entry(owner).or_insert(0) += 1;
            slots.push(StreamSlot {
                streams: self.clone(),
                owner,
            });
        }
        Ok(slots)
    }
}

/// The SSE event of a history record `{"hash":"…","event":…}`, byte for byte.
fn record_event(seq: u64, event_type: &str, hash: &[u8; 32], body: &[u8]) -> Event {
    let mut data = Vec::with_capacity(body.len() + 90);
    data.extend_from_slice(b"{\"hash\":\"");
    data.extend_from_slice(hex::encode(hash).as_bytes());
    data.extend_from_slice(b"\",\"event\":");
    data.extend_from_slice(body);
    data.push(b'}');
    Event::default()
        .id(seq.to_string())
        .event(event_type)
        .data(String::from_utf8_lossy(&data))
}

impl Cursor {
    /// Reads new events into the buffer; `false` if the stream should end.
    async fn fill(&mut self) -> bool {
        // A participant's token expires while its stream is open: the stream ends
        // (noticed at the latest by the next poll), and the browser's reconnect with
        // it is refused.
        if self.token.as_ref().is_some_and(TokenClaims::expired) {
            return false;
        }
        // Revoked by the tenant since the stream opened: it ends at this read.
        if let Some(c) = &self.token {
            match super::auth::revoked(&self.state, c).await {
                Ok(false) => {}
                Ok(true) => return false,
                Err(e) => {
                    tracing::warn!(error = %e, payment = %self.payment, "live stream could not check its token");
                    return false;
                }
            }
        }
        if !self.key_holds().await {
            return false;
        }
        // Bounded like a request: a read that a silent database never answers ends the
        // stream (the client reconnects with `Last-Event-ID`) instead of holding it.
        let read = async {
            let store = &self.state.store;
            match store
                .read_stream(self.tenant, self.payment, self.last, 100)
                .await
            {
                // A connection the database dropped (a restart, a failover, a proxy):
                // the failure is noted, so the pool checks its idle connections, and
                // the read is tried once more on another before the stream gives up.
                Err(e) if e.is_disconnect() => {
                    tracing::debug!(error = %e, "live stream read lost its connection; reading again");
                    store
                        .read_stream(self.tenant, self.payment, self.last, 100)
                        .await
                }
                other => other,
            }
        };
        let Ok(read) = tokio::time::timeout(self.state.config.request_timeout, read).await else {
            crate::error::disconnect::note();
            tracing::warn!(payment = %self.payment, "live stream read got no answer in time; ending the stream");
            return false;
        };
        match read {
            Ok(events) => {
                // Checked on every read (each new event and each poll), so the stream
                // of a removed party ends even when it is waiting past the head.
                if let Some(c) = &self.token {
                    match self
                        .state
                        .cache
                        .load(&self.state.store, self.tenant, self.payment)
                        .await
                    {
                        Ok(Some(st)) => match participant_roles(&st, c) {
                            // The view follows the roles the party holds now.
                            Ok(roles) if sees_everything(&st, &roles) => self.view = None,
                            Ok(roles) => self.view = Some((st, roles)),
                            Err(_) => return false,
                        },
                        Ok(None) => return false,
                        Err(e) => {
                            tracing::warn!(error = %e, payment = %self.payment, "live stream read failed");
                            return false;
                        }
                    }
                }
                for e in events {
                    self.last = e.seq;
                    match &self.view {
                        None => {
                            self.buf
                                .push_back(record_event(e.seq, &e.event_type, &e.hash, &e.body))
                        }
                        Some((st, roles)) => match redacted(st, &e, roles) {
                            Ok(views) => {
                                for v in views {
                                    self.buf.push_back(
                                        Event::default()
                                            .id(e.seq.to_string())
                                            .event(e.event_type.clone())
                                            .data(v.to_string()),
                                    );
                                }
                            }
                            Err(err) => {
                                tracing::error!(error = %err, "cannot render a stored event");
                                return false;
                            }
                        },
                    }
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, payment = %self.payment, "live stream read failed");
                false
            }
        }
    }

    /// Whether the stream's API key (if it was opened with one) is still valid: one
    /// expired or rotated out since the stream opened ends it (a reconnect with it is
    /// refused). Checked before every delivery, from the store or from a notice.
    async fn key_holds(&self) -> bool {
        let Some(key) = &self.api_key else {
            return true;
        };
        match super::auth::check_api_key(&self.state, key).await {
            Ok(_) => true,
            Err(e) => {
                tracing::info!(payment = %self.payment, error = %e,
                    "live stream's API key no longer holds; ending the stream");
                false
            }
        }
    }

    /// Delivers the events of this process's own append straight from its notice when
    /// they continue the stream (full views only); anything else (another process's
    /// append, a gap, a redacted view) is read from the store by the next `fill`.
    fn take(&mut self, n: &Notice) {
        let (Some(events), None, None) = (&n.events, &self.view, &self.token) else {
            return;
        };
        let Some(first) = (n.version + 1).checked_sub(events.len() as u64) else {
            return;
        };
        if first > self.last + 1 {
            return;
        }
        for (seq, e) in (first..).zip(events.iter()) {
            if seq > self.last {
                self.buf
                    .push_back(record_event(seq, &e.event_type, &e.hash, &e.body));
                self.last = seq;
            }
        }
        self.delivered = true;
    }

    /// Waits for a notice about this payment, the poll interval, or shutdown (`false`).
    async fn wait(&mut self) -> bool {
        let poll = tokio::time::sleep(self.state.config.poll_interval);
        tokio::pin!(poll);
        loop {
            tokio::select! {
                r = self.rx.recv() => match r {
                    Ok(n) if n.stream == self.payment && n.version > self.last => {
                        if !self.key_holds().await {
                            return false;
                        }
                        self.take(&n);
                        return true;
                    }
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) => return true,
                    Err(RecvError::Closed) => return false,
                },
                _ = &mut poll => return true,
                _ = self.shutdown.changed() => return false,
            }
        }
    }
}

/// The handler.
pub async fn stream(
    State(state): State<AppState>,
    StreamPrincipal(principal): StreamPrincipal,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Params,
) -> ApiResult<Response> {
    let payment = parse_id(&id, "payment_id")?;
    principal.check_payment(payment)?;
    let tenant = principal.tenant();
    let q = params(query)?;
    let last = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|n| i64::try_from(*n).is_ok())
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_parameter",
                    "Last-Event-ID",
                    "Last-Event-ID must be a sequence number",
                )
            })?,
        None => param_u64(&q, "after")?.unwrap_or(0),
    };
    // Subscribe before the first read, so nothing appended in between is missed.
    let rx = state.notices.subscribe();
    let current = state
        .cache
        .load(&state.store, tenant, payment)
        .await?
        .ok_or_else(|| ApiError::unknown_payment(payment))?;
    let api_key = match &principal {
        Principal::Tenant { .. } => super::auth::bearer_in(&headers).map(str::to_owned),
        Principal::Participant(_) => None,
    };
    let (view, token) = match &principal {
        Principal::Tenant { .. } => (None, None),
        Principal::Participant(c) => {
            let roles = participant_roles(&current, c)?;
            if sees_everything(&current, &roles) {
                (None, Some(c.clone()))
            } else {
                (Some((current, roles)), Some(c.clone()))
            }
        }
    };
    let slots = state.streams.take(&principal, &state.config)?;
    let cursor = Cursor {
        _slots: slots,
        shutdown: state.shutdown.clone(),
        state: state.clone(),
        tenant,
        payment,
        last,
        rx,
        buf: VecDeque::new(),
        view,
        token,
        api_key,
        delivered: false,
    };
    let events = stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some(ev) = c.buf.pop_front() {
                return Some((Ok::<Event, Infallible>(ev), c));
            }
            if *c.shutdown.borrow() {
                return None;
            }
            if std::mem::take(&mut c.delivered) {
                // Delivered from this process's notice; later appends notify again.
            } else if !c.fill().await {
                return None;
            }
            if c.buf.is_empty() && !c.wait().await {
                return None;
            }
        }
    });
    let keep_alive = KeepAlive::new()
        .interval(state.config.heartbeat)
        .text("heartbeat");
    let mut res = Sse::new(events).keep_alive(keep_alive).into_response();
    // axum's `Sse` says `no-cache` (store, but revalidate); a stream is its caller's
    // alone like every other answer: `no-store` (EventSource and proxies stream it just
    // the same).
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}
