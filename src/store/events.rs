//! Applying webhook events from the inbox, a batch per transaction, without
//! calling Strava: creates join the athlete's queued fetch, updates and
//! deletes are applied from the event itself, a deauthorization purges the
//! athlete. The lifecycle rule ([`lifecycle::may_store`]) decides what a
//! create or delete may do.

use std::collections::BTreeMap;

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
    /// backlog costs one commit per batch rather than one per event.
    ///
    /// The batch is first applied straight through: events almost never
    /// fail, and a savepoint per event costs a copy of every page the event
    /// touches. If one fails, that transaction is rolled back and the batch
    /// applied again with a savepoint per event: the one that fails is
    /// rolled back alone and its failure recorded, due again at
    /// `retry_at(attempts)` (attempts counting this one) or failed when that
    /// is None, while the others commit.
    pub async fn apply_due_events(
        &self,
        now: i64,
        limit: usize,
        retry_at: impl Fn(i64) -> Option<i64> + Send + 'static,
    ) -> DbResult<Vec<Settled>> {
        match self
            .write(move |tx| apply_batch(tx, now, limit, None))
            .await
        {
            Ok(settled) => return Ok(settled),
            Err(e) => tracing::debug!(error = %e, "a batch of events failed; applying each alone"),
        }
        self.write(move |tx| apply_batch(tx, now, limit, Some(&retry_at)))
            .await
    }
}

/// One batch in the caller's transaction: straight through when `isolated`
/// is None (the first failure fails the batch), otherwise each event under
/// its own savepoint, a failure recorded with its retry time.
fn apply_batch(
    tx: &dyn Connection,
    now: i64,
    limit: usize,
    isolated: Option<&dyn Fn(i64) -> Option<i64>>,
) -> DbResult<Vec<Settled>> {
    let due = inbox::next_due(tx, now, limit)?;
    let mut batch = Batch::new(tx, now, isolated.is_none());
    let mut out = Vec::with_capacity(due.len());
    for stored in due {
        if isolated.is_some() {
            tx.execute_batch("SAVEPOINT event")?;
        }
        let outcome = match (batch.apply(&stored.event, stored.received_at), isolated) {
            (Ok((status, why)), _) => {
                inbox::settle(tx, stored.id, status, now)?;
                Outcome::Settled(why)
            }
            (Err(e), None) => return Err(e),
            (Err(e), Some(retry_at)) => {
                tx.execute_batch("ROLLBACK TO event")?;
                let (error, retry_at) = (e.to_string(), retry_at(stored.attempts + 1));
                inbox::record_failure(tx, stored.id, &error, retry_at)?;
                Outcome::Failed { error, retry_at }
            }
        };
        if isolated.is_some() {
            tx.execute_batch("RELEASE event")?;
        }
        out.push(Settled { stored, outcome });
    }
    batch.finish()?;
    Ok(out)
}

/// What the events of one batch share. Each athlete is looked up once. In
/// the straight pass, what every event of an athlete would otherwise
/// rewrite (when we last heard of the athlete, the queued fetch a create
/// joins, whose payload holds up to a thousand ids) is written once, when
/// the batch ends; in the isolated pass it is written with its event, under
/// the event's savepoint, so a write that fails fails only its event.
struct Batch<'c> {
    tx: &'c dyn Connection,
    now: i64,
    deferred: bool,
    connected: athletes::Known,
    /// Athlete → the newest `received_at` among its events.
    heard_at: BTreeMap<i64, i64>,
    /// Athlete → activities announced by its creates, to fetch.
    fetches: BTreeMap<i64, Vec<i64>>,
}

impl<'c> Batch<'c> {
    fn new(tx: &'c dyn Connection, now: i64, deferred: bool) -> Self {
        Self {
            tx,
            now,
            deferred,
            connected: athletes::Known::default(),
            heard_at: BTreeMap::new(),
            fetches: BTreeMap::new(),
        }
    }

    /// We heard from Strava about the athlete at `at`.
    fn heard(&mut self, athlete_id: i64, at: i64) -> DbResult<()> {
        if !self.deferred {
            return sync_state::record_webhook_at(self.tx, athlete_id, at);
        }
        let heard = self.heard_at.entry(athlete_id).or_insert(at);
        *heard = (*heard).max(at);
        Ok(())
    }

    /// A create announced an activity that is not stored.
    fn fetch(&mut self, athlete_id: i64, id: i64) -> DbResult<()> {
        if !self.deferred {
            return queue_fetch(self.tx, athlete_id, vec![id], self.now);
        }
        self.fetches.entry(athlete_id).or_default().push(id);
        Ok(())
    }

    /// Applies one event and says how it settled and why.
    fn apply(&mut self, event: &Event, received_at: i64) -> DbResult<(Status, &'static str)> {
        let (tx, now) = (self.tx, self.now);
        let (owner, id, at) = (event.owner_id, event.object_id, event.event_time);
        if !self.connected.check(tx, owner)? {
            return Ok((Status::Ignored, "unknown_athlete"));
        }
        self.heard(owner, received_at)?;
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
                self.connected.forget(owner);
                self.heard_at.remove(&owner);
                self.fetches.remove(&owner);
                (Status::Done, "purged")
            }
            (ObjectType::Athlete, _) => (Status::Ignored, "nothing_to_apply"),
            (ObjectType::Activity, AspectType::Create) => {
                if !lifecycle::may_store(tx, owner, id, Applying::Create(at))? {
                    return Ok((Status::Ignored, "deleted"));
                }
                lifecycle::unbury(tx, owner, id)?;
                if activities::stored_ids(tx, owner, &[id])?.is_empty() {
                    self.fetch(owner, id)?;
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

    /// Writes what the straight pass deferred: each athlete's last webhook
    /// time, and one merge into its queued fetch for all its creates.
    fn finish(self) -> DbResult<()> {
        for (athlete_id, at) in self.heard_at {
            sync_state::record_webhook_at(self.tx, athlete_id, at)?;
        }
        for (athlete_id, ids) in self.fetches {
            queue_fetch(self.tx, athlete_id, ids, self.now)?;
        }
        Ok(())
    }
}

/// Merges announced activities into the athlete's queued fetch, due now
/// unless announcements Strava did not list hold the athlete's listings
/// back ([`sync_state::announcement_hold`]).
fn queue_fetch(tx: &dyn Connection, athlete_id: i64, ids: Vec<i64>, now: i64) -> DbResult<()> {
    let due = sync_state::announcement_hold(tx, athlete_id)?.map_or(now, |t| t.max(now));
    jobs::enqueue(tx, athlete_id, Task::fetch(ids), due, now).map(drop)
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
