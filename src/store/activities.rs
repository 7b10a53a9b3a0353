//! Activities as Strava returned them. The raw JSON text is stored untouched
//! (unknown fields, 64-bit ids and float formatting survive); the database
//! derives the typed columns used for filtering, sorting and stats
//! (generated columns, on both backends).

use super::sql::{params, Connection, OptionalExtension};
use chrono::{Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::changes;
use super::lifecycle::{self, Applying};
use super::page_anchors::PageAnchors;
use super::{inbox, DbResult, Store};
use crate::model::app_event::ChangeKind;

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

/// Stores a page of SummaryActivity objects for one athlete, and logs what
/// changed. Call it inside one transaction per page. Records owned by another
/// athlete (by the JSON, or by the row already stored under that id) are
/// skipped.
pub fn upsert_summaries(
    conn: &dyn Connection,
    athlete_id: i64,
    page: &[Box<RawValue>],
    at: i64,
) -> DbResult<Upserted> {
    let mut out = Upserted::default();
    let mut existing =
        conn.prepare_cached("SELECT athlete_id, summary_json FROM activities WHERE id = ?1")?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO activities (id, athlete_id, summary_json, last_seen_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?4)",
    )?;
    let mut update = conn.prepare_cached(
        "UPDATE activities SET summary_json = ?2, last_seen_at = ?3,
             updated_at = CASE WHEN activities.summary_json = ?2
                 THEN activities.updated_at ELSE ?3 END
         WHERE id = ?1",
    )?;
    for raw in page {
        let keys: Keys = serde_json::from_str(raw.get())?;
        if keys.athlete.id != athlete_id {
            continue;
        }
        let before: Option<(i64, String)> = existing
            .query_row(params![keys.id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        match before {
            None => {
                insert.execute(params![keys.id, athlete_id, raw.get(), at])?;
                changes::record_activity(
                    conn,
                    athlete_id,
                    keys.id,
                    ChangeKind::ActivityCreated,
                    at,
                )?;
                out.new += 1;
            }
            Some((owner, _)) if owner != athlete_id => {}
            Some((_, old)) => {
                update.execute(params![keys.id, raw.get(), at])?;
                if old != raw.get() {
                    changes::record_activity(
                        conn,
                        athlete_id,
                        keys.id,
                        ChangeKind::ActivityUpdated,
                        at,
                    )?;
                    out.updated += 1;
                }
            }
        }
    }
    Ok(out)
}

/// Stores one DetailedActivity for its athlete, and logs the change. The
/// summary stays as listed;
/// when no summary is stored yet, the detail (a superset of it) also serves as
/// the summary so the activity is listed at once. A record owned by another
/// athlete is skipped.
pub fn upsert_detail(
    conn: &dyn Connection,
    athlete_id: i64,
    detail: &RawValue,
    at: i64,
) -> DbResult<Upserted> {
    let keys: Keys = serde_json::from_str(detail.get())?;
    if keys.athlete.id != athlete_id {
        return Ok(Upserted::default());
    }
    let before: Option<(i64, Option<String>)> = conn
        .prepare_cached("SELECT athlete_id, detail_json FROM activities WHERE id = ?1")?
        .query_row(params![keys.id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let changed = match &before {
        Some((owner, _)) if *owner != athlete_id => return Ok(Upserted::default()),
        Some((_, old)) => old.as_deref() != Some(detail.get()),
        None => true,
    };
    conn.prepare_cached(
        "INSERT INTO activities
             (id, athlete_id, summary_json, detail_json, detail_fetched_at, last_seen_at, updated_at)
         VALUES (?1, ?2, ?3, ?3, ?4, ?4, ?4)
         ON CONFLICT(id) DO UPDATE SET
             detail_json = excluded.detail_json,
             detail_fetched_at = excluded.detail_fetched_at,
             last_seen_at = excluded.last_seen_at,
             updated_at = CASE WHEN ?5 THEN excluded.updated_at ELSE activities.updated_at END",
    )?
    .execute(params![keys.id, athlete_id, detail.get(), at, changed])?;
    let (kind, upserted) = match (before, changed) {
        (None, _) => (ChangeKind::ActivityCreated, Upserted { new: 1, updated: 0 }),
        (Some(_), true) => (ChangeKind::ActivityUpdated, Upserted { new: 0, updated: 1 }),
        (Some(_), false) => return Ok(Upserted::default()),
    };
    changes::record_activity(conn, athlete_id, keys.id, kind, at)?;
    Ok(upserted)
}

/// Which slice of an athlete's activities a list request wants. Bounds are
/// exclusive epoch seconds, as in Strava's `before`/`after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListFilter {
    pub before: Option<i64>,
    pub after: Option<i64>,
    pub limit: i64,
    pub offset: i64,
}

/// Ranges over the (athlete_id, start_time DESC, id DESC) index, so pages
/// come out in order without a sort, and rows skipped by the offset are
/// stepped over in the index without reading their JSON.
const LIST_SQL: &str = "SELECT summary_json FROM activities
     WHERE athlete_id = ?1 AND start_time < ?2 AND start_time > ?3
     ORDER BY start_time DESC, id DESC
     LIMIT ?4 OFFSET ?5";

/// [`LIST_SQL`] of the unfiltered list from just after the key `(?2, ?3)`
/// (see [`super::page_anchors`]): the row value is the index range, so the
/// rows before the anchor are never stepped over.
const LIST_AFTER_SQL: &str = "SELECT summary_json FROM activities
     WHERE athlete_id = ?1 AND (start_time, id) < (?2, ?3)
     ORDER BY start_time DESC, id DESC
     LIMIT ?4 OFFSET ?5";

/// One page of an athlete's summaries as a JSON array, newest first (ties by
/// id, newest first), built by joining the stored texts: nothing is parsed or
/// re-serialised, so every field and number comes back exactly as stored. A
/// deep unfiltered page starts from its anchor; read it in one transaction.
pub fn list_json(
    conn: &dyn Connection,
    anchors: &PageAnchors,
    athlete_id: i64,
    filter: &ListFilter,
) -> DbResult<String> {
    let unfiltered = filter.before.is_none() && filter.after.is_none();
    let anchor = match unfiltered {
        true => anchors.before(conn, athlete_id, filter.offset)?,
        false => None,
    };
    let (mut stmt, bounds, offset) = match anchor {
        Some((skipped, key)) => (
            conn.prepare_cached(LIST_AFTER_SQL)?,
            key,
            filter.offset - skipped,
        ),
        // Absent bounds become the widest ones, so one statement serves all.
        None => (
            conn.prepare_cached(LIST_SQL)?,
            (
                filter.before.unwrap_or(i64::MAX),
                filter.after.unwrap_or(i64::MIN),
            ),
            filter.offset,
        ),
    };
    let mut out = String::from("[");
    stmt.for_each(
        params![athlete_id, bounds.0, bounds.1, filter.limit, offset],
        |row| {
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(&row.get::<String>(0)?);
            Ok(true)
        },
    )?;
    out.push(']');
    Ok(out)
}

/// The JSON served for one activity of this athlete: the detail when fetched,
/// else the summary.
pub fn get_json(conn: &dyn Connection, athlete_id: i64, id: i64) -> DbResult<Option<String>> {
    conn.query_row(
        "SELECT COALESCE(detail_json, summary_json) FROM activities
             WHERE id = ?1 AND athlete_id = ?2",
        params![id, athlete_id],
        |r| r.get(0),
    )
    .optional()
}

pub fn count_for(conn: &dyn Connection, athlete_id: i64) -> DbResult<i64> {
    conn.query_row(
        "SELECT COUNT(*) FROM activities WHERE athlete_id = ?1",
        [athlete_id],
        |r| r.get(0),
    )
}

/// Strava's ActivityTotal: one sport over one period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Totals {
    pub count: i64,
    pub distance: f64,
    pub moving_time: i64,
    pub elapsed_time: i64,
    pub elevation_gain: f64,
    pub achievement_count: i64,
}

/// Strava's ActivityStats, field for field. The biggest ride and climb are
/// null while the athlete has no ride.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ActivityStats {
    pub biggest_ride_distance: Option<f64>,
    pub biggest_climb_elevation_gain: Option<f64>,
    pub recent_ride_totals: Totals,
    pub all_ride_totals: Totals,
    pub recent_run_totals: Totals,
    pub all_run_totals: Totals,
    pub recent_swim_totals: Totals,
    pub all_swim_totals: Totals,
    pub ytd_ride_totals: Totals,
    pub ytd_run_totals: Totals,
    pub ytd_swim_totals: Totals,
}

/// How long "recent" reaches back: Strava's last four weeks.
pub const RECENT_SECS: i64 = 28 * 24 * 60 * 60;

/// An athlete's stats as of `now` (epoch seconds): recent is the last four
/// weeks, year to date starts on 1 January UTC. Sports count by `sport_type`
/// (`type` for records without one): rides include mountain bike, gravel and
/// virtual rides but not e-bike rides, as on Strava; runs include trail and
/// virtual runs. Every activity counts, private ones too: the only reader is
/// the athlete.
pub fn stats(conn: &dyn Connection, athlete_id: i64, now: i64) -> DbResult<ActivityStats> {
    let year_start = Utc
        .timestamp_opt(now, 0)
        .single()
        .and_then(|t| Utc.with_ymd_and_hms(t.year(), 1, 1, 0, 0, 0).single())
        .map_or(i64::MIN, |t| t.timestamp());
    let mut stmt = conn.prepare_cached(
        "WITH periods(period, since) AS (
             VALUES ('recent', CAST(?2 AS BIGINT)), ('ytd', CAST(?3 AS BIGINT)),
                    ('all', CAST(?4 AS BIGINT))),
         classified AS (
             SELECT CASE
                        WHEN COALESCE(sport_type, activity_type)
                             IN ('Ride', 'MountainBikeRide', 'GravelRide', 'VirtualRide') THEN 'ride'
                        WHEN COALESCE(sport_type, activity_type)
                             IN ('Run', 'TrailRun', 'VirtualRun') THEN 'run'
                        WHEN COALESCE(sport_type, activity_type) = 'Swim' THEN 'swim'
                    END AS sport,
                    start_time, distance, moving_time, elapsed_time, elevation_gain,
                    achievement_count
             FROM activities WHERE athlete_id = ?1
         )
         SELECT sport, period, COUNT(*), COALESCE(SUM(distance), 0.0),
                CAST(COALESCE(SUM(moving_time), 0) AS BIGINT),
                CAST(COALESCE(SUM(elapsed_time), 0) AS BIGINT),
                COALESCE(SUM(elevation_gain), 0.0),
                CAST(COALESCE(SUM(achievement_count), 0) AS BIGINT),
                MAX(distance), MAX(elevation_gain)
         FROM classified JOIN periods ON start_time >= since
         WHERE sport IS NOT NULL
         GROUP BY sport, period",
    )?;
    let mut out = ActivityStats::default();
    stmt.for_each(
        params![athlete_id, now - RECENT_SECS, year_start, i64::MIN],
        |row| {
            let totals = Totals {
                count: row.get(2)?,
                distance: row.get(3)?,
                moving_time: row.get(4)?,
                elapsed_time: row.get(5)?,
                elevation_gain: row.get(6)?,
                achievement_count: row.get(7)?,
            };
            let (sport, period): (String, String) = (row.get(0)?, row.get(1)?);
            let slot = match (sport.as_str(), period.as_str()) {
                ("ride", "recent") => &mut out.recent_ride_totals,
                ("ride", "ytd") => &mut out.ytd_ride_totals,
                ("ride", _) => {
                    out.biggest_ride_distance = row.get(8)?;
                    out.biggest_climb_elevation_gain = row.get(9)?;
                    &mut out.all_ride_totals
                }
                ("run", "recent") => &mut out.recent_run_totals,
                ("run", "ytd") => &mut out.ytd_run_totals,
                ("run", _) => &mut out.all_run_totals,
                ("swim", "recent") => &mut out.recent_swim_totals,
                ("swim", "ytd") => &mut out.ytd_swim_totals,
                _ => &mut out.all_swim_totals,
            };
            *slot = totals;
            Ok(true)
        },
    )?;
    Ok(out)
}

/// The start time of the athlete's newest stored activity.
pub fn newest_start(conn: &dyn Connection, athlete_id: i64) -> DbResult<Option<i64>> {
    conn.query_row(
        "SELECT MAX(start_time) FROM activities WHERE athlete_id = ?1",
        [athlete_id],
        |r| r.get(0),
    )
}

/// [`upsert_summaries`] for a page listed by the sync engine, leaving out
/// activities a newer delete event removed (Strava's list can lag a delete).
pub fn upsert_listed(
    conn: &dyn Connection,
    athlete_id: i64,
    page: Vec<Box<RawValue>>,
    at: i64,
) -> DbResult<Upserted> {
    let mut kept = Vec::with_capacity(page.len());
    for raw in page {
        let keys: Keys = serde_json::from_str(raw.get())?;
        if lifecycle::may_store(conn, athlete_id, keys.id, Applying::Nothing)? {
            kept.push(raw);
        }
    }
    upsert_summaries(conn, athlete_id, &kept, at)
}

/// Records that a listing saw these activities at `at` (never moving the
/// mark back).
pub fn mark_seen(conn: &dyn Connection, athlete_id: i64, ids: &[i64], at: i64) -> DbResult<()> {
    let mut stmt = conn.prepare_cached(
        "UPDATE activities SET last_seen_at = greatest(last_seen_at, ?3) WHERE id = ?1 AND athlete_id = ?2",
    )?;
    for &id in ids {
        stmt.execute(params![id, athlete_id, at])?;
    }
    Ok(())
}

/// Deletes the athlete's activities that started in `started` (exclusive
/// bounds, as Strava's `after` and `before`) and were last seen before
/// `seen_before`: what a complete listing of that span begun at `seen_before`
/// no longer showed, and logs each deletion at `seen_before`. Returns how
/// many went.
pub fn sweep_unseen(
    conn: &dyn Connection,
    athlete_id: i64,
    seen_before: i64,
    started: (i64, i64),
) -> DbResult<usize> {
    let gone: Vec<i64> = conn
        .prepare_cached(
            "DELETE FROM activities
             WHERE athlete_id = ?1 AND last_seen_at < ?2 AND start_time > ?3 AND start_time < ?4
             RETURNING id",
        )?
        .query_map(
            params![athlete_id, seen_before, started.0, started.1],
            |r| r.get(0),
        )?
        .collect::<Result<_, _>>()?;
    for &id in &gone {
        changes::record_activity(
            conn,
            athlete_id,
            id,
            ChangeKind::ActivityDeleted,
            seen_before,
        )?;
    }
    Ok(gone.len())
}

/// Summary-only activities of connected athletes that started after `since`
/// and were never tried, newest first: what detail enrichment fetches next.
pub fn summary_only_since(
    conn: &dyn Connection,
    since: i64,
    limit: u32,
) -> DbResult<Vec<(i64, i64)>> {
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

/// Who the stored activity `id` belongs to, if it is stored.
pub fn owner(conn: &dyn Connection, id: i64) -> DbResult<Option<i64>> {
    conn.prepare_cached("SELECT athlete_id FROM activities WHERE id = ?1")?
        .query_row(params![id], |r| r.get(0))
        .optional()
}

/// Which of these activity ids are already stored for the athlete.
pub fn stored_ids(conn: &dyn Connection, athlete_id: i64, ids: &[i64]) -> DbResult<Vec<i64>> {
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
pub fn mark_detail_missing(
    conn: &dyn Connection,
    athlete_id: i64,
    id: i64,
    at: i64,
) -> DbResult<()> {
    conn.execute(
        "UPDATE activities SET detail_fetched_at = ?3 WHERE id = ?1 AND athlete_id = ?2",
        params![id, athlete_id, at],
    )?;
    Ok(())
}

impl Store {
    /// One page of an athlete's summaries as a JSON array (see [`list_json`]).
    pub async fn list_activities_json(
        &self,
        athlete_id: i64,
        filter: ListFilter,
    ) -> DbResult<String> {
        let anchors = self.page_anchors.clone();
        self.read(move |c| {
            // The anchors' state and the page, read as one snapshot.
            list_json(c, &anchors, athlete_id, &filter)
        })
        .await
    }

    /// The JSON served for one of the athlete's activities.
    pub async fn activity_json(&self, athlete_id: i64, id: i64) -> DbResult<Option<String>> {
        self.read(move |c| get_json(c, athlete_id, id)).await
    }

    pub async fn activity_stats(&self, athlete_id: i64, now: i64) -> DbResult<ActivityStats> {
        self.read(move |c| stats(c, athlete_id, now)).await
    }

    pub async fn activity_count(&self, athlete_id: i64) -> DbResult<i64> {
        self.read(move |c| count_for(c, athlete_id)).await
    }

    /// Stores a listed page in one transaction, leaving out what the
    /// lifecycle rule keeps deleted.
    pub async fn store_listing(
        &self,
        athlete_id: i64,
        page: Vec<Box<RawValue>>,
        now: i64,
    ) -> DbResult<Upserted> {
        self.write(move |tx| upsert_listed(tx, athlete_id, page, now))
            .await
    }

    /// Stores an enrichment's detailed record for an activity still stored
    /// (one deleted while the call was out does not come back).
    pub async fn store_enriched_detail(
        &self,
        athlete_id: i64,
        id: i64,
        detail: Box<RawValue>,
        now: i64,
    ) -> DbResult<Upserted> {
        self.write(move |tx| {
            if stored_ids(tx, athlete_id, &[id])?.is_empty() {
                return Ok(Upserted::default());
            }
            upsert_detail(tx, athlete_id, &detail, now)
        })
        .await
    }

    /// Records that a detail fetch found nothing, so it is not tried again.
    pub async fn mark_detail_missing(&self, athlete_id: i64, id: i64, now: i64) -> DbResult<()> {
        self.write(move |tx| mark_detail_missing(tx, athlete_id, id, now))
            .await
    }

    /// Which of these announced activities still need fetching (not stored,
    /// not kept deleted), and the earliest create event among them.
    pub async fn unfetched_announced(
        &self,
        athlete_id: i64,
        ids: Vec<i64>,
    ) -> DbResult<(Vec<i64>, Option<i64>)> {
        self.read(move |c| {
            let stored = stored_ids(c, athlete_id, &ids)?;
            let mut pending = Vec::new();
            for id in ids {
                if !stored.contains(&id)
                    && lifecycle::may_store(c, athlete_id, id, Applying::Nothing)?
                {
                    pending.push(id);
                }
            }
            let oldest = inbox::oldest_create_event(c, athlete_id, &pending)?;
            Ok((pending, oldest))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{activity_edits, athletes, Store};

    const ATHLETE: &str = include_str!("../../fixtures/athlete.json");
    const SUMMARIES: &str = include_str!("../../fixtures/activities.json");
    const DETAIL: &str = include_str!("../../fixtures/activity_detail.json");

    fn store_with_athlete() -> (tempfile::TempDir, Store, i64) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        let profile: serde_json::Value = serde_json::from_str(ATHLETE).unwrap();
        let id = store
            .write_blocking(|tx| athletes::upsert(tx, &profile, "read", 0))
            .unwrap();
        (dir, store, id)
    }

    #[test]
    fn the_list_walks_the_index_without_sorting() {
        let (_dir, store, _) = store_with_athlete();
        for (sql, range) in [
            (LIST_SQL, "(athlete_id=? AND start_time>? AND start_time<?)"),
            // The seek lands on the anchor's start time; its ties are
            // filtered by id.
            (LIST_AFTER_SQL, "(athlete_id=? AND start_time<?)"),
        ] {
            let plan: Vec<String> = store
                .read_blocking(|c| {
                    let mut stmt = c.prepare_cached(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                    let rows = stmt.query_map(params![1, 2, 0, 30, 470], |r| r.get(3))?;
                    rows.collect::<Result<_, _>>()
                })
                .unwrap();
            let plan = plan.join("\n");
            assert!(
                plan.contains(&format!("USING INDEX activities_athlete_start {range}")),
                "{plan}"
            );
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        }
    }

    #[test]
    fn a_detail_upsert_reports_what_changed_and_respects_ownership() {
        let (_dir, store, athlete) = store_with_athlete();
        let page: Vec<Box<RawValue>> = serde_json::from_str(SUMMARIES).unwrap();
        let detail: Box<RawValue> = serde_json::from_str(DETAIL).unwrap();
        let upsert = |d: &RawValue, owner| {
            store
                .write_blocking(|tx| upsert_detail(tx, owner, d, 0))
                .unwrap()
        };
        store
            .write_blocking(|tx| upsert_summaries(tx, athlete, &page, 0))
            .unwrap();

        assert_eq!(upsert(&detail, 8806470), Upserted::default(), "not theirs");
        assert_eq!(upsert(&detail, athlete), Upserted { new: 0, updated: 1 });
        assert_eq!(upsert(&detail, athlete), Upserted::default(), "unchanged");
        let (served, summary) = store
            .read_blocking(|c| {
                Ok((
                    get_json(c, athlete, 17179869201)?,
                    c.query_row(
                        "SELECT summary_json FROM activities WHERE id = 17179869201",
                        params![],
                        |r| r.get::<String>(0),
                    )?,
                ))
            })
            .unwrap();
        assert_eq!(served.as_deref(), Some(detail.get()));
        assert_eq!(summary, page[2].get(), "the summary is kept as listed");

        // A detail for an activity never listed is listed at once.
        let mut fresh: serde_json::Value = serde_json::from_str(DETAIL).unwrap();
        fresh["id"] = 17179869999_i64.into();
        let fresh = RawValue::from_string(fresh.to_string()).unwrap();
        assert_eq!(upsert(&fresh, athlete), Upserted { new: 1, updated: 0 });
        assert_eq!(store.read_blocking(|c| count_for(c, athlete)).unwrap(), 10);
    }

    fn summary(id: i64, start: &str) -> Box<RawValue> {
        RawValue::from_string(format!(
            r#"{{"id":{id},"athlete":{{"id":1}},"start_date":"{start}","name":"a"}}"#
        ))
        .unwrap()
    }

    fn with_athlete(f: impl FnOnce(&dyn Connection) -> DbResult<()>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        store
            .write_blocking(|tx| {
                athletes::upsert(tx, &serde_json::json!({"id": 1}), "activity:read_all", 0)?;
                f(tx)
            })
            .unwrap();
    }

    /// The ids of a listed page, in order.
    fn page_ids(json: &str) -> Vec<i64> {
        let page: Vec<serde_json::Value> = serde_json::from_str(json).unwrap();
        page.iter().map(|a| a["id"].as_i64().unwrap()).collect()
    }

    #[test]
    fn deep_pages_from_anchors_are_the_pages_an_offset_gives_as_the_list_changes() {
        let anchors = PageAnchors::default();
        with_athlete(|c| {
            // 1,234 activities, four to a start time, so anchors fall inside ties.
            let page: Vec<_> = (0..1234)
                .map(|i| {
                    let start = chrono::DateTime::from_timestamp(1_700_000_000 + i / 4 * 60, 0);
                    summary(i, &start.unwrap().to_rfc3339())
                })
                .collect();
            upsert_summaries(c, 1, &page, 0)?;
            let mut expected: Vec<i64> = (0..1234).collect();
            expected.sort_by_key(|&i| std::cmp::Reverse((i / 4, i)));
            let check = |expected: &[i64]| -> DbResult<()> {
                for per_page in [1, 30, 200] {
                    for offset in (0..1300).step_by(per_page as usize * 7 + 13) {
                        let filter = ListFilter {
                            before: None,
                            after: None,
                            limit: per_page,
                            offset,
                        };
                        let want: Vec<i64> = expected
                            .iter()
                            .skip(offset as usize)
                            .take(per_page as usize)
                            .copied()
                            .collect();
                        let got = page_ids(&list_json(c, &anchors, 1, &filter)?);
                        assert_eq!(got, want, "per_page {per_page}, offset {offset}");
                    }
                }
                Ok(())
            };
            check(&expected)?;
            // A deletion and an insertion near the top shift every deep page.
            activity_edits::delete(c, 1, 1200, 0, 0)?;
            upsert_summaries(c, 1, &[summary(5000, "2030-01-01T00:00:00Z")], 0)?;
            expected.retain(|&i| i != 1200);
            expected.insert(0, 5000);
            check(&expected)
        });
    }

    #[test]
    fn a_listed_summary_never_overwrites_another_athletes_record() {
        with_athlete(|c| {
            athletes::upsert(c, &serde_json::json!({"id": 2}), "activity:read_all", 0)?;
            upsert_summaries(c, 1, &[summary(10, "2026-01-01T00:00:00Z")], 0)?;
            let claimed = RawValue::from_string(
                r#"{"id":10,"athlete":{"id":2},"start_date":"2026-01-01T00:00:00Z","name":"b"}"#
                    .to_string(),
            )
            .unwrap();
            assert_eq!(upsert_summaries(c, 2, &[claimed], 0)?, Upserted::default());
            assert_eq!(
                get_json(c, 1, 10)?,
                Some(summary(10, "2026-01-01T00:00:00Z").get().to_string())
            );
            assert_eq!(get_json(c, 2, 10)?, None);
            Ok(())
        });
    }

    #[test]
    fn sweep_removes_only_what_a_pass_did_not_see() {
        with_athlete(|c| {
            upsert_summaries(c, 1, &[summary(10, "2026-01-01T00:00:00Z")], 0)?;
            upsert_summaries(c, 1, &[summary(11, "2026-01-02T00:00:00Z")], 0)?;
            c.execute(
                "UPDATE activities SET last_seen_at = 100 WHERE id = 10",
                params![],
            )?;
            c.execute(
                "UPDATE activities SET last_seen_at = 300 WHERE id = 11",
                params![],
            )?;
            // A pass that started at 200, before both started... sweeps nothing
            // that started after it (it could not have listed them).
            assert_eq!(sweep_unseen(c, 1, 200, (i64::MIN, 0))?, 0);
            assert_eq!(sweep_unseen(c, 1, 200, (i64::MIN, i64::MAX))?, 1);
            assert_eq!(count_for(c, 1)?, 1);
            Ok(())
        });
    }

    #[test]
    fn a_tombstone_blocks_listing_until_a_newer_create() {
        with_athlete(|c| {
            c.execute(
                "INSERT INTO activity_tombstones (id, athlete_id, event_time) VALUES (10, 1, 500)",
                params![],
            )?;
            let page = vec![summary(10, "2026-01-01T00:00:00Z")];
            assert_eq!(upsert_listed(c, 1, page.clone(), 0)?, Upserted::default());
            c.execute(
                "INSERT INTO webhook_events (dedup_key, object_type, object_id, aspect_type,
                     owner_id, event_time, updates_json, received_at, next_attempt_at)
                 VALUES ('k', 'activity', 10, 'create', 1, 600, '{}', 600, 600)",
                params![],
            )?;
            assert_eq!(upsert_listed(c, 1, page, 0)?.new, 1);
            assert_eq!(
                crate::store::inbox::oldest_create_event(c, 1, &[10, 99])?,
                Some(600)
            );
            Ok(())
        });
    }
}
