//! `steward serve` as a child process on a free port, spoken to over HTTP.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The admin token every test server is started with.
pub const ADMIN_TOKEN: &str = "test-admin-secret";

/// Writes a `steward.toml` in `dir` for an embedded SQLite database there,
/// loading `workflows` (none when `None`), followed by `extra` TOML.
pub fn write_config(dir: &Path, workflows: Option<&Path>, extra: &str) -> std::path::PathBuf {
    let config = dir.join("steward.toml");
    let workflows = workflows.map(|w| format!("{w:?}")).unwrap_or_default();
    std::fs::write(
        &config,
        format!(
            "database = \"sqlite://{}/steward.db\"\ndata_dir = {:?}\nworkflows = [{workflows}]\n{extra}",
            dir.display(),
            dir.join("data"),
        ),
    )
    .unwrap();
    config
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Server {
    child: Child,
    port: u16,
    /// Where the server's stderr goes.
    pub log: std::path::PathBuf,
    /// The `approvals:decide` token of each person who decided through
    /// this server, made on first use.
    tokens: Mutex<HashMap<String, String>>,
}

impl Server {
    pub fn start(config: &Path) -> Server {
        Server::start_with_env(config, &[])
    }

    /// Starts with extra environment variables for the child.
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Server {
        Server::spawn(config, &["serve"], env)
    }

    /// `steward serve --no-worker`: the API only.
    pub fn start_api_only(config: &Path) -> Server {
        Server::spawn(config, &["serve", "--no-worker"], &[])
    }

    /// `steward worker`, with `/healthz` and `/metrics` on its port.
    pub fn start_worker(config: &Path) -> Server {
        Server::spawn(config, &["worker", "--listen", "PORT"], &[])
    }

    /// `steward worker --tags TAGS`.
    pub fn start_worker_tagged(config: &Path, tags: &str) -> Server {
        Server::spawn(config, &["worker", "--listen", "PORT", "--tags", tags], &[])
    }

    /// `steward serve` with SIGXFSZ ignored, so a file-size limit set on it
    /// later ([`Server::pid`]) fails its writes (`EFBIG`, which SQLite
    /// reports as a disk I/O error) instead of killing it.
    pub fn start_ignoring_file_size_signal(config: &Path) -> Server {
        Server::spawn_with(config, &["serve"], &[], free_port(), |command| {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: only async-signal-safe work between fork and exec;
            // an ignored signal stays ignored across exec.
            unsafe {
                command.pre_exec(|| {
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    Ok(())
                });
            }
        })
    }

    /// The process id, for signals and resource limits.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `steward serve` on a port chosen beforehand, for configurations
    /// that must know the server's own address.
    pub fn start_on(config: &Path, port: u16, env: &[(&str, &str)]) -> Server {
        Server::spawn_on(config, &["serve"], env, port)
    }

    /// Runs `steward ARGS --config CONFIG` (`PORT` in ARGS becomes the
    /// free address it listens on) and waits for its `/healthz`.
    fn spawn(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::spawn_on(config, args, env, free_port())
    }

    fn spawn_on(config: &Path, args: &[&str], env: &[(&str, &str)], port: u16) -> Server {
        Server::spawn_with(config, args, env, port, |_| {})
    }

    fn spawn_with(
        config: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        port: u16,
        adjust: impl FnOnce(&mut Command),
    ) -> Server {
        let address = format!("127.0.0.1:{port}");
        let args: Vec<&str> = args
            .iter()
            .map(|a| if *a == "PORT" { address.as_str() } else { a })
            .collect();
        let log_path = config.with_extension(format!("{port}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = Command::new(super::steward_bin());
        command
            .args(&args)
            .arg("--config")
            .arg(config)
            .env("STEWARD_LISTEN", &address)
            .env("STEWARD_ADMIN_TOKEN", ADMIN_TOKEN)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log);
        adjust(&mut command);
        let child = command.spawn().unwrap();
        let server = Server {
            child,
            port,
            log: log_path,
            tokens: Mutex::default(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while ureq::get(&server.url("/healthz")).call().is_err() {
            assert!(
                Instant::now() < deadline,
                "the server did not come up; see {}",
                config.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// What the server logged so far (its stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A request carrying the admin token.
    pub fn request(&self, method: &str, path: &str) -> ureq::Request {
        ureq::request(method, &self.url(path))
            .set("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// SIGTERM, as a service manager stops it; waits for the exit.
    pub fn terminate(mut self, within: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the server ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal} {pid}");
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// A test that fails (panics) before killing its server does not leave it
/// running: killing an exited child is a no-op.
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn start_run(&self, workflow: &str, input: Value) -> String {
        let response = self
            .request("POST", &format!("/v1/workflows/{workflow}/runs"))
            .set("content-type", "application/json")
            .send_string(&json!({ "input": input }).to_string())
            .expect("run accepted");
        assert_eq!(response.status(), 201);
        json_of(response)["id"].as_str().unwrap().to_string()
    }

    pub fn run(&self, id: &str) -> Value {
        json_of(
            self.request("GET", &format!("/v1/runs/{id}"))
                .call()
                .unwrap(),
        )
    }

    pub fn events(&self, id: &str) -> Vec<Value> {
        let body = json_of(
            self.request("GET", &format!("/v1/runs/{id}/events"))
                .call()
                .unwrap(),
        );
        body["items"].as_array().unwrap().clone()
    }

    pub fn wait_until_finished(&self, ids: &[String], within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let runs: Vec<Value> = ids.iter().map(|id| self.run(id)).collect();
            let open = runs
                .iter()
                .filter(|r| {
                    !["succeeded", "failed", "cancelled", "rejected"]
                        .contains(&r["status"].as_str().unwrap())
                })
                .count();
            if open == 0 {
                return runs;
            }
            assert!(
                Instant::now() < deadline,
                "{open} runs still open: {runs:#?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `approver`'s pending approvals.
    pub fn pending_approvals(&self, approver: &str) -> Vec<Value> {
        let body = json_of(
            self.request(
                "GET",
                &format!("/v1/approvals?status=pending&approver={approver}"),
            )
            .call()
            .unwrap(),
        );
        body["items"].as_array().unwrap().clone()
    }

    /// Waits until `approver` has a pending approval of `run` and returns
    /// it; gives up at once when the run failed instead.
    pub fn approval_of(&self, run: &str, approver: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(a) = self
                .pending_approvals(approver)
                .into_iter()
                .find(|a| a["run_id"] == run)
            {
                return a;
            }
            let status = self.run(run)["status"].clone();
            assert!(
                Instant::now() < deadline && status != "failed",
                "no approval for {approver} on run {run} ({status}): {:#}",
                self.run(run)
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Sends `body` as JSON with the admin token: the status and body
    /// answered, errors included.
    pub fn send_json(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        self.send_json_as(ADMIN_TOKEN, method, path, body)
    }

    /// A new token for `subject` with `scopes` (created by the admin): the
    /// answer to `POST /v1/tokens`, secret in `token`.
    pub fn create_token(&self, subject: &str, scopes: &[&str]) -> Value {
        let (status, body) = self.send_json(
            "POST",
            "/v1/tokens",
            &json!({ "subject": subject, "scopes": scopes }),
        );
        assert_eq!(status, 201, "{body:#}");
        body
    }

    /// The secret of `person`'s `approvals:decide` token, made once per
    /// server.
    pub fn token_of(&self, person: &str) -> String {
        if let Some(secret) = self.tokens.lock().unwrap().get(person) {
            return secret.clone();
        }
        let secret = self.create_token(person, &["approvals:decide"])["token"]
            .as_str()
            .unwrap()
            .to_string();
        self.tokens
            .lock()
            .unwrap()
            .insert(person.to_string(), secret.clone());
        secret
    }

    /// Sends `body` as JSON with the token `secret`: the status and body
    /// answered, errors included.
    pub fn send_json_as(
        &self,
        secret: &str,
        method: &str,
        path: &str,
        body: &Value,
    ) -> (u16, Value) {
        let response = ureq::request(method, &self.url(path))
            .set("Authorization", &format!("Bearer {secret}"))
            .set("content-type", "application/json")
            .send_string(&body.to_string());
        match response {
            Ok(r) => (r.status(), json_of(r)),
            Err(ureq::Error::Status(status, r)) => (status, json_of(r)),
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }

    /// `by` decides approval `id` with their own token (subject `by`): the
    /// status and body answered.
    pub fn decide(
        &self,
        id: &str,
        by: &str,
        decision: &str,
        comment: Option<&str>,
    ) -> (u16, Value) {
        let body = json!({ "decision": decision, "comment": comment });
        self.send_json_as(
            &self.token_of(by),
            "POST",
            &format!("/v1/approvals/{id}"),
            &body,
        )
    }
}

pub fn json_of(response: ureq::Response) -> Value {
    serde_json::from_str(&response.into_string().unwrap()).unwrap()
}
