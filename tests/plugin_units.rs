//! The first-party plugins' own unit tests (`plugins/` is a workspace of
//! its own, built to wasm for use): run natively here so that the README's
//! one test command runs them too.

use crate::common;

use std::process::Command;

#[test]
fn first_party_plugin_unit_tests_pass() {
    let root = common::root();
    let output = Command::new(env!("CARGO"))
        .args(["test", "--quiet", "--manifest-path"])
        .arg(root.join("plugins/Cargo.toml"))
        .arg("--target-dir")
        .arg(root.join("target/plugin-unit-tests"))
        // The outer build's flags are for the runtime, not for this build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .expect("cargo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "plugin unit tests failed:\n{stdout}\n{stderr}"
    );
    let passed: usize = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("test result: ok. "))
        .filter_map(|l| l.split(' ').next()?.parse::<usize>().ok())
        .sum();
    assert!(
        passed >= 20,
        "expected the plugins' unit tests to run, saw {passed} pass:\n{stdout}"
    );
}
