//! Histories: replay, verify, state at a sequence, a role's view.
//!
//! A history is the JSON array of `{"hash","event"}` records a server sends, passed
//! as one string or `Uint8Array`. Every function here verifies the hash chain before
//! folding, so a tampered history is an error (`chain_broken` with the `seq`), never a
//! wrong state.

use serde::Serialize;
use trustfold_core::envelope::Envelope;
use trustfold_core::fold::replay_records;
use trustfold_core::history::{self, PublicKey, SignedHead};
use trustfold_core::policy::Role;
use trustfold_core::view;
use trustfold_core::Error;
use wasm_bindgen::prelude::*;

use crate::error::{input_bytes, js_error, to_js, to_value, IntoJs, JsResult};

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

/// The state after sequence `seq` (the chain is verified in full first).
#[wasm_bindgen(js_name = stateAt)]
pub fn state_at(
    #[wasm_bindgen(js_name = historyJson, unchecked_param_type = "HistoryInput")] history: JsValue,
    seq: f64,
) -> JsResult<String> {
    let bytes = input_bytes(&history, "history")?;
    if !(seq >= 1.0 && seq.fract() == 0.0) {
        return Err(js_error(
            "invalid_input",
            &format!("seq must be a whole number from 1, got {seq}"),
        ));
    }
    let records = history::parse(&bytes).js()?;
    let state = replay_records(&records, Some(seq as u64)).js()?;
    Ok(state_json(&state))
}

/// What `verify` reports.
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
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
}

/// Verifies a history: the hash chain, that it folds under the rules, and, when
/// given, the server's signed head against the pinned public key. Returns
/// `{ok: true, len, head}` or `{ok: false, code, message, seq?}`; it throws only for
/// unusable arguments (a signed head without a key, a malformed key).
#[wasm_bindgen(js_name = verify, unchecked_return_type = "VerifyResult")]
pub fn verify(
    #[wasm_bindgen(js_name = historyJson, unchecked_param_type = "HistoryInput")] history: JsValue,
    #[wasm_bindgen(js_name = signedHeadJson)] signed_head: Option<String>,
    #[wasm_bindgen(js_name = publicKeyHex)] public_key: Option<String>,
) -> JsResult<JsValue> {
    let bytes = input_bytes(&history, "history")?;
    let head = match (signed_head, public_key) {
        (Some(h), Some(k)) => {
            let key: PublicKey = k.parse().js()?;
            let head: SignedHead =
                serde_json::from_slice(h.as_bytes()).map_err(|e| to_js(&e.into()))?;
            Some((head, key))
        }
        (Some(_), None) => {
            return Err(js_error(
                "invalid_key",
                "a signed head is verified against the server's public key: pass publicKeyHex",
            ))
        }
        (None, _) => None,
    };
    let outcome = match verify_bytes(&bytes, head.as_ref()) {
        Ok((len, head)) => VerifyOutcome::Ok {
            ok: true,
            len,
            head,
        },
        Err(e) => VerifyOutcome::Failed {
            ok: false,
            code: e.code(),
            message: e.to_string(),
            seq: error_seq(&e),
        },
    };
    to_value(&outcome)
}

/// Native core of [`verify`]: `(len, head hash hex)` or the first error.
pub fn verify_bytes(
    bytes: &[u8],
    head: Option<&(SignedHead, PublicKey)>,
) -> Result<(u64, String), Error> {
    let records = history::parse(bytes)?;
    let state = replay_records(&records, None)?;
    if let Some((signed, key)) = head {
        signed.verify_against(key, &records)?;
    }
    Ok((state.version, state.head.to_string()))
}

/// The sequence number a history error points at.
pub fn error_seq(e: &Error) -> Option<u64> {
    match e {
        Error::InvalidHistory { seq, .. } | Error::ChainBroken { seq, .. } => Some(*seq),
        _ => None,
    }
}

/// A role's view: `{"state": …, "events": […]}` as JSON text, redacted by the pinned
/// policy's visibility rules for the union of `roles`.
#[wasm_bindgen(js_name = view)]
pub fn view(
    #[wasm_bindgen(js_name = historyJson, unchecked_param_type = "HistoryInput")] history: JsValue,
    #[wasm_bindgen(unchecked_param_type = "string[]")] roles: JsValue,
) -> JsResult<String> {
    let bytes = input_bytes(&history, "history")?;
    let roles: Vec<String> = serde_wasm_bindgen::from_value(roles)
        .map_err(|_| js_error("invalid_input", "roles must be an array of role names"))?;
    let roles: Vec<Role> = roles.into_iter().map(Role::new).collect();
    let records = history::parse(&bytes).js()?;
    let state = replay_records(&records, None).js()?;
    let envelopes = records
        .iter()
        .map(|r| r.envelope())
        .collect::<Result<Vec<Envelope>, Error>>()
        .js()?;
    let out = serde_json::json!({
        "state": view::state_view(&state, &roles),
        "events": view::history_view(&state, &envelopes, &roles),
    });
    Ok(out.to_string())
}

pub(crate) fn state_json(state: &trustfold_core::state::PaymentState) -> String {
    // The core writes JSON with serde_json: always UTF-8.
    String::from_utf8(state.to_json()).unwrap_or_default()
}
