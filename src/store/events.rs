//! Applying webhook events from the inbox, a batch per transaction, without
//! calling Strava: creates join the athlete's queued fetch, updates and
//! deletes are applied from the event itself, a deauthorization purges the
//! athlete. The lifecycle rule ([`lifecycle::may_store`]) decides what a
//! create or delete may do.

use super::sql::Connection;

use super::activity_edits::{self, FieldUpdates, UpdateResult};
use super::inbox::{self, Status, Stored};
use super::lifecycle::{self, Applying};
use super::{activities, athletes, jobs, sync_state, DbResult, Store};
use crate::model::event::{AspectType, Event, ObjectType};
use crate::model::job::Task;

/// How one event of a batch ended.
#[derive(Debug)]
pub struct Settled {
    pub stored: Stored,
    pub outcome: Outcome,
}

#[derive(Debug)]
pub enum Outcome {
    /// Applied or ignored, and why (for the metrics).
    Settled(&'static str),
    /// Rolled back and recorded on the event: due again at `retry_at`, or
    /// failed for good when there is none.
    Failed {
        error: String,
        retry_at: Option<i64>,
    },
}

impl Store {
    /// Applies up to `limit` events due at `now` (see [`inbox::next_due`]:
    /// at most one per object, the earliest) in one transaction, so a
    /// backlog costs one commit per batch rather than one per event. Each
    /// event runs under its own savepoint: one that fails is rolled back
    /// alone and its failure recorded, due again at `retry_at(attempts)`
    /// (attempts counting this one) or failed when that is None, while the
    /// others commit.
    pub async fn apply_due_events(
        &self,
        now: i64,
        limit: usize,
        retry_at: impl Fn(i64) -> Option<i64> + Send + 'static,
    ) -> DbResult<Vec<Settled>> {
        self.write(move |tx| {
            let due = inbox::next_due(tx, now, limit)?;
            let mut out = Vec::with_capacity(due.len());
            for stored in due {
                tx.execute_batch("SAVEPOINT event")?;
                let outcome = match apply(tx, &stored.event, stored.received_at, now) {
                    Ok((status, why)) => {
                        inbox::settle(tx, stored.id, status, now)?;
                        Outcome::Settled(why)
                    }
                    Err(e) => {
                        tx.execute_batch("ROLLBACK TO event")?;
                        let (error, retry_at) = (e.to_string(), retry_at(stored.attempts + 1));
                        inbox::record_failure(tx, stored.id, &error, retry_at)?;
                        Outcome::Failed { error, retry_at }
                    }
                };
                tx.execute_batch("RELEASE event")?;
                out.push(Settled { stored, outcome });
            }
            Ok(out)
        })
        .await
    }
}

/// Applies one event and says how it settled and why.
fn apply(
    tx: &dyn Connection,
    event: &Event,
    received_at: i64,
    now: i64,
) -> DbResult<(Status, &'static str)> {
    if athletes::get(tx, event.owner_id)?.is_none() {
        return Ok((Status::Ignored, "unknown_athlete"));
    }
    sync_state::record_webhook_at(tx, event.owner_id, received_at)?;
    let (owner, id, at) = (event.owner_id, event.object_id, event.event_time);
    if event.object_type == ObjectType::Activity
        && activities::owner(tx, id)?.is_some_and(|stored| stored != owner)
    {
        // Another athlete's activity: an event only touches its owner's.
        return Ok((Status::Ignored, "not_owner"));
    }
    Ok(match (event.object_type, event.aspect_type) {
        (ObjectType::Athlete, AspectType::Update)
            if event.updates.get("authorized").map(String::as_str) == Some("false") =>
        {
            athletes::purge(tx, owner, now)?;
            (Status::Done, "purged")
        }
        (ObjectType::Athlete, _) => (Status::Ignored, "nothing_to_apply"),
        (ObjectType::Activity, AspectType::Create) => {
            if !lifecycle::may_store(tx, owner, id, Applying::Create(at))? {
                return Ok((Status::Ignored, "deleted"));
            }
            lifecycle::unbury(tx, owner, id)?;
            if activities::stored_ids(tx, owner, &[id])?.is_empty() {
                jobs::enqueue(tx, owner, Task::fetch(id), now, now)?;
                (Status::Done, "fetch_queued")
            } else {
                (Status::Done, "already_stored")
            }
        }
        (ObjectType::Activity, AspectType::Update) => {
            if !lifecycle::may_store(tx, owner, id, Applying::Nothing)? {
                return Ok((Status::Ignored, "deleted"));
            }
            match activity_edits::apply_update(tx, owner, id, at, &field_updates(event), now)? {
                UpdateResult::Applied => (Status::Done, "applied"),
                UpdateResult::Stale => (Status::Ignored, "stale"),
                // The fetch that stores it returns the current state.
                UpdateResult::NotStored => (Status::Ignored, "not_stored"),
            }
        }
        (ObjectType::Activity, AspectType::Delete) => {
            // A create newer than this delete already brought it back.
            if lifecycle::may_store(tx, owner, id, Applying::Delete(at))? {
                return Ok((Status::Ignored, "stale"));
            }
            activity_edits::delete(tx, owner, id, at, now)?;
            jobs::forget_activity(tx, owner, id)?;
            (Status::Done, "deleted")
        }
    })
}

/// Translates an update event's `updates` to activity fields; keys and
/// values Strava does not define are left out.
fn field_updates(event: &Event) -> FieldUpdates {
    let get = |key: &str| event.updates.get(key).cloned();
    FieldUpdates {
        name: get("title"),
        activity_type: get("type"),
        private: match event.updates.get("private").map(String::as_str) {
            Some("true") => Some(true),
            Some("false") => Some(false),
            _ => None,
        },
    }
}
