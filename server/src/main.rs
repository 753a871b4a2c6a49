//! `trustfold-server`: the reference server's command line.
//!
//! ```text
//! trustfold-server                                  # ./trustfold.db on 127.0.0.1:8080
//! trustfold-server --database-url postgres://…      # PostgreSQL (any number of processes)
//! trustfold-server rebuild-projections              # drop and rebuild the read models
//! trustfold-server new-secrets-key > secrets.key    # a key for --secrets-key-file
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use trustfold_server::api::limits::Rate;
use trustfold_server::app::{rebuild_projections, start, Config, ServerError};
use trustfold_server::sealed::SecretsKey;
use trustfold_server::StoreError;

/// The trustfold reference server.
#[derive(Parser, Debug)]
#[command(name = "trustfold-server", version, about)]
struct Cli {
    /// A `postgres://` url, or a SQLite file path.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "trustfold.db",
        global = true
    )]
    database_url: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Origin allowed to call the API from a browser (repeatable; `*` for any).
    #[arg(long = "cors-origin")]
    cors_origin: Vec<String>,
    /// Token that may create tenants (`POST /v1/tenants`).
    #[arg(long, env = "TRUSTFOLD_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 256 * 1024)]
    body_limit: usize,
    /// Seconds between heartbeat comments on idle live streams.
    #[arg(long, default_value_t = 15)]
    heartbeat_seconds: u64,
    /// Milliseconds between store polls of live streams and the projector.
    #[arg(long, default_value_t = 2000)]
    poll_ms: u64,
    /// Seconds a request may take until its response starts; past it, 503
    /// `database_unavailable` (the database stopped answering).
    #[arg(long, default_value_t = 10)]
    request_timeout_seconds: u64,
    /// Live streams one party of a payment may hold open at once in this process (its
    /// tabs and devices); more is 429 `too_many_streams`.
    #[arg(long, default_value_t = 16)]
    max_streams_per_party: usize,
    /// Live streams a tenant (its keys and its participants together) may hold open at
    /// once in this process.
    #[arg(long, default_value_t = 5000)]
    max_streams_per_tenant: usize,
    /// Seconds what the server sent may stay unacknowledged, or unsent because the
    /// client stopped reading, before the connection is cut (TCP_USER_TIMEOUT, Linux):
    /// a stalled live-stream client then gives its stream's place back.
    #[arg(long, default_value_t = 60)]
    stalled_connection_timeout_seconds: u64,
    /// Milliseconds between the clock's looks for payments with something due
    /// (deadlines, good funds, automatic releases); 0: no clock, send `Tick` yourself.
    #[arg(long, default_value_t = 1000)]
    tick_ms: u64,
    /// Let webhook endpoints be on loopback, private or link-local addresses
    /// (development only: a tenant could make the server call into its network).
    #[arg(long)]
    webhooks_allow_private: bool,
    /// Requests a second a tenant's API keys may make on this process (bursts of twice
    /// as many; past it, 429 `rate_limited` with `Retry-After`); 0: no limit.
    #[arg(long, default_value_t = 1000)]
    rate_limit_tenant: u32,
    /// Requests a second one participant's tokens may make on this process (bursts of
    /// twice as many); 0: no limit.
    #[arg(long, default_value_t = 20)]
    rate_limit_participant: u32,
    /// Failed authentications a minute one client address may make on this process (an
    /// invalid API key, participant token or admin token; bursts of half as many; IPv6
    /// counted per /64): past it, every request from the address is 429 `rate_limited`
    /// with `Retry-After`, before its credential is checked, until the budget refills.
    /// Behind a reverse proxy every client has the proxy's address: set 0 there. 0: no
    /// limit.
    #[arg(long, default_value_t = 60)]
    rate_limit_failed_auth: u32,
    /// File holding the secrets key, 64 hex digits (`trustfold-server new-secrets-key`
    /// makes one): the server key and the webhook signing secrets are then stored sealed
    /// (XChaCha20-Poly1305) in the database, and those stored in clear are sealed at
    /// start. Every process of a database needs the same key; keep it outside the
    /// database and its backups. The digits may be given in TRUSTFOLD_SECRETS_KEY
    /// instead. Without a key the secrets are stored in clear.
    #[arg(long, env = "TRUSTFOLD_SECRETS_KEY_FILE", value_name = "PATH")]
    secrets_key_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Drop every read model (payment summary, inbox, balances, clock, rail references) and
    /// rebuild it from the event log.
    RebuildProjections,
    /// Print a new secrets key (64 hex digits from the operating system's random source)
    /// for --secrets-key-file or TRUSTFOLD_SECRETS_KEY; e.g.
    /// `(umask 077; trustfold-server new-secrets-key > secrets.key)`.
    NewSecretsKey,
}

/// The environment variable that may hold the secrets key's 64 hex digits.
const SECRETS_KEY_ENV: &str = "TRUSTFOLD_SECRETS_KEY";

/// The secrets key from `--secrets-key-file` and/or `TRUSTFOLD_SECRETS_KEY` (both: they
/// must agree); `None` without either.
fn secrets_key(file: Option<&Path>) -> Result<Option<SecretsKey>, ServerError> {
    let from_file = file.map(SecretsKey::from_file).transpose()?;
    let from_env = match std::env::var(SECRETS_KEY_ENV) {
        Ok(v) if !v.trim().is_empty() => Some(SecretsKey::from_hex(&v).map_err(|e| match e {
            StoreError::SecretsKey(m) => StoreError::SecretsKey(format!("{SECRETS_KEY_ENV}: {m}")),
            other => other,
        })?),
        Ok(_) | Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(ServerError::Config(format!(
                "{SECRETS_KEY_ENV} must be 64 hex digits"
            )))
        }
    };
    match (from_file, from_env) {
        (Some(f), Some(e)) if f.to_hex() != e.to_hex() => Err(ServerError::Config(format!(
            "--secrets-key-file and {SECRETS_KEY_ENV} hold different keys; give one of them"
        ))),
        (f, e) => Ok(f.or(e)),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if let Some(Cmd::NewSecretsKey) = cli.command {
        return match SecretsKey::generate() {
            Ok(key) => {
                println!("{}", key.to_hex());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("trustfold-server: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trustfold-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Some(Cmd::NewSecretsKey) => Ok(()),
            Some(Cmd::RebuildProjections) => {
                let n = rebuild_projections(&cli.database_url).await?;
                println!("rebuilt the read models from {n} events");
                Ok(())
            }
            None => {
                let mut config = Config::new(cli.database_url);
                config.secrets_key = secrets_key(cli.secrets_key_file.as_deref())?;
                config.listen = cli.listen;
                config.cors_origins = cli.cors_origin;
                config.http.admin_token = cli.admin_token.filter(|t| !t.is_empty());
                config.http.body_limit = cli.body_limit;
                config.http.heartbeat = Duration::from_secs(cli.heartbeat_seconds.max(1));
                config.http.poll_interval = Duration::from_millis(cli.poll_ms.max(10));
                config.http.request_timeout =
                    Duration::from_secs(cli.request_timeout_seconds.max(1));
                config.http.max_streams_per_party = cli.max_streams_per_party.max(1);
                config.http.max_streams_per_tenant = cli.max_streams_per_tenant.max(1);
                config.http.stalled_connection_timeout =
                    Duration::from_secs(cli.stalled_connection_timeout_seconds.max(1));
                config.webhooks.allow_private = cli.webhooks_allow_private;
                config.http.tenant_rate =
                    (cli.rate_limit_tenant > 0).then(|| Rate::per_second(cli.rate_limit_tenant));
                config.http.participant_rate = (cli.rate_limit_participant > 0)
                    .then(|| Rate::per_second(cli.rate_limit_participant));
                config.http.failed_auth_rate = (cli.rate_limit_failed_auth > 0)
                    .then(|| Rate::per_minute(cli.rate_limit_failed_auth));
                config.tick_interval =
                    (cli.tick_ms > 0).then(|| Duration::from_millis(cli.tick_ms.max(10)));
                let running = start(config).await?;
                println!("trustfold-server listening on http://{}", running.addr);
                running.run_until(shutdown_signal()).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trustfold-server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
