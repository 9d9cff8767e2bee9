//! Approver groups set over the API.

use std::collections::BTreeMap;

use sqlx::Row;

use super::{Store, StoreError, audit, now_ms};

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

    /// Creates or replaces a group, and `actor` setting it in the audit
    /// log; `true` when it is new.
    pub async fn set_group(
        &self,
        name: &str,
        members: &[String],
        actor: &str,
    ) -> Result<bool, StoreError> {
        let stored = serde_json::to_string(members).expect("names serialise");
        let mut tx = self.begin_write().await?;
        let updated =
            sqlx::query("UPDATE approver_groups SET members = $2, updated_at = $3 WHERE name = $1")
                .bind(name)
                .bind(&stored)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
        let created = if updated.rows_affected() == 1 {
            false
        } else {
            let inserted = sqlx::query(
                "INSERT INTO approver_groups (name, members, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET members = $2, updated_at = $3",
            )
            .bind(name)
            .bind(&stored)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            inserted.rows_affected() == 1
        };
        audit::record(
            &mut tx,
            actor,
            "group.set",
            name,
            &serde_json::json!({ "members": members }),
        )
        .await?;
        tx.commit().await?;
        Ok(created)
    }

    /// Deletes a stored group, and `actor` deleting it in the audit log;
    /// `false` (nothing recorded) when there was none.
    pub async fn delete_group(&self, name: &str, actor: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("DELETE FROM approver_groups WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        audit::record(&mut tx, actor, "group.delete", name, &serde_json::json!({})).await?;
        tx.commit().await?;
        Ok(true)
    }
}
