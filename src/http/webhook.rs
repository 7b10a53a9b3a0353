//! Strava's webhook callback at `/webhook/{path_secret}`: the subscription
//! handshake (GET) and event delivery (POST). Other methods answer the
//! app's 404, as for any unknown route.
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

use actix_web::{get, post, web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::{de::Error as _, Deserialize, Deserializer, Serialize};
use utoipa::openapi::schema::OneOfBuilder;
use utoipa::openapi::{ObjectBuilder, Type};
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;

use super::auth::constant_time_eq;
use super::error::{ApiError, Fault};
use super::per_address::{AddressLimits, Route};
use super::{Services, MAX_BODY_BYTES};
use crate::config::Settings;
use crate::model::event::{AspectType, Event, ObjectType};
use crate::store::inbox::Received;
use crate::webhook::Webhooks;

/// How far ahead of our clock an event may be. An activity ignores events
/// older than the newest one applied to it, so a forged event from the
/// future would hide every genuine change until then; Strava stamps events
/// when they happen, so only clock skew puts a real one ahead of us. There is
/// no lower bound: an old event loses to every newer one and so hides
/// nothing, and Strava's retries (or its backlog after an outage of ours)
/// arrive hours late.
const MAX_EVENT_AHEAD_SECS: i64 = 600;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Handshake {
    /// `subscribe`.
    #[serde(rename = "hub.mode")]
    mode: String,
    /// Echoed back.
    #[serde(rename = "hub.challenge")]
    challenge: String,
    /// `STRAVA_WEBHOOK_VERIFY_TOKEN`.
    #[serde(rename = "hub.verify_token")]
    verify_token: String,
}

/// The handshake's answer.
#[derive(Serialize, ToSchema)]
struct Challenge {
    #[serde(rename = "hub.challenge")]
    challenge: String,
}

/// An event as Strava posts it. Unknown fields are ignored; `updates` may be
/// absent or null (treated as `{}`) so a slightly different sender loses
/// nothing.
#[derive(Deserialize, ToSchema)]
struct Incoming {
    object_type: ObjectType,
    #[serde(deserialize_with = "positive")]
    #[schema(minimum = 1)]
    object_id: i64,
    aspect_type: AspectType,
    /// The athlete's id.
    #[serde(deserialize_with = "positive")]
    #[schema(minimum = 1)]
    owner_id: i64,
    /// Epoch seconds; at most 10 minutes ahead of our clock.
    #[serde(deserialize_with = "positive")]
    #[schema(minimum = 1)]
    event_time: i64,
    /// What changed (`title`, `type`, `private`, `authorized`).
    #[serde(default)]
    updates: Option<BTreeMap<String, String>>,
    /// Ours, once `subscription create` stored it.
    #[serde(deserialize_with = "subscription_id")]
    #[schema(schema_with = subscription_id_schema)]
    subscription_id: i64,
}

/// The event's answer.
#[derive(Serialize, ToSchema)]
struct Acknowledged {
    /// `accepted`, `duplicate` (applied once already) or `ignored` (an
    /// athlete who is not connected).
    status: &'static str,
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

/// `subscription_id` as [`subscription_id`] reads it.
fn subscription_id_schema() -> OneOfBuilder {
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^\s*[0-9]+\s*$")),
        )
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
    let given = req.match_info().get("path_secret").unwrap_or_default();
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
#[utoipa::path(
    tag = "webhook",
    params(("path_secret" = String, Path, description = "The callback's secret, made on first \
        start (`strava-sync subscription show`)"), Handshake),
    responses(
        (status = 200, description = "The challenge, echoed", body = Challenge),
        (status = 400, description = "A missing parameter, or `hub.mode` not `subscribe`",
            body = Fault),
        (status = 403, description = "Not our verify token", body = Fault),
        (status = 404, description = "Not our path secret", body = Fault),
        (status = 429, description = "Past `WEBHOOK_RATE_LIMIT` for this client address",
            body = Fault,
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    )
)]
#[get("/webhook/{path_secret}")]
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
    Ok(HttpResponse::Ok().json(Challenge {
        challenge: query.into_inner().challenge,
    }))
}

/// Receives one event: validate, commit to the inbox, wake the worker, 200.
/// The 200 comes once the event is committed.
#[utoipa::path(
    tag = "webhook",
    params(("path_secret" = String, Path, description = "The callback's secret")),
    request_body = Incoming,
    responses(
        (status = 200, description = "Committed, a repeat, or ignored", body = Acknowledged),
        (status = 400, description = "Not an event, or `event_time` more than 10 minutes \
            ahead", body = Fault),
        (status = 403, description = "Another subscription's event", body = Fault),
        (status = 404, description = "Not our path secret", body = Fault),
        (status = 413, description = "A body over 16 KiB", body = Fault),
        (status = 429, description = "Past `WEBHOOK_RATE_LIMIT` for this client address",
            body = Fault,
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
        (status = 503, description = "Storage cannot serve: Strava retries", body = Fault),
    )
)]
#[post("/webhook/{path_secret}")]
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
    let (event, claimed) = parse_event(&body)?;
    let now = state.clock.epoch();
    if event.event_time > now.saturating_add(MAX_EVENT_AHEAD_SECS) {
        return Err(ApiError::bad_parameter(
            "Event",
            "event_time",
            format!("event_time is more than {MAX_EVENT_AHEAD_SECS} seconds ahead of our clock"),
        ));
    }
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
    Ok(HttpResponse::Ok().json(Acknowledged { status: outcome }))
}

/// An event from a request body, and the subscription id it claims.
fn parse_event(body: &[u8]) -> Result<(Event, i64), ApiError> {
    let incoming: Incoming = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_parameter("Event", "body", e.to_string()))?;
    let event = Event {
        object_type: incoming.object_type,
        object_id: incoming.object_id,
        aspect_type: incoming.aspect_type,
        owner_id: incoming.owner_id,
        event_time: incoming.event_time,
        updates: incoming.updates.unwrap_or_default(),
    };
    Ok((event, incoming.subscription_id))
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

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(handshake).service(receive);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::*;

    /// A JSON value of any kind, to stand where a field belongs.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            ".{0,40}".prop_map(Value::from),
            "[0-9]{1,25}".prop_map(Value::from),
        ];
        leaf.prop_recursive(2, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(".{0,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A field's value: usually one Strava could send, sometimes anything.
    fn field(
        valid: impl Strategy<Value = Value> + 'static,
    ) -> impl Strategy<Value = Option<Value>> {
        prop_oneof![
            16 => valid.prop_map(Some),
            1 => any_json().prop_map(Some),
            1 => Just(None),
        ]
    }

    /// Mostly positive, as ids and times are.
    fn id() -> impl Strategy<Value = i64> {
        prop_oneof![9 => 1..i64::MAX, 1 => any::<i64>()]
    }

    fn event_json() -> impl Strategy<Value = Value> {
        let updates = prop::collection::btree_map(
            prop_oneof![
                Just("title".to_string()),
                Just("type".into()),
                Just("private".into()),
                Just("authorized".into())
            ],
            ".{0,20}",
            0..4,
        )
        .prop_map(|m| json!(m));
        (
            field(prop_oneof![Just(json!("activity")), Just(json!("athlete"))]),
            field(prop_oneof![
                Just(json!("create")),
                Just(json!("update")),
                Just(json!("delete"))
            ]),
            field(id().prop_map(Value::from)),
            field(id().prop_map(Value::from)),
            field(id().prop_map(Value::from)),
            field(prop_oneof![
                any::<i64>().prop_map(Value::from),
                any::<i64>().prop_map(|n| json!(n.to_string()))
            ]),
            field(updates),
        )
            .prop_map(
                |(
                    object_type,
                    aspect_type,
                    object_id,
                    owner_id,
                    event_time,
                    subscription_id,
                    updates,
                )| {
                    let fields = [
                        ("object_type", object_type),
                        ("aspect_type", aspect_type),
                        ("object_id", object_id),
                        ("owner_id", owner_id),
                        ("event_time", event_time),
                        ("subscription_id", subscription_id),
                        ("updates", updates),
                    ];
                    Value::Object(
                        fields
                            .into_iter()
                            .filter_map(|(k, v)| Some((k.to_string(), v?)))
                            .collect(),
                    )
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_body_is_an_event_or_a_400_never_a_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Err(e) = parse_event(&body) {
                let refused = matches!(e, ApiError::BadParameter { .. });
                prop_assert!(refused, "{e:?}");
            }
        }

        #[test]
        fn an_accepted_event_is_what_was_sent(value in event_json()) {
            let body = value.to_string();
            let Ok((event, subscription)) = parse_event(body.as_bytes()) else {
                return Ok(());
            };
            for (field, got) in [
                ("object_id", event.object_id),
                ("owner_id", event.owner_id),
                ("event_time", event.event_time),
            ] {
                prop_assert!(got > 0);
                prop_assert_eq!(value[field].as_i64(), Some(got));
            }
            prop_assert!(subscription > 0);
            prop_assert_eq!(value["object_type"].as_str(), Some(event.object_type.as_str()));
            prop_assert_eq!(value["aspect_type"].as_str(), Some(event.aspect_type.as_str()));
            prop_assert_eq!(json!(event.updates), value.get("updates").cloned().filter(|u| !u.is_null()).unwrap_or(json!({})));
        }
    }
}
