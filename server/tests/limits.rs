//! Rate limits over real HTTP: a tenant's API keys and a participant's tokens each
//! have a budget; past it a request is 429 `rate_limited` with `Retry-After`, runs
//! nothing, and leaves everyone else's budget alone.

mod common;

use std::num::NonZeroU32;
use std::time::Duration;

use common::scenario::{open_and_join, Client, Reply};
use common::ADMIN;
use serde_json::json;
use trustfold_server::api::limits::Rate;

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
