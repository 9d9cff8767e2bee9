//! The events that make up a run's history. A run's state is a fold over
//! them ([`super::state::RunState`]); the store only has to append and
//! replay them, so local and durable runs share one interpreter.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why a step or a run failed, as shown to users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepError {
    pub message: String,
    pub retryable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

impl StepError {
    pub fn fatal(message: impl Into<String>) -> StepError {
        StepError {
            message: message.into(),
            retryable: false,
            code: None,
        }
    }
}

/// The run and step that started a sub-workflow's run, and how deep it
/// nests (a top-level run's child is at depth 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentLink {
    pub run: String,
    pub step: String,
    pub depth: u32,
}

/// One entry in a run's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        input: Value,
        /// Set when a parent run's `workflow:` step started this run.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<ParentLink>,
    },
    /// An attempt began; if the process dies now, the attempt is re-run
    /// under the same idempotency key.
    StepStarted {
        step: String,
        attempt: u32,
        input: Value,
    },
    StepSucceeded {
        step: String,
        attempt: u32,
        output: Value,
    },
    /// `retry_at` is set when another attempt will follow.
    StepFailed {
        step: String,
        attempt: u32,
        error: StepError,
        retry_at: Option<DateTime<Utc>>,
    },
    StepSkipped {
        step: String,
    },
    TimerStarted {
        step: String,
        until: DateTime<Utc>,
    },
    TimerFired {
        step: String,
    },
    /// An approval (or, at `level` 1 and up, its escalation) opened:
    /// `eligible` may decide, `quorum` approvals finish the step.
    ApprovalRequested {
        step: String,
        approval: String,
        level: u32,
        approvers: Vec<String>,
        eligible: Vec<String>,
        quorum: u32,
        due: Option<DateTime<Utc>>,
        /// The step's `requester`, rendered when it opened: they may not
        /// approve (nor may the run's starter) unless `allow_self_approval`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requester: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        allow_self_approval: bool,
    },
    /// A person's decision, copied from the API's record into the history
    /// (the audit trail).
    ApprovalDecided {
        step: String,
        approval: String,
        by: String,
        decision: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
        decided_at: DateTime<Utc>,
        /// Who decided in `by`'s place, through a delegation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delegate: Option<String>,
        /// The admin who entered the decision on `by`'s behalf.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        entered_by: Option<String>,
    },
    /// The SLA clock started with the run: its priority and, when the SLA
    /// has a target for it, the resolution target in milliseconds.
    SlaStarted {
        priority: String,
        target_ms: Option<u64>,
        /// The response target, when the SLA sets one for this priority.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        response_target_ms: Option<u64>,
    },
    /// The SLA's resolution target passed; the run keeps going.
    SlaBreached,
    /// The response target passed with no response; the run keeps going.
    SlaResponseBreached,
    RunSucceeded {
        output: Value,
    },
    /// An approval was rejected (by a person, or by its timeout).
    RunRejected {
        step: String,
        reason: String,
    },
    RunFailed {
        error: StepError,
    },
    RunCancelled {
        reason: String,
    },
    /// A `for_each` step rendered its list: the elements it runs, kept so
    /// the loop never depends on re-evaluating its expression.
    LoopStarted {
        step: String,
        items: Vec<Value>,
    },
    /// Element `index` of loop `step` finished: its last step's output, or
    /// the error that ended it.
    ElementFinished {
        step: String,
        index: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<StepError>,
    },
    /// A `workflow:` step started attempt `attempt` as the run `child`; the
    /// step waits for it without holding a worker.
    ChildStarted {
        step: String,
        attempt: u32,
        child: String,
    },
    /// A failed, rejected or cancelled run was resumed (`POST
    /// /v1/runs/{id}/retry`): the one event that makes a finished run live
    /// again. `reset` lists the steps whose records it discards (they run
    /// again, under a new idempotency key generation); the others keep
    /// their outputs. `input` and `version` replace the run's when given.
    RunRetried {
        /// Who asked (the caller's subject).
        by: String,
        /// The step asked to resume from; `None` for the step that ended
        /// the run.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from_step: Option<String>,
        reset: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input: Option<Value>,
        /// The workflow version the run continues on, when upgraded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u32>,
        /// The client's `Idempotency-Key`: a repeated request finds this
        /// event instead of retrying again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
    },
    /// A `wait_for` step opened: it takes deliveries of `signal` addressed
    /// to the run, and keyed ones with `key` (rendered now) that arrived
    /// after the run was created, until `due`.
    SignalAwaited {
        step: String,
        signal: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        due: Option<DateTime<Utc>>,
    },
    /// The step took delivery `delivery`; its payload is the step's output.
    SignalReceived {
        step: String,
        signal: String,
        delivery: String,
        payload: Value,
    },
}

impl Event {
    /// The step the event is about, if any.
    pub fn step(&self) -> Option<&str> {
        match self {
            Event::StepStarted { step, .. }
            | Event::StepSucceeded { step, .. }
            | Event::StepFailed { step, .. }
            | Event::StepSkipped { step }
            | Event::TimerStarted { step, .. }
            | Event::TimerFired { step }
            | Event::ApprovalRequested { step, .. }
            | Event::ApprovalDecided { step, .. }
            | Event::RunRejected { step, .. }
            | Event::LoopStarted { step, .. }
            | Event::ElementFinished { step, .. }
            | Event::ChildStarted { step, .. }
            | Event::SignalAwaited { step, .. }
            | Event::SignalReceived { step, .. } => Some(step),
            _ => None,
        }
    }
}

impl Recorded {
    /// Stamps `event` as number `seq` at `at`, to the millisecond the
    /// store keeps, so a replayed history equals the one recorded.
    pub fn at(seq: u64, at: DateTime<Utc>, event: Event) -> Recorded {
        use chrono::SubsecRound;
        Recorded {
            seq,
            at: at.trunc_subsecs(3),
            event,
        }
    }
}

/// An event with its place and time in the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    pub seq: u64,
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub event: Event,
}
