//! The job runner: claims the most urgent job the budget can serve now,
//! runs it, and records how it ended.
//!
//! It only claims jobs whose purpose the budget would grant at this moment
//! ([`Budget::servable`]), so workers do not sit on a background job waiting
//! for a window while interactive work queues behind it; interactive jobs
//! never wait for a worker slot. Long jobs (backfill) run one step per claim
//! and go back to the queue, so more urgent work overtakes them between
//! pages. Jobs of athletes who need re-authorization stay queued, unclaimed,
//! until they connect again.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::attention::Attention;
use super::outcome::{JobError, Step};
use super::source::ActivitySource;
use super::{dispatch, queue::JobQueue};
use crate::model::clock::Clock;
use crate::model::job::Counts;
use crate::model::Purpose;
use crate::store::jobs::{Job, Outcome};
use crate::store::{instances, DbError, Store};
use crate::strava::budget::Budget;
use crate::strava::client::StravaClient;
use crate::strava::error::StravaError;

/// Background jobs running at once; interactive jobs do not count.
const BACKGROUND_SLOTS: usize = 4;
/// How often the queue is looked at when nothing wakes the runner (jobs
/// enqueued by another process, retry times passing).
const POLL: Duration = Duration::from_secs(1);
/// How long a job in flight at shutdown may take to finish its step.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Claims before a job that keeps failing transiently is given up.
const MAX_ATTEMPTS: i64 = 5;
/// First retry delay of a transiently failed job; doubles per attempt.
const RETRY_BASE_SECS: i64 = 30;

/// Runs jobs against `S`: the Strava client in the service, a simulated
/// Strava in the day simulation, so what is simulated is what runs.
pub struct JobRunner<S = StravaClient> {
    store: Store,
    attention: Arc<Attention>,
    client: Arc<S>,
    budget: Arc<Budget>,
    queue: Arc<JobQueue>,
    slots: Arc<Semaphore>,
}

impl<S: ActivitySource + 'static> JobRunner<S> {
    pub fn new(
        store: Store,
        attention: Arc<Attention>,
        client: Arc<S>,
        budget: Arc<Budget>,
        queue: Arc<JobQueue>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            attention,
            client,
            budget,
            queue,
            slots: Arc::new(Semaphore::new(BACKGROUND_SLOTS)),
        })
    }

    /// Runs until `shutdown`. A job in flight then gets a moment to commit
    /// its step; one that does not is requeued at the next start, resuming
    /// from its last committed step.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, tasks: TaskTracker) {
        while !shutdown.is_cancelled() {
            match self.claim().await {
                Ok(Some(Claimed { job, purpose, slot })) => {
                    let runner = self.clone();
                    let shutdown = shutdown.clone();
                    tasks.spawn(async move {
                        let run = runner.run_one(job, purpose);
                        tokio::pin!(run);
                        tokio::select! {
                            _ = &mut run => {}
                            _ = shutdown.cancelled() => {
                                // Let a step in flight commit; a job still
                                // waiting for the budget is abandoned.
                                let _ = tokio::time::timeout(SHUTDOWN_GRACE, run).await;
                            }
                        }
                        drop(slot);
                        runner.queue.wake();
                    });
                }
                Ok(None) => self.idle(&shutdown).await,
                Err(e) => {
                    tracing::error!(error = %e, "could not claim a job");
                    self.idle(&shutdown).await;
                }
            }
        }
    }

    /// The job worth most that the budget can serve now, the purpose it runs
    /// at, and the worker slot it holds (None for interactive jobs, which
    /// never wait for a slot). Reads noted since the last claim are written
    /// first, so who is looking is current.
    async fn claim(&self) -> Result<Option<Claimed>, DbError> {
        self.attention.flush().await?;
        let (mut order, _) = self.budget.servable();
        let slot = self.slots.clone().try_acquire_owned().ok();
        if slot.is_none() {
            order.retain(|p| *p == Purpose::Interactive);
        }
        if order.is_empty() {
            return Ok(None);
        }
        let now = self.budget.clock().epoch();
        let claimed = self
            .store
            .claim_job(now, order, self.attention.since())
            .await?;
        Ok(claimed.map(|(job, purpose)| Claimed {
            job,
            purpose,
            slot: (purpose != Purpose::Interactive).then_some(slot).flatten(),
        }))
    }

    /// Waits for something that may make a job runnable: new work, a change
    /// in the budget, a budget window or retry time arriving, or the poll.
    async fn idle(&self, shutdown: &CancellationToken) {
        let (_, budget_change) = self.budget.servable();
        let now = self.budget.clock().epoch();
        let next_due = match self.store.queue_state(now).await {
            Ok(queue) => {
                metrics::gauge!("jobs_queued").set(queue.queued as f64);
                queue
                    .next_due
                    .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
            }
            Err(e) => {
                tracing::error!(error = %e, "could not read the job queue");
                None
            }
        };
        let wake_at = [budget_change, next_due].into_iter().flatten().min();
        let clock = self.budget.clock().clone();
        let timer = async move {
            match wake_at {
                Some(t) => clock.sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = self.queue.woken() => {}
            _ = self.budget.changed() => {}
            _ = timer => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }

    async fn run_one(&self, job: Job, purpose: Purpose) {
        let now = self.budget.clock().epoch();
        let result = dispatch::run(
            &self.store,
            &*self.client,
            job.athlete_id,
            &job.task,
            purpose,
            now,
        )
        .await;
        let now = self.budget.clock().epoch();
        let outcome = match result {
            Ok(Step::Done(counts)) => Outcome::Done(counts),
            Ok(Step::More(counts)) => Outcome::Requeue {
                counts,
                not_before: now,
                error: None,
            },
            Err(e) => match disposition(&e, job.attempts) {
                Disposition::Retry(delay) => Outcome::Requeue {
                    counts: Counts::default(),
                    not_before: now + delay,
                    error: Some(e.to_string()),
                },
                Disposition::Fail => Outcome::Failed(e.to_string()),
            },
        };
        match self.store.record_job(job.id, outcome, now).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                job = job.id,
                "another instance took this job over; its outcome here is dropped"
            ),
            Err(e) => tracing::error!(job = job.id, error = %e, "could not record a job's outcome"),
        }
    }

    /// Runs every job that can run now, one at a time, until none is left
    /// that the budget and the queue allow; returns how many ran. For tests
    /// and simulations that must know the queue has settled, without
    /// sleeping.
    pub async fn run_until_idle(&self) -> Result<usize, DbError> {
        let mut ran = 0;
        while let Some(Claimed { job, purpose, .. }) = self.claim().await? {
            self.run_one(job, purpose).await;
            ran += 1;
        }
        Ok(ran)
    }
}

/// A claimed job, the purpose its calls are made at, and its worker slot.
struct Claimed {
    job: Job,
    purpose: Purpose,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

enum Disposition {
    /// Back to the queue after this many seconds.
    Retry(i64),
    Fail,
}

/// What to do with a job that failed on its `attempts`-th claim.
fn disposition(error: &JobError, attempts: i64) -> Disposition {
    match error {
        // Stays queued but unclaimable until the athlete connects again.
        JobError::Strava(StravaError::NeedsReauth) => Disposition::Retry(0),
        // The budget itself holds calls back until the window resets.
        JobError::Strava(StravaError::RateLimited) if attempts < MAX_ATTEMPTS => {
            Disposition::Retry(0)
        }
        JobError::Strava(e) if e.is_transient() && attempts < MAX_ATTEMPTS => {
            Disposition::Retry(RETRY_BASE_SECS << (attempts - 1).clamp(0, 10))
        }
        _ => Disposition::Fail,
    }
}

/// Keeps this instance's heartbeat fresh until `shutdown`, so the others
/// leave its running jobs alone (see [`crate::store::instances`]).
pub async fn keep_alive(store: Store, clock: Arc<dyn Clock>, shutdown: CancellationToken) {
    let every = Duration::from_secs(instances::HEARTBEAT_SECS);
    while !shutdown.is_cancelled() {
        if let Err(e) = store.instance_heartbeat(clock.epoch()).await {
            tracing::error!(error = %e, "could not refresh this instance's heartbeat");
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_retry_with_growing_delays_then_fail() {
        let server = JobError::Strava(StravaError::Server(503));
        assert!(matches!(disposition(&server, 1), Disposition::Retry(30)));
        assert!(matches!(disposition(&server, 3), Disposition::Retry(120)));
        assert!(matches!(
            disposition(&server, MAX_ATTEMPTS),
            Disposition::Fail
        ));
        let reauth = JobError::Strava(StravaError::NeedsReauth);
        assert!(matches!(disposition(&reauth, 9), Disposition::Retry(0)));
        for permanent in [
            JobError::Strava(StravaError::InvalidToken),
            JobError::Strava(StravaError::NotFound),
            JobError::Strava(StravaError::Malformed("x".into())),
        ] {
            assert!(matches!(disposition(&permanent, 1), Disposition::Fail));
        }
    }
}
