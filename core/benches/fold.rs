//! Fold and verification speed against the two physical limits, on the same bytes.
//!
//! Builds 10,000 earnest-money payments of exactly 20 events each with the
//! [`Driver`] (ids, amounts, rails and release splits vary), writes each as the
//! history document a client would fetch, and measures events per second for:
//!
//! - `replay` — fold from JSON with hash-chain verification ([`fold::replay`]);
//! - `replay_unverified` — fold from JSON without verification;
//! - `verify_chain` — [`history::parse`] + [`history::verify_chain`] only;
//! - `limit/serde_typed` — plain `serde_json` parsing of the records into typed
//!   structs (`Vec<{hash: Hash, event: Envelope}>`), no fold, no hashing;
//! - `limit/sha256` — plain SHA-256 over each event's bytes.
//!
//! plus the state's JSON (`state_json/to_json`, [`PaymentState::to_json`] on each
//! payment's final state, against `state_json/serde_to_vec`, serde's derived
//! `Serialize` over `serde_json`, which `to_json` must match byte for byte);
//!
//! plus a breakdown (record parsing alone, typed envelopes from raw records, the fold
//! of pre-parsed envelopes, the first event's policy validation and hash) to show
//! where time goes. Criterion reports each with `Throughput::Elements`; a summary
//! table with the ratios against the targets (fold ≥ 0.8× parsing, verification ≥
//! 0.8× SHA-256) is printed at the end from an extra timed pass.
//!
//! Run: `cargo bench -p trustfold-core --bench fold` (or `make bench`).
//! Quick check: `cargo bench -p trustfold-core --bench fold -- --test`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, SamplingMode, Throughput};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use trustfold_core::driver::Driver;
use trustfold_core::event::{Allocation, Event, FundingMethod};
use trustfold_core::fold;
use trustfold_core::hash::Hash;
use trustfold_core::history;
use trustfold_core::prelude::*;
use uuid::Uuid;

const PAYMENTS: usize = 10_000;
const EVENTS: usize = 20;

/// One payment's history: the document bytes and where each event's bytes are.
struct Doc {
    bytes: Vec<u8>,
    events: Vec<(usize, usize)>,
}

fn id(kind: u32, i: u32) -> Uuid {
    Uuid::from_u128((u128::from(kind) << 96) | (u128::from(i) << 32) | 0x5eed)
}

/// A realistic earnest-money history: open, invite, join, agree, fund (ACH or wire),
/// settle, good funds, release (whole or split), approvals, disbursement, settle.
fn payment(i: u32, policy: &Policy) -> Vec<trustfold_core::envelope::SealedEvent> {
    let usd = Currency::new("USD").expect("USD");
    let p = |k: u32| PartyId::from_uuid(id(k, i));
    let (agent, buyer, seller, holder) = (p(1), p(2), p(3), p(4));
    let start: Timestamp = "2026-03-02T09:00:00Z".parse().expect("time");
    let mut d = Driver::new(PaymentId::from_uuid(id(9, i)), start);
    d.advance_hours(i64::from(i % 500));
    // 100.00 to 249,999.99 USD, varying cents.
    let cents = 10_000 + u64::from(i).wrapping_mul(2_654_435_761) % 24_989_999;
    let amount = Money::parse(&format!("{}.{:02}", cents / 100, cents % 100), usd).expect("amount");
    let ach = i % 3 != 0;
    let rail = if ach { Rail::Ach } else { Rail::Wire };
    let run = |d: &mut Driver, actor: Actor, cmd: Command| {
        d.run(actor, cmd).expect("scenario command accepted");
    };
    let la = Actor::party(agent, "listing_agent");
    let payment_id = d.payment();
    run(
        &mut d,
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
    );
    for (party, role, name) in [
        (buyer, "buyer", "Buyer"),
        (seller, "seller", "Seller"),
        (holder, "escrow_holder", "Title Co"),
    ] {
        run(
            &mut d,
            la.clone(),
            Command::Invite {
                party,
                roles: vec![Role::new(role)],
                name: format!("{name} {i}"),
                email: Some(format!("{role}{i}@example.com")),
            },
        );
    }
    for (party, role) in [
        (buyer, "buyer"),
        (seller, "seller"),
        (holder, "escrow_holder"),
    ] {
        run(&mut d, Actor::party(party, role), Command::Join);
    }
    d.advance_hours(2);
    for (party, role) in [(buyer, "buyer"), (seller, "seller")] {
        let terms_hash = d.state().expect("state").terms_hash;
        run(
            &mut d,
            Actor::party(party, role),
            Command::AgreeToTerms { terms_hash },
        );
    }
    let b = Actor::party(buyer, "buyer");
    run(
        &mut d,
        b.clone(),
        Command::AttachFundingMethod {
            method: FundingMethod {
                rail,
                institution: "First National".into(),
                account_last4: format!("{:04}", i % 10_000),
                holder: format!("Buyer {i}"),
            },
        },
    );
    let fref = format!("{}-{:08}", if ach { "ach" } else { "wire" }, i);
    run(
        &mut d,
        b,
        Command::SubmitFunding {
            amount,
            rail,
            rail_ref: fref.clone(),
        },
    );
    d.advance_hours(20);
    run(
        &mut d,
        Actor::rail(),
        Command::RailNotice {
            rail_ref: fref,
            notice: RailOutcome::Settled { amount: None },
        },
    );
    if ach {
        d.advance_hours(24 * 4);
        run(&mut d, Actor::system(), Command::Tick);
    }
    // Release everything to the seller, or part of it split seller/buyer.
    let allocations = if i % 4 == 0 {
        let parts = amount.allocate(&[3, 1]).expect("split");
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
    run(
        &mut d,
        h.clone(),
        Command::RequestRelease {
            request,
            allocations,
        },
    );
    for (party, role) in [(buyer, "buyer"), (seller, "seller")] {
        let allocations_hash = d.state().expect("state").requests[&request].allocations_hash;
        run(
            &mut d,
            Actor::party(party, role),
            Command::Approve {
                request,
                allocations_hash,
            },
        );
    }
    let dref = format!("wire-out-{i:08}");
    run(
        &mut d,
        h,
        Command::SubmitDisbursement {
            request,
            rail: Rail::Wire,
            rail_ref: dref.clone(),
        },
    );
    d.advance_hours(3);
    run(
        &mut d,
        Actor::rail(),
        Command::RailNotice {
            rail_ref: dref,
            notice: RailOutcome::Settled { amount: None },
        },
    );
    let mut sealed = d.sealed().to_vec();
    assert!(
        sealed.len() >= EVENTS,
        "payment {i}: {} events",
        sealed.len()
    );
    // A prefix of a valid history is a valid history.
    sealed.truncate(EVENTS);
    sealed
}

fn corpus() -> Vec<Doc> {
    let policy = Policy::from_json(include_str!("../../examples/policies/earnest-money.json"))
        .expect("policy");
    (0..PAYMENTS as u32)
        .map(|i| {
            let sealed = payment(i, &policy);
            let bytes = history::write(&sealed);
            let base = bytes.as_ptr() as usize;
            let events = history::parse(&bytes)
                .expect("parses")
                .iter()
                .map(|r| {
                    let s = r.event.get();
                    (s.as_ptr() as usize - base, s.len())
                })
                .collect();
            Doc { bytes, events }
        })
        .collect()
}

#[derive(Deserialize)]
struct TypedRecord {
    #[allow(dead_code)]
    hash: Hash,
    #[allow(dead_code)]
    event: Envelope,
}

// The measured operations, each over the whole corpus; each returns something to
// keep the optimizer honest.

fn op_replay(docs: &[Doc]) -> u64 {
    docs.iter()
        .map(|d| fold::replay(&d.bytes).expect("replay").version)
        .sum()
}

fn op_replay_unverified(docs: &[Doc]) -> u64 {
    docs.iter()
        .map(|d| fold::replay_unverified(&d.bytes).expect("replay").version)
        .sum()
}

fn op_verify(docs: &[Doc]) -> u64 {
    docs.iter()
        .map(|d| {
            let r = history::parse(&d.bytes).expect("parse");
            history::verify_chain(&r).expect("verify").len
        })
        .sum()
}

fn op_serde_typed(docs: &[Doc]) -> u64 {
    docs.iter()
        .map(|d| {
            let v: Vec<TypedRecord> = serde_json::from_slice(&d.bytes).expect("typed parse");
            v.len() as u64
        })
        .sum()
}

fn op_sha256(docs: &[Doc]) -> u64 {
    let mut acc = 0u64;
    for d in docs {
        for &(off, len) in &d.events {
            let h: [u8; 32] = Sha256::digest(&d.bytes[off..off + len]).into();
            acc = acc.wrapping_add(u64::from(h[0]));
        }
    }
    acc
}

fn op_parse_raw(docs: &[Doc]) -> u64 {
    docs.iter()
        .map(|d| history::parse(&d.bytes).expect("parse").len() as u64)
        .sum()
}

fn op_raw_then_typed(docs: &[Doc]) -> u64 {
    docs.iter()
        .map(|d| {
            let r = history::parse(&d.bytes).expect("parse");
            r.iter()
                .map(|x| x.envelope().expect("envelope").seq)
                .sum::<u64>()
        })
        .sum()
}

fn op_prev_and_hash(docs: &[Doc]) -> u64 {
    // verify_chain's work without the record parse: SHA-256 + reading `prev`.
    let mut acc = 0u64;
    for d in docs {
        let mut prev = Hash::ZERO;
        for &(off, len) in &d.events {
            let b = &d.bytes[off..off + len];
            let h = Hash::of(b);
            let claimed = Hash::from_hex(&b[9..73]).expect("prev");
            acc += u64::from(claimed == prev);
            prev = h;
        }
    }
    acc
}

fn envelopes(docs: &[Doc]) -> Vec<Vec<(Envelope, Hash)>> {
    docs.iter()
        .map(|d| {
            history::parse(&d.bytes)
                .expect("parse")
                .iter()
                .map(|r| (r.envelope().expect("envelope"), r.hash))
                .collect()
        })
        .collect()
}

fn op_fold_only(parsed: &[Vec<(Envelope, Hash)>]) -> u64 {
    parsed
        .iter()
        .map(|evs| {
            fold::fold(evs.iter().map(|(e, h)| (e, *h)))
                .expect("fold")
                .version
        })
        .sum()
}

fn op_start_only(parsed: &[Vec<(Envelope, Hash)>]) -> u64 {
    parsed
        .iter()
        .map(|evs| fold::start(&evs[0].0, evs[0].1).expect("start").version)
        .sum()
}

fn op_policy_hash(parsed: &[Vec<(Envelope, Hash)>]) -> u64 {
    parsed
        .iter()
        .map(|evs| match &evs[0].0.event {
            Event::PaymentInitiated(e) => {
                e.policy.validate().expect("valid");
                u64::from(e.policy.hash().0[0])
            }
            _ => 0,
        })
        .sum()
}

fn op_state_to_json(states: &[PaymentState]) -> u64 {
    states.iter().map(|s| s.to_json().len() as u64).sum()
}

fn op_state_serde_to_vec(states: &[PaymentState]) -> u64 {
    states
        .iter()
        .map(|s| serde_json::to_vec(s).expect("serializes").len() as u64)
        .sum()
}

fn total_events() -> u64 {
    (PAYMENTS * EVENTS) as u64
}

/// Median wall time of `n` passes.
fn time<F: FnMut() -> u64>(n: usize, mut f: F) -> Duration {
    let mut v: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            black_box(f());
            t.elapsed()
        })
        .collect();
    v.sort();
    v[n / 2]
}

fn benches(c: &mut Criterion) {
    let t = Instant::now();
    let docs = corpus();
    let parsed = envelopes(&docs);
    let event_bytes: usize = docs.iter().flat_map(|d| &d.events).map(|e| e.1).sum();
    let doc_bytes: usize = docs.iter().map(|d| d.bytes.len()).sum();
    let first_bytes: usize = docs.iter().map(|d| d.events[0].1).sum();
    let n = total_events();
    eprintln!(
        "corpus: {PAYMENTS} payments x {EVENTS} events = {n} events in {:.1?}; \
         envelope avg {:.0} B (first event with its policy avg {:.0} B, others avg {:.0} B); \
         history documents {:.1} MB",
        t.elapsed(),
        event_bytes as f64 / n as f64,
        first_bytes as f64 / PAYMENTS as f64,
        (event_bytes - first_bytes) as f64 / (n - PAYMENTS as u64) as f64,
        doc_bytes as f64 / 1e6
    );

    let mut g = c.benchmark_group("fold");
    // Flat sampling: 10 samples of equal iteration counts (one pass over the corpus
    // takes ~0.1-0.5 s, so linear sampling would need 55 passes per measure).
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(n));
    g.bench_function("replay", |b| b.iter(|| op_replay(&docs)));
    g.bench_function("replay_unverified", |b| {
        b.iter(|| op_replay_unverified(&docs))
    });
    g.bench_function("verify_chain", |b| b.iter(|| op_verify(&docs)));
    g.bench_function("limit/serde_typed", |b| b.iter(|| op_serde_typed(&docs)));
    g.bench_function("limit/sha256", |b| b.iter(|| op_sha256(&docs)));
    g.bench_function("breakdown/parse_raw_records", |b| {
        b.iter(|| op_parse_raw(&docs))
    });
    g.bench_function("breakdown/raw_records_then_typed", |b| {
        b.iter(|| op_raw_then_typed(&docs))
    });
    g.bench_function("breakdown/sha256_and_prev", |b| {
        b.iter(|| op_prev_and_hash(&docs))
    });
    g.bench_function("breakdown/fold_preparsed", |b| {
        b.iter(|| op_fold_only(&parsed))
    });
    g.finish();
    let mut g = c.benchmark_group("fold_first_event");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(PAYMENTS as u64));
    g.bench_function("start", |b| b.iter(|| op_start_only(&parsed)));
    g.bench_function("policy_validate_and_hash", |b| {
        b.iter(|| op_policy_hash(&parsed))
    });
    g.finish();
    let states: Vec<PaymentState> = docs
        .iter()
        .map(|d| fold::replay(&d.bytes).expect("replay"))
        .collect();
    let state_bytes = op_state_to_json(&states);
    assert_eq!(
        state_bytes,
        op_state_serde_to_vec(&states),
        "to_json and serde_json disagree on the size"
    );
    let mut g = c.benchmark_group("state_json");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(PAYMENTS as u64));
    g.bench_function("to_json", |b| b.iter(|| op_state_to_json(&states)));
    g.bench_function("serde_to_vec", |b| {
        b.iter(|| op_state_serde_to_vec(&states))
    });
    g.finish();

    // The summary: one more timed set of passes, same bytes, same process.
    if std::env::args().any(|a| a == "--test") {
        // `cargo bench -- --test` runs each once; skip the timed summary.
        return;
    }
    let passes = 5;
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let rows: Vec<(&str, Duration)> = vec![
        (
            "fold from JSON, verified (replay)",
            time(passes, || op_replay(&docs)),
        ),
        (
            "fold from JSON, unverified",
            time(passes, || op_replay_unverified(&docs)),
        ),
        (
            "chain verification (parse + verify_chain)",
            time(passes, || op_verify(&docs)),
        ),
        (
            "LIMIT plain serde_json typed parse",
            time(passes, || op_serde_typed(&docs)),
        ),
        (
            "LIMIT plain SHA-256 over event bytes",
            time(passes, || op_sha256(&docs)),
        ),
        (
            "  parse RawRecords only (history::parse)",
            time(passes, || op_parse_raw(&docs)),
        ),
        (
            "  RawRecords + Envelope::from_json each",
            time(passes, || op_raw_then_typed(&docs)),
        ),
        (
            "  SHA-256 + read prev (no record parse)",
            time(passes, || op_prev_and_hash(&docs)),
        ),
        (
            "  fold of pre-parsed envelopes",
            time(passes, || op_fold_only(&parsed)),
        ),
    ];
    let start = time(passes, || op_start_only(&parsed));
    let pol = time(passes, || op_policy_hash(&parsed));
    let to_json = time(passes, || op_state_to_json(&states));
    let serde_to_vec = time(passes, || op_state_serde_to_vec(&states));
    println!();
    println!("==== trustfold-core fold benchmark summary ({PAYMENTS} payments x {EVENTS} events, median of {passes} passes) ====");
    println!("envelope avg {:.0} bytes", event_bytes as f64 / n as f64);
    println!("{:<46} {:>14} {:>12}", "measure", "events/s", "ns/event");
    for (name, d) in &rows {
        println!(
            "{:<46} {:>14.0} {:>12.0}",
            name,
            rate(*d),
            d.as_nanos() as f64 / n as f64
        );
    }
    println!(
        "{:<46} {:>14.0} {:>12.0}   (per payment: start() on its first event)",
        "  fold::start (first event)",
        PAYMENTS as f64 / start.as_secs_f64(),
        start.as_nanos() as f64 / PAYMENTS as f64
    );
    println!(
        "{:<46} {:>14.0} {:>12.0}   (per payment)",
        "  policy validate + hash (first event)",
        PAYMENTS as f64 / pol.as_secs_f64(),
        pol.as_nanos() as f64 / PAYMENTS as f64
    );
    println!(
        "state JSON (final state of each payment): avg {:.0} bytes",
        state_bytes as f64 / PAYMENTS as f64
    );
    for (name, d) in [
        ("  PaymentState::to_json", to_json),
        ("  serde_json::to_vec(&state) (reference)", serde_to_vec),
    ] {
        println!(
            "{:<46} {:>14.0} {:>12.0}   (per state; MB/s {:.0})",
            name,
            PAYMENTS as f64 / d.as_secs_f64(),
            d.as_nanos() as f64 / PAYMENTS as f64,
            state_bytes as f64 / d.as_secs_f64() / 1e6
        );
    }
    let r = |i: usize| rate(rows[i].1);
    let fold_ratio = r(0) / r(3);
    let fold_unv_ratio = r(1) / r(3);
    let verify_ratio = r(2) / r(4);
    let mark = |x: f64| if x >= 0.8 { "MET" } else { "MISSED" };
    println!();
    println!(
        "fold(verified)/parse   = {fold_ratio:.2}  (target >= 0.80: {})",
        mark(fold_ratio)
    );
    println!(
        "fold(unverified)/parse = {fold_unv_ratio:.2}  (target >= 0.80: {})",
        mark(fold_unv_ratio)
    );
    println!(
        "verify/sha256          = {verify_ratio:.2}  (target >= 0.80: {})",
        mark(verify_ratio)
    );
    println!("==== end of summary ====");
}

criterion_group!(fold_benches, benches);

fn main() {
    fold_benches();
    Criterion::default().configure_from_args().final_summary();
}
