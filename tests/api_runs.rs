//! The run endpoints over real HTTP: status codes, idempotency keys and the
//! problem+json error shape.

use crate::common;

use std::time::Duration;

use common::server::{Server, json_of};
use serde_json::{Value, json};

fn server() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let config = common::server::write_config(
        dir.path(),
        Some(&common::root().join("examples/workflows")),
        "",
    );
    let server = Server::start(&config);
    (dir, server)
}

fn send(server: &Server, path: &str, body: &str, key: Option<&str>) -> (u16, String, Value) {
    let mut request = server
        .request("POST", path)
        .set("content-type", "application/json");
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

    let (status, _, reused) = send(
        &server,
        "/v1/workflows/ticket-triage/runs",
        r#"{"input": {"number": "INC0099", "impact": 3, "urgency": 3}}"#,
        Some("ticket-INC0042"),
    );
    assert_eq!(status, 422, "{reused}");
    assert_eq!(
        reused["type"],
        "https://steward.dev/problems/idempotency-key-reused"
    );
    assert_eq!(reused["run_id"], first["id"]);

    // Eight clients retrying at once with one key make one run.
    let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    let (status, _, body) = send(
                        &server,
                        "/v1/workflows/ticket-triage/runs",
                        TICKET,
                        Some("concurrent-key"),
                    );
                    (status, body)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created = answers.iter().filter(|(s, _)| *s == 201).count();
    assert_eq!(created, 1, "{answers:?}");
    assert!(
        answers.iter().all(|(s, _)| *s == 201 || *s == 200),
        "{answers:?}"
    );
    assert!(
        answers.iter().all(|(_, b)| b["id"] == answers[0].1["id"]),
        "{answers:?}"
    );

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
    // The schema's place by file name: the server's folders are not the
    // client's business.
    assert!(
        errors.iter().any(|e| e
            .as_str()
            .unwrap()
            .starts_with("ticket-triage.yaml:5:3: input.number: 7 is not of type \"string\"")),
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

    let missing = server
        .request("GET", "/v1/runs/missing")
        .call()
        .unwrap_err();
    let ureq::Error::Status(404, response) = missing else {
        panic!("expected 404")
    };
    assert_eq!(json_of(response)["status"], json!(404));

    // A path parameter that is not UTF-8 once decoded.
    let garbled = server.request("GET", "/v1/runs/%FF").call().unwrap_err();
    let ureq::Error::Status(400, response) = garbled else {
        panic!("expected 400, got {garbled:?}")
    };
    assert_eq!(response.content_type(), "application/problem+json");
    assert_eq!(
        json_of(response)["type"],
        "https://steward.dev/problems/invalid-path"
    );

    // A route asked with a method it does not take: a problem too, with
    // the methods it takes.
    let wrong = server
        .request("DELETE", "/v1/workflows/ticket-triage/runs")
        .call()
        .unwrap_err();
    let ureq::Error::Status(405, response) = wrong else {
        panic!("expected 405, got {wrong:?}")
    };
    assert_eq!(response.header("allow"), Some("POST"));
    assert_eq!(response.content_type(), "application/problem+json");
    assert_eq!(
        json_of(response)["type"],
        "https://steward.dev/problems/method-not-allowed"
    );
    server.kill();
}

/// A workflow without required input starts from a bare POST (no body, no
/// Content-Type), as `curl -X POST` sends it; a token is taken whatever
/// the case of its `Bearer` scheme.
#[test]
fn a_run_starts_without_a_body_and_the_bearer_scheme_is_any_case() {
    let (_dir, server) = server();
    let bare = server
        .request("POST", "/v1/workflows/weekly-sla-review/runs")
        .call()
        .unwrap();
    assert_eq!(bare.status(), 201);
    let id = json_of(bare)["id"].as_str().unwrap().to_string();
    assert_eq!(server.run(&id)["input"], json!({}));

    let url = server.url("/v1/runs?limit=1");
    for scheme in ["bearer", "BEARER"] {
        let response = ureq::get(&url)
            .set(
                "authorization",
                &format!("{scheme} {}", common::server::ADMIN_TOKEN),
            )
            .call()
            .unwrap();
        assert_eq!(response.status(), 200, "{scheme}");
    }
    let refused = ureq::get(&url)
        .set(
            "authorization",
            &format!("Basic {}", common::server::ADMIN_TOKEN),
        )
        .call()
        .unwrap_err();
    assert!(matches!(refused, ureq::Error::Status(401, _)));
    server.kill();
}

#[test]
fn bodies_are_limited_in_size_type_and_depth() {
    let (_dir, server) = server();
    let path = "/v1/workflows/ticket-triage/runs";
    let huge = format!(
        r#"{{"input": {{"pad": "{}"}}}}"#,
        "x".repeat(1024 * 1024 + 1)
    );
    let (status, content_type, body) = send(&server, path, &huge, None);
    assert_eq!(status, 413, "{body:#}");
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(body["type"], "https://steward.dev/problems/body-too-large");

    let deep = format!(
        r#"{{"input": {{"x": {}1{}}}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    let (status, _, body) = send(&server, path, &deep, None);
    assert_eq!(status, 400, "{body:#}");
    assert_eq!(body["type"], "https://steward.dev/problems/too-deep");

    let (status, _, body) = send(&server, path, r#"{"inputs": {}}"#, None);
    assert_eq!(status, 422, "{body:#}");
    assert!(
        body["detail"].as_str().unwrap().contains("inputs"),
        "{body:#}"
    );

    let response = server
        .request("POST", path)
        .set("content-type", "text/plain")
        .send_string(TICKET)
        .unwrap_err();
    let ureq::Error::Status(415, response) = response else {
        panic!("expected 415")
    };
    assert_eq!(
        json_of(response)["type"],
        "https://steward.dev/problems/unsupported-media-type"
    );
    server.kill();
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let (_dir, server) = server();
    let status = server.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}

#[test]
fn sigterm_lets_a_step_in_flight_finish_and_commit() {
    let slow = common::http_server::TestServer::start(|_, _| {
        std::thread::sleep(Duration::from_millis(1500));
        (
            200,
            vec![("content-type".into(), "application/json".into())],
            br#"{"ok":true}"#.to_vec(),
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::write(
        workflows.join("slow.yaml"),
        format!(
            "name: slow\nversion: 1\nsteps:\n  - id: call\n    uses: http-request\n    with: {{ method: GET, url: \"{}\" }}\n  - id: after\n    uses: transform\n    with: {{ status: \"${{{{ steps.call.output.status }}}}\" }}\noutput: ${{{{ steps.after.output }}}}\n",
            slow.url("/slow")
        ),
    )
    .unwrap();
    let config = dir.path().join("steward.toml");
    std::fs::write(
        &config,
        format!(
            "database = \"sqlite://{}/steward.db\"\ndata_dir = {:?}\nworkflows = [{:?}]\n\n[plugins.http-request]\nallowed_hosts = [\"http://127.0.0.1:*\"]\n",
            dir.path().display(),
            dir.path().join("data"),
            workflows
        ),
    )
    .unwrap();
    let server = Server::start(&config);
    let id = server.start_run("slow", json!({}));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while slow.received().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the step never called out"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let stopping = std::time::Instant::now();
    let status = server.terminate(Duration::from_secs(15));
    let took = stopping.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took >= Duration::from_millis(1000),
        "exited after {took:?}, before the call in flight finished"
    );

    // The call's result was committed while stopping: the next start goes
    // on from it without calling out again.
    let server = Server::start(&config);
    let runs = server.wait_until_finished(std::slice::from_ref(&id), Duration::from_secs(20));
    assert_eq!(runs[0]["status"], "succeeded", "{:#}", runs[0]);
    assert_eq!(runs[0]["output"]["status"], 200);
    assert_eq!(slow.received().len(), 1, "the step ran twice");
    server.kill();
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
        match server.request("GET", path).call() {
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
    // A cursor the server never gave (made up, cut short, empty) is an
    // error, not a first page or an empty one that looks like the end.
    let truncated = &cursor[..8];
    for bad in ["garbage", truncated, ""] {
        let (status, body) = get(&format!("/v1/runs?limit=2&cursor={bad}"));
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains("next_cursor"),
            "{body}"
        );
    }
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
            .env("STEWARD_TOKEN", common::server::ADMIN_TOKEN)
            .output()
            .unwrap()
    };
    let list = cli(&["runs", "list", "--workflow", "ticket-triage"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains(&id) && text.contains("succeeded"), "{text}");
    // Filters are sent encoded: `#` is part of the name, not the start of
    // a fragment that would cut the filter to `ticket-triage`.
    let odd = cli(&["runs", "list", "--workflow", "ticket-triage#x"]);
    assert!(odd.status.success());
    assert_eq!(String::from_utf8_lossy(&odd.stdout).trim(), "no runs");
    // A full page ends with the cursor of the next, which lists the rest.
    send(&server, "/v1/workflows/ticket-triage/runs", TICKET, None);
    let first = cli(&[
        "runs",
        "list",
        "--workflow",
        "ticket-triage",
        "--limit",
        "1",
    ]);
    let first = String::from_utf8_lossy(&first.stdout).to_string();
    let cursor = first
        .split("--cursor ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no cursor in {first}"));
    let second = cli(&[
        "runs",
        "list",
        "--workflow",
        "ticket-triage",
        "--limit",
        "1",
        "--cursor",
        cursor,
    ]);
    let second = String::from_utf8_lossy(&second.stdout).to_string();
    assert!(second.contains(&id), "{first}\n{second}");
    assert!(!first.contains(&id), "{first}");
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

fn call(request: ureq::Request, body: Option<Value>) -> (u16, Value, Option<String>) {
    let result = match body {
        Some(b) => request
            .set("content-type", "application/json")
            .send_string(&b.to_string()),
        None => request.call(),
    };
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let status = response.status();
    let challenge = response.header("www-authenticate").map(str::to_string);
    let text = response.into_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        challenge,
    )
}

#[test]
fn tokens_and_scopes_guard_the_api() {
    let (_dir, server) = server();
    let anonymous = call(ureq::get(&server.url("/v1/runs")), None);
    assert_eq!((anonymous.0, anonymous.2.as_deref()), (401, Some("Bearer")));
    assert_eq!(
        anonymous.1["type"],
        "https://steward.dev/problems/unauthorized"
    );
    let forged = call(
        ureq::get(&server.url("/v1/runs")).set("Authorization", "Bearer stw_forged"),
        None,
    );
    assert_eq!(forged.0, 401);
    assert_eq!(
        call(ureq::get(&server.url("/healthz")), None).0,
        200,
        "liveness needs no token"
    );

    // The admin creates a read-only token; its secret is shown once.
    let (status, created, _) = call(
        server.request("POST", "/v1/tokens"),
        Some(json!({"name": "dashboard", "scopes": ["runs:read"]})),
    );
    assert_eq!(status, 201, "{created}");
    let secret = created["token"].as_str().unwrap().to_string();
    let reader = |method: &str, path: &str| {
        ureq::request(method, &server.url(path)).set("Authorization", &format!("Bearer {secret}"))
    };
    assert_eq!(call(reader("GET", "/v1/runs"), None).0, 200);
    let (status, body, _) = call(
        reader("POST", "/v1/workflows/ticket-triage/runs"),
        Some(serde_json::from_str(TICKET).unwrap()),
    );
    assert_eq!(status, 403);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("lacks the runs:write scope"),
        "{body}"
    );
    assert_eq!(
        call(
            reader("POST", "/v1/tokens"),
            Some(json!({"scopes": ["admin"]}))
        )
        .0,
        403,
        "no self-promotion"
    );

    // An approver's token (approvals:decide only) reads what there is to
    // decide, and nothing else.
    let (_, approver, _) = call(
        server.request("POST", "/v1/tokens"),
        Some(json!({"name": "chat-bot", "scopes": ["approvals:decide"]})),
    );
    let approver = approver["token"].as_str().unwrap().to_string();
    let as_approver = |path: &str| {
        ureq::get(&server.url(path)).set("Authorization", &format!("Bearer {approver}"))
    };
    assert_eq!(
        call(as_approver("/v1/approvals?approver=dana"), None).0,
        200
    );
    assert_eq!(call(as_approver("/v1/delegations"), None).0, 200);
    let (status, body, _) = call(as_approver("/v1/runs"), None);
    assert_eq!(status, 403, "{body}");
    // A route needing either scope names both to a token with neither.
    let (_, writer, _) = call(
        server.request("POST", "/v1/tokens"),
        Some(json!({"scopes": ["runs:write"]})),
    );
    let writer = writer["token"].as_str().unwrap().to_string();
    let (status, body, _) = call(
        ureq::get(&server.url("/v1/approvals")).set("Authorization", &format!("Bearer {writer}")),
        None,
    );
    assert_eq!(status, 403);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("lacks the runs:read or approvals:decide scope"),
        "{body}"
    );

    let (status, body, _) = call(
        server.request("POST", "/v1/tokens"),
        Some(json!({"scopes": ["runs:delete"]})),
    );
    assert_eq!(status, 422);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("unknown scope \"runs:delete\"")
    );

    // Revoked: refused from then on.
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        call(server.request("DELETE", &format!("/v1/tokens/{id}")), None).0,
        204
    );
    assert_eq!(call(reader("GET", "/v1/runs"), None).0, 401);
    assert_eq!(
        call(server.request("DELETE", &format!("/v1/tokens/{id}")), None).0,
        404
    );
    server.kill();
}

#[test]
fn an_expired_token_is_401_with_its_own_problem_type() {
    let (_dir, server) = server();
    for bad in ["0s", "soon"] {
        let (status, body, _) = call(
            server.request("POST", "/v1/tokens"),
            Some(json!({"subject": "max", "scopes": ["runs:read"], "expires_in": bad})),
        );
        assert_eq!(status, 422, "{bad}: {body}");
        assert!(
            body["detail"].as_str().unwrap().starts_with("expires_in"),
            "the detail names the field: {body}"
        );
    }
    let (status, created, _) = call(
        server.request("POST", "/v1/tokens"),
        Some(json!({"subject": "max", "scopes": ["runs:read"], "expires_in": "1s"})),
    );
    assert_eq!(status, 201, "{created}");
    assert!(created["expires_at"].is_string(), "{created}");
    let secret = created["token"].as_str().unwrap().to_string();
    let runs =
        || ureq::get(&server.url("/v1/runs")).set("Authorization", &format!("Bearer {secret}"));
    assert_eq!(call(runs(), None).0, 200, "valid until it expires");

    std::thread::sleep(Duration::from_millis(1_200));
    let (status, body, challenge) = call(runs(), None);
    assert_eq!(
        (status, challenge.as_deref()),
        (401, Some("Bearer")),
        "{body}"
    );
    assert_eq!(
        body["type"], "https://steward.dev/problems/token-expired",
        "{body}"
    );
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("expired at") && detail.contains("create a new one"),
        "{detail}"
    );
    assert_eq!(body["expired_at"], created["expires_at"], "{body}");
    // An unknown token stays plainly unauthorized.
    let (_, unknown, _) = call(
        ureq::get(&server.url("/v1/runs")).set("Authorization", "Bearer stw_forged"),
        None,
    );
    assert_eq!(unknown["type"], "https://steward.dev/problems/unauthorized");
    // Expired tokens are not live: they are not listed.
    let (_, listed, _) = call(server.request("GET", "/v1/tokens"), None);
    assert!(
        !listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == created["id"]),
        "{listed}"
    );
    server.kill();
}

#[test]
fn tokens_are_listed_with_subject_and_expiry_never_the_secret() {
    let (_dir, server) = server();
    let (status, max, _) = call(
        server.request("POST", "/v1/tokens"),
        Some(json!({"subject": "max", "scopes": ["approvals:decide"], "expires_in": "90d"})),
    );
    assert_eq!(status, 201, "{max}");
    assert_eq!(
        (max["subject"].as_str(), max["name"].as_str()),
        (Some("max"), Some("max"))
    );
    // Without a subject a token is the service named after it.
    let (_, dashboard, _) = call(
        server.request("POST", "/v1/tokens"),
        Some(json!({"name": "dashboard", "scopes": ["runs:read"]})),
    );
    assert_eq!(dashboard["subject"], "svc:dashboard");
    let (status, body, _) = call(
        server.request("POST", "/v1/tokens"),
        Some(json!({"subject": "max power", "scopes": ["runs:read"]})),
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body["detail"].as_str().unwrap().starts_with("subject"),
        "{body}"
    );

    // max uses his token once: its last use is recorded (to the minute).
    let max_secret = max["token"].as_str().unwrap();
    let (status, _, _) = call(
        ureq::get(&server.url("/v1/approvals?approver=me"))
            .set("Authorization", &format!("Bearer {max_secret}")),
        None,
    );
    assert_eq!(status, 200);
    let listing = || {
        let response = server.request("GET", "/v1/tokens").call().unwrap();
        let text = response.into_string().unwrap();
        for secret in [max_secret, dashboard["token"].as_str().unwrap()] {
            assert!(!text.contains(secret), "a secret is listed: {text}");
            assert!(
                !text.contains(&sha256_hex(secret)),
                "a secret's hash is listed: {text}"
            );
        }
        serde_json::from_str::<Value>(&text).unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let listed = listing();
        let max_listed = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == max["id"])
            .cloned()
            .expect("max's token is listed");
        if max_listed["last_used_at"].is_string() {
            break listed;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "last_used_at never recorded: {max_listed}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{listed:#}");
    let by_subject = |subject: &str| items.iter().find(|t| t["subject"] == subject).unwrap();
    let max_listed = by_subject("max");
    assert_eq!(max_listed["scopes"], json!(["approvals:decide"]));
    assert_eq!(max_listed["expires_at"], max["expires_at"]);
    let expires =
        chrono::DateTime::parse_from_rfc3339(max_listed["expires_at"].as_str().unwrap()).unwrap();
    let created =
        chrono::DateTime::parse_from_rfc3339(max_listed["created_at"].as_str().unwrap()).unwrap();
    assert_eq!((expires - created).num_days(), 90);
    let mut keys: Vec<&String> = max_listed.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "created_at",
            "expires_at",
            "id",
            "last_used_at",
            "name",
            "scopes",
            "subject"
        ],
        "{max_listed}"
    );
    let dashboard_listed = by_subject("svc:dashboard");
    assert!(dashboard_listed["expires_at"].is_null() && dashboard_listed["last_used_at"].is_null());

    // Only an admin lists tokens; a revoked one is gone from the list.
    let (status, _, _) = call(
        ureq::get(&server.url("/v1/tokens")).set("Authorization", &format!("Bearer {max_secret}")),
        None,
    );
    assert_eq!(status, 403);
    let id = dashboard["id"].as_str().unwrap();
    assert_eq!(
        call(server.request("DELETE", &format!("/v1/tokens/{id}")), None).0,
        204
    );
    let after = listing();
    assert_eq!(after["items"].as_array().unwrap().len(), 1, "{after:#}");
    server.kill();
}

/// The stored form of a secret, to check it is never listed.
fn sha256_hex(secret: &str) -> String {
    steward::auth::hash_secret(secret)
}

#[test]
fn a_fresh_installation_gets_an_admin_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("steward.toml");
    std::fs::write(
        &config,
        format!(
            "database = \"sqlite://{}/steward.db\"\ndata_dir = {data:?}\nworkflows = []\n",
            dir.path().display()
        ),
    )
    .unwrap();
    // Started without STEWARD_ADMIN_TOKEN: the harness's token is not used here.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(common::steward_bin())
        .args(["serve", "--config"])
        .arg(&config)
        .env("STEWARD_LISTEN", format!("127.0.0.1:{port}"))
        .env_remove("STEWARD_ADMIN_TOKEN")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let token_file = data.join("admin-token");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ureq::get(&format!("http://127.0.0.1:{port}/healthz"))
        .call()
        .is_err()
    {
        assert!(std::time::Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let secret = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let ok = ureq::get(&format!("http://127.0.0.1:{port}/v1/runs"))
        .set("Authorization", &format!("Bearer {secret}"))
        .call();
    assert_eq!(ok.unwrap().status(), 200);
    // The bootstrap token acts as admin, as STEWARD_ADMIN_TOKEN does.
    let listed = json_of(
        ureq::get(&format!("http://127.0.0.1:{port}/v1/tokens"))
            .set("Authorization", &format!("Bearer {secret}"))
            .call()
            .unwrap(),
    );
    assert_eq!(listed["items"][0]["subject"], "admin", "{listed:#}");
    child.kill().unwrap();
    child.wait().unwrap();

    // `steward token create` writes to the same database.
    let out = std::process::Command::new(common::steward_bin())
        .args([
            "token",
            "create",
            "--scopes",
            "runs:read,runs:write",
            "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .starts_with("stw_")
    );
    let bad = std::process::Command::new(common::steward_bin())
        .args(["token", "create", "--scopes", "everything", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown scope \"everything\""));

    // A person's token with a lifetime; a zero lifetime is refused.
    let max = std::process::Command::new(common::steward_bin())
        .args([
            "token",
            "create",
            "--subject",
            "max",
            "--scopes",
            "approvals:decide",
        ])
        .args(["--expires", "90d", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&max.stderr);
    assert!(
        max.status.success() && said.contains("for max") && said.contains("expires at"),
        "{said}"
    );
    let zero = std::process::Command::new(common::steward_bin())
        .args([
            "token",
            "create",
            "--subject",
            "max",
            "--scopes",
            "runs:read",
        ])
        .args(["--expires", "0s", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&zero.stderr);
    assert!(
        !zero.status.success() && said.contains("must be longer than zero"),
        "{said}"
    );
}

#[test]
fn the_openapi_document_describes_every_route() {
    let (_dir, server) = server();
    let response = ureq::get(&server.url("/openapi.json"))
        .call()
        .expect("open to everyone");
    let doc = json_of(response);
    assert_eq!(doc["openapi"], "3.1.0");
    let routes = [
        ("/healthz", "get"),
        ("/openapi.json", "get"),
        ("/metrics", "get"),
        ("/v1/workflows", "get"),
        ("/v1/workflows/{name}", "get"),
        ("/v1/workflows/{name}", "put"),
        ("/v1/plugins", "get"),
        ("/v1/approvals", "get"),
        ("/v1/reports/sla", "get"),
        ("/v1/delegations", "get"),
        ("/v1/delegations", "post"),
        ("/v1/delegations/{id}", "delete"),
        ("/v1/approvals/{id}", "get"),
        ("/v1/approvals/{id}", "post"),
        ("/v1/plugins/{name}", "get"),
        ("/v1/plugins/{name}", "put"),
        ("/v1/workflows/{name}/runs", "post"),
        ("/v1/runs", "get"),
        ("/v1/runs/{id}", "get"),
        ("/v1/runs/{id}/events", "get"),
        ("/v1/runs/{id}/cancel", "post"),
        ("/v1/runs/{id}/rerun", "post"),
        ("/v1/runs/{id}/retry", "post"),
        ("/v1/runs/{id}/signals", "get"),
        ("/v1/runs/{id}/signals/{name}", "post"),
        ("/v1/signals/{name}", "post"),
        ("/v1/tokens", "post"),
        ("/v1/tokens", "get"),
        ("/v1/tokens/{id}", "delete"),
        ("/v1/audit", "get"),
        ("/v1/hooks/{name}", "post"),
        ("/v1/schedules", "get"),
        ("/v1/schedules", "post"),
        ("/v1/schedules/{id}", "get"),
        ("/v1/schedules/{id}", "patch"),
        ("/v1/schedules/{id}", "delete"),
        ("/v1/groups", "get"),
        ("/v1/groups/{name}", "get"),
        ("/v1/groups/{name}", "put"),
        ("/v1/groups/{name}", "delete"),
    ];
    for (path, method) in routes {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is not documented"
        );
    }
    let documented: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    assert_eq!(
        documented,
        routes.len(),
        "the document lists a route the test does not know"
    );
    server.kill();
}

#[test]
fn every_route_but_the_open_ones_needs_a_token() {
    let (_dir, server) = server();
    let doc = json_of(ureq::get(&server.url("/openapi.json")).call().unwrap());
    let open = ["/healthz", "/metrics", "/openapi.json", "/v1/hooks/{name}"];
    let mut walked = 0;
    for (path, methods) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .split('/')
            .map(|part| if part.starts_with('{') { "x" } else { part })
            .collect::<Vec<_>>()
            .join("/");
        for method in methods.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            let status = match ureq::request(&method, &server.url(&concrete))
                .set("content-type", "application/json")
                .send_string("{}")
            {
                Ok(r) => r.status(),
                Err(ureq::Error::Status(s, _)) => s,
                Err(e) => panic!("{method} {concrete}: {e}"),
            };
            if open.contains(&path.as_str()) {
                assert_ne!(status, 401, "{method} {path} must be open");
            } else {
                assert_eq!(status, 401, "{method} {path} is open without a token");
                walked += 1;
            }
        }
    }
    assert!(walked >= 8, "only {walked} guarded routes were walked");
    server.kill();
}

/// One sample of the exposition: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// Parses the text exposition into samples, failing on any line that is not
/// a comment or a well-formed sample.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample: SERIES VALUE");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("labels of {line}"));
                let labels = body
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(|pair| {
                        let (k, v) = pair
                            .split_once('=')
                            .unwrap_or_else(|| panic!("label in {line}"));
                        let v = v
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .unwrap();
                        (k.to_string(), v.to_string())
                    })
                    .collect();
                (name, labels)
            }
            None => (series, Vec::new()),
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "metric name in {line}"
        );
        samples.push((name.to_string(), labels, value));
    }
    samples
}

#[test]
fn metrics_count_runs_steps_requests_and_the_queue() {
    let (_dir, server) = server();
    let ids: Vec<String> = (0..3)
        .map(|_| {
            server.start_run(
                "ticket-triage",
                serde_json::from_str::<Value>(TICKET).unwrap()["input"].clone(),
            )
        })
        .collect();
    server.wait_until_finished(&ids, Duration::from_secs(20));
    let response = ureq::get(&server.url("/metrics"))
        .call()
        .expect("open to everyone");
    assert!(response.content_type().contains("openmetrics-text"));
    let text = response.into_string().unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let samples = parse_exposition(&text);
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| v)
            .sum()
    };
    assert_eq!(
        value(
            "steward_runs_started_total",
            &[("workflow", "ticket-triage")]
        ),
        3.0,
        "{text}"
    );
    assert_eq!(
        value(
            "steward_runs_finished_total",
            &[("workflow", "ticket-triage"), ("status", "succeeded")]
        ),
        3.0,
        "{text}"
    );
    assert!(
        value("steward_step_duration_seconds_count", &[("outcome", "ok")]) >= 3.0,
        "{text}"
    );
    assert!(
        samples.iter().any(|(n, l, _)| n == "steward_queue_depth"
            && l.iter().any(|(k, v)| k == "status" && v == "waiting")),
        "{text}"
    );
    assert_eq!(
        value(
            "steward_http_request_duration_seconds_count",
            &[
                ("method", "POST"),
                ("route", "/v1/workflows/{name}/runs"),
                ("status", "201")
            ]
        ),
        3.0,
        "{text}"
    );
    server.kill();
}

/// axum answers HEAD with a GET handler: a token that may not GET a run
/// may not HEAD it either (HEAD once fell through to "any token").
#[test]
fn head_needs_the_scope_of_get() {
    let (_dir, server) = server();
    let id = server.start_run(
        "ticket-triage",
        json!({"number": "INC0042", "impact": 1, "urgency": 1}),
    );
    let (_, approver, _) = call(
        server.request("POST", "/v1/tokens"),
        Some(json!({"name": "chat-bot", "scopes": ["approvals:decide"]})),
    );
    let approver = approver["token"].as_str().unwrap().to_string();
    let head = |path: &str, token: &str| match ureq::request("HEAD", &server.url(path))
        .set("Authorization", &format!("Bearer {token}"))
        .call()
    {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(status, _)) => status,
        Err(e) => panic!("HEAD {path}: {e}"),
    };
    for path in [
        format!("/v1/runs/{id}"),
        format!("/v1/runs/{id}/events"),
        "/v1/runs".to_string(),
    ] {
        assert_eq!(head(&path, &approver), 403, "HEAD {path}");
        assert_eq!(
            head(&path, common::server::ADMIN_TOKEN),
            200,
            "HEAD {path} as admin"
        );
    }
    // What the approver may GET, it may HEAD.
    assert_eq!(head("/v1/approvals", &approver), 200);
    server.kill();
}

/// Every distinct label set is a series kept for the life of the process:
/// a method or path a client invents must not become one (3,000 invented
/// methods once grew /metrics from 229 KB to 5.4 MB).
#[test]
fn invented_methods_and_paths_do_not_grow_the_metrics() {
    let (_dir, server) = server();
    let status = |method: &str, path: &str| match ureq::request(method, &server.url(path)).call() {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(status, _)) => status,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let request_series = || -> Vec<String> {
        let text = ureq::get(&server.url("/metrics"))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        let mut series: Vec<String> = parse_exposition(&text)
            .into_iter()
            .filter(|(name, _, _)| name.starts_with("steward_http_request_duration_seconds"))
            .map(|(name, labels, _)| format!("{name}{labels:?}"))
            .collect();
        series.sort();
        series
    };
    // One round makes the series these requests fall under exist.
    let round = |n: usize| {
        for i in 0..n {
            // Invented methods on a served path, an open one, a /v1 one
            // (401 without a token) and unmatched paths.
            status(&format!("INVENTED{i}"), "/healthz");
            status(&format!("X-METHOD-{i}"), "/v1/runs");
            status("GET", &format!("/no/such/path/{i}"));
            status(&format!("PROBE{i}"), &format!("/v1/nothing/{i}"));
        }
    };
    round(1);
    request_series();
    let before = request_series();
    round(50);
    let after = request_series();
    assert_eq!(before, after, "new series appeared");
    assert!(
        after.iter().all(|s| !s.contains("INVENTED")
            && !s.contains("X-METHOD")
            && !s.contains("PROBE")
            && !s.contains("/no/such/path")),
        "{after:#?}"
    );
    assert!(
        after.iter().any(|s| s.contains("\"other\"")),
        "invented methods are counted under method=\"other\": {after:#?}"
    );
    server.kill();
}

/// A URL's path and query may be a credential (chat webhook URLs are):
/// when a call fails in transport, the error kept in the run names the
/// origin only (ureq's own message starts with the whole URL).
#[test]
fn a_failed_http_call_names_only_the_origin_in_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    // Free a moment ago, so nothing listens: the connection is refused.
    let port = common::server::free_port();
    let secret_path = "/services/T0SECRET/B0SECRET/xoxb-not-for-logs?token=hunter2";
    let workflow = |name: &str, origin: &str| {
        std::fs::write(
            workflows.join(format!("{name}.yaml")),
            format!(
                "name: {name}\nversion: 1\nsteps:\n  - id: post\n    uses: http-request\n    with: {{ method: POST, url: \"{origin}{secret_path}\", body: {{ text: hi }} }}\n"
            ),
        )
        .unwrap();
    };
    workflow("notify-chat", &format!("http://127.0.0.1:{port}"));
    // And a status the step does not expect, from a server that is there.
    let chat =
        common::http_server::TestServer::start(|_, _| (404, vec![], b"no such hook".to_vec()));
    let chat_origin = chat.url("");
    let chat_origin = chat_origin.trim_end_matches('/');
    workflow("notify-missing-chat", chat_origin);
    let config = common::server::write_config(
        dir.path(),
        Some(&workflows),
        "[plugins.http-request]\nallowed_hosts = [\"http://127.0.0.1:*\"]\n",
    );
    let server = Server::start(&config);
    let id = server.start_run("notify-chat", json!({}));
    let run =
        server.wait_until_finished(std::slice::from_ref(&id), Duration::from_secs(30))[0].clone();
    assert_eq!(run["status"], "failed", "{run:#}");
    // The run (its error and its steps' errors) and every error in its
    // history; the step's input holds the URL as the workflow wrote it.
    let errors: Vec<Value> = server
        .events(&id)
        .into_iter()
        .filter_map(|e| e.get("error").cloned())
        .collect();
    assert!(!errors.is_empty());
    let shown = format!("{run} {}", json!(errors));
    assert!(
        shown.contains(&format!("http://127.0.0.1:{port}")),
        "the error names the origin: {run:#}"
    );
    let no_secret_in = |shown: &str| {
        for secret in ["T0SECRET", "B0SECRET", "xoxb", "hunter2", "/services"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    };
    no_secret_in(&shown);

    let id = server.start_run("notify-missing-chat", json!({}));
    let run =
        server.wait_until_finished(std::slice::from_ref(&id), Duration::from_secs(30))[0].clone();
    assert_eq!(run["status"], "failed", "{run:#}");
    let error = run["error"]["message"].as_str().unwrap();
    assert!(
        error.contains(&format!("POST {chat_origin} answered 404")),
        "{run:#}"
    );
    no_secret_in(&run.to_string());
    assert!(!server.log().contains("T0SECRET"), "{}", server.log());
    server.kill();
}

/// The data folder, the SQLite files and the admin token are the server's
/// alone, whatever the umask it was started with; files an older version
/// left readable are narrowed at the next start.
#[test]
fn data_files_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    use std::os::unix::process::CommandExt as _;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("steward.toml");
    // The default database: steward.db in data_dir.
    std::fs::write(&config, format!("data_dir = {data:?}\nworkflows = []\n")).unwrap();
    let start = || {
        let port = common::server::free_port();
        let mut command = std::process::Command::new(common::steward_bin());
        command
            .args(["serve", "--config"])
            .arg(&config)
            .current_dir(dir.path())
            .env("STEWARD_LISTEN", format!("127.0.0.1:{port}"))
            .env_remove("STEWARD_ADMIN_TOKEN")
            .stderr(std::process::Stdio::null());
        // SAFETY: umask is async-signal-safe; the common default, under
        // which files are created readable by everyone.
        unsafe {
            command.pre_exec(|| {
                libc::umask(0o022);
                Ok(())
            });
        }
        let child = Stopped(command.spawn().unwrap());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while ureq::get(&format!("http://127.0.0.1:{port}/healthz"))
            .call()
            .is_err()
        {
            assert!(std::time::Instant::now() < deadline, "server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    };
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let private_files = [
        "steward.db",
        "steward.db-wal",
        "steward.db-shm",
        "admin-token",
    ];

    let child = start();
    assert_eq!(mode(&data), 0o700, "data_dir");
    for name in private_files {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
    drop(child);

    // As an older version left them.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    for name in ["steward.db", "steward.db-wal", "steward.db-shm"] {
        let path = data.join(name);
        if path.exists() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let _child = start();
    assert_eq!(mode(&data), 0o700, "data_dir after a restart");
    for name in private_files {
        assert_eq!(mode(&data.join(name)), 0o600, "{name} after a restart");
    }
}

/// A child process killed when dropped, so a failed assertion does not
/// leave it running.
struct Stopped(std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The audit entries `query` selects (admin token), newest first.
fn audit(server: &Server, query: &str) -> Vec<Value> {
    let (status, body) = server.send_json("GET", &format!("/v1/audit{query}"), &json!({}));
    assert_eq!(status, 200, "{body:#}");
    body["items"].as_array().unwrap().clone()
}

#[test]
fn group_and_schedule_changes_are_audited() {
    let (_dir, server) = server();
    let (status, body) = server.send_json(
        "PUT",
        "/v1/groups/reviewers",
        &json!({"members": ["dana", "eli"]}),
    );
    assert_eq!(status, 201, "{body:#}");
    let (status, created) = server.send_json(
        "POST",
        "/v1/schedules",
        &json!({"workflow": "weekly-sla-review", "cron": "0 0 9 * * *"}),
    );
    assert_eq!(status, 201, "{created:#}");
    let id = created["id"].as_str().unwrap();
    let (status, body) = server.send_json(
        "PATCH",
        &format!("/v1/schedules/{id}"),
        &json!({"cron": "0 30 9 * * *"}),
    );
    assert_eq!(status, 200, "{body:#}");
    // A PATCH that changes nothing records nothing.
    let (status, body) = server.send_json(
        "PATCH",
        &format!("/v1/schedules/{id}"),
        &json!({"cron": "0 30 9 * * *"}),
    );
    assert_eq!(status, 200, "{body:#}");
    let deleted = server
        .request("DELETE", &format!("/v1/schedules/{id}"))
        .call()
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let removed = server
        .request("DELETE", "/v1/groups/reviewers")
        .call()
        .unwrap();
    assert_eq!(removed.status(), 204);

    let by_admin = audit(&server, "?actor=admin&limit=500");
    let seen: Vec<(&str, &str)> = by_admin
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["target"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [
            ("group.delete", "reviewers"),
            ("schedule.delete", id),
            ("schedule.update", id),
            ("schedule.create", id),
            ("group.set", "reviewers"),
        ],
        "newest first: {by_admin:#?}"
    );
    assert_eq!(by_admin[4]["detail"]["members"], json!(["dana", "eli"]));
    assert_eq!(
        by_admin[3]["detail"],
        json!({"workflow": "weekly-sla-review", "cron": "0 0 9 * * *"})
    );
    assert_eq!(by_admin[2]["detail"]["cron"], "0 30 9 * * *");
    assert_eq!(by_admin[1]["detail"]["workflow"], "weekly-sla-review");
    // The schedules of the workflows' triggers, synced at start, are the
    // server's own.
    let synced = audit(&server, "?action=schedule.create&actor=system");
    assert!(!synced.is_empty(), "{synced:#?}");
}

#[test]
fn every_audited_action_appears_once_with_its_actor() {
    let (_dir, server) = server();
    // The admin creates a token for max, deploys a workflow only max
    // approves, and starts it; max decides with his own token; the admin
    // revokes max's token.
    let max = server.create_token("max", &["approvals:decide"]);
    let max_id = max["id"].as_str().unwrap();
    let max_secret = max["token"].as_str().unwrap();
    let yaml =
        "name: audited\nversion: 1\nsteps:\n  - id: ok\n    approval:\n      approvers: [max]\n";
    let deployed = server
        .request("PUT", "/v1/workflows/audited")
        .set("content-type", "application/yaml")
        .send_string(yaml)
        .unwrap();
    assert_eq!(deployed.status(), 201);
    let run = server.start_run("audited", json!({}));
    let approval = server.approval_of(&run, "max");
    let approval_id = approval["id"].as_str().unwrap();
    let (status, body) = server.send_json_as(
        max_secret,
        "POST",
        &format!("/v1/approvals/{approval_id}"),
        &json!({"decision": "approve"}),
    );
    assert_eq!(status, 201, "{body:#}");
    // max hands his approvals to eve and takes them back; the admin
    // cancels a second run.
    let (status, delegation) = server.send_json_as(
        max_secret,
        "POST",
        "/v1/delegations",
        &json!({"from": "max", "to": "eve"}),
    );
    assert_eq!(status, 201, "{delegation:#}");
    let delegation_id = delegation["id"].as_str().unwrap();
    let ended = ureq::request(
        "DELETE",
        &server.url(&format!("/v1/delegations/{delegation_id}")),
    )
    .set("Authorization", &format!("Bearer {max_secret}"))
    .call()
    .unwrap();
    assert_eq!(ended.status(), 204);
    let second = server.start_run("audited", json!({}));
    let (status, body) = server.send_json(
        "POST",
        &format!("/v1/runs/{second}/cancel"),
        &json!({"reason": "not needed"}),
    );
    assert_eq!(status, 202, "{body:#}");
    // Reading the log takes the admin scope.
    let (status, body) = server.send_json_as(max_secret, "GET", "/v1/audit", &json!({}));
    assert_eq!(status, 403, "{body:#}");
    let revoked = server
        .request("DELETE", &format!("/v1/tokens/{max_id}"))
        .call()
        .unwrap();
    assert_eq!(revoked.status(), 204);

    // Each change once, with who made it; the workflows loaded at start
    // are the server's own (`system`).
    let by_people: Vec<Value> = audit(&server, "?limit=500")
        .into_iter()
        .filter(|e| e["actor"] != "system")
        .collect();
    let seen: Vec<(String, String, String)> = by_people
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["target"].as_str().unwrap().to_string(),
                e["actor"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String, String)> = [
        ("token.revoke", max_id, "admin"),
        ("run.cancel", &second, "admin"),
        ("delegation.end", delegation_id, "max"),
        ("delegation.set", delegation_id, "max"),
        ("approval.decide", approval_id, "max"),
        ("workflow.deploy", "audited@1", "admin"),
        ("token.create", max_id, "admin"),
    ]
    .iter()
    .map(|(a, t, w)| (a.to_string(), t.to_string(), w.to_string()))
    .collect();
    assert_eq!(seen, expected, "newest first: {by_people:#?}");
    assert_eq!(by_people[1]["detail"]["reason"], "not needed");
    let set = &by_people[3]["detail"];
    assert_eq!((&set["from"], &set["to"]), (&json!("max"), &json!("eve")));
    let decided = &by_people[4]["detail"];
    assert_eq!(decided["decision"], "approve", "{decided:#}");
    assert_eq!(decided["by"], "max", "{decided:#}");
    let created = &by_people[6]["detail"];
    assert_eq!(created["subject"], "max", "{created:#}");
    assert_eq!(
        created["scopes"],
        json!(["approvals:decide"]),
        "{created:#}"
    );
    assert!(
        !by_people.iter().any(|e| e.to_string().contains(max_secret)),
        "a secret reached the log"
    );

    // Filters, and paging by cursor.
    let mine = audit(&server, "?actor=max&action=approval.decide");
    assert_eq!(mine.len(), 1, "{mine:#?}");
    assert_eq!(mine[0]["target"], approval_id);
    assert_eq!(audit(&server, "?actor=max").len(), 3);
    let creations = audit(&server, "?action=token.create&actor=admin");
    assert_eq!(creations.len(), 1, "{creations:#?}");
    assert_eq!(creations[0]["target"], max_id);
    let (status, first) = server.send_json("GET", "/v1/audit?actor=admin&limit=2", &json!({}));
    assert_eq!(status, 200, "{first:#}");
    assert_eq!(first["items"][0]["action"], "token.revoke");
    let cursor = first["next_cursor"].as_str().unwrap();
    let rest = audit(&server, &format!("?actor=admin&limit=2&cursor={cursor}"));
    assert_eq!(rest.len(), 2, "{rest:#?}");
    assert_eq!(rest[0]["action"], "workflow.deploy");
    assert_eq!(rest[1]["action"], "token.create");
    let (status, body) = server.send_json("GET", "/v1/audit?cursor=nope", &json!({}));
    assert_eq!(status, 400, "{body:#}");
    // The CLI lists the same, filtered.
    let cli = std::process::Command::new(common::steward_bin())
        .args([
            "audit",
            "--actor",
            "max",
            "--action",
            "approval.decide",
            "--limit",
            "5",
        ])
        .env("STEWARD_SERVER", server.url(""))
        .env("STEWARD_TOKEN", common::server::ADMIN_TOKEN)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("approval.decide") && text.contains(approval_id),
        "{text}"
    );
    // Nothing changes or deletes an entry.
    match server.request("DELETE", "/v1/audit").call() {
        Err(ureq::Error::Status(status, _)) => assert_eq!(status, 405),
        other => panic!("DELETE /v1/audit: {other:?}"),
    }
    server.kill();
}
