//! The sync engine against the Strava simulator: backfill across budget
//! windows and restarts, the gap-fill pass, deletion reconciliation, webhook
//! fetches, manual refresh, and reads that never call Strava.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use strava_sync::model::job::Task;
use strava_sync::simulator::{NewActivity, SimConfig};
use strava_sync::store::{athletes, subscription};
use strava_sync::sync::{enrich, reconcile};
use strava_sync::webhook::worker;

use crate::helpers::{eventually, WAIT};
use crate::sim_app::SimApp;

fn config(activities_per_athlete: usize) -> SimConfig {
    SimConfig {
        athletes: 2,
        activities_per_athlete,
        ..SimConfig::default()
    }
}

async fn sync_status(app: &SimApp, token: &str) -> Value {
    let res = app.sync_status(token).await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// How many activities of the athlete are stored, as `/admin/athletes` counts.
async fn stored(app: &SimApp, athlete_id: u64) -> i64 {
    app.athlete(athlete_id).await["activities"]
        .as_i64()
        .unwrap()
}

/// Whether the read API serves the activity to the token's athlete.
async fn is_stored(app: &SimApp, token: &str, id: u64) -> bool {
    let res = app.get_activity(token, id).await;
    match res.status().as_u16() {
        200 => true,
        404 => false,
        status => panic!("GET activity {id}: {status}"),
    }
}

/// The athlete's jobs that have not finished (queued or running).
async fn unfinished_jobs(app: &SimApp, athlete_id: u64) -> i64 {
    app.state()
        .store
        .read(move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM jobs
                 WHERE athlete_id = ?1 AND status IN ('queued', 'running')",
                [athlete_id as i64],
                |r| r.get(0),
            )
        })
        .await
        .unwrap()
}

/// Calls the ledger recorded for `purpose` that Strava answered with 200.
async fn ledger_calls(app: &SimApp, purpose: &'static str) -> i64 {
    app.state()
        .store
        .read(move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM strava_calls WHERE purpose = ?1 AND status = 200",
                [purpose],
                |r| r.get(0),
            )
        })
        .await
        .unwrap()
}

/// Calls that fetched announced activities: at webhook priority, or as
/// attention when the athlete has read lately (tests read with the token).
async fn fetch_calls(app: &SimApp) -> i64 {
    ledger_calls(app, "webhook").await + ledger_calls(app, "attention").await
}

/// Polls `done`; whenever a moment of real time (300 ms) passes without it,
/// moves both clocks into the next quarter hour so a spent window reopens.
/// A minute of real time is some 200 windows, far more than any test needs
/// even on a loaded machine.
async fn run_until<F, Fut>(app: &SimApp, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut moved = Instant::now();
    eventually(what, Duration::from_secs(60), || {
        if moved.elapsed() >= Duration::from_millis(300) {
            app.advance(app.secs_to_next_quarter() + 1);
            moved = Instant::now();
        }
        done()
    })
    .await;
}

/// Connects an athlete and waits for the whole history to be stored.
async fn connect_and_backfill(app: &SimApp, athlete_id: u64) -> String {
    let token = app.connect(athlete_id).await;
    let total = app.sim.activities(athlete_id).unwrap().len() as i64;
    run_until(app, "the backfill completes", || async {
        sync_status(app, &token).await["backfill"]["complete"] == true
    })
    .await;
    assert_eq!(stored(app, athlete_id).await, total);
    token
}

/// A service with the first simulated athlete connected and backfilled.
async fn synced(activities_per_athlete: usize) -> (SimApp, u64, String) {
    let app = SimApp::start(config(activities_per_athlete), &[]).await;
    let athlete = app.sim.athlete_ids()[0];
    let token = connect_and_backfill(&app, athlete).await;
    (app, athlete, token)
}

/// Uploads an activity on the simulated Strava, announcing nothing.
fn upload(app: &SimApp, athlete: u64, new: NewActivity) -> u64 {
    app.sim.create_activity(athlete, new, None).unwrap()["id"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn a_3000_activity_backfill_spans_windows_without_429_and_resumes_after_a_restart() {
    let mut app = SimApp::start(config(3000), &[("STRAVA_RATE_LIMIT_15MIN", "10")]).await;
    let athlete = app.sim.athlete_ids()[0];
    let token = app.connect(athlete).await;

    // The first window runs out long before the history does.
    eventually("the first window is spent", WAIT, || async {
        let status = sync_status(&app, &token).await;
        status["backfill"]["pages_done"].as_i64().unwrap() >= 5
    })
    .await;
    app.run_jobs_until_idle().await;
    let status = sync_status(&app, &token).await;
    assert_eq!(status["backfill"]["complete"], false);
    assert!(
        status["backfill"]["estimated_completion"].is_string(),
        "{status}"
    );
    let pages_before_restart = status["backfill"]["pages_done"].as_i64().unwrap();

    app.restart().await;
    run_until(&app, "the backfill completes", || async {
        sync_status(&app, &token).await["backfill"]["complete"] == true
    })
    .await;

    let status = sync_status(&app, &token).await;
    assert_eq!(status["backfill"]["activities_stored"], 3000);
    assert!(status["backfill"]["pages_done"].as_i64().unwrap() > pages_before_restart);
    assert_eq!(stored(&app, athlete).await, 3000);
    // 3,000 activities are 15 pages of 200 and the empty page that ends
    // them: no page was received twice, the restart included. (A call in
    // flight when the service stopped has no answer and is counted apart.)
    let listed = ledger_calls(&app, "interactive").await + ledger_calls(&app, "backfill").await;
    assert_eq!(listed, 16);
    let calls = app.api_calls();
    assert!(calls.iter().all(|c| c.status != 429), "no 429 ever");
    assert!(app.busiest_quarter() <= 10);
}

#[tokio::test]
async fn gap_fill_finds_creates_without_webhooks_and_late_uploads_in_any_order() {
    let (app, athlete, token) = synced(30).await;

    let newest = app.sim.activities(athlete).unwrap()[0]["start_date"]
        .as_str()
        .unwrap()
        .parse::<chrono::DateTime<chrono::Utc>>()
        .unwrap();
    // No webhook for either: one just recorded, one recorded two days
    // before the newest stored activity and uploaded only now.
    let fresh = upload(&app, athlete, NewActivity::default());
    let late = NewActivity {
        start_date: Some(newest - chrono::Duration::days(2)),
        ..NewActivity::default()
    };
    let late = upload(&app, athlete, late);

    let res = app.admin_sync_run().await;
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["athletes"], 1, "the one connected athlete is queued");
    run_until(&app, "both activities are stored", || async {
        is_stored(&app, &token, fresh).await && is_stored(&app, &token, late).await
    })
    .await;
    // The pass records its check in a transaction after the page's.
    eventually("the gap-fill job has finished", WAIT, || async {
        unfinished_jobs(&app, athlete).await == 0
    })
    .await;
    assert!(sync_status(&app, &token).await["last_gap_fill_at"].is_string());
    // The simulator answers an `after`-only listing oldest first; one page
    // held everything, so one call (the other athlete is not connected).
    assert_eq!(ledger_calls(&app, "gap_fill").await, 1);
}

#[tokio::test]
async fn admin_sync_run_needs_the_admin_token() {
    let app = SimApp::start(config(1), &[]).await;
    assert_eq!(app.post_as("wrong", "/admin/sync/run").await.status(), 401);
    let res = app.post("/admin/sync/run").await;
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn reconciliation_removes_a_silently_deleted_activity() {
    let (app, athlete, token) = synced(250).await;
    let gone = app.sim.activities(athlete).unwrap()[120]["id"]
        .as_u64()
        .unwrap();
    assert!(is_stored(&app, &token, gone).await);
    // Deleted on Strava with no event at all.
    app.sim.delete_activity(gone, None).unwrap();

    let state = app.state().clone();
    let now = state.clock.epoch();
    assert_eq!(reconcile::plan(&state.store, now).await.unwrap(), 1);
    state.jobs.wake();
    run_until(&app, "the deleted activity is gone", || async {
        !is_stored(&app, &token, gone).await
    })
    .await;
    assert_eq!(stored(&app, athlete).await, 249);
    // Two pages (200 and 49) marked everything else as seen.
    assert_eq!(ledger_calls(&app, "reconcile").await, 2);
    assert!(sync_status(&app, &token).await["last_reconcile_at"].is_string());
}

/// Queues webhook fetches as the webhook worker does for create events.
async fn announce(app: &SimApp, athlete: u64, ids: &[u64]) {
    let ids = ids.to_vec();
    let state = app.state().clone();
    let now = state.clock.epoch();
    for id in ids {
        state
            .store
            .enqueue(athlete as i64, Task::fetch(vec![id as i64]), now, now)
            .await
            .unwrap();
    }
    state.jobs.wake();
}

#[tokio::test]
async fn a_create_not_yet_readable_by_id_is_stored_from_the_listing() {
    let (app, athlete, token) = synced(5).await;
    app.sim.update_settings(|s| s.detail_not_found_secs = 200);
    let new = upload(&app, athlete, NewActivity::default());
    let fetches = fetch_calls(&app).await;

    announce(&app, athlete, &[new]).await;
    run_until(&app, "the announced activity is stored", || async {
        is_stored(&app, &token, new).await
    })
    .await;
    assert_eq!(fetch_calls(&app).await - fetches, 1, "one listing");
    assert_eq!(app.sim.calls().to("GET /api/v3/activities/{id}"), 0);
}

#[tokio::test]
async fn forged_creates_cost_one_listing_and_a_few_retries_per_athlete() {
    let (app, athlete, _token) = synced(5).await;
    let fetches = fetch_calls(&app).await;
    let forged: Vec<u64> = (0..100).map(|i| 9_000_000_000 + i).collect();
    announce(&app, athlete, &forged).await;
    run_until(&app, "the forged ids are given up", || async {
        unfinished_jobs(&app, athlete).await == 0
    })
    .await;
    let spent = fetch_calls(&app).await - fetches;
    assert_eq!(spent, 4, "one listing and three retries, for 100 ids");
    assert_eq!(app.sim.calls().to("GET /api/v3/activities/{id}"), 0);
}

/// Forged creates spread over a day, one an hour through the callback as
/// whoever found it would send them. Counted per forged id, each would buy
/// a listing and three retries (96 in the day); counted per athlete, each
/// miss holds the athlete's listings for announcements back longer.
#[tokio::test]
async fn forged_creates_spread_over_a_day_cost_a_handful_of_listings() {
    let (app, athlete, _token) = synced(5).await;
    let secret = app.state().store.path_secret().await.unwrap();
    let fetches = fetch_calls(&app).await;
    for hour in 0..24 {
        let now = app.state().clock.epoch();
        let forged = json!({
            "aspect_type": "create", "event_time": now, "object_id": 9_000_000_000u64 + hour,
            "object_type": "activity", "owner_id": athlete, "subscription_id": 1,
            "updates": {},
        });
        let res = app.post_webhook(&secret, forged.to_string()).await;
        assert_eq!(res.status(), 200);
        worker::drain(&app.state().store, now).await.unwrap();
        // The hour in steps of ten minutes, running whatever came due.
        for _ in 0..6 {
            app.run_jobs_until_idle().await;
            app.advance(600);
        }
    }
    let spent = fetch_calls(&app).await - fetches;
    // The first create's listing and three retries, then one listing each
    // time a hold (2 h, then 6 h) runs out.
    assert!(
        (4..=10).contains(&spent),
        "{spent} listings for 24 forged ids"
    );
    assert_eq!(app.sim.calls().to("GET /api/v3/activities/{id}"), 0);
}

#[tokio::test]
async fn several_creates_of_one_athlete_share_one_listing() {
    let (app, athlete, token) = synced(5).await;
    let ids: Vec<u64> = (0..3)
        .map(|_| upload(&app, athlete, NewActivity::default()))
        .collect();
    let webhook_calls = fetch_calls(&app).await;
    announce(&app, athlete, &ids).await;
    run_until(&app, "the three activities are stored", || async {
        let mut all = true;
        for &id in &ids {
            all &= is_stored(&app, &token, id).await;
        }
        all
    })
    .await;
    assert_eq!(fetch_calls(&app).await - webhook_calls, 1);
}

#[tokio::test]
async fn a_create_older_than_a_delete_does_not_bring_the_activity_back() {
    let (app, athlete, token) = synced(5).await;
    let id = upload(&app, athlete, NewActivity::default());
    let state = app.state().clone();
    let now = state.clock.epoch();
    state
        .store
        .write(move |tx| {
            tx.execute(
                "INSERT INTO activity_tombstones (id, athlete_id, event_time) VALUES (?1, ?2, ?3)",
                strava_sync::params![id as i64, athlete as i64, now],
            )?;
            Ok(())
        })
        .await
        .unwrap();
    let before = app.api_calls().len();
    announce(&app, athlete, &[id]).await;
    eventually("the fetch job has run", WAIT, || async {
        unfinished_jobs(&app, athlete).await == 0
    })
    .await;
    assert!(!is_stored(&app, &token, id).await);
    assert_eq!(app.api_calls().len(), before, "nothing was fetched");
}

#[tokio::test]
async fn manual_refresh_is_queued_runs_to_done_with_counts_and_has_a_cooldown() {
    let (app, athlete, token) = synced(20).await;
    for _ in 0..2 {
        upload(&app, athlete, NewActivity::default());
    }

    let res = app.request_sync(&token).await;
    assert_eq!(res.status(), 202);
    let queued: Value = res.json().await.unwrap();
    assert_eq!(queued["status"], "queued");
    assert!(queued["queue_position"].as_i64().unwrap() >= 1);
    assert!(queued["estimated_start"].is_string(), "{queued}");
    let job = queued["job_id"].as_i64().unwrap();

    run_until(&app, "the refresh is done", || async {
        let body: Value = app.sync_job(&token, job).await.json().await.unwrap();
        body["status"] == "done"
    })
    .await;
    let body: Value = app.sync_job(&token, job).await.json().await.unwrap();
    assert_eq!(body["counts"]["new"], 2);
    assert_eq!(body["counts"]["updated"], 0);
    assert!(body["counts"]["fetched"].as_i64().unwrap() >= 2);

    let again = app.request_sync(&token).await;
    assert_eq!(again.status(), 429);
    let retry: u64 = again.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=300).contains(&retry), "{retry}");
    let fault: Value = again.json().await.unwrap();
    assert_eq!(fault["message"], "Rate Limit Exceeded");
}

#[tokio::test]
async fn sync_routes_refuse_missing_foreign_and_malformed_input() {
    let app = SimApp::start(config(3), &[]).await;
    let [a, b] = app.sim.athlete_ids()[..] else {
        panic!("two athletes")
    };
    let (token_a, token_b) = (app.connect(a).await, app.connect(b).await);
    let job: Value = app.request_sync(&token_a).await.json().await.unwrap();
    let job = &job["job_id"];

    assert_eq!(app.sync_job(&token_a, job).await.status(), 200);
    assert_eq!(app.sync_job(&token_b, job).await.status(), 404, "not yours");
    assert_eq!(app.sync_job(&token_a, 999999).await.status(), 404);
    let res = app.sync_job(&token_a, "abc").await;
    assert_eq!(res.status(), 400);
    let fault: Value = res.json().await.unwrap();
    assert!(fault["errors"].is_array());
    let huge = "9".repeat(40);
    assert_eq!(app.sync_job(&token_a, huge).await.status(), 400);
    let path = format!("/api/sync/jobs/{job}");
    for path in ["/api/sync", &path] {
        let res = app.get(path).await;
        assert_eq!(res.status(), 401, "{path} without a token");
        assert_eq!(app.get_as("forged", path).await.status(), 401);
    }
    assert_eq!(app.request_sync("forged").await.status(), 401);
    let res = app
        .client
        .post(app.url("/api/sync"))
        .bearer_auth(&token_b)
        .body(vec![b'x'; 64 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
}

#[tokio::test]
async fn sync_status_shows_connection_progress_and_queued_work() {
    let (app, athlete, token) = synced(10).await;
    let status = sync_status(&app, &token).await;
    assert_eq!(status["athlete_id"], athlete);
    assert_eq!(status["connection"], "connected");
    assert_eq!(status["backfill"]["activities_stored"], 10);
    assert_eq!(status["backfill"]["complete"], true);
    assert!(status["backfill"]["estimated_completion"].is_null());
    assert!(status["queued"].is_object());
    assert_eq!(status["budget"]["paused"], false);
    assert!(status["budget"]["next_window_opens_at"].is_null());

    app.admin_pause().await;
    // A pass the budget could not serve yet, then another: still one job.
    app.admin_sync_run().await;
    app.admin_sync_run().await;
    let status = sync_status(&app, &token).await;
    assert_eq!(status["queued"]["gap_fill"], 1);
    assert_eq!(status["budget"]["paused"], true);
    assert_eq!(status["budget"]["blocked"]["gap_fill"]["reason"], "paused");
}

#[tokio::test]
async fn a_thousand_reads_cost_no_strava_call() {
    let (app, athlete, token) = synced(50).await;
    // Nothing in the background may spend the budget while reads are counted.
    app.admin_pause().await;
    let (ledger, strava) = (app.ledger_count().await, app.api_calls().len());
    let activity = app.sim.activities(athlete).unwrap()[7]["id"].clone();
    let paths = [
        "/api/v3/athlete".to_string(),
        "/api/v3/athlete/activities?per_page=50".to_string(),
        format!("/api/v3/activities/{activity}"),
        format!("/api/v3/athletes/{athlete}/stats"),
        "/api/sync".to_string(),
    ];
    for i in 0..1000 {
        let path = &paths[i % paths.len()];
        assert_eq!(app.get_as(&token, path).await.status(), 200, "{path}");
    }
    assert_eq!(app.ledger_count().await, ledger);
    assert_eq!(app.api_calls().len(), strava);
}

#[tokio::test]
async fn an_athlete_needing_reauthorization_is_shown_refused_a_refresh_and_skipped() {
    let app = SimApp::start(config(5), &[]).await;
    let [a, b] = app.sim.athlete_ids()[..] else {
        panic!("two athletes")
    };
    let (token_a, _) = (app.connect(a).await, app.connect(b).await);
    app.state()
        .store
        .write(move |tx| athletes::set_status(tx, a as i64, athletes::Status::NeedsReauth, 0))
        .await
        .unwrap();

    assert_eq!(
        sync_status(&app, &token_a).await["connection"],
        "needs_reauth"
    );
    let res = app.request_sync(&token_a).await;
    assert_eq!(res.status(), 403);
    let fault: Value = res.json().await.unwrap();
    assert_eq!(fault["errors"][0]["code"], "needs_reauth");
    let pass: Value = app.admin_sync_run().await.json().await.unwrap();
    assert_eq!(pass["athletes"], 1, "only the connected athlete is queued");
}

#[tokio::test]
async fn a_create_pushed_by_webhook_is_fetched_with_one_call() {
    let (app, athlete, token) = synced(5).await;
    let secret = app
        .state()
        .store
        .write(|tx| {
            subscription::set_id(tx, 4242)?;
            subscription::path_secret(tx)
        })
        .await
        .unwrap();
    let new = upload(&app, athlete, NewActivity::default());

    let event = serde_json::json!({
        "aspect_type": "create", "event_time": app.state().clock.epoch(), "object_id": new,
        "object_type": "activity", "owner_id": athlete, "subscription_id": 4242, "updates": {},
    });
    let res = app.post_webhook(&secret, event.to_string()).await;
    assert_eq!(res.status(), 200);
    run_until(&app, "the pushed activity is stored", || async {
        is_stored(&app, &token, new).await
    })
    .await;
    assert_eq!(fetch_calls(&app).await, 1);
}

#[tokio::test]
async fn enrichment_fetches_details_of_recent_summaries_newest_first_when_idle() {
    let (app, athlete, token) = synced(5).await;
    // Two fresh uploads, started two hours and one hour ago: the newest,
    // well inside the 14 days enriched.
    let mut fresh = Vec::new();
    for hours in [2, 1] {
        let start = app.sim.now() - chrono::Duration::hours(hours);
        let new = NewActivity {
            start_date: Some(start),
            ..NewActivity::default()
        };
        fresh.push(upload(&app, athlete, new));
    }
    announce(&app, athlete, &fresh).await;
    run_until(&app, "the fresh uploads are stored", || async {
        is_stored(&app, &token, fresh[0]).await && is_stored(&app, &token, fresh[1]).await
    })
    .await;
    // A listing stored them: summaries only, so far.
    let detail = |id: u64| {
        let (app, token) = (&app, &token);
        async move {
            let body: Value = app.get_activity(token, id).await.json().await.unwrap();
            body["resource_state"].as_i64()
        }
    };
    assert_eq!(detail(fresh[1]).await, Some(2));

    let state = app.state().clone();
    let picked = enrich::plan(&state.store, state.clock.epoch())
        .await
        .unwrap();
    assert!(picked >= 1, "nothing else is due, so enrichment is planned");
    state.jobs.wake();
    run_until(&app, "the newest activity has its detail", || async {
        detail(fresh[1]).await == Some(3)
    })
    .await;
    assert!(ledger_calls(&app, "enrichment").await >= 1);
}
