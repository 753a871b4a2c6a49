//! Forgeries around the rules of payments opened with `PaymentInitiated` v2, from the
//! second review of the fold's checks: each chains, and could be signed by a server
//! holding the key; the fold must refuse it (and does, event by event, on a retry too).

mod support;

use support::forge::{auto_released, forge_each, opened_as_v1, rewrite};
use support::scenarios::{as_, earnest_held, pid, rid, usd, Sim, BUYER, ESCROW, SELLER};
use trustfold_core::event::{
    refund_hash, Event, FundingReturned, RefundAuthorized, RefundRequested, RequestCancelled,
};
use trustfold_core::fold::{self, replay};
use trustfold_core::history;
use trustfold_core::prelude::*;
use trustfold_core::state::RequestStatus;

/// A caller that folds in place and tries the refused event again (as a second sync
/// would) is refused again: what the cancellation left owed is kept.
#[test]
fn a_refused_event_is_refused_again_on_a_retry() {
    let s = auto_released(90);
    let (request, _) = s.state().open_request().expect("request");
    let held = s
        .state()
        .ledger
        .balance(&trustfold_core::ledger::Account::Escrow)
        .posted;
    let c = Some(uuid::Uuid::from_bytes([0xcc; 16]));
    let c2 = Some(uuid::Uuid::from_bytes([0xdd; 16]));
    let platform = as_(10, "platform");
    // The buyer calls the seller's automatic release off with no dispute, and the
    // platform refunds everything to the buyer instead.
    let forged = forge_each(
        &s,
        vec![
            (
                as_(BUYER, "buyer"),
                c,
                Event::RequestCancelled(RequestCancelled {
                    request,
                    reason: "x".into(),
                }),
            ),
            (
                platform.clone(),
                c2,
                Event::RefundRequested(RefundRequested {
                    request: rid(99),
                    amount: held,
                    allocations_hash: refund_hash(&held),
                }),
            ),
            (
                platform,
                c2,
                Event::RefundAuthorized(RefundAuthorized { request: rid(99) }),
            ),
        ],
    );
    let e = replay(&forged).expect_err("whole replay refuses");
    assert_eq!(e.seq(), Some(s.state().version + 2), "{e}");
    let records = history::parse(&forged).expect("records");
    let mut st = fold::start(&records[0].envelope().expect("env"), records[0].hash).expect("start");
    let last_good = s.state().version as usize + 1;
    for r in &records[1..last_good] {
        fold::apply(&mut st, &r.envelope().expect("env"), r.hash).expect("folds");
    }
    let wrong = &records[last_good];
    for attempt in 0..3 {
        let e = fold::apply(&mut st, &wrong.envelope().expect("env"), wrong.hash)
            .expect_err("refused every time");
        assert!(
            e.to_string().contains("without opening a dispute"),
            "attempt {attempt}: {e}"
        );
    }
    assert!(fold::check_complete(&st).is_err(), "still owed at the head");
}

fn resolved_in_part() -> Sim {
    let mut s = earnest_held(91).expect("held");
    s.run(
        as_(BUYER, "buyer"),
        Command::OpenDispute {
            dispute: rid(9),
            reason: "no".into(),
        },
    )
    .expect("dispute");
    s.run(
        as_(ESCROW, "escrow_holder"),
        Command::ResolveDispute {
            dispute: rid(9),
            outcome: DisputeOutcome::Release,
            request: Some(rid(2)),
            allocations: vec![Allocation {
                party: pid(SELLER),
                amount: usd("1000.00"),
            }],
            amount: None,
            note: "part".into(),
        },
    )
    .expect("resolve");
    s
}

/// The rail calls a mandated request off only as `decide` does: for a return out of
/// escrow larger than what is available besides the request.
#[test]
fn the_rail_cancels_a_mandated_request_only_for_a_return_it_cannot_cover() {
    let s = resolved_in_part();
    let (request, r) = s.state().open_request().expect("req");
    assert!(r.mandate.is_some());
    println!(
        "escrow available besides the resolution: {}",
        s.state().escrow_available()
    );
    // Decide: a 10.00 return leaves the resolution standing.
    let mut honest = resolved_in_part();
    honest
        .notice(
            "wire-1",
            RailOutcome::Returned {
                code: "R01".into(),
                reason: "x".into(),
                amount: Some(usd("10.00")),
            },
        )
        .expect("return");
    println!(
        "decide after a 10.00 return: open request {:?}",
        honest.state().open_request().map(|(id, r)| (id, r.status))
    );
    // The fold: the same return, with the resolution cancelled by the rail.
    let leg = s.state().funding.attempts[0].leg;
    let c = Some(uuid::Uuid::from_bytes([0xcc; 16]));
    let forged = forge_each(
        &s,
        vec![
            (
                Actor::rail(),
                c,
                Event::RequestCancelled(RequestCancelled {
                    request,
                    reason: "funds returned by the payer's bank".into(),
                }),
            ),
            (
                Actor::rail(),
                c,
                Event::FundingReturned(FundingReturned {
                    leg,
                    rail_ref: "wire-1".into(),
                    return_code: "R01".into(),
                    reason: "x".into(),
                    amount: usd("10.00"),
                }),
            ),
        ],
    );
    let e = replay(&forged).expect_err("a 10.00 return does not call the release off");
    assert!(
        e.to_string().contains("more than was available besides it"),
        "{e}"
    );
    assert_eq!(
        honest.state().open_request().map(|(_, r)| r.status),
        Some(RequestStatus::Authorized),
        "decide keeps it"
    );
}

/// Old versions of events carry looser effects; a v2 payment holds none of them.
#[test]
fn a_v2_payment_holds_no_superseded_event_version() {
    let s = support::scenarios::refund_reversed(97).expect("reversed");
    let rev = s.d.envelopes().last().unwrap().clone();
    let forged = forge_each(
        &s,
        vec![(rev.actor.clone(), rev.causation, rev.event.clone())],
    );
    let v1 = rewrite(&forged, |i, t| {
        if i == 0 {
            assert!(t.contains(r#""type":"PaymentInitiated","v":2"#));
        }
        t.replace(
            r#""type":"ReversalRecorded","v":3"#,
            r#""type":"ReversalRecorded","v":1"#,
        )
    });
    assert_ne!(v1, forged);
    let e = replay(&v1).expect_err("a v1 reversal in a v2 payment");
    assert!(
        e.to_string().contains("ReversalRecorded v1 is older"),
        "{e}"
    );
    let e = replay(&forged).expect_err("at v3 the second reversal of a leg is refused");
    assert!(e.to_string().contains("already reversed"), "{e}");
    // A v2 reversal (what a server not yet upgraded writes) is not superseded: it
    // folds in a v2 payment, and refuses the second reversal alike.
    let v2 = rewrite(&forged, |_, t| {
        t.replace(
            r#""type":"ReversalRecorded","v":3"#,
            r#""type":"ReversalRecorded","v":2"#,
        )
    });
    assert_ne!(v2, forged);
    let e = replay(&v2).expect_err("at v2 the second reversal of a leg is refused");
    assert!(e.to_string().contains("already reversed"), "{e}");
}

/// Rewriting the opening as v1 turns v2's checks off only for a payment opened before
/// v2 came: a later one is refused at seq 1.
#[test]
fn an_opening_rewritten_as_v1_is_refused_when_dated_after_v2() {
    let s = auto_released(92);
    let (request, _) = s.state().open_request().expect("request");
    let c = Some(uuid::Uuid::from_bytes([0xcc; 16]));
    let forged = forge_each(
        &s,
        vec![(
            as_(BUYER, "buyer"),
            c,
            Event::RequestCancelled(RequestCancelled {
                request,
                reason: "x".into(),
            }),
        )],
    );
    replay(&forged).expect_err("v2 refuses");
    let v1 = rewrite(&forged, |i, t| if i == 0 { opened_as_v1(t) } else { t });
    // Dated as the scenario runs (2026-11-02): a payment of before v2 folds as such.
    assert!(replay(&v1).is_ok());
    // The same a month later, after v2 came: refused at seq 1.
    // (`rewrite` seals each event again, which writes the current version: say v1.)
    let december = rewrite(&v1, |i, t| {
        let t = t.replace(r#""at":"2026-11-"#, r#""at":"2026-12-"#);
        if i == 0 {
            opened_as_v1(t)
        } else {
            t
        }
    });
    let e = replay(&december).expect_err("a v1 opening after v2 came");
    assert_eq!(e.seq(), Some(1), "{e}");
    assert!(
        e.to_string()
            .contains("PaymentInitiated v1 dated 2026-12-02"),
        "{e}"
    );
    let honest = rewrite(&forged, |_, t| {
        t.replace(r#""at":"2026-11-"#, r#""at":"2026-12-"#)
    });
    let e = replay(&honest).expect_err("as v2 the cancellation is refused");
    assert!(e.to_string().contains("without opening a dispute"), "{e}");
}

/// A reversal dated from `fold::V3_REVERSALS_FROM` covers an open shortfall first,
/// whatever version it was written with (a signer cannot escape the cover by writing
/// v2 or v1; a server not yet upgraded is not refused).
#[test]
fn a_reversal_dated_from_the_v3_release_covers_a_shortfall_as_v3() {
    let h = support::scenarios::em_late_return_payout_reversed()
        .expect("vector")
        .history;
    let envs: Vec<_> = history::parse(&h)
        .expect("parse")
        .iter()
        .map(|r| r.envelope().expect("envelope"))
        .collect();
    let at = envs
        .iter()
        .position(|e| e.event_type().name() == "ReversalRecorded")
        .expect("a reversal");
    let seq = envs[at].seq;
    let when = format!(r#""at":"{}""#, envs[at].at);
    let loss = |bytes: &[u8]| {
        fold::replay_at(bytes, seq)
            .expect("folds")
            .ledger
            .balance(&trustfold_core::ledger::Account::LossReturns)
            .posted
    };
    for v in ["3", "2", "1"] {
        let edited = |dated: bool| {
            rewrite(&h, |i, t| match i {
                // A v1 reversal only in a payment opened with v1, as before v2 came.
                0 if v == "1" => opened_as_v1(t),
                i if i == at => {
                    let t = t.replace(
                        r#""type":"ReversalRecorded","v":3"#,
                        &format!(r#""type":"ReversalRecorded","v":{v}"#),
                    );
                    if dated {
                        t.replace(&when, r#""at":"2026-12-01T00:00:00Z""#)
                    } else {
                        t
                    }
                }
                _ => t,
            })
        };
        let later = edited(true);
        assert_ne!(later, h);
        assert_eq!(
            loss(&later),
            usd("0.00"),
            "v{v} dated from the release covers it"
        );
        let before = edited(false);
        let want = if v == "3" { "0.00" } else { "-5000.00" };
        assert_eq!(loss(&before), usd(want), "v{v} dated before");
    }
}
