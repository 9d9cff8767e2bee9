//! What the benchmarks that drive the real server share: starting it.

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
