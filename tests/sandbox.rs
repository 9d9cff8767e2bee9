//! The sandbox against hostile plugins built from `tests/plugins`: CPU and
//! memory limits, HTTP and secret grants, crashes, and bad plugin files.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::http_server::TestServer;
use serde_json::{Value, json};
use steward::config::Config;
use steward::engine::{CallError, CallRequest, Engine, MemoryKeyValue, StepContext};
use steward::plugins::{PluginSet, load_plugins};

/// An engine with the first-party plugins plus `hostile`, under `extra`
/// configuration (TOML appended to the plugin's section).
fn engine_with(hostile_settings: &str) -> (PluginSet, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let text = format!(
        "data_dir = {:?}\n[secrets]\nGRANTED_TOKEN = {{ value = \"s3cret\" }}\nUNGRANTED_TOKEN = {{ value = \"nope\" }}\n\
         [plugins.hostile]\npath = {:?}\n{hostile_settings}\n",
        dir,
        common::install_fixture("hostile", &dir),
    );
    let config = Config::parse(&text, "steward.toml").unwrap();
    let set =
        load_plugins(&config, Arc::new(MemoryKeyValue::default()), true).expect("plugins load");
    (set, tmp)
}

fn request(plugin: &str, input: Value) -> CallRequest {
    CallRequest {
        plugin: plugin.into(),
        context: StepContext {
            run_id: "run-1".into(),
            workflow: "test".into(),
            step_id: "step".into(),
            attempt: 1,
            idempotency_key: "run-1/step".into(),
        },
        input: input.to_string(),
        timeout: None,
    }
}

fn call(engine: &Engine, plugin: &str, input: Value) -> Result<Value, CallError> {
    engine
        .call_blocking(&request(plugin, input))
        .result
        .map(|text| serde_json::from_str(&text).unwrap())
}

#[test]
fn an_infinite_loop_stops_at_its_cpu_budget_while_a_concurrent_call_finishes() {
    let (set, _dir) = engine_with("cpu_ms = 300");
    let engine = set.engine.clone();
    let looping = std::thread::spawn(move || {
        let started = Instant::now();
        let result = call(&engine, "hostile", json!({"do": "loop"}));
        (result, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(50));
    let payload = json!({"ticket": "INC0012345", "tags": ["a", "b"]});
    let good = call(&set.engine, "transform", payload.clone()).expect("well-behaved call");
    assert_eq!(good, payload);

    let (result, elapsed) = looping.join().unwrap();
    let err = result.unwrap_err();
    assert_eq!(
        err,
        CallError::CpuLimit {
            plugin: "hostile".into(),
            limit_ms: 300
        }
    );
    assert!(
        err.to_string().contains("CPU time limit of 300 ms"),
        "{err}"
    );
    // CPU time, not wall time: on a busy machine the loop's thread gets
    // less than a core, so only a loose bound holds.
    assert!(
        elapsed <= Duration::from_secs(5),
        "stopped after {elapsed:?}"
    );
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_memory_hog_is_refused_at_its_limit_and_the_process_stays_small() {
    let (set, _dir) = engine_with("");
    let before = rss_kib();
    let err = call(&set.engine, "hostile", json!({"do": "hog", "mib": 1024})).unwrap_err();
    assert_eq!(
        err,
        CallError::MemoryLimit {
            plugin: "hostile".into(),
            limit_mib: 64
        }
    );
    assert!(err.to_string().contains("memory limit of 64 MiB"), "{err}");
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(grown_mib < 128, "the process grew by {grown_mib} MiB");
    // Within the limit the same plugin works, in a fresh instance.
    assert_eq!(
        call(&set.engine, "hostile", json!({"do": "hog", "mib": 8})).unwrap(),
        json!({"held_mib": 8})
    );
}

#[test]
fn a_lower_memory_limit_per_plugin_applies() {
    let (set, _dir) = engine_with("memory_mib = 16");
    let err = call(&set.engine, "hostile", json!({"do": "hog", "mib": 32})).unwrap_err();
    assert_eq!(
        err,
        CallError::MemoryLimit {
            plugin: "hostile".into(),
            limit_mib: 16
        }
    );
}

#[test]
fn http_reaches_granted_origins_only() {
    let server = TestServer::ok(r#"{"ok":true}"#);
    let (set, _dir) = engine_with("allowed_hosts = [\"http://127.0.0.1:*\"]");
    let ok = call(
        &set.engine,
        "hostile",
        json!({"do": "http", "url": server.url("/ping")}),
    )
    .unwrap();
    assert_eq!(ok["status"], 200);
    assert_eq!(server.received().len(), 1);

    let err = call(
        &set.engine,
        "hostile",
        json!({"do": "http", "url": "http://example.com/"}),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("http://example.com:80 is not granted"),
        "{text}"
    );
    assert!(text.contains("http://127.0.0.1:*"), "{text}");
    assert!(!err.retryable());
}

#[test]
fn metadata_addresses_are_refused_even_under_a_wildcard_grant() {
    let (set, _dir) = engine_with("allowed_hosts = [\"*\"]");
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
    ] {
        let err = call(&set.engine, "hostile", json!({"do": "http", "url": url})).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("link-local or cloud metadata address"),
            "{url}: {text}"
        );
        assert!(!err.retryable(), "{url}");
    }
}

#[test]
fn a_plugin_without_any_host_grant_is_denied_and_warned_about() {
    let (set, _dir) = engine_with("");
    assert!(
        set.warnings
            .iter()
            .any(|w| w.contains("plugin hostile asks for outbound HTTP")),
        "{:?}",
        set.warnings
    );
    // Built-in plugins nobody set up are one note, not a warning per grant.
    assert!(
        !set.warnings.iter().any(|w| w.contains("plugin notify")),
        "{:?}",
        set.warnings
    );
    assert!(
        set.notes
            .iter()
            .any(|n| n.contains("notify") && n.contains("itsm-ticket")),
        "{:?}",
        set.notes
    );
    let err = call(
        &set.engine,
        "hostile",
        json!({"do": "http", "url": "http://127.0.0.1:9/"}),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("the operator allows no host"),
        "{err}"
    );
}

#[test]
fn secrets_are_given_only_when_granted() {
    let (set, _dir) = engine_with("secrets = [\"GRANTED_TOKEN\"]");
    assert!(
        set.warnings
            .iter()
            .any(|w| w.contains("asks for secret UNGRANTED_TOKEN")),
        "{:?}",
        set.warnings
    );
    let ok = call(
        &set.engine,
        "hostile",
        json!({"do": "secret", "name": "GRANTED_TOKEN"}),
    )
    .unwrap();
    assert_eq!(ok, json!({"length": 6}));
    let err = call(
        &set.engine,
        "hostile",
        json!({"do": "secret", "name": "UNGRANTED_TOKEN"}),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("secret UNGRANTED_TOKEN is not granted to plugin hostile"),
        "{err}"
    );
}

#[test]
fn a_panic_is_a_crash_of_the_step_not_of_the_process() {
    let (set, _dir) = engine_with("");
    let err = call(&set.engine, "hostile", json!({"do": "panic"})).unwrap_err();
    assert!(matches!(err, CallError::Trap { .. }), "{err:?}");
    assert!(err.to_string().contains("plugin hostile crashed"), "{err}");
    assert_eq!(
        call(&set.engine, "hostile", json!({"do": "echo", "value": 5})).unwrap(),
        json!(5)
    );
}

#[test]
fn typed_plugin_errors_keep_their_retryability() {
    let (set, _dir) = engine_with("");
    let retryable = call(
        &set.engine,
        "hostile",
        json!({"do": "fail", "retryable": true, "message": "busy"}),
    );
    assert!(
        matches!(retryable, Err(CallError::Plugin { retryable: true, ref message, .. }) if message == "busy")
    );
    let fatal = call(
        &set.engine,
        "hostile",
        json!({"do": "fail", "retryable": false, "message": "bad"}),
    );
    assert!(matches!(
        fatal,
        Err(CallError::Plugin {
            retryable: false,
            ..
        })
    ));
    let bad_input = call(&set.engine, "hostile", json!({"do": "nonsense"})).unwrap_err();
    assert!(
        bad_input.to_string().starts_with("invalid input"),
        "{bad_input}"
    );
}

#[test]
fn key_value_state_is_kept_per_plugin_across_calls() {
    let (set, _dir) = engine_with("");
    assert_eq!(
        call(&set.engine, "hostile", json!({"do": "counter"})).unwrap()["count"],
        1
    );
    assert_eq!(
        call(&set.engine, "hostile", json!({"do": "counter"})).unwrap()["count"],
        2
    );
}

#[test]
fn a_wall_clock_timeout_stops_a_call() {
    let (set, _dir) = engine_with("");
    let mut req = request("hostile", json!({"do": "loop"}));
    req.timeout = Some(Duration::from_millis(100));
    let err = set.engine.call_blocking(&req).result.unwrap_err();
    assert_eq!(
        err,
        CallError::Timeout {
            plugin: "hostile".into(),
            limit_ms: 100
        }
    );
    assert!(err.retryable());
}

#[test]
fn bad_plugin_files_fail_the_start_with_the_path() {
    let missing = Config::parse(
        "[plugins.ghost]\npath = \"/nonexistent/ghost.wasm\"\n",
        "steward.toml",
    )
    .unwrap();
    let err = load_plugins(&missing, Arc::new(MemoryKeyValue::default()), false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("[plugins.ghost] path: /nonexistent/ghost.wasm: cannot read"),
        "{err}"
    );

    let wrong = format!(
        "[plugins.other]\npath = {:?}\n",
        common::fixture("not-a-plugin")
    );
    let wrong = Config::parse(&wrong, "steward.toml").unwrap();
    let err = load_plugins(&wrong, Arc::new(MemoryKeyValue::default()), false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("does not match the steward:plugin/fulfilment@0.1.0 world"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm not really").unwrap();
    let junk = Config::parse(
        &format!("[plugins.junk]\npath = {junk:?}\n"),
        "steward.toml",
    )
    .unwrap();
    let err = load_plugins(&junk, Arc::new(MemoryKeyValue::default()), false)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a valid WebAssembly component"), "{err}");
}

#[test]
fn redirects_are_followed_within_the_origin_only() {
    let elsewhere = TestServer::ok(r#""elsewhere""#);
    let target = elsewhere.url("/landing");
    let server = TestServer::start(move |r, _| match r.path.as_str() {
        "/old" => (302, vec![("location".into(), "/new".into())], vec![]),
        "/new" => (200, vec![], b"moved here".to_vec()),
        _ => (307, vec![("location".into(), target.clone())], vec![]),
    });
    let (set, _dir) = engine_with("allowed_hosts = [\"http://127.0.0.1:*\"]");
    let same = call(
        &set.engine,
        "hostile",
        json!({"do": "http", "url": server.url("/old")}),
    )
    .unwrap();
    assert_eq!(same, json!({"status": 200, "body": "moved here"}));

    let cross = call(
        &set.engine,
        "hostile",
        json!({"do": "http", "url": server.url("/away")}),
    )
    .unwrap();
    assert_eq!(
        cross["status"], 307,
        "a redirect to another origin is handed back, not followed"
    );
    assert!(elsewhere.received().is_empty());
}

#[test]
fn an_oversized_response_is_refused() {
    let server = TestServer::start(|_, _| (200, vec![], vec![b'x'; 11 << 20]));
    let (set, _dir) = engine_with("allowed_hosts = [\"http://127.0.0.1:*\"]");
    let err = call(
        &set.engine,
        "hostile",
        json!({"do": "http", "url": server.url("/big")}),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("the response body exceeds"),
        "{err}"
    );
}

#[test]
fn wasi_grants_no_environment_files_or_sockets() {
    let (set, _dir) = engine_with("allowed_hosts = [\"*\"]");
    let seen = call(&set.engine, "hostile", json!({"do": "ambient"})).unwrap();
    assert_eq!(
        seen,
        json!({"env": 0, "args": 0, "read_root": false, "read_passwd": false, "tcp": false})
    );
}

fn with_timeout(plugin: &str, input: Value, timeout: Duration) -> CallRequest {
    let mut req = request(plugin, input);
    req.timeout = Some(timeout);
    req
}

#[test]
fn a_plugin_sleeping_in_wasi_stops_at_its_timeout_while_other_calls_go_on() {
    let (set, _dir) = engine_with("");
    let sleepers: Vec<_> = (0..4)
        .map(|_| {
            let engine = set.engine.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let req = with_timeout(
                    "hostile",
                    json!({"do": "sleep", "ms": 60_000}),
                    Duration::from_secs(2),
                );
                (engine.call_blocking(&req).result, started.elapsed())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let payload = json!({"ok": true});
    assert_eq!(
        call(&set.engine, "transform", payload.clone()).unwrap(),
        payload
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a transform waited {:?} behind sleeping plugins",
        started.elapsed()
    );
    for sleeper in sleepers {
        let (result, elapsed) = sleeper.join().unwrap();
        assert_eq!(
            result.unwrap_err(),
            CallError::Timeout {
                plugin: "hostile".into(),
                limit_ms: 2_000
            }
        );
        assert!(
            elapsed <= Duration::from_millis(2_100),
            "a 2 s timeout ended after {elapsed:?}"
        );
    }
}

#[test]
fn sleeping_plugins_holding_every_slot_give_it_back_at_their_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let text = format!(
        "data_dir = {:?}\n[engine]\nmax_concurrent_calls = 2\n[plugins.hostile]\npath = {:?}\ntimeout_ms = 1000\n",
        tmp.path(),
        common::install_fixture("hostile", tmp.path()),
    );
    let config = Config::parse(&text, "steward.toml").unwrap();
    let set = load_plugins(&config, Arc::new(MemoryKeyValue::default()), true).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let sleepers: Vec<_> = (0..2)
            .map(|_| {
                let engine = set.engine.clone();
                tokio::spawn(async move {
                    engine
                        .call(request("hostile", json!({"do": "sleep", "ms": 60_000})))
                        .await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let outcome = set
            .engine
            .call(request("transform", json!({"queued": true})))
            .await;
        assert!(outcome.result.is_ok(), "{:?}", outcome.result);
        // Queued behind the two sleepers until their 1 s timeout, not 60 s.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "waited {:?}",
            started.elapsed()
        );
        for sleeper in sleepers {
            let outcome = sleeper.await.unwrap();
            assert!(matches!(outcome.result, Err(CallError::Timeout { .. })));
        }
    });
}

#[test]
fn waiting_on_a_slow_http_answer_is_not_cpu_time() {
    let slow = TestServer::start(|_, _| {
        std::thread::sleep(Duration::from_secs(3));
        (200, vec![], b"late but fine".to_vec())
    });
    let (set, _dir) = engine_with(&format!(
        "allowed_hosts = [{:?}]\ncpu_ms = 1000",
        slow.url("").trim_end_matches('/')
    ));
    let req = with_timeout(
        "hostile",
        json!({"do": "http", "url": slow.url("/slow")}),
        Duration::from_secs(10),
    );
    let outcome = set.engine.call_blocking(&req);
    let answer: Value =
        serde_json::from_str(&outcome.result.expect("a slow answer succeeds")).unwrap();
    assert_eq!(answer["status"], 200);
    assert_eq!(answer["body"], "late but fine");
}

#[test]
fn a_log_flood_is_capped_per_call_and_said_so() {
    let (set, _dir) = engine_with("");
    let outcome = set.engine.call_blocking(&request(
        "hostile",
        json!({"do": "flood", "lines": 200_000}),
    ));
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    assert_eq!(outcome.logs.len(), 1_001, "1,000 lines and the note");
    let note = &outcome.logs.last().unwrap().message;
    assert!(note.contains("199000 more log lines dropped"), "{note}");

    // Long lines reach the byte cap first.
    let outcome = set.engine.call_blocking(&request(
        "hostile",
        json!({"do": "flood", "lines": 1_000, "bytes": 4_000}),
    ));
    let kept: usize = outcome.logs.iter().map(|l| l.message.len()).sum();
    assert!(kept <= 256 << 10, "kept {kept} bytes of log");
    assert!(
        outcome.logs.len() < 100,
        "{} lines kept",
        outcome.logs.len()
    );
}

#[test]
fn a_huge_plugin_error_is_cut_to_its_limits() {
    let (set, _dir) = engine_with("");
    let err = call(
        &set.engine,
        "hostile",
        json!({"do": "huge", "message_bytes": 8 << 20, "code_bytes": 100_000}),
    )
    .unwrap_err();
    let CallError::Plugin { message, code, .. } = err else {
        panic!("not a plugin error: {err:?}");
    };
    assert!(
        message.len() <= 4_096 + 16,
        "message of {} bytes",
        message.len()
    );
    assert!(message.ends_with("[truncated]"));
    assert!(code.unwrap().len() <= 64 + 16);
}
