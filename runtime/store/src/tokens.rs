//! API tokens: only a secret's hash is kept, and creating or revoking a
//! token is audited in the same transaction.

use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::{Store, StoreError, audit, now_ms, to_time};

/// An API token as stored: its secret is never kept, only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub id: String,
    pub name: String,
    pub secret_hash: String,
    pub scopes: Vec<String>,
    /// Who acts with it: a person (`max`) or a service (`svc:servicenow`).
    pub subject: String,
    pub created_at: DateTime<Utc>,
    /// After this it is refused (401 `token-expired`); `None` never.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was last used, to the minute (see `Store::touch_token`).
    pub last_used_at: Option<DateTime<Utc>>,
}

const SELECT_TOKEN: &str = "SELECT id, name, secret_hash, scopes, subject, created_at,
                                   expires_at, last_used_at
                            FROM api_tokens";

fn token_row(r: &sqlx::any::AnyRow) -> Result<StoredToken, StoreError> {
    let name: String = r.try_get("name")?;
    let scopes: String = r.try_get("scopes")?;
    let subject: Option<String> = r.try_get("subject")?;
    let expires_at: Option<i64> = r.try_get("expires_at")?;
    let last_used_at: Option<i64> = r.try_get("last_used_at")?;
    Ok(StoredToken {
        id: r.try_get("id")?,
        // Migration 14 gave older tokens this subject; kept here too so a
        // row written without one still names a principal.
        subject: subject.unwrap_or_else(|| format!("svc:{name}")),
        name,
        secret_hash: r.try_get("secret_hash")?,
        scopes: scopes
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        created_at: to_time(r.try_get("created_at")?),
        expires_at: expires_at.map(to_time),
        last_used_at: last_used_at.map(to_time),
    })
}

impl Store {
    /// Stores a new API token (only the secret's hash), and `actor`
    /// creating it in the audit log (never the secret).
    pub async fn create_token(&self, token: &StoredToken, actor: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO api_tokens
                 (id, name, secret_hash, scopes, created_at, subject, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&token.id)
        .bind(&token.name)
        .bind(&token.secret_hash)
        .bind(token.scopes.join(","))
        .bind(token.created_at.timestamp_millis())
        .bind(&token.subject)
        .bind(token.expires_at.map(|t| t.timestamp_millis()))
        .execute(&mut *tx)
        .await?;
        audit::record(
            &mut tx,
            actor,
            "token.create",
            &token.id,
            &serde_json::json!({"subject": token.subject, "scopes": token.scopes}),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The live (not revoked) token with this secret hash, expired or not:
    /// the caller tells an expired token from an unknown one.
    pub async fn token_by_hash(
        &self,
        secret_hash: &str,
    ) -> Result<Option<StoredToken>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_TOKEN}
             WHERE secret_hash = $1 AND revoked_at IS NULL"
        )))
        .bind(secret_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(token_row).transpose()
    }

    /// Tokens neither revoked nor expired, oldest first.
    pub async fn live_tokens(&self) -> Result<Vec<StoredToken>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_TOKEN}
             WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1)
             ORDER BY created_at, id"
        )))
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_row).collect()
    }

    /// Records that token `id` was used at `at` (Unix ms). Never moves the
    /// time back, so late writes from several processes settle on the
    /// latest.
    pub async fn touch_token(&self, id: &str, at: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE api_tokens SET last_used_at = $2
             WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
        )
        .bind(id)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// How many tokens are live: zero on a fresh installation.
    pub async fn count_live_tokens(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM api_tokens WHERE revoked_at IS NULL")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Revokes a token, and logs `actor` revoking it; false (and nothing
    /// logged) when there is no live token with this id.
    pub async fn revoke_token(&self, id: &str, actor: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let revoked = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $2
             WHERE id = $1 AND revoked_at IS NULL
             RETURNING id, name, secret_hash, scopes, subject, created_at, expires_at,
                       last_used_at",
        )
        .bind(id)
        .bind(now_ms())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = revoked else {
            tx.rollback().await?;
            return Ok(false);
        };
        let token = token_row(&row)?;
        audit::record(
            &mut tx,
            actor,
            "token.revoke",
            id,
            &serde_json::json!({"subject": token.subject, "scopes": token.scopes}),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}
