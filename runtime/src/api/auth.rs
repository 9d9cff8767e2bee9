//! Bearer-token authentication and per-route scopes for `/v1`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{AppState, Problem};

/// The scope a request needs, `None` for routes open to everyone.
fn required_scope(method: &Method, path: &str) -> Option<&'static str> {
    if !path.starts_with("/v1/") {
        return None; // /healthz, /metrics, /openapi.json
    }
    if path.starts_with("/v1/hooks/") {
        return None; // signed with the hook's secret instead
    }
    if path.starts_with("/v1/tokens") {
        return Some("admin");
    }
    if path.starts_with("/v1/approvals") && method == Method::POST {
        return Some("approvals:decide");
    }
    if path.starts_with("/v1/delegations") && method != Method::GET {
        return Some("approvals:decide");
    }
    if method == Method::GET {
        return Some("runs:read");
    }
    let starts_run = path.starts_with("/v1/workflows/") && path.ends_with("/runs");
    let cancels = path.starts_with("/v1/runs/") && path.ends_with("/cancel");
    let schedules = path == "/v1/schedules" || path.starts_with("/v1/schedules/");
    Some(if starts_run || cancels || schedules {
        "runs:write"
    } else {
        "admin"
    })
}

fn unauthorized(detail: &str) -> Response {
    let mut response = Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Authentication required",
        detail,
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, "Bearer".parse().unwrap());
    response
}

/// Rejects requests without a valid token holding the route's scope.
pub async fn require_scope(
    State(app): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(scope) = required_scope(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    let Some(header) = request.headers().get(header::AUTHORIZATION) else {
        return unauthorized(
            "send Authorization: Bearer TOKEN (create one with `steward token create`)",
        );
    };
    let Some(secret) = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
    else {
        return unauthorized("the Authorization header must read: Bearer TOKEN");
    };
    match app.auth.authenticate(secret).await {
        Ok(Some(principal)) if principal.allows(scope) => next.run(request).await,
        Ok(Some(_)) => Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Missing scope",
            format!("this token lacks the {scope} scope"),
        )
        .into_response(),
        Ok(None) => unauthorized("the token is unknown or revoked"),
        Err(e) => Problem::internal(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_the_documented_scopes() {
        let cases = [
            (Method::GET, "/healthz", None),
            (Method::GET, "/v1/runs", Some("runs:read")),
            (Method::GET, "/v1/runs/x/events", Some("runs:read")),
            (Method::POST, "/v1/workflows/a/runs", Some("runs:write")),
            (Method::POST, "/v1/runs/x/cancel", Some("runs:write")),
            (Method::POST, "/v1/approvals/x", Some("approvals:decide")),
            (Method::POST, "/v1/tokens", Some("admin")),
            (Method::POST, "/v1/delegations", Some("approvals:decide")),
            (
                Method::DELETE,
                "/v1/delegations/x",
                Some("approvals:decide"),
            ),
            (Method::GET, "/v1/delegations", Some("runs:read")),
            (Method::POST, "/v1/schedules", Some("runs:write")),
            (Method::PATCH, "/v1/schedules/x", Some("runs:write")),
            (Method::DELETE, "/v1/schedules/x", Some("runs:write")),
            (Method::GET, "/v1/schedules/x", Some("runs:read")),
            (Method::PUT, "/v1/workflows/a", Some("admin")),
            (Method::POST, "/v1/hooks/servicenow", None),
        ];
        for (method, path, scope) in cases {
            assert_eq!(required_scope(&method, path), scope, "{method} {path}");
        }
    }
}
