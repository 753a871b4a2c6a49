//! Policies that parse and pass the structural rules but would leave a payment stuck or
//! make it fail later: `Policy::validate_new` refuses them when they are published or
//! open a payment. Each case starts from an example policy, changes one thing, and
//! checks the code, the field and the message; `Policy::validate`, which judges the
//! policy embedded in a stored history, still accepts every one of them, so payments
//! opened before these rules keep folding.

mod support;

use serde_json::{json, Value};
use support::scenarios::{as_, pid, usd, CLIENT, PLATFORM};
use trustfold_core::decide::handle;
use trustfold_core::driver::Driver;
use trustfold_core::event::{EmbeddedPolicy, PaymentInitiated};
use trustfold_core::fold::verify_and_replay;
use trustfold_core::prelude::*;

const EXAMPLES: [&str; 3] = ["earnest-money", "marketplace", "milestone-escrow"];

fn example(name: &str) -> Value {
    let path = format!(
        "{}/../examples/policies/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).expect("policy file");
    serde_json::from_str(&text).expect("policy json")
}

/// `doc` is refused as a new policy with `invalid_policy` at `field`, in a message
/// that names the field and says `needle`; as a stored policy it is still valid.
fn refused(doc: &Value, field: &str, needle: &str) {
    let e = match Policy::from_json(&doc.to_string()) {
        Ok(_) => panic!("expected `{field}` to be refused"),
        Err(e) => e,
    };
    assert_eq!(
        (e.code(), e.field()),
        ("invalid_policy", Some(field)),
        "{e}"
    );
    let message = e.to_string();
    assert!(
        message.contains(&format!("`{field}`")),
        "the message names the field: {message}"
    );
    assert!(message.contains(needle), "{needle:?} in: {message}");
    let stored: Policy = serde_json::from_value(doc.clone()).expect("parses");
    assert_eq!(
        stored.validate(),
        Ok(()),
        "a stored policy like it still folds"
    );
}

fn accepted(doc: &Value) {
    if let Err(e) = Policy::from_json(&doc.to_string()) {
        panic!("expected the policy to be accepted: {e}");
    }
}

#[test]
fn the_example_policies_are_accepted() {
    for name in EXAMPLES {
        let p = Policy::from_json(&example(name).to_string()).expect(name);
        assert_eq!(p.validate_new(), Ok(()), "{name}");
        assert_eq!(p.validate(), Ok(()), "{name}");
    }
}

// ---------------------------------------------------------------- ways out

#[test]
fn someone_must_be_able_to_disburse() {
    for name in EXAMPLES {
        let mut p = example(name);
        p["permissions"]["disburse"] = json!([]);
        refused(
            &p,
            "permissions.disburse",
            "held funds could never be paid out",
        );
    }
}

#[test]
fn someone_must_be_able_to_release_unless_the_policy_releases_by_itself() {
    let mut p = example("earnest-money");
    p["permissions"]["request_release"] = json!([]);
    refused(
        &p,
        "permissions.request_release",
        "or set release.auto_release_after_hours",
    );
    // The marketplace releases automatically 72 h after funds are held.
    let mut p = example("marketplace");
    p["permissions"]["request_release"] = json!([]);
    accepted(&p);
    p["release"]
        .as_object_mut()
        .expect("release")
        .remove("auto_release_after_hours");
    refused(
        &p,
        "permissions.request_release",
        "held funds could never reach the payees",
    );
}

#[test]
fn someone_must_be_able_to_refund_or_cancel() {
    let mut p = example("earnest-money");
    p["permissions"]["request_refund"] = json!([]);
    // Refunds need the buyer's and seller's approval: a payment holding money is then
    // not cancelled (refund_approvals_required), and nobody could ask for a refund.
    refused(
        &p,
        "permissions.request_refund",
        "or set refund.approvals to none",
    );
    p["refund"]["approvals"] = json!("none");
    accepted(&p); // cancelling refunds what is held
    p["permissions"]["cancel"] = json!([]);
    refused(
        &p,
        "permissions.request_refund",
        "here or in permissions.cancel",
    );
    let mut p = example("earnest-money");
    p["permissions"]["cancel"] = json!([]);
    accepted(&p);
}

#[test]
fn a_dispute_that_may_be_opened_may_be_resolved() {
    let mut p = example("earnest-money");
    p["permissions"]["resolve"] = json!([]);
    refused(
        &p,
        "permissions.resolve",
        "`buyer` may open a dispute (permissions.dispute)",
    );
    // Nobody may open one: nobody needs to resolve one.
    p["permissions"]["dispute"] = json!([]);
    accepted(&p);
}

#[test]
fn the_roles_that_move_money_can_be_held() {
    // The milestone policy's `platform` is optional: it can disburse because the client
    // (required) may invite it.
    let mut p = example("milestone-escrow");
    accepted(&p);
    p["permissions"]["invite"] = json!([]);
    refused(
        &p,
        "permissions.disburse",
        "role `platform` is optional and no role may invite",
    );
    // A required role is always held (the payment waits in Draft until it is).
    p["roles"]["platform"]["required"] = true.into();
    accepted(&p);
    // Each list is checked: a refund only an unheld role may request, too.
    let mut p = example("milestone-escrow");
    p["permissions"]["invite"] = json!([]);
    p["permissions"]["disburse"] = json!(["arbiter"]);
    p["permissions"]["request_refund"] = json!(["platform"]);
    refused(&p, "permissions.request_refund", "role `platform`");
    p["permissions"]["request_refund"] = json!(["client"]);
    p["permissions"]["resolve"] = json!(["platform"]);
    refused(&p, "permissions.resolve", "make `platform` required");
    // An optional role is fine once some role may invite…
    p["permissions"]["invite"] = json!(["client"]);
    p["permissions"]["resolve"] = json!(["arbiter"]);
    p["permissions"]["request_refund"] = json!(["platform"]);
    accepted(&p);
    // …but not where money waits for it: nobody may join a resolving or approving role
    // once money is held (role_locked), so left unheld it would keep the money.
    p["permissions"]["resolve"] = json!(["platform"]);
    refused(&p, "permissions.resolve", "make a resolving role required");
    p["permissions"]["resolve"] = json!(["platform", "arbiter"]);
    accepted(&p);
    p["release"]["approvals"] = json!({"n_of": {"n": 2, "roles": ["client", "platform"]}});
    refused(
        &p,
        "release.approvals",
        "n_of needs 2 approvals but only 1 of its roles are required",
    );
    p["release"]["approvals"] =
        json!({"n_of": {"n": 2, "roles": ["client", "inspector", "platform"]}});
    accepted(&p);
    let mut p = example("earnest-money");
    p["refund"]["approvals"] = json!({"all_of": ["buyer", "buyer_agent"]});
    refused(&p, "refund.approvals", "role `buyer_agent` is optional");
}

// ---------------------------------------------------------------- approvals and views

#[test]
fn an_approver_cannot_hide_requests() {
    let mut p = example("earnest-money");
    p["visibility"]["seller"]["hide"] = json!(["bank_details", "requests"]);
    refused(&p, "visibility.seller", "cannot hide `requests`");
    // An n_of release approver (the inspector) and a refund-only approver (the
    // contractor) alike.
    for role in ["inspector", "contractor"] {
        let mut p = example("milestone-escrow");
        p["visibility"][role] = json!({"hide": ["requests"]});
        refused(
            &p,
            &format!("visibility.{role}"),
            "request id and allocations hash it approves",
        );
    }
    // A role that neither approves nor agrees may (the earnest-money lender does).
    let p = example("earnest-money");
    assert!(p["visibility"]["lender"]["hide"]
        .as_array()
        .expect("hide")
        .contains(&json!("requests")));
    accepted(&p);
    // Agreeing binds only `terms_hash`, which hiding requests keeps: a role that
    // agrees but does not approve may hide requests (not amounts).
    let mut p = example("earnest-money");
    p["agreement"] = json!(["buyer", "seller", "brokerage"]);
    p["visibility"]["brokerage"]["hide"] = json!(["bank_details", "contacts", "requests"]);
    accepted(&p);
    p["visibility"]["brokerage"]["hide"] = json!(["amounts"]);
    refused(&p, "visibility.brokerage", "cannot hide `amounts`");
}

// ---------------------------------------------------------------- automatic release

#[test]
fn an_automatic_release_pays_no_payer() {
    let mut p = example("marketplace");
    p["payee_roles"] = json!(["seller", "buyer"]);
    refused(
        &p,
        "release.auto_release_after_hours",
        "names the payer role `buyer`",
    );
    // Without the automatic release, releasing to the buyer is a choice people make
    // (the earnest-money policy's payees include its payer).
    p["release"]
        .as_object_mut()
        .expect("release")
        .remove("auto_release_after_hours");
    accepted(&p);
}

// ---------------------------------------------------------------- limits

#[test]
fn a_release_cap_without_partial_releases_covers_every_payment() {
    // The marketplace releases everything at once and sets no payment maximum.
    let mut p = example("marketplace");
    p["release"]["max_per_release"] = "500.00".into();
    refused(&p, "release.max_per_release", "no payment maximum is set");
    p["limits"]["max_payment"] = "1000.00".into();
    refused(
        &p,
        "release.max_per_release",
        "payments may reach 1000.00 (limits.max_payment)",
    );
    // Both maxima apply: the smaller one is the largest payment.
    p["funding"]["amount"] = json!({"max": "800.00"});
    refused(
        &p,
        "release.max_per_release",
        "payments may reach 800.00 (funding.amount.max)",
    );
    p["funding"]["amount"] = json!({"max": "500.00"});
    accepted(&p);
    // With partial releases the cap only splits a payment into several releases.
    let mut p = example("marketplace");
    p["release"]["max_per_release"] = "500.00".into();
    p["release"]["partial"] = true.into();
    accepted(&p);
}

#[test]
fn the_minimum_payment_is_within_the_maximum() {
    let mut p = example("earnest-money");
    p["funding"]["amount"] = json!({"min": "300000.00"});
    refused(
        &p,
        "funding.amount.min",
        "larger than limits.max_payment (250000.00)",
    );
    p["funding"]["amount"] = json!({"min": "250000.00"});
    accepted(&p);
}

#[test]
fn a_funding_deadline_is_at_least_a_day_away() {
    for (name, business) in [("earnest-money", true), ("milestone-escrow", false)] {
        let mut p = example(name);
        p["funding"]["deadline"]["days"] = 0.into();
        assert_eq!(p["funding"]["deadline"]["business_days"], business);
        refused(&p, "funding.deadline.days", "must be 1 or more");
        p["funding"]["deadline"]["days"] = 1.into();
        accepted(&p);
    }
}

#[test]
fn a_deadline_counted_from_agreement_needs_someone_to_agree() {
    // The marketplace asks nobody to agree.
    let mut p = example("marketplace");
    p["funding"]["deadline"] = json!({"anchor": "agreed", "days": 3});
    refused(
        &p,
        "funding.deadline.anchor",
        "the deadline would never be set",
    );
    p["funding"]["deadline"]["anchor"] = "initiated".into();
    accepted(&p);
}

// ---------------------------------------------------------------- fees

#[test]
fn a_fee_goes_to_a_required_role() {
    let mut p = example("milestone-escrow");
    p["fees"][0]["to_role"] = "platform".into();
    refused(&p, "fees[0].to_role", "(fee_recipient_missing)");
    p["roles"]["platform"]["required"] = true.into();
    accepted(&p);
}

fn open(d: &Driver, policy: &Policy, amount: &str, role: &str) -> Command {
    Command::Initiate {
        payment: d.payment(),
        tenant: TenantId::from_bytes([0x7e; 16]),
        policy: Box::new(policy.clone()),
        amount: usd(amount),
        description: String::new(),
        roles: vec![Role::new(role)],
        name: String::new(),
    }
}

#[test]
fn a_payment_is_more_than_the_fixed_fees_its_first_release_owes() {
    // The milestone escrow fee has a fixed part of 25.00.
    let policy = Policy::from_json(&example("milestone-escrow").to_string()).expect("policy");
    for amount in ["25.00", "0.01"] {
        let e = policy.check_payment_amount(&usd(amount)).unwrap_err();
        assert_eq!(e.code(), "below_minimum", "{e}");
        assert!(e.to_string().contains("fixed fees (25.00 USD)"), "{e}");
    }
    assert_eq!(policy.check_payment_amount(&usd("25.01")), Ok(()));
    // Through `Initiate`: refused, nothing written.
    let t0: Timestamp = "2026-11-02T15:00:00Z".parse().expect("time");
    let mut d = Driver::new(PaymentId::from_bytes([0x51; 16]), t0);
    let e = d
        .run(as_(CLIENT, "client"), open(&d, &policy, "20.00", "client"))
        .unwrap_err();
    assert_eq!(e.code(), "below_minimum", "{e}");
    assert!(
        e.to_string()
            .contains("open the payment for more than them"),
        "{e}"
    );
    assert!(d.state().is_err(), "no payment was opened");
    d.run(as_(CLIENT, "client"), open(&d, &policy, "25.01", "client"))
        .expect("opened");
    // Fixed parts of several fees add up.
    let mut p = example("marketplace");
    p["fees"][0]["fixed"] = "10.00".into();
    p["fees"]
        .as_array_mut()
        .expect("fees")
        .push(json!({"name": "listing_fee", "to_role": "platform", "fixed": "15.00"}));
    let policy = Policy::from_json(&p.to_string()).expect("policy");
    let e = policy.check_payment_amount(&usd("25.00")).unwrap_err();
    assert_eq!(e.code(), "below_minimum", "{e}");
    assert!(e.to_string().contains("(25.00 USD)"), "{e}");
    assert_eq!(policy.check_payment_amount(&usd("25.01")), Ok(()));
    // No fixed fee: any positive amount.
    let policy = Policy::from_json(&example("marketplace").to_string()).expect("policy");
    assert_eq!(policy.check_payment_amount(&usd("0.01")), Ok(()));
}

// ---------------------------------------------------------------- stored payments

#[test]
fn a_payment_opened_before_these_rules_still_folds_and_runs() {
    // An automatic release that would pay the payer: refused as a new policy…
    let mut doc = example("marketplace");
    doc["payee_roles"] = json!(["seller", "buyer"]);
    let policy: Policy = serde_json::from_value(doc).expect("parses");
    assert_eq!(policy.validate(), Ok(()));
    let e = policy.validate_new().unwrap_err();
    assert_eq!(e.field(), Some("release.auto_release_after_hours"), "{e}");
    let t0: Timestamp = "2026-11-02T15:00:00Z".parse().expect("time");
    let mut d = Driver::new(PaymentId::from_bytes([0x52; 16]), t0);
    let e = d
        .run(
            as_(PLATFORM, "platform"),
            open(&d, &policy, "120.00", "platform"),
        )
        .unwrap_err();
    assert_eq!(
        (e.code(), e.field()),
        ("invalid_policy", Some("release.auto_release_after_hours"))
    );
    // …but a history that embeds it (opened before the rule) folds, and the payment
    // goes on under the policy it pinned.
    let first = Envelope {
        prev: Hash::ZERO,
        stream: PaymentId::from_bytes([0x53; 16]),
        seq: 1,
        id: EventId::from_bytes([0x54; 16]),
        schema_version: 1,
        at: t0,
        actor: as_(PLATFORM, "platform"),
        causation: None,
        correlation: None,
        event: Event::PaymentInitiated(PaymentInitiated {
            tenant: TenantId::from_bytes([0x7e; 16]),
            policy: EmbeddedPolicy::new(policy.clone()),
            policy_hash: policy.hash(),
            amount: usd("120.00"),
            description: "Order 1044".into(),
            initiator: pid(PLATFORM),
            initiator_roles: vec![Role::new("platform")],
            initiator_name: "Marketplace".into(),
        }),
    };
    let mut sealed = vec![first.seal()];
    let state = verify_and_replay(&trustfold_core::history::write(&sealed), None, None)
        .expect("the stored history folds");
    assert_eq!(state.status, Status::Draft);
    let ctx = Context {
        command_id: CommandId::from_bytes([0x55; 16]),
        actor: as_(PLATFORM, "platform"),
        now: t0.add_hours(1),
        correlation: None,
    };
    let invite = Command::Invite {
        party: pid(support::scenarios::BUYER),
        roles: vec![Role::new("buyer")],
        name: "Bea Buyer".into(),
        email: None,
    };
    let next = handle(Some(&state), &invite, &ctx).expect("the payment goes on");
    sealed.extend(next.sealed);
    let state = verify_and_replay(&trustfold_core::history::write(&sealed), None, None)
        .expect("the longer history folds");
    assert_eq!(state.version, 2);
    assert_eq!(*state.policy_doc, policy);
}

// ------------------------------------------------- roles that must see or stay neutral

#[test]
fn a_disbursing_role_cannot_hide_requests() {
    let mut p = example("earnest-money");
    p["visibility"]["escrow_holder"] = json!({"events": "all", "hide": ["requests"]});
    refused(
        &p,
        "visibility.escrow_holder",
        "submits disbursements (permissions.disburse)",
    );
    p["visibility"]["escrow_holder"] = json!({"events": "all", "hide": ["contacts"]});
    accepted(&p);
}

#[test]
fn no_role_resolves_disputes_about_money_paid_to_itself() {
    let mut p = example("earnest-money");
    p["permissions"]["resolve"] = json!(["seller"]);
    refused(
        &p,
        "permissions.resolve",
        "role `seller` is the payer or a payee",
    );
    p["permissions"]["resolve"] = json!(["buyer"]);
    refused(
        &p,
        "permissions.resolve",
        "role `buyer` is the payer or a payee",
    );
    p["permissions"]["resolve"] = json!(["escrow_holder"]);
    accepted(&p);
}

#[test]
fn amount_bounds_fit_every_currency() {
    for (field, path) in [
        ("funding.amount.min", &["funding", "amount", "min"][..]),
        ("funding.amount.max", &["funding", "amount", "max"][..]),
        ("limits.max_payment", &["limits", "max_payment"][..]),
    ] {
        let mut p = example("earnest-money");
        let mut at = &mut p;
        for k in &path[..path.len() - 1] {
            at = &mut at[*k];
        }
        at[path[path.len() - 1]] = json!("100.001");
        refused(&p, field, "100.001 has more decimals than USD allows (2)");
    }
    let mut p = example("milestone-escrow");
    p["currencies"] = json!(["USD"]);
    p["release"]["max_per_release"] = json!("25000.005");
    refused(
        &p,
        "release.max_per_release",
        "more decimals than USD allows",
    );
    // A yen policy: whole units only.
    let mut p = example("marketplace");
    p["currencies"] = json!(["JPY"]);
    p["limits"]["max_payment"] = json!("5000.50");
    p["fees"] = json!([]);
    refused(
        &p,
        "limits.max_payment",
        "more decimals than JPY allows (0)",
    );
}

#[test]
fn all_of_lists_a_role_no_more_times_than_it_can_have_parties() {
    // Both co-sellers must approve: fine while a payment may have two sellers.
    let mut p = example("earnest-money");
    p["release"]["approvals"] = json!({"all_of": ["buyer", "seller", "seller"]});
    accepted(&p);
    p["roles"]["seller"]["max"] = json!(1);
    refused(
        &p,
        "release.approvals.all_of",
        "`seller` is listed 2 times, each needing a party of its own, but at most 1",
    );
}

/// `funding.holidays`: dates, ascending, each once, bounded; refused by `validate`
/// too (the field is newer than every stored policy).
#[test]
fn holidays_are_dates_in_order() {
    let with = |days: Value| {
        let mut doc = example("earnest-money");
        doc["funding"]["holidays"] = days;
        doc
    };
    accepted(&with(json!(["2026-11-26", "2026-12-25"])));
    for (days, field, needle) in [
        (
            json!(["2026-12-25", "2026-11-26"]),
            "funding.holidays[1]",
            "2026-11-26 comes after 2026-12-25",
        ),
        (
            json!(["2026-12-25", "2026-12-25"]),
            "funding.holidays[1]",
            "2026-12-25 repeats 2026-12-25",
        ),
    ] {
        let e = Policy::from_json(&with(days).to_string()).unwrap_err();
        assert_eq!(
            (e.code(), e.field()),
            ("invalid_policy", Some(field)),
            "{e}"
        );
        assert!(e.to_string().contains(needle), "{e}");
        assert!(e.to_string().contains("ascending order, each once"), "{e}");
    }
    let many: Vec<String> = (0..1501)
        .map(|i| format!("{:04}-01-01", 2000 + i))
        .collect();
    let e = Policy::from_json(&with(json!(many)).to_string()).unwrap_err();
    assert_eq!(e.field(), Some("funding.holidays"), "{e}");
    for bad in ["2026-11-31", "2026-1-05", "26 November 2026"] {
        let e = Policy::from_json(&with(json!([bad])).to_string()).unwrap_err();
        assert_eq!(e.code(), "invalid_date", "{bad}: {e}");
        assert!(
            e.to_string().contains(bad) && e.to_string().contains("YYYY-MM-DD"),
            "{e}"
        );
        let stored = serde_json::from_value::<Policy>(with(json!([bad]))).unwrap_err();
        assert!(
            stored.to_string().contains("invalid_date"),
            "serde agrees: {stored}"
        );
    }
    // Written back canonically: only when there are any, after `allow_partial`.
    let p = Policy::from_json(&with(json!(["2026-11-26"])).to_string()).unwrap();
    let text = String::from_utf8(p.canonical_json()).unwrap();
    assert!(
        text.contains(r#""allow_partial":false,"holidays":["2026-11-26"]}"#),
        "{text}"
    );
    let plain = Policy::from_json(&example("earnest-money").to_string()).unwrap();
    assert!(!String::from_utf8(plain.canonical_json())
        .unwrap()
        .contains("holidays"));
}

/// An `all_of` list is bounded (each entry is matched to a party of its own by a search
/// as deep as the list): a longer one is refused when stored policies are checked too,
/// so no history can make a verifier recurse without bound.
#[test]
fn all_of_lists_are_bounded() {
    let mut doc = example("earnest-money");
    doc["roles"]["buyer"]["max"] = Value::Null;
    doc["release"]["approvals"] = json!({"all_of": vec!["buyer"; 65]});
    let e = Policy::from_json(&doc.to_string()).expect_err("65 named approvals");
    assert_eq!(
        (e.code(), e.field()),
        ("invalid_policy", Some("release.approvals.all_of")),
        "{e}"
    );
    assert!(e.to_string().contains("at most 64"), "{e}");
    let stored: Policy = serde_json::from_value(doc.clone()).expect("parses");
    assert!(stored.validate().is_err(), "refused as a stored policy too");
    doc["release"]["approvals"] = json!({"all_of": vec!["buyer"; 64]});
    accepted(&doc);
}
