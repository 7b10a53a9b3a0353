//! Spawns the real application on a loopback port with a fresh database file.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::value::RawValue;
use strava_sync::config::Settings;
use strava_sync::startup::{Application, ShutdownHandle};
use strava_sync::store::{activities, api_tokens, athletes, Store};

pub const ADMIN_TOKEN: &str = "test-admin-token";

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    /// The app's own store, for seeding and checking rows.
    pub store: Store,
    shutdown: ShutdownHandle,
    _dir: tempfile::TempDir,
}

/// Settings for a test app; `overrides` win over the test defaults.
pub fn test_settings(dir: &tempfile::TempDir, overrides: &[(&str, &str)]) -> Settings {
    let mut env: BTreeMap<String, String> = [
        (
            "DATABASE_PATH",
            dir.path().join("test.db").to_str().unwrap(),
        ),
        ("PORT", "0"),
        ("STRAVA_CLIENT_ID", "1234"),
        ("STRAVA_CLIENT_SECRET", "test-client-secret"),
        ("STRAVA_WEBHOOK_VERIFY_TOKEN", "test-verify-token"),
        ("ADMIN_TOKEN", ADMIN_TOKEN),
        ("API_RATE_LIMIT", "0"),
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
            address: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
            store,
            shutdown,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

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
