//! The admin-only Prometheus scrape route. Metric names are declared next to
//! the code that records them; the recorder is installed at startup.

use actix_web::{get, web, HttpResponse};
use metrics_exporter_prometheus::PrometheusHandle;

use super::auth::AdminAuth;

#[get("/metrics")]
async fn scrape(_: AdminAuth, metrics: web::Data<PrometheusHandle>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(metrics.render())
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(scrape);
}
