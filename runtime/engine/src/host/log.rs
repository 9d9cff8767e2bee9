use super::{HostState, LogLine, truncate_marked};
use crate::bindings::steward::plugin::log::{Host, Level};

/// Longest message kept; the rest is cut so a chatty plugin cannot flood
/// the history.
const MAX_MESSAGE: usize = 4096;

/// What a line costs the call's log budget beyond its text: an empty line
/// is not free (each is a record in memory, in the history and in the
/// server's log).
const LINE_OVERHEAD: u64 = 64;

impl Host for HostState {
    fn log(&mut self, level: Level, mut message: String) {
        if self.charge(message.len(), "a log message").is_err() {
            return;
        }
        truncate_marked(&mut message, MAX_MESSAGE);
        let cost = message.len() as u64 + LINE_OVERHEAD;
        let budget = &mut self.log_budget;
        if budget.lines == 0 || budget.bytes < cost {
            budget.dropped += 1;
            return;
        }
        budget.lines -= 1;
        budget.bytes -= cost;
        let plugin = &self.plugin.name;
        let level = match level {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        tracing::debug!(plugin = %plugin, level, "{message}");
        self.logs.push(LogLine {
            level: level.to_string(),
            message,
        });
    }
}
