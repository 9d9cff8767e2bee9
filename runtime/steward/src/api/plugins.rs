//! `GET /v1/plugins[/{name}]` and `PUT /v1/plugins/{name}`: upload a
//! component with its `plugin.toml` as `multipart/form-data`.

use std::sync::Arc;

use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::{Value, json};

use super::path::PathParam;
use super::{AppState, Problem};
use crate::auth::Principal;
use crate::engine::{LoadedPlugin, digest};
use crate::plugins::{UPLOADED, load_uploaded};
use crate::store::UploadedPlugin;

fn describe(p: &LoadedPlugin) -> Value {
    let (allowed_hosts, secrets, key_value) = p.granted();
    json!({
        "name": p.manifest.name,
        "version": p.manifest.version,
        "description": p.manifest.description,
        "origin": p.origin,
        "sha256": p.digest,
        "size": p.size,
        "granted": {"allowed_hosts": allowed_hosts, "secrets": secrets, "key_value": key_value},
        "limits": {
            "memory_mib": p.limits.memory_mib,
            "cpu_ms": p.limits.cpu_ms,
            "timeout_ms": p.limits.timeout_ms,
        },
        "warnings": p.warnings,
    })
}

/// Every plugin workflows may use.
pub async fn list(State(app): State<Arc<AppState>>) -> Json<Value> {
    let items: Vec<Value> = app.engine.plugins().iter().map(|p| describe(p)).collect();
    Json(json!({ "items": items }))
}

pub async fn show(
    State(app): State<Arc<AppState>>,
    PathParam(name): PathParam<String>,
) -> Result<Json<Value>, Problem> {
    let plugin = app
        .engine
        .plugin(&name)
        .ok_or_else(|| Problem::not_found(&format!("plugin {name}")))?;
    Ok(Json(describe(&plugin)))
}

const HOW: &str = "send multipart/form-data with a part `manifest` (the plugin.toml) and a part \
                   `component` (the .wasm), e.g. curl -F manifest=@plugin.toml -F component=@plugin.wasm";

fn bad_upload(detail: String) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid-upload",
        "Invalid plugin upload",
        detail,
    )
}

/// Checks the component against the world and loads it: 201 for a new
/// plugin, 200 for a replaced upload, 422 when it does not load, 409 for a
/// built-in or configured plugin's name.
pub async fn upload(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Principal>,
    PathParam(name): PathParam<String>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let mut multipart = multipart.map_err(|e| {
        Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            format!("{e}: {HOW}"),
        )
    })?;
    let (mut manifest, mut component) = (None, None);
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(Problem::too_large(app.limits.max_plugin_bytes));
            }
            Err(e) => return Err(bad_upload(format!("{e}: {HOW}"))),
        };
        let part = field.name().unwrap_or("").to_string();
        let bytes = match field.bytes().await {
            Ok(bytes) => bytes,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(Problem::too_large(app.limits.max_plugin_bytes));
            }
            Err(e) => return Err(bad_upload(format!("{e}: {HOW}"))),
        };
        match part.as_str() {
            "manifest" => {
                manifest =
                    Some(String::from_utf8(bytes.to_vec()).map_err(|_| {
                        bad_upload("the manifest part is not UTF-8 text".to_string())
                    })?)
            }
            "component" => component = Some(bytes.to_vec()),
            other => return Err(bad_upload(format!("unexpected part {other:?}: {HOW}"))),
        }
    }
    // Checked after the body is read: answering while the client is still
    // sending would cut its upload off with a broken pipe, not this answer.
    if let Some(existing) = app.engine.plugin(&name)
        && existing.origin != UPLOADED
    {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "plugin-not-replaceable",
            "The plugin is not an upload",
            format!(
                "plugin {name} comes from {}: choose another name, or replace it in steward.toml",
                existing.origin
            ),
        ));
    }
    let (Some(manifest), Some(component)) = (manifest, component) else {
        return Err(bad_upload(format!("a part is missing: {HOW}")));
    };
    let plugin = UploadedPlugin {
        digest: digest(&component),
        name: name.clone(),
        manifest,
        component,
    };
    // Compiling a component takes a while: keep it off the request threads.
    let (engine, config, to_load) = (app.engine.clone(), app.config.clone(), plugin.clone());
    let loaded = tokio::task::spawn_blocking(move || load_uploaded(&engine, &config, &to_load))
        .await
        .map_err(Problem::internal)?
        .map_err(|e| {
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-plugin",
                "The plugin does not load",
                e.to_string(),
            )
        })?;
    let created = app.store.save_plugin(&plugin, &caller.subject).await?;
    app.catalog.add_plugin(&name);
    tracing::info!(plugin = %name, sha256 = %plugin.digest, created, "plugin uploaded");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(describe(&loaded))))
}
