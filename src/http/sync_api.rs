//! Sync status and manual refresh for an athlete (`/api/sync`), and the
//! operator's "gap-fill now" (`/admin/sync/run`). Nothing here calls Strava:
//! a refresh is queued at interactive priority for the job runner.

use std::collections::BTreeMap;

use actix_web::{get, post, web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::auth::{AdminAuth, AthleteAuth};
use super::connect::missing_activity_scope;
use super::error::{AdminFaults, ApiError, AthleteFaults, Fault};
use super::Services;
use crate::config::Settings;
use crate::model::Purpose;
use crate::store::sync_state::RefreshRequest;
use crate::strava::budget::{Blocked, BlockedView};
use crate::sync::{gap_fill, progress};

/// `POST /api/sync`'s answer.
#[derive(Serialize, ToSchema)]
struct Queued {
    job_id: i64,
    /// Always `queued`.
    status: &'static str,
    /// 1 for the next job to run.
    queue_position: i64,
    /// Null while the budget is paused.
    estimated_start: Option<DateTime<Utc>>,
}

/// `GET /api/sync/jobs/{id}`.
#[derive(Serialize, ToSchema)]
struct JobStatus {
    job_id: i64,
    /// `first_page`, `refresh`, `webhook_fetch`, `gap_fill`, `backfill`,
    /// `enrich` or `reconcile`.
    kind: &'static str,
    /// `queued`, `running`, `done` or `failed`.
    status: String,
    counts: JobCounts,
    created_at: Option<DateTime<Utc>>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// Only while queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_position: Option<i64>,
    /// Only while queued; null while the budget is paused.
    #[serde(skip_serializing_if = "Option::is_none")]
    estimated_start: Option<Option<DateTime<Utc>>>,
}

#[derive(Serialize, ToSchema)]
struct JobCounts {
    fetched: i64,
    new: i64,
    updated: i64,
}

/// `GET /api/sync`: the athlete's sync state, as a frontend shows it.
#[derive(Serialize, ToSchema)]
struct SyncStatus {
    athlete_id: i64,
    /// `connected` or `needs_reauth`.
    connection: &'static str,
    /// As Strava honours it: a scope it refused a call for is gone.
    scope: String,
    /// The activity scope to grant when reconnecting, else null.
    missing_scope: Option<String>,
    backfill: progress::Backfill,
    last_gap_fill_at: Option<DateTime<Utc>>,
    last_webhook_at: Option<DateTime<Utc>>,
    last_reconcile_at: Option<DateTime<Utc>>,
    reconcile_in_progress: bool,
    /// Queued jobs by kind.
    queued: BTreeMap<String, i64>,
    /// Announced activities not fetched yet.
    pending: Vec<Pending>,
    budget: BudgetState,
}

/// An announced activity not fetched yet.
#[derive(Serialize, ToSchema)]
struct Pending {
    id: i64,
    announced_at: Option<DateTime<Utc>>,
    /// Null while the budget is paused.
    estimated_available_at: Option<DateTime<Utc>>,
}

/// What of the budget holds this athlete's sync back.
#[derive(Serialize, ToSchema)]
struct BudgetState {
    paused: bool,
    /// Purposes that may not call right now, with why and until when.
    blocked: BTreeMap<&'static str, BlockedView>,
    /// When a spent window opens again.
    next_window_opens_at: Option<DateTime<Utc>>,
}

/// `POST /admin/sync/run`'s answer.
#[derive(Serialize, ToSchema)]
struct PassQueued {
    /// Always `queued`.
    status: &'static str,
    /// Athletes given a gap-fill job.
    athletes: usize,
}

/// Queues a refresh (a catch-up from the newest stored activity) at the
/// highest priority, once per cooldown.
#[utoipa::path(
    tag = "sync",
    security(("api_token" = [])),
    responses(
        AthleteFaults,
        (status = 202, description = "Queued", body = Queued),
        (status = 403, description = "The athlete must connect again", body = Fault),
        (status = 429, description = "Within `MANUAL_REFRESH_COOLDOWN_SECS` of the last \
            refresh, or past `API_RATE_LIMIT`", body = Fault,
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    )
)]
#[post("/api/sync")]
async fn refresh(
    auth: AthleteAuth,
    state: web::Data<Services>,
    settings: web::Data<Settings>,
) -> Result<HttpResponse, ApiError> {
    let cooldown = i64::try_from(settings.manual_refresh_cooldown_secs).unwrap_or(i64::MAX);
    let now = state.clock.epoch();
    let request = state
        .store
        .request_refresh(auth.athlete_id, cooldown, now)
        .await?;
    let (job_id, queue_position) = match request {
        RefreshRequest::Queued { job_id, position } => {
            state.jobs.wake();
            (job_id, position)
        }
        RefreshRequest::NotConnected => return Err(needs_reauth()),
        RefreshRequest::CoolingDown(wait) => {
            return Err(ApiError::TooManyRequests {
                resource: "Refresh",
                retry_after_secs: wait.unsigned_abs(),
            })
        }
    };
    Ok(HttpResponse::Accepted().json(Queued {
        job_id,
        status: "queued",
        queue_position,
        estimated_start: estimated_start(&state, Purpose::Interactive, queue_position),
    }))
}

fn needs_reauth() -> ApiError {
    ApiError::Forbidden {
        message: "Athlete needs re-authorization: connect again at /auth/strava".into(),
        resource: "Athlete",
        field: "authorization".into(),
        code: "needs_reauth",
    }
}

/// One of the athlete's jobs: its status with counts, or its error.
#[utoipa::path(
    tag = "sync",
    security(("api_token" = [])),
    params(("id" = i64, Path, description = "A job id from `POST /api/sync`")),
    responses(
        (status = 200, description = "The job", body = JobStatus),
        (status = 400, description = "An id that is not a 64-bit integer", body = Fault),
        (status = 404, description = "No such job, or another athlete's", body = Fault),
        AthleteFaults,
    )
)]
#[get("/api/sync/jobs/{id}")]
async fn job(
    auth: AthleteAuth,
    state: web::Data<Services>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let (athlete_id, id) = (auth.athlete_id, path.into_inner());
    let (job, position) = state
        .store
        .job_with_position(athlete_id, id)
        .await?
        .ok_or(ApiError::NotFound { resource: "Job" })?;
    Ok(HttpResponse::Ok().json(JobStatus {
        job_id: job.id,
        kind: job.task.kind(),
        status: job.status,
        counts: JobCounts {
            fetched: job.fetched,
            new: job.new,
            updated: job.updated,
        },
        created_at: to_time(Some(job.created_at)),
        error: job.error,
        queue_position: position,
        estimated_start: position.map(|p| estimated_start(&state, job.task.purpose(), p)),
    }))
}

/// The athlete's sync state, as a frontend shows it.
#[utoipa::path(
    tag = "sync",
    security(("api_token" = [])),
    responses((status = 200, description = "The sync state", body = SyncStatus), AthleteFaults)
)]
#[get("/api/sync")]
async fn status(
    auth: AthleteAuth,
    state: web::Data<Services>,
    settings: web::Data<Settings>,
) -> Result<HttpResponse, ApiError> {
    let athlete_id = auth.athlete_id;
    let overview = state.store.sync_overview(athlete_id).await?;
    let athlete = overview.athlete.ok_or(ApiError::Unauthorized)?;
    let (sync, queued, last_webhook) = (overview.state, overview.queued, overview.last_webhook_at);
    let now = state.clock.epoch();
    let share = settings.budget_shares.get(&Purpose::Backfill).copied();
    let guaranteed = f64::from(settings.strava_rate_limit_daily) * f64::from(share.unwrap_or(0));
    let backfill = progress::backfill(
        &state.store,
        athlete_id,
        &sync,
        overview.stored,
        guaranteed / 100.0,
        now,
    )
    .await?;
    let budget = state.budget.snapshot();
    let next_window_opens_at = budget
        .blocked
        .values()
        .filter(|b| matches!(b.reason, Blocked::Full(_) | Blocked::RateLimited(_)))
        .filter_map(|b| b.until)
        .min();
    Ok(HttpResponse::Ok().json(SyncStatus {
        athlete_id,
        connection: athlete.status.as_str(),
        missing_scope: missing_activity_scope(&athlete.scope, &settings.strava_scopes)
            .map(str::to_string),
        scope: athlete.scope,
        backfill,
        last_gap_fill_at: to_time(sync.last_gap_fill_at),
        last_webhook_at: to_time(last_webhook),
        last_reconcile_at: to_time(sync.last_reconcile_at),
        reconcile_in_progress: sync.reconcile_cursor.is_some(),
        queued: queued.into_iter().collect(),
        pending: pending(&state, &settings, athlete_id).await?,
        budget: BudgetState {
            paused: budget.paused,
            blocked: budget.blocked,
            next_window_opens_at,
        },
    }))
}

/// Announced activities not fetched yet, each with when it was announced and
/// when it should be readable here: once the budget serves its fetch's
/// purpose again, after the fetches worth more than it, at the pace that
/// purpose is given (a quarter hour's calls for athletes who are looking,
/// the webhook share of the day for the others).
async fn pending(
    state: &Services,
    settings: &Settings,
    athlete_id: i64,
) -> Result<Vec<Pending>, ApiError> {
    let now = state.clock.epoch();
    let since = state.attention.since();
    let Some(fetch) = state.store.pending_fetch(athlete_id, now, since).await? else {
        return Ok(Vec::new());
    };
    let (purpose, calls, per_secs) = if fetch.looking {
        (Purpose::Attention, settings.strava_rate_limit_15min, 900)
    } else {
        let share = settings.budget_shares.get(&Purpose::Webhook).copied();
        let per_day = settings.strava_rate_limit_daily * share.unwrap_or(0) / 100;
        (Purpose::Webhook, per_day, 86_400)
    };
    let secs_per_call = per_secs / i64::from(calls.max(1));
    let eta = serves_again(state, purpose).map(|opens| {
        let start = opens.timestamp().max(fetch.not_before);
        let at = start + (fetch.ahead + 1) * secs_per_call;
        DateTime::from_timestamp(at, 0).unwrap_or(opens)
    });
    Ok(fetch
        .activities
        .into_iter()
        .map(|(id, announced_at)| Pending {
            id,
            announced_at: to_time(Some(announced_at)),
            estimated_available_at: eta,
        })
        .collect())
}

/// When the budget serves `purpose` again: now, when its block ends, or
/// None while it is held with no end in sight (paused).
fn serves_again(state: &Services, purpose: Purpose) -> Option<DateTime<Utc>> {
    let now = state.clock.now();
    match state.budget.snapshot().blocked.get(purpose.as_str()) {
        None => Some(now),
        Some(blocked) => Some(blocked.until?.max(now)),
    }
}

/// When a queued job of `purpose` at `position` should start: once the
/// budget serves that purpose again, about a second per job ahead of it.
fn estimated_start(state: &Services, purpose: Purpose, position: i64) -> Option<DateTime<Utc>> {
    Some(serves_again(state, purpose)? + chrono::Duration::seconds(position - 1))
}

/// Starts a gap-fill pass now, as the schedule would.
#[utoipa::path(
    tag = "admin",
    security(("admin_token" = [])),
    responses((status = 202, description = "A pass is queued", body = PassQueued), AdminFaults)
)]
#[post("/admin/sync/run")]
async fn run_gap_fill(
    _: AdminAuth,
    state: web::Data<Services>,
    settings: web::Data<Settings>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.epoch();
    let since = state.attention.since();
    let queued = gap_fill::start_pass(
        &state.store,
        settings.strava_rate_limit_daily,
        since,
        now,
        false,
    )
    .await?;
    state.jobs.wake();
    Ok(HttpResponse::Accepted().json(PassQueued {
        status: "queued",
        athletes: queued.unwrap_or_default(),
    }))
}

fn to_time(t: Option<i64>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t, 0))
}

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(refresh)
        .service(job)
        .service(status)
        .service(run_gap_fill);
}
