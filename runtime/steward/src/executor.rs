//! Drives runs: asks the interpreter what to do, records it, calls plugins
//! through the engine, and records their results. Steps of a `parallel`
//! group run concurrently; a run waits for timers and retries without
//! busy-looping.
//!
//! Where events go is a [`Journal`]: memory for a one-off local run, the
//! store for the server. Events are made durable before any plugin call
//! starts and before the executor waits, so a step's result is committed
//! before the next step starts.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::engine::{CallError, CallRequest, Engine, StepContext};
use crate::run::state::{ApprovalState, StepRecord};
use crate::run::{
    Action, ChildOutcome, ChildRun, Event, JournalError, Plan, PlanContext, Recorded, RunState,
    StepError, StepState, child_outcome_event, idempotency_key, outcome_event, plan,
};
use crate::store::{ApprovalRow, Decision, OpenSignalWait, SignalDelivery, Store};
use crate::workflow::{StepKind, Workflow};

/// The log target of what a foreground run tells its user while it
/// waits (`steward run` shows it by default).
pub const PROGRESS: &str = "steward::progress";

/// Runs longer idle than this are handed back to the store (parked) instead
/// of holding a task and a lease.
const PARK_AFTER: chrono::Duration = chrono::Duration::seconds(2);

pub use crate::run::{Journal, MemoryJournal};

/// Appends to the store (group-committed), only while `owner` holds the
/// run's lease.
pub struct StoreJournal {
    pub store: Store,
    pub owner: Option<String>,
    /// Approvals this drive has already made decidable, and signal waits
    /// it has recorded (`signal:RUN/STEP`): opening is idempotent but a
    /// write, and the drive asks before every plan.
    opened: std::collections::HashSet<String>,
    /// The answer to the drive's first cancel check when the caller read
    /// it already (with the claim, or none for a run it just created):
    /// one query per run saved. Later checks ask the store.
    cancel_known: Option<Option<String>>,
    /// Where sub-workflows are looked up; without it a `workflow:` step
    /// cannot start its child.
    catalog: Option<Arc<crate::catalog::Catalog>>,
}

impl StoreJournal {
    /// A journal writing as `owner` (checked against the run's lease).
    pub fn new(store: Store, owner: Option<String>) -> StoreJournal {
        StoreJournal {
            store,
            owner,
            opened: Default::default(),
            cancel_known: None,
            catalog: None,
        }
    }

    /// Lets `workflow:` steps start their sub-workflows from `catalog`.
    pub fn with_catalog(mut self, catalog: Arc<crate::catalog::Catalog>) -> StoreJournal {
        self.catalog = Some(catalog);
        self
    }

    /// Answers the first cancel check with `reason`, read moments ago by
    /// the caller, instead of asking the store.
    pub fn knowing_cancel(mut self, reason: Option<String>) -> StoreJournal {
        self.cancel_known = Some(reason);
        self
    }
}

impl Journal for StoreJournal {
    async fn persist(
        &mut self,
        state: &RunState,
        events: &[Recorded],
        wake_at: Option<DateTime<Utc>>,
    ) -> Result<Option<String>, JournalError> {
        self.store
            .append(state, events, wake_at, self.owner.as_deref())
            .await
            .map_err(JournalError::from)
    }

    async fn cancel_requested(&mut self, run_id: &str) -> Result<Option<String>, JournalError> {
        if let Some(known) = self.cancel_known.take() {
            return Ok(known);
        }
        self.store
            .cancel_requested(run_id)
            .await
            .map_err(JournalError::from)
    }

    async fn approval_decisions(
        &mut self,
        approval: &ApprovalRow,
    ) -> Result<Vec<Decision>, JournalError> {
        if !self.opened.contains(&approval.id) {
            self.store
                .open_approval(approval)
                .await
                .map_err(JournalError::from)?;
            self.opened.insert(approval.id.clone());
        }
        self.store
            .approval_decisions(&approval.id)
            .await
            .map_err(JournalError::from)
    }

    async fn close_approval(&mut self, approval: &str) -> Result<(), JournalError> {
        self.store
            .close_approval(approval)
            .await
            .map_err(JournalError::from)
    }

    async fn close_run_approvals(&mut self, run_id: &str) -> Result<(), JournalError> {
        self.store
            .close_run_approvals(run_id)
            .await
            .map_err(JournalError::from)
    }
    async fn start_child(&mut self, child: &ChildRun) -> Result<Result<(), String>, JournalError> {
        let Some(catalog) = &self.catalog else {
            return Ok(Err("this process cannot start sub-workflows".into()));
        };
        let found = match child.version {
            Some(version) => catalog.version(&child.workflow, version).await,
            None => catalog.current(&child.workflow).await,
        };
        let workflow = match found {
            Ok(Some(workflow)) => workflow,
            Ok(None) => {
                let version = child
                    .version
                    .map(|v| format!(" version {v}"))
                    .unwrap_or_default();
                return Ok(Err(format!(
                    "workflow {}{version} is not deployed: deploy it, then retry the run",
                    child.workflow
                )));
            }
            Err(crate::catalog::CatalogError::Store(e)) => return Err(JournalError::from(e)),
            Err(e) => return Ok(Err(e.to_string())),
        };
        if let Err(problems) = workflow.check_input_for_client(&child.input) {
            return Ok(Err(format!(
                "the input does not match workflow {}'s schema: {}",
                workflow.name,
                problems.join("; ")
            )));
        }
        // The child acts for whoever started the parent: four eyes hold
        // across sub-workflows.
        let started_by = self
            .store
            .run(&child.parent.run)
            .await
            .map_err(JournalError::from)?
            .and_then(|row| row.started_by);
        let new = crate::store::NewRun {
            id: &child.id,
            workflow: &workflow.name,
            version: workflow.version,
            input: &child.input,
            // Created once, whatever a crashed parent asks again.
            idempotency_key: Some(&child.id),
            started_by: started_by.as_deref(),
            rerun_of: None,
            parent: Some(&child.parent),
            lease: None,
            placement: crate::store::Placement::of(&workflow),
        };
        self.store
            .create_run(new)
            .await
            .map_err(JournalError::from)?;
        crate::metrics::global().run_started(&workflow.name);
        Ok(Ok(()))
    }

    async fn child_outcome(&mut self, run_id: &str) -> Result<Option<ChildOutcome>, JournalError> {
        let row = self.store.run(run_id).await.map_err(JournalError::from)?;
        Ok(row.and_then(|row| {
            let status = crate::run::Status::parse(&row.status)?;
            status.is_terminal().then_some(ChildOutcome {
                status,
                output: row.output,
                error: row.error,
            })
        }))
    }

    async fn cancel_child(&mut self, run_id: &str, reason: &str) -> Result<(), JournalError> {
        self.store
            .request_cancel(run_id, reason, crate::auth::SYSTEM_ACTOR)
            .await
            .map(|_| ())
            .map_err(JournalError::from)
    }

    async fn wake_parent(&mut self, run_id: &str) -> Result<(), JournalError> {
        self.store.nudge(run_id).await.map_err(JournalError::from)
    }

    async fn signal_candidates(
        &mut self,
        wait: &OpenSignalWait,
    ) -> Result<Vec<SignalDelivery>, JournalError> {
        let opened = format!("signal:{}/{}", wait.run_id, wait.step);
        if !self.opened.contains(&opened) {
            self.store
                .open_signal_wait(wait)
                .await
                .map_err(JournalError::from)?;
            self.opened.insert(opened);
        }
        self.store
            .signal_candidates(wait)
            .await
            .map_err(JournalError::from)
    }

    async fn take_signal(
        &mut self,
        wait: &OpenSignalWait,
        delivery: &str,
    ) -> Result<bool, JournalError> {
        self.store
            .take_signal(wait, delivery)
            .await
            .map_err(JournalError::from)
    }
}

/// Runs workflows against an engine.
#[derive(Clone)]
pub struct Executor {
    engine: Engine,
    /// `env.*` and calendars.
    context: Arc<PlanContext>,
    /// Approver groups: each plan gets a snapshot.
    groups: crate::groups::Groups,
    /// Set when the process stops: durable drives let their calls finish
    /// and park instead of starting new steps.
    draining: Arc<std::sync::atomic::AtomicBool>,
}

/// A run in memory: its history, the state folded from it, and how much of
/// the history is already durable.
#[derive(Debug)]
pub struct LiveRun {
    pub state: RunState,
    pub history: Vec<Recorded>,
    saved: usize,
}

impl LiveRun {
    /// A run rebuilt from its stored history.
    pub fn resume(state: RunState, history: Vec<Recorded>) -> LiveRun {
        let mut state = state;
        for recorded in &history {
            state.apply(recorded);
        }
        let saved = history.len();
        LiveRun {
            state,
            history,
            saved,
        }
    }

    fn record(&mut self, event: Event) {
        let recorded = Recorded::at(self.history.len() as u64 + 1, Utc::now(), event);
        self.state.apply(&recorded);
        self.history.push(recorded);
    }

    async fn flush<J: Journal>(
        &mut self,
        journal: &mut J,
        wake_at: Option<DateTime<Utc>>,
    ) -> Result<Option<String>, JournalError> {
        if self.saved == self.history.len() {
            return Ok(None);
        }
        let cancel = journal
            .persist(&self.state, &self.history[self.saved..], wake_at)
            .await?;
        self.saved = self.history.len();
        Ok(cancel)
    }

    /// Ends the run as cancelled, abandoning calls in flight.
    async fn cancel<J: Journal>(
        &mut self,
        journal: &mut J,
        calls: &mut JoinSet<Finished>,
        reason: String,
    ) -> Result<DriveEnd, JournalError> {
        calls.abort_all();
        self.record(Event::RunCancelled { reason });
        self.flush(journal, None).await?;
        Ok(DriveEnd::Finished)
    }
}

/// How often a run that waits checks for a cancel request.
const CANCEL_CHECK: chrono::Duration = chrono::Duration::seconds(1);

/// How a drive ended.
#[derive(Debug, PartialEq, Eq)]
pub enum DriveEnd {
    /// The run reached a final status.
    Finished,
    /// Only a timer or a retry holds the run: it was handed back to the
    /// store with its wake-up time.
    Parked,
}

/// One completed plugin call, on its way back to the run.
struct Finished {
    step: String,
    attempt: u32,
    result: Result<Value, StepError>,
}

impl Executor {
    pub fn new(engine: Engine, env: Value) -> Executor {
        Executor {
            engine,
            context: Arc::new(PlanContext {
                env,
                ..PlanContext::default()
            }),
            groups: Default::default(),
            draining: Arc::default(),
        }
    }

    /// Sets the business-hours calendars SLA clocks may run on.
    pub fn with_calendars(
        mut self,
        calendars: std::collections::BTreeMap<String, crate::calendar::Calendar>,
    ) -> Executor {
        Arc::make_mut(&mut self.context).calendars = calendars;
        self
    }

    /// Sets the retry policy of steps that set no `retry:`.
    pub fn with_default_retry(mut self, retry: crate::workflow::model::RetryPolicy) -> Executor {
        Arc::make_mut(&mut self.context).default_retry = retry;
        self
    }

    /// Sets the most elements a `for_each` may loop over.
    pub fn with_for_each_max_items(mut self, max: usize) -> Executor {
        Arc::make_mut(&mut self.context).for_each_max_items = max;
        self
    }

    /// Sets how deep sub-workflows may nest.
    pub fn with_max_workflow_depth(mut self, depth: u32) -> Executor {
        Arc::make_mut(&mut self.context).max_workflow_depth = depth;
        self
    }

    /// Sets the groups `group:NAME` approvers are looked up in.
    pub fn with_groups(mut self, groups: crate::groups::Groups) -> Executor {
        self.groups = groups;
        self
    }

    /// Stops starting steps: every durable drive lets the calls it has in
    /// flight finish, commits their results and hands its run back.
    pub fn drain(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Runs `workflow` on `input` to its end, in this process, with nothing
    /// persisted. The input must already have passed the workflow's schema.
    pub async fn run(&self, workflow: Arc<Workflow>, run_id: &str, input: Value) -> LiveRun {
        let state = RunState::new(run_id, &workflow.name, workflow.version, Utc::now());
        let mut run = LiveRun::resume(state, Vec::new());
        run.record(Event::RunStarted {
            input,
            parent: None,
        });
        // The memory journal cannot fail.
        let _ = self
            .drive(&workflow, &mut run, &mut MemoryJournal, false)
            .await;
        run
    }

    /// Advances `run` until it finishes or, when `park` is set, until only a
    /// timer holds it. Steps that were in flight when the history ends (the
    /// process died mid-call) are run again, with the same attempt number
    /// and idempotency key.
    pub async fn drive<J: Journal>(
        &self,
        workflow: &Workflow,
        run: &mut LiveRun,
        journal: &mut J,
        park: bool,
    ) -> Result<DriveEnd, JournalError> {
        let span = tracing::info_span!("run", id = %run.state.id, workflow = %workflow.name);
        let mut end = self
            .advance(workflow, run, journal, park)
            .instrument(span)
            .await;
        // Only a run that opened approvals has any to close: the others
        // finish without an extra write outside the group commit.
        let had_approvals = run.state.steps.values().any(|r| r.approval.is_some());
        if let Ok(DriveEnd::Finished) = end
            && had_approvals
            && let Err(e) = journal.close_run_approvals(&run.state.id).await
        {
            end = Err(e);
        }
        if let Ok(DriveEnd::Finished) = end
            && let Err(e) = settle_family(run, journal).await
        {
            end = Err(e);
        }
        if let Ok(DriveEnd::Finished) = end {
            crate::metrics::global().run_finished(&workflow.name, run.state.status.as_str());
        }
        end
    }

    async fn advance<J: Journal>(
        &self,
        workflow: &Workflow,
        run: &mut LiveRun,
        journal: &mut J,
        park: bool,
    ) -> Result<DriveEnd, JournalError> {
        let mut calls: JoinSet<Finished> = JoinSet::new();
        if let Some(reason) = journal.cancel_requested(&run.state.id).await? {
            return run.cancel(journal, &mut calls, reason).await;
        }
        // Re-issue what was in flight: recorded and durable first, so a
        // worker that lost the run does not call out again.
        let resumed: Vec<CallSpec> = interrupted_calls(run)
            .into_iter()
            .filter_map(|(step, attempt, input)| resume_call(workflow, run, step, attempt, input))
            .collect();
        if !resumed.is_empty() {
            run.flush(journal, Some(Utc::now())).await?;
            for spec in resumed {
                self.spawn_call(workflow, run, &mut calls, spec);
            }
        }
        loop {
            if park && self.is_draining() {
                let Some(joined) = calls.join_next().await else {
                    // Due at once, for whichever process claims it next.
                    run.flush_wake(journal, Some(Utc::now())).await?;
                    return Ok(DriveEnd::Parked);
                };
                if let Ok(finished) = joined {
                    self.record_outcome(workflow, run, finished);
                }
                continue;
            }
            let now = Utc::now();
            sync_decisions(run, journal).await?;
            sync_children(workflow, run, journal).await?;
            self.sync_signals(workflow, run, journal).await?;
            let groups = self.groups.snapshot();
            let mut next = plan(workflow, &run.state, &self.context, &groups, now);
            let closing = approvals_decided_by(&next, &run.state);
            if !closing.is_empty() {
                // Close first, then read the decisions once more: nothing
                // accepted after this point can exist, so this plan is final.
                for approval in &closing {
                    journal.close_approval(approval).await?;
                }
                sync_decisions(run, journal).await?;
                next = plan(workflow, &run.state, &self.context, &groups, now);
            }
            let progressed = !next.actions.is_empty();
            let waited_on = waiting_children(&run.state);
            let mut to_call = Vec::new();
            for action in next.actions {
                match action {
                    Action::Record(event) => run.record(event),
                    Action::StartChild {
                        step,
                        attempt,
                        child,
                    } => match journal.start_child(&child).await? {
                        Ok(()) => run.record(Event::ChildStarted {
                            step,
                            attempt,
                            child: child.id,
                        }),
                        Err(why) => run.record(Event::StepFailed {
                            step: step.clone(),
                            attempt,
                            error: StepError::fatal(format!(
                                "steps.{}.workflow: {why}",
                                step.rsplit('/').next().unwrap_or(&step)
                            )),
                            retry_at: None,
                        }),
                    },
                    Action::Call {
                        step,
                        attempt,
                        plugin,
                        input,
                        timeout,
                    } => {
                        run.record(Event::StepStarted {
                            step: step.clone(),
                            attempt,
                            input: input.clone(),
                        });
                        to_call.push((step, attempt, plugin, input, timeout));
                    }
                }
            }
            // Durable before any side effect starts and before waiting,
            // unless all that runs is contained steps: their starts are
            // written with their outcomes (a crash re-runs them, which
            // nobody can tell apart from one run), one write saved per step.
            if !self.only_contained_steps_run(workflow, &run.state)
                && let Some(reason) = run.flush(journal, Some(now)).await?
                && !run.state.status.is_terminal()
            {
                return run.cancel(journal, &mut calls, reason).await;
            }
            // A child whose step stopped waiting (its timeout) is stopped.
            for (key, child) in waited_on {
                if !matches!(&run.state.step(&key).state, StepState::Child { run: r, .. } if *r == child)
                {
                    journal
                        .cancel_child(&child, "its parent's step stopped waiting for it")
                        .await?;
                }
            }
            for (step, attempt, plugin, input, timeout) in to_call {
                self.spawn_call(
                    workflow,
                    run,
                    &mut calls,
                    CallSpec {
                        step,
                        attempt,
                        plugin,
                        input,
                        timeout,
                    },
                );
            }
            if run.state.status.is_terminal() {
                calls.abort_all();
                return Ok(DriveEnd::Finished);
            }
            if progressed {
                continue;
            }
            // Decisions, signals and sub-workflows come from outside: such
            // a run parks until they arrive (they make it due).
            let awaiting_people = run.state.steps.values().any(|r| {
                matches!(
                    r.state,
                    StepState::Awaiting { .. } | StepState::AwaitingSignal { .. }
                )
            }) || !waiting_children(&run.state).is_empty();
            let idle_long = match next.wake_at {
                Some(at) => at - now > PARK_AFTER,
                None => awaiting_people,
            };
            if park && calls.is_empty() && idle_long {
                run.flush_wake(journal, next.wake_at).await?;
                return Ok(DriveEnd::Parked);
            }
            // In the foreground (`steward run`), a long wait says so.
            if !park
                && calls.is_empty()
                && idle_long
                && let Some(at) = next.wake_at
            {
                tracing::info!(
                    target: PROGRESS,
                    "run {} waits until {} (a timer or a retry's backoff; \
                     `steward serve` keeps runs across restarts)",
                    run.state.id,
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                );
            }
            // A durable run looks for cancel requests while it waits.
            let check_at = park.then(|| now + CANCEL_CHECK);
            let wake_at = match (next.wake_at, check_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match wait(&mut calls, wake_at).await {
                Some(finished) => {
                    self.record_outcome(workflow, run, finished);
                    // Take every other result already in: one plan (and
                    // one write) for all of them, which is what keeps a
                    // loop of many short elements fast.
                    while let Some(joined) = calls.try_join_next() {
                        if let Ok(finished) = joined {
                            self.record_outcome(workflow, run, finished);
                        }
                    }
                }
                None if calls.is_empty() && next.wake_at.is_none() => {
                    let awaiting_signal = run
                        .state
                        .steps
                        .values()
                        .any(|r| matches!(r.state, StepState::AwaitingSignal { .. }));
                    let why = if awaiting_signal {
                        "a wait_for step waits for a signal delivered through the API or a \
                         webhook: run this workflow on `steward serve`"
                    } else if awaiting_people {
                        "an approval step waits for decisions made through the API: \
                         run this workflow on `steward serve`"
                    } else {
                        "the run cannot make progress (no step is runnable)"
                    };
                    run.record(Event::RunFailed {
                        error: StepError::fatal(why),
                    });
                }
                None => {
                    if park && let Some(reason) = journal.cancel_requested(&run.state.id).await? {
                        return run.cancel(journal, &mut calls, reason).await;
                    }
                }
            }
        }
    }

    /// Takes, for each open `wait_for` step, the first delivery it may
    /// have (the one it took before a crash, else the oldest its `match`
    /// accepts) and records it; the plan then sees the step finished.
    async fn sync_signals<J: Journal>(
        &self,
        workflow: &Workflow,
        run: &mut LiveRun,
        journal: &mut J,
    ) -> Result<(), JournalError> {
        let waits = crate::run::signal::open_waits(&run.state);
        if waits.is_empty() {
            return Ok(());
        }
        let scope = crate::run::expression_scope(&run.state, &self.context.env);
        for wait in waits {
            let Some(StepKind::Signal(spec)) = workflow.step(&wait.step).map(|s| &s.kind) else {
                continue;
            };
            let candidates = journal.signal_candidates(&wait).await?;
            for delivery in crate::run::signal::to_take(spec, &scope, &wait.step, &candidates) {
                if journal.take_signal(&wait, &delivery.id).await? {
                    run.record(Event::SignalReceived {
                        step: wait.step.clone(),
                        signal: wait.signal.clone(),
                        delivery: delivery.id.clone(),
                        payload: delivery.payload.clone(),
                    });
                    break;
                }
            }
        }
        Ok(())
    }

    /// True while the run is unfinished and every step in flight is a
    /// plugin step whose plugin [`Engine::is_contained`].
    fn only_contained_steps_run(&self, workflow: &Workflow, state: &RunState) -> bool {
        let mut running = running_records(state)
            .filter_map(|(key, _)| workflow.step_by_key(key))
            // A loop in progress calls nothing itself; its elements do.
            .filter(|step| !matches!(step.kind, StepKind::ForEach(_)))
            .peekable();
        !state.status.is_terminal()
            && running.peek().is_some()
            && running.all(|step| {
                matches!(&step.kind, StepKind::Plugin { uses, .. } if self.engine.is_contained(uses))
            })
    }

    /// Records what a finished call means for its step.
    fn record_outcome(&self, workflow: &Workflow, run: &mut LiveRun, finished: Finished) {
        let Some(step) = workflow.step_by_key(&finished.step) else {
            return;
        };
        run.record(outcome_event(
            &self.context,
            &run.state.id,
            &finished.step,
            step,
            finished.attempt,
            finished.result,
            Utc::now(),
        ));
    }

    fn spawn_call(
        &self,
        workflow: &Workflow,
        run: &LiveRun,
        calls: &mut JoinSet<Finished>,
        spec: CallSpec,
    ) {
        let run_id = run.state.id.clone();
        let request = CallRequest {
            plugin: spec.plugin,
            context: StepContext {
                idempotency_key: idempotency_key(
                    &run_id,
                    &spec.step,
                    run.state.generation(&spec.step),
                ),
                run_id,
                workflow: workflow.name.clone(),
                step_id: spec.step.clone(),
                attempt: spec.attempt,
            },
            input: spec.input.to_string(),
            timeout: spec.timeout,
        };
        let engine = self.engine.clone();
        let (step, attempt) = (spec.step, spec.attempt);
        let span = tracing::info_span!("step", run = %request.context.run_id, step = %step, plugin = %request.plugin, attempt);
        calls.spawn(
            async move {
                let began = std::time::Instant::now();
                let outcome = engine.call(request.clone()).await;
                crate::metrics::global().step_finished(
                    &request.plugin,
                    outcome.result.is_ok(),
                    began.elapsed(),
                );
                for line in &outcome.logs {
                    tracing::info!(level = %line.level, "{}", line.message);
                }
                Finished {
                    step,
                    attempt,
                    result: to_step_result(outcome.result),
                }
            }
            .instrument(span),
        );
    }
}

struct CallSpec {
    step: String,
    attempt: u32,
    plugin: String,
    input: Value,
    timeout: Option<std::time::Duration>,
}

impl LiveRun {
    /// Saves pending events and the next wake-up time, even when no event is
    /// pending.
    async fn flush_wake<J: Journal>(
        &mut self,
        journal: &mut J,
        wake_at: Option<DateTime<Utc>>,
    ) -> Result<(), JournalError> {
        // A cancel request that raced with parking keeps the run due (see
        // `Store::append`), so the next claim honours it.
        journal
            .persist(&self.state, &self.history[self.saved..], wake_at)
            .await?;
        self.saved = self.history.len();
        Ok(())
    }
}

/// Copies decisions made through the API on the run's open approvals into
/// its history.
async fn sync_decisions<J: Journal>(
    run: &mut LiveRun,
    journal: &mut J,
) -> Result<(), JournalError> {
    let open: Vec<(String, ApprovalState)> = run
        .state
        .steps
        .iter()
        .filter(|(_, r)| matches!(r.state, StepState::Awaiting { .. }))
        .filter_map(|(step, r)| Some((step.clone(), r.approval.clone()?)))
        .collect();
    for (step, approval) in open {
        let row = ApprovalRow {
            id: approval.id.clone(),
            run_id: run.state.id.clone(),
            workflow: run.state.workflow.clone(),
            step: step.clone(),
            level: approval.level,
            approvers: approval.approvers.clone(),
            eligible: approval.eligible.clone(),
            quorum: approval.quorum,
            due_at: approval.due,
            status: "pending".into(),
            created_at: run.state.steps[&step].started_at.unwrap_or_else(Utc::now),
            requester: approval.requester.clone(),
            allow_self_approval: approval.allow_self_approval,
            started_by: None,
        };
        for decision in journal.approval_decisions(&row).await? {
            if approval.decisions.iter().any(|d| d.by == decision.by) {
                continue;
            }
            run.record(Event::ApprovalDecided {
                step: step.clone(),
                approval: approval.id.clone(),
                by: decision.by,
                decision: decision.decision,
                comment: decision.comment,
                decided_at: decision.at,
                delegate: decision.delegate,
                entered_by: decision.entered_by,
            });
        }
    }
    Ok(())
}

/// The sub-workflow runs steps wait for: (step key, child run id).
fn waiting_children(state: &RunState) -> Vec<(String, String)> {
    state
        .steps
        .iter()
        .chain(state.elements.iter())
        .filter_map(|(key, record)| match &record.state {
            StepState::Child { run, .. } => Some((key.clone(), run.clone())),
            _ => None,
        })
        .collect()
}

/// Copies the end of every finished sub-workflow run into the history.
async fn sync_children<J: Journal>(
    workflow: &Workflow,
    run: &mut LiveRun,
    journal: &mut J,
) -> Result<(), JournalError> {
    for (key, child) in waiting_children(&run.state) {
        let Some(outcome) = journal.child_outcome(&child).await? else {
            continue;
        };
        let (Some(step), StepState::Child { attempt, .. }) =
            (workflow.step_by_key(&key), run.state.step(&key).state)
        else {
            continue;
        };
        let event = child_outcome_event(
            &run.state.id,
            &key,
            step,
            attempt,
            &child,
            outcome,
            Utc::now(),
        );
        run.record(event);
    }
    Ok(())
}

/// When a run finishes: the children it still waits for are cancelled
/// (a cancelled, failed or rejected parent leaves no orphans), and its own
/// parent, if any, is told.
async fn settle_family<J: Journal>(run: &mut LiveRun, journal: &mut J) -> Result<(), JournalError> {
    for (_, child) in waiting_children(&run.state) {
        let reason = format!(
            "its parent run {} {}",
            run.state.id,
            run.state.status.as_str()
        );
        journal.cancel_child(&child, &reason).await?;
    }
    if let Some(parent) = &run.state.parent {
        journal.wake_parent(&parent.run).await?;
    }
    Ok(())
}

/// The open approvals whose outcome `plan` settles (approved, rejected,
/// timed out or escalated).
fn approvals_decided_by(plan: &Plan, state: &RunState) -> Vec<String> {
    let open = |step: &str| -> Option<String> {
        let record = state.steps.get(step)?;
        match &record.state {
            StepState::Awaiting { approval } => Some(approval.clone()),
            _ => None,
        }
    };
    plan.actions
        .iter()
        .filter_map(|action| match action {
            Action::Record(Event::StepSucceeded { step, .. })
            | Action::Record(Event::RunRejected { step, .. })
            | Action::Record(Event::ApprovalRequested { step, .. }) => open(step),
            _ => None,
        })
        .collect()
}

/// Records the re-run of a call that was in flight when the process stopped.
fn resume_call(
    workflow: &Workflow,
    run: &mut LiveRun,
    step: String,
    attempt: u32,
    input: Value,
) -> Option<CallSpec> {
    let definition = workflow.step_by_key(&step)?;
    let crate::workflow::model::StepKind::Plugin { uses, .. } = &definition.kind else {
        return None;
    };
    run.record(Event::StepStarted {
        step: step.clone(),
        attempt,
        input: input.clone(),
    });
    Some(CallSpec {
        step,
        attempt,
        plugin: uses.clone(),
        input,
        timeout: definition.timeout,
    })
}

/// Steps whose last attempt started but never finished: (step, attempt,
/// the input it was started with).
fn interrupted_calls(run: &LiveRun) -> Vec<(String, u32, Value)> {
    let mut out = Vec::new();
    for (step, record) in running_records(&run.state) {
        let StepState::Running { attempt } = record.state else {
            continue;
        };
        let input = run.history.iter().rev().find_map(|r| match &r.event {
            Event::StepStarted {
                step: s,
                attempt: a,
                input,
            } if s == step && *a == attempt => Some(input.clone()),
            _ => None,
        });
        if let Some(input) = input {
            out.push((step.clone(), attempt, input));
        }
    }
    out
}

/// The records of steps with an attempt in flight, top-level steps and
/// those inside loop elements (which only running elements have).
fn running_records(state: &RunState) -> impl Iterator<Item = (&String, &StepRecord)> {
    state
        .steps
        .iter()
        .chain(state.elements.iter())
        .filter(|(_, record)| matches!(record.state, StepState::Running { .. }))
}

/// Waits for the next finished call or the wake-up time, whichever comes
/// first.
async fn wait(calls: &mut JoinSet<Finished>, wake_at: Option<DateTime<Utc>>) -> Option<Finished> {
    let sleep = async {
        match wake_at {
            Some(at) => tokio::time::sleep((at - Utc::now()).to_std().unwrap_or_default()).await,
            None => std::future::pending().await,
        }
    };
    if calls.is_empty() {
        if wake_at.is_some() {
            sleep.await;
        }
        return None;
    }
    tokio::select! {
        joined = calls.join_next() => joined.and_then(|r| r.ok()),
        _ = sleep => None,
    }
}

/// A plugin's answer as the run sees it: JSON output or a step error.
fn to_step_result(result: Result<String, CallError>) -> Result<Value, StepError> {
    match result {
        Ok(text) => serde_json::from_str(&text).map_err(|e| {
            StepError::fatal(format!("the plugin returned output that is not JSON: {e}"))
        }),
        Err(e) => Err(StepError {
            message: e.to_string(),
            retryable: e.retryable(),
            code: e.code(),
        }),
    }
}
