//! Deploying workflows over HTTP: validated first, versioned, kept across
//! restarts.

use crate::common;

use std::time::Duration;

use common::server::{Server, json_of};
use serde_json::Value;

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    common::server::write_config(dir, None, "")
}

fn put(server: &Server, name: &str, content_type: &str, yaml: &str) -> (u16, Value) {
    match server
        .request("PUT", &format!("/v1/workflows/{name}"))
        .set("content-type", content_type)
        .send_string(yaml)
    {
        Ok(r) => (r.status(), json_of(r)),
        Err(ureq::Error::Status(status, r)) => (status, json_of(r)),
        Err(e) => panic!("{e}"),
    }
}

const GREET_V1: &str = "name: greet\nversion: 1\nsteps:\n  - id: hello\n    uses: transform\n    with: { message: \"${{ 'Hello, ' + input.who }}\" }\noutput: ${{ steps.hello.output }}\n";

#[test]
fn a_deployed_workflow_runs_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let server = Server::start(&config);
    let (status, body) = put(&server, "greet", "application/yaml", GREET_V1);
    assert_eq!(status, 201, "{body:#}");
    assert_eq!(body["version"], 1);
    let (status, _) = put(&server, "greet", "application/yaml", GREET_V1);
    assert_eq!(status, 200, "the same text again changes nothing");

    let id = server.start_run("greet", serde_json::json!({"who": "Ada"}));
    let runs = server.wait_until_finished(std::slice::from_ref(&id), Duration::from_secs(20));
    assert_eq!(runs[0]["output"]["message"], "Hello, Ada");

    let edited = GREET_V1.replace("Hello, ", "Hi, ");
    let (status, body) = put(&server, "greet", "application/yaml", &edited);
    assert_eq!(status, 409, "{body:#}");
    assert_eq!(
        body["type"],
        "https://steward.dev/problems/version-conflict"
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("bump the version")
    );

    let v2 = edited.replace("version: 1", "version: 2");
    assert_eq!(put(&server, "greet", "text/yaml", &v2).0, 201);
    server.kill();

    let server = Server::start(&config);
    let shown = json_of(server.request("GET", "/v1/workflows/greet").call().unwrap());
    assert_eq!(shown["version"], 2, "{shown:#}");
    assert_eq!(shown["source"], v2.as_str());
    let versions: Vec<u64> = shown["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2]);
    let id = server.start_run("greet", serde_json::json!({"who": "Ada"}));
    let runs = server.wait_until_finished(std::slice::from_ref(&id), Duration::from_secs(20));
    assert_eq!(runs[0]["output"]["message"], "Hi, Ada");
    assert_eq!(runs[0]["version"], 2);
    server.kill();
}

/// Nesting that overflowed a worker's stack and killed the server is a
/// 422 like any invalid workflow, and the server keeps serving.
#[test]
fn workflows_too_deep_for_the_parsers_are_refused_and_the_server_lives() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let server = Server::start(&config);
    let lists = format!(
        "name: deep\nversion: 1\nsteps:\n  - id: a\n    uses: transform\n    with: {{ a: 1 }}\nx:\n  {}1\n",
        "- ".repeat(20_000)
    );
    let chain = GREET_V1.replace(
        "input.who",
        &format!("input.who{}", " + 'x'".repeat(30_000)),
    );
    for (name, yaml, expect) in [
        (
            "deep",
            lists,
            "deep.yaml:8:129: yaml: syntax error: lists and mappings nest deeper than 64",
        ),
        ("greet", chain, "greet.yaml:6:"),
    ] {
        let (status, body) = put(&server, name, "application/yaml", &yaml);
        assert_eq!(status, 422, "{name}: {body:#}");
        assert_eq!(
            body["type"],
            "https://steward.dev/problems/invalid-workflow"
        );
        let error = body["errors"][0].as_str().unwrap();
        assert!(error.starts_with(expect), "{name}: {error}");
        let health = ureq::get(&server.url("/healthz")).call().unwrap();
        assert_eq!(health.status(), 200);
    }
    server.kill();
}

#[test]
fn an_invalid_workflow_is_refused_with_the_errors_of_steward_validate() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let server = Server::start(&config);
    let broken = "name: broken\nversion: 1\nsteps:\n  - id: a\n    uses: no-such-plugin\n  - id: b\n    uses: transform\n    with: { x: \"${{ steps.zzz.output }}\" }\n";
    let (status, body) = put(&server, "broken", "application/yaml", broken);
    assert_eq!(status, 422, "{body:#}");
    assert_eq!(
        body["type"],
        "https://steward.dev/problems/invalid-workflow"
    );
    let errors: Vec<String> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    assert!(errors.len() >= 2, "{errors:?}");

    // The CLI says the same, line for line, about the same file.
    std::fs::write(dir.path().join("broken.yaml"), broken).unwrap();
    let cli = std::process::Command::new(common::steward_bin())
        .args(["validate", "broken.yaml", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!cli.status.success());
    let cli_errors: Vec<String> = String::from_utf8_lossy(&cli.stderr)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(errors, cli_errors);

    let (status, body) = put(&server, "broken", "application/yaml", "steps: [\n");
    assert_eq!(status, 422, "{body:#}");
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("broken.yaml:"),
        "{body:#}"
    );

    let (status, body) = put(&server, "other-name", "application/yaml", GREET_V1);
    assert_eq!(status, 422, "{body:#}");
    assert_eq!(body["type"], "https://steward.dev/problems/name-mismatch");

    let (status, body) = put(&server, "greet", "application/json", GREET_V1);
    assert_eq!(status, 415, "{body:#}");

    let missing = server
        .request("GET", "/v1/workflows/greet")
        .call()
        .unwrap_err();
    assert!(matches!(missing, ureq::Error::Status(404, _)));
    server.kill();
}
