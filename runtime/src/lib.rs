//! Steward: a workflow automation runtime for IT service management.
//!
//! See `ARCHITECTURE.md` at the repository root for the map of modules.

pub mod config;
pub mod engine;
pub mod plugin_build;
pub mod plugins;
pub mod workflow;
pub mod run;
pub mod executor;
