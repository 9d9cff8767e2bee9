//! Plugins uploaded through the API, kept in the database so every process
//! loads the same ones at start.

use sqlx::Row;

use crate::{Store, StoreError, audit, now_ms};

/// A plugin uploaded through the API: its `plugin.toml` and component.
#[derive(Debug, Clone)]
pub struct UploadedPlugin {
    pub name: String,
    pub manifest: String,
    pub component: Vec<u8>,
    pub digest: String,
}

impl Store {
    /// Saves an uploaded plugin, replacing one of the same name, and
    /// `actor` uploading it in the audit log; `true` when the name is new.
    pub async fn save_plugin(
        &self,
        plugin: &UploadedPlugin,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let existed: Option<String> =
            sqlx::query_scalar("SELECT name FROM uploaded_plugins WHERE name = $1")
                .bind(&plugin.name)
                .fetch_optional(&mut *tx)
                .await?;
        sqlx::query(
            "INSERT INTO uploaded_plugins (name, manifest, component, digest, uploaded_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (name) DO UPDATE SET
                 manifest = excluded.manifest,
                 component = excluded.component,
                 digest = excluded.digest,
                 uploaded_at = excluded.uploaded_at",
        )
        .bind(&plugin.name)
        .bind(&plugin.manifest)
        .bind(plugin.component.clone())
        .bind(&plugin.digest)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        audit::record(
            &mut tx,
            actor,
            "plugin.upload",
            &plugin.name,
            &serde_json::json!({ "sha256": plugin.digest }),
        )
        .await?;
        tx.commit().await?;
        Ok(existed.is_none())
    }

    /// Every uploaded plugin, loaded at start after the configured ones.
    pub async fn uploaded_plugins(&self) -> Result<Vec<UploadedPlugin>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, manifest, component, digest FROM uploaded_plugins ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(UploadedPlugin {
                    name: r.try_get("name")?,
                    manifest: r.try_get("manifest")?,
                    component: r.try_get("component")?,
                    digest: r.try_get("digest")?,
                })
            })
            .collect()
    }
}
