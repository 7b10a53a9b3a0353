//! Request guards: the athlete behind an API token, and the operator behind
//! the admin token. Per-token rate limiting happens here, once the token is
//! known to be real, so forged tokens cannot grow the limiter's key space.
//! Every admin route takes the admin token as a bearer token; the ones that
//! only read also take it as the password of HTTP Basic auth, so a browser
//! can open the status page.

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;

use actix_web::http::{header, Method};
use actix_web::{web, FromRequest, HttpRequest};
use base64::Engine;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use super::{error::ApiError, Services};
use crate::config::Secret;
use crate::store::api_tokens;

/// The athlete an API token belongs to.
#[derive(Debug, Clone, Copy)]
pub struct AthleteAuth {
    pub athlete_id: i64,
}

/// [`AthleteAuth`] for the change feed, which also takes the token as the
/// `access_token` query parameter (as Strava does): a browser's
/// `EventSource` cannot send headers. Only the feed takes it there, since a
/// token in a URL ends up in browser history and proxy logs. The token is
/// kept, so a long-lived stream can check it is still good.
pub struct FeedAuth {
    pub athlete_id: i64,
    pub token: String,
}

/// Proof that the request carries the admin token.
#[derive(Debug, Clone, Copy)]
pub struct AdminAuth;

/// What the guards check requests against.
pub struct Access {
    /// Without one the admin surface does not exist.
    pub admin_token: Option<Secret>,
    /// None when rate limiting is off.
    pub rate_limiter: Option<TokenRateLimiter>,
}

/// Per-token request limiter: `rate` per second, bursts up to five times that.
pub struct TokenRateLimiter(DefaultKeyedRateLimiter<[u8; 32]>);

impl TokenRateLimiter {
    /// None when `rate` is 0 (rate limiting off).
    pub fn new(rate: u32) -> Option<Self> {
        let per_second = NonZeroU32::new(rate)?;
        let burst = NonZeroU32::new(rate.saturating_mul(5)).unwrap_or(per_second);
        Some(Self(DefaultKeyedRateLimiter::keyed(
            Quota::per_second(per_second).allow_burst(burst),
        )))
    }

    fn check(&self, key: &[u8; 32]) -> Result<(), ApiError> {
        self.0.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::TooManyRequests {
                resource: "Application",
                retry_after_secs: wait.as_secs() + 1,
            }
        })
    }
}

/// Longer Basic credentials are not the admin token: they are refused
/// before any decoding.
const MAX_BASIC_LEN: usize = 1024;

/// The `Authorization` header's scheme and its non-empty credentials.
fn credentials(req: &HttpRequest) -> Option<(&str, &str)> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.split_once(' ')?;
    let credentials = credentials.trim();
    (!credentials.is_empty()).then_some((scheme, credentials))
}

fn bearer(req: &HttpRequest) -> Option<&str> {
    let (scheme, token) = credentials(req)?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// The password of HTTP Basic auth (`user:password` in base64; the user
/// name is not looked at).
fn basic_password(req: &HttpRequest) -> Option<String> {
    let (scheme, encoded) = credentials(req)?;
    if !scheme.eq_ignore_ascii_case("basic") || encoded.len() > MAX_BASIC_LEN {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let pair = String::from_utf8(decoded).ok()?;
    let (_, password) = pair.split_once(':')?;
    Some(password.to_string())
}

/// App data `configure` registers; missing it is a wiring defect.
fn data<T: 'static>(req: &HttpRequest) -> web::Data<T> {
    req.app_data::<web::Data<T>>()
        .expect("registered by http::configure")
        .clone()
}

/// The `access_token` query parameter.
fn query_token(req: &HttpRequest) -> Option<String> {
    web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .ok()?
        .into_inner()
        .into_iter()
        .find_map(|(key, value)| (key == "access_token" && !value.is_empty()).then_some(value))
}

/// The athlete whose API token this is, counted against its rate limit and
/// noted as looking.
async fn athlete_for(req: &HttpRequest, token: String) -> Result<i64, ApiError> {
    let (services, access) = (data::<Services>(req), data::<Access>(req));
    if token.len() > 256 {
        return Err(ApiError::Unauthorized);
    }
    let key = api_tokens::hash(&token);
    let athlete_id = services
        .store
        .athlete_for_token(token)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    if let Some(limiter) = &access.rate_limiter {
        limiter.check(&key)?;
    }
    services.attention.record(athlete_id);
    Ok(athlete_id)
}

impl FromRequest for AthleteAuth {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let (req, token) = (req.clone(), bearer(req).map(str::to_owned));
        Box::pin(async move {
            let token = token.ok_or(ApiError::Unauthorized)?;
            let athlete_id = athlete_for(&req, token).await?;
            Ok(AthleteAuth { athlete_id })
        })
    }
}

impl FromRequest for FeedAuth {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let token = bearer(req).map(str::to_owned).or_else(|| query_token(req));
        let req = req.clone();
        Box::pin(async move {
            let token = token.ok_or(ApiError::Unauthorized)?;
            let athlete_id = athlete_for(&req, token.clone()).await?;
            Ok(FeedAuth { athlete_id, token })
        })
    }
}

impl FromRequest for AdminAuth {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        // Without an admin token the admin surface does not exist.
        let result = match &data::<Access>(req).admin_token {
            None => Err(ApiError::NotFound { resource: "Route" }),
            Some(expected) => {
                // A browser sends saved Basic credentials with any request
                // to the site, a cross-site form's POST included: Basic
                // opens only what cannot change anything.
                let safe = matches!(*req.method(), Method::GET | Method::HEAD);
                let given = bearer(req)
                    .map(str::to_owned)
                    .or_else(|| safe.then(|| basic_password(req)).flatten());
                match given {
                    Some(given)
                        if constant_time_eq(given.as_bytes(), expected.expose().as_bytes()) =>
                    {
                        Ok(AdminAuth)
                    }
                    _ => Err(ApiError::AdminUnauthorized),
                }
            }
        };
        std::future::ready(result)
    }
}

/// Compares secrets without leaking where they differ through timing.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
