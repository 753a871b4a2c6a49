//! Decoding a command from JSON bytes without serde's buffering of internally tagged
//! enums (`Content`): one pass reads only the `type`, a second decodes that variant's
//! fields straight from the bytes. Same results, codes and messages as the derived
//! `Deserialize` of [`Command`] (which stays, for callers with other deserializers),
//! but much less code in the WebAssembly module and no intermediate tree.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::StrDeserializer;
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, Error as _, IgnoredAny, IntoDeserializer,
    MapAccess, SeqAccess, VariantAccess, Visitor,
};
use serde::Deserialize;

use crate::command::{Command, RailOutcome};
use crate::event::{Allocation, DisputeOutcome, FundingMethod};
use crate::hash::Hash;
use crate::id::{LegId, PartyId, PaymentId, RequestId, TenantId};
use crate::money::Money;
use crate::policy::{Policy, Rail, Role};

/// Names of the command types, in declaration order (as serde lists them).
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

/// Parses a command from JSON bytes.
pub(crate) fn from_slice(json: &[u8]) -> Result<Command, serde_json::Error> {
    // Pass 1: the type (and the syntax of the value; trailing characters are reported
    // after the fields, as `serde_json::from_slice` does).
    let mut de = serde_json::Deserializer::from_slice(json);
    let kind: &'static str = de.deserialize_any(TypeVisitor)?;
    let end = de.end();
    // Pass 2: that variant's fields. The derived decoder reports these errors without
    // a position (it decodes from a buffer after reading the document): so do we.
    let mut de = serde_json::Deserializer::from_slice(json);
    let cmd = CommandWire::deserialize(Body { kind, de: &mut de }).map_err(|e| {
        if e.line() == 0 {
            return e;
        }
        let text = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        serde_json::Error::custom(text.strip_suffix(&suffix).unwrap_or(&text))
    })?;
    end.map(|()| cmd)
}

/// Pass 1: finds `type` (exactly once), skipping every other value.
struct TypeVisitor;

impl<'de> Visitor<'de> for TypeVisitor {
    type Value = &'static str;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("internally tagged enum Command")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<&'static str, A::Error> {
        let mut kind = None;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Type => {
                    if kind.is_some() {
                        return Err(A::Error::duplicate_field("type"));
                    }
                    kind = Some(map.next_value::<KindName>()?.0);
                }
                Key::Other => {
                    map.next_value::<Discard>()?;
                }
            }
        }
        kind.ok_or_else(|| A::Error::missing_field("type"))
    }

    /// The sequence form serde also accepts: `["Type", field values in order…]`.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<&'static str, A::Error> {
        let kind = seq
            .next_element::<KindName>()?
            .ok_or_else(|| A::Error::missing_field("type"))?;
        while seq.next_element::<Discard>()?.is_some() {}
        Ok(kind.0)
    }
}

/// Any value, parsed as the derived decoder's buffer parses it (so syntax errors are
/// reported at the same place) and dropped.
struct Discard;

impl<'de> Deserialize<'de> for Discard {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DiscardVisitor)
    }
}

struct DiscardVisitor;

impl<'de> Visitor<'de> for DiscardVisitor {
    type Value = Discard;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Discard, E> {
        Ok(Discard)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Discard, E> {
        Ok(Discard)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Discard, E> {
        Ok(Discard)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Discard, E> {
        Ok(Discard)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Discard, E> {
        Ok(Discard)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Discard, E> {
        Ok(Discard)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Discard, A::Error> {
        while seq.next_element::<Discard>()?.is_some() {}
        Ok(Discard)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Discard, A::Error> {
        while map.next_entry::<Discard, Discard>()?.is_some() {}
        Ok(Discard)
    }
}

enum Key {
    Type,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key, E> {
                Ok(if s == "type" { Key::Type } else { Key::Other })
            }
        }
        d.deserialize_identifier(V)
    }
}

/// A command type's name, checked against [`VARIANTS`].
struct KindName(&'static str);

impl<'de> Deserialize<'de> for KindName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = KindName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("variant identifier")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<KindName, E> {
                VARIANTS
                    .iter()
                    .find(|v| **v == s)
                    .map(|v| KindName(v))
                    .ok_or_else(|| E::unknown_variant(s, VARIANTS))
            }
        }
        d.deserialize_identifier(V)
    }
}

/// Pass 2: presents `{"type":"X", fields…}` to the derived decoder of an externally
/// tagged mirror of [`Command`] as variant `X` with `fields…` (`type` skipped).
struct Body<D> {
    kind: &'static str,
    de: D,
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Body<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _v: V) -> Result<V::Value, D::Error> {
        Err(D::Error::custom("a command is decoded as an enum"))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, D::Error> {
        v.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

impl<'de, D: Deserializer<'de>> EnumAccess<'de> for Body<D> {
    type Error = D::Error;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Self), D::Error> {
        let name: StrDeserializer<'_, D::Error> = self.kind.into_deserializer();
        Ok((seed.deserialize(name)?, self))
    }
}

impl<'de, D: Deserializer<'de>> VariantAccess<'de> for Body<D> {
    type Error = D::Error;

    fn unit_variant(self) -> Result<(), D::Error> {
        self.de.deserialize_any(UnitFields)
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, _s: S) -> Result<S::Value, D::Error> {
        Err(D::Error::custom("no newtype variants"))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _v: V) -> Result<V::Value, D::Error> {
        Err(D::Error::custom("no tuple variants"))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_any(SkipType(v))
    }
}

/// The rest of a command without fields: ignored, as the derived decoder does.
struct UnitFields;

impl<'de> Visitor<'de> for UnitFields {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a command")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

/// Any key, kept to name it in an error.
struct Field0(String);

impl<'de> Deserialize<'de> for Field0 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Field0)
    }
}

/// A visitor whose map has its `type` entries removed.
struct SkipType<V>(V);

impl<'de, V: Visitor<'de>> Visitor<'de> for SkipType<V> {
    type Value = V::Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.expecting(f)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.0.visit_map(SkipTypeMap(map))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<V::Value, A::Error> {
        seq.next_element::<IgnoredAny>()?;
        self.0.visit_seq(seq)
    }
}

struct SkipTypeMap<A>(A);

impl<'de, A: MapAccess<'de>> MapAccess<'de> for SkipTypeMap<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        mut seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            match self.0.next_key_seed(KeySeed(seed))? {
                None => return Ok(None),
                Some(Ok(k)) => return Ok(Some(k)),
                Some(Err(s)) => {
                    self.0.next_value::<IgnoredAny>()?;
                    seed = s;
                }
            }
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        self.0.next_value_seed(seed)
    }
}

/// Reads a key: `Err(seed)` back for `type`, else the seed's value for the key.
struct KeySeed<K>(K);

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for KeySeed<K> {
    type Value = Result<K::Value, K>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_identifier(KeyVisitor(self.0, PhantomData))
    }
}

struct KeyVisitor<'de, K>(K, PhantomData<&'de ()>);

impl<'de, K: DeserializeSeed<'de>> Visitor<'de> for KeyVisitor<'de, K> {
    type Value = Result<K::Value, K>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        if s == "type" {
            return Ok(Err(self.0));
        }
        let d: StrDeserializer<'_, E> = s.into_deserializer();
        self.0.deserialize(d).map(Ok)
    }
}

/// `RailOutcome` (`{"kind":"settled"|"failed"|"returned", …}`) in one pass.
fn rail_outcome<'de, D: Deserializer<'de>>(d: D) -> Result<RailOutcome, D::Error> {
    d.deserialize_map(RailOutcomeVisitor)
}

struct RailOutcomeVisitor;

const OUTCOME_KINDS: &[&str] = &["settled", "failed", "returned"];

impl<'de> Visitor<'de> for RailOutcomeVisitor {
    type Value = RailOutcome;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("internally tagged enum RailOutcome")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RailOutcome, A::Error> {
        let mut kind: Option<u8> = None;
        let mut code: Option<String> = None;
        let mut reason: Option<String> = None;
        let mut amount: Option<Option<Money>> = None;
        let mut unknown: Option<String> = None;
        while let Some(key) = map.next_key::<Field0>()? {
            // Fields the kind read so far does not have are skipped untyped (a
            // `settled` notice ignores every other field, as the derived decoder does).
            let has = |name: &str| match kind {
                None => unknown.is_none(),
                Some(0) => false,
                Some(1) => name != "amount",
                Some(_) => true,
            };
            match key.0.as_str() {
                "kind" => {
                    if kind.is_some() {
                        return Err(A::Error::duplicate_field("kind"));
                    }
                    kind = Some(map.next_value::<OutcomeKind>()?.0);
                }
                "code" if has("code") => {
                    if code.is_some() {
                        return Err(A::Error::duplicate_field("code"));
                    }
                    code = Some(map.next_value()?);
                }
                "reason" if has("reason") => {
                    if reason.is_some() {
                        return Err(A::Error::duplicate_field("reason"));
                    }
                    reason = Some(map.next_value()?);
                }
                "amount" if has("amount") => {
                    if amount.is_some() {
                        return Err(A::Error::duplicate_field("amount"));
                    }
                    amount = Some(map.next_value()?);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    if unknown.is_none() {
                        unknown = Some(key.0);
                    }
                }
            }
        }
        let kind = kind.ok_or_else(|| A::Error::missing_field("kind"))?;
        if kind == 0 {
            return Ok(RailOutcome::Settled);
        }
        let fields: &'static [&'static str] = match kind {
            1 => &["code", "reason"],
            _ => &["code", "reason", "amount"],
        };
        let extra = [
            ("code", code.is_some()),
            ("reason", reason.is_some()),
            ("amount", amount.is_some()),
        ]
        .into_iter()
        .find(|(name, present)| *present && !fields.contains(name))
        .map(|(name, _)| name.to_string());
        if let Some(k) = unknown.or(extra) {
            return Err(A::Error::unknown_field(&k, fields));
        }
        Ok(match kind {
            1 => RailOutcome::Failed {
                code: code.ok_or_else(|| A::Error::missing_field("code"))?,
                reason: reason.unwrap_or_default(),
            },
            _ => RailOutcome::Returned {
                code: code.ok_or_else(|| A::Error::missing_field("code"))?,
                reason: reason.unwrap_or_default(),
                amount: amount.unwrap_or_default(),
            },
        })
    }
}

struct OutcomeKind(u8);

impl<'de> Deserialize<'de> for OutcomeKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = OutcomeKind;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("variant identifier")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<OutcomeKind, E> {
                OUTCOME_KINDS
                    .iter()
                    .position(|k| *k == s)
                    .map(|i| OutcomeKind(i as u8))
                    .ok_or_else(|| E::unknown_variant(s, OUTCOME_KINDS))
            }
        }
        d.deserialize_identifier(V)
    }
}

/// An externally tagged mirror of [`Command`] (field for field), decoded by serde's
/// derive straight into `Command`.
#[derive(Deserialize)]
#[serde(remote = "Command", deny_unknown_fields)]
#[allow(dead_code)]
enum CommandWire {
    Initiate {
        payment: PaymentId,
        tenant: TenantId,
        policy: Box<Policy>,
        amount: Money,
        #[serde(default)]
        description: String,
        roles: Vec<Role>,
        #[serde(default)]
        name: String,
    },
    Invite {
        party: PartyId,
        roles: Vec<Role>,
        #[serde(default)]
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        email: Option<String>,
    },
    Join,
    Remove {
        party: PartyId,
        #[serde(default)]
        reason: String,
    },
    AgreeToTerms {
        terms_hash: Hash,
    },
    AttachFundingMethod {
        method: FundingMethod,
    },
    SubmitFunding {
        amount: Money,
        rail: Rail,
        rail_ref: String,
    },
    RailNotice {
        rail_ref: String,
        #[serde(deserialize_with = "rail_outcome")]
        notice: RailOutcome,
    },
    Tick,
    RequestRelease {
        request: RequestId,
        allocations: Vec<Allocation>,
    },
    AmendRelease {
        request: RequestId,
        allocations: Vec<Allocation>,
    },
    RequestRefund {
        request: RequestId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        amount: Option<Money>,
    },
    Approve {
        request: RequestId,
        allocations_hash: Hash,
    },
    Deny {
        request: RequestId,
        #[serde(default)]
        reason: String,
    },
    WithdrawApproval {
        request: RequestId,
    },
    CancelRequest {
        request: RequestId,
        #[serde(default)]
        reason: String,
    },
    SubmitDisbursement {
        request: RequestId,
        rail: Rail,
        rail_ref: String,
    },
    OpenDispute {
        dispute: RequestId,
        #[serde(default)]
        reason: String,
    },
    ResolveDispute {
        dispute: RequestId,
        outcome: DisputeOutcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<RequestId>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        allocations: Vec<Allocation>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        amount: Option<Money>,
        #[serde(default)]
        note: String,
    },
    Cancel {
        #[serde(default)]
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refund_request: Option<RequestId>,
    },
    RecordReversal {
        leg: LegId,
        #[serde(default)]
        reason: String,
    },
    RecordShortfallRecovery {
        amount: Money,
        rail_ref: String,
    },
    WriteOffShortfall {
        #[serde(default)]
        reason: String,
    },
    Close {
        #[serde(default)]
        reason: String,
    },
}
