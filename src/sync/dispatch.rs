//! Runs one step of a claimed job: the job runner's dispatch point, one arm
//! per task. The day simulation calls the same function with a simulated
//! Strava, so what is simulated is what runs.

use crate::model::job::Task;
use crate::model::Purpose;
use crate::store::Store;

use super::outcome::{JobError, Step};
use super::source::ActivitySource;
use super::{enrich, gap_fill, history, reconcile, webhook_fetch};

/// Runs one step of the athlete's `task`, its calls made at `purpose` (the
/// task's own, or [`Purpose::Attention`] for a fetch of an athlete who is
/// looking); `now` is the runner's clock. History and reconciliation go one page per step; a
/// webhook retry is queued as a new job (it waits for its own time), so the
/// others end here.
pub async fn run<S: ActivitySource>(
    store: &Store,
    source: &S,
    athlete_id: i64,
    task: &Task,
    purpose: Purpose,
    now: i64,
) -> Result<Step, JobError> {
    let counts = match task {
        Task::Refresh | Task::GapFill => {
            gap_fill::catch_up(store, source, athlete_id, purpose, now).await
        }
        Task::WebhookFetch(payload) => {
            webhook_fetch::run(store, source, athlete_id, payload, purpose, now).await
        }
        Task::Enrich(payload) => enrich::run(store, source, athlete_id, payload, now).await,
        Task::Reconcile => return reconcile::step(store, source, athlete_id, now).await,
        Task::FirstPage | Task::Backfill => {
            return history::page(source, store, athlete_id, task, now).await
        }
    }?;
    Ok(Step::Done(counts))
}
