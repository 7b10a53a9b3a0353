//! Everything that talks to Strava: the HTTP client, OAuth, and the shared
//! budget every call must take a permit from.

pub mod budget;
pub mod client;
pub mod error;
pub mod oauth;
pub mod tokens;
