//! Work that spends the Strava budget, run from a durable queue, and the sync
//! engine that keeps the local copy complete although webhooks get lost,
//! uploads arrive late and deletions go unannounced.
//!
//! Anything that needs Strava data enqueues a [`Task`](crate::model::job::Task)
//! ([`queue::JobQueue::push`], or inside a store use case followed by
//! [`queue::JobQueue::wake`]); the [`runner::JobRunner`] claims the most
//! urgent job the budget can serve right now and [`dispatch`]es it by task.
//!
//! Inside: `runner` → `dispatch` → one module per task (`history`,
//! `gap_fill`, `reconcile`, `enrich`, `webhook_fetch`) → `source` and
//! `outcome`; `scheduler` plans passes; `progress` estimates backfills.

pub mod attention;
pub mod dispatch;
pub mod enrich;
pub mod gap_fill;
pub mod history;
pub mod outcome;
pub mod progress;
pub mod queue;
pub mod reconcile;
pub mod runner;
pub mod scheduler;
pub mod source;
pub mod webhook_fetch;
