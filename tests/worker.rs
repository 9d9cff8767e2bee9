//! The worker in-process, against a real store and engine: how it takes
//! work that nothing announced.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use steward::catalog::Catalog;
use steward::config::Config;
use steward::engine::MemoryKeyValue;
use steward::executor::Executor;
use steward::plugins::load_plugins;
use steward::run::Status;
use steward::store::{NewRun, Store, StoreOptions};
use steward::worker::{self, WorkerOptions};
use steward::workflow::load_str;

const ONE: &str =
    "name: one\nsteps:\n  - id: t\n    uses: transform\n    with: { n: \"${{ input.n }}\" }\n";

#[tokio::test]
async fn a_backlog_is_worked_off_as_slots_free_up_not_one_batch_per_poll() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/steward.db", dir.path().display());
    let store = Store::open(&url, StoreOptions::default()).await.unwrap();
    let set = load_plugins(
        &Config::default(),
        Arc::new(MemoryKeyValue::default()),
        false,
    )
    .unwrap();
    let catalog = Arc::new(Catalog::new(store.clone(), set.names()));
    catalog
        .deploy(load_str(ONE, "one.yaml", &catalog.plugins()).unwrap())
        .await
        .unwrap();
    // A backlog of ten times the worker's capacity, created behind its back
    // (no announcement wakes it).
    const RUNS: usize = 160;
    for n in 0..RUNS {
        let input = json!({ "n": n });
        store
            .create_run(NewRun {
                id: &format!("r{n}"),
                workflow: "one",
                version: 1,
                input: &input,
                idempotency_key: None,
                lease: None,
                placement: Default::default(),
            })
            .await
            .unwrap();
    }
    let started = Instant::now();
    let worker = worker::spawn(
        store.clone(),
        Executor::new(set.engine.clone(), json!({})),
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
