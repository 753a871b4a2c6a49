//! A local, verified replica of one payment.
//!
//! [`Replica::sync`] fetches only the events after the local version, checks that
//! each one hashes to its recorded hash and links to the previous one, folds it with
//! the core, then checks the server's signed head against the pinned key. A replica
//! that verified once can never be moved to a different past: an event that does not
//! link to the local head is refused. [`Replica::diff`] compares the server's read
//! model with the locally rebuilt state; [`Replica::follow`] keeps it current over the
//! live stream (SSE), resuming with `Last-Event-ID` after a dropped connection. The
//! signed head must be the replica's last event: events past it (sent by the server
//! or streamed) are refused or, when streamed, checked against a newly fetched head
//! before the caller sees them, since anyone can extend a hash chain.
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

use crate::client::{Client, Record};
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

/// A verified local copy of one payment. See the [module docs](self).
#[derive(Debug)]
pub struct Replica {
    client: Client,
    payment: PaymentId,
    key: PublicKey,
    state: Option<PaymentState>,
    recent: VecDeque<(u64, Hash)>,
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
            state: None,
            recent: VecDeque::new(),
        })
    }

    /// The verified state, once something was fetched.
    pub fn state(&self) -> Option<&PaymentState> {
        self.state.as_ref()
    }

    /// The local version (0 before the first event).
    pub fn version(&self) -> u64 {
        self.state.as_ref().map_or(0, |s| s.version)
    }

    /// Whether `r` is an event this replica already holds (its seq is not past the
    /// local version): a stream can repeat what a head check caught up on.
    fn already_applied(&self, r: &Record) -> bool {
        Envelope::from_json(r.event.get().as_bytes()).is_ok_and(|e| e.seq <= self.version())
    }

    /// Checks and folds one record (the next event), as fetched or streamed.
    pub fn apply(&mut self, r: &Record) -> Result<()> {
        let seq = self.version() + 1;
        let bytes = r.event.get().as_bytes();
        let broken = |error: CoreError| {
            Error::from(Broken {
                stream: Some(self.payment),
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
        if env.stream != self.payment {
            return Err(broken(CoreError::InvalidHistory {
                seq,
                reason: "event belongs to another payment".into(),
            }));
        }
        match &mut self.state {
            None => self.state = Some(fold::start(&env, r.hash).map_err(broken)?),
            Some(s) => {
                // `apply` may leave the state part-changed on an error: a refused event
                // is refused again when the next sync fetches it.
                let mut next = s.clone();
                fold::apply(&mut next, &env, r.hash).map_err(broken)?;
                *s = next;
            }
        }
        self.recent.push_back((seq, r.hash));
        if self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        Ok(())
    }

    /// Fetches what is new, verifies and folds it, then checks the signed head.
    /// Returns how many events were new.
    pub async fn sync(&mut self) -> Result<u64> {
        let mut n = 0;
        loop {
            let page = self
                .client
                .events(self.payment, self.version(), 1000)
                .await?;
            for r in &page.events {
                self.apply(r)?;
                n += 1;
            }
            if !page.has_more || page.events.is_empty() {
                break;
            }
        }
        self.check_head().await?;
        Ok(n)
    }

    /// Fetches the signed head and checks it against the pinned key and local events.
    pub async fn check_head(&mut self) -> Result<()> {
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
        if head.stream != self.payment {
            return Err(broken(CoreError::BadSignature(format!(
                "the server sent the head of {} for payment {}",
                head.stream, self.payment
            ))));
        }
        if head.seq > self.version() {
            // Appended since our fetch: catch up, then check again.
            let page = self
                .client
                .events(self.payment, self.version(), 1000)
                .await?;
            // Only up to the signed one: later appends are checked with a later head.
            let wanted = usize::try_from(head.seq - self.version()).unwrap_or(usize::MAX);
            for r in page.events.iter().take(wanted) {
                self.apply(r)?;
            }
        }
        if head.seq < self.version() {
            // The server's current head is older than events it sent: those are not
            // signed, and anyone can extend a hash chain.
            return Err(broken(CoreError::ChainBroken {
                seq: head.seq + 1,
                reason: trustfold_core::history::unsigned_after(head.seq, self.version()),
            }));
        }
        match self.recent.back() {
            // Signed where a command ended: not inside one (`fold::check_complete`).
            Some((s, h)) if *s == head.seq && *h == head.hash => match &self.state {
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
                    self.version()
                ),
            })),
        }
    }

    /// Differences between the server's read model and the local state, as JSON
    /// pointers of the top-level fields that differ (empty when they agree).
    pub async fn diff(&self) -> Result<Vec<String>> {
        let (_, server) = self.client.payment(self.payment).await?;
        let local: serde_json::Value = match &self.state {
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

    /// Follows the live stream, applying each event and calling `on_event` with the
    /// new state; reconnects with `Last-Event-ID` (the local version) after a dropped
    /// connection or a 5xx, with backoff, and after a rate limit's 429 once its
    /// `Retry-After` has passed. Returns when `on_event` returns `false`.
    pub async fn follow<F>(&mut self, mut on_event: F) -> Result<()>
    where
        F: FnMut(&PaymentState) -> bool,
    {
        let mut delay = Duration::from_millis(200);
        loop {
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
                // again once `Retry-After` has passed (a live feed outlasts any wait).
                Ok(r) if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                    let wait = crate::client::retry_after(r.headers()).unwrap_or(delay);
                    tokio::time::sleep(wait.max(delay)).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                    continue;
                }
                Ok(r) if r.status().is_server_error() => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                    continue;
                }
                Ok(r) => {
                    let status = r.status().as_u16();
                    let text = r.text().await.unwrap_or_default();
                    return Err(Error::Http {
                        status,
                        code: format!("http_{status}"),
                        message: text,
                    });
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            let mut body = res.bytes_stream();
            let mut buf: Vec<u8> = Vec::new();
            let mut data = String::new();
            while let Some(chunk) = body.next().await {
                let Ok(chunk) = chunk else { break };
                // The stream works (an event or a heartbeat): the next drop waits briefly.
                delay = Duration::from_millis(200);
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
                            if self.already_applied(&rec) {
                                // Caught up by a head check meanwhile.
                                continue;
                            }
                            self.apply(&rec)?;
                            // A streamed event is not signed: it counts once the server's
                            // signed head covers it (fetched now, catching up if newer).
                            self.check_head().await?;
                            if let Some(s) = &self.state {
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
                    }
                    // `id:`, `event:` and `:` comments (heartbeats) need nothing.
                }
            }
            // Dropped or ended: reconnect from our version, after a pause that grows
            // while streams keep ending (a server that closes each one at once is not
            // asked again in a tight loop).
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }
}
