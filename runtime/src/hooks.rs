//! Signed webhooks: `Steward-Signature: t=UNIX_SECONDS,v1=HEX`, where HEX is
//! HMAC-SHA256 with the hook's secret over `t + "." + body` (the scheme
//! Stripe uses). A delivery is accepted when one `v1` matches one of the
//! hook's secrets (two during a rotation) and `t` is within the tolerance.

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::config::{Config, ConfigError};

/// The signature header's name.
pub const SIGNATURE_HEADER: &str = "steward-signature";

/// Why a delivery was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("send the header Steward-Signature: t=UNIX_SECONDS,v1=HMAC_SHA256_HEX")]
    Missing,
    #[error("the Steward-Signature header is malformed ({0}): send t=UNIX_SECONDS,v1=HEX")]
    Malformed(&'static str),
    #[error(
        "no v1 signature matches: sign t + \".\" + the raw body with HMAC-SHA256 and the hook's secret"
    )]
    Mismatch,
    #[error(
        "the signature's timestamp {t} is {skew} s away from the server's clock (tolerance {tolerance} s): sign each delivery when it is sent"
    )]
    Stale { t: i64, skew: i64, tolerance: u64 },
}

/// One configured hook with its secrets resolved.
pub struct Hook {
    pub workflow: String,
    secrets: Vec<Vec<u8>>,
    tolerance_s: u64,
}

/// A delivery whose signature checked out.
#[derive(Debug)]
pub struct Verified {
    /// The same for every copy of this delivery (a function of the hook,
    /// `t` and the body), so a replay finds the run the first copy started.
    pub replay_key: String,
}

/// Every hook by name.
#[derive(Default)]
pub struct Hooks(BTreeMap<String, Hook>);

impl Hooks {
    /// Resolves every `[hooks.NAME]` secret now, so a missing one fails the
    /// start rather than every delivery.
    pub fn from_config(config: &Config) -> Result<Hooks, ConfigError> {
        let mut hooks = BTreeMap::new();
        for (name, settings) in &config.hooks {
            let mut secrets = vec![settings.secret.resolve(&format!("[hooks.{name}] secret"))?];
            if let Some(previous) = &settings.previous_secret {
                secrets.push(previous.resolve(&format!("[hooks.{name}] previous_secret"))?);
            }
            if secrets.iter().any(|s| s.len() < 16) {
                return Err(ConfigError::Invalid(format!(
                    "[hooks.{name}]: a hook secret must have at least 16 characters"
                )));
            }
            let hook = Hook {
                workflow: settings.workflow.clone(),
                secrets: secrets.into_iter().map(String::into_bytes).collect(),
                tolerance_s: settings.tolerance_s,
            };
            hooks.insert(name.clone(), hook);
        }
        Ok(Hooks(hooks))
    }

    pub fn get(&self, name: &str) -> Option<&Hook> {
        self.0.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Hook)> {
        self.0.iter()
    }
}

impl Hook {
    /// Checks `header` against `body` at `now` (Unix seconds). Every `v1`
    /// is compared with every secret in constant time.
    pub fn verify(
        &self,
        name: &str,
        header: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let mut t_text = None;
        let mut signatures = Vec::new();
        for part in header.split(',') {
            let Some((key, value)) = part.trim().split_once('=') else {
                return Err(SignatureError::Malformed("expected key=value pairs"));
            };
            match key {
                "t" => t_text = Some(value),
                "v1" => signatures.push(
                    hex::decode(value)
                        .map_err(|_| SignatureError::Malformed("v1 is not hexadecimal"))?,
                ),
                _ => {} // other schemes, for forward compatibility
            }
        }
        let t_text = t_text.ok_or(SignatureError::Malformed("no t"))?;
        let t: i64 = t_text
            .parse()
            .map_err(|_| SignatureError::Malformed("t is not Unix seconds"))?;
        if signatures.is_empty() {
            return Err(SignatureError::Malformed("no v1"));
        }
        let matches = self.secrets.iter().any(|secret| {
            signatures
                .iter()
                .any(|signature| mac(secret, t_text, body).verify_slice(signature).is_ok())
        });
        if !matches {
            return Err(SignatureError::Mismatch);
        }
        let skew = (now - t).abs();
        if skew > self.tolerance_s as i64 {
            return Err(SignatureError::Stale {
                t,
                skew,
                tolerance: self.tolerance_s,
            });
        }
        let mut digest = Sha256::new();
        digest.update(t_text.as_bytes());
        digest.update(b".");
        digest.update(body);
        Ok(Verified {
            replay_key: format!("hook:{name}:{}", hex::encode(digest.finalize())),
        })
    }
}

fn mac(secret: &[u8], t: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value a sender puts on `body` at `t`: for clients, tests and
/// the docs' examples.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let signature = mac(secret.as_bytes(), &t.to_string(), body).finalize();
    format!("t={t},v1={}", hex::encode(signature.into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook() -> Hook {
        Hook {
            workflow: "w".into(),
            secrets: vec![
                b"new-secret-0123456789".to_vec(),
                b"old-secret-0123456789".to_vec(),
            ],
            tolerance_s: 300,
        }
    }

    #[test]
    fn signatures_are_hmac_sha256_over_t_dot_body() {
        // Computed independently: Python's hmac.new(secret, b'1000.{"a":1}', sha256).
        assert_eq!(
            sign("new-secret-0123456789", 1_000, br#"{"a":1}"#),
            "t=1000,v1=c5815ea2bf6cebe41a006d09be352ef66ddb8ace0a2a1d7f08ae4e2d6dcc2eff"
        );
    }

    #[test]
    fn a_signature_made_with_either_secret_is_accepted() {
        let body = br#"{"a":1}"#;
        for secret in ["new-secret-0123456789", "old-secret-0123456789"] {
            let header = sign(secret, 1_000, body);
            assert!(hook().verify("h", Some(&header), body, 1_100).is_ok());
        }
        let header = sign("another-secret-0123456", 1_000, body);
        assert_eq!(
            hook().verify("h", Some(&header), body, 1_000).unwrap_err(),
            SignatureError::Mismatch
        );
    }

    #[test]
    fn changed_bodies_timestamps_and_old_deliveries_are_refused() {
        let body = br#"{"a":1}"#;
        let header = sign("new-secret-0123456789", 1_000, body);
        let h = hook();
        assert_eq!(
            h.verify("h", Some(&header), br#"{"a":2}"#, 1_000)
                .unwrap_err(),
            SignatureError::Mismatch
        );
        let moved = header.replace("t=1000", "t=1001");
        assert_eq!(
            h.verify("h", Some(&moved), body, 1_000).unwrap_err(),
            SignatureError::Mismatch
        );
        assert!(matches!(
            h.verify("h", Some(&header), body, 1_301),
            Err(SignatureError::Stale { skew: 301, .. })
        ));
        assert!(matches!(
            h.verify("h", Some(&header), body, 699),
            Err(SignatureError::Stale { .. })
        ));
    }

    #[test]
    fn malformed_headers_say_what_is_wrong() {
        let h = hook();
        for (header, why) in [
            ("v1=00", "no t"),
            ("t=1000", "no v1"),
            ("t=soon,v1=00", "t is not Unix seconds"),
            ("t=1000,v1=zz", "v1 is not hexadecimal"),
            ("garbage", "expected key=value pairs"),
        ] {
            assert_eq!(
                h.verify("h", Some(header), b"{}", 1_000).unwrap_err(),
                SignatureError::Malformed(why),
                "{header}"
            );
        }
        assert_eq!(
            h.verify("h", None, b"{}", 1_000).unwrap_err(),
            SignatureError::Missing
        );
    }

    #[test]
    fn copies_of_one_delivery_share_a_replay_key() {
        let body = br#"{"a":1}"#;
        let h = hook();
        let a = h.verify(
            "h",
            Some(&sign("new-secret-0123456789", 1_000, body)),
            body,
            1_000,
        );
        let b = h.verify(
            "h",
            Some(&sign("old-secret-0123456789", 1_000, body)),
            body,
            1_000,
        );
        assert_eq!(a.unwrap().replay_key, b.unwrap().replay_key);
        let c = h.verify(
            "h",
            Some(&sign("new-secret-0123456789", 1_001, body)),
            body,
            1_000,
        );
        assert_ne!(
            c.unwrap().replay_key,
            h.verify(
                "h",
                Some(&sign("new-secret-0123456789", 1_000, body)),
                body,
                1_000
            )
            .unwrap()
            .replay_key
        );
    }
}
