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

use crate::model::Purpose;
use crate::store::jobs::Counts;
use crate::store::{activities, athletes, jobs, sync_state, DbResult, Store};
use crate::strava::client::MAX_PER_PAGE;

use super::runner::JobError;
use super::source::{self, store_page, ActivitySource};

/// How far before the newest stored start time a catch-up lists: an activity
/// recorded days ago can be uploaded (or synced from a watch) today.
pub const LOOKBACK_SECS: i64 = 3 * 86_400;

/// The share of the daily call limit one pass may queue (one call each,
/// usually).
pub const PASS_SHARE_PERCENT: u32 = 20;

/// Queues a gap-fill for connected athletes, the one checked longest ago
/// first, as many as [`PASS_SHARE_PERCENT`] of `daily_limit`. Athletes needing
/// re-authorization are skipped. Returns how many athletes are now queued.
pub async fn start_pass(store: &Store, daily_limit: u32) -> DbResult<usize> {
    let limit = (daily_limit * PASS_SHARE_PERCENT / 100).max(1);
    store
        .write(move |tx| {
            let order = sync_state::gap_fill_order(tx, limit)?;
            for &athlete_id in &order {
                jobs::enqueue(tx, athlete_id, jobs::JobKind::GapFill, None, 0)?;
            }
            Ok(order.len())
        })
        .await
}

/// Lists everything the athlete started after their newest stored activity
/// (or last check, if older) minus the lookback, every page, and stores it. Pages are taken as sets: with
/// only `after` Strava may answer oldest first, so nothing depends on order.
pub async fn catch_up<S: ActivitySource>(
    store: &Store,
    source: &S,
    athlete_id: i64,
    purpose: Purpose,
    now: i64,
) -> Result<Counts, JobError> {
    let (after, read_all) = store
        .read(move |c| {
            let connected_at = athletes::get(c, athlete_id)?.map(|a| a.connected_at);
            let newest = activities::newest_start(c, athlete_id)?;
            let checked = sync_state::get(c, athlete_id)?.last_gap_fill_at;
            Ok((
                list_after(newest, checked, connected_at, now),
                sees_all(c, athlete_id)?,
            ))
        })
        .await?;
    let mut counts = Counts::default();
    let mut page = 1;
    loop {
        let items = source
            .list_activities(athlete_id, purpose, &source::after(after, page))
            .await?;
        let last = is_last_page(items.len(), read_all);
        store_page(store, athlete_id, items, &mut counts).await?;
        if last {
            break;
        }
        page += 1;
    }
    store
        .write(move |tx| sync_state::set_last_gap_fill(tx, athlete_id, now))
        .await?;
    Ok(counts)
}

/// Where a catch-up starts listing: the lookback before the newest stored
/// start, or before the last check if that is older. Webhooks keep moving the
/// newest start forward, so an activity whose event was lost can be older
/// than it by more than the lookback; it is never older than the last check
/// minus the lookback, unless uploaded that late.
fn list_after(
    newest: Option<i64>,
    checked: Option<i64>,
    connected_at: Option<i64>,
    now: i64,
) -> i64 {
    let since = match (newest, checked) {
        (Some(n), Some(c)) => n.min(c),
        (n, c) => n.or(c).or(connected_at).unwrap_or(now),
    };
    since - LOOKBACK_SECS
}

/// Whether the athlete's granted scope shows "Only You" activities too.
pub(super) fn sees_all(conn: &rusqlite::Connection, athlete_id: i64) -> DbResult<bool> {
    Ok(athletes::get(conn, athlete_id)?.is_some_and(|a| has_read_all(&a.scope)))
}

fn has_read_all(scope: &str) -> bool {
    scope.split(',').any(|s| s.trim() == "activity:read_all")
}

/// An empty page ends a listing. A short page does too when the athlete
/// granted `activity:read_all`: Strava then fills every page but the last, and
/// not asking for the empty page halves what a gap-fill costs. Without it
/// Strava leaves private activities out of a page, so only an empty page is
/// proof of the end.
pub fn is_last_page(len: usize, read_all: bool) -> bool {
    len == 0 || (read_all && len < MAX_PER_PAGE as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_pages_end_the_list_only_with_read_all() {
        assert!(is_last_page(0, false));
        assert!(is_last_page(0, true));
        assert!(is_last_page(199, true));
        assert!(!is_last_page(199, false));
        assert!(!is_last_page(200, true));
    }

    #[test]
    fn listing_starts_before_the_older_of_newest_start_and_last_check() {
        let day = 86_400;
        assert_eq!(list_after(Some(10 * day), Some(4 * day), None, 0), day);
        assert_eq!(list_after(Some(5 * day), Some(9 * day), None, 0), 2 * day);
        assert_eq!(list_after(None, None, Some(7 * day), 0), 4 * day);
        assert_eq!(list_after(None, None, None, 3 * day), 0);
    }

    #[test]
    fn read_all_is_recognised_among_other_scopes() {
        assert!(has_read_all("read, activity:read_all"));
        assert!(!has_read_all("read,activity:read"));
    }
}
