//! Thin, typed wrappers over the host capabilities. Each call is checked by
//! the host against the plugin's grants; a refusal comes back as an
//! [`Error`](crate::Error) that `?` propagates.

use crate::bindings::steward::plugin as wit;

/// Logs land in the step's history and the host's log.
pub mod log {
    use super::wit::log::{Level, log};

    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }
    pub fn info(message: &str) {
        log(Level::Info, message)
    }
    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }
    pub fn error(message: &str) {
        log(Level::Error, message)
    }
}

/// A key-value store private to this plugin (other plugins cannot see it).
pub mod kv {
    use crate::Error;

    pub fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(super::wit::kv::get(key)?)
    }
    pub fn set(key: &str, value: &[u8]) -> Result<(), Error> {
        Ok(super::wit::kv::set(key, value)?)
    }
    pub fn delete(key: &str) -> Result<(), Error> {
        Ok(super::wit::kv::delete(key)?)
    }

    /// Reads a JSON value stored with [`set_json`].
    pub fn get_json<T: serde::de::DeserializeOwned>(key: &str) -> Result<Option<T>, Error> {
        match get(key)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    pub fn set_json<T: serde::Serialize>(key: &str, value: &T) -> Result<(), Error> {
        set(key, &serde_json::to_vec(value)?)
    }
}

/// Secrets the operator granted to this plugin by name.
pub mod secrets {
    pub fn get(name: &str) -> Result<String, crate::Error> {
        Ok(super::wit::secrets::get(name)?)
    }
}

/// Outbound HTTP, limited to the origins the plugin was granted.
pub mod http {
    pub use super::wit::http::{Request, Response};

    /// Sends `request`; a non-2xx status is a response, not an error.
    pub fn send(request: &Request) -> Result<Response, crate::Error> {
        Ok(super::wit::http::send(request)?)
    }
}

/// The host's wall clock.
pub mod clock {
    /// Milliseconds since the Unix epoch.
    pub fn now_millis() -> u64 {
        super::wit::clock::now_millis()
    }
}
