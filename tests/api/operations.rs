//! Health, readiness, metrics access and start-up configuration errors.

use std::path::Path;
use std::process::Output;

use strava_sync::startup::Application;

use crate::helpers::{on_postgres, open_store, test_database, test_settings, TestApp};
use strava_sync::config::Database;

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

/// Runs the binary's `command` in `dir` with only `env` set.
fn strava_sync(command: &str, dir: &Path, env: &[(&str, &str)]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_strava-sync"))
        .arg(command)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn serve_refuses_to_start_naming_missing_settings() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("x.db");
    let out = strava_sync(
        "serve",
        dir.path(),
        &[
            ("DATABASE_PATH", database.to_str().unwrap()),
            ("STRAVA_CLIENT_ID", "1"),
            ("PORT", "70000"),
            ("SYNC_SCHEDULE", "61 0 4 * * *"),
        ],
    );
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

/// What only the machine can tell (a database file that cannot be made, a
/// port in use) is named in the same message as the settings' own mistakes.
#[test]
fn serve_names_setting_database_and_port_problems_in_one_message() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |env: &[(&str, &str)]| {
        let out = strava_sync("serve", dir.path(), env);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let unmakeable = dir.path().join("no-such-dir").join("x.db");
    let stderr = serve(&[
        ("PORT", "abc"),
        ("DATABASE_PATH", unmakeable.to_str().unwrap()),
    ]);
    for named in ["PORT", "STRAVA_CLIENT_ID", "DATABASE_PATH"] {
        assert!(stderr.contains(&format!("- {named}")), "{named}: {stderr}");
    }
    assert_eq!(
        stderr.matches("invalid configuration").count(),
        1,
        "{stderr}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let stderr = serve(&[("PORT", &port), ("STRAVA_CLIENT_ID", "1")]);
    assert!(
        stderr.contains(&format!("PORT {port} is already in use")),
        "{stderr}"
    );
    assert!(stderr.contains("STRAVA_CLIENT_SECRET"), "{stderr}");
    assert!(
        !dir.path().join("strava-sync.db").exists(),
        "nothing started"
    );
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
    // An empty DATABASE_URL leaves the file at DATABASE_PATH in use, on
    // either pass of the suite.
    let err = start_error(&[
        ("DATABASE_URL", ""),
        ("DATABASE_PATH", db.to_str().unwrap()),
        ("HOST", "no such host.invalid"),
    ])
    .await;
    assert!(err.contains("DATABASE_PATH"), "{err}");
    assert!(err.contains("HOST `no such host.invalid`"), "{err}");
    assert!(!db.parent().unwrap().exists());

    let err = start_error(&[("DATABASE_URL", "postgres://nobody:pw-9q@127.0.0.1:1/none")]).await;
    assert!(
        err.contains("DATABASE_URL `postgres://nobody:***@127.0.0.1:1/none` cannot be used"),
        "{err}"
    );
    assert!(!err.contains("pw-9q"), "{err}");

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
    let err = start_error(&[
        ("DATABASE_URL", ""),
        ("DATABASE_PATH", inside_a_file.to_str().unwrap()),
    ])
    .await;
    assert!(err.contains("DATABASE_PATH"), "{err}");
}

#[test]
fn migrate_applies_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let database = test_database(&dir, "m.db");
    let (key, value) = database.env();
    let out = strava_sync("migrate", dir.path(), &[(key, &value)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tables: i64 = match &database {
        Database::Sqlite(path) => rusqlite::Connection::open(path)
            .unwrap()
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'activities'",
                [],
                |r| r.get(0),
            )
            .unwrap(),
        Database::Postgres(url) => postgres::Client::connect(url, postgres::NoTls)
            .unwrap()
            .query_one(
                "SELECT COUNT(*) FROM pg_tables
                 WHERE schemaname = current_schema() AND tablename = 'activities'",
                &[],
            )
            .unwrap()
            .get(0),
    };
    assert_eq!(tables, 1);
}

/// Lets the app's database grow no further (`max_page_count` at its size,
/// on the one writer connection): SQLite then fails writes with the error a
/// full disk gives, `SQLITE_FULL`.
async fn fill_the_disk(app: &TestApp, full: bool) {
    app.store
        .write(move |tx| {
            let pages: i64 =
                tx.query_row("PRAGMA page_count", strava_sync::params![], |r| r.get(0))?;
            let limit = if full { pages } else { i64::from(u32::MAX) };
            tx.query_row(
                &format!("PRAGMA max_page_count = {limit}"),
                strava_sync::params![],
                |_| Ok(()),
            )?;
            Ok(())
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_full_disk_answers_503_in_the_fault_shape_and_is_not_ready() {
    if on_postgres() {
        // The full disk is SQLite's own (a capped file); PostgreSQL's
        // cannot be brought about from a test.
        return;
    }
    let app = TestApp::spawn().await;
    let (athlete, _) = app.seed_athlete("athlete.json").await;
    let secret = app.store.path_secret().await.unwrap();
    fill_the_disk(&app, true).await;
    let event = |n: i64| {
        serde_json::json!({"aspect_type": "update", "event_time": 1_700_000_000 + n,
            "object_id": 17_179_869_185i64, "object_type": "activity", "owner_id": athlete,
            "subscription_id": 1, "updates": {"title": "x".repeat(500)}})
        .to_string()
    };
    let mut refused = None;
    for n in 0..2_000 {
        let res = app.post_webhook(&secret, event(n)).await;
        if res.status() != 200 {
            refused = Some(res);
            break;
        }
    }
    let res = refused.expect("the full database refused an event");
    assert_eq!(res.status(), 503);
    let fault: serde_json::Value = res.json().await.unwrap();
    assert_eq!(fault["message"], "Service Unavailable", "{fault}");
    assert_eq!(fault["errors"][0]["code"], "unavailable", "{fault}");
    assert_eq!(app.readyz().await.status(), 503);

    fill_the_disk(&app, false).await;
    assert_eq!(app.readyz().await.status(), 200, "ready once writes commit");
    assert_eq!(app.post_webhook(&secret, event(9_999)).await.status(), 200);
}

#[tokio::test]
async fn postgresql_connections_are_encrypted_when_the_server_offers_tls() {
    if !on_postgres() {
        // SQLite has no connection to encrypt.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Database::Postgres(url) = test_database(&dir, "tls") else {
        unreachable!("on PostgreSQL");
    };
    let encrypted = |url: String| async move {
        open_store(&Database::Postgres(url))
            .await
            .read(|c| {
                c.query_row(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    strava_sync::params![],
                    |r| r.get::<bool>(0),
                )
            })
            .await
            .unwrap()
    };
    // The machine's server offers TLS (with a certificate no public root
    // signs), as managed databases do.
    assert!(encrypted(url.clone()).await, "sslmode=prefer, the default");
    assert!(encrypted(format!("{url}&sslmode=require")).await);
    assert!(!encrypted(format!("{url}&sslmode=disable")).await);
}
