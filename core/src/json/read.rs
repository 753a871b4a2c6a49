//! Reading JSON: see the [module docs](super).
//!
//! A [`Reader`] walks a byte slice; each type that can be read implements
//! [`FromJson`], built from the reader's few primitives (strings, `null`, objects with
//! known field names, arrays, a raw value). The reader accepts what serde's derived
//! decoders accept, with the same result (the tests compare the two), and reports
//! anything else as a [`Reject`]: where (a byte offset) and what ([`Fault`]), worded
//! like serde_json's messages. [`Reject::into_error`] turns it into the crate's
//! [`Error`](crate::Error), keeping the code of a value's own error (an amount with too
//! many decimals is `invalid_amount_scale`, a bad JSON shape `malformed_json`).

use std::borrow::Cow;

use uuid::Uuid;

use crate::error::Error;
use crate::event::{EmbeddedPolicy, PolicyCache};
use crate::hash::Hash;
use crate::id::{CommandId, EventId, LegId, PartyId, PaymentId, RequestId, TenantId};
use crate::money::{Currency, Money};
use crate::policy::Role;
use crate::time::Timestamp;

/// Why the reader did not accept the input, and where. One pointer wide, so that
/// every read's `Result` stays small (the details are only allocated on failure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Reject(Box<Rejection>);

/// The details of a [`Reject`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rejection {
    /// Byte offset in the reader's input.
    pub(crate) at: usize,
    /// What is wrong there.
    pub(crate) fault: Fault,
    /// Where in the document's structure, innermost first (filled in as the error
    /// travels out of the readers of members, items and entries).
    pub(crate) path: Vec<Seg>,
}

/// One step of a [`Rejection`]'s path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seg {
    /// A struct's member.
    Field(&'static str),
    /// An array's item.
    Index(usize),
    /// A map's entry.
    Key(Box<str>),
}

/// What the reader found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Not JSON, or not the JSON shape expected (`expected `:``, `EOF while parsing a
    /// string`, `expected a string`…).
    Syntax(&'static str),
    /// A value of another JSON type than expected: what was found, what was expected
    /// (`invalid type: number, expected a string`).
    InvalidType(&'static str, &'static str),
    /// A required field is absent.
    MissingField(&'static str),
    /// A field the type does not have.
    UnknownField(Box<str>, &'static [&'static str]),
    /// A field given twice.
    DuplicateField(&'static str),
    /// A name that is none of an enum's variants.
    UnknownVariant(Box<str>, &'static [&'static str]),
    /// Well-formed JSON whose value the domain refuses (an amount, a currency, an id…).
    Invalid(Box<Error>),
}

impl Reject {
    /// A rejection at byte `at`.
    pub(crate) fn new(at: usize, fault: Fault) -> Self {
        Reject(Box::new(Rejection {
            at,
            fault,
            path: Vec::new(),
        }))
    }

    /// The same rejection, one step further out: inside `seg`.
    pub(crate) fn within(mut self, seg: Seg) -> Self {
        self.0.path.push(seg);
        self
    }

    /// The path of the value the rejection is about, as the API names fields
    /// (`fees[1].bps`, `roles.buyer.max`); a missing, unknown or repeated member is
    /// named itself. Empty for the document as a whole.
    pub(crate) fn path(&self) -> String {
        let mut out = String::new();
        let name = |out: &mut String, n: &str| {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(n);
        };
        for seg in self.0.path.iter().rev() {
            match seg {
                Seg::Field(f) => name(&mut out, f),
                Seg::Key(k) => name(&mut out, &crate::error::echo(k)),
                Seg::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
            }
        }
        match &self.0.fault {
            Fault::MissingField(f) | Fault::DuplicateField(f) => name(&mut out, f),
            Fault::UnknownField(f, _) => name(&mut out, &crate::error::echo(f)),
            _ => {}
        }
        out
    }

    /// Where the input was rejected.
    pub(crate) fn at(&self) -> usize {
        self.0.at
    }

    /// The crate's error for this rejection of `input` (the text the reader read, for
    /// the line and column): a value's own error keeps its code, anything else is
    /// `malformed_json`. The message ends with the position, as serde_json's do.
    pub(crate) fn into_error(self, input: &[u8]) -> Error {
        let Rejection { at, fault, .. } = *self.0;
        let upto = input.get(..at).unwrap_or(input);
        let line = 1 + upto.iter().filter(|&&c| c == b'\n').count();
        let column = upto.iter().rev().take_while(|&&c| c != b'\n').count() + 1;
        let where_ = format!(" at line {line} column {column}");
        let names = |fields: &[&str]| {
            fields
                .iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let message = match fault {
            Fault::Syntax(what) => what.to_string(),
            Fault::InvalidType(found, expected) => format!("invalid type: {found}, {expected}"),
            Fault::MissingField(f) => format!("missing field `{f}`"),
            Fault::UnknownField(f, fields) => {
                let f = crate::error::echo(&f);
                match fields.len() {
                    0 => format!("unknown field `{f}`, there are no fields"),
                    _ => format!("unknown field `{f}`, expected one of {}", names(fields)),
                }
            }
            Fault::DuplicateField(f) => format!("duplicate field `{f}`"),
            Fault::UnknownVariant(v, names_of) => {
                let v = crate::error::echo(&v);
                format!("unknown variant `{v}`, expected one of {}", names(names_of))
            }
            Fault::Invalid(e) => {
                // A malformed-JSON error inside is said once, not as
                // "malformed json: malformed json: …".
                let message = match &*e {
                    Error::MalformedJson(m) => format!("{m}{where_}"),
                    other => format!("{other}{where_}"),
                };
                let code = e.code();
                return if crate::error::INPUT_CODES.contains(&code) {
                    Error::InvalidInput { code, message }
                } else {
                    Error::MalformedJson(message)
                };
            }
        };
        Error::MalformedJson(format!("{message}{where_}"))
    }
}

/// What a read gives.
pub(crate) type Read<T> = std::result::Result<T, Reject>;

/// What [`Reader::each_member`] calls for each member: the reader at the value, where
/// the key started, the key.
type Member<'a, 'c, 'f> = dyn FnMut(&mut Reader<'a, 'c>, usize, &[u8]) -> Read<()> + 'f;

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

    /// Where the reader is.
    pub(crate) fn position(&self) -> usize {
        self.i
    }

    /// A fault at the current position.
    pub(crate) fn fault(&self, fault: Fault) -> Reject {
        Reject::new(self.i, fault)
    }

    fn syntax(&self, what: &'static str) -> Reject {
        self.fault(Fault::Syntax(what))
    }

    /// A value the domain refuses, reported where the value started.
    pub(crate) fn invalid(&self, at: usize, e: Error) -> Reject {
        Reject::new(at, Fault::Invalid(Box::new(e)))
    }

    #[inline(always)]
    pub(crate) fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    #[inline(always)]
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    #[inline(always)]
    fn eat(&mut self, c: u8, what: &'static str) -> Read<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            return Ok(());
        }
        self.not_eaten(what)
    }

    /// Why the byte [`Reader::eat`] expected is not next.
    #[cold]
    fn not_eaten(&mut self, what: &'static str) -> Read<()> {
        match self.peek() {
            None => Err(self.syntax("EOF while parsing a value")),
            Some(found) if what.starts_with("expected a") => {
                let found = match found {
                    b'"' => "string",
                    b'{' => "map",
                    b'[' => "sequence",
                    b't' | b'f' => "boolean",
                    b'n' => "null",
                    b'-' | b'0'..=b'9' => "number",
                    _ => return Err(self.syntax("expected value")),
                };
                Err(self.fault(Fault::InvalidType(found, what)))
            }
            Some(_) => Err(self.syntax(what)),
        }
    }

    /// Only whitespace is left.
    pub(crate) fn end(&mut self) -> Read<()> {
        self.ws();
        if self.i == self.b.len() {
            Ok(())
        } else {
            Err(self.syntax("trailing characters"))
        }
    }

    /// The value read ends exactly at byte `end` (the end of its span, which holds no
    /// trailing whitespace).
    pub(crate) fn end_at(&mut self, end: usize) -> Read<()> {
        if self.i == end {
            Ok(())
        } else {
            Err(self.syntax("trailing characters"))
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
            Err(self.syntax("expected `null`"))
        }
    }

    /// A string, borrowed when it has no escapes.
    pub(crate) fn str(&mut self) -> Read<Cow<'a, str>> {
        self.eat(b'"', "expected a string")?;
        let start = self.i;
        let rest = self.b.get(start..).unwrap_or_default();
        let Some(len) = plain_len(rest) else {
            self.i = self.b.len();
            return Err(self.syntax("EOF while parsing a string"));
        };
        let plain = self.utf8(&rest[..len])?;
        self.i = start + len;
        if rest[len] == b'"' {
            self.i += 1;
            return Ok(Cow::Borrowed(plain));
        }
        let mut s = String::from(plain);
        loop {
            let Some(&c) = self.b.get(self.i) else {
                return Err(self.syntax("EOF while parsing a string"));
            };
            match c {
                b'"' => {
                    self.i += 1;
                    return Ok(Cow::Owned(s));
                }
                b'\\' => {
                    let Some(&e) = self.b.get(self.i + 1) else {
                        self.i = self.b.len();
                        return Err(self.syntax("EOF while parsing a string"));
                    };
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
                        b'u' => self.unicode_escape()?,
                        _ => {
                            self.i -= 1;
                            return Err(self.syntax("invalid escape"));
                        }
                    };
                    s.push(c);
                }
                c if c < 0x20 => {
                    return Err(self.syntax(
                        "control character (\\u0000-\\u001F) found while parsing a string",
                    ))
                }
                _ => {
                    let rest = &self.b[self.i..];
                    let Some(len) = plain_len(rest) else {
                        self.i = self.b.len();
                        return Err(self.syntax("EOF while parsing a string"));
                    };
                    s.push_str(self.utf8(&rest[..len])?);
                    self.i += len;
                }
            }
        }
    }

    fn utf8<'s>(&self, b: &'s [u8]) -> Read<&'s str> {
        std::str::from_utf8(b).map_err(|e| {
            Reject::new(
                self.i + e.valid_up_to(),
                Fault::Syntax("invalid unicode code point"),
            )
        })
    }

    /// The character of a `\\uXXXX` escape (after the `u`), with the second half of a
    /// surrogate pair when the first is one.
    fn unicode_escape(&mut self) -> Read<char> {
        let hi = self.hex4()?;
        if !(0xD800..0xE000).contains(&hi) {
            return char::from_u32(hi).ok_or_else(|| self.syntax("invalid unicode code point"));
        }
        if hi >= 0xDC00 {
            return Err(self.syntax("lone leading surrogate in hex escape"));
        }
        if self.b.get(self.i..self.i + 2) != Some(b"\\u") {
            return Err(self.syntax("unexpected end of hex escape"));
        }
        self.i += 2;
        let lo = self.hex4()?;
        if !(0xDC00..0xE000).contains(&lo) {
            return Err(self.syntax("lone leading surrogate in hex escape"));
        }
        char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
            .ok_or_else(|| self.syntax("invalid unicode code point"))
    }

    fn hex4(&mut self) -> Read<u32> {
        let mut n = 0u32;
        for k in 0..4 {
            let d = self
                .b
                .get(self.i + k)
                .and_then(|&d| char::from(d).to_digit(16));
            match d {
                Some(d) => n = n * 16 + d,
                None => {
                    self.i += k;
                    return Err(self.syntax("invalid escape"));
                }
            }
        }
        self.i += 4;
        Ok(n)
    }

    /// An object key: borrowed when plain, decoded when escaped.
    fn key(&mut self) -> Read<Cow<'a, [u8]>> {
        match self.peek() {
            Some(b'"') => {}
            None => return Err(self.syntax("EOF while parsing an object")),
            Some(_) => return Err(self.syntax("key must be a string")),
        }
        let rest = self.b.get(self.i + 1..).unwrap_or_default();
        if let Some(len) = plain_len(rest) {
            if rest[len] == b'"' {
                self.i += 1;
                let key = self.utf8(&rest[..len])?;
                self.i += len + 1;
                return Ok(Cow::Borrowed(key.as_bytes()));
            }
        }
        Ok(match self.str()? {
            Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
            Cow::Owned(s) => Cow::Owned(s.into_bytes()),
        })
    }

    /// An object, each member given to `member` with where its key starts and the key
    /// (escapes decoded), the reader at the value. The one loop over members that the
    /// readers below share.
    fn each_member(&mut self, member: &mut Member<'a, 'c, '_>) -> Read<()> {
        self.eat(b'{', "expected an object")?;
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            let at = self.i;
            let key = self.key()?;
            self.eat(b':', "expected `:`")?;
            member(self, at, &key)?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                None => return Err(self.syntax("EOF while parsing an object")),
                _ => return Err(self.syntax("expected `,` or `}`")),
            }
        }
    }

    /// An object whose keys are all in `fields` (each given to `field` by its index,
    /// with the reader at the value). Unknown keys are rejected; duplicates are the
    /// caller's to reject (see [`once`]).
    pub(crate) fn object(
        &mut self,
        fields: &'static [&'static str],
        field: &mut dyn FnMut(&mut Self, usize) -> Read<()>,
    ) -> Read<()> {
        self.each_member(&mut |r, at, key| {
            let k = fields
                .iter()
                .position(|f| f.len() == key.len() && same(f.as_bytes(), key));
            match k {
                Some(k) => field(r, k),
                None => {
                    let name = String::from_utf8_lossy(key).into();
                    Err(Reject::new(at, Fault::UnknownField(name, fields)))
                }
            }
        })
    }

    /// An object whose every member is given to `member` by its key, with the reader at
    /// the value (which `member` must read or skip).
    pub(crate) fn members(
        &mut self,
        member: &mut dyn FnMut(&mut Self, &[u8]) -> Read<()>,
    ) -> Read<()> {
        self.each_member(&mut |r, _, key| member(r, key))
    }

    /// An object's members with their keys as strings: `entry` gets the reader at the
    /// value, where the key started, and the key.
    pub(crate) fn entries(
        &mut self,
        entry: &mut dyn FnMut(&mut Self, usize, &str) -> Read<()>,
    ) -> Read<()> {
        self.each_member(&mut |r, at, key| {
            let key = std::str::from_utf8(key)
                .map_err(|_| Reject::new(at, Fault::Syntax("invalid unicode code point")))?;
            entry(r, at, key)
        })
    }

    /// `true` or `false`.
    pub(crate) fn boolean(&mut self) -> Read<bool> {
        match self.peek() {
            Some(b't') if self.b.get(self.i..self.i + 4) == Some(b"true") => {
                self.i += 4;
                Ok(true)
            }
            Some(b'f') if self.b.get(self.i..self.i + 5) == Some(b"false") => {
                self.i += 5;
                Ok(false)
            }
            // A word that starts like one but is not (`t`, `fals`): refused.
            Some(b't' | b'f') => Err(self.syntax("expected `true` or `false`")),
            // Anything else: "invalid type: …, expected a boolean".
            _ => self.eat(b't', "expected a boolean").map(|()| false),
        }
    }

    /// The next byte after whitespace.
    pub(crate) fn peek_byte(&mut self) -> Option<u8> {
        self.peek()
    }

    /// An object's `{`.
    pub(crate) fn open_object(&mut self) -> Read<()> {
        self.eat(b'{', "expected an object")
    }

    /// A member's `:`.
    pub(crate) fn colon(&mut self) -> Read<()> {
        self.eat(b':', "expected `:`")
    }

    /// The `}` of a one-member object.
    pub(crate) fn close_object(&mut self) -> Read<()> {
        match self.peek() {
            Some(b'}') => {
                self.i += 1;
                Ok(())
            }
            None => Err(self.syntax("EOF while parsing an object")),
            _ => Err(self.syntax("expected `}` (an enum is a map with one member)")),
        }
    }

    /// An array, each element read by `item`.
    pub(crate) fn array<T>(&mut self, mut item: impl FnMut(&mut Self) -> Read<T>) -> Read<Vec<T>> {
        self.eat(b'[', "expected an array")?;
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
                None => return Err(self.syntax("EOF while parsing a list")),
                _ => return Err(self.syntax("expected `,` or `]`")),
            }
        }
    }

    /// The bytes of the next value, checked to be well-formed JSON (whoever takes them
    /// reads their content).
    pub(crate) fn raw(&mut self) -> Read<&'a [u8]> {
        self.ws();
        let start = self.i;
        self.skip(0)?;
        Ok(self.b.get(start..self.i).unwrap_or_default())
    }

    /// Skips one well-formed value, `depth` levels deep.
    fn skip(&mut self, depth: usize) -> Read<()> {
        if depth > 128 {
            return Err(self.syntax("recursion limit exceeded"));
        }
        match self.peek() {
            None => Err(self.syntax("EOF while parsing a value")),
            Some(b'"') => self.str().map(drop),
            Some(b'{') => self.each_member(&mut |r, _, _| r.skip(depth + 1)),
            Some(b'[') => self.array(|r| r.skip(depth + 1)).map(drop),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.syntax("expected value")),
        }
    }

    fn literal(&mut self, word: &'static [u8]) -> Read<()> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.syntax("expected value"))
        }
    }

    /// Skips a number: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Read<()> {
        let digits = |r: &mut Self| {
            let from = r.i;
            while r.b.get(r.i).is_some_and(u8::is_ascii_digit) {
                r.i += 1;
            }
            r.i - from
        };
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        let lead = self.b.get(self.i).copied();
        let n = digits(self);
        if n == 0 {
            return Err(self.syntax("invalid number"));
        }
        if n > 1 && lead == Some(b'0') {
            return Err(self.syntax("invalid number"));
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if digits(self) == 0 {
                return Err(self.syntax("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.b.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.b.get(self.i) {
                self.i += 1;
            }
            if digits(self) == 0 {
                return Err(self.syntax("invalid number"));
            }
        }
        Ok(())
    }

    /// An unsigned integer as JSON writes it (no sign, fraction, exponent or leading
    /// zero).
    pub(crate) fn uint(&mut self) -> Read<u64> {
        self.ws();
        let rest = self.b.get(self.i..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|c| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if len == 0 {
            return Err(self.syntax("expected an unsigned integer"));
        }
        if (len > 1 && rest[0] == b'0') || matches!(rest.get(len), Some(b'.' | b'e' | b'E')) {
            return Err(
                self.syntax("expected an unsigned integer (no leading zero, fraction or exponent)")
            );
        }
        let mut n = 0u64;
        for &c in &rest[..len] {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(c - b'0')))
                .ok_or_else(|| self.syntax("number out of range"))?;
        }
        self.i += len;
        Ok(n)
    }

    /// A reader over the same input at byte `i`, sharing the policy cache.
    pub(crate) fn sub(&mut self, i: usize) -> Reader<'a, '_> {
        Reader {
            b: self.b,
            i,
            policies: self.policies.as_deref_mut(),
        }
    }

    /// The policy cache, if the caller gave one.
    pub(crate) fn policies(&mut self) -> Option<&mut PolicyCache> {
        self.policies.as_deref_mut()
    }
}

/// How many bytes of `b` precede the first `"`, `\\` or control character (`None`
/// when there is none). Eight bytes at a time (a 64-bit word: wasm32's `usize` has 32
/// bits), as in [`same`].
fn plain_len(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Non-zero when some byte of `x` is zero (exact about whether one is, not which).
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut i = 0;
    // Eight bytes at a time while none of them ends the plain run.
    while let Some(Ok(chunk)) = b.get(i..i + 8).map(<&[u8; 8]>::try_from) {
        let w = u64::from_le_bytes(*chunk);
        let stop = zero_byte(w ^ (ONES * u64::from(b'"')))
            | zero_byte(w ^ (ONES * u64::from(b'\\')))
            | (w.wrapping_sub(ONES * 0x20) & !w & HIGH);
        if stop != 0 {
            break;
        }
        i += 8;
    }
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\\' || c < 0x20 {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Whether two byte strings are equal: a loop over 64-bit words, since these are
/// short and a call to `memcmp` costs more than the comparison in the size-optimised
/// WebAssembly build (whose `memcmp` goes byte by byte).
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    // Eight bytes at a time, then byte by byte.
    while let (Some(Ok(x)), Some(Ok(y))) = (
        a.get(i..i + 8).map(<&[u8; 8]>::try_from),
        b.get(i..i + 8).map(<&[u8; 8]>::try_from),
    ) {
        if u64::from_le_bytes(*x) != u64::from_le_bytes(*y) {
            return false;
        }
        i += 8;
    }
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Reads an object's members into a struct (or a struct variant) and builds it:
/// `read_members!(r, Path { a: A, b: B [default], c: C [default = f], d: D [skip_none] })`
/// (every field, in declaration order; `[default]` and `[skip_none]` fields take
/// `Default::default()` when absent, `[default = f]` fields `f()`, the others are
/// required). `read_members!(r, [tag "type"] Path { … })` also takes the tag member of an
/// internally tagged enum (checked by the caller) and ignores it. Unknown and repeated
/// members are refused. Evaluates to `Read<Path>`; a missing field returns from the
/// enclosing function.
macro_rules! read_members {
    ($r:ident, $([tag $tag:literal])? $($ctor:ident)::+ { $($field:ident : $ty:ty $([$($default:tt)*])?),* $(,)? }) => {{
        const FIELDS: &[&str] = &[$($tag,)? $(stringify!($field)),*];
        $( let mut $field: Option<$ty> = None; )*
        $r.object(FIELDS, &mut |r, k| {
            let mut _n = 0usize;
            $(
                let _: &str = $tag;
                if k == _n {
                    return r.str().map(drop);
                }
                _n += 1;
            )?
            $(
                if k == _n {
                    return $crate::json::read::once(&mut $field, r, stringify!($field));
                }
                _n += 1;
            )*
            Err(r.fault($crate::json::read::Fault::Syntax("unknown field index")))
        })?;
        $(
            let $field: $ty = match $field {
                Some(v) => v,
                None => $crate::json::read::read_members!(@missing [$($($default)*)?] $r, $field),
            };
        )*
        Ok($($ctor)::+ { $($field),* })
    }};
    (@missing [] $r:ident, $field:ident) => {
        return Err($r.fault($crate::json::read::Fault::MissingField(stringify!($field))))
    };
    (@missing [default] $r:ident, $field:ident) => {
        Default::default()
    };
    (@missing [skip_none] $r:ident, $field:ident) => {
        Default::default()
    };
    (@missing [default = $f:path] $r:ident, $field:ident) => {
        $f()
    };
}

pub(crate) use read_members;

/// Reads a whole document as serde_json does: the value's syntax first (so a syntax
/// error anywhere is reported before what the value means), then the value with
/// `read`, then that nothing but whitespace follows. Errors carry their position.
pub(crate) fn document<'a, T>(
    b: &'a [u8],
    policies: Option<&mut PolicyCache>,
    read: impl FnOnce(&mut Reader<'a, '_>) -> Read<T>,
) -> crate::Result<T> {
    Reader::new(b, None)
        .raw()
        .map_err(|rejected| rejected.into_error(b))?;
    let mut r = Reader::new(b, policies);
    read(&mut r)
        .and_then(|v| r.end().map(|()| v))
        .map_err(|rejected| rejected.into_error(b))
}

/// Reads a whole document front to back, as a streaming parser does: the first
/// error in the document's order is the one reported (a value refused before a syntax
/// error later in the text), unlike [`document`], which checks the syntax first.
pub(crate) fn stream<'a, T>(
    b: &'a [u8],
    read: impl FnOnce(&mut Reader<'a, '_>) -> Read<T>,
) -> crate::Result<T> {
    let mut r = Reader::new(b, None);
    read(&mut r)
        .and_then(|v| r.end().map(|()| v))
        .map_err(|rejected| rejected.into_error(b))
}

/// A type the reader can read.
pub(crate) trait FromJson: Sized {
    /// Reads one value.
    fn from_json(r: &mut Reader<'_, '_>) -> Read<Self>;
}

/// Reads a struct field's value into its slot, rejecting a second occurrence.
pub(crate) fn once<T: FromJson>(
    slot: &mut Option<T>,
    r: &mut Reader<'_, '_>,
    name: &'static str,
) -> Read<()> {
    if slot.is_some() {
        return Err(r.fault(Fault::DuplicateField(name)));
    }
    *slot = Some(T::from_json(r).map_err(|e| e.within(Seg::Field(name)))?);
    Ok(())
}

/// Reads a string naming one of `names`, as its index (unit enums).
pub(crate) fn variant(r: &mut Reader<'_, '_>, names: &'static [&'static str]) -> Read<usize> {
    r.ws();
    let at = r.position();
    let s = r.str()?;
    names
        .iter()
        .position(|n| *n == s)
        .ok_or_else(|| Reject::new(at, Fault::UnknownVariant(s.into_owned().into(), names)))
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
        let mut i = 0;
        r.array(|r| {
            let item = T::from_json(r).map_err(|e| e.within(Seg::Index(i)));
            i += 1;
            item
        })
    }
}

macro_rules! uints {
    ($($t:ty),*) => {
        $(impl FromJson for $t {
            fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
                <$t>::try_from(r.uint()?).map_err(|_| r.syntax("number out of range"))
            }
        })*
    };
}

uints!(u8, u16, u32, u64);

/// A string value and where it started, for a domain error about it.
fn text<'a>(r: &mut Reader<'a, '_>) -> Read<(usize, Cow<'a, str>)> {
    r.ws();
    let at = r.position();
    Ok((at, r.str()?))
}

pub(crate) fn uuid(r: &mut Reader<'_, '_>) -> Read<Uuid> {
    let (at, s) = text(r)?;
    crate::id::uuid_from_ascii(s.as_bytes()).ok_or_else(|| {
        // As the uuid crate's serde impl says it (so `malformed_json`, as before).
        let why = Uuid::try_parse_ascii(s.as_bytes())
            .err()
            .map_or_else(|| "invalid UUID".to_string(), |e| e.to_string());
        r.invalid(
            at,
            Error::MalformedJson(format!("UUID parsing failed: {why}")),
        )
    })
}

impl FromJson for Uuid {
    fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
        uuid(r)
    }
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
        let (at, s) = text(r)?;
        Hash::from_hex(s.as_bytes())
            .ok_or_else(|| r.invalid(at, Error::InvalidHash(crate::error::echo(&s))))
    }
}

impl FromJson for Timestamp {
    fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
        let (at, s) = text(r)?;
        s.parse().map_err(|e| r.invalid(at, e))
    }
}

impl FromJson for crate::time::Date {
    fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
        let (at, s) = text(r)?;
        s.parse().map_err(|e| r.invalid(at, e))
    }
}

impl FromJson for Role {
    fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
        String::from_json(r).map(Role)
    }
}

impl FromJson for Currency {
    fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
        let (at, s) = text(r)?;
        Currency::new(&s).map_err(|e| r.invalid(at, e))
    }
}

impl FromJson for Money {
    fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
        const FIELDS: &[&str] = &["amount", "currency"];
        r.ws();
        let at = r.position();
        let mut amount: Option<String> = None;
        let mut currency: Option<Currency> = None;
        r.object(FIELDS, &mut |r, k| match k {
            0 => once(&mut amount, r, "amount"),
            _ => once(&mut currency, r, "currency"),
        })?;
        let amount = amount.ok_or_else(|| r.fault(Fault::MissingField("amount")))?;
        let currency = currency.ok_or_else(|| r.fault(Fault::MissingField("currency")))?;
        Money::parse(&amount, currency).map_err(|e| r.invalid(at, e))
    }
}

impl FromJson for EmbeddedPolicy {
    fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
        r.ws();
        let rest = r.b.get(r.i..).unwrap_or_default();
        let known = match r.policies.as_deref() {
            Some(cache) => cache.find_prefix(rest),
            None => EmbeddedPolicy::remembered_prefix(rest),
        };
        if let Some((len, p)) = known {
            r.i += len;
            return Ok(p);
        }
        let at = r.position();
        let raw = r.raw()?;
        let parsed = match r.policies() {
            Some(cache) => cache.get_or_parse(raw),
            None => EmbeddedPolicy::from_text(raw),
        };
        parsed.map_err(|e| r.invalid(at, e))
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

    /// The message of a rejection of `s`, as the crate reports it.
    fn message<T: FromJson + std::fmt::Debug>(s: &str) -> String {
        read::<T>(s)
            .unwrap_err()
            .into_error(s.as_bytes())
            .to_string()
    }

    /// Every string reads as serde_json reads it, and what one refuses the other
    /// refuses too.
    /// Every position of every byte that ends a plain run, in strings of 0 to 40
    /// bytes around other ASCII and UTF-8 bytes: the word-at-a-time scans answer what
    /// a byte loop answers.
    #[test]
    fn word_scans_agree_with_byte_loops() {
        let naive_len = |b: &[u8]| b.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
        let fills: [u8; 5] = [b'a', b'~', 0x7f, 0x80, 0xff];
        for len in 0..40 {
            for fill in fills {
                let plain = vec![fill; len];
                assert_eq!(plain_len(&plain), naive_len(&plain));
                assert!(same(&plain, &plain.clone()));
                for at in 0..len {
                    for stop in [b'"', b'\\', 0x00, 0x0a, 0x1f, 0x20, 0x21, 0x5b, 0x5d] {
                        let mut b = plain.clone();
                        b[at] = stop;
                        assert_eq!(plain_len(&b), naive_len(&b), "{b:?}");
                        assert_eq!(same(&b, &plain), b == plain, "{b:?}");
                        // A second stop after the first: still the first one's index.
                        if at + 1 < len {
                            b[len - 1] = b'"';
                            assert_eq!(plain_len(&b), naive_len(&b), "{b:?}");
                        }
                    }
                }
            }
        }
        assert!(!same(b"abcdefgh", b"abcdefg"));
    }

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
            r#""\ud83d""#,
            r#""\ud83dx""#,
            r#""\ud83d\u0041""#,
            r#""\ude00""#,
            r#""\x""#,
            "\"raw\ttab\"",
            r#""unterminated"#,
            r#""\u12""#,
            r#""\u12x4""#,
            r#"  "spaced"  "#,
            r#"7"#,
            r#"null"#,
        ];
        for c in cases {
            let ours = read::<String>(c).ok();
            let serde = serde_json::from_str::<String>(c).ok();
            assert_eq!(ours, serde, "{c}");
        }
        assert!(read::<String>("\"\u{ff}\"").is_ok());
        let invalid_utf8 = [b'"', b'a', 0xff, b'"'];
        let e = String::from_json(&mut Reader::new(&invalid_utf8, None)).unwrap_err();
        assert_eq!(e.at(), 2);
        assert_eq!(e.0.fault, Fault::Syntax("invalid unicode code point"));
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
        for bad in [
            &b"{\"a\":1"[..],
            b"]",
            b"\\\"a\"",
            b"{\"a\" 1}",
            b"[1,]",
            b"01",
            b"-",
            b"1.",
            b"1e",
            b"tru",
            b"{a:1}",
        ] {
            assert!(
                Reader::new(bad, None).raw().is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
            assert!(serde_json::from_slice::<serde::de::IgnoredAny>(bad).is_err());
        }
        for good in [
            &b"-0.5e+3"[..],
            b"[[],{},\"\\u0041\",null,true,false,0]",
            b"{\"a\":{\"b\":[1]}}",
        ] {
            let mut r = Reader::new(good, None);
            assert_eq!(r.raw(), Ok(good));
        }
    }

    #[test]
    fn money_ids_and_options() {
        let m: Money = read(r#"{"currency":"USD","amount":"12.50"}"#).unwrap();
        assert_eq!(
            m,
            serde_json::from_str::<Money>(r#"{"amount":"12.50","currency":"USD"}"#).unwrap()
        );
        let id = "7d0f6a36-8f0e-4e7e-9a51-0c1b2d3e4f50";
        let p: PartyId = read(&format!("\"{id}\"")).unwrap();
        assert_eq!(p.to_string(), id);
        assert_eq!(read::<Option<PartyId>>(" null "), Ok(None));
        assert_eq!(
            read::<Vec<Role>>(r#"[ "buyer" , "seller" ]"#).map(|v| v.len()),
            Ok(2)
        );
        assert_eq!(read::<Vec<Role>>(r#"[]"#), Ok(vec![]));
    }

    /// A key that is not UTF-8 is refused where it is, even by the syntax check (as
    /// serde_json refuses it when it reads keys, e.g. buffering a tagged command).
    #[test]
    fn keys_must_be_utf8() {
        let input = b"{\"type\":\"Join\",\"a\xff\":1}";
        let e = Reader::new(input, None).raw().unwrap_err();
        assert_eq!(e.at(), 17);
        assert!(serde_json::from_slice::<crate::command::Command>(input).is_err());
    }

    /// Refusals name the problem and where it is, with the domain's code when a value
    /// is at fault.
    #[test]
    fn refusals_say_what_and_where() {
        for (input, want) in [
            (
                r#"{"amount":"1","amount":"2","currency":"USD"}"#,
                "duplicate field `amount` at line 1 column 24",
            ),
            (
                r#"{"amount":"1"}"#,
                "missing field `currency` at line 1 column 15",
            ),
            (
                r#"{"amount":"1","currency":"USD","x":1}"#,
                "unknown field `x`, expected one of `amount`, `currency` at line 1 column 32",
            ),
            (
                r#"{"amount":"1" "currency":"USD"}"#,
                "expected `,` or `}` at line 1 column 15",
            ),
            (
                "{\n\"amount\":7}",
                "invalid type: number, expected a string at line 2 column 10",
            ),
            (
                r#"{"amount":"1","#,
                "EOF while parsing an object at line 1 column 15",
            ),
        ] {
            assert_eq!(
                message::<Money>(input),
                format!("malformed json: {want}"),
                "{input}"
            );
        }
        let e = read::<Money>(r#"{"amount":"1.001","currency":"USD"}"#)
            .unwrap_err()
            .into_error(br#"{"amount":"1.001","currency":"USD"}"#);
        assert_eq!(e.code(), "invalid_amount_scale");
        assert!(e.to_string().ends_with(" at line 1 column 1"), "{e}");
        let e = read::<PartyId>("\"not-a-uuid\"")
            .unwrap_err()
            .into_error(b"\"not-a-uuid\"");
        assert_eq!(e.code(), "malformed_json");
        assert!(e.to_string().contains("UUID parsing failed"), "{e}");
        assert_eq!(
            message::<Option<PartyId>>("nul"),
            "malformed json: expected `null` at line 1 column 1"
        );
        // Found by the property test: `t` alone once read as `false`.
        for word in ["t", "t }", "tru", "f", "fals", "falsy"] {
            assert_eq!(
                message::<bool>(word),
                "malformed json: expected `true` or `false` at line 1 column 1",
                "{word}"
            );
        }
        assert_eq!(
            message::<bool>("\"true\""),
            "malformed json: invalid type: string, expected a boolean at line 1 column 1"
        );
        assert_eq!(
            message::<Vec<Role>>(r#"["buyer",]"#),
            "malformed json: expected value at line 1 column 10"
        );
        assert_eq!(
            message::<crate::policy::Rail>(r#""mail""#),
            "malformed json: unknown variant `mail`, expected one of `ach`, `wire`, `rtp`, `card`, `book` at line 1 column 1"
        );
    }
}
