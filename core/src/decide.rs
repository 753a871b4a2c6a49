//! Deciding: a command against the current state becomes events, or a typed rejection.
//!
//! [`decide`] is pure. It checks who is acting (the actor's party must hold the role
//! it acts in, and the pinned policy must allow that role the command), the payment's
//! state, and the command's own rules (funds available, quorum, limits, deadlines,
//! currency…). A rejection is an [`Error::Rejected`] whose `code` names the rule.
//! Before all of that, every command's text is checked for length (`text_too_long`)
//! and characters (`invalid_text`, see [`text_char_allowed`]) and its role list for
//! repeats (`duplicate_role`): rules for new commands only, never for stored events.
//!
//! Events are produced one by one and applied to a scratch copy of the state, so a
//! command that ends in several events (an approval that completes a quorum also
//! authorizes the release) sees each earlier event's effect. Event ids are derived
//! from the command id: handling the same command twice yields identical events.
//!
//! Rail notices are commands from the `rail` role, idempotent by the rail's reference:
//! a duplicate notice yields no events, and a return that arrives before its settlement
//! implies the settlement.

use crate::approval::{may_approve, quorum_met};
use crate::command::{text_char_allowed, Command, CommandKind, Context, RailOutcome};
use crate::envelope::{Envelope, SealedEvent};
use crate::error::{Error, Result};
use crate::event::*;
use crate::fold::{apply_raw, disbursement_total, start};
use crate::id::{derive, EventId, LegId, PartyId, RequestId};
use crate::ledger::{Account, LegStatus};
use crate::money::Money;
use crate::policy::{BorneBy, DeadlineAnchor, OnDeadlineMissed, Policy, Role};
use crate::state::*;
use crate::time::Timestamp;

/// The outcome of handling a command: the new events, sealed, and the state after them.
#[derive(Clone, Debug)]
pub struct Decision {
    /// The new events, in order (empty when the command changes nothing, e.g. a
    /// duplicate rail notice).
    pub events: Vec<Envelope>,
    /// Their canonical bytes and hashes, ready to append.
    pub sealed: Vec<SealedEvent>,
    /// The state after applying them.
    pub state: PaymentState,
}

/// What a command says alone, before any payment's state is known: its text (lengths
/// and characters, as [`handle`] checks them first), and for a `RailNotice` the shape
/// of its reference (1 to 128 bytes, not blank) and of a return (a code `R` and two
/// digits, a positive amount). A server that keeps a notice for a transfer no payment
/// recorded yet checks it with this, so a notice that could never apply is refused on
/// arrival instead of waiting; [`handle`] finds the same errors when the command runs.
///
/// ```
/// use trustfold_core::command::{Command, RailOutcome};
/// use trustfold_core::decide::check_alone;
///
/// let notice = |rail_ref: &str, code: &str| Command::RailNotice {
///     rail_ref: rail_ref.into(),
///     notice: RailOutcome::Returned { code: code.into(), reason: String::new(), amount: None },
/// };
/// assert!(check_alone(&notice("ACH-1", "R01")).is_ok());
/// assert_eq!(check_alone(&notice("ACH-1", "ZZZ")).unwrap_err().code(), "invalid_return_code");
/// assert_eq!(check_alone(&notice("  ", "R01")).unwrap_err().code(), "invalid_rail_ref");
/// ```
pub fn check_alone(cmd: &Command) -> Result<()> {
    check_texts(cmd)?;
    if let Command::RailNotice { rail_ref, notice } = cmd {
        check_rail_ref_shape(rail_ref)?;
        match notice {
            RailOutcome::Returned { code, amount, .. } => check_return_shape(code, amount)?,
            RailOutcome::Settled { amount: Some(m) } => {
                m.require_positive()?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// The lengths and characters of a command's free text ([`Command::texts`]).
fn check_texts(cmd: &Command) -> Result<()> {
    for (field, text, max) in cmd.texts() {
        let chars = text.chars().count();
        if chars > max {
            return Err(Error::TextTooLong { field, chars, max });
        }
        if let Some((i, ch)) = text
            .chars()
            .enumerate()
            .find(|&(_, c)| !text_char_allowed(c, max))
        {
            return Err(Error::InvalidText {
                field,
                ch,
                at: i + 1,
            });
        }
    }
    Ok(())
}

/// Decides a command: the events it produces, without the state.
pub fn decide(state: Option<&PaymentState>, cmd: &Command, ctx: &Context) -> Result<Vec<Envelope>> {
    handle(state, cmd, ctx).map(|d| d.events)
}

/// Decides a command and applies its events. `state` is `None` only for `Initiate`.
///
/// **Time never runs backwards in a payment.** A command whose `ctx.now` is before the
/// payment's last event (`updated_at`: another server with a clock behind, a browser
/// with a wrong clock) is judged, and its events stamped, at that last event's time.
pub fn handle(state: Option<&PaymentState>, cmd: &Command, ctx: &Context) -> Result<Decision> {
    let caught_up;
    let ctx = match state {
        Some(s) if ctx.now < s.updated_at => {
            caught_up = Context {
                now: s.updated_at,
                ..ctx.clone()
            };
            &caught_up
        }
        _ => ctx,
    };
    check_texts(cmd)?;
    if let Command::Initiate { roles, .. } | Command::Invite { roles, .. } = cmd {
        // Sorted, a repeat is a neighbour (no `BTreeSet`: its code would be the
        // module's only B-tree).
        let mut sorted: Vec<&crate::policy::Role> = roles.iter().collect();
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|p| p[0] == p[1]) {
            return Err(Error::DuplicateRole {
                role: pair[0].clone(),
            });
        }
    }
    let mut em = match (state, cmd) {
        (None, Command::Initiate { .. }) => return initiate(cmd, ctx),
        (Some(_), Command::Initiate { payment, .. }) => {
            return Err(Error::rejected(
                "payment_exists",
                format!("payment {payment} already exists"),
            ))
        }
        (None, _) => {
            return Err(Error::rejected(
                "unknown_payment",
                "no such payment: open it with Initiate first",
            ))
        }
        (Some(s), _) => Emitter::new(s.clone(), ctx),
    };
    may(&em.state, cmd.kind(), ctx)?;
    rules(&mut em, cmd)?;
    Ok(em.finish())
}

struct Emitter<'c> {
    state: PaymentState,
    ctx: &'c Context,
    events: Vec<Envelope>,
    sealed: Vec<SealedEvent>,
    /// Who the events being emitted are stated by, when not the command's actor: the
    /// rail, for its held notices applied once their transfer is recorded.
    acting: Option<Context>,
}

impl<'c> Emitter<'c> {
    fn new(state: PaymentState, ctx: &'c Context) -> Self {
        Emitter {
            state,
            ctx,
            events: Vec::new(),
            sealed: Vec::new(),
            acting: None,
        }
    }

    fn envelope(
        &self,
        event: Event,
        seq: u64,
        prev: crate::hash::Hash,
        stream: crate::id::PaymentId,
    ) -> Envelope {
        let ctx = self.acting.as_ref().unwrap_or(self.ctx);
        stamp(ctx, self.events.len() as u32, event, seq, prev, stream)
    }

    fn emit(&mut self, event: impl Into<Event>) -> Result<()> {
        let event = event.into();
        // A clock tick or a late rail notice may reach a payment that has ended; what
        // they would change there is refused, not emitted (the fold would refuse it).
        let st = self.state.status;
        if st.is_terminal() && !crate::fold::allowed_when_terminal(&event) {
            return reject(
                "payment_terminal",
                format!(
                    "payment is {st:?}: {} would change it (reconcile it outside the payment)",
                    event.event_type().name()
                ),
            );
        }
        let env = self.envelope(
            event,
            self.state.version + 1,
            self.state.head,
            self.state.payment,
        );
        let sealed = env.seal();
        apply_raw(&mut self.state, &env, sealed.hash)?;
        self.events.push(env);
        self.sealed.push(sealed);
        Ok(())
    }

    fn derived(&self, purpose: &str, i: u32) -> uuid::Uuid {
        derive(self.ctx.command_id.uuid(), purpose, i)
    }

    fn finish(self) -> Decision {
        Decision {
            events: self.events,
            sealed: self.sealed,
            state: self.state,
        }
    }
}

fn reject<T>(code: &'static str, msg: impl Into<String>) -> Result<T> {
    Err(Error::rejected(code, msg))
}

fn initiate(cmd: &Command, ctx: &Context) -> Result<Decision> {
    let Command::Initiate {
        payment,
        tenant,
        policy,
        amount,
        description,
        roles,
        name,
    } = cmd
    else {
        return reject("invalid_command", "expected Initiate");
    };
    let Some(initiator) = ctx.actor.party else {
        return reject("actor_required", "a payment is opened by a party");
    };
    policy.validate_new()?;
    amount.require_positive()?;
    policy.check_payment_amount(amount)?;
    if roles.is_empty() {
        return reject("roles_required", "the initiator needs at least one role");
    }
    for r in roles {
        if !policy.roles.contains_key(r) {
            return reject(
                "unknown_role",
                format!("role `{r}` is not in policy {}", policy.id),
            );
        }
    }
    if !roles.contains(&ctx.actor.role) {
        return reject(
            "not_permitted",
            format!(
                "the initiator acts as `{}` but was given roles {roles:?}",
                ctx.actor.role
            ),
        );
    }
    let first = Event::PaymentInitiated(PaymentInitiated {
        tenant: *tenant,
        policy: EmbeddedPolicy::new((**policy).clone()),
        policy_hash: policy.hash(),
        amount: *amount,
        description: description.clone(),
        initiator,
        initiator_roles: roles.clone(),
        initiator_name: name.clone(),
    });
    let env = stamp(ctx, 0, first, 1, crate::hash::Hash::ZERO, *payment);
    let sealed = env.seal();
    let state = start(&env, sealed.hash)?;
    let mut em = Emitter {
        state,
        ctx,
        events: vec![env],
        sealed: vec![sealed],
        acting: None,
    };
    if let Some(d) = &policy.funding.deadline {
        if d.anchor == DeadlineAnchor::Initiated {
            em.emit(FundingDeadlineSet {
                deadline: deadline_from(ctx.now, d, &policy.funding.holidays)?,
            })?;
        }
    }
    Ok(em.finish())
}

/// Wraps the `index`-th event a command produces in its envelope.
fn stamp(
    ctx: &Context,
    index: u32,
    event: Event,
    seq: u64,
    prev: crate::hash::Hash,
    stream: crate::id::PaymentId,
) -> Envelope {
    Envelope {
        prev,
        stream,
        seq,
        id: EventId(derive(ctx.command_id.uuid(), "event", index)),
        schema_version: event.event_type().current_version(),
        at: ctx.now,
        actor: ctx.actor.clone(),
        causation: Some(ctx.command_id.uuid()),
        correlation: ctx.correlation,
        event,
    }
}

/// The funding deadline `d` sets at `t`; refused when it would fall past the last
/// instant a timestamp can be written as (year 9999), so no event ever carries a
/// time that no reader accepts.
fn deadline_from(
    t: Timestamp,
    d: &crate::policy::DeadlineRule,
    holidays: &[crate::time::Date],
) -> Result<Timestamp> {
    let deadline = if d.business_days {
        t.add_business_days_except(d.days, holidays)
    } else {
        t.add_days(i64::from(d.days))
    };
    deadline.in_range().ok_or_else(|| Error::Rejected {
        code: "deadline_out_of_range",
        message: format!(
            "a funding deadline {} days after {t} would fall after {}",
            d.days,
            Timestamp::MAX
        ),
    })
}

/// Roles of the policy allowed to issue `kind` (besides built-in rules).
fn permitted_roles(policy: &Policy, kind: CommandKind) -> Vec<Role> {
    let p = &policy.permissions;
    match kind {
        CommandKind::Invite | CommandKind::Remove => p.invite.clone(),
        CommandKind::AttachFundingMethod | CommandKind::SubmitFunding => {
            let mut r = p.fund.clone();
            r.push(policy.payer_role.clone());
            r
        }
        CommandKind::RequestRelease | CommandKind::AmendRelease => p.request_release.clone(),
        CommandKind::RequestRefund => p.request_refund.clone(),
        CommandKind::SubmitDisbursement => p.disburse.clone(),
        CommandKind::OpenDispute => p.dispute.clone(),
        CommandKind::ResolveDispute => p.resolve.clone(),
        CommandKind::Cancel => p.cancel.clone(),
        CommandKind::RecordReversal
        | CommandKind::RecordShortfallRecovery
        | CommandKind::WriteOffShortfall
        | CommandKind::Close => p.administer.clone(),
        CommandKind::CancelRequest => {
            let mut r = p.request_release.clone();
            r.extend(p.request_refund.iter().cloned());
            r
        }
        CommandKind::AgreeToTerms => policy.agreement.clone(),
        CommandKind::Approve | CommandKind::Deny | CommandKind::WithdrawApproval => {
            let mut r = policy.release.approvals.roles().to_vec();
            r.extend(policy.refund.approvals.roles().iter().cloned());
            r
        }
        CommandKind::Join => policy.roles.keys().cloned().collect(),
        CommandKind::Initiate | CommandKind::RailNotice | CommandKind::Tick => Vec::new(),
    }
}

/// Whether the actor may issue `kind` in the current state at all (before looking at
/// the command's parameters). Used by `decide` and to list a viewer's actions.
pub fn may(s: &PaymentState, kind: CommandKind, ctx: &Context) -> Result<()> {
    let role = &ctx.actor.role;
    // Who: the rail and the clock are built-in; everyone else is a participant.
    match kind {
        CommandKind::RailNotice => {
            if role.as_str() != "rail" || ctx.actor.party.is_some() {
                return reject(
                    "not_permitted",
                    "rail notices come from the rail role only (an actor without a party)",
                );
            }
        }
        CommandKind::Tick => {
            if role.as_str() != "system" || ctx.actor.party.is_some() {
                return reject(
                    "not_permitted",
                    "the clock is the system role's (an actor without a party)",
                );
            }
        }
        CommandKind::Initiate => {
            return reject(
                "payment_exists",
                format!("payment {} already exists", s.payment),
            )
        }
        _ => {
            let Some(party) = ctx.actor.party else {
                return reject("actor_required", "this command is issued by a participant");
            };
            let Some(p) = s.participants.get(&party).filter(|p| !p.removed) else {
                return reject(
                    "unknown_participant",
                    format!("party {party} is not a participant of this payment"),
                );
            };
            if !p.roles.contains(role) {
                return reject(
                    "not_permitted",
                    format!(
                        "party {party} does not hold role `{}` in this payment",
                        crate::error::echo(role.as_str())
                    ),
                );
            }
            if kind != CommandKind::Join && !p.joined {
                return reject("not_joined", "join the payment first");
            }
            let mut allowed = permitted_roles(&s.policy_doc, kind);
            allowed.sort();
            allowed.dedup();
            if !allowed.contains(role) {
                return reject(
                    "not_permitted",
                    format!(
                        "role `{role}` may not {kind:?} under policy {} v{} (allowed: {})",
                        s.policy.id,
                        s.policy.version,
                        if allowed.is_empty() {
                            "no role".to_string()
                        } else {
                            allowed
                                .iter()
                                .map(Role::as_str)
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    ),
                );
            }
        }
    }
    // When: the payment's state.
    let st = s.status;
    let after_terminal = matches!(
        kind,
        CommandKind::RailNotice
            | CommandKind::Tick
            | CommandKind::Close
            | CommandKind::RecordShortfallRecovery
            | CommandKind::WriteOffShortfall
            // A payout the payee's bank sent back after the payment completed.
            | CommandKind::RecordReversal
    );
    if st.is_terminal() && !after_terminal {
        return reject(
            "payment_terminal",
            format!("payment is {st:?}: no further changes"),
        );
    }
    let disputed = s.open_dispute().is_some();
    let open = s.open_request();
    let need = |ok: bool, code: &'static str, msg: &str| -> Result<()> {
        if ok {
            Ok(())
        } else {
            reject(code, format!("{msg} (payment is {st:?})"))
        }
    };
    let wound_down = s.cancelled || s.expired;
    match kind {
        CommandKind::Join => {
            let p = ctx.actor.party.and_then(|id| s.participants.get(&id));
            need(
                p.is_some_and(|p| !p.joined),
                "already_joined",
                "already joined",
            )
        }
        CommandKind::AgreeToTerms => need(
            matches!(st, Status::Draft | Status::AwaitingAgreement),
            "invalid_state",
            "terms are agreed before funding",
        ),
        CommandKind::AttachFundingMethod => need(
            st.is_before_held() && !wound_down,
            "invalid_state",
            "a funding method is attached before funds are held",
        ),
        CommandKind::SubmitFunding => {
            need(
                matches!(
                    st,
                    Status::AwaitingFunds | Status::FundingInFlight | Status::Funded
                ) && !wound_down,
                "invalid_state",
                "funding is accepted once terms are agreed and until fully funded",
            )?;
            approvers_joined(s)
        }
        CommandKind::RequestRelease => {
            need(
                !disputed,
                "payment_disputed",
                "nothing leaves escrow while disputed",
            )?;
            need(
                !wound_down,
                "invalid_state",
                "a cancelled or expired payment refunds",
            )?;
            need(open.is_none(), "request_open", "another request is open")?;
            need(
                st == Status::Held,
                "invalid_state",
                "releases draw on held funds",
            )
        }
        CommandKind::RequestRefund => {
            need(
                !disputed,
                "payment_disputed",
                "nothing leaves escrow while disputed",
            )?;
            need(open.is_none(), "request_open", "another request is open")?;
            // Held, or part of the payment held while the rest is awaited (a partial
            // return left the payer short): what is held can go back either way.
            need(
                st == Status::Held
                    || (st == Status::AwaitingFunds && s.escrow_available().is_positive()),
                "invalid_state",
                "refunds draw on held funds",
            )
        }
        CommandKind::AmendRelease
        | CommandKind::Approve
        | CommandKind::Deny
        | CommandKind::WithdrawApproval => need(
            open.is_some_and(|(_, r)| r.status == RequestStatus::AwaitingApprovals),
            "no_open_request",
            "no request awaits approvals",
        ),
        CommandKind::CancelRequest => {
            need(
                open.is_some_and(|(_, r)| {
                    matches!(
                        r.status,
                        RequestStatus::AwaitingApprovals | RequestStatus::Authorized
                    )
                }),
                "no_open_request",
                "no request that can be cancelled",
            )?;
            not_mandated(open.map(|(_, r)| r))
        }
        CommandKind::SubmitDisbursement => {
            need(
                !disputed,
                "payment_disputed",
                "nothing leaves escrow while disputed",
            )?;
            if let Some((id, r)) =
                open.filter(|(_, r)| r.status == RequestStatus::AwaitingApprovals)
            {
                let valid = r
                    .approvals
                    .values()
                    .filter(|h| **h == r.allocations_hash)
                    .count();
                return reject(
                    "quorum_not_met",
                    format!(
                        "request {id} has {valid} valid approval(s); the policy needs {}",
                        describe_rule(s.policy_doc.approvals(r.kind == RequestKind::Refund))
                    ),
                );
            }
            need(
                open.is_some_and(|(_, r)| r.status == RequestStatus::Authorized),
                "no_authorized_request",
                "no authorized request to disburse",
            )
        }
        CommandKind::OpenDispute => {
            need(!disputed, "dispute_open", "a dispute is already open")?;
            need(
                !matches!(
                    st,
                    Status::Draft | Status::AwaitingAgreement | Status::Shortfall
                ),
                "invalid_state",
                "disputes are about funded or funding payments",
            )
        }
        CommandKind::ResolveDispute => need(disputed, "no_open_dispute", "no dispute is open"),
        CommandKind::Cancel => {
            need(
                !disputed,
                "payment_disputed",
                "resolve the dispute before cancelling",
            )?;
            need(!wound_down, "invalid_state", "already cancelled or expired")?;
            need(
                st != Status::Shortfall,
                "invalid_state",
                "resolve the shortfall instead",
            )?;
            need(
                s.funding_in_progress().is_zero(),
                "funds_in_flight",
                "funding is on a rail: wait until it settles (then funds are refunded) or fails",
            )?;
            need(
                !open.is_some_and(|(_, r)| r.status == RequestStatus::Submitted),
                "disbursement_in_flight",
                "a disbursement is on a rail: wait for its outcome",
            )?;
            not_mandated(open.map(|(_, r)| r))?;
            // Cancelling refunds what is held at once, with no approvals: only where
            // the policy's refunds need none. Otherwise the money held goes back the
            // way every refund does, with the approvals the parties agreed to.
            let rule = &s.policy_doc.refund.approvals;
            if s.ledger.balance(&Account::Escrow).posted.is_positive()
                && !matches!(rule, crate::policy::Approvals::None)
            {
                return reject(
                    "refund_approvals_required",
                    format!(
                        "money is held in escrow and this policy's refunds need approvals \
                         ({}): request the refund (RequestRefund) instead; once it is paid out \
                         the payment ends Refunded",
                        describe_rule(rule)
                    ),
                );
            }
            Ok(())
        }
        CommandKind::RecordShortfallRecovery | CommandKind::WriteOffShortfall => {
            need(
                st == Status::Shortfall,
                "invalid_state",
                "there is no shortfall",
            )?;
            // Recovering or writing off ends the shortfall, and an ended payment takes no
            // more money: a transfer still on a rail (a funding that may yet settle, a
            // release that may yet fail back into escrow and cover the shortfall itself)
            // could change it, so its outcome comes first.
            let what = if kind == CommandKind::WriteOffShortfall {
                "write the shortfall off"
            } else {
                "record a recovery"
            };
            match s
                .ledger
                .legs
                .iter()
                .find(|l| l.status == LegStatus::Pending)
            {
                Some(leg) => reject(
                    "transfer_in_flight",
                    format!(
                        "leg {} ({} → {}, {}) is still pending: {what} once the rail has \
                         reported its outcome",
                        leg.id, leg.from, leg.to, leg.amount
                    ),
                ),
                None => Ok(()),
            }
        }
        CommandKind::Close => need(
            st.is_terminal() && st != Status::Closed,
            "invalid_state",
            "only a finished payment can be closed",
        ),
        CommandKind::Invite | CommandKind::Remove | CommandKind::RecordReversal => Ok(()),
        CommandKind::RailNotice | CommandKind::Tick | CommandKind::Initiate => Ok(()),
    }
}

/// Sets the funding deadline anchored on agreement once every party that must agree
/// has (after an agreement, or the removal of the last party yet to agree).
fn deadline_once_agreed(em: &mut Emitter<'_>) -> Result<()> {
    let s = &em.state;
    if s.all_agreed() && s.funding.deadline.is_none() && s.status.is_before_held() {
        if let Some(d) = s.policy_doc.funding.deadline.clone() {
            if d.anchor == DeadlineAnchor::Agreed {
                let deadline = deadline_from(em.ctx.now, &d, &s.policy_doc.funding.holidays)?;
                em.emit(FundingDeadlineSet { deadline })?;
            }
        }
    }
    Ok(())
}

/// What `role` decides or receives about the money, if anything: the roles whose holders
/// pay, are paid, approve releases or refunds, collect a fee or resolve disputes.
pub(crate) fn money_power(policy: &Policy, role: &Role) -> Option<&'static str> {
    if *role == policy.payer_role {
        Some("pays")
    } else if policy.payee_roles.contains(role) {
        Some("is paid releases")
    } else if policy.release.approvals.roles().contains(role)
        || policy.refund.approvals.roles().contains(role)
    {
        Some("approves releases or refunds")
    } else if policy.fees.iter().any(|f| f.to_role == *role) {
        Some("collects a fee")
    } else if policy.permissions.resolve.contains(role) {
        Some("resolves disputes")
    } else {
        None
    }
}

/// Whether money has come in and not all gone out: then who pays, is paid, approves,
/// collects or resolves is fixed, so that no one can remove a party from such a role or
/// invite a stand-in into it (who would approve a refund to the inviter, or be paid).
pub(crate) fn roster_locked(s: &PaymentState) -> bool {
    !s.status.is_terminal()
        && (s.ledger.balance(&Account::Escrow).posted.is_positive()
            || s.ledger.balance(&Account::Clearing).posted.is_positive()
            || !s.funding_in_progress().is_zero())
}

/// Refuses funding while the joined participants could not approve a release (unless
/// the policy releases automatically) or a refund: once money arrives no one may join
/// an approving role ([`roster_locked`]), so the money could leave only by a dispute.
fn approvers_joined(s: &PaymentState) -> Result<()> {
    use crate::approval::quorum_reachable;
    let policy = &s.policy_doc;
    for kind in [RequestKind::Release, RequestKind::Refund] {
        if kind == RequestKind::Release && policy.release.auto_release_after_hours.is_some() {
            continue;
        }
        if !quorum_reachable(s, kind) {
            let needs = match policy.approvals(kind == RequestKind::Refund) {
                crate::policy::Approvals::NOf { n, roles } => {
                    format!("{n} different parties among {}", quoted(roles))
                }
                other => format!("a different party for each of {}", quoted(other.roles())),
            };
            let what = if kind == RequestKind::Release {
                "a release"
            } else {
                "a refund"
            };
            return reject(
                "approvers_missing",
                format!(
                    "{what} needs approvals from {needs}, more than the joined participants \
                     can give; no one may join an approving role once money arrives: \
                     invite them and let them join before funding"
                ),
            );
        }
    }
    Ok(())
}

/// `roles` as `` `a`, `b` ``.
fn quoted(roles: &[Role]) -> String {
    let quoted: Vec<String> = roles.iter().map(|r| format!("`{r}`")).collect();
    quoted.join(", ")
}

/// Refuses a roster change to `role` while [`roster_locked`], and while a payment paid
/// out in part awaits the rest (its payees are still owed it; `decide` only: histories
/// from before still fold).
fn check_roster(s: &PaymentState, role: &Role, change: &str) -> Result<()> {
    let awaiting_rest = s.paid_out() && s.status == Status::AwaitingFunds;
    match money_power(&s.policy_doc, role) {
        Some(power) if roster_locked(s) => reject(
            "role_locked",
            format!(
                "role `{role}` {power}: while money is in escrow or on its way, {change}; \
                 settle it through a dispute, or once the money is out"
            ),
        ),
        Some(power) if awaiting_rest => reject(
            "role_locked",
            format!(
                "role `{role}` {power}: while the payment paid out in part awaits the rest \
                 of its funding, {change}; cancel the payment first"
            ),
        ),
        _ => Ok(()),
    }
}

/// A request the payment's own rules authorized — a dispute's resolution, the policy's
/// automatic release, the refund after a cancellation or expiry — is carried out, not
/// called off by a party: cancelling it would let one side overrule the arbiter or the
/// policy (and leave a cancelled payment's money with no refund under way).
fn not_mandated(open: Option<&crate::state::Request>) -> Result<()> {
    match open.and_then(|r| r.mandate) {
        Some(m) => reject(
            "mandated_request",
            format!(
                "the open request carries out {}: it cannot be cancelled by a party",
                match m {
                    crate::state::Mandate::AutoRelease => "the policy's automatic release",
                    crate::state::Mandate::Cancellation => "the refund of a cancelled payment",
                    crate::state::Mandate::Expiry => "the refund of an expired payment",
                    crate::state::Mandate::DisputeResolution => "a dispute's resolution",
                }
            ),
        ),
        None => Ok(()),
    }
}

fn describe_rule(a: &crate::policy::Approvals) -> String {
    use crate::policy::Approvals;
    let names = |r: &[Role]| r.iter().map(Role::as_str).collect::<Vec<_>>().join(", ");
    match a {
        Approvals::None => "none".into(),
        Approvals::AllOf(r) => format!("one from each of: {}", names(r)),
        Approvals::NOf { n, roles } => format!("{n} of: {}", names(roles)),
    }
}

/// The commands the actor may issue now: what a widget shows as buttons.
pub fn allowed_commands(s: &PaymentState, ctx: &Context) -> Vec<CommandKind> {
    CommandKind::PARTICIPANT
        .iter()
        .copied()
        .filter(|k| may(s, *k, ctx).is_ok())
        .filter(|k| match k {
            // Approving is offered only to parties whose approval counts.
            CommandKind::Approve | CommandKind::Deny => ctx.actor.party.is_some_and(|p| {
                s.open_request().is_some_and(|(_, r)| {
                    may_approve(s, r.kind, &p) && r.approvals.get(&p) != Some(&r.allocations_hash)
                })
            }),
            CommandKind::WithdrawApproval => ctx.actor.party.is_some_and(|p| {
                s.open_request()
                    .is_some_and(|(_, r)| r.approvals.contains_key(&p))
            }),
            CommandKind::AgreeToTerms => ctx
                .actor
                .party
                .and_then(|p| s.participants.get(&p))
                .is_some_and(|p| !p.agreed),
            // Calling a request off is offered to the roles that may ask for its kind.
            CommandKind::CancelRequest => s.open_request().is_some_and(|(_, r)| {
                let p = &s.policy_doc.permissions;
                match r.kind {
                    RequestKind::Release => p.request_release.contains(&ctx.actor.role),
                    RequestKind::Refund => p.request_refund.contains(&ctx.actor.role),
                }
            }),
            _ => true,
        })
        .collect()
}

fn actor_party(ctx: &Context) -> Result<PartyId> {
    ctx.actor
        .party
        .ok_or_else(|| Error::rejected("actor_required", "this command is issued by a participant"))
}

fn rules(em: &mut Emitter<'_>, cmd: &Command) -> Result<()> {
    let ctx = em.ctx;
    match cmd {
        Command::Initiate { .. } => reject("payment_exists", "payment already exists"),
        Command::Invite {
            party,
            roles,
            name,
            email,
        } => {
            let s = &em.state;
            if roles.is_empty() {
                return reject("roles_required", "invite with at least one role");
            }
            for r in roles {
                let Some(rule) = s.policy_doc.roles.get(r) else {
                    return reject(
                        "unknown_role",
                        format!("role `{r}` is not in policy {}", s.policy.id),
                    );
                };
                check_roster(s, r, "no one may be invited into it")?;
                let holders = s
                    .participants
                    .values()
                    .filter(|p| !p.removed && p.roles.contains(r))
                    .count();
                if rule.max.is_some_and(|m| holders as u32 >= m) {
                    return reject(
                        "role_full",
                        format!(
                            "role `{r}` already has its maximum of {} parties",
                            rule.max.unwrap_or(0)
                        ),
                    );
                }
            }
            if s.participants.get(party).is_some_and(|p| !p.removed) {
                return reject(
                    "already_participant",
                    format!("party {party} is already a participant"),
                );
            }
            em.emit(ParticipantInvited {
                party: *party,
                roles: roles.clone(),
                name: name.clone(),
                email: email.clone(),
            })
        }
        Command::Join => {
            let party = actor_party(ctx)?;
            // Invited before the money came, joining after it: a stand-in in a role
            // that approves or is paid would get in by the back door.
            if let Some(p) = em.state.participants.get(&party) {
                for r in &p.roles {
                    check_roster(&em.state, r, "no one invited into it may join now")?;
                }
            }
            em.emit(ParticipantJoined { party })
        }
        Command::Remove { party, reason } => {
            let s = &em.state;
            if s.participants.get(party).is_none_or(|p| p.removed) {
                return reject(
                    "unknown_participant",
                    format!("party {party} is not a participant"),
                );
            }
            if *party == s.initiator {
                return reject("not_permitted", "the initiator cannot be removed");
            }
            if !s.status.is_before_held()
                && s.participants
                    .get(party)
                    .is_some_and(|p| p.roles.contains(&s.policy_doc.payer_role))
            {
                return reject(
                    "not_permitted",
                    "the payer cannot be removed once funds are held",
                );
            }
            // A party that never joined has never acted and cannot now (it may not
            // join while the roster is locked): removing it changes nothing it did.
            if let Some(p) = s.participants.get(party).filter(|p| p.joined) {
                for r in &p.roles {
                    check_roster(s, r, "no one who acted in it may be removed")?;
                }
            }
            em.emit(ParticipantRemoved {
                party: *party,
                reason: reason.clone(),
            })?;
            // The last party yet to agree may be the one removed: the others' agreement
            // is then complete, and a deadline anchored on it starts now.
            deadline_once_agreed(em)
        }
        Command::AgreeToTerms { terms_hash } => {
            let party = actor_party(ctx)?;
            let s = &em.state;
            if *terms_hash != s.terms_hash {
                return reject(
                    "terms_mismatch",
                    format!(
                        "the terms are {}, not {terms_hash}: reload and agree again",
                        s.terms_hash
                    ),
                );
            }
            if s.participants.get(&party).is_some_and(|p| p.agreed) {
                return reject("already_agreed", "already agreed to these terms");
            }
            em.emit(TermsAgreed {
                party,
                terms_hash: *terms_hash,
            })?;
            deadline_once_agreed(em)
        }
        Command::AttachFundingMethod { method } => {
            if !em.state.policy_doc.funding.rails.contains(&method.rail) {
                return reject(
                    "rail_not_allowed",
                    format!("rail {:?} is not allowed by the policy", method.rail),
                );
            }
            em.emit(FundingMethodAttached {
                method: method.clone(),
            })
        }
        Command::SubmitFunding {
            amount,
            rail,
            rail_ref,
        } => submit_funding(em, amount, *rail, rail_ref),
        Command::RailNotice { rail_ref, notice } => rail_notice(em, rail_ref, notice),
        Command::Tick => tick(em),
        Command::RequestRelease {
            request,
            allocations,
        } => {
            if em.state.requests.contains_key(request) {
                return reject("request_exists", format!("request {request} exists"));
            }
            check_release(&em.state, allocations, false)?;
            em.emit(ReleaseRequested {
                request: *request,
                allocations: allocations.clone(),
                allocations_hash: allocations_hash(allocations),
            })?;
            assess_fees(em, request)?;
            authorize_if_quorum(em, request)
        }
        Command::AmendRelease {
            request,
            allocations,
        } => {
            let Some((open_id, r)) = em.state.open_request() else {
                return reject("no_open_request", "no request awaits approvals");
            };
            if open_id != *request || r.kind != RequestKind::Release {
                return reject(
                    "unknown_request",
                    format!("request {request} is not the open release"),
                );
            }
            check_release(&em.state, allocations, false)?;
            em.emit(ReleaseAmended {
                request: *request,
                allocations: allocations.clone(),
                allocations_hash: allocations_hash(allocations),
            })?;
            assess_fees(em, request)?;
            authorize_if_quorum(em, request)
        }
        Command::RequestRefund { request, amount } => {
            if em.state.requests.contains_key(request) {
                return reject("request_exists", format!("request {request} exists"));
            }
            let amount = refund_amount(&em.state, amount.as_ref())?;
            // Part of a payment still being funded goes back whole or not at all: a
            // partial refund would end the funding phase with the payment short (and
            // open it to releases and the automatic release).
            if em.state.status == Status::AwaitingFunds && amount != em.state.escrow_available() {
                return reject(
                    "partial_refund_not_allowed",
                    format!(
                        "the payment is still being funded: refund everything held ({}) \
                         or nothing",
                        em.state.escrow_available()
                    ),
                );
            }
            em.emit(RefundRequested {
                request: *request,
                amount,
                allocations_hash: refund_hash(&amount),
            })?;
            authorize_if_quorum(em, request)
        }
        Command::Approve {
            request,
            allocations_hash,
        } => {
            let party = actor_party(ctx)?;
            let r = open_awaiting(&em.state, request)?;
            if !may_approve(&em.state, r.kind, &party) {
                return reject(
                    "not_an_approver",
                    "this party's roles do not count toward this request's quorum",
                );
            }
            if *allocations_hash != r.allocations_hash {
                return reject(
                    "approval_stale",
                    format!(
                        "the allocations changed: approve {} instead",
                        r.allocations_hash
                    ),
                );
            }
            if r.approvals.get(&party) == Some(allocations_hash) {
                return reject("already_approved", "already approved these allocations");
            }
            em.emit(ApprovalGranted {
                request: *request,
                party,
                allocations_hash: *allocations_hash,
            })?;
            authorize_if_quorum(em, request)
        }
        Command::Deny { request, reason } => {
            let party = actor_party(ctx)?;
            let r = open_awaiting(&em.state, request)?;
            if !may_approve(&em.state, r.kind, &party) {
                return reject(
                    "not_an_approver",
                    "this party's roles do not count toward this request's quorum",
                );
            }
            em.emit(ApprovalDenied {
                request: *request,
                party,
                reason: reason.clone(),
            })
        }
        Command::WithdrawApproval { request } => {
            let party = actor_party(ctx)?;
            let r = open_awaiting(&em.state, request)?;
            if !r.approvals.contains_key(&party) {
                return reject("no_approval", "this party has not approved this request");
            }
            em.emit(ApprovalWithdrawn {
                request: *request,
                party,
            })
        }
        Command::CancelRequest { request, reason } => {
            let kind = match em.state.requests.get(request) {
                Some(r)
                    if matches!(
                        r.status,
                        RequestStatus::AwaitingApprovals | RequestStatus::Authorized
                    ) =>
                {
                    r.kind
                }
                _ => {
                    return reject(
                        "unknown_request",
                        format!("request {request} cannot be cancelled"),
                    )
                }
            };
            // Only a role that may ask for this kind of request calls one off: a role
            // that may only ask for refunds does not undo a release its approvers
            // authorized, nor the other way round.
            let perms = &em.state.policy_doc.permissions;
            let (may, what) = match kind {
                RequestKind::Release => (&perms.request_release, "release"),
                RequestKind::Refund => (&perms.request_refund, "refund"),
            };
            if !may.contains(&em.ctx.actor.role) {
                return reject(
                    "not_permitted",
                    format!(
                        "role `{}` may not cancel a {what}: only a role that may request \
                         one ({})",
                        em.ctx.actor.role,
                        may.iter().map(Role::as_str).collect::<Vec<_>>().join(", ")
                    ),
                );
            }
            em.emit(RequestCancelled {
                request: *request,
                reason: reason.clone(),
            })
        }
        Command::SubmitDisbursement {
            request,
            rail,
            rail_ref,
        } => {
            match em.state.requests.get(request) {
                Some(r) if r.status == RequestStatus::Authorized => {}
                _ => {
                    return reject(
                        "unknown_request",
                        format!("request {request} is not authorized"),
                    )
                }
            }
            check_rail_ref(&em.state, rail_ref)?;
            let held = held_for(&em.state, rail_ref);
            em.emit(DisbursementSubmitted {
                request: *request,
                rail: *rail,
                rail_ref: rail_ref.clone(),
            })?;
            apply_held(em, rail_ref, held)
        }
        Command::OpenDispute { dispute, reason } => {
            if em.state.disputes.contains_key(dispute) {
                return reject("dispute_exists", format!("dispute {dispute} exists"));
            }
            // Authorized but not yet on a rail: pull it back so nothing leaves escrow.
            cancel_open_request(em, &[RequestStatus::Authorized], "dispute opened")?;
            em.emit(DisputeOpened {
                dispute: *dispute,
                reason: reason.clone(),
            })
        }
        Command::ResolveDispute {
            dispute,
            outcome,
            request,
            allocations,
            amount,
            note,
        } => resolve_dispute(
            em,
            dispute,
            *outcome,
            request.as_ref(),
            allocations,
            amount.as_ref(),
            note,
        ),
        Command::Cancel {
            reason,
            refund_request,
        } => {
            cancel_open_request(
                em,
                &[RequestStatus::AwaitingApprovals, RequestStatus::Authorized],
                "payment cancelled",
            )?;
            let held = em.state.escrow_available();
            let in_clearing = em.state.ledger.balance(&Account::Clearing).posted;
            if in_clearing.is_positive() {
                return reject("funds_not_available", "settled funds are not yet good: cancel once they are available, so they can be refunded");
            }
            if held.is_positive() && refund_request.is_none() {
                return reject(
                    "refund_request_required",
                    "funds are held: give refund_request, the id of the refund that returns them",
                );
            }
            em.emit(PaymentCancelled {
                reason: reason.clone(),
            })?;
            if let (true, Some(req)) = (held.is_positive(), refund_request) {
                em.emit(RefundRequested {
                    request: *req,
                    amount: held,
                    allocations_hash: refund_hash(&held),
                })?;
                em.emit(RefundAuthorized { request: *req })?;
            }
            Ok(())
        }
        Command::RecordReversal { leg, reason } => {
            if em.state.closed {
                return reject(
                    "payment_terminal",
                    "payment is Closed: a closed file takes no corrections",
                );
            }
            let Some(l) = em
                .state
                .ledger
                .leg(*leg)
                .filter(|l| l.status == LegStatus::Posted)
                .cloned()
            else {
                return reject("unknown_leg", format!("no posted leg {leg}"));
            };
            if em.state.reversed_legs.contains(leg) {
                return reject(
                    "already_reversed",
                    format!("leg {leg} was already reversed"),
                );
            }
            // Only money a release or refund moved is corrected this way; funding is
            // undone by the rail's own notices (a return), never by hand.
            if l.group.is_none() {
                return reject(
                    "not_reversible",
                    format!(
                        "leg {leg} is funding, not a disbursement: funding is undone by the \
                         rail's return notice"
                    ),
                );
            }
            if l.to == Account::Escrow {
                // Reversing it takes money out of escrow again.
                if em.state.open_dispute().is_some() {
                    return reject("payment_disputed", "nothing leaves escrow while disputed");
                }
                let available = em.state.escrow_available();
                if available < l.amount {
                    return reject(
                        "funds_not_available",
                        format!(
                            "reversing leg {leg} takes {} out of escrow, which has {available} \
                             available",
                            l.amount
                        ),
                    );
                }
            }
            em.emit(ReversalRecorded {
                leg: *leg,
                reason: reason.clone(),
            })?;
            cancel_unfunded_request(em)
        }
        Command::RecordShortfallRecovery { amount, rail_ref } => {
            em.state.amount.same_currency(amount)?;
            amount.require_positive()?;
            check_rail_ref(&em.state, rail_ref)?;
            let short = em.state.ledger.balance(&Account::LossReturns).posted.neg();
            if *amount > short {
                return reject("exceeds_shortfall", format!("the shortfall is {short}"));
            }
            em.emit(ShortfallRecovered {
                amount: *amount,
                rail_ref: rail_ref.clone(),
            })
        }
        Command::WriteOffShortfall { reason } => {
            let short = em.state.ledger.balance(&Account::LossReturns).posted.neg();
            em.emit(ShortfallWrittenOff {
                amount: short,
                reason: reason.clone(),
            })
        }
        Command::Close { reason } => em.emit(PaymentClosed {
            reason: reason.clone(),
        }),
    }
}

fn open_awaiting<'a>(s: &'a PaymentState, request: &RequestId) -> Result<&'a Request> {
    match s.requests.get(request) {
        Some(r) if r.status == RequestStatus::AwaitingApprovals => Ok(r),
        Some(_) => reject(
            "request_closed",
            format!("request {request} no longer awaits approvals"),
        ),
        None => reject("unknown_request", format!("no request {request}")),
    }
}

/// A rail reference's shape: 1 to 128 bytes, not blank.
fn check_rail_ref_shape(rail_ref: &str) -> Result<()> {
    if rail_ref.trim().is_empty() || rail_ref.len() > 128 {
        return reject(
            "invalid_rail_ref",
            "a rail reference is 1 to 128 bytes, not blank",
        );
    }
    Ok(())
}

fn check_rail_ref(s: &PaymentState, rail_ref: &str) -> Result<()> {
    check_rail_ref_shape(rail_ref)?;
    if s.rail_refs.contains_key(rail_ref) {
        return reject(
            "rail_ref_reused",
            format!("rail reference `{rail_ref}` is already used"),
        );
    }
    Ok(())
}

fn submit_funding(
    em: &mut Emitter<'_>,
    amount: &Money,
    rail: crate::policy::Rail,
    rail_ref: &str,
) -> Result<()> {
    let s = &em.state;
    s.amount.same_currency(amount)?;
    amount.require_positive()?;
    if !s.policy_doc.funding.rails.contains(&rail) {
        return reject(
            "rail_not_allowed",
            format!("rail {rail:?} is not allowed by the policy"),
        );
    }
    check_rail_ref(s, rail_ref)?;
    if let Some(d) = funding_deadline(s) {
        if em.ctx.now > d && s.policy_doc.funding.on_deadline_missed == OnDeadlineMissed::Expire {
            return reject(
                "deadline_passed",
                format!("the funding deadline {d} has passed"),
            );
        }
    }
    let remaining = s.remaining_to_fund()?;
    if *amount > remaining {
        return reject(
            "overfunding",
            format!("only {remaining} remains to be funded"),
        );
    }
    if !s.policy_doc.funding.allow_partial && *amount != remaining {
        return reject(
            "partial_funding_not_allowed",
            format!("the policy requires funding the whole {remaining} at once"),
        );
    }
    let leg = LegId(em.derived("leg", 0));
    let held = held_for(&em.state, rail_ref);
    em.emit(FundingSubmitted {
        leg,
        amount: *amount,
        rail,
        rail_ref: rail_ref.to_string(),
    })?;
    apply_held(em, rail_ref, held)
}

/// The notices the rail sent for `rail_ref` before its transfer was recorded.
fn held_for(s: &PaymentState, rail_ref: &str) -> Vec<RailOutcome> {
    s.held_notices.get(rail_ref).cloned().unwrap_or_default()
}

/// Applies the held notices of the transfer just recorded, in arrival order, as the
/// rail's (their events' actor is the rail, which stated them): the outcome does not
/// depend on which arrived first. A notice the transfer's state contradicts (a failure
/// after a settlement) is dropped, as it would have been refused on arrival.
fn apply_held(em: &mut Emitter<'_>, rail_ref: &str, held: Vec<RailOutcome>) -> Result<()> {
    if held.is_empty() {
        return Ok(());
    }
    em.acting = Some(Context {
        actor: crate::envelope::Actor::rail(),
        ..em.ctx.clone()
    });
    for notice in &held {
        // All of a notice or none of it: one that fails part-way is undone and dropped,
        // and never fails the command that records the transfer.
        let (state, events, sealed) = (em.state.clone(), em.events.len(), em.sealed.len());
        if rail_notice(em, rail_ref, notice).is_err() {
            em.state = state;
            em.events.truncate(events);
            em.sealed.truncate(sealed);
        }
    }
    em.acting = None;
    Ok(())
}

/// What a return notice says alone: an ACH return code, and an amount (if given) in
/// the payment's currency and positive.
fn check_return(s: &PaymentState, code: &str, amount: &Option<Money>) -> Result<()> {
    // In the order they were always checked: the code, the currency, the sign.
    if let (true, Some(m)) = (valid_return_code(code), amount) {
        s.amount.same_currency(m)?;
    }
    check_return_shape(code, amount)
}

/// What a return notice says, whatever the payment: a return code `R` and two digits,
/// and an amount (if given) that is positive.
fn check_return_shape(code: &str, amount: &Option<Money>) -> Result<()> {
    if !valid_return_code(code) {
        return reject(
            "invalid_return_code",
            format!("`{code}` is not a return code (R and two digits, e.g. R01)"),
        );
    }
    if let Some(m) = amount {
        m.require_positive()?;
    }
    Ok(())
}

fn valid_return_code(code: &str) -> bool {
    let b = code.as_bytes();
    b.len() == 3 && b[0] == b'R' && b[1].is_ascii_digit() && b[2].is_ascii_digit()
}

fn rail_notice(em: &mut Emitter<'_>, rail_ref: &str, notice: &RailOutcome) -> Result<()> {
    let target = em.state.rail_refs.get(rail_ref).copied();
    match target {
        None => hold_notice(em, rail_ref, notice),
        Some(RailTarget::Recovery) => Ok(()),
        Some(RailTarget::Funding(leg)) => {
            let Some(a) = em
                .state
                .funding
                .attempts
                .iter()
                .find(|a| a.leg == leg)
                .cloned()
            else {
                return reject("unknown_rail_reference", "no funding for this reference");
            };
            let r = rail_ref.to_string();
            match (notice, a.status) {
                (RailOutcome::Settled { amount }, FundingStatus::Submitted) => {
                    let amount = short_settlement(&em.state, &a, amount)?;
                    em.emit(FundingSettled {
                        leg,
                        rail_ref: r,
                        amount,
                    })?;
                    make_available_if_due(em, leg)
                }
                (
                    RailOutcome::Settled { amount },
                    FundingStatus::Settled | FundingStatus::Available | FundingStatus::Returned,
                ) => match amount {
                    // The same settlement again is a duplicate; one of another amount
                    // contradicts the first.
                    Some(m) if *m != a.settled_amount() => reject(
                        "notice_conflict",
                        format!(
                            "the rail already settled {} of this transfer",
                            a.settled_amount()
                        ),
                    ),
                    _ => Ok(()),
                },
                (RailOutcome::Failed { .. }, FundingStatus::Failed) => Ok(()),
                (RailOutcome::Returned { .. }, FundingStatus::Returned) => Ok(()),
                (RailOutcome::Failed { code, reason }, FundingStatus::Submitted) => {
                    em.emit(FundingFailed {
                        leg,
                        rail_ref: r,
                        code: code.clone(),
                        reason: reason.clone(),
                    })?;
                    expire_if_exhausted(em)
                }
                (
                    RailOutcome::Returned {
                        code,
                        reason,
                        amount,
                    },
                    FundingStatus::Submitted | FundingStatus::Settled | FundingStatus::Available,
                ) => {
                    if let Some(before) = a.returned {
                        // A transfer is returned once: the same partial return again is a
                        // duplicate notice; any other return of it contradicts the first.
                        return if *amount == Some(before) {
                            Ok(())
                        } else {
                            reject(
                                "notice_conflict",
                                format!("the rail already returned {before} of this transfer"),
                            )
                        };
                    }
                    check_return(&em.state, code, amount)?;
                    // What settled of it (all of it, unless its settlement was short).
                    let settled = a.settled_amount();
                    let amount = match amount {
                        Some(m) => {
                            if *m > settled {
                                return reject(
                                    "return_exceeds_funding",
                                    format!("the transfer brought {settled}"),
                                );
                            }
                            *m
                        }
                        None => settled,
                    };
                    if a.status == FundingStatus::Submitted {
                        // A return implies the transfer had settled: record both, in order.
                        em.emit(FundingSettled {
                            leg,
                            rail_ref: r.clone(),
                            amount: None,
                        })?;
                    }
                    let pulled_back = a.status == FundingStatus::Available
                        && cancel_authorized_for_return(em, amount)?;
                    em.emit(FundingReturned {
                        leg,
                        rail_ref: r,
                        return_code: code.clone(),
                        reason: reason.clone(),
                        amount,
                    })?;
                    // What a partial return left is good funds now if the rail's delay
                    // has passed (a wire's is none).
                    make_available_if_due(em, leg)?;
                    cancel_unfunded_request(em)?;
                    if pulled_back && (em.state.cancelled || em.state.expired) {
                        // The refund the return pulled back, for what is left.
                        refund_everything(em, "refund_after_return")?;
                    }
                    expire_if_exhausted(em)
                }
                (RailOutcome::Failed { .. }, _) => reject(
                    "notice_conflict",
                    "a settled transfer cannot fail; a return is reported as returned",
                ),
                (RailOutcome::Settled { .. }, FundingStatus::Failed)
                | (RailOutcome::Returned { .. }, FundingStatus::Failed) => reject(
                    "notice_conflict",
                    "the rail already reported this transfer failed",
                ),
            }
        }
        Some(RailTarget::Disbursement(request)) => {
            let Some(req) = em.state.requests.get(&request).cloned() else {
                return reject(
                    "unknown_rail_reference",
                    "no disbursement for this reference",
                );
            };
            let r = rail_ref.to_string();
            if let RailOutcome::Settled { amount: Some(_) } = notice {
                return reject(
                    "not_supported",
                    "a disbursement settles whole: its settlement carries no amount (a payee \
                     paid short is settled with the payee outside the payment)",
                );
            }
            match (notice, req.status) {
                (RailOutcome::Settled { .. }, RequestStatus::Submitted) => {
                    em.emit(DisbursementSettled {
                        request,
                        rail_ref: r,
                    })?;
                    // Funds that arrived while a refund was under way go back too.
                    refund_late_funds(em)
                }
                (RailOutcome::Failed { code, reason }, RequestStatus::Submitted) => {
                    em.emit(DisbursementFailed {
                        request,
                        rail_ref: r,
                        code: code.clone(),
                        reason: reason.clone(),
                    })
                }
                (RailOutcome::Settled { .. }, RequestStatus::Settled)
                | (RailOutcome::Failed { .. }, RequestStatus::Failed) => Ok(()),
                (RailOutcome::Returned { .. }, _) => reject(
                    "not_supported",
                    "returns of disbursements are recorded as reversals by an administrator",
                ),
                _ => reject(
                    "notice_conflict",
                    format!("the disbursement is already {:?}", req.status).to_lowercase(),
                ),
            }
        }
    }
}

/// What a funding's settlement records of `amount`, the part of the transfer that
/// arrived: nothing when all of it did (or the notice does not say), the amount when
/// less did (a wire whose banks on the way took their fees). More than the transfer is
/// refused (`settlement_exceeds_transfer`).
fn short_settlement(
    s: &PaymentState,
    a: &FundingAttempt,
    amount: &Option<Money>,
) -> Result<Option<Money>> {
    let Some(m) = amount else {
        return Ok(None);
    };
    check_settled(s, m)?;
    if *m > a.amount {
        return reject(
            "settlement_exceeds_transfer",
            format!("the rail settled {m} of a transfer of {}", a.amount),
        );
    }
    Ok((*m < a.amount).then_some(*m))
}

/// A settlement's amount: in the payment's currency, more than nothing.
fn check_settled(s: &PaymentState, m: &Money) -> Result<()> {
    s.amount.same_currency(m)?;
    m.require_positive().map(drop)
}

/// A notice about a transfer the payment has not recorded yet: held
/// (`RailNoticeHeld`) and applied when the funding or disbursement with that reference
/// is recorded, so the outcome does not depend on delivery order. The same notice again
/// is a duplicate; at most [`crate::fold::MAX_HELD_NOTICES`] are held; an ended payment
/// records no new transfer, so there it is refused as before.
fn hold_notice(em: &mut Emitter<'_>, rail_ref: &str, notice: &RailOutcome) -> Result<()> {
    let s = &em.state;
    // Only while a transfer can still be recorded: not once the payment ended, was
    // cancelled or expired, or is short (its recovery's reference is no transfer).
    if s.status.is_terminal() || s.cancelled || s.expired || s.status == Status::Shortfall {
        return reject(
            "unknown_rail_reference",
            format!("no transfer with rail reference `{rail_ref}`"),
        );
    }
    check_rail_ref(s, rail_ref)?;
    // What a notice says is checked now, as if its transfer were known: one held in a
    // wrong currency or with a bad code must not wait to block its transfer.
    match notice {
        RailOutcome::Returned { code, amount, .. } => check_return(s, code, amount)?,
        RailOutcome::Settled { amount: Some(m) } => check_settled(s, m)?,
        _ => {}
    }
    if s.held_notices
        .get(rail_ref)
        .is_some_and(|v| v.contains(notice))
    {
        return Ok(());
    }
    let held: usize = s.held_notices.values().map(Vec::len).sum();
    if held >= crate::fold::MAX_HELD_NOTICES {
        return reject(
            "too_many_held_notices",
            format!(
                "{held} notices already wait for transfers this payment has not recorded \
                 (no transfer with rail reference `{rail_ref}`)"
            ),
        );
    }
    em.emit(RailNoticeHeld {
        rail_ref: rail_ref.to_string(),
        notice: notice.clone(),
    })
}

/// Cancels the open request if it is in one of `statuses` (not yet on a rail).
fn cancel_open_request(
    em: &mut Emitter<'_>,
    statuses: &[RequestStatus],
    reason: &str,
) -> Result<()> {
    if let Some((id, r)) = em.state.open_request() {
        if statuses.contains(&r.status) {
            em.emit(RequestCancelled {
                request: id,
                reason: reason.into(),
            })?;
        }
    }
    Ok(())
}

/// A return out of escrow comes before a release or refund that is authorized but not
/// yet on a rail: when the request's reservation leaves less available than the return
/// takes, the request is cancelled (`RequestCancelled`, its legs voided), so the money
/// goes back to the payer from escrow instead of leaving twice (once to the payer, once
/// on the request's rail) with a loss booked for it. A request already on a rail ends as
/// the rail says; what it took is then a shortfall. Returns whether it cancelled one.
fn cancel_authorized_for_return(em: &mut Emitter<'_>, amount: Money) -> Result<bool> {
    let open = em.state.open_request().map(|(id, r)| (id, r.status));
    if let Some((id, RequestStatus::Authorized)) = open {
        if em.state.escrow_available() < amount {
            em.emit(RequestCancelled {
                request: id,
                reason: "funds returned by the payer's bank".into(),
            })?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// A request still waiting for approvals reserves nothing: if a return took the funds
/// it would draw on, it is cancelled (an authorized one keeps its reservation).
fn cancel_unfunded_request(em: &mut Emitter<'_>) -> Result<()> {
    let open = em.state.open_request().map(|(id, r)| (id, r.clone()));
    if let Some((id, r)) = open {
        if r.status == RequestStatus::AwaitingApprovals
            && disbursement_total(&r)? > em.state.escrow_available()
        {
            em.emit(RequestCancelled {
                request: id,
                reason: "funds returned by the payer's bank".into(),
            })?;
        }
    }
    Ok(())
}

pub(crate) fn good_funds_due(s: &PaymentState, a: &FundingAttempt) -> Option<Timestamp> {
    let days = s
        .policy_doc
        .funding
        .good_funds_days
        .get(&a.rail)
        .copied()
        .unwrap_or(0);
    a.settled_at
        .map(|t| t.add_business_days_except(days, &s.policy_doc.funding.holidays))
}

fn make_available_if_due(em: &mut Emitter<'_>, leg: LegId) -> Result<()> {
    let Some(a) = em
        .state
        .funding
        .attempts
        .iter()
        .find(|a| a.leg == leg)
        .cloned()
    else {
        return Ok(());
    };
    if a.status == FundingStatus::Settled
        && good_funds_due(&em.state, &a).is_some_and(|t| t <= em.ctx.now)
    {
        em.emit(FundsAvailable {
            leg,
            amount: a.kept(),
        })?;
        // Funding that was on its rail when the payment expired arrived: it goes back
        // like the rest.
        refund_late_funds(em)?;
    }
    Ok(())
}

fn expire_if_exhausted(em: &mut Emitter<'_>) -> Result<()> {
    let s = &em.state;
    if s.funding.failed_attempts >= s.policy_doc.funding.max_attempts
        && s.status.is_before_held()
        && !s.expired
    {
        em.emit(PaymentExpired {
            reason: "attempts_exhausted".into(),
        })?;
        refund_everything(em, "expiry")?;
    }
    Ok(())
}

/// On a cancelled or expired payment, money in escrow that no request is taking goes
/// back to the payer: funding that arrived after the end, once nothing else is under
/// way (no open request, no open dispute — a dispute resolved with `resume` sends it
/// then). It is the payer's money even while a shortfall is open: recovering that is a
/// separate, recorded step.
fn refund_late_funds(em: &mut Emitter<'_>) -> Result<()> {
    let s = &em.state;
    if (s.cancelled || s.expired)
        && s.open_request().is_none()
        && s.open_dispute().is_none()
        && s.escrow_available().is_positive()
    {
        refund_everything(em, "late_funds")?;
    }
    Ok(())
}

fn refund_everything(em: &mut Emitter<'_>, why: &str) -> Result<()> {
    let held = em.state.escrow_available();
    if held.is_positive() {
        let request = RequestId(em.derived(why, 0));
        em.emit(RefundRequested {
            request,
            amount: held,
            allocations_hash: refund_hash(&held),
        })?;
        em.emit(RefundAuthorized { request })?;
    }
    Ok(())
}

/// When the platform's clock next has something to do for this payment: the earliest
/// moment at which a [`Command::Tick`] records an event (funds reaching good funds, a
/// funding deadline passed, an automatic release due), or `None` when no tick would
/// until another event changes the payment. A server runs the clock by sending `Tick`
/// at or after this moment; a tick before it records nothing. (A tick is judged no
/// earlier than the payment's last event, so a moment before it means "now".)
///
/// ```
/// use trustfold_core::decide::next_tick;
/// use trustfold_core::fold::replay_at;
/// let history = include_bytes!("../tests/vectors/em_ach_good_funds.history.json");
///
/// // Before funding, the clock watches the funding deadline (missed one ms after it).
/// let waiting = replay_at(history, 15)?;
/// let deadline = waiting.funding.deadline.expect("a deadline is set");
/// assert_eq!(next_tick(&waiting).map(|t| t.unix_millis()), Some(deadline.unix_millis() + 1));
///
/// // Settled by ACH on Tuesday: good funds two business days later.
/// let settled = replay_at(history, 17)?;
/// assert_eq!(next_tick(&settled).map(|t| t.to_string()).as_deref(), Some("2026-11-05T15:00:00Z"));
/// # Ok::<(), trustfold_core::Error>(())
/// ```
pub fn next_tick(s: &PaymentState) -> Option<Timestamp> {
    let good_funds = s
        .funding
        .attempts
        .iter()
        .filter(|a| a.status == FundingStatus::Settled)
        .filter_map(|a| good_funds_due(s, a));
    // The deadline is missed once `now` is past it: one millisecond later.
    let deadline =
        deadline_watched(s).map(|d| Timestamp::from_unix_millis(d.unix_millis().saturating_add(1)));
    let release = auto_release(s).map(|r| r.due);
    good_funds.chain(deadline).chain(release).min()
}

/// The funding deadline, while the payment waits for funds and has not missed it.
fn deadline_watched(s: &PaymentState) -> Option<Timestamp> {
    let waiting = matches!(
        s.status,
        Status::Draft | Status::AwaitingAgreement | Status::AwaitingFunds
    );
    funding_deadline(s)
        .filter(|_| waiting && !s.funding.deadline_missed && !s.expired && !s.cancelled)
}

/// The funding deadline that holds for the funding still owed, if any:
/// - none once a release was paid out of a payment funded in full by its deadline (the
///   rest came back since; the deadline was for the funding before the payout);
/// - for what short settlements of fundings sent in time did not bring (banks' fees on
///   the way), the policy's deadline span again from the last such settlement (or the
///   deadline itself, when later);
/// - otherwise the deadline set.
pub(crate) fn funding_deadline(s: &PaymentState) -> Option<Timestamp> {
    let deadline = s.funding.deadline?;
    if s.paid_out() && s.funded_in_time() {
        return None;
    }
    if s.owes_only_shorts() {
        let last_short = s
            .sent_by(deadline)
            .filter(|a| a.counts_short())
            .filter_map(|a| a.settled_at)
            .max();
        if let (Some(at), Some(rule)) = (last_short, s.policy_doc.funding.deadline.as_ref()) {
            if let Ok(again) = deadline_from(at, rule, &s.policy_doc.funding.holidays) {
                return Some(deadline.max(again));
            }
        }
    }
    Some(deadline)
}

/// A policy's automatic release that this payment may take: when, how much (gross,
/// before payee-borne fees), to whom.
struct AutoRelease {
    due: Timestamp,
    gross: Money,
    payees: Vec<PartyId>,
}

/// The automatic release of `s`, when its policy has one and it could be taken now or
/// later without another event: held funds, no open request or dispute, someone to pay,
/// and something payable once the payer-borne fees are met (what cannot pay them — a
/// cent left after a refund under a fixed fee — waits for a request or refund instead
/// of failing every tick).
fn auto_release(s: &PaymentState) -> Option<AutoRelease> {
    let hours = s.policy_doc.release.auto_release_after_hours?;
    let since = s.held_since?;
    if s.status != Status::Held
        || s.open_request().is_some()
        || s.open_dispute().is_some()
        || s.cancelled
        || s.expired
    {
        return None;
    }
    let available = s.escrow_available();
    // The payees, but not the payer: money going back to the payer is a refund, with
    // the refund's rules, never an automatic "release".
    let payer = s.parties_with(&s.policy_doc.payer_role);
    let payees: Vec<PartyId> = s
        .policy_doc
        .payee_roles
        .iter()
        .flat_map(|r| s.parties_with(r))
        .fold(Vec::new(), |mut v, p| {
            if !v.contains(&p) && !payer.contains(&p) {
                v.push(p);
            }
            v
        });
    if !available.is_positive() || payees.is_empty() {
        return None;
    }
    let mut gross = gross_for_full_release(s, available).ok()?;
    // The policy's cap per release holds for its own release too: what is left is
    // released by the next ticks, one capped release at a time.
    if let (Some(max), true) = (
        s.policy_doc.release.max_per_release,
        s.policy_doc.release.partial,
    ) {
        if gross.amount() > max {
            gross = Money::from_decimal(max, gross.currency()).ok()?;
        }
    }
    gross.is_positive().then(|| AutoRelease {
        due: since.add_hours(i64::from(hours)),
        gross,
        payees,
    })
}

fn tick(em: &mut Emitter<'_>) -> Result<()> {
    let now = em.ctx.now;
    // Good funds.
    let due: Vec<LegId> = em
        .state
        .funding
        .attempts
        .iter()
        .filter(|a| a.status == FundingStatus::Settled)
        .map(|a| a.leg)
        .collect();
    for leg in due {
        make_available_if_due(em, leg)?;
    }
    // Funding deadline.
    if let Some(deadline) = deadline_watched(&em.state).filter(|d| now > *d) {
        let expire = em.state.policy_doc.funding.on_deadline_missed == OnDeadlineMissed::Expire;
        em.emit(FundingDeadlineMissed {
            deadline,
            outcome: if expire {
                DeadlineOutcome::Expired
            } else {
                DeadlineOutcome::Flagged
            },
        })?;
        if expire {
            em.emit(PaymentExpired {
                reason: "deadline_missed".into(),
            })?;
            refund_everything(em, "expiry")?;
        }
    }
    // Automatic release.
    if let Some(AutoRelease { gross, payees, .. }) =
        auto_release(&em.state).filter(|r| now >= r.due)
    {
        let parts = gross.allocate(&vec![1; payees.len()])?;
        let allocations: Vec<Allocation> = payees
            .into_iter()
            .zip(parts)
            .filter(|(_, m)| m.is_positive())
            .map(|(party, amount)| Allocation { party, amount })
            .collect();
        let request = RequestId(em.derived("auto_release", 0));
        em.emit(ReleaseRequested {
            request,
            allocations_hash: allocations_hash(&allocations),
            allocations,
        })?;
        assess_fees(em, &request)?;
        em.emit(ReleaseAuthorized { request })?;
    }
    Ok(())
}

/// The gross to allocate so that gross plus payer-borne fees uses what is available:
/// the largest gross whose total fits (fees round, so the total may fall a minor unit
/// or so short of `available`).
fn gross_for_full_release(s: &PaymentState, available: Money) -> Result<Money> {
    if !s
        .policy_doc
        .fees
        .iter()
        .any(|f| f.borne_by == BorneBy::Payer)
    {
        return Ok(available);
    }
    let currency = available.currency();
    let scale = currency.minor_units();
    let at = |minor: i128| -> Result<Money> {
        let amount = rust_decimal::Decimal::try_from_i128_with_scale(minor, scale)
            .map_err(|_| Error::Overflow)?;
        Money::from_decimal(amount, currency)
    };
    let fits = |gross: &Money| -> Result<bool> {
        let fees = fee_lines(s, gross)?
            .iter()
            .filter(|f| f.borne_by == BorneBy::Payer)
            .try_fold(Money::zero(currency), |acc, f| acc.checked_add(&f.amount))?;
        Ok(gross.checked_add(&fees)? <= available)
    };
    // A total grows with the gross: search the minor units for the last that fits
    // (`lo` always fits or is 0, `hi` never fits).
    let whole = available.amount();
    let whole = whole.mantissa() * 10i128.pow(scale.saturating_sub(whole.scale()));
    let (mut lo, mut hi) = (0i128, whole + 1);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(&at(mid)?)? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let gross = at(lo)?;
    if gross.is_positive() {
        Ok(gross)
    } else {
        reject("insufficient_funds", "held funds do not cover the fees")
    }
}

fn fee_lines(s: &PaymentState, gross: &Money) -> Result<Vec<FeeLine>> {
    let mut out = Vec::new();
    for rule in &s.policy_doc.fees {
        let Some(party) = s.parties_with(&rule.to_role).into_iter().next() else {
            return reject(
                "fee_recipient_missing",
                format!(
                    "fee `{}` goes to role `{}`, which no active party holds",
                    rule.name, rule.to_role
                ),
            );
        };
        let mut amount = gross.bps(rule.bps)?;
        if let Some(fixed) = rule.fixed {
            if !s.fixed_fees_charged.contains(&rule.name) {
                amount = amount.checked_add(&Money::from_decimal(fixed, gross.currency())?)?;
            }
        }
        out.push(FeeLine {
            fee: rule.name.clone(),
            party,
            amount,
            borne_by: rule.borne_by,
        });
    }
    Ok(out)
}

fn assess_fees(em: &mut Emitter<'_>, request: &RequestId) -> Result<()> {
    let Some(r) = em.state.requests.get(request) else {
        return Ok(());
    };
    let lines = fee_lines(&em.state, &r.amount)?;
    for f in lines {
        if f.amount.is_positive() {
            em.emit(FeeAssessed {
                request: *request,
                fee: f.fee,
                party: f.party,
                amount: f.amount,
                borne_by: f.borne_by,
            })?;
        }
    }
    let r = em.state.requests.get(request).cloned();
    if let Some(r) = r {
        let total = disbursement_total(&r)?;
        if total > em.state.escrow_available() {
            return reject(
                "insufficient_funds",
                format!(
                    "the release with fees takes {total}, but only {} is available",
                    em.state.escrow_available()
                ),
            );
        }
    }
    Ok(())
}

fn authorize_if_quorum(em: &mut Emitter<'_>, request: &RequestId) -> Result<()> {
    let Some(r) = em.state.requests.get(request).cloned() else {
        return Ok(());
    };
    if r.status == RequestStatus::AwaitingApprovals
        && em.state.open_dispute().is_none()
        && (r.mandate.is_some() || quorum_met(&em.state, &r))
    {
        match r.kind {
            RequestKind::Release => em.emit(ReleaseAuthorized { request: *request })?,
            RequestKind::Refund => em.emit(RefundAuthorized { request: *request })?,
        }
    }
    Ok(())
}

fn check_release(s: &PaymentState, allocations: &[Allocation], by_resolver: bool) -> Result<()> {
    if allocations.is_empty() {
        return reject(
            "allocations_required",
            "a release needs at least one allocation",
        );
    }
    let mut total = Money::zero(s.amount.currency());
    let mut seen = Vec::new();
    for a in allocations {
        s.amount.same_currency(&a.amount)?;
        a.amount.require_positive()?;
        let Some(p) = s.participants.get(&a.party).filter(|p| !p.removed) else {
            return reject(
                "unknown_participant",
                format!("party {} is not a participant", a.party),
            );
        };
        if !s.policy_doc.payee_roles.iter().any(|r| p.roles.contains(r)) {
            return reject(
                "not_a_payee",
                format!(
                    "party {} holds no payee role ({:?})",
                    a.party, s.policy_doc.payee_roles
                ),
            );
        }
        if seen.contains(&a.party) {
            return reject(
                "duplicate_allocation",
                format!("party {} is allocated twice", a.party),
            );
        }
        seen.push(a.party);
        total = total.checked_add(&a.amount)?;
    }
    let available = s.escrow_available();
    if total > available {
        return reject(
            "insufficient_funds",
            format!("allocations total {total} but only {available} is available"),
        );
    }
    if !by_resolver {
        if let Some(max) = s.policy_doc.release.max_per_release {
            if total.amount() > max {
                return reject(
                    "limit_exceeded",
                    format!("a release may be at most {max} {}", total.currency()),
                );
            }
        }
        let fees = fee_lines(s, &total)?;
        let payer_fees = fees
            .iter()
            .filter(|f| f.borne_by == BorneBy::Payer)
            .try_fold(Money::zero(total.currency()), |acc, f| {
                acc.checked_add(&f.amount)
            })?;
        let uses = total.checked_add(&payer_fees)?;
        // Everything at once: the gross plus its payer-borne fees use what is held, or
        // the gross is the largest whose total fits (rounding may leave no gross whose
        // total is exact, as the automatic release finds too).
        let full = gross_for_full_release(s, available).ok();
        if !s.policy_doc.release.partial
            && uses != available
            && total != available
            && full != Some(total)
        {
            return reject(
                "partial_release_not_allowed",
                format!(
                    "the policy releases everything at once: allocate {} (what is held, \
                     {available}, less the fees the payer bears)",
                    full.unwrap_or(available)
                ),
            );
        }
    }
    Ok(())
}

fn refund_amount(s: &PaymentState, amount: Option<&Money>) -> Result<Money> {
    let available = s.escrow_available();
    let amount = match amount {
        Some(m) => {
            s.amount.same_currency(m)?;
            m.require_positive()?;
            *m
        }
        None => available,
    };
    if amount > available || !amount.is_positive() {
        return reject(
            "insufficient_funds",
            format!("only {available} is available to refund"),
        );
    }
    Ok(amount)
}

#[allow(clippy::too_many_arguments)]
fn resolve_dispute(
    em: &mut Emitter<'_>,
    dispute: &RequestId,
    outcome: DisputeOutcome,
    request: Option<&RequestId>,
    allocations: &[Allocation],
    amount: Option<&Money>,
    note: &str,
) -> Result<()> {
    if !em.state.disputes.get(dispute).is_some_and(|d| d.open) {
        return reject("no_open_dispute", format!("dispute {dispute} is not open"));
    }
    let needs_request = outcome != DisputeOutcome::Resume;
    if needs_request != request.is_some() {
        return reject(
            "invalid_command",
            "release and refund outcomes name a new request id; resume does not",
        );
    }
    if let Some(r) = request {
        if em.state.requests.contains_key(r) {
            return reject("request_exists", format!("request {r} exists"));
        }
        // A release or refund decided now would pay out what is available and leave
        // the funding still clearing or on its rail outside the decision.
        let coming = em.state.funding_in_progress();
        if !coming.is_zero() {
            return reject(
                "funds_in_flight",
                format!(
                    "{coming} of funding is still on a rail or clearing: resolve with \
                     resume, or decide the release or refund once it is available (or failed)"
                ),
            );
        }
        // The resolution replaces any request waiting for approvals.
        if let Some((id, open)) = em.state.open_request() {
            if open.status == RequestStatus::AwaitingApprovals {
                em.emit(RequestCancelled {
                    request: id,
                    reason: "dispute resolved".into(),
                })?;
            } else {
                return reject(
                    "disbursement_in_flight",
                    "a disbursement is on a rail: wait for its outcome",
                );
            }
        }
    }
    match outcome {
        DisputeOutcome::Resume => {
            em.emit(DisputeResolved {
                dispute: *dispute,
                outcome,
                request: None,
                note: note.to_string(),
            })?;
            if let Some((id, _)) = em.state.open_request() {
                authorize_if_quorum(em, &id)?;
            }
            refund_late_funds(em)
        }
        DisputeOutcome::Release => {
            let request =
                *request.ok_or_else(|| Error::rejected("invalid_command", "request required"))?;
            check_release(&em.state, allocations, true)?;
            em.emit(DisputeResolved {
                dispute: *dispute,
                outcome,
                request: Some(request),
                note: note.to_string(),
            })?;
            em.emit(ReleaseRequested {
                request,
                allocations: allocations.to_vec(),
                allocations_hash: allocations_hash(allocations),
            })?;
            assess_fees(em, &request)?;
            em.emit(ReleaseAuthorized { request })
        }
        DisputeOutcome::Refund => {
            let request =
                *request.ok_or_else(|| Error::rejected("invalid_command", "request required"))?;
            let amount = refund_amount(&em.state, amount)?;
            em.emit(DisputeResolved {
                dispute: *dispute,
                outcome,
                request: Some(request),
                note: note.to_string(),
            })?;
            em.emit(RefundRequested {
                request,
                amount,
                allocations_hash: refund_hash(&amount),
            })?;
            em.emit(RefundAuthorized { request })
        }
    }
}
