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

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::event::{Event, EventType, ParticipantInvited};
use crate::id::PartyId;
use crate::policy::Role;

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

/// Decodes a payload written with schema `version` of `event_type` (its JSON bytes)
/// into the current event: what [`upcast`] then decoding does, without a
/// `serde_json::Value` in between (each old version has a typed decoder). The outer
/// error is the upcast's, the inner one the decoder's.
pub(crate) fn decode(
    event_type: EventType,
    version: u16,
    data: &str,
) -> Result<std::result::Result<Event, serde_json::Error>> {
    let current = event_type.current_version();
    if version == 0 || version > current {
        return Err(Error::UnsupportedSchemaVersion {
            event_type: event_type.name().to_string(),
            version,
        });
    }
    match (event_type, version) {
        _ if version == current => {
            // From bytes: one (slice) decoder per type in the wasm module, not a second for `str`.
            let mut de = serde_json::Deserializer::from_slice(data.as_bytes());
            Ok(Event::deserialize_data(event_type, &mut de))
        }
        (EventType::ParticipantInvited, 1) => participant_invited_v1(data),
        _ => Err(Error::UnsupportedSchemaVersion {
            event_type: event_type.name().to_string(),
            version,
        }),
    }
}

/// `ParticipantInvited` v1: `role` instead of `roles`.
fn participant_invited_v1(data: &str) -> Result<std::result::Result<Event, serde_json::Error>> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct V1 {
        party: PartyId,
        role: Option<Role>,
        #[serde(default)]
        name: String,
        #[serde(default)]
        email: Option<String>,
    }
    if !data.trim_start().starts_with('{') {
        return Err(Error::MalformedJson(
            "ParticipantInvited v1 data must be an object".into(),
        ));
    }
    let v1: V1 = match serde_json::from_slice(data.as_bytes()) {
        Ok(v1) => v1,
        Err(e) => return Ok(Err(e)),
    };
    let role = v1
        .role
        .ok_or_else(|| Error::MalformedJson("ParticipantInvited v1 data has no `role`".into()))?;
    Ok(Ok(Event::ParticipantInvited(ParticipantInvited {
        party: v1.party,
        roles: vec![role],
        name: v1.name,
        email: v1.email,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed decoder of old versions gives what `upcast` then decoding gives.
    #[test]
    fn decode_agrees_with_upcast() {
        let t = EventType::ParticipantInvited;
        let via_value = |v: u16, data: &str| -> Result<Event> {
            let value: Value = serde_json::from_str(data)?;
            let up = upcast(t, v, value)?;
            let bytes = serde_json::to_vec(&up)?;
            let mut de = serde_json::Deserializer::from_slice(&bytes);
            Ok(Event::deserialize_data(t, &mut de)?)
        };
        let typed = |v: u16, data: &str| -> Result<Event> { Ok(decode(t, v, data)??) };
        let party = "7d4f3a0e-0b7a-4d44-9a55-0c2b0f9c4e11";
        for (v, data) in [
            (
                1,
                format!(r#"{{"party":"{party}","role":"buyer","name":"Bo"}}"#),
            ),
            (
                1,
                format!(r#"{{"email":"a@b","party":"{party}","role":"buyer"}}"#),
            ),
            (2, format!(r#"{{"party":"{party}","roles":["buyer"]}}"#)),
            (1, format!(r#"{{"party":"{party}"}}"#)),
            (1, "[1]".to_string()),
            (3, format!(r#"{{"party":"{party}","roles":["buyer"]}}"#)),
            (0, "{}".to_string()),
        ] {
            let a = via_value(v, &data).map_err(|e| (e.code(), e.to_string()));
            let b = typed(v, &data).map_err(|e| (e.code(), e.to_string()));
            assert_eq!(a, b, "v{v} {data}");
        }
    }
}
