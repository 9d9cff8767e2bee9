//! The one mapping from errors to HTTP: `application/problem+json` bodies
//! with a stable `type`. Store failures are logged once and answered with a
//! generic 500; SQL never reaches a client.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An error the API answers with.
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    /// Stable slug; the `type` URI ends with it.
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
    /// Extra members, e.g. a list of validation errors.
    pub extra: Option<(&'static str, Value)>,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Problem {
        Problem {
            status,
            kind,
            title,
            detail: detail.into(),
            extra: None,
        }
    }

    pub fn with(mut self, key: &'static str, value: Value) -> Problem {
        self.extra = Some((key, value));
        self
    }

    /// A body over the configured limit.
    pub fn too_large(limit: usize) -> Problem {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request body too large",
            format!("bodies are limited to {limit} bytes (set [api] max_body_bytes to change it)"),
        )
    }

    /// A query string that does not parse or holds a bad value.
    pub fn invalid_query(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            "Invalid query",
            detail,
        )
    }

    pub fn not_found(what: &str) -> Problem {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!("{what} does not exist"),
        )
    }

    /// A failure of ours: logged with its cause, answered without it.
    pub fn internal(cause: impl std::fmt::Display) -> Problem {
        tracing::error!("internal error: {cause}");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "the server failed; see its log",
        )
    }
}

impl From<crate::store::StoreError> for Problem {
    fn from(e: crate::store::StoreError) -> Problem {
        Problem::internal(e)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("https://steward.dev/problems/{}", self.kind),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some((key, value)) = self.extra {
            body[key] = value;
        }
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}
