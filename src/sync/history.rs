//! An athlete's history, newest to oldest: the first page at connect
//! (interactive) and then the backfill (one page per run, so the runner can
//! serve more urgent work between pages). Each page's activities and the
//! cursor past them commit in one transaction: a restart never refetches a
//! finished page.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::runner::{JobError, Step};
use super::source::ActivitySource;
use crate::store::jobs::{Counts, Job, JobKind};
use crate::store::sync_state::{self, Backfill};
use crate::store::{activities, Store};
use crate::strava::client::{ListQuery, StravaError, MAX_PER_PAGE};

/// Fetches one page of history for the job's athlete: the newest page for
/// [`JobKind::FirstPage`], the page below the cursor for
/// [`JobKind::Backfill`]. The backfill ends at the first empty page (Strava
/// has no total; a short page may only mean hidden activities).
pub async fn page<S: ActivitySource>(
    client: &S,
    store: &Store,
    job: &Job,
) -> Result<Step, JobError> {
    let athlete_id = job.athlete_id;
    let first = job.kind == JobKind::FirstPage;
    let cursor = store
        .read(move |c| sync_state::backfill(c, athlete_id))
        .await?
        .unwrap_or_default();
    if !first && cursor.complete {
        return Ok(Step::Done(Counts::default()));
    }
    let query = ListQuery {
        before: if first { None } else { cursor.before },
        per_page: Some(MAX_PER_PAGE),
        ..ListQuery::default()
    };
    let page = client
        .list_activities(athlete_id, job.kind.purpose(), &query)
        .await?;
    let oldest = oldest_start(&page)?;
    let fetched = page.len() as i64;
    let complete = page.is_empty();
    let upserted = store
        .write(move |tx| {
            // Strava's list can lag a delete event: what it removed stays gone.
            let upserted = activities::upsert_listed(tx, athlete_id, page)?;
            // The first page starts the cursor of a fresh athlete; after a
            // reconnect the backfill keeps its place.
            if !first || cursor.pages == 0 {
                let next = Backfill {
                    before: oldest.or(cursor.before),
                    pages: cursor.pages + 1,
                    complete,
                };
                sync_state::set_backfill(tx, athlete_id, &next)?;
            }
            Ok(upserted)
        })
        .await?;
    let counts = Counts {
        fetched,
        new: upserted.new.into(),
        updated: upserted.updated.into(),
    };
    Ok(if first || fetched == 0 {
        Step::Done(counts)
    } else {
        Step::More(counts)
    })
}

/// The earliest `start_date` on a page, as epoch seconds: the next page
/// lists what started before it.
fn oldest_start(page: &[Box<RawValue>]) -> Result<Option<i64>, StravaError> {
    #[derive(Deserialize)]
    struct Start {
        start_date: DateTime<Utc>,
    }
    page.iter()
        .map(|raw| {
            serde_json::from_str::<Start>(raw.get())
                .map(|s| s.start_date.timestamp())
                .map_err(|e| StravaError::Malformed(format!("activity without start_date: {e}")))
        })
        .try_fold(None, |min: Option<i64>, t| {
            let t = t?;
            Ok(Some(min.map_or(t, |m| m.min(t))))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Purpose;
    use crate::store::{activity_edits, athletes};

    /// A Strava whose list is one fixed page.
    struct OnePage(Vec<Box<RawValue>>);

    impl ActivitySource for OnePage {
        async fn list_activities(
            &self,
            _: i64,
            _: Purpose,
            _: &ListQuery,
        ) -> Result<Vec<Box<RawValue>>, StravaError> {
            Ok(self.0.clone())
        }

        async fn get_activity(
            &self,
            _: i64,
            _: Purpose,
            _: i64,
        ) -> Result<Box<RawValue>, StravaError> {
            Err(StravaError::NotFound)
        }
    }

    #[tokio::test]
    async fn a_history_page_lagging_a_delete_does_not_bring_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        store
            .write(|tx| {
                athletes::upsert(tx, &serde_json::json!({"id": 1}), "activity:read_all")?;
                activity_edits::delete(tx, 1, 10, 500)?;
                Ok(())
            })
            .await
            .unwrap();
        let strava = OnePage(vec![
            raw(r#"{"id":10,"athlete":{"id":1},"start_date":"2024-05-02T10:00:00Z"}"#),
            raw(r#"{"id":11,"athlete":{"id":1},"start_date":"2024-05-01T10:00:00Z"}"#),
        ]);
        let job = Job {
            id: 1,
            athlete_id: 1,
            kind: JobKind::FirstPage,
            status: "running".into(),
            payload_json: None,
            attempts: 1,
            fetched: 0,
            new: 0,
            updated: 0,
            error: None,
            created_at: 0,
        };
        let step = page(&strava, &store, &job).await.unwrap();
        assert!(matches!(step, Step::Done(c) if c.fetched == 2 && c.new == 1));
        let stored = store
            .read(|c| activities::stored_ids(c, 1, &[10, 11]))
            .await
            .unwrap();
        assert_eq!(stored, [11]);
    }

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_string()).unwrap()
    }

    #[test]
    fn the_cursor_moves_to_the_oldest_start_whatever_the_page_order() {
        let page = vec![
            raw(r#"{"id":1,"start_date":"2024-05-02T10:00:00Z"}"#),
            raw(r#"{"id":2,"start_date":"2023-01-01T00:00:00Z","extra":1.0}"#),
            raw(r#"{"id":3,"start_date":"2024-01-01T00:00:00Z"}"#),
        ];
        assert_eq!(oldest_start(&page).unwrap(), Some(1_672_531_200));
        assert_eq!(oldest_start(&[]).unwrap(), None);
        assert!(oldest_start(&[raw(r#"{"id":4}"#)]).is_err());
    }
}
