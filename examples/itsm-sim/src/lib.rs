//! A small local stand-in for the systems ITSM workflows talk to, so every
//! example runs end to end on a laptop with no external account. It is a
//! separate server the plugins reach over real HTTP, never a shortcut
//! inside the runtime, and a crate of its own so the product binary does
//! not carry it. `cargo run --release -p itsm-sim` serves it; the tests
//! serve [`router`] on a socket of their own. It answers with:
//!
//! - the ServiceNow Table API subset (`/api/now/table/{table}`): list with
//!   encoded queries, read, create with numbers (INC0010001), update with
//!   journal fields, delete; basic or bearer auth; ServiceNow's error shape;
//! - chat webhooks (`/chat/{channel}`, Slack or Teams JSON) that keep what
//!   they received;
//! - a hardware vendor (`/api/sim/orders`) and an identity system
//!   (`/api/sim/grants`) that de-duplicate by `Idempotency-Key`;
//! - fault injection (`/api/sim/faults`) to watch retries happen.
//!
//! State is in memory: a restart starts from the seed again.

mod query;
mod seed;
mod services;
mod table;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// Who may call the Table API.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// HTTP basic user and password.
    pub basic: Option<(String, String)>,
    /// An OAuth bearer token.
    pub token: Option<String>,
}

/// How the simulator starts.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub credentials: Credentials,
    /// Start with the demo records (CMDB items, stock, people).
    pub demo_data: bool,
    /// More records, `{table: [record, ...]}`, loaded after the demo data.
    pub seed: Option<Value>,
}

/// Everything the simulator holds, behind one lock: it serves a laptop's
/// worth of traffic, not a benchmark.
#[derive(Default)]
struct Sim {
    tables: BTreeMap<String, Vec<Map<String, Value>>>,
    /// The last number handed out per prefix (INC, REQ, RITM, ...).
    numbers: BTreeMap<&'static str, u64>,
    chat: Vec<Value>,
    orders: Vec<Value>,
    grants: Vec<Value>,
    /// Answers already given to a keyed request: (path, key) → (status, body).
    replays: BTreeMap<(String, String), (u16, Value)>,
    faults: Vec<Fault>,
}

/// "Answer the next `times` requests under `path_prefix` with `status`".
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct Fault {
    path_prefix: String,
    status: u16,
    #[serde(default = "one")]
    times: u32,
}

fn one() -> u32 {
    1
}

#[derive(Clone)]
struct AppState {
    sim: Arc<Mutex<Sim>>,
    credentials: Arc<Credentials>,
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("seed: {0}")]
    Seed(String),
}

/// The simulator's routes, ready to serve.
pub fn router(options: Options) -> Result<Router, SimError> {
    let mut sim = Sim::default();
    if options.demo_data {
        seed::load(&mut sim, &seed::demo()).map_err(SimError::Seed)?;
    }
    if let Some(extra) = &options.seed {
        seed::load(&mut sim, extra).map_err(SimError::Seed)?;
    }
    let state = AppState {
        sim: Arc::new(Mutex::new(sim)),
        credentials: Arc::new(options.credentials),
    };
    let table_api = table::routes().layer(middleware::from_fn_with_state(
        state.clone(),
        require_credentials,
    ));
    Ok(Router::new()
        .merge(table_api)
        .merge(services::routes())
        .layer(middleware::from_fn_with_state(state.clone(), inject_faults))
        .with_state(state))
}

/// ServiceNow's failure answer: a status and
/// `{"error": {"message", "detail"}, "status": "failure"}`.
struct Failure {
    status: StatusCode,
    message: String,
    detail: String,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({
                "error": { "message": self.message, "detail": self.detail },
                "status": "failure",
            })),
        )
            .into_response()
    }
}

fn failure(status: StatusCode, message: &str, detail: &str) -> Failure {
    Failure {
        status,
        message: message.to_string(),
        detail: detail.to_string(),
    }
}

async fn require_credentials(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let credentials = &state.credentials;
    if credentials.basic.is_none() && credentials.token.is_none() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let accepted = match presented.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            credentials.token.as_deref() == Some(token)
        }
        Some((scheme, encoded)) if scheme.eq_ignore_ascii_case("basic") => {
            credentials.basic.as_ref().is_some_and(|(user, password)| {
                decode_base64(encoded).as_deref() == Some(format!("{user}:{password}").as_bytes())
            })
        }
        _ => false,
    };
    if !accepted {
        let detail = if presented.is_empty() {
            "Required to provide Auth information"
        } else {
            "Invalid credentials"
        };
        return failure(StatusCode::UNAUTHORIZED, "User Not Authenticated", detail).into_response();
    }
    next.run(request).await
}

async fn inject_faults(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    if !path.starts_with("/api/sim/faults") {
        let status = {
            let mut sim = state.sim.lock().unwrap();
            let fault = sim
                .faults
                .iter_mut()
                .find(|f| f.times > 0 && path.starts_with(&f.path_prefix));
            let status = fault.map(|f| {
                f.times -= 1;
                f.status
            });
            sim.faults.retain(|f| f.times > 0);
            status
        };
        if let Some(status) = status {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return failure(
                status,
                "Injected fault",
                &format!("POST /api/sim/faults asked for {status} on {path}"),
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// The request's `Idempotency-Key`, when it sent one.
fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .map(str::to_string)
}

/// A fresh 32-hex-digit sys_id.
fn new_sys_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// ServiceNow's `YYYY-MM-DD HH:MM:SS` (UTC).
fn timestamp() -> String {
    chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = text.trim().bytes().filter(|b| *b != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c)? << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes_what_basic_auth_sends() {
        assert_eq!(
            super::decode_base64("c3Rld2FyZDpzdGV3YXJk").unwrap(),
            b"steward:steward"
        );
        assert_eq!(super::decode_base64("Zm8=").unwrap(), b"fo");
        assert_eq!(super::decode_base64("Zg==").unwrap(), b"f");
        assert!(super::decode_base64("Z").is_none());
        assert!(super::decode_base64("**==").is_none());
    }
}
