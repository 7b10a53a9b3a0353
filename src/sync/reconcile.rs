//! Deletion reconciliation: Strava sends no event for some deletions (and
//! events get lost), yet a deleted activity must disappear from here within
//! 48 hours. Recent deletions are found by the gap-fill's listing; older
//! ones by this slower check, within the reconciliation share of the day:
//! each athlete's whole list is walked again (mark) and what the walk did
//! not see is removed (sweep).
//!
//! The walk lists everything that started before the pass began, page by
//! page, one page per job run, so it yields to every other purpose between
//! pages and resumes after a restart from `sync_state`. Pages are taken as
//! sets (their order is not relied on). An activity deleted on Strava mid-walk
//! can shift one that was not yet seen onto a page already listed; that one is
//! swept by mistake and comes back with the next pass, which stores whatever
//! Strava lists. Every athlete is due once a day; a walk finishing within the
//! next day keeps the 48 hours whenever the budget allows.

use crate::model::job::Counts;
use crate::model::Purpose;
use crate::store::{DbResult, Store};
use crate::strava::client::{ListQuery, MAX_PER_PAGE};

use super::outcome::{JobError, Step};
use super::source::{self, activity_id, is_last_page, ActivitySource};

/// How often each athlete's list is compared with the local copy.
pub const RECONCILE_EVERY_SECS: i64 = 86_400;

/// Queues a reconciliation for every athlete who is due. Returns how many.
pub async fn plan(store: &Store, now: i64) -> DbResult<usize> {
    store
        .plan_reconciliation(now - RECONCILE_EVERY_SECS, now)
        .await
}

/// Lists one page of the athlete's walk and marks what it saw; then either
/// asks for the next page ([`Step::More`]: the runner requeues the job) or,
/// after the last one, sweeps ([`Step::Done`]).
///
/// What the walk lists is marked one second past the pass start (`now` when
/// the pass began, on the runner's clock), so an activity seen by anything
/// else in the very second the pass began, and deleted before the walk came
/// to it, is still swept. Other paths stamp `last_seen_at` with the same
/// clock.
pub async fn step<S: ActivitySource>(
    store: &Store,
    source: &S,
    athlete_id: i64,
    now: i64,
) -> Result<Step, JobError> {
    let (pass, read_all) = store.reconcile_step_start(athlete_id, now).await?;
    let query = ListQuery {
        before: Some(pass.started_at),
        page: Some(pass.page),
        per_page: Some(MAX_PER_PAGE),
        ..ListQuery::default()
    };
    let page = source
        .list_activities(athlete_id, Purpose::Reconcile, &query)
        .await?;
    let finished = is_last_page(page.len(), read_all);
    let fetched = page.len() as i64;
    let listed: Vec<i64> = page.iter().filter_map(|r| activity_id(r)).collect();
    let (changed, removed) = store
        .store_reconcile_page(athlete_id, page, listed, pass, finished, now)
        .await?;
    source::report_removed(athlete_id, removed, "reconcile");
    let counts = Counts {
        fetched,
        new: i64::from(changed.new),
        updated: i64::from(changed.updated),
    };
    Ok(if finished {
        Step::Done(counts)
    } else {
        Step::More(counts)
    })
}
