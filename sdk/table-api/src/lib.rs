//! A client for the ServiceNow Table API (`/api/now/table/{table}`), shared
//! by `itsm-ticket` and `cmdb-lookup`. Where the instance is comes from the
//! operator's settings (`instance = "https://acme.service-now.com"`); who we
//! are comes from granted secrets: `SNOW_TOKEN` (OAuth bearer) or
//! `SNOW_USER` with `SNOW_PASSWORD` (basic).
//!
//! Failures map onto what a workflow can act on: 408, 429 and 5xx are
//! retryable; 401/403 and other 4xx fail the step with the instance's own
//! message.

use serde_json::{Map, Value};
use steward_sdk::{Error, config, http, secrets};

/// One ServiceNow instance, as the operator configured it.
pub struct Instance {
    base: String,
    authorization: Option<String>,
}

/// Where a record is: by `sys_id`, or by `number` (looked up first).
pub enum RecordRef {
    SysId(String),
    Number(String),
}

impl Instance {
    /// The instance from the `instance` setting, or `None` when the
    /// operator configured none.
    pub fn configured() -> Result<Option<Instance>, Error> {
        let Some(base) = config::get::<String>("instance")? else {
            return Ok(None);
        };
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(Error::fatal(format!(
                "the `instance` setting {base:?} is not an http(s) URL, e.g. https://acme.service-now.com"
            ))
            .with_code("bad-setting"));
        }
        Ok(Some(Instance {
            base,
            authorization: authorization()?,
        }))
    }

    /// The instance, or an error telling the operator what to set.
    pub fn required(plugin: &str) -> Result<Instance, Error> {
        Instance::configured()?.ok_or_else(|| {
            Error::fatal(format!(
                "no ServiceNow instance is configured: set `instance = \"https://...\"` under \
                 [plugins.{plugin}] in steward.toml"
            ))
            .with_code("not-configured")
        })
    }

    /// `GET /api/now/table/{table}?sysparm_query=...`: the matching records.
    pub fn query(&self, table: &str, query: &str, limit: u32) -> Result<Vec<Value>, Error> {
        let url = format!(
            "{}/api/now/table/{}?sysparm_query={}&sysparm_limit={limit}&sysparm_display_value=false",
            self.base,
            encode(table),
            encode(query)
        );
        match self.result("GET", &url, None, None)? {
            Value::Array(records) => Ok(records),
            other => Err(unexpected(&url, &other)),
        }
    }

    /// The record `reference` points at, or a fatal error naming it.
    pub fn get(&self, table: &str, reference: &RecordRef) -> Result<Value, Error> {
        match reference {
            RecordRef::SysId(sys_id) => {
                let url = format!(
                    "{}/api/now/table/{}/{}",
                    self.base,
                    encode(table),
                    encode(sys_id)
                );
                self.result("GET", &url, None, None)
            }
            RecordRef::Number(number) => self
                .query(table, &equals_query("number", number)?, 1)?
                .into_iter()
                .next()
                .ok_or_else(|| {
                    Error::fatal(format!("{table} has no record numbered {number}"))
                        .with_code("not-found")
                }),
        }
    }

    /// `POST /api/now/table/{table}`: the created record.
    pub fn create(
        &self,
        table: &str,
        fields: &Map<String, Value>,
        key: &str,
    ) -> Result<Value, Error> {
        let url = format!("{}/api/now/table/{}", self.base, encode(table));
        self.result("POST", &url, Some(fields), Some(key))
    }

    /// `PATCH /api/now/table/{table}/{sys_id}`: the updated record.
    pub fn update(
        &self,
        table: &str,
        sys_id: &str,
        fields: &Map<String, Value>,
        key: &str,
    ) -> Result<Value, Error> {
        let url = format!(
            "{}/api/now/table/{}/{}",
            self.base,
            encode(table),
            encode(sys_id)
        );
        self.result("PATCH", &url, Some(fields), Some(key))
    }

    /// Sends and returns the answer's `result`.
    fn result(
        &self,
        method: &str,
        url: &str,
        fields: Option<&Map<String, Value>>,
        key: Option<&str>,
    ) -> Result<Value, Error> {
        let body = self.send(
            method,
            url,
            fields.map(|f| Value::Object(f.clone())).as_ref(),
            key,
        )?;
        body.get("result")
            .cloned()
            .ok_or_else(|| unexpected(url, &body))
    }

    fn send(
        &self,
        method: &str,
        url: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> Result<Value, Error> {
        let mut headers = vec![("Accept".to_string(), "application/json".to_string())];
        if let Some(auth) = &self.authorization {
            headers.push(("Authorization".to_string(), auth.clone()));
        }
        if body.is_some() {
            headers.push(("Content-Type".to_string(), "application/json".to_string()));
        }
        if let Some(key) = key {
            headers.push(("Idempotency-Key".to_string(), key.to_string()));
        }
        let request = http::Request {
            method: method.to_string(),
            url: url.to_string(),
            headers,
            body: body.map(|b| b.to_string().into_bytes()),
            timeout_ms: None,
        };
        let response = http::send(&request)?;
        let parsed: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        if (200..300).contains(&response.status) {
            return Ok(parsed);
        }
        Err(status_error(method, url, response.status, &parsed))
    }
}

/// The `Authorization` header from whichever credentials are granted.
fn authorization() -> Result<Option<String>, Error> {
    if let Ok(token) = secrets::get("SNOW_TOKEN") {
        return Ok(Some(format!("Bearer {token}")));
    }
    match (secrets::get("SNOW_USER"), secrets::get("SNOW_PASSWORD")) {
        (Ok(user), Ok(password)) => Ok(Some(http::basic_auth(&user, &password))),
        _ => Ok(None),
    }
}

/// The step error for a non-2xx answer, with the instance's own message.
pub fn status_error(method: &str, url: &str, status: u16, body: &Value) -> Error {
    let path = url.split('?').next().unwrap_or(url);
    let detail = error_message(body);
    let message = match status {
        401 | 403 => format!(
            "{method} {path} answered {status} ({detail}): grant SNOW_TOKEN, or SNOW_USER and \
             SNOW_PASSWORD, to this plugin in steward.toml"
        ),
        _ => format!("{method} {path} answered {status}: {detail}"),
    };
    let error = if status == 408 || status == 429 || status >= 500 {
        Error::retryable(message)
    } else {
        Error::fatal(message)
    };
    error.with_code(format!("http-{status}"))
}

/// `{"error": {"message", "detail"}}`, as ServiceNow reports failures.
fn error_message(body: &Value) -> String {
    let error = &body["error"];
    match (error["message"].as_str(), error["detail"].as_str()) {
        (Some(m), Some(d)) if !d.is_empty() => format!("{m}: {d}"),
        (Some(m), _) => m.to_string(),
        _ => "no error message".to_string(),
    }
}

fn unexpected(url: &str, body: &Value) -> Error {
    let mut text = body.to_string();
    text.truncate(200);
    Error::fatal(format!(
        "{url} did not answer with a {{\"result\": ...}} document: {text}"
    ))
    .with_code("bad-response")
}

/// A field's value whether the instance sent it plain or as
/// `{"value", "display_value"}` (`sysparm_display_value=all`).
pub fn field_text(record: &Value, field: &str) -> Option<String> {
    match record.get(field)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(o) => o
            .get("display_value")
            .or_else(|| o.get("value"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `field=value` as an encoded query that matches `value` only. Encoded
/// queries have no escape: a `^` in a value starts another term
/// (`payroll^ORname=wiki` also matches wiki, `^ORDERBY...` reorders), so
/// a value holding `^` or a control character (a line break) is refused
/// before any request rather than sent.
pub fn equals_query(field: &str, value: &str) -> Result<String, Error> {
    if let Some(c) = value.chars().find(|&c| c == '^' || c.is_control()) {
        return Err(Error::fatal(format!(
            "{field} {value:?} contains {c:?}, which a ServiceNow query cannot match as text: \
             it would join other query terms"
        ))
        .with_code("invalid-input"));
    }
    Ok(format!("{field}={value}"))
}

/// Percent-encodes a query component (RFC 3986 unreserved characters stay).
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            encode("number=INC0010001^active=true"),
            "number%3DINC0010001%5Eactive%3Dtrue"
        );
        assert_eq!(encode("a b&c"), "a%20b%26c");
    }

    #[test]
    fn equality_queries_refuse_values_that_would_add_query_terms() {
        assert_eq!(equals_query("name", "payroll").unwrap(), "name=payroll");
        for value in [
            "payroll^ORname=wiki^ORDERBYDESCname",
            "payroll^NQname=wiki",
            "a\nb",
        ] {
            let err = equals_query("name", value).unwrap_err();
            assert!(!err.retryable);
            assert!(
                err.message.contains("cannot match as text"),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn statuses_map_to_retryable_or_fatal_errors() {
        let body = json!({"error": {"message": "User Not Authenticated", "detail": "Required to provide Auth information"}, "status": "failure"});
        let denied = status_error("GET", "http://i/api/now/table/incident?x", 401, &body);
        assert!(!denied.retryable);
        assert!(
            denied.message.contains("User Not Authenticated")
                && denied.message.contains("SNOW_TOKEN")
        );
        assert!(!denied.message.contains("?x"));
        assert!(status_error("POST", "u", 503, &Value::Null).retryable);
        assert!(status_error("POST", "u", 429, &Value::Null).retryable);
        assert!(!status_error("POST", "u", 400, &Value::Null).retryable);
    }

    #[test]
    fn fields_read_plain_or_with_display_values() {
        let record = json!({"owned_by": {"value": "6816f79c", "display_value": "dana"}, "name": "payroll", "n": 2, "empty": ""});
        assert_eq!(field_text(&record, "owned_by").as_deref(), Some("dana"));
        assert_eq!(field_text(&record, "name").as_deref(), Some("payroll"));
        assert_eq!(field_text(&record, "n").as_deref(), Some("2"));
        assert_eq!(field_text(&record, "empty"), None);
        assert_eq!(field_text(&record, "missing"), None);
    }
}
