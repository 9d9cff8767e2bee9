//! The simulated services around the ITSM: chat webhooks, a hardware
//! vendor, an identity system, and fault injection.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{AppState, Failure, Fault, failure, idempotency_key, new_sys_id, timestamp};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/chat", get(all_messages))
        .route("/chat/{channel}", post(post_message).get(channel_messages))
        .route("/api/sim/orders", post(place_order).get(orders))
        .route("/api/sim/grants", post(grant_access).get(grants))
        .route("/api/sim/faults", post(add_fault).get(faults))
}

/// The words of a Slack (`text`) or Teams (`text`, or an Adaptive Card's
/// text blocks) message.
fn message_text(body: &Value) -> Option<String> {
    if let Some(text) = body
        .get("text")
        .and_then(Value::as_str)
        .filter(|t| !t.trim().is_empty())
    {
        return Some(text.to_string());
    }
    let blocks: Vec<&str> = body
        .get("attachments")?
        .as_array()?
        .iter()
        .filter_map(|a| a.pointer("/content/body")?.as_array())
        .flatten()
        .filter_map(|b| b.get("text")?.as_str())
        .collect();
    (!blocks.is_empty()).then(|| blocks.join("\n"))
}

async fn post_message(
    State(state): State<AppState>,
    Path(channel): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "invalid_payload").into_response();
    };
    let Some(text) = message_text(&payload) else {
        return (StatusCode::BAD_REQUEST, "no_text").into_response();
    };
    let key = idempotency_key(&headers);
    let mut sim = state.sim.lock().unwrap();
    let duplicate = key.is_some()
        && sim
            .chat
            .iter()
            .any(|m| m["channel"] == channel.as_str() && m["idempotency_key"] == json!(key));
    if !duplicate {
        sim.chat.push(json!({
            "channel": channel,
            "text": text,
            "idempotency_key": key,
            "received_at": timestamp(),
            "payload": payload,
        }));
    }
    (StatusCode::OK, "ok").into_response()
}

async fn channel_messages(
    State(state): State<AppState>,
    Path(channel): Path<String>,
) -> Json<Value> {
    let sim = state.sim.lock().unwrap();
    let messages: Vec<&Value> = sim
        .chat
        .iter()
        .filter(|m| m["channel"] == channel.as_str())
        .collect();
    Json(json!({ "channel": channel, "messages": messages }))
}

async fn all_messages(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "messages": state.sim.lock().unwrap().chat }))
}

/// Runs a keyed creation once: a repeated key gets the first answer back,
/// marked `Idempotent-Replayed: true`.
fn once(
    state: &AppState,
    path: &str,
    headers: &HeaderMap,
    create: impl FnOnce(&mut super::Sim) -> (u16, Value),
) -> Response {
    let key = idempotency_key(headers);
    let mut sim = state.sim.lock().unwrap();
    if let Some(key) = &key
        && let Some((status, body)) = sim.replays.get(&(path.to_string(), key.clone()))
    {
        let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
        return (
            status,
            [("idempotent-replayed", "true")],
            Json(body.clone()),
        )
            .into_response();
    }
    let (status, body) = create(&mut sim);
    if let Some(key) = key {
        sim.replays
            .insert((path.to_string(), key), (status, body.clone()));
    }
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        Json(body),
    )
        .into_response()
}

fn object(body: &[u8], required: &[&str]) -> Result<serde_json::Map<String, Value>, Failure> {
    let fields = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => fields,
        _ => {
            return Err(failure(
                StatusCode::BAD_REQUEST,
                "Invalid JSON",
                "the body must be a JSON object",
            ));
        }
    };
    for name in required {
        if fields.get(*name).is_none_or(|v| v.is_null() || v == "") {
            return Err(failure(
                StatusCode::BAD_REQUEST,
                "Missing field",
                &format!("`{name}` is required"),
            ));
        }
    }
    Ok(fields)
}

async fn place_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let fields = match object(&body, &["item", "requested_for"]) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    once(&state, "/api/sim/orders", &headers, |sim| {
        let order = json!({
            "order_id": format!("PO-{:05}", sim.orders.len() + 1),
            "status": "placed",
            "item": fields["item"],
            "quantity": fields.get("quantity").cloned().unwrap_or(json!(1)),
            "requested_for": fields["requested_for"],
            "eta_days": 3,
            "idempotency_key": idempotency_key(&headers),
            "placed_at": timestamp(),
        });
        sim.orders.push(order.clone());
        (201, order)
    })
}

async fn orders(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "orders": state.sim.lock().unwrap().orders }))
}

async fn grant_access(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let fields = match object(&body, &["user", "system"]) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    once(&state, "/api/sim/grants", &headers, |sim| {
        let grant = json!({
            "grant_id": new_sys_id(),
            "user": fields["user"],
            "system": fields["system"],
            "role": fields.get("role").cloned().unwrap_or(json!("user")),
            "idempotency_key": idempotency_key(&headers),
            "granted_at": timestamp(),
        });
        sim.grants.push(grant.clone());
        (201, grant)
    })
}

async fn grants(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "grants": state.sim.lock().unwrap().grants }))
}

async fn add_fault(State(state): State<AppState>, Json(fault): Json<Fault>) -> Response {
    if !(400..600).contains(&fault.status) {
        return failure(
            StatusCode::BAD_REQUEST,
            "Invalid fault",
            "status must be 400..599",
        )
        .into_response();
    }
    state.sim.lock().unwrap().faults.push(fault.clone());
    (StatusCode::CREATED, Json(json!(fault))).into_response()
}

async fn faults(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "faults": state.sim.lock().unwrap().faults }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_and_teams_messages_are_read() {
        assert_eq!(message_text(&json!({"text": "hi"})).as_deref(), Some("hi"));
        let teams = json!({"type": "message", "attachments": [{"content": {"body": [{"text": "a"}, {"text": "b"}]}}]});
        assert_eq!(message_text(&teams).as_deref(), Some("a\nb"));
        assert_eq!(message_text(&json!({"text": " "})), None);
        assert_eq!(message_text(&json!({"blocks": []})), None);
    }
}
