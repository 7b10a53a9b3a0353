//! Runs one claimed job of a sync-engine kind. The job runner calls this for
//! those kinds, and the day simulation calls the same function, so what is
//! simulated is what runs.

use crate::store::jobs::{Job, JobKind};
use crate::store::Store;
use crate::strava::Purpose;

use super::source::{ActivitySource, Counts, FetchError};
use super::{enrich, gap_fill, reconcile, webhook_fetch};

/// Whether this module runs jobs of `kind`.
pub fn handles(kind: JobKind) -> bool {
    matches!(
        kind,
        JobKind::Refresh
            | JobKind::GapFill
            | JobKind::WebhookFetch
            | JobKind::Enrich
            | JobKind::Reconcile
    )
}

/// Runs `job` to completion at its kind's priority; `now` is the runner's
/// clock. Work left over (another reconciliation page, a webhook retry) is
/// queued as a new job, so this one always ends.
pub async fn run<S: ActivitySource>(
    store: &Store,
    source: &S,
    job: &Job,
    now: i64,
) -> Result<Counts, FetchError> {
    let athlete_id = job.athlete_id;
    match job.kind {
        JobKind::Refresh => {
            gap_fill::catch_up(store, source, athlete_id, Purpose::Interactive, now).await
        }
        JobKind::GapFill => {
            gap_fill::catch_up(store, source, athlete_id, Purpose::GapFill, now).await
        }
        JobKind::WebhookFetch => {
            let payload = parse(job)?.unwrap_or_default();
            webhook_fetch::run(store, source, athlete_id, payload, now).await
        }
        JobKind::Enrich => match parse::<enrich::Payload>(job)? {
            Some(payload) => enrich::run(store, source, athlete_id, &payload).await,
            None => Ok(Counts::default()),
        },
        JobKind::Reconcile => Ok(reconcile::step(store, source, athlete_id).await?.counts),
        JobKind::FirstPage | JobKind::Backfill => Err(FetchError::Strava(format!(
            "{} jobs are not the sync engine's",
            job.kind.as_str()
        ))),
    }
}

fn parse<T: serde::de::DeserializeOwned>(job: &Job) -> Result<Option<T>, FetchError> {
    job.payload_json
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| FetchError::Strava(format!("malformed job payload: {e}")))
}
