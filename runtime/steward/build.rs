//! Compiles the first-party plugins in `plugins/` to wasm components and
//! embeds them in the binary, so `cargo run -- serve` needs no manual step.
//! Cargo re-runs this only when the plugins, the SDK or the WIT change.

use std::fmt::Write as _;
use std::path::PathBuf;

use steward_plugin_build as plugin_build;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    // runtime/steward -> the repository root.
    let root = manifest_dir.ancestors().nth(2).unwrap().to_path_buf();
    // sdk/ holds the SDK and the plugins' shared `sdk/table-api`.
    for watched in ["plugins", "sdk", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("wasm-plugins");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    if let Err(e) = plugin_build::ensure_wasm_target(&rustc) {
        panic!("{e}");
    }
    let built = plugin_build::build_components(&cargo, &root.join("plugins"), &target_dir)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut code = String::from("/// First-party plugins: (crate name, component, plugin.toml).\n");
    code.push_str("pub const FIRST_PARTY: &[(&str, &[u8], &str)] = &[\n");
    for component in built {
        let manifest = component
            .manifest
            .expect("every first-party plugin has a plugin.toml");
        writeln!(
            code,
            "    ({:?}, include_bytes!({:?}), include_str!({:?})),",
            component.name, component.wasm, manifest
        )
        .unwrap();
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("first_party.rs");
    std::fs::write(out, code).unwrap();
}
