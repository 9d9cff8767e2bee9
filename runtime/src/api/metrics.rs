//! `GET /metrics` and the request-latency middleware.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument as _;

use super::{AppState, Problem};
use crate::metrics;

/// The Prometheus exposition; the queue depth is read from the database
/// now, so every process reports the shared queue.
pub async fn expose(State(app): State<Arc<AppState>>) -> Result<Response, Problem> {
    for (status, runs) in app.store.count_open().await? {
        metrics::global().set_queue_depth(status.as_str(), runs);
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics::global().encode(),
    )
        .into_response())
}

/// Times every request under its route template (`/v1/runs/{id}`, never
/// the id itself, so label values stay few).
pub async fn track(request: Request, next: Next) -> Response {
    let began = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let span = tracing::info_span!("request", %method, %route);
    let response = next.run(request).instrument(span).await;
    metrics::global().http_request(&method, &route, response.status().as_u16(), began.elapsed());
    response
}
