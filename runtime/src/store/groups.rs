//! Approver groups set over the API.

use std::collections::BTreeMap;

use sqlx::Row;

use super::{Store, StoreError, now_ms};

impl Store {
    /// Every stored group with its members.
    pub async fn stored_groups(&self) -> Result<BTreeMap<String, Vec<String>>, StoreError> {
        let rows = sqlx::query("SELECT name, members FROM approver_groups")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let members: String = r.try_get("members")?;
                let members: Vec<String> = serde_json::from_str(&members)
                    .map_err(|e| StoreError::Corrupt(format!("group members: {e}")))?;
                Ok((r.try_get("name")?, members))
            })
            .collect()
    }

    /// Creates or replaces a group; `true` when it is new.
    pub async fn set_group(&self, name: &str, members: &[String]) -> Result<bool, StoreError> {
        let members = serde_json::to_string(members).expect("names serialise");
        let updated =
            sqlx::query("UPDATE approver_groups SET members = $2, updated_at = $3 WHERE name = $1")
                .bind(name)
                .bind(&members)
                .bind(now_ms())
                .execute(&self.pool)
                .await?;
        if updated.rows_affected() == 1 {
            return Ok(false);
        }
        let inserted = sqlx::query(
            "INSERT INTO approver_groups (name, members, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET members = $2, updated_at = $3",
        )
        .bind(name)
        .bind(&members)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }

    /// Deletes a stored group; `false` when there was none.
    pub async fn delete_group(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM approver_groups WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
