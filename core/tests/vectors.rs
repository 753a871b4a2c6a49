//! Golden vectors: the contract every implementation (native, wasm in Node, wasm in a
//! browser) is held to.
//!
//! Each vector is two files in `tests/vectors/`:
//! - `NAME.history.json` — the history exactly as a client fetches it;
//! - `NAME.expected.json` — the signed head and server key to check it with, the
//!   verification outcome (`{"ok":true,…}` or `{"ok":false,"code":…,"seq":…}`) and the
//!   exact compact state JSON (`null` when verification fails).
//!
//! The vectors are produced by the scenarios in `support/scenarios.rs`, which drive the
//! real rules and assert what must hold as they go. Run with `TRUSTFOLD_BLESS=1` to
//! rewrite the files after an intended change; without it this test fails if a scenario
//! no longer produces the committed bytes or a history no longer folds to its state.

mod support;

use std::path::{Path, PathBuf};

use serde_json::value::RawValue;
use support::scenarios::{self, public_key, Vector};
use trustfold_core::fold::verify_and_replay;
use trustfold_core::history::{PublicKey, SignedHead};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// What every implementation must compute from a history, head and key.
fn outcome(
    history: &[u8],
    head: Option<&SignedHead>,
    key: &PublicKey,
) -> (String, Option<Vec<u8>>) {
    match verify_and_replay(history, head, Some(key)) {
        Ok(state) => (
            format!(
                "{{\"ok\":true,\"len\":{},\"head\":\"{}\"}}",
                state.version, state.head
            ),
            Some(state.to_json()),
        ),
        Err(e) => (
            serde_json::json!({
                "ok": false,
                "code": e.code(),
                "seq": e.seq(),
                "message": e.to_string(),
            })
            .to_string(),
            None,
        ),
    }
}

fn expected_file(v: &Vector) -> String {
    let key = public_key();
    let (verify, state) = outcome(&v.history, v.head.as_ref(), &key);
    let state = state
        .map(|s| String::from_utf8(s).expect("utf8"))
        .unwrap_or_else(|| "null".into());
    format!(
        "{{\"name\":{},\n\"description\":{},\n\"policy\":{},\n\"key\":\"{}\",\n\"head\":{},\n\"verify\":{},\n\"state\":{}}}\n",
        serde_json::to_string(&v.name).expect("json"),
        serde_json::to_string(&v.description).expect("json"),
        serde_json::to_string(&v.policy).expect("json"),
        key,
        serde_json::to_string(&v.head).expect("json"),
        verify,
        state
    )
}

#[derive(serde::Deserialize)]
struct Expected<'a> {
    name: String,
    key: PublicKey,
    head: Option<SignedHead>,
    #[serde(borrow)]
    verify: &'a RawValue,
    #[serde(borrow)]
    state: &'a RawValue,
}

#[test]
fn scenarios_produce_the_committed_vectors() {
    let vectors = scenarios::all().expect("scenarios run");
    assert!(vectors.len() >= 30, "at least 30 vectors");
    let bless = std::env::var("TRUSTFOLD_BLESS").is_ok_and(|v| v == "1");
    let d = dir();
    if bless {
        std::fs::create_dir_all(&d).expect("dir");
        for old in std::fs::read_dir(&d).expect("dir").flatten() {
            if old.path().extension().is_some_and(|e| e == "json") {
                std::fs::remove_file(old.path()).expect("remove");
            }
        }
    }
    let mut stale = Vec::new();
    for v in &vectors {
        let hist_path = d.join(format!("{}.history.json", v.name));
        let exp_path = d.join(format!("{}.expected.json", v.name));
        let expected = expected_file(v);
        if bless {
            std::fs::write(&hist_path, &v.history).expect("write");
            std::fs::write(&exp_path, &expected).expect("write");
            continue;
        }
        let on_disk_hist = std::fs::read(&hist_path).unwrap_or_default();
        let on_disk_exp = std::fs::read_to_string(&exp_path).unwrap_or_default();
        if on_disk_hist != v.history || on_disk_exp != expected {
            stale.push(v.name.clone());
        }
    }
    assert!(
        stale.is_empty(),
        "these vectors differ from what the scenarios produce now: {stale:?}\n\
         if the change is intended, run TRUSTFOLD_BLESS=1 cargo test -p trustfold-core --test vectors"
    );
}

#[test]
fn every_committed_history_folds_to_its_expected_state() {
    let mut n = 0;
    let mut failures = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir())
        .expect("vectors dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".expected.json"))
        .collect();
    entries.sort();
    for exp_path in entries {
        let text = std::fs::read_to_string(&exp_path).expect("read");
        let exp: Expected = serde_json::from_str(&text).expect("expected file parses");
        let hist_path = exp_path
            .to_string_lossy()
            .replace(".expected.json", ".history.json");
        let history = std::fs::read(&hist_path).expect("history file");
        let (verify, state) = outcome(&history, exp.head.as_ref(), &exp.key);
        let state = state.unwrap_or_else(|| b"null".to_vec());
        if verify != exp.verify.get() {
            failures.push(format!(
                "{}: verify {} != {}",
                exp.name,
                verify,
                exp.verify.get()
            ));
        }
        if state != exp.state.get().as_bytes() {
            failures.push(format!("{}: state bytes differ", exp.name));
        }
        n += 1;
    }
    assert!(n >= 30, "expected at least 30 vectors, found {n}");
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn tampered_vectors_fail_where_they_were_tampered() {
    let read = |name: &str| -> serde_json::Value {
        let p = dir().join(format!("{name}.expected.json"));
        serde_json::from_str(&std::fs::read_to_string(p).expect("read")).expect("json")
    };
    let cases = [
        ("tampered_altered_amount", "chain_broken"),
        ("tampered_altered_and_rehashed", "chain_broken"),
        ("tampered_removed_event", "chain_broken"),
        ("tampered_inserted_event", "chain_broken"),
        ("tampered_reordered_events", "chain_broken"),
        ("tampered_removed_first", "chain_broken"),
        ("tampered_truncated_end", "chain_broken"),
        ("bad_head_signature", "bad_signature"),
        ("invalid_event_funds_available_twice", "invalid_history"),
        ("invalid_event_time_backwards", "invalid_history"),
    ];
    for (name, code) in cases {
        let v = read(name);
        assert_eq!(v["verify"]["ok"], false, "{name}");
        assert_eq!(v["verify"]["code"], code, "{name}");
        assert!(v["state"].is_null(), "{name}");
    }
    // Where: the altered funding event itself; the event after a re-hashed one.
    let altered = read("tampered_altered_amount");
    let rehashed = read("tampered_altered_and_rehashed");
    let seq = altered["verify"]["seq"].as_u64().expect("seq");
    assert_eq!(rehashed["verify"]["seq"].as_u64(), Some(seq + 1));
}
