//! The worker in-process, against a real store and engine: how it takes
//! work that nothing announced.

use crate::common;

use std::time::{Duration, Instant};

use common::in_process;
use serde_json::json;
use steward::run::Status;
use steward::store::{Store, StoreOptions};
use steward::worker::{self, WorkerOptions};

const ONE: &str =
    "name: one\nsteps:\n  - id: t\n    uses: transform\n    with: { n: \"${{ input.n }}\" }\n";

#[tokio::test]
async fn a_backlog_is_worked_off_as_slots_free_up_not_one_batch_per_poll() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/steward.db", dir.path().display());
    let store = Store::open(&url, StoreOptions::default()).await.unwrap();
    let (catalog, executor) = in_process::deployed(&store, ONE).await;
    // A backlog of ten times the worker's capacity, created behind its back
    // (no announcement wakes it).
    const RUNS: usize = 160;
    for n in 0..RUNS {
        let input = json!({ "n": n });
        store
            .create_run(in_process::unleased(&format!("r{n}"), "one", &input))
            .await
            .unwrap();
    }
    let started = Instant::now();
    let worker = worker::spawn(
        store.clone(),
        executor,
        catalog,
        WorkerOptions {
            capacity: 16,
            // One batch per poll would take ten minutes.
            poll: Duration::from_secs(60),
            ..WorkerOptions::default()
        },
    );
    loop {
        let done = store.count_by_status(Status::Succeeded).await.unwrap();
        if done == RUNS as i64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "only {done} of {RUNS} runs finished: the worker waited for its poll"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.stop();
}

/// Records the kinds of events each persist wrote, in order.
#[derive(Default)]
struct CountingJournal {
    writes: Vec<Vec<String>>,
}

impl steward::executor::Journal for CountingJournal {
    async fn persist(
        &mut self,
        _: &steward::run::RunState,
        events: &[steward::run::Recorded],
        _: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Option<String>, steward::run::JournalError> {
        self.writes.push(
            events
                .iter()
                .map(|r| {
                    let debug = format!("{:?}", r.event);
                    debug
                        .split([' ', '{', '('])
                        .next()
                        .unwrap_or_default()
                        .to_string()
                })
                .collect(),
        );
        Ok(None)
    }

    async fn cancel_requested(
        &mut self,
        _: &str,
    ) -> Result<Option<String>, steward::run::JournalError> {
        Ok(None)
    }

    async fn approval_decisions(
        &mut self,
        _: &steward::store::ApprovalRow,
    ) -> Result<Vec<steward::store::Decision>, steward::run::JournalError> {
        Ok(Vec::new())
    }

    async fn close_approval(&mut self, _: &str) -> Result<(), steward::run::JournalError> {
        Ok(())
    }

    async fn close_run_approvals(&mut self, _: &str) -> Result<(), steward::run::JournalError> {
        Ok(())
    }
}

/// A step whose plugin can change nothing outside its call (transform) is
/// written once, with its outcome; a step whose plugin can (assign keeps
/// counters in its key-value store) is durable before it runs, so a crash
/// re-runs it under the same idempotency key.
#[tokio::test]
async fn a_contained_step_is_written_with_its_outcome_others_before_they_run() {
    use std::sync::Arc;
    use steward::executor::{Executor, LiveRun};
    use steward::run::{Event, Recorded, RunState};

    let set = steward::plugins::load_plugins(
        &steward::config::Config::default(),
        Arc::new(steward::engine::MemoryKeyValue::default()),
        false,
    )
    .unwrap();
    assert!(set.engine.is_contained("transform"));
    assert!(!set.engine.is_contained("assign"));
    assert!(!set.engine.is_contained("no-such-plugin"));
    let executor = Executor::new(set.engine.clone(), json!({}));
    const ASSIGN: &str =
        "name: pick\nsteps:\n  - id: a\n    uses: assign\n    with: { group: oncall }\n";
    for (yaml, first_write) in [
        (ONE, vec!["StepStarted", "StepSucceeded", "RunSucceeded"]),
        (ASSIGN, vec!["StepStarted"]),
    ] {
        let workflow = steward::workflow::load_str(yaml, "w.yaml", &set.names()).unwrap();
        let now = chrono::Utc::now();
        let input = json!({"n": 1});
        let started = Recorded {
            seq: 1,
            at: now,
            event: Event::RunStarted {
                input: input.clone(),
                parent: None,
            },
        };
        let mut run = LiveRun::resume(RunState::new("r1", &workflow.name, 1, now), vec![started]);
        let mut journal = CountingJournal::default();
        executor
            .drive(&workflow, &mut run, &mut journal, true)
            .await
            .unwrap();
        assert!(run.state.status.is_terminal(), "{yaml}: {:?}", run.state);
        assert_eq!(
            journal.writes[0], first_write,
            "{yaml}: {:?}",
            journal.writes
        );
        let expected_writes = if first_write.len() == 1 { 2 } else { 1 };
        assert_eq!(
            journal.writes.len(),
            expected_writes,
            "{yaml}: {:?}",
            journal.writes
        );
    }
}
