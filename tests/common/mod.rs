//! Shared helpers for the black-box tests: fixture plugins built from
//! source, a real HTTP server on a free port, and temp directories.
#![allow(dead_code)]

pub mod http_server;
pub mod in_process;
pub mod server;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use steward::plugin_build::{BuiltComponent, build_components, ensure_wasm_target};

/// The repository root.
pub fn root() -> PathBuf {
    // runtime/steward -> the repository root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// Builds `tests/plugins` once per test process (cargo's lock makes
/// concurrent test binaries wait for each other, not clash).
pub fn fixture_plugins() -> &'static [BuiltComponent] {
    static BUILT: OnceLock<Vec<BuiltComponent>> = OnceLock::new();
    BUILT.get_or_init(|| {
        ensure_wasm_target("rustc").expect("wasm target");
        build_components(
            "cargo",
            &root().join("tests/plugins"),
            &root().join("target/wasm-plugins"),
        )
        .expect("building the fixture plugins")
    })
}

/// The path of one fixture component.
pub fn fixture(name: &str) -> PathBuf {
    fixture_plugins()
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no fixture plugin {name}"))
        .wasm
        .clone()
}

/// Installs a fixture as an operator would: the component and its
/// `plugin.toml` side by side in a folder of `dir`. Returns the component.
pub fn install_fixture(name: &str, dir: &Path) -> PathBuf {
    let built = fixture_plugins()
        .iter()
        .find(|c| c.name == name)
        .expect("fixture");
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).unwrap();
    let wasm = folder.join(format!("{name}.wasm"));
    std::fs::copy(&built.wasm, &wasm).unwrap();
    if let Some(manifest) = &built.manifest {
        std::fs::copy(manifest, folder.join("plugin.toml")).unwrap();
    }
    wasm
}

/// The `steward` binary built for these tests.
pub fn steward_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_steward"))
}

/// PostgreSQL for tests, from `STEWARD_TEST_DATABASE_URL` (see the README).
pub fn postgres_url() -> Option<String> {
    std::env::var("STEWARD_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// A schema name no other test (or test run) uses.
pub fn unique_schema(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "t_{}_{}_{}",
        test.replace('-', "_"),
        std::process::id(),
        nanos % 1_000_000_000
    )
}
