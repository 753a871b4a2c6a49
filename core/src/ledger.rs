//! The per-payment double-entry ledger of two-phase legs.
//!
//! Money moves in **legs**: one amount from one account to another. A leg is
//! *pending* (reserved: the source cannot spend it, the destination cannot use it yet)
//! until it is *posted* (done) or *voided* (undone), each exactly once, like
//! TigerBeetle's two-phase transfers. Legs are never edited: a correction is a new,
//! reversing leg. Balances are derived from the legs.
//!
//! Accounts of one payment:
//!
//! | account | holds |
//! |---|---|
//! | `external:payer` | the payer's bank, outside trustfold (goes negative as it pays in) |
//! | `clearing` | settled funds not yet good (the good-funds delay) |
//! | `escrow` | funds held in the escrow holder's trust account |
//! | `payee:<party>` | funds paid out to a payee |
//! | `fee:<party>` | fees paid out |
//! | `loss:returns` | shortfalls from late returns: the only internal account that may go negative |
//! | `external:recovery` | money recovered from someone to cover a shortfall |
//! | `external:platform` | the platform absorbing a written-off shortfall |
//!
//! Invariants kept by [`Ledger`]: every leg moves one amount between two distinct
//! accounts, so the sum of all balances is always zero; a pending leg resolves once;
//! no internal account other than `loss:returns` goes below zero, counting pending
//! outflows (so releases draw only on available funds).
//!
//! ```
//! use trustfold_core::ledger::{Account, Ledger};
//! use trustfold_core::money::{Currency, Money};
//! use trustfold_core::id::LegId;
//! let usd = Currency::new("USD")?;
//! let mut l = Ledger::new(usd);
//! let leg = LegId::from_bytes([1; 16]);
//! l.open(leg, Account::ExternalPayer, Account::Clearing, Money::parse("10", usd)?, None, 1)?;
//! assert_eq!(l.balance(&Account::Clearing).pending_in.to_string(), "10.00 USD");
//! l.post(leg, 2)?;
//! assert_eq!(l.balance(&Account::Clearing).posted.to_string(), "10.00 USD");
//! assert!(l.post(leg, 3).is_err()); // resolves once
//! # Ok::<(), trustfold_core::Error>(())
//! ```

use std::fmt;
use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::de::unit_enum_de;
use crate::error::{Error, Result};
use crate::id::{LegId, PartyId, RequestId};
use crate::json::write::{self, WriteJson};
use crate::map::SortedMap;
use crate::money::{Currency, Money};

/// A ledger account of one payment.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Account {
    /// The payer's bank, outside trustfold.
    ExternalPayer,
    /// Settled but not yet available funds.
    Clearing,
    /// Funds held in escrow.
    Escrow,
    /// Paid out to a payee.
    Payee(PartyId),
    /// Fees paid out to a party.
    Fee(PartyId),
    /// Shortfalls from late returns.
    LossReturns,
    /// Recoveries of shortfalls, from outside.
    ExternalRecovery,
    /// The platform absorbing written-off shortfalls.
    ExternalPlatform,
}

impl Account {
    /// True for accounts outside trustfold, whose balances may be negative.
    pub fn is_external(&self) -> bool {
        matches!(
            self,
            Account::ExternalPayer | Account::ExternalRecovery | Account::ExternalPlatform
        )
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Account::ExternalPayer => f.write_str("external:payer"),
            Account::Clearing => f.write_str("clearing"),
            Account::Escrow => f.write_str("escrow"),
            Account::Payee(p) => write!(f, "payee:{p}"),
            Account::Fee(p) => write!(f, "fee:{p}"),
            Account::LossReturns => f.write_str("loss:returns"),
            Account::ExternalRecovery => f.write_str("external:recovery"),
            Account::ExternalPlatform => f.write_str("external:platform"),
        }
    }
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Account {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "external:payer" => Account::ExternalPayer,
            "clearing" => Account::Clearing,
            "escrow" => Account::Escrow,
            "loss:returns" => Account::LossReturns,
            "external:recovery" => Account::ExternalRecovery,
            "external:platform" => Account::ExternalPlatform,
            _ => {
                if let Some(p) = s.strip_prefix("payee:") {
                    Account::Payee(p.parse()?)
                } else if let Some(p) = s.strip_prefix("fee:") {
                    Account::Fee(p.parse()?)
                } else {
                    return Err(Error::MalformedJson(format!("unknown account `{s}`")));
                }
            }
        })
    }
}

impl Serialize for Account {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Account {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s: std::borrow::Cow<'de, str> = std::borrow::Cow::deserialize(d)?;
        s.parse()
            .map_err(|e: Error| D::Error::custom(e.to_string()))
    }
}

/// Where a leg is in its two phases.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LegStatus {
    /// Reserved, not yet done.
    Pending,
    /// Done.
    Posted,
    /// Undone.
    Voided,
}
unit_enum_de!(LegStatus { Pending = "pending", Posted = "posted", Voided = "voided" });

/// One transfer between two accounts.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct Leg {
    /// The leg's id.
    pub id: LegId,
    /// Debited account.
    pub from: Account,
    /// Credited account.
    pub to: Account,
    /// Amount moved.
    pub amount: Money,
    /// Phase.
    pub status: LegStatus,
    /// The release or refund request whose linked group this leg belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<RequestId>,
    /// The event that opened it.
    pub opened_seq: u64,
    /// The event that posted or voided it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_seq: Option<u64>,
}

/// An account's balance: posted (credits − debits) and pending amounts.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
pub struct Balance {
    /// Posted credits minus posted debits.
    pub posted: Money,
    /// Pending credits.
    pub pending_in: Money,
    /// Pending debits.
    pub pending_out: Money,
}

impl Balance {
    fn zero(c: Currency) -> Self {
        Balance {
            posted: Money::zero(c),
            pending_in: Money::zero(c),
            pending_out: Money::zero(c),
        }
    }

    /// What can still be spent: posted minus pending debits.
    pub fn available(&self) -> Money {
        self.posted
            .checked_sub(&self.pending_out)
            .unwrap_or(self.posted)
    }
}

/// All legs of one payment and the balances they make.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct Ledger {
    #[serde(skip)]
    currency: Currency,
    /// Legs in the order they were opened.
    pub legs: Vec<Leg>,
    /// Balances by account (only accounts that ever moved).
    pub balances: SortedMap<Account, Balance>,
}

impl Ledger {
    /// An empty ledger in one currency.
    pub fn new(currency: Currency) -> Self {
        Ledger {
            currency,
            legs: Vec::new(),
            balances: SortedMap::new(),
        }
    }

    /// The ledger's currency.
    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// The balance of an account (zero if it never moved).
    pub fn balance(&self, a: &Account) -> Balance {
        self.balances
            .get(a)
            .copied()
            .unwrap_or_else(|| Balance::zero(self.currency))
    }

    /// Posted minus pending outflows of an account.
    pub fn available(&self, a: &Account) -> Money {
        self.balance(a).available()
    }

    /// A leg by id.
    pub fn leg(&self, id: LegId) -> Option<&Leg> {
        self.legs.iter().find(|l| l.id == id)
    }

    fn entry(&mut self, a: Account) -> &mut Balance {
        let c = self.currency;
        self.balances.entry(a).or_insert_with(|| Balance::zero(c))
    }

    fn check(&self, a: &Account) -> Result<()> {
        if a.is_external() || *a == Account::LossReturns {
            return Ok(());
        }
        let b = self.balance(a);
        if b.available().amount().is_sign_negative() && !b.available().is_zero() {
            return Err(Error::rejected(
                "insufficient_funds",
                format!(
                    "{a} would go below zero: {} posted, {} pending out",
                    b.posted, b.pending_out
                ),
            ));
        }
        Ok(())
    }

    /// Opens a pending leg. Fails (changing nothing) if the id exists, the amount is
    /// not positive or in another currency, or the source would go below zero.
    pub fn open(
        &mut self,
        id: LegId,
        from: Account,
        to: Account,
        amount: Money,
        group: Option<RequestId>,
        seq: u64,
    ) -> Result<()> {
        self.validate_new(id, from, to, &amount)?;
        let before = self.clone_balances(&[from, to]);
        let out = self.entry(from);
        out.pending_out = out.pending_out.checked_add(&amount)?;
        let inn = self.entry(to);
        inn.pending_in = inn.pending_in.checked_add(&amount)?;
        if let Err(e) = self.check(&from) {
            self.restore(before);
            return Err(e);
        }
        self.legs.push(Leg {
            id,
            from,
            to,
            amount,
            status: LegStatus::Pending,
            group,
            opened_seq: seq,
            resolved_seq: None,
        });
        Ok(())
    }

    /// Opens and posts a leg in one step.
    pub fn transfer(
        &mut self,
        id: LegId,
        from: Account,
        to: Account,
        amount: Money,
        group: Option<RequestId>,
        seq: u64,
    ) -> Result<()> {
        self.open(id, from, to, amount, group, seq)?;
        self.post(id, seq)
    }

    /// Posts a pending leg.
    pub fn post(&mut self, id: LegId, seq: u64) -> Result<()> {
        self.resolve(id, seq, LegStatus::Posted)
    }

    /// Voids a pending leg.
    pub fn void(&mut self, id: LegId, seq: u64) -> Result<()> {
        self.resolve(id, seq, LegStatus::Voided)
    }

    fn resolve(&mut self, id: LegId, seq: u64, to_status: LegStatus) -> Result<()> {
        let idx = self
            .legs
            .iter()
            .position(|l| l.id == id)
            .ok_or_else(|| Error::rejected("unknown_leg", format!("no leg {id}")))?;
        let leg = self.legs[idx].clone();
        if leg.status != LegStatus::Pending {
            return Err(Error::rejected(
                "leg_already_resolved",
                format!("leg {id} is already {:?}", leg.status).to_lowercase(),
            ));
        }
        let out = self.entry(leg.from);
        out.pending_out = out.pending_out.checked_sub(&leg.amount)?;
        if to_status == LegStatus::Posted {
            out.posted = out.posted.checked_sub(&leg.amount)?;
        }
        let inn = self.entry(leg.to);
        inn.pending_in = inn.pending_in.checked_sub(&leg.amount)?;
        if to_status == LegStatus::Posted {
            inn.posted = inn.posted.checked_add(&leg.amount)?;
        }
        let l = &mut self.legs[idx];
        l.status = to_status;
        l.resolved_seq = Some(seq);
        Ok(())
    }

    fn validate_new(&self, id: LegId, from: Account, to: Account, amount: &Money) -> Result<()> {
        if self.legs.iter().any(|l| l.id == id) {
            return Err(Error::rejected("duplicate_leg", format!("leg {id} exists")));
        }
        if from == to {
            return Err(Error::rejected(
                "invalid_leg",
                "a leg needs two distinct accounts",
            ));
        }
        if amount.currency() != self.currency {
            return Err(Error::CurrencyMismatch {
                expected: self.currency,
                found: amount.currency(),
            });
        }
        if !amount.is_positive() {
            return Err(Error::NonPositiveAmount(amount.amount_string()));
        }
        Ok(())
    }

    fn clone_balances(&self, accts: &[Account]) -> Vec<(Account, Option<Balance>)> {
        accts
            .iter()
            .map(|a| (*a, self.balances.get(a).copied()))
            .collect()
    }

    fn restore(&mut self, saved: Vec<(Account, Option<Balance>)>) {
        for (a, b) in saved {
            match b {
                Some(b) => {
                    self.balances.insert(a, b);
                }
                None => {
                    self.balances.remove(&a);
                }
            }
        }
    }

    /// Sum of posted balances over all accounts: always zero.
    pub fn posted_sum(&self) -> Result<Money> {
        self.balances
            .values()
            .try_fold(Money::zero(self.currency), |acc, b| {
                acc.checked_add(&b.posted)
            })
    }
}

// ---------------------------------------------------------------------------
// Canonical JSON: the core's writer, member for member what the serde impls above
// write (see `PaymentState::to_json`).
// ---------------------------------------------------------------------------

/// Its `Display` form as a string (`"escrow"`, `"payee:<uuid>"`), as `collect_str`
/// writes it; none of its characters needs escaping.
impl WriteJson for Account {
    fn write_json(&self, out: &mut Vec<u8>) {
        let (prefix, party) = match self {
            Account::ExternalPayer => ("external:payer", None),
            Account::Clearing => ("clearing", None),
            Account::Escrow => ("escrow", None),
            Account::Payee(p) => ("payee:", Some(p)),
            Account::Fee(p) => ("fee:", Some(p)),
            Account::LossReturns => ("loss:returns", None),
            Account::ExternalRecovery => ("external:recovery", None),
            Account::ExternalPlatform => ("external:platform", None),
        };
        out.push(b'"');
        out.extend_from_slice(prefix.as_bytes());
        if let Some(p) = party {
            write::uuid(out, &p.0);
        }
        out.push(b'"');
    }
}

impl WriteJson for Leg {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        write::key(out, "id");
        self.id.write_json(out);
        write::key(out, "from");
        self.from.write_json(out);
        write::key(out, "to");
        self.to.write_json(out);
        write::key(out, "amount");
        self.amount.write_json(out);
        write::key(out, "status");
        self.status.write_json(out);
        write::opt(out, "group", &self.group);
        write::key(out, "opened_seq");
        write::uint(out, self.opened_seq);
        write::opt(out, "resolved_seq", &self.resolved_seq);
        out.push(b'}');
    }
}

impl WriteJson for Balance {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        write::key(out, "posted");
        self.posted.write_json(out);
        write::key(out, "pending_in");
        self.pending_in.write_json(out);
        write::key(out, "pending_out");
        self.pending_out.write_json(out);
        out.push(b'}');
    }
}

impl WriteJson for Ledger {
    fn write_json(&self, out: &mut Vec<u8>) {
        // `currency` is `#[serde(skip)]`.
        out.push(b'{');
        write::key(out, "legs");
        self.legs.write_json(out);
        write::key(out, "balances");
        self.balances.write_json(out);
        out.push(b'}');
    }
}
