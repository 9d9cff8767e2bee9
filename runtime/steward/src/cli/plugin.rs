//! `steward plugin new|build|inspect`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use steward::config::{Limits, PluginSettings, Secrets};
use steward::engine::manifest::{Manifest, is_valid_name};
use steward::engine::{
    Engine, EngineOptions, MemoryKeyValue, PluginSource, WORLD, describe_component, digest,
    read_plugin_files,
};
use steward::plugin_build::{build_components, ensure_wasm_target};

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Scaffold a plugin crate on the SDK that builds and runs as-is.
    New {
        name: String,
        /// The parent folder of the new crate.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The steward-sdk crate to depend on (defaults to this checkout's).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Build a plugin crate into a component in DIR/dist/NAME/.
    Build {
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Where cargo builds (defaults to DIR/target).
        #[arg(long, env = "CARGO_TARGET_DIR")]
        target_dir: Option<PathBuf>,
    },
    /// Show a component's world, imports, exports, manifest and size.
    Inspect { file: PathBuf },
}

pub fn dispatch(command: PluginCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginCommand::New { name, dir, sdk } => new(&name, &dir, sdk),
        PluginCommand::Build { dir, target_dir } => build(&dir, target_dir),
        PluginCommand::Inspect { file } => inspect(&file),
    }
}

fn new(name: &str, parent: &Path, sdk: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    if !is_valid_name(name) {
        bail!("{name:?} is not a valid plugin name: use lowercase letters, digits and '-'");
    }
    let dir = parent.join(name);
    if dir.exists() {
        bail!(
            "{} already exists: pick another name or folder",
            dir.display()
        );
    }
    let sdk = match sdk {
        Some(p) => p,
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk"),
    };
    let sdk = sdk.canonicalize().with_context(|| {
        format!(
            "the SDK is not at {}: pass --sdk PATH/TO/steward/sdk",
            sdk.display()
        )
    })?;
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(dir.join("Cargo.toml"), scaffold::cargo_toml(name, &sdk))?;
    std::fs::write(dir.join("plugin.toml"), scaffold::plugin_toml(name))?;
    std::fs::write(dir.join("src/lib.rs"), scaffold::LIB_RS)?;
    std::fs::write(dir.join(".gitignore"), "/target\n/dist\n")?;
    println!("created {}", dir.display());
    println!("next: steward plugin build {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

fn build(dir: &Path, target_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    ensure_wasm_target("rustc").map_err(anyhow::Error::msg)?;
    eprintln!("building {} for wasm32-wasip2 ...", dir.display());
    let target_dir = target_dir.unwrap_or_else(|| dir.join("target"));
    let built = build_components("cargo", dir, &target_dir).map_err(anyhow::Error::msg)?;
    let engine = check_engine()?;
    for component in built {
        let out = dir.join("dist").join(&component.name);
        std::fs::create_dir_all(&out)?;
        let wasm = out.join(format!("{}.wasm", component.name));
        std::fs::copy(&component.wasm, &wasm)?;
        if let Some(manifest) = &component.manifest {
            std::fs::copy(manifest, out.join("plugin.toml"))?;
        }
        let (bytes, manifest) = read_plugin_files(&wasm).map_err(anyhow::Error::msg)?;
        check(&engine, &bytes, manifest, &wasm)?;
        println!(
            "{}  ({} KiB, matches {WORLD})",
            wasm.display(),
            bytes.len() / 1024
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect(file: &Path) -> anyhow::Result<ExitCode> {
    let (bytes, manifest) = read_plugin_files(file).map_err(anyhow::Error::msg)?;
    let info = describe_component(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a WebAssembly component: {e}", file.display()))?;
    let world = match check(&check_engine()?, &bytes, manifest.clone(), file) {
        Ok(()) => format!("{WORLD} (matches)"),
        Err(e) => format!("does not match {WORLD}: {e:#}"),
    };
    println!("file:     {}", file.display());
    println!("size:     {} bytes", bytes.len());
    println!("sha256:   {}", digest(&bytes));
    println!("world:    {world}");
    println!("imports:");
    for name in &info.imports {
        println!("  {name}");
    }
    println!("exports:");
    for name in &info.exports {
        println!("  {name}");
    }
    println!("manifest:");
    println!(
        "  name = {:?}, version = {:?}",
        manifest.name, manifest.version
    );
    println!("  allowed_hosts = {:?}", manifest.allowed_hosts);
    println!("  secrets = {:?}", manifest.secrets);
    println!("  key_value = {}", manifest.key_value);
    Ok(ExitCode::SUCCESS)
}

fn check_engine() -> anyhow::Result<Engine> {
    let options = EngineOptions {
        max_concurrent_calls: 1,
        ..EngineOptions::default()
    };
    Ok(Engine::new(
        options,
        Arc::new(MemoryKeyValue::default()),
        Secrets::default(),
    )?)
}

fn check(engine: &Engine, bytes: &[u8], manifest: Manifest, path: &Path) -> anyhow::Result<()> {
    let source = PluginSource {
        bytes,
        manifest,
        origin: path.display().to_string(),
    };
    engine.load(source, &PluginSettings::default(), Limits::default())?;
    Ok(())
}

mod scaffold {
    use std::path::Path;

    pub fn cargo_toml(name: &str, sdk: &Path) -> String {
        format!(
            r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
steward-sdk = {{ path = "{sdk}" }}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

# A workspace of its own, so it builds wherever it is created.
[workspace]

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true
panic = "abort"
"#,
            sdk = sdk.display()
        )
    }

    pub fn plugin_toml(name: &str) -> String {
        format!(
            r#"name = "{name}"
version = "0.1.0"
description = "Greets someone"
# Capabilities this plugin asks for; the operator grants them in steward.toml.
allowed_hosts = []
secrets = []
key_value = false
"#
        )
    }

    pub const LIB_RS: &str = r#"//! A Steward fulfilment plugin. `with: { name: ... }` in, a greeting out.

use serde::{Deserialize, Serialize};
use steward_sdk::{Context, Error};

#[derive(Deserialize)]
struct Input {
    name: String,
}

#[derive(Serialize)]
struct Output {
    greeting: String,
    run: String,
}

fn handle(ctx: &Context, input: Input) -> Result<Output, Error> {
    if input.name.trim().is_empty() {
        return Err(Error::fatal("name must not be empty"));
    }
    steward_sdk::log::info(&format!("greeting {}", input.name));
    Ok(Output { greeting: format!("Hello, {}!", input.name), run: ctx.run_id.clone() })
}

steward_sdk::plugin!(handle);
"#;
}
