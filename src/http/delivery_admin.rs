//! Operator view of the events sent to the application: counts by delivery
//! state, the oldest undelivered change and the failed deliveries
//! (`GET /admin/deliveries`), and sending the failed ones again
//! (`POST /admin/deliveries/replay`).

use actix_web::{get, post, web, HttpResponse};
use serde_json::json;

use super::{auth::AdminAuth, error::ApiError, Services};
use crate::config::Settings;

/// How many failed deliveries the listing shows (newest first).
const FAILED_SHOWN: usize = 100;

#[get("/admin/deliveries")]
async fn overview(
    _: AdminAuth,
    state: web::Data<Services>,
    settings: web::Data<Settings>,
) -> Result<HttpResponse, ApiError> {
    let report = state.store.delivery_report(FAILED_SHOWN).await?;
    Ok(HttpResponse::Ok().json(json!({
        "enabled": settings.app_webhook.is_some(),
        "counts": report.counts,
        "oldest_pending_at": report.oldest_pending_at,
        "failed": report.failed,
    })))
}

#[post("/admin/deliveries/replay")]
async fn replay(_: AdminAuth, state: web::Data<Services>) -> Result<HttpResponse, ApiError> {
    let replayed = state
        .store
        .replay_failed_deliveries(state.clock.epoch())
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "replayed": replayed })))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(overview).service(replay);
}
