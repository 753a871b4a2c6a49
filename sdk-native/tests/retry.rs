//! How the client answers a server that asks it to wait (`Retry-After`): a short wait
//! is waited out and the request sent again; one longer than the client waits comes
//! back at once as the server's error. Against a scripted server on loopback (the
//! answers of a full disk or a rate limit cannot be made on demand by a real one).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use trustfold::client::Client;

/// Serves `answers` in turn (the last one again and again); counts the requests.
fn serve(answers: Vec<(u16, &'static str, &'static str)>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = vec![0u8; 8192];
            let _ = stream.read(&mut buf);
            let i = count.fetch_add(1, Ordering::SeqCst);
            let (status, retry_after, body) = answers[i.min(answers.len() - 1)];
            let retry = if retry_after.is_empty() {
                String::new()
            } else {
                format!("retry-after: {retry_after}\r\n")
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{retry}connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (base, seen)
}

const FULL: &str = r#"{"code":"storage_full","detail":"the database's disk is full"}"#;
const LIMITED: &str = r#"{"code":"rate_limited","detail":"retry after 50000 ms"}"#;
const HEALTHY: &str = r#"{"status":"ok","database":"ok"}"#;

#[tokio::test]
async fn a_wait_longer_than_the_client_waits_is_the_servers_error_at_once() {
    for (status, body, code) in [(503, FULL, "storage_full"), (429, LIMITED, "rate_limited")] {
        let (base, seen) = serve(vec![(status, "30", body)]);
        let c = Client::new(&base).expect("client");
        let e = c.health().await.expect_err("the server says wait 30 s");
        assert_eq!(e.code(), code, "{e}");
        assert_eq!(seen.load(Ordering::SeqCst), 1, "not sent again: {code}");
    }
}

#[tokio::test]
async fn a_short_wait_is_waited_out_and_the_request_sent_again() {
    let (base, seen) = serve(vec![
        (503, "1", r#"{"code":"database_unavailable"}"#),
        (429, "1", LIMITED),
        (200, "", HEALTHY),
    ]);
    let c = Client::new(&base).expect("client");
    let started = std::time::Instant::now();
    c.health().await.expect("answered after the waits");
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    // Each wait was the server's second, not the client's first backoff (100 ms).
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
}

const EXPIRED: &str = r#"{"code":"token_expired","detail":"the participant token has expired"}"#;

/// `Replica::follow` over its rate limit waits the server's `Retry-After` out only up to
/// the client's longest wait (`MAX_RATE_LIMIT_WAIT`) before asking again (a day-long
/// one stalled it for a day), and a refusal that follows keeps the server's code.
#[tokio::test]
async fn follow_caps_a_rate_limits_wait_and_keeps_the_servers_code() {
    use trustfold::client::MAX_RATE_LIMIT_WAIT;
    use trustfold::history::PublicKey;
    use trustfold::replica::Replica;

    let (base, seen) = serve(vec![(429, "86400", LIMITED), (401, "", EXPIRED)]);
    let payment = "5f0c1a52-3c1e-4a8e-9c1e-2b7f7c0e5a11".parse().expect("id");
    let key = PublicKey::from_secret(&[7; 32]);
    let mut rep = Replica::new(Client::new(&base).expect("client"), payment, key).expect("new");
    let started = std::time::Instant::now();
    let e = tokio::time::timeout(MAX_RATE_LIMIT_WAIT * 2, rep.follow(|_| true))
        .await
        .expect("asked again within the client's longest wait")
        .expect_err("the token expired");
    assert!(started.elapsed() <= MAX_RATE_LIMIT_WAIT + std::time::Duration::from_secs(2));
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    assert_eq!(e.code(), "token_expired", "{e}");
    assert!(
        matches!(e, trustfold::Error::Auth { status: 401, .. }),
        "{e:?}"
    );
}
