//! Runs: the event history, the state folded from it, and the interpreter
//! that plans the next step.
//!
//! Architecture invariant: this module knows neither wasmtime, SQL nor
//! HTTP. It sees plugins by name and time as a value passed in.

pub mod approval;
pub mod event;
pub mod journal;
pub mod plan;
pub mod retry;
pub mod signal;
pub mod state;

pub use event::{Event, ParentLink, Recorded, StepError};
pub use journal::{ChildOutcome, ChildRun, Journal, JournalError, MemoryJournal};
pub use plan::{
    Action, Plan, PlanContext, approval_id, child_outcome_event, expression_scope, idempotency_key,
    outcome_event, plan,
};
pub use retry::{RetryError, RetryPlan, plan_retry};
pub use state::{RunState, Status, StepRecord, StepState};
