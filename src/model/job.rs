//! Queued work that spends the Strava budget, as one typed task per job.
//!
//! A task's variant is its kind and carries its payload; the queue keeps at
//! most one queued job per athlete and kind, so a new task for the same
//! athlete merges into the queued one by its variant's rule
//! ([`Task::merge`]), stated here once for every kind.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::Purpose;

/// One job's work. Stored as its kind (`jobs.kind`) and its payload
/// (`jobs.payload_json`, absent for kinds without one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum Task {
    /// The first page of activities right after connect.
    FirstPage,
    /// A manual refresh from `POST /api/sync`.
    Refresh,
    /// Fetch activities announced by webhook create events.
    WebhookFetch(Fetch),
    /// The daily gap-fill for one athlete.
    GapFill,
    /// One or more pages of history backfill.
    Backfill,
    /// Detailed records for summary-only activities.
    Enrich(Enrich),
    /// Compare Strava's id list with the local copy.
    Reconcile,
}

/// The payload of [`Task::WebhookFetch`].
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetch {
    /// Activities announced by create events, oldest first, no repeats.
    pub activity_ids: Vec<i64>,
}

/// The payload of [`Task::Enrich`].
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrich {
    /// Activities whose detailed record is wanted, no repeats.
    pub activity_ids: Vec<i64>,
}

impl Task {
    /// A fetch of announced activities (repeats dropped, at most
    /// [`TRACKED_IDS`] kept).
    pub fn fetch(activity_ids: Vec<i64>) -> Self {
        let mut fetch = Fetch::default();
        union(&mut fetch.activity_ids, activity_ids);
        Task::WebhookFetch(fetch)
    }

    /// The kind as stored in `jobs.kind` and shown by `GET /api/sync`.
    pub fn kind(&self) -> &'static str {
        match self {
            Task::FirstPage => "first_page",
            Task::Refresh => "refresh",
            Task::WebhookFetch(_) => "webhook_fetch",
            Task::GapFill => "gap_fill",
            Task::Backfill => "backfill",
            Task::Enrich(_) => "enrich",
            Task::Reconcile => "reconcile",
        }
    }

    /// The budget priority the task's calls are made at.
    pub fn purpose(&self) -> Purpose {
        match self {
            Task::FirstPage | Task::Refresh => Purpose::Interactive,
            Task::WebhookFetch(_) => Purpose::Webhook,
            Task::GapFill => Purpose::GapFill,
            Task::Backfill => Purpose::Backfill,
            Task::Enrich(_) => Purpose::Enrichment,
            Task::Reconcile => Purpose::Reconcile,
        }
    }

    /// Folds a task of the same kind into this queued one. Kinds without a
    /// payload are the same work however often asked for; a fetch or an
    /// enrichment takes the union of the ids.
    pub fn merge(&mut self, newer: Task) {
        match (self, newer) {
            (Task::WebhookFetch(queued), Task::WebhookFetch(newer)) => {
                union(&mut queued.activity_ids, newer.activity_ids)
            }
            (Task::Enrich(queued), Task::Enrich(newer)) => {
                union(&mut queued.activity_ids, newer.activity_ids)
            }
            (queued, newer) => debug_assert_eq!(queued.kind(), newer.kind()),
        }
    }

    /// This task without an activity a delete event removed; None when
    /// nothing is left to do, so the job is dropped and costs no call.
    pub fn without_activity(mut self, activity_id: i64) -> Option<Task> {
        let ids = match &mut self {
            Task::WebhookFetch(fetch) => &mut fetch.activity_ids,
            Task::Enrich(enrich) => &mut enrich.activity_ids,
            _ => return Some(self),
        };
        ids.retain(|id| *id != activity_id);
        (!ids.is_empty()).then_some(self)
    }

    /// The payload as stored: the variant's content, None for kinds without.
    pub fn payload_json(&self) -> serde_json::Result<Option<String>> {
        match serde_json::to_value(self)? {
            serde_json::Value::Object(mut tagged) => {
                Ok(tagged.remove("payload").map(|p| p.to_string()))
            }
            _ => unreachable!("an adjacently tagged enum serializes to an object"),
        }
    }

    /// The task stored as `kind` with `payload`; an unknown kind or an
    /// unreadable payload is an error, never work to guess at.
    pub fn from_stored(kind: &str, payload: Option<&str>) -> serde_json::Result<Self> {
        let kind = serde_json::to_string(kind)?;
        let json = match payload {
            Some(payload) => format!(r#"{{"kind":{kind},"payload":{payload}}}"#),
            None => format!(r#"{{"kind":{kind}}}"#),
        };
        serde_json::from_str(&json)
    }
}

/// The most activity ids one queued job keeps. A flood of announcements for
/// one athlete (forged creates) then costs bounded work per merge and bounded
/// storage; what a fetch no longer names, its listing (which reaches back to
/// the oldest announcement) still brings in, and enrichment is planned again.
pub const TRACKED_IDS: usize = 1000;

/// `queued` and then the ids of `newer` it lacks, oldest first, up to
/// [`TRACKED_IDS`].
fn union(queued: &mut Vec<i64>, newer: Vec<i64>) {
    let mut seen: BTreeSet<i64> = queued.iter().copied().collect();
    let room = TRACKED_IDS.saturating_sub(queued.len());
    queued.extend(newer.into_iter().filter(|id| seen.insert(*id)).take(room));
}

/// What a job (or one step of it) fetched and changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub fetched: i64,
    pub new: i64,
    pub updated: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_round_trips_through_its_stored_form() {
        for task in [
            Task::fetch(vec![17_179_869_185, 3]),
            Task::Backfill,
            Task::fetch(vec![9]),
        ] {
            let payload = task.payload_json().unwrap();
            assert_eq!(
                Task::from_stored(task.kind(), payload.as_deref()).unwrap(),
                task
            );
        }
        // Payloads stored before misses were counted per athlete.
        assert_eq!(
            Task::from_stored("webhook_fetch", Some(r#"{"activity_ids":[4],"retries":2}"#))
                .unwrap(),
            Task::fetch(vec![4])
        );
        assert_eq!(Task::GapFill.payload_json().unwrap(), None);
        let err = Task::from_stored("bogus", None).unwrap_err().to_string();
        assert!(err.contains("unknown variant `bogus`"), "{err}");
        assert!(Task::from_stored("webhook_fetch", Some("[1]")).is_err());
    }

    #[test]
    fn merging_takes_the_union() {
        let mut queued = Task::fetch(vec![1, 2]);
        queued.merge(Task::fetch(vec![2, 3]));
        assert_eq!(queued, Task::fetch(vec![1, 2, 3]));
        let mut enrich = Task::Enrich(Enrich {
            activity_ids: vec![5],
        });
        enrich.merge(Task::Enrich(Enrich {
            activity_ids: vec![6, 5],
        }));
        assert_eq!(
            enrich,
            Task::Enrich(Enrich {
                activity_ids: vec![5, 6]
            })
        );
    }

    #[test]
    fn a_flood_of_announcements_keeps_the_oldest_thousand() {
        let mut queued = Task::fetch(vec![0]);
        for id in 1..5000 {
            queued.merge(Task::fetch(vec![id]));
        }
        // A batch's creates made into one task keep the same.
        assert_eq!(Task::fetch((0..5000).chain(0..5).collect()), queued);
        let Task::WebhookFetch(fetch) = queued else {
            panic!("a fetch")
        };
        assert_eq!(
            fetch.activity_ids,
            (0..TRACKED_IDS as i64).collect::<Vec<_>>()
        );
    }

    #[test]
    fn removing_the_last_activity_drops_the_task() {
        let left = Task::fetch(vec![1, 2]).without_activity(1).unwrap();
        let two = Task::fetch(vec![2]);
        assert_eq!(left, two);
        assert_eq!(left.without_activity(2), None);
        assert_eq!(Task::GapFill.without_activity(2), Some(Task::GapFill));
    }
}
