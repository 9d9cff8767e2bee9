//! Steward's parts in the test process, for tests that drive the worker or
//! the scheduler directly instead of through the server.

use std::sync::Arc;

use serde_json::{Value, json};
use steward::catalog::Catalog;
use steward::config::Config;
use steward::engine::MemoryKeyValue;
use steward::executor::Executor;
use steward::plugins::load_plugins;
use steward::store::{NewRun, Store};
use steward::workflow::load_str;

/// A catalog on `store` with `workflow` (YAML) deployed, and an executor
/// with the built-in plugins: what `worker::spawn` needs.
pub async fn deployed(store: &Store, workflow: &str) -> (Arc<Catalog>, Executor) {
    let set = load_plugins(
        &Config::default(),
        Arc::new(MemoryKeyValue::default()),
        false,
    )
    .unwrap();
    let catalog = Arc::new(Catalog::new(store.clone(), set.names()));
    catalog
        .deploy(
            load_str(workflow, "workflow.yaml", &catalog.plugins()).unwrap(),
            "test",
        )
        .await
        .unwrap();
    (catalog, Executor::new(set.engine.clone(), json!({})))
}

/// Version 1 of `workflow`, not leased, without an idempotency key: a run
/// any worker may claim.
pub fn unleased<'a>(id: &'a str, workflow: &'a str, input: &'a Value) -> NewRun<'a> {
    NewRun {
        id,
        workflow,
        version: 1,
        input,
        idempotency_key: None,
        started_by: None,
        rerun_of: None,
        parent: None,
        lease: None,
        placement: Default::default(),
    }
}
