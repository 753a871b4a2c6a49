//! Group commit: one appender task per store commits the appends of many concurrent
//! callers in one database transaction.
//!
//! [`Appender::append`] queues a request on a channel and waits for its answer. The task
//! takes the first queued request and, without waiting for more, everything else that is
//! already queued (at most [`MAX_BATCH`] appends or [`MAX_BATCH_BYTES`] of bodies), and
//! hands the batch to the engine's [`Committer`]. At low load a batch is one append and
//! is committed at once; under load the requests that arrive while a commit is in flight
//! form the next batch, so one fsync acknowledges many appends (as TigerBeetle batches).
//!
//! Each append keeps its own semantics: inside the transaction the engine reads the
//! stored ids and stream heads of the whole batch and [`plan`] judges the appends one by
//! one, in queue order, as if they were committed one after another: an exact retry gets
//! its original result, a reused id, another tenant's stream or a version conflict fails
//! only that append, and the winners are written with consecutive global positions in
//! queue order. An append that shares an event id with an earlier winner of the same
//! batch (a retry racing its original) is carried over to the next batch, where it is
//! answered from the stored events. Every caller is answered only after the transaction
//! committed (or failed). If the batch transaction fails as a whole, each append is
//! committed again on its own, so one bad append cannot fail its neighbours.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::error::{Result, StoreError};
use crate::event::{
    resolve_retry, validate_append, AppendResult, IdempotencyRecord, NewEvent, StoredEvent,
};

/// Most appends committed in one transaction.
pub(crate) const MAX_BATCH: usize = 256;
/// Most body bytes committed in one transaction (a single larger append still goes
/// alone).
pub(crate) const MAX_BATCH_BYTES: usize = 2 * 1024 * 1024;
/// Appends waiting for the appender before callers are made to wait for queue space.
const QUEUE: usize = 4096;

/// How long one batch's commit may take on a committer that allows a deadline (see
/// [`Committer::deadline`]).
pub(crate) const COMMIT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// One queued append.
#[derive(Debug)]
pub(crate) struct Request {
    pub tenant: Uuid,
    pub stream: Uuid,
    pub expected: u64,
    pub events: Vec<NewEvent>,
    /// The response to store under an `Idempotency-Key` in the same commit.
    pub record: Option<IdempotencyRecord>,
    reply: oneshot::Sender<Result<AppendResult>>,
}

impl Request {
    fn bytes(&self) -> usize {
        self.events.iter().map(NewEvent::weight).sum::<usize>()
            + self
                .record
                .as_ref()
                .map_or(0, |r| r.body.len() + r.key.len() + 64)
    }
}

/// What became of one append of a batch.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Answer the caller with this.
    Reply(Result<AppendResult>),
    /// Try again in the next batch.
    Defer,
}

/// An engine's batch transaction.
pub(crate) trait Committer: Send + 'static {
    /// Commits the batch in one transaction and returns one outcome per request, in
    /// order. `Err` means nothing of the batch was committed (or it is unknown whether
    /// it was): the appender then commits each request on its own, unless the database
    /// was lost or silent (`StoreError::is_disconnect`), when every caller gets the
    /// error at once.
    fn commit(&mut self, batch: &[Request]) -> impl Future<Output = Result<Vec<Outcome>>> + Send;

    /// How long one commit may take before its callers are told its outcome is unknown
    /// (`StoreError::Unresponsive`) and the appender goes on; `None`: no limit. Only a
    /// committer whose commit future can be dropped midway without harm may set one
    /// (PostgreSQL: the server rolls back a transaction whose connection goes away;
    /// not SQLite, where a dropped multi-statement commit can leave the single writer
    /// inside `BEGIN IMMEDIATE`).
    fn deadline(&self) -> Option<std::time::Duration> {
        None
    }
}

/// Commits `batch` within the committer's deadline.
async fn commit_within(committer: &mut impl Committer, batch: &[Request]) -> Result<Vec<Outcome>> {
    match committer.deadline() {
        None => committer.commit(batch).await,
        Some(d) => match tokio::time::timeout(d, committer.commit(batch)).await {
            Ok(r) => r,
            Err(_) => {
                tracing::error!(
                    size = batch.len(),
                    "batch commit got no answer in time; its outcome is unknown"
                );
                crate::error::disconnect::note();
                Err(StoreError::Unresponsive(d))
            }
        },
    }
}

/// The handle callers append through; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Appender {
    tx: mpsc::Sender<Request>,
}

fn stopped() -> StoreError {
    StoreError::Database(sqlx::Error::PoolClosed)
}

impl Appender {
    /// Starts the appender task of `committer` on the current tokio runtime. The task
    /// ends when every handle is dropped and the queue is empty.
    pub(crate) fn spawn(committer: impl Committer) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(committer, rx));
        Appender { tx }
    }

    /// Validates an append (with its idempotency record, if any), queues it and waits
    /// until it is committed or rejected.
    pub(crate) async fn append(
        &self,
        tenant: Uuid,
        stream: Uuid,
        expected: u64,
        events: &[NewEvent],
        record: Option<IdempotencyRecord>,
    ) -> Result<AppendResult> {
        validate_append(expected, events)?;
        let recorded = record.is_some();
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request {
                tenant,
                stream,
                expected,
                events: events.to_vec(),
                record,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        let result = answer.await.map_err(|_| stopped())??;
        tracing::debug!(%tenant, %stream, ?result, recorded, "appended");
        Ok(result)
    }
}

async fn run(mut committer: impl Committer, mut rx: mpsc::Receiver<Request>) {
    let mut carried: VecDeque<Request> = VecDeque::new();
    loop {
        let mut batch: Vec<Request> = Vec::new();
        let mut bytes = 0usize;
        let fits = |batch: &Vec<Request>, bytes: usize, r: &Request| {
            batch.is_empty() || (batch.len() < MAX_BATCH && bytes + r.bytes() <= MAX_BATCH_BYTES)
        };
        while let Some(r) = carried.pop_front() {
            if !fits(&batch, bytes, &r) {
                carried.push_front(r);
                break;
            }
            bytes += r.bytes();
            batch.push(r);
        }
        if batch.is_empty() {
            match rx.recv().await {
                Some(r) => {
                    bytes += r.bytes();
                    batch.push(r);
                }
                None => return,
            }
        }
        // Natural batching: whatever queued up while the last commit was in flight.
        let mut next = None;
        while carried.is_empty() {
            match rx.try_recv() {
                Ok(r) if fits(&batch, bytes, &r) => {
                    bytes += r.bytes();
                    batch.push(r);
                }
                Ok(r) => {
                    next = Some(r);
                    break;
                }
                Err(_) => break,
            }
        }
        if let Some(r) = next {
            carried.push_back(r);
        }
        // A caller that is gone (its request met the HTTP deadline and was answered 503)
        // is not committed for: its client was told to retry, and a command sent
        // without an Idempotency-Key would otherwise be applied twice.
        batch.retain(|r| !r.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        // A database that stops answering must not hold the appender (and every command
        // queued behind it) until TCP gives up: past the committer's deadline the
        // batch's callers are told that its outcome is unknown (a retry with the same
        // event ids finds it if it did commit), and the next batch takes another
        // connection.
        match commit_within(&mut committer, &batch).await {
            Ok(outcomes) if outcomes.len() == batch.len() => {
                for (r, o) in batch.into_iter().zip(outcomes) {
                    match o {
                        Outcome::Reply(res) => {
                            let _ = r.reply.send(res);
                        }
                        Outcome::Defer => carried.push_back(r),
                    }
                }
            }
            Ok(_) => {
                for r in batch {
                    let _ = r.reply.send(Err(StoreError::Corrupt(
                        "the batch commit answered the wrong number of appends".into(),
                    )));
                }
            }
            // One append, or a database that is gone or silent (one by one would only
            // wait for it once per append): everyone gets the error.
            Err(e) if batch.len() == 1 || e.is_disconnect() => {
                let text = e.to_string();
                let mut first = Some(e);
                for r in batch {
                    let e = first
                        .take()
                        .unwrap_or_else(|| StoreError::Unavailable(text.clone()));
                    let _ = r.reply.send(Err(e));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, size = batch.len(), "batch commit failed; committing its appends one by one");
                for r in batch {
                    if r.reply.is_closed() {
                        continue;
                    }
                    let res = match commit_within(&mut committer, std::slice::from_ref(&r)).await {
                        Ok(mut o) => match o.pop() {
                            Some(Outcome::Reply(res)) => res,
                            _ => Err(StoreError::Corrupt("a single append was deferred".into())),
                        },
                        Err(e) => Err(e),
                    };
                    let _ = r.reply.send(res);
                }
            }
        }
    }
}

/// What to do with one append of a batch, decided by [`plan`].
#[derive(Debug)]
pub(crate) enum Step {
    /// Answer without writing.
    Reply(Result<AppendResult>),
    /// Try again in the next batch.
    Defer,
    /// Write the events with sequence numbers `expected + 1 ..`.
    Write,
}

/// A stream's owner and version, as stored or as left by earlier winners of the batch.
pub(crate) type Heads = HashMap<Uuid, (Uuid, u64)>;

/// A tenant's idempotency key.
pub(crate) type Key = (Uuid, String);

/// Judges the appends of a batch in order, given the stored events with any of the
/// batch's ids (`found`), the stored heads of the batch's streams (`heads`, updated to
/// the heads after the winners) and the batch's idempotency keys that already have a
/// stored record (`taken`). An append whose key is taken, or claimed by an earlier
/// append of the batch, fails with [`StoreError::IdempotencyKeyTaken`]; a winner or an
/// exact retry claims its key (its record is written).
pub(crate) fn plan(
    batch: &[Request],
    found: &[StoredEvent],
    heads: &mut Heads,
    taken: &HashSet<Key>,
) -> Vec<Step> {
    let mut claimed: HashSet<Uuid> = HashSet::new();
    let mut keys: HashSet<Key> = HashSet::new();
    let mut steps = Vec::with_capacity(batch.len());
    for r in batch {
        if let Some(rec) = &r.record {
            let key = (r.tenant, rec.key.clone());
            if taken.contains(&key) || !keys.insert(key) {
                steps.push(Step::Reply(Err(StoreError::IdempotencyKeyTaken {
                    key: rec.key.clone(),
                })));
                continue;
            }
        }
        if r.events.iter().any(|e| claimed.contains(&e.event_id)) {
            if let Some(rec) = &r.record {
                keys.remove(&(r.tenant, rec.key.clone()));
            }
            steps.push(Step::Defer);
            continue;
        }
        let mine: Vec<StoredEvent> = found
            .iter()
            .filter(|s| r.events.iter().any(|e| e.event_id == s.event_id))
            .cloned()
            .collect();
        if let Some(outcome) = resolve_retry(r.tenant, r.stream, r.expected, &r.events, &mine) {
            if outcome.is_err() {
                if let Some(rec) = &r.record {
                    keys.remove(&(r.tenant, rec.key.clone()));
                }
            }
            steps.push(Step::Reply(outcome));
            continue;
        }
        let current = match heads.get(&r.stream) {
            Some((owner, _)) if *owner != r.tenant => {
                if let Some(rec) = &r.record {
                    keys.remove(&(r.tenant, rec.key.clone()));
                }
                steps.push(Step::Reply(Err(StoreError::StreamUnavailable {
                    stream_id: r.stream,
                })));
                continue;
            }
            Some((_, v)) => *v,
            None => 0,
        };
        if current != r.expected {
            if let Some(rec) = &r.record {
                keys.remove(&(r.tenant, rec.key.clone()));
            }
            steps.push(Step::Reply(Err(StoreError::VersionConflict {
                expected: r.expected,
                current,
            })));
            continue;
        }
        let n = u64::try_from(r.events.len()).unwrap_or(u64::MAX);
        heads.insert(r.stream, (r.tenant, r.expected + n));
        claimed.extend(r.events.iter().map(|e| e.event_id));
        steps.push(Step::Write);
    }
    steps
}

/// One row of the batch's events table insert, in write order.
pub(crate) struct Row<'a> {
    pub tenant: Uuid,
    pub stream: Uuid,
    pub seq: i64,
    pub event: &'a NewEvent,
}

/// The final head of one stream the batch writes to.
pub(crate) struct StreamWrite {
    pub stream: Uuid,
    pub tenant: Uuid,
    pub version: i64,
    pub last_hash: [u8; 32],
    /// Whether the stream row already existed when the batch read the heads.
    pub existed: bool,
}

/// The writes of a planned batch: event rows in position order, the streams' final
/// heads, and each writing request's index with its first row.
pub(crate) struct Writes<'a> {
    pub rows: Vec<Row<'a>>,
    pub streams: Vec<StreamWrite>,
    /// `(request index, index of its first row)`.
    pub winners: Vec<(usize, usize)>,
    /// The idempotency records to write, with their tenants: those of the winners and
    /// of the exact retries.
    pub records: Vec<(Uuid, &'a IdempotencyRecord)>,
}

impl<'a> Writes<'a> {
    /// Collects the writes of `steps`; `stored` holds the streams that exist in the
    /// database.
    pub(crate) fn of(batch: &'a [Request], steps: &[Step], stored: &HashSet<Uuid>) -> Self {
        let mut rows = Vec::new();
        let mut streams: Vec<StreamWrite> = Vec::new();
        let mut winners = Vec::new();
        let mut records = Vec::new();
        for (i, (r, step)) in batch.iter().zip(steps).enumerate() {
            if let (Some(rec), Step::Write | Step::Reply(Ok(_))) = (&r.record, step) {
                records.push((r.tenant, rec));
            }
            if !matches!(step, Step::Write) {
                continue;
            }
            winners.push((i, rows.len()));
            let first_seq = i64::try_from(r.expected).unwrap_or(i64::MAX) + 1;
            for (offset, e) in (0i64..).zip(&r.events) {
                rows.push(Row {
                    tenant: r.tenant,
                    stream: r.stream,
                    seq: first_seq + offset,
                    event: e,
                });
            }
            let version = first_seq - 1 + i64::try_from(r.events.len()).unwrap_or(i64::MAX);
            let last_hash = r.events.last().map(|e| e.hash).unwrap_or_default();
            match streams.iter_mut().find(|s| s.stream == r.stream) {
                Some(s) => {
                    s.version = version;
                    s.last_hash = last_hash;
                }
                None => streams.push(StreamWrite {
                    stream: r.stream,
                    tenant: r.tenant,
                    version,
                    last_hash,
                    existed: stored.contains(&r.stream),
                }),
            }
        }
        Writes {
            rows,
            streams,
            winners,
            records,
        }
    }

    /// The outcomes once the rows got positions `first_position ..`.
    pub(crate) fn outcomes(
        &self,
        batch: &[Request],
        steps: Vec<Step>,
        first_position: u64,
    ) -> Vec<Outcome> {
        let mut out: Vec<Outcome> = steps
            .into_iter()
            .map(|s| match s {
                Step::Reply(r) => Outcome::Reply(r),
                Step::Defer => Outcome::Defer,
                Step::Write => Outcome::Reply(Err(StoreError::Corrupt(
                    "a planned write got no position".into(),
                ))),
            })
            .collect();
        for &(i, first_row) in &self.winners {
            let r = &batch[i];
            let n = r.events.len() as u64;
            let first = first_position + first_row as u64;
            out[i] = Outcome::Reply(Ok(AppendResult {
                first_position: first,
                last_position: first + n - 1,
                new_version: r.expected + n,
            }));
        }
        out
    }

    /// The batch's idempotency keys (deduplicated), as `(tenants, keys)` columns.
    pub(crate) fn keys(batch: &[Request]) -> (Vec<Uuid>, Vec<String>) {
        let mut seen: HashSet<Key> = HashSet::new();
        batch
            .iter()
            .filter_map(|r| r.record.as_ref().map(|rec| (r.tenant, rec.key.clone())))
            .filter(|k| seen.insert(k.clone()))
            .unzip()
    }

    /// All event ids of the batch.
    pub(crate) fn ids(batch: &[Request]) -> Vec<Uuid> {
        batch
            .iter()
            .flat_map(|r| r.events.iter().map(|e| e.event_id))
            .collect()
    }

    /// The distinct streams of the batch, sorted (the order rows are locked in).
    pub(crate) fn streams_of(batch: &[Request]) -> Vec<Uuid> {
        let mut s: Vec<Uuid> = batch.iter().map(|r| r.stream).collect();
        s.sort_unstable();
        s.dedup();
        s
    }
}
