//! The envelope around every event, and its canonical byte form.
//!
//! An envelope says which payment (`stream`), where in its history (`seq`, from 1),
//! which event (`id`, `type`, schema version `v`), when (`at`), who acted (`actor`:
//! party and role), why (`causation`: the command; `correlation`: the business flow),
//! and links the event into the hash chain with `prev`, the previous event's hash.
//!
//! The canonical form is compact JSON with the fields in this order:
//!
//! ```json
//! {"prev":"<64 hex>","stream":"<uuid>","seq":1,"id":"<uuid>","type":"PaymentInitiated","v":1,
//!  "at":"2026-11-26T05:35:15Z","actor":{"party":"<uuid>","role":"listing_agent"},
//!  "causation":"<uuid>","correlation":null,"data":{…}}
//! ```
//!
//! An event's hash is SHA-256 over exactly those bytes as stored; the bytes are never
//! re-serialized for verification, so events written under an old schema version
//! still verify after they are upcast ([`crate::upcast`]) on read.

use std::fmt;

use serde::de::{self, Error as _, MapAccess, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::{Event, EventType};
use crate::hash::Hash;
use crate::id::{EventId, PartyId, PaymentId};
use crate::money::tagged;
use crate::policy::Role;
use crate::time::Timestamp;
use crate::upcast;

/// Who caused an event: a party acting in a role, or the platform (`system`, `rail`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    /// The acting party; `None` for the platform itself.
    pub party: Option<PartyId>,
    /// The role the party acted in.
    pub role: Role,
}

impl Actor {
    /// A party acting in a role.
    pub fn party(party: PartyId, role: impl Into<String>) -> Self {
        Actor {
            party: Some(party),
            role: Role::new(role),
        }
    }
    /// The payment rail (notices of settlement, failure, return).
    pub fn rail() -> Self {
        Actor {
            party: None,
            role: Role::rail(),
        }
    }
    /// The platform's clock-driven steps.
    pub fn system() -> Self {
        Actor {
            party: None,
            role: Role::system(),
        }
    }
}

/// An event with its metadata. See the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The previous event's hash ([`Hash::ZERO`] for the first).
    pub prev: Hash,
    /// The payment.
    pub stream: PaymentId,
    /// Position in the payment's history, from 1.
    pub seq: u64,
    /// Globally unique event id (appends are idempotent by it).
    pub id: EventId,
    /// The schema version the event was written with (before upcasting).
    pub schema_version: u16,
    /// When it happened.
    pub at: Timestamp,
    /// Who acted.
    pub actor: Actor,
    /// The command that caused it.
    pub causation: Option<Uuid>,
    /// The business flow it belongs to.
    pub correlation: Option<Uuid>,
    /// The payload, in the current schema.
    pub event: Event,
}

impl Envelope {
    /// The event's type.
    pub fn event_type(&self) -> EventType {
        self.event.event_type()
    }

    /// The canonical JSON bytes (compact, fixed field order, current schema).
    pub fn canonical_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        // Writing our own types to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, self);
        out
    }

    /// Seals the envelope: its canonical bytes and their hash.
    pub fn seal(&self) -> SealedEvent {
        let body = self.canonical_json();
        SealedEvent {
            hash: Hash::of(&body),
            body,
        }
    }

    /// Parses one envelope from its JSON bytes, upcasting old schema versions.
    pub fn from_json(bytes: &[u8]) -> Result<Envelope> {
        serde_json::from_slice(bytes).map_err(Error::from)
    }
}

/// An envelope's canonical bytes and hash, ready to store or send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedEvent {
    /// SHA-256 of `body`.
    pub hash: Hash,
    /// The canonical JSON bytes.
    pub body: Vec<u8>,
}

impl SealedEvent {
    /// Appends this event as a history record `{"hash":"…","event":…}`.
    pub fn write_record(&self, out: &mut Vec<u8>) {
        let mut hex = [0u8; 64];
        self.hash.write_hex(&mut hex);
        out.extend_from_slice(b"{\"hash\":\"");
        out.extend_from_slice(&hex);
        out.extend_from_slice(b"\",\"event\":");
        out.extend_from_slice(&self.body);
        out.push(b'}');
    }
}

struct DataRef<'a>(&'a Event);

impl Serialize for DataRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_data(s)
    }
}

impl Serialize for Envelope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = self.event.event_type();
        let mut st = s.serialize_struct("Envelope", 11)?;
        st.serialize_field("prev", &self.prev)?;
        st.serialize_field("stream", &self.stream)?;
        st.serialize_field("seq", &self.seq)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("type", t.name())?;
        st.serialize_field("v", &t.current_version())?;
        st.serialize_field("at", &self.at)?;
        st.serialize_field("actor", &self.actor)?;
        st.serialize_field("causation", &self.causation)?;
        st.serialize_field("correlation", &self.correlation)?;
        st.serialize_field("data", &DataRef(&self.event))?;
        st.end()
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Field {
    Prev,
    Stream,
    Seq,
    Id,
    Type,
    V,
    At,
    Actor,
    Causation,
    Correlation,
    Data,
}

struct TypeName(EventType);

impl<'de> Deserialize<'de> for TypeName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s: std::borrow::Cow<'de, str> = std::borrow::Cow::deserialize(d)?;
        EventType::from_name(&s)
            .map(TypeName)
            .ok_or_else(|| D::Error::custom(tagged(&Error::UnknownEventType(s.into_owned()))))
    }
}

struct DataSeed(EventType);

impl<'de> de::DeserializeSeed<'de> for DataSeed {
    type Value = Event;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Event, D::Error> {
        Event::deserialize_data(self.0, d)
    }
}

struct EnvelopeVisitor;

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event envelope object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
        let mut prev = None;
        let mut stream = None;
        let mut seq = None;
        let mut id = None;
        let mut ty: Option<EventType> = None;
        let mut v: Option<u16> = None;
        let mut at = None;
        let mut actor = None;
        let mut causation = None;
        let mut correlation = None;
        let mut data: Option<Event> = None;
        let mut raw_data: Option<Box<serde_json::value::RawValue>> = None;
        macro_rules! once {
            ($slot:ident, $name:literal) => {{
                if $slot.is_some() {
                    return Err(A::Error::duplicate_field($name));
                }
                $slot = Some(map.next_value()?);
            }};
        }
        while let Some(key) = map.next_key::<Field>()? {
            match key {
                Field::Prev => once!(prev, "prev"),
                Field::Stream => once!(stream, "stream"),
                Field::Seq => once!(seq, "seq"),
                Field::Id => once!(id, "id"),
                Field::Type => {
                    if ty.is_some() {
                        return Err(A::Error::duplicate_field("type"));
                    }
                    ty = Some(map.next_value::<TypeName>()?.0);
                }
                Field::V => once!(v, "v"),
                Field::At => once!(at, "at"),
                Field::Actor => once!(actor, "actor"),
                Field::Causation => once!(causation, "causation"),
                Field::Correlation => once!(correlation, "correlation"),
                Field::Data => {
                    if data.is_some() || raw_data.is_some() {
                        return Err(A::Error::duplicate_field("data"));
                    }
                    match (ty, v) {
                        // The canonical order puts type and v first: decode directly.
                        (Some(t), Some(ver)) if ver == t.current_version() => {
                            data = Some(map.next_value_seed(DataSeed(t))?);
                        }
                        _ => raw_data = Some(map.next_value()?),
                    }
                }
            }
        }
        let ty = ty.ok_or_else(|| A::Error::missing_field("type"))?;
        let v = v.ok_or_else(|| A::Error::missing_field("v"))?;
        let event = match (data, raw_data) {
            (Some(e), _) => e,
            (None, Some(raw)) => upcast::decode(ty, v, raw.get())
                .map_err(|e| A::Error::custom(tagged(&e)))?
                .map_err(|e| A::Error::custom(e.to_string()))?,
            (None, None) => return Err(A::Error::missing_field("data")),
        };
        Ok(Envelope {
            prev: prev.ok_or_else(|| A::Error::missing_field("prev"))?,
            stream: stream.ok_or_else(|| A::Error::missing_field("stream"))?,
            seq: seq.ok_or_else(|| A::Error::missing_field("seq"))?,
            id: id.ok_or_else(|| A::Error::missing_field("id"))?,
            schema_version: v,
            at: at.ok_or_else(|| A::Error::missing_field("at"))?,
            actor: actor.ok_or_else(|| A::Error::missing_field("actor"))?,
            causation: causation.unwrap_or(None),
            correlation: correlation.unwrap_or(None),
            event,
        })
    }
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(EnvelopeVisitor)
    }
}
