//! The one shared Strava budget every call spends.
//!
//! [`Policy`] is the pure part: given the time and what Strava reported, it
//! decides whether a call of some [`Purpose`] may go now, and if not, until
//! when it must wait. It owns no clock and does no I/O, so tests drive it
//! through windows, restarts and 429s without waiting.
//!
//! [`Budget`] wraps it for the service: callers `acquire` a permit (waiting in
//! priority order, then first come first served), the counts are persisted
//! before the call is made, and `record` feeds each response back (usage
//! headers, 429s) and writes the ledger.
//!
//! The rules, as Strava counts:
//! - two windows, the quarter hour (:00, :15, :30, :45 UTC) and the UTC day;
//!   our count is corrected upward by the usage Strava reports, because other
//!   clients of the same application spend the same budget;
//! - the limits are the configured ceilings, lowered by any lower limit Strava
//!   reports;
//! - after a 429 nothing is sent until the window that was over resets;
//! - a call in the last [`CLOCK_SKEW_SECS`] of a window also counts in the
//!   next one, since Strava's clock may be a little ahead of ours;
//! - each purpose below interactive stops short of a window's limit by a
//!   reserve ([`reserve_percent`]), so higher purposes always find headroom;
//! - background purposes (gap-fill and below) are paced across the UTC day by
//!   an allowance curve instead of spending the day in its first hours;
//! - an operator may pause everything but interactive calls.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;
use serde::Serialize;
use tokio::sync::Notify;

use crate::model::clock::Clock;
use crate::model::Purpose;
use crate::store::{self, DbResult, Store};

/// How far into the day's allowance curve background work may run ahead: the
/// day's first hours may spend this much more than an even spread would.
pub const PACE_LEAD_SECS: i64 = 2 * 3600;

/// A window passing this share of its limit is logged as a warning.
const WARN_PERCENT: u32 = 80;

/// Our clock and Strava's may disagree by this much: a call sent this close
/// to a window's end may land in the next one, so it is counted there too.
pub const CLOCK_SKEW_SECS: i64 = 2;

/// Budget windows are pruned once they are this old.
const KEEP_WINDOWS_SECS: i64 = 2 * 86_400;

/// The two windows Strava counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum WindowKind {
    /// 15 minutes starting at :00, :15, :30 and :45 UTC.
    #[serde(rename = "15min")]
    Quarter,
    /// The UTC day.
    #[serde(rename = "day")]
    Day,
}

impl WindowKind {
    pub const ALL: [WindowKind; 2] = [WindowKind::Quarter, WindowKind::Day];

    /// The name stored in `budget_windows.window`.
    pub fn as_str(self) -> &'static str {
        match self {
            WindowKind::Quarter => "15min",
            WindowKind::Day => "day",
        }
    }

    pub fn len_secs(self) -> i64 {
        match self {
            WindowKind::Quarter => 900,
            WindowKind::Day => 86_400,
        }
    }

    /// Start of the window containing epoch second `t`.
    pub fn start_of(self, t: i64) -> i64 {
        t - t.rem_euclid(self.len_secs())
    }
}

/// The counters of one window instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Window {
    pub start: i64,
    /// Our count, corrected upward by Strava's reports.
    pub used: u32,
    /// Usage as Strava last reported it in this window.
    pub reported_usage: Option<u32>,
    /// The limit Strava last reported (carried into later windows).
    pub reported_limit: Option<u32>,
    /// A 429 was seen: nothing goes out until the window resets.
    pub exhausted: bool,
}

/// The configured ceilings (`STRAVA_RATE_LIMIT_15MIN`, `STRAVA_RATE_LIMIT_DAILY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub quarter: u32,
    pub day: u32,
}

impl Limits {
    fn get(self, kind: WindowKind) -> u32 {
        match kind {
            WindowKind::Quarter => self.quarter,
            WindowKind::Day => self.day,
        }
    }
}

/// What one response's rate-limit headers said, as (15-minute, daily) pairs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateReport {
    pub usage: Option<(u32, u32)>,
    pub limit: Option<(u32, u32)>,
}

impl RateReport {
    /// Reads `X-ReadRateLimit-*` (every call we make is a read), falling back
    /// to `X-RateLimit-*`. Header names are case-insensitive (Strava sends
    /// `X-Readratelimit-Usage`); malformed values are ignored.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let pair = |names: [&str; 2]| {
            names.into_iter().find_map(|name| {
                let value = headers.get(name)?.to_str().ok()?;
                let (a, b) = value.split_once(',')?;
                Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
            })
        };
        Self {
            usage: pair(["x-readratelimit-usage", "x-ratelimit-usage"]),
            limit: pair(["x-readratelimit-limit", "x-ratelimit-limit"]),
        }
    }

    fn usage_of(&self, kind: WindowKind) -> Option<u32> {
        self.usage.map(|(q, d)| pick(kind, q, d))
    }

    fn limit_of(&self, kind: WindowKind) -> Option<u32> {
        self.limit.map(|(q, d)| pick(kind, q, d)).filter(|l| *l > 0)
    }
}

fn pick(kind: WindowKind, quarter: u32, day: u32) -> u32 {
    match kind {
        WindowKind::Quarter => quarter,
        WindowKind::Day => day,
    }
}

/// The share of each window a purpose leaves unused for higher ones.
pub fn reserve_percent(purpose: Purpose) -> u32 {
    match purpose {
        Purpose::Interactive => 0,
        Purpose::Webhook => 10,
        Purpose::GapFill => 20,
        Purpose::Backfill => 30,
        Purpose::Enrichment | Purpose::Reconcile => 40,
    }
}

/// Background purposes are paced across the day; interactive and webhook
/// fetches go as soon as the windows allow, since someone is waiting.
pub fn is_paced(purpose: Purpose) -> bool {
    purpose >= Purpose::GapFill
}

/// Why a call may not go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Blocked {
    /// An operator paused background use.
    Paused,
    /// Strava answered 429 in this window.
    RateLimited(WindowKind),
    /// The window is used up to this purpose's ceiling.
    Full(WindowKind),
    /// Background work is ahead of the day's allowance curve.
    Pacing,
}

/// A refusal: why, and when it may change (None: only when told, e.g. resume).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    pub reason: Blocked,
    pub until: Option<i64>,
}

/// The window instances a permit was counted in, so the response corrects
/// those and not a later window it happened to arrive in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub quarter_start: i64,
    pub day_start: i64,
}

impl Grant {
    fn start(&self, kind: WindowKind) -> i64 {
        match kind {
            WindowKind::Quarter => self.quarter_start,
            WindowKind::Day => self.day_start,
        }
    }
}

/// The pure budget policy. Times are epoch seconds.
#[derive(Debug, Clone)]
pub struct Policy {
    configured: Limits,
    quarter: Window,
    day: Window,
    paused: bool,
    /// The window instance a high-usage warning was last logged for.
    warned: [Option<i64>; 2],
    /// Calls granted within [`CLOCK_SKEW_SECS`] of each current window's end,
    /// carried into the next window's count.
    straddling: [u32; 2],
    /// When our calls of the last hour were granted, for the forecast.
    recent: VecDeque<i64>,
}

impl Policy {
    /// A policy resuming from persisted windows; windows that are not the
    /// current ones at the first call simply roll over.
    pub fn new(configured: Limits, quarter: Window, day: Window, paused: bool) -> Self {
        Self {
            configured,
            quarter,
            day,
            paused,
            warned: [None; 2],
            straddling: [0; 2],
            recent: VecDeque::new(),
        }
    }

    pub fn window(&self, kind: WindowKind) -> &Window {
        match kind {
            WindowKind::Quarter => &self.quarter,
            WindowKind::Day => &self.day,
        }
    }

    fn window_mut(&mut self, kind: WindowKind) -> &mut Window {
        match kind {
            WindowKind::Quarter => &mut self.quarter,
            WindowKind::Day => &mut self.day,
        }
    }

    /// The limit in force: the configured one, or Strava's when lower.
    pub fn limit(&self, kind: WindowKind) -> u32 {
        let configured = self.configured.get(kind);
        self.window(kind)
            .reported_limit
            .map_or(configured, |r| r.min(configured))
    }

    /// How much of a window a purpose may use.
    pub fn ceiling(&self, kind: WindowKind, purpose: Purpose) -> u32 {
        let limit = self.limit(kind);
        let reserve = (limit * reserve_percent(purpose)).div_ceil(100);
        limit - reserve
    }

    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Starts fresh windows when time has moved past the current ones.
    pub fn roll(&mut self, now: i64) {
        for (i, kind) in WindowKind::ALL.into_iter().enumerate() {
            let start = kind.start_of(now);
            let straddling = std::mem::take(&mut self.straddling[i]);
            let window = self.window_mut(kind);
            if window.start == start {
                self.straddling[i] = straddling;
                continue;
            }
            let next = window.start + kind.len_secs() == start;
            *window = Window {
                start,
                used: if next { straddling } else { 0 },
                reported_limit: window.reported_limit,
                ..Window::default()
            };
        }
    }

    /// Why `purpose` may not call now, if it may not. Call after [`roll`](Self::roll).
    pub fn blocked(&self, purpose: Purpose, now: i64) -> Option<Wait> {
        let end = |kind: WindowKind| Some(self.window(kind).start + kind.len_secs());
        if self.paused && purpose != Purpose::Interactive {
            return Some(Wait {
                reason: Blocked::Paused,
                until: None,
            });
        }
        for kind in WindowKind::ALL {
            if self.window(kind).exhausted {
                return Some(Wait {
                    reason: Blocked::RateLimited(kind),
                    until: end(kind),
                });
            }
        }
        for kind in WindowKind::ALL {
            if self.window(kind).used >= self.ceiling(kind, purpose) {
                return Some(Wait {
                    reason: Blocked::Full(kind),
                    until: end(kind),
                });
            }
        }
        if is_paced(purpose) {
            let ceiling = i64::from(self.ceiling(WindowKind::Day, purpose));
            let day = WindowKind::Day.len_secs();
            let elapsed = (now - self.day.start + PACE_LEAD_SECS).min(day);
            let used = i64::from(self.day.used);
            if used * day >= ceiling * elapsed {
                // The allowance passes `used` one second after this point of
                // the day (ceiling > used here, or the day would be full).
                let at = self.day.start + used * day / ceiling + 1 - PACE_LEAD_SECS;
                return Some(Wait {
                    reason: Blocked::Pacing,
                    until: Some(at.clamp(now + 1, self.day.start + day)),
                });
            }
        }
        None
    }

    /// Takes a permit for `purpose` at `now`, or says how long to wait.
    pub fn decide(&mut self, purpose: Purpose, now: i64) -> Result<Grant, Wait> {
        self.roll(now);
        if let Some(wait) = self.blocked(purpose, now) {
            return Err(wait);
        }
        while self.recent.front().is_some_and(|t| *t <= now - 3600) {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        for (i, kind) in WindowKind::ALL.into_iter().enumerate() {
            let window = self.window_mut(kind);
            window.used += 1;
            if now >= window.start + kind.len_secs() - CLOCK_SKEW_SECS {
                self.straddling[i] += 1;
            }
        }
        self.warn_when_high();
        Ok(Grant {
            quarter_start: self.quarter.start,
            day_start: self.day.start,
        })
    }

    /// Applies what a response said. Usage only ever raises our count, and
    /// only in the windows the permit was counted in; a 429 locks the window
    /// that is over its limit (the quarter when the headers do not say).
    pub fn observe(&mut self, grant: Grant, report: &RateReport, rate_limited: bool, now: i64) {
        self.roll(now);
        let mut locked = false;
        for kind in WindowKind::ALL {
            if let Some(limit) = report.limit_of(kind) {
                self.window_mut(kind).reported_limit = Some(limit);
            }
            let limit = self.limit(kind);
            let window = self.window_mut(kind);
            if window.start != grant.start(kind) {
                continue;
            }
            if let Some(usage) = report.usage_of(kind) {
                window.reported_usage = Some(usage);
                window.used = window.used.max(usage);
            }
            if rate_limited && window.used >= limit {
                window.exhausted = true;
                locked = true;
            }
        }
        if rate_limited && !locked && self.quarter.start == grant.quarter_start {
            self.quarter.exhausted = true;
        }
        self.warn_when_high();
    }

    fn warn_when_high(&mut self) {
        for (i, kind) in WindowKind::ALL.into_iter().enumerate() {
            let (used, limit, start) = (
                self.window(kind).used,
                self.limit(kind),
                self.window(kind).start,
            );
            if used * 100 >= limit * WARN_PERCENT && self.warned[i] != Some(start) {
                self.warned[i] = Some(start);
                tracing::warn!(
                    window = kind.as_str(),
                    used,
                    limit,
                    "Strava budget window passed {WARN_PERCENT}%"
                );
            }
        }
    }

    /// The lowest-priority purpose that may call now (every higher one may
    /// too: each rule is at least as strict for lower priorities), and when
    /// the next lower one may be unblocked.
    pub fn servable(&mut self, now: i64) -> (Option<Purpose>, Option<i64>) {
        self.roll(now);
        let mut best = None;
        for purpose in Purpose::ALL {
            match self.blocked(purpose, now) {
                None => best = Some(purpose),
                Some(wait) => return (best, wait.until),
            }
        }
        (best, None)
    }

    /// When today's budget runs out at the current rate (None when it lasts
    /// past midnight). The rate is the higher of the last hour's and today's
    /// average, so a burst shows at once and a quiet hour does not hide a
    /// busy day. The first quarter hour counts as elapsed, so a burst just
    /// after midnight does not forecast nonsense.
    pub fn forecast(&self, now: i64) -> Forecast {
        let elapsed = (now - self.day.start).max(WindowKind::Quarter.len_secs());
        let today = f64::from(self.day.used) / elapsed as f64;
        let last_hour = self.recent.iter().filter(|t| **t > now - 3600).count();
        let per_sec = today.max(last_hour as f64 / 3600.0);
        let remaining = f64::from(self.limit(WindowKind::Day).saturating_sub(self.day.used));
        let day_end = self.day.start + WindowKind::Day.len_secs();
        let exhausted_at = if remaining == 0.0 {
            Some(now)
        } else if per_sec > 0.0 {
            Some(now + (remaining / per_sec).ceil() as i64).filter(|t| *t < day_end)
        } else {
            None
        };
        Forecast {
            calls_per_hour: per_sec * 3600.0,
            exhausted_at: exhausted_at.and_then(to_time),
        }
    }

    /// Everything an operator wants to see, at `now`.
    pub fn snapshot(&mut self, now: i64) -> Snapshot {
        self.roll(now);
        let windows = WindowKind::ALL
            .into_iter()
            .map(|kind| {
                let w = self.window(kind);
                WindowView {
                    window: kind,
                    started_at: to_time(w.start),
                    resets_at: to_time(w.start + kind.len_secs()),
                    used: w.used,
                    limit: self.limit(kind),
                    configured_limit: self.configured.get(kind),
                    reported_usage: w.reported_usage,
                    reported_limit: w.reported_limit,
                    exhausted: w.exhausted,
                }
            })
            .collect();
        let blocked = Purpose::ALL
            .into_iter()
            .filter_map(|p| {
                let wait = self.blocked(p, now)?;
                Some((
                    p.as_str(),
                    BlockedView {
                        reason: wait.reason,
                        until: wait.until.and_then(to_time),
                    },
                ))
            })
            .collect();
        Snapshot {
            paused: self.paused,
            windows,
            blocked,
            forecast: self.forecast(now),
        }
    }
}

fn to_time(t: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t, 0)
}

#[derive(Debug, Clone, Serialize)]
pub struct WindowView {
    pub window: WindowKind,
    pub started_at: Option<DateTime<Utc>>,
    pub resets_at: Option<DateTime<Utc>>,
    pub used: u32,
    /// The limit in force (configured, lowered by Strava's report).
    pub limit: u32,
    pub configured_limit: u32,
    pub reported_usage: Option<u32>,
    pub reported_limit: Option<u32>,
    pub exhausted: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BlockedView {
    pub reason: Blocked,
    pub until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Forecast {
    pub calls_per_hour: f64,
    /// When today's budget runs out at the current rate; null when it lasts.
    pub exhausted_at: Option<DateTime<Utc>>,
}

/// The budget as `/admin/budget` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub paused: bool,
    pub windows: Vec<WindowView>,
    /// Purposes that may not call right now, with why and until when.
    pub blocked: BTreeMap<&'static str, BlockedView>,
    pub forecast: Forecast,
}

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
    state: Mutex<State>,
    changed: Notify,
}

impl Budget {
    /// Resumes the current windows' counts, Strava's last reported limits and
    /// the pause switch from the database.
    pub async fn load(store: Store, clock: Arc<dyn Clock>, limits: Limits) -> DbResult<Arc<Self>> {
        let now = clock.epoch();
        let (quarter, day, paused) = store
            .write(move |tx| {
                store::budget::prune_windows(tx, now - KEEP_WINDOWS_SECS)?;
                let load = |kind: WindowKind| -> DbResult<Window> {
                    let start = kind.start_of(now);
                    Ok(match store::budget::load_window(tx, kind, start)? {
                        Some(w) => w,
                        None => Window {
                            start,
                            reported_limit: store::budget::latest_reported_limit(tx, kind)?,
                            ..Window::default()
                        },
                    })
                };
                Ok((
                    load(WindowKind::Quarter)?,
                    load(WindowKind::Day)?,
                    store::budget::paused(tx)?,
                ))
            })
            .await?;
        let budget = Self {
            clock,
            store,
            state: Mutex::new(State {
                policy: Policy::new(limits, quarter, day, paused),
                queue: BTreeSet::new(),
                next_ticket: 0,
            }),
            changed: Notify::new(),
        };
        publish(&budget.lock().policy);
        Ok(Arc::new(budget))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Waits for a permit. Callers are served highest priority first, then in
    /// arrival order; the count is persisted before the permit is returned,
    /// so a crash after the call cannot forget it.
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
        let (grant, windows) = loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = self.clock.epoch();
            let decision = {
                let mut state = self.lock();
                if state.queue.first() != Some(&ticket) {
                    Err(None)
                } else {
                    match state.policy.decide(purpose, now) {
                        Ok(grant) => {
                            state.queue.remove(&ticket);
                            Ok((grant, windows(&state.policy)))
                        }
                        Err(wait) => Err(wait.until),
                    }
                }
            };
            match decision {
                Ok(granted) => break granted,
                Err(until) => {
                    let deadline = until.and_then(to_time);
                    let sleep = async {
                        match deadline {
                            Some(t) => self.clock.sleep_until(t).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = notified => {}
                        _ = sleep => {}
                    }
                }
            }
        };
        self.persist(windows, None).await?;
        Ok(Permit { purpose, grant })
    }

    /// Feeds a call's outcome back: corrects the counts, locks a window on
    /// 429, writes the ledger row and the metrics.
    pub async fn record(&self, permit: Permit, call: CallOutcome) -> DbResult<()> {
        let now = self.clock.epoch();
        let windows = {
            let mut state = self.lock();
            state
                .policy
                .observe(permit.grant, &call.report, call.status == Some(429), now);
            windows(&state.policy)
        };
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

    async fn persist(&self, windows: [Window; 2], call: Option<LedgerRow>) -> DbResult<()> {
        publish(&self.lock().policy);
        self.store
            .write(move |tx| {
                for (kind, window) in WindowKind::ALL.into_iter().zip(&windows) {
                    store::budget::save_window(tx, kind, window)?;
                }
                if let Some(row) = call {
                    store::budget::insert_call(
                        tx,
                        &store::budget::CallRow {
                            at: row.at,
                            endpoint: row.call.endpoint,
                            athlete_id: row.call.athlete_id,
                            purpose: row.purpose.as_str(),
                            status: row.call.status,
                            usage_15min: row.call.report.usage.map(|u| u.0),
                            usage_daily: row.call.report.usage.map(|u| u.1),
                            duration_ms: row.call.duration.as_millis() as i64,
                        },
                    )?;
                }
                Ok(())
            })
            .await
    }

    /// Stops (or restarts) every purpose but interactive; survives restarts.
    pub async fn set_paused(&self, paused: bool) -> DbResult<()> {
        self.store
            .write(move |tx| store::budget::set_paused(tx, paused))
            .await?;
        self.lock().policy.set_paused(paused);
        tracing::info!(paused, "background use of the Strava budget");
        self.changed.notify_waiters();
        Ok(())
    }

    pub fn snapshot(&self) -> Snapshot {
        let now = self.clock.epoch();
        self.lock().policy.snapshot(now)
    }

    /// The lowest-priority purpose that may call now, and when that may
    /// change by itself (see [`Policy::servable`]).
    pub fn servable(&self) -> (Option<Purpose>, Option<DateTime<Utc>>) {
        let now = self.clock.epoch();
        let (purpose, until) = self.lock().policy.servable(now);
        (purpose, until.and_then(to_time))
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

fn windows(policy: &Policy) -> [Window; 2] {
    [
        policy.window(WindowKind::Quarter).clone(),
        policy.window(WindowKind::Day).clone(),
    ]
}

fn publish(policy: &Policy) {
    for kind in WindowKind::ALL {
        metrics::gauge!("strava_budget_used", "window" => kind.as_str())
            .set(f64::from(policy.window(kind).used));
        metrics::gauge!("strava_budget_limit", "window" => kind.as_str())
            .set(f64::from(policy.limit(kind)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::clock::ManualClock;
    use chrono::TimeZone;

    /// 2026-03-10 12:07:30 UTC: mid-quarter, mid-day.
    const NOON: i64 = 1_773_144_450;
    const QUARTER: i64 = 1_773_144_000; // 12:00:00
    const MIDNIGHT: i64 = 1_773_100_800; // 00:00:00

    fn policy(quarter: u32, day: u32) -> Policy {
        Policy::new(
            Limits { quarter, day },
            Window::default(),
            Window::default(),
            false,
        )
    }

    fn take(p: &mut Policy, purpose: Purpose, now: i64, n: u32) -> u32 {
        (0..n).filter(|_| p.decide(purpose, now).is_ok()).count() as u32
    }

    #[test]
    fn windows_align_as_strava_counts() {
        assert_eq!(WindowKind::Quarter.start_of(NOON), QUARTER);
        assert_eq!(WindowKind::Quarter.start_of(QUARTER + 900), QUARTER + 900);
        assert_eq!(WindowKind::Quarter.start_of(QUARTER + 899), QUARTER);
        assert_eq!(WindowKind::Day.start_of(NOON), MIDNIGHT);
        let t = Utc.timestamp_opt(QUARTER, 0).unwrap();
        assert_eq!(t.format("%H:%M:%S").to_string(), "12:00:00");
    }

    #[test]
    fn a_full_quarter_waits_for_the_next_and_the_day_keeps_counting() {
        let mut p = policy(10, 1000);
        assert_eq!(take(&mut p, Purpose::Interactive, NOON, 12), 10);
        let wait = p.decide(Purpose::Interactive, NOON).unwrap_err();
        assert_eq!(wait.reason, Blocked::Full(WindowKind::Quarter));
        assert_eq!(wait.until, Some(QUARTER + 900));
        assert!(p.decide(Purpose::Interactive, QUARTER + 899).is_err());
        assert!(p.decide(Purpose::Interactive, QUARTER + 900).is_ok());
        assert_eq!(p.window(WindowKind::Quarter).used, 1);
        assert_eq!(p.window(WindowKind::Day).used, 11);
        // The day resets at midnight.
        p.roll(MIDNIGHT + 86_400);
        assert_eq!(p.window(WindowKind::Day).used, 0);
    }

    #[test]
    fn calls_at_a_windows_very_end_count_in_the_next_one_too() {
        let mut p = policy(10, 1000);
        let end = QUARTER + 900;
        assert_eq!(take(&mut p, Purpose::Interactive, end - 10, 1), 1);
        assert_eq!(
            take(&mut p, Purpose::Interactive, end - CLOCK_SKEW_SECS, 2),
            2
        );
        p.roll(end);
        // Strava's clock may have counted those two in the new window.
        assert_eq!(p.window(WindowKind::Quarter).used, 2);
        assert_eq!(p.window(WindowKind::Day).used, 3);
        // Nothing carries over a gap of a whole window.
        take(&mut p, Purpose::Interactive, end + 900 - 1, 1);
        p.roll(end + 1800);
        assert_eq!(p.window(WindowKind::Quarter).used, 0);
    }

    #[test]
    fn the_daily_limit_waits_for_midnight() {
        let mut p = policy(100, 20);
        assert_eq!(take(&mut p, Purpose::Interactive, NOON, 20), 20);
        let wait = p.decide(Purpose::Interactive, NOON + 3600).unwrap_err();
        assert_eq!(wait.reason, Blocked::Full(WindowKind::Day));
        assert_eq!(wait.until, Some(MIDNIGHT + 86_400));
    }

    #[test]
    fn reported_usage_only_ever_raises_the_count() {
        let mut p = policy(100, 1000);
        let grant = p.decide(Purpose::Interactive, NOON).unwrap();
        let report = RateReport {
            usage: Some((40, 300)),
            limit: None,
        };
        p.observe(grant, &report, false, NOON);
        assert_eq!(p.window(WindowKind::Quarter).used, 40);
        assert_eq!(p.window(WindowKind::Day).used, 300);
        let low = RateReport {
            usage: Some((2, 2)),
            limit: None,
        };
        p.observe(grant, &low, false, NOON);
        assert_eq!(p.window(WindowKind::Quarter).used, 40);
        assert_eq!(p.window(WindowKind::Quarter).reported_usage, Some(2));
    }

    #[test]
    fn usage_reported_after_the_window_rolled_does_not_touch_the_new_one() {
        let mut p = policy(100, 1000);
        let grant = p.decide(Purpose::Interactive, QUARTER + 890).unwrap();
        let report = RateReport {
            usage: Some((90, 500)),
            limit: None,
        };
        p.observe(grant, &report, false, QUARTER + 901);
        assert_eq!(p.window(WindowKind::Quarter).used, 0);
        assert_eq!(p.window(WindowKind::Day).used, 500);
    }

    #[test]
    fn lower_reported_limits_lower_the_ceilings_and_higher_ones_do_not_raise_them() {
        let mut p = policy(10, 1000);
        let grant = p.decide(Purpose::Interactive, NOON).unwrap();
        let report = RateReport {
            usage: None,
            limit: Some((5, 2000)),
        };
        p.observe(grant, &report, false, NOON);
        assert_eq!(p.limit(WindowKind::Quarter), 5);
        assert_eq!(p.limit(WindowKind::Day), 1000);
        assert_eq!(take(&mut p, Purpose::Interactive, NOON, 10), 4);
        // The reported limit outlives the window it came in.
        p.roll(QUARTER + 900);
        assert_eq!(p.limit(WindowKind::Quarter), 5);
    }

    #[test]
    fn after_a_429_nothing_goes_until_the_window_resets() {
        let mut p = policy(100, 1000);
        let grant = p.decide(Purpose::Interactive, NOON).unwrap();
        // Other clients spent the window; Strava refuses and says so.
        let report = RateReport {
            usage: Some((101, 400)),
            limit: Some((100, 1000)),
        };
        p.observe(grant, &report, true, NOON);
        let wait = p.decide(Purpose::Interactive, NOON + 60).unwrap_err();
        assert_eq!(wait.reason, Blocked::RateLimited(WindowKind::Quarter));
        assert_eq!(wait.until, Some(QUARTER + 900));
        assert!(p.decide(Purpose::Interactive, QUARTER + 900).is_ok());
    }

    #[test]
    fn a_429_without_headers_locks_the_quarter_and_a_daily_one_locks_the_day() {
        let mut p = policy(100, 1000);
        let grant = p.decide(Purpose::Interactive, NOON).unwrap();
        p.observe(grant, &RateReport::default(), true, NOON);
        assert_eq!(
            p.decide(Purpose::Interactive, NOON).unwrap_err().reason,
            Blocked::RateLimited(WindowKind::Quarter)
        );
        let grant = p.decide(Purpose::Interactive, QUARTER + 900).unwrap();
        let report = RateReport {
            usage: Some((3, 1001)),
            limit: Some((100, 1000)),
        };
        p.observe(grant, &report, true, QUARTER + 900);
        let wait = p.decide(Purpose::Interactive, QUARTER + 1800).unwrap_err();
        assert_eq!(wait.reason, Blocked::RateLimited(WindowKind::Day));
        assert_eq!(wait.until, Some(MIDNIGHT + 86_400));
    }

    #[test]
    fn lower_priorities_leave_headroom_for_higher_ones() {
        let mut p = policy(10, 1000);
        assert_eq!(take(&mut p, Purpose::Backfill, NOON, 10), 7);
        assert_eq!(
            p.decide(Purpose::Backfill, NOON).unwrap_err().reason,
            Blocked::Full(WindowKind::Quarter)
        );
        assert_eq!(take(&mut p, Purpose::GapFill, NOON, 10), 1);
        assert_eq!(take(&mut p, Purpose::Webhook, NOON, 10), 1);
        assert_eq!(take(&mut p, Purpose::Interactive, NOON, 10), 1);
        assert_eq!(p.servable(NOON), (None, Some(QUARTER + 900)));
    }

    #[test]
    fn background_work_is_paced_across_the_day() {
        let mut p = policy(1000, 1000);
        // Backfill may use 70% of the day; at midnight it has two hours' lead:
        // calls go while the count is below 700 * 2/24 = 58.3.
        let early = take(&mut p, Purpose::Backfill, MIDNIGHT, 1000);
        assert_eq!(early, 59);
        let wait = p.decide(Purpose::Backfill, MIDNIGHT).unwrap_err();
        assert_eq!(wait.reason, Blocked::Pacing);
        let until = wait.until.unwrap();
        assert!(until > MIDNIGHT && until <= MIDNIGHT + 3600, "{until}");
        assert!(p.decide(Purpose::Backfill, until - 1).is_err());
        assert!(p.decide(Purpose::Backfill, until).is_ok());
        // Webhook fetches and interactive calls are not paced.
        assert!(p.decide(Purpose::Webhook, MIDNIGHT + 1).is_ok());
        assert!(p.decide(Purpose::Interactive, MIDNIGHT + 1).is_ok());
        // By noon the curve allows more than half the backfill share.
        let by_noon = take(&mut p, Purpose::Backfill, MIDNIGHT + 12 * 3600, 1000);
        assert_eq!(p.window(WindowKind::Day).used, 409); // 700 * 14/24 = 408.3
        assert!(by_noon > 300);
    }

    #[test]
    fn pause_stops_everything_but_interactive() {
        let mut p = policy(10, 1000);
        p.set_paused(true);
        for purpose in Purpose::ALL.into_iter().skip(1) {
            assert_eq!(
                p.decide(purpose, NOON).unwrap_err(),
                Wait {
                    reason: Blocked::Paused,
                    until: None
                }
            );
        }
        assert!(p.decide(Purpose::Interactive, NOON).is_ok());
        assert_eq!(p.servable(NOON).0, Some(Purpose::Interactive));
        p.set_paused(false);
        assert_eq!(p.servable(NOON).0, Some(Purpose::Reconcile));
    }

    #[test]
    fn forecast_extrapolates_the_current_rate() {
        let mut p = policy(1000, 1000);
        assert_eq!(p.forecast(NOON).exhausted_at, None);
        // 240 calls at 03:00, none since: at 06:00 today's average (40 an
        // hour) leaves 760 for 19 hours, past midnight.
        let (three, six) = (MIDNIGHT + 3 * 3600, MIDNIGHT + 6 * 3600);
        take(&mut p, Purpose::Interactive, three, 240);
        assert_eq!(p.forecast(six).exhausted_at, None);
        assert!((p.forecast(six).calls_per_hour - 40.0).abs() < 1e-9);
        // A burst of 200 now: at 200 an hour the other 560 last 2.8 hours.
        take(&mut p, Purpose::Interactive, six, 200);
        assert!((p.forecast(six).calls_per_hour - 200.0).abs() < 1e-9);
        assert_eq!(p.forecast(six).exhausted_at, to_time(six + 10_080));
        // Spent: now.
        take(&mut p, Purpose::Interactive, six, 1000);
        assert_eq!(p.forecast(six).exhausted_at, to_time(six));
    }

    #[test]
    fn usage_headers_are_read_case_insensitively_with_read_limits_first() {
        let mut headers = HeaderMap::new();
        headers.insert("X-Ratelimit-Usage", "30,400".parse().unwrap());
        headers.insert("X-Ratelimit-Limit", "200,2000".parse().unwrap());
        headers.insert("X-Readratelimit-Usage", "26,362".parse().unwrap());
        headers.insert("X-Readratelimit-Limit", "100,1000".parse().unwrap());
        let report = RateReport::from_headers(&headers);
        assert_eq!(report.usage, Some((26, 362)));
        assert_eq!(report.limit, Some((100, 1000)));
        headers.remove("x-readratelimit-usage");
        headers.insert("x-readratelimit-limit", "garbage".parse().unwrap());
        let report = RateReport::from_headers(&headers);
        assert_eq!(report.usage, Some((30, 400)));
        assert_eq!(report.limit, Some((200, 2000)));
        assert_eq!(
            RateReport::from_headers(&HeaderMap::new()),
            RateReport::default()
        );
    }

    async fn budget_at(dir: &tempfile::TempDir, clock: Arc<ManualClock>) -> Arc<Budget> {
        let store = Store::open(&dir.path().join("b.db")).unwrap();
        Budget::load(
            store,
            clock,
            Limits {
                quarter: 10,
                day: 1000,
            },
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
                usage: Some((8, 50)),
                limit: Some((9, 1000)),
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
        assert_eq!(budget.servable().0, None);
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
        for _ in 0..7 {
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
        let budget = Budget::load(store, clock.clone(), Limits { quarter: 1, day: 2 })
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
        assert_eq!(budget.servable().0, Some(Purpose::Interactive));
    }
}
