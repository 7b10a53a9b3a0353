//! Applying one webhook event from the inbox, in one transaction, without
//! calling Strava: creates join the athlete's queued fetch, updates and
//! deletes are applied from the event itself, a deauthorization purges the
//! athlete. The lifecycle rule ([`lifecycle::may_store`]) decides what a
//! create or delete may do.

use rusqlite::Connection;

use super::activity_edits::{self, FieldUpdates, UpdateResult};
use super::inbox::{self, Status};
use super::lifecycle::{self, Applying};
use super::{activities, athletes, jobs, sync_state, DbResult, Store};
use crate::model::event::{AspectType, Event, ObjectType};
use crate::model::job::Task;

impl Store {
    /// Applies inbox event `id` and settles it, unless someone else (a
    /// replay, a second drain) settled it first. Returns how it settled and
    /// why, for the metrics; None when it was no longer pending.
    pub async fn apply_event(
        &self,
        id: i64,
        event: Event,
        received_at: i64,
        now: i64,
    ) -> DbResult<Option<&'static str>> {
        self.write(move |tx| {
            if !inbox::is_pending(tx, id)? {
                return Ok(None);
            }
            let (status, outcome) = apply(tx, &event, received_at, now)?;
            inbox::settle(tx, id, status, now)?;
            Ok(Some(outcome))
        })
        .await
    }
}

/// Applies one event and says how it settled and why.
fn apply(
    tx: &Connection,
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
            athletes::purge(tx, owner)?;
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
            activity_edits::delete(tx, owner, id, at)?;
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
