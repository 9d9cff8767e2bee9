//! `for_each` against the real binary: a loop of many elements calling a
//! local HTTP sink, with the server SIGKILLed mid-loop; every element runs,
//! repeats carry the element's own idempotency key, and the output lists
//! the elements in input order. `on_error: continue` keeps going past a
//! failed element.

use crate::common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use common::http_server::TestServer;
use common::server::Server;
use serde_json::{Value, json};

/// A folder with the loop workflow (calling `sink`) and a steward.toml on
/// SQLite with a short lease, so a killed server's runs are taken over.
fn setup(sink: &TestServer, on_error: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::write(
        workflows.join("fan-out.yaml"),
        format!(
            "name: fan-out
steps:
  - id: each
    for_each: ${{{{ input.items }}}}
    as: line
    concurrency: 50
    on_error: {on_error}
    steps:
      - id: call
        uses: http-request
        with:
          method: POST
          url: \"{}?run=${{{{ run.id }}}}&i=${{{{ index }}}}\"
          body: {{ sku: \"${{{{ line.sku }}}}\" }}
        retry: {{ max_attempts: 1 }}
      - id: shape
        uses: transform
        with: {{ i: \"${{{{ index }}}}\", sku: \"${{{{ line.sku }}}}\", status: \"${{{{ steps.call.output.status }}}}\" }}
output: ${{{{ steps.each.output }}}}
",
            sink.url("/tasks")
        ),
    )
    .unwrap();
    let config = dir.path().join("steward.toml");
    std::fs::write(
        &config,
        format!(
            "database = \"sqlite://{}/steward.db\"\ndata_dir = {:?}\nworkflows = [{workflows:?}]\n\
             [worker]\nlease_ms = 1500\n[plugins.http-request]\nallowed_hosts = [\"http://127.0.0.1:*\"]\n",
            dir.path().display(),
            dir.path().join("data")
        ),
    )
    .unwrap();
    (dir, config)
}

fn items(n: usize) -> Value {
    json!({ "items": (0..n).map(|i| json!({ "sku": format!("SKU-{i}") })).collect::<Vec<_>>() })
}

/// The `i` query parameter of a sink request.
fn index_of(path: &str) -> usize {
    path.split("i=").nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_thousand_element_loop_survives_two_kills_with_each_element_once_in_order() {
    let sink = TestServer::start(|_, _| {
        std::thread::sleep(Duration::from_millis(20));
        (
            200,
            vec![("content-type".into(), "application/json".into())],
            b"{\"created\":true}".to_vec(),
        )
    });
    let (_dir, config) = setup(&sink, "fail_fast");
    let server = Server::start(&config);
    let run = server.start_run("fan-out", items(1000));
    // Killed twice while elements are in flight.
    wait_for_calls(&sink, 150);
    server.kill();
    let server = Server::start(&config);
    wait_for_calls(&sink, 450);
    server.kill();
    let server = Server::start(&config);
    let done = server.wait_until_finished(std::slice::from_ref(&run), Duration::from_secs(120));
    assert_eq!(done[0]["status"], "succeeded", "{:#}", done[0]);

    let output = done[0]["output"].as_array().expect("a list");
    assert_eq!(output.len(), 1000);
    for (i, entry) in output.iter().enumerate() {
        assert_eq!(entry["i"], json!(i), "{entry}");
        assert_eq!(entry["sku"], json!(format!("SKU-{i}")));
        assert_eq!(entry["status"], json!(200));
    }

    let mut keys: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for request in sink.received() {
        keys.entry(index_of(&request.path))
            .or_default()
            .push(request.header("idempotency-key").unwrap().to_string());
    }
    assert_eq!(keys.len(), 1000, "every element called");
    let repeated = keys.values().filter(|k| k.len() > 1).count();
    eprintln!(
        "{} calls for 1000 elements; {repeated} repeated after a kill",
        sink.received().len()
    );
    for (i, used) in &keys {
        let expected = format!("{run}/each/{i}/call");
        assert!(
            used.iter().all(|k| *k == expected),
            "element {i} used keys {used:?}"
        );
    }
    // The history keeps each element's steps and result.
    let events = server.events(&run);
    let finished = events
        .iter()
        .filter(|e| e["type"] == "element_finished")
        .count();
    assert_eq!(finished, 1000);
}

/// Waits until the sink has had `n` requests.
fn wait_for_calls(sink: &TestServer, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while sink.received().len() < n {
        assert!(std::time::Instant::now() < deadline, "the loop stalled");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn continue_gives_error_entries_and_the_run_succeeds() {
    // Elements 3 and 7 fail (500, and the step allows one attempt).
    let sink = TestServer::start(|request, _| {
        let i = index_of(&request.path);
        if i == 3 || i == 7 {
            (500, vec![], b"out of stock".to_vec())
        } else {
            (
                200,
                vec![("content-type".into(), "application/json".into())],
                b"{}".to_vec(),
            )
        }
    });
    let (_dir, config) = setup(&sink, "continue");
    let server = Server::start(&config);
    let run = server.start_run("fan-out", items(10));
    let done = server.wait_until_finished(std::slice::from_ref(&run), Duration::from_secs(30));
    assert_eq!(done[0]["status"], "succeeded", "{:#}", done[0]);
    let output = done[0]["output"].as_array().unwrap();
    assert_eq!(output.len(), 10);
    for (i, entry) in output.iter().enumerate() {
        if i == 3 || i == 7 {
            let message = entry["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("500"), "element {i}: {entry}");
        } else {
            assert_eq!(entry["i"], json!(i), "{entry}");
        }
    }
    let each = &done[0]["steps"]["each"];
    assert_eq!(each["elements"]["failed"], 2, "{each:#}");
    assert_eq!(each["elements"]["finished"], 10, "{each:#}");

    // fail_fast: the run fails naming the element.
    let (_dir, config) = setup(&sink, "fail_fast");
    let server = Server::start(&config);
    let run = server.start_run("fan-out", items(10));
    let done = server.wait_until_finished(std::slice::from_ref(&run), Duration::from_secs(30));
    assert_eq!(done[0]["status"], "failed", "{:#}", done[0]);
    let error = done[0]["error"]["message"].as_str().unwrap();
    // Elements 3 and 7 run together: whichever failed first is named.
    assert!(
        error.contains("step each failed: element 3: ")
            || error.contains("step each failed: element 7: "),
        "{error}"
    );
    assert!(error.contains("500"), "{error}");
}

#[test]
fn a_list_longer_than_the_configured_limit_fails_the_step_clearly() {
    let sink = TestServer::ok("{}");
    let (dir, config) = setup(&sink, "fail_fast");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}[defaults]\nfor_each_max_items = 5\n"),
    )
    .unwrap();
    let server = Server::start(&config);
    let run = server.start_run("fan-out", items(6));
    let done = server.wait_until_finished(std::slice::from_ref(&run), Duration::from_secs(30));
    assert_eq!(done[0]["status"], "failed", "{:#}", done[0]);
    let error = done[0]["error"]["message"].as_str().unwrap();
    assert!(
        error.contains("6 elements, more than the limit of 5")
            && error.contains("for_each_max_items"),
        "{error}"
    );
    assert!(sink.received().is_empty());
    drop(dir);
}

/// Retrying a run whose loop failed runs the loop again under a new key
/// generation (`RUN/LOOP/INDEX/STEP#2`), so a sink that deduplicates by key
/// sees new requests.
#[test]
fn retrying_a_failed_loop_runs_its_elements_under_a_new_key_generation() {
    // Element 2 fails until the sink is "fixed" (after 10 requests).
    let sink = TestServer::start(|request, before| {
        if index_of(&request.path) == 2 && before < 10 {
            (500, vec![], b"out of stock".to_vec())
        } else {
            (
                200,
                vec![("content-type".into(), "application/json".into())],
                b"{}".to_vec(),
            )
        }
    });
    let (_dir, config) = setup(&sink, "fail_fast");
    let server = Server::start(&config);
    let run = server.start_run("fan-out", items(3));
    let done = server.wait_until_finished(std::slice::from_ref(&run), Duration::from_secs(30));
    assert_eq!(done[0]["status"], "failed", "{:#}", done[0]);
    while sink.received().len() < 10 {
        let _ = ureq::get(&sink.url("/tasks?i=9")).call();
    }
    let (status, body) = server.send_json("POST", &format!("/v1/runs/{run}/retry"), &json!({}));
    assert!(status == 200 || status == 202, "{status} {body:#}");
    let done = server.wait_until_finished(std::slice::from_ref(&run), Duration::from_secs(30));
    assert_eq!(done[0]["status"], "succeeded", "{:#}", done[0]);
    let keys: Vec<String> = sink
        .received()
        .iter()
        .filter_map(|r| r.header("idempotency-key").map(str::to_string))
        .collect();
    assert!(keys.contains(&format!("{run}/each/2/call")), "{keys:?}");
    assert!(keys.contains(&format!("{run}/each/2/call#2")), "{keys:?}");
}
