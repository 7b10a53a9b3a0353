//! The change log (`changes`): every change to what an athlete can read,
//! appended by the store function that makes it, inside the same transaction,
//! so no change is told without being made or made without being told. The
//! change feed reads it by cursor; deliveries to the application walk it in
//! order per athlete.

use super::sql::{self, params, Connection, Row};
use serde::Serialize;
use serde_json::value::RawValue;

use super::{service_state, DbError, DbResult, Store};
use crate::model::app_event::{AppEvent, ChangeKind};

/// The highest id pruning removed: a cursor below it may have missed changes.
const PRUNED_THROUGH: &str = "changes_pruned_through";
/// A feed page stops once its activities reach this many bytes, however
/// many changes `limit` allows: each carries its activity's whole JSON.
pub const PAGE_BYTES: usize = 1 << 20;

/// Appends an activity's change. The activity itself is not copied: an
/// event carries it as stored when the event is read (see [`DATA`]), so
/// the log stays small however large a backfill is.
pub fn record_activity(
    conn: &dyn Connection,
    athlete_id: i64,
    activity_id: i64,
    kind: ChangeKind,
    at: i64,
) -> DbResult<()> {
    conn.prepare_cached(
        "INSERT INTO changes (athlete_id, kind, activity_id, occurred_at, retry_from)
         VALUES (?1, ?2, ?3, ?4, ?4)",
    )?
    .execute(params![athlete_id, kind.as_str(), activity_id, at])?;
    Ok(())
}

/// Appends a change of the athlete's own state (connected, needs
/// re-authorization, deauthorized). Returns its id.
pub fn record_athlete(
    conn: &dyn Connection,
    athlete_id: i64,
    kind: ChangeKind,
    at: i64,
) -> DbResult<i64> {
    conn.query_row(
        "INSERT INTO changes (athlete_id, kind, occurred_at, retry_from) VALUES (?1, ?2, ?3, ?3)
         RETURNING id",
        params![athlete_id, kind.as_str(), at],
        |r| r.get(0),
    )
}

/// Logs the athlete's `athlete.deauthorized` and removes their earlier
/// changes (they name the activities a deauthorization deletes). The new
/// change comes first, so its id is past every id already handed out.
pub fn record_deauthorization(conn: &dyn Connection, athlete_id: i64, at: i64) -> DbResult<()> {
    let told = record_athlete(conn, athlete_id, ChangeKind::AthleteDeauthorized, at)?;
    conn.execute(
        "DELETE FROM changes WHERE athlete_id = ?1 AND id < ?2",
        params![athlete_id, told],
    )?;
    Ok(())
}

/// An event's `data`, `c` the change: a created or updated activity's JSON
/// as stored now (the detail when fetched, else the summary), none once it
/// is deleted.
const DATA: &str = "CASE WHEN c.kind IN ('activity.created', 'activity.updated')
         THEN (SELECT COALESCE(a.detail_json, a.summary_json) FROM activities a
               WHERE a.id = c.activity_id AND a.athlete_id = c.athlete_id) END";

/// Events as read from the log, `c` the change, with `data` ([`DATA`], or
/// `NULL` where the activity is not wanted).
fn events(data: &str) -> String {
    format!(
        "SELECT c.id, c.kind, c.athlete_id, c.activity_id, c.occurred_at, {data},
             c.attempts, c.retry_from, c.last_error
         FROM changes c"
    )
}

fn event(r: &dyn Row) -> DbResult<AppEvent> {
    let kind: String = r.get(1)?;
    let data: Option<String> = r.get(5)?;
    Ok(AppEvent {
        id: r.get(0)?,
        kind: ChangeKind::parse(&kind)
            .ok_or_else(|| DbError::Decode(format!("unknown change kind {kind}")))?,
        athlete_id: r.get(2)?,
        activity_id: r.get(3)?,
        occurred_at: r.get(4)?,
        data: data.map(RawValue::from_string).transpose()?,
    })
}

/// One page of an athlete's changes.
#[derive(Debug)]
pub struct ChangePage {
    pub changes: Vec<AppEvent>,
    /// Where the next read starts: past this page, and, once the athlete's
    /// changes are all read, past everyone's, so an idle cursor never falls
    /// behind pruning.
    pub next_cursor: i64,
    /// Whether the athlete has more changes after this page (it stopped at
    /// its `limit` or its size), to be read at once rather than waited for.
    pub more: bool,
}

/// A change waiting to be delivered.
#[derive(Debug)]
pub struct DueDelivery {
    pub event: AppEvent,
    pub attempts: i64,
    pub retry_from: i64,
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    Retry {
        error: String,
        at: i64,
    },
    /// Given up: waits for an operator's replay.
    Failed {
        error: String,
    },
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FailedDelivery {
    #[serde(flatten)]
    pub event: AppEvent,
    pub attempts: i64,
    pub last_error: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryCounts {
    pub pending: i64,
    pub failed: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryReport {
    pub counts: DeliveryCounts,
    /// When the oldest change not delivered yet happened.
    pub oldest_pending_at: Option<i64>,
    pub failed: Vec<FailedDelivery>,
}

impl Store {
    /// The athlete's changes after `since`, at most `limit` and about
    /// [`PAGE_BYTES`]; None when changes after `since` were pruned, or
    /// `since` is ahead of the log (a cursor from another database): the
    /// reader must start again. Read as one snapshot, so a change committed
    /// meanwhile is either on this page or after `next_cursor`.
    pub async fn changes_after(
        &self,
        athlete_id: i64,
        since: i64,
        limit: usize,
    ) -> DbResult<Option<ChangePage>> {
        self.read(move |c| {
            let latest = latest(c)?;
            // Pruning keeps each athlete's newest change, so a cursor at or
            // past it missed nothing of theirs, however old.
            let missed = since > 0
                && since < pruned_through(c)?
                && newest_of(c, athlete_id)?.is_some_and(|newest| since < newest);
            if since > latest || missed {
                return Ok(None);
            }
            let (mut changes, mut bytes, mut more) = (Vec::new(), 0, false);
            // One row past the page says whether more follow; the rows
            // after a full page are never read.
            c.prepare_cached(&format!(
                "{} WHERE c.athlete_id = ?1 AND c.id > ?2 ORDER BY c.id LIMIT ?3",
                events(DATA)
            ))?
            .for_each(params![athlete_id, since, limit as i64 + 1], |row| {
                if changes.len() == limit || bytes >= PAGE_BYTES {
                    more = true;
                    return Ok(false);
                }
                let change = event(row)?;
                bytes += change.data.as_ref().map_or(0, |d| d.get().len());
                changes.push(change);
                Ok(true)
            })?;
            let next_cursor = match changes.last() {
                Some(last) if more => last.id,
                _ => latest.max(since),
            };
            Ok(Some(ChangePage {
                changes,
                next_cursor,
                more,
            }))
        })
        .await
    }

    /// The athletes with changes in `(after, through]`.
    pub async fn athletes_changed(&self, after: i64, through: i64) -> DbResult<Vec<i64>> {
        self.read(move |c| {
            c.prepare_cached("SELECT DISTINCT athlete_id FROM changes WHERE id > ?1 AND id <= ?2")?
                .query_map(params![after, through], |r| r.get(0))?
                .collect::<Result<_, _>>()
        })
        .await
    }

    /// The newest change's id (0 when there is none).
    pub async fn latest_change(&self) -> DbResult<i64> {
        self.read(latest).await
    }

    /// Claims the oldest undelivered change of each athlete, when due at
    /// `now`: a later change waits for the earlier one, so each athlete's
    /// events arrive in order. A claimed change is not due again for
    /// `claim_secs`, so another instance sharing the database does not post
    /// it too; the outcome recorded replaces the claim, and a claim whose
    /// instance died runs out.
    pub async fn claim_deliveries(
        &self,
        now: i64,
        limit: usize,
        claim_secs: i64,
    ) -> DbResult<Vec<DueDelivery>> {
        self.write(move |c| {
            let rows: Vec<DueDelivery> = c
                .prepare_cached(&format!(
                    "{} JOIN (SELECT MIN(id) AS id FROM changes WHERE delivery = 'pending'
                                    GROUP BY athlete_id) AS head ON c.id = head.id
                     WHERE c.next_attempt_at <= ?1
                     ORDER BY c.id LIMIT ?2",
                    events(DATA)
                ))?
                .query_map(params![now, limit as i64], |r| {
                    Ok(DueDelivery {
                        event: event(r)?,
                        attempts: r.get(6)?,
                        retry_from: r.get(7)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let ids: Vec<i64> = rows.iter().map(|d| d.event.id).collect();
            let until = now + claim_secs;
            for chunk in ids.chunks(500) {
                let mut params = vec![&until as &dyn sql::ToSql];
                params.extend(sql::params_from(chunk));
                c.execute(
                    &format!(
                        "UPDATE changes SET next_attempt_at = ?1 WHERE id IN ({})",
                        sql::placeholders_from(2, chunk.len())
                    ),
                    params,
                )?;
            }
            Ok(rows)
        })
        .await
    }

    /// Records how delivery attempts ended, in one transaction.
    pub async fn record_deliveries(&self, outcomes: Vec<(i64, Delivery)>) -> DbResult<()> {
        self.write(move |tx| {
            let mut stmt = tx.prepare_cached(
                "UPDATE changes SET delivery = ?2, attempts = attempts + 1,
                     next_attempt_at = ?3, last_error = ?4
                 WHERE id = ?1 AND delivery = 'pending'",
            )?;
            for (id, outcome) in outcomes {
                let (state, at, error) = match outcome {
                    Delivery::Delivered => ("delivered", 0, None),
                    Delivery::Retry { error, at } => ("pending", at, Some(error)),
                    Delivery::Failed { error } => ("failed", 0, Some(error)),
                };
                stmt.execute(params![id, state, at, error])?;
            }
            Ok(())
        })
        .await
    }

    /// Counts by delivery state, the oldest undelivered change's time and
    /// the newest `failed_shown` failed deliveries.
    pub async fn delivery_report(&self, failed_shown: usize) -> DbResult<DeliveryReport> {
        self.read(move |c| {
            // Only the states the partial indexes hold: counting the
            // delivered would read the whole log on every scrape.
            let count = |state: &str| -> DbResult<i64> {
                c.prepare_cached("SELECT COUNT(*) FROM changes WHERE delivery = ?1")?
                    .query_row(params![state], |r| r.get(0))
            };
            let counts = DeliveryCounts {
                pending: count("pending")?,
                failed: count("failed")?,
            };
            let oldest_pending_at = c
                .prepare_cached("SELECT MIN(occurred_at) FROM changes WHERE delivery = 'pending'")?
                .query_row(params![], |r| r.get(0))?;
            let failed = c
                .prepare_cached(&format!(
                    "{} WHERE c.delivery = 'failed' ORDER BY c.id DESC LIMIT ?1",
                    // The list shows what failed, not the activities.
                    events("NULL")
                ))?
                .query_map(params![failed_shown as i64], |r| {
                    Ok(FailedDelivery {
                        event: event(r)?,
                        attempts: r.get(6)?,
                        last_error: r.get(8)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(DeliveryReport {
                counts,
                oldest_pending_at,
                failed,
            })
        })
        .await
    }

    /// Puts every failed delivery back in line, retrying from `now`.
    /// Returns how many.
    pub async fn replay_failed_deliveries(&self, now: i64) -> DbResult<usize> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE changes SET delivery = 'pending', attempts = 0, next_attempt_at = 0,
                     retry_from = ?1
                 WHERE delivery = 'failed'",
                [now],
            )
        })
        .await
    }

    /// Deletes up to `limit` changes: delivered ones from before `before`,
    /// and any from before `any_before`; never an athlete's newest, which
    /// names the state of their list (see `page_anchors`) and, being the
    /// newest overall for one of them, keeps its id from being handed out
    /// again. Returns how many.
    pub async fn prune_changes(
        &self,
        before: i64,
        any_before: i64,
        limit: usize,
    ) -> DbResult<usize> {
        self.write(move |tx| {
            let pruned: Vec<i64> = tx
                .prepare_cached(
                    "DELETE FROM changes WHERE id IN (
                         SELECT id FROM changes
                         WHERE (occurred_at < ?2 OR (occurred_at < ?1 AND delivery = 'delivered'))
                           AND id NOT IN (SELECT MAX(id) FROM changes GROUP BY athlete_id)
                         ORDER BY id LIMIT ?3)
                     RETURNING id",
                )?
                .query_map(params![before, any_before, limit as i64], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            if let Some(&through) = pruned.iter().max() {
                let through = through.max(pruned_through(tx)?);
                service_state::set(tx, PRUNED_THROUGH, &through.to_string())?;
            }
            Ok(pruned.len())
        })
        .await
    }
}

/// The highest id pruning has removed (0 before any).
fn pruned_through(c: &dyn Connection) -> DbResult<i64> {
    Ok(service_state::get(c, PRUNED_THROUGH)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// The athlete's newest change: it names the current state of what they can
/// read (every insert and delete of an activity logs one, and pruning keeps
/// it), None when nothing of theirs is logged.
pub fn newest_of(c: &dyn Connection, athlete_id: i64) -> DbResult<Option<i64>> {
    c.prepare_cached("SELECT MAX(id) FROM changes WHERE athlete_id = ?1")?
        .query_row(params![athlete_id], |r| r.get(0))
}

fn latest(c: &dyn Connection) -> DbResult<i64> {
    c.prepare_cached("SELECT COALESCE(MAX(id), 0) FROM changes")?
        .query_row(params![], |r| r.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        store
            .write_blocking(|tx| {
                for (athlete, at) in [(1, 10), (2, 11), (1, 12), (2, 13), (1, 14)] {
                    record_athlete(tx, athlete, ChangeKind::AthleteConnected, at)?;
                }
                Ok(())
            })
            .unwrap();
        (dir, store)
    }

    async fn heads(store: &Store, now: i64) -> Vec<i64> {
        claimed(store, now, 0).await
    }

    async fn claimed(store: &Store, now: i64, claim_secs: i64) -> Vec<i64> {
        let due = store.claim_deliveries(now, 10, claim_secs).await.unwrap();
        due.iter().map(|d| d.event.id).collect()
    }

    #[tokio::test]
    async fn a_claimed_change_is_not_handed_out_again_until_its_claim_runs_out() {
        let (_dir, store) = store();
        assert_eq!(claimed(&store, 0, 60).await, [1, 2]);
        assert_eq!(claimed(&store, 59, 60).await, Vec::<i64>::new());
        assert_eq!(claimed(&store, 60, 60).await, [1, 2], "its instance died");
    }

    #[tokio::test]
    async fn each_athletes_next_change_waits_for_the_one_before() {
        let (_dir, store) = store();
        assert_eq!(heads(&store, 0).await, [1, 2]);
        store
            .record_deliveries(vec![
                (1, Delivery::Delivered),
                (
                    2,
                    Delivery::Retry {
                        error: "503".into(),
                        at: 100,
                    },
                ),
            ])
            .await
            .unwrap();
        assert_eq!(heads(&store, 99).await, [3], "2 waits, and 4 behind it");
        assert_eq!(heads(&store, 100).await, [2, 3], "a due retry goes by age");
        store
            .record_deliveries(vec![(
                3,
                Delivery::Failed {
                    error: "gone".into(),
                },
            )])
            .await
            .unwrap();
        assert_eq!(
            heads(&store, 100).await,
            [2, 5],
            "a failed change stops no one"
        );
        let report = store.delivery_report(10).await.unwrap();
        assert_eq!((report.counts.pending, report.counts.failed), (3, 1));
        assert_eq!(report.oldest_pending_at, Some(11));
        assert_eq!(store.replay_failed_deliveries(200).await.unwrap(), 1);
        assert_eq!(
            heads(&store, 100).await,
            [2, 3],
            "the replayed one goes first again"
        );
    }

    #[tokio::test]
    async fn pruning_marks_how_far_a_cursor_may_lag() {
        let (_dir, store) = store();
        store
            .record_deliveries(vec![(1, Delivery::Delivered), (2, Delivery::Delivered)])
            .await
            .unwrap();
        assert_eq!(store.prune_changes(12, 0, 100).await.unwrap(), 2);
        assert!(store.changes_after(1, 1, 10).await.unwrap().is_none());
        let page = store.changes_after(1, 2, 10).await.unwrap().unwrap();
        assert_eq!(
            page.changes.iter().map(|c| c.id).collect::<Vec<_>>(),
            [3, 5]
        );
        assert_eq!(page.next_cursor, 5);
        let first = store.changes_after(1, 0, 1).await.unwrap().unwrap();
        assert_eq!(first.next_cursor, 3, "a full page points past itself only");
        assert_eq!(
            store.prune_changes(0, 14, 100).await.unwrap(),
            1,
            "undelivered, once old enough, but never an athlete's newest"
        );
        assert_eq!(
            store.prune_changes(i64::MAX, i64::MAX, 100).await.unwrap(),
            0
        );
        store
            .write(|tx| record_athlete(tx, 1, ChangeKind::AthleteNeedsReauth, 20))
            .await
            .unwrap();
        assert_eq!(store.latest_change().await.unwrap(), 6, "no id comes back");
        // Athlete 2's cursor at their newest change missed nothing, though
        // older ids than it were pruned; one ahead of the log is refused.
        assert!(store.changes_after(2, 4, 10).await.unwrap().is_some());
        assert!(store.changes_after(2, 7, 10).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_page_stops_near_its_size_and_says_more_follow() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        store
            .write_blocking(|tx| {
                crate::store::athletes::upsert(tx, &serde_json::json!({"id": 1}), "read", 0)?;
                let padding = "x".repeat(PAGE_BYTES / 2);
                let page: Vec<_> = (1..=3)
                    .map(|id| {
                        RawValue::from_string(format!(
                            r#"{{"id":{id},"athlete":{{"id":1}},"start_date":"2026-01-0{id}T00:00:00Z","name":"{padding}"}}"#
                        ))
                        .unwrap()
                    })
                    .collect();
                crate::store::activities::upsert_summaries(tx, 1, &page, 0)?;
                Ok(())
            })
            .unwrap();
        // Connected, then three half-megabyte activities.
        let first = store.changes_after(1, 0, 10).await.unwrap().unwrap();
        assert_eq!(first.changes.len(), 3, "connected and two activities");
        assert!(first.more, "the third follows");
        assert_eq!(first.next_cursor, 3);
        let rest = store
            .changes_after(1, first.next_cursor, 10)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rest.changes.len(), 1);
        assert!(!rest.more);
    }

    #[tokio::test]
    async fn a_deauthorization_takes_an_id_past_every_earlier_one() {
        let (_dir, store) = store();
        let told = store
            .write(|tx| {
                record_deauthorization(tx, 1, 30)?;
                latest(tx)
            })
            .await
            .unwrap();
        assert_eq!(told, 6, "after athlete 1's own newest, 5");
        let page = store.changes_after(1, 0, 10).await.unwrap().unwrap();
        let kinds: Vec<_> = page.changes.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, [ChangeKind::AthleteDeauthorized]);
    }
}
