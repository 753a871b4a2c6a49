//! The client, replica, subscription and `trustfold fetch` against a real server
//! (started in-process on a temporary SQLite file, over loopback HTTP).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use trustfold::client::Client;
use trustfold::id::PaymentId;
use trustfold::replica::Replica;
use trustfold::subscription::{FileCheckpoint, Subscription};
use trustfold_server::app::{start, Config};

const ADMIN: &str = "admin-secret-for-tests";

async fn server(dir: &std::path::Path) -> trustfold_server::app::Running {
    let mut c = Config::new(dir.join("trustfold.db").display().to_string());
    c.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.http.admin_token = Some(ADMIN.into());
    c.http.heartbeat = Duration::from_millis(300);
    c.http.poll_interval = Duration::from_millis(100);
    start(c).await.expect("server starts")
}

fn id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_replica_subscription_and_fetch_against_a_real_server() {
    let dir = tempfile::tempdir().expect("tmp");
    let running = server(dir.path()).await;
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
    let mut rep = Replica::new(c.clone(), p, key);
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
    let cp = dir.path().join("feed.checkpoint");
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
    let out = dir.path().join("p.history.json");
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
