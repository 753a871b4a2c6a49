//! Scenarios behind the golden vectors: each drives a payment through the real
//! `decide` rules and checks what it must (status, balances) while it goes.
//! `tests/vectors.rs` writes them to `tests/vectors/` (with TRUSTFOLD_BLESS=1) and
//! checks that the files there fold to exactly the expected state.
#![allow(dead_code)]

use trustfold_core::driver::Driver;
use trustfold_core::envelope::{Envelope, SealedEvent};
use trustfold_core::event::{Event, FundsAvailable, ParticipantInvited};
use trustfold_core::history::{self, PublicKey, SignedHead};
use trustfold_core::ledger::Account;
use trustfold_core::prelude::*;

pub const KEY_SECRET: [u8; 32] = [0x42; 32];

pub fn public_key() -> PublicKey {
    PublicKey::from_secret(&KEY_SECRET)
}

/// One golden vector.
pub struct Vector {
    pub name: String,
    pub description: String,
    pub policy: String,
    pub history: Vec<u8>,
    pub head: Option<SignedHead>,
}

type R<T = ()> = Result<T, Error>;

pub fn pid(n: u8) -> PartyId {
    let mut b = [0u8; 16];
    b[0] = 0xa0;
    b[6] = 0x40;
    b[8] = 0x80;
    b[15] = n;
    PartyId::from_bytes(b)
}

pub fn rid(n: u8) -> RequestId {
    let mut b = [0u8; 16];
    b[0] = 0xc0;
    b[6] = 0x40;
    b[8] = 0x80;
    b[15] = n;
    RequestId::from_bytes(b)
}

pub fn usd(s: &str) -> Money {
    Money::parse(s, Currency::new("USD").expect("USD")).expect("amount")
}

pub fn policy(name: &str) -> Policy {
    let path = format!(
        "{}/../examples/policies/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).expect("policy file");
    Policy::from_json(&text).expect("valid policy")
}

// The cast.
pub const LISTING_AGENT: u8 = 1;
pub const BUYER: u8 = 2;
pub const SELLER: u8 = 3;
pub const ESCROW: u8 = 4;
pub const LENDER: u8 = 5;
pub const BUYER_AGENT: u8 = 6;
pub const BROKERAGE: u8 = 7;
pub const PLATFORM: u8 = 10;
pub const CLIENT: u8 = 20;
pub const CONTRACTOR: u8 = 21;
pub const INSPECTOR: u8 = 22;
pub const ARBITER: u8 = 23;

pub fn as_(n: u8, role: &str) -> Actor {
    Actor::party(pid(n), role)
}

pub struct Sim {
    pub d: Driver,
    pub policy: String,
    cmds: u32,
}

impl Sim {
    pub fn new(policy_name: &str, n: u8) -> Sim {
        let mut b = [0u8; 16];
        b[0] = 0xb0;
        b[6] = 0x40;
        b[8] = 0x80;
        b[15] = n;
        let start: Timestamp = "2026-11-02T15:00:00Z".parse().expect("time");
        Sim {
            d: Driver::new(PaymentId::from_bytes(b), start),
            policy: policy_name.to_string(),
            cmds: 0,
        }
    }

    pub fn run(&mut self, actor: Actor, cmd: Command) -> R {
        self.cmds += 1;
        self.d.run(actor, cmd).map(|_| ())
    }

    pub fn rejects(&mut self, actor: Actor, cmd: Command, code: &str) {
        let version = self.state().version;
        match self.d.run(actor, cmd) {
            Ok(_) => panic!("expected rejection {code}, but the command was accepted"),
            Err(e) => assert_eq!(e.code(), code, "{e}"),
        }
        assert_eq!(self.state().version, version, "a rejection changes nothing");
    }

    pub fn state(&self) -> &PaymentState {
        self.d.state().expect("state")
    }

    pub fn status(&self) -> Status {
        self.state().status
    }

    pub fn balance(&self, a: Account) -> String {
        self.state().ledger.balance(&a).posted.amount_string()
    }

    pub fn hours(&mut self, h: i64) {
        self.d.advance_hours(h);
    }

    pub fn notice(&mut self, rail_ref: &str, notice: RailOutcome) -> R {
        self.run(
            Actor::rail(),
            Command::RailNotice {
                rail_ref: rail_ref.into(),
                notice,
            },
        )
    }

    pub fn tick(&mut self) -> R {
        self.run(Actor::system(), Command::Tick)
    }

    pub fn invite_join(&mut self, by: Actor, n: u8, role: &str, name: &str) -> R {
        self.run(
            by,
            Command::Invite {
                party: pid(n),
                roles: vec![Role::new(role)],
                name: name.into(),
                email: Some(format!(
                    "{}@example.com",
                    name.to_lowercase().replace(' ', ".")
                )),
            },
        )?;
        self.run(as_(n, role), Command::Join)
    }

    pub fn agree(&mut self, n: u8, role: &str) -> R {
        let terms_hash = self.state().terms_hash;
        self.run(as_(n, role), Command::AgreeToTerms { terms_hash })
    }

    pub fn vector(&self, name: &str, description: &str) -> Vector {
        let s = self.state();
        Vector {
            name: name.into(),
            description: description.into(),
            policy: self.policy.clone(),
            history: self.d.history(),
            head: Some(SignedHead::sign(s.payment, s.version, s.head, &KEY_SECRET)),
        }
    }
}

fn settled() -> RailOutcome {
    RailOutcome::Settled { amount: None }
}

fn failed(code: &str) -> RailOutcome {
    let reason = match code {
        "R01" => "insufficient funds",
        "card_declined" => "card declined by the issuer",
        _ => "rejected by the receiving bank",
    };
    RailOutcome::Failed {
        code: code.into(),
        reason: reason.into(),
    }
}

fn returned(code: &str, amount: Option<Money>) -> RailOutcome {
    let reason = match code {
        "R01" => "insufficient funds",
        "R02" => "account closed",
        "R03" => "no account / unable to locate account",
        "R10" => "customer advises not authorized",
        _ => "returned",
    };
    RailOutcome::Returned {
        code: code.into(),
        reason: reason.into(),
        amount,
    }
}

// ---------------------------------------------------------------- earnest money

/// Opened by the listing agent; buyer, seller, escrow holder, lender and buyer's agent
/// invited and joined; buyer and seller agreed. Ends in AwaitingFunds.
pub fn earnest(n: u8) -> R<Sim> {
    earnest_with(n, policy("earnest-money"))
}

/// The earnest-money policy, but its refunds need no approvals: a party allowed to
/// cancel may then cancel with money held, and the refund of everything held is
/// authorized at once (`PaymentCancelled` + `RefundRequested` + `RefundAuthorized`).
pub fn refunds_without_approvals() -> Policy {
    let mut p = policy("earnest-money");
    p.refund.approvals = trustfold_core::policy::Approvals::None;
    p
}

/// [`earnest`] under another policy (same roles).
pub fn earnest_with(n: u8, pinned: Policy) -> R<Sim> {
    earnest_on(Sim::new("earnest-money", n), pinned)
}

/// The listing agent opens `s`'s earnest-money payment of 5,000.00 USD under `pinned`
/// (nobody else invited yet: Draft).
pub fn open_earnest(s: &mut Sim, pinned: Policy) -> R {
    let payment = s.d.payment();
    s.run(
        as_(LISTING_AGENT, "listing_agent"),
        Command::Initiate {
            payment,
            tenant: TenantId::from_bytes([0x7e; 16]),
            policy: Box::new(pinned),
            amount: usd("5000.00"),
            description: "Earnest money, 12 Elm St".into(),
            roles: vec![Role::new("listing_agent")],
            name: "Lee Listing".into(),
        },
    )
}

/// [`earnest_with`] on `s` (whose clock may have been set).
fn earnest_on(mut s: Sim, pinned: Policy) -> R<Sim> {
    let la = || as_(LISTING_AGENT, "listing_agent");
    open_earnest(&mut s, pinned)?;
    assert_eq!(s.status(), Status::Draft);
    s.invite_join(la(), BUYER, "buyer", "Bea Buyer")?;
    s.invite_join(la(), SELLER, "seller", "Sol Seller")?;
    s.invite_join(la(), ESCROW, "escrow_holder", "Esme Escrow")?;
    assert_eq!(s.status(), Status::AwaitingAgreement);
    s.invite_join(la(), LENDER, "lender", "Len Lender")?;
    s.invite_join(la(), BUYER_AGENT, "buyer_agent", "Bob Agent")?;
    s.agree(BUYER, "buyer")?;
    assert_eq!(s.status(), Status::AwaitingAgreement);
    s.agree(SELLER, "seller")?;
    assert_eq!(s.status(), Status::AwaitingFunds);
    assert!(
        s.state().funding.deadline.is_some(),
        "deadline set on agreement"
    );
    s.run(
        as_(BUYER, "buyer"),
        Command::AttachFundingMethod {
            method: FundingMethod {
                rail: Rail::Ach,
                institution: "First Bank".into(),
                account_last4: "6789".into(),
                holder: "Bea Buyer".into(),
            },
        },
    )?;
    Ok(s)
}

fn fund(s: &mut Sim, rail: Rail, rail_ref: &str, amount: &str) -> R {
    s.run(
        as_(BUYER, "buyer"),
        Command::SubmitFunding {
            amount: usd(amount),
            rail,
            rail_ref: rail_ref.into(),
        },
    )
}

/// Funded by wire: settles and is available at once.
pub fn earnest_held(n: u8) -> R<Sim> {
    earnest_held_with(n, policy("earnest-money"))
}

/// [`earnest_held`] under another policy (same roles).
pub fn earnest_held_with(n: u8, pinned: Policy) -> R<Sim> {
    let mut s = earnest_with(n, pinned)?;
    fund(&mut s, Rail::Wire, "wire-1", "5000.00")?;
    assert_eq!(s.status(), Status::FundingInFlight);
    s.hours(2);
    s.notice("wire-1", settled())?;
    assert_eq!(s.status(), Status::Held);
    assert_eq!(s.balance(Account::Escrow), "5000.00");
    Ok(s)
}

/// Held, cancelled under a policy whose refunds need no approvals, refunded by wire
/// (request 5, `refund-1`), and the refund sent back by the payer's bank: one
/// `ReversalRecorded` of the refund's leg, the last event.
pub fn refund_reversed(n: u8) -> R<Sim> {
    let mut s = earnest_held_with(n, refunds_without_approvals())?;
    s.run(
        as_(LISTING_AGENT, "listing_agent"),
        Command::Cancel {
            reason: "deal fell through".into(),
            refund_request: Some(rid(5)),
        },
    )?;
    disburse(&mut s, 5, escrow(), "refund-1")?;
    s.notice("refund-1", settled())?;
    let refund = s
        .state()
        .ledger
        .legs
        .iter()
        .find(|l| l.to == Account::ExternalPayer)
        .map(|l| l.id)
        .expect("refund leg");
    s.run(
        escrow(),
        Command::RecordReversal {
            leg: refund,
            reason: "refund returned".into(),
        },
    )?;
    Ok(s)
}

pub fn request_release(s: &mut Sim, req: u8, allocs: &[(u8, &str)]) -> R {
    let allocations = allocs
        .iter()
        .map(|(p, a)| Allocation {
            party: pid(*p),
            amount: usd(a),
        })
        .collect();
    s.run(
        as_(ESCROW, "escrow_holder"),
        Command::RequestRelease {
            request: rid(req),
            allocations,
        },
    )
}

fn approve(s: &mut Sim, req: u8, n: u8, role: &str) -> R {
    let h = s.state().requests[&rid(req)].allocations_hash;
    s.run(
        as_(n, role),
        Command::Approve {
            request: rid(req),
            allocations_hash: h,
        },
    )
}

fn disburse(s: &mut Sim, req: u8, by: Actor, rail_ref: &str) -> R {
    s.run(
        by,
        Command::SubmitDisbursement {
            request: rid(req),
            rail: Rail::Wire,
            rail_ref: rail_ref.into(),
        },
    )
}

fn escrow() -> Actor {
    as_(ESCROW, "escrow_holder")
}

fn release_all_to_seller(s: &mut Sim, req: u8, amount: &str, rail_ref: &str) -> R {
    request_release(s, req, &[(SELLER, amount)])?;
    assert_eq!(s.status(), Status::AwaitingApprovals);
    approve(s, req, BUYER, "buyer")?;
    approve(s, req, SELLER, "seller")?;
    assert_eq!(s.status(), Status::Disbursing);
    disburse(s, req, escrow(), rail_ref)?;
    s.hours(1);
    s.notice(rail_ref, settled())
}

pub fn em_happy_wire() -> R<Vector> {
    let mut s = earnest_held(1)?;
    release_all_to_seller(&mut s, 1, "5000.00", "out-1")?;
    assert_eq!(s.status(), Status::Completed);
    assert_eq!(s.balance(Account::Payee(pid(SELLER))), "5000.00");
    s.run(
        escrow(),
        Command::Close {
            reason: "closed escrow".into(),
        },
    )?;
    assert_eq!(s.status(), Status::Closed);
    Ok(s.vector(
        "em_happy_wire",
        "Earnest money by wire, released in full to the seller with buyer and seller approval, closed.",
    ))
}

pub fn em_ach_good_funds() -> R<Vector> {
    let mut s = earnest(2)?;
    fund(&mut s, Rail::Ach, "ach-1", "5000.00")?;
    s.hours(24);
    s.notice("ach-1", settled())?; // Tuesday: good funds after 2 business days
    assert_eq!(s.status(), Status::Funded);
    s.hours(24);
    s.tick()?;
    assert_eq!(s.status(), Status::Funded, "only one business day later");
    s.hours(24);
    s.tick()?;
    assert_eq!(s.status(), Status::Held);
    assert_eq!(s.balance(Account::Clearing), "0.00");
    Ok(s.vector(
        "em_ach_good_funds",
        "ACH funding settles, then becomes good funds two business days later on a clock tick.",
    ))
}

pub fn em_ach_failure_then_wire() -> R<Vector> {
    let mut s = earnest(3)?;
    fund(&mut s, Rail::Ach, "ach-1", "5000.00")?;
    s.hours(30);
    s.notice("ach-1", failed("R01"))?;
    assert_eq!(s.status(), Status::AwaitingFunds);
    assert_eq!(s.state().funding.failed_attempts, 1);
    fund(&mut s, Rail::Wire, "wire-2", "5000.00")?;
    s.notice("wire-2", settled())?;
    assert_eq!(s.status(), Status::Held);
    Ok(s.vector(
        "em_ach_failure_then_wire",
        "ACH funding fails before settlement (R01); the buyer retries by wire and funds are held.",
    ))
}

/// The earnest-money policy with the bank's holidays of Thanksgiving week listed.
pub fn with_holidays(mut p: Policy, days: &[&str]) -> Policy {
    p.funding.holidays = days.iter().map(|d| d.parse().expect("date")).collect();
    p
}

pub fn em_bank_holidays() -> R<Vector> {
    let mut s = Sim::new("earnest-money", 37);
    // Tuesday of Thanksgiving week; Thursday 2026-11-26 is a bank holiday.
    s.d.set_now("2026-11-24T15:00:00Z".parse().expect("time"));
    let pinned = with_holidays(policy("earnest-money"), &["2026-11-26", "2026-12-25"]);
    let mut s = earnest_on(s, pinned)?;
    // Three business days after Tuesday's agreement: Wednesday, Friday, Monday.
    assert_eq!(
        s.state().funding.deadline.map(|t| t.to_string()).as_deref(),
        Some("2026-11-30T15:00:00Z")
    );
    fund(&mut s, Rail::Ach, "ach-1", "5000.00")?;
    s.hours(23);
    s.notice("ach-1", settled())?; // Wednesday 14:00
    assert_eq!(s.status(), Status::Funded);
    s.hours(48);
    s.tick()?; // Friday 14:00: one business day since Wednesday, not two
    assert_eq!(
        s.status(),
        Status::Funded,
        "Thanksgiving is no business day"
    );
    s.hours(72);
    s.tick()?; // Monday 14:00: good funds, an hour before the deadline
    assert_eq!(s.status(), Status::Held);
    assert!(!s.state().funding.deadline_missed, "not missed");
    Ok(s.vector(
        "em_bank_holidays",
        "A policy listing bank holidays: agreed on the Tuesday before Thanksgiving, the three-business-day deadline falls on Monday and ACH good funds (two business days after Wednesday's settlement) arrive on Monday, not Friday.",
    ))
}

fn ach_available(n: u8) -> R<Sim> {
    let mut s = earnest(n)?;
    fund(&mut s, Rail::Ach, "ach-1", "5000.00")?;
    s.hours(24);
    s.notice("ach-1", settled())?;
    s.hours(72);
    s.tick()?;
    assert_eq!(s.status(), Status::Held);
    Ok(s)
}

pub fn em_return_r01_after_settlement() -> R<Vector> {
    let mut s = ach_available(4)?;
    s.hours(24);
    s.notice("ach-1", returned("R01", None))?;
    assert_eq!(s.status(), Status::AwaitingFunds);
    assert_eq!(s.balance(Account::Escrow), "0.00");
    assert_eq!(s.balance(Account::LossReturns), "0.00");
    Ok(s.vector(
        "em_return_r01_after_settlement",
        "ACH return R01 after the funds were available: escrow is emptied back to the payer, funding reopens.",
    ))
}

pub fn em_return_r02_in_clearing() -> R<Vector> {
    let mut s = earnest(5)?;
    fund(&mut s, Rail::Ach, "ach-1", "5000.00")?;
    s.hours(24);
    s.notice("ach-1", settled())?;
    s.hours(24);
    s.notice("ach-1", returned("R02", None))?;
    assert_eq!(s.status(), Status::AwaitingFunds);
    assert_eq!(s.balance(Account::Clearing), "0.00");
    s.hours(72);
    s.tick()?; // a returned transfer never becomes available
    assert_eq!(s.balance(Account::Escrow), "0.00");
    Ok(s.vector(
        "em_return_r02_in_clearing",
        "ACH return R02 (account closed) while the funds were still clearing.",
    ))
}

pub fn em_return_before_settlement_notice() -> R<Vector> {
    let mut s = earnest(6)?;
    fund(&mut s, Rail::Ach, "ach-1", "5000.00")?;
    s.hours(48);
    // The return arrives first; it implies the settlement.
    s.notice("ach-1", returned("R03", None))?;
    let v = s.state().version;
    s.notice("ach-1", settled())?; // late settlement notice: already known
    s.notice("ach-1", returned("R03", None))?; // duplicate return
    assert_eq!(
        s.state().version,
        v,
        "late and duplicate notices add nothing"
    );
    assert_eq!(s.status(), Status::AwaitingFunds);
    assert_eq!(s.balance(Account::ExternalPayer), "0.00");
    Ok(s.vector(
        "em_return_before_settlement_notice",
        "Out-of-order rail notices: an R03 return arrives before the settlement notice; the late settlement and a duplicate return are ignored.",
    ))
}

pub fn em_duplicate_notices() -> R<Vector> {
    let mut s = earnest(7)?;
    fund(&mut s, Rail::Wire, "wire-1", "5000.00")?;
    s.notice("wire-1", settled())?;
    s.notice("wire-1", settled())?;
    s.notice("wire-1", settled())?;
    assert_eq!(s.status(), Status::Held);
    request_release(&mut s, 1, &[(SELLER, "5000.00")])?;
    approve(&mut s, 1, BUYER, "buyer")?;
    approve(&mut s, 1, SELLER, "seller")?;
    disburse(&mut s, 1, escrow(), "out-1")?;
    s.notice("out-1", settled())?;
    s.notice("out-1", settled())?;
    assert_eq!(s.status(), Status::Completed);
    Ok(s.vector(
        "em_duplicate_notices",
        "Every rail notice delivered two or three times: each takes effect once.",
    ))
}

pub fn em_settlement_before_initiation() -> R<Vector> {
    let mut s = earnest(61)?;
    // The escrow holder's bank reports the wire before the buyer records sending it.
    s.notice("wire-1", settled())?;
    assert_eq!(s.state().held_notices.len(), 1);
    assert_eq!(s.status(), Status::AwaitingFunds);
    s.notice("wire-1", settled())?; // delivered twice: held once
    assert_eq!(s.state().held_notices.get("wire-1").map(Vec::len), Some(1));
    fund(&mut s, Rail::Wire, "wire-1", "5000.00")?;
    assert!(s.state().held_notices.is_empty());
    assert_eq!(s.status(), Status::Held);
    assert_eq!(s.balance(Account::Escrow), "5000.00");
    Ok(s.vector(
        "em_settlement_before_initiation",
        "The rail's settlement arrives before the buyer records the wire: it is held, and applied (as the rail's) when the funding is recorded.",
    ))
}

pub fn em_late_return_recovered() -> R<Vector> {
    let mut s = ach_available(8)?;
    release_all_to_seller(&mut s, 1, "5000.00", "out-1")?;
    assert_eq!(s.status(), Status::Completed);
    s.hours(24 * 40);
    s.notice("ach-1", returned("R10", None))?;
    assert_eq!(s.status(), Status::Shortfall);
    assert_eq!(s.balance(Account::LossReturns), "-5000.00");
    s.run(
        escrow(),
        Command::RecordShortfallRecovery {
            amount: usd("3000.00"),
            rail_ref: "recovery-1".into(),
        },
    )?;
    assert_eq!(s.status(), Status::Shortfall);
    s.run(
        escrow(),
        Command::RecordShortfallRecovery {
            amount: usd("2000.00"),
            rail_ref: "recovery-2".into(),
        },
    )?;
    assert_eq!(s.status(), Status::Recovered);
    Ok(s.vector(
        "em_late_return_recovered",
        "R10 (unauthorized) return 40 days after the release: a shortfall in loss:returns, recovered in two parts.",
    ))
}

pub fn em_late_return_written_off() -> R<Vector> {
    let mut s = ach_available(9)?;
    request_release(&mut s, 1, &[(SELLER, "3000.00")])?;
    approve(&mut s, 1, BUYER, "buyer")?;
    approve(&mut s, 1, SELLER, "seller")?;
    disburse(&mut s, 1, escrow(), "out-1")?;
    s.notice("out-1", settled())?;
    assert_eq!(
        s.status(),
        Status::Held,
        "partial release leaves funds held"
    );
    s.hours(24 * 20);
    s.notice("ach-1", returned("R10", None))?;
    assert_eq!(s.status(), Status::Shortfall);
    assert_eq!(s.balance(Account::Escrow), "0.00");
    assert_eq!(s.balance(Account::LossReturns), "-3000.00");
    s.run(
        escrow(),
        Command::WriteOffShortfall {
            reason: "uncollectable".into(),
        },
    )?;
    assert_eq!(s.status(), Status::WrittenOff);
    Ok(s.vector(
        "em_late_return_written_off",
        "R10 return after a partial release: what is still held goes back, the rest is a shortfall, written off.",
    ))
}

pub fn em_partial_releases() -> R<Vector> {
    let mut s = earnest_held(10)?;
    request_release(&mut s, 1, &[(SELLER, "1500.00")])?;
    approve(&mut s, 1, BUYER, "buyer")?;
    approve(&mut s, 1, SELLER, "seller")?;
    disburse(&mut s, 1, escrow(), "out-1")?;
    s.notice("out-1", settled())?;
    assert_eq!(s.status(), Status::Held);
    assert_eq!(s.balance(Account::Escrow), "3500.00");
    request_release(&mut s, 2, &[(SELLER, "3000.00"), (BUYER, "500.00")])?;
    approve(&mut s, 2, SELLER, "seller")?;
    approve(&mut s, 2, BUYER, "buyer")?;
    disburse(&mut s, 2, escrow(), "out-2")?;
    s.notice("out-2", settled())?;
    assert_eq!(s.status(), Status::Completed);
    assert_eq!(s.balance(Account::Payee(pid(BUYER))), "500.00");
    Ok(s.vector(
        "em_partial_releases",
        "A partial release to the seller, then the rest split between seller and buyer.",
    ))
}

pub fn em_release_rail_failure() -> R<Vector> {
    let mut s = earnest_held(11)?;
    request_release(&mut s, 1, &[(SELLER, "5000.00")])?;
    approve(&mut s, 1, BUYER, "buyer")?;
    approve(&mut s, 1, SELLER, "seller")?;
    disburse(&mut s, 1, escrow(), "out-1")?;
    s.notice("out-1", failed("account_frozen"))?;
    assert_eq!(s.status(), Status::Held);
    assert_eq!(s.state().escrow_available().amount_string(), "5000.00");
    release_all_to_seller(&mut s, 2, "5000.00", "out-2")?;
    assert_eq!(s.status(), Status::Completed);
    Ok(s.vector(
        "em_release_rail_failure",
        "The release's disbursement fails on the rail: its legs are voided, funds stay held; a new release succeeds.",
    ))
}

pub fn em_approval_withdrawn() -> R<Vector> {
    let mut s = earnest_held(12)?;
    request_release(&mut s, 1, &[(SELLER, "5000.00")])?;
    approve(&mut s, 1, BUYER, "buyer")?;
    s.run(
        as_(BUYER, "buyer"),
        Command::WithdrawApproval { request: rid(1) },
    )?;
    approve(&mut s, 1, SELLER, "seller")?;
    assert_eq!(
        s.status(),
        Status::AwaitingApprovals,
        "withdrawn approval no longer counts"
    );
    approve(&mut s, 1, BUYER, "buyer")?;
    assert_eq!(s.status(), Status::Disbursing);
    Ok(s.vector(
        "em_approval_withdrawn",
        "The buyer approves, withdraws, and approves again: quorum only when both approvals stand.",
    ))
}

pub fn em_allocations_amended() -> R<Vector> {
    let mut s = earnest_held(13)?;
    request_release(&mut s, 1, &[(SELLER, "5000.00")])?;
    let old = s.state().requests[&rid(1)].allocations_hash;
    approve(&mut s, 1, BUYER, "buyer")?;
    s.run(
        escrow(),
        Command::AmendRelease {
            request: rid(1),
            allocations: vec![
                Allocation {
                    party: pid(SELLER),
                    amount: usd("4000.00"),
                },
                Allocation {
                    party: pid(BUYER),
                    amount: usd("1000.00"),
                },
            ],
        },
    )?;
    // The seller tries to approve the old allocations: stale.
    s.rejects(
        as_(SELLER, "seller"),
        Command::Approve {
            request: rid(1),
            allocations_hash: old,
        },
        "approval_stale",
    );
    approve(&mut s, 1, SELLER, "seller")?;
    assert_eq!(
        s.status(),
        Status::AwaitingApprovals,
        "the buyer's approval was voided"
    );
    approve(&mut s, 1, BUYER, "buyer")?;
    assert_eq!(s.status(), Status::Disbursing);
    Ok(s.vector(
        "em_allocations_amended",
        "Allocations change after the buyer approved: the earlier approval is void and must be given again.",
    ))
}

pub fn em_approval_denied() -> R<Vector> {
    let mut s = earnest_held(14)?;
    request_release(&mut s, 1, &[(SELLER, "5000.00")])?;
    approve(&mut s, 1, SELLER, "seller")?;
    s.run(
        as_(BUYER, "buyer"),
        Command::Deny {
            request: rid(1),
            reason: "inspection failed".into(),
        },
    )?;
    assert_eq!(s.status(), Status::Held);
    s.run(
        escrow(),
        Command::RequestRefund {
            request: rid(2),
            amount: None,
        },
    )?;
    approve(&mut s, 2, BUYER, "buyer")?;
    approve(&mut s, 2, SELLER, "seller")?;
    assert_eq!(s.status(), Status::Refunding);
    disburse(&mut s, 2, escrow(), "refund-1")?;
    s.notice("refund-1", settled())?;
    assert_eq!(s.status(), Status::Refunded);
    Ok(s.vector(
        "em_approval_denied_then_refund",
        "The buyer denies the release (quorum impossible), then both approve a full refund.",
    ))
}

pub fn em_dispute_before_disbursement() -> R<Vector> {
    let mut s = earnest_held(15)?;
    request_release(&mut s, 1, &[(SELLER, "5000.00")])?;
    approve(&mut s, 1, BUYER, "buyer")?;
    approve(&mut s, 1, SELLER, "seller")?;
    assert_eq!(s.status(), Status::Disbursing);
    s.run(
        as_(BUYER, "buyer"),
        Command::OpenDispute {
            dispute: rid(9),
            reason: "seller backed out".into(),
        },
    )?;
    assert_eq!(s.status(), Status::Disputed);
    assert_eq!(s.state().escrow_available().amount_string(), "5000.00");
    s.rejects(
        escrow(),
        Command::RequestRefund {
            request: rid(3),
            amount: None,
        },
        "payment_disputed",
    );
    s.run(
        escrow(),
        Command::ResolveDispute {
            dispute: rid(9),
            outcome: DisputeOutcome::Refund,
            request: Some(rid(2)),
            allocations: vec![],
            amount: None,
            note: "contract voided".into(),
        },
    )?;
    assert_eq!(s.status(), Status::Refunding);
    disburse(&mut s, 2, escrow(), "refund-1")?;
    s.notice("refund-1", settled())?;
    assert_eq!(s.status(), Status::Refunded);
    Ok(s.vector(
        "em_dispute_before_disbursement",
        "A dispute opened after the release was authorized but before it reached a rail pulls it back; resolved by refund.",
    ))
}

/// A dispute's resolution (a release the rules then mandate) disputed again: the buyer's
/// one command calls the mandated release off and opens the dispute, two events, and
/// the state between them is inside that command (`fold::check_complete` refuses it).
pub fn em_dispute_over_mandated_release() -> R<Vector> {
    let mut s = earnest_held(26)?;
    s.run(
        as_(BUYER, "buyer"),
        Command::OpenDispute {
            dispute: rid(9),
            reason: "inspection failed".into(),
        },
    )?;
    let resolve = |s: &mut Sim, dispute: u8, request: u8| {
        s.run(
            escrow(),
            Command::ResolveDispute {
                dispute: rid(dispute),
                outcome: DisputeOutcome::Release,
                request: Some(rid(request)),
                allocations: vec![Allocation {
                    party: pid(SELLER),
                    amount: usd("5000.00"),
                }],
                amount: None,
                note: "repairs made".into(),
            },
        )
    };
    resolve(&mut s, 9, 1)?;
    assert!(s
        .state()
        .open_request()
        .is_some_and(|(_, r)| r.mandate.is_some()));
    let before = s.state().version;
    s.run(
        as_(BUYER, "buyer"),
        Command::OpenDispute {
            dispute: rid(10),
            reason: "repairs not made".into(),
        },
    )?;
    assert_eq!(
        s.state().version,
        before + 2,
        "cancelled and disputed in one command"
    );
    assert_eq!(s.status(), Status::Disputed);
    resolve(&mut s, 10, 2)?;
    disburse(&mut s, 2, escrow(), "out-1")?;
    s.notice("out-1", settled())?;
    assert_eq!(s.status(), Status::Completed);
    Ok(s.vector(
        "em_dispute_over_mandated_release",
        "A dispute resolved by a release, disputed again before it is paid: one command calls the mandated release off and opens the dispute (two events); resolved by a release again.",
    ))
}

pub fn em_dispute_during_disbursement() -> R<Vector> {
    let mut s = earnest_held(16)?;
    request_release(&mut s, 1, &[(SELLER, "2000.00")])?;
    approve(&mut s, 1, BUYER, "buyer")?;
    approve(&mut s, 1, SELLER, "seller")?;
    disburse(&mut s, 1, escrow(), "out-1")?;
    s.run(
        as_(BUYER, "buyer"),
        Command::OpenDispute {
            dispute: rid(9),
            reason: "wrong amount".into(),
        },
    )?;
    assert_eq!(s.status(), Status::Disputed);
    s.notice("out-1", settled())?; // already on the rail: it completes
    assert_eq!(s.status(), Status::Disputed);
    assert_eq!(s.balance(Account::Escrow), "3000.00");
    s.run(
        escrow(),
        Command::ResolveDispute {
            dispute: rid(9),
            outcome: DisputeOutcome::Release,
            request: Some(rid(2)),
            allocations: vec![
                Allocation {
                    party: pid(SELLER),
                    amount: usd("1000.00"),
                },
                Allocation {
                    party: pid(BUYER),
                    amount: usd("2000.00"),
                },
            ],
            amount: None,
            note: "split agreed in mediation".into(),
        },
    )?;
    assert_eq!(s.status(), Status::Disbursing);
    disburse(&mut s, 2, escrow(), "out-2")?;
    s.notice("out-2", settled())?;
    assert_eq!(s.status(), Status::Completed);
    Ok(s.vector(
        "em_dispute_during_disbursement",
        "A dispute opened while a partial release is on the rail: the rail still settles it; the resolver splits the rest.",
    ))
}

pub fn em_cancel_before_funding() -> R<Vector> {
    let mut s = earnest(17)?;
    s.run(
        as_(LISTING_AGENT, "listing_agent"),
        Command::Cancel {
            reason: "offer withdrawn".into(),
            refund_request: None,
        },
    )?;
    assert_eq!(s.status(), Status::Cancelled);
    s.rejects(
        as_(BUYER, "buyer"),
        Command::SubmitFunding {
            amount: usd("5000.00"),
            rail: Rail::Wire,
            rail_ref: "w".into(),
        },
        "payment_terminal",
    );
    Ok(s.vector(
        "em_cancel_before_funding",
        "Cancelled before any money moved.",
    ))
}

pub fn em_cancel_after_funds() -> R<Vector> {
    let mut s = earnest_held(18)?;
    // The earnest-money policy's refunds need the buyer's and the seller's approval
    // (their mutual release): no one cancels the deal and takes the money back alone.
    s.rejects(
        as_(LISTING_AGENT, "listing_agent"),
        Command::Cancel {
            reason: "deal fell through".into(),
            refund_request: Some(rid(5)),
        },
        "refund_approvals_required",
    );
    s.run(
        escrow(),
        Command::RequestRefund {
            request: rid(5),
            amount: None,
        },
    )?;
    assert_eq!(s.status(), Status::AwaitingApprovals);
    approve(&mut s, 5, BUYER, "buyer")?;
    approve(&mut s, 5, SELLER, "seller")?;
    assert_eq!(
        s.status(),
        Status::Refunding,
        "held funds are refunded, not lost"
    );
    disburse(&mut s, 5, escrow(), "refund-1")?;
    s.notice("refund-1", settled())?;
    assert_eq!(s.status(), Status::Refunded);
    assert_eq!(s.balance(Account::Escrow), "0.00");
    assert_eq!(s.balance(Account::ExternalPayer), "0.00");
    Ok(s.vector(
        "em_cancel_after_funds",
        "The deal falls through after funds were held: cancelling is refused while the policy's refunds need approvals (refund_approvals_required); the escrow holder requests the refund, buyer and seller approve it (their mutual release), and the whole balance goes back to the buyer.",
    ))
}

pub fn mk_cancel_after_funds() -> R<Vector> {
    // A policy whose refunds need no approvals: cancelling with money held refunds it
    // all at once, and the payment ends Cancelled once the refund settles.
    let mut s = earnest_held_with(25, refunds_without_approvals())?;
    s.rejects(
        as_(LISTING_AGENT, "listing_agent"),
        Command::Cancel {
            reason: "deal fell through".into(),
            refund_request: None,
        },
        "refund_request_required",
    );
    s.run(
        as_(LISTING_AGENT, "listing_agent"),
        Command::Cancel {
            reason: "deal fell through".into(),
            refund_request: Some(rid(5)),
        },
    )?;
    assert_eq!(
        s.status(),
        Status::Refunding,
        "held funds are refunded, not lost"
    );
    disburse(&mut s, 5, escrow(), "refund-1")?;
    s.notice("refund-1", settled())?;
    assert_eq!(s.status(), Status::Cancelled);
    assert_eq!(s.balance(Account::ExternalPayer), "0.00");
    Ok(s.vector(
        "cancel_after_funds_no_refund_approvals",
        "Under a policy whose refunds need no approvals, cancelling after funds were held refunds the whole balance to the buyer first, then the payment is Cancelled.",
    ))
}

pub fn em_deadline_flagged() -> R<Vector> {
    let mut s = earnest(19)?;
    s.hours(24 * 6);
    s.tick()?;
    assert!(s.state().funding.deadline_missed);
    assert_eq!(s.status(), Status::AwaitingFunds, "the policy only flags");
    fund(&mut s, Rail::Wire, "wire-1", "5000.00")?;
    s.notice("wire-1", settled())?;
    assert_eq!(s.status(), Status::Held);
    Ok(s.vector(
        "em_deadline_flagged",
        "The 3-business-day funding deadline passes: the earnest-money policy flags it and funding still goes through.",
    ))
}

pub fn em_concurrent_conflict() -> R<Vector> {
    // Two approvals decided against the same state: the second one appended with a
    // stale version would lose; here both are applied in order as a server would after
    // the retry, and the history is the same as sequential handling.
    let mut s = earnest_held(20)?;
    request_release(&mut s, 1, &[(SELLER, "5000.00")])?;
    let snapshot = s.state().clone();
    approve(&mut s, 1, BUYER, "buyer")?;
    let h = snapshot.requests[&rid(1)].allocations_hash;
    let stale = trustfold_core::decide::handle(
        Some(&snapshot),
        &Command::Approve {
            request: rid(1),
            allocations_hash: h,
        },
        &Context {
            command_id: CommandId::from_bytes([0x99; 16]),
            actor: as_(SELLER, "seller"),
            now: s.d.now(),
            correlation: None,
        },
    )?;
    // Decided on the old version: its first event claims the seq the buyer's took.
    assert_eq!(stale.events[0].seq, s.state().version);
    approve(&mut s, 1, SELLER, "seller")?; // the retry against the new state
    assert_eq!(s.status(), Status::Disbursing);
    Ok(s.vector(
        "em_concurrent_approvals",
        "Two approvals decided concurrently: the loser's events carry a stale seq (a version conflict on append) and its retry succeeds.",
    ))
}

pub fn em_notice_never_arrives() -> R<Vector> {
    let mut s = earnest(21)?;
    fund(&mut s, Rail::Ach, "ach-1", "5000.00")?;
    // No webhook ever comes: days pass, the clock changes nothing while in flight.
    for _ in 0..5 {
        s.hours(24);
        s.tick()?;
        assert_eq!(s.status(), Status::FundingInFlight);
    }
    // The server's reconciliation poll asks the rail and records what it says,
    // through the same idempotent notice.
    s.notice("ach-1", settled())?;
    s.tick()?; // good funds count from when the settlement was recorded
    assert_eq!(
        s.status(),
        Status::Funded,
        "good funds count from the recorded settlement"
    );
    s.hours(24 * 3);
    s.tick()?;
    assert_eq!(s.status(), Status::Held);
    Ok(s.vector(
        "em_notice_never_arrives",
        "The rail's settlement webhook never arrives; days later the reconciliation poll records it, then funds become good.",
    ))
}

pub fn em_duplicate_commands() -> R<Vector> {
    let mut s = earnest(22)?;
    s.rejects(as_(BUYER, "buyer"), Command::Join, "already_joined");
    let terms_hash = s.state().terms_hash;
    s.rejects(
        as_(BUYER, "buyer"),
        Command::AgreeToTerms { terms_hash },
        "invalid_state",
    );
    fund(&mut s, Rail::Wire, "wire-1", "5000.00")?;
    s.rejects(
        as_(BUYER, "buyer"),
        Command::SubmitFunding {
            amount: usd("5000.00"),
            rail: Rail::Wire,
            rail_ref: "wire-1".into(),
        },
        "rail_ref_reused",
    );
    s.notice("wire-1", settled())?;
    request_release(&mut s, 1, &[(SELLER, "5000.00")])?;
    s.rejects(
        escrow(),
        Command::RequestRelease {
            request: rid(1),
            allocations: vec![Allocation {
                party: pid(SELLER),
                amount: usd("5000.00"),
            }],
        },
        "request_open",
    );
    approve(&mut s, 1, BUYER, "buyer")?;
    let h = s.state().requests[&rid(1)].allocations_hash;
    s.rejects(
        as_(BUYER, "buyer"),
        Command::Approve {
            request: rid(1),
            allocations_hash: h,
        },
        "already_approved",
    );
    approve(&mut s, 1, SELLER, "seller")?;
    disburse(&mut s, 1, escrow(), "out-1")?;
    s.rejects(
        escrow(),
        Command::SubmitDisbursement {
            request: rid(1),
            rail: Rail::Wire,
            rail_ref: "out-1".into(),
        },
        "no_authorized_request",
    );
    // Handling the very same command twice against the same state gives the very same
    // events (ids derive from the command id): a store appends them once.
    let st = s.state().clone();
    let ctx = Context {
        command_id: CommandId::from_bytes([0x55; 16]),
        actor: Actor::rail(),
        now: s.d.now(),
        correlation: None,
    };
    let cmd = Command::RailNotice {
        rail_ref: "out-1".into(),
        notice: settled(),
    };
    let a = trustfold_core::decide::handle(Some(&st), &cmd, &ctx)?;
    let b = trustfold_core::decide::handle(Some(&st), &cmd, &ctx)?;
    assert_eq!(a.sealed, b.sealed);
    s.notice("out-1", settled())?;
    assert_eq!(s.status(), Status::Completed);
    Ok(s.vector(
        "em_duplicate_commands",
        "Commands sent twice (join, funding, release request, approval, disbursement) are refused the second time; nothing is recorded twice.",
    ))
}

pub fn em_participant_removed() -> R<Vector> {
    let mut s = earnest(23)?;
    s.run(
        as_(LISTING_AGENT, "listing_agent"),
        Command::Remove {
            party: pid(BUYER_AGENT),
            reason: "buyer changed agents".into(),
        },
    )?;
    s.rejects(
        as_(BUYER_AGENT, "buyer_agent"),
        Command::SubmitFunding {
            amount: usd("5000.00"),
            rail: Rail::Wire,
            rail_ref: "w".into(),
        },
        "unknown_participant",
    );
    s.invite_join(
        as_(LISTING_AGENT, "listing_agent"),
        BROKERAGE,
        "brokerage",
        "Bay Brokerage",
    )?;
    assert_eq!(s.status(), Status::AwaitingFunds);
    Ok(s.vector(
        "em_participant_removed",
        "The buyer's agent is removed and can no longer act; a brokerage joins.",
    ))
}

pub fn em_reversal_correction() -> R<Vector> {
    let mut s = earnest_held(24)?;
    request_release(&mut s, 1, &[(SELLER, "2000.00")])?;
    approve(&mut s, 1, BUYER, "buyer")?;
    approve(&mut s, 1, SELLER, "seller")?;
    disburse(&mut s, 1, escrow(), "out-1")?;
    s.notice("out-1", settled())?;
    assert_eq!(s.balance(Account::Escrow), "3000.00");
    let leg = s.state().requests[&rid(1)].legs[0];
    s.run(
        escrow(),
        Command::RecordReversal {
            leg,
            reason: "payout bounced back by the seller's bank".into(),
        },
    )?;
    assert_eq!(s.balance(Account::Escrow), "5000.00");
    assert_eq!(s.balance(Account::Payee(pid(SELLER))), "0.00");
    assert_eq!(s.status(), Status::Held);
    Ok(s.vector(
        "em_reversal_correction",
        "A settled payout came back: the escrow holder records a reversing leg; the funds are held again.",
    ))
}

pub fn em_wire_short_settled() -> R<Vector> {
    let mut s = earnest(27)?;
    fund(&mut s, Rail::Wire, "wire-1", "5000.00")?;
    // The buyer's wire arrives 25.00 short: a bank on its way took its fee.
    s.notice(
        "wire-1",
        RailOutcome::Settled {
            amount: Some(usd("4975.00")),
        },
    )?;
    assert_eq!(s.balance(Account::Escrow), "4975.00");
    assert_eq!(s.balance(Account::Clearing), "0.00");
    assert_eq!(s.status(), Status::AwaitingFunds);
    assert_eq!(s.state().remaining_to_fund()?, usd("25.00"));
    // The policy takes no partial funding: the buyer sends exactly what remains.
    s.hours(3);
    fund(&mut s, Rail::Wire, "wire-2", "25.00")?;
    s.notice("wire-2", settled())?;
    assert_eq!(s.status(), Status::Held);
    assert_eq!(s.balance(Account::Escrow), "5000.00");
    Ok(s.vector(
        "em_wire_short_settled",
        "The buyer's wire of 5000.00 settles 25.00 short (an intermediary bank's fee): 4975.00 is held, the payment awaits the rest, and the buyer wires the 25.00.",
    ))
}

pub fn em_late_return_payout_reversed() -> R<Vector> {
    let mut s = ach_available(25)?;
    release_all_to_seller(&mut s, 1, "5000.00", "out-1")?;
    assert_eq!(s.status(), Status::Completed);
    s.hours(24 * 20);
    s.notice("ach-1", returned("R10", None))?;
    assert_eq!(s.status(), Status::Shortfall);
    assert_eq!(s.balance(Account::LossReturns), "-5000.00");
    // The seller's bank sends the payout back: the money back in escrow is what the
    // trust account is short of, so it covers the shortfall instead of waiting to be
    // paid out a second time.
    s.hours(24);
    let leg = s.state().requests[&rid(1)].legs[0];
    s.run(
        escrow(),
        Command::RecordReversal {
            leg,
            reason: "payout returned: the seller's account is closed".into(),
        },
    )?;
    assert_eq!(s.balance(Account::LossReturns), "0.00");
    assert_eq!(s.balance(Account::Escrow), "0.00");
    assert_eq!(s.balance(Account::Payee(pid(SELLER))), "0.00");
    // Nothing was kept of the funding and nothing is held: the payment awaits funds
    // again (not `Completed`: the seller has nothing).
    assert_eq!(s.status(), Status::AwaitingFunds);
    assert_eq!(s.state().remaining_to_fund()?, usd("5000.00"));
    s.hours(2);
    fund(&mut s, Rail::Wire, "wire-2", "5000.00")?;
    s.notice("wire-2", settled())?;
    assert_eq!(s.status(), Status::Held);
    assert_eq!(s.balance(Account::Escrow), "5000.00");
    Ok(s.vector(
        "em_late_return_payout_reversed",
        "R10 return 20 days after the release (a shortfall), then the seller's bank sends the payout back: the reversal's money covers the shortfall first (nothing is left to pay out twice), and the payment awaits funds again; the buyer wires them and they are held.",
    ))
}

// ---------------------------------------------------------------- marketplace

fn market(n: u8) -> R<Sim> {
    market_with(n, policy("marketplace"))
}

/// The marketplace order (120.00 by card, held) under another policy (same roles).
pub fn market_with(n: u8, pinned: Policy) -> R<Sim> {
    let mut s = Sim::new("marketplace", n);
    let pl = || as_(PLATFORM, "platform");
    s.run(
        pl(),
        Command::Initiate {
            payment: s.d.payment(),
            tenant: TenantId::from_bytes([0x7f; 16]),
            policy: Box::new(pinned),
            amount: usd("120.00"),
            description: "Order 1042: vintage lamp".into(),
            roles: vec![Role::new("platform")],
            name: "Marketplace".into(),
        },
    )?;
    s.invite_join(pl(), BUYER, "buyer", "Bea Buyer")?;
    s.invite_join(pl(), SELLER, "seller", "Sol Seller")?;
    assert_eq!(
        s.status(),
        Status::AwaitingFunds,
        "no agreement step in this policy"
    );
    s.run(
        as_(BUYER, "buyer"),
        Command::SubmitFunding {
            amount: usd("120.00"),
            rail: Rail::Card,
            rail_ref: "card-1".into(),
        },
    )?;
    s.notice("card-1", settled())?;
    assert_eq!(s.status(), Status::Held);
    Ok(s)
}

pub fn mp_auto_release() -> R<Vector> {
    let mut s = market(30)?;
    s.hours(71);
    s.tick()?;
    assert_eq!(s.status(), Status::Held, "not yet 72 hours");
    s.hours(1);
    s.tick()?;
    assert_eq!(s.status(), Status::Disbursing);
    let (_, r) = s.state().open_request().expect("auto release");
    assert_eq!(r.fees[0].amount.amount_string(), "12.00");
    let rid_ = s.state().open_request().map(|(id, _)| id).expect("request");
    s.run(
        as_(PLATFORM, "platform"),
        Command::SubmitDisbursement {
            request: rid_,
            rail: Rail::Ach,
            rail_ref: "payout-1".into(),
        },
    )?;
    s.notice("payout-1", settled())?;
    assert_eq!(s.status(), Status::Completed);
    assert_eq!(s.balance(Account::Payee(pid(SELLER))), "108.00");
    assert_eq!(s.balance(Account::Fee(pid(PLATFORM))), "12.00");
    Ok(s.vector(
        "mp_auto_release",
        "Marketplace: no dispute within 72 hours, so the funds release automatically; the platform keeps its 10% fee.",
    ))
}

pub fn mp_dispute_blocks_auto_release() -> R<Vector> {
    let mut s = market(31)?;
    s.hours(10);
    s.run(
        as_(BUYER, "buyer"),
        Command::OpenDispute {
            dispute: rid(9),
            reason: "item not as described".into(),
        },
    )?;
    s.hours(100);
    s.tick()?;
    assert_eq!(
        s.status(),
        Status::Disputed,
        "no auto-release while disputed"
    );
    s.run(
        as_(PLATFORM, "platform"),
        Command::ResolveDispute {
            dispute: rid(9),
            outcome: DisputeOutcome::Refund,
            request: Some(rid(2)),
            allocations: vec![],
            amount: Some(usd("60.00")),
            note: "partial refund agreed".into(),
        },
    )?;
    assert_eq!(s.status(), Status::Refunding);
    disburse(&mut s, 2, as_(PLATFORM, "platform"), "refund-1")?;
    s.notice("refund-1", settled())?;
    assert_eq!(s.status(), Status::Held);
    s.tick()?; // past 72 h since held: the remaining half auto-releases
    assert_eq!(s.status(), Status::Disbursing);
    Ok(s.vector(
        "mp_dispute_blocks_auto_release",
        "Marketplace: a dispute stops the automatic release; half is refunded, then the rest auto-releases.",
    ))
}

pub fn mp_buyer_confirms() -> R<Vector> {
    let mut s = market(32)?;
    s.run(
        as_(SELLER, "seller"),
        Command::RequestRelease {
            request: rid(1),
            allocations: vec![Allocation {
                party: pid(SELLER),
                amount: usd("120.00"),
            }],
        },
    )?;
    approve(&mut s, 1, BUYER, "buyer")?;
    assert_eq!(s.status(), Status::Disbursing);
    disburse(&mut s, 1, as_(PLATFORM, "platform"), "payout-1")?;
    s.notice("payout-1", settled())?;
    assert_eq!(s.balance(Account::Payee(pid(SELLER))), "108.00");
    Ok(s.vector(
        "mp_buyer_confirms",
        "Marketplace: the seller asks for release, the buyer confirms receipt; 10% fee to the platform.",
    ))
}

pub fn mp_refund_without_approval() -> R<Vector> {
    let mut s = market(33)?;
    s.run(
        as_(SELLER, "seller"),
        Command::RequestRefund {
            request: rid(1),
            amount: None,
        },
    )?;
    assert_eq!(
        s.status(),
        Status::Refunding,
        "refunds need no approval in this policy"
    );
    disburse(&mut s, 1, as_(PLATFORM, "platform"), "refund-1")?;
    s.notice("refund-1", settled())?;
    assert_eq!(s.status(), Status::Refunded);
    Ok(s.vector(
        "mp_refund_without_approval",
        "Marketplace: the seller refunds the order; no approval needed.",
    ))
}

pub fn mp_card_declined_twice_expires() -> R<Vector> {
    let mut s = Sim::new("marketplace", 34);
    let pl = || as_(PLATFORM, "platform");
    s.run(
        pl(),
        Command::Initiate {
            payment: s.d.payment(),
            tenant: TenantId::from_bytes([0x7f; 16]),
            policy: Box::new(policy("marketplace")),
            amount: usd("75.50"),
            description: "Order 1043".into(),
            roles: vec![Role::new("platform")],
            name: "Marketplace".into(),
        },
    )?;
    s.invite_join(pl(), BUYER, "buyer", "Bea Buyer")?;
    s.invite_join(pl(), SELLER, "seller", "Sol Seller")?;
    for i in 1..=2 {
        let r = format!("card-{i}");
        s.run(
            as_(BUYER, "buyer"),
            Command::SubmitFunding {
                amount: usd("75.50"),
                rail: Rail::Card,
                rail_ref: r.clone(),
            },
        )?;
        s.notice(&r, failed("card_declined"))?;
    }
    assert_eq!(s.status(), Status::Expired);
    Ok(s.vector(
        "mp_card_declined_twice_expires",
        "Marketplace: the card is declined twice, the policy's limit; the order expires.",
    ))
}

// ---------------------------------------------------------------- milestones

pub fn milestones(n: u8) -> R<Sim> {
    let mut s = Sim::new("milestone-escrow", n);
    let cl = || as_(CLIENT, "client");
    s.run(
        cl(),
        Command::Initiate {
            payment: s.d.payment(),
            tenant: TenantId::from_bytes([0x80; 16]),
            policy: Box::new(policy("milestone-escrow")),
            amount: usd("60000.00"),
            description: "Kitchen remodel, 3 milestones".into(),
            roles: vec![Role::new("client")],
            name: "Cleo Client".into(),
        },
    )?;
    s.invite_join(cl(), CONTRACTOR, "contractor", "Cody Contractor")?;
    s.invite_join(cl(), INSPECTOR, "inspector", "Ines Inspector")?;
    s.invite_join(cl(), ARBITER, "arbiter", "Ari Arbiter")?;
    s.agree(CLIENT, "client")?;
    s.agree(CONTRACTOR, "contractor")?;
    assert_eq!(s.status(), Status::AwaitingFunds);
    Ok(s)
}

pub fn ms_fund(s: &mut Sim, r: &str, amount: &str) -> R {
    s.run(
        as_(CLIENT, "client"),
        Command::SubmitFunding {
            amount: usd(amount),
            rail: Rail::Wire,
            rail_ref: r.into(),
        },
    )?;
    s.notice(r, settled())
}

pub fn ms_release(s: &mut Sim, req: u8, amount: &str) -> R {
    s.run(
        as_(CONTRACTOR, "contractor"),
        Command::RequestRelease {
            request: rid(req),
            allocations: vec![Allocation {
                party: pid(CONTRACTOR),
                amount: usd(amount),
            }],
        },
    )
}

pub fn ms_two_of_three() -> R<Vector> {
    let mut s = milestones(40)?;
    ms_fund(&mut s, "wire-1", "30000.00")?;
    assert_eq!(s.status(), Status::AwaitingFunds, "partially funded");
    ms_fund(&mut s, "wire-2", "30000.00")?;
    assert_eq!(s.status(), Status::Held);
    s.rejects(
        as_(CONTRACTOR, "contractor"),
        Command::RequestRelease {
            request: rid(1),
            allocations: vec![Allocation {
                party: pid(CONTRACTOR),
                amount: usd("30000.00"),
            }],
        },
        "limit_exceeded",
    );
    ms_release(&mut s, 1, "20000.00")?;
    let fee = &s.state().requests[&rid(1)].fees[0];
    assert_eq!(
        fee.amount.amount_string(),
        "125.00",
        "0.5% + 25.00 fixed on the first release"
    );
    approve(&mut s, 1, CLIENT, "client")?;
    assert_eq!(s.status(), Status::AwaitingApprovals, "1 of 2");
    approve(&mut s, 1, INSPECTOR, "inspector")?;
    assert_eq!(s.status(), Status::Disbursing);
    disburse(&mut s, 1, as_(ARBITER, "arbiter"), "m1")?;
    s.notice("m1", settled())?;
    ms_release(&mut s, 2, "20000.00")?;
    assert_eq!(
        s.state().requests[&rid(2)].fees[0].amount.amount_string(),
        "100.00"
    );
    approve(&mut s, 2, ARBITER, "arbiter")?;
    approve(&mut s, 2, INSPECTOR, "inspector")?;
    disburse(&mut s, 2, as_(ARBITER, "arbiter"), "m2")?;
    s.notice("m2", settled())?;
    assert_eq!(s.balance(Account::Escrow), "19775.00");
    assert_eq!(s.status(), Status::Held);
    Ok(s.vector(
        "ms_two_of_three",
        "Milestone escrow funded in two wires; two milestones released with 2-of-3 approvals (client+inspector, then arbiter+inspector), capped per release, payer-borne fee.",
    ))
}

pub fn ms_deadline_expires_partial() -> R<Vector> {
    let mut s = milestones(41)?;
    ms_fund(&mut s, "wire-1", "10000.00")?;
    s.hours(24 * 11);
    s.tick()?;
    assert!(s.state().expired);
    assert_eq!(
        s.status(),
        Status::Refunding,
        "the partial funding is refunded"
    );
    let (id, _) = s.state().open_request().expect("refund");
    s.run(
        as_(ARBITER, "arbiter"),
        Command::SubmitDisbursement {
            request: id,
            rail: Rail::Wire,
            rail_ref: "refund-1".into(),
        },
    )?;
    s.notice("refund-1", settled())?;
    assert_eq!(s.status(), Status::Expired);
    Ok(s.vector(
        "ms_deadline_expires_partial",
        "Milestone escrow: the 10-day deadline passes with a partial funding; the payment expires and the partial funding is refunded.",
    ))
}

pub fn ms_arbiter_resolves() -> R<Vector> {
    let mut s = milestones(42)?;
    ms_fund(&mut s, "wire-1", "60000.00")?;
    ms_release(&mut s, 1, "25000.00")?;
    s.run(
        as_(CLIENT, "client"),
        Command::Deny {
            request: rid(1),
            reason: "work incomplete".into(),
        },
    )?;
    s.run(
        as_(CONTRACTOR, "contractor"),
        Command::OpenDispute {
            dispute: rid(9),
            reason: "work is complete".into(),
        },
    )?;
    s.run(
        as_(ARBITER, "arbiter"),
        Command::ResolveDispute {
            dispute: rid(9),
            outcome: DisputeOutcome::Release,
            request: Some(rid(2)),
            allocations: vec![Allocation {
                party: pid(CONTRACTOR),
                amount: usd("15000.00"),
            }],
            amount: None,
            note: "60% of the milestone is done".into(),
        },
    )?;
    assert_eq!(s.status(), Status::Disbursing);
    assert_eq!(
        s.state().requests[&rid(1)].status,
        trustfold_core::state::RequestStatus::Cancelled
    );
    Ok(s.vector(
        "ms_arbiter_resolves",
        "Milestone escrow: the client denies a milestone, the contractor disputes, the arbiter releases part of it.",
    ))
}

pub fn ms_attempts_exhausted() -> R<Vector> {
    let mut s = milestones(43)?;
    for i in 1..=3 {
        let r = format!("ach-{i}");
        s.run(
            as_(CLIENT, "client"),
            Command::SubmitFunding {
                amount: usd("60000.00"),
                rail: Rail::Ach,
                rail_ref: r.clone(),
            },
        )?;
        s.notice(&r, failed("R01"))?;
    }
    assert_eq!(s.status(), Status::Expired);
    Ok(s.vector(
        "ms_attempts_exhausted",
        "Three failed ACH attempts: the payment expires.",
    ))
}

// ---------------------------------------------------------------- schema evolution

/// A history whose ParticipantInvited was written with schema v1 (`role`, not `roles`).
pub fn upcast_v1() -> R<Vector> {
    let s = earnest(50)?;
    let envs: Vec<Envelope> = s.d.envelopes().to_vec();
    let mut sealed: Vec<SealedEvent> = Vec::new();
    let mut prev = trustfold_core::hash::Hash::ZERO;
    for env in envs {
        let mut env = env;
        env.prev = prev;
        let mut body = env.canonical_json();
        if let Event::ParticipantInvited(ParticipantInvited { roles, .. }) = &env.event {
            // Rewrite to the v1 shape, as an old server would have written it.
            let mut v: serde_json::Value = serde_json::from_slice(&body).expect("json");
            v["v"] = 1.into();
            let data = v["data"].as_object_mut().expect("data");
            data.remove("roles");
            data.insert("role".into(), serde_json::Value::String(roles[0].0.clone()));
            body = serde_json::to_vec(&v).expect("json");
            // serde_json::Value orders keys alphabetically; restore the canonical prefix.
            body = reorder_prev_first(&body);
        }
        if let Event::PaymentInitiated(_) = &env.event {
            // Opened by that old server too (before `PaymentInitiated` v2, whose
            // payments hold no superseded event versions).
            body = super::forge::opened_as_v1(String::from_utf8(body).expect("utf-8")).into_bytes();
        }
        let hash = trustfold_core::hash::Hash::of(&body);
        prev = hash;
        sealed.push(SealedEvent { hash, body });
    }
    let history = history::write(&sealed);
    let state = trustfold_core::fold::replay(&history)?;
    assert_eq!(state.status, Status::AwaitingFunds);
    Ok(Vector {
        name: "upcast_v1_participant_invited".into(),
        description: "Participants were invited under schema v1 (a single `role`); the history still verifies and replays after upcasting to v2 (`roles`).".into(),
        policy: "earnest-money".into(),
        head: Some(SignedHead::sign(state.payment, state.version, state.head, &KEY_SECRET)),
        history,
    })
}

fn reorder_prev_first(body: &[u8]) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_slice(body).expect("json");
    let order = [
        "prev",
        "stream",
        "seq",
        "id",
        "type",
        "v",
        "at",
        "actor",
        "causation",
        "correlation",
        "data",
    ];
    let mut out = b"{".to_vec();
    for (i, k) in order.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend(serde_json::to_vec(k).expect("key"));
        out.push(b':');
        out.extend(serde_json::to_vec(&v[*k]).expect("value"));
    }
    out.push(b'}');
    out
}

// ---------------------------------------------------------------- tampering

fn base_for_tampering() -> R<Sim> {
    let mut s = earnest_held(60)?;
    release_all_to_seller(&mut s, 1, "5000.00", "out-1")?;
    Ok(s)
}

fn with_records(
    s: &Sim,
    name: &str,
    description: &str,
    f: impl FnOnce(&mut Vec<SealedEvent>),
) -> Vector {
    let mut v = s.vector(name, description);
    let mut sealed = s.d.sealed().to_vec();
    f(&mut sealed);
    v.history = history::write(&sealed);
    v
}

fn replace_in(body: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(body.to_vec()).expect("utf8");
    assert!(text.contains(from), "{from} not in body");
    text.replacen(from, to, 1).into_bytes()
}

pub fn tampered() -> R<Vec<Vector>> {
    let s = base_for_tampering()?;
    let funding_idx =
        s.d.envelopes()
            .iter()
            .position(|e| matches!(e.event, Event::FundingSubmitted(_)))
            .expect("funding");
    let mut out = vec![
        with_records(
            &s,
            "tampered_altered_amount",
            "The amount of the funding event was changed; its hash no longer matches.",
            |r| {
                r[funding_idx].body = replace_in(&r[funding_idx].body, "5000.00", "500.00");
            },
        ),
        with_records(
            &s,
            "tampered_altered_and_rehashed",
            "An event was altered and its hash recomputed: the next event's prev exposes it.",
            |r| {
                r[funding_idx].body = replace_in(&r[funding_idx].body, "5000.00", "500.00");
                r[funding_idx].hash = trustfold_core::hash::Hash::of(&r[funding_idx].body);
            },
        ),
        with_records(
            &s,
            "tampered_removed_event",
            "An event (the buyer's approval) was removed from the middle.",
            |r| {
                let i = r.len() - 4;
                r.remove(i);
            },
        ),
        with_records(
            &s,
            "tampered_inserted_event",
            "An event was inserted (a copy of an earlier one).",
            |r| {
                let e = r[3].clone();
                r.insert(8, e);
            },
        ),
        with_records(
            &s,
            "tampered_reordered_events",
            "Two adjacent events were swapped.",
            |r| {
                r.swap(5, 6);
            },
        ),
        with_records(
            &s,
            "tampered_removed_first",
            "The first event was removed.",
            |r| {
                r.remove(0);
            },
        ),
    ];
    // Truncated at the end: the chain is intact but the signed head proves events missing.
    out.push(with_records(
        &s,
        "tampered_truncated_end",
        "The last two events were cut off; the chain verifies, the signed head does not.",
        |r| {
            r.truncate(r.len() - 2);
        },
    ));
    // A head signed by another key.
    let mut v = s.vector(
        "bad_head_signature",
        "A signed head from a key other than the server's.",
    );
    let st = s.state();
    v.head = Some(SignedHead::sign(
        st.payment,
        st.version,
        st.head,
        &[0x13; 32],
    ));
    out.push(v);
    // Hash chain intact, but an event the rules forbid: funds made available twice.
    let mut sealed = s.d.sealed().to_vec();
    let mut envs: Vec<Envelope> = s.d.envelopes().to_vec();
    let avail = envs
        .iter()
        .find_map(|e| match &e.event {
            Event::FundsAvailable(f) => Some(f.clone()),
            _ => None,
        })
        .expect("available");
    let last = envs.last().expect("events").clone();
    let forged = Envelope {
        prev: last.prev,
        seq: last.seq + 1,
        id: EventId::from_bytes([0xee; 16]),
        event: Event::FundsAvailable(FundsAvailable { ..avail }),
        ..last
    };
    let mut forged = forged;
    forged.prev = sealed.last().expect("sealed").hash;
    forged.actor = Actor::rail();
    let fs = forged.seal();
    envs.push(forged);
    sealed.push(fs);
    let mut v = s.vector(
        "invalid_event_funds_available_twice",
        "A correctly chained and signed history with an event the rules forbid (the same funds made available twice).",
    );
    v.history = history::write(&sealed);
    let h = sealed.last().expect("sealed").hash;
    v.head = Some(SignedHead::sign(st.payment, st.version + 1, h, &KEY_SECRET));
    out.push(v);
    // Chained and signed, but the last event is stamped before the one it follows.
    let mut sealed = s.d.sealed().to_vec();
    let mut last = s.d.envelopes().last().expect("events").clone();
    let before = s.d.envelopes()[s.d.envelopes().len() - 2].at;
    last.at = before.add_hours(-1);
    let fs = last.seal();
    let h = fs.hash;
    *sealed.last_mut().expect("sealed") = fs;
    let mut v = s.vector(
        "invalid_event_time_backwards",
        "A correctly chained and signed history whose last event is stamped an hour before the event it follows.",
    );
    v.history = history::write(&sealed);
    v.head = Some(SignedHead::sign(st.payment, st.version, h, &KEY_SECRET));
    out.push(v);
    Ok(out)
}

/// Every vector, in a stable order.
pub fn all() -> R<Vec<Vector>> {
    let mut v = vec![
        em_happy_wire()?,
        em_ach_good_funds()?,
        em_bank_holidays()?,
        em_ach_failure_then_wire()?,
        em_return_r01_after_settlement()?,
        em_return_r02_in_clearing()?,
        em_return_before_settlement_notice()?,
        em_duplicate_notices()?,
        em_late_return_recovered()?,
        em_late_return_written_off()?,
        em_partial_releases()?,
        em_release_rail_failure()?,
        em_approval_withdrawn()?,
        em_allocations_amended()?,
        em_approval_denied()?,
        em_dispute_before_disbursement()?,
        em_dispute_during_disbursement()?,
        em_dispute_over_mandated_release()?,
        em_cancel_before_funding()?,
        em_cancel_after_funds()?,
        mk_cancel_after_funds()?,
        em_deadline_flagged()?,
        em_concurrent_conflict()?,
        em_notice_never_arrives()?,
        em_settlement_before_initiation()?,
        em_duplicate_commands()?,
        em_participant_removed()?,
        em_reversal_correction()?,
        em_late_return_payout_reversed()?,
        em_wire_short_settled()?,
        mp_auto_release()?,
        mp_dispute_blocks_auto_release()?,
        mp_buyer_confirms()?,
        mp_refund_without_approval()?,
        mp_card_declined_twice_expires()?,
        ms_two_of_three()?,
        ms_deadline_expires_partial()?,
        ms_arbiter_resolves()?,
        ms_attempts_exhausted()?,
        upcast_v1()?,
    ];
    v.extend(tampered()?);
    Ok(v)
}
