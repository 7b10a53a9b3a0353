//! The job queue's table: every statement on `jobs` lives here. A job
//! belongs to one athlete and runs at its task's priority; the queue is
//! ordered by priority, then due time, then age. One queued job per athlete
//! and kind: a new task merges into the queued one ([`Task::merge`]).

use rusqlite::{params, Connection, OptionalExtension};

use super::{DbResult, Store};
use crate::model::job::{Counts, Task};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: i64,
    pub athlete_id: i64,
    pub task: Task,
    pub status: String,
    /// Times the job was claimed, this run included.
    pub attempts: i64,
    pub fetched: i64,
    pub new: i64,
    pub updated: i64,
    pub error: Option<String>,
    pub created_at: i64,
}

const JOB_COLUMNS: &str =
    "id, athlete_id, kind, status, payload_json, attempts, fetched, new, updated, error, created_at";

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    let kind: String = r.get(2)?;
    let payload: Option<String> = r.get(4)?;
    // An unreadable task is a defect to surface, never work to guess at.
    let task = Task::from_stored(&kind, payload.as_deref()).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            2,
            rusqlite::types::Type::Text,
            format!("unreadable job of kind `{kind}`: {e}").into(),
        )
    })?;
    Ok(Job {
        id: r.get(0)?,
        athlete_id: r.get(1)?,
        task,
        status: r.get(3)?,
        attempts: r.get(5)?,
        fetched: r.get(6)?,
        new: r.get(7)?,
        updated: r.get(8)?,
        error: r.get(9)?,
        created_at: r.get(10)?,
    })
}

/// The athlete's queued job of this task's kind, if any.
fn queued_of_kind(conn: &Connection, athlete_id: i64, kind: &str) -> DbResult<Option<Job>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE athlete_id = ?1 AND kind = ?2 AND status = 'queued'"
        ))?
        .query_row(params![athlete_id, kind], job_row)
        .optional()?)
}

fn set_task(conn: &Connection, id: i64, task: &Task) -> DbResult<()> {
    conn.prepare_cached("UPDATE jobs SET payload_json = ?2 WHERE id = ?1")?
        .execute(params![id, task.payload_json()?])?;
    Ok(())
}

/// Queues a task due at `not_before`, or merges it into the athlete's queued
/// job of the same kind, which then is due at the earlier of the two times
/// (a fresh create never waits behind a retry's backoff). Returns the job id.
pub fn enqueue(
    conn: &Connection,
    athlete_id: i64,
    task: Task,
    not_before: i64,
    now: i64,
) -> DbResult<i64> {
    if let Some(mut queued) = queued_of_kind(conn, athlete_id, task.kind())? {
        queued.task.merge(task);
        set_task(conn, queued.id, &queued.task)?;
        conn.prepare_cached("UPDATE jobs SET not_before = MIN(not_before, ?2) WHERE id = ?1")?
            .execute(params![queued.id, not_before])?;
        return Ok(queued.id);
    }
    conn.prepare_cached(
        "INSERT INTO jobs (athlete_id, kind, priority, payload_json, not_before, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        athlete_id,
        task.kind(),
        task.purpose().rank(),
        task.payload_json()?,
        not_before,
        now
    ])?;
    Ok(conn.last_insert_rowid())
}

/// Takes an activity a delete event removed out of the athlete's queued
/// jobs, dropping a job left with nothing to do, so a delete costs no call.
pub fn forget_activity(conn: &Connection, athlete_id: i64, activity_id: i64) -> DbResult<()> {
    for kind in ["webhook_fetch", "enrich"] {
        let Some(queued) = queued_of_kind(conn, athlete_id, kind)? else {
            continue;
        };
        match queued.task.clone().without_activity(activity_id) {
            None => {
                conn.prepare_cached("DELETE FROM jobs WHERE id = ?1")?
                    .execute([queued.id])?;
            }
            Some(task) if task != queued.task => set_task(conn, queued.id, &task)?,
            Some(_) => {}
        }
    }
    Ok(())
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
fn claim(conn: &Connection, now: i64, max_rank: i64) -> DbResult<Option<Job>> {
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
fn next_due_after(conn: &Connection, now: i64) -> DbResult<Option<i64>> {
    Ok(conn.query_row(
        "SELECT MIN(j.not_before) FROM jobs j JOIN athletes a ON a.id = j.athlete_id
         WHERE j.status = 'queued' AND a.status = 'connected' AND j.not_before > ?1",
        [now],
        |r| r.get(0),
    )?)
}

/// Jobs waiting in the queue, those of athletes needing re-authorization
/// included.
fn queued_count(conn: &Connection) -> DbResult<i64> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM jobs WHERE status = 'queued'",
        [],
        |r| r.get(0),
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
pub fn due_besides(conn: &Connection, kind: &str, now: i64) -> DbResult<i64> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND kind <> ?1 AND not_before <= ?2",
        params![kind, now],
        |r| r.get(0),
    )?)
}

/// Whether the athlete has a job of this kind queued or running.
pub fn has_open(conn: &Connection, athlete_id: i64, kind: &str) -> DbResult<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM jobs WHERE athlete_id = ?1 AND kind = ?2
             AND status IN ('queued', 'running')",
        )?
        .exists(params![athlete_id, kind])?)
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

/// How a run of a job ended, as the queue records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Finished, with its last counts.
    Done(Counts),
    /// Back to the queue at `not_before`, with its counts so far and, after a
    /// failure, why it waits.
    Requeue {
        counts: Counts,
        not_before: i64,
        error: Option<String>,
    },
    Failed(String),
}

fn record(conn: &Connection, id: i64, outcome: &Outcome, now: i64) -> DbResult<()> {
    let (status, not_before, error, counts) = match outcome {
        Outcome::Done(counts) => ("done", None, None, *counts),
        Outcome::Requeue {
            counts,
            not_before,
            error,
        } => ("queued", Some(*not_before), error.as_deref(), *counts),
        Outcome::Failed(error) => ("failed", None, Some(error.as_str()), Counts::default()),
    };
    conn.prepare_cached(
        "UPDATE jobs SET status = ?2, error = ?3,
             not_before = COALESCE(?4, not_before),
             finished_at = CASE WHEN ?2 = 'queued' THEN finished_at ELSE ?5 END,
             fetched = fetched + ?6, new = new + ?7, updated = updated + ?8
         WHERE id = ?1",
    )?
    .execute(params![
        id,
        status,
        error,
        not_before,
        now,
        counts.fetched,
        counts.new,
        counts.updated
    ])?;
    Ok(())
}

/// The queue as the runner sees it when idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueState {
    /// When the next job not yet due becomes due.
    pub next_due: Option<i64>,
    pub queued: i64,
}

impl Store {
    /// Queues a task for an athlete (merging it into their queued job of the
    /// same kind). Returns the job id.
    pub async fn enqueue(
        &self,
        athlete_id: i64,
        task: Task,
        not_before: i64,
        now: i64,
    ) -> DbResult<i64> {
        self.write(move |tx| enqueue(tx, athlete_id, task, not_before, now))
            .await
    }

    /// Claims the most urgent runnable job at `max_rank` or above.
    pub async fn claim_job(&self, now: i64, max_rank: i64) -> DbResult<Option<Job>> {
        self.write(move |tx| claim(tx, now, max_rank)).await
    }

    /// Records how a run of job `id` ended.
    pub async fn record_job(&self, id: i64, outcome: Outcome, now: i64) -> DbResult<()> {
        self.write(move |tx| record(tx, id, &outcome, now)).await
    }

    /// Returns jobs left running by a previous process to the queue; their
    /// progress is in their cursors, committed page by page.
    pub async fn requeue_interrupted_jobs(&self) -> DbResult<usize> {
        self.write(|tx| {
            Ok(tx.execute(
                "UPDATE jobs SET status = 'queued' WHERE status = 'running'",
                [],
            )?)
        })
        .await
    }

    pub async fn queue_state(&self, now: i64) -> DbResult<QueueState> {
        self.read(move |c| {
            Ok(QueueState {
                next_due: next_due_after(c, now)?,
                queued: queued_count(c)?,
            })
        })
        .await
    }

    /// One of the athlete's jobs and, while it is queued, its place in line.
    pub async fn job_with_position(
        &self,
        athlete_id: i64,
        id: i64,
    ) -> DbResult<Option<(Job, Option<i64>)>> {
        self.read(move |c| {
            let Some(job) = get(c, athlete_id, id)? else {
                return Ok(None);
            };
            Ok(Some((job, queue_position(c, id)?)))
        })
        .await
    }
}

/// Each athlete's queued and failed job counts.
pub fn queued_and_failed_by_athlete(
    conn: &Connection,
) -> DbResult<std::collections::HashMap<i64, (i64, i64)>> {
    let mut stmt = conn.prepare(
        "SELECT athlete_id, SUM(status = 'queued'), SUM(status = 'failed') FROM jobs
         GROUP BY athlete_id",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::athletes;

    #[test]
    fn a_row_of_unknown_kind_is_an_error_not_a_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("j.db")).unwrap();
        let (known, unknown) = store
            .write_blocking(|tx| {
                athletes::upsert(tx, &serde_json::json!({"id": 7}), "activity:read", 0)?;
                let known = enqueue(tx, 7, Task::Backfill, 0, 0)?;
                tx.execute(
                    "INSERT INTO jobs (athlete_id, kind, priority, created_at)
                     VALUES (7, 'bogus', 0, 0)",
                    [],
                )?;
                Ok((known, tx.last_insert_rowid()))
            })
            .unwrap();
        let job = store.read_blocking(|c| get(c, 7, known)).unwrap().unwrap();
        assert_eq!(job.task, Task::Backfill);
        let err = store.read_blocking(|c| get(c, 7, unknown)).unwrap_err();
        assert!(err.to_string().contains("unknown variant `bogus`"), "{err}");
    }

    #[test]
    fn a_task_merges_into_the_queued_job_of_its_kind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("j.db")).unwrap();
        store
            .write_blocking(|tx| {
                athletes::upsert(tx, &serde_json::json!({"id": 7}), "activity:read", 0)?;
                let first = enqueue(tx, 7, Task::fetch(1), 100, 0)?;
                assert_eq!(enqueue(tx, 7, Task::fetch(2), 50, 0)?, first);
                let job = get(tx, 7, first)?.unwrap();
                assert_eq!(job.task.clone().without_activity(2), Some(Task::fetch(1)));
                let due: i64 =
                    tx.query_row("SELECT not_before FROM jobs WHERE id = ?1", [first], |r| {
                        r.get(0)
                    })?;
                assert_eq!(due, 50, "the earliest wish wins");
                forget_activity(tx, 7, 1)?;
                assert_eq!(get(tx, 7, first)?.unwrap().task, Task::fetch(2));
                forget_activity(tx, 7, 2)?;
                assert_eq!(get(tx, 7, first)?, None, "nothing left to fetch");
                Ok(())
            })
            .unwrap();
    }
}
