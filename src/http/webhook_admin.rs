//! Operator view of the webhook inbox: counts by status and the failed
//! events (`GET /admin/webhooks`), and replaying the failed ones
//! (`POST /admin/webhooks/replay`).

use actix_web::{get, post, web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::error::{AdminFaults, ApiError};
use super::{auth::AdminAuth, Services};
use crate::store::inbox::InboxReport;
use crate::webhook::Webhooks;

/// How many failed events the listing shows (newest first).
const FAILED_SHOWN: usize = 100;

/// What a replay of failed events (inbox or deliveries) answers.
#[derive(Serialize, ToSchema)]
pub(super) struct Replayed {
    /// Failed events queued again.
    pub(super) replayed: usize,
}

/// Inbox counts by status, and the newest failed events.
#[utoipa::path(
    tag = "admin",
    security(("admin_token" = [])),
    responses((status = 200, description = "The inbox", body = InboxReport), AdminFaults)
)]
#[get("/admin/webhooks")]
async fn overview(_: AdminAuth, state: web::Data<Services>) -> Result<HttpResponse, ApiError> {
    let report = state.store.inbox_report(FAILED_SHOWN).await?;
    Ok(HttpResponse::Ok().json(report))
}

/// Queues every failed event to be applied again.
#[utoipa::path(
    tag = "admin",
    security(("admin_token" = [])),
    responses((status = 200, description = "Queued again", body = Replayed), AdminFaults)
)]
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
    Ok(HttpResponse::Ok().json(Replayed { replayed }))
}

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(overview).service(replay);
}
