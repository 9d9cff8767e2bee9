//! Caps a call's linear memory and remembers a refusal, so the engine can
//! report "memory limit" instead of the guest's bare `unreachable` trap.

/// Table elements a guest may allocate; generous for real plugins.
const MAX_TABLE_ELEMENTS: usize = 100_000;

pub struct MemoryLimiter {
    limit: usize,
    /// The size a refused `memory.grow` asked for.
    pub refused: Option<usize>,
}

impl MemoryLimiter {
    pub fn new(limit: usize) -> MemoryLimiter {
        MemoryLimiter {
            limit,
            refused: None,
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.refused = Some(desired);
            return Err(wasmtime::Error::msg(format!(
                "memory limit of {} MiB reached (asked for {} MiB)",
                self.limit >> 20,
                desired >> 20
            )));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
