//! Posts each logged change to `APP_WEBHOOK_URL`, signed, at least once and
//! in order per athlete: an athlete's next change waits until the one before
//! it is delivered or given up. A failure is retried with exponential
//! backoff and jitter for a day, then waits for an operator's replay. The
//! deliverer runs on its own task with its own HTTP client and timeout, so a
//! slow or dead receiver holds up only its own deliveries, never syncing or
//! the webhook ack.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::signature;
use super::ChangeWatch;
use crate::config::AppWebhook;
use crate::model::clock::Clock;
use crate::store::changes::{Delivery, DueDelivery};
use crate::store::{DbResult, Store};

/// How long the receiver gets to answer one event.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a change is retried before it waits for a replay.
pub const GIVE_UP_AFTER_SECS: i64 = 24 * 3600;
/// Athletes served at once: one hanging receiver call holds up a batch for
/// at most [`TIMEOUT`].
const BATCH: usize = 32;

/// How long a batch's changes are claimed by this instance: long enough
/// for every delivery in it to time out, after which a claim whose
/// instance died runs out and another posts the change.
const CLAIM_SECS: i64 = 120;
/// How often due retries are looked for when no change arrives.
const POLL: Duration = Duration::from_secs(1);

/// Seconds before the `attempt`-th retry: 5 s doubling to an hour, less up to
/// a fifth at random so receivers that failed together are not retried
/// together.
pub fn backoff_secs(attempt: i64) -> i64 {
    let full = (5i64 << (attempt.clamp(1, 11) - 1)).min(3600);
    full - rand::rng().random_range(0..=full / 5)
}

pub struct Deliverer {
    store: Store,
    clock: Arc<dyn Clock>,
    hook: AppWebhook,
    watch: ChangeWatch,
    /// Its own, with the receiver's timeout and no redirects.
    client: reqwest::Client,
}

impl Deliverer {
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        hook: AppWebhook,
        watch: ChangeWatch,
    ) -> reqwest::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            store,
            clock,
            hook,
            watch,
            client,
        })
    }

    /// Delivers until `shutdown`. A batch in flight at shutdown is not
    /// recorded, so it is sent again once its claim runs out (by this
    /// instance after a restart, or another): at least once.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut changes = self.watch.subscribe();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                result = self.deliver_due() => if let Err(e) = result {
                    tracing::error!(error = %e, "delivering events to the application failed");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = changes.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Sends every change due now, a batch of athletes at a time. Returns
    /// how many were tried.
    pub async fn deliver_due(&self) -> DbResult<usize> {
        let mut tried = 0;
        loop {
            let now = self.clock.epoch();
            let due = self.store.claim_deliveries(now, BATCH, CLAIM_SECS).await?;
            if due.is_empty() {
                return Ok(tried);
            }
            tried += due.len();
            let outcomes = join_all(due.iter().map(|d| self.send(d, now))).await;
            for (_, outcome) in &outcomes {
                let name = match outcome {
                    Delivery::Delivered => "delivered",
                    Delivery::Retry { .. } => "retry",
                    Delivery::Failed { .. } => "failed",
                };
                metrics::counter!("app_event_deliveries_total", "outcome" => name).increment(1);
            }
            self.store.record_deliveries(outcomes).await?;
        }
    }

    async fn send(&self, due: &DueDelivery, now: i64) -> (i64, Delivery) {
        let id = due.event.id;
        let body = serde_json::to_string(&due.event).expect("an event serialises");
        let webhook_id = id.to_string();
        let answer = self
            .client
            .post(&self.hook.url)
            .header("content-type", "application/json")
            .header("webhook-id", &webhook_id)
            .header("webhook-timestamp", now.to_string())
            .header(
                "webhook-signature",
                signature::sign(self.hook.key(), &webhook_id, now, &body),
            )
            .body(body)
            .send()
            .await;
        let error = match answer {
            Ok(r) if r.status().is_success() => return (id, Delivery::Delivered),
            Ok(r) => format!("the receiver answered {}", r.status()),
            Err(e) if e.is_timeout() => format!("no answer within {} s", TIMEOUT.as_secs()),
            // Without the URL, which may carry the receiver's own secret.
            Err(e) => e.without_url().to_string(),
        };
        tracing::warn!(event = id, athlete_id = due.event.athlete_id, %error, "event delivery failed");
        let outcome = if now - due.retry_from >= GIVE_UP_AFTER_SECS {
            Delivery::Failed { error }
        } else {
            Delivery::Retry {
                error,
                at: now + backoff_secs(due.attempts + 1),
            }
        };
        (id, outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_an_hour_with_at_most_a_fifth_off() {
        for (attempt, full) in [(1, 5), (2, 10), (3, 20), (8, 640), (11, 3600), (40, 3600)] {
            for _ in 0..50 {
                let secs = backoff_secs(attempt);
                assert!(secs <= full && secs >= full - full / 5, "{attempt}: {secs}");
            }
        }
    }
}
