//! # trustfold-wasm
//!
//! trustfold's pure domain core ([`trustfold_core`]) compiled to WebAssembly, with a
//! small network client, for JavaScript frontends. A payment widget fetches a
//! payment's history, verifies its hash chain (and the server's signed head), folds it
//! into state with exactly the Rust rules, shows only what the viewer may see and do,
//! checks a command before sending it, and stays live over Server-Sent Events.
//!
//! The npm package `trustfold` (in `npm/`) is the public face: a typed TypeScript layer
//! over these bindings. It ships this crate built twice: for size (profile
//! `wasm-release`, what browsers download) and for speed (profile `wasm-node`, with
//! WebAssembly SIMD for the hash chain; what Node reads from disk). The bindings
//! themselves follow a few rules:
//!
//! - **Histories cross the boundary as one string or `Uint8Array`** (the JSON array of
//!   `{"hash","event"}` records, as a history document holds them; the server sends
//!   them in `{events, has_more, next}` pages), never as thousands of JS
//!   objects; the bytes are hashed as received.
//! - **State comes back as canonical JSON text**: `replay(history)` returns the same
//!   bytes as `PaymentState::to_json` in native Rust, so JS, Rust and the server can
//!   compare states byte for byte.
//! - **Errors are JS `Error`s** named `TrustfoldError` with a stable `code` (the same
//!   as [`trustfold_core::Error::code`] and the HTTP API's problem `code`), the same
//!   message as in Rust, and `seq` / `field` where the core reports them ([`error`]).
//! - **Names are camelCase** in JS (`stateAt`, `allowedCommands`, `moneyAdd` …).
//!
//! ## Modules
//!
//! - [`history`] — `replay`, `verify`, `stateAt`, `view`.
//! - [`decide`] — `allowedCommands`, `nextTick`, `decide`, `validatePolicy`.
//! - [`money`] — arithmetic and formatting on decimal strings.
//! - [`client`] — `Client` and `PaymentFeed`: incremental fetch, signed-head check,
//!   commands with idempotency keys, live updates with resume (gloo-net);
//!   `PaymentViewFeed`: the server's unverified view for restricted participants,
//!   read again on each live event.
//! - [`error`] — core errors as JS errors.
//!
//! ## Pitfalls
//!
//! - Pass histories exactly as received: re-serializing records in JS changes the
//!   event bytes and breaks their hashes.
//! - `allowedCommands` and `decide` judge against the state of the history you pass:
//!   pass the latest one, and send the command with the state's `version` as the
//!   expected version so a concurrent command loses cleanly.

#![warn(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod client;
pub mod decide;
pub mod error;
pub mod history;
pub mod money;

use wasm_bindgen::prelude::*;

/// The module's heap: Talc, growing WebAssembly memory on demand (single-threaded
/// module, so no lock).
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &'static str = r#"
/** A history: the JSON array of `{"hash","event"}` records, as text or UTF-8 bytes. */
export type HistoryInput = string | Uint8Array;

/** The outcome of `verify`. */
export type VerifyResult =
  | { ok: true; len: number; head: string }
  | { ok: false; code: string; message: string; seq: number | null };

/** What `validatePolicy` returns for a valid policy. */
export interface PolicySummary { id: string; version: number; hash: string }

/** The error thrown by every binding: `code` is stable, `message` as in Rust. */
export interface TrustfoldErrorShape extends Error {
  name: "TrustfoldError";
  code: string;
  seq?: number;
  field?: string;
}
"#;

/// The version of this package (the workspace version).
#[wasm_bindgen(js_name = version)]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}
