//! What the benchmarks that drive the real server share: starting it, and
//! loading it with `hey`.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The admin token the benchmarked server is started with.
pub const TOKEN: &str = "bench-admin-token";

/// Starts the release `steward serve` on a free port with an embedded
/// SQLite database in `dir` and `workflows` (file name, YAML) loaded;
/// returns the process and its base URL once `/healthz` answers.
pub fn start_server(dir: &Path, workflows: &[(&str, &str)], log: &str) -> (Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let folder = dir.join("workflows");
    std::fs::create_dir_all(&folder).unwrap();
    for (file, yaml) in workflows {
        std::fs::write(folder.join(file), yaml).unwrap();
    }
    let config = dir.join("steward.toml");
    std::fs::write(
        &config,
        format!(
            "database = \"sqlite://{}/steward.db\"\ndata_dir = {:?}\nworkflows = [{:?}]\n",
            dir.display(),
            dir.join("data"),
            folder
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_steward"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("STEWARD_LISTEN", format!("127.0.0.1:{port}"))
        .env("STEWARD_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", log)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while ureq::get(&format!("{base}/healthz")).call().is_err() {
        assert!(Instant::now() < deadline, "the server did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, base)
}

/// Exits with a message when `hey` (the load generator) is missing.
pub fn require_hey(bench: &str) {
    if Command::new("hey").arg("-h").output().is_err() {
        eprintln!("{bench}: `hey` is not installed: sudo apt-get install hey");
        std::process::exit(2);
    }
}

/// What `hey` reports.
pub struct HeyReport {
    /// Requests answered 201 (hey sends n / c per client, so fewer than n
    /// when c does not divide n).
    pub created: usize,
    pub rate: f64,
    pub p50: f64,
    pub p99: f64,
    pub statuses: String,
}

/// Runs `hey` with `args`, POSTing `body` to `url`, and reads its summary.
pub fn hey(args: &[&str], url: &str, body: &str) -> HeyReport {
    let output = Command::new("hey")
        .args(args)
        .args([
            "-m",
            "POST",
            "-T",
            "application/json",
            "-H",
            &format!("Authorization: Bearer {TOKEN}"),
            "-d",
            body,
            url,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let number_after = |label: &str| -> f64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("hey printed no {label:?}:\n{text}"))
    };
    let mut statuses = Vec::new();
    let mut created = 0;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix('[')
            && let Some((code, count)) = rest.split_once(']')
        {
            let count: usize = count
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            if code == "201" {
                created += count;
            }
            statuses.push(format!("{code}: {count}"));
        }
    }
    HeyReport {
        created,
        rate: number_after("Requests/sec:"),
        p50: number_after("50% in"),
        p99: number_after("99% in"),
        statuses: statuses.join(", "),
    }
}

/// Starts the release `steward ARGS --config CONFIG` listening on a free
/// port (`PORT` in `args` becomes its address); returns the process and its
/// base URL once `/healthz` answers.
pub fn start_process(args: &[&str], config: &Path) -> (Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let args: Vec<&str> = args
        .iter()
        .map(|a| if *a == "PORT" { address.as_str() } else { a })
        .collect();
    let child = Command::new(env!("CARGO_BIN_EXE_steward"))
        .args(&args)
        .arg("--config")
        .arg(config)
        .env("STEWARD_LISTEN", &address)
        .env("STEWARD_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let base = format!("http://{address}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while ureq::get(&format!("{base}/healthz")).call().is_err() {
        assert!(
            Instant::now() < deadline,
            "steward {args:?} did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, base)
}
