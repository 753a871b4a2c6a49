//! The core's own JSON codec for its hot paths: reading event payloads
//! ([`read`]) and writing canonical JSON ([`write`]).
//!
//! serde's derived code, monomorphized for every core type over `serde_json`, is most
//! of the WebAssembly module and, at the size-optimised level the module is built
//! with, most of a replay's time. This codec is one small, non-generic tokenizer and
//! writer plus a short reader/writer per type. It produces exactly what the serde path
//! produces (the tests compare the two on every golden vector and on damaged copies),
//! and where it is unsure — anything it does not accept — the caller falls back to the
//! serde path, which then reports the error as before.

pub(crate) mod read;
pub(crate) mod write;
