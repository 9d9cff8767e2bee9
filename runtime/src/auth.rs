//! API tokens and scopes. Tokens are random secrets shown once; only their
//! SHA-256 is stored. The operator's `STEWARD_ADMIN_TOKEN`, when set, is an
//! admin token that lives only in the environment.

use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError, StoredToken};

/// Every scope a token can hold. `admin` implies all others.
pub const SCOPES: [&str; 4] = ["runs:write", "runs:read", "approvals:decide", "admin"];

/// Who is calling, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub token_id: String,
    pub scopes: Vec<String>,
}

impl Principal {
    /// Whether this token may use a route needing `scope`: one scope, or
    /// alternatives separated by `|`; `admin` may use every route.
    pub fn allows(&self, scope: &str) -> bool {
        scope
            .split('|')
            .any(|one| self.scopes.iter().any(|s| s == one || s == "admin"))
    }
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

/// Creates a token; the secret is returned once and never stored.
pub async fn issue_token(
    store: &Store,
    name: &str,
    scopes: Vec<String>,
) -> Result<(StoredToken, String), StoreError> {
    let secret = new_secret();
    let token = StoredToken {
        id: uuid::Uuid::now_v7().to_string(),
        name: name.to_string(),
        secret_hash: hash_secret(&secret),
        scopes,
    };
    store.create_token(&token).await?;
    Ok((token, secret))
}

/// Resolves bearer secrets to principals.
#[derive(Clone)]
pub struct Authenticator {
    store: Store,
    admin_hash: Option<String>,
}

impl Authenticator {
    /// `admin_secret` is `STEWARD_ADMIN_TOKEN`, when the operator set one.
    pub fn new(store: Store, admin_secret: Option<&str>) -> Authenticator {
        Authenticator {
            store,
            admin_hash: admin_secret.filter(|s| !s.is_empty()).map(hash_secret),
        }
    }

    pub async fn authenticate(&self, secret: &str) -> Result<Option<Principal>, StoreError> {
        let hash = hash_secret(secret);
        if self.admin_hash.as_deref() == Some(hash.as_str()) {
            return Ok(Some(Principal {
                token_id: "env:STEWARD_ADMIN_TOKEN".into(),
                scopes: vec!["admin".into()],
            }));
        }
        Ok(self.store.token_by_hash(&hash).await?.map(|t| Principal {
            token_id: t.id,
            scopes: t.scopes,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_implies_every_scope() {
        let admin = Principal {
            token_id: "a".into(),
            scopes: vec!["admin".into()],
        };
        let reader = Principal {
            token_id: "r".into(),
            scopes: vec!["runs:read".into()],
        };
        assert!(admin.allows("runs:write") && admin.allows("approvals:decide"));
        assert!(reader.allows("runs:read") && !reader.allows("runs:write"));
        // Alternatives: either scope will do.
        let approver = Principal {
            token_id: "p".into(),
            scopes: vec!["approvals:decide".into()],
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
    fn secrets_are_random_and_hashed() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert!(a.starts_with("stw_") && a.len() == 68);
        assert_eq!(hash_secret(&a).len(), 64);
        assert_ne!(hash_secret(&a), a);
    }
}
