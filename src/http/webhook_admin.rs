//! Operator view of the webhook inbox: counts by status and the failed
//! events (`GET /admin/webhooks`), and replaying the failed ones
//! (`POST /admin/webhooks/replay`).

use actix_web::{get, post, web, HttpResponse};
use serde_json::json;

use super::{auth::AdminAuth, error::ApiError, Services};
use crate::webhook::Webhooks;

/// How many failed events the listing shows (newest first).
const FAILED_SHOWN: usize = 100;

#[get("/admin/webhooks")]
async fn overview(_: AdminAuth, state: web::Data<Services>) -> Result<HttpResponse, ApiError> {
    let report = state.store.inbox_report(FAILED_SHOWN).await?;
    Ok(HttpResponse::Ok().json(report))
}

#[post("/admin/webhooks/replay")]
async fn replay(
    _: AdminAuth,
    state: web::Data<Services>,
    webhooks: web::Data<Webhooks>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.epoch();
    let replayed = state.store.replay_failed_events(now).await?;
    if replayed > 0 {
        webhooks.wake.notify_one();
    }
    Ok(HttpResponse::Ok().json(json!({ "replayed": replayed })))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(overview).service(replay);
}
