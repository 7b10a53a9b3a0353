//! Several instances on one PostgreSQL database, as an operator runs them
//! for availability: real `serve` processes sharing one schema, with the
//! simulator's records as the judge. One budget (the calls of all of them
//! in a window stay within the limit, and Strava never answers 429), each
//! job step run once, each webhook event applied once wherever Strava sent
//! it, one token refresh however many callers need it, and nothing
//! acknowledged lost when one instance dies.
//!
//! Several instances share PostgreSQL only (a SQLite file serves one), so
//! on the SQLite pass of the suite these tests have nothing to run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use strava_sync::config::Database;
use strava_sync::simulator::{
    ActivityUpdate, Faults, Limits, SimConfig, SimHandle, SimSettings, Simulator,
};
use strava_sync::store::token_cipher::TokenCipher;
use strava_sync::store::Store;
use strava_sync::strava::oauth::StravaOAuth;
use strava_sync::strava::tokens::Tokens;

use crate::helpers::{eventually, on_postgres, open_store, test_database, test_settings, WAIT};
use crate::process::Server;
use crate::sim_app::SimApp;
use crate::webhooks::{activity_event, scalar, seed_activities, seed_athlete};

/// Starts `n` instances on `db` at once (they migrate together).
async fn start(n: usize, db: &Database, env: &[(&str, String)]) -> Vec<Server> {
    futures_util::future::join_all((0..n).map(|_| Server::start_on_a_free_port(db, env))).await
}

/// The OAuth dance through one instance, as a browser does it: its
/// `/auth/strava`, Strava's authorize page, its callback.
async fn connect(server: &Server, sim: &SimHandle, athlete: u64) {
    let api = &server.api;
    let res = api.connect_start().await;
    assert_eq!(res.status(), 302);
    let authorize = res.headers()["location"].to_str().unwrap().to_string();
    sim.next_login(athlete).unwrap();
    let res = api.client.get(&authorize).send().await.unwrap();
    assert_eq!(res.status(), 302, "Strava's authorize redirects back");
    let back = reqwest::Url::parse(res.headers()["location"].to_str().unwrap()).unwrap();
    let res = api.connect_callback(back.query().unwrap_or_default()).await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
}

/// API calls the simulator answered, by quarter-hour window.
fn calls_per_window(sim: &SimHandle) -> BTreeMap<i64, usize> {
    let mut windows = BTreeMap::new();
    for call in sim.call_records() {
        if call.endpoint.contains(" /api/v3/") {
            *windows
                .entry(call.at.timestamp().div_euclid(900) * 900)
                .or_default() += 1;
        }
    }
    windows
}

/// Waits out the end of a quarter hour that is near, so a test's calls
/// fall in one window.
async fn well_inside_a_window(sim: &SimHandle) {
    let left = 900 - sim.now().timestamp().rem_euclid(900);
    if left < 120 {
        tokio::time::sleep(Duration::from_secs(left as u64 + 1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_spend_one_budget_and_run_each_step_once() {
    if !on_postgres() {
        return;
    }
    const LIMIT: u32 = 24;
    let sim = Simulator::start(SimConfig {
        athletes: 9,
        activities_per_athlete: 450,
        settings: SimSettings {
            limits: Limits {
                overall_15min: LIMIT,
                read_15min: LIMIT,
                ..Limits::default()
            },
            ..SimSettings::default()
        },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    well_inside_a_window(&sim).await;
    let dir = tempfile::tempdir().unwrap();
    let db = test_database(&dir, "shared");
    let env = [
        ("STRAVA_API_URL", sim.api_url()),
        ("STRAVA_OAUTH_URL", sim.oauth_url()),
        ("STRAVA_RATE_LIMIT_15MIN", LIMIT.to_string()),
    ];
    let servers = start(3, &db, &env).await;
    // Each instance connects three athletes; each connection queues a first
    // page and a backfill of three pages: more than the window allows.
    for (i, athlete) in sim.athlete_ids().into_iter().enumerate() {
        connect(&servers[i % 3], &sim, athlete).await;
    }

    // Every instance comes to see the window spent for backfills (each
    // learns it from the database when it asks for a permit), and then
    // none of them calls again in this window.
    let window = sim.now().timestamp().div_euclid(900) * 900;
    eventually("every instance to find the window spent", WAIT, || async {
        let mut seen = Vec::new();
        for server in &servers {
            let budget: Value = server.api.admin_budget().await.json().await.unwrap();
            seen.push(budget["blocked"]["backfill"]["reason"].clone());
        }
        if seen.iter().all(|reason| !reason.is_null()) {
            return Ok(());
        }
        Err(format!("backfill blocked: {seen:?}"))
    })
    .await;

    // Every call was counted once in the shared window: a permit is
    // counted before its call, so the last calls may still be on the way.
    let store = open_store(&db).await;
    let used: i64 = eventually("every permit's call to reach Strava", WAIT, || async {
        let used: i64 = store
            .read(move |c| {
                c.query_row(
                    "SELECT used FROM budget_windows WHERE \"window\" = '15min' AND window_start = ?1",
                    [window],
                    |r| r.get(0),
                )
            })
            .await
            .unwrap();
        let made = calls_per_window(&sim).get(&window).copied().unwrap_or(0);
        if made == used as usize {
            return Ok(used);
        }
        Err(format!("{made} calls made, {used} counted"))
    })
    .await;
    let calls = sim.calls();
    assert_eq!(calls.by_status.get(&429), None, "{:?}", calls.by_status);
    let per_window = calls_per_window(&sim);
    assert!(
        per_window.values().all(|n| *n <= LIMIT as usize),
        "{per_window:?}"
    );
    assert!(
        used as u32 > LIMIT / 2,
        "the instances had work for the window"
    );
    // No step ran twice: no page was asked for twice.
    let mut asked = BTreeMap::new();
    for call in sim.call_records() {
        if call.endpoint.contains(" /api/v3/") {
            let step = (call.endpoint.clone(), call.athlete_id, call.query.clone());
            if let Some(first) = asked.insert(step, call.clone()) {
                panic!("asked twice: {first:?} then {call:?}");
            }
        }
    }
    let queued: i64 = scalar(
        &store,
        "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')",
    )
    .await;
    assert!(queued > 0, "work is left for the next window");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_webhook_event_is_applied_once_whichever_instances_strava_reached() {
    if !on_postgres() {
        return;
    }
    const EVENTS: i64 = 300;
    const ATHLETE: i64 = 134_815;
    const FIRST_ID: i64 = 17_179_869_185;
    let dir = tempfile::tempdir().unwrap();
    let db = test_database(&dir, "shared");
    let store = open_store(&db).await;
    seed_athlete(&store, ATHLETE).await;
    seed_activities(&store, ATHLETE, (0..EVENTS).map(|i| FIRST_ID + i).collect()).await;
    let secret = store.path_secret().await.unwrap();
    let servers = start(3, &db, &[]).await;

    // Each rename goes to one instance, and Strava's retry of it to the
    // next, concurrently.
    let now = chrono::Utc::now().timestamp();
    let events: Vec<Value> = (0..EVENTS)
        .map(|i| {
            activity_event(
                "update",
                FIRST_ID + i,
                now - EVENTS + i,
                json!({"title": format!("renamed {i}")}),
            )
        })
        .collect();
    let client = reqwest::Client::new();
    let posts = events.iter().enumerate().flat_map(|(i, event)| {
        [i, i + 1].map(|n| {
            let url = servers[n % 3].api.url(&format!("/webhook/{secret}"));
            let client = client.clone();
            async move { client.post(url).json(event).send().await.unwrap().status() }
        })
    });
    let statuses: Vec<_> = futures_util::stream::iter(posts)
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    for server in &servers {
        server.drained().await;
    }

    let overview: Value = servers[0].api.admin_webhooks().await.json().await.unwrap();
    assert_eq!(overview["counts"]["done"], EVENTS, "{overview}");
    let (applied, names) = store
        .read(|c| {
            let applied: i64 = c.query_row(
                "SELECT COUNT(*) FROM changes WHERE kind = 'activity.updated'",
                strava_sync::params![],
                |r| r.get(0),
            )?;
            let names: Vec<String> = c.query_map(
                "SELECT summary_json FROM activities ORDER BY id",
                strava_sync::params![],
                |r| r.get(0),
            )?;
            Ok((applied, names))
        })
        .await
        .unwrap();
    assert_eq!(applied, EVENTS, "one change per event, not per delivery");
    for (i, summary) in names.iter().enumerate() {
        let summary: Value = serde_json::from_str(summary).unwrap();
        assert_eq!(summary["name"], format!("renamed {i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_callers_of_an_expired_token_across_instances_cause_one_refresh() {
    if !on_postgres() {
        return;
    }
    let app = SimApp::start_with_jobs_by_hand(
        SimConfig {
            athletes: 1,
            ..SimConfig::default()
        },
        &[],
    )
    .await;
    let athlete = app.sim.athlete_ids()[0];
    app.connect(athlete).await;
    let db = app.database();
    // Three instances' token handling: the app's own store and two more
    // processes' worth of pools on the same database, each its own instance.
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(
        &dir,
        &[
            ("STRAVA_OAUTH_URL", &app.sim.oauth_url()),
            ("STRAVA_CLIENT_ID", &app.sim.client_id().to_string()),
            ("STRAVA_CLIENT_SECRET", app.sim.client_secret()),
        ],
    );
    let key = settings.token_encryption_key.clone().unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let clock: Arc<dyn strava_sync::model::clock::Clock> = app.clock.clone();
    let oauth = Arc::new(StravaOAuth::new(&settings, http, clock.clone()).unwrap());
    let mut instances = Vec::new();
    let mut stores = Vec::new();
    for _ in 0..3 {
        let store: Store = open_store(&db)
            .await
            .with_token_cipher(TokenCipher::new(&key, None));
        store.join_instances(clock.epoch()).await.unwrap();
        instances.push(Tokens::new(store.clone(), oauth.clone(), clock.clone()));
        stores.push(store);
    }
    // The stored token has expired.
    stores[0]
        .write(move |tx| {
            tx.execute(
                "UPDATE strava_tokens SET expires_at = 0 WHERE athlete_id = ?1",
                [athlete as i64],
            )
        })
        .await
        .unwrap();

    let before = app.token_calls(athlete);
    let callers = (0..20).map(|i| instances[i % 3].access_token(athlete as i64));
    let tokens: BTreeSet<String> = futures_util::future::join_all(callers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(app.token_calls(athlete) - before, 1, "one refresh");
    assert_eq!(tokens.len(), 1, "every caller got the refreshed token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_mid_burst_and_mid_backfill_loses_nothing_acknowledged() {
    if !on_postgres() {
        return;
    }
    const ATHLETES: usize = 4;
    let sim = Simulator::start(SimConfig {
        athletes: ATHLETES,
        activities_per_athlete: 700,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = test_database(&dir, "shared");
    let env = [
        ("STRAVA_API_URL", sim.api_url()),
        ("STRAVA_OAUTH_URL", sim.oauth_url()),
    ];
    let store = open_store(&db).await;
    // The first to start is the one that dies; its id marks its jobs.
    let mut servers = vec![Server::start_on_a_free_port(&db, &env).await];
    let dying: String = store
        .read(|c| {
            c.query_row("SELECT id FROM instances", strava_sync::params![], |r| {
                r.get(0)
            })
        })
        .await
        .unwrap();
    servers.extend(start(1, &db, &env).await);
    // Slow answers keep both instances' backfills running while one dies.
    sim.inject_faults(Faults {
        count: 60,
        status: None,
        latency_ms: 300,
    })
    .unwrap();
    for (i, athlete) in sim.athlete_ids().into_iter().enumerate() {
        connect(&servers[i % 2], &sim, athlete).await;
    }
    let secret = store.path_secret().await.unwrap();

    // A burst of renames of the first athlete's stored activities, all to
    // the instance that is about to die.
    let athlete = sim.athlete_ids()[0];
    let stored: Vec<i64> = eventually("a first page to be stored", WAIT, || async {
        let ids: Vec<i64> = store
            .read(move |c| {
                c.query_map(
                    "SELECT id FROM activities WHERE athlete_id = ?1 ORDER BY id",
                    [athlete as i64],
                    |r| r.get(0),
                )
            })
            .await
            .unwrap();
        (ids.len() >= 30).then_some(ids)
    })
    .await;
    // Renamed on Strava too, so a listing the backfill makes later agrees.
    for (i, id) in stored.iter().enumerate() {
        let rename = ActivityUpdate {
            name: Some(format!("burst {i}")),
            ..ActivityUpdate::default()
        };
        sim.update_activity(*id as u64, rename, None).unwrap();
    }
    let now = chrono::Utc::now().timestamp();
    let events: Vec<Value> = stored
        .iter()
        .enumerate()
        .map(|(i, id)| {
            json!({"aspect_type": "update", "event_time": now - 1000 + i as i64, "object_id": id,
                   "object_type": "activity", "owner_id": athlete, "subscription_id": 1,
                   "updates": {"title": format!("burst {i}")}})
        })
        .collect();
    let url = servers[0].api.url(&format!("/webhook/{secret}"));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut acknowledged = Vec::new();
    let mut orphaned = Vec::new();
    for (i, event) in events.iter().enumerate() {
        if i == events.len() / 2 {
            // Killed while it runs a job.
            orphaned = eventually("the dying instance to run a job", WAIT, || async {
                let dying = dying.clone();
                let running: Vec<i64> = store
                    .read(move |c| {
                        c.query_map(
                            "SELECT id FROM jobs WHERE status = 'running' AND claimed_by = ?1",
                            [dying],
                            |r| r.get(0),
                        )
                    })
                    .await
                    .unwrap();
                (!running.is_empty()).then_some(running)
            })
            .await;
            servers[0].kill();
        }
        let ok = client
            .post(&url)
            .json(event)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ok {
            acknowledged.push(i);
        }
    }
    assert!(!acknowledged.is_empty() && acknowledged.len() < events.len());

    // The survivor applies what the dead one acknowledged, and finishes
    // every backfill, the dead one's included once its heartbeat is stale.
    let survivor = &servers[1];
    eventually(
        "the survivor to finish every backfill",
        Duration::from_secs(120),
        || async {
            let complete: i64 = scalar(
                &store,
                "SELECT COUNT(*) FROM sync_state WHERE backfill_complete = 1",
            )
            .await;
            if complete == ATHLETES as i64 {
                return Ok(());
            }
            Err(format!("{complete} of {ATHLETES} backfills complete"))
        },
    )
    .await;
    survivor.drained().await;
    // The jobs the dead instance held (a first page, a backfill step, ...)
    // are taken over once its heartbeat is stale, and run to the end.
    eventually(
        "the dead instance's jobs to be taken over and done",
        Duration::from_secs(120),
        || async {
            let orphaned = orphaned.clone();
            let orphans: Vec<String> = store
                .read(move |c| {
                    let params = strava_sync::store::sql::params_from(&orphaned);
                    c.query_map(
                        &format!(
                            "SELECT status FROM jobs WHERE id IN ({})",
                            strava_sync::store::sql::placeholders_from(1, orphaned.len())
                        ),
                        params,
                        |r| r.get(0),
                    )
                })
                .await
                .unwrap();
            if orphans.iter().all(|s| s == "done") {
                return Ok(());
            }
            Err(format!("{orphans:?}"))
        },
    )
    .await;
    let names = by_id(
        &store,
        "SELECT id, summary_json FROM activities WHERE athlete_id = ?1",
        athlete,
    )
    .await;
    let applied = by_id(
        &store,
        "SELECT object_id, status FROM webhook_events WHERE owner_id = ?1",
        athlete,
    )
    .await;
    for i in acknowledged {
        let id = stored[i];
        assert_eq!(
            applied.get(&id).map(String::as_str),
            Some("done"),
            "event {i}"
        );
        let summary: Value = serde_json::from_str(&names[&id]).unwrap();
        assert_eq!(
            summary["name"],
            format!("burst {i}"),
            "acknowledged event {i}"
        );
    }
    let activities: i64 = scalar(&store, "SELECT COUNT(*) FROM activities").await;
    assert_eq!(activities, (ATHLETES * 700) as i64, "every history stored");
}

/// `(id, text)` rows of one athlete, by id: `sql` selects them with the
/// athlete as `?1`.
async fn by_id(store: &Store, sql: &'static str, athlete: u64) -> BTreeMap<i64, String> {
    store
        .read(move |c| c.query_map(sql, [athlete as i64], |r| Ok((r.get(0)?, r.get(1)?))))
        .await
        .unwrap()
        .into_iter()
        .collect()
}
