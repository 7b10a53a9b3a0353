//! Operator routes (admin token): the budget, the pause switch, every
//! athlete's sync state and tier.

use std::collections::BTreeMap;

use actix_web::{get, patch, post, web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::auth::AdminAuth;
use super::error::{AdminFaults, ApiError, Fault};
use super::Services;
use crate::config::Settings;
use crate::model::Purpose;
use crate::store::sync_state::AthleteOverview;
use crate::strava::budget::{BlockedView, Forecast, WindowKind, WindowView};

/// `GET /admin/budget`.
#[derive(Serialize, ToSchema)]
struct BudgetReport {
    /// Background use stopped by `POST /admin/pause`.
    paused: bool,
    /// Some background purpose may not call right now.
    throttled: bool,
    windows: Vec<WindowView>,
    /// Purposes that may not call right now, with why and until when.
    blocked: BTreeMap<&'static str, BlockedView>,
    /// Every purpose, with the calls it made since midnight UTC.
    calls_today_by_purpose: BTreeMap<&'static str, i64>,
    forecast: Forecast,
}

/// `POST /admin/pause` and `/admin/resume`.
#[derive(Serialize, ToSchema)]
struct Paused {
    paused: bool,
}

/// `GET /admin/athletes`.
#[derive(Serialize, ToSchema)]
struct Athletes {
    /// Oldest connection first.
    athletes: Vec<AthleteOverview>,
}

/// `PATCH /admin/athletes/{id}`'s answer.
#[derive(Serialize, ToSchema)]
struct Placed {
    athlete_id: i64,
    tier: String,
}

/// Both windows (our count and Strava's last report, limits, resets), calls
/// today by purpose, what is paused or throttled, and when today's budget
/// runs out at the current rate.
#[utoipa::path(
    tag = "admin",
    security(("admin_token" = [])),
    responses((status = 200, description = "The budget now", body = BudgetReport), AdminFaults)
)]
#[get("/admin/budget")]
async fn show_budget(_: AdminAuth, state: web::Data<Services>) -> Result<HttpResponse, ApiError> {
    let snapshot = state.budget.snapshot();
    let midnight = WindowKind::Day.start_of(state.clock.epoch());
    let counted = state.store.calls_by_purpose(midnight).await?;
    let mut today: BTreeMap<&str, i64> = Purpose::ALL.iter().map(|p| (p.as_str(), 0)).collect();
    for (purpose, n) in &counted {
        if let Some(slot) = today.get_mut(purpose.as_str()) {
            *slot = *n;
        }
    }
    let throttled = snapshot
        .blocked
        .keys()
        .any(|p| *p != Purpose::Interactive.as_str());
    Ok(HttpResponse::Ok().json(BudgetReport {
        paused: snapshot.paused,
        throttled,
        windows: snapshot.windows,
        blocked: snapshot.blocked,
        calls_today_by_purpose: today,
        forecast: snapshot.forecast,
    }))
}

/// Stops every call but interactive ones until `POST /admin/resume`.
#[utoipa::path(
    tag = "admin",
    security(("admin_token" = [])),
    responses((status = 200, description = "Paused", body = Paused), AdminFaults)
)]
#[post("/admin/pause")]
async fn pause(_: AdminAuth, state: web::Data<Services>) -> Result<HttpResponse, ApiError> {
    state.budget.set_paused(true).await?;
    Ok(HttpResponse::Ok().json(Paused { paused: true }))
}

#[utoipa::path(
    tag = "admin",
    security(("admin_token" = [])),
    responses((status = 200, description = "Resumed", body = Paused), AdminFaults)
)]
#[post("/admin/resume")]
async fn resume(_: AdminAuth, state: web::Data<Services>) -> Result<HttpResponse, ApiError> {
    state.budget.set_paused(false).await?;
    state.jobs.wake();
    Ok(HttpResponse::Ok().json(Paused { paused: false }))
}

/// Every athlete with their sync state.
#[utoipa::path(
    tag = "admin",
    security(("admin_token" = [])),
    responses((status = 200, description = "Every athlete", body = Athletes), AdminFaults)
)]
#[get("/admin/athletes")]
async fn athletes(_: AdminAuth, state: web::Data<Services>) -> Result<HttpResponse, ApiError> {
    let athletes = state.store.athletes_overview().await?;
    Ok(HttpResponse::Ok().json(Athletes { athletes }))
}

/// `PATCH /admin/athletes/{id}`: what may change about an athlete.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AthletePatch {
    /// One of `TIERS`.
    tier: String,
}

/// Places an athlete in one of the configured `TIERS`: their fetches and
/// checks weigh by its weight from the next claim on.
#[utoipa::path(
    tag = "admin",
    security(("admin_token" = [])),
    params(("id" = i64, Path, description = "The athlete's Strava id")),
    request_body = AthletePatch,
    responses(
        AdminFaults,
        (status = 200, description = "The athlete's tier now", body = Placed),
        (status = 400, description = "A tier not in `TIERS`, or a malformed body", body = Fault),
        (status = 404, description = "No such athlete, or `ADMIN_TOKEN` is not set", body = Fault),
    )
)]
#[patch("/admin/athletes/{id}")]
async fn set_tier(
    _: AdminAuth,
    state: web::Data<Services>,
    settings: web::Data<Settings>,
    id: web::Path<i64>,
    patch: web::Json<AthletePatch>,
) -> Result<HttpResponse, ApiError> {
    let (id, tier) = (id.into_inner(), patch.into_inner().tier);
    if !settings.tiers.iter().any(|(name, _)| *name == tier) {
        let known: Vec<&str> = settings.tiers.iter().map(|(n, _)| n.as_str()).collect();
        return Err(ApiError::bad_parameter(
            "Athlete",
            "tier",
            format!("unknown tier `{tier}`; TIERS has {}", known.join(", ")),
        ));
    }
    if !state.store.set_tier(id, tier.clone()).await? {
        return Err(ApiError::NotFound {
            resource: "Athlete",
        });
    }
    Ok(HttpResponse::Ok().json(Placed {
        athlete_id: id,
        tier,
    }))
}

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(show_budget)
        .service(pause)
        .service(resume)
        .service(athletes)
        .service(set_tier);
}
