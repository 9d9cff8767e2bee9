//! `GET /metrics` and the request-latency middleware.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
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
/// the id itself; `unmatched` for every path no route serves) and its
/// method (`other` for any non-standard one), so label values stay few
/// whatever clients send: each distinct label set is a series kept for the
/// life of the process.
pub async fn track(request: Request, next: Next) -> Response {
    let began = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let span = tracing::info_span!("request", method, %route);
    let response = next.run(request).instrument(span).await;
    metrics::global().http_request(method, &route, response.status().as_u16(), began.elapsed());
    response
}

/// The method as a metrics label: HTTP lets a client invent any token as a
/// method, and every one would otherwise become a new series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_standard_methods_are_labels_of_their_own() {
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        assert_eq!(method_label(&Method::TRACE), "other");
        assert_eq!(method_label(&Method::from_bytes(b"GETX").unwrap()), "other");
    }
}
