//! `itsm-ticket`: create, update, comment on, resolve, read and query
//! records through a ServiceNow Table API-compatible endpoint.
//!
//! ```yaml
//! - id: ticket
//!   uses: itsm-ticket
//!   with: { action: create, table: incident, fields: { short_description: "VPN down", impact: 1, urgency: 1 } }
//! - id: close
//!   uses: itsm-ticket
//!   with: { action: resolve, number: "${{ steps.ticket.output.number }}", close_notes: "Fixed" }
//! ```
//!
//! Every action returns `{table, sys_id, number, record}` (`query` returns
//! `{records, count}`). `create` is idempotent across retries and crash
//! re-runs: the step's idempotency key is stored as the record's
//! `correlation_id`, and a record already carrying it is returned
//! (`created: false`) instead of a duplicate.

use serde::Deserialize;
use serde_json::{Map, Value, json};
use steward_sdk::{Context, Error, config};
use steward_table_api::{Instance, RecordRef, field_text};

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Action {
    Create,
    Update,
    Comment,
    Resolve,
    Get,
    Query,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    action: Action,
    table: Option<String>,
    number: Option<String>,
    sys_id: Option<String>,
    #[serde(default)]
    fields: Map<String, Value>,
    /// `comment`: the text; a customer-visible comment unless `work_note`.
    text: Option<String>,
    #[serde(default)]
    work_note: bool,
    /// `resolve`: ServiceNow's close code and notes.
    close_code: Option<String>,
    close_notes: Option<String>,
    /// `query`: an encoded query (`active=true^priority=1`) and a limit.
    query: Option<String>,
    limit: Option<u32>,
}

fn handle(ctx: &Context, input: Input) -> Result<Value, Error> {
    let instance = Instance::required("itsm-ticket")?;
    let default_table = config::get::<String>("default_table")?;
    let table = input
        .table
        .clone()
        .or(default_table)
        .unwrap_or_else(|| "incident".to_string());
    match input.action {
        Action::Create => create(ctx, &instance, &table, input.fields),
        Action::Query => {
            let query = input.query.unwrap_or_default();
            let records = instance.query(&table, &query, input.limit.unwrap_or(100).min(1000))?;
            Ok(json!({ "table": table, "count": records.len(), "records": records }))
        }
        action => {
            let reference = record_ref(&input)?;
            if action == Action::Get {
                return Ok(described(&table, instance.get(&table, &reference)?, None));
            }
            // A change by sys_id goes straight to the PATCH (a missing record
            // is its 404); a number is looked up first.
            let sys_id = match reference {
                RecordRef::SysId(sys_id) => sys_id,
                number => {
                    let record = instance.get(&table, &number)?;
                    field_text(&record, "sys_id").ok_or_else(|| {
                        Error::fatal(format!("the {table} record has no sys_id"))
                            .with_code("bad-response")
                    })?
                }
            };
            let changes = match action {
                Action::Update => input.fields,
                Action::Comment => comment_fields(&input)?,
                Action::Resolve => resolve_fields(&table, ctx, &input),
                Action::Get | Action::Create | Action::Query => unreachable!("handled above"),
            };
            if changes.is_empty() {
                return Err(
                    Error::fatal("update needs `fields` with at least one field")
                        .with_code("invalid-input"),
                );
            }
            let updated = instance.update(&table, &sys_id, &changes, &ctx.idempotency_key)?;
            Ok(described(&table, updated, None))
        }
    }
}

/// Creates the record unless one already carries this step's key.
fn create(
    ctx: &Context,
    instance: &Instance,
    table: &str,
    mut fields: Map<String, Value>,
) -> Result<Value, Error> {
    if fields.is_empty() {
        return Err(
            Error::fatal("create needs `fields`, e.g. { short_description: ... }")
                .with_code("invalid-input"),
        );
    }
    let key = &ctx.idempotency_key;
    if let Some(existing) = instance
        .query(
            table,
            &steward_table_api::equals_query("correlation_id", key)?,
            1,
        )?
        .into_iter()
        .next()
    {
        return Ok(described(table, existing, Some(false)));
    }
    fields.insert("correlation_id".into(), Value::String(key.clone()));
    fields
        .entry("correlation_display")
        .or_insert_with(|| Value::String(format!("steward:{}", ctx.workflow)));
    let record = instance.create(table, &fields, key)?;
    Ok(described(table, record, Some(true)))
}

fn record_ref(input: &Input) -> Result<RecordRef, Error> {
    match (&input.sys_id, &input.number) {
        (Some(sys_id), _) if !sys_id.is_empty() => Ok(RecordRef::SysId(sys_id.clone())),
        (_, Some(number)) if !number.is_empty() => Ok(RecordRef::Number(number.clone())),
        _ => Err(Error::fatal(format!(
            "{:?} needs the record: give `number` (e.g. INC0010001) or `sys_id`",
            input.action
        ))
        .with_code("invalid-input")),
    }
}

fn comment_fields(input: &Input) -> Result<Map<String, Value>, Error> {
    let text = input
        .text
        .as_deref()
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| Error::fatal("comment needs `text`").with_code("invalid-input"))?;
    let field = if input.work_note {
        "work_notes"
    } else {
        "comments"
    };
    let mut fields = input.fields.clone();
    fields.insert(field.into(), Value::String(text.to_string()));
    Ok(fields)
}

/// The fields that resolve a record of `table`, with the caller's on top.
fn resolve_fields(table: &str, ctx: &Context, input: &Input) -> Map<String, Value> {
    let mut fields = Map::new();
    // Incidents resolve to state 6; catalog items and tasks close complete (3).
    let state = match table {
        "sc_request" | "sc_req_item" | "sc_task" | "change_task" => "3",
        _ => "6",
    };
    fields.insert("state".into(), json!(state));
    if table == "sc_request" {
        fields.insert("request_state".into(), json!("closed_complete"));
    }
    fields.insert(
        "close_code".into(),
        json!(
            input
                .close_code
                .clone()
                .unwrap_or_else(|| "Solved (Permanently)".to_string())
        ),
    );
    fields.insert(
        "close_notes".into(),
        json!(input.close_notes.clone().unwrap_or_else(|| format!(
            "Resolved by Steward ({} run {})",
            ctx.workflow, ctx.run_id
        ))),
    );
    for (k, v) in &input.fields {
        fields.insert(k.clone(), v.clone());
    }
    fields
}

fn described(table: &str, record: Value, created: Option<bool>) -> Value {
    let mut out = json!({
        "table": table,
        "sys_id": field_text(&record, "sys_id"),
        "number": field_text(&record, "number"),
        "state": field_text(&record, "state"),
        "record": record,
    });
    if let Some(created) = created {
        out["created"] = json!(created);
    }
    out
}

steward_sdk::plugin!(handle);

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context::for_tests("p1-incident", "close")
    }

    fn input(value: Value) -> Input {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn resolving_an_incident_sets_state_6_and_close_fields() {
        let i = input(
            json!({"action": "resolve", "number": "INC0010001", "close_notes": "VPN restored"}),
        );
        let f = resolve_fields("incident", &ctx(), &i);
        assert_eq!(f["state"], "6");
        assert_eq!(f["close_code"], "Solved (Permanently)");
        assert_eq!(f["close_notes"], "VPN restored");
    }

    #[test]
    fn resolving_catalog_work_closes_it_complete_and_caller_fields_win() {
        let i =
            input(json!({"action": "resolve", "number": "RITM0010001", "fields": {"state": "4"}}));
        let f = resolve_fields("sc_req_item", &ctx(), &i);
        assert_eq!(f["state"], "4");
        assert!(f["close_notes"].as_str().unwrap().contains("run r1"));
        let req = resolve_fields(
            "sc_request",
            &ctx(),
            &input(json!({"action": "resolve", "number": "REQ1"})),
        );
        assert_eq!(req["state"], "3");
        assert_eq!(req["request_state"], "closed_complete");
    }

    #[test]
    fn comments_go_to_comments_or_work_notes() {
        let c = comment_fields(&input(
            json!({"action": "comment", "number": "INC1", "text": "on it"}),
        ))
        .unwrap();
        assert_eq!(c["comments"], "on it");
        let w = comment_fields(&input(
            json!({"action": "comment", "number": "INC1", "text": "internal", "work_note": true}),
        ))
        .unwrap();
        assert_eq!(w["work_notes"], "internal");
        assert!(
            comment_fields(&input(
                json!({"action": "comment", "number": "INC1", "text": " "})
            ))
            .is_err()
        );
    }

    #[test]
    fn a_record_is_named_by_sys_id_or_number() {
        assert!(
            matches!(record_ref(&input(json!({"action": "get", "sys_id": "abc"}))), Ok(RecordRef::SysId(s)) if s == "abc")
        );
        assert!(
            matches!(record_ref(&input(json!({"action": "get", "number": "INC1"}))), Ok(RecordRef::Number(n)) if n == "INC1")
        );
        let e = record_ref(&input(json!({"action": "update"})))
            .err()
            .unwrap();
        assert!(e.message.contains("number") && !e.retryable);
    }

    #[test]
    fn unknown_actions_and_fields_are_refused() {
        assert!(serde_json::from_value::<Input>(json!({"action": "delete"})).is_err());
        assert!(serde_json::from_value::<Input>(json!({"action": "get", "numbr": "x"})).is_err());
    }
}
