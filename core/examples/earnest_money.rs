//! `make demo`: the real-estate earnest-money flow through the core, step by step.
//!
//! A listing agent opens a $5,000 earnest-money payment; buyer, seller, escrow holder
//! and lender join; the buyer pays by ACH, which is returned (R01, insufficient funds);
//! the buyer pays again by wire; the escrow holder releases part to the seller with
//! both parties' approval, then the rest. After each step it prints the state; at the
//! end it verifies the whole history (hash chain + signed head) and rebuilds the state
//! from it, as any client would, and shows what the lender is allowed to see.
//!
//! Run: `cargo run -p trustfold-core --example earnest_money [-- --history FILE]`

use std::error::Error as StdError;

use trustfold_core::driver::Driver;
use trustfold_core::fold::verify_and_replay;
use trustfold_core::history::{PublicKey, SignedHead};
use trustfold_core::ledger::Account;
use trustfold_core::prelude::*;
use trustfold_core::view::state_view;

fn party(n: u8) -> PartyId {
    PartyId::from_bytes([0xa0, 0, 0, 0, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, n])
}

struct Demo {
    d: Driver,
    step: u32,
}

impl Demo {
    fn run(&mut self, what: &str, actor: Actor, cmd: Command) -> Result<(), Box<dyn StdError>> {
        self.step += 1;
        let events = self.d.run(actor, cmd)?;
        let names: Vec<&str> = events.iter().map(|e| e.event_type().name()).collect();
        let s = self.d.state()?;
        let esc = s.ledger.balance(&Account::Escrow);
        println!(
            "{:>2}. {:<58} -> {:<18} escrow {:>9} (available {:>9})  [{}]",
            self.step,
            what,
            format!("{:?}", s.status),
            esc.posted.amount_string(),
            esc.available().amount_string(),
            names.join(", ")
        );
        Ok(())
    }

    fn refuse(&mut self, what: &str, actor: Actor, cmd: Command) {
        self.step += 1;
        match self.d.run(actor, cmd) {
            Ok(_) => println!("{:>2}. {what}: unexpectedly accepted", self.step),
            Err(e) => println!(
                "{:>2}. {:<58} -> refused: {} ({})",
                self.step,
                what,
                e,
                e.code()
            ),
        }
    }
}

fn main() -> Result<(), Box<dyn StdError>> {
    let out_file = std::env::args().skip_while(|a| a != "--history").nth(1);
    let policy = Policy::from_json(include_str!("../../examples/policies/earnest-money.json"))?;
    let usd = Currency::new("USD")?;
    let (agent, buyer, seller, escrow, lender) = (party(1), party(2), party(3), party(4), party(5));
    let mut demo = Demo {
        d: Driver::new(
            PaymentId::from_bytes([0xb0, 0, 0, 0, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 1]),
            "2026-11-02T15:00:00Z".parse()?,
        ),
        step: 0,
    };
    let as_ = |p: PartyId, role: &str| Actor::party(p, role);
    println!("trustfold demo: earnest money for 12 Elm St (policy earnest-money v1)\n");

    demo.run(
        "listing agent opens a $5,000.00 earnest-money payment",
        as_(agent, "listing_agent"),
        Command::Initiate {
            payment: demo.d.payment(),
            tenant: TenantId::from_bytes([0x7e; 16]),
            policy: Box::new(policy),
            amount: Money::parse("5000.00", usd)?,
            description: "Earnest money, 12 Elm St".into(),
            roles: vec![Role::new("listing_agent")],
            name: "Lee Listing".into(),
        },
    )?;
    for (p, role, name) in [
        (buyer, "buyer", "Bea Buyer"),
        (seller, "seller", "Sol Seller"),
        (escrow, "escrow_holder", "Esme Escrow"),
        (lender, "lender", "Len Lender"),
    ] {
        demo.run(
            &format!("invite {name} as {role}"),
            as_(agent, "listing_agent"),
            Command::Invite {
                party: p,
                roles: vec![Role::new(role)],
                name: name.into(),
                email: Some(format!("{}@example.com", role)),
            },
        )?;
        demo.run(&format!("{name} joins"), as_(p, role), Command::Join)?;
    }
    let terms_hash = demo.d.state()?.terms_hash;
    demo.run(
        "buyer agrees to the terms",
        as_(buyer, "buyer"),
        Command::AgreeToTerms { terms_hash },
    )?;
    demo.run(
        "seller agrees to the terms",
        as_(seller, "seller"),
        Command::AgreeToTerms { terms_hash },
    )?;

    demo.run(
        "buyer pays $5,000.00 by ACH",
        as_(buyer, "buyer"),
        Command::SubmitFunding {
            amount: Money::parse("5000.00", usd)?,
            rail: Rail::Ach,
            rail_ref: "ach-7781".into(),
        },
    )?;
    demo.d.advance_hours(24);
    demo.run(
        "bank: ACH settled",
        Actor::rail(),
        Command::RailNotice {
            rail_ref: "ach-7781".into(),
            notice: RailOutcome::Settled { amount: None },
        },
    )?;
    demo.d.advance_hours(24);
    demo.run(
        "bank: ACH returned R01 (insufficient funds)",
        Actor::rail(),
        Command::RailNotice {
            rail_ref: "ach-7781".into(),
            notice: RailOutcome::Returned {
                code: "R01".into(),
                reason: "insufficient funds".into(),
                amount: None,
            },
        },
    )?;
    demo.run(
        "bank: the same return notice again (duplicate)",
        Actor::rail(),
        Command::RailNotice {
            rail_ref: "ach-7781".into(),
            notice: RailOutcome::Returned {
                code: "R01".into(),
                reason: "insufficient funds".into(),
                amount: None,
            },
        },
    )?;
    demo.run(
        "buyer pays again, by wire",
        as_(buyer, "buyer"),
        Command::SubmitFunding {
            amount: Money::parse("5000.00", usd)?,
            rail: Rail::Wire,
            rail_ref: "wire-2231".into(),
        },
    )?;
    demo.d.advance_hours(3);
    demo.run(
        "bank: wire settled (good funds at once)",
        Actor::rail(),
        Command::RailNotice {
            rail_ref: "wire-2231".into(),
            notice: RailOutcome::Settled { amount: None },
        },
    )?;

    let req1 = RequestId::from_bytes([0xc0, 0, 0, 0, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 1]);
    demo.d.advance_hours(24 * 20);
    demo.run(
        "escrow holder requests a partial release: $2,000.00 to seller",
        as_(escrow, "escrow_holder"),
        Command::RequestRelease {
            request: req1,
            allocations: vec![Allocation {
                party: seller,
                amount: Money::parse("2000.00", usd)?,
            }],
        },
    )?;
    let h = demo.d.state()?.requests[&req1].allocations_hash;
    demo.refuse(
        "lender tries to approve",
        as_(lender, "lender"),
        Command::Approve {
            request: req1,
            allocations_hash: h,
        },
    );
    demo.run(
        "buyer approves",
        as_(buyer, "buyer"),
        Command::Approve {
            request: req1,
            allocations_hash: h,
        },
    )?;
    demo.run(
        "seller approves (quorum: release authorized)",
        as_(seller, "seller"),
        Command::Approve {
            request: req1,
            allocations_hash: h,
        },
    )?;
    demo.run(
        "escrow holder sends it by wire",
        as_(escrow, "escrow_holder"),
        Command::SubmitDisbursement {
            request: req1,
            rail: Rail::Wire,
            rail_ref: "out-1".into(),
        },
    )?;
    demo.run(
        "bank: disbursement settled",
        Actor::rail(),
        Command::RailNotice {
            rail_ref: "out-1".into(),
            notice: RailOutcome::Settled { amount: None },
        },
    )?;
    let req2 = RequestId::from_bytes([0xc0, 0, 0, 0, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 2]);
    demo.d.advance_hours(24 * 10);
    demo.run(
        "escrow holder requests the rest: $3,000.00 to seller",
        as_(escrow, "escrow_holder"),
        Command::RequestRelease {
            request: req2,
            allocations: vec![Allocation {
                party: seller,
                amount: Money::parse("3000.00", usd)?,
            }],
        },
    )?;
    let h = demo.d.state()?.requests[&req2].allocations_hash;
    demo.run(
        "buyer approves",
        as_(buyer, "buyer"),
        Command::Approve {
            request: req2,
            allocations_hash: h,
        },
    )?;
    demo.run(
        "seller approves",
        as_(seller, "seller"),
        Command::Approve {
            request: req2,
            allocations_hash: h,
        },
    )?;
    demo.run(
        "escrow holder sends it",
        as_(escrow, "escrow_holder"),
        Command::SubmitDisbursement {
            request: req2,
            rail: Rail::Wire,
            rail_ref: "out-2".into(),
        },
    )?;
    demo.run(
        "bank: disbursement settled",
        Actor::rail(),
        Command::RailNotice {
            rail_ref: "out-2".into(),
            notice: RailOutcome::Settled { amount: None },
        },
    )?;

    // What any client does with the history: verify and rebuild.
    let history = demo.d.history();
    let state = demo.d.state()?;
    let server_secret = [0x42u8; 32];
    let key = PublicKey::from_secret(&server_secret);
    let head = SignedHead::sign(state.payment, state.version, state.head, &server_secret);
    let rebuilt = verify_and_replay(&history, Some(&head), Some(&key))?;
    println!(
        "\nhistory: {} events, {} bytes",
        state.version,
        history.len()
    );
    println!(
        "verification: hash chain intact, head at seq {} signed by {key}: OK",
        head.seq
    );
    println!(
        "rebuilt state identical to the live one: {}",
        if rebuilt.to_json() == state.to_json() {
            "yes (byte for byte)"
        } else {
            "NO"
        }
    );
    println!("\nledger balances:");
    for (acct, b) in &rebuilt.ledger.balances {
        println!(
            "  {:<50} {:>10}",
            acct.to_string(),
            b.posted.amount_string()
        );
    }
    // Change one digit of the wire funding's amount, as a forger would.
    let text = String::from_utf8(history.clone())?;
    let tampered: Vec<u8> = text
        .lines()
        .map(|l| {
            if l.contains("\"wire-2231\"") && l.contains("FundingSubmitted") {
                l.replacen("5000.00", "9000.00", 1)
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        .into_bytes();
    match verify_and_replay(&tampered, Some(&head), Some(&key)) {
        Ok(_) => println!("\ntampered copy: verified (unexpected!)"),
        Err(e) => println!("\ntampered copy (one digit changed): {e}"),
    }
    let lender_view = state_view(&rebuilt, &[Role::new("lender")]);
    println!(
        "\nwhat the lender sees: status {}, amount {}, ledger {}",
        lender_view["status"], lender_view["amount"], lender_view["ledger"]
    );
    if let Some(path) = out_file {
        std::fs::write(&path, &history)?;
        println!("history written to {path}");
    }
    println!("\nfinal state: {:?}", rebuilt.status);
    Ok(())
}
