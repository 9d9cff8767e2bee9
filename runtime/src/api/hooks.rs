//! `POST /v1/hooks/{name}`: a signed delivery starts the hook's workflow
//! with the JSON body as input. Open to everyone: the signature is the
//! credential.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::body::{parse_json, read_body, require_json};
use super::path::PathParam;
use super::runs::{start_run, summary};
use super::{AppState, Problem};
use crate::hooks::{SIGNATURE_HEADER, SignatureError};
use crate::metrics;

/// 201 with the run; 401 for a missing, wrong or stale signature; 409 for
/// a delivery already accepted (its run is named).
pub async fn deliver(
    State(app): State<Arc<AppState>>,
    PathParam(name): PathParam<String>,
    request: Request,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let hook = app
        .hooks
        .get(&name)
        .ok_or_else(|| Problem::not_found(&format!("hook {name}")))?;
    let header = request
        .headers()
        .get(SIGNATURE_HEADER)
        .map(|v| v.to_str().unwrap_or("").to_string());
    let json_type = require_json(&request);
    let body = read_body(request, &app).await?;
    let now = chrono::Utc::now().timestamp();
    let verified = hook
        .verify(&name, header.as_deref(), &body, now)
        .map_err(|e| {
            let (kind, outcome) = match e {
                SignatureError::Stale { .. } => ("stale-signature", "stale"),
                _ => ("invalid-signature", "invalid"),
            };
            metrics::global().hook_delivery(&name, outcome);
            tracing::warn!(hook = %name, "delivery refused: {e}");
            Problem::new(
                StatusCode::UNAUTHORIZED,
                kind,
                "Signature refused",
                e.to_string(),
            )
        })?;
    json_type?;
    let input: Value = parse_json(
        &body,
        app.limits.max_json_depth,
        "a JSON document: it becomes the run's input",
    )?;
    let (row, created) = start_run(&app, &hook.workflow, input, Some(&verified.replay_key)).await?;
    metrics::global().hook_delivery(&name, if created { "accepted" } else { "replayed" });
    if !created {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "replayed-delivery",
            "Delivery already accepted",
            format!(
                "this signed delivery already started run {}: sign a new delivery with a new t",
                row.id
            ),
        )
        .with("run_id", json!(row.id)));
    }
    Ok((StatusCode::CREATED, Json(summary(&row))))
}
