//! ServiceNow encoded queries (`active=true^priority=1^ORpriority=2`), the
//! subset integrations use: `^` is AND, `^OR` is OR with the term before,
//! `^NQ` starts an alternative query; operators `=`, `!=`, `LIKE`,
//! `NOT LIKE`, `STARTSWITH`, `ENDSWITH`, `IN`, `NOT IN`, `ISEMPTY`,
//! `ISNOTEMPTY`, `<`, `<=`, `>`, `>=`; `ORDERBY`/`ORDERBYDESC` terms sort.

use serde_json::{Map, Value};

/// A parsed query: alternatives of AND-ed groups of OR-ed conditions.
#[derive(Debug, Default, PartialEq)]
pub struct Query {
    alternatives: Vec<Vec<Vec<Condition>>>,
    pub order_by: Vec<(String, bool)>,
}

#[derive(Debug, PartialEq)]
struct Condition {
    field: String,
    op: Op,
    value: String,
}

#[derive(Debug, PartialEq, Clone, Copy)]
enum Op {
    Eq,
    Ne,
    Like,
    NotLike,
    StartsWith,
    EndsWith,
    In,
    NotIn,
    IsEmpty,
    IsNotEmpty,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Longest first, so `!=` wins over `=` and `NOT LIKE` over `LIKE`.
const OPERATORS: &[(&str, Op)] = &[
    ("ISNOTEMPTY", Op::IsNotEmpty),
    ("ISEMPTY", Op::IsEmpty),
    ("STARTSWITH", Op::StartsWith),
    ("ENDSWITH", Op::EndsWith),
    ("NOT LIKE", Op::NotLike),
    ("NOT IN", Op::NotIn),
    ("LIKE", Op::Like),
    ("IN", Op::In),
    ("!=", Op::Ne),
    ("<=", Op::Le),
    (">=", Op::Ge),
    ("=", Op::Eq),
    ("<", Op::Lt),
    (">", Op::Gt),
];

impl Query {
    /// Parses `text`; an unknown operator is an error naming the term.
    pub fn parse(text: &str) -> Result<Query, String> {
        let mut query = Query::default();
        for alternative in text.split("^NQ") {
            let mut groups: Vec<Vec<Condition>> = Vec::new();
            for term in alternative.split('^').filter(|t| !t.is_empty()) {
                if let Some(field) = term.strip_prefix("ORDERBYDESC") {
                    query.order_by.push((field.to_string(), true));
                    continue;
                }
                if let Some(field) = term.strip_prefix("ORDERBY") {
                    query.order_by.push((field.to_string(), false));
                    continue;
                }
                match term.strip_prefix("OR") {
                    Some(rest) if !groups.is_empty() => {
                        groups.last_mut().unwrap().push(Condition::parse(rest)?)
                    }
                    _ => groups.push(vec![Condition::parse(term)?]),
                }
            }
            if !groups.is_empty() {
                query.alternatives.push(groups);
            }
        }
        Ok(query)
    }

    pub fn matches(&self, record: &Map<String, Value>) -> bool {
        self.alternatives.is_empty()
            || self.alternatives.iter().any(|groups| {
                groups
                    .iter()
                    .all(|any_of| any_of.iter().any(|c| c.matches(record)))
            })
    }
}

impl Condition {
    fn parse(term: &str) -> Result<Condition, String> {
        let field_end = term
            // Field names are lowercase; operators are upper case or symbols.
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.'))
            .unwrap_or(term.len());
        let (field, rest) = term.split_at(field_end);
        if field.is_empty() {
            return Err(format!(
                "query term {term:?} does not start with a field name"
            ));
        }
        let (op, value) = OPERATORS
            .iter()
            .find_map(|(token, op)| rest.strip_prefix(token).map(|v| (*op, v)))
            .ok_or_else(|| format!("query term {term:?} has no known operator after {field}"))?;
        Ok(Condition {
            field: field.to_string(),
            op,
            value: value.to_string(),
        })
    }

    fn matches(&self, record: &Map<String, Value>) -> bool {
        let actual = record.get(&self.field).map(text_of).unwrap_or_default();
        let expected = self.value.as_str();
        let lower = || (actual.to_lowercase(), expected.to_lowercase());
        match self.op {
            Op::Eq => actual == expected,
            Op::Ne => actual != expected,
            Op::Like => {
                let (a, e) = lower();
                a.contains(&e)
            }
            Op::NotLike => {
                let (a, e) = lower();
                !a.contains(&e)
            }
            Op::StartsWith => {
                let (a, e) = lower();
                a.starts_with(&e)
            }
            Op::EndsWith => {
                let (a, e) = lower();
                a.ends_with(&e)
            }
            Op::In => expected.split(',').any(|v| v == actual),
            Op::NotIn => !expected.split(',').any(|v| v == actual),
            Op::IsEmpty => actual.is_empty(),
            Op::IsNotEmpty => !actual.is_empty(),
            Op::Lt | Op::Le | Op::Gt | Op::Ge => {
                let ordering = match (actual.parse::<f64>(), expected.parse::<f64>()) {
                    (Ok(a), Ok(e)) => a.partial_cmp(&e),
                    _ => Some(actual.as_str().cmp(expected)),
                };
                let Some(ordering) = ordering else {
                    return false;
                };
                match self.op {
                    Op::Lt => ordering.is_lt(),
                    Op::Le => ordering.is_le(),
                    Op::Gt => ordering.is_gt(),
                    _ => ordering.is_ge(),
                }
            }
        }
    }
}

/// A field as the Table API compares it: strings as they are, references
/// (`{"value", "display_value"}`) by their value, other JSON as text.
pub fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Object(o) => o.get("value").map(text_of).unwrap_or_default(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn and_or_and_alternatives_combine_like_servicenow() {
        let r = record(json!({"active": "true", "priority": "2", "short_description": "VPN down"}));
        let q = |s: &str| Query::parse(s).unwrap().matches(&r);
        assert!(q(""));
        assert!(q("active=true^priority=2"));
        assert!(!q("active=true^priority=1"));
        assert!(q("active=true^priority=1^ORpriority=2"));
        assert!(q("priority=1^NQactive=true"));
        assert!(!q("priority=1^NQactive=false"));
        assert!(q("short_descriptionLIKEvpn"));
        assert!(q("short_descriptionNOT LIKEmail"));
        assert!(q("priorityIN1,2,3^priority!=3"));
        assert!(q("priority<3^priority>=2"));
        assert!(q("assigned_toISEMPTY^short_descriptionISNOTEMPTY"));
        assert!(q(
            "short_descriptionSTARTSWITHvpn^short_descriptionENDSWITHdown"
        ));
    }

    #[test]
    fn references_compare_by_value_and_order_terms_are_kept() {
        let r = record(json!({"owned_by": {"value": "abc", "display_value": "dana"}, "n": 5}));
        assert!(Query::parse("owned_by=abc^n=5").unwrap().matches(&r));
        let q = Query::parse("active=true^ORDERBYDESCsys_created_on^ORDERBYnumber").unwrap();
        assert_eq!(
            q.order_by,
            [
                ("sys_created_on".to_string(), true),
                ("number".to_string(), false)
            ]
        );
    }

    #[test]
    fn bad_terms_are_named() {
        assert!(
            Query::parse("priority~1")
                .unwrap_err()
                .contains("priority~1")
        );
        assert!(Query::parse("=1").unwrap_err().contains("field name"));
    }
}
