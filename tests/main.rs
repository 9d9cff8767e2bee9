//! Every black-box test of Steward in one binary: each module starts the
//! real server (or the CLI) and speaks to it as a user would. One binary
//! links wasmtime, sqlx and axum once instead of once per file; shared
//! helpers are in `common`. Run one area with `cargo test --test black_box api_runs::`.

mod common;

mod api_auth;
mod api_hooks;
mod api_plugins;
mod api_runs;
mod api_workflows;
mod approvals;
mod cli_run;
mod durability;
mod faults;
mod for_each;
mod itsm_examples;
mod plugin_units;
mod rerun;
mod retries;
mod retry_from_step;
mod sandbox;
mod scale_out;
mod scheduler;
mod schedules;
mod signals;
mod sla;
mod store;
mod sub_workflows;
mod validation;
mod worker;
