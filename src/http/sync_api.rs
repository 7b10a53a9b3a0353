//! Sync status and manual refresh for an athlete (`/api/sync`), and the
//! operator's "gap-fill now" (`/admin/sync/run`). Nothing here calls Strava:
//! a refresh is queued at interactive priority for the job runner.

use actix_web::{get, post, web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use super::auth::{AdminAuth, AthleteAuth};
use super::{error::ApiError, AppState};
use crate::model::Purpose;
use crate::store::{activities, athletes, jobs, sync_state};
use crate::strava::budget::Blocked;
use crate::sync::{gap_fill, progress};

#[derive(Serialize)]
struct Queued {
    job_id: i64,
    status: &'static str,
    queue_position: i64,
    estimated_start: Option<DateTime<Utc>>,
}

/// Queues a refresh (a catch-up from the newest stored activity) at the
/// highest priority, once per cooldown.
#[post("/api/sync")]
async fn refresh(auth: AthleteAuth, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let athlete_id = auth.athlete_id;
    let cooldown = i64::try_from(state.settings.manual_refresh_cooldown_secs).unwrap_or(i64::MAX);
    let now = state.clock.epoch();
    let outcome = state
        .store
        .write(move |tx| {
            let connected = athletes::get(tx, athlete_id)?
                .is_some_and(|a| a.status == athletes::Status::Connected);
            if !connected {
                return Ok(Err(None));
            }
            if let Err(wait) = sync_state::claim_manual_refresh(tx, athlete_id, now, cooldown)? {
                return Ok(Err(Some(wait)));
            }
            let id = jobs::enqueue(tx, athlete_id, jobs::JobKind::Refresh, None, now)?;
            let position = jobs::queue_position(tx, id)?.unwrap_or(1);
            Ok(Ok((id, position)))
        })
        .await?;
    let (job_id, queue_position) = match outcome {
        Ok(queued) => {
            state.jobs.wake();
            queued
        }
        Err(None) => return Err(needs_reauth()),
        Err(Some(wait)) => {
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
#[get("/api/sync/jobs/{id}")]
async fn job(
    auth: AthleteAuth,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let (athlete_id, id) = (auth.athlete_id, path.into_inner());
    let (job, position) = state
        .store
        .read(move |c| {
            let job = jobs::get(c, athlete_id, id)?;
            let position = jobs::queue_position(c, id)?;
            Ok((job, position))
        })
        .await?;
    let job = job.ok_or(ApiError::NotFound { resource: "Job" })?;
    let mut body = json!({
        "job_id": job.id,
        "kind": job.kind.as_str(),
        "status": job.status,
        "counts": {"fetched": job.fetched, "new": job.new, "updated": job.updated},
        "created_at": to_time(Some(job.created_at)),
    });
    if let Some(error) = &job.error {
        body["error"] = json!(error);
    }
    if let Some(position) = position {
        body["queue_position"] = json!(position);
        body["estimated_start"] = json!(estimated_start(&state, job.kind.purpose(), position));
    }
    Ok(HttpResponse::Ok().json(body))
}

/// The athlete's sync state, as a frontend shows it.
#[get("/api/sync")]
async fn status(auth: AthleteAuth, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let athlete_id = auth.athlete_id;
    let (athlete, sync, stored, queued, last_webhook) = state
        .store
        .read(move |c| {
            Ok((
                athletes::get(c, athlete_id)?,
                sync_state::get(c, athlete_id)?,
                activities::count_for(c, athlete_id)?,
                jobs::queued_by_kind(c, athlete_id)?,
                sync_state::last_webhook_at(c, athlete_id)?,
            ))
        })
        .await?;
    let athlete = athlete.ok_or(ApiError::Unauthorized)?;
    let now = state.clock.epoch();
    let daily_limit = state.settings.strava_rate_limit_daily;
    let backfill =
        progress::backfill(&state.store, athlete_id, &sync, stored, daily_limit, now).await?;
    let budget = state.budget.snapshot();
    let next_window_opens_at = budget
        .blocked
        .values()
        .filter(|b| matches!(b.reason, Blocked::Full(_) | Blocked::RateLimited(_)))
        .filter_map(|b| b.until)
        .min();
    Ok(HttpResponse::Ok().json(json!({
        "athlete_id": athlete_id,
        "connection": athlete.status.as_str(),
        "backfill": backfill,
        "last_gap_fill_at": to_time(sync.last_gap_fill_at),
        "last_webhook_at": to_time(last_webhook),
        "last_reconcile_at": to_time(sync.last_reconcile_at),
        "reconcile_in_progress": sync.reconcile_cursor.is_some(),
        "queued": queued.into_iter().map(|(kind, n)| (kind, json!(n))).collect::<serde_json::Map<_, _>>(),
        "budget": {
            "paused": budget.paused,
            "blocked": budget.blocked,
            "next_window_opens_at": next_window_opens_at,
        },
    })))
}

/// When a queued job of `purpose` at `position` should start: once the
/// budget serves that purpose again, about a second per job ahead of it.
fn estimated_start(state: &AppState, purpose: Purpose, position: i64) -> Option<DateTime<Utc>> {
    let now = state.clock.now();
    let opens = match state.budget.snapshot().blocked.get(purpose.as_str()) {
        None => now,
        Some(blocked) => blocked.until?.max(now),
    };
    Some(opens + chrono::Duration::seconds(position - 1))
}

/// Starts a gap-fill pass now, as the schedule would.
#[post("/admin/sync/run")]
async fn run_gap_fill(_: AdminAuth, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let queued = gap_fill::start_pass(&state.store, state.settings.strava_rate_limit_daily).await?;
    state.jobs.wake();
    Ok(HttpResponse::Accepted().json(json!({"status": "queued", "athletes": queued})))
}

fn to_time(t: Option<i64>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t, 0))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(refresh)
        .service(job)
        .service(status)
        .service(run_gap_fill);
}
