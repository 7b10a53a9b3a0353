//! Detail enrichment: a listing gives summaries; the detailed record (full
//! polyline, description, laps) costs one call per activity. Only budget no
//! other work wants is spent on it, on recent activities, newest first: it is
//! planned only while nothing else is due, reconciliation included, although
//! its purpose ranks above reconciliation's (deletions have a deadline,
//! details do not).

use serde::{Deserialize, Serialize};

use crate::model::Purpose;
use crate::store::jobs::Counts;
use crate::store::{activities, jobs, DbResult, Store};
use crate::strava::client::StravaError;

use super::runner::JobError;
use super::source::ActivitySource;

/// Only activities that started this recently are enriched: fresh ones are
/// what athletes open, and the backlog stays bounded.
pub const RECENT_SECS: i64 = 14 * 86_400;
/// At most this many enrichment jobs are queued by one planning round.
const BATCH: u32 = 25;

/// The `Enrich` job payload: the one activity to fetch.
#[derive(Debug, Serialize, Deserialize)]
pub struct Payload {
    pub activity_id: i64,
}

/// Queues detail fetches for the newest summary-only activities, but only
/// while no other work is due (one job per athlete; jobs coalesce).
/// Returns how many activities were picked.
pub async fn plan(store: &Store, now: i64) -> DbResult<usize> {
    store
        .write(move |tx| {
            if jobs::due_besides(tx, jobs::JobKind::Enrich, now)? > 0 {
                return Ok(0);
            }
            let picks = activities::summary_only_since(tx, now - RECENT_SECS, BATCH)?;
            for &(activity_id, athlete_id) in &picks {
                let payload = serde_json::to_string(&Payload { activity_id })?;
                jobs::enqueue(tx, athlete_id, jobs::JobKind::Enrich, Some(&payload), 0)?;
            }
            Ok(picks.len())
        })
        .await
}

/// Fetches and stores one detailed record. A 404 marks it tried, so the call
/// is not spent again; deciding whether it is deleted is reconciliation's job.
pub async fn run<S: ActivitySource>(
    store: &Store,
    source: &S,
    athlete_id: i64,
    payload: &Payload,
) -> Result<Counts, JobError> {
    let id = payload.activity_id;
    let mut counts = Counts::default();
    match source
        .get_activity(athlete_id, Purpose::Enrichment, id)
        .await
    {
        Ok(detail) => {
            // Only a detail for an activity still stored: one deleted while
            // the call was out does not come back.
            let changed = store
                .write(move |tx| {
                    if activities::stored_ids(tx, athlete_id, &[id])?.is_empty() {
                        return Ok(activities::Upserted::default());
                    }
                    activities::upsert_detail(tx, athlete_id, &detail)
                })
                .await?;
            counts.fetched = 1;
            counts.updated = i64::from(changed.updated);
        }
        Err(StravaError::NotFound) => {
            store
                .write(move |tx| activities::mark_detail_missing(tx, athlete_id, id))
                .await?
        }
        Err(e) => return Err(e.into()),
    }
    Ok(counts)
}
