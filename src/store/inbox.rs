//! The webhook inbox (`webhook_events`): every Strava event we acknowledge is
//! committed here before the 200, then applied by the webhook worker. The
//! dedup key makes Strava's retries and duplicate deliveries collapse into
//! one row, so an event is applied once however often it arrives.

use std::collections::BTreeMap;

use super::sql::{params, Connection, Row};
use serde::Serialize;

use super::{athletes, subscription, DbError, DbResult, Store};
pub use crate::model::event::{AspectType, Event, ObjectType};

/// Where an inbox event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    /// Applied.
    Done,
    /// Acknowledged but nothing to apply (unknown athlete, stale, duplicate).
    Ignored,
    /// Retries exhausted; waits for an operator's replay.
    Failed,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Pending,
        Status::Done,
        Status::Ignored,
        Status::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Done => "done",
            Status::Ignored => "ignored",
            Status::Failed => "failed",
        }
    }
}

/// An event read back from the inbox for applying or reporting.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Stored {
    pub id: i64,
    #[serde(flatten)]
    pub event: Event,
    pub attempts: i64,
    pub received_at: i64,
    pub last_error: Option<String>,
}

/// Commits an event unless an identical one is already in the inbox (the
/// dedup key is the inbox's only unique key besides the row id). Returns
/// whether it was new.
pub fn insert(conn: &dyn Connection, event: &Event, now: i64) -> DbResult<bool> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO webhook_events (dedup_key, object_type, object_id, aspect_type,
                 owner_id, event_time, updates_json, received_at, next_attempt_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            event.dedup_key(),
            event.object_type.as_str(),
            event.object_id,
            event.aspect_type.as_str(),
            event.owner_id,
            event.event_time,
            serde_json::to_string(&event.updates)?,
            now,
        ])?;
    Ok(inserted == 1)
}

/// What the callback does with events, inside the caller's transaction:
/// refuse another subscription's (any is taken while none is stored),
/// acknowledge without keeping an unconnected athlete's, and otherwise
/// insert unless an identical one is already in the inbox. The
/// subscription and each athlete ([`athletes::Known`]) are looked up once
/// for all the events.
pub(super) struct Receiving<'c> {
    conn: &'c dyn Connection,
    ours: Option<i64>,
    connected: athletes::Known,
}

impl<'c> Receiving<'c> {
    pub(super) fn new(conn: &'c dyn Connection) -> DbResult<Self> {
        Ok(Self {
            conn,
            ours: subscription::id(conn)?,
            connected: athletes::Known::default(),
        })
    }

    pub(super) fn receive(
        &mut self,
        event: &Event,
        claimed_subscription: i64,
        now: i64,
    ) -> DbResult<Received> {
        if self.ours.is_some_and(|ours| ours != claimed_subscription) {
            return Ok(Received::Foreign);
        }
        if !self.connected.check(self.conn, event.owner_id)? {
            return Ok(Received::Ignored);
        }
        Ok(if insert(self.conn, event, now)? {
            Received::Accepted
        } else {
            Received::Duplicate
        })
    }
}

const COLUMNS: &str =
    "id, object_type, object_id, aspect_type, owner_id, event_time, updates_json, attempts,
     received_at, last_error";

fn stored(r: &dyn Row) -> DbResult<Stored> {
    Ok(Stored {
        id: r.get(0)?,
        event: Event {
            object_type: from_text(r, 1, |s| serde_json::Value::String(s).to_string())?,
            object_id: r.get(2)?,
            aspect_type: from_text(r, 3, |s| serde_json::Value::String(s).to_string())?,
            owner_id: r.get(4)?,
            event_time: r.get(5)?,
            updates: from_text(r, 6, |s| s)?,
        },
        attempts: r.get(7)?,
        received_at: r.get(8)?,
        last_error: r.get(9)?,
    })
}

/// Parses a text column as JSON after `as_json` turns it into JSON text.
fn from_text<T: serde::de::DeserializeOwned>(
    r: &dyn Row,
    i: usize,
    as_json: impl FnOnce(String) -> String,
) -> DbResult<T> {
    serde_json::from_str(&as_json(r.get(i)?))
        .map_err(|e| DbError::Decode(format!("column {i}: {e}")))
}

/// Pending events due by `now`, oldest `event_time` first, leaving out any
/// event of an object that still has an earlier pending event (one waiting
/// for a retry holds the later ones back, so one object's events apply in
/// `event_time` order). Walks the pending events in that order (the
/// `webhook_events_pending` index) and stops at `limit`, so a batch costs
/// the same however deep the backlog.
pub fn next_due(conn: &dyn Connection, now: i64, limit: usize) -> DbResult<Vec<Stored>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM webhook_events e {}
         WHERE status = 'pending' AND next_attempt_at <= ?1
           AND NOT EXISTS (
               SELECT 1 FROM webhook_events p
               WHERE p.object_type = e.object_type AND p.object_id = e.object_id
                 AND p.status = 'pending'
                 AND (p.event_time, p.id) < (e.event_time, e.id))
         ORDER BY event_time, id
         LIMIT ?2",
        conn.dialect().indexed_by("webhook_events_pending")
    ))?;
    let rows = stmt.query_map(params![now, limit as i64], stored)?;
    rows.collect::<Result<_, _>>()
}

/// Settles an event as applied or ignored.
pub fn settle(conn: &dyn Connection, id: i64, status: Status, now: i64) -> DbResult<()> {
    conn.prepare_cached(
        "UPDATE webhook_events SET status = ?2, applied_at = ?3,
             attempts = attempts + 1, last_error = NULL
         WHERE id = ?1",
    )?
    .execute(params![id, status.as_str(), now])?;
    Ok(())
}

/// Records a failed attempt: retry at `retry_at`, or mark the event failed
/// when there is none left.
pub fn record_failure(
    conn: &dyn Connection,
    id: i64,
    error: &str,
    retry_at: Option<i64>,
) -> DbResult<()> {
    let (status, next) = match retry_at {
        Some(at) => (Status::Pending, at),
        None => (Status::Failed, 0),
    };
    conn.prepare_cached(
        "UPDATE webhook_events SET attempts = attempts + 1, last_error = ?2, status = ?3,
             next_attempt_at = CASE WHEN ?3 = 'pending' THEN ?4 ELSE next_attempt_at END
         WHERE id = ?1",
    )?
    .execute(params![id, error, status.as_str(), next])?;
    Ok(())
}

/// The earliest create event received for any of these activities.
pub fn oldest_create_event(
    conn: &dyn Connection,
    owner_id: i64,
    ids: &[i64],
) -> DbResult<Option<i64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT MIN(event_time) FROM webhook_events
         WHERE object_type = 'activity' AND aspect_type = 'create' AND object_id = ?1
           AND owner_id = ?2",
    )?;
    let mut oldest: Option<i64> = None;
    for &id in ids {
        let t: Option<i64> = stmt.query_row(params![id, owner_id], |r| r.get(0))?;
        oldest = match (oldest, t) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(oldest)
}

/// How many events stand in each status (every status listed, zeros too).
pub fn counts(conn: &dyn Connection) -> DbResult<BTreeMap<&'static str, i64>> {
    let mut out: BTreeMap<&'static str, i64> =
        Status::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    let mut stmt =
        conn.prepare_cached("SELECT status, COUNT(*) FROM webhook_events GROUP BY status")?;
    let rows = stmt.query_map(params![], |r| Ok((r.get::<String>(0)?, r.get::<i64>(1)?)))?;
    for row in rows {
        let (status, n) = row?;
        if let Some(s) = Status::ALL.iter().find(|s| s.as_str() == status) {
            out.insert(s.as_str(), n);
        }
    }
    Ok(out)
}

/// Events waiting to be applied (the inbox depth).
pub fn depth(conn: &dyn Connection) -> DbResult<i64> {
    conn.query_row(
        "SELECT COUNT(*) FROM webhook_events WHERE status = 'pending'",
        params![],
        |r| r.get(0),
    )
}

/// The most recent failed events, newest first.
pub fn failed(conn: &dyn Connection, limit: usize) -> DbResult<Vec<Stored>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM webhook_events WHERE status = 'failed'
         ORDER BY received_at DESC, id DESC LIMIT ?1"
    ))?;
    let rows = stmt.query_map(params![limit as i64], stored)?;
    rows.collect::<Result<_, _>>()
}

/// Puts every failed event back in the queue with a fresh set of attempts.
/// Returns how many.
pub fn replay_failed(conn: &dyn Connection, now: i64) -> DbResult<usize> {
    conn.execute(
        "UPDATE webhook_events SET status = 'pending', attempts = 0, next_attempt_at = ?1
         WHERE status = 'failed'",
        [now],
    )
}

/// Deletes settled events last attempted before `before`, at most `limit` of
/// them. They are kept for a while so Strava's retries still find their
/// dedup key. (`next_attempt_at` is never earlier than arrival and is indexed
/// with the status.)
pub fn prune(conn: &dyn Connection, before: i64, limit: usize) -> DbResult<usize> {
    conn.execute(
        "DELETE FROM webhook_events WHERE id IN (
             SELECT id FROM webhook_events
             WHERE status IN ('done', 'ignored') AND next_attempt_at < ?1 LIMIT ?2)",
        params![before, limit as i64],
    )
}

/// What the callback did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    Accepted,
    /// Already in the inbox: a retry or a duplicate delivery.
    Duplicate,
    /// For an athlete who is not connected: acknowledged, not kept, so
    /// events nobody can use cannot grow the inbox.
    Ignored,
    /// It names another subscription than ours.
    Foreign,
}

/// The inbox as an operator sees it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InboxReport {
    pub subscription_id: Option<i64>,
    pub counts: BTreeMap<&'static str, i64>,
    pub failed: Vec<Stored>,
}

impl Store {
    pub async fn inbox_depth(&self) -> DbResult<i64> {
        self.read(depth).await
    }

    /// Deletes up to `limit` settled events last attempted before `before`.
    /// Tombstones of deletes before `before` go too: by then no retry of
    /// the create is coming and every listing has caught up with the delete.
    pub async fn prune_events(&self, before: i64, limit: usize) -> DbResult<usize> {
        self.write(move |tx| {
            let pruned = prune(tx, before, limit)?;
            super::lifecycle::prune(tx, before, limit)?;
            Ok(pruned)
        })
        .await
    }

    /// Counts by status and the newest `failed_shown` failed events.
    pub async fn inbox_report(&self, failed_shown: usize) -> DbResult<InboxReport> {
        self.read(move |c| {
            Ok(InboxReport {
                subscription_id: subscription::id(c)?,
                counts: counts(c)?,
                failed: failed(c, failed_shown)?,
            })
        })
        .await
    }

    /// Puts every failed event back in the queue. Returns how many.
    pub async fn replay_failed_events(&self, now: i64) -> DbResult<usize> {
        self.write(move |tx| replay_failed(tx, now)).await
    }
}
