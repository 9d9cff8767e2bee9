use super::HostState;
use crate::bindings::steward::plugin::config::Host;

impl Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        let value = self.plugin.settings.get(&key)?.clone();
        // Settings are the operator's and small; a plugin that reads one
        // past its budget gets nothing rather than a trap.
        self.charge(value.len(), "a setting").ok()?;
        Some(value)
    }
}
