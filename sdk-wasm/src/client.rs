//! The network client: fetch a payment's history incrementally, verify it (hash chain,
//! rules, and the server's signed head against a pinned key), send commands with
//! idempotency keys, and follow live updates over Server-Sent Events with resume.
//!
//! ## Wire contract (HTTP API `/v1`)
//!
//! - `GET {base}/v1/payments/{id}/events?after=SEQ` →
//!   `{"events":[{"hash","event"}…], "has_more":bool, "next":SEQ}`; pages are fetched
//!   until `has_more` is false. A page may carry the server's `"signed_head"`
//!   (`{"stream","seq","hash","signature"}`); with a pinned key the client requires
//!   one and checks it against the records it holds.
//!   A participant from whose roles the payment's policy hides something gets a
//!   redacted view instead (`"redacted": true`, records `{"seq","event"}`): it cannot
//!   be verified, so `sync()` refuses it with `redacted_history`, and `paymentView()`
//!   reads it together with `GET {base}/v1/payments/{id}` (the redacted state). A
//!   `viewFeed()` reads it again whenever the stream (below) shows an event past the
//!   view's version: for such a participant the stream's `data` is the redacted
//!   event, its `id` still the sequence number.
//! - `POST {base}/v1/payments/{id}/commands` with `{"command": …}` as body (a bare
//!   command is wrapped; with a participant token the server takes the actor from it),
//!   `Idempotency-Key`, optionally `If-Match: "<version>"`; errors are RFC 9457
//!   problem details whose `code` becomes the thrown error's `code`. With a pinned key
//!   the command is sent with a fresh `nonce` and its answer must be signed for it.
//! - `GET {base}/v1/payments/{id}/stream?after=SEQ` (Server-Sent Events): each
//!   message's `data` is one record, its `id` the sequence number, its `event` name the
//!   event type (the client listens to every type of this build). The browser resumes
//!   a dropped stream itself with `Last-Event-ID`; when it gives up, the client opens a
//!   new stream `after` the last sequence it holds.
//! - Participant tokens go in `Authorization: Bearer …`, and as `access_token` in the
//!   stream's query (an `EventSource` cannot send headers).
//! - Answers are read chunk by chunk up to 16 MiB, a stream's message up to 4 Mi
//!   UTF-16 units (its id up to 20): more is `response_too_large` (a live feed stops with it), before
//!   more is copied into the module's memory. An error's body past 64 KiB is not read
//!   (the error is `http_{status}`).
//!
//! Every record is verified as it arrives: its bytes hash to its `hash`, its `prev` is
//! the hash held for the sequence before, and it folds under the rules. Records the
//! client already holds (a replay after resume) are checked for equality and skipped.
//! With a pinned key the server's signed head must cover every record fetched (a head
//! newer than the pages makes the client fetch again; records past it are refused), and
//! a live message makes the feed sync rather than take the record from the message,
//! so nothing unsigned is ever reported. A sync works on a copy of the feed and keeps
//! it only if it extends what the feed holds by then.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use futures_util::StreamExt;
use gloo_net::eventsource::futures::EventSource;
use gloo_net::http::{Request, RequestBuilder, Response};
use trustfold_core::envelope::Envelope;
use trustfold_core::event::EventType;
use trustfold_core::fold;
use trustfold_core::hash::Hash;
use trustfold_core::history::{self, PublicKey, SignedHead};
use trustfold_core::id::PaymentId;
use trustfold_core::json;
use trustfold_core::state::PaymentState;
use trustfold_core::Error;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{future_to_promise, spawn_local};

use crate::error::{js_error, number_text, string_prop, to_js, whole, IntoJs, JsResult};
use crate::history::state_json;

#[wasm_bindgen(typescript_custom_section)]
const TS_CLIENT: &'static str = r#"
/** Options of `new Client(...)`. */
export interface ClientOptions {
  /** Server base URL, e.g. "https://pay.example.com". */
  baseUrl: string;
  /** A participant token (sent as a Bearer token). */
  token?: string;
  /** The server's Ed25519 public key (64 hex digits): require and check signed heads. */
  serverKey?: string;
  /**
   * How long one request may take, answer included, in milliseconds (default 30000,
   * at most 600000); a request without an answer by then fails with `network_error`.
   */
  timeoutMs?: number;
  /**
   * How long a live feed trusts a silent stream, in milliseconds (default 60000, from
   * 1000 to 3600000): after that long without a message it reads over HTTP, and if the
   * payment moved on meanwhile (a connection that died without closing, as some
   * proxies and mobile networks leave them) it reports what it missed and reconnects.
   */
  liveCheckMs?: number;
}
"#;

/// Checks that `value` can be sent as an HTTP header value (visible ASCII and spaces):
/// `fetch` refuses anything else, and inside a request's future that refusal would
/// escape as an uncaught exception instead of rejecting the promise.
fn header_value(what: &str, value: &str) -> JsResult<()> {
    match value
        .bytes()
        .position(|b| !(b == b' ' || b.is_ascii_graphic()))
    {
        None => Ok(()),
        Some(i) => Err(js_error(
            "invalid_input",
            &format!(
                "{what} must be visible ASCII characters (it is sent as an HTTP header); \
                 character {} is not",
                value[..i].chars().count() + 1
            ),
        )),
    }
}

/// The option `name` of the client's options: milliseconds from `min` to `max`, or
/// `default` when it is not given.
/// (Bounds are whole numbers: formatting a float would pull Rust's float printing into
/// the module.)
fn millis(options: &JsValue, name: &str, default: f64, min: u32, max: u32) -> JsResult<f64> {
    let value = js_sys::Reflect::get(options, &name.into()).map_err(|_| {
        js_error(
            "invalid_input",
            &format!("client options: reading `{name}` threw"),
        )
    })?;
    if value.is_undefined() || value.is_null() {
        return Ok(default);
    }
    value
        .as_f64()
        .filter(|ms| ms.is_finite() && *ms >= f64::from(min) && *ms <= f64::from(max))
        .ok_or_else(|| {
            js_error(
                "invalid_input",
                &format!(
                    "client options: `{name}` must be a number of milliseconds from {min} to {max}"
                ),
            )
        })
}

/// The options a `Client` takes.
const CLIENT_OPTIONS: &[&str] = &["baseUrl", "token", "serverKey", "timeoutMs", "liveCheckMs"];

/// Connection settings shared by a client and its feeds.
#[derive(Clone)]
struct Conn {
    base: String,
    token: Option<String>,
    key: Option<PublicKey>,
    timeout_ms: f64,
    /// How long a live feed trusts a silent stream before it reads over HTTP.
    live_check_ms: f64,
}

/// Requests wait this long for their answer unless the options say otherwise.
const DEFAULT_TIMEOUT_MS: f64 = 30_000.0;
/// A live feed reads over HTTP after this long without a message, unless the options
/// say otherwise.
const DEFAULT_LIVE_CHECK_MS: f64 = 60_000.0;

impl Conn {
    fn url(&self, payment: &PaymentId, rest: &str) -> String {
        format!("{}/v1/payments/{payment}{rest}", self.base)
    }

    fn auth(&self, b: RequestBuilder) -> RequestBuilder {
        match &self.token {
            Some(t) => b.header("Authorization", &format!("Bearer {t}")),
            None => b,
        }
    }

    /// `GET` one of the payment's routes (`rest` after `/v1/payments/{id}`): the body,
    /// or the server's problem as an error. With a pinned key the answer must carry
    /// the server's signature of its body and of what was asked, with a fresh nonce
    /// (`Trustfold-Signature`), so no one on the way can change it, replay an older
    /// one, or pass a participant who sees everything a made-up "redacted" view.
    async fn get_signed(&self, payment: &PaymentId, rest: &str) -> Result<String, JsValue> {
        let asked = self.fresh(rest)?;
        let rest = asked.as_str();
        let abort = Abort::new();
        let request = abort.signal(self.auth(Request::get(&self.url(payment, rest))));
        let (body, signature) = within(self.timeout_ms, abort, async move {
            let resp = request.send().await.map_err(net)?;
            let signature = resp.headers().get("trustfold-signature");
            Ok((body_or_problem(resp).await?, signature))
        })
        .await?;
        self.check_signed(payment, rest, &body, signature)?;
        Ok(body)
    }

    /// `what` as asked: with a pinned key, with a fresh random nonce the server signs
    /// with its answer, so that an older answer (an older state or head, hiding what
    /// came after) replayed on the way does not verify for this request.
    fn fresh(&self, what: &str) -> Result<String, JsValue> {
        Ok(match &self.key {
            Some(_) => history::SignedResponse::with_nonce(what, &random_nonce()?),
            None => what.to_owned(),
        })
    }

    /// With a pinned key, checks `signature` (`Trustfold-Signature`) of `body` as the
    /// server's answer to `asked` about `payment` for this client's credential.
    fn check_signed(
        &self,
        payment: &PaymentId,
        asked: &str,
        body: &str,
        signature: Option<String>,
    ) -> Result<(), JsValue> {
        let Some(key) = &self.key else {
            return Ok(());
        };
        let Some(signature) = signature else {
            return Err(js_error(
                "bad_signature",
                "the server's answer carries no signature (Trustfold-Signature), so it \
                 cannot be told from one changed on the way: refused with a pinned key",
            ));
        };
        let credential = self.token.as_deref().unwrap_or("");
        history::SignedResponse::verify(
            key,
            *payment,
            asked,
            credential,
            body.as_bytes(),
            &signature,
        )
        .js()
    }
}

/// 128 random bits as 32 hex digits, from the platform's `crypto.getRandomValues`
/// (browsers, Node 19+, workers).
fn random_nonce() -> Result<String, JsValue> {
    let crypto = js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("crypto"))?;
    let fill = js_sys::Reflect::get(&crypto, &JsValue::from_str("getRandomValues"))
        .ok()
        .and_then(|f| f.dyn_into::<js_sys::Function>().ok())
        .ok_or_else(|| {
            js_error(
                "unsupported",
                "this platform has no crypto.getRandomValues: a pinned key needs one to ask \
                 for fresh, signed answers",
            )
        })?;
    let bytes = js_sys::Uint8Array::new_with_length(16);
    fill.call1(&crypto, &bytes)?;
    Ok(bytes.to_vec().iter().map(|b| format!("{b:02x}")).collect())
}

/// A trustfold server, as seen by one participant.
#[wasm_bindgen]
pub struct Client {
    conn: Conn,
}

#[wasm_bindgen]
impl Client {
    /// A client for `{baseUrl, token?, serverKey?}`.
    #[wasm_bindgen(constructor)]
    pub fn new(
        #[wasm_bindgen(unchecked_param_type = "ClientOptions")] options: JsValue,
    ) -> JsResult<Client> {
        if !options.is_object() {
            return Err(js_error(
                "invalid_input",
                "client options: expected an object {baseUrl, token?, serverKey?}",
            ));
        }
        let what = "client options";
        // A misspelt option must not pass silently: `serverkey` would turn off the
        // pinned key's check.
        for name in js_sys::Object::keys(options.unchecked_ref::<js_sys::Object>()).iter() {
            let name = name.as_string().unwrap_or_default();
            if !CLIENT_OPTIONS.contains(&name.as_str()) {
                let near = CLIENT_OPTIONS
                    .iter()
                    .find(|o| o.eq_ignore_ascii_case(&name))
                    .map(|o| format!(" (did you mean `{o}`?)"))
                    .unwrap_or_default();
                return Err(js_error(
                    "invalid_input",
                    &format!(
                        "client options: unknown option `{}`{near}; the options are {}",
                        trustfold_core::error::echo(&name),
                        CLIENT_OPTIONS.join(", ")
                    ),
                ));
            }
        }
        let base = string_prop(&options, "baseUrl", what)?
            .ok_or_else(|| js_error("invalid_input", "client options: `baseUrl` is required"))?;
        base_url(&base)?;
        let key = string_prop(&options, "serverKey", what)?
            .map(|k| k.parse::<PublicKey>())
            .transpose()
            .js()?;
        let token = string_prop(&options, "token", what)?;
        if let Some(t) = &token {
            header_value("client options: `token`", t)?;
        }
        let timeout_ms = millis(&options, "timeoutMs", DEFAULT_TIMEOUT_MS, 1, 600_000)?;
        let live_check_ms = millis(
            &options,
            "liveCheckMs",
            DEFAULT_LIVE_CHECK_MS,
            1_000,
            3_600_000,
        )?;
        Ok(Client {
            conn: Conn {
                base: base.trim_end_matches('/').to_string(),
                token,
                key,
                timeout_ms,
                live_check_ms,
            },
        })
    }

    /// A feed of one payment: empty until `sync()` or `live()`.
    pub fn payment(
        &self,
        #[wasm_bindgen(js_name = paymentId)] payment_id: &str,
    ) -> JsResult<PaymentFeed> {
        let payment: PaymentId = payment_id.parse().js()?;
        Ok(PaymentFeed {
            inner: Rc::new(Feed {
                conn: self.conn.clone(),
                payment,
                mirror: RefCell::new(Mirror::new(payment)),
                link: Link::default(),
            }),
        })
    }

    /// Sends a command; resolves to the server's response body (JSON text). Rejects
    /// with the problem's `code` (and `status`) when the server refuses it. With a
    /// pinned `serverKey` the answer must carry the server's signature for this very
    /// request (a fresh nonce), or it rejects with `bad_signature`: the command may
    /// have been applied, so send it again with the same idempotency key.
    /// `expectedVersion` is sent as `If-Match` so a concurrent change loses cleanly.
    #[wasm_bindgen(js_name = sendCommand, unchecked_return_type = "Promise<string>")]
    pub fn send_command(
        &self,
        #[wasm_bindgen(js_name = paymentId)] payment_id: &str,
        #[wasm_bindgen(js_name = commandJson)] command: String,
        #[wasm_bindgen(js_name = idempotencyKey)] idempotency_key: String,
        #[wasm_bindgen(js_name = expectedVersion)] expected_version: Option<f64>,
    ) -> JsResult<js_sys::Promise> {
        let payment: PaymentId = payment_id.parse().js()?;
        if idempotency_key.is_empty() || idempotency_key.len() > 255 {
            return Err(js_error(
                "invalid_input",
                "idempotencyKey must be 1 to 255 characters",
            ));
        }
        header_value("idempotencyKey", &idempotency_key)?;
        let expected_version = expected_version
            .map(|v| {
                whole(v).ok_or_else(|| {
                    js_error(
                        "invalid_input",
                        &format!(
                            "expectedVersion must be a whole number >= 0, got {}",
                            number_text(v)
                        ),
                    )
                })
            })
            .transpose()?;
        let conn = self.conn.clone();
        Ok(future_to_promise(async move {
            // With a pinned key the answer must be the server's to this very request.
            let asked = conn.fresh("/commands")?;
            let abort = Abort::new();
            let mut b = abort
                .signal(conn.auth(Request::post(&conn.url(&payment, &asked))))
                .header("Content-Type", "application/json")
                .header("Idempotency-Key", &idempotency_key);
            if let Some(v) = expected_version {
                b = b.header("If-Match", &format!("\"{v}\""));
            }
            let request = b.body(request_body(command)?).map_err(net)?;
            let (text, signature) = within(conn.timeout_ms, abort, async move {
                let resp = request.send().await.map_err(net)?;
                let signature = resp.headers().get("trustfold-signature");
                Ok((body_or_problem(resp).await?, signature))
            })
            .await?;
            conn.check_signed(&payment, &asked, &text, signature)?;
            Ok(JsValue::from_str(&text))
        }))
    }

    /// The payment as the server shows it to this participant: `{"state","events"}`
    /// JSON, the state from the server's read model and the events of its history up
    /// to the state's version, both with the policy's redactions for the participant's
    /// roles applied. **Not
    /// verified** against the history: this is for participants from whose roles the
    /// policy hides something (a feed's `sync()` refuses their redacted history with
    /// `redacted_history`); everyone else should follow a verified feed. With a pinned
    /// `serverKey`, every answer it reads must carry the server's signature of its body
    /// (`bad_signature` otherwise): nothing on the way can change it.
    #[wasm_bindgen(js_name = paymentView, unchecked_return_type = "Promise<string>")]
    pub fn payment_view(
        &self,
        #[wasm_bindgen(js_name = paymentId)] payment_id: &str,
    ) -> JsResult<js_sys::Promise> {
        let payment: PaymentId = payment_id.parse().js()?;
        let conn = self.conn.clone();
        Ok(future_to_promise(async move {
            let (view, _) = fetch_view(&conn, &payment).await?;
            Ok(JsValue::from_str(&view))
        }))
    }

    /// A server view of one payment kept up to date: `refresh()` reads it (never
    /// going back to an older version than the one held), `live()` reads it again
    /// whenever the payment's stream shows this participant a new event. **Not
    /// verified**, like `paymentView()`: for participants whose feed `sync()` fails
    /// with `redacted_history`.
    #[wasm_bindgen(js_name = viewFeed)]
    pub fn view_feed(
        &self,
        #[wasm_bindgen(js_name = paymentId)] payment_id: &str,
    ) -> JsResult<PaymentViewFeed> {
        let payment: PaymentId = payment_id.parse().js()?;
        Ok(PaymentViewFeed {
            inner: Rc::new(ViewFeed {
                conn: self.conn.clone(),
                payment,
                view: RefCell::new(None),
                link: Link::default(),
            }),
        })
    }
}

/// `{"state","events"}` as the server shows them to this participant, and the state's
/// version: the state from `GET {base}/v1/payments/{id}`, the events of its history
/// up to that version. Both must be of `payment`.
async fn fetch_view(conn: &Conn, payment: &PaymentId) -> Result<(String, u64), JsValue> {
    let state = conn.get_signed(payment, "").await?;
    let (mut of, mut version) = (None, None);
    for (key, value) in json::object_members(state.as_bytes()).js()? {
        match key.as_str() {
            "payment" => of = Some(json::string(value).js()?),
            "version" => version = Some(json::uint(value).js()?),
            _ => {}
        }
    }
    if of != Some(payment.to_string()) {
        return Err(js_error(
            "invalid_history",
            &format!("the server's state is not of payment {payment}"),
        ));
    }
    let version =
        version.ok_or_else(|| js_error("malformed_json", "the server's state has no `version`"))?;
    let mut out = String::with_capacity(state.len() + 4096);
    out.push_str("{\"state\":");
    out.push_str(state.trim());
    out.push_str(",\"events\":[");
    let (mut after, mut count, mut last) = (0, 0, 0);
    loop {
        let text = conn
            .get_signed(payment, &format!("/events?after={after}"))
            .await?;
        let (n, has_more, next) =
            view_page(&text, payment, (after, version), &mut last, &mut out, count)?;
        count = n;
        if !has_more {
            break;
        }
        match next {
            Some(n) if n > after => after = n,
            _ => {
                return Err(js_error(
                    "invalid_history",
                    "the server said has_more but its `next` does not move forward",
                ))
            }
        }
    }
    out.push_str("]}");
    Ok((out, version))
}

/// A verified mirror of one payment's history, kept up to date by `sync()` and `live()`.
#[wasm_bindgen]
pub struct PaymentFeed {
    inner: Rc<Feed>,
}

struct Feed {
    conn: Conn,
    payment: PaymentId,
    mirror: RefCell<Mirror>,
    link: Link,
}

/// The error for a participant whose roles the policy hides something from: the
/// server sends it a redacted view, which has no hashes to verify or bytes to fold.
fn redacted_history() -> JsValue {
    js_error(
        "redacted_history",
        "the server sends this participant a redacted view of the payment (its policy \
         hides part of it from the participant's roles), which cannot be verified or \
         folded: read it with client.paymentView(paymentId) instead",
    )
}

/// Whether `data` is an event of a redacted view: a verifiable record is
/// `{"hash","event"}`, a view's event has a `redacted` member (`false` for a role that
/// sees only some events but all of each).
fn is_redacted_event(data: &[u8]) -> bool {
    matches!(member(data, "redacted"), Ok(Some(_)))
}

/// The value of the member `key` of the JSON object `doc`, if it has one.
fn member<'a>(doc: &'a [u8], key: &str) -> JsResult<Option<&'a [u8]>> {
    Ok(json::object_members(doc)
        .js()?
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v))
}

/// `paymentView()`'s pages: appends each record's `event` to `out` (comma-separated)
/// up to sequence `upto` (the version of the state read before: later events are left
/// for the next view, so events and state agree); returns `(count, has_more, next)`.
/// Every event must be of `payment`.
fn view_page(
    text: &str,
    payment: &PaymentId,
    (after, upto): (u64, u64),
    last: &mut u64,
    out: &mut String,
    mut count: usize,
) -> JsResult<(usize, bool, Option<u64>)> {
    let page = Page::from_json(text.as_bytes()).js()?;
    let stream = payment.to_string();
    for record in json::array_items(page.events).js()? {
        let event = member(record, "event")?
            .ok_or_else(|| js_error("malformed_json", "a record has no `event` member"))?;
        let (mut of, mut seq) = (None, None);
        for (key, value) in json::object_members(event).js()? {
            match key.as_str() {
                "stream" => of = Some(json::string(value).js()?),
                "seq" => seq = Some(json::uint(value).js()?),
                _ => {}
            }
        }
        if of.as_deref() != Some(stream.as_str()) {
            return Err(js_error(
                "invalid_history",
                &format!("the server sent an event that is not of payment {payment}"),
            ));
        }
        let seq = seq.ok_or_else(|| js_error("malformed_json", "an event has no `seq`"))?;
        // In order, after the page asked for (an event the policy splits per role repeats
        // its seq): a page spliced in from another read does not fit.
        if seq <= after || seq < *last {
            return Err(js_error(
                "invalid_history",
                &format!(
                    "the server sent event {seq} out of order (after {after}, {last} before it)"
                ),
            ));
        }
        *last = seq;
        if seq > upto {
            return Ok((count, false, page.next));
        }
        if count > 0 {
            out.push(',');
        }
        // The items are slices of `text` cut at ASCII delimiters: valid UTF-8.
        out.push_str(
            std::str::from_utf8(event)
                .map_err(|_| js_error("malformed_json", "an event is not valid UTF-8"))?,
        );
        count += 1;
    }
    Ok((count, page.has_more, page.next))
}

/// `sync()`: fetches the records after the ones held, page by page, into a copy of the
/// feed's mirror, verifying each; with a pinned key, then the server's signed head,
/// which must cover every record kept. A head newer than the last page (the payment
/// moved on meanwhile) makes the sync fetch on up to the head's sequence and keep
/// exactly the records it signs (later ones wait for the next sync). The copy replaces
/// the feed's mirror only if it extends what the feed holds by then (a live stream or
/// another sync may have added records meanwhile), so a sync that fails changes
/// nothing, and one that loses a race takes nothing back. `true` when the feed holds
/// more records after it.
async fn sync_pages(feed: &Feed) -> Result<bool, JsValue> {
    let mut staged = feed.mirror.borrow().clone();
    // With a head fetched: the sequence it signs, which the records kept must reach.
    let mut upto: Option<u64> = None;
    let mut kept: Option<SignedHead> = None;
    loop {
        let mut signed: Option<SignedHead> = None;
        loop {
            let after = staged.len();
            if upto.is_some_and(|u| after >= u) {
                break;
            }
            // Signed by the pinned server (when a key is pinned): a page changed on the way
            // to look redacted is `bad_signature`, not a reason to leave the verified feed.
            let text = feed
                .conn
                .get_signed(&feed.payment, &format!("/events?after={after}"))
                .await?;
            let page = Page::from_json(text.as_bytes()).js()?;
            if page.redacted {
                return Err(redacted_history());
            }
            for r in &history::parse(page.events).js()? {
                if upto.is_some_and(|u| staged.len() >= u) {
                    break; // past the signed head: left for the next sync
                }
                staged.append(r.hash, r.event.get()).js()?;
            }
            if page.signed_head.is_some() {
                signed = page.signed_head;
            }
            if !page.has_more {
                break;
            }
            if staged.len() == after {
                return Err(js_error(
                    "invalid_history",
                    "the server said has_more but sent nothing new",
                ));
            }
        }
        let Some(key) = &feed.conn.key else {
            // No head to check against: the history must at least not end inside a
            // command (commands are stored whole, so a server's last page never does).
            if let Some(state) = &staged.state {
                fold::check_complete(state).js()?;
            }
            break;
        };
        let head = match kept.take().or(signed) {
            Some(h) => h,
            None => SignedHead::from_json(
                feed.conn
                    .get_signed(&feed.payment, "/head")
                    .await?
                    .as_bytes(),
            )
            .map_err(|e| {
                Error::BadSignature(format!(
                    "a key is pinned, the event pages carried no signed head, and the \
                         server's /head is not one: {e}"
                ))
            })
            .js()?,
        };
        if upto.is_none() && head.stream == feed.payment && head.seq > staged.len() {
            // Appended after the last page: fetch on to it, then check this head.
            upto = Some(head.seq);
            kept = Some(head);
            continue;
        }
        staged.check_head(feed.payment, &head, key).js()?;
        break;
    }
    let mut m = feed.mirror.borrow_mut();
    let held = m.len();
    if staged.len() < held {
        return Ok(false); // the feed got further meanwhile
    }
    if held > 0 && staged.hashes.get(held as usize - 1) != m.hashes.last() {
        return Err(to_js(&Error::ChainBroken {
            seq: held,
            reason: "the server sent this feed two different histories".into(),
        }));
    }
    *m = staged;
    Ok(m.len() > held)
}

/// The records held of one payment and the state they fold to.
#[derive(Clone)]
struct Mirror {
    payment: PaymentId,
    hashes: Vec<Hash>,
    events: Vec<String>,
    state: Option<PaymentState>,
    /// While the last records are inside a command (taken from a stream's messages
    /// without a key: the command's next event is still to come), the last point where
    /// a command ended: its length and state. What the feed shows (`seq`, `state()`,
    /// `history()`, what `sync()` resolves to, where `live()` starts) stops there.
    settled: Option<(u64, Option<PaymentState>)>,
}

impl Mirror {
    fn new(payment: PaymentId) -> Self {
        Mirror {
            payment,
            hashes: Vec::new(),
            events: Vec::new(),
            state: None,
            settled: None,
        }
    }

    /// The records shown: up to the last point where a command ended.
    fn shown_len(&self) -> u64 {
        self.settled.as_ref().map_or(self.len(), |(len, _)| *len)
    }

    /// The state shown: after the last command that ended.
    fn shown_state(&self) -> Option<&PaymentState> {
        match &self.settled {
            Some((_, state)) => state.as_ref(),
            None => self.state.as_ref(),
        }
    }

    fn len(&self) -> u64 {
        self.hashes.len() as u64
    }

    /// Appends one record after checking its hash, its link and the rules. Returns
    /// false for a record already held (same hash at the same seq).
    fn append(&mut self, hash: Hash, event: &str) -> Result<bool, Error> {
        let next = self.len() + 1;
        let actual = Hash::of(event.as_bytes());
        if actual != hash {
            return Err(Error::ChainBroken {
                seq: next,
                reason: format!(
                    "event bytes hash to {actual}, the record says {hash}: the event was altered"
                ),
            });
        }
        let env = Envelope::from_json(event.as_bytes()).map_err(|e| Error::InvalidHistory {
            seq: next,
            reason: e.to_string(),
        })?;
        // Only the payment asked for: a server must not swap in another one's history.
        if env.stream != self.payment {
            return Err(Error::InvalidHistory {
                seq: next,
                reason: format!(
                    "event belongs to payment {}, not {} (the one asked for)",
                    env.stream, self.payment
                ),
            });
        }
        if env.seq < next {
            let held = usize::try_from(env.seq).ok().and_then(|s| s.checked_sub(1));
            return match held.and_then(|i| self.hashes.get(i)) {
                Some(h) if *h == hash => Ok(false),
                _ => Err(Error::ChainBroken {
                    seq: env.seq,
                    reason: "the server sent a different event for a sequence already held".into(),
                }),
            };
        }
        let prev = self.hashes.last().copied().unwrap_or(Hash::ZERO);
        if env.prev != prev {
            return Err(Error::ChainBroken {
                seq: next,
                reason: format!("prev is {} but the event before it hashes to {prev}: an event was removed, inserted or reordered here", env.prev),
            });
        }
        let before = match &self.state {
            None => self.state.replace(fold::start(&env, hash)?),
            Some(s) => {
                // `apply` leaves the state unusable on error: apply to a copy.
                let mut copy = s.clone();
                fold::apply(&mut copy, &env, hash)?;
                self.state.replace(copy)
            }
        };
        match self.state.as_ref().map(fold::check_complete) {
            // Inside a command: shown as it was where the command began.
            Some(Err(_)) => {
                if self.settled.is_none() {
                    self.settled = Some((self.len(), before));
                }
            }
            _ => self.settled = None,
        }
        self.hashes.push(hash);
        self.events.push(event.to_string());
        Ok(true)
    }

    fn check_head(
        &self,
        payment: PaymentId,
        head: &SignedHead,
        key: &PublicKey,
    ) -> Result<(), Error> {
        head.verify(key)?;
        if head.stream != payment {
            return Err(Error::BadSignature(format!(
                "the signed head is for payment {}, not {payment}",
                head.stream
            )));
        }
        if head.seq < self.len() {
            return Err(Error::ChainBroken {
                seq: head.seq + 1,
                reason: format!(
                    "the server's signed head is at seq {} but it sent {} events: the events \
                     after the signed one are not signed",
                    head.seq,
                    self.len()
                ),
            });
        }
        let held = usize::try_from(head.seq)
            .ok()
            .and_then(|s| s.checked_sub(1));
        match held.and_then(|i| self.hashes.get(i)) {
            // Signed where a command ended: not inside one (`fold::check_complete`).
            Some(h) if *h == head.hash => match &self.state {
                Some(s) => fold::check_complete(s),
                None => Ok(()),
            },
            Some(_) => Err(Error::ChainBroken {
                seq: head.seq,
                reason: "the event at the signed seq differs from the one the server signed".into(),
            }),
            None => Err(Error::ChainBroken {
                seq: head.seq,
                reason: format!(
                    "the signed head is at seq {} but the history has only {} events",
                    head.seq,
                    self.len()
                ),
            }),
        }
    }

    /// The records shown ([`Mirror::shown_len`]) as a history document.
    fn history(&self) -> String {
        let shown = usize::try_from(self.shown_len()).unwrap_or(usize::MAX);
        let records = self.hashes.iter().zip(&self.events).take(shown);
        let mut out =
            String::with_capacity(records.clone().map(|(_, e)| e.len() + 90).sum::<usize>() + 4);
        out.push_str("[\n");
        for (i, (h, e)) in records.enumerate() {
            if i > 0 {
                out.push_str(",\n");
            }
            out.push_str("{\"hash\":\"");
            out.push_str(&h.to_string());
            out.push_str("\",\"event\":");
            out.push_str(e);
            out.push('}');
        }
        out.push_str("\n]\n");
        out
    }
}

/// A page of a payment's events, `{"events":[…],"has_more","next","signed_head"?,
/// "redacted"?}` (other members ignored). `events` is the array's JSON: verifiable
/// records (`history::parse`) or, when `redacted`, a view's `{"seq","event"}`s.
struct Page<'a> {
    events: &'a [u8],
    redacted: bool,
    has_more: bool,
    next: Option<u64>,
    signed_head: Option<SignedHead>,
}

impl<'a> Page<'a> {
    fn from_json(json: &'a [u8]) -> Result<Page<'a>, Error> {
        let mut page = Page {
            events: b"",
            redacted: false,
            has_more: false,
            next: None,
            signed_head: None,
        };
        let mut events = None;
        for (key, value) in json::object_members(json)? {
            match key.as_str() {
                "events" => events = Some(value),
                "redacted" if !json::is_null(value) => page.redacted = json::boolean(value)?,
                "has_more" if !json::is_null(value) => page.has_more = json::boolean(value)?,
                "next" if !json::is_null(value) => page.next = Some(json::uint(value)?),
                "signed_head" if !json::is_null(value) => {
                    page.signed_head = Some(SignedHead::from_json(value)?)
                }
                _ => {}
            }
        }
        page.events =
            events.ok_or_else(|| Error::MalformedJson("the page has no `events` member".into()))?;
        Ok(page)
    }
}

#[wasm_bindgen]
impl PaymentFeed {
    /// The sequence number of the last record held (0 when empty) where a command
    /// ended: without a pinned key, records of a command taken from the stream count
    /// once its last event is held.
    #[wasm_bindgen(getter)]
    pub fn seq(&self) -> f64 {
        self.inner.mirror.borrow().shown_len() as f64
    }

    /// The state at `seq`, as canonical JSON (`undefined` when empty).
    pub fn state(&self) -> Option<String> {
        self.inner.mirror.borrow().shown_state().map(state_json)
    }

    /// The records held up to `seq`, as a history document (for `replay`, `view`,
    /// `decide`…).
    pub fn history(&self) -> String {
        self.inner.mirror.borrow().history()
    }

    /// Fetches the records after the last one held, page by page, verifying each (and,
    /// with a pinned key, the signed head over all of them; without one, that they do
    /// not end inside a command, `invalid_history`); resolves to the state JSON. All or
    /// nothing: a sync that fails leaves the feed as it was.
    #[wasm_bindgen(unchecked_return_type = "Promise<string>")]
    pub fn sync(&self) -> js_sys::Promise {
        let feed = self.inner.clone();
        future_to_promise(async move {
            sync_pages(&feed).await?;
            let state = feed.mirror.borrow().shown_state().map(state_json);
            Ok(state.map_or(JsValue::UNDEFINED, |s| JsValue::from_str(&s)))
        })
    }

    /// Follows the payment live: `onUpdate(stateJson, seq)` whenever the feed holds new
    /// records, each verified first — its hash, its link and the rules, and with a
    /// pinned key the server's signed head over it (with a key every message makes the
    /// feed sync, so nothing unsigned is ever reported; without one the next record is
    /// taken from the message, and a record out of order makes it sync). Each new
    /// record gets its own call, in order, with the state after it (folded one record
    /// at a time as it is reported, so a long catch-up holds one state), but for one
    /// inside a command (its command owes the next event: reported with that one) —
    /// records of a `sync()` beside the run too; `seq` always increases, and nothing
    /// is reported after `close()`. `onError(error)` for a failure that may
    /// pass — no answer (`network_error`), a 5xx, 408 or 429: the feed reconnects with
    /// backoff, first reading what it missed, and resumes after the last record held —
    /// and for one that will not (a record that does not verify, an expired or revoked
    /// token, found by that read, since an `EventSource` shows no status): the feed
    /// then stops. A stream silent for `liveCheckMs` (default 60 s) may be dead
    /// without having closed: the feed then syncs over HTTP, and if the payment moved
    /// on it reports what it missed and reconnects. Call `sync()` first so the stream
    /// starts where the fetched history ends.
    pub fn live(
        &self,
        #[wasm_bindgen(js_name = onUpdate, unchecked_param_type = "(stateJson: string, seq: number) => void")]
        on_update: js_sys::Function,
        #[wasm_bindgen(js_name = onError, unchecked_param_type = "((error: Error) => void) | undefined")]
        on_error: Option<js_sys::Function>,
    ) -> JsResult<()> {
        let run = self.inner.link.start(&self.inner.conn)?;
        let feed = self.inner.clone();
        spawn_local(async move {
            // What this run reported last: the records held when it started are not news.
            let mut shown = Shown::at(&feed.mirror.borrow());
            let mut backoff_ms = 250.0;
            // Before every reconnect, one authenticated read: an EventSource shows no
            // status, so a token that expired or was revoked must end the run here with
            // the server's code rather than reconnect forever. It also fetches what was
            // appended meanwhile.
            let mut read_first = false;
            'run: while !run.stopped() {
                if read_first {
                    let result = sync_pages(&feed).await;
                    if run.stopped() {
                        break;
                    }
                    match result {
                        Ok(_) => tell(&feed, &run, &on_update, &mut shown),
                        Err(e) => {
                            if !fail(&feed.link, &run, &on_error, &e) {
                                break;
                            }
                        }
                    }
                }
                read_first = true;
                let after = feed.mirror.borrow().len();
                let Some(mut messages) =
                    feed.link
                        .open(&run, &feed.conn, &feed.payment, after, &on_error)
                else {
                    break;
                };
                loop {
                    let heard = next_or_silence(&mut messages, feed.conn.live_check_ms, true).await;
                    if run.stopped() {
                        break 'run;
                    }
                    let result = match heard {
                        Heard::Ended => break,
                        Heard::Message(seq, data) => live_record(&feed, seq, data).await,
                        Heard::TooLarge(e) => Err(e),
                        // A silent stream may be a dead one: read over HTTP. If the
                        // payment moved on, the stream missed it: reconnect after.
                        Heard::Silence => match sync_pages(&feed).await {
                            Ok(true) => {
                                backoff_ms = 250.0; // the server answers: no failure
                                if !run.stopped() {
                                    tell(&feed, &run, &on_update, &mut shown);
                                }
                                break;
                            }
                            other => other,
                        },
                    };
                    if run.stopped() {
                        break 'run; // closed meanwhile: nothing more is reported
                    }
                    match result {
                        Ok(grew) => {
                            if grew {
                                backoff_ms = 250.0;
                            }
                            tell(&feed, &run, &on_update, &mut shown);
                        }
                        Err(e) => {
                            if fail(&feed.link, &run, &on_error, &e) {
                                break; // reconnect: the stream resends what follows
                            }
                            break 'run;
                        }
                    }
                }
                if !feed.link.dropped(&run, &on_error, &mut backoff_ms).await {
                    break;
                }
            }
            feed.link.end(&run);
        });
        Ok(())
    }

    /// Stops following the payment.
    pub fn close(&self) {
        self.inner.link.close();
    }
}

/// One message of a feed's stream (`seq` from its id, `data` the record), taken into
/// the feed; `true` when the feed holds more records after it.
async fn live_record(feed: &Feed, seq: Option<u64>, data: String) -> Result<bool, JsValue> {
    let held = feed.mirror.borrow().len();
    let keyed = feed.conn.key.is_some();
    match seq {
        // A record held already (a replay after a resume), signed with the rest.
        Some(s) if keyed && s <= held => Ok(false),
        // No key to check: the next record (or a replay) verified from the message.
        Some(s) if !keyed && s <= held + 1 => {
            let appended = history::record(data.as_bytes())
                .and_then(|r| feed.mirror.borrow_mut().append(r.hash, r.event.get()));
            match appended {
                Ok(grew) => Ok(grew),
                Err(_) if is_redacted_event(data.as_bytes()) => Err(redacted_history()),
                Err(e) => Err(to_js(&e)),
            }
        }
        // A pinned key (the server's signed head must cover what is reported), or a
        // record out of order: fetch what follows the records held, and verify it.
        _ => sync_pages(feed).await,
    }
}

/// What a live run has reported: up to which record, and the state after it. The
/// states of the records the feed took since are folded from it one record at a time
/// as they are reported, so a catch-up of thousands of records holds one state, not
/// one per record.
struct Shown {
    seq: u64,
    state: Option<PaymentState>,
}

impl Shown {
    fn at(m: &Mirror) -> Self {
        Shown {
            seq: m.shown_len(),
            state: m.shown_state().cloned(),
        }
    }

    /// Folds the feed's record after the ones shown (verified when the feed took it);
    /// the state after it, unless that is inside a command (its next event owed).
    fn next(&mut self, m: &Mirror) -> Option<String> {
        let i = self.seq as usize;
        let folded = match (m.events.get(i), m.hashes.get(i)) {
            (Some(event), Some(hash)) => {
                Envelope::from_json(event.as_bytes())
                    .ok()
                    .and_then(|env| match &mut self.state {
                        None => fold::start(&env, *hash).ok().map(|s| self.state = Some(s)),
                        Some(s) => fold::apply(s, &env, *hash).ok(),
                    })
            }
            _ => None,
        };
        match folded {
            Some(()) => self.seq += 1,
            // Not expected (the feed verified the record): shown as the feed holds it.
            None => *self = Shown::at(m),
        }
        self.state
            .as_ref()
            .filter(|s| fold::check_complete(s).is_ok())
            .map(state_json)
    }
}

/// Reports a feed's new records to one live run's `onUpdate`: each record after the
/// ones `shown`, in order, with the state after it, but for one inside a command
/// (reported with the command's last event). `onUpdate` may close the feed, start
/// another run or call `sync()`: the run is checked before every call, and the feed
/// read again after each.
fn tell(feed: &Feed, run: &Run, on_update: &js_sys::Function, shown: &mut Shown) {
    loop {
        if run.stopped() {
            return;
        }
        let state = {
            let m = feed.mirror.borrow();
            if m.len() <= shown.seq {
                return;
            }
            shown.next(&m)
        };
        if let Some(state) = state {
            let _ = on_update.call2(
                &JsValue::NULL,
                &state.into(),
                &JsValue::from_f64(shown.seq as f64),
            );
        }
    }
}

/// `live()` needs a participant token (or none): the stream takes a token only as a
/// participant's `access_token`, so with an API key every stream would be refused while
/// every read worked, and the feed would reconnect forever.
fn participant_token(conn: &Conn) -> JsResult<()> {
    match &conn.token {
        Some(t) if t.starts_with("tfk_") => Err(js_error(
            "invalid_input",
            "live() needs a participant token (`tft_…`, minted by the tenant's backend for \
             one participant): the live stream takes no API key, and an API key does not \
             belong in a browser",
        )),
        _ => Ok(()),
    }
}

/// Reports a live run's failed request: one that may pass (see [`transient`]) lets the
/// run go on (`true`; the error is marked `retrying`); any other ends the run first, so
/// `onError` may start a new one, and returns `false`.
fn fail(link: &Link, run: &Run, on_error: &Option<js_sys::Function>, e: &JsValue) -> bool {
    let goes_on = transient(e);
    if !goes_on {
        link.end(run);
    }
    report(on_error, e, goes_on);
    goes_on
}

/// Whether a failed request may work when tried again: no answer (`network_error`), a
/// server error (5xx), a timeout (408) or too many requests (429). Anything else (a
/// refused token, a record that does not verify) will not.
fn transient(e: &JsValue) -> bool {
    let status = js_sys::Reflect::get(e, &"status".into())
        .ok()
        .and_then(|s| s.as_f64())
        .unwrap_or(0.0);
    code_of(e).as_deref() == Some("network_error")
        || status >= 500.0
        || status == 408.0
        || status == 429.0
}

/// The `code` of a thrown error, if it has one.
fn code_of(e: &JsValue) -> Option<String> {
    js_sys::Reflect::get(e, &"code".into())
        .ok()
        .and_then(|c| c.as_string())
}

/// One `live()` run of a feed, stopped by `close()` or by a record that does not
/// verify. A feed has at most one running; a run that wakes up after it was stopped
/// (its stream closed under it) ends without touching the next one.
#[derive(Clone)]
struct Run(Rc<Cell<bool>>);

impl Run {
    fn stopped(&self) -> bool {
        self.0.get()
    }
}

/// The live part of a feed: its current run and the stream that run has open.
#[derive(Default)]
struct Link {
    run: RefCell<Option<Run>>,
    es: RefCell<Option<EventSource>>,
}

impl Link {
    /// A new run, unless one is running; not without the platform's `EventSource`, nor
    /// with an API key for a token.
    fn start(&self, conn: &Conn) -> JsResult<Run> {
        participant_token(conn)?;
        if self.run.borrow().as_ref().is_some_and(|r| !r.stopped()) {
            return Err(js_error(
                "invalid_input",
                "this feed is already live: close() it first",
            ));
        }
        if global_function("EventSource").is_none() {
            return Err(js_error(
                "unsupported",
                "live() needs the platform's EventSource: browsers have one; in Node set \
                 globalThis.EventSource first (the `eventsource` package, or Node 22+ with \
                 --experimental-eventsource)",
            ));
        }
        let run = Run(Rc::new(Cell::new(false)));
        *self.run.borrow_mut() = Some(run.clone());
        Ok(run)
    }

    fn is_current(&self, run: &Run) -> bool {
        self.run
            .borrow()
            .as_ref()
            .is_some_and(|r| Rc::ptr_eq(&r.0, &run.0))
    }

    /// Opens the payment's stream after `after` for `run` and keeps it; `None` if the
    /// run was stopped, or if the stream cannot be opened (reported; the run ends).
    fn open(
        &self,
        run: &Run,
        conn: &Conn,
        payment: &PaymentId,
        after: u64,
        on_error: &Option<js_sys::Function>,
    ) -> Option<Messages> {
        let (es, messages) = match open_stream(conn, payment, after) {
            Ok(x) => x,
            Err(e) => {
                self.end(run);
                report(on_error, &e, false);
                return None;
            }
        };
        if run.stopped() || !self.is_current(run) {
            return None; // `es` closes here
        }
        *self.es.borrow_mut() = Some(es);
        Some(messages)
    }

    fn close(&self) {
        if let Some(run) = self.run.borrow_mut().take() {
            run.0.set(true);
        }
        self.es.borrow_mut().take();
    }

    /// After `run`'s stream ended: `false` if the run was stopped; else the drop is
    /// reported and the backoff waited (and doubled for the next, up to 30 s).
    /// Closes `run`'s stream (a new one is opened next), reporting nothing.
    fn let_go(&self, run: &Run) {
        if self.is_current(run) {
            self.es.borrow_mut().take();
        }
    }

    async fn dropped(
        &self,
        run: &Run,
        on_error: &Option<js_sys::Function>,
        backoff_ms: &mut f64,
    ) -> bool {
        self.let_go(run);
        if run.stopped() {
            return false;
        }
        report(
            on_error,
            &js_error("network_error", "live stream dropped: resuming"),
            true,
        );
        // In steps, so that `close()` ends a run waiting here at once (a pending timer
        // would keep Node running and the callbacks alive for up to 30 s).
        let mut left = *backoff_ms;
        while left > 0.0 && !run.stopped() {
            sleep(left.min(250.0)).await;
            left -= 250.0;
        }
        *backoff_ms = (*backoff_ms * 2.0).min(30_000.0);
        !run.stopped()
    }

    /// `run` ended (closed, or stopped by an error): its stream closes, and the feed
    /// may go live again.
    fn end(&self, run: &Run) {
        run.0.set(true);
        if self.is_current(run) {
            self.run.borrow_mut().take();
            self.es.borrow_mut().take();
        }
    }
}

type Messages =
    futures_util::stream::SelectAll<gloo_net::eventsource::futures::EventSourceSubscription>;

/// Opens the payment's stream of events after `after`, listening to every message.
fn open_stream(
    conn: &Conn,
    payment: &PaymentId,
    after: u64,
) -> Result<(EventSource, Messages), JsValue> {
    let mut url = conn.url(payment, &format!("/stream?after={after}"));
    if let Some(t) = &conn.token {
        url.push_str("&access_token=");
        url.push_str(&String::from(js_sys::encode_uri_component(t)));
    }
    let mut es = EventSource::new(&url).map_err(|e| js_error("network_error", &e.to_string()))?;
    // The server names each message after its event type (`event:`), and an
    // EventSource only dispatches named messages to listeners of that name: listen to
    // every type (and to unnamed messages).
    let mut subs = vec![es
        .subscribe("message")
        .map_err(|e| js_error("network_error", &e.to_string()))?];
    for t in EventType::ALL {
        subs.push(
            es.subscribe(t.name())
                .map_err(|e| js_error("network_error", &e.to_string()))?,
        );
    }
    Ok((es, futures_util::stream::select_all(subs)))
}

/// A server view of one payment (`Client.viewFeed()`), kept up to date by `refresh()`
/// and `live()`. Not verified: see `Client.paymentView()`.
#[wasm_bindgen]
pub struct PaymentViewFeed {
    inner: Rc<ViewFeed>,
}

struct ViewFeed {
    conn: Conn,
    payment: PaymentId,
    /// The newest view read: `{"state","events"}` JSON and its state's version.
    view: RefCell<Option<(String, u64)>>,
    link: Link,
}

impl ViewFeed {
    fn version(&self) -> u64 {
        self.view.borrow().as_ref().map_or(0, |(_, v)| *v)
    }

    /// Reads the view again and keeps it unless it is older than the one held;
    /// `true` if the view held moved to a newer version.
    async fn refresh(&self) -> Result<bool, JsValue> {
        let (json, version) = fetch_view(&self.conn, &self.payment).await?;
        let held = self.version();
        let newer = self.view.borrow().is_none() || version > held;
        if version >= held {
            *self.view.borrow_mut() = Some((json, version));
        }
        Ok(newer)
    }

    fn held(&self) -> JsValue {
        match &*self.view.borrow() {
            Some((json, _)) => JsValue::from_str(json),
            None => JsValue::UNDEFINED,
        }
    }
}

#[wasm_bindgen]
impl PaymentViewFeed {
    /// The state's version of the view held (0 before the first `refresh()`).
    #[wasm_bindgen(getter)]
    pub fn version(&self) -> f64 {
        self.inner.version() as f64
    }

    /// The view held, as `{"state","events"}` JSON (`undefined` before the first
    /// `refresh()`).
    #[wasm_bindgen(unchecked_return_type = "string | undefined")]
    pub fn view(&self) -> JsValue {
        self.inner.held()
    }

    /// Reads the server's view again; resolves to the view held afterwards, which is
    /// never older than before (an answer older than the view held is dropped).
    #[wasm_bindgen(unchecked_return_type = "Promise<string>")]
    pub fn refresh(&self) -> js_sys::Promise {
        let feed = self.inner.clone();
        future_to_promise(async move {
            feed.refresh().await?;
            Ok(feed.held())
        })
    }

    /// Follows the payment: whenever its stream shows this participant an event past
    /// the view held, the view is read again and `onUpdate(viewJson)` called with it
    /// (never after `close()`). `onError(error)` for a failure that may pass (no
    /// answer, a 5xx, 408 or 429; the feed reconnects with backoff, reading the view
    /// again first, and resumes after it) and for one that will not (a view of another
    /// payment, an expired or revoked token: the feed stops). Events hidden from the
    /// participant's roles send nothing, so the view catches up with them at the next
    /// one it sees (or the next `refresh()`), and a stream silent for `liveCheckMs`
    /// makes the feed read the view again (reconnecting if it moved on: the stream may
    /// have died without closing). Reads may overlap with `refresh()` calls; the newer
    /// view wins.
    pub fn live(
        &self,
        #[wasm_bindgen(js_name = onUpdate, unchecked_param_type = "(viewJson: string) => void")]
        on_update: js_sys::Function,
        #[wasm_bindgen(js_name = onError, unchecked_param_type = "((error: Error) => void) | undefined")]
        on_error: Option<js_sys::Function>,
    ) -> JsResult<()> {
        let run = self.inner.link.start(&self.inner.conn)?;
        let feed = self.inner.clone();
        spawn_local(async move {
            // The version last shown to `onUpdate` (at first the one held: the caller has
            // it). A view newer than it is shown, however it came: this run's read, or a
            // `refresh()` beside it, which may take the newer view first.
            let told = Cell::new(feed.version());
            let update = |feed: &ViewFeed| {
                let version = feed.version();
                if version <= told.get() {
                    return false;
                }
                told.set(version);
                let _ = on_update.call1(&JsValue::NULL, &feed.held());
                true
            };
            let mut backoff_ms = 250.0;
            // Read the view before opening the stream (which starts where the view
            // ends): at first if none is held, and before every reconnect, since an
            // EventSource shows no status: an expired or revoked token ends the run here
            // with the server's code, and what changed meanwhile is shown.
            let mut read_first = feed.view.borrow().is_none();
            'run: while !run.stopped() {
                if read_first {
                    let result = feed.refresh().await;
                    if run.stopped() {
                        break;
                    }
                    match result {
                        Ok(_) => {
                            update(&feed);
                        }
                        Err(e) => {
                            if !fail(&feed.link, &run, &on_error, &e) {
                                break;
                            }
                        }
                    }
                }
                read_first = true;
                let Some(mut messages) =
                    feed.link
                        .open(&run, &feed.conn, &feed.payment, feed.version(), &on_error)
                else {
                    break;
                };
                // Left to open a new stream from a view just read, not after a failure.
                let mut quiet = false;
                loop {
                    let heard =
                        next_or_silence(&mut messages, feed.conn.live_check_ms, false).await;
                    if run.stopped() {
                        break 'run;
                    }
                    let result = match heard {
                        Heard::Ended => break,
                        Heard::TooLarge(e) => Err(e),
                        Heard::Message(seq, _) => {
                            let seq = seq.unwrap_or_else(|| feed.version() + 1);
                            if seq <= feed.version() {
                                // Already in the view held (a `refresh()` beside this
                                // run may have read it): shown if it was not yet.
                                update(&feed);
                                continue;
                            }
                            // The server answers a state read from the log when its
                            // read model lags, so one read includes this event.
                            feed.refresh().await
                        }
                        // A silent stream may be a dead one, or the events were hidden
                        // from this participant (they send nothing): read the view
                        // again either way. If it moved on, the stream may have missed
                        // it: open a new one from there, at once and without reporting
                        // an error (hidden events are no failure; a live stream costs
                        // one reconnect per check).
                        Heard::Silence => match feed.refresh().await {
                            Ok(newer) if newer || feed.version() > told.get() => {
                                backoff_ms = 250.0; // the server answers: no failure
                                if !run.stopped() {
                                    update(&feed);
                                }
                                quiet = true;
                                break;
                            }
                            other => other,
                        },
                    };
                    if run.stopped() {
                        break 'run; // closed meanwhile: nothing more is reported
                    }
                    match result {
                        Ok(_) => {
                            if update(&feed) {
                                backoff_ms = 250.0;
                            }
                        }
                        Err(e) => {
                            // A failed read: a transient failure reconnects (the read
                            // below tries again); anything else (a view of another
                            // payment, a revoked token) stops the feed.
                            if fail(&feed.link, &run, &on_error, &e) {
                                break;
                            }
                            break 'run;
                        }
                    }
                }
                if quiet {
                    feed.link.let_go(&run);
                    read_first = false;
                    continue;
                }
                if !feed.link.dropped(&run, &on_error, &mut backoff_ms).await {
                    break;
                }
            }
            feed.link.end(&run);
        });
        Ok(())
    }

    /// Stops following the payment.
    pub fn close(&self) {
        self.inner.link.close();
    }
}

/// The body of `POST …/commands`: `{"command": …}` around a bare command (one with a
/// `type`); a full request (`{"command", "actor"?, "correlation"?}`) is sent as given.
fn request_body(command: String) -> JsResult<String> {
    let members = json::object_members(command.as_bytes()).map_err(|e| {
        js_error(
            "malformed_json",
            &format!("the command is not a JSON object: {e}"),
        )
    })?;
    let full = members
        .iter()
        .any(|(key, value)| key == "command" && !json::is_null(value));
    Ok(if full {
        command
    } else {
        format!("{{\"command\":{command}}}")
    })
}

fn report(on_error: &Option<js_sys::Function>, err: &JsValue, retrying: bool) {
    // `retrying`: whether the live feed goes on (it reconnects) after this error.
    let _ = js_sys::Reflect::set(err, &"retrying".into(), &JsValue::from_bool(retrying));
    if let Some(f) = on_error {
        let _ = f.call1(&JsValue::NULL, err);
    }
}

/// Checks the server's base URL with the platform's `URL` parser: absolute, `http:` or
/// `https:`, and without a query or fragment (the client appends paths to it).
fn base_url(base: &str) -> JsResult<()> {
    let bad = |why: &str| {
        js_error(
            "invalid_input",
            &format!(
                "client options: `baseUrl` `{}` {why}",
                trustfold_core::error::echo(base)
            ),
        )
    };
    let url_class = global_function("URL")
        .ok_or_else(|| bad("cannot be checked: this platform has no URL class"))?;
    let args = js_sys::Array::of1(&base.into());
    let url = js_sys::Reflect::construct(&url_class, &args)
        .map_err(|_| bad("is not an absolute URL (e.g. https://pay.example.com)"))?;
    let part = |name: &str| {
        js_sys::Reflect::get(&url, &name.into())
            .ok()
            .and_then(|v| v.as_string())
            .unwrap_or_default()
    };
    if !matches!(part("protocol").as_str(), "http:" | "https:") {
        return Err(bad("must be an http: or https: URL"));
    }
    if !part("search").is_empty() || !part("hash").is_empty() || base.contains(['?', '#']) {
        return Err(bad("must not have a query or fragment"));
    }
    if base.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("must not contain spaces or control characters"));
    }
    Ok(())
}

/// `request` (sent and its answer read), or `network_error` when it takes longer than
/// `ms` milliseconds: a server that accepts the connection and never answers must not
/// leave a `sync()` or `sendCommand()` pending forever. The request, made with
/// `abort`'s signal, is aborted then, and when this is dropped before it ends (a feed
/// closed meanwhile): the platform's `fetch` would otherwise keep its connection and
/// go on reading the body (a browser has six connections per origin).
async fn within<T>(
    ms: f64,
    abort: Abort,
    request: impl std::future::Future<Output = JsResult<T>>,
) -> JsResult<T> {
    use futures_util::future::{select, Either};
    let request = std::pin::pin!(request);
    let mut timer = Timer::start(ms);
    let answer = match select(request, &mut timer.0).await {
        Either::Left((answer, _)) => answer,
        Either::Right(_) => Err(js_error(
            "network_error",
            "the server did not answer within the client's timeoutMs",
        )),
    };
    if answer.is_ok() {
        abort.disarm();
    }
    answer
}

/// An `AbortController` for one request, aborting it when dropped unless disarmed (the
/// request ended). Without the platform's `AbortController` nothing is aborted.
struct Abort(Option<JsValue>);

impl Abort {
    fn new() -> Self {
        let controller = global_function("AbortController")
            .and_then(|c| js_sys::Reflect::construct(&c, &js_sys::Array::new()).ok());
        Abort(controller)
    }

    /// `builder` with this controller's signal.
    fn signal(&self, builder: RequestBuilder) -> RequestBuilder {
        let signal = self
            .0
            .as_ref()
            .and_then(|c| js_sys::Reflect::get(c, &"signal".into()).ok())
            .filter(|s| !s.is_undefined() && !s.is_null());
        match signal {
            Some(s) => builder.abort_signal(Some(s.unchecked_ref())),
            None => builder,
        }
    }

    /// The request ended: nothing to abort.
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Abort {
    fn drop(&mut self) {
        let Some(controller) = self.0.take() else {
            return;
        };
        if let Some(abort) = js_sys::Reflect::get(&controller, &"abort".into())
            .ok()
            .and_then(|f| f.dyn_into::<js_sys::Function>().ok())
        {
            let _ = abort.call0(&controller);
        }
    }
}

/// What a live stream gave: a message, its end (closed or failed), or `ms` of silence.
enum Heard {
    /// The message's id (the event's sequence number) and data.
    Message(Option<u64>, String),
    /// A message longer than [`MAX_STREAM_MESSAGE`]: the run ends with this error.
    TooLarge(JsValue),
    Ended,
    Silence,
}

/// The stream's next message (its data copied into the module only if `data`), or
/// [`Heard::Silence`] after `ms` without one. Neither the data nor the id is copied
/// before its length is checked.
async fn next_or_silence(messages: &mut Messages, ms: f64, data: bool) -> Heard {
    use futures_util::future::{select, Either};
    let mut timer = Timer::start(ms);
    match select(messages.next(), &mut timer.0).await {
        Either::Left((Some(Ok((_, msg))), _)) => {
            let units = |v: &JsValue| v.dyn_ref::<js_sys::JsString>().map_or(0, |s| s.length());
            let body = match data {
                true => msg.data(),
                false => JsValue::UNDEFINED,
            };
            if units(&body) > MAX_STREAM_MESSAGE {
                return Heard::TooLarge(too_large(
                    "live-stream message",
                    format!("{MAX_STREAM_MESSAGE} characters"),
                ));
            }
            // An id too long for a sequence number is none (the feed then syncs).
            let id = js_sys::Reflect::get(&msg, &"lastEventId".into()).unwrap_or_default();
            let seq = (units(&id) <= MAX_STREAM_ID)
                .then(|| id.as_string())
                .flatten()
                .and_then(|id| id.parse().ok());
            Heard::Message(seq, body.as_string().unwrap_or_default())
        }
        Either::Left(_) => Heard::Ended,
        Either::Right(_) => Heard::Silence,
    }
}

/// Resolves after `ms` milliseconds (`setTimeout`, in browsers and Node).
async fn sleep(ms: f64) {
    let mut timer = Timer::start(ms);
    let _ = (&mut timer.0).await;
}

/// A `setTimeout` as a future; dropping it clears the timeout, so a timer that lost
/// its race does not keep Node's event loop alive until it fires.
struct Timer(wasm_bindgen_futures::JsFuture, Option<JsValue>);

impl Timer {
    fn start(ms: f64) -> Timer {
        let mut handle = None;
        let p = js_sys::Promise::new(&mut |resolve, _| match global_function("setTimeout") {
            Some(f) => {
                handle = f
                    .call2(&JsValue::NULL, &resolve, &JsValue::from_f64(ms))
                    .ok()
            }
            None => {
                let _ = resolve.call0(&JsValue::NULL);
            }
        });
        Timer(wasm_bindgen_futures::JsFuture::from(p), handle)
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let (Some(h), Some(clear)) = (self.1.take(), global_function("clearTimeout")) {
            let _ = clear.call1(&JsValue::NULL, &h);
        }
    }
}

/// The platform's global function (or class) `name`, if it has one.
fn global_function(name: &str) -> Option<js_sys::Function> {
    js_sys::Reflect::get(&js_sys::global(), &name.into())
        .ok()
        .and_then(|f| f.dyn_into::<js_sys::Function>().ok())
}

fn net(e: gloo_net::Error) -> JsValue {
    js_error("network_error", &format!("request failed: {e}"))
}

/// An RFC 9457 problem document, as far as the client uses it.
#[derive(Default)]
struct Problem {
    code: Option<String>,
    title: Option<String>,
    detail: Option<String>,
    field: Option<String>,
    current_version: Option<u64>,
}

impl Problem {
    /// `None` unless `json` is an object whose members used here have the right types.
    fn from_json(json: &[u8]) -> Option<Problem> {
        let mut p = Problem::default();
        for (key, value) in json::object_members(json).ok()? {
            let text = || match json::is_null(value) {
                true => Some(None),
                false => json::string(value).ok().map(Some),
            };
            match key.as_str() {
                "code" => p.code = text()?,
                "title" => p.title = text()?,
                "detail" => p.detail = text()?,
                "field" => p.field = text()?,
                "current_version" if !json::is_null(value) => {
                    p.current_version = Some(json::uint(value).ok()?)
                }
                _ => {}
            }
        }
        Some(p)
    }
}

/// The most bytes of an answer this client reads: a page of events from a trustfold
/// server is at most 4 MiB plus one event, a state far less. A longer answer (or one
/// that never ends) is `response_too_large`, refused before more is held in memory
/// (a wasm module's memory never shrinks).
const MAX_ANSWER: usize = 16 << 20;

/// The most bytes of an error answer's body this client reads (a problem details
/// document is a few hundred); a longer one is not read, and the error is the status's.
const MAX_ERROR_ANSWER: usize = 64 << 10;

/// The longest live-stream message this client takes, in characters (UTF-16 code
/// units, as the platform holds it; up to 3 bytes each once copied into the module),
/// checked before it is copied: one record, whose event is at most the server's body
/// limit (256 KiB by default).
const MAX_STREAM_MESSAGE: u32 = 4 << 20;

/// The longest message id this client reads: a sequence number has at most 20 digits.
const MAX_STREAM_ID: u32 = 20;

fn too_large(what: &str, limit: String) -> JsValue {
    js_error(
        "response_too_large",
        &format!("the server's {what} is longer than {limit}, the most this client reads"),
    )
}

fn kib(limit: usize) -> String {
    format!("{} KiB", limit >> 10)
}

/// The body of an answer as text, read chunk by chunk up to `limit` bytes: one whose
/// `Content-Length` says more is refused before reading, one that goes on past it
/// (chunked, or never ending) as soon as it does. Bytes that are not UTF-8 are
/// replaced, as the platform's `text()` does.
async fn read_text(resp: &Response, limit: usize, what: &str) -> JsResult<String> {
    let declared = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(what, kib(limit)));
    }
    let failed = |e: JsValue| {
        let why = e
            .dyn_ref::<js_sys::Error>()
            .map(|e| String::from(e.message()))
            .unwrap_or_else(|| "unknown error".into());
        js_error(
            "network_error",
            &format!("the server's {what} could not be read: {}", clip(&why)),
        )
    };
    let call = |on: &JsValue, name: &str| -> JsResult<JsValue> {
        js_sys::Reflect::get(on, &name.into())?
            .dyn_into::<js_sys::Function>()?
            .call0(on)
    };
    let Some(stream) = resp.body().map(JsValue::from) else {
        return Ok(String::new()); // no body (204, HEAD)
    };
    let reader = call(&stream, "getReader").map_err(failed)?;
    let mut out: Vec<u8> = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    loop {
        let read = call(&reader, "read").map_err(failed)?;
        let chunk = wasm_bindgen_futures::JsFuture::from(js_sys::Promise::from(read))
            .await
            .map_err(failed)?;
        if js_sys::Reflect::get(&chunk, &"done".into())
            .map_err(failed)?
            .is_truthy()
        {
            break;
        }
        let value = js_sys::Uint8Array::new(
            &js_sys::Reflect::get(&chunk, &"value".into()).map_err(failed)?,
        );
        let (at, len) = (out.len(), value.length() as usize);
        if at + len > limit {
            let _ = call(&reader, "cancel");
            return Err(too_large(what, kib(limit)));
        }
        out.resize(at + len, 0);
        value.copy_to(&mut out[at..]);
    }
    Ok(match String::from_utf8(out) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// The body of a 2xx response (at most [`MAX_ANSWER`] bytes), or the problem details
/// as a thrown error.
async fn body_or_problem(resp: Response) -> JsResult<String> {
    let status = resp.status();
    if resp.ok() {
        return read_text(&resp, MAX_ANSWER, "answer").await;
    }
    // An error body too long to read: the status says enough (and a 5xx stays one a
    // live feed rides out).
    let text = match read_text(&resp, MAX_ERROR_ANSWER, "error answer").await {
        Err(e) if code_of(&e).as_deref() == Some("response_too_large") => String::new(),
        other => other?,
    };
    let p = Problem::from_json(text.as_bytes());
    // What the server says is passed on bounded: a code only in the codes' own form.
    let code = p
        .as_ref()
        .and_then(|p| p.code.clone())
        .filter(|c| is_code(c))
        .unwrap_or_else(|| format!("http_{status}"));
    let message = p
        .as_ref()
        .and_then(|p| p.detail.as_deref().or(p.title.as_deref()).map(clip))
        .unwrap_or_else(|| format!("the server answered {status}"));
    let err = js_error(&code, &message);
    let _ = js_sys::Reflect::set(&err, &"status".into(), &JsValue::from(status));
    if let Some(p) = p {
        if let Some(f) = p.field {
            let _ = js_sys::Reflect::set(&err, &"field".into(), &clip(&f).into());
        }
        if let Some(v) = p.current_version {
            let _ =
                js_sys::Reflect::set(&err, &"currentVersion".into(), &JsValue::from_f64(v as f64));
        }
    }
    Err(err)
}

/// Error codes are lower-case ASCII words joined by `_`, at most 64 characters.
fn is_code(c: &str) -> bool {
    (1..=64).contains(&c.len())
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A server's text cut to 500 characters (with `…`), so a runaway response does not
/// become a runaway error message.
fn clip(text: &str) -> String {
    trustfold_core::error::clip(text, 500)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_codes_and_texts_are_bounded() {
        assert!(is_code("version_conflict"));
        assert!(is_code("http_500"));
        for bad in ["", "Version", "a b", "x\ny", &"x".repeat(65)] {
            assert!(!is_code(bad), "{bad:?}");
        }
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(600);
        let c = clip(&long);
        assert_eq!(c.chars().count(), 501);
        assert!(c.ends_with('…'));
    }
}
