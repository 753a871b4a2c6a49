//! How fast a webhook backlog drains: 500 events already stored, an endpoint
//! registered for all of them (`after: 0`) on a host name (`localhost`, so the sender
//! resolves, checks and pins it as it does for any receiver's name), a receiver
//! answering 200 at once. Prints events/s; asserts only that every event arrived (speed
//! is read from the printed figure, never asserted: a loaded machine must not fail it).
//!
//! `cargo test --release -p trustfold-server --test webhooks_drain -- --ignored --nocapture`

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::scenario::Client;
use common::ADMIN;
use serde_json::json;
use trustfold_server::app::start;

const EVENTS: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn a_backlog_drains() {
    let (_dir, db) = common::sqlite_file();
    let mut config = common::config(&db);
    config.webhooks.allow_private = true;
    let running = start(config).await.expect("server starts");
    let c = Client::new(format!("http://{}", running.addr));
    let key = c.tenant(ADMIN, "Backlogged Escrow").await.expect("tenant");
    let r = c
        .post(
            "/v1/policies",
            &key,
            &serde_json::from_str(common::scenario::EARNEST_MONEY).expect("policy"),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    // The backlog: one event per payment opened.
    let agent = uuid::Uuid::new_v4().to_string();
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (c, key, agent) = (c.clone(), key.clone(), agent.clone());
        opening.spawn(async move {
            for _ in 0..EVENTS / 8 {
                let r = c
                    .post(
                        "/v1/payments",
                        &key,
                        &json!({
                            "policy": "earnest-money",
                            "amount": {"amount": "100.00", "currency": "USD"},
                            "initiator": {"party": agent, "roles": ["listing_agent"]}
                        }),
                    )
                    .await;
                assert_eq!(r.status, 201, "{}", r.body);
            }
        });
    }
    while let Some(done) = opening.join_next().await {
        done.expect("opening");
    }
    let stored = (EVENTS / 8) * 8;
    // The receiver: counts requests, answers 200.
    let got = Arc::new(AtomicUsize::new(0));
    let counter = got.clone();
    let app = axum::Router::new().route(
        "/hooks",
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                axum::http::StatusCode::OK
            }
        }),
    );
    let addr = common::serve_on_loopback(app).await;
    let url = format!("http://localhost:{}/hooks", addr.port());
    let r = c
        .post("/v1/webhooks", &key, &json!({ "url": url, "after": 0 }))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    // Timed from the first request (the sender finds a new endpoint within its next
    // round, up to a second) to the last.
    let wait = Instant::now();
    while got.load(Ordering::Relaxed) == 0 {
        assert!(wait.elapsed() < Duration::from_secs(30), "nothing sent");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let started = Instant::now();
    while got.load(Ordering::Relaxed) < stored {
        assert!(
            wait.elapsed() < Duration::from_secs(300),
            "only {} of {stored} sent",
            got.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = started.elapsed();
    println!(
        "webhook backlog: {stored} events in {:.2} s: {:.0} events/s",
        took.as_secs_f64(),
        (stored - 1) as f64 / took.as_secs_f64()
    );
    running.shutdown().await.expect("shutdown");
}
