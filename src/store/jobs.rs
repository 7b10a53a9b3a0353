//! Queued work that spends the Strava budget. A job belongs to one athlete and
//! runs at the priority of its purpose; the queue is ordered by priority, then
//! age.

use rusqlite::{params, Connection, OptionalExtension};

use super::{now, DbResult};
use crate::model::Purpose;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// The first page of activities right after connect.
    FirstPage,
    /// A manual refresh from `POST /api/sync`.
    Refresh,
    /// Fetch activities announced by webhook create events.
    WebhookFetch,
    /// The daily gap-fill for one athlete.
    GapFill,
    /// One or more pages of history backfill.
    Backfill,
    /// Detailed records for summary-only activities.
    Enrich,
    /// Compare Strava's id list with the local copy.
    Reconcile,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::FirstPage => "first_page",
            JobKind::Refresh => "refresh",
            JobKind::WebhookFetch => "webhook_fetch",
            JobKind::GapFill => "gap_fill",
            JobKind::Backfill => "backfill",
            JobKind::Enrich => "enrich",
            JobKind::Reconcile => "reconcile",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            JobKind::FirstPage,
            JobKind::Refresh,
            JobKind::WebhookFetch,
            JobKind::GapFill,
            JobKind::Backfill,
            JobKind::Enrich,
            JobKind::Reconcile,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    pub fn purpose(self) -> Purpose {
        match self {
            JobKind::FirstPage | JobKind::Refresh => Purpose::Interactive,
            JobKind::WebhookFetch => Purpose::Webhook,
            JobKind::GapFill => Purpose::GapFill,
            JobKind::Backfill => Purpose::Backfill,
            JobKind::Enrich => Purpose::Enrichment,
            JobKind::Reconcile => Purpose::Reconcile,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: i64,
    pub athlete_id: i64,
    pub kind: JobKind,
    pub status: String,
    pub payload_json: Option<String>,
    /// Times the job was claimed, this run included.
    pub attempts: i64,
    pub fetched: i64,
    pub new: i64,
    pub updated: i64,
    pub error: Option<String>,
    pub created_at: i64,
}

/// What a job (or one step of it) fetched and changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub fetched: i64,
    pub new: i64,
    pub updated: i64,
}

const JOB_COLUMNS: &str =
    "id, athlete_id, kind, status, payload_json, attempts, fetched, new, updated, error, created_at";

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        id: r.get(0)?,
        athlete_id: r.get(1)?,
        kind: {
            let kind: String = r.get(2)?;
            // An unknown kind is a defect to surface, never work to guess at.
            JobKind::parse(&kind).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    2,
                    rusqlite::types::Type::Text,
                    format!("unknown job kind `{kind}`").into(),
                )
            })?
        },
        status: r.get(3)?,
        payload_json: r.get(4)?,
        attempts: r.get(5)?,
        fetched: r.get(6)?,
        new: r.get(7)?,
        updated: r.get(8)?,
        error: r.get(9)?,
        created_at: r.get(10)?,
    })
}

/// Queues a job unless the athlete already has one of this kind waiting, in
/// which case that one is returned: queued work coalesces instead of piling up.
pub fn enqueue(
    conn: &Connection,
    athlete_id: i64,
    kind: JobKind,
    payload_json: Option<&str>,
    not_before: i64,
) -> DbResult<i64> {
    if let Some(id) = conn
        .query_row(
            "SELECT id FROM jobs WHERE athlete_id = ?1 AND kind = ?2 AND status = 'queued'",
            params![athlete_id, kind.as_str()],
            |r| r.get(0),
        )
        .optional()?
    {
        return Ok(id);
    }
    conn.execute(
        "INSERT INTO jobs (athlete_id, kind, priority, payload_json, not_before, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            athlete_id,
            kind.as_str(),
            kind.purpose().rank(),
            payload_json,
            not_before,
            now()
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

/// One job of this athlete, if it exists.
pub fn get(conn: &Connection, athlete_id: i64, id: i64) -> DbResult<Option<Job>> {
    Ok(conn
        .query_row(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1 AND athlete_id = ?2"),
            params![id, athlete_id],
            job_row,
        )
        .optional()?)
}

/// Marks the most urgent runnable job running and returns it: due by `now`,
/// at priority rank `max_rank` or higher, of a connected athlete (those
/// needing re-authorization wait), and of an athlete with nothing running, so
/// one athlete's jobs never race on their cursor or tokens.
pub fn claim(conn: &Connection, now: i64, max_rank: i64) -> DbResult<Option<Job>> {
    Ok(conn
        .query_row(
            &format!(
                "UPDATE jobs SET status = 'running', started_at = ?1, attempts = attempts + 1
                 WHERE id = (
                     SELECT j.id FROM jobs j JOIN athletes a ON a.id = j.athlete_id
                     WHERE j.status = 'queued' AND j.not_before <= ?1 AND j.priority <= ?2
                       AND a.status = 'connected'
                       AND NOT EXISTS (SELECT 1 FROM jobs r
                                       WHERE r.athlete_id = j.athlete_id AND r.status = 'running')
                     ORDER BY j.priority, j.not_before, j.id LIMIT 1)
                 RETURNING {JOB_COLUMNS}"
            ),
            params![now, max_rank],
            job_row,
        )
        .optional()?)
}

/// When the next queued job of a connected athlete that is not yet due
/// becomes due (jobs already due wait for the budget or their athlete, not
/// for time).
pub fn next_due_after(conn: &Connection, now: i64) -> DbResult<Option<i64>> {
    Ok(conn.query_row(
        "SELECT MIN(j.not_before) FROM jobs j JOIN athletes a ON a.id = j.athlete_id
         WHERE j.status = 'queued' AND a.status = 'connected' AND j.not_before > ?1",
        [now],
        |r| r.get(0),
    )?)
}

/// Jobs waiting in the queue, those of athletes needing re-authorization
/// included.
pub fn queued_count(conn: &Connection) -> DbResult<i64> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM jobs WHERE status = 'queued'",
        [],
        |r| r.get(0),
    )?)
}

/// Ends a job successfully, adding its last counts.
pub fn finish(conn: &Connection, id: i64, counts: Counts, now: i64) -> DbResult<()> {
    conn.execute(
        "UPDATE jobs SET status = 'done', finished_at = ?2, error = NULL,
             fetched = fetched + ?3, new = new + ?4, updated = updated + ?5
         WHERE id = ?1",
        params![id, now, counts.fetched, counts.new, counts.updated],
    )?;
    Ok(())
}

/// Puts a job back in the queue (more to do, or a retry), adding its counts
/// so far; `error` says why it is waiting, if it failed.
pub fn requeue(
    conn: &Connection,
    id: i64,
    counts: Counts,
    not_before: i64,
    error: Option<&str>,
) -> DbResult<()> {
    conn.execute(
        "UPDATE jobs SET status = 'queued', not_before = ?2, error = ?3,
             fetched = fetched + ?4, new = new + ?5, updated = updated + ?6
         WHERE id = ?1",
        params![
            id,
            not_before,
            error,
            counts.fetched,
            counts.new,
            counts.updated
        ],
    )?;
    Ok(())
}

pub fn fail(conn: &Connection, id: i64, error: &str, now: i64) -> DbResult<()> {
    conn.execute(
        "UPDATE jobs SET status = 'failed', finished_at = ?2, error = ?3 WHERE id = ?1",
        params![id, now, error],
    )?;
    Ok(())
}

/// Returns jobs left running by a previous process to the queue; their
/// progress is in their cursors, committed page by page.
pub fn requeue_interrupted(conn: &Connection) -> DbResult<usize> {
    Ok(conn.execute(
        "UPDATE jobs SET status = 'queued' WHERE status = 'running'",
        [],
    )?)
}

/// Where a queued job stands in the order [`claim`] takes jobs (priority,
/// due time, age): 1 means it is next. None when the job is not queued.
pub fn queue_position(conn: &Connection, id: i64) -> DbResult<Option<i64>> {
    Ok(conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM jobs o
                     WHERE o.status = 'queued'
                       AND (o.priority, o.not_before, o.id) < (j.priority, j.not_before, j.id)) + 1
             FROM jobs j WHERE j.id = ?1 AND j.status = 'queued'",
            [id],
            |r| r.get(0),
        )
        .optional()?)
}

/// How many queued jobs due by `now` are of another kind than `kind`.
pub fn due_besides(conn: &Connection, kind: JobKind, now: i64) -> DbResult<i64> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND kind <> ?1 AND not_before <= ?2",
        params![kind.as_str(), now],
        |r| r.get(0),
    )?)
}

/// The athlete's queued jobs by kind.
pub fn queued_by_kind(conn: &Connection, athlete_id: i64) -> DbResult<Vec<(String, i64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT kind, COUNT(*) FROM jobs WHERE athlete_id = ?1 AND status = 'queued'
         GROUP BY kind ORDER BY MIN(priority)",
    )?;
    let rows = stmt
        .query_map([athlete_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{athletes, Store};

    #[test]
    fn a_row_of_unknown_kind_is_an_error_not_a_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("j.db")).unwrap();
        let (known, unknown) = store
            .write_blocking(|tx| {
                athletes::upsert(tx, &serde_json::json!({"id": 7}), "activity:read")?;
                let known = enqueue(tx, 7, JobKind::Backfill, None, 0)?;
                tx.execute(
                    "INSERT INTO jobs (athlete_id, kind, priority, created_at)
                     VALUES (7, 'bogus', 0, 0)",
                    [],
                )?;
                Ok((known, tx.last_insert_rowid()))
            })
            .unwrap();
        let job = store.read_blocking(|c| get(c, 7, known)).unwrap().unwrap();
        assert_eq!(job.kind, JobKind::Backfill);
        let err = store.read_blocking(|c| get(c, 7, unknown)).unwrap_err();
        assert!(
            err.to_string().contains("unknown job kind `bogus`"),
            "{err}"
        );
    }
}
