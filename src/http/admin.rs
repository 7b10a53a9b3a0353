//! Operator routes (admin token): the budget, the pause switch, every
//! athlete's sync state and tier.

use std::collections::BTreeMap;

use actix_web::{get, patch, post, web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::auth::AdminAuth;
use super::error::ApiError;
use super::Services;
use crate::config::Settings;
use crate::model::Purpose;
use crate::strava::budget::WindowKind;

/// Both windows (our count and Strava's last report, limits, resets), calls
/// today by purpose, what is paused or throttled, and when today's budget
/// runs out at the current rate.
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
    Ok(HttpResponse::Ok().json(json!({
        "paused": snapshot.paused,
        "throttled": throttled,
        "windows": snapshot.windows,
        "blocked": snapshot.blocked,
        "calls_today_by_purpose": today,
        "forecast": snapshot.forecast,
    })))
}

#[post("/admin/pause")]
async fn pause(_: AdminAuth, state: web::Data<Services>) -> Result<HttpResponse, ApiError> {
    state.budget.set_paused(true).await?;
    Ok(HttpResponse::Ok().json(json!({"paused": true})))
}

#[post("/admin/resume")]
async fn resume(_: AdminAuth, state: web::Data<Services>) -> Result<HttpResponse, ApiError> {
    state.budget.set_paused(false).await?;
    state.jobs.wake();
    Ok(HttpResponse::Ok().json(json!({"paused": false})))
}

#[get("/admin/athletes")]
async fn athletes(_: AdminAuth, state: web::Data<Services>) -> Result<HttpResponse, ApiError> {
    let athletes = state.store.athletes_overview().await?;
    Ok(HttpResponse::Ok().json(json!({ "athletes": athletes })))
}

/// `PATCH /admin/athletes/{id}`: what may change about an athlete.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AthletePatch {
    tier: String,
}

/// Places an athlete in one of the configured `TIERS`: their fetches and
/// checks weigh by its weight from the next claim on.
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
    Ok(HttpResponse::Ok().json(json!({"athlete_id": id, "tier": tier})))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(show_budget)
        .service(pause)
        .service(resume)
        .service(athletes)
        .service(set_tier);
}
