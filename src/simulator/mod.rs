//! A Strava simulator, faithful to `strava-api.md` quirks included: OAuth,
//! the activities API, rate limits counted as Strava counts them, push
//! subscriptions with webhook delivery and retries, fault injection, and a
//! control interface. Tests start it in-process on a loopback port; the
//! `strava-sync simulator` command runs it alone for frontend development.
//!
//! ```no_run
//! # async fn demo() {
//! use strava_sync::simulator::{SimConfig, Simulator};
//! let sim = Simulator::start(SimConfig::default()).await.unwrap();
//! // Point the service at it: STRAVA_API_URL / STRAVA_OAUTH_URL.
//! let (api, oauth) = (sim.api_url(), sim.oauth_url());
//! let athlete = sim.athlete_ids()[0];
//! let truth = sim.activities(athlete).unwrap();
//! # }
//! ```
//!
//! All state lives in memory behind one mutex (held only for bookkeeping,
//! never across an await); the [`SimHandle`] used by tests and the `/_sim`
//! HTTP endpoints call the same [`Simulator`] methods.

mod api;
mod cli;
mod clock;
mod control;
mod data;
mod oauth;
mod rate;
mod webhook;

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::ops::Deref;
use std::sync::{Mutex, MutexGuard};

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpResponse, HttpServer, ResponseError};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use cli::{run_standalone, SimulatorArgs};
pub use control::{ActivityUpdate, CallRecord, CallStats, Faults, NewActivity, SimError};
pub use rate::{Limits, Usage, WindowUsage};
pub use webhook::{DeliveryOutcome, DeliveryRecord, Push};

use clock::SimClock;
use data::{Activity, Athlete};
use oauth::Tokens;
use rate::RateCounter;

/// The largest request body the simulator reads.
const MAX_BODY_BYTES: usize = 16 * 1024;

/// What the simulator starts with. `Default` matches the test app's
/// `STRAVA_CLIENT_ID`/`STRAVA_CLIENT_SECRET` and Strava's default limits.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// 0 picks a free port.
    pub port: u16,
    /// Same seed, same athletes and histories (relative to the start time).
    pub seed: u64,
    pub athletes: usize,
    pub activities_per_athlete: usize,
    pub client_id: u64,
    pub client_secret: String,
    /// The runtime settings to start with; change them later with
    /// [`Simulator::update_settings`] or `PATCH /_sim/settings`.
    pub settings: SimSettings,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            port: 0,
            seed: 42,
            athletes: 3,
            activities_per_athlete: 100,
            client_id: 1234,
            client_secret: "test-client-secret".into(),
            settings: SimSettings::default(),
        }
    }
}

/// Behaviour that tests and the demo change while the simulator runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimSettings {
    pub limits: Limits,
    /// Access-token lifetime; Strava's is 6 hours.
    pub access_token_lifetime_secs: u64,
    /// How long a freshly created activity's detail answers 404.
    pub detail_not_found_secs: u64,
    pub oauth: OAuthMode,
    /// Wait between webhook delivery attempts (Strava: minutes).
    pub webhook_retry_ms: u64,
    /// Chance that an event's `subscription_id` is sent as a string.
    pub subscription_id_as_string_probability: f64,
}

impl Default for SimSettings {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            access_token_lifetime_secs: 6 * 3600,
            detail_not_found_secs: 0,
            oauth: OAuthMode::Approve,
            webhook_retry_ms: 60_000,
            subscription_id_as_string_probability: 0.0,
        }
    }
}

/// How `GET /oauth/authorize` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OAuthMode {
    /// Grant every requested scope.
    Approve,
    /// The athlete clicks "Cancel": `error=access_denied`.
    Deny,
    /// The athlete unticks scopes: grant only the requested ones listed here
    /// (comma-separated), e.g. `Grant("read".into())`.
    Grant(String),
}

/// The simulator: its clock, its state and its settings. Reach it through a
/// [`SimHandle`]; every control method is defined here.
pub struct Simulator {
    client_id: u64,
    client_secret: String,
    clock: SimClock,
    state: Mutex<State>,
    outbox: mpsc::UnboundedSender<webhook::Outgoing>,
    /// Events emitted whose delivery (with its retries) has not ended, so a
    /// test can wait for deliveries to settle instead of sleeping.
    in_flight: tokio::sync::watch::Sender<usize>,
    /// For the subscription handshake and webhook deliveries; no pooling, so
    /// it works from any runtime.
    http: reqwest::Client,
}

/// Everything the simulator remembers.
struct State {
    settings: SimSettings,
    rng: StdRng,
    athletes: BTreeMap<u64, Athlete>,
    activities: HashMap<u64, Activity>,
    /// The last id handed out; new activities get larger ones.
    last_activity_id: u64,
    tokens: Tokens,
    next_login: Option<u64>,
    rate: RateCounter,
    faults: Faults,
    calls: Vec<CallRecord>,
    subscription: Option<webhook::Subscription>,
    deliveries: Vec<DeliveryRecord>,
}

/// A running simulator. Derefs to [`Simulator`] for the control methods;
/// dropping it stops the server and pending webhook deliveries.
pub struct SimHandle {
    sim: web::Data<Simulator>,
    port: u16,
    server: ServerHandle,
    stop: CancellationToken,
}

impl Simulator {
    /// Generates the data and serves on 127.0.0.1 (`config.port`, 0 = any).
    /// Call from within a Tokio runtime: webhook delivery runs on it.
    pub async fn start(config: SimConfig) -> std::io::Result<SimHandle> {
        let (outbox, inbox) = mpsc::unbounded_channel();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .map_err(std::io::Error::other)?;
        let clock = SimClock::default();
        let state = State::generate(&config, clock.epoch());
        let sim = web::Data::new(Simulator {
            client_id: config.client_id,
            client_secret: config.client_secret,
            clock,
            state: Mutex::new(state),
            outbox,
            in_flight: tokio::sync::watch::Sender::new(0),
            http,
        });

        let listener = TcpListener::bind(("127.0.0.1", config.port))?;
        let port = listener.local_addr()?.port();
        let app_sim = sim.clone();
        let server = HttpServer::new(move || App::new().configure(routes(app_sim.clone())))
            .workers(2)
            .listen(listener)?
            .disable_signals()
            .shutdown_timeout(1)
            .run();
        let handle = server.handle();
        tokio::spawn(server);

        let stop = CancellationToken::new();
        tokio::spawn(webhook::deliver(sim.clone(), inbox, stop.clone()));
        Ok(SimHandle {
            sim,
            port,
            server: handle,
            stop,
        })
    }

    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    pub fn client_secret(&self) -> &str {
        &self.client_secret
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn valid_client(&self, client_id: Option<&str>) -> bool {
        client_id.is_some_and(|id| id.trim() == self.client_id.to_string())
    }
}

impl State {
    fn generate(config: &SimConfig, now: i64) -> Self {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let mut last_activity_id = data::FIRST_ACTIVITY_ID;
        let mut athletes = BTreeMap::new();
        let mut activities = HashMap::new();
        for index in 0..config.athletes {
            let (athlete, list) = data::generate_athlete(
                &mut rng,
                index,
                config.activities_per_athlete,
                now,
                &mut last_activity_id,
            );
            activities.extend(list.into_iter().map(|a| (a.id, a)));
            athletes.insert(athlete.id, athlete);
        }
        Self {
            settings: config.settings.clone(),
            rng,
            athletes,
            activities,
            last_activity_id,
            tokens: Tokens::default(),
            next_login: None,
            rate: RateCounter::default(),
            faults: Faults::default(),
            calls: Vec::new(),
            subscription: None,
            deliveries: Vec::new(),
        }
    }
}

impl SimHandle {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:{port}`
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// For `STRAVA_API_URL`: `{base}/api/v3`.
    pub fn api_url(&self) -> String {
        format!("{}/api/v3", self.base_url())
    }

    /// For `STRAVA_OAUTH_URL`: `{base}/oauth`.
    pub fn oauth_url(&self) -> String {
        format!("{}/oauth", self.base_url())
    }

    /// The control endpoints: `{base}/_sim`.
    pub fn control_url(&self) -> String {
        format!("{}/_sim", self.base_url())
    }

    /// The service settings that point it at this simulator, for
    /// `TestApp::spawn_with` or the demo: API and OAuth URLs, client id and
    /// secret.
    pub fn service_env(&self) -> [(&'static str, String); 4] {
        [
            ("STRAVA_API_URL", self.api_url()),
            ("STRAVA_OAUTH_URL", self.oauth_url()),
            ("STRAVA_CLIENT_ID", self.client_id.to_string()),
            ("STRAVA_CLIENT_SECRET", self.client_secret.clone()),
        ]
    }

    /// Waits until the server has stopped (dropping the handle stops it too).
    pub async fn stop(self) {
        self.stop.cancel();
        self.server.stop(false).await;
    }
}

impl Deref for SimHandle {
    type Target = Simulator;

    fn deref(&self) -> &Simulator {
        &self.sim
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.stop.cancel();
        // The stop command is sent at once; awaiting only waits for it.
        drop(self.server.stop(false));
    }
}

/// Strava's fault body with a status.
fn fault(
    status: StatusCode,
    message: &str,
    resource: &str,
    field: &str,
    code: &str,
) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({
        "message": message,
        "errors": [{"resource": resource, "field": field, "code": code}],
    }))
}

/// 400 for a malformed request, naming what was wrong.
fn bad_request(resource: &str, field: &str, code: &str) -> HttpResponse {
    fault(
        StatusCode::BAD_REQUEST,
        "Bad Request",
        resource,
        field,
        code,
    )
}

/// Extractor failures (bad query, form, JSON or path) as Strava faults.
fn extractor_error(err: impl ResponseError) -> actix_web::Error {
    let response = if err.status_code() == StatusCode::PAYLOAD_TOO_LARGE {
        fault(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Payload Too Large",
            "Request",
            "body",
            "too_large",
        )
    } else {
        bad_request("Request", &err.to_string(), "invalid")
    };
    actix_web::error::InternalError::from_response(err.to_string(), response).into()
}

fn routes(sim: web::Data<Simulator>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(sim)
            .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
            .app_data(
                web::JsonConfig::default()
                    .limit(MAX_BODY_BYTES)
                    .error_handler(|e, _| extractor_error(e)),
            )
            .app_data(
                web::FormConfig::default()
                    .limit(MAX_BODY_BYTES)
                    .error_handler(|e, _| extractor_error(e)),
            )
            .app_data(web::QueryConfig::default().error_handler(|e, _| extractor_error(e)))
            .app_data(web::PathConfig::default().error_handler(|e, _| extractor_error(e)))
            .service(web::scope("/oauth").configure(oauth::routes))
            .service(
                web::scope("/api/v3")
                    .wrap(actix_web::middleware::from_fn(api::meter))
                    .configure(api::routes)
                    .configure(webhook::routes),
            )
            .service(web::scope("/_sim").configure(control::routes))
            .default_service(web::to(|| async {
                fault(
                    StatusCode::NOT_FOUND,
                    "Record Not Found",
                    "Route",
                    "path",
                    "invalid",
                )
            }));
    }
}

/// Comma-separated scopes as granted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Scopes(Vec<String>);

impl Scopes {
    fn parse(s: &str) -> Self {
        Self(
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        )
    }

    fn has(&self, scope: &str) -> bool {
        self.0.iter().any(|s| s == scope)
    }

    fn can_list_activities(&self) -> bool {
        self.has("activity:read") || self.has("activity:read_all")
    }

    fn sees_private(&self) -> bool {
        self.has("activity:read_all")
    }

    fn joined(&self) -> String {
        self.0.join(",")
    }
}
