//! Connecting athletes through Strava OAuth: the redirect, the callback and
//! each way it can fail, and disconnecting.

use std::collections::HashMap;

use serde_json::Value;
use strava_sync::model::Purpose;
use strava_sync::simulator::{OAuthMode, SimConfig};
use strava_sync::strava::client::StravaError;

use crate::helpers::{eventually, TestApp, WAIT};
use crate::sim_app::SimApp;

/// `GET /auth/strava` and the query of the Strava URL it redirects to.
pub async fn start_connect(app: &TestApp) -> HashMap<String, String> {
    let res = app.connect_start().await;
    assert_eq!(res.status(), 302);
    let location = res.headers()["location"].to_str().unwrap();
    reqwest::Url::parse(location)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

async fn fault(res: reqwest::Response) -> (u16, Value) {
    (res.status().as_u16(), res.json().await.unwrap())
}

#[tokio::test]
async fn connect_redirects_to_strava_with_a_fresh_state_each_time() {
    let app = TestApp::spawn_with(&[
        ("PUBLIC_URL", "https://sync.example"),
        ("STRAVA_OAUTH_URL", "https://oauth.example/oauth"),
    ])
    .await;
    let res = app.connect_start().await;
    assert_eq!(res.status(), 302);
    let location = res.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with("https://oauth.example/oauth/authorize?"),
        "{location}"
    );
    let query = start_connect(&app).await;
    assert_eq!(query["client_id"], "1234");
    assert_eq!(
        query["redirect_uri"],
        "https://sync.example/auth/strava/callback"
    );
    assert_eq!(query["response_type"], "code");
    assert_eq!(query["approval_prompt"], "auto");
    assert_eq!(query["scope"], "read,activity:read_all");
    assert_eq!(query["state"].len(), 64);
    assert_ne!(query["state"], start_connect(&app).await["state"]);
}

#[tokio::test]
async fn a_forged_missing_or_malformed_state_is_refused() {
    let app = TestApp::spawn().await;
    for query in [
        "state=forged&code=abc&scope=read,activity:read_all".to_string(),
        "code=abc&scope=read,activity:read_all".to_string(),
        "state=&code=abc".to_string(),
        format!("state={}&code=abc", "a".repeat(5000)),
        "state=ab%00cd&code=abc".to_string(),
    ] {
        let (status, body) = fault(app.connect_callback(&query).await).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(body["errors"][0]["field"], "state", "{query}");
    }
}

#[tokio::test]
async fn denial_is_forbidden_and_its_state_cannot_be_reused() {
    let app = TestApp::spawn().await;
    let state = &start_connect(&app).await["state"];
    let denied = format!("state={state}&error=access_denied");
    let (status, body) = fault(app.connect_callback(&denied).await).await;
    assert_eq!(status, 403);
    assert_eq!(body["errors"][0]["code"], "access_denied");
    let (status, body) = fault(app.connect_callback(&denied).await).await;
    assert_eq!(status, 400, "a used state is refused: {body}");
}

#[tokio::test]
async fn an_unexpected_error_from_strava_is_a_bad_request_that_echoes_nothing() {
    let app = TestApp::spawn().await;
    let state = &start_connect(&app).await["state"];
    let hostile = "%3Cscript%3Ealert(1)%3C%2Fscript%3E";
    let (status, body) = fault(
        app.connect_callback(&format!("state={state}&error={hostile}"))
            .await,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["field"], "error");
    assert!(!body.to_string().contains("script"), "{body}");
}

#[tokio::test]
async fn a_scope_with_control_characters_is_a_bad_request() {
    let app = TestApp::spawn().await;
    let state = &start_connect(&app).await["state"];
    let (status, body) = fault(
        app.connect_callback(&format!(
            "state={state}&code=abc&scope=read,activity:read_all%00"
        ))
        .await,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["field"], "scope");
}

#[tokio::test]
async fn a_missing_code_is_a_bad_request() {
    let app = TestApp::spawn().await;
    let state = &start_connect(&app).await["state"];
    let (status, body) = fault(
        app.connect_callback(&format!("state={state}&scope=read,activity:read"))
            .await,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["field"], "code");
}

#[tokio::test]
async fn disconnect_needs_an_api_token() {
    let app = TestApp::spawn().await;
    let res = app.post("/auth/disconnect").await;
    assert_eq!(res.status(), 401);
    let res = app.disconnect("not-a-token").await;
    assert_eq!(res.status(), 401);
    let res = app
        .client
        .post(app.url("/auth/disconnect"))
        .body(vec![b'x'; 64 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
}

fn athletes_with(activities: usize) -> SimConfig {
    SimConfig {
        athletes: 2,
        activities_per_athlete: activities,
        ..SimConfig::default()
    }
}

/// Waits until the athlete's history is complete locally.
async fn backfilled(app: &SimApp, athlete: u64) -> Value {
    eventually("the backfill completes", WAIT, || async {
        app.athlete(athlete).await["backfill_complete"] == true
    })
    .await;
    app.athlete(athlete).await
}

#[tokio::test]
async fn connecting_stores_the_athlete_issues_a_token_and_syncs_the_history() {
    let app = SimApp::start(athletes_with(250), &[]).await;
    let athlete = app.sim.athlete_ids()[0];
    let res = app.connect_response(athlete).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["token"].as_str().unwrap().len(), 64);
    assert_eq!(body["athlete"]["id"], athlete);
    assert_eq!(body["athlete"], app.sim.athlete(athlete).unwrap());

    let synced = backfilled(&app, athlete).await;
    // The issued token reads the stored copy, newest first, as Strava sent it.
    let token = body["token"].as_str().unwrap();
    let listed: Vec<Value> = app
        .list_activities(token, "per_page=200&page=2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed[..], app.sim.activities(athlete).unwrap()[200..]);
    assert_eq!(synced["status"], "connected");
    assert_eq!(synced["scope"], "read,activity:read_all");
    assert_eq!(synced["activities"], 250);
    // First page (200, interactive), then the backfill: 50 more, then empty.
    assert_eq!(app.sim.calls().to("GET /api/v3/athlete/activities"), 3);
    let budget = app.budget().await;
    assert_eq!(budget["calls_today_by_purpose"]["interactive"], 1);
    assert_eq!(budget["calls_today_by_purpose"]["backfill"], 2);
    assert_eq!(budget["windows"][0]["used"], 3);
    assert_eq!(app.ledger_count().await, app.api_calls().len() as i64);
    let ledger = app
        .state()
        .store
        .read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT endpoint, athlete_id, purpose, status, usage_15min, usage_daily
                 FROM strava_calls ORDER BY id",
            )?;
            let rows = stmt.query_map(strava_sync::params![], |r| {
                Ok(format!(
                    "{} {} {} {} {}/{}",
                    r.get::<String>(0)?,
                    r.get::<i64>(1)?,
                    r.get::<String>(2)?,
                    r.get::<i64>(3)?,
                    r.get::<i64>(4)?,
                    r.get::<i64>(5)?
                ))
            })?;
            rows.collect::<Result<Vec<_>, _>>()
        })
        .await
        .unwrap();
    let row = |purpose, n| format!("GET /athlete/activities {athlete} {purpose} 200 {n}/{n}");
    assert_eq!(
        ledger,
        [
            row("interactive", 1),
            row("backfill", 2),
            row("backfill", 3)
        ]
    );
}

#[tokio::test]
async fn with_an_app_redirect_the_browser_lands_there_with_the_token() {
    let app = SimApp::start(
        athletes_with(5),
        &[("APP_REDIRECT_URL", "https://app.example/connected")],
    )
    .await;
    let athlete = app.sim.athlete_ids()[1];
    let res = app.connect_response(athlete).await;
    assert_eq!(res.status(), 302);
    let location = res.headers()["location"].to_str().unwrap();
    let (base, fragment) = location.split_once('#').unwrap();
    assert_eq!(base, "https://app.example/connected");
    let params: HashMap<_, _> = fragment
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    assert_eq!(params["token"].len(), 64);
    assert_eq!(params["athlete_id"], athlete.to_string());
}

#[tokio::test]
async fn a_callback_replayed_or_with_a_forged_state_or_bad_code_stores_nothing_more() {
    let app = SimApp::start(athletes_with(5), &[]).await;
    let [first, second] = app.sim.athlete_ids()[..] else {
        panic!("two athletes")
    };
    let callback = app.authorize(first).await;
    assert_eq!(app.callback(&callback).await.status(), 200);
    let (status, body) = fault(app.callback(&callback).await).await;
    assert_eq!(status, 400, "a reused state: {body}");

    let callback = app.authorize(second).await;
    let forged = callback.replace("state=", "state=0");
    let (status, body) = fault(app.callback(&forged).await).await;
    assert_eq!(
        (status, &body["errors"][0]["field"]),
        (400, &Value::from("state"))
    );

    let callback = app.authorize(second).await;
    let bad_code = callback.replace("code=", "code=x");
    let (status, body) = fault(app.callback(&bad_code).await).await;
    assert_eq!(
        (status, &body["errors"][0]["field"]),
        (400, &Value::from("code"))
    );
    assert_eq!(
        app.sim.calls().by_status.get(&400),
        Some(&1),
        "one exchange refused"
    );

    let athletes = app.athletes().await;
    assert_eq!(athletes["athletes"].as_array().unwrap().len(), 1);
    assert!(app.athlete(second).await.is_null());
}

#[tokio::test]
async fn a_state_older_than_ten_minutes_is_refused() {
    let app = SimApp::start(athletes_with(5), &[]).await;
    let callback = app.authorize(app.sim.athlete_ids()[0]).await;
    app.advance(strava_sync::http::connect::STATE_TTL_SECS as u64 + 1);
    let (status, body) = fault(app.callback(&callback).await).await;
    assert_eq!(
        (status, &body["errors"][0]["field"]),
        (400, &Value::from("state"))
    );
    assert!(app.athletes().await["athletes"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_denial_or_a_narrow_scope_is_forbidden_and_nothing_is_stored_or_synced() {
    let app = SimApp::start(athletes_with(5), &[]).await;
    let athlete = app.sim.athlete_ids()[0];
    app.sim.update_settings(|s| s.oauth = OAuthMode::Deny);
    let (status, body) = fault(app.connect_response(athlete).await).await;
    assert_eq!(
        (status, &body["errors"][0]["code"]),
        (403, &Value::from("access_denied"))
    );

    app.sim
        .update_settings(|s| s.oauth = OAuthMode::Grant("read".into()));
    let (status, body) = fault(app.connect_response(athlete).await).await;
    assert_eq!(status, 403);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("activity:read_all"),
        "{body}"
    );

    assert!(app.athletes().await["athletes"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(app.token_calls(athlete), 0, "no code was exchanged");
    assert!(app.api_calls().is_empty());
}

#[tokio::test]
async fn disconnect_deauthorizes_at_strava_and_purges_the_athlete() {
    let app = SimApp::start(athletes_with(30), &[]).await;
    let athlete = app.sim.athlete_ids()[0];
    let token = app.connect(athlete).await;
    backfilled(&app, athlete).await;
    let res = app.disconnect(&token).await;
    assert_eq!(res.status(), 200);
    assert!(!app.sim.is_connected(athlete), "access revoked at Strava");
    assert!(app.athlete(athlete).await.is_null());
    let counts = app
        .state()
        .store
        .read(move |c| {
            let n = |sql: &str| c.query_row(sql, [athlete as i64], |r| r.get::<i64>(0));
            Ok([
                n("SELECT COUNT(*) FROM activities WHERE athlete_id = ?1")?,
                n("SELECT COUNT(*) FROM strava_tokens WHERE athlete_id = ?1")?,
                n("SELECT COUNT(*) FROM api_tokens WHERE athlete_id = ?1")?,
                n("SELECT COUNT(*) FROM jobs WHERE athlete_id = ?1")?,
            ])
        })
        .await
        .unwrap();
    assert_eq!(counts, [0; 4]);
    assert_eq!(
        app.disconnect(&token).await.status(),
        401,
        "the API token is revoked"
    );
}

#[tokio::test]
async fn concurrent_calls_with_an_expired_token_refresh_it_once_and_keep_the_rotated_one() {
    let app = SimApp::start(athletes_with(10), &[]).await;
    let athlete = app.sim.athlete_ids()[0];
    app.connect(athlete).await;
    backfilled(&app, athlete).await;
    assert_eq!(app.token_calls(athlete), 1, "the code exchange");

    app.advance(6 * 3600 + 60);
    let calls = (0..20).map(|_| {
        let strava = app.state().strava.clone();
        tokio::spawn(async move {
            strava
                .get_athlete(athlete as i64, Purpose::Interactive)
                .await
        })
    });
    for call in futures_util::future::join_all(calls).await {
        call.unwrap()
            .expect("every call succeeds with the refreshed token");
    }
    assert_eq!(app.token_calls(athlete), 2, "exactly one refresh");

    // Strava killed the old refresh token when it rotated; only the stored
    // newest one can refresh again.
    app.advance(6 * 3600 + 60);
    app.state()
        .strava
        .get_athlete(athlete as i64, Purpose::Interactive)
        .await
        .unwrap();
    assert_eq!(app.token_calls(athlete), 3);
    assert_eq!(app.athlete(athlete).await["status"], "connected");
}

#[tokio::test]
async fn a_refused_refresh_means_re_authorization_and_no_further_calls() {
    let app = SimApp::start(athletes_with(10), &[]).await;
    let athlete = app.sim.athlete_ids()[0];
    app.connect(athlete).await;
    backfilled(&app, athlete).await;
    app.sim.deauthorize(athlete, None).unwrap();
    app.advance(6 * 3600 + 60);

    let strava = app.state().strava.clone();
    for _ in 0..3 {
        let err = strava
            .get_athlete(athlete as i64, Purpose::Interactive)
            .await
            .unwrap_err();
        assert!(matches!(err, StravaError::NeedsReauth), "{err}");
    }
    assert_eq!(app.athlete(athlete).await["status"], "needs_reauth");
    let calls_then = app.sim.calls().total;
    // The exchange, then one refused refresh (Strava cannot tell whose it
    // was), never retried.
    assert_eq!(app.sim.calls().to("POST /oauth/token"), 2);

    // Queued work for the athlete waits instead of running.
    let job = app
        .state()
        .jobs
        .push(athlete as i64, strava_sync::model::job::Task::Backfill)
        .await
        .unwrap();
    assert_eq!(app.run_jobs_until_idle().await, 0, "no job may run");
    let status = app
        .state()
        .store
        .read(move |c| strava_sync::store::jobs::get(c, athlete as i64, job))
        .await
        .unwrap()
        .unwrap()
        .status;
    assert_eq!(status, "queued");
    assert_eq!(app.sim.calls().total, calls_then, "nothing more was sent");
}

/// `GET /api/sync` as JSON.
async fn sync_state(app: &SimApp, token: &str) -> Value {
    let res = app.sync_status(token).await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// Queues a manual refresh and returns its job id.
async fn refresh(app: &SimApp, token: &str) -> i64 {
    let res = app.request_sync(token).await;
    assert_eq!(res.status(), 202);
    res.json::<Value>().await.unwrap()["job_id"]
        .as_i64()
        .unwrap()
}

/// The status of one of the athlete's jobs.
async fn job_status(app: &SimApp, token: &str, job: i64) -> Value {
    app.sync_job(token, job)
        .await
        .json::<Value>()
        .await
        .unwrap()["status"]
        .clone()
}

#[tokio::test]
async fn a_scope_claimed_in_the_callback_but_refused_by_strava_marks_the_athlete() {
    let app = SimApp::start(athletes_with(5), &[]).await;
    let athlete = app.sim.athlete_ids()[0];
    app.sim
        .update_settings(|s| s.oauth = OAuthMode::Grant("read".into()));
    let callback = app.authorize(athlete).await;
    // The browser edits Strava's redirect to claim more than was granted.
    let claimed = callback.replace("scope=read", "scope=read,activity:read_all");
    assert_ne!(claimed, callback);
    let res = app.callback(&claimed).await;
    assert_eq!(res.status(), 200);
    let token = res.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();

    // The first page is refused for the missing scope.
    eventually("the athlete is marked", WAIT, || async {
        sync_state(&app, &token).await["connection"] == "needs_reauth"
    })
    .await;
    let state = sync_state(&app, &token).await;
    assert_eq!(state["scope"], "read", "{state}");
    assert_eq!(state["missing_scope"], "activity:read_all", "{state}");
    let calls = app.api_calls().len();
    assert_eq!(app.request_sync(&token).await.status(), 403);
    assert_eq!(app.run_jobs_until_idle().await, 0);
    assert_eq!(app.api_calls().len(), calls, "nothing more is sent");
}

#[tokio::test]
async fn a_token_refused_before_its_expiry_is_refreshed_once_and_the_call_retried() {
    let app = SimApp::start(athletes_with(10), &[]).await;
    let athlete = app.sim.athlete_ids()[0];
    let token = app.connect(athlete).await;
    backfilled(&app, athlete).await;
    // Strava's clock runs ahead of ours: the token expired there, not here.
    app.sim
        .advance(std::time::Duration::from_secs(6 * 3600 + 60));

    let job = refresh(&app, &token).await;
    eventually("the refresh is done", WAIT, || async {
        job_status(&app, &token, job).await == "done"
    })
    .await;
    assert_eq!(app.token_calls(athlete), 2, "the exchange and one refresh");
    assert_eq!(sync_state(&app, &token).await["connection"], "connected");
}

#[tokio::test]
async fn a_revoked_token_gets_one_refresh_then_the_athlete_must_reauthorize() {
    let app = SimApp::start(athletes_with(10), &[]).await;
    let athlete = app.sim.athlete_ids()[0];
    let token = app.connect(athlete).await;
    backfilled(&app, athlete).await;
    // Revoked at Strava, with no deauthorization event to tell us.
    app.sim.deauthorize(athlete, None).unwrap();

    let job = refresh(&app, &token).await;
    // The athlete is marked first, then the job's outcome is recorded.
    eventually("the athlete is marked and the job waits", WAIT, || async {
        sync_state(&app, &token).await["connection"] == "needs_reauth"
            && job_status(&app, &token, job).await == "queued"
    })
    .await;
    assert_eq!(
        app.sim.calls().to("POST /oauth/token"),
        2,
        "one refused refresh"
    );
}
