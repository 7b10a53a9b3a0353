//! The daily gap-fill: webhooks get lost, uploads arrive late and deletions
//! go unannounced, so once a day connected athletes' recent activities are
//! listed again. One listing does both checks: it stores what webhooks
//! missed, and removes the recent activities it no longer shows.
//!
//! A pass only queues one `GapFill` job per athlete, as many as the day's
//! budget could serve; the runner spends the gap-fill share on them, athletes
//! who are looking and higher tiers first, then the longest unchecked, and
//! whatever the budget did not reach stays queued (jobs coalesce per athlete)
//! for the next day. A manual refresh is the same catch-up at interactive
//! priority.

use std::collections::BTreeSet;

use crate::model::job::Counts;
use crate::model::Purpose;
use crate::store::sync_state::CatchUpStart;
use crate::store::{DbResult, Store};

use super::outcome::JobError;
use super::source::{self, activity_id, is_last_page, store_page, ActivitySource};

/// How far before the newest stored start time a catch-up lists: an activity
/// recorded days ago can be uploaded (or synced from a watch) today.
pub const LOOKBACK_SECS: i64 = 3 * 86_400;

/// Queues a gap-fill for up to `daily_limit` connected athletes (one call
/// each, usually), the ones who are looking since `attention_since` and
/// higher tiers first, then the one checked longest ago. Athletes needing
/// re-authorization are skipped. Returns how many athletes are now queued,
/// or None when `scheduled` and another instance planned this firing's
/// pass already.
pub async fn start_pass(
    store: &Store,
    daily_limit: u32,
    attention_since: i64,
    now: i64,
    scheduled: bool,
) -> DbResult<Option<usize>> {
    let tick = scheduled.then(|| firing(now));
    store
        .plan_gap_fill_pass(daily_limit.max(1), attention_since, now, tick)
        .await
}

/// The schedule's firing a pass started at `now` belongs to: the nearest
/// whole minute, which every instance's schedule agrees on while their
/// clocks are less than half a minute apart.
fn firing(now: i64) -> i64 {
    (now + 30).div_euclid(60) * 60
}

/// Lists everything the athlete started after their newest stored activity
/// (or last check, if older) minus the lookback, and stores it (see
/// [`list_recent`]).
pub async fn catch_up<S: ActivitySource>(
    store: &Store,
    source: &S,
    athlete_id: i64,
    purpose: Purpose,
    now: i64,
) -> Result<Counts, JobError> {
    let (counts, _) = list_recent(store, source, athlete_id, purpose, None, now).await?;
    Ok(counts)
}

/// Lists, every page, what the athlete started after the catch-up's start,
/// or after `from` when that is earlier, stores it, removes the activities
/// of that span the listing no longer shows, and records the athlete as
/// checked. Returns the counts and the ids listed. Pages are taken as sets:
/// with only `after` Strava may answer oldest first, so nothing depends on
/// order.
pub async fn list_recent<S: ActivitySource>(
    store: &Store,
    source: &S,
    athlete_id: i64,
    purpose: Purpose,
    from: Option<i64>,
    now: i64,
) -> Result<(Counts, BTreeSet<i64>), JobError> {
    let start = store.catch_up_start(athlete_id).await?;
    let after = list_after(start, now).min(from.unwrap_or(i64::MAX));
    let mut counts = Counts::default();
    let mut listed = BTreeSet::new();
    let mut page = 1;
    loop {
        let items = source
            .list_activities(athlete_id, purpose, &source::after(after, page))
            .await?;
        let last = is_last_page(items.len(), start.read_all);
        listed.extend(items.iter().filter_map(|item| activity_id(item)));
        store_page(store, athlete_id, items, &mut counts, now).await?;
        if last {
            break;
        }
        page += 1;
    }
    let removed = store.finish_catch_up(athlete_id, after, now).await?;
    source::report_removed(athlete_id, removed, "gap_fill");
    Ok((counts, listed))
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
