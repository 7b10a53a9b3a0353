//! Changes a webhook event makes to stored activities without calling Strava:
//! field updates taken from the event itself, and deletions that leave a
//! tombstone so a late-arriving create cannot bring the activity back.
//!
//! Updates edit the stored JSON in place with SQLite's `json_set`, which keeps
//! every other field's text as Strava sent it (64-bit ids, `-14400.0`).

use rusqlite::{params, Connection, OptionalExtension};

use super::{changes, lifecycle, DbResult};
use crate::model::app_event::ChangeKind;

/// The fields an update event can carry, already translated to Strava's
/// activity JSON.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FieldUpdates {
    /// `title` → `name`.
    pub name: Option<String>,
    /// `type` → `type` and `sport_type`.
    pub activity_type: Option<String>,
    /// `private` → `private`, and `visibility` when it must have changed.
    pub private: Option<bool>,
}

/// What applying an update did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateResult {
    Applied,
    /// The activity already reflects a newer event.
    Stale,
    /// Not stored (yet): the fetch that stores it returns the current state.
    NotStored,
}

/// Applies field updates from an event at `event_time` to both the summary
/// and the detail JSON, and marks the activity for a low-priority refresh
/// (the event does not carry everything a rename or retype changes).
pub fn apply_update(
    conn: &Connection,
    athlete_id: i64,
    id: i64,
    event_time: i64,
    updates: &FieldUpdates,
    now: i64,
) -> DbResult<UpdateResult> {
    let last: Option<Option<i64>> = conn
        .prepare_cached("SELECT last_event_time FROM activities WHERE id = ?1 AND athlete_id = ?2")?
        .query_row(params![id, athlete_id], |r| r.get(0))
        .optional()?;
    match last {
        None => return Ok(UpdateResult::NotStored),
        Some(Some(last)) if last > event_time => return Ok(UpdateResult::Stale),
        Some(_) => {}
    }
    // Values go in as JSON literals through json(), so a string stays a string
    // whatever it contains and a boolean is a boolean. A NULL detail stays
    // NULL (json_set of NULL is NULL).
    let literal = |s: &str| serde_json::Value::from(s).to_string();
    let mut sets: Vec<(&str, String)> = Vec::new();
    if let Some(name) = &updates.name {
        sets.push(("$.name", literal(name)));
    }
    if let Some(kind) = &updates.activity_type {
        sets.push(("$.type", literal(kind)));
        sets.push(("$.sport_type", literal(kind)));
    }
    if let Some(private) = updates.private {
        sets.push(("$.private", private.to_string()));
        if private {
            sets.push(("$.visibility", literal("only_me")));
        }
    }
    let args: String = sets
        .iter()
        .enumerate()
        .map(|(i, (path, _))| format!(", '{path}', json(?{})", i + 4))
        .collect();
    let edit = if sets.is_empty() {
        String::new()
    } else {
        format!(
            "summary_json = json_set(summary_json{args}),
             detail_json = json_set(detail_json{args}),"
        )
    };
    let mut values: Vec<&dyn rusqlite::ToSql> = vec![&id, &event_time, &now];
    values.extend(sets.iter().map(|(_, v)| v as &dyn rusqlite::ToSql));
    conn.prepare_cached(&format!(
        "UPDATE activities SET {edit} needs_refresh = 1, last_event_time = ?2, updated_at = ?3
         WHERE id = ?1"
    ))?
    .execute(values.as_slice())?;
    if updates.private == Some(false) {
        // Public again: the event does not say to whom, so `only_me` becomes
        // `everyone` until the refresh brings the real visibility.
        for column in ["summary_json", "detail_json"] {
            conn.prepare_cached(&format!(
                "UPDATE activities SET {column} = json_set({column}, '$.visibility', 'everyone')
                 WHERE id = ?1 AND json_extract({column}, '$.visibility') = 'only_me'"
            ))?
            .execute([id])?;
        }
    }
    changes::record_activity(conn, athlete_id, id, ChangeKind::ActivityUpdated, now)?;
    Ok(UpdateResult::Applied)
}

/// Deletes an activity and records its tombstone (the newest delete time
/// wins), logging the deletion at `now`. Returns whether a stored activity
/// was removed.
pub fn delete(
    conn: &Connection,
    athlete_id: i64,
    id: i64,
    event_time: i64,
    now: i64,
) -> DbResult<bool> {
    lifecycle::bury(conn, athlete_id, id, event_time)?;
    let removed = conn
        .prepare_cached("DELETE FROM activities WHERE id = ?1 AND athlete_id = ?2")?
        .execute(params![id, athlete_id])?
        > 0;
    if removed {
        changes::record_activity(conn, athlete_id, id, ChangeKind::ActivityDeleted, now)?;
    }
    Ok(removed)
}
