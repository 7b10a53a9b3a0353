//! The two Strava reads the sync engine makes, behind one small seam: every
//! call names its athlete and its purpose, so the budgeted client takes a
//! permit at the right priority and uses that athlete's token. The service
//! passes its [`StravaClient`]; the day simulation (benches/day_simulation.rs)
//! passes a simulated Strava that spends the same budget, so the handlers it
//! measures are the ones that run.

use std::future::Future;

use serde_json::value::RawValue;

use crate::model::job::Counts;
use crate::model::Purpose;
use crate::store::activities::Upserted;
use crate::store::{DbError, Store};
use crate::strava::client::{ListQuery, StravaClient, MAX_PER_PAGE};
use crate::strava::error::StravaError;

/// Reads from Strava on behalf of one athlete, spending one budget permit of
/// the given purpose per call.
pub trait ActivitySource: Send + Sync {
    fn list_activities(
        &self,
        athlete_id: i64,
        purpose: Purpose,
        query: &ListQuery,
    ) -> impl Future<Output = Result<Vec<Box<RawValue>>, StravaError>> + Send;

    fn get_activity(
        &self,
        athlete_id: i64,
        purpose: Purpose,
        id: i64,
    ) -> impl Future<Output = Result<Box<RawValue>, StravaError>> + Send;
}

impl ActivitySource for StravaClient {
    fn list_activities(
        &self,
        athlete_id: i64,
        purpose: Purpose,
        query: &ListQuery,
    ) -> impl Future<Output = Result<Vec<Box<RawValue>>, StravaError>> + Send {
        StravaClient::list_activities(self, athlete_id, purpose, query)
    }

    fn get_activity(
        &self,
        athlete_id: i64,
        purpose: Purpose,
        id: i64,
    ) -> impl Future<Output = Result<Box<RawValue>, StravaError>> + Send {
        StravaClient::get_activity(self, athlete_id, purpose, id)
    }
}

/// Full pages of activities after `after` (epoch seconds), page `page`.
pub fn after(after: i64, page: u32) -> ListQuery {
    ListQuery {
        after: Some(after),
        page: Some(page),
        per_page: Some(MAX_PER_PAGE),
        ..ListQuery::default()
    }
}

/// Adds a stored batch to a job's counts.
fn add(counts: &mut Counts, fetched: usize, changed: Upserted) {
    counts.fetched += fetched as i64;
    counts.new += i64::from(changed.new);
    counts.updated += i64::from(changed.updated);
}

/// Stores a listed page in one transaction (leaving out what a newer delete
/// event removed) and adds it to `counts`.
pub async fn store_page(
    store: &Store,
    athlete_id: i64,
    page: Vec<Box<RawValue>>,
    counts: &mut Counts,
    now: i64,
) -> Result<(), DbError> {
    let fetched = page.len();
    let changed = store.store_listing(athlete_id, page, now).await?;
    add(counts, fetched, changed);
    Ok(())
}

/// An empty page ends a listing. A short page does too when the athlete
/// granted `activity:read_all`: Strava then fills every page but the last, and
/// not asking for the empty page halves what a gap-fill costs. Without it
/// Strava leaves private activities out of a page, so only an empty page is
/// proof of the end.
pub fn is_last_page(len: usize, read_all: bool) -> bool {
    len == 0 || (read_all && len < MAX_PER_PAGE as usize)
}

/// Tells the operator that a complete listing no longer showed activities we
/// held (deleted on Strava without an event reaching us), and which check
/// (`by`) found them.
pub fn report_removed(athlete_id: i64, removed: usize, by: &'static str) {
    if removed > 0 {
        tracing::info!(
            athlete_id,
            removed,
            by,
            "Strava no longer lists activities we held"
        );
        metrics::counter!("sync_removed_total", "by" => by).increment(removed as u64);
    }
}

/// The `id` of a listed activity, if readable.
pub fn activity_id(raw: &RawValue) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: i64,
    }
    serde_json::from_str::<Id>(raw.get()).ok().map(|s| s.id)
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
}
