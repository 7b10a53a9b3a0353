//! The control interface (Rust and `/_sim` HTTP), fault injection, call
//! counts, and bad input to the simulator's own endpoints.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use strava_sync::simulator::{ActivityUpdate, Faults, NewActivity, SimConfig, SimError};

use super::*;

async fn control(
    sim: &SimHandle,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let req = client().request(method, format!("{}{path}", sim.control_url()));
    let req = match body {
        Some(body) => req.json(&body),
        None => req,
    };
    req.send().await.unwrap()
}

#[tokio::test]
async fn activities_created_renamed_and_deleted_over_http_change_the_api() {
    let sim = start(SimConfig::default()).await;
    let c = connect(&sim, "read,activity:read_all").await;
    let res = control(
        &sim,
        reqwest::Method::POST,
        &format!("/athletes/{}/activities", c.athlete_id),
        Some(json!({"name": "Test ride", "sport_type": "GravelRide"})),
    )
    .await;
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.unwrap();
    let id = created["id"].as_u64().unwrap();
    assert_eq!(created["type"], "Ride");
    let newest: Vec<Value> = api_get(&sim, &c.access_token, "/athlete/activities?per_page=1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(newest[0]["name"], "Test ride");

    let res = control(
        &sim,
        reqwest::Method::PATCH,
        &format!("/activities/{id}"),
        Some(json!({"name": "Renamed", "private": true})),
    )
    .await;
    assert_eq!(res.status(), 200);
    let detail: Value = api_get(&sim, &c.access_token, &format!("/activities/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(detail["name"], "Renamed");
    assert_eq!(detail["visibility"], "only_me");

    let res = control(
        &sim,
        reqwest::Method::DELETE,
        &format!("/activities/{id}"),
        None,
    )
    .await;
    assert_eq!(res.status(), 204);
    assert_eq!(
        api_get(&sim, &c.access_token, &format!("/activities/{id}"))
            .await
            .status(),
        404
    );
    let truth: Vec<Value> = control(
        &sim,
        reqwest::Method::GET,
        &format!("/athletes/{}/activities", c.athlete_id),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(truth.len(), 100);
    assert!(truth.iter().all(|a| a["id"] != id));
}

#[tokio::test]
async fn new_activities_get_larger_ids() {
    let sim = start(SimConfig::default()).await;
    let athlete = sim.athlete_ids()[2];
    let max = sim
        .athlete_ids()
        .iter()
        .flat_map(|a| sim.activities(*a).unwrap())
        .map(|a| a["id"].as_u64().unwrap())
        .max()
        .unwrap();
    let created = sim
        .create_activity(athlete, NewActivity::default(), None)
        .unwrap();
    assert!(created["id"].as_u64().unwrap() > max);
}

#[tokio::test]
async fn the_rust_api_refuses_unknown_ids_and_bad_values() {
    let sim = start(SimConfig::default()).await;
    let athlete = sim.athlete_ids()[0];
    assert_eq!(
        sim.create_activity(1, NewActivity::default(), None),
        Err(SimError::UnknownAthlete(1))
    );
    assert_eq!(
        sim.delete_activity(1, None),
        Err(SimError::UnknownActivity(1))
    );
    assert_eq!(
        sim.update_activity(1, ActivityUpdate::default(), None),
        Err(SimError::UnknownActivity(1))
    );
    assert_eq!(sim.deauthorize(1, None), Err(SimError::UnknownAthlete(1)));
    let bad_sport = NewActivity {
        sport_type: Some("Teleport".into()),
        ..NewActivity::default()
    };
    assert!(matches!(
        sim.create_activity(athlete, bad_sport, None),
        Err(SimError::Invalid { .. })
    ));
    let blank = NewActivity {
        name: Some("  ".into()),
        ..NewActivity::default()
    };
    assert!(matches!(
        sim.create_activity(athlete, blank, None),
        Err(SimError::Invalid { .. })
    ));
    assert!(sim
        .inject_faults(Faults {
            count: 1,
            status: Some(404),
            latency_ms: 0
        })
        .is_err());
}

#[tokio::test]
async fn control_endpoints_answer_bad_input_with_faults() {
    let sim = start(SimConfig::default()).await;
    let athlete = sim.athlete_ids()[0];
    let post = reqwest::Method::POST;
    let cases: Vec<(reqwest::Method, String, Option<Value>, u16)> = vec![
        (
            post.clone(),
            "/athletes/1/activities".into(),
            Some(json!({})),
            404,
        ),
        (
            post.clone(),
            format!("/athletes/{athlete}/activities"),
            Some(json!({"nme": "typo"})),
            400,
        ),
        (
            post.clone(),
            format!("/athletes/{athlete}/activities"),
            Some(json!({"sport_type": 7})),
            400,
        ),
        (
            post.clone(),
            format!("/athletes/{athlete}/activities"),
            Some(json!({"name": "x".repeat(300)})),
            400,
        ),
        (
            post.clone(),
            "/athletes/abc/activities".into(),
            Some(json!({})),
            400,
        ),
        (
            post.clone(),
            format!("/athletes/{athlete}/activities?push=maybe"),
            Some(json!({})),
            400,
        ),
        (
            post.clone(),
            format!("/athletes/{athlete}/activities?shove=true"),
            Some(json!({})),
            400,
        ),
        (
            reqwest::Method::PATCH,
            "/activities/1".into(),
            Some(json!({"name": "x"})),
            404,
        ),
        (reqwest::Method::DELETE, "/activities/1".into(), None, 404),
        (
            reqwest::Method::PATCH,
            "/settings".into(),
            Some(json!({"nope": 1})),
            400,
        ),
        (
            reqwest::Method::PATCH,
            "/settings".into(),
            Some(json!({"limits": {"read_15min": -1}})),
            400,
        ),
        (
            reqwest::Method::PATCH,
            "/settings".into(),
            Some(json!({"subscription_id_as_string_probability": 2.0})),
            400,
        ),
        (
            reqwest::Method::PATCH,
            "/settings".into(),
            Some(json!([1, 2])),
            400,
        ),
        (
            post.clone(),
            "/faults".into(),
            Some(json!({"count": 1, "status": 200})),
            400,
        ),
        (
            post.clone(),
            "/other-usage".into(),
            Some(json!({"calls": "many"})),
            400,
        ),
        (post.clone(), "/athletes/1/next-login".into(), None, 404),
        (
            post.clone(),
            "/clock/advance".into(),
            Some(json!({"secs": -5})),
            400,
        ),
    ];
    for (method, path, body, status) in cases {
        let res = control(&sim, method.clone(), &path, body).await;
        assert_eq!(res.status(), status, "{method} {path}");
        let fault: Value = res.json().await.unwrap();
        assert!(fault["errors"].is_array(), "{path}: {fault}");
    }
    let malformed = client()
        .post(format!(
            "{}/athletes/{athlete}/activities",
            sim.control_url()
        ))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    let oversized = client()
        .post(format!(
            "{}/athletes/{athlete}/activities",
            sim.control_url()
        ))
        .json(&json!({"name": "x".repeat(20_000)}))
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), 413);
    assert_eq!(
        sim.activities(athlete).unwrap().len(),
        100,
        "nothing was created"
    );
}

#[tokio::test]
async fn settings_clock_and_usage_are_readable_and_patchable_over_http() {
    let sim = start(SimConfig::default()).await;
    let res = control(
        &sim,
        reqwest::Method::PATCH,
        "/settings",
        Some(json!({"limits": {"read_15min": 7}, "oauth": "deny"})),
    )
    .await;
    assert_eq!(res.status(), 200);
    let settings = sim.settings();
    assert_eq!(settings.limits.read_15min, 7);
    assert_eq!(settings.limits.read_daily, 1000, "untouched keys stay");
    assert_eq!(settings.oauth, strava_sync::simulator::OAuthMode::Deny);
    let res = control(
        &sim,
        reqwest::Method::PATCH,
        "/settings",
        Some(json!({"oauth": {"grant": "read"}})),
    )
    .await;
    assert_eq!(res.status(), 200);

    let before = sim.now();
    let res: Value = control(
        &sim,
        reqwest::Method::POST,
        "/clock/advance",
        Some(json!({"secs": 3600})),
    )
    .await
    .json()
    .await
    .unwrap();
    let after: chrono::DateTime<chrono::Utc> = serde_json::from_value(res["now"].clone()).unwrap();
    assert!(after - before >= chrono::Duration::seconds(3600));
    let usage: Value = control(&sim, reqwest::Method::GET, "/usage", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(usage["limits"]["read_15min"], 7);
    let athletes: Vec<Value> = control(&sim, reqwest::Method::GET, "/athletes", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(athletes.len(), 3);
    assert_eq!(athletes[0]["activity_count"], 100);
}

#[tokio::test]
async fn calls_are_counted_by_endpoint_athlete_and_status() {
    let sim = start(SimConfig::default()).await;
    let c = connect(&sim, "read,activity:read").await;
    api_get(&sim, &c.access_token, "/athlete/activities").await;
    api_get(&sim, &c.access_token, "/athlete/activities?page=2").await;
    let one = sim.activities(c.athlete_id).unwrap()[0]["id"]
        .as_u64()
        .unwrap();
    api_get(&sim, &c.access_token, &format!("/activities/{one}")).await;
    api_get(&sim, "forged", "/athlete").await;
    let stats: Value = control(&sim, reqwest::Method::GET, "/calls", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stats["by_endpoint"]["GET /api/v3/athlete/activities"], 2);
    assert_eq!(stats["by_endpoint"]["GET /api/v3/activities/{id}"], 1);
    assert_eq!(stats["by_endpoint"]["POST /oauth/token"], 1);
    assert_eq!(
        stats["by_athlete"][c.athlete_id.to_string()],
        5,
        "authorize, token and three API calls"
    );
    assert_eq!(stats["by_status"]["401"], 1);
    assert_eq!(sim.calls().to("GET /api/v3/athlete"), 1);
}

#[tokio::test]
async fn injected_faults_answer_5xx_for_the_next_calls_then_stop() {
    let sim = start(SimConfig::default()).await;
    let c = connect(&sim, "read,activity:read").await;
    let res = control(
        &sim,
        reqwest::Method::POST,
        "/faults",
        Some(json!({"count": 2, "status": 503})),
    )
    .await;
    assert_eq!(res.status(), 204);
    for _ in 0..2 {
        let res = api_get(&sim, &c.access_token, "/athlete").await;
        assert_eq!(res.status(), 503);
        assert!(
            res.headers().get("x-ratelimit-usage").is_some(),
            "faults are counted calls"
        );
    }
    assert_eq!(
        api_get(&sim, &c.access_token, "/athlete").await.status(),
        200
    );

    sim.inject_faults(Faults {
        count: 1,
        status: None,
        latency_ms: 300,
    })
    .unwrap();
    let started = Instant::now();
    assert_eq!(
        api_get(&sim, &c.access_token, "/athlete").await.status(),
        200
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// Kills the child process when the test ends, pass or fail.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_simulator_command_runs_alone_and_prints_its_urls() {
    use std::io::{BufRead, BufReader};
    let mut child = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_strava-sync"))
            .args([
                "simulator",
                "--port",
                "0",
                "--athletes",
                "2",
                "--activities",
                "10",
            ])
            .env_clear()
            .env("LOG_FORMAT", "json")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Drain stdout on a thread (the child must never hit a closed pipe);
    // log lines are JSON, the banner is plain text.
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !line.starts_with('{') {
                let _ = tx.send(line);
            }
        }
    });
    let printed: Vec<String> = (0..5)
        .map(|_| rx.recv_timeout(Duration::from_secs(60)).unwrap())
        .collect();
    let base = printed[0]
        .strip_prefix("Strava simulator on ")
        .unwrap()
        .to_string();
    assert!(base.starts_with("http://127.0.0.1:"), "{printed:?}");
    assert_eq!(printed[1].trim(), format!("STRAVA_API_URL={base}/api/v3"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let athletes: Vec<Value> = runtime.block_on(async {
        reqwest::get(format!("{base}/_sim/athletes"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(athletes.len(), 2);
    assert_eq!(athletes[0]["activity_count"], 10);
}
