//! The REST API under load, against the real `steward serve` (release
//! build, SQLite FULL, default settings), driven by `hey` over real sockets:
//!
//! 1. accept latency of `POST /v1/workflows/{name}/runs` at a fixed
//!    1,000 requests/s (20 clients × 50/s for 10 s): p50, p99;
//! 2. 1-step runs completed per second end to end: 20,032 runs posted by 64
//!    clients as fast as the server takes them, timed until the last run
//!    has finished (read from `/metrics`).
//!
//! Run it with `cargo bench --bench rest_api` (`hey` comes from
//! `apt-get install hey`).

mod common;

use common::hey;
use std::time::{Duration, Instant};

const RUNS: usize = 20_032; // a multiple of the 64 clients
const WORKFLOW: &str = "name: one-step\nversion: 1\nsteps:\n  - id: shape\n    uses: transform\n    with: { ticket: \"${{ input.ticket }}\", priority: P3 }\noutput: ${{ steps.shape.output }}\n";
const BODY: &str = r#"{"input": {"ticket": "INC0001"}}"#;

fn main() {
    common::require_hey("rest_api");
    let dir = tempfile::tempdir().unwrap();
    let (mut server, base) =
        common::start_server(dir.path(), &[("one-step.yaml", WORKFLOW)], "warn");
    let url = format!("{base}/v1/workflows/one-step/runs");

    // Warm up (connections, caches, the writer).
    let warm = hey(&["-n", "2048", "-c", "32"], &url, BODY);
    wait_for_finished(&base, warm.created, Duration::from_secs(60));

    let paced = hey(&["-z", "10s", "-c", "20", "-q", "50"], &url, BODY);
    println!(
        "accept latency at {:.0} req/s (20 clients x 50/s, 10 s): p50 {:.2} ms, p99 {:.2} ms (target p99 <= 5 ms), statuses {}",
        paced.rate,
        paced.p50 * 1e3,
        paced.p99 * 1e3,
        paced.statuses
    );
    let total = warm.created + paced.created;
    wait_for_finished(&base, total, Duration::from_secs(120));

    let began = Instant::now();
    let burst = hey(&["-n", &RUNS.to_string(), "-c", "64"], &url, BODY);
    let accepted = began.elapsed();
    wait_for_finished(&base, total + burst.created, Duration::from_secs(300));
    let done = began.elapsed();
    println!(
        "end to end: {} one-step runs accepted in {:.2} s ({:.0} req/s, p99 {:.2} ms), all finished in {:.2} s: {:.0} runs/s (target >= 5,000), statuses {}",
        burst.created,
        accepted.as_secs_f64(),
        burst.rate,
        burst.p99 * 1e3,
        done.as_secs_f64(),
        burst.created as f64 / done.as_secs_f64(),
        burst.statuses
    );
    let _ = server.kill();
    let _ = server.wait();
}

/// Runs finished so far, from the server's metrics.
fn finished(base: &str) -> usize {
    let text = ureq::get(&format!("{base}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("steward_runs_finished_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as usize
}

fn wait_for_finished(base: &str, target: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while finished(base) < target {
        assert!(
            Instant::now() < deadline,
            "only {} of {target} runs finished",
            finished(base)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
