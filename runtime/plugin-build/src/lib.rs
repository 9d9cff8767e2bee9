//! Builds plugin crates into `wasm32-wasip2` components with a nested cargo.
//!
//! Used three ways: by `runtime/steward/build.rs` (first-party plugins, so a
//! plain `cargo build` produces them), by `steward plugin build`, and by the
//! test suite for its hostile fixture plugins. It depends on `std` only
//! because it is also a build-dependency, compiled for the build script.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The target every plugin is compiled for.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// One component produced by a build.
#[derive(Debug, Clone)]
pub struct BuiltComponent {
    /// The crate name, as plugins are named after their crate.
    pub name: String,
    pub wasm: PathBuf,
    /// `plugin.toml` beside the crate's `Cargo.toml`, when there is one.
    pub manifest: Option<PathBuf>,
}

/// Installs the wasm target through rustup when the toolchain lacks it, so a
/// fresh clone needs no manual step (rustup does not always do it itself).
pub fn ensure_wasm_target(rustc: &str) -> Result<(), String> {
    let output = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("cannot run {rustc}: {e}"))?;
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if Path::new(&sysroot)
        .join("lib/rustlib")
        .join(WASM_TARGET)
        .exists()
    {
        return Ok(());
    }
    let status = Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .stdout(Stdio::null())
        .status()
        .map_err(|e| {
            format!("the {WASM_TARGET} target is missing and rustup could not run: {e}")
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "the {WASM_TARGET} target is missing: run `rustup target add {WASM_TARGET}`"
        ))
    }
}

/// Builds the crate or workspace at `dir` in release mode into `target_dir`
/// and returns every component it produced.
pub fn build_components(
    cargo: &str,
    dir: &Path,
    target_dir: &Path,
) -> Result<Vec<BuiltComponent>, String> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.exists() {
        return Err(format!(
            "{} has no Cargo.toml: point at a plugin crate",
            dir.display()
        ));
    }
    let mut command = Command::new(cargo);
    command
        .args([
            "build",
            "--release",
            "--message-format=json-render-diagnostics",
            "--target",
            WASM_TARGET,
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // A plugin instance lives for one call: a 256 KiB stack (Rust's default
    // is 1 MiB) keeps its memory small and each fresh instance cheaper.
    command.env(
        "CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS",
        "-Clink-arg=-zstack-size=262144",
    );
    // The outer build's flags and wrappers are for the host, not for wasm.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        command.env_remove(var);
    }
    let output = command
        .output()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "building plugins in {} failed (see the compiler output above)",
            dir.display()
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let components: Vec<BuiltComponent> = stdout.lines().filter_map(parse_artifact).collect();
    if components.is_empty() {
        return Err(format!(
            "{} built no component: a plugin crate needs `crate-type = [\"cdylib\"]`",
            dir.display()
        ));
    }
    Ok(components)
}

/// Reads one `compiler-artifact` message of cargo's JSON output.
fn parse_artifact(line: &str) -> Option<BuiltComponent> {
    if !line.contains("\"reason\":\"compiler-artifact\"") {
        return None;
    }
    let wasm = json_strings_after(line, "\"filenames\":[")
        .into_iter()
        .find(|f| f.ends_with(".wasm"))?;
    let manifest_path = json_string(line, "\"manifest_path\":\"")?;
    let name = json_string(line, "\"name\":\"")?.replace('_', "-");
    let plugin_toml = Path::new(&manifest_path).with_file_name("plugin.toml");
    Some(BuiltComponent {
        name,
        wasm: PathBuf::from(wasm),
        manifest: plugin_toml.exists().then_some(plugin_toml),
    })
}

fn json_string(line: &str, key: &str) -> Option<String> {
    let start = line.find(key)? + key.len();
    let end = line[start..].find('"')?;
    Some(line[start..start + end].to_string())
}

fn json_strings_after(line: &str, key: &str) -> Vec<String> {
    let Some(start) = line.find(key).map(|i| i + key.len()) else {
        return Vec::new();
    };
    let Some(end) = line[start..].find(']') else {
        return Vec::new();
    };
    line[start..start + end]
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_cdylib_artifact() {
        let line = r#"{"reason":"compiler-artifact","package_id":"x","manifest_path":"/p/demo/Cargo.toml","target":{"kind":["cdylib"],"crate_types":["cdylib"],"name":"demo","src_path":"/p/demo/src/lib.rs"},"filenames":["/t/wasm32-wasip2/release/demo.wasm"],"fresh":true}"#;
        let built = parse_artifact(line).expect("artifact");
        assert_eq!(built.name, "demo");
        assert_eq!(
            built.wasm,
            PathBuf::from("/t/wasm32-wasip2/release/demo.wasm")
        );
    }

    #[test]
    fn ignores_libraries_without_wasm() {
        let line = r#"{"reason":"compiler-artifact","manifest_path":"/p/Cargo.toml","target":{"name":"serde"},"filenames":["/t/libserde.rlib"]}"#;
        assert!(parse_artifact(line).is_none());
    }
}
