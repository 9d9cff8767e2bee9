//! API tokens, scopes and principals. Tokens are random secrets shown
//! once; only their SHA-256 is stored. Each token belongs to a subject (a
//! person or a service), which is who a decision made with it is recorded
//! as. The operator's `STEWARD_ADMIN_TOKEN`, when set, is an admin token
//! that lives only in the environment; its subject is `admin`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError, StoredToken};

/// Every scope a token can hold. `admin` implies all others.
pub const SCOPES: [&str; 4] = ["runs:write", "runs:read", "approvals:decide", "admin"];

/// The subject of `STEWARD_ADMIN_TOKEN`.
pub const ENV_ADMIN_SUBJECT: &str = "admin";

/// How often at most a token's `last_used_at` is written, per token and
/// process: a busy token costs one write a minute, not one per request.
pub const LAST_USED_GRANULARITY_MS: i64 = 60_000;

/// Who is calling, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub token_id: String,
    /// Who acts: a person (`max`) or a service (`svc:NAME`); decisions are
    /// recorded as made by it.
    pub subject: String,
    pub scopes: Vec<String>,
    /// Approver groups (`cab` for `group:cab`) the identity provider says
    /// the subject belongs to; empty for Steward's own tokens, whose
    /// subjects are members through `[groups]` and `PUT /v1/groups`.
    pub approver_groups: Vec<String>,
}

impl Principal {
    /// Whether this token may use a route needing `scope`: one scope, or
    /// alternatives separated by `|`; `admin` may use every route.
    pub fn allows(&self, scope: &str) -> bool {
        scope
            .split('|')
            .any(|one| self.scopes.iter().any(|s| s == one || s == "admin"))
    }

    /// Whether it holds the `admin` scope, which alone may act on someone
    /// else's behalf.
    pub fn is_admin(&self) -> bool {
        self.scopes.iter().any(|s| s == "admin")
    }
}

/// Why a bearer secret names no principal.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the token is unknown or revoked")]
    Unknown,
    /// Told apart from an unknown token so its holder knows to get a new one
    /// rather than to look for a typo.
    #[error("token {token_id} expired at {at}")]
    Expired { token_id: String, at: DateTime<Utc> },
    /// A JWT from the identity provider that does not pass a check.
    #[error(transparent)]
    Jwt(#[from] crate::oidc::JwtError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A token request that cannot be issued; each names the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum InvalidToken {
    #[error("subject {0:?}: give 1 to 200 characters without spaces, e.g. max or svc:servicenow")]
    Subject(String),
    #[error("expires_in {given:?}: {reason}")]
    ExpiresIn { given: String, reason: String },
}

/// The stored form of a secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new secret: 244 random bits, recognisable by its prefix.
pub fn new_secret() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("stw_{a}{b}")
}

/// Checks a scope list; the error names the unknown scope and the known ones.
pub fn parse_scopes<S: AsRef<str>>(scopes: &[S]) -> Result<Vec<String>, String> {
    if scopes.is_empty() {
        return Err(format!("give at least one scope: {}", SCOPES.join(", ")));
    }
    scopes
        .iter()
        .map(|s| {
            let s = s.as_ref().trim();
            if SCOPES.contains(&s) {
                Ok(s.to_string())
            } else {
                Err(format!("unknown scope {s:?}: use {}", SCOPES.join(", ")))
            }
        })
        .collect()
}

/// Checks a subject: what decisions are recorded as, so it must read the
/// same wherever it is written (no spaces, not empty).
pub fn parse_subject(subject: &str) -> Result<String, InvalidToken> {
    let trimmed = subject.trim();
    if trimmed.is_empty()
        || trimmed.chars().count() > 200
        || trimmed.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(InvalidToken::Subject(subject.to_string()));
    }
    Ok(trimmed.to_string())
}

/// The subject of a token created without one: the service named after it,
/// as tokens made before subjects existed are.
pub fn service_subject(name: &str) -> String {
    format!("svc:{name}")
}

/// Parses a lifetime such as `90d`, `12h` or `1s` (humantime); zero and
/// more than 100 years are refused.
pub fn parse_expires_in(text: &str) -> Result<chrono::Duration, InvalidToken> {
    let invalid = |reason: &str| InvalidToken::ExpiresIn {
        given: text.to_string(),
        reason: reason.to_string(),
    };
    let duration = humantime::parse_duration(text.trim())
        .map_err(|e| invalid(&format!("{e}; write e.g. 90d, 12h or 30m")))?;
    if duration.is_zero() {
        return Err(invalid("must be longer than zero"));
    }
    chrono::Duration::from_std(duration)
        .ok()
        .filter(|d| *d <= chrono::Duration::days(36_525))
        .ok_or_else(|| invalid("must be at most 100 years"))
}

/// What a new token is for.
pub struct NewToken<'a> {
    pub name: &'a str,
    pub subject: String,
    pub scopes: Vec<String>,
    pub expires_in: Option<chrono::Duration>,
    /// Who creates it, for the audit log: the caller's subject, or
    /// [`SYSTEM_ACTOR`] / `cli` when no caller is involved.
    pub by: &'a str,
}

/// The audit log's actor for what the server does of its own accord
/// (its first admin token, the workflows it loads at start).
pub const SYSTEM_ACTOR: &str = "system";

/// Creates a token; the secret is returned once and never stored.
pub async fn issue_token(
    store: &Store,
    new: NewToken<'_>,
) -> Result<(StoredToken, String), StoreError> {
    let secret = new_secret();
    // To the millisecond, as stored, so the answer and later reads agree.
    let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis())
        .expect("the clock reads a representable time");
    let token = StoredToken {
        id: uuid::Uuid::now_v7().to_string(),
        name: new.name.to_string(),
        secret_hash: hash_secret(&secret),
        scopes: new.scopes,
        subject: new.subject,
        created_at: now,
        expires_at: new.expires_in.map(|d| now + d),
        last_used_at: None,
    };
    store.create_token(&token, new.by).await?;
    Ok((token, secret))
}

/// Resolves bearer secrets to principals.
#[derive(Clone)]
pub struct Authenticator {
    store: Store,
    admin_hash: Option<String>,
    /// When this process last wrote each token's `last_used_at` (Unix ms).
    touched: Arc<Mutex<HashMap<String, i64>>>,
    /// `[auth.oidc]`, when single sign-on is configured.
    oidc: Option<Arc<crate::oidc::Oidc>>,
}

impl Authenticator {
    /// `admin_secret` is `STEWARD_ADMIN_TOKEN`, when the operator set one.
    pub fn new(store: Store, admin_secret: Option<&str>) -> Authenticator {
        Authenticator {
            store,
            admin_hash: admin_secret.filter(|s| !s.is_empty()).map(hash_secret),
            touched: Arc::default(),
            oidc: None,
        }
    }

    /// Also accepts the identity provider's JWTs.
    pub fn with_oidc(mut self, oidc: crate::oidc::Oidc) -> Authenticator {
        self.oidc = Some(Arc::new(oidc));
        self
    }

    pub async fn authenticate(&self, secret: &str) -> Result<Principal, AuthError> {
        let hash = hash_secret(secret);
        if self.admin_hash.as_deref() == Some(hash.as_str()) {
            return Ok(Principal {
                token_id: "env:STEWARD_ADMIN_TOKEN".into(),
                subject: ENV_ADMIN_SUBJECT.into(),
                scopes: vec!["admin".into()],
                approver_groups: Vec::new(),
            });
        }
        // The operator's admin token may be any text, dots included, so it
        // is recognised before a JWT's shape sends a bearer to the provider.
        if let Some(oidc) = self
            .oidc
            .as_ref()
            .filter(|_| crate::oidc::looks_like_jwt(secret))
        {
            let identity = oidc.validate(secret).await?;
            return Ok(Principal {
                token_id: "oidc".into(),
                subject: identity.subject,
                scopes: identity.scopes,
                approver_groups: identity.approver_groups,
            });
        }
        let token = self
            .store
            .token_by_hash(&hash)
            .await?
            .ok_or(AuthError::Unknown)?;
        let now = Utc::now();
        if let Some(at) = token.expires_at.filter(|at| *at <= now) {
            return Err(AuthError::Expired {
                token_id: token.id,
                at,
            });
        }
        self.note_use(&token, now.timestamp_millis());
        Ok(Principal {
            token_id: token.id,
            subject: token.subject,
            scopes: token.scopes,
            approver_groups: Vec::new(),
        })
    }

    /// Writes `last_used_at` off the request path, at most once per
    /// `LAST_USED_GRANULARITY_MS` per token (and not at all while the
    /// stored time is that recent, e.g. written by another process).
    fn note_use(&self, token: &StoredToken, now: i64) {
        let stored = token.last_used_at.map(|t| t.timestamp_millis());
        if stored.is_some_and(|t| now - t < LAST_USED_GRANULARITY_MS) {
            return;
        }
        {
            let mut touched = self.touched.lock().unwrap_or_else(|e| e.into_inner());
            let last = touched.entry(token.id.clone()).or_insert(i64::MIN);
            if now.saturating_sub(*last) < LAST_USED_GRANULARITY_MS {
                return;
            }
            *last = now;
        }
        let (store, id) = (self.store.clone(), token.id.clone());
        tokio::spawn(async move {
            if let Err(e) = store.touch_token(&id, now).await {
                tracing::warn!("could not record the use of token {id}: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_implies_every_scope() {
        let admin = Principal {
            token_id: "a".into(),
            subject: "admin".into(),
            scopes: vec!["admin".into()],
            approver_groups: Vec::new(),
        };
        let reader = Principal {
            token_id: "r".into(),
            subject: "svc:dashboard".into(),
            scopes: vec!["runs:read".into()],
            approver_groups: Vec::new(),
        };
        assert!(admin.allows("runs:write") && admin.allows("approvals:decide"));
        assert!(reader.allows("runs:read") && !reader.allows("runs:write"));
        // Alternatives: either scope will do.
        let approver = Principal {
            token_id: "p".into(),
            subject: "max".into(),
            scopes: vec!["approvals:decide".into()],
            approver_groups: Vec::new(),
        };
        assert!(approver.allows("runs:read|approvals:decide"));
        assert!(reader.allows("runs:read|approvals:decide"));
        assert!(!approver.allows("runs:read|runs:write"));
    }

    #[test]
    fn scopes_are_checked() {
        assert_eq!(
            parse_scopes(&["runs:read", " runs:write"]).unwrap(),
            ["runs:read", "runs:write"]
        );
        assert!(
            parse_scopes(&["runs:delete"])
                .unwrap_err()
                .contains("unknown scope \"runs:delete\"")
        );
        assert!(parse_scopes::<&str>(&[]).is_err());
    }

    #[test]
    fn lifetimes_and_subjects_are_checked() {
        assert_eq!(parse_expires_in("90d").unwrap(), chrono::Duration::days(90));
        assert_eq!(
            parse_expires_in("1s").unwrap(),
            chrono::Duration::seconds(1)
        );
        for bad in ["0s", "soon", "", "200years"] {
            let e = parse_expires_in(bad).unwrap_err().to_string();
            assert!(e.starts_with("expires_in"), "{bad}: {e}");
        }
        assert_eq!(parse_subject(" max ").unwrap(), "max");
        assert_eq!(parse_subject("svc:servicenow").unwrap(), "svc:servicenow");
        assert!(parse_subject("").is_err() && parse_subject("max power").is_err());
    }

    #[test]
    fn secrets_are_random_and_hashed() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert!(a.starts_with("stw_") && a.len() == 68);
        assert_eq!(hash_secret(&a).len(), 64);
        assert_ne!(hash_secret(&a), a);
    }
}
