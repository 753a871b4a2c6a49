//! The server benchmark (issue 3): `make bench-server`, or
//! `scripts/with-postgres.sh cargo bench -p trustfold-server --bench server`.
//!
//! From one run, on PostgreSQL (`DATABASE_URL`, fsync on; skipped without it) and on a
//! SQLite file:
//!
//! - **raw**: plain single-row durable inserts (512-byte body), each its own
//!   transaction (autocommit, as pgbench runs a one-statement script), with 1 and with 16
//!   connections; on PostgreSQL also with a gap-free counter row locked per insert;
//! - **HTTP**: commands/s through the real API on loopback (the server runs in this
//!   process), with 1 and with 16 concurrent clients, each on its own payment; every
//!   command makes exactly one event (the buyer's `Approve` and `WithdrawApproval` of a
//!   pending release, alternately) and is answered only after its durable commit;
//! - **SSE**: command→event latency at a fixed rate of 1,000 commands/s, from sending
//!   the command to reading its event on an open `/v1/payments/{id}/stream`.
//!
//! Prints a table with the targets of the issue. Takes about a minute per engine.

#[path = "../tests/common/scenario.rs"]
mod scenario;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scenario::{open_and_join, Client, Flow};
use serde_json::json;
use sqlx::{Connection, Executor};
use trustfold_server::app::{start, Config};

type Res<T> = Result<T, String>;

const ADMIN: &str = "bench-admin";
/// Seconds per raw measurement.
const RAW_SECS: u64 = 3;
/// Seconds per HTTP throughput measurement.
const HTTP_SECS: u64 = 5;
/// Seconds of the fixed-rate latency run.
const LAT_SECS: u64 = 5;
/// The fixed rate of the latency run.
const LAT_RATE: u64 = 1_000;
/// Payments the latency run spreads its commands over.
const LAT_PAYMENTS: usize = 16;
const CLIENTS: usize = 16;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

#[derive(Default, Debug)]
struct Figures {
    raw1: f64,
    raw16: f64,
    raw16_counter: Option<f64>,
    http1: f64,
    http16: f64,
    /// 16 clients, each command with an `Idempotency-Key`.
    http16_keyed: f64,
    /// 16 clients spread over two server instances on one database (PostgreSQL only).
    http16_two: Option<f64>,
    events_per_commit16: f64,
    lat_rate: f64,
    lat_p50: f64,
    lat_p99: f64,
    lat_max: f64,
    /// Command round trip (sent → response read) in the fixed-rate run, ms.
    ack_p50: f64,
    ack_p99: f64,
    lat_missing: usize,
    errors: usize,
    /// CPU of this process (server + clients) per command in the 1- and 16-client runs, µs.
    cpu1_us: f64,
    cpu16_us: f64,
    /// Share of the machine's CPU time that was busy (all processes) during the 16-client
    /// run.
    busy16: f64,
}

/// This process's CPU time so far (user + system), in seconds, from `/proc/self/stat`
/// (0 where there is no procfs).
fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here; in ticks
    // of 1/100 s (USER_HZ on Linux).
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// The machine's (busy, total) CPU ticks so far, from `/proc/stat`.
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return (0.0, 0.0);
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let total: f64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut results: Vec<(&str, Figures)> = Vec::new();
    // TRUSTFOLD_BENCH_ENGINE=postgres or =sqlite runs one engine only.
    let only = std::env::var("TRUSTFOLD_BENCH_ENGINE").unwrap_or_default();
    match std::env::var("DATABASE_URL") {
        _ if only == "sqlite" => eprintln!("bench-server: PostgreSQL skipped"),
        Ok(url) if url.starts_with("postgres") => match postgres(&url).await {
            Ok(f) => results.push(("PostgreSQL", f)),
            Err(e) => {
                eprintln!("bench-server: PostgreSQL failed: {e}");
                std::process::exit(1);
            }
        },
        _ => eprintln!("bench-server: DATABASE_URL not set, PostgreSQL skipped"),
    }
    if only == "postgres" {
        eprintln!("bench-server: SQLite skipped");
    } else {
        match sqlite().await {
            Ok(f) => results.push(("SQLite", f)),
            Err(e) => {
                eprintln!("bench-server: SQLite failed: {e}");
                std::process::exit(1);
            }
        }
    }
    print_table(&results);
}

fn print_table(results: &[(&str, Figures)]) {
    println!();
    println!("| engine | measure | result | target | |");
    println!("|---|---|---:|---:|---|");
    for (engine, f) in results {
        let ratio = f.http1 / f.raw1;
        let ok = |b: bool| if b { "met" } else { "missed" };
        println!(
            "| {engine} | raw inserts/s, 1 connection | {:.0} | | |",
            f.raw1
        );
        println!(
            "| {engine} | raw inserts/s, 16 connections | {:.0} | | |",
            f.raw16
        );
        if let Some(c) = f.raw16_counter {
            println!(
                "| {engine} | raw inserts/s, 16 connections, counter row locked per insert | {c:.0} | | |"
            );
        }
        println!(
            "| {engine} | HTTP commands/s, 1 client | {:.0} ({ratio:.2}× raw) | ≥ 0.7× raw | {} |",
            f.http1,
            ok(ratio >= 0.7)
        );
        println!(
            "| {engine} | HTTP commands/s = events/s, 16 clients | {:.0} | ≥ 10,000 | {} |",
            f.http16,
            ok(f.http16 >= 10_000.0)
        );
        println!(
            "| {engine} | events per commit, 16 clients | {:.1} | | |",
            f.events_per_commit16
        );
        println!(
            "| {engine} | HTTP commands/s = events/s, 16 clients, each command with an Idempotency-Key (as the SDKs send) | {:.0} | | |",
            f.http16_keyed
        );
        if let Some(two) = f.http16_two {
            println!(
                "| {engine} | HTTP commands/s = events/s, 16 clients over two server processes on one database | {two:.0} | | |"
            );
        }
        println!(
            "| {engine} | CPU per command (server + clients, one process), 1 / 16 clients | {:.0} / {:.0} µs | | |",
            f.cpu1_us, f.cpu16_us
        );
        println!(
            "| {engine} | machine CPU busy during the 16-client run (all processes) | {:.0} % | | |",
            f.busy16 * 100.0
        );
        println!(
            "| {engine} | command→SSE p50 / p99 / max at {:.0} commands/s (target rate {LAT_RATE}) | {:.2} / {:.2} / {:.2} ms | p99 ≤ 10 ms | {} |",
            f.lat_rate,
            f.lat_p50,
            f.lat_p99,
            f.lat_max,
            ok(f.lat_p99 <= 10.0 && f.lat_rate >= 0.95 * LAT_RATE as f64)
        );
        println!(
            "| {engine} | command round trip (sent → answered) p50 / p99 in that run | {:.2} / {:.2} ms | | |",
            f.ack_p50, f.ack_p99
        );
        if f.lat_missing > 0 || f.errors > 0 {
            println!(
                "| {engine} | failed commands / events never seen on SSE | {} / {} | 0 / 0 | |",
                f.errors, f.lat_missing
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Engines.

async fn postgres(admin_url: &str) -> Res<Figures> {
    let (base, _) = admin_url
        .rsplit_once('/')
        .ok_or("DATABASE_URL has no database")?;
    let mut admin = sqlx::PgConnection::connect(admin_url).await.map_err(err)?;
    for db in ["tf_bench_raw", "tf_bench_http"] {
        admin
            .execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str())
            .await
            .map_err(err)?;
        admin
            .execute(format!("CREATE DATABASE {db}").as_str())
            .await
            .map_err(err)?;
    }
    let raw_url = format!("{base}/tf_bench_raw");
    let mut f = Figures::default();
    eprintln!("bench-server: PostgreSQL raw inserts");
    {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(CLIENTS as u32)
            .connect(&raw_url)
            .await
            .map_err(err)?;
        pool.execute(
            "CREATE TABLE raw_insert (id bigserial PRIMARY KEY, body bytea NOT NULL); \
             CREATE TABLE raw_counted (id bigint PRIMARY KEY, body bytea NOT NULL); \
             CREATE TABLE raw_counter (id int PRIMARY KEY, last bigint NOT NULL); \
             INSERT INTO raw_counter VALUES (1, 0);",
        )
        .await
        .map_err(err)?;
        let plain = "INSERT INTO raw_insert (body) VALUES ($1)";
        let counted = "WITH c AS (UPDATE raw_counter SET last = last + 1 WHERE id = 1 \
                       RETURNING last) INSERT INTO raw_counted (id, body) SELECT last, $1 FROM c";
        f.raw1 = raw_pg(&pool, plain, 1).await?;
        f.raw16 = raw_pg(&pool, plain, CLIENTS).await?;
        f.raw16_counter = Some(raw_pg(&pool, counted, CLIENTS).await?);
        pool.close().await;
    }
    let http_url = format!("{base}/tf_bench_http");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&http_url)
        .await
        .map_err(err)?;
    let batches = move |after: i64| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (i64, i64)>(
                "SELECT count(*), count(DISTINCT recorded_at_us) FROM events WHERE position > $1",
            )
            .bind(after)
            .fetch_one(&pool)
            .await
            .map_err(err)
        }
    };
    http(&http_url, &mut f, batches).await?;
    for db in ["tf_bench_raw", "tf_bench_http"] {
        admin
            .execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str())
            .await
            .map_err(err)?;
    }
    Ok(f)
}

async fn sqlite() -> Res<Figures> {
    let dir = tempfile::tempdir().map_err(err)?;
    let mut f = Figures::default();
    eprintln!("bench-server: SQLite raw inserts");
    f.raw1 = raw_sqlite(&dir.path().join("raw1.db"), 1).await?;
    f.raw16 = raw_sqlite(&dir.path().join("raw16.db"), CLIENTS).await?;
    let path = dir.path().join("trustfold.db");
    let opts = sqlite_options(&path);
    let batches = move |after: i64| {
        let opts = opts.clone();
        async move {
            let mut c = sqlx::SqliteConnection::connect_with(&opts)
                .await
                .map_err(err)?;
            sqlx::query_as::<_, (i64, i64)>(
                "SELECT count(*), count(DISTINCT recorded_at_us) FROM events WHERE position > $1",
            )
            .bind(after)
            .fetch_one(&mut c)
            .await
            .map_err(err)
        }
    };
    http(&path.display().to_string(), &mut f, batches).await?;
    Ok(f)
}

fn sqlite_options(path: &Path) -> sqlx::sqlite::SqliteConnectOptions {
    sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(30))
}

// ---------------------------------------------------------------------------------------
// Raw inserts.

fn body() -> Vec<u8> {
    (0..512u32).map(|i| b'a' + (i % 26) as u8).collect()
}

async fn raw_pg(pool: &sqlx::PgPool, sql: &'static str, conns: usize) -> Res<f64> {
    let deadline = Instant::now() + Duration::from_secs(RAW_SECS);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await.map_err(err)?;
            let b = body();
            let mut n = 0u64;
            while Instant::now() < deadline {
                sqlx::query(sql)
                    .bind(&b)
                    .execute(&mut *conn)
                    .await
                    .map_err(err)?;
                n += 1;
            }
            Ok::<u64, String>(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.map_err(err)??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

async fn raw_sqlite(path: &Path, conns: usize) -> Res<f64> {
    let opts = sqlite_options(path);
    {
        let mut c = sqlx::SqliteConnection::connect_with(&opts)
            .await
            .map_err(err)?;
        c.execute(
            "CREATE TABLE raw_insert (id INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL)",
        )
        .await
        .map_err(err)?;
    }
    let deadline = Instant::now() + Duration::from_secs(RAW_SECS);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let opts = opts.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = sqlx::SqliteConnection::connect_with(&opts)
                .await
                .map_err(err)?;
            let b = body();
            let mut n = 0u64;
            while Instant::now() < deadline {
                sqlx::query("INSERT INTO raw_insert (body) VALUES ($1)")
                    .bind(&b)
                    .execute(&mut c)
                    .await
                    .map_err(err)?;
                n += 1;
            }
            Ok::<u64, String>(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.map_err(err)??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------------------------------
// Through HTTP.

/// A payment with a pending release the buyer approves and withdraws, alternately.
#[derive(Clone)]
struct Bench {
    flow: Flow,
    hash: String,
    approved: bool,
    version: u64,
    /// Send each command with a fresh `Idempotency-Key`, as the SDKs do.
    keyed: bool,
    /// Send to this server instead of the run's (`http://addr`).
    server: Option<String>,
}

async fn prepare(c: &Client, key: &str) -> Res<Bench> {
    let flow = open_and_join(c, key).await?;
    let p = flow.payment.as_str();
    let state = c.get(&format!("/v1/payments/{p}"), key).await;
    let terms = state.body["terms_hash"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for (party, role) in [(&flow.buyer, "buyer"), (&flow.seller, "seller")] {
        c.command(
            key,
            p,
            Some(party),
            role,
            json!({"type": "AgreeToTerms", "terms_hash": terms}),
        )
        .await?;
    }
    c.command(key, p, Some(&flow.buyer), "buyer", json!({"type": "AttachFundingMethod",
        "method": {"rail": "wire", "institution": "First Bank", "account_last4": "4321", "holder": "Bo"}})).await?;
    c.command(
        key,
        p,
        Some(&flow.buyer),
        "buyer",
        json!({"type": "SubmitFunding", "amount": {"amount": "5000.00", "currency": "USD"},
               "rail": "wire", "rail_ref": "WIRE-1"}),
    )
    .await?;
    c.command(
        key,
        p,
        None,
        "rail",
        json!({"type": "RailNotice", "rail_ref": "WIRE-1", "notice": {"kind": "settled"}}),
    )
    .await?;
    let r = c
        .command(
            key,
            p,
            Some(&flow.escrow),
            "escrow_holder",
            json!({"type": "RequestRelease", "request": flow.request,
               "allocations": [{"party": flow.seller, "amount": {"amount": "5000.00", "currency": "USD"}}]}),
        )
        .await?;
    let hash = r.body["state"]["requests"][&flow.request]["allocations_hash"]
        .as_str()
        .ok_or("no allocations hash")?
        .to_owned();
    let version = r.body["version"].as_u64().ok_or("no version")?;
    Ok(Bench {
        flow,
        hash,
        approved: false,
        version,
        keyed: false,
        server: None,
    })
}

/// The body of the next command for `b` (approve or withdraw).
fn next_body(b: &Bench) -> Vec<u8> {
    let command = if b.approved {
        json!({"type": "WithdrawApproval", "request": b.flow.request})
    } else {
        json!({"type": "Approve", "request": b.flow.request, "allocations_hash": b.hash})
    };
    json!({"command": command, "actor": {"party": b.flow.buyer, "role": "buyer"}})
        .to_string()
        .into_bytes()
}

/// The `version` of a command response, read from its start
/// (`{"payment_id":"…","version":N,…`) without parsing the whole state.
fn response_version(bytes: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(bytes.get(..120.min(bytes.len()))?).ok()?;
    let at = s.find("\"version\":")? + 10;
    let digits: String = s[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Sends the next command; `Ok(version)` when it made exactly one event.
async fn send_next(http: &reqwest::Client, base: &str, key: &str, b: &mut Bench) -> Res<u64> {
    let mut req = http
        .post(format!(
            "{}/v1/payments/{}/commands",
            b.server.as_deref().unwrap_or(base),
            b.flow.payment
        ))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(next_body(b));
    if b.keyed {
        req = req.header("idempotency-key", uuid::Uuid::new_v4().to_string());
    }
    let res = req.send().await.map_err(err)?;
    let status = res.status();
    let bytes = res.bytes().await.map_err(err)?;
    if status != 200 {
        return Err(format!(
            "command: {status} {}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    let v = response_version(&bytes).ok_or("no version in the response")?;
    if v != b.version + 1 {
        return Err(format!(
            "expected exactly one event: version {} -> {v}",
            b.version
        ));
    }
    b.version = v;
    b.approved = !b.approved;
    Ok(v)
}

/// Closed loop: each client sends its next command as soon as the last was answered.
async fn closed_loop(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    benches: Vec<Bench>,
) -> Res<(f64, Vec<Bench>, usize)> {
    let deadline = Instant::now() + Duration::from_secs(HTTP_SECS);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut b in benches {
        let (http, base, key) = (http.clone(), base.to_owned(), key.to_owned());
        tasks.push(tokio::spawn(async move {
            let (mut n, mut errors) = (0u64, 0usize);
            while Instant::now() < deadline {
                match send_next(&http, &base, &key, &mut b).await {
                    Ok(_) => n += 1,
                    Err(e) => {
                        errors += 1;
                        if errors <= 3 {
                            eprintln!("bench-server: {e}");
                        }
                        return (n, b, errors);
                    }
                }
            }
            (n, b, errors)
        }));
    }
    let (mut total, mut out, mut errors) = (0u64, Vec::new(), 0);
    for t in tasks {
        let (n, b, e) = t.await.map_err(err)?;
        total += n;
        errors += e;
        out.push(b);
    }
    Ok((total as f64 / start.elapsed().as_secs_f64(), out, errors))
}

type Seen = Arc<Mutex<HashMap<(usize, u64), Instant>>>;

/// Reads a payment's SSE stream and notes when each event id arrived.
async fn follow(
    http: reqwest::Client,
    url: String,
    key: String,
    idx: usize,
    seen: Seen,
) -> Res<()> {
    let mut res = http.get(url).bearer_auth(key).send().await.map_err(err)?;
    if res.status() != 200 {
        return Err(format!("stream: {}", res.status()));
    }
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = res.chunk().await.map_err(err)? {
        let now = Instant::now();
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            for line in text.lines() {
                if let Some(id) = line.strip_prefix("id:") {
                    if let Ok(seq) = id.trim().parse::<u64>() {
                        if let Ok(mut m) = seen.lock() {
                            m.insert((idx, seq), now);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Open loop at a fixed rate over several payments, each with its stream open.
async fn latency(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    benches: Vec<Bench>,
    f: &mut Figures,
) -> Res<()> {
    let seen: Seen = Arc::new(Mutex::new(HashMap::new()));
    let mut readers = Vec::new();
    for (i, b) in benches.iter().enumerate() {
        let url = format!(
            "{base}/v1/payments/{}/stream?after={}",
            b.flow.payment, b.version
        );
        readers.push(tokio::spawn(follow(
            http.clone(),
            url,
            key.to_owned(),
            i,
            seen.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = benches.len() as u64;
    let period = Duration::from_micros(1_000_000 * n / LAT_RATE);
    let per_payment = LAT_SECS * LAT_RATE / n;
    let start = Instant::now() + Duration::from_millis(10);
    let mut tasks = Vec::new();
    for (i, mut b) in benches.into_iter().enumerate() {
        let (http, base, key) = (http.clone(), base.to_owned(), key.to_owned());
        let offset = Duration::from_micros(1_000_000 * i as u64 / LAT_RATE);
        tasks.push(tokio::spawn(async move {
            let mut sent: Vec<(u64, Instant)> = Vec::new();
            let mut answered: Vec<f64> = Vec::new();
            let mut errors = 0usize;
            for k in 0..per_payment {
                let at = start + offset + period * k as u32;
                tokio::time::sleep_until(at.into()).await;
                let t = Instant::now();
                match send_next(&http, &base, &key, &mut b).await {
                    Ok(v) => {
                        sent.push((v, t));
                        answered.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                    Err(e) => {
                        errors += 1;
                        if errors <= 3 {
                            eprintln!("bench-server: {e}");
                        }
                        break;
                    }
                }
            }
            (i, sent, errors, answered)
        }));
    }
    let mut sent = Vec::new();
    let mut answered = Vec::new();
    for t in tasks {
        let (i, s, e, a) = t.await.map_err(err)?;
        answered.extend(a);
        f.errors += e;
        sent.extend(s.into_iter().map(|(v, t)| ((i, v), t)));
    }
    let elapsed = start.elapsed().as_secs_f64();
    f.lat_rate = sent.len() as f64 / elapsed;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for r in readers {
        r.abort();
    }
    let seen = seen.lock().map_err(err)?.clone();
    let mut lat: Vec<f64> = Vec::new();
    for (k, t) in &sent {
        match seen.get(k) {
            Some(r) => lat.push(r.saturating_duration_since(*t).as_secs_f64() * 1000.0),
            None => f.lat_missing += 1,
        }
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    f.lat_p50 = pct(0.50);
    f.lat_p99 = pct(0.99);
    answered.sort_by(f64::total_cmp);
    f.ack_p50 = answered
        .get(answered.len() / 2)
        .copied()
        .unwrap_or(f64::NAN);
    f.ack_p99 = answered
        .get((answered.len() as f64 * 0.99) as usize)
        .copied()
        .unwrap_or(f64::NAN);
    f.lat_max = lat.last().copied().unwrap_or(f64::NAN);
    Ok(())
}

async fn http<F, Fut>(database: &str, f: &mut Figures, batches: F) -> Res<()>
where
    F: Fn(i64) -> Fut,
    Fut: std::future::Future<Output = Res<(i64, i64)>>,
{
    let mut config = Config::new(database);
    config.listen = "127.0.0.1:0".parse().map_err(err)?;
    config.http.admin_token = Some(ADMIN.into());
    // The bench measures the server's limit, not the default rate limits.
    config.http.tenant_rate = None;
    let running = start(config).await.map_err(err)?;
    let base = format!("http://{}", running.addr);
    let c = Client::new(base.clone());
    let key = c.tenant(ADMIN, "bench").await?;
    eprintln!("bench-server: preparing {} payments", CLIENTS + 1);
    let mut benches = Vec::new();
    for _ in 0..=CLIENTS {
        benches.push(prepare(&c, &key).await?);
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(err)?;
    // Warm up (connections, caches).
    let warm: Vec<Bench> = benches.drain(..CLIENTS).collect();
    let (_, warm, _) =
        closed_loop_for(&http, &base, &key, warm, Duration::from_millis(500)).await?;
    benches.splice(0..0, warm);

    eprintln!("bench-server: HTTP, 1 client");
    let one = benches.split_off(CLIENTS);
    let cpu = process_cpu();
    let (rate, one, e) = closed_loop(&http, &base, &key, one).await?;
    f.cpu1_us = (process_cpu() - cpu) * 1e6 / (rate * HTTP_SECS as f64).max(1.0);
    f.http1 = rate;
    f.errors += e;
    benches.extend(one);

    eprintln!("bench-server: HTTP, {CLIENTS} clients");
    let (before, _) = batches(0).await?;
    let many: Vec<Bench> = benches.drain(..CLIENTS).collect();
    let (cpu, machine) = (process_cpu(), machine_cpu());
    let (rate, many, e) = closed_loop(&http, &base, &key, many).await?;
    f.cpu16_us = (process_cpu() - cpu) * 1e6 / (rate * HTTP_SECS as f64).max(1.0);
    let machine_after = machine_cpu();
    f.busy16 = (machine_after.0 - machine.0) / (machine_after.1 - machine.1).max(1.0);
    f.http16 = rate;
    f.errors += e;
    let (events, commits) = batches(before).await?;
    f.events_per_commit16 = events as f64 / commits.max(1) as f64;

    eprintln!("bench-server: HTTP, {CLIENTS} clients with Idempotency-Key");
    let keyed: Vec<Bench> = many
        .into_iter()
        .map(|b| Bench { keyed: true, ..b })
        .collect();
    let (rate, keyed, e) = closed_loop(&http, &base, &key, keyed).await?;
    f.http16_keyed = rate;
    f.errors += e;
    let mut many: Vec<Bench> = keyed
        .into_iter()
        .map(|b| Bench { keyed: false, ..b })
        .collect();

    if database.starts_with("postgres") {
        // A second server on the same database: its own pools, appender, projector and
        // LISTEN connection, as another process would have.
        eprintln!("bench-server: HTTP, {CLIENTS} clients over two servers");
        let mut config = Config::new(database);
        config.listen = "127.0.0.1:0".parse().map_err(err)?;
        config.http.admin_token = Some(ADMIN.into());
        // The bench measures the server's limit, not the default rate limits.
        config.http.tenant_rate = None;
        let second = start(config).await.map_err(err)?;
        let other = format!("http://{}", second.addr);
        let split: Vec<Bench> = many
            .into_iter()
            .enumerate()
            .map(|(i, b)| Bench {
                server: (i % 2 == 1).then(|| other.clone()),
                ..b
            })
            .collect();
        let (rate, split, e) = closed_loop(&http, &base, &key, split).await?;
        f.http16_two = Some(rate);
        f.errors += e;
        second.shutdown().await.map_err(err)?;
        many = split
            .into_iter()
            .map(|b| Bench { server: None, ..b })
            .collect();
    }

    eprintln!("bench-server: command→SSE latency at {LAT_RATE}/s");
    let lat: Vec<Bench> = many.into_iter().take(LAT_PAYMENTS).collect();
    latency(&http, &base, &key, lat, f).await?;
    running.shutdown().await.map_err(err)?;
    Ok(())
}

async fn closed_loop_for(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    benches: Vec<Bench>,
    d: Duration,
) -> Res<(f64, Vec<Bench>, usize)> {
    let deadline = Instant::now() + d;
    let mut out = Vec::new();
    let mut tasks = Vec::new();
    for mut b in benches {
        let (http, base, key) = (http.clone(), base.to_owned(), key.to_owned());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                send_next(&http, &base, &key, &mut b).await?;
            }
            Ok::<Bench, String>(b)
        }));
    }
    for t in tasks {
        out.push(t.await.map_err(err)??);
    }
    Ok((0.0, out, 0))
}
