//! Fetching activities announced by webhook create events
//! ([`Task::WebhookFetch`]): the webhook worker merges every announced id
//! into the athlete's one queued fetch, and one listing (after the oldest
//! announcement minus a margin) brings them all in, however many there are.
//!
//! The listing is the gap-fill's ([`gap_fill::list_recent`]), reaching back
//! to the oldest announcement minus a margin if that is earlier: one call
//! both brings the new activities and does the athlete's daily check.
//!
//! A create event carries only an id, and anyone who finds the callback URL
//! can forge one, so an announced id is never fetched by itself: only a
//! listing of the athlete's own activities is trusted, and an id costs at
//! most its share of that one listing. Strava can announce an activity
//! before it is readable, so ids the listing did not show are listed for
//! again a few times with growing delays, counted per athlete (a flood of
//! forged ids costs the same few listings as one), and after that left to
//! the daily gap-fill. Activities a newer delete event removed are never
//! brought back. The listing brings summaries; detail enrichment fetches
//! the detailed records later, when nothing else waits.
//!
//! Update events for an activity not stored yet are not kept: the listing
//! that stores it returns its current state, renames included. The one gap
//! is a listing already in flight when the rename happens; it stores the
//! older title until the activity's next refresh.

use std::collections::BTreeSet;

use crate::model::job::{Counts, Fetch, Task};
use crate::model::Purpose;
use crate::store::{DbResult, Store};

use super::gap_fill;
use super::outcome::JobError;
use super::source::ActivitySource;

/// How far before the oldest create event a listing starts: an activity's
/// start precedes its upload by at least its duration, and late uploads
/// (synced from a watch days later) by more.
pub const LIST_MARGIN_SECS: i64 = 4 * 86_400;
/// The furthest back an announcement can make a listing reach.
pub const MAX_REACH_SECS: i64 = 7 * 86_400;
/// Listings repeated for ids the first one did not show, per athlete.
pub const MAX_RETRIES: u32 = 3;
/// The first retry's delay; each further one waits four times longer.
pub const FIRST_RETRY_SECS: i64 = 30;

/// Lists the athlete's recent activities once for the announced ones that
/// are not stored yet: the gap-fill's listing, reaching back far enough for
/// them too, so it also stores what lost webhooks missed, removes recent
/// deletions, and counts as the athlete's gap-fill.
pub async fn run<S: ActivitySource>(
    store: &Store,
    source: &S,
    athlete_id: i64,
    payload: &Fetch,
    purpose: Purpose,
    now: i64,
) -> Result<Counts, JobError> {
    let (pending, oldest_event) = store
        .unfetched_announced(athlete_id, payload.activity_ids.clone())
        .await?;
    if pending.is_empty() {
        return Ok(Counts::default());
    }
    // An announcement's time comes from outside: however old it claims to
    // be, the listing reaches back no further than a week.
    let from = (oldest_event.unwrap_or(now) - LIST_MARGIN_SECS).max(now - MAX_REACH_SECS);
    let (counts, listed) =
        gap_fill::list_recent(store, source, athlete_id, purpose, Some(from), now).await?;
    let missing = pending
        .into_iter()
        .filter(|id| !listed.contains(id))
        .collect();
    retry_later(store, athlete_id, payload.retries, missing, now).await?;
    Ok(counts)
}

/// Queues another listing for ids not found yet, after a delay that grows
/// with the athlete's retries so far; past [`MAX_RETRIES`] they are left to
/// the gap-fill.
async fn retry_later(
    store: &Store,
    athlete_id: i64,
    retries: u32,
    missing: BTreeSet<i64>,
    now: i64,
) -> DbResult<()> {
    if missing.is_empty() {
        return Ok(());
    }
    if retries >= MAX_RETRIES {
        tracing::info!(
            athlete_id,
            ids = missing.len(),
            "announced activities still not listed; left to gap-fill"
        );
        return Ok(());
    }
    let retry = Fetch {
        activity_ids: missing.into_iter().collect(),
        retries: retries + 1,
    };
    let delay = FIRST_RETRY_SECS * 4_i64.pow(retries);
    store
        .enqueue(athlete_id, Task::WebhookFetch(retry), now + delay, now)
        .await
        .map(|_| ())
}
