//! The Strava API client. Every call takes a budget permit first (retries
//! take their own), sends the athlete's bearer token, and hands the response
//! back to the budget (usage headers, 429s, the ledger).
//!
//! Failures of Strava itself (5xx, timeouts, refused connections) are retried
//! with exponential backoff and jitter; after several in a row the circuit
//! opens and calls fail fast for a while instead of spending the budget on a
//! Strava that is down. A 401 for a token that looked valid gets one refresh
//! and one more try; a second 401, or one for a scope the athlete did not
//! grant, marks the athlete as needing re-authorization (see `tokens`).
//! Answers are returned as raw JSON so stored records keep every field
//! Strava sent.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::StatusCode;
use serde_json::value::RawValue;

use super::budget::{Budget, CallOutcome, RateReport};
pub use super::error::StravaError;
use super::oauth::StravaFault;
use super::tokens::Tokens;
use crate::model::Purpose;

/// Whole-request deadline; a page of 200 activities is well under it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Attempts per call, the first included, for 5xx answers and timeouts.
const ATTEMPTS: u32 = 3;
/// First retry delay; doubles each attempt, plus up to as much again of jitter.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Consecutive Strava failures that open the circuit, and for how long.
const BREAKER_THRESHOLD: u32 = 5;
const BREAKER_OPEN_SECS: i64 = 60;

/// Most activities one list call may ask for.
pub const MAX_PER_PAGE: u32 = 200;

/// Query of `GET /athlete/activities`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Epoch seconds; activities that started before it.
    pub before: Option<i64>,
    /// Epoch seconds; activities that started after it.
    pub after: Option<i64>,
    pub page: Option<u32>,
    /// 1..=200; Strava's default (30) when None.
    pub per_page: Option<u32>,
}

impl ListQuery {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if let Some(v) = self.before {
            q.push(("before", v.to_string()));
        }
        if let Some(v) = self.after {
            q.push(("after", v.to_string()));
        }
        if let Some(v) = self.page {
            q.push(("page", v.to_string()));
        }
        if let Some(v) = self.per_page {
            q.push(("per_page", v.min(MAX_PER_PAGE).to_string()));
        }
        q
    }
}

/// Consecutive failures and, once they pile up, when calls may resume.
#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<i64>,
}

impl Breaker {
    fn check(&self, now: i64) -> Result<(), StravaError> {
        match self.open_until {
            Some(until) if now < until => Err(StravaError::CircuitOpen(
                chrono::DateTime::from_timestamp(until, 0).unwrap_or_default(),
            )),
            _ => Ok(()),
        }
    }

    fn success(&mut self) {
        self.failures = 0;
        self.open_until = None;
    }

    /// After the threshold every further failure (the trial call once the
    /// circuit half-opens included) opens it again.
    fn failure(&mut self, now: i64) {
        self.failures += 1;
        if self.failures >= BREAKER_THRESHOLD {
            self.open_until = Some(now + BREAKER_OPEN_SECS);
            tracing::warn!(
                failures = self.failures,
                "Strava keeps failing; suspending calls for {BREAKER_OPEN_SECS}s"
            );
        }
    }
}

/// The HTTP client every part of the service uses: no redirects (tokens and
/// secrets never follow one), bounded connect and request times.
pub fn http_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("strava-sync/", env!("CARGO_PKG_VERSION")))
        .build()
}

pub struct StravaClient {
    http: reqwest::Client,
    api_url: String,
    budget: Arc<Budget>,
    tokens: Arc<Tokens>,
    breaker: Mutex<Breaker>,
}

impl StravaClient {
    pub fn new(
        http: reqwest::Client,
        api_url: String,
        budget: Arc<Budget>,
        tokens: Arc<Tokens>,
    ) -> Self {
        Self {
            http,
            api_url,
            budget,
            tokens,
            breaker: Mutex::default(),
        }
    }

    pub fn tokens(&self) -> &Arc<Tokens> {
        &self.tokens
    }

    /// `GET /athlete/activities`: SummaryActivity objects as Strava sent them.
    pub async fn list_activities(
        &self,
        athlete_id: i64,
        purpose: Purpose,
        query: &ListQuery,
    ) -> Result<Vec<Box<RawValue>>, StravaError> {
        let body = self
            .get(
                athlete_id,
                purpose,
                "GET /athlete/activities",
                "/athlete/activities".to_string(),
                query.pairs(),
            )
            .await?;
        parse(&body)
    }

    /// `GET /activities/{id}`: the DetailedActivity as Strava sent it.
    pub async fn get_activity(
        &self,
        athlete_id: i64,
        purpose: Purpose,
        activity_id: i64,
    ) -> Result<Box<RawValue>, StravaError> {
        let body = self
            .get(
                athlete_id,
                purpose,
                "GET /activities/{id}",
                format!("/activities/{activity_id}"),
                vec![("include_all_efforts", "false".to_string())],
            )
            .await?;
        parse(&body)
    }

    /// `GET /athlete`: the authenticated athlete's profile.
    pub async fn get_athlete(
        &self,
        athlete_id: i64,
        purpose: Purpose,
    ) -> Result<Box<RawValue>, StravaError> {
        let body = self
            .get(
                athlete_id,
                purpose,
                "GET /athlete",
                "/athlete".to_string(),
                Vec::new(),
            )
            .await?;
        parse(&body)
    }

    async fn get(
        &self,
        athlete_id: i64,
        purpose: Purpose,
        endpoint: &'static str,
        path: String,
        query: Vec<(&'static str, String)>,
    ) -> Result<Vec<u8>, StravaError> {
        let mut token = self.tokens.access_token(athlete_id).await?;
        let url = format!("{}{}", self.api_url, path);
        let (mut attempt, mut renewed) = (0, false);
        loop {
            attempt += 1;
            self.breaker().check(self.budget.clock().epoch())?;
            let permit = self.budget.acquire(purpose).await?;
            let started = Instant::now();
            let sent = self
                .http
                .get(&url)
                .bearer_auth(&token)
                .query(&query)
                .send()
                .await;
            let (mut status, mut report) = (None, RateReport::default());
            let answer = match sent {
                Ok(response) => {
                    status = Some(response.status().as_u16());
                    report = RateReport::from_headers(response.headers());
                    let code = response.status();
                    response.bytes().await.map(|body| (code, body.to_vec()))
                }
                Err(e) => Err(e),
            };
            self.budget
                .record(
                    permit,
                    CallOutcome {
                        endpoint,
                        athlete_id: Some(athlete_id),
                        status,
                        report,
                        duration: started.elapsed(),
                    },
                )
                .await?;
            let outcome = match answer {
                Ok((status, body)) if status.is_success() => Ok(body),
                Ok((status, body)) => Err(refusal(status, &body)),
                Err(e) => Err(StravaError::Transport(e.without_url().to_string())),
            };
            let now = self.budget.clock().epoch();
            match outcome {
                Err(e @ (StravaError::Server(_) | StravaError::Transport(_))) => {
                    self.breaker().failure(now);
                    if attempt >= ATTEMPTS {
                        return Err(e);
                    }
                    tracing::info!(endpoint, attempt, error = %e, "retrying a failed Strava call");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                answered => {
                    self.breaker().success();
                    match answered {
                        // A token we believe valid, refused (revoked, or our
                        // clock behind Strava's): refresh once and try again.
                        Err(StravaError::InvalidToken) if !renewed => {
                            renewed = true;
                            token = self.tokens.renew(athlete_id, &token).await?;
                        }
                        Err(StravaError::InvalidToken) => {
                            return Err(self.tokens.refused(athlete_id).await)
                        }
                        Err(StravaError::MissingScope(field)) => {
                            let scope = field.strip_suffix("_permission").unwrap_or(&field);
                            return Err(self.tokens.scope_refused(athlete_id, scope).await);
                        }
                        other => return other,
                    }
                }
            }
        }
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Delay before retry number `attempt` (1-based): base × 2^(attempt-1), plus
/// up to as much again at random so clients do not retry in lockstep.
fn backoff(attempt: u32) -> Duration {
    let exp = BACKOFF_BASE * 2u32.pow(attempt.saturating_sub(1));
    exp + exp.mul_f64(rand::rng().random::<f64>())
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, StravaError> {
    serde_json::from_slice(body).map_err(|e| StravaError::Malformed(e.to_string()))
}

/// The typed error for a non-success answer.
fn refusal(status: StatusCode, body: &[u8]) -> StravaError {
    let fault: StravaFault = serde_json::from_slice(body).unwrap_or_default();
    match status {
        StatusCode::UNAUTHORIZED => match fault
            .errors
            .iter()
            .find(|e| e.code == "missing" || e.field.ends_with("_permission"))
        {
            Some(missing) => StravaError::MissingScope(missing.field.clone()),
            None => StravaError::InvalidToken,
        },
        StatusCode::NOT_FOUND => StravaError::NotFound,
        StatusCode::TOO_MANY_REQUESTS => StravaError::RateLimited,
        s if s.is_server_error() => StravaError::Server(s.as_u16()),
        s => StravaError::Unexpected {
            status: s.as_u16(),
            message: fault.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

    use super::*;
    use crate::strava::budget::PerWindow;

    #[test]
    fn refusals_are_typed_from_strava_faults() {
        let invalid = br#"{"message":"Authorization Error","errors":[{"resource":"Athlete","field":"access_token","code":"invalid"}]}"#;
        assert!(matches!(
            refusal(StatusCode::UNAUTHORIZED, invalid),
            StravaError::InvalidToken
        ));
        let scope = br#"{"message":"Authorization Error","errors":[{"resource":"AccessToken","field":"activity:read_permission","code":"missing"}]}"#;
        assert!(matches!(
            refusal(StatusCode::UNAUTHORIZED, scope),
            StravaError::MissingScope(f) if f == "activity:read_permission"
        ));
        assert!(matches!(
            refusal(StatusCode::NOT_FOUND, b"{}"),
            StravaError::NotFound
        ));
        assert!(matches!(
            refusal(StatusCode::TOO_MANY_REQUESTS, b""),
            StravaError::RateLimited
        ));
        assert!(matches!(
            refusal(StatusCode::BAD_GATEWAY, b"<html>"),
            StravaError::Server(502)
        ));
        assert!(matches!(
            refusal(StatusCode::BAD_REQUEST, b"{\"message\":\"Bad Request\"}"),
            StravaError::Unexpected { status: 400, message } if message == "Bad Request"
        ));
    }

    #[test]
    fn the_breaker_opens_after_repeated_failures_and_half_opens_later() {
        let mut b = Breaker::default();
        for _ in 0..BREAKER_THRESHOLD - 1 {
            b.failure(100);
        }
        assert!(b.check(100).is_ok());
        b.failure(100);
        assert!(matches!(b.check(100), Err(StravaError::CircuitOpen(_))));
        assert!(b.check(100 + BREAKER_OPEN_SECS - 1).is_err());
        // Half open: one trial goes; a failure closes the door again at once.
        assert!(b.check(100 + BREAKER_OPEN_SECS).is_ok());
        b.failure(200);
        assert!(b.check(200).is_err());
        b.success();
        assert!(b.check(200).is_ok());
    }

    #[test]
    fn backoff_grows_exponentially_with_bounded_jitter() {
        for attempt in 1..=3 {
            let exp = BACKOFF_BASE * 2u32.pow(attempt - 1);
            let d = backoff(attempt);
            assert!(d >= exp && d <= exp * 2, "{attempt}: {d:?}");
        }
    }

    #[test]
    fn list_queries_cap_per_page() {
        let q = ListQuery {
            before: Some(10),
            per_page: Some(500),
            ..ListQuery::default()
        };
        assert_eq!(
            q.pairs(),
            vec![
                ("before", "10".to_string()),
                ("per_page", "200".to_string())
            ]
        );
    }

    /// One of the rate-limit headers, in any letter case.
    fn header_name() -> impl Strategy<Value = HeaderName> {
        let names = [
            "x-ratelimit-usage",
            "x-ratelimit-limit",
            "x-readratelimit-usage",
            "x-readratelimit-limit",
        ];
        (prop::sample::select(names.to_vec()), any::<u64>()).prop_map(|(name, case)| {
            let cased: String = name
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if case >> (i % 64) & 1 == 1 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            HeaderName::try_from(cased).unwrap()
        })
    }

    /// A header value: Strava's `"15min,daily"` or anything else a proxy or
    /// a broken Strava could send.
    fn header_value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (any::<u32>(), any::<u32>()).prop_map(|(a, b)| format!("{a},{b}").into_bytes()),
            (any::<i64>(), any::<i64>(), " {0,2}")
                .prop_map(|(a, b, pad)| format!("{pad}{a}{pad},{pad}{b}").into_bytes()),
            "[0-9, ]{0,30}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..24),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn rate_limit_headers_are_read_or_ignored_never_a_panic(
            headers in prop::collection::vec((header_name(), header_value()), 0..6),
        ) {
            let mut map = HeaderMap::new();
            for (name, value) in headers {
                if let Ok(value) = HeaderValue::from_bytes(&value) {
                    map.append(name, value);
                }
            }
            let report = RateReport::from_headers(&map);
            // What was read is what the header said.
            for (read, names) in [
                (report.usage, ["x-readratelimit-usage", "x-ratelimit-usage"]),
                (report.limit, ["x-readratelimit-limit", "x-ratelimit-limit"]),
            ] {
                let Some(PerWindow { quarter, day }) = read else {
                    continue;
                };
                let said = names.iter().filter_map(|n| map.get(*n)?.to_str().ok()).any(|v| {
                    v.split_once(',').is_some_and(|(q, d)| {
                        q.trim().parse() == Ok(quarter) && d.trim().parse() == Ok(day)
                    })
                });
                prop_assert!(said, "{read:?} from {map:?}");
            }
        }

        #[test]
        fn any_refusal_is_typed_never_a_panic(
            status in 400u16..600,
            body in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                ("[a-z_:]{0,30}", "[a-z]{0,10}").prop_map(|(field, code)| format!(
                    r#"{{"message":"x","errors":[{{"resource":"AccessToken","field":"{field}","code":"{code}"}}]}}"#
                ).into_bytes()),
            ],
        ) {
            let status = StatusCode::from_u16(status).unwrap();
            let typed = refusal(status, &body);
            if status.is_server_error() {
                prop_assert!(typed.is_transient());
            }
        }
    }
}
