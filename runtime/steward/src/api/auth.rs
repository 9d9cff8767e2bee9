//! Bearer-token authentication and per-route scopes for `/v1`.

use std::sync::Arc;

use std::sync::OnceLock;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{AppState, Problem};

/// What a request needs before it reaches its handler.
#[derive(Debug, PartialEq, Eq)]
enum Needs {
    Nothing,
    /// A valid token with this scope.
    Scope(&'static str),
    /// A valid token: a `/v1` path or method no route serves, so that
    /// without a token nobody learns which routes exist.
    AnyToken,
}

/// The scope of every (method, route template), from the route table.
fn scopes() -> &'static [(Method, &'static str, Option<&'static str>)] {
    static SCOPES: OnceLock<Vec<(Method, &'static str, Option<&'static str>)>> = OnceLock::new();
    SCOPES.get_or_init(|| {
        super::routes::table(&crate::config::ApiSettings::default())
            .into_iter()
            .map(|r| (r.method, r.path, r.scope))
            .collect()
    })
}

fn needs(method: &Method, route: Option<&str>, path: &str) -> Needs {
    // axum answers HEAD with the GET handler (body dropped), so HEAD reads
    // what GET reads and needs GET's scope; without this it fell through to
    // `AnyToken` and any token could probe runs it may not read.
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    let declared = route.and_then(|route| {
        scopes()
            .iter()
            .find(|(m, p, _)| m == method && *p == route)
            .map(|(_, _, scope)| *scope)
    });
    match declared {
        Some(Some(scope)) => Needs::Scope(scope),
        Some(None) => Needs::Nothing,
        None if path.starts_with("/v1/") => Needs::AnyToken,
        None => Needs::Nothing,
    }
}

fn unauthorized(detail: &str) -> Response {
    challenge(
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authentication required",
            detail,
        )
        .into_response(),
    )
}

/// A 401 names the scheme it wants (RFC 9110, 11.6.1).
fn challenge(mut response: Response) -> Response {
    if response.status() == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, "Bearer".parse().unwrap());
    }
    response
}

/// Rejects requests without a valid token holding the route's scope, and
/// hands the handlers the caller's `Principal` as a request extension.
pub async fn require_scope(
    State(app): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let scope = match needs(request.method(), route.as_deref(), request.uri().path()) {
        Needs::Nothing => return next.run(request).await,
        Needs::Scope(scope) => Some(scope),
        Needs::AnyToken => None,
    };
    let Some(header) = request.headers().get(header::AUTHORIZATION) else {
        return unauthorized(
            "send Authorization: Bearer TOKEN (create one with `steward token create`)",
        );
    };
    let Some(secret) = header
        .to_str()
        .ok()
        .and_then(|h| h.split_once(' '))
        // Auth schemes are case-insensitive (RFC 9110, 11.1).
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, secret)| secret.trim().to_string())
    else {
        return unauthorized("the Authorization header must read: Bearer TOKEN");
    };
    match app.auth.authenticate(&secret).await {
        Ok(principal) if scope.is_none_or(|s| principal.allows(s)) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Ok(_) => Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Missing scope",
            format!(
                "this token lacks the {} scope",
                scope.unwrap_or_default().replace('|', " or ")
            ),
        )
        .into_response(),
        Err(e) => challenge(Problem::from(e).into_response()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_the_documented_scopes() {
        let cases = [
            (Method::GET, "/healthz", Needs::Nothing),
            (Method::GET, "/metrics", Needs::Nothing),
            (Method::GET, "/v1/runs", Needs::Scope("runs:read")),
            (
                Method::GET,
                "/v1/runs/{id}/events",
                Needs::Scope("runs:read"),
            ),
            (
                Method::POST,
                "/v1/workflows/{name}/runs",
                Needs::Scope("runs:write"),
            ),
            (
                Method::POST,
                "/v1/runs/{id}/cancel",
                Needs::Scope("runs:write"),
            ),
            (
                Method::POST,
                "/v1/runs/{id}/rerun",
                Needs::Scope("runs:write"),
            ),
            (
                Method::POST,
                "/v1/runs/{id}/retry",
                Needs::Scope("runs:write"),
            ),
            (
                Method::POST,
                "/v1/runs/{id}/signals/{name}",
                Needs::Scope("runs:write"),
            ),
            (
                Method::POST,
                "/v1/signals/{name}",
                Needs::Scope("runs:write"),
            ),
            (
                Method::GET,
                "/v1/runs/{id}/signals",
                Needs::Scope("runs:read"),
            ),
            (
                Method::POST,
                "/v1/approvals/{id}",
                Needs::Scope("approvals:decide"),
            ),
            (Method::POST, "/v1/tokens", Needs::Scope("admin")),
            (Method::GET, "/v1/tokens", Needs::Scope("admin")),
            (
                Method::POST,
                "/v1/delegations",
                Needs::Scope("approvals:decide"),
            ),
            (
                Method::DELETE,
                "/v1/delegations/{id}",
                Needs::Scope("approvals:decide"),
            ),
            (
                Method::GET,
                "/v1/delegations",
                Needs::Scope("runs:read|approvals:decide"),
            ),
            (Method::POST, "/v1/schedules", Needs::Scope("runs:write")),
            (
                Method::PATCH,
                "/v1/schedules/{id}",
                Needs::Scope("runs:write"),
            ),
            (
                Method::DELETE,
                "/v1/schedules/{id}",
                Needs::Scope("runs:write"),
            ),
            (Method::GET, "/v1/schedules/{id}", Needs::Scope("runs:read")),
            (Method::PUT, "/v1/groups/{name}", Needs::Scope("admin")),
            (Method::PUT, "/v1/workflows/{name}", Needs::Scope("admin")),
            (Method::POST, "/v1/hooks/{name}", Needs::Nothing),
            // A method no route serves on a known path, and an unknown path.
            (Method::DELETE, "/v1/runs/{id}", Needs::AnyToken),
        ];
        for (method, route, expected) in cases {
            assert_eq!(
                needs(&method, Some(route), route),
                expected,
                "{method} {route}"
            );
        }
        assert_eq!(
            needs(&Method::HEAD, Some("/v1/runs/{id}"), "/v1/runs/x"),
            Needs::Scope("runs:read")
        );
        assert_eq!(needs(&Method::GET, None, "/v1/nothing"), Needs::AnyToken);
        assert_eq!(needs(&Method::GET, None, "/nothing"), Needs::Nothing);
    }
}
