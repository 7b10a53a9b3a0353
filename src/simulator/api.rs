//! The API at `{base}/api/v3`: the authenticated athlete, the activity list
//! and activity detail, behind [`meter`], which does what Strava does to
//! every API call: authenticate, count against the rate limits (rejected
//! calls too), answer 429 past a limit, apply injected faults, and write the
//! four rate-limit headers with the casing seen on the wire.

use std::ops::Bound;
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::oauth::Grant;
use super::{bad_request, fault, Simulator};

/// Largest `per_page` Strava honours; larger asks get this many.
const MAX_PER_PAGE: usize = 200;
const DEFAULT_PER_PAGE: usize = 30;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/athlete", web::get().to(athlete))
        .route("/athlete/activities", web::get().to(activities))
        .route("/activities/{id}", web::get().to(activity));
}

/// The `Authorization: Bearer` token, if any.
pub(crate) fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// The endpoint a call is counted under: method and path with ids as `{id}`.
pub(crate) fn endpoint(method: &str, path: &str) -> String {
    let path: Vec<&str> = path
        .split('/')
        .map(|seg| {
            if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
                "{id}"
            } else {
                seg
            }
        })
        .collect();
    format!("{method} {}", path.join("/"))
}

fn unauthorized() -> HttpResponse {
    fault(
        StatusCode::UNAUTHORIZED,
        "Authorization Error",
        "Athlete",
        "access_token",
        "invalid",
    )
}

/// Wraps every `/api/v3` call. Calls that cannot be tied to the application
/// (no or dead token) are answered 401 without counting or headers; push
/// subscription calls carry the client credentials instead and always count.
pub(crate) async fn meter(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(sim) = req.app_data::<web::Data<Simulator>>().cloned() else {
        return Err(actix_web::error::ErrorInternalServerError(
            "simulator missing",
        ));
    };
    let endpoint = endpoint(req.method().as_str(), req.path());
    let query = req.query_string().to_string();
    let subscriptions = req
        .path()
        .strip_prefix("/api/v3/push_subscriptions")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    let now = sim.clock.epoch();
    let caller = if subscriptions {
        None
    } else {
        let token = bearer(req.request());
        let grant = token.and_then(|t| sim.state().tokens.caller(t, now));
        match grant {
            Some(grant) => Some(grant),
            None => {
                let response = unauthorized();
                sim.record(&endpoint, &query, None, response.status());
                return Ok(req.into_response(response));
            }
        }
    };
    let athlete = caller.as_ref().map(|g| g.athlete_id);
    let (admission, fault_plan) = {
        let mut state = sim.state();
        let limits = state.settings.limits;
        let admission = state.rate.admit(now, limits);
        let fault_plan = if admission.over {
            None
        } else {
            state.faults.take()
        };
        (admission, fault_plan)
    };

    let mut response = if admission.over {
        req.into_response(fault(
            StatusCode::TOO_MANY_REQUESTS,
            "Rate Limit Exceeded",
            "Application",
            "rate limit",
            "exceeded",
        ))
    } else {
        if let Some((latency, _)) = fault_plan {
            tokio::time::sleep(latency).await;
        }
        match fault_plan.and_then(|(_, status)| status) {
            Some(status) => {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let reason = status.canonical_reason().unwrap_or("Server Error");
                req.into_response(fault(status, reason, "Service", "", "error"))
            }
            None => {
                if let Some(grant) = caller {
                    req.extensions_mut().insert(grant);
                }
                next.call(req).await?.map_into_boxed_body()
            }
        }
    };
    let head = response.response_mut().head_mut();
    for (name, value) in admission.headers() {
        if let Ok(value) = HeaderValue::from_str(&value) {
            head.headers.insert(HeaderName::from_static(name), value);
        }
    }
    // Strava's front end writes header names Camel-Case: X-Ratelimit-Usage.
    head.set_camel_case_headers(true);
    sim.record(&endpoint, &query, athlete, response.status());
    Ok(response)
}

/// Latency and optional status for the next faulted call.
pub(crate) type FaultPlan = (Duration, Option<u16>);

fn missing_scope() -> HttpResponse {
    fault(
        StatusCode::UNAUTHORIZED,
        "Authorization Error",
        "AccessToken",
        "activity:read_permission",
        "missing",
    )
}

fn activity_not_found() -> HttpResponse {
    fault(
        StatusCode::NOT_FOUND,
        "Record Not Found",
        "Activity",
        "id",
        "invalid",
    )
}

async fn athlete(sim: web::Data<Simulator>, caller: web::ReqData<Grant>) -> HttpResponse {
    let state = sim.state();
    match state.athletes.get(&caller.athlete_id) {
        Some(athlete) => HttpResponse::Ok().json(athlete.detail()),
        None => unauthorized(),
    }
}

/// Raw query values: parsed by hand so a bad one gets Strava's fault.
#[derive(Debug, Deserialize)]
struct ListQuery {
    before: Option<String>,
    after: Option<String>,
    page: Option<String>,
    per_page: Option<String>,
}

/// Parses an optional query value; a bad one names its field.
fn parse<T: std::str::FromStr>(
    value: Option<&str>,
    field: &'static str,
) -> Result<Option<T>, &'static str> {
    value
        .map(|v| v.trim().parse().map_err(|_| field))
        .transpose()
}

async fn activities(
    sim: web::Data<Simulator>,
    caller: web::ReqData<Grant>,
    query: web::Query<ListQuery>,
) -> HttpResponse {
    let q = query.into_inner();
    let parsed = (|| {
        Ok((
            parse::<i64>(q.before.as_deref(), "before")?,
            parse::<i64>(q.after.as_deref(), "after")?,
            parse::<usize>(q.page.as_deref(), "page")?,
            parse::<usize>(q.per_page.as_deref(), "per_page")?,
        ))
    })();
    let (before, after, page, per_page) = match parsed {
        Ok(values) => values,
        Err(field) => return bad_request("Application", field, "invalid"),
    };
    if !caller.scopes.can_list_activities() {
        return missing_scope();
    }
    let page = page.filter(|p| *p >= 1).unwrap_or(1);
    let per_page = per_page
        .filter(|p| *p >= 1)
        .unwrap_or(DEFAULT_PER_PAGE)
        .min(MAX_PER_PAGE);
    let skip = (page - 1).saturating_mul(per_page);
    let sees_private = caller.scopes.sees_private();

    let state = sim.state();
    let Some(athlete) = state.athletes.get(&caller.athlete_id) else {
        return unauthorized();
    };
    // `after` and `before` are exclusive epoch seconds.
    let lower = after.map_or(Bound::Unbounded, |a| Bound::Excluded((a, u64::MAX)));
    let upper = before.map_or(Bound::Unbounded, |b| Bound::Excluded((b, 0)));
    if matches!((lower, upper), (Bound::Excluded(l), Bound::Excluded(u)) if l >= u) {
        return HttpResponse::Ok().json(Vec::<()>::new());
    }
    let range = athlete.index.range((lower, upper));
    // Newest first, except oldest first when only `after` is given.
    let ids: Box<dyn Iterator<Item = &(i64, u64)>> = if after.is_some() && before.is_none() {
        Box::new(range)
    } else {
        Box::new(range.rev())
    };
    let page: Vec<_> = ids
        .filter_map(|(_, id)| state.activities.get(id))
        .filter(|a| sees_private || !a.private)
        .skip(skip)
        .take(per_page)
        .map(|a| a.summary(athlete))
        .collect();
    HttpResponse::Ok().json(page)
}

async fn activity(
    sim: web::Data<Simulator>,
    caller: web::ReqData<Grant>,
    path: web::Path<String>,
) -> HttpResponse {
    if !caller.scopes.can_list_activities() {
        return missing_scope();
    }
    let now = sim.clock.epoch();
    let state = sim.state();
    let found = path
        .parse::<u64>()
        .ok()
        .and_then(|id| state.activities.get(&id))
        .filter(|a| a.athlete_id == caller.athlete_id)
        .filter(|a| !a.private || caller.scopes.sees_private())
        .filter(|a| a.readable_at <= now);
    match found.zip(state.athletes.get(&caller.athlete_id)) {
        Some((activity, athlete)) => HttpResponse::Ok().json(activity.detail(athlete)),
        None => activity_not_found(),
    }
}
