//! The replica against a real server (in-process, loopback HTTP, SQLite) seen through
//! a small proxy on loopback that plays the man in the middle: it replays an older
//! genuine head with the event pages cut to match. The replica must not take it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, value::RawValue, Value};
use trustfold::client::Client;
use trustfold::history::PublicKey;
use trustfold::id::PaymentId;
use trustfold::replica::Replica;
use trustfold_server::app::{start, Config, Running};

const ADMIN: &str = "admin-secret-for-tests";

/// What the proxy does to the answers it passes on.
#[derive(Clone, Debug, Default)]
enum Tamper {
    /// Nothing.
    #[default]
    None,
    /// Answers `/head` with the last genuine one it passed on (before this mode), and
    /// cuts the event pages at that head's seq.
    ReplayHead,
}

/// A `/head` answer as the server gave it.
#[derive(Clone, Debug)]
struct SavedHead {
    headers: HeaderMap,
    body: Bytes,
    seq: u64,
}

struct Proxy {
    upstream: String,
    http: reqwest::Client,
    tamper: Mutex<Tamper>,
    saved: Mutex<Option<SavedHead>>,
    heads: AtomicUsize,
}

impl Proxy {
    fn set(&self, t: Tamper) {
        *self.tamper.lock().expect("lock") = t;
    }
}

/// Starts a proxy to `upstream`; returns its base URL and its handle.
async fn proxy(upstream: &str) -> (String, Arc<Proxy>) {
    let p = Arc::new(Proxy {
        upstream: upstream.to_string(),
        http: reqwest::Client::new(),
        tamper: Mutex::new(Tamper::None),
        saved: Mutex::new(None),
        heads: AtomicUsize::new(0),
    });
    let app = axum::Router::new().fallback(forward).with_state(p.clone());
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("proxy") });
    (base, p)
}

/// The seq of a signed head's JSON.
fn head_seq(body: &[u8]) -> u64 {
    let v: Value = serde_json::from_slice(body).expect("head json");
    v.get("head").unwrap_or(&v)["seq"].as_u64().expect("seq")
}

/// An event page rebuilt from records kept byte for byte.
fn page(events: &[&RawValue], has_more: bool, next: u64) -> Vec<u8> {
    let list: Vec<&str> = events.iter().map(|r| r.get()).collect();
    format!(
        "{{\"events\":[{}],\"has_more\":{has_more},\"next\":{next}}}",
        list.join(",")
    )
    .into_bytes()
}

#[derive(serde::Deserialize)]
struct RawPage<'a> {
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
    next: u64,
}

async fn forward(State(p): State<Arc<Proxy>>, req: Request) -> Response {
    let tamper = p.tamper.lock().expect("lock").clone();
    let path = req.uri().path().to_string();
    let target = format!(
        "{}{}",
        p.upstream,
        req.uri()
            .path_and_query()
            .map_or(path.as_str(), |x| x.as_str())
    );
    if path.ends_with("/head") {
        p.heads.fetch_add(1, Ordering::SeqCst);
        if let Tamper::ReplayHead = tamper {
            let saved = p.saved.lock().expect("lock").clone().expect("a saved head");
            let mut res = Response::new(Body::from(saved.body));
            *res.headers_mut() = saved.headers;
            return res;
        }
    }
    let method = req.method().clone();
    let mut headers = req.headers().clone();
    for h in [header::HOST, header::CONTENT_LENGTH, header::CONNECTION] {
        headers.remove(h);
    }
    let body = axum::body::to_bytes(req.into_body(), usize::MAX)
        .await
        .expect("request body");
    let res = match p
        .http
        .request(method, target)
        .headers(headers)
        .body(body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            let mut res = Response::new(Body::from(e.to_string()));
            *res.status_mut() = StatusCode::BAD_GATEWAY;
            return res;
        }
    };
    let status = res.status();
    let mut headers = res.headers().clone();
    for h in [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONNECTION,
    ] {
        headers.remove(h);
    }
    let answer = |headers: HeaderMap, body: Body| {
        let mut r = Response::new(body);
        *r.status_mut() = status;
        *r.headers_mut() = headers;
        r
    };
    if path.ends_with("/stream") {
        let upstream = res.bytes_stream();
        return answer(headers, Body::from_stream(upstream));
    }
    let bytes = res.bytes().await.unwrap_or_default();
    if !status.is_success() {
        return answer(headers, Body::from(bytes));
    }
    if path.ends_with("/head") {
        *p.saved.lock().expect("lock") = Some(SavedHead {
            headers: headers.clone(),
            body: bytes.clone(),
            seq: head_seq(&bytes),
        });
    }
    if path.ends_with("/events") {
        let raw: RawPage<'_> = serde_json::from_slice(&bytes).expect("events page");
        if let Tamper::ReplayHead = tamper {
            let upto = p.saved.lock().expect("lock").as_ref().expect("saved").seq;
            let kept: Vec<&RawValue> = raw
                .events
                .iter()
                .copied()
                .filter(|r| {
                    let v: Value = serde_json::from_str(r.get()).expect("record");
                    v["event"]["seq"].as_u64().expect("seq") <= upto
                })
                .collect();
            let next = raw.next.min(upto);
            headers.remove("trustfold-signature");
            return answer(headers, Body::from(page(&kept, false, next)));
        }
    }
    answer(headers, Body::from(bytes))
}

/// A server on a fresh SQLite file.
async fn server(dir: &std::path::Path) -> Running {
    let mut c = Config::new(dir.join("t.db").display().to_string());
    c.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.http.admin_token = Some(ADMIN.into());
    c.http.heartbeat = Duration::from_millis(300);
    c.http.poll_interval = Duration::from_millis(100);
    start(c).await.expect("server starts")
}

fn id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A tenant with the earnest-money policy and a payment opened by an agent who invited
/// a buyer (version 2).
struct Setup {
    /// A client of the server itself, with the tenant's API key.
    c: Client,
    api_key: String,
    p: PaymentId,
    buyer: String,
    key: PublicKey,
}

async fn setup(base: &str) -> Setup {
    let anon = Client::new(base).expect("client");
    let t = anon.create_tenant(ADMIN, "Acme").await.expect("tenant");
    let api_key = t["api_key"].as_str().expect("api key").to_string();
    let c = Client::new(base).expect("client").api_key(&api_key);
    let policy: Value =
        serde_json::from_str(include_str!("../../examples/policies/earnest-money.json"))
            .expect("policy");
    c.create_policy(&policy).await.expect("policy");
    let (agent, buyer) = (id(), id());
    let open = json!({
        "policy": "earnest-money",
        "amount": {"amount": "5000.00", "currency": "USD"},
        "initiator": {"party": agent, "roles": ["listing_agent"]}
    });
    let p = c
        .create_payment(&open, None)
        .await
        .expect("open")
        .payment_id;
    let invite = json!({"type": "Invite", "party": buyer, "roles": ["buyer"]});
    c.send_command(
        p,
        &invite,
        Some(&json!({"party": agent, "role": "listing_agent"})),
        Some(1),
        None,
    )
    .await
    .expect("invite");
    let key = anon.server_key().await.expect("key");
    Setup {
        c,
        api_key,
        p,
        buyer,
        key,
    }
}

async fn join(c: &Client, p: PaymentId, buyer: &str) {
    c.send_command(
        p,
        &json!({"type": "Join"}),
        Some(&json!({"party": buyer, "role": "buyer"})),
        None,
        None,
    )
    .await
    .expect("join");
}

/// `Replica::new` pins its key into the client, so a head recorded earlier and
/// replayed on the way (with the pages cut at it, hiding a newer event) is refused: it
/// is not signed for this request's nonce. A client pinned to another key is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_older_head_is_refused_and_a_client_pinned_elsewhere_too() {
    let dir = tempfile::tempdir().expect("tmp");
    let running = server(dir.path()).await;
    let upstream = format!("http://{}", running.addr);
    let Setup {
        c,
        api_key,
        p,
        buyer,
        key,
    } = setup(&upstream).await;
    let (base, px) = proxy(&upstream).await;
    // Not pinned: the replica pins it.
    let via = Client::new(&base).expect("client").api_key(&api_key);
    assert!(via.pinned().is_none());
    let mut rep = Replica::new(via.clone(), p, key).expect("replica");
    assert_eq!(rep.sync().await.expect("sync"), 2);

    // The payment moves on; the proxy replays the head it saw at version 2.
    join(&c, p, &buyer).await;
    px.set(Tamper::ReplayHead);
    let e = rep.sync().await.expect_err("a replayed head");
    assert_eq!(e.code(), "bad_signature", "{e}");
    assert_eq!(rep.version(), 2);
    px.set(Tamper::None);
    assert_eq!(rep.sync().await.expect("the genuine head"), 1);
    assert_eq!(rep.version(), 3);

    // The same key pinned already is fine; another one is refused, typed.
    Replica::new(via.clone().pin(key), p, key).expect("the same key");
    let other = PublicKey::from_secret(&[9; 32]);
    let e = Replica::new(via.pin(other), p, key).expect_err("another key");
    assert_eq!(e.code(), "key_mismatch", "{e}");
    assert!(
        matches!(e, trustfold::Error::KeyMismatch { pinned, key: k } if pinned == other && k == key)
    );
    running.shutdown().await.expect("shutdown");
}
