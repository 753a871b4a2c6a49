//! Typed UUID ids. Ids are inputs: the core never generates a random one.
//!
//! Where the core must name something new (the events a command produces, the ledger
//! legs an event opens) it derives the id deterministically from ids it was given,
//! with [`derive()`], so a retried command yields the very same ids.
//!
//! ```
//! use trustfold_core::id::PaymentId;
//! let p: PaymentId = "5f0c1a52-3c1e-4a8e-9c1e-2b7f7c0e5a11".parse()?;
//! assert_eq!(p.to_string(), "5f0c1a52-3c1e-4a8e-9c1e-2b7f7c0e5a11");
//! assert_eq!("nope".parse::<PaymentId>().unwrap_err().code(), "invalid_id");
//! # Ok::<(), trustfold_core::Error>(())
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::Error;

/// Parses a UUID from ASCII as `Uuid::try_parse_ascii` does (the same results for any
/// input), with a quick path for the hyphenated form trustfold writes.
pub(crate) fn uuid_from_ascii(b: &[u8]) -> Option<Uuid> {
    use crate::hash::{hex8, word};
    let quick = <&[u8; 36]>::try_from(b).ok().and_then(|s| {
        if (s[8] ^ b'-') | (s[13] ^ b'-') | (s[18] ^ b'-') | (s[23] ^ b'-') != 0 {
            return None;
        }
        // Groups 2 and 3, and 4 and the start of 5, joined around their hyphens.
        let joined = |at: usize| (word(s, at) & 0xffff_ffff) | (word(s, at + 5) << 32);
        let a = hex8(word(s, 0))?;
        let b = hex8(joined(9))?;
        let c = hex8(joined(19))?;
        let d = hex8(word(s, 28))?;
        Some(Uuid::from_bytes([
            a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1],
            d[2], d[3],
        ]))
    });
    quick.or_else(|| Uuid::try_parse_ascii(b).ok())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// Wraps a UUID.
            pub const fn from_uuid(u: Uuid) -> Self {
                $name(u)
            }
            /// The UUID inside.
            pub const fn uuid(&self) -> Uuid {
                self.0
            }
            /// An id made from 16 bytes (for tests and derived ids).
            pub const fn from_bytes(b: [u8; 16]) -> Self {
                $name(Uuid::from_bytes(b))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                Uuid::parse_str(s)
                    .map($name)
                    .map_err(|_| Error::InvalidId(crate::error::echo(s)))
            }
        }
    };
}

id_type!(
    /// A payment: the aggregate, one event stream.
    PaymentId
);
id_type!(
    /// A party taking part in payments (a person or an organisation).
    PartyId
);
id_type!(
    /// A ledger leg (one two-phase transfer between two accounts).
    LegId
);
id_type!(
    /// A release or refund request, or a dispute.
    RequestId
);
id_type!(
    /// An event.
    EventId
);
id_type!(
    /// A command (the idempotency key of one command).
    CommandId
);
id_type!(
    /// A tenant (customer) owning policies and payments.
    TenantId
);

/// Derives a UUID (version 8, RFC 9562) from a parent UUID, a purpose label and an
/// index, by SHA-256. Pure and deterministic: same inputs, same id, on every platform.
///
/// ```
/// use trustfold_core::id::derive;
/// use uuid::Uuid;
/// let a = derive(Uuid::nil(), "event", 0);
/// assert_eq!(a, derive(Uuid::nil(), "event", 0));
/// assert_ne!(a, derive(Uuid::nil(), "event", 1));
/// assert_eq!(a.get_version_num(), 8);
/// ```
pub fn derive(parent: Uuid, purpose: &str, index: u32) -> Uuid {
    let mut h = Sha256::new();
    h.update(parent.as_bytes());
    h.update(purpose.as_bytes());
    h.update([0u8]);
    h.update(index.to_be_bytes());
    let digest = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(b).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quick path gives what `Uuid::try_parse_ascii` gives, for every form.
    #[test]
    fn uuids_parse_as_the_uuid_crate_does() {
        let base = "7d0f6a36-8f0e-4e7e-9a51-0c1b2d3e4f50";
        let mut cases: Vec<String> = vec![
            base.into(),
            base.to_uppercase(),
            base.replace('-', ""),
            format!("{{{base}}}"),
            format!("urn:uuid:{base}"),
            String::new(),
            "7d0f6a36-8f0e-4e7e-9a51-0c1b2d3e4f5".into(),
            "7d0f6a3608f0e-4e7e-9a51-0c1b2d3e4f50".into(),
        ];
        for i in 0..base.len() {
            for c in ["g", "-", "0", "F", "é", " "] {
                let mut s = base.to_string();
                if s.is_char_boundary(i) && s.is_char_boundary(i + 1) {
                    s.replace_range(i..i + 1, c);
                    cases.push(s);
                }
            }
        }
        for c in cases {
            assert_eq!(
                uuid_from_ascii(c.as_bytes()),
                Uuid::try_parse_ascii(c.as_bytes()).ok(),
                "{c}"
            );
        }
    }

    /// Every byte value at every position of the hyphenated form.
    #[test]
    fn every_byte_at_every_position_parses_as_the_uuid_crate_does() {
        let base = b"7d0f6a36-8f0e-4e7e-9a51-0c1b2d3e4f50";
        for i in 0..base.len() {
            for c in 0..=255u8 {
                let mut s = *base;
                s[i] = c;
                assert_eq!(
                    uuid_from_ascii(&s),
                    Uuid::try_parse_ascii(&s).ok(),
                    "{c:#x} at {i}"
                );
            }
        }
    }
}
