//! A compact `Deserialize` for plain structs, for the many small event payloads.
//!
//! [`compact_de!`](crate::compact_de) generates what `#[derive(Deserialize)]` with
//! `#[serde(deny_unknown_fields)]` generates — the same calls on the deserializer in
//! the same order, so the same results, errors and error positions — but matches field
//! names in one shared function ([`FieldSeed`]) instead of a visitor per struct, which
//! keeps the WebAssembly module smaller. Fields marked `[default]` take
//! `Default::default()` when absent (`#[serde(default)]`); every other field is
//! required (so an `Option` field that may be absent must be marked `[default]`).

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
    };
    (@seq [default] $a:ident, $i:ident, $name:ident, $fields:ident) => {
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
