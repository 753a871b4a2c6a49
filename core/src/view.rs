//! What a viewer sees: a role's redacted state and history.
//!
//! The pinned policy's `visibility` says, per role, which event types appear in the
//! role's history and which parts (amounts, bank details, contacts, ledger, requests,
//! disputes) are removed from state and events. A party with several roles sees the
//! union of what each role may see. Redacted views are for display: they are not the
//! verifiable history (which only parties entitled to everything receive).
//!
//! ```
//! # use trustfold_core::policy::{Hidden, Visibility};
//! # use trustfold_core::view::redact_state;
//! // A view that hides amounts replaces them with null.
//! let v = Visibility { hide: [Hidden::Amounts].into_iter().collect(), ..Default::default() };
//! let state = serde_json::json!({"status":"Held","amount":{"amount":"5.00","currency":"USD"}});
//! assert_eq!(redact_state(state, &v)["amount"], serde_json::Value::Null);
//! ```

use serde_json::{Map, Value};

use crate::envelope::Envelope;
use crate::policy::{EventFilter, Hidden, Role, Visibility};
use crate::state::PaymentState;

/// The state as the given roles may see it, as JSON.
pub fn state_view(state: &PaymentState, roles: &[Role]) -> Value {
    let vis = state.policy_doc.visibility_for(roles);
    let v = serde_json::to_value(state).unwrap_or(Value::Null);
    redact_state(v, &vis)
}

/// Removes hidden parts from a serialized state.
pub fn redact_state(mut v: Value, vis: &Visibility) -> Value {
    let Some(obj) = v.as_object_mut() else {
        return v;
    };
    for h in &vis.hide {
        match h {
            Hidden::Amounts => {
                for k in ["amount", "ledger"] {
                    if obj.contains_key(k) {
                        obj.insert(k.into(), Value::Null);
                    }
                }
                if let Some(f) = obj.get_mut("funding").and_then(Value::as_object_mut) {
                    f.insert("attempts".into(), Value::Null);
                }
                if let Some(reqs) = obj.get_mut("requests").and_then(Value::as_object_mut) {
                    for r in reqs.values_mut().filter_map(Value::as_object_mut) {
                        for k in ["amount", "allocations", "fees"] {
                            r.remove(k);
                        }
                    }
                }
            }
            Hidden::BankDetails => {
                if let Some(f) = obj.get_mut("funding").and_then(Value::as_object_mut) {
                    f.remove("method");
                }
            }
            Hidden::Contacts => {
                if let Some(ps) = obj.get_mut("participants").and_then(Value::as_object_mut) {
                    for p in ps.values_mut().filter_map(Value::as_object_mut) {
                        p.remove("email");
                        p.remove("name");
                    }
                }
            }
            Hidden::Ledger => {
                obj.insert("ledger".into(), Value::Null);
            }
            Hidden::Requests => {
                obj.insert("requests".into(), Value::Object(Map::new()));
            }
            Hidden::Disputes => {
                obj.insert("disputes".into(), Value::Object(Map::new()));
            }
        }
    }
    // Rail references name bank transfers: shown only to those who see bank details.
    if vis.hide.contains(&Hidden::BankDetails) || vis.hide.contains(&Hidden::Amounts) {
        obj.remove("rail_refs");
    }
    v
}

/// The events the given roles may see, each redacted, as JSON envelopes.
pub fn history_view(state: &PaymentState, events: &[Envelope], roles: &[Role]) -> Vec<Value> {
    let vis = state.policy_doc.visibility_for(roles);
    events
        .iter()
        .filter(|e| match &vis.events {
            EventFilter::All => true,
            EventFilter::Only(types) => types.contains(e.event_type().name()),
        })
        .map(|e| redact_event(serde_json::to_value(e).unwrap_or(Value::Null), &vis))
        .collect()
}

const AMOUNT_KEYS: &[&str] = &["amount", "allocations", "policy"];
const BANK_KEYS: &[&str] = &["method", "rail_ref"];
const CONTACT_KEYS: &[&str] = &["name", "email", "initiator_name"];

/// Removes hidden fields from a serialized envelope's `data`.
pub fn redact_event(mut v: Value, vis: &Visibility) -> Value {
    if let Some(data) = v.get_mut("data").and_then(Value::as_object_mut) {
        for h in &vis.hide {
            let keys: &[&str] = match h {
                Hidden::Amounts => AMOUNT_KEYS,
                Hidden::BankDetails => BANK_KEYS,
                Hidden::Contacts => CONTACT_KEYS,
                Hidden::Disputes => &["reason", "note"],
                _ => &[],
            };
            for k in keys {
                data.remove(*k);
            }
        }
    }
    if let Some(obj) = v.as_object_mut() {
        // The chain links mean nothing in a redacted view.
        obj.remove("prev");
        obj.insert("redacted".into(), Value::Bool(!vis.hide.is_empty()));
    }
    v
}
