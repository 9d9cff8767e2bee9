//! `itsm-sim`: serves the stand-in for ServiceNow, chat, a hardware vendor
//! and an identity system (see the library) until Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use itsm_sim::{Credentials, Options};

/// Serve a ServiceNow Table API subset, chat webhooks, a vendor and an
/// identity system over HTTP, for the examples (state is in memory).
#[derive(Parser)]
#[command(name = "itsm-sim", version)]
struct Args {
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
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let seed = match &args.seed {
        Some(path) => {
            let text = std::fs::read_to_string(path)
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
            basic: Some((args.user, args.password)),
            token: args.token,
        },
        demo_data: !args.empty,
        seed,
    })?;
    let listen = args.listen;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}: use --listen HOST:PORT"))?;
    let address = listener.local_addr()?;
    println!("itsm-sim listening on http://{address}");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
