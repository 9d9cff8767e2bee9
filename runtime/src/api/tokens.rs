//! `POST /v1/tokens` and `DELETE /v1/tokens/{id}` (admin).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::{Example, JsonBody};
use super::path::PathParam;
use super::{AppState, Problem};
use crate::auth::{issue_token, parse_scopes};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    #[serde(default)]
    name: Option<String>,
    scopes: Vec<String>,
}

impl Example for CreateToken {
    const EXAMPLE: &'static str = r#"{"scopes": ["runs:read"]}"#;
}

/// 201 with the secret, shown this once.
pub async fn create(
    State(app): State<Arc<AppState>>,
    JsonBody(body): JsonBody<CreateToken>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let scopes = parse_scopes(&body.scopes).map_err(|e| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-scopes",
            "Invalid scopes",
            e,
        )
    })?;
    let name = body.name.unwrap_or_else(|| "api".to_string());
    let (token, secret) = issue_token(&app.store, &name, scopes).await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "id": token.id, "name": token.name, "scopes": token.scopes, "token": secret }),
        ),
    ))
}

/// 204 when revoked, 404 when there is no live token with this id.
pub async fn revoke(
    State(app): State<Arc<AppState>>,
    PathParam(id): PathParam<String>,
) -> Result<StatusCode, Problem> {
    if app.store.revoke_token(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(&format!("token {id}")))
    }
}
