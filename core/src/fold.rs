//! The fold: state is a left fold of [`apply`] over a payment's events.
//!
//! `apply` is pure: it reads only the state and the event (deadlines compare event
//! times, never a clock). It checks that the event fits — the right stream, the next
//! sequence number, the previous hash, references that exist, ledger invariants — and
//! reports exactly where and why a history is invalid. On error the state passed in
//! must be discarded.
//!
//! [`replay`] does the whole job for a history as a client fetches it: parse, verify
//! the hash chain, upcast old events, fold.

use crate::approval::{quorum_met, quorum_met_as_recorded, quorum_possible};
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::event::*;
use crate::hash::Hash;
use crate::history::{self, RawRecord};
use crate::id::{derive, LegId, PartyId};
use crate::ledger::{Account, Ledger};
use crate::money::Money;
use crate::policy::{BorneBy, OnDeadlineMissed};
use crate::state::*;

/// From this instant (2026-11-28T00:00:00Z) payments are opened with
/// `PaymentInitiated` v2, the release that brought it: a v1 opening dated later was
/// rewritten to escape v2's rules (its signer could rewrite the chain, but not make the
/// participants forget when the payment was opened).
///
/// ```
/// use trustfold_core::fold::V2_OPENINGS_FROM;
/// assert_eq!(V2_OPENINGS_FROM.to_string(), "2026-11-28T00:00:00Z");
/// ```
pub const V2_OPENINGS_FROM: crate::time::Timestamp =
    crate::time::Timestamp::from_unix_millis(1_795_824_000_000);

/// From this instant (2026-12-01T00:00:00Z) every reversal covers an open shortfall
/// first, as `ReversalRecorded` v3 does, whatever version it was written with: an
/// older version dated later is folded so (not refused: a server not yet upgraded
/// still writes v2), and a signer cannot leave the shortfall open beside the money by
/// writing one. From then on too, a payment is closed only when its status is final
/// (`PaymentClosed` of a payment that only counted as finished as recorded before —
/// money held after a shortfall's end, funding still clearing — is refused).
///
/// ```
/// use trustfold_core::fold::V3_REVERSALS_FROM;
/// assert_eq!(V3_REVERSALS_FROM.to_string(), "2026-12-01T00:00:00Z");
/// ```
pub const V3_REVERSALS_FROM: crate::time::Timestamp =
    crate::time::Timestamp::from_unix_millis(1_796_083_200_000);

/// Starts a state from a payment's first event (which must be `PaymentInitiated`).
pub fn start(env: &Envelope, hash: Hash) -> Result<PaymentState> {
    if env.seq != 1 {
        return Err(Error::history(env.seq, "a history starts at seq 1"));
    }
    if env.prev != Hash::ZERO {
        return Err(Error::history(
            1,
            "the first event's prev must be all zeros",
        ));
    }
    let Event::PaymentInitiated(e) = &env.event else {
        return Err(Error::history(1, "a history starts with PaymentInitiated"));
    };
    if env.schema_version < 2 && env.at >= V2_OPENINGS_FROM {
        return Err(Error::history(
            1,
            format!(
                "PaymentInitiated v1 dated {}: payments are opened with v2 from {V2_OPENINGS_FROM}, \
                 so this opening was rewritten to escape the rules v2 brings",
                env.at
            ),
        ));
    }
    e.policy
        .validated()
        .map_err(|err| Error::history(1, format!("embedded policy: {err}")))?;
    if e.policy.bytes_hash() != e.policy_hash {
        return Err(Error::history(
            1,
            "policy_hash does not match the embedded policy",
        ));
    }
    e.amount
        .require_positive()
        .map_err(|err| Error::history(1, err.to_string()))?;
    check_opener(env, e)?;
    let currency = e.amount.currency();
    let mut participants = crate::map::SortedMap::new();
    participants.insert(
        e.initiator,
        Participant {
            roles: e.initiator_roles.clone(),
            name: e.initiator_name.clone(),
            email: None,
            joined: true,
            agreed: false,
            removed: false,
        },
    );
    let mut s = PaymentState {
        payment: env.stream,
        tenant: e.tenant,
        version: 1,
        head: hash,
        status: Status::Draft,
        policy: PolicyPin {
            id: e.policy.id.clone(),
            version: e.policy.version,
            hash: e.policy_hash,
        },
        amount: e.amount,
        description: e.description.clone(),
        initiator: e.initiator,
        created_at: env.at,
        updated_at: env.at,
        terms_hash: terms_hash(&e.amount, &e.description, &e.policy_hash),
        participants,
        funding: Funding {
            method: None,
            deadline: None,
            deadline_missed: false,
            failed_attempts: 0,
            attempts: Vec::new(),
        },
        held_since: None,
        ledger: Ledger::new(currency),
        requests: Default::default(),
        disputes: Default::default(),
        rail_refs: Default::default(),
        fixed_fees_charged: Vec::new(),
        reversed_legs: Vec::new(),
        held_notices: Default::default(),
        cancelled: false,
        expired: false,
        closed: false,
        shortfall_outcome: None,
        last_settled: None,
        opened_under: env.schema_version,
        due: None,
        policy_doc: e.policy.shared(),
    };
    s.status = s.derive_status();
    Ok(s)
}

/// Applies one event (seq ≥ 2) whose canonical bytes hash to `hash`. On an error the
/// state may be partly changed: a caller that goes on after one (a client retrying a
/// sync) applies to a copy and keeps it only on success.
pub fn apply(s: &mut PaymentState, env: &Envelope, hash: Hash) -> Result<()> {
    let seq = env.seq;
    apply_raw(s, env, hash).map_err(|e| match e {
        Error::InvalidHistory { .. } => e,
        other => Error::history(seq, format!("{} event: {other}", env.event_type().name())),
    })
}

/// [`apply`] without wrapping rule errors into [`Error::InvalidHistory`] (for `decide`).
pub(crate) fn apply_raw(s: &mut PaymentState, env: &Envelope, hash: Hash) -> Result<()> {
    let seq = env.seq;
    if env.stream != s.payment {
        return Err(Error::history(seq, "event belongs to another payment"));
    }
    if seq != s.version + 1 {
        return Err(Error::history(
            seq,
            format!("expected seq {}, found {seq}", s.version + 1),
        ));
    }
    if env.prev != s.head {
        return Err(Error::history(
            seq,
            "prev does not match the previous event's hash",
        ));
    }
    // Time never runs backwards in a payment: `decide` stamps a command whose clock is
    // behind at the last event's time, so an earlier `at` is a damaged or forged history.
    if env.at < s.updated_at {
        return Err(Error::history(
            seq,
            format!(
                "event time {} is before the previous event's {}",
                env.at, s.updated_at
            ),
        ));
    }
    // What the last event left owed stays owed when this one is refused, so retrying
    // the same (or another) wrong event cannot slip past it.
    let owed = s.due.clone();
    if let Err(e) = apply_event(s, env) {
        s.due = owed;
        return Err(e);
    }
    s.version = seq;
    s.head = hash;
    s.updated_at = env.at;
    let before = s.status;
    s.status = s.derive_status();
    if s.status == Status::Held && before != Status::Held && s.held_since.is_none() {
        s.held_since = Some(env.at);
    }
    Ok(())
}

/// Covers an open shortfall (`loss:returns` below zero) from what is available in
/// escrow, as far as it goes: a posted leg `escrow → loss:returns`, the event's leg
/// number `leg` (its id derived from the event's).
fn cover_shortfall(s: &mut PaymentState, env: &Envelope, leg: u32) -> Result<()> {
    let loss = s.ledger.balance(&Account::LossReturns).posted.neg();
    let available = s.ledger.available(&Account::Escrow);
    let cover = if available < loss { available } else { loss };
    if cover.is_positive() {
        s.ledger.transfer(
            leg_id(env, leg),
            Account::Escrow,
            Account::LossReturns,
            cover,
            None,
            env.seq,
        )?;
    }
    Ok(())
}

fn bad(msg: impl Into<String>) -> Error {
    Error::rejected("invalid_event", msg)
}

fn same_currency(s: &PaymentState, m: &Money) -> Result<()> {
    s.amount.same_currency(m)
}

fn attempt_mut(s: &mut PaymentState, leg: LegId) -> Result<&mut FundingAttempt> {
    s.funding
        .attempts
        .iter_mut()
        .find(|a| a.leg == leg)
        .ok_or_else(|| bad(format!("no funding leg {leg}")))
}

fn request_mut<'a>(s: &'a mut PaymentState, id: &crate::id::RequestId) -> Result<&'a mut Request> {
    s.requests
        .get_mut(id)
        .ok_or_else(|| bad(format!("no request {id}")))
}

/// The legs a release or refund opens: (destination, amount), escrow being the source.
pub fn disbursement_legs(req: &Request) -> Result<Vec<(Account, Money)>> {
    let mut out = Vec::new();
    match req.kind {
        RequestKind::Refund => out.push((Account::ExternalPayer, req.amount)),
        RequestKind::Release => {
            let c = req.amount.currency();
            let payee_fees = req
                .fees
                .iter()
                .filter(|f| f.borne_by == BorneBy::Payee)
                .try_fold(Money::zero(c), |acc, f| acc.checked_add(&f.amount))?;
            // Payee-borne fees are shared by the allocations pro rata, to the cent.
            let shares = if payee_fees.is_positive() {
                let weights: Vec<u64> = req
                    .allocations
                    .iter()
                    .map(|a| u64::try_from(a.amount.amount().mantissa()).unwrap_or(0))
                    .collect();
                payee_fees.allocate(&weights)?
            } else {
                vec![Money::zero(c); req.allocations.len()]
            };
            for (a, share) in req.allocations.iter().zip(shares) {
                let net = a.amount.checked_sub(&share)?;
                if net.amount().is_sign_negative() {
                    return Err(Error::rejected(
                        "fees_exceed_gross",
                        "fees are larger than the amount released",
                    ));
                }
                if net.is_positive() {
                    out.push((Account::Payee(a.party), net));
                }
            }
            for f in &req.fees {
                if f.amount.is_positive() {
                    out.push((Account::Fee(f.party), f.amount));
                }
            }
        }
    }
    Ok(out)
}

/// Total a request takes out of escrow.
pub fn disbursement_total(req: &Request) -> Result<Money> {
    disbursement_legs(req)?
        .iter()
        .try_fold(Money::zero(req.amount.currency()), |acc, (_, m)| {
            acc.checked_add(m)
        })
}

fn leg_id(env: &Envelope, i: u32) -> LegId {
    LegId(derive(env.id.uuid(), "leg", i))
}

/// The most rail notices a payment holds for transfers it has not recorded yet.
pub const MAX_HELD_NOTICES: usize = 16;

/// The events a payment in a terminal state still takes: the recording of a late
/// return and of a shortfall's end, closing, and the end of a disbursement already on a
/// rail. `decide` refuses to emit anything else there.
pub(crate) fn allowed_when_terminal(event: &Event) -> bool {
    matches!(
        event,
        Event::FundingReturned(_)
            | Event::ShortfallRecovered(_)
            | Event::ShortfallWrittenOff(_)
            | Event::PaymentClosed(_)
            // A payout sent back after completion (not on a closed payment: see its arm).
            | Event::ReversalRecorded(_)
            // A disbursement already on a rail ends as the rail says, whatever came since.
            | Event::DisbursementSettled(_)
            | Event::DisbursementFailed(_)
    )
}

fn apply_event(s: &mut PaymentState, env: &Envelope) -> Result<()> {
    let seq = env.seq;
    if let Some(due) = s.due.take() {
        let returned_over = |floor: &Money| match &env.event {
            Event::FundingReturned(e) => {
                e.amount > *floor
                    && s.funding
                        .attempts
                        .iter()
                        .any(|a| a.leg == e.leg && a.status == FundingStatus::Available)
            }
            _ => false,
        };
        if env.event_type() != due.event
            || env.causation != Some(due.causation)
            || env.actor != due.actor
            || due
                .return_over
                .as_ref()
                .is_some_and(|floor| !returned_over(floor))
        {
            return Err(bad(due_missing(&due)));
        }
    }
    check_version(s, env)?;
    if s.status.is_terminal() && !allowed_when_terminal(&env.event) {
        return Err(bad(format!("payment is {:?} (terminal)", s.status)));
    }
    check_actor(env)?;
    check_actor_role(s, env)?;
    check_standing(s, env)?;
    check_roster(s, env)?;
    check_money_moves(s, env)?;
    match &env.event {
        Event::PaymentInitiated(_) => return Err(bad("PaymentInitiated may only come first")),
        Event::ParticipantInvited(e) => {
            for r in &e.roles {
                if !s.policy_doc.roles.contains_key(r) {
                    return Err(bad(format!("unknown role `{r}`")));
                }
            }
            if s.participants.get(&e.party).is_some_and(|p| !p.removed) {
                return Err(bad(format!("party {} is already a participant", e.party)));
            }
            s.participants.insert(
                e.party,
                Participant {
                    roles: e.roles.clone(),
                    name: e.name.clone(),
                    email: e.email.clone(),
                    joined: false,
                    agreed: false,
                    removed: false,
                },
            );
        }
        Event::ParticipantJoined(e) => {
            let p = s
                .participants
                .get_mut(&e.party)
                .filter(|p| !p.removed)
                .ok_or_else(|| bad(format!("party {} was not invited", e.party)))?;
            p.joined = true;
        }
        Event::ParticipantRemoved(e) => {
            let p = s
                .participants
                .get_mut(&e.party)
                .filter(|p| !p.removed)
                .ok_or_else(|| bad(format!("party {} is not a participant", e.party)))?;
            p.removed = true;
        }
        Event::TermsAgreed(e) => {
            if e.terms_hash != s.terms_hash {
                return Err(bad("agreed to terms other than the payment's"));
            }
            let p = s
                .participants
                .get_mut(&e.party)
                .filter(|p| !p.removed)
                .ok_or_else(|| bad(format!("party {} is not a participant", e.party)))?;
            p.agreed = true;
        }
        Event::FundingDeadlineSet(e) => s.funding.deadline = Some(e.deadline),
        Event::FundingMethodAttached(e) => s.funding.method = Some(e.method.clone()),
        Event::FundingSubmitted(e) => {
            same_currency(s, &e.amount)?;
            if !s.policy_doc.funding.rails.contains(&e.rail) {
                return Err(bad(format!(
                    "rail {} is not one the policy accepts funding on",
                    e.rail.as_str()
                )));
            }
            let remaining = s.remaining_to_fund()?;
            if !e.amount.is_positive() {
                return Err(Error::NonPositiveAmount(e.amount.amount_string()));
            }
            if e.amount > remaining {
                return Err(bad(format!(
                    "funding of {} where {remaining} remains to be funded",
                    e.amount
                )));
            }
            if s.rail_refs.contains_key(&e.rail_ref) {
                return Err(bad(format!("rail reference `{}` already used", e.rail_ref)));
            }
            if s.opened_under >= 2 {
                check_funding_taken(s, env, e)?;
            }
            // Notices the rail sent before this transfer was recorded are applied by the
            // events that follow in the same command (as the rail's).
            s.held_notices.remove(e.rail_ref.as_str());
            s.ledger.open(
                e.leg,
                Account::ExternalPayer,
                Account::Clearing,
                e.amount,
                None,
                seq,
            )?;
            s.rail_refs
                .insert(e.rail_ref.clone(), RailTarget::Funding(e.leg));
            s.funding.attempts.push(FundingAttempt {
                leg: e.leg,
                amount: e.amount,
                rail: e.rail,
                rail_ref: e.rail_ref.clone(),
                status: FundingStatus::Submitted,
                submitted_at: env.at,
                settled_at: None,
                short: None,
                code: None,
                returned: None,
            });
        }
        Event::FundingSettled(e) => {
            // A short settlement: less arrived than was sent (the optional `amount`).
            let short = match &e.amount {
                None => None,
                Some(m) => {
                    same_currency(s, m)?;
                    let sent = attempt_mut(s, e.leg)?.amount;
                    if !m.is_positive() || *m >= sent {
                        return Err(bad(format!(
                            "a settlement of {m} is not short of the transfer of {sent}"
                        )));
                    }
                    Some(sent.checked_sub(m)?)
                }
            };
            let a = attempt_mut(s, e.leg)?;
            if a.status != FundingStatus::Submitted {
                return Err(bad(format!("funding leg {} is not in flight", e.leg)));
            }
            a.status = FundingStatus::Settled;
            a.settled_at = Some(env.at);
            a.short = short;
            s.ledger.post(e.leg, seq)?;
            if let Some(short) = short {
                // What did not arrive goes back out of clearing: the payer's transfer
                // brought only the rest, and the payer funds the difference again.
                s.ledger.transfer(
                    leg_id(env, 0),
                    Account::Clearing,
                    Account::ExternalPayer,
                    short,
                    None,
                    seq,
                )?;
            }
        }
        Event::FundsAvailable(e) => {
            // Good funds only once the policy's days for the rail have passed since the
            // settlement (v2 payments; `decide` makes funds available no earlier).
            let due = s
                .funding
                .attempts
                .iter()
                .find(|a| a.leg == e.leg)
                .and_then(|a| crate::decide::good_funds_due(s, a));
            if let Some(due) = due.filter(|d| s.opened_under >= 2 && env.at < *d) {
                return Err(bad(format!(
                    "funding leg {} is good funds only from {due}, not at {}",
                    e.leg, env.at
                )));
            }
            let a = attempt_mut(s, e.leg)?;
            if a.status != FundingStatus::Settled || a.kept() != e.amount {
                return Err(bad(format!(
                    "funding leg {} is not settled for {}",
                    e.leg, e.amount
                )));
            }
            a.status = FundingStatus::Available;
            s.ledger.transfer(
                leg_id(env, 0),
                Account::Clearing,
                Account::Escrow,
                e.amount,
                None,
                seq,
            )?;
        }
        Event::FundingFailed(e) => {
            let a = attempt_mut(s, e.leg)?;
            if a.status != FundingStatus::Submitted {
                return Err(bad(format!("funding leg {} is not in flight", e.leg)));
            }
            a.status = FundingStatus::Failed;
            a.code = Some(e.code.clone());
            s.funding.failed_attempts += 1;
            s.ledger.void(e.leg, seq)?;
        }
        Event::FundingReturned(e) => {
            same_currency(s, &e.amount)?;
            let a = attempt_mut(s, e.leg)?;
            let from_escrow = match a.status {
                FundingStatus::Settled => false,
                FundingStatus::Available => true,
                _ => return Err(bad(format!("funding leg {} was not settled", e.leg))),
            };
            if a.returned.is_some() {
                return Err(bad(format!(
                    "funding leg {} was already returned in part",
                    e.leg
                )));
            }
            // What settled of it: a short settlement brought less than was sent.
            let settled = a.settled_amount();
            if e.amount > settled || !e.amount.is_positive() {
                return Err(bad("returned amount exceeds the funding"));
            }
            a.code = Some(e.return_code.clone());
            // v1 (before partial returns kept the rest) marked the whole funding returned.
            if e.amount < settled && env.schema_version >= 2 {
                // Part of it: the rest stays and counts (available, or still clearing).
                a.returned = Some(e.amount);
            } else {
                a.status = FundingStatus::Returned;
                s.funding.failed_attempts += 1;
            }
            let source = if from_escrow {
                Account::Escrow
            } else {
                Account::Clearing
            };
            // Take what is available; the rest is a shortfall in loss:returns.
            let avail = s.ledger.available(&source);
            let covered = if avail >= e.amount { e.amount } else { avail };
            let short = e.amount.checked_sub(&covered)?;
            let mut i = 0;
            if covered.is_positive() {
                s.ledger.transfer(
                    leg_id(env, i),
                    source,
                    Account::ExternalPayer,
                    covered,
                    None,
                    seq,
                )?;
                i += 1;
            }
            if short.is_positive() {
                s.ledger.transfer(
                    leg_id(env, i),
                    Account::LossReturns,
                    Account::ExternalPayer,
                    short,
                    None,
                    seq,
                )?;
            }
        }
        // Expiry itself is the PaymentExpired that follows an `expired` outcome.
        Event::FundingDeadlineMissed(_) => s.funding.deadline_missed = true,
        Event::PaymentExpired(_) => s.expired = true,
        Event::FeeAssessed(e) => {
            same_currency(s, &e.amount)?;
            // The policy's own fee, to a party holding its role, on the policy's terms:
            // a history cannot invent a fee or its size.
            let rule = s
                .policy_doc
                .fees
                .iter()
                .find(|f| f.name == e.fee)
                .ok_or_else(|| bad(format!("fee `{}` is not in the policy", e.fee)))?
                .clone();
            if !s.parties_with(&rule.to_role).contains(&e.party) {
                return Err(bad(format!(
                    "fee party {} does not hold the fee's role `{}`",
                    e.party, rule.to_role
                )));
            }
            let charged = s.fixed_fees_charged.contains(&e.fee);
            let r = request_mut(s, &e.request)?;
            if r.status != RequestStatus::AwaitingApprovals || r.kind != RequestKind::Release {
                return Err(bad("fees are assessed on releases awaiting approval"));
            }
            if r.fees.iter().any(|f| f.fee == e.fee) {
                return Err(bad(format!("fee `{}` assessed twice", e.fee)));
            }
            let pct = r.amount.bps(rule.bps)?;
            // With its fixed part while no settled release has paid it, or without (when a
            // fixed fee counts as charged changed once, from authorization to settlement,
            // so a release after an authorized one that failed may have either).
            let with_fixed = match rule.fixed {
                Some(f) if !charged => pct.checked_add(&Money::from_decimal(f, pct.currency())?)?,
                _ => pct,
            };
            if e.borne_by != rule.borne_by || (e.amount != pct && e.amount != with_fixed) {
                return Err(bad(format!(
                    "fee `{}` of {} borne by the {:?} is not the policy's ({} bps{})",
                    e.fee,
                    e.amount,
                    e.borne_by,
                    rule.bps,
                    if rule.fixed.is_some() { " + fixed" } else { "" }
                )));
            }
            r.fees.push(FeeLine {
                fee: e.fee.clone(),
                party: e.party,
                amount: e.amount,
                borne_by: e.borne_by,
            });
        }
        Event::ReleaseRequested(e) => {
            let total = check_allocations(s, &e.allocations, &e.allocations_hash)?;
            if s.requests.contains_key(&e.request) {
                return Err(bad(format!("request {} exists", e.request)));
            }
            s.requests.insert(
                e.request,
                Request {
                    kind: RequestKind::Release,
                    status: RequestStatus::AwaitingApprovals,
                    allocations: e.allocations.clone(),
                    amount: total,
                    fees: Vec::new(),
                    allocations_hash: e.allocations_hash,
                    mandate: mandate_for(s, env, &e.request, RequestKind::Release),
                    approvals: Default::default(),
                    denials: Default::default(),
                    requested_by: env.actor.party,
                    requested_at: env.at,
                    legs: Vec::new(),
                    rail_ref: None,
                    failure: None,
                },
            );
        }
        Event::ReleaseAmended(e) => {
            let total = check_allocations(s, &e.allocations, &e.allocations_hash)?;
            let r = request_mut(s, &e.request)?;
            if r.status != RequestStatus::AwaitingApprovals || r.kind != RequestKind::Release {
                return Err(bad("only a release awaiting approvals can be amended"));
            }
            r.allocations = e.allocations.clone();
            r.allocations_hash = e.allocations_hash;
            r.amount = total;
            r.fees.clear();
            // Approvals bound to the old hash no longer count; drop them.
            r.approvals.clear();
            r.denials.clear();
        }
        Event::RefundRequested(e) => {
            same_currency(s, &e.amount)?;
            if !e.amount.is_positive() || e.allocations_hash != refund_hash(&e.amount) {
                return Err(bad("refund amount or hash is invalid"));
            }
            if s.requests.contains_key(&e.request) {
                return Err(bad(format!("request {} exists", e.request)));
            }
            s.requests.insert(
                e.request,
                Request {
                    kind: RequestKind::Refund,
                    status: RequestStatus::AwaitingApprovals,
                    allocations: Vec::new(),
                    amount: e.amount,
                    fees: Vec::new(),
                    allocations_hash: e.allocations_hash,
                    mandate: mandate_for(s, env, &e.request, RequestKind::Refund),
                    approvals: Default::default(),
                    denials: Default::default(),
                    requested_by: env.actor.party,
                    requested_at: env.at,
                    legs: Vec::new(),
                    rail_ref: None,
                    failure: None,
                },
            );
        }
        Event::ApprovalGranted(e) => {
            let r = request_mut(s, &e.request)?;
            if r.status != RequestStatus::AwaitingApprovals {
                return Err(bad("request is not awaiting approvals"));
            }
            r.approvals.insert(e.party, e.allocations_hash);
            r.denials.remove(&e.party);
        }
        Event::ApprovalDenied(e) => {
            let r = request_mut(s, &e.request)?;
            if r.status != RequestStatus::AwaitingApprovals {
                return Err(bad("request is not awaiting approvals"));
            }
            r.approvals.remove(&e.party);
            r.denials.insert(e.party, e.reason.clone());
            let r = r.clone();
            if !quorum_possible(s, &r) {
                request_mut(s, &e.request)?.status = RequestStatus::Denied;
            }
        }
        Event::ApprovalWithdrawn(e) => {
            let r = request_mut(s, &e.request)?;
            if r.status != RequestStatus::AwaitingApprovals {
                return Err(bad("request is not awaiting approvals"));
            }
            r.approvals.remove(&e.party);
        }
        Event::ReleaseAuthorized(ReleaseAuthorized { request })
        | Event::RefundAuthorized(RefundAuthorized { request }) => {
            let want = if matches!(env.event, Event::ReleaseAuthorized(_)) {
                RequestKind::Release
            } else {
                RequestKind::Refund
            };
            let r = s
                .requests
                .get(request)
                .ok_or_else(|| bad(format!("no request {request}")))?
                .clone();
            if r.kind != want || r.status != RequestStatus::AwaitingApprovals {
                return Err(bad("request is not awaiting approvals"));
            }
            if s.open_dispute().is_some() {
                return Err(bad("nothing leaves escrow while disputed"));
            }
            // From v2 payments, `all_of` needs a party of its own per role, as `decide`
            // requires; older payments fold as their authorizations were recorded.
            let met = if s.opened_under >= 2 {
                quorum_met(s, &r)
            } else {
                quorum_met_as_recorded(s, &r)
            };
            if r.mandate.is_none() && !met {
                return Err(Error::rejected("quorum_not_met", "quorum not met"));
            }
            if want == RequestKind::Release && s.opened_under >= 2 {
                check_fees_assessed(s, &r)?;
            }
            let legs = disbursement_legs(&r)?;
            let mut ids = Vec::with_capacity(legs.len());
            for (i, (to, amount)) in legs.into_iter().enumerate() {
                let id = leg_id(env, i as u32);
                s.ledger
                    .open(id, Account::Escrow, to, amount, Some(*request), seq)?;
                ids.push(id);
            }
            let r = request_mut(s, request)?;
            r.status = RequestStatus::Authorized;
            r.legs = ids;
        }
        Event::RequestCancelled(e) => {
            let opened_under = s.opened_under;
            let may_dispute = s.policy_doc.permissions.dispute.contains(&env.actor.role);
            let available = s.escrow_available();
            let r = request_mut(s, &e.request)?;
            if !matches!(
                r.status,
                RequestStatus::AwaitingApprovals | RequestStatus::Authorized
            ) {
                return Err(bad("only a request not yet on a rail can be cancelled"));
            }
            // What the rules mandated (a dispute's resolution, the automatic release,
            // a cancellation's or expiry's refund) is called off only by the rail's
            // return of the money it would pay, or by a party opening a dispute in the
            // same command (`mandated_request` in `decide`).
            if r.mandate.is_some() && opened_under >= 2 {
                let rail = env.actor.role.as_str() == "rail" && env.actor.party.is_none();
                let authorized = r.status == RequestStatus::Authorized;
                let causation = env.causation.filter(|_| authorized);
                let Some(causation) = causation.filter(|_| rail || may_dispute) else {
                    return Err(bad(
                        "a request the rules mandated can only be cancelled by opening a dispute \
                         (or by the rail's return of the funds)",
                    ));
                };
                s.due = Some(crate::state::Due {
                    causation,
                    actor: env.actor.clone(),
                    // `decide` pulls an authorized request back for a return out of
                    // escrow larger than what is available besides it.
                    return_over: rail.then_some(available),
                    event: if rail {
                        crate::event::EventType::FundingReturned
                    } else {
                        crate::event::EventType::DisputeOpened
                    },
                });
            }
            let r = request_mut(s, &e.request)?;
            r.status = RequestStatus::Cancelled;
            r.failure = Some(e.reason.clone());
            for leg in r.legs.clone() {
                s.ledger.void(leg, seq)?;
            }
        }
        Event::DisbursementSubmitted(e) => {
            if s.rail_refs.contains_key(&e.rail_ref) {
                return Err(bad(format!("rail reference `{}` already used", e.rail_ref)));
            }
            let r = request_mut(s, &e.request)?;
            if r.status != RequestStatus::Authorized {
                return Err(bad("request is not authorized"));
            }
            r.status = RequestStatus::Submitted;
            r.rail_ref = Some(e.rail_ref.clone());
            s.held_notices.remove(e.rail_ref.as_str());
            s.rail_refs
                .insert(e.rail_ref.clone(), RailTarget::Disbursement(e.request));
        }
        Event::DisbursementSettled(e) => {
            let r = request_mut(s, &e.request)?;
            if r.status != RequestStatus::Submitted {
                return Err(bad("request is not on a rail"));
            }
            r.status = RequestStatus::Settled;
            let kind = r.kind;
            let fees: Vec<String> = r.fees.iter().map(|f| f.fee.clone()).collect();
            for leg in r.legs.clone() {
                s.ledger.post(leg, seq)?;
            }
            s.last_settled = Some(kind);
            // A fixed fee is charged once it was paid: a release that failed or was
            // pulled back leaves it for the next one.
            for fee in fees {
                let fixed = s
                    .policy_doc
                    .fees
                    .iter()
                    .any(|x| x.name == fee && x.fixed.is_some());
                if fixed && !s.fixed_fees_charged.contains(&fee) {
                    s.fixed_fees_charged.push(fee);
                }
            }
        }
        Event::DisbursementFailed(e) => {
            let r = request_mut(s, &e.request)?;
            if r.status != RequestStatus::Submitted {
                return Err(bad("request is not on a rail"));
            }
            r.status = RequestStatus::Failed;
            r.failure = Some(e.code.clone());
            for leg in r.legs.clone() {
                s.ledger.void(leg, seq)?;
            }
            // A return that came while this payout was on its rail was booked as a
            // shortfall (the money seemed gone); it is back in escrow now, so it covers
            // that shortfall first (from v2; a v1 event left both standing).
            if env.schema_version >= 2 {
                cover_shortfall(s, env, 0)?;
            }
        }
        Event::DisputeOpened(e) => {
            if s.open_dispute().is_some() {
                return Err(bad("a dispute is already open"));
            }
            if s.disputes.contains_key(&e.dispute) {
                return Err(bad(format!("dispute {} exists", e.dispute)));
            }
            if let Some((_, r)) = s.open_request() {
                if r.status == RequestStatus::Authorized {
                    return Err(bad("cancel the authorized request before disputing"));
                }
            }
            s.disputes.insert(
                e.dispute,
                Dispute {
                    open: true,
                    reason: e.reason.clone(),
                    opened_by: env.actor.party,
                    opened_at: env.at,
                    outcome: None,
                    resolution_request: None,
                },
            );
        }
        Event::DisputeResolved(e) => {
            let d = s
                .disputes
                .get_mut(&e.dispute)
                .filter(|d| d.open)
                .ok_or_else(|| bad(format!("no open dispute {}", e.dispute)))?;
            if (e.outcome == DisputeOutcome::Resume) != e.request.is_none() {
                return Err(bad(
                    "a release or refund outcome names its request; resume does not",
                ));
            }
            d.open = false;
            d.outcome = Some(e.outcome);
            d.resolution_request = e.request;
        }
        Event::ReversalRecorded(e) => {
            if s.closed {
                return Err(bad("a closed payment takes no reversal"));
            }
            if s.reversed_legs.contains(&e.leg) && env.schema_version >= 2 {
                // Twice would move the money twice (out of an external account, which
                // has no balance to stop it). v1 did not refuse it, and is folded so.
                return Err(bad(format!("leg {} was already reversed", e.leg)));
            }
            if !s.reversed_legs.contains(&e.leg) {
                s.reversed_legs.push(e.leg);
            }
            let leg = s
                .ledger
                .leg(e.leg)
                .filter(|l| l.status == crate::ledger::LegStatus::Posted)
                .ok_or_else(|| bad(format!("no posted leg {}", e.leg)))?
                .clone();
            s.ledger
                .transfer(leg_id(env, 0), leg.to, leg.from, leg.amount, leg.group, seq)?;
            // Money back in escrow (a payout or refund the bank sent back) covers an open
            // shortfall first: the trust account is short by that much (from v3, and for
            // every reversal dated from `V3_REVERSALS_FROM`; an older one left both
            // standing, the money seemingly free to pay out again).
            if leg.from == Account::Escrow
                && (env.schema_version >= 3 || env.at >= V3_REVERSALS_FROM)
            {
                cover_shortfall(s, env, 1)?;
            }
        }
        Event::ShortfallRecovered(e) => {
            same_currency(s, &e.amount)?;
            // A reference already used would take over its transfer's later notices
            // (`decide` refuses it; v2 payments are held to that).
            if s.opened_under >= 2 && s.rail_refs.contains_key(&e.rail_ref) {
                return Err(bad(format!("rail reference `{}` already used", e.rail_ref)));
            }
            let loss = s.ledger.balance(&Account::LossReturns).posted;
            if e.amount > loss.neg() {
                return Err(bad("recovery exceeds the shortfall"));
            }
            s.ledger.transfer(
                leg_id(env, 0),
                Account::ExternalRecovery,
                Account::LossReturns,
                e.amount,
                None,
                seq,
            )?;
            s.rail_refs.insert(e.rail_ref.clone(), RailTarget::Recovery);
            s.held_notices.remove(e.rail_ref.as_str());
            if s.ledger.balance(&Account::LossReturns).posted.is_zero() {
                s.shortfall_outcome = Some(Status::Recovered);
            }
        }
        Event::ShortfallWrittenOff(e) => {
            same_currency(s, &e.amount)?;
            let loss = s.ledger.balance(&Account::LossReturns).posted;
            if e.amount != loss.neg() {
                return Err(bad("a write-off covers the whole shortfall"));
            }
            s.ledger.transfer(
                leg_id(env, 0),
                Account::ExternalPlatform,
                Account::LossReturns,
                e.amount,
                None,
                seq,
            )?;
            s.shortfall_outcome = Some(Status::WrittenOff);
        }
        Event::PaymentCancelled(_) => s.cancelled = true,
        Event::RailNoticeHeld(e) => {
            if s.rail_refs.contains_key(&e.rail_ref) {
                return Err(bad(format!(
                    "rail reference `{}` is recorded: its notice applies, it is not held",
                    e.rail_ref
                )));
            }
            let held: usize = s.held_notices.values().map(Vec::len).sum();
            if held >= MAX_HELD_NOTICES {
                return Err(bad(format!("more than {MAX_HELD_NOTICES} held notices")));
            }
            match s.held_notices.get_mut(e.rail_ref.as_str()) {
                Some(v) => v.push(e.notice.clone()),
                None => {
                    s.held_notices
                        .insert(e.rail_ref.clone(), vec![e.notice.clone()]);
                }
            }
        }
        Event::PaymentClosed(_) => {
            // As recorded (before money held after a shortfall's end, or funding still
            // clearing, kept a payment open) only before the rules that keep it open.
            let as_recorded = s.finished_as_recorded() && env.at < V3_REVERSALS_FROM;
            if !(s.status.is_terminal() || as_recorded) || s.closed {
                return Err(bad("only a finished payment can be closed"));
            }
            s.closed = true;
        }
    }
    Ok(())
}

/// The opening is recorded by its initiator, in one of the roles it gives itself, all of
/// them the policy's (what `decide` has always required of `Initiate`): not by the
/// platform, nor by someone else in the initiator's name.
fn check_opener(env: &Envelope, e: &PaymentInitiated) -> Result<()> {
    if env.actor.party != Some(e.initiator) {
        return Err(Error::history(
            1,
            format!(
                "PaymentInitiated for initiator {} was recorded by {}: a payment is opened by \
                 its initiator",
                e.initiator,
                env.actor
                    .party
                    .map_or_else(|| "the platform".to_owned(), |p| format!("party {p}"))
            ),
        ));
    }
    if !e.initiator_roles.contains(&env.actor.role) {
        return Err(Error::history(
            1,
            format!(
                "PaymentInitiated was recorded in role `{}`, not one of the initiator's roles",
                env.actor.role
            ),
        ));
    }
    if let Some(r) = e
        .initiator_roles
        .iter()
        .find(|r| !e.policy.roles.contains_key(*r))
    {
        return Err(Error::history(
            1,
            format!("the initiator's role `{r}` is not in the embedded policy"),
        ));
    }
    Ok(())
}

/// Facts only certain actors can state: rail outcomes come from the rail, a party's own
/// approvals, agreement and joining from that party.
fn check_actor(env: &Envelope) -> Result<()> {
    let role = env.actor.role.as_str();
    let own = |party: &PartyId| -> Result<()> {
        if env.actor.party == Some(*party) {
            Ok(())
        } else {
            Err(bad(format!(
                "{} for party {party} was recorded as acting for someone else",
                env.event_type().name()
            )))
        }
    };
    match &env.event {
        Event::FundingSettled(_)
        | Event::FundingFailed(_)
        | Event::FundingReturned(_)
        | Event::DisbursementSettled(_)
        | Event::DisbursementFailed(_)
        | Event::RailNoticeHeld(_)
            if role != "rail" =>
        {
            Err(bad(format!(
                "{} must come from the rail",
                env.event_type().name()
            )))
        }
        Event::FundsAvailable(_) | Event::FundingDeadlineMissed(_) | Event::PaymentExpired(_)
            if role != "rail" && role != "system" =>
        {
            Err(bad(format!(
                "{} must come from the rail or the clock",
                env.event_type().name()
            )))
        }
        // What only a participant's command records: the platform (the rail's notices,
        // the clock's ticks) never opens, joins, agrees, submits, pays out, disputes,
        // decides a dispute, cancels, corrects or closes anything.
        Event::PaymentInitiated(_)
        | Event::ParticipantInvited(_)
        | Event::ParticipantJoined(_)
        | Event::ParticipantRemoved(_)
        | Event::TermsAgreed(_)
        | Event::FundingDeadlineSet(_)
        | Event::FundingMethodAttached(_)
        | Event::FundingSubmitted(_)
        | Event::ApprovalGranted(_)
        | Event::ApprovalDenied(_)
        | Event::ApprovalWithdrawn(_)
        | Event::ReleaseAmended(_)
        | Event::DisbursementSubmitted(_)
        | Event::DisputeOpened(_)
        | Event::DisputeResolved(_)
        | Event::PaymentCancelled(_)
        | Event::ReversalRecorded(_)
        | Event::ShortfallRecovered(_)
        | Event::ShortfallWrittenOff(_)
        | Event::PaymentClosed(_)
            if env.actor.party.is_none() && matches!(role, "rail" | "system") =>
        {
            Err(bad(format!(
                "{} is recorded by a participant, not by the platform (`{role}`)",
                env.event_type().name()
            )))
        }
        Event::ApprovalGranted(e) => own(&e.party),
        Event::ApprovalDenied(e) => own(&e.party),
        Event::ApprovalWithdrawn(e) => own(&e.party),
        Event::TermsAgreed(e) => own(&e.party),
        Event::ParticipantJoined(e) => own(&e.party),
        _ => Ok(()),
    }
}

/// Who may act at all: the platform (no party) only as the rail or the clock, a party
/// only in a role of the payment's policy (`decide` also requires the party to hold it).
fn check_actor_role(s: &PaymentState, env: &Envelope) -> Result<()> {
    let role = &env.actor.role;
    let known = match env.actor.party {
        None => matches!(role.as_str(), "rail" | "system"),
        Some(_) => s.policy_doc.roles.contains_key(role),
    };
    if known {
        return Ok(());
    }
    Err(bad(format!(
        "actor role `{}` is {}",
        crate::error::echo(role.as_str()),
        match env.actor.party {
            None => "not the platform's (an actor without a party is `rail` or `system`)",
            Some(_) => "not a role of the payment's policy",
        }
    )))
}

/// A party acting must stand in the payment as `decide` requires of every command: a
/// participant not removed, holding the role it acts in, joined (except to join), and
/// that role among those the policy lets do what the event records. A history that
/// breaks this was not made by trustfold's rules, whoever signed it: a server holding
/// the key cannot make a client accept a release to a stranger or a payout sent by a
/// role the policy does not trust.
fn check_standing(s: &PaymentState, env: &Envelope) -> Result<()> {
    let Some(party) = env.actor.party else {
        return Ok(());
    };
    let role = &env.actor.role;
    let who = crate::error::echo(role.as_str());
    let p = s
        .participants
        .get(&party)
        .filter(|p| !p.removed)
        .ok_or_else(|| bad(format!("party {party} acting is not a participant")))?;
    if !p.roles.contains(role) {
        return Err(bad(format!(
            "party {party} acting does not hold role `{who}`"
        )));
    }
    if !p.joined && !matches!(env.event, Event::ParticipantJoined(_)) {
        return Err(bad(format!("party {party} acted before joining")));
    }
    let perms = &s.policy_doc.permissions;
    let allowed: &[&[crate::policy::Role]] = match &env.event {
        Event::ParticipantInvited(_) | Event::ParticipantRemoved(_) => &[&perms.invite],
        Event::DisbursementSubmitted(_) => &[&perms.disburse],
        Event::DisputeOpened(_) => &[&perms.dispute],
        Event::DisputeResolved(_) => &[&perms.resolve],
        Event::PaymentCancelled(_) => &[&perms.cancel],
        Event::ReversalRecorded(_)
        | Event::ShortfallRecovered(_)
        | Event::ShortfallWrittenOff(_)
        | Event::PaymentClosed(_) => &[&perms.administer],
        Event::ReleaseRequested(_) | Event::ReleaseAmended(_) => {
            &[&perms.request_release, &perms.resolve]
        }
        _ => return Ok(()),
    };
    if allowed.iter().any(|roles| roles.contains(role)) {
        Ok(())
    } else {
        Err(bad(format!(
            "role `{who}` may not record {} under the payment's policy",
            env.event_type().name()
        )))
    }
}

/// What `decide` lets move money, as the fold holds a v2 payment to it (a server
/// holding the key could otherwise record it): a cancellation while money is held
/// only where the policy's refunds need no approvals (the refund it mandates then skips
/// them), an expiry only when the deadline or the attempts say so, and a reversal only
/// of a release's or refund's leg, never one that takes money out of escrow while a
/// dispute is open.
fn check_money_moves(s: &PaymentState, env: &Envelope) -> Result<()> {
    if s.opened_under < 2 {
        return Ok(());
    }
    match &env.event {
        Event::PaymentCancelled(_) if !s.funding_in_progress().is_zero() => Err(bad(
            "a payment is not cancelled while its funding is on a rail or clearing \
             (funds_in_flight): the refund it mandates would skip the approvals",
        )),
        Event::PaymentCancelled(_)
            if s.ledger.balance(&Account::Escrow).posted.is_positive()
                && !matches!(
                    s.policy_doc.refund.approvals,
                    crate::policy::Approvals::None
                ) =>
        {
            Err(bad(
                "a payment holding money is cancelled only where refunds need no approvals \
                 (refund_approvals_required)",
            ))
        }
        // A deadline is missed once the deadline that holds has passed (none after a
        // payout of a payment sent in full by it; a short's top-up has its span again).
        Event::FundingDeadlineMissed(_) => match crate::decide::funding_deadline(s) {
            Some(d) if env.at > d && !s.funding.deadline_missed => Ok(()),
            _ => Err(bad(
                "a funding deadline is missed only once the deadline that holds has passed, \
                 once",
            )),
        },
        // An expiry mandates refunds without approvals: only when `decide` expires a
        // payment, its funding deadline missed under a policy that expires then, or
        // its funding attempts used up.
        Event::PaymentExpired(_) => {
            let f = &s.policy_doc.funding;
            let missed = s.funding.deadline_missed
                && f.on_deadline_missed == crate::policy::OnDeadlineMissed::Expire;
            if missed || s.funding.failed_attempts >= f.max_attempts {
                Ok(())
            } else {
                Err(bad(
                    "a payment expires only once its funding deadline was missed (under a \
                     policy that expires then) or its funding attempts ran out",
                ))
            }
        }
        Event::ReversalRecorded(e) => match s.ledger.leg(e.leg) {
            Some(l) if l.group.is_none() => Err(bad(format!(
                "leg {} is not a release's or refund's: it cannot be reversed (not_reversible)",
                e.leg
            ))),
            Some(l) if l.to == Account::Escrow && s.open_dispute().is_some() => Err(bad(
                "nothing leaves escrow while disputed (payment_disputed)",
            )),
            _ => Ok(()),
        },
        // The policy's cap per release binds what participants ask for and what the
        // automatic release of a partial policy takes; a dispute's resolver is above it.
        Event::ReleaseRequested(e) => {
            let capped = match mandate_for(s, env, &e.request, RequestKind::Release) {
                None => true,
                Some(Mandate::AutoRelease) => s.policy_doc.release.partial,
                Some(_) => false,
            };
            if capped {
                within_release_cap(s, &e.allocations)
            } else {
                Ok(())
            }
        }
        Event::ReleaseAmended(e) => match s.requests.get(&e.request) {
            Some(r) if r.mandate.is_none() => within_release_cap(s, &e.allocations),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

/// In a v2 payment a release is authorized with every fee of the policy that comes to
/// more than zero assessed, each at exactly what `decide` charges: the fee's basis
/// points of the gross, plus its fixed part while no settled release has paid it.
/// Without this a signed history could leave out a brokerage's commission.
fn check_fees_assessed(s: &PaymentState, r: &Request) -> Result<()> {
    for rule in &s.policy_doc.fees {
        let mut due = r.amount.bps(rule.bps)?;
        if let Some(fixed) = rule.fixed {
            if !s.fixed_fees_charged.contains(&rule.name) {
                due = due.checked_add(&Money::from_decimal(fixed, due.currency())?)?;
            }
        }
        let assessed = r.fees.iter().find(|f| f.fee == rule.name).map(|f| f.amount);
        match assessed {
            None if due.is_positive() => {
                return Err(bad(format!(
                    "the release is authorized without the policy's fee `{}` of {due} \
                     assessed (fee_missing)",
                    rule.name
                )))
            }
            Some(amount) if amount != due => {
                return Err(bad(format!(
                    "fee `{}` is assessed at {amount}, but the policy charges {due} on this \
                     release",
                    rule.name
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// In a v2 payment, funding as `submit_funding` takes it: after the terms and until
/// fully funded, not once wound down, the whole remainder where the policy takes no
/// partial funding, and not after a deadline that expires the payment.
fn check_funding_taken(s: &PaymentState, env: &Envelope, e: &FundingSubmitted) -> Result<()> {
    let f = &s.policy_doc.funding;
    let open = matches!(
        s.status,
        Status::AwaitingFunds | Status::FundingInFlight | Status::Funded
    );
    if !open || s.cancelled || s.expired {
        return Err(bad(format!(
            "funding is accepted once terms are agreed and until fully funded, not while \
             the payment is {:?} (invalid_state)",
            s.status
        )));
    }
    let remaining = s.remaining_to_fund()?;
    if !f.allow_partial && e.amount != remaining {
        return Err(bad(format!(
            "funding of {} where the policy takes the whole {remaining} at once \
             (partial_funding_not_allowed)",
            e.amount
        )));
    }
    match crate::decide::funding_deadline(s) {
        Some(d) if env.at > d && f.on_deadline_missed == OnDeadlineMissed::Expire => Err(bad(
            format!("funding submitted after the deadline {d} (deadline_passed)"),
        )),
        _ => Ok(()),
    }
}

/// A release's allocations total at most the policy's `release.max_per_release`.
fn within_release_cap(s: &PaymentState, allocations: &[Allocation]) -> Result<()> {
    let Some(cap) = s.policy_doc.release.max_per_release else {
        return Ok(());
    };
    let mut total = Money::zero(s.amount.currency());
    for a in allocations {
        same_currency(s, &a.amount)?;
        total = total.checked_add(&a.amount)?;
    }
    if total.amount() > cap {
        return Err(bad(format!(
            "a release of {total} is above the policy's cap of {cap} per release \
             (limit_exceeded)"
        )));
    }
    Ok(())
}

/// In a payment opened with `PaymentInitiated` v2, every event is written with at
/// least the version current when v2 came (older versions carry looser effects, such
/// as a leg reversed twice, kept only for payments opened before).
fn check_version(s: &PaymentState, env: &Envelope) -> Result<()> {
    use crate::event::EventType as T;
    let least = match env.event_type() {
        T::ParticipantInvited
        | T::FundingReturned
        | T::DisbursementFailed
        | T::ReversalRecorded
            if s.opened_under >= 2 =>
        {
            2
        }
        _ => 1,
    };
    if env.schema_version < least {
        return Err(bad(format!(
            "{} v{} is older than the payment's rules (PaymentInitiated v{}) allow",
            env.event_type().name(),
            env.schema_version,
            s.opened_under
        )));
    }
    Ok(())
}

/// Who pays, is paid, approves, collects a fee or resolves is fixed while money is in
/// escrow, clearing or on its way (`role_locked` in `decide`): a history that invites
/// a stand-in into such a role, lets an invited one join, or removes one who acted was
/// not made by trustfold's rules.
fn check_roster(s: &PaymentState, env: &Envelope) -> Result<()> {
    if s.opened_under < 2 || !crate::decide::roster_locked(s) {
        return Ok(());
    }
    let roles: &[crate::policy::Role] = match &env.event {
        Event::ParticipantInvited(e) => &e.roles,
        Event::ParticipantJoined(e) => s.participants.get(&e.party).map_or(&[], |p| &p.roles),
        Event::ParticipantRemoved(e) => s
            .participants
            .get(&e.party)
            .filter(|p| p.joined)
            .map_or(&[], |p| &p.roles),
        _ => return Ok(()),
    };
    match roles
        .iter()
        .find_map(|r| crate::decide::money_power(&s.policy_doc, r).map(|power| (r, power)))
    {
        Some((role, power)) => Err(bad(format!(
            "{} changes who holds role `{role}`, which {power}, while money is in escrow or on its way",
            env.event_type().name()
        ))),
        None => Ok(()),
    }
}

/// Why a new request needs no approvals, if it does not.
fn mandate_for(
    s: &PaymentState,
    env: &Envelope,
    request: &crate::id::RequestId,
    kind: RequestKind,
) -> Option<Mandate> {
    let resolved = s.disputes.values().any(|d| {
        d.resolution_request == Some(*request)
            && d.outcome
                == Some(match kind {
                    RequestKind::Release => DisputeOutcome::Release,
                    RequestKind::Refund => DisputeOutcome::Refund,
                })
    });
    if resolved {
        Some(Mandate::DisputeResolution)
    } else if kind == RequestKind::Refund && s.cancelled {
        Some(Mandate::Cancellation)
    } else if kind == RequestKind::Refund && s.expired {
        Some(Mandate::Expiry)
    } else if kind == RequestKind::Release
        && env.actor.role.as_str() == "system"
        && auto_release_due(s, env.at)
    {
        Some(Mandate::AutoRelease)
    } else {
        None
    }
}

/// The policy's automatic release applies at `at`.
pub(crate) fn auto_release_due(s: &PaymentState, at: crate::time::Timestamp) -> bool {
    match (s.policy_doc.release.auto_release_after_hours, s.held_since) {
        (Some(h), Some(since)) => at >= since.add_hours(i64::from(h)),
        _ => false,
    }
}

fn check_allocations(s: &PaymentState, allocations: &[Allocation], hash: &Hash) -> Result<Money> {
    if allocations.is_empty() {
        return Err(bad("a release needs at least one allocation"));
    }
    if *hash != allocations_hash(allocations) {
        return Err(bad("allocations_hash does not match the allocations"));
    }
    let mut total = Money::zero(s.amount.currency());
    let mut seen: Vec<PartyId> = Vec::new();
    for a in allocations {
        same_currency(s, &a.amount)?;
        if !a.amount.is_positive() {
            return Err(Error::NonPositiveAmount(a.amount.amount_string()));
        }
        if seen.contains(&a.party) {
            return Err(bad(format!("party {} allocated twice", a.party)));
        }
        let payee = s
            .participants
            .get(&a.party)
            .filter(|p| !p.removed)
            .is_some_and(|p| s.policy_doc.payee_roles.iter().any(|r| p.roles.contains(r)));
        if !payee {
            return Err(bad(format!(
                "party {} allocated is not a participant holding a payee role",
                a.party
            )));
        }
        seen.push(a.party);
        total = total.checked_add(&a.amount)?;
    }
    Ok(total)
}

/// Folds envelopes (with their hashes) into a state.
pub fn fold<'a, I>(events: I) -> Result<PaymentState>
where
    I: IntoIterator<Item = (&'a Envelope, Hash)>,
{
    let mut it = events.into_iter();
    let (first, h) = it
        .next()
        .ok_or_else(|| Error::history(1, "empty history"))?;
    let mut s = start(first, h)?;
    for (env, h) in it {
        apply(&mut s, env, h)?;
    }
    complete(s)
}

fn complete(s: PaymentState) -> Result<PaymentState> {
    check_complete(&s)?;
    Ok(s)
}

/// Whether a state folded one event at a time ([`apply`]) ends between commands, as a
/// whole history (up to a signed head) must: not after the cancellation of a mandated
/// request whose dispute or return is missing (a history cut there, or forged so).
/// [`replay`] and [`verify_and_replay`] check it themselves; a client that folds pages
/// as they come checks it where it holds the server's signed head.
///
/// ```
/// use trustfold_core::fold::{check_complete, replay};
/// let state = replay(include_bytes!("../tests/vectors/em_happy_wire.history.json"))?;
/// assert!(check_complete(&state).is_ok());
/// # Ok::<(), trustfold_core::Error>(())
/// ```
pub fn check_complete(s: &PaymentState) -> Result<()> {
    match &s.due {
        Some(due) => Err(Error::history(s.version, due_missing(due))),
        None => Ok(()),
    }
}

fn due_missing(due: &crate::state::Due) -> String {
    match due.event {
        crate::event::EventType::FundingReturned => {
            "the rail cancelled a request the rules mandated without returning, out of \
             escrow, more than was available besides it"
                .into()
        }
        _ => "a party cancelled a request the rules mandated without opening a dispute".into(),
    }
}

/// Parses a history (a JSON array of `{"hash","event"}` records), verifies its hash
/// chain, upcasts and folds it.
///
/// ```
/// # use trustfold_core::fold::replay;
/// let err = replay(b"[]").unwrap_err();
/// assert_eq!(err.code(), "invalid_history");
/// let err = replay(b"[{\"hash\":").unwrap_err();
/// assert_eq!(err.code(), "malformed_json");
/// ```
pub fn replay(history_json: &[u8]) -> Result<PaymentState> {
    with_records(history_json, |records| replay_records(records, None))
}

/// The state after event `seq` of a verified history (a view of the past).
pub fn replay_at(history_json: &[u8], seq: u64) -> Result<PaymentState> {
    with_records(history_json, |records| {
        if seq == 0 || seq > records.len() as u64 {
            return Err(Error::history(
                seq,
                format!("no event {seq}: the history has {} events", records.len()),
            ));
        }
        replay_records(records, Some(seq))
    })
}

/// Runs `check` on the records of a history document. The line scanner splits a
/// document in trustfold's own layout without reading the events' JSON, so a document
/// in another layout that it takes (two records on one line, say) can come out split
/// wrongly, and then fails `check`: in that case the document is read as JSON and
/// `check` runs again on those records, whose answer stands (unless the document is
/// not JSON at all, when the first answer, which names the event, stands).
fn with_records<T>(
    history_json: &[u8],
    check: impl Fn(&[history::RawRecord<'_>]) -> Result<T>,
) -> Result<T> {
    if let Some(records) = history::parse_lines(history_json) {
        return match check(&records) {
            Ok(v) => Ok(v),
            Err(first) => match history::parse_json(history_json, false) {
                Ok(records) => check(&records),
                // Not JSON at all: the scanner's records say where (at which event).
                Err(_) => Err(first),
            },
        };
    }
    check(&history::parse_json(history_json, false)?)
}

/// Verifies and folds parsed records, stopping after sequence `at` when given.
pub fn replay_records(records: &[RawRecord<'_>], at: Option<u64>) -> Result<PaymentState> {
    if records.is_empty() {
        return Err(Error::history(1, "empty history"));
    }
    history::verify_chain(records)?;
    fold_records(records, at)
}

/// Folds parsed records whose chain the caller has verified.
fn fold_records(records: &[RawRecord<'_>], at: Option<u64>) -> Result<PaymentState> {
    let limit = at.map_or(records.len(), |n| (n as usize).min(records.len()));
    let mut state: Option<PaymentState> = None;
    for (i, r) in records.iter().take(limit).enumerate() {
        let env = r.envelope().map_err(|e| match e {
            Error::InvalidHistory { .. } => e,
            other => Error::history(i as u64 + 1, other.to_string()),
        })?;
        match &mut state {
            None => state = Some(start(&env, r.hash)?),
            Some(s) => apply(s, &env, r.hash)?,
        }
    }
    let s = state.ok_or_else(|| Error::history(1, "empty history"))?;
    match at {
        // The state after an event inside a command is a view of the past.
        Some(_) => Ok(s),
        None => complete(s),
    }
}

/// Folds a history without verifying its hash chain (for trusted local stores).
///
/// A history in trustfold's own layout (one record per line, canonical envelopes) is
/// split by the line scanner and each envelope read by [`Envelope::from_json`];
/// anything else, or any parse error, goes through one pass of the JSON reader over
/// the whole document (the scanner does not check the events' JSON, so its split of a
/// document in another layout can be wrong), which reports the first error in the
/// document's order. Unlike [`replay`], members of a record besides `hash` and `event`
/// are ignored.
pub fn replay_unverified(history_json: &[u8]) -> Result<PaymentState> {
    let envelopes = |records: Vec<history::RawRecord<'_>>| {
        records
            .iter()
            .map(|r| Ok((r.envelope()?, r.hash)))
            .collect::<Result<Vec<_>>>()
    };
    let fast = history::parse(history_json).and_then(envelopes);
    let envelopes = match fast {
        Ok(e) => e,
        Err(_) => envelopes(history::parse_json(history_json, true)?)?,
    };
    fold(envelopes.iter().map(|(e, h)| (e, *h)))
}

/// `unknown_role` unless `role` is one of the payment's policy's roles (naming them).
///
/// ```
/// use trustfold_core::fold::{known_role, replay};
/// use trustfold_core::policy::Role;
/// let state = replay(include_bytes!("../tests/vectors/em_happy_wire.history.json"))?;
/// assert!(known_role(&state, &Role::new("buyer")).is_ok());
/// let e = known_role(&state, &Role::new("zzz")).unwrap_err();
/// assert_eq!(e.code(), "unknown_role");
/// assert!(e.to_string().contains("buyer"), "{e}");
/// # Ok::<(), trustfold_core::Error>(())
/// ```
pub fn known_role(state: &PaymentState, role: &crate::policy::Role) -> Result<()> {
    if state.policy_doc.roles.contains_key(role) {
        return Ok(());
    }
    Err(Error::rejected(
        "unknown_role",
        format!(
            "role `{}` is not in policy {}: roles are {}",
            crate::error::echo(role.as_str()),
            state.policy.id,
            state
                .policy_doc
                .roles
                .keys()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

/// What `roles` may see of a history, verified first: `{"events":[…],"state":{…}}` as
/// [`crate::view::view_json`] writes it. Every role must be one of the policy's
/// (`unknown_role`) and at least one must be given (`roles_required`): a view is never
/// widened by a name the policy does not know.
///
/// ```
/// use trustfold_core::fold::verify_and_view;
/// use trustfold_core::policy::Role;
/// let history = include_bytes!("../tests/vectors/em_happy_wire.history.json");
/// let lender = verify_and_view(history, &[Role::new("lender")])?;
/// assert!(lender.starts_with(b"{\"events\":["));
/// assert_eq!(verify_and_view(history, &[Role::new("zzz")]).unwrap_err().code(), "unknown_role");
/// assert_eq!(verify_and_view(history, &[]).unwrap_err().code(), "roles_required");
/// # Ok::<(), trustfold_core::Error>(())
/// ```
pub fn verify_and_view(history_json: &[u8], roles: &[crate::policy::Role]) -> Result<Vec<u8>> {
    with_records(history_json, |records| {
        let state = replay_records(records, None)?;
        if roles.is_empty() {
            return Err(Error::rejected(
                "roles_required",
                "name at least one role to view the payment as",
            ));
        }
        for r in roles {
            known_role(&state, r)?;
        }
        let envelopes = records
            .iter()
            .map(|r| r.envelope())
            .collect::<Result<Vec<Envelope>>>()?;
        Ok(crate::view::view_json(&state, &envelopes, roles))
    })
}

/// The whole check a client runs on a fetched history: parse, verify the hash chain,
/// check the server's signed head against its public key (when given), upcast and fold.
/// The first failure is returned; [`Error::seq`] says at which event.
pub fn verify_and_replay(
    history_json: &[u8],
    head: Option<&crate::history::SignedHead>,
    key: Option<&crate::history::PublicKey>,
) -> Result<PaymentState> {
    with_records(history_json, |records| {
        if records.is_empty() {
            return Err(Error::history(1, "empty history"));
        }
        history::verify_chain(records)?;
        match (head, key) {
            (Some(h), Some(k)) => h.verify_against(k, records)?,
            (Some(_), None) => {
                return Err(Error::InvalidKey(
                    "a signed head is checked against the server's public key: pass the key".into(),
                ))
            }
            _ => {}
        }
        fold_records(records, None)
    })
}
