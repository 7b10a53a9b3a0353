//! Liveness and readiness for load balancers and orchestrators.

use actix_web::{get, web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::error::{ApiError, Fault};
use super::Services;

#[derive(Serialize, ToSchema)]
struct Health {
    /// `ok` (alive) or `ready` (the database answers).
    status: &'static str,
}

/// 200 while the process runs.
#[utoipa::path(
    tag = "operations",
    responses((status = 200, description = "The process runs", body = Health))
)]
#[get("/healthz")]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// 200 when the database answers; after a storage fault, 503 until a write
/// that must grow the file commits.
#[utoipa::path(
    tag = "operations",
    responses(
        (status = 200, description = "The database answers", body = Health),
        (status = 503, description = "The database does not answer", body = Fault),
    )
)]
#[get("/readyz")]
async fn readyz(state: web::Data<Services>) -> Result<HttpResponse, ApiError> {
    if state.store.ready().await {
        Ok(HttpResponse::Ok().json(Health { status: "ready" }))
    } else {
        Err(ApiError::Unavailable("the database is not ready".into()))
    }
}

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(healthz).service(readyz);
}
