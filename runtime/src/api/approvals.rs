//! `GET /v1/approvals`, `GET /v1/approvals/{id}` and
//! `POST /v1/approvals/{id}` (a decision).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::{Example, JsonBody};
use super::path::PathParam;
use super::{AppState, Problem};
use crate::store::{ApprovalRow, Decided, Decision};

fn describe(a: &ApprovalRow, decisions: &[Decision]) -> Value {
    json!({
        "id": a.id,
        "run_id": a.run_id,
        "workflow": a.workflow,
        "step": a.step,
        "level": a.level,
        "approvers": a.approvers,
        "eligible": a.eligible,
        "quorum": a.quorum,
        "decisions": decisions,
        "due_at": a.due_at,
        "status": a.status,
        "created_at": a.created_at,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    approver: Option<String>,
    limit: Option<i64>,
}

/// Pending approvals, oldest first; `approver=NAME` keeps those NAME may
/// decide (directly or through a group).
pub async fn list(
    State(app): State<Arc<AppState>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, Problem> {
    let Query(query) =
        query.map_err(|e| Problem::invalid_query(format!("{e}: use status, approver, limit")))?;
    if let Some(status) = query.status.as_deref().filter(|s| *s != "pending") {
        return Err(Problem::invalid_query(format!(
            "status {status:?}: only pending approvals are listed (closed ones are in each run's history)"
        )));
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(Problem::invalid_query("limit is 1 to 500"));
    }
    let rows = app
        .store
        .pending_approvals(query.approver.as_deref(), limit)
        .await?;
    let mut items = Vec::with_capacity(rows.len());
    for row in &rows {
        items.push(describe(row, &app.store.approval_decisions(&row.id).await?));
    }
    Ok(Json(json!({ "items": items })))
}

pub async fn show(
    State(app): State<Arc<AppState>>,
    PathParam(id): PathParam<String>,
) -> Result<Json<Value>, Problem> {
    let row = app
        .store
        .approval(&id)
        .await?
        .ok_or_else(|| Problem::not_found(&format!("approval {id}")))?;
    Ok(Json(describe(
        &row,
        &app.store.approval_decisions(&id).await?,
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    decision: String,
    by: String,
    #[serde(default)]
    comment: Option<String>,
}

impl Example for DecisionBody {
    const EXAMPLE: &'static str = r#"{"decision": "approve", "by": "dana", "comment": "ok"}"#;
}

/// 201 with the recorded decision; 200 with the first one when this person
/// already decided; 403 for someone not among the approvers; 409 once the
/// approval is closed.
pub async fn decide(
    State(app): State<Arc<AppState>>,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody<DecisionBody>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    if body.decision != "approve" && body.decision != "reject" {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-decision",
            "Invalid decision",
            format!("decision {:?}: use approve or reject", body.decision),
        ));
    }
    let by = body.by.trim();
    let approval = app
        .store
        .approval(&id)
        .await?
        .ok_or_else(|| Problem::not_found(&format!("approval {id}")))?;
    // An approver decides for themselves; a delegate for the first
    // approver who handed them their approvals and has not decided yet.
    let (decider, delegate) = if approval.eligible.iter().any(|name| name == by) {
        (by.to_string(), None)
    } else {
        let delegators = app.store.delegators_of(by).await?;
        let decided: Vec<String> = app
            .store
            .approval_decisions(&id)
            .await?
            .into_iter()
            .map(|d| d.by)
            .collect();
        let candidates: Vec<&String> = approval
            .eligible
            .iter()
            .filter(|name| delegators.contains(name))
            .collect();
        match candidates
            .iter()
            .find(|name| !decided.contains(name))
            .or(candidates.first())
        {
            Some(from) => (from.to_string(), Some(by)),
            None => {
                return Err(Problem::new(
                    StatusCode::FORBIDDEN,
                    "not-an-approver",
                    "Not an approver",
                    format!(
                        "{by:?} may not decide approval {id}: its approvers are {} (and none of them delegated to {by:?})",
                        approval.eligible.join(", ")
                    ),
                ));
            }
        }
    };
    let comment = body.comment.as_deref().filter(|c| !c.is_empty());
    match app
        .store
        .decide(&id, &decider, &body.decision, comment, delegate)
        .await?
    {
        Decided::Recorded(decision) => {
            app.worker.wake();
            Ok((
                StatusCode::CREATED,
                Json(json!({ "approval": id, "decision": decision })),
            ))
        }
        Decided::Already(first) => Ok((
            StatusCode::OK,
            Json(json!({ "approval": id, "decision": first })),
        )),
        Decided::Closed => Err(Problem::new(
            StatusCode::CONFLICT,
            "approval-closed",
            "The approval is closed",
            format!(
                "approval {id} was already settled: see run {} for its outcome",
                approval.run_id
            ),
        )
        .with("run_id", json!(approval.run_id))),
        Decided::NotFound => Err(Problem::not_found(&format!("approval {id}"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDelegation {
    from: String,
    to: String,
    #[serde(default)]
    starts_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    ends_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Example for NewDelegation {
    const EXAMPLE: &'static str = r#"{"from": "dana", "to": "eli", "starts_at": "2026-12-20T00:00:00Z", "ends_at": "2027-01-04T00:00:00Z"}"#;
}

/// `POST /v1/delegations`: from now (or `starts_at`) until `ends_at`,
/// `to` may decide `from`'s approvals; each such decision names both.
pub async fn delegate(
    State(app): State<Arc<AppState>>,
    JsonBody(body): JsonBody<NewDelegation>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let (from, to) = (body.from.trim(), body.to.trim());
    let invalid = |detail: String| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-delegation",
            "Invalid delegation",
            detail,
        )
    };
    if from.is_empty() || to.is_empty() || from == to {
        return Err(invalid("from and to must be two different people".into()));
    }
    let now = chrono::Utc::now();
    let starts_at = body.starts_at.unwrap_or(now);
    if body.ends_at.is_some_and(|end| end <= starts_at) {
        return Err(invalid("ends_at must be after starts_at".into()));
    }
    let delegation = crate::store::Delegation {
        id: uuid::Uuid::now_v7().to_string(),
        from: from.to_string(),
        to: to.to_string(),
        starts_at,
        ends_at: body.ends_at,
        created_at: now,
    };
    app.store.create_delegation(&delegation).await?;
    Ok((StatusCode::CREATED, Json(json!(delegation))))
}

/// `GET /v1/delegations`: those not revoked and not over.
pub async fn delegations(State(app): State<Arc<AppState>>) -> Result<Json<Value>, Problem> {
    Ok(Json(json!({ "items": app.store.delegations().await? })))
}

/// `DELETE /v1/delegations/{id}`.
pub async fn revoke_delegation(
    State(app): State<Arc<AppState>>,
    PathParam(id): PathParam<String>,
) -> Result<StatusCode, Problem> {
    if app.store.revoke_delegation(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(&format!("delegation {id}")))
    }
}
