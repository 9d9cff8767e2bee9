//! `http-request`: `{method, url, headers?, body?, expect_status?, timeout_ms?, auth?}`
//! → `{status, headers, body}`.
//!
//! The host decides which origins are reachable; this plugin adds the
//! step's idempotency key as `Idempotency-Key`, encodes JSON bodies, decodes
//! JSON responses and turns unexpected statuses into step errors (retryable
//! for 408, 429 and 5xx).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use steward_sdk::{Context, Error, Value, http, secrets};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default = "default_method")]
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default)]
    expect_status: Option<ExpectStatus>,
    #[serde(default)]
    timeout_ms: Option<u32>,
    /// Credentials from granted secrets, named, never written in the
    /// workflow: `{bearer: SECRET}` or `{user: SECRET, password: SECRET}`.
    #[serde(default)]
    auth: Option<Auth>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Auth {
    bearer: Option<String>,
    user: Option<String>,
    password: Option<String>,
}

impl Auth {
    /// The `Authorization` header value, reading the named secrets.
    fn header(&self) -> Result<String, Error> {
        match (&self.bearer, &self.user, &self.password) {
            (Some(token), None, None) => Ok(format!("Bearer {}", secrets::get(token)?)),
            (None, Some(user), Some(password)) => {
                Ok(http::basic_auth(&secrets::get(user)?, &secrets::get(password)?))
            }
            _ => Err(Error::fatal(
                "auth is {bearer: SECRET} or {user: SECRET, password: SECRET}, naming secrets granted to http-request",
            )
            .with_code("invalid-input")),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ExpectStatus {
    One(u16),
    Many(Vec<u16>),
}

impl ExpectStatus {
    fn accepts(expected: &Option<ExpectStatus>, status: u16) -> bool {
        match expected {
            None => (200..300).contains(&status),
            Some(ExpectStatus::One(s)) => *s == status,
            Some(ExpectStatus::Many(list)) => list.contains(&status),
        }
    }
}

#[derive(Serialize)]
struct Output {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Value,
}

fn default_method() -> String {
    "GET".to_string()
}

fn has_header(headers: &[(String, String)], name: &str) -> bool {
    headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name))
}

fn handle(ctx: &Context, input: Input) -> Result<Output, Error> {
    let mut headers: Vec<(String, String)> = input.headers.into_iter().collect();
    let body = match input.body {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.into_bytes()),
        Some(json) => {
            if !has_header(&headers, "content-type") {
                headers.push(("content-type".into(), "application/json".into()));
            }
            Some(serde_json::to_vec(&json)?)
        }
    };
    if let Some(auth) = &input.auth {
        if has_header(&headers, "authorization") {
            return Err(
                Error::fatal("give either `auth` or an Authorization header, not both")
                    .with_code("invalid-input"),
            );
        }
        headers.push(("Authorization".into(), auth.header()?));
    }
    if !has_header(&headers, "idempotency-key") {
        headers.push(("Idempotency-Key".into(), ctx.idempotency_key.clone()));
    }
    let request = http::Request {
        method: input.method.to_ascii_uppercase(),
        url: input.url.clone(),
        headers,
        body,
        timeout_ms: input.timeout_ms,
    };
    let response = http::send(&request)?;
    let headers: BTreeMap<String, String> = response
        .headers
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let body = decode_body(&response.body);
    let status = response.status;
    if !ExpectStatus::accepts(&input.expect_status, status) {
        let retryable = status == 408 || status == 429 || status >= 500;
        let mut snippet = String::from_utf8_lossy(&response.body).into_owned();
        snippet.truncate(200);
        let message = format!(
            "{} {} answered {status}: {snippet}",
            request.method,
            origin(&input.url)
        );
        let error = if retryable {
            Error::retryable(message)
        } else {
            Error::fatal(message)
        };
        return Err(error.with_code(format!("http-{status}")));
    }
    Ok(Output {
        status,
        headers,
        body,
    })
}

/// JSON when it parses as JSON, text otherwise.
fn decode_body(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// `scheme://host[:port]` of `url`, without user info, path or query:
/// a URL's path may be its credential (chat webhook URLs are), and step
/// errors are kept in the run's history and shown by the API.
fn origin(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    let authority = &url[start..end];
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{}{host}", &url[..start])
}

steward_sdk::plugin!(handle);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_origin_of_a_url_only() {
        assert_eq!(
            origin("https://chat.example.com/hooks/T0SECRET?token=x"),
            "https://chat.example.com"
        );
        assert_eq!(
            origin("http://user:pw@127.0.0.1:8080/a#b"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(origin("http://host?q=1"), "http://host");
    }

    #[test]
    fn auth_takes_a_bearer_or_a_user_and_password() {
        let half: Auth = serde_json::from_str(r#"{"user": "U"}"#).unwrap();
        assert!(half.header().unwrap_err().message.contains("bearer"));
        assert!(serde_json::from_str::<Auth>(r#"{"token": "T"}"#).is_err());
    }
}
