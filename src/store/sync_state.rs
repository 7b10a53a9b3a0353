//! Per-athlete sync progress and bookkeeping: when each kind of pass last
//! ran, where the backfill and the deletion reconciliation stand, and the
//! manual-refresh cooldown. The backfill cursor is written in the same
//! transaction as the page it moved past, so a restart or a spent budget
//! resumes exactly there; the reconciliation's likewise.

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::DbResult;

/// Where an athlete's history backfill stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Backfill {
    /// The next page lists activities that started before this (epoch
    /// seconds); None: from the newest.
    pub before: Option<i64>,
    pub pages: i64,
    pub complete: bool,
}

pub fn backfill(conn: &Connection, athlete_id: i64) -> DbResult<Option<Backfill>> {
    Ok(conn
        .query_row(
            "SELECT backfill_before, backfill_pages, backfill_complete FROM sync_state
             WHERE athlete_id = ?1",
            [athlete_id],
            |r| {
                Ok(Backfill {
                    before: r.get(0)?,
                    pages: r.get(1)?,
                    complete: r.get(2)?,
                })
            },
        )
        .optional()?)
}

pub fn set_backfill(conn: &Connection, athlete_id: i64, b: &Backfill) -> DbResult<()> {
    conn.execute(
        "INSERT INTO sync_state (athlete_id, backfill_before, backfill_pages, backfill_complete)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(athlete_id) DO UPDATE SET backfill_before = excluded.backfill_before,
             backfill_pages = excluded.backfill_pages,
             backfill_complete = excluded.backfill_complete",
        params![athlete_id, b.before, b.pages, b.complete],
    )?;
    Ok(())
}

/// Records on the athlete's sync state when we last heard from Strava about
/// them (`GET /api/sync` shows it).
pub fn record_webhook_at(conn: &Connection, athlete_id: i64, received_at: i64) -> DbResult<()> {
    conn.prepare_cached(
        "UPDATE sync_state SET last_webhook_at = max(coalesce(last_webhook_at, 0), ?2)
         WHERE athlete_id = ?1",
    )?
    .execute(params![athlete_id, received_at])?;
    Ok(())
}

/// One athlete as `/admin/athletes` lists them.
#[derive(Debug, Clone, Serialize)]
pub struct AthleteOverview {
    pub id: i64,
    pub status: String,
    pub scope: String,
    pub connected_at: i64,
    pub activities: i64,
    pub backfill_pages: i64,
    pub backfill_complete: bool,
    pub last_gap_fill_at: Option<i64>,
    pub last_webhook_at: Option<i64>,
    pub last_reconcile_at: Option<i64>,
    pub queued_jobs: i64,
    pub failed_jobs: i64,
}

/// Every athlete with their sync state, oldest connection first.
pub fn overview(conn: &Connection) -> DbResult<Vec<AthleteOverview>> {
    let mut stmt = conn.prepare(
        "SELECT a.id, a.status, a.scope, a.connected_at,
                (SELECT COUNT(*) FROM activities x WHERE x.athlete_id = a.id),
                COALESCE(s.backfill_pages, 0), COALESCE(s.backfill_complete, 0),
                s.last_gap_fill_at, s.last_webhook_at, s.last_reconcile_at,
                (SELECT COUNT(*) FROM jobs j WHERE j.athlete_id = a.id AND j.status = 'queued'),
                (SELECT COUNT(*) FROM jobs j WHERE j.athlete_id = a.id AND j.status = 'failed')
         FROM athletes a LEFT JOIN sync_state s ON s.athlete_id = a.id
         ORDER BY a.connected_at, a.id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(AthleteOverview {
            id: r.get(0)?,
            status: r.get(1)?,
            scope: r.get(2)?,
            connected_at: r.get(3)?,
            activities: r.get(4)?,
            backfill_pages: r.get(5)?,
            backfill_complete: r.get(6)?,
            last_gap_fill_at: r.get(7)?,
            last_webhook_at: r.get(8)?,
            last_reconcile_at: r.get(9)?,
            queued_jobs: r.get(10)?,
            failed_jobs: r.get(11)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One athlete's row; absent rows read as the defaults of a new athlete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncState {
    pub backfill_before: Option<i64>,
    pub backfill_pages: i64,
    pub backfill_complete: bool,
    pub last_gap_fill_at: Option<i64>,
    pub last_webhook_at: Option<i64>,
    pub last_reconcile_at: Option<i64>,
    pub reconcile_cursor: Option<i64>,
    pub last_manual_refresh_at: Option<i64>,
}

pub fn get(conn: &Connection, athlete_id: i64) -> DbResult<SyncState> {
    Ok(conn
        .query_row(
            "SELECT backfill_before, backfill_pages, backfill_complete, last_gap_fill_at,
                    last_webhook_at, last_reconcile_at, reconcile_cursor,
                    last_manual_refresh_at
             FROM sync_state WHERE athlete_id = ?1",
            [athlete_id],
            |r| {
                Ok(SyncState {
                    backfill_before: r.get(0)?,
                    backfill_pages: r.get(1)?,
                    backfill_complete: r.get::<_, i64>(2)? != 0,
                    last_gap_fill_at: r.get(3)?,
                    last_webhook_at: r.get(4)?,
                    last_reconcile_at: r.get(5)?,
                    reconcile_cursor: r.get(6)?,
                    last_manual_refresh_at: r.get(7)?,
                })
            },
        )
        .optional()?
        .unwrap_or_default())
}

/// Up to `limit` connected athletes in gap-fill order: never checked first,
/// then the one checked longest ago. Athletes needing re-authorization are
/// left out: their tokens cannot fetch anything.
pub fn gap_fill_order(conn: &Connection, limit: u32) -> DbResult<Vec<i64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.id FROM athletes a LEFT JOIN sync_state s ON s.athlete_id = a.id
         WHERE a.status = 'connected'
         ORDER BY s.last_gap_fill_at IS NOT NULL, s.last_gap_fill_at, a.id
         LIMIT ?1",
    )?;
    let ids = stmt
        .query_map([limit], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(ids)
}

/// Connected athletes with a complete backfill whose reconciliation is in
/// progress, or whose last one started before `before` (or never), longest
/// ago first, unless a step is already queued or running. Until the backfill
/// is complete it would list the same history anyway.
pub fn due_for_reconcile(conn: &Connection, before: i64) -> DbResult<Vec<i64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.id FROM athletes a JOIN sync_state s ON s.athlete_id = a.id
         WHERE a.status = 'connected' AND s.backfill_complete = 1
           AND (s.reconcile_cursor IS NOT NULL OR s.last_reconcile_at IS NULL
                OR s.last_reconcile_at < ?1)
           AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.athlete_id = a.id
                           AND j.kind = 'reconcile' AND j.status IN ('queued', 'running'))
         ORDER BY s.last_reconcile_at IS NOT NULL, s.last_reconcile_at, a.id",
    )?;
    let ids = stmt
        .query_map([before], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(ids)
}

pub fn set_last_gap_fill(conn: &Connection, athlete_id: i64, at: i64) -> DbResult<()> {
    upsert_column(conn, athlete_id, "last_gap_fill_at", Some(at))
}

/// Takes the manual-refresh slot if the cooldown has passed; otherwise
/// answers how many seconds remain.
pub fn claim_manual_refresh(
    conn: &Connection,
    athlete_id: i64,
    now: i64,
    cooldown_secs: i64,
) -> DbResult<Result<(), i64>> {
    let last = get(conn, athlete_id)?.last_manual_refresh_at;
    if let Some(last) = last {
        let remaining = last + cooldown_secs - now;
        if remaining > 0 {
            return Ok(Err(remaining));
        }
    }
    upsert_column(conn, athlete_id, "last_manual_refresh_at", Some(now))?;
    Ok(Ok(()))
}

/// Where a reconciliation pass stands: when it started (activities not seen
/// since then are gone once it ends) and the next page to list. Kept in
/// `last_reconcile_at` (the start of the newest pass) and `reconcile_cursor`
/// (set while that pass is in progress), so a restart resumes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcilePass {
    pub started_at: i64,
    pub page: u32,
}

/// The pass in progress, or a new one starting at `now`.
pub fn reconcile_pass(conn: &Connection, athlete_id: i64, now: i64) -> DbResult<ReconcilePass> {
    let state = get(conn, athlete_id)?;
    if let (Some(started_at), Some(page)) = (state.last_reconcile_at, state.reconcile_cursor) {
        return Ok(ReconcilePass {
            started_at,
            page: u32::try_from(page).unwrap_or(1),
        });
    }
    let pass = ReconcilePass {
        started_at: now,
        page: 1,
    };
    save_reconcile_pass(conn, athlete_id, pass, false)?;
    Ok(pass)
}

/// Records the pass's next page, or that it is `finished`.
pub fn save_reconcile_pass(
    conn: &Connection,
    athlete_id: i64,
    pass: ReconcilePass,
    finished: bool,
) -> DbResult<()> {
    ensure(conn, athlete_id)?;
    conn.execute(
        "UPDATE sync_state SET last_reconcile_at = ?2, reconcile_cursor = ?3 WHERE athlete_id = ?1",
        params![
            athlete_id,
            pass.started_at,
            (!finished).then_some(pass.page)
        ],
    )?;
    Ok(())
}

fn ensure(conn: &Connection, athlete_id: i64) -> DbResult<()> {
    conn.execute(
        "INSERT OR IGNORE INTO sync_state (athlete_id) VALUES (?1)",
        [athlete_id],
    )?;
    Ok(())
}

/// Sets one timestamp column; `column` is always a literal from this module.
fn upsert_column(
    conn: &Connection,
    athlete_id: i64,
    column: &'static str,
    value: Option<i64>,
) -> DbResult<()> {
    ensure(conn, athlete_id)?;
    conn.execute(
        &format!("UPDATE sync_state SET {column} = ?2 WHERE athlete_id = ?1"),
        params![athlete_id, value],
    )?;
    Ok(())
}

/// When the newest webhook event for this athlete arrived.
pub fn last_webhook_at(conn: &Connection, athlete_id: i64) -> DbResult<Option<i64>> {
    Ok(conn.query_row(
        "SELECT MAX(t) FROM (
             SELECT last_webhook_at AS t FROM sync_state WHERE athlete_id = ?1
             UNION ALL SELECT MAX(received_at) FROM webhook_events WHERE owner_id = ?1)",
        [athlete_id],
        |r| r.get(0),
    )?)
}

/// Athletes whose history backfill is still walking.
pub fn backfills_in_progress(conn: &Connection) -> DbResult<i64> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM sync_state s JOIN athletes a ON a.id = s.athlete_id
         WHERE a.status = 'connected' AND s.backfill_complete = 0",
        [],
        |r| r.get(0),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{athletes, jobs, Store};

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        (dir, store)
    }

    fn connect(conn: &Connection, id: i64) {
        athletes::upsert(
            conn,
            &serde_json::json!({"id": id}),
            "read,activity:read_all",
        )
        .unwrap();
    }

    #[test]
    fn gap_fill_goes_to_the_longest_unchecked_and_skips_reauth() {
        let (_dir, store) = store();
        store
            .write_blocking(|tx| {
                for id in 1..=4 {
                    connect(tx, id);
                }
                set_last_gap_fill(tx, 1, 500)?;
                set_last_gap_fill(tx, 2, 100)?;
                athletes::set_status(tx, 4, athletes::Status::NeedsReauth)?;
                assert_eq!(gap_fill_order(tx, 10)?, vec![3, 2, 1]);
                assert_eq!(gap_fill_order(tx, 2)?, vec![3, 2]);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn manual_refresh_cooldown_answers_the_seconds_left() {
        let (_dir, store) = store();
        store
            .write_blocking(|tx| {
                connect(tx, 1);
                assert_eq!(claim_manual_refresh(tx, 1, 1_000, 300)?, Ok(()));
                assert_eq!(claim_manual_refresh(tx, 1, 1_100, 300)?, Err(200));
                assert_eq!(claim_manual_refresh(tx, 1, 1_300, 300)?, Ok(()));
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn a_reconcile_pass_resumes_until_it_is_ended() {
        let (_dir, store) = store();
        store
            .write_blocking(|tx| {
                connect(tx, 1);
                let pass = reconcile_pass(tx, 1, 1_000)?;
                assert_eq!(
                    pass,
                    ReconcilePass {
                        started_at: 1_000,
                        page: 1
                    }
                );
                save_reconcile_pass(tx, 1, ReconcilePass { page: 4, ..pass }, false)?;
                let resumed = reconcile_pass(tx, 1, 2_000)?;
                assert_eq!(
                    resumed,
                    ReconcilePass {
                        started_at: 1_000,
                        page: 4
                    }
                );
                save_reconcile_pass(tx, 1, resumed, true)?;
                assert_eq!(get(tx, 1)?.last_reconcile_at, Some(1_000));
                assert_eq!(get(tx, 1)?.reconcile_cursor, None);
                assert_eq!(reconcile_pass(tx, 1, 3_000)?.started_at, 3_000);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn queue_position_counts_higher_priorities_and_older_peers() {
        let (_dir, store) = store();
        store
            .write_blocking(|tx| {
                for id in 1..=3 {
                    connect(tx, id);
                }
                let backfill = jobs::enqueue(tx, 1, jobs::JobKind::Backfill, None, 0)?;
                let first = jobs::enqueue(tx, 2, jobs::JobKind::Refresh, None, 0)?;
                let second = jobs::enqueue(tx, 3, jobs::JobKind::Refresh, None, 0)?;
                assert_eq!(jobs::queue_position(tx, first)?, Some(1));
                assert_eq!(jobs::queue_position(tx, second)?, Some(2));
                assert_eq!(jobs::queue_position(tx, backfill)?, Some(3));
                assert_eq!(jobs::due_besides(tx, jobs::JobKind::Refresh, 0)?, 1);
                Ok(())
            })
            .unwrap();
    }
}
