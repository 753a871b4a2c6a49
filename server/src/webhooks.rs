//! Webhooks: every event of a tenant POSTed to the tenant's endpoints, in global order,
//! signed as [Standard Webhooks] 1.0 describes (what `trustfold::webhook` verifies).
//!
//! An endpoint (`POST /v1/webhooks`: a URL, optionally the event types it wants) has a
//! **position** in the tenant's feed: it is sent the events after it, one request per
//! event, in order, and the position moves past an event once the endpoint answered it
//! with a 2xx (events of types it did not ask for are passed over). Delivery is **at
//! least once**: a receiver deduplicates by `webhook-id`, which is the event's id and
//! the same on every retry.
//!
//! - **The request**: `POST <url>` with `content-type: application/json`, the headers
//!   `webhook-id`, `webhook-timestamp` (Unix seconds, at sending) and
//!   `webhook-signature` (`v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`,
//!   keyed with the endpoint's `whsec_…` secret; during a rotation the old secret's
//!   signature too, space-separated), and the body
//!   `{"type":…,"timestamp":…,"data":{"tenant_id","payment_id","seq","position","hash","event"}}`
//!   where `event` is the stored envelope byte for byte (its SHA-256 is `hash`), so a
//!   receiver can check it as it checks a history.
//! - **Secrets at rest**: with a secrets key (`--secrets-key-file`), an endpoint's
//!   secret and its retired ones are stored sealed, bound to the endpoint's id, and
//!   opened to sign ([`crate::sealed`]); without one, in clear.
//! - **Failures** (a non-2xx answer, no answer within 10 s, a refused address) hold the
//!   endpoint at that event (order is kept) and it is tried again after a pause that
//!   grows four-fold from [`WebhookConfig::retry_first`] (5 s) up to an hour, without
//!   end; `GET /v1/webhooks` shows how it fails. Redirects are not followed.
//! - **Addresses**: an endpoint whose host is, or resolves to, a loopback, private,
//!   link-local or otherwise non-public address is refused (a tenant could otherwise
//!   make the server call into its own network), unless the server allows it
//!   ([`WebhookConfig::allow_private`], `--webhooks-allow-private`, for development).
//!   The address checked is the one connected to (no second lookup, no proxy).
//! - **Delivery log**: every try of an event (its id, position and type, the try's
//!   number for that event, when it started, how long it took, the status or why it
//!   failed, whether it succeeded) is written to `webhook_deliveries` in the same
//!   transaction that moves or holds the endpoint, numbered `seq` 1, 2, … per endpoint
//!   (`GET /v1/webhooks/{id}/deliveries`, newest first). The newest
//!   [`WebhookConfig::keep_deliveries`] (1,000) are kept: each write drops the one that
//!   fell out, in the same transaction (one indexed row, so the bound holds at every
//!   commit with no sweeper to run or fall behind). Deleting the endpoint deletes its log.
//!   Errors name the host, never the URL (its path or query may hold a token).
//! - **Connections**: a host name is resolved and its addresses checked for every
//!   request; the endpoint's client, pinned to a checked address, is kept for
//!   [`PINNED_FOR`] (60 s) while the host still resolves to that address, so a backlog
//!   goes over one kept-alive connection ([`Pins`]).
//! - **Each endpoint its own task**: a round looks for the endpoints due with events
//!   to send (all of them, page by page; an idle endpoint costs an indexed look) and
//!   starts a task for each that has none ([`CONCURRENT`] send at once, each for at
//!   most [`SERVE_FOR`], page after page of its backlog); it does not wait for them, so
//!   a slow receiver holds back only itself. At most [`PER_TENANT`] of one tenant's
//!   endpoints send at once (its others wait their turn, in order): one tenant's slow
//!   receivers (it may register 16) cannot take every slot from the other tenants.
//! - **One sender per database**: the projection leader (see [`crate::projections`]);
//!   positions move by compare-and-set, so an endpoint is never moved twice, and after
//!   a change of leader an event may be sent again (at least once).
//!
//! ```
//! use trustfold_server::webhooks::sign;
//! let secret = b"0123456789abcdef0123456789abcdef";
//! let sig = sign(secret, "3f1c…", 1_795_824_000, br#"{"type":"PaymentInitiated"}"#);
//! assert!(sig.starts_with("v1,") && sig.len() == 3 + 44);
//! ```
//!
//! [Standard Webhooks]: https://www.standardwebhooks.com/

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;
use trustfold_core::time::Timestamp;
use uuid::Uuid;

use crate::api::error::ApiError;
use crate::api::{AppState, Notice};
use crate::db::{now_us, on_read, on_write};
use crate::sealed::{AtRest, Purpose};
use crate::{EventStore, StoredEvent};

/// How webhooks are sent.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Whether endpoints may be on loopback, private, link-local or other non-public
    /// addresses (development only).
    pub allow_private: bool,
    /// The pause after an endpoint's first failure; each further one is four times
    /// longer, up to [`RETRY_MAX`].
    pub retry_first: Duration,
    /// Tries kept in an endpoint's delivery log (the newest; older ones are dropped as
    /// each new one is written).
    pub keep_deliveries: u32,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            allow_private: false,
            retry_first: Duration::from_secs(5),
            keep_deliveries: KEEP_DELIVERIES,
        }
    }
}

/// Tries kept in an endpoint's delivery log by default.
pub const KEEP_DELIVERIES: u32 = 1000;
/// The longest pause between two tries of a failing endpoint.
pub const RETRY_MAX: Duration = Duration::from_secs(3600);
/// How long an endpoint has to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// Endpoints read at a time when a round looks for those due (it reads them all).
const DUE_PAGE: i64 = 1000;
/// Events read at a time for one endpoint (its turn goes on page after page while it
/// lasts, [`SERVE_FOR`]).
const PER_READ: u32 = 100;
/// Endpoints served at once.
const CONCURRENT: usize = 8;
/// Endpoints of one tenant served at once (of [`CONCURRENT`]).
const PER_TENANT: usize = CONCURRENT / 2;
/// How long one endpoint is sent to before its turn ends (it goes on in the next round).
const SERVE_FOR: Duration = Duration::from_secs(5);
/// How long a client pinned to a host's checked address is kept ([`Pins`]).
const PINNED_FOR: Duration = Duration::from_secs(60);

/// The `webhook-signature` value for one message: `v1,` and the base64 HMAC-SHA256 of
/// `<id>.<timestamp>.<body>` keyed with `secret` (the decoded part of `whsec_…`).
pub fn sign(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        // HMAC takes keys of any length.
        return String::new();
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

/// Most retired secrets that sign at once (rotations beyond it end the overlap of the
/// one due to expire first).
pub const MAX_PREVIOUS: usize = 4;

/// The retired secrets of an endpoint, from their stored JSON
/// (`[{"secret":"<base64>","until_us":N},…]`); anything unreadable is none.
pub(crate) fn previous_of(text: &str) -> Vec<(Vec<u8>, i64)> {
    let list: Vec<serde_json::Value> = serde_json::from_str(text).unwrap_or_default();
    list.iter()
        .filter_map(|v| {
            let secret = B64.decode(v["secret"].as_str()?).ok()?;
            Some((secret, v["until_us"].as_i64()?))
        })
        .collect()
}

/// The stored JSON of retired secrets ([`previous_of`] reads it).
pub(crate) fn previous_text(list: &[(Vec<u8>, i64)]) -> String {
    let out: Vec<serde_json::Value> = list
        .iter()
        .map(|(s, u)| serde_json::json!({"secret": B64.encode(s), "until_us": u}))
        .collect();
    serde_json::Value::Array(out).to_string()
}

/// The stored JSON of retired secrets with each secret passed through `f` (opened, or
/// sealed, for its endpoint: see [`crate::sealed`]).
pub(crate) fn previous_through(
    text: &str,
    mut f: impl FnMut(&[u8]) -> Result<Vec<u8>, crate::StoreError>,
) -> Result<String, crate::StoreError> {
    let list = previous_of(text)
        .into_iter()
        .map(|(s, u)| Ok((f(&s)?, u)))
        .collect::<Result<Vec<_>, crate::StoreError>>()?;
    Ok(previous_text(&list))
}

/// The retired secrets after `current` is retired until `until` (Unix µs), as stored:
/// those expired by `now` dropped, then at most [`MAX_PREVIOUS`], the latest to expire.
/// (The secrets in clear: sealing is the caller's, [`previous_through`].)
pub(crate) fn retire(previous: &str, current: &[u8], until: i64, now: i64) -> String {
    let mut list: Vec<(Vec<u8>, i64)> = previous_of(previous)
        .into_iter()
        .filter(|(s, u)| *u > now && s.as_slice() != current)
        .collect();
    if until > now {
        list.push((current.to_vec(), until));
    }
    list.sort_by_key(|(_, u)| std::cmp::Reverse(*u));
    list.truncate(MAX_PREVIOUS);
    previous_text(&list)
}

/// A new endpoint secret: its bytes and its `whsec_…` form.
pub(crate) fn new_secret() -> Result<(Vec<u8>, String), ApiError> {
    let mut raw = [0u8; 32];
    getrandom::getrandom(&mut raw)
        .map_err(|e| ApiError::Internal(format!("no randomness: {e}")))?;
    Ok((raw.to_vec(), secret_text(&raw)))
}

/// `whsec_` and the base64 of the secret's bytes.
pub(crate) fn secret_text(raw: &[u8]) -> String {
    format!("whsec_{}", B64.encode(raw))
}

/// Whether an address is one a tenant's webhook may not reach by default: loopback,
/// private, link-local, shared (CGNAT), unspecified, broadcast, multicast,
/// documentation, IETF protocol assignments (192.0.0.0/24), unique-local, site-local,
/// discard-only, Teredo, or an IPv6 address carrying an IPv4 address that is one of
/// these: IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), NAT64
/// (`64:ff9b::a.b.c.d`; the local-use `64:ff9b:1::/48` entirely) and 6to4
/// (`2002:aabb:ccdd::`), which a translating network delivers to that IPv4 address.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                let [a, b] = hi.to_be_bytes();
                let [c, d] = lo.to_be_bytes();
                is_private(IpAddr::from([a, b, c, d]))
            };
            // `::ffff:a.b.c.d` and `::a.b.c.d` (`::1` is 0.0.0.1 here: private too).
            if let Some(v4) = v6.to_ipv4() {
                return is_private(IpAddr::V4(v4));
            }
            if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return embedded(seg[6], seg[7]);
            }
            if seg[0] == 0x2002 {
                return embedded(seg[1], seg[2]);
            }
            let first = seg[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first & 0xffc0) == 0xfec0
                || (first == 0x64 && seg[1] == 0xff9b && seg[2] == 1)
                || (first == 0x100 && seg[1..4] == [0, 0, 0])
                || (first == 0x2001 && seg[1] == 0)
                || (first == 0x2001 && seg[1] == 0x0db8)
        }
    }
}

/// Checks an endpoint URL when it is registered: `http`/`https`, a host, no
/// credentials or fragment, at most 2,048 bytes; a literal non-public address is
/// refused unless `allow_private`. (Host names are checked when sending, at the
/// address they resolve to.)
pub(crate) fn check_url(url: &str, allow_private: bool) -> Result<reqwest::Url, String> {
    if url.len() > 2048 {
        return Err("the URL is longer than 2,048 bytes".into());
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
    if parsed.as_str().len() > 2048 {
        return Err("the URL is longer than 2,048 bytes once percent-encoded".into());
    }
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "the URL's scheme is `{}`; use https:// (or http://)",
            trustfold_core::error::echo(parsed.scheme())
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("the URL holds credentials; the signature authenticates the server".into());
    }
    if parsed.fragment().is_some() {
        return Err("the URL has a #fragment, which is never sent".into());
    }
    let literal = match parsed.host() {
        None => return Err("the URL has no host".into()),
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        Some(url::Host::Domain(d)) if d.eq_ignore_ascii_case("localhost") => {
            Some(IpAddr::from([127, 0, 0, 1]))
        }
        Some(url::Host::Domain(_)) => None,
    };
    if let Some(ip) = literal.filter(|ip| !allow_private && is_private(*ip)) {
        return Err(format!(
            "{ip} is not a public address; the server sends webhooks to public addresses \
             only (start it with --webhooks-allow-private for development)"
        ));
    }
    Ok(parsed)
}

/// One endpoint as the sender reads it.
#[derive(Debug, Clone)]
struct Endpoint {
    webhook_id: Uuid,
    tenant_id: Uuid,
    url: String,
    /// The event types it wants (empty: every type).
    event_types: Vec<String>,
    secret: Vec<u8>,
    /// Retired secrets and until when each still signs ([`retire`]).
    previous: Vec<(Vec<u8>, i64)>,
    position: i64,
    attempts: i64,
}

/// The columns of [`Endpoint`], in order, and when it is due (the order of a round).
type EndpointRow = (Uuid, Uuid, String, String, Vec<u8>, String, i64, i64, i64);

impl Endpoint {
    /// The endpoint of a row, its secrets opened ([`crate::sealed`]).
    fn of(r: EndpointRow, at_rest: &AtRest) -> Result<Self, crate::StoreError> {
        let purpose = Purpose::Webhook(r.0);
        let previous = previous_of(&r.5)
            .into_iter()
            .map(|(s, u)| Ok((at_rest.load(&purpose, &s)?, u)))
            .collect::<Result<Vec<_>, crate::StoreError>>()?;
        Ok(Endpoint {
            webhook_id: r.0,
            tenant_id: r.1,
            url: r.2,
            event_types: serde_json::from_str(&r.3).unwrap_or_default(),
            secret: at_rest.load(&purpose, &r.4)?,
            previous,
            position: r.6,
            attempts: r.7,
        })
    }

    fn wants(&self, event_type: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type)
    }
}

/// Why one try failed.
struct Failure {
    status: Option<u16>,
    error: String,
}

/// One try of one event, as the delivery log keeps it.
struct Attempt<'a> {
    event: &'a StoredEvent,
    position: i64,
    /// 1 for the event's first try, 2 for its first retry, …
    number: i64,
    started_at_us: i64,
    duration_ms: i64,
    status: Option<u16>,
    /// Why it failed (the host only, never the URL: a path or query may hold the
    /// receiver's token).
    error: Option<String>,
}

/// The HTTP client for host names, one per endpoint: pinned to the address its host
/// resolved to and that was checked, kept for [`PINNED_FOR`] while the host still
/// resolves to it, so a backlog goes over one kept-alive connection (instead of a new
/// client, connection and TLS handshake for each event). Every send still resolves
/// and checks the host; a client is used only if the address it is pinned to is
/// among the addresses that passed the check this time.
#[derive(Clone, Default)]
struct Pins(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<Uuid, Pinned>>>);

/// A client pinned to one checked address of a host.
struct Pinned {
    host: String,
    addr: SocketAddr,
    client: reqwest::Client,
    made: std::time::Instant,
}

impl Pins {
    /// The endpoint's client for `host`, pinned to one of `checked` (the addresses
    /// `host` resolved to now, each checked): the kept one if it is pinned to one of
    /// them and young enough, else a new one pinned to the first.
    fn client(
        &self,
        webhook: Uuid,
        host: &str,
        checked: &[SocketAddr],
    ) -> Result<reqwest::Client, String> {
        let Some(first) = checked.first().copied() else {
            return Err(format!("{host} resolves to no address"));
        };
        let poisoned = |_| "a sending task panicked".to_owned();
        if let Some(p) = self.0.lock().map_err(poisoned)?.get(&webhook) {
            if p.host == host && checked.contains(&p.addr) && p.made.elapsed() < PINNED_FOR {
                return Ok(p.client.clone());
            }
        }
        // Built without the lock held (it loads the TLS roots: milliseconds in which the
        // other endpoints' tasks would wait for theirs).
        let client = client_builder()
            .resolve(host, first)
            .build()
            .map_err(|e| format!("no HTTP client: {e}"))?;
        self.0.lock().map_err(poisoned)?.insert(
            webhook,
            Pinned {
                host: host.to_owned(),
                addr: first,
                client: client.clone(),
                made: std::time::Instant::now(),
            },
        );
        Ok(client)
    }

    /// Drops the clients older than [`PINNED_FOR`] (of endpoints deleted or idle).
    fn expire(&self) {
        if let Ok(mut pins) = self.0.lock() {
            pins.retain(|_, p| p.made.elapsed() < PINNED_FOR);
        }
    }
}

/// How every webhook client is built: no redirects, no proxy (it would resolve the host
/// again, not connect to the address checked), 10 s to answer.
fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(ANSWER_WITHIN)
        .connect_timeout(ANSWER_WITHIN)
        .user_agent(concat!("trustfold-webhooks/", env!("CARGO_PKG_VERSION")))
}

/// The clients a sender uses: one for literal addresses, one pinned per endpoint for
/// host names.
#[derive(Clone)]
struct Clients {
    literal: reqwest::Client,
    pins: Pins,
}

/// Sends webhooks until shutdown: after appends (a notice) and every second (retries).
pub(crate) async fn run(
    state: AppState,
    config: WebhookConfig,
    mut notices: broadcast::Receiver<Notice>,
    mut shutdown: watch::Receiver<bool>,
) {
    let client = match client_builder().build() {
        Ok(literal) => Clients {
            literal,
            pins: Pins::default(),
        },
        Err(e) => {
            tracing::error!(error = %e, "webhooks cannot be sent: no HTTP client");
            return;
        }
    };
    // Whether the last round found endpoints: without any, appends do not wake the
    // sender (a tenant's first endpoint is found by the next timed round).
    let mut any = true;
    // The endpoints being served: a round does not wait for them (a slow receiver must
    // not hold back the others), and starts no second task for one of them.
    let mut sending = Sending::default();
    // Every second whatever the appends do (a sleep started afresh on each skipped
    // notice would never end under steady traffic, and a first endpoint would wait for
    // a quiet second to be found).
    let mut timed = tokio::time::interval(Duration::from_secs(1));
    timed.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = notices.recv() => {
                if matches!(r, Err(broadcast::error::RecvError::Closed)) {
                    return;
                }
                if !any {
                    continue;
                }
                // Let the appends of the next moments join this round.
                tokio::time::sleep(Duration::from_millis(20)).await;
                while notices.try_recv().is_ok() {}
            }
            _ = timed.tick() => {}
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
        while let Some(done) = sending.tasks.try_join_next() {
            sending.done(done);
        }
        // Pauses long over (an endpoint deleted, or served since by another process).
        let now = std::time::Instant::now();
        sending
            .paused
            .retain(|_, (until, _)| now < *until + Duration::from_secs(120));
        client.pins.expire();
        match round(&state, &config, &client, &mut sending).await {
            Ok(found) => any = found,
            Err(e) => tracing::warn!(error = %e, "webhooks: a round failed; trying again"),
        }
    }
    sending.tasks.shutdown().await;
}

/// The endpoints being served, each by one task, at most [`CONCURRENT`] sending at once.
struct Sending {
    /// Each task yields its endpoint and whether its bookkeeping failed.
    tasks: JoinSet<(Uuid, bool)>,
    /// Each endpoint's task and the endpoint's tenant.
    endpoints: std::collections::HashMap<Uuid, (tokio::task::Id, Uuid)>,
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    /// Each tenant's slots ([`PER_TENANT`]), taken before one of `permits`, and its
    /// number of tasks (the entry goes with its last task): its endpoints queue there,
    /// first come first served.
    tenants: std::collections::HashMap<Uuid, (std::sync::Arc<tokio::sync::Semaphore>, usize)>,
    /// Endpoints whose last turn could not record what it did (the database refused a
    /// write: its position, its failure): left alone until then, the pause doubling
    /// from 1 s to a minute — else each round, every second, would send the same event
    /// again, or retry a failing receiver without its backoff.
    paused: std::collections::HashMap<Uuid, (std::time::Instant, Duration)>,
}

impl Default for Sending {
    fn default() -> Self {
        Sending {
            tasks: JoinSet::new(),
            endpoints: std::collections::HashMap::new(),
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(CONCURRENT)),
            tenants: std::collections::HashMap::new(),
            paused: std::collections::HashMap::new(),
        }
    }
}

impl Sending {
    /// Notes that an endpoint's task ended.
    fn done(&mut self, done: Result<(Uuid, bool), tokio::task::JoinError>) {
        match done {
            Ok((id, failed)) => {
                if let Some((_, tenant)) = self.endpoints.remove(&id) {
                    self.ended(tenant);
                }
                if failed {
                    let pause = self
                        .paused
                        .get(&id)
                        .map_or(Duration::from_secs(1), |(_, p)| {
                            (*p * 2).min(Duration::from_secs(60))
                        });
                    self.paused
                        .insert(id, (std::time::Instant::now() + pause, pause));
                } else {
                    self.paused.remove(&id);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "webhooks: a sending task failed");
                let found = self
                    .endpoints
                    .iter()
                    .find(|(_, (task, _))| *task == e.id())
                    .map(|(id, (_, tenant))| (*id, *tenant));
                if let Some((id, tenant)) = found {
                    self.endpoints.remove(&id);
                    self.ended(tenant);
                }
            }
        }
    }

    /// The slots of `tenant`'s endpoints, for a new task of it.
    fn tenant_permits(&mut self, tenant: Uuid) -> std::sync::Arc<tokio::sync::Semaphore> {
        let (slots, tasks) = self.tenants.entry(tenant).or_insert_with(|| {
            (
                std::sync::Arc::new(tokio::sync::Semaphore::new(PER_TENANT)),
                0,
            )
        });
        *tasks += 1;
        slots.clone()
    }

    /// Notes that a task of `tenant` ended; its slots go with its last.
    fn ended(&mut self, tenant: Uuid) {
        if let Some((_, tasks)) = self.tenants.get_mut(&tenant) {
            *tasks = tasks.saturating_sub(1);
            if *tasks == 0 {
                self.tenants.remove(&tenant);
            }
        }
    }
}

/// One round: every endpoint due and not being served already gets a task (at most
/// [`CONCURRENT`] of them send at once), until it is sent every event, fails, or has
/// been served for [`SERVE_FOR`]. Whether there are endpoints at all (in this process's view).
async fn round(
    state: &AppState,
    config: &WebhookConfig,
    client: &Clients,
    sending: &mut Sending,
) -> Result<bool, ApiError> {
    if !state.projector.is_leader().await {
        return Ok(false);
    }
    let any: Option<i32> = on_read!(&state.db, pool => {
        sqlx::query_scalar("SELECT 1 FROM webhooks LIMIT 1")
            .fetch_optional(pool)
            .await
            .map_err(crate::StoreError::from)?
    });
    if any.is_none() {
        return Ok(false);
    }
    // Only the endpoints with events to send (an idle one costs nothing but this
    // indexed look), page by page by (moment, id): however many there are, none is
    // left out.
    let now = now_us();
    let mut after = (i64::MIN, Uuid::nil());
    loop {
        let due: Vec<EndpointRow> = on_read!(&state.db, pool => {
            sqlx::query_as(
                "SELECT w.webhook_id, w.tenant_id, w.url, w.event_types, w.secret, \
                 w.previous_secrets, w.position, w.attempts, w.next_attempt_at_us \
                 FROM webhooks w \
                 WHERE w.next_attempt_at_us <= $1 \
                 AND (w.next_attempt_at_us > $2 OR (w.next_attempt_at_us = $2 AND w.webhook_id > $3)) \
                 AND EXISTS (SELECT 1 FROM events e \
                 WHERE e.tenant_id = w.tenant_id AND e.position > w.position) \
                 ORDER BY w.next_attempt_at_us, w.webhook_id LIMIT $4",
            )
            .bind(now)
            .bind(after.0)
            .bind(after.1)
            .bind(DUE_PAGE)
            .fetch_all(pool)
            .await
            .map_err(crate::StoreError::from)?
        });
        let last_page = due.len() < usize::try_from(DUE_PAGE).unwrap_or(usize::MAX);
        for row in due {
            after = (row.8, row.0);
            let row_tenant = row.1;
            if sending.endpoints.contains_key(&row.0)
                || sending
                    .paused
                    .get(&row.0)
                    .is_some_and(|(until, _)| *until > std::time::Instant::now())
            {
                continue;
            }
            if let Err(e) = Endpoint::of(row, &state.at_rest) {
                // A secret sealed under a key this process does not have (another
                // process of the database was given one): not sent from here.
                tracing::error!(webhook = %after.1, error = %e,
                    "webhooks: cannot open an endpoint's secret; not sending to it");
                continue;
            }
            let (id, tenant) = (after.1, row_tenant);
            let (state, config, client) = (state.clone(), config.clone(), client.clone());
            let (permits, tenant_permits) =
                (sending.permits.clone(), sending.tenant_permits(tenant));
            let task = sending.tasks.spawn(async move {
                // The tenant's slot first: while waiting for it, a task holds none of
                // the slots the other tenants share.
                let Ok(_slot) = tenant_permits.acquire().await else {
                    return (id, false);
                };
                let Ok(_permit) = permits.acquire().await else {
                    return (id, false);
                };
                // Read again once its turn came (it may have waited behind slow
                // receivers): an endpoint deleted meanwhile gets nothing, one whose
                // secret was rotated is signed with the new one.
                let ep = match endpoint_now(&state, id).await {
                    Ok(Some(ep)) => ep,
                    Ok(None) => return (id, false),
                    Err(e) => {
                        tracing::warn!(webhook = %id, error = %e, "webhooks: could not read an endpoint");
                        return (id, true);
                    }
                };
                match serve(&state, &config, &client, ep).await {
                    Ok(()) => (id, false),
                    Err(e) => {
                        tracing::warn!(webhook = %id, error = %e, "webhooks: could not serve an endpoint; pausing it");
                        (id, true)
                    }
                }
            });
            sending.endpoints.insert(id, (task.id(), tenant));
        }
        if last_page {
            break;
        }
    }
    Ok(true)
}

/// Endpoint `id` as it is stored now; `None` once deleted.
async fn endpoint_now(state: &AppState, id: Uuid) -> Result<Option<Endpoint>, ApiError> {
    let row: Option<EndpointRow> = on_read!(&state.db, pool => {
        sqlx::query_as(
            "SELECT webhook_id, tenant_id, url, event_types, secret, previous_secrets, \
             position, attempts, next_attempt_at_us FROM webhooks WHERE webhook_id = $1",
        )
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(crate::StoreError::from)?
    });
    Ok(row.map(|r| Endpoint::of(r, &state.at_rest)).transpose()?)
}

/// Sends one endpoint the events after its position, page after page, until one fails,
/// none is left, or its turn ([`SERVE_FOR`]) ends.
async fn serve(
    state: &AppState,
    config: &WebhookConfig,
    client: &Clients,
    mut ep: Endpoint,
) -> Result<(), ApiError> {
    let started = std::time::Instant::now();
    // Events the endpoint does not want are passed over in one move per run of them
    // (made before the next wanted one is sent, or at the end of the page or turn),
    // not one compare-and-set each.
    let mut passed: Option<i64> = None;
    macro_rules! pass_over {
        () => {
            if let Some(position) = passed.take() {
                if !moved(state, config, &ep, position, None).await? {
                    return Ok(());
                }
                ep.position = position;
            }
        };
    }
    loop {
        let after = u64::try_from(ep.position).unwrap_or(0);
        let events = state.store.read_all(ep.tenant_id, after, PER_READ).await?;
        for e in &events {
            if started.elapsed() >= SERVE_FOR {
                // The next round goes on; other endpoints take their turn meanwhile.
                pass_over!();
                return Ok(());
            }
            let position = i64::try_from(e.position).unwrap_or(i64::MAX);
            if !ep.wants(&e.event_type) {
                passed = Some(position);
                continue;
            }
            pass_over!();
            let started_at_us = now_us();
            let clock = std::time::Instant::now();
            let sent = send(client, config, &ep, e).await;
            let mut attempt = Attempt {
                event: e,
                position,
                number: ep.attempts.saturating_add(1),
                started_at_us,
                duration_ms: i64::try_from(clock.elapsed().as_millis()).unwrap_or(i64::MAX),
                status: None,
                error: None,
            };
            match sent {
                Ok(status) => {
                    attempt.status = Some(status);
                    if !moved(state, config, &ep, position, Some(&attempt)).await? {
                        return Ok(());
                    }
                    ep.position = position;
                    ep.attempts = 0;
                }
                Err(f) => {
                    attempt.status = f.status;
                    attempt.error = Some(f.error);
                    failed(state, config, &ep, attempt).await?;
                    return Ok(());
                }
            }
        }
        pass_over!();
        if events.len() < usize::try_from(PER_READ).unwrap_or(usize::MAX) {
            return Ok(());
        }
    }
}

/// Writes a try into the endpoint's delivery log in the transaction `$tx`: numbered
/// one past the endpoint's last (taken from `webhooks.deliveries`, whose row lock also
/// orders two senders' tries of one endpoint), and the tries older than the newest
/// `keep` dropped (the one that just fell out, usually: an indexed delete of one row).
/// Nothing when the endpoint was deleted meanwhile.
macro_rules! record_in {
    ($tx:expr, $ep:expr, $a:expr, $keep:expr) => {{
        let (ep, a): (&Endpoint, &Attempt<'_>) = ($ep, $a);
        let seq: Option<i64> = sqlx::query_scalar(
            "UPDATE webhooks SET deliveries = deliveries + 1 WHERE webhook_id = $1 \
             RETURNING deliveries",
        )
        .bind(ep.webhook_id)
        .fetch_optional(&mut *$tx)
        .await
        .map_err(crate::StoreError::from)?;
        if let Some(seq) = seq {
            sqlx::query(
                "INSERT INTO webhook_deliveries (webhook_id, seq, tenant_id, event_id, \
                 position, event_type, attempt, started_at_us, duration_ms, status, error, \
                 succeeded) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind(ep.webhook_id)
            .bind(seq)
            .bind(ep.tenant_id)
            .bind(a.event.event_id)
            .bind(a.position)
            .bind(&a.event.event_type)
            .bind(a.number)
            .bind(a.started_at_us)
            .bind(a.duration_ms)
            .bind(a.status.map(i64::from))
            .bind(a.error.as_deref())
            .bind(a.error.is_none())
            .execute(&mut *$tx)
            .await
            .map_err(crate::StoreError::from)?;
            sqlx::query("DELETE FROM webhook_deliveries WHERE webhook_id = $1 AND seq <= $2")
                .bind(ep.webhook_id)
                .bind(seq.saturating_sub(i64::from($keep)))
                .execute(&mut *$tx)
                .await
                .map_err(crate::StoreError::from)?;
        }
    }};
}

/// Moves an endpoint past an event (compare-and-set on its position; clears its
/// failure), and logs the try that was answered 2xx, in one transaction. `false`: it
/// was deleted or moved by another process.
async fn moved(
    state: &AppState,
    config: &WebhookConfig,
    ep: &Endpoint,
    position: i64,
    attempt: Option<&Attempt<'_>>,
) -> Result<bool, ApiError> {
    let status = attempt.and_then(|a| a.status);
    let done = on_write!(&state.db, pool => {
        let mut tx = pool.begin().await.map_err(crate::StoreError::from)?;
        if let Some(a) = attempt {
            record_in!(tx, ep, a, config.keep_deliveries);
        }
        let done = sqlx::query(
            "UPDATE webhooks SET position = $1, attempts = 0, next_attempt_at_us = 0, \
             last_status = COALESCE($2, last_status), last_error = NULL, \
             failing_since_us = NULL WHERE webhook_id = $3 AND position = $4",
        )
        .bind(position)
        .bind(status.map(i64::from))
        .bind(ep.webhook_id)
        .bind(ep.position)
        .execute(&mut *tx)
        .await
        .map_err(crate::StoreError::from)?
        .rows_affected();
        tx.commit().await.map_err(crate::StoreError::from)?;
        done
    });
    Ok(done == 1)
}

/// Holds a failing endpoint at its event until the next try, and logs the try, in one
/// transaction.
async fn failed(
    state: &AppState,
    config: &WebhookConfig,
    ep: &Endpoint,
    a: Attempt<'_>,
) -> Result<(), ApiError> {
    let error = a.error.as_deref().unwrap_or_default();
    let attempts = ep.attempts.saturating_add(1);
    let pause = retry_pause(config.retry_first, attempts);
    let now = now_us();
    let again = now.saturating_add(i64::try_from(pause.as_micros()).unwrap_or(i64::MAX));
    // The host only: a URL's path or query may hold the receiver's token.
    let host = reqwest::Url::parse(&ep.url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    tracing::warn!(webhook = %ep.webhook_id, %host, attempts, %error,
        retry_in = ?pause, "webhooks: an endpoint failed");
    on_write!(&state.db, pool => {
        let mut tx = pool.begin().await.map_err(crate::StoreError::from)?;
        record_in!(tx, ep, &a, config.keep_deliveries);
        sqlx::query(
            "UPDATE webhooks SET attempts = $1, next_attempt_at_us = $2, last_status = $3, \
             last_error = $4, failing_since_us = COALESCE(failing_since_us, $5) \
             WHERE webhook_id = $6 AND position = $7",
        )
        .bind(attempts)
        .bind(again)
        .bind(a.status.map(i64::from))
        .bind(error)
        .bind(now)
        .bind(ep.webhook_id)
        .bind(ep.position)
        .execute(&mut *tx)
        .await
        .map_err(crate::StoreError::from)?;
        tx.commit().await.map_err(crate::StoreError::from)?;
    });
    Ok(())
}

/// The pause after the `attempts`-th failure in a row: `first`, then four times longer
/// each time, at most [`RETRY_MAX`].
pub fn retry_pause(first: Duration, attempts: i64) -> Duration {
    let times = u32::try_from(attempts.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    first
        .saturating_mul(4u32.saturating_pow(times))
        .min(RETRY_MAX)
}

/// The body of the request for one event.
fn body(e: &StoredEvent) -> Vec<u8> {
    let at = e
        .recorded_at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let mut out = Vec::with_capacity(e.body.len() + 300);
    out.extend_from_slice(
        format!(
            "{{\"type\":{},\"timestamp\":\"{}\",\"data\":{{\"tenant_id\":\"{}\",\"payment_id\":\"{}\",\
             \"seq\":{},\"position\":{},\"hash\":\"{}\",\"event\":",
            serde_json::to_string(&e.event_type).unwrap_or_default(),
            Timestamp::from_unix_millis(at),
            e.tenant_id,
            e.stream_id,
            e.seq,
            e.position,
            hex::encode(e.hash),
        )
        .as_bytes(),
    );
    out.extend_from_slice(&e.body);
    out.extend_from_slice(b"}}");
    out
}

/// One try: the address checked, the request signed and sent; the 2xx status, or why not.
async fn send(
    client: &Clients,
    config: &WebhookConfig,
    ep: &Endpoint,
    e: &StoredEvent,
) -> Result<u16, Failure> {
    let fail = |error: String| Failure {
        status: None,
        error,
    };
    let url = reqwest::Url::parse(&ep.url).map_err(|e| fail(format!("bad URL: {e}")))?;
    let host = url.host_str().unwrap_or_default().to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    // Resolve, check, and connect to the address checked (no second lookup that could
    // answer differently).
    let lookup = tokio::time::timeout(
        ANSWER_WITHIN,
        tokio::net::lookup_host((host.trim_start_matches('[').trim_end_matches(']'), port)),
    )
    .await
    .map_err(|_| fail(format!("resolving {host} took over 10 s")))?
    .map_err(|e| fail(format!("cannot resolve {host}: {e}")))?;
    let addrs: Vec<SocketAddr> = lookup.collect();
    let checked: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|a| config.allow_private || !is_private(a.ip()))
        .collect();
    if checked.is_empty() {
        return Err(fail(format!(
            "{host} resolves to no public address ({}); webhooks go to public addresses only",
            addrs
                .iter()
                .map(|a| a.ip().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    // A host name: connect only to an address checked now (a client pinned to it). A
    // literal address was checked above as it is.
    let client = if url.domain().is_some() {
        client
            .pins
            .client(ep.webhook_id, &host, &checked)
            .map_err(fail)?
    } else {
        client.literal.clone()
    };
    let body = body(e);
    let id = e.event_id.to_string();
    let ts = now_us() / 1_000_000;
    let mut signature = sign(&ep.secret, &id, ts, &body);
    let now = now_us();
    for (old, until) in &ep.previous {
        if *until > now {
            signature.push(' ');
            signature.push_str(&sign(old, &id, ts, &body));
        }
    }
    let res = client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await
        .map_err(|e| {
            fail(if e.is_timeout() {
                "no answer within 10 s".to_owned()
            } else {
                format!("request failed: {}", without_url(e))
            })
        })?;
    let status = res.status();
    if status.is_success() {
        Ok(status.as_u16())
    } else {
        Err(Failure {
            status: Some(status.as_u16()),
            error: format!("answered {status}"),
        })
    }
}

/// A reqwest error and its causes, without the URL (kept in the row already).
fn without_url(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The ids of the event types, for checking an endpoint's filter.
pub(crate) fn known_event_type(name: &str) -> bool {
    trustfold_core::event::EventType::ALL
        .iter()
        .any(|t| t.name() == name)
}

/// An endpoint as `GET /v1/webhooks` shows it.
pub(crate) fn listed(row: &ListedRow) -> serde_json::Value {
    let (id, url, types, position, attempts, next, status, error, failing, created) = row;
    let time = |us: Option<i64>| {
        us.filter(|u| *u > 0)
            .map(|u| Timestamp::from_unix_millis(u / 1000).to_string())
    };
    let types: Vec<String> = serde_json::from_str(types).unwrap_or_default();
    serde_json::json!({
        "webhook_id": id,
        "url": url,
        "event_types": types,
        "position": position,
        "status": if failing.is_some() { "failing" } else { "delivering" },
        "attempts": attempts,
        "next_attempt_at": time(Some(*next)),
        "last_status": status,
        "last_error": error,
        "failing_since": time(*failing),
        "created_at": time(Some(*created)),
    })
}

/// A try as `GET /v1/webhooks/{webhook_id}/deliveries` shows it.
pub(crate) fn delivery(webhook: Uuid, row: &DeliveryRow) -> serde_json::Value {
    let (seq, tenant, event, position, event_type, attempt, started, ms, status, error, ok) = row;
    serde_json::json!({
        "seq": seq,
        "webhook_id": webhook,
        "tenant_id": tenant,
        "event_id": event,
        "position": position,
        "event_type": event_type,
        "attempt": attempt,
        "started_at": time_us(*started),
        "duration_ms": ms,
        "status": status,
        "error": error,
        "succeeded": ok,
    })
}

/// RFC 3339 in UTC with microseconds, of Unix microseconds.
pub(crate) fn time_us(us: i64) -> String {
    let secs = Timestamp::from_unix_millis(us.div_euclid(1_000_000).saturating_mul(1000));
    let secs = secs.to_string();
    format!(
        "{}.{:06}Z",
        secs.trim_end_matches('Z'),
        us.rem_euclid(1_000_000)
    )
}

/// The columns of a logged try, in order ([`DELIVERY`]).
pub(crate) type DeliveryRow = (
    i64,
    Uuid,
    Uuid,
    i64,
    String,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<String>,
    bool,
);

/// The select list of [`DeliveryRow`].
pub(crate) const DELIVERY: &str = "seq, tenant_id, event_id, position, event_type, attempt, \
    started_at_us, duration_ms, status, error, succeeded";

/// The columns `GET /v1/webhooks` reads, in order ([`LISTED`]).
pub(crate) type ListedRow = (
    Uuid,
    String,
    String,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<String>,
    Option<i64>,
    i64,
);

/// The select list of [`ListedRow`].
pub(crate) const LISTED: &str = "webhook_id, url, event_types, position, attempts, \
    next_attempt_at_us, last_status, last_error, failing_since_us, created_at_us";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_have_microseconds() {
        assert_eq!(
            time_us(1_795_824_000_000_001),
            "2026-11-28T00:00:00.000001Z"
        );
        assert_eq!(
            time_us(1_795_824_000_123_456),
            "2026-11-28T00:00:00.123456Z"
        );
        assert_eq!(time_us(0), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn retired_secrets_sign_until_their_time_and_no_more_than_four() {
        let now = 1_000;
        let none = retire("[]", b"s0", now + 10, now);
        assert_eq!(previous_of(&none), vec![(b"s0".to_vec(), now + 10)]);
        // Another rotation in the overlap keeps both; an expired one goes.
        let two = retire(&none, b"s1", now + 20, now + 5);
        assert_eq!(
            previous_of(&two),
            vec![(b"s1".to_vec(), now + 20), (b"s0".to_vec(), now + 10)]
        );
        let later = retire(&two, b"s2", now + 30, now + 15);
        assert_eq!(
            previous_of(&later),
            vec![(b"s2".to_vec(), now + 30), (b"s1".to_vec(), now + 20)]
        );
        // At most four, the latest to expire; an overlap of 0 retires nothing.
        let mut list = "[]".to_owned();
        for i in 0..6u8 {
            list = retire(&list, &[i], now + 100 + i64::from(i), now);
        }
        let kept: Vec<u8> = previous_of(&list).iter().map(|(s, _)| s[0]).collect();
        assert_eq!(kept, vec![5, 4, 3, 2]);
        assert_eq!(retire("[]", b"x", now, now), "[]");
        // Unreadable text is no secrets (never a panic).
        assert!(previous_of("not json").is_empty());
    }
}
