//! Approval steps over real HTTP: quorum, outsiders, rejection, escalation
//! on timeout, concurrent decisions, and a restart while waiting.

use crate::common;

use std::time::Duration;

use common::server::{Server, json_of};
use serde_json::{Value, json};

const WORKFLOWS: &[(&str, &str)] = &[
    (
        "chain.yaml",
        "name: chain\nversion: 1\nsteps:\n  - id: ask\n    approval:\n      approvers: [ana]\n      timeout: 1s\n      on_timeout:\n        escalate_to: [ben]\n        timeout: 1s\n        on_timeout: approve\n",
    ),
    (
        "change.yaml",
        "name: change\nversion: 1\nsteps:\n  - id: cab\n    approval:\n      approvers: [group:cab]\n      quorum: 2\n      timeout: 1h\n  - id: done\n    uses: transform\n    with: { approved_by: \"${{ steps.cab.output.approved_by }}\" }\noutput: ${{ steps.done.output }}\n",
    ),
    (
        "access.yaml",
        "name: access\nversion: 1\nsteps:\n  - id: owner\n    approval:\n      approvers: [\"${{ input.owner }}\", ben]\n      quorum: any\n  - id: grant\n    uses: transform\n    with: { granted: true }\n",
    ),
    (
        "night.yaml",
        "name: night\nversion: 1\nsteps:\n  - id: ask\n    approval:\n      approvers: [group:night-shift]\n",
    ),
    (
        "escalating.yaml",
        "name: escalating\nversion: 1\nsteps:\n  - id: ask\n    approval:\n      approvers: [ana]\n      timeout: 2s\n      on_timeout: { escalate_to: [group:it-managers], timeout: 1h }\n  - id: done\n    uses: transform\n    with: { level: \"${{ steps.ask.output.level }}\" }\noutput: ${{ steps.done.output }}\n",
    ),
    (
        "purchase.yaml",
        "name: purchase\nversion: 1\nsteps:\n  - id: ok\n    approval:\n      approvers: [max, ann]\n  - id: done\n    uses: transform\n    with: { approved_by: \"${{ steps.ok.output.approved_by }}\" }\noutput: ${{ steps.done.output }}\n",
    ),
    (
        "leave.yaml",
        "name: leave\nversion: 1\nsteps:\n  - id: ok\n    approval:\n      approvers: [max, ann]\n      requester: ${{ input.employee }}\n  - id: done\n    uses: transform\n    with: { approved_by: \"${{ steps.ok.output.approved_by }}\" }\noutput: ${{ steps.done.output }}\n",
    ),
    (
        "selfserve.yaml",
        "name: selfserve\nversion: 1\nsteps:\n  - id: ok\n    approval:\n      approvers: [max]\n      requester: ${{ input.employee }}\n      allow_self_approval: true\n  - id: done\n    uses: transform\n    with: { approved_by: \"${{ steps.ok.output.approved_by }}\" }\noutput: ${{ steps.done.output }}\n",
    ),
    (
        "noop.yaml",
        "name: noop\nversion: 1\nsteps:\n  - id: done\n    uses: transform\n    with: { ok: true }\n",
    ),
];

/// The secret of the `intake` hook, which starts `noop`.
const HOOK_SECRET: &str = "four-eyes-hook-secret-01";

fn start() -> (tempfile::TempDir, std::path::PathBuf, Server) {
    start_on(None)
}

/// Starts a server on SQLite, or on PostgreSQL with `database` lines.
/// [`start_on`] a schema of its own in the test PostgreSQL; `None` (and
/// a line saying `test` was skipped) when there is none.
fn start_on_postgres(
    test: &str,
    schema_prefix: &str,
) -> Option<(tempfile::TempDir, std::path::PathBuf, Server)> {
    let Some(url) = common::postgres_url() else {
        eprintln!("{test}: SKIPPED: STEWARD_TEST_DATABASE_URL is not set");
        return None;
    };
    let schema = common::unique_schema(schema_prefix);
    Some(start_on(Some(format!(
        "database = {url:?}\ndatabase_schema = {schema:?}"
    ))))
}

fn start_on(database: Option<String>) -> (tempfile::TempDir, std::path::PathBuf, Server) {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    for (file, yaml) in WORKFLOWS {
        std::fs::write(workflows.join(file), yaml).unwrap();
    }
    let config = dir.path().join("steward.toml");
    std::fs::write(
        &config,
        format!(
            "{}\ndata_dir = {:?}\nworkflows = [{:?}]\n\n\
             [groups]\ncab = [\"ana\", \"ben\", \"cy\"]\nit-managers = [\"dana\", \"eli\"]\n\n\
             [hooks.intake]\nworkflow = \"noop\"\nsecret = {{ value = \"{HOOK_SECRET}\" }}\n",
            database.unwrap_or_else(|| format!(
                "database = \"sqlite://{}/steward.db\"",
                dir.path().display()
            )),
            dir.path().join("data"),
            workflows
        ),
    )
    .unwrap();
    let server = Server::start(&config);
    (dir, config, server)
}

/// The pending approvals `approver` may decide.
fn event_types(server: &Server, run: &str) -> Vec<String> {
    server
        .events(run)
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn two_of_three_approvals_finish_the_step_and_outsiders_are_refused() {
    let (_dir, _config, server) = start();
    let run = server.start_run("change", json!({}));
    let approval = server.approval_of(&run, "ben");
    let id = approval["id"].as_str().unwrap();
    assert_eq!(approval["quorum"], 2);
    assert_eq!(approval["approvers"], json!(["group:cab"]));
    assert_eq!(approval["eligible"], json!(["ana", "ben", "cy"]));
    assert_eq!(approval["workflow"], "change");
    assert_eq!(approval["step"], "cab");
    assert!(approval["due_at"].is_string(), "{approval:#}");
    assert!(
        server.pending_approvals("dana").is_empty(),
        "dana is not in the CAB"
    );

    let (status, body) = server.decide(id, "zed", "approve", None);
    assert_eq!(status, 403, "{body:#}");
    assert_eq!(body["type"], "https://steward.dev/problems/not-an-approver");

    let (status, body) = server.decide(id, "ana", "approve", Some("looks fine"));
    assert_eq!(status, 201, "{body:#}");
    let (status, body) = server.decide(id, "ana", "reject", None);
    assert_eq!(
        status, 200,
        "a second decision by the same person changes nothing: {body:#}"
    );
    assert_eq!(body["decision"]["decision"], "approve");

    std::thread::sleep(Duration::from_millis(500));
    let waiting = server.run(&run);
    assert_eq!(waiting["status"], "waiting", "{waiting:#}");
    assert_eq!(waiting["steps"]["cab"]["state"], "awaiting");

    let (status, _) = server.decide(id, "ben", "approve", None);
    assert_eq!(status, 201);
    let done = server.wait_until_finished(std::slice::from_ref(&run), Duration::from_secs(20));
    assert_eq!(done[0]["status"], "succeeded", "{:#}", done[0]);
    assert_eq!(done[0]["output"]["approved_by"], json!(["ana", "ben"]));
    let decisions = &done[0]["steps"]["cab"]["approval"]["decisions"];
    assert_eq!(decisions[0]["by"], "ana");
    assert_eq!(decisions[0]["comment"], "looks fine");
    let types = event_types(&server, &run);
    assert_eq!(
        types.iter().filter(|t| *t == "approval_decided").count(),
        2,
        "{types:?}"
    );
    assert!(types.contains(&"approval_requested".to_string()));

    let (status, body) = server.decide(id, "cy", "approve", None);
    assert_eq!(status, 409, "{body:#}");
    assert_eq!(body["type"], "https://steward.dev/problems/approval-closed");
    assert!(server.pending_approvals("cy").is_empty());
    server.kill();
}

#[test]
fn one_rejection_rejects_the_run() {
    let (_dir, _config, server) = start();
    let run = server.start_run("access", json!({"owner": "olga"}));
    let approval = server.approval_of(&run, "olga");
    assert_eq!(approval["eligible"], json!(["olga", "ben"]));
    let (status, _) = server.decide(
        approval["id"].as_str().unwrap(),
        "olga",
        "reject",
        Some("not needed"),
    );
    assert_eq!(status, 201);
    let done = server.wait_until_finished(std::slice::from_ref(&run), Duration::from_secs(20));
    assert_eq!(done[0]["status"], "rejected", "{:#}", done[0]);
    let message = done[0]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("olga rejected step owner: not needed"),
        "{message}"
    );
    assert!(
        done[0]["steps"].get("grant").is_none(),
        "nothing ran after the rejection"
    );
    server.kill();
}

#[test]
fn a_timed_out_approval_escalates_to_new_approvers() {
    let (_dir, _config, server) = start();
    let run = server.start_run("escalating", json!({}));
    let first = server.approval_of(&run, "ana");
    assert_eq!(first["level"], 0);
    let escalated = server.approval_of(&run, "eli");
    assert_eq!(escalated["level"], 1);
    assert_eq!(escalated["eligible"], json!(["dana", "eli"]));
    let (status, _) = server.decide(first["id"].as_str().unwrap(), "ana", "approve", None);
    assert_eq!(status, 409, "the first approval closed when it escalated");
    let (status, _) = server.decide(escalated["id"].as_str().unwrap(), "eli", "approve", None);
    assert_eq!(status, 201);
    let done = server.wait_until_finished(std::slice::from_ref(&run), Duration::from_secs(20));
    assert_eq!(done[0]["status"], "succeeded", "{:#}", done[0]);
    assert_eq!(done[0]["output"]["level"], 1);
    server.kill();
}

#[test]
fn concurrent_decisions_give_one_consistent_outcome() {
    let (_dir, _config, server) = start();
    concurrent_decisions(&server);
    server.kill();
}

#[test]
fn concurrent_decisions_give_one_consistent_outcome_on_postgres() {
    let Some((_dir, _config, server)) = start_on_postgres(
        "concurrent_decisions_give_one_consistent_outcome_on_postgres",
        "approvals",
    ) else {
        return;
    };
    concurrent_decisions(&server);
    server.kill();
}

fn concurrent_decisions(server: &Server) {
    for round in 0..4 {
        let run = server.start_run("change", json!({}));
        let approval = server.approval_of(&run, "ana");
        let id = approval["id"].as_str().unwrap().to_string();
        // Two approvals (the quorum) and a rejection, all at once.
        let votes = [("ana", "approve"), ("ben", "approve"), ("cy", "reject")];
        let answers: Vec<(String, String, u16)> = std::thread::scope(|scope| {
            let handles: Vec<_> = votes
                .iter()
                .map(|(by, decision)| {
                    let id = &id;
                    scope.spawn(move || {
                        let (status, _) = server.decide(id, by, decision, None);
                        (by.to_string(), decision.to_string(), status)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let done = server.wait_until_finished(std::slice::from_ref(&run), Duration::from_secs(20));
        let recorded: Vec<(String, String)> = server
            .events(&run)
            .iter()
            .filter(|e| e["type"] == "approval_decided")
            .map(|e| {
                (
                    e["by"].as_str().unwrap().to_string(),
                    e["decision"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        for (by, decision, status) in &answers {
            let in_history = recorded.contains(&(by.clone(), decision.clone()));
            match status {
                201 => assert!(
                    in_history,
                    "round {round}: {by}'s accepted decision is not in the history"
                ),
                409 => assert!(
                    !in_history,
                    "round {round}: {by}'s refused decision is in the history"
                ),
                other => panic!("round {round}: {by} got {other}"),
            }
        }
        let rejected = recorded.iter().any(|(_, d)| d == "reject");
        let expected = if rejected { "rejected" } else { "succeeded" };
        assert_eq!(
            done[0]["status"], expected,
            "round {round}: {recorded:?} {:#}",
            done[0]
        );
    }
}

#[test]
fn a_decision_after_a_restart_finishes_the_waiting_run() {
    let (_dir, config, server) = start();
    let run = server.start_run("access", json!({"owner": "olga"}));
    let approval = server.approval_of(&run, "ben");
    server.kill();
    let server = Server::start(&config);
    let id = approval["id"].as_str().unwrap();
    // Each person decides with their own token: its subject is the decider.
    let cli = |person: &str, args: &[&str]| {
        std::process::Command::new(common::steward_bin())
            .args(["approve", id])
            .args(args)
            .args(["--comment", "via the CLI", "--server"])
            .arg(server.url(""))
            .args(["--token", &server.token_of(person)])
            .output()
            .unwrap()
    };
    let outsider = cli("zed", &[]);
    assert!(!outsider.status.success());
    assert!(
        String::from_utf8_lossy(&outsider.stderr).contains("403"),
        "{}",
        String::from_utf8_lossy(&outsider.stderr)
    );
    let posing = cli("zed", &["--as", "ben"]);
    let refused = String::from_utf8_lossy(&posing.stderr);
    assert!(
        !posing.status.success() && refused.contains("403") && refused.contains("made as \"zed\""),
        "{}",
        String::from_utf8_lossy(&posing.stderr)
    );
    let approved = cli("ben", &["--as", "ben"]);
    assert!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    assert!(String::from_utf8_lossy(&approved.stdout).contains("approve by ben"));
    let done = server.wait_until_finished(std::slice::from_ref(&run), Duration::from_secs(20));
    assert_eq!(done[0]["status"], "succeeded", "{:#}", done[0]);
    server.kill();
}

#[test]
fn a_delegate_decides_for_an_approver_who_is_away() {
    let (_dir, _config, server) = start();
    let post = |path: &str, body: Value| -> (u16, Value) {
        match server
            .request("POST", path)
            .set("content-type", "application/json")
            .send_string(&body.to_string())
        {
            Ok(r) => (r.status(), json_of(r)),
            Err(ureq::Error::Status(s, r)) => (s, json_of(r)),
            Err(e) => panic!("{e}"),
        }
    };
    let (status, body) = post("/v1/delegations", json!({"from": "olga", "to": "olga"}));
    assert_eq!(status, 422, "{body:#}");
    let (status, delegation) = post("/v1/delegations", json!({"from": "olga", "to": "zoe"}));
    assert_eq!(status, 201, "{delegation:#}");
    let listed = json_of(server.request("GET", "/v1/delegations").call().unwrap());
    assert_eq!(listed["items"][0]["to"], "zoe");

    let run = server.start_run("access", json!({"owner": "olga"}));
    let approval = server.approval_of(&run, "zoe");
    let (status, body) = server.decide(
        approval["id"].as_str().unwrap(),
        "zoe",
        "approve",
        Some("for olga"),
    );
    assert_eq!(status, 201, "{body:#}");
    assert_eq!(body["decision"]["by"], "olga");
    assert_eq!(body["decision"]["delegate"], "zoe");
    let done = server.wait_until_finished(std::slice::from_ref(&run), Duration::from_secs(20));
    assert_eq!(done[0]["status"], "succeeded", "{:#}", done[0]);
    let decided = server
        .events(&run)
        .into_iter()
        .find(|e| e["type"] == "approval_decided")
        .unwrap();
    assert_eq!(
        (decided["by"].as_str(), decided["delegate"].as_str()),
        (Some("olga"), Some("zoe"))
    );

    let id = delegation["id"].as_str().unwrap();
    let revoked = server
        .request("DELETE", &format!("/v1/delegations/{id}"))
        .call()
        .unwrap();
    assert_eq!(revoked.status(), 204);
    let run = server.start_run("access", json!({"owner": "olga"}));
    let approval = server.approval_of(&run, "olga");
    let (status, _) = server.decide(approval["id"].as_str().unwrap(), "zoe", "approve", None);
    assert_eq!(status, 403, "the delegation was revoked");
    server.kill();
}

#[test]
fn cancelling_a_waiting_run_closes_its_approval() {
    let (_dir, _config, server) = start();
    let run = server.start_run("access", json!({"owner": "olga"}));
    let approval = server.approval_of(&run, "olga");
    let cancelled = server
        .request("POST", &format!("/v1/runs/{run}/cancel"))
        .call()
        .unwrap();
    assert_eq!(cancelled.status(), 202);
    let done = server.wait_until_finished(std::slice::from_ref(&run), Duration::from_secs(20));
    assert_eq!(done[0]["status"], "cancelled");
    let (status, body) = server.decide(approval["id"].as_str().unwrap(), "olga", "approve", None);
    assert_eq!(status, 409, "{body:#}");
    assert!(server.pending_approvals("olga").is_empty());
    server.kill();
}

#[test]
fn an_escalation_that_times_out_follows_its_own_on_timeout() {
    let (_dir, _config, server) = start();
    let run = server.start_run("chain", json!({}));
    let escalated = server.approval_of(&run, "ben");
    assert_eq!(escalated["level"], 1);
    let done = server.wait_until_finished(std::slice::from_ref(&run), Duration::from_secs(20));
    assert_eq!(done[0]["status"], "succeeded", "{:#}", done[0]);
    let output = &done[0]["steps"]["ask"]["output"];
    assert_eq!(
        (output["level"].as_u64(), output["timed_out"].as_bool()),
        (Some(1), Some(true)),
        "{output:#}"
    );
    server.kill();
}

fn put_group(server: &Server, name: &str, body: Value) -> (u16, Value) {
    server.send_json("PUT", &format!("/v1/groups/{name}"), &body)
}

#[test]
fn groups_set_over_the_api_decide_approvals_opened_after_the_change() {
    let (_dir, _config, server) = start();
    // Not defined yet: the run fails, naming how to define the group.
    let early = server.start_run("night", json!({}));
    let failed = server.wait_until_finished(&[early], Duration::from_secs(20));
    assert_eq!(failed[0]["status"], "failed");
    assert!(
        failed[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("PUT /v1/groups/night-shift"),
        "{:#}",
        failed[0]
    );

    let (status, group) = put_group(&server, "night-shift", json!({"members": ["gus", "hana"]}));
    assert_eq!(status, 201, "{group:#}");
    assert_eq!(group["source"], "api");
    let run = server.start_run("night", json!({}));
    let approval = server.approval_of(&run, "hana");
    assert_eq!(approval["eligible"], json!(["gus", "hana"]));
    let id = approval["id"].as_str().unwrap().to_string();

    // A change applies to approvals opened later, not to this one.
    let (status, _) = put_group(&server, "night-shift", json!({"members": ["ivo"]}));
    assert_eq!(status, 200);
    let (status, _) = server.decide(&id, "ivo", "approve", None);
    assert_eq!(status, 403);
    let (status, _) = server.decide(&id, "gus", "approve", None);
    assert_eq!(status, 201);
    let done = server.wait_until_finished(&[run], Duration::from_secs(20));
    assert_eq!(done[0]["status"], "succeeded");

    // steward.toml's groups are read-only here; bad bodies name the problem.
    let (status, problem) = put_group(&server, "cab", json!({"members": ["zed"]}));
    assert_eq!(status, 409, "{problem:#}");
    let (status, problem) = put_group(&server, "empty", json!({"members": []}));
    assert_eq!(status, 422, "{problem:#}");
    let (status, _) = put_group(&server, "nested", json!({"members": ["group:cab"]}));
    assert_eq!(status, 422);
    let list = json_of(server.request("GET", "/v1/groups").call().unwrap());
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cab", "it-managers", "night-shift"]);
    let deleted = server
        .request("DELETE", "/v1/groups/night-shift")
        .call()
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let gone = server.request("GET", "/v1/groups/night-shift").call();
    assert!(matches!(gone, Err(ureq::Error::Status(404, _))));
    server.kill();
}

#[test]
fn a_decide_token_cannot_decide_as_someone_else() {
    let (_dir, _config, server) = start();
    let run = server.start_run("access", json!({"owner": "max"}));
    let approval = server.approval_of(&run, "max");
    let id = approval["id"].as_str().unwrap();
    let path = format!("/v1/approvals/{id}");
    let eve = server.token_of("eve");

    // eve names max as the decider: refused.
    let (status, body) = server.send_json_as(
        &eve,
        "POST",
        &path,
        &json!({"decision": "approve", "by": "max"}),
    );
    assert_eq!(status, 403, "{body:#}");
    assert_eq!(
        body["type"],
        "https://steward.dev/problems/decider-mismatch"
    );
    assert!(
        body["detail"].as_str().unwrap().contains("\"eve\""),
        "{body:#}"
    );
    // Deciding as herself, she is not an approver, as before.
    let (status, body) = server.send_json_as(&eve, "POST", &path, &json!({"decision": "approve"}));
    assert_eq!(status, 403, "{body:#}");
    assert_eq!(body["type"], "https://steward.dev/problems/not-an-approver");
    // Nor may a token without the admin scope decide on max's behalf, or
    // hand itself max's approvals.
    let (status, body) = server.send_json_as(
        &eve,
        "POST",
        &path,
        &json!({"decision": "approve", "on_behalf_of": "max"}),
    );
    assert_eq!(status, 403, "{body:#}");
    assert_eq!(
        body["type"],
        "https://steward.dev/problems/on-behalf-not-allowed"
    );
    let (status, body) = server.send_json_as(
        &eve,
        "POST",
        "/v1/delegations",
        &json!({"from": "max", "to": "eve"}),
    );
    assert_eq!(status, 403, "{body:#}");
    let (status, body) = server.send_json_as(&eve, "POST", &path, &json!({"decision": "approve"}));
    assert_eq!(status, 403, "still not an approver: {body:#}");

    // Nothing was recorded: still pending, no decisions.
    let shown = json_of(server.request("GET", &path).call().unwrap());
    assert_eq!(shown["status"], "pending", "{shown:#}");
    assert_eq!(shown["decisions"], json!([]), "{shown:#}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.run(&run)["status"], "waiting");

    // max finds it as approver=me and decides with his own token.
    let max = server.token_of("max");
    let (status, mine) = server.send_json_as(&max, "GET", "/v1/approvals?approver=me", &json!({}));
    assert_eq!(status, 200, "{mine:#}");
    assert_eq!(mine["items"][0]["id"], id, "{mine:#}");
    let (status, body) = server.send_json_as(
        &max,
        "POST",
        &path,
        &json!({"decision": "approve", "by": "max"}),
    );
    assert_eq!(status, 201, "{body:#}");
    assert_eq!(body["decision"]["by"], "max");
    assert!(body["decision"].get("entered_by").is_none(), "{body:#}");
    let done = server.wait_until_finished(std::slice::from_ref(&run), Duration::from_secs(20));
    assert_eq!(done[0]["status"], "succeeded", "{:#}", done[0]);
    server.kill();
}

#[test]
fn an_admin_decides_on_behalf_only_when_it_says_so() {
    let (_dir, _config, server) = start();
    let run = server.start_run("access", json!({"owner": "olga"}));
    let approval = server.approval_of(&run, "olga");
    let id = approval["id"].as_str().unwrap();
    let path = format!("/v1/approvals/{id}");

    // The admin token's subject is admin: naming olga as `by` is not enough.
    let (status, body) =
        server.send_json("POST", &path, &json!({"decision": "approve", "by": "olga"}));
    assert_eq!(status, 403, "{body:#}");
    assert_eq!(
        body["type"],
        "https://steward.dev/problems/decider-mismatch"
    );
    assert!(
        body["detail"].as_str().unwrap().contains("on_behalf_of"),
        "the detail says how: {body:#}"
    );
    // Deciding as itself, admin is no approver.
    let (status, body) = server.send_json("POST", &path, &json!({"decision": "approve"}));
    assert_eq!(status, 403, "{body:#}");
    assert_eq!(body["type"], "https://steward.dev/problems/not-an-approver");
    let shown = json_of(server.request("GET", &path).call().unwrap());
    assert_eq!(shown["decisions"], json!([]), "{shown:#}");

    // Said explicitly, the decision is olga's, entered by admin.
    let (status, body) = server.send_json(
        "POST",
        &path,
        &json!({"decision": "approve", "on_behalf_of": "olga", "comment": "by phone"}),
    );
    assert_eq!(status, 201, "{body:#}");
    assert_eq!(body["decision"]["by"], "olga");
    assert_eq!(body["decision"]["entered_by"], "admin");
    let shown = json_of(server.request("GET", &path).call().unwrap());
    assert_eq!(
        (
            shown["decisions"][0]["by"].as_str(),
            shown["decisions"][0]["entered_by"].as_str()
        ),
        (Some("olga"), Some("admin")),
        "{shown:#}"
    );
    let done = server.wait_until_finished(std::slice::from_ref(&run), Duration::from_secs(20));
    assert_eq!(done[0]["status"], "succeeded", "{:#}", done[0]);
    let decided = server
        .events(&run)
        .into_iter()
        .find(|e| e["type"] == "approval_decided")
        .unwrap();
    assert_eq!(
        (decided["by"].as_str(), decided["entered_by"].as_str()),
        (Some("olga"), Some("admin")),
        "the history records who entered it: {decided:#}"
    );
    server.kill();
}

/// A token of `subject` that may start runs and decide approvals.
fn starter_token(server: &Server, subject: &str) -> String {
    server.create_token(subject, &["runs:write", "runs:read", "approvals:decide"])["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Starts `workflow` with `input` as the token `secret`: the new run.
fn start_as(server: &Server, secret: &str, workflow: &str, input: Value) -> Value {
    let (status, run) = server.send_json_as(
        secret,
        "POST",
        &format!("/v1/workflows/{workflow}/runs"),
        &json!({ "input": input }),
    );
    assert_eq!(status, 201, "{run:#}");
    run
}

/// `GET /v1/approvals/{id}` as the admin.
fn approval(server: &Server, id: &str) -> Value {
    json_of(
        server
            .request("GET", &format!("/v1/approvals/{id}"))
            .call()
            .unwrap(),
    )
}

/// Asserts a decision was refused as self-approval and left no trace.
fn assert_self_approval_refused(server: &Server, id: &str, answer: (u16, Value), why: &str) {
    let (status, body) = answer;
    assert_eq!(status, 403, "{body:#}");
    assert_eq!(body["type"], "https://steward.dev/problems/self-approval");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains(why), "{detail}");
    let shown = approval(server, id);
    assert_eq!(shown["status"], "pending", "{shown:#}");
    assert_eq!(shown["decisions"], json!([]), "nothing is recorded");
}

#[test]
fn the_requester_cannot_approve_their_own_run_while_another_approver_can() {
    let (_dir, _config, server) = start();
    four_eyes(&server);
    server.kill();
}

#[test]
fn the_requester_cannot_approve_their_own_run_while_another_approver_can_on_postgres() {
    let Some((_dir, _config, server)) = start_on_postgres(
        "the_requester_cannot_approve_their_own_run_while_another_approver_can_on_postgres",
        "four_eyes",
    ) else {
        return;
    };
    four_eyes(&server);
    server.kill();
}

/// The starter and the requester are refused (in person and as a
/// delegate) while another approver decides; nothing refused is recorded.
fn four_eyes(server: &Server) {
    // max starts a purchase with his own token, and is one of its approvers.
    let max = starter_token(server, "max");
    let started = start_as(server, &max, "purchase", json!({}));
    assert_eq!(started["started_by"], "max");
    let run = started["id"].as_str().unwrap().to_string();
    let open = server.approval_of(&run, "ann");
    let id = open["id"].as_str().unwrap();
    assert_eq!(open["started_by"], "max");
    assert_eq!(open["eligible"], json!(["max", "ann"]));
    assert_eq!(
        open["ineligible"],
        json!(["max"]),
        "the starter is shown as barred"
    );
    let answer = server.send_json_as(
        &max,
        "POST",
        &format!("/v1/approvals/{id}"),
        &json!({"decision": "approve"}),
    );
    assert_self_approval_refused(server, id, answer, &format!("started run {run}"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.run(&run)["status"], "waiting");
    let (status, body) = server.decide(id, "ann", "approve", None);
    assert_eq!(status, 201, "{body:#}");
    let done = server.wait_until_finished(std::slice::from_ref(&run), Duration::from_secs(20));
    assert_eq!(done[0]["status"], "succeeded", "{:#}", done[0]);
    assert_eq!(done[0]["output"]["approved_by"], json!(["ann"]));

    // The admin starts a leave request whose requester, from the input, is max.
    let run = server.start_run("leave", json!({"employee": "max"}));
    let open = server.approval_of(&run, "ann");
    let id = open["id"].as_str().unwrap();
    assert_eq!(open["requester"], "max");
    assert_eq!(open["started_by"], "admin");
    assert_eq!(open["ineligible"], json!(["max"]));
    let answer = server.decide(id, "max", "approve", None);
    assert_self_approval_refused(server, id, answer, "is its requester");
    let (status, body) = server.decide(id, "ann", "approve", None);
    assert_eq!(status, 201, "{body:#}");
    let done = server.wait_until_finished(std::slice::from_ref(&run), Duration::from_secs(20));
    assert_eq!(done[0]["status"], "succeeded", "{:#}", done[0]);
    assert_eq!(done[0]["output"]["approved_by"], json!(["ann"]));

    // A requester who is ann's delegate may not decide for her either.
    let (status, body) = server.send_json(
        "POST",
        "/v1/delegations",
        &json!({"from": "ann", "to": "eve"}),
    );
    assert_eq!(status, 201, "{body:#}");
    let run = server.start_run("leave", json!({"employee": "eve"}));
    let open = server.approval_of(&run, "eve");
    let id = open["id"].as_str().unwrap();
    let answer = server.decide(id, "eve", "approve", None);
    assert_self_approval_refused(server, id, answer, "is its requester");

    // A delegate of both the starter and another approver decides for the other.
    for from in ["max", "ann"] {
        let (status, body) = server.send_json(
            "POST",
            "/v1/delegations",
            &json!({"from": from, "to": "zed"}),
        );
        assert_eq!(status, 201, "{body:#}");
    }
    let started = start_as(server, &max, "purchase", json!({}));
    let run = started["id"].as_str().unwrap().to_string();
    let open = server.approval_of(&run, "zed");
    let id = open["id"].as_str().unwrap();
    let (status, body) = server.decide(id, "zed", "approve", None);
    assert_eq!(status, 201, "{body:#}");
    assert_eq!(body["decision"]["by"], "ann");
    assert_eq!(body["decision"]["delegate"], "zed");
}

#[test]
fn allow_self_approval_turns_four_eyes_off() {
    let (_dir, _config, server) = start();
    let max = starter_token(&server, "max");
    let started = start_as(&server, &max, "selfserve", json!({"employee": "max"}));
    let run = started["id"].as_str().unwrap().to_string();
    let open = server.approval_of(&run, "max");
    let id = open["id"].as_str().unwrap();
    assert_eq!(open["allow_self_approval"], true);
    assert_eq!(open["requester"], "max");
    assert_eq!(open["started_by"], "max");
    assert_eq!(open["ineligible"], json!([]));
    let (status, body) = server.send_json_as(
        &max,
        "POST",
        &format!("/v1/approvals/{id}"),
        &json!({"decision": "approve"}),
    );
    assert_eq!(status, 201, "{body:#}");
    let done = server.wait_until_finished(std::slice::from_ref(&run), Duration::from_secs(20));
    assert_eq!(done[0]["status"], "succeeded", "{:#}", done[0]);
    assert_eq!(done[0]["output"]["approved_by"], json!(["max"]));
    server.kill();
}

#[test]
fn runs_record_who_started_them() {
    let (_dir, _config, server) = start();

    // REST: the token's subject.
    let max = starter_token(&server, "max");
    let by_max = start_as(&server, &max, "noop", json!({}));
    assert_eq!(by_max["started_by"], "max");
    let by_admin = server.start_run("noop", json!({}));
    assert_eq!(server.run(&by_admin)["started_by"], "admin");

    // A webhook: hook:NAME.
    let body = r#"{"ticket": "INC0001"}"#;
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let delivered = json_of(
        ureq::post(&server.url("/v1/hooks/intake"))
            .set("content-type", "application/json")
            .set(
                "Steward-Signature",
                &steward::hooks::sign(HOOK_SECRET, t, body.as_bytes()),
            )
            .send_string(body)
            .unwrap(),
    );
    assert_eq!(delivered["started_by"], "hook:intake");
    let hooked = delivered["id"].as_str().unwrap().to_string();

    // A schedule: schedule:ID.
    let (status, schedule) = server.send_json(
        "POST",
        "/v1/schedules",
        &json!({"workflow": "noop", "cron": "* * * * * *", "input": {}}),
    );
    assert_eq!(status, 201, "{schedule:#}");
    let schedule_id = schedule["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let scheduled = loop {
        let detail = json_of(
            server
                .request("GET", &format!("/v1/schedules/{schedule_id}"))
                .call()
                .unwrap(),
        );
        let fired = detail["fires"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|f| f["run_id"].as_str().map(str::to_string));
        if let Some(run) = fired {
            break run;
        }
        assert!(std::time::Instant::now() < deadline, "{detail:#}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let deleted = server
        .request("DELETE", &format!("/v1/schedules/{schedule_id}"))
        .call()
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(
        server.run(&scheduled)["started_by"],
        format!("schedule:{schedule_id}")
    );

    // Listings show it too.
    let listed = json_of(
        server
            .request("GET", "/v1/runs?workflow=noop&limit=100")
            .call()
            .unwrap(),
    );
    let started_by = |id: &str| {
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .map(|r| r["started_by"].clone())
    };
    assert_eq!(
        started_by(by_max["id"].as_str().unwrap()),
        Some(json!("max"))
    );
    assert_eq!(started_by(&by_admin), Some(json!("admin")));
    assert_eq!(started_by(&hooked), Some(json!("hook:intake")));

    // And the API's description says so.
    let doc = json_of(ureq::get(&server.url("/openapi.json")).call().unwrap());
    let summary = &doc["components"]["schemas"]["RunSummary"]["properties"];
    assert!(summary["started_by"].is_object(), "{summary:#}");
    let approval = &doc["components"]["schemas"]["Approval"]["properties"];
    for field in [
        "requester",
        "started_by",
        "allow_self_approval",
        "ineligible",
    ] {
        assert!(approval[field].is_object(), "{field}: {approval:#}");
    }
    server.kill();
}

/// A decision racing the revocation of the token making it: either the
/// decision was made (201, recorded once on the approval and once in the
/// audit log) or the token was gone first (401, recorded nowhere); the
/// revocation is logged once either way.
#[test]
fn a_decision_racing_its_token_s_revocation_leaves_a_consistent_log() {
    let (_dir, _config, server) = start();
    let server = std::sync::Arc::new(server);
    let mut outcomes = std::collections::BTreeMap::new();
    for round in 0..8 {
        let run = server.start_run("change", json!({}));
        let id = server.approval_of(&run, "ana")["id"]
            .as_str()
            .unwrap()
            .to_string();
        let token = server.create_token("ana", &["approvals:decide"]);
        let (token_id, secret) = (
            token["id"].as_str().unwrap().to_string(),
            token["token"].as_str().unwrap().to_string(),
        );
        let decide = {
            let (server, id) = (server.clone(), id.clone());
            std::thread::spawn(move || {
                // Staggered so that either side wins in some rounds.
                std::thread::sleep(Duration::from_millis(round % 4));
                server.send_json_as(
                    &secret,
                    "POST",
                    &format!("/v1/approvals/{id}"),
                    &json!({ "decision": "approve" }),
                )
            })
        };
        let revoked = server
            .request("DELETE", &format!("/v1/tokens/{token_id}"))
            .call()
            .unwrap();
        assert_eq!(revoked.status(), 204);
        let (status, body) = decide.join().unwrap();
        assert!(status == 201 || status == 401, "{status}: {body:#}");
        *outcomes.entry(status).or_insert(0) += 1;

        let decided = usize::from(status == 201);
        let on_approval = approval(&server, &id)["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["by"] == "ana")
            .count();
        assert_eq!(on_approval, decided, "round {round}: {status} {body:#}");
        let logged = |query: String| -> usize {
            let (status, body) = server.send_json("GET", &query, &Value::Null);
            assert_eq!(status, 200, "{body:#}");
            body["items"].as_array().unwrap().len()
        };
        assert_eq!(
            logged(format!("/v1/audit?action=approval.decide&target={id}")),
            decided,
            "round {round}: the log and the approval disagree"
        );
        assert_eq!(
            logged(format!("/v1/audit?action=token.revoke&target={token_id}")),
            1
        );
    }
    eprintln!("decision vs revocation outcomes (status: rounds): {outcomes:?}");
}
