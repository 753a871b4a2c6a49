//! Secrets at rest (`trustfold_server::sealed`), through real servers on loopback over a
//! real SQLite file and PostgreSQL: with a secrets key the server key and the webhook
//! secrets are stored sealed (the database's bytes do not hold them), the published key
//! stays the same across restarts, a database first run without a key is sealed in place
//! (its key, tokens and webhook secrets stay valid), and a start without the key or with
//! another one is refused with an error that says so. The binary's `--secrets-key-file`,
//! `TRUSTFOLD_SECRETS_KEY` and `new-secrets-key` are run too.

mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use common::scenario::{fund, open_and_join, Client};
use common::ADMIN;
use serde_json::{json, Value};
use sqlx::Connection as _;
use trustfold::webhook::Webhook;
use trustfold_core::history::PublicKey;
use trustfold_server::app::{start, Running, ServerError};
use trustfold_server::sealed::{is_sealed, Purpose, SecretsKey};
use trustfold_server::StoreError;
use uuid::Uuid;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
}

/// The tenant's endpoint: records every request, answers 200.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Got>>>);

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    r.0.lock().expect("lock").push(Got {
        id: h("webhook-id"),
        timestamp: h("webhook-timestamp"),
        signature: h("webhook-signature"),
        body: body.to_vec(),
    });
    StatusCode::OK
}

impl Receiver {
    async fn start(&self) -> String {
        let app = axum::Router::new()
            .route("/hooks", axum::routing::post(receive))
            .with_state(self.clone());
        format!("http://{}/hooks", common::serve_on_loopback(app).await)
    }

    /// Waits (at most 20 s) for a request about `payment` of type `event_type`.
    async fn wait_for(&self, payment: &str, event_type: &str) -> Got {
        let start = Instant::now();
        loop {
            let found = self.0.lock().expect("lock").iter().find_map(|g| {
                let v: Value = serde_json::from_slice(&g.body).ok()?;
                (v["data"]["payment_id"] == payment && v["type"] == event_type).then(|| g.clone())
            });
            if let Some(g) = found {
                return g;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no {event_type} of {payment} within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Whether a receiver holding `secret` (`whsec_…`) accepts the request now.
fn verified(g: &Got, secret: &str) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    Webhook::new(secret)
        .expect("secret")
        .verify_at(
            &g.id,
            &g.timestamp,
            &g.signature,
            &g.body,
            i64::try_from(now).expect("now"),
        )
        .is_ok()
}

/// The bytes of a `whsec_…` secret.
fn raw_secret(whsec: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(whsec.trim_start_matches("whsec_"))
        .expect("base64")
}

fn server_config(database: &str, key: Option<&SecretsKey>) -> trustfold_server::app::Config {
    let mut config = common::config(database);
    config.webhooks.allow_private = true;
    config.webhooks.retry_first = Duration::from_millis(100);
    config.secrets_key = key.cloned();
    config
}

/// A server on `database` with `key` (or none).
async fn serve(database: &str, key: Option<&SecretsKey>) -> (Running, Client) {
    let running = start(server_config(database, key))
        .await
        .expect("server starts");
    let client = Client::new(format!("http://{}", running.addr));
    (running, client)
}

/// What `GET /v1/server-key` publishes.
async fn published_key(c: &Client) -> String {
    let r = c.get("/v1/server-key", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["public_key"].as_str().expect("key").to_owned()
}

/// The secrets as the database holds them: the server key, and each endpoint's id,
/// secret and retired secrets (their JSON text).
#[derive(Debug)]
struct Stored {
    server_key: Vec<u8>,
    webhooks: Vec<(Uuid, Vec<u8>, String)>,
}

impl Stored {
    async fn of(database: &str) -> Stored {
        const KEY: &str = "SELECT secret FROM server_keys WHERE id = 1";
        const HOOKS: &str =
            "SELECT webhook_id, secret, previous_secrets FROM webhooks ORDER BY created_at_us";
        if database.starts_with("postgres") {
            let mut conn = sqlx::PgConnection::connect(database)
                .await
                .expect("connect");
            Stored {
                server_key: sqlx::query_scalar(KEY)
                    .fetch_one(&mut conn)
                    .await
                    .expect("key"),
                webhooks: sqlx::query_as(HOOKS)
                    .fetch_all(&mut conn)
                    .await
                    .expect("hooks"),
            }
        } else {
            let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{database}"))
                .await
                .expect("open");
            Stored {
                server_key: sqlx::query_scalar(KEY)
                    .fetch_one(&mut conn)
                    .await
                    .expect("key"),
                webhooks: sqlx::query_as(HOOKS)
                    .fetch_all(&mut conn)
                    .await
                    .expect("hooks"),
            }
        }
    }

    /// The one endpoint's stored secret and retired secrets (bytes as stored).
    fn webhook(&self) -> (Uuid, Vec<u8>, Vec<Vec<u8>>) {
        assert_eq!(self.webhooks.len(), 1, "{self:?}");
        let (id, secret, previous) = &self.webhooks[0];
        let list: Vec<Value> = serde_json::from_str(previous).expect("JSON");
        let previous = list
            .iter()
            .map(|v| {
                base64::engine::general_purpose::STANDARD
                    .decode(v["secret"].as_str().expect("secret"))
                    .expect("base64")
            })
            .collect();
        (*id, secret.clone(), previous)
    }

    /// Every stored byte of these columns, together.
    fn bytes(&self) -> Vec<u8> {
        let mut all = self.server_key.clone();
        for (_, secret, previous) in &self.webhooks {
            all.extend_from_slice(secret);
            all.extend_from_slice(previous.as_bytes());
        }
        all
    }
}

fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Asserts that none of `secrets` is in the stored columns, in clear or base64; on
/// SQLite, that none is anywhere in the database's files either.
fn assert_not_stored(database: &str, stored: &Stored, secrets: &[&[u8]]) {
    let columns = stored.bytes();
    let mut files = Vec::new();
    if !database.starts_with("postgres") {
        for suffix in ["", "-wal", "-journal"] {
            if let Ok(b) = std::fs::read(format!("{database}{suffix}")) {
                files.extend_from_slice(&b);
            }
        }
        assert!(!files.is_empty(), "no database file at {database}");
    }
    for (i, s) in secrets.iter().enumerate() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(s);
        assert!(!holds(&columns, s), "secret {i} stored in clear");
        assert!(
            !holds(&columns, b64.as_bytes()),
            "secret {i} stored in base64"
        );
        assert!(!holds(&files, s), "secret {i} in the database file");
        assert!(
            !holds(&files, b64.as_bytes()),
            "secret {i} in the file, base64"
        );
    }
}

/// The error a start on `database` with `key` ends with.
async fn refused(database: &str, key: Option<&SecretsKey>) -> ServerError {
    start(server_config(database, key))
        .await
        .expect_err("the server must refuse to start")
}

/// A server started with a key stores every secret sealed; the same key starts it
/// again with the same published key and webhook secrets; no key, or another key, is
/// refused with an error that says what to do.
async fn a_key_seals_every_secret(database: &str) {
    let key = SecretsKey::generate().expect("key");
    let (running, c) = serve(database, Some(&key)).await;
    let public = published_key(&c).await;
    let api = c.tenant(ADMIN, "Sealed Escrow").await.expect("tenant");
    let receiver = Receiver::default();
    let url = receiver.start().await;
    let r = c.post("/v1/webhooks", &api, &json!({ "url": url })).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let webhook = r.body["webhook_id"].as_str().expect("id").to_owned();
    let first = r.body["secret"].as_str().expect("secret").to_owned();
    // Stored sealed as soon as it is made (read while the server runs).
    let (_, made, _) = Stored::of(database).await.webhook();
    assert!(is_sealed(&made), "a new endpoint's secret stored in clear");
    // Registering again answers the same secret (opened from its sealed form).
    let again = c.post("/v1/webhooks", &api, &json!({ "url": url })).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["secret"], first.as_str());
    // A rotation: the first secret retired (still signing for an hour), a second one.
    let r = c
        .post(
            &format!("/v1/webhooks/{webhook}/rotate-secret"),
            &api,
            &json!({ "expire_previous_after_seconds": 3600 }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let second = r.body["secret"].as_str().expect("secret").to_owned();
    assert_ne!(first, second);
    let f = open_and_join(&c, &api).await.expect("open");
    let g = receiver.wait_for(&f.payment, "PaymentInitiated").await;
    assert!(verified(&g, &second), "signed with the current secret");
    assert!(verified(&g, &first), "and with the retired one");
    running.shutdown().await.expect("shutdown");

    // The database holds each secret sealed, for its purpose, and opened with the key
    // it is the secret that signs.
    let stored = Stored::of(database).await;
    assert!(is_sealed(&stored.server_key), "{:?}", stored.server_key);
    let server_secret = key
        .open(&Purpose::ServerKey, &stored.server_key)
        .expect("the key opens the server key");
    let server_secret: [u8; 32] = server_secret.try_into().expect("32 bytes");
    assert_eq!(PublicKey::from_secret(&server_secret).to_string(), public);
    let (id, secret, previous) = stored.webhook();
    assert_eq!(id.to_string(), webhook);
    assert!(is_sealed(&secret));
    assert_eq!(
        key.open(&Purpose::Webhook(id), &secret),
        Some(raw_secret(&second))
    );
    assert_eq!(previous.len(), 1);
    assert!(is_sealed(&previous[0]));
    assert_eq!(
        key.open(&Purpose::Webhook(id), &previous[0]),
        Some(raw_secret(&first))
    );
    assert_not_stored(
        database,
        &stored,
        &[&server_secret, &raw_secret(&first), &raw_secret(&second)],
    );

    // The same key: the same published key, the same secrets signing.
    let (running, c) = serve(database, Some(&key)).await;
    assert_eq!(published_key(&c).await, public);
    fund(&c, &api, &f).await.expect("fund");
    let g = receiver.wait_for(&f.payment, "FundingSettled").await;
    assert!(verified(&g, &second) && verified(&g, &first));
    running.shutdown().await.expect("shutdown");

    // No key: refused, saying the secrets are sealed and how to give the key.
    let e = refused(database, None).await;
    assert!(
        matches!(e, ServerError::Store(StoreError::SecretsSealed)),
        "{e:?}"
    );
    let message = e.to_string();
    assert!(
        message.contains("sealed")
            && message.contains("--secrets-key-file")
            && message.contains("TRUSTFOLD_SECRETS_KEY"),
        "{message}"
    );
    // Another key: refused, saying the key does not open them.
    let other = SecretsKey::generate().expect("key");
    let e = refused(database, Some(&other)).await;
    assert!(
        matches!(&e, ServerError::Store(StoreError::WrongSecretsKey { what }) if what == "the server key"),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("does not open the server key"),
        "{e}"
    );
    // Nothing was changed by the refused starts: the key still opens everything.
    let after = Stored::of(database).await;
    assert_eq!(after.bytes(), stored.bytes());
    let (running, c) = serve(database, Some(&key)).await;
    assert_eq!(published_key(&c).await, public);
    running.shutdown().await.expect("shutdown");
}

common::on_both_databases!(a_key_seals_every_secret);

/// A database first run without a key is sealed in place when started with one: the
/// same published key, participant tokens minted before still good, webhooks signed
/// with the same secrets (current and retired); from then on it needs the key.
async fn a_clear_database_is_sealed_in_place(database: &str) {
    let (running, c) = serve(database, None).await;
    let public = published_key(&c).await;
    let api = c.tenant(ADMIN, "Clear Escrow").await.expect("tenant");
    let receiver = Receiver::default();
    let url = receiver.start().await;
    let r = c.post("/v1/webhooks", &api, &json!({ "url": url })).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let webhook = r.body["webhook_id"].as_str().expect("id").to_owned();
    let first = r.body["secret"].as_str().expect("secret").to_owned();
    let r = c
        .post(
            &format!("/v1/webhooks/{webhook}/rotate-secret"),
            &api,
            &json!({ "expire_previous_after_seconds": 3600 }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let second = r.body["secret"].as_str().expect("secret").to_owned();
    let f = open_and_join(&c, &api).await.expect("open");
    let token = c.participant_token(&api, &f.payment, &f.buyer, 3600).await;
    let seen = c.get(&format!("/v1/payments/{}", f.payment), &token).await;
    assert_eq!(seen.status, 200, "{}", seen.body);
    receiver.wait_for(&f.payment, "PaymentInitiated").await;
    running.shutdown().await.expect("shutdown");
    // In clear, as before secrets keys.
    let clear = Stored::of(database).await;
    assert_eq!(clear.server_key.len(), 32);
    let (id, secret, previous) = clear.webhook();
    assert_eq!(secret, raw_secret(&second));
    assert_eq!(previous, vec![raw_secret(&first)]);

    let key = SecretsKey::generate().expect("key");
    let (running, c) = serve(database, Some(&key)).await;
    assert_eq!(published_key(&c).await, public, "the same server key");
    let seen = c.get(&format!("/v1/payments/{}", f.payment), &token).await;
    assert_eq!(seen.status, 200, "a token minted before: {}", seen.body);
    fund(&c, &api, &f).await.expect("fund");
    let g = receiver.wait_for(&f.payment, "FundingSettled").await;
    assert!(verified(&g, &second), "the same current secret");
    assert!(verified(&g, &first), "the same retired secret");
    running.shutdown().await.expect("shutdown");

    let sealed = Stored::of(database).await;
    assert!(is_sealed(&sealed.server_key));
    assert_eq!(
        key.open(&Purpose::ServerKey, &sealed.server_key),
        Some(clear.server_key.clone())
    );
    let (same_id, secret, previous) = sealed.webhook();
    assert_eq!(same_id, id);
    assert_eq!(
        key.open(&Purpose::Webhook(id), &secret),
        Some(raw_secret(&second))
    );
    assert_eq!(previous.len(), 1);
    assert_eq!(
        key.open(&Purpose::Webhook(id), &previous[0]),
        Some(raw_secret(&first))
    );
    let columns = sealed.bytes();
    for s in [&clear.server_key, &raw_secret(&first), &raw_secret(&second)] {
        assert!(!holds(&columns, s), "a secret still in clear");
    }

    // From now on the key is needed.
    let e = refused(database, None).await;
    assert!(
        matches!(e, ServerError::Store(StoreError::SecretsSealed)),
        "{e:?}"
    );
    // A second start with the key seals nothing more and changes nothing.
    let (running, c) = serve(database, Some(&key)).await;
    assert_eq!(published_key(&c).await, public);
    running.shutdown().await.expect("shutdown");
    assert_eq!(Stored::of(database).await.bytes(), sealed.bytes());
}

common::on_both_databases!(a_clear_database_is_sealed_in_place);

/// Webhook secrets sealed under another key than the server key's (the database was
/// altered, or processes were given different keys) are refused at start too: the
/// start checks every sealed secret, not only the server key.
async fn every_sealed_secret_must_open(database: &str) {
    let key = SecretsKey::generate().expect("key");
    let (running, c) = serve(database, Some(&key)).await;
    let api = c.tenant(ADMIN, "Mixed Escrow").await.expect("tenant");
    let r = c
        .post(
            "/v1/webhooks",
            &api,
            &json!({ "url": "http://127.0.0.1:9/hooks" }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let webhook: Uuid = r.body["webhook_id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    running.shutdown().await.expect("shutdown");
    let (_, sealed, _) = Stored::of(database).await.webhook();
    let other = SecretsKey::generate().expect("key");
    let alien = other
        .seal(&Purpose::Webhook(webhook), &[1; 32])
        .expect("seal");
    let alien_list = json!([{
        "secret": base64::engine::general_purpose::STANDARD.encode(&alien),
        "until_us": i64::MAX,
    }])
    .to_string();
    // The endpoint's secret, then (the secret put back) a retired one, sealed under
    // another key.
    for (secret, previous) in [(&alien, "[]".to_owned()), (&sealed, alien_list)] {
        set_secrets(database, webhook, secret, &previous).await;
        let e = refused(database, Some(&key)).await;
        assert!(
            matches!(&e, ServerError::Store(StoreError::WrongSecretsKey { what })
                if what.contains(&webhook.to_string())),
            "{e:?}"
        );
    }
    set_secrets(database, webhook, &sealed, "[]").await;
    let (running, _) = serve(database, Some(&key)).await;
    running.shutdown().await.expect("shutdown");
}

/// Overwrites an endpoint's stored secrets.
async fn set_secrets(database: &str, webhook: Uuid, secret: &[u8], previous: &str) {
    let sql = "UPDATE webhooks SET secret = $1, previous_secrets = $2 WHERE webhook_id = $3";
    if database.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(database)
            .await
            .expect("connect");
        sqlx::query(sql)
            .bind(secret)
            .bind(previous)
            .bind(webhook)
            .execute(&mut conn)
            .await
            .expect("update");
    } else {
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{database}"))
            .await
            .expect("open");
        sqlx::query(sql)
            .bind(secret)
            .bind(previous)
            .bind(webhook)
            .execute(&mut conn)
            .await
            .expect("update");
    }
}

common::on_both_databases!(every_sealed_secret_must_open);

/// Several servers starting at once with the key on a clear database (PostgreSQL:
/// processes of one database; SQLite: writers of one file) all start, agree on the
/// server key, and leave every secret sealed once.
async fn servers_starting_at_once_agree(database: &str) {
    let (running, c) = serve(database, None).await;
    let public = published_key(&c).await;
    let api = c.tenant(ADMIN, "Busy Escrow").await.expect("tenant");
    for i in 0..3 {
        let url = format!("http://127.0.0.1:9/hooks/{i}");
        let r = c.post("/v1/webhooks", &api, &json!({ "url": url })).await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    running.shutdown().await.expect("shutdown");
    let key = SecretsKey::generate().expect("key");
    let starts = (0..4).map(|_| start(server_config(database, Some(&key))));
    let started = futures_util::future::join_all(starts).await;
    for s in started {
        let running = s.expect("every server starts");
        let c = Client::new(format!("http://{}", running.addr));
        assert_eq!(published_key(&c).await, public);
        running.shutdown().await.expect("shutdown");
    }
    let stored = Stored::of(database).await;
    assert!(key.open(&Purpose::ServerKey, &stored.server_key).is_some());
    assert_eq!(stored.webhooks.len(), 3);
    for (id, secret, _) in &stored.webhooks {
        assert!(key.open(&Purpose::Webhook(*id), secret).is_some());
    }
}

common::on_both_databases!(servers_starting_at_once_agree);

/// The binary: a key from `TRUSTFOLD_SECRETS_KEY` or `--secrets-key-file` (the same
/// one: the same server), none (refused, saying why), a malformed one, and
/// `new-secrets-key`.
#[tokio::test]
async fn the_binary_takes_the_key_from_a_file_or_the_environment() {
    let bin = env!("CARGO_BIN_EXE_trustfold-server");
    let made = Command::new(bin)
        .arg("new-secrets-key")
        .output()
        .expect("new-secrets-key");
    assert!(made.status.success());
    let hex = String::from_utf8(made.stdout).expect("utf-8");
    let hex = hex.trim();
    assert!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "{hex:?}"
    );
    let (dir, db) = common::sqlite_file();
    let key_file = dir.path().join("secrets.key");
    std::fs::write(&key_file, format!("{hex}\n")).expect("write the key");
    let key_path = key_file.display().to_string();

    // Started with the key in the environment.
    let public = {
        let mut child = spawn(&db, &[], Some(hex));
        let url = listening(&mut child);
        let public = public_key_at(&url).await;
        let _ = child.kill();
        let _ = child.wait();
        public
    };
    let stored = Stored::of(&db).await;
    let key = SecretsKey::from_hex(hex).expect("key");
    assert!(key.open(&Purpose::ServerKey, &stored.server_key).is_some());
    // The same key from the file: the same server.
    {
        let mut child = spawn(&db, &["--secrets-key-file", &key_path], None);
        let url = listening(&mut child);
        assert_eq!(public_key_at(&url).await, public);
        let _ = child.kill();
        let _ = child.wait();
    }
    // No key: refused, saying why.
    let out = spawn(&db, &[], None).wait_with_output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("are sealed") && err.contains("--secrets-key-file PATH"),
        "{err}"
    );
    // A malformed key file, and two different keys.
    let bad = dir.path().join("bad.key");
    std::fs::write(&bad, "not a key").expect("write");
    let out = spawn(
        &db,
        &["--secrets-key-file", &bad.display().to_string()],
        None,
    )
    .wait_with_output()
    .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("64 hex digits"), "{err}");
    let out = spawn(
        &db,
        &["--secrets-key-file", &key_path],
        Some(&"ab".repeat(32)),
    )
    .wait_with_output()
    .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("different keys"), "{err}");
}

/// The binary on `db` with `args`, and `TRUSTFOLD_SECRETS_KEY` set to `env_key` (else
/// unset).
fn spawn(db: &str, args: &[&str], env_key: Option<&str>) -> std::process::Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trustfold-server"));
    cmd.args(["--database-url", db, "--listen", "127.0.0.1:0"])
        .args(args)
        .env("TRUSTFOLD_ADMIN_TOKEN", ADMIN)
        .env("RUST_LOG", "warn")
        .env_remove("TRUSTFOLD_SECRETS_KEY")
        .env_remove("TRUSTFOLD_SECRETS_KEY_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(k) = env_key {
        cmd.env("TRUSTFOLD_SECRETS_KEY", k);
    }
    cmd.spawn().expect("spawn trustfold-server")
}

/// The base URL a started binary prints.
fn listening(child: &mut std::process::Child) -> String {
    use std::io::BufRead as _;
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(url.starts_with("http://"), "unexpected first line {line:?}");
    url
}

async fn public_key_at(url: &str) -> String {
    let v: Value = reqwest::get(format!("{url}/v1/server-key"))
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    v["public_key"].as_str().expect("key").to_owned()
}
