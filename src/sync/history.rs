//! An athlete's history, newest to oldest: the first page at connect
//! (interactive) and then the backfill (one page per run, so the runner can
//! serve more urgent work between pages). Each page's activities and the
//! cursor past them commit in one transaction: a restart never refetches a
//! finished page.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::outcome::{JobError, Step};
use super::source::ActivitySource;
use crate::model::job::{Counts, Task};
use crate::store::sync_state::Backfill;
use crate::store::Store;
use crate::strava::client::{ListQuery, MAX_PER_PAGE};
use crate::strava::error::StravaError;

/// Fetches one page of history for the athlete: the newest page for
/// [`Task::FirstPage`], the page below the cursor for [`Task::Backfill`].
/// The backfill ends at the first empty page (Strava has no total; a short
/// page may only mean hidden activities).
pub async fn page<S: ActivitySource>(
    client: &S,
    store: &Store,
    athlete_id: i64,
    task: &Task,
    now: i64,
) -> Result<Step, JobError> {
    let first = *task == Task::FirstPage;
    let cursor = store.backfill_cursor(athlete_id).await?;
    if !first && cursor.complete {
        return Ok(Step::Done(Counts::default()));
    }
    let query = ListQuery {
        before: if first { None } else { cursor.before },
        per_page: Some(MAX_PER_PAGE),
        ..ListQuery::default()
    };
    let page = client
        .list_activities(athlete_id, task.purpose(), &query)
        .await?;
    let oldest = oldest_start(&page)?;
    let fetched = page.len() as i64;
    // The first page starts the cursor of a fresh athlete; after a reconnect
    // the backfill keeps its place.
    let next = (!first || cursor.pages == 0).then(|| Backfill {
        before: oldest.or(cursor.before),
        pages: cursor.pages + 1,
        complete: fetched == 0,
    });
    // Strava's list can lag a delete event: what it removed stays gone.
    let upserted = store
        .store_history_page(athlete_id, page, next, now)
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
    use crate::store::{activities, activity_edits, athletes};

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
                athletes::upsert(tx, &serde_json::json!({"id": 1}), "activity:read_all", 0)?;
                activity_edits::delete(tx, 1, 10, 500, 500)?;
                Ok(())
            })
            .await
            .unwrap();
        let strava = OnePage(vec![
            raw(r#"{"id":10,"athlete":{"id":1},"start_date":"2024-05-02T10:00:00Z"}"#),
            raw(r#"{"id":11,"athlete":{"id":1},"start_date":"2024-05-01T10:00:00Z"}"#),
        ]);
        let step = page(&strava, &store, 1, &Task::FirstPage, 0).await.unwrap();
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
