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
//! {"prev":"<64 hex>","stream":"<uuid>","seq":1,"id":"<uuid>","type":"PaymentInitiated","v":2,
//!  "at":"2026-11-26T05:35:15Z","actor":{"party":"<uuid>","role":"listing_agent"},
//!  "causation":"<uuid>","correlation":null,"data":{…}}
//! ```
//!
//! An event's hash is SHA-256 over exactly those bytes as stored; the bytes are never
//! re-serialized for verification, so events written under an old schema version
//! still verify after they are upcast ([`crate::upcast`]) on read.

use serde::de::Error as _;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::{Event, EventType, PolicyCache};
use crate::hash::Hash;
use crate::id::{EventId, PartyId, PaymentId};
use crate::money::tagged;
use crate::policy::Role;
use crate::time::Timestamp;

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
    /// Reads an actor, `{"party": "<uuid>" | null, "role": "…"}` (`party` may be left
    /// out for the platform's own roles).
    ///
    /// ```
    /// use trustfold_core::envelope::Actor;
    /// assert_eq!(Actor::from_json(br#"{"role":"system"}"#)?, Actor::system());
    /// assert_eq!(Actor::from_json(br#"{"party":1}"#).unwrap_err().code(), "malformed_json");
    /// # Ok::<(), trustfold_core::Error>(())
    /// ```
    pub fn from_json(json: &[u8]) -> Result<Actor> {
        crate::json::read::stream(json, <Actor as crate::json::read::FromJson>::from_json)
    }

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
        use crate::json::write::{key, uint, WriteJson};
        // The core's writer: byte for byte what the serde `Serialize` below writes
        // (`canonical_tests` compares the two on every vector event).
        let t = self.event.event_type();
        let mut out = Vec::with_capacity(512);
        out.push(b'{');
        key(&mut out, "prev");
        self.prev.write_json(&mut out);
        key(&mut out, "stream");
        self.stream.write_json(&mut out);
        key(&mut out, "seq");
        uint(&mut out, self.seq);
        key(&mut out, "id");
        self.id.write_json(&mut out);
        key(&mut out, "type");
        crate::json::write::ascii(&mut out, t.name());
        key(&mut out, "v");
        uint(&mut out, u64::from(t.current_version()));
        key(&mut out, "at");
        self.at.write_json(&mut out);
        key(&mut out, "actor");
        out.push(b'{');
        key(&mut out, "party");
        self.actor.party.write_json(&mut out);
        key(&mut out, "role");
        self.actor.role.write_json(&mut out);
        out.push(b'}');
        key(&mut out, "causation");
        self.causation.write_json(&mut out);
        key(&mut out, "correlation");
        self.correlation.write_json(&mut out);
        key(&mut out, "data");
        self.event.write_data(&mut out);
        out.push(b'}');
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
    ///
    /// Envelopes in the canonical form (see the [module docs](self)) with a
    /// current-version payload are read by a byte scanner and only the `data` goes
    /// through the JSON parser; anything else (another field order, whitespace, escapes,
    /// an old schema version, an error) is parsed by the full JSON parser, so the result
    /// and every error are the same either way.
    pub fn from_json(bytes: &[u8]) -> Result<Envelope> {
        if let Some(env) = canonical::parse(bytes, None) {
            return Ok(env);
        }
        full::parse(bytes, None)
    }

    /// Like [`Envelope::from_json`], with the policy embedded in a `PaymentInitiated`
    /// taken from `cache` when the same policy bytes were parsed before (and added to it
    /// otherwise). The result is the same as [`Envelope::from_json`]'s; this only saves
    /// parsing the same ≈ 3 KB policy again for each of many payments.
    ///
    /// ```
    /// use trustfold_core::envelope::Envelope;
    /// use trustfold_core::event::PolicyCache;
    /// # let history = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/em_happy_wire.history.json"))?;
    /// # let records = trustfold_core::history::parse(&history)?;
    /// # let first = records[0].event.get().as_bytes();
    /// let mut cache = PolicyCache::new();
    /// let a = Envelope::from_json_cached(first, &mut cache)?;
    /// let b = Envelope::from_json_cached(first, &mut cache)?; // the policy is not parsed again
    /// assert_eq!(a, b);
    /// assert_eq!(a, Envelope::from_json(first)?);
    /// assert_eq!(cache.len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_json_cached(bytes: &[u8], cache: &mut PolicyCache) -> Result<Envelope> {
        if let Some(env) = canonical::parse(bytes, Some(&mut *cache)) {
            return Ok(env);
        }
        full::parse(bytes, Some(cache))
    }
}

/// The fast path of [`Envelope::from_json`]: the canonical layout, read byte by byte.
mod canonical {
    use uuid::Uuid;

    use super::{Actor, Envelope};
    use crate::event::{Event, EventType, PolicyCache};
    use crate::hash::Hash;
    use crate::id::{EventId, PartyId, PaymentId};
    use crate::json::read::Reader;
    use crate::policy::Role;
    use crate::time::Timestamp;

    struct Cursor<'a> {
        b: &'a [u8],
        i: usize,
    }

    impl<'a> Cursor<'a> {
        /// One expected byte (inlined: a quote around every string and id).
        #[inline(always)]
        fn byte(&mut self, c: u8) -> Option<()> {
            (*self.b.get(self.i)? == c).then(|| self.i += 1)
        }

        #[inline(always)]
        fn lit(&mut self, s: &[u8]) -> Option<()> {
            let end = self.i + s.len();
            // A plain loop: these literals are short, and a call to `memcmp` costs
            // more than the comparison in the size-optimised WebAssembly build.
            crate::json::read::same(self.b.get(self.i..end)?, s).then(|| self.i = end)
        }

        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            let end = self.i + n;
            let out = self.b.get(self.i..end)?;
            self.i = end;
            Some(out)
        }

        /// A string of printable ASCII without escapes (anything else: not canonical
        /// enough, left to the JSON parser).
        fn str(&mut self) -> Option<&'a str> {
            self.byte(b'"')?;
            let start = self.i;
            let rest = self.b.get(start..)?;
            // A plain loop (see `json::read::same`): printable ASCII up to the quote.
            let mut len = 0;
            loop {
                match *rest.get(len)? {
                    b'"' => break,
                    b'\\' => return None,
                    0x20..=0x7e => len += 1,
                    _ => return None,
                }
            }
            let s = &rest[..len];
            self.i = start + len + 1;
            std::str::from_utf8(s).ok()
        }

        /// An unsigned integer as JSON writes it (no sign, no leading zero, no fraction).
        fn uint(&mut self) -> Option<u64> {
            let rest = self.b.get(self.i..)?;
            let len = rest.iter().position(|c| !c.is_ascii_digit())?;
            if len == 0 || (len > 1 && rest[0] == b'0') || matches!(rest[len], b'.' | b'e' | b'E') {
                return None;
            }
            let mut n = 0u64;
            for &c in &rest[..len] {
                n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            }
            self.i += len;
            Some(n)
        }

        fn uuid(&mut self) -> Option<Uuid> {
            self.byte(b'"')?;
            let u = crate::id::uuid_from_ascii(self.take(36)?)?;
            self.byte(b'"')?;
            Some(u)
        }

        fn opt_uuid(&mut self) -> Option<Option<Uuid>> {
            if self.lit(b"null").is_some() {
                return Some(None);
            }
            self.uuid().map(Some)
        }
    }

    /// `None` unless `b` is an envelope in the canonical layout with a current-version
    /// payload that the core's reader takes (embedded policies from `policies`, when
    /// given); the caller then runs the full parser.
    pub(super) fn parse(b: &[u8], policies: Option<&mut PolicyCache>) -> Option<Envelope> {
        let mut c = Cursor { b, i: 0 };
        c.lit(b"{\"prev\":\"")?;
        let prev = Hash::from_hex(c.take(64)?)?;
        c.lit(b"\",\"stream\":")?;
        let stream = PaymentId::from_uuid(c.uuid()?);
        c.lit(b",\"seq\":")?;
        let seq = c.uint()?;
        c.lit(b",\"id\":")?;
        let id = EventId::from_uuid(c.uuid()?);
        c.lit(b",\"type\":")?;
        let ty = EventType::from_name(c.str()?)?;
        c.lit(b",\"v\":")?;
        let v = u16::try_from(c.uint()?).ok()?;
        if v != ty.current_version() {
            return None; // upcast by the full parser
        }
        c.lit(b",\"at\":")?;
        let at: Timestamp = c.str()?.parse().ok()?;
        c.lit(b",\"actor\":{\"party\":")?;
        let party = c.opt_uuid()?.map(PartyId::from_uuid);
        c.lit(b",\"role\":")?;
        let role = Role::new(c.str()?);
        c.lit(b"},\"causation\":")?;
        let causation = c.opt_uuid()?;
        c.lit(b",\"correlation\":")?;
        let correlation = c.opt_uuid()?;
        c.lit(b",\"data\":")?;
        // The payload runs to the envelope's closing brace, the last byte.
        let payload = b.get(c.i..b.len().checked_sub(1)?)?;
        if b.last() != Some(&b'}') {
            return None;
        }
        let mut r = Reader::new(payload, policies);
        let event = Event::read_data(ty, &mut r).ok()?;
        r.end().ok()?;
        Some(Envelope {
            prev,
            stream,
            seq,
            id,
            schema_version: v,
            at,
            actor: Actor { party, role },
            causation,
            correlation,
            event,
        })
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

/// The full path of [`Envelope::from_json`]: any field order and whitespace, old
/// schema versions upcast, and every error reported with its position.
mod full {
    use uuid::Uuid;

    use super::{Actor, Envelope};
    use crate::error::{Error, Result};
    use crate::event::{EventType, PolicyCache};
    use crate::hash::Hash;
    use crate::id::{EventId, PartyId, PaymentId};
    use crate::json::read::{once, Fault, FromJson, Read, Reader};
    use crate::policy::Role;
    use crate::time::Timestamp;

    /// Parses one envelope. Its JSON is checked first, so a syntax error anywhere is
    /// reported before a value's (as a JSON parser reads a document before a program
    /// reads its values; serde users, who read an envelope as a raw value first, see
    /// the same error).
    pub(super) fn parse(b: &[u8], policies: Option<&mut PolicyCache>) -> Result<Envelope> {
        crate::json::read::document(b, policies, read)
    }

    impl FromJson for Actor {
        fn from_json(r: &mut Reader<'_, '_>) -> Read<Self> {
            const FIELDS: &[&str] = &["party", "role"];
            let mut party: Option<Option<PartyId>> = None;
            let mut role: Option<Role> = None;
            r.object(FIELDS, &mut |r, k| match k {
                0 => once(&mut party, r, "party"),
                _ => once(&mut role, r, "role"),
            })?;
            Ok(Actor {
                // An absent `party` is `None`, as serde's derive reads an `Option`.
                party: party.flatten(),
                role: role.ok_or_else(|| r.fault(Fault::MissingField("role")))?,
            })
        }
    }

    fn read(r: &mut Reader<'_, '_>) -> Read<Envelope> {
        const FIELDS: &[&str] = &[
            "prev",
            "stream",
            "seq",
            "id",
            "type",
            "v",
            "at",
            "actor",
            "causation",
            "correlation",
            "data",
        ];
        let mut prev: Option<Hash> = None;
        let mut stream: Option<PaymentId> = None;
        let mut seq: Option<u64> = None;
        let mut id: Option<EventId> = None;
        let mut ty: Option<EventType> = None;
        let mut v: Option<u16> = None;
        let mut at: Option<Timestamp> = None;
        let mut actor: Option<Actor> = None;
        let mut causation: Option<Option<Uuid>> = None;
        let mut correlation: Option<Option<Uuid>> = None;
        let mut data: Option<(usize, usize)> = None;
        r.object(FIELDS, &mut |r, k| match k {
            0 => once(&mut prev, r, "prev"),
            1 => once(&mut stream, r, "stream"),
            2 => once(&mut seq, r, "seq"),
            3 => once(&mut id, r, "id"),
            4 => {
                if ty.is_some() {
                    return Err(r.fault(Fault::DuplicateField("type")));
                }
                r.ws();
                let start = r.position();
                let name = r.str()?;
                let found = EventType::from_name(&name);
                ty =
                    Some(found.ok_or_else(|| {
                        r.invalid(start, Error::UnknownEventType(name.into_owned()))
                    })?);
                Ok(())
            }
            5 => once(&mut v, r, "v"),
            6 => once(&mut at, r, "at"),
            7 => once(&mut actor, r, "actor"),
            8 => once(&mut causation, r, "causation"),
            9 => once(&mut correlation, r, "correlation"),
            _ => {
                if data.is_some() {
                    return Err(r.fault(Fault::DuplicateField("data")));
                }
                r.ws();
                let start = r.position();
                r.raw()?;
                data = Some((start, r.position()));
                Ok(())
            }
        })?;
        let missing = |r: &Reader<'_, '_>, f| r.fault(Fault::MissingField(f));
        let ty = ty.ok_or_else(|| missing(r, "type"))?;
        let v = v.ok_or_else(|| missing(r, "v"))?;
        let (start, end) = data.ok_or_else(|| missing(r, "data"))?;
        let event = {
            let mut d = r.sub(start);
            let event = crate::upcast::read(ty, v, &mut d)?;
            d.end_at(end)?;
            event
        };
        Ok(Envelope {
            prev: prev.ok_or_else(|| missing(r, "prev"))?,
            stream: stream.ok_or_else(|| missing(r, "stream"))?,
            seq: seq.ok_or_else(|| missing(r, "seq"))?,
            id: id.ok_or_else(|| missing(r, "id"))?,
            schema_version: v,
            at: at.ok_or_else(|| missing(r, "at"))?,
            actor: actor.ok_or_else(|| missing(r, "actor"))?,
            causation: causation.flatten(),
            correlation: correlation.flatten(),
            event,
        })
    }
}

/// Reads an envelope with [`Envelope::from_json`] (the value's bytes as written), so
/// serde users get the same envelope and the same error.
impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw: Box<serde_json::value::RawValue> = Deserialize::deserialize(d)?;
        Envelope::from_json(raw.get().as_bytes()).map_err(|e| match e {
            Error::MalformedJson(message) => D::Error::custom(message),
            e => D::Error::custom(tagged(&e)),
        })
    }
}

#[cfg(test)]
mod canonical_tests {
    use super::canonical;

    /// Every event of every golden vector, as stored.
    fn vector_events() -> Vec<String> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if !path.to_string_lossy().ends_with(".history.json") {
                continue;
            }
            let history = std::fs::read(&path).unwrap();
            if let Ok(records) = crate::history::parse(&history) {
                out.extend(records.iter().map(|r| r.event.get().to_string()));
            }
        }
        out
    }

    /// The core's own reader takes every current-version event of the golden vectors
    /// (so the fast path is the one that runs; `tests/canonical_parse.rs` checks that it
    /// agrees with serde).
    #[test]
    fn the_reader_takes_every_current_vector_event() {
        let mut n = 0;
        for text in vector_events() {
            let bytes = text.as_bytes();
            let env = super::Envelope::from_json(bytes).unwrap();
            if env.schema_version != env.event_type().current_version() {
                continue;
            }
            let fast = canonical::parse(bytes, None);
            assert_eq!(fast.as_ref(), Some(&env), "{text}");
            n += 1;
        }
        assert!(n > 500, "{n}");
    }

    /// The core's writer seals envelopes byte for byte as serde wrote them: every
    /// current-version vector event is written back to its stored bytes.
    #[test]
    fn canonical_json_is_what_serde_writes() {
        let mut n = 0;
        for text in vector_events() {
            let bytes = text.as_bytes();
            let env = super::Envelope::from_json(bytes).unwrap();
            let ours = env.canonical_json();
            assert_eq!(ours, serde_json::to_vec(&env).unwrap());
            if env.schema_version == env.event_type().current_version() {
                assert_eq!(ours, bytes, "{text}");
            }
            n += 1;
        }
        assert!(n > 500, "{n}");
        // The optional fields serde skips when absent, absent and present.
        use crate::event::{DisputeOutcome, DisputeResolved, Event, ParticipantInvited};
        use crate::id::{PartyId, RequestId};
        for event in [
            Event::ParticipantInvited(ParticipantInvited {
                party: PartyId::from_bytes([1; 16]),
                roles: vec![],
                name: "Q \"x\"\n".into(),
                email: None,
            }),
            Event::ParticipantInvited(ParticipantInvited {
                party: PartyId::from_bytes([1; 16]),
                roles: vec![crate::policy::Role::new("buyer")],
                name: String::new(),
                email: Some("a@b".into()),
            }),
            Event::DisputeResolved(DisputeResolved {
                dispute: RequestId::from_bytes([2; 16]),
                outcome: DisputeOutcome::Refund,
                request: None,
                note: "n".into(),
            }),
            Event::DisputeResolved(DisputeResolved {
                dispute: RequestId::from_bytes([2; 16]),
                outcome: DisputeOutcome::Resume,
                request: Some(RequestId::from_bytes([3; 16])),
                note: String::new(),
            }),
        ] {
            let mut ours = Vec::new();
            event.write_data(&mut ours);
            let mut theirs = Vec::new();
            event
                .serialize_data(&mut serde_json::Serializer::new(&mut theirs))
                .unwrap();
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                String::from_utf8(theirs).unwrap()
            );
        }
    }

    /// The core's payload readers agree with serde's derived decoders (the ones
    /// `compact_de!` writes next to them): on every vector event's payload, and on
    /// copies damaged byte by byte, both give the same event or both refuse.
    #[test]
    fn payload_readers_agree_with_serde() {
        use crate::event::Event;
        use crate::json::read::Reader;
        let mut samples: Vec<(crate::event::EventType, Vec<u8>)> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for text in vector_events() {
            let env = super::Envelope::from_json(text.as_bytes()).unwrap();
            let t = env.event_type();
            if env.schema_version != t.current_version() {
                continue;
            }
            let data = &text[text.find(",\"data\":").unwrap() + 8..text.len() - 1];
            // Every payload once as is; the first of each type also damaged.
            if seen.insert(t) {
                samples.push((t, data.as_bytes().to_vec()));
            }
            let ours = Event::read_data(t, &mut Reader::new(data.as_bytes(), None)).unwrap();
            assert_eq!(ours, env.event);
        }
        assert!(samples.len() >= 30);
        let mut agreed = 0;
        for (t, data) in samples {
            let limit = if data.len() > 700 { 300 } else { data.len() };
            let mut inputs: Vec<Vec<u8>> = Vec::new();
            for at in 0..limit {
                for r in [
                    &b""[..],
                    b" ",
                    b"\"",
                    b"\\",
                    b"0",
                    b"x",
                    b"}",
                    b",",
                    b"\\u0041",
                    b"null",
                ] {
                    let mut m = data[..at].to_vec();
                    m.extend_from_slice(r);
                    m.extend_from_slice(&data[at + 1..]);
                    inputs.push(m);
                }
            }
            // Whole fields: unknown, repeated, dropped, spaced, escaped, null.
            let text = String::from_utf8(data.clone()).unwrap();
            let mut variants = vec![
                text.replacen('{', "{\"surprise\":1,", 1),
                text.replacen('{', "[", 1),
                text.replace("\":", "\" : "),
                text.replace('a', "\\u0061"),
                text.replacen(":\"", ":null,\"_\":\"", 1),
                text.replace("\"", "\"\\ud83d\\ude00"),
            ];
            let inner = text.trim_start_matches('{');
            for f in inner
                .split(",\"")
                .filter(|f| !f.contains('{') && !f.contains('['))
            {
                let f = f.trim_start_matches('"').trim_end_matches('}');
                let field = format!("\"{f}");
                variants.push(text.replacen(&format!(",{field}"), "", 1));
                variants.push(text.replacen(&format!("{field},"), "", 1));
                variants.push(text.replacen(&field, &format!("{field},{field}"), 1));
            }
            inputs.extend(variants.into_iter().map(String::into_bytes));
            for m in inputs {
                {
                    let mut reader = Reader::new(&m, None);
                    let ours =
                        Event::read_data(t, &mut reader).and_then(|e| reader.end().map(|()| e));
                    let mut de = serde_json::Deserializer::from_slice(&m);
                    let theirs =
                        Event::deserialize_data(t, &mut de).and_then(|e| de.end().map(|()| e));
                    match (ours, theirs) {
                        (Ok(a), Ok(b)) => assert_eq!(a, b, "{}", String::from_utf8_lossy(&m)),
                        (Err(_), Err(_)) => {}
                        (a, b) => panic!(
                            "{t:?} {}: ours {:?}, serde {:?}",
                            String::from_utf8_lossy(&m),
                            a.map(|_| ()),
                            b.map(|_| ())
                        ),
                    }
                    agreed += 1;
                }
            }
        }
        assert!(agreed > 10_000, "{agreed}");
    }
}
