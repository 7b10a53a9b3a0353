//! Push subscriptions at `{base}/api/v3/push_subscriptions` (one per
//! application, created only after the callback passes the validation GET
//! within 2 seconds) and webhook delivery with Strava's policy: an event
//! counts as delivered on a 200 within 2 seconds, otherwise it is tried
//! again, three attempts in all. Per-event [`Push`] options make events get
//! lost, arrive twice or late; `subscription_id` is sometimes a string.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{bad_request, fault, Simulator};

/// Strava's deadline for the validation GET and for each event POST.
pub const CALLBACK_DEADLINE: Duration = Duration::from_secs(2);
/// Attempts per event, the first included.
pub const ATTEMPTS: u32 = 3;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/push_subscriptions", web::post().to(create))
        .route("/push_subscriptions", web::get().to(view))
        .route("/push_subscriptions/{id}", web::delete().to(delete));
}

/// How one event is delivered. `Push::default()` is a normal delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Push {
    /// Strava loses the event: it is recorded but never sent.
    pub lost: bool,
    /// The event is delivered twice (duplicates happen).
    pub twice: bool,
    /// Wait before the first attempt.
    pub delay_ms: u64,
    /// Send `subscription_id` as a string (true) or a number (false);
    /// None leaves it to `subscription_id_as_string_probability`.
    pub subscription_id_as_string: Option<bool>,
}

/// An event as Strava builds it, before `subscription_id` is added.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Event {
    aspect_type: &'static str,
    event_time: i64,
    object_id: u64,
    object_type: &'static str,
    owner_id: u64,
    updates: BTreeMap<String, String>,
}

impl Event {
    pub fn activity(
        aspect_type: &'static str,
        activity_id: u64,
        owner_id: u64,
        updates: BTreeMap<String, String>,
        now: i64,
    ) -> Self {
        Self {
            aspect_type,
            event_time: now,
            object_id: activity_id,
            object_type: "activity",
            owner_id,
            updates,
        }
    }

    pub fn athlete_update(athlete_id: u64, updates: BTreeMap<String, String>, now: i64) -> Self {
        Self {
            aspect_type: "update",
            event_time: now,
            object_id: athlete_id,
            object_type: "athlete",
            owner_id: athlete_id,
            updates,
        }
    }
}

pub(crate) struct Outgoing {
    event: Event,
    push: Push,
}

#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    id: u64,
    callback_url: String,
    created_at: DateTime<Utc>,
}

impl Subscription {
    fn json(&self, application_id: u64) -> Value {
        let at = self.created_at.format("%Y-%m-%dT%H:%M:%SZ").to_string();
        json!({
            "id": self.id,
            "resource_state": 2,
            "application_id": application_id,
            "callback_url": self.callback_url,
            "created_at": at,
            "updated_at": at,
        })
    }
}

/// One delivery attempt (or a lost or undeliverable event), for tests.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRecord {
    /// The body as sent (without `subscription_id` when nothing was sent).
    pub event: Value,
    /// 1..=3; 0 when nothing was sent.
    pub attempt: u32,
    pub outcome: DeliveryOutcome,
    /// Simulator-clock time of the attempt.
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryOutcome {
    /// 200 within the deadline.
    Delivered,
    /// Answered with another status.
    Rejected { status: u16 },
    /// No answer within 2 seconds.
    TimedOut,
    /// Connection refused or broken.
    Unreachable,
    /// Dropped on purpose ([`Push::lost`]).
    Lost,
    /// There was no subscription to deliver to.
    NoSubscription,
}

impl Simulator {
    /// Queues an event for delivery to the subscription's callback.
    pub(crate) fn emit(&self, event: Event, push: Push) {
        self.in_flight.send_modify(|n| *n += 1);
        // The receiver lives as long as the server; a send fails only at shutdown.
        let _ = self.outbox.send(Outgoing { event, push });
    }

    /// Resolves once every event emitted so far has been delivered, given
    /// up on after its last attempt, or lost.
    pub async fn deliveries_settled(&self) {
        let mut in_flight = self.in_flight.subscribe();
        // The sender lives as long as the simulator does.
        let _ = in_flight.wait_for(|n| *n == 0).await;
    }

    fn log_delivery(&self, event: Value, attempt: u32, outcome: DeliveryOutcome) {
        let at = self.clock.now();
        self.state().deliveries.push(DeliveryRecord {
            event,
            attempt,
            outcome,
            at,
        });
    }

    /// Every delivery attempt so far, oldest first.
    pub fn deliveries(&self) -> Vec<DeliveryRecord> {
        self.state().deliveries.clone()
    }

    /// The push subscription as `GET /push_subscriptions` shows it.
    pub fn subscription(&self) -> Option<Value> {
        let state = self.state();
        state.subscription.as_ref().map(|s| s.json(self.client_id))
    }
}

/// Delivers queued events until `stop`; each event runs on its own task so
/// delays and retries of one never hold up another.
pub(crate) async fn deliver(
    sim: web::Data<Simulator>,
    mut inbox: mpsc::UnboundedReceiver<Outgoing>,
    stop: CancellationToken,
) {
    loop {
        let outgoing = tokio::select! {
            _ = stop.cancelled() => return,
            next = inbox.recv() => match next {
                Some(outgoing) => outgoing,
                None => return,
            },
        };
        let (sim, stop) = (sim.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = deliver_one(&sim, outgoing) => {}
            }
            sim.in_flight.send_modify(|n| *n -= 1);
        });
    }
}

async fn deliver_one(sim: &Simulator, Outgoing { event, push }: Outgoing) {
    let plain = serde_json::to_value(&event).unwrap_or_default();
    if push.lost {
        sim.log_delivery(plain, 0, DeliveryOutcome::Lost);
        return;
    }
    tokio::time::sleep(Duration::from_millis(push.delay_ms)).await;
    let copies = if push.twice { 2 } else { 1 };
    for _ in 0..copies {
        let target = {
            let mut state = sim.state();
            let probability = state
                .settings
                .subscription_id_as_string_probability
                .clamp(0.0, 1.0);
            let as_string = push
                .subscription_id_as_string
                .unwrap_or_else(|| state.rng.random_bool(probability));
            let retry = Duration::from_millis(state.settings.webhook_retry_ms);
            state.subscription.as_ref().map(|s| {
                let id = if as_string {
                    json!(s.id.to_string())
                } else {
                    json!(s.id)
                };
                (s.callback_url.clone(), id, retry)
            })
        };
        let Some((callback, subscription_id, retry)) = target else {
            sim.log_delivery(plain, 0, DeliveryOutcome::NoSubscription);
            return;
        };
        let mut body = plain.clone();
        body["subscription_id"] = subscription_id;
        for attempt in 1..=ATTEMPTS {
            let outcome = post(sim, &callback, &body).await;
            sim.log_delivery(body.clone(), attempt, outcome);
            if outcome == DeliveryOutcome::Delivered {
                break;
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(retry).await;
            }
        }
    }
}

async fn post(sim: &Simulator, callback: &str, body: &Value) -> DeliveryOutcome {
    let sent = sim
        .http
        .post(callback)
        .json(body)
        .timeout(CALLBACK_DEADLINE)
        .send()
        .await;
    match sent {
        Ok(res) if res.status() == reqwest::StatusCode::OK => DeliveryOutcome::Delivered,
        Ok(res) => DeliveryOutcome::Rejected {
            status: res.status().as_u16(),
        },
        Err(e) if e.is_timeout() => DeliveryOutcome::TimedOut,
        Err(_) => DeliveryOutcome::Unreachable,
    }
}

#[derive(Debug, Deserialize)]
struct Credentials {
    client_id: Option<String>,
    client_secret: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CreateForm {
    client_id: Option<String>,
    client_secret: Option<String>,
    callback_url: Option<String>,
    verify_token: Option<String>,
}

impl Simulator {
    /// The application's credentials, or a 400 naming the bad one.
    fn check_client(&self, client_id: Option<&str>, secret: Option<&str>) -> Option<HttpResponse> {
        if !self.valid_client(client_id) {
            return Some(bad_request("Application", "client_id", "invalid"));
        }
        if secret != Some(self.client_secret.as_str()) {
            return Some(bad_request("Application", "client_secret", "invalid"));
        }
        None
    }
}

fn already_exists() -> HttpResponse {
    bad_request("PushSubscription", "", "already exists")
}

async fn create(sim: web::Data<Simulator>, form: web::Form<CreateForm>) -> HttpResponse {
    let f = form.into_inner();
    if let Some(response) = sim.check_client(f.client_id.as_deref(), f.client_secret.as_deref()) {
        return response;
    }
    let Some(callback) = f
        .callback_url
        .as_deref()
        .and_then(|u| reqwest::Url::parse(u).ok())
        .filter(|u| matches!(u.scheme(), "http" | "https"))
    else {
        return bad_request("PushSubscription", "callback_url", "invalid");
    };
    let Some(verify_token) = f.verify_token.filter(|t| !t.is_empty()) else {
        return bad_request("PushSubscription", "verify_token", "missing");
    };
    let challenge = {
        let mut state = sim.state();
        if state.subscription.is_some() {
            return already_exists();
        }
        format!("{:016x}", state.rng.random::<u64>())
    };
    if let Err(code) = validate(&sim, &callback, &verify_token, &challenge).await {
        return bad_request("PushSubscription", "callback url", code);
    }
    let now = sim.clock.now();
    let mut state = sim.state();
    if state.subscription.is_some() {
        return already_exists();
    }
    let subscription = Subscription {
        id: state.rng.random_range(100_000..1_000_000),
        callback_url: callback.to_string(),
        created_at: now,
    };
    let body = subscription.json(sim.client_id);
    state.subscription = Some(subscription);
    HttpResponse::Created().json(body)
}

/// Strava's validation GET: 200 within 2 s, JSON echoing the challenge.
async fn validate(
    sim: &Simulator,
    callback: &reqwest::Url,
    verify_token: &str,
    challenge: &str,
) -> Result<(), &'static str> {
    let mut url = callback.clone();
    url.query_pairs_mut()
        .append_pair("hub.mode", "subscribe")
        .append_pair("hub.challenge", challenge)
        .append_pair("hub.verify_token", verify_token);
    let answer = async {
        let res = sim.http.get(url).send().await.ok()?;
        let json = res
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let status = res.status();
        let body = res.json::<Value>().await.ok();
        Some((status, json, body))
    };
    match tokio::time::timeout(CALLBACK_DEADLINE, answer).await {
        Ok(Some((reqwest::StatusCode::OK, true, Some(body))))
            if body["hub.challenge"] == challenge =>
        {
            Ok(())
        }
        Ok(Some((reqwest::StatusCode::OK, _, _))) => Err("callback url not verifiable"),
        _ => Err("GET to callback URL does not return 200"),
    }
}

async fn view(sim: web::Data<Simulator>, query: web::Query<Credentials>) -> HttpResponse {
    if let Some(response) =
        sim.check_client(query.client_id.as_deref(), query.client_secret.as_deref())
    {
        return response;
    }
    let list: Vec<Value> = sim.subscription().into_iter().collect();
    HttpResponse::Ok().json(list)
}

async fn delete(
    sim: web::Data<Simulator>,
    path: web::Path<String>,
    query: web::Query<Credentials>,
) -> HttpResponse {
    if let Some(response) =
        sim.check_client(query.client_id.as_deref(), query.client_secret.as_deref())
    {
        return response;
    }
    let mut state = sim.state();
    let id = path.parse::<u64>().ok();
    if id.is_some() && state.subscription.as_ref().map(|s| s.id) == id {
        state.subscription = None;
        HttpResponse::NoContent().finish()
    } else {
        fault(
            StatusCode::NOT_FOUND,
            "Record Not Found",
            "PushSubscription",
            "id",
            "invalid",
        )
    }
}
