//! Path parameters: axum's own extractor answers a bad one (a `%FF` that
//! is not UTF-8) in plain text; this one answers with a problem like every
//! other error.

use axum::extract::{FromRequestParts, Path};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::Problem;

/// The route's `{...}` parameters, as `T`.
pub struct PathParam<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParam<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(PathParam(value)),
            // A route without the parameters its handler asks for is ours.
            Err(rejection) if rejection.status().is_server_error() => {
                Err(Problem::internal(rejection.body_text()))
            }
            Err(rejection) => Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-path",
                "Invalid path",
                format!(
                    "{}: percent-encode path segments as UTF-8",
                    rejection.body_text()
                ),
            )),
        }
    }
}
