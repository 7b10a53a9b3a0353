//! The two Strava reads the sync engine makes, behind one small seam: every
//! call names its athlete and its purpose, so the budgeted client can take a
//! permit at the right priority and use that athlete's token.

use serde_json::value::RawValue;

use crate::store::{activities, DbError, Store};
use crate::strava::Purpose;

/// Strava's largest page.
pub const PAGE_SIZE: u32 = 200;

/// `GET /athlete/activities` parameters (epoch seconds; `page` from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListQuery {
    pub before: Option<i64>,
    pub after: Option<i64>,
    pub page: u32,
    pub per_page: u32,
}

impl ListQuery {
    pub fn after(after: i64, page: u32) -> Self {
        Self {
            before: None,
            after: Some(after),
            page,
            per_page: PAGE_SIZE,
        }
    }

    pub fn before(before: i64) -> Self {
        Self {
            before: Some(before),
            after: None,
            page: 1,
            per_page: PAGE_SIZE,
        }
    }
}

/// Why a fetch did not return data.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The record does not exist, or not yet (right after a create event).
    #[error("not found on Strava")]
    NotFound,
    /// Anything else: the job fails or retries as the runner decides.
    #[error("{0}")]
    Strava(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Reads from Strava on behalf of one athlete, spending one budget permit of
/// the given purpose per call.
pub trait ActivitySource: Send + Sync {
    fn list_activities(
        &self,
        athlete_id: i64,
        purpose: Purpose,
        query: ListQuery,
    ) -> impl std::future::Future<Output = Result<Vec<Box<RawValue>>, FetchError>> + Send;

    fn get_activity(
        &self,
        athlete_id: i64,
        purpose: Purpose,
        id: i64,
    ) -> impl std::future::Future<Output = Result<Box<RawValue>, FetchError>> + Send;
}

/// What a job fetched and changed; recorded on the job row.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub fetched: i64,
    pub new: i64,
    pub updated: i64,
}

impl Counts {
    fn add(&mut self, fetched: usize, changed: activities::Upserted) {
        self.fetched += fetched as i64;
        self.new += i64::from(changed.new);
        self.updated += i64::from(changed.updated);
    }
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
    counts.add(fetched, changed);
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
    counts.add(1, changed);
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
