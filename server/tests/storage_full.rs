//! A full disk over HTTP: the server's own writes meet a real "database or disk is full"
//! and the API answers 503 `storage_full` with `Retry-After: 30`, having stored nothing
//! of the request, so the same request (the same `Idempotency-Key`) succeeds once there
//! is space again.
//!
//! SQLite: every connection this process opens is capped at a number of pages
//! (`PRAGMA max_page_count`, run by an auto extension registered with the SQLite that
//! sqlx links), so the server's own connections meet a real `SQLITE_FULL`; the server's
//! configuration knows nothing of it. Its own binary: the cap is process-wide.
//! PostgreSQL: the test database raises SQLSTATE 53100 `disk_full` from triggers on the
//! events and idempotency tables, then on the payment list's read model, inside the
//! server's own statements (a real error from the database, though not a real full
//! disk, which a test cannot make without root).

mod common;

use std::ffi::{c_char, c_int, CString};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

use common::scenario::{open_and_join, Client, Flow, Reply};
use common::{config, serve, ADMIN};
use libsqlite3_sys as ffi;
use serde_json::{json, Value};
use sqlx::{Connection as _, Executor as _};

/// The page cap of SQLite connections opened from now on; 0: none.
static MAX_PAGES: AtomicU32 = AtomicU32::new(0);

/// The auto extension: runs on every SQLite connection as it opens.
unsafe extern "C" fn cap_pages(
    db: *mut ffi::sqlite3,
    _err: *mut *mut c_char,
    _api: *const ffi::sqlite3_api_routines,
) -> c_int {
    let pages = MAX_PAGES.load(Ordering::SeqCst);
    if pages > 0 {
        let sql = CString::new(format!("PRAGMA max_page_count = {pages}")).expect("no NUL");
        // SAFETY: `db` is the connection being opened; the statement is NUL-terminated.
        unsafe {
            ffi::sqlite3_exec(
                db,
                sql.as_ptr(),
                None,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
    }
    ffi::SQLITE_OK
}

/// Caps the pages of every SQLite connection opened from now on (0: no cap).
fn cap_new_connections(pages: u32) {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: registers a function with the signature SQLite calls it with.
        let rc = unsafe { ffi::sqlite3_auto_extension(Some(cap_pages)) };
        assert_eq!(rc, ffi::SQLITE_OK, "sqlite3_auto_extension");
    });
    MAX_PAGES.store(pages, Ordering::SeqCst);
}

/// The pages the SQLite file holds now (with what its WAL holds).
async fn page_count(database: &str) -> u32 {
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{database}"))
        .await
        .expect("connect");
    let n: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(&mut conn)
        .await
        .expect("page_count");
    conn.close().await.expect("close");
    u32::try_from(n).expect("pages")
}

/// A text of `chars` four-byte characters (names and reasons count characters).
fn wide(chars: usize) -> String {
    "🏡".repeat(chars)
}

/// The `n`th command of a run that only grows the payment: invite a lender, remove it,
/// invite the next…, with long names and reasons so that each event needs pages.
fn nth_command(f: &Flow, n: usize, lenders: &mut Vec<String>) -> Value {
    let command = if n % 2 == 0 {
        let lender = uuid::Uuid::new_v4().to_string();
        lenders.push(lender.clone());
        json!({"type": "Invite", "party": lender, "roles": ["lender"], "name": wide(200)})
    } else {
        let lender = lenders.last().expect("invited");
        json!({"type": "Remove", "party": lender, "reason": wide(2000)})
    };
    json!({"command": command, "actor": {"party": f.escrow, "role": "escrow_holder"}})
}

async fn version(c: &Client, key: &str, payment: &str) -> (u64, usize) {
    let state = c.get(&format!("/v1/payments/{payment}"), key).await;
    assert_eq!(state.status, 200, "{}", state.body);
    let history = c
        .get(&format!("/v1/payments/{payment}/events?limit=1000"), key)
        .await;
    assert_eq!(history.status, 200, "{}", history.body);
    let events = history.body["events"]
        .as_array()
        .map(Vec::len)
        .unwrap_or_default();
    (state.body["version"].as_u64().expect("version"), events)
}

/// The refusal every full-disk answer must be.
fn assert_storage_full(r: &Reply) {
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["code"], "storage_full", "{}", r.body);
    assert_eq!(
        r.headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("30")
    );
    assert_eq!(
        r.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let detail = r.body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("nothing of this request was stored") && detail.contains("free space"),
        "{detail}"
    );
}

/// After a refusal: the payment and its history are as before, and once there is space
/// the same request under the same key runs (once: a retry replays it).
async fn retried_with_space(
    c: &Client,
    key: &str,
    f: &Flow,
    (idem, body): (&str, &Value),
    before: (u64, usize),
) {
    assert_eq!(
        version(c, key, &f.payment).await,
        before,
        "a full disk left nothing"
    );
    let path = format!("/v1/payments/{}/commands", f.payment);
    let r = c.post_idem(&path, key, idem, body).await;
    assert_eq!(r.status, 200, "the key was free: {}", r.body);
    assert!(r.headers.get("idempotent-replayed").is_none(), "ran now");
    assert_eq!(r.body["version"].as_u64(), Some(before.0 + 1));
    let again = c.post_idem(&path, key, idem, body).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.bytes, r.bytes);
    assert!(again.headers.get("idempotent-replayed").is_some());
    assert_eq!(version(c, key, &f.payment).await.0, before.0 + 1);
}

fn assert_documented(c: &Client) {
    let undocumented = c.undocumented();
    assert!(undocumented.is_empty(), "{}", undocumented.join("\n"));
}

#[tokio::test]
async fn sqlite_a_full_file_stores_nothing_and_the_same_request_succeeds_later() {
    let (_dir, database) = common::sqlite_file();
    // Room to set up a payment everyone has joined.
    let running = serve(config(&database)).await;
    let c = Client::new(format!("http://{}", running.addr));
    let key = c.tenant(ADMIN, "full disk").await.expect("tenant");
    let f = open_and_join(&c, &key).await.expect("payment");
    assert_documented(&c);
    running.shutdown().await.expect("shutdown");

    // The file may grow by a few pages only: commands go on until one meets the cap.
    cap_new_connections(page_count(&database).await + 4);
    let running = serve(config(&database)).await;
    let c = Client::new(format!("http://{}", running.addr));
    let path = format!("/v1/payments/{}/commands", f.payment);
    let mut lenders = Vec::new();
    let mut refused = None;
    for n in 0..200 {
        let before = version(&c, &key, &f.payment).await;
        let idem = format!("full-{n}");
        let body = nth_command(&f, n, &mut lenders);
        let r = c.post_idem(&path, &key, &idem, &body).await;
        if r.status == 200 {
            continue;
        }
        assert_storage_full(&r);
        // Nothing half-written: not the events, not the key's record.
        assert_eq!(version(&c, &key, &f.payment).await, before);
        // Still refused while the disk is full (the key holds no stored answer).
        let again = c.post_idem(&path, &key, &idem, &body).await;
        assert_storage_full(&again);
        // A read model that cannot be written is the same refusal, never a 500.
        for path in [
            "/v1/payments",
            &format!("/v1/payments/{}/balances", f.payment),
        ] {
            let r = c.get(path, &key).await;
            if r.status != 200 {
                assert_storage_full(&r);
            }
        }
        refused = Some((idem, body, before));
        break;
    }
    let (idem, body, before) = refused.expect("the capped file filled up");
    assert_documented(&c);
    running.shutdown().await.expect("shutdown");

    // An operator frees space: no cap on the connections of the next start.
    cap_new_connections(0);
    let running = serve(config(&database)).await;
    let c = Client::new(format!("http://{}", running.addr));
    retried_with_space(&c, &key, &f, (&idem, &body), before).await;
    assert_documented(&c);
    running.shutdown().await.expect("shutdown");
}

/// Triggers that make the test database refuse inserts into the events and idempotency
/// tables with SQLSTATE 53100 `disk_full`, as PostgreSQL does when it cannot extend a
/// file.
const FILL: &str = "
CREATE FUNCTION test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full';
END $$;
CREATE TRIGGER test_disk_full BEFORE INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION test_disk_full();
CREATE TRIGGER test_disk_full BEFORE INSERT ON idempotency
    FOR EACH STATEMENT EXECUTE FUNCTION test_disk_full();
";
const FREE: &str = "
DROP TRIGGER test_disk_full ON events;
DROP TRIGGER test_disk_full ON idempotency;
DROP FUNCTION test_disk_full();
";

/// The same for the payment list's read model only.
const FILL_SUMMARY: &str = "
CREATE FUNCTION test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full';
END $$;
CREATE TRIGGER test_disk_full BEFORE INSERT OR UPDATE ON payment_summary
    FOR EACH STATEMENT EXECUTE FUNCTION test_disk_full();
";
const FREE_SUMMARY: &str = "
DROP TRIGGER test_disk_full ON payment_summary;
DROP FUNCTION test_disk_full();
";

#[tokio::test]
async fn postgres_a_full_disk_stores_nothing_and_the_same_request_succeeds_later() {
    let Some((admin, name, url)) = common::postgres_database().await else {
        return;
    };
    let running = serve(config(&url)).await;
    let c = Client::new(format!("http://{}", running.addr));
    let key = c.tenant(ADMIN, "full disk").await.expect("tenant");
    let f = open_and_join(&c, &key).await.expect("payment");
    let before = version(&c, &key, &f.payment).await;
    let mut db = sqlx::PgConnection::connect(&url).await.expect("connect");
    db.execute(FILL).await.expect("fill the disk");

    // A command that appends (events and its key's record in one commit).
    let path = format!("/v1/payments/{}/commands", f.payment);
    let body = nth_command(&f, 0, &mut Vec::new());
    let r = c.post_idem(&path, &key, "full-append", &body).await;
    assert_storage_full(&r);
    // A rejection by the rules, stored under its key on its own: the buyer has joined
    // already.
    let join = json!({"command": {"type": "Join"}, "actor": {"party": f.buyer, "role": "buyer"}});
    let rejected = c.post_idem(&path, &key, "full-rejected", &join).await;
    assert_storage_full(&rejected);
    assert_eq!(version(&c, &key, &f.payment).await, before);

    db.execute(FREE).await.expect("free the disk");
    retried_with_space(&c, &key, &f, ("full-append", &body), before).await;
    let stored = c.post_idem(&path, &key, "full-rejected", &join).await;
    assert_eq!(
        (stored.status, &stored.body["code"]),
        (422, &json!("already_joined")),
        "the key was free for the rejection: {}",
        stored.body
    );
    assert!(stored.headers.get("idempotent-replayed").is_none());

    // A read model that cannot be written: the command is stored, the list (which waits
    // for the read models) is refused as storage_full, the payment itself still reads.
    db.execute(FILL_SUMMARY).await.expect("fill the disk");
    let next = version(&c, &key, &f.payment).await;
    let invite = json!({
        "command": {"type": "Invite", "party": uuid::Uuid::new_v4(), "roles": ["brokerage"]},
        "actor": {"party": f.escrow, "role": "escrow_holder"}
    });
    let r = c.post_idem(&path, &key, "full-read-model", &invite).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_storage_full(&c.get("/v1/payments", &key).await);
    assert_eq!(version(&c, &key, &f.payment).await.0, next.0 + 1);
    db.execute(FREE_SUMMARY).await.expect("free the disk");
    let list = c.get("/v1/payments", &key).await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(
        list.body["payments"][0]["version"].as_u64(),
        Some(next.0 + 1)
    );
    assert_documented(&c);
    db.close().await.expect("close");
    running.shutdown().await.expect("shutdown");
    common::drop_database(&admin, &name).await;
}

/// PostgreSQL out of memory (53200) is not a full disk: 503 `database_unavailable`
/// (retry in a second), not `storage_full` (free disk space), and nothing is stored.
#[tokio::test]
async fn postgres_out_of_memory_is_unavailable_not_storage_full() {
    let Some((admin, name, url)) = common::postgres_database().await else {
        return;
    };
    let running = serve(config(&url)).await;
    let c = Client::new(format!("http://{}", running.addr));
    let key = c.tenant(ADMIN, "no memory").await.expect("tenant");
    let f = open_and_join(&c, &key).await.expect("payment");
    let before = version(&c, &key, &f.payment).await;
    let mut db = sqlx::PgConnection::connect(&url).await.expect("connect");
    db.execute(&*FILL.replace("'disk_full'", "'out_of_memory'"))
        .await
        .expect("exhaust the memory");
    let path = format!("/v1/payments/{}/commands", f.payment);
    let body = nth_command(&f, 0, &mut Vec::new());
    let r = c.post_idem(&path, &key, "no-memory", &body).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (503, Some("database_unavailable")),
        "{}",
        r.body
    );
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(version(&c, &key, &f.payment).await, before);
    db.execute(FREE).await.expect("free the memory");
    retried_with_space(&c, &key, &f, ("no-memory", &body), before).await;
    db.close().await.expect("close");
    running.shutdown().await.expect("shutdown");
    common::drop_database(&admin, &name).await;
}
