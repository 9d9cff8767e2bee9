//! Signals as data: a delivery of an outside event (over the API or a
//! webhook), the open wait of a `wait_for` step that may take it, and which
//! deliveries a wait accepts. The store keeps deliveries and who took them;
//! the executor asks for candidates before every plan and records the one
//! its step took as [`super::Event::SignalReceived`].

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::state::{RunState, StepState};
use crate::workflow::expr::Scope;
use crate::workflow::model::SignalWait;

/// One delivery of a signal.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SignalDelivery {
    pub id: String,
    pub name: String,
    /// The run it was addressed to (`POST /v1/runs/{id}/signals/{name}`);
    /// `None` for a keyed delivery, which is for every run waiting with
    /// its key.
    pub run_id: Option<String>,
    pub key: Option<String>,
    pub payload: Value,
    pub received_at: DateTime<Utc>,
    /// The step of the asking run that took it already, if any: a worker
    /// that took it and died before recording it finds it again.
    pub taken_by: Option<String>,
}

/// A `wait_for` step of a run waiting for a signal, as the store keeps it
/// so keyed deliveries can wake the runs they are for.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenSignalWait {
    pub run_id: String,
    pub step: String,
    pub signal: String,
    pub key: Option<String>,
    pub opened_at: DateTime<Utc>,
}

/// A key as deliveries and waits compare it: a string as it is (trimmed),
/// a number or a boolean as its JSON text; anything else (null, a list, an
/// object, an empty string) is no key.
pub fn key_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The `wait_for` steps of `state` that wait for a signal now.
pub fn open_waits(state: &RunState) -> Vec<OpenSignalWait> {
    state
        .steps
        .iter()
        .filter_map(|(step, record)| match &record.state {
            StepState::AwaitingSignal { signal, key, .. } => Some(OpenSignalWait {
                run_id: state.id.clone(),
                step: step.clone(),
                signal: signal.clone(),
                key: key.clone(),
                opened_at: record.started_at.unwrap_or(state.started_at),
            }),
            _ => None,
        })
        .collect()
}

/// Whether `wait`'s `match` accepts a delivery with `payload` (as the
/// variable `signal`); without `match`, every delivery is accepted. An
/// expression that fails on the payload (a missing key) does not accept it:
/// the delivery is left for others.
pub fn accepts(wait: &SignalWait, scope: &Scope, payload: &Value) -> bool {
    match &wait.matches {
        None => true,
        Some(template) => matches!(
            template.render_with(scope, &[("signal", payload)]),
            Ok(Value::Bool(true))
        ),
    }
}

/// The deliveries among `candidates` that `step` should try to take, in
/// order: the one it took already (after a crash) alone, else those its
/// `match` accepts, oldest first.
pub fn to_take<'a>(
    wait: &SignalWait,
    scope: &Scope,
    step: &str,
    candidates: &'a [SignalDelivery],
) -> Vec<&'a SignalDelivery> {
    if let Some(taken) = candidates
        .iter()
        .find(|d| d.taken_by.as_deref() == Some(step))
    {
        return vec![taken];
    }
    let mut fresh: Vec<&SignalDelivery> = candidates
        .iter()
        .filter(|d| d.taken_by.is_none() && accepts(wait, scope, &d.payload))
        .collect();
    fresh.sort_by(|a, b| (a.received_at, &a.id).cmp(&(b.received_at, &b.id)));
    fresh
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groups::GroupSnapshot;
    use crate::run::event::{Event, Recorded};
    use crate::run::plan::{Action, PlanContext, expression_scope, plan};
    use crate::run::state::Status;
    use crate::workflow::{StepKind, Workflow};

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn workflow(wait_for: &str) -> Workflow {
        let yaml = format!(
            "name: w\nsteps:\n  - id: answer\n    wait_for: {wait_for}\n  - id: next\n    uses: transform\n    with: {{ got: \"${{{{ steps.answer.output }}}}\" }}\n"
        );
        let plugins = ["transform".to_string()].into();
        crate::workflow::load_str(&yaml, "w.yaml", &plugins).unwrap()
    }

    fn started(input: Value, now: DateTime<Utc>) -> RunState {
        let mut state = RunState::new("r1", "w", 1, now);
        state.apply(&Recorded::at(
            1,
            now,
            Event::RunStarted {
                input,
                parent: None,
            },
        ));
        state
    }

    /// Plans at `now` and applies what it records; answers the events.
    fn step(workflow: &Workflow, state: &mut RunState, now: DateTime<Utc>) -> Vec<Event> {
        let planned = plan(
            workflow,
            state,
            &PlanContext::default(),
            &GroupSnapshot::default(),
            now,
        );
        let mut events = Vec::new();
        for action in planned.actions {
            if let Action::Record(event) = action {
                let seq = state.steps.len() as u64 + 10;
                state.apply(&Recorded::at(seq, now, event.clone()));
                events.push(event);
            }
        }
        events
    }

    #[test]
    fn a_wait_opens_with_its_rendered_key_and_deadline_and_the_run_waits() {
        let workflow = workflow("{ signal: ticket-updated, key: \"${{ input.n }}\", timeout: 1h }");
        let now = at("2026-12-02T10:00:00Z");
        let mut state = started(serde_json::json!({"n": 7}), now);
        let events = step(&workflow, &mut state, now);
        assert_eq!(
            events,
            [Event::SignalAwaited {
                step: "answer".into(),
                signal: "ticket-updated".into(),
                key: Some("7".into()),
                due: Some(at("2026-12-02T11:00:00Z")),
            }]
        );
        assert_eq!(state.status, Status::Waiting);
        assert_eq!(state.steps["answer"].started_at, Some(now));
        let waits = open_waits(&state);
        assert_eq!(waits.len(), 1);
        assert_eq!(waits[0].key.as_deref(), Some("7"));
        // Nothing to do until the deadline, which is when to look again.
        let idle = plan(
            &workflow,
            &state,
            &PlanContext::default(),
            &GroupSnapshot::default(),
            now,
        );
        assert!(idle.actions.is_empty(), "{idle:?}");
        assert_eq!(idle.wake_at, Some(at("2026-12-02T11:00:00Z")));
    }

    #[test]
    fn a_received_signal_is_the_steps_output_and_later_steps_read_it() {
        let workflow = workflow("{ signal: answered }");
        let now = at("2026-12-02T10:00:00Z");
        let mut state = started(serde_json::json!({}), now);
        step(&workflow, &mut state, now);
        assert!(open_waits(&state)[0].key.is_none());
        let later = at("2026-12-02T10:05:00Z");
        state.apply(&Recorded::at(
            5,
            later,
            Event::SignalReceived {
                step: "answer".into(),
                signal: "answered".into(),
                delivery: "d1".into(),
                payload: serde_json::json!({"ok": true}),
            },
        ));
        let record = &state.steps["answer"];
        assert_eq!(record.output, Some(serde_json::json!({"ok": true})));
        assert_eq!(
            (record.started_at, record.finished_at),
            (Some(now), Some(later))
        );
        assert!(open_waits(&state).is_empty());
        let next = plan(
            &workflow,
            &state,
            &PlanContext::default(),
            &GroupSnapshot::default(),
            later,
        );
        assert!(
            matches!(&next.actions[..], [Action::Call { step, input, .. }]
                if step == "next" && input == &serde_json::json!({"got": {"ok": true}})),
            "{next:?}"
        );
    }

    #[test]
    fn at_the_deadline_the_step_fails_or_continues_with_null() {
        let now = at("2026-12-02T10:00:00Z");
        let due = at("2026-12-02T10:00:30Z");
        let strict = workflow("{ signal: answered, timeout: 30s }");
        let mut state = started(serde_json::json!({}), now);
        step(&strict, &mut state, now);
        let failed = step(&strict, &mut state, due);
        match &failed[..] {
            [
                Event::StepFailed {
                    step,
                    error,
                    retry_at: None,
                    ..
                },
            ] => {
                assert_eq!(step, "answer");
                assert!(
                    error
                        .message
                        .contains("no answered signal arrived within 30s"),
                    "{}",
                    error.message
                );
            }
            other => panic!("{other:?}"),
        }
        step(&strict, &mut state, due);
        assert_eq!(state.status, Status::Failed);

        let lenient = workflow("{ signal: answered, timeout: 30s, on_timeout: continue }");
        let mut state = started(serde_json::json!({}), now);
        step(&lenient, &mut state, now);
        assert_eq!(
            step(&lenient, &mut state, due),
            [Event::StepSucceeded {
                step: "answer".into(),
                attempt: 1,
                output: Value::Null,
            }]
        );
    }

    #[test]
    fn a_key_that_is_not_a_string_or_a_number_fails_the_step() {
        let workflow = workflow("{ signal: s, key: \"${{ input.k }}\" }");
        let now = at("2026-12-02T10:00:00Z");
        let mut state = started(serde_json::json!({"k": {"x": 1}}), now);
        match &step(&workflow, &mut state, now)[..] {
            [Event::StepFailed { error, .. }] => assert!(
                error
                    .message
                    .contains("wait_for.key: expected a string or a number"),
                "{}",
                error.message
            ),
            other => panic!("{other:?}"),
        }
    }

    fn delivery(id: &str, second: u32, payload: Value, taken_by: Option<&str>) -> SignalDelivery {
        SignalDelivery {
            id: id.into(),
            name: "state".into(),
            run_id: Some("r1".into()),
            key: None,
            payload,
            received_at: at(&format!("2026-12-02T10:00:{second:02}Z")),
            taken_by: taken_by.map(str::to_string),
        }
    }

    #[test]
    fn a_step_takes_what_it_took_before_else_what_its_match_accepts_oldest_first() {
        let workflow = workflow("{ signal: state, match: \"${{ signal.state == 'closed' }}\" }");
        let StepKind::Signal(wait) = &workflow.step("answer").unwrap().kind else {
            panic!("a wait_for step");
        };
        let state = started(serde_json::json!({}), at("2026-12-02T10:00:00Z"));
        let scope = expression_scope(&state, &Value::Null);
        let closed = serde_json::json!({"state": "closed"});
        let candidates = [
            delivery("late", 9, closed.clone(), None),
            delivery("open", 1, serde_json::json!({"state": "open"}), None),
            delivery("no-state", 2, serde_json::json!({}), None),
            delivery("early", 3, closed.clone(), None),
        ];
        let ids: Vec<&str> = to_take(wait, &scope, "answer", &candidates)
            .iter()
            .map(|d| d.id.as_str())
            .collect();
        assert_eq!(ids, ["early", "late"], "a failing match accepts nothing");

        // After a crash between the take and its event: the same one again.
        let mut again = candidates.to_vec();
        again.push(delivery(
            "taken",
            5,
            serde_json::json!({"state": "open"}),
            Some("answer"),
        ));
        let ids: Vec<&str> = to_take(wait, &scope, "answer", &again)
            .iter()
            .map(|d| d.id.as_str())
            .collect();
        assert_eq!(ids, ["taken"]);
    }

    #[test]
    fn keys_are_strings_or_the_text_of_numbers() {
        assert_eq!(key_text(&serde_json::json!(" INC1 ")), Some("INC1".into()));
        assert_eq!(key_text(&serde_json::json!(42)), Some("42".into()));
        assert_eq!(key_text(&serde_json::json!(true)), Some("true".into()));
        assert_eq!(key_text(&serde_json::json!("")), None);
        assert_eq!(key_text(&Value::Null), None);
        assert_eq!(key_text(&serde_json::json!([1])), None);
    }
}
