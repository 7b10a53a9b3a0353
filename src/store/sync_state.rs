//! Per-athlete sync progress and bookkeeping: when each kind of pass last
//! ran, where the backfill and the deletion reconciliation stand, and the
//! manual-refresh cooldown. The backfill cursor is written in the same
//! transaction as the page it moved past, so a restart or a spent budget
//! resumes exactly there; the reconciliation's likewise.

use super::sql::{params, Connection, OptionalExtension};
use serde::Serialize;

use serde_json::value::RawValue;

use super::activities::{self, Upserted};
use super::athletes::{self, Athlete};
use super::{budget, jobs, service_state, DbResult, Store};
use crate::model::job::Task;
use crate::model::Purpose;

/// Where an athlete's history backfill stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Backfill {
    /// The next page lists activities that started before this (epoch
    /// seconds); None: from the newest.
    pub before: Option<i64>,
    pub pages: i64,
    pub complete: bool,
}

pub fn backfill(conn: &dyn Connection, athlete_id: i64) -> DbResult<Option<Backfill>> {
    conn.query_row(
        "SELECT backfill_before, backfill_pages, backfill_complete FROM sync_state
             WHERE athlete_id = ?1",
        [athlete_id],
        |r| {
            Ok(Backfill {
                before: r.get(0)?,
                pages: r.get(1)?,
                complete: r.get(2)?,
            })
        },
    )
    .optional()
}

pub fn set_backfill(conn: &dyn Connection, athlete_id: i64, b: &Backfill) -> DbResult<()> {
    conn.execute(
        "INSERT INTO sync_state (athlete_id, backfill_before, backfill_pages, backfill_complete)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(athlete_id) DO UPDATE SET backfill_before = excluded.backfill_before,
             backfill_pages = excluded.backfill_pages,
             backfill_complete = excluded.backfill_complete",
        params![athlete_id, b.before, b.pages, b.complete],
    )?;
    Ok(())
}

/// Records on the athlete's sync state when we last heard from Strava about
/// them (`GET /api/sync` shows it).
pub fn record_webhook_at(conn: &dyn Connection, athlete_id: i64, received_at: i64) -> DbResult<()> {
    conn.prepare_cached(
        "UPDATE sync_state SET last_webhook_at = greatest(coalesce(last_webhook_at, 0), ?2)
         WHERE athlete_id = ?1",
    )?
    .execute(params![athlete_id, received_at])?;
    Ok(())
}

/// Until when the athlete's next listing for announced activities waits
/// (see [`Store::missed_announced`]); None: it need not wait.
pub fn announcement_hold(conn: &dyn Connection, athlete_id: i64) -> DbResult<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT announce_hold_until FROM sync_state WHERE athlete_id = ?1")?
        .query_row(params![athlete_id], |r| r.get(0))
        .optional()?
        .flatten())
}

/// One athlete as `/admin/athletes` lists them.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AthleteOverview {
    pub id: i64,
    pub status: String,
    pub scope: String,
    pub connected_at: i64,
    pub tier: String,
    pub last_read_at: Option<i64>,
    pub activities: i64,
    pub backfill_pages: i64,
    pub backfill_complete: bool,
    pub last_gap_fill_at: Option<i64>,
    pub last_webhook_at: Option<i64>,
    pub last_reconcile_at: Option<i64>,
    pub queued_jobs: i64,
    pub failed_jobs: i64,
}

/// Every athlete with their sync state, oldest connection first.
fn overview(conn: &dyn Connection) -> DbResult<Vec<AthleteOverview>> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.id, a.status, a.scope, a.connected_at,
                (SELECT COUNT(*) FROM activities x WHERE x.athlete_id = a.id),
                COALESCE(s.backfill_pages, 0), COALESCE(s.backfill_complete, 0),
                s.last_gap_fill_at, s.last_webhook_at, s.last_reconcile_at,
                COALESCE(a.tier, (SELECT name FROM tier_weights WHERE is_default = 1), ''),
                a.last_read_at
         FROM athletes a LEFT JOIN sync_state s ON s.athlete_id = a.id
         ORDER BY a.connected_at, a.id",
    )?;
    let jobs = jobs::queued_and_failed_by_athlete(conn)?;
    let rows = stmt.query_map(params![], |r| {
        let id = r.get(0)?;
        let (queued_jobs, failed_jobs) = jobs.get(&id).copied().unwrap_or_default();
        Ok(AthleteOverview {
            id,
            status: r.get(1)?,
            scope: r.get(2)?,
            connected_at: r.get(3)?,
            activities: r.get(4)?,
            backfill_pages: r.get(5)?,
            backfill_complete: r.get(6)?,
            last_gap_fill_at: r.get(7)?,
            last_webhook_at: r.get(8)?,
            last_reconcile_at: r.get(9)?,
            tier: r.get(10)?,
            last_read_at: r.get(11)?,
            queued_jobs,
            failed_jobs,
        })
    })?;
    rows.collect::<Result<_, _>>()
}

/// One athlete's row; absent rows read as the defaults of a new athlete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncState {
    pub backfill_before: Option<i64>,
    pub backfill_pages: i64,
    pub backfill_complete: bool,
    pub last_gap_fill_at: Option<i64>,
    pub last_webhook_at: Option<i64>,
    pub last_reconcile_at: Option<i64>,
    pub reconcile_cursor: Option<i64>,
    pub last_manual_refresh_at: Option<i64>,
}

pub fn get(conn: &dyn Connection, athlete_id: i64) -> DbResult<SyncState> {
    Ok(conn
        .query_row(
            "SELECT backfill_before, backfill_pages, backfill_complete, last_gap_fill_at,
                    last_webhook_at, last_reconcile_at, reconcile_cursor,
                    last_manual_refresh_at
             FROM sync_state WHERE athlete_id = ?1",
            [athlete_id],
            |r| {
                Ok(SyncState {
                    backfill_before: r.get(0)?,
                    backfill_pages: r.get(1)?,
                    backfill_complete: r.get::<i64>(2)? != 0,
                    last_gap_fill_at: r.get(3)?,
                    last_webhook_at: r.get(4)?,
                    last_reconcile_at: r.get(5)?,
                    reconcile_cursor: r.get(6)?,
                    last_manual_refresh_at: r.get(7)?,
                })
            },
        )
        .optional()?
        .unwrap_or_default())
}

/// Up to `limit` connected athletes in gap-fill order: those who read since
/// `attention_since` first, then higher tiers, then never checked, then the
/// one checked longest ago. Athletes needing re-authorization are left out:
/// their tokens cannot fetch anything.
pub fn gap_fill_order(
    conn: &dyn Connection,
    limit: u32,
    attention_since: i64,
) -> DbResult<Vec<i64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.id FROM athletes a LEFT JOIN sync_state s ON s.athlete_id = a.id
         LEFT JOIN tier_weights w ON w.name = a.tier
         LEFT JOIN tier_weights d ON d.is_default = 1
         WHERE a.status = 'connected'
         ORDER BY CASE WHEN a.last_read_at >= ?2 THEN 1 ELSE 0 END DESC, COALESCE(w.weight, d.weight, 1) DESC,
                  s.last_gap_fill_at IS NOT NULL, s.last_gap_fill_at, a.id
         LIMIT ?1",
    )?;
    let ids = stmt
        .query_map(params![limit, attention_since], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(ids)
}

/// Connected athletes with a complete backfill whose reconciliation is in
/// progress, or whose last one started before `before` (or never), longest
/// ago first. Until the backfill is complete it would list the same history
/// anyway.
fn due_for_reconcile(conn: &dyn Connection, before: i64) -> DbResult<Vec<i64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.id FROM athletes a JOIN sync_state s ON s.athlete_id = a.id
         WHERE a.status = 'connected' AND s.backfill_complete = 1
           AND (s.reconcile_cursor IS NOT NULL OR s.last_reconcile_at IS NULL
                OR s.last_reconcile_at < ?1)
         ORDER BY s.last_reconcile_at IS NOT NULL, s.last_reconcile_at, a.id",
    )?;
    let ids = stmt
        .query_map(params![before], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(ids)
}

pub fn set_last_gap_fill(conn: &dyn Connection, athlete_id: i64, at: i64) -> DbResult<()> {
    upsert_column(conn, athlete_id, "last_gap_fill_at", Some(at))
}

/// Takes the manual-refresh slot if the cooldown has passed; otherwise
/// answers how many seconds remain.
pub fn claim_manual_refresh(
    conn: &dyn Connection,
    athlete_id: i64,
    now: i64,
    cooldown_secs: i64,
) -> DbResult<Result<(), i64>> {
    let last = get(conn, athlete_id)?.last_manual_refresh_at;
    if let Some(last) = last {
        let remaining = last + cooldown_secs - now;
        if remaining > 0 {
            return Ok(Err(remaining));
        }
    }
    upsert_column(conn, athlete_id, "last_manual_refresh_at", Some(now))?;
    Ok(Ok(()))
}

/// Where a reconciliation pass stands: when it started (activities not seen
/// since then are gone once it ends) and the next page to list. Kept in
/// `last_reconcile_at` (the start of the newest pass) and `reconcile_cursor`
/// (set while that pass is in progress), so a restart resumes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcilePass {
    pub started_at: i64,
    pub page: u32,
}

/// The pass in progress, or a new one starting at `now`.
pub fn reconcile_pass(conn: &dyn Connection, athlete_id: i64, now: i64) -> DbResult<ReconcilePass> {
    let state = get(conn, athlete_id)?;
    if let (Some(started_at), Some(page)) = (state.last_reconcile_at, state.reconcile_cursor) {
        return Ok(ReconcilePass {
            started_at,
            page: u32::try_from(page).unwrap_or(1),
        });
    }
    let pass = ReconcilePass {
        started_at: now,
        page: 1,
    };
    save_reconcile_pass(conn, athlete_id, pass, false)?;
    Ok(pass)
}

/// Records the pass's next page, or that it is `finished`.
pub fn save_reconcile_pass(
    conn: &dyn Connection,
    athlete_id: i64,
    pass: ReconcilePass,
    finished: bool,
) -> DbResult<()> {
    ensure(conn, athlete_id)?;
    conn.execute(
        "UPDATE sync_state SET last_reconcile_at = ?2, reconcile_cursor = ?3 WHERE athlete_id = ?1",
        params![
            athlete_id,
            pass.started_at,
            (!finished).then_some(pass.page)
        ],
    )?;
    Ok(())
}

fn ensure(conn: &dyn Connection, athlete_id: i64) -> DbResult<()> {
    conn.execute(
        "INSERT INTO sync_state (athlete_id) VALUES (?1) ON CONFLICT DO NOTHING",
        [athlete_id],
    )?;
    Ok(())
}

/// Sets one timestamp column; `column` is always a literal from this module.
fn upsert_column(
    conn: &dyn Connection,
    athlete_id: i64,
    column: &'static str,
    value: Option<i64>,
) -> DbResult<()> {
    ensure(conn, athlete_id)?;
    conn.execute(
        &format!("UPDATE sync_state SET {column} = ?2 WHERE athlete_id = ?1"),
        params![athlete_id, value],
    )?;
    Ok(())
}

/// When the newest webhook event for this athlete arrived.
pub fn last_webhook_at(conn: &dyn Connection, athlete_id: i64) -> DbResult<Option<i64>> {
    conn.query_row(
        "SELECT MAX(t) FROM (
             SELECT last_webhook_at AS t FROM sync_state WHERE athlete_id = ?1
             UNION ALL SELECT MAX(received_at) FROM webhook_events WHERE owner_id = ?1) AS w",
        [athlete_id],
        |r| r.get(0),
    )
}

/// Athletes whose history backfill is still walking.
pub fn backfills_in_progress(conn: &dyn Connection) -> DbResult<i64> {
    conn.query_row(
        "SELECT COUNT(*) FROM sync_state s JOIN athletes a ON a.id = s.athlete_id
         WHERE a.status = 'connected' AND s.backfill_complete = 0",
        params![],
        |r| r.get(0),
    )
}

/// One athlete's history backfill still walking, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillProgress {
    pub athlete_id: i64,
    /// First and last name from the athlete's Strava profile: their own
    /// words, so anything may be in it.
    pub name: String,
    pub pages: i64,
    pub activities: i64,
    /// The walk has stored everything that started since this (epoch
    /// seconds); None before the first page.
    pub reached: Option<i64>,
}

/// Backfills still walking: how many, and the first `shown` of them by
/// connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillReport {
    pub in_progress: i64,
    pub shown: Vec<BackfillProgress>,
}

fn backfill_report(conn: &dyn Connection, shown: usize) -> DbResult<BackfillReport> {
    let name = |key| conn.dialect().json_text("a.profile_json", key);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT a.id,
                TRIM(COALESCE({}, '') || ' ' || COALESCE({}, '')),
                s.backfill_pages,
                (SELECT COUNT(*) FROM activities x WHERE x.athlete_id = a.id),
                s.backfill_before
         FROM sync_state s JOIN athletes a ON a.id = s.athlete_id
         WHERE a.status = 'connected' AND s.backfill_complete = 0
         ORDER BY a.connected_at, a.id LIMIT ?1",
        name("firstname"),
        name("lastname")
    ))?;
    let rows = stmt.query_map(params![shown as i64], |r| {
        Ok(BackfillProgress {
            athlete_id: r.get(0)?,
            name: r.get(1)?,
            pages: r.get(2)?,
            activities: r.get(3)?,
            reached: r.get(4)?,
        })
    })?;
    Ok(BackfillReport {
        in_progress: backfills_in_progress(conn)?,
        shown: rows.collect::<Result<_, _>>()?,
    })
}

/// Where a catch-up listing starts from: the athlete's newest stored start,
/// their last check, when they connected, and whether they see private
/// activities too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchUpStart {
    pub newest_start: Option<i64>,
    pub last_check: Option<i64>,
    pub connected_at: Option<i64>,
    pub read_all: bool,
}

/// What a manual refresh request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshRequest {
    /// Queued as job `job_id`, at `position` in the queue.
    Queued { job_id: i64, position: i64 },
    /// The cooldown has this many seconds left.
    CoolingDown(i64),
    /// The athlete must connect again first.
    NotConnected,
}

/// An athlete's sync state as `GET /api/sync` shows it.
#[derive(Debug, Clone)]
pub struct SyncOverview {
    pub athlete: Option<Athlete>,
    pub state: SyncState,
    pub stored: i64,
    pub queued: Vec<(String, i64)>,
    pub last_webhook_at: Option<i64>,
}

/// What a backfill's pace is estimated from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillPace {
    pub profile_json: Option<String>,
    /// Backfill calls since the time asked about.
    pub recent_calls: i64,
    pub in_progress: i64,
}

/// How an athlete's misses of announced activities are counted and held
/// back ([`Store::missed_announced`]), as the sync layer decides.
#[derive(Debug, Clone, Copy)]
pub struct MissPolicy {
    /// Listings repeated for ids the first one did not show.
    pub retries: u32,
    /// The hold after this many misses in a row.
    pub hold_secs: fn(u32) -> i64,
    /// A miss this long after the last hold ran out starts the count over.
    pub forget_after_secs: i64,
}

/// The schedule's firing whose gap-fill pass was planned last.
const GAP_FILL_TICK_KEY: &str = "gap_fill.planned_tick";

impl Store {
    /// A listing showed every announced activity it was for: the athlete's
    /// misses are forgiven.
    pub async fn found_announced(&self, athlete_id: i64) -> DbResult<()> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE sync_state SET announce_misses = 0, announce_hold_until = NULL
                 WHERE athlete_id = ?1 AND announce_misses > 0",
                [athlete_id],
            )?;
            Ok(())
        })
        .await
    }

    /// A listing did not show `missing`: one more miss in a row for the
    /// athlete, whose next listing for announcements waits
    /// `policy.hold_secs(misses)` (a fetch queued while the listing ran, for
    /// creates that came in meanwhile, waits too); the missing ids are queued
    /// for that listing while the misses are at most `policy.retries`, and
    /// after that left to the gap-fill. Returns the misses so far.
    pub async fn missed_announced(
        &self,
        athlete_id: i64,
        missing: Vec<i64>,
        policy: MissPolicy,
        now: i64,
    ) -> DbResult<u32> {
        self.write(move |tx| {
            let Some((misses, held_until)) = tx
                .query_row(
                    "SELECT announce_misses, announce_hold_until FROM sync_state
                     WHERE athlete_id = ?1",
                    [athlete_id],
                    |r| Ok((r.get::<i64>(0)?, r.get::<Option<i64>>(1)?)),
                )
                .optional()?
            else {
                // Disconnected since: nothing to hold back.
                return Ok(0);
            };
            let in_a_row = held_until.is_some_and(|t| now - t <= policy.forget_after_secs);
            let before = if in_a_row { misses } else { 0 };
            let misses = u32::try_from(before).unwrap_or(u32::MAX).saturating_add(1);
            let until = now + (policy.hold_secs)(misses);
            tx.execute(
                "UPDATE sync_state SET announce_misses = ?2, announce_hold_until = ?3
                 WHERE athlete_id = ?1",
                params![athlete_id, i64::from(misses), until],
            )?;
            let fetch = Task::fetch(missing);
            let kind = fetch.kind();
            if misses <= policy.retries {
                jobs::enqueue(tx, athlete_id, fetch, until, now)?;
            }
            jobs::hold_queued(tx, athlete_id, kind, until)?;
            Ok(misses)
        })
        .await
    }

    /// Queues a gap-fill for up to `limit` connected athletes in gap-fill
    /// order ([`gap_fill_order`]). Returns how many are now queued. For a
    /// scheduled pass, `tick` names the schedule's firing: every instance's
    /// schedule fires, and the first to plan a tick's pass plans it (None
    /// says another instance did).
    pub async fn plan_gap_fill_pass(
        &self,
        limit: u32,
        attention_since: i64,
        now: i64,
        tick: Option<i64>,
    ) -> DbResult<Option<usize>> {
        self.write(move |tx| {
            if let Some(tick) = tick {
                let planned = service_state::get(tx, GAP_FILL_TICK_KEY)?;
                if planned.is_some_and(|t| t == tick.to_string()) {
                    return Ok(None);
                }
                service_state::set(tx, GAP_FILL_TICK_KEY, &tick.to_string())?;
            }
            let order = gap_fill_order(tx, limit, attention_since)?;
            for &athlete_id in &order {
                jobs::enqueue(tx, athlete_id, Task::GapFill, now, now)?;
            }
            Ok(Some(order.len()))
        })
        .await
    }

    /// Queues a reconciliation for every athlete due (last pass started
    /// before `before`) with none queued or running. Returns how many.
    pub async fn plan_reconciliation(&self, before: i64, now: i64) -> DbResult<usize> {
        self.write(move |tx| {
            let mut queued = 0;
            for athlete_id in due_for_reconcile(tx, before)? {
                if !jobs::has_open(tx, athlete_id, Task::Reconcile.kind())? {
                    jobs::enqueue(tx, athlete_id, Task::Reconcile, now, now)?;
                    queued += 1;
                }
            }
            Ok(queued)
        })
        .await
    }

    /// Queues detail fetches for up to `limit` summary-only activities that
    /// started after `since`, newest first (they merge into one job per
    /// athlete; the enrichment share rations them). Returns how many
    /// activities were picked.
    pub async fn plan_enrichment(&self, since: i64, limit: u32, now: i64) -> DbResult<usize> {
        self.write(move |tx| {
            let picks = activities::summary_only_since(tx, since, limit)?;
            for &(activity_id, athlete_id) in &picks {
                let task = Task::Enrich(crate::model::job::Enrich {
                    activity_ids: vec![activity_id],
                });
                jobs::enqueue(tx, athlete_id, task, now, now)?;
            }
            Ok(picks.len())
        })
        .await
    }

    pub async fn catch_up_start(&self, athlete_id: i64) -> DbResult<CatchUpStart> {
        self.read(move |c| {
            let athlete = athletes::get(c, athlete_id)?;
            Ok(CatchUpStart {
                newest_start: activities::newest_start(c, athlete_id)?,
                last_check: get(c, athlete_id)?.last_gap_fill_at,
                connected_at: athlete.as_ref().map(|a| a.connected_at),
                read_all: athlete.is_some_and(|a| a.reads_all()),
            })
        })
        .await
    }

    /// Records that a catch-up listing of everything the athlete started
    /// after `listed_after`, begun at `listed_at`, is complete, and removes
    /// the activities of that span it did not list: Strava deleted them
    /// without an event reaching us. Returns how many went.
    pub async fn finish_catch_up(
        &self,
        athlete_id: i64,
        listed_after: i64,
        listed_at: i64,
    ) -> DbResult<usize> {
        self.write(move |tx| {
            set_last_gap_fill(tx, athlete_id, listed_at)?;
            jobs::drop_queued(tx, athlete_id, Task::GapFill.kind())?;
            activities::sweep_unseen(tx, athlete_id, listed_at, (listed_after, listed_at + 1))
        })
        .await
    }

    /// Where the athlete's history backfill stands.
    pub async fn backfill_cursor(&self, athlete_id: i64) -> DbResult<Backfill> {
        self.read(move |c| Ok(backfill(c, athlete_id)?.unwrap_or_default()))
            .await
    }

    /// Stores a history page and, when given, the cursor past it, in one
    /// transaction: a restart never refetches a finished page.
    pub async fn store_history_page(
        &self,
        athlete_id: i64,
        page: Vec<Box<RawValue>>,
        next: Option<Backfill>,
        now: i64,
    ) -> DbResult<Upserted> {
        self.write(move |tx| {
            let upserted = activities::upsert_listed(tx, athlete_id, page, now)?;
            if let Some(next) = next {
                set_backfill(tx, athlete_id, &next)?;
            }
            Ok(upserted)
        })
        .await
    }

    /// The athlete's reconciliation pass in progress (or one starting at
    /// `now`), and whether they see private activities too.
    pub async fn reconcile_step_start(
        &self,
        athlete_id: i64,
        now: i64,
    ) -> DbResult<(ReconcilePass, bool)> {
        self.write(move |tx| {
            let pass = reconcile_pass(tx, athlete_id, now)?;
            let read_all = athletes::get(tx, athlete_id)?.is_some_and(|a| a.reads_all());
            Ok((pass, read_all))
        })
        .await
    }

    /// Stores one page of a reconciliation walk, marks what it listed as seen
    /// at `mark`, moves the pass on and, after the last page, sweeps what
    /// the walk did not see. Returns what the page changed and how many
    /// activities the sweep removed.
    pub async fn store_reconcile_page(
        &self,
        athlete_id: i64,
        page: Vec<Box<RawValue>>,
        listed: Vec<i64>,
        pass: ReconcilePass,
        finished: bool,
        now: i64,
    ) -> DbResult<(Upserted, usize)> {
        let mark = pass.started_at + 1;
        self.write(move |tx| {
            let changed = activities::upsert_listed(tx, athlete_id, page, now)?;
            activities::mark_seen(tx, athlete_id, &listed, mark)?;
            let next = ReconcilePass {
                page: pass.page + 1,
                ..pass
            };
            save_reconcile_pass(tx, athlete_id, next, finished)?;
            let removed = if finished {
                activities::sweep_unseen(tx, athlete_id, mark, (i64::MIN, pass.started_at))?
            } else {
                0
            };
            Ok((changed, removed))
        })
        .await
    }

    /// Queues a manual refresh unless the athlete needs to connect again or
    /// the cooldown has not passed.
    pub async fn request_refresh(
        &self,
        athlete_id: i64,
        cooldown_secs: i64,
        now: i64,
    ) -> DbResult<RefreshRequest> {
        self.write(move |tx| {
            let connected = athletes::get(tx, athlete_id)?
                .is_some_and(|a| a.status == athletes::Status::Connected);
            if !connected {
                return Ok(RefreshRequest::NotConnected);
            }
            if let Err(wait) = claim_manual_refresh(tx, athlete_id, now, cooldown_secs)? {
                return Ok(RefreshRequest::CoolingDown(wait));
            }
            let job_id = jobs::enqueue(tx, athlete_id, Task::Refresh, now, now)?;
            let position = jobs::queue_position(tx, job_id)?.unwrap_or(1);
            Ok(RefreshRequest::Queued { job_id, position })
        })
        .await
    }

    pub async fn sync_overview(&self, athlete_id: i64) -> DbResult<SyncOverview> {
        self.read(move |c| {
            Ok(SyncOverview {
                athlete: athletes::get(c, athlete_id)?,
                state: get(c, athlete_id)?,
                stored: activities::count_for(c, athlete_id)?,
                queued: jobs::queued_by_kind(c, athlete_id)?,
                last_webhook_at: last_webhook_at(c, athlete_id)?,
            })
        })
        .await
    }

    /// What the athlete's backfill pace is estimated from, counting
    /// backfill calls since `since`.
    pub async fn backfill_pace(&self, athlete_id: i64, since: i64) -> DbResult<BackfillPace> {
        self.read(move |c| {
            let recent_calls = budget::calls_by_purpose_since(c, since)?
                .into_iter()
                .find(|(purpose, _)| purpose == Purpose::Backfill.as_str())
                .map_or(0, |(_, n)| n);
            Ok(BackfillPace {
                profile_json: athletes::profile_json(c, athlete_id)?,
                recent_calls,
                in_progress: backfills_in_progress(c)?,
            })
        })
        .await
    }

    /// How many backfills are walking, and the first `shown` of them.
    pub async fn backfill_report(&self, shown: usize) -> DbResult<BackfillReport> {
        self.read(move |c| backfill_report(c, shown)).await
    }

    /// Every athlete with their sync state, for `/admin/athletes`.
    pub async fn athletes_overview(&self) -> DbResult<Vec<AthleteOverview>> {
        self.read(overview).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::backoff::fourfold_secs;
    use crate::model::job::Task;
    use crate::store::{athletes, jobs, Store};

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        (dir, store)
    }

    /// A store with athlete 1 connected.
    fn store_with_athlete() -> (tempfile::TempDir, Store) {
        let (dir, store) = store();
        store
            .write_blocking(|tx| {
                connect(tx, 1);
                Ok(())
            })
            .unwrap();
        (dir, store)
    }

    fn connect(conn: &dyn Connection, id: i64) {
        athletes::upsert(
            conn,
            &serde_json::json!({"id": id}),
            "read,activity:read_all",
            0,
        )
        .unwrap();
    }

    #[tokio::test]
    async fn a_scheduled_pass_is_planned_once_per_firing_and_a_manual_one_always() {
        let (_dir, store) = store_with_athlete();
        let plan = |tick| store.plan_gap_fill_pass(10, 0, 100, tick);
        assert_eq!(plan(Some(60)).await.unwrap(), Some(1));
        assert_eq!(plan(Some(60)).await.unwrap(), None, "another instance's");
        assert_eq!(plan(None).await.unwrap(), Some(1), "by hand");
        assert_eq!(
            plan(Some(60)).await.unwrap(),
            None,
            "by hand left the firing's mark"
        );
        assert_eq!(plan(Some(120)).await.unwrap(), Some(1), "the next firing");
    }

    /// Three retries, holds growing fourfold from 30 s without a cap, a
    /// day to forget.
    const POLICY: MissPolicy = MissPolicy {
        retries: 3,
        hold_secs: uncapped,
        forget_after_secs: 86_400,
    };

    fn uncapped(misses: u32) -> i64 {
        fourfold_secs(misses, i64::MAX)
    }

    /// Creates that arrived while a listing for announcements ran queued a
    /// fetch due at once; when that listing misses, the fetch waits for the
    /// hold too, so a steady flood cannot buy listings back to back.
    #[tokio::test]
    async fn a_fetch_queued_during_a_missing_listing_waits_for_the_hold() {
        let (_dir, store) = store_with_athlete();
        store
            .write_blocking(|tx| jobs::enqueue(tx, 1, Task::fetch(vec![7]), 1_000, 1_000))
            .unwrap();
        let due = || {
            store.read_blocking(|c| {
                c.query_row(
                    "SELECT not_before FROM jobs WHERE athlete_id = 1 AND status = 'queued'",
                    params![],
                    |r| r.get::<i64>(0),
                )
            })
        };
        // The first miss: the fetch, with the missed id merged in, waits 30 s.
        let misses = store.missed_announced(1, vec![5], POLICY, 1_000).await;
        assert_eq!((misses.unwrap(), due().unwrap()), (1, 1_030));
        // Past the retries the missed ids are not queued again, and the
        // queued fetch still waits for the longer hold.
        store
            .write_blocking(|tx| {
                tx.execute(
                    "UPDATE sync_state SET announce_misses = 4 WHERE athlete_id = 1",
                    params![],
                )
            })
            .unwrap();
        let misses = store.missed_announced(1, vec![6], POLICY, 1_000).await;
        assert_eq!((misses.unwrap(), due().unwrap()), (5, 1_000 + 7_680));
    }

    /// Misses are counted in a row: one more than a day after the last hold
    /// ran out starts over, so an athlete flooded once gets its quick
    /// retries back for a genuine upload not readable yet.
    #[tokio::test]
    async fn misses_a_day_after_the_last_hold_start_over() {
        let (_dir, store) = store_with_athlete();
        let mut at = 1_000;
        for expected in 1..=5 {
            let misses = store.missed_announced(1, vec![5], POLICY, at).await;
            assert_eq!(misses.unwrap(), expected);
            at += (POLICY.hold_secs)(expected);
        }
        // The last hold ran out at `at`: a day later it still counts.
        let misses = store
            .missed_announced(1, vec![5], POLICY, at + 86_400)
            .await;
        assert_eq!(misses.unwrap(), 6);
        let held_until = at + 86_400 + (POLICY.hold_secs)(6);
        let misses = store
            .missed_announced(1, vec![5], POLICY, held_until + 86_401)
            .await;
        assert_eq!(misses.unwrap(), 1, "forgotten");
        let hold = store.read_blocking(|c| announcement_hold(c, 1)).unwrap();
        assert_eq!(hold, Some(held_until + 86_401 + 30));
    }

    #[test]
    fn gap_fill_goes_to_the_longest_unchecked_and_skips_reauth() {
        let (_dir, store) = store();
        store
            .write_blocking(|tx| {
                for id in 1..=4 {
                    connect(tx, id);
                }
                set_last_gap_fill(tx, 1, 500)?;
                set_last_gap_fill(tx, 2, 100)?;
                athletes::set_status(tx, 4, athletes::Status::NeedsReauth, 0)?;
                assert_eq!(gap_fill_order(tx, 10, 0)?, vec![3, 2, 1]);
                assert_eq!(gap_fill_order(tx, 2, 0)?, vec![3, 2]);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn manual_refresh_cooldown_answers_the_seconds_left() {
        let (_dir, store) = store();
        store
            .write_blocking(|tx| {
                connect(tx, 1);
                assert_eq!(claim_manual_refresh(tx, 1, 1_000, 300)?, Ok(()));
                assert_eq!(claim_manual_refresh(tx, 1, 1_100, 300)?, Err(200));
                assert_eq!(claim_manual_refresh(tx, 1, 1_300, 300)?, Ok(()));
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn a_reconcile_pass_resumes_until_it_is_ended() {
        let (_dir, store) = store();
        store
            .write_blocking(|tx| {
                connect(tx, 1);
                let pass = reconcile_pass(tx, 1, 1_000)?;
                assert_eq!(
                    pass,
                    ReconcilePass {
                        started_at: 1_000,
                        page: 1
                    }
                );
                save_reconcile_pass(tx, 1, ReconcilePass { page: 4, ..pass }, false)?;
                let resumed = reconcile_pass(tx, 1, 2_000)?;
                assert_eq!(
                    resumed,
                    ReconcilePass {
                        started_at: 1_000,
                        page: 4
                    }
                );
                save_reconcile_pass(tx, 1, resumed, true)?;
                assert_eq!(get(tx, 1)?.last_reconcile_at, Some(1_000));
                assert_eq!(get(tx, 1)?.reconcile_cursor, None);
                assert_eq!(reconcile_pass(tx, 1, 3_000)?.started_at, 3_000);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn queue_position_counts_higher_priorities_and_older_peers() {
        let (_dir, store) = store();
        store
            .write_blocking(|tx| {
                for id in 1..=3 {
                    connect(tx, id);
                }
                let backfill = jobs::enqueue(tx, 1, Task::Backfill, 0, 0)?;
                let first = jobs::enqueue(tx, 2, Task::Refresh, 0, 0)?;
                let second = jobs::enqueue(tx, 3, Task::Refresh, 0, 0)?;
                assert_eq!(jobs::queue_position(tx, first)?, Some(1));
                assert_eq!(jobs::queue_position(tx, second)?, Some(2));
                assert_eq!(jobs::queue_position(tx, backfill)?, Some(3));
                // A refresh of an athlete who must connect again waits
                // outside the line.
                athletes::set_status(tx, 2, athletes::Status::NeedsReauth, 0)?;
                assert_eq!(jobs::queue_position(tx, second)?, Some(1));
                assert_eq!(jobs::queue_position(tx, backfill)?, Some(2));
                Ok(())
            })
            .unwrap();
    }
}
