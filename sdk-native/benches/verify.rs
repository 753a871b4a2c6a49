//! `trustfold verify` end to end on a generated export: events/s and peak memory.
//!
//! Generates an export of `TRUSTFOLD_BENCH_EVENTS` events (default 1,000,000): the
//! golden-vector histories cloned round-robin under new payment ids (hashes, `prev`
//! and signed heads recomputed), then runs the release `trustfold verify` binary on it
//! under `/usr/bin/time -v` and prints events/s and peak RSS. A quarter-size export is
//! verified too, to show memory does not grow with the file.
//!
//! `make bench-sdk` (or `cargo bench -p trustfold --bench verify`).

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

struct Run {
    secs: f64,
    rss_kib: u64,
}

fn run(bin: &str, events: &Path, heads: &Path) -> Run {
    let key = support::key().to_string();
    let have_time = Path::new("/usr/bin/time").exists();
    let mut cmd = if have_time {
        let mut c = Command::new("/usr/bin/time");
        c.arg("-v").arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.arg("verify")
        .arg(events)
        .arg("--key")
        .arg(&key)
        .arg("--head")
        .arg(heads)
        .arg("--json");
    let t0 = Instant::now();
    let out = cmd.output().expect("run trustfold verify");
    let secs = t0.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("\"ok\":true"),
        "verify failed: {stdout} {stderr}"
    );
    let rss_kib = stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Run { secs, rss_kib }
}

fn bench(bin: &str, dir: &Path, n: u64) -> (u64, u64, f64, u64, u64) {
    let events = dir.join(format!("export-{n}.ndjson"));
    let heads = dir.join(format!("heads-{n}.ndjson"));
    let t0 = Instant::now();
    let (payments, written) = support::write_export(&events, &heads, n);
    let bytes = std::fs::metadata(&events).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "generated {written} events of {payments} payments ({:.0} MB) in {:.1}s",
        bytes as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    // Warm the page cache, then take the best of three (and the worst RSS).
    let _ = run(bin, &events, &heads);
    let runs: Vec<Run> = (0..3).map(|_| run(bin, &events, &heads)).collect();
    let best = runs.iter().map(|r| r.secs).fold(f64::INFINITY, f64::min);
    let rss = runs.iter().map(|r| r.rss_kib).max().unwrap_or(0);
    if std::env::var_os("TRUSTFOLD_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_file(&events);
        let _ = std::fs::remove_file(&heads);
    }
    (payments, written, best, rss, bytes)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let n: u64 = std::env::var("TRUSTFOLD_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 20_000 } else { 1_000_000 });
    let bin = env!("CARGO_BIN_EXE_trustfold");
    let tmp = tempfile::tempdir().expect("tempdir");
    // TRUSTFOLD_BENCH_KEEP=DIR writes the exports there and keeps them (to profile).
    let keep = std::env::var_os("TRUSTFOLD_BENCH_KEEP").map(std::path::PathBuf::from);
    let dir = keep.as_deref().unwrap_or(tmp.path());
    println!(
        "trustfold verify (export + heads, {} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!("| events | payments | file | wall (best of 3) | events/s | MB/s | peak RSS |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for size in [n / 4, n] {
        let (payments, events, secs, rss, bytes) = bench(bin, dir, size);
        println!(
            "| {events} | {payments} | {:.0} MB | {secs:.2} s | {:.0} | {:.0} | {:.1} MiB |",
            bytes as f64 / 1e6,
            events as f64 / secs,
            bytes as f64 / 1e6 / secs,
            rss as f64 / 1024.0
        );
    }
}
