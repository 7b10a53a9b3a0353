//! Runs one step of a claimed job: the job runner's dispatch point, one arm
//! per kind. The day simulation calls the same function with a simulated
//! Strava, so what is simulated is what runs.

use crate::model::Purpose;
use crate::store::jobs::{Counts, Job, JobKind};
use crate::store::{DbError, Store};

use super::runner::{JobError, Step};
use super::source::ActivitySource;
use super::{enrich, gap_fill, history, reconcile, webhook_fetch};

/// Runs one step of `job` at its kind's priority; `now` is the runner's
/// clock. History and reconciliation go one page per step; a webhook retry
/// is queued as a new job (it waits for its own time), so the others end
/// here.
pub async fn run<S: ActivitySource>(
    store: &Store,
    source: &S,
    job: &Job,
    now: i64,
) -> Result<Step, JobError> {
    let athlete_id = job.athlete_id;
    let counts = match job.kind {
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
        JobKind::Reconcile => return reconcile::step(store, source, athlete_id, now).await,
        JobKind::FirstPage | JobKind::Backfill => return history::page(source, store, job).await,
    }?;
    Ok(Step::Done(counts))
}

/// The job's payload; unreadable stored JSON fails the job.
fn parse<T: serde::de::DeserializeOwned>(job: &Job) -> Result<Option<T>, JobError> {
    let payload = job.payload_json.as_deref().map(serde_json::from_str);
    Ok(payload.transpose().map_err(DbError::from)?)
}
