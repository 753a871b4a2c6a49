//! `Envelope::from_json` reads canonical envelopes with a byte scanner and leaves the
//! rest to its full reader (any field order and whitespace, old schema versions, every
//! error): both must give the same envelope, and the same error, for any input. Checked
//! on every golden-vector event and on many damaged copies. (That the payload readers
//! agree with serde's derived decoders is checked inside the crate, in
//! `envelope::canonical_tests`.)

use std::path::Path;

use trustfold_core::envelope::Envelope;
use trustfold_core::event::PolicyCache;
use trustfold_core::Error;

fn vectors() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("vectors")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".history.json"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect()
}

fn events(history: &[u8]) -> Vec<Vec<u8>> {
    match trustfold_core::history::parse(history) {
        Ok(records) => records
            .iter()
            .map(|r| r.event.get().as_bytes().to_vec())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// `e` with the byte at `at` replaced by `r`.
fn replaced(e: &[u8], at: usize, r: &[u8]) -> Vec<u8> {
    let mut m = e[..at].to_vec();
    m.extend_from_slice(r);
    m.extend_from_slice(&e[at + 1..]);
    m
}

/// An error as compared here: its code and its message without the position (the
/// reference reads a copy one byte longer).
fn norm(e: Error) -> (&'static str, String) {
    let m = e.to_string();
    let m = match m.rfind(" at line ") {
        Some(i) => m[..i].to_string(),
        None => m,
    };
    (e.code(), m)
}

/// The reference: the full reader alone. A space after the opening brace is not the
/// canonical layout, so the byte scanner never takes the copy.
fn reference(bytes: &[u8]) -> Result<Envelope, (&'static str, String)> {
    let mut copy = bytes.to_vec();
    if copy.first() == Some(&b'{') {
        copy.insert(1, b' ');
    }
    Envelope::from_json(&copy).map_err(norm)
}

fn check(bytes: &[u8], cache: &mut PolicyCache) {
    let want = reference(bytes);
    let got = Envelope::from_json(bytes).map_err(norm);
    assert_eq!(got, want, "{}", String::from_utf8_lossy(bytes));
    let cached = Envelope::from_json_cached(bytes, cache).map_err(norm);
    assert_eq!(cached, want, "{}", String::from_utf8_lossy(bytes));
    // serde users get the same envelope (errors: the same code).
    let serde = serde_json::from_slice::<Envelope>(bytes).map_err(|e| Error::from(e).code());
    assert_eq!(
        serde,
        want.map_err(|(code, _)| code),
        "{}",
        String::from_utf8_lossy(bytes)
    );
}

#[test]
fn every_vector_event_parses_as_the_json_parser_does() {
    let mut cache = PolicyCache::new();
    let mut n = 0;
    for h in vectors() {
        for e in events(&h) {
            check(&e, &mut cache);
            // Twice: the second time the policy comes from the cache.
            check(&e, &mut cache);
            n += 1;
        }
    }
    assert!(n > 500, "{n} events");
    assert!(!cache.is_empty() && cache.len() <= PolicyCache::CAPACITY);
}

#[test]
fn damaged_envelopes_fail_as_the_json_parser_says() {
    let mut cache = PolicyCache::new();
    let mut samples = Vec::new();
    for (i, h) in vectors().iter().enumerate() {
        let evs = events(h);
        // The first event (with the policy) and one other of a few vectors, and every
        // event of the upcast vector.
        if i % 9 == 0 {
            samples.extend(evs.iter().take(2).cloned());
        }
        if String::from_utf8_lossy(h).contains("\"type\":\"ParticipantInvited\",\"v\":1") {
            samples.extend(evs.iter().take(3).cloned());
        }
    }
    assert!(samples.len() >= 8);
    let replacements: &[&[u8]] = &[
        b"",
        b" ",
        b"\"",
        b"\\",
        b"0",
        b"x",
        b"}",
        b"\\u0041",
        b"\xc3\xa9",
    ];
    for e in &samples {
        for at in 0..e.len() {
            // A short event is damaged everywhere; a long one in its envelope and the
            // start and end of its payload.
            if e.len() > 600 && at > 400 && at < e.len() - 100 {
                continue;
            }
            for r in replacements {
                check(&replaced(e, at, r), &mut cache);
            }
            let mut m = e.clone();
            m.insert(at, b' ');
            check(&m, &mut cache);
        }
    }
    // Trailing bytes, numbers out of range, signs and fractions.
    let e = &samples[0];
    let text = String::from_utf8(e.clone()).expect("utf8");
    for (from, to) in [
        ("\"seq\":1,", "\"seq\":01,"),
        ("\"seq\":1,", "\"seq\":-1,"),
        ("\"seq\":1,", "\"seq\":1.0,"),
        ("\"seq\":1,", "\"seq\":18446744073709551616,"),
        ("\"seq\":1,", "\"seq\":18446744073709551615,"),
        ("\"v\":1,", "\"v\":65537,"),
        ("\"v\":1,", "\"v\":7,"),
        ("\"correlation\":null", "\"correlation\":\"not a uuid\""),
        (
            "\"correlation\":null",
            "\"correlation\":\"a66e4bee-4203-847f-9ec0-529c88837719\"",
        ),
        (
            "\"correlation\":null",
            "\"correlation\":\"a66e4bee4203847f9ec0529c88837719\"",
        ),
        ("\"at\":\"", "\"at\":\"x"),
    ] {
        let m = text.replacen(from, to, 1);
        check(m.as_bytes(), &mut cache);
    }
    for tail in [&b"\n"[..], b" ", b"x", b"}", b"{}"] {
        let mut m = e.clone();
        m.extend_from_slice(tail);
        check(&m, &mut cache);
    }
}

/// `replay_unverified` as it was: one typed serde pass over the whole document.
fn replay_unverified_reference(doc: &[u8]) -> Result<Vec<u8>, &'static str> {
    #[derive(serde::Deserialize)]
    struct Rec {
        hash: trustfold_core::hash::Hash,
        event: Envelope,
    }
    let recs: Vec<Rec> = serde_json::from_slice(doc).map_err(|e| Error::from(e).code())?;
    trustfold_core::fold::fold(recs.iter().map(|r| (&r.event, r.hash)))
        .map(|s| s.to_json())
        .map_err(|e| e.code())
}

#[test]
fn replay_unverified_is_the_one_pass_parse() {
    for (i, h) in vectors().iter().enumerate() {
        let same = |doc: &[u8]| {
            let got = trustfold_core::fold::replay_unverified(doc)
                .map(|s| s.to_json())
                .map_err(|e| e.code());
            assert_eq!(got, replay_unverified_reference(doc), "vector {i}");
        };
        same(h);
        if i % 7 != 0 {
            continue;
        }
        // Damaged: bytes changed here and there (the chain is not checked here, so a
        // change inside a string may even fold), records dropped, other layouts.
        for at in (0..h.len()).step_by(211) {
            for r in [&b" "[..], b"\"", b"x", b"1", b"]"] {
                let mut m = h[..at].to_vec();
                m.extend_from_slice(r);
                m.extend_from_slice(&h[at + 1..]);
                same(&m);
            }
        }
        let text = String::from_utf8(h.clone()).expect("utf8");
        same(text.replacen("\n", "", 2).as_bytes());
        same(text.replacen("},\n{", "},\n{\"x\":1,", 1).as_bytes());
        same(text.replacen("}}", "},\"extra\":true}", 1).as_bytes());
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() > 4 {
            let mut cut = lines.clone();
            cut.remove(2);
            same(cut.join("\n").as_bytes());
        }
    }
}

/// The payload of every event type, damaged byte by byte and field by field: the
/// core's own reader of payloads must agree with serde on each (the same event, or the
/// same error once it hands the input back to serde).
#[test]
fn damaged_payloads_of_every_event_type_fail_as_the_json_parser_says() {
    let mut cache = PolicyCache::new();
    let mut by_type: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    for h in vectors() {
        for e in events(&h) {
            let env = Envelope::from_json(&e).expect("vector event");
            by_type
                .entry(env.event_type().name().to_string())
                .or_insert(e);
        }
    }
    assert!(by_type.len() >= 30, "{} event types", by_type.len());
    let replacements: &[&[u8]] = &[b"", b" ", b"\"", b"\\", b"0", b"x", b"}", b",", b"\\u0041"];
    for e in by_type.values() {
        let text = String::from_utf8(e.clone()).expect("utf8");
        let data = text.find(",\"data\":").expect("data") + 8;
        // Every byte of the payload, except deep inside an embedded policy.
        let policy = text.find("\"policy\":{").map(|p| (p + 60, p + 2600));
        for at in data..e.len() {
            if policy.is_some_and(|(a, b)| at > a && at < b) {
                continue;
            }
            for r in replacements {
                check(&replaced(e, at, r), &mut cache);
            }
        }
        // Whole fields: unknown, repeated, dropped, reordered, escaped, spaced, null.
        let payload = &text[data..text.len() - 1];
        let mut variants = vec![
            text.replacen(",\"data\":{", ",\"data\":{\"surprise\":1,", 1),
            text.replacen(",\"data\":{", ",\"data\":{ ", 1),
            text.replacen(",\"data\":{", ",\"data\":[", 1),
            format!("{}{}}}", &text[..data], payload.replace("\":", "\" : ")),
            format!("{}{}}}", &text[..data], payload.replace(',', " ,\n")),
            format!(
                "{}{}}}",
                &text[..data],
                payload.replacen("\"", "\"\\u0061", 3)
            ),
            format!("{}{}}}", &text[..data], payload.replace('a', "\\u0061")),
            format!("{}{}}}", &text[..data], payload.replace('e', "\\n")),
            format!(
                "{}{}}}",
                &text[..data],
                payload.replacen(":\"", ":null,\"_\":\"", 1)
            ),
            format!(
                "{}{}}}",
                &text[..data],
                payload.replacen(":\"", ":\"\\\"", 1)
            ),
            format!(
                "{}{}}}",
                &text[..data],
                payload.replacen(":\"", ":7,\"x\":\"", 1)
            ),
        ];
        // Each top-level field of the payload dropped, and each repeated.
        let fields: Vec<&str> = payload
            .trim_start_matches('{')
            .split(",\"")
            .filter(|f| !f.contains('{') && !f.contains('['))
            .collect();
        for f in &fields {
            let f = f.trim_start_matches('"').trim_end_matches('}');
            let field = format!("\"{f}");
            variants.push(text.replacen(&format!(",{field}"), "", 1));
            variants.push(text.replacen(&format!("{field},"), "", 1));
            variants.push(text.replacen(&field, &format!("{field},{field}"), 1));
            variants.push(text.replacen(&field, &format!("{field} "), 1));
        }
        for v in variants {
            check(v.as_bytes(), &mut cache);
        }
    }
}

/// A valid history in another layout that the line scanner still takes (two records
/// on one line): the scanner's split is wrong, and the verified replays read the
/// document as JSON instead, with the same answer as for the original.
#[test]
fn records_sharing_a_line_verify_as_the_original() {
    let mut checked = 0;
    for h in vectors() {
        let Ok(want) = trustfold_core::fold::replay(&h) else {
            continue;
        };
        let text = String::from_utf8(h.clone()).expect("utf8");
        let joined = text.replacen("},\n{\"hash\"", "}, {\"hash\"", 1);
        if joined == text {
            continue;
        }
        let got = trustfold_core::fold::replay(joined.as_bytes()).expect("the joined history");
        assert_eq!(got.to_json(), want.to_json());
        let verified = trustfold_core::fold::verify_and_replay(joined.as_bytes(), None, None)
            .expect("verified");
        assert_eq!(verified.to_json(), want.to_json());
        let at = trustfold_core::fold::replay_at(joined.as_bytes(), 1).expect("seq 1");
        assert_eq!(at.version, 1);
        checked += 1;
    }
    assert!(checked > 10, "{checked} histories");
}
