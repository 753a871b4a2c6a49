//! How long one round of the held rail notices takes while many notices wait for
//! references no payment has recorded (`crate::rail_notices`): the round runs every
//! second in the leader process whenever any notice waits.
//!
//! ```sh
//! cargo test --release -p trustfold-server --test held_notices_round -- --ignored --nocapture
//! scripts/with-postgres.sh cargo test --release -p trustfold-server \
//!   --test held_notices_round -- --ignored --nocapture
//! ```
//!
//! `HELD_NOTICES` (default 50,000) notices are written straight into the table, spread
//! over tenants of at most `MAX_HELD_PER_TENANT` each, each for a reference of its own
//! that no payment knows, beside `KNOWN_REFS` (default 100,000) references other
//! payments of those tenants recorded; then rounds are timed on a state with nothing
//! serving (no background round runs meanwhile): a new runner's first, the ones after,
//! another runner's first (a sweep), after a burst of newly held notices, and the one
//! after a payment recorded the reference of one held notice (its row written into the
//! read model, the read model's checkpoint moved). Prints the figures; asserts only that
//! the last notice is taken up.
//!
//! The tests below the benchmark (not ignored, on both engines) drive rounds by hand the
//! same way: what a round sets aside, and what it takes up again.

mod common;

use std::time::{Duration, Instant};

use trustfold_server::app::state_without_serving;
use trustfold_server::db::Db;
use trustfold_server::rail_notices::{Rounds, MAX_HELD_PER_TENANT};
use uuid::Uuid;

/// Rows per multi-row insert.
const CHUNK: usize = 500;

fn held_notices() -> usize {
    std::env::var("HELD_NOTICES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50_000)
}

/// The tenant of the `i`th notice or reference.
fn tenant_of(i: usize) -> Uuid {
    let per_tenant = usize::try_from(MAX_HELD_PER_TENANT).expect("cap");
    Uuid::from_u128(1 + (i / per_tenant) as u128)
}

/// Runs `sql` with each row's values bound, on the writer.
async fn insert(db: &Db, sql: &str, rows: &[(Uuid, Uuid, String, i64)]) {
    macro_rules! bound {
        ($pool:expr) => {{
            let mut q = sqlx::query(sql);
            for (a, b, c, d) in rows {
                q = q.bind(a).bind(b).bind(c).bind(d);
            }
            q.execute($pool).await.expect(sql);
        }};
    }
    match db {
        Db::Sqlite { writer, .. } => bound!(writer),
        Db::Postgres(pool) => bound!(pool),
    }
}

/// `(…), (…)` with `rows` tuples of four numbered parameters, `shape` a tuple with `{}`
/// where they go.
fn values(rows: usize, shape: &str) -> String {
    (0..rows)
        .map(|r| {
            let mut t = shape.to_owned();
            for k in 1..=4 {
                t = t.replacen("{}", &format!("${}", r * 4 + k), 1);
            }
            t
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Holds `n` notices for unknown references, `first` the first one's number.
async fn hold(db: &Db, first: usize, n: usize) {
    let rows: Vec<(Uuid, Uuid, String, i64)> = (first..first + n)
        .map(|i| {
            let at = 1_700_000_000_000_000 + i as i64;
            (Uuid::new_v4(), tenant_of(i), format!("UNKNOWN-{i}"), at)
        })
        .collect();
    for chunk in rows.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO held_rail_notices (notice_id, tenant_id, rail_ref, notice, \
             received_at_us, status) VALUES {}",
            values(
                chunk.len(),
                "({}, {}, {}, '{\"kind\":\"settled\"}', {}, 'held')"
            )
        );
        insert(db, &sql, chunk).await;
    }
    analyze(db).await;
}

/// References `n` other payments recorded.
async fn known_refs(db: &Db, n: usize) {
    let rows: Vec<(Uuid, Uuid, String, i64)> = (0..n)
        .map(|i| {
            let tenant = tenant_of(i % held_notices().max(1));
            (tenant, Uuid::new_v4(), format!("KNOWN-{i}"), 0)
        })
        .collect();
    for chunk in rows.chunks(CHUNK) {
        // The row's position is left as it is (0, or no such column before it).
        let sql = format!(
            "INSERT INTO payment_rail_refs (tenant_id, payment_id, rail_ref) \
             SELECT a, b, c FROM (VALUES {}) v (a, b, c, d)",
            values(chunk.len(), "({}, {}, {}, {})")
        );
        let sql = if matches!(db, Db::Sqlite { .. }) {
            // SQLite names a VALUES list's columns column1…
            sql.replace(
                "SELECT a, b, c FROM",
                "SELECT column1, column2, column3 FROM",
            )
            .replace(" v (a, b, c, d)", "")
        } else {
            sql.replace("SELECT a, b, c FROM", "SELECT a::uuid, b::uuid, c FROM")
        };
        insert(db, &sql, chunk).await;
    }
    analyze(db).await;
}

/// PostgreSQL's statistics, as autovacuum would have them (SQLite's server keeps none).
async fn analyze(db: &Db) {
    if let Db::Postgres(pool) = db {
        sqlx::query("ANALYZE").execute(pool).await.expect("analyze");
    }
}

/// Whether the read model stamps references with their position.
async fn stamped(db: &Db) -> bool {
    let n: i64 = match db {
        Db::Sqlite { reader, .. } => sqlx::query_scalar(
            "SELECT COUNT(*) FROM pragma_table_info('payment_rail_refs') WHERE name = 'position'",
        )
        .fetch_one(reader)
        .await
        .expect("columns"),
        Db::Postgres(pool) => sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = \
             current_schema() AND table_name = 'payment_rail_refs' AND column_name = 'position'",
        )
        .fetch_one(pool)
        .await
        .expect("columns"),
    };
    n > 0
}

/// A payment records the reference of held notice `i`, as the projector would write it:
/// its row (stamped after the checkpoint, where the read model stamps rows) and the
/// checkpoint moved.
async fn record(db: &Db, i: usize) {
    let rows = [(tenant_of(i), Uuid::new_v4(), format!("UNKNOWN-{i}"), 0)];
    if stamped(db).await {
        let sql = "INSERT INTO payment_rail_refs (tenant_id, payment_id, rail_ref, position) \
                   SELECT $1, $2, $3, position + 1 + $4 FROM projection_checkpoints \
                   WHERE name = 'rail_refs'";
        insert(db, sql, &rows).await;
        let sql = "UPDATE projection_checkpoints SET position = position + 1 + $4 \
                   WHERE name = 'rail_refs' AND $1 <> $2 AND $3 <> ''";
        insert(db, sql, &rows).await;
    } else {
        let sql = "INSERT INTO payment_rail_refs (tenant_id, payment_id, rail_ref) \
                   SELECT $1, $2, $3 WHERE $4 = 0";
        insert(db, sql, &rows).await;
    }
}

/// A column of held notice `i` (an SQL expression over its row), as text.
async fn notice_text(db: &Db, i: usize, column: &str) -> String {
    let sql = format!(
        "SELECT CAST({column} AS TEXT) FROM held_rail_notices WHERE tenant_id = $1 \
         AND rail_ref = $2"
    );
    let rail_ref = format!("UNKNOWN-{i}");
    match db {
        Db::Sqlite { reader, .. } => sqlx::query_scalar(&sql)
            .bind(tenant_of(i))
            .bind(&rail_ref)
            .fetch_one(reader)
            .await
            .expect(column),
        Db::Postgres(pool) => sqlx::query_scalar(&sql)
            .bind(tenant_of(i))
            .bind(&rail_ref)
            .fetch_one(pool)
            .await
            .expect(column),
    }
}

/// The status of held notice `i`.
async fn status_of(db: &Db, i: usize) -> String {
    notice_text(db, i, "status").await
}

/// Whether held notice `i` is due (a round looks at it).
async fn due(db: &Db, i: usize) -> bool {
    notice_text(db, i, "due").await == "1"
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Times `n` rounds of `rounds`: (first, median of the rest, max of the rest).
async fn time_rounds(
    rounds: &mut Rounds,
    state: &trustfold_server::api::AppState,
    n: usize,
) -> (Duration, Duration, Duration) {
    let mut times = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        rounds.round(state).await.expect("round");
        times.push(t.elapsed());
    }
    let first = times[0];
    let mut rest = times[1..].to_vec();
    rest.sort();
    (first, rest[rest.len() / 2], rest[rest.len() - 1])
}

async fn bench(engine: &str, database: &str) {
    let n = held_notices();
    let state = state_without_serving(&common::config(database))
        .await
        .expect("state");
    let t = Instant::now();
    hold(&state.db, 0, n).await;
    println!(
        "{engine}: {n} notices held for unknown references in {}",
        ms(t.elapsed())
    );
    let refs = std::env::var("KNOWN_REFS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    known_refs(&state.db, refs).await;
    println!("{engine}: {refs} references other payments recorded");
    let mut rounds = Rounds::new();
    let (first, median, max) = time_rounds(&mut rounds, &state, 11).await;
    println!(
        "{engine}: a new runner's first round {}; then median {}, max {} (10 rounds)",
        ms(first),
        ms(median),
        ms(max)
    );
    // Another runner's first round, every notice set aside by then: what a round costs
    // when it looks at every waiting notice (a sweep, every minute).
    let t = Instant::now();
    Rounds::new().round(&state).await.expect("round");
    println!(
        "{engine}: a round looking at every waiting notice (a sweep) {}",
        ms(t.elapsed())
    );
    // A burst of newly held notices, then rounds again.
    let burst = 1_000.min(n);
    hold(&state.db, n, burst).await;
    let (first, median, max) = time_rounds(&mut rounds, &state, 11).await;
    println!(
        "{engine}: after {burst} more held: first round {}; then median {}, max {}",
        ms(first),
        ms(median),
        ms(max)
    );
    // A payment records the reference of a notice held long ago: the next round takes it
    // up (the payment exists only in the read model here, so the notice is refused).
    let i = n / 2;
    record(&state.db, i).await;
    let (first, median, max) = time_rounds(&mut rounds, &state, 11).await;
    assert_ne!(
        status_of(&state.db, i).await,
        "held",
        "the notice was taken up"
    );
    println!(
        "{engine}: after its reference was recorded: the round taking the notice up {}; \
         then median {}, max {}",
        ms(first),
        ms(median),
        ms(max)
    );
}

// ---------------------------------------------------------------------------------------
// What a round looks at: the tests (on both engines) of the notices set aside while no
// payment knows their reference, each taken up by the round after it is recorded.

/// A state on `database` with nothing serving: the tests drive the rounds by hand.
async fn quiet(database: &str) -> trustfold_server::api::AppState {
    state_without_serving(&common::config(database))
        .await
        .expect("state")
}

/// A round sets aside the notices whose reference no payment knows (not looked at
/// again), and the round after a payment records one's reference takes it up (its
/// reference's row is after the checkpoint the round last read); the others stay set
/// aside. A new runner (another leader) looks at every waiting notice (at each round
/// while it is taking over), so it takes up one set aside by another runner whose
/// reference was recorded since.
async fn set_aside_until_recorded(database: &str) {
    let state = quiet(database).await;
    hold(&state.db, 0, 3).await;
    let mut rounds = Rounds::leading_a_while();
    rounds.round(&state).await.expect("round");
    for i in 0..3 {
        assert!(!due(&state.db, i).await, "notice {i} set aside");
    }
    record(&state.db, 1).await;
    rounds.round(&state).await.expect("round");
    assert_ne!(status_of(&state.db, 1).await, "held", "taken up");
    assert_eq!(status_of(&state.db, 0).await, "held");
    assert!(!due(&state.db, 0).await, "still set aside");
    record(&state.db, 2).await;
    Rounds::new().round(&state).await.expect("round");
    assert_ne!(
        status_of(&state.db, 2).await,
        "held",
        "a new runner takes up a notice another one set aside"
    );
    assert_eq!(status_of(&state.db, 0).await, "held");
}

common::on_both_databases!(set_aside_until_recorded);

/// A notice held after the round that saw its reference recorded (the bank's notice
/// racing the transfer's record) is due from when it is held: the next round takes it
/// up, though no reference is recorded since.
async fn held_after_its_reference_was_recorded(database: &str) {
    let state = quiet(database).await;
    hold(&state.db, 0, 1).await;
    let mut rounds = Rounds::leading_a_while();
    rounds.round(&state).await.expect("round");
    record(&state.db, 5).await;
    rounds.round(&state).await.expect("round");
    hold(&state.db, 5, 1).await;
    rounds.round(&state).await.expect("round");
    assert_ne!(status_of(&state.db, 5).await, "held", "taken up");
    assert_eq!(status_of(&state.db, 0).await, "held");
}

common::on_both_databases!(held_after_its_reference_was_recorded);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run with --ignored --nocapture (and --release)"]
async fn held_notices_round_sqlite() {
    let (_dir, database) = common::sqlite_file();
    bench("SQLite", &database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run with --ignored --nocapture (and --release)"]
async fn held_notices_round_postgres() {
    let Some((admin, name, url)) = common::postgres_database().await else {
        return;
    };
    bench("PostgreSQL", &url).await;
    common::drop_database(&admin, &name).await;
}
