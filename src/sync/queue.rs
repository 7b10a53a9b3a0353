//! The queue's front door: enqueue and wake the runner.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::model::clock::Clock;
use crate::model::job::Task;
use crate::store::{DbResult, Store};

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

    /// Queues a task due now (merging it into the athlete's queued job of the
    /// same kind) and wakes the runner. Returns the job id.
    pub async fn push(&self, athlete_id: i64, task: Task) -> DbResult<i64> {
        let now = self.clock.epoch();
        let id = self.store.enqueue(athlete_id, task, now, now).await?;
        self.wake();
        Ok(id)
    }

    /// Tells the runner there is new work (after a store use case queued some).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub(super) async fn woken(&self) {
        self.wake.notified().await
    }
}
