use super::{HostState, LogLine};
use crate::engine::bindings::steward::plugin::log::{Host, Level};

/// Longest message kept; the rest is cut so a chatty plugin cannot flood
/// the history.
const MAX_MESSAGE: usize = 4096;

impl Host for HostState {
    fn log(&mut self, level: Level, mut message: String) {
        if self.charge(message.len(), "a log message").is_err() {
            return;
        }
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" [truncated]");
        }
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
