//! Backfill progress and its estimated completion, as `GET /api/sync` shows
//! them. Strava gives no total count, so what remains is estimated from the
//! athlete's own pace: as many activities per day before the cursor (back to
//! the account's creation) as after it.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::store::sync_state::SyncState;
use crate::store::{DbResult, Store};

use crate::strava::client::MAX_PER_PAGE;

const DAY: i64 = 86_400;

#[derive(Debug, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Backfill {
    pub activities_stored: i64,
    pub pages_done: i64,
    pub complete: bool,
    /// Null when complete, or when nothing is known to estimate from.
    pub estimated_completion: Option<DateTime<Utc>>,
}

/// The athlete's backfill progress. `guaranteed_per_day` is the backfill
/// share of the day's budget, the pace assumed until the ledger has a day of
/// backfill calls.
pub async fn backfill(
    store: &Store,
    athlete_id: i64,
    state: &SyncState,
    activities_stored: i64,
    guaranteed_per_day: f64,
    now: i64,
) -> DbResult<Backfill> {
    let pace = store.backfill_pace(athlete_id, now - DAY).await?;
    let created = pace.profile_json.as_deref().and_then(account_created);
    let (recent_calls, in_progress) = (pace.recent_calls, pace.in_progress);
    let estimated_completion = if state.backfill_complete {
        None
    } else {
        let sharing = in_progress.max(1) as f64;
        let pages_per_day = if recent_calls > 0 {
            recent_calls as f64 / sharing
        } else {
            guaranteed_per_day / sharing
        };
        remaining_pages(activities_stored, state.backfill_before, created, now)
            .and_then(|pages| completion(now, pages, pages_per_day))
    };
    Ok(Backfill {
        activities_stored,
        pages_done: state.backfill_pages,
        complete: state.backfill_complete,
        estimated_completion,
    })
}

/// Strava's `created_at` of the athlete's account, from the profile JSON.
fn account_created(profile: &str) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Profile {
        created_at: DateTime<Utc>,
    }
    serde_json::from_str::<Profile>(profile)
        .ok()
        .map(|p| p.created_at.timestamp())
}

/// Pages still to list, assuming the athlete was as active between account
/// creation and the cursor as between the cursor and now.
pub fn remaining_pages(
    stored: i64,
    cursor: Option<i64>,
    account_created: Option<i64>,
    now: i64,
) -> Option<i64> {
    let cursor = cursor?;
    let covered = (now - cursor).max(DAY);
    let left = (cursor - account_created?).max(0);
    let activities = (stored as f64 * left as f64 / covered as f64).ceil() as i64;
    Some((activities + i64::from(MAX_PER_PAGE) - 1) / i64::from(MAX_PER_PAGE) + 1)
}

/// When `pages` are done at `pages_per_day`.
pub fn completion(now: i64, pages: i64, pages_per_day: f64) -> Option<DateTime<Utc>> {
    if pages_per_day <= 0.0 {
        return None;
    }
    let secs = (pages as f64 / pages_per_day * DAY as f64).ceil() as i64;
    DateTime::from_timestamp(now + secs, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_history_follows_the_athletes_pace() {
        let now = 1_000 * DAY;
        // 400 activities over the last 100 days; the account is 600 days old.
        let pages = remaining_pages(400, Some(now - 100 * DAY), Some(now - 600 * DAY), now);
        // 2,000 more activities: 10 pages, plus the empty one that ends it.
        assert_eq!(pages, Some(11));
        assert_eq!(remaining_pages(400, None, Some(0), now), None);
        assert_eq!(remaining_pages(400, Some(now), None, now), None);
    }

    #[test]
    fn completion_spreads_pages_over_days() {
        let at = completion(0, 10, 5.0).unwrap();
        assert_eq!(at.timestamp(), 2 * DAY);
        assert_eq!(completion(0, 10, 0.0), None);
    }

    #[test]
    fn account_creation_is_read_from_the_profile() {
        let t = account_created(r#"{"id":1,"created_at":"2020-01-01T00:00:00Z"}"#);
        assert_eq!(t, Some(1_577_836_800));
        assert_eq!(account_created(r#"{"id":1}"#), None);
    }
}
