//! When background sync work is queued: the daily gap-fill pass at
//! `SYNC_SCHEDULE` (six-field cron, UTC), and every few minutes the planning
//! of deletion reconciliation and detail enrichment. Queuing costs no call;
//! the job runner spends the budget on what is queued, by priority.

use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::AppState;
use crate::store::Store;

use super::{enrich, gap_fill, reconcile};

/// How often reconciliation and enrichment are planned.
pub const PLAN_SCHEDULE: &str = "0 */5 * * * *";

/// Queues reconciliations that are due and, when nothing more urgent waits,
/// detail fetches. Errors are logged: the next round tries again.
pub async fn plan(store: &Store, now: i64) {
    if let Err(e) = reconcile::plan(store, now).await {
        tracing::error!(error = %e, "planning reconciliation failed");
    }
    if let Err(e) = enrich::plan(store, now).await {
        tracing::error!(error = %e, "planning enrichment failed");
    }
}

/// Starts the schedule (an invalid `SYNC_SCHEDULE` stops the service
/// here); it stops when `shutdown` is cancelled.
pub async fn start(
    state: &AppState,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<()> {
    let mut scheduler = JobScheduler::new().await?;
    let (store, queue) = (state.store.clone(), state.jobs.clone());
    let daily_limit = state.settings.strava_rate_limit_daily;
    scheduler
        .add(Job::new_async(
            state.settings.sync_schedule.as_str(),
            move |_, _| {
                let (store, queue) = (store.clone(), queue.clone());
                Box::pin(async move {
                    match gap_fill::start_pass(&store, daily_limit).await {
                        Ok(n) => tracing::info!(athletes = n, "gap-fill pass queued"),
                        Err(e) => tracing::error!(error = %e, "queuing the gap-fill pass failed"),
                    }
                    queue.wake();
                })
            },
        )?)
        .await?;
    let (store, queue, clock) = (state.store.clone(), state.jobs.clone(), state.clock.clone());
    scheduler
        .add(Job::new_async(PLAN_SCHEDULE, move |_, _| {
            let (store, queue, now) = (store.clone(), queue.clone(), clock.epoch());
            Box::pin(async move {
                plan(&store, now).await;
                queue.wake();
            })
        })?)
        .await?;
    scheduler.start().await?;
    tasks.spawn(async move {
        shutdown.cancelled().await;
        if let Err(e) = scheduler.shutdown().await {
            tracing::warn!(error = %e, "scheduler did not stop cleanly");
        }
    });
    Ok(())
}
