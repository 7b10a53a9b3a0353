//! The shared vocabulary every layer speaks and none owns: time, the purpose
//! of a Strava call, a webhook event, a queued task, an event for the
//! application. It imports nothing of the crate.

pub mod app_event;
pub mod backoff;
pub mod clock;
pub mod event;
pub mod job;
mod purpose;

pub use purpose::Purpose;
