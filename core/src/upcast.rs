//! Schema evolution: old event payloads are upcast to the current shape when read,
//! never rewritten. The stored bytes (and so the hash chain) stay as they were.
//!
//! Each step turns version `n` of one event type into version `n + 1`.
//! The one change of shape so far: `ParticipantInvited` v1 carried a single `role`;
//! v2 carries `roles`, a list. `PaymentInitiated`, `FundingReturned`,
//! `DisbursementFailed` and `ReversalRecorded` went to v2, and `ReversalRecorded` to
//! v3, with the same payload: what they do changed, and the fold applies each as the
//! version it was written with (the envelope keeps its stored `schema_version`).
//! An optional field added to a payload keeps its version (a payload without it reads
//! as before): `FundingSettled`'s `amount`, what a short settlement brought.
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
        // Same payload; what changed is how the fold applies them, which it reads from
        // the envelope's stored version.
        (EventType::PaymentInitiated, 1)
        | (EventType::FundingReturned, 1)
        | (EventType::DisbursementFailed, 1)
        | (EventType::ReversalRecorded, 1)
        | (EventType::ReversalRecorded, 2) => Ok(data),
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

/// Reads a payload written with schema `version` of `event_type` into the current
/// event, with the core's own reader (`r` at the payload): the current version as is,
/// old versions through their typed readers.
pub(crate) fn read(
    event_type: EventType,
    version: u16,
    r: &mut crate::json::read::Reader<'_, '_>,
) -> crate::json::read::Read<Event> {
    r.ws();
    let at = r.position();
    let current = event_type.current_version();
    if version == 0 || version > current {
        return Err(r.invalid(
            at,
            Error::UnsupportedSchemaVersion {
                event_type: event_type.name().to_string(),
                version,
            },
        ));
    }
    match (event_type, version) {
        _ if version == current => Event::read_data(event_type, r),
        (EventType::ParticipantInvited, 1) => participant_invited_v1_read(r),
        // The payload did not change: only how the fold applies it (it reads the
        // envelope's stored version).
        (EventType::PaymentInitiated, 1)
        | (EventType::FundingReturned, 1)
        | (EventType::DisbursementFailed, 1)
        | (EventType::ReversalRecorded, 1 | 2) => Event::read_data(event_type, r),
        _ => Err(r.invalid(
            at,
            Error::UnsupportedSchemaVersion {
                event_type: event_type.name().to_string(),
                version,
            },
        )),
    }
}

/// `ParticipantInvited` v1 with the core's reader: the same fields, rules and errors as
/// the serde decoder it replaced (`upcast` then the v2 decoder: the tests compare the two).
fn participant_invited_v1_read(
    r: &mut crate::json::read::Reader<'_, '_>,
) -> crate::json::read::Read<Event> {
    use crate::json::read::{once, Fault};
    const FIELDS: &[&str] = &["party", "role", "name", "email"];
    r.ws();
    let at = r.position();
    let mut party: Option<PartyId> = None;
    let mut role: Option<Option<Role>> = None;
    let mut name: Option<String> = None;
    let mut email: Option<Option<String>> = None;
    let mut object = || -> crate::json::read::Read<()> {
        r.object(FIELDS, &mut |r, k| match k {
            0 => once(&mut party, r, "party"),
            1 => once(&mut role, r, "role"),
            2 => once(&mut name, r, "name"),
            _ => once(&mut email, r, "email"),
        })
    };
    if let Err(e) = object() {
        if e.at() == at {
            return Err(r.invalid(
                at,
                Error::MalformedJson("ParticipantInvited v1 data must be an object".into()),
            ));
        }
        return Err(e);
    }
    let party = party.ok_or_else(|| r.fault(Fault::MissingField("party")))?;
    let role = role.flatten().ok_or_else(|| {
        r.invalid(
            at,
            Error::MalformedJson("ParticipantInvited v1 data has no `role`".into()),
        )
    })?;
    Ok(Event::ParticipantInvited(ParticipantInvited {
        party,
        roles: vec![role],
        name: name.unwrap_or_default(),
        email: email.flatten(),
    }))
}

/// [`read`] over a whole payload (tests compare it with [`upcast`]).
#[cfg(test)]
pub(crate) fn decode(event_type: EventType, version: u16, data: &str) -> Result<Event> {
    let mut r = crate::json::read::Reader::new(data.as_bytes(), None);
    read(event_type, version, &mut r)
        .and_then(|e| r.end().map(|()| e))
        .map_err(|rejected| rejected.into_error(data.as_bytes()))
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
        let typed = |v: u16, data: &str| -> Result<Event> { decode(t, v, data) };
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
            // The same event, or an error with the same code (the reader's messages
            // carry positions of their own).
            let a = via_value(v, &data).map_err(|e| e.code());
            let b = typed(v, &data).map_err(|e| e.code());
            assert_eq!(a, b, "v{v} {data}");
        }
    }
}
