//! `/v1/groups`: approver groups over the API, beside the read-only ones
//! of `steward.toml`. A change applies to approvals opened after it.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::{Example, JsonBody};
use super::path::PathParam;
use super::{AppState, Problem};
use crate::auth::Principal;
use crate::groups::GroupSource;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupBody {
    members: Vec<String>,
}

impl Example for GroupBody {
    const EXAMPLE: &'static str = r#"{"members": ["dana", "eli"]}"#;
}

fn describe(name: &str, members: &[String], source: GroupSource) -> Value {
    json!({"name": name, "members": members, "source": source.as_str()})
}

/// `GET /v1/groups`: every group, from `steward.toml` and the API.
pub async fn list(State(app): State<Arc<AppState>>) -> Json<Value> {
    let items: Vec<Value> = app
        .groups
        .all()
        .iter()
        .map(|(name, members, source)| describe(name, members, *source))
        .collect();
    Json(json!({ "items": items }))
}

pub async fn show(
    State(app): State<Arc<AppState>>,
    PathParam(name): PathParam<String>,
) -> Result<Json<Value>, Problem> {
    app.groups.refresh(&app.store).await?;
    match (app.groups.members(&name), app.groups.source(&name)) {
        (Some(members), Some(source)) => Ok(Json(describe(&name, &members, source))),
        _ => Err(Problem::not_found(&format!("group {name}"))),
    }
}

fn configured(name: &str) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "group-from-config",
        "Group is defined in steward.toml",
        format!(
            "group {name} is defined under [groups] in steward.toml: change it there and restart"
        ),
    )
}

fn invalid(detail: String) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-group",
        "Invalid group",
        detail,
    )
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// `PUT /v1/groups/{name}` (admin): 201 new, 200 replaced.
pub async fn set(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
    PathParam(name): PathParam<String>,
    JsonBody(body): JsonBody<GroupBody>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    if !valid_name(&name) {
        return Err(invalid(format!(
            "group name {name:?}: use 1 to 100 letters, digits, '-', '_' or '.'"
        )));
    }
    if app.groups.source(&name) == Some(GroupSource::Config) {
        return Err(configured(&name));
    }
    let mut members: Vec<String> = Vec::new();
    for member in body.members {
        let member = member.trim().to_string();
        if member.is_empty() || member.starts_with("group:") {
            return Err(invalid(format!(
                "members: {member:?} is not a person's name (groups do not nest)"
            )));
        }
        if !members.contains(&member) {
            members.push(member);
        }
    }
    if members.is_empty() {
        return Err(invalid(
            "members: a group needs at least one member (DELETE removes a group)".into(),
        ));
    }
    let created = app
        .store
        .set_group(&name, &members, &caller.subject)
        .await?;
    app.groups.refresh(&app.store).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(describe(&name, &members, GroupSource::Api))))
}

/// `DELETE /v1/groups/{name}` (admin): 204.
pub async fn delete(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
    PathParam(name): PathParam<String>,
) -> Result<StatusCode, Problem> {
    if app.groups.source(&name) == Some(GroupSource::Config) {
        return Err(configured(&name));
    }
    if !app.store.delete_group(&name, &caller.subject).await? {
        return Err(Problem::not_found(&format!("group {name}")));
    }
    app.groups.refresh(&app.store).await?;
    Ok(StatusCode::NO_CONTENT)
}
