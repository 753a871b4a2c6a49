//! Test harness: a real server on loopback, started in-process, on a fresh SQLite file
//! or a fresh PostgreSQL database.

#![allow(dead_code)]

pub mod scenario;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sqlx::{Connection, Executor, PgConnection};
use trustfold_server::app::{start, Config, Running};

pub use scenario::Client;

pub const ADMIN: &str = "test-admin-token";

pub struct Server {
    pub running: Option<Running>,
    pub client: Client,
    pub database: String,
    pub dir: Option<tempfile::TempDir>,
    pub pg_admin: Option<(String, String)>,
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        self.running.as_ref().expect("running").addr
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.expect("graceful shutdown");
        }
    }

    pub async fn finish(mut self) {
        self.stop().await;
        let undocumented = self.client.undocumented();
        assert!(
            undocumented.is_empty(),
            "answers /openapi.json does not document:\n{}",
            undocumented.join("\n")
        );
        if let Some((admin_url, name)) = self.pg_admin.take() {
            drop_database(&admin_url, &name).await;
        }
    }
}

/// One statement on a connection of its own to `admin_url`'s server.
async fn as_admin(admin_url: &str, sql: &str) {
    let mut admin = PgConnection::connect(admin_url)
        .await
        .expect("admin connection");
    admin.execute(sql).await.expect(sql);
}

/// Drops a test database made by [`postgres_database`] (whoever is still connected).
pub async fn drop_database(admin_url: &str, name: &str) {
    as_admin(
        admin_url,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .await;
}

pub fn config(database: &str) -> Config {
    let mut c = Config::new(database);
    c.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.http.admin_token = Some(ADMIN.into());
    c.http.body_limit = 64 * 1024;
    c.http.heartbeat = Duration::from_millis(500);
    c.http.poll_interval = Duration::from_millis(200);
    c
}

/// Serves `app` on a free port of 127.0.0.1 in the background (the tenant's webhook
/// endpoint, a proxy…); its address.
pub async fn serve_on_loopback(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// A fresh SQLite file's path, in a temporary directory removed with the `TempDir`.
pub fn sqlite_file() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let database = dir.path().join("trustfold.db").display().to_string();
    (dir, database)
}

/// Runs the test `$name(database: &str)` on a fresh SQLite file and on a fresh
/// PostgreSQL database (see [`postgres_url`]), as the tests `$name::sqlite` and
/// `$name::postgres`.
#[allow(unused_macros)]
macro_rules! on_both_databases {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                let (_dir, database) = super::common::sqlite_file();
                super::$name(&database).await;
            }

            #[tokio::test]
            async fn postgres() {
                let Some((admin, name, url)) = super::common::postgres_database().await else {
                    return;
                };
                super::$name(&url).await;
                super::common::drop_database(&admin, &name).await;
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_both_databases;

/// Starts the `trustfold-server` binary on `db` (on a free port of 127.0.0.1, with
/// `admin` as its admin token and `args` added) and returns it with its base url.
pub fn spawn_binary(db: &str, admin: &str, args: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trustfold-server"))
        .args([
            "--database-url",
            db,
            "--listen",
            "127.0.0.1:0",
            "--poll-ms",
            "200",
        ])
        .args(args)
        .env("TRUSTFOLD_ADMIN_TOKEN", admin)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn trustfold-server");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .expect("listening on URL")
        .to_owned();
    assert!(url.starts_with("http://"), "unexpected first line {line:?}");
    (child, url)
}

pub async fn serve(config: Config) -> Running {
    start(config).await.expect("server starts")
}

pub async fn sqlite() -> Server {
    let (dir, database) = sqlite_file();
    let running = serve(config(&database)).await;
    let client = Client::new(format!("http://{}", running.addr));
    Server {
        running: Some(running),
        client,
        database,
        dir: Some(dir),
        pg_admin: None,
    }
}

/// `DATABASE_URL`, or `None` when the PostgreSQL tests are knowingly skipped.
pub fn postgres_url() -> Option<String> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("TRUSTFOLD_SKIP_PG").as_deref() == Ok("1") => {
            eprintln!("TRUSTFOLD_SKIP_PG=1: skipping a PostgreSQL HTTP test");
            None
        }
        _ => panic!(
            "DATABASE_URL is not set: run `scripts/with-postgres.sh cargo test -p trustfold-server` \
             or set TRUSTFOLD_SKIP_PG=1 to skip the PostgreSQL tests knowingly"
        ),
    }
}

/// A fresh database on the PostgreSQL server of `DATABASE_URL`.
pub async fn postgres_database() -> Option<(String, String, String)> {
    let admin_url = postgres_url()?;
    let name = format!("tf_http_{}", uuid::Uuid::new_v4().simple());
    as_admin(&admin_url, &format!("CREATE DATABASE {name}")).await;
    let (base, _) = admin_url.rsplit_once('/').expect("url has a database");
    Some((admin_url.clone(), name.clone(), format!("{base}/{name}")))
}

pub async fn postgres() -> Option<Server> {
    let (admin_url, name, url) = postgres_database().await?;
    let running = serve(config(&url)).await;
    let client = Client::new(format!("http://{}", running.addr));
    Some(Server {
        running: Some(running),
        client,
        database: url,
        dir: None,
        pg_admin: Some((admin_url, name)),
    })
}
