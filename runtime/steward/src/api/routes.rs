//! Every route of the API in one table. The router, the scope each route
//! needs and the OpenAPI document (`/openapi.json`) are all built from it,
//! so a route cannot be served without being documented, or documented
//! with another scope than the one enforced.

use std::sync::Arc;

use axum::Json;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter, on};
use serde_json::{Value, json};

use super::{
    AppState, approvals, audit, groups, hooks, metrics, plugins, reports, retry, runs, schedules,
    signals, tokens, workflows,
};
use crate::config::ApiSettings;

/// A success answer: status, description, and the media type and schema
/// of its body when it has one.
pub(super) type Answer = (u16, &'static str, Option<(&'static str, Value)>);

/// One method on one path, with what it needs and what it answers.
pub(super) struct Route {
    pub method: Method,
    /// axum's path syntax, which is OpenAPI's: `/v1/runs/{id}`.
    pub path: &'static str,
    /// The token scope it needs; `None` for the open routes.
    pub scope: Option<&'static str>,
    pub handler: MethodRouter<Arc<AppState>>,
    pub summary: &'static str,
    /// Query and header parameters, as OpenAPI parameter objects.
    pub params: Vec<Value>,
    /// Request bodies by media type.
    pub body: Vec<(&'static str, Value)>,
    /// Whether a request must have a body.
    pub body_required: bool,
    /// Success answers.
    pub answers: Vec<Answer>,
    /// Problem statuses beyond those the route's shape implies (see
    /// `problem_statuses`).
    pub errors: Vec<u16>,
}

impl Route {
    fn new<H, T>(method: Method, filter: MethodFilter, path: &'static str, handler: H) -> Route
    where
        H: Handler<T, Arc<AppState>>,
        T: 'static,
    {
        Route {
            method,
            path,
            scope: None,
            handler: on(filter, handler),
            summary: "",
            params: Vec::new(),
            body: Vec::new(),
            body_required: true,
            answers: Vec::new(),
            errors: Vec::new(),
        }
    }

    fn get<H: Handler<T, Arc<AppState>>, T: 'static>(path: &'static str, handler: H) -> Route {
        Route::new(Method::GET, MethodFilter::GET, path, handler)
    }

    fn post<H: Handler<T, Arc<AppState>>, T: 'static>(path: &'static str, handler: H) -> Route {
        Route::new(Method::POST, MethodFilter::POST, path, handler)
    }

    fn put<H: Handler<T, Arc<AppState>>, T: 'static>(path: &'static str, handler: H) -> Route {
        Route::new(Method::PUT, MethodFilter::PUT, path, handler)
    }

    fn patch<H: Handler<T, Arc<AppState>>, T: 'static>(path: &'static str, handler: H) -> Route {
        Route::new(Method::PATCH, MethodFilter::PATCH, path, handler)
    }

    fn delete<H: Handler<T, Arc<AppState>>, T: 'static>(path: &'static str, handler: H) -> Route {
        Route::new(Method::DELETE, MethodFilter::DELETE, path, handler)
    }

    fn scope(mut self, scope: &'static str) -> Route {
        self.scope = Some(scope);
        self
    }

    /// Open to everyone (the default; says so where it is declared).
    fn open(self) -> Route {
        debug_assert!(self.scope.is_none());
        self
    }

    fn summary(mut self, summary: &'static str) -> Route {
        self.summary = summary;
        self
    }

    fn param(mut self, place: &str, name: &str, required: bool, mut schema: Value) -> Route {
        let mut param = json!({"name": name, "in": place, "required": required});
        if let Some(description) = schema.as_object_mut().and_then(|s| s.remove("description")) {
            param["description"] = description;
        }
        param["schema"] = schema;
        self.params.push(param);
        self
    }

    fn query(self, name: &str, schema: Value) -> Route {
        self.param("query", name, false, schema)
    }

    fn header(self, name: &str, schema: Value) -> Route {
        self.param("header", name, false, schema)
    }

    fn header_required(self, name: &str, schema: Value) -> Route {
        self.param("header", name, true, schema)
    }

    fn body(mut self, media: &'static str, schema: Value) -> Route {
        self.body.push((media, schema));
        self
    }

    /// The body may be left out.
    fn optional_body(mut self) -> Route {
        self.body_required = false;
        self
    }

    fn ok(
        mut self,
        status: u16,
        description: &'static str,
        media: &'static str,
        schema: Value,
    ) -> Route {
        self.answers
            .push((status, description, Some((media, schema))));
        self
    }

    fn ok_empty(mut self, status: u16, description: &'static str) -> Route {
        self.answers.push((status, description, None));
        self
    }

    fn errors(mut self, statuses: &[u16]) -> Route {
        self.errors.extend_from_slice(statuses);
        self
    }

    /// A body limit of its own (plugin uploads are larger than JSON).
    fn body_limit(mut self, bytes: usize) -> Route {
        self.handler = self.handler.layer(DefaultBodyLimit::max(bytes));
        self
    }

    /// The problem statuses this route can answer: 401 and 403 when it
    /// needs a token, 400 for bad path or query parameters, 400/413/415/422 for a
    /// JSON body, 404 for an unknown `{id}` (but not on `PUT`, which
    /// creates), 503 while the database cannot be reached (every `/v1`
    /// route reads or writes it), 431 past `[api] max_header_bytes` (every
    /// route), and the route's own.
    pub fn problem_statuses(&self) -> Vec<u16> {
        let mut out = self.errors.clone();
        out.push(431);
        if self.path.starts_with("/v1/") {
            out.push(503);
        }
        if self.scope.is_some() {
            out.extend([401, 403]);
        }
        if self.params.iter().any(|p| p["in"] == "query") {
            out.push(400);
        }
        if self
            .body
            .iter()
            .any(|(media, _)| *media == "application/json")
        {
            out.extend([400, 413, 415, 422]);
        }
        if self.path.contains('{') {
            // A parameter that is not UTF-8 once decoded.
            out.push(400);
            if self.method != Method::PUT {
                out.push(404);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        super::openapi::document(),
    )
}

/// Approvals and delegations are read by whoever reads runs and by
/// approvers, whose tokens may hold only `approvals:decide` (a chat bot
/// listing what its people have to decide). `|` separates alternatives.
const READ_APPROVALS: &str = "runs:read|approvals:decide";

/// The API, route by route.
pub(super) fn table(limits: &ApiSettings) -> Vec<Route> {
    vec![
        Route::get("/healthz", health)
            .summary("Liveness")
            .ok_empty(200, "Alive")
            .open(),
        Route::get("/openapi.json", openapi)
            .summary("This document")
            .ok_empty(200, "OpenAPI 3.1")
            .open(),
        Route::get("/v1/workflows", workflows::list)
            .scope("runs:read")
            .summary("Deployed workflows, latest version of each")
            .ok_empty(200, "List"),
        Route::post("/v1/workflows/{name}/runs", runs::start)
            .scope("runs:write")
            .summary("Start a run")
            .header("Idempotency-Key", json!({"type": "string", "maxLength": 255}))
            .body("application/json", json!({"type": "object", "properties": {"input": {}}, "additionalProperties": false}))
            .optional_body()
            .ok(200, "The run an earlier request with the same Idempotency-Key created", "application/json", json!({"$ref": "#/components/schemas/RunSummary"}))
            .ok(201, "Created", "application/json", json!({"$ref": "#/components/schemas/RunSummary"})),
        Route::get("/v1/runs", runs::list)
            .scope("runs:read")
            .summary("Runs, newest first")
            .query("workflow", json!({"type": "string"}))
            .query("status", json!({"type": "string", "enum": ["pending", "running", "waiting", "succeeded", "failed", "rejected", "cancelled"]}))
            .query("limit", json!({"type": "integer", "minimum": 1, "maximum": 500}))
            .query("cursor", json!({"type": "string"}))
            .ok(200, "A page", "application/json", json!({"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/RunSummary"}}, "next_cursor": {"type": ["string", "null"]}}})),
        Route::get("/v1/runs/{id}", runs::show)
            .scope("runs:read")
            .summary("A run with its steps")
            .ok(200, "The run", "application/json", json!({"$ref": "#/components/schemas/Run"})),
        Route::get("/v1/runs/{id}/events", runs::events)
            .scope("runs:read")
            .summary("The run's history")
            .ok_empty(200, "Events in order"),
        Route::post("/v1/runs/{id}/cancel", runs::cancel)
            .scope("runs:write")
            .summary("Cancel a run")
            .body("application/json", json!({"type": "object", "properties": {"reason": {"type": "string"}}, "additionalProperties": false}))
            .optional_body()
            .ok_empty(202, "Cancel requested")
            .errors(&[409]),
        Route::post("/v1/runs/{id}/rerun", runs::rerun)
            .scope("runs:write")
            .summary("Start a new run of the latest version of this run's workflow with the same input (or `input`), linked to it by `rerun_of`; the run must have finished")
            .header("Idempotency-Key", json!({"type": "string", "maxLength": 255}))
            .body("application/json", json!({"type": "object", "properties": {"input": {}}, "additionalProperties": false}))
            .optional_body()
            .ok(200, "The rerun an earlier request with the same Idempotency-Key created", "application/json", json!({"$ref": "#/components/schemas/RunSummary"}))
            .ok(201, "Created", "application/json", json!({"$ref": "#/components/schemas/RunSummary"}))
            .errors(&[409]),
        Route::post("/v1/runs/{id}/retry", retry::retry)
            .scope("runs:write")
            .summary("Resume this failed, rejected or cancelled run in place from the step that ended it (or `from_step`, which resets it and every step after; a step inside a parallel group resets the group), keeping the outputs of the steps before; `input` corrects the input, `upgrade` continues on the latest version of the workflow. 409 for a run still going (cancel it first) or succeeded (rerun it); 422 for an unknown `from_step`, an input the schema refuses or an upgrade lacking finished steps")
            .header("Idempotency-Key", json!({"type": "string", "maxLength": 255}))
            .body("application/json", json!({"type": "object", "properties": {"from_step": {"type": "string"}, "input": {}, "upgrade": {"type": "boolean"}}, "additionalProperties": false}))
            .optional_body()
            .ok(200, "The run, running again (or as it is now, for a repeated Idempotency-Key)", "application/json", json!({"$ref": "#/components/schemas/Run"}))
            .errors(&[409]),
        Route::post("/v1/runs/{id}/signals/{name}", signals::deliver_to_run)
            .scope("runs:write")
            .summary("Deliver signal NAME to a run, with the body (any JSON, or none for null) as payload: kept until the run's next (or current) wait_for step on NAME takes it, once; a repeated Idempotency-Key returns the first delivery; 409 when the run has finished")
            .header("Idempotency-Key", json!({"type": "string", "maxLength": 255}))
            .body("application/json", json!({}))
            .optional_body()
            .ok(200, "The delivery an earlier request with the same Idempotency-Key made", "application/json", json!({"$ref": "#/components/schemas/SignalDelivery"}))
            .ok(202, "Accepted: kept until a wait_for step of the run takes it", "application/json", json!({"$ref": "#/components/schemas/SignalDelivery"}))
            .errors(&[409]),
        Route::get("/v1/runs/{id}/signals", signals::list)
            .scope("runs:read")
            .summary("The signals delivered to a run and the keyed ones it took, oldest first, with consumed and the step that took each")
            .ok(200, "The deliveries", "application/json", json!({"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/SignalDelivery"}}}})),
        Route::post("/v1/signals/{name}", signals::deliver_keyed)
            .scope("runs:write")
            .summary("Deliver signal NAME keyed by `key`: taken, once each, by every run created before it arrived whose wait_for step on NAME waits (now or later) with that key; a repeated Idempotency-Key returns the first delivery")
            .header("Idempotency-Key", json!({"type": "string", "maxLength": 255}))
            .body("application/json", json!({"type": "object", "required": ["key"], "additionalProperties": false, "properties": {"key": {"type": ["string", "number"], "description": "The key the waiting runs rendered (wait_for.key)"}, "payload": {"description": "Any JSON: the output of each step that takes it"}}}))
            .ok(200, "The delivery an earlier request with the same Idempotency-Key made", "application/json", json!({"$ref": "#/components/schemas/SignalDelivery"}))
            .ok(202, "Accepted", "application/json", json!({"$ref": "#/components/schemas/SignalDelivery"})),
        Route::post("/v1/tokens", tokens::create)
            .scope("admin")
            .summary("Create a scoped token for a subject (a person or svc:NAME), optionally expiring; the secret is in this answer only")
            .body("application/json", json!({"type": "object", "required": ["scopes"], "properties": {"name": {"type": "string"}, "subject": {"type": "string", "description": "Who acts with the token, e.g. max or svc:servicenow; svc:NAME when left out"}, "scopes": {"type": "array", "items": {"type": "string", "enum": ["runs:write", "runs:read", "approvals:decide", "admin"]}}, "expires_in": {"type": "string", "description": "Lifetime, e.g. 90d, 12h, 30m; none when left out"}}, "additionalProperties": false}))
            .ok(201, "Created: `token` is the secret, shown only here", "application/json", json!({"allOf": [{"$ref": "#/components/schemas/Token"}], "required": ["token"], "properties": {"token": {"type": "string"}}})),
        Route::get("/v1/tokens", tokens::list)
            .scope("admin")
            .summary("Live tokens (not revoked, not expired), oldest first; never their secrets")
            .ok(200, "The tokens", "application/json", json!({"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Token"}}}})),
        Route::delete("/v1/tokens/{id}", tokens::revoke)
            .scope("admin")
            .summary("Revoke a token")
            .ok_empty(204, "Revoked"),
        Route::get("/v1/audit", audit::list)
            .scope("admin")
            .summary("The audit log, newest first: approval decisions, delegations set and ended, run cancels, retries and reruns, token creations and revocations, workflow deploys, each with its actor; read-only")
            .query("actor", json!({"type": "string"}))
            .query("action", json!({"type": "string", "enum": crate::store::AUDIT_ACTIONS}))
            .query("target", json!({"type": "string"}))
            .query("from", json!({"type": "string", "format": "date-time", "description": "Inclusive"}))
            .query("to", json!({"type": "string", "format": "date-time", "description": "Exclusive"}))
            .query("limit", json!({"type": "integer", "minimum": 1, "maximum": 500}))
            .query("cursor", json!({"type": "string"}))
            .ok(200, "A page", "application/json", json!({"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/AuditEntry"}}, "next_cursor": {"type": ["string", "null"]}}})),
        Route::post("/v1/hooks/{name}", hooks::deliver)
            .summary("Webhook trigger: a signed delivery starts the hook's workflow with the body as input, or, for a hook with `signal`, delivers that signal keyed by the hook's key expression over the body")
            .header_required("Steward-Signature", json!({"type": "string", "description": "t=UNIX_SECONDS,v1=HEX: HMAC-SHA256 with the hook's secret over t + \".\" + the raw body; t within 300 s"}))
            .body("application/json", json!({}))
            .ok(201, "Run started", "application/json", json!({"$ref": "#/components/schemas/RunSummary"}))
            .ok(202, "Signal delivered (a hook with signal)", "application/json", json!({"$ref": "#/components/schemas/SignalDelivery"}))
            .errors(&[401, 409])
            .open(),
        Route::get("/metrics", metrics::expose)
            .summary("Prometheus metrics (OpenMetrics text), steward_ prefix")
            .ok(200, "The exposition", "application/openmetrics-text", json!({"type": "string"}))
            .open(),
        Route::get("/v1/workflows/{name}", workflows::show)
            .scope("runs:read")
            .summary("The latest version with its YAML and every deployed version")
            .ok(200, "The workflow", "application/json", json!({"type": "object", "properties": {"name": {"type": "string"}, "version": {"type": "integer"}, "description": {"type": ["string", "null"]}, "source": {"type": "string"}, "versions": {"type": "array", "items": {"type": "object"}}}})),
        Route::put("/v1/workflows/{name}", workflows::deploy)
            .scope("admin")
            .summary("Deploy a workflow: validated first; a new version is 201, the same text again 200")
            .body("application/yaml", json!({"type": "string"}))
            .ok_empty(200, "Already deployed")
            .ok_empty(201, "Deployed")
            .errors(&[400, 404, 409, 413, 415, 422]),
        Route::get("/v1/plugins", plugins::list)
            .scope("runs:read")
            .summary("Every plugin workflows may use, with its grants")
            .ok(200, "The plugins", "application/json", json!({"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Plugin"}}}})),
        Route::get("/v1/plugins/{name}", plugins::show)
            .scope("runs:read")
            .summary("One plugin")
            .ok(200, "The plugin", "application/json", json!({"$ref": "#/components/schemas/Plugin"})),
        Route::put("/v1/plugins/{name}", plugins::upload)
            .body_limit(limits.max_plugin_bytes)
            .scope("admin")
            .summary("Upload a component with its plugin.toml; checked against the world before it is served")
            .body("multipart/form-data", json!({"type": "object", "required": ["manifest", "component"], "properties": {"manifest": {"type": "string", "description": "plugin.toml"}, "component": {"type": "string", "format": "binary"}}}))
            .ok(200, "Replaced", "application/json", json!({"$ref": "#/components/schemas/Plugin"}))
            .ok(201, "Uploaded", "application/json", json!({"$ref": "#/components/schemas/Plugin"}))
            .errors(&[400, 404, 409, 413, 415, 422]),
        Route::get("/v1/approvals", approvals::list)
            .scope(READ_APPROVALS)
            .summary("Pending approvals, oldest first; approver=NAME keeps those NAME may decide, approver=me those the token's subject may")
            .query("status", json!({"type": "string", "enum": ["pending"]}))
            .query("approver", json!({"type": "string", "description": "A person, or me for the token's subject"}))
            .query("limit", json!({"type": "integer", "minimum": 1, "maximum": 500}))
            .ok(200, "The approvals", "application/json", json!({"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Approval"}}}})),
        Route::get("/v1/approvals/{id}", approvals::show)
            .scope(READ_APPROVALS)
            .summary("One approval with its decisions")
            .ok(200, "The approval", "application/json", json!({"$ref": "#/components/schemas/Approval"})),
        Route::post("/v1/approvals/{id}", approvals::decide)
            .scope("approvals:decide")
            .summary("Decide as the token's subject (an eligible approver or their delegate); an admin token may decide on_behalf_of an approver; a second decision by the same person returns the first. Four eyes: the run's starter (started_by) and the approval's requester may not decide it, in person, as a delegate or through an admin (403 self-approval), unless the step sets allow_self_approval")
            .body("application/json", json!({"type": "object", "required": ["decision"], "additionalProperties": false, "properties": {"decision": {"type": "string", "enum": ["approve", "reject"]}, "by": {"type": ["string", "null"], "description": "Optional; when given it must be the token's subject (or on_behalf_of)"}, "on_behalf_of": {"type": ["string", "null"], "description": "Admin tokens only: the approver this decision is entered for"}, "comment": {"type": ["string", "null"]}}}))
            .ok_empty(200, "Already decided: the first decision")
            .ok_empty(201, "Recorded")
            .errors(&[409]),
        Route::get("/v1/reports/sla", reports::sla)
            .scope("runs:read")
            .summary("SLA compliance by workflow and priority for runs finished in [from, to) (default the last 30 days; `days` counts back from `to`), with totals and the worst offenders")
            .query("from", json!({"type": "string", "format": "date-time"}))
            .query("to", json!({"type": "string", "format": "date-time"}))
            .query("days", json!({"type": "integer", "minimum": 1, "maximum": 3660}))
            .ok(200, "The report", "application/json", json!({"type": "object", "properties": {"from": {"type": "string"}, "to": {"type": "string"}, "totals": {"type": "object", "properties": {"runs": {"type": "integer"}, "met": {"type": "integer"}, "breached": {"type": "integer"}, "other": {"type": "integer"}, "compliance_percent": {"type": ["number", "null"]}}}, "worst": {"type": "array", "items": {"$ref": "#/components/schemas/SlaReportLine"}}, "items": {"type": "array", "items": {"$ref": "#/components/schemas/SlaReportLine"}}}})),
        Route::get("/v1/delegations", approvals::delegations)
            .scope(READ_APPROVALS)
            .summary("Delegations not revoked and not over")
            .ok(200, "The delegations", "application/json", json!({"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Delegation"}}}})),
        Route::post("/v1/delegations", approvals::delegate)
            .scope("approvals:decide")
            .summary("Hand one approver's approvals to a delegate for a period: the token's own (its subject is from), or anyone's with the admin scope")
            .body("application/json", json!({"type": "object", "required": ["from", "to"], "additionalProperties": false, "properties": {"from": {"type": "string"}, "to": {"type": "string"}, "starts_at": {"type": "string", "format": "date-time"}, "ends_at": {"type": "string", "format": "date-time"}}}))
            .ok(201, "Created", "application/json", json!({"$ref": "#/components/schemas/Delegation"})),
        Route::delete("/v1/delegations/{id}", approvals::revoke_delegation)
            .scope("approvals:decide")
            .summary("Revoke a delegation: either party, or an admin")
            .ok_empty(204, "Revoked"),
        Route::get("/v1/schedules", schedules::list)
            .scope("runs:read")
            .summary("Cron schedules, from the API and from workflow triggers")
            .query("workflow", json!({"type": "string"}))
            .ok(200, "The schedules", "application/json", json!({"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Schedule"}}}})),
        Route::post("/v1/schedules", schedules::create)
            .scope("runs:write")
            .summary("Create a cron schedule")
            .body("application/json", json!({"allOf": [{"$ref": "#/components/schemas/ScheduleFields"}], "required": ["workflow", "cron"]}))
            .ok(201, "Created", "application/json", json!({"$ref": "#/components/schemas/ScheduleDetail"})),
        Route::get("/v1/schedules/{id}", schedules::show)
            .scope("runs:read")
            .summary("A schedule with its next fire times, latest fires and counts")
            .ok(200, "The schedule", "application/json", json!({"$ref": "#/components/schemas/ScheduleDetail"})),
        Route::patch("/v1/schedules/{id}", schedules::update)
            .scope("runs:write")
            .summary("Edit, pause or resume a schedule; a workflow's trigger can only be paused or resumed")
            .body("application/json", json!({"$ref": "#/components/schemas/ScheduleFields"}))
            .ok(200, "The schedule", "application/json", json!({"$ref": "#/components/schemas/ScheduleDetail"}))
            .errors(&[409]),
        Route::delete("/v1/schedules/{id}", schedules::delete)
            .scope("runs:write")
            .summary("Delete a schedule made through the API")
            .ok_empty(204, "Deleted")
            .errors(&[409]),
        Route::get("/v1/groups", groups::list)
            .scope("runs:read")
            .summary("Approver groups, from steward.toml and the API")
            .ok(200, "The groups", "application/json", json!({"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Group"}}}})),
        Route::get("/v1/groups/{name}", groups::show)
            .scope("runs:read")
            .summary("One approver group")
            .ok(200, "The group", "application/json", json!({"$ref": "#/components/schemas/Group"})),
        Route::put("/v1/groups/{name}", groups::set)
            .scope("admin")
            .summary("Create or replace an approver group; applies to approvals opened afterwards")
            .body("application/json", json!({"type": "object", "required": ["members"], "additionalProperties": false, "properties": {"members": {"type": "array", "items": {"type": "string"}, "minItems": 1}}}))
            .ok(200, "Replaced", "application/json", json!({"$ref": "#/components/schemas/Group"}))
            .ok(201, "Created", "application/json", json!({"$ref": "#/components/schemas/Group"}))
            .errors(&[409]),
        Route::delete("/v1/groups/{name}", groups::delete)
            .scope("admin")
            .summary("Delete an approver group made through the API")
            .ok_empty(204, "Deleted")
            .errors(&[409]),
    ]
}
