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
