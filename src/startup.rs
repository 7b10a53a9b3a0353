//! `Application::build` wires configuration, storage, HTTP and background
//! work together; `main` and the tests share it, so tests run the real app on
//! port 0 with their own database file.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use utoipa_actix_web::AppExt;

use crate::config::{ConfigError, Database, Requirement, Settings, CONFIG_FILE};
use crate::http::auth::{Access, TokenRateLimiter};
use crate::http::per_address::AddressLimits;
use crate::http::{self, AppData, Services};
use crate::model::clock::{Clock, SystemClock};
use crate::outbox::delivery::Deliverer;
use crate::outbox::ChangeWatch;
use crate::store::token_cipher::TokenCipher;
use crate::store::{DbError, Store};
use crate::strava::budget::{Budget, Limits};
use crate::strava::client::{self, StravaClient};
use crate::strava::oauth::StravaOAuth;
use crate::strava::tokens::Tokens;
use crate::sync::attention::Attention;
use crate::sync::queue::JobQueue;
use crate::sync::runner::{self, JobRunner};
use crate::sync::scheduler::{self, Planner};
use crate::telemetry;
use crate::webhook::worker::{self, Worker};
use crate::webhook::Webhooks;

/// How long in-flight requests get to finish at shutdown.
const SHUTDOWN_GRACE_SECS: u64 = 10;

pub struct Application {
    port: u16,
    server: Server,
    services: web::Data<Services>,
    webhooks: web::Data<Webhooks>,
    planner: Planner,
    sync_schedule: String,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    runner: Arc<JobRunner>,
    /// Posts logged changes to the application, when `APP_WEBHOOK_URL` is set.
    deliverer: Option<Deliverer>,
    /// Whether `run` starts the cron schedule (see [`Application::without_schedule`]).
    schedule: bool,
    /// Whether `run` starts the job runner (see [`Application::with_jobs_run_by_hand`]).
    run_jobs: bool,
}

/// Stops a running [`Application`] from elsewhere (signals, tests, the demo).
#[derive(Clone)]
pub struct ShutdownHandle {
    token: CancellationToken,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.token.cancel();
    }
}

impl Application {
    /// Opens the store (applying migrations), binds the listener and prepares
    /// the background workers; nothing runs until [`Application::run`].
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with_clock(settings, Arc::new(SystemClock)).await
    }

    /// [`Application::build`] on a given clock: simulations and tests move
    /// the budget's, the tokens' and the job runner's time by hand.
    pub async fn build_with_clock(
        settings: Settings,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        settings.require(&[Requirement::StravaApp, Requirement::TokenKey])?;
        let settings = Arc::new(settings);
        let (listener, store) = open(&settings).await?;
        let store = seal_tokens(store, &settings).await?;
        store.join_instances(clock.epoch()).await?;
        let port = listener.local_addr()?.port();

        let webhooks = web::Data::new(Webhooks::load(&store).await?);
        let http_client = client::http_client()?;
        let oauth = Arc::new(StravaOAuth::new(
            &settings,
            http_client.clone(),
            clock.clone(),
        )?);
        let limits = Limits {
            quarter: settings.strava_rate_limit_15min,
            day: settings.strava_rate_limit_daily,
        };
        let budget = Budget::load(
            store.clone(),
            clock.clone(),
            limits,
            settings.budget_shares.clone(),
        )
        .await?;
        store
            .set_tiers(settings.tiers.clone(), settings.default_tier.clone())
            .await?;
        let attention = Arc::new(Attention::new(store.clone(), clock.clone()));
        let tokens = Arc::new(Tokens::new(store.clone(), oauth.clone(), clock.clone()));
        let strava = Arc::new(StravaClient::new(
            http_client,
            settings.strava_api_url.clone(),
            budget.clone(),
            tokens,
        ));
        let jobs = Arc::new(JobQueue::new(store.clone(), clock.clone()));
        let runner = JobRunner::new(
            store.clone(),
            attention.clone(),
            strava.clone(),
            budget.clone(),
            jobs.clone(),
        );
        let planner = Planner {
            store: store.clone(),
            queue: jobs.clone(),
            attention: attention.clone(),
            clock: clock.clone(),
            daily_limit: settings.strava_rate_limit_daily,
        };
        let changes = ChangeWatch::default();
        let deliverer = match &settings.app_webhook {
            Some(hook) => Some(Deliverer::new(
                store.clone(),
                clock.clone(),
                hook.clone(),
                changes.clone(),
            )?),
            None => None,
        };
        let services = web::Data::new(Services {
            store,
            attention,
            clock,
            budget,
            strava,
            oauth,
            jobs,
            changes,
        });
        let data = AppData {
            services: services.clone(),
            settings: web::Data::from(settings.clone()),
            webhooks: webhooks.clone(),
            access: web::Data::new(Access {
                admin_token: settings.admin_token.clone(),
                rate_limiter: TokenRateLimiter::new(settings.api_rate_limit),
            }),
            limits: web::Data::new(AddressLimits::new(&settings)),
            metrics: web::Data::new(telemetry::metrics_recorder()),
            streams: web::Data::default(),
        };
        let server = HttpServer::new(move || {
            App::new()
                .wrap(http::cors(&data.settings))
                .wrap(from_fn(http::in_fault_shape))
                .wrap(from_fn(http::observe))
                .into_utoipa_app()
                .openapi(http::openapi::base())
                .configure(http::configure(&data))
                .openapi_service(http::openapi::service)
                .into_app()
        })
        .listen(listener)?
        .client_request_timeout(http::READ_TIMEOUT)
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_GRACE_SECS)
        .run();

        Ok(Self {
            port,
            server,
            services,
            webhooks,
            planner,
            sync_schedule: settings.sync_schedule.clone(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            runner,
            deliverer,
            schedule: true,
            run_jobs: true,
        })
    }

    /// Runs without the cron schedule (the daily gap-fill and the planning of
    /// reconciliation and enrichment), which fires on the wall clock: tests
    /// that count Strava calls start those passes themselves instead.
    pub fn without_schedule(mut self) -> Self {
        self.schedule = false;
        self
    }

    /// Runs without the job runner's loop: tests that check in which order
    /// queued work is served run it themselves, one job at a time, with
    /// [`JobRunner::run_until_idle`].
    pub fn with_jobs_run_by_hand(mut self) -> Self {
        self.run_jobs = false;
        self
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The services the handlers and workers share (tests seed and inspect
    /// through them).
    pub fn services(&self) -> web::Data<Services> {
        self.services.clone()
    }

    /// The job runner, for tests and simulations that drive it until idle.
    pub fn runner(&self) -> Arc<JobRunner> {
        self.runner.clone()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            token: self.shutdown.clone(),
        }
    }

    /// Serves until SIGTERM, Ctrl-C or the shutdown handle; then lets
    /// in-flight requests finish and waits for background tasks to stop.
    pub async fn run(self) -> anyhow::Result<()> {
        let Self {
            server,
            services,
            webhooks,
            planner,
            sync_schedule,
            shutdown,
            tasks,
            runner,
            deliverer,
            schedule,
            run_jobs,
            ..
        } = self;
        if schedule {
            scheduler::start(planner, &sync_schedule, shutdown.clone(), &tasks).await?;
        }
        let worker = Worker {
            store: services.store.clone(),
            clock: services.clock.clone(),
            webhooks: webhooks.into_inner(),
            jobs: services.jobs.clone(),
        };
        tasks.spawn(worker::run(worker, shutdown.clone()));
        tasks.spawn(shrink_caches(services.store.clone(), shutdown.clone()));
        tasks.spawn(runner::keep_alive(
            services.store.clone(),
            services.clock.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(telemetry::run_upkeep(
            telemetry::metrics_recorder(),
            shutdown.clone(),
        ));
        tasks.spawn(services.changes.clone().run(
            services.store.clone(),
            services.clock.clone(),
            deliverer.is_some(),
            shutdown.clone(),
        ));
        if let Some(deliverer) = deliverer {
            tasks.spawn(deliverer.run(shutdown.clone()));
        }
        if run_jobs {
            tasks.spawn(runner.run(shutdown.clone(), tasks.clone()));
        }
        let handle: ServerHandle = server.handle();
        let server_task = tokio::spawn(server);
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = shutdown_signal() => tracing::info!("shutdown requested"),
        }
        shutdown.cancel();
        tasks.close();
        handle.stop(true).await;
        tasks.wait().await;
        if let Err(e) = services.store.leave_instances().await {
            tracing::error!(error = %e, "could not hand this instance's jobs back");
        }
        server_task.await??;
        tracing::info!("stopped");
        Ok(())
    }
}

/// How often the database's caches are handed back (see
/// [`Store::shrink_memory`]); a busy service refills them in a few reads.
const SHRINK_CACHES_EVERY: std::time::Duration = std::time::Duration::from_secs(20);

/// Shrinks the database's caches every [`SHRINK_CACHES_EVERY`] until
/// `shutdown`; `main` returns freed memory to the system as often.
async fn shrink_caches(store: Store, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(SHRINK_CACHES_EVERY) => {}
        }
        if let Err(e) = store.shrink_memory().await {
            tracing::warn!(error = %e, "could not shrink the database's caches");
        }
    }
}

/// What only the machine can say about `HOST`, `PORT` (when `listens`) and
/// the SQLite database file, for the settings `reported` does not already
/// name as wrong: `main` adds these to the configuration's problems, so one
/// message names everything before anything starts.
pub fn preflight(settings: &Settings, reported: &[String], listens: bool) -> Vec<String> {
    let named = |key: &str| reported.iter().any(|problem| problem.starts_with(key));
    // With the file unreadable or malformed, the settings are mostly
    // defaults: checking them would name problems the operator does not have.
    if named(CONFIG_FILE) {
        return Vec::new();
    }
    let mut problems = Vec::new();
    if listens && !named("HOST") && !named("PORT") {
        problems.extend(listen(&settings.host, settings.port).err());
    }
    if !named("DATABASE") {
        problems.extend(database_file_problem(settings));
    }
    problems
}

/// Binds the listen address and opens the database, once both are known to
/// work: every problem with `HOST`, `PORT` or the database is reported in
/// one error naming the setting, before a migration runs.
async fn open(settings: &Settings) -> Result<(TcpListener, Store), ConfigError> {
    let listener = listen(&settings.host, settings.port);
    let mut problems: Vec<String> = listener.as_ref().err().cloned().into_iter().collect();
    problems.extend(database_file_problem(settings));
    let listener = match listener {
        Ok(listener) if problems.is_empty() => listener,
        _ => return Err(ConfigError { problems }),
    };
    let database = settings.database.clone();
    let named = |e: String| ConfigError {
        problems: vec![format!(
            "{} `{}` cannot be used: {e}",
            settings.database.setting(),
            settings.database
        )],
    };
    let store = tokio::task::spawn_blocking(move || Store::connect(&database))
        .await
        .map_err(|e| named(e.to_string()))?
        .map_err(|e| named(e.to_string()))?;
    Ok((listener, store))
}

/// The store with Strava's tokens sealed under `TOKEN_ENCRYPTION_KEY`:
/// plaintext ones from before encryption, and ones sealed with
/// `TOKEN_ENCRYPTION_KEY_PREVIOUS`, are sealed anew before anything runs.
async fn seal_tokens(store: Store, settings: &Settings) -> Result<Store, ConfigError> {
    let key = settings
        .token_encryption_key
        .as_ref()
        .expect("required before the store opens");
    let cipher = TokenCipher::new(key, settings.token_encryption_key_previous.as_ref());
    let store = store.with_token_cipher(cipher);
    let sealed = store.seal_tokens().await.map_err(|e| {
        let problem = match e {
            DbError::Tokens(why) => {
                format!("TOKEN_ENCRYPTION_KEY does not open the stored tokens: {why}")
            }
            other => format!(
                "{} `{}`: sealing the stored tokens failed: {other}",
                settings.database.setting(),
                settings.database
            ),
        };
        ConfigError {
            problems: vec![problem],
        }
    })?;
    if sealed > 0 {
        tracing::info!(
            athletes = sealed,
            "sealed Strava tokens with TOKEN_ENCRYPTION_KEY"
        );
    }
    Ok(store)
}

/// Binds `HOST`:`PORT`, naming the setting at fault (and, for a port in
/// use, one that is free now).
fn listen(host: &str, port: u16) -> Result<TcpListener, String> {
    let unresolved =
        |why: String| format!("HOST `{host}` does not name an address of this machine ({why})");
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| unresolved(e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(unresolved("no address".into()));
    }
    TcpListener::bind(&addrs[..]).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            let free = TcpListener::bind((addrs[0].ip(), 0))
                .and_then(|l| l.local_addr())
                .map(|a| format!(", e.g. PORT={} (free now)", a.port()))
                .unwrap_or_default();
            format!("PORT {port} is already in use on {host}: choose another{free}, or PORT=0 for any free port")
        }
        std::io::ErrorKind::AddrNotAvailable => unresolved(e.to_string()),
        _ => format!("HOST `{host}` and PORT {port} cannot be listened on: {e}"),
    })
}

/// Why the SQLite database file can be neither opened for writing nor
/// created, if it cannot (checked without creating it).
fn database_file_problem(settings: &Settings) -> Option<String> {
    match &settings.database {
        Database::Sqlite(path) => check_database(path).err(),
        Database::Postgres(_) => None,
    }
}

fn check_database(path: &Path) -> Result<(), String> {
    let problem = |why: String| format!("DATABASE_PATH `{}` {why}", path.display());
    if path.is_dir() {
        return Err(problem("is a directory, not a database file".into()));
    }
    if path.exists() {
        return std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map(drop)
            .map_err(|e| problem(format!("cannot be opened for writing ({e})")));
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(problem(format!(
            "is in `{}`, which is not a directory",
            dir.display()
        )));
    }
    tempfile::tempfile_in(dir)
        .map(drop)
        .map_err(|e| problem(format!("cannot be created in `{}` ({e})", dir.display())))
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
