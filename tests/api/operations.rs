//! Health, readiness, metrics access and start-up configuration errors.

use strava_sync::startup::Application;

use crate::helpers::{test_settings, TestApp};

#[tokio::test]
async fn healthz_and_readyz_answer() {
    let app = TestApp::spawn().await;
    let health = app.healthz().await;
    assert_eq!(health.status(), 200);
    assert_eq!(
        health.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"status": "ok"})
    );
    assert_eq!(app.readyz().await.status(), 200);
}

#[tokio::test]
async fn metrics_need_the_admin_token() {
    let app = TestApp::spawn().await;
    assert_eq!(app.get("/metrics").await.status(), 401);
    assert_eq!(app.get_as("wrong", "/metrics").await.status(), 401);
    // One request has been observed by now, so the latency histogram exists.
    let body = app.metrics().await.text().await.unwrap();
    assert!(body.contains("http_request_duration_seconds"), "{body}");
}

#[tokio::test]
async fn metrics_are_absent_without_an_admin_token() {
    let app = TestApp::spawn_with(&[("ADMIN_TOKEN", "")]).await;
    assert_eq!(app.metrics().await.status(), 404);
}

#[tokio::test]
async fn unknown_routes_answer_a_fault() {
    let app = TestApp::spawn().await;
    let res = app.get("/nowhere").await;
    assert_eq!(res.status(), 404);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["message"], "Record Not Found");
    assert!(body["errors"].is_array());
}

#[test]
fn serve_refuses_to_start_naming_missing_settings() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strava-sync"))
        .arg("serve")
        .current_dir(dir.path())
        .env_clear()
        .env("DATABASE_PATH", dir.path().join("x.db"))
        .env("STRAVA_CLIENT_ID", "1")
        .env("PORT", "70000")
        .env("SYNC_SCHEDULE", "61 0 4 * * *")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("STRAVA_CLIENT_SECRET"), "{stderr}");
    assert!(stderr.contains("STRAVA_WEBHOOK_VERIFY_TOKEN"), "{stderr}");
    assert!(
        stderr.contains("PORT must be a whole number from 0 to 65535"),
        "{stderr}"
    );
    assert!(stderr.contains("SYNC_SCHEDULE"), "{stderr}");
    assert!(!stderr.contains("STRAVA_CLIENT_ID is"), "{stderr}");
    assert!(!dir.path().join("x.db").exists(), "nothing started");
}

/// Why `Application::build` refused to start.
async fn start_error(overrides: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(&dir, overrides);
    match Application::build(settings).await {
        Ok(_) => panic!("started with {overrides:?}"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn start_problems_name_their_setting_together_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("no-such-dir").join("x.db");
    let err = start_error(&[
        ("DATABASE_PATH", db.to_str().unwrap()),
        ("HOST", "no such host.invalid"),
    ])
    .await;
    assert!(err.contains("DATABASE_PATH"), "{err}");
    assert!(err.contains("HOST `no such host.invalid`"), "{err}");
    assert!(!db.parent().unwrap().exists());

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let err = start_error(&[("PORT", &port)]).await;
    assert!(
        err.contains(&format!("PORT {port} is already in use")),
        "{err}"
    );
    assert!(err.contains("PORT=0"), "{err}");

    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let inside_a_file = file.join("x.db");
    let err = start_error(&[("DATABASE_PATH", inside_a_file.to_str().unwrap())]).await;
    assert!(err.contains("DATABASE_PATH"), "{err}");
}

#[test]
fn migrate_applies_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strava-sync"))
        .arg("migrate")
        .current_dir(dir.path())
        .env_clear()
        .env("DATABASE_PATH", &db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conn = rusqlite::Connection::open(&db).unwrap();
    let tables: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'activities'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 1);
}
