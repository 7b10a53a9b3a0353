//! What strava-sync tells the application: a watch on the change log that
//! wakes the change feed and the deliveries, and the signed deliveries of
//! each change to `APP_WEBHOOK_URL`. Nothing here calls Strava.

pub mod delivery;
pub mod signature;
mod watch;

pub use watch::ChangeWatch;
