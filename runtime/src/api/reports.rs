//! `GET /v1/reports/sla?from=&to=`: SLA compliance by workflow and priority.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppState, Problem};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    from: Option<String>,
    to: Option<String>,
}

fn instant(name: &str, text: &str) -> Result<DateTime<Utc>, Problem> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            Problem::invalid_query(format!(
                "{name}={text:?} is not an RFC 3339 time such as 2026-11-01T00:00:00Z: {e}"
            ))
        })
}

/// Runs that finished in `[from, to)` (default: the last 30 days).
pub async fn sla(
    State(app): State<Arc<AppState>>,
    query: Result<Query<Range>, QueryRejection>,
) -> Result<Json<Value>, Problem> {
    let Query(range) =
        query.map_err(|e| Problem::invalid_query(format!("{e}: use from and to")))?;
    let to = match &range.to {
        Some(t) => instant("to", t)?,
        None => Utc::now(),
    };
    let from = match &range.from {
        Some(t) => instant("from", t)?,
        None => to - chrono::Duration::days(30),
    };
    if from >= to {
        return Err(Problem::invalid_query(format!(
            "from ({from}) must be before to ({to})"
        )));
    }
    let (from_ms, to_ms) = (from.timestamp_millis(), to.timestamp_millis());
    let items = app.store.sla_report(from_ms, to_ms).await?;
    Ok(Json(json!({ "from": from, "to": to, "items": items })))
}
