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
    // Each byte's value as a hex digit, 0x80 for non-digits.
    use crate::hash::HEX_VALUE as HEX;
    // Where each byte's two digits start.
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    let Ok(s) = <&[u8; 36]>::try_from(b) else {
        return Uuid::try_parse_ascii(b).ok();
    };
    let mut out = [0u8; 16];
    let mut bad = (s[8] ^ b'-') | (s[13] ^ b'-') | (s[18] ^ b'-') | (s[23] ^ b'-');
    let mut k = 0;
    while k < 16 {
        let i = AT[k];
        let hi = HEX[usize::from(s[i])];
        let lo = HEX[usize::from(s[i + 1])];
        bad |= (hi | lo) & 0xf0;
        out[k] = (hi << 4) | (lo & 0x0f);
        k += 1;
    }
    if bad != 0 {
        return Uuid::try_parse_ascii(b).ok();
    }
    Some(Uuid::from_bytes(out))
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
                    .map_err(|_| Error::InvalidId(s.to_string()))
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
}
