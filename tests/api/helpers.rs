//! Spawns the real application on a loopback port with a fresh database,
//! calls its routes (one helper per endpoint, shared by every kind of test
//! app), and waits for background work.
//!
//! The database is a SQLite file in the test's directory, or, when
//! `TEST_DATABASE_URL` names a PostgreSQL database, a schema of its own in
//! it: `.ci/run` runs the suite once each way.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::future::Future;
use std::ops::Deref;
use std::path::Path;
use std::time::Duration;

use serde_json::value::RawValue;
use strava_sync::config::{Database, Settings};
use strava_sync::startup::{Application, ShutdownHandle};
use strava_sync::store::{activities, api_tokens, athletes, Store};
use tokio::time::Instant;

pub const ADMIN_TOKEN: &str = "test-admin-token";
/// The `TOKEN_ENCRYPTION_KEY` test apps run with.
pub const TOKEN_KEY: &str = "5d1b7c0e9f3a4b6c8d2e1f0a3b5c7d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8";

/// How long a test waits for background work (a backfill page, an applied
/// event, a started server): generous, because a loaded 2-core CI machine is
/// slow, while a check that passes returns at once.
pub const WAIT: Duration = Duration::from_secs(30);

/// What a polled check says: `true`, `Some(value)` or `Ok(value)` once its
/// condition holds. `Err` says what was seen instead, for the timeout message.
pub trait Outcome {
    type Value;
    fn into_result(self) -> Result<Self::Value, Option<String>>;
}

impl Outcome for bool {
    type Value = ();
    fn into_result(self) -> Result<(), Option<String>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn into_result(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T> Outcome for Result<T, String> {
    type Value = T;
    fn into_result(self) -> Result<T, Option<String>> {
        self.map_err(Some)
    }
}

/// Runs `check` until it holds, and returns what it found; fails the test
/// naming `what` (and what the last check saw, if it says) once `timeout` of
/// real time has passed.
pub async fn eventually<F, Fut>(
    what: &str,
    timeout: Duration,
    check: F,
) -> <Fut::Output as Outcome>::Value
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Outcome,
{
    match poll(timeout, check).await {
        Ok(value) => value,
        Err(Some(last)) => panic!("timed out after {timeout:?} waiting for: {what} ({last})"),
        Err(None) => panic!("timed out after {timeout:?} waiting for: {what}"),
    }
}

/// As [`eventually`], for a condition that may never hold: `None` once
/// `timeout` has passed.
pub async fn within<F, Fut>(timeout: Duration, check: F) -> Option<<Fut::Output as Outcome>::Value>
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Outcome,
{
    poll(timeout, check).await.ok()
}

/// The one polling loop. Checks at once, then at intervals that start short
/// (a condition about to hold costs little latency) and grow to 100 ms (a
/// long wait does not take the CPU from the work it waits for); checks once
/// more at the deadline.
async fn poll<F, Fut>(
    timeout: Duration,
    mut check: F,
) -> Result<<Fut::Output as Outcome>::Value, Option<String>>
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Outcome,
{
    let deadline = Instant::now() + timeout;
    let mut interval = Duration::from_millis(10);
    loop {
        let last = match check().await.into_result() {
            Ok(value) => return Ok(value),
            Err(last) => last,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(last);
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
        interval = (interval * 2).min(Duration::from_millis(100));
    }
}

/// A running service as a client sees it: its address, a client, and one
/// helper per route the tests call, grouped as `src/http` groups them. Each
/// returns the response, for the test to check its status, headers and
/// body. Tests that send what no client should (wrong methods, hostile
/// headers, oversized bodies) build their requests from `client` and `url`.
pub struct ApiClient {
    pub address: String,
    /// Never follows redirects, so each hop of the OAuth dance can be checked.
    pub client: reqwest::Client,
    /// What the admin helpers present as the admin token.
    pub admin_token: String,
}

impl ApiClient {
    pub fn new(address: impl Into<String>, admin_token: impl Into<String>) -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self {
            address: address.into(),
            client,
            admin_token: admin_token.into(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// `path` with `?query` appended unless `query` is empty.
    fn with_query(path: &str, query: &str) -> String {
        if query.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{query}")
        }
    }

    // Any route, for tests that go through several.

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn get_as(&self, token: &str, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str) -> reqwest::Response {
        self.client.post(self.url(path)).send().await.unwrap()
    }

    pub async fn post_as(&self, token: &str, path: &str) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    // The read API (`src/http/read_api.rs`), with an athlete's API token.

    /// `GET /api/v3/athlete`.
    pub async fn get_athlete(&self, token: &str) -> reqwest::Response {
        self.get_as(token, "/api/v3/athlete").await
    }

    /// `GET /api/v3/athlete/activities`, `query` as written (without `?`).
    pub async fn list_activities(&self, token: &str, query: &str) -> reqwest::Response {
        let path = Self::with_query("/api/v3/athlete/activities", query);
        self.get_as(token, &path).await
    }

    /// `GET /api/v3/activities/{id}`.
    pub async fn get_activity(&self, token: &str, id: impl Display) -> reqwest::Response {
        self.get_as(token, &format!("/api/v3/activities/{id}"))
            .await
    }

    /// `GET /api/v3/athletes/{id}/stats`.
    pub async fn get_stats(&self, token: &str, athlete_id: impl Display) -> reqwest::Response {
        self.get_as(token, &format!("/api/v3/athletes/{athlete_id}/stats"))
            .await
    }

    // The sync API (`src/http/sync_api.rs`).

    /// `GET /api/sync`: the athlete's sync status.
    pub async fn sync_status(&self, token: &str) -> reqwest::Response {
        self.get_as(token, "/api/sync").await
    }

    /// `POST /api/sync`: a manual refresh.
    pub async fn request_sync(&self, token: &str) -> reqwest::Response {
        self.post_as(token, "/api/sync").await
    }

    /// `GET /api/sync/jobs/{id}`.
    pub async fn sync_job(&self, token: &str, id: impl Display) -> reqwest::Response {
        self.get_as(token, &format!("/api/sync/jobs/{id}")).await
    }

    // Connecting (`src/http/connect.rs`).

    /// `GET /auth/strava`: the redirect to Strava's authorize page.
    pub async fn connect_start(&self) -> reqwest::Response {
        self.get("/auth/strava").await
    }

    /// `GET /auth/strava/callback?{query}`, as Strava's redirect back.
    pub async fn connect_callback(&self, query: &str) -> reqwest::Response {
        self.get(&Self::with_query("/auth/strava/callback", query))
            .await
    }

    /// `POST /auth/disconnect`.
    pub async fn disconnect(&self, token: &str) -> reqwest::Response {
        self.post_as(token, "/auth/disconnect").await
    }

    // Operators (`src/http/admin.rs`, `sync_api.rs`), with the admin token.

    /// `GET /admin/budget`.
    pub async fn admin_budget(&self) -> reqwest::Response {
        self.get_as(&self.admin_token, "/admin/budget").await
    }

    /// `GET /admin/athletes`.
    pub async fn admin_athletes(&self) -> reqwest::Response {
        self.get_as(&self.admin_token, "/admin/athletes").await
    }

    /// `PATCH /admin/athletes/{id}` with `body` as JSON (`{"tier": ...}`).
    pub async fn admin_patch_athlete(
        &self,
        id: impl Display,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.client
            .patch(self.url(&format!("/admin/athletes/{id}")))
            .bearer_auth(&self.admin_token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// `POST /admin/sync/run`: a gap-fill pass now.
    pub async fn admin_sync_run(&self) -> reqwest::Response {
        self.post_as(&self.admin_token, "/admin/sync/run").await
    }

    /// `POST /admin/pause`.
    pub async fn admin_pause(&self) -> reqwest::Response {
        self.post_as(&self.admin_token, "/admin/pause").await
    }

    /// `POST /admin/resume`.
    pub async fn admin_resume(&self) -> reqwest::Response {
        self.post_as(&self.admin_token, "/admin/resume").await
    }

    // Webhooks (`src/http/webhook.rs`, `webhook_admin.rs`).

    /// `GET /webhook/{secret}?{query}`: the subscription handshake.
    pub async fn webhook_handshake(&self, secret: &str, query: &str) -> reqwest::Response {
        self.get(&Self::with_query(&format!("/webhook/{secret}"), query))
            .await
    }

    /// `POST /webhook/{secret}` with `body` as JSON, as Strava delivers an event.
    pub async fn post_webhook(
        &self,
        secret: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/webhook/{secret}")))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// `GET /admin/webhooks`: the inbox overview.
    pub async fn admin_webhooks(&self) -> reqwest::Response {
        self.get_as(&self.admin_token, "/admin/webhooks").await
    }

    /// `POST /admin/webhooks/replay`.
    pub async fn admin_webhooks_replay(&self) -> reqwest::Response {
        self.post_as(&self.admin_token, "/admin/webhooks/replay")
            .await
    }

    // The change feed (`src/http/changes.rs`) and its deliveries
    // (`delivery_admin.rs`).

    /// `GET /api/v3/athlete/changes?{query}` as JSON.
    pub async fn changes(&self, token: &str, query: &str) -> reqwest::Response {
        self.get_as(token, &Self::with_query("/api/v3/athlete/changes", query))
            .await
    }

    /// The change feed as Server-Sent Events, resuming after `last_event_id`.
    pub async fn changes_stream(
        &self,
        token: &str,
        query: &str,
        last_event_id: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .client
            .get(self.url(&Self::with_query("/api/v3/athlete/changes", query)))
            .bearer_auth(token)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        req.send().await.unwrap()
    }

    /// `GET /admin/deliveries`.
    pub async fn admin_deliveries(&self) -> reqwest::Response {
        self.get_as(&self.admin_token, "/admin/deliveries").await
    }

    /// `POST /admin/deliveries/replay`.
    pub async fn admin_deliveries_replay(&self) -> reqwest::Response {
        self.post_as(&self.admin_token, "/admin/deliveries/replay")
            .await
    }

    // Operations (`src/http/metrics.rs`, `health.rs`).

    /// `GET /metrics`, with the admin token.
    pub async fn metrics(&self) -> reqwest::Response {
        self.get_as(&self.admin_token, "/metrics").await
    }

    /// `GET /healthz`.
    pub async fn healthz(&self) -> reqwest::Response {
        self.get("/healthz").await
    }

    /// `GET /readyz`.
    pub async fn readyz(&self) -> reqwest::Response {
        self.get("/readyz").await
    }
}

pub struct TestApp {
    /// The routes; `TestApp` derefs to it, so tests call `app.get_athlete(..)`.
    pub api: ApiClient,
    /// The app's own store, for seeding and checking rows.
    pub store: Store,
    shutdown: ShutdownHandle,
    dir: tempfile::TempDir,
}

impl Deref for TestApp {
    type Target = ApiClient;
    fn deref(&self) -> &ApiClient {
        &self.api
    }
}

/// The PostgreSQL database the suite runs on, if it does.
fn postgres_url() -> Option<String> {
    std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
}

/// Whether this run keeps its data in PostgreSQL; tests of SQLite's file
/// (its permissions, its pages, a full disk) have nothing to check there.
pub fn on_postgres() -> bool {
    postgres_url().is_some()
}

/// The database a test's app runs on, named `name` within the test's
/// directory: the same one each time it is asked for, so a restarted app
/// finds its data. On PostgreSQL, a schema named after the directory,
/// created on first use; the schemas of earlier runs are dropped once per
/// run, before the first is created.
pub fn test_database(dir: &tempfile::TempDir, name: &str) -> Database {
    let Some(url) = postgres_url() else {
        return Database::Sqlite(dir.path().join(name));
    };
    static CLEARED: std::sync::Once = std::sync::Once::new();
    // The directory's random name makes the schema's unique.
    let tag = format!(
        "{}_{name}",
        dir.path().file_name().unwrap().to_string_lossy()
    );
    let schema: String = format!("{SCHEMA_PREFIX}{tag}")
        .chars()
        .filter_map(|c| match c {
            'a'..='z' | '0'..='9' | '_' => Some(c),
            'A'..='Z' => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect();
    let admin = url.clone();
    let create = schema.clone();
    // The blocking client must not run on the test's async threads.
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&admin, postgres::NoTls)
            .expect("TEST_DATABASE_URL accepts connections");
        CLEARED.call_once(|| {
            let stale: Vec<String> = client
                .query(
                    "SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)",
                    &[&SCHEMA_PREFIX],
                )
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            for schema in stale {
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .unwrap();
            }
        });
        client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {create}"))
            .unwrap();
    })
    .join()
    .unwrap();
    let separator = if url.contains('?') { '&' } else { '?' };
    Database::Postgres(format!("{url}{separator}options=-csearch_path%3D{schema}"))
}

const SCHEMA_PREFIX: &str = "strava_sync_test_";

/// Opens `database` as its app does (off the async threads: PostgreSQL's
/// client blocks).
pub async fn open_store(database: &Database) -> Store {
    let database = database.clone();
    tokio::task::spawn_blocking(move || Store::connect(&database))
        .await
        .unwrap()
        .unwrap()
}

/// Settings for a test app; `overrides` win over the test defaults.
pub fn test_settings(dir: &tempfile::TempDir, overrides: &[(&str, &str)]) -> Settings {
    let (key, database) = test_database(dir, "test.db").env();
    let mut env: BTreeMap<String, String> = [
        (key, database.as_str()),
        ("PORT", "0"),
        ("STRAVA_CLIENT_ID", "1234"),
        ("STRAVA_CLIENT_SECRET", "test-client-secret"),
        ("STRAVA_WEBHOOK_VERIFY_TOKEN", "test-verify-token"),
        ("TOKEN_ENCRYPTION_KEY", TOKEN_KEY),
        ("ADMIN_TOKEN", ADMIN_TOKEN),
        ("API_RATE_LIMIT", "0"),
        ("WEBHOOK_RATE_LIMIT", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in overrides {
        env.insert(k.to_string(), v.to_string());
    }
    Settings::from_sources(None, |k| env.get(k).cloned()).expect("test settings are valid")
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    pub async fn spawn_with(overrides: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let settings = test_settings(&dir, overrides);
        let app = Application::build(settings).await.expect("app builds");
        let port = app.port();
        let shutdown = app.shutdown_handle();
        let store = app.services().store.clone();
        tokio::spawn(app.run());
        TestApp {
            // The admin token tests present, also to an app configured
            // without one.
            api: ApiClient::new(format!("http://127.0.0.1:{port}"), ADMIN_TOKEN),
            store,
            shutdown,
            dir,
        }
    }

    /// The app's database file (on SQLite).
    pub fn database_path(&self) -> std::path::PathBuf {
        self.dir.path().join("test.db")
    }
}

/// Wall-clock epoch seconds, for tests whose app runs on the system clock.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The text of a file in `fixtures/`.
pub fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fixture holding an array of activities, each kept as its exact text.
pub fn fixture_activities(name: &str) -> Vec<Box<RawValue>> {
    serde_json::from_str(&fixture(name)).unwrap()
}

/// Seeding through the storage layer, for tests that need rows without a
/// Strava behind them (the sync paths store through the same functions).
impl TestApp {
    /// Stores the athlete profile of a fixture and issues them an API token.
    pub async fn seed_athlete(&self, profile_fixture: &str) -> (i64, String) {
        let profile: serde_json::Value = serde_json::from_str(&fixture(profile_fixture)).unwrap();
        self.store
            .write(move |tx| {
                let id = athletes::upsert(tx, &profile, "read,activity:read_all", now())?;
                Ok((id, api_tokens::issue(tx, id, now())?))
            })
            .await
            .unwrap()
    }

    /// Stores SummaryActivity records for an athlete, one transaction per page.
    pub async fn seed_summaries(&self, athlete_id: i64, page: Vec<Box<RawValue>>) {
        self.store
            .write(move |tx| activities::upsert_summaries(tx, athlete_id, &page, now()))
            .await
            .unwrap();
    }

    /// Stores one DetailedActivity for an athlete.
    pub async fn seed_detail(&self, athlete_id: i64, detail: Box<RawValue>) {
        self.store
            .write(move |tx| activities::upsert_detail(tx, athlete_id, &detail, now()))
            .await
            .unwrap();
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.shutdown();
    }
}
