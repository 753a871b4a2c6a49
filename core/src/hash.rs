//! SHA-256 digests written as 64 lower-case hex digits.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::error::Error;

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// All zeros: the `prev` of a stream's first event.
    pub const ZERO: Hash = Hash([0u8; 32]);

    /// SHA-256 of `bytes`.
    ///
    /// ```
    /// use trustfold_core::hash::Hash;
    /// assert_eq!(Hash::of(b"abc").to_string(),
    ///     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    /// ```
    pub fn of(bytes: &[u8]) -> Hash {
        Hash(Sha256::digest(bytes).into())
    }

    /// SHA-256 of each message, in order: `Hash::of` of each. In WebAssembly builds
    /// with SIMD (the npm package's Node module), four at a time (see `lanes`).
    ///
    /// ```
    /// use trustfold_core::hash::Hash;
    /// let m: [&[u8]; 3] = [b"abc", b"", b"abcdef"];
    /// assert_eq!(Hash::of_each(&m), m.map(Hash::of));
    /// ```
    pub fn of_each(messages: &[&[u8]]) -> Vec<Hash> {
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        {
            lanes_of_each(messages)
        }
        #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
        {
            messages.iter().map(|m| Hash::of(m)).collect()
        }
    }

    /// Parses 64 hex digits (either case) from bytes.
    pub fn from_hex(hex: &[u8]) -> Option<Hash> {
        let hex = <&[u8; 64]>::try_from(hex).ok()?;
        let mut out = [0u8; 32];
        // An index loop: iterator adapters are not inlined in the size-optimised
        // WebAssembly build.
        let mut i = 0;
        while i < 8 {
            let four = hex8(word(hex, 8 * i))?;
            out[4 * i] = four[0];
            out[4 * i + 1] = four[1];
            out[4 * i + 2] = four[2];
            out[4 * i + 3] = four[3];
            i += 1;
        }
        Some(Hash(out))
    }

    /// Writes the 64 lower-case hex digits into `out`.
    pub fn write_hex(&self, out: &mut [u8; 64]) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(b >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(b & 15)];
        }
    }
}

#[cfg(any(test, all(target_arch = "wasm32", target_feature = "simd128")))]
mod lanes;

/// [`Hash::of_each`] in lanes (see [`lanes::of_all`]).
#[cfg(any(test, all(target_arch = "wasm32", target_feature = "simd128")))]
fn lanes_of_each(messages: &[&[u8]]) -> Vec<Hash> {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    type L = core::arch::wasm32::v128;
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    type L = [u32; 4];
    lanes::of_all::<L>(messages).into_iter().map(Hash).collect()
}

/// The eight bytes of `b` from `at` as a little-endian word (`0` past the end, which
/// is not eight hex digits).
#[inline(always)]
pub(crate) fn word(b: &[u8], at: usize) -> u64 {
    match b.get(at..at + 8).map(<&[u8; 8]>::try_from) {
        Some(Ok(w)) => u64::from_le_bytes(*w),
        _ => 0,
    }
}

/// Eight hex digits (either case), as a little-endian word (see [`word`]), as four
/// bytes; `None` if any is not a hex digit.
///
/// All eight at once in a 64-bit word (SWAR): the hex strings of hashes and ids are
/// most of the bytes a fold reads, and a table lookup per digit costs about twice as
/// much in the size-optimised WebAssembly build.
#[inline(always)]
pub(crate) fn hex8(w: u64) -> Option<[u8; 4]> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = ONES * 0x80;
    if w & HIGH != 0 {
        return None;
    }
    // With every byte below 0x80, adding 0x80 - n sets a byte's high bit exactly when
    // the byte is >= n, and never carries into the next byte.
    let at_least = |x: u64, n: u8| x.wrapping_add(ONES * u64::from(0x80 - n)) & HIGH;
    let digit = at_least(w, b'0') & !at_least(w, b'9' + 1);
    // Setting bit 5 folds 'A'..='F' onto 'a'..='f' (and nothing else onto them).
    let lower = w | (ONES * 0x20);
    let letter = at_least(lower, b'a') & !at_least(lower, b'f' + 1);
    if digit | letter != HIGH {
        return None;
    }
    // A digit's value is its low nibble; a letter's is its low nibble + 9 (bit 6 marks
    // letters).
    let v = (w & (ONES * 0x0f)) + 9 * ((w >> 6) & ONES);
    // Pairs of nibbles into bytes, then the bytes together.
    const PAIRS: u64 = 0x00ff_00ff_00ff_00ff;
    let t = ((v & PAIRS) << 4) | ((v >> 8) & PAIRS);
    let t = (t | (t >> 8)) & 0x0000_ffff_0000_ffff;
    let t = (t | (t >> 16)) & 0xffff_ffff;
    Some((t as u32).to_le_bytes())
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 64];
        self.write_hex(&mut buf);
        // Hex digits are ASCII.
        f.write_str(std::str::from_utf8(&buf).unwrap_or_default())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Hash {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Hash::from_hex(s.as_bytes()).ok_or_else(|| Error::InvalidHash(crate::error::echo(s)))
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 64];
        self.write_hex(&mut buf);
        s.serialize_str(std::str::from_utf8(&buf).unwrap_or_default())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s: Cow<'de, str> = Cow::deserialize(d)?;
        s.parse()
            .map_err(|e: Error| D::Error::custom(crate::money::tagged(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digit(c: u8) -> Option<u8> {
        char::from(c).to_digit(16).map(|d| d as u8)
    }

    /// Every byte value at every position of eight digits: `hex8` answers what a
    /// digit-by-digit conversion answers.
    #[test]
    fn eight_digits_at_once_agree_with_one_at_a_time() {
        for base in [*b"0123abcd", *b"ABCDEF89", *b"ffffffff", *b"00000000"] {
            for i in 0..8 {
                for c in 0..=255u8 {
                    let mut d = base;
                    d[i] = c;
                    let slow: Option<Vec<u8>> = d
                        .chunks(2)
                        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
                        .collect();
                    let got = hex8(u64::from_le_bytes(d)).map(|b| b.to_vec());
                    assert_eq!(got, slow, "{d:?}");
                }
            }
        }
    }

    /// In lanes, in order: the same hashes as one at a time.
    #[test]
    fn four_at_a_time_in_order() {
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        for n in [0, 1, 3, 4, 5, 9, 17] {
            let m: Vec<&[u8]> = (0..n)
                .map(|i| &data[i * 7..i * 7 + (i * 389) % 2000])
                .collect();
            let want: Vec<Hash> = m.iter().map(|x| Hash::of(x)).collect();
            assert_eq!(lanes_of_each(&m), want, "{n} messages");
            assert_eq!(Hash::of_each(&m), want);
        }
    }

    #[test]
    fn hashes_read_back_from_their_hex() {
        let h = Hash::of(b"abc");
        let hex = h.to_string();
        assert_eq!(Hash::from_hex(hex.as_bytes()), Some(h));
        assert_eq!(Hash::from_hex(hex.to_uppercase().as_bytes()), Some(h));
        assert_eq!(Hash::from_hex(&hex.as_bytes()[1..]), None);
        for i in 0..64 {
            let mut d = hex.clone().into_bytes();
            d[i] = b'g';
            assert_eq!(Hash::from_hex(&d), None, "{i}");
        }
    }
}
