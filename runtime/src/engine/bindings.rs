//! The one `bindgen!` of the `steward:plugin` world, shared by the whole host.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "fulfilment",
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
