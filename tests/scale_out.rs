//! Several processes on one PostgreSQL: `steward serve --no-worker` takes
//! requests, `steward worker` processes execute runs and fire schedules.

mod common;

use std::time::Duration;

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
