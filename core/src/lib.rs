//! # trustfold-core
//!
//! The pure domain of trustfold: **brokered, multi-party payments** as events, the
//! rules that turn commands into events, and the fold that turns events into state.
//! The same code runs in servers (native Rust) and in browsers (WebAssembly), so any
//! client can fetch a payment's history, verify it and rebuild its state itself and get
//! byte-for-byte the same answer. No I/O, no clock, no randomness, no async: times and
//! ids are inputs.
//!
//! ## Concepts
//!
//! - **Payment** — the aggregate: one event stream. Opened by an *initiator* (often an
//!   agent or a platform, neither payer nor payee) from a **policy**; see
//!   [`state::PaymentState`].
//! - **Participant** — a party in one or more **roles** (buyer, seller, listing_agent,
//!   escrow_holder, lender …). Role names come from the policy; the core knows only what
//!   the policy lets each role do and see.
//! - **Policy** — the customer's workflow as a versioned JSON document ([`policy`]):
//!   roles, funding rules, approvals (`all_of` / `n_of`), fees, limits, deadlines,
//!   visibility. The exact version is pinned in the payment's first event.
//! - **Event** — a fact ([`event::Event`]) inside an [`envelope::Envelope`] that links it
//!   into a SHA-256 hash chain ([`history`]).
//! - **Command** — a request ([`command::Command`]) judged by [`decide::decide`] into
//!   events or a typed rejection ([`Error::Rejected`] with a stable `code`).
//! - **Fold** — `state = events.fold(start, apply)` ([`fold`]); [`fold::replay`]
//!   verifies and folds a fetched history.
//! - **Ledger** — two-phase double-entry legs between per-payment accounts
//!   ([`ledger`]): pending → posted or voided, never edited.
//! - **Money** — exact decimals in an ISO 4217 currency ([`money`]); splits that sum to
//!   the whole.
//!
//! ## Example: open, fund, settle, replay
//!
//! ```
//! use trustfold_core::prelude::*;
//!
//! let policy = Policy::from_json(include_str!("../../examples/policies/marketplace.json"))?;
//! let usd = Currency::new("USD")?;
//! let (platform, buyer) = (PartyId::from_bytes([1; 16]), PartyId::from_bytes([2; 16]));
//! let payment = PaymentId::from_bytes([9; 16]);
//! let t0: Timestamp = "2026-11-26T09:00:00Z".parse()?;
//! let ctx = |n: u8, actor: Actor| Context {
//!     command_id: CommandId::from_bytes([n; 16]), actor, now: t0, correlation: None,
//! };
//!
//! let open = Command::Initiate {
//!     payment, tenant: TenantId::from_bytes([7; 16]), policy: Box::new(policy),
//!     amount: Money::parse("120.00", usd)?, description: "order 42".into(),
//!     roles: vec![Role::new("platform")], name: "Market".into(),
//! };
//! let d = handle(None, &open, &ctx(1, Actor::party(platform, "platform")))?;
//! let mut state = d.state;
//! let mut sealed = d.sealed;
//! for (n, cmd, actor) in [
//!     (2, Command::Invite { party: buyer, roles: vec![Role::new("buyer")], name: "Bo".into(), email: None },
//!      Actor::party(platform, "platform")),
//!     (3, Command::Join, Actor::party(buyer, "buyer")),
//! ] {
//!     let d = handle(Some(&state), &cmd, &ctx(n, actor))?;
//!     state = d.state;
//!     sealed.extend(d.sealed);
//! }
//! assert_eq!(state.status, Status::Draft); // the seller has not joined yet
//!
//! // Anyone holding the history can verify and rebuild the same state.
//! let history = trustfold_core::history::write(&sealed);
//! let rebuilt = replay(&history)?;
//! assert_eq!(rebuilt.to_json(), state.to_json());
//! # Ok::<(), trustfold_core::Error>(())
//! ```
//!
//! ## Pitfalls
//!
//! - Verify histories as the bytes you received: re-serializing an event changes its
//!   bytes and breaks its hash (and old events are upcast when parsed).
//! - `decide` is judged against the state you pass: pass the latest, and append with
//!   the expected version `state.version` so a concurrent command loses cleanly.

#![warn(missing_docs)]
#![deny(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod approval;
pub mod command;
mod command_read;
pub mod de;
pub mod decide;
pub mod driver;
pub mod envelope;
pub mod error;
pub mod event;
pub mod fold;
pub mod hash;
pub mod history;
pub mod id;
pub mod json;
pub mod ledger;
pub mod map;
pub mod money;
pub mod policy;
mod policy_json;
pub mod state;
pub mod time;
pub mod upcast;
pub mod view;

pub use error::{Error, Result};

/// The types most programs need.
pub mod prelude {
    pub use crate::command::{Command, CommandKind, Context, RailOutcome};
    pub use crate::decide::{allowed_commands, decide, handle, Decision};
    pub use crate::envelope::{Actor, Envelope, SealedEvent};
    pub use crate::error::{Error, Result};
    pub use crate::event::{Allocation, DisputeOutcome, Event, EventType, FundingMethod};
    pub use crate::fold::{apply, replay};
    pub use crate::hash::Hash;
    pub use crate::history::{PublicKey, SignedHead};
    pub use crate::id::{CommandId, EventId, LegId, PartyId, PaymentId, RequestId, TenantId};
    pub use crate::money::{Currency, Money};
    pub use crate::policy::{Policy, Rail, Role};
    pub use crate::state::{PaymentState, Status};
    pub use crate::time::Timestamp;
}
