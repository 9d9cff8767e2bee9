//! The key-value store plugins get: values are bytes, keyed per plugin, so
//! one plugin cannot read another's.

use crate::{Store, StoreError};

impl Store {
    pub async fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT value FROM plugin_kv WHERE plugin = $1 AND key = $2")
                .bind(plugin)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn kv_set(&self, plugin: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO plugin_kv (plugin, key, value)
             VALUES ($1, $2, $3)
             ON CONFLICT (plugin, key) DO UPDATE SET value = excluded.value",
        )
        .bind(plugin)
        .bind(key)
        .bind(value.to_vec())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn kv_delete(&self, plugin: &str, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM plugin_kv WHERE plugin = $1 AND key = $2")
            .bind(plugin)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
