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

/// The start time of the athlete's newest stored activity.
pub fn newest_start(conn: &Connection, athlete_id: i64) -> DbResult<Option<i64>> {
    Ok(conn.query_row(
        "SELECT MAX(start_time) FROM activities WHERE athlete_id = ?1",
        [athlete_id],
        |r| r.get(0),
    )?)
}

/// Stores a DetailedActivity as the detail of a stored activity; false when
/// the activity is not stored (a detail never brings back a deleted one).
pub fn set_detail(conn: &Connection, athlete_id: i64, id: i64, raw: &RawValue) -> DbResult<bool> {
    let at = now();
    let updated = conn.execute(
        "UPDATE activities SET detail_json = ?3, detail_fetched_at = ?4, last_seen_at = ?4,
             needs_refresh = 0,
             updated_at = CASE WHEN detail_json IS ?3 THEN updated_at ELSE ?4 END
         WHERE id = ?1 AND athlete_id = ?2",
        params![id, athlete_id, raw.get(), at],
    )?;
    Ok(updated > 0)
}

/// Stores a DetailedActivity fetched for a create event: the detail of a
/// stored activity, or a new activity (the detail carries every summary
/// field). Records owned by another athlete are skipped.
pub fn upsert_detail(conn: &Connection, athlete_id: i64, raw: &RawValue) -> DbResult<Upserted> {
    let keys: Keys = serde_json::from_str(raw.get())?;
    if keys.athlete.id != athlete_id {
        return Ok(Upserted::default());
    }
    if set_detail(conn, athlete_id, keys.id, raw)? {
        return Ok(Upserted { new: 0, updated: 1 });
    }
    let at = now();
    conn.execute(
        "INSERT INTO activities
             (id, athlete_id, summary_json, detail_json, detail_fetched_at, last_seen_at, updated_at)
         VALUES (?1, ?2, ?3, ?3, ?4, ?4, ?4)",
        params![keys.id, athlete_id, raw.get(), at],
    )?;
    Ok(Upserted { new: 1, updated: 0 })
}

/// Whether storing this activity would bring back one a webhook deleted: it
/// has a tombstone and no create event newer than that tombstone.
pub fn resurrection_blocked(conn: &Connection, id: i64) -> DbResult<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM activity_tombstones t WHERE t.id = ?1
               AND NOT EXISTS (SELECT 1 FROM webhook_events e
                               WHERE e.object_type = 'activity' AND e.object_id = t.id
                                 AND e.aspect_type = 'create' AND e.event_time > t.event_time)",
        )?
        .exists([id])?)
}

/// [`upsert_summaries`] for a page listed by the sync engine, leaving out
/// activities a newer delete event removed (Strava's list can lag a delete).
pub fn upsert_listed(
    conn: &Connection,
    athlete_id: i64,
    page: Vec<Box<RawValue>>,
) -> DbResult<Upserted> {
    let mut kept = Vec::with_capacity(page.len());
    for raw in page {
        let keys: Keys = serde_json::from_str(raw.get())?;
        if !resurrection_blocked(conn, keys.id)? {
            kept.push(raw);
        }
    }
    upsert_summaries(conn, athlete_id, &kept)
}

/// Records that a listing saw these activities at `at` (never moving the
/// mark back).
pub fn mark_seen(conn: &Connection, athlete_id: i64, ids: &[i64], at: i64) -> DbResult<()> {
    let mut stmt = conn.prepare_cached(
        "UPDATE activities SET last_seen_at = MAX(last_seen_at, ?3) WHERE id = ?1 AND athlete_id = ?2",
    )?;
    for &id in ids {
        stmt.execute(params![id, athlete_id, at])?;
    }
    Ok(())
}

/// Deletes the athlete's activities that started before `started_before` and
/// were last seen before `seen_before`: what a complete listing of Strava
/// begun at `seen_before` no longer showed. Returns how many went.
pub fn sweep_unseen(
    conn: &Connection,
    athlete_id: i64,
    seen_before: i64,
    started_before: i64,
) -> DbResult<usize> {
    Ok(conn.execute(
        "DELETE FROM activities
         WHERE athlete_id = ?1 AND last_seen_at < ?2 AND start_time < ?3",
        params![athlete_id, seen_before, started_before],
    )?)
}

/// Summary-only activities of connected athletes that started after `since`
/// and were never tried, newest first: what detail enrichment fetches next.
pub fn summary_only_since(conn: &Connection, since: i64, limit: u32) -> DbResult<Vec<(i64, i64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.id, a.athlete_id FROM activities a
         JOIN athletes t ON t.id = a.athlete_id AND t.status = 'connected'
         WHERE a.detail_json IS NULL AND a.detail_fetched_at IS NULL AND a.start_time > ?1
         ORDER BY a.start_time DESC LIMIT ?2",
    )?;
    let rows = stmt
        .query_map(params![since, limit], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Which of these activity ids are already stored for the athlete.
pub fn stored_ids(conn: &Connection, athlete_id: i64, ids: &[i64]) -> DbResult<Vec<i64>> {
    let mut stmt =
        conn.prepare_cached("SELECT 1 FROM activities WHERE id = ?1 AND athlete_id = ?2")?;
    let mut out = Vec::new();
    for &id in ids {
        if stmt.exists(params![id, athlete_id])? {
            out.push(id);
        }
    }
    Ok(out)
}

/// Records a detail fetch that found nothing (404), so enrichment does not
/// spend another call on it; reconciliation decides whether it is gone.
pub fn mark_detail_missing(conn: &Connection, athlete_id: i64, id: i64) -> DbResult<()> {
    conn.execute(
        "UPDATE activities SET detail_fetched_at = ?3 WHERE id = ?1 AND athlete_id = ?2",
        params![id, athlete_id, now()],
    )?;
    Ok(())
}

/// The earliest create event received for any of these activities.
pub fn oldest_create_event(conn: &Connection, ids: &[i64]) -> DbResult<Option<i64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT MIN(event_time) FROM webhook_events
         WHERE object_type = 'activity' AND aspect_type = 'create' AND object_id = ?1",
    )?;
    let mut oldest: Option<i64> = None;
    for &id in ids {
        let t: Option<i64> = stmt.query_row([id], |r| r.get(0))?;
        oldest = match (oldest, t) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(oldest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{athletes, Store};

    fn summary(id: i64, start: &str) -> Box<RawValue> {
        RawValue::from_string(format!(
            r#"{{"id":{id},"athlete":{{"id":1}},"start_date":"{start}","name":"a"}}"#
        ))
        .unwrap()
    }

    fn with_athlete(f: impl FnOnce(&Connection) -> DbResult<()>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        store
            .write_blocking(|tx| {
                athletes::upsert(tx, &serde_json::json!({"id": 1}), "activity:read_all")?;
                f(tx)
            })
            .unwrap();
    }

    #[test]
    fn sweep_removes_only_what_a_pass_did_not_see() {
        with_athlete(|c| {
            upsert_summaries(c, 1, &[summary(10, "2026-01-01T00:00:00Z")])?;
            upsert_summaries(c, 1, &[summary(11, "2026-01-02T00:00:00Z")])?;
            c.execute("UPDATE activities SET last_seen_at = 100 WHERE id = 10", [])?;
            c.execute("UPDATE activities SET last_seen_at = 300 WHERE id = 11", [])?;
            // A pass that started at 200, before both started... sweeps nothing
            // that started after it (it could not have listed them).
            assert_eq!(sweep_unseen(c, 1, 200, 0)?, 0);
            assert_eq!(sweep_unseen(c, 1, 200, i64::MAX)?, 1);
            assert_eq!(count_for(c, 1)?, 1);
            Ok(())
        });
    }

    #[test]
    fn a_detail_fills_a_summary_and_never_brings_back_a_missing_one() {
        with_athlete(|c| {
            let detail = summary(10, "2026-01-01T00:00:00Z");
            assert!(!set_detail(c, 1, 10, &detail)?);
            assert_eq!(
                upsert_detail(c, 1, &detail)?,
                Upserted { new: 1, updated: 0 }
            );
            assert!(set_detail(c, 1, 10, &detail)?);
            let foreign = RawValue::from_string(
                r#"{"id":12,"athlete":{"id":2},"start_date":"2026-01-01T00:00:00Z"}"#.into(),
            )
            .unwrap();
            assert_eq!(upsert_detail(c, 1, &foreign)?, Upserted::default());
            Ok(())
        });
    }

    #[test]
    fn a_tombstone_blocks_listing_until_a_newer_create() {
        with_athlete(|c| {
            c.execute(
                "INSERT INTO activity_tombstones (id, athlete_id, event_time) VALUES (10, 1, 500)",
                [],
            )?;
            let page = vec![summary(10, "2026-01-01T00:00:00Z")];
            assert_eq!(upsert_listed(c, 1, page.clone())?, Upserted::default());
            c.execute(
                "INSERT INTO webhook_events (dedup_key, object_type, object_id, aspect_type,
                     owner_id, event_time, updates_json, received_at, next_attempt_at)
                 VALUES ('k', 'activity', 10, 'create', 1, 600, '{}', 600, 600)",
                [],
            )?;
            assert_eq!(upsert_listed(c, 1, page)?.new, 1);
            assert_eq!(oldest_create_event(c, &[10, 99])?, Some(600));
            Ok(())
        });
    }
}
