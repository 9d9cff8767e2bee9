//! `POST /v1/runs/{id}/rerun` and `steward runs rerun`: a finished run
//! started again, with its input or a corrected one, as a new run linked to
//! the old one; runs still going are refused.

use crate::common;

use std::path::PathBuf;
use std::time::Duration;

use common::http_server::{Reply, TestServer};
use common::server::{Server, write_config};
use serde_json::{Value, json};

/// `order` calls the sink once (no retries) with its input's `n`; `slow`
/// waits an hour.
fn setup(sink: &TestServer) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::write(
        workflows.join("order.yaml"),
        format!(
            "name: order\ninput:\n  type: object\n  required: [n]\n  properties:\n    n: {{ type: integer }}\nsteps:\n  - id: call\n    uses: http-request\n    with:\n      method: POST\n      url: \"{}\"\n      body: {{ n: \"${{{{ input.n }}}}\" }}\n    retry: {{ max_attempts: 1 }}\noutput: ${{{{ steps.call.output.status }}}}\n",
            sink.url("/orders")
        ),
    )
    .unwrap();
    std::fs::write(
        workflows.join("slow.yaml"),
        "name: slow\nsteps:\n  - id: pause\n    wait: 1h\n",
    )
    .unwrap();
    let config = write_config(
        dir.path(),
        Some(&workflows),
        "[plugins.http-request]\nallowed_hosts = [\"http://127.0.0.1:*\"]\n",
    );
    (dir, config)
}

/// Refuses the first order (400, not retryable), takes the others.
fn refuses_once() -> TestServer {
    TestServer::start(|_, before| -> Reply {
        if before == 0 {
            (400, vec![], b"vendor rejected the order".to_vec())
        } else {
            (
                200,
                vec![("content-type".into(), "application/json".into())],
                b"{\"ok\":true}".to_vec(),
            )
        }
    })
}

fn finish(server: &Server, id: &str) -> Value {
    server
        .wait_until_finished(&[id.to_string()], Duration::from_secs(20))
        .remove(0)
}

#[test]
fn a_failed_run_is_rerun_with_its_input_as_a_new_linked_run() {
    let sink = refuses_once();
    let (_dir, config) = setup(&sink);
    let server = Server::start(&config);
    let old = server.start_run("order", json!({ "n": 3 }));
    assert_eq!(finish(&server, &old)["status"], "failed");

    let (status, new) = server.send_json("POST", &format!("/v1/runs/{old}/rerun"), &json!({}));
    assert_eq!(status, 201, "{new:#}");
    let id = new["id"].as_str().unwrap().to_string();
    assert_ne!(id, old);
    assert_eq!(new["rerun_of"], old.as_str(), "{new:#}");
    assert_eq!(new["workflow"], "order");
    assert_eq!(new["started_by"], "admin", "{new:#}");
    let done = finish(&server, &id);
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["input"], json!({ "n": 3 }));
    assert_eq!(done["rerun_of"], old.as_str());
    // The old run is as it was.
    assert_eq!(server.run(&old)["status"], "failed");
    assert_eq!(server.run(&old)["rerun_of"], Value::Null);

    // A new run: a new idempotency key at the sink, the same body.
    let calls = sink.received();
    assert_eq!(calls.len(), 2);
    assert_ne!(
        calls[0].header("idempotency-key"),
        calls[1].header("idempotency-key")
    );
    assert_eq!(calls[0].body, calls[1].body);

    // Audited with who reran what.
    let audit = common::server::json_of(
        server
            .request("GET", "/v1/audit?action=run.rerun")
            .call()
            .unwrap(),
    );
    let entry = &audit["items"][0];
    assert_eq!(entry["target"], id.as_str(), "{audit:#}");
    assert_eq!(entry["actor"], "admin");
    assert_eq!(entry["detail"]["rerun_of"], old.as_str());

    // The link survives a restart.
    server.kill();
    let server = Server::start(&config);
    assert_eq!(server.run(&id)["rerun_of"], old.as_str());
    server.kill();
}

#[test]
fn a_rerun_may_correct_the_input_which_the_schema_still_checks() {
    let sink = refuses_once();
    let (_dir, config) = setup(&sink);
    let server = Server::start(&config);
    let old = server.start_run("order", json!({ "n": 3 }));
    finish(&server, &old);

    let (status, problem) = server.send_json(
        "POST",
        &format!("/v1/runs/{old}/rerun"),
        &json!({ "input": { "n": "three" } }),
    );
    assert_eq!(status, 422, "{problem:#}");
    assert_eq!(
        problem["type"].as_str().unwrap().rsplit('/').next(),
        Some("invalid-input")
    );

    let (status, new) = server.send_json(
        "POST",
        &format!("/v1/runs/{old}/rerun"),
        &json!({ "input": { "n": 4 } }),
    );
    assert_eq!(status, 201, "{new:#}");
    let done = finish(&server, new["id"].as_str().unwrap());
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["input"], json!({ "n": 4 }));
    assert_eq!(sink.received().last().unwrap().body, br#"{"n":4}"#.to_vec());
    server.kill();
}

#[test]
fn only_finished_runs_are_rerun() {
    let sink = refuses_once();
    let (_dir, config) = setup(&sink);
    let server = Server::start(&config);
    let waiting = server.start_run("slow", json!({}));
    let (status, problem) =
        server.send_json("POST", &format!("/v1/runs/{waiting}/rerun"), &json!({}));
    assert_eq!(status, 409, "{problem:#}");
    assert!(
        problem["detail"].as_str().unwrap().contains("cancel it"),
        "{problem:#}"
    );

    let (status, _) = server.send_json(
        "POST",
        "/v1/runs/00000000-0000-0000-0000-000000000000/rerun",
        &json!({}),
    );
    assert_eq!(status, 404);

    // Cancelled, it may be rerun.
    let (status, _) = server.send_json("POST", &format!("/v1/runs/{waiting}/cancel"), &json!({}));
    assert_eq!(status, 202);
    assert_eq!(finish(&server, &waiting)["status"], "cancelled");
    let (status, new) = server.send_json("POST", &format!("/v1/runs/{waiting}/rerun"), &json!({}));
    assert_eq!(status, 201, "{new:#}");
    assert_eq!(new["rerun_of"], waiting.as_str());
    server.kill();
}

#[test]
fn the_cli_reruns_a_run() {
    let sink = refuses_once();
    let (_dir, config) = setup(&sink);
    let server = Server::start(&config);
    let old = server.start_run("order", json!({ "n": 5 }));
    finish(&server, &old);
    let cli = |args: &[&str]| {
        std::process::Command::new(common::steward_bin())
            .args(args)
            .env("STEWARD_SERVER", server.url(""))
            .env("STEWARD_TOKEN", common::server::ADMIN_TOKEN)
            .output()
            .unwrap()
    };
    let out = cli(&["runs", "rerun", &old, "--input", r#"{"n": 6}"#]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(new["rerun_of"], old.as_str());
    let done = finish(&server, new["id"].as_str().unwrap());
    assert_eq!(done["input"], json!({ "n": 6 }));

    let bad = cli(&["runs", "rerun", &old, "--input", "{n: 6"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--input is not JSON"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    server.kill();
}

/// A client retrying its rerun request with the same `Idempotency-Key`
/// gets the rerun it already made, not a second one.
#[test]
fn a_rerun_retried_with_its_idempotency_key_is_made_once() {
    let sink = refuses_once();
    let (_dir, config) = setup(&sink);
    let server = Server::start(&config);
    let old = server.start_run("order", json!({ "n": 3 }));
    finish(&server, &old);
    let rerun = |key: &str, body: Value| -> (u16, Value) {
        let response = server
            .request("POST", &format!("/v1/runs/{old}/rerun"))
            .set("content-type", "application/json")
            .set("Idempotency-Key", key)
            .send_string(&body.to_string());
        match response {
            Ok(r) => (r.status(), common::server::json_of(r)),
            Err(ureq::Error::Status(status, r)) => (status, common::server::json_of(r)),
            Err(e) => panic!("{e}"),
        }
    };
    let (first, made) = rerun("retry-7", json!({}));
    assert_eq!(first, 201, "{made:#}");
    let (again, same) = rerun("retry-7", json!({}));
    assert_eq!(again, 200, "{same:#}");
    assert_eq!(same["id"], made["id"]);
    assert_eq!(same["rerun_of"], old.as_str());

    // The key with another input is a mistake, not the same request.
    let (status, problem) = rerun("retry-7", json!({ "input": { "n": 9 } }));
    assert_eq!(status, 422, "{problem:#}");
    assert_eq!(problem["run_id"], made["id"]);

    // A key a plain start used is not this rerun either.
    let response = server
        .request("POST", "/v1/workflows/order/runs")
        .set("content-type", "application/json")
        .set("Idempotency-Key", "plain-1")
        .send_string(&json!({ "input": { "n": 3 } }).to_string())
        .unwrap();
    assert_eq!(response.status(), 201);
    let plain = common::server::json_of(response)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, problem) = rerun("plain-1", json!({}));
    assert_eq!(status, 422, "{problem:#}");

    finish(&server, made["id"].as_str().unwrap());
    finish(&server, &plain);
    assert_eq!(
        sink.received().len(),
        3,
        "the old run, one rerun, one plain start"
    );
    server.kill();
}
