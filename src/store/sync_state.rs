//! Per-athlete sync progress. The backfill cursor is written in the same
//! transaction as the page it moved past, so a restart or a spent budget
//! resumes exactly there.

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
