//! Rate limits over real HTTP: a tenant's API keys and a participant's tokens each
//! have a budget; past it a request is 429 `rate_limited` with `Retry-After`, runs
//! nothing, and leaves everyone else's budget alone. Failed authentications have a
//! budget per client address (here 127.0.0.1): past it, every request from the
//! address is 429 before its credential is checked, a correct one included.

mod common;

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use common::scenario::{open_and_join, Client, Reply};
use common::ADMIN;
use serde_json::json;
use trustfold_server::api::limits::Rate;
use trustfold_server::app::Config;

/// `burst` requests at once, then one a minute.
fn per_minute(burst: u32) -> Rate {
    Rate {
        requests: NonZeroU32::MIN,
        per: Duration::from_secs(60),
        burst: NonZeroU32::new(burst).expect("burst"),
    }
}

fn expect_limited(r: &Reply, whose: &str) {
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (429, Some("rate_limited")),
        "{}",
        r.body
    );
    assert_eq!(
        r.headers["content-type"], "application/problem+json",
        "{:?}",
        r.headers
    );
    let detail = r.body["detail"].as_str().expect("detail");
    assert!(detail.contains(whose), "{detail}");
    assert!(detail.contains("1 request a minute"), "{detail}");
    // A request's share of the minute: the next one passes after about 60 s.
    let after: u64 = r.headers["retry-after"]
        .to_str()
        .expect("text")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&after), "Retry-After {after}");
}

#[tokio::test]
async fn over_its_budget_a_caller_gets_429_and_nothing_runs() {
    let (_dir, database) = common::sqlite_file();
    let mut config = common::config(&database);
    config.http.tenant_rate = Some(per_minute(20));
    config.http.participant_rate = Some(per_minute(3));
    let running = common::serve(config).await;
    let srv = common::Server {
        client: Client::new(format!("http://{}", running.addr)),
        running: Some(running),
        database,
        dir: Some(_dir),
        pg_admin: None,
    };
    let c = &srv.client;
    let key = c.tenant(ADMIN, "a").await.expect("tenant a");
    let other = c.tenant(ADMIN, "b").await.expect("tenant b");
    let f = open_and_join(c, &key).await.expect("open"); // 8 of tenant a's 20
    let p = &f.payment;
    let token = c.participant_token(&key, p, &f.buyer, 600).await;
    let version = c.get(&format!("/v1/payments/{p}"), &key).await.body["version"].clone();

    // The participant: three requests, then its command is refused before it runs.
    for _ in 0..3 {
        let r = c.get(&format!("/v1/payments/{p}"), &token).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let path = format!("/v1/payments/{p}/commands");
    let r = c
        .post_idem(
            &path,
            &token,
            "join-again",
            &json!({"command": {"type": "Join"}}),
        )
        .await;
    expect_limited(&r, "participant's tokens");
    let r = c
        .raw(
            "GET",
            &format!("/v1/payments/{p}/stream?access_token={token}"),
            None,
            &[],
            None,
        )
        .await
        .expect("stream");
    expect_limited(&r, "participant's tokens");
    // Nothing ran: the payment is where it was, and the tenant (its own budget) reads it.
    let now = c.get(&format!("/v1/payments/{p}"), &key).await;
    assert_eq!(now.status, 200, "{}", now.body);
    assert_eq!(now.body["version"], version);

    // The tenant's keys: the rest of its budget, then 429.
    let mut passed = 0;
    let limited = loop {
        let r = c.get(&format!("/v1/payments/{p}"), &key).await;
        if r.status != 200 {
            break r;
        }
        passed += 1;
        assert!(passed <= 20, "the tenant's budget is 20 requests");
    };
    expect_limited(&limited, "tenant's API keys");
    assert!(passed >= 1, "{passed}");
    // A refused request runs nothing, so a payment opened over the limit is not opened.
    let r = c
        .post_idem(
            "/v1/payments",
            &key,
            "over-the-limit",
            &json!({"policy": "earnest-money", "amount": {"amount": "5000.00", "currency": "USD"},
                "initiator": {"party": f.agent, "roles": ["listing_agent"]}}),
        )
        .await;
    expect_limited(&r, "tenant's API keys");

    // Another tenant has its own budget; unauthenticated routes have none.
    let r = c.get("/v1/payments", &other).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["payments"].as_array().map(Vec::len), Some(0));
    let r = c
        .raw("GET", "/healthz", None, &[], None)
        .await
        .expect("health");
    assert_eq!(r.status, 200);
    // Every answer, the 429s included, is as /openapi.json documents it.
    srv.finish().await;
}

/// A server on 127.0.0.1 with `config`.
async fn serve(config: Config, dir: tempfile::TempDir) -> common::Server {
    let database = config.database.clone();
    let running = common::serve(config).await;
    common::Server {
        client: Client::new(format!("http://{}", running.addr)),
        running: Some(running),
        database,
        dir: Some(dir),
        pg_admin: None,
    }
}

/// An API key of the right shape that the server never issued.
fn guessed_key() -> String {
    format!("tfk_{}_{}", uuid::Uuid::new_v4().simple(), "A".repeat(43))
}

/// Whole seconds of a reply's `Retry-After`.
fn retry_after(r: &Reply) -> u64 {
    r.headers["retry-after"]
        .to_str()
        .expect("text")
        .parse()
        .expect("seconds")
}

/// A 429 for the client address's failed authentications (`budget` as the detail
/// words it).
fn expect_address_refused(r: &Reply, budget: &str) {
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (429, Some("rate_limited")),
        "{}",
        r.body
    );
    assert_eq!(r.headers["content-type"], "application/problem+json");
    let detail = r.body["detail"].as_str().expect("detail");
    assert!(
        detail.contains("too many failed authentications came from this address")
            && detail.contains(budget),
        "{detail}"
    );
    assert!(
        (1..=60).contains(&retry_after(r)),
        "Retry-After {:?}",
        r.headers
    );
}

fn expect_code(r: &Reply, status: u16, code: &str) {
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (status, Some(code)),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn after_too_many_failed_authentications_an_address_is_refused_whatever_it_sends() {
    let (dir, database) = common::sqlite_file();
    let mut config = common::config(&database);
    config.http.failed_auth_rate = Some(per_minute(3));
    let srv = serve(config, dir).await;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "a").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    let p = &f.payment;
    let token = c.participant_token(&key, p, &f.buyer, 600).await;
    let payment = format!("/v1/payments/{p}");

    // Correct credentials never count: many more requests than the budget pass.
    for _ in 0..5 {
        assert_eq!(c.get(&payment, &key).await.status, 200);
        assert_eq!(c.get(&payment, &token).await.status, 200);
    }
    // Nor do requests without a credential, nor a token the tenant revoked (the server
    // signed it: it is no guess).
    let revoked = c.participant_token(&key, p, &f.seller, 600).await;
    let r = c
        .post_idem(
            &format!("{payment}/tokens/revoke"),
            &key,
            "revoke-seller",
            &json!({"party": f.seller}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    for _ in 0..5 {
        expect_code(&c.get(&payment, &revoked).await, 401, "token_revoked");
        let r = c.raw("GET", &payment, None, &[], None).await.expect("GET");
        expect_code(&r, 401, "unauthorized");
    }

    // Three failures of three kinds: a guessed API key, a tampered token, a wrong admin
    // token. Each is a 401.
    let guessed = guessed_key();
    expect_code(&c.get("/v1/payments", &guessed).await, 401, "unauthorized");
    let tampered = format!("{token}x");
    expect_code(&c.get(&payment, &tampered).await, 401, "unauthorized");
    let r = c
        .post("/v1/tenants", "not-the-admin-token", &json!({"name": "b"}))
        .await;
    expect_code(&r, 401, "unauthorized");

    // The budget is used up: every request from the address is refused before its
    // credential is looked at, the correct ones too, whichever way they come.
    let budget = "1 failed authentication a minute (bursts of 3)";
    expect_address_refused(&c.get("/v1/payments", &guessed).await, budget);
    expect_address_refused(&c.get(&payment, &key).await, budget);
    expect_address_refused(&c.get(&payment, &token).await, budget);
    let r = c
        .raw(
            "GET",
            &format!("{payment}/stream?access_token={token}"),
            None,
            &[],
            None,
        )
        .await
        .expect("stream");
    expect_address_refused(&r, budget);
    let r = c
        .post_idem(
            &format!("{payment}/commands"),
            &token,
            "refused",
            &json!({"command": {"type": "Tick"}}),
        )
        .await;
    expect_address_refused(&r, budget);
    let r = c.post("/v1/tenants", ADMIN, &json!({"name": "c"})).await;
    expect_address_refused(&r, budget);
    let r = c.raw("GET", &payment, None, &[], None).await.expect("GET");
    expect_address_refused(&r, budget);
    // Routes without credentials stay open.
    let r = c
        .raw("GET", "/healthz", None, &[], None)
        .await
        .expect("health");
    assert_eq!(r.status, 200);
    srv.finish().await;
}

/// A tenant's valid API key (or a participant token) sent to `POST /v1/tenants` is a
/// known caller without the right, 403 `admin_token_required`, not a failed
/// authentication: however often it is sent, the address is not refused.
#[tokio::test]
async fn a_valid_key_in_place_of_the_admin_token_is_403_and_does_not_count() {
    let (dir, database) = common::sqlite_file();
    let mut config = common::config(&database);
    config.http.failed_auth_rate = Some(per_minute(3));
    let srv = serve(config, dir).await;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "a").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    let token = c.participant_token(&key, &f.payment, &f.buyer, 600).await;
    for _ in 0..5 {
        let r = c.post("/v1/tenants", &key, &json!({"name": "b"})).await;
        expect_code(&r, 403, "admin_token_required");
        let r = c.post("/v1/tenants", &token, &json!({"name": "b"})).await;
        expect_code(&r, 403, "admin_token_required");
    }
    let r = c.get("/v1/payments", &key).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A wrong admin token is still a failed authentication.
    let r = c
        .post("/v1/tenants", "not-the-admin-token", &json!({"name": "b"}))
        .await;
    expect_code(&r, 401, "unauthorized");
    srv.finish().await;
}

#[tokio::test]
async fn a_refused_address_is_let_in_again_after_retry_after_and_expired_tokens_do_not_count() {
    let (dir, database) = common::sqlite_file();
    let mut config = common::config(&database);
    // Bursts of 2 failures, then one a second.
    config.http.failed_auth_rate = Some(Rate {
        requests: NonZeroU32::MIN,
        per: Duration::from_secs(1),
        burst: NonZeroU32::new(2).expect("2"),
    });
    let srv = serve(config, dir).await;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "a").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    let payment = format!("/v1/payments/{}", f.payment);
    let short = c.participant_token(&key, &f.payment, &f.buyer, 1).await;

    let guessed = guessed_key();
    let mut failures = 0;
    let refused = loop {
        let r = c.get("/v1/payments", &guessed).await;
        if r.status == 429 {
            break r;
        }
        expect_code(&r, 401, "unauthorized");
        failures += 1;
        assert!(
            failures <= 10,
            "a budget of 2 failures, refilled once a second"
        );
    };
    assert!(failures >= 2, "{failures}");
    expect_address_refused(&refused, "1 failed authentication a second (bursts of 2)");
    let wait = retry_after(&refused);
    assert_eq!(wait, 1);
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(c.get(&payment, &key).await.status, 200, "let in again");

    // The short token expires (within two seconds of minting); its 401s never make a
    // 429, though more of them come than the budget holds.
    let by = Instant::now() + Duration::from_secs(10);
    while c.get(&payment, &short).await.status == 200 {
        assert!(Instant::now() < by, "the token of 1 s expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..6 {
        expect_code(&c.get(&payment, &short).await, 401, "token_expired");
    }
    assert_eq!(c.get(&payment, &key).await.status, 200);
    srv.finish().await;
}

#[tokio::test]
async fn with_the_failed_authentication_limit_off_no_address_is_refused() {
    // As configured by default, 60 a minute with bursts of 30: the 31st failure in a row
    // is refused.
    let (dir, database) = common::sqlite_file();
    let srv = serve(common::config(&database), dir).await;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "a").await.expect("tenant");
    for _ in 0..30 {
        expect_code(
            &c.get("/v1/payments", &guessed_key()).await,
            401,
            "unauthorized",
        );
    }
    let r = c.get("/v1/payments", &key).await;
    expect_address_refused(&r, "60 failed authentications a minute (bursts of 30)");
    srv.finish().await;

    // Off: as many failures as one likes, and the correct key still passes.
    let (dir, database) = common::sqlite_file();
    let mut config = common::config(&database);
    config.http.failed_auth_rate = None;
    let srv = serve(config, dir).await;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "a").await.expect("tenant");
    for _ in 0..40 {
        expect_code(
            &c.get("/v1/payments", &guessed_key()).await,
            401,
            "unauthorized",
        );
    }
    assert_eq!(c.get("/v1/payments", &key).await.status, 200);
    srv.finish().await;
}

/// Ends the child process when dropped (a failed assertion included).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_binary_takes_rate_limit_failed_auth_and_0_turns_it_off() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_trustfold-server"))
        .arg("--help")
        .output()
        .expect("--help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--rate-limit-failed-auth"), "{help}");

    // 2 a minute: bursts of 1.
    for (limit, refused_after) in [("2", Some(1)), ("0", None)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("trustfold.db").display().to_string();
        let (child, url) = common::spawn_binary(&db, ADMIN, &["--rate-limit-failed-auth", limit]);
        let _child = Killed(child);
        let c = Client::new(url);
        let key = c.tenant(ADMIN, "a").await.expect("tenant");
        let mut failures = 0;
        while failures < 5 {
            let r = c.get("/v1/payments", &guessed_key()).await;
            if r.status == 429 {
                break;
            }
            expect_code(&r, 401, "unauthorized");
            failures += 1;
        }
        match refused_after {
            Some(n) => {
                assert_eq!(failures, n, "--rate-limit-failed-auth {limit}");
                expect_address_refused(
                    &c.get("/v1/payments", &key).await,
                    "2 failed authentications a minute (bursts of 1)",
                );
            }
            None => {
                assert_eq!(failures, 5, "--rate-limit-failed-auth 0");
                assert_eq!(c.get("/v1/payments", &key).await.status, 200);
            }
        }
        let undocumented = c.undocumented();
        assert!(undocumented.is_empty(), "{}", undocumented.join("\n"));
    }
}

/// `--max-streams-per-party` and `--max-streams-per-tenant` reach the server: with 1
/// and 2, a party's second live stream and the tenant's third are 429
/// `too_many_streams`.
#[tokio::test]
async fn the_binary_takes_the_live_stream_limits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("trustfold.db").display().to_string();
    let (child, url) = common::spawn_binary(
        &db,
        ADMIN,
        &[
            "--max-streams-per-party",
            "1",
            "--max-streams-per-tenant",
            "2",
        ],
    );
    let _child = Killed(child);
    let c = Client::new(url);
    let key = c.tenant(ADMIN, "a").await.expect("tenant");
    let f = open_and_join(&c, &key).await.expect("open");
    let stream = format!("{}/v1/payments/{}/stream", c.base, f.payment);
    let open = |bearer: String| {
        let req = c.http.get(&stream).bearer_auth(bearer);
        async move { req.send().await.expect("stream") }
    };
    let buyer = c.participant_token(&key, &f.payment, &f.buyer, 60).await;
    let seller = c.participant_token(&key, &f.payment, &f.seller, 60).await;
    let first = open(buyer.clone()).await;
    assert_eq!(first.status(), 200);
    let again = open(buyer).await;
    assert_eq!(again.status(), 429, "one stream per party");
    let body: serde_json::Value = again.json().await.expect("problem");
    assert_eq!(body["code"], "too_many_streams", "{body}");
    let second = open(seller).await;
    assert_eq!(second.status(), 200, "another party's");
    let third = open(key.clone()).await;
    assert_eq!(third.status(), 429, "two streams per tenant");
    drop((first, second));
}
