//! The change log's upkeep: one reader of its newest id for the whole
//! process, however many feeds are open (a poll rather than an in-process
//! signal, so it also sees what other instances on the same database wrote),
//! telling the deliverer that something changed and each open feed whether
//! its athlete did; and the pruning that keeps the log bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::model::clock::Clock;
use crate::store::Store;

const POLL: Duration = Duration::from_millis(200);
/// Polls' worth of changed athletes a slow feed may fall behind by before
/// it reads anyway.
const TOUCHED_BACKLOG: usize = 64;
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
const PRUNE_BATCH: usize = 10_000;
/// How far back the change feed reaches, and how long a delivered change is kept.
pub const RETENTION_SECS: i64 = 7 * 24 * 3600;
/// How long a change not delivered (failed, waiting for a replay) is kept.
pub const UNDELIVERED_RETENTION_SECS: i64 = 30 * 24 * 3600;

#[derive(Clone)]
pub struct ChangeWatch {
    newest: Arc<watch::Sender<i64>>,
    /// The athletes with new changes, poll by poll: a feed reads only when
    /// its own athlete is among them, so 10,000 open feeds do not each read
    /// on every change.
    touched: broadcast::Sender<Arc<Vec<i64>>>,
    /// Cancelled when the watch stops, so open feeds end with it.
    closing: CancellationToken,
}

impl Default for ChangeWatch {
    fn default() -> Self {
        Self {
            newest: Arc::new(watch::Sender::new(0)),
            touched: broadcast::Sender::new(TOUCHED_BACKLOG),
            closing: CancellationToken::new(),
        }
    }
}

impl ChangeWatch {
    /// A receiver that is marked changed whenever a newer change is logged.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.newest.subscribe()
    }

    /// The athletes with new changes, poll by poll (a lagging receiver
    /// should read as if its athlete were among them).
    pub fn touched(&self) -> broadcast::Receiver<Arc<Vec<i64>>> {
        self.touched.subscribe()
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
        // None until the first read: what was logged before the service
        // started, each feed reads for itself when it opens.
        let mut seen: Option<i64> = None;
        loop {
            match (seen, store.latest_change().await) {
                (Some(after), Ok(id)) if after != id => {
                    match store.athletes_changed(after, id).await {
                        Ok(athletes) => {
                            // No feed open is no one to tell.
                            let _ = self.touched.send(Arc::new(athletes));
                            self.newest.send_replace(id);
                            seen = Some(id);
                        }
                        Err(e) => tracing::error!(error = %e, "reading the change log failed"),
                    }
                }
                (Some(_), Ok(_)) => {}
                (None, Ok(id)) => {
                    seen = Some(id);
                    self.newest.send_replace(id);
                }
                (_, Err(e)) => tracing::error!(error = %e, "reading the change log failed"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::app_event::ChangeKind;
    use crate::model::clock::SystemClock;
    use crate::store::changes;

    #[tokio::test]
    async fn each_poll_names_the_athletes_whose_changes_are_new() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        let log = |athlete: i64| {
            store.write(move |tx| {
                changes::record_athlete(tx, athlete, ChangeKind::AthleteConnected, 0)
            })
        };
        log(1).await.unwrap();
        let watch = ChangeWatch::default();
        let mut touched = watch.touched();
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(watch.clone().run(
            store.clone(),
            Arc::new(SystemClock),
            false,
            shutdown.clone(),
        ));
        // The first poll only learns where the log stands.
        let mut newest = watch.subscribe();
        tokio::time::timeout(POLL * 10, newest.wait_for(|id| *id == 1))
            .await
            .unwrap()
            .unwrap();
        log(7).await.unwrap();
        log(7).await.unwrap();
        let first = tokio::time::timeout(POLL * 10, touched.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            *first,
            [7],
            "athlete 1's change before the start is not news"
        );
        log(9).await.unwrap();
        let next = tokio::time::timeout(POLL * 10, touched.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(*next, [9]);
        shutdown.cancel();
        running.await.unwrap();
        assert!(
            watch.closing().is_cancelled(),
            "open feeds end with the watch"
        );
    }
}
