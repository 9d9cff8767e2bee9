//! `/openapi.json`, generated from the route table (paths, methods,
//! parameters, scopes, bodies, answers) and the schemas of the API's
//! resources in `schemas.json`.

use std::sync::OnceLock;

use serde_json::{Map, Value, json};

use super::routes;
use crate::config::ApiSettings;

/// The shapes of the API's resources, referenced by the routes as
/// `#/components/schemas/NAME`.
const SCHEMAS: &str = include_str!("schemas.json");

/// The document, built once per process.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| build().to_string())
}

fn build() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for route in routes::table(&ApiSettings::default()) {
        let mut operation = json!({ "summary": route.summary });
        match route.scope {
            Some(scope) => {
                operation["description"] = json!(format!(
                    "Needs a token with the `{}` scope.",
                    scope.replace('|', "` or `")
                ))
            }
            None => operation["security"] = json!([]),
        }
        let mut parameters: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|part| part.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        parameters.extend(route.params.iter().cloned());
        if !parameters.is_empty() {
            operation["parameters"] = Value::Array(parameters);
        }
        if !route.body.is_empty() {
            let content: Map<String, Value> = route
                .body
                .iter()
                .map(|(media, schema)| (media.to_string(), json!({ "schema": schema })))
                .collect();
            operation["requestBody"] = json!({"required": route.body_required, "content": content});
        }
        let mut responses: Map<String, Value> = Map::new();
        for (status, description, body) in &route.answers {
            let mut answer = json!({ "description": description });
            if let Some((media, schema)) = body {
                answer["content"] = json!({ *media: { "schema": schema } });
            }
            responses.insert(status.to_string(), answer);
        }
        for status in route.problem_statuses() {
            responses.insert(
                status.to_string(),
                json!({"$ref": "#/components/responses/Problem"}),
            );
        }
        operation["responses"] = Value::Object(responses);
        let methods = paths
            .entry(route.path.to_string())
            .or_insert_with(|| json!({}));
        methods[route.method.as_str().to_ascii_lowercase()] = operation;
    }
    let schemas: Value = serde_json::from_str(SCHEMAS).expect("schemas.json is JSON");
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Steward API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Workflow automation for IT service management. Every /v1 route but the signed webhooks needs `Authorization: Bearer TOKEN` with the scope its description names. Errors are application/problem+json."
        },
        "security": [{ "bearer": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A Steward token (`stw_...`, from POST /v1/tokens or `steward token create`) or, when `[auth.oidc]` is configured, a JWT from the identity provider (RS256, ES256 or EdDSA), whose groups map to scopes through `[auth.roles]`."
            } },
            "responses": {
                "Problem": {
                    "description": "An error",
                    "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
                }
            },
            "schemas": schemas,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The audit entry schema names exactly the actions the log records.
    #[test]
    fn audit_actions_match_the_store() {
        let schemas: Value = serde_json::from_str(SCHEMAS).unwrap();
        let listed = &schemas["AuditEntry"]["properties"]["action"]["enum"];
        assert_eq!(*listed, serde_json::json!(crate::store::AUDIT_ACTIONS));
    }

    /// Every `$ref` points at a schema that exists.
    #[test]
    fn references_resolve() {
        let doc: Value = serde_json::from_str(document()).unwrap();
        fn walk(v: &Value, doc: &Value) {
            match v {
                Value::Object(map) => {
                    if let Some(Value::String(r)) = map.get("$ref") {
                        let pointer = r.trim_start_matches('#');
                        assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
                    }
                    map.values().for_each(|v| walk(v, doc));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(v, doc)),
                _ => {}
            }
        }
        walk(&doc, &doc);
    }
}
