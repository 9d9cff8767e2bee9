//! `steward dev itsm-sim`: the local stand-in for ServiceNow, chat, a
//! hardware vendor and an identity system (see `steward::itsm_sim`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use steward::itsm_sim::{self, Credentials, Options};

#[derive(Subcommand)]
pub enum DevCommand {
    /// Serve a ServiceNow Table API subset, chat webhooks, a vendor and an
    /// identity system over HTTP, for the examples (state is in memory).
    ItsmSim {
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: String,
        /// Basic-auth user for the Table API.
        #[arg(long, default_value = "steward")]
        user: String,
        /// Basic-auth password for the Table API.
        #[arg(
            long,
            env = "ITSM_SIM_PASSWORD",
            default_value = "steward",
            hide_env_values = true
        )]
        password: String,
        /// Also accept this OAuth bearer token.
        #[arg(long, env = "ITSM_SIM_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Start without the demo records (CMDB items, stock, people).
        #[arg(long)]
        empty: bool,
        /// A JSON file of more records: {"table": [record, ...]}.
        #[arg(long)]
        seed: Option<PathBuf>,
    },
}

pub async fn dispatch(command: DevCommand) -> anyhow::Result<ExitCode> {
    match command {
        DevCommand::ItsmSim {
            listen,
            user,
            password,
            token,
            empty,
            seed,
        } => {
            let seed = match seed {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read the seed {}", path.display()))?;
                    Some(serde_json::from_str(&text).with_context(|| {
                        format!(
                            "{} is not JSON: expected {{\"table\": [records]}}",
                            path.display()
                        )
                    })?)
                }
                None => None,
            };
            let router = itsm_sim::router(Options {
                credentials: Credentials {
                    basic: Some((user, password)),
                    token,
                },
                demo_data: !empty,
                seed,
            })?;
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("cannot listen on {listen}: use --listen HOST:PORT"))?;
            let address = listener.local_addr()?;
            tracing::info!(%address, "itsm-sim listening: Table API at /api/now/table, chat at /chat");
            println!("itsm-sim listening on http://{address}");
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
