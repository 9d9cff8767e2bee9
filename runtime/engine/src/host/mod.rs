//! Host state for one plugin call, and one module per WIT interface. Each
//! capability checks the plugin's [`Grants`] first and denies by default.

mod clock;
mod config;
mod http;
mod kv;
mod log;
mod secrets;

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use http::HttpClient;
pub use kv::{KeyValue, KvFuture, MemoryKeyValue};

use super::bindings::HostError;
use super::budget::{Interruption, Meter};
use super::grants::Grants;
use super::limiter::MemoryLimiter;
use crate::settings::Secrets;

/// One line a plugin logged during a call.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogLine {
    pub level: String,
    pub message: String,
}

/// What the host capabilities of one plugin share across calls.
pub struct PluginHost {
    pub name: String,
    pub grants: Grants,
    pub http: Option<HttpClient>,
    /// The operator's plugin-specific settings, each as JSON text, read
    /// through the `config` interface.
    pub settings: std::collections::BTreeMap<String, String>,
}

/// Everything a single call can touch. Built fresh for every call and
/// dropped with its `Store`, so nothing leaks from one step to the next.
pub struct HostState {
    /// Built on first use: most plugin calls never touch WASI, and building
    /// a context seeds three random number generators.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) plugin: Arc<PluginHost>,
    pub(crate) kv: Arc<dyn KeyValue>,
    pub(crate) secrets: Arc<Secrets>,
    pub(crate) deadline: Instant,
    io_budget: usize,
    pub(crate) logs: Vec<LogLine>,
    pub(crate) log_budget: LogBudget,
    /// Read at each epoch deadline (see `budget`).
    pub(crate) meter: Meter,
    /// Why the epoch check stopped the call, for the engine's verdict.
    pub(crate) interrupted: Option<Interruption>,
}

/// What a call may still log: lines and bytes, and how many lines it
/// logged past them (dropped, and told once at the end).
#[derive(Debug, Clone, Copy)]
pub struct LogBudget {
    pub lines: u64,
    pub bytes: u64,
    pub(crate) dropped: u64,
}

impl LogBudget {
    pub fn new(lines: u64, bytes: u64) -> LogBudget {
        LogBudget {
            lines,
            bytes,
            dropped: 0,
        }
    }
}

/// The parts a call brings to its [`HostState`].
pub struct CallScope {
    pub plugin: Arc<PluginHost>,
    pub kv: Arc<dyn KeyValue>,
    pub secrets: Arc<Secrets>,
    pub deadline: Instant,
    pub io_budget: usize,
    pub memory_limit: usize,
    pub log_budget: LogBudget,
    pub meter: Meter,
}

impl HostState {
    pub fn new(scope: CallScope) -> HostState {
        HostState {
            wasi: None,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(scope.memory_limit),
            plugin: scope.plugin,
            kv: scope.kv,
            secrets: scope.secrets,
            deadline: scope.deadline,
            io_budget: scope.io_budget,
            logs: Vec::new(),
            log_budget: scope.log_budget,
            meter: scope.meter,
            interrupted: None,
        }
    }

    /// Charges `bytes` copied across the boundary against the call's budget.
    pub(crate) fn charge(&mut self, bytes: usize, what: &str) -> Result<(), HostError> {
        if bytes > self.io_budget {
            self.io_budget = 0;
            return Err(HostError::limit(format!(
                "{what} would exceed the call's budget of bytes copied through host calls"
            )));
        }
        self.io_budget -= bytes;
        Ok(())
    }

    /// Remaining bytes, for capabilities that must cap what they read.
    pub(crate) fn io_remaining(&self) -> usize {
        self.io_budget
    }

    /// The call's log, ending with a note of how many lines were dropped
    /// past its limits, if any were.
    pub(crate) fn take_logs(&mut self, limits: &crate::settings::Limits) -> Vec<LogLine> {
        let dropped = std::mem::take(&mut self.log_budget.dropped);
        if dropped > 0 {
            self.logs.push(LogLine {
                level: "warn".to_string(),
                message: format!(
                    "{dropped} more log lines dropped: a call keeps at most {} lines and {} KiB \
                     ([limits] log_lines, log_kib)",
                    limits.log_lines, limits.log_kib
                ),
            });
        }
        std::mem::take(&mut self.logs)
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the
/// cut, so a plugin's message cannot grow the history without bound.
pub(crate) fn truncate_marked(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(" [truncated]");
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        // WASI is linked only because guest toolchains import it; it grants
        // nothing: no preopens, no env, no args, no sockets, stdio discarded.
        let ctx = self.wasi.get_or_insert_with(|| {
            wasmtime_wasi::WasiCtxBuilder::new()
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .build()
        });
        WasiCtxView {
            ctx,
            table: &mut self.table,
        }
    }
}

impl super::bindings::steward::plugin::types::Host for HostState {}
