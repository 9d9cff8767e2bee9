//! Starting and reading runs.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::{Example, OptionalJsonBody};
use super::path::PathParam;
use super::{AppState, Problem};
use crate::auth::Principal;
use crate::run::{RunState, Status};
use crate::store::{CancelRequest, RunRow};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    #[serde(default)]
    input: Option<Value>,
}

impl Example for StartRun {
    const EXAMPLE: &'static str = r#"{"input": {...}} or no body"#;
}

/// `POST /v1/workflows/{name}/runs`: 201 with the new run; with an
/// `Idempotency-Key` already used for this workflow, 200 with that run.
pub async fn start(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
    PathParam(name): PathParam<String>,
    headers: HeaderMap,
    OptionalJsonBody(body): OptionalJsonBody<StartRun>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let input = body.input.unwrap_or_else(|| json!({}));
    let key = client_key(&headers)?;
    let (row, created) = start_run(&app, &name, input, key, &caller.subject, None).await?;
    Ok((created_or_found(created), Json(summary(&row))))
}

/// 201 for a run created now, 200 for one an earlier request with the
/// same `Idempotency-Key` created.
fn created_or_found(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

/// A client's `Idempotency-Key`, if it sent one: 1 to 255 visible ASCII
/// characters, not in the namespaces of webhooks and schedules.
pub(super) fn client_key(headers: &HeaderMap) -> Result<Option<&str>, Problem> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty()
                && k.len() <= 255
                && !k.starts_with(HOOK_KEY_PREFIX)
                && !k.starts_with(crate::schedule::FIRE_KEY_PREFIX)
        })
        .map(Some)
        .ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-idempotency-key",
                "Invalid Idempotency-Key",
                "use 1 to 255 visible ASCII characters, not starting with `hook:` or `schedule:`",
            )
        })
}

/// Idempotency keys of webhook deliveries start with this, so a client's
/// own keys never collide with them.
pub(super) const HOOK_KEY_PREFIX: &str = "hook:";

/// Starts a run of the latest `workflow` after checking `input` against its
/// schema, recording `started_by` so its approvals can refuse the starter;
/// with a `key` used before, returns that run (`false`), or 422 when that
/// run was started with another input (or as the rerun of another run).
/// `rerun_of` links a rerun to the run it repeats.
pub(super) async fn start_run(
    app: &AppState,
    workflow: &str,
    input: Value,
    key: Option<&str>,
    started_by: &str,
    rerun_of: Option<&str>,
) -> Result<(RunRow, bool), Problem> {
    let workflow = app
        .catalog
        .latest(workflow)
        .ok_or_else(|| Problem::not_found(&format!("workflow {workflow}")))?;
    workflow
        .check_input_for_client(&input)
        .map_err(invalid_input)?;
    let id = uuid::Uuid::now_v7().to_string();
    let (row, created) = app
        .worker
        .start_rerun(workflow, &id, &input, key, started_by, rerun_of)
        .await?;
    if !created && (row.input != input || row.rerun_of.as_deref() != rerun_of) {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency-Key reused with another body",
            format!(
                "run {} was started with this Idempotency-Key and a different input or origin: use a new key for a new run",
                row.id
            ),
        )
        .with("run_id", json!(row.id)));
    }
    Ok((row, created))
}

/// `GET /v1/runs/{id}`: the run with its steps.
pub async fn show(
    State(app): State<Arc<AppState>>,
    PathParam(id): PathParam<String>,
) -> Result<Json<Value>, Problem> {
    let row = app
        .store
        .run(&id)
        .await?
        .ok_or_else(|| Problem::not_found(&format!("run {id}")))?;
    let mut state = RunState::new(&row.id, &row.workflow, row.version, row.created_at);
    for recorded in app.store.events(&id).await? {
        state.apply(&recorded);
    }
    let mut body = summary(&row);
    body["input"] = row.input.clone();
    body["output"] = row.output.clone().unwrap_or(Value::Null);
    body["error"] = json!(row.error);
    body["steps"] = json!(state.steps);
    if let Some(clock) = &state.sla {
        let workflow = app
            .catalog
            .version(&row.workflow, row.version)
            .await
            .ok()
            .flatten();
        let sla = workflow.as_ref().and_then(|w| w.sla.as_ref());
        let calendar = sla
            .and_then(|s| s.calendar.as_ref())
            .and_then(|c| app.calendars.get(c));
        body["sla"] = sla_view(&state, clock, sla, calendar, chrono::Utc::now());
    }
    Ok(Json(body))
}

/// The SLA as a user reads it: target, due time (moved by pauses),
/// elapsed share, paused time, breached.
fn sla_view(
    state: &RunState,
    clock: &crate::run::state::SlaState,
    sla: Option<&crate::workflow::model::Sla>,
    calendar: Option<&crate::calendar::Calendar>,
    now: chrono::DateTime<chrono::Utc>,
) -> Value {
    let pause = sla.and_then(|s| s.pause_while.as_deref());
    let end = state.finished_at.unwrap_or(now);
    let paused = state.sla_paused(pause, calendar, end);
    let elapsed = state.sla_elapsed(pause, calendar, now);
    let mut view = json!({
        "priority": clock.priority,
        "target_ms": clock.target_ms,
        "paused_ms": paused.num_milliseconds(),
        "paused": state.finished_at.is_none() && state.sla_is_paused(pause),
        "breached": clock.breached,
        "breached_at": clock.breached_at,
    });
    if let Some(target) = clock.target_ms {
        let due = crate::run::state::clock_add(
            calendar,
            state.started_at,
            chrono::Duration::milliseconds(target as i64) + paused,
        );
        view["due_at"] = json!(due);
        view["elapsed_share"] = json!(elapsed.num_milliseconds() as f64 / target.max(1) as f64);
        if state.status.is_terminal() {
            view["met"] = json!(!clock.breached && state.status == Status::Succeeded);
        }
    }
    if let Some(target) = clock.response_target_ms {
        let responded = state.sla_responded_at(sla.and_then(|s| s.responded_when.as_deref()));
        let due = crate::run::state::clock_add(
            calendar,
            state.started_at,
            chrono::Duration::milliseconds(target as i64) + state.sla_paused(pause, calendar, end),
        );
        view["response"] = json!({
            "target_ms": target,
            "due_at": due,
            "responded_at": responded,
            "breached": clock.response_breached,
            "breached_at": clock.response_breached_at,
        });
    }
    view
}

/// `GET /v1/runs/{id}/events`: the run's history.
pub async fn events(
    State(app): State<Arc<AppState>>,
    PathParam(id): PathParam<String>,
) -> Result<Json<Value>, Problem> {
    if app.store.run(&id).await?.is_none() {
        return Err(Problem::not_found(&format!("run {id}")));
    }
    Ok(Json(json!({ "items": app.store.events(&id).await? })))
}

/// 422 for an input its workflow's schema refuses, each problem listed.
fn invalid_input(errors: Vec<String>) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-input",
        "Input does not match the workflow's schema",
        errors.join("\n"),
    )
    .with("errors", json!(errors))
}

pub(super) fn summary(row: &RunRow) -> Value {
    json!({
        "id": row.id,
        "workflow": row.workflow,
        "version": row.version,
        "status": row.status,
        "created_at": row.created_at,
        "finished_at": row.finished_at,
        "started_by": row.started_by,
        "rerun_of": row.rerun_of,
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CancelRun {
    #[serde(default)]
    reason: Option<String>,
}

impl Example for CancelRun {
    const EXAMPLE: &'static str = r#"{"reason": "..."} or no body"#;
}

/// `POST /v1/runs/{id}/cancel`: 202 once the request is recorded; the run
/// becomes `cancelled` between steps or at once when it waits. 409 when the
/// run already finished.
pub async fn cancel(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
    PathParam(id): PathParam<String>,
    OptionalJsonBody(body): OptionalJsonBody<CancelRun>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let reason = body
        .reason
        .unwrap_or_else(|| "cancelled through the API".to_string());
    match app
        .store
        .request_cancel(&id, &reason, &caller.subject)
        .await?
    {
        CancelRequest::Requested => {
            app.worker.wake();
            let row = app
                .store
                .run(&id)
                .await?
                .ok_or_else(|| Problem::not_found(&format!("run {id}")))?;
            let mut body = summary(&row);
            body["cancel_requested"] = json!(reason);
            Ok((StatusCode::ACCEPTED, Json(body)))
        }
        CancelRequest::AlreadyFinished(status) => Err(Problem::new(
            StatusCode::CONFLICT,
            "run-finished",
            "The run already finished",
            format!("run {id} is {status}: there is nothing to cancel"),
        )),
        CancelRequest::NotFound => Err(Problem::not_found(&format!("run {id}"))),
    }
}

/// `POST /v1/runs/{id}/rerun`: 201 with a new run of the latest version
/// of the run's workflow, with the same input unless `input` gives another,
/// started by the caller and linked by `rerun_of`. 409 while the run has
/// not finished (cancel it first, or wait).
pub async fn rerun(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
    PathParam(id): PathParam<String>,
    headers: HeaderMap,
    OptionalJsonBody(body): OptionalJsonBody<StartRun>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let key = client_key(&headers)?;
    let old = app
        .store
        .run(&id)
        .await?
        .ok_or_else(|| Problem::not_found(&format!("run {id}")))?;
    let finished = Status::parse(&old.status).is_some_and(|s| s.is_terminal());
    if !finished {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "run-not-finished",
            "The run has not finished",
            format!(
                "run {id} is {}: wait for it to finish, or cancel it, then rerun it",
                old.status
            ),
        ));
    }
    if app.catalog.latest(&old.workflow).is_none() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "workflow-gone",
            "The run's workflow is no longer deployed",
            format!(
                "workflow {} is not deployed any more: deploy it again to rerun run {id}",
                old.workflow
            ),
        ));
    }
    let input = body.input.unwrap_or_else(|| old.input.clone());
    let (row, created) =
        start_run(&app, &old.workflow, input, key, &caller.subject, Some(&id)).await?;
    Ok((created_or_found(created), Json(summary(&row))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    workflow: Option<String>,
    status: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
}

/// `GET /v1/runs?workflow=&status=&limit=&cursor=`: newest first;
/// `next_cursor` fetches the next page and is null on the last one.
pub async fn list(
    State(app): State<Arc<AppState>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, Problem> {
    let Query(query) = query
        .map_err(|e| Problem::invalid_query(format!("{e}: use workflow, status, limit, cursor")))?;
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => Some(Status::parse(text).ok_or_else(|| {
            let known: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
            Problem::invalid_query(format!(
                "status {text:?} is not one of {}",
                known.join(", ")
            ))
        })?),
    };
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(Problem::invalid_query("limit is 1 to 500"));
    }
    // A cursor is the last run of the previous page: anything else would
    // silently give the first page, or an empty one that looks like the end.
    if let Some(cursor) = query.cursor.as_deref()
        && !app.store.run_exists(cursor).await?
    {
        return Err(Problem::invalid_query(format!(
            "cursor {cursor:?} is not one this server gave: pass the next_cursor of the previous page"
        )));
    }
    let rows = app
        .store
        .list_runs(
            query.workflow.as_deref(),
            status,
            query.cursor.as_deref(),
            limit,
        )
        .await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id.clone()))
        .flatten();
    let items: Vec<Value> = rows.iter().map(summary).collect();
    Ok(Json(json!({ "items": items, "next_cursor": next_cursor })))
}
