//! The state of one payment: what the fold of its events yields.
//!
//! Serialized to JSON deterministically (ordered maps, amounts at the currency's
//! scale), so the same history gives the same bytes on every platform.

use serde::Serialize;

use crate::event::{Allocation, DisputeOutcome, FundingMethod};
use crate::hash::Hash;
use crate::id::{LegId, PartyId, PaymentId, RequestId, TenantId};
use crate::json::write::{self, WriteJson};
use crate::ledger::{Account, Ledger};
use crate::map::SortedMap;
use crate::money::Money;
use crate::policy::{BorneBy, Policy, Rail, Role};
use crate::time::Timestamp;

/// Where a payment is in its life. See `docs/ARCHITECTURE.md` for the diagram.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, PartialOrd, Ord)]
pub enum Status {
    /// Opened; required parties have not all joined.
    Draft,
    /// Everyone required joined; waiting for agreement to the terms.
    AwaitingAgreement,
    /// Agreed; waiting for (the rest of) the funds.
    AwaitingFunds,
    /// Funding sent on a rail, not settled.
    FundingInFlight,
    /// Settled, not yet good funds.
    Funded,
    /// Fully funded and held in escrow.
    Held,
    /// A release or refund request waits for approvals.
    AwaitingApprovals,
    /// A release is authorized or on a rail.
    Disbursing,
    /// A refund is authorized or on a rail.
    Refunding,
    /// A dispute is open: nothing leaves escrow.
    Disputed,
    /// All funds released. Terminal (but for late returns).
    Completed,
    /// All funds refunded. Terminal (but for late returns).
    Refunded,
    /// Funding deadline missed or attempts exhausted. Terminal.
    Expired,
    /// Cancelled. Terminal.
    Cancelled,
    /// A late return left a shortfall in `loss:returns`.
    Shortfall,
    /// A shortfall was recovered. Terminal.
    Recovered,
    /// A shortfall was written off. Terminal.
    WrittenOff,
    /// Archived. Terminal.
    Closed,
}

impl Status {
    /// Every status, in the order of a payment's life.
    pub const ALL: [Status; 18] = [
        Status::Draft,
        Status::AwaitingAgreement,
        Status::AwaitingFunds,
        Status::FundingInFlight,
        Status::Funded,
        Status::Held,
        Status::AwaitingApprovals,
        Status::Disbursing,
        Status::Refunding,
        Status::Disputed,
        Status::Completed,
        Status::Refunded,
        Status::Expired,
        Status::Cancelled,
        Status::Shortfall,
        Status::Recovered,
        Status::WrittenOff,
        Status::Closed,
    ];

    /// The status named `name` exactly as written in JSON.
    ///
    /// ```
    /// use trustfold_core::state::Status;
    /// assert_eq!(Status::named("AwaitingFunds"), Some(Status::AwaitingFunds));
    /// assert_eq!(Status::named("awaiting_funds"), None);
    /// assert!(Status::ALL.iter().all(|s| Status::named(s.as_str()) == Some(*s)));
    /// ```
    pub fn named(name: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The status's name as written in JSON (`"AwaitingFunds"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "Draft",
            Status::AwaitingAgreement => "AwaitingAgreement",
            Status::AwaitingFunds => "AwaitingFunds",
            Status::FundingInFlight => "FundingInFlight",
            Status::Funded => "Funded",
            Status::Held => "Held",
            Status::AwaitingApprovals => "AwaitingApprovals",
            Status::Disbursing => "Disbursing",
            Status::Refunding => "Refunding",
            Status::Disputed => "Disputed",
            Status::Completed => "Completed",
            Status::Refunded => "Refunded",
            Status::Expired => "Expired",
            Status::Cancelled => "Cancelled",
            Status::Shortfall => "Shortfall",
            Status::Recovered => "Recovered",
            Status::WrittenOff => "WrittenOff",
            Status::Closed => "Closed",
        }
    }

    /// Terminal states accept no commands except the recording of a late return
    /// (and closing, for those not yet closed).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Completed
                | Status::Refunded
                | Status::Expired
                | Status::Cancelled
                | Status::Recovered
                | Status::WrittenOff
                | Status::Closed
        )
    }

    /// Before funds are held.
    pub fn is_before_held(self) -> bool {
        matches!(
            self,
            Status::Draft
                | Status::AwaitingAgreement
                | Status::AwaitingFunds
                | Status::FundingInFlight
                | Status::Funded
        )
    }
}

/// A party in this payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Participant {
    /// Its roles.
    pub roles: Vec<Role>,
    /// Display name.
    pub name: String,
    /// Contact e-mail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Has joined.
    pub joined: bool,
    /// Has agreed to the current terms.
    pub agreed: bool,
    /// Was removed.
    pub removed: bool,
}

impl Participant {
    /// Active (joined and not removed) and holding `role`.
    pub fn acts_as(&self, role: &Role) -> bool {
        !self.removed && self.joined && self.roles.contains(role)
    }
}

/// Where one funding transfer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FundingStatus {
    /// Sent, not settled.
    Submitted,
    /// Settled, in clearing.
    Settled,
    /// Good funds in escrow.
    Available,
    /// Failed before settlement.
    Failed,
    /// Returned after settlement.
    Returned,
}

/// One funding transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FundingAttempt {
    /// Its ledger leg.
    pub leg: LegId,
    /// Amount.
    pub amount: Money,
    /// Rail.
    pub rail: Rail,
    /// The rail's reference.
    pub rail_ref: String,
    /// Phase.
    pub status: FundingStatus,
    /// When submitted.
    pub submitted_at: Timestamp,
    /// When settled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settled_at: Option<Timestamp>,
    /// What of it did not arrive, when the rail settled less than the transfer (a
    /// wire whose banks on the way took their fees): it went back out of clearing, and
    /// the payer funds it again. See [`FundingAttempt::settled_amount`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub short: Option<Money>,
    /// Failure or return code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// What the rail returned of it, when a return took only part (`code` says why):
    /// the rest still counts, as [`FundingAttempt::kept`]. A whole return sets the
    /// status to `returned` instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub returned: Option<Money>,
}

impl FundingAttempt {
    /// What the rail settled of this funding: its amount less what did not arrive
    /// ([`FundingAttempt::short`]).
    pub fn settled_amount(&self) -> Money {
        match &self.short {
            Some(s) => self.amount.checked_sub(s).unwrap_or(self.amount),
            None => self.amount,
        }
    }

    /// Whether what a short settlement of it did not bring is still owed: it settled
    /// short and was not returned whole.
    pub fn counts_short(&self) -> bool {
        self.short.is_some()
            && matches!(
                self.status,
                FundingStatus::Settled | FundingStatus::Available
            )
    }

    /// What of this funding stays with the payment: what settled of it less a partial
    /// return.
    ///
    /// ```
    /// # use trustfold_core::prelude::*;
    /// # use trustfold_core::state::{FundingAttempt, FundingStatus};
    /// let usd = |s: &str| Money::parse(s, Currency::new("USD").expect("usd")).expect("amount");
    /// let mut a = FundingAttempt {
    ///     leg: LegId::from_bytes([1; 16]),
    ///     amount: usd("5000.00"),
    ///     rail: Rail::Ach,
    ///     rail_ref: "ach-1".into(),
    ///     status: FundingStatus::Available,
    ///     submitted_at: Timestamp::from_unix_millis(0),
    ///     settled_at: None,
    ///     short: None,
    ///     code: None,
    ///     returned: None,
    /// };
    /// assert_eq!(a.kept(), usd("5000.00"));
    /// a.returned = Some(usd("1000.00"));
    /// assert_eq!(a.kept(), usd("4000.00"));
    /// a.short = Some(usd("25.00"));
    /// assert_eq!(a.settled_amount(), usd("4975.00"));
    /// assert_eq!(a.kept(), usd("3975.00"));
    /// ```
    pub fn kept(&self) -> Money {
        let settled = self.settled_amount();
        match &self.returned {
            Some(r) => settled.checked_sub(r).unwrap_or(settled),
            None => settled,
        }
    }
}

/// Funding facts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Funding {
    /// How the payer pays.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<FundingMethod>,
    /// Funding deadline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Timestamp>,
    /// The deadline passed without full funding.
    pub deadline_missed: bool,
    /// Failed or returned attempts so far.
    pub failed_attempts: u32,
    /// Every transfer, in order.
    pub attempts: Vec<FundingAttempt>,
}

/// Release or refund.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// Funds to payees.
    Release,
    /// Funds back to the payer.
    Refund,
}

/// Where a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    /// Waiting for approvals.
    AwaitingApprovals,
    /// Quorum reached; legs pending.
    Authorized,
    /// Sent on a rail.
    Submitted,
    /// Settled: legs posted.
    Settled,
    /// The rail failed it: legs voided.
    Failed,
    /// Quorum became impossible.
    Denied,
    /// Cancelled before reaching a rail.
    Cancelled,
}

impl RequestStatus {
    /// Still open (not settled, failed, denied or cancelled).
    pub fn is_open(self) -> bool {
        matches!(
            self,
            RequestStatus::AwaitingApprovals | RequestStatus::Authorized | RequestStatus::Submitted
        )
    }
}

/// Why a request needs no approvals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mandate {
    /// The policy's automatic release after the holding period.
    AutoRelease,
    /// Refund of everything held after the payment was cancelled.
    Cancellation,
    /// Refund of everything held after the payment expired.
    Expiry,
    /// Carries out a dispute resolution.
    DisputeResolution,
}

/// A fee on a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FeeLine {
    /// Fee rule name.
    pub fee: String,
    /// Receiving party.
    pub party: PartyId,
    /// Amount.
    pub amount: Money,
    /// Who bears it.
    pub borne_by: BorneBy,
}

/// A release or refund request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Request {
    /// Release or refund.
    pub kind: RequestKind,
    /// Phase.
    pub status: RequestStatus,
    /// Payee allocations (releases).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allocations: Vec<Allocation>,
    /// Amount (refunds: to the payer; releases: sum of allocations).
    pub amount: Money,
    /// Fees.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fees: Vec<FeeLine>,
    /// What approvals bind to.
    pub allocations_hash: Hash,
    /// Set when the request is authorized without approvals, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mandate: Option<Mandate>,
    /// Approvals by party (the hash each approved).
    pub approvals: SortedMap<PartyId, Hash>,
    /// Denials by party.
    #[serde(skip_serializing_if = "SortedMap::is_empty")]
    pub denials: SortedMap<PartyId, String>,
    /// Who asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<PartyId>,
    /// When.
    pub requested_at: Timestamp,
    /// Its legs once authorized.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub legs: Vec<LegId>,
    /// Rail reference once submitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rail_ref: Option<String>,
    /// Failure code or reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// A dispute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Dispute {
    /// Still open.
    pub open: bool,
    /// Why it was opened.
    pub reason: String,
    /// Who opened it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opened_by: Option<PartyId>,
    /// When.
    pub opened_at: Timestamp,
    /// How it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<DisputeOutcome>,
    /// The request carrying out the outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution_request: Option<RequestId>,
}

/// What a rail reference points at (for de-duplicating notices).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RailTarget {
    /// A funding leg.
    Funding(LegId),
    /// A release or refund.
    Disbursement(RequestId),
    /// A shortfall recovery.
    Recovery,
}

/// The pinned policy as shown in state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyPin {
    /// Policy id.
    pub id: String,
    /// Version.
    pub version: u32,
    /// Hash of its canonical JSON.
    pub hash: Hash,
}

/// An event a command owes after one it emitted (see [`PaymentState`]'s `due`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Due {
    /// The command (the events' causation).
    pub causation: uuid::Uuid,
    /// Who acted.
    pub actor: crate::envelope::Actor,
    /// What must come next.
    pub event: crate::event::EventType,
    /// For the rail's cancellation: the escrow available before it, which the return
    /// must exceed, out of funds already available.
    pub return_over: Option<crate::money::Money>,
}

/// The state of one payment. Built only by folding events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PaymentState {
    /// The payment.
    pub payment: PaymentId,
    /// Its tenant.
    pub tenant: TenantId,
    /// Sequence number of the last event applied.
    pub version: u64,
    /// Hash of the last event applied.
    pub head: Hash,
    /// Lifecycle state.
    pub status: Status,
    /// The pinned policy.
    pub policy: PolicyPin,
    /// The payment's amount.
    pub amount: Money,
    /// What it is for.
    pub description: String,
    /// Who opened it.
    pub initiator: PartyId,
    /// When it was opened.
    pub created_at: Timestamp,
    /// When the last event happened.
    pub updated_at: Timestamp,
    /// Hash of the terms parties agree to.
    pub terms_hash: Hash,
    /// Participants.
    pub participants: SortedMap<PartyId, Participant>,
    /// Funding.
    pub funding: Funding,
    /// When funds first became fully held (auto-release counts from here; a return
    /// and a new funding leave it as it is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_since: Option<Timestamp>,
    /// The ledger.
    pub ledger: Ledger,
    /// Release and refund requests.
    pub requests: SortedMap<RequestId, Request>,
    /// Disputes.
    pub disputes: SortedMap<RequestId, Dispute>,
    /// Rail references seen.
    pub rail_refs: SortedMap<String, RailTarget>,
    /// Fixed fees already charged: a fixed fee is charged on the first release that
    /// settles (one that fails or is pulled back leaves it for the next).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fixed_fees_charged: Vec<String>,
    /// Legs a `ReversalRecorded` reversed (each at most once).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reversed_legs: Vec<LegId>,
    /// Rail notices about transfers not recorded yet, by rail reference, in arrival
    /// order (`RailNoticeHeld`); applied when the transfer is recorded.
    #[serde(skip_serializing_if = "SortedMap::is_empty")]
    pub held_notices: SortedMap<String, Vec<crate::command::RailOutcome>>,
    /// The payment was cancelled (funds, if any, are refunded).
    pub cancelled: bool,
    /// The payment expired (funds, if any, are refunded).
    pub expired: bool,
    /// The payment was closed.
    pub closed: bool,
    /// How a shortfall ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shortfall_outcome: Option<Status>,
    /// The kind of the last settled request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_settled: Option<RequestKind>,
    /// The full pinned policy (not serialized: see `policy` for its id and hash).
    #[serde(skip)]
    pub policy_doc: std::sync::Arc<Policy>,
    /// The schema version of the payment's `PaymentInitiated`: from 2 the fold also
    /// checks `role_locked`, `mandated_request`, `all_of` by distinct parties and that
    /// no event is at a superseded version (not serialized: the history says).
    #[serde(skip)]
    pub(crate) opened_under: u16,
    /// The event that must come next, of the same command: after a mandated
    /// request's cancellation, the party's `DisputeOpened` or the rail's
    /// `FundingReturned` (not serialized: a finished command never leaves it set).
    #[serde(skip)]
    pub(crate) due: Option<Due>,
}

impl PaymentState {
    /// Parties active (joined, not removed) holding `role`, in id order.
    pub fn parties_with(&self, role: &Role) -> Vec<PartyId> {
        self.participants
            .iter()
            .filter(|(_, p)| p.acts_as(role))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Escrow's available balance (posted minus reserved by pending releases).
    pub fn escrow_available(&self) -> Money {
        self.ledger.available(&Account::Escrow)
    }

    /// The open request, if any (at most one is open at a time).
    pub fn open_request(&self) -> Option<(RequestId, &Request)> {
        self.requests
            .iter()
            .find(|(_, r)| r.status.is_open())
            .map(|(id, r)| (*id, r))
    }

    /// The open dispute, if any.
    pub fn open_dispute(&self) -> Option<(RequestId, &Dispute)> {
        self.disputes
            .iter()
            .find(|(_, d)| d.open)
            .map(|(id, d)| (*id, d))
    }

    /// Good funds held for this payment so far (available funding not returned).
    pub fn funded_total(&self) -> Money {
        self.funding
            .attempts
            .iter()
            .filter(|a| a.status == FundingStatus::Available)
            .map(FundingAttempt::kept)
            .fold(self.no_money(), sum)
    }

    /// Whether a release was paid out (settled).
    pub fn paid_out(&self) -> bool {
        self.requests
            .values()
            .any(|r| r.kind == RequestKind::Release && r.status == RequestStatus::Settled)
    }

    /// The funding attempts submitted by `deadline`.
    pub(crate) fn sent_by(&self, deadline: Timestamp) -> impl Iterator<Item = &FundingAttempt> {
        self.funding
            .attempts
            .iter()
            .filter(move |a| a.submitted_at <= deadline)
    }

    /// Whether the payer sent the whole amount by the funding deadline (whatever came
    /// of it since: a return, a short settlement); true without a deadline.
    pub fn funded_in_time(&self) -> bool {
        let Some(deadline) = self.funding.deadline else {
            return true;
        };
        let sent = self
            .sent_by(deadline)
            .filter(|a| a.status != FundingStatus::Failed)
            .map(|a| a.amount)
            .fold(self.no_money(), sum);
        sent >= self.amount
    }

    /// Whether money went back to the payer after the last release that was paid out
    /// was authorized (when it took its money): a return (out of escrow or clearing, or
    /// as a loss), or what a short settlement did not bring. A payment then short of its
    /// amount with nothing held awaits funds again; one whose last release took all it
    /// held is finished.
    fn returned_after_payout(&self) -> bool {
        use crate::ledger::LegStatus;
        let posted_at = |l: &crate::ledger::Leg| l.resolved_seq.unwrap_or(l.opened_seq);
        let Some(payout) = self
            .ledger
            .legs
            .iter()
            .filter(|l| {
                l.status == LegStatus::Posted
                    && l.from == Account::Escrow
                    && matches!(l.to, Account::Payee(_) | Account::Fee(_))
            })
            .map(|l| l.opened_seq)
            .max()
        else {
            return false;
        };
        self.ledger.legs.iter().any(|l| {
            l.status == LegStatus::Posted
                && l.group.is_none()
                && l.to == Account::ExternalPayer
                && posted_at(l) > payout
        })
    }

    /// Whether all that is still to be funded is what short settlements did not bring
    /// of fundings sent by the deadline (banks' fees on the way): the payer funded in
    /// time, so the top-up gets the policy's deadline span again from the settlement
    /// (see `decide`'s funding deadline).
    pub fn owes_only_shorts(&self) -> bool {
        let Some(deadline) = self.funding.deadline else {
            return false;
        };
        let shorts = self
            .sent_by(deadline)
            .filter(|a| a.counts_short())
            .filter_map(|a| a.short)
            .fold(self.no_money(), sum);
        self.remaining_to_fund()
            .is_ok_and(|r| r.is_positive() && r <= shorts)
    }

    /// What is still to be funded: the amount less what is available and what is on
    /// its way (what a new funding may be at most, for `decide` and the fold alike).
    pub fn remaining_to_fund(&self) -> crate::error::Result<Money> {
        self.amount
            .checked_sub(&self.funded_total())?
            .checked_sub(&self.funding_in_progress())
    }

    /// Money submitted or settled but not yet available (or failed/returned).
    pub fn funding_in_progress(&self) -> Money {
        self.funding
            .attempts
            .iter()
            .filter(|a| matches!(a.status, FundingStatus::Submitted | FundingStatus::Settled))
            .map(FundingAttempt::kept)
            .fold(self.no_money(), sum)
    }

    /// Zero in the payment's currency.
    fn no_money(&self) -> Money {
        Money::zero(self.amount.currency())
    }

    /// The state serialized as canonical JSON bytes: compact, members in declaration
    /// order, maps in key order. Written by the core's own writer (`json::write`),
    /// byte for byte what `serde_json::to_vec` writes from the `Serialize` impl, in
    /// far less code and time than the serde path in WebAssembly.
    pub fn to_json(&self) -> Vec<u8> {
        // The earnest-money states of the fold benchmark average about 4 KB.
        let mut out = Vec::with_capacity(4096);
        self.write_json(&mut out);
        out
    }

    /// The state serialized as indented JSON (for people).
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The lifecycle state implied by the facts folded so far.
    pub(crate) fn derive_status(&self) -> Status {
        self.status_waiting_for_clearing(true)
    }

    /// Whether the payment counted as finished when it was recorded, before a payment
    /// with funding still clearing or on a rail stopped counting as `Completed` or
    /// `Refunded` (such a payment may have been closed then, and its history still
    /// folds).
    pub(crate) fn finished_as_recorded(&self) -> bool {
        self.status_waiting_for_clearing(false).is_terminal()
    }

    fn status_waiting_for_clearing(&self, wait: bool) -> Status {
        // A late return (R10 comes up to 60 days later) reopens even a closed payment as
        // a shortfall, to be recovered or written off; closed again after that.
        let loss = self.ledger.balance(&Account::LossReturns).posted;
        if loss.amount().is_sign_negative() && !loss.is_zero() {
            return Status::Shortfall;
        }
        if self.closed {
            return Status::Closed;
        }
        let escrow = self.ledger.balance(&Account::Escrow);
        let clearing = self.ledger.balance(&Account::Clearing);
        let holds_money = !escrow.posted.is_zero()
            || !clearing.posted.is_zero()
            || !clearing.pending_in.is_zero();
        if let Some(s) = self.shortfall_outcome {
            // A shortfall's end is the payment's end only while it holds nothing: money
            // back in escrow after it (a payout the payee's bank sent back) is held, to
            // be paid out or refunded (as recorded before, that money stayed under the
            // terminal status, where no command could move it).
            if !(wait && holds_money) {
                return s;
            }
        }
        if self.open_dispute().is_some() {
            return Status::Disputed;
        }
        if let Some((_, r)) = self.open_request() {
            return match (r.status, r.kind) {
                (RequestStatus::AwaitingApprovals, _) => Status::AwaitingApprovals,
                (_, RequestKind::Refund) => Status::Refunding,
                (_, RequestKind::Release) => Status::Disbursing,
            };
        }
        if (self.cancelled || self.expired) && !holds_money {
            return if self.cancelled {
                Status::Cancelled
            } else {
                Status::Expired
            };
        }
        if self.cancelled || self.expired {
            // Money is still here: it must be refunded (a failed refund leaves it held).
            return if clearing.posted.is_zero() && clearing.pending_in.is_zero() {
                Status::Held
            } else if !clearing.pending_in.is_zero() {
                Status::FundingInFlight
            } else {
                Status::Funded
            };
        }
        let fully_funded = self.funded_total() >= self.amount;
        // Paid out in part, then the rest of the funding came back: the payment is short
        // of its amount with nothing held, so it awaits funds again (the payer funds the
        // rest, or the payment is cancelled) rather than counting as `Completed` (as
        // recorded before, when no more could be funded). One whose last move paid out
        // all it held (a return before it, or a partly funded payment a dispute paid
        // out) stays `Completed`.
        let short_after_release = wait
            && !fully_funded
            && escrow.posted.is_zero()
            && self.last_settled == Some(RequestKind::Release)
            && self.returned_after_payout();
        if (fully_funded || self.last_settled.is_some()) && !short_after_release {
            if !escrow.posted.is_zero() {
                return Status::Held;
            }
            // Finished only when no money is still on its way in: funding clearing or
            // on a rail after a release or refund was paid out (say, one a dispute
            // decided) is still to be made available and paid out in turn.
            let coming = wait && (!clearing.posted.is_zero() || !clearing.pending_in.is_zero());
            match self.last_settled {
                Some(RequestKind::Refund) if !coming => return Status::Refunded,
                Some(RequestKind::Release) if !coming => return Status::Completed,
                _ => {}
            }
        }
        if self
            .funding
            .attempts
            .iter()
            .any(|a| a.status == FundingStatus::Submitted)
        {
            return Status::FundingInFlight;
        }
        if self
            .funding
            .attempts
            .iter()
            .any(|a| a.status == FundingStatus::Settled)
        {
            return Status::Funded;
        }
        // Before funding: everyone required joined? everyone required agreed?
        let policy = &self.policy_doc;
        let all_joined = policy
            .roles
            .iter()
            .filter(|(_, rule)| rule.required)
            .all(|(role, _)| self.participants.values().any(|p| p.acts_as(role)));
        if !all_joined {
            return Status::Draft;
        }
        if !self.all_agreed() {
            return Status::AwaitingAgreement;
        }
        Status::AwaitingFunds
    }

    /// Every active party holding an agreement role has agreed.
    pub fn all_agreed(&self) -> bool {
        let policy = &self.policy_doc;
        policy.agreement.iter().all(|role| {
            let mut held = false;
            for p in self.participants.values() {
                if p.acts_as(role) {
                    if !p.agreed {
                        return false;
                    }
                    held = true;
                }
            }
            held
        })
    }
}

// ---------------------------------------------------------------------------
// Canonical JSON: the core's writer, member for member what the serde derives
// above write (declaration order, the same `skip_serializing_if`s). A field added
// to a struct here must be added to its `write_json` too: the `state_json` tests
// compare the two on every golden vector and on generated states.
// ---------------------------------------------------------------------------

impl WriteJson for Status {
    fn write_json(&self, out: &mut Vec<u8>) {
        write::ascii(out, self.as_str());
    }
}

impl WriteJson for Participant {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        write::key(out, "roles");
        self.roles.write_json(out);
        write::key(out, "name");
        write::string(out, &self.name);
        write::opt(out, "email", &self.email);
        write::key(out, "joined");
        write::boolean(out, self.joined);
        write::key(out, "agreed");
        write::boolean(out, self.agreed);
        write::key(out, "removed");
        write::boolean(out, self.removed);
        out.push(b'}');
    }
}

impl WriteJson for FundingStatus {
    fn write_json(&self, out: &mut Vec<u8>) {
        write::ascii(
            out,
            match self {
                FundingStatus::Submitted => "submitted",
                FundingStatus::Settled => "settled",
                FundingStatus::Available => "available",
                FundingStatus::Failed => "failed",
                FundingStatus::Returned => "returned",
            },
        );
    }
}

/// `acc + m`, or `acc` where the sum does not fit (amounts of one payment are far below
/// that; a fold of them keeps going).
fn sum(acc: Money, m: Money) -> Money {
    acc.checked_add(&m).unwrap_or(acc)
}

impl WriteJson for FundingAttempt {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        write::key(out, "leg");
        self.leg.write_json(out);
        write::key(out, "amount");
        self.amount.write_json(out);
        write::key(out, "rail");
        self.rail.write_json(out);
        write::key(out, "rail_ref");
        write::string(out, &self.rail_ref);
        write::key(out, "status");
        self.status.write_json(out);
        write::key(out, "submitted_at");
        self.submitted_at.write_json(out);
        write::opt(out, "settled_at", &self.settled_at);
        write::opt(out, "short", &self.short);
        write::opt(out, "code", &self.code);
        write::opt(out, "returned", &self.returned);
        out.push(b'}');
    }
}

impl WriteJson for Funding {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        write::opt(out, "method", &self.method);
        write::opt(out, "deadline", &self.deadline);
        write::key(out, "deadline_missed");
        write::boolean(out, self.deadline_missed);
        write::key(out, "failed_attempts");
        write::uint(out, u64::from(self.failed_attempts));
        write::key(out, "attempts");
        self.attempts.write_json(out);
        out.push(b'}');
    }
}

impl WriteJson for RequestKind {
    fn write_json(&self, out: &mut Vec<u8>) {
        write::ascii(
            out,
            match self {
                RequestKind::Release => "release",
                RequestKind::Refund => "refund",
            },
        );
    }
}

impl WriteJson for RequestStatus {
    fn write_json(&self, out: &mut Vec<u8>) {
        write::ascii(
            out,
            match self {
                RequestStatus::AwaitingApprovals => "awaiting_approvals",
                RequestStatus::Authorized => "authorized",
                RequestStatus::Submitted => "submitted",
                RequestStatus::Settled => "settled",
                RequestStatus::Failed => "failed",
                RequestStatus::Denied => "denied",
                RequestStatus::Cancelled => "cancelled",
            },
        );
    }
}

impl WriteJson for Mandate {
    fn write_json(&self, out: &mut Vec<u8>) {
        write::ascii(
            out,
            match self {
                Mandate::AutoRelease => "auto_release",
                Mandate::Cancellation => "cancellation",
                Mandate::Expiry => "expiry",
                Mandate::DisputeResolution => "dispute_resolution",
            },
        );
    }
}

impl WriteJson for FeeLine {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        write::key(out, "fee");
        write::string(out, &self.fee);
        write::key(out, "party");
        self.party.write_json(out);
        write::key(out, "amount");
        self.amount.write_json(out);
        write::key(out, "borne_by");
        self.borne_by.write_json(out);
        out.push(b'}');
    }
}

impl WriteJson for Request {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        write::key(out, "kind");
        self.kind.write_json(out);
        write::key(out, "status");
        self.status.write_json(out);
        write::non_empty(out, "allocations", &self.allocations);
        write::key(out, "amount");
        self.amount.write_json(out);
        write::non_empty(out, "fees", &self.fees);
        write::key(out, "allocations_hash");
        self.allocations_hash.write_json(out);
        write::opt(out, "mandate", &self.mandate);
        write::key(out, "approvals");
        self.approvals.write_json(out);
        if !self.denials.is_empty() {
            write::key(out, "denials");
            self.denials.write_json(out);
        }
        write::opt(out, "requested_by", &self.requested_by);
        write::key(out, "requested_at");
        self.requested_at.write_json(out);
        write::non_empty(out, "legs", &self.legs);
        write::opt(out, "rail_ref", &self.rail_ref);
        write::opt(out, "failure", &self.failure);
        out.push(b'}');
    }
}

impl WriteJson for Dispute {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        write::key(out, "open");
        write::boolean(out, self.open);
        write::key(out, "reason");
        write::string(out, &self.reason);
        write::opt(out, "opened_by", &self.opened_by);
        write::key(out, "opened_at");
        self.opened_at.write_json(out);
        write::opt(out, "outcome", &self.outcome);
        write::opt(out, "resolution_request", &self.resolution_request);
        out.push(b'}');
    }
}

/// Externally tagged, as serde writes enums: `{"funding":"<leg>"}`,
/// `{"disbursement":"<request>"}`, `"recovery"`.
impl WriteJson for RailTarget {
    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            RailTarget::Funding(leg) => {
                out.push(b'{');
                write::key(out, "funding");
                leg.write_json(out);
                out.push(b'}');
            }
            RailTarget::Disbursement(request) => {
                out.push(b'{');
                write::key(out, "disbursement");
                request.write_json(out);
                out.push(b'}');
            }
            RailTarget::Recovery => write::ascii(out, "recovery"),
        }
    }
}

impl WriteJson for PolicyPin {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        write::key(out, "id");
        write::string(out, &self.id);
        write::key(out, "version");
        write::uint(out, u64::from(self.version));
        write::key(out, "hash");
        self.hash.write_json(out);
        out.push(b'}');
    }
}

impl WriteJson for PaymentState {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        write::key(out, "payment");
        self.payment.write_json(out);
        write::key(out, "tenant");
        self.tenant.write_json(out);
        write::key(out, "version");
        write::uint(out, self.version);
        write::key(out, "head");
        self.head.write_json(out);
        write::key(out, "status");
        self.status.write_json(out);
        write::key(out, "policy");
        self.policy.write_json(out);
        write::key(out, "amount");
        self.amount.write_json(out);
        write::key(out, "description");
        write::string(out, &self.description);
        write::key(out, "initiator");
        self.initiator.write_json(out);
        write::key(out, "created_at");
        self.created_at.write_json(out);
        write::key(out, "updated_at");
        self.updated_at.write_json(out);
        write::key(out, "terms_hash");
        self.terms_hash.write_json(out);
        write::key(out, "participants");
        self.participants.write_json(out);
        write::key(out, "funding");
        self.funding.write_json(out);
        write::opt(out, "held_since", &self.held_since);
        write::key(out, "ledger");
        self.ledger.write_json(out);
        write::key(out, "requests");
        self.requests.write_json(out);
        write::key(out, "disputes");
        self.disputes.write_json(out);
        write::key(out, "rail_refs");
        self.rail_refs.write_json(out);
        write::non_empty(out, "fixed_fees_charged", &self.fixed_fees_charged);
        write::non_empty(out, "reversed_legs", &self.reversed_legs);
        if !self.held_notices.is_empty() {
            write::key(out, "held_notices");
            self.held_notices.write_json(out);
        }
        write::key(out, "cancelled");
        write::boolean(out, self.cancelled);
        write::key(out, "expired");
        write::boolean(out, self.expired);
        write::key(out, "closed");
        write::boolean(out, self.closed);
        write::opt(out, "shortfall_outcome", &self.shortfall_outcome);
        write::opt(out, "last_settled", &self.last_settled);
        // `policy_doc` is `#[serde(skip)]`.
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::Status;

    #[test]
    fn status_names_match_json() {
        for s in [
            Status::Draft,
            Status::AwaitingFunds,
            Status::WrittenOff,
            Status::Closed,
        ] {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
    }
}
