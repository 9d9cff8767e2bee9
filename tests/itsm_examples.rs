//! Every example in `examples/` end to end against the `itsm-sim` stand-in:
//! the real binary serving `examples/steward.toml` (addresses and paths
//! moved into a temp dir), the simulator served from its library in a
//! thread of the test, speaking the ServiceNow Table API and chat webhooks
//! over real sockets, approvals given through the API, SLA escalations
//! observed at the simulator.

use crate::common;

use std::future::IntoFuture as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::server::{ADMIN_TOKEN, Server, free_port, json_of};
use serde_json::{Value, json};

/// `itsm-sim` as `cargo run -p itsm-sim` starts it (demo data, basic auth
/// steward:steward), on a free port in its own thread and tokio runtime;
/// stopped on drop.
struct Sim {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sim {
    fn start() -> Sim {
        let router = itsm_sim::router(itsm_sim::Options {
            credentials: itsm_sim::Credentials {
                basic: Some(("steward".into(), "steward".into())),
                token: None,
            },
            demo_data: true,
            seed: None,
        })
        .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            // Stopping drops the runtime and with it every open connection,
            // as killing the simulator's process would.
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                tokio::select! {
                    served = axum::serve(listener, router).into_future() => served.unwrap(),
                    _ = stopped => {}
                }
            });
        });
        let sim = Sim {
            port,
            stop: Some(stop),
            thread: Some(thread),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while ureq::get(&sim.url("/chat")).call().is_err() {
            assert!(Instant::now() < deadline, "itsm-sim did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        sim
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A Table API or simulator GET, with the simulator's credentials.
    fn get(&self, path: &str) -> Value {
        json_of(
            ureq::get(&self.url(path))
                .set("Authorization", "Basic c3Rld2FyZDpzdGV3YXJk")
                .call()
                .unwrap_or_else(|e| panic!("GET {path}: {e}")),
        )
    }

    fn post(&self, path: &str, body: Value) -> Value {
        json_of(
            ureq::post(&self.url(path))
                .set("Authorization", "Basic c3Rld2FyZDpzdGV3YXJk")
                .set("content-type", "application/json")
                .send_string(&body.to_string())
                .unwrap_or_else(|e| panic!("POST {path}: {e}")),
        )
    }

    fn chat(&self, channel: &str) -> Vec<Value> {
        self.get(&format!("/chat/{channel}"))["messages"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Waits until `channel` holds at least `n` messages.
    fn wait_for_chat(&self, channel: &str, n: usize, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let messages = self.chat(channel);
            if messages.len() >= n {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "{channel} has {} messages, expected {n}: {messages:#?}",
                messages.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The one record of `table` matching `query`.
    fn record(&self, table: &str, query: &str) -> Value {
        let found = self.get(&format!(
            "/api/now/table/{table}?sysparm_query={}",
            query.replace('^', "%5E").replace('=', "%3D")
        ))["result"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(found.len(), 1, "{table} {query}: {found:#?}");
        found[0].clone()
    }

    fn journal(&self, sys_id: &str) -> Vec<String> {
        self.get(&format!(
            "/api/now/table/sys_journal_field?sysparm_query=element_id%3D{sys_id}"
        ))["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["value"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Steward configured by `examples/steward.toml`, pointed at `sim`, with
/// its database in `dir` and the examples loaded from `workflows`.
struct Examples {
    server: Server,
    _dir: tempfile::TempDir,
}

const HOOK_SECRET: &str = "whsec-examples-test";

fn start(sim: &Sim, adjust: impl Fn(&str, String) -> String) -> Examples {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    for entry in std::fs::read_dir(common::root().join("examples/workflows")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(workflows.join(&name), adjust(&name, text)).unwrap();
    }
    let port = free_port();
    let config = config_for(dir.path(), &workflows, sim.port, port);
    // The README's way to give the examples their API token.
    let created = Command::new(common::steward_bin())
        .args([
            "token",
            "create",
            "--scopes",
            "runs:read,runs:write",
            "--name",
            "examples",
            "--config",
        ])
        .arg(&config)
        .env("STEWARD_API_TOKEN", "unset-yet")
        .env("SNOW_HOOK_SECRET", HOOK_SECRET)
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let api_token = String::from_utf8(created.stdout)
        .unwrap()
        .trim()
        .to_string();
    let server = Server::start_on(
        &config,
        port,
        &[
            ("STEWARD_API_TOKEN", &api_token),
            ("SNOW_HOOK_SECRET", HOOK_SECRET),
        ],
    );
    Examples { server, _dir: dir }
}

/// `examples/steward.toml` with the simulator's and the server's
/// addresses, and a database in `dir`.
fn config_for(dir: &Path, workflows: &Path, sim_port: u16, port: u16) -> PathBuf {
    let text = std::fs::read_to_string(common::root().join("examples/steward.toml")).unwrap();
    let text = text
        .replace("127.0.0.1:9100", &format!("127.0.0.1:{sim_port}"))
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        .replace(
            "database = \"sqlite://steward-data/steward.db\"",
            &format!(
                "database = \"sqlite://{}/steward.db\"\ndata_dir = {:?}",
                dir.display(),
                dir.join("data")
            ),
        )
        .replace(
            "workflows = [\"examples/workflows\"]",
            &format!("workflows = [{workflows:?}]"),
        );
    let config = dir.join("steward.toml");
    std::fs::write(&config, text).unwrap();
    config
}

fn unchanged(_: &str, text: String) -> String {
    text
}

/// The pending approval of `run` that `approver` may decide, once open.
fn approve(server: &Server, run: &str, approver: &str) {
    let approval = server.approval_of(run, approver);
    let (status, body) = server.decide(
        approval["id"].as_str().unwrap(),
        approver,
        "approve",
        Some("ok"),
    );
    assert_eq!(status, 201, "{body:#}");
}

fn finished(server: &Server, run: &str) -> Value {
    let run = server
        .wait_until_finished(&[run.to_string()], Duration::from_secs(30))
        .remove(0);
    assert_eq!(run["status"], "succeeded", "{run:#}");
    run
}

#[test]
fn new_hire_laptop_from_stock_and_by_vendor_order() {
    let sim = Sim::start();
    let examples = start(&sim, unchanged);
    let server = &examples.server;

    // In stock and under the threshold: no approval, no order.
    let cheap = server.start_run(
        "new-hire-laptop",
        json!({"employee": "alex", "manager": "max", "model": "ThinkPad T14", "cost": 1450}),
    );
    let cheap = finished(server, &cheap);
    let number = cheap["output"]["request"].as_str().unwrap().to_string();
    assert!(number.starts_with("RITM"), "{cheap:#}");
    assert_eq!(cheap["output"]["from_stock"], true);
    let item = sim.record("sc_req_item", &format!("number={number}"));
    assert_eq!(item["state"], "3", "closed complete: {item:#}");
    assert_eq!(item["active"], "false");
    assert_eq!(item["assigned_to"], cheap["output"]["technician"]);
    assert!(
        sim.journal(item["sys_id"].as_str().unwrap())
            .iter()
            .any(|n| n.starts_with("From stock: P1000481")),
        "the work note names the asset"
    );
    assert!(
        sim.get("/api/sim/orders")["orders"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let told = sim.wait_for_chat("service-desk", 1, Duration::from_secs(5));
    assert!(
        told[0]["text"].as_str().unwrap().contains(&number),
        "{told:#?}"
    );

    // Out of stock and above 2000: the manager approves, the vendor fails
    // once (503) and then gets one order carrying the step's idempotency key.
    sim.post(
        "/api/sim/faults",
        json!({"path_prefix": "/api/sim/orders", "status": 503, "times": 1}),
    );
    let dear = server.start_run(
        "new-hire-laptop",
        json!({"employee": "bo", "manager": "max", "model": "MacBook Pro 14", "cost": 2399}),
    );
    approve(server, &dear, "max");
    let dear = finished(server, &dear);
    assert_eq!(dear["output"]["from_stock"], false);
    let orders = sim.get("/api/sim/orders")["orders"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(orders.len(), 1, "{orders:#?}");
    assert_eq!(orders[0]["item"], "MacBook Pro 14");
    assert_eq!(
        dear["steps"]["order"]["attempts"], 2,
        "retried after the 503"
    );
    assert!(
        sim.get("/api/sim/faults")["faults"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        orders[0]["idempotency_key"]
            .as_str()
            .unwrap()
            .contains(dear["id"].as_str().unwrap())
    );
    assert_ne!(
        dear["output"]["technician"], cheap["output"]["technician"],
        "least loaded: the second request goes to the other technician"
    );
    assert_eq!(
        sim.record(
            "sc_req_item",
            &format!("number={}", dear["output"]["request"].as_str().unwrap())
        )["state"],
        "3"
    );
}

#[test]
fn plugins_name_what_the_operator_must_configure() {
    let sim = Sim::start();
    let examples = start(&sim, unchanged);
    let server = &examples.server;
    let workflow = "name: misconfigured\nsteps:\n  - id: tell\n    uses: notify\n    with: { channel: nowhere, text: hello }\n";
    let deployed = server
        .request("PUT", "/v1/workflows/misconfigured")
        .set("content-type", "application/yaml")
        .send_string(workflow)
        .unwrap();
    assert!(deployed.status() == 201 || deployed.status() == 200);
    let run = server.start_run("misconfigured", json!({}));
    let run = server
        .wait_until_finished(&[run], Duration::from_secs(20))
        .remove(0);
    assert_eq!(run["status"], "failed");
    let error = run["error"]["message"].as_str().unwrap();
    assert!(
        error.contains("channel \"nowhere\" is not configured")
            && error.contains("[plugins.notify.channels]")
            && error.contains("service-desk"),
        "{error}"
    );
    assert!(sim.get("/chat")["messages"].as_array().unwrap().is_empty());
}

#[test]
fn access_request_from_a_signed_servicenow_webhook_and_over_the_api() {
    let sim = Sim::start();
    let examples = start(&sim, unchanged);
    let server = &examples.server;

    // ServiceNow's side: the requested item exists; its business rule posts
    // the request to Steward's hook, signed.
    let ritm = sim.post(
        "/api/now/table/sc_req_item",
        json!({"short_description": "Access to payroll for alex", "requested_for": "alex"}),
    )["result"]["number"]
        .as_str()
        .unwrap()
        .to_string();
    let body =
        json!({"user": "alex", "system": "payroll", "ticket": ritm, "recertify_after": "2s"})
            .to_string();
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let signature = steward::hooks::sign(HOOK_SECRET, t, body.as_bytes());
    let response = ureq::post(&server.url("/v1/hooks/servicenow"))
        .set("content-type", "application/json")
        .set("Steward-Signature", &signature)
        .send_string(&body)
        .unwrap();
    assert_eq!(response.status(), 201);
    let run = json_of(response)["id"].as_str().unwrap().to_string();

    // payroll is critical: its owner (dana, from the CMDB) and security (sam).
    approve(server, &run, "dana");
    approve(server, &run, "sam");
    let done = finished(server, &run);
    assert_eq!(done["output"]["owner"], "dana");
    assert_eq!(done["output"]["criticality"], "critical");
    let grants = sim.get("/api/sim/grants")["grants"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(grants.len(), 1);
    assert_eq!(
        (grants[0]["user"].as_str(), grants[0]["system"].as_str()),
        (Some("alex"), Some("payroll"))
    );
    let item = sim.record("sc_req_item", &format!("number={ritm}"));
    assert_eq!(item["state"], "3", "{item:#}");
    assert!(
        item["close_notes"]
            .as_str()
            .unwrap()
            .contains(grants[0]["grant_id"].as_str().unwrap())
    );

    // The recertification reminder is a run of its own, due 2 s later.
    let recert = done["output"]["recertification_run"]
        .as_str()
        .unwrap()
        .to_string();
    let recert = finished(server, &recert);
    let task = recert["output"]["task"].as_str().unwrap();
    assert!(task.starts_with("SCTASK"));
    assert_eq!(
        sim.record("sc_task", &format!("number={task}"))["assigned_to"],
        "dana"
    );
    let reminder = sim.wait_for_chat("access-reviews", 1, Duration::from_secs(5));
    assert!(reminder[0]["text"].as_str().unwrap().contains("alex"));

    // A replayed delivery is refused; nothing runs twice.
    let replay = ureq::post(&server.url("/v1/hooks/servicenow"))
        .set("content-type", "application/json")
        .set("Steward-Signature", &signature)
        .send_string(&body);
    assert!(
        matches!(replay, Err(ureq::Error::Status(409, _))),
        "{replay:?}"
    );

    // wiki is not critical: the owner alone decides.
    let wiki = server.start_run("access-request", json!({"user": "alex", "system": "wiki"}));
    approve(server, &wiki, "eli");
    let wiki = finished(server, &wiki);
    assert_eq!(wiki["output"]["criticality"], "medium");
    assert_eq!(wiki["steps"]["security-approval"]["state"], "skipped");
    assert_eq!(
        sim.get("/api/sim/grants")["grants"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // A system the CMDB does not know fails with the plugin's message.
    let unknown = server.start_run(
        "access-request",
        json!({"user": "alex", "system": "mainframe"}),
    );
    let unknown = server
        .wait_until_finished(&[unknown], Duration::from_secs(20))
        .remove(0);
    assert_eq!(unknown["status"], "failed");
    assert!(
        unknown["error"].to_string().contains("mainframe"),
        "{unknown:#}"
    );
}

/// A system name carrying encoded-query terms once matched another
/// configuration item (wiki, owned by eli) and skipped payroll's security
/// approval. The lookup refuses it before any request: the run fails
/// there, and no approval opens.
#[test]
fn access_request_for_a_system_name_with_query_terms_fails_before_any_approval() {
    let sim = Sim::start();
    let examples = start(&sim, unchanged);
    let server = &examples.server;
    let injected = "payroll^ORname=wiki^ORDERBYDESCname";
    let run = server.start_run(
        "access-request",
        json!({"user": "alex", "system": injected}),
    );
    let run = server
        .wait_until_finished(&[run], Duration::from_secs(20))
        .remove(0);
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["steps"]["owner"]["state"], "failed", "{run:#}");
    assert!(
        run["error"].to_string().contains("cannot match as text"),
        "{run:#}"
    );
    for step in ["owner-approval", "security-approval", "grant"] {
        assert!(
            run["steps"][step].is_null() || run["steps"][step]["state"] == "skipped",
            "{step}: {run:#}"
        );
    }
    let pending = server.request("GET", "/v1/approvals").call().unwrap();
    let pending = json_of(pending);
    assert!(
        pending["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["run_id"] != run["id"]),
        "{pending:#}"
    );
    assert_eq!(
        sim.get("/api/sim/grants")["grants"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn p1_incident_escalates_on_its_sla_and_the_weekly_review_reports_it() {
    let sim = Sim::start();
    // The example's 4 h target scaled to 8 s: the half-hourly updates come
    // every second, the 50% escalation at 4 s, the breach at 8 s.
    let examples = start(&sim, |name, text| {
        if name == "p1-incident.yaml" {
            assert!(text.contains("resolution: { P1: 4h }"));
            text.replace("resolution: { P1: 4h }", "resolution: { P1: 8s }")
        } else {
            text
        }
    });
    let server = &examples.server;
    let run = server.start_run(
        "p1-incident",
        json!({"short_description": "VPN down for all staff", "service": "vpn", "caller": "carla"}),
    );
    // On a loaded machine the first half-hourly update (1 s) may come
    // before the opening message: look for it rather than take the first.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sim
        .chat("stakeholders")
        .iter()
        .any(|m| m["text"].as_str().unwrap().contains("P1 opened: INC"))
    {
        assert!(Instant::now() < deadline, "{:#?}", sim.chat("stakeholders"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let incident = sim.record("incident", "cmdb_ci=vpn");
    assert_eq!(
        (incident["priority"].as_str(), incident["state"].as_str()),
        (Some("1"), Some("2"))
    );
    let assignee = incident["assigned_to"].as_str().unwrap().to_string();
    assert!(["olga", "pete"].contains(&assignee.as_str()));

    // 50%: the on-call lead; 100%: the major-incident manager (a Teams card).
    let lead = sim.wait_for_chat("oncall-lead", 1, Duration::from_secs(10));
    assert!(
        lead[0]["text"]
            .as_str()
            .unwrap()
            .contains("half of its 4 h target")
    );
    let manager = sim.wait_for_chat("major-incident-manager", 1, Duration::from_secs(10));
    assert_eq!(
        manager[0]["payload"]["attachments"][0]["content"]["type"],
        "AdaptiveCard"
    );
    // All 8 half-hourly updates (the last one comes with the breach).
    sim.wait_for_chat("stakeholders", 1 + 8, Duration::from_secs(5));
    // The last update was sent from inside its step: the run is waiting
    // again once that step's result is committed, a moment later.
    let deadline = Instant::now() + Duration::from_secs(5);
    let breached = loop {
        let run = server.run(&run);
        if run["status"] == "waiting" || Instant::now() > deadline {
            break run;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(breached["status"], "waiting", "{breached:#}");
    assert_eq!(breached["sla"]["breached"], true, "{breached:#}");
    let updates = sim.chat("stakeholders").len();
    assert_eq!(
        updates,
        1 + 8,
        "the opening message and 8 half-hourly updates"
    );

    // The engineer confirms service is restored: resolved, all clear.
    approve(server, &run, &assignee);
    let done = finished(server, &run);
    assert_eq!(done["output"]["state"], "6");
    let incident = sim.record("incident", "cmdb_ci=vpn");
    assert_eq!(incident["state"], "6");
    assert!(
        incident["close_notes"]
            .as_str()
            .unwrap()
            .contains(&assignee)
    );
    let all_clear = sim.wait_for_chat("stakeholders", updates + 1, Duration::from_secs(5));
    assert!(
        all_clear.last().unwrap()["text"]
            .as_str()
            .unwrap()
            .contains("P1 resolved")
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        sim.chat("stakeholders").len(),
        updates + 1,
        "no update after the incident closed"
    );

    // The weekly review, fired by the scheduler: its trigger is Monday
    // 09:00, so an every-second schedule of the same workflow stands in.
    let schedules = json_of(server.request("GET", "/v1/schedules").call().unwrap());
    assert!(
        schedules["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["workflow"] == "weekly-sla-review" && s["cron"] == "0 9 * * MON"),
        "{schedules:#}"
    );
    let schedule = json_of(
        server
            .request("POST", "/v1/schedules")
            .set("content-type", "application/json")
            .send_string(&json!({"workflow": "weekly-sla-review", "cron": "* * * * * *", "input": {"days": 7}}).to_string())
            .unwrap(),
    );
    let review = sim.wait_for_chat("service-review", 1, Duration::from_secs(10));
    server
        .request(
            "DELETE",
            &format!("/v1/schedules/{}", schedule["id"].as_str().unwrap()),
        )
        .call()
        .unwrap();
    let text = review[0]["text"].as_str().unwrap();
    assert!(text.contains("Weekly SLA review"), "{text}");
    assert!(text.contains("SLA compliance: 0"), "{text}");
    assert!(text.contains("1 breached"), "{text}");
    assert!(
        text.contains("p1-incident P1: 1 breached of 1 runs"),
        "{text}"
    );
    let _ = ADMIN_TOKEN;
}
