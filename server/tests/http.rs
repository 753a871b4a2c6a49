//! The HTTP API over real loopback connections, against a server started in-process on
//! a real SQLite file (and, where it matters, on PostgreSQL via `DATABASE_URL`).

mod common;

use std::time::Duration;

use common::scenario::{fund, fund_and_release, history, open_and_join, Client};
use common::{Server, ADMIN};
use serde_json::{json, Value};
use trustfold_core::fold::replay;
use trustfold_core::history::{parse, PublicKey, SignedHead, SignedResponse};
use trustfold_server::app::open;

/// The example earnest-money policy as its version 2, for a test to change and publish.
fn earnest_money_v2() -> Value {
    let mut policy: Value = serde_json::from_str(common::scenario::EARNEST_MONEY).expect("policy");
    policy["version"] = 2.into();
    policy
}

/// Runs the test `$name(srv: Server)` on a fresh SQLite file and on a fresh PostgreSQL
/// database, as the tests `$name::sqlite` and `$name::postgres`.
macro_rules! on_both_engines {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::common::sqlite().await).await;
            }

            #[tokio::test]
            async fn postgres() {
                if let Some(srv) = super::common::postgres().await {
                    super::$name(srv).await;
                }
            }
        }
    };
}

/// The types of the notifications in an inbox answer.
fn notice_types(r: &common::scenario::Reply) -> Vec<String> {
    r.body["notifications"]
        .as_array()
        .expect("notifications")
        .iter()
        .filter_map(|n| n["type"].as_str().map(str::to_owned))
        .collect()
}

/// Asserts an answer's status and one string member of its body.
fn expect_member(r: &common::scenario::Reply, status: u16, member: &str, value: &str) {
    assert_eq!(
        (r.status, r.body[member].as_str()),
        (status, Some(value)),
        "{}",
        r.body
    );
}

async fn earnest_money(srv: &Server) {
    let c = &srv.client;
    let key = c.tenant(ADMIN, "Acme Realty").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open and join");
    fund_and_release(c, &key, &f)
        .await
        .expect("fund and release");
    let p = &f.payment;

    // Health, and text no database here can store (NUL), on either engine.
    let h = c.get("/healthz", &key).await;
    expect_member(&h, 200, "status", "ok");
    let r = c.get("/v1/payments?policy=a%00b", &key).await;
    expect_member(&r, 400, "code", "invalid_parameter");
    let nul = json!({"name": "Acme\u{0}"});
    expect_member(
        &c.post("/v1/tenants", ADMIN, &nul).await,
        422,
        "code",
        "invalid_name",
    );
    // A policy id no policy can have (a NUL in the path, or in a new payment's policy) is
    // answered alike on both engines: no such policy.
    expect_member(
        &c.get("/v1/policies/a%00b", &key).await,
        404,
        "code",
        "unknown_policy",
    );
    let body = json!({"policy": "earnest\u{0}money", "amount": {"amount": "1.00", "currency": "USD"},
        "initiator": {"party": uuid::Uuid::new_v4(), "roles": ["listing_agent"]}});
    expect_member(
        &c.post("/v1/payments", &key, &body).await,
        422,
        "code",
        "unknown_policy",
    );

    // State from the read model, with its version as ETag.
    let state = c.get(&format!("/v1/payments/{p}"), &key).await;
    assert_eq!(state.status, 200);
    assert_eq!(state.body["status"], "Completed");
    let version = state.body["version"].as_u64().expect("version");
    let etag = state.headers["etag"].to_str().expect("etag").to_owned();
    assert_eq!(etag, format!("\"{version}\""));
    let again = c
        .raw(
            "GET",
            &format!("/v1/payments/{p}"),
            Some(&key),
            &[("if-none-match", &etag)],
            None,
        )
        .await
        .expect("GET");
    assert_eq!(again.status, 304);
    let weak = format!("W/{etag}");
    let older = format!("\"{}\"", version - 1);
    let listed = format!("{older}, {weak}");
    for (value, status) in [
        (weak.as_str(), 304),
        ("*", 304),
        (listed.as_str(), 304),
        (older.as_str(), 200),
    ] {
        let r = c
            .raw(
                "GET",
                &format!("/v1/payments/{p}"),
                Some(&key),
                &[("if-none-match", value)],
                None,
            )
            .await
            .expect("GET");
        assert_eq!(r.status, status, "If-None-Match: {value}");
    }

    // The history, fetched in pages of 3, verifies and folds to the same state.
    let doc = history(c, &key, p, 3).await.expect("history");
    let rebuilt = replay(&doc).expect("the served history verifies and folds");
    assert_eq!(rebuilt.version, version);
    let served: Value = serde_json::from_slice(&rebuilt.to_json()).expect("state json");
    assert_eq!(
        served, state.body,
        "read model equals the fold of the history"
    );

    // The signed head verifies with the published key against that history.
    let head = c.get(&format!("/v1/payments/{p}/head"), &key).await;
    let head: SignedHead = serde_json::from_value(head.body).expect("signed head");
    let pk = c
        .raw("GET", "/v1/server-key", None, &[], None)
        .await
        .expect("key");
    let pk: PublicKey = pk.body["public_key"]
        .as_str()
        .expect("hex")
        .parse()
        .expect("key");
    let records = parse(&doc).expect("records");
    head.verify_against(&pk, &records).expect("head verifies");
    assert_eq!(head.seq, version);

    // The tenant feed has every event in global order.
    let feed = c.get("/v1/events?limit=1000", &key).await;
    let items = feed.body["events"].as_array().expect("events");
    assert_eq!(items.len() as u64, version);
    assert!(items
        .windows(2)
        .all(|w| w[0]["position"].as_u64() < w[1]["position"].as_u64()));

    // List and search.
    for q in [
        "status=Completed".to_string(),
        format!("participant={}", f.buyer),
        "policy=earnest-money".into(),
    ] {
        let l = c.get(&format!("/v1/payments?{q}"), &key).await;
        assert_eq!(
            l.body["payments"].as_array().map(Vec::len),
            Some(1),
            "{q}: {}",
            l.body
        );
    }
    let l = c.get("/v1/payments?status=Held", &key).await;
    assert_eq!(l.body["payments"].as_array().map(Vec::len), Some(0));

    // Inbox (ReleaseRequested notifies buyer and seller) and balances.
    let inbox = c
        .get(&format!("/v1/parties/{}/inbox", f.seller), &key)
        .await;
    let types = notice_types(&inbox);
    assert!(
        types.iter().any(|t| t == "ReleaseRequested"),
        "{}",
        inbox.body
    );
    let bal = c.get(&format!("/v1/payments/{p}/balances"), &key).await;
    let seller_account = format!("payee:{}", f.seller);
    let seller = bal.body["balances"]
        .as_array()
        .expect("balances")
        .iter()
        .find(|b| b["account"] == seller_account.as_str())
        .cloned()
        .expect("seller balance");
    assert_eq!(seller["posted"], "5000.00");
}

/// A statement on the server's own pool (to leave a read model as an older build did).
async fn exec(db: &trustfold_server::db::Db, sql: &str) {
    match db {
        trustfold_server::db::Db::Sqlite { writer, .. } => {
            sqlx::query(sql).execute(writer).await.map(|_| ())
        }
        trustfold_server::db::Db::Postgres(pool) => {
            sqlx::query(sql).execute(pool).await.map(|_| ())
        }
    }
    .expect(sql);
}

async fn projections_rebuild_equal_live(database: &str) {
    let (store, db, projector) = open(database).await.expect("open");
    projector.catch_up().await.expect("catch up");
    let live = projector.dump().await.expect("dump");
    assert!(!live.is_empty());
    projector.rebuild().await.expect("rebuild");
    assert_eq!(
        projector.dump().await.expect("dump"),
        live,
        "rebuilt = live"
    );
    // A projection that starts from 0 (as a newly added one does) fills from history.
    projector.reset(&["inbox"]).await.expect("reset");
    assert_ne!(projector.dump().await.expect("dump"), live);
    projector.catch_up().await.expect("catch up");
    assert_eq!(
        projector.dump().await.expect("dump"),
        live,
        "replayed = live"
    );
    // Rows an older build's fold wrote (here: a status that fold no longer gives) stay
    // through a plain restart, and are rebuilt at the start of a build whose read
    // models' format is newer than the one marked.
    exec(&db, "UPDATE payment_summary SET status = 'Held'").await;
    let (_, _, restarted) = open(database).await.expect("open");
    restarted.catch_up().await.expect("catch up");
    assert!(
        restarted.dump().await.expect("dump") != live,
        "a plain restart keeps the rows"
    );
    exec(&db, "UPDATE projection_format SET format = 0").await;
    let (_, _, upgraded) = open(database).await.expect("open");
    upgraded.catch_up().await.expect("catch up");
    assert!(
        upgraded.dump().await.expect("dump") == live,
        "rebuilt at start"
    );
    // Read models a newer build marked as its own are no longer written by this one
    // (a rolling upgrade): an emptied projection stays empty until the mark is ours.
    upgraded.reset(&["inbox"]).await.expect("reset");
    exec(&db, "UPDATE projection_format SET format = 1000000").await;
    upgraded.catch_up().await.expect("catch up");
    assert!(upgraded.dump().await.expect("dump") != live, "not written");
    exec(
        &db,
        &format!(
            "UPDATE projection_format SET format = {}",
            trustfold_server::projections::READ_MODEL_FORMAT
        ),
    )
    .await;
    upgraded.catch_up().await.expect("catch up");
    assert!(
        upgraded.dump().await.expect("dump") == live,
        "written again"
    );
    // A stored history that does not fold (here: an event that is no envelope, as a
    // hand edit or a rule tightened since could leave) is passed over: the rebuild
    // ends, with every other row as before, and a server still starts.
    use trustfold_server::EventStore;
    let first = store.read_all_tenants(0, 1).await.expect("read");
    let (tenant, payment) = (first[0].tenant_id, first[0].stream_id);
    let head = store
        .stream_head(tenant, payment)
        .await
        .expect("head")
        .expect("a head");
    store
        .append(
            tenant,
            payment,
            head.version,
            &[trustfold_server::NewEvent {
                event_id: uuid::Uuid::new_v4(),
                event_type: "ParticipantJoined".into(),
                schema_version: 1,
                body: br#"{"not":"an envelope"}"#.to_vec(),
                hash: [7; 32],
            }],
        )
        .await
        .expect("appended");
    upgraded
        .rebuild()
        .await
        .expect("the rebuild passes the payment over");
    assert!(
        upgraded.dump().await.expect("dump") == live,
        "the rest as before"
    );
    let running = common::serve(common::config(database)).await;
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn earnest_money_end_to_end_sqlite() {
    let mut srv = common::sqlite().await;
    earnest_money(&srv).await;
    srv.stop().await;
    projections_rebuild_equal_live(&srv.database).await;
    srv.finish().await;
}

#[tokio::test]
async fn earnest_money_end_to_end_postgres() {
    let Some(mut srv) = common::postgres().await else {
        return;
    };
    earnest_money(&srv).await;
    srv.stop().await;
    projections_rebuild_equal_live(&srv.database).await;
    srv.finish().await;
}

/// Concurrent requests with one `Idempotency-Key`: the response is stored in the commit
/// of the command's events, so exactly one command runs; every request with the same
/// body gets its response byte for byte, and one with another body gets 422.
async fn concurrent_requests_share_one_key(srv: &Server) {
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    let path = format!("/v1/payments/{}/commands", f.payment);
    let before = c
        .get(&format!("/v1/payments/{}", f.payment), &key)
        .await
        .body["version"]
        .as_u64()
        .expect("version");
    for (round, role) in ["lender", "brokerage", "brokerage"].iter().enumerate() {
        let idem = format!("race-{round}");
        let party = uuid::Uuid::new_v4().to_string();
        let body = json!({"command": {"type": "Invite", "party": party, "roles": [role], "name": "L"},
                          "actor": {"party": f.agent, "role": "listing_agent"}});
        let other = json!({"command": {"type": "Invite", "party": party, "roles": [role], "name": "M"},
                           "actor": {"party": f.agent, "role": "listing_agent"}});
        let tasks: Vec<_> = (0..12)
            .map(|i| {
                let (c, key, path, idem) = (c.clone(), key.clone(), path.clone(), idem.clone());
                let b = if i == 11 { other.clone() } else { body.clone() };
                tokio::spawn(async move { (i, c.post_idem(&path, &key, &idem, &b).await) })
            })
            .collect();
        let mut replies = Vec::new();
        for t in tasks {
            let (i, r) = t.await.expect("task");
            assert!(r.status == 200 || r.status == 422, "{}", r.body);
            if r.status == 422 {
                assert_eq!(r.body["code"], "idempotency_key_reused", "{}", r.body);
            }
            replies.push((i == 11, r.status, r.bytes));
        }
        // Whichever body came first ran once; every request with that body got its
        // response byte for byte, and every one with the other body got 422.
        let ok: Vec<_> = replies.iter().filter(|(_, s, _)| *s == 200).collect();
        assert!(!ok.is_empty());
        assert!(
            ok.windows(2).all(|w| w[0].2 == w[1].2 && w[0].0 == w[1].0),
            "every 200 is the same response, to the same body, byte for byte"
        );
        let winner_is_other = ok[0].0;
        assert!(replies
            .iter()
            .all(|(is_other, s, _)| (*s == 200) == (*is_other == winner_is_other)));
    }
    let after = c
        .get(&format!("/v1/payments/{}", f.payment), &key)
        .await
        .body["version"]
        .as_u64()
        .expect("version");
    assert_eq!(after, before + 3, "one invitation per key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_share_one_key_sqlite() {
    let srv = common::sqlite().await;
    concurrent_requests_share_one_key(&srv).await;
    srv.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_share_one_key_postgres() {
    let Some(srv) = common::postgres().await else {
        return;
    };
    concurrent_requests_share_one_key(&srv).await;
    srv.finish().await;
}

#[tokio::test]
async fn idempotency_replays_and_rejects_reuse() {
    let srv = common::sqlite().await;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    let path = format!("/v1/payments/{}/commands", f.payment);
    let other = uuid::Uuid::new_v4().to_string();
    let body = json!({"command": {"type": "Invite", "party": other, "roles": ["lender"], "name": "L"},
                      "actor": {"party": f.agent, "role": "listing_agent"}});
    let first = c.post_idem(&path, &key, "invite-lender-1", &body).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let second = c.post_idem(&path, &key, "invite-lender-1", &body).await;
    assert_eq!(second.status, 200);
    assert_eq!(
        second.bytes, first.bytes,
        "the stored response is replayed byte for byte"
    );
    assert_eq!(second.headers["idempotent-replayed"], "true");
    let v = c
        .get(&format!("/v1/payments/{}", f.payment), &key)
        .await
        .body["version"]
        .clone();
    assert_eq!(v, first.body["version"], "the replay appended nothing");

    let changed = json!({"command": {"type": "Invite", "party": other, "roles": ["brokerage"], "name": "L"},
                         "actor": {"party": f.agent, "role": "listing_agent"}});
    let reused = c.post_idem(&path, &key, "invite-lender-1", &changed).await;
    assert_eq!(reused.status, 422);
    assert_eq!(reused.body["code"], "idempotency_key_reused");

    // A rejection is a result too: replayed for the same key and body.
    let bad = json!({"command": {"type": "Invite", "party": other, "roles": ["nobody"], "name": "L"},
                     "actor": {"party": f.agent, "role": "listing_agent"}});
    let r1 = c.post_idem(&path, &key, "bad-1", &bad).await;
    assert_eq!(r1.status, 422, "{}", r1.body);
    let r2 = c.post_idem(&path, &key, "bad-1", &bad).await;
    assert_eq!((r2.status, r2.bytes), (r1.status, r1.bytes));

    // Creating a payment with a key twice gives one payment.
    let open = json!({"policy": "earnest-money", "amount": {"amount": "100.00", "currency": "USD"},
                      "initiator": {"party": f.agent, "roles": ["listing_agent"]}});
    let a = c.post_idem("/v1/payments", &key, "open-1", &open).await;
    let b = c.post_idem("/v1/payments", &key, "open-1", &open).await;
    assert_eq!((a.status, b.status), (201, 201));
    assert_eq!(a.body["payment_id"], b.body["payment_id"]);
    srv.finish().await;
}

/// `POST /v1/policies` takes an `Idempotency-Key` like the other POSTs: the same key
/// and body replay the first answer (its 201, though the version is stored by then);
/// the key with another body is 422 `idempotency_key_reused` and publishes nothing.
#[tokio::test]
async fn publishing_a_policy_takes_an_idempotency_key() {
    let srv = common::sqlite().await;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let policy = earnest_money_v2();
    let first = c.post_idem("/v1/policies", &key, "pol-1", &policy).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let again = c.post_idem("/v1/policies", &key, "pol-1", &policy).await;
    assert_eq!(again.status, 201, "{}", again.body);
    assert!(again.bytes == first.bytes, "replayed byte for byte");
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let mut v3 = earnest_money_v2();
    v3["version"] = 3.into();
    let reused = c.post_idem("/v1/policies", &key, "pol-1", &v3).await;
    expect_member(&reused, 422, "code", "idempotency_key_reused");
    let r = c.get("/v1/policies/earnest-money?version=3", &key).await;
    assert_eq!(r.status, 404, "nothing was published: {}", r.body);
    // A refused policy is the request's answer too; a malformed key is a 400.
    let mut bad = earnest_money_v2();
    bad["payer_role"] = "nobody".into();
    let r1 = c.post_idem("/v1/policies", &key, "pol-bad", &bad).await;
    expect_member(&r1, 422, "code", "invalid_policy");
    let r2 = c.post_idem("/v1/policies", &key, "pol-bad", &bad).await;
    assert_eq!(r2.status, 422, "{}", r2.body);
    assert!(r2.bytes == r1.bytes, "replayed byte for byte");
    assert_eq!(r2.headers["idempotent-replayed"], "true");
    let r = c.post_idem("/v1/policies", &key, "a\tb", &v3).await;
    expect_member(&r, 400, "code", "invalid_idempotency_key");
    srv.finish().await;
}

/// Concurrent `POST /v1/policies` under one `Idempotency-Key`, most with another policy
/// (a few repeat one of them): the policy and the key's record are written in one
/// commit, so exactly one policy is published (201), the requests with its body get
/// that answer byte for byte, and every other request is 422 `idempotency_key_reused`
/// with nothing of it stored. (Publishing, then storing the answer, let several requests
/// past an empty lookup: each published its policy, and all but one were told 422.)
async fn concurrent_policies_share_one_key(srv: Server) {
    const POLICIES: usize = 16;
    const REPEATS: usize = 4;
    const ROUNDS: usize = 4;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    for round in 0..ROUNDS {
        let idem = format!("pol-race-{round}");
        // Other ids, and every other one another version too: different bodies.
        let policy = |i: usize| {
            let mut p = earnest_money_v2();
            p["id"] = format!("race-{round}-{i}").into();
            p["version"] = (1 + i % 2).into();
            p
        };
        // Policy 0 sent 1 + REPEATS times, the others once.
        let sent: Vec<usize> = (0..POLICIES).chain([0; REPEATS]).collect();
        let tasks: Vec<_> = sent
            .iter()
            .map(|&i| {
                let (c, key, idem, body) = (c.clone(), key.clone(), idem.clone(), policy(i));
                tokio::spawn(
                    async move { (i, c.post_idem("/v1/policies", &key, &idem, &body).await) },
                )
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            let (i, r) = t.await.expect("task");
            if r.status != 201 {
                expect_member(&r, 422, "code", "idempotency_key_reused");
            }
            answers.push((i, r));
        }
        let published: Vec<_> = answers.iter().filter(|(_, r)| r.status == 201).collect();
        let (winner, first) = published.first().expect("a 201");
        assert!(
            answers
                .iter()
                .all(|(i, r)| (r.status == 201) == (i == winner)),
            "round {round}: every request with the winner's body, and only those, got 201"
        );
        assert!(
            published.iter().all(|(_, r)| r.bytes == first.bytes),
            "round {round}: one answer, byte for byte"
        );
        let mut stored = Vec::new();
        for i in 0..POLICIES {
            let p = policy(i);
            let path = format!(
                "/v1/policies/{}?version={}",
                p["id"].as_str().expect("id"),
                p["version"]
            );
            let r = c.get(&path, &key).await;
            assert!(r.status == 200 || r.status == 404, "{}", r.body);
            if r.status == 200 {
                stored.push(i);
            }
        }
        assert_eq!(
            stored,
            [*winner],
            "round {round}: only the 201's policy is stored"
        );
        // The key keeps the winner's answer.
        let again = c
            .post_idem("/v1/policies", &key, &idem, &policy(*winner))
            .await;
        assert_eq!((again.status, &again.bytes), (201, &first.bytes));
        assert_eq!(again.headers["idempotent-replayed"], "true");
    }
    srv.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_policies_share_one_key_sqlite() {
    let srv = common::sqlite().await;
    concurrent_policies_share_one_key(srv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_policies_share_one_key_postgres() {
    let Some(srv) = common::postgres().await else {
        return;
    };
    concurrent_policies_share_one_key(srv).await;
}

/// A 409 under an `Idempotency-Key` is not the key's answer: nothing is stored, so the
/// corrected request under the same key publishes (201), and its retry is replayed.
#[tokio::test]
async fn a_policy_refused_409_under_a_key_leaves_the_key_free() {
    let srv = common::sqlite().await;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let mut p = earnest_money_v2();
    p["id"] = "clash".into();
    assert_eq!(c.post("/v1/policies", &key, &p).await.status, 201);
    let mut other = p.clone();
    other["name"] = "other content".into();
    let clash = c.post_idem("/v1/policies", &key, "fix-it", &other).await;
    assert_eq!(clash.status, 409, "{}", clash.body);
    assert_eq!(clash.body["code"], "policy_version_exists");
    other["version"] = (p["version"].as_u64().expect("version") + 1).into();
    let fixed = c.post_idem("/v1/policies", &key, "fix-it", &other).await;
    assert_eq!(fixed.status, 201, "{}", fixed.body);
    let again = c.post_idem("/v1/policies", &key, "fix-it", &other).await;
    assert_eq!((again.status, &again.body), (201, &fixed.body));
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let stored = c.get("/v1/policies/clash", &key).await;
    assert_eq!(stored.status, 200, "{}", stored.body);
    srv.finish().await;
}

/// Minting a participant token (its answer a bearer credential, not kept at rest) and
/// retrying a webhook endpoint (nothing stored to replay) refuse an `Idempotency-Key`
/// rather than ignore it, like the other routes whose answers are not stored: 400
/// `route_not_idempotent`, and nothing is done.
#[tokio::test]
async fn tokens_and_webhook_retries_refuse_an_idempotency_key() {
    let srv = common::sqlite().await;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    let tokens = format!("/v1/payments/{}/tokens", f.payment);
    let r = c
        .post_idem(
            &tokens,
            &key,
            "tok-1",
            &json!({"party": f.buyer, "ttl_seconds": 60}),
        )
        .await;
    expect_member(&r, 400, "code", "route_not_idempotent");
    assert_eq!(r.body["field"], "Idempotency-Key");
    assert!(r.body.get("token").is_none());
    let hook = c
        .post(
            "/v1/webhooks",
            &key,
            &json!({"url": "https://example.com/hooks"}),
        )
        .await;
    assert_eq!(hook.status, 201, "{}", hook.body);
    let id = hook.body["webhook_id"].as_str().expect("id");
    let retry = format!("/v1/webhooks/{id}/retry");
    let r = c.post_idem(&retry, &key, "retry-1", &json!({})).await;
    expect_member(&r, 400, "code", "route_not_idempotent");
    let r = c
        .raw("POST", &retry, Some(&key), &[], None)
        .await
        .expect("retry");
    assert_eq!(r.status, 200, "{}", r.body);
    srv.finish().await;
}

/// An `Idempotency-Key` compares requests by meaning: the same JSON pretty-printed, with
/// its keys in another order and other string escapes, is the same request and gets the
/// first answer replayed; another body is still a 422.
#[tokio::test]
async fn idempotency_compares_the_json_not_its_bytes() {
    let srv = common::sqlite().await;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    let path = format!("/v1/payments/{}/commands", f.payment);
    let other = uuid::Uuid::new_v4().to_string();
    let compact = format!(
        r#"{{"command":{{"type":"Invite","party":"{other}","roles":["lender"],"name":"L"}},"actor":{{"party":"{}","role":"listing_agent"}}}}"#,
        f.agent
    );
    let send =
        |body: String| c.post_bytes_idem(&path, &key, "invite-by-meaning", body.into_bytes());
    let first = send(compact.clone()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(first.headers.get("idempotent-replayed").is_none());
    // Pretty-printed, keys reordered, one letter escaped: the same request.
    let pretty = format!(
        "{{\n  \"actor\": {{ \"role\": \"listing_agent\", \"party\": \"{}\" }},\n  \"command\": {{\n    \"name\": \"\\u004c\",\n    \"roles\": [ \"lender\" ],\n    \"party\": \"{other}\",\n    \"type\": \"Invite\"\n  }}\n}}\n",
        f.agent
    );
    let again = send(pretty).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.bytes, first.bytes, "the first answer, byte for byte");
    // Another request under the key: still refused.
    let changed = compact.replace("\"L\"", "\"M\"");
    let reused = send(changed).await;
    expect_member(&reused, 422, "code", "idempotency_key_reused");
    // The replay appended nothing.
    let state = c.get(&format!("/v1/payments/{}", f.payment), &key).await;
    assert_eq!(state.body["version"], first.body["version"]);
    srv.finish().await;
}

/// A body that is not JSON, sent with an `Idempotency-Key`, is fingerprinted by its
/// bytes and refused before anything is stored: the same bytes again get the same 400,
/// and the key is still free for the request the caller meant, which runs once and is
/// then replayed.
#[tokio::test]
async fn a_body_that_is_not_json_leaves_its_key_free() {
    let srv = common::sqlite().await;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    let path = format!("/v1/payments/{}/commands", f.payment);
    let send = |body: Vec<u8>| c.post_bytes_idem(&path, &key, "invite-after-typo", body);
    let before = c.get(&format!("/v1/payments/{}", f.payment), &key).await;
    let version = before.body["version"].as_u64().expect("version");
    // Cut short by a bad copy and paste: not JSON at all.
    let broken = br#"{"command": {"type": "Invite", "party": "#.to_vec();
    let first = send(broken.clone()).await;
    expect_member(&first, 400, "code", "malformed_json");
    let again = send(broken).await;
    expect_member(&again, 400, "code", "malformed_json");
    assert_eq!(again.body, first.body, "the same answer for the same bytes");
    assert!(
        again.headers.get("idempotent-replayed").is_none(),
        "nothing was stored to replay"
    );

    // The request meant, under the same key: run, not refused as a reuse of the key.
    let other = uuid::Uuid::new_v4();
    let meant = json!({"command": {"type": "Invite", "party": other, "roles": ["lender"], "name": "L"},
                       "actor": {"party": f.agent, "role": "listing_agent"}});
    let ran = send(meant.to_string().into_bytes()).await;
    assert_eq!(ran.status, 200, "{}", ran.body);
    assert!(ran.headers.get("idempotent-replayed").is_none());
    assert_eq!(ran.body["version"], version + 1, "{}", ran.body);
    assert_eq!(ran.body["events"][0]["event"]["type"], "ParticipantInvited");
    let replay = send(meant.to_string().into_bytes()).await;
    assert_eq!(replay.status, 200, "{}", replay.body);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(replay.bytes, ran.bytes, "the first answer, byte for byte");
    let state = c.get(&format!("/v1/payments/{}", f.payment), &key).await;
    assert_eq!(state.body["version"], version + 1, "one Invite applied");
    srv.finish().await;
}

/// A command sent without an `Idempotency-Key` gets a time-ordered (v7) command id and
/// its events time-ordered ids of the same millisecond, so the event-id index grows at
/// its end; a keyed command's ids come from the key (v8) and repeat on a retry.
#[tokio::test]
async fn unkeyed_commands_get_time_ordered_ids() {
    let srv = common::sqlite().await;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    let path = format!("/v1/payments/{}/commands", f.payment);
    let roles = ["brokerage", "brokerage", "lender", "buyer_agent"];
    let invite = |n: u8| {
        json!({"command": {"type": "Invite", "party": uuid::Uuid::from_bytes([n; 16]),
                           "roles": [roles[usize::from(n - 1)]], "name": "L"},
               "actor": {"party": f.agent, "role": "listing_agent"}})
    };
    let uuid_at = |v: &Value, field: &str| -> uuid::Uuid {
        v[field].as_str().expect(field).parse().expect("a uuid")
    };
    let mut previous: Option<uuid::Uuid> = None;
    for n in 1..=3 {
        let r = c.post(&path, &key, &invite(n)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let event = &r.body["events"][0]["event"];
        let (id, command) = (uuid_at(event, "id"), uuid_at(event, "causation"));
        assert_eq!(command.get_version_num(), 7, "{command}");
        assert_eq!(id.get_version_num(), 7, "{id}");
        assert_eq!(id.as_bytes()[..6], command.as_bytes()[..6]);
        if let Some(p) = previous {
            assert!(p.as_bytes()[..6] <= id.as_bytes()[..6], "{p} then {id}");
        }
        previous = Some(id);
    }
    let r = c.post_idem(&path, &key, "invite-4", &invite(4)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        uuid_at(&r.body["events"][0]["event"], "id").get_version_num(),
        8
    );
    srv.finish().await;
}

#[tokio::test]
async fn a_retried_command_of_many_events_is_answered_whole() {
    let srv = common::sqlite().await;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    // No approvals and 70 fees: the release request alone makes 70 FeeAssessed events.
    let mut policy = earnest_money_v2();
    policy["release"]["approvals"] = "none".into();
    policy["fees"] = (0..70)
        .map(|i| json!({"name": format!("fee-{i}"), "to_role": "escrow_holder", "bps": 1}))
        .collect();
    assert_eq!(c.post("/v1/policies", &key, &policy).await.status, 201);
    let f = open_and_join(c, &key).await.expect("open");
    fund(c, &key, &f).await.expect("fund");
    let p = &f.payment;
    let release = json!({"command": {"type": "RequestRelease", "request": f.request,
        "allocations": [{"party": f.seller, "amount": {"amount": "5000.00", "currency": "USD"}}]},
        "actor": {"party": f.escrow, "role": "escrow_holder"}});
    let path = format!("/v1/payments/{p}/commands");
    let first = c.post_idem(&path, &key, "release-1", &release).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let events = first.body["events"].as_array().expect("events").len();
    assert!(events > 70, "{events} events");
    let again = c.post_idem(&path, &key, "release-1", &release).await;
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!((again.status, &again.bytes), (200, &first.bytes));
    srv.finish().await;
}

/// What an `Idempotency-Key` keeps: a rejection by the payment's rules (a 403 action the
/// actor may not take, like a 422) is the command's answer and is replayed; a version
/// conflict (409) keeps nothing, so the same key runs the command once the caller has
/// caught up.
#[tokio::test]
async fn a_key_keeps_rule_rejections_but_not_version_conflicts() {
    let srv = common::sqlite().await;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    let path = format!("/v1/payments/{}/commands", f.payment);
    let as_agent = |command: Value| json!({"command": command, "actor": {"party": f.agent, "role": "listing_agent"}});

    // 403 not_permitted: replayed for the same body, and the key is spent.
    let refund = as_agent(json!({"type": "RequestRefund", "request": f.request}));
    let first = c.post_idem(&path, &key, "k-403", &refund).await;
    expect_member(&first, 403, "code", "not_permitted");
    let again = c.post_idem(&path, &key, "k-403", &refund).await;
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!((again.status, &again.bytes), (403, &first.bytes));
    let invite = as_agent(json!({"type": "Invite", "party": uuid::Uuid::new_v4(),
        "roles": ["lender"], "name": "l"}));
    let other = c.post_idem(&path, &key, "k-403", &invite).await;
    expect_member(&other, 422, "code", "idempotency_key_reused");

    // 409 version_conflict: nothing kept; the same key later runs the command.
    let version = c
        .get(&format!("/v1/payments/{}", f.payment), &key)
        .await
        .body["version"]
        .as_u64()
        .expect("version");
    let mut stale = invite.clone();
    stale["expected_version"] = (version - 1).into();
    let conflict = c.post_idem(&path, &key, "k-409", &stale).await;
    expect_member(&conflict, 409, "code", "version_conflict");
    let mut current = invite.clone();
    current["expected_version"] = version.into();
    let ran = c.post_idem(&path, &key, "k-409", &current).await;
    assert_eq!(ran.status, 200, "{}", ran.body);
    assert_eq!(ran.body["version"].as_u64(), Some(version + 1));

    // A participant token's own refusal (acting as another party) is the credential's,
    // not the payment's answer: nothing kept, and the same key then runs the buyer's
    // command.
    let token = c
        .post(
            &format!("/v1/payments/{}/tokens", f.payment),
            &key,
            &json!({"party": f.buyer, "ttl_seconds": 60}),
        )
        .await
        .body["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let terms = c
        .get(&format!("/v1/payments/{}", f.payment), &key)
        .await
        .body["terms_hash"]
        .clone();
    let agree = |party: &str| {
        json!({"command": {"type": "AgreeToTerms", "terms_hash": terms},
               "actor": {"party": party, "role": "buyer"}})
    };
    let as_seller = c
        .post_idem(&path, &token, "k-token", &agree(&f.seller))
        .await;
    expect_member(&as_seller, 403, "code", "not_permitted");
    let as_buyer = c
        .post_idem(&path, &token, "k-token", &agree(&f.buyer))
        .await;
    assert_eq!(as_buyer.status, 200, "{}", as_buyer.body);
    assert!(as_buyer.headers.get("idempotent-replayed").is_none());
    srv.finish().await;
}

/// A party whose roles do not count toward a request's quorum (the escrow holder, who
/// approves refunds here, on a release the buyer and seller approve) approving it is
/// refused for who is acting: 403 `not_an_approver`, like the core's other actor
/// errors, not a 422.
#[tokio::test]
async fn approving_without_counting_toward_the_quorum_is_403() {
    let srv = common::sqlite().await;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let mut policy = earnest_money_v2();
    policy["refund"]["approvals"] = json!({"all_of": ["buyer", "escrow_holder"]});
    let published = c.post("/v1/policies", &key, &policy).await;
    assert_eq!(published.status, 201, "{}", published.body);
    let f = open_and_join(c, &key).await.expect("open");
    fund(c, &key, &f).await.expect("fund");
    let r = c
        .command(
            &key,
            &f.payment,
            Some(&f.escrow),
            "escrow_holder",
            json!({"type": "RequestRelease", "request": f.request, "allocations": [
                {"party": f.seller, "amount": {"amount": "5000.00", "currency": "USD"}}]}),
        )
        .await
        .expect("request release");
    let hash = r.body["state"]["requests"][&f.request]["allocations_hash"].clone();
    let path = format!("/v1/payments/{}/commands", f.payment);
    let approve = json!({"command": {"type": "Approve", "request": f.request, "allocations_hash": hash},
                         "actor": {"party": f.escrow, "role": "escrow_holder"}});
    let refused = c.post_idem(&path, &key, "k-approve", &approve).await;
    expect_member(&refused, 403, "code", "not_an_approver");
    // The payment's answer to the command: replayed for the same key.
    let again = c.post_idem(&path, &key, "k-approve", &approve).await;
    assert_eq!((again.status, &again.bytes), (403, &refused.bytes));
    assert_eq!(again.headers["idempotent-replayed"], "true");
    srv.finish().await;
}

#[tokio::test]
async fn version_conflict_is_409_with_current_version() {
    let srv = common::sqlite().await;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    let state = c.get(&format!("/v1/payments/{}", f.payment), &key).await;
    let version = state.body["version"].as_u64().expect("version");
    let path = format!("/v1/payments/{}/commands", f.payment);
    let cmd = |v: u64| {
        json!({"command": {"type": "Invite", "party": uuid::Uuid::new_v4(), "roles": ["brokerage"]},
                              "actor": {"party": f.agent, "role": "listing_agent"}, "expected_version": v})
    };
    let stale = c.post(&path, &key, &cmd(version - 1)).await;
    assert_eq!(stale.status, 409, "{}", stale.body);
    assert_eq!(stale.body["code"], "version_conflict");
    assert_eq!(stale.body["current_version"], version);
    let ok = c.post(&path, &key, &cmd(version)).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    // If-Match does the same.
    let body = json!({"command": {"type": "Invite", "party": uuid::Uuid::new_v4(), "roles": ["brokerage"]},
                      "actor": {"party": f.agent, "role": "listing_agent"}});
    let r = c
        .raw(
            "POST",
            &path,
            Some(&key),
            &[("if-match", &format!("\"{version}\""))],
            Some(body.to_string().into_bytes()),
        )
        .await
        .expect("POST");
    assert_eq!(r.status, 409);
    assert_eq!(r.body["current_version"], version + 1);
    srv.finish().await;
}

#[tokio::test]
async fn a_rail_notice_before_its_transfer_is_held_and_applied() {
    // The escrow holder's bank reports the wire before the buyer records it: 200 and
    // held (not 422), then the buyer's SubmitFunding settles it in the same answer.
    let srv = common::sqlite().await;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    let p = &f.payment;
    let terms = c.get(&format!("/v1/payments/{p}"), &key).await.body["terms_hash"]
        .as_str()
        .expect("terms")
        .to_owned();
    for (party, role) in [(&f.buyer, "buyer"), (&f.seller, "seller")] {
        c.command(
            &key,
            p,
            Some(party),
            role,
            json!({"type": "AgreeToTerms", "terms_hash": terms}),
        )
        .await
        .expect("agree");
    }
    let held = c
        .command(
            &key,
            p,
            None,
            "rail",
            json!({"type": "RailNotice", "rail_ref": "WIRE-EARLY", "notice": {"kind": "settled"}}),
        )
        .await
        .expect("held, not refused");
    let types = |b: &Value| -> Vec<String> {
        b["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter_map(|r| r["event"]["type"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(types(&held.body), ["RailNoticeHeld"]);
    assert_eq!(
        held.body["state"]["held_notices"]["WIRE-EARLY"][0]["kind"],
        "settled"
    );
    let funded = c
        .command(
            &key,
            p,
            Some(&f.buyer),
            "buyer",
            json!({"type": "SubmitFunding", "amount": {"amount": "5000.00", "currency": "USD"},
                   "rail": "wire", "rail_ref": "WIRE-EARLY"}),
        )
        .await
        .expect("fund");
    assert_eq!(
        types(&funded.body),
        ["FundingSubmitted", "FundingSettled", "FundsAvailable"]
    );
    assert_eq!(funded.body["state"]["status"], "Held");
    assert_eq!(funded.body["events"][1]["event"]["actor"]["role"], "rail");
    srv.finish().await;
}

#[tokio::test]
async fn tenants_never_see_each_other() {
    let srv = common::sqlite().await;
    let c = &srv.client;
    let a = c.tenant(ADMIN, "a").await.expect("tenant a");
    let b = c.tenant(ADMIN, "b").await.expect("tenant b");
    let f = open_and_join(c, &a).await.expect("open");
    let p = &f.payment;
    for path in [
        format!("/v1/payments/{p}"),
        format!("/v1/payments/{p}/events"),
        format!("/v1/payments/{p}/head"),
        format!("/v1/payments/{p}/stream"),
        format!("/v1/payments/{p}/balances"),
    ] {
        let r = c.get(&path, &b).await;
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        assert_eq!(r.body["code"], "unknown_payment");
    }
    let r = c
        .post(
            &format!("/v1/payments/{p}/commands"),
            &b,
            &json!({"command": {"type": "Join"}, "actor": {"party": f.buyer, "role": "buyer"}}),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = c
        .post(
            &format!("/v1/payments/{p}/tokens"),
            &b,
            &json!({"party": f.buyer}),
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(c.get("/v1/payments", &b).await.body["payments"], json!([]));
    assert_eq!(c.get("/v1/events", &b).await.body["events"], json!([]));
    assert_eq!(c.get("/v1/policies/earnest-money", &b).await.status, 404);
    assert_eq!(c.get("/v1/policies", &b).await.body["policies"], json!([]));
    // Another tenant's party has no inbox here: the same 404 as a stranger's.
    let inbox = c.get(&format!("/v1/parties/{}/inbox", f.buyer), &b).await;
    assert_eq!(
        (inbox.status, inbox.body["code"].as_str()),
        (404, Some("unknown_party"))
    );
    // Opening a payment under a taken id gets the same answer whoever holds it.
    let open = json!({
        "payment_id": p,
        "policy": "earnest-money",
        "amount": {"amount": "5000.00", "currency": "USD"},
        "initiator": {"party": f.agent, "roles": ["listing_agent"]}
    });

    c.post(
        "/v1/policies",
        &b,
        &serde_json::from_str::<Value>(common::scenario::EARNEST_MONEY).expect("policy"),
    )
    .await;
    let own = c.post("/v1/payments", &a, &open).await;
    let foreign = c.post("/v1/payments", &b, &open).await;
    assert_eq!((own.status, &own.body), (409, &foreign.body));
    assert_eq!(own.body["code"], "payment_exists");
    srv.finish().await;
}

/// Invites a lender (who sees only part of the payment) as the listing agent.
async fn invite_lender(c: &Client, key: &str, f: &common::scenario::Flow) -> String {
    let lender = uuid::Uuid::new_v4().to_string();
    c.command(
        key,
        &f.payment,
        Some(&f.agent),
        "listing_agent",
        json!({"type": "Invite", "party": lender, "roles": ["lender"], "name": "Big Bank"}),
    )
    .await
    .expect("invite");
    lender
}

/// A token's command without an actor acts in a role the party still holds: a party
/// removed and invited again in fewer roles keeps its token (minted for both), and its
/// `Join` acts as the role it holds now, not the first the token names.
#[tokio::test]
async fn a_tokens_default_role_is_one_the_party_still_holds() {
    let srv = common::sqlite().await;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    let p = f.payment.as_str();
    let party = uuid::Uuid::new_v4().to_string();
    let agent = |cmd: Value| c.command(&key, p, Some(&f.agent), "listing_agent", cmd);
    agent(json!({"type": "Invite", "party": party, "roles": ["buyer_agent", "lender"], "name": "Pat"}))
        .await
        .expect("invite");
    let token = token_for(c, &key, p, &party).await;
    agent(json!({"type": "Remove", "party": party, "reason": "wrong roles"}))
        .await
        .expect("remove");
    agent(json!({"type": "Invite", "party": party, "roles": ["lender"], "name": "Pat"}))
        .await
        .expect("invite again");
    let r = c
        .post_idem(
            &format!("/v1/payments/{p}/commands"),
            &token,
            "join-1",
            &json!({"command": {"type": "Join"}}),
        )
        .await;
    assert!(
        r.status == 200 || r.status == 201,
        "{} {}",
        r.status,
        r.body
    );
    // (The lender's view shows no joins: the tenant reads what was recorded.)
    let v = r.body["version"].as_u64().expect("version");
    let page = c
        .get(&format!("/v1/payments/{p}/events?after={}", v - 1), &key)
        .await;
    let joined = &page.body["events"][0]["event"];
    assert_eq!(joined["type"], "ParticipantJoined", "{}", page.body);
    assert_eq!(joined["actor"]["role"], "lender", "{}", page.body);
    srv.finish().await;
}

/// Participant tokens on either engine (a participant's idempotency key is stored
/// scoped to it: PostgreSQL's text refused the NUL that once parted the two).
async fn participant_tokens(srv: &Server) {
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    let p = &f.payment;
    let lender = invite_lender(c, &key, &f).await;
    c.command(&key, p, Some(&lender), "lender", json!({"type": "Join"}))
        .await
        .expect("join");
    fund_and_release(c, &key, &f).await.expect("flow");

    let t = c
        .post(
            &format!("/v1/payments/{p}/tokens"),
            &key,
            &json!({"party": lender, "ttl_seconds": 60}),
        )
        .await;
    assert_eq!(t.status, 201, "{}", t.body);
    let token = t.body["token"].as_str().expect("token").to_owned();

    // The lender's view: no amounts, no contacts, only the events it may see.
    let s = c.get(&format!("/v1/payments/{p}"), &token).await;
    assert_eq!(s.status, 200, "{}", s.body);
    assert_eq!(s.body["amount"], Value::Null);
    assert!(s.body["participants"]
        .as_object()
        .expect("participants")
        .values()
        .all(|p| p.get("name").is_none()));
    let ev = c.get(&format!("/v1/payments/{p}/events"), &token).await;
    let types: Vec<&str> = ev.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["event"]["type"].as_str())
        .collect();
    assert!(
        types.iter().all(|t| [
            "PaymentInitiated",
            "FundsAvailable",
            "PaymentCancelled",
            "PaymentExpired"
        ]
        .contains(t)),
        "{types:?}"
    );
    assert!(types.contains(&"FundsAvailable"));
    assert!(
        !ev.bytes.windows(6).any(|w| w == b"5000.0"),
        "no amounts leak into the lender's history"
    );
    // Nor the head (the hash of the last event, amounts and all: likely amounts could
    // be tried against it); the view's answers are signed instead.
    let head = c.get(&format!("/v1/payments/{p}/head"), &token).await;
    expect_member(&head, 403, "code", "head_not_visible");
    assert!(s.headers.contains_key("trustfold-signature"));
    assert!(ev.headers.contains_key("trustfold-signature"));
    let full = c.get(&format!("/v1/payments/{p}/head"), &key).await;
    assert_eq!(full.status, 200, "{}", full.body);

    // Freshness: with a `nonce`, the signature covers it, so an answer given to an
    // earlier request (another nonce, or none) does not verify for this one.
    let pk: PublicKey = c
        .raw("GET", "/v1/server-key", None, &[], None)
        .await
        .expect("key")
        .body["public_key"]
        .as_str()
        .expect("hex")
        .parse()
        .expect("key");
    let pay = trustfold_core::id::PaymentId(p.parse().expect("uuid"));
    let nonce = "0123456789abcdef0123456789abcdef";
    for (path, what, auth) in [
        (format!("?nonce={nonce}"), format!("?nonce={nonce}"), &token),
        (
            format!("/events?after=3&limit=5&nonce={nonce}"),
            format!("/events?after=3&nonce={nonce}"),
            &token,
        ),
        (
            format!("/head?nonce={nonce}"),
            format!("/head?nonce={nonce}"),
            &key,
        ),
    ] {
        let r = c.get(&format!("/v1/payments/{p}{path}"), auth).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let sig = r
            .headers
            .get("trustfold-signature")
            .and_then(|v| v.to_str().ok())
            .expect("signed")
            .to_owned();
        SignedResponse::verify(&pk, pay, &what, auth, &r.bytes, &sig)
            .expect("signed with the nonce");
        // Signed for this request's credential: not another's.
        assert!(SignedResponse::verify(&pk, pay, &what, "tft_other", &r.bytes, &sig).is_err());
        let stale = what.replace(nonce, "fedcba9876543210fedcba9876543210");
        let e =
            SignedResponse::verify(&pk, pay, &stale, auth, &r.bytes, &sig).expect_err("replayed");
        assert_eq!(e.code(), "bad_signature");
        let bare = what
            .replace(&format!("?nonce={nonce}"), "")
            .replace(&format!("&nonce={nonce}"), "");
        assert!(SignedResponse::verify(&pk, pay, &bare, auth, &r.bytes, &sig).is_err());
    }
    let r = c
        .get(&format!("/v1/payments/{p}?nonce=short"), &token)
        .await;
    expect_member(&r, 400, "code", "invalid_parameter");
    assert_eq!(r.body["field"], "nonce", "{}", r.body);

    // It may not act as anyone else, nor in a role it does not hold, nor see the tenant's data.
    let r = c.post(&format!("/v1/payments/{p}/commands"), &token,
        &json!({"command": {"type": "OpenDispute", "dispute": uuid::Uuid::new_v4()}, "actor": {"party": f.buyer, "role": "buyer"}})).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (403, Some("not_permitted"))
    );
    assert_eq!(c.get("/v1/events", &token).await.status, 403);
    assert_eq!(c.get("/v1/payments", &token).await.status, 403);
    // Balances are every party's accounts: the tenant's API key reads them, a token on
    // its own payment is told so (not that it may only read its own payment).
    let b = c.get(&format!("/v1/payments/{p}/balances"), &token).await;
    expect_member(&b, 403, "code", "balances_not_visible");
    assert!(
        b.body["detail"].as_str().unwrap_or("").contains("API key"),
        "{}",
        b.body
    );
    let b = c.get(&format!("/v1/payments/{p}/balances"), &key).await;
    assert_eq!(b.status, 200, "{}", b.body);
    let other = open_and_join(c, &key).await.expect("another payment");
    assert_eq!(
        c.get(&format!("/v1/payments/{}", other.payment), &token)
            .await
            .status,
        404
    );

    // A buyer's token acts as the buyer (the core still judges the role's permissions).
    let bt = c
        .post(
            &format!("/v1/payments/{}/tokens", other.payment),
            &key,
            &json!({"party": other.buyer}),
        )
        .await;
    let bt = bt.body["token"].as_str().expect("token").to_owned();
    let st = c.get(&format!("/v1/payments/{}", other.payment), &bt).await;
    let terms = st.body["terms_hash"].as_str().expect("terms").to_owned();
    let agree = json!({"command": {"type": "AgreeToTerms", "terms_hash": terms}});
    let path = format!("/v1/payments/{}/commands", other.payment);
    let r = c.post_idem(&path, &bt, "agree-1", &agree).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["events"][0]["actor"]["party"], other.buyer.as_str());
    // Its replay (the participant's view, rebuilt from the stored events) is the same
    // response byte for byte.
    let again = c.post_idem(&path, &bt, "agree-1", &agree).await;
    assert_eq!((again.status, &again.bytes), (200, &r.bytes));
    assert_eq!(again.headers["idempotent-replayed"], "true");
    // The buyer's key is the buyer's: the tenant's own key of the same name is another.
    let invite = json!({"command": {"type": "Invite", "party": uuid::Uuid::new_v4(), "roles": ["lender"]},
        "actor": {"party": other.agent, "role": "listing_agent"}});
    let r = c.post_idem(&path, &key, "agree-1", &invite).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.headers.get("idempotent-replayed").is_none());

    // Tampered and wrong tokens are 401.
    let mut bad = token.clone();
    bad.pop();
    assert_eq!(c.get(&format!("/v1/payments/{p}"), &bad).await.status, 401);
}

#[tokio::test]
async fn participant_tokens_see_the_policy_view_and_act_as_their_party_sqlite() {
    let srv = common::sqlite().await;
    participant_tokens(&srv).await;
    srv.finish().await;
}

#[tokio::test]
async fn participant_tokens_see_the_policy_view_and_act_as_their_party_postgres() {
    let Some(srv) = common::postgres().await else {
        return;
    };
    participant_tokens(&srv).await;
    srv.finish().await;
}

#[tokio::test]
async fn a_removed_participants_token_reads_nothing_more() {
    let srv = common::sqlite().await;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    let p = &f.payment;
    let lender = invite_lender(c, &key, &f).await;
    let token = token_for(c, &key, p, &lender).await;
    let reads = [
        format!("/v1/payments/{p}"),
        format!("/v1/payments/{p}/events"),
        format!("/v1/payments/{p}/head"),
        format!("/v1/parties/{lender}/inbox"),
    ];
    for path in &reads {
        // The lender's view hides amounts: no head (`head_not_visible`), the rest reads.
        let want = if path.ends_with("/head") { 403 } else { 200 };
        assert_eq!(c.get(path, &token).await.status, want, "{path}");
    }
    let url = format!("{}/v1/payments/{p}/stream?access_token={token}", c.base);
    let mut live = c.http.get(&url).send().await.expect("stream");
    assert_eq!(live.status(), 200);
    let mut buf = String::new();
    sse_events(&mut live, 1, &mut buf).await;

    c.command(
        &key,
        p,
        Some(&f.agent),
        "listing_agent",
        json!({"type": "Remove", "party": lender}),
    )
    .await
    .expect("remove");
    for path in &reads {
        let r = c.get(path, &token).await;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (403, Some("participant_removed")),
            "{path}: {}",
            r.body
        );
    }
    let r = c.http.get(&url).send().await.expect("stream");
    assert_eq!(r.status(), 403);
    // Nor does it act: the same code for a command (not the core's
    // `unknown_participant`, which would say it never was one), keyed or not.
    let cmds = format!("/v1/payments/{p}/commands");
    let join = json!({"command": {"type": "Join"}});
    for r in [
        c.post(&cmds, &token, &join).await,
        c.post_idem(&cmds, &token, "join-after-removal", &join)
            .await,
    ] {
        expect_member(&r, 403, "code", "participant_removed");
    }
    // And it gets no new token: 403 `participant_removed`, as its tokens get.
    let minted = c
        .post(
            &format!("/v1/payments/{p}/tokens"),
            &key,
            &json!({"party": lender}),
        )
        .await;
    expect_member(&minted, 403, "code", "participant_removed");
    // The stream that was open ends instead of carrying on.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = live.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the removed party's live stream ended");
    // The tenant still reads everything.
    assert_eq!(c.get(&format!("/v1/payments/{p}"), &key).await.status, 200);
    srv.finish().await;
}

/// A participant whose view hides disputes is not told of one by a rule's refusal: the
/// message names the status its view shows, and a refusal because of the dispute reads
/// as `invalid_state`. The tenant reads the payment's own.
#[tokio::test]
async fn refusals_tell_a_participant_no_more_than_its_view() {
    let srv = common::sqlite().await;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    fund(c, &key, &f).await.expect("fund");
    let p = f.payment.as_str();
    let lender = invite_lender(c, &key, &f).await;
    c.command(&key, p, Some(&lender), "lender", json!({"type": "Join"}))
        .await
        .expect("lender joins");
    buyer_disputes(c, &key, &f).await;
    let token = token_for(c, &key, p, &lender).await;
    let seen = c.get(&format!("/v1/payments/{p}"), &token).await;
    assert_eq!(seen.status, 200, "{}", seen.body);
    let shown = seen.body["status"].as_str().expect("status").to_owned();
    assert_ne!(shown, "Disputed");
    let cmds = format!("/v1/payments/{p}/commands");
    let r = c
        .post(&cmds, &token, &json!({"command": {"type": "Join"}}))
        .await;
    expect_member(&r, 422, "code", "already_joined");
    let message = r.body["detail"].as_str().unwrap_or_default().to_owned()
        + r.body["message"].as_str().unwrap_or_default();
    assert!(!message.contains("Disputed"), "{}", r.body);
    assert!(
        message.contains(&format!("payment is {shown}")),
        "{}",
        r.body
    );
    // The tenant (and a party that sees disputes) reads the payment's own status.
    let r = c
        .post(
            &cmds,
            &key,
            &json!({"command": {"type": "Join"}, "actor": {"party": lender, "role": "lender"}}),
        )
        .await;
    expect_member(&r, 422, "code", "already_joined");
    assert!(
        r.body.to_string().contains("payment is Disputed"),
        "{}",
        r.body
    );
    srv.finish().await;
}

/// The buyer opens a dispute over `f`'s payment ("inspection").
async fn buyer_disputes(c: &Client, key: &str, f: &common::scenario::Flow) {
    c.command(
        key,
        &f.payment,
        Some(&f.buyer),
        "buyer",
        json!({"type": "OpenDispute", "dispute": uuid::Uuid::new_v4(), "reason": "inspection"}),
    )
    .await
    .expect("dispute");
}

/// A refusal because of a dispute, to a participant whose view hides disputes, reads
/// `invalid_state` with the status its view shows, not `payment_disputed`.
#[tokio::test]
async fn a_dispute_hidden_from_the_view_is_not_named_by_a_refusal() {
    let srv = common::sqlite().await;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let mut policy = earnest_money_v2();
    policy["visibility"]["listing_agent"]["hide"] = json!(["bank_details", "disputes"]);
    let published = c.post("/v1/policies", &key, &policy).await;
    assert_eq!(published.status, 201, "{}", published.body);
    let f = open_and_join(c, &key).await.expect("open");
    fund(c, &key, &f).await.expect("fund");
    let p = f.payment.as_str();
    buyer_disputes(c, &key, &f).await;
    let release = json!({"type": "RequestRelease", "request": uuid::Uuid::new_v4(),
        "allocations": [{"party": f.seller, "amount": {"amount": "5000.00", "currency": "USD"}}]});
    let cmds = format!("/v1/payments/{p}/commands");
    // The tenant acting for the listing agent reads the rule's own code…
    let r = c
        .post(
            &cmds,
            &key,
            &json!({"command": release, "actor": {"party": f.agent, "role": "listing_agent"}}),
        )
        .await;
    expect_member(&r, 422, "code", "payment_disputed");
    // …the listing agent's own token a refusal that names no dispute.
    let token = token_for(c, &key, p, &f.agent).await;
    let r = c.post(&cmds, &token, &json!({"command": release})).await;
    expect_member(&r, 422, "code", "invalid_state");
    let text = r.body.to_string().to_ascii_lowercase();
    assert!(!text.contains("disput"), "{}", r.body);
    assert!(text.contains("payment is held"), "{}", r.body);
    srv.finish().await;
}

#[tokio::test]
async fn a_participants_inbox_holds_only_what_its_roles_may_see() {
    let srv = common::sqlite().await;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    // A policy that notifies lenders of release requests, which their view hides.
    let mut policy = earnest_money_v2();
    policy["notifications"]["ReleaseRequested"] = json!(["buyer", "seller", "lender"]);
    assert_eq!(c.post("/v1/policies", &key, &policy).await.status, 201);
    let f = open_and_join(c, &key).await.expect("open");
    let p = &f.payment;
    let lender = invite_lender(c, &key, &f).await;
    c.command(&key, p, Some(&lender), "lender", json!({"type": "Join"}))
        .await
        .expect("join");
    fund_and_release(c, &key, &f).await.expect("flow");
    let path = format!("/v1/parties/{lender}/inbox");
    // The tenant sees every notice the policy made for the lender…
    let all = notice_types(&c.get(&path, &key).await);
    assert!(all.iter().any(|t| t == "ReleaseRequested"), "{all:?}");
    assert!(all.iter().any(|t| t == "FundsAvailable"), "{all:?}");
    // …the lender's own token only those of events its view shows.
    let token = token_for(c, &key, p, &lender).await;
    let r = c.get(&path, &token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mine = notice_types(&r);
    assert!(mine.iter().any(|t| t == "FundsAvailable"), "{mine:?}");
    assert!(!mine.iter().any(|t| t == "ReleaseRequested"), "{mine:?}");
    // No global positions for a token (they count every tenant's events): its cursor
    // is the payment's sequence, and paging by it gives the same notices.
    let notices = r.body["notifications"].as_array().expect("notifications");
    assert!(
        notices.iter().all(|n| n.get("position").is_none()),
        "{}",
        r.body
    );
    let last = notices.last().expect("a notice")["seq"]
        .as_u64()
        .expect("seq");
    // (Past the last shown: notices of events hidden from it are passed over.)
    let next = r.body["next"].as_u64().expect("next");
    assert!(next >= last && next < 100, "{}", r.body);
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = c
            .get(&format!("{path}?after={after}&limit=1"), &token)
            .await;
        assert_eq!(page.status, 200, "{}", page.body);
        paged.extend(notice_types(&page));
        after = page.body["next"].as_u64().expect("next");
        if page.body["has_more"] != true {
            break;
        }
    }
    assert_eq!(paged, mine);
    // A cursor past the payment's last event (a global position kept from before) is
    // refused, not answered with empty pages for ever.
    let r = c.get(&format!("{path}?after=100000"), &token).await;
    expect_member(&r, 400, "code", "invalid_parameter");
    // The tenant's key keeps positions.
    let tenant_view = c.get(&path, &key).await;
    assert!(tenant_view.body["notifications"][0]["position"].is_u64());
    srv.finish().await;
}

/// Events stored under an old schema version (a golden vector's v1 invitations) are
/// served byte for byte, so the chain still verifies, and read upcast: the read model's
/// state is the one the core folds from them.
#[tokio::test]
async fn stored_events_of_an_old_schema_are_upcast_on_read() {
    let srv = common::sqlite().await;
    let c = &srv.client;
    let t = c.post("/v1/tenants", ADMIN, &json!({"name": "t"})).await;
    assert_eq!(t.status, 201, "{}", t.body);
    let key = t.body["api_key"].as_str().expect("key").to_owned();
    let tenant: uuid::Uuid = t.body["tenant_id"]
        .as_str()
        .expect("tenant")
        .parse()
        .expect("uuid");
    let vectors = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/tests/vectors/");
    let text = std::fs::read(format!(
        "{vectors}upcast_v1_participant_invited.history.json"
    ))
    .expect("vector");
    let expected: Value = serde_json::from_slice(
        &std::fs::read(format!(
            "{vectors}upcast_v1_participant_invited.expected.json"
        ))
        .expect("vector"),
    )
    .expect("json");
    let records = parse(&text).expect("records");
    let mut events = Vec::new();
    let mut stream = None;
    for r in &records {
        let env = trustfold_core::envelope::Envelope::from_json(r.event.get().as_bytes())
            .expect("envelope");
        stream = Some(env.stream.0);
        events.push(trustfold_server::NewEvent {
            event_id: env.id.uuid(),
            event_type: env.event_type().name().to_owned(),
            schema_version: env.schema_version,
            body: r.event.get().as_bytes().to_vec(),
            hash: r.hash.0,
        });
    }
    assert!(
        events
            .iter()
            .any(|e| e.schema_version == 1 && e.event_type == "ParticipantInvited"),
        "the vector holds v1 invitations"
    );
    let stream = stream.expect("events");
    // Stored by another instance of the store on the server's file, as an import (or
    // an older server version) would have.
    let store = trustfold_server::SqliteStore::open(&srv.database)
        .await
        .expect("store");
    trustfold_server::EventStore::append(&store, tenant, stream, 0, &events)
        .await
        .expect("append");

    let served = history(c, &key, &stream.to_string(), 4)
        .await
        .expect("history");
    let served_records = parse(&served).expect("served records");
    assert_eq!(served_records.len(), records.len());
    for (a, b) in served_records.iter().zip(&records) {
        assert_eq!(a.event.get(), b.event.get(), "served byte for byte");
    }
    let state = replay(&served).expect("the served history verifies and folds");
    let state: Value = serde_json::from_slice(&state.to_json()).expect("state json");
    assert_eq!(state, expected["state"]);
    let read_model = c.get(&format!("/v1/payments/{stream}"), &key).await;
    assert_eq!(read_model.status, 200, "{}", read_model.body);
    assert_eq!(
        read_model.body, expected["state"],
        "the read model's state is upcast"
    );
    srv.finish().await;
}

/// A server on a SQLite file that grants CORS to `https://shop.example`, a tenant's key
/// and a payment opened and joined.
async fn with_cors_origin() -> (
    tempfile::TempDir,
    trustfold_server::app::Running,
    Client,
    String,
    common::scenario::Flow,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let database = dir.path().join("trustfold.db").display().to_string();
    let mut config = common::config(&database);
    config.cors_origins = vec!["https://shop.example".into()];
    let running = common::serve(config).await;
    let c = Client::new(format!("http://{}", running.addr));
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(&c, &key).await.expect("open");
    (dir, running, c, key, f)
}

/// CORS: a widget on an allowed origin may call the server (preflight answered, the
/// answer readable with its ETag); a page on any other origin gets no CORS grant.
#[tokio::test]
async fn cors_grants_the_configured_origins_only() {
    let (_dir, running, c, key, f) = with_cors_origin().await;
    let path = format!("/v1/payments/{}/commands", f.payment);
    async fn preflight(c: &Client, path: &str, origin: &str) -> common::scenario::Reply {
        let headers = [
            ("origin", origin),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization,content-type,idempotency-key,if-match",
            ),
        ];
        c.raw("OPTIONS", path, None, &headers, None)
            .await
            .expect("preflight")
    }
    async fn read(c: &Client, path: &str, key: &str, origin: &str) -> common::scenario::Reply {
        c.raw("GET", path, Some(key), &[("origin", origin)], None)
            .await
            .expect("read")
    }
    let ok = preflight(&c, &path, "https://shop.example").await;
    assert!(ok.status < 300, "{}", ok.status);
    assert_eq!(
        ok.headers["access-control-allow-origin"],
        "https://shop.example"
    );
    let allowed = ok.headers["access-control-allow-headers"]
        .to_str()
        .expect("headers")
        .to_ascii_lowercase();
    for h in [
        "authorization",
        "content-type",
        "idempotency-key",
        "if-match",
    ] {
        assert!(allowed.contains(h), "{h} in {allowed}");
    }
    let other = preflight(&c, &path, "https://evil.example").await;
    assert!(other.headers.get("access-control-allow-origin").is_none());
    // Every method the API has: DELETE too (webhooks, held rail notices).
    let methods = ok.headers["access-control-allow-methods"]
        .to_str()
        .expect("methods")
        .to_ascii_uppercase();
    for m in ["GET", "POST", "DELETE"] {
        assert!(methods.contains(m), "{m} in {methods}");
    }
    // A read from the allowed origin can see its ETag; from another, no grant.
    let state = format!("/v1/payments/{}", f.payment);
    let r = read(&c, &state, &key, "https://shop.example").await;
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://shop.example"
    );
    assert!(r.headers["access-control-expose-headers"]
        .to_str()
        .expect("expose")
        .to_ascii_lowercase()
        .contains("etag"));
    let r = read(&c, &state, &key, "https://evil.example").await;
    assert!(r.headers.get("access-control-allow-origin").is_none());
    running.shutdown().await.expect("shutdown");
}

/// Every 401 carries the RFC 6750 challenge: `WWW-Authenticate: Bearer …`, with
/// `error="invalid_token"` when a credential was sent but is no good (a guessed key, an
/// expired or a revoked token), none when no credential was sent; and a page on an
/// allowed CORS origin may read it.
#[tokio::test]
async fn a_401_carries_a_bearer_challenge() {
    let (_dir, running, c, key, f) = with_cors_origin().await;
    let payment = format!("/v1/payments/{}", f.payment);
    fn challenge(r: &common::scenario::Reply) -> String {
        assert_eq!(r.status, 401, "{}", r.body);
        r.headers
            .get("www-authenticate")
            .unwrap_or_else(|| panic!("no WWW-Authenticate on {}", r.body))
            .to_str()
            .expect("text")
            .to_owned()
    }
    let none = c.raw("GET", &payment, None, &[], None).await.expect("GET");
    let ch = challenge(&none);
    assert!(ch.starts_with("Bearer"), "{ch}");
    assert!(!ch.contains("error="), "no credential, no error: {ch}");
    let guessed = format!("tfk_{}_{}", uuid::Uuid::new_v4().simple(), "A".repeat(43));
    let ch = challenge(&c.get(&payment, &guessed).await);
    assert!(
        ch.starts_with("Bearer") && ch.contains("error=\"invalid_token\""),
        "{ch}"
    );
    let ch = challenge(
        &c.post("/v1/tenants", "not-the-admin", &json!({"name": "x"}))
            .await,
    );
    assert!(ch.contains("error=\"invalid_token\""), "{ch}");
    let short = c.participant_token(&key, &f.payment, &f.buyer, 1).await;
    let by = std::time::Instant::now() + Duration::from_secs(10);
    let expired = loop {
        let r = c.get(&payment, &short).await;
        if r.status != 200 {
            break r;
        }
        assert!(std::time::Instant::now() < by, "the token of 1 s expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    expect_member(&expired, 401, "code", "token_expired");
    let ch = challenge(&expired);
    assert!(
        ch.starts_with("Bearer") && ch.contains("error=\"invalid_token\""),
        "{ch}"
    );
    let token = c.participant_token(&key, &f.payment, &f.seller, 600).await;
    let r = c
        .post(
            &format!("{payment}/tokens/revoke"),
            &key,
            &json!({"party": f.seller}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let revoked = c.get(&payment, &token).await;
    expect_member(&revoked, 401, "code", "token_revoked");
    assert!(challenge(&revoked).contains("error=\"invalid_token\""));
    // Readable by a page on an allowed origin.
    let r = c
        .raw(
            "GET",
            &payment,
            None,
            &[("origin", "https://shop.example")],
            None,
        )
        .await
        .expect("GET");
    challenge(&r);
    assert!(r.headers["access-control-expose-headers"]
        .to_str()
        .expect("expose")
        .to_ascii_lowercase()
        .contains("www-authenticate"));
    assert!(c.undocumented().is_empty(), "{:?}", c.undocumented());
    running.shutdown().await.expect("shutdown");
}

/// A body that stops arriving is the client's doing: 408 `request_timeout` after half
/// the request deadline, not the 503 `database_unavailable` of the deadline itself.
#[tokio::test]
async fn a_body_that_stops_arriving_is_a_408() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().expect("temp dir");
    let database = dir.path().join("trustfold.db").display().to_string();
    let mut config = common::config(&database);
    config.http.request_timeout = Duration::from_secs(4);
    let running = common::serve(config).await;
    let c = Client::new(format!("http://{}", running.addr));
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let mut tcp = tokio::net::TcpStream::connect(running.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/policies HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{"
    );
    tcp.write_all(head.as_bytes()).await.expect("send");
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("}") {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .expect("an answer within 10 s")
            .expect("read");
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"code\":\"request_timeout\""), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "before the request deadline: {:?}",
        started.elapsed()
    );
    // The server is fine, and kept nothing.
    let r = c.get("/v1/policies", &key).await;
    assert_eq!(r.status, 200, "{}", r.body);
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_participants_stream_ends_when_its_token_expires() {
    let srv = common::sqlite().await;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    let p = &f.payment;
    let t = c
        .post(
            &format!("/v1/payments/{p}/tokens"),
            &key,
            &json!({"party": f.buyer, "ttl_seconds": 2}),
        )
        .await;
    let token = t.body["token"].as_str().expect("token").to_owned();
    let url = format!("{}/v1/payments/{p}/stream?access_token={token}", c.base);
    let mut live = c.http.get(&url).send().await.expect("stream");
    assert_eq!(live.status(), 200);
    let mut buf = String::new();
    sse_events(&mut live, 1, &mut buf).await;
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        while let Ok(Some(_)) = live.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream of an expired token ended");
    let r = c.http.get(&url).send().await.expect("stream");
    assert_eq!(r.status(), 401, "and it cannot be opened again");
    let problem: serde_json::Value = r.json().await.expect("problem");
    assert_eq!(problem["code"], "token_expired", "{problem}");
    // Its reads say the same (a tampered token is `unauthorized`).
    let r = c
        .http
        .get(format!("{}/v1/payments/{p}", c.base))
        .bearer_auth(&token)
        .send()
        .await
        .expect("read");
    let problem: serde_json::Value = r.json().await.expect("problem");
    assert_eq!(problem["code"], "token_expired", "{problem}");
    let r = c
        .http
        .get(format!("{}/v1/payments/{p}", c.base))
        .bearer_auth(format!("{token}x"))
        .send()
        .await
        .expect("read");
    let problem: serde_json::Value = r.json().await.expect("problem");
    assert_eq!(problem["code"], "unauthorized", "{problem}");
    srv.finish().await;
}

#[tokio::test]
async fn bad_input_gets_4xx_with_a_code_never_5xx() {
    let srv = common::sqlite().await;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    let cmds = format!("/v1/payments/{}/commands", f.payment);
    let unknown = format!("/v1/payments/{}/commands", uuid::Uuid::new_v4());
    let big = vec![b' '; 70 * 1024];
    let actor = json!({"party": f.agent, "role": "listing_agent"});
    // The payment's id with one letter (its last) in upper case.
    let mixed: String = {
        let last = f
            .payment
            .rfind(|ch: char| ch.is_ascii_alphabetic())
            .expect("a hex letter");
        let mut id = f.payment.clone();
        id.replace_range(last..=last, &f.payment[last..=last].to_uppercase());
        id
    };
    type Case<'a> = (
        &'a str,
        &'a str,
        String,
        Option<&'a str>,
        Option<Vec<u8>>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        ("bad json", "POST", cmds.clone(), Some(&key), Some(b"{\"command\":".to_vec()), 400, "malformed_json"),
        ("not an object", "POST", cmds.clone(), Some(&key), Some(b"[1,2]".to_vec()), 400, "invalid_request"),
        ("wrong type", "POST", cmds.clone(), Some(&key),
            Some(json!({"command": {"type": "Invite", "party": 7, "roles": ["buyer"]}, "actor": actor}).to_string().into_bytes()), 400, "invalid_request"),
        ("unknown command", "POST", cmds.clone(), Some(&key),
            Some(json!({"command": {"type": "Teleport"}, "actor": actor}).to_string().into_bytes()), 400, "invalid_request"),
        ("unknown field", "POST", cmds.clone(), Some(&key),
            Some(json!({"command": {"type": "Join"}, "actor": actor, "extra": 1}).to_string().into_bytes()), 400, "invalid_request"),
        ("bad amount scale", "POST", "/v1/payments".into(), Some(&key),
            Some(json!({"policy": "earnest-money", "amount": {"amount": "100.001", "currency": "USD"},
                        "initiator": {"party": f.agent, "roles": ["listing_agent"]}}).to_string().into_bytes()), 422, "invalid_amount_scale"),
        ("bad amount scale in a command", "POST", cmds.clone(), Some(&key),
            Some(json!({"command": {"type": "SubmitFunding", "amount": {"amount": "100.001", "currency": "USD"},
                        "rail": "wire", "rail_ref": "W-1"}, "actor": actor}).to_string().into_bytes()), 422, "invalid_amount_scale"),
        ("bad currency in an allocation", "POST", cmds.clone(), Some(&key),
            Some(json!({"command": {"type": "RequestRelease", "request": uuid::Uuid::new_v4(),
                        "allocations": [{"party": f.seller, "amount": {"amount": "1.00", "currency": "XXQ"}}]},
                        "actor": actor}).to_string().into_bytes()), 422, "unknown_currency"),
        ("unknown policy", "POST", "/v1/payments".into(), Some(&key),
            Some(json!({"policy": "nope", "amount": {"amount": "100.00", "currency": "USD"},
                        "initiator": {"party": f.agent, "roles": ["listing_agent"]}}).to_string().into_bytes()), 422, "unknown_policy"),
        ("domain rule", "POST", cmds.clone(), Some(&key),
            Some(json!({"command": {"type": "Join"}, "actor": actor}).to_string().into_bytes()), 422, "already_joined"),
        ("not permitted", "POST", cmds.clone(), Some(&key),
            Some(json!({"command": {"type": "Cancel"}, "actor": {"party": f.buyer, "role": "buyer"}}).to_string().into_bytes()), 403, "not_permitted"),
        ("unknown payment", "POST", unknown, Some(&key),
            Some(json!({"command": {"type": "Join"}, "actor": actor}).to_string().into_bytes()), 404, "unknown_payment"),
        ("unknown payment read", "GET", format!("/v1/payments/{}", uuid::Uuid::new_v4()), Some(&key), None, 404, "unknown_payment"),
        ("bad id", "GET", "/v1/payments/not-a-uuid".into(), Some(&key), None, 400, "invalid_id"),
        ("bad limit", "GET", format!("/v1/payments/{}/events?limit=abc", f.payment), Some(&key), None, 400, "invalid_parameter"),
        ("oversize body", "POST", cmds.clone(), Some(&key), Some(big), 413, "payload_too_large"),
        ("bad key", "GET", "/v1/payments".into(), Some("tfk_00000000000000000000000000000000_nope"), None, 401, "unauthorized"),
        ("garbage key", "GET", "/v1/payments".into(), Some("hello"), None, 401, "unauthorized"),
        ("no key", "GET", "/v1/payments".into(), None, None, 401, "unauthorized"),
        ("bad admin token", "POST", "/v1/tenants".into(), Some("wrong"), Some(b"{\"name\":\"x\"}".to_vec()), 401, "unauthorized"),
        ("invalid policy", "POST", "/v1/policies".into(), Some(&key),
            Some(common::scenario::EARNEST_MONEY.replace("\"payer_role\": \"buyer\"", "\"payer_role\": \"ghost\"").into_bytes()), 422, "invalid_policy"),
        ("deadline past year 9999", "POST", "/v1/policies".into(), Some(&key),
            Some(common::scenario::EARNEST_MONEY.replace("\"days\": 3,", "\"days\": 4000000,").replace("\"version\": 1", "\"version\": 77").into_bytes()), 422, "invalid_policy"),
        ("good funds for ages", "POST", "/v1/policies".into(), Some(&key),
            Some(common::scenario::EARNEST_MONEY.replace("\"ach\": 2,", "\"ach\": 4000000,").replace("\"version\": 1", "\"version\": 78").into_bytes()), 422, "invalid_policy"),
        ("key overlap overflows", "POST", "/v1/api-keys".into(), Some(&key),
            Some(json!({"expire_others_after_seconds": u64::MAX}).to_string().into_bytes()), 400, "invalid_parameter"),
        ("policy version reused", "POST", "/v1/policies".into(), Some(&key),
            Some(common::scenario::EARNEST_MONEY.replace("Real-estate", "Other").into_bytes()), 409, "policy_version_exists"),
        ("bad If-Match", "POST", cmds.clone(), Some(&key), None, 400, "invalid_parameter"),
        ("no route", "GET", "/v2/nothing".into(), Some(&key), None, 404, "route_not_found"),
        ("wrong method", "DELETE", "/v1/payments".into(), Some(&key), None, 405, "method_not_allowed"),
        ("field on a field-less command", "POST", cmds.clone(), Some(&key),
            Some(json!({"command": {"type": "Join", "as": "admin"}, "actor": actor}).to_string().into_bytes()), 400, "invalid_request"),
        ("not json", "POST", cmds.clone(), Some(&key),
            Some(json!({"command": {"type": "Join"}, "actor": actor}).to_string().into_bytes()), 415, "unsupported_media_type"),
        ("form body", "POST", "/v1/tenants".into(), Some(ADMIN), Some(b"name=x".to_vec()), 415, "unsupported_media_type"),
        ("latin-1 json", "POST", "/v1/tenants".into(), Some(ADMIN), Some(b"{\"name\":\"x\"}".to_vec()), 415, "unsupported_media_type"),
        ("unknown policy version", "POST", "/v1/payments".into(), Some(&key),
            Some(json!({"policy": "earnest-money", "policy_version": 999, "amount": {"amount": "5000.00", "currency": "USD"},
                        "initiator": {"party": f.agent, "roles": ["listing_agent"]}}).to_string().into_bytes()), 422, "unknown_policy"),
        ("tenant name too long", "POST", "/v1/tenants".into(), Some(ADMIN),
            Some(json!({"name": "n".repeat(201)}).to_string().into_bytes()), 422, "invalid_name"),
        ("key given twice", "POST", cmds.clone(), Some(&key),
            Some(format!(r#"{{"command":{{"type":"Cancel","type":"Join"}},"actor":{actor}}}"#).into_bytes()), 400, "duplicate_key"),
        ("array for the body", "POST", format!("/v1/payments/{}/tokens", f.payment), Some(&key),
            Some(json!([f.buyer]).to_string().into_bytes()), 400, "invalid_request"),
        ("unknown status filter", "GET", "/v1/payments?status=awaiting_funds".into(), Some(&key), None, 400, "invalid_parameter"),
        ("cursor past the range", "GET", format!("/v1/parties/{}/inbox?after=18446744073709551615", f.buyer), Some(&key), None, 400, "invalid_parameter"),
        ("path not UTF-8", "GET", "/v1/payments/%FF%FE".into(), Some(&key), None, 400, "bad_request"),
        ("array for the actor", "POST", cmds.clone(), Some(&key),
            Some(json!({"command": {"type": "Join"}, "actor": [f.buyer, "buyer"]}).to_string().into_bytes()), 400, "invalid_request"),
        ("array for an amount", "POST", "/v1/payments".into(), Some(&key),
            Some(json!({"policy": "earnest-money", "amount": ["5000.00", "USD"],
                        "initiator": {"party": f.agent, "roles": ["listing_agent"]}}).to_string().into_bytes()), 400, "invalid_request"),
        ("array for the initiator", "POST", "/v1/payments".into(), Some(&key),
            Some(json!({"policy": "earnest-money", "amount": {"amount": "5000.00", "currency": "USD"},
                        "initiator": [f.agent, ["listing_agent"], null, "n"]}).to_string().into_bytes()), 400, "invalid_request"),
        ("If-Match without quotes", "POST", cmds.clone(), Some(&key), None, 400, "invalid_parameter"),
        ("If-Match list", "POST", cmds.clone(), Some(&key), None, 400, "invalid_parameter"),
        ("tab in an Idempotency-Key", "POST", cmds.clone(), Some(&key), None, 400, "invalid_idempotency_key"),
        ("inbox of a stranger", "GET", format!("/v1/parties/{}/inbox", uuid::Uuid::new_v4()), Some(&key), None, 404, "unknown_party"),
        ("parameter twice", "GET", format!("/v1/payments/{}/events?after=1&after=2", f.payment), Some(&key), None, 400, "invalid_parameter"),
        ("Idempotency-Key twice", "POST", cmds.clone(), Some(&key), None, 400, "duplicate_header"),
        ("credential twice", "GET", "/v1/payments".into(), Some(&key), None, 400, "duplicate_header"),
        ("misspelt filter", "GET", "/v1/payments?state=Held".into(), Some(&key), None, 400, "unknown_parameter"),
        ("parameter of another route", "GET", format!("/v1/payments/{}/events?status=Held", f.payment), Some(&key), None, 400, "unknown_parameter"),
        ("a token in the query of a read", "GET", format!("/v1/payments/{}?access_token=tft_x", f.payment), Some(&key), None, 400, "unknown_parameter"),
        ("braced id", "GET", format!("/v1/payments/{{{}}}", f.payment), Some(&key), None, 400, "invalid_id"),
        ("id without hyphens", "GET", format!("/v1/payments/{}", f.payment.replace('-', "")), Some(&key), None, 400, "invalid_id"),
        ("urn id", "GET", format!("/v1/payments/urn:uuid:{}", f.payment), Some(&key), None, 400, "invalid_id"),
        ("negative limit", "GET", format!("/v1/payments/{}/events?limit=-1", f.payment), Some(&key), None, 400, "invalid_parameter"),
        ("control character in a name", "POST", cmds.clone(), Some(&key),
            Some(json!({"command": {"type": "Invite", "party": uuid::Uuid::new_v4(), "roles": ["lender"], "name": "Eve\u{1b}[31m"}, "actor": actor}).to_string().into_bytes()), 422, "invalid_text"),
        ("NUL in a reason", "POST", cmds.clone(), Some(&key),
            Some(json!({"command": {"type": "Cancel", "reason": "a\u{0}b"}, "actor": actor}).to_string().into_bytes()), 422, "invalid_text"),
        ("role listed twice", "POST", cmds.clone(), Some(&key),
            Some(json!({"command": {"type": "Invite", "party": uuid::Uuid::new_v4(), "roles": ["lender", "lender"]}, "actor": actor}).to_string().into_bytes()), 422, "duplicate_role"),
        ("nil payment id", "POST", "/v1/payments".into(), Some(&key),
            Some(json!({"policy": "earnest-money", "payment_id": uuid::Uuid::nil(), "amount": {"amount": "5000.00", "currency": "USD"},
                        "initiator": {"party": f.agent, "roles": ["listing_agent"]}}).to_string().into_bytes()), 422, "invalid_id"),
        // Ids in URLs are lower-case: one URL per resource, and the one a signature covers.
        ("upper-case id", "GET", format!("/v1/payments/{}", f.payment.to_uppercase()), Some(&key), None, 400, "invalid_id"),
        ("mixed-case id", "GET", format!("/v1/payments/{mixed}/events"), Some(&key), None, 400, "invalid_id"),
        ("upper-case id of a command", "POST", format!("/v1/payments/{}/commands", f.payment.to_uppercase()), Some(&key),
            Some(json!({"command": {"type": "Join"}, "actor": actor}).to_string().into_bytes()), 400, "invalid_id"),
        ("upper-case id of a stream", "GET", format!("/v1/payments/{}/stream", f.payment.to_uppercase()), Some(&key), None, 400, "invalid_id"),
        ("upper-case id of balances", "GET", format!("/v1/payments/{}/balances", f.payment.to_uppercase()), Some(&key), None, 400, "invalid_id"),
        ("upper-case party id", "GET", format!("/v1/parties/{}/inbox", f.buyer.to_uppercase()), Some(&key), None, 400, "invalid_id"),
        ("upper-case participant filter", "GET", format!("/v1/payments?participant={}", f.buyer.to_uppercase()), Some(&key), None, 400, "invalid_id"),
        // JSON is `application/json`: not the `+json` formats, not `text/json`.
        ("problem+json body", "POST", cmds.clone(), Some(&key),
            Some(json!({"command": {"type": "Join"}, "actor": actor}).to_string().into_bytes()), 415, "unsupported_media_type"),
        ("json-patch body", "POST", cmds.clone(), Some(&key),
            Some(json!({"command": {"type": "Join"}, "actor": actor}).to_string().into_bytes()), 415, "unsupported_media_type"),
        ("text/json body", "POST", cmds.clone(), Some(&key),
            Some(json!({"command": {"type": "Join"}, "actor": actor}).to_string().into_bytes()), 415, "unsupported_media_type"),
        ("role twice in a token", "POST", format!("/v1/payments/{}/tokens", f.payment), Some(&key),
            Some(json!({"party": f.buyer, "roles": ["buyer", "buyer"]}).to_string().into_bytes()), 422, "duplicate_role"),
        // A policy id stands in a URL as it is.
        ("policy id with a slash", "POST", "/v1/policies".into(), Some(&key),
            Some(common::scenario::EARNEST_MONEY.replace("\"earnest-money\"", "\"bad id/with slash\"").into_bytes()), 422, "invalid_policy"),
        ("policy id of a query", "POST", "/v1/policies".into(), Some(&key),
            Some(common::scenario::EARNEST_MONEY.replace("\"earnest-money\"", "\"?x\"").into_bytes()), 422, "invalid_policy"),
        ("policy id of a dot segment", "POST", "/v1/policies".into(), Some(&key),
            Some(common::scenario::EARNEST_MONEY.replace("\"earnest-money\"", "\"..\"").into_bytes()), 422, "invalid_policy"),
        ("policy id too long", "POST", "/v1/policies".into(), Some(&key),
            Some(common::scenario::EARNEST_MONEY.replace("\"earnest-money\"", &format!("\"{}\"", "p".repeat(65))).into_bytes()), 422, "invalid_policy"),
        // Routes whose answer holds a new secret cannot replay it: a key is refused, not ignored.
        ("key on tenant creation", "POST", "/v1/tenants".into(), Some(ADMIN),
            Some(json!({"name": "x"}).to_string().into_bytes()), 400, "route_not_idempotent"),
        ("key on key rotation", "POST", "/v1/api-keys".into(), Some(&key),
            Some(json!({}).to_string().into_bytes()), 400, "route_not_idempotent"),
    ];
    for (name, method, path, auth, body, status, code) in cases {
        let headers: Vec<(&str, &str)> = match name {
            "bad If-Match" => vec![("if-match", "soon")],
            "If-Match without quotes" => vec![("if-match", "9")],
            "If-Match list" => vec![("if-match", "\"9\", \"8\"")],
            "tab in an Idempotency-Key" => vec![("idempotency-key", "k\t1")],
            "Idempotency-Key twice" => vec![("idempotency-key", "a"), ("idempotency-key", "b")],
            "credential twice" => vec![("authorization", "Bearer tfk_other")],
            "not json" => vec![("content-type", "text/plain")],
            "form body" => vec![("content-type", "application/x-www-form-urlencoded")],
            "latin-1 json" => vec![("content-type", "application/json; charset=latin1")],
            "problem+json body" => vec![("content-type", "application/problem+json")],
            "json-patch body" => vec![("content-type", "application/json-patch+json")],
            "text/json body" => vec![("content-type", "text/json")],
            "key on tenant creation" | "key on key rotation" => {
                vec![("idempotency-key", "create-1")]
            }
            _ => vec![],
        };
        let body = if matches!(
            name,
            "bad If-Match"
                | "If-Match without quotes"
                | "If-Match list"
                | "tab in an Idempotency-Key"
                | "Idempotency-Key twice"
        ) {
            Some(
                json!({"command": {"type": "Join"}, "actor": actor})
                    .to_string()
                    .into_bytes(),
            )
        } else {
            body
        };
        let r = c
            .raw(method, &path, auth, &headers, body)
            .await
            .expect(name);
        assert_eq!(r.status, status, "{name}: {}", r.body);
        assert_eq!(r.body["code"], code, "{name}: {}", r.body);
        // A value refused inside a body names where it is.
        let field = match name {
            "bad amount scale" => Some("amount"),
            "bad amount scale in a command" => Some("command.amount"),
            "bad currency in an allocation" => Some("command.allocations[0].amount.currency"),
            _ => None,
        };
        if let Some(field) = field {
            assert_eq!(r.body["field"], field, "{name}: {}", r.body);
        }
        assert_eq!(
            r.body["status"], status,
            "{name}: the document's status is the response's"
        );
        assert!(
            r.headers["content-type"]
                .to_str()
                .unwrap_or("")
                .contains("problem+json"),
            "{name}"
        );
        assert!(
            r.body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{name}"
        );
        let detail = r.body["detail"].as_str().unwrap_or_default();
        if name.starts_with("upper-case") || name.starts_with("mixed-case") {
            assert!(detail.contains("lower-case hyphenated"), "{name}: {detail}");
        }
        if name.starts_with("policy id") {
            assert_eq!(r.body["field"], "id", "{name}: {}", r.body);
        }
        if name.starts_with("key on") {
            assert_eq!(r.body["field"], "Idempotency-Key", "{name}: {}", r.body);
        }
    }
    // The other JSON types above were refused; `application/json` with parameters is
    // JSON.
    let charset = c
        .raw(
            "POST",
            "/v1/tenants",
            Some(ADMIN),
            &[("content-type", "application/json; charset=UTF-8")],
            Some(json!({"name": "with charset"}).to_string().into_bytes()),
        )
        .await
        .expect("tenant");
    assert_eq!(charset.status, 201, "{}", charset.body);
    let field = c
        .post(
            "/v1/policies",
            &key,
            &serde_json::from_str::<Value>(
                &common::scenario::EARNEST_MONEY
                    .replace("\"payer_role\": \"buyer\"", "\"payer_role\": \"ghost\""),
            )
            .expect("json"),
        )
        .await;
    assert_eq!(field.body["field"], "payer_role", "{}", field.body);
    let far = c
        .post(
            "/v1/policies",
            &key,
            &serde_json::from_str::<Value>(
                &common::scenario::EARNEST_MONEY
                    .replace("\"days\": 3,", "\"days\": 3651,")
                    .replace("\"version\": 1", "\"version\": 79"),
            )
            .expect("json"),
        )
        .await;
    assert_eq!(far.body["field"], "funding.deadline.days", "{}", far.body);
    // A text too long names its field.
    let long = c
        .post(
            &cmds,
            &key,
            &json!({"command": {"type": "OpenDispute", "dispute": uuid::Uuid::new_v4(), "reason": "r".repeat(2001)},
                "actor": {"party": f.buyer, "role": "buyer"}}),
        )
        .await;
    assert_eq!(
        (
            long.status,
            long.body["code"].as_str(),
            long.body["field"].as_str()
        ),
        (422, Some("text_too_long"), Some("command.reason")),
        "{}",
        long.body
    );
    // So does a role listed twice, at its place in the command.
    let twice = c
        .post(
            &cmds,
            &key,
            &json!({"command": {"type": "Invite", "party": uuid::Uuid::new_v4(), "roles": ["lender", "lender"], "name": "l"},
                "actor": {"party": f.agent, "role": "listing_agent"}}),
        )
        .await;
    assert_eq!(
        (
            twice.status,
            twice.body["code"].as_str(),
            twice.body["field"].as_str()
        ),
        (422, Some("duplicate_role"), Some("command.roles")),
        "{}",
        twice.body
    );
    // The last possible version of a policy: a clash says so instead of failing.
    let mut last: Value = serde_json::from_str(common::scenario::EARNEST_MONEY).expect("policy");
    last["id"] = "last-version".into();
    last["version"] = u32::MAX.into();
    assert_eq!(c.post("/v1/policies", &key, &last).await.status, 201);
    last["name"] = "other content".into();
    let clash = c.post("/v1/policies", &key, &last).await;
    assert_eq!(clash.status, 409, "{}", clash.body);
    assert!(clash.body["detail"]
        .as_str()
        .unwrap_or("")
        .contains("new id"));
    let r = c
        .get(
            &format!(
                "/v1/policies/last-version?version={}",
                u64::from(u32::MAX) + 1
            ),
            &key,
        )
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (400, Some("invalid_parameter"))
    );
    // The key the refused rotation would have expired still works.
    assert_eq!(c.get("/v1/payments", &key).await.status, 200);
    srv.finish().await;
}

/// `GET /v1/policies` lists the tenant's policies by id, each with its latest version
/// (name, hash, when published) and how many versions it has, a page at a time.
async fn policies_are_listed(srv: Server) {
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let r = c.get("/v1/policies", &key).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"policies": [], "has_more": false, "next": null})
    );
    let base: Value = serde_json::from_str(common::scenario::EARNEST_MONEY).expect("policy");
    let mut hashes = std::collections::HashMap::new();
    for (id, version, name) in [
        ("b-policy", 1, "B one"),
        ("a-policy", 1, "A one"),
        ("b-policy", 2, "B two"),
        ("c-policy", 1, "C one"),
        ("b-policy", 3, "B three"),
    ] {
        let mut p = base.clone();
        p["id"] = id.into();
        p["version"] = version.into();
        p["name"] = name.into();
        let r = c.post("/v1/policies", &key, &p).await;
        assert_eq!(r.status, 201, "{}", r.body);
        hashes.insert((id, version), r.body["hash"].clone());
    }
    let page = c.get("/v1/policies?limit=2", &key).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let first = page.body["policies"].as_array().expect("policies");
    assert_eq!(first.len(), 2);
    assert_eq!(first[0]["id"], "a-policy");
    assert_eq!(
        (&first[1]["id"], &first[1]["version"], &first[1]["name"]),
        (&json!("b-policy"), &json!(3), &json!("B three"))
    );
    assert_eq!(first[1]["versions"], 3);
    assert_eq!(first[1]["hash"], hashes[&("b-policy", 3)]);
    assert!(
        first[1]["created_at"].as_str().unwrap_or("")
            >= first[1]["first_created_at"].as_str().unwrap_or("~")
    );
    assert_eq!(
        (&page.body["has_more"], &page.body["next"]),
        (&json!(true), &json!("b-policy"))
    );
    let page = c.get("/v1/policies?after=b-policy&limit=2", &key).await;
    let rest: Vec<&str> = page.body["policies"]
        .as_array()
        .expect("policies")
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert_eq!(rest, ["c-policy"]);
    assert_eq!(page.body["has_more"], false);
    for bad in ["limit=0", "after=a%01b"] {
        let r = c.get(&format!("/v1/policies?{bad}"), &key).await;
        expect_member(&r, 400, "code", "invalid_parameter");
    }
    let other = c.tenant(ADMIN, "u").await.expect("tenant");
    assert_eq!(
        c.get("/v1/policies", &other).await.body["policies"],
        json!([])
    );
    srv.finish().await;
}

on_both_engines!(policies_are_listed);

/// Reads SSE events (id, data) from a streaming response until `n` arrived.
async fn sse_events(res: &mut reqwest::Response, n: usize, buf: &mut String) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut id = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                }
                if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if let Some(id) = id {
                out.push((id, serde_json::from_str(&data).expect("data is JSON")));
            }
        }
        if out.len() >= n {
            break;
        }
        let chunk = tokio::time::timeout_at(deadline, res.chunk())
            .await
            .expect("SSE events in time")
            .expect("chunk");
        buf.push_str(&String::from_utf8_lossy(&chunk.expect("stream open")));
    }
    out
}

/// A stream opened with an API key ends once the key is rotated out (expired): it
/// delivers nothing appended after that, and a reconnect with the key is refused.
#[tokio::test]
async fn an_api_keys_stream_ends_when_the_key_is_rotated_out() {
    let srv = common::sqlite().await;
    let c = &srv.client;
    let old = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(c, &old).await.expect("open");
    let p = &f.payment;
    let url = format!("{}/v1/payments/{p}/stream", c.base);
    let mut res = c
        .http
        .get(&url)
        .bearer_auth(&old)
        .send()
        .await
        .expect("stream");
    assert_eq!(res.status(), 200);
    let mut buf = String::new();
    let first = sse_events(&mut res, 7, &mut buf).await;
    assert_eq!(first.len(), 7);
    let r = c
        .post(
            "/v1/api-keys",
            &old,
            &json!({"expire_others_after_seconds": 0}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let new = r.body["api_key"].as_str().expect("new key").to_owned();
    c.command(
        &new,
        p,
        Some(&f.agent),
        "listing_agent",
        json!({"type": "Invite", "party": uuid::Uuid::new_v4(), "roles": ["brokerage"]}),
    )
    .await
    .expect("invite");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let chunk = tokio::time::timeout_at(deadline, res.chunk())
            .await
            .expect("the stream ends in time");
        match chunk {
            Ok(Some(bytes)) => buf.push_str(&String::from_utf8_lossy(&bytes)),
            Ok(None) | Err(_) => break,
        }
    }
    assert!(!buf.contains("id: 8"), "nothing after the rotation: {buf}");
    let again = c
        .http
        .get(&url)
        .bearer_auth(&old)
        .send()
        .await
        .expect("reconnect");
    assert_eq!(again.status(), 401);
}

#[tokio::test]
async fn sse_delivers_live_and_resumes_with_last_event_id() {
    let srv = common::sqlite().await;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    let p = &f.payment;
    let url = format!("{}/v1/payments/{p}/stream", c.base);
    let mut res = c
        .http
        .get(&url)
        .bearer_auth(&key)
        .send()
        .await
        .expect("stream");
    assert_eq!(res.status(), 200);
    // Its caller's alone, like every other answer: not `no-cache` (axum's default).
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut buf = String::new();
    let first = sse_events(&mut res, 7, &mut buf).await;
    assert_eq!(
        first.iter().map(|e| e.0).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    // Records are the stored bytes: hash matches.
    assert!(first
        .iter()
        .all(|(_, v)| v["hash"].is_string() && v["event"]["seq"].is_u64()));
    // Live: a new command reaches the open stream.
    c.command(
        &key,
        p,
        Some(&f.agent),
        "listing_agent",
        json!({"type": "Invite", "party": uuid::Uuid::new_v4(), "roles": ["brokerage"]}),
    )
    .await
    .expect("invite");
    let live = sse_events(&mut res, 1, &mut buf).await;
    assert_eq!(live[0].0, 8);
    // Delivered from the appending process's notice, it is the stored record.
    let stored = c
        .get(&format!("/v1/payments/{p}/events?after=7"), &key)
        .await;
    assert_eq!(live[0].1, stored.body["events"][0]);
    assert!(live[0].1["hash"].is_string());
    drop(res);
    // Two more while disconnected; resume after 8 gets exactly 9 and 10.
    for role in ["brokerage", "lender"] {
        c.command(
            &key,
            p,
            Some(&f.agent),
            "listing_agent",
            json!({"type": "Invite", "party": uuid::Uuid::new_v4(), "roles": [role]}),
        )
        .await
        .expect("invite");
    }
    let mut res = c
        .http
        .get(&url)
        .bearer_auth(&key)
        .header("last-event-id", "8")
        .send()
        .await
        .expect("stream");
    let mut buf = String::new();
    let resumed = sse_events(&mut res, 2, &mut buf).await;
    assert_eq!(resumed.iter().map(|e| e.0).collect::<Vec<_>>(), vec![9, 10]);
    // Idle: heartbeats arrive as comments.
    let chunk = tokio::time::timeout(Duration::from_secs(5), res.chunk())
        .await
        .expect("heartbeat")
        .expect("chunk");
    assert!(String::from_utf8_lossy(&chunk.expect("open")).contains(": heartbeat"));
    drop(res);
    srv.finish().await;
}

/// A participant token for `party` on `payment`.
async fn token_for(c: &Client, key: &str, payment: &str, party: &str) -> String {
    let t = c
        .post(
            &format!("/v1/payments/{payment}/tokens"),
            key,
            &json!({"party": party, "ttl_seconds": 60}),
        )
        .await;
    assert_eq!(t.status, 201, "{}", t.body);
    t.body["token"].as_str().expect("token").to_owned()
}

/// Opens a stream with `open` until it is 200 (not 429 `too_many_streams`) within
/// `within`, and returns that stream; `what` says what failed otherwise.
async fn place_comes_back<F, Fut>(open: F, within: Duration, what: &str) -> reqwest::Response
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        let again = open().await.expect("again");
        if again.status() == 200 {
            return again;
        }
        assert_eq!(again.status(), 429);
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Live streams are counted per party of a payment (and per tenant): one more than the
/// limit is 429 `too_many_streams`, and a closed stream gives its place back.
#[tokio::test]
async fn live_streams_are_bounded_per_party() {
    let dir = tempfile::tempdir().expect("temp dir");
    let database = dir.path().join("trustfold.db").display().to_string();
    let mut config = common::config(&database);
    config.http.max_streams_per_party = 2;
    config.http.heartbeat = Duration::from_millis(100);
    let running = common::serve(config).await;
    let c = Client::new(format!("http://{}", running.addr));
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(&c, &key).await.expect("open");
    let token = token_for(&c, &key, &f.payment, &f.buyer).await;
    let url = format!("{}/v1/payments/{}/stream", c.base, f.payment);
    let open = || c.http.get(&url).bearer_auth(&token).send();
    let first = open().await.expect("first");
    let second = open().await.expect("second");
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = open().await.expect("third");
    assert_eq!(third.status(), 429);
    let body: Value = third.json().await.expect("problem");
    assert_eq!(body["code"], "too_many_streams", "{body}");
    // Another party, and the tenant, still stream.
    let seller = token_for(&c, &key, &f.payment, &f.seller).await;
    let other = c
        .http
        .get(&url)
        .bearer_auth(&seller)
        .send()
        .await
        .expect("seller");
    assert_eq!(other.status(), 200);
    let tenant = c
        .http
        .get(&url)
        .bearer_auth(&key)
        .send()
        .await
        .expect("tenant");
    assert_eq!(tenant.status(), 200);
    // Closed: its place is given back (noticed at the next heartbeat).
    drop(first);
    let again = place_comes_back(open, Duration::from_secs(10), "the place never came back").await;
    drop((second, other, tenant, again));
    running.shutdown().await.expect("shutdown");
}

/// A client that stops reading its live stream (its window closed) is cut off after
/// `stalled_connection_timeout` (TCP_USER_TIMEOUT) and its stream's place comes back,
/// instead of being held for as long as its kernel answers the server's probes.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_stalled_stream_client_gives_its_place_back() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let database = dir.path().join("trustfold.db").display().to_string();
    let mut config = common::config(&database);
    config.http.max_streams_per_party = 1;
    config.http.heartbeat = Duration::from_millis(100);
    config.http.stalled_connection_timeout = Duration::from_secs(1);
    let running = common::serve(config).await;
    let c = Client::new(format!("http://{}", running.addr));
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(&c, &key).await.expect("open");
    let token = token_for(&c, &key, &f.payment, &f.buyer).await;
    // The stalled client: a receive buffer of a few KB that it never reads, asking for
    // the whole history (more than fits).
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(2048).expect("rcvbuf");
    socket.connect(&running.addr.into()).expect("connect");
    let mut stalled: std::net::TcpStream = socket.into();
    write!(
        stalled,
        "GET /v1/payments/{}/stream?after=0 HTTP/1.1\r\nHost: t\r\n\
         Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n",
        f.payment
    )
    .expect("request");
    // Its stream is open (the status line read, nothing more)...
    let stalled = tokio::task::spawn_blocking(move || {
        use std::io::Read as _;
        let mut head = [0u8; 12];
        stalled.read_exact(&mut head).expect("status line");
        assert_eq!(&head, b"HTTP/1.1 200");
        stalled
    })
    .await
    .expect("read");
    let url = format!("{}/v1/payments/{}/stream", c.base, f.payment);
    let open = || c.http.get(&url).bearer_auth(&token).send();
    // ... and holds the party's only place while it stalls ...
    let taken = open().await.expect("open");
    assert_eq!(taken.status(), 429);
    drop(taken);
    // ... and comes back once the kernel cut it off, though the client never closed.
    let again = place_comes_back(
        open,
        Duration::from_secs(30),
        "the stalled client kept its place",
    )
    .await;
    drop((stalled, again));
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn sse_takes_a_participant_token_as_access_token() {
    let srv = common::sqlite().await;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    let p = &f.payment;
    let buyer = token_for(c, &key, p, &f.buyer).await;
    let url = format!("{}/v1/payments/{p}/stream", c.base);
    let get = |u: String| c.http.get(u).send();

    // An EventSource cannot send headers: the token rides in the query, and (the buyer
    // sees everything) the records are the verifiable stored bytes, as with the API key.
    let mut res = get(format!("{url}?after=5&access_token={buyer}"))
        .await
        .expect("stream");
    assert_eq!(res.status(), 200);
    let mut buf = String::new();
    let got = sse_events(&mut res, 2, &mut buf).await;
    assert_eq!(got.iter().map(|e| e.0).collect::<Vec<_>>(), vec![6, 7]);
    let tenant_view = c
        .get(&format!("/v1/payments/{p}/events?after=5"), &key)
        .await;
    assert_eq!(
        got.iter().map(|e| e.1.clone()).collect::<Vec<_>>(),
        tenant_view.body["events"]
            .as_array()
            .expect("events")
            .clone()
    );
    // The buyer's paged history is the same verifiable records too.
    let buyer_history = history(c, &buyer, p, 3).await.expect("history");
    let tenant_history = history(c, &key, p, 100).await.expect("history");
    assert_eq!(buyer_history, tenant_history);
    replay(&buyer_history).expect("the buyer's history verifies and folds");
    drop(res);

    // A token that may not see everything still gets its redacted view.
    let lender = uuid::Uuid::new_v4().to_string();
    c.command(
        &key,
        p,
        Some(&f.agent),
        "listing_agent",
        json!({"type": "Invite", "party": lender, "roles": ["lender"]}),
    )
    .await
    .expect("invite");
    let lender_token = token_for(c, &key, p, &lender).await;
    let mut res = get(format!("{url}?access_token={lender_token}"))
        .await
        .expect("stream");
    assert_eq!(res.status(), 200);
    let mut buf = String::new();
    let got = sse_events(&mut res, 1, &mut buf).await;
    assert_eq!(got[0].1["type"], "PaymentInitiated");
    assert_eq!(got[0].1["redacted"], true);
    drop(res);
    // Its event pages say they are a redacted view; verifiable pages do not.
    let page = c
        .get(&format!("/v1/payments/{p}/events"), &lender_token)
        .await;
    assert_eq!(page.status, 200);
    assert_eq!(page.body["redacted"], true);
    assert_eq!(page.body["events"][0]["event"]["type"], "PaymentInitiated");
    assert!(page.body["events"][0].get("hash").is_none());
    let page = c.get(&format!("/v1/payments/{p}/events"), &buyer).await;
    assert!(page.body.get("redacted").is_none(), "{}", page.body);
    // Each answer is its caller's alone: a browser must neither keep one participant's
    // state nor revalidate it (ETag = version, 304) for another whose policy hides more.
    for (path, auth) in [
        (format!("/v1/payments/{p}"), &lender_token),
        (format!("/v1/payments/{p}"), &key),
        (format!("/v1/payments/{p}/events"), &buyer),
    ] {
        let r = c.get(&path, auth).await;
        assert_eq!(r.headers["cache-control"], "no-store", "{path}");
        let vary: Vec<_> = r.headers.get_all("vary").iter().collect();
        assert!(
            vary.iter().any(|v| v.as_bytes() == b"authorization"),
            "{path}: {vary:?}"
        );
    }

    // The same checks as the header: tampered, another payment's, or an API key.
    let mut bad = buyer.clone();
    bad.pop();
    let r = get(format!("{url}?access_token={bad}")).await.expect("get");
    assert_eq!(r.status(), 401);
    let other = open_and_join(c, &key).await.expect("another payment");
    let r = get(format!(
        "{}/v1/payments/{}/stream?access_token={buyer}",
        c.base, other.payment
    ))
    .await
    .expect("get");
    assert_eq!(r.status(), 404);
    let r = get(format!("{url}?access_token={key}")).await.expect("get");
    assert_eq!(r.status(), 401, "API keys do not go in URLs");
    // Not both at once; and no token at all is still a 401.
    let r = c
        .http
        .get(format!("{url}?access_token={buyer}"))
        .bearer_auth(&buyer)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 400);
    assert_eq!(get(url.clone()).await.expect("get").status(), 401);
    // Only the stream takes it: other routes want the header, and refuse the parameter.
    let r = c
        .raw(
            "GET",
            &format!("/v1/payments/{p}?access_token={buyer}"),
            None,
            &[],
            None,
        )
        .await
        .expect("get");
    expect_member(&r, 400, "code", "unknown_parameter");
    srv.finish().await;
}

#[tokio::test]
async fn sse_reaches_a_stream_on_another_process_postgres() {
    let Some(srv) = common::postgres().await else {
        return;
    };
    // A second server on the same database, polling too slowly to matter: only
    // LISTEN/NOTIFY can deliver in time.
    let mut cfg = common::config(&srv.database);
    cfg.http.poll_interval = Duration::from_secs(60);
    let second = common::serve(cfg).await;
    let c2 = Client::new(format!("http://{}", second.addr));
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    let mut res = c2
        .http
        .get(format!("{}/v1/payments/{}/stream", c2.base, f.payment))
        .bearer_auth(&key)
        .header("last-event-id", "7")
        .send()
        .await
        .expect("stream");
    assert_eq!(res.status(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    c.command(
        &key,
        &f.payment,
        Some(&f.agent),
        "listing_agent",
        json!({"type": "Invite", "party": uuid::Uuid::new_v4(), "roles": ["brokerage"]}),
    )
    .await
    .expect("invite");
    let mut buf = String::new();
    let got = sse_events(&mut res, 1, &mut buf).await;
    assert_eq!(got[0].0, 8);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "delivered by NOTIFY, not by polling"
    );
    drop(res);
    second.shutdown().await.expect("shutdown");
    srv.finish().await;
}

/// The codes the API's handlers write as literals (`code: "…"`, `bad_request("…"`, and
/// `ApiError::code`'s arms `=> "…"`), outside their unit tests.
fn literal_codes(text: &str, arms: bool) -> Vec<&str> {
    let mut markers = vec!["code: ", "bad_request("];
    if arms {
        markers.push("=> ");
    }
    let mut out = Vec::new();
    for marker in markers {
        for (i, _) in text.match_indices(marker) {
            let Some(rest) = text[i + marker.len()..].trim_start().strip_prefix('"') else {
                continue;
            };
            let Some(end) = rest.find('"') else {
                continue;
            };
            let code = &rest[..end];
            if !code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                out.push(code);
            }
        }
    }
    out
}

/// Every stable code the server's handlers answer with is in `/openapi.json`: an
/// integrator reading the document meets every code it can get (where, the operation's
/// responses say; this checks that none is left out altogether).
#[test]
fn every_code_the_api_sends_is_documented() {
    let doc = include_str!("../src/openapi.json");
    let word = |b: u8| b.is_ascii_lowercase() || b == b'_';
    let documented = |code: &str| {
        doc.match_indices(code).any(|(i, _)| {
            let before = i.checked_sub(1).map(|j| doc.as_bytes()[j]);
            let after = doc.as_bytes().get(i + code.len()).copied();
            !before.is_some_and(word) && !after.is_some_and(word)
        })
    };
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/api");
    let mut seen = 0;
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(dir).expect("src/api") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("source");
        let text = text.split("#[cfg(test)]").next().unwrap_or_default();
        for code in literal_codes(text, path.ends_with("error.rs")) {
            seen += 1;
            if !documented(code) {
                missing.push(format!("{code} (sent in {})", path.display()));
            }
        }
    }
    assert!(
        seen > 40,
        "only {seen} codes found: is the source where it was?"
    );
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "codes the server sends that /openapi.json never names:\n{}",
        missing.join("\n")
    );
}

#[tokio::test]
async fn openapi_documents_every_route_the_server_serves() {
    let srv = common::sqlite().await;
    let c = &srv.client;
    let doc = c
        .raw("GET", "/openapi.json", None, &[], None)
        .await
        .expect("openapi");
    assert_eq!(doc.status, 200);
    assert!(doc.body["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.1")));
    let paths = doc.body["paths"].as_object().expect("paths");
    let routes = trustfold_server::api::routes();
    for (method, path, taken, _) in &routes {
        let op = paths.get(*path).and_then(|p| p.get(method.to_lowercase()));
        assert!(
            op.is_some(),
            "{method} {path} is served but not in /openapi.json"
        );
        // The query parameters the route takes are the ones the document lists.
        let mut documented: Vec<&str> = op
            .and_then(|o| o["parameters"].as_array())
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "query")
            .filter_map(|p| p["name"].as_str())
            .collect();
        documented.sort_unstable();
        let mut taken = taken.to_vec();
        taken.sort_unstable();
        assert_eq!(taken, documented, "{method} {path}: query parameters");
        // Every operation that touches the database declares its 5xx: 500, and 503
        // `database_unavailable` with `Retry-After` (the answer the server really gives
        // when the database is locked or unreachable).
        if !["/openapi.json", "/v1/server-key"].contains(path) {
            let responses = op.map(|o| &o["responses"]).expect("responses");
            let resolved = |status: &str| {
                let r = &responses[status];
                match r["$ref"].as_str() {
                    Some(to) => {
                        let name = to.trim_start_matches("#/components/responses/");
                        doc.body["components"]["responses"][name].clone()
                    }
                    None => r.clone(),
                }
            };
            assert!(resolved("500").is_object(), "{method} {path}: no 500");
            assert!(
                resolved("503")["headers"]["Retry-After"].is_object(),
                "{method} {path}: no 503 with Retry-After"
            );
        }
        // And the running server answers it (not the router's fallbacks).
        let concrete = path
            .replace("{payment_id}", &uuid::Uuid::new_v4().to_string())
            .replace("{webhook_id}", &uuid::Uuid::new_v4().to_string())
            .replace("{party_id}", &uuid::Uuid::new_v4().to_string())
            .replace("{policy_id}", "p");
        let r = c
            .raw(method, &concrete, None, &[], Some(b"{}".to_vec()))
            .await
            .expect("request");
        assert_ne!(r.body["code"], "route_not_found", "{method} {path}");
        assert_ne!(r.status, 405, "{method} {path}");
        assert!(r.status < 500, "{method} {path}: {}", r.status);
    }
    let documented: usize = paths
        .values()
        .map(|p| {
            p.as_object().map_or(0, |o| {
                o.keys()
                    .filter(|k| ["get", "post", "put", "delete", "patch"].contains(&k.as_str()))
                    .count()
            })
        })
        .sum();
    assert_eq!(
        documented,
        routes.len(),
        "/openapi.json documents routes the server does not serve"
    );
    // The router's own answers, for no operation in particular, are documented once.
    for (name, status, code) in [
        ("RouteNotFound", 404, "route_not_found"),
        ("MethodNotAllowed", 405, "method_not_allowed"),
    ] {
        let documented = &doc.body["components"]["responses"][name]["description"];
        assert!(
            documented.as_str().is_some_and(|d| d.contains(code)),
            "components.responses.{name}"
        );
        let path = if status == 404 {
            "/v2/nothing"
        } else {
            "/v1/payments"
        };
        let r = c
            .raw("DELETE", path, None, &[], None)
            .await
            .expect("request");
        expect_member(&r, status, "code", code);
    }
    srv.finish().await;
}

/// Commands do not wait for the read models; reads of the read models wait for this
/// process's own writes: every read right after a command sees it.
async fn reads_see_their_own_writes(srv: Server) {
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    let p = &f.payment;
    let path = format!("/v1/payments/{p}/commands");
    let broker = uuid::Uuid::new_v4();
    for i in 0..30 {
        // Invite and remove the same brokerage, in turn: one event per command.
        let command = if i % 2 == 0 {
            json!({"type": "Invite", "party": broker, "roles": ["brokerage"]})
        } else {
            json!({"type": "Remove", "party": broker})
        };
        let body = json!({"command": command,
                          "actor": {"party": f.agent, "role": "listing_agent"}});
        let r = c.post(&path, &key, &body).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let version = r.body["version"].as_u64().expect("version");
        let state = c.get(&format!("/v1/payments/{p}"), &key).await;
        assert_eq!(state.status, 200);
        assert_eq!(state.body["version"].as_u64(), Some(version), "command {i}");
        assert_eq!(
            state.body, r.body["state"],
            "read model = the command's state"
        );
        let list = c.get("/v1/payments?limit=500", &key).await;
        let row = list.body["payments"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["payment_id"] == json!(p)))
            .cloned()
            .unwrap_or_else(|| panic!("payment missing from the list: {}", list.body));
        assert_eq!(
            row["version"].as_u64(),
            Some(version),
            "list after command {i}"
        );
    }
    srv.finish().await;
}

on_both_engines!(reads_see_their_own_writes);

/// How many sessions hold the projection leader lock of this database (advisory locks
/// are per database; other tests' servers hold theirs).
async fn leaders(pool: &sqlx::PgPool) -> i64 {
    let key = trustfold_server::projections::LEADER_LOCK;
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1 \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind((key >> 32) & 0xffff_ffff)
    .bind(key & 0xffff_ffff)
    .fetch_one(pool)
    .await
    .expect("pg_locks")
}

/// Two server processes on one PostgreSQL database: exactly one runs the background
/// projection; both still read their own writes; when the leader stops, the other takes
/// over and projects in the background.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_projection_leader_across_processes_postgres() {
    let Some(mut srv) = common::postgres().await else {
        return;
    };
    let pool = sqlx::PgPool::connect(&srv.database).await.expect("pool");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while leaders(&pool).await != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first server leads"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = common::serve(common::config(&srv.database)).await;
    let c2 = Client::new(format!("http://{}", second.addr));
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        leaders(&pool).await,
        1,
        "one leader, the follower tried and failed"
    );

    // Read-your-writes in the follower (which does not project in the background) and in
    // the leader.
    for (i, client) in [&c2, c, &c2, c].iter().enumerate() {
        let r = client
            .command(
                &key,
                &f.payment,
                Some(&f.agent),
                "listing_agent",
                json!({"type": "Invite", "party": uuid::Uuid::new_v4(), "roles": if i < 2 { ["brokerage"] } else { ["lender"] }, "name": "x"}),
            )
            .await;
        let Ok(r) = r else {
            // The policy allows two brokerages and one lender; the fourth is refused.
            assert_eq!(i, 3);
            break;
        };
        let v = r.body["version"].as_u64().expect("version");
        let read = client
            .get(&format!("/v1/payments/{}", f.payment), &key)
            .await;
        assert_eq!(
            read.body["version"].as_u64(),
            Some(v),
            "read your own write"
        );
    }

    // Read-your-writes across the processes: a command taken by one is in the state the
    // other reads right after. The other learns of it by NOTIFY and catches its read
    // models up; a read that beats the NOTIFY finds the summary behind the stream's head
    // and folds from the log (that narrow race is not forced here).
    let g = open_and_join(c, &key).await.expect("open");
    let broker = uuid::Uuid::new_v4();
    for i in 0..12 {
        let (writer, reader) = if (i / 2) % 2 == 0 { (c, &c2) } else { (&c2, c) };
        let command = if i % 2 == 0 {
            json!({"type": "Invite", "party": broker, "roles": ["brokerage"]})
        } else {
            json!({"type": "Remove", "party": broker})
        };
        let r = writer
            .command(&key, &g.payment, Some(&g.agent), "listing_agent", command)
            .await
            .expect("command");
        let read = reader
            .get(&format!("/v1/payments/{}", g.payment), &key)
            .await;
        assert_eq!(read.status, 200, "{}", read.body);
        assert_eq!(
            read.body, r.body["state"],
            "command {i}: the other process's read"
        );
    }

    // The other read models too: the payment list, the inbox and the balances read in
    // one process right after another process took the commands (the funding ends in
    // `FundsAvailable`, which notifies the listing agent and moves money) show them.
    // (The other process reads first: a read in the writing process would catch the
    // read models up itself.)
    fund(c, &key, &g).await.expect("fund");
    let version = c2
        .get(&format!("/v1/payments/{}", g.payment), &key)
        .await
        .body["version"]
        .as_u64()
        .expect("version");
    let list = c2.get("/v1/payments?limit=500", &key).await;
    let listed = list.body["payments"]
        .as_array()
        .expect("payments")
        .iter()
        .find(|p| p["payment_id"] == g.payment.as_str())
        .cloned()
        .expect("listed");
    assert_eq!(listed["version"].as_u64(), Some(version), "{listed}");
    let inbox = c2
        .get(&format!("/v1/parties/{}/inbox", g.agent), &key)
        .await;
    let types = notice_types(&inbox);
    assert!(
        types.iter().any(|t| t == "FundsAvailable"),
        "{}",
        inbox.body
    );
    let balances = format!("/v1/payments/{}/balances", g.payment);
    let (theirs, ours) = (c2.get(&balances, &key).await, c.get(&balances, &key).await);
    assert!(
        ours.body.to_string().contains("\"5000.00\""),
        "{}",
        ours.body
    );
    assert_eq!(theirs.body, ours.body, "the other process's balances");

    // The leader stops: the follower takes over and projects without being asked.
    srv.stop().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while leaders(&pool).await != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the second server takes over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = c2
        .command(
            &key,
            &f.payment,
            Some(&f.agent),
            "listing_agent",
            json!({"type": "Invite", "party": uuid::Uuid::new_v4(), "roles": ["buyer_agent"], "name": "y"}),
        )
        .await
        .expect("invite");
    let v = r.body["version"].as_i64().expect("version");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let projected: Option<i64> =
            sqlx::query_scalar("SELECT version FROM payment_summary WHERE payment_id = $1")
                .bind(uuid::Uuid::parse_str(&f.payment).expect("uuid"))
                .fetch_optional(&pool)
                .await
                .expect("summary");
        if projected == Some(v) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new leader projects in the background ({projected:?} < {v})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pool.close().await;
    second.shutdown().await.expect("shutdown");
    srv.finish().await;
}

/// Runs `$body` with `$c` bound to a connection of the test's own to the server's
/// database, whichever engine it is.
macro_rules! on_own_connection {
    ($database:expr, $c:ident => $body:expr) => {{
        use sqlx::Connection;
        if $database.starts_with("postgres") {
            let mut $c = sqlx::PgConnection::connect($database)
                .await
                .expect("connect");
            $body
        } else {
            let mut $c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", $database))
                .await
                .expect("connect");
            $body
        }
    }};
}

/// A statement on the test's own connection to the server's database (to make the
/// database refuse a write the server is about to make, as a full disk or a broken
/// constraint would).
async fn on_database(database: &str, sql: &str) {
    use sqlx::Executor;
    on_own_connection!(database, c => {
        c.execute(sql).await.expect(sql);
    });
}

async fn count(database: &str, sql: &str) -> i64 {
    on_own_connection!(database, c => sqlx::query_scalar(sql).fetch_one(&mut c).await.expect(sql))
}

/// A trigger that makes the database refuse `op` (INSERT or UPDATE) on `table`.
async fn refuse(database: &str, table: &str, op: &str) {
    if database.starts_with("postgres") {
        on_database(
            database,
            "CREATE OR REPLACE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$",
        )
        .await;
        on_database(
            database,
            &format!(
                "CREATE TRIGGER test_refuse_{table} BEFORE {op} ON {table} FOR EACH ROW \
                 EXECUTE FUNCTION test_refuse()"
            ),
        )
        .await;
    } else {
        on_database(
            database,
            &format!(
                "CREATE TRIGGER test_refuse_{table} BEFORE {op} ON {table} \
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            ),
        )
        .await;
    }
}

/// Drops [`refuse`]'s trigger on `table`.
async fn allow(database: &str, table: &str) {
    if database.starts_with("postgres") {
        on_database(
            database,
            &format!("DROP TRIGGER test_refuse_{table} ON {table}"),
        )
        .await;
    } else {
        on_database(database, &format!("DROP TRIGGER test_refuse_{table}")).await;
    }
}

/// Tenant creation and key rotation are each one transaction: when the database refuses
/// the statement after the first, nothing of either is left behind (no tenant without
/// a key; no new key nobody received, no old key cut short).
async fn key_changes_are_all_or_nothing(srv: Server) {
    let c = &srv.client;
    let db = srv.database.clone();
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let tenants = count(&db, "SELECT COUNT(*) FROM tenants").await;

    // 1. The first key's insert fails after the tenant's.
    refuse(&db, "api_keys", "INSERT").await;
    let r = c.post("/v1/tenants", ADMIN, &json!({"name": "u"})).await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(r.body["code"], "internal_error", "{}", r.body);
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM tenants").await,
        tenants,
        "no tenant without a key"
    );
    allow(&db, "api_keys").await;

    // 2. The other keys' expiry fails after the new key's insert.
    let keys = count(&db, "SELECT COUNT(*) FROM api_keys").await;
    refuse(&db, "api_keys", "UPDATE").await;
    let r = c
        .post(
            "/v1/api-keys",
            &key,
            &json!({"expire_others_after_seconds": 60}),
        )
        .await;
    assert_eq!(r.status, 500, "{}", r.body);
    allow(&db, "api_keys").await;
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM api_keys").await,
        keys,
        "no new key that nobody received"
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM api_keys WHERE expires_at_us IS NOT NULL"
        )
        .await,
        0,
        "no key cut short"
    );
    assert_eq!(c.get("/v1/payments", &key).await.status, 200);

    // 3. With the database willing again, both work.
    let r = c
        .post(
            "/v1/api-keys",
            &key,
            &json!({"expire_others_after_seconds": 60}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(c.tenant(ADMIN, "u").await.is_ok());
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM tenants").await,
        tenants + 1
    );
    srv.finish().await;
}

on_both_engines!(key_changes_are_all_or_nothing);

/// The database refuses a write in the middle of the work: a keyed command whose
/// idempotency record cannot be stored stores none of its events either (one
/// transaction); read models the projector cannot write answer 500 instead of stale
/// rows (the payment's state, folded from the log, is still read), commands go on
/// meanwhile, and once the database takes writes again the read models catch up to
/// exactly what the log holds.
async fn a_refused_write_leaves_nothing_half_written(srv: Server) {
    let c = &srv.client;
    let db = srv.database.clone();
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    let p = f.payment.as_str();
    let stored = || count(&db, "SELECT COUNT(*) FROM events");
    let before = stored().await;
    let path = format!("/v1/payments/{p}/commands");
    let invite = json!({"command": {"type": "Invite", "party": uuid::Uuid::new_v4(),
        "roles": ["lender"], "name": "l"}, "actor": {"party": f.agent, "role": "listing_agent"}});

    // 1. The idempotency record is refused: the command's event is not stored.
    refuse(&db, "idempotency", "INSERT").await;
    let r = c.post_idem(&path, &key, "refused-1", &invite).await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(
        stored().await,
        before,
        "no event without its idempotency record"
    );
    let version = c.get(&format!("/v1/payments/{p}"), &key).await.body["version"].clone();
    allow(&db, "idempotency").await;
    // The same key afterwards runs the command once, and replays it after.
    let first = c.post_idem(&path, &key, "refused-1", &invite).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(
        first.body["state"]["version"].as_u64(),
        version.as_u64().map(|v| v + 1)
    );
    let again = c.post_idem(&path, &key, "refused-1", &invite).await;
    assert_eq!((again.status, &again.body), (200, &first.body));
    assert_eq!(stored().await, before + 1);

    // 2. The projector cannot write the inbox: commands still answer; reads of the read
    // models say 500 rather than answer from rows behind the log.
    refuse(&db, "inbox", "INSERT").await;
    fund(c, &key, &f).await.expect("commands go on");
    let inbox = format!("/v1/parties/{}/inbox", f.agent);
    let r = c.get(&inbox, &key).await;
    assert_eq!(r.status, 500, "{}", r.body);
    // The payment's state has the log to fall back on: it is read meanwhile, current.
    let r = c.get(&format!("/v1/payments/{p}"), &key).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "Held", "{}", r.body);
    allow(&db, "inbox").await;
    let r = c.get(&inbox, &key).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.to_string().contains("FundsAvailable"), "{}", r.body);
    let state = c.get(&format!("/v1/payments/{p}"), &key).await;
    let head = c.get(&format!("/v1/payments/{p}/head"), &key).await;
    assert_eq!(state.body["version"], head.body["seq"], "{}", head.body);
    let list = c.get("/v1/payments", &key).await;
    assert_eq!(
        list.body["payments"][0]["version"], head.body["seq"],
        "the summary: {}",
        list.body
    );
    srv.finish().await;
}

on_both_engines!(a_refused_write_leaves_nothing_half_written);

/// SQLite rolls a whole transaction back by itself when the disk fails under it (a full
/// disk, an I/O error; here a trigger's `RAISE(ROLLBACK)`, which does the same), so the
/// `ROLLBACK` the server's code sends afterwards fails. The single writer connection must
/// stay usable: once the database takes writes again the read models catch up, and an
/// append judged in a transaction (a stale cached state: another process on the same
/// file appended) gets its answer instead of a 500.
#[tokio::test]
async fn the_writer_survives_a_transaction_sqlite_rolled_back_itself_sqlite() {
    let srv = common::sqlite().await;
    let c = &srv.client;
    let db = srv.database.clone();
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    let p = f.payment.as_str();

    // The disk fails under the projector's transaction.
    on_database(
        &db,
        "CREATE TRIGGER test_disk_error BEFORE INSERT ON inbox \
         BEGIN SELECT RAISE(ROLLBACK, 'disk I/O error (test)'); END",
    )
    .await;
    fund(c, &key, &f).await.expect("commands go on");
    let inbox = format!("/v1/parties/{}/inbox", f.agent);
    let r = c.get(&inbox, &key).await;
    assert_eq!(r.status, 500, "{}", r.body);
    on_database(&db, "DROP TRIGGER test_disk_error").await;

    // The database takes writes again: the read models catch up.
    let r = c.get(&inbox, &key).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        notice_types(&r).iter().any(|t| t == "FundsAvailable"),
        "{}",
        r.body
    );
    let r = c.get("/v1/payments", &key).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Another process on the same file appends: this one's cached state is stale, so its
    // next append is judged in a transaction (and then decided again).
    let second = common::serve(common::config(&db)).await;
    let c2 = Client::new(format!("http://{}", second.addr));
    let broker = uuid::Uuid::new_v4();
    c2.command(
        &key,
        p,
        Some(&f.agent),
        "listing_agent",
        json!({"type": "Invite", "party": broker, "roles": ["brokerage"]}),
    )
    .await
    .expect("invite on the other process");
    let r = c
        .command(
            &key,
            p,
            Some(&f.agent),
            "listing_agent",
            json!({"type": "Remove", "party": broker}),
        )
        .await
        .expect("a stale cache is decided again");
    let head = c.get(&format!("/v1/payments/{p}/head"), &key).await;
    assert_eq!(r.body["version"], head.body["seq"], "{}", head.body);
    second.shutdown().await.expect("shutdown");
    srv.finish().await;
}

/// PostgreSQL drops every connection of the servers (a failover, a restart, a proxy that
/// cut them): the servers ride it out without a restart. Commands sent right after are
/// answered (a batch that met a dead connection is tried again, and the pool checks the
/// connections that were idle then), a stream held open on the other process still gets
/// them through LISTEN/NOTIFY, the read models go on, and one process leads the
/// projection again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_database_connections_are_ridden_out_postgres() {
    let Some(srv) = common::postgres().await else {
        return;
    };
    let mut cfg = common::config(&srv.database);
    cfg.http.poll_interval = Duration::from_secs(60); // only NOTIFY delivers in time
    let second = common::serve(cfg).await;
    let c2 = Client::new(format!("http://{}", second.addr));
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    let version = c
        .get(&format!("/v1/payments/{}", f.payment), &key)
        .await
        .body["version"]
        .as_u64()
        .expect("version");
    let pool = sqlx::PgPool::connect(&srv.database).await.expect("pool");
    // Fill both servers' pools with idle connections.
    let reads: Vec<_> = (0..8)
        .map(|i| {
            let client = if i % 2 == 0 { c.clone() } else { c2.clone() };
            let key = key.clone();
            tokio::spawn(async move { client.get("/v1/payments", &key).await.status })
        })
        .collect();
    for r in reads {
        assert_eq!(r.await.expect("read"), 200);
    }
    let mut stream = c2
        .http
        .get(format!("{}/v1/payments/{}/stream", c2.base, f.payment))
        .bearer_auth(&key)
        .header("last-event-id", version.to_string())
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), 200);

    let terminated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()) t",
    )
    .fetch_one(&pool)
    .await
    .expect("terminate");
    assert!(terminated >= 6, "the servers' connections: {terminated}");

    // Commands on both processes, each answered once and in order.
    let path = format!("/v1/payments/{}/commands", f.payment);
    let lender = uuid::Uuid::new_v4();
    for (i, client) in [c, &c2, c, &c2, c, &c2].iter().enumerate() {
        let command = if i % 2 == 0 {
            json!({"type": "Invite", "party": lender, "roles": ["lender"], "name": "l"})
        } else {
            json!({"type": "Remove", "party": lender})
        };
        let r = client
            .post_idem(
                &path,
                &key,
                &format!("after-drop-{i}"),
                &json!({"command": command, "actor": {"party": f.agent, "role": "listing_agent"}}),
            )
            .await;
        assert_eq!(r.status, 200, "command {i}: {}", r.body);
        assert_eq!(r.body["version"].as_u64(), Some(version + 1 + i as u64));
    }
    // The other process's stream got all six.
    let mut buf = String::new();
    let got = sse_events(&mut stream, 6, &mut buf).await;
    let seqs: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    assert_eq!(seqs, (version + 1..=version + 6).collect::<Vec<_>>());
    // Reads of the read models on both processes see them.
    for client in [c, &c2] {
        let list = client.get("/v1/payments", &key).await;
        assert_eq!(list.status, 200, "{}", list.body);
        assert_eq!(
            list.body["payments"][0]["version"].as_u64(),
            Some(version + 6)
        );
    }
    // One process leads the projection again (its lock's session was cut too).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while leaders(&pool).await != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "a projection leader again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(stream);
    second.shutdown().await.expect("shutdown");
    srv.finish().await;
}

/// A TCP proxy between a server and PostgreSQL that can cut the database off: `down`
/// drops every connection through it (a database host down, a partition that resets
/// connections) and `stall` stops forwarding but keeps them open (packets dropped:
/// nothing ever answers); both refuse new connections until `up`.
struct DbProxy {
    addr: std::net::SocketAddr,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: std::sync::Arc<tokio::sync::Notify>,
}

impl DbProxy {
    async fn start(target: std::net::SocketAddr) -> DbProxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cut = std::sync::Arc::new(tokio::sync::Notify::new());
        let (d, n, st) = (down.clone(), cut.clone(), stalled.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    continue; // dropped: the connection closes at once
                }
                let (n, st) = (n.clone(), st.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = n.notified() => {
                            if st.load(Ordering::SeqCst) {
                                // Held open, silent, until the test ends.
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                            }
                        }
                    }
                });
            }
        });
        DbProxy {
            addr,
            down,
            stalled,
            cut,
        }
    }

    fn down(&self) {
        self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    fn stall(&self) {
        self.stalled
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.down();
    }

    fn up(&self) {
        self.down.store(false, std::sync::atomic::Ordering::SeqCst);
        self.stalled
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The database cannot be reached for a while: reads and commands are answered 503
/// `database_unavailable` with `Retry-After` within seconds (not a hang, not a 500),
/// and when it is back the server goes on without a restart — commands, read models
/// (the projection leader's lock taken again) and live streams resumed with
/// `Last-Event-ID`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_database_is_a_503_until_it_is_back_postgres() {
    unreachable_database(false).await;
}

/// The same with a database that stops answering but keeps its connections open
/// (packets dropped): the request deadline answers 503 instead of a request hanging
/// until TCP gives up, and the appender, stuck on a commit nobody answers, lets go
/// after its own deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_database_is_a_503_until_it_is_back_postgres() {
    unreachable_database(true).await;
}

/// Sends a request again, as a client does, while it is answered 503 (until
/// `deadline`); the last answer.
async fn retried_on_503<T, F: std::future::Future<Output = T>>(
    deadline: std::time::Instant,
    status: impl Fn(&T) -> u16,
    mut send: impl FnMut() -> F,
) -> T {
    loop {
        let r = send().await;
        if status(&r) != 503 || std::time::Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Command `n` of a run that invites a lender and removes it again, in turn.
fn lender_in_and_out(f: &common::scenario::Flow, lender: uuid::Uuid, n: usize) -> Value {
    let command = if n % 2 == 0 {
        json!({"type": "Invite", "party": lender, "roles": ["lender"], "name": "l"})
    } else {
        json!({"type": "Remove", "party": lender})
    };
    json!({"command": command, "actor": {"party": f.agent, "role": "listing_agent"}})
}

async fn unreachable_database(silent: bool) {
    let Some((admin_url, name, url)) = common::postgres_database().await else {
        return;
    };
    let (_, rest) = url.split_once('@').expect("url has a host");
    let (host, db) = rest.split_once('/').expect("url has a database");
    let target: std::net::SocketAddr = host.parse().expect("host:port");
    let proxy = DbProxy::start(target).await;
    let proxied = format!("postgres://postgres@{}/{db}", proxy.addr);
    let mut config = common::config(&proxied);
    config.http.request_timeout = Duration::from_secs(2);
    let running = common::serve(config).await;
    let c = Client::new(format!("http://{}", running.addr));
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(&c, &key).await.expect("open");
    let path = format!("/v1/payments/{}/commands", f.payment);
    let version = c
        .get(&format!("/v1/payments/{}", f.payment), &key)
        .await
        .body["version"]
        .as_u64()
        .expect("version");
    // One body per key: a retry sends the same request.
    let parties = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()];
    let invite = |i: usize| {
        json!({"command": {"type": "Invite", "party": parties[i], "roles": ["brokerage"], "name": format!("b{i}")},
               "actor": {"party": f.agent, "role": "listing_agent"}})
    };
    // A second process, polling too slowly to matter: after the outage it hears of new
    // commands only through LISTEN/NOTIFY, so both its LISTEN connection and the first
    // process's notifier must have come back on their own (a silent one answers no
    // ping and raises no error).
    let mut second = common::config(&proxied);
    second.http.request_timeout = Duration::from_secs(2);
    second.http.poll_interval = Duration::from_secs(600);
    let second = common::serve(second).await;
    let c2 = Client::new(format!("http://{}", second.addr));
    assert_eq!(c2.get("/v1/payments", &key).await.status, 200);

    if silent {
        proxy.stall();
    } else {
        proxy.down();
    }
    for i in 0..2 {
        let started = std::time::Instant::now();
        let (k, body) = (format!("down-{i}"), invite(i));
        let (list, command) = tokio::join!(
            c.get("/v1/payments", &key),
            c.post_idem(&path, &key, &k, &body)
        );
        for r in [&list, &command] {
            expect_member(r, 503, "code", "database_unavailable");
            assert_eq!(r.headers["retry-after"], "1");
            assert!(
                !r.body["detail"].as_str().unwrap_or("").contains("error"),
                "the database's own words stay in the log: {}",
                r.body
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "answered in {:?}",
            started.elapsed()
        );
    }

    proxy.up();
    // Retried with the same keys, as a client does on 503, each command is applied
    // once: run now, or — a command whose request met the deadline while its append
    // waited in the appender's queue — found stored and answered from its record.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for i in 0..2 {
        let (k, body) = (format!("down-{i}"), invite(i));
        let r = retried_on_503(
            deadline,
            |r: &common::scenario::Reply| r.status,
            || c.post_idem(&path, &key, &k, &body),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["version"].as_u64(), Some(version + 1 + i as u64));
    }
    // A read may meet a projection run still stuck on the silent connection until its
    // own deadline: a 503, retried.
    let list = retried_on_503(
        deadline,
        |r: &common::scenario::Reply| r.status,
        || c.get("/v1/payments", &key),
    )
    .await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(
        list.body["payments"][0]["version"].as_u64(),
        Some(version + 2)
    );
    let mut stream = c
        .http
        .get(format!("{}/v1/payments/{}/stream", c.base, f.payment))
        .bearer_auth(&key)
        .header("last-event-id", version.to_string())
        .send()
        .await
        .expect("stream");
    let mut buf = String::new();
    let got = sse_events(&mut stream, 2, &mut buf).await;
    assert_eq!(
        got.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![version + 1, version + 2]
    );
    drop(stream);
    // The other process's stream, opened (as a client reconnects: again on 503) after
    // the outage, gets the backlog, then a new command through NOTIFY.
    let mut far = retried_on_503(
        deadline,
        |r: &reqwest::Response| r.status().as_u16(),
        || async {
            c2.http
                .get(format!("{}/v1/payments/{}/stream", c2.base, f.payment))
                .bearer_auth(&key)
                .header("last-event-id", version.to_string())
                .send()
                .await
                .expect("stream")
        },
    )
    .await;
    assert_eq!(far.status(), 200);
    let mut buf = String::new();
    let got = sse_events(&mut far, 2, &mut buf).await;
    assert_eq!(got.len(), 2);
    // A notice sent before the second process listens again is missed (its streams
    // poll for those): send a command every second until one is heard.
    let mut sent = 0;
    let lender = uuid::Uuid::new_v4();
    let heard = loop {
        let r = c
            .post_idem(
                &path,
                &key,
                &format!("after-{sent}"),
                &lender_in_and_out(&f, lender, sent),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        sent += 1;
        if let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(1), far.chunk())
            .await
            .map(Result::ok)
            .map(Option::flatten)
        {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            if buf.contains("id:") {
                break true;
            }
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
    };
    assert!(
        heard,
        "a command reached the other process's stream through NOTIFY"
    );
    drop(far);
    second.shutdown().await.expect("shutdown");
    running.shutdown().await.expect("shutdown");
    common::drop_database(&admin_url, &name).await;
}

/// The signature of a command's answer, verified as `Trustfold-Signature` of `r`'s body:
/// the answer to `/commands?nonce=N` about `payment`, asked with `credential`.
fn command_signature(
    r: &common::scenario::Reply,
    key: &PublicKey,
    payment: &str,
    nonce: &str,
    credential: &str,
) -> Result<(), String> {
    let sig = r
        .headers
        .get("trustfold-signature")
        .and_then(|v| v.to_str().ok())
        .ok_or("no Trustfold-Signature")?;
    let pay = trustfold_core::id::PaymentId(payment.parse().map_err(|_| "payment id")?);
    let what = SignedResponse::with_nonce("/commands", nonce);
    SignedResponse::verify(key, pay, &what, credential, &r.bytes, sig).map_err(|e| e.to_string())
}

/// A command sent with a `nonce` gets a signed answer (opening a payment, commands, a
/// replay under the key signed for the retry's nonce, a participant's redacted answer
/// for its token); without one, and for refusals, no signature; a bad nonce is a 400
/// that leaves the key free.
async fn signed_command_answers(srv: Server) {
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let pk: PublicKey = c
        .raw("GET", "/v1/server-key", None, &[], None)
        .await
        .expect("key")
        .body["public_key"]
        .as_str()
        .expect("hex")
        .parse()
        .expect("key");
    let f = open_and_join(c, &key).await.expect("open");
    let n1 = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let n2 = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    // Opening a payment: the payment is the answer's.
    let open = json!({
        "policy": "earnest-money",
        "amount": {"amount": "1000.00", "currency": "USD"},
        "initiator": {"party": f.agent, "roles": ["listing_agent"]}
    });
    let r = c
        .post_idem(&format!("/v1/payments?nonce={n1}"), &key, "open-1", &open)
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let opened = r.body["payment_id"].as_str().expect("id").to_owned();
    command_signature(&r, &pk, &opened, n1, &key).expect("the opening's answer is signed");
    assert!(command_signature(&r, &pk, &f.payment, n1, &key).is_err());
    // Replayed for a retry with another nonce: the same bytes, signed for that one.
    let again = c
        .post_idem(&format!("/v1/payments?nonce={n2}"), &key, "open-1", &open)
        .await;
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.bytes, r.bytes);
    command_signature(&again, &pk, &opened, n2, &key).expect("signed for the retry");
    assert!(command_signature(&again, &pk, &opened, n1, &key).is_err());
    // Without a nonce: not signed.
    let plain = c
        .post(
            "/v1/payments",
            &key,
            &json!({"policy": "earnest-money", "amount": {"amount": "1000.00", "currency": "USD"},
                "initiator": {"party": f.agent, "roles": ["listing_agent"]}}),
        )
        .await;
    assert_eq!(plain.status, 201, "{}", plain.body);
    assert!(plain.headers.get("trustfold-signature").is_none());

    // A command.
    let p = &f.payment;
    let path = format!("/v1/payments/{p}/commands");
    let terms = c.get(&format!("/v1/payments/{p}"), &key).await.body["terms_hash"].clone();
    let agree = json!({"command": {"type": "AgreeToTerms", "terms_hash": terms},
        "actor": {"party": f.buyer, "role": "buyer"}});
    let r = c
        .post_idem(&format!("{path}?nonce={n1}"), &key, "agree-1", &agree)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.headers.get("idempotent-replayed").is_none());
    command_signature(&r, &pk, p, n1, &key).expect("the command's answer is signed");
    let e = command_signature(&r, &pk, p, n2, &key).expect_err("another nonce");
    assert!(e.contains("was not signed"), "{e}");
    assert!(command_signature(&r, &pk, p, n1, "tft_other").is_err());
    let again = c
        .post_idem(&format!("{path}?nonce={n2}"), &key, "agree-1", &agree)
        .await;
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.bytes, r.bytes);
    command_signature(&again, &pk, p, n2, &key).expect("the replay is signed for its nonce");

    // A refusal (a stranger acting) is not signed.
    let refused = c
        .post(
            &format!("{path}?nonce={n1}"),
            &key,
            &json!({"command": {"type": "AgreeToTerms", "terms_hash": terms},
                "actor": {"party": uuid::Uuid::new_v4(), "role": "buyer"}}),
        )
        .await;
    assert!(refused.status >= 400, "{}", refused.body);
    assert!(refused.headers.get("trustfold-signature").is_none());

    // A bad nonce is refused before anything runs: the key stays free.
    let seller = json!({"command": {"type": "AgreeToTerms", "terms_hash": terms},
        "actor": {"party": f.seller, "role": "seller"}});
    let bad = c
        .post_idem(&format!("{path}?nonce=short"), &key, "agree-2", &seller)
        .await;
    expect_member(&bad, 400, "code", "invalid_parameter");
    assert_eq!(bad.body["field"], "nonce", "{}", bad.body);
    let ok = c
        .post_idem(&format!("{path}?nonce={n2}"), &key, "agree-2", &seller)
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.headers.get("idempotent-replayed").is_none());
    command_signature(&ok, &pk, p, n2, &key).expect("signed");

    // A participant's answer (its view) is signed for its token.
    let token = c.participant_token(&key, &opened, &f.agent, 60).await;
    let r = c
        .post(
            &format!("/v1/payments/{opened}/commands?nonce={n1}"),
            &token,
            &json!({"command": {"type": "Invite", "party": uuid::Uuid::new_v4(), "roles": ["buyer"]}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    command_signature(&r, &pk, &opened, n1, &token).expect("signed for the token");
    assert!(command_signature(&r, &pk, &opened, n1, &key).is_err());
}

on_both_engines!(signed_command_answers);

/// A bank's notice names a transfer by its reference only: `POST /v1/rail-notices`
/// finds the tenant's payment that submitted it (even a moment ago), runs `RailNotice`
/// as the rail, idempotently; an unknown reference is 404, one two payments used is
/// 409, and another tenant's references are not this tenant's.
async fn rail_notices_by_reference(srv: Server) {
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let other = c.tenant(ADMIN, "u").await.expect("tenant");
    let submit = |f: &common::scenario::Flow, rail_ref: &'static str| {
        let f = f.clone();
        let key = key.clone();
        async move {
            common::scenario::agree(c, &key, &f).await.expect("agree");
            let p = f.payment.as_str();
            c.command(&key, p, Some(&f.buyer), "buyer", json!({"type": "AttachFundingMethod",
                "method": {"rail": "wire", "institution": "First Bank", "account_last4": "4321", "holder": "Bo"}}))
                .await
                .expect("method");
            c.command(&key, p, Some(&f.buyer), "buyer", json!({"type": "SubmitFunding",
                "amount": {"amount": "5000.00", "currency": "USD"}, "rail": "wire", "rail_ref": rail_ref}))
                .await
                .expect("submit");
        }
    };
    let f = open_and_join(c, &key).await.expect("open");
    submit(&f, "WIRE-77").await;
    let settled = json!({"rail_ref": "WIRE-77", "notice": {"kind": "settled"}});
    // Right after the submission: the lookup waits for the read model.
    let r = c
        .post_idem("/v1/rail-notices", &key, "bank-1", &settled)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["payment_id"], f.payment.as_str());
    assert_eq!(r.body["events"][0]["event"]["type"], "FundingSettled");
    assert_eq!(r.body["events"][0]["event"]["actor"]["role"], "rail");
    let version = r.body["version"].clone();
    let again = c
        .post_idem("/v1/rail-notices", &key, "bank-1", &settled)
        .await;
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.bytes, r.bytes);
    // The bank sending the same notice again under another key records nothing more.
    let dup = c
        .post_idem("/v1/rail-notices", &key, "bank-2", &settled)
        .await;
    assert_eq!(dup.status, 200, "{}", dup.body);
    assert_eq!(dup.body["version"], version);
    assert_eq!(dup.body["events"].as_array().map(Vec::len), Some(0));

    // Unknown to this tenant, whoever else used the reference: held for this tenant
    // (202), and only this tenant sees it.
    let r = c
        .post(
            "/v1/rail-notices",
            &key,
            &json!({"rail_ref": "WIRE-404", "notice": {"kind": "settled"}}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["status"], "held");
    assert_eq!(r.body["rail_ref"], "WIRE-404");
    let r = c.post("/v1/rail-notices", &other, &settled).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let held = r.body["id"].as_str().expect("id").to_owned();
    let r = c.get(&format!("/v1/rail-notices/{held}"), &other).await;
    assert_eq!(r.body["status"], "held", "{}", r.body);
    let r = c.get(&format!("/v1/rail-notices/{held}"), &key).await;
    expect_member(&r, 404, "code", "unknown_rail_notice");
    // Bad notices are the core's 400s; participants may not send them.
    let r = c
        .post(
            "/v1/rail-notices",
            &key,
            &json!({"rail_ref": "WIRE-77", "notice": {"kind": "lost"}}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = c
        .post("/v1/rail-notices", &key, &json!({"rail_ref": "WIRE-77"}))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let token = c.participant_token(&key, &f.payment, &f.buyer, 60).await;
    let r = c.post("/v1/rail-notices", &token, &settled).await;
    expect_member(&r, 403, "code", "token_scope");

    // A reference two of the tenant's payments used: 409 naming both.
    let g = open_and_join(c, &key).await.expect("open");
    submit(&g, "WIRE-77").await;
    let r = c.post("/v1/rail-notices", &key, &settled).await;
    expect_member(&r, 409, "code", "ambiguous_rail_ref");
    let detail = r.body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&f.payment) && detail.contains(&g.payment),
        "{detail}"
    );
    // Listed by reference.
    let r = c.get("/v1/payments?rail_ref=WIRE-77", &key).await;
    let mut listed: Vec<&str> = r.body["payments"]
        .as_array()
        .expect("payments")
        .iter()
        .filter_map(|p| p["payment_id"].as_str())
        .collect();
    listed.sort_unstable();
    let mut both = vec![f.payment.as_str(), g.payment.as_str()];
    both.sort_unstable();
    assert_eq!(listed, both);
    let r = c.get("/v1/payments?rail_ref=WIRE-77", &other).await;
    assert_eq!(r.body["payments"].as_array().map(Vec::len), Some(0));
    srv.finish().await;
}

on_both_engines!(rail_notices_by_reference);

/// A wire that arrived short: the bank's notice says what arrived, the funding counts
/// that much and the payment awaits the rest; a settlement of more than the transfer
/// is a 422 with the rule's code, and nothing is recorded.
#[tokio::test]
async fn a_short_settlement_over_http() {
    let srv = common::sqlite().await;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    common::scenario::agree(c, &key, &f).await.expect("agree");
    let p = f.payment.as_str();
    c.command(
        &key,
        p,
        Some(&f.buyer),
        "buyer",
        json!({"type": "SubmitFunding",
        "amount": {"amount": "5000.00", "currency": "USD"}, "rail": "wire", "rail_ref": "WIRE-S"}),
    )
    .await
    .expect("submit");
    let over = c
        .post(
            "/v1/rail-notices",
            &key,
            &json!({"rail_ref": "WIRE-S", "notice": {"kind": "settled",
                    "amount": {"amount": "5000.01", "currency": "USD"}}}),
        )
        .await;
    assert_eq!(over.status, 422, "{}", over.body);
    assert_eq!(over.body["code"], "settlement_exceeds_transfer");
    let r = c
        .post(
            "/v1/rail-notices",
            &key,
            &json!({"rail_ref": "WIRE-S", "notice": {"kind": "settled",
                    "amount": {"amount": "4975.00", "currency": "USD"}}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["events"][0]["event"]["type"], "FundingSettled");
    assert_eq!(
        r.body["events"][0]["event"]["data"]["amount"]["amount"],
        "4975.00"
    );
    assert_eq!(r.body["events"][1]["event"]["type"], "FundsAvailable");
    let state = c.get(&format!("/v1/payments/{p}"), &key).await.body;
    assert_eq!(state["status"], "AwaitingFunds");
    assert_eq!(state["funding"]["attempts"][0]["short"]["amount"], "25.00");
    srv.finish().await;
}

/// Runs one SQL statement on the server's database, behind its back (a crash's
/// leftovers).
async fn run_sql(database: &str, sql: &str) {
    use sqlx::Connection as _;
    if database.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(database)
            .await
            .expect("connect");
        sqlx::query(sql).execute(&mut conn).await.expect(sql);
    } else {
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{database}"))
            .await
            .expect("open");
        sqlx::query(sql).execute(&mut conn).await.expect(sql);
    }
}

/// A payment agreed by its parties, with the buyer's ACH method attached: ready for
/// `SubmitFunding`.
async fn ach_payment(c: &common::scenario::Client, key: &str) -> common::scenario::Flow {
    let f = open_and_join(c, key).await.expect("open");
    common::scenario::agree(c, key, &f).await.expect("agree");
    c.command(key, &f.payment, Some(&f.buyer), "buyer", json!({"type": "AttachFundingMethod",
        "method": {"rail": "ach", "institution": "First Bank", "account_last4": "4321", "holder": "Bo"}}))
        .await
        .expect("method");
    f
}

/// The buyer of `f` submits the whole 5,000.00 USD over ACH under `rail_ref`.
async fn submit_ach(
    c: &common::scenario::Client,
    key: &str,
    f: &common::scenario::Flow,
    rail_ref: &str,
) {
    c.command(
        key,
        &f.payment,
        Some(&f.buyer),
        "buyer",
        json!({"type": "SubmitFunding",
        "amount": {"amount": "5000.00", "currency": "USD"}, "rail": "ach", "rail_ref": rail_ref}),
    )
    .await
    .expect("submit");
}

/// `id` as an SQL literal of the server's database (SQLite keeps ids as 16-byte blobs).
fn uuid_literal(database: &str, id: &str) -> String {
    let id: uuid::Uuid = id.parse().expect("an id");
    if database.starts_with("postgres") {
        format!("'{id}'")
    } else {
        format!("X'{}'", id.simple())
    }
}

/// The held notice `id` once the server settled it (applied or refused), within 40 s (a
/// notice whose run failed is tried again after a pause doubling from 1 s).
async fn settled_notice(c: &common::scenario::Client, key: &str, id: &str) -> Value {
    for _ in 0..800 {
        let r = c.get(&format!("/v1/rail-notices/{id}"), key).await;
        assert_eq!(r.status, 200, "{}", r.body);
        if r.body["status"] != "held" && r.body["status"] != "applying" {
            return r.body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the held notice {id} was never applied");
}

/// Two different notices sent at once under one Idempotency-Key, before any payment
/// knows the reference: each answer that is not a refusal holds its own request's
/// notice, and exactly one of the two is held (the other is 422
/// `idempotency_key_reused`).
#[tokio::test]
async fn one_key_racing_with_two_held_notices_answers_each_its_own() {
    let srv = common::sqlite().await;
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    for i in 0..12 {
        let rail_ref = format!("RACE-{i}");
        let settled = json!({"rail_ref": rail_ref, "notice": {"kind": "settled"}});
        let failed = json!({"rail_ref": rail_ref,
            "notice": {"kind": "failed", "code": "R03", "reason": "no account"}});
        let idem = format!("race-{i}");
        let (a, b) = tokio::join!(
            c.post_idem("/v1/rail-notices", &key, &idem, &settled),
            c.post_idem("/v1/rail-notices", &key, &idem, &failed),
        );
        let mut held = 0;
        for (r, sent) in [(&a, &settled), (&b, &failed)] {
            match r.status {
                202 => {
                    assert_eq!(r.body["notice"], sent["notice"], "{}", r.body);
                    held += 1;
                }
                422 => assert_eq!(r.body["code"], "idempotency_key_reused", "{}", r.body),
                _ => panic!("{} {}", r.status, r.body),
            }
        }
        assert_eq!(held, 1, "one of {} / {}", a.body, b.body);
    }
    srv.finish().await;
}

/// A bank's notices that overtake the transfer's submission are held (202, signed about
/// no payment; the same key replays the held answer) and, once the payment records the
/// transfer, applied by the server in the order received: here a settlement and then a
/// return (the payment ends up returned, not settled), and a conflicting failure is
/// refused with the rule's code. The list pages through them by status and reference.
async fn early_rail_notices_are_held_then_applied(srv: Server) {
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let pk: PublicKey = c
        .raw("GET", "/v1/server-key", None, &[], None)
        .await
        .expect("key")
        .body["public_key"]
        .as_str()
        .expect("hex")
        .parse()
        .expect("key");
    let f = ach_payment(c, &key).await;
    let p = f.payment.as_str();

    // Three notices about ACH-9 before the buyer's SubmitFunding is recorded.
    let nonce = "cccccccccccccccccccccccccccccccc";
    let settled = json!({"rail_ref": "ACH-9", "notice": {"kind": "settled"}});
    let first = c
        .post_idem(
            &format!("/v1/rail-notices?nonce={nonce}"),
            &key,
            "bank-evt-1",
            &settled,
        )
        .await;
    assert_eq!(first.status, 202, "{}", first.body);
    assert_eq!(first.body["status"], "held");
    assert_eq!(first.body["payment_id"], Value::Null);
    assert_eq!(first.body["notice"], json!({"kind": "settled"}));
    command_signature(&first, &pk, &uuid::Uuid::nil().to_string(), nonce, &key)
        .expect("a held answer is signed about no payment");
    let again = c
        .post_idem("/v1/rail-notices", &key, "bank-evt-1", &settled)
        .await;
    assert_eq!(again.status, 202, "{}", again.body);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.bytes, first.bytes);
    let returned = json!({"rail_ref": "ACH-9",
        "notice": {"kind": "returned", "code": "R01", "reason": "insufficient funds"}});
    let second = c.post("/v1/rail-notices", &key, &returned).await;
    assert_eq!(second.status, 202, "{}", second.body);
    let failed = json!({"rail_ref": "ACH-9",
        "notice": {"kind": "failed", "code": "R03", "reason": "no account"}});
    let third = c.post("/v1/rail-notices", &key, &failed).await;
    assert_eq!(third.status, 202, "{}", third.body);
    let ids: Vec<String> = [&first, &second, &third]
        .iter()
        .map(|r| r.body["id"].as_str().expect("id").to_owned())
        .collect();

    // Listed oldest first, a page at a time.
    let page = c
        .get("/v1/rail-notices?status=held&rail_ref=ACH-9&limit=2", &key)
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let listed: Vec<&str> = page.body["rail_notices"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert_eq!(listed, [ids[0].as_str(), ids[1].as_str()]);
    assert_eq!(page.body["has_more"], true);
    let next = page.body["next"].as_str().expect("next").to_owned();
    let page = c
        .get(
            &format!("/v1/rail-notices?rail_ref=ACH-9&after={next}"),
            &key,
        )
        .await;
    assert_eq!(
        page.body["rail_notices"][0]["id"],
        ids[2].as_str(),
        "{}",
        page.body
    );
    assert_eq!(page.body["has_more"], false);
    for (bad, code) in [
        ("status=lost", "invalid_parameter"),
        ("after=not-an-id", "invalid_id"),
        ("limit=0", "invalid_parameter"),
        ("state=held", "unknown_parameter"),
    ] {
        let r = c.get(&format!("/v1/rail-notices?{bad}"), &key).await;
        expect_member(&r, 400, "code", code);
    }
    let r = c
        .get(
            &format!("/v1/rail-notices?after={}", uuid::Uuid::nil()),
            &key,
        )
        .await;
    expect_member(&r, 400, "code", "invalid_parameter");
    let token = c.participant_token(&key, p, &f.buyer, 60).await;
    let r = c.get("/v1/rail-notices", &token).await;
    expect_member(&r, 403, "code", "token_scope");

    // The transfer is recorded: the server applies the notices in the order received.
    submit_ach(c, &key, &f, "ACH-9").await;
    let outcomes = [
        settled_notice(c, &key, &ids[0]).await,
        settled_notice(c, &key, &ids[1]).await,
        settled_notice(c, &key, &ids[2]).await,
    ];
    assert_eq!(outcomes[0]["status"], "applied", "{}", outcomes[0]);
    assert_eq!(outcomes[0]["payment_id"], p);
    assert!(outcomes[0]["settled_at"].is_string());
    assert_eq!(outcomes[1]["status"], "applied", "{}", outcomes[1]);
    assert_eq!(outcomes[2]["status"], "refused", "{}", outcomes[2]);
    assert_eq!(outcomes[2]["payment_id"], p);
    assert_eq!(
        outcomes[2]["refusal"]["code"], "notice_conflict",
        "{}",
        outcomes[2]
    );
    // The payment's log: settled first, then returned, as the rail's.
    let h = c.get(&format!("/v1/payments/{p}/events"), &key).await;
    let types: Vec<&str> = h.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["event"]["type"].as_str())
        .filter(|t| t.starts_with("Funding"))
        .collect();
    assert_eq!(
        types,
        [
            "FundingDeadlineSet",
            "FundingMethodAttached",
            "FundingSubmitted",
            "FundingSettled",
            "FundingReturned"
        ],
        "{}",
        h.body
    );
    let rail_events = h.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["event"]["actor"]["role"] == "rail")
        .count();
    assert_eq!(rail_events, 2, "{}", h.body);
    // Each by its own notice, in the order received.
    let causes: Vec<&str> = h.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["event"]["actor"]["role"] == "rail")
        .filter_map(|e| e["event"]["causation"].as_str())
        .collect();
    assert_eq!(causes, [ids[0].as_str(), ids[1].as_str()], "{}", h.body);
    let r = c.get("/v1/rail-notices?status=held", &key).await;
    assert_eq!(r.body["rail_notices"], json!([]), "{}", r.body);

    // A crash between a held notice's append and its status update (here: the applied
    // notices set back as the crash would have left them, claimed or not), and since
    // then a second payment used the same reference: run again, each finds its events
    // stored, records nothing new and ends applied to its payment (not refused as
    // ambiguous).
    let g = ach_payment(c, &key).await;
    submit_ach(c, &key, &g, "ACH-9").await;
    let version = h.body["events"].as_array().map(Vec::len);
    for (id, left) in [(&ids[0], "applying"), (&ids[1], "held")] {
        let reset = format!(
            "UPDATE held_rail_notices SET status = '{left}', payment_id = NULL, \
             settled_at_us = NULL WHERE notice_id = {}",
            uuid_literal(&srv.database, id)
        );
        run_sql(&srv.database, &reset).await;
    }
    for id in &ids[..2] {
        let again = settled_notice(c, &key, id).await;
        assert_eq!(again["status"], "applied", "{again}");
        assert_eq!(again["payment_id"], p, "{again}");
    }
    let h = c.get(&format!("/v1/payments/{p}/events"), &key).await;
    assert_eq!(
        h.body["events"].as_array().map(Vec::len),
        version,
        "{}",
        h.body
    );

    // A notice about a transfer that will never come is dismissed: it stops waiting
    // (dismissing it again answers the same); an applied one can no longer be
    // dismissed; another tenant cannot dismiss it.
    let stray = json!({"rail_ref": "ACH-NEVER", "notice": {"kind": "settled"}});
    let r = c.post("/v1/rail-notices", &key, &stray).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let stray_id = r.body["id"].as_str().expect("id").to_owned();
    let other = c.tenant(ADMIN, "u").await.expect("tenant");
    let r = c
        .raw(
            "DELETE",
            &format!("/v1/rail-notices/{stray_id}"),
            Some(&other),
            &[],
            None,
        )
        .await
        .expect("delete");
    expect_member(&r, 404, "code", "unknown_rail_notice");
    for _ in 0..2 {
        let r = c
            .raw(
                "DELETE",
                &format!("/v1/rail-notices/{stray_id}"),
                Some(&key),
                &[],
                None,
            )
            .await
            .expect("delete");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["status"], "dismissed");
    }
    let r = c
        .raw(
            "DELETE",
            &format!("/v1/rail-notices/{}", ids[0]),
            Some(&key),
            &[],
            None,
        )
        .await
        .expect("delete");
    expect_member(&r, 409, "code", "rail_notice_settled");
    let r = c.get("/v1/rail-notices?status=dismissed", &key).await;
    assert_eq!(
        r.body["rail_notices"][0]["id"],
        stray_id.as_str(),
        "{}",
        r.body
    );
    srv.finish().await;
}

on_both_engines!(early_rail_notices_are_held_then_applied);

/// One integer from `database` (a column of the server's tables a test looks at).
async fn sql_i64(database: &str, sql: &str) -> i64 {
    use sqlx::Connection as _;
    if database.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(database)
            .await
            .expect("connect");
        sqlx::query_scalar(sql)
            .fetch_one(&mut conn)
            .await
            .expect(sql)
    } else {
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{database}"))
            .await
            .expect("open");
        sqlx::query_scalar(sql)
            .fetch_one(&mut conn)
            .await
            .expect(sql)
    }
}

/// A held notice whose reference no payment knows is set aside by the round (looked at
/// once, not every second), and applied once a payment records the transfer: the round
/// finds it by the reference's row in the read model, stamped with the position of the
/// event that recorded it, after the checkpoint the round last read.
async fn a_notice_set_aside_is_applied_when_its_transfer_is_recorded(srv: Server) {
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = ach_payment(c, &key).await;
    let r = c
        .post(
            "/v1/rail-notices",
            &key,
            &json!({"rail_ref": "ACH-LATE", "notice": {"kind": "settled"}}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["id"].as_str().expect("id").to_owned();
    let due = format!(
        "SELECT due FROM held_rail_notices WHERE notice_id = {}",
        uuid_literal(&srv.database, &id)
    );
    let mut set_aside = false;
    for _ in 0..200 {
        if sql_i64(&srv.database, &due).await == 0 {
            set_aside = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(set_aside, "a round set the notice aside");
    submit_ach(c, &key, &f, "ACH-LATE").await;
    // Within a few rounds, found by its reference's position: well before the sweep
    // that looks at every waiting notice once a minute (which would also apply it).
    let started = std::time::Instant::now();
    let mut settled = Value::Null;
    while started.elapsed() < Duration::from_secs(15) {
        let r = c.get(&format!("/v1/rail-notices/{id}"), &key).await;
        assert_eq!(r.status, 200, "{}", r.body);
        settled = r.body;
        if settled["status"] != "held" && settled["status"] != "applying" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(settled["status"], "applied", "{settled}");
    assert_eq!(settled["payment_id"], f.payment.as_str(), "{settled}");
    srv.finish().await;
}

on_both_engines!(a_notice_set_aside_is_applied_when_its_transfer_is_recorded);

/// Held notices are listed by the time received, which is stamped in commit order: a
/// pager following the list while 200 are held at once sees each once, in the order
/// they were stored (on SQLite, the rows' insertion order). A notice stamped before
/// another but stored after it would be missed by a page read between the two.
async fn held_notices_are_stamped_in_commit_order(srv: Server) {
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let holds = (0..200).map(|i| {
        let key = key.clone();
        async move {
            let body = json!({"rail_ref": format!("EARLY-{i}"), "notice": {"kind": "settled"}});
            let r = c.post("/v1/rail-notices", &key, &body).await;
            assert_eq!(r.status, 202, "{}", r.body);
            r.body["id"].as_str().expect("id").to_owned()
        }
    });
    // A pager follows the list while the notices are held (as an integrator's sync
    // would), from the last one it saw: a notice stored after a later-stamped one it
    // already saw would never reach it.
    let done = std::sync::atomic::AtomicBool::new(false);
    let holding = async {
        let held: Vec<String> = futures_util::future::join_all(holds).await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        held
    };
    let paging = async {
        let mut listed: Vec<String> = Vec::new();
        loop {
            let finished = done.load(std::sync::atomic::Ordering::SeqCst);
            let q = listed
                .last()
                .map_or_else(String::new, |a| format!("&after={a}"));
            let page = c.get(&format!("/v1/rail-notices?limit=7{q}"), &key).await;
            assert_eq!(page.status, 200, "{}", page.body);
            let notices = page.body["rail_notices"].as_array().expect("list");
            listed.extend(
                notices
                    .iter()
                    .map(|n| n["id"].as_str().expect("id").to_owned()),
            );
            if finished && page.body["has_more"] != true {
                return listed;
            }
        }
    };
    let (mut held, listed) = tokio::join!(holding, paging);
    held.sort();
    let mut once = listed.clone();
    once.sort();
    assert_eq!(once, held, "each held notice listed once");
    if srv.database.starts_with("postgres") {
        return;
    }
    let (_store, db, _projector) = open(&srv.database).await.expect("open");
    let trustfold_server::db::Db::Sqlite { reader, .. } = &db else {
        unreachable!("a SQLite database");
    };
    let stored: Vec<(uuid::Uuid,)> =
        sqlx::query_as("SELECT notice_id FROM held_rail_notices ORDER BY rowid")
            .fetch_all(reader)
            .await
            .expect("rows");
    let stored: Vec<String> = stored.into_iter().map(|(id,)| id.to_string()).collect();
    assert_eq!(listed, stored, "listed in the order stored");
}

mod held_notices_are_stamped_in_commit_order {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite() {
        super::held_notices_are_stamped_in_commit_order(super::common::sqlite().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres() {
        if let Some(srv) = super::common::postgres().await {
            super::held_notices_are_stamped_in_commit_order(srv).await;
        }
    }
}

/// What a held notice says alone is checked on arrival (422, nothing kept). Notices
/// for one reference are applied in the order received: a notice whose run failed holds
/// back the later ones of its reference, and a notice that arrives for a reference a
/// payment knows by then, while earlier ones still wait for it, is held behind them
/// (not applied ahead). A notice being applied cannot be dismissed.
async fn held_notices_keep_their_order(srv: Server) {
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = ach_payment(c, &key).await;
    let p = f.payment.as_str();

    // Checked on arrival: none of these could ever apply, none is kept.
    let long = "A".repeat(5000);
    for (rail_ref, notice, code) in [
        ("   ", json!({"kind": "settled"}), "invalid_rail_ref"),
        (long.as_str(), json!({"kind": "settled"}), "text_too_long"),
        (
            "ACH-X",
            json!({"kind": "returned", "code": "ZZZ"}),
            "invalid_return_code",
        ),
        (
            "ACH-X",
            json!({"kind": "returned", "code": "R01", "amount": {"amount": "-5.00", "currency": "USD"}}),
            "non_positive_amount",
        ),
    ] {
        let r = c
            .post(
                "/v1/rail-notices",
                &key,
                &json!({"rail_ref": rail_ref, "notice": notice}),
            )
            .await;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (422, Some(code)),
            "{}",
            r.body
        );
    }
    let r = c.get("/v1/rail-notices", &key).await;
    assert_eq!(r.body["rail_notices"], json!([]), "{}", r.body);

    // The first notice about ACH-7 is held, and its run will fail (the server cannot
    // read it back: as a database that fails would); the transfer is then recorded.
    let first = c
        .post(
            "/v1/rail-notices",
            &key,
            &json!({"rail_ref": "ACH-7", "notice": {"kind": "settled"}}),
        )
        .await;
    assert_eq!(first.status, 202, "{}", first.body);
    let first = first.body["id"].as_str().expect("id").to_owned();
    let lit = uuid_literal(&srv.database, &first);
    run_sql(
        &srv.database,
        &format!(
            "UPDATE held_rail_notices SET notice = '{{\"kind\":\"garbled\"}}' \
             WHERE notice_id = {lit}"
        ),
    )
    .await;
    submit_ach(c, &key, &f, "ACH-7").await;
    // A return about ACH-7: a payment knows the reference, but the settlement before it
    // still waits, so the return is held behind it.
    let second = c
        .post(
            "/v1/rail-notices",
            &key,
            &json!({"rail_ref": "ACH-7",
            "notice": {"kind": "returned", "code": "R01", "reason": "insufficient funds"}}),
        )
        .await;
    assert_eq!(second.status, 202, "{}", second.body);
    assert_eq!(second.body["status"], "held");
    let second = second.body["id"].as_str().expect("id").to_owned();
    // Rounds run (every second here) and fail the first; the second stays behind it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = c.get(&format!("/v1/rail-notices/{first}"), &key).await;
    assert!(
        r.body["status"] == "held" || r.body["status"] == "applying",
        "{}",
        r.body
    );
    let r = c.get(&format!("/v1/rail-notices/{second}"), &key).await;
    assert_eq!(r.body["status"], "held", "{}", r.body);
    let h = c.get(&format!("/v1/payments/{p}/events"), &key).await;
    let last = h.body["events"].as_array().and_then(|e| e.last()).cloned();
    assert_eq!(
        last.as_ref().map(|e| &e["event"]["type"]),
        Some(&json!("FundingSubmitted")),
        "a notice was applied ahead of the one that failed: {}",
        h.body
    );

    // Being applied (claimed by another runner whose claim holds; here set so by hand):
    // not dismissed, and not taken up by this server's round.
    let other = uuid_literal(&srv.database, &uuid::Uuid::new_v4().to_string());
    run_sql(
        &srv.database,
        &format!(
            "UPDATE held_rail_notices SET status = 'applying', claimed_by = {other}, \
             claimed_at_us = 9000000000000000 WHERE notice_id = {lit}"
        ),
    )
    .await;
    let r = c
        .raw(
            "DELETE",
            &format!("/v1/rail-notices/{first}"),
            Some(&key),
            &[],
            None,
        )
        .await
        .expect("delete");
    expect_member(&r, 409, "code", "rail_notice_applying");
    let r = c.get("/v1/rail-notices?status=applying", &key).await;
    assert_eq!(
        r.body["rail_notices"][0]["id"],
        first.as_str(),
        "{}",
        r.body
    );

    // 300 more notices wait behind that blocked head of ACH-7: another reference's
    // notice is still applied (a round takes each reference's head, not the oldest 256).
    let fill = if srv.database.starts_with("postgres") {
        format!(
            "INSERT INTO held_rail_notices (notice_id, tenant_id, rail_ref, notice, \
             received_at_us, status) SELECT gen_random_uuid(), h.tenant_id, 'ACH-7', \
             '{{\"kind\":\"settled\",\"filler\":1}}', h.received_at_us + 1000000 + i, 'held' \
             FROM generate_series(1, 300) AS i, held_rail_notices h WHERE h.notice_id = {lit}"
        )
    } else {
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) \
             INSERT INTO held_rail_notices (notice_id, tenant_id, rail_ref, notice, \
             received_at_us, status) SELECT randomblob(16), h.tenant_id, 'ACH-7', \
             '{{\"kind\":\"settled\",\"filler\":1}}', h.received_at_us + 1000000 + i, 'held' \
             FROM n, held_rail_notices h WHERE h.notice_id = {lit}"
        )
    };
    run_sql(&srv.database, &fill).await;
    let g = ach_payment(c, &key).await;
    let other_ref = c
        .post(
            "/v1/rail-notices",
            &key,
            &json!({"rail_ref": "ACH-8", "notice": {"kind": "settled"}}),
        )
        .await;
    assert_eq!(other_ref.status, 202, "{}", other_ref.body);
    submit_ach(c, &key, &g, "ACH-8").await;
    let r = settled_notice(c, &key, other_ref.body["id"].as_str().expect("id")).await;
    assert_eq!(r["status"], "applied", "{r}");
    assert_eq!(r["payment_id"], g.payment.as_str(), "{r}");
    run_sql(
        &srv.database,
        "DELETE FROM held_rail_notices WHERE notice LIKE '%filler%'",
    )
    .await;

    // The other runner's claim lapses and the first can be read again: both are applied,
    // in the order received.
    run_sql(
        &srv.database,
        &format!(
            "UPDATE held_rail_notices SET notice = '{{\"kind\":\"settled\"}}', \
             claimed_at_us = 0 WHERE notice_id = {lit}"
        ),
    )
    .await;
    for id in [&first, &second] {
        let r = settled_notice(c, &key, id).await;
        assert_eq!(r["status"], "applied", "{r}");
    }
    let h = c.get(&format!("/v1/payments/{p}/events"), &key).await;
    let rail: Vec<(&str, &str)> = h.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["event"]["actor"]["role"] == "rail")
        .filter_map(|e| {
            Some((
                e["event"]["type"].as_str()?,
                e["event"]["causation"].as_str()?,
            ))
        })
        .collect();
    assert_eq!(
        rail,
        [
            ("FundingSettled", first.as_str()),
            ("FundingReturned", second.as_str())
        ],
        "{}",
        h.body
    );
    srv.finish().await;
}
on_both_engines!(held_notices_keep_their_order);

/// A held notice whose outcome could not be recorded after the payment stored its
/// events stays claimed (`applying`: not dismissed, not given back to wait again) and is
/// recorded applied once the database lets it; a notice under an `Idempotency-Key` used
/// before for another request is 422, and nothing is held.
async fn held_notice_outcomes_survive_failures(srv: Server) {
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    common::scenario::agree(c, &key, &f).await.expect("agree");
    let p = f.payment.as_str();
    let method = c
        .post_idem(
            &format!("/v1/payments/{p}/commands"),
            &key,
            "key-once",
            &json!({"command": {"type": "AttachFundingMethod", "method": {"rail": "ach",
                "institution": "First Bank", "account_last4": "4321", "holder": "Bo"}},
                "actor": {"party": f.buyer, "role": "buyer"}}),
        )
        .await;
    assert_eq!(method.status, 200, "{}", method.body);

    // The key of that command, for a rail notice: 422, nothing held.
    let r = c
        .post_idem(
            "/v1/rail-notices",
            &key,
            "key-once",
            &json!({"rail_ref": "ACH-REUSE", "notice": {"kind": "settled"}}),
        )
        .await;
    expect_member(&r, 422, "code", "idempotency_key_reused");
    let r = c.get("/v1/rail-notices?rail_ref=ACH-REUSE", &key).await;
    assert_eq!(r.body["rail_notices"], json!([]), "{}", r.body);

    // The outcome's update fails (a trigger refuses it, as a failing disk would).
    let held = c
        .post(
            "/v1/rail-notices",
            &key,
            &json!({"rail_ref": "ACH-5", "notice": {"kind": "settled"}}),
        )
        .await;
    assert_eq!(held.status, 202, "{}", held.body);
    let id = held.body["id"].as_str().expect("id").to_owned();
    let (block, unblock): (&[&str], &[&str]) = if srv.database.starts_with("postgres") {
        (
            &[
                "CREATE FUNCTION no_outcome() RETURNS trigger AS $$ BEGIN \
                 RAISE EXCEPTION 'no outcome today'; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER no_outcome BEFORE UPDATE ON held_rail_notices FOR EACH ROW \
                 WHEN (NEW.status = 'applied') EXECUTE FUNCTION no_outcome()",
            ],
            &["DROP TRIGGER no_outcome ON held_rail_notices"],
        )
    } else {
        (
            &[
                "CREATE TRIGGER no_outcome BEFORE UPDATE ON held_rail_notices \
               WHEN NEW.status = 'applied' BEGIN SELECT RAISE(ABORT, 'no outcome today'); END",
            ],
            &["DROP TRIGGER no_outcome"],
        )
    };
    for sql in block {
        run_sql(&srv.database, sql).await;
    }
    submit_ach(c, &key, &f, "ACH-5").await;
    // The payment records the settlement; the notice stays claimed.
    let mut recorded = false;
    for _ in 0..200 {
        let h = c.get(&format!("/v1/payments/{p}/events"), &key).await;
        if h.body
            .to_string()
            .contains(&format!("\"causation\":\"{id}\""))
        {
            recorded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recorded, "the held notice never reached its payment");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = c.get(&format!("/v1/rail-notices/{id}"), &key).await;
    assert_eq!(r.body["status"], "applying", "{}", r.body);
    let r = c
        .raw(
            "DELETE",
            &format!("/v1/rail-notices/{id}"),
            Some(&key),
            &[],
            None,
        )
        .await
        .expect("delete");
    expect_member(&r, 409, "code", "rail_notice_applying");

    // The database lets it: recorded applied, to the payment, once.
    for sql in unblock {
        run_sql(&srv.database, sql).await;
    }
    let r = settled_notice(c, &key, &id).await;
    assert_eq!(r["status"], "applied", "{r}");
    assert_eq!(r["payment_id"], p, "{r}");
    let h = c.get(&format!("/v1/payments/{p}/events"), &key).await;
    let settled = h.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["event"]["type"] == "FundingSettled")
        .count();
    assert_eq!(settled, 1, "{}", h.body);
    srv.finish().await;
}
on_both_engines!(held_notice_outcomes_survive_failures);

/// A tenant's queue of held notices is bounded: past 10,000 waiting a notice is 422
/// `too_many_held_notices`, and that answer is not kept under its `Idempotency-Key`: the
/// same request is accepted once the queue has room.
async fn held_notices_are_bounded(srv: Server) {
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let notice = |r: &str| json!({"rail_ref": r, "notice": {"kind": "settled"}});
    let r = c.post("/v1/rail-notices", &key, &notice("SEED-1")).await;
    assert_eq!(r.status, 202, "{}", r.body);
    // 9,999 more waiting for a reference that never comes (the seed makes 10,000).
    let fill = if srv.database.starts_with("postgres") {
        "INSERT INTO held_rail_notices (notice_id, tenant_id, rail_ref, notice, received_at_us, status) \
         SELECT gen_random_uuid(), h.tenant_id, 'NEVER', h.notice, h.received_at_us, 'held' \
         FROM generate_series(1, 9999), held_rail_notices h WHERE h.rail_ref = 'SEED-1'"
    } else {
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 9999) \
         INSERT INTO held_rail_notices (notice_id, tenant_id, rail_ref, notice, received_at_us, status) \
         SELECT randomblob(16), h.tenant_id, 'NEVER', h.notice, h.received_at_us, 'held' \
         FROM n, held_rail_notices h WHERE h.rail_ref = 'SEED-1'"
    };
    run_sql(&srv.database, fill).await;
    let full = c
        .post_idem("/v1/rail-notices", &key, "bank-evt-full", &notice("LATE-1"))
        .await;
    assert_eq!(full.status, 422, "{}", full.body);
    assert_eq!(full.body["code"], "too_many_held_notices");
    let listed = c.get("/v1/rail-notices?rail_ref=LATE-1", &key).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(
        listed.body["rail_notices"],
        json!([]),
        "nothing stored for a refused notice"
    );

    run_sql(
        &srv.database,
        "DELETE FROM held_rail_notices WHERE rail_ref = 'NEVER'",
    )
    .await;
    let retried = c
        .post_idem("/v1/rail-notices", &key, "bank-evt-full", &notice("LATE-1"))
        .await;
    assert_eq!(retried.status, 202, "{}", retried.body);
    assert_eq!(retried.body["status"], "held");
    assert!(retried.headers.get("idempotent-replayed").is_none());
}
on_both_engines!(held_notices_are_bounded);

/// A round's page leaves room for heads it cannot run: 300 references whose head
/// another runner holds (a live claim), all older than a notice whose payment is known,
/// do not keep that notice waiting (a page of 256 full of blocked heads is followed by
/// the next one).
async fn blocked_heads_leave_room_for_others(srv: Server) {
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let g = ach_payment(c, &key).await;
    let good = c
        .post(
            "/v1/rail-notices",
            &key,
            &json!({"rail_ref": "GOOD-1", "notice": {"kind": "settled"}}),
        )
        .await;
    assert_eq!(good.status, 202, "{}", good.body);
    let id = good.body["id"].as_str().expect("id");
    let lit = uuid_literal(&srv.database, id);
    let other = uuid_literal(&srv.database, &uuid::Uuid::new_v4().to_string());
    let payment = uuid_literal(&srv.database, &g.payment);
    let (rows, new_id) = if srv.database.starts_with("postgres") {
        ("generate_series(1, 300) AS n(i)", "gen_random_uuid()")
    } else {
        (
            "(WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) \
             SELECT i FROM n) AS n",
            "randomblob(16)",
        )
    };
    run_sql(
        &srv.database,
        &format!(
            "INSERT INTO held_rail_notices (notice_id, tenant_id, rail_ref, notice, \
             received_at_us, status, claimed_by, claimed_at_us) SELECT {new_id}, h.tenant_id, \
             'BLK-' || n.i, h.notice, h.received_at_us - 1000000 - n.i, 'applying', {other}, \
             9000000000000000 FROM {rows}, held_rail_notices h WHERE h.notice_id = {lit}"
        ),
    )
    .await;
    run_sql(
        &srv.database,
        &format!(
            "INSERT INTO payment_rail_refs (tenant_id, rail_ref, payment_id) \
             SELECT tenant_id, rail_ref, {payment} FROM held_rail_notices \
             WHERE rail_ref LIKE 'BLK-%'"
        ),
    )
    .await;
    let blocked = c.get("/v1/rail-notices?status=applying", &key).await;
    assert_eq!(blocked.status, 200, "{}", blocked.body);
    assert!(
        blocked.body["rail_notices"].as_array().map(Vec::len) > Some(0),
        "{}",
        blocked.body
    );

    submit_ach(c, &key, &g, "GOOD-1").await;
    let r = settled_notice(c, &key, id).await;
    assert_eq!(r["status"], "applied", "{r}");
    assert_eq!(r["payment_id"], g.payment.as_str(), "{r}");
    let still = c.get("/v1/rail-notices?status=applying", &key).await;
    assert_eq!(
        still.body["rail_notices"].as_array().map(Vec::len),
        blocked.body["rail_notices"].as_array().map(Vec::len),
        "another runner's live claims are left alone: {}",
        still.body
    );
}
on_both_engines!(blocked_heads_leave_room_for_others);

/// Revoking a party's tokens: the tokens minted until then are refused everywhere
/// (reads, commands, new streams: 401 `token_revoked`) and an open stream ends; a token
/// minted afterwards works; API keys only; idempotent under its key.
async fn revoked_tokens_stop_working(srv: Server) {
    let c = &srv.client;
    let key = c.tenant(ADMIN, "t").await.expect("tenant");
    let f = open_and_join(c, &key).await.expect("open");
    let p = &f.payment;
    let mint = || c.participant_token(&key, p, &f.buyer, 600);
    let token = mint().await;
    let seller = c.participant_token(&key, p, &f.seller, 600).await;
    let url = format!("{}/v1/payments/{p}/stream?access_token={token}", c.base);
    let mut live = c.http.get(&url).send().await.expect("stream");
    assert_eq!(live.status(), 200);
    let mut buf = String::new();
    sse_events(&mut live, 1, &mut buf).await;

    let revoke = format!("/v1/payments/{p}/tokens/revoke");
    let r = c.post(&revoke, &token, &json!({"party": f.buyer})).await;
    expect_member(&r, 403, "code", "token_scope");
    let r = c
        .post_idem(&revoke, &key, "revoke-1", &json!({"party": f.buyer}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["party"], f.buyer.as_str());
    assert_eq!(r.body["generation"], 1);
    let again = c
        .post_idem(&revoke, &key, "revoke-1", &json!({"party": f.buyer}))
        .await;
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.bytes, r.bytes);

    // The open stream ends at its next read (the test server polls every 200 ms).
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        while let Ok(Some(_)) = live.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the revoked token's stream ended");
    let r = c.http.get(&url).send().await.expect("stream");
    assert_eq!(r.status(), 401, "and it cannot be opened again");
    let r = c.get(&format!("/v1/payments/{p}"), &token).await;
    expect_member(&r, 401, "code", "token_revoked");
    let r = c
        .post(
            &format!("/v1/payments/{p}/commands"),
            &token,
            &json!({"command": {"type": "Tick"}}),
        )
        .await;
    expect_member(&r, 401, "code", "token_revoked");
    // Another party's token, and a token minted afterwards, work.
    let r = c.get(&format!("/v1/payments/{p}"), &seller).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let fresh = mint().await;
    let r = c.get(&format!("/v1/payments/{p}"), &fresh).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A second revocation refuses the token minted after the first.
    let r = c.post(&revoke, &key, &json!({"party": f.buyer})).await;
    assert_eq!(r.body["generation"], 2, "{}", r.body);
    let r = c.get(&format!("/v1/payments/{p}"), &fresh).await;
    expect_member(&r, 401, "code", "token_revoked");
    let r = c.get(&format!("/v1/payments/{p}"), &mint().await).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Someone who never took part: 422.
    let r = c
        .post(&revoke, &key, &json!({"party": uuid::Uuid::new_v4()}))
        .await;
    expect_member(&r, 422, "code", "unknown_participant");
    srv.finish().await;
}

on_both_engines!(revoked_tokens_stop_working);
