//! The run endpoints over real HTTP: status codes, idempotency keys and the
//! problem+json error shape.

mod common;

use std::time::Duration;

use common::server::{Server, json_of};
use serde_json::{Value, json};

fn server() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("steward.toml");
    std::fs::write(
        &config,
        format!(
            "database = \"sqlite://{}/steward.db\"\ndata_dir = {:?}\nworkflows = [{:?}]\n",
            dir.path().display(),
            dir.path().join("data"),
            common::root().join("examples/workflows")
        ),
    )
    .unwrap();
    let server = Server::start(&config);
    (dir, server)
}

fn send(server: &Server, path: &str, body: &str, key: Option<&str>) -> (u16, String, Value) {
    let mut request = ureq::post(&server.url(path)).set("content-type", "application/json");
    if let Some(key) = key {
        request = request.set("Idempotency-Key", key);
    }
    let response = match request.send_string(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let status = response.status();
    let content_type = response.content_type().to_string();
    (status, content_type, json_of(response))
}

const TICKET: &str = r#"{"input": {"number": "INC0042", "impact": 1, "urgency": 1}}"#;

#[test]
fn an_idempotency_key_returns_the_same_run() {
    let (_dir, server) = server();
    let (status, _, first) = send(
        &server,
        "/v1/workflows/ticket-triage/runs",
        TICKET,
        Some("ticket-INC0042"),
    );
    assert_eq!(status, 201, "{first}");
    let (status, _, again) = send(
        &server,
        "/v1/workflows/ticket-triage/runs",
        TICKET,
        Some("ticket-INC0042"),
    );
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["id"], first["id"]);
    let (status, _, other) = send(
        &server,
        "/v1/workflows/ticket-triage/runs",
        TICKET,
        Some("ticket-INC0043"),
    );
    assert_eq!(status, 201);
    assert_ne!(other["id"], first["id"]);

    let id = first["id"].as_str().unwrap().to_string();
    let runs = server.wait_until_finished(std::slice::from_ref(&id), Duration::from_secs(20));
    assert_eq!(runs[0]["status"], "succeeded");
    assert_eq!(runs[0]["output"]["priority"], "P1");
    assert_eq!(runs[0]["steps"]["major"]["state"], "succeeded");
    let events = server.events(&id);
    assert_eq!(events.first().unwrap()["type"], "run_started");
    assert_eq!(events.last().unwrap()["type"], "run_succeeded");
    server.kill();
}

#[test]
fn bad_requests_get_problem_details() {
    let (_dir, server) = server();
    let (status, content_type, body) = send(
        &server,
        "/v1/workflows/ticket-triage/runs",
        r#"{"input": {"number": 7}}"#,
        None,
    );
    assert_eq!(status, 422);
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(body["type"], "https://steward.dev/problems/invalid-input");
    let errors = body["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e
            .as_str()
            .unwrap()
            .contains("ticket-triage.yaml:5:3: input.number: 7 is not of type \"string\"")),
        "{body:#}"
    );

    let (status, _, body) = send(&server, "/v1/workflows/no-such-flow/runs", TICKET, None);
    assert_eq!(
        (status, body["type"].as_str()),
        (404, Some("https://steward.dev/problems/not-found"))
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("workflow no-such-flow")
    );

    let (status, _, body) = send(
        &server,
        "/v1/workflows/ticket-triage/runs",
        "{not json",
        None,
    );
    assert_eq!(
        (status, body["type"].as_str()),
        (400, Some("https://steward.dev/problems/invalid-body"))
    );

    let (status, _, body) = send(
        &server,
        "/v1/workflows/ticket-triage/runs",
        TICKET,
        Some(""),
    );
    assert_eq!(
        (status, body["type"].as_str()),
        (
            400,
            Some("https://steward.dev/problems/invalid-idempotency-key")
        )
    );

    let missing = ureq::get(&server.url("/v1/runs/missing"))
        .call()
        .unwrap_err();
    let ureq::Error::Status(404, response) = missing else {
        panic!("expected 404")
    };
    assert_eq!(json_of(response)["status"], json!(404));
    server.kill();
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let (_dir, server) = server();
    let status = server.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}

#[test]
fn runs_are_listed_with_filters_and_a_cursor() {
    let (_dir, server) = server();
    let mut ids = Vec::new();
    for n in 0..3 {
        let body = format!(r#"{{"input": {{"number": "INC{n}", "impact": 3, "urgency": 3}}}}"#);
        ids.push(
            send(&server, "/v1/workflows/ticket-triage/runs", &body, None).2["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    server.wait_until_finished(&ids, Duration::from_secs(20));
    let get = |path: &str| -> (u16, Value) {
        match ureq::get(&server.url(path)).call() {
            Ok(r) => (r.status(), json_of(r)),
            Err(ureq::Error::Status(code, r)) => (code, json_of(r)),
            Err(e) => panic!("{e}"),
        }
    };
    let (_, first) = get("/v1/runs?workflow=ticket-triage&status=succeeded&limit=2");
    let first_ids: Vec<&str> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(first_ids, [ids[2].as_str(), ids[1].as_str()]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = get(&format!(
        "/v1/runs?workflow=ticket-triage&limit=2&cursor={cursor}"
    ));
    assert_eq!(second["items"][0]["id"], json!(ids[0]));
    assert_eq!(second["next_cursor"], Value::Null);

    let (status, body) = get("/v1/runs?status=done");
    assert_eq!(status, 400);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("not one of pending, running"),
        "{body}"
    );
    let (status, _) = get("/v1/runs?limit=0");
    assert_eq!(status, 400);
    server.kill();
}

#[test]
fn the_cli_lists_and_shows_runs_of_a_server() {
    let (_dir, server) = server();
    let (_, _, run) = send(&server, "/v1/workflows/ticket-triage/runs", TICKET, None);
    let id = run["id"].as_str().unwrap().to_string();
    server.wait_until_finished(std::slice::from_ref(&id), Duration::from_secs(20));
    let cli = |args: &[&str]| {
        std::process::Command::new(common::steward_bin())
            .args(args)
            .env("STEWARD_SERVER", server.url(""))
            .output()
            .unwrap()
    };
    let list = cli(&["runs", "list", "--workflow", "ticket-triage"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains(&id) && text.contains("succeeded"), "{text}");
    let show = cli(&["runs", "show", &id]);
    let shown: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(shown["output"]["priority"], "P1");
    let missing = cli(&["runs", "show", "nope"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("the server answered 404: run nope does not exist")
    );
    let unreachable = std::process::Command::new(common::steward_bin())
        .args(["runs", "list", "--server", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("is `steward serve` running?"));
    server.kill();
}
