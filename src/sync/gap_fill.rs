//! The daily gap-fill: webhooks get lost and uploads arrive late, so once a
//! day every connected athlete's recent activities are listed again.
//!
//! A pass only queues one `GapFill` job per athlete, longest-unchecked first;
//! the runner spends the budget on them at gap-fill priority, so the pass is
//! paced and fair, and whatever the budget did not reach stays queued (jobs
//! coalesce per athlete) and runs first when the next pass comes. A manual
//! refresh is the same catch-up at interactive priority.

use crate::store::{activities, athletes, jobs, sync_state, DbResult, Store};
use crate::strava::Purpose;

use super::source::{store_page, ActivitySource, Counts, FetchError, ListQuery};

/// How far before the newest stored start time a catch-up lists: an activity
/// recorded days ago can be uploaded (or synced from a watch) today.
pub const LOOKBACK_SECS: i64 = 3 * 86_400;

/// Queues a gap-fill for every connected athlete, the one checked longest ago
/// first. Athletes needing re-authorization are skipped. Returns how many
/// athletes are now queued.
pub async fn start_pass(store: &Store) -> DbResult<usize> {
    store
        .write(|tx| {
            let order = sync_state::gap_fill_order(tx)?;
            for &athlete_id in &order {
                jobs::enqueue(tx, athlete_id, jobs::JobKind::GapFill, None, 0)?;
            }
            Ok(order.len())
        })
        .await
}

/// Lists everything the athlete started after their newest stored activity
/// minus the lookback, every page, and stores it. Pages are taken as sets: with
/// only `after` Strava may answer oldest first, so nothing depends on order.
pub async fn catch_up<S: ActivitySource>(
    store: &Store,
    source: &S,
    athlete_id: i64,
    purpose: Purpose,
    now: i64,
) -> Result<Counts, FetchError> {
    let (after, read_all) = store
        .read(move |c| {
            let athlete = athletes::get(c, athlete_id)?;
            let newest = activities::newest_start(c, athlete_id)?;
            let since = newest
                .or(athlete.as_ref().map(|a| a.connected_at))
                .unwrap_or(now);
            Ok((since - LOOKBACK_SECS, sees_all(c, athlete_id)?))
        })
        .await?;
    let mut counts = Counts::default();
    let mut page = 1;
    loop {
        let items = source
            .list_activities(athlete_id, purpose, ListQuery::after(after, page))
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
    len == 0 || (read_all && len < super::source::PAGE_SIZE as usize)
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
    fn read_all_is_recognised_among_other_scopes() {
        assert!(has_read_all("read, activity:read_all"));
        assert!(!has_read_all("read,activity:read"));
    }
}
