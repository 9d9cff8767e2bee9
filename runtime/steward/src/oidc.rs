//! Single sign-on: JWTs issued by the operator's identity provider
//! (`[auth.oidc]`) are accepted as bearer tokens besides Steward's own. A
//! JWT's subject is a claim of the token; its scopes and approver groups
//! come from `[auth.roles]`, keyed by the identity provider's groups, so
//! who may do what is managed where people are managed.
//!
//! Only asymmetric signatures are accepted: with a symmetric algorithm the
//! verifying key would also sign, and the JWKS is public, so `none` and
//! `HS*` (the classic "HS256 signed with the public key") are refused
//! before any key is looked at.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::config::{OidcSettings, RoleSettings};

/// The signature algorithms a JWT may use.
pub const ALGORITHMS: [&str; 3] = ["RS256", "ES256", "EdDSA"];

/// The keys are fetched again for an unknown `kid` at most this often, so
/// a stream of forged key ids cannot make us hammer the identity provider.
pub const KEY_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// Why a JWT is refused. The message is the problem's detail: it names the
/// check that failed and never repeats the token.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("the token is not a JWT: {0}")]
    Malformed(String),
    #[error(
        "the JWT's algorithm {0:?} is not accepted: use RS256, ES256 or EdDSA (symmetric and unsigned tokens are refused)"
    )]
    Algorithm(String),
    #[error("the JWT names no key id (kid)")]
    NoKeyId,
    #[error("the JWT's key id {0:?} is not among the identity provider's keys")]
    UnknownKey(String),
    #[error("the JWT's signature does not verify")]
    Signature,
    #[error("the JWT's algorithm does not match the kind of its key")]
    KeyMismatch,
    #[error("the JWT expired (exp is past, beyond the allowed clock skew)")]
    Expired,
    #[error("the JWT is not valid yet (nbf is ahead, beyond the allowed clock skew)")]
    NotYetValid,
    #[error("the JWT's issuer (iss) is not the configured one")]
    Issuer,
    #[error("the JWT's audience (aud) does not include the configured one")]
    Audience,
    #[error("the JWT lacks the {0:?} claim")]
    MissingClaim(String),
    #[error("the JWT's {0:?} claim is not a non-empty string")]
    Subject(String),
    /// The identity provider could not be asked for its keys: not the
    /// caller's fault, so answered as unavailable, not unauthorised.
    #[error("the identity provider's keys could not be fetched: {0}")]
    KeysUnavailable(String),
}

/// A configuration that cannot work, reported at start.
#[derive(Debug, thiserror::Error)]
#[error("[auth.roles.{role}]: {reason}")]
pub struct InvalidRole {
    pub role: String,
    pub reason: String,
}

/// Who a valid JWT names, and what its groups grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub scopes: Vec<String>,
    /// Approver groups (`cab` for `group:cab`) the subject belongs to.
    pub approver_groups: Vec<String>,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, DecodingKey>,
    fetched_at: Option<Instant>,
}

/// Validates JWTs against the identity provider's published keys.
pub struct Oidc {
    settings: OidcSettings,
    roles: BTreeMap<String, RoleSettings>,
    jwks_url: String,
    agent: ureq::Agent,
    cache: Arc<Mutex<KeyCache>>,
    /// Serialises fetches, so concurrent unknown `kid`s cost one fetch.
    fetching: tokio::sync::Mutex<()>,
}

/// Whether a bearer secret has a JWT's shape (three dot-separated parts);
/// Steward's own tokens start with `stw_` and have no dots.
pub fn looks_like_jwt(secret: &str) -> bool {
    !secret.starts_with("stw_") && secret.split('.').count() == 3
}

impl Oidc {
    pub fn new(
        settings: OidcSettings,
        roles: BTreeMap<String, RoleSettings>,
    ) -> Result<Oidc, InvalidRole> {
        for (role, r) in &roles {
            if !r.scopes.is_empty() {
                crate::auth::parse_scopes(&r.scopes).map_err(|reason| InvalidRole {
                    role: role.clone(),
                    reason,
                })?;
            }
            if let Some(bad) = r
                .approver_groups
                .iter()
                .find(|g| g.is_empty() || g.starts_with("group:"))
            {
                return Err(InvalidRole {
                    role: role.clone(),
                    reason: format!(
                        "approver group {bad:?}: write the bare name (cab, not group:cab)"
                    ),
                });
            }
        }
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(10))
            .build();
        Ok(Oidc {
            jwks_url: settings.jwks_url(),
            settings,
            roles,
            agent,
            cache: Arc::default(),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// Checks the algorithm, signature, issuer, audience and lifetime, then
    /// maps the token's groups to scopes and approver groups.
    pub async fn validate(&self, token: &str) -> Result<Identity, JwtError> {
        let (alg, kid) = header(token)?;
        let key = self.key(&kid).await?;
        let mut validation = Validation::new(alg);
        validation.leeway = self.settings.clock_skew.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let claims =
            jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key, &validation)
                .map_err(refusal)?
                .claims;
        let subject_claim = &self.settings.subject_claim;
        let subject = match claims.get(subject_claim) {
            None => return Err(JwtError::MissingClaim(subject_claim.clone())),
            Some(Value::String(s)) => crate::auth::parse_subject(s)
                .map_err(|_| JwtError::Subject(subject_claim.clone()))?,
            Some(_) => return Err(JwtError::Subject(subject_claim.clone())),
        };
        let groups: Vec<&str> = match claims.get(&self.settings.groups_claim) {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            Some(Value::String(one)) => vec![one.as_str()],
            _ => Vec::new(),
        };
        let (mut scopes, mut approver_groups) = (BTreeSet::new(), BTreeSet::new());
        for group in groups {
            // Keycloak's full group paths start with a slash.
            let role = self
                .roles
                .get(group)
                .or_else(|| self.roles.get(group.trim_start_matches('/')));
            if let Some(role) = role {
                scopes.extend(role.scopes.iter().cloned());
                approver_groups.extend(role.approver_groups.iter().cloned());
            }
        }
        Ok(Identity {
            subject,
            scopes: scopes.into_iter().collect(),
            approver_groups: approver_groups.into_iter().collect(),
        })
    }

    /// The key named `kid`, fetching the key set again when it is unknown
    /// and the last fetch is older than `KEY_REFRESH_INTERVAL`.
    async fn key(&self, kid: &str) -> Result<DecodingKey, JwtError> {
        if let Some(key) = self.cached(kid) {
            return Ok(key);
        }
        let _one_fetch = self.fetching.lock().await;
        // Another request may have fetched while this one waited.
        if let Some(key) = self.cached(kid) {
            return Ok(key);
        }
        let due = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache
                .fetched_at
                .is_none_or(|at| at.elapsed() >= KEY_REFRESH_INTERVAL)
        };
        if !due {
            return Err(JwtError::UnknownKey(kid.to_string()));
        }
        let (agent, url) = (self.agent.clone(), self.jwks_url.clone());
        let fetched = tokio::task::spawn_blocking(move || fetch_keys(&agent, &url))
            .await
            .map_err(|e| JwtError::KeysUnavailable(e.to_string()))?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        // A failed fetch also counts, so an unreachable provider is not
        // asked again on every request.
        cache.fetched_at = Some(Instant::now());
        cache.keys = fetched?;
        cache
            .keys
            .get(kid)
            .cloned()
            .ok_or_else(|| JwtError::UnknownKey(kid.to_string()))
    }

    fn cached(&self, kid: &str) -> Option<DecodingKey> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.keys.get(kid).cloned()
    }
}

/// The header's algorithm (one of `ALGORITHMS`) and key id, read before
/// anything else so that `none` and symmetric algorithms never reach a key.
fn header(token: &str) -> Result<(Algorithm, String), JwtError> {
    let encoded = token.split('.').next().unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .map_err(|_| JwtError::Malformed("its header is not base64url".into()))?;
    let header: Value = serde_json::from_slice(&bytes)
        .map_err(|_| JwtError::Malformed("its header is not JSON".into()))?;
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg.as_str(),
        Some(_) | None => return Err(JwtError::Algorithm(String::new())),
    };
    let alg = match alg {
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        "EdDSA" => Algorithm::EdDSA,
        other => return Err(JwtError::Algorithm(other.chars().take(20).collect())),
    };
    match header.get("kid") {
        Some(Value::String(kid)) if !kid.is_empty() => Ok((alg, kid.clone())),
        _ => Err(JwtError::NoKeyId),
    }
}

fn refusal(e: jsonwebtoken::errors::Error) -> JwtError {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::ImmatureSignature => JwtError::NotYetValid,
        ErrorKind::InvalidIssuer => JwtError::Issuer,
        ErrorKind::InvalidAudience => JwtError::Audience,
        ErrorKind::MissingRequiredClaim(claim) => JwtError::MissingClaim(claim.clone()),
        ErrorKind::InvalidAlgorithm => JwtError::KeyMismatch,
        ErrorKind::Base64(_) | ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
            JwtError::Malformed("its payload or signature does not decode".into())
        }
        _ => JwtError::Signature,
    }
}

/// Reads a JWKS: the signing keys by `kid`. Keys for encryption, without a
/// `kid`, symmetric, or of a kind this version cannot read are skipped, so
/// one odd key does not lock everybody out.
fn fetch_keys(agent: &ureq::Agent, url: &str) -> Result<HashMap<String, DecodingKey>, JwtError> {
    let unavailable = |reason: String| JwtError::KeysUnavailable(format!("{url}: {reason}"));
    let text = agent
        .get(url)
        .call()
        .map_err(|e| unavailable(e.to_string()))?
        .into_string()
        .map_err(|e| unavailable(e.to_string()))?;
    let set: Value =
        serde_json::from_str(&text).map_err(|e| unavailable(format!("not a JSON key set: {e}")))?;
    let Some(keys) = set.get("keys").and_then(Value::as_array) else {
        return Err(unavailable("the document has no keys array".into()));
    };
    let mut out = HashMap::new();
    for key in keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(key.clone()) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
            || matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_))
        {
            continue;
        }
        let (Some(kid), Ok(decoding)) = (jwk.common.key_id.clone(), DecodingKey::from_jwk(&jwk))
        else {
            continue;
        };
        out.insert(kid, decoding);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn only_asymmetric_algorithms_with_a_key_id_pass_the_header_check() {
        let token = |h: &str| format!("{}.{}.sig", b64(h), b64("{}"));
        assert!(matches!(
            header(&token(r#"{"alg":"none"}"#)),
            Err(JwtError::Algorithm(a)) if a == "none"
        ));
        assert!(matches!(
            header(&token(r#"{"alg":"HS256","kid":"k"}"#)),
            Err(JwtError::Algorithm(_))
        ));
        assert!(matches!(
            header(&token(r#"{"alg":"RS256"}"#)),
            Err(JwtError::NoKeyId)
        ));
        assert_eq!(
            header(&token(r#"{"alg":"EdDSA","kid":"k1"}"#)).unwrap(),
            (Algorithm::EdDSA, "k1".to_string())
        );
        assert!(matches!(header("x.y.z"), Err(JwtError::Malformed(_))));
    }

    #[test]
    fn jwts_are_told_from_steward_tokens_by_shape() {
        assert!(looks_like_jwt("a.b.c"));
        assert!(!looks_like_jwt("stw_abc"));
        assert!(!looks_like_jwt("a.b"));
    }
}
