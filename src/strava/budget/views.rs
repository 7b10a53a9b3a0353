//! The budget as `/admin/budget` and the sync status show it: serializable
//! copies taken at one moment, read without holding the budget's lock.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::policy::Blocked;
use super::window::WindowKind;

/// The policy counts in epoch seconds; views show times.
pub(super) fn to_time(t: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t, 0)
}

#[derive(Debug, Clone, Serialize, ToSchema)]
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

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BlockedView {
    pub reason: Blocked,
    pub until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
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
