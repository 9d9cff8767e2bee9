//! Steward: a workflow automation runtime for IT service management.
//!
//! See `ARCHITECTURE.md` at the repository root for the map of modules.

pub mod api;
pub mod auth;
pub mod calendar;
pub mod catalog;
pub mod config;
pub mod engine;
pub mod executor;
pub mod groups;
pub mod hooks;
pub mod itsm_sim;
pub mod metrics;
pub mod oidc;
pub mod plugin_build;
pub mod plugins;
pub mod report;
pub mod run;
pub mod schedule;
pub mod store;
pub mod worker;
pub mod workflow;
