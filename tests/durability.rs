//! Crash recovery against the real binary: many runs with a timer and an
//! HTTP side effect, the server SIGKILLed mid-flight more than once, then
//! every run must succeed and every repeated side effect must carry the
//! same idempotency key. On SQLite, and on PostgreSQL when
//! `STEWARD_TEST_DATABASE_URL` is set.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::http_server::TestServer;
use common::server::Server;
use serde_json::{Value, json};

/// A folder with a workflow and a steward.toml for `database`.
fn setup(database_lines: &str, side_effect_url: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::write(
        workflows.join("durable.yaml"),
        format!(
            "name: durable\nsteps:\n  - id: pause\n    wait: 1s\n  - id: call\n    uses: http-request\n    with:\n      method: POST\n      url: \"{side_effect_url}?run=${{{{ run.id }}}}\"\n      body: {{ n: \"${{{{ input.n }}}}\" }}\n    retry: {{ max_attempts: 10, backoff: 100ms }}\n  - id: done\n    uses: transform\n    with: {{ status: \"${{{{ steps.call.output.status }}}}\" }}\noutput: ${{{{ steps.done.output }}}}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        workflows.join("timer.yaml"),
        "name: timer\nsteps:\n  - id: pause\n    wait: 3s\n  - id: done\n    uses: transform\n    with: { ok: true }\n",
    )
    .unwrap();
    std::fs::write(
        workflows.join("long.yaml"),
        "name: long\nversion: 1\nsteps:\n  - id: pause\n    wait: 1h\n  - id: done\n    uses: transform\n    with: { version: 1 }\noutput: ${{ steps.done.output }}\n",
    )
    .unwrap();
    let config = dir.path().join("steward.toml");
    std::fs::write(
        &config,
        format!(
            "{database_lines}\ndata_dir = {:?}\nworkflows = [{workflows:?}]\n[worker]\nlease_ms = 1500\n\
             [plugins.http-request]\nallowed_hosts = [\"http://127.0.0.1:*\"]\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    (dir, config)
}

/// A side-effect server that answers slowly, so kills and dropped
/// connections land while calls are in flight.
fn slow_effects() -> TestServer {
    TestServer::start(|_, _| {
        std::thread::sleep(Duration::from_millis(300));
        (
            200,
            vec![("content-type".into(), "application/json".into())],
            b"{\"done\":true}".to_vec(),
        )
    })
}

fn kill_and_recover(database_lines: impl Fn(&Path) -> String) {
    let effects = slow_effects();
    let url = effects.url("/effect");
    let scratch = tempfile::tempdir().unwrap();
    let (_dir, config) = setup(&database_lines(scratch.path()), &url);

    let server = Server::start(&config);
    let ids: Vec<String> = (0..40)
        .map(|n| server.start_run("durable", json!({ "n": n })))
        .collect();
    std::thread::sleep(Duration::from_millis(1200));
    server.kill();

    let server = Server::start(&config);
    std::thread::sleep(Duration::from_millis(700));
    server.kill();

    let server = Server::start(&config);
    let runs = server.wait_until_finished(&ids, Duration::from_secs(90));
    assert_succeeded_with_one_key_each(&runs, &ids, &effects);
    server.kill();
}

/// Every run succeeded, called out, and every call of a run (repeated
/// after a crash or a lost connection) carried the run's one key.
fn assert_succeeded_with_one_key_each(runs: &[Value], ids: &[String], effects: &TestServer) {
    for run in runs {
        assert_eq!(run["status"], "succeeded", "{run:#}");
        assert_eq!(run["output"], json!({"status": 200}));
    }
    let mut keys_by_run: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for request in effects.received() {
        let run = request.path.split("run=").nth(1).unwrap().to_string();
        keys_by_run
            .entry(run)
            .or_default()
            .push(request.header("idempotency-key").unwrap().to_string());
    }
    let repeated = keys_by_run.values().filter(|k| k.len() > 1).count();
    eprintln!(
        "{} side effects for {} runs; {repeated} runs repeated a call",
        effects.received().len(),
        ids.len()
    );
    for id in ids {
        let keys = keys_by_run
            .get(id)
            .unwrap_or_else(|| panic!("run {id} never called out"));
        let expected = format!("{id}/call");
        assert!(
            keys.iter().all(|k| *k == expected),
            "run {id} used keys {keys:?}"
        );
    }
}

#[test]
fn runs_survive_repeated_sigkill_on_sqlite() {
    kill_and_recover(|dir| format!("database = \"sqlite://{}/steward.db\"", dir.display()));
}

#[test]
fn runs_survive_repeated_sigkill_on_postgres() {
    let Some(url) = common::postgres_url() else {
        eprintln!(
            "runs_survive_repeated_sigkill_on_postgres: skipped: STEWARD_TEST_DATABASE_URL is not set"
        );
        return;
    };
    let schema = common::unique_schema("kill");
    kill_and_recover(|_| format!("database = {url:?}\ndatabase_schema = {schema:?}"));
}

/// PostgreSQL drops every connection of a running server, twice, while
/// runs are in flight (as a database restart or a failover does): the
/// server reconnects by itself, every run it accepted succeeds with each
/// side effect under its one key, and the requests that came right after
/// a drop were answered.
#[test]
fn runs_survive_dropped_database_connections_on_postgres() {
    let Some(url) = common::postgres_url() else {
        eprintln!(
            "runs_survive_dropped_database_connections_on_postgres: skipped: STEWARD_TEST_DATABASE_URL is not set"
        );
        return;
    };
    let schema = common::unique_schema("dropped");
    // The server's connections carry the schema's name, for finding them.
    let separator = if url.contains('?') { '&' } else { '?' };
    let database = format!("{url}{separator}application_name={schema}");
    let effects = slow_effects();
    let (_dir, config) = setup(
        &format!("database = {database:?}\ndatabase_schema = {schema:?}"),
        &effects.url("/effect"),
    );
    let server = Server::start(&config);
    let mut ids = Vec::new();
    let mut refused = Vec::new();
    for round in 0..2 {
        for n in 0..20 {
            ids.push(server.start_run("durable", json!({ "n": round * 100 + n })));
        }
        std::thread::sleep(Duration::from_millis(700));
        let dropped = drop_connections(&url, &schema);
        assert!(dropped > 0, "no connection of the server was found");
        for n in 20..30 {
            let (status, body) = server.send_json(
                "POST",
                "/v1/workflows/durable/runs",
                &json!({ "input": { "n": round * 100 + n } }),
            );
            match status {
                201 => ids.push(body["id"].as_str().unwrap().to_string()),
                _ => refused.push((status, body)),
            }
        }
    }
    assert!(
        refused.is_empty(),
        "refused: {refused:?}\nserver log:\n{}",
        server.log()
    );
    let runs = server.wait_until_finished(&ids, Duration::from_secs(90));
    assert_succeeded_with_one_key_each(&runs, &ids, &effects);
    server.kill();
}

/// Ends every PostgreSQL session named `application` (what a database
/// restart does to a client's connections); answers how many.
fn drop_connections(url: &str, application: &str) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let ended: Vec<(bool,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        )
        .bind(application)
        .fetch_all(&mut conn)
        .await
        .unwrap();
        ended.len()
    })
}

#[test]
fn a_timer_crossing_a_restart_fires_once_not_early_and_on_time() {
    let scratch = tempfile::tempdir().unwrap();
    let (_dir, config) = setup(
        &format!(
            "database = \"sqlite://{}/steward.db\"",
            scratch.path().display()
        ),
        "http://127.0.0.1:9/unused",
    );
    let server = Server::start(&config);
    let id = server.start_run("timer", json!({}));
    std::thread::sleep(Duration::from_millis(800));
    server.kill();
    let server = Server::start(&config);
    let runs = server.wait_until_finished(std::slice::from_ref(&id), Duration::from_secs(30));
    assert_eq!(runs[0]["status"], "succeeded");

    let events = server.events(&id);
    let started: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "timer_started")
        .collect();
    let fired: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "timer_fired")
        .collect();
    assert_eq!((started.len(), fired.len()), (1, 1), "{events:#?}");
    let until =
        chrono::DateTime::parse_from_rfc3339(started[0]["until"].as_str().unwrap()).unwrap();
    let at = chrono::DateTime::parse_from_rfc3339(fired[0]["at"].as_str().unwrap()).unwrap();
    assert!(at >= until, "fired early: {at} < {until}");
    assert!(
        at - until <= chrono::Duration::seconds(1),
        "fired late: {at} vs {until}"
    );
    server.kill();
}

fn sqlite_setup() -> (tempfile::TempDir, tempfile::TempDir, PathBuf) {
    let scratch = tempfile::tempdir().unwrap();
    let (dir, config) = setup(
        &format!(
            "database = \"sqlite://{}/steward.db\"",
            scratch.path().display()
        ),
        "http://127.0.0.1:9/unused",
    );
    (scratch, dir, config)
}

#[test]
fn cancel_interrupts_a_waiting_run_and_a_finished_run_is_a_conflict() {
    let (_scratch, _dir, config) = sqlite_setup();
    let server = Server::start(&config);
    let id = server.start_run("long", json!({}));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(server.run(&id)["status"], "waiting");

    let (status, body) = server.send_json(
        "POST",
        &format!("/v1/runs/{id}/cancel"),
        &json!({"reason": "duplicate request"}),
    );
    assert_eq!(status, 202, "{body}");
    let runs = server.wait_until_finished(std::slice::from_ref(&id), Duration::from_secs(10));
    assert_eq!(runs[0]["status"], "cancelled");
    assert_eq!(runs[0]["error"]["message"], "duplicate request");
    assert!(
        server.run(&id)["steps"].get("done").is_none(),
        "no step ran after the cancel"
    );

    let (status, body) = server.send_json("POST", &format!("/v1/runs/{id}/cancel"), &json!({}));
    assert_eq!(status, 409);
    assert_eq!(body["type"], "https://steward.dev/problems/run-finished");
    let (status, _) = server.send_json("POST", "/v1/runs/no-such-run/cancel", &json!({}));
    assert_eq!(status, 404);
    server.kill();
}

#[test]
fn a_run_keeps_the_workflow_version_it_started_on() {
    let (_scratch, dir, config) = sqlite_setup();
    let server = Server::start(&config);
    let old = server.start_run("timer", json!({}));
    server.kill();

    // Version 2 changes what the workflow does; the run in flight stays on 1.
    std::fs::write(
        dir.path().join("workflows/timer.yaml"),
        "name: timer\nversion: 2\nsteps:\n  - id: done\n    uses: transform\n    with: { version: 2 }\noutput: ${{ steps.done.output }}\n",
    )
    .unwrap();
    let server = Server::start(&config);
    let new = server.start_run("timer", json!({}));
    let runs = server.wait_until_finished(&[old.clone(), new.clone()], Duration::from_secs(30));
    assert_eq!(
        (runs[0]["version"].as_u64(), runs[1]["version"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(
        runs[0]["output"],
        json!({"done": {"output": {"ok": true}}, "pause": {"output": null}})
    );
    assert_eq!(runs[1]["output"], json!({"version": 2}));
    server.kill();
}

#[test]
fn an_edited_workflow_without_a_new_version_keeps_its_deployed_definition() {
    let (_scratch, dir, config) = sqlite_setup();
    let server = Server::start(&config);
    server.kill();
    std::fs::write(
        dir.path().join("workflows/timer.yaml"),
        "name: timer\nsteps:\n  - id: changed\n    uses: transform\n    with: { edited: true }\n",
    )
    .unwrap();
    let server = Server::start(&config);
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(
        log.contains(
            "timer version 1 is already deployed with different content: bump the version"
        ),
        "{log}"
    );
    let id = server.start_run("timer", json!({}));
    let runs = server.wait_until_finished(std::slice::from_ref(&id), Duration::from_secs(30));
    assert!(
        runs[0]["steps"].get("pause").is_some(),
        "the deployed definition ran: {:#}",
        runs[0]
    );
    server.kill();
}
