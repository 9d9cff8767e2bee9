//! The worker in-process, against a real store and engine: how it takes
//! work that nothing announced.

mod common;

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
