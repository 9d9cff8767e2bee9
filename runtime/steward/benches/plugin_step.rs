//! One plugin step: a fresh sandbox (new `Store`, new instance from the
//! cached `InstancePre`, limits armed) plus a call of `transform` with a
//! ~1 KB input. Prints the median and tail latencies.
//!
//!     cargo bench --bench plugin_step

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use steward::config::Config;
use steward::engine::{CallRequest, MemoryKeyValue, StepContext};
use steward::plugins::load_plugins;

/// The allocator the `steward` binary uses (see `src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const WARMUP: usize = 2_000;
const SAMPLES: usize = 20_000;

fn main() {
    let config = Config::default();
    let set =
        load_plugins(&config, Arc::new(MemoryKeyValue::default()), false).expect("plugins load");
    let items: Vec<_> = (0..12)
        .map(|i| json!({"sys_id": format!("{i:032x}"), "short_description": "Printer on floor 3 jams", "priority": i % 4 + 1}))
        .collect();
    let input = json!({"number": "RITM0012345", "items": items}).to_string();
    println!(
        "input: {} bytes, pagemap_scan: {}",
        input.len(),
        steward::engine::pagemap_scan_available()
    );
    let request = CallRequest {
        plugin: "transform".into(),
        context: StepContext {
            run_id: "0192f0c4-bench".into(),
            workflow: "bench".into(),
            step_id: "reshape".into(),
            attempt: 1,
            idempotency_key: "0192f0c4-bench/reshape".into(),
        },
        input,
        timeout: None,
    };
    for _ in 0..WARMUP {
        set.engine
            .call_blocking(&request)
            .result
            .expect("transform succeeds");
    }
    let mut samples: Vec<Duration> = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let started = Instant::now();
        let outcome = set.engine.call_blocking(&request);
        samples.push(started.elapsed());
        assert!(outcome.result.is_ok());
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    println!(
        "transform step, fresh instance per call ({SAMPLES} samples): median {:.1} µs, p90 {:.1} µs, p99 {:.1} µs",
        at(0.5).as_secs_f64() * 1e6,
        at(0.9).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
    );
}
