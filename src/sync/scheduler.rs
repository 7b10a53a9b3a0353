//! When background sync work is queued: the daily gap-fill pass at
//! `SYNC_SCHEDULE` (six-field cron, UTC), and every few minutes the planning
//! of deletion reconciliation and detail enrichment. Queuing costs no call;
//! the job runner spends the budget on what is queued, in the order the
//! budget gives the purposes and by value within each.

use std::sync::Arc;

use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::model::clock::Clock;
use crate::store::Store;

use super::attention::Attention;
use super::queue::JobQueue;
use super::{enrich, gap_fill, reconcile};

/// How often reconciliation and enrichment are planned.
pub const PLAN_SCHEDULE: &str = "0 */5 * * * *";

/// What the planning needs: where to queue, and on which clock.
#[derive(Clone)]
pub struct Planner {
    pub store: Store,
    pub queue: Arc<JobQueue>,
    pub attention: Arc<Attention>,
    pub clock: Arc<dyn Clock>,
    /// The budget's daily ceiling, which bounds a gap-fill pass.
    pub daily_limit: u32,
}

impl Planner {
    /// Queues the scheduled gap-fill pass, unless another instance sharing
    /// the database just did, and wakes the runner. Returns how many
    /// athletes are queued (None: the other instance's pass stands).
    pub async fn gap_fill_pass(&self) -> crate::store::DbResult<Option<usize>> {
        let since = self.attention.since();
        let now = self.clock.epoch();
        let queued = gap_fill::start_pass(&self.store, self.daily_limit, since, now, true).await;
        self.queue.wake();
        queued
    }

    /// Queues reconciliations that are due and, when nothing more urgent
    /// waits, detail fetches; then wakes the runner. Errors are logged: the
    /// next round tries again.
    pub async fn plan(&self) {
        let now = self.clock.epoch();
        if let Err(e) = reconcile::plan(&self.store, now).await {
            tracing::error!(error = %e, "planning reconciliation failed");
        }
        if let Err(e) = enrich::plan(&self.store, now).await {
            tracing::error!(error = %e, "planning enrichment failed");
        }
        self.queue.wake();
    }
}

/// Starts the schedule: the gap-fill pass at `sync_schedule` (an invalid one
/// stops the service here) and planning every few minutes; it stops when
/// `shutdown` is cancelled.
pub async fn start(
    planner: Planner,
    sync_schedule: &str,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<()> {
    let mut scheduler = JobScheduler::new().await?;
    let daily = planner.clone();
    scheduler
        .add(Job::new_async(sync_schedule, move |_, _| {
            let planner = daily.clone();
            Box::pin(async move {
                match planner.gap_fill_pass().await {
                    Ok(Some(n)) => tracing::info!(athletes = n, "gap-fill pass queued"),
                    Ok(None) => tracing::info!("gap-fill pass queued by another instance"),
                    Err(e) => tracing::error!(error = %e, "queuing the gap-fill pass failed"),
                }
            })
        })?)
        .await?;
    scheduler
        .add(Job::new_async(PLAN_SCHEDULE, move |_, _| {
            let planner = planner.clone();
            Box::pin(async move { planner.plan().await })
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
