//! Events: every fact that changes a payment. See `docs/EVENTS.md` for the catalog
//! with a JSON example of each.
//!
//! An [`Event`] is the payload; it travels inside an
//! [`Envelope`](crate::envelope::Envelope) that says which payment, which sequence
//! number, who acted, when, and links it into the hash chain.

use serde::{Deserialize, Serialize};

use crate::de::{compact_de, unit_enum_de};
use crate::hash::Hash;
use crate::id::{LegId, PartyId, RequestId, TenantId};
use crate::money::Money;
use crate::policy::{Policy, Rail, Role};
use crate::time::Timestamp;

macro_rules! events {
    ($( $(#[$doc:meta])* $name:ident = $version:literal ),* $(,)?) => {
        /// The type of an event, with its current schema version.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
        pub enum EventType {
            $( $(#[$doc])* $name, )*
        }

        impl EventType {
            /// Every event type, in catalog order.
            pub const ALL: &'static [EventType] = &[$(EventType::$name),*];

            /// The type's name as written in envelopes.
            pub const fn name(self) -> &'static str {
                match self { $(EventType::$name => stringify!($name),)* }
            }

            /// The schema version this build writes.
            pub const fn current_version(self) -> u16 {
                match self { $(EventType::$name => $version,)* }
            }

            /// Looks a type up by name.
            pub fn from_name(name: &str) -> Option<EventType> {
                // A scan with an inline comparison rather than a `match` on strings,
                // whose `memcmp` calls are slow in the size-optimised WebAssembly build.
                const NAMES: &[&str] = &[$(stringify!($name)),*];
                let mut i = 0;
                while i < NAMES.len() {
                    if crate::json::read::same(NAMES[i].as_bytes(), name.as_bytes()) {
                        return EventType::ALL.get(i).copied();
                    }
                    i += 1;
                }
                None
            }
        }

        /// An event's payload.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Event {
            $( $(#[$doc])* $name($name), )*
        }

        impl Event {
            /// The event's type.
            pub fn event_type(&self) -> EventType {
                match self { $(Event::$name(_) => EventType::$name,)* }
            }

            /// Serializes the payload alone (the envelope's `data`).
            pub(crate) fn serialize_data<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self { $(Event::$name(d) => d.serialize(s),)* }
            }

            /// Writes the payload alone (the envelope's `data`) with the core's writer.
            pub(crate) fn write_data(&self, out: &mut Vec<u8>) {
                use crate::json::write::WriteJson;
                match self { $(Event::$name(d) => d.write_json(out),)* }
            }

            /// Reads a current-version payload of type `t` with the core's own reader.
            pub(crate) fn read_data(t: EventType, r: &mut crate::json::read::Reader<'_, '_>) -> crate::json::read::Read<Event> {
                use crate::json::read::FromJson;
                match t { $(EventType::$name => $name::from_json(r).map(Event::$name),)* }
            }

            /// Deserializes a current-version payload of type `t` with serde (the tests'
            /// reference for [`Event::read_data`]).
            #[cfg(test)]
            pub(crate) fn deserialize_data<'de, D: serde::Deserializer<'de>>(t: EventType, d: D) -> Result<Event, D::Error> {
                match t { $(EventType::$name => $name::deserialize(d).map(Event::$name),)* }
            }
        }

        $( impl From<$name> for Event { fn from(e: $name) -> Event { Event::$name(e) } } )*
    };
}

events! {
    /// A payment was opened from a pinned policy. v2 (same payload): the payment runs
    /// under the rules the fold also checks on its history — no roster change of a
    /// role with a say over the money while money is held or on its way
    /// (`role_locked`), no mandated request called off but by a dispute or the rail's
    /// return (`mandated_request`), `all_of` met by a different party per role, no
    /// event at a superseded version; a v1 payment, opened before them (before
    /// `fold::V2_OPENINGS_FROM`), folds without.
    PaymentInitiated = 2,
    /// A party was invited with roles (v1 had a single `role`).
    ParticipantInvited = 2,
    /// An invited party joined.
    ParticipantJoined = 1,
    /// A party was removed.
    ParticipantRemoved = 1,
    /// A party agreed to the exact terms (bound by hash).
    TermsAgreed = 1,
    /// The funding deadline was set.
    FundingDeadlineSet = 1,
    /// A funding method was attached.
    FundingMethodAttached = 1,
    /// Funding was sent on a rail: a pending leg external:payer → clearing.
    FundingSubmitted = 1,
    /// The rail settled a funding: the pending leg is posted. An optional `amount`
    /// (added without a new version: a payload without it reads as before) says what
    /// arrived when less than the transfer; the rest goes back out of clearing and is
    /// funded again.
    FundingSettled = 1,
    /// Settled funds are good: clearing → escrow posted.
    FundsAvailable = 1,
    /// The rail failed a funding before settlement: the pending leg is voided.
    FundingFailed = 1,
    /// The rail returned settled funds (ACH R01, R02, R03, R10 …). v2 (same payload):
    /// a partial return keeps the rest of its funding counted; v1 marked the whole
    /// funding returned, and is folded so.
    FundingReturned = 2,
    /// The funding deadline passed without full funding.
    FundingDeadlineMissed = 1,
    /// The payment expired.
    PaymentExpired = 1,
    /// A fee was assessed on a release request.
    FeeAssessed = 1,
    /// A release was requested with allocations.
    ReleaseRequested = 1,
    /// A pending release's allocations changed: earlier approvals no longer count.
    ReleaseAmended = 1,
    /// A refund was requested.
    RefundRequested = 1,
    /// A party approved a request's exact allocations.
    ApprovalGranted = 1,
    /// A party denied a request.
    ApprovalDenied = 1,
    /// A party withdrew its approval.
    ApprovalWithdrawn = 1,
    /// A release reached quorum: pending linked legs escrow → payees and fees.
    ReleaseAuthorized = 1,
    /// A refund reached quorum: a pending leg escrow → external:payer.
    RefundAuthorized = 1,
    /// An authorized request was cancelled before it reached a rail.
    RequestCancelled = 1,
    /// An authorized disbursement was sent on a rail.
    DisbursementSubmitted = 1,
    /// The rail settled a disbursement: its legs are posted.
    DisbursementSettled = 1,
    /// The rail failed a disbursement: its legs are voided, funds stay held. v2 (same
    /// payload): the money back in escrow covers a shortfall a return booked while the
    /// disbursement was on its rail; v1 did not, and is folded so.
    DisbursementFailed = 2,
    /// A dispute was opened: nothing leaves escrow until it is resolved.
    DisputeOpened = 1,
    /// A dispute was resolved.
    DisputeResolved = 1,
    /// A posted leg was reversed by a correcting leg. v2 (same payload): a leg is
    /// reversed once; v1 did not say so, and is folded so. v3 (same payload): money a
    /// reversal brings back into escrow covers an open shortfall first; v2 left both
    /// standing, and is folded so.
    ReversalRecorded = 3,
    /// A shortfall was (partly) recovered.
    ShortfallRecovered = 1,
    /// A shortfall was written off.
    ShortfallWrittenOff = 1,
    /// The payment was cancelled.
    PaymentCancelled = 1,
    /// The payment was closed (archived).
    PaymentClosed = 1,
    /// A rail's notice about a transfer the payment has not recorded yet (it came
    /// before the funding or disbursement it is about), held until that transfer is
    /// recorded and then applied. A settlement's notice may carry the `amount` that
    /// arrived (as `FundingSettled` may).
    RailNoticeHeld = 1,
}

/// See [`EventType::PaymentInitiated`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentInitiated {
    /// The owning tenant.
    pub tenant: TenantId,
    /// The policy, embedded whole so the history is self-contained.
    pub policy: EmbeddedPolicy,
    /// SHA-256 of the policy's canonical JSON.
    pub policy_hash: Hash,
    /// The payment's amount (its currency is the payment's currency).
    pub amount: Money,
    /// What the payment is for.
    #[serde(default)]
    pub description: String,
    /// The party who opened it.
    pub initiator: PartyId,
    /// The initiator's roles.
    pub initiator_roles: Vec<Role>,
    /// The initiator's display name.
    #[serde(default)]
    pub initiator_name: String,
}
compact_de!(PaymentInitiated { tenant: TenantId, policy: EmbeddedPolicy, policy_hash: Hash, amount: Money, description: String [default], initiator: PartyId, initiator_roles: Vec<Role>, initiator_name: String [default] });

/// A policy embedded in `PaymentInitiated`, with the SHA-256 of its bytes as written
/// (canonical JSON when written by trustfold) so the fold can check `policy_hash`
/// without serializing the policy again. Dereferences to [`Policy`].
#[derive(Clone, Debug)]
pub struct EmbeddedPolicy {
    policy: std::sync::Arc<Policy>,
    bytes_hash: Hash,
    /// The result of validating `policy`, once computed: shared by the clones that
    /// policy caches hand out, so a replay of many payments opened from one policy
    /// validates it once.
    checked: std::sync::Arc<std::sync::OnceLock<crate::Result<()>>>,
}

impl PartialEq for EmbeddedPolicy {
    fn eq(&self, other: &Self) -> bool {
        self.bytes_hash == other.bytes_hash && self.policy == other.policy
    }
}

impl Eq for EmbeddedPolicy {}

impl EmbeddedPolicy {
    /// Embeds a policy (hashing its canonical JSON).
    pub fn new(policy: Policy) -> Self {
        let bytes_hash = policy.hash();
        EmbeddedPolicy {
            policy: std::sync::Arc::new(policy),
            bytes_hash,
            checked: Default::default(),
        }
    }

    /// SHA-256 of the policy's JSON bytes as embedded.
    pub fn bytes_hash(&self) -> Hash {
        self.bytes_hash
    }

    /// The shared policy.
    pub fn shared(&self) -> std::sync::Arc<Policy> {
        self.policy.clone()
    }

    /// [`Policy::validate`], computed once per embedded policy and its clones.
    ///
    /// ```
    /// # use trustfold_core::event::EmbeddedPolicy;
    /// # use trustfold_core::policy::Policy;
    /// let p = Policy::from_json(include_str!("../../examples/policies/marketplace.json"))?;
    /// let p = EmbeddedPolicy::new(p);
    /// assert_eq!(p.validated(), p.validate()); // the same answer, remembered
    /// assert_eq!(p.clone().validated(), Ok(()));
    /// # Ok::<(), trustfold_core::Error>(())
    /// ```
    pub fn validated(&self) -> crate::Result<()> {
        self.checked.get_or_init(|| self.policy.validate()).clone()
    }
}

impl std::ops::Deref for EmbeddedPolicy {
    type Target = Policy;
    fn deref(&self) -> &Policy {
        &self.policy
    }
}

impl Serialize for EmbeddedPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.policy.serialize(s)
    }
}

/// How many distinct embedded policies [`EmbeddedPolicy`]'s decoder remembers (per
/// thread). Payments opened from the same policy embed the very same bytes, so a
/// replay of many histories parses and hashes each policy once.
const REMEMBERED_POLICIES: usize = 8;

thread_local! {
    /// Embedded policies decoded last: their bytes, hash and parsed form (immutable).
    static POLICIES: std::cell::RefCell<Vec<(Box<[u8]>, EmbeddedPolicy)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl<'de> Deserialize<'de> for EmbeddedPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let raw: Box<serde_json::value::RawValue> = Deserialize::deserialize(d)?;
        EmbeddedPolicy::from_text(raw.get().as_bytes()).map_err(D::Error::custom)
    }
}

impl EmbeddedPolicy {
    /// The policy embedded as `text`: remembered by this thread, or parsed.
    pub(crate) fn from_text(text: &[u8]) -> crate::Result<Self> {
        let known = POLICIES.with(|c| {
            c.borrow()
                .iter()
                .find(|(bytes, _)| **bytes == *text)
                .map(|(_, p)| p.clone())
        });
        match known {
            Some(p) => Ok(p),
            None => Self::parse_new(text),
        }
    }

    /// A policy this thread remembers whose bytes `input` starts with, and their
    /// length: see [`PolicyCache::find_prefix`].
    pub(crate) fn remembered_prefix(input: &[u8]) -> Option<(usize, Self)> {
        POLICIES.with(|c| find_prefix(&c.borrow(), input))
    }

    /// Parses a policy not remembered yet, and remembers it.
    fn parse_new(text: &[u8]) -> crate::Result<Self> {
        let bytes_hash = Hash::of(text);
        let policy: Policy = crate::policy_json::parse(text)?;
        let p = EmbeddedPolicy {
            policy: std::sync::Arc::new(policy),
            bytes_hash,
            checked: Default::default(),
        };
        POLICIES.with(|c| {
            let mut c = c.borrow_mut();
            if c.len() >= REMEMBERED_POLICIES {
                c.remove(0);
            }
            c.push((text.into(), p.clone()));
        });
        Ok(p)
    }
}

/// Policies already parsed, by their bytes as embedded in `PaymentInitiated` events:
/// see [`Envelope::from_json_cached`](crate::envelope::Envelope::from_json_cached).
///
/// A cache is an ordinary value owned by its caller (e.g. one per verifying thread);
/// it only ever maps bytes to what parsing those bytes gives (the policy and the
/// SHA-256 of the bytes), so it never changes a result. It holds at most
/// [`PolicyCache::CAPACITY`] policies and starts over when full.
#[derive(Clone, Default)]
pub struct PolicyCache {
    entries: Vec<(Box<[u8]>, EmbeddedPolicy)>,
}

impl std::fmt::Debug for PolicyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyCache")
            .field("len", &self.entries.len())
            .finish()
    }
}

impl PolicyCache {
    /// How many policies a cache holds before it starts over.
    pub const CAPACITY: usize = 64;

    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many policies it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A cached policy whose bytes `input` starts with, and their length. Every cached
    /// entry is one complete JSON object (it parsed), so when `input` starts with its
    /// bytes the JSON value at the start of `input` is exactly those bytes: this finds
    /// what reading the value and then looking it up would, without scanning it.
    pub(crate) fn find_prefix(&self, input: &[u8]) -> Option<(usize, EmbeddedPolicy)> {
        find_prefix(&self.entries, input)
    }

    /// The policy embedded as `raw`: from the cache, or parsed and remembered.
    /// `None` when it does not parse (the caller then reports the parser's error).
    pub(crate) fn get_or_parse(&mut self, raw: &[u8]) -> crate::Result<EmbeddedPolicy> {
        if let Some((_, p)) = self.entries.iter().find(|(bytes, _)| **bytes == *raw) {
            return Ok(p.clone());
        }
        let policy = EmbeddedPolicy {
            policy: std::sync::Arc::new(crate::policy_json::parse(raw)?),
            bytes_hash: Hash::of(raw),
            checked: Default::default(),
        };
        if self.entries.len() >= Self::CAPACITY {
            self.entries.clear();
        }
        self.entries.push((raw.into(), policy.clone()));
        Ok(policy)
    }
}

/// The entry whose bytes (a complete JSON object) `input` starts with.
fn find_prefix(
    entries: &[(Box<[u8]>, EmbeddedPolicy)],
    input: &[u8],
) -> Option<(usize, EmbeddedPolicy)> {
    entries.iter().find_map(|(bytes, p)| {
        let n = bytes.len();
        let starts = bytes.first() == Some(&b'{')
            && input
                .get(..n)
                .is_some_and(|head| crate::json::read::same(head, bytes));
        starts.then(|| (n, p.clone()))
    })
}

/// See [`EventType::ParticipantInvited`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantInvited {
    /// The party.
    pub party: PartyId,
    /// Its roles in this payment.
    pub roles: Vec<Role>,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Contact e-mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}
compact_de!(ParticipantInvited { party: PartyId, roles: Vec<Role>, name: String [default], email: Option<String> [skip_none] });

/// See [`EventType::ParticipantJoined`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantJoined {
    /// The party.
    pub party: PartyId,
}
compact_de!(ParticipantJoined { party: PartyId });

/// See [`EventType::ParticipantRemoved`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantRemoved {
    /// The party.
    pub party: PartyId,
    /// Why.
    #[serde(default)]
    pub reason: String,
}
compact_de!(ParticipantRemoved {
    party: PartyId,
    reason: String[default]
});

/// See [`EventType::TermsAgreed`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TermsAgreed {
    /// The party agreeing.
    pub party: PartyId,
    /// Hash of the terms agreed to (amount, description, policy).
    pub terms_hash: Hash,
}
compact_de!(TermsAgreed {
    party: PartyId,
    terms_hash: Hash
});

/// See [`EventType::FundingDeadlineSet`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FundingDeadlineSet {
    /// Funds must be available by then.
    pub deadline: Timestamp,
}
compact_de!(FundingDeadlineSet {
    deadline: Timestamp
});

/// How the payer will pay. Bank details are hidden from roles whose policy says so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FundingMethod {
    /// The rail.
    pub rail: Rail,
    /// Bank or provider name.
    #[serde(default)]
    pub institution: String,
    /// Last four digits of the account.
    #[serde(default)]
    pub account_last4: String,
    /// Account holder.
    #[serde(default)]
    pub holder: String,
}
compact_de!(FundingMethod {
    rail: Rail,
    institution: String[default],
    account_last4: String[default],
    holder: String[default]
});

/// See [`EventType::FundingMethodAttached`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FundingMethodAttached {
    /// The method.
    pub method: FundingMethod,
}
compact_de!(FundingMethodAttached {
    method: FundingMethod
});

/// See [`EventType::FundingSubmitted`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FundingSubmitted {
    /// The pending leg external:payer → clearing.
    pub leg: LegId,
    /// Amount sent.
    pub amount: Money,
    /// Rail used.
    pub rail: Rail,
    /// The rail's reference for this transfer (de-duplicates notices).
    pub rail_ref: String,
}
compact_de!(FundingSubmitted {
    leg: LegId,
    amount: Money,
    rail: Rail,
    rail_ref: String
});

/// See [`EventType::FundingSettled`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FundingSettled {
    /// The funding leg.
    pub leg: LegId,
    /// The rail's reference.
    pub rail_ref: String,
    /// What arrived, when less than the transfer (absent: all of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<Money>,
}
compact_de!(FundingSettled {
    leg: LegId,
    rail_ref: String,
    amount: Option<Money> [skip_none]
});

/// See [`EventType::FundsAvailable`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FundsAvailable {
    /// The funding leg whose money became available.
    pub leg: LegId,
    /// Amount moved clearing → escrow.
    pub amount: Money,
}
compact_de!(FundsAvailable {
    leg: LegId,
    amount: Money
});

/// See [`EventType::FundingFailed`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FundingFailed {
    /// The funding leg.
    pub leg: LegId,
    /// The rail's reference.
    pub rail_ref: String,
    /// The rail's failure code.
    pub code: String,
    /// Human-readable reason.
    #[serde(default)]
    pub reason: String,
}
compact_de!(FundingFailed {
    leg: LegId,
    rail_ref: String,
    code: String,
    reason: String[default]
});

/// See [`EventType::FundingReturned`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FundingReturned {
    /// The funding leg.
    pub leg: LegId,
    /// The rail's reference.
    pub rail_ref: String,
    /// ACH return code such as `R01`.
    pub return_code: String,
    /// Human-readable reason.
    #[serde(default)]
    pub reason: String,
    /// Amount returned.
    pub amount: Money,
}
compact_de!(FundingReturned {
    leg: LegId,
    rail_ref: String,
    return_code: String,
    reason: String[default],
    amount: Money
});

/// What a missed deadline did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadlineOutcome {
    /// The payment expired.
    Expired,
    /// The payment was flagged; funding stays open.
    Flagged,
}
unit_enum_de!(DeadlineOutcome { Expired = "expired", Flagged = "flagged" });

/// See [`EventType::FundingDeadlineMissed`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FundingDeadlineMissed {
    /// The deadline that passed.
    pub deadline: Timestamp,
    /// What it did.
    pub outcome: DeadlineOutcome,
}
compact_de!(FundingDeadlineMissed {
    deadline: Timestamp,
    outcome: DeadlineOutcome
});

/// See [`EventType::PaymentExpired`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentExpired {
    /// `deadline_missed` or `attempts_exhausted`.
    pub reason: String,
}
compact_de!(PaymentExpired { reason: String });

/// One payee's share of a release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Allocation {
    /// The payee.
    pub party: PartyId,
    /// Gross amount for this payee (before payee-borne fees).
    pub amount: Money,
}
compact_de!(Allocation {
    party: PartyId,
    amount: Money
});

/// See [`EventType::FeeAssessed`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FeeAssessed {
    /// The request the fee applies to.
    pub request: RequestId,
    /// The fee rule's name.
    pub fee: String,
    /// Who receives it.
    pub party: PartyId,
    /// How much.
    pub amount: Money,
    /// Who bears it.
    pub borne_by: crate::policy::BorneBy,
}
compact_de!(FeeAssessed {
    request: RequestId,
    fee: String,
    party: PartyId,
    amount: Money,
    borne_by: crate::policy::BorneBy
});

/// See [`EventType::ReleaseRequested`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequested {
    /// The request.
    pub request: RequestId,
    /// Who gets what.
    pub allocations: Vec<Allocation>,
    /// Hash binding approvals to these exact allocations.
    pub allocations_hash: Hash,
}
compact_de!(ReleaseRequested { request: RequestId, allocations: Vec<Allocation>, allocations_hash: Hash });

/// See [`EventType::ReleaseAmended`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseAmended {
    /// The request.
    pub request: RequestId,
    /// The new allocations.
    pub allocations: Vec<Allocation>,
    /// Their hash.
    pub allocations_hash: Hash,
}
compact_de!(ReleaseAmended { request: RequestId, allocations: Vec<Allocation>, allocations_hash: Hash });

/// See [`EventType::RefundRequested`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RefundRequested {
    /// The request.
    pub request: RequestId,
    /// Amount to return to the payer.
    pub amount: Money,
    /// Hash approvals bind to.
    pub allocations_hash: Hash,
}
compact_de!(RefundRequested {
    request: RequestId,
    amount: Money,
    allocations_hash: Hash
});

/// See [`EventType::ApprovalGranted`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalGranted {
    /// The request.
    pub request: RequestId,
    /// The approving party.
    pub party: PartyId,
    /// The allocations approved.
    pub allocations_hash: Hash,
}
compact_de!(ApprovalGranted {
    request: RequestId,
    party: PartyId,
    allocations_hash: Hash
});

/// See [`EventType::ApprovalDenied`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalDenied {
    /// The request.
    pub request: RequestId,
    /// The denying party.
    pub party: PartyId,
    /// Why.
    #[serde(default)]
    pub reason: String,
}
compact_de!(ApprovalDenied {
    request: RequestId,
    party: PartyId,
    reason: String[default]
});

/// See [`EventType::ApprovalWithdrawn`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalWithdrawn {
    /// The request.
    pub request: RequestId,
    /// The party withdrawing.
    pub party: PartyId,
}
compact_de!(ApprovalWithdrawn {
    request: RequestId,
    party: PartyId
});

/// See [`EventType::ReleaseAuthorized`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseAuthorized {
    /// The request.
    pub request: RequestId,
}
compact_de!(ReleaseAuthorized { request: RequestId });

/// See [`EventType::RefundAuthorized`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RefundAuthorized {
    /// The request.
    pub request: RequestId,
}
compact_de!(RefundAuthorized { request: RequestId });

/// See [`EventType::RequestCancelled`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestCancelled {
    /// The request.
    pub request: RequestId,
    /// Why.
    #[serde(default)]
    pub reason: String,
}
compact_de!(RequestCancelled {
    request: RequestId,
    reason: String[default]
});

/// See [`EventType::DisbursementSubmitted`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DisbursementSubmitted {
    /// The authorized request.
    pub request: RequestId,
    /// Rail used.
    pub rail: Rail,
    /// The rail's reference.
    pub rail_ref: String,
}
compact_de!(DisbursementSubmitted {
    request: RequestId,
    rail: Rail,
    rail_ref: String
});

/// See [`EventType::DisbursementSettled`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DisbursementSettled {
    /// The request.
    pub request: RequestId,
    /// The rail's reference.
    pub rail_ref: String,
}
compact_de!(DisbursementSettled {
    request: RequestId,
    rail_ref: String
});

/// See [`EventType::DisbursementFailed`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DisbursementFailed {
    /// The request.
    pub request: RequestId,
    /// The rail's reference.
    pub rail_ref: String,
    /// The rail's failure code.
    pub code: String,
    /// Human-readable reason.
    #[serde(default)]
    pub reason: String,
}
compact_de!(DisbursementFailed {
    request: RequestId,
    rail_ref: String,
    code: String,
    reason: String[default]
});

/// See [`EventType::DisputeOpened`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DisputeOpened {
    /// The dispute.
    pub dispute: RequestId,
    /// Why.
    #[serde(default)]
    pub reason: String,
}
compact_de!(DisputeOpened {
    dispute: RequestId,
    reason: String[default]
});

/// How a dispute ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DisputeOutcome {
    /// Back to where it was; requests go on.
    Resume,
    /// Funds are released (a release request follows, authorized by the resolver).
    Release,
    /// Funds are refunded (a refund request follows, authorized by the resolver).
    Refund,
}
unit_enum_de!(DisputeOutcome { Resume = "resume", Release = "release", Refund = "refund" });

/// See [`EventType::DisputeResolved`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DisputeResolved {
    /// The dispute.
    pub dispute: RequestId,
    /// How.
    pub outcome: DisputeOutcome,
    /// The release or refund request that carries out a `release` or `refund` outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestId>,
    /// Notes.
    #[serde(default)]
    pub note: String,
}
compact_de!(DisputeResolved { dispute: RequestId, outcome: DisputeOutcome, request: Option<RequestId> [skip_none], note: String [default] });

/// See [`EventType::ReversalRecorded`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReversalRecorded {
    /// The posted leg being reversed.
    pub leg: LegId,
    /// Why.
    #[serde(default)]
    pub reason: String,
}
compact_de!(ReversalRecorded {
    leg: LegId,
    reason: String[default]
});

/// See [`EventType::ShortfallRecovered`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShortfallRecovered {
    /// Amount recovered.
    pub amount: Money,
    /// The rail's reference for the recovery.
    pub rail_ref: String,
}
compact_de!(ShortfallRecovered {
    amount: Money,
    rail_ref: String
});

/// See [`EventType::ShortfallWrittenOff`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShortfallWrittenOff {
    /// Amount written off.
    pub amount: Money,
    /// Why.
    #[serde(default)]
    pub reason: String,
}
compact_de!(ShortfallWrittenOff {
    amount: Money,
    reason: String[default]
});

/// See [`EventType::PaymentCancelled`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentCancelled {
    /// Why.
    #[serde(default)]
    pub reason: String,
}
compact_de!(PaymentCancelled {
    reason: String[default]
});

/// See [`EventType::PaymentClosed`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentClosed {
    /// Why.
    #[serde(default)]
    pub reason: String,
}
compact_de!(PaymentClosed {
    reason: String[default]
});

/// See [`EventType::RailNoticeHeld`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RailNoticeHeld {
    /// The rail's reference of the transfer, which no funding or disbursement of the
    /// payment carries yet.
    pub rail_ref: String,
    /// What the rail said, as in the `RailNotice` command.
    pub notice: crate::command::RailOutcome,
}
compact_de!(RailNoticeHeld {
    rail_ref: String,
    notice: crate::command::RailOutcome
});

/// The hash approvals bind to: SHA-256 of the allocations' canonical JSON.
///
/// ```
/// use trustfold_core::event::{allocations_hash, Allocation};
/// use trustfold_core::money::{Currency, Money};
/// use trustfold_core::id::PartyId;
/// let usd = Currency::new("USD")?;
/// let a = vec![Allocation { party: PartyId::from_bytes([1; 16]), amount: Money::parse("10", usd)? }];
/// let mut b = a.clone();
/// b[0].amount = Money::parse("10.01", usd)?;
/// assert_ne!(allocations_hash(&a), allocations_hash(&b));
/// # Ok::<(), trustfold_core::Error>(())
/// ```
pub fn allocations_hash(allocations: &[Allocation]) -> Hash {
    use crate::json::write::WriteJson;
    let mut out = Vec::with_capacity(16 + 100 * allocations.len());
    allocations.write_json(&mut out);
    Hash::of(&out)
}

/// The hash approvals of a refund bind to.
pub fn refund_hash(amount: &Money) -> Hash {
    use crate::json::write::{key, WriteJson};
    // `{"refund":<money>}`, as the `serde_json::Value` this was first written with.
    let mut out = Vec::with_capacity(64);
    out.push(b'{');
    key(&mut out, "refund");
    amount.write_json(&mut out);
    out.push(b'}');
    Hash::of(&out)
}

/// The hash of the terms parties agree to: amount, description and policy.
pub fn terms_hash(amount: &Money, description: &str, policy_hash: &Hash) -> Hash {
    use crate::json::write::{key, string, WriteJson};
    // Keys in sorted order, as the `serde_json::Value` this was first written with.
    let mut out = Vec::with_capacity(160 + description.len());
    out.push(b'{');
    key(&mut out, "amount");
    amount.write_json(&mut out);
    key(&mut out, "description");
    string(&mut out, description);
    key(&mut out, "policy_hash");
    policy_hash.write_json(&mut out);
    out.push(b'}');
    Hash::of(&out)
}

#[cfg(test)]
mod hash_tests {
    use super::*;
    use crate::id::PartyId;

    /// The hashed documents are byte for byte what serde_json wrote before the
    /// core's writer.
    #[test]
    fn hashed_documents_as_serde_wrote_them() {
        let usd = crate::money::Currency::new("USD").unwrap();
        let m = |s: &str| Money::parse(s, usd).unwrap();
        let allocations = [
            Allocation {
                party: PartyId::from_bytes([7; 16]),
                amount: m("12.5"),
            },
            Allocation {
                party: PartyId::from_bytes([9; 16]),
                amount: m("-0.01"),
            },
        ];
        for a in [&allocations[..], &allocations[..1], &[]] {
            assert_eq!(
                allocations_hash(a),
                Hash::of(&serde_json::to_vec(a).unwrap())
            );
        }
        #[derive(Serialize)]
        struct Refund<'a> {
            refund: &'a Money,
        }
        #[derive(Serialize)]
        struct Terms<'a> {
            amount: &'a Money,
            description: &'a str,
            policy_hash: &'a Hash,
        }
        for amount in [m("1000"), m("0.5"), Money::zero(usd)] {
            let want = Hash::of(&serde_json::to_vec(&Refund { refund: &amount }).unwrap());
            assert_eq!(refund_hash(&amount), want);
            for description in ["", "Earnest money \"123 Main\"\n\u{1}\t é ☃"] {
                let policy_hash = Hash::of(description.as_bytes());
                let want = Hash::of(
                    &serde_json::to_vec(&Terms {
                        amount: &amount,
                        description,
                        policy_hash: &policy_hash,
                    })
                    .unwrap(),
                );
                assert_eq!(terms_hash(&amount, description, &policy_hash), want);
            }
        }
    }
}
