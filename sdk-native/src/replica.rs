//! A local, verified replica of one payment.
//!
//! [`Replica::sync`] fetches only the events after the local version, checks that
//! each one hashes to its recorded hash and links to the previous one, folds it with
//! the core, then checks the server's signed head against the pinned key. A replica
//! that verified once can never be moved to a different past: an event that does not
//! link to the local head is refused. [`Replica::diff`] compares the server's read
//! model with the locally rebuilt state; [`Replica::follow`] keeps it current over the
//! live stream (SSE), resuming with `Last-Event-ID` after a dropped connection.
//!
//! **Nothing unsigned is kept.** Event pages and streamed events are not signed, and
//! anyone can extend a hash chain, so a sync folds what it fetched on a copy of the
//! replica and keeps the copy only once the server's signed head covers its last event
//! (events past the head are refused); a streamed event is kept only once a head
//! fetched for it covers it. A sync or a head check that fails leaves the replica
//! exactly as it was, so a later one against the genuine server can succeed.
//! [`Replica::new`] pins the trusted key into its client ([`Client::pin`]), so every
//! head is signed for a fresh nonce of its request and an older head replayed on the
//! way (with the pages cut to match) is refused as `bad_signature`.
//!
//! ```no_run
//! # async fn demo() -> trustfold::Result<()> {
//! use trustfold::{client::Client, replica::Replica};
//! let client = Client::new("http://127.0.0.1:8080")?.api_key("tfk_…");
//! let key = "2152f8d19b791d24453242e15f2eab6cb7cffa7b6a5ed30097960e069881db12".parse()?;
//! let mut r = Replica::new(client, "5f0c1a52-3c1e-4a8e-9c1e-2b7f7c0e5a11".parse()?, key)?;
//! let new = r.sync().await?;
//! println!("{new} new events; {:?}", r.state().map(|s| s.status));
//! assert!(r.diff().await?.is_empty(), "the server's read model agrees");
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::Method;

use crate::client::{Client, Record, MAX_RATE_LIMIT_WAIT};
use crate::envelope::Envelope;
use crate::error::{Broken, Error, Result};
use crate::fold;
use crate::hash::Hash;
use crate::history::PublicKey;
use crate::id::PaymentId;
use crate::state::PaymentState;
use crate::CoreError;

/// Hashes of recent events kept to check signed heads a little behind the local head.
const RECENT: usize = 1024;

/// The most events asked for in one page.
const PAGE: u32 = 1000;

/// The longest line, and the longest event (its `data:` lines together), `follow`
/// reads from the live stream: an event is one record, at most a little over the
/// server's request body limit (a policy embedded in the opening; 256 KiB by default).
/// Longer is [`Error::TooLarge`]. The same as a page's cap ([`crate::client::MAX_BODY`]),
/// so a record `sync` reads in a page is never refused by `follow`.
pub const MAX_SSE_EVENT: usize = crate::client::MAX_BODY;

/// The first pause before `follow` opens the stream again (doubled while it keeps
/// failing, up to [`MAX_BACKOFF`]).
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// The longest pause before `follow` opens the stream again.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A verified local copy of one payment. See the [module docs](self).
#[derive(Debug)]
pub struct Replica {
    client: Client,
    payment: PaymentId,
    key: PublicKey,
    /// What a signed head covered: replaced whole, only by a copy that passed a head.
    chain: Chain,
}

/// What a replica holds: the folded state and the hashes of the latest events. A sync
/// works on a copy and the replica keeps it only once a signed head covers it.
#[derive(Debug, Clone, Default)]
struct Chain {
    state: Option<PaymentState>,
    recent: VecDeque<(u64, Hash)>,
}

impl Chain {
    /// The version (0 before the first event).
    fn version(&self) -> u64 {
        self.state.as_ref().map_or(0, |s| s.version)
    }

    /// Checks and folds one record of `payment` (the next event), as fetched or
    /// streamed. On an error the chain may be part-changed: it is a copy, dropped.
    fn apply(&mut self, payment: PaymentId, r: &Record) -> Result<()> {
        let seq = self.version() + 1;
        let bytes = r.event.get().as_bytes();
        let broken = |error: CoreError| {
            Error::from(Broken {
                stream: Some(payment),
                seq: Some(seq),
                line: None,
                error,
            })
        };
        let actual = Hash::of(bytes);
        if actual != r.hash {
            return Err(broken(CoreError::ChainBroken {
                seq,
                reason: format!(
                    "event bytes hash to {actual}, the record says {}: the event was altered",
                    r.hash
                ),
            }));
        }
        let env = Envelope::from_json(bytes).map_err(broken)?;
        if env.stream != payment {
            return Err(broken(CoreError::InvalidHistory {
                seq,
                reason: "event belongs to another payment".into(),
            }));
        }
        match &mut self.state {
            None => self.state = Some(fold::start(&env, r.hash).map_err(broken)?),
            Some(s) => fold::apply(s, &env, r.hash).map_err(broken)?,
        }
        self.recent.push_back((seq, r.hash));
        if self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        Ok(())
    }
}

/// Whether a failure of a head check may pass on its own (no answer, a 5xx, the rate
/// limit), so `follow` drops the event it could not check and opens the stream again.
fn may_pass(e: &Error) -> bool {
    match e {
        Error::Transport(_) => true,
        Error::Http { status, .. } => *status >= 500 || *status == 429 || *status == 408,
        _ => false,
    }
}

impl Replica {
    /// An empty replica of `payment`, trusting heads signed by `key`, which it pins
    /// into `client` ([`Client::pin`]): every head must then be signed for a fresh
    /// nonce of its request, so an older head cannot be replayed to it. A client
    /// already pinned to another key is refused ([`Error::KeyMismatch`]).
    ///
    /// ```
    /// use trustfold::{client::Client, history::PublicKey, replica::Replica};
    /// let key = PublicKey::from_secret(&[7u8; 32]);
    /// let payment = "5f0c1a52-3c1e-4a8e-9c1e-2b7f7c0e5a11".parse()?;
    /// let client = Client::new("http://127.0.0.1:8080")?;
    /// assert!(Replica::new(client.clone(), payment, key).is_ok());
    /// let other = client.pin(PublicKey::from_secret(&[9u8; 32]));
    /// let e = Replica::new(other, payment, key).unwrap_err();
    /// assert_eq!(e.code(), "key_mismatch");
    /// # Ok::<(), trustfold::Error>(())
    /// ```
    pub fn new(client: Client, payment: PaymentId, key: PublicKey) -> Result<Self> {
        if let Some(pinned) = client.pinned() {
            if *pinned != key {
                return Err(Error::KeyMismatch {
                    pinned: *pinned,
                    key,
                });
            }
        }
        Ok(Replica {
            client: client.pin(key),
            payment,
            key,
            chain: Chain::default(),
        })
    }

    /// The verified state, once something was fetched.
    pub fn state(&self) -> Option<&PaymentState> {
        self.chain.state.as_ref()
    }

    /// The local version (0 before the first event).
    pub fn version(&self) -> u64 {
        self.chain.version()
    }

    /// Fetches what is new, verifies and folds it on a copy, then checks the signed
    /// head (catching up to it when it is newer) and keeps the copy only if it passes.
    /// Returns how many events were new. On an error the replica is unchanged.
    pub async fn sync(&mut self) -> Result<u64> {
        let mut staged = self.chain.clone();
        loop {
            let page = self
                .client
                .events(self.payment, staged.version(), PAGE)
                .await?;
            for r in &page.events {
                staged.apply(self.payment, r)?;
            }
            if !page.has_more || page.events.is_empty() {
                break;
            }
        }
        self.verify_head(&mut staged, None).await?;
        let n = staged.version().saturating_sub(self.version());
        self.chain = staged;
        Ok(n)
    }

    /// Fetches the signed head and checks it against the pinned key and the local
    /// events, catching up to it when it is newer (kept only if the head passes).
    pub async fn check_head(&mut self) -> Result<()> {
        let mut staged = self.chain.clone();
        self.verify_head(&mut staged, None).await?;
        self.chain = staged;
        Ok(())
    }

    /// Fetches the signed head and checks `staged` against it, first fetching and
    /// folding into `staged` the events up to it when it is newer (and handing those
    /// records to `caught`, in order, when given).
    async fn verify_head(
        &self,
        staged: &mut Chain,
        mut caught: Option<&mut Vec<Record>>,
    ) -> Result<()> {
        let head = self.client.head(self.payment).await?;
        let broken = |error: CoreError| {
            Error::from(Broken {
                stream: Some(head.stream),
                seq: error.seq(),
                line: None,
                error,
            })
        };
        head.verify(&self.key).map_err(broken)?;
        head.check_payment(self.payment).map_err(broken)?;
        while head.seq > staged.version() {
            // Appended since our fetch: catch up, only up to the signed one (later
            // appends are checked with a later head), then check it.
            let wanted = head.seq - staged.version();
            let limit = u32::try_from(wanted).unwrap_or(PAGE).min(PAGE);
            let page = self
                .client
                .events(self.payment, staged.version(), limit)
                .await?;
            let take = usize::try_from(wanted).unwrap_or(usize::MAX);
            let empty = page.events.is_empty();
            for r in page.events.into_iter().take(take) {
                staged.apply(self.payment, &r)?;
                if let Some(c) = caught.as_deref_mut() {
                    c.push(r);
                }
            }
            if empty {
                break;
            }
        }
        if head.seq < staged.version() {
            // The server's current head is older than events it sent: those are not
            // signed, and anyone can extend a hash chain.
            return Err(broken(CoreError::ChainBroken {
                seq: head.seq + 1,
                reason: trustfold_core::history::unsigned_after(head.seq, staged.version()),
            }));
        }
        match staged.recent.back() {
            // Signed where a command ended: not inside one (`fold::check_complete`).
            Some((s, h)) if *s == head.seq && *h == head.hash => match &staged.state {
                Some(state) => fold::check_complete(state).map_err(broken),
                None => Ok(()),
            },
            Some((s, _)) if *s == head.seq => Err(broken(CoreError::ChainBroken {
                seq: head.seq,
                reason: "the event at the signed seq differs from the one the server signed".into(),
            })),
            _ => Err(broken(CoreError::ChainBroken {
                seq: head.seq,
                reason: format!(
                    "the signed head is at seq {} but the server sent only {} events",
                    head.seq,
                    staged.version()
                ),
            })),
        }
    }

    /// Differences between the server's read model and the local state, as JSON
    /// pointers of the top-level fields that differ (empty when they agree).
    pub async fn diff(&self) -> Result<Vec<String>> {
        let (_, server) = self.client.payment(self.payment).await?;
        let local: serde_json::Value = match &self.chain.state {
            Some(s) => {
                serde_json::from_slice(&s.to_json()).map_err(|e| Error::Usage(e.to_string()))?
            }
            None => serde_json::Value::Null,
        };
        let mut out = Vec::new();
        match (server.as_object(), local.as_object()) {
            (Some(a), Some(b)) => {
                for k in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
                    if a.get(k) != b.get(k) {
                        out.push(format!("/{k}"));
                    }
                }
            }
            _ if server != local => out.push(String::new()),
            _ => {}
        }
        Ok(out)
    }

    /// Follows the live stream, calling `on_event` once for every new event, in order,
    /// with the state after it, once it is verified. Returns when `on_event` returns
    /// `false` (the replica keeps every event verified by then, possibly a few past the
    /// last one reported).
    ///
    /// A streamed event is folded on a copy and kept only once a signed head fetched
    /// for it covers it (catching up when the head is newer). The server signs heads
    /// where a command ended, so a command that appended several events (an approval
    /// reaching its quorum: `ApprovalGranted` and `ReleaseAuthorized`) is verified
    /// whole, and then reported event by event: `on_event` sees the state after each,
    /// the states within the command included.
    ///
    /// Memory: until that head is checked, the events it covers past the streamed one
    /// are held as received (one record each, the event's bytes), as nothing of them may
    /// be reported before the last one is seen to be the signed one. A replica far
    /// behind the server (never synced, say) so holds every event it is behind by;
    /// call [`Replica::sync`] first when those need not be reported (it holds a page at
    /// a time).
    ///
    /// It reconnects with
    /// `Last-Event-ID` (the local version), with backoff, after a dropped connection,
    /// a 5xx, or a head check that failed for a reason that may pass (no answer, a 5xx,
    /// the rate limit: the event is dropped and streamed again); after a rate limit's
    /// 429 once its `Retry-After` has passed (waiting at most [`MAX_RATE_LIMIT_WAIT`]
    /// before asking again). Other refusals end it with the server's typed error:
    /// [`Error::Auth`] for 401/403 with its code (`token_expired`, `token_revoked`,
    /// `participant_removed`, …), [`Error::NotFound`] for 404; an event or head that
    /// does not verify ends it with that error, the replica unchanged; a line or an
    /// event of the stream longer than [`MAX_SSE_EVENT`] ends it with
    /// [`Error::TooLarge`].
    pub async fn follow<F>(&mut self, mut on_event: F) -> Result<()>
    where
        F: FnMut(&PaymentState) -> bool,
    {
        // Before opening the stream again after it dropped, and after a head check
        // that failed for a reason that may pass.
        let mut delay = FIRST_BACKOFF;
        let mut head_delay = FIRST_BACKOFF;
        'connect: loop {
            let res = self
                .client
                .request(
                    Method::GET,
                    &format!("/v1/payments/{}/stream", self.payment),
                )
                .header("Last-Event-ID", self.version().to_string())
                .header("Accept", "text/event-stream")
                .send()
                .await;
            let res = match res {
                Ok(r) if r.status().is_success() => r,
                // Over the server's rate limit: nothing ran, so the stream is opened
                // again once `Retry-After` has passed (a live feed outlasts any wait),
                // or after the longest wait this client makes, to ask again.
                Ok(r) if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                    let wait = crate::client::retry_after(r.headers())
                        .unwrap_or(delay)
                        .min(MAX_RATE_LIMIT_WAIT);
                    tokio::time::sleep(wait.max(delay)).await;
                    delay = (delay * 2).min(MAX_BACKOFF);
                    continue;
                }
                Ok(r) if r.status().is_server_error() => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_BACKOFF);
                    continue;
                }
                Ok(r) => {
                    let status = r.status();
                    let body = crate::client::error_body(r).await?;
                    return Err(crate::client::problem(status, &body));
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let mut body = res.bytes_stream();
            let mut buf: Vec<u8> = Vec::new();
            let mut data = String::new();
            let too_large = |what: &str| Error::TooLarge {
                what: what.into(),
                limit: MAX_SSE_EVENT,
            };
            while let Some(chunk) = body.next().await {
                let Ok(chunk) = chunk else { break };
                // The stream works (an event or a heartbeat): the next drop waits briefly.
                delay = FIRST_BACKOFF;
                buf.extend_from_slice(&chunk);
                while let Some(i) = memchr::memchr(b'\n', &buf) {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    let line = String::from_utf8_lossy(&line);
                    let line = line.trim_end_matches(['\r', '\n']);
                    if line.is_empty() {
                        if !data.is_empty() {
                            let rec: Record = serde_json::from_str(&data)
                                .map_err(|e| Error::Transport(format!("bad SSE data: {e}")))?;
                            data.clear();
                            let seq = Envelope::from_json(rec.event.get().as_bytes())
                                .map_or(u64::MAX, |e| e.seq);
                            if seq <= self.version() {
                                // Caught up by a head check meanwhile.
                                continue;
                            }
                            // A streamed event is not signed: it counts once the
                            // server's signed head covers it (fetched now, catching up
                            // if newer); until then it lives on a copy.
                            let mut staged = self.chain.clone();
                            staged.apply(self.payment, &rec)?;
                            let mut caught = Vec::new();
                            match self.verify_head(&mut staged, Some(&mut caught)).await {
                                Ok(()) => head_delay = FIRST_BACKOFF,
                                Err(e) if may_pass(&e) => {
                                    // Dropped: streamed again from the local version.
                                    tokio::time::sleep(head_delay).await;
                                    head_delay = (head_delay * 2).min(MAX_BACKOFF);
                                    continue 'connect;
                                }
                                Err(e) => return Err(e),
                            }
                            // Everything up to the head is verified and kept: the
                            // copy becomes the replica, its last state reported as is.
                            // The caller hears of each event in turn: when the head
                            // covered events after this one (a command's second event,
                            // a lagging follower's catch-up), the states before the
                            // last are folded again one by one from the state before
                            // them (the head covers them too). Cheaper than keeping
                            // them from the first fold: that holds a state per event,
                            // larger than the event's record and growing with the
                            // payment (ledger legs, participants, requests), where the
                            // second fold costs about 1 µs an event (release build: a
                            // catch-up of 2,400 events, 2 ms, against 33 ms for its
                            // pages).
                            let before = std::mem::replace(&mut self.chain, staged);
                            if let Some((_, within)) = caught.split_last() {
                                let mut walk = before;
                                for r in std::iter::once(&rec).chain(within) {
                                    walk.apply(self.payment, r)?;
                                    if let Some(s) = &walk.state {
                                        if !on_event(s) {
                                            return Ok(());
                                        }
                                    }
                                }
                            }
                            if let Some(s) = &self.chain.state {
                                if !on_event(s) {
                                    return Ok(());
                                }
                            }
                        }
                    } else if let Some(d) = line.strip_prefix("data:") {
                        if !data.is_empty() {
                            data.push('\n');
                        }
                        data.push_str(d.strip_prefix(' ').unwrap_or(d));
                        if data.len() > MAX_SSE_EVENT {
                            // `data:` lines that never end in an event.
                            return Err(too_large("live-stream event"));
                        }
                    }
                    // `id:`, `event:` and `:` comments (heartbeats) need nothing.
                }
                if buf.len() > MAX_SSE_EVENT {
                    // What is left is one line that has not ended yet.
                    return Err(too_large("live-stream line"));
                }
            }
            // Dropped or ended: reconnect from our version, after a pause that grows
            // while streams keep ending (a server that closes each one at once is not
            // asked again in a tight loop).
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_BACKOFF);
        }
    }
}
