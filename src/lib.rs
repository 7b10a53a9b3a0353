//! strava-sync keeps a local copy (SQLite, or PostgreSQL shared by several
//! instances) of every connected athlete's Strava activities and serves it
//! to frontends without spending Strava API calls.

pub mod config;
pub mod demo;
pub mod http;
pub mod model;
pub mod outbox;
pub mod simulator;
pub mod startup;
pub mod store;
pub mod strava;
pub mod sync;
pub mod telemetry;
pub mod webhook;
