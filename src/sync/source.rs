//! The two Strava reads the sync engine makes, behind one small seam: every
//! call names its athlete and its purpose, so the budgeted client takes a
//! permit at the right priority and uses that athlete's token. The service
//! passes its [`StravaClient`]; the day simulation (benches/day_simulation.rs)
//! passes a simulated Strava that spends the same budget, so the handlers it
//! measures are the ones that run.

use std::future::Future;

use serde_json::value::RawValue;

use crate::store::jobs::Counts;
use crate::store::{activities, DbError, Store};
use crate::strava::client::{ListQuery, StravaClient, StravaError, MAX_PER_PAGE};
use crate::strava::Purpose;

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
fn add(counts: &mut Counts, fetched: usize, changed: activities::Upserted) {
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
) -> Result<(), DbError> {
    let fetched = page.len();
    let changed = store
        .write(move |tx| activities::upsert_listed(tx, athlete_id, page))
        .await?;
    add(counts, fetched, changed);
    Ok(())
}

/// Stores one detailed record fetched for a create event and adds it to
/// `counts`.
pub async fn store_detail(
    store: &Store,
    athlete_id: i64,
    detail: Box<RawValue>,
    counts: &mut Counts,
) -> Result<(), DbError> {
    let changed = store
        .write(move |tx| activities::upsert_detail(tx, athlete_id, &detail))
        .await?;
    add(counts, 1, changed);
    Ok(())
}

/// The `id` of a listed activity, if readable.
pub fn activity_id(raw: &RawValue) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: i64,
    }
    serde_json::from_str::<Id>(raw.get()).ok().map(|s| s.id)
}
