//! The REST API (axum). Only this module knows HTTP.

mod approvals;
mod audit;
mod auth;
mod body;
mod groups;
mod headers;
mod hooks;
mod metrics;
mod openapi;
mod path;
mod plugins;
mod problem;
mod reports;
mod retry;
mod routes;
mod runs;
mod schedules;
mod signals;
mod tokens;
mod workflows;

use std::sync::Arc;

use axum::routing::get;
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

/// The API's routes, from the route table.
pub fn router(state: Arc<AppState>) -> Router {
    let mut router = Router::new();
    for route in routes::table(&state.limits) {
        router = router.route(route.path, route.handler);
    }
    router
        .fallback(|| async { Problem::not_found("this route") })
        .method_not_allowed_fallback(|| async { Problem::method_not_allowed() })
        .layer(axum::extract::DefaultBodyLimit::max(
            state.limits.max_body_bytes,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_scope,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            headers::limit,
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
        .method_not_allowed_fallback(|| async { Problem::method_not_allowed() })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            headers::limit,
        ))
        .with_state(state)
}
