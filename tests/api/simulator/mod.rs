//! The Strava simulator pinned to strava-api.md: OAuth, the activities API,
//! rate limits, push subscriptions and webhook delivery, faults, control.

mod activities;
mod control;
mod oauth;
mod rate_limits;
mod webhooks;

use serde_json::Value;
use strava_sync::simulator::{SimConfig, SimHandle, Simulator};

/// A client that shows redirects instead of following them.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub async fn start(config: SimConfig) -> SimHandle {
    Simulator::start(config).await.expect("simulator starts")
}

/// Tokens from one pass through the OAuth flow.
pub struct Connected {
    pub athlete_id: u64,
    pub access_token: String,
    pub refresh_token: String,
}

/// Query parameters of a redirect's `Location`.
pub fn redirect_params(res: &reqwest::Response) -> Vec<(String, String)> {
    let location = res.headers()["location"].to_str().unwrap();
    reqwest::Url::parse(location)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

pub fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

pub async fn authorize(sim: &SimHandle, scope: &str) -> reqwest::Response {
    client()
        .get(format!("{}/authorize", sim.oauth_url()))
        .query(&[
            ("client_id", sim.client_id().to_string().as_str()),
            ("redirect_uri", "http://localhost:9/callback"),
            ("response_type", "code"),
            ("approval_prompt", "auto"),
            ("scope", scope),
            ("state", "st4te"),
        ])
        .send()
        .await
        .unwrap()
}

pub async fn exchange(sim: &SimHandle, code: &str) -> reqwest::Response {
    client()
        .post(format!("{}/token", sim.oauth_url()))
        .form(&[
            ("client_id", sim.client_id().to_string().as_str()),
            ("client_secret", sim.client_secret()),
            ("code", code),
            ("grant_type", "authorization_code"),
        ])
        .send()
        .await
        .unwrap()
}

/// Authorizes and exchanges the code, as the service's connect flow does.
pub async fn connect(sim: &SimHandle, scope: &str) -> Connected {
    let res = authorize(sim, scope).await;
    assert_eq!(res.status(), 302);
    let params = redirect_params(&res);
    let code = param(&params, "code").expect("a code").to_string();
    let body: Value = exchange(sim, &code).await.json().await.unwrap();
    Connected {
        athlete_id: body["athlete"]["id"].as_u64().unwrap(),
        access_token: body["access_token"].as_str().unwrap().to_string(),
        refresh_token: body["refresh_token"].as_str().unwrap().to_string(),
    }
}

pub async fn api_get(sim: &SimHandle, token: &str, path: &str) -> reqwest::Response {
    client()
        .get(format!("{}{path}", sim.api_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// The first fault's `(resource, field, code)`.
pub fn fault_of(body: &Value) -> (&str, &str, &str) {
    let e = &body["errors"][0];
    (
        e["resource"].as_str().unwrap(),
        e["field"].as_str().unwrap(),
        e["code"].as_str().unwrap(),
    )
}
