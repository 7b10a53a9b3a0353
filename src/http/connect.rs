//! Connecting athletes through Strava OAuth, and disconnecting them.
//!
//! `GET /auth/strava` sends the browser to Strava with a fresh single-use
//! `state`; `GET /auth/strava/callback` checks it, exchanges the code, stores
//! the athlete and tokens, issues an API token and queues the first page
//! (interactive) and the backfill, all in one transaction.
//! `POST /auth/disconnect` deauthorizes at Strava and purges the athlete.

use actix_web::http::header;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;

use super::auth::AthleteAuth;
use super::error::{ApiError, AthleteFaults, Fault};
use super::per_address::{AddressLimits, Route};
use super::read_api::StravaAthlete;
use super::Services;
use crate::config::Settings;
use crate::store::api_tokens;
use crate::store::strava_tokens::StoredTokens;
use crate::strava::error::StravaError;
use crate::strava::oauth::OAuthError;

/// How long an issued `state` stays usable.
pub const STATE_TTL_SECS: i64 = 600;
/// Unexpired states kept at most: a flood of `/auth/strava` from many
/// addresses cannot grow the table past this (connects wait instead).
pub const MAX_PENDING_STATES: i64 = 10_000;
/// Longer values are not ours (states are 64 hex characters).
const MAX_STATE_LEN: usize = 128;
const MAX_CODE_LEN: usize = 512;
/// Either grants reading activities; without one there is nothing to sync.
const ACTIVITY_SCOPES: [&str; 2] = ["activity:read", "activity:read_all"];

/// Sends the browser to Strava's authorize page with a fresh single-use
/// `state`; limited per client address by `CONNECT_RATE_LIMIT`.
#[utoipa::path(
    tag = "connect",
    responses(
        (status = 302, description = "To Strava's authorize page",
            headers(("Location" = String, description = "Strava's authorize URL"))),
        (status = 429, description = "Past `CONNECT_RATE_LIMIT` for this client address, or \
            10,000 connects pending", body = Fault,
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
        (status = 503, description = "Storage cannot serve", body = Fault),
    )
)]
#[get("/auth/strava")]
async fn start(
    req: HttpRequest,
    limits: web::Data<AddressLimits>,
    state: web::Data<Services>,
) -> Result<HttpResponse, ApiError> {
    limits.check(&req, Route::Connect)?;
    let token = api_tokens::random_token();
    let now = state.clock.epoch();
    let issued = state
        .store
        .create_oauth_state(token.clone(), now + STATE_TTL_SECS, now, MAX_PENDING_STATES)
        .await?;
    if !issued {
        return Err(ApiError::TooManyRequests {
            resource: "OAuth",
            retry_after_secs: 60,
        });
    }
    Ok(HttpResponse::Found()
        .insert_header((header::LOCATION, state.oauth.authorize_url(token)))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish())
}

/// Strava's redirect: `state` always, then `code` and `scope`, or `error`.
/// No `Debug`: the code and state are secrets while they live.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Callback {
    /// The `state` `/auth/strava` issued (single use, ten minutes).
    state: Option<String>,
    /// The authorization code to exchange.
    code: Option<String>,
    /// The scopes the athlete granted, comma-separated.
    scope: Option<String>,
    /// `access_denied` when the athlete refused.
    error: Option<String>,
}

/// The callback's answer when no `APP_REDIRECT_URL` is set.
#[derive(Serialize, ToSchema)]
struct Connected {
    /// The API token for the read and sync API.
    token: String,
    /// Always `Bearer`.
    token_type: &'static str,
    #[schema(value_type = StravaAthlete)]
    athlete: serde_json::Value,
}

/// `POST /auth/disconnect`'s answer.
#[derive(Serialize, ToSchema)]
struct Disconnected {
    athlete_id: i64,
    /// Always `disconnected`.
    status: &'static str,
}

/// Printable ASCII only: what Strava sends in `state` and `scope`. Nothing
/// else (a NUL, which PostgreSQL refuses to store) reaches the database.
fn is_printable(value: &str) -> bool {
    value.bytes().all(|b| b.is_ascii_graphic())
}

/// Strava's redirect back: checks the `state`, exchanges the code, stores
/// the athlete, issues an API token and queues the first page and the
/// backfill.
#[utoipa::path(
    tag = "connect",
    params(Callback),
    responses(
        (status = 200, description = "Connected (no `APP_REDIRECT_URL`)", body = Connected),
        (status = 302, description = "Connected: to `APP_REDIRECT_URL#token=...&athlete_id=...`",
            headers(("Location" = String))),
        (status = 400, description = "A missing, unknown, expired or used `state`, a bad code, \
            or an error from Strava", body = Fault),
        (status = 403, description = "The athlete denied access, or granted no activity scope",
            body = Fault),
        (status = 429, description = "Past `CONNECT_RATE_LIMIT` for this client address",
            body = Fault,
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
        (status = 502, description = "Strava failed", body = Fault),
        (status = 503, description = "Storage cannot serve", body = Fault),
    )
)]
#[get("/auth/strava/callback")]
async fn callback(
    req: HttpRequest,
    limits: web::Data<AddressLimits>,
    state: web::Data<Services>,
    settings: web::Data<Settings>,
    query: web::Query<Callback>,
) -> Result<HttpResponse, ApiError> {
    limits.check(&req, Route::Connect)?;
    let query = query.into_inner();
    let given = query
        .state
        .filter(|s| !s.is_empty() && s.len() <= MAX_STATE_LEN && is_printable(s))
        .ok_or_else(|| ApiError::bad_parameter("OAuth", "state", "missing or malformed state"))?;
    let now = state.clock.epoch();
    let fresh = state.store.consume_oauth_state(given, now).await?;
    if !fresh {
        return Err(ApiError::bad_parameter(
            "OAuth",
            "state",
            "unknown, expired or already used state",
        ));
    }
    if let Some(error) = query.error {
        return Err(if error == "access_denied" {
            forbidden("The athlete denied access", "error", "access_denied")
        } else {
            ApiError::bad_parameter("OAuth", "error", "Strava did not grant access")
        });
    }
    let scope = query.scope.unwrap_or_default();
    if !is_printable(&scope) {
        return Err(ApiError::bad_parameter("OAuth", "scope", "malformed scope"));
    }
    if let Some(wanted) = missing_activity_scope(&scope, &settings.strava_scopes) {
        return Err(forbidden(
            &format!("Missing required scope {wanted}: activities cannot be read without it"),
            "scope",
            "missing",
        ));
    }
    let code = query
        .code
        .filter(|c| !c.is_empty() && c.len() <= MAX_CODE_LEN)
        .ok_or_else(|| ApiError::bad_parameter("OAuth", "code", "missing or malformed code"))?;

    let grant = state
        .oauth
        .exchange_code(&code)
        .await
        .map_err(|e| match e {
            OAuthError::InvalidCode(_) => {
                ApiError::bad_parameter("RequestToken", "code", "invalid or expired code")
            }
            other => ApiError::Upstream(other.to_string()),
        })?;
    let profile = grant
        .athlete
        .clone()
        .ok_or_else(|| ApiError::Upstream("token answer without athlete".into()))?;
    let tokens = StoredTokens::from(&grant);
    let (athlete_id, api_token) = state
        .store
        .connect_athlete(profile.clone(), scope, tokens, now)
        .await
        .map_err(|e| match e {
            crate::store::DbError::Json(_) => ApiError::Upstream("athlete without an id".into()),
            other => other.into(),
        })?;
    state.jobs.wake();
    tracing::info!(athlete_id, "athlete connected");

    Ok(match &settings.app_redirect_url {
        Some(url) => HttpResponse::Found()
            .insert_header((
                header::LOCATION,
                format!("{url}#token={api_token}&athlete_id={athlete_id}"),
            ))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .finish(),
        None => HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(Connected {
                token: api_token,
                token_type: "Bearer",
                athlete: profile,
            }),
    })
}

/// Revokes access at Strava and deletes everything held for the athlete.
#[utoipa::path(
    tag = "connect",
    security(("api_token" = [])),
    responses(
        (status = 200, description = "Revoked and purged", body = Disconnected),
        (status = 502, description = "Strava failed", body = Fault),
        AthleteFaults,
    )
)]
#[post("/auth/disconnect")]
async fn disconnect(
    auth: AthleteAuth,
    state: web::Data<Services>,
) -> Result<HttpResponse, ApiError> {
    let athlete_id = auth.athlete_id;
    match state.strava.tokens().access_token(athlete_id).await {
        Ok(token) => match state.oauth.deauthorize(&token).await {
            // Refused: Strava no longer knows the token, so access is gone.
            Ok(()) | Err(OAuthError::Refused(_)) => {}
            Err(e) => return Err(ApiError::Upstream(e.to_string())),
        },
        // No usable token: there is no access left to revoke.
        Err(StravaError::NeedsReauth | StravaError::NotConnected) => {}
        Err(StravaError::Db(e)) => return Err(e.into()),
        Err(e) => return Err(ApiError::Upstream(e.to_string())),
    }
    state
        .store
        .purge_athlete(athlete_id, state.clock.epoch())
        .await?;
    tracing::info!(athlete_id, "athlete disconnected and purged");
    Ok(HttpResponse::Ok().json(Disconnected {
        athlete_id,
        status: "disconnected",
    }))
}

fn forbidden(message: &str, field: &str, code: &'static str) -> ApiError {
    ApiError::Forbidden {
        message: message.to_string(),
        resource: "OAuth",
        field: field.to_string(),
        code,
    }
}

/// The activity scope the service asks for (`requested`, `STRAVA_SCOPES`)
/// when `granted` holds none: what the athlete must grant for a sync.
pub fn missing_activity_scope<'a>(granted: &str, requested: &'a str) -> Option<&'a str> {
    let reads = granted
        .split(',')
        .any(|s| ACTIVITY_SCOPES.contains(&s.trim()));
    (!reads).then(|| requested_activity_scope(requested))
}

/// The activity scope the service asks for (`STRAVA_SCOPES`), to name it
/// when an athlete unticked it.
fn requested_activity_scope(scopes: &str) -> &str {
    scopes
        .split(',')
        .map(str::trim)
        .find(|s| ACTIVITY_SCOPES.contains(s))
        .unwrap_or("activity:read")
}

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(start).service(callback).service(disconnect);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_missing_scope_is_the_one_we_asked_for() {
        assert_eq!(
            requested_activity_scope("read,activity:read_all"),
            "activity:read_all"
        );
        assert_eq!(
            requested_activity_scope("read, activity:read"),
            "activity:read"
        );
        assert_eq!(requested_activity_scope("read"), "activity:read");
    }
}
