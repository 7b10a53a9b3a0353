//! The sync engine: what keeps the local copy complete although webhooks get
//! lost, uploads arrive late and deletions go unannounced, on one budget.

pub mod dispatch;
pub mod enrich;
pub mod gap_fill;
pub mod progress;
pub mod reconcile;
pub mod scheduler;
pub mod source;
pub mod webhook_fetch;
