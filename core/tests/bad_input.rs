//! Bad input never panics: each kind gets its own specific error code.

mod support;

use support::scenarios::{
    self, as_, pid, policy, usd, BUYER, BUYER_AGENT, ESCROW, LENDER, LISTING_AGENT, SELLER,
};
use trustfold_core::driver::Driver;
use trustfold_core::fold::{replay, verify_and_replay};
use trustfold_core::history::PublicKey;
use trustfold_core::prelude::*;

fn good_history() -> Vec<u8> {
    scenarios::em_partial_releases().expect("scenario").history
}

fn code_of<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
    r.expect_err("expected an error").code().to_string()
}

#[test]
fn malformed_and_truncated_histories() {
    assert_eq!(code_of(replay(b"")), "malformed_json");
    assert_eq!(code_of(replay(b"{}")), "malformed_json");
    assert_eq!(code_of(replay(b"[1,2]")), "malformed_json");
    assert_eq!(code_of(replay(b"[]")), "invalid_history");
    let h = good_history();
    // Truncated anywhere: a JSON error, never a panic.
    for cut in (0..h.len()).step_by(97) {
        let r = replay(&h[..cut]);
        assert!(r.is_err(), "truncated at {cut} must fail");
    }
    // A record without its hash.
    let e = replay(br#"[{"event":{}}]"#).unwrap_err();
    assert_eq!(e.code(), "malformed_json");
    assert!(e.to_string().contains("hash"), "{e}");
}

fn first_event_with(h: &[u8], from: &str, to: &str) -> Vec<u8> {
    // Edit an event's bytes and re-seal the chain from there, so only the edit is judged.
    let text = String::from_utf8(h.to_vec()).expect("utf8");
    let records = trustfold_core::history::parse(text.as_bytes()).expect("parse");
    let mut sealed = Vec::new();
    let mut prev = Hash::ZERO;
    let mut done = false;
    for r in records {
        let mut body = r.event.get().to_string();
        let prev_hex = &body[9..73].to_string();
        body = body.replacen(prev_hex, &prev.to_string(), 1);
        if !done && body.contains(from) {
            body = body.replacen(from, to, 1);
            done = true;
        }
        let hash = Hash::of(body.as_bytes());
        prev = hash;
        sealed.push(SealedEvent {
            hash,
            body: body.into_bytes(),
        });
    }
    assert!(done, "{from} not found");
    trustfold_core::history::write(&sealed)
}

/// `h` as opened before `PaymentInitiated` v2 (its scenarios run in early November
/// 2026, before v2 came): a payment that may hold events at versions v2 supersedes.
fn before_v2(h: &[u8]) -> Vec<u8> {
    first_event_with(
        h,
        "\"type\":\"PaymentInitiated\",\"v\":2",
        "\"type\":\"PaymentInitiated\",\"v\":1",
    )
}

#[test]
fn unknown_event_type_and_schema_version() {
    let h = good_history();
    let e = replay(&first_event_with(
        &h,
        "\"type\":\"ParticipantJoined\"",
        "\"type\":\"ParticipantDanced\"",
    ))
    .unwrap_err();
    assert_eq!(e.seq(), Some(3));
    assert!(
        e.to_string()
            .contains("unknown event type `ParticipantDanced`"),
        "{e}"
    );
    let e = replay(&first_event_with(
        &h,
        "\"type\":\"ParticipantJoined\",\"v\":1",
        "\"type\":\"ParticipantJoined\",\"v\":7",
    ))
    .unwrap_err();
    assert!(
        e.to_string().contains("unsupported schema version 7"),
        "{e}"
    );
}

#[test]
fn wrong_currency_too_many_decimals_negative_amounts_in_events() {
    let h = good_history();
    // The funding event's amount: `"amount":{"amount":"5000.00","currency":"USD"},"rail"`.
    let f =
        |a: &str, c: &str| format!("\"amount\":{{\"amount\":{a},\"currency\":\"{c}\"}},\"rail\"");
    let from = f("\"5000.00\"", "USD");
    let cases = [
        (f("\"5000.00\"", "EUR"), "currency mismatch"),
        (
            f("\"5000.005\"", "USD"),
            "has more decimals than USD allows",
        ),
        (f("\"-5000.00\"", "USD"), "amount must be positive"),
        (f("\"5000.00\"", "XYZ"), "unknown currency"),
        (f("5000.00", "USD"), "invalid type"),
    ];
    for (to, needle) in cases {
        let e = replay(&first_event_with(&h, &from, &to)).unwrap_err();
        assert!(e.to_string().contains(needle), "{to}: {e}");
        assert!(e.seq().is_some(), "{to}: names the event");
    }
}

#[test]
fn money_parsing_errors_are_specific() {
    let usd = Currency::new("USD").expect("usd");
    assert_eq!(code_of(Money::parse("1.005", usd)), "invalid_amount_scale");
    assert_eq!(code_of(Money::parse("1,00", usd)), "invalid_amount");
    assert_eq!(code_of(Currency::new("usd")), "unknown_currency");
    assert_eq!(
        code_of(Money::parse("-1", usd).and_then(Money::require_positive)),
        "non_positive_amount"
    );
    let e: Error = serde_json::from_str::<Money>(r#"{"amount":"1.005","currency":"USD"}"#)
        .unwrap_err()
        .into();
    assert_eq!(e.code(), "invalid_amount_scale");
}

#[test]
fn invalid_policies_name_the_field() {
    let base: serde_json::Value = serde_json::from_str(include_str!(
        "../../examples/policies/milestone-escrow.json"
    ))
    .expect("json");
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("/payer_role", "nobody".into(), "payer_role"),
        (
            "/release/approvals",
            serde_json::json!({"n_of":{"n":5,"roles":["client","inspector","arbiter"]}}),
            "release.approvals.n_of.n",
        ),
        (
            "/release/approvals",
            serde_json::json!({"all_of":["ghost"]}),
            "release.approvals.all_of",
        ),
        ("/fees/0/fixed", "-1.00".into(), "fees[0].fixed"),
        ("/fees/0/bps", 20000.into(), "fees[0].bps"),
        (
            "/permissions/resolve",
            serde_json::json!(["judge"]),
            "permissions.resolve",
        ),
        ("/version", 0.into(), "version"),
        ("/funding/rails", serde_json::json!([]), "funding.rails"),
        (
            "/currencies",
            serde_json::json!(["USD", "EUR", "USD"]),
            "currencies[2]",
        ),
        (
            "/funding/deadline/days",
            3651.into(),
            "funding.deadline.days",
        ),
        (
            "/funding/good_funds_days/ach",
            366.into(),
            "funding.good_funds_days.ach",
        ),
        (
            "/notifications/NotAnEvent",
            serde_json::json!(["client"]),
            "notifications.NotAnEvent",
        ),
    ];
    for (path, value, field) in cases {
        let mut p = base.clone();
        let (parent, key) = path.rsplit_once('/').expect("path");
        let target = if parent.is_empty() {
            &mut p
        } else {
            p.pointer_mut(parent).expect("parent")
        };
        target[key] = value;
        let e = Policy::from_json(&p.to_string()).unwrap_err();
        assert_eq!(e.code(), "invalid_policy", "{path}");
        assert_eq!(e.field(), Some(field), "{path}: {e}");
    }
    // A fixed fee must be chargeable in every listed currency.
    let mut p = base.clone();
    p["currencies"] = serde_json::json!(["USD", "JPY"]);
    p["fees"][0]["fixed"] = "25.50".into();
    let e = Policy::from_json(&p.to_string()).unwrap_err();
    assert_eq!(e.field(), Some("fees[0].fixed"), "{e}");
    assert!(e.to_string().contains("JPY"), "{e}");
    // With no currencies listed, opening a payment in one that cannot carry the fee
    // is refused instead of every release failing later.
    p["currencies"] = serde_json::json!([]);
    let lenient = Policy::from_json(&p.to_string()).expect("valid without currencies");
    let yen = Money::parse("100000", Currency::new("JPY").expect("jpy")).expect("yen");
    assert_eq!(
        lenient.check_payment_amount(&yen).unwrap_err().field(),
        Some("fees[0].fixed")
    );
    assert_eq!(lenient.check_payment_amount(&usd("100000.00")), Ok(()));
    // Unknown role names in roles: reserved ones too.
    let mut p = base.clone();
    p["roles"]["system"] = serde_json::json!({});
    assert_eq!(
        Policy::from_json(&p.to_string()).unwrap_err().field(),
        Some("roles.system")
    );
    // Malformed JSON and unknown fields.
    assert_eq!(code_of(Policy::from_json("{")), "invalid_policy");
    let mut p = base;
    p["surprise"] = true.into();
    assert!(Policy::from_json(&p.to_string())
        .unwrap_err()
        .to_string()
        .contains("unknown field `surprise`"));
}

#[test]
fn malformed_commands() {
    assert_eq!(
        code_of(Command::from_json(b"{\"type\":\"Explode\"}")),
        "malformed_json"
    );
    assert_eq!(
        code_of(Command::from_json(b"{\"type\":\"Approve\"}")),
        "malformed_json"
    );
    let e = Command::from_json(br#"{"type":"SubmitFunding","amount":{"amount":"1.001","currency":"USD"},"rail":"ach","rail_ref":"x"}"#).unwrap_err();
    assert_eq!(e.code(), "invalid_amount_scale");
    let ok = Command::from_json(
        br#"{"type":"RailNotice","rail_ref":"x","notice":{"kind":"returned","code":"R01"}}"#,
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn rejections_name_the_rule() {
    let mut s = scenarios::earnest_held(90).expect("held");
    // Text longer than a history should keep.
    let long = "é".repeat(trustfold_core::command::TEXT_MAX + 1);
    s.rejects(
        as_(BUYER, "buyer"),
        Command::OpenDispute {
            dispute: scenarios::rid(2),
            reason: long.clone(),
        },
        "text_too_long",
    );
    s.rejects(
        as_(ESCROW, "escrow_holder"),
        Command::RailNotice {
            rail_ref: "x".repeat(trustfold_core::command::NAME_MAX + 1),
            notice: trustfold_core::command::RailOutcome::Settled { amount: None },
        },
        "text_too_long",
    );
    // At the limit (in characters, not bytes) it is taken.
    s.run(
        as_(BUYER, "buyer"),
        Command::OpenDispute {
            dispute: scenarios::rid(2),
            reason: long[..long.len() - 2].to_string(),
        },
    )
    .expect("a reason of exactly TEXT_MAX characters");
    let mut s = scenarios::earnest_held(90).expect("held");
    // Wrong role.
    s.rejects(
        as_(LENDER, "lender"),
        Command::RequestRelease {
            request: scenarios::rid(1),
            allocations: vec![Allocation {
                party: pid(SELLER),
                amount: usd("1.00"),
            }],
        },
        "not_permitted",
    );
    // A party claiming a role it does not hold.
    s.rejects(
        as_(BUYER, "seller"),
        Command::OpenDispute {
            dispute: scenarios::rid(2),
            reason: String::new(),
        },
        "not_permitted",
    );
    // Insufficient funds and currency mismatch.
    s.rejects(
        as_(ESCROW, "escrow_holder"),
        Command::RequestRelease {
            request: scenarios::rid(1),
            allocations: vec![Allocation {
                party: pid(SELLER),
                amount: usd("5000.01"),
            }],
        },
        "insufficient_funds",
    );
    let eur = Money::parse("10", Currency::new("EUR").expect("eur")).expect("eur");
    s.rejects(
        as_(ESCROW, "escrow_holder"),
        Command::RequestRelease {
            request: scenarios::rid(1),
            allocations: vec![Allocation {
                party: pid(SELLER),
                amount: eur,
            }],
        },
        "currency_mismatch",
    );
    // Paying someone who is not a payee.
    s.rejects(
        as_(ESCROW, "escrow_holder"),
        Command::RequestRelease {
            request: scenarios::rid(1),
            allocations: vec![Allocation {
                party: pid(LENDER),
                amount: usd("10"),
            }],
        },
        "not_a_payee",
    );
    // Rail notices only from the rail; unknown references.
    s.rejects(
        as_(BUYER, "buyer"),
        Command::RailNotice {
            rail_ref: "wire-1".into(),
            notice: RailOutcome::Settled { amount: None },
        },
        "not_permitted",
    );
    // A notice for a transfer not recorded yet is held (for the funding or payout it is
    // about), not refused: the rail may tell before the payer does.
    s.run(
        Actor::rail(),
        Command::RailNotice {
            rail_ref: "nope".into(),
            notice: RailOutcome::Settled { amount: None },
        },
    )
    .expect("held");
    assert_eq!(
        s.state().held_notices.get("nope").map(Vec::len),
        Some(1),
        "held"
    );
    // A settled transfer cannot fail.
    s.rejects(
        Actor::rail(),
        Command::RailNotice {
            rail_ref: "wire-1".into(),
            notice: RailOutcome::Failed {
                code: "x".into(),
                reason: String::new(),
            },
        },
        "notice_conflict",
    );
    // Quorum: authorization waits for both.
    scenarios::request_release(&mut s, 1, &[(SELLER, "100.00")]).expect("request");
    s.rejects(
        as_(ESCROW, "escrow_holder"),
        Command::SubmitDisbursement {
            request: scenarios::rid(1),
            rail: Rail::Wire,
            rail_ref: "o".into(),
        },
        "quorum_not_met",
    );
    // Another request while one is open.
    s.rejects(
        as_(ESCROW, "escrow_holder"),
        Command::RequestRefund {
            request: scenarios::rid(3),
            amount: None,
        },
        "request_open",
    );
}

#[test]
fn allowed_commands_follow_role_and_state() {
    let s = scenarios::earnest_held(91).expect("held");
    let ctx = |n: u8, role: &str| Context {
        command_id: CommandId::from_bytes([1; 16]),
        actor: as_(n, role),
        now: s.d.now(),
        correlation: None,
    };
    let buyer = allowed_commands(s.state(), &ctx(BUYER, "buyer"));
    assert!(buyer.contains(&CommandKind::OpenDispute));
    assert!(!buyer.contains(&CommandKind::RequestRelease));
    assert!(
        !buyer.contains(&CommandKind::SubmitFunding),
        "already fully funded"
    );
    let escrow = allowed_commands(s.state(), &ctx(ESCROW, "escrow_holder"));
    assert!(escrow.contains(&CommandKind::RequestRelease));
    assert!(escrow.contains(&CommandKind::RequestRefund));
    let lender = allowed_commands(s.state(), &ctx(LENDER, "lender"));
    assert!(lender.is_empty(), "{lender:?}");
}

#[test]
fn signed_head_needs_the_key() {
    let v = scenarios::em_happy_wire().expect("vector");
    let head = v.head.expect("head");
    assert_eq!(
        code_of(verify_and_replay(&v.history, Some(&head), None)),
        "invalid_key"
    );
    assert_eq!(code_of("zz".parse::<PublicKey>()), "invalid_key");
    let other = PublicKey::from_secret(&[9; 32]);
    assert_eq!(
        code_of(verify_and_replay(&v.history, Some(&head), Some(&other))),
        "bad_signature"
    );
}

#[test]
fn lender_sees_only_what_the_policy_allows() {
    let s = scenarios::earnest_held(92).expect("held");
    let v = trustfold_core::view::state_view(s.state(), &[Role::new("lender")]);
    assert!(v["amount"].is_null() && v["ledger"].is_null());
    assert!(v["funding"].get("method").is_none(), "no bank details");
    assert_eq!(v["status"], "Held");
    let events =
        trustfold_core::view::history_view(s.state(), s.d.envelopes(), &[Role::new("lender")]);
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["PaymentInitiated", "FundsAvailable"]);
    assert!(events[1]["data"].get("amount").is_none());
    // The escrow holder sees everything.
    let full = trustfold_core::view::state_view(s.state(), &[Role::new("escrow_holder")]);
    assert_eq!(full["amount"]["amount"], "5000.00");
}

#[test]
fn views_keep_no_digest_of_hidden_amounts_nor_hidden_rail_references() {
    // `terms_hash`, `allocations_hash` (also what each approval bound) and the chain's
    // `head` are SHA-256 over amounts a role may not see: hashing the likely amounts
    // finds them, so they go with the amounts. Rail references name bank transfers,
    // hidden with the bank details wherever they appear.
    let mut s = scenarios::earnest_held(94).expect("held");
    scenarios::request_release(&mut s, 1, &[(SELLER, "100.00")]).expect("request");
    let hash = s.state().requests[&scenarios::rid(1)].allocations_hash;
    s.run(
        as_(BUYER, "buyer"),
        Command::Approve {
            request: scenarios::rid(1),
            allocations_hash: hash,
        },
    )
    .expect("approve");
    // A role that hides amounts and nothing else sees the request and its approval,
    // and every event (the policy here is the payment's, with that one visibility).
    let mut state = s.state().clone();
    let mut policy = (*state.policy_doc).clone();
    let auditor = Role::new("buyer_agent");
    policy.visibility.insert(
        auditor.clone(),
        trustfold_core::policy::Visibility {
            events: trustfold_core::policy::EventFilter::All,
            hide: [trustfold_core::policy::Hidden::Amounts]
                .into_iter()
                .collect(),
        },
    );
    state.policy_doc = std::sync::Arc::new(policy);
    let auditor = [auditor];
    let seller = [Role::new("seller")];
    let hex = |h: &Hash| h.to_string();
    let digests = [
        hex(&state.terms_hash),
        hex(&hash),
        hex(&state.head),
        "5000.00".to_string(),
    ];
    // Both writers of views: serde values (`state_view`, `history_view`) and the bytes
    // the SDKs get (`view_json`).
    for (roles, gone) in [
        (&auditor[..], &digests[..]),
        (&seller[..], &["rail_ref".to_string()][..]),
    ] {
        let st = trustfold_core::view::state_view(&state, roles).to_string();
        let events = serde_json::to_string(&trustfold_core::view::history_view(
            &state,
            s.d.envelopes(),
            roles,
        ))
        .expect("json");
        let bytes = String::from_utf8(trustfold_core::view::view_json(
            &state,
            s.d.envelopes(),
            roles,
        ))
        .expect("utf8");
        for text in [&st, &events, &bytes] {
            for g in gone {
                assert!(!text.contains(g.as_str()), "{roles:?} sees {g}: {text}");
            }
        }
    }
    // The auditor still sees that the buyer approved, and the request itself.
    let v = trustfold_core::view::state_view(&state, &auditor);
    let req = &v["requests"][scenarios::rid(1).to_string()];
    assert_eq!(req["approvals"][pid(BUYER).to_string()], true);
    assert_eq!(req["status"], "awaiting_approvals");
    // The lender's view hides requests: its status does not tell of one either.
    let lender = [Role::new("lender")];
    assert_eq!(s.state().status, Status::AwaitingApprovals);
    let lender_state = trustfold_core::view::state_view(s.state(), &lender);
    assert_eq!(lender_state["status"], "Held");
    let lender_bytes: serde_json::Value = serde_json::from_slice(&trustfold_core::view::view_json(
        s.state(),
        s.d.envelopes(),
        &lender,
    ))
    .expect("json");
    assert_eq!(lender_bytes["state"]["status"], "Held");
    // Those who see amounts keep the digests they approve and agree with.
    let buyer = trustfold_core::view::state_view(s.state(), &[Role::new("buyer")]);
    assert_eq!(buyer["status"], "AwaitingApprovals");
    assert!(buyer["terms_hash"].is_string());
    assert!(buyer["requests"][scenarios::rid(1).to_string()]["allocations_hash"].is_string());
    let full = trustfold_core::view::state_view(s.state(), &[Role::new("escrow_holder")]);
    assert_eq!(full["funding"]["attempts"][0]["rail_ref"], "wire-1");
}

#[test]
fn a_role_that_agrees_or_approves_cannot_hide_amounts() {
    let mut p = policy("earnest-money");
    for role in ["seller", "buyer"] {
        let mut q = p.clone();
        q.visibility.insert(
            Role::new(role),
            trustfold_core::policy::Visibility {
                events: trustfold_core::policy::EventFilter::All,
                hide: [trustfold_core::policy::Hidden::Amounts]
                    .into_iter()
                    .collect(),
            },
        );
        let e = q.validate_new().unwrap_err();
        assert_eq!(
            e.field(),
            Some(format!("visibility.{role}").as_str()),
            "{e}"
        );
        assert!(e.to_string().contains("cannot hide `amounts`"), "{e}");
        assert_eq!(q.validate(), Ok(()), "stored policies still fold");
    }
    // The lender neither agrees nor approves: it may.
    assert_eq!(p.validate_new(), Ok(()));
    p.visibility.clear();
    assert_eq!(p.validate_new(), Ok(()));
}

#[test]
fn disbursing_before_quorum_says_so() {
    let mut s = scenarios::earnest_held(93).expect("held");
    scenarios::request_release(&mut s, 1, &[(SELLER, "100.00")]).expect("request");
    s.rejects(
        as_(ESCROW, "escrow_holder"),
        Command::SubmitDisbursement {
            request: scenarios::rid(1),
            rail: Rail::Wire,
            rail_ref: "o".into(),
        },
        "quorum_not_met",
    );
}

#[test]
fn state_at_a_sequence() {
    let v = scenarios::em_partial_releases().expect("vector");
    let s = trustfold_core::fold::replay_at(&v.history, 1).expect("seq 1");
    assert_eq!(s.status, Status::Draft);
    assert_eq!(s.version, 1);
    assert_eq!(
        trustfold_core::fold::replay_at(&v.history, 0)
            .unwrap_err()
            .code(),
        "invalid_history"
    );
    assert_eq!(
        trustfold_core::fold::replay_at(&v.history, 10_000)
            .unwrap_err()
            .code(),
        "invalid_history"
    );
}

#[test]
fn a_deadline_past_year_9999_is_refused_not_written() {
    let mut p = policy("earnest-money");
    let rule = p.funding.deadline.as_mut().expect("a deadline");
    rule.anchor = trustfold_core::policy::DeadlineAnchor::Initiated;
    rule.days = trustfold_core::policy::MAX_DEADLINE_DAYS;
    rule.business_days = false;
    let initiate = |p: &Policy, d: &Driver| Command::Initiate {
        payment: d.payment(),
        tenant: trustfold_core::id::TenantId::from_bytes([0x7e; 16]),
        policy: Box::new(p.clone()),
        amount: usd("5000.00"),
        description: "Earnest money".into(),
        roles: vec![trustfold_core::policy::Role::new("listing_agent")],
        name: "Lee Listing".into(),
    };
    let late: Timestamp = "9995-06-01T12:00:00Z".parse().expect("time");
    let mut d = Driver::new(PaymentId::from_bytes([9; 16]), late);
    let e = d
        .run(as_(LISTING_AGENT, "listing_agent"), initiate(&p, &d))
        .unwrap_err();
    assert_eq!(e.code(), "deadline_out_of_range", "{e}");
    assert!(e.to_string().contains("9999-12-31T23:59:59.999Z"), "{e}");
    assert!(d.state().is_err(), "no state");
    assert_eq!(d.history(), b"[\n\n]\n", "nothing was written");
    // Business days reach the same limit.
    p.funding.deadline.as_mut().expect("deadline").business_days = true;
    let e = d
        .run(as_(LISTING_AGENT, "listing_agent"), initiate(&p, &d))
        .unwrap_err();
    assert_eq!(e.code(), "deadline_out_of_range", "{e}");
    // Ten years earlier the same policy works.
    let mut d = Driver::new(
        PaymentId::from_bytes([9; 16]),
        "9985-06-01T12:00:00Z".parse().expect("time"),
    );
    d.run(as_(LISTING_AGENT, "listing_agent"), initiate(&p, &d))
        .expect("initiated");
    let deadline = d.state().expect("state").funding.deadline.expect("set");
    assert_eq!(deadline.to_string().parse::<Timestamp>(), Ok(deadline));
}

#[test]
fn a_new_policy_holds_no_control_or_bidi_characters() {
    // The policy is embedded in every payment's first event and shown to every
    // participant: its text follows the commands' rule (`text_char_allowed`).
    let mut p = policy("earnest-money");
    p.name = "Real\u{0}estate".into();
    let e = p.validate_new().unwrap_err();
    assert_eq!(
        (e.code(), e.field()),
        ("invalid_policy", Some("name")),
        "{e}"
    );
    assert!(e.to_string().contains("U+0000 at character 5"), "{e}");
    p.name = "Real estate\n".into();
    assert_eq!(p.validate_new().unwrap_err().field(), Some("name"));
    p.name = "Immobilier, דוד 🏡".into();
    assert_eq!(p.validate_new(), Ok(()));
    let buyer = Role::new("buyer");
    p.roles.get_mut(&buyer).expect("buyer").description = "pays\r\nthe deposit\t(wire)".into();
    assert_eq!(p.validate_new(), Ok(()));
    p.roles.get_mut(&buyer).expect("buyer").description = "pays \u{202e}tisoped".into();
    let e = p.validate_new().unwrap_err();
    assert_eq!(e.field(), Some("roles.buyer.description"), "{e}");
    assert!(
        e.to_string()
            .contains("bidirectional control character U+202E"),
        "{e}"
    );
    // Stored policies that predate the rule still fold (`validate` does not check it).
    assert_eq!(p.validate(), Ok(()));
}

#[test]
fn a_payment_opened_before_a_policy_bound_still_folds() {
    // A policy that breaks bounds added later (a 4000-day deadline, a currency listed
    // twice) but the structural rules still hold: stored histories embedding it fold.
    let mut p = policy("earnest-money");
    p.funding.deadline.as_mut().expect("deadline").days = 4000;
    p.currencies = vec![Currency::new("USD").expect("usd"); 2];
    assert_eq!(p.validate(), Ok(()));
    assert_eq!(
        p.validate_new().unwrap_err().field(),
        Some("funding.deadline.days")
    );
    let first = Envelope {
        prev: Hash::ZERO,
        stream: PaymentId::from_bytes([5; 16]),
        seq: 1,
        id: EventId::from_bytes([6; 16]),
        schema_version: 1,
        at: "2026-11-02T15:00:00Z".parse().expect("time"),
        actor: as_(LISTING_AGENT, "listing_agent"),
        causation: None,
        correlation: None,
        event: Event::PaymentInitiated(trustfold_core::event::PaymentInitiated {
            tenant: trustfold_core::id::TenantId::from_bytes([0x7e; 16]),
            policy: trustfold_core::event::EmbeddedPolicy::new(p.clone()),
            policy_hash: p.hash(),
            amount: usd("5000.00"),
            description: String::new(),
            initiator: pid(LISTING_AGENT),
            initiator_roles: vec![Role::new("listing_agent")],
            initiator_name: String::new(),
        }),
    };
    let history = trustfold_core::history::write(&[first.seal()]);
    let state = verify_and_replay(&history, None, None).expect("folds");
    assert_eq!(
        state.policy_doc.funding.deadline.as_ref().map(|d| d.days),
        Some(4000)
    );
    // Opening a new payment with it is refused.
    let mut d = Driver::new(PaymentId::from_bytes([7; 16]), first.at);
    let e = d
        .run(
            as_(LISTING_AGENT, "listing_agent"),
            Command::Initiate {
                payment: d.payment(),
                tenant: trustfold_core::id::TenantId::from_bytes([0x7e; 16]),
                policy: Box::new(p),
                amount: usd("5000.00"),
                description: String::new(),
                roles: vec![Role::new("listing_agent")],
                name: String::new(),
            },
        )
        .unwrap_err();
    assert_eq!(e.field(), Some("funding.deadline.days"), "{e}");
}

#[test]
fn amounts_have_one_spelling_and_errors_quote_input_briefly() {
    let usd = Currency::new("USD").expect("usd");
    for ok in ["5000.00", "5000", "0", "0.5", "-1.50", "-0"] {
        assert!(Money::parse(ok, usd).is_ok(), "{ok}");
    }
    for bad in [
        "+5000.00", "5000.", ".5", "01", "-", "", "1e3", "1.2.3", " 1", "--1", "-.5",
    ] {
        assert_eq!(code_of(Money::parse(bad, usd)), "invalid_amount", "{bad:?}");
    }
    let e = Money::parse(&"9".repeat(1000), usd)
        .unwrap_err()
        .to_string();
    assert!(e.len() < 200 && e.contains('…'), "{e}");
    let e = "x"
        .repeat(10_000)
        .parse::<Timestamp>()
        .unwrap_err()
        .to_string();
    assert!(e.len() < 200, "{e}");
    let long_field = format!(r#"{{"type":"Close","{}":1}}"#, "k".repeat(100_000));
    let e = Command::from_json(long_field.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(e.len() < 400, "{}", &e[..400.min(e.len())]);
    // One prefix, however deep the error.
    let e = Context::from_json(
        br#"{"command_id":"nope","actor":{"role":"buyer"},"now":"2026-11-26T05:35:15Z"}"#,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(e.matches("malformed json").count(), 1, "{e}");
}

#[test]
fn a_clock_behind_the_payment_stamps_commands_at_its_last_event() {
    let mut s = scenarios::earnest(0x51).expect("earnest");
    let attach = || Command::AttachFundingMethod {
        method: FundingMethod {
            rail: Rail::Wire,
            institution: "Second Bank".into(),
            account_last4: "4321".into(),
            holder: "Bea Buyer".into(),
        },
    };
    s.hours(10);
    s.run(as_(BUYER, "buyer"), attach()).expect("attached");
    let last = s.state().updated_at;
    assert_eq!(last, s.d.now());
    // Another server whose clock is 5 hours behind handles the next command.
    s.hours(-5);
    let behind = s.d.now();
    assert!(behind < last);
    s.run(as_(BUYER, "buyer"), attach())
        .expect("attached again");
    let env = s.d.envelopes().last().expect("an event");
    assert_eq!(
        env.at, last,
        "stamped at the last event's time, not {behind}"
    );
    assert_eq!(s.state().updated_at, last);
    // A clock ahead of the payment is used as it is.
    s.hours(8);
    s.run(as_(BUYER, "buyer"), attach())
        .expect("attached later");
    let env = s.d.envelopes().last().expect("an event");
    assert_eq!(env.at, s.d.now());
    assert!(env.at > last);
    // The history stays valid and folds to the same state.
    let state = replay(&s.d.history()).expect("folds");
    assert_eq!(state.to_json(), s.state().to_json());
}

#[test]
fn actors_outside_the_policy_and_the_platform_are_refused() {
    let s = scenarios::earnest(0x52).expect("earnest");
    let forge = |actor: Actor| {
        let mut sealed = s.d.sealed().to_vec();
        let mut last = s.d.envelopes().last().expect("events").clone();
        last.actor = actor;
        *sealed.last_mut().expect("sealed") = last.seal();
        trustfold_core::history::write(&sealed)
    };
    let seq = s.state().version;
    for (actor, says) in [
        (
            Actor {
                party: None,
                role: Role::new("x".repeat(100_000)),
            },
            "not the platform's",
        ),
        (
            Actor {
                party: None,
                role: Role::new("buyer"),
            },
            "not the platform's",
        ),
        (
            as_(BUYER, "nobody\u{0}"),
            "not a role of the payment's policy",
        ),
    ] {
        let e = replay(&forge(actor)).unwrap_err();
        assert_eq!((e.code(), e.seq()), ("invalid_history", Some(seq)), "{e}");
        assert!(e.to_string().contains(says), "{e}");
        assert!(e.to_string().len() < 300, "the role is quoted briefly");
    }
    // The untouched history folds.
    assert!(replay(&s.d.history()).is_ok());
    // And `decide` never lets a party speak as the rail or the clock.
    let mut s = s;
    let party_rail = Actor {
        party: Some(pid(BUYER)),
        role: Role::new("rail"),
    };
    s.rejects(
        party_rail,
        Command::RailNotice {
            rail_ref: "r-1".into(),
            notice: RailOutcome::Settled { amount: None },
        },
        "not_permitted",
    );
    let party_clock = Actor {
        party: Some(pid(BUYER)),
        role: Role::new("system"),
    };
    s.rejects(party_clock, Command::Tick, "not_permitted");
}

#[test]
fn an_error_inside_a_commands_policy_is_located_once_in_the_command() {
    let cmd = br#"{"type":"Initiate","payment":"b0000000-0000-4000-8000-000000000001","tenant":"b0000000-0000-4000-8000-000000000001","policy":{"id":5},"amount":{"amount":"1","currency":"USD"},"roles":[]}"#;
    let e = Command::from_json(cmd).unwrap_err();
    let m = e.to_string();
    assert_eq!(e.code(), "malformed_json", "{m}");
    assert_eq!(m.matches(" at line ").count(), 1, "{m}");
    // The column of the bad value (`5`) in the whole command.
    let col = cmd
        .windows(6)
        .position(|w| w == br#""id":5"#)
        .expect("there")
        + 6;
    assert!(m.ends_with(&format!("at line 1 column {col}")), "{m}");
}

#[test]
fn a_policy_of_the_wrong_shape_names_the_field() {
    let base: serde_json::Value =
        serde_json::from_str(include_str!("../../examples/policies/marketplace.json"))
            .expect("json");
    type Change = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Change)> = vec![
        ("version", Box::new(|p| p["version"] = (-1).into())),
        (
            "funding.rails[1]",
            Box::new(|p| p["funding"]["rails"][1] = "bitcoin".into()),
        ),
        (
            "roles.buyer.max",
            Box::new(|p| p["roles"]["buyer"]["max"] = 1e20.into()),
        ),
        (
            "fees[0].bps",
            Box::new(|p| p["fees"][0]["bps"] = "ten".into()),
        ),
        ("surprise", Box::new(|p| p["surprise"] = true.into())),
        (
            "payer_role",
            Box::new(|p| {
                p.as_object_mut().expect("object").remove("payer_role");
            }),
        ),
    ];
    for (field, change) in cases {
        let mut p = base.clone();
        change(&mut p);
        let e = Policy::from_json(&p.to_string()).unwrap_err();
        assert_eq!(
            (e.code(), e.field()),
            ("invalid_policy", Some(field)),
            "{e}"
        );
        assert!(e.to_string().contains(&format!("`{field}`")), "{e}");
    }
}

// ---------------------------------------------------------------- text and role lists

fn open_cmd(s: &scenarios::Sim, description: &str, name: &str, roles: &[&str]) -> Command {
    Command::Initiate {
        payment: s.d.payment(),
        tenant: TenantId::from_bytes([0x7e; 16]),
        policy: Box::new(policy("earnest-money")),
        amount: usd("5000.00"),
        description: description.into(),
        roles: roles.iter().map(|r| Role::new(*r)).collect(),
        name: name.into(),
    }
}

fn invite_cmd(n: u8, roles: &[&str], name: &str, email: Option<&str>) -> Command {
    Command::Invite {
        party: pid(n),
        roles: roles.iter().map(|r| Role::new(*r)).collect(),
        name: name.into(),
        email: email.map(str::to_owned),
    }
}

/// The command is refused with `code` and changes nothing; the error, for a closer look.
fn refused(s: &mut scenarios::Sim, actor: Actor, cmd: Command, code: &str) -> Error {
    let before = s.d.history();
    let e = s.d.run(actor, cmd).expect_err("refused");
    assert_eq!(e.code(), code, "{e}");
    assert_eq!(s.d.history(), before, "a refusal writes nothing");
    e
}

/// Characters that would live forever in a signed history and could make a name read
/// as something else, with how the message names them.
const BAD_CHARS: &[(char, &str)] = &[
    ('\0', "U+0000"),
    ('\u{7}', "U+0007"),
    ('\u{1b}', "U+001B"),
    ('\u{b}', "U+000B"),
    ('\u{7f}', "U+007F"),
    ('\u{85}', "U+0085"),
    ('\u{9f}', "U+009F"),
    ('\u{202a}', "U+202A"),
    ('\u{202e}', "U+202E"),
    ('\u{2066}', "U+2066"),
    ('\u{2067}', "U+2067"),
    ('\u{2069}', "U+2069"),
];

#[test]
fn control_and_bidi_characters_in_text_are_refused() {
    let la = || as_(LISTING_AGENT, "listing_agent");
    let mut s = scenarios::Sim::new("earnest-money", 201);
    for &(c, hex) in BAD_CHARS {
        let name = format!("Lee{c}Listing");
        let e =
            s.d.run(la(), open_cmd(&s, "", &name, &["listing_agent"]))
                .expect_err("refused");
        assert_eq!((e.code(), e.field()), ("invalid_text", Some("name")), "{e}");
        let msg = e.to_string();
        assert!(msg.starts_with("`name` contains the "), "{msg}");
        assert!(
            msg.contains(&format!("{hex} at character 4: remove it")),
            "{msg}"
        );
        // In a long text field too.
        let description = format!("Earnest money{c}");
        let e =
            s.d.run(la(), open_cmd(&s, &description, "Lee", &["listing_agent"]))
                .expect_err("refused");
        assert_eq!(e.field(), Some("description"), "{e}");
        assert!(e.to_string().contains(hex), "{e}");
    }
    assert!(s.d.state().is_err(), "nothing was opened");
    s.run(la(), open_cmd(&s, "12 Elm St", "Lee", &["listing_agent"]))
        .expect("opens");
    for &(c, hex) in BAD_CHARS {
        let e = refused(
            &mut s,
            la(),
            invite_cmd(BUYER, &["buyer"], &format!("Bea{c}"), None),
            "invalid_text",
        );
        assert_eq!(e.field(), Some("name"));
        assert!(e.to_string().contains(hex), "{e}");
        let e = refused(
            &mut s,
            la(),
            invite_cmd(
                BUYER,
                &["buyer"],
                "Bea",
                Some(&format!("bea{c}@example.com")),
            ),
            "invalid_text",
        );
        assert_eq!(e.field(), Some("email"), "{e}");
        let e = refused(
            &mut s,
            la(),
            Command::Cancel {
                reason: format!("changed{c}our minds"),
                refund_request: None,
            },
            "invalid_text",
        );
        assert_eq!(e.field(), Some("reason"), "{e}");
    }
    let e = refused(
        &mut s,
        la(),
        invite_cmd(BUYER, &["buyer"], "\u{202e}reyuB aeB", None),
        "invalid_text",
    );
    assert_eq!(
        e.to_string(),
        "`name` contains the bidirectional control character U+202E at character 1: remove it"
    );
}

#[test]
fn line_breaks_and_tabs_only_in_long_text() {
    let la = || as_(LISTING_AGENT, "listing_agent");
    let mut s = scenarios::Sim::new("earnest-money", 202);
    let e =
        s.d.run(la(), open_cmd(&s, "", "Lee\nListing", &["listing_agent"]))
            .expect_err("refused");
    assert_eq!(
        e.to_string(),
        "`name` contains the control character U+000A at character 4: remove it \
         (line breaks and tabs are allowed only in descriptions, reasons and notes)"
    );
    s.run(
        la(),
        open_cmd(&s, "12 Elm St\r\n\tunit 4", "Lee", &["listing_agent"]),
    )
    .expect("a description may hold line breaks (\\n, \\r\\n) and tabs");
    for name in ["Bea\nBuyer", "Bea\tBuyer", "Bea\rBuyer"] {
        let e = refused(
            &mut s,
            la(),
            invite_cmd(BUYER, &["buyer"], name, None),
            "invalid_text",
        );
        assert_eq!(e.field(), Some("name"), "{e}");
    }
    let e = refused(
        &mut s,
        la(),
        Command::AttachFundingMethod {
            method: FundingMethod {
                rail: Rail::Wire,
                institution: "First\tBank".into(),
                account_last4: "6789".into(),
                holder: "Lee".into(),
            },
        },
        "invalid_text",
    );
    assert_eq!(e.field(), Some("method.institution"), "{e}");
    s.run(
        la(),
        Command::Cancel {
            reason: "deal fell through:\n\t- financing\n\t- inspection".into(),
            refund_request: None,
        },
    )
    .expect("a reason may hold line breaks and tabs");
    let history = String::from_utf8(s.d.history()).expect("utf8");
    assert!(history.contains(r"deal fell through:\n\t- financing"));
    assert_eq!(
        replay(&s.d.history()).expect("folds").status,
        Status::Cancelled
    );
}

#[test]
fn text_in_any_script_is_taken() {
    let la = || as_(LISTING_AGENT, "listing_agent");
    let mut s = scenarios::Sim::new("earnest-money", 203);
    s.run(
        la(),
        open_cmd(
            &s,
            "Anzahlung für Zoë — دفعة أولى — מקדמה 🏡",
            "דוד כהן",
            &["listing_agent"],
        ),
    )
    .expect("opens");
    let names = [
        (BUYER, "buyer", "Zoë Ødegård", Some("zoë@example.com")),
        (SELLER, "seller", "محمد العلي", None),
        (BUYER_AGENT, "buyer_agent", "Łukasz Żółć 李小龍", None),
        (7, "brokerage", "Sam 🏡 👩\u{200d}👩\u{200d}👧 Realty", None),
    ];
    for (n, role, name, email) in names {
        s.run(la(), invite_cmd(n, &[role], name, email))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let state = replay(&s.d.history()).expect("folds");
    assert_eq!(state.participants[&pid(LISTING_AGENT)].name, "דוד כהן");
    for (n, _, name, email) in names {
        let p = &state.participants[&pid(n)];
        assert_eq!((p.name.as_str(), p.email.as_deref()), (name, email));
    }
}

#[test]
fn a_role_listed_twice_is_refused() {
    let la = || as_(LISTING_AGENT, "listing_agent");
    let mut s = scenarios::Sim::new("earnest-money", 204);
    for (roles, code) in [
        (&["listing_agent", "listing_agent"][..], "duplicate_role"),
        (
            &["listing_agent", "buyer", "listing_agent"][..],
            "duplicate_role",
        ),
        (&[][..], "roles_required"),
    ] {
        let e =
            s.d.run(la(), open_cmd(&s, "", "Lee", roles))
                .expect_err("refused");
        assert_eq!(e.code(), code, "{roles:?}: {e}");
    }
    let e =
        s.d.run(
            la(),
            open_cmd(&s, "", "Lee", &["listing_agent", "listing_agent"]),
        )
        .expect_err("refused");
    assert_eq!(
        (e.field(), e.to_string().as_str()),
        (
            Some("roles"),
            "role `listing_agent` is listed more than once in `roles`: list each role once"
        )
    );
    s.run(la(), open_cmd(&s, "", "Lee", &["listing_agent"]))
        .expect("opens");
    let e = refused(
        &mut s,
        la(),
        invite_cmd(ESCROW, &["escrow_holder", "escrow_holder"], "Esme", None),
        "duplicate_role",
    );
    assert!(e.to_string().contains("`escrow_holder`"), "{e}");
    refused(
        &mut s,
        la(),
        invite_cmd(BUYER, &["buyer", "seller", "buyer"], "Bea", None),
        "duplicate_role",
    );
    refused(
        &mut s,
        la(),
        invite_cmd(BUYER, &[], "Bea", None),
        "roles_required",
    );
    s.run(la(), invite_cmd(ESCROW, &["escrow_holder"], "Esme", None))
        .expect("each role once");
}

#[test]
fn a_stored_history_with_a_repeated_role_or_control_characters_still_folds() {
    // Written before these rules: the initiator and an invitee with a role listed
    // twice, and names, a description and an e-mail holding control and bidi
    // characters. The fold judges events as written; only new commands are refused.
    let stream = PaymentId::from_bytes([8; 16]);
    let at: Timestamp = "2026-11-02T15:00:00Z".parse().expect("time");
    let p = policy("earnest-money");
    let events = [
        (
            as_(LISTING_AGENT, "listing_agent"),
            Event::PaymentInitiated(trustfold_core::event::PaymentInitiated {
                tenant: TenantId::from_bytes([0x7e; 16]),
                policy: trustfold_core::event::EmbeddedPolicy::new(p.clone()),
                policy_hash: p.hash(),
                amount: usd("5000.00"),
                description: "12 Elm St\0\u{1b}[31m\u{202e}".into(),
                initiator: pid(LISTING_AGENT),
                initiator_roles: vec![Role::new("listing_agent"); 2],
                initiator_name: "Lee\u{7}\u{85}".into(),
            }),
        ),
        (
            as_(LISTING_AGENT, "listing_agent"),
            Event::ParticipantInvited(trustfold_core::event::ParticipantInvited {
                party: pid(ESCROW),
                roles: vec![Role::new("escrow_holder"), Role::new("escrow_holder")],
                name: "Esme\u{1b}\u{2067}\u{202e}worcsE\u{2069}\u{0}".into(),
                email: Some("esme\n@example.com".into()),
            }),
        ),
        (
            as_(ESCROW, "escrow_holder"),
            Event::ParticipantJoined(trustfold_core::event::ParticipantJoined {
                party: pid(ESCROW),
            }),
        ),
    ];
    let mut envelopes = Vec::new();
    let mut sealed: Vec<SealedEvent> = Vec::new();
    for (i, (actor, event)) in events.into_iter().enumerate() {
        let env = Envelope {
            prev: sealed.last().map_or(Hash::ZERO, |s| s.hash),
            stream,
            seq: i as u64 + 1,
            id: EventId::from_bytes([0x10 + i as u8; 16]),
            schema_version: event.event_type().current_version(),
            at,
            actor,
            causation: None,
            correlation: None,
            event,
        };
        sealed.push(env.seal());
        envelopes.push(env);
    }
    let history = trustfold_core::history::write(&sealed);
    // Each event parses back to the same envelope and the same bytes.
    for (env, s) in envelopes.iter().zip(&sealed) {
        let back = Envelope::from_json(&s.body).expect("parses");
        assert_eq!(&back, env);
        assert_eq!(back.canonical_json(), s.body, "byte for byte");
    }
    let head = SignedHead::sign(stream, 3, sealed[2].hash, &scenarios::KEY_SECRET);
    let state =
        verify_and_replay(&history, Some(&head), Some(&scenarios::public_key())).expect("folds");
    assert_eq!(state.head, sealed[2].hash);
    assert_eq!(
        state.to_json(),
        replay(&history).expect("replays").to_json()
    );
    let escrow = &state.participants[&pid(ESCROW)];
    assert_eq!(escrow.roles, vec![Role::new("escrow_holder"); 2]);
    assert_eq!(escrow.name, "Esme\u{1b}\u{2067}\u{202e}worcsE\u{2069}\u{0}");
    assert_eq!(escrow.email.as_deref(), Some("esme\n@example.com"));
    assert!(escrow.joined);
    let initiator = &state.participants[&pid(LISTING_AGENT)];
    assert_eq!(initiator.roles, vec![Role::new("listing_agent"); 2]);
    assert_eq!(initiator.name, "Lee\u{7}\u{85}");
    // The same invitation as a new command is refused.
    let ctx = Context {
        command_id: CommandId::from_bytes([9; 16]),
        actor: as_(LISTING_AGENT, "listing_agent"),
        now: at,
        correlation: None,
    };
    let again = |roles: &[&str], name: &str| {
        handle(Some(&state), &invite_cmd(BUYER, roles, name, None), &ctx)
            .map(|_| ())
            .unwrap_err()
            .code()
    };
    assert_eq!(again(&["buyer", "buyer"], "Bea"), "duplicate_role");
    assert_eq!(again(&["buyer"], "Bea\u{1b}"), "invalid_text");
    let ok = handle(
        Some(&state),
        &invite_cmd(BUYER, &["buyer"], "Bea", None),
        &ctx,
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn events_after_the_signed_head_are_refused() {
    // Anyone can extend a hash chain (the hashes are public arithmetic): a history is
    // verified only when the signed head covers its last event.
    let h = good_history();
    let records = trustfold_core::history::parse(&h).expect("parse");
    let n = records.len() as u64;
    let state = replay(&h).expect("replays");
    let key = scenarios::public_key();
    let at = |seq: u64| {
        let hash = records[seq as usize - 1].hash;
        trustfold_core::history::SignedHead::sign(state.payment, seq, hash, &scenarios::KEY_SECRET)
    };
    let ok = verify_and_replay(&h, Some(&at(n)), Some(&key)).expect("signed to the end");
    assert_eq!(ok.version, n);
    let e = verify_and_replay(&h, Some(&at(n - 1)), Some(&key)).unwrap_err();
    assert_eq!((e.code(), e.seq()), ("chain_broken", Some(n)), "{e}");
    assert!(e.to_string().contains("not signed by the server"), "{e}");
    let e = verify_and_replay(&h, Some(&at(1)), Some(&key)).unwrap_err();
    assert_eq!((e.code(), e.seq()), ("chain_broken", Some(2)), "{e}");
}

/// `history` with the event at `seq` changed by `edit` and the chain sealed again from
/// there: a forger holding no key can do this much (and a server holding the key can
/// also sign the result), so only the fold's own rules stand between it and a client.
fn forged(history: &[u8], seq: u64, edit: impl FnOnce(&mut Envelope)) -> Vec<u8> {
    let records = trustfold_core::history::parse(history).expect("parse");
    let mut edit = Some(edit);
    let mut sealed: Vec<SealedEvent> = Vec::new();
    for r in records {
        let mut env = r.envelope().expect("envelope");
        env.prev = sealed.last().map_or(Hash::ZERO, |s| s.hash);
        if env.seq == seq {
            if let Some(f) = edit.take() {
                f(&mut env);
            }
        }
        sealed.push(env.seal());
    }
    assert!(edit.is_none(), "no event at seq {seq}");
    trustfold_core::history::write(&sealed)
}

/// The seq of the first event of type `name`.
fn seq_of(history: &[u8], name: &str) -> u64 {
    trustfold_core::history::parse(history)
        .expect("parse")
        .iter()
        .map(|r| r.envelope().expect("envelope"))
        .find(|e| e.event_type().name() == name)
        .map(|e| e.seq)
        .unwrap_or_else(|| panic!("no {name}"))
}

fn refused_at(history: &[u8], seq: u64, needle: &str) {
    let e = replay(history).unwrap_err();
    assert_eq!((e.code(), e.seq()), ("invalid_history", Some(seq)), "{e}");
    assert!(e.to_string().contains(needle), "{needle:?} in {e}");
}

#[test]
fn a_forged_history_breaking_the_policy_does_not_fold() {
    let h = good_history();
    let stranger = PartyId::from_bytes([0x66; 16]);
    let request = seq_of(&h, "ReleaseRequested");
    // A release to someone who is not a payee (hash recomputed, as a forger would).
    let to_stranger = forged(&h, request, |env| {
        if let Event::ReleaseRequested(e) = &mut env.event {
            e.allocations[0].party = stranger;
            e.allocations_hash = trustfold_core::event::allocations_hash(&e.allocations);
        }
    });
    refused_at(
        &to_stranger,
        request,
        "not a participant holding a payee role",
    );
    // Asked for by a stranger acting as escrow holder.
    let by_stranger = forged(&h, request, |env| env.actor.party = Some(stranger));
    refused_at(&by_stranger, request, "acting is not a participant");
    // By the buyer claiming the escrow holder's role.
    let by_buyer = forged(&h, request, |env| env.actor.party = Some(pid(BUYER)));
    refused_at(&by_buyer, request, "does not hold role `escrow_holder`");
    // A payout sent by a role the policy does not let disburse.
    let submitted = seq_of(&h, "DisbursementSubmitted");
    let by_seller = forged(&h, submitted, |env| env.actor = as_(SELLER, "seller"));
    refused_at(
        &by_seller,
        submitted,
        "may not record DisbursementSubmitted",
    );
    // Funding beyond the payment, or on a rail the policy does not take.
    let funding = seq_of(&h, "FundingSubmitted");
    let huge = forged(&h, funding, |env| {
        if let Event::FundingSubmitted(e) = &mut env.event {
            e.amount = usd("999999999.00");
        }
    });
    refused_at(&huge, funding, "remains to be funded");
    let card = forged(&h, funding, |env| {
        if let Event::FundingSubmitted(e) = &mut env.event {
            e.rail = Rail::Card;
        }
    });
    refused_at(&card, funding, "not one the policy accepts");
    // The unedited history folds (the edits, not the re-sealing, are refused).
    assert!(replay(&forged(&h, request, |_| {})).is_ok());
}

#[test]
fn a_forged_fee_does_not_fold() {
    let h = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/vectors/mp_buyer_confirms.history.json"),
    )
    .expect("vector");
    let fee = seq_of(&h, "FeeAssessed");
    let bigger = forged(&h, fee, |env| {
        if let Event::FeeAssessed(e) = &mut env.event {
            e.amount = e.amount.checked_add(&e.amount).expect("double");
        }
    });
    refused_at(&bigger, fee, "is not the policy's");
    let invented = forged(&h, fee, |env| {
        if let Event::FeeAssessed(e) = &mut env.event {
            e.fee = "surprise_fee".into();
        }
    });
    refused_at(&invented, fee, "not in the policy");
    assert!(replay(&forged(&h, fee, |_| {})).is_ok());
    // A fixed part charged again after a settled release already paid it.
    let h = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/vectors/ms_two_of_three.history.json"),
    )
    .expect("vector");
    let second = trustfold_core::history::parse(&h)
        .expect("parse")
        .iter()
        .map(|r| r.envelope().expect("envelope"))
        .filter(|e| e.event_type().name() == "FeeAssessed")
        .nth(1)
        .map(|e| e.seq)
        .expect("a second fee");
    let again = forged(&h, second, |env| {
        if let Event::FeeAssessed(e) = &mut env.event {
            e.amount = e.amount.checked_add(&usd("25.00")).expect("add");
        }
    });
    refused_at(&again, second, "is not the policy's");
    assert!(replay(&forged(&h, second, |_| {})).is_ok());
}

/// A history written before an event's meaning changed keeps folding as it did: the
/// fold reads the stored schema version (`FundingReturned` v1 returned the whole
/// funding, `DisbursementFailed` v1 covered no shortfall).
#[test]
fn histories_of_earlier_versions_fold_as_they_did() {
    let ctx = |s: &PaymentState, actor: Actor| Context {
        command_id: CommandId::from_bytes([0x5a; 16]),
        actor,
        now: s.updated_at,
        correlation: None,
    };
    // A partial return recorded as v1: the whole funding counts as returned, and the
    // payer may fund the whole amount again (what the code of the time allowed).
    let mut s = scenarios::earnest(95).expect("earnest");
    s.run(
        as_(BUYER, "buyer"),
        Command::SubmitFunding {
            amount: usd("5000.00"),
            rail: Rail::Wire,
            rail_ref: "wire-1".into(),
        },
    )
    .expect("fund");
    s.notice("wire-1", RailOutcome::Settled { amount: None })
        .expect("settled");
    s.notice(
        "wire-1",
        RailOutcome::Returned {
            code: "R01".into(),
            reason: "insufficient funds".into(),
            amount: Some(usd("2000.00")),
        },
    )
    .expect("partial return");
    let h = s.d.history();
    let v1 = first_event_with(
        &before_v2(&h),
        "\"type\":\"FundingReturned\",\"v\":2",
        "\"type\":\"FundingReturned\",\"v\":1",
    );
    let old = replay(&v1).expect("a v1 partial return folds");
    let a = &old.funding.attempts[0];
    assert_eq!(a.status, trustfold_core::state::FundingStatus::Returned);
    assert_eq!(a.returned, None);
    assert_eq!(old.funded_total(), usd("0.00"));
    let again = Command::SubmitFunding {
        amount: usd("5000.00"),
        rail: Rail::Wire,
        rail_ref: "wire-2".into(),
    };
    assert!(handle(Some(&old), &again, &ctx(&old, as_(BUYER, "buyer"))).is_ok());
    // The same history as v2 keeps the rest: only the difference is still owed.
    let new = replay(&h).expect("v2");
    assert_eq!(new.funded_total(), usd("3000.00"));
    let e = handle(Some(&new), &again, &ctx(&new, as_(BUYER, "buyer"))).unwrap_err();
    assert_eq!(e.code(), "overfunding", "{e}");

    // A payout that failed after a return, recorded as v1: the shortfall stays open and
    // the money in escrow (a write-off followed in such histories), as then.
    let mut s = scenarios::earnest_held(96).expect("held");
    let escrow = || as_(ESCROW, "escrow_holder");
    s.run(
        escrow(),
        Command::RequestRelease {
            request: scenarios::rid(1),
            allocations: vec![Allocation {
                party: pid(SELLER),
                amount: usd("5000.00"),
            }],
        },
    )
    .expect("request");
    for (party, role) in [(BUYER, "buyer"), (SELLER, "seller")] {
        let hash = s.state().requests[&scenarios::rid(1)].allocations_hash;
        s.run(
            as_(party, role),
            Command::Approve {
                request: scenarios::rid(1),
                allocations_hash: hash,
            },
        )
        .expect("approve");
    }
    s.run(
        escrow(),
        Command::SubmitDisbursement {
            request: scenarios::rid(1),
            rail: Rail::Wire,
            rail_ref: "out-1".into(),
        },
    )
    .expect("submit");
    s.notice(
        "wire-1",
        RailOutcome::Returned {
            code: "R01".into(),
            reason: "insufficient funds".into(),
            amount: None,
        },
    )
    .expect("return");
    s.notice(
        "out-1",
        RailOutcome::Failed {
            code: "account_closed".into(),
            reason: "closed".into(),
        },
    )
    .expect("payout failed");
    let h = s.d.history();
    let loss = |st: &PaymentState| {
        st.ledger
            .balance(&trustfold_core::ledger::Account::LossReturns)
            .posted
    };
    assert_eq!(loss(&replay(&h).expect("v2")), usd("0.00"), "v2 covers it");
    let v1 = first_event_with(
        &before_v2(&h),
        "\"type\":\"DisbursementFailed\",\"v\":2",
        "\"type\":\"DisbursementFailed\",\"v\":1",
    );
    let old = replay(&v1).expect("a v1 failure folds");
    assert_eq!(loss(&old), usd("-5000.00"));
    let write_off = Command::WriteOffShortfall {
        reason: "uncollectable".into(),
    };
    assert!(handle(Some(&old), &write_off, &ctx(&old, escrow())).is_ok());

    // A payout sent back during a shortfall, recorded as v2 (also in a payment opened
    // with v2): the money back in escrow left the shortfall open, as then.
    let h = scenarios::em_late_return_payout_reversed()
        .expect("vector")
        .history;
    let at = trustfold_core::history::parse(&h)
        .expect("parse")
        .iter()
        .map(|r| r.envelope().expect("envelope"))
        .find(|e| e.event_type().name() == "ReversalRecorded")
        .expect("a reversal")
        .seq;
    let new = trustfold_core::fold::replay_at(&h, at).expect("v3");
    assert_eq!(loss(&new), usd("0.00"), "v3 covers it");
    let v2 = first_event_with(
        &h,
        "\"type\":\"ReversalRecorded\",\"v\":3",
        "\"type\":\"ReversalRecorded\",\"v\":2",
    );
    assert_ne!(v2, h);
    let old = trustfold_core::fold::replay_at(&v2, at).expect("a v2 reversal folds");
    assert_eq!(loss(&old), usd("-5000.00"));
    assert_eq!(
        old.ledger
            .balance(&trustfold_core::ledger::Account::Escrow)
            .posted,
        usd("5000.00")
    );
    assert_eq!(old.status, Status::Shortfall);
}

/// `history` with `edit` applied to every event's bytes and the chain sealed again.
fn each_event_with(history: &[u8], edit: impl Fn(&str) -> String) -> Vec<u8> {
    let mut sealed: Vec<SealedEvent> = Vec::new();
    for r in trustfold_core::history::parse(history).expect("parse") {
        let mut body = edit(r.event.get());
        let prev = sealed.last().map_or(Hash::ZERO, |s| s.hash).to_string();
        let old_prev = body[9..73].to_string();
        body = body.replacen(&old_prev, &prev, 1);
        let hash = Hash::of(body.as_bytes());
        sealed.push(SealedEvent {
            hash,
            body: body.into_bytes(),
        });
    }
    trustfold_core::history::write(&sealed)
}

#[test]
fn a_leg_reversed_twice_folds_only_as_written_before_v2() {
    // Cancelled and refunded; the payer's bank sent the refund back (one reversal).
    let s = scenarios::refund_reversed(97).expect("reversed");
    // The same reversal again, as a history can hold it (a second event).
    let mut envs: Vec<Envelope> = trustfold_core::history::parse(&s.d.history())
        .expect("parse")
        .iter()
        .map(|r| r.envelope().expect("envelope"))
        .collect();
    let mut again = envs.last().expect("events").clone();
    again.seq += 1;
    again.id = EventId::from_bytes([0x77; 16]);
    envs.push(again);
    let mut sealed: Vec<SealedEvent> = Vec::new();
    for mut env in envs {
        env.prev = sealed.last().map_or(Hash::ZERO, |x| x.hash);
        sealed.push(env.seal());
    }
    let twice = trustfold_core::history::write(&sealed);
    let n = sealed.len() as u64;
    refused_at(&twice, n, "already reversed");
    // Written as v1 (before a leg was reversed once), it folds as it did then.
    let v1 = each_event_with(&before_v2(&twice), |e| {
        e.replace(
            "\"type\":\"ReversalRecorded\",\"v\":3",
            "\"type\":\"ReversalRecorded\",\"v\":1",
        )
    });
    assert_ne!(v1, before_v2(&twice));
    let old = replay(&v1).expect("v1 folds");
    assert_eq!(
        old.ledger
            .balance(&trustfold_core::ledger::Account::Escrow)
            .posted,
        usd("10000.00"),
        "the money moved twice, as then"
    );
}

/// A short settlement is less than its transfer, more than nothing, in the payment's
/// currency: a history that says otherwise was not written by the rules.
#[test]
fn a_forged_short_settlement_does_not_fold() {
    let h = scenarios::em_wire_short_settled().expect("vector").history;
    let seq = trustfold_core::history::parse(&h)
        .expect("parse")
        .iter()
        .map(|r| r.envelope().expect("envelope"))
        .find(|e| e.event_type().name() == "FundingSettled")
        .expect("a settlement")
        .seq;
    let settled =
        "\"rail_ref\":\"wire-1\",\"amount\":{\"amount\":\"4975.00\",\"currency\":\"USD\"}";
    assert!(replay(&h).is_ok());
    for (to, needle) in [
        ("5000.00", "is not short of the transfer of 5000.00 USD"),
        ("5000.01", "is not short of the transfer of 5000.00 USD"),
        ("0.00", "is not short"),
    ] {
        let forged = first_event_with(&h, settled, &settled.replace("4975.00", to));
        assert_ne!(forged, h);
        refused_at(&forged, seq, needle);
    }
    let euro = first_event_with(&h, settled, &settled.replace("USD", "EUR"));
    let e = replay(&euro).unwrap_err();
    assert_eq!(e.seq(), Some(seq), "{e}");
}
