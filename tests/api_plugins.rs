//! Uploading plugins over HTTP: checked against the world, served at once,
//! kept across restarts.

use crate::common;

use std::time::Duration;

use common::server::{Server, json_of};
use serde_json::{Value, json};

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    common::server::write_config(dir, None, "")
}

/// A multipart/form-data body with the given (part name, bytes).
fn multipart(parts: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "steward-test-boundary-7d3f";
    let mut body = Vec::new();
    for (name, bytes) in parts {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn upload(server: &Server, name: &str, parts: &[(&str, &[u8])]) -> (u16, Value) {
    let (content_type, body) = multipart(parts);
    match server
        .request("PUT", &format!("/v1/plugins/{name}"))
        .set("content-type", &content_type)
        .send_bytes(&body)
    {
        Ok(r) => (r.status(), json_of(r)),
        Err(ureq::Error::Status(status, r)) => (status, json_of(r)),
        Err(e) => panic!("{e}"),
    }
}

const ECHO_FLOW: &str = "name: echo-flow\nversion: 1\nsteps:\n  - id: echo\n    uses: hostile\n    with: { do: echo, value: { said: \"${{ input.text }}\" } }\noutput: ${{ steps.echo.output }}\n";

fn hostile() -> (Vec<u8>, Vec<u8>) {
    let wasm = std::fs::read(common::fixture("hostile")).unwrap();
    let manifest = std::fs::read(common::root().join("tests/plugins/hostile/plugin.toml")).unwrap();
    (wasm, manifest)
}

#[test]
fn an_uploaded_plugin_serves_workflows_and_survives_a_restart() {
    let (wasm, manifest) = hostile();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let server = Server::start(&config);
    let (status, body) = upload(
        &server,
        "hostile",
        &[("manifest", &manifest), ("component", &wasm)],
    );
    assert_eq!(status, 201, "{body:#}");
    assert_eq!(body["origin"], "uploaded");
    assert_eq!(body["size"], wasm.len());
    // The operator granted nothing in steward.toml: the manifest's asks are not given.
    assert_eq!(body["granted"]["allowed_hosts"], json!([]));
    assert!(!body["warnings"].as_array().unwrap().is_empty(), "{body:#}");

    let deployed = server
        .request("PUT", "/v1/workflows/echo-flow")
        .set("content-type", "application/yaml")
        .send_string(ECHO_FLOW)
        .unwrap();
    assert_eq!(deployed.status(), 201);
    let id = server.start_run("echo-flow", json!({"text": "hi"}));
    let runs = server.wait_until_finished(std::slice::from_ref(&id), Duration::from_secs(20));
    assert_eq!(runs[0]["output"], json!({"said": "hi"}), "{:#}", runs[0]);

    let (status, _) = upload(
        &server,
        "hostile",
        &[("manifest", &manifest), ("component", &wasm)],
    );
    assert_eq!(status, 200, "a second upload replaces the first");
    // Each upload is audited, with the caller and the component's hash.
    let (status, log) = server.send_json(
        "GET",
        "/v1/audit?action=plugin.upload&target=hostile",
        &json!({}),
    );
    assert_eq!(status, 200, "{log:#}");
    let uploads = log["items"].as_array().unwrap();
    assert_eq!(uploads.len(), 2, "{log:#}");
    assert!(uploads.iter().all(|e| e["actor"] == "admin"), "{log:#}");
    assert_eq!(uploads[0]["detail"]["sha256"], body["sha256"], "{log:#}");
    server.kill();

    let server = Server::start(&config);
    let listed = json_of(server.request("GET", "/v1/plugins").call().unwrap());
    let names: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"hostile") && names.contains(&"transform"),
        "{names:?}"
    );
    let shown = json_of(server.request("GET", "/v1/plugins/hostile").call().unwrap());
    assert_eq!(shown["origin"], "uploaded");
    let id = server.start_run("echo-flow", json!({"text": "again"}));
    let runs = server.wait_until_finished(std::slice::from_ref(&id), Duration::from_secs(20));
    assert_eq!(runs[0]["output"], json!({"said": "again"}));
    server.kill();
}

#[test]
fn bad_uploads_are_refused_with_what_to_fix() {
    let (wasm, manifest) = hostile();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path()));
    let problem = |body: &Value| {
        body["type"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_string()
    };

    let not_a_plugin = std::fs::read(common::fixture("not-a-plugin")).unwrap();
    let (status, body) = upload(
        &server,
        "hostile",
        &[("manifest", &manifest), ("component", &not_a_plugin)],
    );
    assert_eq!(
        (status, problem(&body).as_str()),
        (422, "invalid-plugin"),
        "{body:#}"
    );
    assert!(
        body["detail"].as_str().unwrap().contains("does not match"),
        "{body:#}"
    );

    let (status, body) = upload(
        &server,
        "hostile",
        &[("manifest", &manifest), ("component", b"\0asm junk")],
    );
    assert_eq!(status, 422, "{body:#}");

    let (status, body) = upload(
        &server,
        "other",
        &[("manifest", &manifest), ("component", &wasm)],
    );
    assert_eq!(status, 422, "{body:#}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("names the plugin \"hostile\""),
        "{body:#}"
    );

    let (status, body) = upload(
        &server,
        "hostile",
        &[("manifest", b"name = [\n"), ("component", &wasm)],
    );
    assert_eq!(status, 422, "{body:#}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("plugin.toml:1:"),
        "{body:#}"
    );

    let (status, body) = upload(&server, "hostile", &[("component", &wasm)]);
    assert_eq!(
        (status, problem(&body).as_str()),
        (400, "invalid-upload"),
        "{body:#}"
    );

    let transform_manifest = b"name = \"transform\"\n";
    let (status, body) = upload(
        &server,
        "transform",
        &[("manifest", transform_manifest), ("component", &wasm)],
    );
    assert_eq!(
        (status, problem(&body).as_str()),
        (409, "plugin-not-replaceable"),
        "{body:#}"
    );

    let response = server
        .request("PUT", "/v1/plugins/hostile")
        .set("content-type", "application/json")
        .send_string("{}")
        .unwrap_err();
    assert!(matches!(response, ureq::Error::Status(415, _)));

    let listed = json_of(server.request("GET", "/v1/plugins").call().unwrap());
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["name"] != "hostile"),
        "nothing refused was installed"
    );
    let missing = server
        .request("GET", "/v1/plugins/hostile")
        .call()
        .unwrap_err();
    assert!(matches!(missing, ureq::Error::Status(404, _)));
    server.kill();
}
