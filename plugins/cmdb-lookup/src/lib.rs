//! `cmdb-lookup`: `{ci}` → `{name, sys_id, class, owner, support_group,
//! criticality, criticality_level, dependencies, source}`.
//!
//! Finds a configuration item by name, in this order:
//! 1. the plugin's key-value table, seeded with `{action: put, ci, item}`;
//! 2. the operator's `[plugins.cmdb-lookup.items]` in steward.toml;
//! 3. a ServiceNow-compatible CMDB (`instance = "https://..."`): `cmdb_ci`
//!    by name, and its `cmdb_rel_ci` children as dependencies.
//!
//! `criticality_level` is ServiceNow's `business_criticality` (1 most
//! critical … 4); `criticality` names it: critical, high, medium, low.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use steward_sdk::{Context, Error, config, kv};
use steward_table_api::{Instance, RecordRef, field_text};

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
enum Action {
    #[default]
    Lookup,
    Put,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    ci: String,
    #[serde(default)]
    action: Action,
    item: Option<Item>,
}

/// A configuration item as seeded or configured.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
struct Item {
    owner: String,
    #[serde(default)]
    support_group: Option<String>,
    /// 1..4, or critical/high/medium/low, or ServiceNow's "1 - most critical".
    criticality: Value,
    #[serde(default)]
    class: Option<String>,
    #[serde(default)]
    dependencies: Vec<String>,
}

#[derive(Serialize, Debug, PartialEq)]
struct Output {
    name: String,
    sys_id: Option<String>,
    class: String,
    owner: String,
    support_group: Option<String>,
    criticality: &'static str,
    criticality_level: u8,
    dependencies: Vec<String>,
    source: &'static str,
}

fn handle(_ctx: &Context, input: Input) -> Result<Output, Error> {
    let name = input.ci.trim().to_string();
    if name.is_empty() {
        return Err(Error::fatal("ci must name a configuration item").with_code("invalid-input"));
    }
    let key = format!("ci:{}", name.to_lowercase());
    if input.action == Action::Put {
        let item = input.item.ok_or_else(|| {
            Error::fatal("put needs `item`: {owner, criticality, ...}").with_code("invalid-input")
        })?;
        let output = describe(&name, None, item.clone(), "table")?;
        kv::set_json(&key, &item)?;
        return Ok(output);
    }
    if let Some(item) = kv::get_json::<Item>(&key)? {
        return describe(&name, None, item, "table");
    }
    let mut configured: BTreeMap<String, Item> = config::get("items")?.unwrap_or_default();
    if let Some(item) = configured.remove(&name) {
        return describe(&name, None, item, "config");
    }
    match Instance::configured()? {
        Some(instance) => from_cmdb(&instance, &name),
        None => Err(Error::fatal(format!(
            "no configuration item named {name:?}: seed it with {{action: put}}, list it under \
             [plugins.cmdb-lookup.items], or set `instance` to a CMDB"
        ))
        .with_code("not-found")),
    }
}

fn from_cmdb(instance: &Instance, name: &str) -> Result<Output, Error> {
    // Exact match only: the owner found here routes approvals, so a name
    // that adds query terms is refused, and a record whose name is not the
    // one asked for is not taken.
    let query = steward_table_api::equals_query("name", name)?;
    let record = instance
        .query("cmdb_ci", &query, 1)?
        .into_iter()
        .next()
        .ok_or_else(|| {
            Error::fatal(format!("the CMDB has no configuration item named {name:?}"))
                .with_code("not-found")
        })?;
    check_name(&record, name)?;
    let sys_id = field_text(&record, "sys_id");
    let mut dependencies = Vec::new();
    if let Some(sys_id) = &sys_id {
        for relation in instance.query("cmdb_rel_ci", &format!("parent={sys_id}"), 100)? {
            let child = match field_text(&relation, "child") {
                Some(child) => child,
                None => continue,
            };
            // A plain reference is a sys_id: read the child for its name.
            if child.len() == 32 && child.bytes().all(|b| b.is_ascii_hexdigit()) {
                let item = instance.get("cmdb_ci", &RecordRef::SysId(child.clone()))?;
                dependencies.push(field_text(&item, "name").unwrap_or(child));
            } else {
                dependencies.push(child);
            }
        }
    }
    let item = Item {
        owner: field_text(&record, "owned_by").ok_or_else(|| {
            Error::fatal(format!(
                "configuration item {name:?} has no owner (owned_by)"
            ))
            .with_code("no-owner")
        })?,
        support_group: field_text(&record, "support_group"),
        criticality: Value::String(
            field_text(&record, "business_criticality").unwrap_or_else(|| "4".into()),
        ),
        class: field_text(&record, "sys_class_name"),
        dependencies,
    };
    describe(name, sys_id, item, "cmdb")
}

/// The record is the one named `name`: ServiceNow's `=` ignores case, so
/// this does too.
fn check_name(record: &Value, name: &str) -> Result<(), Error> {
    let found = field_text(record, "name").unwrap_or_default();
    if found.to_lowercase() == name.to_lowercase() {
        return Ok(());
    }
    Err(Error::fatal(format!(
        "the CMDB answered configuration item {found:?} for {name:?}: refusing it"
    ))
    .with_code("name-mismatch"))
}

fn describe(
    name: &str,
    sys_id: Option<String>,
    item: Item,
    source: &'static str,
) -> Result<Output, Error> {
    let level = criticality_level(&item.criticality).ok_or_else(|| {
        Error::fatal(format!(
            "configuration item {name:?} has criticality {} : use 1-4 or critical, high, medium, low",
            item.criticality
        ))
        .with_code("bad-criticality")
    })?;
    Ok(Output {
        name: name.to_string(),
        sys_id,
        class: item.class.unwrap_or_else(|| "cmdb_ci".to_string()),
        owner: item.owner,
        support_group: item.support_group,
        criticality: ["critical", "high", "medium", "low"][usize::from(level - 1)],
        criticality_level: level,
        dependencies: item.dependencies,
        source,
    })
}

/// 1..4 from a number, a word, or ServiceNow's "2 - somewhat critical".
fn criticality_level(value: &Value) -> Option<u8> {
    let level = match value {
        Value::Number(n) => n.as_u64()?,
        Value::String(s) => {
            let s = s.trim().to_lowercase();
            match s.as_str() {
                "critical" => 1,
                "high" => 2,
                "medium" => 3,
                "low" => 4,
                _ => s
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()?,
            }
        }
        _ => return None,
    };
    (1..=4).contains(&level).then_some(level as u8)
}

steward_sdk::plugin!(handle);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_a_record_with_the_requested_name_is_taken() {
        assert!(check_name(&json!({"name": "Payroll"}), "payroll").is_ok());
        assert!(
            check_name(
                &json!({"name": {"value": "payroll", "display_value": "payroll"}}),
                "PAYROLL"
            )
            .is_ok()
        );
        let err = check_name(&json!({"name": "wiki"}), "payroll").unwrap_err();
        assert!(
            err.message.contains("\"wiki\" for \"payroll\""),
            "{}",
            err.message
        );
        assert!(check_name(&json!({}), "payroll").is_err());
    }

    #[test]
    fn criticality_reads_numbers_words_and_servicenow_labels() {
        assert_eq!(criticality_level(&json!(1)), Some(1));
        assert_eq!(criticality_level(&json!("high")), Some(2));
        assert_eq!(criticality_level(&json!("3 - less critical")), Some(3));
        assert_eq!(criticality_level(&json!("4")), Some(4));
        assert_eq!(criticality_level(&json!(0)), None);
        assert_eq!(criticality_level(&json!("5 - whatever")), None);
        assert_eq!(criticality_level(&json!("urgent")), None);
        assert_eq!(criticality_level(&json!(null)), None);
    }

    #[test]
    fn an_item_is_described_with_its_named_criticality() {
        let item: Item = serde_json::from_value(
            json!({"owner": "dana", "criticality": "1 - most critical", "dependencies": ["hr-db"]}),
        )
        .unwrap();
        let out = describe("payroll", None, item, "table").unwrap();
        assert_eq!(out.criticality, "critical");
        assert_eq!(out.criticality_level, 1);
        assert_eq!(out.class, "cmdb_ci");
        assert_eq!(out.dependencies, ["hr-db"]);
        let bad: Item = serde_json::from_value(json!({"owner": "dana", "criticality": 9})).unwrap();
        assert!(
            describe("x", None, bad, "table")
                .unwrap_err()
                .message
                .contains("criticality 9")
        );
    }

    #[test]
    fn items_refuse_unknown_fields() {
        assert!(
            serde_json::from_value::<Item>(json!({"owner": "a", "criticality": 1, "ownr": "b"}))
                .is_err()
        );
    }
}
