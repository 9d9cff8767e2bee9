//! The interpreter: from a workflow and a run's state, decide what happens
//! next. Pure: no clock of its own, no I/O. The executor records what the
//! plan says, calls plugins, and asks again.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::event::{Event, StepError};
use super::state::{RunState, StepRecord, StepState, clock_add};
use crate::groups::GroupSnapshot;
use crate::workflow::expr::Scope;
use crate::workflow::model::{
    FOR_EACH_INDEX, FOR_EACH_MAX_ITEMS, ForEach, MAX_WORKFLOW_DEPTH, OnError, OnTimeout, Quorum,
    RetryPolicy, SignalTimeout, SignalWait, Sla, StepKind, SubWorkflow, WaitFor, child_run_id,
};
use crate::workflow::{Step, Workflow};

/// Something the executor must do now.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Record the event (it needs no outside work).
    Record(Event),
    /// Create the sub-workflow run of a `workflow:` step (then record
    /// [`Event::ChildStarted`]).
    StartChild {
        step: String,
        attempt: u32,
        child: super::ChildRun,
    },
    /// Start attempt `attempt` of a plugin step.
    Call {
        step: String,
        attempt: u32,
        plugin: String,
        input: Value,
        timeout: Option<Duration>,
    },
}

/// What to do now, and when to look again if nothing finishes before.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub wake_at: Option<DateTime<Utc>>,
}

impl Plan {
    fn wake(&mut self, at: DateTime<Utc>) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }
}

/// The stable idempotency key of a step of a run: every attempt, and a
/// re-run after a crash, carries the same one. A step reset by a retry of
/// the run ([`Event::RunRetried`]) is a new request, so its `generation`
/// (see [`RunState::generation`]) is part of the key from the second on:
/// `RUN/STEP`, then `RUN/STEP#2`, `RUN/STEP#3`, ...
pub fn idempotency_key(run_id: &str, step: &str, generation: u32) -> String {
    if generation <= 1 {
        format!("{run_id}/{step}")
    } else {
        format!("{run_id}/{step}#{generation}")
    }
}

/// What the operator configured that plans depend on.
#[derive(Debug, Clone)]
pub struct PlanContext {
    /// `env.*` in expressions.
    pub env: Value,
    /// Business-hours calendars SLA clocks may run on.
    pub calendars: BTreeMap<String, crate::calendar::Calendar>,
    /// The retry policy of steps that set no `retry:` (`[defaults] retry`).
    pub default_retry: RetryPolicy,
    /// The most elements a `for_each` may loop over
    /// (`[defaults] for_each_max_items`).
    pub for_each_max_items: usize,
    /// How deep sub-workflows may nest (`[defaults] max_workflow_depth`).
    pub max_workflow_depth: u32,
}

impl Default for PlanContext {
    fn default() -> Self {
        PlanContext {
            env: Value::Null,
            calendars: BTreeMap::new(),
            default_retry: RetryPolicy::UNSET_DEFAULT,
            for_each_max_items: FOR_EACH_MAX_ITEMS,
            max_workflow_depth: MAX_WORKFLOW_DEPTH,
        }
    }
}

/// The id of the approval a step opens at `level` (0, then escalations):
/// `RUN.STEP.LEVEL`, and `RUN.STEP~G.LEVEL` for the step's generation `G`
/// from the second on (a retried approval step opens a new approval, never
/// the closed one of an earlier generation). `~` is in no step id and
/// needs no escaping in a URL.
pub fn approval_id(run_id: &str, step: &str, level: u32, generation: u32) -> String {
    if generation <= 1 {
        format!("{run_id}.{step}.{level}")
    } else {
        format!("{run_id}.{step}~{generation}.{level}")
    }
}

/// Decides the next actions for `state`.
pub fn plan(
    workflow: &Workflow,
    state: &RunState,
    context: &PlanContext,
    groups: &GroupSnapshot,
    now: DateTime<Utc>,
) -> Plan {
    let env = &context.env;
    let mut plan = Plan::default();
    if state.status.is_terminal() {
        return plan;
    }
    let scope = expression_scope(state, env);
    let mut planner = Planner {
        state,
        scope: &scope,
        groups,
        calendars: &context.calendars,
        max_items: context.for_each_max_items,
        max_depth: context.max_workflow_depth,
        now,
        plan: &mut plan,
        prefix: String::new(),
    };
    if let Some(sla) = &workflow.sla
        && state.sla.is_none()
    {
        planner.start_sla(sla);
    }
    let progress = planner.sequence(&workflow.steps);
    if let (Progress::Blocked, Some(sla)) = (&progress, &workflow.sla) {
        planner.sla(sla);
    }
    match progress {
        Progress::Done => {
            let output = match &workflow.output {
                Some(template) => template.render(&scope),
                None => Ok((*scope.steps).clone()),
            };
            plan.actions.push(Action::Record(match output {
                Ok(output) => Event::RunSucceeded { output },
                Err(e) => Event::RunFailed {
                    error: StepError::fatal(format!("output: {e}")),
                },
            }));
        }
        Progress::Failed(error) => plan
            .actions
            .push(Action::Record(Event::RunFailed { error })),
        Progress::Blocked => {}
    }
    plan
}

/// What expressions of `state`'s run see: its input, the outputs of the
/// steps that succeeded, the run's fields and the operator's `env`.
pub fn expression_scope(state: &RunState, env: &Value) -> Scope {
    Scope::new(
        state.input.clone(),
        state.outputs(),
        serde_json::json!({
            "id": state.id,
            "workflow": state.workflow,
            "version": state.version,
            "started_at": state.started_at.to_rfc3339(),
        }),
        env.clone(),
    )
}

/// What a call's result means for the step recorded under `key` (its id,
/// or its element key inside a loop): success, a retry later, or failure.
pub fn outcome_event(
    context: &PlanContext,
    run_id: &str,
    key: &str,
    step: &Step,
    attempt: u32,
    result: Result<Value, StepError>,
    now: DateTime<Utc>,
) -> Event {
    let retry = step.retry_policy(&context.default_retry);
    match result {
        Ok(output) => Event::StepSucceeded {
            step: key.to_string(),
            attempt,
            output,
        },
        Err(error) => failure_event(retry, run_id, key, attempt, error, now),
    }
}

/// A failed attempt, with the time of the next one when `retry` allows
/// another (retryable errors only).
fn failure_event(
    retry: &RetryPolicy,
    run_id: &str,
    key: &str,
    attempt: u32,
    error: StepError,
    now: DateTime<Utc>,
) -> Event {
    // A delay past the calendar's end means: no further attempt.
    let retry_at = (error.retryable && attempt < retry.max_attempts)
        .then(|| {
            let seed = jitter_seed(run_id, key, attempt);
            chrono::Duration::from_std(retry.delay_with_jitter(attempt, seed))
                .ok()
                .and_then(|d| now.checked_add_signed(d))
        })
        .flatten();
    Event::StepFailed {
        step: key.to_string(),
        attempt,
        error,
        retry_at,
    }
}

/// What a sub-workflow's end means for its step: its output, or a failure
/// retried only by the step's own `retry:` (a new child run per attempt;
/// the operator's default policy is for network errors, not for whole
/// workflows).
pub fn child_outcome_event(
    run_id: &str,
    key: &str,
    step: &Step,
    attempt: u32,
    child: &str,
    outcome: super::ChildOutcome,
    now: DateTime<Utc>,
) -> Event {
    if outcome.status == super::Status::Succeeded {
        return Event::StepSucceeded {
            step: key.to_string(),
            attempt,
            output: outcome.output.unwrap_or(Value::Null),
        };
    }
    let why = outcome
        .error
        .map(|e| e.message)
        .unwrap_or_else(|| outcome.status.as_str().to_string());
    let error = StepError {
        message: format!(
            "sub-workflow run {child} {}: {why}",
            outcome.status.as_str()
        ),
        retryable: true,
        code: None,
    };
    let retry = step.retry.unwrap_or_default();
    failure_event(&retry, run_id, key, attempt, error, now)
}

/// A number that differs between runs, steps and attempts, for the
/// retry delay's jitter: FNV-1a over the three, then SplitMix64's finalizer
/// to spread it. The delay chosen is recorded in the history (`retry_at`),
/// so replaying it never draws again.
fn jitter_seed(run_id: &str, step: &str, attempt: u32) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = run_id
        .bytes()
        .chain([0])
        .chain(step.bytes())
        .chain([0])
        .chain(attempt.to_le_bytes());
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

enum Progress {
    Done,
    Blocked,
    Failed(StepError),
}

struct Planner<'a> {
    state: &'a RunState,
    scope: &'a Scope,
    groups: &'a GroupSnapshot,
    calendars: &'a BTreeMap<String, crate::calendar::Calendar>,
    max_items: usize,
    max_depth: u32,
    now: DateTime<Utc>,
    plan: &'a mut Plan,
    /// Prepended to step ids to key their records: empty at the top,
    /// `LOOP/INDEX/` inside a loop's element.
    prefix: String,
}

impl Planner<'_> {
    /// Steps run one after another: the first unfinished one decides.
    fn sequence(&mut self, steps: &[Step]) -> Progress {
        for step in steps {
            match self.step(step) {
                Progress::Done => continue,
                other => return other,
            }
        }
        Progress::Done
    }

    /// Where `step`'s record is kept here: its id, or inside an element its
    /// element key.
    fn key(&self, step: &Step) -> String {
        format!("{}{}", self.prefix, step.id)
    }

    fn step(&mut self, step: &Step) -> Progress {
        let record = self.state.step(&self.key(step));
        match record.state {
            StepState::Succeeded | StepState::Skipped => Progress::Done,
            StepState::Failed => {
                let error = record.error.unwrap_or_else(|| StepError::fatal("failed"));
                Progress::Failed(StepError {
                    message: format!("step {} failed: {}", step.id, error.message),
                    ..error
                })
            }
            StepState::Running { .. } => match &step.kind {
                StepKind::ForEach(each) => self.for_each(step, each),
                _ => Progress::Blocked,
            },
            StepState::Retrying { attempt, at } => {
                if self.now >= at {
                    self.start(step, attempt + 1);
                } else {
                    self.plan.wake(at);
                }
                Progress::Blocked
            }
            StepState::Waiting { until } => {
                if self.now >= until {
                    self.record(Event::TimerFired {
                        step: self.key(step),
                    });
                } else {
                    self.plan.wake(until);
                }
                Progress::Blocked
            }
            StepState::Awaiting { .. } => self.awaiting(step, &record),
            StepState::Child {
                run,
                attempt,
                since,
            } => self.child_waits(step, &run, attempt, since),
            StepState::AwaitingSignal { due, .. } => self.awaiting_signal(step, due),
            StepState::Pending => self.pending(step),
        }
    }

    /// The clock starts with the run; its target comes from the priority.
    fn start_sla(&mut self, sla: &Sla) {
        let priority = match sla.priority.render(self.scope) {
            Ok(Value::String(p)) => p.trim().to_uppercase(),
            Ok(other) => other.to_string(),
            Err(e) => format!("(priority failed: {e})"),
        };
        let target_ms = sla.resolution.get(&priority).map(|d| d.as_millis() as u64);
        let response_target_ms = sla.response.get(&priority).map(|d| d.as_millis() as u64);
        self.record(Event::SlaStarted {
            priority,
            target_ms,
            response_target_ms,
        });
    }

    /// Escalations fire once each when the elapsed share of the target
    /// reaches theirs; at 100% the run is marked breached. The response
    /// target, when set, is breached when it passes with no response.
    fn sla(&mut self, sla: &Sla) {
        let Some(clock) = &self.state.sla else {
            return;
        };
        let pause = sla.pause_while.as_deref();
        // A calendar the configuration lacks was reported at start; the
        // clock then runs around the clock rather than never.
        let calendar = sla.calendar.as_ref().and_then(|c| self.calendars.get(c));
        let elapsed = self.state.sla_elapsed(pause, calendar, self.now);
        let running = !self.state.sla_is_paused(pause);
        let mut thresholds = Vec::new();
        if let Some(response_ms) = clock.response_target_ms
            && !clock.response_breached
            && self
                .state
                .sla_responded_at(sla.responded_when.as_deref())
                .is_none()
        {
            let target = chrono::Duration::milliseconds(response_ms as i64);
            if elapsed >= target {
                self.record(Event::SlaResponseBreached);
            } else {
                thresholds.push(target);
            }
        }
        if let Some(target_ms) = clock.target_ms {
            let share_at = |percent: f64| {
                chrono::Duration::milliseconds((target_ms as f64 * percent / 100.0) as i64)
            };
            for escalation in &sla.escalations {
                if self.state.steps.contains_key(&escalation.step.id) {
                    continue; // fired already: once each
                }
                let threshold = share_at(escalation.at_percent);
                if elapsed >= threshold {
                    self.start(&escalation.step, 1);
                } else {
                    thresholds.push(threshold);
                }
            }
            if !clock.breached {
                let target = share_at(100.0);
                if elapsed >= target {
                    self.record(Event::SlaBreached);
                } else {
                    thresholds.push(target);
                }
            }
        }
        if running
            && let Some(next) = thresholds.into_iter().min()
            && let Some(at) = clock_add(calendar, self.now, next - elapsed)
        {
            self.plan.wake(at);
        }
    }

    /// An open approval: one rejection rejects the run, `quorum`
    /// approvals finish the step, the timeout applies `on_timeout`.
    fn awaiting(&mut self, step: &Step, record: &StepRecord) -> Progress {
        let (StepKind::Approval(spec), Some(open)) = (&step.kind, &record.approval) else {
            return self.fail(step, "approval: the run's history lost its approval".into());
        };
        if let Some(no) = open.decisions.iter().find(|d| d.decision == "reject") {
            let comment = no
                .comment
                .as_deref()
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            self.record(Event::RunRejected {
                step: step.id.clone(),
                reason: format!("{} rejected step {}{comment}", no.by, step.id),
            });
            return Progress::Blocked;
        }
        let approved: Vec<&str> = open
            .decisions
            .iter()
            .filter(|d| d.decision == "approve")
            .map(|d| d.by.as_str())
            .collect();
        if approved.len() as u32 >= open.quorum {
            self.record(Event::StepSucceeded {
                step: step.id.clone(),
                attempt: 1,
                output: serde_json::json!({
                    "decision": "approved",
                    "approved_by": approved,
                    "level": open.level,
                }),
            });
            return Progress::Blocked;
        }
        let Some(due) = open.due else {
            return Progress::Blocked;
        };
        if self.now < due {
            self.plan.wake(due);
            return Progress::Blocked;
        }
        // Timed out: the rule of this level applies.
        let mut rule = &spec.on_timeout;
        for _ in 0..open.level {
            match rule {
                OnTimeout::Escalate { then, .. } => rule = then,
                _ => break,
            }
        }
        match rule {
            OnTimeout::Reject => {
                self.record(Event::RunRejected {
                    step: step.id.clone(),
                    reason: format!(
                        "no decision on step {} within its timeout ({} of {} approvals)",
                        step.id,
                        approved.len(),
                        open.quorum
                    ),
                });
                Progress::Blocked
            }
            OnTimeout::Approve => {
                self.record(Event::StepSucceeded {
                    step: step.id.clone(),
                    attempt: 1,
                    output: serde_json::json!({
                        "decision": "approved",
                        "approved_by": approved,
                        "level": open.level,
                        "timed_out": true,
                    }),
                });
                Progress::Blocked
            }
            OnTimeout::Escalate {
                to,
                quorum,
                timeout,
                ..
            } => self.request_approval(step, open.level + 1, to, *quorum, *timeout),
        }
    }

    /// Opens the approval of `step` at `level` for `approvers`.
    fn request_approval(
        &mut self,
        step: &Step,
        level: u32,
        approvers: &[crate::workflow::expr::Template],
        quorum: Quorum,
        timeout: Option<Duration>,
    ) -> Progress {
        let mut listed = Vec::new();
        for template in approvers {
            match template.render(self.scope) {
                Ok(Value::String(name)) if !name.trim().is_empty() => {
                    listed.push(name.trim().to_string())
                }
                Ok(Value::Array(names)) => {
                    for name in names {
                        match name {
                            Value::String(n) if !n.trim().is_empty() => {
                                listed.push(n.trim().to_string())
                            }
                            other => {
                                return self.fail(
                                    step,
                                    format!("approval.approvers: expected names, got {other}"),
                                );
                            }
                        }
                    }
                }
                Ok(other) => {
                    return self.fail(
                        step,
                        format!("approval.approvers: expected a name, got {other}"),
                    );
                }
                Err(e) => return self.fail(step, format!("approval.approvers: {e}")),
            }
        }
        let mut eligible: Vec<String> = Vec::new();
        for name in &listed {
            let members = match name.strip_prefix("group:") {
                Some(group) => match self.groups.members(group) {
                    Some(members) => members,
                    None => {
                        return self.fail(
                            step,
                            format!("approval.approvers: group {group} is not defined: add it under [groups] in steward.toml or with PUT /v1/groups/{group}"),
                        );
                    }
                },
                None => vec![name.clone()],
            };
            for member in members {
                if !eligible.contains(&member) {
                    eligible.push(member);
                }
            }
        }
        // A group the identity provider fills has members nobody can list
        // in advance: whoever's JWT says so may decide.
        let from_identity_provider = listed.iter().any(|name| {
            name.strip_prefix("group:")
                .is_some_and(|group| self.groups.from_identity_provider(group))
        });
        if eligible.is_empty() && !from_identity_provider {
            return self.fail(
                step,
                "approval.approvers: nobody may decide (the list is empty)".into(),
            );
        }
        let due = match timeout.map(chrono::Duration::from_std) {
            None => None,
            Some(Ok(d)) => self.now.checked_add_signed(d),
            Some(Err(e)) => return self.fail(step, format!("approval.timeout: {e}")),
        };
        let (requester, allow_self_approval) = match &step.kind {
            StepKind::Approval(spec) => {
                let requester = match spec.requester.as_ref().map(|t| t.render(self.scope)) {
                    None | Some(Ok(Value::Null)) => None,
                    Some(Ok(Value::String(name))) if !name.trim().is_empty() => {
                        Some(name.trim().to_string())
                    }
                    Some(Ok(other)) => {
                        return self.fail(
                            step,
                            format!("approval.requester: expected a name, got {other}"),
                        );
                    }
                    Some(Err(e)) => return self.fail(step, format!("approval.requester: {e}")),
                };
                (requester, spec.allow_self_approval)
            }
            _ => (None, false),
        };
        self.record(Event::ApprovalRequested {
            step: step.id.clone(),
            approval: approval_id(
                &self.state.id,
                &step.id,
                level,
                self.state.generation(&step.id),
            ),
            level,
            approvers: listed,
            quorum: if from_identity_provider {
                quorum.required_open(eligible.len())
            } else {
                quorum.required(eligible.len())
            },
            eligible,
            due,
            requester,
            allow_self_approval,
        });
        Progress::Blocked
    }

    fn pending(&mut self, step: &Step) -> Progress {
        if let Some(when) = &step.when {
            match when.render(self.scope) {
                Ok(Value::Bool(true)) => {}
                Ok(Value::Bool(false)) | Ok(Value::Null) => {
                    self.record(Event::StepSkipped {
                        step: self.key(step),
                    });
                    return Progress::Blocked;
                }
                Ok(other) => {
                    return self.fail(step, format!("when: expected true or false, got {other}"));
                }
                Err(e) => return self.fail(step, format!("when: {e}")),
            }
        }
        match &step.kind {
            StepKind::Plugin { .. } => {
                self.start(step, 1);
                Progress::Blocked
            }
            StepKind::Wait(wait) => match self.deadline(wait) {
                Ok(until) => {
                    self.record(Event::TimerStarted {
                        step: self.key(step),
                        until,
                    });
                    Progress::Blocked
                }
                Err(e) => self.fail(step, format!("wait: {e}")),
            },
            StepKind::Parallel(branches) => self.parallel(step, branches),
            StepKind::Approval(spec) => {
                self.request_approval(step, 0, &spec.approvers, spec.quorum, spec.timeout)
            }
            StepKind::ForEach(each) => self.for_each(step, each),
            StepKind::Workflow(_) => {
                self.start(step, 1);
                Progress::Blocked
            }
            StepKind::Signal(wait) => self.await_signal(step, wait),
        }
    }

    /// Opens a `wait_for`: its key is rendered now, its deadline counts
    /// from now. The executor takes signals for it before every plan.
    fn await_signal(&mut self, step: &Step, wait: &SignalWait) -> Progress {
        let key = match wait.key.as_ref().map(|k| k.render(self.scope)) {
            None => None,
            Some(Ok(value)) => match super::signal::key_text(&value) {
                Some(key) => Some(key),
                None => {
                    return self.fail(
                        step,
                        format!("wait_for.key: expected a string or a number, got {value}"),
                    );
                }
            },
            Some(Err(e)) => return self.fail(step, format!("wait_for.key: {e}")),
        };
        let due = match wait.timeout.map(chrono::Duration::from_std) {
            None => None,
            Some(Ok(d)) => match self.now.checked_add_signed(d) {
                Some(due) => Some(due),
                None => {
                    return self.fail(step, "wait_for.timeout: ends too far in the future".into());
                }
            },
            Some(Err(e)) => return self.fail(step, format!("wait_for.timeout: {e}")),
        };
        self.record(Event::SignalAwaited {
            step: step.id.clone(),
            signal: wait.signal.clone(),
            key,
            due,
        });
        Progress::Blocked
    }

    /// An open `wait_for` whose signal has not come (the executor records
    /// it when it does): at the deadline, `on_timeout` applies.
    fn awaiting_signal(&mut self, step: &Step, due: Option<DateTime<Utc>>) -> Progress {
        let Some(due) = due else {
            return Progress::Blocked;
        };
        if self.now < due {
            self.plan.wake(due);
            return Progress::Blocked;
        }
        let StepKind::Signal(wait) = &step.kind else {
            return self.fail(
                step,
                "wait_for: the step is no longer a wait_for step".into(),
            );
        };
        match wait.on_timeout {
            SignalTimeout::Continue => {
                self.record(Event::StepSucceeded {
                    step: step.id.clone(),
                    attempt: 1,
                    output: Value::Null,
                });
                Progress::Blocked
            }
            SignalTimeout::Fail => {
                let within = wait
                    .timeout
                    .map(|t| format!(" within {}", humantime::format_duration(t)))
                    .unwrap_or_default();
                self.fail(
                    step,
                    format!(
                        "wait_for: no {} signal arrived{within} (on_timeout: fail)",
                        wait.signal
                    ),
                )
            }
        }
    }

    /// A step waiting for its sub-workflow: its end is copied in by the
    /// executor; here only its `timeout` can end the wait.
    fn child_waits(
        &mut self,
        step: &Step,
        child: &str,
        attempt: u32,
        since: DateTime<Utc>,
    ) -> Progress {
        let Some(timeout) = step.timeout else {
            return Progress::Blocked;
        };
        let Some(due) = chrono::Duration::from_std(timeout)
            .ok()
            .and_then(|t| since.checked_add_signed(t))
        else {
            return Progress::Blocked;
        };
        if self.now < due {
            self.plan.wake(due);
            return Progress::Blocked;
        }
        let error = StepError {
            message: format!(
                "sub-workflow run {child} did not finish within the step's timeout ({})",
                humantime::format_duration(timeout)
            ),
            retryable: true,
            code: Some("timeout".into()),
        };
        let retry = step.retry.unwrap_or_default();
        let key = self.key(step);
        self.record(failure_event(
            &retry,
            &self.state.id,
            &key,
            attempt,
            error,
            self.now,
        ));
        Progress::Blocked
    }

    /// Every branch advances on its own; the group finishes when all have,
    /// and fails as soon as one branch fails.
    fn parallel(&mut self, group: &Step, branches: &[Step]) -> Progress {
        // A failed branch fails the group before any sibling starts again.
        if let Some(failed) = branches
            .iter()
            .find(|b| self.state.step(&self.key(b)).state == StepState::Failed)
            && let Progress::Failed(error) = self.step(failed)
        {
            self.record(Event::StepFailed {
                step: self.key(group),
                attempt: 1,
                error,
                retry_at: None,
            });
            return Progress::Blocked;
        }
        let mut all_done = true;
        let mut outputs = Map::new();
        for branch in branches {
            match self.step(branch) {
                Progress::Done => {
                    let record = self.state.step(&self.key(branch));
                    if record.state == StepState::Succeeded {
                        outputs.insert(branch.id.clone(), record.output.unwrap_or(Value::Null));
                    }
                }
                Progress::Blocked => all_done = false,
                Progress::Failed(error) => {
                    self.record(Event::StepFailed {
                        step: self.key(group),
                        attempt: 1,
                        error: error.clone(),
                        retry_at: None,
                    });
                    return Progress::Blocked;
                }
            }
        }
        if all_done {
            self.record(Event::StepSucceeded {
                step: self.key(group),
                attempt: 1,
                output: Value::Object(outputs),
            });
        }
        Progress::Blocked
    }

    /// A loop: renders its list once, then keeps up to `concurrency`
    /// elements going, starting them in order; finishes when every element
    /// has (or, with `fail_fast`, at the first that failed).
    fn for_each(&mut self, step: &Step, each: &ForEach) -> Progress {
        let key = self.key(step);
        let state = self.state;
        let Some(progress) = state.loops.get(&key) else {
            return self.start_loop(step, each, key);
        };
        if each.on_error == OnError::FailFast && progress.failed > 0 {
            let (index, error) = progress
                .results
                .iter()
                .enumerate()
                .find_map(|(i, r)| Some((i, r.as_ref()?.as_ref().err()?)))
                .expect("a failed element has its error");
            self.record(Event::StepFailed {
                step: key,
                attempt: 1,
                error: StepError {
                    message: format!("element {index}: {}", error.message),
                    ..error.clone()
                },
                retry_at: None,
            });
            return Progress::Blocked;
        }
        if progress.finished == progress.items.len() {
            let output = progress
                .results
                .iter()
                .map(|r| match r {
                    Some(Ok(output)) => output.clone(),
                    Some(Err(error)) => serde_json::json!({ "error": error }),
                    None => Value::Null,
                })
                .collect();
            self.record(Event::StepSucceeded {
                step: key,
                attempt: 1,
                output: Value::Array(output),
            });
            return Progress::Blocked;
        }
        for &index in &progress.active {
            self.element(each, &key, index, &progress.items[index]);
        }
        let room = (each.concurrency as usize).saturating_sub(progress.active.len());
        for index in (progress.started..progress.items.len()).take(room) {
            self.element(each, &key, index, &progress.items[index]);
        }
        Progress::Blocked
    }

    /// Renders the loop's list and records it, or fails the step when it is
    /// not a list or longer than allowed.
    fn start_loop(&mut self, step: &Step, each: &ForEach, key: String) -> Progress {
        let items = match each.items.render(self.scope) {
            Ok(Value::Array(items)) => items,
            Ok(other) => {
                let kind = match other {
                    Value::Null => "null",
                    Value::Bool(_) => "a boolean",
                    Value::Number(_) => "a number",
                    Value::String(_) => "a string",
                    Value::Object(_) => "an object",
                    Value::Array(_) => "a list",
                };
                return self.fail(step, format!("for_each: expected a list, got {kind}"));
            }
            Err(e) => return self.fail(step, format!("for_each: {e}")),
        };
        if items.len() > self.max_items {
            return self.fail(
                step,
                format!(
                    "for_each: {} elements, more than the limit of {}: split the list, \
                     or raise [defaults] for_each_max_items in steward.toml",
                    items.len(),
                    self.max_items
                ),
            );
        }
        self.record(Event::LoopStarted { step: key, items });
        Progress::Blocked
    }

    /// Advances element `index` of the loop keyed `key`: its steps run in
    /// order with the element and its index in scope, keyed
    /// `KEY/INDEX/STEP`; when they are done the element's result is
    /// recorded.
    fn element(&mut self, each: &ForEach, key: &str, index: usize, item: &Value) {
        let prefix = format!("{key}/{index}/");
        let mut done = serde_json::Map::new();
        collect_outputs(self.state, &prefix, &each.steps, &mut done);
        let steps = if done.is_empty() {
            self.scope.steps.clone()
        } else {
            let mut merged = self.scope.steps.as_object().cloned().unwrap_or_default();
            merged.extend(done);
            std::sync::Arc::new(Value::Object(merged))
        };
        let mut locals = self.scope.locals.clone();
        locals.push((each.var.clone(), item.clone()));
        locals.push((FOR_EACH_INDEX.to_string(), Value::from(index)));
        let scope = Scope {
            steps,
            locals,
            ..self.scope.clone()
        };
        let mut inner = Planner {
            state: self.state,
            scope: &scope,
            groups: self.groups,
            calendars: self.calendars,
            max_items: self.max_items,
            max_depth: self.max_depth,
            now: self.now,
            plan: &mut *self.plan,
            prefix,
        };
        let finished = match inner.sequence(&each.steps) {
            Progress::Blocked => return,
            Progress::Done => {
                let last = each.steps.last().map(|s| inner.key(s));
                let output = last
                    .map(|k| self.state.step(&k))
                    .filter(|r| r.state == StepState::Succeeded)
                    .and_then(|r| r.output);
                Event::ElementFinished {
                    step: key.to_string(),
                    index,
                    output: Some(output.unwrap_or(Value::Null)),
                    error: None,
                }
            }
            Progress::Failed(error) => Event::ElementFinished {
                step: key.to_string(),
                index,
                output: None,
                error: Some(error),
            },
        };
        self.record(finished);
    }

    fn start(&mut self, step: &Step, attempt: u32) {
        if let StepKind::Workflow(child) = &step.kind {
            self.start_child(step, child, attempt);
            return;
        }
        let StepKind::Plugin { uses, with } = &step.kind else {
            return;
        };
        match with.render(self.scope) {
            Ok(input) => self.plan.actions.push(Action::Call {
                step: self.key(step),
                attempt,
                plugin: uses.clone(),
                input,
                timeout: step.timeout,
            }),
            Err(e) => {
                self.fail(step, format!("with: {e}"));
            }
        }
    }

    /// Asks for the sub-workflow run of attempt `attempt`, one level deeper
    /// than this run, unless that is deeper than allowed.
    fn start_child(&mut self, step: &Step, child: &SubWorkflow, attempt: u32) {
        let depth = self.state.parent.as_ref().map_or(0, |p| p.depth) + 1;
        if depth > self.max_depth {
            self.fail(
                step,
                format!(
                    "workflow: sub-workflows nest {depth} deep here, more than the limit of {}: \
                     a chain of workflows calling workflows must end (or raise \
                     [defaults] max_workflow_depth in steward.toml)",
                    self.max_depth
                ),
            );
            return;
        }
        let input = match child.with.render(self.scope) {
            Ok(input) => input,
            Err(e) => {
                self.fail(step, format!("with: {e}"));
                return;
            }
        };
        let key = self.key(step);
        self.plan.actions.push(Action::StartChild {
            step: key.clone(),
            attempt,
            child: super::ChildRun {
                id: child_run_id(&self.state.id, &key, self.state.generation(&key), attempt),
                workflow: child.name.clone(),
                version: child.version,
                input,
                parent: super::ParentLink {
                    run: self.state.id.clone(),
                    step: key,
                    depth,
                },
            },
        });
    }

    fn deadline(&self, wait: &WaitFor) -> Result<DateTime<Utc>, String> {
        match wait {
            WaitFor::Duration(d) => {
                let d = chrono::Duration::from_std(*d).map_err(|e| e.to_string())?;
                self.now
                    .checked_add_signed(d)
                    .ok_or_else(|| "the wait ends too far in the future".to_string())
            }
            WaitFor::Until(template) => match template.render(self.scope)? {
                // An expression may give a duration (`90d`) as well as a time.
                Value::String(text) => match humantime::parse_duration(&text) {
                    Ok(d) => self.deadline(&WaitFor::Duration(d)),
                    Err(_) => DateTime::parse_from_rfc3339(&text)
                        .map(|t| t.with_timezone(&Utc))
                        .map_err(|e| {
                            format!(
                                "{text:?} is neither a duration (10m, 90d) nor an RFC 3339 time: {e}"
                            )
                        }),
                },
                other => Err(format!(
                    "expected a duration or an RFC 3339 time, got {other}"
                )),
            },
        }
    }

    fn record(&mut self, event: Event) {
        self.plan.actions.push(Action::Record(event));
    }

    fn fail(&mut self, step: &Step, message: String) -> Progress {
        self.record(Event::StepFailed {
            step: self.key(step),
            attempt: 1,
            error: StepError::fatal(format!("steps.{}.{message}", step.id)),
            retry_at: None,
        });
        Progress::Blocked
    }
}

/// `{ "<id>": { "output": ... } }` for the steps of one element (keyed
/// `prefix` + id) that succeeded, parallel branches included.
fn collect_outputs(state: &RunState, prefix: &str, steps: &[Step], out: &mut Map<String, Value>) {
    for step in steps {
        if let Some(record) = state.elements.get(&format!("{prefix}{}", step.id))
            && record.state == StepState::Succeeded
        {
            out.insert(
                step.id.clone(),
                serde_json::json!({ "output": record.output.clone().unwrap_or(Value::Null) }),
            );
        }
        if let StepKind::Parallel(branches) = &step.kind {
            collect_outputs(state, prefix, branches, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::event::Recorded;

    fn retry_workflow(retry: &str) -> Workflow {
        let yaml = format!(
            "name: flaky\nsteps:\n  - id: call\n    uses: transform\n    with: {{}}\n{retry}"
        );
        let plugins = ["transform".to_string()].into();
        crate::workflow::load_str(&yaml, "flaky.yaml", &plugins).unwrap()
    }

    fn retry_at(
        context: &PlanContext,
        workflow: &Workflow,
        run: &str,
        attempt: u32,
        retryable: bool,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let error = if retryable {
            StepError {
                retryable: true,
                ..StepError::fatal("503 from the vendor")
            }
        } else {
            StepError::fatal("bad request")
        };
        let step = workflow.step("call").unwrap();
        match outcome_event(context, run, "call", step, attempt, Err(error), now) {
            Event::StepFailed { retry_at, .. } => retry_at,
            other => panic!("{other:?}"),
        }
    }

    /// A step without `retry:` gets the operator's default: retryable
    /// errors are retried (twice by default), fatal ones are not.
    #[test]
    fn a_step_without_retry_gets_the_default_policy_for_retryable_errors() {
        let workflow = retry_workflow("");
        let context = PlanContext::default();
        let now = at("2026-12-02T12:00:00Z");
        for attempt in [1, 2] {
            let at = retry_at(&context, &workflow, "r1", attempt, true, now).expect("a retry");
            let bound = RetryPolicy::UNSET_DEFAULT.delay_after(attempt);
            assert!(at >= now && at <= now + chrono::Duration::from_std(bound).unwrap());
        }
        assert_eq!(retry_at(&context, &workflow, "r1", 3, true, now), None);
        assert_eq!(retry_at(&context, &workflow, "r1", 1, false, now), None);

        // `[defaults] retry = { max_attempts = 1 }`: no retries.
        let once = PlanContext {
            default_retry: RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::UNSET_DEFAULT
            },
            ..PlanContext::default()
        };
        assert_eq!(retry_at(&once, &workflow, "r1", 1, true, now), None);
        // A step's own `retry:` wins over the default.
        let own = retry_workflow("    retry: { max_attempts: 1 }\n");
        assert_eq!(retry_at(&context, &own, "r1", 1, true, now), None);
    }

    /// Full jitter: delays spread over zero to the exponential bound, differ
    /// between runs that failed together, and are the same for the same
    /// run, step and attempt; `backoff_jitter: false` waits the bound.
    #[test]
    fn retry_delays_are_jittered_between_runs_unless_turned_off() {
        let workflow = retry_workflow("    retry: { max_attempts: 5, backoff: 10s }\n");
        let context = PlanContext::default();
        let now = at("2026-12-02T12:00:00Z");
        let bound = chrono::Duration::seconds(40); // attempt 3: 10 s * 2^2
        let delays: Vec<chrono::Duration> = (0..200)
            .map(|i| {
                retry_at(&context, &workflow, &format!("run-{i}"), 3, true, now).unwrap() - now
            })
            .collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= chrono::Duration::zero() && *d <= bound)
        );
        let distinct: std::collections::BTreeSet<i64> =
            delays.iter().map(|d| d.num_milliseconds()).collect();
        assert!(
            distinct.len() > 150,
            "{} distinct delays of 200",
            distinct.len()
        );
        let early = delays.iter().filter(|d| **d < bound / 2).count();
        assert!(
            (60..=140).contains(&early),
            "{early} of 200 in the first half"
        );
        assert_eq!(
            retry_at(&context, &workflow, "run-7", 3, true, now),
            retry_at(&context, &workflow, "run-7", 3, true, now)
        );

        let fixed =
            retry_workflow("    retry: { max_attempts: 5, backoff: 10s, backoff_jitter: false }\n");
        assert_eq!(
            retry_at(&context, &fixed, "run-1", 3, true, now),
            Some(now + bound)
        );
    }

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    /// Drives `workflow` on `input` to its end with calls answered by
    /// `respond` (step key, input); returns the final state, the history
    /// and the most calls that were in flight at once.
    fn simulate(
        workflow: &Workflow,
        input: Value,
        context: &PlanContext,
        respond: impl Fn(&str, &Value) -> Result<Value, StepError>,
    ) -> (RunState, Vec<Event>, usize) {
        let now = at("2026-12-02T12:00:00Z");
        let mut state = RunState::new("r1", &workflow.name, 1, now);
        let mut history = Vec::new();
        let apply = |state: &mut RunState, event: Event, history: &mut Vec<Event>| {
            state.apply(&Recorded::at(history.len() as u64 + 1, now, event.clone()));
            history.push(event);
        };
        apply(
            &mut state,
            Event::RunStarted {
                input,
                parent: None,
            },
            &mut history,
        );
        let mut widest = 0;
        for _ in 0..100_000 {
            if state.status.is_terminal() {
                break;
            }
            let next = plan(workflow, &state, context, &GroupSnapshot::default(), now);
            assert!(!next.actions.is_empty(), "stuck: {state:?}");
            let mut calls = Vec::new();
            for action in next.actions {
                match action {
                    Action::Record(event) => apply(&mut state, event, &mut history),
                    Action::Call {
                        step,
                        attempt,
                        input,
                        ..
                    } => {
                        apply(
                            &mut state,
                            Event::StepStarted {
                                step: step.clone(),
                                attempt,
                                input: input.clone(),
                            },
                            &mut history,
                        );
                        calls.push((step, attempt, input));
                    }
                    Action::StartChild { .. } => panic!("no sub-workflows here"),
                }
            }
            widest = widest.max(calls.len());
            for (key, attempt, input) in calls {
                let definition = workflow.step_by_key(&key).unwrap();
                let result = respond(&key, &input);
                let event = outcome_event(context, "r1", &key, definition, attempt, result, now);
                apply(&mut state, event, &mut history);
            }
        }
        (state, history, widest)
    }

    fn load(yaml: &str) -> Workflow {
        let plugins = ["transform".to_string()].into();
        crate::workflow::load_str(yaml, "loop.yaml", &plugins).unwrap()
    }

    const LOOP: &str = "name: loop\nsteps:\n  - id: first\n    uses: transform\n    with: {}\n  - id: each\n    for_each: ${{ input.items }}\n    as: it\n    concurrency: 3\n    steps:\n      - id: shape\n        uses: transform\n        with: { n: '${{ it }}', at: '${{ index }}' }\n      - id: done\n        uses: transform\n        with: { from: '${{ steps.shape.output.n }}', before: '${{ steps.first.output }}' }\n  - id: after\n    uses: transform\n    with: { all: '${{ steps.each.output }}' }\n";

    /// Every element runs its steps in order with its item and index, at
    /// most `concurrency` at once, and the loop's output lists each
    /// element's last output in input order.
    #[test]
    fn a_loop_runs_each_element_once_in_order_within_its_concurrency() {
        let workflow = load(LOOP);
        let items: Vec<Value> = (0..10).map(|i| Value::from(i * 10)).collect();
        let (state, history, widest) = simulate(
            &workflow,
            serde_json::json!({ "items": items }),
            &PlanContext::default(),
            |key, input| match key {
                "first" => Ok(Value::from("F")),
                "after" => Ok(input.clone()),
                _ => Ok(
                    serde_json::json!({ "n": input.get("n").or(input.get("from")).cloned(), "key": key, "before": input.get("before") }),
                ),
            },
        );
        assert_eq!(
            state.status,
            crate::run::state::Status::Succeeded,
            "{state:?}"
        );
        assert!(widest <= 3, "{widest} calls at once");
        let output = state.steps["each"].output.clone().unwrap();
        let list = output.as_array().unwrap();
        assert_eq!(list.len(), 10);
        for (i, entry) in list.iter().enumerate() {
            assert_eq!(entry["n"], Value::from(i * 10));
            assert_eq!(entry["key"], Value::from(format!("each/{i}/done")));
            assert_eq!(entry["before"], Value::from("F"), "outer steps in scope");
        }
        let started: Vec<&str> = history
            .iter()
            .filter_map(|e| match e {
                Event::StepStarted { step, .. } => Some(step.as_str()),
                _ => None,
            })
            .collect();
        for i in 0..10 {
            for body in ["shape", "done"] {
                let key = format!("each/{i}/{body}");
                assert_eq!(started.iter().filter(|s| **s == key).count(), 1, "{key}");
            }
        }
        assert_eq!(state.steps["after"].output.as_ref().unwrap()["all"], output);
        assert!(
            state.elements.is_empty(),
            "finished elements keep no records"
        );
    }

    #[test]
    fn fail_fast_fails_the_loop_and_continue_keeps_going_with_error_entries() {
        let fails = |key: &str, _: &Value| {
            if key == "each/4/shape" {
                Err(StepError::fatal("no such item"))
            } else {
                Ok(serde_json::json!({ "n": key }))
            }
        };
        let workflow = load(LOOP);
        let input = serde_json::json!({ "items": (0..8).collect::<Vec<u32>>() });
        let (state, _, _) = simulate(&workflow, input.clone(), &PlanContext::default(), fails);
        assert_eq!(state.status, crate::run::state::Status::Failed);
        let error = state.error.unwrap().message;
        assert!(
            error.contains("element 4") && error.contains("no such item"),
            "{error}"
        );
        assert!(state.steps["each"].elements.unwrap().finished < 8);

        let continuing = LOOP.replace("concurrency: 3", "concurrency: 3\n    on_error: continue");
        let workflow = load(&continuing);
        let (state, _, _) = simulate(&workflow, input, &PlanContext::default(), fails);
        assert_eq!(state.status, crate::run::state::Status::Succeeded);
        let list = state.steps["each"].output.clone().unwrap();
        assert_eq!(list[3]["n"], Value::from("each/3/done"));
        assert!(
            list[4]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no such item"),
            "{list}"
        );
        assert_eq!(state.steps["each"].elements.unwrap().failed, 1);
    }

    #[test]
    fn a_loop_over_too_many_or_no_elements_or_not_a_list() {
        let workflow = load(LOOP);
        let context = PlanContext {
            for_each_max_items: 5,
            ..PlanContext::default()
        };
        let ok = |key: &str, _: &Value| Ok(Value::from(key));
        let (state, _, _) = simulate(
            &workflow,
            serde_json::json!({ "items": [1, 2, 3, 4, 5, 6] }),
            &context,
            ok,
        );
        let error = state.error.unwrap().message;
        assert!(
            error.contains("6 elements, more than the limit of 5"),
            "{error}"
        );
        let (state, _, _) = simulate(&workflow, serde_json::json!({ "items": [] }), &context, ok);
        assert_eq!(state.steps["each"].output, Some(serde_json::json!([])));
        let (state, _, _) = simulate(
            &workflow,
            serde_json::json!({ "items": "abc" }),
            &context,
            ok,
        );
        let error = state.error.unwrap().message;
        assert!(error.contains("expected a list, got a string"), "{error}");
    }

    #[test]
    fn a_friday_evening_p3_breaches_on_business_time() {
        let yaml = "name: desk\nsla:\n  priority: ${{ input.priority }}\n  resolution: { P3: 30h }\n  calendar: office-hours\nsteps:\n  - id: fix\n    approval:\n      approvers: [ana]\n";
        let plugins = ["transform".to_string()].into();
        let workflow = crate::workflow::load_str(yaml, "desk.yaml", &plugins).unwrap();
        let calendar: toml::Value = toml::from_str(
            "timezone = \"Europe/Berlin\"\nhours = { mon-fri = \"08:00-18:00\" }\nholidays = [\"2026-12-01\"]\n",
        )
        .unwrap();
        let context = PlanContext {
            calendars: [(
                "office-hours".to_string(),
                crate::calendar::Calendar::parse("office-hours", &calendar).unwrap(),
            )]
            .into(),
            ..PlanContext::default()
        };
        // Accepted on Friday 2026-11-27 at 19:00 in Berlin, after hours.
        let friday = at("2026-11-27T18:00:00Z");
        let mut state = RunState::new("r1", "desk", 1, friday);
        let mut seq = 0;
        let mut apply = |state: &mut RunState, event: Event| {
            seq += 1;
            state.apply(&Recorded {
                seq,
                at: friday,
                event,
            });
        };
        apply(
            &mut state,
            Event::RunStarted {
                input: serde_json::json!({"priority": "P3"}),
                parent: None,
            },
        );
        let first = plan(
            &workflow,
            &state,
            &context,
            &GroupSnapshot::default(),
            friday,
        );
        assert!(first.actions.contains(&Action::Record(Event::SlaStarted {
            priority: "P3".into(),
            target_ms: Some(30 * 3_600_000),
            response_target_ms: None,
        })));
        for action in first.actions {
            if let Action::Record(event) = action {
                apply(&mut state, event);
            }
        }
        // 30 working hours: Mon 30 Nov, (Tue 1 Dec is a holiday), Wed 2
        // and Thu 3 Dec → due Thursday 18:00 Berlin.
        let next = plan(
            &workflow,
            &state,
            &context,
            &GroupSnapshot::default(),
            friday,
        );
        assert_eq!(next.wake_at, Some(at("2026-12-03T17:00:00Z")));
        let due = plan(
            &workflow,
            &state,
            &context,
            &GroupSnapshot::default(),
            at("2026-12-03T17:00:00Z"),
        );
        assert!(
            due.actions.contains(&Action::Record(Event::SlaBreached)),
            "{due:?}"
        );
        let before = plan(
            &workflow,
            &state,
            &context,
            &GroupSnapshot::default(),
            at("2026-12-03T16:59:00Z"),
        );
        assert!(!before.actions.contains(&Action::Record(Event::SlaBreached)));
    }

    #[test]
    fn a_wait_expression_may_give_a_duration_or_a_time() {
        let yaml = "name: w\nsteps:\n  - id: pause\n    wait: ${{ input.after }}\n";
        let plugins = ["transform".to_string()].into();
        let workflow = crate::workflow::load_str(yaml, "w.yaml", &plugins).unwrap();
        let now = at("2026-11-26T10:00:00Z");
        let deadline_for = |after: &str| {
            let mut state = RunState::new("r1", "w", 1, now);
            state.apply(&Recorded {
                seq: 1,
                at: now,
                event: Event::RunStarted {
                    input: serde_json::json!({ "after": after }),
                    parent: None,
                },
            });
            plan(
                &workflow,
                &state,
                &PlanContext::default(),
                &GroupSnapshot::default(),
                now,
            )
            .actions
            .into_iter()
            .find_map(|a| match a {
                Action::Record(Event::TimerStarted { until, .. }) => Some(Ok(until)),
                Action::Record(Event::StepFailed { error, .. }) => Some(Err(error.message)),
                _ => None,
            })
            .expect("the wait starts or fails")
        };
        assert_eq!(deadline_for("90d"), Ok(at("2027-02-24T10:00:00Z")));
        assert_eq!(
            deadline_for("2026-12-24T09:00:00Z"),
            Ok(at("2026-12-24T09:00:00Z"))
        );
        let bad = deadline_for("soon").unwrap_err();
        assert!(bad.contains("neither a duration"), "{bad}");
    }
}
