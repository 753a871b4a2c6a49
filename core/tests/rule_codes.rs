//! Rule codes reached through real commands: each test builds the smallest state in
//! which `decide` must refuse a command, checks the exact code and that the message
//! names the problem, and that nothing was recorded.

mod support;

use support::scenarios::{
    self, as_, pid, policy, rid, usd, Sim, ARBITER, BUYER, CLIENT, CONTRACTOR, ESCROW, INSPECTOR,
    LISTING_AGENT, PLATFORM, SELLER,
};
use trustfold_core::ledger::Account;
use trustfold_core::prelude::*;
use trustfold_core::state::RequestStatus;

/// Runs `cmd`, which must be refused with `code` and a message containing `needle`;
/// the payment must be exactly as before (no events, same version).
fn refuse(s: &mut Sim, actor: Actor, cmd: Command, code: &str, needle: &str) {
    let version = s.state().version;
    let events = s.d.envelopes().len();
    let before = s.state().to_json();
    let e = match s.d.run(actor, cmd) {
        Ok(ev) => panic!(
            "expected rejection `{code}`, but the command was accepted with {} event(s)",
            ev.len()
        ),
        Err(e) => e,
    };
    assert_eq!(e.code(), code, "{e}");
    assert!(
        matches!(e, Error::Rejected { .. }),
        "a rule rejection: {e:?}"
    );
    let message = e.to_string();
    assert!(
        message.contains(needle),
        "`{code}` message should mention {needle:?}: {message}"
    );
    assert_eq!(s.state().version, version, "a rejection changes nothing");
    assert_eq!(s.d.envelopes().len(), events, "a rejection records nothing");
    assert_eq!(
        s.state().to_json(),
        before,
        "a rejection leaves the state alone"
    );
}

fn ok(s: &mut Sim, actor: Actor, cmd: Command) {
    if let Err(e) = s.run(actor, cmd) {
        panic!("expected the command to be accepted: {} ({e})", e.code());
    }
}

fn settled() -> RailOutcome {
    RailOutcome::Settled { amount: None }
}

fn returned(code: &str, amount: Option<Money>) -> RailOutcome {
    RailOutcome::Returned {
        code: code.into(),
        reason: "returned by the payer's bank".into(),
        amount,
    }
}

fn notice(rail_ref: &str, notice: RailOutcome) -> Command {
    Command::RailNotice {
        rail_ref: rail_ref.into(),
        notice,
    }
}

fn funding(amount: &str, rail: Rail, rail_ref: &str) -> Command {
    Command::SubmitFunding {
        amount: usd(amount),
        rail,
        rail_ref: rail_ref.into(),
    }
}

fn release(req: u8, allocs: &[(u8, &str)]) -> Command {
    Command::RequestRelease {
        request: rid(req),
        allocations: allocs
            .iter()
            .map(|(p, a)| Allocation {
                party: pid(*p),
                amount: usd(a),
            })
            .collect(),
    }
}

fn approval(s: &Sim, req: u8) -> Command {
    Command::Approve {
        request: rid(req),
        allocations_hash: s.state().requests[&rid(req)].allocations_hash,
    }
}

fn disbursement(req: u8, rail_ref: &str) -> Command {
    disbursement_of(rid(req), rail_ref)
}

/// A wire disbursement of `request` (an authorized release or refund).
fn disbursement_of(request: RequestId, rail_ref: &str) -> Command {
    Command::SubmitDisbursement {
        request,
        rail: Rail::Wire,
        rail_ref: rail_ref.into(),
    }
}

fn buyer() -> Actor {
    as_(BUYER, "buyer")
}

fn seller() -> Actor {
    as_(SELLER, "seller")
}

fn escrow() -> Actor {
    as_(ESCROW, "escrow_holder")
}

fn listing_agent() -> Actor {
    as_(LISTING_AGENT, "listing_agent")
}

fn client() -> Actor {
    as_(CLIENT, "client")
}

fn contractor() -> Actor {
    as_(CONTRACTOR, "contractor")
}

/// Earnest money, agreed and awaiting funds (whole 5000.00 USD at once, ACH or wire).
fn earnest(n: u8) -> Sim {
    scenarios::earnest(n).expect("earnest-money scenario")
}

/// Earnest money funded by ACH, settled and made good two business days later.
fn earnest_ach_held(n: u8) -> Sim {
    let mut s = earnest(n);
    ok(&mut s, buyer(), funding("5000.00", Rail::Ach, "ach-1"));
    s.hours(24);
    ok(&mut s, Actor::rail(), notice("ach-1", settled()));
    assert_eq!(s.status(), Status::Funded);
    s.hours(72);
    ok(&mut s, Actor::system(), Command::Tick);
    assert_eq!(s.status(), Status::Held);
    s
}

/// Earnest money held, a release of `amount` to the seller approved by buyer and
/// seller and submitted to the rail as `out-1`.
fn earnest_disbursing(s: &mut Sim, amount: &str) {
    ok(s, escrow(), release(1, &[(SELLER, amount)]));
    let a = approval(s, 1);
    ok(s, buyer(), a);
    let a = approval(s, 1);
    ok(s, seller(), a);
    assert_eq!(s.status(), Status::Disbursing);
    ok(s, escrow(), disbursement(1, "out-1"));
}

/// Milestone escrow (60000.00, partial funding allowed, 10-day deadline that expires,
/// 2-of-3 approvals), agreed and awaiting funds.
fn milestones(n: u8) -> Sim {
    let mut s = Sim::new("milestone-escrow", n);
    let initiate = Command::Initiate {
        payment: s.d.payment(),
        tenant: TenantId::from_bytes([0x80; 16]),
        policy: Box::new(policy("milestone-escrow")),
        amount: usd("60000.00"),
        description: "Kitchen remodel".into(),
        roles: vec![Role::new("client")],
        name: "Cleo Client".into(),
    };
    ok(&mut s, client(), initiate);
    for (n, role, name) in [
        (CONTRACTOR, "contractor", "Cody Contractor"),
        (INSPECTOR, "inspector", "Ines Inspector"),
        (ARBITER, "arbiter", "Ari Arbiter"),
    ] {
        s.invite_join(client(), n, role, name)
            .expect("invite and join");
    }
    s.agree(CLIENT, "client").expect("client agrees");
    s.agree(CONTRACTOR, "contractor")
        .expect("contractor agrees");
    assert_eq!(s.status(), Status::AwaitingFunds);
    assert!(s.state().funding.deadline.is_some());
    s
}

/// Milestone escrow fully funded by wire and held.
fn milestones_held(n: u8) -> Sim {
    let mut s = milestones(n);
    ok(&mut s, client(), funding("60000.00", Rail::Wire, "wire-1"));
    ok(&mut s, Actor::rail(), notice("wire-1", settled()));
    assert_eq!(s.status(), Status::Held);
    s
}

// ---------------------------------------------------------------- funding

#[test]
fn overfunding_more_than_the_payment() {
    let mut s = earnest(101);
    refuse(
        &mut s,
        buyer(),
        funding("5000.01", Rail::Wire, "wire-1"),
        "overfunding",
        "only 5000.00 USD remains",
    );
    // The exact amount is fine.
    ok(&mut s, buyer(), funding("5000.00", Rail::Wire, "wire-1"));
    assert_eq!(s.status(), Status::FundingInFlight);
}

#[test]
fn overfunding_counts_funding_still_in_flight() {
    let mut s = milestones(102);
    ok(&mut s, client(), funding("40000.00", Rail::Wire, "wire-1"));
    // Not settled yet: it still counts against what remains.
    refuse(
        &mut s,
        client(),
        funding("20000.01", Rail::Wire, "wire-2"),
        "overfunding",
        "only 20000.00 USD remains",
    );
    ok(&mut s, client(), funding("20000.00", Rail::Wire, "wire-2"));
}

#[test]
fn partial_funding_not_allowed_by_the_earnest_money_policy() {
    let mut s = earnest(103);
    refuse(
        &mut s,
        buyer(),
        funding("4000.00", Rail::Ach, "ach-1"),
        "partial_funding_not_allowed",
        "whole 5000.00 USD at once",
    );
    // The milestone policy allows the same kind of part payment.
    let mut m = milestones(104);
    ok(&mut m, client(), funding("4000.00", Rail::Wire, "wire-1"));
}

#[test]
fn deadline_passed_when_the_policy_expires_late_funding() {
    let mut s = milestones(105);
    // Nine days after agreement: still in time (10 calendar days).
    s.hours(24 * 9);
    ok(&mut s, client(), funding("10000.00", Rail::Wire, "wire-1"));
    ok(&mut s, Actor::rail(), notice("wire-1", settled()));
    // Two days later the deadline has passed; no tick has expired the payment yet,
    // so only the funding rule stands in the way.
    s.hours(24 * 2);
    assert_eq!(s.status(), Status::AwaitingFunds);
    assert!(!s.state().expired);
    refuse(
        &mut s,
        client(),
        funding("50000.00", Rail::Wire, "wire-2"),
        "deadline_passed",
        "funding deadline",
    );
}

// ---------------------------------------------------------------- cancelling

#[test]
fn funds_in_flight_blocks_cancel_while_funding_is_on_a_rail() {
    let mut s = earnest(106);
    ok(&mut s, buyer(), funding("5000.00", Rail::Ach, "ach-1"));
    assert_eq!(s.status(), Status::FundingInFlight);
    refuse(
        &mut s,
        listing_agent(),
        Command::Cancel {
            reason: "offer withdrawn".into(),
            refund_request: Some(rid(5)),
        },
        "funds_in_flight",
        "funding is on a rail",
    );
}

#[test]
fn funds_not_available_for_a_reversal_out_of_escrow() {
    // (Cancel's own `funds_not_available` is a guard: settled funds still clearing count
    // as funding in progress, so `funds_in_flight` answers first, and a partial return
    // leaves the rest to become good funds.) A payout sent back into escrow, then a new
    // release reserving that money: undoing the first correction would take money the
    // release holds.
    let mut s = scenarios::earnest_held(107).expect("earnest held");
    earnest_disbursing(&mut s, "5000.00");
    ok(&mut s, Actor::rail(), notice("out-1", settled()));
    let payout = s
        .state()
        .ledger
        .legs
        .iter()
        .find(|l| l.to == Account::Payee(pid(SELLER)))
        .map(|l| l.id)
        .expect("payout");
    ok(
        &mut s,
        escrow(),
        Command::RecordReversal {
            leg: payout,
            reason: "beneficiary account closed".into(),
        },
    );
    ok(&mut s, escrow(), release(2, &[(SELLER, "5000.00")]));
    let a = approval(&s, 2);
    ok(&mut s, buyer(), a);
    let a = approval(&s, 2);
    ok(&mut s, seller(), a);
    let back = s
        .state()
        .ledger
        .legs
        .iter()
        .find(|l| l.to == Account::Escrow && l.from == Account::Payee(pid(SELLER)))
        .map(|l| l.id)
        .expect("reversal leg");
    refuse(
        &mut s,
        escrow(),
        Command::RecordReversal {
            leg: back,
            reason: "entered by mistake".into(),
        },
        "funds_not_available",
        "which has 0.00 USD available",
    );
}

#[test]
fn disbursement_in_flight_blocks_cancel() {
    let mut s = scenarios::earnest_held(108).expect("earnest held");
    earnest_disbursing(&mut s, "2000.00");
    refuse(
        &mut s,
        listing_agent(),
        Command::Cancel {
            reason: "deal fell through".into(),
            refund_request: Some(rid(5)),
        },
        "disbursement_in_flight",
        "a disbursement is on a rail",
    );
}

// ---------------------------------------------------------------- disputes

#[test]
fn disbursement_in_flight_blocks_a_dispute_resolution_with_a_new_request() {
    let mut s = scenarios::earnest_held(109).expect("earnest held");
    earnest_disbursing(&mut s, "2000.00");
    ok(
        &mut s,
        buyer(),
        Command::OpenDispute {
            dispute: rid(9),
            reason: "wrong amount".into(),
        },
    );
    assert_eq!(s.status(), Status::Disputed);
    refuse(
        &mut s,
        escrow(),
        Command::ResolveDispute {
            dispute: rid(9),
            outcome: DisputeOutcome::Release,
            request: Some(rid(2)),
            allocations: vec![Allocation {
                party: pid(SELLER),
                amount: usd("3000.00"),
            }],
            amount: None,
            note: "release the rest".into(),
        },
        "disbursement_in_flight",
        "a disbursement is on a rail",
    );
    // Once the rail reports, the same resolution goes through.
    ok(&mut s, Actor::rail(), notice("out-1", settled()));
    ok(
        &mut s,
        escrow(),
        Command::ResolveDispute {
            dispute: rid(9),
            outcome: DisputeOutcome::Release,
            request: Some(rid(2)),
            allocations: vec![Allocation {
                party: pid(SELLER),
                amount: usd("3000.00"),
            }],
            amount: None,
            note: "release the rest".into(),
        },
    );
    assert_eq!(s.status(), Status::Disbursing);
}

// ---------------------------------------------------------------- fees

#[test]
fn fees_exceed_gross_when_payee_borne_fees_outgrow_the_release() {
    // The marketplace policy with a fixed payee-borne fee that, with its 10 %, outgrows
    // the order (an order of no more than the fixed part cannot be opened at all).
    let mut doc: serde_json::Value =
        serde_json::from_str(include_str!("../../examples/policies/marketplace.json"))
            .expect("marketplace policy json");
    doc["fees"][0]["fixed"] = "110.00".into();
    let fee_policy =
        Policy::from_json(&serde_json::to_string(&doc).expect("json")).expect("valid policy");
    let mut s = Sim::new("marketplace", 110);
    let platform = || as_(PLATFORM, "platform");
    let initiate = Command::Initiate {
        payment: s.d.payment(),
        tenant: TenantId::from_bytes([0x7f; 16]),
        policy: Box::new(fee_policy),
        amount: usd("120.00"),
        description: "Order 1044".into(),
        roles: vec![Role::new("platform")],
        name: "Marketplace".into(),
    };
    ok(&mut s, platform(), initiate);
    s.invite_join(platform(), BUYER, "buyer", "Bea Buyer")
        .expect("buyer joins");
    s.invite_join(platform(), SELLER, "seller", "Sol Seller")
        .expect("seller joins");
    ok(&mut s, buyer(), funding("120.00", Rail::Card, "card-1"));
    ok(&mut s, Actor::rail(), notice("card-1", settled()));
    assert_eq!(s.status(), Status::Held);
    // 10 % of 120.00 plus the fixed 110.00, borne by the seller's 120.00. The code is
    // raised by `fold::disbursement_legs`, reached from `decide`'s fee assessment
    // (`assess_fees` -> `disbursement_total`) while the release request is decided.
    refuse(
        &mut s,
        seller(),
        release(1, &[(SELLER, "120.00")]),
        "fees_exceed_gross",
        "fees are larger than the amount released",
    );
    assert!(s.state().requests.is_empty());
}

// ---------------------------------------------------------------- rail notices

#[test]
fn return_exceeds_funding() {
    let mut s = earnest_ach_held(111);
    refuse(
        &mut s,
        Actor::rail(),
        notice("ach-1", returned("R01", Some(usd("5000.01")))),
        "return_exceeds_funding",
        "the transfer brought 5000.00",
    );
    assert_eq!(s.balance(Account::Escrow), "5000.00");
}

#[test]
fn invalid_return_code() {
    let mut s = earnest_ach_held(112);
    for code in ["card_declined", "R1", "r01", "RX1", "R012"] {
        refuse(
            &mut s,
            Actor::rail(),
            notice("ach-1", returned(code, None)),
            "invalid_return_code",
            &format!("`{code}` is not a return code"),
        );
    }
    assert_eq!(s.status(), Status::Held);
}

#[test]
fn not_supported_return_of_a_disbursement() {
    let mut s = scenarios::earnest_held(113).expect("earnest held");
    earnest_disbursing(&mut s, "5000.00");
    refuse(
        &mut s,
        Actor::rail(),
        notice("out-1", returned("R01", None)),
        "not_supported",
        "recorded as reversals",
    );
    // Also once it has settled.
    ok(&mut s, Actor::rail(), notice("out-1", settled()));
    assert_eq!(s.status(), Status::Completed);
    refuse(
        &mut s,
        Actor::rail(),
        notice("out-1", returned("R10", None)),
        "not_supported",
        "recorded as reversals",
    );
}

// ---------------------------------------------------------------- shortfalls

#[test]
fn a_recovery_cannot_take_a_transfers_rail_reference() {
    let mut s = earnest_ach_held(151);
    earnest_disbursing(&mut s, "3000.00");
    ok(&mut s, Actor::rail(), notice("out-1", settled()));
    s.hours(24 * 20);
    ok(
        &mut s,
        Actor::rail(),
        notice("ach-1", returned("R10", None)),
    );
    assert_eq!(s.status(), Status::Shortfall);
    let recovery = |rail_ref: &str| {
        trustfold_core::event::Event::ShortfallRecovered(
            trustfold_core::event::ShortfallRecovered {
                amount: usd("100.00"),
                rail_ref: rail_ref.into(),
            },
        )
    };
    let v = s.state().version;
    // Under a reference of its own, a forged recovery folds (decide would record it)…
    let own = support::forge::forge(&s, escrow(), vec![recovery("recovery-1")]);
    assert!(trustfold_core::fold::replay(&own).is_ok());
    // …under the payout's, it would take over that transfer's later notices.
    let taken = support::forge::forge(&s, escrow(), vec![recovery("out-1")]);
    let e = trustfold_core::fold::replay(&taken).expect_err("a used reference");
    assert_eq!((e.code(), e.seq()), ("invalid_history", Some(v + 1)), "{e}");
    assert!(e.to_string().contains("already used"), "{e}");
    refuse(
        &mut s,
        escrow(),
        Command::RecordShortfallRecovery {
            amount: usd("100.00"),
            rail_ref: "out-1".into(),
        },
        "rail_ref_reused",
        "already used",
    );
}

#[test]
fn exceeds_shortfall() {
    let mut s = earnest_ach_held(114);
    earnest_disbursing(&mut s, "3000.00");
    ok(&mut s, Actor::rail(), notice("out-1", settled()));
    assert_eq!(s.status(), Status::Held);
    s.hours(24 * 20);
    ok(
        &mut s,
        Actor::rail(),
        notice("ach-1", returned("R10", None)),
    );
    assert_eq!(s.status(), Status::Shortfall);
    assert_eq!(s.balance(Account::LossReturns), "-3000.00");
    refuse(
        &mut s,
        escrow(),
        Command::RecordShortfallRecovery {
            amount: usd("3000.01"),
            rail_ref: "recovery-1".into(),
        },
        "exceeds_shortfall",
        "the shortfall is 3000.00",
    );
    ok(
        &mut s,
        escrow(),
        Command::RecordShortfallRecovery {
            amount: usd("3000.00"),
            rail_ref: "recovery-1".into(),
        },
    );
    assert_eq!(s.status(), Status::Recovered);
}

// ---------------------------------------------------------------- approvals

#[test]
fn not_an_approver_for_this_kind_of_request() {
    // The contractor may approve refunds (2 of client, contractor, arbiter) but not
    // releases (2 of client, inspector, arbiter).
    let mut s = milestones_held(115);
    ok(
        &mut s,
        contractor(),
        release(1, &[(CONTRACTOR, "20000.00")]),
    );
    let a = approval(&s, 1);
    refuse(
        &mut s,
        contractor(),
        a,
        "not_an_approver",
        "do not count toward this request's quorum",
    );
    refuse(
        &mut s,
        contractor(),
        Command::Deny {
            request: rid(1),
            reason: "I changed my mind".into(),
        },
        "not_an_approver",
        "do not count toward this request's quorum",
    );
    // And the inspector approves releases but not refunds.
    ok(
        &mut s,
        contractor(),
        Command::CancelRequest {
            request: rid(1),
            reason: "wrong milestone".into(),
        },
    );
    ok(
        &mut s,
        client(),
        Command::RequestRefund {
            request: rid(2),
            amount: Some(usd("1000.00")),
        },
    );
    let a = approval(&s, 2);
    refuse(
        &mut s,
        as_(INSPECTOR, "inspector"),
        a,
        "not_an_approver",
        "do not count toward this request's quorum",
    );
}

// ---------------------------------------------------------------- partial return

#[test]
fn partial_return_takes_only_the_returned_amount_out_of_escrow() {
    let mut s = earnest_ach_held(116);
    s.hours(24);
    ok(
        &mut s,
        Actor::rail(),
        notice("ach-1", returned("R01", Some(usd("2000.00")))),
    );
    assert_eq!(s.balance(Account::Escrow), "3000.00");
    assert_eq!(s.balance(Account::ExternalPayer), "-3000.00");
    assert_eq!(s.balance(Account::Clearing), "0.00");
    assert_eq!(s.balance(Account::LossReturns), "0.00");
    // The attempt keeps its amount and records what came back; the rest still counts.
    let attempt = &s.state().funding.attempts[0];
    assert_eq!(attempt.amount.amount_string(), "5000.00");
    assert_eq!(attempt.returned, Some(usd("2000.00")));
    assert_eq!(attempt.kept(), usd("3000.00"));
    assert_eq!(s.state().funded_total(), usd("3000.00"));
    assert_eq!(s.status(), Status::AwaitingFunds);
    // The same notice again is a duplicate; another return of it contradicts it.
    let v = s.state().version;
    ok(
        &mut s,
        Actor::rail(),
        notice("ach-1", returned("R01", Some(usd("2000.00")))),
    );
    assert_eq!(s.state().version, v, "no event for a duplicate");
    refuse(
        &mut s,
        Actor::rail(),
        notice("ach-1", returned("R01", None)),
        "notice_conflict",
        "already returned 2000.00 USD",
    );
    // The payer makes up the difference (no more: that would overfund).
    refuse(
        &mut s,
        buyer(),
        funding("5000.00", Rail::Wire, "wire-2"),
        "overfunding",
        "only 2000.00 USD remains",
    );
    ok(&mut s, buyer(), funding("2000.00", Rail::Wire, "wire-2"));
    ok(&mut s, Actor::rail(), notice("wire-2", settled()));
    assert_eq!(s.balance(Account::Escrow), "5000.00");
    assert_eq!(s.status(), Status::Held);
}

#[test]
fn partial_return_in_clearing_leaves_the_rest_to_become_good_funds() {
    let mut s = earnest(117);
    ok(&mut s, buyer(), funding("5000.00", Rail::Ach, "ach-1"));
    s.hours(24);
    ok(&mut s, Actor::rail(), notice("ach-1", settled()));
    ok(
        &mut s,
        Actor::rail(),
        notice("ach-1", returned("R01", Some(usd("1000.00")))),
    );
    assert_eq!(s.balance(Account::Clearing), "4000.00");
    s.hours(72);
    ok(&mut s, Actor::system(), Command::Tick);
    assert_eq!(s.balance(Account::Clearing), "0.00");
    assert_eq!(s.balance(Account::Escrow), "4000.00");
    // And it can be refunded: the deal is off.
    ok(
        &mut s,
        escrow(),
        Command::RequestRefund {
            request: rid(5),
            amount: None,
        },
    );
    assert_eq!(s.state().requests[&rid(5)].amount, usd("4000.00"));
    // Refunded with the buyer's and the seller's approval: the deal is over.
    let a = approval(&s, 5);
    ok(&mut s, buyer(), a);
    let a = approval(&s, 5);
    ok(&mut s, seller(), a);
    ok(&mut s, escrow(), disbursement(5, "refund-1"));
    ok(&mut s, Actor::rail(), notice("refund-1", settled()));
    assert_eq!(s.balance(Account::Escrow), "0.00");
    assert_eq!(s.status(), Status::Refunded);
}

// ------------------------------------------------- returns against committed money

/// Held by wire, then a release of everything to the seller approved (authorized, not
/// yet on a rail).
fn earnest_authorized(n: u8) -> Sim {
    let mut s = scenarios::earnest_held(n).expect("earnest held");
    ok(&mut s, escrow(), release(1, &[(SELLER, "5000.00")]));
    let a = approval(&s, 1);
    ok(&mut s, buyer(), a);
    let a = approval(&s, 1);
    ok(&mut s, seller(), a);
    assert_eq!(
        s.state().requests[&rid(1)].status,
        RequestStatus::Authorized
    );
    s
}

#[test]
fn a_return_pulls_back_an_authorized_release_instead_of_paying_it_out() {
    let mut s = earnest_authorized(120);
    ok(
        &mut s,
        Actor::rail(),
        notice("wire-1", returned("R01", None)),
    );
    // The release is cancelled and the return comes out of escrow: no loss, nothing owed.
    assert_eq!(s.state().requests[&rid(1)].status, RequestStatus::Cancelled);
    assert_eq!(s.balance(Account::Escrow), "0.00");
    assert_eq!(s.balance(Account::LossReturns), "0.00");
    assert_eq!(s.balance(Account::ExternalPayer), "0.00");
    assert_ne!(s.status(), Status::Shortfall);
    // The payout can no longer go out.
    let e =
        s.d.run(escrow(), disbursement(1, "out-1"))
            .expect_err("nothing to pay out");
    assert_eq!(e.code(), "no_authorized_request", "{e}");
    assert_eq!(s.balance(Account::Payee(pid(SELLER))), "0.00");
}

#[test]
fn a_return_after_a_cancellation_refunds_the_payer_once() {
    let mut s = scenarios::earnest_held_with(121, scenarios::refunds_without_approvals())
        .expect("earnest held, refunds without approvals");
    ok(
        &mut s,
        listing_agent(),
        Command::Cancel {
            reason: "deal fell through".into(),
            refund_request: Some(rid(5)),
        },
    );
    assert_eq!(
        s.state().requests[&rid(5)].status,
        RequestStatus::Authorized
    );
    ok(
        &mut s,
        Actor::rail(),
        notice("wire-1", returned("R01", None)),
    );
    // The bank gave the money back; the refund that would have sent it again is void.
    assert_eq!(s.state().requests[&rid(5)].status, RequestStatus::Cancelled);
    assert_eq!(s.balance(Account::ExternalPayer), "0.00");
    assert_eq!(s.balance(Account::LossReturns), "0.00");
    assert_eq!(s.balance(Account::Escrow), "0.00");
    assert_eq!(s.status(), Status::Cancelled);
    let e =
        s.d.run(escrow(), disbursement(5, "refund-1"))
            .expect_err("no second refund");
    assert_eq!(e.code(), "payment_terminal", "{e}");
}

#[test]
fn a_return_while_a_release_is_on_a_rail_is_a_shortfall() {
    // Already sent: the payout ends as the rail says and the return is the platform's
    // loss until recovered (as before).
    let mut s = earnest_authorized(122);
    ok(&mut s, escrow(), disbursement(1, "out-1"));
    ok(
        &mut s,
        Actor::rail(),
        notice("wire-1", returned("R01", None)),
    );
    assert_eq!(s.state().requests[&rid(1)].status, RequestStatus::Submitted);
    assert_eq!(s.balance(Account::LossReturns), "-5000.00");
    assert_eq!(s.status(), Status::Shortfall);
}

#[test]
fn a_late_return_reopens_a_closed_payment_as_a_shortfall() {
    // R10 comes up to 60 days later, after the agent closed the file.
    let mut s = earnest_ach_held(123);
    earnest_disbursing(&mut s, "5000.00");
    ok(&mut s, Actor::rail(), notice("out-1", settled()));
    assert_eq!(s.status(), Status::Completed);
    ok(
        &mut s,
        escrow(),
        Command::Close {
            reason: "file closed".into(),
        },
    );
    assert_eq!(s.status(), Status::Closed);
    s.hours(24 * 40);
    ok(
        &mut s,
        Actor::rail(),
        notice("ach-1", returned("R10", None)),
    );
    assert_eq!(s.status(), Status::Shortfall);
    assert_eq!(s.balance(Account::LossReturns), "-5000.00");
    ok(
        &mut s,
        escrow(),
        Command::WriteOffShortfall {
            reason: "unauthorized debit claim".into(),
        },
    );
    assert_eq!(s.balance(Account::LossReturns), "0.00");
    assert_eq!(s.status(), Status::Closed, "closed again once settled");
}

#[test]
fn a_fixed_fee_is_charged_by_the_first_release_that_settles() {
    // 0.5 % + 25.00 fixed, once. Release 1 fails on the rail: release 2 still owes it.
    let mut s = milestones_held(124);
    let inspector = || as_(INSPECTOR, "inspector");
    let arbiter = || as_(ARBITER, "arbiter");
    let fee = |s: &Sim, req: u8| s.state().requests[&rid(req)].fees[0].amount.to_string();
    let approve_and_send = |s: &mut Sim, req: u8, rail_ref: &str| {
        let a = approval(s, req);
        ok(s, client(), a);
        let a = approval(s, req);
        ok(s, inspector(), a);
        ok(s, arbiter(), disbursement(req, rail_ref));
    };
    ok(
        &mut s,
        contractor(),
        release(1, &[(CONTRACTOR, "20000.00")]),
    );
    assert_eq!(fee(&s, 1), "125.00 USD");
    approve_and_send(&mut s, 1, "out-1");
    ok(
        &mut s,
        Actor::rail(),
        notice(
            "out-1",
            RailOutcome::Failed {
                code: "account_closed".into(),
                reason: "beneficiary account closed".into(),
            },
        ),
    );
    assert!(s.state().fixed_fees_charged.is_empty(), "not paid yet");
    ok(
        &mut s,
        contractor(),
        release(2, &[(CONTRACTOR, "20000.00")]),
    );
    assert_eq!(fee(&s, 2), "125.00 USD", "the fixed part is still owed");
    approve_and_send(&mut s, 2, "out-2");
    ok(&mut s, Actor::rail(), notice("out-2", settled()));
    assert_eq!(s.state().fixed_fees_charged, vec!["escrow_fee".to_string()]);
    ok(
        &mut s,
        contractor(),
        release(3, &[(CONTRACTOR, "20000.00")]),
    );
    assert_eq!(fee(&s, 3), "100.00 USD", "charged once");
}

#[test]
fn a_reversal_corrects_disbursements_only_and_takes_nothing_out_of_escrow_while_disputed() {
    let mut s = scenarios::earnest_held(125).expect("earnest held");
    earnest_disbursing(&mut s, "2000.00");
    ok(&mut s, Actor::rail(), notice("out-1", settled()));
    let leg_to = |s: &Sim, to: Account| {
        s.state()
            .ledger
            .legs
            .iter()
            .rev()
            .find(|l| l.to == to)
            .map(|l| l.id)
            .expect("leg")
    };
    let reversal = |leg| Command::RecordReversal {
        leg,
        reason: "correction".into(),
    };
    // Funding is undone by the rail's return, not by hand.
    let funding_leg = leg_to(&s, Account::Clearing);
    refuse(
        &mut s,
        escrow(),
        reversal(funding_leg),
        "not_reversible",
        "funding is undone by the rail's return notice",
    );
    // The payout came back from the seller's bank: back into escrow.
    let payout = leg_to(&s, Account::Payee(pid(SELLER)));
    ok(&mut s, escrow(), reversal(payout));
    assert_eq!(s.balance(Account::Escrow), "5000.00");
    ok(
        &mut s,
        buyer(),
        Command::OpenDispute {
            dispute: rid(9),
            reason: "wrong seller".into(),
        },
    );
    // Undoing that correction would pay the seller again, out of escrow, mid-dispute.
    let back = leg_to(&s, Account::Escrow);
    refuse(
        &mut s,
        escrow(),
        reversal(back),
        "payment_disputed",
        "nothing leaves escrow while disputed",
    );
    assert_eq!(s.balance(Account::Escrow), "5000.00");
}

#[test]
fn a_payout_sent_back_after_completion_is_recorded_as_a_reversal() {
    let completed = |n: u8| {
        let mut s = scenarios::earnest_held(n).expect("earnest held");
        earnest_disbursing(&mut s, "5000.00");
        ok(&mut s, Actor::rail(), notice("out-1", settled()));
        assert_eq!(s.status(), Status::Completed);
        let payout = s
            .state()
            .ledger
            .legs
            .iter()
            .find(|l| l.to == Account::Payee(pid(SELLER)))
            .map(|l| l.id)
            .expect("payout leg");
        let reversal = Command::RecordReversal {
            leg: payout,
            reason: "beneficiary account closed".into(),
        };
        (s, reversal)
    };
    let (mut s, reversal) = completed(126);
    ok(&mut s, escrow(), reversal);
    assert_eq!(s.balance(Account::Escrow), "5000.00");
    assert_eq!(s.status(), Status::Held, "the money is held again");
    // A closed file takes no corrections.
    let (mut s, reversal) = completed(127);
    ok(
        &mut s,
        escrow(),
        Command::Close {
            reason: "file closed".into(),
        },
    );
    refuse(&mut s, escrow(), reversal, "payment_terminal", "Closed");
}

/// Found by `random_commands_milestone_escrow` at 100,000 cases (it reached the
/// shortfall by reversing a funding leg, which `not_reversible` now refuses): a shortfall
/// was written off while a funding was still on its rail, and that funding then settled.
/// A write-off (and a recovery) waits for every pending leg's outcome, and the
/// settlement is then taken.
#[test]
fn a_write_off_waits_for_transfers_in_flight() {
    let mut s = milestones_held(128);
    let inspector = || as_(INSPECTOR, "inspector");
    let arbiter = || as_(ARBITER, "arbiter");
    for (req, out) in [(1, "out-1"), (2, "out-2")] {
        ok(
            &mut s,
            contractor(),
            release(req, &[(CONTRACTOR, "25000.00")]),
        );
        let a = approval(&s, req);
        ok(&mut s, client(), a);
        let a = approval(&s, req);
        ok(&mut s, inspector(), a);
        ok(&mut s, arbiter(), disbursement(req, out));
        if req == 1 {
            ok(&mut s, Actor::rail(), notice(out, settled()));
        }
    }
    // The funding comes back while the second payout is on its rail.
    ok(
        &mut s,
        Actor::rail(),
        notice("wire-1", returned("R10", None)),
    );
    assert_eq!(s.status(), Status::Shortfall);
    let write_off = || Command::WriteOffShortfall {
        reason: "uncollectable".into(),
    };
    refuse(&mut s, arbiter(), write_off(), "transfer_in_flight", "");
    // Nor is a recovery recorded (a payout failing back into escrow covers the
    // shortfall itself: collected again from the payer, it would be collected twice).
    refuse(
        &mut s,
        arbiter(),
        Command::RecordShortfallRecovery {
            amount: usd("1000.00"),
            rail_ref: "recovery-1".into(),
        },
        "transfer_in_flight",
        "record a recovery once the rail has reported its outcome",
    );
    // The payout settles: recorded, although the payment is short.
    ok(&mut s, Actor::rail(), notice("out-2", settled()));
    assert!(s
        .state()
        .ledger
        .legs
        .iter()
        .all(|l| l.status != trustfold_core::ledger::LegStatus::Pending));
    ok(&mut s, arbiter(), write_off());
    assert_eq!(s.status(), Status::WrittenOff);
}

#[test]
fn funds_arriving_after_expiry_are_refunded() {
    // One funding is still on its rail when the others exhaust the attempts: the
    // payment expires, then that funding settles. It must go back, not sit in escrow.
    let mut s = milestones(129);
    ok(&mut s, client(), funding("30000.00", Rail::Wire, "wire-a"));
    let failed = || RailOutcome::Failed {
        code: "R03".into(),
        reason: "no account".into(),
    };
    for (i, r) in ["ach-b", "ach-c", "ach-d"].into_iter().enumerate() {
        ok(&mut s, client(), funding("10000.00", Rail::Ach, r));
        ok(&mut s, Actor::rail(), notice(r, failed()));
        assert_eq!(s.state().funding.failed_attempts, i as u32 + 1);
    }
    assert!(s.state().expired, "attempts exhausted");
    ok(&mut s, Actor::rail(), notice("wire-a", settled()));
    assert_eq!(s.balance(Account::Escrow), "30000.00");
    let (id, refund) = s.state().open_request().expect("a refund of what arrived");
    assert_eq!(refund.amount, usd("30000.00"));
    assert_eq!(refund.status, RequestStatus::Authorized);
    ok(
        &mut s,
        as_(ARBITER, "arbiter"),
        disbursement_of(id, "refund-1"),
    );
    ok(&mut s, Actor::rail(), notice("refund-1", settled()));
    assert_eq!(s.balance(Account::Escrow), "0.00");
    assert_eq!(s.status(), Status::Expired);
}

#[test]
fn funds_arriving_while_an_expiry_refund_is_under_way_follow_it() {
    // Expired with 20000.00 held (refund authorized), while 30000.00 is still on a rail.
    let mut s = milestones(130);
    ok(&mut s, client(), funding("20000.00", Rail::Wire, "wire-a"));
    ok(&mut s, Actor::rail(), notice("wire-a", settled()));
    ok(&mut s, client(), funding("30000.00", Rail::Wire, "wire-b"));
    let failed = || RailOutcome::Failed {
        code: "R03".into(),
        reason: "no account".into(),
    };
    for r in ["ach-c", "ach-d", "ach-e"] {
        ok(&mut s, client(), funding("1000.00", Rail::Ach, r));
        ok(&mut s, Actor::rail(), notice(r, failed()));
    }
    assert!(s.state().expired);
    let (first, refund) = s.state().open_request().expect("expiry refund");
    assert_eq!(refund.amount, usd("20000.00"));
    ok(&mut s, Actor::rail(), notice("wire-b", settled()));
    let arbiter = || as_(ARBITER, "arbiter");
    ok(&mut s, arbiter(), disbursement_of(first, "refund-1"));
    ok(&mut s, Actor::rail(), notice("refund-1", settled()));
    let (second, refund) = s.state().open_request().expect("the late funds' refund");
    assert_ne!(second, first);
    assert_eq!(refund.amount, usd("30000.00"));
    ok(&mut s, arbiter(), disbursement_of(second, "refund-2"));
    ok(&mut s, Actor::rail(), notice("refund-2", settled()));
    assert_eq!(s.balance(Account::Escrow), "0.00");
    assert_eq!(s.balance(Account::ExternalPayer), "0.00");
    assert_eq!(s.status(), Status::Expired);
}

#[test]
fn a_payout_failing_after_a_return_covers_the_shortfall_from_escrow() {
    // The return came while the payout was on its rail (booked as a loss); then the
    // payout failed and the money is back in escrow: it covers the loss, and nothing is
    // left stuck in escrow while the platform absorbs a write-off.
    let mut s = earnest_authorized(131);
    ok(&mut s, escrow(), disbursement(1, "out-1"));
    ok(
        &mut s,
        Actor::rail(),
        notice("wire-1", returned("R01", None)),
    );
    assert_eq!(s.status(), Status::Shortfall);
    ok(
        &mut s,
        Actor::rail(),
        notice(
            "out-1",
            RailOutcome::Failed {
                code: "account_closed".into(),
                reason: "beneficiary account closed".into(),
            },
        ),
    );
    assert_eq!(s.balance(Account::LossReturns), "0.00");
    assert_eq!(s.balance(Account::Escrow), "0.00");
    assert_eq!(s.balance(Account::ExternalPayer), "0.00");
    assert_eq!(s.balance(Account::Payee(pid(SELLER))), "0.00");
    assert_ne!(s.status(), Status::Shortfall);
}

#[test]
fn a_payout_sent_back_during_a_shortfall_covers_it_and_the_rest_is_held() {
    // 5000.00 by ACH, paid out in two releases of 2500.00; then the buyer's bank takes
    // 1000.00 back (a shortfall: nothing is held), and the seller's bank sends the
    // second payout back. 1000.00 of it covers the shortfall; 1500.00 is held again and
    // can be paid out — not 2500.00 (which would pay 1000.00 the account does not have).
    let mut s = earnest_ach_held(133);
    earnest_disbursing(&mut s, "2500.00");
    ok(&mut s, Actor::rail(), notice("out-1", settled()));
    ok(&mut s, escrow(), release(2, &[(SELLER, "2500.00")]));
    let a = approval(&s, 2);
    ok(&mut s, buyer(), a);
    let a = approval(&s, 2);
    ok(&mut s, seller(), a);
    ok(&mut s, escrow(), disbursement(2, "out-2"));
    ok(&mut s, Actor::rail(), notice("out-2", settled()));
    assert_eq!(s.status(), Status::Completed);
    ok(
        &mut s,
        Actor::rail(),
        notice("ach-1", returned("R10", Some(usd("1000.00")))),
    );
    assert_eq!(s.status(), Status::Shortfall);
    assert_eq!(s.balance(Account::LossReturns), "-1000.00");
    let payout = s.state().requests[&rid(2)].legs[0];
    ok(
        &mut s,
        escrow(),
        Command::RecordReversal {
            leg: payout,
            reason: "beneficiary account closed".into(),
        },
    );
    assert_eq!(s.balance(Account::LossReturns), "0.00");
    assert_eq!(s.balance(Account::Escrow), "1500.00");
    assert_eq!(s.balance(Account::Payee(pid(SELLER))), "2500.00");
    assert_eq!(s.status(), Status::Held);
    refuse(
        &mut s,
        escrow(),
        release(3, &[(SELLER, "2500.00")]),
        "insufficient_funds",
        "only 1500.00 USD is available",
    );
    ok(&mut s, escrow(), release(3, &[(SELLER, "1500.00")]));
}

#[test]
fn money_back_after_a_written_off_shortfall_is_held_not_stuck() {
    // Paid out in full; an R10 return 20 days later is written off; then the seller's
    // bank sends the payout back. The money is in escrow again: held (to be paid out or
    // refunded by the policy's rules), not kept under `WrittenOff`, where no command
    // could move it and closing would have hidden it for good.
    let mut s = earnest_ach_held(134);
    earnest_disbursing(&mut s, "5000.00");
    ok(&mut s, Actor::rail(), notice("out-1", settled()));
    s.hours(24 * 20);
    ok(
        &mut s,
        Actor::rail(),
        notice("ach-1", returned("R10", None)),
    );
    assert_eq!(s.status(), Status::Shortfall);
    ok(
        &mut s,
        escrow(),
        Command::WriteOffShortfall {
            reason: "uncollectable".into(),
        },
    );
    assert_eq!(s.status(), Status::WrittenOff);
    let payout = s.state().requests[&rid(1)].legs[0];
    ok(
        &mut s,
        escrow(),
        Command::RecordReversal {
            leg: payout,
            reason: "beneficiary account closed".into(),
        },
    );
    assert_eq!(s.balance(Account::Escrow), "5000.00");
    assert_eq!(s.status(), Status::Held);
    // A history recorded before this rule closed such a payment: it still folds. Dated
    // from the rule's release (`fold::V3_REVERSALS_FROM`), such a close is refused.
    let close = || {
        vec![trustfold_core::event::Event::PaymentClosed(
            trustfold_core::event::PaymentClosed {
                reason: "file closed".into(),
            },
        )]
    };
    assert!(s.state().updated_at < trustfold_core::fold::V3_REVERSALS_FROM);
    let closed = support::forge::forge(&s, escrow(), close());
    assert_eq!(
        trustfold_core::fold::replay(&closed)
            .expect("folds as recorded")
            .status,
        Status::Closed
    );
    let later = support::forge::forge_at(
        &s,
        trustfold_core::fold::V3_REVERSALS_FROM,
        escrow(),
        close(),
    );
    let e = trustfold_core::fold::replay(&later).expect_err("closed with money held");
    assert!(e.to_string().contains("only a finished payment"), "{e}");
    refuse(
        &mut s,
        escrow(),
        Command::Close {
            reason: "file closed".into(),
        },
        "invalid_state",
        "only a finished payment",
    );
    ok(&mut s, escrow(), release(2, &[(SELLER, "5000.00")]));
    assert_eq!(s.status(), Status::AwaitingApprovals);
}

#[test]
fn a_return_after_a_partial_release_awaits_funds_again() {
    // 2000.00 of 5000.00 paid out; then the payer's bank takes the other 3000.00 back.
    // Nothing is held and the payment is 3000.00 short: it awaits funds (it read
    // `Completed` before, and no more could be funded).
    let mut s = scenarios::earnest_held(135).expect("earnest held");
    earnest_disbursing(&mut s, "2000.00");
    ok(&mut s, Actor::rail(), notice("out-1", settled()));
    assert_eq!(s.status(), Status::Held);
    ok(
        &mut s,
        Actor::rail(),
        notice("wire-1", returned("R01", Some(usd("3000.00")))),
    );
    assert_eq!(s.balance(Account::Escrow), "0.00");
    assert_eq!(s.balance(Account::LossReturns), "0.00");
    assert_eq!(s.status(), Status::AwaitingFunds);
    refuse(
        &mut s,
        buyer(),
        funding("5000.00", Rail::Wire, "wire-2"),
        "overfunding",
        "3000.00",
    );
    // The seller is still owed the rest: the roles stay as they are meanwhile.
    refuse(
        &mut s,
        listing_agent(),
        Command::Remove {
            party: pid(SELLER),
            reason: "replaced".into(),
        },
        "role_locked",
        "`seller`",
    );
    ok(&mut s, buyer(), funding("3000.00", Rail::Wire, "wire-2"));
    ok(&mut s, Actor::rail(), notice("wire-2", settled()));
    assert_eq!(s.status(), Status::Held);
    assert_eq!(s.balance(Account::Escrow), "3000.00");
}

#[test]
fn a_payment_never_funded_in_time_keeps_its_deadline_after_a_payout() {
    // Milestones, partly funded (30000.00 of 60000.00); a dispute's release pays
    // 20000.00 out, then the bank takes the other 10000.00 back. Nothing is held and the
    // payment awaits funds; the whole amount was never sent, so its deadline still holds.
    let mut s = milestones(147);
    ok(&mut s, client(), funding("30000.00", Rail::Wire, "wire-1"));
    ok(&mut s, Actor::rail(), notice("wire-1", settled()));
    assert_eq!(s.status(), Status::AwaitingFunds);
    ok(
        &mut s,
        contractor(),
        Command::OpenDispute {
            dispute: rid(9),
            reason: "the client stopped paying".into(),
        },
    );
    ok(
        &mut s,
        as_(ARBITER, "arbiter"),
        Command::ResolveDispute {
            dispute: rid(9),
            outcome: trustfold_core::event::DisputeOutcome::Release,
            request: Some(rid(2)),
            allocations: vec![Allocation {
                party: pid(CONTRACTOR),
                amount: usd("20000.00"),
            }],
            amount: None,
            note: "the first milestone is done".into(),
        },
    );
    ok(
        &mut s,
        as_(ARBITER, "arbiter"),
        Command::SubmitDisbursement {
            request: rid(2),
            rail: Rail::Wire,
            rail_ref: "m1".into(),
        },
    );
    ok(&mut s, Actor::rail(), notice("m1", settled()));
    let left = s.state().ledger.balance(&Account::Escrow).posted;
    ok(
        &mut s,
        Actor::rail(),
        notice("wire-1", returned("R01", Some(left))),
    );
    assert_eq!(s.status(), Status::AwaitingFunds);
    assert!(s.state().paid_out() && !s.state().funded_in_time());
    let deadline = s.state().funding.deadline.expect("deadline");
    assert_eq!(
        trustfold_core::decide::next_tick(s.state()).map(|t| t.unix_millis()),
        Some(deadline.unix_millis() + 1),
        "the deadline still holds"
    );
}

#[test]
fn a_return_while_a_partial_release_is_on_its_rail_awaits_funds() {
    // 2000.00 on its rail; meanwhile the bank takes the other 3000.00 back; then the
    // payout settles. The payment is 3000.00 short with nothing held: it awaits funds.
    let mut s = scenarios::earnest_held(148).expect("earnest held");
    earnest_disbursing(&mut s, "2000.00");
    ok(
        &mut s,
        Actor::rail(),
        notice("wire-1", returned("R01", Some(usd("3000.00")))),
    );
    assert_eq!(s.balance(Account::LossReturns), "0.00");
    ok(&mut s, Actor::rail(), notice("out-1", settled()));
    assert_eq!(s.balance(Account::Escrow), "0.00");
    assert_eq!(s.status(), Status::AwaitingFunds);
    ok(&mut s, buyer(), funding("3000.00", Rail::Wire, "wire-2"));
}

#[test]
fn a_return_before_the_last_payout_leaves_the_payment_completed() {
    // 2000.00 paid out; the bank takes 100.00 back; the 2900.00 left is then released
    // and paid out: the last release took all that was held, `Completed`.
    let mut s = scenarios::earnest_held(146).expect("earnest held");
    earnest_disbursing(&mut s, "2000.00");
    ok(&mut s, Actor::rail(), notice("out-1", settled()));
    ok(
        &mut s,
        Actor::rail(),
        notice("wire-1", returned("R01", Some(usd("100.00")))),
    );
    assert_eq!(s.status(), Status::Held);
    ok(&mut s, escrow(), release(2, &[(SELLER, "2900.00")]));
    let a = approval(&s, 2);
    ok(&mut s, buyer(), a);
    let a = approval(&s, 2);
    ok(&mut s, seller(), a);
    ok(&mut s, escrow(), disbursement(2, "out-2"));
    ok(&mut s, Actor::rail(), notice("out-2", settled()));
    assert_eq!(s.balance(Account::Escrow), "0.00");
    assert_eq!(s.status(), Status::Completed);
}

#[test]
fn a_payment_paid_out_in_part_is_funded_again_past_its_deadline() {
    // Milestones: 20000.00 paid out (and its 125.00 fee); twelve days later, past the
    // 10-day deadline of a policy that expires late funding, the client's bank takes
    // the rest back. The payment awaits funds; the clock neither expires nor flags it
    // (its deadline was for the funding before anything was paid out), and the client
    // funds the rest.
    let mut s = milestones_held(138);
    let arbiter = || as_(ARBITER, "arbiter");
    ok(
        &mut s,
        contractor(),
        Command::RequestRelease {
            request: rid(1),
            allocations: vec![Allocation {
                party: pid(CONTRACTOR),
                amount: usd("20000.00"),
            }],
        },
    );
    for (n, role) in [(CLIENT, "client"), (INSPECTOR, "inspector")] {
        let a = approval(&s, 1);
        ok(&mut s, as_(n, role), a);
    }
    ok(
        &mut s,
        arbiter(),
        Command::SubmitDisbursement {
            request: rid(1),
            rail: Rail::Wire,
            rail_ref: "m1".into(),
        },
    );
    ok(&mut s, Actor::rail(), notice("m1", settled()));
    assert_eq!(s.balance(Account::Escrow), "39875.00");
    s.hours(24 * 12);
    ok(
        &mut s,
        Actor::rail(),
        notice("wire-1", returned("R01", Some(usd("39875.00")))),
    );
    assert_eq!(s.status(), Status::AwaitingFunds);
    assert_eq!(trustfold_core::decide::next_tick(s.state()), None);
    let version = s.state().version;
    ok(&mut s, Actor::system(), Command::Tick);
    assert_eq!(s.state().version, version, "nothing expires or is flagged");
    ok(&mut s, client(), funding("39875.00", Rail::Wire, "wire-2"));
    ok(&mut s, Actor::rail(), notice("wire-2", settled()));
    assert_eq!(s.status(), Status::Held);
    assert_eq!(s.balance(Account::Escrow), "39875.00");
}

/// Runs `cmd`, which must fail with the typed error `code` (not a rule's rejection),
/// recording nothing.
fn refuse_typed(s: &mut Sim, actor: Actor, cmd: Command, code: &str) {
    let version = s.state().version;
    let e = s.d.run(actor, cmd).expect_err("refused");
    assert_eq!(e.code(), code, "{e}");
    assert_eq!(s.state().version, version, "a refusal changes nothing");
}

fn settled_at(amount: &str) -> RailOutcome {
    RailOutcome::Settled {
        amount: Some(usd(amount)),
    }
}

#[test]
fn a_short_settlement_is_at_most_the_transfer_and_said_once() {
    let mut s = earnest(139);
    ok(&mut s, buyer(), funding("5000.00", Rail::Wire, "wire-1"));
    refuse(
        &mut s,
        Actor::rail(),
        notice("wire-1", settled_at("5000.01")),
        "settlement_exceeds_transfer",
        "settled 5000.01 USD of a transfer of 5000.00 USD",
    );
    refuse_typed(
        &mut s,
        Actor::rail(),
        notice("wire-1", settled_at("0.00")),
        "non_positive_amount",
    );
    // All of it, said with an amount, is a plain settlement.
    let mut whole = earnest(140);
    ok(
        &mut whole,
        buyer(),
        funding("5000.00", Rail::Wire, "wire-1"),
    );
    ok(
        &mut whole,
        Actor::rail(),
        notice("wire-1", settled_at("5000.00")),
    );
    assert_eq!(whole.state().funding.attempts[0].short, None);
    assert_eq!(whole.status(), Status::Held);
    // Short: 4975.00 held; the same notice again records nothing, another amount
    // contradicts it.
    ok(
        &mut s,
        Actor::rail(),
        notice("wire-1", settled_at("4975.00")),
    );
    assert_eq!(s.state().funding.attempts[0].short, Some(usd("25.00")));
    assert_eq!(s.balance(Account::Escrow), "4975.00");
    let version = s.state().version;
    ok(
        &mut s,
        Actor::rail(),
        notice("wire-1", settled_at("4975.00")),
    );
    ok(&mut s, Actor::rail(), notice("wire-1", settled()));
    assert_eq!(s.state().version, version, "duplicates record nothing");
    refuse(
        &mut s,
        Actor::rail(),
        notice("wire-1", settled_at("4980.00")),
        "notice_conflict",
        "already settled 4975.00 USD",
    );
    // A return takes at most what arrived.
    refuse(
        &mut s,
        Actor::rail(),
        notice("wire-1", returned("R01", Some(usd("5000.00")))),
        "return_exceeds_funding",
        "brought 4975.00 USD",
    );
    ok(
        &mut s,
        Actor::rail(),
        notice("wire-1", returned("R01", None)),
    );
    assert_eq!(s.balance(Account::Escrow), "0.00");
    assert_eq!(s.balance(Account::ExternalPayer), "0.00");
    assert_eq!(
        s.state().remaining_to_fund().expect("remaining"),
        usd("5000.00")
    );
}

#[test]
fn a_short_settlement_is_topped_up_past_an_expiring_deadline() {
    // Milestones (10-day deadline that expires): all 60000.00 sent on day 9; the wire
    // settles 10.00 short on day 14. The client funded in time: the 10.00 top-up is
    // taken after the deadline, and the clock does not expire the payment until the
    // policy's 10 days have passed again from the short settlement.
    let mut s = milestones(143);
    s.hours(24 * 9);
    ok(&mut s, client(), funding("60000.00", Rail::Wire, "wire-1"));
    s.hours(24 * 5);
    ok(
        &mut s,
        Actor::rail(),
        notice("wire-1", settled_at("59990.00")),
    );
    assert_eq!(s.status(), Status::AwaitingFunds);
    assert!(s.state().owes_only_shorts());
    let version = s.state().version;
    ok(&mut s, Actor::system(), Command::Tick);
    assert_eq!(s.state().version, version, "nothing expires");
    ok(&mut s, client(), funding("10.00", Rail::Wire, "wire-2"));
    ok(&mut s, Actor::rail(), notice("wire-2", settled()));
    assert_eq!(s.status(), Status::Held);
    assert_eq!(s.balance(Account::Escrow), "60000.00");
    // Never topped up: the policy's 10 days again from the short settlement, then the
    // payment expires and what is held goes back.
    let mut never = milestones(145);
    never.hours(24 * 9);
    ok(
        &mut never,
        client(),
        funding("60000.00", Rail::Wire, "wire-1"),
    );
    never.hours(24 * 5);
    ok(
        &mut never,
        Actor::rail(),
        notice("wire-1", settled_at("59990.00")),
    );
    let due = trustfold_core::decide::next_tick(never.state()).expect("a deadline again");
    let again = never.state().funding.attempts[0]
        .settled_at
        .expect("settled")
        .add_days(10);
    assert_eq!(due.unix_millis(), again.unix_millis() + 1);
    never.hours(24 * 10 + 1);
    ok(&mut never, Actor::system(), Command::Tick);
    assert!(never.state().expired);
    assert_eq!(never.status(), Status::Refunding);
    // Only part of the amount sent by the deadline (no short): what remains is owed
    // like any late funding, and refused after an expiring deadline.
    let mut late = milestones(144);
    late.hours(24 * 9);
    ok(
        &mut late,
        client(),
        funding("30000.00", Rail::Wire, "wire-1"),
    );
    late.hours(24 * 2);
    ok(&mut late, Actor::rail(), notice("wire-1", settled()));
    assert!(
        !late.state().owes_only_shorts(),
        "30000.00 was never sent in time"
    );
    refuse(
        &mut late,
        client(),
        funding("30000.00", Rail::Wire, "wire-2"),
        "deadline_passed",
        "has passed",
    );
}

#[test]
fn a_settlement_of_nothing_is_refused_on_arrival() {
    let cmd = notice("WIRE-X", settled_at("0.00"));
    let e = trustfold_core::decide::check_alone(&cmd).expect_err("refused alone");
    assert_eq!(e.code(), "non_positive_amount", "{e}");
    assert!(trustfold_core::decide::check_alone(&notice("WIRE-X", settled_at("1.00"))).is_ok());
}

#[test]
fn a_short_settlement_held_before_its_transfer_applies_when_it_is_recorded() {
    let mut s = earnest(141);
    ok(
        &mut s,
        Actor::rail(),
        notice("wire-9", settled_at("4990.00")),
    );
    assert_eq!(s.state().held_notices.len(), 1);
    ok(&mut s, buyer(), funding("5000.00", Rail::Wire, "wire-9"));
    assert_eq!(s.state().funding.attempts[0].short, Some(usd("10.00")));
    assert_eq!(s.balance(Account::Escrow), "4990.00");
    assert_eq!(s.status(), Status::AwaitingFunds);
    // One held in another currency is refused at once.
    refuse_typed(
        &mut s,
        Actor::rail(),
        notice(
            "wire-10",
            RailOutcome::Settled {
                amount: Some(
                    Money::parse("10.00", Currency::new("EUR").expect("EUR")).expect("amount"),
                ),
            },
        ),
        "currency_mismatch",
    );
}

#[test]
fn a_disbursement_settles_whole() {
    let mut s = scenarios::earnest_held(142).expect("earnest held");
    earnest_disbursing(&mut s, "5000.00");
    refuse(
        &mut s,
        Actor::rail(),
        notice("out-1", settled_at("4990.00")),
        "not_supported",
        "a disbursement settles whole",
    );
    ok(&mut s, Actor::rail(), notice("out-1", settled()));
    assert_eq!(s.status(), Status::Completed);
}

#[test]
fn approvers_missing_while_co_sellers_have_not_both_joined() {
    // Both co-sellers must approve a release; one seller has joined. Once money
    // arrives no one may join an approving role, so the release could never be
    // approved: funding waits for the second seller.
    let mut p = policy("earnest-money");
    p.release.approvals = trustfold_core::policy::Approvals::AllOf(vec![
        Role::new("buyer"),
        Role::new("seller"),
        Role::new("seller"),
    ]);
    let mut s = scenarios::earnest_with(136, p).expect("earnest");
    assert_eq!(s.status(), Status::AwaitingFunds);
    refuse(
        &mut s,
        buyer(),
        funding("5000.00", Rail::Wire, "wire-1"),
        "approvers_missing",
        "a release needs approvals from a different party for each of `buyer`, `seller`, `seller`",
    );
    s.invite_join(listing_agent(), 40, "seller", "Cy Coseller")
        .expect("second seller");
    if s.status() == Status::AwaitingAgreement {
        s.agree(40, "seller").expect("agree");
    }
    ok(&mut s, buyer(), funding("5000.00", Rail::Wire, "wire-1"));
}

#[test]
fn approvers_missing_when_one_party_holds_both_approving_roles() {
    // Releases and refunds need the buyer's and the seller's approvals, from two
    // parties; the buyer and the seller left, and one party now holds both roles.
    let mut s = earnest(137);
    for party in [BUYER, SELLER] {
        ok(
            &mut s,
            listing_agent(),
            Command::Remove {
                party: pid(party),
                reason: "withdrew".into(),
            },
        );
    }
    ok(
        &mut s,
        listing_agent(),
        Command::Invite {
            party: pid(41),
            roles: vec![Role::new("buyer"), Role::new("seller")],
            name: "Pat Both".into(),
            email: None,
        },
    );
    ok(&mut s, as_(41, "seller"), Command::Join);
    if s.status() == Status::AwaitingAgreement {
        let terms_hash = s.state().terms_hash;
        ok(
            &mut s,
            as_(41, "seller"),
            Command::AgreeToTerms { terms_hash },
        );
    }
    assert_eq!(s.status(), Status::AwaitingFunds);
    refuse(
        &mut s,
        as_(41, "buyer"),
        funding("5000.00", Rail::Wire, "wire-1"),
        "approvers_missing",
        "a release needs approvals from a different party for each of `buyer`, `seller`",
    );
}

#[test]
fn funds_arriving_after_expiry_wait_for_an_open_dispute() {
    let mut s = milestones(132);
    ok(&mut s, client(), funding("30000.00", Rail::Wire, "wire-a"));
    let failed = || RailOutcome::Failed {
        code: "R03".into(),
        reason: "no account".into(),
    };
    for r in ["ach-b", "ach-c", "ach-d"] {
        ok(&mut s, client(), funding("10000.00", Rail::Ach, r));
        ok(&mut s, Actor::rail(), notice(r, failed()));
    }
    assert!(s.state().expired);
    ok(
        &mut s,
        contractor(),
        Command::OpenDispute {
            dispute: rid(9),
            reason: "the client stopped the job".into(),
        },
    );
    // The settlement is recorded (not refused), and nothing leaves while disputed.
    ok(&mut s, Actor::rail(), notice("wire-a", settled()));
    assert_eq!(s.balance(Account::Escrow), "30000.00");
    assert!(s.state().open_request().is_none());
    // Resumed: the money goes back.
    ok(
        &mut s,
        as_(ARBITER, "arbiter"),
        Command::ResolveDispute {
            dispute: rid(9),
            outcome: DisputeOutcome::Resume,
            request: None,
            allocations: Vec::new(),
            amount: None,
            note: "nothing to pay the contractor".into(),
        },
    );
    let (_, refund) = s.state().open_request().expect("refund after the dispute");
    assert_eq!(refund.amount, usd("30000.00"));
    assert_eq!(refund.status, RequestStatus::Authorized);
}

/// Milestones funded by wire 20,000 (available) and ACH 40,000 (settled, clearing).
fn milestones_partly_clearing(n: u8) -> Sim {
    let mut s = milestones(n);
    ok(&mut s, client(), funding("20000.00", Rail::Wire, "wire-a"));
    ok(&mut s, Actor::rail(), notice("wire-a", settled()));
    ok(&mut s, client(), funding("40000.00", Rail::Ach, "ach-b"));
    ok(&mut s, Actor::rail(), notice("ach-b", settled()));
    s
}

#[test]
fn a_dispute_decides_money_only_once_none_is_clearing() {
    // Wire 20,000 available, ACH 40,000 settled and clearing (good funds later): a
    // release or refund decided now would pay out the 20,000 and end the payment with
    // 40,000 still to come, which nothing could then refund or release.
    let mut s = milestones_partly_clearing(134);
    assert_eq!(s.balance(Account::Clearing), "40000.00");
    ok(
        &mut s,
        contractor(),
        Command::OpenDispute {
            dispute: rid(9),
            reason: "the client stopped the job".into(),
        },
    );
    let refund = || Command::ResolveDispute {
        dispute: rid(9),
        outcome: DisputeOutcome::Refund,
        request: Some(rid(4)),
        allocations: Vec::new(),
        amount: None,
        note: "the job never started".into(),
    };
    refuse(
        &mut s,
        as_(ARBITER, "arbiter"),
        refund(),
        "funds_in_flight",
        "40000.00 USD of funding is still on a rail or clearing",
    );
    // Good funds: then the whole 60,000 is decided.
    for _ in 0..5 {
        s.hours(24);
        s.tick().expect("tick");
    }
    assert_eq!(s.balance(Account::Clearing), "0.00");
    ok(&mut s, as_(ARBITER, "arbiter"), refund());
    let (_, r) = s.state().open_request().expect("the refund");
    assert_eq!(r.amount, usd("60000.00"));
}

#[test]
fn a_payment_is_not_finished_while_funding_is_clearing() {
    // A history recorded before `decide` refused it (see the test above): the dispute
    // refunded the available 20,000 while 40,000 was clearing, and the refund was paid
    // out. The payment is not Refunded (an end no good funds could follow) but Funded,
    // waiting for the 40,000 to become available.
    use support::forge::forge_each;
    use trustfold_core::event::{
        refund_hash, DisbursementSettled, DisbursementSubmitted, DisputeResolved, Event,
        PaymentClosed, RefundAuthorized, RefundRequested,
    };
    let mut s = milestones_partly_clearing(135);
    ok(
        &mut s,
        contractor(),
        Command::OpenDispute {
            dispute: rid(9),
            reason: "the client stopped the job".into(),
        },
    );
    let arbiter_actor = || as_(ARBITER, "arbiter");
    let arbiter = arbiter_actor();
    let (decided, paid, settled_by) = (
        Some(uuid::Uuid::from_bytes([0xd1; 16])),
        Some(uuid::Uuid::from_bytes([0xd2; 16])),
        Some(uuid::Uuid::from_bytes([0xd3; 16])),
    );
    let amount = usd("20000.00");
    let mut events = vec![
        (
            arbiter.clone(),
            decided,
            Event::DisputeResolved(DisputeResolved {
                dispute: rid(9),
                outcome: DisputeOutcome::Refund,
                request: Some(rid(4)),
                note: "the job never started".into(),
            }),
        ),
        (
            arbiter.clone(),
            decided,
            Event::RefundRequested(RefundRequested {
                request: rid(4),
                allocations_hash: refund_hash(&amount),
                amount,
            }),
        ),
        (
            arbiter.clone(),
            decided,
            Event::RefundAuthorized(RefundAuthorized { request: rid(4) }),
        ),
        (
            arbiter,
            paid,
            Event::DisbursementSubmitted(DisbursementSubmitted {
                request: rid(4),
                rail: Rail::Wire,
                rail_ref: "refund-1".into(),
            }),
        ),
        (
            Actor::rail(),
            settled_by,
            Event::DisbursementSettled(DisbursementSettled {
                request: rid(4),
                rail_ref: "refund-1".into(),
            }),
        ),
    ];
    let history = forge_each(&s, events.clone());
    let st = trustfold_core::fold::replay(&history).expect("the history folds");
    assert_eq!(st.ledger.balance(&Account::Escrow).posted, usd("0.00"));
    assert_eq!(
        st.ledger.balance(&Account::Clearing).posted,
        usd("40000.00")
    );
    assert_eq!(st.status, Status::Funded, "40,000 is still clearing");
    // Such a payment counted as Refunded when it was recorded, and may have been closed
    // then (as the rules of the day allowed): that history still folds, Closed.
    events.push((
        arbiter_actor(),
        Some(uuid::Uuid::from_bytes([0xd4; 16])),
        Event::PaymentClosed(PaymentClosed {
            reason: "file closed".into(),
        }),
    ));
    let closed = trustfold_core::fold::replay(&forge_each(&s, events)).expect("still folds");
    assert_eq!(closed.status, Status::Closed);
}

#[test]
fn a_leg_is_reversed_once() {
    // A refund sent back by the payer's bank is recorded once; again would put the same
    // money into escrow a second time (the payer's account has no balance to stop it).
    let mut s = scenarios::earnest_held_with(133, scenarios::refunds_without_approvals())
        .expect("earnest held, refunds without approvals");
    ok(
        &mut s,
        listing_agent(),
        Command::Cancel {
            reason: "deal fell through".into(),
            refund_request: Some(rid(5)),
        },
    );
    ok(&mut s, escrow(), disbursement(5, "refund-1"));
    ok(&mut s, Actor::rail(), notice("refund-1", settled()));
    let refund = s
        .state()
        .ledger
        .legs
        .iter()
        .find(|l| l.to == Account::ExternalPayer && l.group == Some(rid(5)))
        .map(|l| l.id)
        .expect("refund leg");
    let reversal = || Command::RecordReversal {
        leg: refund,
        reason: "refund returned".into(),
    };
    ok(&mut s, escrow(), reversal());
    assert_eq!(s.balance(Account::Escrow), "5000.00");
    assert_eq!(s.state().reversed_legs, vec![refund]);
    refuse(
        &mut s,
        escrow(),
        reversal(),
        "already_reversed",
        "already reversed",
    );
    assert_eq!(s.balance(Account::Escrow), "5000.00");
}

#[test]
fn a_partial_return_after_a_cancellation_refunds_the_rest() {
    // The refund the cancellation authorized is pulled back by the return (which takes
    // 2000.00 from escrow); a new refund sends the 3000.00 left.
    let mut s = scenarios::earnest_held_with(134, scenarios::refunds_without_approvals())
        .expect("earnest held, refunds without approvals");
    ok(
        &mut s,
        listing_agent(),
        Command::Cancel {
            reason: "deal fell through".into(),
            refund_request: Some(rid(5)),
        },
    );
    ok(
        &mut s,
        Actor::rail(),
        notice("wire-1", returned("R01", Some(usd("2000.00")))),
    );
    assert_eq!(s.state().requests[&rid(5)].status, RequestStatus::Cancelled);
    let (id, refund) = s.state().open_request().expect("a refund of the rest");
    assert_ne!(id, rid(5));
    assert_eq!(refund.amount, usd("3000.00"));
    assert_eq!(refund.status, RequestStatus::Authorized);
    ok(&mut s, escrow(), disbursement_of(id, "refund-1"));
    ok(&mut s, Actor::rail(), notice("refund-1", settled()));
    assert_eq!(s.balance(Account::Escrow), "0.00");
    assert_eq!(s.balance(Account::ExternalPayer), "0.00");
    assert_eq!(s.status(), Status::Cancelled);
}

#[test]
fn a_partial_return_of_a_wire_leaves_the_rest_good_at_once() {
    // The return is the first notice (the settlement is implied); a wire's good funds
    // need no delay, so what is left is in escrow after this one command.
    let mut s = earnest(135);
    ok(&mut s, buyer(), funding("5000.00", Rail::Wire, "wire-1"));
    ok(
        &mut s,
        Actor::rail(),
        notice("wire-1", returned("R01", Some(usd("1500.00")))),
    );
    assert_eq!(s.balance(Account::Clearing), "0.00");
    assert_eq!(s.balance(Account::Escrow), "3500.00");
    assert_eq!(s.state().funded_total(), usd("3500.00"));
}

// ------------------------------------------------------- notices before their transfer

#[test]
fn a_payout_settled_before_it_is_recorded_completes_when_it_is() {
    let mut s = earnest_authorized(136);
    // The payee's bank confirms the wire before the escrow holder records sending it.
    ok(&mut s, Actor::rail(), notice("out-1", settled()));
    assert_eq!(s.state().held_notices.get("out-1").map(Vec::len), Some(1));
    // The state's canonical JSON (the core's writer) is serde's, held notices included.
    assert_eq!(
        s.state().to_json(),
        serde_json::to_vec(s.state()).expect("serde")
    );
    ok(&mut s, escrow(), disbursement(1, "out-1"));
    assert!(s.state().held_notices.is_empty());
    assert_eq!(s.status(), Status::Completed);
    assert_eq!(s.balance(Account::Payee(pid(SELLER))), "5000.00");
    // Its settlement is the rail's word, recorded as the rail's.
    let last = s.d.envelopes().last().expect("events");
    assert_eq!(last.event_type().name(), "DisbursementSettled");
    assert_eq!(last.actor, Actor::rail());
}

#[test]
fn held_notices_apply_in_order_and_a_contradicted_one_is_dropped() {
    let mut s = earnest(137);
    ok(
        &mut s,
        Actor::rail(),
        notice(
            "ach-9",
            RailOutcome::Failed {
                code: "R03".into(),
                reason: "no account".into(),
            },
        ),
    );
    ok(&mut s, Actor::rail(), notice("ach-9", settled()));
    assert_eq!(s.state().held_notices.get("ach-9").map(Vec::len), Some(2));
    ok(&mut s, buyer(), funding("5000.00", Rail::Ach, "ach-9"));
    // The failure came first: the funding failed; the settlement then contradicts it.
    let a = &s.state().funding.attempts[0];
    assert_eq!(a.status, trustfold_core::state::FundingStatus::Failed);
    assert!(s.state().held_notices.is_empty());
    assert_eq!(s.status(), Status::AwaitingFunds);
}

#[test]
fn held_notices_are_bounded_and_an_ended_payment_holds_none() {
    let mut s = earnest(138);
    for i in 0..16 {
        ok(&mut s, Actor::rail(), notice(&format!("x-{i}"), settled()));
    }
    refuse(
        &mut s,
        Actor::rail(),
        notice("x-16", settled()),
        "too_many_held_notices",
        "16 notices already wait",
    );
    // A notice held already is a duplicate, not one more.
    let v = s.state().version;
    ok(&mut s, Actor::rail(), notice("x-3", settled()));
    assert_eq!(s.state().version, v);
    let mut done = earnest(139);
    ok(
        &mut done,
        listing_agent(),
        Command::Cancel {
            reason: "deal fell through".into(),
            refund_request: None,
        },
    );
    assert_eq!(done.status(), Status::Cancelled);
    refuse(
        &mut done,
        Actor::rail(),
        notice("late-1", settled()),
        "unknown_rail_reference",
        "no transfer with rail reference `late-1`",
    );
}

#[test]
fn a_return_held_before_its_funding_is_recorded_settles_and_returns_it() {
    let mut s = earnest(140);
    ok(
        &mut s,
        Actor::rail(),
        notice("ach-7", returned("R01", None)),
    );
    ok(&mut s, buyer(), funding("5000.00", Rail::Ach, "ach-7"));
    let a = &s.state().funding.attempts[0];
    assert_eq!(a.status, trustfold_core::state::FundingStatus::Returned);
    assert_eq!(s.balance(Account::ExternalPayer), "0.00");
    assert_eq!(s.balance(Account::Clearing), "0.00");
    assert_eq!(s.status(), Status::AwaitingFunds);
}

#[test]
fn a_held_notice_is_checked_on_arrival_and_never_blocks_its_transfer() {
    let mut s = earnest(141);
    let eur = Money::parse("10.00", Currency::new("EUR").expect("eur")).expect("eur");
    let e =
        s.d.run(Actor::rail(), notice("ach-5", returned("R01", Some(eur))))
            .unwrap_err();
    assert_eq!(e.code(), "currency_mismatch", "{e}");
    let e =
        s.d.run(
            Actor::rail(),
            notice("ach-5", returned("R01", Some(usd("0.00")))),
        )
        .unwrap_err();
    assert_eq!(e.code(), "non_positive_amount", "{e}");
    refuse(
        &mut s,
        Actor::rail(),
        notice("ach-5", returned("X1", None)),
        "invalid_return_code",
        "not a return code",
    );
    // A return larger than the transfer turns out to be: dropped when applied, and the
    // funding is recorded all the same.
    ok(
        &mut s,
        Actor::rail(),
        notice("ach-5", returned("R01", Some(usd("6000.00")))),
    );
    ok(&mut s, buyer(), funding("5000.00", Rail::Ach, "ach-5"));
    let a = &s.state().funding.attempts[0];
    assert_eq!(a.status, trustfold_core::state::FundingStatus::Submitted);
    assert!(s.state().held_notices.is_empty());
    assert_eq!(s.balance(Account::LossReturns), "0.00");
}

// ------------------------------------------- who may override what the rules decided

/// Held, disputed by the buyer, and resolved by the escrow holder as a release of
/// everything to the seller: an authorized request with the dispute-resolution mandate.
fn earnest_resolved_as_release(n: u8) -> Sim {
    let mut s = scenarios::earnest_held(n).expect("earnest held");
    ok(
        &mut s,
        buyer(),
        Command::OpenDispute {
            dispute: rid(9),
            reason: "inspection".into(),
        },
    );
    ok(
        &mut s,
        escrow(),
        Command::ResolveDispute {
            dispute: rid(9),
            outcome: DisputeOutcome::Release,
            request: Some(rid(2)),
            allocations: vec![Allocation {
                party: pid(SELLER),
                amount: usd("5000.00"),
            }],
            amount: None,
            note: "the contingency had lapsed".into(),
        },
    );
    assert_eq!(
        s.state().requests[&rid(2)].status,
        RequestStatus::Authorized
    );
    s
}

#[test]
fn mandated_request_a_dispute_resolution_is_not_cancelled_by_a_party() {
    let mut s = earnest_resolved_as_release(140);
    // The listing agent may cancel requests it could have made, not the arbiter's.
    refuse(
        &mut s,
        listing_agent(),
        Command::CancelRequest {
            request: rid(2),
            reason: "changed our minds".into(),
        },
        "mandated_request",
        "a dispute's resolution",
    );
    // Nor call it off by cancelling the payment (which would refund the buyer).
    refuse(
        &mut s,
        listing_agent(),
        Command::Cancel {
            reason: "deal fell through".into(),
            refund_request: Some(rid(5)),
        },
        "mandated_request",
        "cannot be cancelled by a party",
    );
    // The resolution is carried out.
    ok(&mut s, escrow(), disbursement(2, "out-1"));
    ok(&mut s, Actor::rail(), notice("out-1", settled()));
    assert_eq!(s.status(), Status::Completed);
    assert_eq!(s.balance(Account::Escrow), "0.00");
}

#[test]
fn refund_approvals_required_to_cancel_with_money_held() {
    let mut s = scenarios::earnest_held(141).expect("earnest held");
    refuse(
        &mut s,
        escrow(),
        Command::Cancel {
            reason: "deal fell through".into(),
            refund_request: Some(rid(5)),
        },
        "refund_approvals_required",
        "one from each of: buyer, seller",
    );
    let ctx = Context {
        command_id: CommandId::from_bytes([0x33; 16]),
        actor: escrow(),
        now: s.d.now(),
        correlation: None,
    };
    assert!(
        !trustfold_core::decide::allowed_commands(s.state(), &ctx).contains(&CommandKind::Cancel),
        "a widget offers no Cancel button then"
    );
    // Before any money is held the same party cancels freely.
    let mut early = earnest(142);
    ok(
        &mut early,
        listing_agent(),
        Command::Cancel {
            reason: "offer withdrawn".into(),
            refund_request: None,
        },
    );
    assert_eq!(early.status(), Status::Cancelled);
}

/// Earnest money where one party (8) was invited as both seller and buyer before
/// funding (the same person can hold two roles), held by wire, with a release of
/// everything to party 8 that party 8 alone has approved (as seller).
fn dual_party_approved_alone(n: u8) -> Sim {
    let mut s = earnest(n);
    ok(
        &mut s,
        listing_agent(),
        Command::Invite {
            party: pid(8),
            roles: vec![Role::new("seller"), Role::new("buyer")],
            name: "Dual Dana".into(),
            email: None,
        },
    );
    ok(&mut s, as_(8, "buyer"), Command::Join);
    if s.status() == Status::AwaitingAgreement {
        s.agree(8, "buyer").expect("agrees");
    }
    ok(&mut s, buyer(), funding("5000.00", Rail::Wire, "wire-1"));
    ok(&mut s, Actor::rail(), notice("wire-1", settled()));
    assert_eq!(s.status(), Status::Held);
    ok(&mut s, escrow(), release(1, &[(8, "5000.00")]));
    let a = approval(&s, 1);
    ok(&mut s, as_(8, "seller"), a);
    s
}

#[test]
fn all_of_needs_a_different_party_for_each_role() {
    // The listing agent invites one party as both seller and buyer (a second of each,
    // which the policy allows) and asks to release everything to it.
    let mut s = dual_party_approved_alone(143);
    // One approval counts for one role: the request still waits.
    assert_eq!(
        s.state().requests[&rid(1)].status,
        RequestStatus::AwaitingApprovals
    );
    // With the real buyer's approval, one from each role by different parties.
    let a = approval(&s, 1);
    ok(&mut s, buyer(), a);
    assert_eq!(
        s.state().requests[&rid(1)].status,
        RequestStatus::Authorized
    );
}

#[test]
fn a_party_who_denied_may_still_approve_while_the_request_is_open() {
    // The dual party (seller and buyer) approved; the buyer and the seller deny. The
    // dual party alone could cover both roles as a denial counts them, so the request
    // stays open (v2 payments were written so), and the buyer may change its mind: with
    // its approval, two distinct parties approved, and the release is authorized.
    let mut s = dual_party_approved_alone(150);
    let deny = || Command::Deny {
        request: rid(1),
        reason: "not this way".into(),
    };
    ok(&mut s, buyer(), deny());
    ok(&mut s, seller(), deny());
    assert_eq!(
        s.state().requests[&rid(1)].status,
        RequestStatus::AwaitingApprovals
    );
    let a = approval(&s, 1);
    ok(&mut s, buyer(), a);
    assert_eq!(
        s.state().requests[&rid(1)].status,
        RequestStatus::Authorized
    );
    assert!(trustfold_core::fold::replay(&s.d.history()).is_ok());
}

#[test]
fn role_locked_no_stand_in_while_money_is_held() {
    let mut s = milestones_held(144);
    // The client may invite and remove, but not swap the contractor (payee, refund
    // approver) for a stand-in who would approve a refund back to the client.
    refuse(
        &mut s,
        client(),
        Command::Remove {
            party: pid(CONTRACTOR),
            reason: "replaced".into(),
        },
        "role_locked",
        "role `contractor`",
    );
    refuse(
        &mut s,
        client(),
        Command::Invite {
            party: pid(29),
            roles: vec![Role::new("contractor")],
            name: "Stan Stand-in".into(),
            email: None,
        },
        "role_locked",
        "while money is in escrow",
    );
    // Before any money came in, the roster is the parties' to change (every party
    // agreeing again sees it).
    let mut early = milestones(145);
    ok(
        &mut early,
        client(),
        Command::Remove {
            party: pid(INSPECTOR),
            reason: "replaced".into(),
        },
    );
}

#[test]
fn the_automatic_release_keeps_the_cap_per_release() {
    // The marketplace's automatic release, with partial releases of at most 100.00.
    let mut p = policy("marketplace");
    p.release.partial = true;
    p.release.max_per_release = Some("100.00".parse().expect("decimal"));
    let mut s = scenarios::market_with(146, p).expect("held");
    s.hours(73);
    ok(&mut s, Actor::system(), Command::Tick);
    let (id, r) = s.state().open_request().expect("auto-release");
    assert_eq!(r.amount, usd("100.00"), "capped");
    ok(
        &mut s,
        as_(PLATFORM, "platform"),
        disbursement_of(id, "payout-1"),
    );
    ok(&mut s, Actor::rail(), notice("payout-1", settled()));
    assert_eq!(s.status(), Status::Held);
    // The rest follows at the next tick.
    ok(&mut s, Actor::system(), Command::Tick);
    let (_, r) = s.state().open_request().expect("second auto-release");
    assert_eq!(r.amount, usd("20.00"));
}

#[test]
fn the_automatic_release_counts_from_the_first_hold() {
    // The marketplace's 72 hours run from when the funds were first held; a return
    // and a new payment do not start them again: the buyer could dispute all along,
    // while the money was away too.
    let mut s = scenarios::market_with(147, policy("marketplace")).expect("held");
    let first = s.state().held_since.expect("held since");
    s.hours(40);
    ok(
        &mut s,
        Actor::rail(),
        notice("card-1", returned("R10", None)),
    );
    assert_eq!(s.status(), Status::AwaitingFunds);
    assert_eq!(s.state().held_since, Some(first));
    ok(&mut s, Actor::system(), Command::Tick);
    assert!(s.state().open_request().is_none(), "nothing to release");
    s.hours(10);
    ok(
        &mut s,
        buyer(),
        Command::OpenDispute {
            dispute: rid(90),
            reason: "the lamp is cracked".into(),
        },
    );
    assert_eq!(
        s.status(),
        Status::Disputed,
        "a dispute while the money is away"
    );
    ok(
        &mut s,
        as_(PLATFORM, "platform"),
        Command::ResolveDispute {
            dispute: rid(90),
            outcome: trustfold_core::event::DisputeOutcome::Resume,
            request: None,
            allocations: Vec::new(),
            amount: None,
            note: "the seller sends a new lamp".into(),
        },
    );
    ok(&mut s, buyer(), funding("120.00", Rail::Card, "card-2"));
    ok(&mut s, Actor::rail(), notice("card-2", settled()));
    assert_eq!(s.status(), Status::Held);
    assert_eq!(
        s.state().held_since,
        Some(first),
        "the window is not started again"
    );
    s.hours(21);
    ok(&mut s, Actor::system(), Command::Tick);
    assert!(
        s.state().open_request().is_none(),
        "71 hours after the first hold"
    );
    s.hours(1);
    ok(&mut s, Actor::system(), Command::Tick);
    let (_, r) = s
        .state()
        .open_request()
        .expect("the automatic release at 72 hours");
    assert_eq!(r.mandate, Some(trustfold_core::state::Mandate::AutoRelease));
}

#[test]
fn the_automatic_release_waits_when_what_is_left_cannot_pay_its_fees() {
    // A payer-borne fixed fee of 2.00; a refund leaves 1.00 held, which cannot pay it:
    // the automatic release is not due (the clock does not come back for it) and a tick
    // still does its other work instead of failing.
    let mut doc: serde_json::Value =
        serde_json::from_str(include_str!("../../examples/policies/marketplace.json"))
            .expect("marketplace policy json");
    doc["fees"].as_array_mut().expect("fees").push(
        serde_json::json!({"name": "handling", "to_role": "platform", "bps": 0,
            "fixed": "2.00", "borne_by": "payer"}),
    );
    let p = Policy::from_json(&serde_json::to_string(&doc).expect("json")).expect("policy");
    let mut s = scenarios::market_with(149, p).expect("held");
    let platform = || as_(PLATFORM, "platform");
    ok(
        &mut s,
        platform(),
        Command::RequestRefund {
            request: rid(3),
            amount: Some(usd("119.00")),
        },
    );
    ok(&mut s, platform(), disbursement(3, "refund-1"));
    ok(&mut s, Actor::rail(), notice("refund-1", settled()));
    assert_eq!(s.balance(Account::Escrow), "1.00");
    assert_eq!(s.status(), Status::Held);
    assert_eq!(trustfold_core::decide::next_tick(s.state()), None);
    s.hours(73);
    ok(&mut s, Actor::system(), Command::Tick);
    assert!(s.state().open_request().is_none());
    assert_eq!(s.balance(Account::Escrow), "1.00");
}

#[test]
fn the_automatic_release_pays_no_payer() {
    // A policy naming the buyer a payee too, as a payment opened before `validate_new`
    // refused that can pin: the automatic release goes to the seller alone.
    let mut s = scenarios::market_with(147, policy("marketplace")).expect("held");
    s.hours(73);
    let mut p = policy("marketplace");
    p.payee_roles.push(Role::new("buyer"));
    let mut state = s.state().clone();
    state.policy_doc = std::sync::Arc::new(p);
    let ctx = Context {
        command_id: CommandId::from_bytes([0x34; 16]),
        actor: Actor::system(),
        now: s.d.now(),
        correlation: None,
    };
    let d = trustfold_core::decide::handle(Some(&state), &Command::Tick, &ctx).expect("tick");
    let (_, r) = d.state.open_request().expect("auto-release");
    let to: Vec<PartyId> = r.allocations.iter().map(|a| a.party).collect();
    assert_eq!(to, vec![pid(SELLER)]);
}

#[test]
fn the_funding_deadline_starts_when_the_last_party_yet_to_agree_is_removed() {
    let mut s = Sim::new("earnest-money", 148);
    let initiate = Command::Initiate {
        payment: s.d.payment(),
        tenant: TenantId::from_bytes([0x7e; 16]),
        policy: Box::new(policy("earnest-money")),
        amount: usd("5000.00"),
        description: "Earnest money, 12 Elm St".into(),
        roles: vec![Role::new("listing_agent")],
        name: "Lee Listing".into(),
    };
    ok(&mut s, listing_agent(), initiate);
    for (n, role, name) in [
        (BUYER, "buyer", "Bea Buyer"),
        (SELLER, "seller", "Sol Seller"),
        (9, "seller", "Sue Second"),
        (ESCROW, "escrow_holder", "Esme Escrow"),
    ] {
        s.invite_join(listing_agent(), n, role, name)
            .expect("invite and join");
    }
    s.agree(BUYER, "buyer").expect("agrees");
    s.agree(SELLER, "seller").expect("agrees");
    assert!(
        s.state().funding.deadline.is_none(),
        "the second seller has not agreed"
    );
    ok(
        &mut s,
        listing_agent(),
        Command::Remove {
            party: pid(9),
            reason: "not on the title".into(),
        },
    );
    assert_eq!(s.status(), Status::AwaitingFunds);
    assert!(
        s.state().funding.deadline.is_some(),
        "everyone left has agreed: the deadline runs"
    );
}

#[test]
fn a_stored_authorization_by_one_party_in_two_roles_still_folds() {
    // Written before all_of needed distinct parties: one party (seller and buyer)
    // approved alone and the release was authorized. `decide` no longer does that, but
    // a payment opened then folds as it was written.
    let s = dual_party_approved_alone(149);
    let last = s.d.envelopes().last().expect("events").clone();
    let v2 = support::forge::forge_each(
        &s,
        vec![(
            last.actor,
            last.causation,
            trustfold_core::event::Event::ReleaseAuthorized(
                trustfold_core::event::ReleaseAuthorized { request: rid(1) },
            ),
        )],
    );
    let v1 = support::forge::rewrite(&v2, |i, t| {
        if i == 0 {
            support::forge::opened_as_v1(t)
        } else {
            t
        }
    });
    // A payment opened before the rule (`PaymentInitiated` v1) folds as written…
    let state = trustfold_core::fold::replay(&v1).expect("the stored history folds");
    assert_eq!(state.status, Status::Disbursing);
    // …one opened under it (v2) cannot carry such an authorization.
    let e = trustfold_core::fold::replay(&v2).expect_err("v2 needs distinct parties");
    assert_eq!(e.code(), "invalid_history", "{e}");
    assert!(e.to_string().contains("quorum not met"), "{e}");
}

#[test]
fn all_of_over_many_interchangeable_roles_is_decided_at_once() {
    // Twelve roles every approver holds, plus one whose holder does not approve: a
    // search that tried every assignment would take 12! steps on each approval (hours:
    // the test would not end); the matching by augmenting paths takes a few hundred.
    let names: Vec<String> = (0..12).map(|i| format!("r{i}")).collect();
    let mut doc = serde_json::to_value(policy("earnest-money")).expect("json");
    for n in &names {
        doc["roles"][n] = serde_json::json!({"required": true, "max": 12});
    }
    doc["roles"]["x"] = serde_json::json!({"required": true, "max": 1});
    let mut all: Vec<String> = names.clone();
    all.push("x".into());
    doc["release"]["approvals"] = serde_json::json!({ "all_of": all });
    let p: Policy = serde_json::from_value(doc).expect("policy");
    // Every role is required: the payment waits in Draft until all are held.
    let mut s = Sim::new("earnest-money", 150);
    scenarios::open_earnest(&mut s, p).expect("opened");
    for (n, role, name) in [
        (BUYER, "buyer", "Bea Buyer"),
        (SELLER, "seller", "Sol Seller"),
        (ESCROW, "escrow_holder", "Esme Escrow"),
    ] {
        s.invite_join(listing_agent(), n, role, name)
            .expect("invited");
    }
    let roles: Vec<Role> = names.iter().map(Role::new).collect();
    for k in 0..12u8 {
        ok(
            &mut s,
            listing_agent(),
            Command::Invite {
                party: pid(60 + k),
                roles: roles.clone(),
                name: format!("Party {k}"),
                email: None,
            },
        );
        ok(&mut s, as_(60 + k, "r0"), Command::Join);
    }
    s.invite_join(listing_agent(), 59, "x", "Party X")
        .expect("invited");
    s.agree(BUYER, "buyer").expect("agreed");
    s.agree(SELLER, "seller").expect("agreed");
    assert_eq!(s.status(), Status::AwaitingFunds);
    ok(&mut s, buyer(), funding("5000.00", Rail::Wire, "wire-1"));
    ok(&mut s, Actor::rail(), notice("wire-1", settled()));
    ok(&mut s, escrow(), release(1, &[(SELLER, "5000.00")]));
    for k in 0..12u8 {
        let a = approval(&s, 1);
        ok(&mut s, as_(60 + k, "r0"), a);
    }
    // Every listed role but `x` has an approving party of its own: not yet authorized.
    assert_eq!(
        s.state().requests[&rid(1)].status,
        RequestStatus::AwaitingApprovals
    );
}

#[test]
fn partial_refund_not_allowed_while_the_payment_is_still_being_funded() {
    // 5,000.00 by ACH, 2,000.00 of it returned: 3,000.00 held, 2,000.00 still owed.
    let mut s = earnest(151);
    ok(&mut s, buyer(), funding("5000.00", Rail::Ach, "ach-1"));
    s.hours(24);
    ok(&mut s, Actor::rail(), notice("ach-1", settled()));
    s.hours(72);
    ok(&mut s, Actor::system(), Command::Tick);
    ok(
        &mut s,
        Actor::rail(),
        notice("ach-1", returned("R01", Some(usd("2000.00")))),
    );
    assert_eq!(s.status(), Status::AwaitingFunds);
    assert_eq!(s.balance(Account::Escrow), "3000.00");
    // Refunding part of it would end the funding phase short.
    refuse(
        &mut s,
        escrow(),
        Command::RequestRefund {
            request: rid(5),
            amount: Some(usd("1000.00")),
        },
        "partial_refund_not_allowed",
        "refund everything held (3000.00 USD)",
    );
    ok(
        &mut s,
        escrow(),
        Command::RequestRefund {
            request: rid(5),
            amount: Some(usd("3000.00")),
        },
    );
}

#[test]
fn role_locked_also_for_a_party_invited_before_the_money_that_joins_after() {
    let mut s = earnest(152);
    // A second seller invited before funding, who does not join (so need not agree).
    ok(
        &mut s,
        as_(scenarios::BUYER_AGENT, "buyer_agent"),
        Command::Invite {
            party: pid(40),
            roles: vec![Role::new("seller")],
            name: "Stan Stand-in".into(),
            email: None,
        },
    );
    ok(&mut s, buyer(), funding("5000.00", Rail::Wire, "wire-1"));
    ok(&mut s, Actor::rail(), notice("wire-1", settled()));
    assert_eq!(s.status(), Status::Held);
    refuse(
        &mut s,
        as_(40, "seller"),
        Command::Join,
        "role_locked",
        "no one invited into it may join now",
    );
    // Never having acted, it can be removed.
    ok(
        &mut s,
        listing_agent(),
        Command::Remove {
            party: pid(40),
            reason: "not on the title".into(),
        },
    );
}

// ---------------------------------------------------------------- calling requests off

#[test]
fn not_permitted_to_cancel_another_kind_of_request() {
    // The client may ask for refunds, the contractor for releases: neither calls off the
    // other's request, least of all one its approvers authorized.
    let mut s = milestones_held(130);
    ok(
        &mut s,
        contractor(),
        release(1, &[(CONTRACTOR, "20000.00")]),
    );
    for approver in [client(), as_(INSPECTOR, "inspector")] {
        let a = approval(&s, 1);
        ok(&mut s, approver, a);
    }
    assert_eq!(
        s.state().requests[&rid(1)].status,
        RequestStatus::Authorized
    );
    let cancel = |n: u8| Command::CancelRequest {
        request: rid(n),
        reason: "changed my mind".into(),
    };
    refuse(
        &mut s,
        client(),
        cancel(1),
        "not_permitted",
        "may not cancel a release: only a role that may request one (contractor)",
    );
    let offered = |n: u8, role: &str| {
        let ctx = Context {
            command_id: CommandId::from_bytes([0x0c; 16]),
            actor: as_(n, role),
            now: s.d.now(),
            correlation: None,
        };
        trustfold_core::decide::allowed_commands(s.state(), &ctx)
            .contains(&CommandKind::CancelRequest)
    };
    assert!(!offered(CLIENT, "client"), "not offered what is refused");
    assert!(offered(CONTRACTOR, "contractor"));
    // Its own kind it may: the contractor calls the release off.
    ok(&mut s, contractor(), cancel(1));
    ok(
        &mut s,
        client(),
        Command::RequestRefund {
            request: rid(2),
            amount: Some(usd("1000.00")),
        },
    );
    refuse(
        &mut s,
        contractor(),
        cancel(2),
        "not_permitted",
        "may not cancel a refund: only a role that may request one (client)",
    );
    ok(&mut s, client(), cancel(2));
}

// ---------------------------------------------------------------- everything at once

/// A marketplace order of 120.00 held, whose platform fee is 13 % borne by the payer.
fn market_with_payer_fee(n: u8) -> Sim {
    let mut p = policy("marketplace");
    p.fees[0].bps = 1300;
    p.fees[0].borne_by = trustfold_core::policy::BorneBy::Payer;
    scenarios::market_with(n, p).expect("held")
}

#[test]
fn partial_release_not_allowed_accepts_the_largest_gross_that_fits() {
    // 13 % borne by the payer on 120.00 held: no gross plus its rounded fee comes to
    // exactly 120.00 (106.19 + 13.80 = 119.99, 106.20 + 13.81 = 120.01), so "everything
    // at once" is the largest gross that fits, as the automatic release takes it.
    let mut s = market_with_payer_fee(131);
    assert_eq!(s.balance(Account::Escrow), "120.00");
    refuse(
        &mut s,
        seller(),
        release(1, &[(SELLER, "100.00")]),
        "partial_release_not_allowed",
        "releases everything at once",
    );
    refuse(
        &mut s,
        seller(),
        release(1, &[(SELLER, "106.20")]),
        "partial_release_not_allowed",
        "allocate 106.19 USD (what is held, 120.00 USD, less the fees the payer bears)",
    );
    ok(&mut s, seller(), release(1, &[(SELLER, "106.19")]));
}

#[test]
fn the_automatic_release_takes_the_largest_gross_that_fits() {
    // As above, by the clock: 106.19 + 13.80 of the 120.00 held (a search that jumped
    // down by the overshoot stopped at 104.40, leaving 2.03 behind).
    let mut s = market_with_payer_fee(132);
    s.hours(72);
    ok(&mut s, Actor::system(), Command::Tick);
    let (_, r) = s.state().open_request().expect("the automatic release");
    assert_eq!(r.amount, usd("106.19"));
    assert_eq!(r.fees[0].amount, usd("13.80"));
}
