//! Schema evolution: old event payloads are upcast to the current shape when read,
//! never rewritten. The stored bytes (and so the hash chain) stay as they were.
//!
//! Each step turns version `n` of one event type into version `n + 1`.
//! The one real example so far: `ParticipantInvited` v1 carried a single `role`;
//! v2 carries `roles`, a list.
//!
//! ```
//! use trustfold_core::{event::EventType, upcast::upcast};
//! let v1 = serde_json::json!({"party":"7d4f3a0e-0b7a-4d44-9a55-0c2b0f9c4e11","role":"buyer","name":"Bo"});
//! let v2 = upcast(EventType::ParticipantInvited, 1, v1)?;
//! assert_eq!(v2["roles"], serde_json::json!(["buyer"]));
//! # Ok::<(), trustfold_core::Error>(())
//! ```

use serde_json::Value;

use crate::error::{Error, Result};
use crate::event::EventType;

/// Upcasts a payload written with schema `version` of `event_type` to the current one.
pub fn upcast(event_type: EventType, version: u16, mut data: Value) -> Result<Value> {
    let current = event_type.current_version();
    if version == 0 || version > current {
        return Err(Error::UnsupportedSchemaVersion {
            event_type: event_type.name().to_string(),
            version,
        });
    }
    let mut v = version;
    while v < current {
        data = step(event_type, v, data)?;
        v += 1;
    }
    Ok(data)
}

/// One step from `version` to `version + 1`.
fn step(event_type: EventType, version: u16, data: Value) -> Result<Value> {
    match (event_type, version) {
        (EventType::ParticipantInvited, 1) => participant_invited_v1_to_v2(data),
        _ => Err(Error::UnsupportedSchemaVersion {
            event_type: event_type.name().to_string(),
            version,
        }),
    }
}

fn participant_invited_v1_to_v2(data: Value) -> Result<Value> {
    let Value::Object(mut obj) = data else {
        return Err(Error::MalformedJson(
            "ParticipantInvited v1 data must be an object".into(),
        ));
    };
    let role = obj
        .remove("role")
        .ok_or_else(|| Error::MalformedJson("ParticipantInvited v1 data has no `role`".into()))?;
    obj.insert("roles".into(), Value::Array(vec![role]));
    Ok(Value::Object(obj))
}
