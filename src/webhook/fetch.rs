//! Created activities are fetched by `JobKind::WebhookFetch` jobs, which the
//! job runner executes at webhook priority. One queued job per athlete
//! collects every announced id, so a burst of creates can be served by one
//! list call instead of one call each.
//!
//! The payload is [`FetchPayload`]: `{"activity_ids": [17179869185, ...]}`.
//! Rules for the runner: skip (and never store) an id that has a tombstone
//! (`store::activity_edits::tombstone`), since it was deleted after the
//! create; a 404 right after a create means "not readable yet", so retry
//! with backoff and finally leave it to the gap-fill.
//!
//! Update events for an activity not stored yet are not kept: the fetch that
//! stores it returns its current state, renames included. The one gap is a
//! fetch already in flight when the rename happens; it stores the older title
//! until the activity's next refresh.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::store::jobs::{self, JobKind};
use crate::store::DbResult;

/// The payload of a `WebhookFetch` job.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchPayload {
    /// Activities announced by create events, oldest first, no repeats.
    pub activity_ids: Vec<i64>,
}

impl FetchPayload {
    pub fn parse(json: Option<&str>) -> DbResult<Self> {
        Ok(json
            .map(serde_json::from_str)
            .transpose()?
            .unwrap_or_default())
    }
}

/// Adds an activity to the athlete's queued fetch job, queueing one if none
/// waits. Returns the job id.
pub fn queue(conn: &Connection, athlete_id: i64, activity_id: i64, now: i64) -> DbResult<i64> {
    let fresh = serde_json::to_string(&FetchPayload {
        activity_ids: vec![activity_id],
    })?;
    // `enqueue` hands back the job already queued, if any: merge into it.
    let job = jobs::enqueue(conn, athlete_id, JobKind::WebhookFetch, Some(&fresh), now)?;
    let mut payload = FetchPayload::parse(payload_of(conn, job)?.as_deref())?;
    if !payload.activity_ids.contains(&activity_id) {
        payload.activity_ids.push(activity_id);
        set_payload(conn, job, &payload)?;
    }
    Ok(job)
}

/// Takes a deleted activity out of the athlete's queued fetch job, dropping
/// the job when nothing is left to fetch, so a delete costs no call.
pub fn forget(conn: &Connection, athlete_id: i64, activity_id: i64) -> DbResult<()> {
    let job: Option<(i64, Option<String>)> = conn
        .prepare_cached(
            "SELECT id, payload_json FROM jobs
             WHERE athlete_id = ?1 AND kind = ?2 AND status = 'queued'",
        )?
        .query_row(params![athlete_id, JobKind::WebhookFetch.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let Some((job, json)) = job else {
        return Ok(());
    };
    let mut payload = FetchPayload::parse(json.as_deref())?;
    let before = payload.activity_ids.len();
    payload.activity_ids.retain(|id| *id != activity_id);
    if payload.activity_ids.is_empty() {
        conn.execute("DELETE FROM jobs WHERE id = ?1", [job])?;
    } else if payload.activity_ids.len() != before {
        set_payload(conn, job, &payload)?;
    }
    Ok(())
}

fn payload_of(conn: &Connection, job: i64) -> DbResult<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT payload_json FROM jobs WHERE id = ?1")?
        .query_row([job], |r| r.get(0))
        .optional()?
        .flatten())
}

fn set_payload(conn: &Connection, job: i64, payload: &FetchPayload) -> DbResult<()> {
    conn.prepare_cached("UPDATE jobs SET payload_json = ?2 WHERE id = ?1 AND status = 'queued'")?
        .execute(params![job, serde_json::to_string(payload)?])?;
    Ok(())
}
