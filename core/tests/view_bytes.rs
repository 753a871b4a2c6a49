//! `view::view_json` (redaction on the serialized bytes, used by the wasm SDK) gives
//! exactly the bytes of the `serde_json::Value` views, for every golden vector and
//! every role of its policy, alone and in pairs.

use std::path::Path;

use trustfold_core::fold::replay;
use trustfold_core::history;
use trustfold_core::policy::Role;
use trustfold_core::view;

#[test]
fn view_json_matches_the_value_views() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("vectors") {
        let path = entry.expect("entry").path();
        if !path.to_string_lossy().ends_with(".history.json") {
            continue;
        }
        let bytes = std::fs::read(&path).expect("read");
        let Ok(state) = replay(&bytes) else { continue };
        let records = history::parse(&bytes).expect("parse");
        let envs: Vec<_> = records
            .iter()
            .map(|r| r.envelope().expect("envelope"))
            .collect();
        let roles: Vec<Role> = state.policy_doc.roles.keys().cloned().collect();
        let mut sets: Vec<Vec<Role>> = vec![vec![], vec![Role::new("nobody")]];
        for (i, a) in roles.iter().enumerate() {
            sets.push(vec![a.clone()]);
            for b in &roles[i + 1..] {
                sets.push(vec![a.clone(), b.clone()]);
            }
        }
        for set in sets {
            let want = serde_json::json!({
                "state": view::state_view(&state, &set),
                "events": view::history_view(&state, &envs, &set),
            })
            .to_string();
            let got = String::from_utf8(view::view_json(&state, &envs, &set)).expect("utf8");
            assert_eq!(got, want, "{} as {set:?}", path.display());
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} views checked");
}

/// The golden vector `em_dispute_before_disbursement`, folded, and its envelopes.
fn dispute_vector() -> (
    trustfold_core::state::PaymentState,
    Vec<trustfold_core::envelope::Envelope>,
) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let bytes =
        std::fs::read(dir.join("em_dispute_before_disbursement.history.json")).expect("vector");
    let state = replay(&bytes).expect("replay");
    let envs = history::parse(&bytes)
        .expect("parse")
        .iter()
        .map(|r| r.envelope().expect("envelope"))
        .collect();
    (state, envs)
}

#[test]
fn hiding_requests_or_disputes_hides_their_events_too() {
    use trustfold_core::policy::{EventFilter, Hidden, Visibility};
    // A history with requests, approvals and a dispute.
    let (mut state, envs) = dispute_vector();
    let types = |v: &serde_json::Value| -> Vec<String> {
        v["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["type"].as_str().expect("type").to_owned())
            .collect()
    };
    let auditor = Role::new("lender");
    let mut policy = (*state.policy_doc).clone();
    policy.visibility.insert(
        auditor.clone(),
        Visibility {
            events: EventFilter::All,
            hide: [Hidden::Requests].into_iter().collect(),
        },
    );
    state.policy_doc = std::sync::Arc::new(policy.clone());
    let seen: serde_json::Value = serde_json::from_slice(&view::view_json(
        &state,
        &envs,
        std::slice::from_ref(&auditor),
    ))
    .expect("json");
    let seen = types(&seen);
    assert!(seen.contains(&"DisputeOpened".to_owned()), "{seen:?}");
    for hidden in [
        "ReleaseRequested",
        "ApprovalGranted",
        "ReleaseAuthorized",
        "DisbursementSubmitted",
        "DisbursementSettled",
    ] {
        assert!(!seen.iter().any(|t| t == hidden), "{hidden} in {seen:?}");
    }
    policy.visibility.insert(
        auditor.clone(),
        Visibility {
            events: EventFilter::All,
            hide: [Hidden::Disputes].into_iter().collect(),
        },
    );
    state.policy_doc = std::sync::Arc::new(policy);
    let seen = view::history_view(&state, &envs, &[auditor]);
    let seen = types(&serde_json::json!({ "events": seen }));
    assert!(seen.contains(&"ReleaseRequested".to_owned()), "{seen:?}");
    assert!(!seen.iter().any(|t| t.starts_with("Dispute")), "{seen:?}");
}

#[test]
fn hiding_disputes_hides_what_the_requests_tell_of_them() {
    use trustfold_core::policy::{EventFilter, Hidden, Visibility};
    // A release pulled back by a dispute, and the resolution's request.
    let (mut state, envs) = dispute_vector();
    let full = view::state_view(&state, &[Role::new("buyer")]).to_string();
    assert!(
        full.contains("\"mandate\":\"dispute_resolution\""),
        "{full}"
    );
    assert!(full.contains("\"failure\":\"dispute opened\""), "{full}");
    let auditor = Role::new("lender");
    let mut policy = (*state.policy_doc).clone();
    policy.visibility.insert(
        auditor.clone(),
        Visibility {
            events: EventFilter::All,
            hide: [Hidden::Disputes].into_iter().collect(),
        },
    );
    state.policy_doc = std::sync::Arc::new(policy);
    let roles = std::slice::from_ref(&auditor);
    let want = serde_json::json!({
        "state": view::state_view(&state, roles),
        "events": view::history_view(&state, &envs, roles),
    })
    .to_string();
    let got = String::from_utf8(view::view_json(&state, &envs, roles)).expect("utf8");
    assert_eq!(got, want, "both ways of redacting agree");
    for told in ["dispute_resolution", "dispute opened", "dispute resolved"] {
        assert!(!got.contains(told), "`{told}` in {got}");
    }
    // The requests themselves are still there (only what they say of the dispute left).
    assert!(got.contains("\"ReleaseRequested\""), "{got}");
}

#[test]
fn a_view_kept_from_funding_failures_does_not_count_them() {
    // One failed ACH attempt, then a wire; the example policy's lender sees only the
    // opening, funds available, cancellation and expiry.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let bytes = std::fs::read(dir.join("em_ach_failure_then_wire.history.json")).expect("vector");
    let state = replay(&bytes).expect("replay");
    assert_eq!(state.funding.failed_attempts, 1);
    let envs: Vec<_> = history::parse(&bytes)
        .expect("parse")
        .iter()
        .map(|r| r.envelope().expect("envelope"))
        .collect();
    let count = |roles: &[Role]| {
        let seen: serde_json::Value =
            serde_json::from_slice(&view::view_json(&state, &envs, roles)).expect("json");
        let value = view::state_view(&state, roles);
        assert_eq!(
            seen["state"]["funding"]["failed_attempts"],
            value["funding"]["failed_attempts"]
        );
        value["funding"]["failed_attempts"].clone()
    };
    assert_eq!(count(&[Role::new("lender")]), serde_json::Value::Null);
    assert_eq!(count(&[Role::new("buyer")]), serde_json::json!(1));
    // A party who is lender and buyer sees what the buyer sees.
    assert_eq!(
        count(&[Role::new("lender"), Role::new("buyer")]),
        serde_json::json!(1)
    );
}

#[test]
fn a_view_kept_from_funding_failures_lists_no_failed_attempt() {
    use trustfold_core::policy::{EventFilter, Visibility};
    // The failed ACH attempt, then the wire; a lender who sees amounts (nothing hidden)
    // but only the opening and funds available.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let bytes = std::fs::read(dir.join("em_ach_failure_then_wire.history.json")).expect("vector");
    let mut state = replay(&bytes).expect("replay");
    let envs: Vec<_> = history::parse(&bytes)
        .expect("parse")
        .iter()
        .map(|r| r.envelope().expect("envelope"))
        .collect();
    let lender = Role::new("lender");
    let mut policy = (*state.policy_doc).clone();
    policy.visibility.insert(
        lender.clone(),
        Visibility {
            events: EventFilter::Only(
                ["PaymentInitiated", "FundsAvailable"]
                    .into_iter()
                    .map(String::from)
                    .collect(),
            ),
            hide: Default::default(),
        },
    );
    state.policy_doc = std::sync::Arc::new(policy);
    let roles = std::slice::from_ref(&lender);
    let want = serde_json::json!({
        "state": view::state_view(&state, roles),
        "events": view::history_view(&state, &envs, roles),
    })
    .to_string();
    let got = String::from_utf8(view::view_json(&state, &envs, roles)).expect("utf8");
    assert_eq!(got, want);
    let seen: serde_json::Value = serde_json::from_str(&got).expect("json");
    let attempts = seen["state"]["funding"]["attempts"]
        .as_array()
        .expect("attempts shown");
    assert_eq!(attempts.len(), 1, "the wire only: {attempts:?}");
    assert_eq!(attempts[0]["rail"], "wire");
    assert!(!got.contains("R01"), "{got}");
    // Nor the references, which name the failed transfer too.
    assert!(seen["state"].get("rail_refs").is_none(), "{got}");
    assert!(!got.contains("ach-1"), "{got}");
    // Everyone else still sees both attempts and the code.
    let buyer = view::state_view(&state, &[Role::new("buyer")]);
    assert_eq!(
        buyer["funding"]["attempts"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(buyer["funding"]["attempts"][0]["code"], "R01");
}
