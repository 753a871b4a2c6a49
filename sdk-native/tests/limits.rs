//! A hostile server (a tiny scripted one on loopback) that never stops sending: the
//! client and `Replica::follow` read answers chunk by chunk and refuse one longer than
//! a trustfold server ever sends (`response_too_large`), holding no more than the cap.
//! The scripted server stops at 64 MiB, far past every cap, so that a client without
//! them fails these tests instead of running out of memory.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use trustfold::client::{Client, MAX_BODY, MAX_ERROR_BODY};
use trustfold::history::PublicKey;
use trustfold::id::PaymentId;
use trustfold::replica::{Replica, MAX_SSE_EVENT};
use trustfold::Error;

/// How much the scripted server sends before it gives up (more than any cap).
const ENDLESS: usize = 64 << 20;

/// Answers every request with `head` (status line and headers, without the blank line)
/// and a chunked body: `start`, then `filler` again and again, up to [`ENDLESS`]
/// bytes. Returns the base URL.
fn serve(head: &'static str, start: &'static str, filler: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 8192];
                let _ = stream.read(&mut buf);
                let mut out = format!("{head}\r\ntransfer-encoding: chunked\r\n\r\n").into_bytes();
                let chunk = |bytes: &[u8], out: &mut Vec<u8>| {
                    out.extend_from_slice(format!("{:x}\r\n", bytes.len()).as_bytes());
                    out.extend_from_slice(bytes);
                    out.extend_from_slice(b"\r\n");
                };
                chunk(start.as_bytes(), &mut out);
                if stream.write_all(&out).is_err() {
                    return;
                }
                let block: Vec<u8> = filler.iter().copied().cycle().take(64 << 10).collect();
                let mut framed = Vec::new();
                chunk(&block, &mut framed);
                let mut sent = 0;
                while sent < ENDLESS {
                    // The client hung up (it refused the answer): done.
                    if stream.write_all(&framed).is_err() {
                        return;
                    }
                    sent += block.len();
                }
                let _ = stream.write_all(b"0\r\n\r\n");
            });
        }
    });
    base
}

fn payment() -> PaymentId {
    "5f0c1a52-3c1e-4a8e-9c1e-2b7f7c0e5a11".parse().expect("id")
}

/// The error, which must come well before the scripted server's end.
async fn within<T: std::fmt::Debug>(
    f: impl std::future::Future<Output = trustfold::Result<T>>,
) -> Error {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("answered")
        .expect_err("refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_never_ends_is_refused_at_the_cap() {
    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/json";
    let base = serve(OK, "{\"events\":[", b" ");
    let c = Client::new(&base).expect("client");
    let e = within(c.events(payment(), 0, 100)).await;
    assert_eq!(e.code(), "response_too_large", "{e}");
    assert!(
        matches!(&e, Error::TooLarge { limit, .. } if *limit == MAX_BODY),
        "{e:?}"
    );
    assert!(e.to_string().contains("check the server URL"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_body_that_never_ends_is_refused_at_its_cap() {
    for head in [
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json",
        "HTTP/1.1 429 Too Many Requests\r\nretry-after: 1",
        "HTTP/1.1 404 Not Found",
    ] {
        let base = serve(head, "{\"detail\":\"", b"x");
        let c = Client::new(&base)
            .expect("client")
            .backoff(Duration::from_millis(1));
        let e = within(c.health()).await;
        assert_eq!(e.code(), "response_too_large", "{head}: {e}");
        match &e {
            Error::TooLarge { what, limit } => {
                assert_eq!(*limit, MAX_ERROR_BODY);
                assert!(what.starts_with("error body (HTTP "), "{what}");
            }
            other => panic!("{head}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_stream_line_or_event_that_never_ends_is_refused() {
    const SSE: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream";
    let key = PublicKey::from_secret(&[7; 32]);
    for (start, filler, what) in [
        // One line that never ends.
        ("data: {\"hash\":\"", &b"0"[..], "live-stream line"),
        // `data:` lines that never end in an event (no blank line).
        (
            ": hi\n",
            &b"data: 0000000000000000\n"[..],
            "live-stream event",
        ),
    ] {
        let base = serve(SSE, start, filler);
        let mut rep =
            Replica::new(Client::new(&base).expect("client"), payment(), key).expect("replica");
        let e = within(rep.follow(|_| true)).await;
        match &e {
            Error::TooLarge { what: w, limit } => {
                assert_eq!((w.as_str(), *limit), (what, MAX_SSE_EVENT));
            }
            other => panic!("{what}: {other:?}"),
        }
        assert_eq!(rep.version(), 0);
    }
    // A refusal of the stream whose body never ends.
    let base = serve("HTTP/1.1 401 Unauthorized", "{", b" ");
    let mut rep =
        Replica::new(Client::new(&base).expect("client"), payment(), key).expect("replica");
    let e = within(rep.follow(|_| true)).await;
    assert_eq!(e.code(), "response_too_large", "{e}");
}
