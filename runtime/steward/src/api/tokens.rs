//! `POST /v1/tokens`, `GET /v1/tokens` and `DELETE /v1/tokens/{id}` (admin).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::{Example, JsonBody};
use super::path::PathParam;
use super::{AppState, Problem};
use crate::auth::{
    NewToken, Principal, issue_token, parse_expires_in, parse_scopes, parse_subject,
    service_subject,
};
use crate::store::StoredToken;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    #[serde(default)]
    name: Option<String>,
    scopes: Vec<String>,
    /// Who acts with the token; `svc:NAME` when left out.
    #[serde(default)]
    subject: Option<String>,
    /// A humantime lifetime (`90d`); no expiry when left out.
    #[serde(default)]
    expires_in: Option<String>,
}

impl Example for CreateToken {
    const EXAMPLE: &'static str =
        r#"{"subject": "max", "scopes": ["approvals:decide"], "expires_in": "90d"}"#;
}

/// A token as listed: everything but its secret and the secret's hash.
fn describe(token: &StoredToken) -> Value {
    json!({
        "id": token.id,
        "name": token.name,
        "subject": token.subject,
        "scopes": token.scopes,
        "created_at": token.created_at,
        "expires_at": token.expires_at,
        "last_used_at": token.last_used_at,
    })
}

/// 201 with the secret, shown this once.
pub async fn create(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
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
    let subject = body.subject.as_deref().map(parse_subject).transpose()?;
    let expires_in = body
        .expires_in
        .as_deref()
        .map(parse_expires_in)
        .transpose()?;
    let name = body
        .name
        .or_else(|| subject.clone())
        .unwrap_or_else(|| "api".to_string());
    let subject = subject.unwrap_or_else(|| service_subject(&name));
    let (token, secret) = issue_token(
        &app.store,
        NewToken {
            name: &name,
            subject,
            scopes,
            expires_in,
            by: &caller.subject,
        },
    )
    .await?;
    let mut answer = describe(&token);
    answer["token"] = json!(secret);
    Ok((StatusCode::CREATED, Json(answer)))
}

/// Tokens neither revoked nor expired, oldest first; never their secrets.
pub async fn list(State(app): State<Arc<AppState>>) -> Result<Json<Value>, Problem> {
    let tokens = app.store.live_tokens().await?;
    Ok(Json(
        json!({ "items": tokens.iter().map(describe).collect::<Vec<_>>() }),
    ))
}

/// 204 when revoked, 404 when there is no live token with this id.
pub async fn revoke(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
    PathParam(id): PathParam<String>,
) -> Result<StatusCode, Problem> {
    if app.store.revoke_token(&id, &caller.subject).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(&format!("token {id}")))
    }
}
