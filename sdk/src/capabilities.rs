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

    /// The `Authorization` header value for HTTP basic auth.
    pub fn basic_auth(user: &str, password: &str) -> String {
        format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
    }

    /// Standard base64 with padding (RFC 4648).
    fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn base64_matches_rfc_4648_vectors() {
            for (plain, encoded) in [
                ("", ""),
                ("f", "Zg=="),
                ("fo", "Zm8="),
                ("foo", "Zm9v"),
                ("foob", "Zm9vYg=="),
                ("fooba", "Zm9vYmE="),
                ("foobar", "Zm9vYmFy"),
            ] {
                assert_eq!(super::base64(plain.as_bytes()), encoded, "{plain}");
            }
            assert_eq!(
                super::basic_auth("admin", "s3cr#t"),
                "Basic YWRtaW46czNjciN0"
            );
        }
    }
}

/// The host's wall clock.
pub mod clock {
    /// Milliseconds since the Unix epoch.
    pub fn now_millis() -> u64 {
        super::wit::clock::now_millis()
    }
}

/// The operator's settings for this plugin (`[plugins.NAME]` in
/// steward.toml, beyond grants and limits), e.g. `notify`'s channels.
pub mod config {
    use crate::Error;

    /// The setting `key` decoded into `T`, or `None` when it is not set. A
    /// setting of the wrong shape is a fatal error naming the key.
    pub fn get<T: serde::de::DeserializeOwned>(key: &str) -> Result<Option<T>, Error> {
        match super::wit::config::get(key) {
            None => Ok(None),
            Some(json) => serde_json::from_str(&json).map(Some).map_err(|e| {
                Error::fatal(format!(
                    "the operator's setting `{key}` is not valid here: {e}"
                ))
                .with_code("bad-setting")
            }),
        }
    }
}
