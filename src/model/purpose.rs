//! Why a call to Strava is made: the vocabulary the budget, the job queue and
//! the ledger share.

/// Why a call to Strava is made. The order is the budget's priority order:
/// earlier variants are served first and keep headroom reserved for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Purpose {
    /// An athlete is waiting: first page at connect, manual refresh.
    Interactive,
    /// Fetching what a webhook event announced.
    Webhook,
    /// The daily pass filling what webhooks missed.
    GapFill,
    /// Walking an athlete's history, newest to oldest.
    Backfill,
    /// Fetching detailed records for summaries, when otherwise idle.
    Enrichment,
    /// Comparing Strava's list with ours to find silent deletions.
    Reconcile,
}

impl Purpose {
    pub const ALL: [Purpose; 6] = [
        Purpose::Interactive,
        Purpose::Webhook,
        Purpose::GapFill,
        Purpose::Backfill,
        Purpose::Enrichment,
        Purpose::Reconcile,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Interactive => "interactive",
            Purpose::Webhook => "webhook",
            Purpose::GapFill => "gap_fill",
            Purpose::Backfill => "backfill",
            Purpose::Enrichment => "enrichment",
            Purpose::Reconcile => "reconcile",
        }
    }

    /// The value stored in `jobs.priority`: lower runs first.
    pub fn rank(self) -> i64 {
        self as i64
    }
}
