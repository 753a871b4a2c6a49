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

pub(crate) mod read;
pub(crate) mod write;
