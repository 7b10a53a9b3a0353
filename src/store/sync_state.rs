//! Per-athlete sync bookkeeping: when each kind of pass last ran, where the
//! deletion reconciliation stands, and the manual-refresh cooldown. Every
//! cursor lives here so a restart or a spent budget resumes instead of
//! starting over.

use rusqlite::{params, Connection, OptionalExtension};

use super::DbResult;
use crate::strava::Purpose;

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
    pub reconcile_pass_started_at: Option<i64>,
    pub last_manual_refresh_at: Option<i64>,
}

pub fn get(conn: &Connection, athlete_id: i64) -> DbResult<SyncState> {
    Ok(conn
        .query_row(
            "SELECT backfill_before, backfill_pages, backfill_complete, last_gap_fill_at,
                    last_webhook_at, last_reconcile_at, reconcile_cursor,
                    reconcile_pass_started_at, last_manual_refresh_at
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
                    reconcile_pass_started_at: r.get(7)?,
                    last_manual_refresh_at: r.get(8)?,
                })
            },
        )
        .optional()?
        .unwrap_or_default())
}

/// Connected athletes in gap-fill order: never checked first, then the one
/// checked longest ago. Athletes needing re-authorization are left out: their
/// tokens cannot fetch anything.
pub fn gap_fill_order(conn: &Connection) -> DbResult<Vec<i64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.id FROM athletes a LEFT JOIN sync_state s ON s.athlete_id = a.id
         WHERE a.status = 'connected'
         ORDER BY s.last_gap_fill_at IS NOT NULL, s.last_gap_fill_at, a.id",
    )?;
    let ids = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(ids)
}

/// Connected athletes with a complete backfill whose last completed
/// reconciliation is older than `before` (or who never had one), longest ago
/// first. Until the backfill is complete it lists the same history anyway.
pub fn due_for_reconcile(conn: &Connection, before: i64) -> DbResult<Vec<i64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.id FROM athletes a JOIN sync_state s ON s.athlete_id = a.id
         WHERE a.status = 'connected' AND s.backfill_complete = 1
           AND (s.last_reconcile_at IS NULL OR s.last_reconcile_at < ?1)
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
/// since then are gone once it ends) and the `before` of its next page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcilePass {
    pub started_at: i64,
    pub before: i64,
}

/// The pass in progress, or a new one starting at `now`.
pub fn reconcile_pass(conn: &Connection, athlete_id: i64, now: i64) -> DbResult<ReconcilePass> {
    let state = get(conn, athlete_id)?;
    if let (Some(started_at), Some(before)) =
        (state.reconcile_pass_started_at, state.reconcile_cursor)
    {
        return Ok(ReconcilePass { started_at, before });
    }
    let pass = ReconcilePass {
        started_at: now,
        before: now,
    };
    save_reconcile_pass(conn, athlete_id, Some(pass))?;
    Ok(pass)
}

/// Records the next page's cursor, or (None) ends the pass as completed.
pub fn save_reconcile_pass(
    conn: &Connection,
    athlete_id: i64,
    pass: Option<ReconcilePass>,
) -> DbResult<()> {
    ensure(conn, athlete_id)?;
    match pass {
        Some(p) => conn.execute(
            "UPDATE sync_state SET reconcile_pass_started_at = ?2, reconcile_cursor = ?3
             WHERE athlete_id = ?1",
            params![athlete_id, p.started_at, p.before],
        )?,
        None => conn.execute(
            "UPDATE sync_state SET last_reconcile_at = reconcile_pass_started_at,
                 reconcile_pass_started_at = NULL, reconcile_cursor = NULL
             WHERE athlete_id = ?1",
            [athlete_id],
        )?,
    };
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

/// Calls the ledger recorded for `purpose` since `since`.
pub fn calls_since(conn: &Connection, purpose: Purpose, since: i64) -> DbResult<i64> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM strava_calls WHERE purpose = ?1 AND at >= ?2",
        params![purpose.as_str(), since],
        |r| r.get(0),
    )?)
}
