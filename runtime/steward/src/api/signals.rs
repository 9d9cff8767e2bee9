//! Signals over HTTP: `POST /v1/runs/{id}/signals/{name}` delivers one to
//! a run, `POST /v1/signals/{name}` one keyed for every run waiting with
//! its key, `GET /v1/runs/{id}/signals` lists a run's deliveries. A signal
//! resumes a run as an approval decision does, so delivering one needs
//! `runs:write`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::{Example, JsonBody, OptionalJsonBody};
use super::path::PathParam;
use super::runs::client_key;
use super::{AppState, Problem};
use crate::auth::Principal;
use crate::store::{Delivered, NewSignal, SignalDelivery};

/// A run-targeted delivery's body: the payload itself, `null` without one.
#[derive(Deserialize, Default)]
#[serde(transparent)]
pub struct Payload(Value);

impl Example for Payload {
    const EXAMPLE: &'static str = "any JSON document (the signal's payload) or no body";
}

/// A keyed delivery's body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keyed {
    key: Value,
    #[serde(default)]
    payload: Value,
}

impl Example for Keyed {
    const EXAMPLE: &'static str = r#"{"key": "INC0010001", "payload": {...}}"#;
}

/// `POST /v1/runs/{id}/signals/{name}`: 202 with the delivery, kept until
/// the run's next (or current) `wait_for` on `name` takes it; 200 with the
/// first delivery for a repeated `Idempotency-Key`; 404 for an unknown run,
/// 409 for a finished one.
pub async fn deliver_to_run(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
    PathParam((id, name)): PathParam<(String, String)>,
    headers: HeaderMap,
    OptionalJsonBody(Payload(payload)): OptionalJsonBody<Payload>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    check_name(&name)?;
    let scoped = client_key(&headers)?.map(|k| format!("run:{id}:{name}:{k}"));
    let delivery_id = uuid::Uuid::now_v7().to_string();
    let new = NewSignal {
        id: &delivery_id,
        name: &name,
        run_id: Some(&id),
        key: None,
        payload: &payload,
        idempotency_key: scoped.as_deref(),
        actor: &caller.subject,
    };
    answer(&app, &name, app.store.deliver_signal(&new).await?)
}

/// `POST /v1/signals/{name}` with `{key, payload}`: 202 with the delivery,
/// for every run created before it arrived that waits (now or later) on
/// `name` with this key.
pub async fn deliver_keyed(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
    PathParam(name): PathParam<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Keyed>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    check_name(&name)?;
    let key = crate::run::signal::key_text(&body.key).ok_or_else(|| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-signal-key",
            "Invalid signal key",
            format!(
                "key is {}: send the key the waiting runs rendered, a non-empty string or a number",
                body.key
            ),
        )
    })?;
    let scoped = client_key(&headers)?.map(|k| format!("signal:{name}:{k}"));
    deliver_keyed_as(
        &app,
        &name,
        &key,
        &body.payload,
        scoped.as_deref(),
        &caller.subject,
    )
    .await
}

/// Records a keyed delivery (a webhook's too) and answers it.
pub(super) async fn deliver_keyed_as(
    app: &AppState,
    name: &str,
    key: &str,
    payload: &Value,
    idempotency_key: Option<&str>,
    actor: &str,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let delivery_id = uuid::Uuid::now_v7().to_string();
    let new = NewSignal {
        id: &delivery_id,
        name,
        run_id: None,
        key: Some(key),
        payload,
        idempotency_key,
        actor,
    };
    answer(app, name, app.store.deliver_signal(&new).await?)
}

/// `GET /v1/runs/{id}/signals`: the deliveries addressed to the run and the
/// keyed ones it took, oldest first, each with `consumed` and the `step`
/// that took it.
pub async fn list(
    State(app): State<Arc<AppState>>,
    PathParam(id): PathParam<String>,
) -> Result<Json<Value>, Problem> {
    if !app.store.run_exists(&id).await? {
        return Err(Problem::not_found(&format!("run {id}")));
    }
    let items: Vec<Value> = app
        .store
        .run_signals(&id)
        .await?
        .into_iter()
        .map(|s| {
            let mut item = view(&s.delivery);
            item["consumed"] = json!(s.consumed);
            item["step"] = json!(s.step);
            item["consumed_at"] = json!(s.consumed_at);
            item
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}

fn check_name(name: &str) -> Result<(), Problem> {
    crate::workflow::model::check_signal_name(name).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-signal-name",
            "Invalid signal name",
            e,
        )
    })
}

fn answer(
    app: &AppState,
    name: &str,
    delivered: Delivered,
) -> Result<(StatusCode, Json<Value>), Problem> {
    match delivered {
        Delivered::Recorded(delivery) => {
            app.worker.wake();
            Ok((StatusCode::ACCEPTED, Json(view(&delivery))))
        }
        Delivered::Repeated(first) => Ok((StatusCode::OK, Json(view(&first)))),
        Delivered::RunNotFound => Err(Problem::not_found("run")),
        Delivered::RunFinished(status) => Err(Problem::new(
            StatusCode::CONFLICT,
            "run-finished",
            "The run already finished",
            format!("the run is {status}: no step of it will take signal {name}"),
        )),
    }
}

/// A delivery as the API shows it.
pub(super) fn view(d: &SignalDelivery) -> Value {
    json!({
        "id": d.id,
        "name": d.name,
        "run": d.run_id,
        "key": d.key,
        "payload": d.payload,
        "received_at": d.received_at,
    })
}
