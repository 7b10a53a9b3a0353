//! OAuth: authorize modes, single-use codes, refresh rotation, deauthorize.

use std::time::Duration;

use serde_json::Value;
use strava_sync::simulator::{OAuthMode, SimConfig};

use super::*;

#[tokio::test]
async fn authorize_redirects_with_state_code_and_granted_scopes() {
    let sim = start(SimConfig::default()).await;
    let res = authorize(&sim, "read,activity:read_all").await;
    assert_eq!(res.status(), 302);
    let location = res.headers()["location"].to_str().unwrap().to_string();
    // Strava writes the scopes with literal commas and colons.
    assert!(
        location.ends_with("&scope=read,activity:read_all"),
        "{location}"
    );
    let params = redirect_params(&res);
    assert_eq!(param(&params, "state"), Some("st4te"));
    assert!(param(&params, "code").is_some_and(|c| !c.is_empty()));
}

#[tokio::test]
async fn authorize_keeps_an_empty_state_and_can_deny_or_grant_less() {
    let sim = start(SimConfig::default()).await;
    let url = format!(
        "{}/authorize?client_id=1234&redirect_uri=http://localhost:9/cb&response_type=code&scope=read,activity:read",
        sim.oauth_url()
    );
    let res = client().get(&url).send().await.unwrap();
    let params = redirect_params(&res);
    assert_eq!(param(&params, "state"), Some(""));

    sim.update_settings(|s| s.oauth = OAuthMode::Grant("read".into()));
    let res = client().get(&url).send().await.unwrap();
    assert_eq!(param(&redirect_params(&res), "scope"), Some("read"));

    sim.update_settings(|s| s.oauth = OAuthMode::Deny);
    let res = client().get(&url).send().await.unwrap();
    let params = redirect_params(&res);
    assert_eq!(param(&params, "error"), Some("access_denied"));
    assert_eq!(param(&params, "code"), None);
}

#[tokio::test]
async fn authorize_rejects_a_wrong_client_or_bad_redirect() {
    let sim = start(SimConfig::default()).await;
    for query in [
        "client_id=999&redirect_uri=http://x/cb&response_type=code",
        "client_id=1234&redirect_uri=not%20a%20url&response_type=code",
        "client_id=1234&redirect_uri=http://x/cb&response_type=token",
        "client_id=1234&redirect_uri=http://x/cb&response_type=code&scope=everything",
    ] {
        let res = client()
            .get(format!("{}/authorize?{query}", sim.oauth_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{query}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["message"], "Bad Request");
    }
}

#[tokio::test]
async fn next_login_chooses_the_athlete_and_the_default_takes_the_next_free_one() {
    let sim = start(SimConfig::default()).await;
    let ids = sim.athlete_ids();
    assert_eq!(connect(&sim, "read").await.athlete_id, ids[0]);
    assert_eq!(connect(&sim, "read").await.athlete_id, ids[1]);
    sim.next_login(ids[0]).unwrap();
    assert_eq!(connect(&sim, "read").await.athlete_id, ids[0]);
    assert!(sim.next_login(1).is_err());
}

#[tokio::test]
async fn exchange_returns_tokens_and_the_summary_athlete_and_codes_are_single_use() {
    let sim = start(SimConfig::default()).await;
    let res = authorize(&sim, "read,activity:read").await;
    let code = param(&redirect_params(&res), "code").unwrap().to_string();
    let res = exchange(&sim, &code).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("x-ratelimit-usage").is_none());
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 21600);
    assert!(body["expires_at"].as_i64().unwrap() > sim.now().timestamp());
    assert_eq!(body["athlete"]["resource_state"], 2);
    assert!(body.get("scope").is_none(), "Strava's answer has no scope");

    let again = exchange(&sim, &code).await;
    assert_eq!(again.status(), 400);
    let body: Value = again.json().await.unwrap();
    assert_eq!(fault_of(&body), ("RequestToken", "code", "invalid"));
}

#[tokio::test]
async fn codes_expire_and_a_bad_client_is_refused() {
    let sim = start(SimConfig::default()).await;
    let res = authorize(&sim, "read").await;
    let code = param(&redirect_params(&res), "code").unwrap().to_string();
    let wrong_secret = client()
        .post(format!("{}/token", sim.oauth_url()))
        .form(&[
            ("client_id", "1234"),
            ("client_secret", "nope"),
            ("code", &code),
            ("grant_type", "authorization_code"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_secret.status(), 400);
    let body: Value = wrong_secret.json().await.unwrap();
    assert_eq!(fault_of(&body).0, "Application");

    sim.advance(Duration::from_secs(11 * 60));
    let late = exchange(&sim, &code).await;
    assert_eq!(late.status(), 400);
}

async fn refresh(sim: &SimHandle, token: &str) -> reqwest::Response {
    client()
        .post(format!("{}/token", sim.oauth_url()))
        .form(&[
            ("client_id", "1234"),
            ("client_secret", sim.client_secret()),
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
        ])
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn refresh_returns_a_long_lived_token_unchanged() {
    let sim = start(SimConfig::default()).await;
    let c = connect(&sim, "read,activity:read").await;
    let body: Value = refresh(&sim, &c.refresh_token).await.json().await.unwrap();
    assert_eq!(body["access_token"], c.access_token.as_str());
    assert_eq!(body["refresh_token"], c.refresh_token.as_str());
    assert!(body.get("athlete").is_none());
}

#[tokio::test]
async fn refresh_rotates_and_the_old_refresh_token_dies_at_once() {
    let sim = start(SimConfig::default()).await;
    let c = connect(&sim, "read,activity:read").await;
    sim.advance(Duration::from_secs(5 * 3600 + 1));
    let res = refresh(&sim, &c.refresh_token).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let new_refresh = body["refresh_token"].as_str().unwrap();
    let new_access = body["access_token"].as_str().unwrap();
    assert_ne!(new_refresh, c.refresh_token);
    assert_ne!(new_access, c.access_token);
    assert_eq!(body["expires_in"], 21600);

    let old = refresh(&sim, &c.refresh_token).await;
    assert_eq!(old.status(), 400);
    let fault: Value = old.json().await.unwrap();
    assert_eq!(
        fault_of(&fault),
        ("RefreshToken", "refresh_token", "invalid")
    );
    assert_eq!(refresh(&sim, new_refresh).await.status(), 200);
    assert_eq!(api_get(&sim, new_access, "/athlete").await.status(), 200);
}

#[tokio::test]
async fn access_tokens_expire_with_the_configured_lifetime() {
    let sim = start(SimConfig::default()).await;
    sim.update_settings(|s| s.access_token_lifetime_secs = 60);
    let c = connect(&sim, "read,activity:read").await;
    assert_eq!(
        api_get(&sim, &c.access_token, "/athlete").await.status(),
        200
    );
    sim.advance(Duration::from_secs(61));
    assert_eq!(
        api_get(&sim, &c.access_token, "/athlete").await.status(),
        401
    );
}

#[tokio::test]
async fn deauthorize_kills_every_token_of_the_athlete() {
    let sim = start(SimConfig::default()).await;
    let first = connect(&sim, "read,activity:read").await;
    sim.next_login(first.athlete_id).unwrap();
    let second = connect(&sim, "read,activity:read").await;
    let res = client()
        .post(format!("{}/deauthorize", sim.oauth_url()))
        .form(&[("access_token", second.access_token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["access_token"], second.access_token.as_str());
    for token in [&first.access_token, &second.access_token] {
        let res = api_get(&sim, token, "/athlete").await;
        assert_eq!(res.status(), 401);
        let body: Value = res.json().await.unwrap();
        assert_eq!(fault_of(&body), ("Athlete", "access_token", "invalid"));
    }
    assert_eq!(refresh(&sim, &first.refresh_token).await.status(), 400);
    assert!(!sim.is_connected(first.athlete_id));

    let again = client()
        .post(format!("{}/deauthorize", sim.oauth_url()))
        .form(&[("access_token", second.access_token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 401);
}

#[tokio::test]
async fn token_rejects_malformed_input() {
    let sim = start(SimConfig::default()).await;
    let no_grant = client()
        .post(format!("{}/token", sim.oauth_url()))
        .form(&[
            ("client_id", "1234"),
            ("client_secret", sim.client_secret()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(no_grant.status(), 400);
    let oversized = client()
        .post(format!("{}/token", sim.oauth_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("code={}", "x".repeat(20_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), 413);
    let not_a_form = client()
        .post(format!("{}/token", sim.oauth_url()))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(not_a_form.status(), 400);
    let body: Value = not_a_form.json().await.unwrap();
    assert_eq!(body["message"], "Bad Request");
}
