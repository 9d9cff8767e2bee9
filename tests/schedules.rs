//! Cron schedules over real HTTP against the real binary: every-second
//! fires with their input, pause and resume, catch-up across a SIGKILL,
//! overlap policies with a slow workflow, triggers declared in workflows,
//! and the 4xx answers that name the bad field.

use crate::common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::server::{Server, json_of, write_config};
use serde_json::{Value, json};

const TICK: &str = "name: tick\nversion: 1\ninput:\n  type: object\n  properties:\n    n: { type: integer }\nsteps:\n  - id: echo\n    uses: transform\n    with: { n: \"${{ input.n }}\" }\noutput: ${{ steps.echo.output }}\n";

const SLOW: &str = "name: slow\nversion: 1\nsteps:\n  - id: hold\n    wait: 2500ms\n";

const WEEKLY: &str = "name: weekly\nversion: 1\nsteps:\n  - id: echo\n    uses: transform\n    with: { r: \"${{ input.report }}\" }\ntriggers:\n  - cron: \"0 9 * * MON\"\n    timezone: Europe/Berlin\n    input: { report: weekly }\n";

fn start(extra: &str) -> (tempfile::TempDir, std::path::PathBuf, Server) {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::write(workflows.join("tick.yaml"), TICK).unwrap();
    std::fs::write(workflows.join("slow.yaml"), SLOW).unwrap();
    std::fs::write(workflows.join("weekly.yaml"), WEEKLY).unwrap();
    let config = write_config(dir.path(), Some(&workflows), extra);
    let server = Server::start(&config);
    (dir, config, server)
}

fn send(server: &Server, method: &str, path: &str, body: Value) -> (u16, Value) {
    server.send_json(method, path, &body)
}

fn create(server: &Server, body: Value) -> String {
    let (status, created) = send(server, "POST", "/v1/schedules", body);
    assert_eq!(status, 201, "{created:#}");
    created["id"].as_str().unwrap().to_string()
}

fn show(server: &Server, id: &str) -> Value {
    json_of(
        server
            .request("GET", &format!("/v1/schedules/{id}"))
            .call()
            .unwrap(),
    )
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

/// The fire records with `outcome`, oldest first.
fn fires(detail: &Value, outcome: &str) -> Vec<Value> {
    let mut out: Vec<Value> = detail["fires"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["outcome"] == outcome)
        .cloned()
        .collect();
    out.reverse();
    out
}

fn wait_for(within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn runs_of(server: &Server, workflow: &str) -> Vec<Value> {
    let body = json_of(
        server
            .request("GET", &format!("/v1/runs?workflow={workflow}&limit=500"))
            .call()
            .unwrap(),
    );
    body["items"].as_array().unwrap().clone()
}

#[test]
fn an_every_second_schedule_fires_on_time_with_its_input() {
    let (_dir, _config, server) = start("");
    let id = create(
        &server,
        json!({"workflow": "tick", "cron": "* * * * * *", "input": {"n": 7}}),
    );
    wait_for(Duration::from_secs(15), || {
        fires(&show(&server, &id), "fired").len() >= 4
    });
    let detail = show(&server, &id);
    let fired = fires(&detail, "fired");
    for pair in fired.windows(2) {
        let gap = time(&pair[1]["fire_at"]) - time(&pair[0]["fire_at"]);
        assert_eq!(gap.num_milliseconds(), 1000, "no fire time is skipped");
    }
    for fire in &fired {
        let run = server.run(fire["run_id"].as_str().unwrap());
        assert_eq!(run["input"], json!({"n": 7}));
        let late = time(&run["created_at"]) - time(&fire["fire_at"]);
        assert!(
            (0..1000).contains(&late.num_milliseconds()),
            "run started {late} after its fire time"
        );
    }
    let done: Vec<String> = fired
        .iter()
        .map(|f| f["run_id"].as_str().unwrap().to_string())
        .collect();
    for run in server.wait_until_finished(&done, Duration::from_secs(10)) {
        assert_eq!(run["status"], "succeeded");
        assert_eq!(run["output"], json!({"n": 7}));
    }
    assert_eq!(detail["next_fires"].as_array().unwrap().len(), 5);
    let metrics = ureq::get(&server.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains("steward_schedule_fires_total{workflow=\"tick\",outcome=\"fired\"}"),
        "{metrics}"
    );
    server.kill();
}

#[test]
fn pause_stops_the_fires_and_resume_starts_them_from_now() {
    let (_dir, _config, server) = start("");
    let id = create(
        &server,
        json!({"workflow": "tick", "cron": "* * * * * *", "input": {"n": 1}}),
    );
    wait_for(Duration::from_secs(10), || {
        !fires(&show(&server, &id), "fired").is_empty()
    });
    let (status, paused) = send(
        &server,
        "PATCH",
        &format!("/v1/schedules/{id}"),
        json!({"paused": true}),
    );
    assert_eq!(status, 200, "{paused:#}");
    assert_eq!(paused["paused"], true);
    assert!(paused["next_fire_at"].is_null());
    assert_eq!(paused["next_fires"], json!([]));
    let count = fires(&show(&server, &id), "fired").len();
    std::thread::sleep(Duration::from_millis(2500));
    let after_pause = fires(&show(&server, &id), "fired").len();
    assert!(
        after_pause <= count + 1,
        "a paused schedule fired: {count} then {after_pause}"
    );
    let resumed_at = Utc::now();
    let (status, resumed) = send(
        &server,
        "PATCH",
        &format!("/v1/schedules/{id}"),
        json!({"paused": false}),
    );
    assert_eq!(status, 200);
    assert!(time(&resumed["next_fire_at"]) > resumed_at);
    wait_for(Duration::from_secs(10), || {
        fires(&show(&server, &id), "fired").len() >= after_pause + 2
    });
    let detail = show(&server, &id);
    assert_eq!(detail["counts"]["missed"], 0, "a pause is not a miss");
    server.kill();
}

#[test]
fn a_restart_loses_no_fire_within_the_catch_up_window_and_repeats_none() {
    // A short grace makes the seconds of downtime count as late.
    let (_dir, config, server) = start("[scheduler]\ngrace_ms = 300\n");
    let all = create(
        &server,
        json!({"workflow": "tick", "cron": "* * * * * *", "input": {"n": 2},
               "overlap": "allow", "catch_up": "all", "catch_up_window": "1h"}),
    );
    let none = create(
        &server,
        json!({"workflow": "slow", "cron": "* * * * * *", "overlap": "allow", "catch_up": "none"}),
    );
    let last = create(
        &server,
        json!({"workflow": "weekly", "cron": "* * * * * *", "input": {"report": "catch-up"},
               "overlap": "allow", "catch_up": "last"}),
    );
    wait_for(Duration::from_secs(10), || {
        fires(&show(&server, &all), "fired").len() >= 2
            && !fires(&show(&server, &last), "fired").is_empty()
    });
    server.kill();
    let killed_at = Utc::now();
    std::thread::sleep(Duration::from_secs(3));
    let restarted_at = Utc::now();
    let server = Server::start(&config);
    std::thread::sleep(Duration::from_secs(2));
    // A fire recorded just before the kill but whose run had not started
    // is started by the next process once the fire is 5 s old (until then
    // its own process might still be starting it).
    wait_for(Duration::from_secs(10), || {
        show(&server, &all)["fires"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["run_id"].is_string())
    });
    let detail = show(&server, &all);
    let records: Vec<&Value> = detail["fires"].as_array().unwrap().iter().collect();
    assert!(records.len() >= 6, "{detail:#}");
    let mut times: Vec<DateTime<Utc>> = records.iter().map(|f| time(&f["fire_at"])).collect();
    times.reverse();
    for pair in times.windows(2) {
        assert_eq!(
            (pair[1] - pair[0]).num_milliseconds(),
            1000,
            "a fire time was lost: {detail:#}"
        );
    }
    assert!(
        records
            .iter()
            .all(|f| f["outcome"] == "fired" && f["run_id"].is_string()),
        "catch_up: all runs every fire time in the window: {detail:#}"
    );
    let runs = runs_of(&server, "tick");
    assert_eq!(
        runs.len() as i64,
        detail["counts"]["fired"].as_i64().unwrap(),
        "one run per fire time, none repeated"
    );

    // catch_up: last runs at most the latest of the fire times the
    // downtime missed (none, when a fire on time follows in the same
    // pass); the others are one missed record that says why.
    let detail = show(&server, &last);
    let late_runs = fires(&detail, "fired")
        .into_iter()
        .filter(|f| {
            let at = time(&f["fire_at"]);
            at > killed_at && at < restarted_at
        })
        .count();
    assert!(
        late_runs <= 1,
        "catch_up: last ran {late_runs} late fires: {detail:#}"
    );
    let missed = fires(&detail, "missed");
    assert!(
        missed.iter().any(|f| {
            let reason = f["reason"].as_str().unwrap();
            reason.contains("were missed") && reason.contains("(catch_up: last)")
        }),
        "the downtime's other fire times are recorded as one span: {detail:#}"
    );
    wait_for(Duration::from_secs(5), || {
        fires(&show(&server, &last), "fired")
            .iter()
            .any(|f| time(&f["fire_at"]) > restarted_at)
    });

    let detail = show(&server, &none);
    let missed = fires(&detail, "missed");
    assert!(!missed.is_empty(), "the downtime is recorded: {detail:#}");
    assert!(
        missed[0]["reason"]
            .as_str()
            .unwrap()
            .contains("catch_up: none"),
        "{missed:#?}"
    );
    server.kill();
}

#[test]
fn overlap_policies_with_a_slow_workflow() {
    let (_dir, _config, server) = start("");
    let mut ids = Vec::new();
    for policy in ["skip", "queue", "allow", "cancel_previous"] {
        ids.push(create(
            &server,
            json!({"workflow": "slow", "cron": "* * * * * *", "overlap": policy}),
        ));
    }
    std::thread::sleep(Duration::from_millis(4500));
    let [skip, queue, allow, cancel] = [0, 1, 2, 3].map(|i| show(&server, &ids[i]));

    // skip: a run takes 2.5 s, so fires in between are skipped.
    assert!(!fires(&skip, "skipped").is_empty(), "{skip:#}");
    assert!(
        fires(&skip, "skipped")[0]["reason"]
            .as_str()
            .unwrap()
            .contains("overlap: skip")
    );

    // queue: one fire waits; later ones are skipped; the waiting one runs
    // once the first run is over.
    assert!(
        fires(&queue, "skipped")
            .iter()
            .any(|f| f["reason"].as_str().unwrap().contains("already queued")),
        "{queue:#}"
    );
    wait_for(Duration::from_secs(10), || {
        fires(&show(&server, &ids[1]), "fired")
            .iter()
            .any(|f| f["reason"] == "the previous run finished")
    });

    // allow: runs overlap.
    let allowed: Vec<Value> = fires(&allow, "fired");
    assert!(allowed.len() >= 3, "{allow:#}");
    assert_eq!(allow["counts"]["skipped"], 0);

    // cancel_previous: each fire cancels the run before it.
    let cancelling: Vec<Value> = fires(&cancel, "fired");
    assert!(cancelling.len() >= 3, "{cancel:#}");
    let first = cancelling[0]["run_id"].as_str().unwrap().to_string();
    let runs = server.wait_until_finished(&[first], Duration::from_secs(10));
    assert_eq!(runs[0]["status"], "cancelled", "{:#}", runs[0]);
    assert!(
        cancelling[1]["reason"]
            .as_str()
            .unwrap()
            .contains("cancel_previous")
    );
    server.kill();
}

#[test]
fn workflow_triggers_are_schedules_that_can_only_be_paused_here() {
    let (_dir, _config, server) = start("");
    let list = json_of(
        server
            .request("GET", "/v1/schedules?workflow=weekly")
            .call()
            .unwrap(),
    );
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list:#}");
    let trigger = &items[0];
    assert_eq!(trigger["source"], "workflow");
    assert_eq!(trigger["cron"], "0 9 * * MON");
    assert_eq!(trigger["input"], json!({"report": "weekly"}));
    let next = time(&trigger["next_fire_at"]);
    let berlin = next.with_timezone(&chrono_tz::Europe::Berlin);
    assert_eq!(berlin.format("%a %H:%M").to_string(), "Mon 09:00");
    let id = trigger["id"].as_str().unwrap();

    let (status, body) = send(
        &server,
        "PATCH",
        &format!("/v1/schedules/{id}"),
        json!({"cron": "0 10 * * MON"}),
    );
    assert_eq!(status, 409, "{body:#}");
    assert_eq!(
        body["type"],
        "https://steward.dev/problems/schedule-from-workflow"
    );
    let (status, _) = send(
        &server,
        "PATCH",
        &format!("/v1/schedules/{id}"),
        json!({"paused": true}),
    );
    assert_eq!(status, 200);
    let status = server
        .request("DELETE", &format!("/v1/schedules/{id}"))
        .call()
        .map_or_else(
            |e| match e {
                ureq::Error::Status(s, _) => s,
                e => panic!("{e}"),
            },
            |r| r.status(),
        );
    assert_eq!(status, 409);

    // A new version without the trigger removes its schedule.
    let v2 = WEEKLY.replace("version: 1", "version: 2");
    let v2 = &v2[..v2.find("triggers:").unwrap()];
    let deployed = server
        .request("PUT", "/v1/workflows/weekly")
        .set("content-type", "application/yaml")
        .send_string(v2)
        .unwrap();
    assert_eq!(deployed.status(), 201);
    let list = json_of(
        server
            .request("GET", "/v1/schedules?workflow=weekly")
            .call()
            .unwrap(),
    );
    assert_eq!(list["items"], json!([]));
    server.kill();
}

#[test]
fn bad_schedules_get_a_4xx_naming_the_field() {
    let (_dir, _config, server) = start("");
    let cases = [
        (json!({"workflow": "tick", "cron": "61 * * * *"}), "cron"),
        (json!({"workflow": "tick", "cron": "* * * *"}), "cron"),
        (json!({"workflow": "tick", "cron": "@fortnightly"}), "cron"),
        (
            json!({"workflow": "tick", "cron": "0 9 * * *", "timezone": "Europe/Atlantis"}),
            "timezone",
        ),
        (json!({"workflow": "nope", "cron": "0 9 * * *"}), "workflow"),
        (json!({"cron": "0 9 * * *"}), "workflow"),
        (
            json!({"workflow": "tick", "cron": "0 9 * * *", "overlap": "sometimes"}),
            "overlap",
        ),
        (
            json!({"workflow": "tick", "cron": "0 9 * * *", "catch_up": "most"}),
            "catch_up",
        ),
        (
            json!({"workflow": "tick", "cron": "0 9 * * *", "catch_up_window": "soon"}),
            "catch_up_window",
        ),
        (
            json!({"workflow": "tick", "cron": "0 9 * * *", "input": {"n": "seven"}}),
            "input",
        ),
    ];
    for (body, field) in cases {
        let (status, problem) = send(&server, "POST", "/v1/schedules", body.clone());
        assert_eq!(status, 422, "{body}: {problem:#}");
        assert_eq!(problem["field"], field, "{body}: {problem:#}");
        assert!(
            problem["detail"].as_str().unwrap().starts_with(field),
            "{problem:#}"
        );
    }
    let (status, _) = send(
        &server,
        "PATCH",
        "/v1/schedules/nope",
        json!({"paused": true}),
    );
    assert_eq!(status, 404);
    let (status, problem) = send(
        &server,
        "POST",
        "/v1/workflows/tick/runs",
        json!({"input": {"n": 1}}),
    );
    assert_eq!(status, 201, "{problem:#}");
    let reserved = server
        .request("POST", "/v1/workflows/tick/runs")
        .set("content-type", "application/json")
        .set("idempotency-key", "schedule:x:1")
        .send_string(r#"{"input": {"n": 1}}"#);
    assert!(
        matches!(reserved, Err(ureq::Error::Status(400, _))),
        "schedule: keys are the scheduler's"
    );

    let id = create(&server, json!({"workflow": "tick", "cron": "0 9 * * *"}));
    let (status, problem) = send(
        &server,
        "PATCH",
        &format!("/v1/schedules/{id}"),
        json!({"cron": "0 25 * * *"}),
    );
    assert_eq!(status, 422);
    assert_eq!(problem["field"], "cron");
    let deleted = server
        .request("DELETE", &format!("/v1/schedules/{id}"))
        .call()
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let gone = server.request("GET", &format!("/v1/schedules/{id}")).call();
    assert!(matches!(gone, Err(ureq::Error::Status(404, _))));
    server.kill();
}

#[test]
fn the_cli_creates_lists_pauses_and_resumes_schedules() {
    let (_dir, _config, server) = start("");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(common::steward_bin())
            .arg("schedules")
            .args(args)
            .args([
                "--server",
                &server.url(""),
                "--token",
                common::server::ADMIN_TOKEN,
            ])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, out, err) = cli(&[
        "create",
        "--workflow",
        "tick",
        "--cron",
        "0 9 * * MON-FRI",
        "--timezone",
        "Europe/Berlin",
        "--input",
        r#"{"n": 3}"#,
    ]);
    assert!(ok, "{err}");
    let id = out.split_whitespace().next().unwrap().to_string();
    assert!(out.contains("next 20"), "{out}");
    let (ok, out, _) = cli(&["pause", &id]);
    assert!(ok && out.contains("paused"), "{out}");
    let (ok, out, _) = cli(&["list"]);
    assert!(ok && out.contains(&id) && out.contains("weekly"), "{out}");
    let (ok, out, _) = cli(&["resume", &id]);
    assert!(ok && out.contains("next 20"), "{out}");
    let (ok, _, err) = cli(&["create", "--workflow", "tick", "--cron", "0 9 * *"]);
    assert!(!ok);
    assert!(err.contains("422") && err.contains("cron"), "{err}");
    let (ok, out, _) = cli(&["delete", &id]);
    assert!(ok && out.contains("deleted"), "{out}");
    server.kill();
}
