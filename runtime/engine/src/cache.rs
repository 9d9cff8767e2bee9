//! Compiled components on disk: compiling a component takes ~90 ms, loading
//! a precompiled one ~0.2 ms. Entries are keyed by the component's bytes and
//! the engine's compatibility hash, so a new wasmtime or new settings never
//! load stale code.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

/// The SHA-256 of a component, shown by `plugin inspect` and the API.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Loads `bytes` as a component, through the cache in `dir` when given.
pub fn load_component(
    engine: &wasmtime::Engine,
    bytes: &[u8],
    dir: Option<&Path>,
) -> wasmtime::Result<Component> {
    let Some(dir) = dir else {
        return Component::new(engine, bytes);
    };
    let path = entry_path(engine, bytes, dir);
    if path.exists() {
        // SAFETY: the file was written by `Component::serialize` of an engine
        // with the same compatibility hash (it is part of the name), into a
        // directory only this process family writes.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => return Ok(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring unreadable cache entry: {e}")
            }
        }
    }
    let component = Component::new(engine, bytes)?;
    if let Err(e) = store_entry(&component, &path) {
        tracing::warn!(path = %path.display(), "cannot cache compiled component: {e}");
    }
    Ok(component)
}

fn entry_path(engine: &wasmtime::Engine, bytes: &[u8], dir: &Path) -> PathBuf {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let engine_key = hasher.finish();
    dir.join(format!("{}-{engine_key:016x}.cwasm", &digest(bytes)[..32]))
}

fn store_entry(component: &Component, path: &Path) -> std::io::Result<()> {
    let serialized = component
        .serialize()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // Write then rename, so a concurrent reader never sees half a file.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, serialized)?;
    std::fs::rename(&tmp, path)
}
