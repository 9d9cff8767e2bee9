//! The REST API (axum). Only this module knows HTTP.

mod approvals;
mod auth;
mod body;
mod groups;
mod hooks;
mod metrics;
mod plugins;
mod problem;
mod reports;
mod runs;
mod schedules;
mod tokens;
mod workflows;

use std::sync::Arc;

use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::json;

pub use problem::Problem;

use crate::catalog::Catalog;
use crate::store::Store;
use crate::worker::WorkerHandle;

/// What handlers share.
pub struct AppState {
    pub store: Store,
    pub auth: crate::auth::Authenticator,
    pub catalog: Arc<Catalog>,
    pub worker: WorkerHandle,
    pub limits: crate::config::ApiSettings,
    pub hooks: crate::hooks::Hooks,
    /// Plugins are uploaded into this engine, under `config`'s grants.
    pub engine: crate::engine::Engine,
    pub config: Arc<crate::config::Config>,
    /// Parsed `[calendars]`, for SLA due times.
    pub calendars: Arc<std::collections::BTreeMap<String, crate::calendar::Calendar>>,
    /// Woken when a schedule is created or changed.
    pub scheduler: crate::schedule::SchedulerHandle,
    /// Approver groups, refreshed here after an API change.
    pub groups: crate::groups::Groups,
}

/// The API's routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics::expose))
        .route("/v1/workflows", get(workflows::list))
        .route(
            "/v1/workflows/{name}",
            get(workflows::show).put(workflows::deploy),
        )
        .route("/v1/workflows/{name}/runs", post(runs::start))
        .route("/v1/runs", get(runs::list))
        .route("/v1/runs/{id}", get(runs::show))
        .route("/v1/runs/{id}/events", get(runs::events))
        .route("/v1/runs/{id}/cancel", post(runs::cancel))
        .route("/v1/approvals", get(approvals::list))
        .route(
            "/v1/approvals/{id}",
            get(approvals::show).post(approvals::decide),
        )
        .route(
            "/v1/delegations",
            get(approvals::delegations).post(approvals::delegate),
        )
        .route("/v1/delegations/{id}", delete(approvals::revoke_delegation))
        .route("/v1/reports/sla", get(reports::sla))
        .route("/v1/groups", get(groups::list))
        .route(
            "/v1/groups/{name}",
            get(groups::show).put(groups::set).delete(groups::delete),
        )
        .route(
            "/v1/schedules",
            get(schedules::list).post(schedules::create),
        )
        .route(
            "/v1/schedules/{id}",
            get(schedules::show)
                .patch(schedules::update)
                .delete(schedules::delete),
        )
        .route("/v1/hooks/{name}", post(hooks::deliver))
        .route("/v1/plugins", get(plugins::list))
        .route(
            "/v1/plugins/{name}",
            get(plugins::show)
                .put(plugins::upload)
                .layer(axum::extract::DefaultBodyLimit::max(
                    state.limits.max_plugin_bytes,
                )),
        )
        .route("/v1/tokens", post(tokens::create))
        .route("/v1/tokens/{id}", delete(tokens::revoke))
        .fallback(|| async { Problem::not_found("this route") })
        .layer(axum::extract::DefaultBodyLimit::max(
            state.limits.max_body_bytes,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_scope,
        ))
        .layer(axum::middleware::from_fn(metrics::track))
        .with_state(state)
}

/// What a `steward worker` serves on its optional port: liveness and
/// metrics, no API.
pub fn health_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics::expose))
        .fallback(|| async {
            Problem::not_found("this route (a worker serves only /healthz and /metrics)")
        })
        .with_state(state)
}

/// The API's OpenAPI document, kept beside the routes it describes (a test
/// checks that every route is in it).
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}
