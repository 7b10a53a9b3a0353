//! Operator view of the webhook inbox: counts by status and the failed
//! events (`GET /admin/webhooks`), and replaying the failed ones
//! (`POST /admin/webhooks/replay`).

use actix_web::{get, post, web, HttpResponse};
use serde_json::json;

use super::{auth::AdminAuth, error::ApiError, AppState};
use crate::store::{inbox, subscription};
use crate::webhook::Webhooks;

/// How many failed events the listing shows (newest first).
const FAILED_SHOWN: usize = 100;

#[get("/admin/webhooks")]
async fn overview(_: AdminAuth, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let (counts, failed, subscription_id) = state
        .store
        .read(|c| {
            Ok((
                inbox::counts(c)?,
                inbox::failed(c, FAILED_SHOWN)?,
                subscription::id(c)?,
            ))
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "subscription_id": subscription_id,
        "counts": counts,
        "failed": failed,
    })))
}

#[post("/admin/webhooks/replay")]
async fn replay(
    _: AdminAuth,
    state: web::Data<AppState>,
    webhooks: web::Data<Webhooks>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.epoch();
    let replayed = state
        .store
        .write(move |tx| inbox::replay_failed(tx, now))
        .await?;
    if replayed > 0 {
        webhooks.wake.notify_one();
    }
    Ok(HttpResponse::Ok().json(json!({ "replayed": replayed })))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(overview).service(replay);
}
