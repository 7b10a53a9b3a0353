//! Every error the HTTP surface can answer, in Strava's fault shape. One
//! function maps each variant to a status, so a new variant forces a decision.

use std::collections::BTreeMap;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::{Content, ObjectBuilder, Ref, RefOr, Response, ResponseBuilder, Type};
use utoipa::{IntoResponses, ToSchema};

use crate::store::DbError;

/// What a refused admin request answers in `WWW-Authenticate`.
const ADMIN_CHALLENGE: &str = r#"Basic realm="strava-sync admin""#;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A query, path or body parameter is malformed or out of range.
    #[error("{message}")]
    BadParameter {
        resource: &'static str,
        field: String,
        message: String,
    },
    /// No bearer token, or one we do not know.
    #[error("Authorization Error")]
    Unauthorized,
    /// No admin token, or a wrong one. The answer invites HTTP Basic auth,
    /// so a browser asks its user for the token (as the password).
    #[error("Authorization Error")]
    AdminUnauthorized,
    /// Authenticated but not allowed (a foreign subscription, a refused scope).
    #[error("{message}")]
    Forbidden {
        message: String,
        resource: &'static str,
        field: String,
        code: &'static str,
    },
    /// Absent, or another athlete's: the two are indistinguishable on purpose.
    #[error("Record Not Found")]
    NotFound { resource: &'static str },
    /// What the request points at existed once and is gone for good (a
    /// change feed cursor older than the log keeps).
    #[error("{message}")]
    Gone {
        resource: &'static str,
        message: String,
    },
    /// An activity Strava announced whose fetch is still queued: absent for
    /// now, unlike a deleted one (`GET /api/sync` says when it should come).
    #[error("Record Not Fetched Yet")]
    NotFetchedYet,
    #[error("Payload Too Large")]
    PayloadTooLarge,
    /// The body did not arrive in time.
    #[error("Request Timeout")]
    RequestTimeout,
    #[error("Rate Limit Exceeded")]
    TooManyRequests {
        resource: &'static str,
        retry_after_secs: u64,
    },
    /// Storage cannot serve (a full disk, an I/O error, no connection in
    /// time); the detail is logged, not shown.
    #[error("Service Unavailable: {0}")]
    Unavailable(String),
    /// Strava failed or answered something unusable while we served the
    /// request (the detail is logged, not shown).
    #[error("Strava failed: {0}")]
    Upstream(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// What the framework or a middleware refused before a handler ran (a
    /// CORS check), re-worded in Strava's shape.
    #[error("{message}")]
    Refused { status: StatusCode, message: String },
}

impl ApiError {
    pub fn bad_parameter(
        resource: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ApiError::BadParameter {
            resource,
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        if e.is_unavailable() {
            ApiError::Unavailable(e.to_string())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

/// Strava's error body: `{"message": ..., "errors": [{resource, field, code}]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Fault<'a> {
    /// What went wrong, for people (`Record Not Found`, `Authorization Error`, ...).
    pub message: &'a str,
    /// What was at fault, for programs; one entry.
    #[schema(min_items = 1)]
    pub errors: Vec<FaultError<'a>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FaultError<'a> {
    /// The kind of thing at fault (`Activity`, `Athlete`, `Request`, ...).
    pub resource: &'a str,
    /// The parameter or part at fault (`per_page`, `id`, `access_token`, ...).
    pub field: &'a str,
    /// `invalid`, `exceeded`, `unavailable`, ...
    pub code: &'a str,
}

/// A documented answer in the fault shape, for `responses(...)` lists and
/// the groups below.
pub fn fault_response(description: &str) -> ResponseBuilder {
    let fault = Ref::from_schema_name(Fault::name());
    ResponseBuilder::new()
        .description(description)
        .content("application/json", Content::new(Some(fault)))
}

/// A 429 as [`ApiError::TooManyRequests`] answers it, `Retry-After` included.
fn rate_limited_response(description: &str) -> ResponseBuilder {
    let seconds = HeaderBuilder::new()
        .schema(Some(ObjectBuilder::new().schema_type(Type::Integer)))
        .description(Some("Seconds to wait before trying again"));
    fault_response(description).header("Retry-After", seconds.build())
}

fn responses(list: [(&str, ResponseBuilder); 3]) -> BTreeMap<String, RefOr<Response>> {
    list.into_iter()
        .map(|(status, response)| (status.to_string(), response.build().into()))
        .collect()
}

const UNAVAILABLE: &str = "Storage cannot serve (a full disk, an I/O error)";

/// What every route behind an athlete's API token may answer besides its
/// own answers (`responses(..., AthleteFaults)`).
pub struct AthleteFaults;

impl IntoResponses for AthleteFaults {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses([
            ("401", fault_response("No API token, or one we do not know")),
            (
                "429",
                rate_limited_response("Past `API_RATE_LIMIT` requests per second for this token"),
            ),
            ("503", fault_response(UNAVAILABLE)),
        ])
    }
}

/// What every route behind the admin token may answer besides its own.
pub struct AdminFaults;

impl IntoResponses for AdminFaults {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses([
            ("401", fault_response("No admin token, or the wrong one")),
            (
                "404",
                fault_response("`ADMIN_TOKEN` is not set: the admin surface does not exist"),
            ),
            ("503", fault_response(UNAVAILABLE)),
        ])
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadParameter { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::AdminUnauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Gone { .. } => StatusCode::GONE,
            ApiError::NotFetchedYet => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Refused { status, .. } => *status,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (message, resource, field, code) = match self {
            ApiError::BadParameter {
                resource,
                field,
                message,
            } => (message.as_str(), *resource, field.as_str(), "invalid"),
            ApiError::Unauthorized => ("Authorization Error", "Athlete", "access_token", "invalid"),
            ApiError::AdminUnauthorized => (
                "Authorization Error",
                "Application",
                "admin_token",
                "invalid",
            ),
            ApiError::Forbidden {
                message,
                resource,
                field,
                code,
            } => (message.as_str(), *resource, field.as_str(), *code),
            ApiError::NotFound { resource } => ("Record Not Found", *resource, "id", "invalid"),
            ApiError::NotFetchedYet => ("Record Not Fetched Yet", "Activity", "id", "pending"),
            ApiError::Gone { resource, message } => {
                (message.as_str(), *resource, "since", "expired")
            }
            ApiError::PayloadTooLarge => ("Payload Too Large", "Request", "body", "too_large"),
            ApiError::RequestTimeout => ("Request Timeout", "Request", "body", "timeout"),
            ApiError::TooManyRequests { resource, .. } => {
                ("Rate Limit Exceeded", *resource, "rate limit", "exceeded")
            }
            ApiError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "storage unavailable during a request");
                ("Service Unavailable", "Service", "database", "unavailable")
            }
            ApiError::Upstream(detail) => {
                tracing::warn!(error = %detail, "Strava failed during a request");
                ("Bad Gateway", "Strava", "", "unavailable")
            }
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "request failed");
                ("Internal Server Error", "Service", "", "error")
            }
            ApiError::Refused { message, .. } => {
                (message.as_str(), "Request", "request", "invalid")
            }
        };
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::TooManyRequests {
                retry_after_secs, ..
            } => {
                response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            ApiError::AdminUnauthorized => {
                response.insert_header((header::WWW_AUTHENTICATE, ADMIN_CHALLENGE));
            }
            _ => {}
        }
        response.json(Fault {
            message,
            errors: vec![FaultError {
                resource,
                field,
                code,
            }],
        })
    }
}
