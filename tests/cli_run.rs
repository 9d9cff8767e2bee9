//! `steward run` end to end with the real binary: plugins built from
//! source, a real HTTP server, retries, parallel steps, timers, and a
//! plugin scaffolded by `steward plugin new`.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::http_server::TestServer;
use serde_json::{Value, json};

struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Workspace {
        Workspace {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A steward.toml granting local HTTP, plus `extra`.
    fn config(&self, extra: &str) -> PathBuf {
        let text = format!(
            "data_dir = {:?}\n[plugins.http-request]\nallowed_hosts = [\"http://127.0.0.1:*\"]\n{extra}",
            self.path("data")
        );
        self.write("steward.toml", &text)
    }

    fn run(&self, workflow: &Path, input: &str, config: &Path) -> Output {
        Command::new(common::steward_bin())
            .arg("run")
            .arg(workflow)
            .args(["--input", input, "--config"])
            .arg(config)
            .output()
            .unwrap()
    }
}

fn stdout_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is the output JSON")
}

#[test]
fn an_example_runs_and_prints_its_output() {
    let ws = Workspace::new();
    let example = common::root().join("examples/workflows/ticket-triage.yaml");
    let out = ws.run(
        &example,
        r#"{"number":"INC0010001","impact":1,"urgency":1}"#,
        &ws.config(""),
    );
    let output = stdout_json(&out);
    assert_eq!(output["priority"], "P1");
    assert_eq!(output["short_description"], "[P1] INC0010001");
}

#[test]
fn input_against_the_schema_fails_with_file_line_and_field() {
    let ws = Workspace::new();
    let example = common::root().join("examples/workflows/ticket-triage.yaml");
    let out = ws.run(
        &example,
        r#"{"number":"INC1","impact":"high"}"#,
        &ws.config(""),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:5:3: input: \"urgency\" is a required property",
            example.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("input.impact: \"high\" is not of type \"integer\""),
        "{stderr}"
    );

    let out = ws.run(&example, "{not json", &ws.config(""));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--input is not valid JSON"));
}

#[test]
fn http_request_sends_the_idempotency_key_and_returns_the_response() {
    let server = TestServer::ok(r#"{"granted": true}"#);
    let ws = Workspace::new();
    let workflow = ws.write(
        "grant.yaml",
        &format!(
            "name: grant\nsteps:\n  - id: grant\n    uses: http-request\n    with:\n      method: POST\n      url: {}\n      body: {{ user: \"${{{{ input.user }}}}\" }}\noutput: ${{{{ steps.grant.output }}}}\n",
            server.url("/grants")
        ),
    );
    let output = stdout_json(&ws.run(&workflow, r#"{"user":"ada"}"#, &ws.config("")));
    assert_eq!(output["status"], 200);
    assert_eq!(output["body"], json!({"granted": true}));
    let received = server.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].method, "POST");
    assert_eq!(
        serde_json::from_slice::<Value>(&received[0].body).unwrap(),
        json!({"user": "ada"})
    );
    let key = received[0]
        .header("idempotency-key")
        .expect("Idempotency-Key sent");
    assert!(key.ends_with("/grant"), "{key}");
}

#[test]
fn a_retryable_failure_is_retried_under_one_idempotency_key() {
    let server = TestServer::start(|_, n| {
        if n < 2 {
            (503, vec![], b"busy".to_vec())
        } else {
            (200, vec![], b"{\"ok\":1}".to_vec())
        }
    });
    let ws = Workspace::new();
    let workflow = ws.write(
        "retry.yaml",
        &format!(
            "name: retry\nsteps:\n  - id: call\n    uses: http-request\n    with: {{ url: {} }}\n    retry: {{ max_attempts: 5, backoff: 50ms }}\noutput: ${{{{ steps.call.output.body }}}}\n",
            server.url("/flaky")
        ),
    );
    let output = stdout_json(&ws.run(&workflow, "{}", &ws.config("")));
    assert_eq!(output, json!({"ok": 1}));
    let received = server.received();
    assert_eq!(received.len(), 3);
    let keys: Vec<_> = received
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_string())
        .collect();
    assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
}

#[test]
fn a_non_retryable_failure_fails_at_once_with_the_plugins_message() {
    let server = TestServer::start(|_, _| (404, vec![], b"no such user".to_vec()));
    let ws = Workspace::new();
    let workflow = ws.write(
        "fatal.yaml",
        &format!(
            "name: fatal\nsteps:\n  - id: call\n    uses: http-request\n    with: {{ url: {} }}\n    retry: {{ max_attempts: 5, backoff: 10ms }}\n",
            server.url("/users/x")
        ),
    );
    let out = ws.run(&workflow, "{}", &ws.config(""));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("failed: step call failed: GET"), "{stderr}");
    assert!(stderr.contains("answered 404: no such user"), "{stderr}");
    assert_eq!(server.received().len(), 1);
}

#[test]
fn parallel_steps_all_run_and_a_failing_branch_is_named() {
    let server = TestServer::start(|r, _| {
        if r.path == "/bad" {
            (400, vec![], b"refused".to_vec())
        } else {
            (200, vec![], b"{}".to_vec())
        }
    });
    let ws = Workspace::new();
    let both = ws.write(
        "both.yaml",
        &format!(
            "name: both\nsteps:\n  - id: fan\n    parallel:\n      - {{ id: a, uses: http-request, with: {{ url: {a} }} }}\n      - {{ id: b, uses: http-request, with: {{ url: {b} }} }}\n  - id: after\n    uses: transform\n    with: {{ a: \"${{{{ steps.a.output.status }}}}\", b: \"${{{{ steps.fan.output.b.status }}}}\" }}\noutput: ${{{{ steps.after.output }}}}\n",
            a = server.url("/a"),
            b = server.url("/b")
        ),
    );
    let output = stdout_json(&ws.run(&both, "{}", &ws.config("")));
    assert_eq!(
        output,
        json!({"a": 200, "b": 200}),
        "a quoted lone expression keeps its type"
    );
    let mut paths: Vec<_> = server.received().iter().map(|r| r.path.clone()).collect();
    paths.sort();
    assert_eq!(paths, ["/a", "/b"]);

    let failing = ws.write(
        "failing.yaml",
        &format!(
            "name: failing\nsteps:\n  - id: fan\n    parallel:\n      - {{ id: good, uses: http-request, with: {{ url: {} }} }}\n      - {{ id: broken, uses: http-request, with: {{ url: {} }} }}\n",
            server.url("/a"),
            server.url("/bad")
        ),
    );
    let out = ws.run(&failing, "{}", &ws.config(""));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("step fan failed: step broken failed:"),
        "{stderr}"
    );
}

#[test]
fn a_wait_step_holds_the_run_until_its_deadline_and_when_skips() {
    let ws = Workspace::new();
    let workflow = ws.write(
        "wait.yaml",
        "name: wait\nsteps:\n  - id: pause\n    wait: 1s\n  - id: never\n    when: ${{ input.go }}\n    uses: transform\n    with: { x: 1 }\n  - id: done\n    uses: transform\n    with: { skipped: \"${{ !has(steps.never) }}\" }\noutput: ${{ steps.done.output }}\n",
    );
    let started = Instant::now();
    let output = stdout_json(&ws.run(&workflow, r#"{"go": false}"#, &ws.config("")));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(output, json!({"skipped": true}));
}

#[test]
fn a_scaffolded_plugin_builds_and_runs_in_a_workflow() {
    let ws = Workspace::new();
    let new = Command::new(common::steward_bin())
        .args(["plugin", "new", "greeter", "--dir"])
        .arg(ws.dir.path())
        .output()
        .unwrap();
    assert!(
        new.status.success(),
        "{}",
        String::from_utf8_lossy(&new.stderr)
    );

    let crate_dir = ws.path("greeter");
    let build = Command::new(common::steward_bin())
        .args(["plugin", "build"])
        .arg(&crate_dir)
        // Share compiled dependencies with the other wasm builds.
        .env(
            "CARGO_TARGET_DIR",
            common::root().join("target/wasm-plugins"),
        )
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let component = crate_dir.join("dist/greeter/greeter.wasm");
    assert!(
        String::from_utf8_lossy(&build.stdout).contains("matches steward:plugin/fulfilment@0.1.0")
    );

    let inspect = Command::new(common::steward_bin())
        .args(["plugin", "inspect"])
        .arg(&component)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        text.contains("world:    steward:plugin/fulfilment@0.1.0 (matches)"),
        "{text}"
    );
    assert!(text.contains("steward:plugin/handler@0.1.0"), "{text}");

    let config = ws.config(&format!("[plugins.greeter]\npath = {component:?}\n"));
    let workflow = ws.write(
        "hello.yaml",
        "name: hello\nsteps:\n  - id: greet\n    uses: greeter\n    with: { name: \"${{ input.who }}\" }\noutput: ${{ steps.greet.output.greeting }}\n",
    );
    let output = stdout_json(&ws.run(&workflow, r#"{"who": "Ada"}"#, &config));
    assert_eq!(output, json!("Hello, Ada!"));

    let out = ws.run(&workflow, r#"{"who": " "}"#, &config);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("name must not be empty"));
}

#[test]
fn a_wait_beyond_the_calendar_fails_the_step_instead_of_the_process() {
    let ws = Workspace::new();
    let workflow = ws.write(
        "far.yaml",
        "name: far\nsteps:\n  - id: pause\n    wait: 1000000y\n",
    );
    let out = ws.run(&workflow, "{}", &ws.config(""));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("steps.pause.wait: the wait ends too far in the future"),
        "{stderr}"
    );
}

/// Input that is not JSON is a usage error (exit 2), as `docs/operations.md` says;
/// a run that waits tells its user until when, instead of sitting silent.
#[test]
fn bad_input_json_exits_2_and_a_waiting_run_says_until_when() {
    let ws = Workspace::new();
    let workflow = ws.write(
        "pause.yaml",
        "name: pause\nsteps:\n  - id: pause\n    wait: 3s\n  - id: done\n    uses: transform\n    with: { ok: true }\noutput: ${{ steps.done.output }}\n",
    );
    let config = ws.config("");
    let bad = ws.run(&workflow, "{bad", &config);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--input is not valid JSON"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    let out = ws.run(&workflow, "{}", &config);
    assert_eq!(stdout_json(&out)["ok"], true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("waits until"), "{stderr}");
}
