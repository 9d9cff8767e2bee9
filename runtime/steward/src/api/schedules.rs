//! `/v1/schedules`: cron schedules over the API. Schedules declared in a
//! workflow's `triggers` are listed here too; they can be paused and
//! resumed, and are otherwise edited in the workflow.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::{Example, JsonBody};
use super::path::PathParam;
use super::{AppState, Problem};
use crate::auth::Principal;
use crate::schedule::{
    CatchUp, CronSchedule, InvalidSchedule, Overlap, Schedule, ScheduleSpec, Source, parse_window,
};

/// The fields a client may set; all optional on `PATCH`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ScheduleFields {
    workflow: Option<String>,
    cron: Option<String>,
    timezone: Option<String>,
    input: Option<Value>,
    overlap: Option<String>,
    catch_up: Option<String>,
    catch_up_window: Option<String>,
    paused: Option<bool>,
}

impl Example for ScheduleFields {
    const EXAMPLE: &'static str = r#"{"workflow": "weekly-sla-review", "cron": "0 9 * * MON", "timezone": "Europe/Berlin", "input": {}, "overlap": "skip", "catch_up": "last", "catch_up_window": "24h", "paused": false}"#;
}

impl ScheduleFields {
    /// Whether anything but `paused` is set.
    fn edits_definition(&self) -> bool {
        self.workflow.is_some()
            || self.cron.is_some()
            || self.timezone.is_some()
            || self.input.is_some()
            || self.overlap.is_some()
            || self.catch_up.is_some()
            || self.catch_up_window.is_some()
    }
}

fn invalid(e: InvalidSchedule) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-schedule",
        "Invalid schedule",
        e.to_string(),
    )
    .with("field", json!(e.field))
}

/// Applies `fields` over `spec` and checks the result: the cron and zone
/// parse, the workflow is deployed, the input matches its schema.
async fn apply(
    app: &AppState,
    mut spec: ScheduleSpec,
    fields: ScheduleFields,
) -> Result<(ScheduleSpec, CronSchedule), Problem> {
    if let Some(v) = fields.workflow {
        spec.workflow = v;
    }
    if let Some(v) = fields.cron {
        spec.cron = v;
    }
    if let Some(v) = fields.timezone {
        spec.timezone = v;
    }
    if let Some(v) = fields.input {
        spec.input = v;
    }
    if let Some(v) = fields.overlap {
        spec.overlap = Overlap::parse(&v).map_err(invalid)?;
    }
    if let Some(v) = fields.catch_up {
        spec.catch_up = CatchUp::parse(&v).map_err(invalid)?;
    }
    if let Some(v) = fields.catch_up_window {
        spec.catch_up_window = parse_window(&v).map_err(invalid)?;
    }
    if let Some(v) = fields.paused {
        spec.paused = v;
    }
    let cron = spec.parse_cron().map_err(invalid)?;
    if !spec.input.is_object() {
        return Err(invalid(InvalidSchedule::new(
            "input",
            "the input must be a JSON object",
        )));
    }
    let workflow = app
        .catalog
        .current(&spec.workflow)
        .await
        .map_err(Problem::internal)?
        .ok_or_else(|| {
            invalid(InvalidSchedule::new(
                "workflow",
                format!(
                    "workflow {:?} is not deployed: deploy it first (PUT /v1/workflows/{0})",
                    spec.workflow
                ),
            ))
        })?;
    if let Err(errors) = workflow.check_input_for_client(&spec.input) {
        return Err(invalid(InvalidSchedule::new(
            "input",
            format!(
                "does not match workflow {}'s input schema: {}",
                spec.workflow,
                errors.join("; ")
            ),
        )));
    }
    Ok((spec, cron))
}

fn summary(s: &Schedule) -> Value {
    json!({
        "id": s.id,
        "workflow": s.spec.workflow,
        "cron": s.spec.cron,
        "timezone": s.spec.timezone,
        "input": s.spec.input,
        "overlap": s.spec.overlap.as_str(),
        "catch_up": s.spec.catch_up.as_str(),
        "catch_up_window": humantime::format_duration(s.spec.catch_up_window).to_string(),
        "paused": s.spec.paused,
        "source": s.source.as_str(),
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "next_fire_at": if s.spec.paused { None } else { s.next_fire_at },
        "last_run_id": s.last_run_id,
        "queued_fire_at": s.queued_fire_at,
    })
}

/// The schedule with its next fire times, its latest fires and how many
/// fires ended each way.
async fn detail(app: &AppState, s: &Schedule) -> Result<Value, Problem> {
    let mut body = summary(s);
    let upcoming = match (s.spec.paused, s.spec.parse_cron(), s.next_fire_at) {
        (false, Ok(cron), Some(next)) => {
            let mut times = vec![next];
            times.extend(cron.upcoming(next, 4));
            times
        }
        _ => Vec::new(),
    };
    body["next_fires"] = json!(upcoming);
    let fires: Vec<Value> = app
        .store
        .fires(&s.id, 20)
        .await?
        .into_iter()
        .map(|f| {
            json!({
                "fire_at": f.fire_at,
                "outcome": f.outcome,
                "reason": f.reason,
                "run_id": f.run_id,
                "recorded_at": f.recorded_at,
            })
        })
        .collect();
    body["fires"] = json!(fires);
    let mut counts = serde_json::Map::new();
    for outcome in ["fired", "skipped", "queued", "missed", "failed"] {
        counts.insert(outcome.into(), json!(0));
    }
    for (outcome, n) in app.store.fire_counts(&s.id).await? {
        counts.insert(outcome, json!(n));
    }
    body["counts"] = Value::Object(counts);
    Ok(body)
}

async fn load(app: &AppState, id: &str) -> Result<Schedule, Problem> {
    app.store
        .schedule(id)
        .await?
        .ok_or_else(|| Problem::not_found(&format!("schedule {id}")))
}

/// `POST /v1/schedules`: 201 with the new schedule.
pub async fn create(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
    JsonBody(fields): JsonBody<ScheduleFields>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let missing = |field: &str| {
        invalid(InvalidSchedule::new(
            field,
            format!("{field} is required: see the example"),
        ))
    };
    let workflow = fields.workflow.clone().ok_or_else(|| missing("workflow"))?;
    let cron = fields.cron.clone().ok_or_else(|| missing("cron"))?;
    let (spec, cron) = apply(&app, ScheduleSpec::new(&workflow, &cron), fields).await?;
    let now = Utc::now();
    let schedule = Schedule {
        id: uuid::Uuid::now_v7().to_string(),
        next_fire_at: cron.next_after(now),
        spec,
        source: Source::Api,
        created_at: now,
        updated_at: now,
        last_run_id: None,
        queued_fire_at: None,
    };
    app.store
        .create_schedule(&schedule, &caller.subject)
        .await?;
    app.scheduler.wake();
    Ok((StatusCode::CREATED, Json(detail(&app, &schedule).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    workflow: Option<String>,
}

/// `GET /v1/schedules[?workflow=NAME]`.
pub async fn list(
    State(app): State<Arc<AppState>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, Problem> {
    let Query(query) = query.map_err(|e| Problem::invalid_query(format!("{e}: use workflow")))?;
    let items: Vec<Value> = app
        .store
        .list_schedules(query.workflow.as_deref())
        .await?
        .iter()
        .map(summary)
        .collect();
    Ok(Json(json!({ "items": items })))
}

/// `GET /v1/schedules/{id}`.
pub async fn show(
    State(app): State<Arc<AppState>>,
    PathParam(id): PathParam<String>,
) -> Result<Json<Value>, Problem> {
    let schedule = load(&app, &id).await?;
    Ok(Json(detail(&app, &schedule).await?))
}

fn from_workflow(s: &Schedule) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "schedule-from-workflow",
        "Schedule belongs to a workflow",
        format!(
            "schedule {} comes from the triggers of workflow {}: edit or remove the trigger there \
             and deploy the workflow (only paused can be set here)",
            s.id, s.spec.workflow
        ),
    )
}

/// `PATCH /v1/schedules/{id}`: edit, pause (`{"paused": true}`) or resume.
/// A changed cron or time zone, or a resume, starts the clock from now:
/// fire times that passed while paused are not caught up.
pub async fn update(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
    PathParam(id): PathParam<String>,
    JsonBody(fields): JsonBody<ScheduleFields>,
) -> Result<Json<Value>, Problem> {
    let mut schedule = load(&app, &id).await?;
    if schedule.source == Source::Workflow && fields.edits_definition() {
        return Err(from_workflow(&schedule));
    }
    let before = schedule.spec.clone();
    let (spec, cron) = apply(&app, before.clone(), fields).await?;
    let now = Utc::now();
    let restart_clock = spec.cron != before.cron
        || spec.timezone != before.timezone
        || (before.paused && !spec.paused);
    if restart_clock {
        schedule.next_fire_at = cron.next_after(now);
    }
    if spec != before {
        schedule.spec = spec;
        schedule.updated_at = now;
        if !app
            .store
            .update_schedule(&schedule, &caller.subject)
            .await?
        {
            return Err(Problem::not_found(&format!("schedule {id}")));
        }
        app.scheduler.wake();
    }
    Ok(Json(detail(&app, &schedule).await?))
}

/// `DELETE /v1/schedules/{id}`: 204; runs it started are not touched.
pub async fn delete(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
    PathParam(id): PathParam<String>,
) -> Result<StatusCode, Problem> {
    let schedule = load(&app, &id).await?;
    if schedule.source == Source::Workflow {
        return Err(from_workflow(&schedule));
    }
    if !app.store.delete_schedule(&id, &caller.subject).await? {
        return Err(Problem::not_found(&format!("schedule {id}")));
    }
    Ok(StatusCode::NO_CONTENT)
}
