//! `GET /v1/approvals`, `GET /v1/approvals/{id}` and
//! `POST /v1/approvals/{id}` (a decision).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::{Example, JsonBody};
use super::path::PathParam;
use super::{AppState, Problem};
use crate::auth::Principal;
use crate::store::{ApprovalRow, Decided, Decision};

/// The approval as the API shows it; `ineligible` names the eligible
/// people the four-eyes rule bars (the run's starter, the requester), so a
/// quorum the others can no longer meet is visible.
fn describe(a: &ApprovalRow, decisions: &[Decision]) -> Value {
    let barred = a.barred();
    let ineligible: Vec<&String> = a.eligible.iter().filter(|n| barred.contains(n)).collect();
    json!({
        "id": a.id,
        "run_id": a.run_id,
        "workflow": a.workflow,
        "step": a.step,
        "level": a.level,
        "approvers": a.approvers,
        "eligible": a.eligible,
        "quorum": a.quorum,
        "requester": a.requester,
        "started_by": a.started_by,
        "allow_self_approval": a.allow_self_approval,
        "ineligible": ineligible,
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
/// decide (directly or through a group), and `approver=me` those the
/// caller's subject may, including through the identity provider's groups.
pub async fn list(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
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
    let approver = match query.approver.as_deref() {
        Some("me") => Some(caller.subject.as_str()),
        other => other,
    };
    let mut rows = app.store.pending_approvals(approver, limit).await?;
    if query.approver.as_deref() == Some("me") && !caller.approver_groups.is_empty() {
        // Groups the identity provider fills are not expanded into the
        // stored approvers, so the approvals listing one of the caller's
        // groups are picked from the oldest pending ones.
        let mine: Vec<String> = caller
            .approver_groups
            .iter()
            .map(|g| format!("group:{g}"))
            .collect();
        for row in app.store.pending_approvals(None, 500).await? {
            if row.approvers.iter().any(|a| mine.contains(a))
                && !rows.iter().any(|r| r.id == row.id)
            {
                rows.push(row);
            }
        }
        rows.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        rows.truncate(limit as usize);
    }
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
    /// Optional: the decider is the token's subject; when given it must be
    /// that subject, so a client cannot record someone else's decision.
    #[serde(default)]
    by: Option<String>,
    /// Admin tokens only: the approver this decision is entered for.
    #[serde(default)]
    on_behalf_of: Option<String>,
    #[serde(default)]
    comment: Option<String>,
}

impl Example for DecisionBody {
    const EXAMPLE: &'static str = r#"{"decision": "approve", "comment": "ok"}"#;
}

/// Who a decision is made as: the caller's subject, or with `on_behalf_of`
/// (admin only) the named approver, with the admin recorded as the one who
/// entered it. Nothing is recorded when this refuses.
fn acting_as(caller: &Principal, body: &DecisionBody) -> Result<(String, Option<String>), Problem> {
    let (acting, entered_by) = match body.on_behalf_of.as_deref().map(str::trim) {
        Some(name) if !caller.is_admin() => {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "on-behalf-not-allowed",
                "Only an admin decides on someone's behalf",
                format!(
                    "this token ({:?}) has no admin scope, so it may not decide on behalf of {name:?}: {name} decides with their own token",
                    caller.subject
                ),
            ));
        }
        Some("") => {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-decision",
                "Invalid decision",
                "on_behalf_of is empty: name the approver, or leave it out",
            ));
        }
        Some(name) => (name.to_string(), Some(caller.subject.clone())),
        None => (caller.subject.clone(), None),
    };
    if let Some(by) = body.by.as_deref().map(str::trim)
        && by != acting
    {
        let whose = if entered_by.is_some() {
            "named by on_behalf_of"
        } else {
            "the token's subject"
        };
        let hint = if caller.is_admin() && entered_by.is_none() {
            format!(" (an admin deciding for {by:?} sends on_behalf_of: {by:?})")
        } else {
            String::new()
        };
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "decider-mismatch",
            "Deciding as someone else",
            format!(
                "by is {by:?} but this decision is made as {acting:?}, {whose}{hint}; leave by out or make it {acting:?}"
            ),
        ));
    }
    Ok((acting, entered_by))
}

/// 201 with the recorded decision; 200 with the first one when this person
/// already decided; 403 for someone not among the approvers, for the run's
/// starter or the approval's requester, deciding themselves or as a
/// delegate (four eyes), for a `by` other than
/// the decider and for `on_behalf_of` without the admin scope; 409 once
/// the approval is closed.
pub async fn decide(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
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
    let (acting, entered_by) = acting_as(&caller, &body)?;
    let by = acting.as_str();
    let approval = app
        .store
        .approval(&id)
        .await?
        .ok_or_else(|| Problem::not_found(&format!("approval {id}")))?;
    // An approver decides for themselves; a delegate for the first
    // approver who handed them their approvals and has not decided yet.
    // Members of an approver group through the identity provider are not
    // in `eligible` (it lists the group's known members when the approval
    // opened), so the caller's own groups are checked against the listed
    // `group:NAME` approvers; they count only for the caller's own decision.
    let by_idp_group = entered_by.is_none()
        && approval.approvers.iter().any(|listed| {
            listed
                .strip_prefix("group:")
                .is_some_and(|group| caller.approver_groups.iter().any(|g| g == group))
        });
    let (decider, delegate) = if by_idp_group || approval.eligible.iter().any(|name| name == by) {
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
        // Approvers the four-eyes rule bars come last: a delegate of both
        // the starter and another approver decides for the other.
        let barred = approval.barred();
        let mut candidates: Vec<&String> = approval
            .eligible
            .iter()
            .filter(|name| delegators.contains(name))
            .collect();
        candidates.sort_by_key(|name| barred.contains(name));
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
    // Four eyes: the approver whose eligibility is used and the person
    // actually deciding (a delegate, or whoever on_behalf_of names) must
    // both differ from whoever asked. An admin entering a decision only
    // records someone else's, so is not judged.
    approval.check_four_eyes(&[decider.as_str(), by])?;
    let comment = body.comment.as_deref().filter(|c| !c.is_empty());
    match app
        .store
        .decide(
            &id,
            &decider,
            &body.decision,
            comment,
            delegate,
            entered_by.as_deref(),
        )
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

/// Refuses a delegation of someone else's approvals: otherwise any decide
/// token could hand itself anyone's approvals and decide them as a
/// delegate. An admin may act for anyone.
fn own_delegation(caller: &Principal, from: &str, to: Option<&str>) -> Result<(), Problem> {
    if caller.is_admin() || caller.subject == from || to == Some(caller.subject.as_str()) {
        return Ok(());
    }
    Err(Problem::new(
        StatusCode::FORBIDDEN,
        "not-your-delegation",
        "Not your delegation",
        format!(
            "this token acts as {:?}: it may hand over and revoke only its own approvals, not {from:?}'s (an admin may)",
            caller.subject
        ),
    ))
}

/// `POST /v1/delegations`: from now (or `starts_at`) until `ends_at`,
/// `to` may decide `from`'s approvals; each such decision names both.
/// Only `from` themselves (or an admin) may delegate.
pub async fn delegate(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
    JsonBody(body): JsonBody<NewDelegation>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let (from, to) = (body.from.trim(), body.to.trim());
    own_delegation(&caller, from, None)?;
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
    app.store
        .create_delegation(&delegation, &caller.subject)
        .await?;
    Ok((StatusCode::CREATED, Json(json!(delegation))))
}

/// `GET /v1/delegations`: those not revoked and not over.
pub async fn delegations(State(app): State<Arc<AppState>>) -> Result<Json<Value>, Problem> {
    Ok(Json(json!({ "items": app.store.delegations().await? })))
}

/// `DELETE /v1/delegations/{id}`: by either party or an admin.
pub async fn revoke_delegation(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
    PathParam(id): PathParam<String>,
) -> Result<StatusCode, Problem> {
    if !caller.is_admin() {
        let live = app.store.delegations().await?;
        let Some(d) = live.iter().find(|d| d.id == id) else {
            return Err(Problem::not_found(&format!("delegation {id}")));
        };
        own_delegation(&caller, &d.from, Some(&d.to))?;
    }
    if app.store.revoke_delegation(&id, &caller.subject).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(&format!("delegation {id}")))
    }
}
