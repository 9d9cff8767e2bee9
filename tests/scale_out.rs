//! Several processes on one PostgreSQL: `steward serve --no-worker` takes
//! requests, `steward worker` processes execute runs and fire schedules.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::http_server::TestServer;
use common::server::{Server, json_of, write_config};
use serde_json::json;

const ONE: &str = "name: one\nversion: 1\nsteps:\n  - id: echo\n    uses: transform\n    with: { n: \"${{ input.n }}\" }\noutput: ${{ steps.echo.output }}\n";

#[test]
fn a_worker_needs_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), None, "");
    for args in [vec!["worker"], vec!["serve", "--no-worker"]] {
        let out = std::process::Command::new(common::steward_bin())
            .args(&args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started on SQLite");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("need PostgreSQL"), "{args:?}: {err}");
    }
}

#[test]
fn an_api_server_and_two_workers_finish_runs_and_fire_schedules_once() {
    let Some(url) = common::postgres_url() else {
        eprintln!("an_api_server_and_two_workers: skipped: STEWARD_TEST_DATABASE_URL is not set");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::write(workflows.join("one.yaml"), ONE).unwrap();
    let schema = common::unique_schema("scale_out");
    let config = dir.path().join("steward.toml");
    std::fs::write(
        &config,
        format!(
            "database = {url:?}\ndatabase_schema = {schema:?}\ndata_dir = {:?}\nworkflows = [{workflows:?}]\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let api = Server::start_api_only(&config);
    let workers = [Server::start_worker(&config), Server::start_worker(&config)];
    for worker in &workers {
        let health = ureq::get(&worker.url("/healthz")).call().unwrap();
        assert_eq!(health.status(), 200);
        let api_route = ureq::get(&worker.url("/v1/runs")).call();
        assert!(
            matches!(api_route, Err(ureq::Error::Status(404, _))),
            "a worker serves no API"
        );
    }

    let ids: Vec<String> = (0..40)
        .map(|n| api.start_run("one", json!({"n": n})))
        .collect();
    for run in api.wait_until_finished(&ids, Duration::from_secs(60)) {
        assert_eq!(run["status"], "succeeded", "{run:#}");
        assert_eq!(run["output"]["n"], run["input"]["n"]);
    }

    let created = api
        .request("POST", "/v1/schedules")
        .set("content-type", "application/json")
        .send_string(&json!({"workflow": "one", "cron": "* * * * * *", "input": {"n": -1}, "overlap": "allow"}).to_string())
        .unwrap();
    let id = json_of(created)["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(4500));
    let paused = api
        .request("PATCH", &format!("/v1/schedules/{id}"))
        .set("content-type", "application/json")
        .send_string(r#"{"paused": true}"#)
        .unwrap();
    assert_eq!(paused.status(), 200);
    std::thread::sleep(Duration::from_millis(1500));
    let detail = json_of(
        api.request("GET", &format!("/v1/schedules/{id}"))
            .call()
            .unwrap(),
    );
    let fired = detail["counts"]["fired"].as_u64().unwrap() as usize;
    assert!(fired >= 3, "{detail:#}");
    let mut times: Vec<chrono::DateTime<chrono::Utc>> = detail["fires"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["outcome"] == "fired")
        .map(|f| f["fire_at"].as_str().unwrap().parse().unwrap())
        .collect();
    times.sort();
    for pair in times.windows(2) {
        assert_eq!(
            (pair[1] - pair[0]).num_milliseconds(),
            1000,
            "once per second: {detail:#}"
        );
    }
    let runs = json_of(
        api.request("GET", "/v1/runs?workflow=one&limit=500")
            .call()
            .unwrap(),
    );
    assert_eq!(
        runs["items"].as_array().unwrap().len(),
        40 + fired,
        "one run per fire time across two workers: {detail:#}"
    );
    for worker in workers {
        worker.kill();
    }
    api.kill();
}

/// A config for `database` (PostgreSQL) with short leases, workflows with
/// an HTTP side effect at `effect`.
fn shared_setup(url: &str, test: &str, effect: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::write(
        workflows.join("durable.yaml"),
        format!(
            "name: durable\nsteps:\n  - id: pause\n    wait: 1s\n  - id: call\n    uses: http-request\n    with:\n      method: POST\n      url: \"{effect}?run=${{{{ run.id }}}}\"\n    retry: {{ max_attempts: 10, backoff: 100ms }}\n  - id: done\n    uses: transform\n    with: {{ status: \"${{{{ steps.call.output.status }}}}\" }}\noutput: ${{{{ steps.done.output }}}}\n"
        ),
    )
    .unwrap();
    let schema = common::unique_schema(test);
    let config = dir.path().join("steward.toml");
    std::fs::write(
        &config,
        format!(
            "database = {url:?}\ndatabase_schema = {schema:?}\ndata_dir = {:?}\nworkflows = [{workflows:?}]\n\
             [worker]\nlease_ms = 1500\n[plugins.http-request]\nallowed_hosts = [\"http://127.0.0.1:*\"]\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    (dir, config)
}

/// The idempotency keys each run's side effect was called with.
fn keys_by_run(effects: &TestServer) -> BTreeMap<String, Vec<String>> {
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for request in effects.received() {
        let run = request.path.split("run=").nth(1).unwrap().to_string();
        keys.entry(run)
            .or_default()
            .push(request.header("idempotency-key").unwrap().to_string());
    }
    keys
}

fn slow_effects(delay: Duration) -> TestServer {
    TestServer::start(move |_, _| {
        std::thread::sleep(delay);
        (
            200,
            vec![("content-type".into(), "application/json".into())],
            b"{\"done\":true}".to_vec(),
        )
    })
}

#[test]
fn a_killed_worker_s_runs_are_taken_over_and_finish_under_their_keys() {
    let Some(url) = common::postgres_url() else {
        eprintln!("a_killed_worker: skipped: STEWARD_TEST_DATABASE_URL is not set");
        return;
    };
    let effects = slow_effects(Duration::from_millis(300));
    let (_dir, config) = shared_setup(&url, "takeover", &effects.url("/effect"));
    let api = Server::start_api_only(&config);
    let first = Server::start_worker(&config);
    let second = Server::start_worker(&config);
    let ids: Vec<String> = (0..40)
        .map(|n| api.start_run("durable", json!({ "n": n })))
        .collect();
    std::thread::sleep(Duration::from_millis(1200));
    first.kill();
    let runs = api.wait_until_finished(&ids, Duration::from_secs(90));
    for run in &runs {
        assert_eq!(run["status"], "succeeded", "{run:#}");
        assert_eq!(run["output"], json!({"status": 200}));
    }
    // Every step, the timer included, finished once, whichever worker ran it.
    for id in ids.iter().take(10) {
        let events = api.events(id);
        for (step, settled_as) in [
            ("pause", "timer_fired"),
            ("call", "step_succeeded"),
            ("done", "step_succeeded"),
        ] {
            let settled = events
                .iter()
                .filter(|e| e["type"] == settled_as && e["step"] == step)
                .count();
            assert_eq!(settled, 1, "run {id} step {step}: {events:#?}");
        }
    }
    let keys = keys_by_run(&effects);
    for id in &ids {
        let used = keys
            .get(id)
            .unwrap_or_else(|| panic!("run {id} never called out"));
        assert!(
            used.iter().all(|k| *k == format!("{id}/call")),
            "run {id} used keys {used:?}"
        );
    }
    second.kill();
    api.kill();
}

#[test]
fn a_worker_paused_past_its_lease_cannot_commit_its_late_result() {
    let Some(url) = common::postgres_url() else {
        eprintln!("a_worker_paused_past_its_lease: skipped: STEWARD_TEST_DATABASE_URL is not set");
        return;
    };
    let effects = slow_effects(Duration::from_millis(1500));
    let (_dir, config) = shared_setup(&url, "fencing", &effects.url("/effect"));
    let api = Server::start_api_only(&config);
    let stalled = Server::start_worker(&config);
    let run = api.start_run("durable", json!({ "n": 1 }));
    let deadline = Instant::now() + Duration::from_secs(20);
    while effects.received().is_empty() {
        assert!(Instant::now() < deadline, "the call never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Mid-call: stop the worker past its 1.5 s lease; another takes over.
    stalled.signal("STOP");
    let rescuer = Server::start_worker(&config);
    let done = api.wait_until_finished(std::slice::from_ref(&run), Duration::from_secs(30));
    assert_eq!(done[0]["status"], "succeeded", "{:#}", done[0]);
    stalled.signal("CONT");
    // Its call answers now; the commit that follows must be refused.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = std::fs::read_to_string(&stalled.log).unwrap();
        if log.contains("no longer leased") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no refusal in the worker's log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let events = api.events(&run);
    let settled = events
        .iter()
        .filter(|e| e["type"] == "step_succeeded" && e["step"] == "call")
        .count();
    assert_eq!(settled, 1, "one result for the call: {events:#?}");
    let finished = events
        .iter()
        .filter(|e| e["type"] == "run_succeeded")
        .count();
    assert_eq!(finished, 1);
    let keys = keys_by_run(&effects);
    assert!(
        keys[&run].len() >= 2,
        "the call ran again after the takeover"
    );
    assert!(keys[&run].iter().all(|k| *k == format!("{run}/call")));
    rescuer.kill();
    stalled.kill();
    api.kill();
}

#[test]
fn workers_hear_of_new_runs_and_decisions_at_once_not_at_their_next_poll() {
    let Some(url) = common::postgres_url() else {
        eprintln!("workers_hear_of_new_runs: skipped: STEWARD_TEST_DATABASE_URL is not set");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::write(workflows.join("one.yaml"), ONE).unwrap();
    std::fs::write(
        workflows.join("ask.yaml"),
        "name: ask\nversion: 1\nsteps:\n  - id: ok\n    approval:\n      approvers: [ana]\n",
    )
    .unwrap();
    let schema = common::unique_schema("notify");
    let config = dir.path().join("steward.toml");
    // A worker that polls every 60 s: only an announcement can wake it.
    std::fs::write(
        &config,
        format!(
            "database = {url:?}\ndatabase_schema = {schema:?}\ndata_dir = {:?}\nworkflows = [{workflows:?}]\n[worker]\npoll_ms = 60000\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let api = Server::start_api_only(&config);
    let worker = Server::start_worker(&config);
    std::thread::sleep(Duration::from_millis(500)); // its LISTEN is up
    let ids: Vec<String> = (0..5)
        .map(|n| api.start_run("one", json!({"n": n})))
        .collect();
    for run in api.wait_until_finished(&ids, Duration::from_secs(10)) {
        assert_eq!(run["status"], "succeeded");
    }
    let run = api.start_run("ask", json!({}));
    let deadline = Instant::now() + Duration::from_secs(10);
    let approval = loop {
        let body = json_of(
            api.request("GET", "/v1/approvals?approver=ana")
                .call()
                .unwrap(),
        );
        if let Some(a) = body["items"].as_array().unwrap().first() {
            break a["id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "the approval never opened");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (status, body) = api.decide(&approval, "ana", "approve", None);
    assert_eq!(status, 201, "{body:#}");
    let done = api.wait_until_finished(&[run], Duration::from_secs(10));
    assert_eq!(done[0]["status"], "succeeded");
    worker.kill();
    api.kill();
}

/// A config for `dir` on PostgreSQL (its own schema) loading `workflows`.
fn postgres_config(
    dir: &std::path::Path,
    url: &str,
    workflows: &[(&str, &str)],
) -> std::path::PathBuf {
    let folder = dir.join("workflows");
    std::fs::create_dir_all(&folder).unwrap();
    for (name, yaml) in workflows {
        std::fs::write(folder.join(format!("{name}.yaml")), yaml).unwrap();
    }
    let schema = common::unique_schema("placement");
    let config = dir.join("steward.toml");
    std::fs::write(
        &config,
        format!(
            "database = {url:?}\ndatabase_schema = {schema:?}\ndata_dir = {:?}\nworkflows = [{folder:?}]\n\
             [plugins.http-request]\nallowed_hosts = [\"http://127.0.0.1:*\"]\n",
            dir.join("data")
        ),
    )
    .unwrap();
    config
}

#[test]
fn runs_of_a_tagged_workflow_wait_for_a_worker_with_the_tags() {
    let Some(url) = common::postgres_url() else {
        eprintln!("runs_of_a_tagged_workflow: skipped: STEWARD_TEST_DATABASE_URL is not set");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let gpu = "name: render\ntags: [gpu, eu]\nsteps:\n  - id: echo\n    uses: transform\n    with: { n: \"${{ input.n }}\" }\n";
    let config = postgres_config(dir.path(), &url, &[("one", ONE), ("render", gpu)]);
    let api = Server::start_api_only(&config);
    let _plain_worker = Server::start_worker(&config);
    let _eu_only = Server::start_worker_tagged(&config, "eu");
    let plain: Vec<String> = (0..5)
        .map(|n| api.start_run("one", json!({"n": n})))
        .collect();
    let tagged: Vec<String> = (0..5)
        .map(|n| api.start_run("render", json!({"n": n})))
        .collect();
    for run in api.wait_until_finished(&plain, Duration::from_secs(30)) {
        assert_eq!(run["status"], "succeeded");
    }
    std::thread::sleep(Duration::from_millis(1500));
    for id in &tagged {
        assert_eq!(
            api.run(id)["status"],
            "pending",
            "no worker has gpu and eu yet"
        );
    }
    let _gpu_eu = Server::start_worker_tagged(&config, "eu,gpu,arm");
    for run in api.wait_until_finished(&tagged, Duration::from_secs(30)) {
        assert_eq!(run["status"], "succeeded", "{run:#}");
    }
    // A bad tag stops a worker at start, naming it.
    let out = std::process::Command::new(common::steward_bin())
        .args(["worker", "--tags", "GPU!", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"GPU!\" is not a tag"));
}

#[test]
fn a_workflow_concurrency_limit_holds_across_workers() {
    let Some(url) = common::postgres_url() else {
        eprintln!("a_workflow_concurrency_limit: skipped: STEWARD_TEST_DATABASE_URL is not set");
        return;
    };
    // A slow endpoint that remembers the most requests it had at once.
    let in_flight = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (now, peak) = (in_flight.clone(), most.clone());
    let slow = TestServer::start(move |_, _| {
        use std::sync::atomic::Ordering::SeqCst;
        let current = now.fetch_add(1, SeqCst) + 1;
        peak.fetch_max(current, SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        now.fetch_sub(1, SeqCst);
        (200, vec![], b"{}".to_vec())
    });
    let dir = tempfile::tempdir().unwrap();
    let limited = format!(
        "name: export\nconcurrency: 2\nsteps:\n  - id: call\n    uses: http-request\n    with: {{ method: POST, url: \"{}\" }}\n",
        slow.url("/export")
    );
    let config = postgres_config(dir.path(), &url, &[("export", &limited)]);
    let api = Server::start_api_only(&config);
    let _workers = [Server::start_worker(&config), Server::start_worker(&config)];
    let ids: Vec<String> = (0..10)
        .map(|_| api.start_run("export", json!({})))
        .collect();
    for run in api.wait_until_finished(&ids, Duration::from_secs(60)) {
        assert_eq!(run["status"], "succeeded", "{run:#}");
    }
    assert_eq!(slow.received().len(), 10);
    let most = most.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        most <= 2,
        "{most} runs of a workflow limited to 2 ran at once"
    );
    assert_eq!(most, 2, "the limit is used, not just respected");
}
