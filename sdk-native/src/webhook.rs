//! Webhook signature verification ([Standard Webhooks] 1.0): for the webhooks the
//! reference server sends (`POST /v1/webhooks` registers an endpoint; each request is
//! one event of the tenant, the stored envelope verbatim in `data.event`), or webhooks a
//! service of yours sends with trustfold events.
//!
//! A webhook carries three headers: `webhook-id`, `webhook-timestamp` (Unix seconds)
//! and `webhook-signature`, a space-separated list of `v1,<base64 signature>` (several
//! during a secret rotation). Each signature is the HMAC-SHA256, keyed with the
//! base64-decoded part of the `whsec_…` secret, of `<id>.<timestamp>.<body>`.
//! A message verifies when any one `v1` signature matches (compared in constant time)
//! and its timestamp is within the tolerance (5 minutes by default) of now, so a
//! captured request cannot be replayed later.
//!
//! [Standard Webhooks]: https://www.standardwebhooks.com/
//!
//! ```
//! use trustfold::webhook::Webhook;
//! let wh = Webhook::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
//! let (id, ts, body) = ("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, br#"{"test": 2432232314}"#);
//! let sig = wh.sign(id, ts, body);
//! assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
//! // Verify at the moment it was sent (pass the current Unix time in real code).
//! wh.verify_at(id, &ts.to_string(), &format!("v1,bogus {sig}"), body, ts)?;
//! assert!(wh.verify_at(id, &ts.to_string(), &sig, body, ts + 301).is_err());
//! # Ok::<(), trustfold::Error>(())
//! ```

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

/// The default timestamp tolerance: 5 minutes either way.
pub const TOLERANCE_SECS: i64 = 5 * 60;

/// A webhook endpoint's secret, ready to verify (and, for tests, sign) messages.
#[derive(Clone)]
pub struct Webhook {
    key: Vec<u8>,
    tolerance: i64,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("tolerance", &self.tolerance)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// From a `whsec_<base64>` secret (the prefix is optional).
    pub fn new(secret: &str) -> Result<Self> {
        let b64 = secret
            .trim()
            .strip_prefix("whsec_")
            .unwrap_or(secret.trim());
        let key = STANDARD.decode(b64).map_err(|_| {
            Error::Webhook("the secret is not `whsec_` followed by base64: copy it again from the endpoint's settings".into())
        })?;
        if key.is_empty() {
            return Err(Error::Webhook("the secret is empty".into()));
        }
        Ok(Webhook {
            key,
            tolerance: TOLERANCE_SECS,
        })
    }

    /// Changes the timestamp tolerance (seconds either way).
    pub fn tolerance(mut self, secs: i64) -> Self {
        self.tolerance = secs;
        self
    }

    /// The `v1,<base64>` signature of a message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mac = self
            .mac(id, &timestamp.to_string(), body)
            .map(|m| m.finalize().into_bytes().to_vec())
            .unwrap_or_default();
        format!("v1,{}", STANDARD.encode(mac))
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> Result<Hmac<Sha256>> {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.key)
            .map_err(|_| Error::Webhook("unusable secret".into()))?;
        m.update(id.as_bytes());
        m.update(b".");
        m.update(timestamp.as_bytes());
        m.update(b".");
        m.update(body);
        Ok(m)
    }

    /// Verifies a message against the current time. `signatures` is the
    /// `webhook-signature` header as received.
    pub fn verify(&self, id: &str, timestamp: &str, signatures: &str, body: &[u8]) -> Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.verify_at(id, timestamp, signatures, body, now)
    }

    /// Verifies a message as of `now` (Unix seconds).
    pub fn verify_at(
        &self,
        id: &str,
        timestamp: &str,
        signatures: &str,
        body: &[u8],
        now: i64,
    ) -> Result<()> {
        let ts: i64 = timestamp.trim().parse().map_err(|_| {
            Error::Webhook(format!(
                "webhook-timestamp `{timestamp}` is not Unix seconds"
            ))
        })?;
        // Any i64 from the header: the difference is taken without overflow.
        if now.abs_diff(ts) > self.tolerance.unsigned_abs() {
            return Err(Error::Webhook(format!(
                "webhook-timestamp {ts} is more than {}s from now ({now}): a replayed or delayed message",
                self.tolerance
            )));
        }
        let mut saw_v1 = false;
        for sig in signatures.split_ascii_whitespace() {
            let Some(b64) = sig.strip_prefix("v1,") else {
                continue; // other versions (e.g. v1a) are not ours
            };
            saw_v1 = true;
            if let Ok(given) = STANDARD.decode(b64) {
                let check = self.mac(id, timestamp.trim(), body)?;
                // Constant-time comparison.
                if check.verify_slice(&given).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(Error::Webhook(if saw_v1 {
            "no signature matches: check the endpoint's secret, and verify the raw body bytes, not re-serialized JSON".into()
        } else {
            "webhook-signature holds no `v1,` signature".into()
        }))
    }
}

/// One event of the reference server's webhooks, its signature verified and its
/// envelope checked against its hash ([`Webhook::verify_event_at`]).
#[derive(Debug, Clone)]
pub struct DeliveredEvent {
    /// The event type (`FundsAvailable`, …).
    pub event_type: String,
    /// The tenant.
    pub tenant: uuid::Uuid,
    /// The payment.
    pub payment: trustfold_core::id::PaymentId,
    /// Its sequence number in the payment.
    pub seq: u64,
    /// Its global position in the tenant's feed (deduplicate and order by it).
    pub position: u64,
    /// The SHA-256 of its envelope's bytes: the chain link of a history.
    pub hash: trustfold_core::hash::Hash,
    /// The envelope, read from the bytes that hash.
    pub envelope: trustfold_core::envelope::Envelope,
    /// The envelope's bytes, as stored and hashed.
    pub bytes: Vec<u8>,
}

impl Webhook {
    /// Verifies one request of the reference server's webhooks as of `now` (Unix
    /// seconds) — the signature as [`Webhook::verify_at`] does — then reads its body:
    /// the envelope in `data.event` must hash to `data.hash`, and agree with
    /// `webhook-id`, `type`, `payment_id` and `seq`. A receiver can then keep
    /// `position` as its checkpoint and link `hash` into the payment's chain.
    ///
    /// ```
    /// use trustfold::webhook::Webhook;
    /// let wh = Webhook::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
    /// let body = br#"{"type":"Nope","timestamp":"2026-11-28T00:00:00Z","data":{}}"#;
    /// let sig = wh.sign("e1", 1_795_824_000, body);
    /// let err = wh.verify_event_at("e1", "1795824000", &sig, body, 1_795_824_000).unwrap_err();
    /// assert!(err.to_string().contains("data.event"), "{err}");
    /// # Ok::<(), trustfold::Error>(())
    /// ```
    pub fn verify_event_at<'b>(
        &self,
        id: &str,
        timestamp: &str,
        signatures: &str,
        body: &'b [u8],
        now: i64,
    ) -> Result<DeliveredEvent> {
        use trustfold_core::json::{object_members, string, uint};
        self.verify_at(id, timestamp, signatures, body, now)?;
        let bad = |what: String| Error::Webhook(format!("the webhook's body: {what}"));
        let top = object_members(body).map_err(|e| bad(e.to_string()))?;
        fn find<'a>(members: &[(String, &'a [u8])], name: &str) -> Option<&'a [u8]> {
            members.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
        }
        let member = |members: &[(String, &'b [u8])], name: &str| -> Result<&'b [u8]> {
            find(members, name).ok_or_else(|| bad(format!("no `{name}`")))
        };
        let event_type = string(member(&top, "type")?).map_err(|e| bad(format!("type: {e}")))?;
        let data = object_members(member(&top, "data")?).map_err(|e| bad(format!("data: {e}")))?;
        let text = |name: &str| -> Result<String> {
            string(member(&data, name)?).map_err(|e| bad(format!("data.{name}: {e}")))
        };
        let number = |name: &str| -> Result<u64> {
            uint(member(&data, name)?).map_err(|e| bad(format!("data.{name}: {e}")))
        };
        let bytes = member(&data, "event").map_err(|_| bad("no `data.event`".into()))?;
        let hash: trustfold_core::hash::Hash = text("hash")?
            .parse()
            .map_err(|e| bad(format!("data.hash: {e}")))?;
        if trustfold_core::hash::Hash::of(bytes) != hash {
            return Err(bad(
                "data.event does not hash to data.hash: it was altered (or re-serialized)".into(),
            ));
        }
        let envelope = trustfold_core::envelope::Envelope::from_json(bytes)
            .map_err(|e| bad(format!("data.event: {e}")))?;
        let tenant = uuid::Uuid::try_parse(&text("tenant_id")?)
            .map_err(|e| bad(format!("data.tenant_id: {e}")))?;
        let (payment, seq) = (text("payment_id")?, number("seq")?);
        if envelope.id.to_string() != id
            || envelope.event_type().name() != event_type
            || envelope.stream.to_string() != payment
            || envelope.seq != seq
        {
            return Err(bad(format!(
                "the envelope (event {} of type {} at seq {} of payment {}) is not the one the \
                 request names (webhook-id {id}, type {event_type}, seq {seq} of payment {payment})",
                envelope.id,
                envelope.event_type().name(),
                envelope.seq,
                envelope.stream
            )));
        }
        Ok(DeliveredEvent {
            event_type,
            tenant,
            payment: envelope.stream,
            seq,
            position: number("position")?,
            hash,
            envelope,
            bytes: bytes.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_timestamp_is_judged_without_overflow() {
        let wh = Webhook::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        for (ts, now) in [
            (i64::MIN, i64::MAX),
            (i64::MAX, i64::MIN),
            (i64::MIN, 0),
            (0, i64::MIN),
        ] {
            let e = wh
                .verify_at("msg_1", &ts.to_string(), "v1,AAAA", b"{}", now)
                .unwrap_err();
            assert!(e.to_string().contains("more than 300s from now"), "{e}");
        }
    }
}
