//! `steward schedules list|show|create|pause|resume|delete`: the server's
//! cron schedules from the command line.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};

use super::runs::call;

#[derive(Subcommand)]
pub enum SchedulesCommand {
    /// Every schedule, with its next fire time.
    List {
        #[arg(long)]
        workflow: Option<String>,
    },
    /// One schedule with its next fire times and latest fires, as JSON.
    Show { id: String },
    /// Create a schedule.
    Create {
        /// The workflow each fire starts.
        #[arg(long)]
        workflow: String,
        /// 5 fields (minute first), 6 with seconds first, or a macro such as @daily.
        #[arg(long)]
        cron: String,
        /// An IANA time zone.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// The runs' input as JSON.
        #[arg(long, default_value = "{}")]
        input: String,
        /// skip, queue, allow or cancel_previous.
        #[arg(long)]
        overlap: Option<String>,
        /// none, last or all.
        #[arg(long)]
        catch_up: Option<String>,
        /// How far back catch-up reaches, e.g. 24h.
        #[arg(long)]
        catch_up_window: Option<String>,
        /// Create it paused.
        #[arg(long)]
        paused: bool,
    },
    /// Stop firing until resumed.
    Pause { id: String },
    /// Fire again, from now on.
    Resume { id: String },
    /// Delete a schedule made through the API.
    Delete { id: String },
}

pub fn dispatch(
    command: SchedulesCommand,
    server: &str,
    token: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let one = |id: &str| format!("{server}/v1/schedules/{id}");
    match command {
        SchedulesCommand::List { workflow } => {
            let mut url = format!("{server}/v1/schedules");
            if let Some(w) = workflow {
                url.push_str(&format!("?workflow={w}"));
            }
            let body = call("GET", &url, token, None)?;
            let items = body["items"].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                println!("no schedules");
            }
            for s in &items {
                print_line(s);
            }
        }
        SchedulesCommand::Show { id } => {
            let body = call("GET", &one(&id), token, None)?;
            println!("{}", serde_json::to_string_pretty(&body)?);
        }
        SchedulesCommand::Create {
            workflow,
            cron,
            timezone,
            input,
            overlap,
            catch_up,
            catch_up_window,
            paused,
        } => {
            let input: Value = serde_json::from_str(&input).map_err(|e| {
                anyhow::anyhow!("--input is not JSON ({e}): pass an object such as '{{\"n\": 1}}'")
            })?;
            let mut body = json!({
                "workflow": workflow, "cron": cron, "timezone": timezone,
                "input": input, "paused": paused,
            });
            for (key, value) in [
                ("overlap", overlap),
                ("catch_up", catch_up),
                ("catch_up_window", catch_up_window),
            ] {
                if let Some(v) = value {
                    body[key] = json!(v);
                }
            }
            let created = call(
                "POST",
                &format!("{server}/v1/schedules"),
                token,
                Some(&body),
            )?;
            print_line(&created);
        }
        SchedulesCommand::Pause { id } => {
            print_line(&call(
                "PATCH",
                &one(&id),
                token,
                Some(&json!({"paused": true})),
            )?);
        }
        SchedulesCommand::Resume { id } => {
            print_line(&call(
                "PATCH",
                &one(&id),
                token,
                Some(&json!({"paused": false})),
            )?);
        }
        SchedulesCommand::Delete { id } => {
            call("DELETE", &one(&id), token, None)?;
            println!("{id}: deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `ID  WORKFLOW  CRON (ZONE)  next: TIME | paused`.
fn print_line(s: &Value) {
    let state = if s["paused"] == true {
        "paused".to_string()
    } else {
        format!("next {}", s["next_fire_at"].as_str().unwrap_or("never"))
    };
    println!(
        "{}  {:<20} {:<16} ({})  {state}",
        s["id"].as_str().unwrap_or("?"),
        s["workflow"].as_str().unwrap_or("?"),
        s["cron"].as_str().unwrap_or("?"),
        s["timezone"].as_str().unwrap_or("?"),
    );
}
