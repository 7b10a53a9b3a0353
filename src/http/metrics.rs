//! The admin-only Prometheus scrape route. Metric names are declared next to
//! the code that records them; the recorder is installed at startup.

use actix_web::{get, web, HttpResponse};
use metrics_exporter_prometheus::PrometheusHandle;
use utoipa_actix_web::service_config::ServiceConfig;

use super::auth::AdminAuth;
use super::error::{AdminFaults, ApiError};
use super::Services;

/// Renders every metric; athletes by tier and status and the events waiting
/// for delivery are counted now, so those gauges are never stale.
#[utoipa::path(
    tag = "operations",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Prometheus text exposition", body = String,
            content_type = "text/plain; version=0.0.4"),
        AdminFaults,
    )
)]
#[get("/metrics")]
async fn scrape(
    _: AdminAuth,
    state: web::Data<Services>,
    metrics: web::Data<PrometheusHandle>,
) -> Result<HttpResponse, ApiError> {
    for (tier, status, n) in state.store.athletes_by_tier().await? {
        ::metrics::gauge!("athletes", "tier" => tier, "status" => status).set(n as f64);
    }
    let deliveries = state.store.delivery_report(0).await?;
    let counts = deliveries.counts;
    for (delivery, n) in [("pending", counts.pending), ("failed", counts.failed)] {
        ::metrics::gauge!("app_events", "delivery" => delivery).set(n as f64);
    }
    let oldest = deliveries
        .oldest_pending_at
        .map_or(0, |at| state.clock.epoch() - at);
    ::metrics::gauge!("app_events_oldest_undelivered_seconds").set(oldest as f64);
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(metrics.render()))
}

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(scrape);
}
