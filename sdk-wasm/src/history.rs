//! Histories: replay, verify, state at a sequence, a role's view.
//!
//! A history is the JSON array of `{"hash","event"}` records a server sends, passed
//! as one string or `Uint8Array`. Every function here verifies the hash chain before
//! folding, so a tampered history is an error (`chain_broken` with the `seq`), never a
//! wrong state.

use serde::Serialize;
use trustfold_core::fold::verify_and_replay;
use trustfold_core::history::{PublicKey, SignedHead};
use trustfold_core::policy::Role;
use trustfold_core::state::PaymentState;
use trustfold_core::Error;
use wasm_bindgen::prelude::*;

use crate::error::{input_bytes, items, js_error, number_text, to_value, whole, IntoJs, JsResult};

/// Verifies and folds a history; returns the state as canonical JSON, the exact
/// bytes native Rust's `PaymentState::to_json` gives.
#[wasm_bindgen(js_name = replay)]
pub fn replay(
    #[wasm_bindgen(js_name = historyJson, unchecked_param_type = "HistoryInput")] history: JsValue,
) -> JsResult<String> {
    let bytes = input_bytes(&history, "history")?;
    let state = trustfold_core::fold::replay(&bytes).js()?;
    Ok(state_json(&state))
}

/// Folds a history **without verifying it**: no hash chain, no signed head (the rules
/// still apply). For histories already verified, or for benchmarks; returns the same
/// canonical state JSON as [`replay`] for a valid history.
#[wasm_bindgen(js_name = replayUnverified)]
pub fn replay_unverified(
    #[wasm_bindgen(js_name = historyJson, unchecked_param_type = "HistoryInput")] history: JsValue,
) -> JsResult<String> {
    let bytes = input_bytes(&history, "history")?;
    let state = trustfold_core::fold::replay_unverified(&bytes).js()?;
    Ok(state_json(&state))
}

/// The state after event `seq` (the chain is verified in full first); throws
/// `invalid_history` for a `seq` the history does not have.
#[wasm_bindgen(js_name = stateAt)]
pub fn state_at(
    #[wasm_bindgen(js_name = historyJson, unchecked_param_type = "HistoryInput")] history: JsValue,
    seq: f64,
) -> JsResult<String> {
    let bytes = input_bytes(&history, "history")?;
    let Some(seq) = whole(seq).filter(|&n| n >= 1) else {
        return Err(js_error(
            "invalid_input",
            &format!(
                "seq must be a whole number from 1, got {}",
                number_text(seq)
            ),
        ));
    };
    let state = trustfold_core::fold::replay_at(&bytes, seq).js()?;
    Ok(state_json(&state))
}

/// What `verify` reports: field for field the golden vectors' `verify` outcome
/// (native Rust's [`verify_and_replay`]).
#[derive(Serialize)]
#[serde(untagged)]
enum VerifyOutcome {
    Ok {
        ok: bool,
        len: u64,
        head: String,
    },
    Failed {
        ok: bool,
        code: &'static str,
        message: String,
        /// A JS number: a claimed seq beyond 2^53 is reported approximately rather
        /// than failing the report.
        seq: Option<f64>,
    },
}

/// Verifies a history as a client must: the hash chain, the server's signed head
/// against its pinned public key (when given), and that it folds under the rules.
/// Returns `{ok: true, len, head}` or `{ok: false, code, message, seq}` (`seq` is
/// `null` when the failure is not at an event): it never throws for a history that
/// does not verify. It throws `invalid_input` for a misuse of its arguments, which no
/// history can fix: a history that is not a string / `Uint8Array`, or a signed head
/// and a public key not given together ([`missing_pair`]: a key proves nothing
/// without the head it checks, and a head is checked only against a key); and
/// `malformed_json` for a signed head that is not one.
#[wasm_bindgen(js_name = verify, unchecked_return_type = "VerifyResult")]
pub fn verify(
    #[wasm_bindgen(js_name = historyJson, unchecked_param_type = "HistoryInput")] history: JsValue,
    #[wasm_bindgen(js_name = signedHeadJson)] signed_head: Option<String>,
    #[wasm_bindgen(js_name = publicKeyHex)] public_key: Option<String>,
) -> JsResult<JsValue> {
    let bytes = input_bytes(&history, "history")?;
    let signed_head = signed_head.filter(|h| !matches!(h.trim(), "" | "null"));
    if let Some(message) = missing_pair(signed_head.is_some(), public_key.is_some()) {
        return Err(js_error("invalid_input", message));
    }
    let head = signed_head
        .map(|h| SignedHead::from_json(h.trim().as_bytes()))
        .transpose()
        .js()?;
    let outcome = match verify_bytes(&bytes, head.as_ref(), public_key.as_deref()) {
        Ok(state) => VerifyOutcome::Ok {
            ok: true,
            len: state.version,
            head: state.head.to_string(),
        },
        Err(e) => VerifyOutcome::Failed {
            ok: false,
            code: e.code(),
            message: e.to_string(),
            seq: e.seq().map(|n| n as f64),
        },
    };
    to_value(&outcome)
}

/// The message for a signed head without a public key or a key without a head (`None`
/// when both or neither are given): [`verify`] throws it as `invalid_input`, whatever
/// the history, since the caller's code, not the history, has to change.
pub fn missing_pair(head: bool, key: bool) -> Option<&'static str> {
    match (head, key) {
        (true, false) => Some(
            "verify: a signed head was given without a public key: pass the server's \
             pinned public key (publicKeyHex) to check the head against, or neither to \
             check the hash chain only",
        ),
        (false, true) => Some(
            "verify: a public key was given without a signed head: pass the server's \
             signed head (signedHeadJson) to check against the key, or neither to check \
             the hash chain only",
        ),
        _ => None,
    }
}

/// Native core of [`verify`]: the verified state or the first error.
pub fn verify_bytes(
    bytes: &[u8],
    head: Option<&SignedHead>,
    public_key: Option<&str>,
) -> Result<PaymentState, Error> {
    let key: Option<PublicKey> = public_key.map(str::parse).transpose()?;
    verify_and_replay(bytes, head, key.as_ref())
}

/// A role's view: `{"state": …, "events": […]}` as JSON text, redacted by the pinned
/// policy's visibility rules for the union of `roles`.
#[wasm_bindgen(js_name = view)]
pub fn view(
    #[wasm_bindgen(js_name = historyJson, unchecked_param_type = "HistoryInput")] history: JsValue,
    #[wasm_bindgen(unchecked_param_type = "string[]")] roles: JsValue,
) -> JsResult<String> {
    let bytes = input_bytes(&history, "history")?;
    let roles = items(&roles, JsValue::as_string)
        .ok_or_else(|| js_error("invalid_input", "roles must be an array of role names"))?;
    let roles: Vec<Role> = roles.into_iter().map(Role::new).collect();
    // Redacted on the serialized bytes: the same text as the core's Value-based views.
    let out = trustfold_core::fold::verify_and_view(&bytes, &roles).js()?;
    Ok(String::from_utf8(out).unwrap_or_default())
}

pub(crate) fn state_json(state: &PaymentState) -> String {
    // The core's JSON writer writes UTF-8 only.
    String::from_utf8(state.to_json()).unwrap_or_default()
}
