//! A compact `Deserialize` for plain structs, for the many small event payloads.
//!
//! `compact_de!` generates what `#[derive(Deserialize)]` with
//! `#[serde(deny_unknown_fields)]` generates — the same calls on the deserializer in
//! the same order, so the same results, errors and error positions — but matches field
//! names in one shared function (`FieldSeed`) instead of a visitor per struct, which
//! keeps the WebAssembly module smaller. Fields marked `[default]` take
//! `Default::default()` when absent (`#[serde(default)]`); every other field is
//! required (so an `Option` field that may be absent must be marked `[default]`, or
//! `[skip_none]` when its `Serialize` also leaves it out when `None`).
//!
//! Both macros also implement the core's own writer (`json::write::WriteJson`, the
//! fields in order, as serde writes them) and reader
//! (`json::read::FromJson`) with the same rules, which the canonical
//! envelope path uses for payloads; it hands anything it does not take back to serde.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, Expected, Unexpected, Visitor};

/// Reads a field name, as its index in `.0`; unknown names are errors.
#[derive(Clone, Copy)]
pub(crate) struct FieldSeed(pub(crate) &'static [&'static str]);

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl Visitor<'_> for FieldSeed {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("field identifier")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<usize, E> {
        match usize::try_from(v) {
            Ok(i) if i < self.0.len() => Ok(i),
            _ => Err(E::invalid_value(
                Unexpected::Unsigned(v),
                &FieldIndex(self.0.len()),
            )),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
        self.0
            .iter()
            .position(|f| *f == v)
            .ok_or_else(|| E::unknown_field(v, self.0))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<usize, E> {
        self.0
            .iter()
            .position(|f| f.as_bytes() == v)
            .ok_or_else(|| E::unknown_field(&String::from_utf8_lossy(v), self.0))
    }
}

/// "field index 0 <= i < N", as serde's derive says it.
struct FieldIndex(usize);

impl Expected for FieldIndex {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "field index 0 <= i < {}", self.0)
    }
}

/// Decodes a unit-only enum as the index of its variant (one visitor for every such
/// enum, see [`unit_enum_de!`]).
pub(crate) struct UnitEnum(pub(crate) &'static str, pub(crate) &'static [&'static str]);

impl<'de> Visitor<'de> for UnitEnum {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<usize, A::Error> {
        let (i, v) = data.variant_seed(VariantSeed(self.1))?;
        de::VariantAccess::unit_variant(v)?;
        Ok(i)
    }
}

/// Reads a variant name, as its index in `.0`; unknown names are errors.
struct VariantSeed(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for VariantSeed {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl Visitor<'_> for VariantSeed {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("variant identifier")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<usize, E> {
        match usize::try_from(v) {
            Ok(i) if i < self.0.len() => Ok(i),
            _ => Err(E::invalid_value(
                Unexpected::Unsigned(v),
                &VariantIndex(self.0.len()),
            )),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
        self.0
            .iter()
            .position(|f| *f == v)
            .ok_or_else(|| E::unknown_variant(v, self.0))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<usize, E> {
        self.0
            .iter()
            .position(|f| f.as_bytes() == v)
            .ok_or_else(|| E::unknown_variant(&String::from_utf8_lossy(v), self.0))
    }
}

/// "variant index 0 <= i < N", as serde's derive says it.
struct VariantIndex(usize);

impl Expected for VariantIndex {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "variant index 0 <= i < {}", self.0)
    }
}

/// Implements `Deserialize` for a unit-only `Copy` enum:
/// `unit_enum_de!(Rail { Ach = "ach", Wire = "wire" })` (every variant, in order, with
/// its name as serialized). Same results and errors as serde's derive.
macro_rules! unit_enum_de {
    ($name:ident { $($variant:ident = $text:literal),* $(,)? }) => {
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                const VARIANTS: &[&str] = &[$($text),*];
                const VALUES: &[$name] = &[$($name::$variant),*];
                let i = d.deserialize_enum(
                    stringify!($name),
                    VARIANTS,
                    $crate::de::UnitEnum(concat!("enum ", stringify!($name)), VARIANTS),
                )?;
                VALUES.get(i).copied().ok_or_else(|| {
                    <D::Error as serde::de::Error>::custom("variant index out of range")
                })
            }
        }

        impl $crate::json::write::WriteJson for $name {
            fn write_json(&self, out: &mut Vec<u8>) {
                $crate::json::write::ascii(out, match self { $($name::$variant => $text,)* });
            }
        }

        impl $crate::json::read::FromJson for $name {
            fn from_json(
                r: &mut $crate::json::read::Reader<'_, '_>,
            ) -> $crate::json::read::Read<Self> {
                const VARIANTS: &[&str] = &[$($text),*];
                const VALUES: &[$name] = &[$($name::$variant),*];
                let i = $crate::json::read::variant(r, VARIANTS)?;
                VALUES.get(i).copied().ok_or_else(|| {
                    r.fault($crate::json::read::Fault::Syntax("variant index out of range"))
                })
            }
        }
    };
}

pub(crate) use unit_enum_de;

/// "struct NAME with N elements", as serde's derive says it.
pub(crate) struct SeqLen(pub(crate) &'static str, pub(crate) usize);

impl Expected for SeqLen {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let s = if self.1 == 1 { "" } else { "s" };
        write!(f, "struct {} with {} element{s}", self.0, self.1)
    }
}

/// Implements `Deserialize` for a struct: `compact_de!(Name { a: A, b: B [default] })`
/// (every field, in declaration order). See the [module docs](self).
macro_rules! compact_de {
    ($name:ident { $($field:ident : $ty:ty $([$default:ident])?),* $(,)? }) => {
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                const FIELDS: &[&str] = &[$(stringify!($field)),*];
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $name;

                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str(concat!("struct ", stringify!($name)))
                    }

                    fn visit_seq<A: serde::de::SeqAccess<'de>>(
                        self,
                        mut seq: A,
                    ) -> Result<$name, A::Error> {
                        let mut _i = 0usize;
                        $(
                            let $field: $ty = match seq.next_element()? {
                                Some(v) => v,
                                None => $crate::de::compact_de!(@seq [$($default)?] A, _i, $name, FIELDS),
                            };
                            _i += 1;
                        )*
                        Ok($name { $($field),* })
                    }

                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<$name, A::Error> {
                        $( let mut $field: Option<$ty> = None; )*
                        while let Some(k) = map.next_key_seed($crate::de::FieldSeed(FIELDS))? {
                            let mut _n = 0usize;
                            $(
                                if k == _n {
                                    if $field.is_some() {
                                        return Err(<A::Error as serde::de::Error>::duplicate_field(
                                            stringify!($field),
                                        ));
                                    }
                                    $field = Some(map.next_value()?);
                                    continue;
                                }
                                _n += 1;
                            )*
                        }
                        $(
                            let $field: $ty = match $field {
                                Some(v) => v,
                                None => $crate::de::compact_de!(@map [$($default)?] A, $field),
                            };
                        )*
                        Ok($name { $($field),* })
                    }
                }
                d.deserialize_struct(stringify!($name), FIELDS, V)
            }
        }

        impl $crate::json::write::WriteJson for $name {
            fn write_json(&self, out: &mut Vec<u8>) {
                out.push(b'{');
                $( $crate::de::compact_de!(@write [$($default)?] out, self, $field); )*
                out.push(b'}');
            }
        }

        impl $crate::json::read::FromJson for $name {
            fn from_json(
                r: &mut $crate::json::read::Reader<'_, '_>,
            ) -> $crate::json::read::Read<Self> {
                $crate::json::read::read_members!(r, $name { $($field: $ty $([$default])?),* })
            }
        }
    };
    (@write [skip_none] $out:ident, $self:ident, $field:ident) => {
        $crate::json::write::opt($out, stringify!($field), &$self.$field)
    };
    (@write [$($default:ident)?] $out:ident, $self:ident, $field:ident) => {{
        $crate::json::write::key($out, stringify!($field));
        $crate::json::write::WriteJson::write_json(&$self.$field, $out);
    }};
    (@seq [default] $a:ident, $i:ident, $name:ident, $fields:ident) => {
        Default::default()
    };
    (@seq [skip_none] $a:ident, $i:ident, $name:ident, $fields:ident) => {
        Default::default()
    };
    (@seq [] $a:ident, $i:ident, $name:ident, $fields:ident) => {
        return Err(<$a::Error as serde::de::Error>::invalid_length(
            $i,
            &$crate::de::SeqLen(stringify!($name), $fields.len()),
        ))
    };
    (@map [default] $a:ident, $field:ident) => {
        Default::default()
    };
    (@map [skip_none] $a:ident, $field:ident) => {
        Default::default()
    };
    (@map [] $a:ident, $field:ident) => {
        return Err(<$a::Error as serde::de::Error>::missing_field(stringify!($field)))
    };
}

pub(crate) use compact_de;

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, PartialEq)]
    struct Probe {
        a: u32,
        b: String,
        c: Option<u8>,
        d: Vec<u8>,
    }
    compact_de!(Probe { a: u32, b: String [default], c: Option<u8> [default], d: Vec<u8> });

    /// The same struct with serde's derive (same name: it is in the messages).
    mod derived {
        use super::Deserialize;

        #[derive(Debug, PartialEq, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Probe {
            pub a: u32,
            #[serde(default)]
            pub b: String,
            #[serde(default)]
            pub c: Option<u8>,
            pub d: Vec<u8>,
        }
    }

    #[derive(Debug, PartialEq, Clone, Copy)]
    enum Kind {
        One,
        TwoWords,
    }
    super::unit_enum_de!(Kind { One = "one", TwoWords = "two_words" });

    #[test]
    fn unit_enums_as_the_derive() {
        mod derived {
            #[derive(Debug, PartialEq, serde::Deserialize)]
            #[serde(rename_all = "snake_case")]
            pub enum Kind {
                One,
                TwoWords,
            }
        }
        for input in [
            r#""one""#,
            r#""two_words""#,
            r#""three""#,
            r#"{"one":null}"#,
            r#"{"two_words":null}"#,
            r#"{"one":1}"#,
            r#"{"one":null,"x":1}"#,
            r#"{}"#,
            r#"7"#,
            r#"null"#,
            r#"["one"]"#,
            "\"\\u006fne\"",
        ] {
            let a = serde_json::from_str::<Kind>(input).map_err(|e| e.to_string());
            let b = serde_json::from_str::<derived::Kind>(input)
                .map(|k| match k {
                    derived::Kind::One => Kind::One,
                    derived::Kind::TwoWords => Kind::TwoWords,
                })
                .map_err(|e| e.to_string());
            assert_eq!(a, b, "{input}");
        }
    }

    /// Every enum decoded by `unit_enum_de!` reads back what its derived `Serialize`
    /// writes, variant for variant.
    #[test]
    fn unit_enum_names_match_serialize() {
        use crate::event::{DeadlineOutcome, DisputeOutcome};
        use crate::ledger::LegStatus;
        use crate::policy::{BorneBy, DeadlineAnchor, Hidden, OnDeadlineMissed, Rail};
        fn round_trip<T>(all: &[T])
        where
            T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
        {
            for v in all {
                let json = serde_json::to_string(v).unwrap();
                assert_eq!(&serde_json::from_str::<T>(&json).unwrap(), v, "{json}");
            }
        }
        use Rail::*;
        round_trip(&[Ach, Wire, Rtp, Card, Book]);
        round_trip(&[DeadlineAnchor::Initiated, DeadlineAnchor::Agreed]);
        round_trip(&[OnDeadlineMissed::Expire, OnDeadlineMissed::Flag]);
        round_trip(&[BorneBy::Payee, BorneBy::Payer]);
        round_trip(&Hidden::ALL);
        round_trip(&[DeadlineOutcome::Expired, DeadlineOutcome::Flagged]);
        round_trip(&[
            DisputeOutcome::Resume,
            DisputeOutcome::Release,
            DisputeOutcome::Refund,
        ]);
        round_trip(&[LegStatus::Pending, LegStatus::Posted, LegStatus::Voided]);
    }

    #[test]
    fn same_results_and_errors_as_the_derive() {
        for input in [
            r#"{"a":1,"b":"x","c":2,"d":[1]}"#,
            r#"{"d":[],"a":1}"#,
            r#"{"a":1}"#,
            r#"{"d":[]}"#,
            r#"{"a":1,"d":[],"e":1}"#,
            r#"{"e":1,"a":1,"d":[]}"#,
            r#"{"a":1,"a":2,"d":[]}"#,
            r#"{"a":"x","d":[]}"#,
            r#"{"a":1,"c":null,"d":[]}"#,
            r#"{"a":1,"c":300,"d":[]}"#,
            r#"[1,"x",null,[2]]"#,
            r#"[1,"x"]"#,
            r#"[1]"#,
            r#"[]"#,
            r#"[1,"x",3,[],5]"#,
            r#""probe""#,
            r#"7"#,
            r#"null"#,
            r#"{"a":1,"d":[]"#,
            r#"{"a":1,"d":[]} x"#,
            "{\"a\":1,\"d\":[],\"\\u0062\":\"y\"}",
        ] {
            let a = serde_json::from_str::<Probe>(input).map_err(|e| e.to_string());
            let b = serde_json::from_str::<derived::Probe>(input)
                .map(|d| Probe {
                    a: d.a,
                    b: d.b,
                    c: d.c,
                    d: d.d,
                })
                .map_err(|e| e.to_string());
            assert_eq!(a, b, "{input}");
        }
    }
}
