//! Work that spends the Strava budget, run from a durable queue, and the sync
//! engine that keeps the local copy complete although webhooks get lost,
//! uploads arrive late and deletions go unannounced.
//!
//! Anything that needs Strava data enqueues a job ([`JobQueue::push`], or
//! `store::jobs::enqueue` inside a larger transaction followed by
//! [`JobQueue::wake`]); the [`runner::JobRunner`] claims the most urgent job
//! the budget can serve right now and dispatches it on its kind.

pub mod dispatch;
pub mod enrich;
pub mod gap_fill;
pub mod history;
pub mod progress;
pub mod reconcile;
pub mod runner;
pub mod scheduler;
pub mod source;
pub mod webhook_fetch;

use std::sync::Arc;

use tokio::sync::Notify;

use crate::model::clock::Clock;
use crate::store::jobs::{self, JobKind};
use crate::store::{DbResult, Store};

/// The queue's front door: enqueue and wake the runner.
pub struct JobQueue {
    store: Store,
    clock: Arc<dyn Clock>,
    wake: Notify,
}

impl JobQueue {
    pub fn new(store: Store, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            wake: Notify::new(),
        }
    }

    /// Queues a job due now (coalescing with a queued one of the same kind
    /// for the athlete) and wakes the runner. Returns the job id.
    pub async fn push(
        &self,
        athlete_id: i64,
        kind: JobKind,
        payload_json: Option<String>,
    ) -> DbResult<i64> {
        let now = self.clock.epoch();
        let id = self
            .store
            .write(move |tx| jobs::enqueue(tx, athlete_id, kind, payload_json.as_deref(), now))
            .await?;
        self.wake();
        Ok(id)
    }

    /// Tells the runner there is new work (after enqueueing in a transaction
    /// of your own).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    async fn woken(&self) {
        self.wake.notified().await
    }
}
