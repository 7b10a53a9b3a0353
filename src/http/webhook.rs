//! Strava's webhook callback at `/webhook/{path_secret}`: the subscription
//! handshake (GET) and event delivery (POST).
//!
//! An event is validated, checked against our subscription id and committed
//! to the inbox before the 200, so an acknowledged event survives a crash;
//! applying it is the worker's job (`crate::webhook::worker`). Strava's
//! events are not signed: the unguessable path and the subscription id are
//! what keeps forged events out. When no subscription id is stored yet (a
//! subscription made outside `strava-sync subscription create`), any
//! subscription id is accepted and the path secret alone guards the door.

use std::collections::BTreeMap;
use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::{de::Error as _, Deserialize, Deserializer};
use serde_json::json;

use super::auth::constant_time_eq;
use super::per_address::{AddressLimits, Route};
use super::{error::ApiError, Services, MAX_BODY_BYTES};
use crate::config::Settings;
use crate::model::event::{AspectType, Event, ObjectType};
use crate::store::inbox::Received;
use crate::webhook::Webhooks;

/// How far ahead of our clock an event may be. An activity ignores events
/// older than the newest one applied to it, so a forged event from the
/// future would hide every genuine change until then; Strava stamps events
/// when they happen, so only clock skew puts a real one ahead of us.
pub const MAX_EVENT_AHEAD_SECS: i64 = 600;

#[derive(Deserialize)]
struct Handshake {
    #[serde(rename = "hub.mode")]
    mode: String,
    #[serde(rename = "hub.challenge")]
    challenge: String,
    #[serde(rename = "hub.verify_token")]
    verify_token: String,
}

/// An event as Strava posts it. Unknown fields are ignored; `updates` may be
/// absent or null (treated as `{}`) so a slightly different sender loses
/// nothing.
#[derive(Deserialize)]
struct Incoming {
    object_type: ObjectType,
    #[serde(deserialize_with = "positive")]
    object_id: i64,
    aspect_type: AspectType,
    #[serde(deserialize_with = "positive")]
    owner_id: i64,
    #[serde(deserialize_with = "positive")]
    event_time: i64,
    #[serde(default)]
    updates: Option<BTreeMap<String, String>>,
    #[serde(deserialize_with = "subscription_id")]
    subscription_id: i64,
}

fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let n = i64::deserialize(d)?;
    if n > 0 {
        Ok(n)
    } else {
        Err(D::Error::custom(format!(
            "expected a positive integer, got {n}"
        )))
    }
}

/// Strava has sent `subscription_id` both as a number and as a string.
fn subscription_id<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let id = match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    id.filter(|n| *n > 0).ok_or_else(|| {
        D::Error::custom("subscription_id must be a positive integer or a string holding one")
    })
}

/// 404 unless the path carries our secret, exactly as for any unknown route.
fn check_path(req: &HttpRequest, webhooks: &Webhooks) -> Result<(), ApiError> {
    let given = req.match_info().get("secret").unwrap_or_default();
    if constant_time_eq(given.as_bytes(), webhooks.path_secret.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::NotFound { resource: "Route" })
    }
}

/// 403 naming what did not match ours.
fn refused(field: &str) -> ApiError {
    ApiError::Forbidden {
        message: "Forbidden".into(),
        resource: "Subscription",
        field: field.into(),
        code: "invalid",
    }
}

/// The subscription handshake: echo the challenge when the verify token is ours.
async fn handshake(
    req: HttpRequest,
    limits: web::Data<AddressLimits>,
    settings: web::Data<Settings>,
    webhooks: web::Data<Webhooks>,
) -> Result<HttpResponse, ApiError> {
    limits.check(&req, Route::Webhook)?;
    check_path(&req, &webhooks)?;
    let query = web::Query::<Handshake>::from_query(req.query_string())
        .map_err(|e| ApiError::bad_parameter("Subscription", "query", e.to_string()))?;
    if query.mode != "subscribe" {
        return Err(ApiError::bad_parameter(
            "Subscription",
            "hub.mode",
            "hub.mode must be subscribe",
        ));
    }
    let ours = settings.strava_webhook_verify_token.as_ref();
    if !ours.is_some_and(|t| constant_time_eq(t.expose().as_bytes(), query.verify_token.as_bytes()))
    {
        return Err(refused("hub.verify_token"));
    }
    Ok(HttpResponse::Ok().json(json!({ "hub.challenge": query.challenge })))
}

/// Receives one event: validate, commit to the inbox, wake the worker, 200.
async fn receive(
    req: HttpRequest,
    payload: web::Payload,
    limits: web::Data<AddressLimits>,
    state: web::Data<Services>,
    webhooks: web::Data<Webhooks>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    limits.check(&req, Route::Webhook)?;
    check_path(&req, &webhooks)?;
    let body = read_limited(payload).await?;
    let incoming: Incoming = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_parameter("Event", "body", e.to_string()))?;
    let now = state.clock.epoch();
    if incoming.event_time > now.saturating_add(MAX_EVENT_AHEAD_SECS) {
        return Err(ApiError::bad_parameter(
            "Event",
            "event_time",
            format!("event_time is more than {MAX_EVENT_AHEAD_SECS} seconds ahead of our clock"),
        ));
    }
    let claimed = incoming.subscription_id;
    let event = Event {
        object_type: incoming.object_type,
        object_id: incoming.object_id,
        aspect_type: incoming.aspect_type,
        owner_id: incoming.owner_id,
        event_time: incoming.event_time,
        updates: incoming.updates.unwrap_or_default(),
    };
    let kind = event.kind();
    let received = state.store.receive_event(event, claimed, now).await?;
    let outcome = match received {
        Received::Foreign => {
            metrics::counter!("webhook_events_total", "kind" => kind, "outcome" => "foreign")
                .increment(1);
            return Err(refused("subscription_id"));
        }
        Received::Accepted => {
            webhooks.wake.notify_one();
            "accepted"
        }
        Received::Duplicate => "duplicate",
        Received::Ignored => "ignored",
    };
    metrics::counter!("webhook_events_total", "kind" => kind, "outcome" => outcome).increment(1);
    metrics::histogram!("webhook_ack_seconds").record(started.elapsed().as_secs_f64());
    Ok(HttpResponse::Ok().json(json!({ "status": outcome })))
}

/// Reads the body, refusing more than [`MAX_BODY_BYTES`] even when it comes
/// chunked, without a Content-Length for the middleware to check.
async fn read_limited(mut payload: web::Payload) -> Result<web::BytesMut, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(super::payload_error)?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(ApiError::PayloadTooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/webhook/{secret}")
            .route(web::get().to(handshake))
            .route(web::post().to(receive))
            // Other methods learn nothing either, not even that the path exists.
            .default_service(web::to(|| async {
                HttpResponse::from_error(ApiError::NotFound { resource: "Route" })
            })),
    );
}
