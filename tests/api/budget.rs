//! The shared Strava budget as operators see it and as Strava sees it.

use serde_json::Value;
use strava_sync::model::Purpose;
use strava_sync::simulator::{Faults, Limits, SimConfig, SimSettings};
use strava_sync::strava::client::StravaError;

use crate::helpers::{eventually, TestApp, WAIT};
use crate::sim_app::SimApp;

#[tokio::test]
async fn admin_budget_shows_both_windows_with_their_limits_and_resets() {
    let app = TestApp::spawn_with(&[
        ("STRAVA_RATE_LIMIT_15MIN", "40"),
        ("STRAVA_RATE_LIMIT_DAILY", "400"),
    ])
    .await;
    let res = app.admin_budget().await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let windows = body["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 2);
    assert_eq!(windows[0]["window"], "15min");
    assert_eq!(windows[0]["limit"], 40);
    assert_eq!(windows[0]["used"], 0);
    assert_eq!(windows[1]["window"], "day");
    assert_eq!(windows[1]["limit"], 400);
    let started =
        chrono::DateTime::parse_from_rfc3339(windows[0]["started_at"].as_str().unwrap()).unwrap();
    let resets =
        chrono::DateTime::parse_from_rfc3339(windows[0]["resets_at"].as_str().unwrap()).unwrap();
    assert_eq!((resets - started).num_seconds(), 900);
    assert_eq!(started.timestamp() % 900, 0);
    assert_eq!(body["paused"], false);
    assert_eq!(body["throttled"], false);
    assert_eq!(body["calls_today_by_purpose"]["backfill"], 0);
    assert!(body["forecast"]["exhausted_at"].is_null());
}

#[tokio::test]
async fn pause_blocks_background_purposes_until_resume() {
    let app = TestApp::spawn().await;
    let res = app.admin_pause().await;
    assert_eq!(res.status(), 200);
    let body: Value = app.admin_budget().await.json().await.unwrap();
    assert_eq!(body["paused"], true);
    assert_eq!(body["throttled"], true);
    assert_eq!(body["blocked"]["backfill"]["reason"], "paused");
    assert!(body["blocked"].get("interactive").is_none());
    assert_eq!(app.admin_resume().await.status(), 200);
    let body: Value = app.admin_budget().await.json().await.unwrap();
    assert_eq!(body["paused"], false);
    assert!(body["blocked"].as_object().unwrap().is_empty());
}

#[tokio::test]
async fn admin_routes_need_the_admin_token() {
    let app = TestApp::spawn().await;
    for path in ["/admin/budget", "/admin/athletes"] {
        assert_eq!(app.get(path).await.status(), 401, "{path}");
        assert_eq!(app.get_as("wrong", path).await.status(), 401, "{path}");
    }
    for path in ["/admin/pause", "/admin/resume"] {
        assert_eq!(app.post_as("wrong", path).await.status(), 401, "{path}");
    }
    let body: Value = app.admin_budget().await.json().await.unwrap();
    assert_eq!(body["paused"], false, "a refused pause changed nothing");
    let hidden = TestApp::spawn_with(&[("ADMIN_TOKEN", "")]).await;
    assert_eq!(hidden.admin_pause().await.status(), 404);
}

/// One athlete with a long history, Strava and the service both limited to
/// `per_quarter` calls per 15 minutes.
pub async fn limited(activities: usize, per_quarter: u32) -> SimApp {
    let config = SimConfig {
        athletes: 2,
        activities_per_athlete: activities,
        settings: SimSettings {
            limits: Limits::read_and_overall(per_quarter, 1000),
            ..SimSettings::default()
        },
        ..SimConfig::default()
    };
    let limit = per_quarter.to_string();
    SimApp::start(config, &[("STRAVA_RATE_LIMIT_15MIN", &limit)]).await
}

/// What keeps backfill from calling now, if anything.
async fn backfill_blocked(app: &SimApp) -> Option<String> {
    blocked_in(&app.budget().await)
}

fn blocked_in(budget: &Value) -> Option<String> {
    let reason = &budget["blocked"]["backfill"]["reason"];
    reason
        .as_object()
        .and_then(|r| r.keys().next().cloned())
        .or_else(|| reason.as_str().map(String::from))
}

/// Backfill is held back and every call counted today has been answered
/// (the ledger row is written when the answer arrives, after the permit).
pub async fn settled(app: &SimApp) -> bool {
    let budget = app.budget().await;
    let answered: i64 = app.budget().await["calls_today_by_purpose"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_i64)
        .sum();
    blocked_in(&budget).is_some() && budget["windows"][1]["used"] == answered
}

/// Runs the athlete's backfill to the end, moving both clocks to the next
/// quarter hour whenever the budget holds backfill back. Returns how many
/// windows it took.
async fn backfill_to_the_end(app: &SimApp, athlete: u64) -> u32 {
    let mut windows = 1;
    loop {
        eventually(
            "backfill completes or waits for the budget",
            WAIT,
            || async {
                app.athlete(athlete).await["backfill_complete"] == true || settled(app).await
            },
        )
        .await;
        if app.athlete(athlete).await["backfill_complete"] == true {
            return windows;
        }
        app.advance(app.secs_to_next_quarter() + 1);
        windows += 1;
        assert!(windows < 20, "the backfill does not end");
    }
}

fn status_count(app: &SimApp, status: u16) -> usize {
    app.api_calls()
        .iter()
        .filter(|c| c.status == status)
        .count()
}

#[tokio::test]
async fn a_long_backfill_under_small_limits_never_exceeds_a_window_and_gets_no_429() {
    let app = limited(3000, 10).await;
    let athlete = app.sim.athlete_ids()[0];
    app.connect(athlete).await;
    let windows = backfill_to_the_end(&app, athlete).await;

    assert_eq!(app.athlete(athlete).await["activities"], 3000);
    // The first page (200), 14 backfill pages of 200, and the empty page.
    assert_eq!(app.sim.calls().to("GET /api/v3/athlete/activities"), 16);
    // Backfill leaves each fresh window the 2 calls interactive ones need:
    // 8 calls per window (the first page's included), 16 in all.
    assert_eq!(windows, 2);
    assert!(app.busiest_quarter() <= 10, "{}", app.busiest_quarter());
    assert_eq!(status_count(&app, 429), 0);
    assert_eq!(app.ledger_count().await, app.api_calls().len() as i64);
}

#[tokio::test]
async fn a_restart_mid_window_resumes_the_count_and_the_cursor() {
    let mut app = limited(1500, 10).await;
    let athlete = app.sim.athlete_ids()[0];
    app.connect(athlete).await;
    eventually("backfill waits for the next window", WAIT, || settled(&app)).await;
    let before = app.api_calls().len();
    // Backfill leaves the window 2 calls: the first page and 7 pages.
    assert_eq!(before, 8);
    app.restart().await;
    let budget = app.budget().await;
    assert_eq!(budget["windows"][0]["used"], 8, "the count survived");
    assert_eq!(backfill_blocked(&app).await.as_deref(), Some("full"));
    assert_eq!(app.api_calls().len(), before);

    backfill_to_the_end(&app, athlete).await;
    assert_eq!(app.athlete(athlete).await["activities"], 1500);
    // 200 + 6 × 200 and the last 100 in the first window, the empty page in
    // the next: no page was fetched twice.
    assert_eq!(app.sim.calls().to("GET /api/v3/athlete/activities"), 9);
    assert!(app.busiest_quarter() <= 10);
    assert_eq!(status_count(&app, 429), 0);
    assert_eq!(app.ledger_count().await, app.api_calls().len() as i64);
}

#[tokio::test]
async fn usage_reported_for_other_clients_holds_our_calls_back() {
    let app = limited(3000, 10).await;
    let athlete = app.sim.athlete_ids()[0];
    app.sim.add_other_client_calls(7);
    app.connect(athlete).await;
    eventually("backfill waits for the next window", WAIT, || async {
        backfill_blocked(&app).await.is_some()
    })
    .await;
    // The first page's answer said 8 were used: only interactive's reserve
    // was left.
    let budget = app.budget().await;
    assert_eq!(budget["windows"][0]["used"], 8);
    assert_eq!(budget["windows"][0]["reported_usage"], 8);
    assert_eq!(budget["windows"][0]["reported_limit"], 10);
    assert_eq!(app.api_calls().len(), 1);
    app.advance(app.secs_to_next_quarter() + 1);
    eventually("backfill resumes", WAIT, || async {
        app.api_calls().len() > 1
    })
    .await;
    assert_eq!(status_count(&app, 429), 0);
}

#[tokio::test]
async fn after_a_429_nothing_is_sent_until_the_window_resets() {
    let app = limited(300, 10).await;
    let athlete = app.sim.athlete_ids()[0];
    app.sim.add_other_client_calls(10);
    app.connect(athlete).await;
    eventually("the budget locks the window", WAIT, || async {
        app.budget().await["windows"][0]["exhausted"] == true
    })
    .await;
    let budget = app.budget().await;
    let reason = &budget["blocked"]["interactive"]["reason"];
    assert_eq!(reason, &serde_json::json!({"rate_limited": "15min"}));
    assert_eq!(
        budget["blocked"]["interactive"]["until"],
        budget["windows"][0]["resets_at"]
    );
    assert_eq!(app.api_calls().len(), 1);
    assert_eq!(status_count(&app, 429), 1);

    let refused_at = app.api_calls()[0].at.timestamp();
    app.advance(app.secs_to_next_quarter() + 1);
    backfill_to_the_end(&app, athlete).await;
    assert_eq!(app.athlete(athlete).await["activities"], 300);
    let calls = app.api_calls();
    assert!(calls[1..]
        .iter()
        .all(|c| c.at.timestamp().div_euclid(900) > refused_at.div_euclid(900)));
    assert_eq!(status_count(&app, 429), 1);
    assert_eq!(app.ledger_count().await, calls.len() as i64);
}

#[tokio::test]
async fn an_interactive_first_page_overtakes_queued_backfill() {
    let app = limited(3000, 10).await;
    let [long, newcomer] = app.sim.athlete_ids()[..] else {
        panic!("two athletes")
    };
    app.connect(long).await;
    eventually("backfill waits for the next window", WAIT, || async {
        settled(&app).await && app.athlete(long).await["activities"] == 1600
    })
    .await;
    // Same window, no time moved: the newcomer's first page goes at once.
    app.connect(newcomer).await;
    eventually("the newcomer's first page is stored", WAIT, || async {
        app.athlete(newcomer).await["activities"] == 200
    })
    .await;
    assert_eq!(app.athlete(long).await["backfill_complete"], false);
    assert_eq!(app.athlete(long).await["activities"], 1600);
    assert!(app.busiest_quarter() <= 10);
    assert_eq!(status_count(&app, 429), 0);
}

#[tokio::test]
async fn failures_are_retried_each_with_a_permit_until_the_circuit_opens() {
    let app = limited(10, 100).await;
    let athlete = app.sim.athlete_ids()[0];
    app.connect(athlete).await;
    eventually("the backfill completes", WAIT, || async {
        app.athlete(athlete).await["backfill_complete"] == true
    })
    .await;
    let strava = app.state().strava.clone();
    let get = || strava.get_athlete(athlete as i64, Purpose::Interactive);
    let before = app.api_calls().len();

    let fail = |count| Faults {
        count,
        status: Some(503),
        latency_ms: 0,
    };
    app.sim.inject_faults(fail(2)).unwrap();
    get().await.expect("the third attempt succeeds");
    assert_eq!(app.api_calls().len(), before + 3);

    // Five failures in a row open the circuit: the next attempt is not sent.
    app.sim.inject_faults(fail(100)).unwrap();
    assert!(matches!(get().await, Err(StravaError::Server(503))));
    assert!(matches!(get().await, Err(StravaError::CircuitOpen(_))));
    assert_eq!(app.api_calls().len(), before + 8);
    assert!(matches!(get().await, Err(StravaError::CircuitOpen(_))));
    assert_eq!(app.api_calls().len(), before + 8);

    // A minute later one trial call goes; Strava has recovered.
    app.sim.inject_faults(fail(0)).unwrap();
    app.advance(61);
    get().await.expect("the circuit half-opens");

    // Details come back as Strava sent them; a missing one is a typed 404.
    let id = app.sim.activities(athlete).unwrap()[0]["id"]
        .as_i64()
        .unwrap();
    let detail = strava
        .get_activity(athlete as i64, Purpose::Webhook, id)
        .await
        .unwrap();
    let detail: serde_json::Value = serde_json::from_str(detail.get()).unwrap();
    assert_eq!(detail, app.sim.activity(id as u64).unwrap());
    assert_eq!(detail["resource_state"], 3);
    let missing = strava
        .get_activity(athlete as i64, Purpose::Webhook, 1)
        .await;
    assert!(matches!(missing, Err(StravaError::NotFound)));

    let calls = app.api_calls().len() as i64;
    assert_eq!(app.ledger_count().await, calls);
    let budget = app.budget().await;
    assert_eq!(
        budget["windows"][1]["used"], calls,
        "every attempt took a permit"
    );
    let metrics = app.metrics().await.text().await.unwrap();
    assert!(
        metrics.contains(
            r#"strava_calls_total{endpoint="GET /athlete",status="503",purpose="interactive"}"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"strava_budget_used{window="15min"}"#),
        "{metrics}"
    );
    // Gauges are process-wide and other tests' services set them too.
    assert!(metrics.contains("\njobs_queued "), "{metrics}");
    assert!(
        metrics.contains(r#"strava_budget_limit{window="day"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn while_paused_only_interactive_work_reaches_strava() {
    let app = limited(500, 100).await;
    let athlete = app.sim.athlete_ids()[0];
    let pause = app.admin_pause().await;
    assert_eq!(pause.status(), 200);
    app.connect(athlete).await;
    eventually("the first page is stored", WAIT, || async {
        app.athlete(athlete).await["activities"] == 200
    })
    .await;
    let budget = app.budget().await;
    assert_eq!(budget["paused"], true);
    assert_eq!(budget["blocked"]["backfill"]["reason"], "paused");
    assert_eq!(app.api_calls().len(), 1, "the backfill waits");

    let resume = app.admin_resume().await;
    assert_eq!(resume.status(), 200);
    eventually("the backfill completes", WAIT, || async {
        app.athlete(athlete).await["backfill_complete"] == true
    })
    .await;
    assert_eq!(app.athlete(athlete).await["activities"], 500);
}
