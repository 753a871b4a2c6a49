//! Policies in the core's own JSON codec. Reading: the same policies, and errors with
//! the same codes, as the derived `Deserialize` (which stays for serde callers;
//! `core/tests/properties.rs` compares the two on mutated policies); [`Policy::from_json`],
//! embedded policies and `Initiate` commands read policies through [`parse`]. Writing:
//! the canonical JSON that [`Policy::hash`] covers, byte for byte what the derived
//! `Serialize` writes (compared on the examples and on every mutated policy that
//! parses).

use rust_decimal::Decimal;

use crate::error::Result;
use crate::json::read::{once, Fault, FromJson, Read, Reader, Reject, Seg};
use crate::map::{SortedMap, SortedSet};
use crate::money::Currency;
use crate::policy::{
    AmountRule, Approvals, DeadlineRule, EventFilter, FeeRule, FundingRules, Hidden, Limits,
    Permissions, Policy, Rail, RefundRules, ReleaseRules, Role, RoleRule, Visibility,
};

/// Parses a policy from JSON bytes (the value, then nothing but whitespace). Errors
/// are the reader's, the first in document order (as serde_json reports a struct's):
/// `malformed_json` for the shape, a value's own code otherwise.
pub(crate) fn parse(json: &[u8]) -> Result<Policy> {
    read(json).map_err(|rejected| rejected.into_error(json))
}

/// The policy, then nothing but whitespace.
fn read(json: &[u8]) -> Read<Policy> {
    let mut r = Reader::new(json, None);
    <Policy as FromJson>::from_json(&mut r).and_then(|p| r.end().map(|()| p))
}

/// [`parse`] for a policy document on its own ([`Policy::from_json`]): a shape error
/// is `invalid_policy` at the field it is about (`fees[1].bps`), with the same
/// message; a value's own error (an unknown currency…) keeps its code.
pub(crate) fn parse_document(json: &[u8]) -> Result<Policy> {
    read(json).map_err(|rejected| {
        let path = rejected.path();
        match rejected.into_error(json) {
            crate::Error::MalformedJson(m) => crate::Error::policy(path, m),
            other => other,
        }
    })
}

/// Implements [`FromJson`] for a struct read like its derived `Deserialize` with
/// `deny_unknown_fields` (see [`read_members!`](crate::json::read::read_members)).
macro_rules! read_struct {
    ($name:ident { $($body:tt)* }) => {
        impl FromJson for $name {
            fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
                crate::json::read::read_members!(r, $name { $($body)* })
            }
        }
    };
}

read_struct!(RoleRule { required: bool [default], max: Option<u32> [default], description: String [default] });
read_struct!(DeadlineRule {
    anchor: crate::policy::DeadlineAnchor,
    days: u32,
    business_days: bool[default]
});
read_struct!(FundingRules {
    amount: AmountRule [default],
    rails: Vec<Rail>,
    deadline: Option<DeadlineRule> [default],
    on_deadline_missed: crate::policy::OnDeadlineMissed [default],
    good_funds_days: SortedMap<Rail, u32> [default],
    max_attempts: u32 [default = crate::policy::default_attempts],
    allow_partial: bool [default],
    holidays: Vec<crate::time::Date> [default],
});
read_struct!(ReleaseRules {
    approvals: Approvals [default],
    partial: bool [default],
    auto_release_after_hours: Option<u32> [default],
    max_per_release: Option<Decimal> [default],
});
read_struct!(RefundRules {
    approvals: Approvals[default]
});
read_struct!(FeeRule {
    name: String,
    to_role: Role,
    bps: u32 [default],
    fixed: Option<Decimal> [default],
    borne_by: crate::policy::BorneBy [default],
});
read_struct!(Permissions {
    invite: Vec<Role> [default],
    fund: Vec<Role> [default],
    request_release: Vec<Role> [default],
    request_refund: Vec<Role> [default],
    disburse: Vec<Role> [default],
    cancel: Vec<Role> [default],
    dispute: Vec<Role> [default],
    resolve: Vec<Role> [default],
    administer: Vec<Role> [default],
});
read_struct!(Visibility { events: EventFilter [default], hide: SortedSet<Hidden> [default] });
read_struct!(Limits { max_payment: Option<Decimal> [default] });
read_struct!(AmountRule { min: Option<Decimal> [default], max: Option<Decimal> [default] });
read_struct!(Policy {
    id: String,
    version: u32,
    name: String [default],
    currencies: Vec<Currency> [default],
    roles: SortedMap<Role, RoleRule>,
    payer_role: Role,
    payee_roles: Vec<Role>,
    agreement: Vec<Role> [default],
    funding: FundingRules [default = crate::policy::default_funding],
    release: ReleaseRules [default],
    refund: RefundRules [default],
    fees: Vec<FeeRule> [default],
    limits: Limits [default],
    permissions: Permissions [default],
    visibility: SortedMap<Role, Visibility> [default],
    notifications: SortedMap<String, Vec<Role>> [default],
});

/// A decimal written as a string (the policy's `opt_dec` fields; `null` reads as
/// `None` through the `Option` reader).
impl FromJson for Decimal {
    fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
        r.ws();
        let at = r.position();
        let s = r.str()?;
        crate::money::parse_decimal(&s).map_err(|e| r.invalid(at, e))
    }
}

impl FromJson for bool {
    fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
        r.boolean()
    }
}

/// The value of a one-member object `{"variant": value}` or of a string `"variant"`
/// (serde's externally tagged enums): the variant's index in `names` and whether a
/// value follows (the reader is then at it, and `close` must be called after it).
fn external_tag(r: &mut Reader<'_, '_>, names: &'static [&'static str]) -> Read<(usize, bool)> {
    r.ws();
    if r.peek_byte() == Some(b'"') {
        return crate::json::read::variant(r, names).map(|i| (i, false));
    }
    r.open_object()?;
    let i = crate::json::read::variant(r, names)?;
    r.colon()?;
    Ok((i, true))
}

/// After an externally tagged enum's value: its object ends.
fn close(r: &mut Reader<'_, '_>) -> Read<()> {
    r.close_object()
}

impl FromJson for Approvals {
    fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
        const NAMES: &[&str] = &["none", "all_of", "n_of"];
        let (i, value) = external_tag(r, NAMES)?;
        let approvals = match (i, value) {
            (0, false) => Approvals::None,
            (0, true) => {
                if !r.null()? {
                    return Err(r.fault(Fault::Syntax("invalid type, expected unit variant")));
                }
                Approvals::None
            }
            (_, false) => return Err(r.fault(Fault::Syntax("expected a map with one member"))),
            (1, true) => Approvals::AllOf(Vec::from_json(r)?),
            (_, true) => {
                const FIELDS: &[&str] = &["n", "roles"];
                let mut n: Option<u32> = None;
                let mut roles: Option<Vec<Role>> = None;
                r.object(FIELDS, &mut |r, k| match k {
                    0 => once(&mut n, r, "n"),
                    _ => once(&mut roles, r, "roles"),
                })?;
                Approvals::NOf {
                    n: n.ok_or_else(|| r.fault(Fault::MissingField("n")))?,
                    roles: roles.ok_or_else(|| r.fault(Fault::MissingField("roles")))?,
                }
            }
        };
        if value {
            close(r)?;
        }
        Ok(approvals)
    }
}

impl FromJson for EventFilter {
    fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
        const NAMES: &[&str] = &["all", "only"];
        let (i, value) = external_tag(r, NAMES)?;
        let filter = match (i, value) {
            (0, false) => EventFilter::All,
            (0, true) => {
                if !r.null()? {
                    return Err(r.fault(Fault::Syntax("invalid type, expected unit variant")));
                }
                EventFilter::All
            }
            (_, false) => return Err(r.fault(Fault::Syntax("expected a map with one member"))),
            (_, true) => EventFilter::Only(SortedSet::from_json(r)?),
        };
        if value {
            close(r)?;
        }
        Ok(filter)
    }
}

/// A map key: the key's string, read into the key type.
pub(crate) trait FromJsonKey: Sized {
    /// The key from its string; `at` is where the key starts.
    fn from_key(r: &Reader<'_, '_>, at: usize, key: &str) -> Read<Self>;
}

impl FromJsonKey for String {
    fn from_key(_: &Reader<'_, '_>, _: usize, key: &str) -> Read<Self> {
        Ok(key.to_string())
    }
}

impl FromJsonKey for Role {
    fn from_key(_: &Reader<'_, '_>, _: usize, key: &str) -> Read<Self> {
        Ok(Role::new(key))
    }
}

impl FromJsonKey for Rail {
    fn from_key(_: &Reader<'_, '_>, at: usize, key: &str) -> Read<Self> {
        const NAMES: &[&str] = &["ach", "wire", "rtp", "card", "book"];
        const VALUES: &[Rail] = &[Rail::Ach, Rail::Wire, Rail::Rtp, Rail::Card, Rail::Book];
        NAMES
            .iter()
            .position(|n| *n == key)
            .and_then(|i| VALUES.get(i).copied())
            .ok_or_else(|| Reject::new(at, Fault::UnknownVariant(key.into(), NAMES)))
    }
}

/// A JSON object into a sorted map; a repeated key keeps its last value (as serde's
/// map decoding inserts each entry).
impl<K: FromJsonKey + Ord, V: FromJson> FromJson for SortedMap<K, V> {
    fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
        let mut m = SortedMap::new();
        r.entries(&mut |r, at, key| {
            let entry = K::from_key(r, at, key).and_then(|k| Ok((k, V::from_json(r)?)));
            let (k, v) = entry.map_err(|e| e.within(Seg::Key(key.into())))?;
            m.insert(k, v);
            Ok(())
        })?;
        Ok(m)
    }
}

/// A JSON array into a sorted set; repeats are kept once.
impl<T: FromJson + Ord> FromJson for SortedSet<T> {
    fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
        let items = r.array(T::from_json)?;
        let mut s = SortedSet::new();
        for x in items {
            s.insert(x);
        }
        Ok(s)
    }
}

// ---- writing ---------------------------------------------------------------------

use crate::json::write::{key, opt, WriteJson};

/// An `opt_dec` field: skipped when `None`, else the normalized decimal as a string.
fn dec(out: &mut Vec<u8>, name: &str, v: &Option<Decimal>) {
    if let Some(d) = v {
        key(out, name);
        out.push(b'"');
        crate::json::write::decimal(out, &d.normalize());
        out.push(b'"');
    }
}

/// A member always written.
fn member<T: WriteJson + ?Sized>(out: &mut Vec<u8>, name: &str, v: &T) {
    key(out, name);
    v.write_json(out);
}

impl WriteJson for RoleRule {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        member(out, "required", &self.required);
        opt(out, "max", &self.max);
        if !self.description.is_empty() {
            member(out, "description", &self.description);
        }
        out.push(b'}');
    }
}

impl WriteJson for Approvals {
    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Approvals::None => out.extend_from_slice(b"\"none\""),
            Approvals::AllOf(roles) => {
                out.push(b'{');
                member(out, "all_of", roles);
                out.push(b'}');
            }
            Approvals::NOf { n, roles } => {
                out.push(b'{');
                key(out, "n_of");
                out.push(b'{');
                member(out, "n", n);
                member(out, "roles", roles);
                out.extend_from_slice(b"}}");
            }
        }
    }
}

impl WriteJson for AmountRule {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        dec(out, "min", &self.min);
        dec(out, "max", &self.max);
        out.push(b'}');
    }
}

impl WriteJson for DeadlineRule {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        member(out, "anchor", &self.anchor);
        member(out, "days", &self.days);
        member(out, "business_days", &self.business_days);
        out.push(b'}');
    }
}

impl WriteJson for FundingRules {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        member(out, "amount", &self.amount);
        member(out, "rails", &self.rails);
        opt(out, "deadline", &self.deadline);
        member(out, "on_deadline_missed", &self.on_deadline_missed);
        if !self.good_funds_days.is_empty() {
            member(out, "good_funds_days", &self.good_funds_days);
        }
        member(out, "max_attempts", &self.max_attempts);
        member(out, "allow_partial", &self.allow_partial);
        if !self.holidays.is_empty() {
            member(out, "holidays", &self.holidays);
        }
        out.push(b'}');
    }
}

impl WriteJson for ReleaseRules {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        member(out, "approvals", &self.approvals);
        member(out, "partial", &self.partial);
        opt(
            out,
            "auto_release_after_hours",
            &self.auto_release_after_hours,
        );
        dec(out, "max_per_release", &self.max_per_release);
        out.push(b'}');
    }
}

impl WriteJson for RefundRules {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        member(out, "approvals", &self.approvals);
        out.push(b'}');
    }
}

impl WriteJson for FeeRule {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        member(out, "name", &self.name);
        member(out, "to_role", &self.to_role);
        member(out, "bps", &self.bps);
        dec(out, "fixed", &self.fixed);
        member(out, "borne_by", &self.borne_by);
        out.push(b'}');
    }
}

impl WriteJson for Permissions {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        member(out, "invite", &self.invite);
        member(out, "fund", &self.fund);
        member(out, "request_release", &self.request_release);
        member(out, "request_refund", &self.request_refund);
        member(out, "disburse", &self.disburse);
        member(out, "cancel", &self.cancel);
        member(out, "dispute", &self.dispute);
        member(out, "resolve", &self.resolve);
        member(out, "administer", &self.administer);
        out.push(b'}');
    }
}

impl WriteJson for EventFilter {
    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            EventFilter::All => out.extend_from_slice(b"\"all\""),
            EventFilter::Only(types) => {
                out.push(b'{');
                member(out, "only", types);
                out.push(b'}');
            }
        }
    }
}

impl WriteJson for Visibility {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        member(out, "events", &self.events);
        member(out, "hide", &self.hide);
        out.push(b'}');
    }
}

impl WriteJson for Limits {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        dec(out, "max_payment", &self.max_payment);
        out.push(b'}');
    }
}

impl WriteJson for Policy {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        member(out, "id", &self.id);
        member(out, "version", &self.version);
        if !self.name.is_empty() {
            member(out, "name", &self.name);
        }
        if !self.currencies.is_empty() {
            member(out, "currencies", &self.currencies);
        }
        member(out, "roles", &self.roles);
        member(out, "payer_role", &self.payer_role);
        member(out, "payee_roles", &self.payee_roles);
        member(out, "agreement", &self.agreement);
        member(out, "funding", &self.funding);
        member(out, "release", &self.release);
        member(out, "refund", &self.refund);
        if !self.fees.is_empty() {
            member(out, "fees", &self.fees);
        }
        member(out, "limits", &self.limits);
        member(out, "permissions", &self.permissions);
        if !self.visibility.is_empty() {
            member(out, "visibility", &self.visibility);
        }
        if !self.notifications.is_empty() {
            member(out, "notifications", &self.notifications);
        }
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example policies read as serde reads them.
    #[test]
    fn examples_read_as_serde_reads_them() {
        for text in [
            include_str!("../../examples/policies/marketplace.json"),
            include_str!("../../examples/policies/milestone-escrow.json"),
        ] {
            let ours = parse(text.as_bytes()).unwrap();
            let theirs: Policy = serde_json::from_str(text).unwrap();
            assert_eq!(ours, theirs);
            let mut written = Vec::new();
            ours.write_json(&mut written);
            assert_eq!(
                String::from_utf8(written).unwrap(),
                serde_json::to_string(&theirs).unwrap()
            );
        }
    }
}
