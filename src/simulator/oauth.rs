//! Strava's OAuth at `{base}/oauth`: authorize (auto-approve, deny, or grant
//! fewer scopes), the token exchange with single-use short-lived codes,
//! refresh with rotation, and deauthorize. Answers carry no rate-limit
//! headers and do not count against the limits, as on Strava.

use std::collections::HashMap;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use rand::rngs::StdRng;
use rand::Rng;
use serde::Deserialize;
use serde_json::json;

use super::webhook::{Event, Push};
use super::{bad_request, fault, OAuthMode, Scopes, Simulator, State};

/// How long an authorization code can be exchanged.
const CODE_LIFETIME_SECS: i64 = 10 * 60;
/// Refreshing a token that lives longer than this returns it unchanged.
const REFRESH_UNCHANGED_ABOVE_SECS: i64 = 3600;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/authorize", web::get().to(authorize))
        .route("/token", web::post().to(token))
        .route("/deauthorize", web::post().to(deauthorize));
}

/// Every token the simulator has issued.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    codes: HashMap<String, Grant>,
    access: HashMap<String, Grant>,
    refresh: HashMap<String, Refresh>,
    /// The scopes each connected athlete granted last: they decide which
    /// events Strava sends about "Only You" activities.
    granted: HashMap<u64, Scopes>,
}

/// What a code or an access token stands for.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    pub athlete_id: u64,
    pub scopes: Scopes,
    pub expires_at: i64,
}

#[derive(Debug)]
struct Refresh {
    athlete_id: u64,
    scopes: Scopes,
    /// The access token issued with it, handed back while it lives long.
    access_token: String,
}

impl Tokens {
    /// The grant behind a live access token.
    pub fn caller(&self, access_token: &str, now: i64) -> Option<Grant> {
        self.access
            .get(access_token)
            .filter(|g| g.expires_at > now)
            .cloned()
    }

    /// Kills every code and token of the athlete.
    pub fn revoke(&mut self, athlete_id: u64) {
        self.codes.retain(|_, g| g.athlete_id != athlete_id);
        self.access.retain(|_, g| g.athlete_id != athlete_id);
        self.refresh.retain(|_, r| r.athlete_id != athlete_id);
        self.granted.remove(&athlete_id);
    }

    pub fn is_connected(&self, athlete_id: u64) -> bool {
        self.granted.contains_key(&athlete_id)
    }

    /// The scopes a connected athlete granted; None when not connected.
    pub fn granted(&self, athlete_id: u64) -> Option<&Scopes> {
        self.granted.get(&athlete_id)
    }
}

fn random_token(rng: &mut StdRng) -> String {
    (0..40)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
        .collect()
}

impl State {
    /// Issues a fresh access/refresh pair for a grant.
    fn issue(&mut self, athlete_id: u64, scopes: Scopes, now: i64) -> (String, String, i64) {
        let lifetime = i64::try_from(self.settings.access_token_lifetime_secs).unwrap_or(i64::MAX);
        let expires_at = now.saturating_add(lifetime);
        let access = random_token(&mut self.rng);
        let refresh = random_token(&mut self.rng);
        self.tokens.access.insert(
            access.clone(),
            Grant {
                athlete_id,
                scopes: scopes.clone(),
                expires_at,
            },
        );
        self.tokens.refresh.insert(
            refresh.clone(),
            Refresh {
                athlete_id,
                scopes: scopes.clone(),
                access_token: access.clone(),
            },
        );
        self.tokens.granted.insert(athlete_id, scopes);
        (access, refresh, expires_at)
    }

    /// Who logs in at the next authorize: the chosen athlete, else the first
    /// one not connected yet, else the first one.
    fn login_athlete(&mut self) -> Option<u64> {
        self.next_login.take().or_else(|| {
            let ids = self.athletes.keys().copied();
            let first_free = ids.clone().find(|id| !self.tokens.is_connected(*id));
            first_free.or_else(|| self.athletes.keys().next().copied())
        })
    }
}

#[derive(Debug, Deserialize)]
struct AuthorizeQuery {
    client_id: Option<String>,
    redirect_uri: Option<String>,
    response_type: Option<String>,
    scope: Option<String>,
    state: Option<String>,
}

async fn authorize(sim: web::Data<Simulator>, query: web::Query<AuthorizeQuery>) -> HttpResponse {
    let q = query.into_inner();
    let (response, athlete) = sim.authorize(q);
    sim.record("GET /oauth/authorize", "", athlete, response.status());
    response
}

const SCOPES: &[&str] = &[
    "read",
    "read_all",
    "profile:read_all",
    "profile:write",
    "activity:read",
    "activity:read_all",
    "activity:write",
];

impl Simulator {
    fn authorize(&self, q: AuthorizeQuery) -> (HttpResponse, Option<u64>) {
        if !self.valid_client(q.client_id.as_deref()) {
            return (bad_request("Application", "client_id", "invalid"), None);
        }
        let Some(mut redirect) = q
            .redirect_uri
            .as_deref()
            .and_then(|u| reqwest::Url::parse(u).ok())
            .filter(|u| matches!(u.scheme(), "http" | "https"))
        else {
            return (bad_request("Application", "redirect_uri", "invalid"), None);
        };
        if q.response_type.as_deref() != Some("code") {
            return (bad_request("Application", "response_type", "invalid"), None);
        }
        let requested = Scopes::parse(q.scope.as_deref().unwrap_or("read"));
        if requested.0.iter().any(|s| !SCOPES.contains(&s.as_str())) {
            return (bad_request("Application", "scope", "invalid"), None);
        }

        let now = self.clock.epoch();
        let mut state = self.state();
        let mut pairs = redirect.query_pairs_mut();
        pairs.append_pair("state", q.state.as_deref().unwrap_or(""));
        let granted = match &state.settings.oauth {
            OAuthMode::Deny => {
                pairs.append_pair("error", "access_denied");
                drop(pairs);
                return (redirect_to(&redirect), None);
            }
            OAuthMode::Approve => requested,
            OAuthMode::Grant(allowed) => {
                let allowed = Scopes::parse(allowed);
                Scopes(requested.0.into_iter().filter(|s| allowed.has(s)).collect())
            }
        };
        let Some(athlete_id) = state.login_athlete() else {
            drop(pairs);
            return (bad_request("Athlete", "id", "none"), None);
        };
        let code = random_token(&mut state.rng);
        pairs.append_pair("code", &code);
        drop(pairs);
        // Strava writes the granted scopes with literal commas and colons.
        let query = format!(
            "{}&scope={}",
            redirect.query().unwrap_or(""),
            granted.joined()
        );
        redirect.set_query(Some(&query));
        state.tokens.codes.insert(
            code,
            Grant {
                athlete_id,
                scopes: granted,
                expires_at: now + CODE_LIFETIME_SECS,
            },
        );
        (redirect_to(&redirect), Some(athlete_id))
    }
}

fn redirect_to(url: &reqwest::Url) -> HttpResponse {
    HttpResponse::Found()
        .insert_header((header::LOCATION, url.as_str()))
        .finish()
}

#[derive(Debug, Deserialize)]
struct TokenForm {
    client_id: Option<String>,
    client_secret: Option<String>,
    grant_type: Option<String>,
    code: Option<String>,
    refresh_token: Option<String>,
}

async fn token(sim: web::Data<Simulator>, form: web::Form<TokenForm>) -> HttpResponse {
    let (response, athlete) = sim.token(form.into_inner());
    sim.record("POST /oauth/token", "", athlete, response.status());
    response
}

impl Simulator {
    fn token(&self, f: TokenForm) -> (HttpResponse, Option<u64>) {
        if !self.valid_client(f.client_id.as_deref()) {
            return (bad_request("Application", "client_id", "invalid"), None);
        }
        if f.client_secret.as_deref() != Some(self.client_secret.as_str()) {
            return (bad_request("Application", "client_secret", "invalid"), None);
        }
        let now = self.clock.epoch();
        let mut state = self.state();
        match f.grant_type.as_deref() {
            Some("authorization_code") => {
                let grant = f
                    .code
                    .and_then(|c| state.tokens.codes.remove(&c))
                    .filter(|g| g.expires_at > now);
                let Some(grant) = grant else {
                    return (bad_request("RequestToken", "code", "invalid"), None);
                };
                let Some(athlete) = state.athletes.get(&grant.athlete_id).map(|a| a.summary())
                else {
                    return (bad_request("RequestToken", "code", "invalid"), None);
                };
                let (access, refresh, expires_at) =
                    state.issue(grant.athlete_id, grant.scopes, now);
                let body = json!({
                    "token_type": "Bearer",
                    "expires_at": expires_at,
                    "expires_in": expires_at - now,
                    "refresh_token": refresh,
                    "access_token": access,
                    "athlete": athlete,
                });
                (HttpResponse::Ok().json(body), Some(grant.athlete_id))
            }
            Some("refresh_token") => {
                let old = f.refresh_token.unwrap_or_default();
                let Some(current) = state.tokens.refresh.get(&old) else {
                    return (
                        bad_request("RefreshToken", "refresh_token", "invalid"),
                        None,
                    );
                };
                let athlete_id = current.athlete_id;
                let long_lived = state
                    .tokens
                    .access
                    .get(&current.access_token)
                    .filter(|g| g.expires_at - now > REFRESH_UNCHANGED_ABOVE_SECS)
                    .map(|g| (current.access_token.clone(), g.expires_at));
                let (access, refresh, expires_at) = match long_lived {
                    Some((access, expires_at)) => (access, old, expires_at),
                    None => {
                        // Rotation: the old refresh token dies at once.
                        let scopes = current.scopes.clone();
                        state.tokens.refresh.remove(&old);
                        state.issue(athlete_id, scopes, now)
                    }
                };
                let body = json!({
                    "token_type": "Bearer",
                    "access_token": access,
                    "expires_at": expires_at,
                    "expires_in": expires_at - now,
                    "refresh_token": refresh,
                });
                (HttpResponse::Ok().json(body), Some(athlete_id))
            }
            _ => (bad_request("RequestToken", "grant_type", "invalid"), None),
        }
    }
}

#[derive(Debug, Deserialize)]
struct DeauthorizeForm {
    access_token: Option<String>,
}

/// The access token from the form body, the query string or the header.
fn deauthorize_token(req: &HttpRequest, body: &[u8]) -> Option<String> {
    let from = |s: &str| {
        web::Query::<DeauthorizeForm>::from_query(s)
            .ok()
            .and_then(|f| f.into_inner().access_token)
    };
    std::str::from_utf8(body)
        .ok()
        .and_then(from)
        .or_else(|| from(req.query_string()))
        .or_else(|| super::api::bearer(req).map(String::from))
}

async fn deauthorize(
    sim: web::Data<Simulator>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let token = deauthorize_token(&req, &body);
    let now = sim.clock.epoch();
    let athlete = token.as_deref().and_then(|t| {
        let state = sim.state();
        state.tokens.caller(t, now).map(|g| g.athlete_id)
    });
    let response = match (athlete, token) {
        (Some(athlete_id), Some(token)) => {
            sim.revoke(athlete_id, Some(Push::default()));
            HttpResponse::Ok().json(json!({"access_token": token}))
        }
        _ => fault(
            StatusCode::UNAUTHORIZED,
            "Authorization Error",
            "Athlete",
            "access_token",
            "invalid",
        ),
    };
    sim.record("POST /oauth/deauthorize", "", athlete, response.status());
    response
}

impl Simulator {
    /// Kills the athlete's tokens and, with `push`, sends Strava's
    /// deauthorization event (an athlete update `{"authorized":"false"}`).
    pub(crate) fn revoke(&self, athlete_id: u64, push: Option<Push>) {
        self.state().tokens.revoke(athlete_id);
        if let Some(push) = push {
            let updates = [("authorized".to_string(), "false".to_string())];
            self.emit(
                Event::athlete_update(athlete_id, updates.into(), self.clock.epoch()),
                push,
            );
        }
    }
}
