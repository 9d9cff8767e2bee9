//! Command-line interface; `docs/operations.md` is its reference.

mod audit;
mod plugin;
mod run;
mod runs;
mod schedules;
mod serve;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use steward::config::Config;

#[derive(Parser)]
#[command(
    name = "steward",
    version,
    about = "Workflow automation for IT service management"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Start the server (API and executor).
    Serve {
        /// steward.toml; every key has a default.
        #[arg(long, env = "STEWARD_CONFIG")]
        config: Option<PathBuf>,
        /// Serve the API only; `steward worker` processes on the same
        /// PostgreSQL execute the runs, timers and schedules.
        #[arg(long)]
        no_worker: bool,
    },
    /// Execute runs, timers and schedules from a shared PostgreSQL, with no
    /// API (`/healthz` and `/metrics` on `--listen` when given).
    Worker {
        #[arg(long, env = "STEWARD_CONFIG")]
        config: Option<PathBuf>,
        /// Where to serve /healthz and /metrics (overrides [worker] listen).
        #[arg(long)]
        listen: Option<String>,
        /// Tags this worker offers, e.g. gpu,eu (overrides [worker] tags):
        /// workflows with `tags` run only on workers that have them all.
        #[arg(long, value_delimiter = ',')]
        tags: Option<Vec<String>>,
    },
    /// Run a workflow file once, locally, and print its output JSON.
    Run {
        file: PathBuf,
        /// The run's input as JSON, or @FILE to read it from a file.
        #[arg(long, default_value = "{}")]
        input: String,
        #[arg(long, env = "STEWARD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check workflow files without running them.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, env = "STEWARD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// List and show the server's runs.
    Runs {
        #[command(subcommand)]
        command: runs::RunsCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// The server's audit log, newest first (admin token).
    Audit {
        #[command(flatten)]
        args: audit::AuditArgs,
        #[command(flatten)]
        remote: Remote,
    },
    /// List, create, pause and resume the server's cron schedules.
    Schedules {
        #[command(subcommand)]
        command: schedules::SchedulesCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Approve (or with --reject, reject) a pending approval on the server.
    Approve {
        /// The approval's id (`GET /v1/approvals` lists them).
        id: String,
        /// Who decides; optional, since the token's subject is the decider,
        /// and when given it must be that subject.
        #[arg(long = "as")]
        by: Option<String>,
        /// With an admin token: the approver this decision is entered for.
        #[arg(long)]
        on_behalf_of: Option<String>,
        #[arg(long)]
        reject: bool,
        #[arg(long)]
        comment: Option<String>,
        #[arg(long, env = "STEWARD_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        /// An API token with the approvals:decide scope, whose subject is
        /// the approver (or their delegate).
        #[arg(long, env = "STEWARD_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Write, build and look into plugins.
    Plugin {
        #[command(subcommand)]
        command: plugin::PluginCommand,
    },
}

/// Where the server is, for the commands that talk to one.
#[derive(clap::Args)]
pub struct Remote {
    /// The server's base URL.
    #[arg(
        long,
        env = "STEWARD_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    server: String,
    /// An API token: runs:read to read, runs:write to change schedules.
    #[arg(long, env = "STEWARD_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token in the server's database and print its secret (once).
    Create {
        /// Comma-separated: runs:write, runs:read, approvals:decide, admin.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// A label for listings; the subject, else `cli`, when left out.
        #[arg(long)]
        name: Option<String>,
        /// Who acts with the token: a person (max) or a service
        /// (svc:servicenow); `svc:NAME` when left out.
        #[arg(long)]
        subject: Option<String>,
        /// Lifetime, e.g. 90d, 12h, 30m; the token never expires without it.
        #[arg(long)]
        expires: Option<String>,
        #[arg(long, env = "STEWARD_CONFIG")]
        config: Option<PathBuf>,
    },
}

async fn token_create(
    scopes: &[String],
    name: Option<String>,
    subject: Option<&str>,
    expires: Option<&str>,
    config: &Config,
) -> anyhow::Result<ExitCode> {
    use steward::auth;
    let scopes = auth::parse_scopes(scopes).map_err(anyhow::Error::msg)?;
    let subject = subject.map(auth::parse_subject).transpose()?;
    let expires_in = expires.map(auth::parse_expires_in).transpose()?;
    let name = name
        .or_else(|| subject.clone())
        .unwrap_or_else(|| "cli".to_string());
    let subject = subject.unwrap_or_else(|| auth::service_subject(&name));
    let store = serve::open_store(config).await?;
    let (token, secret) = auth::issue_token(
        &store,
        auth::NewToken {
            name: &name,
            subject,
            scopes,
            expires_in,
            by: "cli",
        },
    )
    .await?;
    let expiry = token
        .expires_at
        .map(|at| {
            format!(
                "expires at {}",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        })
        .unwrap_or_else(|| "never expires".to_string());
    eprintln!(
        "created token {} ({}) for {} with scopes {}; it {expiry}; the secret is shown only now:",
        token.id,
        token.name,
        token.subject,
        token.scopes.join(", ")
    );
    println!("{secret}");
    Ok(ExitCode::SUCCESS)
}

/// Stderr for logs, where a failed write is dropped: a full disk or a
/// file-size limit on the log file must not fail the request that logged
/// (tracing-subscriber reports write errors with `eprintln!`, which panics
/// when stderr itself cannot be written).
struct StderrOrNothing;

impl std::io::Write for StderrOrNothing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Logs go to stderr; `STEWARD_LOG` (or `RUST_LOG`) overrides the level.
pub fn init_logging(command: &Command) {
    let default = match command {
        Command::Serve { .. } | Command::Worker { .. } => "info",
        Command::Run { .. } => "warn,steward::progress=info",
        _ => "warn",
    };
    let filter = std::env::var("STEWARD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.to_string());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(|| StderrOrNothing)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config, no_worker } => {
            let role = if no_worker {
                serve::Role::ApiOnly
            } else {
                serve::Role::Both
            };
            serve::serve(&load_config(config)?, role).await
        }
        Command::Worker {
            config,
            listen,
            tags,
        } => {
            let mut config = load_config(config)?;
            if listen.is_some() {
                config.worker.listen = listen;
            }
            if let Some(tags) = tags {
                config.worker.tags = tags;
            }
            serve::serve(&config, serve::Role::WorkerOnly).await
        }
        Command::Run {
            file,
            input,
            config,
        } => run::run(&file, &input, &load_config(config)?).await,
        Command::Validate { files, config } => validate::validate(&files, &load_config(config)?),
        Command::Plugin { command } => plugin::dispatch(command),
        Command::Runs { command, remote } => runs::dispatch(
            command,
            remote.server.trim_end_matches('/'),
            remote.token.as_deref(),
        ),
        Command::Audit { args, remote } => audit::dispatch(
            args,
            remote.server.trim_end_matches('/'),
            remote.token.as_deref(),
        ),
        Command::Schedules { command, remote } => schedules::dispatch(
            command,
            remote.server.trim_end_matches('/'),
            remote.token.as_deref(),
        ),
        Command::Approve {
            id,
            by,
            on_behalf_of,
            reject,
            comment,
            server,
            token,
        } => {
            let decision = if reject { "reject" } else { "approve" };
            let body = serde_json::json!({
                "decision": decision,
                "by": by,
                "on_behalf_of": on_behalf_of,
                "comment": comment,
            });
            let url = format!("{}/v1/approvals/{id}", server.trim_end_matches('/'));
            let answer = runs::call("POST", &url, token.as_deref(), Some(&body))?;
            let recorded = &answer["decision"];
            println!(
                "{id}: {} by {} at {}",
                recorded["decision"].as_str().unwrap_or(decision),
                recorded["by"].as_str().unwrap_or("?"),
                recorded["at"].as_str().unwrap_or("?")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    scopes,
                    name,
                    subject,
                    expires,
                    config,
                },
        } => {
            token_create(
                &scopes,
                name,
                subject.as_deref(),
                expires.as_deref(),
                &load_config(config)?,
            )
            .await
        }
    }
}

fn load_config(path: Option<PathBuf>) -> anyhow::Result<Config> {
    Ok(Config::load(path.as_deref())?)
}
