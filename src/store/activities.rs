//! Activities as Strava returned them. The raw JSON text is stored untouched
//! (unknown fields, 64-bit ids and float formatting survive); SQLite derives
//! the typed columns used for filtering, sorting and stats.

use rusqlite::{params, Connection, OptionalExtension};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{now, DbResult};

/// What a batch upsert changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Upserted {
    pub new: u32,
    pub updated: u32,
}

#[derive(Deserialize)]
struct Keys {
    id: i64,
    athlete: Owner,
}

#[derive(Deserialize)]
struct Owner {
    id: i64,
}

/// Stores a page of SummaryActivity objects for one athlete. Call it inside
/// one transaction per page. Records owned by another athlete are skipped.
pub fn upsert_summaries(
    conn: &Connection,
    athlete_id: i64,
    page: &[Box<RawValue>],
) -> DbResult<Upserted> {
    let at = now();
    let mut out = Upserted::default();
    let mut existing = conn.prepare_cached("SELECT summary_json FROM activities WHERE id = ?1")?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO activities (id, athlete_id, summary_json, last_seen_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?4)",
    )?;
    let mut update = conn.prepare_cached(
        "UPDATE activities SET summary_json = ?2, last_seen_at = ?3,
             updated_at = CASE WHEN summary_json = ?2 THEN updated_at ELSE ?3 END
         WHERE id = ?1",
    )?;
    for raw in page {
        let keys: Keys = serde_json::from_str(raw.get())?;
        if keys.athlete.id != athlete_id {
            continue;
        }
        let before: Option<String> = existing.query_row([keys.id], |r| r.get(0)).optional()?;
        match before {
            None => {
                insert.execute(params![keys.id, athlete_id, raw.get(), at])?;
                out.new += 1;
            }
            Some(old) => {
                update.execute(params![keys.id, raw.get(), at])?;
                if old != raw.get() {
                    out.updated += 1;
                }
            }
        }
    }
    Ok(out)
}

/// The JSON served for one activity of this athlete: the detail when fetched,
/// else the summary.
pub fn get_json(conn: &Connection, athlete_id: i64, id: i64) -> DbResult<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT COALESCE(detail_json, summary_json) FROM activities
             WHERE id = ?1 AND athlete_id = ?2",
            params![id, athlete_id],
            |r| r.get(0),
        )
        .optional()?)
}

pub fn count_for(conn: &Connection, athlete_id: i64) -> DbResult<i64> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM activities WHERE athlete_id = ?1",
        [athlete_id],
        |r| r.get(0),
    )?)
}
