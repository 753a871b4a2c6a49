//! Starting and stopping the server: open the store, create the server key on first
//! start (and seal the stored secrets with the secrets key, if given: [`crate::sealed`]),
//! run the HTTP API, the background projector and (PostgreSQL) the notification
//! listener, and shut down gracefully.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tower_http::cors::{AllowOrigin, CorsLayer};
use trustfold_core::history::PublicKey;
use uuid::Uuid;

use crate::api::auth::TokenKey;
use crate::api::limits::RateLimits;
use crate::api::{router, AppState, HttpConfig, Notice};
use crate::cache::{LoadError, StateCache};
use crate::clock::Clock;
use crate::db::{server_secret, Db};
use crate::projections::Projector;
use crate::sealed::{AtRest, SecretsKey};
use crate::webhooks::WebhookConfig;
use crate::{AnyStore, StoreError};

/// Everything that can stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The read models could not be built.
    #[error(transparent)]
    Projection(#[from] LoadError),
    /// The listen address could not be bound, or serving failed.
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    /// A configuration value is unusable.
    #[error("configuration: {0}")]
    Config(String),
}

/// How to run the server.
#[derive(Debug, Clone)]
pub struct Config {
    /// A `postgres://` url, or a SQLite file path / `sqlite:` url.
    pub database: String,
    /// Where to listen (port 0: any free port).
    pub listen: SocketAddr,
    /// Origins allowed by CORS (`*` for any); empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// Tunables of the HTTP layer.
    pub http: HttpConfig,
    /// How often the platform's clock looks for payments with something due (deadlines,
    /// good funds, automatic releases: see [`crate::clock`]); `None`: the server runs no
    /// clock and the integrator sends `Tick` itself.
    pub tick_interval: Option<Duration>,
    /// The time commands are judged and dated at (the system clock; tests set it ahead).
    pub clock: Clock,
    /// How webhooks are sent (see [`crate::webhooks`]).
    pub webhooks: WebhookConfig,
    /// The key that seals the server key and the webhook secrets in the database
    /// (`--secrets-key-file`, `TRUSTFOLD_SECRETS_KEY`; see [`crate::sealed`]); `None`:
    /// they are stored in clear (and a sealed database refuses to start).
    pub secrets_key: Option<SecretsKey>,
}

impl Config {
    /// The defaults: `./trustfold.db` on 127.0.0.1:8080.
    pub fn new(database: impl Into<String>) -> Self {
        Config {
            database: database.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            cors_origins: Vec::new(),
            http: HttpConfig {
                body_limit: 256 * 1024,
                heartbeat: Duration::from_secs(15),
                poll_interval: Duration::from_secs(2),
                admin_token: None,
                request_timeout: Duration::from_secs(10),
                tenant_rate: crate::api::limits::defaults().0,
                participant_rate: crate::api::limits::defaults().1,
                failed_auth_rate: crate::api::limits::failed_auth_default(),
                max_streams_per_party: 16,
                max_streams_per_tenant: 5_000,
                stalled_connection_timeout: Duration::from_secs(60),
            },
            tick_interval: Some(Duration::from_secs(1)),
            clock: Clock::system(),
            webhooks: WebhookConfig::default(),
            secrets_key: None,
        }
    }
}

/// A running server.
#[derive(Debug)]
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl Running {
    /// Stops accepting, ends live streams, finishes in-flight requests, and returns
    /// (closing, once the request deadline and two more seconds have passed, any
    /// connection still open: a request never sent whole, an answer not read).
    pub async fn shutdown(self) -> Result<(), ServerError> {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(ServerError::Config(format!("server task failed: {e}"))),
        }
    }

    /// Waits until the server stops (after `signal` resolves), then shuts it down.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<(), ServerError> {
        signal.await;
        tracing::info!("shutting down: finishing in-flight requests");
        self.shutdown().await
    }
}

/// Opens the store and the server tables and brings the read models up to date.
pub async fn open(database: &str) -> Result<(AnyStore, Db, Arc<Projector>), ServerError> {
    let store = AnyStore::open(database).await?;
    let db = Db::of(&store);
    db.migrate().await?;
    let projector = Arc::new(Projector::new(store.clone(), db.clone()));
    projector.init().await?;
    Ok((store, db, projector))
}

fn cors(origins: &[String]) -> Result<Option<CorsLayer>, ServerError> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o)
                    .map_err(|_| ServerError::Config(format!("bad CORS origin `{o}`")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(list)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::IF_MATCH,
                header::IF_NONE_MATCH,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([
                header::ETAG,
                HeaderName::from_static("idempotent-replayed"),
                header::RETRY_AFTER,
                header::WWW_AUTHENTICATE,
                HeaderName::from_static(crate::api::payments::SIGNATURE_HEADER),
            ])
            .max_age(Duration::from_secs(600)),
    ))
}

/// The state the handlers and background tasks share, on the opened database with the
/// read models caught up (and the server key made on first start); and the sender that
/// tells them to stop.
async fn prepare(config: &Config) -> Result<(AppState, watch::Sender<bool>), ServerError> {
    let (store, db, projector) = open(&config.database).await?;
    projector.catch_up().await?;
    let at_rest = AtRest::new(config.secrets_key.clone());
    let secret = server_secret(&db, &at_rest).await?;
    let public_key = PublicKey::from_secret(&secret);
    tracing::info!(%public_key, sealed = at_rest.key().is_some(), "server key loaded");
    let (notices, _) = broadcast::channel::<Notice>(4096);
    let (stop, shutdown) = watch::channel(false);
    let state = AppState {
        store,
        db,
        secret: Arc::new(secret),
        public_key,
        token_key: TokenKey::derive(&secret),
        api_keys: Arc::default(),
        cache: Arc::new(StateCache::default()),
        notices: notices.clone(),
        projector: projector.clone(),
        config: Arc::new(config.http.clone()),
        streams: Arc::default(),
        shutdown: shutdown.clone(),
        clock: config.clock.clone(),
        webhooks: config.webhooks.clone(),
        limits: Arc::new(
            RateLimits::new(config.http.tenant_rate, config.http.participant_rate)
                .with_failed_auth(config.http.failed_auth_rate),
        ),
        at_rest,
    };
    Ok((state, stop))
}

/// The state a server on `config` would share, with nothing running: no listener, no
/// background task. For benchmarks that drive one background step by hand (e.g.
/// [`crate::rail_notices::Rounds`]); not a way to run a server.
#[doc(hidden)]
pub async fn state_without_serving(config: &Config) -> Result<AppState, ServerError> {
    Ok(prepare(config).await?.0)
}

/// Starts the server in the background.
pub async fn start(config: Config) -> Result<Running, ServerError> {
    let (state, stop) = prepare(&config).await?;
    let (db, projector, notices) = (
        state.db.clone(),
        state.projector.clone(),
        state.notices.clone(),
    );
    let shutdown = state.shutdown.clone();
    let limits = state.limits.clone();
    let sender = (state.clone(), notices.subscribe());
    let clock = config.tick_interval.map(|every| (state.clone(), every));
    // Held rail notices are looked at every second, or on the clock's beat when that is
    // faster (a slow clock must not leave a bank's notice waiting).
    let second = Duration::from_secs(1);
    let held_notices = (
        state.clone(),
        config.tick_interval.map_or(second, |t| t.min(second)),
    );
    let mut app = router(state).layer(
        tower_http::trace::TraceLayer::new_for_http()
            // As `DefaultMakeSpan`, but a participant token in `?access_token=` (the
            // live stream's) is not written to the logs.
            .make_span_with(|req: &axum::http::Request<axum::body::Body>| {
                tracing::info_span!(
                    "request",
                    method = %req.method(),
                    uri = %crate::api::auth::loggable_uri(req.uri()),
                    version = ?req.version(),
                )
            })
            .on_response(tower_http::trace::DefaultOnResponse::new().level(tracing::Level::INFO)),
    );
    if let Some(c) = cors(&config.cors_origins)? {
        app = app.layer(c);
    }
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    // Answers and live-stream events go out as soon as they are written: with Nagle's
    // algorithm a small SSE frame written while the last one is unacknowledged waits
    // for the peer's delayed ACK (about 40 ms on Linux).
    let stalled = config.http.stalled_connection_timeout;
    let listener = listener.tap_io(move |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set on a connection");
        }
        cut_off_when_stalled(tcp, stalled);
    });
    tracing::info!(%addr, database = %redact_url(&config.database), "trustfold-server listening");

    let mut background = spawn_background(db, projector, notices, shutdown.clone(), &config);
    {
        let (state, notices) = sender;
        let config = config.webhooks.clone();
        let shutdown = shutdown.clone();
        background.push(tokio::spawn(crate::webhooks::run(
            state, config, notices, shutdown,
        )));
    }
    background.push(tokio::spawn(async move {
        let mut every = tokio::time::interval(FORGET_IDLE_CALLERS);
        loop {
            every.tick().await;
            limits.forget_idle();
        }
    }));
    {
        let (state, every) = held_notices;
        background.push(tokio::spawn(crate::rail_notices::run(
            state,
            every,
            shutdown.clone(),
        )));
    }
    if let Some((state, every)) = clock {
        background.push(tokio::spawn(crate::clock::run(
            state,
            every,
            shutdown.clone(),
        )));
    }
    let mut on_stop = shutdown;
    let mut stopping = on_stop.clone();
    let drain = config.http.request_timeout + SHUTDOWN_MARGIN;
    let task = tokio::spawn(async move {
        // With the peer's address on every request: failed authentications are limited
        // per client address (`api::limits`).
        let serve = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = on_stop.wait_for(|s| *s).await;
        })
        .into_future();
        // Every request's response starts within the request deadline, so by `drain`
        // after the stop no request is in flight; a connection still open then is one
        // whose request never arrived whole (a stalled client) or whose answer is not
        // read, and waiting for it would hold the process forever.
        let served = tokio::select! {
            served = serve => served,
            () = async {
                let _ = stopping.wait_for(|s| *s).await;
                tokio::time::sleep(drain).await;
            } => {
                tracing::warn!(
                    after = ?drain,
                    "connections still open after every request finished; closing them"
                );
                Ok(())
            }
        };
        for b in background {
            b.abort();
        }
        served.map_err(ServerError::from)
    });
    Ok(Running { addr, stop, task })
}

/// Hides a password in a database url for logs.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// How long a shutdown waits, beyond the request deadline, for the connections of
/// answered requests to close (answers still being written) before it closes them.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(2);

/// How often the rate limits forget callers idle long enough for their buckets to
/// refill.
const FORGET_IDLE_CALLERS: Duration = Duration::from_secs(60);

/// How long the background projector lets appends gather after a notice before it
/// applies them.
const PROJECTION_DELAY: Duration = Duration::from_millis(20);

/// How long the LISTEN connection may take to answer its ping.
const LISTEN_PING: Duration = Duration::from_secs(2);

/// How long one background projection run may wait on the database.
const BACKGROUND_DEADLINE: Duration = Duration::from_secs(10);

fn spawn_background(
    db: Db,
    projector: Arc<Projector>,
    notices: broadcast::Sender<Notice>,
    shutdown: watch::Receiver<bool>,
    config: &Config,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    // The projector also runs on a timer and on notices, for appends by other processes.
    {
        let mut rx = notices.subscribe();
        let mut shutdown = shutdown.clone();
        let every = config.http.poll_interval;
        let projector = projector.clone();
        let postgres = matches!(db, Db::Postgres(_));
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = rx.recv() => {
                        // Let the appends of the next moments join this catch-up: one
                        // projection transaction for many commands. (A read of a read
                        // model does not wait for this: it catches up itself.)
                        tokio::time::sleep(PROJECTION_DELAY).await;
                        while rx.try_recv().is_ok() {}
                    }
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.changed() => return,
                }
                // Bounded on PostgreSQL: a database that stopped answering must not hold
                // the projection (and the reads waiting for it) until TCP gives up. Each
                // batch commits its own progress, so a cut-off run loses one batch. (A
                // SQLite file does not go silent; its runs are not cut off midway.)
                let run = projector.catch_up_in_background();
                let result = if postgres {
                    tokio::time::timeout(BACKGROUND_DEADLINE, run).await
                } else {
                    Ok(run.await)
                };
                match result {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "background projection failed"),
                    Err(_) => {
                        crate::error::disconnect::note();
                        tracing::warn!("background projection got no answer in time; trying again")
                    }
                }
            }
        }));
    }
    if let Db::Postgres(pool) = db {
        let mut shutdown = shutdown;
        // A quiet LISTEN connection is checked as often as an idle stream is kept
        // alive (twice the heartbeat).
        let check_after = config.http.heartbeat * 2;
        tasks.push(tokio::spawn(async move {
            loop {
                match listen(&pool, &notices, check_after).await {
                    Ok(()) => return,
                    Err(e) => tracing::warn!(error = %e, "LISTEN failed; reconnecting"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }));
    }
    tasks
}

/// Forwards `NOTIFY trustfold_events` payloads (`tenant:payment:version`) to the
/// in-process broadcast.
async fn listen(
    pool: &sqlx::PgPool,
    notices: &broadcast::Sender<Notice>,
    check_after: Duration,
) -> Result<(), sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen(crate::NOTIFY_CHANNEL).await?;
    tracing::info!("listening for other processes' appends");
    loop {
        let n = match tokio::time::timeout(check_after, listener.recv()).await {
            Ok(n) => n?,
            Err(_) => {
                // Quiet for a while: a connection that went silent (packets dropped)
                // would deliver nothing, ever, and raise no error. It must answer.
                let ping = sqlx::query("SELECT 1").execute(&mut listener);
                match tokio::time::timeout(LISTEN_PING, ping).await {
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        crate::error::disconnect::note();
                        return Err(sqlx::Error::Io(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the LISTEN connection did not answer a ping",
                        )));
                    }
                }
            }
        };
        let mut parts = n.payload().split(':');
        let (_, Some(stream), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if let (Ok(stream), Ok(version)) = (Uuid::try_parse(stream), version.parse::<u64>()) {
            let _ = notices.send(Notice {
                stream,
                version,
                events: None,
            });
        }
    }
}

/// `trustfold-server rebuild-projections`: drops every read model and replays the log.
pub async fn rebuild_projections(database: &str) -> Result<u64, ServerError> {
    let (_, _, projector) = open(database).await?;
    Ok(projector.rebuild().await?)
}

/// Sets `TCP_USER_TIMEOUT` on an accepted connection (see
/// [`HttpConfig::stalled_connection_timeout`]); elsewhere than Linux a stalled client is
/// cut off only when its TCP gives up.
fn cut_off_when_stalled(tcp: &tokio::net::TcpStream, after: Duration) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(after)) {
        tracing::debug!(error = %e, "TCP_USER_TIMEOUT not set on a connection");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (tcp, after);
}
