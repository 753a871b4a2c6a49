//! Reading a command from JSON bytes with the core's own reader (`json::read`), as
//! [`Command::from_json`] does: the same commands, and errors with the same codes, as
//! the derived `Deserialize` of [`Command`] (which stays, for serde callers such as the
//! server's request bodies; `core/tests/properties.rs` compares the two on mutated
//! commands), without serde's decoders in the WebAssembly module.
//!
//! Three passes, as serde's internally tagged enums read: the value's JSON is checked
//! (a syntax error in it is reported first), the `type` is found among the top-level
//! members, then that variant's members are read in document order; anything after
//! the value is refused last.

use uuid::Uuid;

use crate::command::{Command, Context, RailOutcome};
use crate::envelope::Actor;
use crate::error::Result;
use crate::event::{Allocation, DisputeOutcome, FundingMethod};
use crate::hash::Hash;
use crate::id::{CommandId, LegId, PartyId, PaymentId, RequestId, TenantId};
use crate::json::read::{once, Fault, FromJson, Read, Reader};
use crate::money::Money;
use crate::policy::{Policy, Rail, Role};
use crate::time::Timestamp;

/// Parses a command from JSON bytes.
pub(crate) fn from_slice(json: &[u8]) -> Result<Command> {
    crate::json::read::document(json, None, command)
}

/// Parses a command's context, `{"command_id","actor","now","correlation"?}`.
pub(crate) fn context(json: &[u8]) -> Result<Context> {
    crate::json::read::stream(json, |r| {
        crate::json::read::read_members!(r, Context {
            command_id: CommandId,
            actor: Actor,
            now: Timestamp,
            correlation: Option<Uuid> [default],
        })
    })
}

/// The names of the command types, in declaration order.
const VARIANTS: &[&str] = &[
    "Initiate",
    "Invite",
    "Join",
    "Remove",
    "AgreeToTerms",
    "AttachFundingMethod",
    "SubmitFunding",
    "RailNotice",
    "Tick",
    "RequestRelease",
    "AmendRelease",
    "RequestRefund",
    "Approve",
    "Deny",
    "WithdrawApproval",
    "CancelRequest",
    "SubmitDisbursement",
    "OpenDispute",
    "ResolveDispute",
    "Cancel",
    "RecordReversal",
    "RecordShortfallRecovery",
    "WriteOffShortfall",
    "Close",
];

/// The value of the top-level member `tag` (a string naming one of `names`), as an
/// index into `names`; the reader is left where it was.
fn tag(r: &mut Reader<'_, '_>, tag: &'static str, names: &'static [&'static str]) -> Read<usize> {
    let mut probe = r.sub(r.position());
    probe.ws();
    let start = probe.position();
    let mut found: Option<usize> = None;
    // Every top-level member: `tag` is read, the others skipped.
    probe.members(&mut |p, key| {
        if key != tag.as_bytes() {
            return p.raw().map(drop);
        }
        if found.is_some() {
            return Err(p.fault(Fault::DuplicateField(tag)));
        }
        found = Some(crate::json::read::variant(p, names)?);
        Ok(())
    })?;
    found.ok_or_else(|| crate::json::read::Reject::new(start, Fault::MissingField(tag)))
}

/// Reads one variant's members (and the tag again, already checked by [`tag`]).
macro_rules! variant {
    ($r:ident, $variant:ident { $($body:tt)* }) => {
        crate::json::read::read_members!($r, [tag "type"] Command::$variant { $($body)* })
    };
}

fn command(r: &mut Reader<'_, '_>) -> Read<Command> {
    r.ws();
    match VARIANTS
        .get(tag(r, "type", VARIANTS)?)
        .copied()
        .unwrap_or_default()
    {
        "Initiate" => {
            variant!(r, Initiate { payment: PaymentId, tenant: TenantId, policy: Box<Policy>, amount: Money, description: String [default], roles: Vec<Role>, name: String [default] })
        }
        "Invite" => {
            variant!(r, Invite { party: PartyId, roles: Vec<Role>, name: String [default], email: Option<String> [default] })
        }
        "Join" => unit(r, Command::Join),
        "Remove" => variant!(
            r,
            Remove {
                party: PartyId,
                reason: String[default]
            }
        ),
        "AgreeToTerms" => variant!(r, AgreeToTerms { terms_hash: Hash }),
        "AttachFundingMethod" => variant!(
            r,
            AttachFundingMethod {
                method: FundingMethod
            }
        ),
        "SubmitFunding" => variant!(
            r,
            SubmitFunding {
                amount: Money,
                rail: Rail,
                rail_ref: String
            }
        ),
        "RailNotice" => variant!(
            r,
            RailNotice {
                rail_ref: String,
                notice: RailOutcome
            }
        ),
        "Tick" => unit(r, Command::Tick),
        "RequestRelease" => {
            variant!(r, RequestRelease { request: RequestId, allocations: Vec<Allocation> })
        }
        "AmendRelease" => {
            variant!(r, AmendRelease { request: RequestId, allocations: Vec<Allocation> })
        }
        "RequestRefund" => {
            variant!(r, RequestRefund { request: RequestId, amount: Option<Money> [default] })
        }
        "Approve" => variant!(
            r,
            Approve {
                request: RequestId,
                allocations_hash: Hash
            }
        ),
        "Deny" => variant!(
            r,
            Deny {
                request: RequestId,
                reason: String[default]
            }
        ),
        "WithdrawApproval" => variant!(r, WithdrawApproval { request: RequestId }),
        "CancelRequest" => variant!(
            r,
            CancelRequest {
                request: RequestId,
                reason: String[default]
            }
        ),
        "SubmitDisbursement" => variant!(
            r,
            SubmitDisbursement {
                request: RequestId,
                rail: Rail,
                rail_ref: String
            }
        ),
        "OpenDispute" => variant!(
            r,
            OpenDispute {
                dispute: RequestId,
                reason: String[default]
            }
        ),
        "ResolveDispute" => {
            variant!(r, ResolveDispute { dispute: RequestId, outcome: DisputeOutcome, request: Option<RequestId> [default], allocations: Vec<Allocation> [default], amount: Option<Money> [default], note: String [default] })
        }
        "Cancel" => {
            variant!(r, Cancel { reason: String [default], refund_request: Option<RequestId> [default] })
        }
        "RecordReversal" => variant!(
            r,
            RecordReversal {
                leg: LegId,
                reason: String[default]
            }
        ),
        "RecordShortfallRecovery" => variant!(
            r,
            RecordShortfallRecovery {
                amount: Money,
                rail_ref: String
            }
        ),
        "WriteOffShortfall" => variant!(
            r,
            WriteOffShortfall {
                reason: String[default]
            }
        ),
        _ => variant!(
            r,
            Close {
                reason: String[default]
            }
        ),
    }
}

/// A variant without fields: an object with the tag alone.
fn unit(r: &mut Reader<'_, '_>, command: Command) -> Read<Command> {
    r.object(&["type"], &mut |r, _| r.str().map(drop))?;
    Ok(command)
}

/// The names of the rail outcomes.
const OUTCOMES: &[&str] = &["settled", "failed", "returned"];

impl FromJson for RailOutcome {
    fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
        r.ws();
        let kind = tag(r, "kind", OUTCOMES)?;
        let mut code: Option<String> = None;
        let mut reason: Option<String> = None;
        let mut amount: Option<Option<Money>> = None;
        // A field's number is its place in the variant's list: a settlement's `amount`
        // is its second, a return's its fourth.
        let fields: &'static [&'static str] = match kind {
            0 => &["kind", "amount"],
            1 => &["kind", "code", "reason"],
            _ => &["kind", "code", "reason", "amount"],
        };
        r.object(fields, &mut |r, k| match (kind, k) {
            (_, 0) => r.str().map(drop),
            (0, _) | (_, 3) => once(&mut amount, r, "amount"),
            (_, 1) => once(&mut code, r, "code"),
            _ => once(&mut reason, r, "reason"),
        })?;
        let code = || {
            code.clone()
                .ok_or_else(|| r.fault(Fault::MissingField("code")))
        };
        Ok(match kind {
            0 => RailOutcome::Settled {
                amount: amount.flatten(),
            },
            1 => RailOutcome::Failed {
                code: code()?,
                reason: reason.unwrap_or_default(),
            },
            _ => RailOutcome::Returned {
                code: code()?,
                reason: reason.unwrap_or_default(),
                amount: amount.flatten(),
            },
        })
    }
}

impl crate::json::write::WriteJson for RailOutcome {
    /// As serde writes it: `{"kind":…}` then the variant's fields in order, `amount`
    /// only when present.
    fn write_json(&self, out: &mut Vec<u8>) {
        use crate::json::write::{key, opt, string};
        out.push(b'{');
        key(out, "kind");
        match self {
            RailOutcome::Settled { amount } => {
                string(out, "settled");
                opt(out, "amount", amount);
            }
            RailOutcome::Failed { code, reason } => {
                string(out, "failed");
                key(out, "code");
                string(out, code);
                key(out, "reason");
                string(out, reason);
            }
            RailOutcome::Returned {
                code,
                reason,
                amount,
            } => {
                string(out, "returned");
                key(out, "code");
                string(out, code);
                key(out, "reason");
                string(out, reason);
                opt(out, "amount", amount);
            }
        }
        out.push(b'}');
    }
}

impl FromJson for Box<Policy> {
    /// Read in place, by the same reader: an error inside the policy carries its
    /// position in the whole command, once.
    fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
        <Policy as FromJson>::from_json(r).map(Box::new)
    }
}
