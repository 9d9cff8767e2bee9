//! Durable runs per second and the latency of a 40-step chain, in-process
//! (store, engine and worker; no HTTP), on SQLite FULL, SQLite NORMAL and,
//! when `STEWARD_TEST_DATABASE_URL` is set, PostgreSQL.
//!
//!     cargo bench --bench durable_runs
//!     STEWARD_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench durable_runs
//!     cargo bench --bench durable_runs -- store    # the store alone

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::json;
use steward::catalog::Catalog;
use steward::config::Config;
use steward::engine::MemoryKeyValue;
use steward::executor::Executor;
use steward::plugins::load_plugins;
use steward::run::{Event, Recorded, RunState, Status};
use steward::store::{NewRun, SqliteSync, Store, StoreOptions};
use steward::worker::{self, WorkerOptions};
use steward::workflow::load_str;

/// The allocator the `steward` binary uses (see `src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ONE_STEP_RUNS: usize = 5_000;
const STORE_RUNS: usize = 20_000;
const CHAIN_RUNS: usize = 10;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        for (label, sync) in [
            ("SQLite FULL", SqliteSync::Full),
            ("SQLite NORMAL", SqliteSync::Normal),
        ] {
            let url = format!(
                "sqlite://{}/{}.db",
                dir.path().display(),
                label.replace(' ', "-")
            );
            let options = StoreOptions {
                sqlite_sync: sync,
                ..StoreOptions::default()
            };
            measure(label, &url, options).await;
        }
        match std::env::var("STEWARD_TEST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => {
                let schema = format!("bench_{}", std::process::id());
                measure(
                    "PostgreSQL",
                    &url,
                    StoreOptions {
                        schema: Some(schema),
                        ..StoreOptions::default()
                    },
                )
                .await;
            }
            _ => println!("PostgreSQL: skipped (STEWARD_TEST_DATABASE_URL is not set)"),
        }
    });
}

async fn measure(label: &str, url: &str, options: StoreOptions) {
    let store = Store::open(url, options).await.expect("store opens");
    println!("{label}:");
    // `cargo bench --bench durable_runs -- store` measures the store alone
    // (for profiling it without the engine's start-up).
    let store_only = std::env::args().any(|a| a == "store");
    // 64 runs in flight, and 256: a worker's default capacity.
    for (round, in_flight) in [64, 256].into_iter().enumerate() {
        println!(
            "  store alone, {in_flight} in flight: {:.0} durable runs/s",
            store_alone(&store, &format!("store{round}"), in_flight).await
        );
    }

    if store_only {
        store.close().await;
        return;
    }
    let set = load_plugins(
        &Config::default(),
        Arc::new(MemoryKeyValue::default()),
        false,
    )
    .unwrap();
    let catalog = Arc::new(Catalog::new(store.clone(), set.names()));
    let one =
        "name: one\nsteps:\n  - id: t\n    uses: transform\n    with: { n: \"${{ input.n }}\" }\n";
    let mut chain =
        String::from("name: chain\nsteps:\n  - id: s0\n    uses: transform\n    with: { n: 0 }\n");
    for i in 1..40 {
        chain.push_str(&format!(
            "  - id: s{i}\n    uses: transform\n    with: {{ n: \"${{{{ steps.s{}.output.n + 1 }}}}\" }}\n",
            i - 1
        ));
    }
    for source in [one.to_string(), chain] {
        catalog
            .deploy(
                load_str(&source, "bench.yaml", &catalog.plugins()).unwrap(),
                "bench",
            )
            .await
            .unwrap();
    }
    let executor = Executor::new(set.engine.clone(), json!({}));
    let worker = worker::spawn(
        store.clone(),
        executor,
        catalog.clone(),
        WorkerOptions::default(),
    );

    // Runs arrive concurrently, as API requests do.
    let started = Instant::now();
    let mut creators = tokio::task::JoinSet::new();
    for c in 0..64 {
        let (worker, workflow) = (worker.clone(), catalog.latest("one").unwrap());
        creators.spawn(async move {
            for n in (c..ONE_STEP_RUNS).step_by(64) {
                let id = format!("one-{n}");
                let input = json!({ "n": n });
                worker
                    .start(workflow.clone(), &id, &input, None, "bench")
                    .await
                    .unwrap();
            }
        });
    }
    while creators.join_next().await.is_some() {}
    wait_for(&store, ONE_STEP_RUNS as i64).await;
    let rate = ONE_STEP_RUNS as f64 / started.elapsed().as_secs_f64();
    println!("  1-step transform workflow: {rate:.0} runs/s end to end ({ONE_STEP_RUNS} runs)");

    let mut latencies = Vec::new();
    for n in 0..CHAIN_RUNS {
        let id = format!("chain-{n}");
        let input = json!({});
        let started = Instant::now();
        let workflow = catalog.latest("chain").unwrap();
        worker
            .start(workflow, &id, &input, None, "bench")
            .await
            .unwrap();
        loop {
            let row = store.run(&id).await.unwrap().unwrap();
            if row.status == "succeeded" {
                assert_eq!(row.output.unwrap()["s39"]["output"]["n"], 39);
                break;
            }
            assert!(row.status != "failed", "{:?}", row.error);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        latencies.push(started.elapsed());
    }
    latencies.sort();
    println!(
        "  40-step chain: median {:.1} ms (min {:.1} ms, {CHAIN_RUNS} runs)",
        latencies[CHAIN_RUNS / 2].as_secs_f64() * 1e3,
        latencies[0].as_secs_f64() * 1e3
    );
    worker.stop();
    store.close().await;
}

/// Runs written the way the executor writes a 1-step run (create, then one
/// append with three events), `in_flight` at a time.
async fn store_alone(store: &Store, prefix: &str, in_flight: usize) -> f64 {
    let before = store.count_by_status(Status::Succeeded).await.unwrap();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..in_flight {
        let store = store.clone();
        let prefix = prefix.to_string();
        tasks.spawn(async move {
            for n in (worker..STORE_RUNS).step_by(in_flight) {
                let id = format!("{prefix}-{n}");
                let input = json!({ "n": n });
                store
                    .create_run(NewRun {
                        id: &id,
                        workflow: "store",
                        version: 1,
                        input: &input,
                        idempotency_key: None,
                        started_by: None,
                        rerun_of: None,
                        parent: None,
                        lease: None,
                        placement: Default::default(),
                    })
                    .await
                    .unwrap();
                let mut state = RunState::new(&id, "store", 1, Utc::now());
                let events = [
                    Event::RunStarted {
                        input: input.clone(),
                        parent: None,
                    },
                    Event::StepStarted {
                        step: "t".into(),
                        attempt: 1,
                        input: input.clone(),
                    },
                    Event::StepSucceeded {
                        step: "t".into(),
                        attempt: 1,
                        output: input.clone(),
                    },
                    Event::RunSucceeded {
                        output: input.clone(),
                    },
                ];
                let recorded: Vec<Recorded> = events
                    .into_iter()
                    .enumerate()
                    .map(|(i, e)| Recorded::at(i as u64 + 1, chrono::Utc::now(), e))
                    .collect();
                for r in &recorded {
                    state.apply(r);
                }
                store
                    .append(&state, &recorded[1..], None, None)
                    .await
                    .unwrap();
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    assert_eq!(
        store.count_by_status(Status::Succeeded).await.unwrap() - before,
        STORE_RUNS as i64
    );
    STORE_RUNS as f64 / elapsed.as_secs_f64()
}

async fn wait_for(store: &Store, succeeded: i64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = store.count_by_status(Status::Succeeded).await.unwrap() - 2 * STORE_RUNS as i64;
        if done >= succeeded {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {succeeded} runs finished"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
