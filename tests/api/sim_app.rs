//! The service wired to the Strava simulator, both on one clock: real time
//! plus an offset the test moves forward, so budget windows and token expiry
//! arrive without sleeping. Athletes connect through the real OAuth flow.

use std::ops::Deref;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde_json::Value;
use strava_sync::http::Services;
use strava_sync::model::clock::Clock;
use strava_sync::simulator::{SimConfig, SimHandle, Simulator};
use strava_sync::startup::{Application, ShutdownHandle};
use strava_sync::store::budget as ledger;
use strava_sync::sync::runner::JobRunner;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::helpers::{test_database, test_settings, ApiClient, ADMIN_TOKEN};

/// The service's clock in these tests: the simulator's time (real time plus
/// the same offset), waking sleepers whenever the offset moves.
#[derive(Debug)]
pub struct SharedClock {
    offset_ms: Arc<AtomicI64>,
    moved: watch::Sender<()>,
}

impl SharedClock {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            offset_ms: Arc::default(),
            moved: watch::Sender::new(()),
        })
    }

    fn advance(&self, by: Duration) {
        self.offset_ms
            .fetch_add(by.as_millis() as i64, Ordering::SeqCst);
        self.moved.send_replace(());
    }
}

fn shifted(offset_ms: &AtomicI64) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::milliseconds(offset_ms.load(Ordering::SeqCst))
}

impl Clock for SharedClock {
    fn now(&self) -> DateTime<Utc> {
        shifted(&self.offset_ms)
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> BoxFuture<'static, ()> {
        let mut moved = self.moved.subscribe();
        let offset = self.offset_ms.clone();
        Box::pin(async move {
            while let Ok(wait) = (deadline - shifted(&offset)).to_std() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    changed = moved.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
            }
        })
    }
}

/// A running service instance.
struct Running {
    api: ApiClient,
    state: web::Data<Services>,
    runner: Arc<JobRunner>,
    shutdown: ShutdownHandle,
    task: JoinHandle<anyhow::Result<()>>,
}

pub struct SimApp {
    pub sim: SimHandle,
    pub clock: Arc<SharedClock>,
    overrides: Vec<(String, String)>,
    /// Jobs run only when the test says ([`SimApp::run_jobs_until_idle`]).
    jobs_by_hand: bool,
    running: Option<Running>,
    dir: tempfile::TempDir,
}

impl SimApp {
    /// Starts the simulator and the service, with both clocks moved to one
    /// second into the next quarter hour so a test has a whole window of
    /// real time before the next boundary.
    pub async fn start(config: SimConfig, overrides: &[(&str, &str)]) -> Self {
        Self::start_with(config, overrides, false).await
    }

    /// [`SimApp::start`] with no job runner in the background: queued work
    /// runs, one job at a time in the order the queue serves it, only in
    /// [`SimApp::run_jobs_until_idle`].
    pub async fn start_with_jobs_by_hand(config: SimConfig, overrides: &[(&str, &str)]) -> Self {
        Self::start_with(config, overrides, true).await
    }

    async fn start_with(config: SimConfig, overrides: &[(&str, &str)], jobs_by_hand: bool) -> Self {
        let sim = Simulator::start(config).await.expect("simulator starts");
        let clock = SharedClock::new();
        let mut app = Self {
            overrides: overrides
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            sim,
            clock,
            jobs_by_hand,
            running: None,
            dir: tempfile::tempdir().unwrap(),
        };
        let into_quarter = 900 - app.sim.now().timestamp().rem_euclid(900) + 1;
        app.advance(into_quarter as u64);
        app.running = Some(app.launch().await);
        app
    }

    async fn launch(&self) -> Running {
        let (api, oauth) = (self.sim.api_url(), self.sim.oauth_url());
        let mut overrides: Vec<(&str, &str)> = vec![
            ("STRAVA_API_URL", api.as_str()),
            ("STRAVA_OAUTH_URL", oauth.as_str()),
        ];
        overrides.extend(self.overrides.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let settings = test_settings(&self.dir, &overrides);
        // The tests start gap-fill, reconciliation and enrichment themselves:
        // a cron firing on the wall clock mid-test would add calls they count.
        let app = Application::build_with_clock(settings, self.clock.clone())
            .await
            .expect("app builds")
            .without_schedule();
        let app = if self.jobs_by_hand {
            app.with_jobs_run_by_hand()
        } else {
            app
        };
        let running = Running {
            api: ApiClient::new(format!("http://127.0.0.1:{}", app.port()), ADMIN_TOKEN),
            state: app.services(),
            runner: app.runner(),
            shutdown: app.shutdown_handle(),
            task: tokio::spawn(app.run()),
        };
        running
    }

    fn running(&self) -> &Running {
        self.running.as_ref().expect("the service is running")
    }

    /// Stops the service (waiting for it to finish) and starts it again on
    /// the same database.
    pub async fn restart(&mut self) {
        let old = self.running.take().expect("the service is running");
        // Its client's idle keep-alive connection would hold up the
        // graceful stop until the server timed it out.
        drop(old.api);
        old.shutdown.shutdown();
        old.task.await.unwrap().unwrap();
        self.running = Some(self.launch().await);
    }

    /// Runs every job the queue and the budget allow now, until none is
    /// left that may run: what is still queued afterwards is waiting.
    pub async fn run_jobs_until_idle(&self) -> usize {
        self.running().runner.run_until_idle().await.unwrap()
    }

    pub fn state(&self) -> &web::Data<Services> {
        &self.running().state
    }

    /// Moves the simulator's and the service's clocks together.
    pub fn advance(&self, secs: u64) {
        let by = Duration::from_secs(secs);
        self.sim.advance(by);
        self.clock.advance(by);
    }

    /// Seconds until the current quarter hour ends.
    pub fn secs_to_next_quarter(&self) -> u64 {
        (900 - self.sim.now().timestamp().rem_euclid(900)) as u64
    }

    /// The database the service runs on.
    pub fn database(&self) -> strava_sync::config::Database {
        test_database(&self.dir, "test.db")
    }

    /// The OAuth dance as a browser does it, up to Strava's redirect back:
    /// our `/auth/strava`, then Strava's authorize page (as `athlete_id`).
    /// Returns the path and query of our callback that Strava redirected to.
    pub async fn authorize(&self, athlete_id: u64) -> String {
        let res = self.connect_start().await;
        assert_eq!(res.status(), 302);
        let authorize = res.headers()["location"].to_str().unwrap().to_string();
        self.sim.next_login(athlete_id).unwrap();
        let res = self.client.get(&authorize).send().await.unwrap();
        assert_eq!(res.status(), 302, "Strava's authorize redirects back");
        let back = reqwest::Url::parse(res.headers()["location"].to_str().unwrap()).unwrap();
        format!("{}?{}", back.path(), back.query().unwrap_or(""))
    }

    /// Follows Strava's redirect to our callback, wherever it points.
    pub async fn callback(&self, path: &str) -> reqwest::Response {
        self.get(path).await
    }

    /// The whole flow; returns the callback's response.
    pub async fn connect_response(&self, athlete_id: u64) -> reqwest::Response {
        let callback = self.authorize(athlete_id).await;
        self.callback(&callback).await
    }

    /// Connects an athlete and returns their API token.
    pub async fn connect(&self, athlete_id: u64) -> String {
        let res = self.connect_response(athlete_id).await;
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        body["token"].as_str().unwrap().to_string()
    }

    /// `/admin/budget` as JSON.
    pub async fn budget(&self) -> Value {
        ok_json(self.admin_budget().await, "/admin/budget").await
    }

    /// `/admin/athletes` as JSON.
    pub async fn athletes(&self) -> Value {
        ok_json(self.admin_athletes().await, "/admin/athletes").await
    }

    /// The athlete as `/admin/athletes` shows them.
    pub async fn athlete(&self, athlete_id: u64) -> Value {
        let all = self.athletes().await;
        all["athletes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == athlete_id)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// API calls the simulator received (OAuth calls are not API calls).
    pub fn api_calls(&self) -> Vec<strava_sync::simulator::CallRecord> {
        self.sim
            .call_records()
            .into_iter()
            .filter(|c| c.endpoint.contains(" /api/v3/"))
            .collect()
    }

    /// OAuth token calls (exchanges and refreshes) for one athlete.
    pub fn token_calls(&self, athlete_id: u64) -> usize {
        self.sim
            .call_records()
            .iter()
            .filter(|c| c.endpoint == "POST /oauth/token" && c.athlete_id == Some(athlete_id))
            .count()
    }

    pub async fn ledger_count(&self) -> i64 {
        self.state().store.read(ledger::count_calls).await.unwrap()
    }

    /// The largest number of API calls the simulator saw in one quarter hour.
    pub fn busiest_quarter(&self) -> usize {
        let mut per_window = std::collections::BTreeMap::<i64, usize>::new();
        for call in self.api_calls() {
            *per_window
                .entry(call.at.timestamp().div_euclid(900))
                .or_default() += 1;
        }
        per_window.into_values().max().unwrap_or(0)
    }
}

/// The routes of the running instance (a restart moves them to a new port).
impl Deref for SimApp {
    type Target = ApiClient;
    fn deref(&self) -> &ApiClient {
        &self.running().api
    }
}

async fn ok_json(res: reqwest::Response, path: &str) -> Value {
    assert_eq!(res.status(), 200, "{path}");
    res.json().await.unwrap()
}

impl Drop for SimApp {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.shutdown.shutdown();
        }
    }
}
