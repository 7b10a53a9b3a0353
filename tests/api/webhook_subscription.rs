//! The push subscription end to end against the Strava simulator: the
//! `strava-sync subscription create|show|delete` commands (the real binary),
//! then live events the simulator pushes after renames and deletes, applied
//! with no API call, and a create that only queues a fetch.

use serde_json::Value;
use strava_sync::config::Database;
use strava_sync::simulator::{ActivityUpdate, NewActivity, Push, SimConfig, SimHandle, Simulator};
use strava_sync::store::{activities, athletes, Store};

use crate::helpers::{eventually, test_database, TestApp, WAIT};
use crate::webhooks::{pause_background_work, scalar};

/// Runs `strava-sync subscription <action>` against the simulator, for the
/// service at `public_url`.
pub async fn cli(action: &str, db: &Database, sim: &SimHandle, public_url: &str) -> String {
    let (key, database) = db.env();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_strava-sync"))
        .args(["subscription", action])
        .current_dir(std::env::temp_dir())
        .env_clear()
        .env(key, database)
        .env("PUBLIC_URL", public_url)
        .env("STRAVA_API_URL", sim.api_url())
        .env("STRAVA_CLIENT_ID", sim.client_id().to_string())
        .env("STRAVA_CLIENT_SECRET", sim.client_secret())
        .env("STRAVA_WEBHOOK_VERIFY_TOKEN", "test-verify-token")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{action}: {stdout}{stderr}");
    assert!(!stdout.contains(sim.client_secret()) && !stderr.contains(sim.client_secret()));
    stdout
}

/// Connects the simulator's first athlete by seeding their profile and
/// activities through the store, as the connect flow would.
pub async fn seed_from(sim: &Simulator, store: &Store) -> (u64, Vec<Value>) {
    let athlete = sim.athlete_ids()[0];
    let profile = sim.athlete(athlete).unwrap();
    let list = sim.activities(athlete).unwrap();
    let page: Vec<Box<serde_json::value::RawValue>> = list
        .iter()
        .map(|a| serde_json::value::to_raw_value(a).unwrap())
        .collect();
    store
        .write(move |tx| {
            let id = athletes::upsert(tx, &profile, "read,activity:read_all", 0)?;
            activities::upsert_summaries(tx, id, &page, 0)?;
            Ok(())
        })
        .await
        .unwrap();
    (athlete, list)
}

async fn stored_name(store: &Store, id: u64) -> Option<String> {
    store
        .read(move |c| {
            use strava_sync::store::sql::OptionalExtension;
            c.query_row(
                &format!(
                    "SELECT {} FROM activities WHERE id = ?1",
                    c.dialect().json_text("summary_json", "name")
                ),
                [id as i64],
                |r| r.get(0),
            )
            .optional()
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn subscription_commands_and_live_events_from_the_simulator() {
    let sim = Simulator::start(SimConfig {
        athletes: 1,
        activities_per_athlete: 5,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    sim.update_settings(|s| {
        s.webhook_retry_ms = 50;
        s.subscription_id_as_string_probability = 0.5;
    });
    let dir = tempfile::tempdir().unwrap();
    let db = test_database(&dir, "sub.db");
    let (key, database) = db.env();
    let app =
        TestApp::spawn_with(&[(key, database.as_str()), ("STRAVA_API_URL", &sim.api_url())]).await;
    let secret = app.store.path_secret().await.unwrap();
    let callback = format!("{}/webhook/{secret}", app.address);
    pause_background_work(&app).await;

    let created = cli("create", &db, &sim, &app.address).await;
    let listed = sim
        .subscription()
        .expect("the simulator holds the subscription");
    assert_eq!(listed["callback_url"], callback.as_str());
    let id = listed["id"].as_i64().unwrap();
    assert!(created.contains(&callback), "{created}");
    assert_eq!(
        app.store.subscription_id().await.unwrap(),
        Some(id),
        "the id is kept for checking events"
    );
    let shown = cli("show", &db, &sim, &app.address).await;
    assert!(
        shown.contains(&format!("callback_url: {callback}")),
        "{shown}"
    );
    assert!(shown.contains(&format!("\"id\": {id}")), "{shown}");

    // Live events: a rename, a delete, a create, each pushed by the simulator.
    let calls_before = sim.calls().total;
    let (athlete, list) = seed_from(&sim, &app.store).await;
    let renamed = list[0]["id"].as_u64().unwrap();
    let deleted = list[1]["id"].as_u64().unwrap();
    sim.update_activity(
        renamed,
        ActivityUpdate {
            name: Some("Renamed on Strava".into()),
            ..Default::default()
        },
        Some(Push {
            twice: true,
            ..Push::default()
        }),
    )
    .unwrap();
    sim.delete_activity(deleted, Some(Push::default())).unwrap();
    let new = sim
        .create_activity(athlete, NewActivity::default(), Some(Push::default()))
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let store = app.store.clone();
    eventually("the events to be applied", WAIT, || {
        let store = store.clone();
        async move {
            let pending: i64 = scalar(
                &store,
                "SELECT COUNT(*) FROM webhook_events WHERE status = 'pending'",
            )
            .await;
            let all: i64 = scalar(&store, "SELECT COUNT(*) FROM webhook_events").await;
            all == 3 && pending == 0
        }
    })
    .await;
    assert_eq!(
        stored_name(&app.store, renamed).await.as_deref(),
        Some("Renamed on Strava")
    );
    assert_eq!(stored_name(&app.store, deleted).await, None);
    let payload: String = scalar(
        &app.store,
        "SELECT payload_json FROM jobs WHERE kind = 'webhook_fetch'",
    )
    .await;
    assert_eq!(payload, format!("{{\"activity_ids\":[{new}]}}"));
    // Cost, from the simulator's own counters: the rename, its duplicate and
    // the delete cost nothing, and the create has cost nothing yet.
    assert_eq!(sim.calls().total, calls_before);

    let deleted_out = cli("delete", &db, &sim, &app.address).await;
    assert!(deleted_out.contains(&id.to_string()), "{deleted_out}");
    assert!(sim.subscription().is_none());
    assert_eq!(app.store.subscription_id().await.unwrap(), None);
}

/// A "Strava" whose push_subscriptions answer is a redirect elsewhere: the
/// commands must not follow it, since the request carries the client secret.
#[tokio::test]
async fn subscription_commands_never_follow_a_redirect_with_the_secret() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use strava_sync::webhook::subscription::{run, Action};

    let followed = Arc::new(AtomicUsize::new(0));
    let counter = followed.clone();
    let server = actix_web::HttpServer::new(move || {
        let counter = counter.clone();
        actix_web::App::new()
            .route(
                "/api/v3/push_subscriptions",
                actix_web::web::to(|| async {
                    actix_web::HttpResponse::TemporaryRedirect()
                        .insert_header(("Location", "/elsewhere"))
                        .finish()
                }),
            )
            .route(
                "/elsewhere",
                actix_web::web::to(move || {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async { actix_web::HttpResponse::Ok().json(serde_json::json!([])) }
                }),
            )
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let port = server.addrs()[0].port();
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);

    let dir = tempfile::tempdir().unwrap();
    let api = format!("http://127.0.0.1:{port}/api/v3");
    let settings = crate::helpers::test_settings(&dir, &[("STRAVA_API_URL", &api)]);
    for action in [Action::Show, Action::Create, Action::Delete] {
        let err = run(&settings, action).await.unwrap_err().to_string();
        assert!(err.contains("307"), "{action:?}: {err}");
        assert!(!err.contains("test-client-secret"), "{err}");
    }
    assert_eq!(followed.load(Ordering::SeqCst), 0, "no redirect followed");
    handle.stop(false).await;
}
