//! Changes a webhook event makes to stored activities without calling Strava:
//! field updates taken from the event itself, and deletions that leave a
//! tombstone so a late-arriving create cannot bring the activity back.
//!
//! Updates edit the stored JSON's fields in place, keeping every other
//! field's text and place as Strava sent them (64-bit ids, `-14400.0`).

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::sql::{params, Connection, OptionalExtension};

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
    conn: &dyn Connection,
    athlete_id: i64,
    id: i64,
    event_time: i64,
    updates: &FieldUpdates,
    now: i64,
) -> DbResult<UpdateResult> {
    let stored: Option<(Option<i64>, String, Option<String>)> = conn
        .query_row(
            "SELECT last_event_time, summary_json, detail_json FROM activities
             WHERE id = ?1 AND athlete_id = ?2",
            params![id, athlete_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let (summary, detail) = match stored {
        None => return Ok(UpdateResult::NotStored),
        Some((Some(last), _, _)) if last > event_time => return Ok(UpdateResult::Stale),
        Some((_, summary, detail)) => (summary, detail),
    };
    let literal = |s: &str| serde_json::Value::from(s).to_string();
    let mut sets: Vec<(&str, String)> = Vec::new();
    if let Some(name) = &updates.name {
        sets.push(("name", literal(name)));
    }
    if let Some(kind) = &updates.activity_type {
        sets.push(("type", literal(kind)));
        sets.push(("sport_type", literal(kind)));
    }
    if let Some(private) = updates.private {
        sets.push(("private", private.to_string()));
        if private {
            sets.push(("visibility", literal("only_me")));
        }
    }
    let edit = |json: String| -> DbResult<String> {
        let mut fields: Fields = serde_json::from_str(&json)?;
        let mut changed = false;
        for (key, value) in &sets {
            changed |= fields.set(key, value);
        }
        // Public again: the event does not say to whom, so `only_me` becomes
        // `everyone` until the refresh brings the real visibility.
        if updates.private == Some(false) && fields.get("visibility") == Some(r#""only_me""#) {
            changed |= fields.set("visibility", r#""everyone""#);
        }
        Ok(if changed { fields.render() } else { json })
    };
    let summary = edit(summary)?;
    let detail = detail.map(edit).transpose()?;
    conn.execute(
        "UPDATE activities SET summary_json = ?4, detail_json = ?5, needs_refresh = 1,
             last_event_time = ?2, updated_at = ?3
         WHERE id = ?1",
        params![id, event_time, now, summary, detail],
    )?;
    changes::record_activity(conn, athlete_id, id, ChangeKind::ActivityUpdated, now)?;
    Ok(UpdateResult::Applied)
}

/// Deletes an activity and records its tombstone (the newest delete time
/// wins), logging the deletion at `now`. Returns whether a stored activity
/// was removed.
pub fn delete(
    conn: &dyn Connection,
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

/// A JSON object's fields in their stored order, each value as its text.
struct Fields(Vec<(String, Box<RawValue>)>);

impl Fields {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.get())
    }

    /// Sets a field to a JSON literal, in place or appended; whether the
    /// text changed.
    fn set(&mut self, key: &str, literal: &str) -> bool {
        let value = RawValue::from_string(literal.to_owned()).expect("literals are valid JSON");
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some((_, old)) if old.get() == literal => false,
            Some((_, old)) => {
                *old = value;
                true
            }
            None => {
                self.0.push((key.to_owned(), value));
                true
            }
        }
    }

    fn render(&self) -> String {
        let mut out = String::from("{");
        for (i, (key, value)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::Value::from(key.as_str()).to_string());
            out.push(':');
            out.push_str(value.get());
        }
        out.push('}');
        out
    }
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    fields.push(entry);
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}
