//! `Application::build` wires configuration, storage, HTTP and background
//! work together; `main` and the tests share it, so tests run the real app on
//! port 0 with their own database file.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Requirement, Settings};
use crate::http::{self, AppState, Services};
use crate::model::clock::{Clock, SystemClock};
use crate::store::Store;
use crate::strava::budget::{Budget, Limits};
use crate::strava::client::{self, StravaClient};
use crate::strava::oauth::StravaOAuth;
use crate::strava::tokens::Tokens;
use crate::sync::runner::JobRunner;
use crate::sync::scheduler;
use crate::sync::JobQueue;
use crate::webhook::{self, Webhooks};

/// How long in-flight requests get to finish at shutdown.
const SHUTDOWN_GRACE_SECS: u64 = 10;

pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
    webhooks: web::Data<Webhooks>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    runner: Arc<JobRunner>,
    /// Whether `run` starts the cron schedule (see [`Application::without_schedule`]).
    schedule: bool,
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
        settings.require(&[Requirement::StravaApp])?;
        let settings = Arc::new(settings);
        let path = settings.database_path.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(&path)).await??;
        let listener = TcpListener::bind(settings.listen_address())?;
        let port = listener.local_addr()?.port();

        let webhooks = web::Data::new(Webhooks::load(&store).await?);
        let http_client = client::http_client()?;
        let oauth = Arc::new(StravaOAuth::new(&settings, http_client.clone())?);
        let limits = Limits {
            quarter: settings.strava_rate_limit_15min,
            day: settings.strava_rate_limit_daily,
        };
        let budget = Budget::load(store.clone(), clock.clone(), limits).await?;
        let tokens = Arc::new(Tokens::new(store.clone(), oauth.clone(), clock.clone()));
        let strava = Arc::new(StravaClient::new(
            http_client,
            settings.strava_api_url.clone(),
            budget.clone(),
            tokens,
        ));
        let jobs = Arc::new(JobQueue::new(store.clone(), clock.clone()));
        let runner = JobRunner::new(store.clone(), strava.clone(), budget.clone(), jobs.clone());
        let services = Services {
            clock,
            budget,
            strava,
            oauth,
            jobs,
        };

        let state = web::Data::new(AppState::new(settings.clone(), store, services));
        let server_state = state.clone();
        let server_webhooks = webhooks.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(server_webhooks.clone())
                .wrap(http::cors(&server_state.settings))
                .wrap(from_fn(http::observe))
                .configure(http::configure(server_state.clone()))
        })
        .listen(listener)?
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_GRACE_SECS)
        .run();

        Ok(Self {
            port,
            server,
            state,
            webhooks,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            runner,
            schedule: true,
        })
    }

    /// Runs without the cron schedule (the daily gap-fill and the planning of
    /// reconciliation and enrichment), which fires on the wall clock: tests
    /// that count Strava calls start those passes themselves instead.
    pub fn without_schedule(mut self) -> Self {
        self.schedule = false;
        self
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
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
            state,
            webhooks,
            shutdown,
            tasks,
            runner,
            schedule,
            ..
        } = self;
        if schedule {
            scheduler::start(&state, shutdown.clone(), &tasks).await?;
        }
        tasks.spawn(webhook::worker::run(state, webhooks, shutdown.clone()));
        tasks.spawn(runner.run(shutdown.clone(), tasks.clone()));
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
        server_task.await??;
        tracing::info!("stopped");
        Ok(())
    }
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
