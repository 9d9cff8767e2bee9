//! Deployed workflow versions: their YAML is kept, so a restart serves what
//! was deployed through the API and a run keeps the version it started on.

use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::{Store, StoreError, audit, now_ms, to_time};

impl Store {
    /// Records a workflow version, and `actor` deploying it in the audit
    /// log; deploying the same text again is a no-op and is not logged.
    pub async fn deploy_workflow(
        &self,
        name: &str,
        version: u32,
        source: &str,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let existing: Option<String> = sqlx::query_scalar(
            "SELECT source FROM workflow_versions WHERE name = $1 AND version = $2",
        )
        .bind(name)
        .bind(version as i64)
        .fetch_optional(&mut *tx)
        .await?;
        match existing {
            Some(s) if s == source => Ok(false),
            Some(_) => Err(StoreError::VersionConflict {
                name: name.to_string(),
                version,
            }),
            None => {
                let inserted = sqlx::query(
                    "INSERT INTO workflow_versions (name, version, source, deployed_at)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT DO NOTHING",
                )
                .bind(name)
                .bind(version as i64)
                .bind(source)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
                // Another process deployed it first: its entry is the one.
                if inserted.rows_affected() == 1 {
                    audit::record(
                        &mut tx,
                        actor,
                        "workflow.deploy",
                        &format!("{name}@{version}"),
                        &serde_json::json!({"name": name, "version": version}),
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(true)
            }
        }
    }

    /// The highest version of every deployed workflow with its YAML, so a
    /// restart serves what was deployed through the API.
    pub async fn latest_workflows(&self) -> Result<Vec<(String, u32, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, version, source
             FROM workflow_versions w
             WHERE version = (
                 SELECT MAX(version) FROM workflow_versions v WHERE v.name = w.name
             )
             ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let version: i64 = r.try_get("version")?;
                Ok((r.try_get("name")?, version as u32, r.try_get("source")?))
            })
            .collect()
    }

    /// Every deployed version of `name` with its deployment time, oldest first.
    pub async fn workflow_versions(
        &self,
        name: &str,
    ) -> Result<Vec<(u32, DateTime<Utc>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT version, deployed_at FROM workflow_versions WHERE name = $1 ORDER BY version",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let version: i64 = r.try_get("version")?;
                Ok((version as u32, to_time(r.try_get("deployed_at")?)))
            })
            .collect()
    }

    /// The YAML of a deployed version, so a run keeps the version it started on.
    pub async fn workflow_source(
        &self,
        name: &str,
        version: u32,
    ) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT source FROM workflow_versions WHERE name = $1 AND version = $2",
        )
        .bind(name)
        .bind(version as i64)
        .fetch_optional(&self.pool)
        .await?)
    }
}
