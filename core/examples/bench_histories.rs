//! The benchmark histories on disk, and native Rust's fold over them: the native side
//! of `npm/bench/fold.mjs` (wasm vs native vs a plain JS reducer on the same bytes).
//!
//! ```text
//! cargo run --release -p trustfold-core --example bench_histories -- gen DIR [PAYMENTS]
//! cargo run --release -p trustfold-core --example bench_histories -- fold DIR [PASSES]
//! ```
//!
//! `gen` writes the corpus of `core/benches/fold.rs` (10,000 earnest-money payments ×
//! exactly 20 events, each the history document a client fetches) as
//! `DIR/histories.bin` (the documents back to back) and `DIR/index.json`
//! (`{"payments","events","docs":[[offset,len]…]}`); it does nothing when `DIR` already
//! holds a corpus of that size. `fold` times, over the same bytes, `fold::replay`
//! (verify and fold) and `fold::replay_unverified` (fold only), each followed by
//! `PaymentState::to_json` (the work the wasm `replay` binding does), and prints one
//! JSON line of events/s (median of `PASSES`, default 5).

use std::error::Error;
use std::fs;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use trustfold_core::driver::Driver;
use trustfold_core::envelope::SealedEvent;
use trustfold_core::event::{Allocation, FundingMethod};
use trustfold_core::fold;
use trustfold_core::history;
use trustfold_core::prelude::*;
use uuid::Uuid;

type R<T> = Result<T, Box<dyn Error>>;

const EVENTS: usize = 20;

fn id(kind: u32, i: u32) -> Uuid {
    Uuid::from_u128((u128::from(kind) << 96) | (u128::from(i) << 32) | 0x5eed)
}

/// Payment `i` of the corpus: the same history as `core/benches/fold.rs` builds.
fn payment(i: u32, policy: &Policy) -> R<Vec<SealedEvent>> {
    let usd = Currency::new("USD")?;
    let p = |k: u32| PartyId::from_uuid(id(k, i));
    let (agent, buyer, seller, holder) = (p(1), p(2), p(3), p(4));
    let start: Timestamp = "2026-03-02T09:00:00Z".parse()?;
    let mut d = Driver::new(PaymentId::from_uuid(id(9, i)), start);
    d.advance_hours(i64::from(i % 500));
    let cents = 10_000 + u64::from(i).wrapping_mul(2_654_435_761) % 24_989_999;
    let amount = Money::parse(&format!("{}.{:02}", cents / 100, cents % 100), usd)?;
    let ach = i % 3 != 0;
    let rail = if ach { Rail::Ach } else { Rail::Wire };
    let la = Actor::party(agent, "listing_agent");
    let payment_id = d.payment();
    d.run(
        la.clone(),
        Command::Initiate {
            payment: payment_id,
            tenant: TenantId::from_uuid(id(8, i % 17)),
            policy: Box::new(policy.clone()),
            amount,
            description: format!("{} Elm Street, unit {}", 100 + i % 900, i % 7),
            roles: vec![Role::new("listing_agent")],
            name: format!("Agent {i}"),
        },
    )?;
    for (party, role, name) in [
        (buyer, "buyer", "Buyer"),
        (seller, "seller", "Seller"),
        (holder, "escrow_holder", "Title Co"),
    ] {
        d.run(
            la.clone(),
            Command::Invite {
                party,
                roles: vec![Role::new(role)],
                name: format!("{name} {i}"),
                email: Some(format!("{role}{i}@example.com")),
            },
        )?;
    }
    for (party, role) in [
        (buyer, "buyer"),
        (seller, "seller"),
        (holder, "escrow_holder"),
    ] {
        d.run(Actor::party(party, role), Command::Join)?;
    }
    d.advance_hours(2);
    for (party, role) in [(buyer, "buyer"), (seller, "seller")] {
        let terms_hash = d.state()?.terms_hash;
        d.run(
            Actor::party(party, role),
            Command::AgreeToTerms { terms_hash },
        )?;
    }
    let b = Actor::party(buyer, "buyer");
    d.run(
        b.clone(),
        Command::AttachFundingMethod {
            method: FundingMethod {
                rail,
                institution: "First National".into(),
                account_last4: format!("{:04}", i % 10_000),
                holder: format!("Buyer {i}"),
            },
        },
    )?;
    let fref = format!("{}-{:08}", if ach { "ach" } else { "wire" }, i);
    d.run(
        b,
        Command::SubmitFunding {
            amount,
            rail,
            rail_ref: fref.clone(),
        },
    )?;
    d.advance_hours(20);
    d.run(
        Actor::rail(),
        Command::RailNotice {
            rail_ref: fref,
            notice: RailOutcome::Settled { amount: None },
        },
    )?;
    if ach {
        d.advance_hours(24 * 4);
        d.run(Actor::system(), Command::Tick)?;
    }
    let allocations = if i % 4 == 0 {
        let parts = amount.allocate(&[3, 1])?;
        vec![
            Allocation {
                party: seller,
                amount: parts[0],
            },
            Allocation {
                party: buyer,
                amount: parts[1],
            },
        ]
    } else {
        vec![Allocation {
            party: seller,
            amount,
        }]
    };
    let request = RequestId::from_uuid(id(7, i));
    let h = Actor::party(holder, "escrow_holder");
    d.run(
        h.clone(),
        Command::RequestRelease {
            request,
            allocations,
        },
    )?;
    for (party, role) in [(buyer, "buyer"), (seller, "seller")] {
        let allocations_hash = d
            .state()?
            .requests
            .get(&request)
            .ok_or("the release request is missing")?
            .allocations_hash;
        d.run(
            Actor::party(party, role),
            Command::Approve {
                request,
                allocations_hash,
            },
        )?;
    }
    let dref = format!("wire-out-{i:08}");
    d.run(
        h,
        Command::SubmitDisbursement {
            request,
            rail: Rail::Wire,
            rail_ref: dref.clone(),
        },
    )?;
    d.advance_hours(3);
    d.run(
        Actor::rail(),
        Command::RailNotice {
            rail_ref: dref,
            notice: RailOutcome::Settled { amount: None },
        },
    )?;
    let mut sealed = d.sealed().to_vec();
    if sealed.len() < EVENTS {
        return Err(format!("payment {i}: only {} events", sealed.len()).into());
    }
    sealed.truncate(EVENTS);
    Ok(sealed)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Index {
    payments: usize,
    events: usize,
    docs: Vec<(usize, usize)>,
}

fn gen(dir: &Path, payments: usize) -> R<()> {
    let index_path = dir.join("index.json");
    if let Ok(text) = fs::read(&index_path) {
        if let Ok(ix) = serde_json::from_slice::<Index>(&text) {
            if ix.payments == payments && ix.events == payments * EVENTS {
                eprintln!(
                    "bench_histories: {} already holds the corpus",
                    dir.display()
                );
                return Ok(());
            }
        }
    }
    let started = Instant::now();
    let policy = Policy::from_json(include_str!("../../examples/policies/earnest-money.json"))?;
    let mut all = Vec::with_capacity(payments * 14_000);
    let mut docs = Vec::with_capacity(payments);
    for i in 0..payments {
        let sealed = payment(u32::try_from(i)?, &policy)?;
        let bytes = history::write(&sealed);
        docs.push((all.len(), bytes.len()));
        all.extend_from_slice(&bytes);
    }
    fs::create_dir_all(dir)?;
    fs::write(dir.join("histories.bin"), &all)?;
    let ix = Index {
        payments,
        events: payments * EVENTS,
        docs,
    };
    fs::write(&index_path, serde_json::to_vec(&ix)?)?;
    eprintln!(
        "bench_histories: {payments} payments × {EVENTS} events, {} bytes, in {:.1} s",
        all.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Median wall time of `n` passes of `f`.
fn median<F: FnMut() -> R<u64>>(n: usize, mut f: F) -> R<Duration> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        black_box(f()?);
        v.push(t.elapsed());
    }
    v.sort();
    v.get(n / 2).copied().ok_or_else(|| "no passes".into())
}

fn fold_bench(dir: &Path, passes: usize) -> R<()> {
    let ix: Index = serde_json::from_slice(&fs::read(dir.join("index.json"))?)?;
    let all = fs::read(dir.join("histories.bin"))?;
    let docs: Vec<&[u8]> = ix
        .docs
        .iter()
        .map(|&(o, l)| all.get(o..o + l).ok_or("index out of range"))
        .collect::<Result<_, _>>()?;
    let replay = || -> R<u64> {
        let mut n = 0;
        for d in &docs {
            let s = fold::replay(d)?;
            black_box(s.to_json());
            n += s.version;
        }
        Ok(n)
    };
    let unverified = || -> R<u64> {
        let mut n = 0;
        for d in &docs {
            let s = fold::replay_unverified(d)?;
            black_box(s.to_json());
            n += s.version;
        }
        Ok(n)
    };
    let got = replay()?;
    if got != ix.events as u64 {
        return Err(format!("folded {got} events, the index says {}", ix.events).into());
    }
    let v = median(passes, replay)?;
    let u = median(passes, unverified)?;
    let rate = |d: Duration| ix.events as f64 / d.as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "events": ix.events,
            "passes": passes,
            "verify_fold_events_per_s": rate(v),
            "fold_only_events_per_s": rate(u),
        })
    );
    Ok(())
}

fn main() -> R<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: bench_histories gen DIR [PAYMENTS] | fold DIR [PASSES]";
    let (mode, dir) = match (args.first(), args.get(1)) {
        (Some(m), Some(d)) => (m.as_str(), Path::new(d)),
        _ => return Err(usage.into()),
    };
    let n = args.get(2).map(|s| s.parse::<usize>()).transpose()?;
    match mode {
        "gen" => gen(dir, n.unwrap_or(10_000)),
        "fold" => fold_bench(dir, n.unwrap_or(5)),
        _ => Err(usage.into()),
    }
}
