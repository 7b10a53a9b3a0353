//! The webhook worker: drains the inbox a batch per transaction
//! ([`Store::apply_due_events`]), in `event_time` order per object. It
//! never calls Strava: creates join the athlete's queued fetch, updates and
//! deletes are applied from the event itself, deauthorizations purge the
//! athlete.
//!
//! A failed application is retried with backoff ([`backoff_secs`]) and,
//! after [`MAX_ATTEMPTS`], left `failed` for an operator's replay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Webhooks;
use crate::model::backoff::fourfold_secs;
use crate::model::clock::Clock;
use crate::store::events::{Outcome, Settled};
use crate::store::inbox::Stored;
use crate::store::{DbResult, Store};
use crate::sync::queue::JobQueue;

/// Attempts before an event is marked failed.
pub const MAX_ATTEMPTS: i64 = 6;
/// How long the worker waits after being woken before applying.
const GATHER: Duration = Duration::from_millis(10);
/// How often the worker looks for retries that have come due.
const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Events applied per transaction: large enough that the commit is a small
/// part of a batch, small enough that the webhook callbacks waiting for the
/// writer are not held up for long.
const BATCH: usize = 256;
/// How often settled events past retention are deleted.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// Settled events are kept this long so Strava's retries (minutes apart)
/// still meet their dedup key, and late deletes still see applied creates.
const RETENTION_SECS: i64 = 30 * 24 * 3600;

/// Seconds to wait after the `attempts`-th failure: 30 s, 2 min, 8 min,
/// 32 min, then hourly.
pub fn backoff_secs(attempts: i64) -> i64 {
    fourfold_secs(attempts.clamp(1, 16) as u32, 3600)
}

/// What the worker works with.
pub struct Worker {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub webhooks: Arc<Webhooks>,
    /// Woken after a pass that applied events, since creates queue fetches.
    pub jobs: Arc<JobQueue>,
}

/// Runs until `shutdown`: drains whatever is due, then sleeps until an event
/// is committed (`wake`) or the poll interval passes.
pub async fn run(worker: Worker, shutdown: CancellationToken) {
    let Worker {
        store,
        clock,
        webhooks,
        jobs,
    } = worker;
    let store = &store;
    let mut last_prune: Option<Instant> = None;
    loop {
        // Each batch is applied in one transaction, so stopping between two
        // (or while one commits on the blocking pool) loses nothing.
        tokio::select! {
            _ = shutdown.cancelled() => break,
            result = drain(store, clock.epoch()) => match result {
                Ok(0) => {}
                Ok(_) => jobs.wake(),
                Err(e) => tracing::error!(error = %e, "webhook worker pass failed"),
            }
        }
        if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_INTERVAL) {
            last_prune = Some(Instant::now());
            let cutoff = clock.epoch() - RETENTION_SECS;
            if let Err(e) = store.prune_events(cutoff, 10_000).await {
                tracing::error!(error = %e, "webhook inbox pruning failed");
            }
        }
        match store.inbox_depth().await {
            Ok(depth) => metrics::gauge!("webhook_inbox_depth").set(depth as f64),
            Err(e) => tracing::error!(error = %e, "webhook inbox depth unavailable"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            // Let the events arriving with this one commit first, so a
            // steady stream is applied a few per transaction rather than
            // one commit per event competing with the callbacks' commits.
            _ = webhooks.wake.notified() => tokio::time::sleep(GATHER).await,
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
}

/// Applies every event due at `now` (the clock is a parameter so retries can
/// be driven in tests without waiting), a batch per transaction. Returns how
/// many events it tried.
pub async fn drain(store: &Store, now: i64) -> DbResult<usize> {
    let mut tried = 0;
    loop {
        let retry_at =
            move |attempts| (attempts < MAX_ATTEMPTS).then(|| now + backoff_secs(attempts));
        let batch = store.apply_due_events(now, BATCH, retry_at).await?;
        if batch.is_empty() {
            return Ok(tried);
        }
        tried += batch.len();
        batch.iter().for_each(report);
    }
}

/// Logs and counts how one event settled.
fn report(settled: &Settled) {
    let Stored {
        id,
        event,
        attempts,
        ..
    } = &settled.stored;
    let kind = event.kind();
    let outcome = match &settled.outcome {
        Outcome::Settled(outcome) => {
            tracing::debug!(event = id, kind, outcome, "webhook event settled");
            *outcome
        }
        Outcome::Failed { error, retry_at } => {
            let attempts = attempts + 1;
            tracing::warn!(event = id, kind, attempts, %error, "webhook event failed");
            if retry_at.is_some() {
                "retry"
            } else {
                "failed"
            }
        }
    };
    metrics::counter!("webhook_events_total", "kind" => kind, "outcome" => outcome).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_caps() {
        let waits: Vec<i64> = (1..=7).map(backoff_secs).collect();
        assert_eq!(waits, [30, 120, 480, 1920, 3600, 3600, 3600]);
    }
}
