//! The shared Strava budget as operators see it and as Strava sees it.

use serde_json::Value;

use crate::helpers::{TestApp, ADMIN_TOKEN};

async fn admin_post(app: &TestApp, path: &str, token: &str) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn admin_budget_shows_both_windows_with_their_limits_and_resets() {
    let app = TestApp::spawn_with(&[
        ("STRAVA_RATE_LIMIT_15MIN", "40"),
        ("STRAVA_RATE_LIMIT_DAILY", "400"),
    ])
    .await;
    let res = app.get_as(ADMIN_TOKEN, "/admin/budget").await;
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
    let res = admin_post(&app, "/admin/pause", ADMIN_TOKEN).await;
    assert_eq!(res.status(), 200);
    let body: Value = app
        .get_as(ADMIN_TOKEN, "/admin/budget")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["paused"], true);
    assert_eq!(body["throttled"], true);
    assert_eq!(body["blocked"]["backfill"]["reason"], "paused");
    assert!(body["blocked"].get("interactive").is_none());
    assert_eq!(
        admin_post(&app, "/admin/resume", ADMIN_TOKEN)
            .await
            .status(),
        200
    );
    let body: Value = app
        .get_as(ADMIN_TOKEN, "/admin/budget")
        .await
        .json()
        .await
        .unwrap();
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
        assert_eq!(
            admin_post(&app, path, "wrong").await.status(),
            401,
            "{path}"
        );
    }
    let body: Value = app
        .get_as(ADMIN_TOKEN, "/admin/budget")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["paused"], false, "a refused pause changed nothing");
    let hidden = TestApp::spawn_with(&[("ADMIN_TOKEN", "")]).await;
    assert_eq!(
        admin_post(&hidden, "/admin/pause", ADMIN_TOKEN)
            .await
            .status(),
        404
    );
}
