//! `POST /v1/runs/{id}/retry`: a failed, rejected or cancelled run resumed
//! in place from the step that ended it (or `from_step`), keeping the
//! outputs of the steps before; optionally with a corrected input and on
//! the latest version of its workflow. Which steps run again is
//! `steward_core::run::retry`'s to say; the store flips the run back to
//! running atomically with the `run_retried` event.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::{Example, OptionalJsonBody};
use super::path::PathParam;
use super::runs::{client_key, invalid_input, view};
use super::{AppState, Problem};
use crate::auth::Principal;
use crate::catalog::CatalogError;
use crate::run::{Event, Recorded, RetryError, RunState, Status, plan_retry};
use crate::store::{Placement, RetryOutcome, RetryRun, RunRow};
use crate::workflow::Workflow;

/// What a retry may change; every field is optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RetryBody {
    /// Resume from this step instead of the one that ended the run.
    #[serde(default)]
    from_step: Option<String>,
    /// The corrected input, checked against the workflow's schema.
    #[serde(default)]
    input: Option<Value>,
    /// Continue on the latest deployed version of the workflow.
    #[serde(default)]
    upgrade: bool,
}

impl Example for RetryBody {
    const EXAMPLE: &'static str =
        r#"{"from_step": "...", "input": {...}, "upgrade": true}, any of them, or no body"#;
}

/// `POST /v1/runs/{id}/retry`: 200 with the run (as `GET /v1/runs/{id}`
/// shows it), running again; the same answer for a repeated request with
/// the same `Idempotency-Key`. 409 for a run that is still going or
/// succeeded, 422 for an unknown `from_step`, an input the schema refuses
/// or an upgrade that lacks steps the run finished.
pub async fn retry(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
    PathParam(id): PathParam<String>,
    headers: HeaderMap,
    OptionalJsonBody(body): OptionalJsonBody<RetryBody>,
) -> Result<Json<Value>, Problem> {
    let key = client_key(&headers)?;
    let row = app
        .store
        .run(&id)
        .await?
        .ok_or_else(|| Problem::not_found(&format!("run {id}")))?;
    let history = app.store.events(&id).await?;
    if let Some(answer) = repeated(&app, &row, &history, key, &body).await? {
        return Ok(answer);
    }
    let mut state = RunState::new(&row.id, &row.workflow, row.version, row.created_at);
    for recorded in &history {
        state.apply(recorded);
    }
    refuse_unless_retryable(&id, state.status)?;
    let workflow = target_workflow(&app, &row, body.upgrade).await?;
    match &body.input {
        Some(input) => workflow
            .check_input_for_client(input)
            .map_err(invalid_input)?,
        // The run's input must suit the version it continues on.
        None if workflow.version != row.version => workflow
            .check_input_for_client(&state.input)
            .map_err(|errors| {
                let mut problem = invalid_input(errors);
                problem.detail = format!(
                    "the run's input does not suit version {} of workflow {}: pass a corrected `input`\n{}",
                    workflow.version, workflow.name, problem.detail
                );
                problem
            })?,
        None => {}
    }
    let plan = plan_retry(&workflow, &state, body.from_step.as_deref()).map_err(retry_refused)?;
    let seq = history.last().map_or(1, |r| r.seq + 1);
    let event = Recorded::at(
        seq,
        chrono::Utc::now(),
        Event::RunRetried {
            by: caller.subject.clone(),
            from_step: body.from_step.clone(),
            reset: plan.reset,
            input: body.input.clone(),
            version: body.upgrade.then_some(workflow.version),
            idempotency_key: key.map(str::to_string),
        },
    );
    let outcome = app
        .store
        .retry_run(RetryRun {
            id: &id,
            event: &event,
            input: body.input.as_ref(),
            upgrade: body
                .upgrade
                .then(|| (workflow.version, Placement::of(&workflow))),
            actor: &caller.subject,
        })
        .await?;
    match outcome {
        RetryOutcome::Retried => {
            app.worker.wake();
            Ok(Json(current_view(&app, &id).await?))
        }
        RetryOutcome::NotRetryable(status) => {
            // A concurrent request with the same key may have won the race.
            let history = app.store.events(&id).await?;
            if let Some(answer) = repeated(&app, &row, &history, key, &body).await? {
                return Ok(answer);
            }
            let status = Status::parse(&status).unwrap_or(Status::Running);
            refuse_unless_retryable(&id, status)?;
            Err(changed(&id))
        }
        RetryOutcome::Changed => Err(changed(&id)),
        RetryOutcome::NotFound => Err(Problem::not_found(&format!("run {id}"))),
    }
}

/// The answer to a request repeating an earlier retry's `Idempotency-Key`:
/// the run as it is now when the bodies agree, 422 when they differ; `None`
/// when no retry of this run used the key.
async fn repeated(
    app: &AppState,
    row: &RunRow,
    history: &[Recorded],
    key: Option<&str>,
    body: &RetryBody,
) -> Result<Option<Json<Value>>, Problem> {
    let Some(key) = key else {
        return Ok(None);
    };
    let earlier = history.iter().find_map(|r| match &r.event {
        Event::RunRetried {
            idempotency_key: Some(used),
            from_step,
            input,
            version,
            ..
        } if used == key => Some((from_step, input, version.is_some())),
        _ => None,
    });
    let Some((from_step, input, upgrade)) = earlier else {
        return Ok(None);
    };
    if *from_step != body.from_step || *input != body.input || upgrade != body.upgrade {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency-Key reused with another body",
            format!(
                "run {} was retried with this Idempotency-Key and a different from_step, input or upgrade: use a new key for a new retry",
                row.id
            ),
        )
        .with("run_id", json!(row.id)));
    }
    Ok(Some(Json(current_view(app, &row.id).await?)))
}

/// The run as `GET /v1/runs/{id}` shows it now.
async fn current_view(app: &AppState, id: &str) -> Result<Value, Problem> {
    let row = app
        .store
        .run(id)
        .await?
        .ok_or_else(|| Problem::not_found(&format!("run {id}")))?;
    view(app, &row).await
}

/// 409 unless the run failed, was rejected or was cancelled, saying what
/// to do instead.
fn refuse_unless_retryable(id: &str, status: Status) -> Result<(), Problem> {
    match status {
        Status::Failed | Status::Rejected | Status::Cancelled => Ok(()),
        Status::Succeeded => Err(Problem::new(
            StatusCode::CONFLICT,
            "run-succeeded",
            "The run succeeded",
            format!(
                "run {id} succeeded: there is nothing to retry; start it again with POST /v1/runs/{id}/rerun"
            ),
        )),
        live => Err(Problem::new(
            StatusCode::CONFLICT,
            "run-not-finished",
            "The run has not finished",
            format!(
                "run {id} is {}: wait for it to fail, or cancel it first (POST /v1/runs/{id}/cancel), then retry it",
                live.as_str()
            ),
        )),
    }
}

/// 409: the run moved on while this retry was prepared.
fn changed(id: &str) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "run-changed",
        "The run changed during the retry",
        format!(
            "run {id} changed while the retry was prepared: read it again and retry if it is still failed, rejected or cancelled"
        ),
    )
}

/// The version the run continues on: its own, or with `upgrade` the
/// latest deployed one. 409 when that is not deployed.
async fn target_workflow(
    app: &AppState,
    row: &RunRow,
    upgrade: bool,
) -> Result<Arc<Workflow>, Problem> {
    let gone = |detail: String| {
        Problem::new(
            StatusCode::CONFLICT,
            "workflow-gone",
            "The run's workflow is no longer deployed",
            detail,
        )
    };
    if upgrade {
        return app.catalog.latest(&row.workflow).ok_or_else(|| {
            gone(format!(
                "workflow {} is not deployed any more: deploy it again to retry run {}",
                row.workflow, row.id
            ))
        });
    }
    match app.catalog.version(&row.workflow, row.version).await {
        Ok(Some(workflow)) => Ok(workflow),
        Ok(None) | Err(CatalogError::Invalid(_)) => Err(gone(format!(
            "version {} of workflow {} cannot be loaded any more: retry with \"upgrade\": true to continue on the latest version",
            row.version, row.workflow
        ))),
        Err(CatalogError::Store(e)) => Err(e.into()),
    }
}

/// 422 for a retry the run's steps do not allow, naming the steps.
fn retry_refused(error: RetryError) -> Problem {
    let detail = error.to_string();
    match error {
        RetryError::UnknownStep { known, .. } => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown-step",
            "No such step",
            detail,
        )
        .with("steps", json!(known)),
        RetryError::MissingSteps { steps, .. } => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "upgrade-lacks-steps",
            "The latest version lacks steps the run finished",
            detail,
        )
        .with("steps", json!(steps)),
    }
}
