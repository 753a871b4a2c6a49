//! Webhooks and a proxy in the environment (`HTTP_PROXY`): the sender connects to the
//! address it checked, never through a proxy that would resolve the host again (and
//! could reach an address the check refuses). Its own test binary: it sets the
//! process's environment.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::Uri;
use common::scenario::{open_and_join, Client};
use common::ADMIN;
use serde_json::json;
use trustfold_server::app::start;

#[tokio::test]
async fn webhooks_never_go_through_a_proxy() {
    // A "proxy" on loopback that records what it is asked for.
    let asked: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = asked.clone();
    let proxy = axum::Router::new().fallback(move |uri: Uri| {
        let record = record.clone();
        async move {
            record.lock().expect("lock").push(uri.to_string());
            "ok"
        }
    });
    let proxy_addr = common::serve_on_loopback(proxy).await;
    // Before any HTTP client of this process is made (reqwest reads it once).
    std::env::set_var("HTTP_PROXY", format!("http://{proxy_addr}"));
    std::env::set_var("http_proxy", format!("http://{proxy_addr}"));
    std::env::set_var("NO_PROXY", "127.0.0.1,localhost");
    std::env::set_var("no_proxy", "127.0.0.1,localhost");

    let (_dir, db) = common::sqlite_file();
    let running = start(common::config(&db)).await.expect("server starts");
    let c = Client::new(format!("http://{}", running.addr));
    let key = c.tenant(ADMIN, "Proxied Escrow").await.expect("tenant");
    // A public address: the check lets it through; the request must go there, not to
    // the proxy on loopback.
    let r = c
        .post(
            "/v1/webhooks",
            &key,
            &json!({ "url": "http://93.184.216.34/hooks", "after": 0 }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    open_and_join(&c, &key).await.expect("open");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let asked = asked.lock().expect("lock").clone();
    assert!(asked.is_empty(), "sent through the proxy: {asked:?}");
    running.shutdown().await.expect("shutdown");
}
