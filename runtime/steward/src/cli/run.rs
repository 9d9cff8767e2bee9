//! `steward run FILE --input JSON`: one run, in this process, with the same
//! interpreter as the server. The output JSON goes to stdout; progress and
//! logs to stderr.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use steward::config::Config;
use steward::engine::MemoryKeyValue;
use steward::executor::Executor;
use steward::plugins::load_plugins;
use steward::run::Status;
use steward::workflow::load_file;

pub async fn run(file: &Path, input: &str, config: &Config) -> anyhow::Result<ExitCode> {
    // Bad input is a usage error (exit 2), like input that fails the
    // workflow's schema.
    let input = match read_input(input) {
        Ok(input) => input,
        Err(e) => {
            eprintln!("{e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let set = load_plugins(config, Arc::new(MemoryKeyValue::default()), true)?;
    // Grants matter to operators of a server; here a denial explains itself
    // in the step's error, so the start-up warnings stay quiet.
    for warning in &set.warnings {
        tracing::info!("{warning}");
    }
    let workflow = match load_file(file, &set.names()) {
        Ok(w) => Arc::new(w),
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    if let Err(errors) = workflow.check_input(&input) {
        for e in errors {
            eprintln!("{e}");
        }
        return Ok(ExitCode::from(2));
    }
    let run_id = uuid::Uuid::now_v7().to_string();
    let executor = Executor::new(set.engine.clone(), config.env_json())
        .with_groups(steward::groups::Groups::new(config.groups.clone()))
        .with_calendars(config.calendars()?)
        .with_default_retry(config.defaults.retry.policy())
        .with_for_each_max_items(config.defaults.for_each_max_items)
        .with_max_workflow_depth(config.defaults.max_workflow_depth);
    let outcome = executor.run(workflow, &run_id, input).await;
    let state = outcome.state;
    match state.status {
        Status::Succeeded => {
            let output = state.output.unwrap_or_default();
            println!("{}", serde_json::to_string_pretty(&output)?);
            Ok(ExitCode::SUCCESS)
        }
        status => {
            let reason = state
                .error
                .map(|e| e.message)
                .unwrap_or_else(|| "no reason recorded".into());
            eprintln!("run {run_id} {}: {reason}", status.as_str());
            Ok(ExitCode::from(1))
        }
    }
}

/// `--input` is JSON text, or `@FILE` holding it.
fn read_input(arg: &str) -> anyhow::Result<serde_json::Value> {
    let text = match arg.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("--input: cannot read {path}"))?
        }
        None => arg.to_string(),
    };
    serde_json::from_str(&text)
        .with_context(|| "--input is not valid JSON (write e.g. --input '{\"user\": \"ada\"}')")
}
