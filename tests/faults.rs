//! Promises under faults, against the real binary: a disk that stops
//! taking writes never turns into a 201 for a run that was not committed,
//! and a plugin that blocks past its step's timeout neither outlives it
//! nor delays other runs.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::server::{Server, write_config};
use serde_json::{Value, json};

/// Sets (or, with `None`, lifts) the largest file process `pid` may write.
fn limit_file_size(pid: u32, bytes: Option<u64>) {
    let limit = libc::rlimit {
        rlim_cur: bytes.unwrap_or(libc::RLIM_INFINITY),
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit for a process of ours; no old value is read.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_FSIZE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// Posts a run of `quick`: the status, and the run's id when created.
fn post_run(server: &Server, n: usize) -> (u16, Value) {
    server.send_json(
        "POST",
        "/v1/workflows/quick/runs",
        &json!({ "input": { "n": n } }),
    )
}

fn quick_workflow(dir: &Path) -> std::path::PathBuf {
    let workflows = dir.join("workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::write(
        workflows.join("quick.yaml"),
        "name: quick\nsteps:\n  - id: echo\n    uses: transform\n    with: { n: \"${{ input.n }}\" }\noutput: ${{ steps.echo.output }}\n",
    )
    .unwrap();
    workflows
}

#[test]
fn a_commit_that_fails_is_answered_503_and_every_201_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let workflows = quick_workflow(dir.path());
    let config = write_config(dir.path(), Some(&workflows), "");
    let server = Server::start_ignoring_file_size_signal(&config);

    let mut accepted: Vec<String> = Vec::new();
    for n in 0..20 {
        let (status, body) = post_run(&server, n);
        assert_eq!(status, 201, "{body}");
        accepted.push(body["id"].as_str().unwrap().to_string());
    }

    // The disk stops taking writes: every COMMIT fails with a disk I/O
    // error. Nothing may be answered 201 meanwhile.
    limit_file_size(server.pid(), Some(0));
    let mut refused = 0;
    for n in 20..44 {
        let (status, body) = post_run(&server, n);
        assert_eq!(
            status, 503,
            "a run was answered {status} while no write could commit: {body}"
        );
        assert_eq!(
            body["type"], "https://steward.dev/problems/database-unavailable",
            "{body}"
        );
        refused += 1;
    }
    assert_eq!(refused, 24);

    // The disk recovers: writes are accepted again.
    limit_file_size(server.pid(), None);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 44;
    let mut recovered = 0;
    while recovered < 24 {
        let (status, body) = post_run(&server, n);
        n += 1;
        match status {
            201 => {
                accepted.push(body["id"].as_str().unwrap().to_string());
                recovered += 1;
            }
            503 if recovered == 0 && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            _ => panic!("after the disk recovered: {status} {body}"),
        }
    }

    let before: Vec<Value> = server.wait_until_finished(&accepted, Duration::from_secs(60));
    server.kill();

    // Everything answered 201, and everything read back, was committed.
    let server = Server::start(&config);
    for (id, seen) in accepted.iter().zip(&before) {
        let (status, now) = server.send_json("GET", &format!("/v1/runs/{id}"), &Value::Null);
        assert_eq!(status, 200, "run {id}, answered 201, is gone: {now}");
        assert_eq!(now["status"], seen["status"], "run {id}");
        assert_eq!(now["status"], "succeeded", "run {id}: {now}");
    }
}

#[test]
fn a_step_sleeping_past_its_timeout_fails_in_time_and_other_runs_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let workflows = quick_workflow(dir.path());
    std::fs::write(
        workflows.join("sleepy.yaml"),
        // One attempt: a timeout is retryable, and the default policy
        // would try twice more.
        "name: sleepy\nsteps:\n  - id: nap\n    uses: hostile\n    with: { do: sleep, ms: 60000 }\n    timeout: 2s\n    retry: { max_attempts: 1 }\n",
    )
    .unwrap();
    let plugin = common::install_fixture("hostile", dir.path());
    let config = write_config(
        dir.path(),
        Some(&workflows),
        &format!("[plugins.hostile]\npath = {plugin:?}\n"),
    );
    let server = Server::start(&config);

    let sleepy: Vec<String> = (0..4)
        .map(|_| server.start_run("sleepy", json!({})))
        .collect();
    let started = Instant::now();
    let quick = server.start_run("quick", json!({ "n": 1 }));
    let done = server.wait_until_finished(std::slice::from_ref(&quick), Duration::from_secs(5));
    assert_eq!(done[0]["status"], "succeeded");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a transform run waited {:?} behind sleeping plugins",
        started.elapsed()
    );

    let runs = server.wait_until_finished(&sleepy, Duration::from_secs(10));
    for run in runs {
        assert_eq!(run["status"], "failed", "{run}");
        assert_eq!(run["error"]["code"], "timeout", "{run}");
        let took = chrono_ms(&run["finished_at"]) - chrono_ms(&run["created_at"]);
        assert!(took <= 2_500, "a 2 s step timeout took {took} ms: {run}");
    }
}

/// Milliseconds since the epoch of an RFC 3339 time in a run.
fn chrono_ms(value: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(value.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}
