//! Whether an activity may be stored: the one rule the webhook worker and
//! every listing and fetch path apply.
//!
//! A delete event leaves a tombstone; create events stay in the inbox. Of the
//! two, the newer wins: Strava's list can lag a delete, so a listing must not
//! bring the activity back, while a create newer than the delete (a privacy
//! switch seen without `activity:read_all` arrives as a delete, then a
//! create) means it is back. Both count only for the athlete the event
//! names: an event naming someone else cannot keep an activity away from its
//! owner.

use super::sql::{params, Connection, OptionalExtension};

use super::DbResult;

/// What is being applied when the rule is asked: nothing (a listing or a
/// fetch carries no event time), or a create or delete event at its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applying {
    Nothing,
    Create(i64),
    Delete(i64),
}

/// Whether the athlete's activity `id` may be stored once `applying` is
/// taken into account: true unless the athlete's newest delete of it is at
/// least as new as every create of it seen for them.
pub fn may_store(
    conn: &dyn Connection,
    athlete_id: i64,
    id: i64,
    applying: Applying,
) -> DbResult<bool> {
    let tombstone: Option<i64> = conn
        .prepare_cached(
            "SELECT event_time FROM activity_tombstones WHERE athlete_id = ?1 AND id = ?2",
        )?
        .query_row(params![athlete_id, id], |r| r.get(0))
        .optional()?;
    let deleted = match applying {
        Applying::Delete(at) => Some(tombstone.map_or(at, |t| t.max(at))),
        _ => tombstone,
    };
    let Some(deleted) = deleted else {
        return Ok(true);
    };
    if matches!(applying, Applying::Create(at) if at > deleted) {
        return Ok(true);
    }
    conn.prepare_cached(
        "SELECT 1 FROM webhook_events
             WHERE object_type = 'activity' AND object_id = ?1 AND owner_id = ?2
               AND aspect_type = 'create' AND event_time > ?3",
    )?
    .exists(params![id, athlete_id, deleted])
}

/// Records the athlete's delete at `event_time` (the newest delete time wins).
pub fn bury(conn: &dyn Connection, athlete_id: i64, id: i64, event_time: i64) -> DbResult<()> {
    conn.prepare_cached(
        "INSERT INTO activity_tombstones (athlete_id, id, event_time) VALUES (?1, ?2, ?3)
         ON CONFLICT(athlete_id, id) DO UPDATE SET
             event_time = greatest(activity_tombstones.event_time, excluded.event_time)",
    )?
    .execute(params![athlete_id, id, event_time])?;
    Ok(())
}

/// Lifts the athlete's tombstone once a newer create brought the activity
/// back, so later listings need not consult the inbox (which is pruned).
pub fn unbury(conn: &dyn Connection, athlete_id: i64, id: i64) -> DbResult<()> {
    conn.prepare_cached("DELETE FROM activity_tombstones WHERE athlete_id = ?1 AND id = ?2")?
        .execute(params![athlete_id, id])?;
    Ok(())
}

/// Deletes up to `limit` tombstones of deletes before `before`, so forged
/// deletes cannot grow the table without bound.
pub fn prune(conn: &dyn Connection, before: i64, limit: usize) -> DbResult<usize> {
    conn.prepare_cached(
        "DELETE FROM activity_tombstones WHERE (athlete_id, id) IN (
                 SELECT athlete_id, id FROM activity_tombstones WHERE event_time < ?1 LIMIT ?2)",
    )?
    .execute(params![before, limit as i64])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{athletes, Store};

    #[test]
    fn the_newer_of_create_and_delete_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        store
            .write_blocking(|c| {
                athletes::upsert(c, &serde_json::json!({"id": 1}), "read", 0)?;
                assert!(may_store(c, 1, 10, Applying::Nothing)?);
                assert!(!may_store(c, 1, 10, Applying::Delete(500))?);
                bury(c, 1, 10, 500)?;
                assert!(!may_store(c, 1, 10, Applying::Nothing)?, "a listing lags");
                assert!(may_store(c, 2, 10, Applying::Nothing)?, "not theirs");
                assert!(!may_store(c, 1, 10, Applying::Create(500))?);
                assert!(may_store(c, 1, 10, Applying::Create(501))?);
                c.execute(
                    "INSERT INTO webhook_events (dedup_key, object_type, object_id, aspect_type,
                         owner_id, event_time, updates_json, received_at, next_attempt_at)
                     VALUES ('k', 'activity', 10, 'create', 1, 600, '{}', 600, 600)",
                    params![],
                )?;
                assert!(may_store(c, 1, 10, Applying::Nothing)?, "created again");
                assert!(may_store(c, 1, 10, Applying::Delete(550))?, "a late delete");
                assert!(!may_store(c, 1, 10, Applying::Delete(700))?);
                bury(c, 2, 10, 800)?;
                assert!(may_store(c, 1, 10, Applying::Nothing)?, "another's delete");
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn old_tombstones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        store
            .write_blocking(|c| {
                athletes::upsert(c, &serde_json::json!({"id": 1}), "read", 0)?;
                bury(c, 1, 10, 100)?;
                bury(c, 1, 11, 900)?;
                assert_eq!(prune(c, 500, 10)?, 1);
                assert!(may_store(c, 1, 10, Applying::Nothing)?);
                assert!(!may_store(c, 1, 11, Applying::Nothing)?);
                Ok(())
            })
            .unwrap();
    }
}
