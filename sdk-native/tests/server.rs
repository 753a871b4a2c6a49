//! The client, replica, subscription and `trustfold fetch` against a real server
//! (started in-process over loopback HTTP, on a temporary SQLite file and, with
//! `DATABASE_URL`, on PostgreSQL: `make test-server` runs them under
//! `scripts/with-postgres.sh`), including a replica that keeps following across a
//! restart of the server.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use trustfold::client::{Client, HeldStatus, RailNoticeAnswer};
use trustfold::id::PaymentId;
use trustfold::replica::Replica;
use trustfold::subscription::{FileCheckpoint, Subscription};
use trustfold_server::app::{start, Config};

const ADMIN: &str = "admin-secret-for-tests";

async fn server(dir: &std::path::Path) -> trustfold_server::app::Running {
    serve(&dir.join("trustfold.db").display().to_string(), 0).await
}

/// A server on `database` (a SQLite path or a PostgreSQL URL), on `port` of 127.0.0.1
/// (0: any free one).
async fn serve(database: &str, port: u16) -> trustfold_server::app::Running {
    let mut c = Config::new(database);
    c.listen = SocketAddr::from(([127, 0, 0, 1], port));
    c.http.admin_token = Some(ADMIN.into());
    c.http.heartbeat = Duration::from_millis(300);
    c.http.poll_interval = Duration::from_millis(100);
    start(c).await.expect("server starts")
}

/// The PostgreSQL server of `DATABASE_URL` (`make test-server` starts a throwaway one
/// with `scripts/with-postgres.sh`), or `None` when `TRUSTFOLD_SKIP_PG=1` says these
/// tests are knowingly skipped. Tenants are isolated, so tests may share its database.
fn postgres() -> Option<String> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("TRUSTFOLD_SKIP_PG").as_deref() == Ok("1") => {
            eprintln!("TRUSTFOLD_SKIP_PG=1: skipping an SDK test against PostgreSQL");
            None
        }
        _ => panic!(
            "DATABASE_URL is not set: run `scripts/with-postgres.sh cargo test -p trustfold \
             --test server` (or `make test-server`), or set TRUSTFOLD_SKIP_PG=1 to skip the \
             PostgreSQL half knowingly"
        ),
    }
}

fn id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_replica_subscription_and_fetch_against_a_real_server() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("trustfold.db").display().to_string();
    client_replica_subscription_and_fetch(&db, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_replica_subscription_and_fetch_against_a_real_server_postgres() {
    let Some(url) = postgres() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    client_replica_subscription_and_fetch(&url, dir.path()).await;
}

async fn client_replica_subscription_and_fetch(database: &str, dir: &std::path::Path) {
    let running = serve(database, 0).await;
    let base = format!("http://{}", running.addr);

    // Tenant, API key, policy.
    let anon = Client::new(&base).expect("client");
    let t = anon
        .create_tenant(ADMIN, "Acme Realty")
        .await
        .expect("tenant");
    let api_key = t["api_key"].as_str().expect("api key").to_string();
    let c = Client::new(&base).expect("client").api_key(&api_key);
    let e = anon
        .create_tenant("wrong", "x")
        .await
        .expect_err("bad admin");
    assert_eq!(e.code(), "unauthorized");
    let policy: Value =
        serde_json::from_str(include_str!("../../examples/policies/earnest-money.json"))
            .expect("policy");
    c.create_policy(&policy).await.expect("policy");

    // Open a payment (automatic Idempotency-Key), invite and join.
    let (agent, buyer) = (id(), id());
    let open = json!({
        "policy": "earnest-money",
        "amount": {"amount": "5000.00", "currency": "USD"},
        "description": "12 Elm St",
        "initiator": {"party": agent, "roles": ["listing_agent"], "name": "Lee"}
    });
    let r = c.create_payment(&open, Some("open-1")).await.expect("open");
    assert_eq!(r.version, 1);
    let again = c
        .create_payment(&open, Some("open-1"))
        .await
        .expect("replayed");
    assert_eq!(again.payment_id, r.payment_id, "same key, same answer");
    let p: PaymentId = r.payment_id;
    let as_agent = json!({"party": agent, "role": "listing_agent"});
    let invite = json!({"type": "Invite", "party": buyer, "roles": ["buyer"], "name": "Bo"});
    let r = c
        .send_command(p, &invite, Some(&as_agent), Some(1), None)
        .await
        .expect("invite");
    assert_eq!(r.version, 2);

    // Typed errors: a stale expected version, a domain rule, not found, no auth.
    let other = json!({"type": "Invite", "party": id(), "roles": ["seller"], "name": "Sam"});
    let e = c
        .send_command(p, &other, Some(&as_agent), Some(1), None)
        .await
        .expect_err("stale version");
    match &e {
        trustfold::Error::VersionConflict {
            current_version, ..
        } => {
            assert_eq!(*current_version, Some(2))
        }
        other => panic!("expected a version conflict, got {other:?}"),
    }
    let e = c
        .send_command(p, &invite, Some(&as_agent), None, None)
        .await
        .expect_err("invited twice");
    assert!(matches!(e, trustfold::Error::Rejected { .. }), "{e:?}");
    let e = c
        .events(PaymentId::from_uuid(uuid::Uuid::new_v4()), 0, 10)
        .await
        .expect_err("404");
    assert_eq!(e.code(), "not_found");
    let e = anon.events(p, 0, 10).await.expect_err("401");
    assert_eq!(e.code(), "unauthorized");

    // The replica: verified against the pinned key, same as the read model.
    let key = anon.server_key().await.expect("key");
    let mut rep = Replica::new(c.clone(), p, key).expect("replica");
    assert_eq!(rep.sync().await.expect("sync"), 2);
    assert!(rep.diff().await.expect("diff").is_empty());
    let join = json!({"type": "Join"});
    c.send_command(
        p,
        &join,
        Some(&json!({"party": buyer, "role": "buyer"})),
        None,
        None,
    )
    .await
    .expect("join");
    assert_eq!(
        rep.sync().await.expect("incremental"),
        1,
        "only what is new"
    );
    assert_eq!(rep.version(), 3);
    assert!(rep.diff().await.expect("diff").is_empty());
    // A replica pinned to another key refuses the server's head.
    let wrong = trustfold::history::PublicKey::from_secret(&[9; 32]);
    let e = Replica::new(c.clone(), p, wrong)
        .expect("replica")
        .sync()
        .await
        .expect_err("wrong key");
    assert_eq!(e.code(), "bad_signature");

    // Live: follow sees the next event.
    let c2 = c.clone();
    let seller = id();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let inv = json!({"type": "Invite", "party": seller, "roles": ["seller"], "name": "Sam"});
        c2.send_command(
            p,
            &inv,
            Some(&json!({"party": agent, "role": "listing_agent"})),
            None,
            None,
        )
        .await
        .expect("invite seller");
    });
    let followed =
        tokio::time::timeout(Duration::from_secs(20), rep.follow(|s| s.version < 4)).await;
    assert!(matches!(followed, Ok(Ok(()))), "{followed:?}");
    assert_eq!(rep.version(), 4);
    writer.await.expect("writer");

    // Catch-up subscription with a file checkpoint: everything once, then resume.
    let cp = dir.join("feed.checkpoint");
    let mut seen = Vec::new();
    let mut sub = Subscription::new(c.clone(), FileCheckpoint::new(&cp));
    sub.catch_up(|e| {
        seen.push((e.position, e.payment_id, e.seq));
        Ok(true)
    })
    .await
    .expect("catch up");
    assert_eq!(seen.len(), 4);
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
    let mut sub = Subscription::new(c.clone(), FileCheckpoint::new(&cp));
    let n = sub.catch_up(|_| Ok(true)).await.expect("resume");
    assert_eq!(n, 0, "nothing twice after a restart");

    // `trustfold fetch`, then offline verification of the file with the head.
    let out = dir.join("p.history.json");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_trustfold"))
        .args(["fetch", &p.to_string(), "--server", &base, "--out"])
        .arg(&out)
        .args(["--api-key", &api_key, "--key", &key.to_string()])
        .output()
        .expect("fetch");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("verified: 1 payment, 4 events, 1 signed head"),
        "{stdout}"
    );

    running.shutdown().await.expect("shutdown");
}

/// Polls `f` until it returns `Some` (the read models are projected just after the
/// append that feeds them).
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let t0 = std::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_of_the_api_typed_end_to_end() {
    use std::collections::BTreeSet;
    use trustfold::client::PaymentQuery;
    use trustfold::id::PartyId;
    use trustfold::policy::Role;

    let dir = tempfile::tempdir().expect("tmp");
    let running = server(dir.path()).await;
    let base = format!("http://{}", running.addr);
    let anon = Client::new(&base).expect("client");

    // Unauthenticated: health and the OpenAPI document, which lists no route this
    // client lacks a call for.
    let h = anon.health().await.expect("health");
    assert!(h.is_ok(), "{h:?}");
    let doc = anon.openapi().await.expect("openapi");
    let mut routes: Vec<String> = Vec::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for m in ops.as_object().expect("operations").keys() {
            routes.push(format!("{} {path}", m.to_uppercase()));
        }
    }
    routes.sort();
    let covered = [
        "GET /healthz",                                 // health
        "GET /openapi.json",                            // openapi
        "GET /v1/server-key",                           // server_key
        "POST /v1/tenants",                             // create_tenant
        "POST /v1/api-keys",                            // rotate_api_key
        "POST /v1/policies",                            // create_policy
        "GET /v1/policies",                             // policies
        "GET /v1/policies/{policy_id}",                 // policy
        "POST /v1/payments",                            // create_payment
        "GET /v1/payments",                             // payments, all_payments
        "GET /v1/payments/{payment_id}",                // payment
        "POST /v1/payments/{payment_id}/commands",      // send_command
        "GET /v1/payments/{payment_id}/events",         // events, fetch_history
        "GET /v1/payments/{payment_id}/head",           // head
        "GET /v1/payments/{payment_id}/stream",         // replica::Replica::follow
        "POST /v1/payments/{payment_id}/tokens",        // create_token
        "POST /v1/payments/{payment_id}/tokens/revoke", // revoke_tokens
        "GET /v1/payments/{payment_id}/balances",       // balances
        "GET /v1/parties/{party_id}/inbox",             // inbox
        "GET /v1/events",                               // feed
        "POST /v1/rail-notices",                        // rail_notice
        "GET /v1/rail-notices",                         // held_rail_notices
        "GET /v1/rail-notices/{notice_id}",             // held_rail_notice
        "DELETE /v1/rail-notices/{notice_id}",          // dismiss_rail_notice
        "POST /v1/webhooks",                            // create_webhook
        "GET /v1/webhooks",                             // webhooks
        "GET /v1/webhooks/{webhook_id}",                // webhook
        "DELETE /v1/webhooks/{webhook_id}",             // delete_webhook
        "GET /v1/webhooks/{webhook_id}/deliveries",     // webhook_deliveries
        "POST /v1/webhooks/{webhook_id}/rotate-secret", // rotate_webhook_secret
        "POST /v1/webhooks/{webhook_id}/retry",         // retry_webhook
    ];
    let mut covered: Vec<String> = covered.iter().map(|s| s.to_string()).collect();
    covered.sort();
    assert_eq!(routes, covered, "every documented route has a client call");

    // Tenant; policy published and read back (latest and by version).
    let t = anon
        .create_tenant(ADMIN, "Typed Realty")
        .await
        .expect("tenant");
    let key1 = t["api_key"].as_str().expect("api key").to_string();
    let c1 = Client::new(&base).expect("client").api_key(&key1);

    // Webhooks: registered (again: the same endpoint), listed, read, rotated, retried,
    // deleted. (Delivery is tested in the server's tests/webhooks.rs, verified with
    // this crate's `webhook::Webhook`.)
    let ep = c1
        .create_webhook("https://example.com/hooks", &["FundsAvailable"], Some(0))
        .await
        .expect("create webhook");
    let secret = ep.secret.clone().expect("the secret is shown");
    assert!(trustfold::webhook::Webhook::new(&secret).is_ok());
    assert_eq!(ep.event_types, ["FundsAvailable"]);
    let again = c1
        .create_webhook("https://example.com/hooks", &["FundsAvailable"], None)
        .await
        .expect("again");
    assert_eq!(
        (again.webhook_id, again.secret.as_deref()),
        (ep.webhook_id, Some(secret.as_str()))
    );
    let listed = c1.webhooks().await.expect("webhooks");
    assert_eq!(listed.len(), 1);
    assert!(listed[0].secret.is_none());
    assert_eq!(
        c1.webhook(ep.webhook_id).await.expect("webhook").url,
        ep.url
    );
    let rotated = c1
        .rotate_webhook_secret(ep.webhook_id, Some(Duration::from_secs(60)))
        .await
        .expect("rotate");
    assert_ne!(rotated.secret.as_deref(), Some(secret.as_str()));
    c1.retry_webhook(ep.webhook_id).await.expect("retry");
    // Nothing was sent (example.com is no receiver of this test's; the payments come
    // later): an empty log. (Tries are tested in the server's tests/webhooks.rs.)
    let log = c1
        .webhook_deliveries(ep.webhook_id, None, 10)
        .await
        .expect("deliveries");
    assert_eq!(log.webhook_id, ep.webhook_id);
    assert!(log.deliveries.is_empty() && !log.has_more, "{log:?}");
    c1.delete_webhook(ep.webhook_id).await.expect("delete");
    assert!(matches!(
        c1.webhook(ep.webhook_id).await,
        Err(trustfold::Error::NotFound { .. })
    ));
    assert!(matches!(
        c1.webhook_deliveries(ep.webhook_id, None, 10).await,
        Err(trustfold::Error::NotFound { .. })
    ));
    let refused = c1
        .create_webhook("http://127.0.0.1:9/hooks", &[], None)
        .await
        .expect_err("a loopback endpoint");
    assert!(
        matches!(&refused, trustfold::Error::Rejected { code, .. } if code == "invalid_url"),
        "{refused:?}"
    );
    let policy: Value =
        serde_json::from_str(include_str!("../../examples/policies/earnest-money.json"))
            .expect("policy");
    let published = c1.create_policy(&policy).await.expect("publish");
    let stored = c1.policy("earnest-money", None).await.expect("latest");
    assert_eq!((stored.id.as_str(), stored.version), ("earnest-money", 1));
    assert_eq!(stored.policy.id, "earnest-money");
    assert_eq!(
        published["hash"].as_str(),
        Some(stored.hash.to_string().as_str())
    );
    let v1 = c1.policy("earnest-money", Some(1)).await.expect("v1");
    assert_eq!(v1.hash, stored.hash);
    let e = c1
        .policy("earnest-money", Some(2))
        .await
        .expect_err("no v2");
    assert!(matches!(e, trustfold::Error::NotFound { .. }), "{e:?}");
    let e = c1.policy("no such/policy", None).await.expect_err("none");
    assert_eq!(e.code(), "not_found");
    let listed = c1.policies(None, 10).await.expect("list");
    assert_eq!(listed.policies.len(), 1);
    let only = &listed.policies[0];
    assert_eq!(
        (only.id.as_str(), only.version, only.versions),
        ("earnest-money", 1, 1)
    );
    assert_eq!(only.hash, stored.hash.to_string());
    assert_eq!(listed.next.as_deref(), Some("earnest-money"));
    assert!(!listed.has_more);
    let after = c1.policies(Some("earnest-money"), 10).await.expect("after");
    assert!(after.policies.is_empty());

    // API-key rotation: the new key works, the old one too until expired.
    let k2 = c1.rotate_api_key(None).await.expect("rotate");
    assert_eq!(
        k2.tenant_id.to_string(),
        t["tenant_id"].as_str().expect("id")
    );
    let c2 = Client::new(&base).expect("client").api_key(&k2.api_key);
    c2.payments(&PaymentQuery::default(), 0, 10)
        .await
        .expect("the rotated key works");
    c1.payments(&PaymentQuery::default(), 0, 10)
        .await
        .expect("the old key still works (no expiry asked)");
    let k3 = c2
        .rotate_api_key(Some(Duration::ZERO))
        .await
        .expect("rotate, expiring the others now");
    let c = Client::new(&base).expect("client").api_key(&k3.api_key);
    for old in [&c1, &c2] {
        let e = old
            .payments(&PaymentQuery::default(), 0, 10)
            .await
            .expect_err("expired");
        assert_eq!(e.code(), "unauthorized");
    }
    assert!(
        c.policy("earnest-money", None).await.is_ok(),
        "the newest works"
    );
    let e = anon.rotate_api_key(None).await.expect_err("no auth");
    assert_eq!(e.code(), "unauthorized");

    // A payment taken to FundsAvailable, with a lender who may see little.
    let party = || PartyId::from_uuid(uuid::Uuid::new_v4());
    let (agent, buyer, seller, escrow, lender) = (party(), party(), party(), party(), party());
    let open = |desc: &str| {
        json!({
            "policy": "earnest-money",
            "amount": {"amount": "5000.00", "currency": "USD"},
            "description": desc,
            "initiator": {"party": agent, "roles": ["listing_agent"], "name": "Lee"}
        })
    };
    let p = c
        .create_payment(&open("12 Elm St"), None)
        .await
        .expect("open")
        .payment_id;
    let as_ = |who: PartyId, role: &str| json!({"party": who, "role": role});
    let run = |cmd: Value, actor: Value| {
        let c = c.clone();
        async move {
            c.send_command(p, &cmd, Some(&actor), None, None)
                .await
                .unwrap_or_else(|e| panic!("{cmd}: {e:?}"))
        }
    };
    for (who, role) in [
        (buyer, "buyer"),
        (seller, "seller"),
        (escrow, "escrow_holder"),
        (lender, "lender"),
    ] {
        run(
            json!({"type": "Invite", "party": who, "roles": [role], "name": role}),
            as_(agent, "listing_agent"),
        )
        .await;
        run(json!({"type": "Join"}), as_(who, role)).await;
    }
    let (_, st) = c.payment(p).await.expect("state");
    let terms = st["terms_hash"].clone();
    for (who, role) in [(buyer, "buyer"), (seller, "seller")] {
        run(
            json!({"type": "AgreeToTerms", "terms_hash": terms}),
            as_(who, role),
        )
        .await;
    }
    run(
        json!({"type": "AttachFundingMethod", "method": {"rail": "wire", "institution": "First Bank", "account_last4": "4321", "holder": "Bea"}}),
        as_(buyer, "buyer"),
    )
    .await;
    run(
        json!({"type": "SubmitFunding", "amount": {"amount": "5000.00", "currency": "USD"}, "rail": "wire", "rail_ref": "w-1"}),
        as_(buyer, "buyer"),
    )
    .await;
    // The bank's notice names the transfer only: the server finds the payment.
    let settled = json!({"kind": "settled"});
    let RailNoticeAnswer::Applied(r) = c
        .rail_notice("w-1", &settled, Some("bank-notice-1"))
        .await
        .expect("rail notice")
    else {
        panic!("a recorded transfer's notice was held");
    };
    assert_eq!(r.payment_id, p);
    assert_eq!(
        r.events[0]["event"]["type"], "FundingSettled",
        "{:?}",
        r.events
    );
    let RailNoticeAnswer::Applied(again) = c
        .rail_notice("w-1", &settled, Some("bank-notice-1"))
        .await
        .expect("replayed")
    else {
        panic!("a replay was held");
    };
    assert_eq!(again.version, r.version);
    // A notice about a transfer no payment recorded yet is held (202), signed for this
    // request about no payment, and readable by its id and in the list.
    let RailNoticeAnswer::Held(held) = c.rail_notice("w-404", &settled, None).await.expect("held")
    else {
        panic!("an unknown transfer's notice was not held");
    };
    assert_eq!(held.status, HeldStatus::Held);
    assert_eq!(held.rail_ref, "w-404");
    assert_eq!(held.notice, settled);
    assert!(held.payment_id.is_none());
    let read = c.held_rail_notice(held.id).await.expect("read");
    assert_eq!((read.id, read.status), (held.id, HeldStatus::Held));
    let page = c
        .held_rail_notices(Some(HeldStatus::Held), Some("w-404"), None, 10)
        .await
        .expect("list");
    assert_eq!(page.rail_notices.len(), 1);
    assert_eq!(page.next, Some(held.id));
    assert!(!page.has_more);
    let e = c
        .held_rail_notice(uuid::Uuid::from_u128(404))
        .await
        .expect_err("never held");
    assert_eq!(e.code(), "not_found", "{e}");
    // Dismissed: it stops waiting, and says so.
    let dismissed = c.dismiss_rail_notice(held.id).await.expect("dismiss");
    assert_eq!(dismissed.status, HeldStatus::Dismissed);
    assert!(dismissed.settled_at.is_some());
    let page = c
        .held_rail_notices(Some(HeldStatus::Held), None, None, 10)
        .await
        .expect("list");
    assert!(page.rail_notices.is_empty(), "{:?}", page.rail_notices);
    let version = r.version;

    // Balances (tenant keys only).
    let b = eventually("balances", || {
        let c = c.clone();
        async move {
            let b = c.balances(p).await.expect("balances");
            b.balances
                .iter()
                .any(|x| x.posted != "0.00" && x.posted != "0")
                .then_some(b)
        }
    })
    .await;
    assert_eq!(b.payment_id, p);
    assert!(b.balances.iter().all(|x| x.currency == "USD"), "{b:?}");
    let e = c
        .balances(PaymentId::from_uuid(uuid::Uuid::new_v4()))
        .await
        .expect_err("unknown payment");
    assert_eq!(e.code(), "not_found");

    // The lender's inbox: FundsAvailable, as the policy's notifications say.
    let inbox = eventually("inbox", || {
        let c = c.clone();
        async move {
            let i = c.inbox(lender, 0, 100).await.expect("inbox");
            (!i.notifications.is_empty()).then_some(i)
        }
    })
    .await;
    assert_eq!(inbox.party_id, lender);
    let n = &inbox.notifications[0];
    assert_eq!((n.payment_id, n.event_type.as_str()), (p, "FundsAvailable"));
    assert_eq!(n.roles, vec![Role::new("lender")]);
    let rest = c.inbox(lender, inbox.next, 100).await.expect("after");
    assert!(rest.notifications.is_empty() && !rest.has_more);
    // A party none of the tenant's payments has has no inbox.
    match c.inbox(party(), 0, 100).await {
        Err(trustfold::Error::NotFound { message }) => {
            assert!(message.contains("no inbox"), "{message}")
        }
        other => panic!("a stranger's inbox: {other:?}"),
    }

    // Participant tokens: the lender gets its redacted view.
    let tok = c
        .create_token(p, lender, None, Some(Duration::from_secs(120)))
        .await
        .expect("token");
    assert_eq!((tok.payment_id, tok.party), (p, lender));
    assert_eq!(tok.roles, vec![Role::new("lender")]);
    let as_lender = Client::new(&base).expect("client").token(&tok.token);
    let (full_v, full) = c.payment(p).await.expect("tenant view");
    let (view_v, view) = as_lender.payment(p).await.expect("lender view");
    assert_eq!((full_v, view_v), (Some(version), Some(version)));
    assert!(
        full["amount"].is_object() && full["ledger"].is_object(),
        "{full}"
    );
    assert!(view["amount"].is_null(), "amounts hidden: {view}");
    assert!(view["ledger"].is_null(), "ledger hidden: {view}");
    assert_ne!(full, view);
    // Its history is the redacted view: not verifiable records, a typed error says so,
    // and `events_view` reads it (one item per event at least, no hashes, no amounts).
    let e = as_lender.events(p, 0, 500).await.expect_err("redacted");
    assert_eq!(e.code(), "redacted_history", "{e}");
    let items = as_lender.events_view(p, 0, 500).await.expect("view");
    assert!(!items.has_more);
    assert_eq!(items.next, version);
    assert!(items.events.iter().all(|i| i.hash.is_none()));
    assert!(items.events.windows(2).all(|w| w[0].seq <= w[1].seq));
    assert_eq!(items.events.last().map(|i| i.seq), Some(version));
    let text = serde_json::to_string(&items.events.iter().map(|i| &i.event).collect::<Vec<_>>())
        .expect("json");
    assert!(
        !text.contains("\"amount\":{\"amount\""),
        "amounts hidden: {text}"
    );
    // With the server's key pinned, the view and the state are taken only as the
    // server signed them; with another key pinned (another server, or one on the way)
    // they are refused.
    let pinned = Client::new(&base)
        .expect("client")
        .token(&tok.token)
        .pin(c.server_key().await.expect("server key"));
    assert_eq!(pinned.payment(p).await.expect("signed state").1, view);
    let signed = pinned.events_view(p, 0, 500).await.expect("signed view");
    assert_eq!(signed.events.len(), items.events.len());
    let stranger = Client::new(&base)
        .expect("client")
        .token(&tok.token)
        .pin(trustfold::history::PublicKey::from_secret(&[9u8; 32]));
    let e = stranger.payment(p).await.expect_err("another key");
    assert_eq!(e.code(), "bad_signature", "{e}");
    let e = stranger
        .events_view(p, 0, 500)
        .await
        .expect_err("another key");
    assert_eq!(e.code(), "bad_signature", "{e}");
    assert!(e.to_string().contains(&p.to_string()), "{e}");
    // Commands with a pinned key: the answers (opening a payment, a command) must be
    // the server's to this very request. With another key pinned the answer is refused
    // although the server applied the command: the same key then gets its replay.
    let server_key = c.server_key().await.expect("server key");
    let pinned_tenant = c.clone().pin(server_key);
    let signed_open = pinned_tenant
        .create_payment(&open("14 Elm St"), Some("pinned-open"))
        .await
        .expect("a signed opening");
    let invite = json!({"type": "Invite", "party": party(), "roles": ["buyer"]});
    let sent = pinned_tenant
        .send_command(
            signed_open.payment_id,
            &invite,
            Some(&as_(agent, "listing_agent")),
            None,
            Some("pinned-invite"),
        )
        .await
        .expect("a signed answer");
    assert_eq!(sent.version, 2);
    let stranger_tenant = c
        .clone()
        .pin(trustfold::history::PublicKey::from_secret(&[9u8; 32]));
    let e = stranger_tenant
        .create_payment(&open("16 Elm St"), Some("stranger-open"))
        .await
        .expect_err("another key");
    assert_eq!(e.code(), "bad_signature", "{e}");
    let refused_open = pinned_tenant
        .create_payment(&open("16 Elm St"), Some("stranger-open"))
        .await
        .expect("the opening the server made, signed for this request")
        .payment_id;
    let invite2 = json!({"type": "Invite", "party": party(), "roles": ["seller"]});
    let e = stranger_tenant
        .send_command(
            signed_open.payment_id,
            &invite2,
            Some(&as_(agent, "listing_agent")),
            None,
            Some("stranger-invite"),
        )
        .await
        .expect_err("another key");
    assert_eq!(e.code(), "bad_signature", "{e}");
    let replayed = pinned_tenant
        .send_command(
            signed_open.payment_id,
            &invite2,
            Some(&as_(agent, "listing_agent")),
            None,
            Some("stranger-invite"),
        )
        .await
        .expect("the applied command's answer, signed for this request");
    assert_eq!(replayed.version, 3);
    // The tenant reads the same page as verifiable records, also through events_view.
    let records = c.events_view(p, 0, 500).await.expect("records");
    assert_eq!(records.events.len() as u64, version);
    assert!(records.events.iter().all(|i| i.hash.is_some()));
    assert_eq!(records.events.last().map(|i| i.seq), Some(version));
    let own = as_lender.inbox(lender, 0, 100).await.expect("own inbox");
    assert_eq!(own.notifications.len(), 1);
    let e = as_lender
        .inbox(buyer, 0, 100)
        .await
        .expect_err("other inbox");
    assert_eq!(e.code(), "not_found");
    let e = as_lender.balances(p).await.expect_err("tenant only");
    assert!(matches!(e, trustfold::Error::Auth { .. }), "{e:?}");
    assert_eq!(e.code(), "balances_not_visible", "the server's code: {e}");
    let e = as_lender
        .payments(&PaymentQuery::default(), 0, 10)
        .await
        .expect_err("tenant only");
    assert!(matches!(e, trustfold::Error::Auth { .. }), "{e:?}");
    // Typed refusals when minting.
    let e = c
        .create_token(p, party(), None, None)
        .await
        .expect_err("not a participant");
    assert_eq!(e.code(), "unknown_participant");
    let e = c
        .create_token(p, lender, Some(&[Role::new("buyer")]), None)
        .await
        .expect_err("role not held");
    assert_eq!(e.code(), "role_not_held");
    let e = c
        .create_token(p, lender, None, Some(Duration::from_secs(3 * 86_400)))
        .await
        .expect_err("too long");
    assert!(matches!(e, trustfold::Error::Rejected { .. }), "{e:?}");
    // Roles may be narrowed to ones the party holds.
    let bt = c
        .create_token(p, buyer, Some(&[Role::new("buyer")]), None)
        .await
        .expect("buyer token");
    assert_eq!(bt.roles, vec![Role::new("buyer")]);
    // Revoked: the buyer's tokens so far stop working; a new one works.
    let as_buyer = Client::new(&base).expect("client").token(&bt.token);
    as_buyer.payment(p).await.expect("before the revocation");
    let revoked = c.revoke_tokens(p, buyer).await.expect("revoke");
    assert_eq!((revoked.payment_id, revoked.party), (p, buyer));
    assert_eq!(revoked.generation, 1);
    let e = as_buyer.payment(p).await.expect_err("revoked");
    assert_eq!(e.code(), "token_revoked", "{e}");
    let fresh = c
        .create_token(p, buyer, None, None)
        .await
        .expect("a new token");
    Client::new(&base)
        .expect("client")
        .token(&fresh.token)
        .payment(p)
        .await
        .expect("a token minted after the revocation works");
    let e = c
        .revoke_tokens(p, party())
        .await
        .expect_err("not a participant");
    assert_eq!(e.code(), "unknown_participant");

    // The history, as `trustfold::history::write` writes it, verified with its head.
    let key = anon.server_key().await.expect("key");
    let (doc, head) = c.fetch_history(p).await.expect("history");
    assert_eq!(head.seq, version);
    let records = trustfold::history::parse(&doc).expect("parses");
    assert_eq!(records.len() as u64, version);
    head.verify_against(&key, &records).expect("signed head");
    let sealed: Vec<trustfold::envelope::SealedEvent> = records
        .iter()
        .map(|r| trustfold::envelope::SealedEvent {
            hash: r.hash,
            body: r.event.get().as_bytes().to_vec(),
        })
        .collect();
    assert_eq!(trustfold::history::write(&sealed), doc, "byte for byte");
    let file = dir.path().join("p.history.json");
    std::fs::write(&file, &doc).expect("write");
    let report = trustfold::verify::Verifier::new()
        .key(key)
        .head(head)
        .verify_path(&file)
        .expect("verifies offline");
    assert_eq!(report.signed, 1);

    // Listing: more payments, paged two at a time, every one exactly once.
    let mut opened = vec![p, signed_open.payment_id, refused_open];
    for i in 0..4 {
        let r = c
            .create_payment(&open(&format!("lot {i}")), None)
            .await
            .expect("open");
        opened.push(r.payment_id);
    }
    let all = eventually("listing", || {
        let c = c.clone();
        let want = opened.len();
        async move {
            let all = c.all_payments(&PaymentQuery::default()).await.expect("all");
            (all.len() == want).then_some(all)
        }
    })
    .await;
    let (mut paged, mut after, mut pages) = (Vec::new(), 0, 0);
    loop {
        let page = c
            .payments(&PaymentQuery::default(), after, 2)
            .await
            .expect("page");
        assert!(page.payments.len() <= 2);
        pages += 1;
        paged.extend(page.payments.iter().map(|s| s.payment_id));
        after = page.next;
        if !page.has_more {
            break;
        }
    }
    assert_eq!(pages, 4, "7 payments, 2 a page");
    assert_eq!(paged, opened, "every payment once, oldest first");
    assert_eq!(all.iter().map(|s| s.payment_id).collect::<Vec<_>>(), opened);
    let first = &all[0];
    assert_eq!(first.policy.id, "earnest-money");
    assert_eq!(first.policy.version, 1);
    assert_eq!(first.version, version);
    assert_eq!(first.amount.to_string(), "5000.00 USD");
    let parties: BTreeSet<PartyId> = first.participants.iter().map(|x| x.party).collect();
    assert_eq!(
        parties,
        BTreeSet::from([agent, buyer, seller, escrow, lender])
    );
    // Filters: by participant, by status, by policy.
    let only = |q: PaymentQuery| {
        let c = c.clone();
        async move {
            c.all_payments(&q)
                .await
                .expect("filtered")
                .into_iter()
                .map(|s| s.payment_id)
                .collect::<Vec<_>>()
        }
    };
    let by_lender = only(PaymentQuery {
        participant: Some(lender),
        ..Default::default()
    })
    .await;
    assert_eq!(by_lender, vec![p]);
    let by_status = only(PaymentQuery {
        status: Some(first.status.clone()),
        ..Default::default()
    })
    .await;
    assert_eq!(by_status, vec![p], "only p is {}", first.status);
    assert_ne!(all[1].status, first.status);
    let by_policy = only(PaymentQuery {
        policy: Some("earnest-money".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(by_policy.len(), opened.len());
    let by_rail_ref = only(PaymentQuery {
        rail_ref: Some("w-1".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(by_rail_ref, vec![p]);
    let none = only(PaymentQuery {
        policy: Some("other policy&x=1".into()),
        ..Default::default()
    })
    .await;
    assert!(none.is_empty());

    running.shutdown().await.expect("shutdown");
}

/// A replica following the live stream keeps going across a restart of the server: the
/// stream ends, the replica reconnects with backoff and resumes with `Last-Event-ID`,
/// nothing lost or applied twice, and the restarted server's head still verifies
/// against the pinned key (kept in the database).
async fn follow_resumes_after_a_server_restart(database: &str) {
    let first = serve(database, 0).await;
    let addr = first.addr;
    let base = format!("http://{addr}");
    let anon = Client::new(&base).expect("client");
    let t = anon
        .create_tenant(ADMIN, "Restart Realty")
        .await
        .expect("tenant");
    let api_key = t["api_key"].as_str().expect("api key").to_string();
    let c = Client::new(&base).expect("client").api_key(&api_key);
    let policy: Value =
        serde_json::from_str(include_str!("../../examples/policies/earnest-money.json"))
            .expect("policy");
    c.create_policy(&policy).await.expect("policy");
    let agent = id();
    let open = json!({
        "policy": "earnest-money",
        "amount": {"amount": "750.00", "currency": "USD"},
        "initiator": {"party": agent, "roles": ["listing_agent"]}
    });
    let p = c
        .create_payment(&open, None)
        .await
        .expect("open")
        .payment_id;
    let key = anon.server_key().await.expect("key");
    let mut rep = Replica::new(c.clone(), p, key).expect("replica");
    assert_eq!(rep.sync().await.expect("sync"), 1);

    let follower = tokio::spawn(async move {
        let mut seen = Vec::new();
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            rep.follow(|s| {
                seen.push(s.version);
                s.version < 3
            }),
        )
        .await;
        (r, seen, rep)
    });
    let as_agent = json!({"party": agent, "role": "listing_agent"});
    let invite = |roles: &str| json!({"type": "Invite", "party": id(), "roles": [roles]});
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.send_command(p, &invite("buyer"), Some(&as_agent), Some(1), None)
        .await
        .expect("invite before the restart");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Restart on the same address and database; the follower is disconnected meanwhile.
    first.shutdown().await.expect("shutdown");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = serve(database, addr.port()).await;
    assert_eq!(second.addr, addr);
    c.send_command(p, &invite("seller"), Some(&as_agent), Some(2), None)
        .await
        .expect("invite after the restart");

    let (r, seen, rep) = follower.await.expect("follower");
    assert!(matches!(r, Ok(Ok(()))), "{r:?}");
    assert_eq!(
        seen,
        vec![2, 3],
        "each event once, in order, across the restart"
    );
    assert_eq!(rep.version(), 3);
    assert!(
        rep.diff().await.expect("diff").is_empty(),
        "replica = read model"
    );
    second.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_resumes_after_a_server_restart_sqlite() {
    let dir = tempfile::tempdir().expect("tmp");
    follow_resumes_after_a_server_restart(&dir.path().join("t.db").display().to_string()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_resumes_after_a_server_restart_postgres() {
    if let Some(url) = postgres() {
        follow_resumes_after_a_server_restart(&url).await;
    }
}

/// Over the server's rate limit, the client waits `Retry-After` out and sends the
/// request again (nothing of it ran); a wait longer than it is willing to make comes
/// back as the `rate_limited` error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_requests_are_sent_again_after_retry_after() {
    use std::num::NonZeroU32;
    use trustfold::client::PaymentQuery;
    use trustfold_server::api::limits::Rate;

    let dir = tempfile::tempdir().expect("tmp");
    let start_with = |per: Duration, database: String| async move {
        let mut c = Config::new(database);
        c.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c.http.admin_token = Some(ADMIN.into());
        // Two requests at once, then one per `per`.
        c.http.tenant_rate = Some(Rate {
            requests: NonZeroU32::MIN,
            per,
            burst: NonZeroU32::new(2).expect("2"),
        });
        start(c).await.expect("server starts")
    };
    for (per, waits) in [
        (Duration::from_secs(2), true),
        (Duration::from_secs(60), false),
    ] {
        let db = dir.path().join(format!("{}.db", per.as_secs()));
        let running = start_with(per, db.display().to_string()).await;
        let base = format!("http://{}", running.addr);
        let anon = Client::new(&base).expect("client");
        let t = anon
            .create_tenant(ADMIN, "Busy Realty")
            .await
            .expect("tenant");
        let key = t["api_key"].as_str().expect("api key").to_string();
        let c = Client::new(&base).expect("client").api_key(&key);
        let http = reqwest::Client::new();
        // The budget is spent: the server refuses the next request.
        for expected in [200, 200, 429] {
            let r = http
                .get(format!("{base}/v1/payments"))
                .bearer_auth(&key)
                .send()
                .await
                .expect("send");
            assert_eq!(r.status().as_u16(), expected);
        }
        let listed = c.payments(&PaymentQuery::default(), 0, 10).await;
        if waits {
            // Retry-After is at most 2 s: the client waits and gets its answer.
            assert_eq!(listed.expect("answered after the wait").payments.len(), 0);
        } else {
            // About a minute: longer than the client waits.
            let e = listed.expect_err("over the limit");
            assert_eq!(e.code(), "rate_limited", "{e}");
            assert!(e.to_string().contains("retry after"), "{e}");
        }
        running.shutdown().await.expect("shutdown");
    }
}

/// A live stream refused for the rate limit (429 `rate_limited`: nothing ran) is opened
/// again once `Retry-After` has passed, as any other request of the client's: `follow`
/// goes on and sees the next event instead of ending with an `http_429` error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_waits_out_a_rate_limit() {
    use std::num::NonZeroU32;
    use trustfold_server::api::limits::Rate;

    let dir = tempfile::tempdir().expect("tmp");
    let mut config = Config::new(dir.path().join("t.db").display().to_string());
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.http.admin_token = Some(ADMIN.into());
    config.http.heartbeat = Duration::from_millis(300);
    config.http.poll_interval = Duration::from_millis(100);
    // Bursts of 3, then one a second.
    config.http.tenant_rate = Some(Rate {
        requests: NonZeroU32::MIN,
        per: Duration::from_secs(1),
        burst: NonZeroU32::new(3).expect("3"),
    });
    let running = start(config).await.expect("server starts");
    let base = format!("http://{}", running.addr);
    let anon = Client::new(&base).expect("client");
    let t = anon.create_tenant(ADMIN, "Busy").await.expect("tenant");
    let api_key = t["api_key"].as_str().expect("api key").to_string();
    let c = Client::new(&base).expect("client").api_key(&api_key);
    let policy: Value =
        serde_json::from_str(include_str!("../../examples/policies/earnest-money.json"))
            .expect("policy");
    c.create_policy(&policy).await.expect("policy");
    let agent = id();
    let open = json!({
        "policy": "earnest-money",
        "amount": {"amount": "750.00", "currency": "USD"},
        "initiator": {"party": agent, "roles": ["listing_agent"]}
    });
    let p = c
        .create_payment(&open, None)
        .await
        .expect("open")
        .payment_id;
    let key = anon.server_key().await.expect("key");
    let mut rep = Replica::new(c.clone(), p, key).expect("replica");
    assert_eq!(rep.sync().await.expect("sync"), 1);
    // The budget is spent: the stream's opening is refused at first.
    let http = reqwest::Client::new();
    loop {
        let r = http
            .get(format!("{base}/v1/payments"))
            .bearer_auth(&api_key)
            .send()
            .await
            .expect("send");
        if r.status().as_u16() == 429 {
            break;
        }
    }
    let follower = tokio::spawn(async move {
        let mut seen = Vec::new();
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            rep.follow(|s| {
                seen.push(s.version);
                s.version < 2
            }),
        )
        .await;
        (r, seen)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let as_agent = json!({"party": agent, "role": "listing_agent"});
    let invite = json!({"type": "Invite", "party": id(), "roles": ["buyer"]});
    c.send_command(p, &invite, Some(&as_agent), Some(1), None)
        .await
        .expect("invite");
    let (r, seen) = follower.await.expect("follower");
    assert!(matches!(r, Ok(Ok(()))), "{r:?}");
    assert_eq!(seen, vec![2]);
    running.shutdown().await.expect("shutdown");
}

/// A page of a redacted view whose events are all hidden from the participant (the
/// lender sees none of an invitation and a join) has no items, but the server flags it
/// `"redacted": true`: `Client::events` says `redacted_history`, not "no events".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redacted_page_with_every_event_hidden_is_redacted_history() {
    use trustfold::id::PartyId;

    let dir = tempfile::tempdir().expect("tmp");
    let running = server(dir.path()).await;
    let base = format!("http://{}", running.addr);
    let anon = Client::new(&base).expect("client");
    let t = anon.create_tenant(ADMIN, "Hidden").await.expect("tenant");
    let api_key = t["api_key"].as_str().expect("api key").to_string();
    let c = Client::new(&base).expect("client").api_key(&api_key);
    let policy: Value =
        serde_json::from_str(include_str!("../../examples/policies/earnest-money.json"))
            .expect("policy");
    c.create_policy(&policy).await.expect("policy");
    let (agent, lender) = (id(), PartyId::from_uuid(uuid::Uuid::new_v4()));
    let open = json!({
        "policy": "earnest-money",
        "amount": {"amount": "900.00", "currency": "USD"},
        "initiator": {"party": agent, "roles": ["listing_agent"]}
    });
    let p = c
        .create_payment(&open, None)
        .await
        .expect("open")
        .payment_id;
    let invite = json!({"type": "Invite", "party": lender, "roles": ["lender"]});
    c.send_command(
        p,
        &invite,
        Some(&json!({"party": agent, "role": "listing_agent"})),
        Some(1),
        None,
    )
    .await
    .expect("invite");
    c.send_command(
        p,
        &json!({"type": "Join"}),
        Some(&json!({"party": lender, "role": "lender"})),
        Some(2),
        None,
    )
    .await
    .expect("join");
    let tok = c
        .create_token(p, lender, None, None)
        .await
        .expect("token")
        .token;
    let as_lender = Client::new(&base).expect("client").token(&tok);
    // The view after the opening: both events hidden, no items at all.
    let view = as_lender.events_view(p, 1, 100).await.expect("view");
    assert!(view.events.is_empty(), "{:?}", view.events);
    let e = as_lender
        .events(p, 1, 100)
        .await
        .expect_err("a redacted page is not an empty history");
    assert_eq!(e.code(), "redacted_history", "{e}");
    // The tenant's key gets the verifiable records of the same events.
    let page = c.events(p, 1, 100).await.expect("records");
    assert_eq!(page.events.len(), 2);
    assert!(!page.redacted);
    running.shutdown().await.expect("shutdown");
}
