//! Detail enrichment: a listing gives summaries; the detailed record (full
//! polyline, description, laps) costs one call per activity. It is spent on
//! recent activities, newest first, within the enrichment share of the day
//! (`BUDGET_SHARES`) and whatever the other purposes leave.

use crate::model::job::{Counts, Enrich};
use crate::model::Purpose;
use crate::store::{DbResult, Store};
use crate::strava::error::StravaError;

use super::outcome::JobError;
use super::source::ActivitySource;

/// Only activities that started this recently are enriched: fresh ones are
/// what athletes open, and the backlog stays bounded.
pub const RECENT_SECS: i64 = 14 * 86_400;
/// At most this many activities are picked by one planning round.
const BATCH: u32 = 25;

/// Queues detail fetches for the newest summary-only activities (they merge
/// into one job per athlete). Returns how many activities were picked.
pub async fn plan(store: &Store, now: i64) -> DbResult<usize> {
    store.plan_enrichment(now - RECENT_SECS, BATCH, now).await
}

/// Fetches and stores the detailed records. A 404 marks one tried, so the
/// call is not spent again; deciding whether it is deleted is
/// reconciliation's job.
pub async fn run<S: ActivitySource>(
    store: &Store,
    source: &S,
    athlete_id: i64,
    payload: &Enrich,
    now: i64,
) -> Result<Counts, JobError> {
    let mut counts = Counts::default();
    for &id in &payload.activity_ids {
        match source
            .get_activity(athlete_id, Purpose::Enrichment, id)
            .await
        {
            Ok(detail) => {
                let changed = store
                    .store_enriched_detail(athlete_id, id, detail, now)
                    .await?;
                counts.fetched += 1;
                counts.updated += i64::from(changed.updated);
            }
            Err(StravaError::NotFound) => store.mark_detail_missing(athlete_id, id, now).await?,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(counts)
}
