//! The shared budget's persistence: one row per window instance, so a restart
//! in the middle of a window resumes its count, and the ledger of every call
//! made to Strava. The pause switch lives in `service_state`. Windows are
//! named by the caller's key (`15min`, `day`): the store knows no budget types.

use super::sql::{params, Connection, OptionalExtension};

use super::{service_state, DbResult, Store};

const PAUSED_KEY: &str = "budget.paused";

/// One call to Strava, as the ledger records it.
#[derive(Debug, Clone)]
pub struct CallRow<'a> {
    pub at: i64,
    pub endpoint: &'a str,
    pub athlete_id: Option<i64>,
    pub purpose: &'a str,
    /// HTTP status; None when no answer came (timeout, connection failure).
    pub status: Option<u16>,
    pub usage_15min: Option<u32>,
    pub usage_daily: Option<u32>,
    pub duration_ms: i64,
}

/// The counters of one window instance, as `budget_windows` stores them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowRow {
    pub start: i64,
    pub used: u32,
    pub reported_usage: Option<u32>,
    pub reported_limit: Option<u32>,
    pub exhausted: bool,
}

/// The stored counters of one window instance, if any call was counted in it.
pub fn load_window(conn: &dyn Connection, window: &str, start: i64) -> DbResult<Option<WindowRow>> {
    conn.query_row(
        "SELECT used, reported_usage, reported_limit, exhausted FROM budget_windows
             WHERE \"window\" = ?1 AND window_start = ?2",
        params![window, start],
        |r| {
            Ok(WindowRow {
                start,
                used: r.get(0)?,
                reported_usage: r.get(1)?,
                reported_limit: r.get(2)?,
                exhausted: r.get(3)?,
            })
        },
    )
    .optional()
}

/// The limit Strava last reported for this kind of window: limits outlive the
/// window they were reported in.
pub fn latest_reported_limit(conn: &dyn Connection, window: &str) -> DbResult<Option<u32>> {
    conn.query_row(
        "SELECT reported_limit FROM budget_windows
             WHERE \"window\" = ?1 AND reported_limit IS NOT NULL
             ORDER BY window_start DESC LIMIT 1",
        [window],
        |r| r.get(0),
    )
    .optional()
}

/// Stores a window's counters. Counts and the exhausted flag only ever grow
/// within a window, so concurrent saves cannot lower them.
pub fn save_window(conn: &dyn Connection, window: &str, w: &WindowRow) -> DbResult<()> {
    conn.execute(
        "INSERT INTO budget_windows
             (\"window\", window_start, used, reported_usage, reported_limit, exhausted)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(\"window\", window_start) DO UPDATE SET
             used = greatest(budget_windows.used, excluded.used),
             reported_usage = COALESCE(excluded.reported_usage, budget_windows.reported_usage),
             reported_limit = COALESCE(excluded.reported_limit, budget_windows.reported_limit),
             exhausted = greatest(budget_windows.exhausted, excluded.exhausted)",
        params![
            window,
            w.start,
            w.used,
            w.reported_usage,
            w.reported_limit,
            w.exhausted
        ],
    )?;
    Ok(())
}

/// Drops window rows that ended before `before` (they no longer matter).
pub fn prune_windows(conn: &dyn Connection, before: i64) -> DbResult<usize> {
    conn.execute(
        "DELETE FROM budget_windows WHERE window_start < ?1",
        [before],
    )
}

pub fn insert_call(conn: &dyn Connection, call: &CallRow<'_>) -> DbResult<()> {
    conn.prepare_cached(
        "INSERT INTO strava_calls
             (at, endpoint, athlete_id, purpose, status, usage_15min, usage_daily, duration_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        call.at,
        call.endpoint,
        call.athlete_id,
        call.purpose,
        call.status,
        call.usage_15min,
        call.usage_daily,
        call.duration_ms
    ])?;
    Ok(())
}

/// Calls made since `since`, by purpose.
pub fn calls_by_purpose_since(conn: &dyn Connection, since: i64) -> DbResult<Vec<(String, i64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT purpose, COUNT(*) FROM strava_calls WHERE at >= ?1 GROUP BY purpose",
    )?;
    let rows = stmt.query_map(params![since], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect::<Result<_, _>>()
}

/// Calls made since `since`, per hour (its first second) and purpose, oldest
/// hour first.
pub fn calls_by_hour_since(conn: &dyn Connection, since: i64) -> DbResult<Vec<(i64, String, i64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT at - at % 3600, purpose, COUNT(*) FROM strava_calls WHERE at >= ?1
         GROUP BY 1, 2 ORDER BY 1, 2",
    )?;
    let rows = stmt.query_map(params![since], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect::<Result<_, _>>()
}

/// Every call the ledger holds.
pub fn count_calls(conn: &dyn Connection) -> DbResult<i64> {
    conn.query_row("SELECT COUNT(*) FROM strava_calls", params![], |r| r.get(0))
}

pub fn paused(conn: &dyn Connection) -> DbResult<bool> {
    Ok(service_state::get(conn, PAUSED_KEY)?.is_some_and(|v| v == "true"))
}

pub fn set_paused(conn: &dyn Connection, paused: bool) -> DbResult<()> {
    service_state::set(conn, PAUSED_KEY, &paused.to_string())
}

/// One window instance as stored: its counters, if any call was counted in
/// it, and the limit Strava last reported for its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWindow {
    pub row: Option<WindowRow>,
    pub latest_reported_limit: Option<u32>,
}

/// The shared budget as stored, which every instance's permits count in:
/// the windows asked for, the pause switch and the ledger's calls by
/// purpose since the day began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBudget {
    pub windows: Vec<StoredWindow>,
    pub paused: bool,
    pub spent: Vec<(String, i64)>,
}

fn load_budget(
    conn: &dyn Connection,
    windows: &[(&'static str, i64)],
    day_start: i64,
) -> DbResult<StoredBudget> {
    let windows = windows
        .iter()
        .map(|(key, start)| {
            Ok(StoredWindow {
                row: load_window(conn, key, *start)?,
                latest_reported_limit: latest_reported_limit(conn, key)?,
            })
        })
        .collect::<DbResult<_>>()?;
    Ok(StoredBudget {
        windows,
        paused: paused(conn)?,
        spent: calls_by_purpose_since(conn, day_start)?,
    })
}

impl Store {
    /// Drops window rows that started before `prune_before`, then loads the
    /// budget (the windows asked for as (key, start), and the calls since
    /// `day_start`).
    pub async fn load_budget(
        &self,
        windows: Vec<(&'static str, i64)>,
        day_start: i64,
        prune_before: i64,
    ) -> DbResult<StoredBudget> {
        self.write(move |tx| {
            prune_windows(tx, prune_before)?;
            load_budget(tx, &windows, day_start)
        })
        .await
    }

    /// The budget as stored now, for an instance catching up with what the
    /// others spent, paused or resumed.
    pub async fn read_budget(
        &self,
        windows: Vec<(&'static str, i64)>,
        day_start: i64,
    ) -> DbResult<StoredBudget> {
        self.read(move |c| load_budget(c, &windows, day_start))
            .await
    }

    /// Takes a permit as one write transaction: `decide` sees the budget as
    /// stored and returns its answer with the windows to store. Writes are
    /// serialized (one writer; on PostgreSQL the write lock every instance
    /// takes), so no other permit comes between the read and the count:
    /// two instances never both take the last call of a window.
    pub async fn take_budget_permit<T: Send + 'static>(
        &self,
        windows: Vec<(&'static str, i64)>,
        day_start: i64,
        decide: impl FnOnce(StoredBudget) -> (T, Vec<(&'static str, WindowRow)>) + Send + 'static,
    ) -> DbResult<T> {
        self.write(move |tx| {
            let (answer, rows) = decide(load_budget(tx, &windows, day_start)?);
            for (key, row) in &rows {
                save_window(tx, key, row)?;
            }
            Ok(answer)
        })
        .await
    }

    /// Saves the windows' counters and, when a call was made, its ledger row,
    /// in one transaction.
    pub async fn save_budget(
        &self,
        windows: Vec<(&'static str, WindowRow)>,
        call: Option<CallRow<'static>>,
    ) -> DbResult<()> {
        self.write(move |tx| {
            for (key, row) in &windows {
                save_window(tx, key, row)?;
            }
            if let Some(call) = &call {
                insert_call(tx, call)?;
            }
            Ok(())
        })
        .await
    }

    /// Stops (or restarts) background use of the budget; survives restarts.
    pub async fn set_budget_paused(&self, paused: bool) -> DbResult<()> {
        self.write(move |tx| set_paused(tx, paused)).await
    }

    /// Calls the ledger holds since `since`, by purpose.
    pub async fn calls_by_purpose(&self, since: i64) -> DbResult<Vec<(String, i64)>> {
        self.read(move |c| calls_by_purpose_since(c, since)).await
    }

    /// Calls the ledger holds since `since`, per hour and purpose: (the
    /// hour's first second, purpose, calls).
    pub async fn calls_by_hour(&self, since: i64) -> DbResult<Vec<(i64, String, i64)>> {
        self.read(move |c| calls_by_hour_since(c, since)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_per_hour_and_purpose() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("b.db")).unwrap();
        let call = |at, purpose| CallRow {
            at,
            endpoint: "GET /athlete/activities",
            athlete_id: None,
            purpose,
            status: Some(200),
            usage_15min: None,
            usage_daily: None,
            duration_ms: 1,
        };
        let hours = store
            .write_blocking(|tx| {
                for (at, purpose) in [
                    (3_599, "webhook"),
                    (3_600, "webhook"),
                    (7_199, "webhook"),
                    (7_000, "backfill"),
                    (7_200, "interactive"),
                ] {
                    insert_call(tx, &call(at, purpose))?;
                }
                calls_by_hour_since(tx, 3_600)
            })
            .unwrap();
        assert_eq!(
            hours,
            [
                (3_600, "backfill".to_string(), 1),
                (3_600, "webhook".to_string(), 2),
                (7_200, "interactive".to_string(), 1),
            ]
        );
    }
}
