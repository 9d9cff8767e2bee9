use crate::bindings::steward::plugin::types::{HostError, HostErrorKind, PluginError};

/// A step failure. `retryable` tells the workflow whether another attempt
/// may succeed (a timeout, a 503) or not (bad input, a 404).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub message: String,
    pub retryable: bool,
    pub code: Option<String>,
}

impl Error {
    /// A failure that another attempt will not fix: the step fails at once.
    pub fn fatal(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
            retryable: false,
            code: None,
        }
    }

    /// A transient failure: the step is retried under its retry policy.
    pub fn retryable(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
            retryable: true,
            code: None,
        }
    }

    /// Attaches a machine-readable code, shown in the run's error.
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<Error> for PluginError {
    fn from(e: Error) -> Self {
        PluginError {
            message: e.message,
            retryable: e.retryable,
            code: e.code,
        }
    }
}

/// A refused or failed capability call becomes a step error: denials and
/// invalid requests are permanent, failures and limits may pass.
impl From<HostError> for Error {
    fn from(e: HostError) -> Self {
        let (retryable, code) = match e.kind {
            HostErrorKind::Denied => (false, "denied"),
            HostErrorKind::Invalid => (false, "invalid"),
            HostErrorKind::Limit => (false, "limit"),
            HostErrorKind::Failed => (true, "failed"),
        };
        Error {
            message: e.message,
            retryable,
            code: Some(code.to_string()),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::fatal(format!("JSON: {e}")).with_code("json")
    }
}
