//! The heart of Steward, without I/O: the workflow language (loading,
//! validation, expressions), runs (events, the state folded from them and
//! the planner that decides the next step), business-hours calendars,
//! the cron schedule model and SLA report definitions.
//!
//! Architecture invariant: no tokio, SQL, wasmtime or HTTP, and no clock
//! reads: time and group membership are passed in, so a plan is a function
//! of its inputs. `scripts/check-core-deps.sh` keeps the dependency list
//! honest.

pub mod calendar;
pub mod groups;
pub mod report;
pub mod run;
pub mod schedule;
pub mod workflow;
