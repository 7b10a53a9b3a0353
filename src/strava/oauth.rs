//! Strava's OAuth endpoints through the oauth2 crate: the authorize URL, the
//! code exchange, refresh and deauthorization.
//!
//! Strava departs from RFC 6749 in ways the types below absorb: the token
//! answer has no `scope` but carries `expires_at` and (at exchange) the
//! `athlete`; errors are Strava faults, not `{"error": ...}`; scopes are
//! comma-separated; client credentials go in the form body. Token calls are
//! not API calls: they carry no rate-limit headers and spend no budget.

use oauth2::basic::{BasicTokenIntrospectionResponse, BasicTokenType};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, Client, ClientId, ClientSecret, CsrfToken,
    EndpointNotSet, EndpointSet, ExtraTokenFields, RedirectUrl, RefreshToken, RequestTokenError,
    Scope, StandardRevocableToken, StandardTokenResponse, TokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::config::Settings;
use crate::model::clock::Clock;

/// Strava's fault body: `{"message": ..., "errors": [{resource, field, code}]}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StravaFault {
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub errors: Vec<FaultDetail>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FaultDetail {
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub field: String,
    #[serde(default)]
    pub code: String,
}

impl StravaFault {
    /// Whether any error names this resource.
    pub fn names(&self, resource: &str) -> bool {
        self.errors.iter().any(|e| e.resource == resource)
    }
}

impl std::fmt::Display for StravaFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        for e in &self.errors {
            write!(f, " ({} {} {})", e.resource, e.field, e.code)?;
        }
        Ok(())
    }
}

impl oauth2::ErrorResponse for StravaFault {}

/// What Strava adds to a token answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StravaTokenFields {
    pub expires_at: Option<i64>,
    /// The summary athlete, present at code exchange only.
    pub athlete: Option<serde_json::Value>,
}

impl ExtraTokenFields for StravaTokenFields {}

type StravaTokenResponse = StandardTokenResponse<StravaTokenFields, BasicTokenType>;

type OAuthClient = Client<
    StravaFault,
    StravaTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    StravaFault,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// Tokens as Strava granted them.
#[derive(Clone)]
pub struct TokenGrant {
    pub access_token: String,
    pub refresh_token: String,
    /// Epoch seconds.
    pub expires_at: i64,
    pub athlete: Option<serde_json::Value>,
}

impl std::fmt::Debug for TokenGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenGrant")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The authorization code is unknown, used or expired.
    #[error("authorization code refused: {0}")]
    InvalidCode(StravaFault),
    /// The refresh token is dead: the athlete must connect again.
    #[error("refresh token refused: {0}")]
    RefreshRefused(StravaFault),
    /// Any other refusal (a misconfigured client id, say).
    #[error("Strava refused the token request: {0}")]
    Refused(StravaFault),
    #[error("could not reach Strava's OAuth endpoint: {0}")]
    Transport(String),
    #[error("unexpected answer from Strava's OAuth endpoint: {0}")]
    Malformed(String),
}

/// The application's OAuth client.
pub struct StravaOAuth {
    client: OAuthClient,
    http: reqwest::Client,
    deauthorize_url: String,
    scopes: String,
    /// Turns Strava's `expires_in` into an expiry when `expires_at` is missing.
    clock: Arc<dyn Clock>,
}

impl StravaOAuth {
    /// Builds the client from settings; `http` must not follow redirects (a
    /// token endpoint that redirects is not to be trusted with secrets).
    pub fn new(
        settings: &Settings,
        http: reqwest::Client,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        let client_id = settings
            .strava_client_id
            .clone()
            .ok_or_else(|| anyhow::anyhow!("STRAVA_CLIENT_ID is required"))?;
        let client_secret = settings
            .strava_client_secret
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("STRAVA_CLIENT_SECRET is required"))?
            .expose()
            .to_string();
        let base = &settings.strava_oauth_url;
        let client = Client::new(ClientId::new(client_id))
            .set_client_secret(ClientSecret::new(client_secret))
            .set_auth_type(AuthType::RequestBody)
            .set_auth_uri(AuthUrl::new(format!("{base}/authorize"))?)
            .set_token_uri(TokenUrl::new(format!("{base}/token"))?)
            .set_redirect_uri(RedirectUrl::new(format!(
                "{}/auth/strava/callback",
                settings.public_url
            ))?);
        Ok(Self {
            client,
            http,
            deauthorize_url: format!("{base}/deauthorize"),
            scopes: settings.strava_scopes.clone(),
            clock,
        })
    }

    /// Where to send the browser, carrying `state`.
    pub fn authorize_url(&self, state: String) -> String {
        let (url, _) = self
            .client
            .authorize_url(|| CsrfToken::new(state))
            // One comma-separated scope string: Strava does not split on spaces.
            .add_scope(Scope::new(self.scopes.clone()))
            .add_extra_param("approval_prompt", "auto")
            .url();
        url.to_string()
    }

    /// Exchanges an authorization code; the grant carries the athlete.
    pub async fn exchange_code(&self, code: &str) -> Result<TokenGrant, OAuthError> {
        let answer = self
            .client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .request_async(&self.http)
            .await;
        grant(
            answer,
            OAuthError::InvalidCode,
            "RequestToken",
            self.clock.epoch(),
        )
    }

    /// Refreshes an athlete's tokens; the answer may carry a new refresh token
    /// that replaces the old one at once.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenGrant, OAuthError> {
        let answer = self
            .client
            .exchange_refresh_token(&RefreshToken::new(refresh_token.to_string()))
            .request_async(&self.http)
            .await;
        grant(
            answer,
            OAuthError::RefreshRefused,
            "RefreshToken",
            self.clock.epoch(),
        )
    }

    /// Revokes the application's access for the athlete behind the token.
    pub async fn deauthorize(&self, access_token: &str) -> Result<(), OAuthError> {
        let response = self
            .http
            .post(&self.deauthorize_url)
            .form(&[("access_token", access_token)])
            .send()
            .await
            .map_err(|e| OAuthError::Transport(e.without_url().to_string()))?;
        if response.status().is_success() {
            return Ok(());
        }
        let status = response.status();
        let fault = response.json::<StravaFault>().await.unwrap_or_default();
        if status.is_server_error() {
            Err(OAuthError::Transport(format!("{status}: {fault}")))
        } else {
            Err(OAuthError::Refused(fault))
        }
    }
}

/// Turns oauth2's answer into a grant, mapping a fault naming `resource` to
/// the specific refusal.
fn grant<RE: std::error::Error + 'static>(
    answer: Result<StravaTokenResponse, RequestTokenError<RE, StravaFault>>,
    specific: fn(StravaFault) -> OAuthError,
    resource: &str,
    now: i64,
) -> Result<TokenGrant, OAuthError> {
    let token = match answer {
        Ok(token) => token,
        Err(RequestTokenError::ServerResponse(fault)) if fault.names(resource) => {
            return Err(specific(fault))
        }
        Err(RequestTokenError::ServerResponse(fault)) => return Err(OAuthError::Refused(fault)),
        Err(RequestTokenError::Request(e)) => return Err(OAuthError::Transport(e.to_string())),
        Err(RequestTokenError::Parse(e, _)) => return Err(OAuthError::Malformed(e.to_string())),
        Err(RequestTokenError::Other(e)) => return Err(OAuthError::Malformed(e)),
    };
    let refresh_token = token
        .refresh_token()
        .ok_or_else(|| OAuthError::Malformed("no refresh_token".into()))?
        .secret()
        .clone();
    let extra = token.extra_fields();
    let expires_at = extra
        .expires_at
        .or_else(|| token.expires_in().map(|d| now + d.as_secs() as i64))
        .ok_or_else(|| OAuthError::Malformed("no expires_at".into()))?;
    Ok(TokenGrant {
        access_token: token.access_token().secret().clone(),
        refresh_token,
        expires_at,
        athlete: extra.athlete.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authorize_url_carries_what_strava_expects() {
        let settings = Settings::from_sources(None, |k| match k {
            "STRAVA_CLIENT_ID" => Some("42".into()),
            "STRAVA_CLIENT_SECRET" => Some("s3cret".into()),
            "PUBLIC_URL" => Some("https://sync.example".into()),
            _ => None,
        })
        .unwrap();
        let oauth = StravaOAuth::new(
            &settings,
            reqwest::Client::new(),
            Arc::new(crate::model::clock::SystemClock),
        )
        .unwrap();
        let url = reqwest::Url::parse(&oauth.authorize_url("abc".into())).unwrap();
        assert_eq!(
            url.as_str().split('?').next(),
            Some("https://www.strava.com/oauth/authorize")
        );
        let query: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(query["client_id"], "42");
        assert_eq!(
            query["redirect_uri"],
            "https://sync.example/auth/strava/callback"
        );
        assert_eq!(query["response_type"], "code");
        assert_eq!(query["approval_prompt"], "auto");
        assert_eq!(query["scope"], "read,activity:read_all");
        assert_eq!(query["state"], "abc");
        assert!(!url.as_str().contains("s3cret"));
    }
}
