//! The pure budget policy: given the time and what Strava reported, it
//! decides whether a call of some [`Purpose`] may go now, and if not, until
//! when it must wait. It owns no clock, does no I/O and logs nothing, so tests
//! drive it through windows, restarts and 429s without waiting.
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
//! - interactive calls may use every window in full; every other purpose
//!   stops short by a reserve sized to what interactive calls actually need
//!   ([`Policy::interactive_reserve`]), which flows back as a window nears
//!   its end;
//! - fetches for athletes who are looking ([`Purpose::Attention`]) go next,
//!   unpaced, up to the webhook share of the day;
//! - the background purposes share the day by `BUDGET_SHARES`: together they
//!   are paced across the UTC day by an allowance curve, and within it the
//!   purpose furthest behind its share goes first ([`Policy::servable`]), so
//!   each gets at least its share while it has work and what one leaves
//!   unused the others take;
//! - an operator may pause everything but interactive calls.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use super::views::{to_time, BlockedView, Forecast, Snapshot, WindowView};
use super::window::{Limits, PerWindow, RateReport, Window, WindowKind, CLOCK_SKEW_SECS};
use crate::model::Purpose;

/// How far into the day's allowance curve background work may run ahead: the
/// day's first hours may spend this much more than an even spread would.
pub const PACE_LEAD_SECS: i64 = 2 * 3600;

/// How often a purpose held back only by a slowly shrinking reserve looks
/// again.
const RECHECK_SECS: i64 = 60;

/// A window passing this share of its limit deserves an operator's attention.
pub const WARN_PERCENT: u32 = 80;

/// Interactive calls a day the reserve assumes at least, however quiet the
/// day has been: a connect or a refresh must always find headroom.
pub const INTERACTIVE_FLOOR_PER_DAY: u32 = 24;
/// The least a quarter hour keeps for interactive calls at its start.
pub const INTERACTIVE_FLOOR_PER_QUARTER: u32 = 2;

/// Each background purpose's guaranteed share of the day, in percent
/// (`BUDGET_SHARES`).
pub type Shares = BTreeMap<Purpose, u32>;

/// The background purposes are paced across the day; interactive calls and
/// fetches for athletes who are looking go as soon as the windows allow.
pub fn is_paced(purpose: Purpose) -> bool {
    Purpose::BACKGROUND.contains(&purpose)
}

/// Why a call may not go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
    /// Fetches for athletes who are looking used the webhook share of the day.
    Capped,
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
    pub starts: PerWindow<i64>,
}

/// A window instance that passed [`WARN_PERCENT`] of its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HighUsage {
    pub window: WindowKind,
    pub used: u32,
    pub limit: u32,
}

/// The pure budget policy. Times are epoch seconds.
#[derive(Debug, Clone)]
pub struct Policy {
    configured: Limits,
    windows: PerWindow<Window>,
    paused: bool,
    /// The window instance high usage was last reported for.
    warned: PerWindow<Option<i64>>,
    /// Calls granted within [`CLOCK_SKEW_SECS`] of each current window's end,
    /// carried into the next window's count.
    straddling: PerWindow<u32>,
    /// When our calls of the last hour were granted, for the forecast.
    recent: VecDeque<i64>,
    shares: Shares,
    /// Today's calls by purpose.
    spent: BTreeMap<Purpose, u32>,
}

impl Policy {
    /// A policy resuming from persisted windows; windows that are not the
    /// current ones at the first call simply roll over.
    /// `spent` is today's calls by purpose, as the ledger counted them.
    pub fn new(
        configured: Limits,
        windows: PerWindow<Window>,
        paused: bool,
        shares: Shares,
        spent: BTreeMap<Purpose, u32>,
    ) -> Self {
        Self {
            configured,
            windows,
            paused,
            warned: PerWindow::default(),
            straddling: PerWindow::default(),
            recent: VecDeque::new(),
            shares,
            spent,
        }
    }

    /// Today's calls of `purpose`.
    pub fn spent(&self, purpose: Purpose) -> u32 {
        self.spent.get(&purpose).copied().unwrap_or(0)
    }

    /// Today's calls counted against `purpose`'s share.
    fn spent_against(&self, purpose: Purpose) -> u32 {
        Purpose::ALL
            .into_iter()
            .filter(|p| p.share_of() == purpose)
            .map(|p| self.spent(p))
            .sum()
    }

    /// Interactive calls a day, as today's pace projects them, never fewer
    /// than [`INTERACTIVE_FLOOR_PER_DAY`].
    fn interactive_per_day(&self, now: i64) -> u32 {
        let day = WindowKind::Day.len_secs();
        let elapsed = (now - self.windows.day.start).max(3600);
        let projected = i64::from(self.spent(Purpose::Interactive)) * day / elapsed;
        u32::try_from(projected)
            .unwrap_or(u32::MAX)
            .max(INTERACTIVE_FLOOR_PER_DAY)
    }

    /// What a window keeps for interactive calls still to come: what they
    /// need over the rest of the window, so the reserve shrinks to nothing at
    /// its end and unused headroom flows back to the other purposes.
    pub fn interactive_reserve(&self, kind: WindowKind, now: i64) -> u32 {
        let per_day = self.interactive_per_day(now);
        let per_window = match kind {
            WindowKind::Day => per_day,
            WindowKind::Quarter => (per_day * 2)
                .div_ceil(96)
                .max(INTERACTIVE_FLOOR_PER_QUARTER),
        };
        let len = kind.len_secs();
        let left = (self.window(kind).start + len - now).clamp(0, len);
        let reserve = (i64::from(per_window) * left + len / 2) / len;
        u32::try_from(reserve).unwrap_or(per_window)
    }

    /// What the day leaves for everything but interactive calls: the limit
    /// less what interactive calls spent and still need, so the reserve
    /// flows back as the day ends.
    fn background_day(&self, now: i64) -> u32 {
        self.limit(WindowKind::Day)
            .saturating_sub(self.spent(Purpose::Interactive))
            .saturating_sub(self.interactive_reserve(WindowKind::Day, now))
    }

    /// The background purposes that may call now, the one furthest behind
    /// its share first: each then gets at least its share while it has work,
    /// and any of them may take what the others leave.
    fn background_order(&self) -> Vec<Purpose> {
        let mut order = Purpose::BACKGROUND.to_vec();
        // Ties and purposes without a share fall back to the priority order.
        order.sort_by_key(|p| {
            let share = u64::from(self.shares.get(p).copied().unwrap_or(0));
            let spent = u64::from(self.spent_against(*p));
            (
                share == 0,
                (spent * 1_000_000).checked_div(share).unwrap_or(0),
            )
        });
        order
    }

    pub fn window(&self, kind: WindowKind) -> &Window {
        &self.windows[kind]
    }

    pub fn windows(&self) -> &PerWindow<Window> {
        &self.windows
    }

    /// The limit in force: the configured one, or Strava's when lower.
    pub fn limit(&self, kind: WindowKind) -> u32 {
        let configured = self.configured[kind];
        self.window(kind)
            .reported_limit
            .map_or(configured, |r| r.min(configured))
    }

    /// How much of a window a purpose may use at `now`.
    pub fn ceiling(&self, kind: WindowKind, purpose: Purpose, now: i64) -> u32 {
        let limit = self.limit(kind);
        if purpose == Purpose::Interactive {
            return limit;
        }
        limit.saturating_sub(self.interactive_reserve(kind, now))
    }

    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Adopts what every instance sharing the database counted: the
    /// current windows' counts and 429s (never below our own), Strava's
    /// limits, the pause switch and today's calls by purpose. Windows that
    /// are not the current ones are left to [`roll`](Self::roll).
    pub fn sync(&mut self, stored: PerWindow<Window>, paused: bool, spent: BTreeMap<Purpose, u32>) {
        self.paused = paused;
        for kind in WindowKind::ALL {
            let theirs = &stored[kind];
            let window = &mut self.windows[kind];
            window.reported_limit = theirs.reported_limit.or(window.reported_limit);
            if theirs.start != window.start {
                continue;
            }
            window.used = window.used.max(theirs.used);
            window.reported_usage = window.reported_usage.max(theirs.reported_usage);
            window.exhausted |= theirs.exhausted;
        }
        for (purpose, calls) in spent {
            let ours = self.spent.entry(purpose).or_default();
            *ours = (*ours).max(calls);
        }
    }

    /// Starts fresh windows when time has moved past the current ones.
    pub fn roll(&mut self, now: i64) {
        for kind in WindowKind::ALL {
            let start = kind.start_of(now);
            let window = &mut self.windows[kind];
            if window.start == start {
                continue;
            }
            let straddling = std::mem::take(&mut self.straddling[kind]);
            let next = window.start + kind.len_secs() == start;
            if kind == WindowKind::Day {
                self.spent.clear();
            }
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
            if self.window(kind).used >= self.ceiling(kind, purpose, now) {
                // The reserve flows back as the window nears its end.
                let full = self.window(kind).used >= self.limit(kind);
                let until = if full || purpose == Purpose::Interactive {
                    end(kind)
                } else {
                    Some((now + RECHECK_SECS).min(end(kind).unwrap_or(now + RECHECK_SECS)))
                };
                return Some(Wait {
                    reason: Blocked::Full(kind),
                    until,
                });
            }
        }
        let today = &self.windows.day;
        let day = WindowKind::Day.len_secs();
        let day_end = today.start + day;
        let budget = i64::from(self.background_day(now));
        if purpose == Purpose::Attention {
            let share = i64::from(self.shares.get(&Purpose::Webhook).copied().unwrap_or(0));
            if i64::from(self.spent(Purpose::Attention)) * 100 >= budget * share {
                return Some(Wait {
                    reason: Blocked::Capped,
                    until: Some(day_end),
                });
            }
        }
        if is_paced(purpose) && budget > 0 {
            let elapsed = (now - today.start + PACE_LEAD_SECS).min(day);
            let used: i64 = [Purpose::Attention]
                .into_iter()
                .chain(Purpose::BACKGROUND)
                .map(|p| i64::from(self.spent(p)))
                .sum();
            if used * day >= budget * elapsed {
                // The allowance passes `used` one second after this point of
                // the day; once the curve is fully open, only the shrinking
                // interactive reserve adds to it, so look again in a while.
                let at = if elapsed == day {
                    now + RECHECK_SECS
                } else {
                    today.start + used * day / budget + 1 - PACE_LEAD_SECS
                };
                return Some(Wait {
                    reason: Blocked::Pacing,
                    until: Some(at.clamp(now + 1, day_end)),
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
        *self.spent.entry(purpose).or_default() += 1;
        for kind in WindowKind::ALL {
            let window = &mut self.windows[kind];
            window.used += 1;
            if now >= window.start + kind.len_secs() - CLOCK_SKEW_SECS {
                self.straddling[kind] += 1;
            }
        }
        Ok(Grant {
            starts: PerWindow::from_fn(|kind| self.windows[kind].start),
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
                self.windows[kind].reported_limit = Some(limit);
            }
            let limit = self.limit(kind);
            let window = &mut self.windows[kind];
            if window.start != grant.starts[kind] {
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
        let quarter = &mut self.windows.quarter;
        if rate_limited && !locked && quarter.start == grant.starts.quarter {
            quarter.exhausted = true;
        }
    }

    /// The current windows that passed [`WARN_PERCENT`] of their limit since
    /// last asked: each window instance is reported once. Ask after every
    /// [`decide`](Self::decide) and [`observe`](Self::observe) that changed
    /// the counts, before time rolls the windows over.
    pub fn take_high_usage(&mut self) -> Vec<HighUsage> {
        let mut high = Vec::new();
        for kind in WindowKind::ALL {
            let Window { used, start, .. } = self.windows[kind];
            let limit = self.limit(kind);
            // In u64: Strava's headers and the settings may say any u32.
            let past = u64::from(used) * 100 >= u64::from(limit) * u64::from(WARN_PERCENT);
            if past && self.warned[kind] != Some(start) {
                self.warned[kind] = Some(start);
                high.push(HighUsage {
                    window: kind,
                    used,
                    limit,
                });
            }
        }
        high
    }

    /// The purposes that may call now, in the order their work should be
    /// served: interactive, then athletes who are looking, then the
    /// background purposes furthest behind their share first; and when one
    /// that may not call now may be unblocked.
    pub fn servable(&mut self, now: i64) -> (Vec<Purpose>, Option<i64>) {
        self.roll(now);
        let mut order = vec![Purpose::Interactive, Purpose::Attention];
        order.extend(self.background_order());
        let mut wake: Option<i64> = None;
        order.retain(|purpose| match self.blocked(*purpose, now) {
            None => true,
            Some(wait) => {
                wake = match (wake, wait.until) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                false
            }
        });
        (order, wake)
    }

    /// When today's budget runs out at the current rate (None when it lasts
    /// past midnight). The rate is the higher of the last hour's and today's
    /// average, so a burst shows at once and a quiet hour does not hide a
    /// busy day. The first quarter hour counts as elapsed, so a burst just
    /// after midnight does not forecast nonsense.
    pub fn forecast(&self, now: i64) -> Forecast {
        let today = &self.windows.day;
        let elapsed = (now - today.start).max(WindowKind::Quarter.len_secs());
        let average = f64::from(today.used) / elapsed as f64;
        let last_hour = self.recent.iter().filter(|t| **t > now - 3600).count();
        let per_sec = average.max(last_hour as f64 / 3600.0);
        let remaining = f64::from(self.limit(WindowKind::Day).saturating_sub(today.used));
        let day_end = today.start + WindowKind::Day.len_secs();
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
        let windows = self
            .windows
            .iter()
            .map(|(kind, w)| WindowView {
                window: kind,
                started_at: to_time(w.start),
                resets_at: to_time(w.start + kind.len_secs()),
                used: w.used,
                limit: self.limit(kind),
                configured_limit: self.configured[kind],
                reported_usage: w.reported_usage,
                reported_limit: w.reported_limit,
                exhausted: w.exhausted,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strava::budget::test_support::{pair, shares, MIDNIGHT, NOON, QUARTER};

    fn policy(quarter: u32, day: u32) -> Policy {
        Policy::new(
            Limits { quarter, day },
            PerWindow::default(),
            false,
            shares(),
            BTreeMap::new(),
        )
    }

    fn take(p: &mut Policy, purpose: Purpose, now: i64, n: u32) -> u32 {
        (0..n).filter(|_| p.decide(purpose, now).is_ok()).count() as u32
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
            usage: pair(40, 300),
            limit: None,
        };
        p.observe(grant, &report, false, NOON);
        assert_eq!(p.window(WindowKind::Quarter).used, 40);
        assert_eq!(p.window(WindowKind::Day).used, 300);
        let low = RateReport {
            usage: pair(2, 2),
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
            usage: pair(90, 500),
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
            limit: pair(5, 2000),
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
            usage: pair(101, 400),
            limit: pair(100, 1000),
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
            usage: pair(3, 1001),
            limit: pair(100, 1000),
        };
        p.observe(grant, &report, true, QUARTER + 900);
        let wait = p.decide(Purpose::Interactive, QUARTER + 1800).unwrap_err();
        assert_eq!(wait.reason, Blocked::RateLimited(WindowKind::Day));
        assert_eq!(wait.until, Some(MIDNIGHT + 86_400));
    }

    #[test]
    fn background_leaves_what_interactive_needs_and_it_flows_back() {
        let mut p = policy(10, 1000);
        // A fresh quarter keeps two calls for interactive ones.
        assert_eq!(take(&mut p, Purpose::Backfill, QUARTER, 10), 8);
        assert_eq!(
            p.decide(Purpose::Webhook, QUARTER).unwrap_err().reason,
            Blocked::Full(WindowKind::Quarter)
        );
        assert_eq!(take(&mut p, Purpose::Interactive, QUARTER, 10), 2);
        assert!(p.servable(QUARTER).0.is_empty());
        assert_eq!(p.servable(QUARTER).1, Some(QUARTER + 900));
        // Unused, the reserve flows back as the quarter nears its end.
        let mut p = policy(10, 1000);
        assert_eq!(take(&mut p, Purpose::Backfill, QUARTER, 10), 8);
        assert_eq!(take(&mut p, Purpose::Backfill, QUARTER + 800, 10), 2);
    }

    #[test]
    fn background_work_is_paced_across_the_day() {
        let mut p = policy(1000, 1000);
        // The day keeps 24 calls for interactive ones; the other 976 are
        // paced with two hours' lead: at midnight calls go while the count
        // is below 976 * 2/24 = 81.3.
        let early = take(&mut p, Purpose::Backfill, MIDNIGHT, 1000);
        assert_eq!(early, 82);
        let wait = p.decide(Purpose::Webhook, MIDNIGHT).unwrap_err();
        assert_eq!(wait.reason, Blocked::Pacing);
        let until = wait.until.unwrap();
        assert!(until > MIDNIGHT && until <= MIDNIGHT + 3600, "{until}");
        assert!(p.decide(Purpose::Backfill, until - 1).is_err());
        assert!(p.decide(Purpose::Backfill, until).is_ok());
        // Interactive calls and athletes who are looking are not paced.
        assert!(p.decide(Purpose::Attention, MIDNIGHT + 1).is_ok());
        assert!(p.decide(Purpose::Interactive, MIDNIGHT + 1).is_ok());
        // By noon the day keeps 12 for interactive calls still to come and
        // the curve allows (1000 - 1 - 12) * 14/24 = 575.75 (and the
        // interactive call besides).
        take(&mut p, Purpose::GapFill, MIDNIGHT + 12 * 3600, 1000);
        assert_eq!(p.window(WindowKind::Day).used, 576 + 1);
    }

    #[test]
    fn the_purpose_furthest_behind_its_share_goes_first() {
        let spent = [
            (Purpose::Webhook, 100),
            (Purpose::Attention, 10),
            (Purpose::GapFill, 10),
            (Purpose::Reconcile, 1),
        ];
        let today = PerWindow {
            quarter: Window {
                start: QUARTER,
                ..Window::default()
            },
            day: Window {
                start: MIDNIGHT,
                ..Window::default()
            },
        };
        let limits = Limits {
            quarter: 1000,
            day: 1000,
        };
        let mut p = Policy::new(limits, today, false, shares(), spent.into());
        let (order, _) = p.servable(NOON);
        use Purpose::*;
        assert_eq!(
            order,
            [
                Interactive,
                Attention,
                Backfill,
                Enrichment,
                Reconcile,
                GapFill,
                Webhook
            ]
        );
        // Attention counts against the webhook share and is capped by it.
        for _ in 0..600 {
            let _ = p.decide(Attention, NOON);
        }
        assert_eq!(p.spent(Attention), 544, "55% of the 988 calls left");
        assert_eq!(
            p.decide(Attention, NOON).unwrap_err().reason,
            Blocked::Capped
        );
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
        assert_eq!(p.servable(NOON).0, [Purpose::Interactive]);
        p.set_paused(false);
        assert!(p.servable(NOON).0.contains(&Purpose::Reconcile));
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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever Strava's headers report (any counts the header parser
        /// accepts) and whatever limits are set, the policy keeps deciding,
        /// warning, forecasting and reporting without a panic.
        #[test]
        fn any_reported_usage_and_limit_is_taken_without_a_panic(
            limits in (1u32.., 1u32..),
            usage in proptest::option::of((proptest::num::u32::ANY, proptest::num::u32::ANY)),
            reported in proptest::option::of((proptest::num::u32::ANY, proptest::num::u32::ANY)),
            rate_limited in proptest::bool::ANY,
            later in 0i64..200_000,
        ) {
            let mut p = policy(limits.0, limits.1);
            let grant = p.decide(Purpose::Interactive, NOON).unwrap();
            let report = RateReport {
                usage: usage.and_then(|(q, d)| pair(q, d)),
                limit: reported.and_then(|(q, d)| pair(q, d)),
            };
            p.observe(grant, &report, rate_limited, NOON);
            p.take_high_usage();
            let _ = p.decide(Purpose::Backfill, NOON + later);
            p.servable(NOON + later);
            p.forecast(NOON + later);
            p.snapshot(NOON + later);
            p.take_high_usage();
        }
    }

    #[test]
    fn high_usage_is_reported_once_per_window_instance() {
        let mut p = policy(10, 1000);
        take(&mut p, Purpose::Interactive, NOON, 7);
        assert!(p.take_high_usage().is_empty());
        take(&mut p, Purpose::Interactive, NOON, 1);
        let quarter = HighUsage {
            window: WindowKind::Quarter,
            used: 8,
            limit: 10,
        };
        assert_eq!(p.take_high_usage(), [quarter]);
        take(&mut p, Purpose::Interactive, NOON, 1);
        assert!(p.take_high_usage().is_empty());
        // Strava's report can cross the line too, in both windows at once.
        let grant = p.decide(Purpose::Interactive, QUARTER + 900).unwrap();
        let report = RateReport {
            usage: pair(9, 850),
            limit: None,
        };
        p.observe(grant, &report, false, QUARTER + 900);
        let high = p.take_high_usage();
        assert_eq!(high.len(), 2);
        assert_eq!((high[0].window, high[0].used), (WindowKind::Quarter, 9));
        assert_eq!((high[1].window, high[1].used), (WindowKind::Day, 850));
    }
}
