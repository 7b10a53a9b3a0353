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
//! again a few times with growing delays. The misses are counted per
//! athlete, in a row, on its sync state: each one holds the athlete's next
//! listing for announcements back four times longer (up to six hours), so a
//! flood of forged ids, at once or spread over days, buys no listing of its
//! own. The count starts over when a listing shows every id, or a day after
//! the last hold ran out. After the first listing and [`MAX_RETRIES`] more,
//! the missing ids are left to the daily gap-fill. Activities a newer
//! delete event removed are never brought back. The listing brings
//! summaries; detail enrichment fetches the detailed records later, when
//! nothing else waits.
//!
//! Update events for an activity not stored yet are not kept: the listing
//! that stores it returns its current state, renames included. The one gap
//! is a listing already in flight when the rename happens; it stores the
//! older title until the activity's next refresh.

use crate::model::backoff::fourfold_secs;
use crate::model::job::{Counts, Fetch};
use crate::model::Purpose;
use crate::store::sync_state::MissPolicy;
use crate::store::Store;

use super::gap_fill;
use super::outcome::JobError;
use super::source::ActivitySource;

/// How far before the oldest create event a listing starts: an activity's
/// start precedes its upload by at least its duration, and late uploads
/// (synced from a watch days later) by more.
pub const LIST_MARGIN_SECS: i64 = 4 * 86_400;
/// The furthest back an announcement can make a listing reach.
pub const MAX_REACH_SECS: i64 = 7 * 86_400;
/// Listings repeated for ids the first one did not show, before they are
/// left to the gap-fill.
pub const MAX_RETRIES: u32 = 3;
/// The longest an athlete's listings for announcements are held back: a
/// flood of forged ids costs at most four listings a day once it is this
/// long, and a genuine upload of a flooded athlete waits no longer.
pub const MAX_HOLD_SECS: i64 = 6 * 3600;

/// How long after its last hold ran out an athlete's misses are forgotten:
/// a flood over, a genuine upload that is "not readable yet" gets its quick
/// retries again.
pub const MISSES_FORGOTTEN_AFTER_SECS: i64 = 86_400;

/// How misses are counted and held back.
pub const MISSES: MissPolicy = MissPolicy {
    retries: MAX_RETRIES,
    hold_secs,
    forget_after_secs: MISSES_FORGOTTEN_AFTER_SECS,
};

/// The wait before the athlete's next listing for announcements after
/// `misses` listings in a row did not show every id: 30 s, then four times
/// longer each time, up to [`MAX_HOLD_SECS`].
pub fn hold_secs(misses: u32) -> i64 {
    fourfold_secs(misses, MAX_HOLD_SECS)
}

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
    let missing: Vec<i64> = pending
        .into_iter()
        .filter(|id| !listed.contains(id))
        .collect();
    if missing.is_empty() {
        store.found_announced(athlete_id).await?;
    } else {
        let ids = missing.len();
        let misses = store
            .missed_announced(athlete_id, missing, MISSES, now)
            .await?;
        if misses > MAX_RETRIES {
            tracing::info!(
                athlete_id,
                ids,
                misses,
                "announced activities still not listed; left to gap-fill"
            );
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_miss_in_a_row_holds_four_times_longer_up_to_six_hours() {
        let holds: Vec<i64> = (1..=7).map(hold_secs).collect();
        assert_eq!(holds, [30, 120, 480, 1920, 7680, 21_600, 21_600]);
        assert_eq!(hold_secs(u32::MAX), MAX_HOLD_SECS);
    }
}
