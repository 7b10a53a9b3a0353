//! Fetching activities announced by webhook create events
//! ([`Task::WebhookFetch`]): the webhook worker merges every announced id
//! into the athlete's one queued fetch, so a burst of creates can be served
//! by one list call instead of one call each.
//!
//! A create event carries only the id, so each new activity costs a call. When
//! several of one athlete's creates are waiting, one listing (after the oldest
//! event minus a margin) usually brings them all; a single one is fetched by
//! id. Strava can announce an activity before it is readable: a 404 then
//! means "not yet", so the id is retried with backoff a few times and after
//! that left to the daily gap-fill. Activities a newer delete event removed
//! are never brought back.
//!
//! Update events for an activity not stored yet are not kept: the fetch that
//! stores it returns its current state, renames included. The one gap is a
//! fetch already in flight when the rename happens; it stores the older title
//! until the activity's next refresh.

use std::collections::BTreeSet;

use crate::model::job::{Counts, Fetch, Task};
use crate::model::Purpose;
use crate::store::{DbResult, Store};
use crate::strava::client::MAX_PER_PAGE;
use crate::strava::error::StravaError;

use super::outcome::JobError;
use super::source::{self, activity_id, store_detail, store_page, ActivitySource};

/// How far before the oldest create event a shared listing starts: an
/// activity's start precedes its upload by at least its duration.
pub const LIST_MARGIN_SECS: i64 = 2 * 86_400;
/// Tries per id before the gap-fill is left to find it.
pub const MAX_ATTEMPTS: u32 = 4;
/// The first retry's delay; each further one waits four times longer.
pub const FIRST_RETRY_SECS: i64 = 30;

/// Fetches the announced activities that are not stored yet.
pub async fn run<S: ActivitySource>(
    store: &Store,
    source: &S,
    athlete_id: i64,
    payload: &Fetch,
    now: i64,
) -> Result<Counts, JobError> {
    let (pending, oldest_event) = store
        .unfetched_announced(athlete_id, payload.activity_ids.clone())
        .await?;
    let mut counts = Counts::default();
    let mut missing: BTreeSet<i64> = pending.iter().copied().collect();
    if pending.len() > 1 {
        let after = oldest_event.unwrap_or(now) - LIST_MARGIN_SECS;
        let mut page = 1;
        loop {
            let items = source
                .list_activities(athlete_id, Purpose::Webhook, &source::after(after, page))
                .await?;
            let last = items.len() < MAX_PER_PAGE as usize;
            for item in &items {
                if let Some(id) = activity_id(item) {
                    missing.remove(&id);
                }
            }
            store_page(store, athlete_id, items, &mut counts, now).await?;
            if last || missing.is_empty() {
                break;
            }
            page += 1;
        }
    }
    // After a listing, an id seen for the first time is most likely not
    // readable yet; one tried before may be a late upload older than the
    // listing's start, which only a fetch by id finds.
    let (mut not_yet, by_id): (BTreeSet<i64>, BTreeSet<i64>) = if pending.len() > 1 {
        missing
            .into_iter()
            .partition(|id| !payload.attempts.contains_key(id))
    } else {
        (BTreeSet::new(), missing)
    };
    for id in by_id {
        match source.get_activity(athlete_id, Purpose::Webhook, id).await {
            Ok(detail) => store_detail(store, athlete_id, detail, &mut counts, now).await?,
            Err(StravaError::NotFound) => {
                not_yet.insert(id);
            }
            Err(e) => return Err(e.into()),
        }
    }
    retry_later(store, athlete_id, payload, not_yet, now).await?;
    Ok(counts)
}

/// Queues another try for ids not found, with a backoff that grows with
/// their attempts; ids out of attempts are left to the gap-fill.
async fn retry_later(
    store: &Store,
    athlete_id: i64,
    payload: &Fetch,
    ids: BTreeSet<i64>,
    now: i64,
) -> DbResult<()> {
    let mut retry = Fetch::default();
    let mut delay = FIRST_RETRY_SECS;
    for id in ids {
        let tried = payload.attempts.get(&id).copied().unwrap_or(0) + 1;
        if tried >= MAX_ATTEMPTS {
            tracing::info!(
                athlete_id,
                activity_id = id,
                "still not readable; left to gap-fill"
            );
            continue;
        }
        delay = delay.max(FIRST_RETRY_SECS * 4_i64.pow(tried - 1));
        retry.activity_ids.push(id);
        retry.attempts.insert(id, tried);
    }
    if retry.activity_ids.is_empty() {
        return Ok(());
    }
    store
        .enqueue(athlete_id, Task::WebhookFetch(retry), now + delay, now)
        .await
        .map(|_| ())
}
