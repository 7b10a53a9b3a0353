//! Strava's rate limits as Strava counts them: per application, a 15-minute
//! window starting at :00, :15, :30 and :45 UTC and the UTC day, both on the
//! simulator clock. Every attributable API call counts, rejected ones too,
//! and "other clients of the same app" add to the same counters.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

const FIFTEEN_MIN_SECS: i64 = 15 * 60;
const DAY_SECS: i64 = 24 * 60 * 60;

/// The application's limits. Every simulated endpoint is a "read" one, so a
/// call counts against both pairs; the read pair binds with the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub overall_15min: u32,
    pub overall_daily: u32,
    pub read_15min: u32,
    pub read_daily: u32,
}

impl Default for Limits {
    /// Strava's current defaults for a new application.
    fn default() -> Self {
        Self {
            overall_15min: 200,
            overall_daily: 2000,
            read_15min: 100,
            read_daily: 1000,
        }
    }
}

impl Limits {
    /// The same limit for both pairs, e.g. the SPEC's `100 / 1000` budget.
    pub fn read_and_overall(fifteen_min: u32, daily: u32) -> Self {
        Self {
            overall_15min: fifteen_min,
            overall_daily: daily,
            read_15min: fifteen_min,
            read_daily: daily,
        }
    }
}

/// One window's counters; `start` is the window's first epoch second.
#[derive(Debug, Default, Clone, Copy)]
struct Window {
    start: i64,
    ours: u32,
    others: u32,
}

impl Window {
    fn roll(&mut self, start: i64) {
        if self.start != start {
            *self = Window {
                start,
                ..Window::default()
            };
        }
    }

    fn used(&self) -> u32 {
        self.ours.saturating_add(self.others)
    }
}

#[derive(Debug, Default)]
pub(crate) struct RateCounter {
    fifteen: Window,
    daily: Window,
}

/// What the headers of one counted call say.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Admission {
    pub limits: Limits,
    pub fifteen_min: u32,
    pub daily: u32,
    pub over: bool,
}

impl Admission {
    /// The four headers as Strava sends them (names lowercase here; the
    /// response is written Camel-Case on the wire).
    pub fn headers(&self) -> [(&'static str, String); 4] {
        let usage = format!("{},{}", self.fifteen_min, self.daily);
        let l = self.limits;
        [
            (
                "x-ratelimit-limit",
                format!("{},{}", l.overall_15min, l.overall_daily),
            ),
            ("x-ratelimit-usage", usage.clone()),
            (
                "x-readratelimit-limit",
                format!("{},{}", l.read_15min, l.read_daily),
            ),
            ("x-readratelimit-usage", usage),
        ]
    }
}

impl RateCounter {
    fn roll(&mut self, now: i64) {
        self.fifteen.roll(now - now.rem_euclid(FIFTEEN_MIN_SECS));
        self.daily.roll(now - now.rem_euclid(DAY_SECS));
    }

    /// Counts one call of ours at `now` and says whether it is over a limit.
    pub fn admit(&mut self, now: i64, limits: Limits) -> Admission {
        self.roll(now);
        self.fifteen.ours = self.fifteen.ours.saturating_add(1);
        self.daily.ours = self.daily.ours.saturating_add(1);
        let (fifteen_min, daily) = (self.fifteen.used(), self.daily.used());
        Admission {
            limits,
            fifteen_min,
            daily,
            over: fifteen_min > limits.read_15min.min(limits.overall_15min)
                || daily > limits.read_daily.min(limits.overall_daily),
        }
    }

    /// Calls made now by other clients of the same application.
    pub fn add_others(&mut self, now: i64, calls: u32) {
        self.roll(now);
        self.fifteen.others = self.fifteen.others.saturating_add(calls);
        self.daily.others = self.daily.others.saturating_add(calls);
    }

    pub fn usage(&mut self, now: i64, limits: Limits) -> Usage {
        self.roll(now);
        Usage {
            limits,
            fifteen_min: WindowUsage::of(&self.fifteen, FIFTEEN_MIN_SECS),
            daily: WindowUsage::of(&self.daily, DAY_SECS),
        }
    }
}

/// The windows' usage as the simulator counts it (what the headers report).
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub limits: Limits,
    pub fifteen_min: WindowUsage,
    pub daily: WindowUsage,
}

#[derive(Debug, Clone, Serialize)]
pub struct WindowUsage {
    /// All calls in the window, other clients' included.
    pub used: u32,
    pub by_other_clients: u32,
    pub started_at: DateTime<Utc>,
    pub resets_at: DateTime<Utc>,
}

impl WindowUsage {
    fn of(window: &Window, length: i64) -> Self {
        let at = |secs| Utc.timestamp_opt(secs, 0).single().unwrap_or_default();
        Self {
            used: window.used(),
            by_other_clients: window.others,
            started_at: at(window.start),
            resets_at: at(window.start + length),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_align_to_quarter_hours_and_utc_days() {
        let mut counter = RateCounter::default();
        let limits = Limits::read_and_overall(2, 3);
        // 2026-01-01T10:14:59Z, then one second later a new quarter.
        let t = 1_767_262_499;
        assert!(!counter.admit(t, limits).over);
        assert!(!counter.admit(t, limits).over);
        let third = counter.admit(t, limits);
        assert!(third.over, "third call in the quarter is over 2");
        assert_eq!((third.fifteen_min, third.daily), (3, 3));
        let next_quarter = counter.admit(t + 1, limits);
        assert_eq!((next_quarter.fifteen_min, next_quarter.daily), (1, 4));
        assert!(next_quarter.over, "the day is over 3");
        let next_day = counter.admit(t - t.rem_euclid(DAY_SECS) + DAY_SECS, limits);
        assert_eq!((next_day.fifteen_min, next_day.daily), (1, 1));
        assert!(!next_day.over);
    }
}
