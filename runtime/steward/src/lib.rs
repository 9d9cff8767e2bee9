//! Steward: a workflow automation runtime for IT service management.
//!
//! This crate is the server and its command line: executor, worker,
//! scheduler, catalog, REST API and configuration. The workflow language
//! and run model live in `steward-core`, the plugin sandbox in
//! `steward-engine`, durable state in `steward-store`, the nested cargo
//! build of plugin crates in `steward-plugin-build`; they are re-exported
//! here under their old module names. See `ARCHITECTURE.md` at the
//! repository root for the map.

pub use steward_core::{calendar, report, run, workflow};
pub use steward_engine as engine;
pub use steward_plugin_build as plugin_build;
pub use steward_store as store;

pub mod api;
pub mod auth;
pub mod catalog;
pub mod config;
pub mod executor;
pub mod groups;
pub mod hooks;
pub mod metrics;
pub mod oidc;
pub mod plugins;
pub mod schedule;
pub mod store_kv;
pub mod worker;

/// The first-party plugins, compiled by `build.rs` and embedded.
pub mod first_party {
    include!(concat!(env!("OUT_DIR"), "/first_party.rs"));
}
