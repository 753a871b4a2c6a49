//! The platform's clock (`trustfold_server::clock`): deadlines and good funds happen on
//! their own, through real servers on loopback, on a real SQLite file and on
//! PostgreSQL. The server's clock is set days ahead (`Clock::advance`): the business
//! days a rule waits for cannot pass in a test.

mod common;

use std::time::{Duration, Instant};

use common::scenario::{agree, open_and_join, settle, Client, Flow};
use common::ADMIN;
use serde_json::{json, Value};
use trustfold_server::app::{start, Running};
use trustfold_server::clock::Clock;

/// A server on `database` whose clock ticks every 50 ms by `clock`.
async fn serve(database: &str, clock: &Clock) -> (Running, Client) {
    let mut config = common::config(database);
    config.tick_interval = Some(Duration::from_millis(50));
    config.clock = clock.clone();
    let running = start(config).await.expect("server starts");
    let client = Client::new(format!("http://{}", running.addr));
    (running, client)
}

/// The payment's events (the envelopes), read through the paged history.
async fn events(c: &Client, key: &str, payment: &str) -> Vec<Value> {
    let r = c
        .get(
            &format!("/v1/payments/{payment}/events?after=0&limit=500"),
            key,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|rec| rec["event"].clone())
        .collect()
}

fn of_type<'a>(events: &'a [Value], ty: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == ty).collect()
}

/// Waits (at most 20 s) until the payment has an event of type `ty`; its events then.
async fn wait_for(c: &Client, key: &str, payment: &str, ty: &str) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let evs = events(c, key, payment).await;
        if !of_type(&evs, ty).is_empty() {
            return evs;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no {ty} after 20 s: {:?}",
            evs.iter().map(|e| e["type"].clone()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three payments: one settled by ACH, one agreed and never funded, one not agreed.
struct Payments {
    settled: Flow,
    unfunded: Flow,
    draft: Flow,
}

async fn payments(c: &Client, key: &str) -> Payments {
    let settled = open_and_join(c, key).await.expect("open");
    // The funding deadline: 3 business days after agreeing; good funds for ACH: 2
    // business days after settling.
    agree(c, key, &settled).await.expect("agree");
    settle(c, key, &settled, "ach", "ACH-1")
        .await
        .expect("settle");
    let unfunded = open_and_join(c, key).await.expect("open");
    agree(c, key, &unfunded).await.expect("agree");
    let draft = open_and_join(c, key).await.expect("open");
    Payments {
        settled,
        unfunded,
        draft,
    }
}

/// The payments the list says are due before `before`, with their `next_tick_at`.
async fn due_before(c: &Client, key: &str, before: &str) -> Vec<(String, String)> {
    let r = c
        .get(&format!("/v1/payments?due_before={before}&limit=500"), key)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["payments"]
        .as_array()
        .expect("payments")
        .iter()
        .map(|p| {
            (
                p["payment_id"].as_str().expect("id").to_owned(),
                p["next_tick_at"].as_str().expect("next_tick_at").to_owned(),
            )
        })
        .collect()
}

/// Nothing is due yet: a few of the clock's rounds change nothing.
async fn nothing_happens_yet(c: &Client, key: &str, ps: &Payments) -> [usize; 3] {
    let before = [
        events(c, key, &ps.settled.payment).await.len(),
        events(c, key, &ps.unfunded.payment).await.len(),
        events(c, key, &ps.draft.payment).await.len(),
    ];
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after = [
        events(c, key, &ps.settled.payment).await.len(),
        events(c, key, &ps.unfunded.payment).await.len(),
        events(c, key, &ps.draft.payment).await.len(),
    ];
    assert_eq!(before, after, "the clock acted before anything was due");
    after
}

/// A week later: the ACH funds reached good funds, the unfunded payment missed its
/// deadline (flagged, as the policy says), the draft has no deadline; each once, by the
/// `system` actor, in chains that verify.
async fn a_week_later(c: &Client, key: &str, ps: &Payments, before: [usize; 3]) {
    let evs = wait_for(c, key, &ps.settled.payment, "FundsAvailable").await;
    let available = of_type(&evs, "FundsAvailable");
    assert_eq!(available.len(), 1, "{evs:?}");
    assert_eq!(available[0]["actor"]["role"], "system");
    assert!(available[0]["actor"]
        .get("party")
        .is_none_or(Value::is_null));
    let evs = wait_for(c, key, &ps.unfunded.payment, "FundingDeadlineMissed").await;
    let missed = of_type(&evs, "FundingDeadlineMissed");
    assert_eq!(missed.len(), 1, "{evs:?}");
    assert_eq!(missed[0]["data"]["outcome"], "flagged");
    assert_eq!(missed[0]["actor"]["role"], "system");
    // More rounds: nothing more is recorded (each tick once), the draft never changes.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let settled = events(c, key, &ps.settled.payment).await;
    let unfunded = events(c, key, &ps.unfunded.payment).await;
    assert_eq!(settled.len(), before[0] + 1, "{settled:?}");
    assert_eq!(unfunded.len(), before[1] + 1, "{unfunded:?}");
    assert_eq!(events(c, key, &ps.draft.payment).await.len(), before[2]);
    // The state read model shows it, and the history verifies and folds to it.
    let r = c
        .get(&format!("/v1/payments/{}", ps.settled.payment), key)
        .await;
    assert_eq!(r.body["status"], "Held", "{}", r.body);
    let doc = common::scenario::history(c, key, &ps.settled.payment, 100)
        .await
        .expect("history");
    let folded = trustfold_core::fold::replay(&doc).expect("the chain verifies");
    assert_eq!(
        serde_json::to_value(folded.status).expect("status"),
        json!("Held")
    );
}

/// Nothing happens before it is due; a week later, everything due happened once.
async fn a_week_passes(c: &Client, key: &str, ps: &Payments, clock: &Clock) {
    let before = nothing_happens_yet(c, key, ps).await;
    clock.advance(Duration::from_secs(7 * 86_400));
    a_week_later(c, key, ps, before).await;
}

/// Runs `statements` on the SQLite file `db` directly, as an older server or another
/// writer could have left it.
async fn on_the_file(db: &str, statements: &[String]) {
    use sqlx::Connection as _;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{db}"))
        .await
        .expect("open");
    for sql in statements {
        sqlx::query(sql).execute(&mut conn).await.expect(sql);
    }
}

async fn the_clock_acts_when_things_are_due(database: &str) {
    let clock = Clock::system();
    let (running, c) = serve(database, &clock).await;
    let key = c.tenant(ADMIN, "Clockwork Escrow").await.expect("tenant");
    let ps = payments(&c, &key).await;
    let before = nothing_happens_yet(&c, &key, &ps).await;
    // The list says what is due when: good funds and the deadline within the next ten
    // days, nothing for the draft.
    let in_ten_days = clock.now().add_days(10).to_string();
    let due = due_before(&c, &key, &in_ten_days).await;
    let mut ids: Vec<&str> = due.iter().map(|(p, _)| p.as_str()).collect();
    ids.sort_unstable();
    let mut want = [ps.settled.payment.as_str(), ps.unfunded.payment.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want, "{due:?}");
    assert!(due_before(&c, &key, &clock.now().to_string())
        .await
        .is_empty());
    let r = c.get("/v1/payments?due_before=tomorrow", &key).await;
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (400, Some("due_before"))
    );
    clock.advance(Duration::from_secs(7 * 86_400));
    a_week_later(&c, &key, &ps, before).await;
    // Nothing is due any more.
    let later = clock.now().add_days(3650).to_string();
    assert!(due_before(&c, &key, &later).await.is_empty());
    running.shutdown().await.expect("shutdown");
}

common::on_both_databases!(the_clock_acts_when_things_are_due);

/// Two processes on one PostgreSQL database, both a week ahead: one clock acts (the
/// projection leader's), and every due step is recorded once.
#[tokio::test]
async fn two_processes_tick_once() {
    let Some((admin, name, url)) = common::postgres_database().await else {
        return;
    };
    let clock = Clock::system();
    let (one, c) = serve(&url, &clock).await;
    let (two, c2) = serve(&url, &clock).await;
    let key = c.tenant(ADMIN, "Two Clocks Escrow").await.expect("tenant");
    let ps = payments(&c2, &key).await;
    a_week_passes(&c2, &key, &ps, &clock).await;
    one.shutdown().await.expect("shutdown");
    two.shutdown().await.expect("shutdown");
    common::drop_database(&admin, &name).await;
}

/// A database from before the clock (server schema 1, no `payment_clock`, no
/// `payment_rail_refs`): after the upgrade the new read models fill from the log, a
/// payment settled before it gets its good funds, and its transfer's reference finds it.
#[tokio::test]
async fn an_upgraded_database_fills_the_clock_from_history() {
    let (_dir, db) = common::sqlite_file();
    let clock = Clock::system();
    let (running, c) = serve(&db, &clock).await;
    let key = c.tenant(ADMIN, "Old Escrow").await.expect("tenant");
    let ps = payments(&c, &key).await;
    running.shutdown().await.expect("shutdown");
    // Back to the schema before the clock, as an older server left it.
    let older = [
        "DROP TABLE held_rail_notices",
        "DROP TABLE token_revocations",
        "DROP TABLE payment_rail_refs",
        "DROP TABLE webhook_deliveries",
        "DROP TABLE webhooks",
        "DROP TABLE payment_clock",
        "DROP TABLE projection_format",
        "DELETE FROM projection_checkpoints WHERE name IN ('clock', 'rail_refs')",
        "UPDATE trustfold_server_schema SET version = 1",
    ];
    on_the_file(&db, &older.map(String::from)).await;
    let (running, c) = serve(&db, &clock).await;
    a_week_passes(&c, &key, &ps, &clock).await;
    // The rail references' read model (server schema 5) filled from the log too.
    let r = c.get("/v1/payments?rail_ref=ACH-1", &key).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["payments"][0]["payment_id"], ps.settled.payment,
        "{}",
        r.body
    );
    running.shutdown().await.expect("shutdown");
}

/// Payments whose ticks are refused (here: 300 rows due long ago for payments that do
/// not exist, each tick a 404 and a pause of a minute) do not hold back the others: a
/// round goes past them to every payment due.
#[tokio::test]
async fn refused_ticks_do_not_hold_back_the_others() {
    let (_dir, db) = common::sqlite_file();
    let clock = Clock::system();
    let (running, c) = serve(&db, &clock).await;
    let key = c.tenant(ADMIN, "Patient Escrow").await.expect("tenant");
    let ps = payments(&c, &key).await;
    running.shutdown().await.expect("shutdown");
    // Ids as SQLite holds them: 16-byte blobs.
    let refused: Vec<String> = (0..300u128)
        .map(|i| {
            format!(
                "INSERT INTO payment_clock (payment_id, tenant_id, due_at_ms) \
                 VALUES (X'{:032x}', X'{:032x}', 1)",
                0xdead_0000 + i,
                0xbeef_u128
            )
        })
        .collect();
    on_the_file(&db, &refused).await;
    let (running, c) = serve(&db, &clock).await;
    a_week_passes(&c, &key, &ps, &clock).await;
    running.shutdown().await.expect("shutdown");
}
