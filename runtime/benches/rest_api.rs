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

use common::TOKEN;
use std::process::Command;
use std::time::{Duration, Instant};

const RUNS: usize = 20_032; // a multiple of the 64 clients
const WORKFLOW: &str = "name: one-step\nversion: 1\nsteps:\n  - id: shape\n    uses: transform\n    with: { ticket: \"${{ input.ticket }}\", priority: P3 }\noutput: ${{ steps.shape.output }}\n";
const BODY: &str = r#"{"input": {"ticket": "INC0001"}}"#;

fn main() {
    if Command::new("hey").arg("-h").output().is_err() {
        eprintln!("rest_api: `hey` is not installed: sudo apt-get install hey");
        std::process::exit(2);
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut server, base) =
        common::start_server(dir.path(), &[("one-step.yaml", WORKFLOW)], "warn");
    let url = format!("{base}/v1/workflows/one-step/runs");

    // Warm up (connections, caches, the writer).
    let warm = hey(&["-n", "2048", "-c", "32"], &url);
    wait_for_finished(&base, warm.created, Duration::from_secs(60));

    let paced = hey(&["-z", "10s", "-c", "20", "-q", "50"], &url);
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
    let burst = hey(&["-n", &RUNS.to_string(), "-c", "64"], &url);
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

struct HeyReport {
    /// Requests answered 201 (hey sends n / c per client, so fewer than n
    /// when c does not divide n).
    created: usize,
    rate: f64,
    p50: f64,
    p99: f64,
    statuses: String,
}

/// Runs `hey` with `args` against `url` and reads its summary.
fn hey(args: &[&str], url: &str) -> HeyReport {
    let output = Command::new("hey")
        .args(args)
        .args([
            "-m",
            "POST",
            "-T",
            "application/json",
            "-H",
            &format!("Authorization: Bearer {TOKEN}"),
            "-d",
            BODY,
            url,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let number_after = |label: &str| -> f64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("hey printed no {label:?}:\n{text}"))
    };
    let mut statuses = Vec::new();
    let mut created = 0;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix('[')
            && let Some((code, count)) = rest.split_once(']')
        {
            let count: usize = count
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            if code == "201" {
                created += count;
            }
            statuses.push(format!("{code}: {count}"));
        }
    }
    HeyReport {
        created,
        rate: number_after("Requests/sec:"),
        p50: number_after("50% in"),
        p99: number_after("99% in"),
        statuses: statuses.join(", "),
    }
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
