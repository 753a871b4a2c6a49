//! Verifiable histories: the hash chain and the server's signed head.
//!
//! A history is what a client fetches: a JSON array of records
//! `{"hash":"<64 hex>","event":{…envelope…}}`, one per line when written by trustfold.
//! `hash` is SHA-256 over the exact bytes of `event`; each envelope's `prev` is the
//! previous record's hash. Any altered, removed, inserted or reordered event breaks the
//! chain at that point, and [`verify_chain`] says where and why.
//!
//! The server signs the head of a stream (payment, seq, hash) with Ed25519 at
//! checkpoints; [`SignedHead::verify`] checks such a signature offline against the
//! server's published key, so a client can tell the history it holds is the one the
//! server vouched for, up to that point, and that nothing was cut from its end.
//!
//! ```
//! use trustfold_core::history::{SignedHead, PublicKey};
//! use trustfold_core::{hash::Hash, id::PaymentId};
//! let secret = [7u8; 32];
//! let key = PublicKey::from_secret(&secret);
//! let head = SignedHead::sign(PaymentId::from_bytes([1; 16]), 3, Hash::of(b"x"), &secret);
//! assert!(head.verify(&key).is_ok());
//! let mut forged = head.clone();
//! forged.seq = 4;
//! assert_eq!(forged.verify(&key).unwrap_err().code(), "bad_signature");
//! ```

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::envelope::{Envelope, SealedEvent};
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::id::PaymentId;
use crate::json;
use crate::json::read::{read_members, same, Fault, Read, Reader, Reject};

/// An event's bytes exactly as received, borrowed from the history document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventBytes<'a>(&'a str);

impl<'a> EventBytes<'a> {
    /// The event's JSON text.
    pub fn get(&self) -> &'a str {
        self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for EventBytes<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let raw: &'de RawValue = Deserialize::deserialize(d)?;
        Ok(EventBytes(raw.get()))
    }
}

/// One record of a fetched history, with the event's bytes kept as they came.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecord<'a> {
    /// The hash the server recorded for the event.
    pub hash: Hash,
    /// The event's bytes exactly as received.
    #[serde(borrow)]
    pub event: EventBytes<'a>,
}

const PREV_PREFIX: &[u8] = b"{\"prev\":\"";

impl RawRecord<'_> {
    /// Parses the envelope (upcasting old schema versions).
    pub fn envelope(&self) -> Result<Envelope> {
        Envelope::from_json(self.event.get().as_bytes())
    }

    /// The event's `prev` hash, read from the canonical prefix `{"prev":"…"` when
    /// present, otherwise by parsing.
    pub fn prev(&self) -> Result<Hash> {
        let b = self.event.get().as_bytes();
        let p = PREV_PREFIX.len();
        if b.len() > p + 65 && b.starts_with(PREV_PREFIX) && b[p + 64] == b'"' {
            if let Some(h) = Hash::from_hex(&b[p..p + 64]) {
                return Ok(h);
            }
        }
        // Any other layout: `prev` among the envelope's members (the others skipped).
        json::read::stream(b, |r| {
            let mut prev: Option<Hash> = None;
            r.members(&mut |r, key| {
                if same(key, b"prev") {
                    json::read::once(&mut prev, r, "prev")
                } else {
                    r.raw().map(drop)
                }
            })?;
            prev.ok_or_else(|| r.fault(Fault::MissingField("prev")))
        })
    }
}

/// Reads one record `{"hash":…,"event":…}`, keeping the event's bytes as they are.
/// Other members are refused, or skipped when `others` (as serde's derive without
/// `deny_unknown_fields` does).
fn read_record<'a>(r: &mut Reader<'a, '_>, others: bool) -> Read<RawRecord<'a>> {
    const FIELDS: &[&str] = &["hash", "event"];
    let mut hash: Option<Hash> = None;
    let mut event: Option<&'a str> = None;
    r.entries(&mut |r, at, key| match key {
        "hash" => json::read::once(&mut hash, r, "hash"),
        "event" => {
            if event.is_some() {
                return Err(r.fault(Fault::DuplicateField("event")));
            }
            r.ws();
            let start = r.position();
            let raw = r.raw()?;
            // Valid UTF-8 unless a string in it is not, which `raw` has refused already.
            let text = std::str::from_utf8(raw)
                .map_err(|_| Reject::new(start, Fault::Syntax("invalid unicode code point")))?;
            event = Some(text);
            Ok(())
        }
        _ if others => r.raw().map(drop),
        _ => Err(Reject::new(at, Fault::UnknownField(key.into(), FIELDS))),
    })?;
    Ok(RawRecord {
        hash: hash.ok_or_else(|| r.fault(Fault::MissingField("hash")))?,
        event: EventBytes(event.ok_or_else(|| r.fault(Fault::MissingField("event")))?),
    })
}

/// Parses one record on its own, `{"hash":"…","event":{…}}` (what a live stream sends
/// per event), keeping the event's bytes as they came.
///
/// ```
/// use trustfold_core::history;
/// let r = history::record(br#"{"hash":"00000000000000000000000000000000000000000000000000000000000000ff","event":{"a": 1}}"#)?;
/// assert_eq!(r.event.get(), r#"{"a": 1}"#);
/// assert_eq!(history::record(br#"{"event":{}}"#).unwrap_err().code(), "malformed_json");
/// # Ok::<(), trustfold_core::Error>(())
/// ```
pub fn record(json: &[u8]) -> Result<RawRecord<'_>> {
    json::read::stream(json, |r| read_record(r, false))
}

/// Parses a history's records without parsing the events themselves.
///
/// Histories written by trustfold put one record per line
/// (`[\n{"hash":"…","event":…},\n…\n]`); those are split by a byte scanner that reads
/// no JSON at all. Anything else goes through a full JSON parser, with the same result.
/// A document in another layout that still looks like that one line by line (two
/// records sharing a line) can be split wrongly; such a record's event never hashes
/// to its recorded hash, so [`verify_chain`] refuses it, and the replays in `fold`
/// then read the document as JSON instead.
pub fn parse(history_json: &[u8]) -> Result<Vec<RawRecord<'_>>> {
    if let Some(records) = parse_lines(history_json) {
        return Ok(records);
    }
    parse_json(history_json, false)
}

/// [`parse`] without the line scanner: the document read as JSON, front to back, as
/// serde_json reads a `Vec<RawRecord>` (a record's hash is judged before the syntax of
/// what follows it). Records with members besides `hash` and `event` are refused, or
/// those members skipped when `others`.
pub(crate) fn parse_json(history_json: &[u8], others: bool) -> Result<Vec<RawRecord<'_>>> {
    json::read::stream(history_json, |r| r.array(|r| read_record(r, others)))
}

/// The fast path of [`parse`]: `None` unless the document is exactly in the layout
/// [`write`] produces.
pub(crate) fn parse_lines(doc: &[u8]) -> Option<Vec<RawRecord<'_>>> {
    const HEAD: &[u8] = b"{\"hash\":\"";
    const MID: &[u8] = b"\",\"event\":";
    let text = std::str::from_utf8(doc).ok()?;
    let body = text.strip_prefix("[\n")?;
    let body = body
        .strip_suffix("\n]\n")
        .or_else(|| body.strip_suffix("\n]"))?;
    use crate::json::read::same;
    let mut out = Vec::with_capacity(body.len() / 512 + 1);
    let all = body.as_bytes();
    let mut start = 0;
    // Every line but the last ends with ','.
    loop {
        let (end, last) = match newline(all, start) {
            Some(nl) if nl > start && all[nl - 1] == b',' => (nl - 1, false),
            Some(_) => return None,
            None => (all.len(), true),
        };
        let line = body.get(start..end)?;
        let b = line.as_bytes();
        let min = HEAD.len() + 64 + MID.len() + 3;
        if b.len() < min
            || !same(&b[..HEAD.len()], HEAD)
            || !same(&b[HEAD.len() + 64..HEAD.len() + 64 + MID.len()], MID)
        {
            return None;
        }
        let hash = Hash::from_hex(&b[HEAD.len()..HEAD.len() + 64])?;
        let ev = line.get(HEAD.len() + 64 + MID.len()..line.len() - 1)?;
        let e = ev.as_bytes();
        if e.first() != Some(&b'{') || e.last() != Some(&b'}') || b.last() != Some(&b'}') {
            return None;
        }
        out.push(RawRecord {
            hash,
            event: EventBytes(ev),
        });
        if last {
            break;
        }
        start = end + 2;
    }
    Some(out)
}

/// The index of the first `\n` in `b` at or after `from`, eight bytes at a time
/// (`memchr` takes four at a time on wasm32, whose `usize` is 32 bits, and is a call per
/// line at the size-optimised build).
fn newline(b: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const NL: u64 = ONES * b'\n' as u64;
    let mut i = from;
    while let Some(Ok(chunk)) = b.get(i..i + 8).map(<&[u8; 8]>::try_from) {
        let x = u64::from_le_bytes(*chunk) ^ NL;
        // A zero byte in `x` (a '\n' in the chunk) sets its high bit here.
        if x.wrapping_sub(ONES) & !x & HIGH != 0 {
            break;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'\n' {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// What a verified chain ends with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainHead {
    /// Number of events.
    pub len: u64,
    /// The last event's hash.
    pub hash: Hash,
}

/// Verifies the hash chain: every event's bytes hash to its recorded hash, and every
/// `prev` is the previous record's hash (all zeros for the first).
pub fn verify_chain(records: &[RawRecord<'_>]) -> Result<ChainHead> {
    let events: Vec<&[u8]> = records.iter().map(|r| r.event.get().as_bytes()).collect();
    let hashes = Hash::of_each(&events);
    let mut prev = Hash::ZERO;
    for (i, (r, &actual)) in records.iter().zip(&hashes).enumerate() {
        let seq = i as u64 + 1;
        if actual != r.hash {
            return Err(Error::ChainBroken {
                seq,
                reason: format!(
                    "event bytes hash to {actual}, the record says {}: the event was altered",
                    r.hash
                ),
            });
        }
        let claimed_prev = r.prev().map_err(|e| Error::ChainBroken {
            seq,
            reason: format!("cannot read prev: {e}"),
        })?;
        if claimed_prev != prev {
            return Err(Error::ChainBroken {
                seq,
                reason: if i == 0 {
                    "the first event's prev is not all zeros: events before it were removed"
                        .to_string()
                } else {
                    format!(
                        "prev is {claimed_prev} but the event before it hashes to {prev}: an event was removed, inserted or reordered here"
                    )
                },
            });
        }
        prev = r.hash;
    }
    Ok(ChainHead {
        len: records.len() as u64,
        hash: prev,
    })
}

/// Writes sealed events as a history document, one record per line.
pub fn write(events: &[SealedEvent]) -> Vec<u8> {
    let mut out = Vec::with_capacity(events.iter().map(|e| e.body.len() + 90).sum::<usize>() + 4);
    out.extend_from_slice(b"[\n");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b",\n");
        }
        e.write_record(&mut out);
    }
    out.extend_from_slice(b"\n]\n");
    out
}

/// An Ed25519 public key (32 bytes, 64 hex digits in JSON).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The public key of a 32-byte Ed25519 secret.
    pub fn from_secret(secret: &[u8; 32]) -> Self {
        PublicKey(SigningKey::from_bytes(secret).verifying_key().to_bytes())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for PublicKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Hash::from_hex(s.trim().as_bytes())
            .map(|h| PublicKey(h.0))
            .ok_or_else(|| Error::InvalidKey("a public key is 64 hex digits".into()))
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s: Cow<'de, str> = Cow::deserialize(d)?;
        s.parse()
            .map_err(|e: Error| D::Error::custom(e.to_string()))
    }
}

/// The server's signature over a stream's head at some sequence number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedHead {
    /// The payment.
    pub stream: PaymentId,
    /// The sequence number signed.
    pub seq: u64,
    /// The hash of the event at `seq`.
    pub hash: Hash,
    /// Ed25519 signature over [`SignedHead::message`], 128 hex digits.
    pub signature: String,
}

impl SignedHead {
    /// Reads a signed head, `{"stream","seq","hash","signature"}` (as the server
    /// publishes it; other members are refused).
    ///
    /// ```
    /// use trustfold_core::history::SignedHead;
    /// use trustfold_core::{hash::Hash, id::PaymentId};
    /// let head = SignedHead::sign(PaymentId::from_bytes([1; 16]), 3, Hash::of(b"x"), &[7; 32]);
    /// let json = serde_json::to_vec(&head).unwrap();
    /// assert_eq!(SignedHead::from_json(&json)?, head);
    /// assert_eq!(SignedHead::from_json(b"{}").unwrap_err().code(), "malformed_json");
    /// # Ok::<(), trustfold_core::Error>(())
    /// ```
    pub fn from_json(json: &[u8]) -> Result<SignedHead> {
        json::read::stream(json, |r| {
            read_members!(
                r,
                SignedHead {
                    stream: PaymentId,
                    seq: u64,
                    hash: Hash,
                    signature: String,
                }
            )
        })
    }

    /// The exact bytes signed: `trustfold-head-v1\n<stream>\n<seq>\n<hash>`.
    pub fn message(stream: PaymentId, seq: u64, hash: Hash) -> Vec<u8> {
        format!("trustfold-head-v1\n{stream}\n{seq}\n{hash}").into_bytes()
    }

    /// Signs a head with a 32-byte Ed25519 secret (deterministic, no randomness).
    pub fn sign(stream: PaymentId, seq: u64, hash: Hash, secret: &[u8; 32]) -> SignedHead {
        let sig = SigningKey::from_bytes(secret).sign(&Self::message(stream, seq, hash));
        let signature = sig.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        SignedHead {
            stream,
            seq,
            hash,
            signature,
        }
    }

    /// Checks the signature with the server's public key.
    pub fn verify(&self, key: &PublicKey) -> Result<()> {
        verify_signature(
            key,
            &Self::message(self.stream, self.seq, self.hash),
            &self.signature,
        )
        .map_err(|e| match e {
            Error::BadSignature(m) if m.is_empty() => Error::BadSignature(format!(
                "head of {} at seq {} was not signed by key {key}",
                self.stream, self.seq
            )),
            e => e,
        })
    }

    /// Checks that this is the head of `payment`, the history's payment: another
    /// payment's head is `bad_signature` naming both payments (its length and hash say
    /// nothing about this history). [`SignedHead::verify_against`] checks this, and a
    /// verifier that reads a history line by line calls it with the first event's
    /// payment, so both report the same.
    ///
    /// ```
    /// use trustfold_core::{hash::Hash, history::SignedHead, id::PaymentId};
    /// let (a, b) = (PaymentId::from_bytes([1; 16]), PaymentId::from_bytes([2; 16]));
    /// let head = SignedHead::sign(a, 1, Hash::ZERO, &[7; 32]);
    /// assert!(head.check_payment(a).is_ok());
    /// assert_eq!(head.check_payment(b).unwrap_err().code(), "bad_signature");
    /// ```
    pub fn check_payment(&self, payment: PaymentId) -> Result<()> {
        if payment == self.stream {
            return Ok(());
        }
        Err(Error::BadSignature(format!(
            "it is the head of payment {}, but the history is of payment {payment}: check \
             the history against its own payment's head",
            self.stream
        )))
    }

    /// Checks the signature, that the history's event at `seq` has the signed hash, and
    /// that it is the history's last event: the chain's hashes are public arithmetic, so
    /// events after the signed one could have been added by anyone (`chain_broken` at
    /// the first of them; fetch the current head to verify them). A head of another
    /// payment is `bad_signature` naming both payments (its length and hash say nothing
    /// about this history).
    pub fn verify_against(&self, key: &PublicKey, records: &[RawRecord<'_>]) -> Result<()> {
        self.verify(key)?;
        // The first record's stream (a record that does not parse is the fold's to report).
        if let Some(Ok(first)) = records.first().map(RawRecord::envelope) {
            self.check_payment(first.stream)?;
        }
        if (records.len() as u64) > self.seq {
            return Err(Error::ChainBroken {
                seq: self.seq + 1,
                reason: unsigned_after(self.seq, records.len() as u64),
            });
        }
        let idx = usize::try_from(self.seq).unwrap_or(usize::MAX);
        let rec = idx
            .checked_sub(1)
            .and_then(|i| records.get(i))
            .ok_or_else(|| Error::ChainBroken {
                seq: self.seq,
                reason: format!(
                    "the signed head is at seq {} but the history has only {} events: events were removed from its end",
                    self.seq,
                    records.len()
                ),
            })?;
        if rec.hash != self.hash {
            return Err(Error::ChainBroken {
                seq: self.seq,
                reason: "the event at the signed seq differs from the one the server signed".into(),
            });
        }
        Ok(())
    }
}

/// Checks a 128-hex-digit Ed25519 `signature` of `message` against `key`; a signature
/// that does not match is `BadSignature` with an empty message (the caller names what
/// was signed).
fn verify_signature(key: &PublicKey, message: &[u8], signature: &str) -> Result<()> {
    let vk = VerifyingKey::from_bytes(&key.0)
        .map_err(|_| Error::InvalidKey("not a valid Ed25519 public key".into()))?;
    let raw = signature.as_bytes();
    if raw.len() != 128 {
        return Err(Error::BadSignature("a signature is 128 hex digits".into()));
    }
    let mut bytes = [0u8; 64];
    for (i, half) in raw.chunks_exact(64).enumerate() {
        let h = Hash::from_hex(half)
            .ok_or_else(|| Error::BadSignature("signature is not hex".into()))?;
        bytes[i * 32..i * 32 + 32].copy_from_slice(&h.0);
    }
    vk.verify(message, &Signature::from_bytes(&bytes))
        .map_err(|_| Error::BadSignature(String::new()))
}

/// The server's signature of one response body about a payment (the `Trustfold-Signature`
/// header of its state, event pages and head, and of a command's answer when the command
/// was sent with a `nonce`). What a participant is shown without being
/// able to verify it — a redacted view — is then at least the pinned server's own answer
/// to that request, not a stranger's on the way:
/// `trustfold-response-v2\n<payment>\n<what>\n<SHA-256 of the credential>\n<SHA-256 of
/// the body>`, where `what` is the route after `/v1/payments/{id}` as the clients ask it:
/// empty for the state, `/events?after=N` for a page (so a page cannot be passed off as
/// another), `/head` for the signed head's answer, `/commands` for a command's answer
/// (opening a payment included; always with a nonce); and the credential is the bearer the
/// request was made with (API key or participant token; empty without one), so another
/// participant's answer — its view, signed for its own credential — does not verify
/// for this one. Alone it does not say when: an old answer can be replayed. A client
/// that wants a fresh one sends a random `nonce` query parameter, which the server
/// appends to `what` (`?nonce=N`, or `&nonce=N` after `after`): an answer signed for
/// another nonce does not verify.
///
/// ```
/// use trustfold_core::history::{PublicKey, SignedResponse};
/// use trustfold_core::id::PaymentId;
/// let secret = [7u8; 32];
/// let key = PublicKey::from_secret(&secret);
/// let p = PaymentId::from_bytes([1; 16]);
/// let body = b"{\"status\":\"Held\"}";
/// let sig = SignedResponse::sign(p, "", "tft_mine", body, &secret);
/// assert!(SignedResponse::verify(&key, p, "", "tft_mine", body, &sig).is_ok());
/// let e = SignedResponse::verify(&key, p, "", "tft_mine", b"{\"status\":\"Completed\"}", &sig)
///     .unwrap_err();
/// assert_eq!(e.code(), "bad_signature");
/// assert!(SignedResponse::verify(&key, p, "/events?after=0", "tft_mine", body, &sig).is_err());
/// // Another participant's answer (signed for its credential) is not this one's.
/// assert!(SignedResponse::verify(&key, p, "", "tft_theirs", body, &sig).is_err());
/// ```
pub struct SignedResponse;

impl SignedResponse {
    /// The exact bytes signed.
    pub fn message(payment: PaymentId, what: &str, credential: &str, body: &[u8]) -> Vec<u8> {
        format!(
            "trustfold-response-v2\n{payment}\n{what}\n{}\n{}",
            Hash::of(credential.as_bytes()),
            Hash::of(body)
        )
        .into_bytes()
    }

    /// `what` asked with a `nonce`, as the server signs it: `?nonce=N` appended, or
    /// `&nonce=N` after another parameter.
    ///
    /// ```
    /// use trustfold_core::history::SignedResponse;
    /// assert_eq!(SignedResponse::with_nonce("/head", "n1"), "/head?nonce=n1");
    /// assert_eq!(SignedResponse::with_nonce("/events?after=3", "n1"), "/events?after=3&nonce=n1");
    /// ```
    pub fn with_nonce(what: &str, nonce: &str) -> String {
        let sep = if what.contains('?') { '&' } else { '?' };
        format!("{what}{sep}nonce={nonce}")
    }

    /// The signature (128 hex digits) of `body`, the answer to `what` about `payment`
    /// asked with `credential` (the request's bearer, empty without one).
    pub fn sign(
        payment: PaymentId,
        what: &str,
        credential: &str,
        body: &[u8],
        secret: &[u8; 32],
    ) -> String {
        let sig =
            SigningKey::from_bytes(secret).sign(&Self::message(payment, what, credential, body));
        sig.to_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Checks `signature` of `body` (the answer to `what` about `payment`, asked with
    /// `credential`) against `key`.
    pub fn verify(
        key: &PublicKey,
        payment: PaymentId,
        what: &str,
        credential: &str,
        body: &[u8],
        signature: &str,
    ) -> Result<()> {
        verify_signature(
            key,
            &Self::message(payment, what, credential, body),
            signature,
        )
        .map_err(|e| match e {
            Error::BadSignature(m) if m.is_empty() => Error::BadSignature(format!(
                "the server's answer about {payment} was not signed by key {key} for this \
                     request: it was changed or replayed on the way, answers another \
                     credential, or comes from another server"
            )),
            e => e,
        })
    }
}

/// Why events after a signed head are refused (shared with the SDKs' streaming checks).
///
/// ```
/// use trustfold_core::history::unsigned_after;
/// assert!(unsigned_after(18, 22).starts_with("the signed head is at seq 18 but the history has 22 events"));
/// ```
pub fn unsigned_after(head_seq: u64, events: u64) -> String {
    format!(
        "the signed head is at seq {head_seq} but the history has {events} events: the \
         events after it are not signed by the server (anyone can extend a hash chain); \
         fetch the current signed head"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::Driver;
    use crate::json::testing::{damaged, serde_code};
    use crate::prelude::*;

    fn history() -> Vec<u8> {
        let mut d = Driver::new(
            PaymentId::from_bytes([1; 16]),
            Timestamp::from_unix_millis(0),
        );
        let policy = Policy::from_json(include_str!("../../examples/policies/marketplace.json"))
            .expect("policy");
        d.run(
            Actor::party(PartyId::from_bytes([2; 16]), "platform"),
            Command::Initiate {
                payment: d.payment(),
                tenant: TenantId::from_bytes([3; 16]),
                policy: Box::new(policy),
                amount: Money::parse("10", Currency::new("USD").expect("usd")).expect("amount"),
                description: String::new(),
                roles: vec![Role::new("platform")],
                name: String::new(),
            },
        )
        .expect("initiate");
        d.run(
            Actor::party(PartyId::from_bytes([2; 16]), "platform"),
            Command::Invite {
                party: PartyId::from_bytes([4; 16]),
                roles: vec![Role::new("buyer")],
                name: "B".into(),
                email: None,
            },
        )
        .expect("invite");
        d.history()
    }

    /// A head of another payment is named as such, whatever its length.
    #[test]
    fn a_head_of_another_payment_is_named() {
        let h = history();
        let records = parse(&h).expect("records");
        let secret = [7u8; 32];
        let key = PublicKey::from_secret(&secret);
        let last = records.last().expect("a record").hash;
        let mine = SignedHead::sign(PaymentId::from_bytes([1; 16]), 2, last, &secret);
        mine.verify_against(&key, &records).expect("its own head");
        let other = PaymentId::from_bytes([9; 16]);
        for seq in [1, 2, 5] {
            let head = SignedHead::sign(other, seq, last, &secret);
            let e = head
                .verify_against(&key, &records)
                .expect_err("another payment's head");
            assert_eq!(e.code(), "bad_signature", "{e}");
            assert!(
                e.to_string().contains(&format!("head of payment {other}")),
                "{e}"
            );
        }
    }

    /// The word-at-a-time line-break search answers what a byte loop answers, for
    /// every start and every position of one or two breaks.
    #[test]
    fn newline_search_agrees_with_a_byte_loop() {
        for len in 0..40usize {
            for first in 0..=len {
                for second in first..=len {
                    let mut b = vec![b'x'; len];
                    for at in [first, second] {
                        if at < len {
                            b[at] = b'\n';
                        }
                    }
                    b.iter_mut()
                        .step_by(3)
                        .filter(|c| **c != b'\n')
                        .for_each(|c| *c = 0x8a);
                    for from in 0..=len {
                        let naive = b[from..].iter().position(|&c| c == b'\n').map(|i| i + from);
                        assert_eq!(newline(&b, from), naive, "{b:?} from {from}");
                    }
                }
            }
        }
    }

    #[test]
    fn line_scanner_and_json_parser_agree() {
        let h = history();
        let fast = parse_lines(&h).expect("canonical layout takes the fast path");
        let text = String::from_utf8(h.clone()).expect("utf8");
        // Same records on one line: only the JSON parser reads that.
        let one_line = text
            .replace(",\n{", ", {")
            .replace("[\n", "[ ")
            .replace("\n]", " ]");
        assert!(parse_lines(one_line.as_bytes()).is_none());
        let slow = parse(one_line.as_bytes()).expect("json path");
        assert_eq!(fast.len(), slow.len());
        for (a, b) in fast.iter().zip(&slow) {
            assert_eq!(a.hash, b.hash);
            assert_eq!(a.event.get(), b.event.get());
        }
        assert_eq!(
            verify_chain(&fast).expect("chain"),
            verify_chain(&slow).expect("chain")
        );
        // Not quite the layout (a stray space): falls back, same answer.
        let spaced = text.replacen("{\"hash\"", "{ \"hash\"", 1);
        assert!(parse_lines(spaced.as_bytes()).is_none());
        assert_eq!(
            parse(spaced.as_bytes()).expect("json path").len(),
            fast.len()
        );
        // Garbage never takes the fast path into a wrong answer.
        assert!(parse(b"[\n{\"hash\":\"zz\",\"event\":{}}\n]\n").is_err());
    }

    /// Damaged around every line break and comma: whatever the line scanner takes,
    /// the JSON parser reads the same records from.
    #[test]
    fn line_scanner_never_takes_what_the_parser_reads_otherwise() {
        let h = history();
        let mut taken = 0;
        let mut checked = 0;
        let marks: Vec<usize> = h
            .iter()
            .enumerate()
            .filter(|(_, &c)| c == b'\n' || c == b',' || c == b'[' || c == b']')
            .map(|(i, _)| i)
            .collect();
        for &m in &marks {
            for at in m.saturating_sub(2)..(m + 3).min(h.len()) {
                for r in [&b""[..], b" ", b"\n", b",", b"x", b"}", b"\n\n"] {
                    let mut d = h[..at].to_vec();
                    d.extend_from_slice(r);
                    d.extend_from_slice(&h[at + 1..]);
                    checked += 1;
                    let Some(fast) = parse_lines(&d) else {
                        continue;
                    };
                    taken += 1;
                    let slow = serde_json::from_slice::<Vec<RawRecord<'_>>>(&d);
                    let agree = slow.as_ref().is_ok_and(|slow| {
                        slow.len() == fast.len()
                            && fast
                                .iter()
                                .zip(slow)
                                .all(|(a, b)| a.hash == b.hash && a.event.get() == b.event.get())
                    });
                    if !agree {
                        // The scanner does not check the events' JSON: parsing them
                        // as envelopes, next, refuses the damage.
                        let refused = fast.iter().any(|r| {
                            crate::envelope::Envelope::from_json(r.event.get().as_bytes()).is_err()
                        });
                        assert!(refused, "{}", String::from_utf8_lossy(&d));
                    }
                }
            }
        }
        assert!(
            checked > 100 && taken > 0,
            "{checked} damaged, {taken} taken"
        );
    }

    /// The reader's parse of a whole history in any layout agrees with serde's
    /// `Vec<RawRecord>`: the same records, or an error with the same code, on the
    /// document in another layout and damaged at every byte of its first records.
    #[test]
    fn history_json_reads_as_serde_reads_it() {
        let h = history();
        let text = String::from_utf8(h.clone()).expect("utf8");
        let compact = text.replace(",\n{", ", {").replace("[\n", "[ ");
        let mut checked = 0;
        for doc in [h.clone(), compact.into_bytes()] {
            let ends = doc.len().min(3500);
            for at in 0..ends {
                for d in damaged(&doc, at) {
                    let ours = parse_json(&d, false).map_err(|e| e.code());
                    let theirs = serde_code::<Vec<RawRecord<'_>>>(&d);
                    match (&ours, &theirs) {
                        (Ok(a), Ok(b)) => {
                            assert_eq!(a.len(), b.len());
                            for (x, y) in a.iter().zip(b) {
                                assert_eq!((x.hash, x.event.get()), (y.hash, y.event.get()));
                            }
                        }
                        (a, b) => assert_eq!(
                            a.as_ref().err(),
                            b.as_ref().err(),
                            "{}",
                            String::from_utf8_lossy(
                                &d[at.saturating_sub(40)..(at + 40).min(d.len())]
                            )
                        ),
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 50_000, "{checked}");
        // Unknown members of a record: refused, or skipped when asked.
        let extra = text.replacen("{\"hash\"", "{\"x\":[1],\"hash\"", 1);
        assert_eq!(
            parse_json(extra.as_bytes(), false).unwrap_err().code(),
            "malformed_json"
        );
        assert_eq!(
            parse_json(extra.as_bytes(), true).expect("skipped").len(),
            parse(&h).expect("h").len()
        );
    }

    /// A record on its own (a live stream's message), and `prev` read from an envelope
    /// in another layout: as serde reads them.
    #[test]
    fn records_and_prev_read_as_serde_reads_them() {
        let h = history();
        let records = parse(&h).expect("history");
        let second = format!(
            "{{\"hash\":\"{}\",\"event\":{}}}",
            records[1].hash,
            records[1].event.get()
        );
        #[derive(serde::Deserialize)]
        struct PrevOnly {
            prev: Hash,
        }
        let spaced = records[1]
            .event
            .get()
            .replacen("{\"prev\"", "{ \"seq\": 2, \"prev\"", 1);
        for (doc, event) in [(second.as_bytes(), false), (spaced.as_bytes(), true)] {
            for at in 0..doc.len() {
                for d in damaged(doc, at) {
                    if event {
                        let raw = RawRecord {
                            hash: Hash::ZERO,
                            event: EventBytes(std::str::from_utf8(&d).unwrap_or("")),
                        };
                        let ours = raw.prev().map_err(|e| e.code());
                        let theirs =
                            serde_code::<PrevOnly>(raw.event.get().as_bytes()).map(|p| p.prev);
                        assert_eq!(ours, theirs, "{}", raw.event.get());
                    } else {
                        let ours = record(&d)
                            .map(|r| (r.hash, r.event.get()))
                            .map_err(|e| e.code());
                        let theirs =
                            serde_code::<RawRecord<'_>>(&d).map(|r| (r.hash, r.event.get()));
                        assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(&d));
                    }
                }
            }
        }
        assert_eq!(
            records[1].prev().expect("canonical"),
            RawRecord {
                hash: Hash::ZERO,
                event: EventBytes(&spaced)
            }
            .prev()
            .expect("spaced")
        );
    }

    /// Signed heads: the reader and serde agree on a valid one and on every damaged
    /// copy.
    #[test]
    fn signed_heads_read_as_serde_reads_them() {
        let head = SignedHead::sign(PaymentId::from_bytes([1; 16]), 3, Hash::of(b"x"), &[7; 32]);
        let json = serde_json::to_vec(&head).expect("json");
        assert_eq!(SignedHead::from_json(&json).expect("head"), head);
        let pretty = serde_json::to_vec_pretty(&head).expect("json");
        for doc in [json, pretty] {
            for at in 0..doc.len() {
                for d in damaged(&doc, at) {
                    let ours = SignedHead::from_json(&d).map_err(|e| e.code());
                    let theirs = serde_code::<SignedHead>(&d);
                    assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(&d));
                }
            }
        }
    }
}
