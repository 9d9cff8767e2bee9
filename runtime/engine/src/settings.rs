//! What the operator grants and allows a plugin, as the engine needs it:
//! the server reads these from its configuration file, tests and tools
//! build them directly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Deserialize;

/// The operator's word on one plugin. Its `Debug` shows the names of the
/// plugin's own settings, not their values (a chat channel's webhook URL
/// is its credential).
#[derive(Clone, Default, Deserialize)]
pub struct PluginSettings {
    /// A component to load under this name; `plugin.toml` is read beside it.
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Set to false to deny the plugin its key-value store.
    pub key_value: Option<bool>,
    pub memory_mib: Option<u64>,
    pub cpu_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    /// Plugin-specific settings (e.g. `notify`'s channels).
    #[serde(flatten)]
    pub extra: toml::Table,
}

/// The keys of `[plugins.NAME]` Steward reads itself; any other key is a
/// setting handed to the plugin.
const PLUGIN_KEYS: [&str; 7] = [
    "path",
    "allowed_hosts",
    "secrets",
    "key_value",
    "memory_mib",
    "cpu_ms",
    "timeout_ms",
];

impl PluginSettings {
    /// Plugin settings whose names look like a misspelt grant or limit
    /// (`allowed-hosts`, `allowedHosts`, `timeout`): such a key is handed to
    /// the plugin as a setting and grants nothing, which shows only when a
    /// call is denied. Each with the key it looks like.
    pub fn likely_typos(&self) -> Vec<(String, &'static str)> {
        let squash = |key: &str| -> String {
            key.chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .map(|c| c.to_ascii_lowercase())
                .collect()
        };
        self.extra
            .keys()
            .filter_map(|key| {
                let squashed = squash(key);
                PLUGIN_KEYS
                    .iter()
                    .find(|known| {
                        let known = squash(known);
                        // The same words (`allowed-hosts`), one `s` more or
                        // less, or the name without its unit (`timeout`).
                        let unitless = known
                            .strip_suffix("ms")
                            .or_else(|| known.strip_suffix("mib"))
                            .unwrap_or(&known);
                        squashed == known
                            || squashed.trim_end_matches('s') == known.trim_end_matches('s')
                            || squashed == unitless
                    })
                    .map(|known| (key.clone(), *known))
            })
            .collect()
    }

    /// The plugin-specific settings as the `config` interface hands them
    /// out: one JSON document per top-level key.
    pub fn settings_json(&self) -> BTreeMap<String, String> {
        self.extra
            .iter()
            .map(|(key, value)| {
                let json = serde_json::to_string(value).unwrap_or_else(|_| "null".into());
                (key.clone(), json)
            })
            .collect()
    }
}

/// Bounds on one plugin call.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory per call.
    pub memory_mib: u64,
    /// Time the guest may spend executing (epoch deadline).
    pub cpu_ms: u64,
    /// Wall-clock bound on the whole call, host calls included.
    pub timeout_ms: u64,
    /// Bytes copied through host calls per call (input, output, logs,
    /// key-value, HTTP bodies).
    pub io_mib: u64,
    /// Log lines kept per call; later ones are dropped and counted.
    pub log_lines: u64,
    /// Log text kept per call (each line also costs 64 bytes).
    pub log_kib: u64,
    /// Longest error message a plugin may return; longer ones are cut.
    pub error_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: 64,
            cpu_ms: 2_000,
            timeout_ms: 30_000,
            io_mib: 16,
            log_lines: 1_000,
            log_kib: 256,
            error_bytes: 4_096,
        }
    }
}

impl std::fmt::Debug for PluginSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let PluginSettings {
            path,
            allowed_hosts,
            secrets,
            key_value,
            memory_mib,
            cpu_ms,
            timeout_ms,
            extra,
        } = self;
        f.debug_struct("PluginSettings")
            .field("path", path)
            .field("allowed_hosts", allowed_hosts)
            .field("secrets", secrets)
            .field("key_value", key_value)
            .field("memory_mib", memory_mib)
            .field("cpu_ms", cpu_ms)
            .field("timeout_ms", timeout_ms)
            .field("settings", &extra.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Resolved secret values. Debug output never shows them.
#[derive(Clone, Default)]
pub struct Secrets(BTreeMap<String, String>);

impl From<BTreeMap<String, String>> for Secrets {
    fn from(values: BTreeMap<String, String>) -> Secrets {
        Secrets(values)
    }
}

impl Secrets {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
    pub fn names(&self) -> BTreeSet<String> {
        self.0.keys().cloned().collect()
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// `LINE:COL: message` for a TOML error, so every config error points at
/// its place in the file.
pub fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim();
    match error.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            format!("{line}:{col}: {message}")
        }
        None => format!(" {message}"),
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}
