//! Operator view of the events sent to the application: counts by delivery
//! state, the oldest undelivered change and the failed deliveries
//! (`GET /admin/deliveries`), and sending the failed ones again
//! (`POST /admin/deliveries/replay`).

use actix_web::{get, post, web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::error::{AdminFaults, ApiError};
use super::webhook_admin::Replayed;
use super::{auth::AdminAuth, Services};
use crate::config::Settings;
use crate::store::changes::DeliveryReport;

/// How many failed deliveries the listing shows (newest first).
const FAILED_SHOWN: usize = 100;

#[derive(Serialize, ToSchema)]
struct Deliveries {
    /// Whether `APP_WEBHOOK_URL` is set (unset: nothing is sent, and
    /// `pending` counts what would be).
    enabled: bool,
    #[serde(flatten)]
    report: DeliveryReport,
}

/// Events by delivery state, the oldest undelivered one's time, and the
/// newest failed deliveries.
#[utoipa::path(
    tag = "admin",
    security(("admin_token" = [])),
    responses((status = 200, description = "The deliveries", body = Deliveries), AdminFaults)
)]
#[get("/admin/deliveries")]
async fn deliveries(
    _: AdminAuth,
    state: web::Data<Services>,
    settings: web::Data<Settings>,
) -> Result<HttpResponse, ApiError> {
    let report = state.store.delivery_report(FAILED_SHOWN).await?;
    Ok(HttpResponse::Ok().json(Deliveries {
        enabled: settings.app_webhook.is_some(),
        report,
    }))
}

/// Sends every failed event again, from now, in order per athlete.
#[utoipa::path(
    tag = "admin",
    security(("admin_token" = [])),
    responses((status = 200, description = "Queued again", body = Replayed), AdminFaults)
)]
#[post("/admin/deliveries/replay")]
async fn replay_deliveries(
    _: AdminAuth,
    state: web::Data<Services>,
) -> Result<HttpResponse, ApiError> {
    let replayed = state
        .store
        .replay_failed_deliveries(state.clock.epoch())
        .await?;
    Ok(HttpResponse::Ok().json(Replayed { replayed }))
}

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(deliveries).service(replay_deliveries);
}
