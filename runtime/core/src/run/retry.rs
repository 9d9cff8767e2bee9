//! Retrying a finished run from a step (`POST /v1/runs/{id}/retry`): which
//! step records the retry discards, so the planner runs those steps again
//! while the others keep their outputs. Pure: the caller records the
//! answer as [`super::Event::RunRetried`].
//!
//! The rules, on the workflow version the run continues on:
//! - Without `from_step`, the run resumes at the first top-level step that
//!   did not succeed or skip (the one that failed, was rejected or was in
//!   progress when the run was cancelled). When that step is a `parallel`
//!   group, the group and its branches that did not finish are reset; the
//!   branches that succeeded keep their outputs.
//! - With `from_step`, that step and every step after it are reset. A step
//!   inside a `parallel` group resets the whole group (its branches run
//!   together again), since the group's output is built from all of them.
//! - Every step after the resume point is reset too.
//! - A step that finished and is kept must exist in the version the run
//!   continues on (it can differ when the retry upgrades the run);
//!   otherwise the retry is refused, naming those steps.
//!
//! SLA escalations (`sla:...`) are never reset: the SLA clock keeps running
//! from the run's start.

use std::collections::BTreeSet;

use super::state::{RunState, StepState};
use crate::workflow::{Step, StepKind, Workflow};

/// What a retry does to a run's steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPlan {
    /// The top-level step the run resumes at; `None` when every step had
    /// finished (only the run's output is made again).
    pub resume_at: Option<String>,
    /// The steps whose records are discarded, in the workflow's order.
    pub reset: Vec<String>,
}

/// Why a run cannot be retried as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetryError {
    #[error(
        "from_step {step:?} is not a step of workflow {workflow} version {version}: use one of {}",
        known.join(", ")
    )]
    UnknownStep {
        step: String,
        workflow: String,
        version: u32,
        /// Every step of that version, parallel branches included, in
        /// file order.
        known: Vec<String>,
    },
    #[error(
        "version {version} of workflow {workflow} has no step {}, which the run finished and a retry keeps: retry without upgrade, or from a step before {}",
        steps.join(", "),
        if steps.len() == 1 { "it" } else { "them" }
    )]
    MissingSteps {
        workflow: String,
        version: u32,
        steps: Vec<String>,
    },
}

/// Which steps a retry of `state` on `workflow` (the run's version, or the
/// one it is upgraded to) resets, resuming at `from_step` or else at the
/// step that ended the run.
pub fn plan_retry(
    workflow: &Workflow,
    state: &RunState,
    from_step: Option<&str>,
) -> Result<RetryPlan, RetryError> {
    let tops = &workflow.steps;
    let mut reset = BTreeSet::new();
    let start = match from_step {
        Some(wanted) => {
            let index = tops
                .iter()
                .position(|top| subtree(top).iter().any(|s| s.id == wanted))
                .ok_or_else(|| RetryError::UnknownStep {
                    step: wanted.to_string(),
                    workflow: workflow.name.clone(),
                    version: workflow.version,
                    known: workflow.all_steps().iter().map(|s| s.id.clone()).collect(),
                })?;
            reset_all(&tops[index], state, &mut reset);
            index
        }
        None => {
            let index = tops
                .iter()
                .position(|top| !finished(state, &top.id))
                .unwrap_or(tops.len());
            if let Some(top) = tops.get(index) {
                reset_unfinished(top, state, &mut reset);
            }
            index
        }
    };
    for top in tops.iter().skip(start + 1) {
        reset_all(top, state, &mut reset);
    }
    // Records of steps this version lacks (the run ran another version):
    // unfinished ones go, finished ones would be kept and cannot be.
    let known: BTreeSet<&str> = workflow.all_steps().iter().map(|s| s.id.as_str()).collect();
    let mut missing = Vec::new();
    let mut extra = Vec::new();
    for id in state.steps.keys() {
        if known.contains(id.as_str()) || id.starts_with("sla:") {
            continue;
        }
        if finished(state, id) {
            missing.push(id.clone());
        } else {
            extra.push(id.clone());
        }
    }
    if !missing.is_empty() {
        return Err(RetryError::MissingSteps {
            workflow: workflow.name.clone(),
            version: workflow.version,
            steps: missing,
        });
    }
    let mut ordered: Vec<String> = workflow
        .all_steps()
        .iter()
        .filter(|s| reset.contains(s.id.as_str()))
        .map(|s| s.id.clone())
        .collect();
    ordered.extend(extra);
    Ok(RetryPlan {
        resume_at: tops.get(start).map(|s| s.id.clone()),
        reset: ordered,
    })
}

/// Whether `step` succeeded or was skipped.
fn finished(state: &RunState, step: &str) -> bool {
    state
        .steps
        .get(step)
        .is_some_and(|r| matches!(r.state, StepState::Succeeded | StepState::Skipped))
}

/// `step` and, for a parallel group, every step inside it.
fn subtree(step: &Step) -> Vec<&Step> {
    let mut out = vec![step];
    match &step.kind {
        StepKind::Parallel(branches) => {
            for branch in branches {
                out.extend(subtree(branch));
            }
        }
        // A loop runs again as a whole: its elements' records go with it.
        StepKind::ForEach(each) => {
            for inner in &each.steps {
                out.extend(subtree(inner));
            }
        }
        _ => {}
    }
    out
}

/// Resets every step of `step`'s subtree that has a record.
fn reset_all<'a>(step: &'a Step, state: &RunState, reset: &mut BTreeSet<&'a str>) {
    for s in subtree(step) {
        if state.steps.contains_key(&s.id) {
            reset.insert(&s.id);
        }
    }
}

/// Resets `step` unless it finished; of a group, only the branches that
/// did not finish.
fn reset_unfinished<'a>(step: &'a Step, state: &RunState, reset: &mut BTreeSet<&'a str>) {
    if finished(state, &step.id) {
        return;
    }
    if state.steps.contains_key(&step.id) {
        reset.insert(&step.id);
    }
    if let StepKind::Parallel(branches) = &step.kind {
        for branch in branches {
            reset_unfinished(branch, state, reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use serde_json::{Value, json};

    use super::*;
    use crate::run::event::{Event, Recorded, StepError};
    use crate::run::state::Status;

    fn workflow(yaml: &str) -> Workflow {
        let plugins = ["transform".to_string()].into();
        crate::workflow::load_str(yaml, "w.yaml", &plugins).unwrap()
    }

    const THREE: &str = "name: three\nsteps:\n  - id: a\n    uses: transform\n    with: {}\n  - id: b\n    uses: transform\n    with: {}\n  - id: c\n    uses: transform\n    with: {}\n";

    const GROUP: &str = "name: group\nsteps:\n  - id: a\n    uses: transform\n    with: {}\n  - id: both\n    parallel:\n      - id: left\n        uses: transform\n        with: {}\n      - id: right\n        uses: transform\n        with: {}\n  - id: c\n    uses: transform\n    with: {}\n";

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    /// A run folded from `events`, numbered in order.
    fn run(events: Vec<Event>) -> RunState {
        let mut state = RunState::new("r1", "three", 1, at(0));
        for (i, event) in events.into_iter().enumerate() {
            state.apply(&Recorded::at(i as u64 + 1, at(i as i64), event));
        }
        state
    }

    fn ok(step: &str) -> Vec<Event> {
        vec![
            Event::StepStarted {
                step: step.into(),
                attempt: 1,
                input: json!({}),
            },
            Event::StepSucceeded {
                step: step.into(),
                attempt: 1,
                output: json!({ "from": step }),
            },
        ]
    }

    fn failed(step: &str) -> Vec<Event> {
        vec![
            Event::StepStarted {
                step: step.into(),
                attempt: 1,
                input: json!({}),
            },
            Event::StepFailed {
                step: step.into(),
                attempt: 1,
                error: StepError::fatal("vendor said no"),
                retry_at: None,
            },
        ]
    }

    fn run_failed() -> Event {
        Event::RunFailed {
            error: StepError::fatal("step b failed"),
        }
    }

    fn retried(reset: &[&str], input: Option<Value>, version: Option<u32>) -> Event {
        Event::RunRetried {
            by: "ana".into(),
            from_step: None,
            reset: reset.iter().map(|s| s.to_string()).collect(),
            input,
            version,
            idempotency_key: None,
        }
    }

    fn started() -> Event {
        Event::RunStarted {
            input: json!({ "n": 1 }),
            parent: None,
        }
    }

    #[test]
    fn a_retry_resumes_at_the_failed_step_and_keeps_the_ones_before() {
        let state = run([vec![started()], ok("a"), failed("b"), vec![run_failed()]].concat());
        let plan = plan_retry(&workflow(THREE), &state, None).unwrap();
        assert_eq!(plan.resume_at.as_deref(), Some("b"));
        assert_eq!(plan.reset, ["b"]);
    }

    #[test]
    fn from_step_resets_that_step_and_every_one_after() {
        let state = run([
            vec![started()],
            ok("a"),
            ok("b"),
            failed("c"),
            vec![run_failed()],
        ]
        .concat());
        let plan = plan_retry(&workflow(THREE), &state, Some("a")).unwrap();
        assert_eq!(plan.reset, ["a", "b", "c"]);
        let plan = plan_retry(&workflow(THREE), &state, Some("b")).unwrap();
        assert_eq!(plan.resume_at.as_deref(), Some("b"));
        assert_eq!(plan.reset, ["b", "c"]);
    }

    #[test]
    fn an_unknown_from_step_is_named_with_the_steps_there_are() {
        let state = run([vec![started()], failed("a"), vec![run_failed()]].concat());
        let error = plan_retry(&workflow(GROUP), &state, Some("nope")).unwrap_err();
        assert_eq!(
            error,
            RetryError::UnknownStep {
                step: "nope".into(),
                workflow: "group".into(),
                version: 1,
                known: ["a", "both", "left", "right", "c"]
                    .map(String::from)
                    .to_vec(),
            }
        );
        assert!(
            error
                .to_string()
                .contains("use one of a, both, left, right, c")
        );
    }

    #[test]
    fn a_failed_branch_resets_its_group_but_keeps_the_branches_that_succeeded() {
        let group_failed = Event::StepFailed {
            step: "both".into(),
            attempt: 1,
            error: StepError::fatal("right failed"),
            retry_at: None,
        };
        let state = run([
            vec![started()],
            ok("a"),
            ok("left"),
            failed("right"),
            vec![group_failed, run_failed()],
        ]
        .concat());
        let plan = plan_retry(&workflow(GROUP), &state, None).unwrap();
        assert_eq!(plan.resume_at.as_deref(), Some("both"));
        assert_eq!(plan.reset, ["both", "right"]);
        // Asked for by a branch's id, the whole group runs again.
        let plan = plan_retry(&workflow(GROUP), &state, Some("right")).unwrap();
        assert_eq!(plan.reset, ["both", "left", "right"]);
    }

    #[test]
    fn an_upgrade_must_keep_every_finished_step() {
        let state = run([
            vec![started()],
            ok("a"),
            ok("b"),
            failed("c"),
            vec![run_failed()],
        ]
        .concat());
        let without_b = workflow(
            "name: three\nversion: 2\nsteps:\n  - id: a\n    uses: transform\n    with: {}\n  - id: c\n    uses: transform\n    with: {}\n",
        );
        let error = plan_retry(&without_b, &state, None).unwrap_err();
        assert_eq!(
            error,
            RetryError::MissingSteps {
                workflow: "three".into(),
                version: 2,
                steps: vec!["b".into()],
            }
        );
        assert!(error.to_string().contains("has no step b"), "{error}");
        // A version that lacks only the failed step drops its record.
        let state = run([vec![started()], ok("a"), failed("b"), vec![run_failed()]].concat());
        let plan = plan_retry(&without_b, &state, None).unwrap();
        assert_eq!(plan.resume_at.as_deref(), Some("c"));
        assert_eq!(plan.reset, ["b"]);
    }

    #[test]
    fn run_retried_makes_a_finished_run_live_and_late_results_change_nothing() {
        let mut events = [vec![started()], ok("a"), failed("b"), vec![run_failed()]].concat();
        // A late result of an abandoned call, after the run ended.
        events.push(Event::StepSucceeded {
            step: "b".into(),
            attempt: 1,
            output: json!("late"),
        });
        let before = run(events.clone());
        assert_eq!(before.status, Status::Failed);
        assert_eq!(before.step("b").state, StepState::Failed);

        events.push(retried(&["b"], Some(json!({ "n": 2 })), Some(3)));
        let after = run(events.clone());
        assert_eq!(after.status, Status::Running);
        assert_eq!(after.finished_at, None);
        assert_eq!(after.error, None);
        assert_eq!(after.output, None);
        assert_eq!(after.input, json!({ "n": 2 }));
        assert_eq!(after.version, 3);
        assert!(!after.steps.contains_key("b"), "b's record is discarded");
        assert_eq!(after.step("a").output, Some(json!({ "from": "a" })));
        assert_eq!((after.generation("a"), after.generation("b")), (1, 2));

        // The retried step runs and the run succeeds; a second retry is
        // ignored on a succeeded run.
        events.extend(ok("b"));
        events.push(Event::RunSucceeded { output: json!(1) });
        events.push(retried(&["b"], None, None));
        let done = run(events);
        assert_eq!(done.status, Status::Succeeded);
        assert_eq!(done.generation("b"), 2);
    }

    #[test]
    fn each_retry_that_resets_a_step_advances_its_generation_and_keys() {
        let mut events = [vec![started()], ok("a"), failed("b"), vec![run_failed()]].concat();
        events.push(retried(&["b"], None, None));
        events.extend(failed("b"));
        events.push(run_failed());
        events.push(retried(&["a", "b"], None, None));
        let state = run(events);
        assert_eq!((state.generation("a"), state.generation("b")), (2, 3));
        assert_eq!(state.generation("c"), 1);
        let key = |step: &str| crate::run::idempotency_key("r1", step, state.generation(step));
        assert_eq!(key("a"), "r1/a#2");
        assert_eq!(key("b"), "r1/b#3");
        assert_eq!(key("c"), "r1/c");
        assert_eq!(crate::run::approval_id("r1", "ok", 0, 1), "r1.ok.0");
        assert_eq!(crate::run::approval_id("r1", "ok", 1, 2), "r1.ok~2.1");
    }
}
