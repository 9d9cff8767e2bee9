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
use crate::hooks::{SIGNATURE_HEADER, Signature, SignatureError};
use crate::metrics;

/// Bodies up to this size are checked on the async thread: hashing them
/// takes microseconds. Larger ones go to tokio's blocking pool, so a few
/// deliveries of a megabyte cannot hold up every other request.
const HASH_INLINE_BYTES: usize = 64 * 1024;

/// 201 with the run; 401 for a missing, malformed, wrong or stale signature
/// (a header past the limits in [`crate::hooks`] is refused before the body
/// is read); 409 for a delivery already accepted (its run is named).
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
        .map(|v| v.to_str().unwrap_or(""));
    let signature = Signature::parse(header).map_err(|e| refused(&name, e))?;
    let json_type = require_json(&request);
    let body = read_body(request, &app).await?;
    let now = chrono::Utc::now().timestamp();
    let checked = if body.len() <= HASH_INLINE_BYTES {
        hook.check(&name, &signature, &body, now)
    } else {
        let (hook, name, body) = (hook.clone(), name.clone(), body.clone());
        tokio::task::spawn_blocking(move || hook.check(&name, &signature, &body, now))
            .await
            .map_err(Problem::internal)?
    };
    let verified = checked.map_err(|e| refused(&name, e))?;
    json_type?;
    let input: Value = parse_json(
        &body,
        app.limits.max_json_depth,
        "a JSON document: it becomes the run's input",
    )?;
    let started_by = format!("hook:{name}");
    let (row, created) = start_run(
        &app,
        &hook.workflow,
        input,
        Some(&verified.replay_key),
        &started_by,
        None,
    )
    .await?;
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

/// Counts and logs a refused delivery; the answer is the error's problem.
fn refused(name: &str, e: SignatureError) -> Problem {
    let outcome = match e {
        SignatureError::Stale { .. } => "stale",
        _ => "invalid",
    };
    metrics::global().hook_delivery(name, outcome);
    tracing::warn!(hook = %name, "delivery refused: {e}");
    Problem::from(e)
}
