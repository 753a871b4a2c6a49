//! The kill test: SIGKILL the server binary while clients send commands, restart it on
//! the same SQLite file, and check that every acknowledged command's events are stored
//! exactly once, that retries with the same idempotency keys neither duplicate nor lose
//! anything, and that every chain still verifies. And its graceful twin: SIGTERM while
//! clients send commands, after which exactly the answered commands' events are stored.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::scenario::{history, open_and_join, Client, EARNEST_MONEY};
use serde_json::{json, Value};

const ADMIN: &str = "kill-test-admin";

/// Starts the binary on `db` and returns it with its base url.
fn spawn(db: &str) -> (Child, String) {
    spawn_with(db, &[])
}

/// [`spawn`] with more command-line arguments.
fn spawn_with(db: &str, args: &[&str]) -> (Child, String) {
    common::spawn_binary(db, ADMIN, args)
}

#[derive(Debug, Clone)]
struct Sent {
    key: String,
    path: String,
    body: Value,
}

#[derive(Default)]
struct Log {
    /// Acknowledged commands and the event ids their responses carried.
    acked: Vec<(Sent, Value)>,
    /// Sent but not acknowledged (the server died).
    pending: Vec<Sent>,
}

async fn client_loop(c: Client, key: String, who: usize, log: Arc<Mutex<Log>>, stop: Instant) {
    let mut n = 0;
    while Instant::now() < stop {
        n += 1;
        let agent = uuid::Uuid::new_v4();
        let open = Sent {
            key: format!("c{who}-{n}-open"),
            path: "/v1/payments".into(),
            body: json!({"policy": "earnest-money", "amount": {"amount": "500.00", "currency": "USD"},
                         "initiator": {"party": agent, "roles": ["listing_agent"]}}),
        };
        let r = c
            .raw(
                "POST",
                &open.path,
                Some(&key),
                &[("idempotency-key", &open.key)],
                Some(open.body.to_string().into_bytes()),
            )
            .await;
        let payment = match r {
            Ok(r) if r.status == 201 => {
                let p = r.body["payment_id"].as_str().unwrap_or_default().to_owned();
                log.lock().expect("log").acked.push((open, r.body));
                p
            }
            Ok(r) => panic!("unexpected answer {}: {}", r.status, r.body),
            Err(_) => {
                log.lock().expect("log").pending.push(open);
                return;
            }
        };
        let invite = Sent {
            key: format!("c{who}-{n}-invite"),
            path: format!("/v1/payments/{payment}/commands"),
            body: json!({"command": {"type": "Invite", "party": uuid::Uuid::new_v4(), "roles": ["buyer"]},
                         "actor": {"party": agent, "role": "listing_agent"}}),
        };
        let r = c
            .raw(
                "POST",
                &invite.path,
                Some(&key),
                &[("idempotency-key", &invite.key)],
                Some(invite.body.to_string().into_bytes()),
            )
            .await;
        match r {
            Ok(r) if r.status == 200 => log.lock().expect("log").acked.push((invite, r.body)),
            Ok(r) => panic!("unexpected answer {}: {}", r.status, r.body),
            Err(_) => {
                log.lock().expect("log").pending.push(invite);
                return;
            }
        }
    }
}

/// A database for one test: a SQLite file in a temp dir, or a fresh PostgreSQL database
/// (dropped by [`Db::finish`]); `None` when PostgreSQL is knowingly skipped.
struct Db {
    url: String,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

impl Db {
    fn sqlite() -> Db {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = dir.path().join("trustfold.db").display().to_string();
        Db {
            url,
            _dir: Some(dir),
            pg: None,
        }
    }

    async fn postgres() -> Option<Db> {
        let (admin, name, url) = common::postgres_database().await?;
        Some(Db {
            url,
            _dir: None,
            pg: Some((admin, name)),
        })
    }

    async fn finish(self) {
        if let Some((admin, name)) = self.pg {
            common::drop_database(&admin, &name).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_commands_loses_and_duplicates_nothing_sqlite() {
    let db = Db::sqlite();
    sigkill_during_commands(&db.url).await;
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_commands_loses_and_duplicates_nothing_postgres() {
    let Some(db) = Db::postgres().await else {
        return;
    };
    sigkill_during_commands(&db.url).await;
    db.finish().await;
}

async fn sigkill_during_commands(db: &str) {
    let (mut child, url) = spawn(db);
    let c = Client::new(url);
    let key = c.tenant(ADMIN, "kill").await.expect("tenant");
    let policy: Value = serde_json::from_str(EARNEST_MONEY).expect("policy");
    assert_eq!(c.post("/v1/policies", &key, &policy).await.status, 201);

    let log = Arc::new(Mutex::new(Log::default()));
    let stop = Instant::now() + Duration::from_secs(20);
    let clients: Vec<_> = (0..4)
        .map(|i| tokio::spawn(client_loop(c.clone(), key.clone(), i, log.clone(), stop)))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    for t in clients {
        t.await.expect("client");
    }
    let (acked, pending) = {
        let l = log.lock().expect("log");
        (l.acked.clone(), l.pending.clone())
    };
    assert!(
        acked.len() >= 8,
        "the clients got {} commands through before the kill",
        acked.len()
    );

    eprintln!(
        "killed with {} commands acknowledged and {} in flight",
        acked.len(),
        pending.len()
    );
    // Restart on the same database; retry what was not acknowledged, and replay some
    // that were.
    let (mut child, url) = spawn(db);
    let c = Client::new(url);
    let mut all = acked.clone();
    for s in &pending {
        let r = c.post_idem(&s.path, &key, &s.key, &s.body).await;
        assert!(
            r.status == 200 || r.status == 201,
            "retry of {}: {} {}",
            s.key,
            r.status,
            r.body
        );
        all.push((s.clone(), r.body));
    }
    for (s, first) in acked.iter().take(10) {
        let r = c.post_idem(&s.path, &key, &s.key, &s.body).await;
        assert_eq!(r.body["events"], first["events"], "replay of {}", s.key);
    }

    // Every acknowledged (or retried) command's events are stored exactly once.
    let mut feed: Vec<Value> = Vec::new();
    let mut after = 0;
    loop {
        let r = c
            .get(&format!("/v1/events?after={after}&limit=1000"), &key)
            .await;
        feed.extend(r.body["events"].as_array().cloned().unwrap_or_default());
        if !r.body["has_more"].as_bool().unwrap_or(false) {
            break;
        }
        after = r.body["next"].as_u64().expect("next");
    }
    let mut ids: HashMap<String, usize> = HashMap::new();
    for e in &feed {
        *ids.entry(e["event"]["id"].as_str().expect("id").to_owned())
            .or_default() += 1;
    }
    assert!(ids.values().all(|n| *n == 1), "an event id is stored twice");
    for (s, body) in &all {
        for ev in body["events"].as_array().expect("events") {
            let id = ev["event"]["id"].as_str().expect("id");
            assert_eq!(ids.get(id), Some(&1), "event {id} of {} stored once", s.key);
        }
    }
    // Every chain verifies and folds.
    let payments: HashSet<String> = feed
        .iter()
        .map(|e| e["payment_id"].as_str().expect("payment").to_owned())
        .collect();
    for p in &payments {
        let doc = history(&c, &key, p, 1000).await.expect("history");
        trustfold_core::fold::replay(&doc).expect("the chain verifies after the crash");
    }
    child.kill().expect("stop");
    child.wait().expect("reap");
}

/// SIGTERM while 16 clients send commands: the server finishes the requests it took and
/// exits cleanly, and every payment then holds exactly the events of the commands that
/// were answered (a request cut off after its commit would leave an event nobody was
/// told of).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_commands_answers_every_command_it_commits_sqlite() {
    let db = Db::sqlite();
    sigterm_during_commands(&db.url).await;
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_commands_answers_every_command_it_commits_postgres() {
    let Some(db) = Db::postgres().await else {
        return;
    };
    sigterm_during_commands(&db.url).await;
    db.finish().await;
}

async fn sigterm_during_commands(db: &str) {
    let (mut child, url) = spawn(db);
    let c = Client::new(url);
    let key = c.tenant(ADMIN, "term").await.expect("tenant");
    let mut flows = Vec::new();
    for _ in 0..16 {
        flows.push(open_and_join(&c, &key).await.expect("open"));
    }
    let mut before = Vec::new();
    for f in &flows {
        let s = c.get(&format!("/v1/payments/{}", f.payment), &key).await;
        before.push(s.body["version"].as_u64().expect("version"));
    }
    let tasks: Vec<_> = flows
        .iter()
        .map(|f| {
            let (c, key) = (c.clone(), key.clone());
            let (payment, agent) = (f.payment.clone(), f.agent.clone());
            tokio::spawn(async move {
                let broker = uuid::Uuid::new_v4();
                let path = format!("/v1/payments/{payment}/commands");
                let mut answered = 0u64;
                loop {
                    // Invite and remove one brokerage in turn: one event per command.
                    let command = if answered % 2 == 0 {
                        json!({"type": "Invite", "party": broker, "roles": ["brokerage"]})
                    } else {
                        json!({"type": "Remove", "party": broker})
                    };
                    let body = json!({"command": command,
                        "actor": {"party": agent, "role": "listing_agent"}});
                    let body = Some(body.to_string().into_bytes());
                    match c.raw("POST", &path, Some(&key), &[], body).await {
                        Ok(r) if r.status == 200 => answered += 1,
                        Ok(r) => panic!("a command answered {} at shutdown: {}", r.status, r.body),
                        Err(_) => return answered, // no longer taking requests
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    let exit = child.wait().expect("reap");
    assert!(exit.success(), "a clean exit after SIGTERM: {exit}");
    let mut answered = Vec::new();
    for t in tasks {
        answered.push(t.await.expect("client"));
    }
    assert!(
        answered.iter().all(|n| *n > 0),
        "every client got answers before the signal: {answered:?}"
    );

    let (mut child, url) = spawn(db);
    let c = Client::new(url);
    for ((f, before), answered) in flows.iter().zip(before).zip(answered) {
        let s = c.get(&format!("/v1/payments/{}", f.payment), &key).await;
        assert_eq!(
            s.body["version"].as_u64(),
            Some(before + answered),
            "payment {}: the stored events are the answered commands'",
            f.payment
        );
    }
    child.kill().expect("stop");
    child.wait().expect("reap");
}

/// SIGTERM while a client holds a connection on which it never finishes its request
/// (its headers cut off midway, as a stalled or malicious client leaves them): the
/// server does not wait for it forever. It still finishes every request in flight,
/// which the request deadline bounds, and then exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_though_a_client_never_finishes_its_request_sqlite() {
    use std::io::Write as _;
    let db = Db::sqlite();
    let (mut child, url) = spawn_with(&db.url, &["--request-timeout-seconds", "1"]);
    let c = Client::new(url.clone());
    let key = c.tenant(ADMIN, "stall").await.expect("tenant");
    let addr = url.trim_start_matches("http://");
    let mut stalled = std::net::TcpStream::connect(addr).expect("connect");
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .expect("half a request");
    // The connection is being served (a request answered after it was opened).
    assert_eq!(c.get("/v1/payments", &key).await.status, 200);

    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(8);
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("try_wait") {
            break exit;
        }
        if Instant::now() > deadline {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
            panic!("still running 8 s after SIGTERM, held by a half-sent request");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "a clean exit after SIGTERM: {exit}");
    drop(stalled);
    db.finish().await;
}
