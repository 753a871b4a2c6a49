//! The core's own JSON codec: reading envelopes, event payloads, commands and policies
//! ([`read`]) and writing canonical JSON ([`write`]).
//!
//! serde's derived code, monomorphized for every core type over `serde_json`, was most
//! of the WebAssembly module and, at the size-optimised level the module is built
//! with, most of a replay's time. This codec is one small, non-generic tokenizer and
//! writer plus a short reader/writer per type. It is what the core, the server and the
//! SDKs read those documents with (serde's `Deserialize` for `Envelope` delegates to
//! it). It produces what the serde derives produce and reports errors with the same
//! codes; the tests compare the two on every golden vector, on damaged copies and on
//! randomly mutated policies and commands. By design it refuses a JSON array where an
//! object belongs, which serde's derived struct decoders accept.

//!
//! For clients, a few functions read small documents of other shapes (an HTTP
//! response body, a problem document) with the same reader, so that a client needs no
//! JSON library of its own (the WebAssembly SDK ships none):
//!
//! ```
//! use trustfold_core::json;
//! let doc = br#"{"code": "version_conflict", "current_version": 7, "extra": [1, {"x": null}]}"#;
//! let members = json::object_members(doc)?;
//! assert_eq!(members.len(), 3);
//! assert_eq!(members[0].0, "code");
//! assert_eq!(json::string(members[0].1)?, "version_conflict");
//! assert_eq!(json::uint(members[1].1)?, 7);
//! assert_eq!(members[2].1, br#"[1, {"x": null}]"#);
//! assert_eq!(json::object_members(b"[]").unwrap_err().code(), "malformed_json");
//! # Ok::<(), trustfold_core::Error>(())
//! ```

use std::borrow::Cow;

use crate::error::Result;

pub(crate) mod read;
pub(crate) mod write;

/// The members of the JSON object `doc`, in order: each key, and the bytes of its
/// value (well-formed JSON, without the whitespace around it). A document that is not
/// one object, or not well-formed, is `malformed_json` with its position.
pub fn object_members(doc: &[u8]) -> Result<Vec<(String, &[u8])>> {
    read::document(doc, None, |r| {
        let mut out = Vec::new();
        r.entries(&mut |r, _, key| {
            let value = r.raw()?;
            out.push((key.to_owned(), value));
            Ok(())
        })?;
        Ok(out)
    })
}

/// The items of the JSON array `doc`, in order: the bytes of each (well-formed JSON,
/// without the whitespace around it). A document that is not one array, or not
/// well-formed, is `malformed_json` with its position.
///
/// ```
/// use trustfold_core::json;
/// let items = json::array_items(br#"[ {"seq": 1}, 2 ,"x"]"#)?;
/// assert_eq!(items, vec![&br#"{"seq": 1}"#[..], b"2", br#""x""#]);
/// assert_eq!(json::array_items(b"{}").unwrap_err().code(), "malformed_json");
/// # Ok::<(), trustfold_core::Error>(())
/// ```
pub fn array_items(doc: &[u8]) -> Result<Vec<&[u8]>> {
    read::document(doc, None, |r| r.array(|r| r.raw()))
}

/// The text of a JSON string (escapes resolved); `malformed_json` for anything else.
pub fn string(value: &[u8]) -> Result<String> {
    read::document(value, None, |r| r.str().map(Cow::into_owned))
}

/// A JSON number that is an unsigned integer (as `u64`); `malformed_json` otherwise.
pub fn uint(value: &[u8]) -> Result<u64> {
    read::document(value, None, |r| r.uint())
}

/// `true` or `false`; `malformed_json` for anything else.
pub fn boolean(value: &[u8]) -> Result<bool> {
    read::document(value, None, |r| r.boolean())
}

/// Whether `value` is JSON's `null` (whitespace around it allowed).
pub fn is_null(value: &[u8]) -> bool {
    value.trim_ascii() == b"null"
}

/// Helpers for the tests that compare the reader with serde.
#[cfg(test)]
pub(crate) mod testing {
    use crate::error::Error;

    /// `d` with the byte at `at` replaced by each of a few troublesome ones, and with
    /// a `"` inserted there.
    pub(crate) fn damaged(d: &[u8], at: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for r in [
            &b""[..],
            b" ",
            b"\"",
            b"\\",
            b"x",
            b"0",
            b"}",
            b"]",
            b",",
            b"{",
            b"null",
        ] {
            let mut m = d[..at].to_vec();
            m.extend_from_slice(r);
            m.extend_from_slice(&d[(at + 1).min(d.len())..]);
            out.push(m);
        }
        let mut m = d[..at].to_vec();
        m.push(b'"');
        m.extend_from_slice(&d[at..]);
        out.push(m);
        out
    }

    /// serde's result for `T`, with this crate's error code for an error.
    pub(crate) fn serde_code<'a, T: serde::Deserialize<'a>>(
        b: &'a [u8],
    ) -> std::result::Result<T, &'static str> {
        serde_json::from_slice::<T>(b).map_err(|e| Error::from(e).code())
    }
}
