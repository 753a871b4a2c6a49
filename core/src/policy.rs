//! Policy: the customer's workflow as a versioned JSON document.
//!
//! A tenant writes a policy once and every payment opened from it pins that exact
//! version: the whole document is embedded in the payment's first event, so quorum,
//! limits and fees are always judged by the rules in force when the payment was opened,
//! and a history can be replayed offline with nothing else.
//!
//! A policy names the roles (buyer, seller, escrow_holder, lender, …: the core has no
//! fixed list), who pays and who may be paid, what funding is acceptable, how releases
//! and refunds are approved (`all_of` roles or `n_of` {n, roles}), fees, limits, who may
//! cancel, dispute and resolve, and what each role sees and is notified of.
//!
//! ```
//! use trustfold_core::policy::Policy;
//! let p = Policy::from_json(include_str!("../../examples/policies/marketplace.json"))?;
//! assert_eq!(p.fees[0].bps, 1000);
//! let bad = r#"{"id":"x","version":1,"roles":{"buyer":{}},"payer_role":"buyr","payee_roles":["buyer"]}"#;
//! assert_eq!(Policy::from_json(bad).unwrap_err().field(), Some("payer_role"));
//! # Ok::<(), trustfold_core::Error>(())
//! ```

use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::command::{text_char_allowed, NAME_MAX, TEXT_MAX};
use crate::de::unit_enum_de;
use crate::error::{Error, Result};
use crate::event::EventType;
use crate::hash::Hash;
use crate::map::{SortedMap, SortedSet};
use crate::money::{Currency, Money};

/// The longest funding deadline a policy may set, in days: ten years.
pub const MAX_DEADLINE_DAYS: u32 = 3650;
/// The longest hold between settlement and good funds a policy may set, in business
/// days (ACH's return window is 60 calendar days).
pub const MAX_GOOD_FUNDS_DAYS: u32 = 365;
/// The most holidays a policy may list (about a century of a bank calendar).
pub const MAX_HOLIDAYS: usize = 1500;
/// Most entries of an `all_of` approval rule.
pub const MAX_ALL_OF: usize = 64;

/// The longest policy id, in characters.
pub const ID_MAX: usize = 100;

/// Roles the system itself acts in; a policy may not define them.
pub const RESERVED_ROLES: &[&str] = &["system", "rail"];

/// A role name from a policy (`buyer`, `escrow_holder`, …).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Role(pub String);

impl Role {
    /// A role by name.
    pub fn new(name: impl Into<String>) -> Self {
        Role(name.into())
    }
    /// The role acting for rail notices (settlements, failures, returns).
    pub fn rail() -> Self {
        Role("rail".into())
    }
    /// The role acting for time-driven steps (deadlines, good funds, auto-release).
    pub fn system() -> Self {
        Role("system".into())
    }
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    fn is_valid_name(&self) -> bool {
        let b = self.0.as_bytes();
        !b.is_empty()
            && b.len() <= 32
            && b[0].is_ascii_lowercase()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A payment rail.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rail {
    /// US ACH: cheap, slow, returnable for up to 60 days (R10).
    Ach,
    /// Wire transfer: final once settled.
    Wire,
    /// Real-time payments.
    Rtp,
    /// Card payment.
    Card,
    /// A book transfer inside one bank.
    Book,
}
unit_enum_de!(Rail { Ach = "ach", Wire = "wire", Rtp = "rtp", Card = "card", Book = "book" });

impl Rail {
    /// The rail's name in JSON.
    ///
    /// ```
    /// use trustfold_core::policy::Rail;
    /// assert_eq!(Rail::Ach.as_str(), "ach");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Rail::Ach => "ach",
            Rail::Wire => "wire",
            Rail::Rtp => "rtp",
            Rail::Card => "card",
            Rail::Book => "book",
        }
    }
}

/// How many parties may hold a role.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRule {
    /// The payment cannot proceed to agreement until a party holding it has joined.
    #[serde(default)]
    pub required: bool,
    /// At most this many parties (unbounded when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// Free text for people reading the policy.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// Who must approve: nobody, every listed role, or n distinct parties among roles.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Approvals {
    /// No approval: a request is authorized as soon as it is made.
    #[default]
    None,
    /// One approval from a party holding each listed role.
    AllOf(Vec<Role>),
    /// `n` distinct parties, each holding one of `roles`.
    NOf {
        /// How many.
        n: u32,
        /// Among which roles.
        roles: Vec<Role>,
    },
}

impl Approvals {
    /// Every role that may approve.
    pub fn roles(&self) -> &[Role] {
        match self {
            Approvals::None => &[],
            Approvals::AllOf(r) => r,
            Approvals::NOf { roles, .. } => roles,
        }
    }
}

/// What funding amount is accepted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmountRule {
    /// Smallest payment amount the policy allows.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_dec")]
    pub min: Option<Decimal>,
    /// Largest payment amount the policy allows.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_dec")]
    pub max: Option<Decimal>,
}

/// From when a funding deadline counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadlineAnchor {
    /// When the payment was opened.
    Initiated,
    /// When the last required party agreed to the terms.
    Agreed,
}
unit_enum_de!(DeadlineAnchor { Initiated = "initiated", Agreed = "agreed" });

/// A deadline as anchor + offset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadlineRule {
    /// What the offset counts from.
    pub anchor: DeadlineAnchor,
    /// How many days.
    pub days: u32,
    /// Business days (Mon–Fri) rather than calendar days.
    #[serde(default)]
    pub business_days: bool,
}

/// What a missed funding deadline does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDeadlineMissed {
    /// The payment expires (anything already held is refunded).
    #[default]
    Expire,
    /// The payment is only flagged; funding stays open.
    Flag,
}
unit_enum_de!(OnDeadlineMissed { Expire = "expire", Flag = "flag" });

/// Funding rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FundingRules {
    /// Accepted payment amounts.
    #[serde(default)]
    pub amount: AmountRule,
    /// Rails funding may use.
    pub rails: Vec<Rail>,
    /// Funding deadline, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DeadlineRule>,
    /// What a missed deadline does.
    #[serde(default)]
    pub on_deadline_missed: OnDeadlineMissed,
    /// Business days between settlement and availability, per rail (0 when absent).
    #[serde(default, skip_serializing_if = "SortedMap::is_empty")]
    pub good_funds_days: SortedMap<Rail, u32>,
    /// Failed attempts allowed before the payment expires.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Whether the payer may fund in several parts.
    #[serde(default)]
    pub allow_partial: bool,
    /// Days that are not business days although they are weekdays (the customer's
    /// bank holidays, `YYYY-MM-DD` in UTC, ascending, each once): business-day
    /// deadlines and good-funds delays skip them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holidays: Vec<crate::time::Date>,
}

pub(crate) fn default_attempts() -> u32 {
    3
}

/// Release rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRules {
    /// Approvals a release needs.
    #[serde(default)]
    pub approvals: Approvals,
    /// Whether a release may leave part of the funds held.
    #[serde(default)]
    pub partial: bool,
    /// Release everything to the payees automatically this long after funds are
    /// held, unless disputed. The hours count from when the payment was first held
    /// (`held_since`): a return and a new funding do not start them again, since the
    /// payer may dispute all along, while the money is away too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_release_after_hours: Option<u32>,
    /// Largest single release (before fees).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_dec")]
    pub max_per_release: Option<Decimal>,
}

/// Refund rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundRules {
    /// Approvals a refund needs.
    #[serde(default)]
    pub approvals: Approvals,
}

/// Who bears a fee.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BorneBy {
    /// Deducted from what the payee receives.
    #[default]
    Payee,
    /// Paid from escrow on top of what the payee receives.
    Payer,
}
unit_enum_de!(BorneBy { Payee = "payee", Payer = "payer" });

/// A fee charged on each release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeeRule {
    /// A name unique within the policy, e.g. `platform_fee`.
    pub name: String,
    /// The role that receives it (the first party holding it).
    pub to_role: Role,
    /// Basis points of the released gross (1000 = 10 %).
    #[serde(default)]
    pub bps: u32,
    /// A fixed amount charged on the first release.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_dec")]
    pub fixed: Option<Decimal>,
    /// Who bears it.
    #[serde(default)]
    pub borne_by: BorneBy,
}

/// Roles allowed to issue each kind of command.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permissions {
    /// Invite and remove participants.
    #[serde(default)]
    pub invite: Vec<Role>,
    /// Submit funding and attach a funding method (besides the payer role).
    #[serde(default)]
    pub fund: Vec<Role>,
    /// Request a release.
    #[serde(default)]
    pub request_release: Vec<Role>,
    /// Request a refund.
    #[serde(default)]
    pub request_refund: Vec<Role>,
    /// Submit an authorized disbursement to a rail.
    #[serde(default)]
    pub disburse: Vec<Role>,
    /// Cancel before funds are held (or with a full refund after).
    #[serde(default)]
    pub cancel: Vec<Role>,
    /// Open a dispute.
    #[serde(default)]
    pub dispute: Vec<Role>,
    /// Resolve a dispute.
    #[serde(default)]
    pub resolve: Vec<Role>,
    /// Record shortfall recoveries, write-offs, reversals, and close.
    #[serde(default)]
    pub administer: Vec<Role>,
}

/// Parts of a payment a role may be kept from seeing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hidden {
    /// Amounts, balances and allocations, and the digests over them (`terms_hash`,
    /// `allocations_hash`), which give an amount away to whoever hashes likely ones.
    Amounts,
    /// The funding method (bank, last four digits, holder) and the rails' references
    /// of transfers (in funding attempts, requests and events).
    BankDetails,
    /// Participants' names and e-mail addresses.
    Contacts,
    /// The ledger legs.
    Ledger,
    /// Release and refund requests and their approvals.
    Requests,
    /// Disputes and their reasons.
    Disputes,
}
impl Hidden {
    /// Every part a view can hide.
    pub const ALL: [Hidden; 6] = [
        Hidden::Amounts,
        Hidden::BankDetails,
        Hidden::Contacts,
        Hidden::Ledger,
        Hidden::Requests,
        Hidden::Disputes,
    ];
}
unit_enum_de!(Hidden { Amounts = "amounts", BankDetails = "bank_details", Contacts = "contacts", Ledger = "ledger", Requests = "requests", Disputes = "disputes" });

/// Which events a role sees.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventFilter {
    /// Every event.
    #[default]
    All,
    /// Only these event types.
    Only(SortedSet<String>),
}

/// What one role sees.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Visibility {
    /// Which events appear in the role's history.
    #[serde(default)]
    pub events: EventFilter,
    /// Which parts are removed from state and events.
    #[serde(default)]
    pub hide: SortedSet<Hidden>,
}

/// Limits on amounts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest payment.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_dec")]
    pub max_payment: Option<Decimal>,
}

/// A customer's workflow. See the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The policy's id within its tenant, e.g. `earnest-money`.
    pub id: String,
    /// Version, from 1, increased on every change.
    pub version: u32,
    /// Display name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Currencies payments may use (any when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub currencies: Vec<Currency>,
    /// Roles and how many may hold each.
    pub roles: SortedMap<Role, RoleRule>,
    /// The role that funds the payment.
    pub payer_role: Role,
    /// Roles that may receive released funds.
    pub payee_roles: Vec<Role>,
    /// Roles whose parties must all agree to the terms before funding.
    #[serde(default)]
    pub agreement: Vec<Role>,
    /// Funding rules.
    #[serde(default = "default_funding")]
    pub funding: FundingRules,
    /// Release rules.
    #[serde(default)]
    pub release: ReleaseRules,
    /// Refund rules.
    #[serde(default)]
    pub refund: RefundRules,
    /// Fees.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fees: Vec<FeeRule>,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
    /// Who may do what.
    #[serde(default)]
    pub permissions: Permissions,
    /// What each role sees (roles not listed see everything).
    #[serde(default, skip_serializing_if = "SortedMap::is_empty")]
    pub visibility: SortedMap<Role, Visibility>,
    /// Which roles are notified of which event types.
    #[serde(default, skip_serializing_if = "SortedMap::is_empty")]
    pub notifications: SortedMap<String, Vec<Role>>,
}

pub(crate) fn default_funding() -> FundingRules {
    FundingRules {
        amount: AmountRule::default(),
        rails: vec![Rail::Ach, Rail::Wire],
        deadline: None,
        on_deadline_missed: OnDeadlineMissed::Expire,
        good_funds_days: SortedMap::new(),
        max_attempts: default_attempts(),
        allow_partial: false,
        holidays: Vec::new(),
    }
}

impl Policy {
    /// Parses a policy document and checks it as a new policy
    /// ([`Policy::validate_new`]).
    pub fn from_json(json: &str) -> Result<Self> {
        let p: Policy = crate::policy_json::parse_document(json.as_bytes())?;
        p.validate_new()?;
        Ok(p)
    }

    /// The canonical JSON bytes of this policy (what its hash covers).
    pub fn canonical_json(&self) -> Vec<u8> {
        // The core's writer: byte for byte what the derived `Serialize` writes (the
        // tests compare the two on the examples and on mutated policies).
        let mut out = Vec::with_capacity(2048);
        crate::json::write::WriteJson::write_json(self, &mut out);
        out
    }

    /// SHA-256 of the canonical JSON: identifies this exact version.
    pub fn hash(&self) -> Hash {
        Hash::of(&self.canonical_json())
    }

    /// The visibility for a set of roles: the union of what each role may see.
    /// A role of the policy without an entry sees everything; a role the policy does
    /// not define adds nothing, and no role at all sees nothing (fail closed).
    ///
    /// ```
    /// use trustfold_core::policy::{EventFilter, Policy, Role};
    /// let p = Policy::from_json(include_str!("../../examples/policies/earnest-money.json"))?;
    /// let lender = p.visibility_for(&[Role::new("lender")]);
    /// assert_eq!(p.visibility_for(&[Role::new("lender"), Role::new("zzz")]), lender);
    /// assert_eq!(p.visibility_for(&[]), p.visibility_for(&[Role::new("zzz")]));
    /// assert!(matches!(p.visibility_for(&[]).events, EventFilter::Only(e) if e.is_empty()));
    /// # Ok::<(), trustfold_core::Error>(())
    /// ```
    pub fn visibility_for(&self, roles: &[Role]) -> Visibility {
        let mut hide: Option<SortedSet<Hidden>> = None;
        let mut events: Option<EventFilter> = None;
        for r in roles.iter().filter(|r| self.roles.contains_key(r)) {
            let v = self.visibility.get(r).cloned().unwrap_or_default();
            hide = Some(match hide {
                None => v.hide,
                Some(h) => h.intersection(&v.hide).copied().collect(),
            });
            events = Some(match (events, v.events) {
                (None, e) => e,
                (Some(EventFilter::All), _) | (_, EventFilter::All) => EventFilter::All,
                (Some(EventFilter::Only(a)), EventFilter::Only(b)) => {
                    EventFilter::Only(a.union(&b).cloned().collect())
                }
            });
        }
        match (events, hide) {
            (Some(events), Some(hide)) => Visibility { events, hide },
            _ => Visibility {
                events: EventFilter::Only(SortedSet::new()),
                hide: Hidden::ALL.into_iter().collect(),
            },
        }
    }

    /// The roles the policy notifies of an event type.
    pub fn notified_roles(&self, event_type: &str) -> &[Role] {
        self.notifications
            .get(event_type)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The approvals rule for a release or a refund.
    pub fn approvals(&self, refund: bool) -> &Approvals {
        if refund {
            &self.refund.approvals
        } else {
            &self.release.approvals
        }
    }

    /// Checks every rule a policy must satisfy; the error names the offending field.
    pub fn validate(&self) -> Result<()> {
        if self.id.trim().is_empty() {
            return Err(Error::policy("id", "must not be empty"));
        }
        if self.version == 0 {
            return Err(Error::policy("version", "must be 1 or more"));
        }
        if self.roles.is_empty() {
            return Err(Error::policy("roles", "define at least one role"));
        }
        for (role, rule) in &self.roles {
            let f = || format!("roles.{role}");
            if !role.is_valid_name() {
                return Err(Error::policy(
                    f(),
                    "role names are lower-case letters, digits and _ (at most 32), starting with a letter",
                ));
            }
            if RESERVED_ROLES.contains(&role.as_str()) {
                return Err(Error::policy(
                    f(),
                    "this role name is reserved for the platform",
                ));
            }
            if rule.max == Some(0) {
                return Err(Error::policy(format!("{}.max", f()), "must be 1 or more"));
            }
        }
        self.known("payer_role", &self.payer_role)?;
        if self.payee_roles.is_empty() {
            return Err(Error::policy("payee_roles", "name at least one role"));
        }
        self.known_all(&|| "payee_roles".into(), &self.payee_roles)?;
        self.known_all(&|| "agreement".into(), &self.agreement)?;
        self.check_approvals("release.approvals", &self.release.approvals)?;
        self.check_approvals("refund.approvals", &self.refund.approvals)?;

        let f = &self.funding;
        if f.rails.is_empty() {
            return Err(Error::policy("funding.rails", "name at least one rail"));
        }
        for rail in f.good_funds_days.keys() {
            if !f.rails.contains(rail) {
                return Err(Error::policy(
                    "funding.good_funds_days",
                    format!("rail {rail:?} is not in funding.rails"),
                ));
            }
        }
        if f.max_attempts == 0 {
            return Err(Error::policy("funding.max_attempts", "must be 1 or more"));
        }
        if f.holidays.len() > MAX_HOLIDAYS {
            return Err(Error::policy(
                "funding.holidays",
                format!("lists more than {MAX_HOLIDAYS} days"),
            ));
        }
        for (i, pair) in f.holidays.windows(2).enumerate() {
            if pair[1] <= pair[0] {
                return Err(Error::policy(
                    format!("funding.holidays[{}]", i + 1),
                    format!(
                        "{} {} {}: list the days in ascending order, each once",
                        pair[1],
                        if pair[1] == pair[0] {
                            "repeats"
                        } else {
                            "comes after"
                        },
                        pair[0]
                    ),
                ));
            }
        }
        positive("funding.amount.min", f.amount.min)?;
        positive("funding.amount.max", f.amount.max)?;
        if let (Some(lo), Some(hi)) = (f.amount.min, f.amount.max) {
            if lo > hi {
                return Err(Error::policy("funding.amount.min", "is larger than max"));
            }
        }
        positive("release.max_per_release", self.release.max_per_release)?;
        positive("limits.max_payment", self.limits.max_payment)?;
        if self.release.auto_release_after_hours == Some(0) {
            return Err(Error::policy(
                "release.auto_release_after_hours",
                "must be 1 or more (or absent)",
            ));
        }

        let mut names = SortedSet::new();
        for (i, fee) in self.fees.iter().enumerate() {
            let f = format!("fees[{i}]"); // few fees: eager is fine
            if fee.name.trim().is_empty() || !names.insert(fee.name.as_str()) {
                return Err(Error::policy(
                    format!("{f}.name"),
                    "must be non-empty and unique",
                ));
            }
            self.known(&format!("{f}.to_role"), &fee.to_role)?;
            if fee.bps > 10_000 {
                return Err(Error::policy(
                    format!("{f}.bps"),
                    "at most 10000 (100 %): fees never exceed the gross",
                ));
            }
            if let Some(fixed) = fee.fixed {
                if fixed.is_sign_negative() {
                    return Err(Error::policy(
                        format!("{f}.fixed"),
                        "fee must not be negative",
                    ));
                }
            }
        }

        let p = &self.permissions;
        for (name, roles) in [
            ("invite", &p.invite),
            ("fund", &p.fund),
            ("request_release", &p.request_release),
            ("request_refund", &p.request_refund),
            ("disburse", &p.disburse),
            ("cancel", &p.cancel),
            ("dispute", &p.dispute),
            ("resolve", &p.resolve),
            ("administer", &p.administer),
        ] {
            self.known_all(&|| format!("permissions.{name}"), roles)?;
        }
        for (role, vis) in &self.visibility {
            if !self.roles.contains_key(role) {
                self.known(&format!("visibility.{role}"), role)?;
            }
            if let EventFilter::Only(types) = &vis.events {
                for t in types {
                    if EventType::from_name(t).is_none() {
                        return Err(Error::policy(
                            format!("visibility.{role}.events"),
                            format!("unknown event type `{t}`"),
                        ));
                    }
                }
            }
        }
        for (t, roles) in &self.notifications {
            if EventType::from_name(t).is_none() {
                return Err(Error::policy(
                    format!("notifications.{t}"),
                    format!("unknown event type `{t}`"),
                ));
            }
            self.known_all(&|| format!("notifications.{t}"), roles)?;
        }
        Ok(())
    }

    /// The bounds a policy must keep to be published or to open a payment, on top of
    /// [`Policy::validate`]: day counts a calendar can hold (a deadline at most
    /// [`MAX_DEADLINE_DAYS`] away, good funds at most [`MAX_GOOD_FUNDS_DAYS`]), each
    /// currency listed once, every fixed fee payable in each of them, fees' basis points
    /// adding up to at most 10000 (so a release can pay them), and text of a length a
    /// history that embeds the policy in its first event can carry.
    ///
    /// It also refuses what would leave a payment stuck, each at the field to change:
    /// - no way out for held money: `permissions.disburse` empty;
    ///   `permissions.request_release` empty without `release.auto_release_after_hours`;
    ///   `permissions.request_refund` and `permissions.cancel` both empty;
    ///   `permissions.dispute` without `permissions.resolve`; a role in
    ///   `request_release`, `request_refund`, `disburse`, `cancel` or `resolve` that no
    ///   party could hold (optional while no role may invite: only the initiator could);
    /// - a release or refund approver whose view hides `requests` (`visibility.<role>`),
    ///   as one hiding `amounts` already was;
    /// - an automatic release while `payee_roles` names the payer role (it would pay the
    ///   payer part of its own money);
    /// - limits that contradict each other: `release.partial` false with a
    ///   `max_per_release` below the largest payment allowed (or with no largest one),
    ///   `funding.amount.min` above `limits.max_payment`, a funding deadline of 0 days, or
    ///   one anchored on `agreed` with no `agreement` role (it would never be set);
    /// - refunds that need approvals while no role may request one
    ///   (`permissions.request_refund`): cancelling is refused with money held;
    /// - a fee to an optional role (`fees[i].to_role`): every release fails
    ///   (`fee_recipient_missing`) while nobody holds it;
    /// - an `all_of` approval naming an optional role, an `n_of` with fewer than `n`
    ///   required roles (`release.approvals`, `refund.approvals`), or disputes with no
    ///   required resolving role (`permissions.resolve`): nobody may join a role that
    ///   approves or resolves once money is held (`role_locked`).
    ///
    /// [`Policy::check_payment_amount`] refuses, when a payment is opened, an amount not
    /// above the policy's fixed fees.
    ///
    /// Replaying a history checks only [`Policy::validate`]: a payment opened before a
    /// bound was added still folds.
    ///
    /// ```
    /// use trustfold_core::policy::Policy;
    /// let mut p = Policy::from_json(include_str!("../../examples/policies/earnest-money.json"))?;
    /// p.funding.deadline.as_mut().unwrap().days = 4000;
    /// assert_eq!(p.validate(), Ok(()));
    /// assert_eq!(p.validate_new().unwrap_err().field(), Some("funding.deadline.days"));
    ///
    /// let mut p = Policy::from_json(include_str!("../../examples/policies/marketplace.json"))?;
    /// let mut second = p.fees[0].clone();
    /// second.name = "second".into();
    /// (p.fees[0].bps, second.bps) = (6000, 6000);
    /// p.fees.push(second);
    /// assert_eq!(p.validate(), Ok(()));
    /// assert_eq!(p.validate_new().unwrap_err().field(), Some("fees"));
    /// # Ok::<(), trustfold_core::Error>(())
    /// ```
    pub fn validate_new(&self) -> Result<()> {
        self.validate()?;
        if self.id.chars().count() > ID_MAX || self.id.chars().any(char::is_control) {
            return Err(Error::policy(
                "id",
                format!("at most {ID_MAX} characters, none of them control characters"),
            ));
        }
        bounded("name", &self.name, false)?;
        for (role, rule) in self.roles.iter() {
            bounded(
                &format!("roles.{role}.description"),
                &rule.description,
                true,
            )?;
        }
        for (i, fee) in self.fees.iter().enumerate() {
            bounded(&format!("fees[{i}].name"), &fee.name, false)?;
        }
        // Agreeing binds `terms_hash` and approving binds `allocations_hash`, digests of
        // amounts a view that hides amounts drops: such a role could not act.
        let approvers = || {
            self.release
                .approvals
                .roles()
                .iter()
                .chain(self.refund.approvals.roles())
        };
        for role in self.agreement.iter().chain(approvers()) {
            if self.hides(role, Hidden::Amounts) {
                return Err(Error::policy(
                    format!("visibility.{role}"),
                    format!(
                        "role `{role}` agrees to the terms or approves releases or refunds, \
                         which bind amounts: it cannot hide `amounts`"
                    ),
                ));
            }
        }
        // An approval names the request and binds its `allocations_hash`; a view that
        // hides requests drops both (and the events about them). Agreeing binds only
        // `terms_hash`, which hiding requests keeps: agreement roles may hide them.
        for role in approvers() {
            if self.hides(role, Hidden::Requests) {
                return Err(Error::policy(
                    format!("visibility.{role}"),
                    format!(
                        "role `{role}` approves releases or refunds: it cannot hide `requests`, \
                         or it could not see the request id and allocations hash it approves"
                    ),
                ));
            }
        }
        // `all_of` takes a party of its own for each role listed: a role listed more
        // times than it can have parties could never be approved.
        for (field, a) in [
            ("release.approvals.all_of", &self.release.approvals),
            ("refund.approvals.all_of", &self.refund.approvals),
        ] {
            if let Approvals::AllOf(roles) = a {
                for role in roles {
                    let listed = roles.iter().filter(|r| *r == role).count();
                    let max = self.roles.get(role).and_then(|r| r.max);
                    if max.is_some_and(|m| listed as u64 > u64::from(m)) {
                        return Err(Error::policy(
                            field,
                            format!(
                                "impossible quorum: `{role}` is listed {listed} times, each \
                                 needing a party of its own, but at most {} parties can hold it",
                                max.unwrap_or(0)
                            ),
                        ));
                    }
                }
            }
        }
        // A disbursement names the authorized request it carries out.
        for role in &self.permissions.disburse {
            if self.hides(role, Hidden::Requests) {
                return Err(Error::policy(
                    format!("visibility.{role}"),
                    format!(
                        "role `{role}` submits disbursements (permissions.disburse): it cannot \
                         hide `requests`, or it could not see the authorized request to pay out"
                    ),
                ));
            }
        }
        // No one judges their own case: a role that resolves disputes may not be paid
        // by the releases it would order, nor be the payer its refunds go back to.
        for role in &self.permissions.resolve {
            if *role == self.payer_role || self.payee_roles.contains(role) {
                return Err(Error::policy(
                    "permissions.resolve",
                    format!(
                        "role `{role}` is the payer or a payee, so it would resolve disputes \
                         about money paid to itself: give `resolve` to a neutral role (an \
                         escrow holder, an arbiter, the platform)"
                    ),
                ));
            }
        }
        let total_bps: u64 = self.fees.iter().map(|f| u64::from(f.bps)).sum();
        if total_bps > 10_000 {
            return Err(Error::policy(
                "fees",
                format!(
                    "the fees' bps add up to {total_bps}, over 10000 (100 %): every release \
                     would owe more in fees than its gross"
                ),
            ));
        }
        let f = &self.funding;
        for (rail, days) in f.good_funds_days.iter() {
            if *days > MAX_GOOD_FUNDS_DAYS {
                return Err(Error::policy(
                    format!("funding.good_funds_days.{}", rail.as_str()),
                    format!("must be at most {MAX_GOOD_FUNDS_DAYS} business days"),
                ));
            }
        }
        if let Some(d) = &f.deadline {
            if d.days > MAX_DEADLINE_DAYS {
                return Err(Error::policy(
                    "funding.deadline.days",
                    format!("must be at most {MAX_DEADLINE_DAYS} (ten years)"),
                ));
            }
            if d.days == 0 {
                return Err(Error::policy(
                    "funding.deadline.days",
                    "must be 1 or more: a deadline of 0 days falls at its anchor, so every \
                     payment would miss it at once (remove the deadline for none)",
                ));
            }
            // The `agreed` deadline is set by the last `AgreeToTerms`, which only a party
            // in an `agreement` role can send.
            if d.anchor == DeadlineAnchor::Agreed && self.agreement.is_empty() {
                return Err(Error::policy(
                    "funding.deadline.anchor",
                    "counts from agreement, but `agreement` names no role: nobody agrees to \
                     the terms, so the deadline would never be set; anchor it on \
                     `initiated` or name the roles that must agree",
                ));
            }
        }
        for (i, c) in self.currencies.iter().enumerate() {
            if self.currencies[..i].contains(c) {
                return Err(Error::policy(
                    format!("currencies[{i}]"),
                    format!("{c} is listed twice"),
                ));
            }
            self.fees_payable_in(*c)?;
        }
        self.check_ways_out()?;
        self.check_amount_limits()?;
        if self.release.auto_release_after_hours.is_some()
            && self.payee_roles.contains(&self.payer_role)
        {
            let payer = &self.payer_role;
            return Err(Error::policy(
                "release.auto_release_after_hours",
                format!(
                    "an automatic release splits escrow among every party holding a role in \
                     `payee_roles`, which names the payer role `{payer}`: the payer would get \
                     part of its own money back as a release; remove `{payer}` from \
                     payee_roles or drop the automatic release"
                ),
            ));
        }
        for (i, fee) in self.fees.iter().enumerate() {
            let role = &fee.to_role;
            if !self.roles.get(role).is_some_and(|r| r.required) {
                return Err(Error::policy(
                    format!("fees[{i}].to_role"),
                    format!(
                        "role `{role}` is optional: a release pays fee `{}` to a party \
                         holding it and fails (fee_recipient_missing) while none does; \
                         make `{role}` required or pay the fee to a required role",
                        fee.name
                    ),
                ));
            }
        }
        self.check_money_roles_held()
    }

    /// The roles whose say money waits for are held once money is in: no one may be
    /// invited into them then (`role_locked`), so an optional approver or resolver
    /// left unheld would hold the money for good. An `all_of` names required roles
    /// only, an `n_of` at least `n` of them, and a dispute has a required resolver.
    fn check_money_roles_held(&self) -> Result<()> {
        let required = |r: &Role| self.roles.get(r).is_some_and(|rule| rule.required);
        for (field, approvals) in [
            ("release.approvals", &self.release.approvals),
            ("refund.approvals", &self.refund.approvals),
        ] {
            match approvals {
                Approvals::None => {}
                Approvals::AllOf(roles) => {
                    if let Some(role) = roles.iter().find(|r| !required(r)) {
                        return Err(Error::policy(
                            field,
                            format!(
                                "role `{role}` is optional, but every role of all_of must \
                                 approve and nobody may join it once money is held \
                                 (role_locked): while no party holds it the money could \
                                 never move; make `{role}` required or drop it"
                            ),
                        ));
                    }
                }
                Approvals::NOf { n, roles } => {
                    let held = roles.iter().filter(|r| required(r)).count();
                    if held < usize::try_from(*n).unwrap_or(usize::MAX) {
                        return Err(Error::policy(
                            field,
                            format!(
                                "n_of needs {n} approvals but only {held} of its roles are \
                                 required: nobody may join a role that approves once money \
                                 is held (role_locked), so with the optional ones unheld \
                                 the money could never move; make at least {n} of them \
                                 required"
                            ),
                        ));
                    }
                }
            }
        }
        let p = &self.permissions;
        if !p.dispute.is_empty() && !p.resolve.iter().any(required) {
            return Err(Error::policy(
                "permissions.resolve",
                "no role here is required: a dispute holds the money until it is resolved, \
                 and nobody may join a resolving role once money is held (role_locked), so \
                 a dispute with no resolver held would keep the funds for good; make a \
                 resolving role required",
            ));
        }
        Ok(())
    }

    /// Held money can always leave escrow: someone may disburse, release (or the policy
    /// releases by itself), refund or cancel, and resolve a dispute if one may be
    /// opened; and each role named for it can be held in a payment.
    fn check_ways_out(&self) -> Result<()> {
        let p = &self.permissions;
        if p.disburse.is_empty() {
            return Err(Error::policy(
                "permissions.disburse",
                "name at least one role: released, refunded and cancelled funds leave \
                 escrow only when a disbursement is submitted, so with nobody to submit one \
                 held funds could never be paid out",
            ));
        }
        if p.request_release.is_empty() && self.release.auto_release_after_hours.is_none() {
            return Err(Error::policy(
                "permissions.request_release",
                "name at least one role (or set release.auto_release_after_hours): nobody \
                 could ever request a release, so held funds could never reach the payees",
            ));
        }
        if p.request_refund.is_empty() && p.cancel.is_empty() {
            return Err(Error::policy(
                "permissions.request_refund",
                "name at least one role here or in permissions.cancel: nobody could refund \
                 or cancel, so held funds could never go back to the payer",
            ));
        }
        if p.request_refund.is_empty() && !matches!(self.refund.approvals, Approvals::None) {
            return Err(Error::policy(
                "permissions.request_refund",
                "name at least one role, or set refund.approvals to none: refunds need \
                 approvals, so a payment holding money is not cancelled \
                 (refund_approvals_required), and with nobody to request a refund held \
                 funds could go back to the payer only through a dispute",
            ));
        }
        if let (Some(opener), true) = (p.dispute.first(), p.resolve.is_empty()) {
            return Err(Error::policy(
                "permissions.resolve",
                format!(
                    "name at least one role: `{opener}` may open a dispute \
                     (permissions.dispute) and nothing leaves escrow until it is resolved, \
                     so a dispute would hold the funds for good"
                ),
            ));
        }
        // A party holds a role it was given when opening the payment or when invited;
        // a role nobody may invite into (permissions.invite empty) can only be the
        // initiator's, and an optional role may stay unheld.
        for (name, roles) in [
            ("request_release", &p.request_release),
            ("request_refund", &p.request_refund),
            ("disburse", &p.disburse),
            ("cancel", &p.cancel),
            ("resolve", &p.resolve),
        ] {
            let unheld = roles.iter().find(|r| {
                p.invite.is_empty() && !self.roles.get(*r).is_some_and(|rule| rule.required)
            });
            if let Some(role) = unheld {
                return Err(Error::policy(
                    format!("permissions.{name}"),
                    format!(
                        "role `{role}` is optional and no role may invite (permissions.invite \
                         is empty): no party but the initiator could ever hold it; make \
                         `{role}` required or name the roles that may invite"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Amount limits that do not contradict each other: a payment the policy allows can
    /// be opened and released.
    fn check_amount_limits(&self) -> Result<()> {
        let max_payment = self.limits.max_payment;
        if let (Some(min), Some(max)) = (self.funding.amount.min, max_payment) {
            if min > max {
                return Err(Error::policy(
                    "funding.amount.min",
                    format!(
                        "{min} is larger than limits.max_payment ({max}): no payment could \
                         be opened"
                    ),
                ));
            }
        }
        let Some(cap) = self.release.max_per_release else {
            return Ok(());
        };
        if self.release.partial {
            return Ok(());
        }
        // The largest payment allowed: both maxima apply when both are set.
        let largest = [
            ("limits.max_payment", max_payment),
            ("funding.amount.max", self.funding.amount.max),
        ]
        .into_iter()
        .filter_map(|(field, v)| v.map(|v| (field, v)))
        .min_by(|a, b| a.1.cmp(&b.1));
        match largest {
            None => Err(Error::policy(
                "release.max_per_release",
                format!(
                    "a release must take everything held (release.partial is false) and at \
                     most {cap}, and no payment maximum is set: a payment above {cap} could \
                     never be released; allow partial releases, remove the cap, or set \
                     limits.max_payment to at most {cap}"
                ),
            )),
            Some((field, max)) if cap < max => Err(Error::policy(
                "release.max_per_release",
                format!(
                    "a release must take everything held (release.partial is false) and at \
                     most {cap}, but payments may reach {max} ({field}): a payment above \
                     {cap} could never be released; allow partial releases or raise the cap \
                     to at least {max}"
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    /// Checks an amount in `currency` against the policy's limits for a payment: an
    /// allowed currency whose minor units every fixed fee fits (`currency_not_allowed`,
    /// `invalid_policy` at `fees[i].fixed`), at most the maxima (`limit_exceeded`), at
    /// least the minimum and more than the fixed fees the first release owes
    /// (`below_minimum`).
    ///
    /// ```
    /// use trustfold_core::money::{Currency, Money};
    /// use trustfold_core::policy::Policy;
    /// let p = Policy::from_json(include_str!("../../examples/policies/milestone-escrow.json"))?;
    /// let usd = Currency::new("USD")?;
    /// // Its escrow fee has a fixed part of 25.00.
    /// let e = p.check_payment_amount(&Money::parse("25.00", usd)?).unwrap_err();
    /// assert_eq!(e.code(), "below_minimum");
    /// assert_eq!(p.check_payment_amount(&Money::parse("25.01", usd)?), Ok(()));
    /// # Ok::<(), trustfold_core::Error>(())
    /// ```
    pub fn check_payment_amount(&self, amount: &Money) -> Result<()> {
        if !self.currencies.is_empty() && !self.currencies.contains(&amount.currency()) {
            return Err(Error::rejected(
                "currency_not_allowed",
                format!(
                    "currency {} is not allowed by policy {} (allowed: {:?})",
                    amount.currency(),
                    self.id,
                    self.currencies
                ),
            ));
        }
        self.fees_payable_in(amount.currency())?;
        let a = amount.amount();
        let over = |lim: Option<Decimal>| lim.is_some_and(|l| a > l);
        if over(self.limits.max_payment) || over(self.funding.amount.max) {
            return Err(Error::rejected(
                "limit_exceeded",
                format!("amount {amount} is over the policy's maximum"),
            ));
        }
        if self.funding.amount.min.is_some_and(|m| a < m) {
            return Err(Error::rejected(
                "below_minimum",
                format!("amount {amount} is under the policy's minimum"),
            ));
        }
        // The first release owes every fixed fee: a payment of no more than their sum
        // could never be released (`fees_exceed_gross` or `insufficient_funds`).
        let fixed = self
            .fees
            .iter()
            .filter_map(|f| f.fixed)
            .try_fold(Decimal::ZERO, |sum, f| sum.checked_add(f));
        if fixed.is_none_or(|sum| sum > Decimal::ZERO && a <= sum) {
            let sum = match fixed {
                Some(sum) => format!("{sum} {}", amount.currency()),
                None => "more than any amount".into(),
            };
            return Err(Error::rejected(
                "below_minimum",
                format!(
                    "amount {amount} does not cover the policy's fixed fees ({sum}), which \
                     the first release owes: open the payment for more than them"
                ),
            ));
        }
        Ok(())
    }

    /// Every fixed fee can be charged in `currency` (a fee of 2.50 cannot be charged
    /// in JPY): otherwise no release of the payment could ever be paid out.
    /// Whether `role`'s view (alone) hides `what`.
    fn hides(&self, role: &Role, what: Hidden) -> bool {
        self.visibility_for(std::slice::from_ref(role))
            .hide
            .contains(&what)
    }

    fn fees_payable_in(&self, currency: Currency) -> Result<()> {
        // Amount bounds are compared with amounts in every listed currency: one with
        // more decimals than a currency has (100.001 USD) could never be met exactly.
        let bounds = [
            ("funding.amount.min", self.funding.amount.min),
            ("funding.amount.max", self.funding.amount.max),
            ("limits.max_payment", self.limits.max_payment),
            ("release.max_per_release", self.release.max_per_release),
        ];
        for (field, bound) in bounds {
            if let Some(v) = bound {
                if Money::from_decimal(v, currency).is_err() {
                    return Err(Error::policy(
                        field,
                        format!(
                            "{v} has more decimals than {currency} allows ({}): amounts are \
                             never rounded",
                            currency.minor_units()
                        ),
                    ));
                }
            }
        }
        for (i, fee) in self.fees.iter().enumerate() {
            if let Some(fixed) = fee.fixed {
                if Money::from_decimal(fixed, currency).is_err() {
                    return Err(Error::policy(
                        format!("fees[{i}].fixed"),
                        format!(
                            "{fixed} has more decimals than {currency} allows ({})",
                            currency.minor_units()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn known(&self, field: &str, role: &Role) -> Result<()> {
        if self.roles.contains_key(role) {
            Ok(())
        } else {
            Err(Error::policy(
                field,
                format!("unknown role `{role}`: define it under `roles` first"),
            ))
        }
    }

    /// Every role known; the field name is only built on error.
    fn known_all(&self, field: &dyn Fn() -> String, roles: &[Role]) -> Result<()> {
        match roles.iter().find(|r| !self.roles.contains_key(*r)) {
            None => Ok(()),
            Some(r) => self.known(&field(), r),
        }
    }

    fn check_approvals(&self, field: &str, a: &Approvals) -> Result<()> {
        match a {
            Approvals::None => Ok(()),
            Approvals::AllOf(roles) => {
                if roles.is_empty() {
                    return Err(Error::policy(
                        format!("{field}.all_of"),
                        "name at least one role (or use \"none\")",
                    ));
                }
                // Each entry needs a party of its own, found by a search as deep as
                // the list is long: bounded, so no history can exhaust a verifier's stack.
                if roles.len() > MAX_ALL_OF {
                    return Err(Error::policy(
                        format!("{field}.all_of"),
                        format!(
                            "at most {MAX_ALL_OF} approvals can be required by name ({} listed): \
                             use n_of for larger groups",
                            roles.len()
                        ),
                    ));
                }
                self.known_all(&|| format!("{field}.all_of"), roles)
            }
            Approvals::NOf { n, roles } => {
                let f = format!("{field}.n_of");
                self.known_all(&|| format!("{f}.roles"), roles)?;
                if *n == 0 {
                    return Err(Error::policy(format!("{f}.n"), "must be 1 or more"));
                }
                let distinct: SortedSet<&Role> = roles.iter().collect();
                let capacity: Option<u64> = distinct.iter().try_fold(0u64, |acc, r| {
                    self.roles
                        .get(*r)
                        .and_then(|rule| rule.max)
                        .map(|m| acc + u64::from(m))
                });
                if let Some(cap) = capacity {
                    if u64::from(*n) > cap {
                        return Err(Error::policy(
                            format!("{f}.n"),
                            format!(
                                "impossible quorum: {n} approvals needed but at most {cap} parties can hold these roles"
                            ),
                        ));
                    }
                }
                Ok(())
            }
        }
    }
}

/// Free text of a policy: at most [`TEXT_MAX`] characters, under the commands' rule for
/// characters ([`text_char_allowed`]: no control or bidirectional control character; line
/// breaks and tabs in descriptions only, `multiline`). The policy is embedded in every
/// payment's first event, so its text reaches every participant's screen.
fn bounded(field: &str, text: &str, multiline: bool) -> Result<()> {
    if text.chars().count() > TEXT_MAX {
        return Err(Error::policy(
            field,
            format!("at most {TEXT_MAX} characters"),
        ));
    }
    let max = if multiline { TEXT_MAX } else { NAME_MAX };
    if let Some((at, c)) = text
        .chars()
        .enumerate()
        .find(|(_, c)| !text_char_allowed(*c, max))
    {
        let kind = if c.is_control() {
            "control"
        } else {
            "bidirectional control"
        };
        return Err(Error::policy(
            field,
            format!(
                "contains the {kind} character U+{:04X} at character {}: remove it",
                u32::from(c),
                at + 1
            ),
        ));
    }
    Ok(())
}

fn positive(field: &str, v: Option<Decimal>) -> Result<()> {
    match v {
        Some(d) if d <= Decimal::ZERO => Err(Error::policy(field, "must be positive")),
        _ => Ok(()),
    }
}

/// Optional decimals as JSON strings.
mod opt_dec {
    use rust_decimal::Decimal;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.collect_str(&d.normalize()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        match s {
            None => Ok(None),
            Some(s) => crate::money::parse_decimal(&s)
                .map(Some)
                .map_err(|e| D::Error::custom(crate::money::tagged(&e))),
        }
    }
}
