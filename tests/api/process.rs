//! The service binary as a child process on a loopback port, for tests
//! that kill it (SIGKILL) or run several instances on one database.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use strava_sync::config::Database;

use crate::helpers::{eventually, ApiClient, TOKEN_KEY, WAIT};

/// A Strava API address where nothing listens: nothing here may call Strava.
const NOWHERE: &str = "http://127.0.0.1:9";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The service binary on a loopback port.
pub struct Server {
    child: Arc<Mutex<Child>>,
    /// Its routes. The admin token is unique to this process, so an answer
    /// proves it came from our child and not from another test's service
    /// that took the port.
    pub api: ApiClient,
}

impl Server {
    /// Starts the binary on `port` with `env` over the defaults below; fails
    /// the test if it does not come up.
    pub async fn start(db: &Database, port: u16, env: &[(&str, String)]) -> Self {
        Self::try_start(db, port, env)
            .await
            .unwrap_or_else(|| panic!("the service exited at start (port {port} taken?)"))
    }

    /// Starts the binary on a free port, trying another if the one picked
    /// was taken between choosing it and the child binding it.
    pub async fn start_on_a_free_port(db: &Database, env: &[(&str, String)]) -> Self {
        for _ in 0..3 {
            if let Some(server) = Self::try_start(db, free_port(), env).await {
                return server;
            }
        }
        panic!("the service did not start on any of three free ports");
    }

    /// None when the child exits before it answers (it could not bind).
    async fn try_start(db: &Database, port: u16, env: &[(&str, String)]) -> Option<Self> {
        let admin_token = strava_sync::store::api_tokens::random_token();
        let (key, database) = db.env();
        let mut command = Command::new(env!("CARGO_BIN_EXE_strava-sync"));
        command
            .arg("serve")
            .current_dir(std::env::temp_dir())
            .env_clear()
            .env(key, database)
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("PUBLIC_URL", format!("http://127.0.0.1:{port}"))
            .env("STRAVA_API_URL", NOWHERE)
            .env("STRAVA_OAUTH_URL", NOWHERE)
            .env("STRAVA_CLIENT_ID", "1234")
            .env("STRAVA_CLIENT_SECRET", "test-client-secret")
            .env("STRAVA_WEBHOOK_VERIFY_TOKEN", "test-verify-token")
            .env("TOKEN_ENCRYPTION_KEY", TOKEN_KEY)
            .env("ADMIN_TOKEN", &admin_token)
            // Bursts from one address are the point here, not the limit.
            .env("WEBHOOK_RATE_LIMIT", "0")
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null());
        let child = command.spawn().unwrap();
        let server = Server {
            child: Arc::new(Mutex::new(child)),
            api: ApiClient::new(format!("http://127.0.0.1:{port}"), admin_token),
        };
        // Until it listens the request fails, so it is sent by hand rather
        // than with `admin_webhooks`, which expects an answer.
        let up = eventually("the service to start", WAIT, || async {
            let api = &server.api;
            let ours = api
                .client
                .get(api.url("/admin/webhooks"))
                .bearer_auth(&api.admin_token)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ours {
                return Some(true);
            }
            let exited = server.child.lock().unwrap().try_wait().unwrap().is_some();
            exited.then_some(false)
        })
        .await;
        up.then_some(server)
    }

    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Waits until the inbox has nothing pending.
    pub async fn drained(&self) {
        eventually("the inbox to drain", Duration::from_secs(60), || async {
            let overview: Value = self.api.admin_webhooks().await.json().await.unwrap();
            if overview["counts"]["pending"] == 0 {
                assert_eq!(overview["counts"]["failed"], 0, "{overview}");
                return Ok(());
            }
            Err(format!("inbox not drained: {overview}"))
        })
        .await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
