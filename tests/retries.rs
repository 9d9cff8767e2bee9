//! Retries that fit real networks: a step that sets no `retry:` gets the
//! operator's default policy (`[defaults] retry`, 3 attempts unless
//! changed), so one refused connection or 503 does not fail a fulfilment
//! run; waits are jittered and recorded in the history.

use crate::common;

use std::path::PathBuf;
use std::time::Duration;

use common::http_server::{Reply, TestServer};
use common::server::{Server, write_config};
use serde_json::json;

/// A workflow whose one step calls `sink` without a `retry:` of its own,
/// and a configuration granting it, plus `defaults` (TOML).
fn setup(sink: &TestServer, defaults: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::write(
        workflows.join("flaky.yaml"),
        format!(
            "name: flaky\nsteps:\n  - id: call\n    uses: http-request\n    with:\n      method: POST\n      url: \"{}\"\n      body: {{ ticket: INC0010001 }}\noutput: ${{{{ steps.call.output.status }}}}\n",
            sink.url("/orders")
        ),
    )
    .unwrap();
    let config = write_config(
        dir.path(),
        Some(&workflows),
        &format!("[plugins.http-request]\nallowed_hosts = [\"http://127.0.0.1:*\"]\n{defaults}"),
    );
    (dir, config)
}

/// Busy once (503), then fine.
fn busy_once() -> TestServer {
    TestServer::start(|_, before| -> Reply {
        if before == 0 {
            (503, vec![], b"busy".to_vec())
        } else {
            (
                200,
                vec![("content-type".into(), "application/json".into())],
                b"{\"ok\":true}".to_vec(),
            )
        }
    })
}

#[test]
fn a_step_without_retry_survives_one_503_by_the_default_policy() {
    let sink = busy_once();
    let (_dir, config) = setup(&sink, "");
    let server = Server::start(&config);
    let run = server.start_run("flaky", json!({}));
    let done = server.wait_until_finished(std::slice::from_ref(&run), Duration::from_secs(20));
    assert_eq!(done[0]["status"], "succeeded", "{:#}", done[0]);
    assert_eq!(done[0]["output"], 200, "{:#}", done[0]);

    let calls = sink.received();
    assert_eq!(calls.len(), 2, "one 503, then the retry");
    // The same call, retried: the same idempotency key both times.
    let keys: Vec<_> = calls
        .iter()
        .map(|c| c.header("idempotency-key").map(str::to_string))
        .collect();
    assert_eq!(keys[0], keys[1]);
    assert!(keys[0].is_some());

    // The wait chosen is in the history, within the first attempt's bound
    // of the default policy (1 s).
    let events = server.events(&run);
    let failed = events
        .iter()
        .find(|e| e["type"] == "step_failed")
        .unwrap_or_else(|| panic!("no step_failed in {events:#?}"));
    assert_eq!(failed["error"]["retryable"], true, "{failed:#}");
    let at: chrono::DateTime<chrono::Utc> = failed["at"].as_str().unwrap().parse().unwrap();
    let retry_at: chrono::DateTime<chrono::Utc> =
        failed["retry_at"].as_str().unwrap().parse().unwrap();
    let wait = retry_at - at;
    assert!(
        wait >= chrono::Duration::zero() && wait <= chrono::Duration::milliseconds(1_001),
        "waited {wait} after the first attempt"
    );
    server.kill();
}

#[test]
fn defaults_retry_in_steward_toml_sets_the_policy_of_steps_without_one() {
    // One attempt: the 503 fails the run, and the sink is called once.
    let sink = busy_once();
    let (_dir, config) = setup(&sink, "[defaults.retry]\nmax_attempts = 1\n");
    let server = Server::start(&config);
    let run = server.start_run("flaky", json!({}));
    let done = server.wait_until_finished(std::slice::from_ref(&run), Duration::from_secs(20));
    assert_eq!(done[0]["status"], "failed", "{:#}", done[0]);
    assert_eq!(sink.received().len(), 1);
    server.kill();

    // Jitter off and a longer backoff: the wait is the bound exactly.
    let sink = busy_once();
    let (_dir, config) = setup(
        &sink,
        "[defaults.retry]\nmax_attempts = 2\nbackoff = \"1500ms\"\nbackoff_jitter = false\n",
    );
    let server = Server::start(&config);
    let run = server.start_run("flaky", json!({}));
    let done = server.wait_until_finished(std::slice::from_ref(&run), Duration::from_secs(20));
    assert_eq!(done[0]["status"], "succeeded", "{:#}", done[0]);
    let events = server.events(&run);
    let failed = events.iter().find(|e| e["type"] == "step_failed").unwrap();
    let at: chrono::DateTime<chrono::Utc> = failed["at"].as_str().unwrap().parse().unwrap();
    let retry_at: chrono::DateTime<chrono::Utc> =
        failed["retry_at"].as_str().unwrap().parse().unwrap();
    assert_eq!((retry_at - at).num_milliseconds(), 1_500, "{failed:#}");
    server.kill();
}

#[test]
fn a_default_retry_out_of_range_is_refused_naming_the_key() {
    let sink = busy_once();
    let (dir, config) = setup(&sink, "[defaults.retry]\nmax_attempts = 0\n");
    let out = std::process::Command::new(common::steward_bin())
        .arg("run")
        .arg(dir.path().join("workflows/flaky.yaml"))
        .arg("--config")
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("steward.toml")
            && stderr.contains("max_attempts = 0: expected an integer from 1 to 100"),
        "{stderr}"
    );
    assert!(sink.received().is_empty());
}
