//! The webhook worker: drains the inbox, applying each event in its own
//! transaction, in `event_time` order per object. It never calls Strava:
//! creates become `WebhookFetch` jobs, updates and deletes are applied from
//! the event itself, deauthorizations purge the athlete.
//!
//! A failed application is retried with backoff ([`backoff_secs`]) and,
//! after [`MAX_ATTEMPTS`], left `failed` for an operator's replay.

use std::time::{Duration, Instant};

use actix_web::web;
use tokio_util::sync::CancellationToken;

use super::{fetch, Webhooks};
use crate::http::AppState;
use crate::store::activity_edits::{self, FieldUpdates, UpdateResult};
use crate::store::inbox::{self, AspectType, Event, ObjectType, Status, Stored};
use crate::store::{athletes, sync_state, DbResult, Store};

/// Attempts before an event is marked failed.
pub const MAX_ATTEMPTS: i64 = 6;
/// How often the worker looks for retries that have come due.
const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Events read per batch.
const BATCH: usize = 200;
/// How often settled events past retention are deleted.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// Settled events are kept this long so Strava's retries (minutes apart)
/// still meet their dedup key, and late deletes still see applied creates.
const RETENTION_SECS: i64 = 30 * 24 * 3600;

/// Seconds to wait after the `attempts`-th failure: 30 s, 2 min, 8 min,
/// 32 min, then hourly.
pub fn backoff_secs(attempts: i64) -> i64 {
    let exponent = attempts.clamp(1, 5) as u32 - 1;
    (30 * 4i64.pow(exponent)).min(3600)
}

/// Runs until `shutdown`: drains whatever is due, then sleeps until an event
/// is committed (`wake`) or the poll interval passes. Wakes the job runner
/// after a pass that applied events, since creates queue fetch jobs.
pub async fn run(
    state: web::Data<AppState>,
    webhooks: web::Data<Webhooks>,
    shutdown: CancellationToken,
) {
    let store = &state.store;
    let mut last_prune: Option<Instant> = None;
    loop {
        // Each event is applied in its own transaction, so stopping between
        // two (or while one commits on the blocking pool) loses nothing.
        tokio::select! {
            _ = shutdown.cancelled() => break,
            result = drain(store, state.clock.epoch()) => match result {
                Ok(0) => {}
                Ok(_) => state.jobs.wake(),
                Err(e) => tracing::error!(error = %e, "webhook worker pass failed"),
            }
        }
        if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_INTERVAL) {
            last_prune = Some(Instant::now());
            let cutoff = state.clock.epoch() - RETENTION_SECS;
            if let Err(e) = store
                .write(move |tx| inbox::prune(tx, cutoff, 10_000))
                .await
            {
                tracing::error!(error = %e, "webhook inbox pruning failed");
            }
        }
        match store.read(inbox::depth).await {
            Ok(depth) => metrics::gauge!("webhook_inbox_depth").set(depth as f64),
            Err(e) => tracing::error!(error = %e, "webhook inbox depth unavailable"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = webhooks.wake.notified() => {}
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
}

/// Applies every event due at `now` (the clock is a parameter so retries can
/// be driven in tests without waiting). Returns how many events it tried.
pub async fn drain(store: &Store, now: i64) -> DbResult<usize> {
    let mut tried = 0;
    loop {
        let batch = store.read(move |c| inbox::next_due(c, now, BATCH)).await?;
        if batch.is_empty() {
            return Ok(tried);
        }
        tried += batch.len();
        for stored in batch {
            apply_one(store, stored, now).await?;
        }
    }
}

/// Applies one event in its own transaction; a failure is recorded on the
/// event, not returned, so one bad event does not stop the others.
async fn apply_one(store: &Store, stored: Stored, now: i64) -> DbResult<()> {
    let Stored {
        id,
        event,
        attempts,
        received_at,
        ..
    } = stored;
    let kind = event.kind();
    let result = store
        .write(move |tx| {
            // Someone else (a replay, a second drain) may have settled it.
            if !inbox::is_pending(tx, id)? {
                return Ok(None);
            }
            let (status, outcome) = apply(tx, &event, received_at, now)?;
            inbox::settle(tx, id, status, now)?;
            Ok(Some(outcome))
        })
        .await;
    let outcome = match result {
        Ok(None) => return Ok(()),
        Ok(Some(outcome)) => {
            tracing::debug!(event = id, kind, outcome, "webhook event settled");
            outcome
        }
        Err(e) => {
            let attempts = attempts + 1;
            let retry_at = (attempts < MAX_ATTEMPTS).then(|| now + backoff_secs(attempts));
            tracing::warn!(event = id, kind, attempts, error = %e, "webhook event failed");
            let error = e.to_string();
            store
                .write(move |tx| inbox::record_failure(tx, id, &error, retry_at))
                .await?;
            if retry_at.is_some() {
                "retry"
            } else {
                "failed"
            }
        }
    };
    metrics::counter!("webhook_events_total", "kind" => kind, "outcome" => outcome).increment(1);
    Ok(())
}

/// Applies one event and says how it settled and why.
fn apply(
    tx: &rusqlite::Connection,
    event: &Event,
    received_at: i64,
    now: i64,
) -> DbResult<(Status, &'static str)> {
    if athletes::get(tx, event.owner_id)?.is_none() {
        return Ok((Status::Ignored, "unknown_athlete"));
    }
    sync_state::record_webhook_at(tx, event.owner_id, received_at)?;
    let (owner, id, at) = (event.owner_id, event.object_id, event.event_time);
    Ok(match (event.object_type, event.aspect_type) {
        (ObjectType::Athlete, AspectType::Update)
            if event.updates.get("authorized").map(String::as_str) == Some("false") =>
        {
            athletes::purge(tx, owner)?;
            (Status::Done, "purged")
        }
        (ObjectType::Athlete, _) => (Status::Ignored, "nothing_to_apply"),
        (ObjectType::Activity, AspectType::Create) => {
            if let Some(deleted_at) = activity_edits::tombstone(tx, id)? {
                if deleted_at >= at {
                    return Ok((Status::Ignored, "deleted"));
                }
                activity_edits::clear_tombstone(tx, id)?;
            }
            if activity_edits::is_stored(tx, owner, id)? {
                (Status::Done, "already_stored")
            } else {
                fetch::queue(tx, owner, id, now)?;
                (Status::Done, "fetch_queued")
            }
        }
        (ObjectType::Activity, AspectType::Update) => {
            if activity_edits::tombstone(tx, id)?.is_some_and(|deleted_at| deleted_at >= at) {
                return Ok((Status::Ignored, "deleted"));
            }
            match activity_edits::apply_update(tx, owner, id, at, &field_updates(event), now)? {
                UpdateResult::Applied => (Status::Done, "applied"),
                UpdateResult::Stale => (Status::Ignored, "stale"),
                // The fetch that stores it returns the current state.
                UpdateResult::NotStored => (Status::Ignored, "not_stored"),
            }
        }
        (ObjectType::Activity, AspectType::Delete) => {
            if inbox::newer_create_applied(tx, id, at)? {
                return Ok((Status::Ignored, "stale"));
            }
            activity_edits::delete(tx, owner, id, at)?;
            fetch::forget(tx, owner, id)?;
            (Status::Done, "deleted")
        }
    })
}

/// Translates an update event's `updates` to activity fields; keys and
/// values Strava does not define are left out.
fn field_updates(event: &Event) -> FieldUpdates {
    let get = |key: &str| event.updates.get(key).cloned();
    FieldUpdates {
        name: get("title"),
        activity_type: get("type"),
        private: match event.updates.get("private").map(String::as_str) {
            Some("true") => Some(true),
            Some("false") => Some(false),
            _ => None,
        },
    }
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
