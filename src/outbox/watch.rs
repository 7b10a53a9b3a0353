//! The change log's upkeep: one reader of its newest id for the whole
//! process, however many feeds are open (a poll rather than an in-process
//! signal, so it also sees what other instances on the same database wrote),
//! and the pruning that keeps it bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::model::clock::Clock;
use crate::store::Store;

const POLL: Duration = Duration::from_millis(200);
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
const PRUNE_BATCH: usize = 10_000;
/// How far back the change feed reaches, and how long a delivered change is kept.
pub const RETENTION_SECS: i64 = 7 * 24 * 3600;
/// How long a change not delivered (failed, waiting for a replay) is kept.
pub const UNDELIVERED_RETENTION_SECS: i64 = 30 * 24 * 3600;

#[derive(Clone)]
pub struct ChangeWatch {
    newest: Arc<watch::Sender<i64>>,
    /// Cancelled when the watch stops, so open feeds end with it.
    closing: CancellationToken,
}

impl Default for ChangeWatch {
    fn default() -> Self {
        Self {
            newest: Arc::new(watch::Sender::new(0)),
            closing: CancellationToken::new(),
        }
    }
}

impl ChangeWatch {
    /// A receiver that is marked changed whenever a newer change is logged.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.newest.subscribe()
    }

    /// Cancelled once the service stops watching (it is shutting down).
    pub fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }

    /// Reads the newest id until `shutdown`, telling subscribers when it
    /// moves, and prunes the log hourly. With `delivering` off, changes are
    /// kept for the feed only, whatever their delivery state.
    pub async fn run(
        self,
        store: Store,
        clock: Arc<dyn Clock>,
        delivering: bool,
        shutdown: CancellationToken,
    ) {
        let mut last_prune: Option<Instant> = None;
        loop {
            match store.latest_change().await {
                Ok(id) => {
                    self.newest.send_if_modified(|seen| {
                        let moved = *seen != id;
                        *seen = id;
                        moved
                    });
                }
                Err(e) => tracing::error!(error = %e, "reading the change log failed"),
            }
            if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_INTERVAL) {
                last_prune = Some(Instant::now());
                let now = clock.epoch();
                let before = now - RETENTION_SECS;
                let any_before = if delivering {
                    now - UNDELIVERED_RETENTION_SECS
                } else {
                    before
                };
                // In batches, each its own short transaction, until none is
                // left: an hour can log far more than one batch.
                loop {
                    match store.prune_changes(before, any_before, PRUNE_BATCH).await {
                        Ok(n) if n == PRUNE_BATCH => tokio::task::yield_now().await,
                        Ok(_) => break,
                        Err(e) => {
                            tracing::error!(error = %e, "pruning the change log failed");
                            break;
                        }
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
        self.closing.cancel();
    }
}
