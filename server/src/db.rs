//! The server's own tables beside the event log: the server key, tenants and their API
//! keys, policies, idempotency records and the projections' read models.
//!
//! The same SQL text runs on both engines (sqlx binds `$1, $2, …` on SQLite too); only
//! the column types of the schema differ. [`Db`] holds the pools of whichever engine the
//! event store uses; the `on_write!` / `on_read!` macros run one block of code against
//! either.

use crate::sealed::{is_sealed, AtRest, Purpose};
use crate::webhooks::{previous_of, previous_text};
use crate::{AnyStore, StoreError};
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;
use sqlx::Connection as _;

/// The pools of the engine the event store runs on.
#[derive(Debug, Clone)]
pub enum Db {
    /// SQLite: writes go through the store's single writer connection.
    Sqlite {
        /// The single writer connection.
        writer: SqlitePool,
        /// Read-only connections.
        reader: SqlitePool,
    },
    /// PostgreSQL: one pool for everything.
    Postgres(PgPool),
}

/// Runs `$body` with `$p` bound to the pool that may write.
macro_rules! on_write {
    ($db:expr, $p:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite { writer: $p, .. } => $body,
            $crate::db::Db::Postgres($p) => $body,
        }
    };
}
pub(crate) use on_write;

/// Runs `$body` with `$p` bound to a pool for reads.
macro_rules! on_read {
    ($db:expr, $p:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite { reader: $p, .. } => $body,
            $crate::db::Db::Postgres($p) => $body,
        }
    };
}
pub(crate) use on_read;

/// The server schema, one entry per version (after the event store's own schema).
/// `{UUID}`, `{INT}`, `{BLOB}` are replaced by each engine's column types. Never edit a
/// released entry: add a new one (`tests/webhooks.rs` starts on databases as earlier
/// builds left them). An `ALTER TABLE … ADD COLUMN` is skipped when the column exists.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE server_keys (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    secret        {BLOB} NOT NULL,
    created_at_us {INT} NOT NULL
);
CREATE TABLE tenants (
    tenant_id     {UUID} PRIMARY KEY,
    name          TEXT NOT NULL,
    created_at_us {INT} NOT NULL
);
CREATE TABLE api_keys (
    key_id        {UUID} PRIMARY KEY,
    tenant_id     {UUID} NOT NULL REFERENCES tenants (tenant_id),
    key_hash      {BLOB} NOT NULL,
    created_at_us {INT} NOT NULL,
    expires_at_us {INT}
);
CREATE TABLE policies (
    tenant_id     {UUID} NOT NULL,
    policy_id     TEXT NOT NULL,
    version       {INT} NOT NULL,
    body          TEXT NOT NULL,
    hash          {BLOB} NOT NULL,
    created_at_us {INT} NOT NULL,
    PRIMARY KEY (tenant_id, policy_id, version)
);
CREATE TABLE idempotency (
    tenant_id     {UUID} NOT NULL,
    idem_key      TEXT NOT NULL,
    request_hash  {BLOB} NOT NULL,
    status        INTEGER NOT NULL,
    body          {BLOB} NOT NULL,
    created_at_us {INT} NOT NULL,
    PRIMARY KEY (tenant_id, idem_key)
);
CREATE TABLE projection_checkpoints (
    name     TEXT PRIMARY KEY,
    position {INT} NOT NULL
);
CREATE TABLE payment_summary (
    payment_id       {UUID} PRIMARY KEY,
    tenant_id        {UUID} NOT NULL,
    policy_id        TEXT NOT NULL,
    policy_version   {INT} NOT NULL,
    status           TEXT NOT NULL,
    amount           TEXT NOT NULL,
    currency         TEXT NOT NULL,
    version          {INT} NOT NULL,
    created_position {INT} NOT NULL,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    state            TEXT NOT NULL
);
CREATE INDEX payment_summary_tenant ON payment_summary (tenant_id, created_position);
CREATE TABLE payment_participants (
    payment_id {UUID} NOT NULL,
    party_id   {UUID} NOT NULL,
    tenant_id  {UUID} NOT NULL,
    roles      TEXT NOT NULL,
    PRIMARY KEY (payment_id, party_id)
);
CREATE INDEX payment_participants_party ON payment_participants (tenant_id, party_id);
CREATE TABLE inbox (
    tenant_id  {UUID} NOT NULL,
    party_id   {UUID} NOT NULL,
    payment_id {UUID} NOT NULL,
    seq        {INT} NOT NULL,
    position   {INT} NOT NULL,
    event_type TEXT NOT NULL,
    roles      TEXT NOT NULL,
    at         TEXT NOT NULL,
    PRIMARY KEY (party_id, payment_id, seq)
);
CREATE INDEX inbox_party_position ON inbox (tenant_id, party_id, position);
CREATE TABLE balances (
    payment_id  {UUID} NOT NULL,
    account     TEXT NOT NULL,
    tenant_id   {UUID} NOT NULL,
    currency    TEXT NOT NULL,
    posted      TEXT NOT NULL,
    pending_in  TEXT NOT NULL,
    pending_out TEXT NOT NULL,
    PRIMARY KEY (payment_id, account)
);
"#,
    r#"
CREATE TABLE payment_clock (
    payment_id {UUID} PRIMARY KEY,
    tenant_id  {UUID} NOT NULL,
    due_at_ms  {INT} NOT NULL
);
CREATE INDEX payment_clock_due ON payment_clock (due_at_ms)
"#,
    r#"
CREATE TABLE webhooks (
    webhook_id         {UUID} PRIMARY KEY,
    tenant_id          {UUID} NOT NULL,
    url                TEXT NOT NULL,
    event_types        TEXT NOT NULL,
    secret             {BLOB} NOT NULL,
    previous_secrets   TEXT NOT NULL,
    position           {INT} NOT NULL,
    attempts           {INT} NOT NULL,
    next_attempt_at_us {INT} NOT NULL,
    last_status        {INT},
    last_error         TEXT,
    failing_since_us   {INT},
    created_at_us      {INT} NOT NULL,
    UNIQUE (tenant_id, url)
);
CREATE INDEX webhooks_due ON webhooks (next_attempt_at_us)
"#,
    // The delivery log: every try of every event, per endpoint numbered by `seq` (1, 2,
    // …; `webhooks.deliveries` is the last one given), the newest
    // `WebhookConfig::keep_deliveries` kept (see `crate::webhooks`).
    r#"
ALTER TABLE webhooks ADD COLUMN deliveries {INT} NOT NULL DEFAULT 0;
CREATE TABLE webhook_deliveries (
    webhook_id    {UUID} NOT NULL,
    seq           {INT} NOT NULL,
    tenant_id     {UUID} NOT NULL,
    event_id      {UUID} NOT NULL,
    position      {INT} NOT NULL,
    event_type    TEXT NOT NULL,
    attempt       {INT} NOT NULL,
    started_at_us {INT} NOT NULL,
    duration_ms   {INT} NOT NULL,
    status        {INT},
    error         TEXT,
    succeeded     BOOLEAN NOT NULL,
    PRIMARY KEY (webhook_id, seq)
)
"#,
    r#"
CREATE TABLE payment_rail_refs (
    tenant_id  {UUID} NOT NULL,
    rail_ref   TEXT NOT NULL,
    payment_id {UUID} NOT NULL,
    PRIMARY KEY (tenant_id, rail_ref, payment_id)
)
"#,
    // Revoked participant tokens: a token of the party on the payment carries the
    // `generation` it was minted in; one from an earlier generation than this is refused
    // (`api::auth`). Each revocation moves to the next generation.
    r#"
CREATE TABLE token_revocations (
    payment_id    {UUID} NOT NULL,
    party_id      {UUID} NOT NULL,
    tenant_id     {UUID} NOT NULL,
    generation    {INT} NOT NULL,
    revoked_at_us {INT} NOT NULL,
    PRIMARY KEY (payment_id, party_id)
)
"#,
    // Rail notices held by the server: `POST /v1/rail-notices` for a reference no
    // payment of the tenant used yet (the bank's notice overtook the submission). The
    // `status` is `held` until a payment records a transfer under `rail_ref`, then
    // `applied` (the payment's `RailNotice` ran) or `refused` (its rules said no: `code`,
    // `message`); see `crate::rail_notices`.
    r#"
CREATE TABLE held_rail_notices (
    notice_id      {UUID} PRIMARY KEY,
    tenant_id      {UUID} NOT NULL,
    rail_ref       TEXT NOT NULL,
    notice         TEXT NOT NULL,
    received_at_us {INT} NOT NULL,
    status         TEXT NOT NULL,
    payment_id     {UUID},
    code           TEXT,
    message        TEXT,
    settled_at_us  {INT}
);
CREATE INDEX held_rail_notices_list ON held_rail_notices (tenant_id, received_at_us, notice_id);
CREATE INDEX held_rail_notices_waiting ON held_rail_notices (tenant_id, received_at_us) WHERE status = 'held'
"#,
    // Held rail notices being applied (`status = 'applying'`: claimed by a round before
    // it runs one, so a dismissal cannot slip between the payment's append and the
    // notice's outcome); the round's own index over every tenant's waiting notices,
    // oldest first; a tenant's notices by reference (a new notice waits behind those
    // held for its reference; the list's `rail_ref` filter).
    r#"
DROP INDEX held_rail_notices_waiting;
CREATE INDEX held_rail_notices_waiting ON held_rail_notices (tenant_id, received_at_us) WHERE status IN ('held', 'applying');
CREATE INDEX held_rail_notices_due ON held_rail_notices (received_at_us, notice_id) WHERE status IN ('held', 'applying');
CREATE INDEX held_rail_notices_ref ON held_rail_notices (tenant_id, rail_ref, received_at_us, notice_id)
"#,
    // Claims of held rail notices: the round's runner and when it claimed (a lease other
    // runners wait out); the waiting notices of a reference in the order received (a
    // round's heads).
    r#"
ALTER TABLE held_rail_notices ADD COLUMN claimed_by {UUID};
ALTER TABLE held_rail_notices ADD COLUMN claimed_at_us {INT};
CREATE INDEX held_rail_notices_heads ON held_rail_notices (tenant_id, rail_ref, received_at_us, notice_id) WHERE status IN ('held', 'applying')
"#,
    // Repair of databases left by a build whose schema 3 kept one retired webhook secret
    // (`previous_secret`, `previous_until_us`, still there and unused): the list of
    // retired secrets every later build reads. Elsewhere the column exists and this
    // step is skipped.
    r#"
ALTER TABLE webhooks ADD COLUMN previous_secrets TEXT NOT NULL DEFAULT '[]'
"#,
    // The format the read models were built in (`projections::READ_MODEL_FORMAT`): a
    // build whose fold or state JSON reads stored events differently rebuilds them.
    r#"
CREATE TABLE projection_format (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    format {INT} NOT NULL
)
"#,
    // The round of held rail notices looks only at what can have changed
    // (`crate::rail_notices`): a reference's row carries the position of the event that
    // recorded it (0 on rows from before), so a round finds the references recorded
    // since its last one; a waiting notice is `due` (1) until a round finds its
    // reference unknown, and again once a payment records it. The round's heads are
    // read among the due notices only.
    r#"
ALTER TABLE payment_rail_refs ADD COLUMN position {INT} NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS payment_rail_refs_position ON payment_rail_refs (position);
ALTER TABLE held_rail_notices ADD COLUMN due {INT} NOT NULL DEFAULT 1;
CREATE INDEX IF NOT EXISTS held_rail_notices_due_heads ON held_rail_notices (received_at_us, notice_id) WHERE status IN ('held', 'applying') AND due = 1
"#,
];

/// Whether `table` has `column`, as SQL with those two parameters, per engine: the
/// migration runner skips an `ALTER TABLE … ADD COLUMN` whose column exists already.
const SQLITE_HAS_COLUMN: &str = "SELECT COUNT(*) FROM pragma_table_info($1) WHERE name = $2";
const PG_HAS_COLUMN: &str = "SELECT COUNT(*) FROM information_schema.columns \
     WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2";

/// The table and column of an `ALTER TABLE t ADD COLUMN c …` statement.
fn added_column(stmt: &str) -> Option<(&str, &str)> {
    let mut words = stmt.split_ascii_whitespace();
    let head: Vec<&str> = words.by_ref().take(2).collect();
    if !head
        .iter()
        .map(|w| w.to_ascii_uppercase())
        .eq(["ALTER", "TABLE"])
    {
        return None;
    }
    let table = words.next()?;
    let add: Vec<&str> = words.by_ref().take(2).collect();
    if !add
        .iter()
        .map(|w| w.to_ascii_uppercase())
        .eq(["ADD", "COLUMN"])
    {
        return None;
    }
    Some((table, words.next()?))
}

/// The migration steps, written once for both engines' transactions.
macro_rules! migrate_in {
    ($tx:expr, $uuid:expr, $int:expr, $blob:expr, $has_column:expr) => {{
        let tx = $tx;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS trustfold_server_schema \
             (id INTEGER PRIMARY KEY CHECK (id = 1), version BIGINT NOT NULL)",
        )
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "INSERT INTO trustfold_server_schema (id, version) VALUES (1, 0) \
             ON CONFLICT DO NOTHING",
        )
        .execute(&mut **tx)
        .await?;
        let current: i64 =
            sqlx::query_scalar("SELECT version FROM trustfold_server_schema WHERE id = 1")
                .fetch_one(&mut **tx)
                .await?;
        let current = usize::try_from(current).unwrap_or(usize::MAX);
        if current > MIGRATIONS.len() {
            return Err(StoreError::Schema(format!(
                "the database has server schema version {current} but this build knows only \
                 up to {}; upgrade trustfold-server",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
            let sql = sql
                .replace("{UUID}", $uuid)
                .replace("{INT}", $int)
                .replace("{BLOB}", $blob);
            for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                // A column that is there already (a database left by a build whose
                // migration added it earlier) is not added again.
                if let Some((table, column)) = added_column(stmt) {
                    let n: i64 = sqlx::query_scalar($has_column)
                        .bind(table)
                        .bind(column)
                        .fetch_one(&mut **tx)
                        .await?;
                    if n > 0 {
                        tracing::info!(table, column, "column exists already: not added again");
                        continue;
                    }
                }
                sqlx::query(stmt).execute(&mut **tx).await?;
            }
            sqlx::query("UPDATE trustfold_server_schema SET version = $1 WHERE id = 1")
                .bind(i64::try_from(i + 1).unwrap_or(i64::MAX))
                .execute(&mut **tx)
                .await?;
            tracing::info!(version = i + 1, "server schema migrated");
        }
    }};
}

/// Advisory lock key for the server schema on PostgreSQL ("tfserver").
const PG_MIGRATION_LOCK: i64 = 0x7466_7365_7276_6572;

impl Db {
    /// The pools of `store`'s engine.
    pub fn of(store: &AnyStore) -> Db {
        match store {
            AnyStore::Sqlite(s) => Db::Sqlite {
                writer: s.writer_pool().clone(),
                reader: s.reader_pool().clone(),
            },
            AnyStore::Postgres(s) => Db::Postgres(s.pool().clone()),
        }
    }

    /// Whether this is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Db::Postgres(_))
    }

    /// Creates or upgrades the server tables.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Db::Sqlite { writer, .. } => {
                let mut conn = writer.acquire().await?;
                let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
                migrate_in!(&mut tx, "BLOB", "INTEGER", "BLOB", SQLITE_HAS_COLUMN);
                tx.commit().await?;
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(PG_MIGRATION_LOCK)
                    .execute(&mut *tx)
                    .await?;
                migrate_in!(&mut tx, "uuid", "bigint", "bytea", PG_HAS_COLUMN);
                tx.commit().await?;
            }
        }
        Ok(())
    }
}

/// The database's clock in µs since the Unix epoch, as PostgreSQL SQL: one clock for every
/// server process over the database (their own clocks may differ).
pub(crate) const PG_NOW_US: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint";

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Advisory lock key for the secrets pass at start on PostgreSQL ("tfsecret").
const PG_SECRETS_LOCK: i64 = 0x7466_7365_6372_6574;

/// Webhook endpoints read at a time by the secrets pass at start.
const SECRETS_PAGE: i64 = 500;

/// The secrets pass at start, written once for both engines' transactions: creates the
/// server key if there is none, and brings every stored secret to how `$at_rest` keeps
/// them (see [`server_secret`]). Yields the server key and how many secrets it sealed.
macro_rules! secrets_in {
    ($tx:expr, $at_rest:expr, $fresh:expr) => {{
        let tx = $tx;
        let at_rest: &AtRest = $at_rest;
        let fresh = at_rest.store(&Purpose::ServerKey, $fresh)?;
        sqlx::query(
            "INSERT INTO server_keys (id, secret, created_at_us) VALUES (1, $1, $2) \
             ON CONFLICT DO NOTHING",
        )
        .bind(fresh.as_slice())
        .bind(now_us())
        .execute(&mut **tx)
        .await?;
        let stored: Vec<u8> = sqlx::query_scalar("SELECT secret FROM server_keys WHERE id = 1")
            .fetch_one(&mut **tx)
            .await?;
        let secret = at_rest.load(&Purpose::ServerKey, &stored)?;
        let sealing = at_rest.key().is_some();
        let mut sealed_now = 0usize;
        if sealing && !is_sealed(&stored) {
            sqlx::query("UPDATE server_keys SET secret = $1 WHERE id = 1")
                .bind(at_rest.store(&Purpose::ServerKey, &secret)?)
                .execute(&mut **tx)
                .await?;
            sealed_now += 1;
        }
        // Every endpoint's secrets: each sealed one must open, each clear one is sealed
        // (with a key) or refused (a sealed one, without).
        let mut after = uuid::Uuid::nil();
        loop {
            let rows: Vec<(uuid::Uuid, Vec<u8>, String)> = sqlx::query_as(
                "SELECT webhook_id, secret, previous_secrets FROM webhooks \
                 WHERE webhook_id > $1 ORDER BY webhook_id LIMIT $2",
            )
            .bind(after)
            .bind(SECRETS_PAGE)
            .fetch_all(&mut **tx)
            .await?;
            for (id, stored, previous) in &rows {
                let purpose = Purpose::Webhook(*id);
                at_rest.load(&purpose, stored)?;
                let retired = previous_of(previous);
                for (old, _) in &retired {
                    at_rest.load(&purpose, old)?;
                }
                let clear = std::iter::once(stored)
                    .chain(retired.iter().map(|(old, _)| old))
                    .filter(|s| !is_sealed(s))
                    .count();
                if !sealing || clear == 0 {
                    continue;
                }
                let seal = |s: &Vec<u8>| -> Result<Vec<u8>, StoreError> {
                    if is_sealed(s) {
                        Ok(s.clone())
                    } else {
                        at_rest.store(&purpose, s)
                    }
                };
                let retired = retired
                    .iter()
                    .map(|(old, until)| Ok((seal(old)?, *until)))
                    .collect::<Result<Vec<_>, StoreError>>()?;
                sqlx::query(
                    "UPDATE webhooks SET secret = $1, previous_secrets = $2 WHERE webhook_id = $3",
                )
                .bind(seal(stored)?)
                .bind(previous_text(&retired))
                .bind(id)
                .execute(&mut **tx)
                .await?;
                sealed_now += clear;
            }
            match rows.last() {
                Some((id, _, _)) if rows.len() >= usize::try_from(SECRETS_PAGE).unwrap_or(0) => {
                    after = *id
                }
                _ => break,
            }
        }
        (secret, sealed_now)
    }};
}

/// Loads the server's Ed25519 secret, creating it on first start, and brings every
/// secret stored in the database (the server key, the webhook endpoints' signing
/// secrets) to how `at_rest` keeps them ([`crate::sealed`]): with a secrets key, the
/// clear ones are sealed in place and the sealed ones must open
/// ([`StoreError::WrongSecretsKey`]); without one, a sealed secret is
/// [`StoreError::SecretsSealed`] and a warning says that the secrets are in clear.
///
/// One transaction, taken in turns by processes starting at once (`BEGIN IMMEDIATE` on
/// SQLite, an advisory lock on PostgreSQL): the first to create the key wins and
/// everyone reads it back; secrets are sealed once.
pub async fn server_secret(db: &Db, at_rest: &AtRest) -> Result<[u8; 32], StoreError> {
    let mut fresh = [0u8; 32];
    getrandom::getrandom(&mut fresh)
        .map_err(|e| StoreError::SecretsKey(format!("no randomness for the server key: {e}")))?;
    let (secret, sealed_now) = match db {
        Db::Sqlite { writer, .. } => {
            let mut conn = writer.acquire().await?;
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            let out = secrets_in!(&mut tx, at_rest, &fresh);
            tx.commit().await?;
            out
        }
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(PG_SECRETS_LOCK)
                .execute(&mut *tx)
                .await?;
            let out = secrets_in!(&mut tx, at_rest, &fresh);
            tx.commit().await?;
            out
        }
    };
    if at_rest.key().is_none() {
        tracing::warn!(
            "the server key and the webhook secrets are stored in the database in clear: \
             anyone with a copy of it can sign as this server and as its webhooks; start \
             with --secrets-key-file PATH or TRUSTFOLD_SECRETS_KEY to seal them"
        );
    } else if sealed_now > 0 {
        tracing::info!(
            secrets = sealed_now,
            "sealed the secrets stored in clear with the secrets key"
        );
    }
    secret
        .try_into()
        .map_err(|_| StoreError::Corrupt("the server key is not 32 bytes".into()))
}

#[cfg(test)]
mod tests {
    use super::added_column;

    #[test]
    fn added_columns_are_found() {
        assert_eq!(
            added_column("ALTER TABLE webhooks ADD COLUMN deliveries {INT} NOT NULL DEFAULT 0"),
            Some(("webhooks", "deliveries"))
        );
        assert_eq!(
            added_column("alter  table t\n add column c TEXT"),
            Some(("t", "c"))
        );
        assert_eq!(added_column("ALTER TABLE t DROP COLUMN c"), None);
        assert_eq!(added_column("CREATE TABLE t (c TEXT)"), None);
        assert_eq!(added_column("ALTER TABLE t ADD COLUMN"), None);
    }
}
