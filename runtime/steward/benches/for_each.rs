//! A `for_each` over 10,000 elements with a `transform` body at
//! `concurrency: 100`, in-process (store, engine and worker; no HTTP) on
//! SQLite FULL: elements per second end to end, and the size of the run's
//! history.
//!
//!     cargo bench --bench for_each

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use steward::catalog::Catalog;
use steward::config::Config;
use steward::engine::MemoryKeyValue;
use steward::executor::Executor;
use steward::plugins::load_plugins;
use steward::store::{SqliteSync, Store, StoreOptions};
use steward::worker::{self, WorkerOptions};
use steward::workflow::load_str;

/// The allocator the `steward` binary uses (see `src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ELEMENTS: usize = 10_000;
const ROUNDS: usize = 3;

const WORKFLOW: &str = "name: fan-out
steps:
  - id: each
    for_each: ${{ input.items }}
    concurrency: 100
    steps:
      - id: shape
        uses: transform
        with: { sku: \"${{ item.sku }}\", n: \"${{ index }}\" }
output: { count: \"${{ size(steps.each.output) }}\" }
";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/loop.db", dir.path().display());
        let options = StoreOptions {
            sqlite_sync: SqliteSync::Full,
            ..StoreOptions::default()
        };
        let store = Store::open(&url, options).await.expect("store opens");
        let set = load_plugins(
            &Config::default(),
            Arc::new(MemoryKeyValue::default()),
            false,
        )
        .unwrap();
        let catalog = Arc::new(Catalog::new(store.clone(), set.names()));
        catalog
            .deploy(
                load_str(WORKFLOW, "fan-out.yaml", &catalog.plugins()).unwrap(),
                "bench",
            )
            .await
            .unwrap();
        let executor = Executor::new(set.engine.clone(), json!({}));
        let worker = worker::spawn(
            store.clone(),
            executor,
            catalog.clone(),
            WorkerOptions::default(),
        );
        let input = json!({
            "items": (0..ELEMENTS).map(|i| json!({ "sku": format!("SKU-{i}") })).collect::<Vec<_>>()
        });
        println!("SQLite FULL, {ELEMENTS} elements, transform body, concurrency 100:");
        for round in 0..ROUNDS {
            let id = format!("loop-{round}");
            let started = Instant::now();
            worker
                .start(catalog.latest("fan-out").unwrap(), &id, &input, None, "bench")
                .await
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(600);
            loop {
                let row = store.run(&id).await.unwrap().unwrap();
                if row.status == "succeeded" {
                    assert_eq!(row.output.unwrap()["count"], ELEMENTS);
                    break;
                }
                assert!(row.status != "failed", "{:?}", row.error);
                assert!(Instant::now() < deadline, "the loop did not finish");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let elapsed = started.elapsed();
            let events = store.events(&id).await.unwrap();
            let bytes: usize = events
                .iter()
                .map(|e| serde_json::to_string(e).unwrap().len())
                .sum();
            println!(
                "  round {}: {:.0} elements/s end to end ({:.2} s); history {} events, {:.1} MB as JSON",
                round + 1,
                ELEMENTS as f64 / elapsed.as_secs_f64(),
                elapsed.as_secs_f64(),
                events.len(),
                bytes as f64 / 1e6
            );
        }
        worker.stop();
        store.close().await;
    });
}
