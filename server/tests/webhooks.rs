//! Webhooks (`trustfold_server::webhooks`), through real servers on loopback: a real
//! receiver (an HTTP server in this test, standing in for the tenant's endpoint), on a
//! real SQLite file and on PostgreSQL. Signatures are checked with the Rust SDK's
//! Standard Webhooks verifier (`trustfold::webhook`).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::scenario::{fund, open_and_join, Client};
use common::ADMIN;
use serde_json::{json, Value};
use trustfold::webhook::Webhook;
use trustfold_server::app::{start, Running};

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// The tenant's endpoint: records every request and answers with the next status of
/// `answers` (200 once they run out).
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    answers: Arc<Mutex<Vec<u16>>>,
    /// Milliseconds each answer takes.
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    // The answer is chosen before the request is recorded: a test that sees the
    // request and then changes the answers does not change this one's.
    let next = {
        let mut a = r.answers.lock().expect("lock");
        if a.is_empty() {
            200
        } else {
            a.remove(0)
        }
    };
    r.got.lock().expect("lock").push(Got {
        id: h("webhook-id"),
        timestamp: h("webhook-timestamp"),
        signature: h("webhook-signature"),
        body: body.to_vec(),
    });
    let delay = r.delay_ms.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(delay)).await;
    StatusCode::from_u16(next).expect("status")
}

impl Receiver {
    async fn start(&self) -> String {
        let app = axum::Router::new()
            .route("/hooks", axum::routing::post(receive))
            .with_state(self.clone());
        let addr = common::serve_on_loopback(app).await;
        format!("http://{addr}/hooks")
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().expect("lock").clone()
    }

    /// Waits (at most 20 s) until `pred` holds for what was received.
    async fn wait(&self, what: &str, pred: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let start = Instant::now();
        loop {
            let got = self.got();
            if pred(&got) {
                return got;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{what}: not within 20 s; got {:?}",
                got.iter()
                    .map(|g| g.json()["type"].clone())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A server on `database` that may send to loopback, retrying after 100 ms.
async fn serve(database: &str) -> (Running, Client) {
    let mut config = common::config(database);
    config.webhooks.allow_private = true;
    config.webhooks.retry_first = Duration::from_millis(100);
    let running = start(config).await.expect("server starts");
    let client = Client::new(format!("http://{}", running.addr));
    (running, client)
}

/// Unix seconds now.
fn now() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    i64::try_from(now).expect("now")
}

/// Checks a request's signature with `secret` as a receiver would, now.
fn verified(g: &Got, secret: &str) -> bool {
    Webhook::new(secret)
        .expect("secret")
        .verify_at(&g.id, &g.timestamp, &g.signature, &g.body, now())
        .is_ok()
}

/// The events of a payment, from the receiver's requests, in order.
fn types_of(got: &[Got], payment: &str) -> Vec<String> {
    got.iter()
        .map(Got::json)
        .filter(|v| v["data"]["payment_id"] == payment)
        .map(|v| v["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn delivers_in_order_signed_and_retried(database: &str) {
    let (running, c) = serve(database).await;
    let key = c.tenant(ADMIN, "Hooked Escrow").await.expect("tenant");
    let other = c.tenant(ADMIN, "Other Escrow").await.expect("tenant");
    let receiver = Receiver::default();
    let url = receiver.start().await;
    // The first two tries of the first event fail: it is held and tried again, and
    // nothing overtakes it.
    receiver.answers.lock().expect("lock").extend([500, 503]);
    let r = c.post("/v1/webhooks", &key, &json!({ "url": url })).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let secret = r.body["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("whsec_"));
    let webhook = r.body["webhook_id"].as_str().expect("id").to_owned();
    // Registering the same URL again answers the same endpoint (a retry is safe).
    let again = c.post("/v1/webhooks", &key, &json!({ "url": url })).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["webhook_id"], webhook.as_str());
    assert_eq!(again.body["secret"], secret.as_str());
    // Another tenant's payment is never sent here.
    let theirs = open_and_join(&c, &other).await.expect("open");
    let f = open_and_join(&c, &key).await.expect("open");
    fund(&c, &key, &f).await.expect("fund");
    let history = common::scenario::history(&c, &key, &f.payment, 100)
        .await
        .expect("history");
    let records: Vec<Value> = serde_json::from_slice(&history).expect("records");
    let got = receiver
        .wait("every event, after two failed tries", |g| {
            types_of(g, &f.payment).len() >= records.len() + 2
        })
        .await;
    assert!(
        types_of(&got, &theirs.payment).is_empty(),
        "another tenant's events"
    );
    // The first two requests were the first event, refused; then every event once, in
    // order, each the stored envelope byte for byte, each signed with the secret.
    let ids: Vec<&str> = got.iter().map(|g| g.id.as_str()).collect();
    assert_eq!(ids[0], ids[1]);
    assert_eq!(ids[1], ids[2], "the same webhook-id on every retry");
    let delivered = &got[2..];
    assert_eq!(delivered.len(), records.len());
    let mut last_position = 0;
    for (g, rec) in delivered.iter().zip(&records) {
        let v = g.json();
        assert_eq!(v["type"], rec["event"]["type"]);
        assert_eq!(g.id, rec["event"]["id"].as_str().expect("id"));
        assert_eq!(v["data"]["event"], rec["event"]);
        assert_eq!(v["data"]["hash"], rec["hash"]);
        let position = v["data"]["position"].as_u64().expect("position");
        assert!(position > last_position, "in order");
        last_position = position;
        assert!(verified(g, &secret), "signature of {}", g.id);
        assert!(!verified(g, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
        // The SDK's receiver side: signature, then the envelope against its hash.
        let ev = Webhook::new(&secret)
            .expect("secret")
            .verify_event_at(&g.id, &g.timestamp, &g.signature, &g.body, now())
            .expect("a verified event");
        assert_eq!(ev.position, position);
        assert_eq!(ev.payment.to_string(), f.payment);
        assert_eq!(ev.hash.to_string(), rec["hash"].as_str().expect("hash"));
        assert_eq!(ev.envelope.event_type().name(), ev.event_type);
    }
    // An altered envelope (re-signed, so only the hash can tell) is refused.
    let g = &delivered[3];
    let text = String::from_utf8(g.body.clone()).expect("utf-8");
    let altered = text.replacen("\"seq\":", "\"seq\": ", 2);
    assert_ne!(altered, text);
    let wh = Webhook::new(&secret).expect("secret");
    let ts: i64 = g.timestamp.parse().expect("timestamp");
    let sig = wh.sign(&g.id, ts, altered.as_bytes());
    let err = wh
        .verify_event_at(&g.id, &g.timestamp, &sig, altered.as_bytes(), now())
        .expect_err("an altered envelope");
    assert!(err.to_string().contains("does not hash"), "{err}");
    // The envelope's bytes are the ones hashed.
    let raw = String::from_utf8(delivered[0].body.clone()).expect("utf-8");
    let start = raw.find("\"event\":").expect("event") + "\"event\":".len();
    let event = &raw[start..raw.len() - 2];
    assert_eq!(
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(event.as_bytes())),
        records[0]["hash"].as_str().expect("hash")
    );
    // The endpoint's state: delivering, at the last event (the position moves just
    // after the receiver answered).
    let start = Instant::now();
    let r = loop {
        let r = c.get(&format!("/v1/webhooks/{webhook}"), &key).await;
        if r.body["position"].as_u64() == Some(last_position)
            || start.elapsed() > Duration::from_secs(10)
        {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "delivering");
    assert_eq!(r.body["position"].as_u64(), Some(last_position));
    assert_eq!(r.body["last_status"], 200);
    assert!(
        r.body.get("secret").is_none(),
        "the secret is shown on registering only"
    );
    running.shutdown().await.expect("shutdown");
}

common::on_both_databases!(delivers_in_order_signed_and_retried);

/// Filters, a failing endpoint's state and its retry, rotation with overlap, deletion,
/// and a restart: events appended while an endpoint failed reach it afterwards.
#[tokio::test]
async fn failing_endpoints_catch_up_after_a_restart() {
    let (_dir, db) = common::sqlite_file();
    let (running, c) = serve(&db).await;
    let key = c.tenant(ADMIN, "Filtered Escrow").await.expect("tenant");
    let receiver = Receiver::default();
    let url = receiver.start().await;
    let r = c
        .post(
            "/v1/webhooks",
            &key,
            &json!({ "url": url, "event_types": ["FundingSettled", "ParticipantJoined"] }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let webhook = r.body["webhook_id"].as_str().expect("id").to_owned();
    let first = r.body["secret"].as_str().expect("secret").to_owned();
    // The same URL with other types is a conflict.
    let r = c
        .post(
            "/v1/webhooks",
            &key,
            &json!({ "url": url, "event_types": ["FundsAvailable"] }),
        )
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (409, Some("webhook_exists"))
    );
    let f = open_and_join(&c, &key).await.expect("open");
    let got = receiver
        .wait("three joins", |g| types_of(g, &f.payment).len() == 3)
        .await;
    assert!(types_of(&got, &f.payment)
        .iter()
        .all(|t| t == "ParticipantJoined"));
    // The receiver breaks: every answer 500 for a while.
    receiver.answers.lock().expect("lock").extend([500; 1000]);
    fund(&c, &key, &f).await.expect("fund");
    let start = Instant::now();
    loop {
        let r = c.get(&format!("/v1/webhooks/{webhook}"), &key).await;
        if r.body["status"] == "failing" && r.body["attempts"].as_i64() >= Some(2) {
            assert_eq!(r.body["last_status"], 500);
            assert!(r.body["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("500")));
            assert!(r.body["failing_since"].is_string());
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never failing: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Stop the server while the endpoint fails, fix the receiver, restart: the held
    // event arrives, signed with the old secret and the new one during the overlap.
    running.shutdown().await.expect("shutdown");
    receiver.answers.lock().expect("lock").clear();
    let (running, c) = serve(&db).await;
    let r = c
        .post(
            &format!("/v1/webhooks/{webhook}/rotate-secret"),
            &key,
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let second = r.body["secret"].as_str().expect("secret").to_owned();
    assert_ne!(first, second);
    // Rotated again during the overlap (say, the first answer was lost, or a receiver
    // already switched): every secret of the overlap still signs.
    let r = c
        .post(
            &format!("/v1/webhooks/{webhook}/rotate-secret"),
            &key,
            &json!({"expire_previous_after_seconds": 600}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let third = r.body["secret"].as_str().expect("secret").to_owned();
    let before = receiver.got().len();
    let r = c
        .post(&format!("/v1/webhooks/{webhook}/retry"), &key, &json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let got = receiver
        .wait("the settlement, again", |g| g.len() > before)
        .await;
    assert_eq!(got[before].json()["type"], "FundingSettled");
    let settled = &got[before];
    assert!(verified(settled, &first), "the first secret still verifies");
    assert!(verified(settled, &second), "the second too");
    assert!(verified(settled, &third), "and the new one");
    assert_eq!(
        settled.signature.split(' ').count(),
        3,
        "{}",
        settled.signature
    );
    // The receiver has the request before the server has its answer on record.
    let start = Instant::now();
    loop {
        let r = c.get(&format!("/v1/webhooks/{webhook}"), &key).await;
        if r.body["status"] == "delivering" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still not delivering: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Deleted: nothing more arrives.
    let r = c
        .raw(
            "DELETE",
            &format!("/v1/webhooks/{webhook}"),
            Some(&key),
            &[],
            None,
        )
        .await
        .expect("delete");
    assert_eq!(r.status, 204);
    let before = receiver.got().len();
    let g = open_and_join(&c, &key).await.expect("open");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(receiver.got().len(), before, "sent after deletion");
    assert!(types_of(&receiver.got(), &g.payment).is_empty());
    let r = c.get(&format!("/v1/webhooks/{webhook}"), &key).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (404, Some("unknown_webhook"))
    );
    running.shutdown().await.expect("shutdown");
}

/// Registering: what is refused, and why.
#[tokio::test]
async fn bad_endpoints_are_refused() {
    let (_dir, db) = common::sqlite_file();
    // The default: public addresses only.
    let running = start(common::config(&db)).await.expect("server starts");
    let c = Client::new(format!("http://{}", running.addr));
    let key = c.tenant(ADMIN, "Careful Escrow").await.expect("tenant");
    for (body, status, code, field) in [
        (
            json!({"url": "http://127.0.0.1:9/hooks"}),
            422,
            "invalid_url",
            "url",
        ),
        (
            json!({"url": "http://localhost/hooks"}),
            422,
            "invalid_url",
            "url",
        ),
        (
            json!({"url": "http://10.1.2.3/hooks"}),
            422,
            "invalid_url",
            "url",
        ),
        (
            json!({"url": "http://[::1]/hooks"}),
            422,
            "invalid_url",
            "url",
        ),
        (
            json!({"url": "http://169.254.169.254/latest"}),
            422,
            "invalid_url",
            "url",
        ),
        (
            json!({"url": "ftp://example.com/x"}),
            422,
            "invalid_url",
            "url",
        ),
        (
            json!({"url": "https://user:pw@example.com/x"}),
            422,
            "invalid_url",
            "url",
        ),
        (json!({"url": "not a url"}), 422, "invalid_url", "url"),
        (
            json!({"url": "https://example.com/x", "event_types": ["Nope"]}),
            422,
            "unknown_event_type",
            "event_types[0]",
        ),
        (
            json!({"url": "https://example.com/x", "event_types": ["FundsAvailable", "FundsAvailable"]}),
            422,
            "duplicate_event_type",
            "event_types[1]",
        ),
        (
            json!({"url": "https://example.com/x", "after": 99}),
            422,
            "invalid_position",
            "after",
        ),
        (
            json!({"url": "https://example.com/x", "colour": "red"}),
            400,
            "invalid_request",
            "",
        ),
        (json!({"url": 7}), 400, "invalid_request", ""),
    ] {
        let r = c.post("/v1/webhooks", &key, &body).await;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (status, Some(code)),
            "{body}: {}",
            r.body
        );
        if !field.is_empty() {
            assert_eq!(r.body["field"], field, "{body}");
        }
    }
    // A public URL is fine; at most 16 per tenant.
    for i in 0..16 {
        let r = c
            .post(
                "/v1/webhooks",
                &key,
                &json!({"url": format!("https://example.com/{i}")}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let r = c
        .post(
            "/v1/webhooks",
            &key,
            &json!({"url": "https://example.com/16"}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (422, Some("too_many_webhooks"))
    );
    let r = c.get("/v1/webhooks", &key).await;
    assert_eq!(r.body["webhooks"].as_array().map(Vec::len), Some(16));
    // Another tenant sees none of them, and cannot touch them.
    let other = c.tenant(ADMIN, "Other").await.expect("tenant");
    let id = r.body["webhooks"][0]["webhook_id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(
        c.get("/v1/webhooks", &other).await.body["webhooks"],
        json!([])
    );
    for (method, path) in [
        ("GET", format!("/v1/webhooks/{id}")),
        ("DELETE", format!("/v1/webhooks/{id}")),
        ("POST", format!("/v1/webhooks/{id}/retry")),
        ("POST", format!("/v1/webhooks/{id}/rotate-secret")),
    ] {
        let body = (method == "POST").then(|| b"{}".to_vec());
        let r = c
            .raw(method, &path, Some(&other), &[], body)
            .await
            .expect("request");
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (404, Some("unknown_webhook")),
            "{method} {path}"
        );
    }
    // Rotating refuses an Idempotency-Key and a too-long overlap.
    let r = c
        .post_idem(
            &format!("/v1/webhooks/{id}/rotate-secret"),
            &key,
            "k1",
            &json!({}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (400, Some("route_not_idempotent"))
    );
    let r = c
        .post(
            &format!("/v1/webhooks/{id}/rotate-secret"),
            &key,
            &json!({"expire_previous_after_seconds": 700_000}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (400, Some("expire_previous_after_seconds"))
    );
    let undocumented = c.undocumented();
    assert!(undocumented.is_empty(), "{undocumented:?}");
    running.shutdown().await.expect("shutdown");
}

/// The address is checked when sending too, at the address connected to: an endpoint
/// registered while private addresses were allowed gets nothing once they are not.
#[tokio::test]
async fn private_addresses_are_refused_when_sending() {
    let (_dir, db) = common::sqlite_file();
    let (running, c) = serve(&db).await;
    let key = c.tenant(ADMIN, "Moved Escrow").await.expect("tenant");
    let receiver = Receiver::default();
    let url = receiver.start().await;
    let r = c.post("/v1/webhooks", &key, &json!({ "url": url })).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let webhook = r.body["webhook_id"].as_str().expect("id").to_owned();
    running.shutdown().await.expect("shutdown");
    let mut config = common::config(&db);
    config.webhooks.retry_first = Duration::from_millis(100);
    let running = start(config).await.expect("server starts");
    let c = Client::new(format!("http://{}", running.addr));
    open_and_join(&c, &key).await.expect("open");
    let start = Instant::now();
    loop {
        let r = c.get(&format!("/v1/webhooks/{webhook}"), &key).await;
        if r.body["status"] == "failing" {
            let error = r.body["last_error"].as_str().unwrap_or_default();
            assert!(error.contains("no public address"), "{error}");
            assert!(r.body["last_status"].is_null(), "{}", r.body);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never refused: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(receiver.got().is_empty(), "a private address was called");
    running.shutdown().await.expect("shutdown");
}

/// How long after `key`'s tenant opens a payment its receiver `quick` gets the first
/// of its events.
async fn first_event_after(c: &Client, key: &str, quick: &Receiver) -> Duration {
    let f = open_and_join(c, key).await.expect("open");
    let appended = Instant::now();
    quick
        .wait("the quick receiver's first event", |g| {
            !types_of(g, &f.payment).is_empty()
        })
        .await;
    appended.elapsed()
}

/// One tenant's slow receiver (1.5 s an answer, a payment's events to take) does not
/// hold back another tenant's endpoint: it is sent its events meanwhile.
#[tokio::test]
async fn a_slow_receiver_does_not_hold_back_the_others() {
    let (_dir, db) = common::sqlite_file();
    let (running, c) = serve(&db).await;
    let slow_key = c.tenant(ADMIN, "Slow Escrow").await.expect("tenant");
    let key = c.tenant(ADMIN, "Quick Escrow").await.expect("tenant");
    let slow = Receiver::default();
    slow.delay_ms
        .store(1500, std::sync::atomic::Ordering::Relaxed);
    let quick = Receiver::default();
    for (k, r) in [(&slow_key, &slow), (&key, &quick)] {
        let url = r.start().await;
        let r = c.post("/v1/webhooks", k, &json!({ "url": url })).await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let s = open_and_join(&c, &slow_key).await.expect("open");
    slow.wait("the slow receiver's first request", |g| !g.is_empty())
        .await;
    let waited = first_event_after(&c, &key, &quick).await;
    assert!(
        waited < Duration::from_secs(4),
        "the quick receiver waited {waited:?} for the slow one ({} of its events sent)",
        types_of(&slow.got(), &s.payment).len()
    );
    running.shutdown().await.expect("shutdown");
}

/// A tenant's many slow receivers (eight endpoints, 8 s an answer, each with a payment's
/// events to take) do not take every sending slot: another tenant's endpoint is sent
/// its events meanwhile.
#[tokio::test]
async fn one_tenants_slow_receivers_do_not_hold_back_other_tenants() {
    let (_dir, db) = common::sqlite_file();
    let (running, c) = serve(&db).await;
    let slow_key = c.tenant(ADMIN, "Busy Escrow").await.expect("tenant");
    let key = c.tenant(ADMIN, "Quick Escrow").await.expect("tenant");
    let slow = Receiver::default();
    slow.delay_ms
        .store(8000, std::sync::atomic::Ordering::Relaxed);
    let slow_url = slow.start().await;
    for i in 0..8 {
        let url = format!("{slow_url}?endpoint={i}");
        let r = c
            .post("/v1/webhooks", &slow_key, &json!({ "url": url }))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let quick = Receiver::default();
    let url = quick.start().await;
    let r = c.post("/v1/webhooks", &key, &json!({ "url": url })).await;
    assert_eq!(r.status, 201, "{}", r.body);
    open_and_join(&c, &slow_key).await.expect("open");
    slow.wait("the slow receivers' first request", |g| !g.is_empty())
        .await;
    // Give every slow endpoint's round time to start (a round a second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let waited = first_event_after(&c, &key, &quick).await;
    assert!(
        waited < Duration::from_secs(4),
        "the quick receiver waited {waited:?} behind the other tenant's slow receivers \
         ({} requests taken by them)",
        slow.got().len()
    );
    running.shutdown().await.expect("shutdown");
}

/// Addresses in odd spellings (the `url` crate normalises `0x7f.1`, `127.1` and
/// `2130706433` to 127.0.0.1) and IPv4 addresses carried in IPv6 (mapped, compatible,
/// NAT64, 6to4) are refused like the plain ones; public ones in the same forms are not.
#[tokio::test]
async fn private_addresses_in_any_form_are_refused() {
    use std::net::IpAddr;
    use trustfold_server::webhooks::is_private;
    for ip in [
        "127.0.0.1",
        "192.0.0.170",
        "::ffff:127.0.0.1",
        "::127.0.0.1",
        "::10.0.0.1",
        "64:ff9b::7f00:1",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b:1::808:808",
        "2002:7f00:1::",
        "2002:a9fe:a9fe::1",
        "fec0::1",
        "2001::1",
        "100::1",
        "fd00:ec2::254",
    ] {
        let ip: IpAddr = ip.parse().expect(ip);
        assert!(is_private(ip), "{ip} is not public");
    }
    for ip in [
        "8.8.8.8",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
        "2606:4700:4700::1111",
    ] {
        let ip: IpAddr = ip.parse().expect(ip);
        assert!(!is_private(ip), "{ip} is public");
    }
    let (_dir, db) = common::sqlite_file();
    let running = start(common::config(&db)).await.expect("server starts");
    let c = Client::new(format!("http://{}", running.addr));
    let key = c.tenant(ADMIN, "Careful Escrow").await.expect("tenant");
    for url in [
        "http://0x7f.1/hooks",
        "http://127.1/hooks",
        "http://2130706433/hooks",
        "http://0177.0.0.1/hooks",
        "http://[::ffff:127.0.0.1]/hooks",
        "http://[::127.0.0.1]/hooks",
        "http://[64:ff9b::169.254.169.254]/latest",
        "http://[2002:a9fe:a9fe::]/latest",
        "http://192.0.0.170/hooks",
    ] {
        let r = c.post("/v1/webhooks", &key, &json!({ "url": url })).await;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (422, Some("invalid_url")),
            "{url}: {}",
            r.body
        );
    }
    running.shutdown().await.expect("shutdown");
}

/// An endpoint's URL is kept as parsed: the same URL spelt otherwise (case, default
/// port, spaces around it) is the same endpoint, not a second one sent every event
/// again; a control character is percent-encoded as it is sent, the same on both
/// engines (PostgreSQL's text cannot hold a NUL).
async fn urls_are_kept_as_parsed(database: &str) {
    let running = start(common::config(database))
        .await
        .expect("server starts");
    let c = Client::new(format!("http://{}", running.addr));
    let key = c.tenant(ADMIN, "Spelling Escrow").await.expect("tenant");
    let r = c
        .post(
            "/v1/webhooks",
            &key,
            &json!({ "url": " HTTPS://Example.COM:443/a\u{0}b " }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["url"], "https://example.com/a%00b");
    let again = c
        .post(
            "/v1/webhooks",
            &key,
            &json!({ "url": "https://example.com/a%00b" }),
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["webhook_id"], r.body["webhook_id"]);
    running.shutdown().await.expect("shutdown");
}

common::on_both_databases!(urls_are_kept_as_parsed);

/// Many endpoints (here 1,100 of a tenant with no events, always due and with nothing
/// to send, registered first) do not hide another: every endpoint with events to send
/// is served.
#[tokio::test]
async fn every_endpoint_is_served_however_many_there_are() {
    let (_dir, db) = common::sqlite_file();
    let (running, c) = serve(&db).await;
    let key = c.tenant(ADMIN, "Crowded Escrow").await.expect("tenant");
    running.shutdown().await.expect("shutdown");
    {
        use sqlx::Connection as _;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{db}"))
            .await
            .expect("open");
        for i in 0..1100u128 {
            sqlx::query(
                "INSERT INTO webhooks (webhook_id, tenant_id, url, event_types, secret, \
                 previous_secrets, position, attempts, next_attempt_at_us, created_at_us) \
                 VALUES ($1, $2, $3, '[]', $4, '[]', 0, 0, 0, 0)",
            )
            .bind(uuid::Uuid::from_u128(0x1000 + i))
            .bind(uuid::Uuid::from_u128(0xbeef))
            .bind(format!("https://example.com/{i}"))
            .bind(vec![7u8; 32])
            .execute(&mut conn)
            .await
            .expect("insert");
        }
    }
    let (running, c) = serve(&db).await;
    let receiver = Receiver::default();
    let url = receiver.start().await;
    let r = c.post("/v1/webhooks", &key, &json!({ "url": url })).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let f = open_and_join(&c, &key).await.expect("open");
    receiver
        .wait("the crowded tenant's events", |g| {
            !types_of(g, &f.payment).is_empty()
        })
        .await;
    running.shutdown().await.expect("shutdown");
}

/// Under steady traffic (an event every 100 ms), a tenant's first endpoint is found
/// and served within seconds: the sender's timed round is not put off by appends.
#[tokio::test]
async fn a_first_endpoint_is_found_under_steady_traffic() {
    let (_dir, db) = common::sqlite_file();
    let (running, c) = serve(&db).await;
    let key = c.tenant(ADMIN, "Busy Escrow").await.expect("tenant");
    let f = open_and_join(&c, &key).await.expect("open");
    // Let the sender see that there are no endpoints.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (c, key, f, stop) = (c.clone(), key.clone(), f.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = c
                    .post(
                        "/v1/payments",
                        &key,
                        &json!({
                            "policy": "earnest-money",
                            "amount": {"amount": "100.00", "currency": "USD"},
                            "initiator": {"party": f.agent, "roles": ["listing_agent"]}
                        }),
                    )
                    .await;
                assert_eq!(r.status, 201, "{}", r.body);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let receiver = Receiver::default();
    let url = receiver.start().await;
    let r = c.post("/v1/webhooks", &key, &json!({ "url": url })).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let start = Instant::now();
    while receiver.got().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no request within 5 s of registering, under steady traffic"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.await.expect("traffic");
    running.shutdown().await.expect("shutdown");
}

/// Runs statements on the server's database (SQLite file or PostgreSQL URL) from
/// outside the server, the way an operator's tool would.
async fn on_the_database(database: &str, statements: &[&str]) {
    use sqlx::Connection as _;
    if database.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(database)
            .await
            .expect("connect");
        for s in statements {
            sqlx::query(s).execute(&mut conn).await.expect(s);
        }
    } else {
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{database}"))
            .await
            .expect("open");
        for s in statements {
            sqlx::query(s).execute(&mut conn).await.expect(s);
        }
    }
}

/// How many rows of the delivery log an endpoint has, read from the table itself.
async fn logged_rows(database: &str, webhook: &str) -> i64 {
    use sqlx::Connection as _;
    let id = uuid::Uuid::parse_str(webhook).expect("id");
    let sql = "SELECT COUNT(*) FROM webhook_deliveries WHERE webhook_id = $1";
    if database.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(database)
            .await
            .expect("connect");
        sqlx::query_scalar(sql)
            .bind(id)
            .fetch_one(&mut conn)
            .await
            .expect("count")
    } else {
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{database}"))
            .await
            .expect("open");
        sqlx::query_scalar(sql)
            .bind(id)
            .fetch_one(&mut conn)
            .await
            .expect("count")
    }
}

/// Waits (at most 20 s) until the endpoint's log holds at least `n` tries; the page.
async fn log_of(c: &Client, key: &str, webhook: &str, n: usize) -> Value {
    let start = Instant::now();
    loop {
        let r = c
            .get(
                &format!("/v1/webhooks/{webhook}/deliveries?limit=1000"),
                key,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let got = r.body["deliveries"].as_array().map_or(0, Vec::len);
        if got >= n {
            return r.body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{n} tries not logged within 20 s: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `seq`s of a page of the log.
fn seqs(page: &Value) -> Vec<u64> {
    page["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .map(|d| d["seq"].as_u64().expect("seq"))
        .collect()
}

/// Every try is logged: successes, a receiver's 500s and a refused connection (whose
/// error names no secret of the URL); the log pages newest first by `before`, its
/// parameters are checked, another tenant's endpoint is unknown, and deleting the
/// endpoint deletes its rows.
async fn deliveries_are_logged_and_paged(database: &str) {
    let (running, c) = serve(database).await;
    let key = c.tenant(ADMIN, "Logged Escrow").await.expect("tenant");
    let other = c.tenant(ADMIN, "Nosy Escrow").await.expect("tenant");
    let receiver = Receiver::default();
    let url = receiver.start().await;
    receiver.answers.lock().expect("lock").extend([500, 500]);
    let r = c.post("/v1/webhooks", &key, &json!({ "url": url })).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let webhook = r.body["webhook_id"].as_str().expect("id").to_owned();
    let f = open_and_join(&c, &key).await.expect("open");
    let got = receiver
        .wait("seven events after two failed tries", |g| g.len() >= 9)
        .await;
    let page = log_of(&c, &key, &webhook, 9).await;
    assert_eq!(page["webhook_id"], webhook.as_str());
    assert_eq!(page["has_more"], false);
    let log = page["deliveries"].as_array().expect("deliveries");
    assert_eq!(
        seqs(&page),
        (1..=9).rev().collect::<Vec<u64>>(),
        "newest first"
    );
    // Oldest first, as the receiver got them.
    let tries: Vec<&Value> = log.iter().rev().collect();
    for (i, (d, g)) in tries.iter().zip(&got).enumerate() {
        assert_eq!(d["event_id"], g.id.as_str(), "try {i}");
        assert_eq!(d["event_type"], g.json()["type"], "try {i}");
        assert_eq!(d["position"], g.json()["data"]["position"], "try {i}");
        assert_eq!(d["webhook_id"], webhook.as_str());
        assert_eq!(d["tenant_id"], g.json()["data"]["tenant_id"]);
        assert!(d["duration_ms"].as_u64().is_some(), "{d}");
        let at: trustfold_core::time::Timestamp = d["started_at"]
            .as_str()
            .expect("started_at")
            .parse()
            .expect("RFC 3339");
        assert!(at.unix_millis() > 1_700_000_000_000, "{d}");
    }
    for (i, d) in tries.iter().take(2).enumerate() {
        assert_eq!(d["attempt"], i + 1);
        assert_eq!(d["status"], 500);
        assert_eq!(d["succeeded"], false);
        assert!(
            d["error"].as_str().is_some_and(|e| e.contains("500")),
            "{d}"
        );
    }
    assert_eq!(tries[2]["attempt"], 3, "the third try of the first event");
    for d in &tries[2..] {
        assert_eq!(d["status"], 200, "{d}");
        assert_eq!(d["succeeded"], true);
        assert_eq!(d["error"], Value::Null);
    }
    assert!(tries[3..].iter().all(|d| d["attempt"] == 1));
    assert!(
        tries
            .windows(2)
            .all(|w| w[0]["started_at"].as_str() <= w[1]["started_at"].as_str()),
        "started in seq order"
    );
    assert_eq!(types_of(&got[2..], &f.payment).len(), 7);
    // Pages of 4, by the cursor: 9..6, 5..2, 1.
    let base = format!("/v1/webhooks/{webhook}/deliveries");
    let p1 = c.get(&format!("{base}?limit=4"), &key).await;
    assert_eq!(seqs(&p1.body), [9, 8, 7, 6]);
    assert_eq!(
        (p1.body["has_more"].as_bool(), p1.body["next"].as_u64()),
        (Some(true), Some(6))
    );
    let p2 = c.get(&format!("{base}?limit=4&before=6"), &key).await;
    assert_eq!(seqs(&p2.body), [5, 4, 3, 2]);
    assert_eq!(
        (p2.body["has_more"].as_bool(), p2.body["next"].as_u64()),
        (Some(true), Some(2))
    );
    let p3 = c.get(&format!("{base}?before=2&limit=4"), &key).await;
    assert_eq!(seqs(&p3.body), [1]);
    assert_eq!(
        (p3.body["has_more"].as_bool(), p3.body["next"].as_u64()),
        (Some(false), Some(1))
    );
    let none = c.get(&format!("{base}?before=1"), &key).await;
    assert_eq!(seqs(&none.body), Vec::<u64>::new());
    assert_eq!(none.body["has_more"], false);
    // The default page holds them all; a limit above 1,000 counts as 1,000.
    assert_eq!(seqs(&c.get(&base, &key).await.body).len(), 9);
    let big = c.get(&format!("{base}?limit=1000000"), &key).await;
    assert_eq!(
        (big.status, seqs(&big.body).len()),
        (200, 9),
        "{}",
        big.body
    );
    // Bad parameters: 400 with the code and the field.
    for (query, code, field) in [
        ("limit=0", "invalid_parameter", "limit"),
        ("limit=-1", "invalid_parameter", "limit"),
        ("limit=ten", "invalid_parameter", "limit"),
        ("before=-1", "invalid_parameter", "before"),
        ("before=9223372036854775808", "invalid_parameter", "before"),
        ("before=x", "invalid_parameter", "before"),
        ("before=1&before=2", "invalid_parameter", "before"),
        ("after=1", "unknown_parameter", "after"),
    ] {
        let r = c.get(&format!("{base}?{query}"), &key).await;
        assert_eq!(
            (r.status, r.body["code"].as_str(), r.body["field"].as_str()),
            (400, Some(code), Some(field)),
            "{query}: {}",
            r.body
        );
    }
    let r = c.get("/v1/webhooks/NOT-AN-ID/deliveries", &key).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (400, Some("invalid_id"))
    );
    // Another tenant's endpoint and an unknown one are both unknown.
    for (path, who) in [
        (base.clone(), &other),
        (
            format!("/v1/webhooks/{}/deliveries", uuid::Uuid::new_v4()),
            &key,
        ),
    ] {
        let r = c.get(&path, who).await;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (404, Some("unknown_webhook")),
            "{path}: {}",
            r.body
        );
    }
    // A receiver that refuses the connection: no status, an error naming the host
    // only (the URL's path and query hold the receiver's token).
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let refused_url = format!("http://127.0.0.1:{closed}/hooks/tok_s3cr3t?key=k3y");
    let r = c
        .post(
            "/v1/webhooks",
            &key,
            &json!({ "url": refused_url, "after": 0 }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let refused = r.body["webhook_id"].as_str().expect("id").to_owned();
    let page = log_of(&c, &key, &refused, 2).await;
    let log = page["deliveries"].as_array().expect("deliveries");
    let first_event = log.last().expect("a try")["event_id"].clone();
    for (i, d) in log.iter().rev().enumerate() {
        assert_eq!(d["attempt"], i + 1, "{d}");
        assert_eq!(d["event_id"], first_event, "held at the first event");
        assert_eq!(d["status"], Value::Null);
        assert_eq!(d["succeeded"], false);
        let e = d["error"].as_str().expect("an error");
        assert!(e.contains("request failed"), "{e}");
        assert!(
            !e.contains("s3cr3t") && !e.contains("k3y"),
            "the URL's token: {e}"
        );
    }
    // Deleted: the rows go with the endpoint, and its log is unknown.
    assert_eq!(logged_rows(database, &webhook).await, 9);
    let r = c
        .raw(
            "DELETE",
            &format!("/v1/webhooks/{webhook}"),
            Some(&key),
            &[],
            None,
        )
        .await
        .expect("delete");
    assert_eq!(r.status, 204);
    assert_eq!(
        logged_rows(database, &webhook).await,
        0,
        "rows after delete"
    );
    assert!(
        logged_rows(database, &refused).await >= 2,
        "only its own rows"
    );
    let r = c.get(&base, &key).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (404, Some("unknown_webhook"))
    );
    running.shutdown().await.expect("shutdown");
}

common::on_both_databases!(deliveries_are_logged_and_paged);

/// An endpoint's log keeps the newest `keep_deliveries` tries (here 5 of 7).
async fn the_log_keeps_the_newest_tries(database: &str) {
    let mut config = common::config(database);
    config.webhooks.allow_private = true;
    config.webhooks.keep_deliveries = 5;
    let running = start(config).await.expect("server starts");
    let c = Client::new(format!("http://{}", running.addr));
    let key = c.tenant(ADMIN, "Forgetful Escrow").await.expect("tenant");
    let receiver = Receiver::default();
    let url = receiver.start().await;
    let r = c.post("/v1/webhooks", &key, &json!({ "url": url })).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let webhook = r.body["webhook_id"].as_str().expect("id").to_owned();
    open_and_join(&c, &key).await.expect("open");
    receiver.wait("seven events", |g| g.len() >= 7).await;
    // The seventh try is logged in the transaction that moves the endpoint past it.
    let start = Instant::now();
    let page = loop {
        let page = log_of(&c, &key, &webhook, 1).await;
        if seqs(&page).first() == Some(&7) {
            break page;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{page}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(seqs(&page), [7, 6, 5, 4, 3]);
    assert_eq!(page["has_more"], false);
    assert_eq!(logged_rows(database, &webhook).await, 5);
    running.shutdown().await.expect("shutdown");
}

common::on_both_databases!(the_log_keeps_the_newest_tries);

/// A page holds at most 1,000 tries, whatever `limit` asks (here a log of 1,005, written
/// into the table as the sender would have).
async fn a_page_is_at_most_a_thousand(database: &str) {
    let (running, c) = serve(database).await;
    let key = c.tenant(ADMIN, "Busy Escrow").await.expect("tenant");
    // No events: nothing is sent, the log is ours to fill.
    let r = c
        .post(
            "/v1/webhooks",
            &key,
            &json!({ "url": "http://127.0.0.1:9/hooks" }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let webhook = r.body["webhook_id"].as_str().expect("id").to_owned();
    let id = uuid::Uuid::parse_str(&webhook).expect("id");
    {
        use sqlx::Connection as _;
        let insert = "INSERT INTO webhook_deliveries (webhook_id, seq, tenant_id, event_id, \
             position, event_type, attempt, started_at_us, duration_ms, status, error, \
             succeeded) SELECT webhook_id, $2, tenant_id, $3, $2, 'PaymentInitiated', 1, $4, 3, \
             200, NULL, TRUE FROM webhooks WHERE webhook_id = $1";
        macro_rules! fill {
            ($conn:expr) => {{
                let mut tx = $conn.begin().await.expect("begin");
                for seq in 1..=1005i64 {
                    sqlx::query(insert)
                        .bind(id)
                        .bind(seq)
                        .bind(uuid::Uuid::new_v4())
                        .bind(1_795_824_000_000_000 + seq)
                        .execute(&mut *tx)
                        .await
                        .expect("insert");
                }
                sqlx::query("UPDATE webhooks SET deliveries = 1005 WHERE webhook_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .expect("update");
                tx.commit().await.expect("commit");
            }};
        }
        if database.starts_with("postgres") {
            let mut conn = sqlx::PgConnection::connect(database)
                .await
                .expect("connect");
            fill!(conn);
        } else {
            let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{database}"))
                .await
                .expect("open");
            fill!(conn);
        }
    }
    let base = format!("/v1/webhooks/{webhook}/deliveries");
    let r = c.get(&format!("{base}?limit=5000"), &key).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(seqs(&r.body), (6..=1005).rev().collect::<Vec<u64>>());
    assert_eq!(
        (r.body["has_more"].as_bool(), r.body["next"].as_u64()),
        (Some(true), Some(6))
    );
    let r = c.get(&format!("{base}?limit=5000&before=6"), &key).await;
    assert_eq!(seqs(&r.body), [5, 4, 3, 2, 1]);
    assert_eq!(r.body["has_more"], false);
    // The default page: 100.
    let r = c.get(&base, &key).await;
    assert_eq!(seqs(&r.body), (906..=1005).rev().collect::<Vec<u64>>());
    assert_eq!(
        r.body["deliveries"][0]["started_at"],
        "2026-11-28T00:00:00.001005Z"
    );
    running.shutdown().await.expect("shutdown");
}

common::on_both_databases!(a_page_is_at_most_a_thousand);

/// Takes the server's database back to schema 3 (what the later schemas added dropped),
/// with `also` run before the version is set.
async fn back_to_schema_3(database: &str, also: &[&str]) {
    let mut statements = vec![
        "DROP TABLE held_rail_notices",
        "DROP TABLE token_revocations",
        "DROP TABLE payment_rail_refs",
        "DELETE FROM projection_checkpoints WHERE name = 'rail_refs'",
        "DROP TABLE webhook_deliveries",
        "ALTER TABLE webhooks DROP COLUMN deliveries",
        "DROP TABLE projection_format",
    ];
    statements.extend_from_slice(also);
    statements.push("UPDATE trustfold_server_schema SET version = 3");
    on_the_database(database, &statements).await;
}

/// A database of server schema 3 (webhooks, no delivery log) is upgraded: its endpoint
/// keeps its place and its tries are logged from then on.
async fn an_upgraded_database_logs_deliveries(database: &str) {
    let (running, c) = serve(database).await;
    let key = c.tenant(ADMIN, "Old Escrow").await.expect("tenant");
    let receiver = Receiver::default();
    let url = receiver.start().await;
    let r = c.post("/v1/webhooks", &key, &json!({ "url": url })).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let webhook = r.body["webhook_id"].as_str().expect("id").to_owned();
    running.shutdown().await.expect("shutdown");
    // Back to schema 3, as the previous release left it.
    back_to_schema_3(database, &[]).await;
    let (running, c) = serve(database).await;
    open_and_join(&c, &key).await.expect("open");
    receiver.wait("seven events", |g| g.len() >= 7).await;
    let page = log_of(&c, &key, &webhook, 7).await;
    assert_eq!(seqs(&page), (1..=7).rev().collect::<Vec<u64>>());
    assert!(page["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .all(|d| d["succeeded"] == true));
    running.shutdown().await.expect("shutdown");
}

common::on_both_databases!(an_upgraded_database_logs_deliveries);

/// An endpoint deleted while its turn waits behind slow receivers (every sender busy)
/// gets nothing once its turn comes: the sender reads the endpoint again first.
async fn an_endpoint_deleted_while_waiting_gets_nothing(database: &str) {
    let (running, c) = serve(database).await;
    let slow = Receiver::default();
    slow.delay_ms
        .store(4000, std::sync::atomic::Ordering::Relaxed);
    let slow_url = slow.start().await;
    // Four tenants of two endpoints each (no tenant may take every slot).
    for t in 0..4 {
        let busy = c
            .tenant(ADMIN, &format!("Busy Escrow {t}"))
            .await
            .expect("tenant");
        for n in 0..2 {
            let r = c
                .post(
                    "/v1/webhooks",
                    &busy,
                    &json!({ "url": format!("{slow_url}?t={t}&n={n}") }),
                )
                .await;
            assert_eq!(r.status, 201, "{}", r.body);
        }
        open_and_join(&c, &busy).await.expect("open");
    }
    // All eight senders are busy with the slow receiver.
    slow.wait("eight slow requests", |g| g.len() >= 8).await;
    let fast = Receiver::default();
    let fast_url = fast.start().await;
    let other = c.tenant(ADMIN, "Other Escrow").await.expect("tenant");
    let r = c
        .post("/v1/webhooks", &other, &json!({ "url": fast_url }))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let webhook = r.body["webhook_id"].as_str().expect("id").to_owned();
    open_and_join(&c, &other).await.expect("open");
    // Its turn is taken (a round comes every second) and waits for a sender.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = c
        .raw(
            "DELETE",
            &format!("/v1/webhooks/{webhook}"),
            Some(&other),
            &[],
            None,
        )
        .await
        .expect("delete");
    assert_eq!(r.status, 204, "{}", r.body);
    slow.delay_ms.store(0, std::sync::atomic::Ordering::Relaxed);
    slow.wait("every slow endpoint's events", |g| g.len() >= 8 * 7)
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(fast.got().len(), 0, "the deleted endpoint got events");
    running.shutdown().await.expect("shutdown");
}

common::on_both_databases!(an_endpoint_deleted_while_waiting_gets_nothing);

/// An endpoint whose progress cannot be recorded (the database refuses the write) is
/// paused, the pause doubling from 1 s: its event is not sent again every second.
#[tokio::test]
async fn an_endpoint_whose_progress_cannot_be_recorded_backs_off() {
    let (_dir, database) = common::sqlite_file();
    let (running, c) = serve(&database).await;
    let key = c.tenant(ADMIN, "Stuck Escrow").await.expect("tenant");
    let receiver = Receiver::default();
    let url = receiver.start().await;
    let r = c.post("/v1/webhooks", &key, &json!({ "url": url })).await;
    assert_eq!(r.status, 201, "{}", r.body);
    on_the_database(
        &database,
        &[
            "CREATE TRIGGER no_progress BEFORE UPDATE OF position ON webhooks \
           BEGIN SELECT RAISE(ABORT, 'progress refused'); END",
        ],
    )
    .await;
    open_and_join(&c, &key).await.expect("open");
    receiver.wait("the first event", |g| !g.is_empty()).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let sent = receiver.got().len();
    // Every second that would be 8 or more; paused 1, 2 and 4 s, about 4.
    assert!(sent <= 5, "the same event was sent {sent} times in 8 s");
    on_the_database(&database, &["DROP TRIGGER no_progress"]).await;
    receiver
        .wait("all seven events", |g| {
            g.iter()
                .map(|x| x.id.clone())
                .collect::<std::collections::HashSet<_>>()
                .len()
                >= 7
        })
        .await;
    running.shutdown().await.expect("shutdown");
}

/// A database as a build whose schema 3 kept one retired secret per endpoint left it
/// (`previous_secret`, `previous_until_us`; later builds keep a list,
/// `previous_secrets`): it is upgraded, and its endpoint rotates and delivers.
async fn a_database_of_the_first_webhooks_schema_is_repaired(database: &str) {
    let (running, c) = serve(database).await;
    let key = c.tenant(ADMIN, "Early Escrow").await.expect("tenant");
    let receiver = Receiver::default();
    let url = receiver.start().await;
    let r = c.post("/v1/webhooks", &key, &json!({ "url": url })).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let webhook = r.body["webhook_id"].as_str().expect("id").to_owned();
    running.shutdown().await.expect("shutdown");
    let (blob, int) = if database.starts_with("postgres") {
        ("bytea", "bigint")
    } else {
        ("BLOB", "INTEGER")
    };
    let old_secret = format!("ALTER TABLE webhooks ADD COLUMN previous_secret {blob}");
    let old_until = format!("ALTER TABLE webhooks ADD COLUMN previous_until_us {int}");
    back_to_schema_3(
        database,
        &[
            "ALTER TABLE webhooks DROP COLUMN previous_secrets",
            &old_secret,
            &old_until,
        ],
    )
    .await;
    let (running, c) = serve(database).await;
    let r = c
        .post(
            &format!("/v1/webhooks/{webhook}/rotate-secret"),
            &key,
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    open_and_join(&c, &key).await.expect("open");
    receiver.wait("seven events", |g| g.len() >= 7).await;
    running.shutdown().await.expect("shutdown");
}

common::on_both_databases!(a_database_of_the_first_webhooks_schema_is_repaired);

/// A database of server schema 8 as the build that first claimed held rail notices left
/// it (its migration 8 also added the claim columns, which schema 9 adds now): it
/// starts, and takes notices.
async fn a_database_with_early_claim_columns_starts(database: &str) {
    let (running, c) = serve(database).await;
    let key = c.tenant(ADMIN, "Claimed Escrow").await.expect("tenant");
    running.shutdown().await.expect("shutdown");
    on_the_database(
        database,
        &[
            "DROP INDEX held_rail_notices_heads",
            "DROP TABLE projection_format",
            "DROP INDEX held_rail_notices_due_heads",
            "ALTER TABLE held_rail_notices DROP COLUMN due",
            "DROP INDEX payment_rail_refs_position",
            "ALTER TABLE payment_rail_refs DROP COLUMN position",
            "UPDATE trustfold_server_schema SET version = 8",
        ],
    )
    .await;
    let (running, c) = serve(database).await;
    let r = c
        .post(
            "/v1/rail-notices",
            &key,
            &json!({"rail_ref": "ACH-EARLY", "notice": {"kind": "settled"}}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["status"], "held", "{}", r.body);
    running.shutdown().await.expect("shutdown");
}

common::on_both_databases!(a_database_with_early_claim_columns_starts);

/// A backlog sent to a host name goes over one kept-alive connection: the endpoint's
/// client, pinned to the checked address, is kept (the receiver counts the
/// connections by the peer's address).
#[tokio::test]
async fn a_backlog_goes_over_one_connection() {
    let (_dir, db) = common::sqlite_file();
    let (running, c) = serve(&db).await;
    let key = c.tenant(ADMIN, "Chatty Escrow").await.expect("tenant");
    open_and_join(&c, &key).await.expect("open");
    let peers: Arc<Mutex<Vec<std::net::SocketAddr>>> = Arc::default();
    let seen = peers.clone();
    let app = axum::Router::new().route(
        "/hooks",
        axum::routing::post(
            move |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<
                std::net::SocketAddr,
            >| {
                let seen = seen.clone();
                async move {
                    seen.lock().expect("lock").push(peer);
                    StatusCode::OK
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await;
    });
    let url = format!("http://localhost:{port}/hooks");
    let r = c
        .post("/v1/webhooks", &key, &json!({ "url": url, "after": 0 }))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let start = Instant::now();
    while peers.lock().expect("lock").len() < 7 {
        assert!(start.elapsed() < Duration::from_secs(20), "not all sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut peers = peers.lock().expect("lock").clone();
    peers.dedup();
    assert_eq!(peers.len(), 1, "connections: {peers:?}");
    running.shutdown().await.expect("shutdown");
}
