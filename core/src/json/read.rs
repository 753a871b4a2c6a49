//! Reading JSON: see the [module docs](super).
//!
//! A [`Reader`] walks a byte slice; each type that can be read implements
//! [`FromJson`], built from the reader's few primitives (strings, `null`, objects with
//! known field names, arrays, a raw value). The reader is strict: it accepts only what
//! serde's path accepts, with the same result, and answers [`Reject`] for everything
//! else (including input serde would accept in a less common form, such as a struct
//! written as an array), so the caller can fall back to serde for the error.

use std::borrow::Cow;

use uuid::Uuid;

use crate::event::{EmbeddedPolicy, PolicyCache};
use crate::hash::Hash;
use crate::id::{CommandId, EventId, LegId, PartyId, PaymentId, RequestId, TenantId};
use crate::money::{Currency, Money};
use crate::policy::Role;
use crate::time::Timestamp;

/// The reader did not accept the input (malformed, or a form left to serde).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reject;

/// What a read gives.
pub(crate) type Read<T> = std::result::Result<T, Reject>;

/// A position in a JSON text, and the policy cache for embedded policies.
pub(crate) struct Reader<'a, 'c> {
    b: &'a [u8],
    i: usize,
    policies: Option<&'c mut PolicyCache>,
}

impl<'a, 'c> Reader<'a, 'c> {
    /// A reader at the start of `b`; embedded policies are taken from (and added to)
    /// `policies` when given.
    pub(crate) fn new(b: &'a [u8], policies: Option<&'c mut PolicyCache>) -> Self {
        Reader { b, i: 0, policies }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Read<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(Reject)
        }
    }

    /// Only whitespace is left.
    pub(crate) fn end(&mut self) -> Read<()> {
        self.ws();
        if self.i == self.b.len() {
            Ok(())
        } else {
            Err(Reject)
        }
    }

    /// Reads `null` if it is next.
    pub(crate) fn null(&mut self) -> Read<bool> {
        if self.peek() != Some(b'n') {
            return Ok(false);
        }
        if self.b.get(self.i..self.i + 4) == Some(b"null") {
            self.i += 4;
            Ok(true)
        } else {
            Err(Reject)
        }
    }

    /// A string, borrowed when it has no escapes.
    pub(crate) fn str(&mut self) -> Read<Cow<'a, str>> {
        self.eat(b'"')?;
        let start = self.i;
        let rest = self.b.get(start..).ok_or(Reject)?;
        let len = plain_len(rest).ok_or(Reject)?;
        let plain = std::str::from_utf8(&rest[..len]).map_err(|_| Reject)?;
        self.i = start + len;
        if rest[len] == b'"' {
            self.i += 1;
            return Ok(Cow::Borrowed(plain));
        }
        let mut s = String::from(plain);
        loop {
            match self.b.get(self.i).copied().ok_or(Reject)? {
                b'"' => {
                    self.i += 1;
                    return Ok(Cow::Owned(s));
                }
                b'\\' => {
                    let e = self.b.get(self.i + 1).copied().ok_or(Reject)?;
                    self.i += 2;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        // Surrogates (pairs or not) are left to serde.
                        b'u' => self.hex4().and_then(char::from_u32).ok_or(Reject)?,
                        _ => return Err(Reject),
                    };
                    s.push(c);
                }
                c if c < 0x20 => return Err(Reject),
                _ => {
                    let rest = &self.b[self.i..];
                    let len = plain_len(rest).ok_or(Reject)?;
                    s.push_str(std::str::from_utf8(&rest[..len]).map_err(|_| Reject)?);
                    self.i += len;
                }
            }
        }
    }

    /// An object key without escapes (an escaped key is left to serde).
    fn key(&mut self) -> Read<&'a [u8]> {
        self.eat(b'"')?;
        let rest = self.b.get(self.i..).ok_or(Reject)?;
        let len = plain_len(rest).ok_or(Reject)?;
        if rest[len] != b'"' {
            return Err(Reject);
        }
        let key = &rest[..len];
        self.i += len + 1;
        Ok(key)
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.b.get(self.i..self.i + 4)?;
        let mut n = 0u32;
        for &d in digits {
            n = n * 16 + char::from(d).to_digit(16)?;
        }
        self.i += 4;
        Some(n)
    }

    /// An object whose keys are all in `fields` (each given to `field` by its index,
    /// with the reader at the value). Unknown keys are rejected; duplicates are the
    /// caller's to reject (see [`once`]).
    pub(crate) fn object(
        &mut self,
        fields: &[&str],
        field: &mut dyn FnMut(&mut Self, usize) -> Read<()>,
    ) -> Read<()> {
        self.eat(b'{')?;
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            let key = self.key()?;
            let k = fields
                .iter()
                .position(|f| f.len() == key.len() && same(f.as_bytes(), key))
                .ok_or(Reject)?;
            self.eat(b':')?;
            field(self, k)?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(Reject),
            }
        }
    }

    /// An array, each element read by `item`.
    pub(crate) fn array<T>(&mut self, mut item: impl FnMut(&mut Self) -> Read<T>) -> Read<Vec<T>> {
        self.eat(b'[')?;
        let mut out = Vec::new();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(out);
        }
        loop {
            out.push(item(self)?);
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(out);
                }
                _ => return Err(Reject),
            }
        }
    }

    /// The bytes of the next value, skipped by its brackets and strings only: whoever
    /// takes them parses them fully.
    pub(crate) fn raw(&mut self) -> Read<&'a [u8]> {
        self.ws();
        let start = self.i;
        let mut depth = 0usize;
        loop {
            let c = *self.b.get(self.i).ok_or(Reject)?;
            self.i += 1;
            match c {
                b'"' => loop {
                    match *self.b.get(self.i).ok_or(Reject)? {
                        b'"' => {
                            self.i += 1;
                            break;
                        }
                        b'\\' => self.i += 2,
                        _ => self.i += 1,
                    }
                },
                b'{' | b'[' => depth += 1,
                b'}' | b']' => depth = depth.checked_sub(1).ok_or(Reject)?,
                _ => {
                    if depth == 0 {
                        // A scalar: it runs to the next delimiter.
                        while let Some(c) = self.b.get(self.i) {
                            if matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\t' | b'\r') {
                                break;
                            }
                            self.i += 1;
                        }
                    }
                }
            }
            if depth == 0 {
                return self.b.get(start..self.i).ok_or(Reject);
            }
        }
    }

    /// An unsigned integer as JSON writes it (no sign, fraction, exponent or leading
    /// zero: other forms are left to serde).
    pub(crate) fn uint(&mut self) -> Read<u64> {
        self.ws();
        let rest = self.b.get(self.i..).ok_or(Reject)?;
        let len = rest
            .iter()
            .position(|c| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if len == 0 || (len > 1 && rest[0] == b'0') {
            return Err(Reject);
        }
        if let Some(b'.' | b'e' | b'E') = rest.get(len) {
            return Err(Reject);
        }
        let mut n = 0u64;
        for &c in &rest[..len] {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(c - b'0')))
                .ok_or(Reject)?;
        }
        self.i += len;
        Ok(n)
    }

    /// The policy cache, if the caller gave one.
    pub(crate) fn policies(&mut self) -> Option<&mut PolicyCache> {
        self.policies.as_deref_mut()
    }
}

/// How many bytes of `b` precede the first `"`, `\\` or control character (`None`
/// when there is none). A plain loop, as in [`same`].
fn plain_len(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\\' || c < 0x20 {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Whether two byte strings are equal: a plain loop, since these are short and a call
/// to `memcmp` costs more than the comparison in the size-optimised WebAssembly build.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// A type the reader can read.
pub(crate) trait FromJson: Sized {
    /// Reads one value.
    fn from_json(r: &mut Reader<'_, '_>) -> Read<Self>;
}

/// Reads a struct field's value into its slot, rejecting a second occurrence.
pub(crate) fn once<T: FromJson>(slot: &mut Option<T>, r: &mut Reader<'_, '_>) -> Read<()> {
    if slot.is_some() {
        return Err(Reject);
    }
    *slot = Some(T::from_json(r)?);
    Ok(())
}

/// Reads a string naming one of `names`, as its index (unit enums).
pub(crate) fn variant(r: &mut Reader<'_, '_>, names: &[&str]) -> Read<usize> {
    let s = r.str()?;
    names.iter().position(|n| *n == s).ok_or(Reject)
}

impl FromJson for String {
    fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
        r.str().map(Cow::into_owned)
    }
}

impl<T: FromJson> FromJson for Option<T> {
    fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
        if r.null()? {
            Ok(None)
        } else {
            T::from_json(r).map(Some)
        }
    }
}

impl<T: FromJson> FromJson for Vec<T> {
    fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
        r.array(T::from_json)
    }
}

macro_rules! uints {
    ($($t:ty),*) => {
        $(impl FromJson for $t {
            fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
                <$t>::try_from(r.uint()?).map_err(|_| Reject)
            }
        })*
    };
}

uints!(u8, u16, u32, u64);

fn uuid(r: &mut Reader<'_, '_>) -> Read<Uuid> {
    crate::id::uuid_from_ascii(r.str()?.as_bytes()).ok_or(Reject)
}

macro_rules! ids {
    ($($id:ident),*) => {
        $(impl FromJson for $id {
            fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
                uuid(r).map($id::from_uuid)
            }
        })*
    };
}

ids!(CommandId, EventId, LegId, PartyId, PaymentId, RequestId, TenantId);

impl FromJson for Hash {
    fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
        Hash::from_hex(r.str()?.as_bytes()).ok_or(Reject)
    }
}

impl FromJson for Timestamp {
    fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
        r.str()?.parse().map_err(|_| Reject)
    }
}

impl FromJson for Role {
    fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
        String::from_json(r).map(Role)
    }
}

impl FromJson for Currency {
    fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
        Currency::new(&r.str()?).map_err(|_| Reject)
    }
}

impl FromJson for Money {
    fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
        let mut amount: Option<String> = None;
        let mut currency: Option<Currency> = None;
        r.object(&["amount", "currency"], &mut |r, k| match k {
            0 => once(&mut amount, r),
            _ => once(&mut currency, r),
        })?;
        match (amount, currency) {
            (Some(a), Some(c)) => Money::parse(&a, c).map_err(|_| Reject),
            _ => Err(Reject),
        }
    }
}

impl FromJson for EmbeddedPolicy {
    fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
        r.ws();
        let rest = r.b.get(r.i..).ok_or(Reject)?;
        let known = match r.policies.as_deref() {
            Some(cache) => cache.find_prefix(rest),
            None => EmbeddedPolicy::remembered_prefix(rest),
        };
        if let Some((len, p)) = known {
            r.i += len;
            return Ok(p);
        }
        let raw = r.raw()?;
        match r.policies() {
            Some(cache) => cache.get_or_parse(raw).ok_or(Reject),
            None => EmbeddedPolicy::from_text(raw).map_err(|_| Reject),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read<T: FromJson>(s: &str) -> Read<T> {
        let mut r = Reader::new(s.as_bytes(), None);
        let v = T::from_json(&mut r)?;
        r.end()?;
        Ok(v)
    }

    /// Every string the reader accepts reads as serde_json reads it; what it rejects,
    /// serde_json rejects too or is a form (surrogate escapes) left to serde.
    #[test]
    fn strings_as_serde_json() {
        let cases = [
            r#""""#,
            r#""plain""#,
            r#""tab\there""#,
            r#""q\"uote\\ slash\/""#,
            r#""\b\f\n\r\t""#,
            r#""\u00e9\u0041x""#,
            r#""é ☃ 😀""#,
            r#""\ud83d\ude00""#,
            r#""\x""#,
            "\"raw\ttab\"",
            r#""unterminated"#,
            r#""\u12""#,
            r#"  "spaced"  "#,
            r#"7"#,
            r#"null"#,
        ];
        for c in cases {
            let ours = read::<String>(c);
            let serde = serde_json::from_str::<String>(c);
            match ours {
                Ok(s) => assert_eq!(Some(s), serde.ok(), "{c}"),
                Err(Reject) => {
                    assert!(serde.is_err() || c.contains("\\ud8"), "{c}: serde accepts")
                }
            }
        }
        assert!(read::<String>("\"\u{ff}\"").is_ok());
        let invalid_utf8 = [b'"', 0xff, b'"'];
        assert_eq!(
            String::from_json(&mut Reader::new(&invalid_utf8, None)),
            Err(Reject)
        );
    }

    #[test]
    fn raw_values_span_one_value() {
        for (input, raw, rest) in [
            (r#"{"a":[1,{"b":"}"}]} ,x"#, r#"{"a":[1,{"b":"}"}]}"#, " ,x"),
            (r#"  "s\"}" ,"#, r#""s\"}""#, " ,"),
            ("12.5e3,", "12.5e3", ","),
            ("true}", "true", "}"),
        ] {
            let mut r = Reader::new(input.as_bytes(), None);
            assert_eq!(r.raw(), Ok(raw.as_bytes()), "{input}");
            assert_eq!(&input.as_bytes()[r.i..], rest.as_bytes());
        }
        assert_eq!(Reader::new(b"{\"a\":1", None).raw(), Err(Reject));
        assert_eq!(Reader::new(b"]", None).raw(), Err(Reject));
    }

    #[test]
    fn money_ids_and_options() {
        let m: Money = read(r#"{"currency":"USD","amount":"12.50"}"#).unwrap();
        assert_eq!(
            m,
            serde_json::from_str::<Money>(r#"{"amount":"12.50","currency":"USD"}"#).unwrap()
        );
        assert_eq!(
            read::<Money>(r#"{"amount":"1","amount":"2","currency":"USD"}"#),
            Err(Reject)
        );
        assert_eq!(read::<Money>(r#"{"amount":"1"}"#), Err(Reject));
        assert_eq!(
            read::<Money>(r#"{"amount":"1","currency":"USD","x":1}"#),
            Err(Reject)
        );
        assert_eq!(
            read::<Money>(r#"{"amount":"1.001","currency":"USD"}"#),
            Err(Reject)
        );
        let id = "7d0f6a36-8f0e-4e7e-9a51-0c1b2d3e4f50";
        let p: PartyId = read(&format!("\"{id}\"")).unwrap();
        assert_eq!(p.to_string(), id);
        assert_eq!(read::<PartyId>("\"not-a-uuid\""), Err(Reject));
        assert_eq!(read::<Option<PartyId>>(" null "), Ok(None));
        assert_eq!(read::<Option<PartyId>>("nul"), Err(Reject));
        assert_eq!(
            read::<Vec<Role>>(r#"[ "buyer" , "seller" ]"#).map(|v| v.len()),
            Ok(2)
        );
        assert_eq!(read::<Vec<Role>>(r#"["buyer",]"#), Err(Reject));
        assert_eq!(read::<Vec<Role>>(r#"[]"#), Ok(vec![]));
    }
}
