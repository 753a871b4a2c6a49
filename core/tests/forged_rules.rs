//! Histories that chain and could be signed, but record what `decide` refuses: the
//! fold refuses them too (`invalid_history` at the forged event), so a server holding
//! the key cannot make a client accept them. Each forgery is checked against the
//! honest history it starts from, which folds.

mod support;

use support::forge::{auto_released, auto_released_with, forge, forge_at, forge_each};
use support::scenarios::{
    as_, earnest_held, earnest_held_with, pid, policy, refunds_without_approvals, rid, usd, Sim,
    BUYER, BUYER_AGENT, ESCROW, LISTING_AGENT, SELLER,
};
use trustfold_core::event::{
    DisputeOpened, Event, ParticipantInvited, ParticipantRemoved, RequestCancelled,
};
use trustfold_core::fold::{self, replay, replay_at};
use trustfold_core::history;
use trustfold_core::prelude::*;

fn refused_at(history: &[u8], seq: u64, needle: &str) {
    let e = replay(history).expect_err("the forged history must not fold");
    assert_eq!((e.code(), e.seq()), ("invalid_history", Some(seq)), "{e}");
    assert!(e.to_string().contains(needle), "{needle:?} in: {e}");
}

#[test]
fn a_party_cannot_call_off_a_mandated_request_without_a_dispute() {
    let s = auto_released(70);
    let request = s.state().open_request().map(|(id, _)| id).expect("request");
    let v = s.state().version;
    let cancel = || {
        Event::RequestCancelled(RequestCancelled {
            request,
            reason: "changed my mind".into(),
        })
    };
    let buyer = || as_(BUYER, "buyer");
    // Alone: the history ends inside the "command".
    refused_at(
        &forge(&s, buyer(), vec![cancel()]),
        v + 1,
        "without opening a dispute",
    );
    // …though the state at that event, a view of the past, still folds.
    assert!(replay_at(&forge(&s, buyer(), vec![cancel()]), v + 1).is_ok());
    // Followed by anything but the dispute.
    let invite = Event::ParticipantInvited(ParticipantInvited {
        party: pid(99),
        roles: vec![Role::new("seller")],
        name: "Stand In".into(),
        email: None,
    });
    refused_at(
        &forge(&s, buyer(), vec![cancel(), invite]),
        v + 2,
        "without opening a dispute",
    );
    // By a role that may not dispute (the seller), even with a dispute after it.
    let dispute = || {
        Event::DisputeOpened(DisputeOpened {
            dispute: rid(9),
            reason: "not as described".into(),
        })
    };
    refused_at(
        &forge(&s, as_(SELLER, "seller"), vec![cancel(), dispute()]),
        v + 1,
        "only be cancelled by opening a dispute",
    );
    // The dispute opened by someone else, or with no command to tie the two.
    let mut p = policy("marketplace");
    p.permissions.dispute.push(Role::new("seller"));
    let s2 = auto_released_with(73, p);
    let request2 = s2
        .state()
        .open_request()
        .map(|(id, _)| id)
        .expect("request");
    let cancel2 = Event::RequestCancelled(RequestCancelled {
        request: request2,
        reason: "x".into(),
    });
    let c = Some(uuid::Uuid::from_bytes([0xcc; 16]));
    refused_at(
        &forge_each(
            &s2,
            vec![
                (buyer(), c, cancel2.clone()),
                (as_(SELLER, "seller"), c, dispute()),
            ],
        ),
        s2.state().version + 2,
        "without opening a dispute",
    );
    refused_at(
        &forge_each(
            &s,
            vec![(buyer(), None, cancel()), (buyer(), None, dispute())],
        ),
        v + 1,
        "only be cancelled by opening a dispute",
    );
    // The rail calls it off only with its return of the funds.
    refused_at(
        &forge(&s, Actor::rail(), vec![cancel()]),
        v + 1,
        "without returning, out of escrow",
    );
    // The buyer's dispute in the same command is the honest way: it folds.
    let honest = forge(&s, buyer(), vec![cancel(), dispute()]);
    let st = replay(&honest).expect("a dispute calls the automatic release off");
    assert_eq!(st.status, Status::Disputed);
}

#[test]
fn a_payment_is_opened_by_its_initiator_in_its_own_role() {
    let honest = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/em_happy_wire.history.json"
    ))
    .expect("vector");
    let agent =
        r#""actor":{"party":"a0000000-0000-4000-8000-000000000001","role":"listing_agent"}"#;
    let opening = |from: &str, to: &str| {
        support::forge::rewrite(&honest, |i, t| {
            if i == 0 {
                assert!(t.contains(from), "{from} in the opening");
                t.replacen(from, to, 1)
            } else {
                t
            }
        })
    };
    // The honest opening, re-sealed unchanged, folds.
    assert!(replay(&opening(agent, agent)).is_ok());
    for (to, needle) in [
        (
            r#""actor":{"party":null,"role":"system"}"#,
            "recorded by the platform",
        ),
        (
            r#""actor":{"party":"a0000000-0000-4000-8000-000000000002","role":"listing_agent"}"#,
            "recorded by party a0000000-0000-4000-8000-000000000002",
        ),
        (
            r#""actor":{"party":"a0000000-0000-4000-8000-000000000001","role":"buyer"}"#,
            "not one of the initiator's roles",
        ),
    ] {
        refused_at(&opening(agent, to), 1, needle);
    }
    refused_at(
        &opening(
            r#""initiator_roles":["listing_agent"]"#,
            r#""initiator_roles":["listing_agent","auditor"]"#,
        ),
        1,
        "role `auditor` is not in the embedded policy",
    );
}

/// Folded one event at a time (as the server's cache, the Rust replica and the wasm
/// feed do), a cut history is caught by `check_complete` at the signed head.
#[test]
fn one_event_at_a_time_the_end_is_checked_at_the_head() {
    let s = auto_released(74);
    let request = s.state().open_request().map(|(id, _)| id).expect("request");
    let cut = forge(
        &s,
        as_(BUYER, "buyer"),
        vec![Event::RequestCancelled(RequestCancelled {
            request,
            reason: "x".into(),
        })],
    );
    let records = history::parse(&cut).expect("records");
    let mut st = fold::start(&records[0].envelope().expect("env"), records[0].hash).expect("start");
    for r in &records[1..] {
        fold::apply(&mut st, &r.envelope().expect("env"), r.hash).expect("each event folds");
    }
    let e = fold::check_complete(&st).expect_err("cut inside a command");
    assert_eq!(e.code(), "invalid_history", "{e}");
    assert!(fold::check_complete(s.state()).is_ok());
}

/// Payments opened before these rules (`PaymentInitiated` v1, written by the rules of
/// that time) fold as they did: the checks apply from v2.
#[test]
fn payments_opened_before_the_rules_still_fold() {
    for (name, status) in [
        ("v1_cancel_auto_release", Status::Held),
        ("v1_invite_seller_while_held", Status::Held),
    ] {
        let path = format!(
            "{}/tests/data/{name}.history.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = std::fs::read(&path).expect("history");
        let st = replay(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(st.status, status, "{name}");
        assert!(String::from_utf8_lossy(&bytes).contains(r#""type":"PaymentInitiated","v":1"#));
    }
}

#[test]
fn decide_calls_a_mandated_request_off_only_with_a_dispute() {
    let mut s = auto_released(71);
    let request = s.state().open_request().map(|(id, _)| id).expect("request");
    s.rejects(
        as_(SELLER, "seller"),
        Command::CancelRequest {
            request,
            reason: "no".into(),
        },
        "mandated_request",
    );
    s.run(
        as_(BUYER, "buyer"),
        Command::OpenDispute {
            dispute: rid(9),
            reason: "not as described".into(),
        },
    )
    .expect("dispute");
    let st = replay(&s.d.history()).expect("folds");
    assert_eq!(st.status, Status::Disputed);
}

#[test]
fn no_stand_in_while_money_is_held() {
    let s = earnest_held(72).expect("held");
    let v = s.state().version;
    let agent = || as_(LISTING_AGENT, "listing_agent");
    // A second seller (a payee, who would approve and be paid) invited while held.
    refused_at(
        &forge(
            &s,
            agent(),
            vec![Event::ParticipantInvited(ParticipantInvited {
                party: pid(98),
                roles: vec![Role::new("seller")],
                name: "Stand In".into(),
                email: None,
            })],
        ),
        v + 1,
        "role `seller`",
    );
    // The seller who agreed removed while held.
    refused_at(
        &forge(
            &s,
            agent(),
            vec![Event::ParticipantRemoved(ParticipantRemoved {
                party: pid(SELLER),
                reason: "replaced".into(),
            })],
        ),
        v + 1,
        "while money is in escrow",
    );
    // A brokerage (no say over the money) may still be invited: it folds.
    let brokerage = forge(
        &s,
        agent(),
        vec![Event::ParticipantInvited(ParticipantInvited {
            party: pid(97),
            roles: vec![Role::new("brokerage")],
            name: "Acme Realty".into(),
            email: None,
        })],
    );
    replay(&brokerage).expect("a role without money power is not locked");
}

/// Replayed whole, unverified, one event at a time and at every seq: the same state.
fn folds_every_way(s: &Sim) {
    let h = s.d.history();
    let st = replay(&h).expect("replay");
    assert_eq!(st.to_json(), s.state().to_json());
    fold::replay_unverified(&h).expect("unverified");
    let envs = s.d.envelopes();
    let sealed = s.d.sealed();
    let mut x = fold::start(&envs[0], sealed[0].hash).expect("ok");
    for (e, se) in envs.iter().zip(sealed).skip(1) {
        fold::apply(&mut x, e, se.hash).expect("ok");
    }
    assert_eq!(x.to_json(), st.to_json());
    for seq in 1..=st.version {
        fold::replay_at(&h, seq).expect("replay_at");
    }
}

/// Every dispute role of earnest-money opens a dispute over a dispute's resolution
/// (mandated, authorized) and over a cancellation's refund; then the arbiter resolves
/// and everything is paid out. Each history folds every way.
#[test]
fn honest_disputes_over_mandated_requests_fold() {
    for (i, (who, role)) in [
        (BUYER, "buyer"),
        (SELLER, "seller"),
        (BUYER_AGENT, "buyer_agent"),
        (LISTING_AGENT, "listing_agent"),
    ]
    .into_iter()
    .enumerate()
    {
        // A dispute's resolution, disputed again.
        let mut s = earnest_held(100 + i as u8).expect("ok");
        let open = |s: &mut Sim, d: u8| {
            s.run(
                as_(who, role),
                Command::OpenDispute {
                    dispute: rid(d),
                    reason: "no".into(),
                },
            )
        };
        // The escrow holder resolves dispute `d` by resuming the payment.
        let resume = |s: &mut Sim, d: u8| {
            s.run(
                as_(ESCROW, "escrow_holder"),
                Command::ResolveDispute {
                    dispute: rid(d),
                    outcome: DisputeOutcome::Resume,
                    request: None,
                    allocations: vec![],
                    amount: None,
                    note: "resume".into(),
                },
            )
            .expect("resumed")
        };
        open(&mut s, 9).expect("ok");
        s.run(
            as_(ESCROW, "escrow_holder"),
            Command::ResolveDispute {
                dispute: rid(9),
                outcome: DisputeOutcome::Release,
                request: Some(rid(2)),
                allocations: vec![Allocation {
                    party: pid(SELLER),
                    amount: usd("5000.00"),
                }],
                amount: None,
                note: "release".into(),
            },
        )
        .expect("ok");
        assert!(s.state().open_request().expect("ok").1.mandate.is_some());
        open(&mut s, 10).expect("ok");
        assert_eq!(s.status(), Status::Disputed);
        folds_every_way(&s);
        resume(&mut s, 10);
        folds_every_way(&s);

        // A cancellation's refund, disputed.
        let mut s = earnest_held_with(110 + i as u8, refunds_without_approvals()).expect("ok");
        s.run(
            as_(LISTING_AGENT, "listing_agent"),
            Command::Cancel {
                reason: "deal off".into(),
                refund_request: Some(rid(3)),
            },
        )
        .expect("ok");
        assert!(s.state().open_request().expect("ok").1.mandate.is_some());
        open(&mut s, 11).expect("ok");
        folds_every_way(&s);
        resume(&mut s, 11);
        // The refund of what is held goes out again, mandated.
        assert!(
            s.state()
                .open_request()
                .is_some_and(|(_, r)| r.mandate.is_some()),
            "{:?}",
            s.status()
        );
        folds_every_way(&s);
    }
}

/// The stand-in rules in decide and the fold agree on the non-money roles: a lender
/// (no say over the money) is still invited, joins and is removed while held.
#[test]
fn non_money_roles_still_change_while_held() {
    let mut s = earnest_held(120).expect("ok");
    s.run(
        as_(LISTING_AGENT, "listing_agent"),
        Command::Invite {
            party: pid(50),
            roles: vec![Role::new("brokerage")],
            name: "B".into(),
            email: None,
        },
    )
    .expect("ok");
    s.run(as_(50, "brokerage"), Command::Join).expect("ok");
    s.run(
        as_(LISTING_AGENT, "listing_agent"),
        Command::Remove {
            party: pid(50),
            reason: "x".into(),
        },
    )
    .expect("ok");
    s.rejects(
        as_(LISTING_AGENT, "listing_agent"),
        Command::Remove {
            party: pid(SELLER),
            reason: "x".into(),
        },
        "role_locked",
    );
    folds_every_way(&s);
}

/// The platform (`rail`, `system`) records rail outcomes and the clock's work, nothing
/// a participant's command records: a history where the clock opens and decides a
/// dispute, or pays out, does not fold (it would release the deposit with nobody's
/// approval).
#[test]
fn the_platform_records_no_participants_work() {
    use trustfold_core::event::{DisbursementSubmitted, DisputeOpened};
    let s = earnest_held(73).expect("held");
    let v = s.state().version;
    refused_at(
        &forge(
            &s,
            Actor::system(),
            vec![Event::DisputeOpened(DisputeOpened {
                dispute: rid(9),
                reason: "the clock disputes".into(),
            })],
        ),
        v + 1,
        "recorded by a participant, not by the platform (`system`)",
    );
    refused_at(
        &forge(
            &s,
            Actor::rail(),
            vec![Event::DisbursementSubmitted(DisbursementSubmitted {
                request: rid(1),
                rail: Rail::Wire,
                rail_ref: "out-9".into(),
            })],
        ),
        v + 1,
        "not by the platform (`rail`)",
    );
}

/// Money moves the fold holds a v2 payment to as `decide` does: no cancellation while
/// money is held under refunds that need approvals (its refund would skip them), no
/// expiry a party records or that neither the deadline nor the attempts called for, no
/// reversal of a funding leg.
#[test]
fn no_way_around_the_refund_approvals() {
    use trustfold_core::event::{PaymentCancelled, PaymentExpired, ReversalRecorded};
    let s = earnest_held(74).expect("held");
    let v = s.state().version;
    refused_at(
        &forge(
            &s,
            as_(LISTING_AGENT, "listing_agent"),
            vec![Event::PaymentCancelled(PaymentCancelled {
                reason: "deal fell through".into(),
            })],
        ),
        v + 1,
        "refund_approvals_required",
    );
    let expired = || {
        vec![Event::PaymentExpired(PaymentExpired {
            reason: "deadline_missed".into(),
        })]
    };
    refused_at(
        &forge(&s, as_(BUYER, "buyer"), expired()),
        v + 1,
        "must come from the rail or the clock",
    );
    refused_at(
        &forge(&s, Actor::system(), expired()),
        v + 1,
        "expires only once",
    );
    // Nor while funding is still clearing (escrow empty): the refund of that money
    // once available would be mandated by the cancellation, skipping the approvals.
    let clearing = ach_clearing(75);
    let cv = clearing.state().version;
    refused_at(
        &forge(
            &clearing,
            as_(LISTING_AGENT, "listing_agent"),
            vec![Event::PaymentCancelled(PaymentCancelled {
                reason: "deal fell through".into(),
            })],
        ),
        cv + 1,
        "funds_in_flight",
    );
    let funding_leg = s
        .state()
        .ledger
        .legs
        .iter()
        .find(|l| l.group.is_none())
        .map(|l| l.id)
        .expect("a funding leg");
    refused_at(
        &forge(
            &s,
            as_(ESCROW, "escrow_holder"),
            vec![Event::ReversalRecorded(ReversalRecorded {
                leg: funding_leg,
                reason: "undo the deposit".into(),
            })],
        ),
        v + 1,
        "not_reversible",
    );
}

/// ACH money becomes good funds only after the policy's business days: a history that
/// makes it available at its settlement (so it could be released before a return can
/// still come) does not fold; at the due time it does.
#[test]
fn good_funds_come_no_earlier_than_the_policy_says() {
    use trustfold_core::event::FundsAvailable;
    let mut s = ach_clearing(76);
    let a = s.state().funding.attempts[0].clone();
    let early = forge(
        &s,
        Actor::system(),
        vec![Event::FundsAvailable(FundsAvailable {
            leg: a.leg,
            amount: a.kept(),
        })],
    );
    refused_at(&early, s.state().version + 1, "is good funds only from");
    // The clock's own tick, once due, folds.
    s.hours(24 * 4);
    s.tick().expect("tick");
    assert_eq!(
        s.state().funding.attempts[0].status,
        trustfold_core::state::FundingStatus::Available
    );
    replay(&s.d.history()).expect("the honest history folds");
}

/// Earnest money whose whole 5,000.00 USD came by ACH and settled: clearing, not yet
/// good funds.
fn ach_clearing(n: u8) -> Sim {
    let mut s = support::scenarios::earnest(n).expect("earnest");
    s.run(
        as_(BUYER, "buyer"),
        Command::SubmitFunding {
            amount: usd("5000.00"),
            rail: Rail::Ach,
            rail_ref: "ach-1".into(),
        },
    )
    .expect("submitted");
    s.notice("ach-1", RailOutcome::Settled { amount: None })
        .expect("settled, clearing");
    s
}

/// The policy's cap per release binds the releases participants ask for in the fold as
/// in `decide`: a history that asks for (or amends to) more does not fold; one within
/// the cap does.
#[test]
fn a_release_stays_within_the_policy_cap() {
    use trustfold_core::event::{allocations_hash, ReleaseAmended, ReleaseRequested};
    let mut p = policy("earnest-money");
    p.release.max_per_release = Some("1000.00".parse().expect("decimal"));
    let mut s = earnest_held_with(77, p).expect("held");
    let v = s.state().version;
    let to_seller = |amount: &str| {
        vec![Allocation {
            party: pid(SELLER),
            amount: usd(amount),
        }]
    };
    let asked = |request: u8, amount: &str| {
        let allocations = to_seller(amount);
        Event::ReleaseRequested(ReleaseRequested {
            request: rid(request),
            allocations_hash: allocations_hash(&allocations),
            allocations,
        })
    };
    let escrow = || as_(ESCROW, "escrow_holder");
    refused_at(
        &forge(&s, escrow(), vec![asked(1, "1000.01")]),
        v + 1,
        "limit_exceeded",
    );
    replay(&forge(&s, escrow(), vec![asked(1, "1000.00")])).expect("within the cap");
    // `decide` asks within the cap; an amendment above it is refused by the fold.
    s.run(
        escrow(),
        Command::RequestRelease {
            request: rid(1),
            allocations: to_seller("1000.00"),
        },
    )
    .expect("within the cap");
    let more = to_seller("2500.00");
    refused_at(
        &forge(
            &s,
            escrow(),
            vec![Event::ReleaseAmended(ReleaseAmended {
                request: rid(1),
                allocations_hash: allocations_hash(&more),
                allocations: more,
            })],
        ),
        s.state().version + 1,
        "limit_exceeded",
    );
}

/// A release is authorized only with the policy's fees assessed as `decide` assesses
/// them: a history that leaves the platform's 10 % out, or the first release's fixed
/// part of a fee, does not fold.
#[test]
fn a_release_carries_every_fee_of_the_policy() {
    use support::scenarios::{market_with, milestones, ms_fund, ms_release, CLIENT, INSPECTOR};
    use trustfold_core::event::FeeAssessed;
    // The events `honest` recorded after version `v`, as (actor, causation, event).
    let recorded_after = |honest: &Sim, v: u64| -> Vec<(Actor, Option<uuid::Uuid>, Event)> {
        honest.d.envelopes()[usize::try_from(v).expect("small")..]
            .iter()
            .map(|e| (e.actor.clone(), e.causation, e.event.clone()))
            .collect()
    };
    let approve = |s: &mut Sim, n: u8, role: &str| {
        let h = s.state().requests[&rid(1)].allocations_hash;
        s.run(
            as_(n, role),
            Command::Approve {
                request: rid(1),
                allocations_hash: h,
            },
        )
        .expect("approved");
    };

    let base = || market_with(79, policy("marketplace")).expect("market");
    let mut honest = base();
    let v = honest.state().version;
    honest
        .run(
            as_(SELLER, "seller"),
            Command::RequestRelease {
                request: rid(1),
                allocations: vec![Allocation {
                    party: pid(SELLER),
                    amount: usd("120.00"),
                }],
            },
        )
        .expect("requested");
    approve(&mut honest, BUYER, "buyer");
    let recorded = recorded_after(&honest, v);
    assert!(
        matches!(recorded[1].2, Event::FeeAssessed(_)),
        "{recorded:?}"
    );
    let s = base();
    replay(&forge_each(&s, recorded.clone())).expect("the honest events fold");
    let mut without = recorded;
    without.remove(1);
    refused_at(&forge_each(&s, without), v + 3, "fee_missing");

    // The escrow fee of the milestone policy: 0.5 % plus 25.00 on the first release.
    let base = || {
        let mut s = milestones(80).expect("milestones");
        ms_fund(&mut s, "wire-1", "30000.00").expect("funded");
        ms_fund(&mut s, "wire-2", "30000.00").expect("funded");
        s
    };
    let mut honest = base();
    let v = honest.state().version;
    ms_release(&mut honest, 1, "10000.00").expect("requested");
    approve(&mut honest, CLIENT, "client");
    approve(&mut honest, INSPECTOR, "inspector");
    let recorded = recorded_after(&honest, v);
    let s = base();
    replay(&forge_each(&s, recorded.clone())).expect("the honest events fold");
    let mut no_fixed = recorded;
    let Event::FeeAssessed(f) = &mut no_fixed[1].2 else {
        panic!("a fee after the request: {no_fixed:?}")
    };
    assert_eq!(f.amount, usd("75.00"), "50 bps of 10,000.00 + 25.00");
    *f = FeeAssessed {
        amount: usd("50.00"),
        ..f.clone()
    };
    let authorized = no_fixed.len() as u64;
    refused_at(
        &forge_each(&s, no_fixed),
        v + authorized,
        "the policy charges 75.00 USD",
    );
}

/// Funding comes as `decide` takes it: the whole remainder where the policy takes no
/// partial funding, after the terms are agreed, and not after a deadline that expires
/// the payment. Histories recording otherwise do not fold.
#[test]
fn funding_comes_as_the_policy_takes_it() {
    use support::scenarios::{earnest_with, Sim};
    use trustfold_core::event::FundingSubmitted;
    use trustfold_core::policy::OnDeadlineMissed;
    let funded = |amount: &str, r: &str| {
        Event::FundingSubmitted(FundingSubmitted {
            leg: trustfold_core::id::LegId::from_bytes([0x1e; 16]),
            amount: usd(amount),
            rail: Rail::Wire,
            rail_ref: r.into(),
        })
    };
    let buyer = || as_(BUYER, "buyer");
    let last_at = |s: &Sim| s.d.envelopes().last().expect("events").at;
    let mut p = policy("earnest-money");
    p.funding.on_deadline_missed = OnDeadlineMissed::Expire;
    let s = earnest_with(81, p).expect("agreed");
    let v = s.state().version;
    let deadline = s.state().funding.deadline.expect("a deadline once agreed");
    // The whole 5,000.00 at once, before the deadline: folds.
    replay(&forge(&s, buyer(), vec![funded("5000.00", "w-1")])).expect("honest");
    refused_at(
        &forge(&s, buyer(), vec![funded("1000.00", "w-1")]),
        v + 1,
        "partial_funding_not_allowed",
    );
    refused_at(
        &forge_at(
            &s,
            deadline.add_hours(1),
            buyer(),
            vec![funded("5000.00", "w-1")],
        ),
        v + 1,
        "deadline_passed",
    );
    assert!(last_at(&s) <= deadline);
    // Before the terms are agreed.
    let mut draft = Sim::new("earnest-money", 82);
    support::scenarios::open_earnest(&mut draft, policy("earnest-money")).expect("opened");
    refused_at(
        &forge(
            &draft,
            as_(LISTING_AGENT, "listing_agent"),
            vec![funded("5000.00", "w-1")],
        ),
        2,
        "not while the payment is Draft (invalid_state)",
    );
}

/// `FundingDeadlineMissed` only once the deadline that holds has passed: a signer
/// cannot miss it early (and expire a payment under an expiring policy).
#[test]
fn a_funding_deadline_is_missed_only_once_it_passed() {
    let s = support::scenarios::earnest(99).expect("awaiting funds");
    let deadline = s.state().funding.deadline.expect("deadline");
    let missed = || {
        vec![trustfold_core::event::Event::FundingDeadlineMissed(
            trustfold_core::event::FundingDeadlineMissed {
                deadline,
                outcome: trustfold_core::event::DeadlineOutcome::Flagged,
            },
        )]
    };
    let early = forge(&s, Actor::system(), missed());
    let e = replay(&early).expect_err("missed before the deadline");
    assert!(e.to_string().contains("only once the deadline"), "{e}");
    let late = forge_at(&s, deadline.add_hours(1), Actor::system(), missed());
    assert!(
        replay(&late)
            .expect("missed after it")
            .funding
            .deadline_missed
    );
}
