//! Connecting athletes through Strava OAuth: the redirect, the callback and
//! each way it can fail, and disconnecting.

use std::collections::HashMap;

use serde_json::Value;

use crate::helpers::TestApp;

/// A browser that does not follow redirects, so each hop can be checked.
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `GET /auth/strava` and the query of the Strava URL it redirects to.
pub async fn start_connect(app: &TestApp) -> HashMap<String, String> {
    let res = browser().get(app.url("/auth/strava")).send().await.unwrap();
    assert_eq!(res.status(), 302);
    let location = res.headers()["location"].to_str().unwrap();
    reqwest::Url::parse(location)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

async fn callback(app: &TestApp, query: &str) -> reqwest::Response {
    browser()
        .get(app.url(&format!("/auth/strava/callback?{query}")))
        .send()
        .await
        .unwrap()
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
    let res = browser().get(app.url("/auth/strava")).send().await.unwrap();
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
    ] {
        let (status, body) = fault(callback(&app, &query).await).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(body["errors"][0]["field"], "state", "{query}");
    }
}

#[tokio::test]
async fn denial_is_forbidden_and_its_state_cannot_be_reused() {
    let app = TestApp::spawn().await;
    let state = &start_connect(&app).await["state"];
    let denied = format!("state={state}&error=access_denied");
    let (status, body) = fault(callback(&app, &denied).await).await;
    assert_eq!(status, 403);
    assert_eq!(body["errors"][0]["code"], "access_denied");
    let (status, body) = fault(callback(&app, &denied).await).await;
    assert_eq!(status, 400, "a used state is refused: {body}");
}

#[tokio::test]
async fn a_scope_without_activity_access_is_forbidden_naming_it() {
    let app = TestApp::spawn().await;
    let state = &start_connect(&app).await["state"];
    let (status, body) =
        fault(callback(&app, &format!("state={state}&code=abc&scope=read")).await).await;
    assert_eq!(status, 403);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("activity:read_all"),
        "{body}"
    );
    assert_eq!(body["errors"][0]["field"], "scope");
}

#[tokio::test]
async fn a_missing_code_is_a_bad_request() {
    let app = TestApp::spawn().await;
    let state = &start_connect(&app).await["state"];
    let (status, body) =
        fault(callback(&app, &format!("state={state}&scope=read,activity:read")).await).await;
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["field"], "code");
}

#[tokio::test]
async fn disconnect_needs_an_api_token() {
    let app = TestApp::spawn().await;
    let res = app
        .client
        .post(app.url("/auth/disconnect"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = app
        .client
        .post(app.url("/auth/disconnect"))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}
