//! The job queue's table: every statement on `jobs` lives here. A job
//! belongs to one athlete; the runner claims by purpose in the order the
//! budget gives, and within a purpose by value ([`selection`]). One queued
//! job per athlete and kind: a new task merges into the queued one
//! ([`Task::merge`]).

use super::sql::{params, Connection, Dialect, OptionalExtension, Row};

use super::{instances, DbError, DbResult, Store};
use crate::model::job::{Counts, Task};
use crate::model::Purpose;

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

fn job_row(r: &dyn Row) -> DbResult<Job> {
    let kind: String = r.get(2)?;
    let payload: Option<String> = r.get(4)?;
    // An unreadable task is a defect to surface, never work to guess at.
    let task = Task::from_stored(&kind, payload.as_deref())
        .map_err(|e| DbError::Decode(format!("unreadable job of kind `{kind}`: {e}")))?;
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
fn queued_of_kind(conn: &dyn Connection, athlete_id: i64, kind: &str) -> DbResult<Option<Job>> {
    conn.prepare_cached(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE athlete_id = ?1 AND kind = ?2 AND status = 'queued'"
    ))?
    .query_row(params![athlete_id, kind], job_row)
    .optional()
}

fn set_task(conn: &dyn Connection, id: i64, task: &Task) -> DbResult<()> {
    conn.prepare_cached("UPDATE jobs SET payload_json = ?2 WHERE id = ?1")?
        .execute(params![id, task.payload_json()?])?;
    Ok(())
}

/// Queues a task due at `not_before`, or merges it into the athlete's queued
/// job of the same kind, which then is due at the earlier of the two times
/// (new work never waits behind a retry's backoff; creates held back by
/// their athlete's misses come due at that hold). Returns the job id.
pub fn enqueue(
    conn: &dyn Connection,
    athlete_id: i64,
    task: Task,
    not_before: i64,
    now: i64,
) -> DbResult<i64> {
    if let Some(mut queued) = queued_of_kind(conn, athlete_id, task.kind())? {
        queued.task.merge(task);
        set_task(conn, queued.id, &queued.task)?;
        conn.prepare_cached("UPDATE jobs SET not_before = least(not_before, ?2) WHERE id = ?1")?
            .execute(params![queued.id, not_before])?;
        return Ok(queued.id);
    }
    conn.query_row(
        "INSERT INTO jobs (athlete_id, kind, priority, payload_json, not_before, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
        params![
            athlete_id,
            task.kind(),
            task.purpose().rank(),
            task.payload_json()?,
            not_before,
            now
        ],
        |r| r.get(0),
    )
}

/// Holds the athlete's queued job of `kind` back until `until` at least.
pub fn hold_queued(conn: &dyn Connection, athlete_id: i64, kind: &str, until: i64) -> DbResult<()> {
    conn.prepare_cached(
        "UPDATE jobs SET not_before = greatest(not_before, ?3)
         WHERE athlete_id = ?1 AND kind = ?2 AND status = 'queued'",
    )?
    .execute(params![athlete_id, kind, until])?;
    Ok(())
}

/// Takes an activity a delete event removed out of the athlete's queued
/// jobs, dropping a job left with nothing to do, so a delete costs no call.
pub fn forget_activity(conn: &dyn Connection, athlete_id: i64, activity_id: i64) -> DbResult<()> {
    for kind in ["webhook_fetch", "enrich"] {
        let Some(queued) = queued_of_kind(conn, athlete_id, kind)? else {
            continue;
        };
        match queued.task.clone().without_activity(activity_id) {
            None => {
                conn.prepare_cached("DELETE FROM jobs WHERE id = ?1")?
                    .execute(params![queued.id])?;
            }
            Some(task) if task != queued.task => set_task(conn, queued.id, &task)?,
            Some(_) => {}
        }
    }
    Ok(())
}

/// One job of this athlete, if it exists.
pub fn get(conn: &dyn Connection, athlete_id: i64, id: i64) -> DbResult<Option<Job>> {
    conn.query_row(
        &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1 AND athlete_id = ?2"),
        params![id, athlete_id],
        job_row,
    )
    .optional()
}

/// How long a queued fetch waits before it weighs twice as much as a fresh
/// one: aging, so that nobody waits forever behind bigger or premium fetches.
pub const AGING_SECS: i64 = 6 * 3600;

/// The athlete's tier weight, as SQL over the tier joins of [`claim`]
/// (unknown or unset tiers weigh as the default tier).
const WEIGHT: &str = "COALESCE(w.weight, d.weight, 1)";

/// Whether the job's athlete is looking, as SQL over `athletes a`, with
/// `?2` the start of attention.
const LOOKING: &str = "(a.last_read_at IS NOT NULL AND a.last_read_at >= ?2)";

/// A fetch's value, as SQL over `jobs j` and the tier joins, with `?1` now:
/// tier weight × activities one call brings in, growing with age.
fn fetch_value(dialect: Dialect) -> String {
    let ids = dialect.json_array_length("j.payload_json", "activity_ids");
    format!(
        "{WEIGHT} * greatest(1, COALESCE({ids}, 1))
         * (1.0 + (?1 - j.created_at) * 1.0 / {AGING_SECS})"
    )
}

/// Which jobs serve a purpose and in what order, as SQL over `jobs j`,
/// `athletes a`, `sync_state s` and the tier joins; `?2` is the start of
/// attention (an athlete who read since is looking) and `?1` is now. Every
/// order names both, so one statement shape binds them all.
fn selection(purpose: Purpose, dialect: Dialect) -> (String, String) {
    let value = fetch_value(dialect);
    let readers_first = format!("{LOOKING} DESC, {WEIGHT} DESC");
    let (kinds, order) = match purpose {
        Purpose::Interactive => (
            "IN ('first_page', 'refresh')",
            format!("j.not_before, {LOOKING} DESC, j.id"),
        ),
        Purpose::Attention => ("= 'webhook_fetch'", format!("{value} DESC, j.id")),
        Purpose::Webhook => (
            "= 'webhook_fetch'",
            format!("{LOOKING} DESC, {value} DESC, j.id"),
        ),
        Purpose::GapFill => (
            "= 'gap_fill'",
            format!("{readers_first}, s.last_gap_fill_at IS NOT NULL, s.last_gap_fill_at, j.id"),
        ),
        Purpose::Backfill => ("= 'backfill'", format!("{readers_first}, j.id")),
        Purpose::Reconcile => (
            "= 'reconcile'",
            format!("{readers_first}, s.last_reconcile_at IS NOT NULL, s.last_reconcile_at, j.id"),
        ),
        Purpose::Enrichment => ("= 'enrich'", format!("j.not_before, {LOOKING} DESC, j.id")),
    };
    let filter = match purpose {
        // Only athletes who are looking are served as attention.
        Purpose::Attention => format!("j.kind {kinds} AND {LOOKING}"),
        _ => format!("j.kind {kinds}"),
    };
    (filter, order)
}

/// How long a job may stay running on a live instance before it counts as
/// abandoned (its outcome could not be recorded) and is queued again:
/// longer than the longest wait for a permit (a spent day waits for
/// midnight), and every step commits its progress as it goes. A job of an
/// instance that died goes back as soon as its heartbeat is stale.
pub const LEASE_SECS: i64 = 26 * 3600;

/// Returns to the queue the jobs left running by instances that are gone
/// (or that ran past [`LEASE_SECS`]): their progress is in their cursors,
/// committed step by step.
fn requeue_abandoned(conn: &dyn Connection, me: &str, now: i64) -> DbResult<usize> {
    conn.execute(
        &format!(
            "UPDATE jobs SET status = 'queued', claimed_by = NULL
             WHERE status = 'running'
               AND (started_at < ?1
                    OR ((claimed_by IS NULL OR claimed_by <> ?2) AND NOT {}))",
            instances::alive("jobs.claimed_by", 3)
        ),
        params![now - LEASE_SECS, me, instances::alive_since(now)],
    )
}

/// Marks the best runnable job of `purpose` running and returns it: due by
/// `now`, of a connected athlete (those needing re-authorization wait), and
/// of an athlete with nothing running, so one athlete's jobs never race on
/// their cursor or tokens.
fn claim(
    conn: &dyn Connection,
    me: &str,
    now: i64,
    purpose: Purpose,
    attention_since: i64,
) -> DbResult<Option<Job>> {
    let (filter, order) = selection(purpose, conn.dialect());
    conn.prepare_cached(&format!(
        "UPDATE jobs SET status = 'running', started_at = ?1, attempts = attempts + 1,
                 claimed_by = ?3
             WHERE id = (
                 SELECT j.id FROM jobs j JOIN athletes a ON a.id = j.athlete_id
                 LEFT JOIN sync_state s ON s.athlete_id = j.athlete_id
                 LEFT JOIN tier_weights w ON w.name = a.tier
                 LEFT JOIN tier_weights d ON d.is_default = 1
                 WHERE j.status = 'queued' AND j.not_before <= ?1 AND {filter}
                   AND a.status = 'connected'
                   AND NOT EXISTS (SELECT 1 FROM jobs r
                                   WHERE r.athlete_id = j.athlete_id AND r.status = 'running')
                 ORDER BY {order} LIMIT 1)
             RETURNING {JOB_COLUMNS}"
    ))?
    .query_row(params![now, attention_since, me], job_row)
    .optional()
}

/// When the next queued job of a connected athlete that is not yet due
/// becomes due (jobs already due wait for the budget or their athlete, not
/// for time).
fn next_due_after(conn: &dyn Connection, now: i64) -> DbResult<Option<i64>> {
    conn.query_row(
        "SELECT MIN(j.not_before) FROM jobs j JOIN athletes a ON a.id = j.athlete_id
         WHERE j.status = 'queued' AND a.status = 'connected' AND j.not_before > ?1",
        [now],
        |r| r.get(0),
    )
}

/// Jobs waiting in the queue, those of athletes needing re-authorization
/// included.
fn queued_count(conn: &dyn Connection) -> DbResult<i64> {
    conn.query_row(
        "SELECT COUNT(*) FROM jobs WHERE status = 'queued'",
        params![],
        |r| r.get(0),
    )
}

/// Where a queued job stands among the jobs that go before it (higher
/// purposes, then earlier due time and age): 1 means it is next. Jobs of
/// athletes who must connect again wait outside the line. None when the job
/// is not queued.
pub fn queue_position(conn: &dyn Connection, id: i64) -> DbResult<Option<i64>> {
    conn.query_row(
        "SELECT (SELECT COUNT(*) FROM jobs o JOIN athletes a ON a.id = o.athlete_id
                     WHERE o.status = 'queued' AND a.status = 'connected'
                       AND (o.priority, o.not_before, o.id) < (j.priority, j.not_before, j.id)) + 1
             FROM jobs j WHERE j.id = ?1 AND j.status = 'queued'",
        [id],
        |r| r.get(0),
    )
    .optional()
}

/// Whether the athlete has a job of this kind queued or running.
pub fn has_open(conn: &dyn Connection, athlete_id: i64, kind: &str) -> DbResult<bool> {
    conn.prepare_cached(
        "SELECT 1 FROM jobs WHERE athlete_id = ?1 AND kind = ?2
             AND status IN ('queued', 'running')",
    )?
    .exists(params![athlete_id, kind])
}

/// The athlete's queued jobs by kind.
pub fn queued_by_kind(conn: &dyn Connection, athlete_id: i64) -> DbResult<Vec<(String, i64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT kind, COUNT(*) FROM jobs WHERE athlete_id = ?1 AND status = 'queued'
         GROUP BY kind ORDER BY MIN(priority)",
    )?;
    let rows = stmt
        .query_map(params![athlete_id], |r| Ok((r.get(0)?, r.get(1)?)))?
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

/// Returns the jobs instance `me` runs to the queue (it is stopping).
pub fn release(conn: &dyn Connection, me: &str) -> DbResult<usize> {
    conn.execute(
        "UPDATE jobs SET status = 'queued', claimed_by = NULL
         WHERE status = 'running' AND claimed_by = ?1",
        params![me],
    )
}

/// Records the outcome of this instance's run of job `id`; a run another
/// instance has taken over (this one was given up for dead) records
/// nothing. Returns whether it was recorded.
fn record(conn: &dyn Connection, me: &str, id: i64, outcome: &Outcome, now: i64) -> DbResult<bool> {
    let (status, not_before, error, counts) = match outcome {
        Outcome::Done(counts) => ("done", None, None, *counts),
        Outcome::Requeue {
            counts,
            not_before,
            error,
        } => ("queued", Some(*not_before), error.as_deref(), *counts),
        Outcome::Failed(error) => ("failed", None, Some(error.as_str()), Counts::default()),
    };
    let recorded =
        conn.prepare_cached(
            "UPDATE jobs SET status = ?2, error = ?3, claimed_by = NULL,
                 not_before = COALESCE(?4, not_before),
                 finished_at = CASE WHEN ?2 = 'queued' THEN finished_at ELSE ?5 END,
                 fetched = fetched + ?6, new = new + ?7, updated = updated + ?8
             WHERE id = ?1 AND status = 'running' AND claimed_by = ?9",
        )?
        .execute(params![
            id,
            status,
            error,
            not_before,
            now,
            counts.fetched,
            counts.new,
            counts.updated,
            me
        ])? > 0;
    if let (true, Outcome::Requeue { not_before, .. }) = (recorded, outcome) {
        merge_into_queued_twin(conn, id, *not_before)?;
    }
    Ok(recorded)
}

/// A job put back in the queue while a task of its kind was queued for the
/// same athlete (a create announced while a fetch ran) folds into that one,
/// so the athlete keeps one queued job per kind.
fn merge_into_queued_twin(conn: &dyn Connection, id: i64, not_before: i64) -> DbResult<()> {
    let Some(requeued) = conn
        .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))?
        .query_row(params![id], job_row)
        .optional()?
    else {
        return Ok(());
    };
    let twin_queued = conn
        .prepare_cached(
            "SELECT 1 FROM jobs WHERE athlete_id = ?1 AND kind = ?2 AND status = 'queued'
               AND id <> ?3",
        )?
        .exists(params![requeued.athlete_id, requeued.task.kind(), id])?;
    if twin_queued {
        conn.prepare_cached("DELETE FROM jobs WHERE id = ?1")?
            .execute(params![id])?;
        enqueue(conn, requeued.athlete_id, requeued.task, not_before, 0)?;
    }
    Ok(())
}

/// Drops the athlete's queued job of `kind`: work another job just did.
pub fn drop_queued(conn: &dyn Connection, athlete_id: i64, kind: &str) -> DbResult<()> {
    conn.prepare_cached(
        "DELETE FROM jobs WHERE athlete_id = ?1 AND kind = ?2 AND status = 'queued'",
    )?
    .execute(params![athlete_id, kind])?;
    Ok(())
}

/// An athlete's queued fetch of announced activities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingFetch {
    /// Each activity with when it was announced.
    pub activities: Vec<(i64, i64)>,
    /// Fetches that go before it.
    pub ahead: i64,
    /// Whether it runs as attention (the athlete is looking).
    pub looking: bool,
    /// When it is due (a retry waits).
    pub not_before: i64,
}

/// The open jobs of one purpose (the priority they were queued at), as an
/// operator sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobsByPurpose {
    pub purpose: Purpose,
    pub queued: i64,
    /// Queued jobs whose time has come; the rest wait for a retry or a
    /// schedule.
    pub due: i64,
    /// Queued jobs of athletes who must connect again: they wait outside
    /// the line.
    pub waiting_for_reauth: i64,
    pub running: i64,
}

/// Queued and running jobs by purpose, highest priority first.
fn jobs_by_purpose(conn: &dyn Connection, now: i64) -> DbResult<Vec<JobsByPurpose>> {
    let mut stmt = conn.prepare_cached(
        "SELECT j.priority, COUNT(*) FILTER (WHERE j.status = 'queued'),
                COUNT(*) FILTER (WHERE j.status = 'queued' AND j.not_before <= ?1),
                COUNT(*) FILTER (WHERE j.status = 'queued' AND a.status <> 'connected'),
                COUNT(*) FILTER (WHERE j.status = 'running')
         FROM jobs j JOIN athletes a ON a.id = j.athlete_id
         WHERE j.status IN ('queued', 'running') GROUP BY j.priority ORDER BY j.priority",
    )?;
    let rows = stmt.query_map(params![now], |r| {
        let rank: i64 = r.get(0)?;
        let purpose = Purpose::from_rank(rank)
            .ok_or_else(|| DbError::Decode(format!("no purpose has priority {rank}")))?;
        Ok(JobsByPurpose {
            purpose,
            queued: r.get(1)?,
            due: r.get(2)?,
            waiting_for_reauth: r.get(3)?,
            running: r.get(4)?,
        })
    })?;
    rows.collect::<Result<_, _>>()
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

    /// Claims the best runnable job of the first purpose in `order` that has
    /// one, and says at which purpose it runs. Athletes who read since
    /// `attention_since` are looking.
    pub async fn claim_job(
        &self,
        now: i64,
        order: Vec<Purpose>,
        attention_since: i64,
    ) -> DbResult<Option<(Job, Purpose)>> {
        let me = self.instance.clone();
        self.write(move |tx| {
            requeue_abandoned(tx, &me, now)?;
            for purpose in order {
                if let Some(job) = claim(tx, &me, now, purpose, attention_since)? {
                    return Ok(Some((job, purpose)));
                }
            }
            Ok(None)
        })
        .await
    }

    /// Records how this instance's run of job `id` ended; false when
    /// another instance took the job over meanwhile.
    pub async fn record_job(&self, id: i64, outcome: Outcome, now: i64) -> DbResult<bool> {
        let me = self.instance.clone();
        self.write(move |tx| record(tx, &me, id, &outcome, now))
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

    /// Whether Strava announced this activity to the athlete and its fetch
    /// is still queued, which the read API tells apart from an absent one.
    pub async fn is_announced(&self, athlete_id: i64, activity_id: i64) -> DbResult<bool> {
        self.read(move |c| {
            Ok(
                queued_of_kind(c, athlete_id, "webhook_fetch")?.is_some_and(|queued| {
                    queued.task.clone().without_activity(activity_id).as_ref() != Some(&queued.task)
                }),
            )
        })
        .await
    }

    /// Queued and running jobs by purpose, highest priority first (see
    /// [`JobsByPurpose`]).
    pub async fn jobs_by_purpose(&self, now: i64) -> DbResult<Vec<JobsByPurpose>> {
        self.read(move |c| jobs_by_purpose(c, now)).await
    }

    /// The athlete's announced activities not fetched yet, and where their
    /// fetch stands among the others (see [`PendingFetch`]).
    pub async fn pending_fetch(
        &self,
        athlete_id: i64,
        now: i64,
        attention_since: i64,
    ) -> DbResult<Option<PendingFetch>> {
        self.read(move |c| {
            let value = fetch_value(c.dialect());
            let row = c
                .prepare_cached(&format!(
                    "WITH v AS (
                         SELECT j.athlete_id, j.not_before, j.created_at, j.payload_json,
                                {LOOKING} AS looking, {value} AS value
                         FROM jobs j JOIN athletes a ON a.id = j.athlete_id
                         LEFT JOIN tier_weights w ON w.name = a.tier
                         LEFT JOIN tier_weights d ON d.is_default = 1
                         WHERE j.status = 'queued' AND j.kind = 'webhook_fetch'
                           AND a.status = 'connected')
                     SELECT (SELECT COUNT(*) FROM v o WHERE o.looking > me.looking
                               OR (o.looking = me.looking AND o.value > me.value)),
                            me.looking, me.not_before, me.created_at, me.payload_json
                     FROM v me WHERE me.athlete_id = ?3"
                ))?
                .query_row(params![now, attention_since, athlete_id], |r| {
                    Ok((
                        r.get::<i64>(0)?,
                        r.get::<bool>(1)?,
                        r.get::<i64>(2)?,
                        r.get::<i64>(3)?,
                        r.get::<Option<String>>(4)?,
                    ))
                })
                .optional()?;
            let Some((ahead, looking, not_before, queued_at, payload)) = row else {
                return Ok(None);
            };
            let ids = match Task::from_stored("webhook_fetch", payload.as_deref())? {
                Task::WebhookFetch(fetch) => fetch.activity_ids,
                _ => Vec::new(),
            };
            let mut activities = Vec::with_capacity(ids.len());
            for id in ids {
                let announced = super::inbox::oldest_create_event(c, athlete_id, &[id])?;
                activities.push((id, announced.unwrap_or(queued_at)));
            }
            Ok(Some(PendingFetch {
                activities,
                ahead,
                looking,
                not_before,
            }))
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
    conn: &dyn Connection,
) -> DbResult<std::collections::HashMap<i64, (i64, i64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT athlete_id, COUNT(*) FILTER (WHERE status = 'queued'),
                COUNT(*) FILTER (WHERE status = 'failed') FROM jobs
         GROUP BY athlete_id",
    )?;
    let rows = stmt.query_map(params![], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))?;
    rows.collect::<Result<_, _>>()
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
                    params![],
                )?;
                let unknown = tx.query_row("SELECT MAX(id) FROM jobs", params![], |r| r.get(0))?;
                Ok((known, unknown))
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
                let first = enqueue(tx, 7, Task::fetch(vec![1]), 100, 0)?;
                assert_eq!(enqueue(tx, 7, Task::fetch(vec![2]), 50, 0)?, first);
                let job = get(tx, 7, first)?.unwrap();
                assert_eq!(
                    job.task.clone().without_activity(2),
                    Some(Task::fetch(vec![1]))
                );
                let due: i64 =
                    tx.query_row("SELECT not_before FROM jobs WHERE id = ?1", [first], |r| {
                        r.get(0)
                    })?;
                assert_eq!(due, 50, "the earliest wish wins");
                forget_activity(tx, 7, 1)?;
                assert_eq!(get(tx, 7, first)?.unwrap().task, Task::fetch(vec![2]));
                forget_activity(tx, 7, 2)?;
                assert_eq!(get(tx, 7, first)?, None, "nothing left to fetch");
                Ok(())
            })
            .unwrap();
    }

    #[tokio::test]
    async fn jobs_are_claimed_by_purpose_in_the_order_asked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("j.db")).unwrap();
        store
            .set_tiers(vec![("standard".into(), 1)], "standard".into())
            .await
            .unwrap();
        let tasks = [
            Task::Backfill,
            Task::Refresh,
            Task::fetch(vec![5]),
            Task::GapFill,
            Task::Reconcile,
            Task::Enrich(Default::default()),
        ];
        for (athlete, task) in (1..).zip(tasks) {
            store
                .write(move |tx| {
                    athletes::upsert(tx, &serde_json::json!({"id": athlete}), "read", 0)?;
                    enqueue(tx, athlete, task, 0, 0).map(|_| ())
                })
                .await
                .unwrap();
        }
        let mut claimed = Vec::new();
        let order: Vec<Purpose> = Purpose::ALL.into_iter().rev().collect();
        while let Some((job, purpose)) = store.claim_job(10, order.clone(), 0).await.unwrap() {
            claimed.push((job.task.kind(), purpose));
        }
        assert_eq!(
            claimed,
            [
                ("reconcile", Purpose::Reconcile),
                ("enrich", Purpose::Enrichment),
                ("backfill", Purpose::Backfill),
                ("gap_fill", Purpose::GapFill),
                ("webhook_fetch", Purpose::Webhook),
                ("refresh", Purpose::Interactive),
            ]
        );
    }

    #[test]
    fn open_jobs_are_counted_by_the_purpose_they_were_queued_at() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("j.db")).unwrap();
        let counted = store
            .write_blocking(|tx| {
                for id in 1..=3 {
                    athletes::upsert(tx, &serde_json::json!({"id": id}), "read", 0)?;
                }
                enqueue(tx, 1, Task::Backfill, 0, 0)?;
                enqueue(tx, 2, Task::Backfill, 500, 0)?;
                enqueue(tx, 3, Task::Backfill, 0, 0)?;
                enqueue(tx, 1, Task::fetch(vec![9]), 0, 0)?;
                athletes::set_status(tx, 3, athletes::Status::NeedsReauth, 0)?;
                claim(tx, "me", 10, Purpose::Webhook, 0)?.unwrap();
                jobs_by_purpose(tx, 10)
            })
            .unwrap();
        assert_eq!(
            counted,
            [
                JobsByPurpose {
                    purpose: Purpose::Webhook,
                    queued: 0,
                    due: 0,
                    waiting_for_reauth: 0,
                    running: 1,
                },
                JobsByPurpose {
                    purpose: Purpose::Backfill,
                    queued: 3,
                    due: 2,
                    waiting_for_reauth: 1,
                    running: 0,
                },
            ]
        );
    }

    #[test]
    fn a_job_put_back_while_its_twin_is_queued_folds_into_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("j.db")).unwrap();
        store
            .write_blocking(|tx| {
                athletes::upsert(tx, &serde_json::json!({"id": 7}), "read", 0)?;
                let running = enqueue(tx, 7, Task::fetch(vec![1]), 0, 0)?;
                let job = claim(tx, "me", 10, Purpose::Webhook, 0)?.unwrap();
                assert_eq!(job.id, running);
                // A create announced while the fetch ran queues a second one.
                let queued = enqueue(tx, 7, Task::fetch(vec![2]), 10, 10)?;
                assert_ne!(queued, running);
                let retry = Outcome::Requeue {
                    counts: Counts::default(),
                    not_before: 40,
                    error: None,
                };
                record(tx, "me", running, &retry, 10)?;
                assert_eq!(get(tx, 7, running)?, None);
                let merged = get(tx, 7, queued)?.unwrap().task;
                assert_eq!(merged.without_activity(1), Some(Task::fetch(vec![2])));
                Ok(())
            })
            .unwrap();
    }
}
