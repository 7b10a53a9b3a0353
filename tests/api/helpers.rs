//! Spawns the real application on a loopback port with a fresh database file.

use std::collections::BTreeMap;

use strava_sync::config::Settings;
use strava_sync::startup::{Application, ShutdownHandle};
use strava_sync::store::Store;

pub const ADMIN_TOKEN: &str = "test-admin-token";

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    /// The app's own store, for seeding and asserting on rows.
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
        let store = app.state().store.clone();
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

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.shutdown();
    }
}
