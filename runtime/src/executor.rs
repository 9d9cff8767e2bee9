//! Drives runs: asks the interpreter what to do, records it, calls plugins
//! through the engine, and records their results. Steps of a `parallel`
//! group run concurrently; a run waits for timers and retries without
//! busy-looping.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::task::JoinSet;

use crate::engine::{CallError, CallRequest, Engine, StepContext};
use crate::run::{
    Action, Event, Recorded, RunState, StepError, idempotency_key, outcome_event, plan,
};
use crate::workflow::Workflow;

/// Runs workflows against an engine.
#[derive(Clone)]
pub struct Executor {
    engine: Engine,
    /// `env.*` in expressions.
    env: Value,
}

/// A finished run and its whole history.
#[derive(Debug)]
pub struct RunOutcome {
    pub state: RunState,
    pub history: Vec<Recorded>,
}

/// One completed plugin call, on its way back to the run.
struct Finished {
    step: String,
    attempt: u32,
    result: Result<Value, StepError>,
}

impl Executor {
    pub fn new(engine: Engine, env: Value) -> Executor {
        Executor { engine, env }
    }

    /// Runs `workflow` on `input` to its end, in this process. The input
    /// must already have passed the workflow's schema.
    pub async fn run(&self, workflow: Arc<Workflow>, run_id: &str, input: Value) -> RunOutcome {
        let mut run = LiveRun {
            state: RunState::new(run_id, &workflow.name, workflow.version, Utc::now()),
            history: Vec::new(),
        };
        run.record(Event::RunStarted { input });
        let mut calls: JoinSet<Finished> = JoinSet::new();
        loop {
            let now = Utc::now();
            let next = plan(&workflow, &run.state, &self.env, now);
            let progressed = !next.actions.is_empty();
            for action in next.actions {
                match action {
                    Action::Record(event) => run.record(event),
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
                        let request = CallRequest {
                            plugin,
                            context: StepContext {
                                run_id: run_id.to_string(),
                                workflow: workflow.name.clone(),
                                step_id: step.clone(),
                                attempt,
                                idempotency_key: idempotency_key(run_id, &step),
                            },
                            input: input.to_string(),
                            timeout,
                        };
                        let engine = self.engine.clone();
                        calls.spawn(async move {
                            let outcome = engine.call(request.clone()).await;
                            for line in &outcome.logs {
                                tracing::info!(run = %request.context.run_id, step = %step, plugin = %request.plugin, level = %line.level, "{}", line.message);
                            }
                            Finished { step, attempt, result: to_step_result(outcome.result) }
                        });
                    }
                }
            }
            if run.state.status.is_terminal() {
                break;
            }
            if progressed {
                continue;
            }
            match self.wait(&mut calls, next.wake_at).await {
                Some(finished) => {
                    let Some(step) = workflow.step(&finished.step) else {
                        continue;
                    };
                    run.record(outcome_event(
                        step,
                        finished.attempt,
                        finished.result,
                        Utc::now(),
                    ));
                }
                None if calls.is_empty() && next.wake_at.is_none() => {
                    run.record(Event::RunFailed {
                        error: StepError::fatal(
                            "the run cannot make progress (no step is runnable)",
                        ),
                    });
                }
                None => {}
            }
        }
        calls.abort_all();
        RunOutcome {
            state: run.state,
            history: run.history,
        }
    }

    /// Waits for the next finished call or the wake-up time, whichever
    /// comes first.
    async fn wait(
        &self,
        calls: &mut JoinSet<Finished>,
        wake_at: Option<DateTime<Utc>>,
    ) -> Option<Finished> {
        let sleep = async {
            match wake_at {
                Some(at) => {
                    let delay = (at - Utc::now()).to_std().unwrap_or_default();
                    tokio::time::sleep(delay).await
                }
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
}

/// A run in memory: its history and the state folded from it.
struct LiveRun {
    state: RunState,
    history: Vec<Recorded>,
}

impl LiveRun {
    fn record(&mut self, event: Event) {
        let recorded = Recorded::now(self.history.len() as u64 + 1, event);
        self.state.apply(&recorded);
        self.history.push(recorded);
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
