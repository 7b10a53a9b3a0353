//! Where the budget goes when there is more work than calls: athletes who
//! are looking first, then every background purpose its share, by value
//! within each. The job runner runs by hand here, one job at a time, so the
//! order the queue serves work in is the order the simulator sees calls in.

use serde_json::{json, Value};
use strava_sync::model::job::Task;
use strava_sync::simulator::{Limits, NewActivity, SimConfig, SimSettings};

use crate::sim_app::SimApp;

const LISTING: &str = "GET /api/v3/athlete/activities";

fn config(athletes: usize, activities_per_athlete: usize) -> SimConfig {
    SimConfig {
        athletes,
        activities_per_athlete,
        ..SimConfig::default()
    }
}

/// Connects every simulated athlete and runs their history to the end,
/// moving to the next quarter hour whenever the budget holds work back.
/// Returns their API tokens.
async fn connect_all(app: &SimApp) -> Vec<String> {
    let mut tokens = Vec::new();
    for athlete in app.sim.athlete_ids() {
        tokens.push(app.connect(athlete).await);
    }
    for _ in 0..50 {
        app.run_jobs_until_idle().await;
        let complete = app.athletes().await["athletes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["backfill_complete"] == true);
        if complete {
            return tokens;
        }
        app.advance(app.secs_to_next_quarter() + 1);
    }
    panic!("the backfills do not end");
}

/// Uploads an activity without an event and queues its fetch, as the webhook
/// worker does for a create event. Returns its id.
async fn upload_and_announce(app: &SimApp, athlete: u64) -> u64 {
    let id = app
        .sim
        .create_activity(athlete, NewActivity::default(), None)
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    let state = app.state();
    let now = state.clock.epoch();
    state
        .store
        .enqueue(athlete as i64, Task::fetch(vec![id as i64]), now, now)
        .await
        .unwrap();
    id
}

/// The athletes whose activities were listed since call number `from`, in
/// the order the listings reached Strava.
fn listed_since(app: &SimApp, from: usize) -> Vec<u64> {
    app.api_calls()[from..]
        .iter()
        .filter(|c| c.endpoint == LISTING)
        .filter_map(|c| c.athlete_id)
        .collect()
}

async fn calls_today(app: &SimApp, purpose: &str) -> i64 {
    app.budget().await["calls_today_by_purpose"][purpose]
        .as_i64()
        .unwrap()
}

async fn sync_status(app: &SimApp, token: &str) -> Value {
    let res = app.sync_status(token).await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

#[tokio::test]
async fn a_reading_athletes_announced_activity_is_fetched_before_a_backlog() {
    let app = SimApp::start_with_jobs_by_hand(config(6, 5), &[]).await;
    let athletes = app.sim.athlete_ids();
    let tokens = connect_all(&app).await;
    for &athlete in &athletes {
        upload_and_announce(&app, athlete).await;
    }
    // The last to upload opens the app: a frontend is showing their data.
    let reader = athletes[5];
    assert_eq!(app.get_athlete(&tokens[5]).await.status(), 200);

    let before = app.api_calls().len();
    app.run_jobs_until_idle().await;
    let listed = listed_since(&app, before);
    assert_eq!(listed.len(), 6, "{listed:?}");
    assert_eq!(listed[0], reader, "{listed:?}");
    assert_eq!(calls_today(&app, "attention").await, 1);
    assert!(app.athlete(reader).await["last_read_at"].is_i64());
}

#[tokio::test]
async fn a_premium_athletes_fetch_goes_before_a_standard_one_of_the_same_age() {
    let app =
        SimApp::start_with_jobs_by_hand(config(2, 5), &[("TIERS", "standard=1,premium=4")]).await;
    let [standard, premium] = app.sim.athlete_ids()[..] else {
        panic!("two athletes")
    };
    connect_all(&app).await;
    let res = app
        .admin_patch_athlete(premium, json!({"tier": "premium"}).to_string())
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(app.athlete(premium).await["tier"], "premium");
    assert_eq!(app.athlete(standard).await["tier"], "standard");

    // The standard athlete's upload was announced first.
    upload_and_announce(&app, standard).await;
    upload_and_announce(&app, premium).await;
    let before = app.api_calls().len();
    app.run_jobs_until_idle().await;
    assert_eq!(listed_since(&app, before), [premium, standard]);
}

#[tokio::test]
async fn a_newcomers_backfill_progresses_while_fetches_could_spend_the_window() {
    let limits = [("STRAVA_RATE_LIMIT_15MIN", "10")];
    let config = SimConfig {
        settings: SimSettings {
            limits: Limits::read_and_overall(10, 1000),
            ..SimSettings::default()
        },
        ..config(12, 400)
    };
    let app = SimApp::start_with_jobs_by_hand(config, &limits).await;
    let athletes = app.sim.athlete_ids();
    let (settled, newcomer) = athletes.split_at(11);
    let newcomer = newcomer[0];
    for &athlete in settled {
        app.connect(athlete).await;
    }
    for _ in 0..50 {
        app.run_jobs_until_idle().await;
        let all = app.athletes().await;
        if all["athletes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["backfill_complete"] == true)
        {
            break;
        }
        app.advance(app.secs_to_next_quarter() + 1);
    }
    // A new day: nothing spent yet, by any purpose.
    let midnight = 86_400 - app.sim.now().timestamp().rem_euclid(86_400) + 1;
    app.advance(midnight as u64);

    app.connect(newcomer).await;
    for &athlete in settled {
        upload_and_announce(&app, athlete).await;
    }
    app.run_jobs_until_idle().await;
    // Eleven fetches could have used every background call of the window;
    // the backfill got its share of them.
    assert!(calls_today(&app, "backfill").await >= 1);
    let fetches = calls_today(&app, "webhook").await;
    assert!((1..11).contains(&fetches), "{fetches}");
    let pages = app.athlete(newcomer).await["backfill_pages"].as_i64();
    assert!(pages.unwrap() >= 2, "the first page and a backfill page");
    assert!(app.busiest_quarter() <= 10, "{}", app.busiest_quarter());
}

#[tokio::test]
async fn pending_lists_an_announced_activity_until_it_is_fetched() {
    let app = SimApp::start_with_jobs_by_hand(config(1, 5), &[]).await;
    let athlete = app.sim.athlete_ids()[0];
    let token = connect_all(&app).await.remove(0);
    assert_eq!(sync_status(&app, &token).await["pending"], json!([]));

    let id = upload_and_announce(&app, athlete).await;
    let status = sync_status(&app, &token).await;
    let pending = status["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 1, "{status}");
    assert_eq!(pending[0]["id"], id);
    assert!(pending[0]["announced_at"].is_string(), "{status}");
    let eta = pending[0]["estimated_available_at"].as_str().unwrap();
    let eta = chrono::DateTime::parse_from_rfc3339(eta).unwrap();
    let now = app.sim.now();
    assert!(
        eta >= now && eta <= now + chrono::Duration::minutes(15),
        "{eta}"
    );
    // Reading it meanwhile says it is on its way, not that it is gone.
    let res = app.get_activity(&token, id).await;
    assert_eq!(res.status(), 404);
    let fault: Value = res.json().await.unwrap();
    assert_eq!(fault["errors"][0]["code"], "pending", "{fault}");
    let absent = app.get_activity(&token, id + 1000).await;
    let fault: Value = absent.json().await.unwrap();
    assert_eq!(fault["errors"][0]["code"], "invalid", "{fault}");

    app.run_jobs_until_idle().await;
    assert_eq!(sync_status(&app, &token).await["pending"], json!([]));
    assert_eq!(app.get_activity(&token, id).await.status(), 200);
}

#[tokio::test]
async fn the_gap_fill_listing_removes_a_recent_activity_deleted_without_an_event() {
    let app = SimApp::start_with_jobs_by_hand(config(1, 20), &[]).await;
    let athlete = app.sim.athlete_ids()[0];
    let token = connect_all(&app).await.remove(0);
    let newest = app.sim.activities(athlete).unwrap()[0]["id"]
        .as_u64()
        .unwrap();
    assert_eq!(app.get_activity(&token, newest).await.status(), 200);
    app.sim.delete_activity(newest, None).unwrap();
    app.advance(60);

    assert_eq!(app.admin_sync_run().await.status(), 202);
    app.run_jobs_until_idle().await;
    assert_eq!(app.get_activity(&token, newest).await.status(), 404);
    assert_eq!(app.athlete(athlete).await["activities"], 19);
    // One listing did it: no reconciliation walked the history.
    assert_eq!(calls_today(&app, "gap_fill").await, 1);
    assert_eq!(calls_today(&app, "reconcile").await, 0);
}

#[tokio::test]
async fn tiers_are_set_by_the_operator_and_counted_in_the_metrics() {
    let app =
        SimApp::start_with_jobs_by_hand(config(1, 5), &[("TIERS", "standard=1,premium=4")]).await;
    let athlete = app.sim.athlete_ids()[0];
    connect_all(&app).await;

    let unknown = app
        .admin_patch_athlete(athlete, json!({"tier": "gold"}).to_string())
        .await;
    assert_eq!(unknown.status(), 400);
    let fault: Value = unknown.json().await.unwrap();
    assert_eq!(fault["errors"][0]["field"], "tier", "{fault}");
    for malformed in [
        "",
        "{}",
        "[]",
        r#"{"tier": 4}"#,
        r#"{"tier": "premium", "x": 1}"#,
    ] {
        let res = app.admin_patch_athlete(athlete, malformed).await;
        assert_eq!(res.status(), 400, "{malformed}");
    }
    let nobody = app
        .admin_patch_athlete(424242, json!({"tier": "premium"}).to_string())
        .await;
    assert_eq!(nobody.status(), 404);
    assert_eq!(app.athlete(athlete).await["tier"], "standard");

    let res = app
        .admin_patch_athlete(athlete, json!({"tier": "premium"}).to_string())
        .await;
    assert_eq!(res.status(), 200);
    let metrics = app.metrics().await.text().await.unwrap();
    assert!(
        metrics.contains(r#"athletes{tier="premium",status="connected"} 1"#),
        "{metrics}"
    );
}
