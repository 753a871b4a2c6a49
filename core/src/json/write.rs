//! The canonical JSON writer: compact JSON, byte for byte what `serde_json::to_vec`
//! writes from the core's serde `Serialize` impls.
//!
//! Each type writes itself with [`WriteJson`] into one growing `Vec<u8>`, through a
//! handful of shared, non-generic helpers: [`string`] (serde_json's escaping), [`uint`],
//! [`boolean`], [`key`] (an object member's name, with the comma before it when it is
//! not the first), the leaf formats (ids, hashes, decimals, timestamps) and the
//! containers (`Option`, slices, [`SortedMap`], [`SortedSet`]). Struct impls write
//! their members in declaration order and leave out exactly what the serde attributes
//! skip (`skip_serializing_if`, `skip`).
//!
//! What serde writes, and so this writer:
//! - strings: `"` and `\` escaped, the control characters below 0x20 as `\b \t \n \f
//!   \r` or else `\u00xx` (lower-case hex); everything else (`/`, 0x7f, non-ASCII) as
//!   is;
//! - ids: the UUID hyphenated in lower case (`#[serde(transparent)]` over `Uuid`);
//! - [`Hash`]: 64 lower-case hex digits;
//! - [`Money`]: `{"amount":"<decimal>","currency":"USD"}`, the decimal as
//!   `rust_decimal` displays it (a `-` for every negative sign, even on zero; all the
//!   digits of its scale);
//! - [`Timestamp`]: its `Display` (`collect_str`), `YYYY-MM-DDTHH:MM:SS[.mmm]Z`;
//! - unit enum variants: their (renamed) name as a string; newtype variants
//!   (`RailTarget`): `{"variant":value}`;
//! - `Option` (not skipped): `null` or the value; maps: an object in key order, each
//!   key written as the string it serializes to.

use rust_decimal::Decimal;

use crate::hash::Hash;
use crate::id::{CommandId, EventId, LegId, PartyId, PaymentId, RequestId, TenantId};
use crate::map::{SortedMap, SortedSet};
use crate::money::{Currency, Money};
use crate::policy::Role;
use crate::time::Timestamp;

/// A value that writes itself as compact JSON, exactly as its serde `Serialize`
/// impl does through `serde_json`.
pub(crate) trait WriteJson {
    /// Appends this value's JSON to `out`.
    fn write_json(&self, out: &mut Vec<u8>);
}

/// Lower-case hex digits.
const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `s` as a JSON string with serde_json's escaping.
pub(crate) fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    escaped(out, s.as_bytes());
    out.push(b'"');
}

/// Appends the escaped contents of a JSON string (no quotes). `b` is UTF-8: bytes of
/// multi-byte characters are all >= 0x80 and are copied as they are.
fn escaped(out: &mut Vec<u8>, b: &[u8]) {
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        if c >= 0x20 && c != b'"' && c != b'\\' {
            continue;
        }
        out.extend_from_slice(&b[start..i]);
        let short = match c {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x09 => b't',
            0x0a => b'n',
            0x0c => b'f',
            0x0d => b'r',
            _ => 0,
        };
        if short == 0 {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(c >> 4)]);
            out.push(HEX[usize::from(c & 15)]);
        } else {
            out.push(b'\\');
            out.push(short);
        }
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
}

/// Appends `s`, which needs no escaping (an ASCII name), as a JSON string.
pub(crate) fn ascii(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// Appends an object member's name and colon, after a comma unless the member is
/// the object's first (the last byte written is then its `{`: no value ends in `{`).
/// `name` must need no escaping (the core's field names are ASCII identifiers).
pub(crate) fn key(out: &mut Vec<u8>, name: &str) {
    sep(out);
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

/// Appends a comma unless at the start of an object or array.
fn sep(out: &mut Vec<u8>) {
    if !matches!(out.last(), Some(b'{' | b'[')) {
        out.push(b',');
    }
}

/// Appends `true` or `false`.
pub(crate) fn boolean(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

/// Appends `n` in decimal, left-padded with zeros to at least `width` digits.
fn padded(out: &mut Vec<u8>, n: u128, width: usize) {
    let mut buf = [b'0'; 40];
    let mut i = buf.len();
    let mut n = n;
    // Most numbers fit in 64 bits, whose division is native (128-bit is a call).
    while n > u128::from(u64::MAX) {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let mut m = n as u64;
    while m != 0 {
        i -= 1;
        buf[i] = b'0' + (m % 10) as u8;
        m /= 10;
    }
    let start = (buf.len() - width.min(buf.len())).min(i);
    out.extend_from_slice(&buf[start..]);
}

/// Appends an unsigned integer (`0` as `0`).
pub(crate) fn uint(out: &mut Vec<u8>, n: u64) {
    padded(out, u128::from(n), 1);
}

/// Appends a decimal's digits exactly as its `Display` writes them (no quotes): a `-`
/// when the sign is negative (also on zero), the integer part (`0` when empty), and
/// when the scale is not zero a point and `scale` digits.
pub(crate) fn decimal(out: &mut Vec<u8>, d: &Decimal) {
    if d.is_sign_negative() {
        out.push(b'-');
    }
    let scale = d.scale() as usize;
    let n = d.mantissa().unsigned_abs();
    if scale == 0 {
        padded(out, n, 1);
        return;
    }
    // The mantissa's digits, at least `scale + 1` of them (`0.05`), then the point.
    padded(out, n, scale + 1);
    out.insert(out.len() - scale, b'.');
}

/// Appends a UUID hyphenated in lower case (no quotes).
pub(crate) fn uuid(out: &mut Vec<u8>, u: &uuid::Uuid) {
    let mut s = [b'-'; 36];
    let mut j = 0;
    for (i, b) in u.as_bytes().iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            j += 1;
        }
        s[j] = HEX[usize::from(b >> 4)];
        s[j + 1] = HEX[usize::from(b & 15)];
        j += 2;
    }
    out.extend_from_slice(&s);
}

/// Appends a timestamp's `Display` form (no quotes): `YYYY-MM-DDTHH:MM:SSZ`, with
/// `.mmm` when the milliseconds are not zero. The year is written like `{:04}`
/// (sign-aware zero padding: `-001`, `0099`, `12345`).
pub(crate) fn timestamp(out: &mut Vec<u8>, t: Timestamp) {
    const MS_PER_DAY: i64 = 86_400_000;
    let ms = t.unix_millis();
    let (y, m, d) = crate::time::civil_from_days(ms.div_euclid(MS_PER_DAY));
    if y < 0 {
        out.push(b'-');
        padded(out, u128::from(y.unsigned_abs()), 3);
    } else {
        padded(out, y as u128, 4);
    }
    // The rest has a fixed width: fill it in place and append it once.
    let ms_of_day = ms.rem_euclid(MS_PER_DAY) as u32;
    let (secs, ms) = (ms_of_day / 1000, ms_of_day % 1000);
    let mut s = *b"-00-00T00:00:00.000Z";
    two(&mut s[1..3], m);
    two(&mut s[4..6], d);
    two(&mut s[7..9], secs / 3600);
    two(&mut s[10..12], (secs / 60) % 60);
    two(&mut s[13..15], secs % 60);
    let end = if ms == 0 {
        s[15] = b'Z';
        16
    } else {
        s[16] = b'0' + (ms / 100) as u8;
        two(&mut s[17..19], ms % 100);
        20
    };
    out.extend_from_slice(&s[..end]);
}

/// Writes `v` (below 100) as two digits into `d[0..2]`.
fn two(d: &mut [u8], v: u32) {
    d[0] = b'0' + (v / 10) as u8;
    d[1] = b'0' + (v % 10) as u8;
}

// ---------------------------------------------------------------------------
// Leaves
// ---------------------------------------------------------------------------

impl WriteJson for str {
    fn write_json(&self, out: &mut Vec<u8>) {
        string(out, self);
    }
}

impl WriteJson for String {
    fn write_json(&self, out: &mut Vec<u8>) {
        string(out, self);
    }
}

impl WriteJson for bool {
    fn write_json(&self, out: &mut Vec<u8>) {
        boolean(out, *self);
    }
}

impl WriteJson for u64 {
    fn write_json(&self, out: &mut Vec<u8>) {
        uint(out, *self);
    }
}

impl WriteJson for u32 {
    fn write_json(&self, out: &mut Vec<u8>) {
        uint(out, u64::from(*self));
    }
}

impl WriteJson for u8 {
    fn write_json(&self, out: &mut Vec<u8>) {
        uint(out, u64::from(*self));
    }
}

impl WriteJson for uuid::Uuid {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'"');
        uuid(out, self);
        out.push(b'"');
    }
}

impl WriteJson for u16 {
    fn write_json(&self, out: &mut Vec<u8>) {
        uint(out, u64::from(*self));
    }
}

macro_rules! id_write_json {
    ($($t:ty),*) => {$(
        impl WriteJson for $t {
            fn write_json(&self, out: &mut Vec<u8>) {
                out.push(b'"');
                uuid(out, &self.0);
                out.push(b'"');
            }
        }
    )*};
}
id_write_json!(PaymentId, PartyId, LegId, RequestId, EventId, CommandId, TenantId);

impl WriteJson for Hash {
    fn write_json(&self, out: &mut Vec<u8>) {
        let mut hex = [0u8; 64];
        self.write_hex(&mut hex);
        out.push(b'"');
        out.extend_from_slice(&hex);
        out.push(b'"');
    }
}

impl WriteJson for Currency {
    fn write_json(&self, out: &mut Vec<u8>) {
        // Codes come from the ISO 4217 table: three ASCII letters.
        ascii(out, self.code());
    }
}

impl WriteJson for Money {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"amount\":\"");
        decimal(out, &self.amount());
        out.extend_from_slice(b"\",\"currency\":");
        self.currency().write_json(out);
        out.push(b'}');
    }
}

impl WriteJson for Timestamp {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'"');
        timestamp(out, *self);
        out.push(b'"');
    }
}

impl WriteJson for crate::time::Date {
    fn write_json(&self, out: &mut Vec<u8>) {
        // `YYYY-MM-DD` needs no escaping.
        out.push(b'"');
        out.extend_from_slice(self.to_string().as_bytes());
        out.push(b'"');
    }
}

impl WriteJson for Role {
    fn write_json(&self, out: &mut Vec<u8>) {
        string(out, &self.0);
    }
}

// ---------------------------------------------------------------------------
// Containers
// ---------------------------------------------------------------------------

/// Appends `"name":value` when `v` is `Some` (serde's `skip_serializing_if =
/// "Option::is_none"`).
pub(crate) fn opt<T: WriteJson>(out: &mut Vec<u8>, name: &str, v: &Option<T>) {
    if let Some(v) = v {
        key(out, name);
        v.write_json(out);
    }
}

/// Appends `"name":[…]` unless `v` is empty (`skip_serializing_if = "Vec::is_empty"`).
pub(crate) fn non_empty<T: WriteJson>(out: &mut Vec<u8>, name: &str, v: &[T]) {
    if !v.is_empty() {
        key(out, name);
        v.write_json(out);
    }
}

impl<T: WriteJson> WriteJson for Option<T> {
    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Some(v) => v.write_json(out),
            None => out.extend_from_slice(b"null"),
        }
    }
}

/// Appends the items as a JSON array (slices, vectors and sets alike).
fn array<'a, T: WriteJson + 'a>(out: &mut Vec<u8>, items: impl IntoIterator<Item = &'a T>) {
    out.push(b'[');
    for x in items {
        sep(out);
        x.write_json(out);
    }
    out.push(b']');
}

impl<T: WriteJson> WriteJson for [T] {
    fn write_json(&self, out: &mut Vec<u8>) {
        array(out, self);
    }
}

impl<T: WriteJson> WriteJson for Vec<T> {
    fn write_json(&self, out: &mut Vec<u8>) {
        self.as_slice().write_json(out);
    }
}

/// An object in key order. Every key type the core uses in a map serializes as a
/// string (ids, `String`, `Account`), and serde_json writes such a key as that string.
impl<K: WriteJson, V: WriteJson> WriteJson for SortedMap<K, V> {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (k, v) in self {
            sep(out);
            k.write_json(out);
            out.push(b':');
            v.write_json(out);
        }
        out.push(b'}');
    }
}

impl<T: WriteJson> WriteJson for SortedSet<T> {
    fn write_json(&self, out: &mut Vec<u8>) {
        array(out, self);
    }
}

/// The embedded policy as serde writes it (its canonical JSON, the bytes `policy_hash`
/// is taken over when trustfold writes it).
impl WriteJson for crate::event::EmbeddedPolicy {
    fn write_json(&self, out: &mut Vec<u8>) {
        WriteJson::write_json(&**self, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{DisputeOutcome, FundingMethod};
    use crate::policy::{BorneBy, Rail};

    fn json<T: WriteJson + ?Sized>(v: &T) -> String {
        let mut out = Vec::new();
        v.write_json(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_escape_as_serde_json_does() {
        let mut all = String::new();
        for c in (0u8..=0x7f).map(char::from) {
            let s = c.to_string();
            assert_eq!(json(&s), serde_json::to_string(&s).unwrap(), "{c:?}");
            all.push(c);
            all.push('x');
        }
        for s in [
            "",
            "é",
            "日本語",
            "🦀",
            "a\u{0}b\u{1f}c\"d\\e/f\u{7f}g\u{80}h\u{2028}i",
            &all,
        ] {
            assert_eq!(json(s), serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn numbers_and_decimals() {
        for n in [0, 1, 9, 10, 99, 12_345, u64::MAX] {
            assert_eq!(json(&n), n.to_string());
        }
        for s in [
            "0",
            "0.00",
            "-0.00",
            "0.05",
            "-0.05",
            "1.5",
            "100",
            "-100",
            "12345.678",
            "0.0000000000000000000000000001",
            "79228162514264337593543950335",
            "-79228162514264337593543950335",
            "7.9228162514264337593543950335",
        ] {
            let d: Decimal = s.parse().unwrap();
            let mut out = Vec::new();
            decimal(&mut out, &d);
            assert_eq!(String::from_utf8(out).unwrap(), d.to_string(), "{s}");
        }
        let neg_zero = -Decimal::new(0, 2);
        let mut out = Vec::new();
        decimal(&mut out, &neg_zero);
        assert_eq!(String::from_utf8(out).unwrap(), neg_zero.to_string());
    }

    #[test]
    fn leaves_match_serde() {
        for ms in [
            0,
            1,
            999,
            1_000,
            -1,
            -86_400_001,
            1_795_000_000_123,
            253_402_300_799_999,
            253_402_300_800_000,
            -62_167_219_200_000,
            -62_167_219_200_001,
            i64::MAX,
            i64::MIN,
        ] {
            let t = Timestamp::from_unix_millis(ms);
            assert_eq!(json(&t), serde_json::to_string(&t).unwrap(), "{ms}");
        }
        let id = PartyId::from_bytes([0xa5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0xff]);
        assert_eq!(json(&id), serde_json::to_string(&id).unwrap());
        let h = Hash::of(b"abc");
        assert_eq!(json(&h), serde_json::to_string(&h).unwrap());
        for c in ["USD", "JPY", "KWD"] {
            let c = Currency::new(c).unwrap();
            for a in ["0", "1", "-12", "1000000"] {
                let m = Money::parse(a, c).unwrap();
                assert_eq!(json(&m), serde_json::to_string(&m).unwrap());
                assert_eq!(json(&m.neg()), serde_json::to_string(&m.neg()).unwrap());
            }
        }
        for r in [Rail::Ach, Rail::Wire, Rail::Rtp, Rail::Card, Rail::Book] {
            assert_eq!(json(&r), serde_json::to_string(&r).unwrap());
        }
        for b in [BorneBy::Payee, BorneBy::Payer] {
            assert_eq!(json(&b), serde_json::to_string(&b).unwrap());
        }
        for o in [
            DisputeOutcome::Resume,
            DisputeOutcome::Release,
            DisputeOutcome::Refund,
        ] {
            assert_eq!(json(&o), serde_json::to_string(&o).unwrap());
        }
        let roles = vec![Role::new("buyer"), Role::new("a\"b")];
        assert_eq!(json(&roles), serde_json::to_string(&roles).unwrap());
        let none: Option<u32> = None;
        assert_eq!(json(&none), "null");
        assert_eq!(json(&Some(3u32)), "3");
        let empty: Vec<u64> = Vec::new();
        assert_eq!(json(&empty), "[]");
        let m: SortedMap<String, u32> = [("b".into(), 2), ("a\n".into(), 1)].into();
        assert_eq!(json(&m), serde_json::to_string(&m).unwrap());
        let s: SortedSet<String> = ["b".into(), "a".into()].into();
        assert_eq!(json(&s), serde_json::to_string(&s).unwrap());
        let fm = FundingMethod {
            rail: Rail::Ach,
            institution: "Bank \"One\"".into(),
            account_last4: String::new(),
            holder: "Zoë".into(),
        };
        assert_eq!(json(&fm), serde_json::to_string(&fm).unwrap());
    }
}
