//! Deciding on the client: the commands a viewer may issue now, and `decide` for
//! validating a command before sending it (the server decides again, with the same
//! rules).

use serde::Serialize;
use trustfold_core::command::{Command, Context};
use trustfold_core::envelope::Actor;
use trustfold_core::fold::replay;
use trustfold_core::id::CommandId;
use trustfold_core::policy::Policy;
use trustfold_core::state::PaymentState;
use trustfold_core::time::Timestamp;
use wasm_bindgen::prelude::*;

use crate::error::{input_bytes, js_error, to_value, IntoJs, JsResult};

/// The state a history folds to; `None` for the empty history `[]` (whitespace around
/// and inside it allowed) and nothing else: `""` or `][` is malformed, as in `replay`.
fn state_of(history: &JsValue) -> JsResult<Option<PaymentState>> {
    let bytes = input_bytes(history, "history")?;
    let text: Vec<u8> = bytes
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if text == b"[]" {
        return Ok(None);
    }
    replay(&bytes).map(Some).js()
}

/// The state of a payment's history; the empty history is `unknown_payment`.
fn payment_state(history: &JsValue) -> JsResult<PaymentState> {
    state_of(history)?.ok_or_else(|| js_error("unknown_payment", "the history is empty"))
}

/// The command types (e.g. `"Approve"`) the actor may issue now. `actorJson` is
/// `{"party": "<uuid>", "role": "buyer"}`; `now` (RFC 3339) defaults to the time of
/// the last event. A party in a role the policy does not know gets `unknown_role`
/// (as from `view`), not an empty list.
#[wasm_bindgen(js_name = allowedCommands, unchecked_return_type = "string[]")]
pub fn allowed_commands(
    #[wasm_bindgen(js_name = historyJson, unchecked_param_type = "HistoryInput")] history: JsValue,
    #[wasm_bindgen(js_name = actorJson)] actor: &str,
    now: Option<String>,
) -> JsResult<JsValue> {
    let state = payment_state(&history)?;
    let actor = Actor::from_json(actor.as_bytes()).js()?;
    // A party's role must be the policy's (as for `view`): nothing is offered to a
    // name the policy does not know. The platform's roles are `rail` and `system`.
    if actor.party.is_some() {
        trustfold_core::fold::known_role(&state, &actor.role).js()?;
    }
    let now = match now {
        Some(t) => t.parse::<Timestamp>().js()?,
        None => state.updated_at,
    };
    let ctx = Context {
        command_id: CommandId::from_bytes([0; 16]),
        actor,
        now,
        correlation: None,
    };
    let kinds = trustfold_core::decide::allowed_commands(&state, &ctx);
    to_value(&kinds)
}

/// When the platform's clock next has something to do for the payment (RFC 3339), or
/// `null`: funds reaching good funds, a funding deadline passing, an automatic release
/// coming due (`decide::next_tick`; the server records them then, as the `system`
/// actor). For a widget's "funds available on …" or "deadline in …".
#[wasm_bindgen(js_name = nextTick)]
pub fn next_tick(
    #[wasm_bindgen(js_name = historyJson, unchecked_param_type = "HistoryInput")] history: JsValue,
) -> JsResult<Option<String>> {
    let state = payment_state(&history)?;
    Ok(trustfold_core::decide::next_tick(&state).map(|t| t.to_string()))
}

/// Decides `commandJson` against the history's state (an empty history `[]` for
/// `Initiate`) with `contextJson` (`{"command_id","actor","now"}`); returns the
/// events it would produce as a JSON array of canonical envelopes, or throws the
/// rejection (`code` names the rule).
#[wasm_bindgen(js_name = decide)]
pub fn decide(
    #[wasm_bindgen(js_name = historyJson, unchecked_param_type = "HistoryInput")] history: JsValue,
    #[wasm_bindgen(js_name = commandJson)] command: &str,
    #[wasm_bindgen(js_name = contextJson)] context: &str,
) -> JsResult<String> {
    let state = state_of(&history)?;
    let cmd = Command::from_json(command.as_bytes()).js()?;
    let ctx = Context::from_json(context.as_bytes()).js()?;
    let d = trustfold_core::decide::handle(state.as_ref(), &cmd, &ctx).js()?;
    let mut out = Vec::with_capacity(d.sealed.iter().map(|s| s.body.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for (i, s) in d.sealed.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&s.body);
    }
    out.push(b']');
    Ok(String::from_utf8(out).unwrap_or_default())
}

#[derive(Serialize)]
struct PolicySummary {
    id: String,
    version: u32,
    hash: String,
}

/// Validates a policy document; returns `{id, version, hash}` or throws
/// `invalid_policy` with the offending `field`.
#[wasm_bindgen(js_name = validatePolicy, unchecked_return_type = "PolicySummary")]
pub fn validate_policy(json: &str) -> JsResult<JsValue> {
    let p = Policy::from_json(json).js()?;
    to_value(&PolicySummary {
        hash: p.hash().to_string(),
        id: p.id,
        version: p.version,
    })
}
