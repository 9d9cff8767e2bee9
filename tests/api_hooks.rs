//! Signed webhooks over real HTTP: good, wrong, stale, replayed and
//! rotated-secret deliveries.

mod common;

use std::time::Duration;

use common::server::{Server, json_of};
use serde_json::Value;
use steward::hooks::sign;

const SECRET: &str = "current-hook-secret-0001";
const OLD_SECRET: &str = "previous-hook-secret-0001";

fn server() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("steward.toml");
    std::fs::write(
        &config,
        format!(
            "database = \"sqlite://{}/steward.db\"\ndata_dir = {:?}\nworkflows = [{:?}]\n\n\
             [hooks.intake]\nworkflow = \"ticket-triage\"\nsecret = {{ value = \"{SECRET}\" }}\n\
             previous_secret = {{ env = \"TEST_OLD_HOOK_SECRET\" }}\n\n\
             [hooks.orphan]\nworkflow = \"not-deployed\"\nsecret = {{ value = \"{SECRET}\" }}\n",
            dir.path().display(),
            dir.path().join("data"),
            common::root().join("examples/workflows")
        ),
    )
    .unwrap();
    let server = Server::start_with_env(&config, &[("TEST_OLD_HOOK_SECRET", OLD_SECRET)]);
    (dir, server)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Posts `body` to a hook with `signature` (no token), returns status and body.
fn deliver(server: &Server, hook: &str, body: &str, signature: Option<&str>) -> (u16, Value) {
    let mut request = ureq::post(&server.url(&format!("/v1/hooks/{hook}")))
        .set("content-type", "application/json");
    if let Some(signature) = signature {
        request = request.set("Steward-Signature", signature);
    }
    match request.send_string(body) {
        Ok(r) => (r.status(), json_of(r)),
        Err(ureq::Error::Status(status, r)) => {
            assert_eq!(r.content_type(), "application/problem+json");
            (status, json_of(r))
        }
        Err(e) => panic!("{e}"),
    }
}

const TICKET: &str = r#"{"number": "INC0100", "impact": 1, "urgency": 1}"#;

#[test]
fn a_signed_delivery_starts_a_run_with_its_body_as_input() {
    let (_dir, server) = server();
    let (status, body) = deliver(
        &server,
        "intake",
        TICKET,
        Some(&sign(SECRET, now(), TICKET.as_bytes())),
    );
    assert_eq!(status, 201, "{body:#}");
    let id = body["id"].as_str().unwrap().to_string();
    let runs = server.wait_until_finished(std::slice::from_ref(&id), Duration::from_secs(20));
    assert_eq!(runs[0]["status"], "succeeded", "{:#}", runs[0]);
    assert_eq!(runs[0]["workflow"], "ticket-triage");
    assert_eq!(
        runs[0]["input"],
        serde_json::from_str::<Value>(TICKET).unwrap()
    );
    assert_eq!(runs[0]["output"]["priority"], "P1");
    server.kill();
}

#[test]
fn wrong_stale_and_replayed_deliveries_are_refused() {
    let (_dir, server) = server();
    let t = now();
    let problem = |body: &Value| {
        body["type"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_string()
    };

    let (status, body) = deliver(&server, "intake", TICKET, None);
    assert_eq!(
        (status, problem(&body).as_str()),
        (401, "invalid-signature"),
        "{body:#}"
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("Steward-Signature")
    );

    let wrong = sign("not-the-secret-at-all-01", t, TICKET.as_bytes());
    let (status, body) = deliver(&server, "intake", TICKET, Some(&wrong));
    assert_eq!(
        (status, problem(&body).as_str()),
        (401, "invalid-signature"),
        "{body:#}"
    );

    let tampered = sign(SECRET, t, br#"{"number": "INC0999"}"#);
    let (status, _) = deliver(&server, "intake", TICKET, Some(&tampered));
    assert_eq!(status, 401);

    // Past the 300 s tolerance, from a fresh clock reading, with room for
    // a slow machine between signing and the server's check.
    for skew in [-400, 400] {
        let stale = sign(SECRET, now() + skew, TICKET.as_bytes());
        let (status, body) = deliver(&server, "intake", TICKET, Some(&stale));
        assert_eq!(
            (status, problem(&body).as_str()),
            (401, "stale-signature"),
            "{body:#}"
        );
    }

    let good = sign(SECRET, t, TICKET.as_bytes());
    let (status, first) = deliver(&server, "intake", TICKET, Some(&good));
    assert_eq!(status, 201, "{first:#}");
    let (status, again) = deliver(&server, "intake", TICKET, Some(&good));
    assert_eq!(
        (status, problem(&again).as_str()),
        (409, "replayed-delivery"),
        "{again:#}"
    );
    assert_eq!(again["run_id"], first["id"]);
    // The same delivery re-signed with the other secret is still a replay.
    let resigned = sign(OLD_SECRET, t, TICKET.as_bytes());
    let (status, _) = deliver(&server, "intake", TICKET, Some(&resigned));
    assert_eq!(status, 409);

    let listed = json_of(
        server
            .request("GET", "/v1/runs?workflow=ticket-triage")
            .call()
            .unwrap(),
    );
    assert_eq!(
        listed["items"].as_array().unwrap().len(),
        1,
        "one run for one delivery"
    );
    server.kill();
}

#[test]
fn the_previous_secret_is_accepted_during_a_rotation() {
    let (_dir, server) = server();
    let first = now();
    let (status, body) = deliver(
        &server,
        "intake",
        TICKET,
        Some(&sign(OLD_SECRET, first, TICKET.as_bytes())),
    );
    assert_eq!(status, 201, "{body:#}");
    // A header carrying signatures by both secrets (a sender mid-rotation),
    // for another delivery (another `t`: the same `t` and body would be a
    // replay of the first).
    let t = first - 1;
    let both = format!(
        "{},{}",
        sign(SECRET, t, TICKET.as_bytes()),
        sign(OLD_SECRET, t, TICKET.as_bytes())
            .split(',')
            .nth(1)
            .unwrap()
    );
    let (status, body) = deliver(&server, "intake", TICKET, Some(&both));
    assert_eq!(status, 201, "{body:#}");
    server.kill();
}

#[test]
fn hooks_answer_unknown_names_bad_bodies_and_undeployed_workflows() {
    let (_dir, server) = server();
    let (status, _) = deliver(
        &server,
        "nope",
        TICKET,
        Some(&sign(SECRET, now(), TICKET.as_bytes())),
    );
    assert_eq!(status, 404);

    let not_json = "number=INC1";
    let (status, body) = deliver(
        &server,
        "intake",
        not_json,
        Some(&sign(SECRET, now(), not_json.as_bytes())),
    );
    assert_eq!(status, 400, "{body:#}");

    let (status, body) = deliver(
        &server,
        "intake",
        r#"{"number": 7}"#,
        Some(&sign(SECRET, now(), br#"{"number": 7}"#)),
    );
    assert_eq!(status, 422, "{body:#}");
    assert_eq!(body["type"], "https://steward.dev/problems/invalid-input");

    let (status, body) = deliver(
        &server,
        "orphan",
        TICKET,
        Some(&sign(SECRET, now(), TICKET.as_bytes())),
    );
    assert_eq!(status, 404, "{body:#}");
    assert!(
        body["detail"].as_str().unwrap().contains("not-deployed"),
        "{body:#}"
    );
    server.kill();
}
