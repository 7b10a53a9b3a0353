//! The shared vocabulary every layer speaks and none owns: time, the purpose
//! of a Strava call. It imports nothing of the crate.

pub mod clock;
mod purpose;

pub use purpose::Purpose;
