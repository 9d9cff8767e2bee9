//! `POST /v1/runs/{id}/retry` and `steward runs retry`: a failed, rejected
//! or cancelled run resumed in place from the step that ended it (or an
//! earlier one), keeping what finished, with retried steps under a new
//! idempotency key generation; corrected input, upgrades, refusals and
//! idempotent requests.

use crate::common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::http_server::{Received, Reply, TestServer};
use common::server::{Server, json_of};
use serde_json::{Value, json};

/// `three` calls the sink at `/first`, `/second` (once, no retries) and
/// `/third` with its input's `n`; `ask` waits for ana's approval, then
/// calls `/after`; `pause` waits as long as its input says.
fn workflows(sink: &TestServer) -> Vec<(&'static str, String)> {
    vec![
        ("three.yaml", three(sink, 1, "/second")),
        (
            "ask.yaml",
            format!(
                "name: ask\nsteps:\n  - id: ok\n    approval:\n      approvers: [ana]\n  - id: after\n    uses: http-request\n    with: {{ method: POST, url: \"{}\", body: {{}} }}\n",
                sink.url("/after")
            ),
        ),
        (
            "pause.yaml",
            "name: pause\nsteps:\n  - id: nap\n    wait: ${{ input.for }}\n".to_string(),
        ),
    ]
}

/// Version `version` of `three`, its second step calling `second`.
fn three(sink: &TestServer, version: u32, second: &str) -> String {
    let call = |id: &str, path: &str| {
        format!(
            "  - id: {id}\n    uses: http-request\n    with:\n      method: POST\n      url: \"{}\"\n      body: {{ n: \"${{{{ input.n }}}}\" }}\n    retry: {{ max_attempts: 1 }}\n",
            sink.url(path)
        )
    };
    format!(
        "name: three\nversion: {version}\ninput:\n  type: object\n  required: [n]\n  properties:\n    n: {{ type: integer }}\nsteps:\n{}{}{}output: ${{{{ steps.third.output.status }}}}\n",
        call("first", "/first"),
        call("second", second),
        call("third", "/third")
    )
}

/// The sink: `/second` refuses (400, not retryable) until `fixed`, and
/// always for `n: -1`; `/slow` answers after 5 s; everything else is 200.
fn sink(fixed: Arc<AtomicBool>) -> TestServer {
    TestServer::start(move |request: &Received, _| -> Reply {
        let refuse = request.path == "/second"
            && (!fixed.load(Ordering::SeqCst) || request.body == br#"{"n":-1}"#);
        if refuse {
            return (400, vec![], b"vendor rejected the order".to_vec());
        }
        if request.path == "/slow" {
            std::thread::sleep(Duration::from_secs(5));
        }
        (
            200,
            vec![("content-type".into(), "application/json".into())],
            b"{\"ok\":true}".to_vec(),
        )
    })
}

/// A server on SQLite, or on the database `database` names (TOML lines).
fn setup(sink: &TestServer, database: Option<String>) -> (tempfile::TempDir, PathBuf, Server) {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("workflows");
    std::fs::create_dir_all(&folder).unwrap();
    for (file, yaml) in workflows(sink) {
        std::fs::write(folder.join(file), yaml).unwrap();
    }
    let slow = format!(
        "name: slow\nsteps:\n  - id: call\n    uses: http-request\n    with: {{ method: POST, url: \"{}\", body: {{}} }}\n",
        sink.url("/slow")
    );
    std::fs::write(folder.join("slow.yaml"), slow).unwrap();
    let config = dir.path().join("steward.toml");
    std::fs::write(
        &config,
        format!(
            "{}\ndata_dir = {:?}\nworkflows = [{:?}]\n\n[plugins.http-request]\nallowed_hosts = [\"http://127.0.0.1:*\"]\n",
            database.unwrap_or_else(|| format!(
                "database = \"sqlite://{}/steward.db\"",
                dir.path().display()
            )),
            dir.path().join("data"),
            folder
        ),
    )
    .unwrap();
    let server = Server::start(&config);
    (dir, config, server)
}

fn finish(server: &Server, id: &str) -> Value {
    server
        .wait_until_finished(&[id.to_string()], Duration::from_secs(20))
        .remove(0)
}

/// POST /v1/runs/{id}/retry with `body` and, if given, an Idempotency-Key.
fn retry(server: &Server, id: &str, body: Value, key: Option<&str>) -> (u16, Value) {
    let mut request = server
        .request("POST", &format!("/v1/runs/{id}/retry"))
        .set("content-type", "application/json");
    if let Some(key) = key {
        request = request.set("Idempotency-Key", key);
    }
    match request.send_string(&body.to_string()) {
        Ok(r) => (r.status(), json_of(r)),
        Err(ureq::Error::Status(status, r)) => (status, json_of(r)),
        Err(e) => panic!("{e}"),
    }
}

/// The idempotency keys the sink saw on `path`, in order.
fn keys(sink: &TestServer, path: &str) -> Vec<String> {
    sink.received()
        .iter()
        .filter(|r| r.path == path)
        .map(|r| r.header("idempotency-key").unwrap_or("none").to_string())
        .collect()
}

/// GET `path` as the admin: the body of its 200.
fn get(server: &Server, path: &str) -> Value {
    json_of(server.request("GET", path).call().unwrap())
}

fn problem_type(problem: &Value) -> &str {
    problem["type"]
        .as_str()
        .and_then(|t| t.rsplit('/').next())
        .unwrap_or("")
}

fn events_of(server: &Server, id: &str, kind: &str) -> Vec<Value> {
    server
        .events(id)
        .into_iter()
        .filter(|e| e["type"] == kind)
        .collect()
}

/// The whole story on one database: fails at the second step, retried
/// once the vendor is fixed, it succeeds without calling the first again,
/// and the retried call carries generation 2 of its key.
fn a_failed_run_resumes_at_the_failed_step(database: Option<String>) {
    let fixed = Arc::new(AtomicBool::new(false));
    let sink = sink(fixed.clone());
    let (_dir, _config, server) = setup(&sink, database);
    let id = server.start_run("three", json!({ "n": 3 }));
    let failed = finish(&server, &id);
    assert_eq!(failed["status"], "failed", "{failed:#}");
    assert_eq!(keys(&sink, "/second"), [format!("{id}/second")]);

    fixed.store(true, Ordering::SeqCst);
    let (status, run) = retry(&server, &id, json!({}), None);
    assert_eq!(status, 200, "{run:#}");
    assert_eq!(run["id"], id.as_str());
    assert_ne!(run["status"], "failed", "{run:#}");
    let done = finish(&server, &id);
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["output"], 200, "{done:#}");
    assert_eq!(done["error"], Value::Null);
    assert_eq!(
        done["steps"]["first"]["output"]["status"], 200,
        "the first step keeps its output: {done:#}"
    );

    assert_eq!(keys(&sink, "/first"), [format!("{id}/first")], "not re-run");
    assert_eq!(
        keys(&sink, "/second"),
        [format!("{id}/second"), format!("{id}/second#2")]
    );
    assert_eq!(keys(&sink, "/third"), [format!("{id}/third")]);

    let retried = events_of(&server, &id, "run_retried");
    assert_eq!(retried.len(), 1, "{retried:#?}");
    assert_eq!(retried[0]["by"], "admin");
    assert_eq!(retried[0]["reset"], json!(["second"]));
    // The history goes on after the failure: one run, one history.
    let types: Vec<String> = server
        .events(&id)
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    let failed_at = types.iter().position(|t| t == "run_failed").unwrap();
    assert_eq!(types[failed_at + 1], "run_retried", "{types:?}");
    assert_eq!(types.last().unwrap(), "run_succeeded");

    // Audited with its actor.
    let audit = get(&server, "/v1/audit?action=run.retry");
    let entry = &audit["items"][0];
    assert_eq!(entry["actor"], "admin", "{audit:#}");
    assert_eq!(entry["target"], id.as_str());
    assert_eq!(entry["detail"]["reset"], json!(["second"]));
    assert_eq!(entry["detail"]["upgrade"], Value::Null);

    // A succeeded run is not retried: rerun it.
    let (status, problem) = retry(&server, &id, json!({}), None);
    assert_eq!(status, 409, "{problem:#}");
    assert_eq!(problem_type(&problem), "run-succeeded");
    assert!(
        problem["detail"].as_str().unwrap().contains("/rerun"),
        "{problem:#}"
    );
    server.kill();
}

#[test]
fn a_failed_run_resumes_at_the_failed_step_and_keeps_the_steps_before() {
    a_failed_run_resumes_at_the_failed_step(None);
}

#[test]
fn a_failed_run_resumes_at_the_failed_step_on_postgres() {
    let Some(url) = common::postgres_url() else {
        eprintln!(
            "a_failed_run_resumes_at_the_failed_step_on_postgres: SKIPPED: STEWARD_TEST_DATABASE_URL is not set"
        );
        return;
    };
    let schema = common::unique_schema("retry_resumes");
    a_failed_run_resumes_at_the_failed_step(Some(format!(
        "database = {url:?}\ndatabase_schema = {schema:?}"
    )));
}

#[test]
fn from_step_runs_that_step_and_the_ones_after_again_and_unknown_steps_are_named() {
    let fixed = Arc::new(AtomicBool::new(false));
    let sink = sink(fixed.clone());
    let (_dir, _config, server) = setup(&sink, None);
    let id = server.start_run("three", json!({ "n": 1 }));
    assert_eq!(finish(&server, &id)["status"], "failed");

    let (status, problem) = retry(&server, &id, json!({ "from_step": "zeroth" }), None);
    assert_eq!(status, 422, "{problem:#}");
    assert_eq!(problem_type(&problem), "unknown-step");
    assert_eq!(problem["steps"], json!(["first", "second", "third"]));
    assert!(
        problem["detail"].as_str().unwrap().contains("zeroth"),
        "{problem:#}"
    );
    assert!(events_of(&server, &id, "run_retried").is_empty());

    fixed.store(true, Ordering::SeqCst);
    let (status, run) = retry(&server, &id, json!({ "from_step": "first" }), None);
    assert_eq!(status, 200, "{run:#}");
    assert_eq!(finish(&server, &id)["status"], "succeeded");
    assert_eq!(
        keys(&sink, "/first"),
        [format!("{id}/first"), format!("{id}/first#2")]
    );
    assert_eq!(
        keys(&sink, "/second"),
        [format!("{id}/second"), format!("{id}/second#2")]
    );
    let retried = events_of(&server, &id, "run_retried");
    assert_eq!(retried[0]["from_step"], "first");
    assert_eq!(retried[0]["reset"], json!(["first", "second"]));
    server.kill();
}

#[test]
fn a_retry_may_correct_the_input_which_the_schema_still_checks() {
    let sink = sink(Arc::new(AtomicBool::new(true)));
    let (_dir, _config, server) = setup(&sink, None);
    let id = server.start_run("three", json!({ "n": -1 }));
    assert_eq!(finish(&server, &id)["status"], "failed");

    let (status, problem) = retry(&server, &id, json!({ "input": { "n": "two" } }), None);
    assert_eq!(status, 422, "{problem:#}");
    assert_eq!(problem_type(&problem), "invalid-input");
    assert!(!problem["errors"].as_array().unwrap().is_empty());

    let (status, run) = retry(&server, &id, json!({ "input": { "n": 2 } }), None);
    assert_eq!(status, 200, "{run:#}");
    let done = finish(&server, &id);
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["input"], json!({ "n": 2 }));
    let bodies: Vec<Vec<u8>> = sink
        .received()
        .iter()
        .filter(|r| r.path != "/first")
        .map(|r| r.body.clone())
        .collect();
    assert_eq!(
        bodies,
        [
            br#"{"n":-1}"#.to_vec(),
            br#"{"n":2}"#.to_vec(),
            br#"{"n":2}"#.to_vec()
        ]
    );
    assert_eq!(keys(&sink, "/first").len(), 1, "the first step is kept");
    assert_eq!(
        events_of(&server, &id, "run_retried")[0]["input"],
        json!({ "n": 2 })
    );
    server.kill();
}

#[test]
fn a_rejected_approval_is_retried_with_a_new_approval_that_can_be_approved() {
    let sink = sink(Arc::new(AtomicBool::new(true)));
    let (_dir, _config, server) = setup(&sink, None);
    let id = server.start_run("ask", json!({}));
    let first = server.approval_of(&id, "ana");
    assert_eq!(first["id"], format!("{id}.ok.0"));
    let (status, body) = server.decide(first["id"].as_str().unwrap(), "ana", "reject", None);
    assert_eq!(status, 201, "{body:#}");
    assert_eq!(finish(&server, &id)["status"], "rejected");

    let (status, run) = retry(&server, &id, json!({}), None);
    assert_eq!(status, 200, "{run:#}");
    let second = server.approval_of(&id, "ana");
    assert_eq!(second["id"], format!("{id}.ok~2.0"), "{second:#}");
    // The first approval stays as it was decided.
    let old = get(
        &server,
        &format!("/v1/approvals/{}", first["id"].as_str().unwrap()),
    );
    assert_ne!(old["status"], "pending", "{old:#}");

    let (status, body) = server.decide(second["id"].as_str().unwrap(), "ana", "approve", None);
    assert_eq!(status, 201, "{body:#}");
    let done = finish(&server, &id);
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["steps"]["ok"]["output"]["approved_by"], json!(["ana"]));
    assert_eq!(keys(&sink, "/after"), [format!("{id}/after")]);
    server.kill();
}

#[test]
fn a_cancelled_waiting_run_is_retried() {
    let sink = sink(Arc::new(AtomicBool::new(true)));
    let (_dir, _config, server) = setup(&sink, None);
    // Cancelled while its approval was open.
    let id = server.start_run("ask", json!({}));
    server.approval_of(&id, "ana");
    let (status, _) = server.send_json("POST", &format!("/v1/runs/{id}/cancel"), &json!({}));
    assert_eq!(status, 202);
    assert_eq!(finish(&server, &id)["status"], "cancelled");
    let (status, run) = retry(&server, &id, json!({}), None);
    assert_eq!(status, 200, "{run:#}");
    let approval = server.approval_of(&id, "ana");
    assert_eq!(approval["id"], format!("{id}.ok~2.0"));
    server.decide(approval["id"].as_str().unwrap(), "ana", "approve", None);
    assert_eq!(finish(&server, &id)["status"], "succeeded");

    // Cancelled during an hour's wait, retried with a shorter one.
    let id = server.start_run("pause", json!({ "for": "1h" }));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while server.run(&id)["status"] != "waiting" {
        assert!(std::time::Instant::now() < deadline, "never waited");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, _) = server.send_json("POST", &format!("/v1/runs/{id}/cancel"), &json!({}));
    assert_eq!(status, 202);
    assert_eq!(finish(&server, &id)["status"], "cancelled");
    let (status, run) = retry(&server, &id, json!({ "input": { "for": "1s" } }), None);
    assert_eq!(status, 200, "{run:#}");
    let done = finish(&server, &id);
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["error"], Value::Null);
    server.kill();
}

#[test]
fn an_upgrade_is_refused_when_the_new_version_lacks_a_finished_step() {
    let fixed = Arc::new(AtomicBool::new(false));
    let sink = sink(fixed.clone());
    let (_dir, _config, server) = setup(&sink, None);
    let id = server.start_run("three", json!({ "n": 5 }));
    assert_eq!(finish(&server, &id)["status"], "failed");
    let deploy = |yaml: &str| {
        let response = server
            .request("PUT", "/v1/workflows/three")
            .set("content-type", "application/yaml")
            .send_string(yaml)
            .unwrap();
        assert_eq!(response.status(), 201);
    };

    // Version 2 has no `first`, which the run finished.
    let without_first = three(&sink, 2, "/second").replacen(
        &format!(
            "  - id: first\n    uses: http-request\n    with:\n      method: POST\n      url: \"{}\"\n      body: {{ n: \"${{{{ input.n }}}}\" }}\n    retry: {{ max_attempts: 1 }}\n",
            sink.url("/first")
        ),
        "",
        1,
    );
    assert!(!without_first.contains("id: first"), "{without_first}");
    deploy(&without_first);
    let (status, problem) = retry(&server, &id, json!({ "upgrade": true }), None);
    assert_eq!(status, 422, "{problem:#}");
    assert_eq!(problem_type(&problem), "upgrade-lacks-steps");
    assert_eq!(problem["steps"], json!(["first"]));
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("has no step first"),
        "{problem:#}"
    );
    assert_eq!(server.run(&id)["status"], "failed", "nothing changed");

    // Version 3 has every step, its second calling a fixed endpoint.
    deploy(&three(&sink, 3, "/second-v3"));
    let (status, run) = retry(&server, &id, json!({ "upgrade": true }), None);
    assert_eq!(status, 200, "{run:#}");
    assert_eq!(run["version"], 3, "{run:#}");
    let done = finish(&server, &id);
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["version"], 3);
    assert_eq!(keys(&sink, "/second-v3"), [format!("{id}/second#2")]);
    assert_eq!(keys(&sink, "/first").len(), 1);
    assert_eq!(events_of(&server, &id, "run_retried")[0]["version"], 3);
    server.kill();
}

#[test]
fn runs_still_going_and_unknown_runs_are_refused() {
    let sink = sink(Arc::new(AtomicBool::new(true)));
    let (_dir, _config, server) = setup(&sink, None);
    let running = server.start_run("slow", json!({}));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !sink.received().iter().any(|r| r.path == "/slow") {
        assert!(std::time::Instant::now() < deadline, "the call never came");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.run(&running)["status"], "running");
    let (status, problem) = retry(&server, &running, json!({}), None);
    assert_eq!(status, 409, "{problem:#}");
    assert_eq!(problem_type(&problem), "run-not-finished");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("cancel it first"),
        "{problem:#}"
    );

    let waiting = server.start_run("pause", json!({ "for": "1h" }));
    let (status, problem) = retry(&server, &waiting, json!({}), None);
    assert_eq!(status, 409, "{problem:#}");

    let (status, _) = retry(
        &server,
        "00000000-0000-0000-0000-000000000000",
        json!({}),
        None,
    );
    assert_eq!(status, 404);
    let (status, problem) = retry(&server, &waiting, json!({ "upgrade": "yes" }), None);
    assert_eq!(status, 422, "{problem:#}");
    server.kill();
}

/// A client repeating its request with the same `Idempotency-Key` gets
/// the run, retried once; two retries at once, one wins.
#[test]
fn a_retry_repeated_with_its_idempotency_key_is_made_once() {
    let sink = sink(Arc::new(AtomicBool::new(true)));
    let (_dir, _config, server) = setup(&sink, None);
    let id = server.start_run("ask", json!({}));
    let approval = server.approval_of(&id, "ana");
    server.decide(approval["id"].as_str().unwrap(), "ana", "reject", None);
    assert_eq!(finish(&server, &id)["status"], "rejected");

    let (first, made) = retry(&server, &id, json!({}), Some("retry-1"));
    assert_eq!(first, 200, "{made:#}");
    let (again, same) = retry(&server, &id, json!({}), Some("retry-1"));
    assert_eq!(again, 200, "{same:#}");
    assert_eq!(same["id"], id.as_str());
    assert_eq!(events_of(&server, &id, "run_retried").len(), 1);
    let (status, problem) = retry(&server, &id, json!({ "from_step": "ok" }), Some("retry-1"));
    assert_eq!(status, 422, "{problem:#}");
    assert_eq!(problem_type(&problem), "idempotency-key-reused");

    // Rejected again, then two retries at once: one wins, one is 409.
    let approval = server.approval_of(&id, "ana");
    server.decide(approval["id"].as_str().unwrap(), "ana", "reject", None);
    assert_eq!(finish(&server, &id)["status"], "rejected");
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| retry(&server, &id, json!({}), None).0))
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let mut sorted = statuses.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [200, 409], "{statuses:?}");
    assert_eq!(events_of(&server, &id, "run_retried").len(), 2);
    let third = server.approval_of(&id, "ana");
    assert_eq!(third["id"], format!("{id}.ok~3.0"));
    server.kill();
}

#[test]
fn the_cli_retries_a_run() {
    let fixed = Arc::new(AtomicBool::new(false));
    let sink = sink(fixed.clone());
    let (_dir, _config, server) = setup(&sink, None);
    let id = server.start_run("three", json!({ "n": 7 }));
    assert_eq!(finish(&server, &id)["status"], "failed");
    fixed.store(true, Ordering::SeqCst);
    let out = std::process::Command::new(common::steward_bin())
        .args([
            "runs",
            "retry",
            &id,
            "--from-step",
            "second",
            "--input",
            r#"{"n": 8}"#,
        ])
        .env("STEWARD_SERVER", server.url(""))
        .env("STEWARD_TOKEN", common::server::ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["id"], id.as_str());
    let done = finish(&server, &id);
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["input"], json!({ "n": 8 }));
    server.kill();
}
