//! `GET /v1/workflows`, `GET /v1/workflows/{name}` and
//! `PUT /v1/workflows/{name}` (deploy, validated first).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::{Extension, Json};
use serde_json::{Value, json};

use super::body::read_body;
use super::path::PathParam;
use super::{AppState, Problem};
use crate::auth::Principal;
use crate::catalog::CatalogError;
use crate::store::StoreError;
use crate::workflow::{Workflow, load_str};

fn describe(w: &Workflow) -> Value {
    json!({"name": w.name, "version": w.version, "description": w.description})
}

/// Every workflow name with its latest version.
pub async fn list(State(app): State<Arc<AppState>>) -> Json<Value> {
    let items: Vec<Value> = app.catalog.list().iter().map(|w| describe(w)).collect();
    Json(json!({ "items": items }))
}

/// The latest version with its YAML, and every deployed version.
pub async fn show(
    State(app): State<Arc<AppState>>,
    PathParam(name): PathParam<String>,
) -> Result<Json<Value>, Problem> {
    let workflow = app
        .catalog
        .latest(&name)
        .ok_or_else(|| Problem::not_found(&format!("workflow {name}")))?;
    let versions: Vec<Value> = app
        .store
        .workflow_versions(&name)
        .await?
        .into_iter()
        .map(|(version, deployed_at)| json!({"version": version, "deployed_at": deployed_at}))
        .collect();
    let mut body = describe(&workflow);
    body["source"] = json!(workflow.source);
    body["versions"] = json!(versions);
    Ok(Json(body))
}

/// Media types a workflow may be sent as.
const YAML_TYPES: [&str; 5] = [
    "application/yaml",
    "application/x-yaml",
    "text/yaml",
    "text/x-yaml",
    "text/plain",
];

/// Validates the YAML body and deploys it: 201 for a new version, 200 when
/// this exact text is already deployed, 422 with the same
/// `FILE:LINE:COL: field: message` errors as `steward validate`, 409 when
/// the version is deployed with other content.
pub async fn deploy(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
    PathParam(name): PathParam<String>,
    request: Request,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if !YAML_TYPES.contains(&content_type.as_str()) {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            format!(
                "send the workflow's YAML with Content-Type: application/yaml (got {content_type:?})"
            ),
        ));
    }
    let bytes = read_body(request, &app).await?;
    let source = String::from_utf8(bytes.to_vec()).map_err(|_| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-body",
            "Invalid request body",
            "the workflow must be UTF-8 text",
        )
    })?;
    let file = format!("{name}.yaml");
    let workflow = load_str(&source, &file, &app.catalog.plugins()).map_err(|errors| {
        let lines: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-workflow",
            "The workflow does not validate",
            lines.join("\n"),
        )
        .with("errors", json!(lines))
    })?;
    if workflow.name != name {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "name-mismatch",
            "The workflow's name differs from the path",
            format!(
                "{file}: name: the document is named {:?}: PUT it to /v1/workflows/{} or rename it",
                workflow.name, workflow.name
            ),
        ));
    }
    let workflow = Arc::new(workflow);
    let problems = match app.catalog.link_errors(&workflow, &[]).await {
        Ok(problems) => problems,
        Err(CatalogError::Store(e)) => return Err(e.into()),
        Err(CatalogError::Invalid(e)) => return Err(Problem::internal(e)),
    };
    if !problems.is_empty() {
        let lines: Vec<String> = problems.iter().map(|e| e.to_string()).collect();
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-workflow",
            "The workflow does not validate",
            lines.join("\n"),
        )
        .with("errors", json!(lines)));
    }
    match app.catalog.deploy(workflow, &caller.subject).await {
        Ok((workflow, created)) => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            tracing::info!(workflow = %workflow.name, version = workflow.version, created, "deployed through the API");
            Ok((status, Json(describe(&workflow))))
        }
        Err(CatalogError::Store(e @ StoreError::VersionConflict { .. })) => Err(Problem::new(
            StatusCode::CONFLICT,
            "version-conflict",
            "Version already deployed",
            e.to_string(),
        )),
        Err(CatalogError::Store(e)) => Err(e.into()),
        Err(CatalogError::Invalid(e)) => Err(Problem::internal(e)),
    }
}
