//! Integration tests: one binary (linking dominates build time), one module
//! per concern. Each test spawns the real app on port 0 with a fresh database.

mod app_events;
mod at_rest;
mod budget;
mod connect;
mod demo;
mod helpers;
mod hostile_input;
mod instances;
mod layout;
mod openapi;
mod operations;
mod process;
mod read_api;
mod receiver;
mod scheduling;
mod sim_app;
mod simulator;
mod status_page;
mod sync;
mod webhook_crash;
mod webhook_subscription;
mod webhooks;
