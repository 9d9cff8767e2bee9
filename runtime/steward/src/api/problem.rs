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
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u32>,
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
            retry_after: None,
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

    /// Request headers over the configured limit (`api/headers.rs`).
    pub fn headers_too_large(bytes: usize, limit: usize) -> Problem {
        Problem::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            "Request headers too large",
            format!(
                "the request's headers have {bytes} bytes; they are limited to {limit} \
                 (set [api] max_header_bytes to change it)"
            ),
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

    /// A route asked with a method it does not take (axum adds the `Allow`
    /// header listing the ones it does).
    pub fn method_not_allowed() -> Problem {
        Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "this route does not take that method; the Allow header lists the ones it takes",
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
        if e.is_unavailable() {
            tracing::warn!("database unavailable: {e}");
            let mut problem = Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database-unavailable",
                "Database unavailable",
                "the database cannot be reached or cannot write right now; retry shortly (a retry with the same Idempotency-Key cannot start a second run)",
            );
            problem.retry_after = Some(1);
            return problem;
        }
        Problem::internal(e)
    }
}

/// A refused webhook signature: 401, `stale-signature` for a `t` outside
/// the tolerance and `invalid-signature` for everything else (missing,
/// malformed, over the size or count limits, not matching), the detail
/// saying which.
impl From<crate::hooks::SignatureError> for Problem {
    fn from(e: crate::hooks::SignatureError) -> Problem {
        let kind = match e {
            crate::hooks::SignatureError::Stale { .. } => "stale-signature",
            _ => "invalid-signature",
        };
        Problem::new(
            StatusCode::UNAUTHORIZED,
            kind,
            "Signature refused",
            e.to_string(),
        )
    }
}

/// A bearer token that does not authenticate: 401, with its own type when
/// it merely expired, so a client knows to get a new one rather than
/// suspect a typo.
impl From<crate::auth::AuthError> for Problem {
    fn from(e: crate::auth::AuthError) -> Problem {
        use crate::auth::AuthError;
        match e {
            AuthError::Unknown => Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authentication required",
                "the token is unknown or revoked",
            ),
            AuthError::Expired { token_id, at } => Problem::new(
                StatusCode::UNAUTHORIZED,
                "token-expired",
                "Token expired",
                format!(
                    "token {token_id} expired at {}; create a new one (POST /v1/tokens or `steward token create`)",
                    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                ),
            )
            .with("expired_at", json!(at)),
            AuthError::Jwt(e) => Problem::from(e),
            AuthError::Store(e) => Problem::from(e),
        }
    }
}

/// A refused identity-provider JWT: 401 `invalid-jwt`, the detail naming
/// the check that failed (never the token). When the provider's keys cannot
/// be fetched the fault is not the caller's: 503 with `Retry-After`.
impl From<crate::oidc::JwtError> for Problem {
    fn from(e: crate::oidc::JwtError) -> Problem {
        if let crate::oidc::JwtError::KeysUnavailable(_) = e {
            tracing::warn!("{e}");
            let mut problem = Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "identity-provider-unavailable",
                "Identity provider unavailable",
                "the identity provider's signing keys cannot be fetched right now; retry shortly",
            );
            problem.retry_after = Some(60);
            return problem;
        }
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "invalid-jwt",
            "Invalid JWT",
            e.to_string(),
        )
    }
}

/// A token request the server cannot honour (a bad subject or lifetime):
/// 422, naming the field.
impl From<crate::auth::InvalidToken> for Problem {
    fn from(e: crate::auth::InvalidToken) -> Problem {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-token-request",
            "Invalid token request",
            e.to_string(),
        )
    }
}

/// A decision by the person who asked (four eyes): 403, nothing recorded.
impl From<crate::store::SelfApproval> for Problem {
    fn from(e: crate::store::SelfApproval) -> Problem {
        Problem::new(
            StatusCode::FORBIDDEN,
            "self-approval",
            "Approving your own request",
            e.to_string(),
        )
        .with("person", json!(e.person))
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
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    #[test]
    fn an_unreachable_database_is_503_with_retry_after_and_other_failures_500() {
        let lost = StoreError::from(sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        let response = Problem::from(lost).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let busy = Problem::from(StoreError::from(sqlx::Error::PoolTimedOut)).into_response();
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);

        let corrupt = Problem::from(StoreError::Corrupt("x".into())).into_response();
        assert_eq!(corrupt.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!corrupt.headers().contains_key(header::RETRY_AFTER));
    }
}
