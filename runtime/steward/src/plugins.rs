//! Assembles the plugin sandbox from the configuration: the embedded
//! first-party plugins, then every `[plugins.NAME] path = ...` the operator
//! added. Problems with a plugin file stop the start with a message naming
//! the file; grants the operator withheld only warn.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::engine::manifest::Manifest;
use crate::engine::{
    Engine, EngineError, EngineOptions, KeyValue, LoadedPlugin, PluginSource, read_plugin_files,
};
use crate::first_party;
use crate::store::UploadedPlugin;

/// Why the plugin set could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PluginSetError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    File(String),
}

/// The engine with every plugin loaded, and the warnings to show at start.
pub struct PluginSet {
    pub engine: Engine,
    pub warnings: Vec<String>,
    /// Worth knowing, not worth a warning (e.g. built-in plugins the
    /// operator has not set up yet).
    pub notes: Vec<String>,
}

impl PluginSet {
    /// The names workflows may use in `uses:`.
    pub fn names(&self) -> BTreeSet<String> {
        self.engine
            .plugins()
            .iter()
            .map(|p| p.manifest.name.clone())
            .collect()
    }
}

/// The plugin names `config` makes available, read from manifests only (no
/// compilation): enough to validate workflows quickly.
pub fn declared_names(config: &Config) -> Result<BTreeSet<String>, PluginSetError> {
    let mut names = BTreeSet::new();
    for (crate_name, _, manifest_text) in first_party::FIRST_PARTY {
        let manifest = Manifest::parse(manifest_text, &format!("plugins/{crate_name}/plugin.toml"))
            .map_err(|e| PluginSetError::File(e.to_string()))?;
        names.insert(manifest.name);
    }
    for (name, settings) in &config.plugins {
        if let Some(path) = &settings.path {
            if !path.exists() {
                return Err(PluginSetError::File(format!(
                    "[plugins.{name}] path: {}: no such file",
                    path.display()
                )));
            }
            names.insert(name.clone());
        }
    }
    Ok(names)
}

/// Builds the engine for `config`. `use_cache` keeps compiled components
/// under `data_dir/cache`.
pub fn load_plugins(
    config: &Config,
    kv: Arc<dyn KeyValue>,
    use_cache: bool,
) -> Result<PluginSet, PluginSetError> {
    let secrets = config.resolve_secrets()?;
    let largest_memory = config
        .plugins
        .keys()
        .map(|name| config.limits_for(name).memory_mib)
        .chain([config.limits.memory_mib])
        .max()
        .unwrap_or(64);
    let options = EngineOptions {
        cache_dir: use_cache.then(|| config.data_dir.join("cache")),
        max_concurrent_calls: config.engine.max_concurrent_calls,
        epoch_tick: std::time::Duration::from_millis(config.engine.epoch_tick_ms.max(1)),
        max_memory_bytes: (largest_memory << 20) as usize,
    };
    let engine = Engine::new(options, kv, secrets)?;
    let mut warnings = Vec::new();
    let mut notes = Vec::new();
    let mut unconfigured = Vec::new();

    for (crate_name, bytes, manifest_text) in first_party::FIRST_PARTY {
        let manifest = Manifest::parse(manifest_text, &format!("plugins/{crate_name}/plugin.toml"))
            .map_err(|e| PluginSetError::File(e.to_string()))?;
        let name = manifest.name.clone();
        if config.plugins.get(&name).is_some_and(|p| p.path.is_some()) {
            continue; // the operator replaces this plugin with their own build
        }
        let source = PluginSource {
            bytes,
            manifest,
            origin: "built-in".into(),
        };
        let loaded = engine.load(source, &config.plugin(&name), config.limits_for(&name))?;
        if config.plugins.contains_key(&name) {
            warnings.extend(loaded.warnings.iter().cloned());
        } else if !loaded.warnings.is_empty() {
            // Not set up at all: one line, not a warning per grant.
            unconfigured.push(name);
        }
    }
    for (name, settings) in &config.plugins {
        for (key, known) in settings.likely_typos() {
            warnings.push(format!(
                "[plugins.{name}] {key} is not a grant or limit but a setting handed to the plugin: \
                 did you mean {known}?"
            ));
        }
    }
    if !unconfigured.is_empty() {
        notes.push(format!(
            "built-in plugins without a [plugins.NAME] section: {}; their outbound HTTP and secrets \
             are denied until steward.toml grants them (GET /v1/plugins/NAME lists what each asks for)",
            unconfigured.join(", ")
        ));
    }

    for (name, settings) in &config.plugins {
        let Some(path) = &settings.path else { continue };
        let (bytes, mut manifest) = read_plugin_files(path)
            .map_err(|e| PluginSetError::File(format!("[plugins.{name}] path: {e}")))?;
        if manifest.name != *name {
            warnings.push(format!(
                "[plugins.{name}] loads {} whose manifest names it {}: it is registered as {name}",
                path.display(),
                manifest.name
            ));
            manifest.name = name.clone();
        }
        let source = PluginSource {
            bytes: &bytes,
            manifest,
            origin: path.display().to_string(),
        };
        let loaded = engine.load(source, settings, config.limits_for(name))?;
        warnings.extend(loaded.warnings.iter().cloned());
    }
    Ok(PluginSet {
        engine,
        warnings,
        notes,
    })
}

/// Where plugins uploaded through the API say they come from.
pub const UPLOADED: &str = "uploaded";

/// Loads a plugin uploaded through the API, under the operator's
/// `[plugins.NAME]` grants and limits like any other.
pub fn load_uploaded(
    engine: &Engine,
    config: &Config,
    plugin: &UploadedPlugin,
) -> Result<Arc<LoadedPlugin>, PluginSetError> {
    let manifest = Manifest::parse(&plugin.manifest, "plugin.toml")
        .map_err(|e| PluginSetError::File(e.to_string()))?;
    if manifest.name != plugin.name {
        return Err(PluginSetError::File(format!(
            "plugin.toml: name: the manifest names the plugin {:?}; upload it as {0:?} or rename it",
            manifest.name
        )));
    }
    let source = PluginSource {
        bytes: &plugin.component,
        manifest,
        origin: UPLOADED.into(),
    };
    Ok(engine.load(
        source,
        &config.plugin(&plugin.name),
        config.limits_for(&plugin.name),
    )?)
}

/// Adds the uploaded plugins to a started set. A name the configuration
/// already serves keeps the configured plugin; a stored plugin that no
/// longer loads is skipped. Both come back as warnings.
pub fn add_uploaded(set: &mut PluginSet, config: &Config, uploaded: &[UploadedPlugin]) {
    for plugin in uploaded {
        if set.engine.plugin(&plugin.name).is_some() {
            set.warnings.push(format!(
                "the uploaded plugin {} is shadowed by the configured one of that name",
                plugin.name
            ));
            continue;
        }
        match load_uploaded(&set.engine, config, plugin) {
            Ok(loaded) => set.warnings.extend(loaded.warnings.iter().cloned()),
            Err(e) => set.warnings.push(format!(
                "the uploaded plugin {} is not served: {e}",
                plugin.name
            )),
        }
    }
}
