//! An async client for the trustfold server (reqwest with rustls).
//!
//! - Typed calls for the server's routes; JSON bodies where the core has no type for
//!   the server's request shape.
//! - Every POST carries an `Idempotency-Key` (a fresh UUID unless you give one), the
//!   same on every retry, so a retry after a network error never runs a command twice;
//!   except the five the server refuses a key on ([`Client::create_tenant`],
//!   [`Client::rotate_api_key`], [`Client::rotate_webhook_secret`],
//!   [`Client::create_token`], [`Client::retry_webhook`]), which are retried only when
//!   no connection was made (or the server refused them for its rate limit).
//! - Retries with exponential backoff on connection errors and 5xx, waiting longer when
//!   the server's `Retry-After` asks (up to [`MAX_RATE_LIMIT_WAIT`]: a longer wait, such
//!   as a full disk's, is returned at once as the error); a 429 (`rate_limited`: nothing
//!   of the request ran) is sent again after its `Retry-After` on the same terms, as
//!   [`crate::replica::Replica::follow`] does for the live stream. Other 4xx are
//!   answered at once with a typed [`Error`]: [`Error::Rejected`] (422, with the
//!   domain rule's `code`), [`Error::VersionConflict`] (409, with `current_version`),
//!   [`Error::Auth`] (401/403), [`Error::NotFound`] (404), [`Error::Http`] otherwise.
//! - Answers are read chunk by chunk up to [`MAX_BODY`] (an error's body up to
//!   [`MAX_ERROR_BODY`]): a server that sends more (or never ends) is refused with
//!   [`Error::TooLarge`] before more is held in memory.
//!
//! ```no_run
//! # async fn demo() -> trustfold::Result<()> {
//! use trustfold::client::Client;
//! let client = Client::new("http://127.0.0.1:8080")?.api_key("tfk_…");
//! let key = client.server_key().await?;
//! let page = client.events("5f0c1a52-3c1e-4a8e-9c1e-2b7f7c0e5a11".parse()?, 0, 100).await?;
//! println!("{} events, more: {}; server key {key}", page.events.len(), page.has_more);
//! # Ok(()) }
//! ```

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::history::{PublicKey, SignedHead, SignedResponse};
use crate::id::{PartyId, PaymentId};
use crate::ledger::Account;
use crate::money::Money;
use crate::policy::{Policy, Role};
use crate::time::Timestamp;
use crate::CoreError;

/// How many times a request is tried in all (connection errors and 5xx only).
pub const ATTEMPTS: u32 = 4;

/// The longest a request waits for the server's next bytes: four times the server's
/// default live-stream heartbeat (15 s).
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest one request (not a live stream) may take in all, however its server
/// trickles the bytes.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The most bytes of an answer this client reads: a page of events is at most 4 MiB
/// plus one event (of at most about 256 KiB) from a trustfold server; a longer one is
/// [`Error::TooLarge`], refused before more is held in memory.
pub const MAX_BODY: usize = 16 << 20;

/// The most bytes of an error answer's body this client reads (a problem details
/// document is a few hundred); a longer one is [`Error::TooLarge`].
pub const MAX_ERROR_BODY: usize = 64 << 10;

/// What the server signs a command's answer as (before the request's nonce): its
/// answers to commands, opening a payment included, are signed for `/commands?nonce=N`
/// when asked with a nonce, which this client does whenever a key is pinned.
const COMMAND_ANSWER: &str = "/commands";

/// A client of one trustfold server.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    bearer: Option<String>,
    backoff: Duration,
    /// The server key answers must be signed with ([`Client::pin`]).
    pinned: Option<PublicKey>,
}

/// One history record as the server sends it: the hash and the event's exact bytes.
#[derive(Debug, Clone)]
pub struct Record {
    /// The recorded hash.
    pub hash: Hash,
    /// The event's bytes as received (never re-serialized).
    pub event: Box<RawValue>,
}

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct R {
            hash: Hash,
            event: Box<RawValue>,
        }
        let r = R::deserialize(d)?;
        Ok(Record {
            hash: r.hash,
            event: r.event,
        })
    }
}

/// A page of a payment's history.
#[derive(Debug, Clone, Deserialize)]
pub struct EventsPage {
    /// The records, in order.
    pub events: Vec<Record>,
    /// More after `next`.
    pub has_more: bool,
    /// The cursor (sequence number) to continue after.
    pub next: u64,
    /// The server's flag for a redacted view (a participant token whose roles the
    /// policy hides something from). [`Client::events`] never returns such a page: it
    /// fails with [`Error::RedactedHistory`] instead, even when every event of the
    /// page is hidden and the page would otherwise read as an empty one.
    #[serde(default)]
    pub redacted: bool,
}

/// One item of a history page as a participant whose roles the policy hides something
/// from gets it: the sequence number and the redacted event (no hash: it cannot be
/// verified), one per event, or several for an event the policy splits per role.
#[derive(Debug, Clone, Deserialize)]
pub struct ViewItem {
    /// The event's sequence number (for a verifiable record, read from its event).
    #[serde(default)]
    pub seq: u64,
    /// The recorded hash, present when the item is a verifiable record.
    #[serde(default)]
    pub hash: Option<Hash>,
    /// The event (redacted) as JSON.
    pub event: Value,
}

/// A page of a payment's history in the form the caller is allowed to see.
#[derive(Debug, Clone, Deserialize)]
pub struct ViewPage {
    /// The items, in order.
    pub events: Vec<ViewItem>,
    /// More after `next`.
    pub has_more: bool,
    /// The cursor (sequence number) to continue after.
    pub next: u64,
}

/// One event of the tenant-wide feed.
#[derive(Debug, Clone, Deserialize)]
pub struct FeedEvent {
    /// Gap-free global position.
    pub position: u64,
    /// The payment.
    pub payment_id: PaymentId,
    /// Its sequence number in the payment.
    pub seq: u64,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The recorded hash.
    pub hash: Hash,
    /// The event's bytes.
    pub event: Box<RawValue>,
}

/// A page of the tenant feed.
#[derive(Debug, Clone, Deserialize)]
pub struct FeedPage {
    /// The events, in global order.
    pub events: Vec<FeedEvent>,
    /// More after `next`.
    pub has_more: bool,
    /// The cursor (global position) to continue after.
    pub next: u64,
}

/// What a command (or opening a payment) returned.
#[derive(Debug, Clone, Deserialize)]
pub struct CommandResult {
    /// The payment.
    pub payment_id: PaymentId,
    /// Its version after the command.
    pub version: u64,
    /// The events the command appended (empty when it changed nothing).
    pub events: Vec<Value>,
    /// The payment's state after the command (the caller's view).
    #[serde(default)]
    pub state: Option<Value>,
}

/// What [`Client::rail_notice`] came to.
#[derive(Debug, Clone)]
pub enum RailNoticeAnswer {
    /// A payment had recorded the transfer: its answer, as a command's.
    Applied(CommandResult),
    /// No payment had recorded a transfer under the reference yet: the server holds the
    /// notice and gives it to the payment that does (202).
    Held(HeldRailNotice),
}

/// What became of a held rail notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HeldStatus {
    /// Still waiting for a payment to record a transfer under its reference.
    Held,
    /// Being given to the payment that recorded its transfer now (applied or refused in
    /// a moment; it can no longer be dismissed).
    Applying,
    /// Given to [`HeldRailNotice::payment_id`], which recorded it (or found it a
    /// duplicate).
    Applied,
    /// Refused: see [`HeldRailNotice::refusal`].
    Refused,
    /// Dismissed by the tenant while held ([`Client::dismiss_rail_notice`]).
    Dismissed,
    /// A status this SDK does not know (a newer server's). Not a filter the server
    /// takes: [`Client::held_rail_notices`] with it is refused (400).
    #[serde(other)]
    Unknown,
}

impl HeldStatus {
    /// Whether the notice still waits for its outcome (held, or being applied): wait
    /// for it while this is true.
    ///
    /// ```
    /// use trustfold::client::HeldStatus;
    /// assert!(HeldStatus::Applying.is_waiting());
    /// assert!(!HeldStatus::Applied.is_waiting());
    /// ```
    pub fn is_waiting(self) -> bool {
        matches!(self, HeldStatus::Held | HeldStatus::Applying)
    }

    /// The status as the API names it.
    pub fn as_str(self) -> &'static str {
        match self {
            HeldStatus::Held => "held",
            HeldStatus::Applying => "applying",
            HeldStatus::Applied => "applied",
            HeldStatus::Refused => "refused",
            HeldStatus::Dismissed => "dismissed",
            HeldStatus::Unknown => "unknown",
        }
    }
}

/// Why a held rail notice was refused.
#[derive(Debug, Clone, Deserialize)]
pub struct Refusal {
    /// The rule's code (e.g. `notice_conflict`, `ambiguous_rail_ref`).
    pub code: String,
    /// What the rule said.
    pub message: String,
}

/// A rail notice the server held because no payment knew its transfer yet.
#[derive(Debug, Clone, Deserialize)]
pub struct HeldRailNotice {
    /// Its id (the command id its `RailNotice` runs under).
    pub id: uuid::Uuid,
    /// The transfer's reference.
    pub rail_ref: String,
    /// What the rail said, as sent.
    pub notice: Value,
    /// What became of it.
    pub status: HeldStatus,
    /// When the server received it (RFC 3339).
    pub received_at: String,
    /// The payment it was given to (`None` while held).
    #[serde(default)]
    pub payment_id: Option<PaymentId>,
    /// Why it was refused.
    #[serde(default)]
    pub refusal: Option<Refusal>,
    /// When it was applied or refused.
    #[serde(default)]
    pub settled_at: Option<String>,
}

/// A page of held rail notices, oldest first ([`Client::held_rail_notices`]).
#[derive(Debug, Clone, Deserialize)]
pub struct HeldRailNoticePage {
    /// The notices.
    pub rail_notices: Vec<HeldRailNotice>,
    /// More remain: ask again with `after` = [`HeldRailNoticePage::next`].
    pub has_more: bool,
    /// The page's last notice.
    #[serde(default)]
    pub next: Option<uuid::Uuid>,
}

/// Filters for [`Client::payments`] (all optional; unset means any).
#[derive(Debug, Clone, Default)]
pub struct PaymentQuery {
    /// Only payments in this status (as the read model spells it, e.g. `"Funded"`).
    pub status: Option<String>,
    /// Only payments where this party holds a role.
    pub participant: Option<PartyId>,
    /// Only payments under this policy id.
    pub policy: Option<String>,
    /// Only payments on which the platform's clock acts before this time (a funding
    /// deadline, good funds, an automatic release).
    pub due_before: Option<Timestamp>,
    /// Only payments that submitted a transfer under this rail reference (what a bank's
    /// notice names).
    pub rail_ref: Option<String>,
}

/// The policy a payment is pinned to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PolicyRef {
    /// The policy id.
    pub id: String,
    /// Its version.
    pub version: u32,
}

/// A participant of a listed payment.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ListedParticipant {
    /// The party.
    pub party: PartyId,
    /// The roles it holds.
    pub roles: Vec<Role>,
}

/// One payment of the read model, as [`Client::payments`] lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct PaymentSummary {
    /// The payment.
    pub payment_id: PaymentId,
    /// Its pinned policy.
    pub policy: PolicyRef,
    /// Its status (the core's `Status`, as serialized).
    pub status: String,
    /// The amount it was opened for.
    pub amount: Money,
    /// Its version.
    pub version: u64,
    /// When it was opened.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// The parties holding a role, by party id.
    pub participants: Vec<ListedParticipant>,
    /// When the platform's clock next acts on it (good funds, a missed funding
    /// deadline, an automatic release), if anything is due.
    #[serde(default)]
    pub next_tick_at: Option<Timestamp>,
}

/// A page of [`Client::payments`].
#[derive(Debug, Clone, Deserialize)]
pub struct PaymentsPage {
    /// The payments, oldest first.
    pub payments: Vec<PaymentSummary>,
    /// More after `next`.
    pub has_more: bool,
    /// The cursor to continue after.
    pub next: u64,
}

/// One ledger account's balance (amounts as decimal strings in `currency`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Balance {
    /// The account.
    pub account: Account,
    /// The currency code.
    pub currency: String,
    /// Posted (settled) balance.
    pub posted: String,
    /// Pending credits.
    pub pending_in: String,
    /// Pending debits.
    pub pending_out: String,
}

/// A payment's balances, per account.
#[derive(Debug, Clone, Deserialize)]
pub struct Balances {
    /// The payment.
    pub payment_id: PaymentId,
    /// One entry per account, by account name.
    pub balances: Vec<Balance>,
}

/// One notification of a party's inbox.
#[derive(Debug, Clone, Deserialize)]
pub struct Notification {
    /// The payment.
    pub payment_id: PaymentId,
    /// The event's sequence number in the payment.
    pub seq: u64,
    /// The event's global position (the inbox cursor of a tenant's API key); none for
    /// a participant token, whose cursor is `seq` (positions count every tenant's
    /// events).
    #[serde(default)]
    pub position: Option<u64>,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The roles of the party the policy notifies for this event.
    pub roles: Vec<Role>,
    /// When the event happened.
    pub at: Timestamp,
}

/// A page of a party's inbox.
#[derive(Debug, Clone, Deserialize)]
pub struct InboxPage {
    /// The party.
    pub party_id: PartyId,
    /// The notifications, in global order (with a participant token: in the payment's
    /// order).
    pub notifications: Vec<Notification>,
    /// More after `next`.
    pub has_more: bool,
    /// The cursor to continue after: a global position with an API key, the
    /// payment's sequence number with a participant token.
    pub next: u64,
}

/// A participant token, as [`Client::create_token`] minted it.
#[derive(Debug, Clone, Deserialize)]
pub struct ParticipantToken {
    /// The bearer token (use with [`Client::token`]).
    pub token: String,
    /// The payment it is bound to.
    pub payment_id: PaymentId,
    /// The party it acts for.
    pub party: PartyId,
    /// The roles it carries.
    pub roles: Vec<Role>,
    /// When it stops working.
    pub expires_at: Timestamp,
}

/// What [`Client::revoke_tokens`] revoked.
#[derive(Debug, Clone, Deserialize)]
pub struct RevokedTokens {
    /// The payment.
    pub payment_id: PaymentId,
    /// The party whose tokens were revoked.
    pub party: PartyId,
    /// When.
    pub revoked_at: Timestamp,
    /// The party's token generation from now on: its tokens minted before (of an
    /// earlier generation) are refused (`token_revoked`).
    pub generation: u64,
}

/// A new API key, as [`Client::rotate_api_key`] returned it.
#[derive(Debug, Clone, Deserialize)]
pub struct ApiKey {
    /// The tenant.
    pub tenant_id: uuid::Uuid,
    /// The secret (shown once; use with [`Client::api_key`]).
    pub api_key: String,
}

/// A webhook endpoint of the tenant (`/v1/webhooks`), and how its delivery goes.
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookEndpoint {
    /// The endpoint's id.
    pub webhook_id: uuid::Uuid,
    /// Where the events are POSTed.
    pub url: String,
    /// The event types sent (empty: every type).
    pub event_types: Vec<String>,
    /// Every event of the tenant up to this global position has been sent (or passed
    /// over).
    pub position: u64,
    /// `delivering` or `failing`.
    pub status: String,
    /// Failed tries of the next event in a row.
    pub attempts: u64,
    /// When the next try is due (RFC 3339), if one is waiting.
    #[serde(default)]
    pub next_attempt_at: Option<String>,
    /// The HTTP status of the last answer.
    #[serde(default)]
    pub last_status: Option<u16>,
    /// Why the last try failed.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Since when it fails.
    #[serde(default)]
    pub failing_since: Option<String>,
    /// When it was registered.
    pub created_at: String,
    /// The `whsec_…` secret: in the answers of [`Client::create_webhook`] and
    /// [`Client::rotate_webhook_secret`] only (verify requests with
    /// [`crate::webhook::Webhook`]).
    #[serde(default)]
    pub secret: Option<String>,
}

/// One try of one event to a webhook endpoint, from its delivery log
/// ([`Client::webhook_deliveries`]).
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookDelivery {
    /// The try's number among the endpoint's tries (1, 2, …): the cursor.
    pub seq: u64,
    /// The endpoint.
    pub webhook_id: uuid::Uuid,
    /// The tenant.
    pub tenant_id: uuid::Uuid,
    /// The event sent (the request's `webhook-id`).
    pub event_id: uuid::Uuid,
    /// The event's global position in the tenant's feed.
    pub position: u64,
    /// The event's type.
    pub event_type: String,
    /// The try's number for this event: 1 for the first, 2 for the first retry, …
    pub attempt: u64,
    /// When the try started (RFC 3339, microseconds).
    pub started_at: String,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// The HTTP status answered; `None` when there was no answer.
    #[serde(default)]
    pub status: Option<u16>,
    /// Why it failed (naming the host, never the URL's path or query).
    #[serde(default)]
    pub error: Option<String>,
    /// Answered with a 2xx.
    pub succeeded: bool,
}

/// A page of an endpoint's delivery log, newest first.
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookDeliveryPage {
    /// The endpoint.
    pub webhook_id: uuid::Uuid,
    /// The tries, newest first.
    pub deliveries: Vec<WebhookDelivery>,
    /// Older tries remain: ask again with `before` = [`WebhookDeliveryPage::next`].
    pub has_more: bool,
    /// The `seq` of the page's last (oldest) try.
    pub next: u64,
}

/// A policy of the tenant with its latest version ([`Client::policies`]).
#[derive(Debug, Clone, Deserialize)]
pub struct PolicySummary {
    /// The policy id.
    pub id: String,
    /// Its latest version.
    pub version: u32,
    /// The latest version's name.
    #[serde(default)]
    pub name: Option<String>,
    /// The hash of the latest version's canonical JSON (what payments pin), hex.
    pub hash: String,
    /// How many versions are stored.
    pub versions: u64,
    /// When the latest version was published (RFC 3339).
    pub created_at: String,
    /// When the first version was published (RFC 3339).
    pub first_created_at: String,
}

/// A page of the tenant's policies, by id ([`Client::policies`]).
#[derive(Debug, Clone, Deserialize)]
pub struct PolicyPage {
    /// The policies.
    pub policies: Vec<PolicySummary>,
    /// More remain: ask again with `after` = [`PolicyPage::next`].
    pub has_more: bool,
    /// The page's last policy id.
    #[serde(default)]
    pub next: Option<String>,
}

/// A stored policy version.
#[derive(Debug, Clone, Deserialize)]
pub struct StoredPolicy {
    /// The policy id.
    pub id: String,
    /// The version.
    pub version: u32,
    /// The hash of its canonical JSON (what payments pin).
    pub hash: Hash,
    /// The document.
    pub policy: Policy,
}

/// What `/healthz` answered.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Health {
    /// `"ok"`, or `"degraded"`.
    pub status: String,
}

impl Health {
    /// True when the server and its database answered.
    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }
}

#[derive(Deserialize)]
struct Problem {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    current_version: Option<u64>,
}

impl Client {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:8080`). A request gets
    /// no answer for [`READ_TIMEOUT`] at most (a live stream's heartbeats keep it open);
    /// a base that is not an `http(s)://` URL is a usage error.
    ///
    /// ```
    /// use trustfold::client::Client;
    /// assert!(Client::new("http://127.0.0.1:8080").is_ok());
    /// assert_eq!(Client::new("127.0.0.1:8080").unwrap_err().code(), "usage");
    /// ```
    pub fn new(base: &str) -> Result<Self> {
        let url = reqwest::Url::parse(base)
            .map_err(|e| Error::Usage(format!("server `{base}` is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(Error::Usage(format!(
                "server `{base}` is not an http:// or https:// URL with a host"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(READ_TIMEOUT)
            .build()
            .map_err(|e| Error::Transport(e.to_string()))?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            bearer: None,
            backoff: Duration::from_millis(100),
            pinned: None,
        })
    }

    /// Authenticates with a tenant API key.
    pub fn api_key(mut self, key: &str) -> Self {
        self.bearer = Some(key.to_string());
        self
    }

    /// Authenticates with a participant token (scoped to one payment and party).
    pub fn token(mut self, token: &str) -> Self {
        self.bearer = Some(token.to_string());
        self
    }

    /// Pins the server's key (from `GET /v1/server-key`, compared out of band): the
    /// answers that cannot be checked against a signed head — the state from
    /// [`Client::payment`] and the pages of [`Client::events_view`] —, the head of
    /// [`Client::head`] and the answers of [`Client::create_payment`] and
    /// [`Client::send_command`] must then carry the server's signature of their bytes and of a
    /// random nonce sent with the request (`Trustfold-Signature`), or they fail with
    /// `bad_signature`: nothing on the way can change them or replay older ones.
    /// Without a pinned key they are taken as they come.
    ///
    /// ```
    /// use trustfold::client::Client;
    /// use trustfold_core::history::PublicKey;
    /// let key = PublicKey::from_secret(&[7u8; 32]);
    /// let c = Client::new("http://127.0.0.1:8080").unwrap().pin(key);
    /// assert_eq!(c.pinned(), Some(&key));
    /// ```
    pub fn pin(mut self, key: PublicKey) -> Self {
        self.pinned = Some(key);
        self
    }

    /// The pinned server key, if any.
    pub fn pinned(&self) -> Option<&PublicKey> {
        self.pinned.as_ref()
    }

    /// `what` with a fresh random `nonce` appended when a key is pinned (the server signs
    /// it with its answer, so an older answer cannot be replayed for this one).
    fn fresh(&self, what: String) -> String {
        match self.pinned {
            Some(_) => {
                SignedResponse::with_nonce(&what, &uuid::Uuid::new_v4().simple().to_string())
            }
            None => what,
        }
    }

    /// With a pinned key, checks `body`'s `Trustfold-Signature` as the server's answer
    /// to `what` about `payment` (see `SignedResponse`).
    fn check_signed(&self, payment: PaymentId, what: &str, body: &bytes_body::Body) -> Result<()> {
        let Some(key) = &self.pinned else {
            return Ok(());
        };
        let Some(signature) = &body.signature else {
            return Err(Error::Core(CoreError::BadSignature(format!(
                "the server's answer about {payment} carries no signature \
                 (Trustfold-Signature), so it cannot be told from one changed on the way: \
                 refused with a pinned key"
            ))));
        };
        let credential = self.bearer.as_deref().unwrap_or("");
        SignedResponse::verify(key, payment, what, credential, &body.bytes, signature)?;
        Ok(())
    }

    /// The first retry's delay (doubled on each further retry).
    pub fn backoff(mut self, first: Duration) -> Self {
        self.backoff = first;
        self
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub(crate) fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = &self.bearer {
            r = r.bearer_auth(b);
        }
        r
    }

    /// Sends with retries on connection errors and 5xx; maps error statuses.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
        expected_version: Option<u64>,
    ) -> Result<bytes_body::Body> {
        self.send_with(method, path, body, idempotency_key, expected_version, true)
            .await
    }

    /// [`Client::send`]; with `idempotent` false (a POST the server does not take an
    /// `Idempotency-Key` on: tenant creation, key rotation) no key is sent and only a
    /// request that never reached the server (no connection) is retried, so a retry
    /// cannot make a second tenant or key.
    async fn send_with(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
        expected_version: Option<u64>,
        idempotent: bool,
    ) -> Result<bytes_body::Body> {
        let key = match (&method, idempotency_key) {
            _ if !idempotent => None,
            (&Method::POST, None) => Some(uuid::Uuid::new_v4().to_string()),
            (_, k) => k.map(str::to_string),
        };
        let mut delay = self.backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut r = self.request(method.clone(), path).timeout(REQUEST_TIMEOUT);
            if let Some(k) = &key {
                r = r.header("Idempotency-Key", k);
            }
            if let Some(v) = expected_version {
                r = r.header("If-Match", format!("\"{v}\""));
            }
            if let Some(b) = body {
                r = r.json(b);
            }
            let retry = match r.send().await {
                // Over the server's rate limit: nothing of the request ran, so it is
                // sent again (even one that is not idempotent) once `Retry-After` has
                // passed, unless that is longer than this client waits.
                Ok(res) if res.status() == StatusCode::TOO_MANY_REQUESTS => {
                    let status = res.status();
                    let wait = retry_after(res.headers());
                    let text = error_body(res).await?;
                    match wait {
                        Some(w) if attempt < ATTEMPTS && w <= MAX_RATE_LIMIT_WAIT => {
                            tokio::time::sleep(w.max(delay)).await;
                            delay = delay.saturating_mul(2);
                            continue;
                        }
                        _ => return Err(problem(status, &text)),
                    }
                }
                // A 5xx: sent again after the backoff, or the server's `Retry-After` if
                // it asks for longer (a database restarting: 1 s; a full disk: 30 s, more
                // than this client waits, so that comes back as `storage_full`).
                Ok(res) if res.status().is_server_error() && idempotent => {
                    let status = res.status();
                    let wait = retry_after(res.headers());
                    let text = error_body(res).await?;
                    if attempt >= ATTEMPTS || wait.is_some_and(|w| w > MAX_RATE_LIMIT_WAIT) {
                        return Err(problem(status, &text));
                    }
                    if let Some(w) = wait.filter(|w| *w > delay) {
                        tokio::time::sleep(w).await;
                        delay = delay.saturating_mul(2);
                        continue;
                    }
                    true
                }
                Ok(res) => {
                    let status = res.status();
                    let headers = res.headers().clone();
                    if !status.is_success() {
                        return Err(problem(status, &error_body(res).await?));
                    }
                    let bytes = read_body(res, MAX_BODY, "answer").await?;
                    return Ok(bytes_body::Body {
                        status: status.as_u16(),
                        bytes,
                        etag: headers
                            .get("etag")
                            .and_then(|v| v.to_str().ok())
                            .map(|s| s.trim_matches('"').to_string()),
                        signature: headers
                            .get("trustfold-signature")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string),
                    });
                }
                Err(e) if e.is_connect() || (idempotent && (e.is_timeout() || e.is_request())) => {
                    if attempt >= ATTEMPTS {
                        return Err(transport(&e));
                    }
                    true
                }
                Err(e) => return Err(transport(&e)),
            };
            if retry {
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
            }
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let b = self.send(Method::GET, path, None, None, None).await?;
        serde_json::from_slice(&b.bytes).map_err(|e| Error::Transport(format!("bad response: {e}")))
    }

    /// `GET /v1/server-key`: the key heads are signed with. Pin it out of band; this
    /// call is for first contact and for checking a pinned key is still the server's.
    pub async fn server_key(&self) -> Result<PublicKey> {
        let v: Value = self.get_json("/v1/server-key").await?;
        v.get("public_key")
            .and_then(Value::as_str)
            .and_then(|k| k.parse().ok())
            .ok_or_else(|| Error::Transport("the server key response has no public_key".into()))
    }

    /// `POST /v1/tenants` with the admin token: returns `{tenant_id, name, api_key}`.
    /// Not idempotent (the server keeps the new key only as a hash, so it cannot replay
    /// the answer): sent without an `Idempotency-Key` and retried only when no
    /// connection was made.
    pub async fn create_tenant(&self, admin_token: &str, name: &str) -> Result<Value> {
        let c = self.clone().token(admin_token);
        let b = c
            .send_with(
                Method::POST,
                "/v1/tenants",
                Some(&serde_json::json!({"name": name})),
                None,
                None,
                false,
            )
            .await?;
        serde_json::from_slice(&b.bytes).map_err(|e| Error::Transport(e.to_string()))
    }

    /// `POST /v1/policies`: publishes a policy document (immutable per version).
    pub async fn create_policy(&self, policy: &Value) -> Result<Value> {
        let b = self
            .send(Method::POST, "/v1/policies", Some(policy), None, None)
            .await?;
        serde_json::from_slice(&b.bytes).map_err(|e| Error::Transport(e.to_string()))
    }

    /// `POST /v1/payments`: opens a payment (`{policy, amount, description, initiator}`).
    /// With a pinned key ([`Client::pin`]) the answer must be signed by it for this
    /// request, as a command's.
    pub async fn create_payment(
        &self,
        request: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<CommandResult> {
        self.command_answer("/v1/payments", None, request, idempotency_key, None)
            .await
    }

    /// `POST /v1/payments/{id}/commands`: `command` is the core's command JSON
    /// (`{"type":"Join",…}`); `actor` is `{party, role}` for tenant keys; with
    /// `expected_version` the command fails with [`Error::VersionConflict`] if another
    /// writer got there first. With a pinned key ([`Client::pin`]) the answer must carry
    /// the server's signature for this very request (a fresh nonce), or the call fails
    /// with `bad_signature`: the command may then have been applied, so send it again
    /// with the same `idempotency_key` (or read the payment).
    pub async fn send_command(
        &self,
        payment: PaymentId,
        command: &Value,
        actor: Option<&Value>,
        expected_version: Option<u64>,
        idempotency_key: Option<&str>,
    ) -> Result<CommandResult> {
        let mut body = serde_json::json!({ "command": command });
        if let Some(a) = actor {
            body["actor"] = a.clone();
        }
        self.command_answer(
            &format!("/v1/payments/{payment}/commands"),
            Some(payment),
            &body,
            idempotency_key,
            expected_version,
        )
        .await
    }

    /// `POST /v1/rail-notices`: a rail's notice about a transfer named only by its
    /// reference (`notice` as the `RailNotice` command's: `{"kind":"settled"}`,
    /// `{"kind":"returned","code":"R01"}`…), as a bank's webhook reports it: the server
    /// finds the tenant's payment that submitted the transfer and answers as for a
    /// command ([`RailNoticeAnswer::Applied`]). When no payment recorded the reference
    /// yet (the notice overtook the submission) the server holds it and applies it once
    /// one does ([`RailNoticeAnswer::Held`]; follow it with [`Client::held_rail_notice`]).
    /// Several payments with the reference: `ambiguous_rail_ref`. With a pinned key
    /// ([`Client::pin`]) the answer must be signed by it for this request.
    ///
    /// ```no_run
    /// # async fn run(c: trustfold::client::Client) -> trustfold::Result<()> {
    /// use trustfold::client::RailNoticeAnswer;
    ///
    /// let settled = serde_json::json!({"kind": "settled"});
    /// match c.rail_notice("WIRE-1", &settled, Some("bank-event-81")).await? {
    ///     RailNoticeAnswer::Applied(r) => println!("{} is at version {}", r.payment_id, r.version),
    ///     RailNoticeAnswer::Held(h) => println!("held as {} until the transfer is recorded", h.id),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn rail_notice(
        &self,
        rail_ref: &str,
        notice: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<RailNoticeAnswer> {
        let body = serde_json::json!({ "rail_ref": rail_ref, "notice": notice });
        let what = self.fresh(COMMAND_ANSWER.into());
        let query = what.strip_prefix(COMMAND_ANSWER).unwrap_or("");
        let b = self
            .send(
                Method::POST,
                &format!("/v1/rail-notices{query}"),
                Some(&body),
                idempotency_key,
                None,
            )
            .await?;
        let bad = |e: serde_json::Error| Error::Transport(format!("bad response: {e}"));
        if b.status == 202 {
            // Held: an answer about no payment yet (signed about the nil id).
            self.check_signed(PaymentId(uuid::Uuid::nil()), &what, &b)?;
            return Ok(RailNoticeAnswer::Held(
                serde_json::from_slice(&b.bytes).map_err(bad)?,
            ));
        }
        let result: CommandResult = serde_json::from_slice(&b.bytes).map_err(bad)?;
        self.check_signed(result.payment_id, &what, &b)?;
        Ok(RailNoticeAnswer::Applied(result))
    }

    /// `GET /v1/rail-notices/{id}`: a notice the server held ([`RailNoticeAnswer::Held`])
    /// and what became of it since. [`Error::NotFound`] for an id never held (or another
    /// tenant's).
    pub async fn held_rail_notice(&self, id: uuid::Uuid) -> Result<HeldRailNotice> {
        self.get_json(&format!("/v1/rail-notices/{id}")).await
    }

    /// `DELETE /v1/rail-notices/{id}`: dismisses a held notice whose transfer will never
    /// be recorded here ([`HeldStatus::Dismissed`]; the record stays; dismissing again
    /// answers the same). A notice applied or refused already: [`Error::Http`] with
    /// status 409 and code `rail_notice_settled`; one being applied right now: 409
    /// `rail_notice_applying` (read it again with [`Client::held_rail_notice`]).
    pub async fn dismiss_rail_notice(&self, id: uuid::Uuid) -> Result<HeldRailNotice> {
        let b = self
            .send(
                Method::DELETE,
                &format!("/v1/rail-notices/{id}"),
                None,
                None,
                None,
            )
            .await?;
        serde_json::from_slice(&b.bytes).map_err(|e| Error::Transport(format!("bad response: {e}")))
    }

    /// `GET /v1/rail-notices?status=&rail_ref=&after=&limit=`: a page of the tenant's
    /// held notices, oldest first. Start with `after = None`, continue with
    /// `page.next` while `has_more`; `limit` is at most 1,000. For reconciliation:
    /// `status = Some(HeldStatus::Held)` lists the notices whose transfer never came.
    pub async fn held_rail_notices(
        &self,
        status: Option<HeldStatus>,
        rail_ref: Option<&str>,
        after: Option<uuid::Uuid>,
        limit: u32,
    ) -> Result<HeldRailNoticePage> {
        let mut path = format!("/v1/rail-notices?limit={limit}");
        if let Some(s) = status {
            path.push_str(&format!("&status={}", s.as_str()));
        }
        if let Some(r) = rail_ref {
            path.push_str(&format!("&rail_ref={}", encode(r)));
        }
        if let Some(a) = after {
            path.push_str(&format!("&after={a}"));
        }
        self.get_json(&path).await
    }

    /// POSTs a command to `route` and reads its answer; with a pinned key, asked with a
    /// fresh nonce and checked as the server's answer to `/commands?nonce=N` about
    /// `payment` (or, when the route does not name it, the payment the answer names).
    async fn command_answer(
        &self,
        route: &str,
        payment: Option<PaymentId>,
        body: &Value,
        idempotency_key: Option<&str>,
        expected_version: Option<u64>,
    ) -> Result<CommandResult> {
        let what = self.fresh(COMMAND_ANSWER.into());
        let query = what.strip_prefix(COMMAND_ANSWER).unwrap_or("");
        let b = self
            .send(
                Method::POST,
                &format!("{route}{query}"),
                Some(body),
                idempotency_key,
                expected_version,
            )
            .await?;
        if let Some(p) = payment {
            self.check_signed(p, &what, &b)?;
        }
        let result: CommandResult =
            serde_json::from_slice(&b.bytes).map_err(|e| Error::Transport(e.to_string()))?;
        if payment.is_none() {
            self.check_signed(result.payment_id, &what, &b)?;
        }
        Ok(result)
    }

    /// `GET /v1/payments/{id}`: the server's read model of the payment (a participant
    /// gets its view), with its version. With a pinned key ([`Client::pin`]) the answer
    /// must be signed by it.
    pub async fn payment(&self, payment: PaymentId) -> Result<(Option<u64>, Value)> {
        let what = self.fresh(String::new());
        let b = self
            .send(
                Method::GET,
                &format!("/v1/payments/{payment}{what}"),
                None,
                None,
                None,
            )
            .await?;
        self.check_signed(payment, &what, &b)?;
        let v = serde_json::from_slice(&b.bytes).map_err(|e| Error::Transport(e.to_string()))?;
        Ok((b.etag.and_then(|e| e.parse().ok()), v))
    }

    /// `GET /v1/payments/{id}/events?after=&limit=`: a page of the history as verifiable
    /// records (what an API key, or a participant whose roles see everything, gets).
    /// A participant token that gets a redacted view (the server flags the page
    /// `"redacted": true`) fails with [`Error::RedactedHistory`], also when the page's
    /// events are all hidden from it; read that view with [`Client::events_view`].
    pub async fn events(&self, payment: PaymentId, after: u64, limit: u32) -> Result<EventsPage> {
        let b = self
            .send(
                Method::GET,
                &format!("/v1/payments/{payment}/events?after={after}&limit={limit}"),
                None,
                None,
                None,
            )
            .await?;
        match serde_json::from_slice::<EventsPage>(&b.bytes) {
            // A view the server says is redacted cannot be verified, even when every
            // event of the page is hidden (no items: it parses as an empty page).
            Ok(page) if page.redacted => Err(Error::RedactedHistory),
            Ok(page) => Ok(page),
            Err(e) => match serde_json::from_slice::<ViewPage>(&b.bytes) {
                Ok(view) if view.events.iter().any(|i| i.hash.is_none()) => {
                    Err(Error::RedactedHistory)
                }
                _ => Err(Error::Transport(format!("bad response: {e}"))),
            },
        }
    }

    /// `GET /v1/payments/{id}/events?after=&limit=` as whatever the credential may see:
    /// verifiable records (with `hash`) for an API key, the policy's redacted view
    /// (without) for a participant token whose roles it hides something from. A view
    /// cannot be checked against the history: with a pinned key ([`Client::pin`]) the
    /// page must be signed by it.
    pub async fn events_view(
        &self,
        payment: PaymentId,
        after: u64,
        limit: u32,
    ) -> Result<ViewPage> {
        let what = self.fresh(format!("/events?after={after}"));
        let b = self
            .send(
                Method::GET,
                &format!("/v1/payments/{payment}{what}&limit={limit}"),
                None,
                None,
                None,
            )
            .await?;
        self.check_signed(payment, &what, &b)?;
        let mut page: ViewPage = serde_json::from_slice(&b.bytes)
            .map_err(|e| Error::Transport(format!("bad response: {e}")))?;
        for item in &mut page.events {
            if item.hash.is_some() {
                item.seq = item.event.get("seq").and_then(Value::as_u64).unwrap_or(0);
            }
        }
        Ok(page)
    }

    /// `GET /v1/payments/{id}/head`: the signed head. With a pinned key the answer must
    /// be the server's to this very request (a fresh nonce, `Trustfold-Signature`), so
    /// an older head replayed on the way — hiding what came after it — is refused.
    pub async fn head(&self, payment: PaymentId) -> Result<SignedHead> {
        let what = self.fresh("/head".into());
        let b = self
            .send(
                Method::GET,
                &format!("/v1/payments/{payment}{what}"),
                None,
                None,
                None,
            )
            .await?;
        self.check_signed(payment, &what, &b)?;
        let v: Value = serde_json::from_slice(&b.bytes)
            .map_err(|e| Error::Transport(format!("bad response: {e}")))?;
        // Either the head itself or wrapped as {"head": …}.
        let h = v.get("head").cloned().unwrap_or(v);
        serde_json::from_value(h).map_err(|e| Error::Transport(format!("bad head: {e}")))
    }

    /// `GET /v1/events?after=&limit=`: a page of the tenant-wide feed.
    pub async fn feed(&self, after: u64, limit: u32) -> Result<FeedPage> {
        self.get_json(&format!("/v1/events?after={after}&limit={limit}"))
            .await
    }

    /// `GET /healthz`: liveness and a database check (no authentication). A server
    /// whose database is down answers 503, an [`Error::Http`].
    pub async fn health(&self) -> Result<Health> {
        self.get_json("/healthz").await
    }

    /// `GET /openapi.json`: the server's OpenAPI 3.1 document (no authentication).
    pub async fn openapi(&self) -> Result<Value> {
        self.get_json("/openapi.json").await
    }

    /// `POST /v1/api-keys`: a new API key of the caller's tenant. With
    /// `expire_others_after`, every other key of the tenant stops working after that
    /// overlap (whole seconds); without it, they keep working. Not idempotent, like
    /// [`Client::create_tenant`]: retried only when no connection was made.
    pub async fn rotate_api_key(&self, expire_others_after: Option<Duration>) -> Result<ApiKey> {
        let body = match expire_others_after {
            Some(d) => serde_json::json!({"expire_others_after_seconds": d.as_secs()}),
            None => serde_json::json!({}),
        };
        let b = self
            .send_with(Method::POST, "/v1/api-keys", Some(&body), None, None, false)
            .await?;
        serde_json::from_slice(&b.bytes).map_err(|e| Error::Transport(format!("bad response: {e}")))
    }

    /// `GET /v1/policies?after=&limit=`: a page of the tenant's policies by id, each
    /// with its latest version. Start with `after = None`, continue with `page.next`
    /// while `has_more`; `limit` is at most 1,000.
    ///
    /// ```no_run
    /// # async fn run(c: trustfold::client::Client) -> trustfold::Result<()> {
    /// let page = c.policies(None, 100).await?;
    /// for p in &page.policies {
    ///     println!("{} v{} ({} versions): {:?}", p.id, p.version, p.versions, p.name);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn policies(&self, after: Option<&str>, limit: u32) -> Result<PolicyPage> {
        let mut path = format!("/v1/policies?limit={limit}");
        if let Some(a) = after {
            path.push_str(&format!("&after={}", encode(a)));
        }
        self.get_json(&path).await
    }

    /// `GET /v1/policies/{id}?version=`: a stored policy, the given version or the
    /// latest; [`Error::NotFound`] when there is none.
    pub async fn policy(&self, id: &str, version: Option<u32>) -> Result<StoredPolicy> {
        let mut path = format!("/v1/policies/{}", encode(id));
        if let Some(v) = version {
            path.push_str(&format!("?version={v}"));
        }
        self.get_json(&path).await
    }

    /// `GET /v1/payments?status=&participant=&policy=&due_before=&rail_ref=&after=&limit=`: a page of the
    /// tenant's payments (read model), oldest first. Start with `after = 0`, continue
    /// with the page's `next` while `has_more`; [`Client::all_payments`] does that.
    pub async fn payments(
        &self,
        query: &PaymentQuery,
        after: u64,
        limit: u32,
    ) -> Result<PaymentsPage> {
        let mut path = format!("/v1/payments?after={after}&limit={limit}");
        if let Some(s) = &query.status {
            path.push_str(&format!("&status={}", encode(s)));
        }
        if let Some(p) = &query.participant {
            path.push_str(&format!("&participant={p}"));
        }
        if let Some(p) = &query.policy {
            path.push_str(&format!("&policy={}", encode(p)));
        }
        if let Some(t) = &query.due_before {
            path.push_str(&format!("&due_before={}", encode(&t.to_string())));
        }
        if let Some(r) = &query.rail_ref {
            path.push_str(&format!("&rail_ref={}", encode(r)));
        }
        self.get_json(&path).await
    }

    /// Every payment matching `query`: [`Client::payments`] paged to the end (500 a
    /// page, the server's largest).
    pub async fn all_payments(&self, query: &PaymentQuery) -> Result<Vec<PaymentSummary>> {
        let (mut out, mut after) = (Vec::new(), 0);
        loop {
            let page = self.payments(query, after, 500).await?;
            let done = !page.has_more || page.payments.is_empty();
            out.extend(page.payments);
            after = page.next;
            if done {
                return Ok(out);
            }
        }
    }

    /// `GET /v1/payments/{id}/balances`: the ledger balances per account (read model;
    /// tenant keys only).
    pub async fn balances(&self, payment: PaymentId) -> Result<Balances> {
        self.get_json(&format!("/v1/payments/{payment}/balances"))
            .await
    }

    /// `GET /v1/parties/{party}/inbox?after=&limit=`: the party's notifications, as
    /// the payments' policies define them. A participant token sees only its own
    /// party's, of its payment.
    pub async fn inbox(&self, party: PartyId, after: u64, limit: u32) -> Result<InboxPage> {
        self.get_json(&format!(
            "/v1/parties/{party}/inbox?after={after}&limit={limit}"
        ))
        .await
    }

    /// `POST /v1/payments/{id}/tokens`: mints a short-lived participant token for
    /// `party` (a participant of the payment) with `roles` (default: all it holds;
    /// each must be held) valid for `ttl` (whole seconds; default 15 minutes, at most
    /// a day). A domain refusal (`unknown_participant`, `role_not_held`,
    /// `duplicate_role`, `invalid_ttl`) is an [`Error::Rejected`]; a party that was
    /// removed from the payment is refused with 403 `participant_removed`. Sent without
    /// an `Idempotency-Key` (the server keeps no token to replay): after a lost answer,
    /// mint another.
    pub async fn create_token(
        &self,
        payment: PaymentId,
        party: PartyId,
        roles: Option<&[Role]>,
        ttl: Option<Duration>,
    ) -> Result<ParticipantToken> {
        let mut body = serde_json::json!({ "party": party });
        if let Some(r) = roles {
            body["roles"] = serde_json::to_value(r).map_err(|e| Error::Usage(e.to_string()))?;
        }
        if let Some(t) = ttl {
            body["ttl_seconds"] = t.as_secs().into();
        }
        self.post_json_unkeyed(&format!("/v1/payments/{payment}/tokens"), &body)
            .await
    }

    /// `POST /v1/payments/{id}/tokens/revoke`: every participant token of `party` on
    /// the payment minted until now stops working (a token that leaked before its
    /// expiry); tokens minted afterwards work. A party that never was a participant is
    /// an [`Error::Rejected`] (`unknown_participant`).
    pub async fn revoke_tokens(&self, payment: PaymentId, party: PartyId) -> Result<RevokedTokens> {
        self.post_json(
            &format!("/v1/payments/{payment}/tokens/revoke"),
            &serde_json::json!({ "party": party }),
            None,
        )
        .await
    }

    /// `POST /v1/webhooks`: registers an endpoint for the tenant's events (of
    /// `event_types`, or every type when empty) after `after` (default: from now on; 0:
    /// the whole log). Registering the same URL with the same types again answers the
    /// same endpoint, so a retry is safe. Its `secret` verifies the requests
    /// ([`crate::webhook::Webhook`]).
    ///
    /// ```no_run
    /// # async fn run(c: trustfold::client::Client) -> trustfold::Result<()> {
    /// let ep = c.create_webhook("https://example.com/trustfold", &["FundsAvailable"], None).await?;
    /// let verifier = trustfold::webhook::Webhook::new(ep.secret.as_deref().unwrap_or_default())?;
    /// # Ok(()) }
    /// ```
    pub async fn create_webhook(
        &self,
        url: &str,
        event_types: &[&str],
        after: Option<u64>,
    ) -> Result<WebhookEndpoint> {
        let mut body = serde_json::json!({ "url": url, "event_types": event_types });
        if let Some(a) = after {
            body["after"] = a.into();
        }
        self.post_json("/v1/webhooks", &body, None).await
    }

    /// `GET /v1/webhooks`: the tenant's endpoints (without secrets).
    pub async fn webhooks(&self) -> Result<Vec<WebhookEndpoint>> {
        #[derive(Deserialize)]
        struct List {
            webhooks: Vec<WebhookEndpoint>,
        }
        let l: List = self.get_json("/v1/webhooks").await?;
        Ok(l.webhooks)
    }

    /// `GET /v1/webhooks/{id}`: one endpoint; [`Error::NotFound`] when there is none.
    pub async fn webhook(&self, id: uuid::Uuid) -> Result<WebhookEndpoint> {
        self.get_json(&format!("/v1/webhooks/{id}")).await
    }

    /// `DELETE /v1/webhooks/{id}`: nothing more is sent to the endpoint.
    pub async fn delete_webhook(&self, id: uuid::Uuid) -> Result<()> {
        self.send(
            Method::DELETE,
            &format!("/v1/webhooks/{id}"),
            None,
            None,
            None,
        )
        .await
        .map(|_| ())
    }

    /// `POST /v1/webhooks/{id}/rotate-secret`: a new secret (in the answer); requests
    /// carry the retired secret's signature too for `expire_previous_after` (whole
    /// seconds; default a day, at most 7). Not idempotent: retried only when no
    /// connection was made (rotating again is harmless: every secret of the overlap
    /// keeps signing until its own ends).
    pub async fn rotate_webhook_secret(
        &self,
        id: uuid::Uuid,
        expire_previous_after: Option<Duration>,
    ) -> Result<WebhookEndpoint> {
        let body = match expire_previous_after {
            Some(d) => serde_json::json!({"expire_previous_after_seconds": d.as_secs()}),
            None => serde_json::json!({}),
        };
        let path = format!("/v1/webhooks/{id}/rotate-secret");
        let b = self
            .send_with(Method::POST, &path, Some(&body), None, None, false)
            .await?;
        serde_json::from_slice(&b.bytes).map_err(|e| Error::Transport(format!("bad response: {e}")))
    }

    /// `GET /v1/webhooks/{id}/deliveries?before=&limit=`: a page of the endpoint's
    /// delivery log, every try of every event (the newest 1,000 are kept), newest
    /// first. Start with `before = None`, continue with `Some(page.next)` while
    /// `has_more`; `limit` is at most 1,000. [`Error::NotFound`] when there is no such
    /// endpoint (or it is another tenant's).
    ///
    /// ```no_run
    /// # async fn run(c: trustfold::client::Client, id: uuid::Uuid) -> trustfold::Result<()> {
    /// let mut before = None;
    /// loop {
    ///     let page = c.webhook_deliveries(id, before, 100).await?;
    ///     for d in &page.deliveries {
    ///         println!("{} {} try {}: {:?} {:?}", d.started_at, d.event_type, d.attempt, d.status, d.error);
    ///     }
    ///     if !page.has_more {
    ///         break;
    ///     }
    ///     before = Some(page.next);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn webhook_deliveries(
        &self,
        id: uuid::Uuid,
        before: Option<u64>,
        limit: u32,
    ) -> Result<WebhookDeliveryPage> {
        let mut path = format!("/v1/webhooks/{id}/deliveries?limit={limit}");
        if let Some(b) = before {
            path.push_str(&format!("&before={b}"));
        }
        self.get_json(&path).await
    }

    /// `POST /v1/webhooks/{id}/retry`: a failing endpoint is tried again now. Sent
    /// without an `Idempotency-Key` (the server stores no answer to replay; sending it
    /// again is safe).
    pub async fn retry_webhook(&self, id: uuid::Uuid) -> Result<WebhookEndpoint> {
        self.post_json_unkeyed(&format!("/v1/webhooks/{id}/retry"), &serde_json::json!({}))
            .await
    }

    /// The whole history of a payment and its signed head: `GET /v1/payments/{id}/head`,
    /// then pages of `GET /v1/payments/{id}/events` up to the head's seq (events
    /// appended meanwhile are left out, so the pair matches; pages that do not advance
    /// are a transport error). Pages that end before the head's seq (a server, or
    /// someone on the way, cutting the history's end) are [`Error::Broken`] with
    /// `chain_broken`, with or without a pinned key: a short history is never returned.
    /// The document is written exactly as [`crate::history::write`] writes one (one
    /// record per line, each event's bytes as received), ready for the
    /// [`Verifier`](crate::verify::Verifier) with the head. Needs a view that can be
    /// verified (a tenant key, or a token whose roles see everything).
    pub async fn fetch_history(&self, payment: PaymentId) -> Result<(Vec<u8>, SignedHead)> {
        // The head first, then the events up to it: events appended meanwhile are left
        // for the next fetch, and the pair always matches.
        let head = self.head(payment).await?;
        let mut body: Vec<u8> = b"[\n".to_vec();
        let (mut after, mut n) = (0u64, 0u64);
        while n < head.seq {
            let page = self.events(payment, after, 1000).await?;
            if page.has_more && page.next <= after {
                return Err(Error::Transport(format!(
                    "the server's event pages do not advance (next {} after {after})",
                    page.next
                )));
            }
            for r in page
                .events
                .iter()
                .take(usize::try_from(head.seq - n).unwrap_or(usize::MAX))
            {
                if n > 0 {
                    body.extend_from_slice(b",\n");
                }
                let mut hex = [0u8; 64];
                r.hash.write_hex(&mut hex);
                body.extend_from_slice(b"{\"hash\":\"");
                body.extend_from_slice(&hex);
                body.extend_from_slice(b"\",\"event\":");
                body.extend_from_slice(r.event.get().as_bytes());
                body.push(b'}');
                n += 1;
            }
            after = page.next;
            if !page.has_more || page.events.is_empty() {
                break;
            }
        }
        if n != head.seq {
            // The pages ended before the signed head: the history would be cut short.
            return Err(Error::from(crate::error::Broken {
                stream: Some(payment),
                seq: Some(head.seq),
                line: None,
                error: CoreError::ChainBroken {
                    seq: head.seq,
                    reason: format!(
                        "the signed head is at seq {} but the server sent only {n} events: \
                         events were cut from the history's end (fetch again)",
                        head.seq
                    ),
                },
            }));
        }
        body.extend_from_slice(b"\n]\n");
        Ok((body, head))
    }

    /// [`Client::post_json`] for a POST the server takes no `Idempotency-Key` on.
    async fn post_json_unkeyed<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<T> {
        let b = self
            .send_with(Method::POST, path, Some(body), None, None, false)
            .await?;
        serde_json::from_slice(&b.bytes).map_err(|e| Error::Transport(format!("bad response: {e}")))
    }

    async fn post_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<T> {
        let b = self
            .send(Method::POST, path, Some(body), idempotency_key, None)
            .await?;
        serde_json::from_slice(&b.bytes).map_err(|e| Error::Transport(format!("bad response: {e}")))
    }
}

/// A transport failure with its causes (`error sending request` alone does not say
/// whether the connection was refused, timed out or failed TLS).
fn transport(e: &reqwest::Error) -> Error {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    Error::Transport(message)
}

/// Reads `res`'s body chunk by chunk, refusing one longer than `limit` bytes
/// ([`Error::TooLarge`] about `what`) before holding more than that.
pub(crate) async fn read_body(
    mut res: reqwest::Response,
    limit: usize,
    what: &str,
) -> Result<Vec<u8>> {
    let too_large = || Error::TooLarge {
        what: what.to_string(),
        limit,
    };
    if res
        .content_length()
        .is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX))
    {
        return Err(too_large());
    }
    let mut out = Vec::new();
    while let Some(chunk) = res.chunk().await.map_err(|e| transport(&e))? {
        if chunk.len() > limit - out.len() {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// An error answer's body (at most [`MAX_ERROR_BODY`] bytes; a longer one is
/// [`Error::TooLarge`]); empty when it could not be read (the status says enough).
pub(crate) async fn error_body(res: reqwest::Response) -> Result<Vec<u8>> {
    let what = format!("error body (HTTP {})", res.status().as_u16());
    match read_body(res, MAX_ERROR_BODY, &what).await {
        Err(e @ Error::TooLarge { .. }) => Err(e),
        Err(_) => Ok(Vec::new()),
        Ok(b) => Ok(b),
    }
}

/// Percent-encodes a path segment or query value (everything but RFC 3986's
/// unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The longest `Retry-After` (of a rate limit, or of a 503) this client waits out
/// before sending a request again; a longer one is returned as the error
/// (`rate_limited`, `storage_full`).
pub const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(10);

/// A `Retry-After` in whole seconds (the server's form), if any.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Maps an error response (RFC 9457 problem details) to a typed error: 401/403 to
/// [`Error::Auth`] with the server's code (`token_expired`, `token_revoked`,
/// `participant_removed`, …), 404 to [`Error::NotFound`], 409 `version_conflict` to
/// [`Error::VersionConflict`], 422 to [`Error::Rejected`], anything else to
/// [`Error::Http`] with the problem's code (or `http_<status>`).
pub(crate) fn problem(status: StatusCode, body: &[u8]) -> Error {
    let p: Option<Problem> = serde_json::from_slice(body).ok();
    let code = p.as_ref().and_then(|p| p.code.clone());
    let message = p
        .as_ref()
        .and_then(|p| p.detail.clone())
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    match status.as_u16() {
        401 | 403 => Error::Auth {
            status: status.as_u16(),
            code: code.unwrap_or_else(|| {
                if status.as_u16() == 403 {
                    "forbidden"
                } else {
                    "unauthorized"
                }
                .into()
            }),
            message,
        },
        404 => Error::NotFound { message },
        409 if code.as_deref() == Some("version_conflict") => Error::VersionConflict {
            current_version: p.and_then(|p| p.current_version),
            message,
        },
        422 => Error::Rejected {
            code: code.unwrap_or_else(|| "unprocessable".into()),
            message,
            field: p.and_then(|p| p.field),
        },
        s => Error::Http {
            status: s,
            code: code.unwrap_or_else(|| format!("http_{s}")),
            message,
        },
    }
}

mod bytes_body {
    pub(super) struct Body {
        /// The HTTP status (a success).
        pub status: u16,
        pub bytes: Vec<u8>,
        pub etag: Option<String>,
        /// The `Trustfold-Signature` header.
        pub signature: Option<String>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_map_to_typed_errors() {
        let e = problem(
            StatusCode::CONFLICT,
            br#"{"code":"version_conflict","detail":"at 7","current_version":7}"#,
        );
        assert!(matches!(
            e,
            Error::VersionConflict {
                current_version: Some(7),
                ..
            }
        ));
        let e = problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            br#"{"code":"quorum_not_met","detail":"x"}"#,
        );
        assert_eq!(e.code(), "quorum_not_met");
        assert_eq!(problem(StatusCode::NOT_FOUND, b"{}").code(), "not_found");
        assert_eq!(problem(StatusCode::FORBIDDEN, b"{}").code(), "forbidden");
        assert_eq!(
            problem(
                StatusCode::UNAUTHORIZED,
                br#"{"code":"token_expired","detail":"mint a new one"}"#
            )
            .code(),
            "token_expired"
        );
        assert_eq!(problem(StatusCode::BAD_REQUEST, b"nope").code(), "http_400");
    }

    #[test]
    fn encode_escapes_all_but_unreserved() {
        assert_eq!(encode("earnest-money_v1.x~"), "earnest-money_v1.x~");
        assert_eq!(encode("a b/c?d&é"), "a%20b%2Fc%3Fd%26%C3%A9");
    }

    #[tokio::test]
    async fn connection_errors_are_retried_then_reported() {
        // Nothing listens on port 9 of localhost (discard): connect fails at once.
        let c = Client::new("http://127.0.0.1:9")
            .expect("client")
            .backoff(Duration::from_millis(1));
        let t0 = std::time::Instant::now();
        let e = c.server_key().await.expect_err("no server");
        assert_eq!(e.code(), "transport");
        assert!(
            t0.elapsed() >= Duration::from_millis(7),
            "three backoffs: 1+2+4 ms"
        );
    }
}
