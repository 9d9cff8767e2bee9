//! The sandbox: loads plugin components and runs one step per call in a
//! fresh `Store`, bounded in memory, CPU time, wall-clock time and bytes
//! copied through host calls.
//!
//! Architecture invariant: only this module knows wasmtime. Callers speak in
//! plugin names, JSON text and [`CallError`]s.

pub mod bindings;
mod budget;
mod cache;
pub mod grants;
pub mod host;
mod limiter;
pub mod manifest;
pub mod settings;
mod ticker;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker};
use wasmtime::{
    Config, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap, UpdateDeadline,
};

pub use bindings::StepContext;
use bindings::{Fulfilment, FulfilmentPre};
use budget::{Budget, Interruption, Meter};
pub use cache::digest;
use grants::Grants;
use host::{CallScope, HostState, HttpClient, PluginHost};
pub use host::{KeyValue, KvFuture, LogBudget, LogLine, MemoryKeyValue};
use manifest::Manifest;

use crate::settings::{Limits, PluginSettings, Secrets};

/// The world every plugin must target, as shown in errors.
pub const WORLD: &str = "steward:plugin/fulfilment@0.1.0";

/// How the engine is set up; built from `steward.toml` by the caller.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Where compiled components are cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// Calls running at once; also the size of the instance pool.
    pub max_concurrent_calls: u32,
    pub epoch_tick: Duration,
    /// The largest memory limit any plugin has: the pool's slot size.
    pub max_memory_bytes: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            cache_dir: None,
            max_concurrent_calls: 32,
            epoch_tick: Duration::from_millis(10),
            max_memory_bytes: 64 << 20,
        }
    }
}

/// Why the engine could not start or could not load a plugin.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot configure the WebAssembly engine: {0}")]
    Setup(String),
    #[error("plugin {plugin} ({origin}): {message}")]
    Load {
        plugin: String,
        origin: String,
        message: String,
    },
}

/// A loaded plugin, ready to be instantiated for each call.
pub struct LoadedPlugin {
    pub manifest: Manifest,
    /// Where it came from: `built-in` or a file path.
    pub origin: String,
    pub digest: String,
    pub size: usize,
    pub limits: Limits,
    /// Grants the manifest asked for that the operator did not give.
    pub warnings: Vec<String>,
    host: Arc<PluginHost>,
    pre: FulfilmentPre<HostState>,
}

impl LoadedPlugin {
    /// What the plugin was granted: allowed origins, secret names, and
    /// whether it has its key-value store.
    pub fn granted(&self) -> (Vec<String>, Vec<String>, bool) {
        self.host.grants.summary()
    }
}

/// A component to load: bytes plus its `plugin.toml`.
pub struct PluginSource<'a> {
    pub bytes: &'a [u8],
    pub manifest: Manifest,
    pub origin: String,
}

/// One plugin call.
#[derive(Debug, Clone)]
pub struct CallRequest {
    pub plugin: String,
    pub context: StepContext,
    /// The step's evaluated `with`, as JSON text.
    pub input: String,
    /// The step's own timeout; the plugin's limit applies when shorter.
    pub timeout: Option<Duration>,
}

/// What a call produced, with what the plugin logged on the way.
#[derive(Debug)]
pub struct CallOutcome {
    /// The plugin's output JSON text, or why there is none.
    pub result: Result<String, CallError>,
    pub logs: Vec<LogLine>,
    pub elapsed: Duration,
}

/// Why a call produced no output. Traps and limits are the host's verdict;
/// [`CallError::Plugin`] is the plugin's own typed error.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    #[error("no plugin named {0} is loaded")]
    UnknownPlugin(String),
    #[error("{message}")]
    Plugin {
        plugin: String,
        message: String,
        retryable: bool,
        code: Option<String>,
    },
    #[error("plugin {plugin} exceeded its CPU time limit of {limit_ms} ms")]
    CpuLimit { plugin: String, limit_ms: u64 },
    #[error("plugin {plugin} exceeded its memory limit of {limit_mib} MiB")]
    MemoryLimit { plugin: String, limit_mib: u64 },
    #[error("plugin {plugin} did not finish within its timeout of {limit_ms} ms")]
    Timeout { plugin: String, limit_ms: u64 },
    #[error("plugin {plugin} crashed: {message}")]
    Trap { plugin: String, message: String },
    #[error("plugin {plugin}: {message}")]
    Refused { plugin: String, message: String },
}

impl CallError {
    /// Whether another attempt may succeed: plugin errors say so themselves,
    /// timeouts may pass; crashes and limits repeat.
    pub fn retryable(&self) -> bool {
        match self {
            CallError::Plugin { retryable, .. } => *retryable,
            CallError::Timeout { .. } => true,
            _ => false,
        }
    }

    /// A stable code for the run's error.
    pub fn code(&self) -> Option<String> {
        let code = match self {
            CallError::Plugin { code, .. } => return code.clone(),
            CallError::UnknownPlugin(_) => "unknown-plugin",
            CallError::CpuLimit { .. } => "cpu-limit",
            CallError::MemoryLimit { .. } => "memory-limit",
            CallError::Timeout { .. } => "timeout",
            CallError::Trap { .. } => "trap",
            CallError::Refused { .. } => "refused",
        };
        Some(code.to_string())
    }
}

/// The plugin sandbox. Cheap to clone; clones share plugins and the pool.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    wasmtime: wasmtime::Engine,
    linker: Linker<HostState>,
    plugins: RwLock<BTreeMap<String, Arc<LoadedPlugin>>>,
    kv: Arc<dyn KeyValue>,
    secrets: Arc<Secrets>,
    permits: Arc<tokio::sync::Semaphore>,
    options: EngineOptions,
    _ticker: ticker::EpochTicker,
}

impl Engine {
    /// Configures wasmtime (pooling allocator, epoch interruption) and links
    /// the host capabilities.
    pub fn new(
        options: EngineOptions,
        kv: Arc<dyn KeyValue>,
        secrets: Secrets,
    ) -> Result<Engine, EngineError> {
        let setup = |e: wasmtime::Error| EngineError::Setup(e.to_string());
        let wasmtime = wasmtime::Engine::new(&wasmtime_config(&options)).map_err(setup)?;
        let mut linker = Linker::new(&wasmtime);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(setup)?;
        Fulfilment::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )
        .map_err(setup)?;
        let ticker = ticker::EpochTicker::start(wasmtime.clone(), options.epoch_tick);
        Ok(Engine {
            inner: Arc::new(Inner {
                wasmtime,
                linker,
                plugins: RwLock::new(BTreeMap::new()),
                kv,
                secrets: Arc::new(secrets),
                permits: Arc::new(tokio::sync::Semaphore::new(
                    options.max_concurrent_calls as usize,
                )),
                options,
                _ticker: ticker,
            }),
        })
    }

    /// Compiles (or loads from the cache) and checks a component against the
    /// world, then registers it under its manifest name, replacing any
    /// plugin of that name.
    pub fn load(
        &self,
        source: PluginSource<'_>,
        operator: &PluginSettings,
        limits: Limits,
    ) -> Result<Arc<LoadedPlugin>, EngineError> {
        let name = source.manifest.name.clone();
        let fail = |message: String| EngineError::Load {
            plugin: name.clone(),
            origin: source.origin.clone(),
            message,
        };
        if (limits.memory_mib << 20) as usize > self.inner.options.max_memory_bytes {
            return Err(fail(format!(
                "memory_mib = {} exceeds the engine's largest memory slot ({} MiB)",
                limits.memory_mib,
                self.inner.options.max_memory_bytes >> 20
            )));
        }
        let (grants, warnings) =
            Grants::resolve(&source.manifest, operator, &self.inner.secrets.names())
                .map_err(&fail)?;
        let component = cache::load_component(
            &self.inner.wasmtime,
            source.bytes,
            self.inner.options.cache_dir.as_deref(),
        )
        .map_err(|e| {
            fail(format!(
                "not a valid WebAssembly component: {}",
                root_cause(&e)
            ))
        })?;
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .and_then(FulfilmentPre::new)
            .map_err(|e| {
                fail(format!(
                    "the component does not match the {WORLD} world: {}",
                    root_cause(&e)
                ))
            })?;
        let http = grants.wants_http().then(|| HttpClient::new(&grants));
        let plugin = Arc::new(LoadedPlugin {
            host: Arc::new(PluginHost {
                name: name.clone(),
                grants,
                http,
                settings: operator.settings_json(),
            }),
            manifest: source.manifest,
            origin: source.origin,
            digest: digest(source.bytes),
            size: source.bytes.len(),
            limits,
            warnings,
            pre,
        });
        self.inner
            .plugins
            .write()
            .unwrap()
            .insert(name, plugin.clone());
        Ok(plugin)
    }

    /// Whether calls of `name` are contained: the plugin is loaded and was
    /// granted nothing that reaches outside the call, so running it twice
    /// (after a crash) is indistinguishable from running it once, and its
    /// start need not be made durable before it runs.
    pub fn is_contained(&self, name: &str) -> bool {
        self.plugin(name)
            .is_some_and(|p| !p.host.grants.reaches_outside())
    }

    pub fn plugin(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.inner.plugins.read().unwrap().get(name).cloned()
    }

    /// Every loaded plugin, by name.
    pub fn plugins(&self) -> Vec<Arc<LoadedPlugin>> {
        self.inner
            .plugins
            .read()
            .unwrap()
            .values()
            .cloned()
            .collect()
    }

    /// Runs a call on a blocking thread, at most `max_concurrent_calls` at
    /// once: callers queue instead of exhausting the instance pool. The
    /// call is driven on that one thread from start to end, which is what
    /// its CPU clock measures (see `budget`), and its slot is free again at
    /// its deadline whatever the guest is doing.
    pub async fn call(&self, request: CallRequest) -> CallOutcome {
        let permit = self
            .inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let engine = self.clone();
        let plugin = request.plugin.clone();
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let outcome = runtime.block_on(engine.call_here(&request));
            drop(permit);
            outcome
        })
        .await
        .unwrap_or_else(|e| CallOutcome {
            result: Err(CallError::Trap {
                plugin,
                message: format!("the host task failed: {e}"),
            }),
            logs: Vec::new(),
            elapsed: Duration::ZERO,
        })
    }

    /// Runs one call on this thread, for callers outside any async runtime
    /// (benchmarks, tools): the same call as [`Engine::call`], driven by a
    /// runtime of the engine's own.
    pub fn call_blocking(&self, request: &CallRequest) -> CallOutcome {
        static RUNTIME: std::sync::LazyLock<tokio::runtime::Runtime> =
            std::sync::LazyLock::new(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_time()
                    .build()
                    .expect("a runtime for blocking plugin calls")
            });
        RUNTIME.block_on(self.call_here(request))
    }

    /// One call, driven by the calling thread: fresh `Store`, fresh
    /// instance, limits armed, everything dropped at the end. The call is
    /// raced against its wall-clock timeout, so a guest blocked in WASI or
    /// in an asynchronous host call is dropped at the deadline; the epoch
    /// check (see `budget`) stops one that never blocks.
    async fn call_here(&self, request: &CallRequest) -> CallOutcome {
        let started = Instant::now();
        let Some(plugin) = self.plugin(&request.plugin) else {
            return CallOutcome {
                result: Err(CallError::UnknownPlugin(request.plugin.clone())),
                logs: Vec::new(),
                elapsed: started.elapsed(),
            };
        };
        let budget = Budget::of(plugin.limits, request.timeout);
        let mut store = self.new_store(&plugin, budget, started);
        let timed = tokio::time::timeout(budget.wall, self.run(&plugin, &mut store, request));
        let result = match timed.await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout {
                plugin: plugin.manifest.name.clone(),
                limit_ms: budget.wall.as_millis() as u64,
            }),
        };
        CallOutcome {
            result,
            logs: store.data_mut().take_logs(&plugin.limits),
            elapsed: started.elapsed(),
        }
    }

    fn new_store(
        &self,
        plugin: &Arc<LoadedPlugin>,
        budget: Budget,
        started: Instant,
    ) -> Store<HostState> {
        let limits = plugin.limits;
        let meter = Meter::start(budget, started, self.inner.options.epoch_tick);
        let first_ticks = meter.first_ticks();
        let state = HostState::new(CallScope {
            plugin: plugin.host.clone(),
            kv: self.inner.kv.clone(),
            secrets: self.inner.secrets.clone(),
            deadline: started + budget.wall,
            io_budget: (limits.io_mib << 20) as usize,
            memory_limit: (limits.memory_mib << 20) as usize,
            log_budget: LogBudget::new(limits.log_lines, limits.log_kib << 10),
            meter,
        });
        let mut store = Store::new(&self.inner.wasmtime, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(first_ticks);
        store.epoch_deadline_callback(|mut cx| {
            let state = cx.data_mut();
            Ok(match state.meter.check() {
                Ok(ticks) => UpdateDeadline::Continue(ticks),
                Err(why) => {
                    state.interrupted = Some(why);
                    UpdateDeadline::Interrupt
                }
            })
        });
        store
    }

    async fn run(
        &self,
        plugin: &LoadedPlugin,
        store: &mut Store<HostState>,
        request: &CallRequest,
    ) -> Result<String, CallError> {
        let name = &plugin.manifest.name;
        store
            .data_mut()
            .charge(request.input.len(), "the step input")
            .map_err(|e| CallError::Refused {
                plugin: name.clone(),
                message: e.message,
            })?;
        let outcome = match plugin.pre.instantiate_async(&mut *store).await {
            Ok(instance) => {
                instance
                    .steward_plugin_handler()
                    .call_handle(&mut *store, &request.context, &request.input)
                    .await
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(Ok(output)) => {
                store
                    .data_mut()
                    .charge(output.len(), "the step output")
                    .map_err(|e| CallError::Refused {
                        plugin: name.clone(),
                        message: e.message,
                    })?;
                Ok(output)
            }
            Ok(Err(mut e)) => {
                host::truncate_marked(&mut e.message, plugin.limits.error_bytes as usize);
                if let Some(code) = &mut e.code {
                    host::truncate_marked(code, MAX_ERROR_CODE);
                }
                Err(CallError::Plugin {
                    plugin: name.clone(),
                    message: e.message,
                    retryable: e.retryable,
                    code: e.code,
                })
            }
            Err(trap) => Err(classify_trap(plugin, store, &trap)),
        }
    }
}

/// Longest error code a plugin may return, in bytes: codes are names for
/// workflows to match on, not messages.
const MAX_ERROR_CODE: usize = 64;

fn classify_trap(
    plugin: &LoadedPlugin,
    store: &Store<HostState>,
    error: &wasmtime::Error,
) -> CallError {
    let name = plugin.manifest.name.clone();
    let state = store.data();
    if state.limiter.refused.is_some() {
        return CallError::MemoryLimit {
            plugin: name,
            limit_mib: plugin.limits.memory_mib,
        };
    }
    if let Some(Trap::Interrupt) = error.downcast_ref::<Trap>() {
        return match state.interrupted {
            Some(Interruption::Cpu) => CallError::CpuLimit {
                plugin: name,
                limit_ms: plugin.limits.cpu_ms,
            },
            Some(Interruption::Wall) | None => CallError::Timeout {
                plugin: name,
                limit_ms: state.meter.wall().as_millis() as u64,
            },
        };
    }
    if let Some(trap) = error.downcast_ref::<Trap>() {
        let hint = match trap {
            Trap::UnreachableCodeReached => " (a panic in the plugin ends this way)",
            _ => "",
        };
        return CallError::Trap {
            plugin: name,
            message: format!("{trap}{hint}"),
        };
    }
    CallError::Trap {
        plugin: name,
        message: root_cause(error),
    }
}

fn root_cause(error: &wasmtime::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        text.push_str(": ");
        text.push_str(&cause.to_string());
    }
    text
}

/// Whether the kernel lets the pool reset only the pages a call dirtied
/// (Linux 6.7+); the benchmark prints it.
pub fn pagemap_scan_available() -> bool {
    PoolingAllocationConfig::is_pagemap_scan_available()
}

fn wasmtime_config(options: &EngineOptions) -> Config {
    let slots = options.max_concurrent_calls.max(1);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(slots)
        .total_core_instances(slots * 16)
        .max_core_instances_per_component(16)
        .total_memories(slots * 2)
        .total_tables(slots * 8)
        .total_stacks(slots)
        .max_memory_size(options.max_memory_bytes);
    // Reset only the pages a call dirtied and keep them mapped: most of the
    // cost of a fresh instance is page faults and madvise otherwise.
    if pagemap_scan_available() {
        pool.pagemap_scan(wasmtime::Enabled::Yes)
            .linear_memory_keep_resident(options.max_memory_bytes.min(64 << 20))
            .table_keep_resident(1 << 20);
    }
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .concurrency_support(false)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// Reads a component for [`Engine::load`] from `path`, with the
/// `plugin.toml` beside it (or a bare manifest named after the file).
pub fn read_plugin_files(path: &std::path::Path) -> Result<(Vec<u8>, Manifest), String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("{}: cannot read the component: {e}", path.display()))?;
    let manifest_path = path.with_file_name("plugin.toml");
    let manifest = if manifest_path.exists() {
        let text = std::fs::read_to_string(&manifest_path)
            .map_err(|e| format!("{}: cannot read: {e}", manifest_path.display()))?;
        Manifest::parse(&text, &manifest_path.display().to_string()).map_err(|e| e.to_string())?
    } else {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("plugin")
            .replace('_', "-");
        Manifest::bare(&stem)
    };
    Ok((bytes, manifest))
}

/// What a component imports and exports, for `steward plugin inspect`.
#[derive(Debug, Clone)]
pub struct ComponentInfo {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// Compiles `bytes` and lists its interface names.
pub fn describe_component(bytes: &[u8]) -> Result<ComponentInfo, String> {
    let engine = wasmtime::Engine::default();
    let component = Component::new(&engine, bytes).map_err(|e| root_cause(&e))?;
    let ty = component.component_type();
    Ok(ComponentInfo {
        imports: ty
            .imports(&engine)
            .map(|(name, _)| name.to_string())
            .collect(),
        exports: ty
            .exports(&engine)
            .map(|(name, _)| name.to_string())
            .collect(),
    })
}
