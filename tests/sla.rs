//! SLA clocks over real HTTP: escalations at shares of the target fire
//! once each at their time, 100% marks the run breached, pauses stop the
//! clock, and a restart neither loses nor repeats an escalation.

use crate::common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::server::Server;
use serde_json::{Value, json};

const INCIDENT: &str = "name: incident\nversion: 1\nsla:\n  priority: ${{ input.priority }}\n  resolution: { P1: 3s, P2: 1h }\n  escalations:\n    - at: 50%\n      uses: transform\n      with: { notify: lead, ticket: \"${{ input.ticket }}\" }\n    - at: 100%\n      uses: transform\n      with: { notify: manager }\nsteps:\n  - id: fix\n    approval:\n      approvers: [ana]\n";

const ON_HOLD: &str = "name: on-hold\nversion: 1\nsla:\n  priority: P1\n  resolution: { P1: 3s }\n  pause_while: on-hold\nsteps:\n  - id: on-hold\n    wait: 2s\n  - id: fix\n    approval:\n      approvers: [ana]\n";

const TRIAGE: &str = "name: triage\nversion: 1\nsla:\n  priority: P1\n  resolution: { P1: 1h }\n  response: { P1: 1500ms }\nsteps:\n  - id: ack\n    approval:\n      approvers: [ana]\n";

fn start() -> (tempfile::TempDir, std::path::PathBuf, Server) {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::write(workflows.join("incident.yaml"), INCIDENT).unwrap();
    std::fs::write(workflows.join("on-hold.yaml"), ON_HOLD).unwrap();
    std::fs::write(workflows.join("triage.yaml"), TRIAGE).unwrap();
    let config = common::server::write_config(dir.path(), Some(&workflows), "");
    let server = Server::start(&config);
    (dir, config, server)
}

fn time(value: &Value) -> DateTime<Utc> {
    value.as_str().unwrap().parse().unwrap()
}

/// Polls the run until `done` says so.
fn until(server: &Server, run: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let body = server.run(run);
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "gave up waiting: {body:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn starts_of(server: &Server, run: &str, step: &str) -> usize {
    server
        .events(run)
        .iter()
        .filter(|e| e["type"] == "step_started" && e["step"] == step)
        .count()
}

#[test]
fn escalations_fire_once_at_their_share_and_100_percent_breaches() {
    let (_dir, _config, server) = start();
    let run = server.start_run("incident", json!({"priority": "P1", "ticket": "INC7"}));
    let body = until(&server, &run, Duration::from_secs(15), |b| {
        b["sla"]["breached"] == true && b["steps"]["sla:escalation:1"]["state"] == "succeeded"
    });
    let started = time(&body["created_at"]);
    let first = &body["steps"]["sla:escalation:0"];
    assert_eq!(first["output"], json!({"notify": "lead", "ticket": "INC7"}));
    let at_50 = (time(&first["started_at"]) - started).num_milliseconds();
    let at_100 =
        (time(&body["steps"]["sla:escalation:1"]["started_at"]) - started).num_milliseconds();
    assert!((1500..3000).contains(&at_50), "50% fired after {at_50} ms");
    assert!(
        (3000..4500).contains(&at_100),
        "100% fired after {at_100} ms"
    );
    assert_eq!(body["status"], "waiting", "a breach does not stop the run");
    assert_eq!(body["sla"]["priority"], "P1");
    assert_eq!(body["sla"]["target_ms"], 3000);
    assert!(
        body["sla"]["elapsed_share"].as_f64().unwrap() >= 1.0,
        "{body:#}"
    );

    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(starts_of(&server, &run, "sla:escalation:0"), 1);
    assert_eq!(starts_of(&server, &run, "sla:escalation:1"), 1);
    let breaches = server
        .events(&run)
        .iter()
        .filter(|e| e["type"] == "sla_breached")
        .count();
    assert_eq!(breaches, 1);

    // P2 has an hour: nothing fires.
    let calm = server.start_run("incident", json!({"priority": "P2", "ticket": "INC8"}));
    std::thread::sleep(Duration::from_millis(1000));
    let body = server.run(&calm);
    assert_eq!(body["sla"]["breached"], false);
    assert!(body["steps"].get("sla:escalation:0").is_none(), "{body:#}");
    server.kill();
}

#[test]
fn a_pause_stops_the_clock() {
    let (_dir, _config, server) = start();
    let run = server.start_run("on-hold", json!({}));
    // 2 s on hold, then the 3 s target runs: no breach before ~5 s.
    std::thread::sleep(Duration::from_millis(3800));
    let body = server.run(&run);
    assert_eq!(body["sla"]["breached"], false, "{body:#}");
    let paused = body["sla"]["paused_ms"].as_i64().unwrap();
    assert!((1900..2600).contains(&paused), "paused {paused} ms");
    let body = until(&server, &run, Duration::from_secs(10), |b| {
        b["sla"]["breached"] == true
    });
    let breached =
        (time(&body["sla"]["breached_at"]) - time(&body["created_at"])).num_milliseconds();
    assert!(
        breached >= 4900,
        "breached after {breached} ms despite the pause"
    );
    server.kill();
}

#[test]
fn a_restart_neither_loses_nor_repeats_an_escalation() {
    let (_dir, config, server) = start();
    let run = server.start_run("incident", json!({"priority": "P1", "ticket": "INC9"}));
    until(&server, &run, Duration::from_secs(10), |b| {
        b["steps"]["sla:escalation:0"]["state"] == "succeeded"
    });
    server.kill();
    let server = Server::start(&config);
    let body = until(&server, &run, Duration::from_secs(15), |b| {
        b["steps"]["sla:escalation:1"]["state"] == "succeeded"
    });
    assert_eq!(body["sla"]["breached"], true);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(starts_of(&server, &run, "sla:escalation:0"), 1);
    assert_eq!(starts_of(&server, &run, "sla:escalation:1"), 1);
    server.kill();
}

fn approve_all(server: &Server, run: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        let body: Value = common::server::json_of(
            server
                .request("GET", "/v1/approvals?approver=ana")
                .call()
                .unwrap(),
        );
        if let Some(a) = body["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["run_id"] == run)
        {
            break a["id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no approval for {run}");
        std::thread::sleep(Duration::from_millis(25));
    };
    let (status, body) = server.decide(&id, "ana", "approve", None);
    assert_eq!(status, 201, "{body:#}");
}

#[test]
fn the_report_counts_met_and_breached_runs() {
    let (_dir, _config, server) = start();
    let late = server.start_run("incident", json!({"priority": "P1", "ticket": "INC1"}));
    let quick = server.start_run("incident", json!({"priority": "P2", "ticket": "INC2"}));
    approve_all(&server, &quick);
    until(&server, &late, Duration::from_secs(15), |b| {
        b["sla"]["breached"] == true
    });
    approve_all(&server, &late);
    let done = server.wait_until_finished(&[late.clone(), quick.clone()], Duration::from_secs(20));
    assert!(done.iter().all(|r| r["status"] == "succeeded"));
    assert_eq!(done[0]["sla"]["met"], false);
    assert_eq!(done[1]["sla"]["met"], true);

    let report: Value =
        common::server::json_of(server.request("GET", "/v1/reports/sla").call().unwrap());
    let items = report["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{report:#}");
    let p1 = items.iter().find(|i| i["priority"] == "P1").unwrap();
    let p2 = items.iter().find(|i| i["priority"] == "P2").unwrap();
    assert_eq!(
        (p1["runs"].as_u64(), p1["breached"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(p1["compliance_percent"], 0.0);
    assert!(p1["resolution_median_s"].as_f64().unwrap() >= 3.0, "{p1:#}");
    assert_eq!(
        (p2["runs"].as_u64(), p2["met"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(p2["compliance_percent"], 100.0);
    assert!(
        p2["approval_wait_median_s"].as_f64().unwrap() < 3.0,
        "{p2:#}"
    );

    let empty: Value = common::server::json_of(
        server
            .request(
                "GET",
                "/v1/reports/sla?from=2020-01-01T00:00:00Z&to=2020-02-01T00:00:00Z",
            )
            .call()
            .unwrap(),
    );
    assert_eq!(empty["items"], json!([]));
    let bad = server
        .request("GET", "/v1/reports/sla?from=yesterday")
        .call()
        .unwrap_err();
    assert!(matches!(bad, ureq::Error::Status(400, _)));
    server.kill();
}

#[test]
fn the_response_target_is_breached_without_a_response_and_met_with_one() {
    let (_dir, _config, server) = start();
    let silent = server.start_run("triage", json!({}));
    let answered = server.start_run("triage", json!({}));
    approve_all(&server, &answered);

    let body = until(&server, &silent, Duration::from_secs(10), |b| {
        b["sla"]["response"]["breached"] == true
    });
    let response = &body["sla"]["response"];
    assert_eq!(response["target_ms"], 1500);
    assert!(response["responded_at"].is_null(), "{body:#}");
    let late = (time(&response["breached_at"]) - time(&body["created_at"])).num_milliseconds();
    assert!(
        (1500..2500).contains(&late),
        "response breach after {late} ms"
    );
    assert_eq!(
        body["status"], "waiting",
        "a response breach does not stop the run"
    );
    assert_eq!(
        body["sla"]["breached"], false,
        "the resolution clock is apart"
    );

    let body = server.run(&answered);
    let response = &body["sla"]["response"];
    assert_eq!(response["breached"], false, "{body:#}");
    assert!(time(&response["responded_at"]) < time(&response["due_at"]));

    approve_all(&server, &silent);
    let body = until(&server, &silent, Duration::from_secs(10), |b| {
        b["status"] == "succeeded"
    });
    assert!(body["sla"]["response"]["responded_at"].is_string());
    assert_eq!(body["sla"]["response"]["breached"], true);
    let breaches = server
        .events(&silent)
        .iter()
        .filter(|e| e["type"] == "sla_response_breached")
        .count();
    assert_eq!(breaches, 1);
    server.kill();
}
