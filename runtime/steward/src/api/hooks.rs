//! `POST /v1/hooks/{name}`: a signed delivery starts the hook's workflow
//! with the JSON body as input, or delivers the hook's signal with the body
//! as payload, keyed by the hook's key expression. Open to everyone: the
//! signature is the credential.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::body::{parse_json, read_body, require_json};
use super::path::PathParam;
use super::runs::{HOOK_KEY_PREFIX, start_run, summary};
use super::signals::deliver_keyed_as;
use super::{AppState, Problem};
use crate::hooks::{HookTarget, SIGNATURE_HEADER, Signature, SignatureError};
use crate::metrics;

/// Bodies up to this size are checked on the async thread: hashing them
/// takes microseconds. Larger ones go to tokio's blocking pool, so a few
/// deliveries of a megabyte cannot hold up every other request.
const HASH_INLINE_BYTES: usize = 64 * 1024;

/// 201 with the run (202 with the signal delivery for a signal hook); 401
/// for a missing, malformed, wrong or stale signature (a header past the
/// limits in [`crate::hooks`] is refused before the body is read); 409 for
/// a delivery already accepted (its run or signal delivery is named); 422
/// when a signal hook's key cannot be taken from the body.
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
    let workflow = match &hook.target {
        HookTarget::Workflow(workflow) => workflow,
        HookTarget::Signal { name: signal, key } => {
            return deliver_signal(&app, &name, signal, key, &input, &verified.replay_key).await;
        }
    };
    let (row, created) = start_run(
        &app,
        workflow,
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

/// A signal hook's delivery: the key rendered over the body, the body as
/// payload, the replay key as idempotency key (a replay is 409, as for
/// runs).
async fn deliver_signal(
    app: &AppState,
    hook: &str,
    signal: &str,
    key: &crate::workflow::expr::Template,
    body: &Value,
    replay_key: &str,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let key = crate::hooks::signal_key(key, body).map_err(|e| {
        metrics::global().hook_delivery(hook, "invalid");
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-signal-key",
            "The signal's key could not be taken from the body",
            format!("[hooks.{hook}] key: {e}: send a body the key expression can read"),
        )
    })?;
    let idempotency_key = format!("{HOOK_KEY_PREFIX}{hook}:{replay_key}");
    let started_by = format!("hook:{hook}");
    let (status, delivery) =
        deliver_keyed_as(app, signal, &key, body, Some(&idempotency_key), &started_by).await?;
    if status == StatusCode::OK {
        metrics::global().hook_delivery(hook, "replayed");
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "replayed-delivery",
            "Delivery already accepted",
            format!(
                "this signed delivery was already accepted as signal delivery {}: sign a new delivery with a new t",
                delivery["id"].as_str().unwrap_or_default()
            ),
        )
        .with("delivery_id", delivery["id"].clone()));
    }
    metrics::global().hook_delivery(hook, "accepted");
    Ok((status, delivery))
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
