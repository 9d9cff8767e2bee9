//! Sub-workflows against the real binary: a `workflow:` step starts a run
//! of its own, linked both ways; a failed child fails the step and the
//! step's `retry` starts a new child; cancelling the parent cancels the
//! child it waits for; `timeout` bounds the child; unknown children and
//! cycles are refused when deployed; nesting is limited.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::http_server::TestServer;
use common::server::{Server, json_of, write_config};
use serde_json::{Value, json};

/// A folder with `files` (name, YAML) as workflows and a configuration
/// granting the local HTTP sink, plus `extra` TOML.
fn setup(files: &[(&str, String)], extra: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    for (name, yaml) in files {
        std::fs::write(workflows.join(format!("{name}.yaml")), yaml).unwrap();
    }
    let config = write_config(
        dir.path(),
        Some(&workflows),
        &format!("[plugins.http-request]\nallowed_hosts = [\"http://127.0.0.1:*\"]\n{extra}"),
    );
    (dir, config)
}

/// Fails (500) the first time, then answers.
fn fails_once() -> TestServer {
    TestServer::start(|_, before| {
        if before == 0 {
            (500, vec![], b"vendor down".to_vec())
        } else {
            (
                200,
                vec![("content-type".into(), "application/json".into())],
                b"{\"laptop\":\"LT-7\"}".to_vec(),
            )
        }
    })
}

fn parent_and_children(sink: &TestServer) -> Vec<(&'static str, String)> {
    vec![
        (
            "onboard",
            "name: onboard
input:
  type: object
  required: [employee]
steps:
  - id: account
    workflow: make-account
    with: { user: \"${{ input.employee }}\" }
  - id: laptop
    workflow: order-laptop
    with: { for: \"${{ steps.account.output.login }}\" }
    retry: { max_attempts: 2, backoff: 100ms }
output: { login: \"${{ steps.account.output.login }}\", laptop: \"${{ steps.laptop.output.body.laptop }}\" }
"
            .to_string(),
        ),
        (
            "make-account",
            "name: make-account
input:
  type: object
  required: [user]
  properties: { user: { type: string } }
steps:
  - id: shape
    uses: transform
    with: { login: \"${{ input.user + '.x' }}\" }
output: ${{ steps.shape.output }}
"
            .to_string(),
        ),
        (
            "order-laptop",
            format!(
                "name: order-laptop
steps:
  - id: order
    uses: http-request
    with: {{ method: POST, url: \"{}\", body: {{ for: \"${{{{ input.for }}}}\" }} }}
    retry: {{ max_attempts: 1 }}
output: ${{{{ steps.order.output }}}}
",
                sink.url("/laptops")
            ),
        ),
    ]
}

#[test]
fn children_are_runs_of_their_own_and_a_failed_child_is_retried_by_a_new_one() {
    let sink = fails_once();
    let (_dir, config) = setup(&parent_and_children(&sink), "");
    let server = Server::start(&config);
    let parent = server.start_run("onboard", json!({ "employee": "ada" }));
    let done = server.wait_until_finished(std::slice::from_ref(&parent), Duration::from_secs(30));
    assert_eq!(done[0]["status"], "succeeded", "{:#}", done[0]);
    assert_eq!(
        done[0]["output"],
        json!({ "login": "ada.x", "laptop": "LT-7" })
    );

    let parent_view = server.run(&parent);
    let children: Vec<String> = parent_view["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        children.len(),
        3,
        "one account, two laptop attempts: {parent_view:#}"
    );
    let statuses: Vec<(String, String)> = children
        .iter()
        .map(|id| {
            let child = server.run(id);
            assert_eq!(child["parent_run"], json!(parent), "{child:#}");
            (
                child["workflow"].as_str().unwrap().to_string(),
                child["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("make-account".to_string(), "succeeded".to_string()),
            ("order-laptop".to_string(), "failed".to_string()),
            ("order-laptop".to_string(), "succeeded".to_string()),
        ]
    );
    // The first laptop attempt's failure is in the parent's history.
    let events = server.events(&parent);
    let failed = events
        .iter()
        .find(|e| e["type"] == "step_failed" && e["step"] == "laptop")
        .expect("the first attempt failed");
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&children[1]) && message.contains("failed"),
        "{message}"
    );
    assert!(failed["retry_at"].is_string(), "{failed:#}");
    // The child acts for the parent's starter.
    assert_eq!(
        server.run(&children[0])["started_by"],
        parent_view["started_by"]
    );
}

fn waiting_child(step_extra: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "parent",
            format!("name: parent\nsteps:\n  - id: sub\n    workflow: slow\n{step_extra}"),
        ),
        (
            "slow",
            "name: slow\nsteps:\n  - id: nap\n    wait: 1h\n".to_string(),
        ),
    ]
}

/// Waits until `f` holds.
fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cancelling_a_parent_cancels_the_child_it_waits_for() {
    let (_dir, config) = setup(&waiting_child(""), "");
    let server = Server::start(&config);
    let parent = server.start_run("parent", json!({}));
    eventually(Duration::from_secs(20), "the child waits", || {
        server.run(&parent)["children"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
    });
    let child = server.run(&parent)["children"][0]
        .as_str()
        .unwrap()
        .to_string();
    eventually(Duration::from_secs(20), "the child waits", || {
        server.run(&child)["status"] == "waiting"
    });
    assert_eq!(server.run(&parent)["status"], "waiting");
    let (status, body) = server.send_json("POST", &format!("/v1/runs/{parent}/cancel"), &json!({}));
    assert_eq!(status, 202, "{body:#}");
    let done =
        server.wait_until_finished(&[parent.clone(), child.clone()], Duration::from_secs(20));
    assert_eq!(done[0]["status"], "cancelled");
    assert_eq!(done[1]["status"], "cancelled", "{:#}", done[1]);
    assert!(
        done[1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&parent),
        "{:#}",
        done[1]
    );
}

#[test]
fn a_timeout_bounds_the_child_and_stops_it() {
    let (_dir, config) = setup(&waiting_child("    timeout: 2s\n"), "");
    let server = Server::start(&config);
    let parent = server.start_run("parent", json!({}));
    let done = server.wait_until_finished(std::slice::from_ref(&parent), Duration::from_secs(30));
    assert_eq!(done[0]["status"], "failed", "{:#}", done[0]);
    let message = done[0]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("did not finish within the step's timeout (2s)"),
        "{message}"
    );
    let child = server.run(&parent)["children"][0]
        .as_str()
        .unwrap()
        .to_string();
    let done = server.wait_until_finished(&[child], Duration::from_secs(20));
    assert_eq!(done[0]["status"], "cancelled", "{:#}", done[0]);
}

#[test]
fn nesting_deeper_than_the_limit_fails_the_step_that_would_go_deeper() {
    let files = vec![
        (
            "top",
            "name: top\nsteps:\n  - id: down\n    workflow: middle\n".to_string(),
        ),
        (
            "middle",
            "name: middle\nsteps:\n  - id: down\n    workflow: bottom\n".to_string(),
        ),
        (
            "bottom",
            "name: bottom\nsteps:\n  - id: t\n    uses: transform\n".to_string(),
        ),
    ];
    let (_dir, config) = setup(&files, "[defaults]\nmax_workflow_depth = 1\n");
    let server = Server::start(&config);
    let top = server.start_run("top", json!({}));
    let done = server.wait_until_finished(std::slice::from_ref(&top), Duration::from_secs(30));
    assert_eq!(done[0]["status"], "failed", "{:#}", done[0]);
    let message = done[0]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("nest 2 deep here, more than the limit of 1"),
        "{message}"
    );
}

fn put(server: &Server, name: &str, yaml: &str) -> (u16, Value) {
    match server
        .request("PUT", &format!("/v1/workflows/{name}"))
        .set("content-type", "application/yaml")
        .send_string(yaml)
    {
        Ok(r) => (r.status(), json_of(r)),
        Err(ureq::Error::Status(status, r)) => (status, json_of(r)),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn deploys_refuse_unknown_children_bad_literal_inputs_and_cycles() {
    let (_dir, config) = setup(&[], "");
    let server = Server::start(&config);
    let (status, body) = put(
        &server,
        "ping",
        "name: ping\nsteps:\n  - id: p\n    workflow: pong\n",
    );
    assert_eq!(status, 422, "{body:#}");
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("ping.yaml:3:5: steps.p.workflow: unknown workflow pong"),
        "{body:#}"
    );

    let pong_v1 = "name: pong\nversion: 1\ninput:\n  type: object\n  required: [n]\nsteps:\n  - id: t\n    uses: transform\n";
    assert_eq!(put(&server, "pong", pong_v1).0, 201);
    let (status, body) = put(
        &server,
        "ping",
        "name: ping\nsteps:\n  - id: p\n    workflow: pong\n    with: { m: 1 }\n",
    );
    assert_eq!(status, 422, "{body:#}");
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .contains("steps.p.with: does not match the input of workflow pong"),
        "{body:#}"
    );
    assert_eq!(
        put(
            &server,
            "ping",
            "name: ping\nsteps:\n  - id: p\n    workflow: pong\n    with: { n: 1 }\n"
        )
        .0,
        201
    );
    let pong_v2 = "name: pong\nversion: 2\nsteps:\n  - id: back\n    workflow: ping\n";
    let (status, body) = put(&server, "pong", pong_v2);
    assert_eq!(status, 422, "{body:#}");
    assert_eq!(
        body["errors"][0],
        "pong.yaml:4:5: steps.back.workflow: pong -> ping -> pong: a cycle of sub-workflows would never end"
    );
}

#[test]
fn validate_reports_unknown_children_and_cycles_with_file_line_and_column() {
    let (dir, config) = setup(&[], "");
    let write = |name: &str, yaml: &str| -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        path
    };
    let a = write(
        "a.yaml",
        "name: a\nsteps:\n  - id: first\n    uses: transform\n  - id: call-b\n    workflow: b\n",
    );
    let b = write(
        "b.yaml",
        "name: b\nsteps:\n  - id: call-a\n    workflow: a\n",
    );
    let c = write(
        "c.yaml",
        "name: c\nsteps:\n  - id: call-x\n    workflow: nowhere\n",
    );
    let output = validate(&config, &[&a, &b, &c]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        format!(
            "{}:5:5: steps.call-b.workflow: a -> b -> a: a cycle",
            a.display()
        ),
        format!(
            "{}:3:5: steps.call-a.workflow: b -> a -> b: a cycle",
            b.display()
        ),
        format!(
            "{}:3:5: steps.call-x.workflow: unknown workflow nowhere",
            c.display()
        ),
    ] {
        assert!(stderr.contains(&expected), "{expected} in:\n{stderr}");
    }
}

fn validate(config: &Path, files: &[&PathBuf]) -> std::process::Output {
    std::process::Command::new(common::steward_bin())
        .args(["validate", "--config"])
        .arg(config)
        .args(files)
        .output()
        .unwrap()
}

/// Retrying a parent whose sub-workflow failed starts a new child (a new
/// generation of the step), and keeps the steps that had finished.
#[test]
fn retrying_a_parent_from_its_failed_child_starts_a_new_child() {
    let sink = fails_once();
    let mut files = parent_and_children(&sink);
    files[0].1 = files[0]
        .1
        .replace("    retry: { max_attempts: 2, backoff: 100ms }\n", "");
    let (_dir, config) = setup(&files, "");
    let server = Server::start(&config);
    let parent = server.start_run("onboard", json!({ "employee": "ada" }));
    let done = server.wait_until_finished(std::slice::from_ref(&parent), Duration::from_secs(30));
    assert_eq!(done[0]["status"], "failed", "{:#}", done[0]);

    let (status, body) = server.send_json("POST", &format!("/v1/runs/{parent}/retry"), &json!({}));
    assert!(status == 200 || status == 202, "{status} {body:#}");
    let done = server.wait_until_finished(std::slice::from_ref(&parent), Duration::from_secs(30));
    assert_eq!(done[0]["status"], "succeeded", "{:#}", done[0]);
    assert_eq!(
        done[0]["output"],
        json!({ "login": "ada.x", "laptop": "LT-7" })
    );
    let children = server.run(&parent)["children"].clone();
    assert_eq!(
        children,
        json!([
            format!("{parent}.account.1"),
            format!("{parent}.laptop.1"),
            format!("{parent}.laptop~2.1"),
        ]),
        "the account child is kept, the laptop child started afresh"
    );
}
