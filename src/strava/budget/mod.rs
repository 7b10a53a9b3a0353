//! The one shared Strava budget every call spends.
//!
//! [`Policy`] is the pure part, with the rules as Strava counts them
//! (`policy.rs`); [`Budget`] wraps it for the service: callers `acquire` a
//! permit (waiting in priority order, then first come first served), and
//! `record` feeds each response back (usage headers, 429s), writes the
//! ledger and logs windows running high.
//!
//! The database holds the count every instance sharing it spends from: a
//! permit is taken in one write transaction that first adopts what is
//! stored ([`Policy::sync`]), so the count is persisted before the call is
//! made and two instances never both take the last call of a window. The
//! policy in memory is this instance's latest view of it, which decides
//! when it is worth asking.

mod policy;
mod views;
mod window;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

pub use self::policy::{
    is_paced, Blocked, Grant, HighUsage, Policy, Shares, Wait, INTERACTIVE_FLOOR_PER_DAY,
    PACE_LEAD_SECS, WARN_PERCENT,
};
pub use self::views::{BlockedView, Forecast, Snapshot, WindowView};
pub use self::window::{Limits, PerWindow, RateReport, Window, WindowKind, CLOCK_SKEW_SECS};

use self::views::to_time;
use crate::model::clock::Clock;
use crate::model::Purpose;
use crate::store::budget::{CallRow, StoredBudget, WindowRow};
use crate::store::{DbResult, Store};

/// Budget windows are pruned once they are this old.
const KEEP_WINDOWS_SECS: i64 = 2 * 86_400;

/// How long a caller waiting with no time set (a pause) goes before it
/// looks at the stored budget again: another instance may have resumed.
const RESYNC: Duration = Duration::from_secs(5);

/// Proof that a call was counted; hand it back with the response to
/// [`Budget::record`].
#[derive(Debug)]
pub struct Permit {
    pub purpose: Purpose,
    grant: Grant,
}

/// One finished (or failed) call, for the ledger and the policy.
#[derive(Debug, Clone)]
pub struct CallOutcome {
    /// The route, never the raw path: `GET /athlete/activities`.
    pub endpoint: &'static str,
    pub athlete_id: Option<i64>,
    /// None when no answer came.
    pub status: Option<u16>,
    pub report: RateReport,
    pub duration: Duration,
}

struct State {
    policy: Policy,
    /// Waiting callers, served in (purpose, arrival) order.
    queue: BTreeSet<(Purpose, u64)>,
    next_ticket: u64,
}

/// The service's budget: a [`Policy`] behind a lock, a priority queue of
/// waiting callers, and persistence.
pub struct Budget {
    clock: Arc<dyn Clock>,
    store: Store,
    /// Shared with the permit transaction, which runs off the async threads.
    state: Arc<Mutex<State>>,
    changed: Notify,
}

/// The windows current at `now`, as the store names them.
fn current_windows(now: i64) -> Vec<(&'static str, i64)> {
    WindowKind::ALL
        .map(|kind| (kind.as_str(), kind.start_of(now)))
        .to_vec()
}

/// The stored budget as the policy holds it: each window asked for by
/// [`current_windows`] (a fresh one, with the kind's last reported limit,
/// where no call was counted yet), the pause switch and today's calls by
/// purpose.
fn adopt(now: i64, stored: StoredBudget) -> (PerWindow<Window>, bool, BTreeMap<Purpose, u32>) {
    let mut windows = current_windows(now).into_iter().zip(stored.windows).map(
        |((_, start), stored)| match stored.row {
            Some(row) => Window::from(row),
            None => Window {
                start,
                reported_limit: stored.latest_reported_limit,
                ..Window::default()
            },
        },
    );
    let (Some(quarter), Some(day)) = (windows.next(), windows.next()) else {
        unreachable!("both windows were asked for");
    };
    let spent = stored
        .spent
        .into_iter()
        .filter_map(|(purpose, n)| Some((Purpose::parse(&purpose)?, u32::try_from(n).ok()?)))
        .collect();
    (PerWindow { quarter, day }, stored.paused, spent)
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Budget {
    /// Resumes the current windows' counts, Strava's last reported limits,
    /// today's calls by purpose and the pause switch from the database.
    pub async fn load(
        store: Store,
        clock: Arc<dyn Clock>,
        limits: Limits,
        shares: Shares,
    ) -> DbResult<Arc<Self>> {
        let now = clock.epoch();
        let stored = store
            .load_budget(
                current_windows(now),
                WindowKind::Day.start_of(now),
                now - KEEP_WINDOWS_SECS,
            )
            .await?;
        let (windows, paused, spent) = adopt(now, stored);
        let budget = Self {
            clock,
            store,
            state: Arc::new(Mutex::new(State {
                policy: Policy::new(limits, windows, paused, shares, spent),
                queue: BTreeSet::new(),
                next_ticket: 0,
            })),
            changed: Notify::new(),
        };
        {
            let policy = &budget.lock().policy;
            publish(policy.windows(), policy);
        }
        Ok(Arc::new(budget))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Waits for a permit. Callers are served highest priority first, then in
    /// arrival order, passing those ahead whose purpose may not call now.
    /// The permit is taken in the database ([`Budget::take`]), so the count
    /// is persisted before the call is made and a crash after the call
    /// cannot forget it.
    pub async fn acquire(&self, purpose: Purpose) -> DbResult<Permit> {
        let ticket = {
            let mut state = self.lock();
            state.next_ticket += 1;
            let ticket = (purpose, state.next_ticket);
            state.queue.insert(ticket);
            ticket
        };
        let _in_line = InLine {
            budget: self,
            ticket,
        };
        let (grant, windows, high) = loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = self.clock.epoch();
            let may_ask = {
                let mut state = self.lock();
                let State { queue, policy, .. } = &mut *state;
                policy.roll(now);
                // A caller ahead whose purpose may not call now (a capped or
                // paced one) does not hold up those behind it.
                let ahead_may_go = queue
                    .range(..ticket)
                    .any(|(ahead, _)| policy.blocked(*ahead, now).is_none());
                if ahead_may_go {
                    Err(None)
                } else {
                    policy
                        .blocked(purpose, now)
                        .map_or(Ok(()), |wait| Err(wait.until))
                }
            };
            let decision = match may_ask {
                Ok(()) => self.take(purpose, ticket, now).await?,
                Err(until) => Err(until),
            };
            match decision {
                Ok(granted) => break granted,
                Err(until) => {
                    let deadline = until.and_then(to_time);
                    let sleep = async {
                        match deadline {
                            Some(t) => {
                                self.clock.sleep_until(t).await;
                                false
                            }
                            None => {
                                tokio::time::sleep(RESYNC).await;
                                true
                            }
                        }
                    };
                    let resync = tokio::select! {
                        _ = notified => false,
                        resync = sleep => resync,
                    };
                    if resync {
                        self.resync().await?;
                    }
                }
            }
        };
        warn_high(high);
        publish(&windows, &self.lock().policy);
        Ok(Permit { purpose, grant })
    }

    /// Takes the permit in the database: adopts the stored budget, decides
    /// again on it, and stores the counts with the permit in one write
    /// transaction. The answer is the grant, or how long to wait when the
    /// other instances spent what this one's view still had.
    async fn take(
        &self,
        purpose: Purpose,
        ticket: (Purpose, u64),
        now: i64,
    ) -> DbResult<Result<(Grant, PerWindow<Window>, Vec<HighUsage>), Option<i64>>> {
        let state = self.state.clone();
        self.store
            .take_budget_permit(
                current_windows(now),
                WindowKind::Day.start_of(now),
                move |stored| {
                    let (windows, paused, spent) = adopt(now, stored);
                    let mut state = lock(&state);
                    let policy = &mut state.policy;
                    policy.roll(now);
                    policy.sync(windows, paused, spent);
                    match policy.decide(purpose, now) {
                        Ok(grant) => {
                            let windows = policy.windows().clone();
                            let high = policy.take_high_usage();
                            state.queue.remove(&ticket);
                            let rows = rows(&windows);
                            (Ok((grant, windows, high)), rows)
                        }
                        Err(wait) => (Err(wait.until), Vec::new()),
                    }
                },
            )
            .await
    }

    /// Catches up with what the other instances counted, paused or resumed.
    async fn resync(&self) -> DbResult<()> {
        let now = self.clock.epoch();
        let stored = self
            .store
            .read_budget(current_windows(now), WindowKind::Day.start_of(now))
            .await?;
        let (windows, paused, spent) = adopt(now, stored);
        let policy = &mut self.lock().policy;
        policy.roll(now);
        policy.sync(windows, paused, spent);
        Ok(())
    }

    /// Feeds a call's outcome back: corrects the counts, locks a window on
    /// 429, writes the ledger row and the metrics.
    pub async fn record(&self, permit: Permit, call: CallOutcome) -> DbResult<()> {
        let now = self.clock.epoch();
        let (windows, high) = {
            let policy = &mut self.lock().policy;
            policy.observe(permit.grant, &call.report, call.status == Some(429), now);
            (policy.windows().clone(), policy.take_high_usage())
        };
        warn_high(high);
        let status = call
            .status
            .map_or_else(|| "none".to_string(), |s| s.to_string());
        metrics::counter!(
            "strava_calls_total",
            "endpoint" => call.endpoint,
            "status" => status,
            "purpose" => permit.purpose.as_str()
        )
        .increment(1);
        let row = LedgerRow {
            at: now,
            purpose: permit.purpose,
            call,
        };
        self.persist(windows, Some(row)).await?;
        self.changed.notify_waiters();
        Ok(())
    }

    async fn persist(&self, windows: PerWindow<Window>, call: Option<LedgerRow>) -> DbResult<()> {
        publish(&windows, &self.lock().policy);
        let rows = rows(&windows);
        let call = call.map(|row| CallRow {
            at: row.at,
            endpoint: row.call.endpoint,
            athlete_id: row.call.athlete_id,
            purpose: row.purpose.as_str(),
            status: row.call.status,
            usage_15min: row.call.report.usage.map(|u| u.quarter),
            usage_daily: row.call.report.usage.map(|u| u.day),
            duration_ms: row.call.duration.as_millis() as i64,
        });
        self.store.save_budget(rows, call).await
    }

    /// Stops (or restarts) every purpose but interactive; survives restarts.
    pub async fn set_paused(&self, paused: bool) -> DbResult<()> {
        self.store.set_budget_paused(paused).await?;
        self.lock().policy.set_paused(paused);
        tracing::info!(paused, "background use of the Strava budget");
        self.changed.notify_waiters();
        Ok(())
    }

    pub fn snapshot(&self) -> Snapshot {
        let now = self.clock.epoch();
        self.lock().policy.snapshot(now)
    }

    /// The purposes that may call now, in the order their work should be
    /// served, and when that may change by itself (see [`Policy::servable`]).
    pub fn servable(&self) -> (Vec<Purpose>, Option<DateTime<Utc>>) {
        let now = self.clock.epoch();
        let (order, until) = self.lock().policy.servable(now);
        (order, until.and_then(to_time))
    }

    /// Resolves the next time the budget changes (a call recorded, a permit
    /// released, pause or resume).
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

struct LedgerRow {
    at: i64,
    purpose: Purpose,
    call: CallOutcome,
}

/// A caller's place in line; leaving (granted or cancelled) lets the next one
/// look again.
struct InLine<'a> {
    budget: &'a Budget,
    ticket: (Purpose, u64),
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        self.budget.lock().queue.remove(&self.ticket);
        self.budget.changed.notify_waiters();
    }
}

/// The policy only says which windows ran high; the operator hears it here.
fn warn_high(high: Vec<HighUsage>) {
    for h in high {
        tracing::warn!(
            window = h.window.as_str(),
            used = h.used,
            limit = h.limit,
            "Strava budget window passed {WARN_PERCENT}%"
        );
    }
}

/// The windows as the store keeps them.
fn rows(windows: &PerWindow<Window>) -> Vec<(&'static str, WindowRow)> {
    windows
        .iter()
        .map(|(kind, window)| (kind.as_str(), WindowRow::from(window)))
        .collect()
}

fn publish(windows: &PerWindow<Window>, policy: &Policy) {
    for (kind, window) in windows.iter() {
        metrics::gauge!("strava_budget_used", "window" => kind.as_str())
            .set(f64::from(window.used));
        metrics::gauge!("strava_budget_limit", "window" => kind.as_str())
            .set(f64::from(policy.limit(kind)));
    }
}

/// The store keeps its own row type (it sits below this module); these are
/// the only places the two meet.
impl From<WindowRow> for Window {
    fn from(row: WindowRow) -> Self {
        Self {
            start: row.start,
            used: row.used,
            reported_usage: row.reported_usage,
            reported_limit: row.reported_limit,
            exhausted: row.exhausted,
        }
    }
}

impl From<&Window> for WindowRow {
    fn from(window: &Window) -> Self {
        Self {
            start: window.start,
            used: window.used,
            reported_usage: window.reported_usage,
            reported_limit: window.reported_limit,
            exhausted: window.exhausted,
        }
    }
}

/// Moments and reports the tests of every part of the budget share.
#[cfg(test)]
mod test_support {
    use super::{PerWindow, Purpose, Shares};

    /// 2026-03-10 12:07:30 UTC: mid-quarter, mid-day.
    pub const NOON: i64 = 1_773_144_450;
    pub const QUARTER: i64 = 1_773_144_000; // 12:00:00
    pub const MIDNIGHT: i64 = 1_773_100_800; // 00:00:00

    /// A reported (quarter, day) pair, as Strava's headers list them.
    pub fn pair(quarter: u32, day: u32) -> Option<PerWindow<u32>> {
        Some(PerWindow { quarter, day })
    }

    /// `BUDGET_SHARES` as SPEC's default sets them.
    pub fn shares() -> Shares {
        [
            (Purpose::Webhook, 55),
            (Purpose::GapFill, 15),
            (Purpose::Backfill, 15),
            (Purpose::Reconcile, 10),
            (Purpose::Enrichment, 5),
        ]
        .into()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{pair, shares, NOON, QUARTER};
    use super::*;
    use crate::model::clock::ManualClock;

    async fn budget_at(dir: &tempfile::TempDir, clock: Arc<ManualClock>) -> Arc<Budget> {
        let store = Store::open(&dir.path().join("b.db")).unwrap();
        Budget::load(
            store,
            clock,
            Limits {
                quarter: 10,
                day: 1000,
            },
            shares(),
        )
        .await
        .unwrap()
    }

    fn noon_clock() -> Arc<ManualClock> {
        ManualClock::new(to_time(NOON).unwrap())
    }

    #[tokio::test]
    async fn a_restart_mid_window_resumes_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let clock = noon_clock();
        let budget = budget_at(&dir, clock.clone()).await;
        for _ in 0..6 {
            budget.acquire(Purpose::Interactive).await.unwrap();
        }
        let permit = budget.acquire(Purpose::Interactive).await.unwrap();
        let call = CallOutcome {
            endpoint: "GET /athlete",
            athlete_id: Some(1),
            status: Some(200),
            report: RateReport {
                usage: pair(8, 50),
                limit: pair(9, 1000),
            },
            duration: Duration::from_millis(5),
        };
        budget.record(permit, call).await.unwrap();
        drop(budget);

        let budget = budget_at(&dir, clock.clone()).await;
        let snap = budget.snapshot();
        assert_eq!((snap.windows[0].used, snap.windows[0].limit), (8, 9));
        assert_eq!(snap.windows[1].used, 50);
        budget.acquire(Purpose::Interactive).await.unwrap();
        assert!(budget.servable().0.is_empty());
        // A new quarter starts from zero but keeps Strava's limit.
        clock.advance(chrono::Duration::minutes(8));
        let budget = budget_at(&dir, clock).await;
        let snap = budget.snapshot();
        assert_eq!((snap.windows[0].used, snap.windows[0].limit), (0, 9));
        assert_eq!(snap.windows[1].used, 51);
    }

    #[tokio::test]
    async fn waiters_go_when_the_window_resets_and_interactive_overtakes() {
        let dir = tempfile::tempdir().unwrap();
        let clock = noon_clock();
        let budget = budget_at(&dir, clock.clone()).await;
        // Half the quarter is left: it keeps one call for interactive ones.
        for _ in 0..9 {
            budget.acquire(Purpose::Backfill).await.unwrap();
        }
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.acquire(Purpose::Backfill).await.unwrap() }
        });
        tokio::task::yield_now().await;
        // Backfill is at its ceiling; an interactive call still goes at once.
        budget.acquire(Purpose::Interactive).await.unwrap();
        assert!(!waiting.is_finished());
        clock.set(to_time(QUARTER + 900).unwrap());
        let permit = waiting.await.unwrap();
        assert_eq!(permit.purpose, Purpose::Backfill);
        assert_eq!(budget.snapshot().windows[0].used, 1);
    }

    #[tokio::test]
    async fn callers_of_one_purpose_are_served_in_arrival_order() {
        let dir = tempfile::tempdir().unwrap();
        let clock = noon_clock();
        let store = Store::open(&dir.path().join("b.db")).unwrap();
        let budget = Budget::load(
            store,
            clock.clone(),
            Limits { quarter: 1, day: 2 },
            shares(),
        )
        .await
        .unwrap();
        budget.acquire(Purpose::Interactive).await.unwrap();
        let first = tokio::spawn({
            let budget = budget.clone();
            async move { budget.acquire(Purpose::Interactive).await.unwrap() }
        });
        tokio::task::yield_now().await;
        let second = tokio::spawn({
            let budget = budget.clone();
            async move { budget.acquire(Purpose::Interactive).await.unwrap() }
        });
        tokio::task::yield_now().await;
        // One call fits in the next quarter (the day allows two in all).
        clock.set(to_time(QUARTER + 900).unwrap());
        first.await.unwrap();
        tokio::task::yield_now().await;
        assert!(!second.is_finished());
        second.abort();
    }

    #[tokio::test]
    async fn pause_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let budget = budget_at(&dir, noon_clock()).await;
        budget.set_paused(true).await.unwrap();
        drop(budget);
        let budget = budget_at(&dir, noon_clock()).await;
        assert!(budget.snapshot().paused);
        assert_eq!(budget.servable().0, [Purpose::Interactive]);
    }

    #[tokio::test]
    async fn a_caller_that_may_not_call_now_does_not_hold_up_those_behind_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("b.db")).unwrap();
        // No webhook share: fetches for athletes who are looking are capped
        // at once.
        let shares = [(Purpose::Backfill, 100)].into();
        let limits = Limits {
            quarter: 100,
            day: 1000,
        };
        let budget = Budget::load(store, noon_clock(), limits, shares)
            .await
            .unwrap();
        let capped = tokio::spawn({
            let budget = budget.clone();
            async move { budget.acquire(Purpose::Attention).await.unwrap() }
        });
        tokio::task::yield_now().await;
        assert!(!capped.is_finished());
        let permit = budget.acquire(Purpose::Webhook).await.unwrap();
        assert_eq!(permit.purpose, Purpose::Webhook);
        capped.abort();
    }
}
