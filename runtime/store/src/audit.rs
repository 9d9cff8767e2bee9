//! The audit log: who changed what, and when. An entry is written through
//! the transaction of the change it records ([`record`]), so the log can
//! neither miss a change that happened nor claim one that was rolled back.
//! Nothing here updates or deletes entries, and retention leaves them alone:
//! a log that can be edited proves nothing.

use serde_json::Value;
use sqlx::Row;

use super::{Store, StoreError, now_ms, to_time};

/// One audited change.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub id: String,
    pub at: chrono::DateTime<chrono::Utc>,
    /// The caller's subject (`max`, `svc:NAME`, `admin`, ...).
    pub actor: String,
    /// What was done: `approval.decide`, `delegation.set`,
    /// `delegation.end`, `group.set`, `group.delete`, `plugin.upload`,
    /// `run.cancel`, `run.retry`, `run.rerun`, `schedule.create`, `schedule.update`,
    /// `schedule.delete`, `token.create`, `token.revoke`, `workflow.deploy`,
    /// `signal.deliver`.
    pub action: String,
    /// What it was done to: an approval, delegation, run, schedule, token
    /// or signal delivery id, a group or plugin name, or `NAME@VERSION`.
    pub target: String,
    pub detail: Value,
}

/// Every action the log records; `/openapi.json` lists the same (a test
/// holds them together), and [`record`] refuses any other in debug builds.
pub const AUDIT_ACTIONS: [&str; 16] = [
    "approval.decide",
    "delegation.set",
    "delegation.end",
    "run.cancel",
    "token.create",
    "token.revoke",
    "workflow.deploy",
    "group.set",
    "group.delete",
    "schedule.create",
    "schedule.update",
    "schedule.delete",
    "plugin.upload",
    "run.retry",
    "run.rerun",
    "signal.deliver",
];

/// Which entries to list; every field narrows.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter<'a> {
    pub actor: Option<&'a str>,
    pub action: Option<&'a str>,
    pub target: Option<&'a str>,
    /// From this time (Unix ms), inclusive.
    pub from: Option<i64>,
    /// Up to this time (Unix ms), exclusive.
    pub to: Option<i64>,
    /// The last entry of the previous page.
    pub after: Option<&'a str>,
}

/// Writes one entry inside `tx`, the transaction of the change itself.
pub(crate) async fn record(
    tx: &mut sqlx::AnyConnection,
    actor: &str,
    action: &str,
    target: &str,
    detail: &Value,
) -> Result<(), StoreError> {
    debug_assert!(
        AUDIT_ACTIONS.contains(&action),
        "{action} is not in AUDIT_ACTIONS"
    );
    sqlx::query(
        "INSERT INTO audit_log (id, at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(now_ms())
    .bind(actor)
    .bind(action)
    .bind(target)
    .bind(detail.to_string())
    .execute(tx)
    .await?;
    Ok(())
}

impl Store {
    /// Entries, newest first, matching `filter`, at most `limit`.
    pub async fn audit_entries(
        &self,
        filter: &AuditFilter<'_>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target, detail FROM audit_log \
             WHERE ($1 IS NULL OR actor = $1) AND ($2 IS NULL OR action = $2) \
             AND ($3 IS NULL OR target = $3) AND ($4 IS NULL OR at >= $4) \
             AND ($5 IS NULL OR at < $5) AND ($6 IS NULL OR id < $6) \
             ORDER BY id DESC LIMIT $7",
        )
        .bind(filter.actor)
        .bind(filter.action)
        .bind(filter.target)
        .bind(filter.from)
        .bind(filter.to)
        .bind(filter.after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let detail: String = r.try_get("detail")?;
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    at: to_time(r.try_get("at")?),
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    detail: serde_json::from_str(&detail).map_err(|e| {
                        StoreError::Corrupt(format!("the detail of audit entry: {e}"))
                    })?,
                })
            })
            .collect()
    }

    /// Whether an entry with this id exists: a cursor must be one.
    pub async fn audit_entry_exists(&self, id: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query("SELECT 1 FROM audit_log WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }
}
