//! `strava-sync subscription create|show|delete`: manages the application's
//! one push subscription through Strava's `/push_subscriptions` API and keeps
//! its id in `service_state`, where the callback checks incoming events
//! against it.
//!
//! `create` needs the service already running at `PUBLIC_URL`: Strava calls
//! the callback with the handshake before it answers.

use anyhow::{bail, Context};
use serde_json::Value;

use super::callback_url;
use crate::config::{Requirement, Settings};
use crate::store::Store;

#[derive(Debug, Clone, Copy, clap::Subcommand)]
pub enum Action {
    /// Create the subscription (the service must be running at PUBLIC_URL).
    Create,
    /// Print the callback URL and the subscription as Strava lists it.
    Show,
    /// Delete the subscription.
    Delete,
}

/// Runs one subscription command and returns what to print.
pub async fn run(settings: &Settings, action: Action) -> anyhow::Result<String> {
    settings.require(&[Requirement::StravaApp, Requirement::Webhooks])?;
    let database = settings.database.clone();
    let store = tokio::task::spawn_blocking(move || Store::connect(&database)).await??;
    let secret = store.path_secret().await?;
    let api = Api::new(settings)?;
    let callback = callback_url(&settings.public_url, &secret);
    match action {
        Action::Create => {
            let created = api.create(settings, &callback).await?;
            let id = subscription_id(&created)?;
            store.set_subscription_id(id).await?;
            Ok(format!(
                "created subscription {id}\ncallback_url: {callback}\n{}",
                serde_json::to_string_pretty(&created)?
            ))
        }
        Action::Show => {
            let stored = store.subscription_id().await?;
            let listed = api.list().await?;
            Ok(format!(
                "callback_url: {callback}\nstored subscription id: {}\nat Strava: {}",
                stored.map_or("none".to_string(), |id| id.to_string()),
                serde_json::to_string_pretty(&listed)?
            ))
        }
        Action::Delete => {
            let stored = store.subscription_id().await?;
            let id = match stored {
                Some(id) => id,
                None => match api.list().await?.as_array().and_then(|a| a.first()) {
                    Some(listed) => subscription_id(listed)?,
                    None => bail!("there is no subscription to delete"),
                },
            };
            api.delete(id).await?;
            store.clear_subscription_id().await?;
            Ok(format!("deleted subscription {id}"))
        }
    }
}

fn subscription_id(subscription: &Value) -> anyhow::Result<i64> {
    subscription["id"]
        .as_i64()
        .context("Strava's answer has no subscription id")
}

/// The push-subscription endpoints, authenticated with the app's credentials.
struct Api {
    http: reqwest::Client,
    url: String,
    credentials: [(&'static str, String); 2],
}

impl Api {
    fn new(settings: &Settings) -> anyhow::Result<Self> {
        let (Some(id), Some(secret)) = (&settings.strava_client_id, &settings.strava_client_secret)
        else {
            bail!("STRAVA_CLIENT_ID and STRAVA_CLIENT_SECRET are required");
        };
        Ok(Self {
            // Never following a redirect: the requests carry the client secret.
            http: crate::strava::client::http_client()?,
            url: format!("{}/push_subscriptions", settings.strava_api_url),
            credentials: [
                ("client_id", id.clone()),
                ("client_secret", secret.expose().to_string()),
            ],
        })
    }

    async fn create(&self, settings: &Settings, callback: &str) -> anyhow::Result<Value> {
        let verify = settings
            .strava_webhook_verify_token
            .as_ref()
            .context("STRAVA_WEBHOOK_VERIFY_TOKEN is required")?;
        let mut form: Vec<(&str, &str)> = self
            .credentials
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        form.extend([
            ("callback_url", callback),
            ("verify_token", verify.expose()),
        ]);
        answer(self.http.post(&self.url).form(&form).send().await).await
    }

    async fn list(&self) -> anyhow::Result<Value> {
        answer(
            self.http
                .get(&self.url)
                .query(&self.credentials)
                .send()
                .await,
        )
        .await
    }

    async fn delete(&self, id: i64) -> anyhow::Result<()> {
        let url = format!("{}/{id}", self.url);
        let response = self.http.delete(url).query(&self.credentials).send().await;
        check(response).await.map(drop)
    }
}

/// The JSON of a successful answer.
async fn answer(response: reqwest::Result<reqwest::Response>) -> anyhow::Result<Value> {
    Ok(check(response)
        .await?
        .json()
        .await
        .map_err(|e| e.without_url())?)
}

/// Fails on transport errors and non-2xx answers, quoting Strava's fault.
/// Errors drop the URL: the query carries the client secret.
async fn check(response: reqwest::Result<reqwest::Response>) -> anyhow::Result<reqwest::Response> {
    let response = response
        .map_err(|e| e.without_url())
        .context("calling Strava's push_subscriptions")?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    bail!("Strava answered {status}: {body}")
}
