//! Why a run's history could not be made durable. The executor stops a
//! drive on any of these; what happens next depends on which: a lost lease
//! means another worker has the run, an unavailable database is retried,
//! a conflict or anything else is reported. The [`Journal`] trait is where
//! a run's history goes: memory for a one-off run, the store for a server.

use std::future::Future;

use chrono::{DateTime, Utc};

use serde_json::Value;

use super::approval::{ApprovalRow, Decision};
use super::signal::{OpenSignalWait, SignalDelivery};
use super::state::Status;
use super::{ParentLink, Recorded, RunState, StepError};

/// A sub-workflow run to create for a parent's `workflow:` step.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildRun {
    pub id: String,
    pub workflow: String,
    /// `None`: the latest deployed version.
    pub version: Option<u32>,
    pub input: Value,
    pub parent: ParentLink,
}

/// How a sub-workflow run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildOutcome {
    pub status: Status,
    pub output: Option<Value>,
    pub error: Option<StepError>,
}

/// A failed write or read of a run's journal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    /// Another worker took the run over; this drive must stop writing.
    #[error("run {0} is no longer leased to this worker: another one took it over")]
    LeaseLost(String),
    /// The database could not be reached or could not write; nothing of
    /// the write was committed, so trying again later is safe.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The write contradicts what is stored (an id taken, a version
    /// deployed with other content).
    #[error("{0}")]
    Conflict(String),
    /// Anything else, with its message.
    #[error("{0}")]
    Other(String),
}

/// Where a run's events are made durable.
pub trait Journal: Send {
    /// Persists `events` (the newest ones) with the run's state; `wake_at` is
    /// when the run next needs a worker. Answers a pending cancel request's
    /// reason, if any.
    fn persist(
        &mut self,
        state: &RunState,
        events: &[Recorded],
        wake_at: Option<DateTime<Utc>>,
    ) -> impl Future<Output = Result<Option<String>, JournalError>> + Send;

    /// A pending cancel request's reason.
    fn cancel_requested(
        &mut self,
        run_id: &str,
    ) -> impl Future<Output = Result<Option<String>, JournalError>> + Send;

    /// Makes an approval the run's history opened decidable (idempotent),
    /// and answers the decisions made on it so far.
    fn approval_decisions(
        &mut self,
        approval: &ApprovalRow,
    ) -> impl Future<Output = Result<Vec<Decision>, JournalError>> + Send;

    /// Refuses further decisions on an approval.
    fn close_approval(
        &mut self,
        approval: &str,
    ) -> impl Future<Output = Result<(), JournalError>> + Send;

    /// Refuses further decisions on every approval of a finished run.
    fn close_run_approvals(
        &mut self,
        run_id: &str,
    ) -> impl Future<Output = Result<(), JournalError>> + Send;

    /// Creates a sub-workflow run (idempotent by its id). The inner error
    /// is why the step cannot start it (the workflow is not deployed, the
    /// input does not match): the step fails with it. A journal without a
    /// database (`steward run`) cannot keep a run of its own.
    fn start_child(
        &mut self,
        _child: &ChildRun,
    ) -> impl Future<Output = Result<Result<(), String>, JournalError>> + Send {
        async {
            Ok(Err(
                "a sub-workflow is a run of its own, kept in the database: run this workflow on `steward serve`"
                    .to_string(),
            ))
        }
    }

    /// The end of a sub-workflow run; `None` while it runs.
    fn child_outcome(
        &mut self,
        _run_id: &str,
    ) -> impl Future<Output = Result<Option<ChildOutcome>, JournalError>> + Send {
        async { Ok(None) }
    }

    /// Asks a sub-workflow run its parent no longer waits for to stop.
    fn cancel_child(
        &mut self,
        _run_id: &str,
        _reason: &str,
    ) -> impl Future<Output = Result<(), JournalError>> + Send {
        async { Ok(()) }
    }

    /// Tells a waiting parent run that its child finished.
    fn wake_parent(
        &mut self,
        _run_id: &str,
    ) -> impl Future<Output = Result<(), JournalError>> + Send {
        async { Ok(()) }
    }

    /// Makes an open `wait_for` known (idempotent), so keyed deliveries
    /// wake its run, and answers the deliveries it may take: the one its
    /// step took already, if any, and those not taken by this run. A
    /// journal that receives no signals (`steward run`) answers none.
    fn signal_candidates(
        &mut self,
        wait: &OpenSignalWait,
    ) -> impl Future<Output = Result<Vec<SignalDelivery>, JournalError>> + Send {
        let _ = wait;
        async { Ok(Vec::new()) }
    }

    /// Takes `delivery` for the wait's step, once per run: `true` when the
    /// step has it (taken now, or by this step before), `false` when
    /// another step of the run took it first.
    fn take_signal(
        &mut self,
        wait: &OpenSignalWait,
        delivery: &str,
    ) -> impl Future<Output = Result<bool, JournalError>> + Send {
        let _ = (wait, delivery);
        async { Ok(false) }
    }
}

/// Keeps nothing beyond the run's in-memory history: `steward run`.
pub struct MemoryJournal;

impl Journal for MemoryJournal {
    async fn persist(
        &mut self,
        _: &RunState,
        _: &[Recorded],
        _: Option<DateTime<Utc>>,
    ) -> Result<Option<String>, JournalError> {
        Ok(None)
    }

    async fn cancel_requested(&mut self, _: &str) -> Result<Option<String>, JournalError> {
        Ok(None)
    }

    async fn approval_decisions(&mut self, _: &ApprovalRow) -> Result<Vec<Decision>, JournalError> {
        Ok(Vec::new())
    }

    async fn close_approval(&mut self, _: &str) -> Result<(), JournalError> {
        Ok(())
    }

    async fn close_run_approvals(&mut self, _: &str) -> Result<(), JournalError> {
        Ok(())
    }
}
