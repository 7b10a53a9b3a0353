//! Why a call to Strava is made: the vocabulary the budget, the job queue and
//! the ledger share.

/// Why a call to Strava is made. Interactive calls go first; fetches for
/// athletes who are looking go next, up to a cap; the background purposes
/// then share the day by `BUDGET_SHARES`. The order is also the order of
/// callers waiting for a permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Purpose {
    /// An athlete is waiting: first page at connect, manual refresh.
    Interactive,
    /// Fetching what a webhook announced for an athlete whose app is showing
    /// their data (their API token was used recently).
    Attention,
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
    pub const ALL: [Purpose; 7] = [
        Purpose::Interactive,
        Purpose::Attention,
        Purpose::Webhook,
        Purpose::GapFill,
        Purpose::Backfill,
        Purpose::Enrichment,
        Purpose::Reconcile,
    ];

    /// The purposes that share the day by `BUDGET_SHARES`.
    pub const BACKGROUND: [Purpose; 5] = [
        Purpose::Webhook,
        Purpose::GapFill,
        Purpose::Backfill,
        Purpose::Reconcile,
        Purpose::Enrichment,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Interactive => "interactive",
            Purpose::Attention => "attention",
            Purpose::Webhook => "webhook",
            Purpose::GapFill => "gap_fill",
            Purpose::Backfill => "backfill",
            Purpose::Enrichment => "enrichment",
            Purpose::Reconcile => "reconcile",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The value stored in `jobs.priority`: lower runs first.
    pub fn rank(self) -> i64 {
        self as i64
    }

    /// The purpose stored as `rank` in `jobs.priority`.
    pub fn from_rank(rank: i64) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.rank() == rank)
    }

    /// The purpose whose `BUDGET_SHARES` share a call counts against:
    /// fetches for athletes who are looking are webhook fetches served early.
    pub fn share_of(self) -> Purpose {
        match self {
            Purpose::Attention => Purpose::Webhook,
            other => other,
        }
    }
}
