//! `steward runs list|show|rerun|retry`: the server's runs, from the command line.

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use serde_json::Value;

#[derive(Subcommand)]
pub enum RunsCommand {
    /// Runs, newest first.
    List {
        #[arg(long)]
        workflow: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// The page after an earlier one (the `--cursor` it printed last).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One run with its steps, as JSON.
    Show { id: String },
    /// Start a finished run again (the latest version of its workflow),
    /// with its input or `--input`; prints the new run, linked by `rerun_of`.
    Rerun {
        id: String,
        /// The new run's input as JSON, instead of the old run's.
        #[arg(long)]
        input: Option<String>,
    },
    /// Resume a failed, rejected or cancelled run in place from the step
    /// that ended it, keeping the outputs of the steps before; prints the
    /// run.
    Retry {
        id: String,
        /// Resume from this step instead (it and every step after it run
        /// again).
        #[arg(long)]
        from_step: Option<String>,
        /// The corrected input as JSON.
        #[arg(long)]
        input: Option<String>,
        /// Continue on the latest deployed version of the workflow.
        #[arg(long)]
        upgrade: bool,
    },
}

/// Where the server is: `--server`, `STEWARD_SERVER`, or the default listen address.
pub fn dispatch(
    command: RunsCommand,
    server: &str,
    token: Option<&str>,
) -> anyhow::Result<ExitCode> {
    match command {
        RunsCommand::List {
            workflow,
            status,
            limit,
            cursor,
        } => {
            let mut url = url::Url::parse(&format!("{server}/v1/runs"))
                .with_context(|| format!("the server address {server:?} is not a URL"))?;
            {
                // Encoded, so a value with `&`, `#` or spaces stays one value.
                let mut query = url.query_pairs_mut();
                query.append_pair("limit", &limit.to_string());
                let filters = [
                    ("workflow", workflow),
                    ("status", status),
                    ("cursor", cursor),
                ];
                for (key, value) in filters {
                    if let Some(value) = value {
                        query.append_pair(key, &value);
                    }
                }
            }
            let body = get(url.as_str(), token)?;
            let items = body["items"].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                println!("no runs");
            }
            for run in items {
                println!(
                    "{}  {:<10} {}@{}  {}",
                    run["id"].as_str().unwrap_or("?"),
                    run["status"].as_str().unwrap_or("?"),
                    run["workflow"].as_str().unwrap_or("?"),
                    run["version"],
                    run["created_at"].as_str().unwrap_or("")
                );
            }
            if let Some(next) = body["next_cursor"].as_str() {
                println!("more: steward runs list --cursor {next} (with the same filters)");
            }
        }
        RunsCommand::Show { id } => {
            let body = get(&format!("{server}/v1/runs/{id}"), token)?;
            println!("{}", serde_json::to_string_pretty(&body)?);
        }
        RunsCommand::Rerun { id, input } => {
            let mut body = serde_json::json!({});
            if let Some(text) = input {
                body["input"] = parse_input(&text)?;
            }
            let run = call(
                "POST",
                &format!("{server}/v1/runs/{id}/rerun"),
                token,
                Some(&body),
            )?;
            println!("{}", serde_json::to_string_pretty(&run)?);
        }
        RunsCommand::Retry {
            id,
            from_step,
            input,
            upgrade,
        } => {
            let mut body = serde_json::json!({});
            if let Some(step) = from_step {
                body["from_step"] = Value::String(step);
            }
            if let Some(text) = input {
                body["input"] = parse_input(&text)?;
            }
            if upgrade {
                body["upgrade"] = Value::Bool(true);
            }
            let run = call(
                "POST",
                &format!("{server}/v1/runs/{id}/retry"),
                token,
                Some(&body),
            )?;
            println!("{}", serde_json::to_string_pretty(&run)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--input`'s text as JSON.
fn parse_input(text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).with_context(|| format!("--input is not JSON: {text}"))
}

fn get(url: &str, token: Option<&str>) -> anyhow::Result<Value> {
    call("GET", url, token, None)
}

/// One request to the server's API; a problem answer becomes an error that
/// quotes its detail, an unreachable server one that says how to point at it.
pub fn call(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    let mut request = ureq::request(method, url);
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    let sent = match body {
        Some(body) => request
            .set("content-type", "application/json")
            .send_string(&body.to_string()),
        None => request.call(),
    };
    match sent {
        Ok(response) => {
            let text = response.into_string()?;
            if text.is_empty() {
                return Ok(Value::Null); // 204
            }
            Ok(serde_json::from_str(&text)?)
        }
        Err(ureq::Error::Status(status, response)) => {
            let body: Value = serde_json::from_str(&response.into_string().unwrap_or_default())
                .unwrap_or_default();
            let detail = body["detail"].as_str().unwrap_or("no detail");
            bail!("the server answered {status}: {detail}")
        }
        Err(e) => Err(e).with_context(|| {
            format!(
                "cannot reach {url}: is `steward serve` running? set --server or STEWARD_SERVER"
            )
        }),
    }
}
