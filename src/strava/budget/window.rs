//! The windows Strava counts in, and what its rate-limit headers say of them.

use std::ops::{Index, IndexMut};

use reqwest::header::HeaderMap;
use serde::Serialize;

/// Our clock and Strava's may disagree by this much: a call sent this close
/// to a window's end may land in the next one, so it is counted there too.
pub const CLOCK_SKEW_SECS: i64 = 2;

/// The two windows Strava counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, utoipa::ToSchema)]
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

/// One value for each window. Every quarter-or-day pair is kept in one, so
/// which field a [`WindowKind`] means is spelled out here and nowhere else.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerWindow<T> {
    pub quarter: T,
    pub day: T,
}

impl<T> PerWindow<T> {
    pub fn from_fn(mut f: impl FnMut(WindowKind) -> T) -> Self {
        Self {
            quarter: f(WindowKind::Quarter),
            day: f(WindowKind::Day),
        }
    }

    /// Both values, quarter first (the order of [`WindowKind::ALL`]).
    pub fn iter(&self) -> impl Iterator<Item = (WindowKind, &T)> {
        WindowKind::ALL.into_iter().map(|kind| (kind, &self[kind]))
    }
}

impl<T> Index<WindowKind> for PerWindow<T> {
    type Output = T;

    fn index(&self, kind: WindowKind) -> &T {
        match kind {
            WindowKind::Quarter => &self.quarter,
            WindowKind::Day => &self.day,
        }
    }
}

impl<T> IndexMut<WindowKind> for PerWindow<T> {
    fn index_mut(&mut self, kind: WindowKind) -> &mut T {
        match kind {
            WindowKind::Quarter => &mut self.quarter,
            WindowKind::Day => &mut self.day,
        }
    }
}

/// The configured ceilings (`STRAVA_RATE_LIMIT_15MIN`, `STRAVA_RATE_LIMIT_DAILY`).
pub type Limits = PerWindow<u32>;

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

/// What one response's rate-limit headers said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateReport {
    pub usage: Option<PerWindow<u32>>,
    pub limit: Option<PerWindow<u32>>,
}

impl RateReport {
    /// Reads `X-ReadRateLimit-*` (every call we make is a read), falling back
    /// to `X-RateLimit-*`. Header names are case-insensitive (Strava sends
    /// `X-Readratelimit-Usage`); malformed values are ignored.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let pair = |names: [&str; 2]| {
            names.into_iter().find_map(|name| {
                let value = headers.get(name)?.to_str().ok()?;
                let (quarter, day) = value.split_once(',')?;
                Some(PerWindow {
                    quarter: quarter.trim().parse().ok()?,
                    day: day.trim().parse().ok()?,
                })
            })
        };
        Self {
            usage: pair(["x-readratelimit-usage", "x-ratelimit-usage"]),
            limit: pair(["x-readratelimit-limit", "x-ratelimit-limit"]),
        }
    }

    pub(super) fn usage_of(&self, kind: WindowKind) -> Option<u32> {
        self.usage.map(|usage| usage[kind])
    }

    /// A reported limit of zero means no limit was reported.
    pub(super) fn limit_of(&self, kind: WindowKind) -> Option<u32> {
        self.limit.map(|limit| limit[kind]).filter(|l| *l > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strava::budget::test_support::{pair, MIDNIGHT, NOON, QUARTER};
    use chrono::{TimeZone, Utc};

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
    fn usage_headers_are_read_case_insensitively_with_read_limits_first() {
        let mut headers = HeaderMap::new();
        headers.insert("X-Ratelimit-Usage", "30,400".parse().unwrap());
        headers.insert("X-Ratelimit-Limit", "200,2000".parse().unwrap());
        headers.insert("X-Readratelimit-Usage", "26,362".parse().unwrap());
        headers.insert("X-Readratelimit-Limit", "100,1000".parse().unwrap());
        let report = RateReport::from_headers(&headers);
        assert_eq!(report.usage, pair(26, 362));
        assert_eq!(report.limit, pair(100, 1000));
        headers.remove("x-readratelimit-usage");
        headers.insert("x-readratelimit-limit", "garbage".parse().unwrap());
        let report = RateReport::from_headers(&headers);
        assert_eq!(report.usage, pair(30, 400));
        assert_eq!(report.limit, pair(200, 2000));
        assert_eq!(
            RateReport::from_headers(&HeaderMap::new()),
            RateReport::default()
        );
    }
}
