//! The HTTP surface: one module per route group, shared guards, one error
//! type, and the middleware every request passes through.

pub mod admin;
pub mod auth;
pub mod changes;
pub mod connect;
pub mod delivery_admin;
pub mod error;
pub mod health;
pub mod metrics;
pub mod openapi;
pub mod per_address;
mod query;
pub mod read_api;
pub mod status_page;
pub mod sync_api;
pub mod webhook;
pub mod webhook_admin;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_cors::Cors;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::{JsonPayloadError, PayloadError};
use actix_web::middleware::Next;
use actix_web::{http::header, web, HttpMessage, HttpResponse, ResponseError};
use futures_util::StreamExt;
use metrics_exporter_prometheus::PrometheusHandle;
use utoipa_actix_web::service_config::ServiceConfig;

use crate::config::Settings;
use crate::model::clock::Clock;
use crate::outbox::ChangeWatch;
use crate::store::Store;
use crate::strava::budget::Budget;
use crate::strava::client::StravaClient;
use crate::strava::oauth::StravaOAuth;
use crate::sync::attention::Attention;
use crate::sync::queue::JobQueue;
use crate::webhook::Webhooks;
use error::ApiError;

/// The largest request body any route accepts (a webhook event is far smaller).
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// How long a request's head may take to arrive, and then its body. Strava
/// waits two seconds for a webhook's answer and no route takes more than
/// 16 KiB, so a client that declares a body and stalls is only holding the
/// connection.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The core services the handlers share with the background workers; the
/// HTTP-only pieces (settings, [`auth::Access`], the metrics handle) are
/// registered as their own app data.
pub struct Services {
    pub store: Store,
    /// Notes which athletes are looking (every use of their API token).
    pub attention: Arc<Attention>,
    /// The service's notion of now (the budget's clock).
    pub clock: Arc<dyn Clock>,
    /// The shared Strava budget (snapshot, pause/resume).
    pub budget: Arc<Budget>,
    /// Every Strava API call goes through it (and so through the budget).
    pub strava: Arc<StravaClient>,
    pub oauth: Arc<StravaOAuth>,
    /// Enqueue work for the job runner and wake it.
    pub jobs: Arc<JobQueue>,
    /// Wakes the change feed's streams when a change is logged.
    pub changes: ChangeWatch,
}

/// Everything `configure` registers besides the routes.
#[derive(Clone)]
pub struct AppData {
    pub services: web::Data<Services>,
    pub settings: web::Data<Settings>,
    pub webhooks: web::Data<Webhooks>,
    pub access: web::Data<auth::Access>,
    pub limits: web::Data<per_address::AddressLimits>,
    pub metrics: web::Data<PrometheusHandle>,
    pub streams: web::Data<changes::OpenStreams>,
}

/// Registers every route and the extractor error handlers. Each module
/// registers its handlers through utoipa-actix-web's `ServiceConfig`, which
/// takes only handlers with a `#[utoipa::path]` and adds each to the
/// document [`openapi::service`] serves.
pub fn configure(data: &AppData) -> impl FnOnce(&mut ServiceConfig) + '_ {
    move |cfg| {
        cfg.app_data(data.services.clone())
            .app_data(data.settings.clone())
            .app_data(data.webhooks.clone())
            .app_data(data.access.clone())
            .app_data(data.limits.clone())
            .app_data(data.metrics.clone())
            .app_data(data.streams.clone())
            .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
            .app_data(
                web::JsonConfig::default()
                    .limit(MAX_BODY_BYTES)
                    .error_handler(|e, _| match e {
                        JsonPayloadError::Payload(e) => payload_error(e).into(),
                        e => body_error(e.to_string(), e.status_code()).into(),
                    }),
            )
            .app_data(web::QueryConfig::default().error_handler(|e, _| {
                ApiError::bad_parameter("Request", "query", e.to_string()).into()
            }))
            .app_data(web::PathConfig::default().error_handler(|e, _| {
                ApiError::bad_parameter("Request", "path", e.to_string()).into()
            }))
            // The router tries routes in this order, matching each one with
            // a path parameter by regex: Strava's callback, by far the
            // busiest route, goes first.
            .configure(webhook::configure)
            .configure(health::configure)
            .configure(metrics::configure)
            .configure(connect::configure)
            .configure(admin::configure)
            .configure(read_api::configure)
            .configure(changes::configure)
            .configure(delivery_admin::configure)
            .configure(sync_api::configure)
            .configure(webhook_admin::configure)
            .configure(status_page::configure)
            .default_service(web::to(|| async {
                HttpResponse::from_error(ApiError::NotFound { resource: "Route" })
            }));
    }
}

fn body_error(message: String, status: actix_web::http::StatusCode) -> ApiError {
    if status == actix_web::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge
    } else {
        ApiError::bad_parameter("Request", "body", message)
    }
}

/// The answer to a body that could not be read: too slow, or broken.
fn payload_error(error: PayloadError) -> ApiError {
    match error {
        PayloadError::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => ApiError::RequestTimeout,
        PayloadError::Overflow => ApiError::PayloadTooLarge,
        other => ApiError::bad_parameter("Request", "body", other.to_string()),
    }
}

/// The request body, failing with a timeout once `deadline` passes.
fn with_deadline(payload: Payload, deadline: tokio::time::Instant) -> Payload {
    let chunks = futures_util::stream::unfold(Some(payload), move |payload| async move {
        let mut payload = payload?;
        match tokio::time::timeout_at(deadline, payload.next()).await {
            Ok(Some(chunk)) => Some((chunk, Some(payload))),
            Ok(None) => None,
            Err(_) => {
                let late = std::io::Error::new(std::io::ErrorKind::TimedOut, "body read timed out");
                Some((Err(PayloadError::Io(late)), None))
            }
        }
    });
    let chunks: std::pin::Pin<Box<dyn futures_util::Stream<Item = _>>> = Box::pin(chunks);
    Payload::Stream { payload: chunks }
}

/// CORS for browser frontends: only the configured origins, only what the
/// read API needs. A preflight from another origin is refused (in the fault
/// shape, by [`in_fault_shape`]); a plain request from one is served without
/// CORS headers, so the browser keeps the answer from the page.
pub fn cors(settings: &Settings) -> Cors {
    let allowed = settings.cors_allowed_origins.clone();
    Cors::default()
        .allowed_origin_fn(move |origin, _| {
            origin
                .to_str()
                .is_ok_and(|origin| allowed.iter().any(|a| a.matches(origin)))
        })
        .allowed_methods(["GET", "POST"])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_NONE_MATCH,
            header::ACCEPT,
            // A fetch-based SSE client resuming the change feed.
            header::HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([header::ETAG, header::RETRY_AFTER])
        .max_age(3600)
}

/// Answers what the framework or a middleware refused without a body of ours
/// (a CORS preflight from an unlisted origin) in Strava's fault shape, as
/// every handler does. HTTP so malformed that actix rejects it before any
/// middleware runs (a bad request line, conflicting lengths, too many
/// headers) keeps actix's bare 400 or 431: nothing of ours sees it.
pub async fn in_fault_shape(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let response = next.call(req).await?;
    if !is_bare_error(&response) {
        return Ok(response.map_into_boxed_body());
    }
    let (request, response) = response.into_parts();
    let status = response.status();
    // The framework's own words (actix-cors says which check failed), when
    // they are a short line of text.
    let said = actix_web::body::to_bytes_limited(response.into_body(), 200)
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
        .filter(|text| !text.trim().is_empty());
    let message = said.unwrap_or_else(|| status.canonical_reason().unwrap_or("Error").to_string());
    let fault = ApiError::Refused { status, message }.error_response();
    Ok(ServiceResponse::new(request, fault))
}

/// An error status whose body is not JSON, so not one of our faults.
fn is_bare_error<B>(response: &ServiceResponse<B>) -> bool {
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    (status.is_client_error() || status.is_server_error()) && !json
}

/// Rejects bodies declared too large before anything reads them, gives the
/// body [`READ_TIMEOUT`] to arrive, records latency by route pattern,
/// and logs the route, never the raw path (the webhook path carries a
/// secret).
pub async fn observe(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        let response = ApiError::PayloadTooLarge.error_response();
        return Ok(req.into_response(response));
    }
    let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
    let payload = req.take_payload();
    req.set_payload(with_deadline(payload, deadline));
    let started = Instant::now();
    let method = req.method().to_string();
    let response = next.call(req).await?;
    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_string());
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    ::metrics::histogram!(
        "http_request_duration_seconds",
        "method" => method.clone(),
        "route" => route.clone(),
        "status" => status.to_string()
    )
    .record(elapsed.as_secs_f64());
    tracing::info!(%method, %route, status, elapsed_ms = elapsed.as_millis() as u64, "request");
    Ok(response.map_into_boxed_body())
}
