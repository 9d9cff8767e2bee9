//! A run's state, folded from its events. Nothing here is stored on its
//! own: replaying the history always gives the same state.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::event::{Event, ParentLink, Recorded, StepError};
use crate::calendar::Calendar;

/// A run's status, as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Running,
    Waiting,
    Succeeded,
    Failed,
    Rejected,
    Cancelled,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Succeeded | Status::Failed | Status::Rejected | Status::Cancelled
        )
    }

    /// Every status, for validating filters.
    pub const ALL: [Status; 7] = [
        Status::Pending,
        Status::Running,
        Status::Waiting,
        Status::Succeeded,
        Status::Failed,
        Status::Rejected,
        Status::Cancelled,
    ];

    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Waiting => "waiting",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Rejected => "rejected",
            Status::Cancelled => "cancelled",
        }
    }
}

/// Where one step is.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StepState {
    Pending,
    /// An attempt is in flight.
    Running {
        attempt: u32,
    },
    /// Attempt `attempt` failed; the next one starts at `at`.
    Retrying {
        attempt: u32,
        at: DateTime<Utc>,
    },
    /// A durable timer.
    Waiting {
        until: DateTime<Utc>,
    },
    /// Waiting for people: see the record's `approval`.
    Awaiting {
        approval: String,
    },
    /// Waiting for the sub-workflow run `run`, started by attempt
    /// `attempt` at `since`.
    Child {
        run: String,
        attempt: u32,
        since: DateTime<Utc>,
    },
    Succeeded,
    Skipped,
    Failed,
    /// A `wait_for` step waits for a signal until `due` (forever without).
    AwaitingSignal {
        signal: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        due: Option<DateTime<Utc>>,
    },
}

/// Everything known about one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRecord {
    #[serde(flatten)]
    pub state: StepState,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<StepError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// A `for_each` step's progress over its elements.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elements: Option<ElementCounts>,
}

/// How far a loop has come, as the run's step record shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ElementCounts {
    pub total: usize,
    pub finished: usize,
    pub failed: usize,
    pub running: usize,
}

/// A `for_each` loop in progress: its elements, which have started and
/// what the finished ones gave. Elements start in order, so the next to
/// start is always `started`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoopState {
    pub items: Vec<Value>,
    /// Each element's last step output, or the error that ended it.
    pub results: Vec<Option<Result<Value, StepError>>>,
    /// Started and not finished.
    pub active: BTreeSet<usize>,
    pub started: usize,
    pub finished: usize,
    pub failed: usize,
}

impl LoopState {
    fn counts(&self) -> ElementCounts {
        ElementCounts {
            total: self.items.len(),
            finished: self.finished,
            failed: self.failed,
            running: self.active.len(),
        }
    }
}

/// Splits an element key (`LOOP/INDEX/STEP`) into the loop's key and the
/// element's index; `None` for a step outside loops.
pub fn split_element_key(key: &str) -> Option<(&str, usize)> {
    let mut parts = key.splitn(3, '/');
    let (owner, index, _) = (parts.next()?, parts.next()?, parts.next()?);
    Some((owner, index.parse().ok()?))
}

impl Default for StepRecord {
    fn default() -> Self {
        StepRecord {
            state: StepState::Pending,
            attempts: 0,
            output: None,
            error: None,
            approval: None,
            started_at: None,
            finished_at: None,
            elements: None,
        }
    }
}

/// The run's SLA clock as its history tells it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlaState {
    pub priority: String,
    pub target_ms: Option<u64>,
    pub breached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breached_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_target_ms: Option<u64>,
    pub response_breached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_breached_at: Option<DateTime<Utc>>,
}

/// The open (or last) approval of an approval step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApprovalState {
    pub id: String,
    pub level: u32,
    pub approvers: Vec<String>,
    pub eligible: Vec<String>,
    pub quorum: u32,
    pub due: Option<DateTime<Utc>>,
    pub decisions: Vec<DecisionRecord>,
    /// See [`Event::ApprovalRequested`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requester: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_self_approval: bool,
}

/// One decision in a run's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionRecord {
    pub by: String,
    pub decision: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delegate: Option<String>,
    /// The admin who entered it on `by`'s behalf.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entered_by: Option<String>,
}

/// A run, as its history says it is.
#[derive(Debug, Clone, Serialize)]
pub struct RunState {
    pub id: String,
    pub workflow: String,
    pub version: u32,
    pub status: Status,
    pub input: Value,
    pub output: Option<Value>,
    pub error: Option<StepError>,
    pub steps: BTreeMap<String, StepRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sla: Option<SlaState>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Records of the steps inside `for_each` elements still running, by
    /// [`crate::workflow::model::element_key`]; a finished element's are
    /// dropped (its result is in [`LoopState::results`], its steps in the
    /// history), so a 10,000-element loop keeps only what runs.
    #[serde(skip)]
    pub elements: BTreeMap<String, StepRecord>,
    /// The `for_each` loops that started, by step key.
    #[serde(skip)]
    pub loops: BTreeMap<String, LoopState>,
    /// The run whose `workflow:` step started this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentLink>,
    /// The sub-workflow runs this run started, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<String>,
    /// Per step reset by retries, its current generation (2 after the
    /// first reset, ...); steps never reset are generation 1 and absent.
    /// Idempotency keys and approval ids carry it, so a retried step is a
    /// new request to the outside world.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub generations: BTreeMap<String, u32>,
}

impl RunState {
    pub fn new(id: &str, workflow: &str, version: u32, started_at: DateTime<Utc>) -> RunState {
        RunState {
            id: id.to_string(),
            workflow: workflow.to_string(),
            version,
            status: Status::Pending,
            input: Value::Null,
            output: None,
            error: None,
            steps: BTreeMap::new(),
            sla: None,
            started_at,
            finished_at: None,
            elements: BTreeMap::new(),
            loops: BTreeMap::new(),
            parent: None,
            children: Vec::new(),
            generations: BTreeMap::new(),
        }
    }

    /// The generation of `step`: 1, plus one per retry that reset it. A
    /// step inside a loop's element has its loop's.
    pub fn generation(&self, step: &str) -> u32 {
        let owner = split_element_key(step).map_or(step, |(owner, _)| owner);
        self.generations.get(owner).copied().unwrap_or(1)
    }

    /// The record of `step` (a step id, or an element key), pending when
    /// nothing happened to it yet.
    pub fn step(&self, step: &str) -> StepRecord {
        let records = if step.contains('/') {
            &self.elements
        } else {
            &self.steps
        };
        records.get(step).cloned().unwrap_or_default()
    }

    /// The record an event about `key` changes; an element's first event
    /// marks the element started.
    fn record_mut(&mut self, key: &str) -> &mut StepRecord {
        if let Some((owner, index)) = split_element_key(key) {
            if let Some(each) = self.loops.get_mut(owner)
                && each.results.get(index).is_some_and(Option::is_none)
                && each.active.insert(index)
            {
                each.started = each.started.max(index + 1);
                let counts = each.counts();
                if let Some(r) = self.steps.get_mut(owner) {
                    r.elements = Some(counts);
                }
            }
            return self.elements.entry(key.to_string()).or_default();
        }
        self.steps.entry(key.to_string()).or_default()
    }

    /// Element `index` of loop `owner` finished: its result is kept, its
    /// step records dropped.
    fn finish_element(&mut self, owner: &str, index: usize, result: Result<Value, StepError>) {
        let Some(each) = self.loops.get_mut(owner) else {
            return;
        };
        let Some(slot) = each.results.get_mut(index).filter(|r| r.is_none()) else {
            return; // recorded already
        };
        each.failed += usize::from(result.is_err());
        *slot = Some(result);
        each.finished += 1;
        each.active.remove(&index);
        each.started = each.started.max(index + 1);
        let counts = each.counts();
        if let Some(r) = self.steps.get_mut(owner) {
            r.elements = Some(counts);
        }
        let prefix = format!("{owner}/{index}/");
        let done: Vec<String> = self
            .elements
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for key in done {
            self.elements.remove(&key);
        }
    }

    /// Folds one event into the state.
    pub fn apply(&mut self, recorded: &Recorded) {
        let at = recorded.at;
        if let Event::RunRetried {
            reset,
            input,
            version,
            ..
        } = &recorded.event
        {
            self.retry(reset, input.as_ref(), *version);
            return;
        }
        if self.status.is_terminal() {
            return; // late results of abandoned branches change nothing
        }
        match &recorded.event {
            Event::RunStarted { input, parent } => {
                self.input = input.clone();
                self.parent = parent.clone();
                self.status = Status::Running;
            }
            Event::StepStarted { step, attempt, .. } => {
                let r = self.record_mut(step);
                r.state = StepState::Running { attempt: *attempt };
                r.attempts = *attempt;
                r.started_at.get_or_insert(at);
            }
            Event::StepSucceeded { step, output, .. } => {
                let r = self.record_mut(step);
                r.state = StepState::Succeeded;
                r.output = Some(output.clone());
                r.error = None;
                r.started_at.get_or_insert(at);
                r.finished_at = Some(at);
            }
            Event::StepFailed {
                step,
                attempt,
                error,
                retry_at,
            } => {
                let r = self.record_mut(step);
                r.error = Some(error.clone());
                r.attempts = r.attempts.max(*attempt);
                match retry_at {
                    Some(next) => {
                        r.state = StepState::Retrying {
                            attempt: *attempt,
                            at: *next,
                        }
                    }
                    None => {
                        r.state = StepState::Failed;
                        r.finished_at = Some(at);
                    }
                }
            }
            Event::StepSkipped { step } => {
                let r = self.record_mut(step);
                r.state = StepState::Skipped;
                r.finished_at = Some(at);
            }
            Event::TimerStarted { step, until } => {
                let r = self.record_mut(step);
                r.state = StepState::Waiting { until: *until };
                r.started_at = Some(at);
            }
            Event::TimerFired { step } => {
                let r = self.record_mut(step);
                r.state = StepState::Succeeded;
                r.output = Some(Value::Null);
                r.finished_at = Some(at);
            }
            Event::RunSucceeded { output } => {
                self.output = Some(output.clone());
                self.finish(Status::Succeeded, at);
            }
            Event::RunFailed { error } => {
                self.error = Some(error.clone());
                self.finish(Status::Failed, at);
            }
            Event::ApprovalRequested {
                step,
                approval,
                level,
                approvers,
                eligible,
                quorum,
                due,
                requester,
                allow_self_approval,
            } => {
                let r = self.record_mut(step);
                r.state = StepState::Awaiting {
                    approval: approval.clone(),
                };
                r.started_at.get_or_insert(at);
                r.approval = Some(ApprovalState {
                    id: approval.clone(),
                    level: *level,
                    approvers: approvers.clone(),
                    eligible: eligible.clone(),
                    quorum: *quorum,
                    due: *due,
                    decisions: Vec::new(),
                    requester: requester.clone(),
                    allow_self_approval: *allow_self_approval,
                });
            }
            Event::ApprovalDecided {
                step,
                approval,
                by,
                decision,
                comment,
                decided_at,
                delegate,
                entered_by,
            } => {
                let r = self.record_mut(step);
                if let Some(a) = r.approval.as_mut().filter(|a| &a.id == approval)
                    && !a.decisions.iter().any(|d| &d.by == by)
                {
                    a.decisions.push(DecisionRecord {
                        by: by.clone(),
                        decision: decision.clone(),
                        comment: comment.clone(),
                        at: *decided_at,
                        delegate: delegate.clone(),
                        entered_by: entered_by.clone(),
                    });
                }
            }
            Event::RunRejected { step, reason } => {
                let error = StepError::fatal(reason.clone());
                let r = self.record_mut(step);
                r.state = StepState::Failed;
                r.error = Some(error.clone());
                r.finished_at = Some(at);
                self.error = Some(error);
                self.finish(Status::Rejected, at);
            }
            Event::SlaStarted {
                priority,
                target_ms,
                response_target_ms,
            } => {
                self.sla = Some(SlaState {
                    priority: priority.clone(),
                    target_ms: *target_ms,
                    breached: false,
                    breached_at: None,
                    response_target_ms: *response_target_ms,
                    response_breached: false,
                    response_breached_at: None,
                });
            }
            Event::SlaResponseBreached => {
                if let Some(sla) = self.sla.as_mut() {
                    sla.response_breached = true;
                    sla.response_breached_at = Some(at);
                }
            }
            Event::SlaBreached => {
                if let Some(sla) = self.sla.as_mut() {
                    sla.breached = true;
                    sla.breached_at = Some(at);
                }
            }
            Event::RunCancelled { reason } => {
                self.error = Some(StepError::fatal(reason.clone()));
                self.finish(Status::Cancelled, at);
            }
            Event::LoopStarted { step, items } => {
                let each = LoopState {
                    items: items.clone(),
                    results: vec![None; items.len()],
                    ..LoopState::default()
                };
                let counts = each.counts();
                self.loops.insert(step.clone(), each);
                let r = self.record_mut(step);
                r.state = StepState::Running { attempt: 1 };
                r.attempts = 1;
                r.started_at = Some(at);
                r.elements = Some(counts);
            }
            Event::ChildStarted {
                step,
                attempt,
                child,
            } => {
                let r = self.record_mut(step);
                r.state = StepState::Child {
                    run: child.clone(),
                    attempt: *attempt,
                    since: at,
                };
                r.attempts = *attempt;
                r.started_at.get_or_insert(at);
                self.children.push(child.clone());
            }
            Event::ElementFinished {
                step,
                index,
                output,
                error,
            } => {
                let result = match error {
                    Some(e) => Err(e.clone()),
                    None => Ok(output.clone().unwrap_or(Value::Null)),
                };
                self.finish_element(step, *index, result);
            }
            Event::SignalAwaited {
                step,
                signal,
                key,
                due,
            } => {
                let r = self.record_mut(step);
                r.state = StepState::AwaitingSignal {
                    signal: signal.clone(),
                    key: key.clone(),
                    due: *due,
                };
                r.attempts = r.attempts.max(1);
                r.started_at.get_or_insert(at);
            }
            Event::SignalReceived { step, payload, .. } => {
                let r = self.record_mut(step);
                r.state = StepState::Succeeded;
                r.output = Some(payload.clone());
                r.error = None;
                r.started_at.get_or_insert(at);
                r.finished_at = Some(at);
            }
            Event::RunRetried { .. } => {} // folded above
        }
        if !self.status.is_terminal() {
            self.status = self.live_status();
        }
    }

    /// A finished run made live again: the `reset` steps' records are
    /// discarded and their generation advances, the run's end is
    /// forgotten, `input` and `version` replace the run's when given. The
    /// SLA clock is left alone: it keeps running from the run's start.
    /// Only a finished run is retried; on a live one this changes nothing.
    fn retry(&mut self, reset: &[String], input: Option<&Value>, version: Option<u32>) {
        if !self.status.is_terminal() || self.status == Status::Succeeded {
            return;
        }
        for step in reset {
            self.steps.remove(step);
            // A loop starts over: its list and its elements' records go.
            if self.loops.remove(step).is_some() {
                let prefix = format!("{step}/");
                self.elements.retain(|key, _| !key.starts_with(&prefix));
            }
            let next = self.generation(step) + 1;
            self.generations.insert(step.clone(), next);
        }
        if let Some(input) = input {
            self.input = input.clone();
        }
        if let Some(version) = version {
            self.version = version;
        }
        self.output = None;
        self.error = None;
        self.finished_at = None;
        self.status = self.live_status();
    }

    fn finish(&mut self, status: Status, at: DateTime<Utc>) {
        self.status = status;
        self.finished_at = Some(at);
    }

    /// `waiting` when only timers hold the run, `running` otherwise.
    fn live_status(&self) -> Status {
        let mut waiting = false;
        for r in self.steps.values() {
            match r.state {
                StepState::Running { .. } | StepState::Retrying { .. } => return Status::Running,
                StepState::Waiting { .. }
                | StepState::Awaiting { .. }
                | StepState::Child { .. }
                | StepState::AwaitingSignal { .. } => waiting = true,
                _ => {}
            }
        }
        if waiting {
            Status::Waiting
        } else {
            Status::Running
        }
    }

    /// `{ "<id>": { "output": ... } }` for every step that succeeded: what
    /// `steps.<id>.output` reads in expressions.
    pub fn outputs(&self) -> Value {
        let map = self
            .steps
            .iter()
            .filter(|(_, r)| r.state == StepState::Succeeded)
            .map(|(id, r)| {
                (
                    id.clone(),
                    serde_json::json!({ "output": r.output.clone().unwrap_or(Value::Null) }),
                )
            })
            .collect();
        Value::Object(map)
    }
}

impl RunState {
    /// Time the SLA clock has been paused by `pause_while` (that step in
    /// progress) up to `now`, counted in `calendar`'s working time.
    pub fn sla_paused(
        &self,
        pause_while: Option<&str>,
        calendar: Option<&Calendar>,
        now: DateTime<Utc>,
    ) -> chrono::Duration {
        let Some(record) = pause_while.and_then(|step| self.steps.get(step)) else {
            return chrono::Duration::zero();
        };
        let Some(from) = record.started_at else {
            return chrono::Duration::zero();
        };
        let until = record.finished_at.unwrap_or(now).min(now);
        clock_time(calendar, from, until)
    }

    /// Whether `pause_while` holds the clock right now.
    pub fn sla_is_paused(&self, pause_while: Option<&str>) -> bool {
        pause_while
            .and_then(|step| self.steps.get(step))
            .is_some_and(|r| r.started_at.is_some() && r.finished_at.is_none())
    }

    /// When the run responded: the end of the `responded_when` step, or
    /// else its first approval decision; the run's end when neither came.
    pub fn sla_responded_at(&self, responded_when: Option<&str>) -> Option<DateTime<Utc>> {
        let responded = match responded_when {
            Some(step) => self.steps.get(step).and_then(|r| r.finished_at),
            None => self
                .steps
                .values()
                .filter_map(|r| r.approval.as_ref())
                .flat_map(|a| a.decisions.iter().map(|d| d.at))
                .min(),
        };
        responded.or(self.finished_at)
    }

    /// SLA time elapsed at `now` (the run's end once it finished): working
    /// time of `calendar` (all the time without one), pauses excluded.
    pub fn sla_elapsed(
        &self,
        pause_while: Option<&str>,
        calendar: Option<&Calendar>,
        now: DateTime<Utc>,
    ) -> chrono::Duration {
        let end = self.finished_at.unwrap_or(now);
        clock_time(calendar, self.started_at, end) - self.sla_paused(pause_while, calendar, end)
    }
}

/// Time between `from` and `to` on the SLA clock.
pub fn clock_time(
    calendar: Option<&Calendar>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> chrono::Duration {
    match calendar {
        Some(c) => c.elapsed(from, to),
        None => (to - from).max(chrono::Duration::zero()),
    }
}

/// The instant `amount` of SLA clock time after `from`.
pub fn clock_add(
    calendar: Option<&Calendar>,
    from: DateTime<Utc>,
    amount: chrono::Duration,
) -> Option<DateTime<Utc>> {
    match calendar {
        Some(c) => c.add(from, amount),
        None => from.checked_add_signed(amount),
    }
}
