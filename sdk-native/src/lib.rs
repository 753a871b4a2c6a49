//! # trustfold
//!
//! The Rust SDK of trustfold, the toolkit for **brokered, multi-party payments**. Every
//! change to a payment is an event in a SHA-256 hash-chained log, signed at its head by
//! the server; the payment's state is a fold over its events, computed by the same
//! pure core ([`trustfold-core`](trustfold_core), re-exported here) on the server and
//! on your side. So whoever holds a history can check it and rebuild the state
//! themselves, trusting no one.
//!
//! What this crate adds around the core:
//!
//! - [`verify`] — the **offline verifier**: a history file or a whole multi-payment
//!   [`export`], streamed line by line with memory flat in its length (a reader
//!   thread, 2–8 folding threads and, for exports, one for the signed heads);
//!   it reports the exact broken event (payment, seq, line, the core's reason).
//! - [`export`] — the export format (NDJSON records grouped by payment, plus signed
//!   heads) and a writer for it.
//! - [`client`] — an async HTTP client for the trustfold server (reqwest + rustls):
//!   typed calls and errors, automatic `Idempotency-Key`, retries with backoff on
//!   connection errors and 5xx only.
//! - [`replica`] — a local verified replica of a payment: incremental fetch, hash
//!   chain and signed head checked against a pinned key, folded with the core, and
//!   compared with the server's read model; live updates over SSE.
//! - [`subscription`] — a catch-up subscription over the tenant-wide feed with a
//!   checkpoint you store where you like ([`subscription::Checkpoint`]; a file is
//!   one, [`subscription::FileCheckpoint`]).
//! - [`webhook`] — Standard Webhooks signature verification, and the server's webhook events
//!   read and checked against their hashes (`Webhook::verify_event_at`).
//! - the `trustfold` command-line tool: `verify`, `replay`, `fetch`, `tail`.
//!
//! ## Example: verify an exported history offline
//!
//! ```
//! use trustfold::prelude::*;
//! use trustfold::verify::Verifier;
//! # let vectors = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/tests/vectors/");
//! # let dir = tempfile::tempdir()?;
//! # let history = dir.path().join("payment.history.json");
//! # std::fs::copy(format!("{vectors}em_happy_wire.history.json"), &history)?;
//! # let expected: serde_json::Value = serde_json::from_slice(&std::fs::read(format!("{vectors}em_happy_wire.expected.json"))?)?;
//! # let head_file = dir.path().join("head.json");
//! # std::fs::write(&head_file, expected["head"].to_string())?;
//! // The server's public key, pinned out of band (GET /v1/server-key).
//! let key: PublicKey = "2152f8d19b791d24453242e15f2eab6cb7cffa7b6a5ed30097960e069881db12".parse()?;
//! let report = Verifier::new().key(key).heads_file(&head_file).verify_path(&history)?;
//! let state = report.last.expect("one payment");
//! assert_eq!(state.status, Status::Closed);
//! assert_eq!(report.signed, 1);
//!
//! // A tampered copy fails at the exact event.
//! let mut bytes = std::fs::read(&history)?;
//! let at = bytes.windows(9).rposition(|w| w == b"\"amount\":").expect("an amount");
//! bytes[at + 11] = if bytes[at + 11] == b'1' { b'2' } else { b'1' };
//! std::fs::write(&history, &bytes)?;
//! let err = Verifier::new().key(key).heads_file(&head_file).verify_path(&history).unwrap_err();
//! let broken = err.broken().expect("a broken event");
//! assert_eq!(broken.error.code(), "chain_broken");
//! assert!(broken.seq.is_some() && broken.line.is_some());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Pitfalls
//!
//! - Pin the server's key out of band: a key fetched from the same server you are
//!   checking proves nothing about that server.
//! - Without a signed head, verification shows a history is internally consistent,
//!   not that the server wrote it, nor that nothing was cut from its end.
//! - Keep the bytes you received: re-serializing an event changes its hash.

#![warn(missing_docs)]
#![deny(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod client;
pub mod error;
pub mod export;
pub mod replica;
pub mod subscription;
pub mod verify;
pub mod webhook;

pub use error::{Broken, Error, Result};

/// The pure domain core, whole.
pub use trustfold_core as core;
/// The core's error type (every history failure carries one, with its stable code).
pub use trustfold_core::Error as CoreError;
pub use trustfold_core::{
    approval, command, decide, driver, envelope, event, fold, hash, history, id, ledger, money,
    policy, state, time, upcast, view,
};

/// The types most programs need: the core's prelude plus this crate's verifier and
/// client.
pub mod prelude {
    pub use crate::client::{Client, CommandResult};
    pub use crate::error::{Broken, Error, Result};
    pub use crate::verify::{Report, Verifier};
    pub use trustfold_core::prelude::*;
    pub use trustfold_core::Error as CoreError;
}
