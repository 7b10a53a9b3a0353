//! The control interface: what tests and the demo do "on Strava's side"
//! (create, rename, delete activities, revoke access, break things) and
//! what they observe (calls, window usage, deliveries, the ground truth).
//! The methods on [`Simulator`] are the one implementation; the `/_sim`
//! HTTP endpoints are a thin JSON layer over them.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, ResponseError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::api::FaultPlan;
use super::data::{self, Activity};
use super::webhook::{Event, Push};
use super::{fault, Scopes, SimSettings, Simulator, State, Usage};

/// A control request the simulator refuses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SimError {
    #[error("no athlete {0}")]
    UnknownAthlete(u64),
    #[error("no activity {0}")]
    UnknownActivity(u64),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

impl SimError {
    fn invalid(field: &str, message: impl Into<String>) -> Self {
        SimError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl ResponseError for SimError {
    fn status_code(&self) -> StatusCode {
        match self {
            SimError::UnknownAthlete(_) | SimError::UnknownActivity(_) => StatusCode::NOT_FOUND,
            SimError::Invalid { .. } => StatusCode::BAD_REQUEST,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            SimError::UnknownAthlete(_) => fault(
                self.status_code(),
                "Record Not Found",
                "Athlete",
                "id",
                "invalid",
            ),
            SimError::UnknownActivity(_) => fault(
                self.status_code(),
                "Record Not Found",
                "Activity",
                "id",
                "invalid",
            ),
            SimError::Invalid { field, message } => fault(
                self.status_code(),
                "Bad Request",
                "Simulator",
                field,
                message,
            ),
        }
    }
}

/// An activity to create; everything left out is generated.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NewActivity {
    pub name: Option<String>,
    pub sport_type: Option<String>,
    /// Defaults to an hour before now (the activity just finished).
    pub start_date: Option<DateTime<Utc>>,
    /// "Only You".
    pub private: bool,
}

/// What an athlete can change on Strava that webhooks report.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActivityUpdate {
    /// The title (`updates.title` in the event).
    pub name: Option<String>,
    /// `updates.type` in the event.
    pub sport_type: Option<String>,
    /// "Only You" on or off (`updates.private`).
    pub private: Option<bool>,
}

/// Faults for the next `count` API calls: an added delay, and a 5xx status
/// instead of the real answer when `status` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    pub count: u32,
    pub status: Option<u16>,
    pub latency_ms: u64,
}

impl Faults {
    /// The plan for the next call, if any is left.
    pub(crate) fn take(&mut self) -> Option<FaultPlan> {
        self.count = self.count.checked_sub(1)?;
        Some((Duration::from_millis(self.latency_ms), self.status))
    }
}

/// One call to the API or OAuth endpoints.
#[derive(Debug, Clone, Serialize)]
pub struct CallRecord {
    /// Method and path with ids as `{id}`, e.g. `GET /api/v3/activities/{id}`.
    pub endpoint: String,
    pub athlete_id: Option<u64>,
    /// The query string as sent (`page=2&per_page=200`), empty when none.
    pub query: String,
    pub status: u16,
    /// Simulator-clock time.
    pub at: DateTime<Utc>,
}

/// Call counts, as `GET /_sim/calls` shows them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallStats {
    pub total: u64,
    pub by_endpoint: BTreeMap<String, u64>,
    pub by_athlete: BTreeMap<u64, u64>,
    pub by_status: BTreeMap<u16, u64>,
}

impl CallStats {
    /// Calls to one endpoint, e.g. `"GET /api/v3/athlete/activities"`.
    pub fn to(&self, endpoint: &str) -> u64 {
        self.by_endpoint.get(endpoint).copied().unwrap_or(0)
    }
}

fn check_name(name: &str) -> Result<String, SimError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 255 {
        return Err(SimError::invalid("name", "must be 1 to 255 characters"));
    }
    Ok(name.to_string())
}

fn check_sport_type(sport_type: &str) -> Result<&'static str, SimError> {
    data::known_sport_type(sport_type)
        .ok_or_else(|| SimError::invalid("sport_type", "unknown sport type"))
}

/// The event Strava sends for a change, given what the athlete granted:
/// without `activity:read_all`, "Only You" activities are invisible, so a
/// switch to private arrives as a delete and a switch back as a create.
/// Athletes who are not connected get every event the control asks for, so
/// tests can check that the service ignores them.
fn visible_event(
    granted: Option<&Scopes>,
    aspect: &'static str,
    was_private: bool,
    is_private: bool,
    updates: BTreeMap<String, String>,
) -> Option<(&'static str, BTreeMap<String, String>)> {
    if granted.is_none_or(Scopes::sees_private) {
        return Some((aspect, updates));
    }
    match (was_private, is_private) {
        (false, true) if aspect == "update" => Some(("delete", BTreeMap::new())),
        (true, false) if aspect == "update" => Some(("create", BTreeMap::new())),
        (false, false) => Some((aspect, updates)),
        _ => None,
    }
}

impl State {
    fn athlete_activity(&mut self, id: u64) -> Result<&mut Activity, SimError> {
        self.activities
            .get_mut(&id)
            .ok_or(SimError::UnknownActivity(id))
    }
}

impl Simulator {
    /// Current simulator time.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Moves the simulator clock forward (rate windows, token expiry, the
    /// detail-404 window all follow it).
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// Every athlete id, ascending.
    pub fn athlete_ids(&self) -> Vec<u64> {
        self.state().athletes.keys().copied().collect()
    }

    /// The summary athlete, as the token exchange returns it.
    pub fn athlete(&self, athlete_id: u64) -> Option<Value> {
        self.state().athletes.get(&athlete_id).map(|a| a.summary())
    }

    /// Whether the athlete holds live tokens (connected and not revoked).
    pub fn is_connected(&self, athlete_id: u64) -> bool {
        self.state().tokens.is_connected(athlete_id)
    }

    /// The ground truth: every activity of the athlete ("Only You" ones
    /// included) as summaries, newest first.
    pub fn activities(&self, athlete_id: u64) -> Result<Vec<Value>, SimError> {
        let state = self.state();
        let athlete = state
            .athletes
            .get(&athlete_id)
            .ok_or(SimError::UnknownAthlete(athlete_id))?;
        Ok(athlete
            .index
            .iter()
            .rev()
            .filter_map(|(_, id)| state.activities.get(id))
            .map(|a| a.summary(athlete))
            .collect())
    }

    /// The detailed activity, readable or not yet.
    pub fn activity(&self, activity_id: u64) -> Option<Value> {
        let state = self.state();
        let activity = state.activities.get(&activity_id)?;
        state
            .athletes
            .get(&activity.athlete_id)
            .map(|a| activity.detail(a))
    }

    /// Uploads an activity for the athlete; its detail answers 404 for
    /// `detail_not_found_secs`. With `push`, sends the create event.
    pub fn create_activity(
        &self,
        athlete_id: u64,
        new: NewActivity,
        push: Option<Push>,
    ) -> Result<Value, SimError> {
        let name = new.name.as_deref().map(check_name).transpose()?;
        let sport_type = new
            .sport_type
            .as_deref()
            .map(check_sport_type)
            .transpose()?;
        let now = self.clock.epoch();
        let mut guard = self.state();
        let state = &mut *guard;
        let athlete = state
            .athletes
            .get_mut(&athlete_id)
            .ok_or(SimError::UnknownAthlete(athlete_id))?;
        let start = new.start_date.map_or(now - 3600, |d| d.timestamp());
        let mut activity = data::random_activity(
            &mut state.rng,
            athlete,
            &mut state.last_activity_id,
            start,
            sport_type,
        );
        if let Some(name) = name {
            activity.name = name;
        }
        activity.private = new.private;
        let wait = i64::try_from(state.settings.detail_not_found_secs).unwrap_or(i64::MAX);
        activity.readable_at = now.saturating_add(wait);
        athlete.index.insert((activity.start, activity.id));
        let summary = activity.summary(athlete);
        let event = visible_event(
            state.tokens.granted(athlete_id),
            "create",
            false,
            activity.private,
            BTreeMap::new(),
        );
        state.activities.insert(activity.id, activity);
        if let (Some(push), Some((aspect, updates))) = (push, event) {
            let id = summary["id"].as_u64().unwrap_or_default();
            self.emit(Event::activity(aspect, id, athlete_id, updates, now), push);
        }
        Ok(summary)
    }

    /// Changes title, sport type or privacy. With `push`, sends the update
    /// event carrying the changed keys (`title`, `type`, `private`).
    pub fn update_activity(
        &self,
        activity_id: u64,
        update: ActivityUpdate,
        push: Option<Push>,
    ) -> Result<Value, SimError> {
        let name = update.name.as_deref().map(check_name).transpose()?;
        let sport_type = update
            .sport_type
            .as_deref()
            .map(check_sport_type)
            .transpose()?;
        let now = self.clock.epoch();
        let mut guard = self.state();
        let state = &mut *guard;
        let activity = state.athlete_activity(activity_id)?;
        let was_private = activity.private;
        let mut updates = BTreeMap::new();
        if let Some(name) = name {
            updates.insert("title".to_string(), name.clone());
            activity.name = name;
        }
        if let Some(sport_type) = sport_type {
            updates.insert("type".to_string(), sport_type.to_string());
            activity.sport_type = sport_type;
        }
        if let Some(private) = update.private {
            updates.insert("private".to_string(), private.to_string());
            activity.private = private;
        }
        let (owner, is_private) = (activity.athlete_id, activity.private);
        let activity = &state.activities[&activity_id];
        let summary = state
            .athletes
            .get(&owner)
            .map(|a| activity.summary(a))
            .unwrap_or_default();
        let event = visible_event(
            state.tokens.granted(owner),
            "update",
            was_private,
            is_private,
            updates,
        );
        if let (Some(push), Some((aspect, updates))) = (push, event) {
            self.emit(
                Event::activity(aspect, activity_id, owner, updates, now),
                push,
            );
        }
        Ok(summary)
    }

    /// Deletes the activity. With `push`, sends the delete event.
    pub fn delete_activity(&self, activity_id: u64, push: Option<Push>) -> Result<(), SimError> {
        let now = self.clock.epoch();
        let mut guard = self.state();
        let state = &mut *guard;
        let activity = state
            .activities
            .remove(&activity_id)
            .ok_or(SimError::UnknownActivity(activity_id))?;
        if let Some(athlete) = state.athletes.get_mut(&activity.athlete_id) {
            athlete.index.remove(&(activity.start, activity.id));
        }
        let granted = state.tokens.granted(activity.athlete_id);
        let event = visible_event(
            granted,
            "delete",
            activity.private,
            activity.private,
            BTreeMap::new(),
        );
        if let (Some(push), Some((aspect, updates))) = (push, event) {
            self.emit(
                Event::activity(aspect, activity_id, activity.athlete_id, updates, now),
                push,
            );
        }
        Ok(())
    }

    /// The athlete revokes access on strava.com: every token of theirs gets
    /// 401. With `push`, sends the athlete update `{"authorized":"false"}`.
    pub fn deauthorize(&self, athlete_id: u64, push: Option<Push>) -> Result<(), SimError> {
        if !self.state().athletes.contains_key(&athlete_id) {
            return Err(SimError::UnknownAthlete(athlete_id));
        }
        self.revoke(athlete_id, push);
        Ok(())
    }

    /// The athlete who logs in at the next `GET /oauth/authorize` (once).
    /// Without it, the first athlete not connected yet logs in.
    pub fn next_login(&self, athlete_id: u64) -> Result<(), SimError> {
        let mut state = self.state();
        if !state.athletes.contains_key(&athlete_id) {
            return Err(SimError::UnknownAthlete(athlete_id));
        }
        state.next_login = Some(athlete_id);
        Ok(())
    }

    pub fn settings(&self) -> SimSettings {
        self.state().settings.clone()
    }

    /// Changes settings in place, e.g.
    /// `sim.update_settings(|s| s.limits = Limits::read_and_overall(10, 100))`.
    pub fn update_settings(&self, change: impl FnOnce(&mut SimSettings)) {
        change(&mut self.state().settings);
    }

    /// Calls made now by other clients of the same application: they count
    /// in the current 15-minute window and day, and reset with them.
    pub fn add_other_client_calls(&self, calls: u32) {
        let now = self.clock.epoch();
        self.state().rate.add_others(now, calls);
    }

    /// Replaces any pending faults; they apply to the next API calls.
    pub fn inject_faults(&self, faults: Faults) -> Result<(), SimError> {
        if faults.status.is_some_and(|s| !(500..=599).contains(&s)) {
            return Err(SimError::invalid("status", "must be a 5xx status"));
        }
        self.state().faults = faults;
        Ok(())
    }

    /// The windows' usage, as the next call's headers would count it.
    pub fn usage(&self) -> Usage {
        let now = self.clock.epoch();
        let mut state = self.state();
        let limits = state.settings.limits;
        state.rate.usage(now, limits)
    }

    /// Every API and OAuth call so far, oldest first.
    pub fn call_records(&self) -> Vec<CallRecord> {
        self.state().calls.clone()
    }

    /// Call counts by endpoint, athlete and status.
    pub fn calls(&self) -> CallStats {
        let state = self.state();
        let mut stats = CallStats::default();
        for call in &state.calls {
            stats.total += 1;
            *stats.by_endpoint.entry(call.endpoint.clone()).or_default() += 1;
            if let Some(athlete) = call.athlete_id {
                *stats.by_athlete.entry(athlete).or_default() += 1;
            }
            *stats.by_status.entry(call.status).or_default() += 1;
        }
        stats
    }

    pub(crate) fn record(
        &self,
        endpoint: &str,
        query: &str,
        athlete_id: Option<u64>,
        status: StatusCode,
    ) {
        let at = self.clock.now();
        self.state().calls.push(CallRecord {
            endpoint: endpoint.to_string(),
            query: query.to_string(),
            athlete_id,
            status: status.as_u16(),
            at,
        });
    }

    /// Applies a JSON patch of settings: only the keys given change.
    fn patch_settings(&self, patch: Value) -> Result<SimSettings, SimError> {
        let Value::Object(patch) = patch else {
            return Err(SimError::invalid("settings", "must be a JSON object"));
        };
        let mut state = self.state();
        let mut merged = serde_json::to_value(&state.settings).unwrap_or_default();
        for (key, value) in patch {
            match (merged.get_mut(&key), value) {
                (None, _) => return Err(SimError::invalid(&key, "unknown setting")),
                (Some(Value::Object(current)), Value::Object(value)) => current.extend(value),
                (Some(current), value) => *current = value,
            }
        }
        let settings: SimSettings = serde_json::from_value(merged)
            .map_err(|e| SimError::invalid("settings", e.to_string()))?;
        if !(0.0..=1.0).contains(&settings.subscription_id_as_string_probability) {
            return Err(SimError::invalid(
                "subscription_id_as_string_probability",
                "must be within 0..1",
            ));
        }
        state.settings = settings.clone();
        Ok(settings)
    }
}

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/athletes", web::get().to(athletes))
        .route(
            "/athletes/{id}/activities",
            web::get().to(athlete_activities),
        )
        .route("/athletes/{id}/activities", web::post().to(create))
        .route("/athletes/{id}/deauthorize", web::post().to(deauthorize))
        .route("/athletes/{id}/next-login", web::post().to(next_login))
        .route("/activities/{id}", web::get().to(activity))
        .route("/activities/{id}", web::patch().to(update))
        .route("/activities/{id}", web::delete().to(delete))
        .route("/settings", web::get().to(settings))
        .route("/settings", web::patch().to(patch_settings))
        .route("/other-usage", web::post().to(other_usage))
        .route("/faults", web::post().to(faults))
        .route("/usage", web::get().to(usage))
        .route("/calls", web::get().to(calls))
        .route("/deliveries", web::get().to(deliveries))
        .route("/subscription", web::get().to(subscription))
        .route("/clock", web::get().to(clock))
        .route("/clock/advance", web::post().to(advance));
}

/// `?push=true` sends the event; the other keys shape its delivery.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushQuery {
    #[serde(default)]
    push: bool,
    #[serde(default)]
    lost: bool,
    #[serde(default)]
    twice: bool,
    #[serde(default)]
    delay_ms: u64,
    subscription_id_as_string: Option<bool>,
}

impl PushQuery {
    fn into_push(self) -> Option<Push> {
        self.push.then_some(Push {
            lost: self.lost,
            twice: self.twice,
            delay_ms: self.delay_ms,
            subscription_id_as_string: self.subscription_id_as_string,
        })
    }
}

type Reply = Result<HttpResponse, SimError>;

async fn athletes(sim: web::Data<Simulator>) -> HttpResponse {
    let state = sim.state();
    let list: Vec<Value> = state
        .athletes
        .values()
        .map(|a| {
            let mut summary = a.summary();
            summary["activity_count"] = json!(a.index.len());
            summary["connected"] = json!(state.tokens.is_connected(a.id));
            summary
        })
        .collect();
    HttpResponse::Ok().json(list)
}

async fn athlete_activities(sim: web::Data<Simulator>, id: web::Path<u64>) -> Reply {
    Ok(HttpResponse::Ok().json(sim.activities(*id)?))
}

async fn create(
    sim: web::Data<Simulator>,
    id: web::Path<u64>,
    push: web::Query<PushQuery>,
    body: web::Json<NewActivity>,
) -> Reply {
    let created = sim.create_activity(*id, body.into_inner(), push.into_inner().into_push())?;
    Ok(HttpResponse::Created().json(created))
}

async fn deauthorize(
    sim: web::Data<Simulator>,
    id: web::Path<u64>,
    push: web::Query<PushQuery>,
) -> Reply {
    sim.deauthorize(*id, push.into_inner().into_push())?;
    Ok(HttpResponse::NoContent().finish())
}

async fn next_login(sim: web::Data<Simulator>, id: web::Path<u64>) -> Reply {
    sim.next_login(*id)?;
    Ok(HttpResponse::NoContent().finish())
}

async fn activity(sim: web::Data<Simulator>, id: web::Path<u64>) -> Reply {
    let detail = sim.activity(*id).ok_or(SimError::UnknownActivity(*id))?;
    Ok(HttpResponse::Ok().json(detail))
}

async fn update(
    sim: web::Data<Simulator>,
    id: web::Path<u64>,
    push: web::Query<PushQuery>,
    body: web::Json<ActivityUpdate>,
) -> Reply {
    let updated = sim.update_activity(*id, body.into_inner(), push.into_inner().into_push())?;
    Ok(HttpResponse::Ok().json(updated))
}

async fn delete(
    sim: web::Data<Simulator>,
    id: web::Path<u64>,
    push: web::Query<PushQuery>,
) -> Reply {
    sim.delete_activity(*id, push.into_inner().into_push())?;
    Ok(HttpResponse::NoContent().finish())
}

async fn settings(sim: web::Data<Simulator>) -> HttpResponse {
    HttpResponse::Ok().json(sim.settings())
}

async fn patch_settings(sim: web::Data<Simulator>, body: web::Json<Value>) -> Reply {
    Ok(HttpResponse::Ok().json(sim.patch_settings(body.into_inner())?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OtherUsage {
    calls: u32,
}

async fn other_usage(sim: web::Data<Simulator>, body: web::Json<OtherUsage>) -> HttpResponse {
    sim.add_other_client_calls(body.calls);
    HttpResponse::Ok().json(sim.usage())
}

async fn faults(sim: web::Data<Simulator>, body: web::Json<Faults>) -> Reply {
    sim.inject_faults(body.into_inner())?;
    Ok(HttpResponse::NoContent().finish())
}

async fn usage(sim: web::Data<Simulator>) -> HttpResponse {
    HttpResponse::Ok().json(sim.usage())
}

async fn calls(sim: web::Data<Simulator>) -> HttpResponse {
    HttpResponse::Ok().json(sim.calls())
}

async fn deliveries(sim: web::Data<Simulator>) -> HttpResponse {
    HttpResponse::Ok().json(sim.deliveries())
}

async fn subscription(sim: web::Data<Simulator>) -> HttpResponse {
    HttpResponse::Ok().json(sim.subscription())
}

async fn clock(sim: web::Data<Simulator>) -> HttpResponse {
    HttpResponse::Ok().json(json!({"now": sim.now()}))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Advance {
    secs: u64,
}

async fn advance(sim: web::Data<Simulator>, body: web::Json<Advance>) -> HttpResponse {
    sim.advance(Duration::from_secs(body.secs));
    HttpResponse::Ok().json(json!({"now": sim.now()}))
}
