//! The Table API subset: `/api/now/table/{table}[/{sys_id}]`.

use std::collections::BTreeMap;

use axum::extract::{Path, Query as QueryParams, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Map, Value, json};

use super::query::{Query, text_of};
use super::{AppState, Failure, Sim, failure, new_sys_id, timestamp};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/now/table/{table}", get(list).post(create))
        .route(
            "/api/now/table/{table}/{sys_id}",
            get(read).patch(update).put(update).delete(remove),
        )
}

/// Journal fields: written like fields, kept as `sys_journal_field` rows,
/// read back empty (as ServiceNow does).
const JOURNAL_FIELDS: [&str; 2] = ["comments", "work_notes"];

/// Number prefixes of the tables integrators use.
fn number_prefix(table: &str) -> Option<&'static str> {
    Some(match table {
        "incident" => "INC",
        "sc_request" => "REQ",
        "sc_req_item" => "RITM",
        "sc_task" => "SCTASK",
        "change_request" => "CHG",
        "problem" => "PRB",
        "task" => "TASK",
        _ => return None,
    })
}

/// ITIL's default matrix: priority from impact and urgency (1 = highest).
pub(super) fn priority(impact: &str, urgency: &str) -> Option<String> {
    let impact: u8 = impact.parse().ok().filter(|v| (1..=3).contains(v))?;
    let urgency: u8 = urgency.parse().ok().filter(|v| (1..=3).contains(v))?;
    Some((impact + urgency - 1).to_string())
}

async fn list(
    State(state): State<AppState>,
    Path(table): Path<String>,
    QueryParams(params): QueryParams<BTreeMap<String, String>>,
) -> Response {
    let query = match Query::parse(params.get("sysparm_query").map_or("", String::as_str)) {
        Ok(q) => q,
        Err(e) => return failure(StatusCode::BAD_REQUEST, "Invalid query", &e).into_response(),
    };
    let number = |name: &str, default: usize| -> Result<usize, Failure> {
        match params.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                failure(
                    StatusCode::BAD_REQUEST,
                    &format!("Invalid {name}"),
                    &format!("{v:?} is not a number"),
                )
            }),
        }
    };
    let (limit, offset) = match (number("sysparm_limit", 10_000), number("sysparm_offset", 0)) {
        (Ok(l), Ok(o)) => (l, o),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    let fields: Option<Vec<&str>> = params.get("sysparm_fields").map(|f| {
        f.split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .collect()
    });
    let sim = state.sim.lock().unwrap();
    let mut matching: Vec<&Map<String, Value>> = sim
        .tables
        .get(&table)
        .map(|rows| rows.iter().filter(|r| query.matches(r)).collect())
        .unwrap_or_default();
    for (field, descending) in query.order_by.iter().rev() {
        matching.sort_by(|a, b| {
            let (a, b) = (
                a.get(field).map(text_of).unwrap_or_default(),
                b.get(field).map(text_of).unwrap_or_default(),
            );
            if *descending { b.cmp(&a) } else { a.cmp(&b) }
        });
    }
    let total = matching.len();
    let page: Vec<Value> = matching
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|r| Value::Object(project(r, fields.as_deref())))
        .collect();
    (
        [("x-total-count", total.to_string())],
        Json(json!({ "result": page })),
    )
        .into_response()
}

fn project(record: &Map<String, Value>, fields: Option<&[&str]>) -> Map<String, Value> {
    match fields {
        None => record.clone(),
        Some(fields) => fields
            .iter()
            .filter_map(|f| record.get(*f).map(|v| (f.to_string(), v.clone())))
            .collect(),
    }
}

fn not_found() -> Response {
    failure(
        StatusCode::NOT_FOUND,
        "No Record found",
        "Record doesn't exist or ACL restricts the record retrieval",
    )
    .into_response()
}

async fn read(
    State(state): State<AppState>,
    Path((table, sys_id)): Path<(String, String)>,
) -> Response {
    let sim = state.sim.lock().unwrap();
    match sim.find(&table, &sys_id) {
        Some(record) => Json(json!({ "result": record })).into_response(),
        None => not_found(),
    }
}

/// The JSON object a write sends, or ServiceNow's complaint.
fn fields_of(body: &[u8]) -> Result<Map<String, Value>, Failure> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(failure(
            StatusCode::BAD_REQUEST,
            "Invalid JSON",
            "the body must be a JSON object of fields",
        )),
        Err(e) => Err(failure(
            StatusCode::BAD_REQUEST,
            "Exception while reading request",
            &e.to_string(),
        )),
    }
}

async fn create(
    State(state): State<AppState>,
    Path(table): Path<String>,
    _headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let fields = match fields_of(&body) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let mut sim = state.sim.lock().unwrap();
    let record = sim.insert(&table, fields);
    let sys_id = text_of(&record["sys_id"]);
    (
        StatusCode::CREATED,
        [(header::LOCATION, format!("/api/now/table/{table}/{sys_id}"))],
        Json(json!({ "result": record })),
    )
        .into_response()
}

async fn update(
    State(state): State<AppState>,
    Path((table, sys_id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let fields = match fields_of(&body) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let mut sim = state.sim.lock().unwrap();
    match sim.update(&table, &sys_id, fields) {
        Some(record) => Json(json!({ "result": record })).into_response(),
        None => not_found(),
    }
}

async fn remove(
    State(state): State<AppState>,
    Path((table, sys_id)): Path<(String, String)>,
) -> Response {
    let mut sim = state.sim.lock().unwrap();
    let rows = sim.tables.entry(table).or_default();
    let before = rows.len();
    rows.retain(|r| r.get("sys_id").map(text_of).as_deref() != Some(sys_id.as_str()));
    if rows.len() == before {
        return not_found();
    }
    StatusCode::NO_CONTENT.into_response()
}

impl Sim {
    fn find(&self, table: &str, sys_id: &str) -> Option<&Map<String, Value>> {
        self.tables
            .get(table)?
            .iter()
            .find(|r| r.get("sys_id").map(text_of).as_deref() == Some(sys_id))
    }

    /// Adds a record the way ServiceNow does: sys_id, number, audit fields,
    /// defaults for tasks, priority from impact and urgency.
    pub(super) fn insert(
        &mut self,
        table: &str,
        mut fields: Map<String, Value>,
    ) -> Map<String, Value> {
        let journal = take_journal(&mut fields);
        let now = timestamp();
        let mut record = Map::new();
        record.insert("sys_id".into(), json!(new_sys_id()));
        if let Some(prefix) = number_prefix(table) {
            let next = self.numbers.entry(prefix).or_insert(10_000);
            *next += 1;
            record.insert("number".into(), json!(format!("{prefix}{next:07}")));
            record.insert("state".into(), json!("1"));
            record.insert("active".into(), json!("true"));
            record.insert("comments".into(), json!(""));
            record.insert("work_notes".into(), json!(""));
        }
        record.insert("sys_created_on".into(), json!(now));
        record.insert("sys_updated_on".into(), json!(now));
        record.insert("sys_created_by".into(), json!("steward"));
        record.insert("sys_class_name".into(), json!(table));
        for (k, v) in fields {
            record.insert(k, v);
        }
        derive_fields(table, &mut record);
        let sys_id = text_of(&record["sys_id"]);
        self.tables
            .entry(table.to_string())
            .or_default()
            .push(record.clone());
        self.journal(table, &sys_id, journal);
        record
    }

    fn update(
        &mut self,
        table: &str,
        sys_id: &str,
        mut fields: Map<String, Value>,
    ) -> Option<Map<String, Value>> {
        let journal = take_journal(&mut fields);
        let record = self
            .tables
            .get_mut(table)?
            .iter_mut()
            .find(|r| r.get("sys_id").map(text_of).as_deref() == Some(sys_id))?;
        fields.remove("sys_id");
        for (k, v) in fields {
            record.insert(k, v);
        }
        record.insert("sys_updated_on".into(), json!(timestamp()));
        derive_fields(table, record);
        let updated = record.clone();
        self.journal(table, sys_id, journal);
        Some(updated)
    }

    fn journal(&mut self, table: &str, sys_id: &str, entries: Vec<(String, String)>) {
        for (element, value) in entries {
            let row = json!({
                "sys_id": new_sys_id(),
                "name": table,
                "element": element,
                "element_id": sys_id,
                "value": value,
                "sys_created_on": timestamp(),
                "sys_created_by": "steward",
            });
            self.tables
                .entry("sys_journal_field".into())
                .or_default()
                .push(row.as_object().cloned().unwrap_or_default());
        }
    }
}

fn take_journal(fields: &mut Map<String, Value>) -> Vec<(String, String)> {
    JOURNAL_FIELDS
        .iter()
        .filter_map(|f| {
            let value = fields.remove(*f)?;
            let text = text_of(&value);
            (!text.is_empty()).then(|| (f.to_string(), text))
        })
        .collect()
}

/// Fields ServiceNow computes: priority, resolved/closed stamps, `active`.
fn derive_fields(table: &str, record: &mut Map<String, Value>) {
    if table == "incident" {
        let impact = record.get("impact").map(text_of).unwrap_or_default();
        let urgency = record.get("urgency").map(text_of).unwrap_or_default();
        if let Some(p) = priority(&impact, &urgency) {
            record.insert("priority".into(), json!(p));
        }
    }
    let state = record.get("state").map(text_of).unwrap_or_default();
    let closed = match table {
        "incident" => state == "6" || state == "7" || state == "8",
        _ => number_prefix(table).is_some() && matches!(state.as_str(), "3" | "4" | "7"),
    };
    if number_prefix(table).is_some() {
        record.insert(
            "active".into(),
            json!(if closed { "false" } else { "true" }),
        );
        let stamp = if table == "incident" && state == "6" {
            "resolved_at"
        } else {
            "closed_at"
        };
        if closed
            && record
                .get(stamp)
                .map(text_of)
                .unwrap_or_default()
                .is_empty()
        {
            record.insert(stamp.into(), json!(timestamp()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_priority_matrix_is_itil_s_default() {
        assert_eq!(priority("1", "1").as_deref(), Some("1"));
        assert_eq!(priority("1", "2").as_deref(), Some("2"));
        assert_eq!(priority("2", "3").as_deref(), Some("4"));
        assert_eq!(priority("3", "3").as_deref(), Some("5"));
        assert_eq!(priority("4", "1"), None);
    }

    #[test]
    fn records_get_numbers_journal_rows_and_derived_fields() {
        let mut sim = Sim::default();
        let fields = json!({"short_description": "VPN down", "impact": "1", "urgency": 2, "comments": "reported by phone"});
        let record = sim.insert("incident", fields.as_object().unwrap().clone());
        assert_eq!(record["number"], "INC0010001");
        assert_eq!(record["priority"], "2");
        assert_eq!(record["comments"], "", "journal fields read back empty");
        let second = sim.insert("incident", Map::new());
        assert_eq!(second["number"], "INC0010002");
        let sys_id = text_of(&record["sys_id"]);
        let resolved = sim
            .update(
                "incident",
                &sys_id,
                json!({"state": "6", "work_notes": "fixed"})
                    .as_object()
                    .unwrap()
                    .clone(),
            )
            .unwrap();
        assert_eq!(resolved["active"], "false");
        assert!(!text_of(&resolved["resolved_at"]).is_empty());
        let journal = &sim.tables["sys_journal_field"];
        assert_eq!(journal.len(), 2);
        assert_eq!(journal[1]["element"], "work_notes");
        assert_eq!(journal[1]["element_id"], json!(sys_id));
        assert!(sim.update("incident", "nope", Map::new()).is_none());
    }
}
