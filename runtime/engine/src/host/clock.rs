use super::HostState;
use crate::bindings::steward::plugin::clock::Host;

impl Host for HostState {
    fn now_millis(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}
