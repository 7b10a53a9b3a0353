//! Deletion reconciliation: Strava sends no event for some deletions (and
//! events get lost), yet a deleted activity must disappear from here within
//! 48 hours. So, at the lowest priority, each athlete's whole list is walked
//! again (mark) and what the walk did not see is removed (sweep).
//!
//! The walk goes newest to oldest by `before` cursor, one page per job run, so
//! it yields to every other purpose between pages and resumes after a restart
//! from `sync_state`. A `before` cursor, unlike page numbers, cannot skip an
//! activity when another one is deleted mid-walk. Every athlete is due once a
//! day; a walk finishing within the next day keeps the 48 hours whenever the
//! budget allows.

use crate::store::{self, activities, jobs, sync_state, DbResult, Store};
use crate::strava::Purpose;

use super::gap_fill::is_last_page;
use super::source::{start_time, ActivitySource, Counts, FetchError, ListQuery};

/// How often each athlete's list is compared with the local copy.
pub const RECONCILE_EVERY_SECS: i64 = 86_400;

/// Queues a reconciliation for every athlete who is due. Returns how many.
pub async fn plan(store: &Store, now: i64) -> DbResult<usize> {
    store
        .write(move |tx| {
            let due = sync_state::due_for_reconcile(tx, now - RECONCILE_EVERY_SECS)?;
            for &athlete_id in &due {
                jobs::enqueue(tx, athlete_id, jobs::JobKind::Reconcile, None, 0)?;
            }
            Ok(due.len())
        })
        .await
}

/// What one step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub counts: Counts,
    /// Activities removed because the finished walk no longer saw them.
    pub removed: usize,
    /// Whether the walk ended with this step.
    pub finished: bool,
}

/// Lists one page of the athlete's walk, marks what it saw and either moves
/// the cursor (queueing the next step) or, on the last page, sweeps.
///
/// Times here come from the store's clock on purpose: `last_seen_at` is
/// written with it, and the sweep compares the two.
pub async fn step<S: ActivitySource>(
    store: &Store,
    source: &S,
    athlete_id: i64,
) -> Result<Step, FetchError> {
    let (pass, read_all) = store
        .write(move |tx| {
            let pass = sync_state::reconcile_pass(tx, athlete_id, store::now())?;
            let read_all = activities_scope_sees_all(tx, athlete_id)?;
            Ok((pass, read_all))
        })
        .await?;
    let page = source
        .list_activities(athlete_id, Purpose::Reconcile, ListQuery::before(pass.before))
        .await?;
    let finished = is_last_page(page.len(), read_all);
    let next = next_before(pass.before, page.iter().filter_map(|r| start_time(r)));
    let fetched = page.len() as i64;
    let (changed, removed) = store
        .write(move |tx| {
            let changed = activities::upsert_listed(tx, athlete_id, page)?;
            let removed = if finished {
                sync_state::save_reconcile_pass(tx, athlete_id, None)?;
                activities::sweep_unseen(tx, athlete_id, pass.started_at, pass.started_at)?
            } else {
                let moved = sync_state::ReconcilePass {
                    before: next,
                    ..pass
                };
                sync_state::save_reconcile_pass(tx, athlete_id, Some(moved))?;
                jobs::enqueue(tx, athlete_id, jobs::JobKind::Reconcile, None, 0)?;
                0
            };
            Ok((changed, removed))
        })
        .await?;
    if removed > 0 {
        tracing::info!(athlete_id, removed, "reconciliation removed activities Strava no longer lists");
        metrics::counter!("sync_reconcile_removed_total").increment(removed as u64);
    }
    Ok(Step {
        counts: Counts {
            fetched,
            new: i64::from(changed.new),
            updated: i64::from(changed.updated),
        },
        removed,
        finished,
    })
}

fn activities_scope_sees_all(conn: &rusqlite::Connection, athlete_id: i64) -> DbResult<bool> {
    Ok(store::athletes::get(conn, athlete_id)?
        .is_some_and(|a| super::gap_fill::sees_all(&a.scope)))
}

/// The `before` of the next page: one second past the oldest start on this
/// page, so activities sharing that second are listed again rather than
/// skipped (a skipped one would be swept). Only when a whole page shares one
/// second does the cursor step over it, to guarantee progress.
fn next_before(before: i64, starts: impl Iterator<Item = i64>) -> i64 {
    let oldest = starts.min().unwrap_or(before);
    if oldest + 1 < before {
        oldest + 1
    } else {
        oldest.min(before - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::next_before;

    #[test]
    fn cursor_relists_the_oldest_second_and_always_moves() {
        assert_eq!(next_before(1000, [900, 950, 990].into_iter()), 901);
        assert_eq!(next_before(1000, [999, 999].into_iter()), 999);
        assert_eq!(next_before(1000, std::iter::empty()), 999);
    }
}
