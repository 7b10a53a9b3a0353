//! The daily gap-fill: webhooks get lost and uploads arrive late, so once a
//! day every connected athlete's recent activities are listed again.
//!
//! A pass only queues one `GapFill` job per athlete, longest-unchecked first;
//! the runner spends the budget on them at gap-fill priority, so the pass is
//! paced and fair, and whatever the budget did not reach stays queued (jobs
//! coalesce per athlete) and runs first when the next pass comes. A pass
//! queues at most [`PASS_SHARE_PERCENT`] of the daily limit: gap-fill outranks
//! history backfill, and an unbounded pass over thousands of athletes would
//! hold a new athlete's history back for days. Those not queued are the
//! longest unchecked at the next pass. A manual refresh is the same catch-up
//! at interactive priority.

use crate::model::job::Counts;
use crate::model::Purpose;
use crate::store::sync_state::CatchUpStart;
use crate::store::{DbResult, Store};

use super::outcome::JobError;
use super::source::{self, is_last_page, store_page, ActivitySource};

/// How far before the newest stored start time a catch-up lists: an activity
/// recorded days ago can be uploaded (or synced from a watch) today.
pub const LOOKBACK_SECS: i64 = 3 * 86_400;

/// The share of the daily call limit one pass may queue (one call each,
/// usually).
pub const PASS_SHARE_PERCENT: u32 = 20;

/// Queues a gap-fill for connected athletes, the one checked longest ago
/// first, as many as [`PASS_SHARE_PERCENT`] of `daily_limit`. Athletes needing
/// re-authorization are skipped. Returns how many athletes are now queued.
pub async fn start_pass(store: &Store, daily_limit: u32, now: i64) -> DbResult<usize> {
    let limit = (daily_limit * PASS_SHARE_PERCENT / 100).max(1);
    store.plan_gap_fill_pass(limit, now).await
}

/// Lists everything the athlete started after their newest stored activity
/// (or last check, if older) minus the lookback, every page, and stores it.
/// Pages are taken as sets: with only `after` Strava may answer oldest
/// first, so nothing depends on order.
pub async fn catch_up<S: ActivitySource>(
    store: &Store,
    source: &S,
    athlete_id: i64,
    purpose: Purpose,
    now: i64,
) -> Result<Counts, JobError> {
    let start = store.catch_up_start(athlete_id).await?;
    let after = list_after(start, now);
    let mut counts = Counts::default();
    let mut page = 1;
    loop {
        let items = source
            .list_activities(athlete_id, purpose, &source::after(after, page))
            .await?;
        let last = is_last_page(items.len(), start.read_all);
        store_page(store, athlete_id, items, &mut counts, now).await?;
        if last {
            break;
        }
        page += 1;
    }
    store.finish_catch_up(athlete_id, now).await?;
    Ok(counts)
}

/// Where a catch-up starts listing: the lookback before the newest stored
/// start, or before the last check if that is older. Webhooks keep moving the
/// newest start forward, so an activity whose event was lost can be older
/// than it by more than the lookback; it is never older than the last check
/// minus the lookback, unless uploaded that late.
fn list_after(start: CatchUpStart, now: i64) -> i64 {
    let since = match (start.newest_start, start.last_check) {
        (Some(n), Some(c)) => n.min(c),
        (n, c) => n.or(c).or(start.connected_at).unwrap_or(now),
    };
    since - LOOKBACK_SECS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_starts_before_the_older_of_newest_start_and_last_check() {
        let day = 86_400;
        let at = |newest_start, last_check, connected_at| CatchUpStart {
            newest_start,
            last_check,
            connected_at,
            read_all: true,
        };
        assert_eq!(list_after(at(Some(10 * day), Some(4 * day), None), 0), day);
        assert_eq!(
            list_after(at(Some(5 * day), Some(9 * day), None), 0),
            2 * day
        );
        assert_eq!(list_after(at(None, None, Some(7 * day)), 0), 4 * day);
        assert_eq!(list_after(at(None, None, None), 3 * day), 0);
    }
}
