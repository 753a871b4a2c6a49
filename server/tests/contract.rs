//! The event store contract: one suite, run against SQLite and PostgreSQL.
//!
//! The PostgreSQL half needs `DATABASE_URL` (a server where it may create databases
//! named `tf_test_*`); `scripts/with-postgres.sh cargo test -p trustfold-server` starts a
//! throwaway one. Without it the PostgreSQL tests fail, unless `TRUSTFOLD_SKIP_PG=1`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use sqlx::{Connection, Executor, PgConnection};
use trustfold_server::db::Db;
use trustfold_server::{
    AnyStore, AppendResult, EventStore, IdempotencyRecord, NewEvent, PostgresStore, SqliteStore,
    StoreError,
};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------
// Fixtures: a fresh, empty store per test.

struct Fixture<S> {
    store: S,
    /// The SQLite file or the PostgreSQL URL: where more instances of the store open.
    location: String,
    cleanup: Cleanup,
}

/// A store opened again on the same database: what another server process has.
trait Reopen: Sized {
    fn reopen(location: &str) -> impl std::future::Future<Output = Self> + Send;
}

impl Reopen for SqliteStore {
    async fn reopen(location: &str) -> Self {
        SqliteStore::open(location)
            .await
            .expect("open sqlite store again")
    }
}

impl Reopen for PostgresStore {
    async fn reopen(location: &str) -> Self {
        PostgresStore::connect(location)
            .await
            .expect("connect postgres store again")
    }
}

enum Cleanup {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Postgres {
        admin_url: String,
        database: String,
        pool: sqlx::PgPool,
    },
}

impl<S: Reopen + Clone> Fixture<S> {
    /// `n` instances of the store on this fixture's database, each with its own
    /// connections and appender (as `n` server processes have): the fixture's own first.
    async fn instances(&self, n: usize) -> Vec<S> {
        let mut all = vec![self.store.clone()];
        for _ in 1..n {
            all.push(S::reopen(&self.location).await);
        }
        all
    }
}

impl<S> Fixture<S> {
    async fn finish(self) {
        match self.cleanup {
            Cleanup::Dir(dir) => drop(dir),
            Cleanup::Postgres {
                admin_url,
                database,
                pool,
            } => {
                pool.close().await;
                drop(self.store);
                let mut admin = PgConnection::connect(&admin_url)
                    .await
                    .expect("admin connection");
                admin
                    .execute(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)").as_str())
                    .await
                    .expect("drop test database");
            }
        }
    }
}

async fn sqlite_fixture() -> Option<Fixture<SqliteStore>> {
    let dir = tempfile::tempdir().expect("temp dir");
    let location = dir.path().join("events.db").display().to_string();
    let store = SqliteStore::open(&location)
        .await
        .expect("open sqlite store");
    Some(Fixture {
        store,
        location,
        cleanup: Cleanup::Dir(dir),
    })
}

/// `DATABASE_URL`, or `None` when the PostgreSQL tests are knowingly skipped.
fn postgres_url() -> Option<String> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("TRUSTFOLD_SKIP_PG").as_deref() == Ok("1") => {
            eprintln!("TRUSTFOLD_SKIP_PG=1: skipping a PostgreSQL event store test");
            None
        }
        _ => panic!(
            "DATABASE_URL is not set, so the PostgreSQL half of the event store contract \
             cannot run: use `scripts/with-postgres.sh cargo test -p trustfold-server` \
             (or `make test-server`), point DATABASE_URL at a scratch PostgreSQL server, \
             or set TRUSTFOLD_SKIP_PG=1 to skip these tests knowingly"
        ),
    }
}

/// `url` with its database name replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(i) => &base[..authority_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

/// A fresh database on the `DATABASE_URL` server.
async fn create_test_database() -> Option<(String, String, String)> {
    let admin_url = postgres_url()?;
    if !admin_url.starts_with("postgres") {
        panic!("DATABASE_URL must be a postgres:// url, got {admin_url:?}");
    }
    let database = format!("tf_test_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to DATABASE_URL {admin_url}: {e}"));
    admin
        .execute(format!("CREATE DATABASE {database}").as_str())
        .await
        .expect("create test database");
    let url = with_database(&admin_url, &database);
    Some((admin_url, database, url))
}

async fn postgres_fixture() -> Option<Fixture<PostgresStore>> {
    let (admin_url, database, url) = create_test_database().await?;
    let store = PostgresStore::connect(&url)
        .await
        .expect("connect postgres store");
    let pool = store.pool().clone();
    Some(Fixture {
        store,
        location: url,
        cleanup: Cleanup::Postgres {
            admin_url,
            database,
            pool,
        },
    })
}

// ---------------------------------------------------------------------------------------
// The suite, instantiated once per engine.

macro_rules! contract_suite {
    ($engine:ident, $fixture:path) => {
        mod $engine {
            contract_suite!(@tests $fixture;
                round_trip_bytes,
                version_conflict_reports_current,
                idempotent_reappend_returns_original_result,
                event_id_reuse_is_an_error,
                malformed_appends_are_rejected,
                tenants_are_isolated,
                paging_of_stream_and_feeds,
                group_commit_many_appenders
            );
            contract_suite!(@instances $fixture;
                concurrent_writers_on_one_stream,
                subscriber_sees_every_event_once_in_commit_order
            );
        }
    };
    // Tests of concurrency between processes: each gets four instances of the store on
    // one database (their own connections and appenders), so the database's own locks,
    // not one appender's queue, decide who wins.
    (@instances $fixture:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let Some(fx) = $fixture().await else { return };
                let stores = fx.instances(4).await;
                super::contract::$name(stores).await;
                fx.finish().await;
            }
        )*
    };
    (@tests $fixture:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let Some(fx) = $fixture().await else { return };
                super::contract::$name(fx.store.clone()).await;
                fx.finish().await;
            }
        )*
    };
}

contract_suite!(sqlite, super::sqlite_fixture);
contract_suite!(postgres, super::postgres_fixture);

fn event(body: impl Into<Vec<u8>>) -> NewEvent {
    let body = body.into();
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "test_event".into(),
        schema_version: 1,
        hash: Sha256::digest(&body).into(),
        body,
    }
}

fn events(n: usize, tag: &str) -> Vec<NewEvent> {
    (0..n)
        .map(|i| event(format!(r#"{{"tag":"{tag}","i":{i}}}"#)))
        .collect()
}

mod contract {
    use super::*;

    pub async fn round_trip_bytes<S: EventStore>(s: S) {
        let (tenant, stream) = (Uuid::new_v4(), Uuid::new_v4());
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut batch = vec![
            event(&br#"{"a":1,"b":"x"}"#[..]),
            event("{ \"amount\" : \"1.50\",\n\t\"name\":\"Zo\u{eb} \u{2713} \\u0000\" }  "),
            event(vec![0u8, 255, 1, 254, b'{', 0]),
            event(Vec::new()),
            event(big),
        ];
        batch[1].event_type = "participant_invit\u{e9}".into();
        batch[1].schema_version = u16::MAX;
        batch[2].schema_version = 0;
        let before = SystemTime::now() - Duration::from_secs(1);
        let r = s.append(tenant, stream, 0, &batch).await.expect("append");
        let after = SystemTime::now() + Duration::from_secs(1);
        assert_eq!(r.new_version, 5);
        assert_eq!(r.last_position - r.first_position, 4);

        let stored = s.read_stream(tenant, stream, 0, 100).await.expect("read");
        assert_eq!(stored.len(), batch.len());
        for (i, (got, sent)) in stored.iter().zip(&batch).enumerate() {
            assert_eq!(got.tenant_id, tenant);
            assert_eq!(got.stream_id, stream);
            assert_eq!(got.seq, i as u64 + 1);
            assert_eq!(got.event_id, sent.event_id);
            assert_eq!(got.event_type, sent.event_type);
            assert_eq!(got.schema_version, sent.schema_version);
            assert!(got.body == sent.body, "body bytes changed for event {i}");
            assert_eq!(got.hash, sent.hash);
            assert_eq!(got.position, r.first_position + i as u64);
            assert!(got.recorded_at >= before && got.recorded_at <= after);
        }
        let head = s
            .stream_head(tenant, stream)
            .await
            .expect("head")
            .expect("exists");
        assert_eq!(head.version, 5);
        assert_eq!(head.last_hash, batch[4].hash);
        assert_eq!(s.read_all(tenant, 0, 100).await.expect("feed"), stored);
        assert_eq!(s.read_all_tenants(0, 100).await.expect("all"), stored);
    }

    pub async fn version_conflict_reports_current<S: EventStore>(s: S) {
        let (tenant, stream) = (Uuid::new_v4(), Uuid::new_v4());
        let r = s
            .append(tenant, stream, 0, &events(2, "a"))
            .await
            .expect("new stream");
        assert_eq!(r.new_version, 2);
        for expected in [0, 1, 3, 7] {
            match s.append(tenant, stream, expected, &events(1, "b")).await {
                Err(StoreError::VersionConflict {
                    expected: e,
                    current,
                }) => {
                    assert_eq!((e, current), (expected, 2));
                }
                other => panic!("expected a version conflict at {expected}, got {other:?}"),
            }
        }
        let r = s
            .append(tenant, stream, 2, &events(3, "c"))
            .await
            .expect("at head");
        assert_eq!(r.new_version, 5);
        // An unknown stream is at version 0.
        match s.append(tenant, Uuid::new_v4(), 3, &events(1, "d")).await {
            Err(StoreError::VersionConflict {
                current: 0,
                expected: 3,
            }) => {}
            other => panic!("expected a conflict at version 0, got {other:?}"),
        }
        let err = s
            .append(tenant, stream, 1, &events(1, "e"))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("retry with expected version 5"),
            "{err}"
        );
        assert_eq!(
            s.read_stream(tenant, stream, 0, 100)
                .await
                .expect("read")
                .len(),
            5
        );
    }

    pub async fn idempotent_reappend_returns_original_result<S: EventStore>(s: S) {
        let (tenant, stream) = (Uuid::new_v4(), Uuid::new_v4());
        let a = events(2, "a");
        let b = events(1, "b");
        let ra = s.append(tenant, stream, 0, &a).await.expect("a");
        let other = s
            .append(tenant, Uuid::new_v4(), 0, &events(2, "x"))
            .await
            .expect("x");
        let rb = s.append(tenant, stream, 2, &b).await.expect("b");
        assert!(other.first_position > ra.last_position);

        assert_eq!(s.append(tenant, stream, 0, &a).await.expect("retry a"), ra);
        assert_eq!(s.append(tenant, stream, 2, &b).await.expect("retry b"), rb);
        assert_eq!(
            s.append(tenant, stream, 2, &b)
                .await
                .expect("retry b again"),
            rb
        );
        assert_eq!(
            rb,
            AppendResult {
                first_position: rb.first_position,
                last_position: rb.first_position,
                new_version: 3
            }
        );
        assert_eq!(
            s.read_stream(tenant, stream, 0, 100)
                .await
                .expect("read")
                .len(),
            3
        );
        assert_eq!(s.read_all_tenants(0, 100).await.expect("all").len(), 5);
        assert_eq!(
            s.stream_head(tenant, stream)
                .await
                .expect("head")
                .expect("exists")
                .version,
            3
        );
    }

    pub async fn event_id_reuse_is_an_error<S: EventStore>(s: S) {
        let (tenant, stream) = (Uuid::new_v4(), Uuid::new_v4());
        let original = event(&br#"{"n":1}"#[..]);
        s.append(tenant, stream, 0, std::slice::from_ref(&original))
            .await
            .expect("append");
        let id = original.event_id;

        let other_body = NewEvent {
            body: br#"{"n":2}"#.to_vec(),
            ..original.clone()
        };
        let other_hash = NewEvent {
            hash: [0; 32],
            ..original.clone()
        };
        let other_type = NewEvent {
            event_type: "other".into(),
            ..original.clone()
        };
        let other_version = NewEvent {
            schema_version: 2,
            ..original.clone()
        };
        for reused in [other_body, other_hash, other_type, other_version] {
            match s.append(tenant, stream, 0, &[reused]).await {
                Err(StoreError::EventIdReused { event_id }) => assert_eq!(event_id, id),
                other => panic!("expected event id reuse, got {other:?}"),
            }
        }
        let attempts: Vec<(Uuid, Uuid, u64, Vec<NewEvent>)> = vec![
            // same content, another stream
            (tenant, Uuid::new_v4(), 0, vec![original.clone()]),
            // same content, another tenant
            (Uuid::new_v4(), stream, 0, vec![original.clone()]),
            // same content, another sequence number
            (tenant, stream, 1, vec![original.clone()]),
            // part of the batch stored, part new
            (tenant, stream, 0, vec![original.clone(), event("{}")]),
            (tenant, stream, 1, vec![event("{}"), original.clone()]),
        ];
        for (t, st, expected, batch) in attempts {
            match s.append(t, st, expected, &batch).await {
                Err(StoreError::EventIdReused { .. }) => {}
                other => panic!("expected event id reuse, got {other:?}"),
            }
        }
        assert_eq!(s.read_all_tenants(0, 100).await.expect("all").len(), 1);
        assert_eq!(
            s.stream_head(tenant, stream)
                .await
                .expect("head")
                .expect("exists")
                .version,
            1
        );
    }

    pub async fn malformed_appends_are_rejected<S: EventStore>(s: S) {
        let (tenant, stream) = (Uuid::new_v4(), Uuid::new_v4());
        match s.append(tenant, stream, 0, &[]).await {
            Err(StoreError::InvalidAppend(msg)) => assert!(msg.contains("empty"), "{msg}"),
            other => panic!("expected invalid append, got {other:?}"),
        }
        let e = event("{}");
        match s.append(tenant, stream, 0, &[e.clone(), e]).await {
            Err(StoreError::InvalidAppend(msg)) => assert!(msg.contains("twice"), "{msg}"),
            other => panic!("expected invalid append, got {other:?}"),
        }
        match s.append(tenant, stream, u64::MAX, &events(1, "x")).await {
            Err(StoreError::InvalidAppend(msg)) => assert!(msg.contains("too large"), "{msg}"),
            other => panic!("expected invalid append, got {other:?}"),
        }
        assert!(s.read_all_tenants(0, 10).await.expect("all").is_empty());
        assert!(s.stream_head(tenant, stream).await.expect("head").is_none());
    }

    pub async fn tenants_are_isolated<S: EventStore>(s: S) {
        let (alice, bob, stream) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let ra = s
            .append(alice, stream, 0, &events(2, "alice"))
            .await
            .expect("alice");

        assert!(s
            .read_stream(bob, stream, 0, 100)
            .await
            .expect("read")
            .is_empty());
        assert!(s.stream_head(bob, stream).await.expect("head").is_none());
        assert!(s.read_all(bob, 0, 100).await.expect("feed").is_empty());
        for expected in [0, 1, 2] {
            match s.append(bob, stream, expected, &events(1, "bob")).await {
                Err(StoreError::StreamUnavailable { stream_id }) => assert_eq!(stream_id, stream),
                other => panic!("bob must not write alice's stream, got {other:?}"),
            }
        }
        let bob_stream = Uuid::new_v4();
        let rb = s
            .append(bob, bob_stream, 0, &events(1, "bob"))
            .await
            .expect("bob");
        assert_eq!(rb.first_position, ra.last_position + 1);

        let alice_feed = s.read_all(alice, 0, 100).await.expect("alice feed");
        assert_eq!(alice_feed.len(), 2);
        assert!(alice_feed
            .iter()
            .all(|e| e.tenant_id == alice && e.stream_id == stream));
        let bob_feed = s.read_all(bob, 0, 100).await.expect("bob feed");
        assert_eq!(bob_feed.len(), 1);
        assert_eq!(bob_feed[0].stream_id, bob_stream);
        assert!(s
            .read_stream(alice, bob_stream, 0, 100)
            .await
            .expect("read")
            .is_empty());
        assert_eq!(
            s.stream_head(alice, stream)
                .await
                .expect("head")
                .expect("exists")
                .version,
            2
        );
        assert_eq!(s.read_all_tenants(0, 100).await.expect("all").len(), 3);
    }

    pub async fn paging_of_stream_and_feeds<S: EventStore>(s: S) {
        let (tenant, other_tenant) = (Uuid::new_v4(), Uuid::new_v4());
        let (s1, s2, s3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        for round in 0..5u64 {
            s.append(tenant, s1, round * 5, &events(5, "s1"))
                .await
                .expect("s1");
            s.append(tenant, s2, round * 2, &events(2, "s2"))
                .await
                .expect("s2");
            s.append(other_tenant, s3, round * 3, &events(3, "s3"))
                .await
                .expect("s3");
        }

        let mut seqs = Vec::new();
        let mut after = 0;
        let mut pages = 0;
        loop {
            let page = s.read_stream(tenant, s1, after, 10).await.expect("page");
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 10);
            pages += 1;
            after = page.last().expect("non-empty").seq;
            seqs.extend(page.iter().map(|e| e.seq));
        }
        assert_eq!(pages, 3);
        assert_eq!(seqs, (1..=25).collect::<Vec<u64>>());
        assert_eq!(
            s.read_stream(tenant, s1, 20, 100)
                .await
                .expect("tail")
                .len(),
            5
        );

        let mut feed = Vec::new();
        let mut checkpoint = 0;
        loop {
            let page = s.read_all(tenant, checkpoint, 7).await.expect("feed page");
            let Some(last) = page.last() else { break };
            checkpoint = last.position;
            feed.extend(page);
        }
        assert_eq!(feed.len(), 35);
        assert!(feed.windows(2).all(|w| w[0].position < w[1].position));
        assert!(feed.iter().all(|e| e.tenant_id == tenant));

        let mut all = Vec::new();
        let mut checkpoint = 0;
        loop {
            let page = s.read_all_tenants(checkpoint, 8).await.expect("all page");
            let Some(last) = page.last() else { break };
            checkpoint = last.position;
            all.extend(page);
        }
        assert_eq!(
            all.iter().map(|e| e.position).collect::<Vec<_>>(),
            (1..=50).collect::<Vec<u64>>()
        );

        assert!(s
            .read_stream(tenant, s1, 0, 0)
            .await
            .expect("limit 0")
            .is_empty());
        assert!(s.read_all(tenant, 0, 0).await.expect("limit 0").is_empty());
        assert!(s
            .read_all_tenants(50, 10)
            .await
            .expect("past end")
            .is_empty());
    }

    /// 16 writers race on one stream, each appending with the version it last saw,
    /// spread over the store's instances (as over server processes).
    pub async fn concurrent_writers_on_one_stream<S: EventStore + Clone + 'static>(stores: Vec<S>) {
        let s = stores[0].clone();
        const WRITERS: usize = 16;
        const TARGET: u64 = 100;
        let (tenant, stream) = (Uuid::new_v4(), Uuid::new_v4());
        let start = Arc::new(tokio::sync::Barrier::new(WRITERS));
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let (s, start) = (stores[w % stores.len()].clone(), start.clone());
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                let mut wins = Vec::new();
                let mut conflicts = 0u32;
                let mut version = s
                    .stream_head(tenant, stream)
                    .await
                    .expect("head")
                    .map_or(0, |h| h.version);
                while version < TARGET {
                    let e = event(format!(r#"{{"writer":{w},"at":{version}}}"#));
                    match s
                        .append(tenant, stream, version, std::slice::from_ref(&e))
                        .await
                    {
                        Ok(r) => {
                            assert_eq!(r.new_version, version + 1);
                            wins.push((version, e.event_id, r.first_position));
                            version += 1;
                        }
                        Err(StoreError::VersionConflict { expected, current }) => {
                            assert_eq!(expected, version);
                            assert!(current > version, "conflict must mean someone got ahead");
                            conflicts += 1;
                            version = current;
                        }
                        Err(other) => panic!("writer {w}: unexpected error {other}"),
                    }
                }
                (wins, conflicts)
            }));
        }
        let mut wins = Vec::new();
        let mut conflicts = 0;
        for t in tasks {
            let (w, c) = t.await.expect("writer task");
            wins.extend(w);
            conflicts += c;
        }
        wins.sort();
        let versions: Vec<u64> = wins.iter().map(|w| w.0).collect();
        assert_eq!(
            versions,
            (0..TARGET).collect::<Vec<_>>(),
            "exactly one win per version"
        );
        assert!(
            conflicts > 0,
            "the writers never collided; the test proves nothing"
        );

        let stored = s.read_stream(tenant, stream, 0, 1000).await.expect("read");
        assert_eq!(stored.len() as u64, TARGET);
        for (e, (version, id, position)) in stored.iter().zip(&wins) {
            assert_eq!(e.seq, version + 1);
            assert_eq!(e.event_id, *id, "the stored event is the winner's");
            assert_eq!(e.position, *position);
        }
        let positions: Vec<u64> = stored.iter().map(|e| e.position).collect();
        assert_eq!(
            positions,
            (1..=TARGET).collect::<Vec<_>>(),
            "positions gap-free"
        );
        let ids: HashSet<Uuid> = stored.iter().map(|e| e.event_id).collect();
        assert_eq!(ids.len() as u64, TARGET, "no duplicates");
    }

    /// Writers on many streams, spread over the store's instances, while a subscriber
    /// on another instance follows `position > checkpoint`.
    pub async fn subscriber_sees_every_event_once_in_commit_order<
        S: EventStore + Clone + 'static,
    >(
        stores: Vec<S>,
    ) {
        let s = stores[stores.len() - 1].clone();
        const WRITERS: usize = 8;
        const APPENDS: usize = 24;
        let tenant = Uuid::new_v4();
        let done = Arc::new(AtomicBool::new(false));

        let subscriber = {
            let (s, done) = (s.clone(), done.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut checkpoint = 0u64;
                loop {
                    let finished = done.load(Ordering::SeqCst);
                    let page = s.read_all(tenant, checkpoint, 50).await.expect("feed");
                    if page.is_empty() {
                        if finished {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    for e in page {
                        assert_eq!(
                            e.position,
                            checkpoint + 1,
                            "the feed skipped or repeated a position"
                        );
                        checkpoint = e.position;
                        seen.push(e);
                    }
                }
                seen
            })
        };

        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let s = stores[w % (stores.len() - 1)].clone();
            writers.push(tokio::spawn(async move {
                let streams: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
                let mut versions = [0u64; 3];
                let mut written = Vec::new();
                for i in 0..APPENDS {
                    let k = i % 3;
                    let batch = events(1 + (i + w) % 3, &format!("w{w}"));
                    let r = s
                        .append(tenant, streams[k], versions[k], &batch)
                        .await
                        .expect("append");
                    versions[k] = r.new_version;
                    assert_eq!(r.last_position - r.first_position + 1, batch.len() as u64);
                    written.extend(batch.iter().map(|e| e.event_id));
                    if i % 4 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                written
            }));
        }
        let mut written = HashSet::new();
        let mut total = 0;
        for t in writers {
            let ids = t.await.expect("writer");
            total += ids.len();
            written.extend(ids);
        }
        done.store(true, Ordering::SeqCst);
        let seen = subscriber.await.expect("subscriber");

        assert_eq!(
            seen.len(),
            total,
            "the subscriber saw every event exactly once"
        );
        let seen_ids: HashSet<Uuid> = seen.iter().map(|e| e.event_id).collect();
        assert_eq!(seen_ids, written);
        let mut next_seq: HashMap<Uuid, u64> = HashMap::new();
        for e in &seen {
            let n = next_seq.entry(e.stream_id).or_insert(1);
            assert_eq!(e.seq, *n, "each stream's events arrive in order");
            *n += 1;
        }
        let all = s.read_all_tenants(0, 10_000).await.expect("all");
        assert_eq!(all, seen);
    }
    /// Group commit: many concurrent appenders on their own streams (two tenants), each
    /// also sending appends that must fail (a stale expected version, another tenant's
    /// stream, a reused event id) and exact retries, all mixed into the same batches.
    /// Every acknowledged append is stored exactly as acknowledged, positions are
    /// gap-free, and the failures touched nothing but themselves.
    pub async fn group_commit_many_appenders<S: EventStore + Clone + 'static>(s: S) {
        const APPENDERS: usize = 48;
        const APPENDS: u64 = 12;
        let tenants = [Uuid::new_v4(), Uuid::new_v4()];
        let victim = Uuid::new_v4();
        let victim_id = {
            let e = events(1, "victim");
            s.append(tenants[1], victim, 0, &e).await.expect("victim");
            e[0].event_id
        };

        let mut tasks = Vec::new();
        for w in 0..APPENDERS {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let tenant = tenants[w % 2];
                let stream = Uuid::new_v4();
                let mut acked: Vec<(Uuid, Uuid, u64, AppendResult)> = Vec::new();
                let mut version = 0u64;
                for round in 0..APPENDS {
                    let batch = events(1 + (w + round as usize) % 2, &format!("g{w}"));
                    // Send the real append and the ones that must fail together, so they
                    // tend to land in the same batch.
                    let stale = events(1, "stale");
                    let reused = NewEvent {
                        event_id: victim_id,
                        ..event(format!("reuse{w}"))
                    };
                    let theft = events(1, "theft");
                    let v = version;
                    let (real, stale_r, reused_r, theft_r) = tokio::join!(
                        s.append(tenant, stream, v, &batch),
                        s.append(tenant, stream, v + 7, &stale),
                        s.append(tenant, stream, v, std::slice::from_ref(&reused)),
                        s.append(tenants[(w + 1) % 2], stream, v.max(1), &theft),
                    );
                    let r = real.expect("the real append");
                    assert_eq!(r.new_version, v + batch.len() as u64);
                    assert_eq!(r.last_position - r.first_position + 1, batch.len() as u64);
                    assert!(
                        matches!(stale_r, Err(StoreError::VersionConflict { expected, .. }) if expected == v + 7),
                        "{stale_r:?}"
                    );
                    assert!(
                        matches!(reused_r, Err(StoreError::EventIdReused { .. })),
                        "{reused_r:?}"
                    );
                    assert!(
                        matches!(
                            theft_r,
                            Err(StoreError::StreamUnavailable { .. })
                                | Err(StoreError::VersionConflict { .. })
                        ),
                        "{theft_r:?}"
                    );
                    // An exact retry returns the original result.
                    let again = s.append(tenant, stream, v, &batch).await.expect("retry");
                    assert_eq!(again, r);
                    for (i, e) in batch.iter().enumerate() {
                        acked.push((e.event_id, stream, v + 1 + i as u64, r));
                    }
                    version = r.new_version;
                }
                (tenant, acked)
            }));
        }
        let mut acked = Vec::new();
        for t in tasks {
            let (tenant, a) = t.await.expect("appender");
            acked.extend(a.into_iter().map(|x| (tenant, x)));
        }

        let all = s.read_all_tenants(0, 100_000).await.expect("all");
        let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
        assert_eq!(
            positions,
            (1..=all.len() as u64).collect::<Vec<_>>(),
            "positions gap-free"
        );
        assert_eq!(
            all.len(),
            acked.len() + 1,
            "nothing but the acknowledged appends"
        );
        let by_id: HashMap<Uuid, &trustfold_server::StoredEvent> =
            all.iter().map(|e| (e.event_id, e)).collect();
        for (tenant, (id, stream, seq, r)) in &acked {
            let e = by_id.get(id).expect("every acknowledged event is stored");
            assert_eq!((e.tenant_id, e.stream_id, e.seq), (*tenant, *stream, *seq));
            assert!(r.first_position <= e.position && e.position <= r.last_position);
        }
        // Group commit happened: some commit (one `recorded_at` per transaction) holds
        // events of several streams.
        let mut streams_per_commit: HashMap<SystemTime, HashSet<Uuid>> = HashMap::new();
        for e in &all {
            streams_per_commit
                .entry(e.recorded_at)
                .or_default()
                .insert(e.stream_id);
        }
        assert!(
            streams_per_commit.values().any(|s| s.len() > 1),
            "no two appenders ever shared a commit"
        );
        let victim_events = s
            .read_stream(tenants[1], victim, 0, 10)
            .await
            .expect("victim");
        assert_eq!(victim_events.len(), 1, "the reused id changed nothing");
    }
}

// ---------------------------------------------------------------------------------------
// Engine-specific checks.

#[tokio::test]
async fn sqlite_events_table_is_append_only() {
    let fx = sqlite_fixture().await.expect("sqlite");
    fx.store
        .append(Uuid::new_v4(), Uuid::new_v4(), 0, &events(1, "x"))
        .await
        .expect("append");
    for sql in ["UPDATE events SET body = x'00'", "DELETE FROM events"] {
        let err = sqlx::query(sql)
            .execute(fx.store.writer_pool())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    fx.finish().await;
}

#[tokio::test]
async fn sqlite_survives_reopen_and_concurrent_opens() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("shared.db");
    let opens = (0..4).map(|_| SqliteStore::open(path.clone()));
    let stores: Vec<SqliteStore> = futures_join_all(opens).await;
    let (tenant, stream) = (Uuid::new_v4(), Uuid::new_v4());
    let batch = events(3, "persist");
    let r = stores[0]
        .append(tenant, stream, 0, &batch)
        .await
        .expect("append");
    // Another store on the same file (as another process would be) sees the append and
    // takes part in the same global order.
    let r2 = stores[1]
        .append(tenant, Uuid::new_v4(), 0, &events(1, "b"))
        .await
        .expect("append");
    assert_eq!(r2.first_position, r.last_position + 1);
    drop(stores);

    let reopened = AnyStore::open(&format!("sqlite:{}", path.display()))
        .await
        .expect("reopen");
    let stored = reopened
        .read_stream(tenant, stream, 0, 10)
        .await
        .expect("read");
    assert_eq!(
        stored.iter().map(|e| e.body.clone()).collect::<Vec<_>>(),
        batch.iter().map(|e| e.body.clone()).collect::<Vec<_>>()
    );
    assert_eq!(
        reopened
            .append(tenant, stream, 0, &batch)
            .await
            .expect("retry"),
        r
    );
}

#[tokio::test]
async fn unsupported_locations_are_rejected() {
    for location in ["mysql://localhost/db", ""] {
        match AnyStore::open(location).await {
            Err(StoreError::UnsupportedLocation(l)) => assert_eq!(l, location),
            other => panic!("expected unsupported location for {location:?}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn postgres_events_table_is_append_only() {
    let Some(fx) = postgres_fixture().await else {
        return;
    };
    fx.store
        .append(Uuid::new_v4(), Uuid::new_v4(), 0, &events(1, "x"))
        .await
        .expect("append");
    for sql in [
        "UPDATE events SET body = '\\x00'",
        "DELETE FROM events",
        "TRUNCATE events CASCADE",
    ] {
        let err = sqlx::query(sql).execute(fx.store.pool()).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_connects_create_the_schema_once() {
    let Some((admin_url, database, url)) = create_test_database().await else {
        return;
    };
    let stores: Vec<AnyStore> = futures_join_all((0..6).map(|_| {
        let url = url.clone();
        async move { AnyStore::open(&url).await }
    }))
    .await;
    let (tenant, stream) = (Uuid::new_v4(), Uuid::new_v4());
    stores[0]
        .append(tenant, stream, 0, &events(1, "a"))
        .await
        .expect("append");
    stores[5]
        .append(tenant, stream, 1, &events(1, "b"))
        .await
        .expect("append");
    assert_eq!(
        stores[3]
            .read_stream(tenant, stream, 0, 10)
            .await
            .expect("read")
            .len(),
        2
    );
    for s in stores {
        if let AnyStore::Postgres(p) = s {
            p.pool().close().await;
        }
    }
    let mut admin = PgConnection::connect(&admin_url).await.expect("admin");
    admin
        .execute(format!("DROP DATABASE {database} WITH (FORCE)").as_str())
        .await
        .expect("drop");
}

/// Runs store constructors concurrently (each in its own task) and unwraps them.
async fn futures_join_all<S, F>(futures: impl Iterator<Item = F>) -> Vec<S>
where
    F: std::future::Future<Output = Result<S, StoreError>> + Send + 'static,
    S: Send + 'static,
{
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task").expect("open store"));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Idempotency records committed with their events (`EventStore::append_recorded`).

/// Runs appends concurrently (each in its own task) and returns their results in order.
async fn join_results<F>(futures: impl Iterator<Item = F>) -> Vec<Result<AppendResult, StoreError>>
where
    F: std::future::Future<Output = Result<AppendResult, StoreError>> + Send + 'static,
{
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

fn record(key: &str, body: &str) -> IdempotencyRecord {
    IdempotencyRecord {
        key: key.into(),
        request_hash: Sha256::digest(key.as_bytes()).into(),
        status: 200,
        body: body.as_bytes().to_vec(),
    }
}

/// The stored records of `tenant`: key → (status, body).
async fn stored_records(db: &Db, tenant: Uuid) -> HashMap<String, (i32, Vec<u8>)> {
    let sql = "SELECT idem_key, status, body FROM idempotency WHERE tenant_id = $1";
    let rows: Vec<(String, i32, Vec<u8>)> = match db {
        Db::Sqlite { reader, .. } => sqlx::query_as(sql).bind(tenant).fetch_all(reader).await,
        Db::Postgres(pool) => sqlx::query_as(sql).bind(tenant).fetch_all(pool).await,
    }
    .expect("read idempotency records");
    rows.into_iter().map(|(k, s, b)| (k, (s, b))).collect()
}

async fn records_commit_with_their_events(store: AnyStore) {
    let db = Db::of(&store);
    db.migrate().await.expect("server schema");
    let (tenant, other) = (Uuid::new_v4(), Uuid::new_v4());

    // Written together.
    let s1 = Uuid::new_v4();
    let r = store
        .append_recorded(tenant, s1, 0, &events(2, "a"), record("k1", "first"))
        .await
        .expect("recorded append");
    assert_eq!(r.new_version, 2);
    assert_eq!(store.read_stream(tenant, s1, 0, 10).await.unwrap().len(), 2);
    let recs = stored_records(&db, tenant).await;
    assert_eq!(recs.get("k1"), Some(&(200, b"first".to_vec())));

    // The key is taken: nothing is written.
    let s2 = Uuid::new_v4();
    match store
        .append_recorded(tenant, s2, 0, &events(1, "b"), record("k1", "second"))
        .await
    {
        Err(StoreError::IdempotencyKeyTaken { key }) => assert_eq!(key, "k1"),
        other => panic!("expected IdempotencyKeyTaken, got {other:?}"),
    }
    assert!(store
        .read_stream(tenant, s2, 0, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        stored_records(&db, tenant).await.get("k1"),
        Some(&(200, b"first".to_vec()))
    );

    // Keys are per tenant.
    let s3 = Uuid::new_v4();
    store
        .append_recorded(other, s3, 0, &events(1, "c"), record("k1", "other tenant"))
        .await
        .expect("another tenant's key");

    // An exact retry of stored events gets the original result, and its record.
    let s4 = Uuid::new_v4();
    let evs = events(3, "d");
    let original = store.append(tenant, s4, 0, &evs).await.unwrap();
    let again = store
        .append_recorded(tenant, s4, 0, &evs, record("k2", "retry"))
        .await
        .expect("exact retry");
    assert_eq!(again, original);
    assert!(stored_records(&db, tenant).await.contains_key("k2"));

    // A refused append stores no record.
    let err = store
        .append_recorded(tenant, s1, 0, &events(1, "e"), record("k3", "conflict"))
        .await;
    assert!(
        matches!(err, Err(StoreError::VersionConflict { current: 2, .. })),
        "{err:?}"
    );
    assert!(!stored_records(&db, tenant).await.contains_key("k3"));

    // 16 concurrent appends to 16 new streams with one key (they share commits): exactly
    // one is written, the others are told the key is taken.
    let streams: Vec<Uuid> = (0..16).map(|_| Uuid::new_v4()).collect();
    let results = join_results(streams.iter().map(|s| {
        let (store, s) = (store.clone(), *s);
        async move {
            store
                .append_recorded(tenant, s, 0, &events(1, "race"), record("race", "won"))
                .await
        }
    }))
    .await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    let taken = results
        .iter()
        .filter(|r| matches!(r, Err(StoreError::IdempotencyKeyTaken { .. })))
        .count();
    assert_eq!((won, taken), (1, 15), "{results:?}");
    let mut written = 0;
    for s in &streams {
        written += store.read_stream(tenant, *s, 0, 10).await.unwrap().len();
    }
    assert_eq!(written, 1);

    // 16 concurrent appends with their own keys: all written, each with its record.
    let results = join_results((0..16).map(|i| {
        let store = store.clone();
        async move {
            store
                .append_recorded(
                    tenant,
                    Uuid::new_v4(),
                    0,
                    &events(1, "many"),
                    record(&format!("many-{i}"), "ok"),
                )
                .await
        }
    }))
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let recs = stored_records(&db, tenant).await;
    assert_eq!(recs.keys().filter(|k| k.starts_with("many-")).count(), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_records_commit_with_their_events() {
    let Some(fx) = sqlite_fixture().await else {
        return;
    };
    records_commit_with_their_events(AnyStore::Sqlite(fx.store.clone())).await;
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_records_commit_with_their_events() {
    let Some(fx) = postgres_fixture().await else {
        return;
    };
    records_commit_with_their_events(AnyStore::Postgres(fx.store.clone())).await;
    fx.finish().await;
}
