//! `steward audit`: the server's audit log, from the command line.

use std::process::ExitCode;

use anyhow::Context as _;

use super::runs;

/// What to list; every filter narrows, as in `GET /v1/audit`.
#[derive(clap::Args)]
pub struct AuditArgs {
    /// Only what this subject did (`max`, `svc:NAME`, `admin`, `system`).
    #[arg(long)]
    actor: Option<String>,
    /// Only this action (`approval.decide`, `delegation.set`,
    /// `delegation.end`, `run.cancel`, `token.create`, `token.revoke`,
    /// `workflow.deploy`).
    #[arg(long)]
    action: Option<String>,
    /// Only entries about this approval, delegation, run or token id, or
    /// `NAME@VERSION`.
    #[arg(long)]
    target: Option<String>,
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// The page after an earlier one (the `--cursor` it printed last).
    #[arg(long)]
    cursor: Option<String>,
}

/// Lists entries newest first, one a line, with the cursor of the next
/// page when there is one; needs an admin token.
pub fn dispatch(args: AuditArgs, server: &str, token: Option<&str>) -> anyhow::Result<ExitCode> {
    let mut url = url::Url::parse(&format!("{server}/v1/audit"))
        .with_context(|| format!("the server address {server:?} is not a URL"))?;
    {
        // Encoded, so a value with `&`, `#` or spaces stays one value.
        let mut query = url.query_pairs_mut();
        query.append_pair("limit", &args.limit.to_string());
        let filters = [
            ("actor", args.actor),
            ("action", args.action),
            ("target", args.target),
            ("cursor", args.cursor),
        ];
        for (key, value) in filters {
            if let Some(value) = value {
                query.append_pair(key, &value);
            }
        }
    }
    let body = runs::call("GET", url.as_str(), token, None)?;
    let items = body["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        println!("no entries");
    }
    for entry in items {
        println!(
            "{}  {:<16} {:<16} {}  {}",
            entry["at"].as_str().unwrap_or("?"),
            entry["action"].as_str().unwrap_or("?"),
            entry["actor"].as_str().unwrap_or("?"),
            entry["target"].as_str().unwrap_or("?"),
            entry["detail"]
        );
    }
    if let Some(next) = body["next_cursor"].as_str() {
        println!("more: steward audit --cursor {next} (with the same filters)");
    }
    Ok(ExitCode::SUCCESS)
}
