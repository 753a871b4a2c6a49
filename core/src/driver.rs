//! An in-memory driver: runs commands against one payment and keeps its history.
//!
//! For examples, tests, benchmarks and demos — the same job a server does around
//! [`crate::decide::handle`], minus storage. Command ids are derived from the
//! payment id and a counter, and the clock is advanced by hand, so a scenario always
//! produces the same bytes.
//!
//! ```
//! use trustfold_core::driver::Driver;
//! use trustfold_core::prelude::*;
//! let mut d = Driver::new(PaymentId::from_bytes([1; 16]), "2026-11-26T09:00:00Z".parse()?);
//! let agent = PartyId::from_bytes([2; 16]);
//! let policy = Policy::from_json(include_str!("../../examples/policies/earnest-money.json"))?;
//! d.run(Actor::party(agent, "listing_agent"), Command::Initiate {
//!     payment: d.payment(), tenant: TenantId::from_bytes([3; 16]), policy: Box::new(policy),
//!     amount: Money::parse("5000", Currency::new("USD")?)?, description: "12 Elm St".into(),
//!     roles: vec![Role::new("listing_agent")], name: "Lee".into(),
//! })?;
//! assert_eq!(d.state()?.status, Status::Draft);
//! assert_eq!(trustfold_core::fold::replay(&d.history())?.to_json(), d.state()?.to_json());
//! # Ok::<(), trustfold_core::Error>(())
//! ```

use crate::command::{Command, Context};
use crate::decide::handle;
use crate::envelope::{Actor, Envelope, SealedEvent};
use crate::error::{Error, Result};
use crate::history;
use crate::id::{derive, CommandId, PaymentId};
use crate::state::PaymentState;
use crate::time::Timestamp;

/// Drives one payment in memory. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct Driver {
    payment: PaymentId,
    now: Timestamp,
    commands: u32,
    state: Option<PaymentState>,
    envelopes: Vec<Envelope>,
    sealed: Vec<SealedEvent>,
}

impl Driver {
    /// A driver for a new payment, its clock set to `now`.
    pub fn new(payment: PaymentId, now: Timestamp) -> Self {
        Driver {
            payment,
            now,
            commands: 0,
            state: None,
            envelopes: Vec::new(),
            sealed: Vec::new(),
        }
    }

    /// The payment's id.
    pub fn payment(&self) -> PaymentId {
        self.payment
    }

    /// The driver's clock.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Moves the clock forward.
    pub fn advance_hours(&mut self, hours: i64) {
        self.now = self.now.add_hours(hours);
    }

    /// Sets the clock.
    pub fn set_now(&mut self, now: Timestamp) {
        self.now = now;
    }

    /// The id the next command will get.
    pub fn next_command_id(&self) -> CommandId {
        CommandId(derive(self.payment.uuid(), "command", self.commands))
    }

    /// Runs a command as `actor`. On rejection nothing changes; the command counter
    /// still advances so the next command gets a fresh id.
    pub fn run(&mut self, actor: Actor, cmd: Command) -> Result<&[Envelope]> {
        let ctx = Context {
            command_id: self.next_command_id(),
            actor,
            now: self.now,
            correlation: None,
        };
        self.commands += 1;
        let d = handle(self.state.as_ref(), &cmd, &ctx)?;
        let from = self.envelopes.len();
        self.envelopes.extend(d.events);
        self.sealed.extend(d.sealed);
        self.state = Some(d.state);
        Ok(&self.envelopes[from..])
    }

    /// The current state.
    pub fn state(&self) -> Result<&PaymentState> {
        self.state
            .as_ref()
            .ok_or_else(|| Error::rejected("unknown_payment", "no payment yet"))
    }

    /// The events so far.
    pub fn envelopes(&self) -> &[Envelope] {
        &self.envelopes
    }

    /// The sealed events so far.
    pub fn sealed(&self) -> &[SealedEvent] {
        &self.sealed
    }

    /// The history document a client would fetch.
    pub fn history(&self) -> Vec<u8> {
        history::write(&self.sealed)
    }
}
