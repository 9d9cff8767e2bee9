//! The server-wide bound on request header bytes (`[api] max_header_bytes`).
//!
//! hyper bounds a request head only by its read buffer (about 400 KB) and
//! a count of 100 headers, far more than any client of this API sends;
//! each header is then copied, looked up and logged by the layers inside.
//! This middleware sums what arrived and answers 431 with a problem past
//! the configured limit, before authentication or any handler runs.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{AppState, Problem};

/// Answers 431 `headers-too-large` when the request's headers exceed the
/// limit.
pub async fn limit(State(app): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let limit = app.limits.max_header_bytes;
    let bytes = header_bytes(request.headers());
    if bytes > limit {
        return Problem::headers_too_large(bytes, limit).into_response();
    }
    next.run(request).await
}

/// The size of the headers as sent on the wire in HTTP/1.1: each is
/// `name: value` and CRLF.
fn header_bytes(headers: &axum::http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_count_as_sent() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("host", "a".parse().unwrap());
        headers.append("x-two", "bb".parse().unwrap());
        headers.append("x-two", "cc".parse().unwrap());
        assert_eq!(header_bytes(&headers), (4 + 1 + 4) + 2 * (5 + 2 + 4));
    }
}
