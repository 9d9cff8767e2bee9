//! The one `bindgen!` of the `steward:plugin` world, shared by the whole host.

// Calls run as futures so a wall-clock timeout can drop one whatever the
// guest is doing; the key-value capability is asynchronous because its
// store is (a blocking wait there would need a runtime inside a runtime).
wasmtime::component::bindgen!({
    path: "../../wit",
    world: "fulfilment",
    imports: { "steward:plugin/kv": async },
    exports: { default: async },
});

pub use self::steward::plugin::types::{HostError, HostErrorKind, PluginError, StepContext};

impl HostError {
    /// The capability is not granted to this plugin.
    pub fn denied(message: impl Into<String>) -> Self {
        HostError {
            kind: HostErrorKind::Denied,
            message: message.into(),
        }
    }
    /// The request is malformed.
    pub fn invalid(message: impl Into<String>) -> Self {
        HostError {
            kind: HostErrorKind::Invalid,
            message: message.into(),
        }
    }
    /// A size or time limit was reached.
    pub fn limit(message: impl Into<String>) -> Self {
        HostError {
            kind: HostErrorKind::Limit,
            message: message.into(),
        }
    }
    /// The capability tried and failed.
    pub fn failed(message: impl Into<String>) -> Self {
        HostError {
            kind: HostErrorKind::Failed,
            message: message.into(),
        }
    }
}
