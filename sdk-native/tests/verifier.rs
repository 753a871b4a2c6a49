//! The offline verifier (`trustfold::verify::Verifier`) called as a library: a signed
//! head and a payment given by the caller hold in every layout of the file.

mod support;

use std::path::Path;

use trustfold::history::{PublicKey, SignedHead};
use trustfold::id::PaymentId;
use trustfold::verify::{Layout, Verifier};

/// A golden vector with a signed head: its records (verbatim, one per element), its key
/// and head.
fn vector(name: &str) -> (Vec<String>, PublicKey, SignedHead) {
    let dir = support::vectors_dir();
    let text = std::fs::read_to_string(dir.join(format!("{name}.history.json"))).expect("read");
    let records: Vec<String> = text
        .lines()
        .map(|l| l.trim().trim_end_matches(',').to_owned())
        .filter(|l| l.starts_with('{'))
        .collect();
    let exp: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{name}.expected.json"))).expect("read"),
    )
    .expect("json");
    let key: PublicKey = exp["key"].as_str().expect("key").parse().expect("a key");
    let head =
        SignedHead::from_json(exp["head"].to_string().as_bytes()).expect("the vector's head");
    (records, key, head)
}

/// The records as an export (one per line, no brackets: what a one-payment export is).
fn export(dir: &Path, name: &str, records: &[String]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, records.join("\n") + "\n").expect("write");
    p
}

#[test]
fn a_head_given_for_an_export_is_checked() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (records, key, head) = vector("em_happy_wire");
    let whole = export(tmp.path(), "whole.ndjson", &records);
    let report = Verifier::new()
        .key(key)
        .head(head.clone())
        .verify_path(&whole)
        .expect("the genuine export verifies against its head");
    assert_eq!((report.payments, report.signed), (1, 1));

    // Its last event cut off: the head says there was one more.
    let cut = export(tmp.path(), "cut.ndjson", &records[..records.len() - 1]);
    let e = Verifier::new()
        .key(key)
        .head(head.clone())
        .verify_path(&cut)
        .expect_err("a cut export must not verify against the head");
    assert_eq!(e.code(), "chain_broken", "{e}");

    // Another payment's export with this head: that payment is unsigned, and the head's
    // payment is missing.
    let (other, _, _) = vector("em_ach_good_funds");
    let other = export(tmp.path(), "other.ndjson", &other);
    let e = Verifier::new()
        .key(key)
        .head(head)
        .verify_path(&other)
        .expect_err("another payment's export must not verify against this head");
    assert!(
        matches!(e.code(), "bad_signature" | "chain_broken"),
        "{}: {e}",
        e.code()
    );
}

#[test]
fn a_payment_asked_for_is_the_one_verified_in_every_layout() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (records, key, head) = vector("em_happy_wire");
    let other = PaymentId::from_bytes([0x5a; 16]);
    // One line (`[{…},{…}]`): read whole by the core.
    let line = tmp.path().join("line.json");
    std::fs::write(&line, format!("[{}]", records.join(","))).expect("write");
    let ok = Verifier::new()
        .key(key)
        .head(head.clone())
        .payment(head.stream)
        .verify_path(&line)
        .expect("its own payment");
    assert_eq!(ok.last.map(|s| s.payment), Some(head.stream));
    let e = Verifier::new()
        .key(key)
        .head(head)
        .payment(other)
        .verify_path(&line)
        .expect_err("another payment was asked for");
    assert!(e.to_string().contains(&other.to_string()), "{e}");
}

#[test]
fn a_payment_of_an_export_is_verified_against_its_own_head() {
    let tmp = tempfile::tempdir().expect("tmp");
    let events = tmp.path().join("export.ndjson");
    let heads = tmp.path().join("heads.ndjson");
    support::write_export(&events, &heads, 300);
    let listed = std::fs::read_to_string(&heads).expect("heads");
    let second: SignedHead = SignedHead::from_json(
        listed
            .lines()
            .nth(1)
            .expect("two payments or more")
            .as_bytes(),
    )
    .expect("a head");
    let report = Verifier::new()
        .key(support::key())
        .heads_file(&heads)
        .payment(second.stream)
        .verify_path(&events)
        .expect("the second payment verifies against its head");
    assert_eq!((report.payments, report.signed), (1, 1));
    assert_eq!(report.last.map(|s| s.payment), Some(second.stream));
}

/// Another payment's head, validly signed by the same key, given for a history: the
/// line-per-record layout (streamed) reports what the core's whole-document path
/// reports, `bad_signature` naming both payments, not events cut from the end.
#[test]
fn another_payments_head_is_bad_signature_in_both_layouts() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (records, key, own) = vector("em_happy_wire");
    let (_, other_key, other) = vector("em_ach_good_funds");
    assert_eq!(key, other_key, "the vectors share a key");
    assert_ne!(own.stream, other.stream);
    // One record per line, as trustfold writes a history: streamed.
    let lines = tmp.path().join("lines.json");
    std::fs::write(&lines, format!("[\n{}\n]\n", records.join(",\n"))).expect("write");
    // All on one line: read whole by the core.
    let one = tmp.path().join("one.json");
    std::fs::write(&one, format!("[{}]", records.join(","))).expect("write");
    let run = |p: &Path| {
        Verifier::new()
            .key(key)
            .head(other.clone())
            .verify_path(p)
            .expect_err("another payment's head")
    };
    let (streamed, whole) = (run(&lines), run(&one));
    let (s, w) = (
        streamed.broken().expect("broken"),
        whole.broken().expect("broken"),
    );
    assert_eq!(w.error.code(), "bad_signature", "{whole}");
    assert_eq!(s.error.code(), w.error.code(), "{streamed} / {whole}");
    assert_eq!(s.error.to_string(), w.error.to_string());
    assert!(
        s.error
            .to_string()
            .contains(&format!("it is the head of payment {}", other.stream)),
        "{streamed}"
    );
    assert_eq!((s.stream, s.seq), (w.stream, w.seq));
    // Its own head verifies in both, each read as said.
    for (p, layout) in [(&lines, Layout::History), (&one, Layout::Whole)] {
        let r = Verifier::new()
            .key(key)
            .head(own.clone())
            .verify_path(p)
            .expect("its own head");
        assert_eq!(r.layout, layout);
    }
}
