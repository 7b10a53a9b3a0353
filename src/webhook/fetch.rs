//! Created activities are fetched by `JobKind::WebhookFetch` jobs, which the
//! job runner executes at webhook priority. One queued job per athlete
//! collects every announced id, so a burst of creates can be served by one
//! list call instead of one call each.
//!
//! The payload is [`FetchPayload`]: `{"activity_ids": [17179869185, ...]}`,
//! plus `"attempts": {"<id>": n}` once the sync engine's fetch
//! (`sync::webhook_fetch`) has retried an id that was not readable yet.
//! Rules for the runner: skip (and never store) an id that has a tombstone
//! (`store::activity_edits::tombstone`), since it was deleted after the
//! create; a 404 right after a create means "not readable yet", so retry
//! with backoff and finally leave it to the gap-fill.
//!
//! Update events for an activity not stored yet are not kept: the fetch that
//! stores it returns its current state, renames included. The one gap is a
//! fetch already in flight when the rename happens; it stores the older title
//! until the activity's next refresh.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::store::jobs::{self, JobKind};
use crate::store::DbResult;

/// The payload of a `WebhookFetch` job.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchPayload {
    /// Activities announced by create events, oldest first, no repeats.
    pub activity_ids: Vec<i64>,
    /// Tries so far of ids that answered 404 ("not readable yet").
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attempts: BTreeMap<i64, u32>,
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
    let add = FetchPayload {
        activity_ids: vec![activity_id],
        ..FetchPayload::default()
    };
    merge(conn, athlete_id, &add, now)
}

/// Merges ids (and their tries) into the athlete's queued fetch job, or
/// queues one, due at `not_before` or earlier: the earliest wish wins, so a
/// fresh create never waits behind a retry's backoff. Returns the job id.
pub fn merge(
    conn: &Connection,
    athlete_id: i64,
    add: &FetchPayload,
    not_before: i64,
) -> DbResult<i64> {
    // `enqueue` hands back the job already queued, if any: merge into it.
    let job = jobs::enqueue(conn, athlete_id, JobKind::WebhookFetch, None, not_before)?;
    let mut payload = FetchPayload::parse(payload_of(conn, job)?.as_deref())?;
    for &activity in &add.activity_ids {
        if !payload.activity_ids.contains(&activity) {
            payload.activity_ids.push(activity);
        }
    }
    for (&activity, &tries) in &add.attempts {
        let slot = payload.attempts.entry(activity).or_default();
        *slot = (*slot).max(tries);
    }
    set_payload(conn, job, &payload)?;
    conn.prepare_cached("UPDATE jobs SET not_before = MIN(not_before, ?2) WHERE id = ?1")?
        .execute(params![job, not_before])?;
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
