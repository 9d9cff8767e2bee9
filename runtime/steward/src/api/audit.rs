//! `GET /v1/audit` (admin): who changed what, newest first. There is no
//! route that changes or deletes an entry, on purpose.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppState, Problem};
use crate::store::{AuditEntry, AuditFilter};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    from: Option<String>,
    to: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
}

fn describe(entry: &AuditEntry) -> Value {
    json!({
        "id": entry.id,
        "at": entry.at,
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "detail": entry.detail,
    })
}

/// An RFC 3339 time as Unix ms.
fn instant(name: &str, text: Option<&str>) -> Result<Option<i64>, Problem> {
    text.map(|t| {
        chrono::DateTime::parse_from_rfc3339(t)
            .map(|t| t.timestamp_millis())
            .map_err(|e| {
                Problem::invalid_query(format!(
                    "{name} {t:?} is not an RFC 3339 time ({e}): e.g. 2026-01-31T09:00:00Z"
                ))
            })
    })
    .transpose()
}

/// `GET /v1/audit?actor=&action=&target=&from=&to=&cursor=&limit=`:
/// newest first; `next_cursor` fetches the next page and is null on the
/// last one, as in the runs listing.
pub async fn list(
    State(app): State<Arc<AppState>>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Value>, Problem> {
    let Query(query) = query.map_err(|e| {
        Problem::invalid_query(format!(
            "{e}: use actor, action, target, from, to, cursor, limit"
        ))
    })?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(Problem::invalid_query("limit is 1 to 500"));
    }
    // A cursor is the last entry of the previous page: anything else would
    // silently give the first page, or an empty one that looks like the end.
    if let Some(cursor) = query.cursor.as_deref()
        && !app.store.audit_entry_exists(cursor).await?
    {
        return Err(Problem::invalid_query(format!(
            "cursor {cursor:?} is not one this server gave: pass the next_cursor of the previous page"
        )));
    }
    let filter = AuditFilter {
        actor: query.actor.as_deref(),
        action: query.action.as_deref(),
        target: query.target.as_deref(),
        from: instant("from", query.from.as_deref())?,
        to: instant("to", query.to.as_deref())?,
        after: query.cursor.as_deref(),
    };
    let entries = app.store.audit_entries(&filter, limit).await?;
    let next_cursor = (entries.len() as i64 == limit)
        .then(|| entries.last().map(|e| e.id.clone()))
        .flatten();
    let items: Vec<Value> = entries.iter().map(describe).collect();
    Ok(Json(json!({ "items": items, "next_cursor": next_cursor })))
}
