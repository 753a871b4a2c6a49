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

/// Derives a UUID from a parent UUID, a purpose label and an index, by SHA-256. Pure and
/// deterministic: same inputs, same id, on every platform.
///
/// The derived id is a version 8 UUID (RFC 9562) made of the digest's bytes, except when
/// the parent is **time-ordered** (version 7, as the server makes command ids): then
/// the derived id is a version 7 UUID with the parent's 48-bit millisecond timestamp and
/// 74 bits of the digest. Ids derived from one command thus sort with it by time, and a
/// store's unique index on event ids grows at its end instead of at random pages, which
/// makes each durable commit write fewer pages.
///
/// ```
/// use trustfold_core::id::derive;
/// use uuid::Uuid;
/// let a = derive(Uuid::nil(), "event", 0);
/// assert_eq!(a, derive(Uuid::nil(), "event", 0));
/// assert_ne!(a, derive(Uuid::nil(), "event", 1));
/// assert_eq!(a.get_version_num(), 8);
///
/// // A time-ordered parent (2026-11-27 05:00 UTC) gives time-ordered children.
/// let command: Uuid = "01a21b5f-e880-7000-8000-000000000001".parse()?;
/// let event = derive(command, "event", 0);
/// assert_eq!(event.get_version_num(), 7);
/// assert_eq!(event.as_bytes()[..6], command.as_bytes()[..6]);
/// assert_ne!(event, derive(command, "event", 1));
/// # Ok::<(), uuid::Error>(())
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
    if parent.get_version_num() == 7 {
        b[..6].copy_from_slice(&parent.as_bytes()[..6]);
        return uuid::Builder::from_bytes(b)
            .with_version(uuid::Version::SortRand)
            .with_variant(uuid::Variant::RFC4122)
            .into_uuid();
    }
    uuid::Builder::from_custom_bytes(b).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Children of a time-ordered parent keep its millisecond, are valid version 7
    /// UUIDs, differ by purpose and index, and sort after an earlier parent's children;
    /// any other parent gives version 8 ids from the digest alone.
    #[test]
    fn derived_ids_keep_a_time_ordered_parents_millisecond() {
        let at = |ms: u64, tail: u8| {
            let mut b = [tail; 16];
            b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
            uuid::Builder::from_bytes(b)
                .with_version(uuid::Version::SortRand)
                .with_variant(uuid::Variant::RFC4122)
                .into_uuid()
        };
        let earlier = at(0x01a2_1b5f_e880, 0x5a);
        let later = at(0x01a2_1b5f_e881, 0x00);
        let mut seen = HashSet::new();
        for parent in [earlier, later] {
            for purpose in ["event", "leg"] {
                for i in 0..50 {
                    let id = derive(parent, purpose, i);
                    assert_eq!(id.get_version_num(), 7, "{id}");
                    assert_eq!(id.get_variant(), uuid::Variant::RFC4122, "{id}");
                    assert_eq!(id.as_bytes()[..6], parent.as_bytes()[..6], "{id}");
                    assert!(seen.insert(id), "{id} derived twice");
                }
            }
        }
        assert!(derive(earlier, "event", 49) < derive(later, "event", 0));
        // The digest still decides the rest: the same inputs, the same id.
        assert_eq!(derive(later, "event", 3), derive(later, "event", 3));
        // Not time-ordered parents: version 8, unchanged by this rule.
        let v4 = Uuid::from_bytes([0x42; 16]);
        assert_eq!(derive(v4, "event", 0).get_version_num(), 8);
        assert_eq!(derive(Uuid::nil(), "event", 0).get_version_num(), 8);
    }

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
