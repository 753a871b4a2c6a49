//! What the webhook sender logs: a failing endpoint's host, never its URL's path or
//! query (receivers put tokens there). Its own test binary: it installs the process's
//! log subscriber.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::scenario::{open_and_join, Client};
use common::ADMIN;
use serde_json::json;
use trustfold_server::app::start;

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_name_the_host_not_the_url() {
    let log = Log::default();
    let writer = log.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish(),
    )
    .expect("the only subscriber");
    // The tenant's endpoint: every request is a 404.
    let addr = common::serve_on_loopback(axum::Router::new()).await;
    let (_dir, db) = common::sqlite_file();
    let mut config = common::config(&db);
    config.webhooks.allow_private = true;
    let running = start(config).await.expect("server starts");
    let c = Client::new(format!("http://{}", running.addr));
    let key = c.tenant(ADMIN, "Logged Escrow").await.expect("tenant");
    let url = format!("http://{addr}/hooks/tok_s3cr3t?key=k3y");
    let r = c.post("/v1/webhooks", &key, &json!({ "url": url })).await;
    assert_eq!(r.status, 201, "{}", r.body);
    open_and_join(&c, &key).await.expect("open");
    let start = Instant::now();
    let text = loop {
        let text = String::from_utf8_lossy(&log.0.lock().expect("lock")).into_owned();
        if text.contains("an endpoint failed") {
            break text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no failure logged: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(text.contains("127.0.0.1"), "{text}");
    assert!(
        !text.contains("s3cr3t") && !text.contains("k3y"),
        "the URL's token in the log: {text}"
    );
    running.shutdown().await.expect("shutdown");
}
