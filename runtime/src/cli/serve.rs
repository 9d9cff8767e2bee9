//! `steward serve`: loads plugins and workflows, then serves HTTP.
//! The REST API and the durable executor arrive with their issues; today
//! the server answers `/healthz` and lists what it loaded.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use steward::config::Config;
use steward::engine::MemoryKeyValue;
use steward::plugins::load_plugins;
use steward::workflow::load_dir;

pub async fn serve(config: &Config) -> anyhow::Result<ExitCode> {
    let set = load_plugins(config, Arc::new(MemoryKeyValue::default()), true)?;
    for warning in &set.warnings {
        tracing::warn!("{warning}");
    }
    let plugin_names = set.names();
    let mut workflows = Vec::new();
    for dir in &config.workflows {
        if !dir.exists() {
            tracing::warn!(
                "workflow folder {} does not exist: nothing loaded from it",
                dir.display()
            );
            continue;
        }
        for result in load_dir(dir, &plugin_names).map_err(anyhow::Error::msg)? {
            match result {
                Ok(w) => {
                    tracing::info!(workflow = %w.name, version = w.version, "loaded {}", w.file);
                    workflows.push(
                        json!({"name": w.name, "version": w.version, "description": w.description}),
                    );
                }
                Err(errors) => tracing::error!("workflow not loaded:\n{errors}"),
            }
        }
    }
    let plugins: Vec<_> = set
        .engine
        .plugins()
        .iter()
        .map(|p| json!({"name": p.manifest.name, "version": p.manifest.version, "origin": p.origin, "sha256": p.digest}))
        .collect();
    let app = Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route(
            "/v1/workflows",
            get(move || async move { Json(json!({"items": workflows})) }),
        )
        .route(
            "/v1/plugins",
            get(move || async move { Json(json!({"items": plugins})) }),
        );
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}: is another server running? set listen or STEWARD_LISTEN",
                config.listen
            )
        })?;
    tracing::info!("steward listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}
