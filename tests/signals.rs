//! `wait_for` steps and signals over real HTTP: a signal sent before the
//! wait, during it and after its timeout; keyed deliveries that resume only
//! the runs waiting with their key; `Idempotency-Key`; one delivery per
//! step; `match`; a signed webhook mapped to a signal; a restart while
//! waiting; and the validation of the step.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::server::{ADMIN_TOKEN, Server, json_of, write_config};
use serde_json::{Value, json};
use steward::hooks::sign;

const HOOK_SECRET: &str = "signal-hook-secret-0001";

/// The workflows every test here uses, in `dir/workflows`.
fn workflows(dir: &Path) -> PathBuf {
    let workflows = dir.join("workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    let files = [
        // The answer is the step's output; the next step reads it.
        (
            "reply",
            "name: reply\nsteps:\n  - id: answer\n    wait_for: { signal: answered }\n  - id: echo\n    uses: transform\n    with: { said: \"${{ steps.answer.output.text }}\" }\noutput: ${{ steps.echo.output }}\n",
        ),
        // Gets to its wait a second after it starts.
        (
            "later",
            "name: later\nsteps:\n  - id: first\n    wait: 1s\n  - id: answer\n    wait_for: { signal: answered }\noutput: ${{ steps.answer.output }}\n",
        ),
        (
            "strict",
            "name: strict\nsteps:\n  - id: answer\n    wait_for: { signal: answered, timeout: 1s }\n",
        ),
        (
            "lenient",
            "name: lenient\nsteps:\n  - id: answer\n    wait_for: { signal: answered, timeout: 1s, on_timeout: continue }\n  - id: after\n    uses: transform\n    with: { got: \"${{ steps.answer.output }}\" }\noutput: ${{ steps.answer.output }}\n",
        ),
        (
            "ticket",
            "name: ticket\ninput:\n  type: object\n  required: [number]\nsteps:\n  - id: update\n    wait_for:\n      signal: ticket-updated\n      key: ${{ input.number }}\noutput: ${{ steps.update.output }}\n",
        ),
        (
            "twice",
            "name: twice\nsteps:\n  - id: one\n    wait_for: { signal: answered }\n  - id: two\n    wait_for: { signal: answered }\noutput: { one: \"${{ steps.one.output }}\", two: \"${{ steps.two.output }}\" }\n",
        ),
        (
            "picky",
            "name: picky\nsteps:\n  - id: closed\n    wait_for:\n      signal: state\n      match: ${{ has(signal.state) && signal.state == 'closed' }}\noutput: ${{ steps.closed.output }}\n",
        ),
        // The SLA clock stops while the requester is waited on.
        (
            "paused",
            "name: paused\nsla:\n  priority: P3\n  resolution: { P3: 1h }\n  pause_while: answer\nsteps:\n  - id: answer\n    wait_for: { signal: answered }\n",
        ),
    ];
    for (name, yaml) in files {
        std::fs::write(workflows.join(format!("{name}.yaml")), yaml).unwrap();
    }
    workflows
}

fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let workflows = workflows(dir.path());
    let config = write_config(
        dir.path(),
        Some(&workflows),
        &format!(
            "\n[hooks.snow]\nsignal = \"ticket-updated\"\nkey = \"${{{{ body.number }}}}\"\nsecret = {{ value = \"{HOOK_SECRET}\" }}\n"
        ),
    );
    (dir, config)
}

fn finish(server: &Server, id: &str) -> Value {
    server
        .wait_until_finished(&[id.to_string()], Duration::from_secs(20))
        .remove(0)
}

/// Waits until step `step` of run `id` waits for a signal.
fn until_waiting(server: &Server, id: &str, step: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let run = server.run(id);
        if run["steps"][step]["state"] == "awaiting_signal" && run["status"] == "waiting" {
            return run;
        }
        assert!(Instant::now() < deadline, "never waited: {run:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `body` with `Idempotency-Key: key` (admin token).
fn send_keyed(server: &Server, path: &str, body: &Value, key: &str) -> (u16, Value) {
    let response = ureq::post(&server.url(path))
        .set("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .set("content-type", "application/json")
        .set("Idempotency-Key", key)
        .send_string(&body.to_string());
    match response {
        Ok(r) => (r.status(), json_of(r)),
        Err(ureq::Error::Status(status, r)) => (status, json_of(r)),
        Err(e) => panic!("{path}: {e}"),
    }
}

fn signals_of(server: &Server, id: &str) -> Vec<Value> {
    let (status, body) = server.send_json("GET", &format!("/v1/runs/{id}/signals"), &json!({}));
    assert_eq!(status, 200, "{body:#}");
    body["items"].as_array().unwrap().clone()
}

#[test]
fn a_signal_sent_during_the_wait_resumes_the_run_and_later_steps_see_it() {
    let (_dir, config) = setup();
    let server = Server::start(&config);
    let id = server.start_run("reply", json!({}));
    let waiting = until_waiting(&server, &id, "answer");
    assert_eq!(
        waiting["steps"]["answer"]["signal"], "answered",
        "{waiting:#}"
    );

    let (status, delivery) = server.send_json(
        "POST",
        &format!("/v1/runs/{id}/signals/answered"),
        &json!({"text": "yes"}),
    );
    assert_eq!(status, 202, "{delivery:#}");
    assert_eq!(delivery["run"], id.as_str());
    assert_eq!(delivery["name"], "answered");
    assert_eq!(delivery["payload"], json!({"text": "yes"}));
    let done = finish(&server, &id);
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["steps"]["answer"]["output"], json!({"text": "yes"}));
    assert_eq!(done["output"], json!({"said": "yes"}));
    let received = server
        .events(&id)
        .into_iter()
        .find(|e| e["type"] == "signal_received")
        .expect("a signal_received event");
    assert_eq!(received["delivery"], delivery["id"]);

    let listed = signals_of(&server, &id);
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["consumed"], true);
    assert_eq!(listed[0]["step"], "answer");

    // Unknown runs and names that are not signal names.
    let (status, _) = server.send_json(
        "POST",
        "/v1/runs/00000000-0000-0000-0000-000000000000/signals/answered",
        &json!({}),
    );
    assert_eq!(status, 404);
    let (status, problem) = server.send_json(
        "POST",
        &format!("/v1/runs/{id}/signals/no%20way"),
        &json!({}),
    );
    assert_eq!(status, 400, "{problem:#}");
    server.kill();
}

#[test]
fn a_signal_sent_before_the_run_reaches_the_wait_is_taken_when_it_does() {
    let (_dir, config) = setup();
    let server = Server::start(&config);
    let id = server.start_run("later", json!({}));
    let (status, _) = server.send_json(
        "POST",
        &format!("/v1/runs/{id}/signals/answered"),
        &json!({"early": true}),
    );
    assert_eq!(status, 202);
    assert_eq!(signals_of(&server, &id)[0]["consumed"], false);
    let done = finish(&server, &id);
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["output"], json!({"early": true}));
    assert_eq!(signals_of(&server, &id)[0]["step"], "answer");
    server.kill();
}

#[test]
fn a_timeout_fails_the_step_or_continues_with_null_and_a_finished_run_refuses_signals() {
    let (_dir, config) = setup();
    let server = Server::start(&config);
    let strict = server.start_run("strict", json!({}));
    let lenient = server.start_run("lenient", json!({}));

    let failed = finish(&server, &strict);
    assert_eq!(failed["status"], "failed", "{failed:#}");
    let error = failed["error"]["message"].as_str().unwrap();
    assert!(
        error.contains("no answered signal arrived within 1s"),
        "{error}"
    );

    let continued = finish(&server, &lenient);
    assert_eq!(continued["status"], "succeeded", "{continued:#}");
    assert_eq!(continued["output"], Value::Null);
    assert_eq!(continued["steps"]["after"]["output"], json!({"got": null}));

    let (status, problem) = server.send_json(
        "POST",
        &format!("/v1/runs/{strict}/signals/answered"),
        &json!({}),
    );
    assert_eq!(status, 409, "{problem:#}");
    assert!(
        problem["detail"].as_str().unwrap().contains("failed"),
        "{problem:#}"
    );
    server.kill();
}

#[test]
fn a_keyed_signal_resumes_only_the_runs_waiting_with_its_key_created_before_it() {
    let (_dir, config) = setup();
    let server = Server::start(&config);
    let a = server.start_run("ticket", json!({"number": "INC-A"}));
    let b = server.start_run("ticket", json!({"number": "INC-B"}));
    until_waiting(&server, &a, "update");
    until_waiting(&server, &b, "update");

    let (status, delivery) = server.send_json(
        "POST",
        "/v1/signals/ticket-updated",
        &json!({"key": "INC-A", "payload": {"state": "resolved"}}),
    );
    assert_eq!(status, 202, "{delivery:#}");
    assert_eq!(delivery["key"], "INC-A");
    assert_eq!(delivery["run"], Value::Null);
    let done = finish(&server, &a);
    assert_eq!(done["output"], json!({"state": "resolved"}), "{done:#}");
    // B waits on; a run for ticket A created after the delivery does not
    // take the old signal.
    let late = server.start_run("ticket", json!({"number": "INC-A"}));
    until_waiting(&server, &late, "update");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(server.run(&b)["status"], "waiting");
    assert_eq!(server.run(&late)["status"], "waiting");

    // A number as the key reads as its text.
    let c = server.start_run("ticket", json!({"number": 42}));
    until_waiting(&server, &c, "update");
    let (status, _) = server.send_json(
        "POST",
        "/v1/signals/ticket-updated",
        &json!({"key": 42, "payload": "forty-two"}),
    );
    assert_eq!(status, 202);
    assert_eq!(finish(&server, &c)["output"], "forty-two");
    assert_eq!(server.run(&b)["status"], "waiting");

    let (status, problem) = server.send_json(
        "POST",
        "/v1/signals/ticket-updated",
        &json!({"key": null, "payload": {}}),
    );
    assert_eq!(status, 422, "{problem:#}");
    server.kill();
}

#[test]
fn the_same_idempotency_key_records_one_delivery() {
    let (_dir, config) = setup();
    let server = Server::start(&config);
    let id = server.start_run("twice", json!({}));
    let path = format!("/v1/runs/{id}/signals/answered");
    let (first_status, first) = send_keyed(&server, &path, &json!("first"), "retry-1");
    let (again_status, again) = send_keyed(&server, &path, &json!("first"), "retry-1");
    assert_eq!((first_status, again_status), (202, 200), "{again:#}");
    assert_eq!(first["id"], again["id"]);
    until_waiting(&server, &id, "two");
    assert_eq!(signals_of(&server, &id).len(), 1);

    // Keyed deliveries too.
    let t = server.start_run("ticket", json!({"number": "INC-I"}));
    let body = json!({"key": "INC-I", "payload": 1});
    let (s1, d1) = send_keyed(&server, "/v1/signals/ticket-updated", &body, "k");
    let (s2, d2) = send_keyed(&server, "/v1/signals/ticket-updated", &body, "k");
    assert_eq!((s1, s2), (202, 200));
    assert_eq!(d1["id"], d2["id"]);
    assert_eq!(finish(&server, &t)["output"], 1);
    server.kill();
}

#[test]
fn each_delivery_is_taken_once_so_two_waits_need_two_signals() {
    let (_dir, config) = setup();
    let server = Server::start(&config);
    let id = server.start_run("twice", json!({}));
    let path = format!("/v1/runs/{id}/signals/answered");
    assert_eq!(server.send_json("POST", &path, &json!("a")).0, 202);
    until_waiting(&server, &id, "two");
    assert_eq!(server.run(&id)["steps"]["one"]["output"], "a");
    assert_eq!(server.send_json("POST", &path, &json!("b")).0, 202);
    let done = finish(&server, &id);
    assert_eq!(done["output"], json!({"one": "a", "two": "b"}), "{done:#}");
    let steps: Vec<Value> = signals_of(&server, &id)
        .iter()
        .map(|s| s["step"].clone())
        .collect();
    assert_eq!(steps, [json!("one"), json!("two")]);
    server.kill();
}

#[test]
fn a_delivery_match_refuses_is_left_for_others() {
    let (_dir, config) = setup();
    let server = Server::start(&config);
    let id = server.start_run("picky", json!({}));
    until_waiting(&server, &id, "closed");
    let path = format!("/v1/runs/{id}/signals/state");
    assert_eq!(
        server.send_json("POST", &path, &json!({"state": "open"})).0,
        202
    );
    assert_eq!(server.send_json("POST", &path, &json!({"other": 1})).0, 202);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(server.run(&id)["status"], "waiting");
    assert_eq!(
        server
            .send_json("POST", &path, &json!({"state": "closed"}))
            .0,
        202
    );
    let done = finish(&server, &id);
    assert_eq!(done["output"], json!({"state": "closed"}), "{done:#}");
    let consumed: Vec<bool> = signals_of(&server, &id)
        .iter()
        .map(|s| s["consumed"].as_bool().unwrap())
        .collect();
    assert_eq!(consumed, [false, false, true]);
    server.kill();
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Posts a body signed with the hook's secret (no token).
fn deliver_hook(server: &Server, body: &str) -> (u16, Value) {
    post_signed(server, body, &sign(HOOK_SECRET, now(), body.as_bytes()))
}

/// Posts `body` to the signal hook with `signature`: status and body.
fn post_signed(server: &Server, body: &str, signature: &str) -> (u16, Value) {
    let response = ureq::post(&server.url("/v1/hooks/snow"))
        .set("content-type", "application/json")
        .set("Steward-Signature", signature)
        .send_string(body);
    match response {
        Ok(r) => (r.status(), json_of(r)),
        Err(ureq::Error::Status(status, r)) => (status, json_of(r)),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_signed_webhook_mapped_to_a_signal_resumes_the_run_waiting_on_its_ticket() {
    let (_dir, config) = setup();
    let server = Server::start(&config);
    let mine = server.start_run("ticket", json!({"number": "INC0010001"}));
    let other = server.start_run("ticket", json!({"number": "INC0010002"}));
    until_waiting(&server, &mine, "update");

    let body = r#"{"number": "INC0010001", "state": "6"}"#;
    let signature = sign(HOOK_SECRET, now(), body.as_bytes());
    let (status, delivery) = post_signed(&server, body, &signature);
    assert_eq!(status, 202, "{delivery:#}");
    assert_eq!(delivery["key"], "INC0010001", "{delivery:#}");
    let done = finish(&server, &mine);
    assert_eq!(
        done["output"],
        json!({"number": "INC0010001", "state": "6"}),
        "{done:#}"
    );
    assert_eq!(server.run(&other)["status"], "waiting");

    // The same signed delivery again is a replay.
    let (status, problem) = post_signed(&server, body, &signature);
    assert_eq!(status, 409, "{problem:#}");
    assert_eq!(problem["delivery_id"], delivery["id"]);
    // A body the key cannot be read from.
    let (status, problem) = deliver_hook(&server, r#"{"state": "6"}"#);
    assert_eq!(status, 422, "{problem:#}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("[hooks.snow] key"),
        "{problem:#}"
    );
    server.kill();
}

#[test]
fn a_run_waiting_for_a_signal_across_a_restart_still_takes_it() {
    let (_dir, config) = setup();
    let server = Server::start(&config);
    let id = server.start_run("reply", json!({}));
    until_waiting(&server, &id, "answer");
    server.kill();

    let server = Server::start(&config);
    let (status, _) = server.send_json(
        "POST",
        &format!("/v1/runs/{id}/signals/answered"),
        &json!({"text": "after the restart"}),
    );
    assert_eq!(status, 202);
    let done = finish(&server, &id);
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["output"], json!({"said": "after the restart"}));
    server.kill();
}

#[test]
fn the_sla_clock_stops_while_a_wait_for_step_waits() {
    let (_dir, config) = setup();
    let server = Server::start(&config);
    let id = server.start_run("paused", json!({}));
    let waiting = until_waiting(&server, &id, "answer");
    assert!(waiting["steps"]["answer"]["started_at"].is_string());
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(server.run(&id)["sla"]["paused"], true);
    let (status, _) = server.send_json(
        "POST",
        &format!("/v1/runs/{id}/signals/answered"),
        &json!({}),
    );
    assert_eq!(status, 202);
    let done = finish(&server, &id);
    assert_eq!(done["sla"]["paused"], false, "{done:#}");
    let paused = done["sla"]["paused_ms"].as_i64().unwrap();
    assert!(paused >= 1000, "paused {paused} ms: {done:#}");
    server.kill();
}

/// `steward validate` on a broken `wait_for`: each problem with
/// FILE:LINE:COL and its field.
#[test]
fn broken_wait_for_steps_are_reported_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[&str])] = &[
        (
            "name: w\nsteps:\n  - id: a\n    wait_for: { signal: \"not a name\" }\n",
            &["FILE:4:25: steps.a.wait_for.signal: \"not a name\" is not a signal name"],
        ),
        (
            "name: w\nsteps:\n  - id: a\n    wait_for: { signal: s, within: 3d }\n",
            &[
                "FILE:4:36: steps.a.wait_for.within: unknown field; expected one of signal, key, match, timeout, on_timeout",
            ],
        ),
        (
            "name: w\nsteps:\n  - id: a\n    wait_for: { signal: s, timeout: 1h, on_timeout: retry }\n",
            &["FILE:4:53: steps.a.wait_for.on_timeout: expected fail"],
        ),
        (
            "name: w\nsteps:\n  - id: a\n    wait_for:\n      signal: s\n      key: ${{ input.number + }}\n",
            &["FILE:6:12: steps.a.wait_for.key: invalid expression"],
        ),
        (
            "name: w\nsteps:\n  - id: a\n    wait_for:\n      signal: s\n      match: ${{ payload.ok }}\n",
            &[
                "FILE:3:5: steps.a.wait_for.match: `payload.ok`: unknown variable payload; expressions can use input, steps, run, env, signal",
            ],
        ),
        (
            "name: w\nsla:\n  priority: P3\n  resolution: { P3: 1h }\n  pause_while: answr\nsteps:\n  - id: answer\n    wait_for: { signal: s }\n",
            &["FILE:5:16: sla.pause_while: unknown step answr"],
        ),
    ];
    let mut failures = Vec::new();
    for (i, (yaml, expect)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("case{i}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let out = Command::new(common::steward_bin())
            .arg("validate")
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(1) {
            failures.push(format!("case {i}: exit {:?}: {stderr}", out.status.code()));
            continue;
        }
        for expected in *expect {
            let expected = expected.replace("FILE", &file.display().to_string());
            if !stderr.contains(&expected) {
                failures.push(format!("case {i}: expected {expected:?} in:\n{stderr}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // A valid one, with every field.
    let file = dir.path().join("ok.yaml");
    std::fs::write(
        &file,
        "name: w\nsteps:\n  - id: a\n    wait_for:\n      signal: ticket-updated\n      key: ${{ input.number }}\n      match: ${{ signal.state == '6' }}\n      timeout: 3d\n      on_timeout: continue\n",
    )
    .unwrap();
    let out = Command::new(common::steward_bin())
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A hook mapped to a signal that is set up wrong stops the start, naming
/// the hook.
#[test]
fn a_badly_configured_signal_hook_fails_the_start_naming_the_hook() {
    for (settings, expect) in [
        ("signal = \"ticket-updated\"\n", "a signal hook needs a key"),
        (
            "signal = \"ticket updated\"\nkey = \"${{ body.number }}\"\n",
            "is not a signal name",
        ),
        (
            "signal = \"t\"\nkey = \"${{ input.number }}\"\n",
            "unknown variable input",
        ),
        (
            "signal = \"t\"\nworkflow = \"w\"\nkey = \"${{ body.n }}\"\n",
            "not both",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(
            dir.path(),
            None,
            &format!("\n[hooks.desk]\n{settings}secret = {{ value = \"{HOOK_SECRET}\" }}\n"),
        );
        let out = Command::new(common::steward_bin())
            .args(["serve", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{settings}: started");
        assert!(stderr.contains("[hooks.desk]"), "{stderr}");
        assert!(stderr.contains(expect), "{expect}: {stderr}");
    }
}

/// The store's side on SQLite and PostgreSQL: which deliveries a wait may
/// take, one take per delivery and run and per step, idempotent per step,
/// keyed deliveries only for runs created before them, and refusals.
#[tokio::test]
async fn the_store_hands_each_delivery_to_a_run_once() {
    use steward::store::{Delivered, NewRun, NewSignal, OpenSignalWait, Store};
    crate::store::on_every_backend("signals", |store: Store| async move {
        let input = json!({});
        let new_run = |id: &'static str| NewRun {
            id,
            workflow: "demo",
            version: 1,
            input: &input,
            idempotency_key: None,
            started_by: None,
            rerun_of: None,
            parent: None,
            lease: None,
            placement: Default::default(),
        };
        store.create_run(new_run("r1")).await.unwrap();
        let deliver = |id: &'static str,
                       run: Option<&'static str>,
                       key: Option<&'static str>,
                       idem: Option<&'static str>| {
            let store = store.clone();
            async move {
                let payload = json!({"id": id});
                store
                    .deliver_signal(&NewSignal {
                        id,
                        name: "answered",
                        run_id: run,
                        key,
                        payload: &payload,
                        idempotency_key: idem,
                        actor: "admin",
                    })
                    .await
                    .unwrap()
            }
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(matches!(
            deliver("d1", Some("r1"), None, Some("i1")).await,
            Delivered::Recorded(_)
        ));
        match deliver("d1-again", Some("r1"), None, Some("i1")).await {
            Delivered::Repeated(first) => assert_eq!(first.id, "d1"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            deliver("k1", None, Some("A"), None).await,
            Delivered::Recorded(_)
        ));
        assert_eq!(
            deliver("lost", Some("nope"), None, None).await,
            Delivered::RunNotFound
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        store.create_run(new_run("r2")).await.unwrap();

        let wait = |run: &str, step: &str| OpenSignalWait {
            run_id: run.into(),
            step: step.into(),
            signal: "answered".into(),
            key: Some("A".into()),
            opened_at: Utc::now(),
        };
        store.open_signal_wait(&wait("r1", "one")).await.unwrap();
        store.open_signal_wait(&wait("r1", "one")).await.unwrap();
        let ids = |list: Vec<steward::store::SignalDelivery>| -> Vec<String> {
            list.into_iter().map(|d| d.id).collect()
        };
        let first = store.signal_candidates(&wait("r1", "one")).await.unwrap();
        assert_eq!(ids(first), ["d1", "k1"]);
        // A run created after the keyed delivery never sees it.
        assert!(
            store
                .signal_candidates(&wait("r2", "one"))
                .await
                .unwrap()
                .is_empty()
        );

        assert!(store.take_signal(&wait("r1", "one"), "d1").await.unwrap());
        assert!(
            store.take_signal(&wait("r1", "one"), "d1").await.unwrap(),
            "idempotent per step"
        );
        assert!(
            !store.take_signal(&wait("r1", "one"), "k1").await.unwrap(),
            "one per step"
        );
        assert!(
            !store.take_signal(&wait("r1", "two"), "d1").await.unwrap(),
            "once per run"
        );
        let again = store.signal_candidates(&wait("r1", "one")).await.unwrap();
        assert_eq!(again[0].taken_by.as_deref(), Some("one"));
        assert_eq!(
            ids(store.signal_candidates(&wait("r1", "two")).await.unwrap()),
            ["k1"]
        );
        assert!(store.take_signal(&wait("r1", "two"), "k1").await.unwrap());

        let listed = store.run_signals("r1").await.unwrap();
        let steps: Vec<Option<String>> = listed.iter().map(|s| s.step.clone()).collect();
        assert_eq!(steps, [Some("one".to_string()), Some("two".to_string())]);

        // A finished run takes nothing more.
        let mut state = steward::run::RunState::new("r2", "demo", 1, Utc::now());
        let done = steward::run::Recorded::at(
            2,
            Utc::now(),
            steward::run::Event::RunSucceeded {
                output: json!(null),
            },
        );
        state.apply(&done);
        store.append(&state, &[done], None, None).await.unwrap();
        assert_eq!(
            deliver("late", Some("r2"), None, None).await,
            Delivered::RunFinished("succeeded".into())
        );
    })
    .await;
}
