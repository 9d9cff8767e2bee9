//! Scale-out on PostgreSQL: one `steward serve --no-worker` takes the
//! requests, one and then two `steward worker` processes execute them
//! (release builds, real sockets, `hey` as the client). For each worker
//! count, 10,048 one-step runs are posted by 64 clients as fast as the API
//! takes them, timed until the database holds no unfinished run.
//!
//! Run it with `cargo bench --bench scale_out` (PostgreSQL from
//! `STEWARD_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`;
//! `hey` from `apt-get install hey`).

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::{TOKEN, hey, start_process};

const RUNS: usize = 10_048; // a multiple of the 64 clients (hey sends n / c per client)
const WORKFLOW: &str = "name: one-step\nversion: 1\nsteps:\n  - id: shape\n    uses: transform\n    with: { ticket: \"${{ input.ticket }}\", priority: P3 }\noutput: ${{ steps.shape.output }}\n";
const BODY: &str = r#"{"input": {"ticket": "INC0001"}}"#;

fn main() {
    common::require_hey("scale_out");
    let url = std::env::var("STEWARD_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into());
    for workers in [1, 2] {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("workflows");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("one-step.yaml"), WORKFLOW).unwrap();
        let schema = format!("bench_scale_{}_{workers}", std::process::id());
        let config = dir.path().join("steward.toml");
        std::fs::write(
            &config,
            format!(
                "database = {url:?}\ndatabase_schema = {schema:?}\ndata_dir = {:?}\nworkflows = [{folder:?}]\n",
                dir.path().join("data")
            ),
        )
        .unwrap();
        let (api, base) = start_process(&["serve", "--no-worker"], &config);
        let mut processes: Vec<Child> = vec![api];
        for _ in 0..workers {
            processes.push(start_process(&["worker", "--listen", "PORT"], &config).0);
        }
        let runs_url = format!("{base}/v1/workflows/one-step/runs");

        // Warm up connections and caches.
        hey(&["-n", "1024", "-c", "32"], &runs_url, BODY);
        wait_until_done(&base, Duration::from_secs(120));

        let began = Instant::now();
        let burst = hey(&["-n", &RUNS.to_string(), "-c", "64"], &runs_url, BODY);
        let accepted = began.elapsed();
        wait_until_done(&base, Duration::from_secs(600));
        let done = began.elapsed();
        println!(
            "PostgreSQL, 1 API + {workers} worker(s): {} one-step runs accepted in {:.2} s ({:.0} req/s, p99 {:.2} ms), \
             all finished in {:.2} s: {:.0} runs/s (target >= 5,000 with 2 workers), statuses {}",
            burst.created,
            accepted.as_secs_f64(),
            burst.rate,
            burst.p99 * 1e3,
            done.as_secs_f64(),
            burst.created as f64 / done.as_secs_f64(),
            burst.statuses
        );
        for mut process in processes {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

/// Waits until the database holds no pending, running or waiting run (the
/// API server's `steward_queue_depth`, read from the database at scrape).
fn wait_until_done(base: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let text = ureq::get(&format!("{base}/metrics"))
            .set("Authorization", &format!("Bearer {TOKEN}"))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        let open: f64 = text
            .lines()
            .filter(|l| l.starts_with("steward_queue_depth"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if open == 0.0 {
            return;
        }
        assert!(Instant::now() < deadline, "{open} runs still open");
        std::thread::sleep(Duration::from_millis(20));
    }
}
