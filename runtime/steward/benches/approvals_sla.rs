//! Approvals and SLA timers at scale, against the real `steward serve`
//! (release build, SQLite FULL):
//!
//! 1. 100,000 runs waiting on approvals with SLA timers (1,000 approvers):
//!    the server's RSS, and the time to list one approver's pending
//!    approvals;
//! 2. timer lateness: 1,000 more runs whose SLA breaches 10 s after they
//!    start, while the 100,000 wait: how late each breach is recorded (p50,
//!    p99);
//! 3. `GET /v1/reports/sla` over 1,000,000 finished runs (written straight
//!    into the database with the `sqlite3` tool).
//!
//! Run it with `cargo bench --bench approvals_sla` (needs `sqlite3`).

mod common;

use common::TOKEN;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const WAITING: usize = 100_000;
const APPROVERS: usize = 1_000;
const TIMED: usize = 1_000;
const FINISHED: usize = 1_000_000;
const CLIENTS: usize = 32;

const WAITING_FLOW: &str = "name: access\nversion: 1\nsla:\n  priority: P3\n  resolution: { P3: 3d }\n  escalations:\n    - { at: 50%, uses: transform, with: { notify: lead } }\nsteps:\n  - id: owner\n    approval:\n      approvers: [\"${{ input.owner }}\"]\n      timeout: 2d\n";
const TIMED_FLOW: &str = "name: p1\nversion: 1\nsla:\n  priority: P1\n  resolution: { P1: 10s }\nsteps:\n  - id: fix\n    approval:\n      approvers: [nobody]\n";

fn main() {
    if Command::new("sqlite3").arg("-version").output().is_err() {
        eprintln!("approvals_sla: `sqlite3` is not installed: sudo apt-get install sqlite3");
        std::process::exit(2);
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut server, base) = common::start_server(
        dir.path(),
        &[("access.yaml", WAITING_FLOW), ("p1.yaml", TIMED_FLOW)],
        "error",
    );

    let began = Instant::now();
    post_runs(
        &base,
        "access",
        WAITING,
        |i| json!({ "input": { "owner": format!("user-{}", i % APPROVERS) } }),
    );
    wait_for(&base, "waiting", WAITING, Duration::from_secs(600));
    println!(
        "{WAITING} runs waiting on approvals with SLA timers, started in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(3));
    println!(
        "server RSS with {WAITING} waiting runs: {} MiB (target <= 300 MB)",
        rss_kib(server.id()) / 1024
    );

    let agent = ureq::agent();
    let mut took = Vec::new();
    for i in 0..50 {
        let url = format!("{base}/v1/approvals?status=pending&approver=user-{}", i * 7);
        let t = Instant::now();
        let body: Value = agent
            .get(&url)
            .set("Authorization", &format!("Bearer {TOKEN}"))
            .call()
            .unwrap()
            .into_string()
            .map(|t| serde_json::from_str::<Value>(&t).unwrap())
            .unwrap();
        took.push(t.elapsed());
        assert_eq!(body["items"].as_array().unwrap().len(), WAITING / APPROVERS);
    }
    took.sort();
    println!(
        "list one approver's {} pending approvals among {WAITING}: median {:.1} ms, max {:.1} ms (target <= 20 ms)",
        WAITING / APPROVERS,
        took[took.len() / 2].as_secs_f64() * 1e3,
        took.last().unwrap().as_secs_f64() * 1e3
    );

    let ids = post_runs(&base, "p1", TIMED, |_| json!({ "input": {} }));
    std::thread::sleep(Duration::from_secs(12));
    let mut late = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &ids {
        loop {
            let run: Value = agent
                .get(&format!("{base}/v1/runs/{id}"))
                .set("Authorization", &format!("Bearer {TOKEN}"))
                .call()
                .unwrap()
                .into_string()
                .map(|t| serde_json::from_str::<Value>(&t).unwrap())
                .unwrap();
            if let Some(at) = run["sla"]["breached_at"].as_str() {
                let created: chrono::DateTime<chrono::Utc> =
                    run["created_at"].as_str().unwrap().parse().unwrap();
                let breached: chrono::DateTime<chrono::Utc> = at.parse().unwrap();
                late.push((breached - created - chrono::Duration::seconds(10)).num_milliseconds());
                break;
            }
            assert!(Instant::now() < deadline, "run {id} never breached");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    late.sort();
    println!(
        "SLA timer lateness over {TIMED} breaches with {WAITING} runs parked: p50 {} ms, p99 {} ms, max {} ms (target p99 <= 1 s)",
        late[late.len() / 2],
        late[late.len() * 99 / 100],
        late.last().unwrap()
    );

    let began = Instant::now();
    seed_finished_runs(&dir.path().join("steward.db"));
    println!(
        "seeded {FINISHED} finished runs in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    let mut took = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let body: Value = agent
            .get(&format!(
                "{base}/v1/reports/sla?from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z"
            ))
            .set("Authorization", &format!("Bearer {TOKEN}"))
            .call()
            .unwrap()
            .into_string()
            .map(|t| serde_json::from_str::<Value>(&t).unwrap())
            .unwrap();
        took.push(t.elapsed());
        let runs: u64 = body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["runs"].as_u64().unwrap())
            .sum();
        assert_eq!(runs as usize, FINISHED);
    }
    took.sort();
    println!(
        "GET /v1/reports/sla over {FINISHED} finished runs: median {:.0} ms, min {:.0} ms (target <= 1 s)",
        took[2].as_secs_f64() * 1e3,
        took[0].as_secs_f64() * 1e3
    );
    let _ = server.kill();
    let _ = server.wait();
}

/// Starts `count` runs of `workflow` from `CLIENTS` threads; returns their ids.
fn post_runs(
    base: &str,
    workflow: &str,
    count: usize,
    body: impl Fn(usize) -> Value + Sync,
) -> Vec<String> {
    let url = format!("{base}/v1/workflows/{workflow}/runs");
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let (url, body) = (&url, &body);
                scope.spawn(move || {
                    let agent = ureq::agent();
                    let mut ids = Vec::new();
                    for i in (client..count).step_by(CLIENTS) {
                        let answer: Value = agent
                            .post(url)
                            .set("Authorization", &format!("Bearer {TOKEN}"))
                            .set("content-type", "application/json")
                            .send_string(&body(i).to_string())
                            .unwrap()
                            .into_string()
                            .map(|t| serde_json::from_str::<Value>(&t).unwrap())
                            .unwrap();
                        ids.push(answer["id"].as_str().unwrap().to_string());
                    }
                    ids
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

fn metric(base: &str, name: &str, status: &str) -> usize {
    let text = ureq::get(&format!("{base}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(&format!("status=\"{status}\"")))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0) as usize
}

fn wait_for(base: &str, status: &str, count: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while metric(base, "steward_queue_depth", status) < count {
        assert!(Instant::now() < deadline, "runs never reached {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Writes `FINISHED` finished runs with SLA outcomes in January 2026 through
/// the sqlite3 tool (a recursive CTE, in one transaction).
fn seed_finished_runs(db: &Path) {
    let jan = 1_767_225_600_000i64; // 2026-01-01T00:00:00Z
    let sql = format!(
        "PRAGMA busy_timeout = 60000;\n\
         BEGIN;\n\
         WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {last})\n\
         INSERT INTO runs (id, workflow, version, status, input, created_at, updated_at, finished_at, \
           sla_priority, sla_target_ms, sla_breached, sla_resolution_ms)\n\
         SELECT 'seed-' || i, 'wf-' || (i % 20), 1, CASE WHEN i % 50 = 0 THEN 'failed' ELSE 'succeeded' END, '{{}}', \
           {jan} + i * 2000, {jan} + i * 2000, {jan} + i * 2000 + (i % 997) * 1000, \
           'P' || (1 + i % 4), 3600000, CASE WHEN i % 13 = 0 THEN 1 ELSE 0 END, \
           CASE WHEN i % 50 = 0 THEN NULL ELSE (i % 997) * 1000 END FROM n;\n\
         COMMIT;\n",
        last = FINISHED - 1
    );
    let mut child = Command::new("sqlite3")
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "seeding failed");
}
