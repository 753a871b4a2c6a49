//! Commands: what a participant, a rail or the platform's clock asks of a payment.
//!
//! A command is judged by [`decide`](crate::decide::decide) against the current state
//! and the pinned policy: it becomes events, or a typed rejection naming the rule.
//! In JSON a command is an object with a `type`:
//! `{"type":"Approve","request":"…","allocations_hash":"…"}`.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::Actor;
use crate::event::{Allocation, DisputeOutcome, FundingMethod};
use crate::hash::Hash;
use crate::id::{CommandId, LegId, PartyId, PaymentId, RequestId, TenantId};
use crate::money::Money;
use crate::policy::{Policy, Rail, Role};
use crate::time::Timestamp;

/// What a rail reports about a transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RailOutcome {
    /// The transfer settled.
    Settled {
        /// What arrived, when less than the transfer (a wire whose banks on the way took
        /// their fees); all of it when absent. Funding only: a disbursement settles
        /// whole.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        amount: Option<Money>,
    },
    /// The transfer failed before settlement.
    Failed {
        /// The rail's code.
        code: String,
        /// Reason.
        #[serde(default)]
        reason: String,
    },
    /// Settled funds were returned (ACH R01, R02, R03, R10 …).
    Returned {
        /// Return code, `R` and two digits.
        code: String,
        /// Reason.
        #[serde(default)]
        reason: String,
        /// Amount returned (the whole transfer when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        amount: Option<Money>,
    },
}

/// A command. See the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum Command {
    /// Open a payment from a policy. The actor's party is the initiator.
    Initiate {
        /// The new payment's id.
        payment: PaymentId,
        /// The tenant.
        tenant: TenantId,
        /// The policy to pin.
        policy: Box<Policy>,
        /// Amount and currency.
        amount: Money,
        /// What it is for.
        #[serde(default)]
        description: String,
        /// The initiator's roles.
        roles: Vec<Role>,
        /// The initiator's display name.
        #[serde(default)]
        name: String,
    },
    /// Invite a party with roles.
    Invite {
        /// The party.
        party: PartyId,
        /// Its roles.
        roles: Vec<Role>,
        /// Display name.
        #[serde(default)]
        name: String,
        /// Contact e-mail.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        email: Option<String>,
    },
    /// The acting party accepts its invitation.
    Join,
    /// Remove a party.
    Remove {
        /// The party.
        party: PartyId,
        /// Why.
        #[serde(default)]
        reason: String,
    },
    /// The acting party agrees to the terms with this hash.
    AgreeToTerms {
        /// `terms_hash` from the state.
        terms_hash: Hash,
    },
    /// Attach how the payer will pay.
    AttachFundingMethod {
        /// The method.
        method: FundingMethod,
    },
    /// Funding was sent on a rail.
    SubmitFunding {
        /// Amount sent.
        amount: Money,
        /// Rail.
        rail: Rail,
        /// The rail's reference.
        rail_ref: String,
    },
    /// A rail's notice about a transfer (acts as role `rail`).
    RailNotice {
        /// The rail's reference.
        rail_ref: String,
        /// What happened: `{"kind":"settled"}` (with `"amount"` when less arrived),
        /// `{"kind":"failed","code":"…"}` or `{"kind":"returned","code":"R01"}`.
        notice: RailOutcome,
    },
    /// The platform's clock: deadlines, good funds, auto-release (acts as role `system`).
    Tick,
    /// Ask to release funds.
    RequestRelease {
        /// A new request id.
        request: RequestId,
        /// Who gets what (gross, before payee-borne fees).
        allocations: Vec<Allocation>,
    },
    /// Change a pending release's allocations (voids earlier approvals).
    AmendRelease {
        /// The request.
        request: RequestId,
        /// New allocations.
        allocations: Vec<Allocation>,
    },
    /// Ask to refund the payer.
    RequestRefund {
        /// A new request id.
        request: RequestId,
        /// Amount (everything available when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        amount: Option<Money>,
    },
    /// Approve a request's exact allocations.
    Approve {
        /// The request.
        request: RequestId,
        /// The allocations hash being approved.
        allocations_hash: Hash,
    },
    /// Deny a request.
    Deny {
        /// The request.
        request: RequestId,
        /// Why.
        #[serde(default)]
        reason: String,
    },
    /// Withdraw an earlier approval.
    WithdrawApproval {
        /// The request.
        request: RequestId,
    },
    /// Cancel a request not yet on a rail.
    CancelRequest {
        /// The request.
        request: RequestId,
        /// Why.
        #[serde(default)]
        reason: String,
    },
    /// Send an authorized release or refund on a rail.
    SubmitDisbursement {
        /// The request.
        request: RequestId,
        /// Rail.
        rail: Rail,
        /// The rail's reference.
        rail_ref: String,
    },
    /// Open a dispute.
    OpenDispute {
        /// A new dispute id.
        dispute: RequestId,
        /// Why.
        #[serde(default)]
        reason: String,
    },
    /// Resolve the open dispute.
    ResolveDispute {
        /// The dispute.
        dispute: RequestId,
        /// How.
        outcome: DisputeOutcome,
        /// For `release` and `refund`: the new request's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<RequestId>,
        /// For `release`: the allocations.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        allocations: Vec<Allocation>,
        /// For `refund`: the amount (everything available when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        amount: Option<Money>,
        /// Notes.
        #[serde(default)]
        note: String,
    },
    /// Cancel the payment; anything held is refunded in full under `refund_request`.
    Cancel {
        /// Why.
        #[serde(default)]
        reason: String,
        /// The refund request's id, used if funds are held.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refund_request: Option<RequestId>,
    },
    /// Reverse a posted leg with a correcting leg.
    RecordReversal {
        /// The leg.
        leg: LegId,
        /// Why.
        #[serde(default)]
        reason: String,
    },
    /// Record money recovered toward a shortfall.
    RecordShortfallRecovery {
        /// Amount.
        amount: Money,
        /// The rail's reference.
        rail_ref: String,
    },
    /// Write off the whole shortfall.
    WriteOffShortfall {
        /// Why.
        #[serde(default)]
        reason: String,
    },
    /// Close a finished payment.
    Close {
        /// Why.
        #[serde(default)]
        reason: String,
    },
}

/// The name of a command, for permission checks and for listing allowed actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CommandKind {
    #[allow(missing_docs)]
    Initiate,
    #[allow(missing_docs)]
    Invite,
    #[allow(missing_docs)]
    Join,
    #[allow(missing_docs)]
    Remove,
    #[allow(missing_docs)]
    AgreeToTerms,
    #[allow(missing_docs)]
    AttachFundingMethod,
    #[allow(missing_docs)]
    SubmitFunding,
    #[allow(missing_docs)]
    RailNotice,
    #[allow(missing_docs)]
    Tick,
    #[allow(missing_docs)]
    RequestRelease,
    #[allow(missing_docs)]
    AmendRelease,
    #[allow(missing_docs)]
    RequestRefund,
    #[allow(missing_docs)]
    Approve,
    #[allow(missing_docs)]
    Deny,
    #[allow(missing_docs)]
    WithdrawApproval,
    #[allow(missing_docs)]
    CancelRequest,
    #[allow(missing_docs)]
    SubmitDisbursement,
    #[allow(missing_docs)]
    OpenDispute,
    #[allow(missing_docs)]
    ResolveDispute,
    #[allow(missing_docs)]
    Cancel,
    #[allow(missing_docs)]
    RecordReversal,
    #[allow(missing_docs)]
    RecordShortfallRecovery,
    #[allow(missing_docs)]
    WriteOffShortfall,
    #[allow(missing_docs)]
    Close,
}

impl CommandKind {
    /// Every kind a participant may be offered (not the rail's or the clock's).
    pub const PARTICIPANT: &'static [CommandKind] = &[
        CommandKind::Invite,
        CommandKind::Join,
        CommandKind::Remove,
        CommandKind::AgreeToTerms,
        CommandKind::AttachFundingMethod,
        CommandKind::SubmitFunding,
        CommandKind::RequestRelease,
        CommandKind::AmendRelease,
        CommandKind::RequestRefund,
        CommandKind::Approve,
        CommandKind::Deny,
        CommandKind::WithdrawApproval,
        CommandKind::CancelRequest,
        CommandKind::SubmitDisbursement,
        CommandKind::OpenDispute,
        CommandKind::ResolveDispute,
        CommandKind::Cancel,
        CommandKind::RecordReversal,
        CommandKind::RecordShortfallRecovery,
        CommandKind::WriteOffShortfall,
        CommandKind::Close,
    ];
}

impl Command {
    /// The command's kind.
    pub fn kind(&self) -> CommandKind {
        match self {
            Command::Initiate { .. } => CommandKind::Initiate,
            Command::Invite { .. } => CommandKind::Invite,
            Command::Join => CommandKind::Join,
            Command::Remove { .. } => CommandKind::Remove,
            Command::AgreeToTerms { .. } => CommandKind::AgreeToTerms,
            Command::AttachFundingMethod { .. } => CommandKind::AttachFundingMethod,
            Command::SubmitFunding { .. } => CommandKind::SubmitFunding,
            Command::RailNotice { .. } => CommandKind::RailNotice,
            Command::Tick => CommandKind::Tick,
            Command::RequestRelease { .. } => CommandKind::RequestRelease,
            Command::AmendRelease { .. } => CommandKind::AmendRelease,
            Command::RequestRefund { .. } => CommandKind::RequestRefund,
            Command::Approve { .. } => CommandKind::Approve,
            Command::Deny { .. } => CommandKind::Deny,
            Command::WithdrawApproval { .. } => CommandKind::WithdrawApproval,
            Command::CancelRequest { .. } => CommandKind::CancelRequest,
            Command::SubmitDisbursement { .. } => CommandKind::SubmitDisbursement,
            Command::OpenDispute { .. } => CommandKind::OpenDispute,
            Command::ResolveDispute { .. } => CommandKind::ResolveDispute,
            Command::Cancel { .. } => CommandKind::Cancel,
            Command::RecordReversal { .. } => CommandKind::RecordReversal,
            Command::RecordShortfallRecovery { .. } => CommandKind::RecordShortfallRecovery,
            Command::WriteOffShortfall { .. } => CommandKind::WriteOffShortfall,
            Command::Close { .. } => CommandKind::Close,
        }
    }

    /// Parses a command from JSON.
    pub fn from_json(json: &[u8]) -> crate::Result<Command> {
        crate::command_read::from_slice(json)
    }

    /// The command's free-text fields with their longest allowed length in
    /// characters: [`NAME_MAX`] for names, references and codes, [`TEXT_MAX`] for
    /// descriptions, reasons and notes. Every event carries its command's text into a
    /// history that is kept forever and folded in browsers: [`decide`] refuses longer
    /// text with `text_too_long`, and text holding a character [`text_char_allowed`]
    /// refuses with `invalid_text`.
    ///
    /// [`decide`]: crate::decide::decide
    ///
    /// ```
    /// use trustfold_core::command::{Command, TEXT_MAX};
    /// let c = Command::Close { reason: "done".into() };
    /// assert_eq!(c.texts(), vec![("reason", "done", TEXT_MAX)]);
    /// ```
    pub fn texts(&self) -> Vec<(&'static str, &str, usize)> {
        fn text<'a>(field: &'static str, v: &'a str) -> (&'static str, &'a str, usize) {
            (field, v, TEXT_MAX)
        }
        fn name<'a>(field: &'static str, v: &'a str) -> (&'static str, &'a str, usize) {
            (field, v, NAME_MAX)
        }
        match self {
            Command::Initiate {
                description,
                name: n,
                ..
            } => vec![text("description", description), name("name", n)],
            Command::Invite { name: n, email, .. } => {
                let mut v = vec![name("name", n)];
                if let Some(e) = email {
                    v.push(name("email", e));
                }
                v
            }
            Command::AttachFundingMethod { method } => vec![
                name("method.institution", &method.institution),
                name("method.account_last4", &method.account_last4),
                name("method.holder", &method.holder),
            ],
            Command::SubmitFunding { rail_ref, .. }
            | Command::SubmitDisbursement { rail_ref, .. }
            | Command::RecordShortfallRecovery { rail_ref, .. } => vec![name("rail_ref", rail_ref)],
            Command::RailNotice { rail_ref, notice } => match notice {
                RailOutcome::Settled { .. } => vec![name("rail_ref", rail_ref)],
                RailOutcome::Failed { code, reason }
                | RailOutcome::Returned { code, reason, .. } => {
                    vec![
                        name("rail_ref", rail_ref),
                        name("notice.code", code),
                        text("notice.reason", reason),
                    ]
                }
            },
            Command::ResolveDispute { note, .. } => vec![text("note", note)],
            Command::Remove { reason, .. }
            | Command::Deny { reason, .. }
            | Command::CancelRequest { reason, .. }
            | Command::OpenDispute { reason, .. }
            | Command::Cancel { reason, .. }
            | Command::RecordReversal { reason, .. }
            | Command::WriteOffShortfall { reason }
            | Command::Close { reason } => vec![text("reason", reason)],
            Command::Join
            | Command::AgreeToTerms { .. }
            | Command::Tick
            | Command::RequestRelease { .. }
            | Command::AmendRelease { .. }
            | Command::RequestRefund { .. }
            | Command::Approve { .. }
            | Command::WithdrawApproval { .. } => Vec::new(),
        }
    }
}

/// The longest name, e-mail, rail reference or code a command may carry, in characters.
pub const NAME_MAX: usize = 200;
/// The longest description, reason or note a command may carry, in characters.
pub const TEXT_MAX: usize = 2000;

/// Whether `c` may stand in a command's text field bounded by `max` (see
/// [`Command::texts`]): no control character (Unicode `Cc`: U+0000–U+001F,
/// U+007F–U+009F) except a line break (`\n`, `\r`) or tab in descriptions, reasons and notes
/// ([`TEXT_MAX`]), and no bidirectional embedding, override or isolate control
/// (U+202A–U+202E, U+2066–U+2069), which could make a name or a reference display as
/// something else. Any other character is allowed, in any script.
///
/// ```
/// use trustfold_core::command::{text_char_allowed, NAME_MAX, TEXT_MAX};
/// assert!(text_char_allowed('\n', TEXT_MAX));
/// assert!(!text_char_allowed('\n', NAME_MAX));
/// assert!(text_char_allowed('\r', TEXT_MAX)); // `\r\n` from forms and Windows
/// assert!(!text_char_allowed('\u{1b}', TEXT_MAX));
/// assert!(!text_char_allowed('\u{202e}', NAME_MAX));
/// assert!("Zoë Ødegård, דוד, 🏡".chars().all(|c| text_char_allowed(c, NAME_MAX)));
/// ```
pub fn text_char_allowed(c: char, max: usize) -> bool {
    match c {
        '\n' | '\r' | '\t' => max >= TEXT_MAX,
        '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => false,
        c => !c.is_control(),
    }
}

/// Everything a command is judged with besides the state: who, when, and its id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// The command's id (idempotency key): event ids are derived from it.
    pub command_id: CommandId,
    /// Who is acting.
    pub actor: Actor,
    /// The time the command is handled (the clock is read by the caller, not the core).
    pub now: Timestamp,
    /// The business flow, copied into the events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation: Option<Uuid>,
}

impl Context {
    /// Reads a context, `{"command_id","actor","now","correlation"?}`, with the core's
    /// own reader (the same result and error codes as its `Deserialize`).
    ///
    /// ```
    /// use trustfold_core::command::Context;
    /// let ctx = Context::from_json(br#"{"command_id":"00000000-0000-0000-0000-000000000001",
    ///     "actor":{"party":null,"role":"system"},"now":"2026-01-02T03:04:05Z"}"#)?;
    /// assert_eq!(ctx.actor.role.as_str(), "system");
    /// assert_eq!(Context::from_json(b"{}").unwrap_err().code(), "malformed_json");
    /// # Ok::<(), trustfold_core::Error>(())
    /// ```
    pub fn from_json(json: &[u8]) -> crate::error::Result<Context> {
        crate::command_read::context(json)
    }
}

#[cfg(test)]
mod context_tests {
    use super::*;
    use crate::json::testing::{damaged, serde_code};

    /// The reader reads contexts and actors as their `Deserialize` does: the same
    /// value, or an error with the same code, for every damaged copy.
    #[test]
    fn contexts_read_as_serde_reads_them() {
        let docs: [&[u8]; 3] = [
            br#"{"command_id":"00000000-0000-0000-0000-000000000001","actor":{"party":"01010101-0101-0101-0101-010101010101","role":"buyer"},"now":"2026-01-02T03:04:05Z","correlation":"02020202-0202-0202-0202-020202020202"}"#,
            br#"{ "actor": {"role": "system"}, "now": "2026-01-02T03:04:05.123Z", "command_id": "00000000-0000-0000-0000-000000000002" }"#,
            br#"{"command_id":"00000000-0000-0000-0000-000000000003","actor":{"party":null,"role":"rail"},"now":"2026-01-02T03:04:05Z","correlation":null}"#,
        ];
        let mut accepted = 0;
        for doc in docs {
            assert!(Context::from_json(doc).is_ok());
            for at in 0..doc.len() {
                for d in damaged(doc, at) {
                    let ours = Context::from_json(&d).map_err(|e| e.code());
                    let theirs = serde_code::<Context>(&d);
                    assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(&d));
                    accepted += usize::from(ours.is_ok());
                }
            }
            let actor = doc
                .windows(8)
                .position(|w| w == b"\"actor\":" || w == b"\"actor\" ")
                .expect("actor");
            let start = actor + doc[actor..].iter().position(|&c| c == b'{').expect("{");
            let end = start + doc[start..].iter().position(|&c| c == b'}').expect("}") + 1;
            let a = &doc[start..end];
            for at in 0..a.len() {
                for d in damaged(a, at) {
                    let ours = Actor::from_json(&d).map_err(|e| e.code());
                    assert_eq!(
                        ours,
                        serde_code::<Actor>(&d),
                        "{}",
                        String::from_utf8_lossy(&d)
                    );
                }
            }
        }
        assert!(accepted > 0, "some damage (a space) still reads");
    }
}
