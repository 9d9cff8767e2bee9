//! JSON request bodies: one extractor, so every route answers the same 413,
//! 415 and 400 problems and no body nests deeper than the configured limit
//! (a deeply nested document is cheap to send and costly to walk).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::{AppState, Problem};

/// A body type's example, quoted in the problem when a request gets it wrong.
pub trait Example {
    const EXAMPLE: &'static str;
}

/// A JSON body of type `T`, parsed after the size, media type and nesting
/// checks.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + Example> FromRequest<Arc<AppState>> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, app: &Arc<AppState>) -> Result<Self, Problem> {
        require_json(&request)?;
        let bytes = read_body(request, app).await?;
        parse_json(&bytes, app.limits.max_json_depth, T::EXAMPLE).map(JsonBody)
    }
}

/// A JSON body of type `T` that may be left out: no body (or only
/// whitespace) is `T::default()`. A body sent with a Content-Type must be
/// JSON; one sent without is read as JSON (`curl -d` and the like).
pub struct OptionalJsonBody<T>(pub T);

impl<T: DeserializeOwned + Example + Default> FromRequest<Arc<AppState>> for OptionalJsonBody<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, app: &Arc<AppState>) -> Result<Self, Problem> {
        let typed = request.headers().contains_key(header::CONTENT_TYPE);
        let checked = require_json(&request);
        let bytes = read_body(request, app).await?;
        if bytes.trim_ascii().is_empty() {
            return Ok(OptionalJsonBody(T::default()));
        }
        if typed {
            checked?;
        }
        parse_json(&bytes, app.limits.max_json_depth, T::EXAMPLE).map(OptionalJsonBody)
    }
}

/// 415 unless the request says it sends JSON (`application/json` or a
/// `+json` type).
pub fn require_json(request: &Request) -> Result<(), Problem> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            format!(
                "the body must be JSON: send Content-Type: application/json (got {:?})",
                content_type
            ),
        ))
    }
}

/// The whole body, or 413 past the configured limit.
pub async fn read_body(request: Request, app: &Arc<AppState>) -> Result<Bytes, Problem> {
    let limit = app.limits.max_body_bytes;
    let body = request.into_body();
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok(bytes),
        Err(e) => {
            if is_length_limit(&e) {
                Err(Problem::too_large(limit))
            } else {
                Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    "invalid-body",
                    "Invalid request body",
                    format!("the body could not be read: {e}"),
                ))
            }
        }
    }
}

/// Whether a body error is the limit (hyper's and http-body's errors
/// only say so in their text).
fn is_length_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.to_string().contains("length limit exceeded") {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Parses `bytes` as `T` after checking that it nests at most `max_depth`
/// levels; errors quote `example`.
pub fn parse_json<T: DeserializeOwned>(
    bytes: &[u8],
    max_depth: usize,
    example: &str,
) -> Result<T, Problem> {
    if let Some(depth) = exceeds_depth(bytes, max_depth) {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "too-deep",
            "JSON nested too deeply",
            format!("the body nests deeper than {max_depth} levels (at byte {depth}): flatten it"),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let status = if e.is_data() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::BAD_REQUEST
        };
        Problem::new(
            status,
            "invalid-body",
            "Invalid request body",
            format!("{e}: send {example}"),
        )
    })
}

/// The offset where `bytes` first nests past `max_depth` arrays or objects;
/// brackets inside strings do not count.
fn exceeds_depth(bytes: &[u8], max_depth: usize) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Some(i);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_brackets_outside_strings_only() {
        assert_eq!(exceeds_depth(br#"{"a": [1, {"b": 2}]}"#, 3), None);
        assert_eq!(exceeds_depth(br#"{"a": [1, {"b": 2}]}"#, 2), Some(10));
        assert_eq!(exceeds_depth(br#"{"a": "[[[[[[\"[[["}"#, 1), None);
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert_eq!(exceeds_depth(deep.as_bytes(), 64), Some(64));
    }

    #[test]
    fn wrong_shapes_are_422_and_syntax_errors_400() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Body {
            n: u32,
        }
        let e = parse_json::<Body>(br#"{"n": "x"}"#, 8, "{}").unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        let e = parse_json::<Body>(b"{nope", 8, "{}").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }
}
