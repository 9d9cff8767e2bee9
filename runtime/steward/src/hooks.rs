//! Signed webhooks: `Steward-Signature: t=UNIX_SECONDS,v1=HEX`, where HEX is
//! HMAC-SHA256 with the hook's secret over `t + "." + body` (the scheme
//! Stripe uses). A delivery is accepted when one `v1` matches one of the
//! hook's secrets (two during a rotation) and `t` is within the tolerance.
//!
//! Deliveries are unauthenticated until checked, so the work one may cause
//! is bounded before the body is read: the header is at most
//! [`MAX_SIGNATURE_HEADER_BYTES`] with at most [`MAX_SIGNATURES`] `v1`
//! entries ([`Signature::parse`]), and the MAC is computed once per secret,
//! however many entries there are, then compared with each entry.

use std::collections::BTreeMap;
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

use crate::config::{Config, ConfigError};

/// The signature header's name.
pub const SIGNATURE_HEADER: &str = "steward-signature";

/// Most `v1` entries one header may carry: a sender signs with the current
/// secret and, during a rotation, the previous one; a few spare for senders
/// with several keys of their own. More is refused, not skipped, so a flood
/// costs a parse and nothing else.
pub const MAX_SIGNATURES: usize = 8;

/// Longest signature header: `t=` and eight 64-digit `v1` entries with
/// room to spare.
pub const MAX_SIGNATURE_HEADER_BYTES: usize = 1024;

/// Why a delivery was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("send the header Steward-Signature: t=UNIX_SECONDS,v1=HMAC_SHA256_HEX")]
    Missing,
    #[error("the Steward-Signature header is malformed ({0}): send t=UNIX_SECONDS,v1=HEX")]
    Malformed(&'static str),
    #[error(
        "the Steward-Signature header has {bytes} bytes; at most {limit} are read: send t and one v1 per secret"
    )]
    TooLong { bytes: usize, limit: usize },
    #[error(
        "the Steward-Signature header has more than {limit} v1 signatures: send one v1 per secret"
    )]
    TooMany { limit: usize },
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
    /// What a verified delivery does.
    pub target: HookTarget,
    secrets: Vec<Vec<u8>>,
    tolerance_s: u64,
}

/// What a hook's deliveries do: start a run, or deliver a signal.
pub enum HookTarget {
    /// Starts the workflow with the body as input.
    Workflow(String),
    /// Delivers signal `name` with the body as payload, keyed by `key`
    /// (an expression over `body`, compiled at start), so it resumes the
    /// runs waiting on that signal with that key.
    Signal {
        name: String,
        key: crate::workflow::expr::Template,
    },
}

impl HookTarget {
    /// `[hooks.NAME]`'s `workflow`, or `signal` with `key`: exactly one of
    /// the two, a valid signal name and a key expression that reads only
    /// `body`. Errors name the hook and what to write.
    fn from_settings(
        name: &str,
        settings: &crate::config::HookSettings,
    ) -> Result<HookTarget, ConfigError> {
        let invalid = |why: String| ConfigError::Invalid(format!("[hooks.{name}]: {why}"));
        match (&settings.workflow, &settings.signal) {
            (Some(workflow), None) => {
                if settings.key.is_some() {
                    return Err(invalid(
                        "key applies to signal hooks only: remove it, or set signal instead of workflow"
                            .into(),
                    ));
                }
                Ok(HookTarget::Workflow(workflow.clone()))
            }
            (None, Some(signal)) => {
                crate::workflow::model::check_signal_name(signal)
                    .map_err(|e| invalid(format!("signal: {e}")))?;
                let source = settings.key.as_deref().ok_or_else(|| {
                    invalid(
                        "a signal hook needs a key taken from the body, e.g. key = \"${{ body.number }}\""
                            .into(),
                    )
                })?;
                let key = match crate::workflow::expr::parse_string(source) {
                    Ok(Some(template)) => template,
                    Ok(None) => {
                        return Err(invalid(format!(
                            "key {source:?} holds no expression: write one over the body, e.g. \"${{{{ body.number }}}}\""
                        )));
                    }
                    Err(e) => return Err(invalid(format!("key: {e}"))),
                };
                for expression in key.expressions() {
                    if let Some(other) = expression.roots.iter().find(|r| *r != "body") {
                        return Err(invalid(format!(
                            "key: `{}`: unknown variable {other}; a hook's key can use body",
                            expression.source
                        )));
                    }
                }
                Ok(HookTarget::Signal {
                    name: signal.clone(),
                    key,
                })
            }
            (Some(_), Some(_)) => Err(invalid(
                "set workflow (a delivery starts a run) or signal (a delivery resumes waiting runs), not both"
                    .into(),
            )),
            (None, None) => Err(invalid(
                "set workflow (the workflow a delivery starts) or signal with key (the signal it delivers)"
                    .into(),
            )),
        }
    }
}

/// Renders a signal hook's key over a delivery's body: a string or a
/// number, else an error saying what the expression gave.
pub fn signal_key(
    key: &crate::workflow::expr::Template,
    body: &serde_json::Value,
) -> Result<String, String> {
    let scope = crate::workflow::expr::Scope::default();
    let value = key.render_with(&scope, &[("body", body)])?;
    crate::run::signal::key_text(&value)
        .ok_or_else(|| format!("the key must be a string or a number, got {value}"))
}

/// A delivery whose signature checked out.
#[derive(Debug)]
pub struct Verified {
    /// The same for every copy of this delivery (a function of the hook,
    /// `t` and the body), so a replay finds the run the first copy started.
    pub replay_key: String,
}

/// Every hook by name; shared, so a check can run on another thread.
#[derive(Default)]
pub struct Hooks(BTreeMap<String, Arc<Hook>>);

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
                target: HookTarget::from_settings(name, settings)?,
                secrets: secrets.into_iter().map(String::into_bytes).collect(),
                tolerance_s: settings.tolerance_s,
            };
            hooks.insert(name.clone(), Arc::new(hook));
        }
        Ok(Hooks(hooks))
    }

    pub fn get(&self, name: &str) -> Option<Arc<Hook>> {
        self.0.get(name).cloned()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Hook)> {
        self.0.iter().map(|(name, hook)| (name, hook.as_ref()))
    }
}

/// A parsed `Steward-Signature` header, within the limits above.
#[derive(Debug)]
pub struct Signature {
    /// `t` as sent: the MAC covers its text, not its value.
    t_text: String,
    t: i64,
    v1: Vec<Vec<u8>>,
}

impl Signature {
    /// Parses `header`; cheap whatever was sent (it reads at most
    /// [`MAX_SIGNATURE_HEADER_BYTES`]), so it runs before the body is read.
    pub fn parse(header: Option<&str>) -> Result<Signature, SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        if header.len() > MAX_SIGNATURE_HEADER_BYTES {
            return Err(SignatureError::TooLong {
                bytes: header.len(),
                limit: MAX_SIGNATURE_HEADER_BYTES,
            });
        }
        let mut t_text = None;
        let mut v1 = Vec::new();
        for part in header.split(',') {
            let Some((key, value)) = part.trim().split_once('=') else {
                return Err(SignatureError::Malformed("expected key=value pairs"));
            };
            match key {
                "t" => t_text = Some(value),
                "v1" if v1.len() == MAX_SIGNATURES => {
                    return Err(SignatureError::TooMany {
                        limit: MAX_SIGNATURES,
                    });
                }
                "v1" => v1.push(
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
        if v1.is_empty() {
            return Err(SignatureError::Malformed("no v1"));
        }
        Ok(Signature {
            t_text: t_text.to_string(),
            t,
            v1,
        })
    }
}

impl Hook {
    /// Checks `header` against `body` at `now` (Unix seconds): parses it,
    /// then [`Hook::check`].
    pub fn verify(
        &self,
        name: &str,
        header: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, SignatureError> {
        self.check(name, &Signature::parse(header)?, body, now)
    }

    /// Checks a parsed signature against `body` at `now` (Unix seconds).
    /// The MAC over the body is computed once per secret (at most two),
    /// then compared with every `v1` in constant time. Hashes the whole
    /// body: the API runs it off the async threads for large bodies.
    pub fn check(
        &self,
        name: &str,
        signature: &Signature,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, SignatureError> {
        let matches = self.secrets.iter().any(|secret| {
            let expected = mac(secret, &signature.t_text, body).finalize().into_bytes();
            // Not short-circuiting over the entries: the time taken does not
            // tell which one matched. A length mismatch is not a secret.
            signature.v1.iter().fold(false, |found, candidate| {
                found | bool::from(expected.as_slice().ct_eq(candidate))
            })
        });
        if !matches {
            return Err(SignatureError::Mismatch);
        }
        let skew = (now - signature.t).abs();
        if skew > self.tolerance_s as i64 {
            return Err(SignatureError::Stale {
                t: signature.t,
                skew,
                tolerance: self.tolerance_s,
            });
        }
        let mut digest = Sha256::new();
        digest.update(signature.t_text.as_bytes());
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
            target: HookTarget::Workflow("w".into()),
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
    fn floods_of_signatures_are_refused_before_any_mac() {
        let h = hook();
        let body = br#"{"a":1}"#;
        let good = sign("new-secret-0123456789", 1_000, body);
        // Eight entries, the good one last: accepted.
        let eight = format!("{}{}", "v1=00,".repeat(7), good);
        assert!(h.verify("h", Some(&eight), body, 1_000).is_ok());
        // Nine: refused, good one or not.
        let nine = format!("{}{}", "v1=00,".repeat(8), good);
        assert_eq!(
            h.verify("h", Some(&nine), body, 1_000).unwrap_err(),
            SignatureError::TooMany { limit: 8 }
        );
        let long = format!("{good},x={}", "0".repeat(1024));
        assert!(matches!(
            Signature::parse(Some(&long)),
            Err(SignatureError::TooLong { limit: 1024, .. })
        ));
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
