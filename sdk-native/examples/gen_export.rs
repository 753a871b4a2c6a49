//! Writes a generated export (golden vectors cloned under new payment ids) and its
//! heads: `cargo run --release -p trustfold --example gen_export -- EVENTS OUT HEADS`.
//! The heads are signed with the secret `[7; 32]`; its public key is printed.

#[path = "../tests/support/mod.rs"]
mod support;

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let out = args.next().unwrap_or_else(|| "export.ndjson".into());
    let heads = args.next().unwrap_or_else(|| "heads.ndjson".into());
    let (p, e) = support::write_export(out.as_ref(), heads.as_ref(), n);
    println!("{e} events of {p} payments; key {}", support::key());
}
