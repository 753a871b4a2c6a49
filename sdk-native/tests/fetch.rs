//! `trustfold fetch` against a server that answers from a script (a real HTTP server on
//! loopback, serving a golden history and heads signed with the test key): the head is
//! fetched first and the events up to it, the files are replaced only by a complete and
//! verified download, and a bad key is refused before anything is written.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use trustfold::history::{self, SignedHead, SignedResponse};
use trustfold::id::PaymentId;

/// What the scripted server answers: the records it pages out and the head it signs.
struct Script {
    /// `{"hash":…,"event":…}` per event, as the server's pages carry them.
    records: Vec<String>,
    head: String,
}

/// Serves `script` on a free loopback port until the process ends; returns the base URL.
fn serve(script: Arc<Mutex<Script>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = vec![0u8; 8192];
            let n = stream.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).to_string();
            let target = request.split_whitespace().nth(1).unwrap_or("").to_string();
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let mut signature = String::new();
            let body = {
                let s = script.lock().expect("script");
                if path.ends_with("/head") {
                    // Signed as the server signs its answer, with the request's nonce.
                    let what = format!("/head?{query}");
                    let payment = path
                        .split('/')
                        .nth(3)
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(trustfold::id::PaymentId::from_bytes([0; 16]));
                    signature = format!(
                        "trustfold-signature: {}\r\n",
                        SignedResponse::sign(
                            payment,
                            &what,
                            // `trustfold fetch` here runs without --api-key.
                            "",
                            s.head.as_bytes(),
                            &support::SECRET
                        )
                    );
                    s.head.clone()
                } else if path.contains("/events") {
                    let n = s.records.len();
                    format!(
                        "{{\"events\":[{}],\"has_more\":false,\"next\":{n}}}",
                        s.records.join(",")
                    )
                } else {
                    String::from("{}")
                }
            };
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{signature}connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    base
}

fn fetch(base: &str, payment: &str, out: &Path, key: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trustfold"))
        .args(["fetch", payment, "--server", base, "--out"])
        .arg(out)
        .args(["--key", key])
        .output()
        .expect("run trustfold fetch")
}

/// The `em_happy_wire` vector's payment, its records' hashes, and its records, one per
/// line as served.
fn happy_wire() -> (PaymentId, Vec<trustfold::hash::Hash>, Vec<String>) {
    let vector =
        std::fs::read(support::vectors_dir().join("em_happy_wire.history.json")).expect("vector");
    let records = history::parse(&vector).expect("parse");
    let stream = records[0].envelope().expect("envelope").stream;
    let lines = records
        .iter()
        .map(|r| format!("{{\"hash\":\"{}\",\"event\":{}}}", r.hash, r.event.get()))
        .collect();
    (stream, records.iter().map(|r| r.hash).collect(), lines)
}

#[test]
fn fetch_stops_at_the_signed_head_and_replaces_files_only_when_verified() {
    let (stream, hashes, lines) = happy_wire();
    let n = lines.len();
    let sign = |seq: usize| {
        serde_json::to_string(&SignedHead::sign(
            stream,
            seq as u64,
            hashes[seq - 1],
            &support::SECRET,
        ))
        .expect("head")
    };
    // The server appended an event after signing its head (a fetch racing a command).
    let script = Arc::new(Mutex::new(Script {
        records: lines.clone(),
        head: sign(n - 1),
    }));
    let base = serve(script.clone());
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("p.json");
    let head_file = dir.path().join("p.json.head.json");
    let key = support::key().to_string();
    let payment = stream.to_string();

    let o = fetch(&base, &payment, &out, &key);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains(&format!("fetched {} events", n - 1)), "{err}");
    let good = std::fs::read(&out).expect("history");
    let kept = history::parse(&good).expect("parse").len();
    assert_eq!(kept, n - 1, "the events up to the signed head");
    let good_head = std::fs::read(&head_file).expect("head");

    // A tampered download: refused, and the last good pair stays.
    {
        let mut s = script.lock().expect("script");
        s.head = sign(n);
        s.records[3] = s.records[3].replacen("\"seq\":4", "\"seq\":4 ", 1);
    }
    let o = fetch(&base, &payment, &out, &key);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("left as they were"));
    assert_eq!(std::fs::read(&out).expect("history"), good);
    assert_eq!(std::fs::read(&head_file).expect("head"), good_head);

    // A bad key: a usage error before anything is downloaded or written.
    let fresh = dir.path().join("q.json");
    let o = fetch(&base, &payment, &fresh, "not-hex");
    assert_eq!(o.status.code(), Some(2));
    assert!(!fresh.exists());
    assert!(std::fs::read_dir(dir.path()).expect("dir").all(|e| !e
        .expect("entry")
        .file_name()
        .to_string_lossy()
        .contains(".tmp-")));

    // The untampered history again, now signed to its end: all of it.
    script.lock().expect("script").records = lines;
    let o = fetch(&base, &payment, &out, &key);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let all = std::fs::read(&out).expect("history");
    assert_eq!(history::parse(&all).expect("parse").len(), n);
}

/// Without `--key` nothing is verified, but a download short of the signed head (the
/// pages end, `has_more: false`, before the head's seq) is still refused: exit 1, and
/// the files of the last good fetch stay as they were.
#[test]
fn fetch_without_a_key_refuses_pages_that_end_before_the_signed_head() {
    let (stream, hashes, lines) = happy_wire();
    let n = lines.len();
    let head = serde_json::to_string(&SignedHead::sign(
        stream,
        n as u64,
        hashes[n - 1],
        &support::SECRET,
    ))
    .expect("head");
    let script = Arc::new(Mutex::new(Script {
        records: lines.clone(),
        head,
    }));
    let base = serve(script.clone());
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("p.json");
    let head_file = dir.path().join("p.json.head.json");
    let payment = stream.to_string();
    let fetch_unchecked = || {
        Command::new(env!("CARGO_BIN_EXE_trustfold"))
            .args(["fetch", &payment, "--server", &base, "--out"])
            .arg(&out)
            .output()
            .expect("run trustfold fetch")
    };
    let o = fetch_unchecked();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let good = std::fs::read(&out).expect("history");
    let good_head = std::fs::read(&head_file).expect("head");
    assert_eq!(history::parse(&good).expect("parse").len(), n);

    // The last two events cut from the pages, the head still signed at n.
    script.lock().expect("script").records.truncate(n - 2);
    let o = fetch_unchecked();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("code: chain_broken"), "{err}");
    assert!(
        err.contains(&format!(
            "signed head is at seq {n} but the server sent only {}",
            n - 2
        )),
        "{err}"
    );
    assert!(err.contains("left as they were"), "{err}");
    assert_eq!(std::fs::read(&out).expect("history"), good);
    assert_eq!(std::fs::read(&head_file).expect("head"), good_head);
    assert!(std::fs::read_dir(dir.path()).expect("dir").all(|e| !e
        .expect("entry")
        .file_name()
        .to_string_lossy()
        .contains(".tmp-")));
}

#[test]
fn closed_output_pipes_are_no_panic() {
    // `trustfold verify … 2>&1 | true`: both outputs are gone before the failure is
    // reported. The answer is still the exit code (1: it does not verify), never a panic.
    let path = support::vectors_dir().join("em_happy_wire.history.json");
    let vector = std::fs::read(&path).expect("vector");
    let records = history::parse(&vector).expect("parse");
    let last = records.last().expect("events");
    let head = SignedHead::sign(
        last.envelope().expect("envelope").stream,
        records.len() as u64,
        last.hash,
        &support::SECRET,
    );
    let dir = tempfile::tempdir().expect("tmp");
    let head_file = dir.path().join("head.json");
    std::fs::write(&head_file, serde_json::to_string(&head).expect("head")).expect("write");
    let other_key = trustfold::history::PublicKey::from_secret(&[9; 32]).to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_trustfold"))
        .arg("verify")
        .arg(&path)
        .args(["--key", &other_key, "--head"])
        .arg(&head_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(1), "not 101 (a panic)");
}

#[test]
fn transport_errors_name_their_cause() {
    // A closed port: the message says the connection was refused, not only that a
    // request failed.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let dir = tempfile::tempdir().expect("tmp");
    // A fetch without a key from `server`: exit 2 and what it said.
    let fetch_from = |server: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_trustfold"))
            .args([
                "fetch",
                "b0000000-0000-4000-8000-000000000001",
                "--server",
                server,
                "--out",
            ])
            .arg(dir.path().join("x.json"))
            .output()
            .expect("run");
        assert_eq!(o.status.code(), Some(2));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let err = fetch_from(&format!("http://127.0.0.1:{port}"));
    assert!(err.contains("refused"), "{err}");
    // A server that is not a URL is named as such.
    let err = fetch_from("127.0.0.1:8080");
    assert!(
        err.contains("is not an http:// or https:// URL") || err.contains("is not a URL"),
        "{err}"
    );
}
