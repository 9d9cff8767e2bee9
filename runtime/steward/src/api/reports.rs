//! `GET /v1/reports/sla?from=&to=` (or `?days=`): SLA compliance by
//! workflow and priority, with totals and the worst offenders.

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
    /// The last N days up to `to`, instead of `from`.
    days: Option<u32>,
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
    let from = match (&range.from, range.days) {
        (Some(_), Some(_)) => {
            return Err(Problem::invalid_query(
                "give from or days, not both".to_string(),
            ));
        }
        (Some(t), None) => instant("from", t)?,
        (None, Some(days)) if (1..=3660).contains(&days) => {
            to - chrono::Duration::days(i64::from(days))
        }
        (None, Some(days)) => {
            return Err(Problem::invalid_query(format!(
                "days={days} is out of range: use 1 to 3660"
            )));
        }
        (None, None) => to - chrono::Duration::days(30),
    };
    if from >= to {
        return Err(Problem::invalid_query(format!(
            "from ({from}) must be before to ({to})"
        )));
    }
    let (from_ms, to_ms) = (from.timestamp_millis(), to.timestamp_millis());
    let items = app.store.sla_report(from_ms, to_ms).await?;
    let totals = crate::report::totals(&items);
    let worst = crate::report::worst(&items, 5);
    Ok(Json(
        json!({ "from": from, "to": to, "totals": totals, "worst": worst, "items": items }),
    ))
}
