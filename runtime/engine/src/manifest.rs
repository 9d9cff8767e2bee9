//! `plugin.toml`: what a plugin is and which capabilities it asks for.
//! Asking is not getting: the operator's `steward.toml` has the last word
//! (see [`crate::grants`]).

use serde::Deserialize;

/// A parsed `plugin.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    #[serde(default = "default_version")]
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// Origin patterns (`https://api.example.com`, `http://127.0.0.1:*`, `*`).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Secret names the plugin reads.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Whether the plugin uses its private key-value store.
    #[serde(default)]
    pub key_value: bool,
}

fn default_version() -> String {
    "0.0.0".to_string()
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
#[error("{path}:{message}")]
pub struct ManifestError {
    pub path: String,
    pub message: String,
}

impl Manifest {
    /// Parses `text`; `path` names the file in errors (with line and column).
    pub fn parse(text: &str, path: &str) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| ManifestError {
            path: path.to_string(),
            message: crate::settings::describe_toml_error(text, &e),
        })?;
        if !is_valid_name(&manifest.name) {
            return Err(ManifestError {
                path: path.to_string(),
                message: format!(
                    " name: {:?} is not a valid plugin name (lowercase letters, digits and '-')",
                    manifest.name
                ),
            });
        }
        Ok(manifest)
    }

    /// A manifest for a component that came without one: it asks for nothing.
    pub fn bare(name: &str) -> Manifest {
        Manifest {
            name: name.to_string(),
            version: default_version(),
            description: String::new(),
            allowed_hosts: Vec::new(),
            secrets: Vec::new(),
            key_value: false,
        }
    }
}

/// Plugin names appear in workflow `uses:` and URLs: keep them plain.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_manifest() {
        let m = Manifest::parse(
            "name = \"snow\"\nallowed_hosts = [\"https://x.service-now.com\"]\nsecrets = [\"SNOW_TOKEN\"]\nkey_value = true\n",
            "plugin.toml",
        )
        .unwrap();
        assert_eq!(m.secrets, vec!["SNOW_TOKEN"]);
        assert!(m.key_value);
    }

    #[test]
    fn unknown_key_names_the_line() {
        let err = Manifest::parse("name = \"x\"\nhosts = []\n", "p/plugin.toml").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("p/plugin.toml:2:"), "{text}");
        assert!(text.contains("hosts"), "{text}");
    }

    #[test]
    fn bad_name_is_refused() {
        let err = Manifest::parse("name = \"Bad Name\"\n", "plugin.toml").unwrap_err();
        assert!(err.to_string().contains("not a valid plugin name"));
    }
}
